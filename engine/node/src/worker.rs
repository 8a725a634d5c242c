//! Ingest workers: uploads (PUT) and deletes, off the shards.
//!
//! A shard that parses a PUT or DELETE hands the connection here (with the bytes it already
//! received) through a bounded queue; a full queue is a 503, never an unbounded backlog. The
//! worker streams the body straight into the volume's registered buffers with blocking reads
//! (`SO_RCVTIMEO` is the body timeout), answers 201 only after [`reel_store::Volume::put`] returned —
//! data and journal record durable — and hands the connection back to its shard for
//! keep-alive, with whatever bytes followed the body (a pipelined request).
//!
//! An upload that fails in any way (client gone, timeout, bad chunked framing, no space) is
//! aborted: nothing of it becomes visible and its reservation returns to the allocator.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::metrics::{ErrorKind, ThreadMetrics};
use super::Shared;
use reel_http::response::{render_error, render_head, write_continue, HeadFields};
use reel_http::{BodyFraming, ChunkedDecoder, HttpError, Method, RequestHead, Status};
use reel_store::driver::{Driver, DriverConfig, DriverError};
use reel_store::error::EngineError;
use reel_store::ingest::PutOptions;

/// A connection handed from a shard to a worker.
pub(crate) struct Job {
    pub sock: TcpStream,
    /// The shard's receive buffer: the head at `[..head.head_len]`, then body bytes already
    /// received up to `rlen`.
    pub rbuf: Vec<u8>,
    pub rlen: usize,
    pub head: RequestHead,
    pub id: String,
    pub shard: usize,
    pub req_start: Instant,
}

/// A connection handed back.
pub(crate) struct Returned {
    pub sock: TcpStream,
    /// Bytes received after the body: the start of the next request.
    pub leftover: Vec<u8>,
    pub close: bool,
}

/// How a worker reaches shard `i`: its channel and the pipe that wakes its ring.
pub(crate) struct ReturnPath {
    pub tx: Sender<Returned>,
    pub wake: io::PipeWriter,
}

/// The small ring an ingest worker or the migration scheduler copies with: 64 entries, eight
/// buffers of one chunk of the primary.
pub(crate) fn chunk_ring(chunk: usize) -> Result<Driver, DriverError> {
    Driver::new(&DriverConfig {
        ring_entries: 64,
        buf_size: chunk,
        buf_count: 8,
        write_log: None,
    })
}

pub(crate) fn run(i: usize, shared: &Shared, rx: &Receiver<Job>, returns: &[ReturnPath]) {
    let m = shared.worker_metrics(i);
    let chunk = shared.tiers.primary.chunk_size() as usize;
    let mut drv = match chunk_ring(chunk) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(worker = i, error = %e, "ingest worker cannot start its ring");
            return;
        }
    };
    while let Ok(job) = rx.recv() {
        let shard = job.shard;
        let ret = handle(shared, m, &mut drv, job);
        if let Some(path) = returns.get(shard) {
            if path.tx.send(ret).is_ok() {
                let _ = (&path.wake).write(&[1]);
            }
        }
    }
}

fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn handle(shared: &Shared, m: &ThreadMetrics, drv: &mut Driver, job: Job) -> Returned {
    let Job {
        sock,
        rbuf,
        rlen,
        head,
        id,
        req_start,
        ..
    } = job;
    let cfg = &shared.cfg;
    let _ = sock.set_read_timeout(Some(cfg.body_timeout));
    let _ = sock.set_write_timeout(Some(cfg.send_timeout));
    let pre = rbuf.get(head.head_len..rlen).unwrap_or_default();
    let (status, mut out, close, leftover) = match head.method {
        Method::Delete => {
            if !matches!(head.body, BodyFraming::None | BodyFraming::Length(0)) {
                m.error(ErrorKind::BadRequest);
                let e = HttpError::BadRequest {
                    reason: "DELETE takes no body",
                };
                error_answer(&e, true, Vec::new())
            } else {
                match delete_everywhere(shared, drv, &id) {
                    Ok(true) => {
                        if let Some(slot) = shared.index.unregister(&id) {
                            if let Some(tx) = &shared.events_tx {
                                let _ = tx.send(super::scheduler::Event::Deleted {
                                    id: id.clone(),
                                    slot,
                                });
                            }
                        }
                        let mut out = Vec::new();
                        let mut f = HeadFields::new(Status::NO_CONTENT, now_unix_s());
                        f.close = !head.keep_alive;
                        render_head(&mut out, &f);
                        (204, out, !head.keep_alive, pre.to_vec())
                    }
                    Ok(false) => {
                        error_answer(&super::no_such_asset(), !head.keep_alive, pre.to_vec())
                    }
                    Err(e) => engine_error_answer(m, &e, pre.to_vec()),
                }
            }
        }
        _ if super::is_policy_asset(&id) => put_policy(shared, m, drv, &sock, &head, &id, pre),
        _ => put(shared, m, drv, &sock, &rbuf, &head, &id, pre),
    };
    if head.method == Method::Head {
        out.clear();
    }
    let written = (&sock).write_all(&out).is_ok();
    m.request_done(status, 0, req_start.elapsed().as_nanos() as u64);
    let close = close || !written;
    if close {
        let _ = sock.shutdown(Shutdown::Write);
    }
    Returned {
        sock,
        leftover,
        close,
    }
}

type Answer = (u16, Vec<u8>, bool, Vec<u8>);

/// Deletes `id` from the secondary, then from the primary, under the tier lock (see
/// [`super::writeback`] for why that order). True if either tier had it.
fn delete_everywhere(shared: &Shared, drv: &mut Driver, id: &str) -> Result<bool, EngineError> {
    let _g = shared.tier_lock.lock();
    let mut found = false;
    if let Some(s) = &shared.tiers.secondary {
        found |= s.delete(drv, id)?;
    }
    found |= shared.tiers.primary.delete(drv, id)?;
    if found {
        // The asset's stored tiering policy goes with it.
        shared
            .tiers
            .primary
            .delete(drv, &super::policy_asset_name(id))?;
    }
    Ok(found)
}

/// Largest policy body accepted.
const POLICY_BODY_BYTES_MAX: u64 = 4096;

