//! The node: a volume served over HTTP/1.1 by one pinned shard thread per core.
//!
//! - [`shard`]: the per-core event loop — its own ring, `SO_REUSEPORT` listener, connections and
//!   registered buffer pool; GET/HEAD stream from the device with `READ_FIXED` into a registered
//!   buffer and `SEND_ZC` out of the same buffer.
//! - [`worker`]: ingest workers. Uploads (PUT) and deletes block on `fdatasync`, so a shard hands
//!   the connection to a worker thread, which answers and hands it back for keep-alive; a slow
//!   uploader or a sync never stalls a shard's streams.
//! - `relay`: a stream source fetching an asset from the node that holds it, for clients with a
//!   relay ticket; on the shard's ring, every chunk crc-checked before its bytes go out.
//! - [`control`]: the control endpoints (`/assets` listing, info, policy, `/migration`,
//!   `/metrics`, `/healthz`), answered off the serving path.
//! - [`config`]: [`NodeConfig`], each setting defined once for the library, the `reel node`
//!   flags, the environment and the config file.
//! - [`metrics`]: per-thread counters and the Prometheus rendering.
//! - [`index`]: one dense slot per asset of the node, for the rate counters and the policy.
//! - [`scheduler`]: with a secondary, the migration thread running [`reel_policy::TierPolicy`];
//!   [`writeback`]: copies between the tiers and the tier lock.
//! - [`cluster`]: with `--manager`, the agent thread that registers with the cluster manager
//!   and reports holdings, rates and load; the upload's confirmation before its `201`.
//! - `pull`: with `--peer-listen`, the puller thread: node-to-node copies the manager orders
//!   (`PUT /v1/pull`), pulled from the holder, crc-checked, under the copy throttle, published
//!   only when whole.
//!
//! Invariants: no shard touches another shard's connections, ring or buffers; the only state
//! shared between threads is the volumes (catalog reads are lock-free), the metric and rate
//! blocks (single writer each), the policy (behind a mutex, off the hot path) and the hand-off
//! channels.

pub mod cluster;
pub mod config;
pub(crate) mod conn;
pub mod control;
pub mod index;
pub mod metrics;
pub(crate) mod pull;
pub(crate) mod relay;
pub mod scheduler;
pub mod shard;
pub(crate) mod source;
pub mod worker;
pub mod writeback;

use std::io;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use config::NodeConfig;
use metrics::ThreadMetrics;
/// The latency guard's read-time histogram, which the shards' metrics fill.
pub(crate) use reel_policy::throttle::guard;
use reel_store::volume::Volume;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("shard {shard} failed to start: {detail}")]
    Shard { shard: usize, detail: String },
    #[error("cannot start a thread: {0}")]
    Thread(io::Error),
}

/// The devices a node serves.
pub struct Tiers {
    pub primary: Arc<Volume>,
    /// Holds a copy of every asset once written back ([`scheduler`]); GETs of assets not on
    /// the primary are served from it.
    pub secondary: Option<Arc<Volume>>,
}

impl Tiers {
    /// The copy a GET streams: the primary's if it has one, else the secondary's. Returns the
    /// volume too (its fd and data offset locate the extents).
    pub fn lookup(&self, id: &str) -> Option<(reel_store::Asset, &Arc<Volume>)> {
        if let Some(a) = self.primary.get(id) {
            return Some((a, &self.primary));
        }
        let s = self.secondary.as_ref()?;
        s.get(id).map(|a| (a, s))
    }

    /// Which tiers hold the current version of `id`.
    /// The tiers of [`Tiers::locations`] whose copy serves but is not yet durable (a copy
    /// waiting for its commit; a crash would forget it).
    pub fn uncommitted(&self, id: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (tier, v) in [
            ("primary", Some(&self.primary)),
            ("secondary", self.secondary.as_ref()),
        ] {
            if let Some(a) = v.and_then(|v| v.get(id)) {
                if v.is_some_and(|v| !v.is_durable(&a)) {
                    out.push(tier);
                }
            }
        }
        out
    }

