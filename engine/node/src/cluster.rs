//! The node's side of the cluster protocol ([`reel_http::cluster`]): one agent thread that
//! registers with the manager and reports, and the confirmation of an upload before its `201`.
//!
//! The agent ([`run`]) talks to the manager's inter-server listener with the one blocking
//! client ([`reel_http::client::Conn`], ~1 s timeouts, every loop bounded and watching the
//! node's stop flag):
//! 1. `PUT /v1/register` until a manager answers; every tombstone of the answer is applied
//!    (the dead copies deleted through the node's delete path, journaled and durable) before
//!    the first report, so a node that was away never brings a deleted version back.
//! 2. `PUT /v1/report` every `report_ms`: all holdings once (`full`), then deltas. A delta is
//!    built from the ids whose holding may have changed since the last acknowledged report
//!    ([`ClusterState::note_changed`], called wherever an asset is published, copied, dropped
//!    or deleted), so an idle node reports nothing however many assets it holds. Rates are
//!    those of the slots the last folds of the rate counters touched.
//! 3. A `409` (the manager does not know the session) registers again; a `503` with
//!    `Reel-Leader` moves to the leader; a failed connection moves to the next `--manager`, with
//!    a backoff of at most 500 ms, so a restarted manager hears from the node within a second.
//!
//! Holdings the manager has not acknowledged stay pending: a failed report loses nothing, and a
//! full report replaces them all.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reel_http::auth::ClusterToken;
use reel_http::client::{ClientError, Conn};
use reel_http::cluster::{
    AssetDemand, AssetRate, Holding, Load, Published, PublishedAck, Register, Registered, Report,
    ReportAck, TierFill, Tombstone,
};
use reel_store::driver::Driver;

use super::config::{ClusterConfig, ManagerUrl};
use super::{is_policy_asset, worker, Shared, Tiers};

/// Connect, read and write timeout of one exchange with the manager.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest wait before trying a manager again.
const BACKOFF_MAX: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// How long an upload waits for the manager's confirmation before it is answered 503.
const PUBLISH_CONFIRM_WITHIN: Duration = Duration::from_secs(2);
/// Leaders learned from `Reel-Leader` beyond the `--manager` list, at most.
const LEARNED_MANAGERS_MAX: usize = 8;
/// Report periods the agent accepts from the manager.
const REPORT_MS_MIN: u64 = 50;
const REPORT_MS_MAX: u64 = 60_000;
/// Largest answer read from the manager (a `Registered` carries every tombstone).
const ANSWER_BYTES_MAX: u64 = 256 << 20;

/// The managers known and the one talked to now.
struct Managers {
    urls: Vec<ManagerUrl>,
    configured: usize,
    current: usize,
}

impl Managers {
    fn current(&self) -> ManagerUrl {
        self.urls[self.current % self.urls.len()].clone()
    }

    /// Moves on to the next manager of the list.
    fn next(&mut self) {
        self.current = (self.current + 1) % self.urls.len();
    }

    /// Moves to `leader` (named by a standby's `Reel-Leader`), learning it if it is new.
    fn follow(&mut self, leader: ManagerUrl) {
        if let Some(i) = self.urls.iter().position(|u| *u == leader) {
            self.current = i;
            return;
        }
        if self.urls.len() >= self.configured + LEARNED_MANAGERS_MAX {
            self.urls.truncate(self.configured);
        }
        self.urls.push(leader);
        self.current = self.urls.len() - 1;
    }
}

/// Counters of the agent, for `/metrics`.
#[derive(Default)]
struct ClusterStats {
    reports: AtomicU64,
    report_errors: AtomicU64,
    registrations: AtomicU64,
    tombstones_applied: AtomicU64,
    manager_up: AtomicBool,
}

