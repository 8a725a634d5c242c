//! The running manager: two listeners (clients; nodes and peers), leadership on the
//! coordination store, and the handlers that tie the content manager, the stream session
//! manager and the content session manager together.
//!
//! Threads: a tokio runtime serves both listeners; one plain thread campaigns for and renews
//! the lead and expires silent nodes; store calls run on the runtime's blocking pool (the store
//! interface is synchronous, and the etcd store blocks on a runtime of its own).

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reel_http::auth::ClusterToken;
use reel_http::cluster::{
    valid_node_name, Published, PublishedAck, Register, Registered, Report, ReportAck, Ticket,
    TicketKind, Tombstone,
};
use reel_http::{BodyFraming, Method};
use serde::{Deserialize, Serialize};

use crate::config::{read_zones, zones_from_toml, ManagerConfig, StoreSpec};
use crate::content::{Content, Liveness, Transition, Version, PRIMARY, SECONDARY};
use crate::http::{serve, BodyPolicy, Handler, Request, Response, ServeOptions};
use crate::leader::{self, Leadership};
use crate::metrics::Metrics;
use crate::routing::{self, Zones};
use crate::sessions;
use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::EtcdStore;
use crate::store::{CoordStore, MonotonicClock, TxnOp};

/// Store keys.
pub const NODE_PREFIX: &str = "/reel/node/";
pub const TOMB_PREFIX: &str = "/reel/tomb/";
/// Per-asset placement overrides (`reel_policy::placement::AssetPlacement` as JSON).
pub const POLICY_PREFIX: &str = "/reel/policy/";
/// The coverage zones: the TOML text of the `--config` a leader was given.
pub const ZONES_KEY: &str = "/reel/config/zones";

/// The largest per-asset policy body.
pub const POLICY_BODY_MAX: usize = 4096;

/// The largest body the peer listener reads (a full report of about 10^6 holdings).
pub const PEER_BODY_MAX: usize = 256 << 20;

/// What the leader key holds: who leads and where.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    pub name: String,
    pub access: SocketAddr,
    pub peer: SocketAddr,
}

#[derive(Serialize, Deserialize)]
struct MemberRecord {
    access: SocketAddr,
    peer: SocketAddr,
}

#[derive(Serialize, Deserialize)]
struct TombRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keep: Option<String>,
}

/// Leadership as this manager sees it.
enum Lead {
    Leading(Leadership),
    Standby(Option<LeaderInfo>),
}

