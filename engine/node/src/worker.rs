//! Ingest workers: uploads (PUT) and deletes, off the shards.
//!
//! A shard that parses a PUT or DELETE hands the connection here (with the bytes it already
//! received) through a bounded queue; a full queue is a 503, never an unbounded backlog. The
//! worker streams the body straight into the volume's registered buffers with blocking reads
//! (`SO_RCVTIMEO` is the body timeout), answers 201 only after [`reel_store::Volume::put`] returned —
//! data and journal record durable — and hands the connection back to its shard for
//! keep-alive, with whatever bytes followed the body (a pipelined request).
//!
//! On a node with a secondary, an upload lands on the primary while it has room or room can be
//! made there by dropping clean copies colder than a newcomer; otherwise on the secondary (from
//! the start when its length is known, else by moving over part-way, every byte kept), and it
//! is refused with 507 only when no tier can hold it (`Placer`). `/info` tells where it landed
//! and why, until the node restarts.
//!
//! An upload that fails in any way (client gone, timeout, bad chunked framing, no space) is
//! aborted: nothing of it becomes visible and its reservation returns to the allocator.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender};

use super::index::{Landing, Room};
use super::metrics::{ErrorKind, ThreadMetrics};
use super::scheduler::{self, SharedPolicy};
use super::{writeback, Shared};
use reel_http::response::{render_error, render_head, write_continue, HeadFields};
use reel_http::{BodyFraming, ChunkedDecoder, HttpError, Method, RequestHead, Status};
use reel_policy::{Outcome, Tier};
use reel_store::catalog::Asset;
use reel_store::driver::{Driver, DriverConfig, DriverError};
use reel_store::error::EngineError;
use reel_store::format::BLOCK;
use reel_store::ingest::{Prepared, PublishCond, PutOptions};
use reel_store::volume::Volume;

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
    /// It came in on the inter-server listener (handed back as such).
    pub peer: bool,
    pub kind: JobKind,
}

/// What a handed-off request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum JobKind {
    /// A PUT or DELETE of `Job::id` (an asset, or an internal `{id}/policy` record).
    Asset,
    /// `PUT /v1/pull`: a pull order in the body (`Job::id` is empty).
    PullOrder,
}