/// A clustered node's identity and what its agent reports; in [`Shared`].
pub struct ClusterState {
    cfg: ClusterConfig,
    /// Presented to the manager (`Authorization: Bearer`); never printed.
    token: ClusterToken,
    /// The advertised access and inter-server addresses.
    access: SocketAddr,
    peer: SocketAddr,
    managers: Mutex<Managers>,
    /// Ids whose holding may have changed since the agent last looked.
    changed: Mutex<HashSet<String>>,
    /// Slots that saw requests since the agent last looked.
    touched: Mutex<HashSet<u32>>,
    /// Peers a relay fetch failed from since the last report.
    failed_sources: Mutex<Vec<String>>,
    /// Views relayed since the last report, by asset (at most [`DEMAND_IDS_MAX`] ids).
    demand: Mutex<HashMap<String, f64>>,
    /// Uploads in flight (from before their publish until the manager confirmed them), by id,
    /// and the tombstone revision each confirmed version is newer than. The agent applies a
    /// tombstone under this lock, and never to an id being uploaded or to a version confirmed
    /// at or after the tombstone's revision (an older tombstone still on its way).
    uploads: Mutex<Uploads>,
    stats: ClusterStats,
}

/// See [`ClusterState::uploads`].
#[derive(Default)]
struct Uploads {
    in_flight: HashMap<String, u32>,
    confirmed_rev: HashMap<String, i64>,
}

/// An upload in flight on a clustered node: tombstones of its id wait until it is dropped
/// (after the manager confirmed it, or the upload failed).
pub(crate) struct UploadGuard<'a> {
    cl: &'a ClusterState,
    id: String,
}

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        let mut u = locked(&self.cl.uploads);
        if let Some(n) = u.in_flight.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                u.in_flight.remove(&self.id);
            }
        }
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Holdings per report of a full snapshot (about 5 MiB of JSON): a larger node sends its
/// snapshot in pages, one right after another.
const FULL_REPORT_PAGE: usize = 50_000;

/// At most this many assets' relayed demand is kept between two reports (a report carries
/// the demand of the assets asked for most often in practice; the rest waits for the next).
const DEMAND_IDS_MAX: usize = 65_536;

/// At most this many failed sources are kept between reports (one per peer is enough).
const FAILED_SOURCES_MAX: usize = 1024;

impl ClusterState {
    pub(crate) fn new(
        cfg: ClusterConfig,
        token: ClusterToken,
        access: SocketAddr,
        peer: SocketAddr,
    ) -> ClusterState {
        let urls = cfg.managers.clone();
        ClusterState {
            managers: Mutex::new(Managers {
                configured: urls.len(),
                urls,
                current: 0,
            }),
            cfg,
            token,
            access,
            peer,
            changed: Mutex::new(HashSet::new()),
            touched: Mutex::new(HashSet::new()),
            failed_sources: Mutex::new(Vec::new()),
            uploads: Mutex::new(Uploads::default()),
            demand: Mutex::new(HashMap::new()),
            stats: ClusterStats::default(),
        }
    }

    /// The node's name in the cluster.
    pub fn node(&self) -> &str {
        &self.cfg.node
    }

    /// The access address handed to clients.
    pub fn access(&self) -> SocketAddr {
        self.access
    }

