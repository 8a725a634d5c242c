//! Node-to-node copies pulled by this node ("pulls"), ordered by the cluster manager with
//! `PUT /v1/pull` on the inter-server listener ([`PullOrder`]; the protocol is in
//! [`reel_http::cluster`]).
//!
//! The ingest worker that reads an order checks it and queues it ([`accept`]); one puller
//! thread (`reel-puller`, started with `--peer-listen`) runs the pulls one after another, off
//! the shards and off the migration scheduler (a pull may wait on a slow holder while
//! migrations go on), under the node's one copy throttle ([`super::writeback::Throttle`]: the
//! budget, slow-I/O pace and latency guard the migrations draw on, shared with them, and the
//! migration pause).
//!
//! A pull connects to the holder's inter-server listener with the cluster token and asks for
//! the chunk list's metadata (`GET /chunks/{id}?count=0`: etag, size and chunk size must be
//! the order's and this primary's). Then, window by window of [`WINDOW_CHUNKS`] chunks, it asks
//! for the window's crcs and its bytes (`GET /assets/{id}` with `Range` and `If-Match: etag`,
//! so a holder whose version changed answers 412); each chunk is received straight into the
//! registered buffer of an [`reel_store::Ingest`] on the primary (`fill_chunk_with`), its crc32c
//! checked against the list before it is written (`write_filled`, waited for: one copy write in
//! the device queue at a time). When whole, the copy is published durably
//! ([`reel_store::volume::Volume::publish_prepared`]: data synced, then its journal record)
//! under the tier lock, and only if neither tier's entry of the id changed since the pull began
//! (an upload, a delete or a tombstone meanwhile wins; the pull then fails saying so). It is
//! then reported as an upload is (`Shared::note_changed`, the scheduler's `Uploaded` event).
//!
//! A pull that fails in any way (holder gone or stalled, a crc mismatch, a 412, no space, a
//! cancel, the node stopping) aborts its ingest: nothing becomes visible and its reservation
//! returns. A failure of the holder is noted for the manager (`Shared::note_failed_source`). A
//! crash mid-pull leaves nothing either: an unpublished ingest is space reserved in memory only,
//! and a restarted node's allocator is the complement of its catalog. Pulls are not resumed
//! after a restart: the order dies with the process (a clean abort; the manager orders again
//! if it still wants the copy). While a pull runs on a clustered node, tombstones of its id
//! wait, as for an upload, and apply once it ended.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::metrics::ThreadMetrics;
use super::writeback::{io_max, yield_to_foreground};
use super::Shared;
use reel_http::client::{encode_request, ClientError, Conn, ResponseHead};
use reel_http::cluster::{valid_node_name, ChunkList, PullOrder, PullState, PullStatus};
use reel_http::Status;
use reel_policy::Tier;
use reel_store::catalog::Asset;
use reel_store::driver::Driver;
use reel_store::error::EngineError;
use reel_store::format::BLOCK;
use reel_store::ingest::{PublishCond, PutOptions};

/// Chunks asked for per range request (and per chunk list window): short ranges, so a holder's
/// send never waits long on a pull the throttle holds back.
pub const WINDOW_CHUNKS: u64 = 16;

/// Most pulls queued or running at once; more orders are refused (503).
const UNFINISHED_MAX: usize = 1024;

/// Finished pulls kept for `GET /v1/pulls` (the oldest go first).
const FINISHED_KEPT: usize = 256;

/// Finished pulls kept for the next cluster report (a manager away for long misses the rest;
/// the holdings tell it what was published anyway).
const UNREPORTED_MAX: usize = 1024;

/// The longest a pull waits for its holder to connect, answer or send more of a body.
const HOLDER_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest chunk list answer read (a window's crcs are a few hundred bytes).
const CHUNK_LIST_BYTES_MAX: u64 = 1 << 20;

/// One pull.
pub(crate) struct Pull {
    order: PullOrder,
    state: Mutex<(PullState, Option<String>)>,
    bytes_done: AtomicU64,
    cancel: AtomicBool,
}

impl Pull {
    fn status(&self) -> PullStatus {
        let (state, error) = locked(&self.state).clone();
        PullStatus {
            id: self.order.id.clone(),
            etag: self.order.etag.clone(),
            size: self.order.size,
            source_node: self.order.source_node.clone(),
            state,
            bytes_done: self.bytes_done.load(Relaxed),
            error,
        }
    }

    fn state(&self) -> PullState {
        locked(&self.state).0
    }
}

/// The node's pulls: the queue the puller takes them from, the recent ones, the counters.
pub(crate) struct Pulls {
    tx: Sender<Arc<Pull>>,
    rx: Receiver<Arc<Pull>>,
    table: Mutex<Table>,
    done: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Default)]
