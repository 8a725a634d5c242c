//! The protocol layer's error type: every rejection carries the status to answer with and a
//! one-line reason that becomes the `text/plain` body, so a client always learns what to fix.

use std::fmt;

/// An HTTP status code with its reason phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u16);

impl Status {
    pub const CONTINUE: Status = Status(100);
    pub const OK: Status = Status(200);
    pub const CREATED: Status = Status(201);
    pub const ACCEPTED: Status = Status(202);
    pub const NO_CONTENT: Status = Status(204);
    pub const PARTIAL_CONTENT: Status = Status(206);
    pub const NOT_MODIFIED: Status = Status(304);
    pub const BAD_REQUEST: Status = Status(400);
    pub const UNAUTHORIZED: Status = Status(401);
    pub const FORBIDDEN: Status = Status(403);
    pub const NOT_FOUND: Status = Status(404);
    pub const METHOD_NOT_ALLOWED: Status = Status(405);
    pub const PRECONDITION_FAILED: Status = Status(412);
    pub const RANGE_NOT_SATISFIABLE: Status = Status(416);
    pub const REQUEST_TIMEOUT: Status = Status(408);
    pub const LENGTH_REQUIRED: Status = Status(411);
    pub const CONTENT_TOO_LARGE: Status = Status(413);
    pub const EXPECTATION_FAILED: Status = Status(417);
    pub const REQUEST_HEADER_FIELDS_TOO_LARGE: Status = Status(431);
    pub const INTERNAL_SERVER_ERROR: Status = Status(500);
    pub const NOT_IMPLEMENTED: Status = Status(501);
    pub const SERVICE_UNAVAILABLE: Status = Status(503);
    pub const HTTP_VERSION_NOT_SUPPORTED: Status = Status(505);
    pub const INSUFFICIENT_STORAGE: Status = Status(507);

    /// The reason phrase for the status line. Clients ignore it (RFC 9112 §4), so an unknown
    /// code gets an empty phrase rather than an error.
    pub fn reason_phrase(self) -> &'static str {
        match self.0 {
            100 => "Continue",
            200 => "OK",
            201 => "Created",
            202 => "Accepted",
            204 => "No Content",
            206 => "Partial Content",
            304 => "Not Modified",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            409 => "Conflict",
            411 => "Length Required",
            412 => "Precondition Failed",
            413 => "Content Too Large",
            416 => "Range Not Satisfiable",
            417 => "Expectation Failed",
            431 => "Request Header Fields Too Large",
            500 => "Internal Server Error",
            501 => "Not Implemented",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            507 => "Insufficient Storage",
            _ => "",
        }
    }
}

/// The methods the node implements. `Allow` lists exactly these.
pub const ALLOW_ALL: &str = "GET, HEAD, PUT, DELETE";

/// Why a request was rejected. The variant fixes the status; the fields name the problem.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request head or body framing is malformed.
    #[error("bad request: {reason}")]
    BadRequest { reason: &'static str },
    /// The request target is not a valid endpoint or asset id.
    #[error("bad request target: {reason}")]
    BadTarget { reason: String },
    /// The request head is larger than the configured limit.
    #[error("request head exceeds {limit_bytes} bytes")]
    HeadTooLarge { limit_bytes: usize },
    /// The request head carries more header fields than the limit.
    #[error("request has more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    /// The path names nothing this node serves.
    #[error("not found: no endpoint at this path")]
    NotFound,
    /// The method is not one this endpoint supports; `allow` is the `Allow` header value.
    #[error("method not allowed here; allowed: {allow}")]
    MethodNotAllowed { allow: &'static str },
    /// The method is none the node implements (checked while parsing the head, before the
    /// body framing is known, so the connection closes).
    #[error("method not implemented by this server; allowed: {ALLOW_ALL}")]
    UnknownMethod,
    /// A transfer coding other than `chunked` was requested.
    #[error("not implemented: {reason}")]
    NotImplemented { reason: &'static str },
    /// The `Expect` header names an expectation other than `100-continue`.
    #[error("unsupported expectation; only 100-continue is supported")]
    ExpectationFailed,
    /// A precondition (`If-Match`, `If-None-Match`, `If-Unmodified-Since`) did not hold.
    #[error("precondition failed: the asset does not match the request's conditions")]
    PreconditionFailed,
    /// The request line names an HTTP version other than 1.0 or 1.1.
    #[error("HTTP version not supported; use HTTP/1.1")]
    VersionNotSupported,
    /// The request needs the cluster token and presents none (401, with `WWW-Authenticate`).
    #[error("{reason}")]
    Unauthorized { reason: String },
    /// The request presents a cluster token that does not match (403).
    #[error("{reason}")]
    Forbidden { reason: String },
    /// An answer the serving node gives on its own account (storage full, overload, timeouts,
    /// device errors), with the status and a one-line reason.
    #[error("{reason}")]
    Node { status: Status, reason: String },
}

impl HttpError {
    /// The `Allow` header value to send with a 405, if this is one.
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            HttpError::MethodNotAllowed { allow } => Some(allow),
            HttpError::UnknownMethod => Some(ALLOW_ALL),
            _ => None,
        }
    }

    pub fn status(&self) -> Status {
        match self {
            HttpError::BadRequest { .. } | HttpError::BadTarget { .. } => Status::BAD_REQUEST,
            HttpError::HeadTooLarge { .. } | HttpError::TooManyHeaders { .. } => {
                Status::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HttpError::NotFound => Status::NOT_FOUND,
            HttpError::MethodNotAllowed { .. } | HttpError::UnknownMethod => {
                Status::METHOD_NOT_ALLOWED
            }
            HttpError::NotImplemented { .. } => Status::NOT_IMPLEMENTED,
            HttpError::ExpectationFailed => Status::EXPECTATION_FAILED,
            HttpError::PreconditionFailed => Status::PRECONDITION_FAILED,
            HttpError::VersionNotSupported => Status::HTTP_VERSION_NOT_SUPPORTED,
            HttpError::Unauthorized { .. } => Status::UNAUTHORIZED,
            HttpError::Forbidden { .. } => Status::FORBIDDEN,
            HttpError::Node { status, .. } => *status,
        }
    }

    /// Whether the connection must be closed after answering. After a malformed or
    /// unsupported head we cannot know where the next request starts (the body length may be
    /// unknown or deliberately ambiguous — request smuggling), so those close; routing errors
    /// leave framing intact and the serving loop may keep the connection after draining the body.
    pub fn must_close(&self) -> bool {
        !matches!(
            self,
            HttpError::BadTarget { .. }
                | HttpError::NotFound
                | HttpError::MethodNotAllowed { .. }
                | HttpError::PreconditionFailed
                | HttpError::Unauthorized { .. }
                | HttpError::Forbidden { .. }
        ) && !matches!(self, HttpError::Node { status, .. } if status.0 != 408 && status.0 != 500)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0, self.reason_phrase())
    }
}