    /// The inter-server address handed to peers.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub(crate) fn note_changed(&self, id: &str) {
        if !is_policy_asset(id) {
            locked(&self.changed).insert(id.to_string());
        }
    }

    pub(crate) fn note_touched(&self, slots: &[u32]) {
        if !slots.is_empty() {
            locked(&self.touched).extend(slots.iter().copied());
        }
    }

    pub(crate) fn note_demand(&self, id: &str, views: f64) {
        let mut d = locked(&self.demand);
        if let Some(v) = d.get_mut(id) {
            *v += views;
        } else if d.len() < DEMAND_IDS_MAX {
            d.insert(id.to_string(), views);
        }
    }

    pub(crate) fn note_failed_source(&self, node: &str) {
        let mut f = locked(&self.failed_sources);
        if f.len() < FAILED_SOURCES_MAX && !f.iter().any(|n| n == node) {
            f.push(node.to_string());
        }
    }

    fn current_manager(&self) -> ManagerUrl {
        locked(&self.managers).current()
    }

    /// After a failed exchange with `was`: the leader it named, else the next manager. Logged
    /// once per move, not per retry.
    fn move_on(&self, was: &ManagerUrl, leader: Option<ManagerUrl>) {
        let mut m = locked(&self.managers);
        if m.current() != *was {
            return; // another thread moved already
        }
        match leader {
            Some(l) => m.follow(l),
            None => m.next(),
        }
        let now = m.current();
        if now != *was {
            tracing::info!(from = %was, to = %now, "switching cluster manager");
        }
    }

    fn set_manager_up(&self, up: bool) {
        let was = self.stats.manager_up.swap(up, Relaxed);
        if was && !up {
            tracing::warn!("the cluster manager is unreachable; retrying");
        }
    }

    /// Marks an upload of `id` in flight until the guard drops (take it before the ingest).
    pub(crate) fn upload_started(&self, id: &str) -> UploadGuard<'_> {
        *locked(&self.uploads)
            .in_flight
            .entry(id.to_string())
            .or_insert(0) += 1;
        UploadGuard {
            cl: self,
            id: id.to_string(),
        }
    }

    /// `PUT /v1/published` for an upload about to be answered `201`: `Ok` once a manager
    /// confirmed it (following `Reel-Leader` and moving through the `--manager` list), `Err`
    /// with why when none did within [`PUBLISH_CONFIRM_WITHIN`].
    pub(crate) fn confirm_published(
        &self,
        id: &str,
        etag: &str,
        size: u64,
        tier: &str,
    ) -> Result<(), String> {
        let body = serde_json::to_vec(&Published {
            node: self.cfg.node.clone(),
            id: id.to_string(),
            etag: etag.to_string(),
            size,
            tier: tier.to_string(),
        })
        .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + PUBLISH_CONFIRM_WITHIN;
        let mut last = String::from("no manager answered");
        // Bounded: each attempt is one exchange, the list is short, the deadline near.
        for _ in 0..16 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left < Duration::from_millis(20) {
                break;
            }
            let url = self.current_manager();
            let mut conn = None;
            match exchange(&mut conn, &url, &self.token, "/v1/published", &body, left) {
                Ok((200..=299, answer)) => {
                    let rev = serde_json::from_slice::<PublishedAck>(&answer)
                        .map(|a| a.rev)
                        .unwrap_or(0);
                    let mut u = locked(&self.uploads);
                    let r = u.confirmed_rev.entry(id.to_string()).or_insert(rev);
                    *r = (*r).max(rev);
                    return Ok(());
                }
                Ok((status, text)) => {
                    return Err(format!(
                        "the manager answered {status}: {}",
                        one_line(&text)
                    ))
                }
                Err(e) => {
                    last = e.to_string();
                    let pause = matches!(e, CallError::Connect(_));
                    self.move_on(&url, e.leader());
                    if pause {
                        std::thread::sleep(BACKOFF_MIN.min(left));
                    }
                }
            }
        }
        Err(last)
    }

    /// The cluster families of `/metrics`.
    pub(crate) fn render_metrics(&self, out: &mut String) {
        let s = &self.stats;
        for (name, help, v) in [
            (
                "reel_cluster_reports_total",
                "Reports the cluster manager acknowledged.",
                &s.reports,
            ),
            (
                "reel_cluster_report_errors_total",
                "Reports that failed (no answer, or not acknowledged).",
                &s.report_errors,
            ),
            (
                "reel_cluster_registrations_total",
                "Registrations with the cluster manager (one per session).",
                &s.registrations,
            ),
            (
                "reel_cluster_tombstones_applied_total",
                "Tombstones from the manager that deleted a local copy.",
                &s.tombstones_applied,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP reel_cluster_manager_up 1 while the last exchange with the cluster manager succeeded.\n# TYPE reel_cluster_manager_up gauge\nreel_cluster_manager_up {}",
            u8::from(s.manager_up.load(Relaxed))
        );
    }
}