struct Table {
    /// Queued, running and recently finished pulls, in order of arrival.
    pulls: VecDeque<Arc<Pull>>,
    /// Finished since the last acknowledged cluster report.
    unreported: Vec<PullStatus>,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Pulls {
    fn default() -> Self {
        let (tx, rx) = crossbeam_channel::unbounded();
        Pulls {
            tx,
            rx,
            table: Mutex::new(Table::default()),
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }
}

impl Pulls {
    /// `GET /v1/pulls`: every pull kept, oldest first.
    pub(crate) fn list(&self) -> Vec<PullStatus> {
        locked(&self.table)
            .pulls
            .iter()
            .map(|p| p.status())
            .collect()
    }

    /// `DELETE /v1/pull/{id}`: cancels the unfinished pull of `id`; its status, or `None` when
    /// there is none. A queued pull is cancelled when the puller reaches it, a running one at
    /// its next chunk.
    pub(crate) fn cancel(&self, id: &str) -> Option<PullStatus> {
        let t = locked(&self.table);
        let p = t
            .pulls
            .iter()
            .find(|p| p.order.id == id && !p.state().finished())?;
        p.cancel.store(true, Relaxed);
        Some(p.status())
    }

    /// The finished pulls the next cluster report carries.
    pub(crate) fn unreported(&self) -> Vec<PullStatus> {
        locked(&self.table).unreported.clone()
    }

    /// A report carrying the first `n` of [`Pulls::unreported`] was acknowledged.
    pub(crate) fn reported(&self, n: usize) {
        let mut t = locked(&self.table);
        let n = n.min(t.unreported.len());
        t.unreported.drain(..n);
    }

    /// Pulls queued or running.
    fn in_flight(&self) -> usize {
        locked(&self.table)
            .pulls
            .iter()
            .filter(|p| !p.state().finished())
            .count()
    }

    /// Ends pull `p` in `state` (with `error`), counted, kept for the list and the report.
    fn finish(&self, p: &Pull, state: PullState, error: Option<String>) {
        *locked(&p.state) = (state, error);
        match state {
            PullState::Done => &self.done,
            PullState::Cancelled => &self.cancelled,
            _ => &self.failed,
        }
        .fetch_add(1, Relaxed);
        let status = p.status();
        let mut t = locked(&self.table);
        if t.unreported.len() < UNREPORTED_MAX {
            t.unreported.push(status);
        }
        // Keep the newest finished ones.
        let finished = t.pulls.iter().filter(|p| p.state().finished()).count();
        if finished > FINISHED_KEPT {
            if let Some(i) = t.pulls.iter().position(|p| p.state().finished()) {
                t.pulls.remove(i);
            }
        }
    }

    /// The `reel_pull*` families of `/metrics`.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP reel_pulls_total Node-to-node copies this node pulled, by outcome.\n\
             # TYPE reel_pulls_total counter"
        );
        for (outcome, v) in [
            ("done", &self.done),
            ("failed", &self.failed),
            ("cancelled", &self.cancelled),
        ] {
            let _ = writeln!(
                out,
                "reel_pulls_total{{outcome=\"{outcome}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP reel_pull_bytes_total Bytes pulled from other nodes, checked and written.\n\
             # TYPE reel_pull_bytes_total counter\nreel_pull_bytes_total {}",
            self.bytes.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP reel_pulls_in_flight Pulls queued or running.\n\
             # TYPE reel_pulls_in_flight gauge\nreel_pulls_in_flight {}",
            self.in_flight()
        );
    }
}

/// What an order gets.
pub(crate) enum Accepted {
    /// 202: queued (or already queued or running: the same pull).
    Queued(PullStatus),
    /// 409: the node holds that version already (state [`PullState::Held`]).
    Held(PullStatus),
    /// Refused with this status and reason (400, 503, 507).
    Refused(Status, String),
}

/// Checks an order and queues it (on an ingest worker, which may drop clean copies to make
/// room on a node with a secondary, as for an upload).
pub(crate) fn accept(
    shared: &Shared,
    m: &ThreadMetrics,
    drv: &mut Driver,
    order: PullOrder,
) -> Accepted {
    if let Err(reason) = check_order(shared, &order) {
        return Accepted::Refused(Status::BAD_REQUEST, reason);
    }
    let status = |state| PullStatus {
        id: order.id.clone(),
        etag: order.etag.clone(),
        size: order.size,
        source_node: order.source_node.clone(),
        state,
        bytes_done: 0,
        error: None,
    };
    if holds(shared, &order.id, &order.etag) {
        return Accepted::Held(status(PullState::Held));
    }
    // Under the table's lock: one order at a time decides on its id and on the room.
    let pulls = &shared.pulls;
    let mut t = locked(&pulls.table);
    let mut pending = 0u64;
    let mut unfinished = 0usize;
    for p in t.pulls.iter().filter(|p| !p.state().finished()) {
        if p.order.id == order.id && !p.cancel.load(Relaxed) {
            if p.order.etag == order.etag {
                return Accepted::Queued(p.status());
            }
            // Another version of the id: the newer order wins.
            p.cancel.store(true, Relaxed);
            continue;
        }
        unfinished += 1;
        pending += p.order.size.div_ceil(BLOCK) * BLOCK;
    }
    if unfinished >= UNFINISHED_MAX {
        return Accepted::Refused(
            Status::SERVICE_UNAVAILABLE,
            format!("{UNFINISHED_MAX} pulls are queued or running already; retry later"),
        );
    }
    let want = order.size.div_ceil(BLOCK) * BLOCK + pending;
    let st = shared.tiers.primary.stats();
    let room = st.free_bytes + st.reclaim_pending_bytes;
    if want > room && !super::worker::make_primary_room(shared, m, drv, want - room) {
        return Accepted::Refused(
            Status::INSUFFICIENT_STORAGE,
            format!(
                "the primary cannot take {} bytes: {room} are free, {pending} are promised to \
                 the pulls queued before it, and no clean, cold copies can make the rest",
                order.size
            ),
        );
    }
    let p = Arc::new(Pull {
        order,
        state: Mutex::new((PullState::Queued, None)),
        bytes_done: AtomicU64::new(0),
        cancel: AtomicBool::new(false),
    });
    t.pulls.push_back(p.clone());
    let st = p.status();
    drop(t);
    let _ = pulls.tx.send(p);
    tracing::info!(
        id = st.id,
        etag = st.etag,
        source = st.source_node,
        "pull queued"
    );
    Accepted::Queued(st)
}

/// Whether a tier holds version `etag` of `id`.
fn holds(shared: &Shared, id: &str, etag: &str) -> bool {
    let t = &shared.tiers;
    std::iter::once(&t.primary)
        .chain(t.secondary.as_ref())
        .any(|v| v.get(id).is_some_and(|a| a.etag() == etag))
}

/// An order's fields, as far as they can be checked without the holder.
fn check_order(shared: &Shared, o: &PullOrder) -> Result<(), String> {
    if o.tier != "primary" {
        return Err(format!(
            "tier must be \"primary\" (a pull lands on the primary), not {:?}",
            o.tier
        ));
    }
    // A user asset's id (never an internal `{id}/policy` record).
    let target = format!("/assets/{}", o.id);
    if !matches!(reel_http::route(&target), Ok(reel_http::Route::Asset(_))) {
        return Err(format!("{:?} is not a valid asset id", o.id));
    }
    if o.etag.is_empty() || o.etag.len() > 128 || !o.etag.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("etag must be 1-128 visible ASCII characters".into());
    }
    if !valid_node_name(&o.source_node) {
        return Err("source_node must be a node name ([A-Za-z0-9_-]{1,64})".into());
    }
    let own = shared.cluster.as_ref().map(|c| c.node());
    if own == Some(o.source_node.as_str()) || shared.own_addrs.contains(&o.source) {
        return Err("the source is this node".into());
    }
    if o.source.ip().is_unspecified() || o.source.port() == 0 {
        return Err(format!(
            "source {} is not an address to connect to",
            o.source
        ));
    }
    Ok(())
}

