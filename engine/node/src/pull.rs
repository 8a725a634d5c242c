//! Node-to-node copies, pulled by the receiving node: the manager's placement orders a copy
//! with `PUT /v1/pull` ([`PullOrder`]) on this node's inter-server listener; one puller thread
//! fetches the asset from the holder's inter-server listener (the chunk list, then the bytes
//! with `If-Match`), checks every chunk's crc32c against the holder's list before it goes into
//! the ingest, paces itself to the node's copy budget (`--copy-budget`, as `/migration` sets
//! it), and publishes on the primary only when the whole asset arrived and checked. Any failure
//! (the holder gone or refusing, a crc mismatch, the node stopping) aborts the ingest: nothing
//! is published, the reservation goes back, the holder is noted as a failed source. A pull is
//! not resumed after a restart: the manager orders it again if it is still wanted.
//!
//! A version pulled while a newer one was uploaded here is published all the same; the
//! manager's tombstone (written when the newer one was confirmed) then deletes it at the next
//! report, as any stale copy.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use reel_http::auth::ClusterToken;
use reel_http::client::{encode_request, Conn};
use reel_http::cluster::{ChunkList, PullOrder};
use reel_policy::Tier;
use reel_store::ingest::PutOptions;

use super::{worker, Shared};

/// The id a worker job carries for `PUT /v1/pull` (an asset id never holds a NUL).
pub(crate) const PULL_JOB: &str = "\0pull";

/// Pull orders queued at most; more are refused with 503 (the manager retries later).
pub(crate) const QUEUE_MAX: usize = 64;

/// One exchange with the holder may take this long.
const HOLDER_TIMEOUT: Duration = Duration::from_secs(10);

/// The puller's counters and its queue's contents (for idempotent orders).
#[derive(Default)]
pub(crate) struct PullStats {
    pub done: AtomicU64,
    pub failed: AtomicU64,
    pub bytes: AtomicU64,
    pub in_flight: AtomicU64,
    /// (id, etag) queued or being pulled.
    pub queued: Mutex<HashSet<(String, String)>>,
}

impl PullStats {
    pub(crate) fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP reel_pulls_total Copies pulled from other nodes, by outcome.\n\
             # TYPE reel_pulls_total counter\n\
             reel_pulls_total{{outcome=\"done\"}} {}\n\
             reel_pulls_total{{outcome=\"failed\"}} {}\n\
             # HELP reel_pull_bytes_total Bytes of pulled copies received and checked.\n\
             # TYPE reel_pull_bytes_total counter\n\
             reel_pull_bytes_total {}\n\
             # HELP reel_pulls_in_flight Pulls queued or running.\n\
             # TYPE reel_pulls_in_flight gauge\n\
             reel_pulls_in_flight {}",
            self.done.load(Relaxed),
            self.failed.load(Relaxed),
            self.bytes.load(Relaxed),
            self.in_flight.load(Relaxed),
        );
    }
}

/// The puller thread: one order at a time, until the node stops.
pub(crate) fn run(shared: &Shared, rx: &Receiver<PullOrder>) {
    let chunk = shared.tiers.primary.chunk_size() as usize;
    let mut drv = match worker::chunk_ring(chunk) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "the puller cannot start its ring; pull orders fail");
            return;
        }
    };
    let Some(token) = shared.cluster_token.clone() else {
        return;
    };
    while !shared.stop.load(Relaxed) {
        let Ok(order) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        let key = (order.id.clone(), order.etag.clone());
        match pull_one(shared, &mut drv, &token, &order) {
            Ok(bytes) => {
                shared.pulls.done.fetch_add(1, Relaxed);
                shared.pulls.bytes.fetch_add(bytes, Relaxed);
                tracing::info!(
                    id = order.id,
                    from = order.source_node,
                    bytes,
                    "pulled a copy"
                );
            }
            Err(e) => {
                shared.pulls.failed.fetch_add(1, Relaxed);
                // The holder is reported only when it failed (unreachable, refused, short, a bad
                // chunk), not for this node's own trouble (no room, a device error).
                if e.holder {
                    shared.note_failed_source(&order.source_node);
                }
                tracing::warn!(id = order.id, from = order.source_node, error = %e.why, "a pull failed");
            }
        }
        shared
            .pulls
            .queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        shared.pulls.in_flight.fetch_sub(1, Relaxed);
    }
}