/// Why an exchange with a manager gave no answer to act on.
#[derive(Debug, thiserror::Error)]
enum CallError {
    /// No connection: the request was not sent.
    #[error("cannot reach the manager at {0}")]
    Connect(String),
    /// The exchange failed after the request may have been sent.
    #[error("the exchange with the manager failed: {0}")]
    Transport(String),
    /// A standby answered 503, naming the leader if it knows it.
    #[error("the manager is not the leader")]
    NotLeader(Option<ManagerUrl>),
}

impl CallError {
    fn leader(&self) -> Option<ManagerUrl> {
        match self {
            CallError::NotLeader(l) => l.clone(),
            _ => None,
        }
    }
}

fn one_line(b: &[u8]) -> String {
    let t = String::from_utf8_lossy(b);
    t.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect()
}

/// One `PUT path` of a JSON `body` to `url` on `conn` (connected first if `None`; dropped
/// after a failure or a `Connection: close`). Returns the status and body of any answer but
/// a standby's 503.
fn exchange(
    conn: &mut Option<Conn>,
    url: &ManagerUrl,
    token: &ClusterToken,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), CallError> {
    let timeout = timeout.clamp(Duration::from_millis(20), EXCHANGE_TIMEOUT);
    let mut c = match conn.take() {
        Some(c) => c,
        None => {
            let addr = resolve(url).ok_or_else(|| CallError::Connect(url.to_string()))?;
            Conn::connect(addr, timeout).map_err(|_| CallError::Connect(url.to_string()))?
        }
    };
    let _ = c.stream().set_read_timeout(Some(timeout));
    let _ = c.stream().set_write_timeout(Some(timeout));
    let auth = String::from_utf8_lossy(&token.bearer_header()).into_owned();
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let r = match c.request("PUT", path, &headers, Some(body)) {
        Ok(r) => r,
        Err(e) if e.is_stale() => {
            // A keep-alive connection the manager had closed: once more on a fresh one.
            let addr = resolve(url).ok_or_else(|| CallError::Connect(url.to_string()))?;
            let mut fresh =
                Conn::connect(addr, timeout).map_err(|_| CallError::Connect(url.to_string()))?;
            let r = fresh
                .request("PUT", path, &headers, Some(body))
                .map_err(|e| transport(&e))?;
            c = fresh;
            r
        }
        Err(e) => return Err(transport(&e)),
    };
    if r.body.len() as u64 > ANSWER_BYTES_MAX {
        return Err(CallError::Transport("the answer is too large".into()));
    }
    if r.status() == 503 {
        let leader = r
            .header("reel-leader")
            .and_then(|v| ManagerUrl::parse(v).ok());
        return Err(CallError::NotLeader(leader));
    }
    if !r.head.close {
        *conn = Some(c);
    }
    Ok((r.status(), r.body))
}

fn transport(e: &ClientError) -> CallError {
    CallError::Transport(e.to_string())
}

fn resolve(url: &ManagerUrl) -> Option<SocketAddr> {
    url.authority.to_socket_addrs().ok()?.next()
}

/// Waits that grow from [`BACKOFF_MIN`] to [`BACKOFF_MAX`] while attempts fail.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(BACKOFF_MIN)
    }

    fn reset(&mut self) {
        self.0 = BACKOFF_MIN;
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        d
    }
}

/// A random number per process start (the `boot` of [`Register`]): std's hasher keys come
/// from the OS's randomness.
fn boot_id() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// The fill of each tier.
fn tier_fills(tiers: &Tiers) -> Vec<TierFill> {
    [
        ("primary", Some(&tiers.primary)),
        ("secondary", tiers.secondary.as_ref()),
    ]
    .into_iter()
    .filter_map(|(tier, v)| {
        let st = v?.stats();
        Some(TierFill {
            tier: tier.to_string(),
            capacity_bytes: st.capacity_bytes,
            used_bytes: st.used_bytes,
        })
    })
    .collect()
}

/// What the node holds of `id` now, if anything.
fn holding(tiers: &Tiers, id: &str) -> Option<Holding> {
    let (a, _) = tiers.lookup(id)?;
    Some(Holding {
        id: id.to_string(),
        etag: a.etag(),
        size: a.size(),
        tiers: tiers
            .locations(id)
            .into_iter()
            .map(str::to_string)
            .collect(),
    })
}

