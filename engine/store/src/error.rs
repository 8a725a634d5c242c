//! The engine's error type. Every variant a user can hit says what to do about it.

use std::io;
use std::path::PathBuf;

use crate::driver::DriverError;
use crate::format::FormatError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("{path} is not a Reelstore volume (no superblock magic); format it with `reel format {path}`", path = path.display())]
    NotAVolume { path: PathBuf },
    #[error("{path} already holds {what}; pass --force to overwrite it (everything on it is lost)", path = path.display())]
    AlreadyFormatted { path: PathBuf, what: String },
    #[error("{path} is in use by another process (it holds the volume lock); stop that node first", path = path.display())]
    Locked { path: PathBuf },
    #[error("{path}: {detail}", path = path.display())]
    BadTarget { path: PathBuf, detail: String },
    #[error("volume corrupted: {what} at byte {offset}: {source}")]
    Corrupted {
        what: &'static str,
        offset: u64,
        source: FormatError,
    },
    #[error("volume corrupted: {what}: {detail}")]
    Inconsistent { what: &'static str, detail: String },
    #[error("asset {id:?} chunk {chunk}: checksum mismatch (expected {expected:#010x}, actual {actual:#010x}); the copy on this device is damaged")]
    ChecksumMismatch {
        id: String,
        chunk: u64,
        expected: u32,
        actual: u32,
    },
    #[error("asset {id:?} not found")]
    NotFound { id: String },
    #[error("invalid asset id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("not enough space: the asset needs {needed_bytes} more bytes, {free_bytes} are free")]
    NoSpace { needed_bytes: u64, free_bytes: u64 },
    #[error("the asset is too fragmented: more than {max} extents; free space is too scattered")]
    TooFragmented { max: usize },
    #[error("metadata area full: the catalog needs {needed_bytes} bytes but a checkpoint slot holds {max_bytes}; reformat with a larger volume or delete assets")]
    MetadataFull { needed_bytes: u64, max_bytes: u64 },
    #[error("a journal record of {bytes} bytes does not fit in the {journal_bytes}-byte journal")]
    RecordTooLarge { bytes: u64, journal_bytes: u64 },
    #[error("body length {actual} differs from the announced {expected} bytes")]
    SizeMismatch { expected: u64, actual: u64 },
    #[error("content type is longer than 255 bytes or not printable ASCII")]
    InvalidContentType,
    #[error("range {offset}+{len} is outside the asset's {size} bytes")]
    Range { offset: u64, len: u64, size: u64 },
    #[error("reading the body failed: {source}")]
    Source { source: io::Error },
    #[error("the volume stopped accepting writes after a metadata I/O error ({reason}); restart the node to recover from the device")]
    Poisoned { reason: String },
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