/// Why a pull ended without a copy.
enum Failure {
    /// Cancelled, or the node is stopping.
    Cancelled(&'static str),
    /// The holder failed (gone, stalled, a bad answer, a chunk whose crc does not match): noted
    /// for the manager.
    Holder(String),
    /// Anything else (the holder's version changed, no space, a local version won, a device
    /// error).
    Other(String),
}

/// The puller thread: runs the queued pulls one after another until the node stops.
pub(crate) fn run(shared: &Shared) {
    let chunk = shared.tiers.primary.chunk_size() as usize;
    let mut drv = match super::worker::chunk_ring(chunk) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "the puller cannot start its ring; no pulls");
            return;
        }
    };
    let pulls = &shared.pulls;
    while !shared.stop.load(Relaxed) {
        let p = match pulls.rx.recv_timeout(Duration::from_millis(100)) {
            Ok(p) => p,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if p.cancel.load(Relaxed) {
            pulls.finish(&p, PullState::Cancelled, Some("cancelled".into()));
            continue;
        }
        *locked(&p.state) = (PullState::Running, None);
        let t0 = Instant::now();
        let o = &p.order;
        match pull(shared, &mut drv, &p) {
            Ok(()) => {
                tracing::info!(
                    id = o.id,
                    source = o.source_node,
                    bytes = o.size,
                    ms = t0.elapsed().as_millis() as u64,
                    "pull published"
                );
                pulls.finish(&p, PullState::Done, None);
            }
            Err(Failure::Cancelled(why)) => {
                tracing::info!(id = o.id, source = o.source_node, "pull {why}");
                pulls.finish(&p, PullState::Cancelled, Some(why.into()));
            }
            Err(Failure::Holder(why)) => {
                tracing::warn!(id = o.id, source = o.source_node, reason = %why, "pull failed");
                shared.note_failed_source(&o.source_node);
                pulls.finish(&p, PullState::Failed, Some(why));
            }
            Err(Failure::Other(why)) => {
                tracing::warn!(id = o.id, source = o.source_node, reason = %why, "pull failed");
                pulls.finish(&p, PullState::Failed, Some(why));
            }
        }
    }
    // Pulls still queued die with the process; say so in the list for a graceful stop.
    while let Ok(p) = pulls.rx.try_recv() {
        pulls.finish(&p, PullState::Cancelled, Some("the node stopped".into()));
    }
}