/// Every holding (user assets of both tiers, each id once).
fn snapshot(tiers: &Tiers) -> Vec<Holding> {
    let mut ids: Vec<String> = tiers
        .primary
        .list()
        .iter()
        .map(|a| a.id().to_string())
        .collect();
    if let Some(s) = &tiers.secondary {
        ids.extend(
            s.list()
                .iter()
                .filter(|a| tiers.primary.get(a.id()).is_none())
                .map(|a| a.id().to_string()),
        );
    }
    ids.retain(|id| !is_policy_asset(id));
    ids.iter().filter_map(|id| holding(tiers, id)).collect()
}

/// The agent's state across reports.
struct Agent<'a> {
    shared: &'a Shared,
    cl: &'a ClusterState,
    conn: Option<Conn>,
    backoff: Backoff,
    /// Ids changed since the last acknowledged report.
    pending: HashSet<String>,
    /// Slots with requests since the last acknowledged report.
    rates_pending: HashSet<u32>,
    /// Response bytes and when, at the last report (for `tx_bytes_per_s`).
    tx_mark: (u64, Instant),
    /// The failure of the last exchange was logged (once, until one succeeds).
    warned: bool,
    /// Tombstones of ids being uploaded, decided after the upload.
    deferred: Vec<Tombstone>,
    /// The pages of a full snapshot still to send (the first went with `full: true`).
    pages: std::collections::VecDeque<Vec<Holding>>,
}