/// One request to the holder on `c`; the response head.
fn ask(
    c: &mut Conn,
    holder: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<reel_http::client::ResponseHead, String> {
    let req = encode_request("GET", &holder.to_string(), target, headers, None);
    c.send(&req).map_err(|e| format!("GET {target}: {e}"))
}

/// The holder's chunk crcs for the whole asset (in windows), checked against the order.
fn chunk_list(
    c: &mut Conn,
    order: &PullOrder,
    auth: &str,
) -> Result<(ChunkList, Vec<u32>), String> {
    let mut crcs: Vec<u32> = Vec::new();
    let mut first: Option<ChunkList> = None;
    // Bounded: each answer brings at least one crc or ends the loop.
    loop {
        let target = format!("/chunks/{}?from={}", order.id, crcs.len());
        let head = ask(c, order.source, &target, &[("Authorization", auth)])?;
        let body = c
            .read_body(&head, 8 << 20)
            .map_err(|e| format!("the chunk list: {e}"))?;
        if head.status != 200 {
            return Err(format!(
                "the holder answered {} for the chunk list",
                head.status
            ));
        }
        let l: ChunkList = serde_json::from_slice(&body)
            .map_err(|e| format!("the chunk list is not valid: {e}"))?;
        if l.etag != order.etag || l.size != order.size || l.chunk_bytes == 0 {
            return Err(format!(
                "the holder has version {} of {} bytes, not {} of {}",
                l.etag, l.size, order.etag, order.size
            ));
        }
        let n = l.size.div_ceil(u64::from(l.chunk_bytes)) as usize;
        let got = l.crcs.len();
        crcs.extend_from_slice(&l.crcs);
        if first.is_none() {
            first = Some(l);
        }
        if crcs.len() >= n || got == 0 {
            crcs.truncate(n);
            if crcs.len() != n {
                return Err("the holder's chunk list is short".into());
            }
            let l = first.ok_or("no chunk list")?;
            return Ok((l, crcs));
        }
    }
}

/// The holder's body, handed to the ingest chunk by chunk, each checked before it is.
struct Checked<'a> {
    c: &'a mut Conn,
    crcs: Vec<u32>,
    chunk_bytes: usize,
    remaining: u64,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    /// Pacing to the copy budget: bytes taken since `t0` at `bytes_per_s` (0: unlimited).
    t0: Instant,
    taken: u64,
    budget: &'a dyn Fn() -> u64,
    stop: &'a dyn Fn() -> bool,
}

impl Read for Checked<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.remaining == 0 {
                return Ok(0);
            }
            if (self.stop)() {
                return Err(std::io::Error::other("the node is stopping"));
            }
            let len = (self.chunk_bytes as u64).min(self.remaining) as usize;
            self.buf.resize(len, 0);
            self.c.read_exact(&mut self.buf).map_err(|e| {
                std::io::Error::other(format!("receiving chunk {}: {e}", self.next))
            })?;
            let want = self.crcs.get(self.next).copied().unwrap_or(0);
            if crc32c::crc32c(&self.buf) != want {
                return Err(std::io::Error::other(format!(
                    "chunk {} does not match the holder's crc32c",
                    self.next
                )));
            }
            self.next += 1;
            self.remaining -= len as u64;
            self.pos = 0;
            self.taken += len as u64;
            let budget = (self.budget)();
            if budget > 0 {
                let due = Duration::from_secs_f64(self.taken as f64 / budget as f64);
                let ahead = due.saturating_sub(self.t0.elapsed());
                std::thread::sleep(ahead.min(Duration::from_secs(5)));
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Why a pull failed, and whether the holder is to blame.
struct PullError {
    why: String,
    holder: bool,
}

impl From<String> for PullError {
    /// A failure of the exchange with the holder.
    fn from(why: String) -> PullError {
        PullError { why, holder: true }
    }
}

/// Pulls `order` onto the primary; the bytes received.
fn pull_one(
    shared: &Shared,
    drv: &mut reel_store::driver::Driver,
    token: &ClusterToken,
    order: &PullOrder,
) -> Result<u64, PullError> {
    if shared
        .tiers
        .primary
        .get(&order.id)
        .is_some_and(|a| a.etag() == order.etag)
    {
        return Ok(0);
    }
    let auth = String::from_utf8_lossy(&token.bearer_header()).to_string();
    let mut c = Conn::connect(order.source, HOLDER_TIMEOUT)
        .map_err(|e| format!("cannot reach the holder: {e}"))?;
    let (list, crcs) = chunk_list(&mut c, order, &auth)?;
    let target = format!("/assets/{}", order.id);
    let head = ask(
        &mut c,
        order.source,
        &target,
        &[
            ("Authorization", auth.as_str()),
            ("If-Match", order.etag.as_str()),
        ],
    )?;
    if head.status != 200 || head.content_length() != Some(order.size) {
        return Err(PullError::from(format!(
            "the holder answered {} with {:?} bytes for {} bytes",
            head.status,
            head.content_length(),
            order.size
        )));
    }
    let budget = || shared.migration_control.budget().bytes_per_s();
    let stop = || shared.stop.load(Relaxed);
    let mut body = Checked {
        c: &mut c,
        crcs,
        chunk_bytes: list.chunk_bytes as usize,
        remaining: order.size,
        next: 0,
        buf: Vec::new(),
        pos: 0,
        t0: Instant::now(),
        taken: 0,
        budget: &budget,
        stop: &stop,
    };
    let opts = PutOptions {
        content_type: Some(list.content_type.clone()),
        size: Some(order.size),
        depth: None,
        created_unix_ns: list
            .last_modified_unix_s
            .map(|s| s.saturating_mul(1_000_000_000)),
        io_max: None,
    };
    let asset = shared
        .tiers
        .primary
        .put(drv, &order.id, &mut body, &opts)
        .map_err(|e| {
            // A failure reading the body is the holder's (its bytes, its socket, a bad
            // chunk); anything else is this node's (room, device).
            let holder = matches!(
                e,
                reel_store::EngineError::Source { .. }
                    | reel_store::EngineError::SizeMismatch { .. }
            ) && !shared.stop.load(Relaxed);
            PullError {
                why: e.to_string(),
                holder,
            }
        })?;
    let slot = shared.index.register(&order.id, asset.size());
    if let Some(tx) = &shared.events_tx {
        let _ = tx.send(super::scheduler::Event::Uploaded {
            id: order.id.clone(),
            slot,
            size: asset.size(),
            tier: Tier::Primary,
        });
    }
    shared.note_changed(&order.id);
    Ok(order.size)
}
