//! The node's HTTP/1.1 protocol layer, pure: no sockets, no io_uring, no clock.
//!
//! The serving loop feeds received bytes in and writes the bytes this layer renders out; every
//! decision about what a request means and what its response looks like lives here, so it can be
//! tested (and fuzzed) without a network.
//!
//! - [`request`]: incremental request-head parsing on `httparse`, limits, keep-alive, body framing.
//! - [`chunked`]: incremental `Transfer-Encoding: chunked` decoder that returns payload ranges.
//! - [`mod@route`]: request target → endpoint, with asset-id validation.
//! - [`range`]: `Range: bytes=…` against a representation size.
//! - [`conditional`]: entity tags and the RFC 9110 §13.2.2 precondition order.
//! - [`date`]: IMF-fixdate formatting and HTTP-date parsing.
//! - [`response`]: status lines, header blocks, error responses, multipart/byteranges framing.
//! - [`mod@plan`]: GET/HEAD of an asset → status, head bytes and the byte ranges to send.
//! - [`cluster`]: the cluster protocol's bodies and the manager's signed tickets.
//! - [`api`]: the JSON bodies of `/assets`, `/assets/{id}/info` and `/migration` as serde types.
//!
//! Invariants: nothing here panics on any input (a proptest feeds arbitrary bytes to every
//! parser); payload bytes are never copied (the chunked decoder and the plan return ranges);
//! every rejection is an [`HttpError`] carrying its status and a one-line reason.

pub mod api;
pub mod auth;
pub mod chunked;
pub mod client;
pub mod cluster;
pub mod conditional;
pub mod date;
pub mod error;
pub mod plan;
pub mod range;
pub mod request;
pub mod response;
pub mod route;

pub use chunked::{ChunkedDecoder, Step};
pub use client::{parse_response_head, ClientError, Conn, Response, ResponseHead};
pub use error::{HttpError, Status};
pub use plan::{plan, plan_error, AssetMeta, Body, Plan, Segment};
pub use range::{parse_range, ByteRange, RangeOutcome};
pub use request::{parse_head, BodyFraming, Limits, Method, Parsed, RequestHead, Version};
pub use route::{route, MigrationChange, Route};

#[cfg(test)]
mod fuzz_tests;