impl Agent<'_> {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Relaxed)
    }

    /// Sleeps `d` in short steps; false if the node is stopping.
    fn sleep(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while !self.stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        false
    }

    /// One exchange with the current manager; on failure, moves on (to the leader named or the
    /// next manager) and notes the manager down.
    fn call(&mut self, path: &str, body: &[u8]) -> Result<(u16, Vec<u8>), CallError> {
        let url = self.cl.current_manager();
        match exchange(
            &mut self.conn,
            &url,
            &self.cl.token,
            path,
            body,
            EXCHANGE_TIMEOUT,
        ) {
            Ok(r) => {
                self.cl.set_manager_up(true);
                Ok(r)
            }
            Err(e) => {
                self.conn = None;
                self.cl.set_manager_up(false);
                self.cl.move_on(&url, e.leader());
                Err(e)
            }
        }
    }

    /// Logs a failure once until an exchange succeeds.
    fn warn_once(&mut self, what: &str, why: &str) {
        if !self.warned {
            tracing::warn!(reason = why, "{what}");
            self.warned = true;
        }
    }

    /// Registers with a manager (retrying until one answers or the node stops).
    fn register(&mut self) -> Option<Registered> {
        let body = serde_json::to_vec(&Register {
            node: self.cl.cfg.node.clone(),
            boot: boot_id(),
            access: self.cl.access,
            peer: self.cl.peer,
            tiers: tier_fills(&self.shared.tiers),
        })
        .ok()?;
        while !self.stopped() {
            match self.call("/v1/register", &body) {
                Ok((200, answer)) => match serde_json::from_slice::<Registered>(&answer) {
                    Ok(r) => {
                        self.warned = false;
                        self.backoff.reset();
                        return Some(r);
                    }
                    Err(e) => self.warn_once(
                        "the cluster manager's registration answer is not valid",
                        &e.to_string(),
                    ),
                },
                Ok((status, answer)) => self.warn_once(
                    "the cluster manager refused the registration",
                    &format!("{status}: {}", one_line(&answer)),
                ),
                Err(e) => {
                    self.warn_once("cannot register with the cluster manager", &e.to_string())
                }
            }
            let d = self.backoff.next();
            self.sleep(d);
        }
        None
    }

    /// Deletes the copies the tombstones kill, in revision order; counts those that deleted.
    fn apply_tombstones(&mut self, drv: &mut Driver, mut tombstones: Vec<Tombstone>) {
        tombstones.append(&mut self.deferred);
        tombstones.sort_by_key(|t| t.rev);
        for t in tombstones {
            let uploads = locked(&self.cl.uploads);
            if uploads.in_flight.contains_key(&t.id) {
                // Decided once the upload is confirmed (or failed): at the next report.
                self.deferred.push(t);
                continue;
            }
            if uploads
                .confirmed_rev
                .get(&t.id)
                .is_some_and(|&r| r >= t.rev)
            {
                continue;
            }
            // A user asset's id only (never an internal `{id}/policy` record).
            let target = format!("/assets/{}", t.id);
            if !matches!(reel_http::route(&target), Ok(reel_http::Route::Asset(_))) {
                continue;
            }
            match worker::delete_versions(self.shared, drv, &t.id, t.keep.as_deref()) {
                Ok(true) => {
                    self.cl.stats.tombstones_applied.fetch_add(1, Relaxed);
                    tracing::info!(id = t.id, "a tombstone deleted the local copy");
                }
                Ok(false) => {}
                Err(e) => tracing::error!(id = t.id, error = %e, "applying a tombstone failed"),
            }
            drop(uploads);
        }
    }

    /// The next report: every holding if `full`, else what changed since the last
    /// acknowledged one.
    fn build(&mut self, session: u64, seq: u64, full: bool) -> Report {
        let tiers = &self.shared.tiers;
        let paging = !full && !self.pages.is_empty();
        let (upsert, remove) = if full {
            // The snapshot covers every change so far.
            locked(&self.cl.changed).clear();
            self.pending.clear();
            let all = snapshot(tiers);
            self.pages = all
                .chunks(FULL_REPORT_PAGE)
                .map(<[Holding]>::to_vec)
                .collect();
            (self.pages.pop_front().unwrap_or_default(), Vec::new())
        } else if paging {
            // The next page of the snapshot; changes wait for the deltas after the last one.
            (self.pages.pop_front().unwrap_or_default(), Vec::new())
        } else {
            let changed = std::mem::take(&mut *locked(&self.cl.changed));
            self.pending.extend(changed);
            let mut ids: Vec<&String> = self.pending.iter().collect();
            ids.sort_unstable();
            let mut upsert = Vec::new();
            let mut remove = Vec::new();
            for id in ids {
                match holding(tiers, id) {
                    Some(h) => upsert.push(h),
                    None => remove.push(id.clone()),
                }
            }
            (upsert, remove)
        };
        let touched = std::mem::take(&mut *locked(&self.cl.touched));
        self.rates_pending.extend(touched);
        let rates = self.rates();
        let (load, tx_mark) = self.load();
        self.tx_mark = tx_mark;
        Report {
            node: self.cl.cfg.node.clone(),
            session,
            seq,
            full,
            more: (full || paging) && !self.pages.is_empty(),
            upsert,
            remove,
            rates,
            load,
            tiers: tier_fills(tiers),
            failed_sources: locked(&self.cl.failed_sources).clone(),
            pulls: self.shared.pulls.unreported(),
            // Statistical: taken now, lost if this report is (the next one counts anew).
            demand: {
                let mut d: Vec<AssetDemand> = std::mem::take(&mut *locked(&self.cl.demand))
                    .into_iter()
                    .map(|(id, views)| AssetDemand { id, views })
                    .collect();
                d.sort_by(|a, b| a.id.cmp(&b.id));
                d
            },
        }
    }

    /// Rates (views per hour) of the slots with requests: the policy's with a secondary, the
    /// rate thread's without one.
    fn rates(&self) -> Vec<AssetRate> {
        let shared = self.shared;
        let mut slots: Vec<u32> = self.rates_pending.iter().copied().collect();
        slots.sort_unstable();
        let ids: Vec<(u32, String)> = slots
            .into_iter()
            .filter_map(|s| Some((s, shared.index.id_of(s)?)))
            .collect();
        let rate = |f: &dyn Fn(u32) -> f64| -> Vec<AssetRate> {
            ids.iter()
                .map(|(s, id)| AssetRate {
                    id: id.clone(),
                    views_per_h: f(*s),
                })
                .collect()
        };
        match &shared.policy {
            Some(p) => {
                let p = super::scheduler::lock(p);
                rate(&|s| p.rate_per_h(s))
            }
            None => {
                let r = locked(&shared.rate_view);
                rate(&|s| r.rate_per_h(s))
            }
        }
    }

    /// The node's load now, and the new mark for the next report's send rate.
    fn load(&self) -> (Load, (u64, Instant)) {
        let shared = self.shared;
        let shards = &shared.metrics[..shared.shards];
        let streams = shards.iter().map(|m| m.requests_in_flight()).sum();
        let tx: u64 = shared
            .metrics
            .iter()
            .map(|m| m.response_bytes_total())
            .fold(0, u64::wrapping_add);
        let now = Instant::now();
        let (tx0, t0) = self.tx_mark;
        let secs = now.duration_since(t0).as_secs_f64();
        let tx_bytes_per_s = if secs > 0.0 {
            tx.wrapping_sub(tx0) as f64 / secs
        } else {
            0.0
        };
        let load = Load {
            streams,
            tx_bytes_per_s,
            device_queue: shared.foreground_reads_in_flight(),
        };
        (load, (tx, now))
    }

    /// A report was acknowledged: what it carried is the manager's now.
    fn acknowledged(&mut self, sent_failed_sources: usize, sent_pulls: usize) {
        self.shared.pulls.reported(sent_pulls);
        self.pending.clear();
        self.rates_pending.clear();
        let mut f = locked(&self.cl.failed_sources);
        let n = sent_failed_sources.min(f.len());
        f.drain(..n);
    }
}