/// State shared by the handlers and the leadership thread.
pub struct Shared {
    pub cfg: ManagerConfig,
    pub token: ClusterToken,
    /// The coverage zones in force: from `--config` (written to the store when this manager
    /// takes the lead), else the store's (another manager's, or an earlier run's).
    zones: Mutex<Zones>,
    /// `--config`'s text, if given.
    zones_text: Option<String>,
    pub me: LeaderInfo,
    pub content: Mutex<Content>,
    store: Mutex<Box<dyn CoordStore>>,
    lead: Mutex<Lead>,
    leading: AtomicBool,
    /// Misses wait for members' first reports until then (set when the lead is taken).
    warmup_until: Mutex<Instant>,
    pub metrics: Metrics,
    /// The placement loop's state while this manager leads.
    placer: Mutex<Option<crate::placement::Placer>>,
    /// A placement step is running.
    placing: AtomicBool,
    stop: AtomicBool,
    pub store_kind: &'static str,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Shared {
    pub fn content(&self) -> MutexGuard<'_, Content> {
        lock(&self.content)
    }

    pub fn leading(&self) -> bool {
        self.leading.load(Relaxed)
    }

    fn leader_info(&self) -> Option<LeaderInfo> {
        match &*lock(&self.lead) {
            Lead::Leading(_) => Some(self.me.clone()),
            Lead::Standby(l) => l.clone(),
        }
    }

    /// Runs `ops` on the store, fenced on this manager's lead; the revision written.
    fn fenced_write(&self, ops: Vec<TxnOp>) -> Result<i64, String> {
        let lead = match &*lock(&self.lead) {
            Lead::Leading(l) => l.clone(),
            Lead::Standby(_) => return Err("this manager no longer leads".into()),
        };
        let mut store = lock(&self.store);
        match lead.write(&mut **store, ops) {
            Ok(Ok(r)) => Ok(r.revision),
            Ok(Err(_)) => {
                drop(store);
                self.step_down("a fenced write found another leader");
                Err("this manager no longer leads".into())
            }
            Err(e) => Err(format!("the coordination store failed: {e}")),
        }
    }

    /// Writes a tombstone for `id` keeping `keep` (none: deleted) and applies it.
    pub fn write_tombstone(&self, id: &str, keep: Option<String>) -> Result<Tombstone, String> {
        let value =
            serde_json::to_vec(&TombRecord { keep: keep.clone() }).map_err(|e| e.to_string())?;
        let rev = self.fenced_write(vec![TxnOp::Put {
            key: format!("{TOMB_PREFIX}{id}").into_bytes(),
            value,
            lease: None,
        }])?;
        let t = Tombstone {
            id: id.to_string(),
            keep,
            rev,
        };
        self.content().add_tombstone(t.clone());
        self.metrics.tombstones_written.fetch_add(1, Relaxed);
        Ok(t)
    }

    fn step_down(&self, why: &str) {
        let mut lead = lock(&self.lead);
        if let Lead::Leading(_) = &*lead {
            *lead = Lead::Standby(None);
            self.leading.store(false, Relaxed);
            self.metrics.leadership_lost.fetch_add(1, Relaxed);
            tracing::warn!(why, "stepped down from the lead");
        }
    }

    fn note(&self, t: &Transition) {
        self.metrics.transition(t.to);
        tracing::info!(node = %t.node, from = t.from, to = t.to, why = t.why, "node state");
    }

    /// Takes the lead: loads members and tombstones from the store into a fresh content state.
    fn take_lead(&self, l: Leadership) -> Result<(), String> {
        let stored_zones = {
            let mut store = lock(&self.store);
            store
                .get(ZONES_KEY.as_bytes())
                .map_err(|e| e.to_string())?
                .map(|kv| String::from_utf8_lossy(&kv.value).to_string())
        };
        match (&self.zones_text, stored_zones) {
            (Some(mine), stored) if stored.as_deref() != Some(mine.as_str()) => {
                let ops = vec![TxnOp::Put {
                    key: ZONES_KEY.as_bytes().to_vec(),
                    value: mine.as_bytes().to_vec(),
                    lease: None,
                }];
                let mut store = lock(&self.store);
                match l.write(&mut **store, ops) {
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => return Err("lost the lead while writing the zones".into()),
                    Err(e) => return Err(e.to_string()),
                }
            }
            (None, Some(text)) => match zones_from_toml(&text) {
                Ok(z) => *lock(&self.zones) = z,
                Err(e) => {
                    tracing::warn!(error = %e, "the stored coverage zones do not parse; routing without zones")
                }
            },
            _ => {}
        }
        let (members, tombs) = {
            let mut store = lock(&self.store);
            let members = store
                .range(NODE_PREFIX.as_bytes())
                .map_err(|e| e.to_string())?;
            let tombs = store
                .range(TOMB_PREFIX.as_bytes())
                .map_err(|e| e.to_string())?;
            (members, tombs)
        };
        let mut c = Content::new(
            self.cfg.node_timeout,
            self.cfg.hold_down,
            (l.leader.since_revision as u64) << 24,
        );
        c.half_life = self.cfg.rate_half_life;
        for kv in members {
            let name = String::from_utf8_lossy(&kv.key[NODE_PREFIX.len()..]).to_string();
            if let Ok(m) = serde_json::from_slice::<MemberRecord>(&kv.value) {
                c.add_member(&name, m.access, m.peer);
            }
        }
        for kv in tombs {
            let id = String::from_utf8_lossy(&kv.key[TOMB_PREFIX.len()..]).to_string();
            if let Ok(t) = serde_json::from_slice::<TombRecord>(&kv.value) {
                c.add_tombstone(Tombstone {
                    id,
                    keep: t.keep,
                    rev: kv.mod_revision,
                });
            }
        }
        let n = c.nodes.len();
        let t = c.tombstone_count();
        *self.content() = c;
        let placer = reel_policy::placement::Placement::new(self.cfg.placement.clone())
            .map(|p| {
                let mut placer = crate::placement::Placer::new(p);
                let stored = lock(&self.store)
                    .range(POLICY_PREFIX.as_bytes())
                    .unwrap_or_default();
                for kv in stored {
                    let id = String::from_utf8_lossy(&kv.key[POLICY_PREFIX.len()..]).to_string();
                    if let Ok(o) = serde_json::from_slice(&kv.value) {
                        placer.overrides.insert(id, o);
                    }
                }
                placer
            })
            .map_err(|e| format!("placement settings: {e}"))?;
        *lock(&self.placer) = Some(placer);
        *lock(&self.warmup_until) = Instant::now() + self.cfg.warmup;
        *lock(&self.lead) = Lead::Leading(l);
        self.leading.store(true, Relaxed);
        self.metrics.leadership_won.fetch_add(1, Relaxed);
        tracing::info!(members = n, tombstones = t, "took the lead");
        Ok(())
    }

    fn warming_up(&self) -> bool {
        Instant::now() < *lock(&self.warmup_until)
    }
}

/// A running manager.
pub struct Manager {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    access: SocketAddr,
    peer: SocketAddr,
    leader_thread: Option<JoinHandle<()>>,
}

fn open_store(cfg: &ManagerConfig) -> Result<(Box<dyn CoordStore>, &'static str), String> {
    match StoreSpec::parse(&cfg.store)? {
        StoreSpec::Embedded => {
            let mut s = EmbeddedStore::open(&cfg.data_dir, Box::new(MonotonicClock::new()))
                .map_err(|e| {
                    format!(
                        "cannot open the embedded store in {}: {e}",
                        cfg.data_dir.display()
                    )
                })?;
            // The store's lock admits one process: a leader key left by an earlier one (killed
            // before its lease ran out) is dead, and this manager leads at once.
            s.delete(leader::LEADER_KEY)
                .map_err(|e| format!("cannot clear the old leader key: {e}"))?;
            Ok((Box::new(s), "embedded"))
        }
        StoreSpec::Etcd(eps) => {
            let s = EtcdStore::connect(&eps, Duration::from_secs(2))
                .map_err(|e| format!("{e} (is etcd running? see --store)"))?;
            Ok((Box::new(s), "etcd"))
        }
    }
}

