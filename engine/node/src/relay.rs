//! The relay: a stream source that fetches an asset from the node holding it and streams it on,
//! for a client sent here with a relay ticket (`GET /assets/{id}?ticket=…`, the ticket checked by
//! the shard).
//!
//! One relay owns one TCP connection to the holder (`ticket.source`, with the cluster token as
//! `Authorization: Bearer`), driven by the shard's ring; exactly one operation is on that socket
//! at a time (so its bytes are received in order), in this sequence:
//!
//! 1. Before the client's head: connect, `GET /chunks/{id}?count=0` (size, etag, content type,
//!    chunk size), then the shard plans the response from those as for a local asset
//!    ([`reel_http::plan`]), so ranges, conditionals and HEAD behave the same.
//! 2. For each client range, a *cover*: the chunk-aligned span holding it, at most
//!    [`COVER_CHUNKS_MAX`] chunks (a longer range takes several covers). Two pipelined requests
//!    in one send: `GET /chunks/{id}?from=F&count=N` (the crcs of the cover's chunks only) and
//!    `GET /assets/{id}` with `Range: bytes=a-b` and `If-Match: <etag>`. Both heads are received
//!    into a small heap buffer ([`RX_BYTES`]); body bytes that came with them are copied into
//!    the first registered buffer, the rest is received straight into registered buffers.
//! 3. Each read receives whole chunks into one registered buffer (as many as fit: one 1 MiB
//!    chunk per 1 MiB buffer by default; a holder whose chunk is larger than this node's
//!    `--read-buf` is refused), checks every chunk's crc32c against the cover's list, and only
//!    then gives the shard the part of it the client asked for.
//!
//! A failure before the head (unreachable, refused, another version, a bad answer) becomes a
//! 502 with the reason; after it, the stream is cut (the head promised a length). Either way the
//! failure is counted, the holder's name noted for the manager ([`Shared::note_failed_source`])
//! and logged once at warn. Everything the holder sends is untrusted: heads and lengths are
//! checked, nothing is indexed unchecked.
//!
//! Memory per relayed stream: the heap buffer and a cover's crcs (about 33 KiB); asset bytes only
//! ever sit in the shard's registered buffers, at most `--stream-depth` of them per stream.
//!
//! [`Shared::note_failed_source`]: super::Shared::note_failed_source

use std::net::{Shutdown, SocketAddr};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};

use reel_http::auth::ClusterToken;
use reel_http::client::{parse_response_head, ResponseHead};
use reel_http::cluster::{ChunkList, Ticket};
use reel_http::response::{is_valid_field_value, DEFAULT_CONTENT_TYPE};
use reel_store::driver::{Buf, Completion, Op, PeerAddr};

use super::source::{Cx, Filled, Next, Pending, Read};

/// Bytes of the heap buffer the holder's response heads and chunk-list windows arrive in.
pub(crate) const RX_BYTES: usize = 32 << 10;

/// Most chunks one cover asks of the holder: 256 MiB of 1 MiB chunks, whose crc list (about
/// 2.8 KB of JSON) fits the heap buffer with room to spare.
pub(crate) const COVER_CHUNKS_MAX: u64 = 256;

/// Longest content type taken from a holder.
const CONTENT_TYPE_MAX: usize = 255;

/// What the holder says of the asset, which the shard plans the response from.
#[derive(Clone, Debug)]
pub(crate) struct Meta {
    pub size: u64,
    pub chunk_bytes: u64,
    pub content_type: String,
    pub last_modified_unix_s: u64,
}

/// The chunk-aligned span being received: `[start, end)`, received up to `pos`, and the crcs of
/// its chunks.
struct Cover {
    start: u64,
    end: u64,
    pos: u64,
    crcs: Vec<u32>,
}

/// The body read in flight: the cover's chunk it starts at, the bytes it fills (whole chunks)
/// and the bytes the receive itself must bring (the rest came with the heads).
struct Reading {
    chunk0: usize,
    n: usize,
    expect: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Connecting,
    SendMeta,
    RecvMeta,
    /// No cover: the next read asks for one.
    Idle,
    SendCover,
    RecvCover,
    /// Receiving the cover's body.
    Body,
    Failed,
}