    pub fn locations(&self, id: &str) -> Vec<&'static str> {
        let p = self.primary.get(id);
        let s = self.secondary.as_ref().and_then(|s| s.get(id));
        let mut out = Vec::new();
        if p.is_some() {
            out.push("primary");
        }
        match (&p, &s) {
            (Some(p), Some(s)) if writeback::same_version(p, s) => out.push("secondary"),
            (None, Some(_)) => out.push("secondary"),
            _ => {}
        }
        out
    }
}

/// State every thread of a node can see.
pub(crate) struct Shared {
    pub cfg: NodeConfig,
    /// The cluster token writes and admin requests must present (`--cluster-token-file`).
    pub cluster_token: Option<reel_http::auth::ClusterToken>,
    pub tiers: Tiers,
    pub stop: AtomicBool,
    /// One block per shard, then one per ingest worker.
    pub metrics: Vec<ThreadMetrics>,
    pub shards: usize,
    pub tier_lock: writeback::TierLock,
    /// The one copy throttle of the node: migrations and pulls draw on it together.
    pub copy_throttle: writeback::Throttle,
    /// Node-to-node copies ordered by the manager (`PUT /v1/pull`).
    pub pulls: pull::Pulls,
    pub migration: writeback::MigrationStats,
    /// Pause and budget of migration, changed at run time by `PUT /migration`.
    pub migration_control: writeback::MigrationControl,
    /// Tells the migration scheduler about uploads and deletes (None without a secondary).
    pub events_tx: Option<crossbeam_channel::Sender<scheduler::Event>>,
    /// The tiering policy (None without a secondary: nothing can move).
    pub policy: Option<scheduler::SharedPolicy>,
    /// One dense slot per asset of the node (both tiers): the rate counters' index.
    pub index: index::NodeIndex,
    /// Per-shard request/byte counters by slot (each shard writes only its own table).
    pub rates: Arc<reel_policy::RateCounters>,
    /// Without a secondary (no policy), the decaying rates folded every second by the rate
    /// thread for `/info`; with one, the policy folds them and this stays unused.
    pub rate_view: std::sync::Mutex<reel_policy::Rates>,
    /// The origin of the policy's clock ([`Shared::policy_now_ns`]).
    pub epoch: std::time::Instant,
    /// With `--manager`: the node's cluster identity and what its agent reports.
    pub cluster: Option<cluster::ClusterState>,
    /// The addresses this node is reached at (its bound listeners, and what it advertises):
    /// a relay ticket naming one as the holder is refused (see `relay::RelaySource::start`).
    pub own_addrs: Vec<std::net::SocketAddr>,
}

impl Shared {
    /// `id`'s holding may have changed (uploaded, deleted, copied or dropped between the
    /// tiers): the next cluster report says how it is now. Nothing without a manager.
    pub(crate) fn note_changed(&self, id: &str) {
        if let Some(c) = &self.cluster {
            c.note_changed(id);
        }
    }

    /// Slots that saw requests in a fold of the rate counters: their rates go in the next
    /// cluster report. Nothing without a manager.
    pub(crate) fn note_touched(&self, slots: &[u32]) {
        if let Some(c) = &self.cluster {
            c.note_touched(slots);
        }
    }

    /// Clients of this node asked for `views` of asset `id`, which it relayed (it lacks it):
    /// the next cluster report carries it. Nothing without a manager.
    pub(crate) fn note_relay_demand(&self, id: &str, views: f64) {
        if let Some(c) = &self.cluster {
            c.note_demand(id, views);
        }
    }

    /// A relay fetch from peer `node` failed: the next cluster report names it, so the manager
    /// marks it down. Nothing without a manager.
    pub(crate) fn note_failed_source(&self, node: &str) {
        if let Some(c) = &self.cluster {
            c.note_failed_source(node);
        }
    }

    /// The time every caller of the policy passes in (the scheduler and the ingest workers
    /// alike): nanoseconds since the node started.
    pub(crate) fn policy_now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(crate) fn shard_metrics(&self, i: usize) -> &ThreadMetrics {
        &self.metrics[i]
    }

    pub(crate) fn worker_metrics(&self, i: usize) -> &ThreadMetrics {
        &self.metrics[self.shards + i]
    }

    /// Device reads the shards have in flight for responses, summed over shards (racy by a
    /// read or two; good enough to decide whether a background copy should wait).
    pub(crate) fn foreground_reads_in_flight(&self) -> u64 {
        self.metrics[..self.shards]
            .iter()
            .map(|m| m.device_reads_in_flight())
            .fold(0u64, u64::wrapping_add)
    }

