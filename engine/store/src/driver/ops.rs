//! The driver's vocabulary: its errors, configuration, buffer tokens, operations and their
//! completions. Plain types; the code that hands them to the kernel is in the parent module.

use std::io;
use std::os::fd::{OwnedFd, RawFd};

#[cfg(doc)]
use super::Driver;

/// Errors of the driver layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    #[error(
        "io_uring is not available ({source}); it may be disabled: run `sysctl -w \
         kernel.io_uring_disabled=0`, or start the container with a seccomp profile that allows \
         io_uring_setup/io_uring_enter/io_uring_register"
    )]
    Unavailable { source: io::Error },
    #[error("the kernel's io_uring lacks opcode {opcode}; Reelstore needs Linux 6.0 or newer")]
    MissingOpcode { opcode: &'static str },
    #[error("could not register {bytes} bytes of I/O buffers with io_uring ({source}); raise `ulimit -l` (RLIMIT_MEMLOCK) or lower the buffer count")]
    RegisterBuffers { bytes: usize, source: io::Error },
    #[error("could not map {bytes} bytes for the buffer pool: {source}")]
    Map { bytes: usize, source: io::Error },
    #[error("{op} at offset {offset} failed: {source}")]
    Io {
        op: &'static str,
        offset: u64,
        source: io::Error,
    },
    #[error("{op} at offset {offset}: unexpected end of file/device after {done} of {len} bytes")]
    UnexpectedEof {
        op: &'static str,
        offset: u64,
        done: usize,
        len: usize,
    },
    #[error("io_uring_enter failed: {source}")]
    Enter { source: io::Error },
    #[error("the driver's in-flight table is full ({limit} operations)")]
    Busy { limit: usize },
    #[error("invalid driver configuration: {0}")]
    Config(&'static str),
    #[error("buffer range {offset}+{len} exceeds the buffer size {buf_size}")]
    BufferRange {
        offset: usize,
        len: usize,
        buf_size: usize,
    },
}

/// One completed device operation, as recorded by a [`WriteLog`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEvent {
    Write {
        fd: RawFd,
        offset: u64,
        data: Vec<u8>,
    },
    Sync {
        fd: RawFd,
    },
    /// A note the test inserts itself (e.g. "acknowledged put x").
    Mark(String),
}

/// Test instrumentation in the manner of dm-log-writes: when a driver has one, every completed
/// write (with a copy of its bytes) and every completed sync is appended, in completion order, so
/// a test can rebuild every device state a power loss could leave behind. Off (None) normally; it
/// costs one branch per completion then.
pub type WriteLog = std::sync::Arc<std::sync::Mutex<Vec<LogEvent>>>;

/// How a driver is sized. Everything is allocated once, in [`Driver::new`].
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// Submission queue entries (the completion queue gets twice as many).
    pub ring_entries: u32,
    /// Bytes per registered buffer; a multiple of 4096.
    pub buf_size: usize,
    /// Number of registered buffers (at most 16384, the kernel's limit).
    pub buf_count: usize,
    /// Record completed writes and syncs (tests only).
    pub write_log: Option<WriteLog>,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            ring_entries: 256,
            buf_size: 1 << 20,
            buf_count: 64,
            write_log: None,
        }
    }
}

/// A registered buffer, owned by whoever holds this token. Not `Clone`: there is exactly one owner,
/// and while an operation is in flight the owner is the driver.
#[derive(Debug, PartialEq, Eq)]
pub struct Buf {
    pub(super) index: u16,
}

impl Buf {
    /// The buffer's index in the pool (stable for its lifetime; useful as a table key).
    pub fn index(&self) -> u16 {
        self.index
    }
}