/// What a control completion leads to.
pub(crate) enum Ctl {
    /// Push this operation on the holder socket (a control operation again).
    Push(Op),
    /// The metadata arrived: plan the response ([`RelaySource::meta`]).
    MetaReady,
    /// A cover's heads arrived: fill the stream.
    CoverReady,
    /// The fetch failed (already counted, noted and logged): the reason, for a 502.
    Failed(String),
}

/// A stream source that relays an asset from the node holding it. See the module doc.
pub(crate) struct RelaySource {
    sock: socket2::Socket,
    fd: RawFd,
    holder: SocketAddr,
    /// The holder's node name, as the ticket gives it (noted when a fetch from it fails).
    source_node: Option<String>,
    id: String,
    etag: String,
    /// `Bearer <token>`: a secret, never logged.
    bearer: Vec<u8>,
    state: State,
    /// An operation on the holder socket is in flight.
    busy: bool,
    /// Heads and chunk lists as received (`None` while a receive owns it); `rx[rx_used..rx_len]`
    /// is body bytes that came with the heads.
    rx: Option<Vec<u8>>,
    rx_len: usize,
    rx_used: usize,
    meta: Option<Meta>,
    cover: Option<Cover>,
    reading: Option<Reading>,
    /// The shard's timer cut the holder socket.
    timed_out: bool,
}