    /// The shards' device reads for responses so far: how many, by time taken.
    pub(crate) fn foreground_read_time(&self) -> guard::ReadTime {
        let mut rt = guard::ReadTime::default();
        for m in &self.metrics[..self.shards] {
            m.add_device_read_time(&mut rt);
        }
        rt
    }

    /// The whole node's [`ThreadMetrics::activity`] (shards and ingest workers).
    pub(crate) fn foreground_activity(&self) -> (u64, u64) {
        self.metrics
            .iter()
            .map(|m| m.activity())
            .fold((0, 0), |a, b| {
                (a.0.wrapping_add(b.0), a.1.wrapping_add(b.1))
            })
    }

    /// The `/metrics` text.
    pub(crate) fn render_metrics(&self) -> String {
        let names: Vec<(String, &ThreadMetrics)> = self
            .metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let name = if i < self.shards {
                    format!("shard-{i}")
                } else {
                    format!("ingest-{}", i - self.shards)
                };
                (name, m)
            })
            .collect();
        let mut devices = Vec::new();
        let mut paths = Vec::new();
        for (tier, v) in [
            ("primary", Some(&self.tiers.primary)),
            ("secondary", self.tiers.secondary.as_ref()),
        ] {
            if let Some(v) = v {
                paths.push((tier, v.path().display().to_string(), v.stats()));
            }
        }
        for (tier, path, st) in &paths {
            devices.push(metrics::DeviceFigures {
                tier,
                path,
                capacity_bytes: st.capacity_bytes,
                used_bytes: st.used_bytes,
                assets: st.assets,
            });
        }
        let mut out = metrics::render(&names, &devices);
        self.pulls.render_metrics(&mut out);
        if let Some(c) = &self.cluster {
            c.render_metrics(&mut out);
        }
        if self.tiers.secondary.is_some() {
            use std::fmt::Write as _;
            use std::sync::atomic::Ordering::Relaxed;
            let m = &self.migration;
            for (name, help, v) in [
                (
                    "reel_promotions_total",
                    "Assets copied from secondary to primary.",
                    &m.promotions,
                ),
                (
                    "reel_write_backs_total",
                    "Assets copied from primary to secondary.",
                    &m.write_backs,
                ),
                (
                    "reel_demotions_total",
                    "Clean primary copies dropped because they cooled.",
                    &m.demotions,
                ),
                (
                    "reel_evictions_total",
                    "Clean primary copies dropped to make room.",
                    &m.evictions,
                ),
                (
                    "reel_migration_failures_total",
                    "Migrations that failed (retried later).",
                    &m.failures,
                ),
                (
                    "reel_migration_bytes_total",
                    "Bytes written by copies between the tiers, as they go.",
                    &m.bytes_copied,
                ),
                (
                    "reel_migration_commits_total",
                    "Commits that made the copies served so far durable (one data sync and one journal batch per tier each).",
                    &m.commits,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                    v.load(Relaxed)
                );
            }
            let _ = writeln!(out, "# HELP reel_migration_uncommitted_bytes Copies served but not yet durable (forgotten by a crash, then redone).\n# TYPE reel_migration_uncommitted_bytes gauge");
            for (tier, v) in [
                ("primary", Some(&self.tiers.primary)),
                ("secondary", self.tiers.secondary.as_ref()),
            ] {
                if let Some(v) = v {
                    let (_, bytes) = v.volatile_stats();
                    let _ = writeln!(
                        out,
                        "reel_migration_uncommitted_bytes{{tier=\"{tier}\"}} {bytes}"
                    );
                }
            }
            if let Some(p) = &self.policy {
                let p = scheduler::lock(p);
                let _ = writeln!(out, "# HELP reel_policy_half_life_seconds The half-life of the request rates the tiering policy reads now (chosen from the traffic unless --rate-half-life is set).\n# TYPE reel_policy_half_life_seconds gauge\nreel_policy_half_life_seconds {}", p.half_life_s());
                let _ = writeln!(out, "# HELP reel_policy_promote_views_per_hour The promote threshold of an asset without its own policy, as it applies now.\n# TYPE reel_policy_promote_views_per_hour gauge\nreel_policy_promote_views_per_hour {:.6}", p.promote_floor_per_h());
                if let Some(t) = p.tuning() {
                    let _ = writeln!(out, "# HELP reel_policy_half_life_switches_total Times the policy switched the half-life it reads.\n# TYPE reel_policy_half_life_switches_total counter\nreel_policy_half_life_switches_total {}", t.switches);
                    let _ = writeln!(out, "# HELP reel_policy_shadow_byte_hit_ratio The byte-hit ratio a primary run on each half-life's rates would have had over the last hours (what the choice is made on).\n# TYPE reel_policy_shadow_byte_hit_ratio gauge");
                    for c in &t.candidates {
                        let _ = writeln!(
                            out,
                            "reel_policy_shadow_byte_hit_ratio{{half_life_seconds=\"{}\"}} {:.6}",
                            c.half_life_s, c.shadow_byte_hit_ratio
                        );
                    }
                }
            }
            let c = &self.migration_control;
            let _ = writeln!(out, "# HELP reel_migration_paused 1 while an operator has paused migration (PUT /migration?paused=true).\n# TYPE reel_migration_paused gauge\nreel_migration_paused {}", u8::from(c.paused()));
            let _ = writeln!(out, "# HELP reel_migration_copy_budget_bytes_per_second The copies' shared bandwidth budget (0: unlimited).\n# TYPE reel_migration_copy_budget_bytes_per_second gauge\nreel_migration_copy_budget_bytes_per_second {}", c.copy_budget());
            let _ = writeln!(out, "# HELP reel_migration_drops_unsynced_bytes Primary copies dropped whose Delete is written but not yet synced: not free until the next sync.\n# TYPE reel_migration_drops_unsynced_bytes gauge\nreel_migration_drops_unsynced_bytes {}", self.tiers.primary.dropped_unsynced_bytes());
            let committing = m.commit_ns.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "# HELP reel_migration_commit_seconds_total Time spent committing copies (device flushes, which stall foreground reads meanwhile).\n# TYPE reel_migration_commit_seconds_total counter\nreel_migration_commit_seconds_total {committing:.6}");
            let backed = m.backoff_ns.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "# HELP reel_migration_backoff_seconds_total Time copies paused after a chunk I/O slower than --copy-slow-io (a congested device).\n# TYPE reel_migration_backoff_seconds_total counter\nreel_migration_backoff_seconds_total {backed:.6}");
            let _ = writeln!(out, "# HELP reel_migration_slow_ios_total Copy chunk I/Os slower than --copy-slow-io (each halves the copies' pace).\n# TYPE reel_migration_slow_ios_total counter\nreel_migration_slow_ios_total {}", m.slow_ios.load(Relaxed));
            let _ = writeln!(out, "# HELP reel_migration_copy_paced_bytes_per_second The rate copies are paced to after slow I/Os, below the budget (0: the budget applies).\n# TYPE reel_migration_copy_paced_bytes_per_second gauge\nreel_migration_copy_paced_bytes_per_second {}", m.paced_bytes_per_s.load(Relaxed));
            let _ = writeln!(out, "# HELP reel_migration_guard_bytes_per_second The rate the latency guard allows copies now, within the budget (0: no guard, --copy-latency-target 0).\n# TYPE reel_migration_guard_bytes_per_second gauge\nreel_migration_guard_bytes_per_second {}", m.guard_bytes_per_s.load(Relaxed));
            let base = m.guard_baseline_ns.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "# HELP reel_migration_guard_baseline_seconds The foreground's p99 device read time in the latency guard's last probe (no copy I/O).\n# TYPE reel_migration_guard_baseline_seconds gauge\nreel_migration_guard_baseline_seconds {base:.6}");
            let ratio = m.guard_ratio_milli.load(Relaxed) as f64 / 1e3;
            let _ = writeln!(out, "# HELP reel_migration_guard_ratio The foreground's p99 device read time in the copying windows of the guard's last decision over that in the probes around them.\n# TYPE reel_migration_guard_ratio gauge\nreel_migration_guard_ratio {ratio:.3}");
            let _ = writeln!(out, "# HELP reel_migration_guard_probes_total Times copies stopped for the latency guard to measure the foreground without them.\n# TYPE reel_migration_guard_probes_total counter\nreel_migration_guard_probes_total {}", m.guard_probes.load(Relaxed));
            let probing = m.guard_probe_ns.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "# HELP reel_migration_guard_probe_seconds_total Time copies stopped for those probes.\n# TYPE reel_migration_guard_probe_seconds_total counter\nreel_migration_guard_probe_seconds_total {probing:.6}");
            let _ = writeln!(out, "# HELP reel_migration_guard_cuts_total Decisions of the latency guard that found the foreground's read time past --copy-latency-target (each cut the copies' rate by 30%).\n# TYPE reel_migration_guard_cuts_total counter\nreel_migration_guard_cuts_total {}", m.guard_cuts.load(Relaxed));
            let waited = m.yield_wait_ns.load(Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "# HELP reel_migration_yield_seconds_total Time copies waited for foreground device reads to drain.\n# TYPE reel_migration_yield_seconds_total counter\nreel_migration_yield_seconds_total {waited:.6}");
            let mut up = metrics::UploadPlacement::default();
            for t in &self.metrics {
                up.add(t.upload_placement());
            }
            for (name, help, v) in [
                (
                    "reel_uploads_to_secondary_total",
                    "Uploads that landed on the secondary: the primary had no room and none could be made by dropping clean, cold copies (spilled ones included).",
                    up.to_secondary,
                ),
                (
                    "reel_uploads_spilled_total",
                    "Uploads that began on the primary and moved to the secondary part-way, the primary having filled up.",
                    up.spilled,
                ),
                (
                    "reel_upload_room_drops_total",
                    "Clean primary copies dropped to make room for uploads (their secondary copy stays).",
                    up.room_drops,
                ),
                (
                    "reel_upload_room_dropped_bytes_total",
                    "Bytes of the clean primary copies dropped to make room for uploads.",
                    up.room_dropped_bytes,
                ),
            ] {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
                );
            }
            if let Some(p) = &self.policy {
                let used = p.lock().map_or(0, |p| p.used_bytes());
                let _ = writeln!(out, "# HELP reel_policy_primary_bytes Primary bytes the policy counts (resident, in flight, reserved).\n# TYPE reel_policy_primary_bytes gauge\nreel_policy_primary_bytes {used}");
            }
        }
        out
    }
}