/// An operation to submit. Offsets and lengths of `Read`/`Write` must be aligned to the target's
/// logical block size (O_DIRECT); the driver does not check alignment, the kernel returns `EINVAL`.
#[derive(Debug)]
pub enum Op {
    /// Read `len` bytes at file `offset` into `buf[buf_offset..buf_offset + len]`.
    Read {
        fd: RawFd,
        buf: Buf,
        buf_offset: usize,
        len: usize,
        offset: u64,
    },
    /// Write `buf[buf_offset..buf_offset + len]` at file `offset`.
    Write {
        fd: RawFd,
        buf: Buf,
        buf_offset: usize,
        len: usize,
        offset: u64,
    },
    /// `fdatasync` (or `fsync` when `datasync` is false).
    Fsync { fd: RawFd, datasync: bool },
    /// Accepts a connection on a listening socket; the completion carries it in
    /// [`Completion::fd`] (close-on-exec, blocking: the ring polls it).
    Accept { fd: RawFd },
    /// Receives into `data[at..]` (the operation owns the vector and gives it back). The result
    /// is the byte count; `Ok(0)` means the peer closed its side. Not continued when short.
    Recv { fd: RawFd, data: Vec<u8>, at: usize },
    /// Sends all of `data[at..]`; short sends are continued. `MSG_NOSIGNAL`: a closed peer is an
    /// `EPIPE` error, never a signal.
    Send { fd: RawFd, data: Vec<u8>, at: usize },
    /// Sends all of `buf[buf_offset..buf_offset + len]` straight out of a registered buffer, with
    /// `SEND_ZC` when `zero_copy` (and the kernel has it), else a plain `SEND`. See
    /// [`Completion::notification`] for when a zero-copy send gives its buffer back.
    SendBuf {
        fd: RawFd,
        buf: Buf,
        buf_offset: usize,
        len: usize,
        zero_copy: bool,
    },
    /// Waits until `fd` is readable (used to wake a shard from another thread).
    PollIn { fd: RawFd },
    /// Connects the socket `fd` (made by the caller, not yet connected) to `addr`. The result
    /// is `Ok(0)` once connected; a refused or unreachable peer is an error. A `shutdown(2)` of
    /// the socket while it connects ends the operation.
    Connect { fd: RawFd, addr: PeerAddr },
    /// Receives exactly `len` bytes from the socket `fd` into `buf[buf_offset..buf_offset +
    /// len]`; short receives are continued. The peer closing first is
    /// [`DriverError::UnexpectedEof`].
    RecvBuf {
        fd: RawFd,
        buf: Buf,
        buf_offset: usize,
        len: usize,
    },
    /// Completes at once and gives `buf` back (a buffer whose bytes are already there, kept in
    /// the same completion order as the operations around it).
    Nop { buf: Buf },
}

/// A socket address in the kernel's layout, boxed so that its place stays put while a
/// [`Op::Connect`] is in flight.
#[derive(Debug)]
pub struct PeerAddr(pub(super) Box<RawAddr>);

#[derive(Debug)]
pub(super) enum RawAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
}

impl PeerAddr {
    pub fn new(addr: std::net::SocketAddr) -> PeerAddr {
        PeerAddr(Box::new(match addr {
            std::net::SocketAddr::V4(a) => RawAddr::V4(libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            }),
            std::net::SocketAddr::V6(a) => RawAddr::V6(libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            }),
        }))
    }

    /// The address as `connect(2)` takes it: a pointer into the box and its length.
    pub(super) fn raw(&self) -> (*const libc::sockaddr, libc::socklen_t) {
        match &*self.0 {
            RawAddr::V4(a) => (
                (a as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            RawAddr::V6(a) => (
                (a as *const libc::sockaddr_in6).cast(),
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }
}

/// A finished operation: the caller's tag, the outcome (bytes transferred for reads, writes,
/// receives and sends), and whatever the operation owned, given back.
#[derive(Debug)]
pub struct Completion {
    pub tag: u64,
    pub result: Result<usize, DriverError>,
    /// The registered buffer of a read, write, send, `RecvBuf` or `Nop`. `None` on the data completion of a
    /// zero-copy send whose notification is still outstanding.
    pub buf: Option<Buf>,
    /// The heap buffer of a `Recv` or `Send`.
    pub data: Option<Vec<u8>>,
    /// The connection an `Accept` produced.
    pub fd: Option<OwnedFd>,
    /// Set on the second completion of a zero-copy send: the kernel no longer references the
    /// buffer, which comes back in `buf`; `result` is `Ok(0)` and carries no news.
    pub notification: bool,
}

impl Completion {
    pub(super) fn new(tag: u64, result: Result<usize, DriverError>) -> Completion {
        Completion {
            tag,
            result,
            buf: None,
            data: None,
            fd: None,
            notification: false,
        }
    }
}