impl RelaySource {
    /// The asset relayed.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// A relay of `id` as `ticket` says (its source and etag are there: the shard checked), and
    /// the connect to push as its first control operation.
    pub(crate) fn start(
        ticket: &Ticket,
        id: &str,
        token: &ClusterToken,
        own: &[SocketAddr],
    ) -> Result<(Box<RelaySource>, Op), String> {
        let (Some(holder), Some(etag)) = (ticket.source, ticket.etag.clone()) else {
            return Err("the relay ticket names no source or version".into());
        };
        // A holder that is this node (or 0.0.0.0, which connects to this host) can never
        // serve the ticket: the shard serves the ticket's version itself when it holds it, so
        // the fetch would only come back to this node to fail. A wildcard address or port 0
        // names no holder at all (a node that advertised its wildcard bind). Refused up front
        // with the reason rather than a confusing "no such asset" from this node's own answer.
        if holder.ip().is_unspecified() || holder.port() == 0 {
            return Err(format!(
                "the relay ticket's source {holder} names no holder (an unspecified address or \
                 port 0)"
            ));
        }
        if own.contains(&holder) {
            return Err(format!(
                "the relay ticket's source {holder} is this node, which lacks the ticket's version"
            ));
        }
        if !is_valid_field_value(etag.as_bytes()) {
            return Err("the relay ticket's etag is not a header value".into());
        }
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(holder),
            socket2::Type::STREAM,
            None,
        )
        .map_err(|e| format!("cannot make a socket to reach the holder: {e}"))?;
        let _ = sock.set_tcp_nodelay(true);
        let fd = sock.as_raw_fd();
        let relay = Box::new(RelaySource {
            sock,
            fd,
            holder,
            source_node: ticket.source_node.clone(),
            id: id.to_string(),
            etag,
            bearer: token.bearer_header(),
            state: State::Connecting,
            busy: true,
            rx: Some(vec![0; RX_BYTES]),
            rx_len: 0,
            rx_used: 0,
            meta: None,
            cover: None,
            reading: None,
            timed_out: false,
        });
        let op = Op::Connect {
            fd,
            addr: PeerAddr::new(holder),
        };
        Ok((relay, op))
    }

    /// The holder's metadata, once [`Ctl::MetaReady`] said so.
    pub(crate) fn meta(&self) -> Option<&Meta> {
        self.meta.as_ref()
    }

    /// The version relayed (the ticket's etag, which the holder confirmed).
    pub(crate) fn etag(&self) -> &str {
        &self.etag
    }

    /// Cuts the holder socket, so that its operation in flight ends (the stream is gone, or
    /// the shard's timer fired: `timed_out`).
    pub(crate) fn shutdown(&mut self, timed_out: bool) {
        self.timed_out |= timed_out;
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// An operation on the holder socket is in flight and the shard's timer has not cut it
    /// yet: a stream stalled on this relay waits on the holder.
    pub(crate) fn waiting_on_holder(&self) -> bool {
        self.busy && !self.timed_out && self.state != State::Failed
    }

    /// `GET {target}` to the holder with the token and `extra` headers.
    fn request(&self, out: &mut Vec<u8>, target: &str, extra: &[(&str, &str)]) {
        out.extend_from_slice(
            format!("GET {target} HTTP/1.1\r\nHost: {}\r\n", self.holder).as_bytes(),
        );
        out.extend_from_slice(b"Authorization: ");
        out.extend_from_slice(&self.bearer);
        out.extend_from_slice(b"\r\n");
        for (name, value) in extra {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The fetch failed: counted (`crc`: a chunk's crc did not match), the holder noted, one
    /// warning; the reason for a 502.
    fn fail(&mut self, cx: &Cx, crc: bool, why: impl Into<String>) -> String {
        let why = if self.timed_out {
            "the holder did not answer in time".to_string()
        } else {
            why.into()
        };
        let node = self.source_node.as_deref().unwrap_or("(unnamed)");
        let reason = format!(
            "relaying {} from node {node} at {} failed: {why}",
            self.id, self.holder
        );
        if self.state != State::Failed {
            self.state = State::Failed;
            if crc {
                cx.m.relay_crc_failure();
            } else {
                cx.m.relay_fetch_failure();
            }
            if let Some(n) = &self.source_node {
                cx.shared.note_failed_source(n);
            }
            tracing::warn!(shard = cx.shard, "{reason}");
        }
        reason
    }

    /// A receive of more head bytes into the heap buffer.
    fn recv_more(&mut self, cx: &Cx) -> Ctl {
        let Some(data) = self.rx.take() else {
            return Ctl::Failed(self.fail(cx, false, "internal: the receive buffer is in use"));
        };
        if self.rx_len >= data.len() {
            self.rx = Some(data);
            return Ctl::Failed(self.fail(
                cx,
                false,
                format!("the holder's answer heads exceed {RX_BYTES} bytes"),
            ));
        }
        self.busy = true;
        Ctl::Push(Op::Recv {
            fd: self.fd,
            data,
            at: self.rx_len,
        })
    }

    /// A control operation on the holder socket completed.
    pub(crate) fn on_ctl(&mut self, mut comp: Completion, cx: &Cx) -> Ctl {
        self.busy = false;
        let state = self.state;
        if matches!(state, State::RecvMeta | State::RecvCover) {
            self.rx = comp.data.take();
        }
        let res = match comp.result {
            Ok(n) => n,
            Err(e) => {
                let what = match state {
                    State::Connecting => "cannot connect",
                    State::SendMeta | State::SendCover => "cannot send the request",
                    _ => "cannot receive the answer",
                };
                return Ctl::Failed(self.fail(cx, false, format!("{what}: {e}")));
            }
        };
        match state {
            State::Connecting => {
                let mut req = Vec::with_capacity(256);
                self.request(&mut req, &format!("/chunks/{}?count=0", self.id), &[]);
                self.state = State::SendMeta;
                self.busy = true;
                Ctl::Push(Op::Send {
                    fd: self.fd,
                    data: req,
                    at: 0,
                })
            }
            State::SendMeta | State::SendCover => {
                self.state = if state == State::SendMeta {
                    State::RecvMeta
                } else {
                    State::RecvCover
                };
                self.rx_len = 0;
                self.rx_used = 0;
                self.recv_more(cx)
            }
            State::RecvMeta | State::RecvCover => {
                if res == 0 {
                    return Ctl::Failed(self.fail(cx, false, "the holder closed the connection"));
                }
                self.rx_len += res;
                let parsed = match state {
                    State::RecvMeta => self.parse_meta(cx),
                    _ => self.parse_cover(),
                };
                match parsed {
                    Ok(true) if state == State::RecvMeta => Ctl::MetaReady,
                    Ok(true) => Ctl::CoverReady,
                    Ok(false) => self.recv_more(cx),
                    Err(why) => Ctl::Failed(self.fail(cx, false, why)),
                }
            }
            State::Idle | State::Body | State::Failed => {
                Ctl::Failed(self.fail(cx, false, "internal: a control completion out of turn"))
            }
        }
    }

    /// The received bytes `rx[at..rx_len]`.
    fn received(&self, at: usize) -> &[u8] {
        self.rx
            .as_deref()
            .and_then(|rx| rx.get(at..self.rx_len))
            .unwrap_or_default()
    }

    /// A chunk list answer at `rx[at..]`: `Ok(None)` while incomplete, else the list and the
    /// offset after it.
    fn chunk_list_at(&self, at: usize) -> Result<Option<(ChunkList, usize)>, String> {
        let bytes = self.received(at);
        let Some((head, n)) = parse_response_head(bytes)
            .map_err(|e| format!("a bad answer to the chunk list request: {e}"))?
        else {
            return Ok(None);
        };
        check_status(&head, 200, "the chunk list")?;
        let len = body_len(&head, "the chunk list")?;
        let Some(body) = n.checked_add(len).and_then(|end| bytes.get(n..end)) else {
            return if n.saturating_add(len) > RX_BYTES {
                Err(format!("the holder's chunk list exceeds {RX_BYTES} bytes"))
            } else {
                Ok(None)
            };
        };
        let list: ChunkList = serde_json::from_slice(body)
            .map_err(|e| format!("the holder's chunk list is not valid: {e}"))?;
        if list.etag != self.etag {
            return Err(format!(
                "the holder has version {}, not the ticket's {}",
                list.etag.escape_debug(),
                self.etag
            ));
        }
        Ok(Some((list, at + n + len)))
    }

    /// Parses the metadata answer; `Ok(true)` once it is complete and sound.
    fn parse_meta(&mut self, cx: &Cx) -> Result<bool, String> {
        let Some((list, end)) = self.chunk_list_at(0)? else {
            return Ok(false);
        };
        if end != self.rx_len {
            return Err("the holder sent more than it was asked for".into());
        }
        let chunk_bytes = u64::from(list.chunk_bytes);
        if chunk_bytes == 0 || chunk_bytes > cx.buf_size {
            return Err(format!(
                "the holder's chunk size {chunk_bytes} is not within 1..={} (this node's --read-buf)",
                cx.buf_size
            ));
        }
        let content_type = if list.content_type.len() <= CONTENT_TYPE_MAX
            && is_valid_field_value(list.content_type.as_bytes())
        {
            list.content_type
        } else {
            DEFAULT_CONTENT_TYPE.to_string()
        };
        self.meta = Some(Meta {
            size: list.size,
            chunk_bytes,
            content_type,
            last_modified_unix_s: list.last_modified_unix_s.unwrap_or(0),
        });
        self.state = State::Idle;
        self.rx_len = 0;
        Ok(true)
    }

    /// Parses a cover's two answers (its chunk list, the head of its bytes); `Ok(true)` once
    /// both are here and agree with the cover asked for.
    fn parse_cover(&mut self) -> Result<bool, String> {
        let (Some(meta), Some(cover)) = (&self.meta, &self.cover) else {
            return Err("internal: a cover without metadata".into());
        };
        let (size, chunk_bytes) = (meta.size, meta.chunk_bytes);
        let (start, end) = (cover.start, cover.end);
        let Some((list, at)) = self.chunk_list_at(0)? else {
            return Ok(false);
        };
        let chunks = (end - start).div_ceil(chunk_bytes);
        if list.size != size
            || u64::from(list.chunk_bytes) != chunk_bytes
            || list.crcs.len() as u64 != chunks
        {
            return Err(format!(
                "the holder's chunk list for chunks {}..{} does not match (size {}, chunk {}, {} crcs)",
                start / chunk_bytes,
                start / chunk_bytes + chunks,
                list.size,
                list.chunk_bytes,
                list.crcs.len()
            ));
        }
        let Some((head, n)) = parse_response_head(self.received(at))
            .map_err(|e| format!("a bad answer to the range request: {e}"))?
        else {
            return Ok(false);
        };
        let whole = start == 0 && end == size;
        if !(head.status == 200 && whole) {
            check_status(&head, 206, "the range request")?;
            if head.content_range() != Some((start, end - 1, size)) {
                return Err(format!(
                    "the holder sent Content-Range {:?} for bytes {start}-{}",
                    head.header("content-range").unwrap_or("(none)"),
                    end - 1
                ));
            }
        }
        let len = body_len(&head, "the range request")?;
        if len as u64 != end - start {
            return Err(format!(
                "the holder announced {len} bytes for a range of {}",
                end - start
            ));
        }
        let used = at + n;
        if (self.rx_len - used) as u64 > end - start {
            return Err("the holder sent more than it was asked for".into());
        }
        self.rx_used = used;
        if let Some(c) = self.cover.as_mut() {
            c.crcs = list.crcs;
        }
        self.state = State::Body;
        Ok(true)
    }

    pub(crate) fn next_read(
        &mut self,
        range: Range<u64>,
        buf: Buf,
        bytes: &mut [u8],
        cx: &Cx,
    ) -> Result<Next, Buf> {
        if self.state == State::Failed {
            return Err(buf);
        }
        if self.busy {
            return Ok(Next::Wait { buf, ctl: None });
        }
        let Some(chunk_bytes) = self.meta.as_ref().map(|m| m.chunk_bytes) else {
            self.fail(cx, false, "internal: a read before the metadata");
            return Err(buf);
        };
        match self.state {
            State::Idle => match self.ask_cover(range) {
                Some(op) => Ok(Next::Wait { buf, ctl: Some(op) }),
                None => {
                    self.fail(cx, false, "internal: a range outside the asset");
                    Err(buf)
                }
            },
            State::Body => {
                let Some((start, pos, end)) = self.cover.as_ref().map(|c| (c.start, c.pos, c.end))
                else {
                    return Err(buf);
                };
                if range.start < pos
                    || range.start >= pos.saturating_add(chunk_bytes)
                    || pos >= end
                    || range.end <= range.start
                {
                    self.fail(cx, false, "internal: a read out of the cover's order");
                    return Err(buf);
                }
                // Whole chunks, as many as the buffer holds (at least one: the metadata check).
                let fit = cx.buf_size.min(bytes.len() as u64) / chunk_bytes * chunk_bytes;
                let n = fit.min(end - pos) as usize;
                let rx = self.rx.as_deref().unwrap_or_default();
                let ahead = rx.get(self.rx_used..self.rx_len).unwrap_or_default();
                let l = ahead.len().min(n);
                bytes[..l].copy_from_slice(&ahead[..l]);
                self.rx_used += l;
                let op = if l == n {
                    Op::Nop { buf }
                } else {
                    Op::RecvBuf {
                        fd: self.fd,
                        buf,
                        buf_offset: l,
                        len: n - l,
                    }
                };
                self.reading = Some(Reading {
                    chunk0: ((pos - start) / chunk_bytes) as usize,
                    n,
                    expect: n - l,
                });
                let to = pos + n as u64;
                if let Some(c) = self.cover.as_mut() {
                    c.pos = to;
                }
                let read_end = range.end.min(to);
                self.busy = true;
                Ok(Next::Read(Read {
                    op,
                    end: read_end,
                    pending: Pending::new(
                        (range.start - pos) as usize,
                        (read_end - range.start) as usize,
                    ),
                }))
            }
            _ => Ok(Next::Wait { buf, ctl: None }),
        }
    }

    /// The requests of the cover of `range`'s start (to the end of the range, at most
    /// [`COVER_CHUNKS_MAX`] chunks); `None` when the range lies outside the asset.
    fn ask_cover(&mut self, range: Range<u64>) -> Option<Op> {
        let meta = self.meta.as_ref()?;
        let c = meta.chunk_bytes;
        let start = range.start / c * c;
        let end = range
            .end
            .min(meta.size)
            .div_ceil(c)
            .saturating_mul(c)
            .min(meta.size)
            .min(start.saturating_add(COVER_CHUNKS_MAX * c));
        if start >= end {
            return None;
        }
        let first = start / c;
        let count = (end - start).div_ceil(c);
        let mut req = Vec::with_capacity(512);
        self.request(
            &mut req,
            &format!("/chunks/{}?from={first}&count={count}", self.id),
            &[],
        );
        let range_value = format!("bytes={start}-{}", end - 1);
        self.request(
            &mut req,
            &format!("/assets/{}", self.id),
            &[("Range", &range_value), ("If-Match", &self.etag.clone())],
        );
        self.cover = Some(Cover {
            start,
            end,
            pos: start,
            crcs: Vec::new(),
        });
        self.state = State::SendCover;
        self.busy = true;
        Some(Op::Send {
            fd: self.fd,
            data: req,
            at: 0,
        })
    }

    /// A body read completed: every chunk in it is checked against its crc before the shard
    /// may send any of it.
    pub(crate) fn complete(
        &mut self,
        p: Pending,
        comp: &Completion,
        bytes: Option<&[u8]>,
        cx: &Cx,
    ) -> Result<Filled, ()> {
        self.busy = false;
        let Some(r) = self.reading.take() else {
            self.fail(cx, false, "internal: a body completion without a read");
            return Err(());
        };
        match &comp.result {
            Ok(got) if *got == r.expect => {}
            Ok(got) => {
                self.fail(cx, false, format!("received {got} of {} bytes", r.expect));
                return Err(());
            }
            Err(e) => {
                self.fail(cx, false, format!("the body was cut off: {e}"));
                return Err(());
            }
        }
        let (Some(bytes), Some(cover), Some(meta)) = (
            bytes.and_then(|b| b.get(..r.n)),
            self.cover.as_ref(),
            self.meta.as_ref(),
        ) else {
            self.fail(cx, false, "internal: a body read without its buffer");
            return Err(());
        };
        let c = meta.chunk_bytes as usize;
        for (k, chunk) in bytes.chunks(c).enumerate() {
            let expected = cover.crcs.get(r.chunk0 + k).copied();
            let actual = crc32c::crc32c(chunk);
            if expected != Some(actual) {
                let index = cover.start / meta.chunk_bytes + (r.chunk0 + k) as u64;
                self.fail(
                    cx,
                    true,
                    format!(
                        "chunk {index} has crc32c {actual:08x}, the holder's list says {:08x}; \
                         the stream is cut before its bytes",
                        expected.unwrap_or_default()
                    ),
                );
                return Err(());
            }
        }
        cx.m.relay_bytes(r.n as u64);
        if cover.pos >= cover.end {
            self.cover = None;
            self.state = State::Idle;
            self.rx_len = 0;
            self.rx_used = 0;
        }
        Ok(p.filled())
    }
}

/// `Ok` if the holder answered `want`, else the reason naming `what`.
fn check_status(head: &ResponseHead, want: u16, what: &str) -> Result<(), String> {
    match head.status {
        s if s == want => Ok(()),
        404 => Err(format!("the holder has no such asset (404 to {what})")),
        412 => Err(format!("the holder's version changed (412 to {what})")),
        s @ (401 | 403) => Err(format!(
            "the holder refused the cluster token ({s} to {what})"
        )),
        s => Err(format!("the holder answered {s} to {what}")),
    }
}

/// The Content-Length of an answer (the only framing a relay takes).
fn body_len(head: &ResponseHead, what: &str) -> Result<usize, String> {
    head.content_length()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("the holder's answer to {what} has no Content-Length"))
}