/// A running node.
pub struct Node {
    addr: SocketAddr,
    /// The inter-server listener's address (`--peer-listen`), if any.
    peer_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    shards: Vec<JoinHandle<()>>,
    wakers: Vec<io::PipeWriter>,
    workers: Vec<JoinHandle<()>>,
    jobs: Option<crossbeam_channel::Sender<worker::Job>>,
    writeback: Option<JoinHandle<()>>,
    rate_folder: Option<JoinHandle<()>>,
    puller: Option<JoinHandle<()>>,
    agent: Option<JoinHandle<()>>,
}

/// The 404 for an asset id that names nothing (the generic 404 says "no endpoint").
pub(crate) fn no_such_asset() -> reel_http::HttpError {
    reel_http::HttpError::Node {
        status: reel_http::Status::NOT_FOUND,
        reason: "no asset with this id".into(),
    }
}

/// Suffix of the internal assets that persist per-asset tiering policies.
pub(crate) const POLICY_SUFFIX: &str = "/policy";

/// The half-life of the rates `/info` shows on a node without a secondary, unless
/// `--rate-half-life` says otherwise (a tiered node's policy chooses its own).
const UNTIERED_HALF_LIFE_S: f64 = 1800.0;

/// The internal asset holding `id`'s tiering policy (JSON).
pub(crate) fn policy_asset_name(id: &str) -> String {
    format!("{id}{POLICY_SUFFIX}")
}