/// `PUT /assets/{id}/policy`: validates the JSON (`promote_per_h`, `demote_per_h`, `pin`),
/// stores it durably as the internal asset `{id}/policy` on the primary, then applies it.
#[allow(clippy::too_many_arguments)]
fn put_policy(
    shared: &Shared,
    m: &ThreadMetrics,
    drv: &mut Driver,
    sock: &TcpStream,
    head: &RequestHead,
    name: &str,
    pre: &[u8],
) -> Answer {
    let id = name.strip_suffix(super::POLICY_SUFFIX).unwrap_or(name);
    let bad = |reason: String| HttpError::Node {
        status: Status::BAD_REQUEST,
        reason,
    };
    let framing = match head.body {
        BodyFraming::Length(n) if n <= POLICY_BODY_BYTES_MAX => Framing::Length { remaining: n },
        BodyFraming::Chunked => Framing::Chunked(ChunkedDecoder::new()),
        BodyFraming::Length(_) => {
            m.error(ErrorKind::BadRequest);
            return error_answer(
                &bad(format!(
                    "a policy is at most {POLICY_BODY_BYTES_MAX} bytes of JSON"
                )),
                true,
                Vec::new(),
            );
        }
        BodyFraming::None => {
            let e = HttpError::Node {
                status: Status::LENGTH_REQUIRED,
                reason: "PUT of a policy needs a JSON body".into(),
            };
            return error_answer(&e, !head.keep_alive, pre.to_vec());
        }
    };
    if head.expect_continue {
        let mut c = Vec::new();
        write_continue(&mut c);
        let _ = (&*sock).write_all(&c);
    }
    let mut body = BodyReader {
        sock,
        buf: pre.to_vec(),
        pos: 0,
        pending: 0..0,
        framing,
        failure: None,
        received: 0,
    };
    let mut json = Vec::new();
    let read = (&mut body)
        .take(POLICY_BODY_BYTES_MAX + 1)
        .read_to_end(&mut json);
    if read.is_err() || json.len() as u64 > POLICY_BODY_BYTES_MAX {
        m.error(ErrorKind::BadRequest);
        return error_answer(
            &bad("the policy body could not be read, or is too large".into()),
            true,
            Vec::new(),
        );
    }
    let leftover = body.leftover();
    let policy: reel_policy::AssetPolicy = match serde_json::from_slice(&json) {
        Ok(p) => p,
        Err(e) => {
            m.error(ErrorKind::BadRequest);
            return error_answer(
                &bad(format!("policy JSON: {e}; fields: promote_per_h, demote_per_h, pin (\"primary\" or \"secondary\")")),
                !head.keep_alive,
                leftover,
            );
        }
    };
    if let Err(e) = policy.validate() {
        m.error(ErrorKind::BadRequest);
        return error_answer(&bad(e.to_string()), !head.keep_alive, leftover);
    }
    let Some(pol) = &shared.policy else {
        let e = HttpError::Node {
            status: Status(409),
            reason: "this node has no secondary device, so there is no tiering to configure".into(),
        };
        return error_answer(&e, !head.keep_alive, leftover);
    };
    let Some(slot) = shared.index.slot(id) else {
        return error_answer(&super::no_such_asset(), !head.keep_alive, leftover);
    };
    let mut stored = serde_json::to_vec(&policy).unwrap_or_default();
    stored.push(b'\n');
    let opts = PutOptions {
        content_type: Some("application/json".into()),
        size: Some(stored.len() as u64),
        depth: None,
        created_unix_ns: None,
        io_max: None,
    };
    if let Err(e) = shared
        .tiers
        .primary
        .put(drv, name, &mut stored.as_slice(), &opts)
    {
        return engine_error_answer(m, &e, Vec::new());
    }
    if let Err(e) = super::scheduler::lock(pol).set_asset_policy(slot, policy) {
        return error_answer(&bad(e.to_string()), !head.keep_alive, leftover);
    }
    let mut out = Vec::new();
    let mut f = HeadFields::new(Status::OK, now_unix_s());
    f.content_type = Some("application/json");
    f.content_length = Some(stored.len() as u64);
    f.close = !head.keep_alive;
    render_head(&mut out, &f);
    out.extend_from_slice(&stored);
    (200, out, !head.keep_alive, leftover)
}

fn error_answer(e: &HttpError, close: bool, leftover: Vec<u8>) -> Answer {
    let mut out = Vec::new();
    let close = render_error(&mut out, e, now_unix_s(), false, close);
    (e.status().0, out, close, leftover)
}

fn engine_error_answer(m: &ThreadMetrics, e: &EngineError, leftover: Vec<u8>) -> Answer {
    let (status, kind) = match e {
        EngineError::NoSpace { .. }
        | EngineError::TooFragmented { .. }
        | EngineError::MetadataFull { .. } => (Status::INSUFFICIENT_STORAGE, ErrorKind::NoSpace),
        EngineError::InvalidId { .. } | EngineError::InvalidContentType => {
            (Status::BAD_REQUEST, ErrorKind::BadRequest)
        }
        EngineError::SizeMismatch { .. } => (Status::BAD_REQUEST, ErrorKind::ClientGonePut),
        _ => (Status::INTERNAL_SERVER_ERROR, ErrorKind::DeviceError),
    };
    if kind == ErrorKind::DeviceError {
        tracing::error!(error = %e, "request failed on the device");
    }
    m.error(kind);
    let err = HttpError::Node {
        status,
        reason: e.to_string(),
    };
    // The body may be unread: close rather than take it for the next request.
    error_answer(&err, true, leftover)
}