fn bind(addr: SocketAddr, what: &str) -> Result<StdListener, String> {
    let l =
        StdListener::bind(addr).map_err(|e| format!("cannot listen on {addr} ({what}): {e}"))?;
    l.set_nonblocking(true)
        .map_err(|e| format!("cannot set {addr} non-blocking: {e}"))?;
    Ok(l)
}

impl Manager {
    /// Opens the store, binds both listeners and starts serving and campaigning.
    pub fn start(cfg: ManagerConfig) -> Result<Manager, String> {
        let token = ClusterToken::from_file(&cfg.cluster_token_file).map_err(|e| e.to_string())?;
        let (zones, zones_text) = match &cfg.config {
            Some(p) => {
                let (z, t) = read_zones(p)?;
                (z, Some(t))
            }
            None => (Zones::default(), None),
        };
        let access_l = bind(cfg.listen, "--listen")?;
        let peer_l = bind(cfg.peer_listen, "--peer-listen")?;
        let access = access_l.local_addr().map_err(|e| e.to_string())?;
        let peer = peer_l.local_addr().map_err(|e| e.to_string())?;
        let (store, store_kind) = open_store(&cfg)?;
        let me = LeaderInfo {
            name: cfg.name.clone().unwrap_or_else(|| peer.to_string()),
            access: cfg.advertise.unwrap_or(access),
            peer: cfg.peer_advertise.unwrap_or(peer),
        };
        let shared = Arc::new(Shared {
            content: Mutex::new(Content::new(cfg.node_timeout, cfg.hold_down, 0)),
            token,
            zones: Mutex::new(zones),
            zones_text,
            me,
            store: Mutex::new(store),
            lead: Mutex::new(Lead::Standby(None)),
            leading: AtomicBool::new(false),
            warmup_until: Mutex::new(Instant::now()),
            metrics: Metrics::default(),
            placer: Mutex::new(None),
            placing: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            store_kind,
            cfg,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("reel-manager")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        let (head_timeout, idle_timeout) = (shared.cfg.head_timeout, shared.cfg.idle_timeout);
        let opts = |body: BodyPolicy| ServeOptions {
            head_timeout,
            body_timeout: head_timeout.max(Duration::from_secs(30)),
            idle_timeout,
            body,
        };
        {
            let _g = runtime.enter();
            let a = tokio::net::TcpListener::from_std(access_l).map_err(|e| e.to_string())?;
            let p = tokio::net::TcpListener::from_std(peer_l).map_err(|e| e.to_string())?;
            runtime.spawn(serve(
                a,
                Arc::new(Access(shared.clone())),
                opts(BodyPolicy {
                    max: POLICY_BODY_MAX,
                    read_for_put: false,
                    put_path_suffix: Some("/policy"),
                }),
            ));
            runtime.spawn(serve(
                p,
                Arc::new(Peer(shared.clone())),
                opts(BodyPolicy {
                    max: PEER_BODY_MAX,
                    read_for_put: true,
                    put_path_suffix: None,
                }),
            ));
        }
        // The first campaign before `start` returns: a sole manager leads once it says it
        // listens (a standby keeps campaigning on its thread).
        let ttl = shared.cfg.leader_ttl.max(Duration::from_secs(1));
        campaign_once(&shared, &leader_id(&shared), ttl);
        let s = shared.clone();
        let leader_thread = std::thread::Builder::new()
            .name("reel-lead".into())
            .spawn(move || lead_loop(&s))
            .map_err(|e| e.to_string())?;
        Ok(Manager {
            shared,
            runtime: Some(runtime),
            access,
            peer,
            leader_thread: Some(leader_thread),
        })
    }

    pub fn access_addr(&self) -> SocketAddr {
        self.access
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops serving; a leader resigns so a standby takes over at once.
    pub fn shutdown(mut self) {
        self.shared.stop.store(true, Relaxed);
        if let Some(t) = self.leader_thread.take() {
            let _ = t.join();
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

/// The leader key's value for this manager.
fn leader_id(s: &Shared) -> Vec<u8> {
    serde_json::to_vec(&s.me).unwrap_or_default()
}

/// One campaign: takes the lead if the key is free; otherwise notes who leads. Whether this
/// manager leads now.
fn campaign_once(s: &Shared, id: &[u8], ttl: Duration) -> bool {
    let won = {
        let mut store = lock(&s.store);
        leader::campaign(&mut **store, id, ttl.as_secs().max(1) as i64)
    };
    match won {
        Ok(Ok(l)) => match s.take_lead(l) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not load the cluster state");
                false
            }
        },
        Ok(Err(other)) => {
            let info = serde_json::from_slice::<LeaderInfo>(&other.id).ok();
            *lock(&s.lead) = Lead::Standby(info);
            false
        }
        Err(e) => {
            tracing::debug!(error = %e, "campaign failed");
            false
        }
    }
}

/// Campaigns until leading, then renews the lease and expires silent nodes.
fn lead_loop(s: &Arc<Shared>) {
    let ttl = s.cfg.leader_ttl.max(Duration::from_secs(1));
    let tick = (ttl / 4).min(Duration::from_millis(250));
    let id = leader_id(s);
    let mut last_renew = Instant::now();
    let mut last_placement = Instant::now();
    while !s.stop.load(Relaxed) {
        let leading = matches!(&*lock(&s.lead), Lead::Leading(_));
        if !leading {
            if campaign_once(s, &id, ttl) {
                last_renew = Instant::now();
            }
        } else if last_renew.elapsed() >= ttl / 3 {
            let l = match &*lock(&s.lead) {
                Lead::Leading(l) => Some(l.clone()),
                Lead::Standby(_) => None,
            };
            if let Some(l) = l {
                let r = {
                    let mut store = lock(&s.store);
                    l.renew(&mut **store)
                };
                match r {
                    Ok(true) => last_renew = Instant::now(),
                    Ok(false) => s.step_down("the leader lease expired"),
                    Err(e) if last_renew.elapsed() >= ttl => {
                        s.step_down("the store was unreachable for the lease's life");
                        tracing::warn!(error = %e, "renew failed");
                    }
                    Err(_) => {}
                }
            }
        }
        if s.leading() {
            let transitions = s.content().expire(Instant::now());
            for t in &transitions {
                s.note(t);
            }
            let every = s.cfg.placement_interval;
            // On a thread of its own: its calls to nodes (up to their timeouts) must never
            // delay the lease's renewal. One step at a time.
            if !every.is_zero()
                && last_placement.elapsed() >= every
                && !s.placing.swap(true, Relaxed)
            {
                last_placement = Instant::now();
                let s2 = s.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("reel-place".into())
                        .spawn(move || {
                            place(&s2);
                            s2.placing.store(false, Relaxed);
                        });
                if spawned.is_err() {
                    s.placing.store(false, Relaxed);
                }
            }
        }
        std::thread::sleep(tick);
    }
    // Resign, so a standby need not wait for the lease.
    if let Lead::Leading(l) = std::mem::replace(&mut *lock(&s.lead), Lead::Standby(None)) {
        let mut store = lock(&s.store);
        let _ = l.resign(&mut **store);
    }
}

/// One placement step: the policy's decisions, carried out on the nodes (each call bounded by
/// a short timeout, all of them in parallel), their outcomes told back.
fn place(s: &Shared) {
    let actions = {
        let c = s.content();
        let mut p = lock(&s.placer);
        match p.as_mut() {
            Some(p) => p.tick(&c, Instant::now()),
            None => return,
        }
    };
    if actions.is_empty() {
        return;
    }
    let results: Vec<(crate::placement::Action, bool)> = std::thread::scope(|scope| {
        let calls: Vec<_> = actions
            .into_iter()
            .map(|a| {
                scope.spawn(move || {
                    let r = match &a {
                        crate::placement::Action::Pull {
                            id,
                            etag,
                            size,
                            to,
                            source,
                        } => sessions::order_pull(
                            &s.token,
                            to.1,
                            &reel_http::cluster::PullOrder {
                                id: id.clone(),
                                etag: etag.clone(),
                                size: *size,
                                source: source.1,
                                source_node: source.0.clone(),
                                tier: "primary".into(),
                            },
                        ),
                        crate::placement::Action::DropPrimary { id, node } => {
                            sessions::drop_primary(&s.token, node.1, id)
                        }
                    };
                    if let Err(e) = &r {
                        tracing::warn!(action = ?a, error = %e, "a placement call failed");
                    }
                    (a, r.is_ok())
                })
            })
            .collect();
        calls.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let c = s.content();
    if let Some(p) = lock(&s.placer).as_mut() {
        for (a, ok) in &results {
            match a {
                crate::placement::Action::Pull { .. } => {
                    s.metrics.placement_copies.fetch_add(1, Relaxed);
                }
                crate::placement::Action::DropPrimary { .. } => {
                    s.metrics.placement_drops.fetch_add(1, Relaxed);
                }
            }
            if !ok {
                s.metrics.placement_failures.fetch_add(1, Relaxed);
            }
            p.carried_out(&c, a, *ok, Instant::now());
        }
    }
}

/// Runs a blocking closure (store calls, calls to nodes) off the runtime's workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

fn asset_id(path: &str) -> Option<&str> {
    path.strip_prefix("/assets/")
}

fn bad_id(id: &str) -> Option<Response> {
    reel_id::validate_id(id)
        .err()
        .map(|e| Response::error(400, format!("bad asset id: {e}")))
}

/// The client listener.
struct Access(Arc<Shared>);

/// The inter-server listener.
struct Peer(Arc<Shared>);

impl Handler for Access {
    async fn handle(self: Arc<Self>, req: Request) -> Response {
        let s = &self.0;
        let path = req.path().to_string();
        match path.as_str() {
            "/healthz" => return Response::error(200, "ok"),
            "/metrics" => return metrics(s),
            _ => {}
        }
        if let Some(id) = asset_id(&path) {
            if let Some(r) = bad_id(id.strip_suffix("/locations").unwrap_or(id)) {
                return r;
            }
        }
        if !s.leading() {
            return standby(s, &req);
        }
        if path == "/cluster" {
            return only_get(&req).unwrap_or_else(|| cluster_view(s));
        }
        let Some(id) = asset_id(&path) else {
            return Response::error(404, "not found: the manager serves /assets/{id}, /assets/{id}/locations, /cluster, /metrics and /healthz");
        };
        if let Some(id) = id.strip_suffix("/policy") {
            if let Some(r) = bad_id(id) {
                return r;
            }
            return asset_policy(s.clone(), &req, id.to_string()).await;
        }
        if let Some(id) = id.strip_suffix("/locations") {
            if let Some(r) = bad_id(id) {
                return r;
            }
            return only_get(&req).unwrap_or_else(|| locations(s, id));
        }
        if let Some(r) = bad_id(id) {
            return r;
        }
        let id = id.to_string();
        match req.method() {
            Method::Get | Method::Head => route_stream(s, &req, &id).await,
            Method::Put => ingest(s, &req, &id),
            Method::Delete => delete(s.clone(), &req, id).await,
        }
    }
}

fn only_get(req: &Request) -> Option<Response> {
    (!matches!(req.method(), Method::Get | Method::Head)).then(|| {
        Response::error(405, "method not allowed here; allowed: GET, HEAD")
            .header("Allow", "GET, HEAD")
    })
}

fn standby(s: &Shared, req: &Request) -> Response {
    match s.leader_info() {
        Some(l) if l != s.me => {
            s.metrics.standby_redirects.fetch_add(1, Relaxed);
            Response::error(
                307,
                format!("this manager is a standby; the leader is {}", l.name),
            )
            .header("Location", format!("http://{}{}", l.access, req.target()))
            .header("Reel-Route", format!("standby leader={}", l.name))
        }
        _ => Response::error(503, "no manager leads the cluster yet; retry in a second")
            .header("Retry-After", "1"),
    }
}

fn check_token(s: &Shared, req: &Request, what: &str) -> Option<Response> {
    match s.token.check(&req.head, &req.buf, what) {
        Ok(()) => None,
        Err(e) => {
            s.metrics.unauthorized.fetch_add(1, Relaxed);
            Some(Response::error(e.status().0, e.to_string()))
        }
    }
}

async fn route_stream(s: &Arc<Shared>, req: &Request, id: &str) -> Response {
    let local = match req.query("near") {
        Some(n) => match s.content().node(n) {
            Some(i) => Some(i),
            None => {
                return Response::error(400, format!("?near={n} names no node of this cluster"))
            }
        },
        None => {
            let zone = lock(&s.zones).node_of(req.client.ip()).map(str::to_string);
            zone.and_then(|n| s.content().node(&n))
        }
    };
    loop {
        let t0 = Instant::now();
        let routed = {
            let c = s.content();
            match routing::decide(&c, id, local) {
                Some(d) => {
                    let node = &c.nodes[d.node as usize];
                    let source = d.source.map(|i| &c.nodes[i as usize]);
                    Ok((
                        d,
                        node.name.clone(),
                        node.access,
                        source.map(|n| (n.name.clone(), n.peer)),
                    ))
                }
                None => Err((
                    c.members_pending(),
                    c.all_copies(id),
                    c.tombstone(id).cloned(),
                )),
            }
        };
        s.metrics.decisions.fetch_add(1, Relaxed);
        s.metrics
            .decision_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
        match routed {
            Ok((d, name, access, source)) => {
                s.metrics.route(d.reason);
                let mut location = format!("http://{access}/assets/{id}");
                let mut why = format!("{} node={name}", d.reason.name());
                if let Some((src, peer)) = source {
                    let t = Ticket {
                        kind: TicketKind::Relay,
                        node: name.clone(),
                        expires_unix_s: now_unix_s() + s.cfg.ticket_ttl.as_secs(),
                        source: Some(peer),
                        source_node: Some(src.clone()),
                        etag: Some(d.copy.version.etag()),
                    };
                    location.push_str("?ticket=");
                    location.push_str(&t.encode(&s.token, id));
                    why.push_str(&format!(" source={src}"));
                }
                tracing::debug!(id, route = %why, "routed");
                return Response::error(307, &why)
                    .header("Location", location)
                    .header("Reel-Route", why)
                    .header("Cache-Control", "no-store");
            }
            Err((pending, copies, tomb)) => {
                let deleted = tomb.is_some_and(|t| t.keep.is_none());
                // A restarted (or new) leader waits for members' first reports rather than
                // answering "not found" for an asset a live node holds; a deleted one is known.
                if pending && !deleted && s.warming_up() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                if !copies.is_empty() && !deleted {
                    s.metrics.unavailable.fetch_add(1, Relaxed);
                    let c = s.content();
                    let names: Vec<&str> = copies
                        .iter()
                        .map(|cp| c.nodes[cp.node as usize].name.as_str())
                        .collect();
                    return Response::error(
                        503,
                        format!(
                            "every node holding {id} is out of routing now ({})",
                            names.join(", ")
                        ),
                    )
                    .header("Retry-After", "1")
                    .header("Reel-Route", "unavailable");
                }
                s.metrics.not_found.fetch_add(1, Relaxed);
                return Response::error(404, format!("no live node holds {id}"))
                    .header("Reel-Route", "not-found");
            }
        }
    }
}

fn ingest(s: &Arc<Shared>, req: &Request, id: &str) -> Response {
    if let Some(r) = check_token(s, req, "uploads through the manager") {
        return r.closing();
    }
    let size = match req.head.body {
        BodyFraming::Length(n) => Some(n),
        _ => None,
    };
    let c = s.content();
    let Some(n) = routing::ingest_node(&c, size) else {
        return Response::error(
            507,
            match size {
                Some(n) => format!("no live node has room for {n} bytes"),
                None => "no live node can take an upload".into(),
            },
        )
        .closing();
    };
    let node = &c.nodes[n as usize];
    let t = Ticket {
        kind: TicketKind::Put,
        node: node.name.clone(),
        expires_unix_s: now_unix_s() + s.cfg.ticket_ttl.as_secs(),
        source: None,
        source_node: None,
        etag: None,
    };
    s.metrics.ingest_redirects.fetch_add(1, Relaxed);
    let why = format!("ingest node={}", node.name);
    Response::error(307, &why)
        .header(
            "Location",
            format!(
                "http://{}/assets/{id}?ticket={}",
                node.access,
                t.encode(&s.token, id)
            ),
        )
        .header("Reel-Route", why)
        .closing()
}

async fn delete(s: Arc<Shared>, req: &Request, id: String) -> Response {
    if let Some(r) = check_token(&s, req, "deletes through the manager") {
        return r;
    }
    let (copies, known) = {
        let c = s.content();
        let copies = c.all_copies(&id);
        let live_tomb = c.tombstone(&id).is_some_and(|t| t.keep.is_some());
        let known = !copies.is_empty() || live_tomb || c.members_pending();
        let targets: Vec<(String, SocketAddr)> = copies
            .iter()
            .filter(|cp| c.nodes[cp.node as usize].liveness != Liveness::Down)
            .map(|cp| {
                let n = &c.nodes[cp.node as usize];
                (n.name.clone(), n.peer)
            })
            .collect();
        (targets, known)
    };
    if !known {
        return Response::error(404, format!("no node holds {id}"));
    }
    let s2 = s.clone();
    let id2 = id.clone();
    let written = blocking(move || s2.write_tombstone(&id2, None)).await;
    match written {
        Some(Ok(_)) => {}
        Some(Err(e)) => return Response::error(503, format!("the delete was not recorded: {e}")),
        None => return Response::error(500, "the delete was not recorded"),
    }
    s.metrics.deletes.fetch_add(1, Relaxed);
    let token = s.token.clone();
    let failed = blocking(move || sessions::delete_copies(&token, &id, &copies))
        .await
        .unwrap_or_default();
    s.metrics
        .delete_fanout_failures
        .fetch_add(failed.len() as u64, Relaxed);
    let mut r = Response::new(204);
    if !failed.is_empty() {
        r = r.header("Reel-Pending", failed.join(","));
    }
    r
}

/// `GET|PUT /assets/{id}/policy`: the asset's placement overrides (`min_copies`,
/// `max_primary_copies`, `pin_nodes`), stored in the coordination store; PUT needs the token.
async fn asset_policy(s: Arc<Shared>, req: &Request, id: String) -> Response {
    match req.method() {
        Method::Get | Method::Head => {
            let o = lock(&s.placer)
                .as_ref()
                .and_then(|p| p.overrides.get(&id).cloned())
                .unwrap_or_default();
            let mut body = serde_json::to_vec(&o).unwrap_or_default();
            body.push(b'\n');
            Response::json(200, body)
        }
        Method::Put => {
            if let Some(r) = check_token(&s, req, "placement policies") {
                return r;
            }
            let o: reel_policy::placement::AssetPlacement = match serde_json::from_slice(&req.body)
            {
                Ok(o) => o,
                Err(e) => return Response::error(400, format!("bad placement policy: {e}")),
            };
            if let Err(e) = o.validate() {
                return Response::error(400, format!("bad placement policy: {e}"));
            }
            let value = serde_json::to_vec(&o).unwrap_or_default();
            let key = format!("{POLICY_PREFIX}{id}").into_bytes();
            let s2 = s.clone();
            match blocking(move || {
                s2.fenced_write(vec![TxnOp::Put {
                    key,
                    value,
                    lease: None,
                }])
            })
            .await
            {
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    return Response::error(503, format!("the policy was not recorded: {e}"))
                }
                None => return Response::error(500, "the policy was not recorded"),
            }
            if let Some(p) = lock(&s.placer).as_mut() {
                p.overrides.insert(id, o.clone());
            }
            let mut body = serde_json::to_vec(&o).unwrap_or_default();
            body.push(b'\n');
            Response::json(200, body)
        }
        Method::Delete => Response::error(405, "method not allowed here; allowed: GET, HEAD, PUT")
            .header("Allow", "GET, HEAD, PUT"),
    }
}

#[derive(Serialize)]
struct CopyView<'a> {
    node: &'a str,
    access: SocketAddr,
    state: &'static str,
    tiers: Vec<&'static str>,
    etag: String,
    current: bool,
}

#[derive(Serialize)]
struct LocationsView<'a> {
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tombstone: Option<Tombstone>,
    /// The cluster-wide rate, views per hour.
    views_per_h: f32,
    copies: Vec<CopyView<'a>>,
    /// Nodes whose clients asked for it while lacking it (relayed), views per hour.
    demand: Vec<DemandView<'a>>,
}

#[derive(Serialize)]
struct DemandView<'a> {
    node: &'a str,
    views_per_h: f32,
}

fn tier_names(bits: u8) -> Vec<&'static str> {
    let mut v = Vec::new();
    if bits & PRIMARY != 0 {
        v.push("primary");
    }
    if bits & SECONDARY != 0 {
        v.push("secondary");
    }
    v
}

fn locations(s: &Shared, id: &str) -> Response {
    let c = s.content();
    let live = c.live_copies(id);
    let current = c.assets.get(id).and_then(|e| e.current).map(|v| v.etag());
    let copies = c
        .all_copies(id)
        .iter()
        .map(|cp| {
            let n = &c.nodes[cp.node as usize];
            CopyView {
                node: &n.name,
                access: n.access,
                state: n.liveness.name(),
                tiers: tier_names(cp.tiers),
                etag: cp.version.etag(),
                current: live.contains(cp),
            }
        })
        .collect();
    let (now_s, hl) = (c.seconds(Instant::now()), c.half_life.as_secs_f32());
    let entry = c.assets.get(id);
    let demand = entry
        .map(|e| {
            e.rates
                .iter()
                .map(|r| DemandView {
                    node: &c.nodes[r.node as usize].name,
                    views_per_h: e.demand(r.node, now_s, hl),
                })
                .filter(|d| d.views_per_h > 0.0)
                .collect()
        })
        .unwrap_or_default();
    let v = LocationsView {
        id,
        current,
        tombstone: c.tombstone(id).cloned(),
        views_per_h: entry.map_or(0.0, |e| e.cluster_rate(now_s, hl)),
        copies,
        demand,
    };
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    Response::json(200, body)
}

#[derive(Serialize)]
struct NodeView<'a> {
    name: &'a str,
    access: SocketAddr,
    peer: SocketAddr,
    state: &'static str,
    routable: bool,
    last_report_ms: Option<u64>,
    holdings: u64,
    tiers: &'a [reel_http::cluster::TierFill],
    load: &'a reel_http::cluster::Load,
}

