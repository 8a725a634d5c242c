//! Reelstore's storage layer: the io_uring driver, the on-device volume format, volumes, ingest,
//! the catalog and the extent allocator. It knows nothing of HTTP, tiering policy or serving.
//!
//! Start at [`Volume`]: it formats, opens (recovers) and serves one device. All device I/O goes
//! through a per-thread [`driver::Driver`]; all `unsafe` code lives in `driver`.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod alloc;
pub mod catalog;
#[allow(unsafe_code)]
pub mod driver;
pub mod error;
pub mod format;
pub mod ingest;
mod io_split;
pub mod volume;

pub use catalog::{Asset, Catalog, Segment};
pub use error::{EngineError, Result};
pub use ingest::{Ingest, Prepared, PublishCond, PutOptions};
pub use volume::{FormatOptions, OpenReport, Volume, VolumeStats};