/// Whether a stored asset is an internal policy record rather than a user asset.
pub(crate) fn is_policy_asset(id: &str) -> bool {
    id.ends_with(POLICY_SUFFIX)
}

/// The number of CPUs this process may run on.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Node {
    /// Binds the listeners, starts the shards and workers, and returns once every shard is
    /// accepting connections.
    pub fn start(mut cfg: NodeConfig, tiers: Tiers) -> Result<Node, NodeError> {
        if cfg.shards == 0 {
            cfg.shards = online_cpus();
        }
        validate(&cfg)?;
        let cluster_cfg = cfg.cluster().map_err(NodeError::Config)?;
        let chunk = tiers.primary.chunk_size() as usize;
        if chunk > cfg.read_buf_bytes.max(1 << 20) {
            return Err(NodeError::Config(format!(
                "the volume's chunk size {chunk} is larger than the read buffer"
            )));
        }
        let (listeners, addr) = bind_shard_listeners(cfg.listen, cfg.shards)?;
        // The inter-server listener: one more SO_REUSEPORT socket per shard, whose connections
        // carry a `peer` flag (every request on them must present the cluster token).
        let (peer_listeners, peer_addr) = match cfg.peer_listen {
            None => (Vec::new(), None),
            Some(p) => {
                let (ls, a) = bind_shard_listeners(p, cfg.shards)?;
                (ls, Some(a))
            }
        };
        if let Some(sec) = &tiers.secondary {
            if sec.chunk_size() != tiers.primary.chunk_size() {
                return Err(NodeError::Config(format!(
                    "the secondary's chunk size ({}) differs from the primary's ({}); format both with the same chunk size",
                    sec.chunk_size(),
                    tiers.primary.chunk_size()
                )));
            }
        }
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let has_secondary = tiers.secondary.is_some();
        let workers_n = cfg.ingest_workers.max(1);
        let (rates, rate_writers) = reel_policy::RateCounters::new(cfg.shards);
        let index = index::NodeIndex::default();
        for v in std::iter::once(&tiers.primary).chain(tiers.secondary.as_ref()) {
            for a in v.list() {
                if !is_policy_asset(a.id()) {
                    index.register(a.id(), a.size());
                }
            }
        }
        rates.ensure_slots(index.len() as u32 * 2 + 1024);
        let rate_view = std::sync::Mutex::new(reel_policy::Rates::new(
            cfg.rate_half_life
                .map_or(UNTIERED_HALF_LIFE_S, |d| d.as_secs_f64().max(1e-3)),
        ));
        let policy = match &tiers.secondary {
            None => None,
            Some(_) => {
                let pc = scheduler::policy_config(&cfg, &tiers.primary);
                let pol = reel_policy::TierPolicy::new(pc, rates.clone())
                    .map_err(|e| NodeError::Config(format!("tiering policy: {e}")))?;
                Some(std::sync::Mutex::new(pol))
            }
        };
        let cluster_token = match &cfg.cluster_token_file {
            None => None,
            Some(p) => Some(
                reel_http::auth::ClusterToken::from_file(p)
                    .map_err(|e| NodeError::Config(e.to_string()))?,
            ),
        };
        let cluster = match (cluster_cfg, peer_addr, &cluster_token) {
            (Some(c), Some(peer), Some(token)) => Some(cluster::ClusterState::new(
                c.clone(),
                token.clone(),
                c.advertise.unwrap_or(addr),
                c.peer_advertise.unwrap_or(peer),
            )),
            _ => None,
        };
        if let Some(c) = &cluster {
            tracing::info!(
                node = c.node(),
                access = %c.access(),
                peer = %c.peer(),
                "joining the cluster"
            );
        }
        let mut own_addrs = vec![addr];
        own_addrs.extend(peer_addr);
        if let Some(c) = &cluster {
            own_addrs.extend([c.access(), c.peer()]);
        }
        let shared = Arc::new(Shared {
            own_addrs,
            cluster,
            cluster_token,
            epoch: std::time::Instant::now(),
            index,
            rates,
            rate_view,
            tier_lock: writeback::TierLock::default(),
            copy_throttle: writeback::Throttle::new(&cfg.throttle),
            pulls: pull::Pulls::default(),
            migration: writeback::MigrationStats::default(),
            migration_control: writeback::MigrationControl::new(cfg.throttle.bytes_per_s_max),
            events_tx: has_secondary.then_some(ev_tx),
            policy,
            shards: cfg.shards,
            metrics: (0..cfg.shards + workers_n)
                .map(|_| ThreadMetrics::default())
                .collect(),
            cfg,
            tiers,
            stop: AtomicBool::new(false),
        });
        let (job_tx, job_rx) = crossbeam_channel::bounded(shared.cfg.ingest_queue_max);
        let mut returns = Vec::new();
        let mut wakers = Vec::new();
        let mut shard_ends = Vec::new();
        for _ in 0..shared.shards {
            let (tx, rx) = crossbeam_channel::unbounded();
            let (wake_rx, wake_tx) = io::pipe().map_err(NodeError::Thread)?;
            returns.push(worker::ReturnPath {
                tx,
                wake: wake_tx.try_clone().map_err(NodeError::Thread)?,
            });
            wakers.push(wake_tx);
            shard_ends.push((rx, wake_rx));
        }
        let returns = Arc::new(returns);
        let mut workers = Vec::new();
        for i in 0..workers_n {
            let shared = shared.clone();
            let rx = job_rx.clone();
            let returns = returns.clone();
            workers.push(spawn_named(format!("reel-ingest-{i}"), move || {
                worker::run(i, &shared, &rx, &returns)
            })?);
        }
        let writeback = if has_secondary {
            let shared = shared.clone();
            Some(spawn_named("reel-scheduler".into(), move || {
                scheduler::run(&shared, &ev_rx)
            })?)
        } else {
            None
        };
        // The policy folds the counters itself; a second fold would only repeat its work.
        let rate_folder = if shared.policy.is_none() {
            let shared = shared.clone();
            Some(spawn_named("reel-rates".into(), move || {
                fold_rates(&shared)
            })?)
        } else {
            None
        };
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(shared.shards);
        let mut shards = Vec::new();
        let cpus = online_cpus();
        let mut peer_listeners = peer_listeners.into_iter();
        for (i, ((listener, (ret_rx, wake_rx)), rate)) in listeners
            .into_iter()
            .zip(shard_ends)
            .zip(rate_writers)
            .enumerate()
        {
            let peer_listener = peer_listeners.next();
            let shared = shared.clone();
            let jobs = job_tx.clone();
            let ready = ready_tx.clone();
            shards.push(spawn_named(format!("reel-shard-{i}"), move || {
                if shared.cfg.pin {
                    if let Err(e) = reel_store::driver::sys::pin_current_thread(i % cpus) {
                        tracing::warn!(shard = i, error = %e, "could not pin shard thread");
                    }
                }
                let parts = shard::ShardParts {
                    listener,
                    peer_listener,
                    jobs,
                    returns: ret_rx,
                    wake: wake_rx,
                    rate,
                    ready,
                };
                shard::run(i, &shared, parts);
            })?);
        }
        drop(ready_tx);
        // Pull orders arrive on the inter-server listener only.
        let puller = if peer_addr.is_some() {
            let shared = shared.clone();
            Some(spawn_named("reel-puller".into(), move || {
                pull::run(&shared)
            })?)
        } else {
            None
        };
        let agent = if shared.cluster.is_some() {
            let shared = shared.clone();
            Some(spawn_named("reel-cluster".into(), move || {
                cluster::run(&shared)
            })?)
        } else {
            None
        };
        let mut node = Node {
            addr,
            peer_addr,
            shared,
            shards,
            wakers,
            workers,
            jobs: Some(job_tx),
            writeback,
            rate_folder,
            puller,
            agent,
        };
        for _ in 0..node.shards.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err((shard, detail))) => {
                    node.stop_threads();
                    return Err(NodeError::Shard { shard, detail });
                }
                Err(_) => {
                    node.stop_threads();
                    return Err(NodeError::Shard {
                        shard: 0,
                        detail: "a shard thread exited during start".into(),
                    });
                }
            }
        }
        Ok(node)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The inter-server listener's address (`--peer-listen`, its port chosen if it named 0).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The `/metrics` text, as a scrape would see it now.
    pub fn metrics_text(&self) -> String {
        self.shared.render_metrics()
    }

    /// Blocks until every shard has stopped (after [`Node::shutdown`] from another thread, or a
    /// fatal ring error).
    pub fn wait(mut self) {
        for h in self.shards.drain(..) {
            let _ = h.join();
        }
        self.stop_threads();
    }

    /// Stops accepting, closes connections and joins every thread. Uploads in progress are
    /// abandoned (nothing of them becomes visible); completed ones are durable already.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for w in &mut self.wakers {
            let _ = w.write(&[1]);
        }
        for h in self.shards.drain(..) {
            let _ = h.join();
        }
        self.jobs = None;
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        if let Some(h) = self.writeback.take() {
            let _ = h.join();
        }
        if let Some(h) = self.puller.take() {
            let _ = h.join();
        }
        if let Some(h) = self.rate_folder.take() {
            let _ = h.join();
        }
        if let Some(h) = self.agent.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Starts the node's thread `name` running `f`.