#[derive(Serialize)]
struct HotView<'a> {
    id: &'a str,
    views_per_h: f32,
    copies: usize,
}

#[derive(Serialize)]
struct ClusterView<'a> {
    manager: &'a str,
    leader: bool,
    store: &'static str,
    nodes: Vec<NodeView<'a>>,
    assets: usize,
    tombstones: usize,
    hottest: Vec<HotView<'a>>,
}

fn cluster_view(s: &Shared) -> Response {
    let c = s.content();
    let now = Instant::now();
    let nodes = c
        .nodes
        .iter()
        .map(|n| NodeView {
            name: &n.name,
            access: n.access,
            peer: n.peer,
            state: n.liveness.name(),
            routable: n.routable(),
            last_report_ms: n
                .last_report
                .map(|t| now.saturating_duration_since(t).as_millis() as u64),
            holdings: n.holdings,
            tiers: &n.tiers,
            load: &n.load,
        })
        .collect();
    let (now_s, hl) = (c.seconds(now), c.half_life.as_secs_f32());
    let mut hot: Vec<HotView> = c
        .assets
        .iter()
        .map(|(id, e)| HotView {
            id,
            views_per_h: e.cluster_rate(now_s, hl),
            copies: e.copies.len(),
        })
        .filter(|h| h.views_per_h > 0.0)
        .collect();
    hot.sort_by(|a, b| b.views_per_h.total_cmp(&a.views_per_h).then(a.id.cmp(b.id)));
    hot.truncate(20);
    let v = ClusterView {
        manager: &s.me.name,
        leader: s.leading(),
        store: s.store_kind,
        nodes,
        assets: c.assets.len(),
        tombstones: c.tombstone_count(),
        hottest: hot,
    };
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    Response::json(200, body)
}