/// The holder's answer `head` must be `want`; else why not.
fn expect_status(head: &ResponseHead, want: u16, what: &str) -> Result<(), Failure> {
    match head.status {
        s if s == want => Ok(()),
        404 => Err(Failure::Other(format!(
            "the holder has no such asset (404 to {what})"
        ))),
        412 => Err(Failure::Other(format!(
            "the holder's version changed (412 to {what})"
        ))),
        s => Err(Failure::Holder(format!(
            "the holder answered {s} to {what}"
        ))),
    }
}

fn holder_err(what: &str) -> impl Fn(ClientError) -> Failure + '_ {
    move |e| Failure::Holder(format!("{what}: {e}"))
}

/// A connection to the holder, and the requests a pull makes of it.
struct Holder {
    conn: Conn,
    id: String,
    etag: String,
    /// `Bearer <token>`: a secret, never logged.
    auth: String,
}

impl Holder {
    /// The chunk list of chunks `from..from + count` (`count` 0: the metadata alone), checked
    /// against the order's version.
    fn chunk_list(&mut self, from: u64, count: u64) -> Result<ChunkList, Failure> {
        let what = "the chunk list";
        let target = format!("/chunks/{}?from={from}&count={count}", self.id);
        let host = self.conn.peer().to_string();
        let req = encode_request(
            "GET",
            &host,
            &target,
            &[("Authorization", &self.auth)],
            None,
        );
        let r = self
            .conn
            .exchange(&req, false, CHUNK_LIST_BYTES_MAX)
            .map_err(holder_err(what))?;
        expect_status(&r.head, 200, what)?;
        let list: ChunkList = serde_json::from_slice(&r.body)
            .map_err(|e| Failure::Holder(format!("{what} is not valid: {e}")))?;
        if list.etag != self.etag {
            return Err(Failure::Other(format!(
                "the holder's version is now {}, not the one ordered",
                list.etag
            )));
        }
        if list.crcs.len() as u64 != count {
            return Err(Failure::Holder(format!(
                "{what} of chunks {from}+{count} has {} crcs",
                list.crcs.len()
            )));
        }
        Ok(list)
    }

