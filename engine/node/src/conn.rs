//! A shard's connection and the response it is sending: the state the serving loop in
//! [`super::shard`] works on. Owned by one shard; nothing here is shared between threads.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use reel_http::{RequestHead, Segment};
use reel_store::driver::{Buf, Driver};

use super::relay::RelaySource;
use super::source::{Pending, Source};
use super::NodeConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Between requests: no byte of the next head yet.
    Idle,
    /// Part of a head received.
    Head,
    /// Sending a response.
    Sending,
    /// Asking a holder for an asset to relay, before the response head (timed by the send
    /// timeout; the holder socket is cut when it passes).
    Relay,
}

/// One chunk of a stream's payload, in sending order.
pub(crate) enum Piece {
    /// Bytes from the heap (heads, multipart delimiters, small JSON/text bodies).
    Bytes(Vec<u8>),
    /// Asset bytes `buf[skip..skip + len]`, once the source's read has filled the buffer.
    /// `buf` is `None` while the read is in flight (`skip` and `len` are set with it).
    Chunk {
        seq: u32,
        buf: Option<Buf>,
        /// What the source needs back with the read's completion.
        pending: Pending,
        skip: usize,
        len: usize,
    },
}

/// A response in progress.
pub(crate) struct Stream {
    pub(crate) status: u16,
    /// Where the asset bytes come from (`None` for a response without any).
    pub(crate) source: Option<Source>,
    /// Body parts not yet turned into pieces: literals and asset ranges `[start, end)`.
    pub(crate) todo: VecDeque<Segment>,
    pub(crate) literals: Vec<u8>,
    pub(crate) pieces: VecDeque<Piece>,
    pub(crate) next_seq: u32,
    pub(crate) send_in_flight: bool,
    pub(crate) close_after: bool,
    pub(crate) failed: bool,
}

impl Stream {
    /// A response that is only bytes from the heap (errors, JSON, metrics): one send.
    pub(crate) fn bytes(status: u16, out: Vec<u8>, close_after: bool) -> Stream {
        Stream {
            status,
            source: None,
            todo: VecDeque::new(),
            literals: Vec::new(),
            pieces: VecDeque::from([Piece::Bytes(out)]),
            next_seq: 0,
            send_in_flight: false,
            close_after,
            failed: false,
        }
    }
}

pub(crate) struct Conn {
    pub sock: Option<TcpStream>,
    pub fd: RawFd,
    /// Receive buffer (`None` while a receive owns it) and the bytes in it.
    pub rbuf: Option<Vec<u8>>,
    pub rlen: usize,
    pub phase: Phase,
    /// Operations of this connection in the kernel (a zero-copy send counts until its
    /// notification).
    pub ops: u32,
    /// When the current phase's timer started (last progress).
    pub since: Instant,
    /// The request's head was parsed at this instant (latency metric).
    pub req_start: Instant,
    pub stream: Option<Box<Stream>>,
    /// Waiting in the buffer FIFO.
    pub waiting_buf: bool,
    /// Buffers this connection holds (read in flight, ready, being sent, or awaiting a
    /// zero-copy notification); at most `stream_depth`.
    pub chunks_held: usize,
    /// Stop issuing operations; close once `ops == 0`.
    pub dying: bool,
    /// The head timer fired: answer 408 once the pending receive returns.
    pub head_timed_out: bool,
    /// An upload or delete parsed while earlier operations (zero-copy notifications of the
    /// previous response) were still in flight: handed off once they are done.
    pub handoff: Option<(RequestHead, String, crate::worker::JobKind)>,
    /// The send in flight and how far the driver had got with it at the last timeout check:
    /// a slow reader that keeps taking bytes is making progress.
    pub send_tag: Option<u64>,
    pub send_progress_seen: usize,
    /// Payload may go with `SEND_ZC` (the peer is not on this host, or local zero-copy is on).
    pub zero_copy: bool,
    /// Accepted on the inter-server listener: every request must present the cluster token.
    pub peer: bool,
    /// A relay asking its holder for the asset's metadata (before the head), with the request
    /// it answers (its head stays in `rbuf` until then) and whether that carries a body.
    pub relay: Option<Box<RelaySource>>,
    pub relay_req: Option<(RequestHead, bool)>,
    /// The relay of a killed stream, its holder socket cut, kept until its operation is done
    /// (a socket is closed only when none of its operations is in the kernel).
    pub parked: Option<Box<RelaySource>>,
}

impl Stream {
    /// Gives the buffers of the pieces not yet sent back to the pool; returns how many.
    pub(crate) fn free_bufs(self, drv: &mut Driver) -> usize {
        let mut freed = 0;
        for p in self.pieces {
            if let Piece::Chunk { buf: Some(b), .. } = p {
                drv.free_buf(b);
                freed += 1;
            }
        }
        freed
    }
}

impl Conn {
    /// A connection between requests, with `leftover` (bytes of the next request already
    /// received, e.g. by an ingest worker) at the front of its receive buffer; `peer`: it came
    /// in on the inter-server listener.
    pub(crate) fn new(sock: TcpStream, leftover: &[u8], cfg: &NodeConfig, peer: bool) -> Conn {
        let zero_copy = cfg.zero_copy_local || !is_local_peer(&sock);
        let mut rbuf = vec![0u8; cfg.head_bytes_max];
        let n = leftover.len().min(rbuf.len());
        rbuf[..n].copy_from_slice(&leftover[..n]);
        Conn {
            fd: sock.as_raw_fd(),
            sock: Some(sock),
            rbuf: Some(rbuf),
            rlen: n,
            phase: Phase::Idle,
            ops: 0,
            since: Instant::now(),
            req_start: Instant::now(),
            stream: None,
            waiting_buf: false,
            chunks_held: 0,
            dying: false,
            head_timed_out: false,
            handoff: None,
            send_tag: None,
            send_progress_seen: 0,
            zero_copy,
            peer,
            relay: None,
            relay_req: None,
            parked: None,
        }
    }
}

/// Whether the peer is on this host (loopback, or our own address), where zero-copy sends gain
/// nothing.
fn is_local_peer(sock: &TcpStream) -> bool {
    match (sock.peer_addr(), sock.local_addr()) {
        (Ok(p), Ok(l)) => p.ip().is_loopback() || p.ip() == l.ip(),
        _ => false,
    }
}