/// A connection handed back.
pub(crate) struct Returned {
    pub sock: TcpStream,
    /// Bytes received after the body: the start of the next request.
    pub leftover: Vec<u8>,
    pub close: bool,
    pub peer: bool,
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
        peer,
        kind,
        ..
    } = job;
    let cfg = &shared.cfg;
    let _ = sock.set_read_timeout(Some(cfg.body_timeout));
    let _ = sock.set_write_timeout(Some(cfg.send_timeout));
    let pre = rbuf.get(head.head_len..rlen).unwrap_or_default();
    let (status, mut out, close, leftover) = match head.method {
        _ if kind == JobKind::PullOrder => pull_order(shared, m, drv, &sock, &head, pre),
        Method::Delete => {
            if !matches!(head.body, BodyFraming::None | BodyFraming::Length(0)) {
                m.error(ErrorKind::BadRequest);
                let e = HttpError::BadRequest {
                    reason: "DELETE takes no body",
                };
                error_answer(&e, true, Vec::new())
            } else if primary_only(&head, &rbuf) {
                drop_primary_answer(shared, m, drv, &id, &head, pre)
            } else {
                match delete_versions(shared, drv, &id, None) {
                    Ok(true) => {
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
        peer,
    }
}

type Answer = (u16, Vec<u8>, bool, Vec<u8>);

/// `DELETE /assets/{id}?tier=primary`: only the primary copy (the manager removing a duplicate
/// it placed; the secondary copy stays).
fn primary_only(head: &RequestHead, rbuf: &[u8]) -> bool {
    head.target(rbuf)
        .split_once('?')
        .is_some_and(|(_, q)| q.split('&').any(|kv| kv == "tier=primary"))
}

/// Drops the primary copy of `id`: on a node with a secondary, only a clean one (the
/// secondary holds the same version durably), by the scheduler's own rule; on a node without
/// one, the asset itself (its primary copy is all it has).
fn drop_primary_answer(
    shared: &Shared,
    m: &ThreadMetrics,
    drv: &mut Driver,
    id: &str,
    head: &RequestHead,
    pre: &[u8],
) -> Answer {
    let close = !head.keep_alive;
    let done = || {
        let mut out = Vec::new();
        let mut f = HeadFields::new(Status::NO_CONTENT, now_unix_s());
        f.close = close;
        render_head(&mut out, &f);
        (204, out, close, pre.to_vec())
    };
    let Some(secondary) = shared.tiers.secondary.as_deref() else {
        return match delete_versions(shared, drv, id, None) {
            Ok(true) => done(),
            Ok(false) => error_answer(&super::no_such_asset(), close, pre.to_vec()),
            Err(e) => engine_error_answer(m, &e, pre.to_vec()),
        };
    };
    let primary = &shared.tiers.primary;
    if primary.get(id).is_none() {
        return error_answer(
            &HttpError::Node {
                status: Status::NOT_FOUND,
                reason: "the primary holds no copy of this asset".into(),
            },
            close,
            pre.to_vec(),
        );
    }
    match writeback::drop_primary_copy(shared, primary, secondary, drv, id) {
        Outcome::Done => {
            // The policy re-learns where the asset is, as after a tombstone kills one copy.
            if let (Some(a), Some(tx)) = (secondary.get(id), &shared.events_tx) {
                let slot = shared.index.register(id, a.size());
                let _ = tx.send(super::scheduler::Event::Uploaded {
                    id: id.to_string(),
                    slot,
                    size: a.size(),
                    tier: Tier::Secondary,
                });
            }
            done()
        }
        Outcome::Failed => error_answer(
            &HttpError::Node {
                status: Status(409),
                reason: "the primary copy is not clean (no durable secondary copy of the \
                             same version): it is the only one here"
                    .into(),
            },
            close,
            pre.to_vec(),
        ),
    }
}

/// Deletes the copies of `id` whose etag is not `keep` (every copy for `None`: a client's
/// DELETE) from the secondary, then from the primary, under the tier lock (see
/// [`super::writeback`] for why that order), each durably (journaled and synced). True if a
/// copy was deleted. Once no tier holds `id`, its stored tiering policy goes too and its slot
/// is freed. A cluster tombstone takes this path as a client's delete does.
pub(crate) fn delete_versions(
    shared: &Shared,
    drv: &mut Driver,
    id: &str,
    keep: Option<&str>,
) -> Result<bool, EngineError> {
    let dead = |a: &Asset| keep.is_none_or(|k| a.etag() != k);
    let (found, gone) = {
        let _g = shared.tier_lock.lock();
        let mut found = false;
        if let Some(s) = &shared.tiers.secondary {
            found |= s.delete_if(drv, id, &dead)?;
        }
        found |= shared.tiers.primary.delete_if(drv, id, &dead)?;
        let gone = shared.tiers.lookup(id).is_none();
        if found && gone {
            // The asset's stored tiering policy goes with it.
            shared
                .tiers
                .primary
                .delete(drv, &super::policy_asset_name(id))?;
        }
        (found, gone)
    };
    if found {
        if gone {
            if let Some(slot) = shared.index.unregister(id) {
                if let Some(tx) = &shared.events_tx {
                    let _ = tx.send(super::scheduler::Event::Deleted {
                        id: id.to_string(),
                        slot,
                    });
                }
            }
        } else if let (Some((a, vol)), Some(tx)) = (shared.tiers.lookup(id), &shared.events_tx) {
            // One tier's copy died, the other's (the version kept) stays: the policy
            // re-learns where the asset is, as after an upload to that tier.
            let tier = if Arc::ptr_eq(vol, &shared.tiers.primary) {
                Tier::Primary
            } else {
                Tier::Secondary
            };
            let slot = shared.index.register(id, a.size());
            let _ = tx.send(super::scheduler::Event::Uploaded {
                id: id.to_string(),
                slot,
                size: a.size(),
                tier,
            });
        }
        shared.note_changed(id);
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
    let (json, leftover) = match read_small_json(
        m,
        sock,
        head,
        pre,
        POLICY_BODY_BYTES_MAX,
        ("a policy", "PUT of a policy"),
    ) {
        Ok(read) => read,
        Err(answer) => return answer,
    };
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

/// Reads a small JSON request body (a policy, a pull order) of at most `max` bytes, framed by
/// a Content-Length or chunked: the body and what follows it, or the answer refusing it.
/// `what` names the body ("a policy") and the request ("PUT of a policy") in the reasons.
fn read_small_json(
    m: &ThreadMetrics,
    sock: &TcpStream,
    head: &RequestHead,
    pre: &[u8],
    max: u64,
    what: (&str, &str),
) -> Result<(Vec<u8>, Vec<u8>), Answer> {
    let bad = |reason: String| HttpError::Node {
        status: Status::BAD_REQUEST,
        reason,
    };
    let framing = match head.body {
        BodyFraming::Length(n) if n <= max => Framing::Length { remaining: n },
        BodyFraming::Chunked => Framing::Chunked(ChunkedDecoder::new()),
        BodyFraming::Length(_) => {
            m.error(ErrorKind::BadRequest);
            let e = bad(format!("{} is at most {max} bytes of JSON", what.0));
            return Err(error_answer(&e, true, Vec::new()));
        }
        BodyFraming::None => {
            let e = HttpError::Node {
                status: Status::LENGTH_REQUIRED,
                reason: format!("{} needs a JSON body", what.1),
            };
            return Err(error_answer(&e, !head.keep_alive, pre.to_vec()));
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
    let read = (&mut body).take(max + 1).read_to_end(&mut json);
    if read.is_err() || json.len() as u64 > max {
        m.error(ErrorKind::BadRequest);
        let e = bad(format!("{} could not be read, or is too large", what.0));
        return Err(error_answer(&e, true, Vec::new()));
    }
    Ok((json, body.leftover()))
}

/// Largest pull order body accepted.
const PULL_ORDER_BYTES_MAX: u64 = 4096;

/// `PUT /v1/pull`: reads the JSON [`reel_http::cluster::PullOrder`] and hands it to
/// [`super::pull::accept`]: 202 queued, 409 held, or the refusal.
fn pull_order(
    shared: &Shared,
    m: &ThreadMetrics,
    drv: &mut Driver,
    sock: &TcpStream,
    head: &RequestHead,
    pre: &[u8],
) -> Answer {
    let bad = |reason: String| HttpError::Node {
        status: Status::BAD_REQUEST,
        reason,
    };
    let (json, leftover) = match read_small_json(
        m,
        sock,
        head,
        pre,
        PULL_ORDER_BYTES_MAX,
        ("a pull order", "PUT /v1/pull"),
    ) {
        Ok(read) => read,
        Err(answer) => return answer,
    };
    let order: reel_http::cluster::PullOrder = match serde_json::from_slice(&json) {
        Ok(o) => o,
        Err(e) => {
            m.error(ErrorKind::BadRequest);
            let e = bad(format!(
                "pull order JSON: {e}; fields: id, etag, size, source (ip:port), \
                 source_node, tier (\"primary\")"
            ));
            return error_answer(&e, !head.keep_alive, leftover);
        }
    };
    let (status, body) = match super::pull::accept(shared, m, drv, order) {
        super::pull::Accepted::Queued(st) => (Status::ACCEPTED, st),
        super::pull::Accepted::Held(st) => (Status(409), st),
        super::pull::Accepted::Refused(status, reason) => {
            m.error(if status == Status::INSUFFICIENT_STORAGE {
                ErrorKind::NoSpace
            } else {
                ErrorKind::BadRequest
            });
            let e = HttpError::Node { status, reason };
            return error_answer(&e, !head.keep_alive, leftover);
        }
    };
    let json = reel_http::api::to_body(&body);
    let mut out = Vec::new();
    let mut f = HeadFields::new(status, now_unix_s());
    f.content_type = Some("application/json");
    f.content_length = Some(json.len() as u64);
    f.close = !head.keep_alive;
    render_head(&mut out, &f);
    out.extend_from_slice(&json);
    (status.0, out, !head.keep_alive, leftover)
}

/// Makes `need` bytes of room on the primary of a node with a secondary by dropping clean
/// copies colder than a newcomer, as for an upload (`Placer`); false when the node has no
/// secondary or the policy finds too few.
pub(crate) fn make_primary_room(
    shared: &Shared,
    m: &ThreadMetrics,
    drv: &mut Driver,
    need: u64,
) -> bool {
    Placer::of(shared).is_some_and(|p| p.make_room(m, drv, need).is_some())
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
    let tiers = Placer::of(shared);
    // Where a body of known length starts: refuse what no tier can hold before the client sends
    // it (and before `100 Continue`). The engine checks again under its lock when it reserves.
    let mut start = Start::Primary(Room::default());
    if let Some(n) = size {
        let refusal = match &tiers {
            None => {
                let st = vol.stats();
                let room = st.free_bytes + st.reclaim_pending_bytes;
                (n > room)
                    .then(|| format!("not enough space: the body is {n} bytes, {room} are free"))
            }
            Some(p) => match p.plan(m, drv, n) {
                Ok(s) => {
                    start = s;
                    None
                }
                Err(msg) => Some(msg),
            },
        };
        if let Some(reason) = refusal {
            m.error(ErrorKind::NoSpace);
            let e = HttpError::Node {
                status: Status::INSUFFICIENT_STORAGE,
                reason,
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
    // On a clustered node, tombstones of this id wait until the manager confirmed the upload
    // (or it failed): an older one must not delete the version about to be acknowledged.
    let _in_flight = shared.cluster.as_ref().map(|c| c.upload_started(id));
    let res = match &tiers {
        None => vol
            .put(drv, id, &mut body, &opts)
            .map(|a| (a, Landing::HadRoom))
            .map_err(PutError::Engine),
        Some(p) => p.stream(m, drv, &mut body, id, &opts, start),
    };
    m.body_bytes(body.received);
    match res {
        Ok((asset, landing)) => {
            let slot = shared.index.register(id, asset.size());
            let tier = landing.tier();
            if tier == Tier::Secondary {
                m.upload_to_secondary(matches!(landing, Landing::Spilled { .. }));
            }
            shared.index.set_upload(id, slot, landing);
            if let Some(tx) = &shared.events_tx {
                let _ = tx.send(super::scheduler::Event::Uploaded {
                    id: id.to_string(),
                    slot,
                    size: asset.size(),
                    tier,
                });
            }
            shared.note_changed(id);
            let etag = asset.etag();
            // A clustered node acknowledges only what the manager knows of: once an overwrite
            // is answered, the manager never routes to an older copy.
            if let Some(c) = &shared.cluster {
                let tier = match tier {
                    Tier::Primary => "primary",
                    Tier::Secondary => "secondary",
                };
                if let Err(why) = c.confirm_published(id, &etag, asset.size(), tier) {
                    tracing::warn!(id, reason = %why, "upload not confirmed by the cluster manager");
                    m.error(ErrorKind::ManagerUnconfirmed);
                    let e = HttpError::Node {
                        status: Status::SERVICE_UNAVAILABLE,
                        reason: "the cluster manager did not confirm the upload; retry".into(),
                    };
                    return error_answer(&e, !head.keep_alive, body.leftover());
                }
            }
            let mut out = Vec::new();
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
            None => match e {
                PutError::Engine(e) => engine_error_answer(m, &e, Vec::new()),
                PutError::Refused(reason) => {
                    m.error(ErrorKind::NoSpace);
                    let e = HttpError::Node {
                        status: Status::INSUFFICIENT_STORAGE,
                        reason,
                    };
                    error_answer(&e, true, Vec::new())
                }
            },
        },
    }
}

/// Why an upload failed.
enum PutError {
    Engine(EngineError),
    /// No tier can hold it (507), with the reason.
    Refused(String),
}

/// Where an upload of known length starts, decided before its body is read.
enum Start {
    /// On the primary, which has room (after these drops).
    Primary(Room),
    /// On the secondary: the primary has no room and none can be made.
    Secondary,
}

/// How many times in a row an upload stuck at one length makes room on the primary before it
/// moves to the secondary instead: a dropped copy that a stream still reads frees its blocks
/// only when the stream ends.
const ROOM_TRIES: u32 = 3;

/// The most room an upload of unknown length asks for at once: as much again as it has
/// received, at least a chunk, at most this.
const ROOM_ASK_MAX: u64 = 64 << 20;

/// Upload placement on a node with two tiers: an upload lands on the primary while it has room
/// or room can be made by dropping clean copies colder than a newcomer (the policy picks them,
/// [`reel_policy::TierPolicy::evict_for_upload`]; this worker drops them as the scheduler does,
/// [`writeback::drop_primary_copy`]); otherwise on the secondary, from the start when its length
/// is known, else by moving over part-way ([`reel_store::Ingest::spill_into`]). It is refused
/// (507) only when no tier can hold it.
struct Placer<'a> {
    shared: &'a Shared,
    primary: &'a Volume,
    secondary: &'a Volume,
    policy: &'a SharedPolicy,
}

impl<'a> Placer<'a> {
    /// `None` on a node with one tier.
    fn of(shared: &'a Shared) -> Option<Placer<'a>> {
        Some(Placer {
            shared,
            primary: &shared.tiers.primary,
            secondary: shared.tiers.secondary.as_deref()?,
            policy: shared.policy.as_ref()?,
        })
    }

    /// What a volume can give an upload: its free blocks and those of dropped or deleted
    /// assets waiting to be reclaimed (an ingest short of space syncs the drops that hold them).
    fn room(v: &Volume) -> u64 {
        let st = v.stats();
        st.free_bytes + st.reclaim_pending_bytes
    }

    /// Where an upload of `n` bytes starts, dropping clean copies for it if that makes room on
    /// the primary; `Err`: the 507's reason.
    fn plan(&self, m: &ThreadMetrics, drv: &mut Driver, n: u64) -> Result<Start, String> {
        let want = n.div_ceil(BLOCK) * BLOCK;
        let room = Self::room(self.primary);
        if want <= room {
            return Ok(Start::Primary(Room::default()));
        }
        if let Some(r) = self.make_room(m, drv, want - room) {
            return Ok(Start::Primary(r));
        }
        if want <= Self::room(self.secondary) {
            return Ok(Start::Secondary);
        }
        Err(self.no_tier(&format!("{n} bytes")))
    }

    /// The 507's reason: no tier can hold `what`.
    fn no_tier(&self, what: &str) -> String {
        let p = self.primary.stats();
        format!(
            "no tier can hold {what}: the primary has {} bytes free (and too few of its {} used \
             are clean, cold copies to drop), the secondary has {} bytes free",
            p.free_bytes + p.reclaim_pending_bytes,
            p.used_bytes,
            Self::room(self.secondary)
        )
    }

    /// Asks the policy for clean copies to drop for `need` bytes, drops them and reports each.
    /// `None` when the policy found too few (nothing is dropped) or every drop failed.
    fn make_room(&self, m: &ThreadMetrics, drv: &mut Driver, need: u64) -> Option<Room> {
        let mut drops = Vec::new();
        let now = self.shared.policy_now_ns();
        if !scheduler::lock(self.policy).evict_for_upload(now, need, &mut drops) {
            return None;
        }
        // Executed without the policy's lock (the scheduler ticks meanwhile), then reported.
        let mut room = Room::default();
        let mut outcomes = Vec::with_capacity(drops.len());
        for d in &drops {
            let outcome = match self.shared.index.id_of(d.slot()) {
                Some(id) => writeback::drop_primary_copy(
                    self.shared,
                    self.primary,
                    self.secondary,
                    drv,
                    &id,
                ),
                None => Outcome::Failed,
            };
            if outcome == Outcome::Done {
                room.add(Room {
                    drops: 1,
                    bytes: d.bytes(),
                });
                m.upload_room_drop(d.bytes());
            }
            outcomes.push((d.ticket(), outcome));
        }
        let now = self.shared.policy_now_ns();
        let mut pol = scheduler::lock(self.policy);
        for (ticket, outcome) in outcomes {
            pol.finished(now, ticket, outcome);
        }
        (room.drops > 0).then_some(room)
    }

    /// Room for an upload stuck on the primary after `len` bytes (its reservation failed):
    /// for a known length what it still lacks, else as much again as it has (a chunk at
    /// least, [`ROOM_ASK_MAX`] at most), or a chunk when the policy cannot free that much.
    fn make_room_midway(
        &self,
        m: &ThreadMetrics,
        drv: &mut Driver,
        size: Option<u64>,
        len: u64,
    ) -> Option<Room> {
        let chunk = u64::from(self.primary.chunk_size());
        let ask = match size {
            Some(n) => (n.div_ceil(BLOCK) * BLOCK).saturating_sub(Self::room(self.primary)),
            None => len.clamp(chunk, ROOM_ASK_MAX),
        }
        .max(chunk);
        self.make_room(m, drv, ask).or_else(|| {
            (ask > chunk)
                .then(|| self.make_room(m, drv, chunk))
                .flatten()
        })
    }

    /// Streams the body into the tier `start` names, making room or moving to the secondary
    /// when the primary runs out, and publishes it there (see [`Placer::publish_on_secondary`]).
    fn stream(
        &self,
        m: &ThreadMetrics,
        drv: &mut Driver,
        body: &mut BodyReader<'_>,
        id: &str,
        opts: &PutOptions,
        start: Start,
    ) -> Result<(Asset, Landing), PutError> {
        let (mut on_primary, mut room) = match start {
            Start::Primary(r) => (true, r),
            Start::Secondary => (false, Room::default()),
        };
        let first = if on_primary {
            self.primary
        } else {
            self.secondary
        };
        let mut ing = first.ingest(drv, id, opts).map_err(PutError::Engine)?;
        let mut spilled_at = None;
        // Room made for the upload at its current length, in a row.
        let (mut stuck_at, mut tries) = (u64::MAX, 0);
        loop {
            let res = ing
                .fill_from(drv, &mut *body)
                .and_then(|()| ing.write_tail(drv));
            match res {
                Ok(()) => break,
                Err(EngineError::NoSpace { .. }) if on_primary && body.failure.is_none() => {
                    // Every byte received is kept: make room and go on, or move to the
                    // secondary.
                    let len = ing.len();
                    if len != stuck_at {
                        (stuck_at, tries) = (len, 0);
                    }
                    tries += 1;
                    if tries <= ROOM_TRIES {
                        if let Some(r) = self.make_room_midway(m, drv, opts.size, len) {
                            room.add(r);
                            continue;
                        }
                    }
                    ing = ing.spill_into(drv, self.secondary).map_err(|e| match e {
                        EngineError::NoSpace { .. } => PutError::Refused(
                            self.no_tier(&format!("this upload (at least {len} bytes)")),
                        ),
                        EngineError::BadTarget { .. } => PutError::Refused(format!(
                            "the upload outgrew the primary at {len} bytes and cannot move to \
                             the secondary: {e}"
                        )),
                        e => PutError::Engine(e),
                    })?;
                    tracing::info!(id, bytes = len, "upload moved to the secondary part-way");
                    spilled_at = Some(len);
                    on_primary = false;
                }
                Err(e) => {
                    let len = ing.len();
                    ing.abort(drv);
                    return Err(match e {
                        EngineError::NoSpace { .. } if body.failure.is_none() => {
                            PutError::Refused(self.no_tier(&match opts.size {
                                Some(n) => format!("{n} bytes"),
                                None => format!("this upload (at least {len} bytes)"),
                            }))
                        }
                        e => PutError::Engine(e),
                    });
                }
            }
        }
        if on_primary {
            let a = ing.finish(drv).map_err(PutError::Engine)?;
            let landing = if room.drops > 0 {
                Landing::RoomMade(room)
            } else {
                Landing::HadRoom
            };
            return Ok((a, landing));
        }
        let p = ing.prepare(drv).map_err(PutError::Engine)?;
        let a = self.publish_on_secondary(drv, id, p)?;
        Ok((
            a,
            spilled_at.map_or(Landing::PrimaryFull, |at| Landing::Spilled { at }),
        ))
    }

    /// Makes an upload that landed on the secondary the version served. Under the tier lock:
    /// publishes it on the secondary (durable), then deletes the primary's older version, if
    /// any (durable), so nothing older shadows it once the PUT is answered. A crash between the
    /// two leaves the older version (the PUT was not answered). A write-back of the older
    /// version publishes only while the primary still holds it, checked under the same lock, so
    /// it cannot land over this one.
    fn publish_on_secondary(
        &self,
        drv: &mut Driver,
        id: &str,
        p: Prepared<'_>,
    ) -> Result<Asset, PutError> {
        let _g = self.shared.tier_lock.lock();
        let always = |_: Option<&Asset>| true;
        let published = self
            .secondary
            .publish_prepared(drv, vec![(p, &always as &PublishCond<'_>)])
            .map_err(PutError::Engine)?
            .pop()
            .flatten()
            .ok_or_else(|| {
                PutError::Engine(EngineError::Inconsistent {
                    what: "upload",
                    detail: "an unconditional publish was declined".into(),
                })
            })?;
        self.primary.delete(drv, id).map_err(PutError::Engine)?;
        Ok(published)
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