fn spawn_named<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<T>, NodeError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(NodeError::Thread)
}

/// Folds the shards' counters into the decaying per-asset rates once a second.
fn fold_rates(shared: &Shared) {
    let mut last = std::time::Instant::now();
    let mut touched = Vec::new();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let now = std::time::Instant::now();
        if now.duration_since(last) < Duration::from_secs(1) {
            continue;
        }
        let elapsed_ns = now.duration_since(last).as_nanos() as u64;
        last = now;
        let recycled = shared.index.take_recycled();
        let sizes = shared.index.sizes();
        let mut rates = shared.rate_view.lock().unwrap_or_else(|p| p.into_inner());
        for slot in recycled {
            rates.forget(&shared.rates, slot);
        }
        touched.clear();
        rates.fold(
            &shared.rates,
            elapsed_ns,
            |slot| sizes.get(slot as usize).copied().unwrap_or(0),
            &mut touched,
        );
        drop(rates);
        shared.note_touched(&touched);
    }
}

fn validate(cfg: &NodeConfig) -> Result<(), NodeError> {
    let bad = |m: &str| Err(NodeError::Config(m.to_string()));
    if cfg.read_buf_bytes < 64 << 10
        || !cfg.read_buf_bytes.is_multiple_of(4096)
        || cfg.read_buf_bytes > 64 << 20
    {
        return bad("read_buf_bytes must be a multiple of 4096 between 64 KiB and 64 MiB");
    }
    if cfg.read_bufs_per_shard < 2 || cfg.read_bufs_per_shard > 16384 {
        return bad("read_bufs_per_shard must be 2..=16384");
    }
    if !(1..=8).contains(&cfg.stream_depth) {
        return bad("stream_depth must be 1..=8");
    }
    if cfg.connections_per_shard_max == 0 || cfg.connections_per_shard_max > 1 << 20 {
        return bad("connections_per_shard_max must be 1..=1048576");
    }
    if cfg.head_bytes_max < 1024 || cfg.head_bytes_max > 1 << 20 {
        return bad("head_bytes_max must be 1 KiB..=1 MiB");
    }
    if cfg
        .peer_listen
        .is_some_and(|p| p == cfg.listen && p.port() != 0)
    {
        return bad(
            "--peer-listen must differ from --listen: both are SO_REUSEPORT listeners, \
                    which would share one port's connections",
        );
    }
    if cfg.shards > 1024 {
        return bad("shards must be at most 1024");
    }
    for (name, d) in [
        ("head_timeout", cfg.head_timeout),
        ("idle_timeout", cfg.idle_timeout),
        ("send_timeout", cfg.send_timeout),
        ("body_timeout", cfg.body_timeout),
    ] {
        if d.is_zero() {
            return Err(NodeError::Config(format!(
                "{name} must be greater than zero"
            )));
        }
    }
    Ok(())
}

/// One `SO_REUSEPORT` listener per shard on `addr`: the first picks the port (the address may
/// name port 0), the others bind the same port, so the kernel spreads connections over the
/// shards. Returns them and the bound address.
fn bind_shard_listeners(
    addr: SocketAddr,
    shards: usize,
) -> Result<(Vec<TcpListener>, SocketAddr), NodeError> {
    let mut listeners = Vec::with_capacity(shards);
    let mut addr = addr;
    for _ in 0..shards {
        let l = reuseport_listener(addr).map_err(|source| NodeError::Listen { addr, source })?;
        addr = l
            .local_addr()
            .map_err(|source| NodeError::Listen { addr, source })?;
        listeners.push(l);
    }
    Ok((listeners, addr))
}

/// A listening socket with `SO_REUSEPORT` (and `SO_REUSEADDR`, so a restart need not wait out
/// TIME_WAIT), blocking: the ring polls it.
fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}