fn metrics(s: &Shared) -> Response {
    let mut gauges = Vec::new();
    gauges.push((
        "reel_manager_leader",
        "1 while this manager leads.",
        String::new(),
        f64::from(u8::from(s.leading())),
    ));
    {
        let c = s.content();
        let now = Instant::now();
        gauges.push((
            "reel_manager_inventory_assets",
            "Assets in the inventory.",
            String::new(),
            c.assets.len() as f64,
        ));
        gauges.push((
            "reel_manager_tombstones",
            "Tombstones (deleted or overwritten assets).",
            String::new(),
            c.tombstone_count() as f64,
        ));
        for n in &c.nodes {
            gauges.push((
                "reel_manager_node_up",
                "1 while the node is in routing.",
                format!("node=\"{}\"", n.name),
                f64::from(u8::from(n.routable())),
            ));
        }
        for n in &c.nodes {
            gauges.push((
                "reel_manager_report_lag_seconds",
                "Time since the node's last report.",
                format!("node=\"{}\"", n.name),
                n.last_report.map_or(f64::INFINITY, |t| {
                    now.saturating_duration_since(t).as_secs_f64()
                }),
            ));
        }
    }
    let mut r = Response::new(200);
    r.content_type = "text/plain; version=0.0.4";
    r.body = s.metrics.render(&gauges).into_bytes();
    r
}