    /// Asks for bytes `start..end` of an asset of `size` bytes; the body is the caller's to read.
    fn range(&mut self, start: u64, end: u64, size: u64) -> Result<(), Failure> {
        let what = "the range request";
        let target = format!("/assets/{}", self.id);
        let range = format!("bytes={start}-{}", end - 1);
        let host = self.conn.peer().to_string();
        let req = encode_request(
            "GET",
            &host,
            &target,
            &[
                ("Authorization", &self.auth),
                ("Range", &range),
                ("If-Match", &self.etag),
            ],
            None,
        );
        let head = self.conn.send(&req).map_err(holder_err(what))?;
        let whole = start == 0 && end == size;
        if !(whole && head.status == 200) {
            expect_status(&head, 206, what)?;
            if head.content_range() != Some((start, end - 1, size)) {
                return Err(Failure::Holder(format!(
                    "{what}: Content-Range {:?} is not bytes {start}-{}/{size}",
                    head.header("content-range"),
                    end - 1
                )));
            }
        }
        if head.content_length() != Some(end - start) {
            return Err(Failure::Holder(format!(
                "{what}: the body is not {} bytes with a Content-Length",
                end - start
            )));
        }
        Ok(())
    }
}

/// Runs one pull: copies the version into an ingest on the primary and publishes it.
fn pull(shared: &Shared, drv: &mut Driver, p: &Pull) -> Result<(), Failure> {
    let o = &p.order;
    let stopping = || shared.stop.load(Relaxed);
    let stop = || stopping() || p.cancel.load(Relaxed);
    let why_stopped = || {
        if stopping() {
            Failure::Cancelled("stopped: the node is stopping")
        } else {
            Failure::Cancelled("cancelled")
        }
    };
    // On a clustered node, tombstones of the id wait until the pull ended.
    let _in_flight = shared.cluster.as_ref().map(|c| c.upload_started(&o.id));
    let primary = &shared.tiers.primary;
    let secondary = shared.tiers.secondary.as_deref();
    // What the tiers hold of the id now: the copy publishes only if that is still so.
    let before = (primary.get(&o.id), secondary.and_then(|s| s.get(&o.id)));
    if holds(shared, &o.id, &o.etag) {
        return Ok(());
    }
    let Some(token) = &shared.cluster_token else {
        return Err(Failure::Other("this node has no cluster token".into()));
    };
    let auth = String::from_utf8(token.bearer_header())
        .map_err(|_| Failure::Other("the cluster token is not UTF-8".into()))?;
    let conn = Conn::connect(o.source, HOLDER_TIMEOUT).map_err(holder_err("connecting"))?;
    let mut h = Holder {
        conn,
        id: o.id.clone(),
        etag: o.etag.clone(),
        auth,
    };
    let meta = h.chunk_list(0, 0)?;
    if meta.size != o.size {
        return Err(Failure::Other(format!(
            "the holder's version is {} bytes, the order says {}",
            meta.size, o.size
        )));
    }
    let chunk = u64::from(primary.chunk_size());
    if u64::from(meta.chunk_bytes) != chunk {
        return Err(Failure::Other(format!(
            "the holder's chunks are {} bytes, this primary's {chunk}: pulls need one chunk size",
            meta.chunk_bytes
        )));
    }
    let opts = PutOptions {
        content_type: Some(meta.content_type.clone()),
        size: Some(o.size),
        // One chunk write in flight, as for copies between the tiers.
        depth: Some(1),
        created_unix_ns: meta
            .last_modified_unix_s
            .and_then(|s| s.checked_mul(1_000_000_000)),
        io_max: io_max(shared),
    };
    let local = |e: EngineError| Failure::Other(format!("on the primary: {e}"));
    let mut ing = primary.ingest(drv, &o.id, &opts).map_err(local)?;
    let throttle = &shared.copy_throttle;
    let chunks = o.size.div_ceil(chunk);
    let mut c = 0u64;
    while c < chunks {
        let count = WINDOW_CHUNKS.min(chunks - c);
        let res = h.chunk_list(c, count).and_then(|list| {
            h.range(c * chunk, ((c + count) * chunk).min(o.size), o.size)?;
            Ok(list)
        });
        let list = match res {
            Ok(l) => l,
            Err(e) => {
                ing.abort(drv);
                return Err(e);
            }
        };
        for (k, &want_crc) in list.crcs.iter().enumerate() {
            let index = c + k as u64;
            if stop() {
                ing.abort(drv);
                return Err(why_stopped());
            }
            throttle.wait_while_paused(shared, &stop);
            throttle.gate(shared, &stop);
            let len = chunk.min(o.size - index * chunk) as usize;
            // Received straight into the registered buffer it is written from; its crc32c,
            // checked against the holder's list, is the one recorded.
            let mut failure = None;
            let filled = ing.fill_chunk_with(drv, len, |drv, buf| {
                let bytes = &mut drv.buf_mut(&buf)[..len];
                let res = match h.conn.read_exact(bytes) {
                    Err(e) => Err(format!("receiving chunk {index}: {e}")),
                    Ok(()) => match crc32c::crc32c(bytes) {
                        crc if crc == want_crc => Ok(crc),
                        crc => Err(format!(
                            "chunk {index} has crc32c {crc:08x}, the holder's list says \
                             {want_crc:08x}"
                        )),
                    },
                };
                match res {
                    Ok(crc) => (Ok(crc), buf),
                    Err(why) => {
                        failure = Some(Failure::Holder(why));
                        let e = std::io::Error::other("the chunk from the holder failed");
                        (Err(EngineError::Source { source: e }), buf)
                    }
                }
            });
            if let Err(e) = filled {
                ing.abort(drv);
                return Err(failure.unwrap_or_else(|| local(e)));
            }
            throttle.take(shared, len as u64, &stop);
            throttle.wait_while_paused(shared, &stop);
            throttle.gate(shared, &stop);
            yield_to_foreground(shared, &stop);
            let t0 = Instant::now();
            if let Err(e) = ing.write_filled(drv) {
                ing.abort(drv);
                return Err(local(e));
            }
            throttle.after_io(shared, t0.elapsed(), &stop);
            p.bytes_done.fetch_add(len as u64, Relaxed);
            shared.pulls.bytes.fetch_add(len as u64, Relaxed);
        }
        c += count;
    }
    if stop() {
        ing.abort(drv);
        return Err(why_stopped());
    }
    let prepared = ing.prepare(drv).map_err(local)?;
    // Published under the tier lock (deletes and secondary publishes take it) and, inside, the
    // primary's write lock (uploads take that): only if neither tier's entry of the id changed
    // since the pull began, so an upload or a delete meanwhile wins.
    let published = {
        let _g = shared.tier_lock.lock();
        let same = |a: &Option<Asset>, b: Option<&Asset>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => Asset::ptr_eq(a, b),
            _ => false,
        };
        let secondary_same = same(&before.1, secondary.and_then(|s| s.get(&o.id)).as_ref());
        let cond = |cur: Option<&Asset>| secondary_same && same(&before.0, cur);
        primary
            .publish_prepared(drv, vec![(prepared, &cond as &PublishCond<'_>)])
            .map_err(local)?
            .pop()
            .flatten()
    };
    let Some(asset) = published else {
        return Err(Failure::Other(
            "the node's copy of the id changed during the pull (an upload or a delete); \
             that one stands"
                .into(),
        ));
    };
    let slot = shared.index.register(&o.id, asset.size());
    if let Some(tx) = &shared.events_tx {
        let _ = tx.send(super::scheduler::Event::Uploaded {
            id: o.id.clone(),
            slot,
            size: asset.size(),
            tier: Tier::Primary,
        });
    }
    shared.note_changed(&o.id);
    Ok(())
}