#[allow(clippy::too_many_arguments)]
fn put(
    shared: &Shared,
    m: &ThreadMetrics,
    drv: &mut Driver,
    sock: &TcpStream,
    rbuf: &[u8],
    head: &RequestHead,
    id: &str,
    pre: &[u8],
) -> Answer {
    let vol = &shared.tiers.primary;
    let size = match head.body {
        BodyFraming::Length(n) => Some(n),
        BodyFraming::Chunked => None,
        BodyFraming::None => {
            let e = HttpError::Node {
                status: Status::LENGTH_REQUIRED,
                reason: "PUT needs a body with Content-Length or Transfer-Encoding: chunked".into(),
            };
            return error_answer(&e, !head.keep_alive, pre.to_vec());
        }
    };
    let content_type = match head.header_once(rbuf, "content-type") {
        None => None,
        Some(v) => match std::str::from_utf8(v) {
            Ok(s) => Some(s.trim().to_string()),
            Err(_) => {
                m.error(ErrorKind::BadRequest);
                let e = HttpError::BadRequest {
                    reason: "Content-Type must be printable ASCII",
                };
                return error_answer(&e, true, Vec::new());
            }
        },
    };
    if let Some(n) = size {
        // Refuse what cannot fit before the client sends it (and before `100 Continue`). The
        // engine checks again under its lock when it reserves.
        let st = vol.stats();
        let room = st.free_bytes + st.reclaim_pending_bytes;
        if n > room {
            m.error(ErrorKind::NoSpace);
            let e = HttpError::Node {
                status: Status::INSUFFICIENT_STORAGE,
                reason: format!("not enough space: the body is {n} bytes, {room} are free"),
            };
            return error_answer(&e, true, Vec::new());
        }
    }
    let opts = PutOptions {
        content_type,
        size,
        depth: None,
        created_unix_ns: None,
        io_max: None,
    };
    if head.expect_continue {
        let mut c = Vec::new();
        write_continue(&mut c);
        if (&*sock).write_all(&c).is_err() {
            m.error(ErrorKind::ClientGonePut);
            return (499, Vec::new(), true, Vec::new());
        }
    }
    let mut body = BodyReader {
        sock,
        buf: pre.to_vec(),
        pos: 0,
        pending: 0..0,
        framing: match size {
            Some(n) => Framing::Length { remaining: n },
            None => Framing::Chunked(ChunkedDecoder::new()),
        },
        failure: None,
        received: 0,
    };
    let res = vol.put(drv, id, &mut body, &opts);
    m.body_bytes(body.received);
    match res {
        Ok(asset) => {
            let slot = shared.index.register(id, asset.size());
            if let Some(tx) = &shared.events_tx {
                let _ = tx.send(super::scheduler::Event::Uploaded {
                    id: id.to_string(),
                    slot,
                    size: asset.size(),
                });
            }
            let mut out = Vec::new();
            let etag = asset.etag();
            let mut f = HeadFields::new(Status::CREATED, now_unix_s());
            f.etag = Some(&etag);
            f.content_length = Some(0);
            f.close = !head.keep_alive;
            render_head(&mut out, &f);
            (201, out, !head.keep_alive, body.leftover())
        }
        Err(e) => match body.failure {
            Some(BodyFailure::Timeout) => {
                m.error(ErrorKind::TimeoutBody);
                let e = HttpError::Node {
                    status: Status::REQUEST_TIMEOUT,
                    reason: "the request body stalled; nothing was stored".into(),
                };
                error_answer(&e, true, Vec::new())
            }
            Some(BodyFailure::Framing(e)) => {
                m.error(ErrorKind::BadRequest);
                error_answer(&e, true, Vec::new())
            }
            Some(BodyFailure::Gone) => {
                // Nobody is left to answer; nothing was stored.
                m.error(ErrorKind::ClientGonePut);
                (499, Vec::new(), true, Vec::new())
            }
            None => engine_error_answer(m, &e, Vec::new()),
        },
    }
}