/// The agent thread: registers, applies tombstones, reports, until the node stops.
pub(crate) fn run(shared: &Shared) {
    let Some(cl) = &shared.cluster else {
        return;
    };
    let chunk = shared.tiers.primary.chunk_size() as usize;
    let mut drv = match worker::chunk_ring(chunk) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "the cluster agent cannot start its ring; not joining the cluster");
            return;
        }
    };
    let mut a = Agent {
        shared,
        cl,
        conn: None,
        backoff: Backoff::new(),
        pending: HashSet::new(),
        rates_pending: HashSet::new(),
        tx_mark: (0, Instant::now()),
        warned: false,
        deferred: Vec::new(),
        pages: std::collections::VecDeque::new(),
    };
    // Each pass is one session: register, then report until the manager forgets it.
    while !a.stopped() {
        let Some(reg) = a.register() else { return };
        cl.stats.registrations.fetch_add(1, Relaxed);
        tracing::info!(
            manager = %cl.current_manager(),
            session = reg.session,
            tombstones = reg.tombstones.len(),
            "registered with the cluster manager"
        );
        a.apply_tombstones(&mut drv, reg.tombstones);
        let period = Duration::from_millis(reg.report_ms.clamp(REPORT_MS_MIN, REPORT_MS_MAX));
        let mut full = true;
        let mut seq = 0u64;
        let mut next = Instant::now();
        loop {
            if !a.sleep(next.saturating_duration_since(Instant::now())) {
                return;
            }
            seq += 1;
            let report = a.build(reg.session, seq, full);
            // A page of a snapshot lost in a failed exchange cannot be sent again as it was:
            // the snapshot starts over.
            let was_page = report.full || report.more || !a.pages.is_empty();
            let sent_failed = report.failed_sources.len();
            let sent_pulls = report.pulls.len();
            let Ok(body) = serde_json::to_vec(&report) else {
                return;
            };
            drop(report);
            match a.call("/v1/report", &body) {
                Ok((200, answer)) => {
                    cl.stats.reports.fetch_add(1, Relaxed);
                    a.warned = false;
                    a.backoff.reset();
                    a.acknowledged(sent_failed, sent_pulls);
                    let ack = serde_json::from_slice::<ReportAck>(&answer).unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "the manager's report answer is not valid; sending a full report next");
                        ReportAck {
                            resync: true,
                            tombstones: Vec::new(),
                        }
                    });
                    a.apply_tombstones(&mut drv, ack.tombstones);
                    full = ack.resync;
                    if full {
                        a.pages.clear();
                    }
                    // The rest of a snapshot goes at once.
                    next = if a.pages.is_empty() {
                        Instant::now() + period
                    } else {
                        Instant::now()
                    };
                }
                Ok((409, _)) => {
                    tracing::info!(
                        session = reg.session,
                        "the cluster manager does not know this session; registering again"
                    );
                    cl.stats.report_errors.fetch_add(1, Relaxed);
                    break;
                }
                Ok((status, answer)) => {
                    cl.stats.report_errors.fetch_add(1, Relaxed);
                    a.warn_once(
                        "the cluster manager refused a report",
                        &format!("{status}: {}", one_line(&answer)),
                    );
                    if was_page {
                        a.pages.clear();
                        full = true;
                    }
                    next = Instant::now() + period;
                }
                Err(e) => {
                    cl.stats.report_errors.fetch_add(1, Relaxed);
                    if was_page {
                        a.pages.clear();
                        full = true;
                    }
                    if matches!(e, CallError::Connect(_) | CallError::NotLeader(_)) {
                        // Nothing was taken: the same number goes again.
                        seq -= 1;
                    }
                    a.warn_once("a report to the cluster manager failed", &e.to_string());
                    next = Instant::now() + a.backoff.next();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> ManagerUrl {
        ManagerUrl::parse(s).expect("url")
    }

    #[test]
    fn managers_move_to_the_next_and_follow_a_named_leader() {
        let mut m = Managers {
            urls: vec![url("http://a:1"), url("http://b:2")],
            configured: 2,
            current: 0,
        };
        m.next();
        assert_eq!(m.current(), url("http://b:2"));
        m.next();
        assert_eq!(m.current(), url("http://a:1"));
        m.follow(url("http://b:2"));
        assert_eq!((m.current(), m.urls.len()), (url("http://b:2"), 2));
        m.follow(url("http://c:3"));
        assert_eq!((m.current(), m.urls.len()), (url("http://c:3"), 3));
        // Learned leaders are bounded: the configured ones stay.
        for i in 0..3 * LEARNED_MANAGERS_MAX {
            m.follow(url(&format!("http://x{i}:9")));
        }
        assert!(m.urls.len() <= 2 + LEARNED_MANAGERS_MAX);
        assert_eq!(&m.urls[..2], &[url("http://a:1"), url("http://b:2")]);
    }

    #[test]
    fn changes_and_failed_sources_are_noted_once_each() {
        let cfg = ClusterConfig {
            node: "n1".into(),
            managers: vec![url("http://m:1")],
            advertise: None,
            peer_advertise: None,
        };
        let token = ClusterToken::from_bytes(b"0123456789abcdef", "test").expect("token");
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let c = ClusterState::new(cfg, token, addr, addr);
        c.note_changed("a");
        c.note_changed("a");
        c.note_changed("a/policy");
        assert_eq!(*locked(&c.changed), HashSet::from(["a".to_string()]));
        c.note_failed_source("n2");
        c.note_failed_source("n2");
        c.note_failed_source("n3");
        assert_eq!(*locked(&c.failed_sources), vec!["n2", "n3"]);
        for i in 0..2 * FAILED_SOURCES_MAX {
            c.note_failed_source(&format!("x{i}"));
        }
        assert_eq!(locked(&c.failed_sources).len(), FAILED_SOURCES_MAX);
        let mut out = String::new();
        c.render_metrics(&mut out);
        assert!(out.contains("reel_cluster_manager_up 0\n"), "{out}");
        assert!(out.contains("reel_cluster_reports_total 0\n"), "{out}");
    }

    #[test]
    fn backoff_grows_to_its_ceiling_and_resets() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..6).map(|_| b.next()).collect();
        assert_eq!(waits[0], BACKOFF_MIN);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().expect("six"), BACKOFF_MAX);
        b.reset();
        assert_eq!(b.next(), BACKOFF_MIN);
    }
}