impl Handler for Peer {
    async fn handle(self: Arc<Self>, req: Request) -> Response {
        let s = &self.0;
        if let Some(r) = check_token(s, &req, "requests on the inter-server network") {
            return r;
        }
        let path = req.path().to_string();
        if path == "/healthz" {
            return Response::error(200, "ok");
        }
        if !s.leading() {
            let r =
                Response::error(503, "this manager is not the leader").header("Retry-After", "1");
            return match s.leader_info() {
                Some(l) if l != s.me => r.header("Reel-Leader", format!("http://{}", l.peer)),
                _ => r,
            };
        }
        if req.method() != Method::Put {
            return Response::error(405, "method not allowed here; allowed: PUT")
                .header("Allow", "PUT");
        }
        match path.as_str() {
            "/v1/register" => register(s.clone(), &req).await,
            "/v1/report" => report(s, &req),
            "/v1/published" => published(s.clone(), &req).await,
            _ => Response::error(
                404,
                "not found: the inter-server API is /v1/register, /v1/report, /v1/published",
            ),
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(req: &Request, what: &str) -> Result<T, Response> {
    serde_json::from_slice(&req.body)
        .map_err(|e| Response::error(400, format!("bad {what} body: {e}")))
}

async fn register(s: Arc<Shared>, req: &Request) -> Response {
    let r: Register = match parse(req, "register") {
        Ok(r) => r,
        Err(e) => return e,
    };
    if !valid_node_name(&r.node) {
        return Response::error(
            400,
            format!("node name {:?} is not [A-Za-z0-9_-]{{1,64}}", r.node),
        );
    }
    let changed = {
        let c = s.content();
        c.node(&r.node).is_none_or(|i| {
            let n = &c.nodes[i as usize];
            n.access != r.access || n.peer != r.peer
        })
    };
    if changed {
        let value = serde_json::to_vec(&MemberRecord {
            access: r.access,
            peer: r.peer,
        })
        .unwrap_or_default();
        let key = format!("{NODE_PREFIX}{}", r.node).into_bytes();
        let s2 = s.clone();
        match blocking(move || {
            s2.fenced_write(vec![TxnOp::Put {
                key,
                value,
                lease: None,
            }])
        })
        .await
        {
            Some(Ok(_)) => {}
            Some(Err(e)) => return Response::error(503, format!("registration not recorded: {e}")),
            None => return Response::error(500, "registration not recorded"),
        }
    }
    let (session, tombstones) = s.content().register(&r, Instant::now());
    s.metrics.registrations.fetch_add(1, Relaxed);
    tracing::info!(node = %r.node, access = %r.access, peer = %r.peer, "node registered");
    let body = serde_json::to_vec(&Registered {
        session,
        report_ms: s.cfg.report_interval.as_millis() as u64,
        tombstones,
    })
    .unwrap_or_default();
    Response::json(200, body)
}

fn report(s: &Shared, req: &Request) -> Response {
    let r: Report = match parse(req, "report") {
        Ok(r) => r,
        Err(e) => return e,
    };
    let out = s.content().report(r, Instant::now());
    match out {
        Err(_) => Response::error(409, "unknown node or session: register again"),
        Ok((tombstones, resync, transition)) => {
            s.metrics.reports.fetch_add(1, Relaxed);
            if let Some(t) = transition {
                s.note(&t);
            }
            let body = serde_json::to_vec(&ReportAck { resync, tombstones }).unwrap_or_default();
            Response::json(200, body)
        }
    }
}

async fn published(s: Arc<Shared>, req: &Request) -> Response {
    let p: Published = match parse(req, "published") {
        Ok(p) => p,
        Err(e) => return e,
    };
    if let Err(e) = reel_id::validate_id(&p.id) {
        return Response::error(400, format!("bad asset id: {e}"));
    }
    let Some(v) = Version::parse(&p.etag) else {
        return Response::error(400, format!("etag {:?} is not a node's etag", p.etag));
    };
    let tiers = match p.tier.as_str() {
        "primary" => PRIMARY,
        "secondary" => SECONDARY,
        t => return Response::error(400, format!("tier {t:?} is neither primary nor secondary")),
    };
    let (node, needs) = {
        let c = s.content();
        match c.node(&p.node) {
            Some(n) if c.nodes[n as usize].session != 0 => (n, c.publish_needs_tombstone(&p.id, v)),
            _ => return Response::error(409, "unknown node or session: register again"),
        }
    };
    if needs {
        let s2 = s.clone();
        let (id, etag) = (p.id.clone(), p.etag.clone());
        match blocking(move || s2.write_tombstone(&id, Some(etag))).await {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                return Response::error(503, format!("the version was not recorded: {e}"))
            }
            None => return Response::error(500, "the version was not recorded"),
        }
    }
    let rev = {
        let mut c = s.content();
        c.published(node, &p.id, v, tiers);
        c.tombstone(&p.id).map_or(0, |t| t.rev)
    };
    s.metrics.published.fetch_add(1, Relaxed);
    Response::json(
        200,
        serde_json::to_vec(&PublishedAck { rev }).unwrap_or_default(),
    )
}