enum Framing {
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
}

enum BodyFailure {
    Timeout,
    Gone,
    Framing(HttpError),
}

/// The request body as a `Read`: first the bytes the shard already received, then the socket.
/// Content-Length bodies are read from the socket straight into the caller's buffer (the
/// volume's registered buffer); chunked bodies go through a small staging buffer and the
/// decoder, which returns payload ranges.
struct BodyReader<'a> {
    sock: &'a TcpStream,
    buf: Vec<u8>,
    /// Next unconsumed byte of `buf` (for the decoder, or for Content-Length bodies).
    pos: usize,
    /// Decoded chunk payload in `buf` not yet handed out.
    pending: std::ops::Range<usize>,
    framing: Framing,
    failure: Option<BodyFailure>,
    received: u64,
}

const STAGING_BYTES: usize = 256 << 10;

impl BodyReader<'_> {
    /// Bytes after the body (the next pipelined request).
    fn leftover(&self) -> Vec<u8> {
        self.buf.get(self.pos..).unwrap_or_default().to_vec()
    }

    fn recv(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self.sock.read(out) {
            Ok(0) => {
                self.failure = Some(BodyFailure::Gone);
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection before the body ended",
                ))
            }
            Ok(n) => {
                self.received += n as u64;
                Ok(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.failure = Some(BodyFailure::Timeout);
                Err(e)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => {
                self.failure = Some(BodyFailure::Gone);
                Err(e)
            }
        }
    }
}

impl Read for BodyReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        match &mut self.framing {
            Framing::Length { remaining } => {
                if *remaining == 0 {
                    return Ok(0);
                }
                let want = out
                    .len()
                    .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                let avail = self.buf.len() - self.pos;
                let n = if avail > 0 {
                    let n = want.min(avail);
                    out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                    self.pos += n;
                    n
                } else {
                    loop {
                        let n = self.recv(&mut out[..want])?;
                        if n > 0 {
                            break n;
                        }
                    }
                };
                if let Framing::Length { remaining } = &mut self.framing {
                    *remaining -= n as u64;
                }
                Ok(n)
            }
            Framing::Chunked(_) => loop {
                if !self.pending.is_empty() {
                    let n = out.len().min(self.pending.len());
                    out[..n].copy_from_slice(&self.buf[self.pending.start..self.pending.start + n]);
                    self.pending.start += n;
                    return Ok(n);
                }
                let Framing::Chunked(dec) = &mut self.framing else {
                    return Ok(0);
                };
                if dec.is_done() {
                    return Ok(0);
                }
                if self.pos == self.buf.len() {
                    self.buf.resize(STAGING_BYTES, 0);
                    let mut staging = std::mem::take(&mut self.buf);
                    let got = self.recv(&mut staging);
                    self.buf = staging;
                    let n = match got {
                        Ok(n) => n,
                        Err(e) => {
                            self.buf.clear();
                            self.pos = 0;
                            return Err(e);
                        }
                    };
                    self.buf.truncate(n);
                    self.pos = 0;
                    continue;
                }
                let Framing::Chunked(dec) = &mut self.framing else {
                    return Ok(0);
                };
                match dec.decode(&self.buf[self.pos..]) {
                    Ok(step) => {
                        if let Some(r) = step.data {
                            self.pending = self.pos + r.start..self.pos + r.end;
                        }
                        self.pos += step.consumed;
                    }
                    Err(e) => {
                        self.failure = Some(BodyFailure::Framing(e));
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "malformed chunked body",
                        ));
                    }
                }
            },
        }
    }
}
