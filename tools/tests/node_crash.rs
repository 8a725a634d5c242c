//! Crash safety of tier migration: `kill -9` of a two-tier `reel node` in the middle of
//! promotions, write-backs, demotions and evictions.
//!
//! One test, [`migration_survives_kill_9_during_copies_flips_and_evictions`], runs R rounds
//! (`REEL_MIGRATION_CRASH_ROUNDS`, default 15; seed from `REEL_MIGRATION_CRASH_SEED`, else the
//! clock, printed) on a small primary (64 MiB, so uploads evict clean copies under pressure) and a
//! larger secondary (512 MiB), with a scheduler tuned to move things within seconds. Each round:
//!
//! 1. a writer thread PUTs (1–6 MiB, new ids and overwrites of live ones, some of them hot) and
//!    DELETEs, one request at a time, keeping a model of what was acknowledged (201 / 204); a
//!    loader thread GETs a rotating hot set, so assets are promoted, written back, demoted and
//!    evicted; every GET must be a version that was current or newer when it started;
//! 2. the node is SIGKILLed, either at the first moment `/info` shows a copy in flight
//!    (`promoting` / `writing_back`) or a drop (`dropping`), or at a random moment;
//! 3. the node restarts on the same two volumes: the one request in flight at the kill is
//!    resolved (either outcome is allowed), then every acknowledged asset must GET byte-exact
//!    with its ETag, every other id 404, `/assets` lists exactly the model, and `/info` of each
//!    asset names a consistent placement;
//! 4. in some rounds `reel inspect --json` checks both volumes, right after the kill (the state
//!    recovery finds) or after a clean SIGTERM stop: space accounting adds up, extents are in
//!    range, disjoint and exactly the blocks the assets need (no leaked extent), and each tier's
//!    asset list agrees with the model (the primary holds the current version, or else the
//!    secondary does; nothing deleted or never acknowledged is on either).
//!
//! After the last round the scheduler must resume: a new upload is written back, every dirty
//! asset reaches the secondary, and a secondary-only asset that is hammered is promoted.
//!
//! The test skips, saying why, when io_uring is unavailable or `kill` is missing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use reel_http::client::{ClientError, Response};
use reel_testkit::content::{content, matches, splitmix};
use reel_testkit::metrics::metric_sum;
use reel_testkit::node::{NodeArgs, NodeProc};
use reel_testkit::{http, path_str, probe, text, Reel};

const REEL: Reel = reel_testkit::reel!();
const MIB: usize = 1 << 20;

/// Flags of every node in this file: two shards, a scheduler that acts within seconds (2 s
/// half-life, promote above 10,000 views/h ≈ 3 views/s, demote below 5,000, 1 s residency) and
/// a 64 MiB/s copy budget, so a copy of a few MiB takes 20–100 ms: long enough for the monitor's
/// ~25 ms polls to see it in flight, short enough that write-backs keep up with the uploads.
const NODE_FLAGS: &[&str] = &[
    "--shards",
    "2",
    "--rate-half-life",
    "2s",
    "--promote-per-h",
    "10000",
    "--demote-per-h",
    "5000",
    "--min-residency",
    "1s",
    "--copy-budget",
    "64M",
    // Group commits of finished copies every 300 ms instead of 5 s, so kills land before,
    // during and after commits alike.
    "--migration-commit-interval",
    "300ms",
    "--migration-commit-settle",
    "1ms",
];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Randomness and content

/// xorshift64*: the test's only source of randomness (seeded, no dependency).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `lo..=hi` milliseconds.
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        v.get(self.below(v.len() as u64) as usize)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP: one request per connection

/// One request on a fresh connection. A PUT sends `Expect: 100-continue` and its body only after
/// the interim response, so a refusal (507) is read cleanly instead of racing a reset.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<Response, ClientError> {
    match body {
        Some(b) => http::put_expecting_continue(addr, path, b),
        None => http::request(addr, method, path, &[("Connection", "close")], None),
    }
}

/// The migration counters of one node process.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Counters {
    promotions: u64,
    write_backs: u64,
    demotions: u64,
    evictions: u64,
    failures: u64,
}

impl Counters {
    fn of(metrics: &str) -> Counters {
        Counters {
            promotions: metric_sum(metrics, "reel_promotions_total"),
            write_backs: metric_sum(metrics, "reel_write_backs_total"),
            demotions: metric_sum(metrics, "reel_demotions_total"),
            evictions: metric_sum(metrics, "reel_evictions_total"),
            failures: metric_sum(metrics, "reel_migration_failures_total"),
        }
    }

    fn add(&mut self, o: Counters) {
        self.promotions += o.promotions;
        self.write_backs += o.write_backs;
        self.demotions += o.demotions;
        self.evictions += o.evictions;
        self.failures += o.failures;
    }

    fn copies(&self) -> u64 {
        self.promotions + self.write_backs
    }

    fn drops(&self) -> u64 {
        self.demotions + self.evictions
    }
}

// ---------------------------------------------------------------------------------------------
// The node process

/// Starts the first `reel node` of the test on the two volumes; stderr files in `dir`.
fn start(dir: &Path, primary: &Path, secondary: &Path) -> NodeProc {
    let args = NodeArgs::new(primary)
        .secondary(secondary)
        .flags(NODE_FLAGS);
    NodeProc::spawn(&REEL, dir, args)
}

/// GET/PUT/DELETE against the node; a transport error fails the test (the node must be up).
fn req(node: &NodeProc, method: &str, path: &str) -> Response {
    node.request(method, path, &[("Connection", "close")], None)
}

fn counters(node: &NodeProc) -> Counters {
    Counters::of(&node.metrics().0)
}

/// `/assets/{id}/info` as (tiers, residence), or `None` on 404.
fn info(node: &NodeProc, id: &str) -> Option<(Vec<String>, String, serde_json::Value)> {
    let v = node.info(id)?;
    let tiers = http::names(&v, "tiers");
    let residence = v["residence"].as_str().unwrap_or("(none)").to_string();
    Some((tiers, residence, v))
}

// ---------------------------------------------------------------------------------------------
// The model of what the node acknowledged

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum VState {
    /// Sent, not answered (yet).
    Pending,
    /// Answered 201.
    Acked,
    /// Refused (507/503), or found not to have landed after a kill.
    Failed,
}

#[derive(Clone, Debug)]
struct Version {
    seed: u64,
    size: usize,
    /// The ETag of the 201 (`"crc32c-sizehex"`).
    etag: Option<String>,
    state: VState,
}

impl Version {
    /// The crc32c the volume records, from the ETag.
    fn checksum(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .map(|e| e.trim_matches('"'))
            .and_then(|e| e.split('-').next())
    }
}

#[derive(Default, Debug)]
struct Entry {
    /// Every version ever sent, in order (the writer sends one at a time).
    versions: Vec<Version>,
    /// The acknowledged current version; `None` before the first 201 or after a 204.
    current: Option<usize>,
    /// A DELETE was sent (acknowledged or not).
    delete_issued: bool,
    /// A DELETE was acknowledged: the id must stay gone (ids are never reused after one).
    deleted: bool,
}

#[derive(Clone, Debug)]
enum Op {
    Put { id: String, ver: usize },
    Delete { id: String },
}

#[derive(Default)]
struct Model {
    entries: BTreeMap<String, Entry>,
    /// The request in flight (at a kill: its outcome is unknown until the restart).
    pending: Option<Op>,
    next_id: u64,
    puts_acked: u64,
    puts_refused: u64,
    deletes_acked: u64,
}

impl Model {
    fn live(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(_, e)| e.current.is_some())
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn current(&self, id: &str) -> Option<&Version> {
        let e = self.entries.get(id)?;
        e.versions.get(e.current?)
    }

    fn live_bytes(&self) -> usize {
        self.live()
            .iter()
            .filter_map(|id| self.current(id))
            .map(|v| v.size)
            .sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Load: the writer and the loader

/// PUTs and DELETEs, one at a time, until `stop` or the kill. `Err` on anything a live node must
/// not do.
fn writer(
    addr: SocketAddr,
    model: &Mutex<Model>,
    hot: &Mutex<Vec<String>>,
    seed: u64,
    killed: &AtomicBool,
    stop: &AtomicBool,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    while !stop.load(SeqCst) && !killed.load(SeqCst) {
        let op = {
            let mut m = lock(model);
            let live = m.live();
            let roll = rng.below(100);
            let op = if live.len() < 20 || (live.len() <= 32 && roll < 45) {
                let id = format!("m/{:05}", m.next_id);
                m.next_id += 1;
                Op::Put { id, ver: 0 }
            } else if live.len() <= 32 && roll < 65 {
                // An overwrite, half of the time of a hot asset (racing its promotion).
                let hot_now = lock(hot).clone();
                let id = if rng.below(2) == 0 && !hot_now.is_empty() {
                    rng.pick(&hot_now).cloned()
                } else {
                    None
                }
                .filter(|id| m.current(id).is_some())
                .or_else(|| rng.pick(&live).cloned())
                .expect("a live id");
                Op::Put { id, ver: 0 }
            } else {
                Op::Delete {
                    id: rng.pick(&live).cloned().expect("a live id"),
                }
            };
            let op = match op {
                Op::Put { id, .. } => {
                    let size = MIB + rng.below(5 * MIB as u64 + 1) as usize;
                    let e = m.entries.entry(id.clone()).or_default();
                    e.versions.push(Version {
                        seed: rng.next(),
                        size,
                        etag: None,
                        state: VState::Pending,
                    });
                    Op::Put {
                        id,
                        ver: e.versions.len() - 1,
                    }
                }
                Op::Delete { id } => {
                    if let Some(e) = m.entries.get_mut(&id) {
                        e.delete_issued = true;
                    }
                    Op::Delete { id }
                }
            };
            m.pending = Some(op.clone());
            op
        };
        match &op {
            Op::Put { id, ver } => {
                let (seed, size) = {
                    let m = lock(model);
                    let v = &m.entries[id].versions[*ver];
                    (v.seed, v.size)
                };
                let body = content(seed, size);
                let res = request(addr, "PUT", &format!("/assets/{id}"), Some(&body));
                let mut m = lock(model);
                match res {
                    Ok(r) if r.status() == 201 => {
                        let etag = r
                            .header("etag")
                            .ok_or_else(|| format!("PUT {id}: 201 without an ETag"))?
                            .to_string();
                        let e = m.entries.get_mut(id).expect("entry of a sent PUT");
                        e.versions[*ver].state = VState::Acked;
                        e.versions[*ver].etag = Some(etag);
                        e.current = Some(*ver);
                        m.puts_acked += 1;
                        m.pending = None;
                    }
                    Ok(r) if r.status() == 507 || r.status() == 503 => {
                        let e = m.entries.get_mut(id).expect("entry of a sent PUT");
                        e.versions[*ver].state = VState::Failed;
                        m.puts_refused += 1;
                        m.pending = None;
                    }
                    Ok(r) => {
                        return Err(format!(
                            "PUT {id} ({size} B): {} {}",
                            r.status(),
                            text(&r.body)
                        ))
                    }
                    Err(_) if killed.load(SeqCst) => return Ok(()),
                    Err(e) => return Err(format!("PUT {id} failed while the node was up: {e}")),
                }
            }
            Op::Delete { id } => {
                let res = request(addr, "DELETE", &format!("/assets/{id}"), None);
                let mut m = lock(model);
                match res {
                    Ok(r) if r.status() == 204 => {
                        let e = m.entries.get_mut(id).expect("entry of a sent DELETE");
                        e.current = None;
                        e.deleted = true;
                        m.deletes_acked += 1;
                        m.pending = None;
                    }
                    Ok(r) => {
                        return Err(format!(
                            "DELETE {id} of an acknowledged asset: {} {}",
                            r.status(),
                            text(&r.body)
                        ))
                    }
                    Err(_) if killed.load(SeqCst) => return Ok(()),
                    Err(e) => return Err(format!("DELETE {id} failed while the node was up: {e}")),
                }
            }
        }
        // Paced below the copy budget, so write-backs keep up and the primary rarely fills
        // with dirty copies only.
        let pause = Instant::now() + rng.ms(150, 400);
        while Instant::now() < pause && !stop.load(SeqCst) && !killed.load(SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// GETs the hot set round-robin until `stop` or the kill; each 200 must be a version that was
/// current (or newer) when the GET started, each 404 an id a DELETE was sent for. Returns the
/// number of GETs.
fn loader(
    addr: SocketAddr,
    model: &Mutex<Model>,
    hot: &Mutex<Vec<String>>,
    killed: &AtomicBool,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let mut n = 0u64;
    while !stop.load(SeqCst) && !killed.load(SeqCst) {
        let id = {
            let h = lock(hot);
            h.get(n as usize % h.len().max(1)).cloned()
        };
        let Some(id) = id else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        n += 1;
        let (floor, gone_at_start) = {
            let m = lock(model);
            let e = m.entries.get(&id);
            (
                e.and_then(|e| e.current).unwrap_or(0),
                e.is_some_and(|e| e.deleted),
            )
        };
        let r = match request(addr, "GET", &format!("/assets/{id}"), None) {
            Ok(r) => r,
            Err(_) if killed.load(SeqCst) => break,
            Err(e) => return Err(format!("GET {id} failed while the node was up: {e}")),
        };
        let m = lock(model);
        let Some(e) = m.entries.get(&id) else {
            return Err(format!("GET {id}: not in the model"));
        };
        match r.status() {
            200 => {
                if gone_at_start {
                    return Err(format!(
                        "GET {id}: 200 after its DELETE was acknowledged (resurrected)"
                    ));
                }
                let ok = e.versions.iter().enumerate().any(|(i, v)| {
                    i >= floor && v.state != VState::Failed && matches(v.seed, v.size, &r.body)
                });
                if !ok {
                    let old = e
                        .versions
                        .iter()
                        .position(|v| matches(v.seed, v.size, &r.body));
                    let etags: Vec<_> = e.versions.iter().map(|v| v.etag.clone()).collect();
                    let states: Vec<_> = e.versions.iter().map(|v| v.state).collect();
                    drop(m);
                    // Where the node has it now, and what it has been doing.
                    let info = request(addr, "GET", &format!("/assets/{id}/info"), None)
                        .map(|r| text(&r.body))
                        .unwrap_or_else(|e| e.to_string());
                    let metrics = request(addr, "GET", "/metrics", None)
                        .map(|r| Counters::of(&text(&r.body)))
                        .unwrap_or_default();
                    return Err(format!(
                        "GET {id} under load: {} bytes that are no version current or newer \
                         when the GET started: an acknowledged overwrite was lost or is not \
                         served (current was version {floor} of {}; the body is version \
                         {old:?}; states {states:?}; ETags {etags:?}); now /info: {info}; \
                         counters {metrics:?}",
                        r.body.len(),
                        etags.len(),
                    ));
                }
            }
            404 if e.delete_issued => {}
            s => return Err(format!("GET {id} under load: {s} {}", text(&r.body))),
        }
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Checks after a restart

/// Whether a `/info` placement is consistent: its tiers name a real placement and the policy's
/// residence agrees (allowing a decision that just published and is not reported finished).
fn placement_ok(tiers: &[String], residence: &str) -> bool {
    let t: Vec<&str> = tiers.iter().map(String::as_str).collect();
    match t.as_slice() {
        ["primary"] => matches!(residence, "dirty" | "writing_back"),
        ["primary", "secondary"] => {
            matches!(
                residence,
                "clean" | "dropping" | "writing_back" | "promoting"
            )
        }
        ["secondary"] => matches!(residence, "secondary" | "promoting" | "dropping"),
        _ => false,
    }
}

/// After a restart: settles the request that was in flight at the kill by looking at what the
/// node serves (either outcome is allowed). Returns what happened, for the log.
fn resolve_pending(node: &NodeProc, model: &mut Model) -> String {
    let Some(op) = model.pending.take() else {
        return "none".into();
    };
    match op {
        Op::Put { id, ver } => {
            let r = req(node, "GET", &format!("/assets/{id}"));
            let e = model
                .entries
                .get_mut(&id)
                .expect("entry of the pending PUT");
            let v = e.versions[ver].clone();
            if r.status() == 200 && matches(v.seed, v.size, &r.body) {
                e.versions[ver].state = VState::Acked;
                e.versions[ver].etag = r.header("etag").map(str::to_string);
                e.current = Some(ver);
                format!("PUT {id} ({} B) landed", v.size)
            } else {
                e.versions[ver].state = VState::Failed;
                match e.current.and_then(|c| e.versions.get(c)) {
                    Some(cur) => assert!(
                        r.status() == 200 && matches(cur.seed, cur.size, &r.body),
                        "{id}: after a kill during its overwrite, GET is {} with {} bytes: \
                         neither the acknowledged version nor the new one",
                        r.status(),
                        r.body.len()
                    ),
                    None => assert_eq!(
                        r.status(),
                        404,
                        "{id}: a PUT killed before its 201 left {} bytes that are not its body",
                        r.body.len()
                    ),
                }
                format!("PUT {id} ({} B) did not land", v.size)
            }
        }
        Op::Delete { id } => {
            let r = req(node, "GET", &format!("/assets/{id}"));
            let e = model
                .entries
                .get_mut(&id)
                .expect("entry of the pending DELETE");
            if r.status() == 404 {
                e.current = None;
                e.deleted = true;
                format!("DELETE {id} landed")
            } else {
                let cur = e
                    .current
                    .and_then(|c| e.versions.get(c))
                    .expect("a DELETE is sent for a live id");
                assert!(
                    r.status() == 200 && matches(cur.seed, cur.size, &r.body),
                    "{id}: after a kill during its DELETE, GET is {} with {} bytes, not the \
                     acknowledged version",
                    r.status(),
                    r.body.len()
                );
                format!("DELETE {id} did not land")
            }
        }
    }
}

/// Every acknowledged asset GETs byte-exact with its ETag; every other id ever used 404s; the
/// list is exactly the model; `/info` names a consistent placement. Returns the number of live
/// assets on the secondary only.
fn verify_node(node: &NodeProc, model: &Model, when: &str) -> usize {
    for (id, e) in &model.entries {
        let r = req(node, "GET", &format!("/assets/{id}"));
        match e.current.and_then(|c| e.versions.get(c)) {
            Some(v) => {
                assert_eq!(
                    r.status(),
                    200,
                    "{when}: acknowledged asset {id} ({} B) is gone: {}; node stderr:\n{}",
                    v.size,
                    text(&r.body),
                    node.stderr()
                );
                if !matches(v.seed, v.size, &r.body) {
                    let which = e
                        .versions
                        .iter()
                        .position(|o| matches(o.seed, o.size, &r.body));
                    panic!(
                        "{when}: {id} serves {} bytes that are not its acknowledged version \
                         {:?} of {} ({} B); they match version {which:?} (states {:?})",
                        r.body.len(),
                        e.current,
                        e.versions.len(),
                        v.size,
                        e.versions.iter().map(|v| v.state).collect::<Vec<_>>()
                    );
                }
                assert_eq!(
                    r.header("etag"),
                    v.etag.as_deref(),
                    "{when}: {id}: ETag changed"
                );
            }
            None => assert_eq!(
                r.status(),
                404,
                "{when}: {id} (deleted: {}, versions {:?}) should not exist but GETs {} with {} \
                 bytes",
                e.deleted,
                e.versions.iter().map(|v| v.state).collect::<Vec<_>>(),
                r.status(),
                r.body.len()
            ),
        }
    }
    // The list: exactly the acknowledged assets.
    let mut listed = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/assets?limit=1000&after={a}"),
            None => "/assets?limit=1000".to_string(),
        };
        let r = req(node, "GET", &path);
        assert_eq!(r.status(), 200, "{when}: GET {path}");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("list JSON");
        for a in v["assets"].as_array().expect("assets array") {
            let id = a["id"].as_str().expect("listed id").to_string();
            let want = model.current(&id).and_then(|v| v.etag.clone());
            assert_eq!(
                a["etag"].as_str().map(str::to_string),
                want,
                "{when}: listed {id} with an ETag that is not its acknowledged version's"
            );
            listed.insert(id);
        }
        match v["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    let live: BTreeSet<String> = model.live().into_iter().collect();
    assert_eq!(
        listed,
        live,
        "{when}: /assets lists {:?} beyond the model and misses {:?}",
        listed.difference(&live).collect::<Vec<_>>(),
        live.difference(&listed).collect::<Vec<_>>()
    );
    // Placement.
    let mut secondary_only = 0;
    for id in &live {
        let v = model.current(id).expect("live");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let (tiers, residence, info) =
                info(node, id).unwrap_or_else(|| panic!("{when}: /info of live {id} is 404"));
            assert_eq!(
                info["checksum"].as_str(),
                v.checksum(),
                "{when}: {id}: /info checksum is not the acknowledged version's: {info}"
            );
            assert_eq!(info["size"].as_u64(), Some(v.size as u64), "{when}: {info}");
            if placement_ok(&tiers, &residence) {
                if tiers == ["secondary"] {
                    secondary_only += 1;
                }
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: {id}: inconsistent placement: tiers {tiers:?}, residence {residence}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    secondary_only
}

// ---------------------------------------------------------------------------------------------
// Checks of a stopped node's volumes (`reel inspect --json`)

/// An asset as `inspect` lists it: (size, checksum).
type Listed = BTreeMap<String, (u64, String)>;

/// Runs `reel inspect --json` and checks the space accounting and extents: returns the assets.
fn inspect_volume(vol: &Path, when: &str) -> Listed {
    let out = Command::new(REEL.bin)
        .args(["inspect", path_str(vol), "--json"])
        .output()
        .expect("reel inspect runs");
    assert!(
        out.status.success(),
        "{when}: reel inspect {} failed: {}",
        vol.display(),
        text(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    let name = format!("{when}, {}", vol.display());
    let num = |p: &serde_json::Value, k: &str| {
        p[k].as_u64()
            .unwrap_or_else(|| panic!("{name}: inspect has no number {k}: {v}"))
    };
    let sb = &v["superblock"];
    let st = &v["stats"];
    let (block, data_blocks) = (num(sb, "block_size"), num(sb, "data_blocks"));
    let (cap, used, free, reserved, pending) = (
        num(st, "capacity_bytes"),
        num(st, "used_bytes"),
        num(st, "free_bytes"),
        num(st, "reserved_bytes"),
        num(st, "reclaim_pending_bytes"),
    );
    assert_eq!(cap, block * data_blocks, "{name}: capacity vs data region");
    assert_eq!(
        used + free + reserved + pending,
        cap,
        "{name}: used {used} + free {free} + reserved {reserved} + reclaim pending {pending} \
         != capacity {cap}"
    );
    assert_eq!(
        (reserved, pending),
        (0, 0),
        "{name}: right after open nothing is reserved or pending reclaim"
    );
    let assets = v["assets"].as_array().expect("assets array");
    assert_eq!(
        num(st, "assets"),
        assets.len() as u64,
        "{name}: stats.assets vs list"
    );
    let mut listed = Listed::new();
    let mut spans = Vec::new();
    let mut blocks_total = 0;
    for a in assets {
        let id = a["id"].as_str().expect("asset id").to_string();
        let size = num(a, "size");
        let crc = a["checksum"].as_str().expect("checksum").to_string();
        let mut blocks = 0;
        for e in a["extents"].as_array().expect("extents") {
            let (start, len) = (
                e[0].as_u64().expect("extent start"),
                e[1].as_u64().expect("extent length"),
            );
            assert!(
                len > 0 && start + len <= data_blocks,
                "{name}: {id}: extent {start}+{len} outside the {data_blocks}-block data region"
            );
            spans.push((start, len, id.clone()));
            blocks += len;
        }
        assert_eq!(
            blocks,
            size.div_ceil(block),
            "{name}: {id} ({size} B) holds {blocks} blocks, not the {} it needs",
            size.div_ceil(block)
        );
        blocks_total += blocks;
        assert!(
            listed.insert(id.clone(), (size, crc)).is_none(),
            "{name}: {id} listed twice"
        );
    }
    spans.sort();
    for w in spans.windows(2) {
        let ((s0, l0, a0), (s1, _, a1)) = (&w[0], &w[1]);
        assert!(
            s0 + l0 <= *s1,
            "{name}: extents of {a0} ({s0}+{l0}) and {a1} (at {s1}) overlap"
        );
    }
    assert_eq!(
        blocks_total * block,
        used,
        "{name}: used bytes are not the sum of the assets' extents: a leaked or lost extent"
    );
    listed
}

/// Both volumes of a stopped node against the model. `pending`: the request in flight at a kill
/// (either outcome allowed).
fn check_volumes(primary: &Path, secondary: &Path, model: &Model, when: &str) {
    let p = inspect_volume(primary, &format!("{when}, primary"));
    let s = inspect_volume(secondary, &format!("{when}, secondary"));
    let (pend_id, pend_ver) = match &model.pending {
        Some(Op::Put { id, ver }) => (Some(id.as_str()), Some(*ver)),
        Some(Op::Delete { id }) => (Some(id.as_str()), None),
        None => (None, None),
    };
    let is = |v: &Version, got: &(u64, String)| {
        v.size as u64 == got.0 && v.checksum() == Some(got.1.as_str())
    };
    for (tier, listed) in [("primary", &p), ("secondary", &s)] {
        for (id, got) in listed {
            let e = model.entries.get(id).unwrap_or_else(|| {
                panic!("{when}: the {tier} holds {id}, which was never uploaded")
            });
            // Any version acknowledged at some time (a stale secondary copy under a newer dirty
            // primary one), or the one in flight at the kill.
            let known = e.versions.iter().enumerate().any(|(i, v)| {
                (v.state == VState::Acked && is(v, got))
                    || (Some(id.as_str()) == pend_id
                        && Some(i) == pend_ver
                        && v.size as u64 == got.0)
            });
            assert!(
                known,
                "{when}: the {tier} holds {id} ({} B, crc {}) which is no acknowledged version \
                 (versions {:?})",
                got.0, got.1, e.versions
            );
            assert!(
                e.current.is_some() || Some(id.as_str()) == pend_id,
                "{when}: the {tier} still holds {id}, whose DELETE was acknowledged (deleted: \
                 {}), or which was never acknowledged",
                e.deleted
            );
        }
    }
    for id in model.live() {
        let v = model.current(&id).expect("live");
        let uncertain = Some(id.as_str()) == pend_id;
        match (p.get(&id), s.get(&id)) {
            (Some(got), _) => assert!(
                is(v, got) || (uncertain && pend_ver.is_some()),
                "{when}: the primary holds {id} as {got:?}, not its acknowledged version \
                 ({} B, crc {:?})",
                v.size,
                v.checksum()
            ),
            (None, Some(got)) => assert!(
                is(v, got),
                "{when}: {id} is on the secondary only, as {got:?}, not its acknowledged \
                 version ({} B, crc {:?})",
                v.size,
                v.checksum()
            ),
            (None, None) => assert!(
                uncertain && pend_ver.is_none(),
                "{when}: acknowledged asset {id} ({} B) is on neither tier",
                v.size
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The test

/// PUTs a new asset, retrying while the primary has no room (507: the scheduler frees it by
/// writing back and evicting), and records it in the model.
fn put_retrying(node: &NodeProc, model: &mut Model, id: &str, seed: u64, size: usize) {
    let body = content(seed, size);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = request(node.addr(), "PUT", &format!("/assets/{id}"), Some(&body))
            .unwrap_or_else(|e| panic!("PUT {id}: {e}; node stderr:\n{}", node.stderr()));
        if r.status() == 201 {
            model.entries.insert(
                id.to_string(),
                Entry {
                    versions: vec![Version {
                        seed,
                        size,
                        etag: r.header("etag").map(str::to_string),
                        state: VState::Acked,
                    }],
                    current: Some(0),
                    ..Entry::default()
                },
            );
            model.puts_acked += 1;
            return;
        }
        assert!(
            r.status() == 507 && Instant::now() < deadline,
            "PUT {id} ({size} B): {} {} (507 for 20 s: the scheduler never made room)",
            r.status(),
            text(&r.body)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
    )
}

/// When a round kills the node.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Aim {
    /// At a random moment of the load.
    Random,
    /// As soon as (after a random minimum) `/info` shows an asset `promoting`, ...
    Promotion,
    /// ... `writing_back`, ...
    WriteBack,
    /// ... `dropping` (a demotion or eviction decided, its catalog commit pending), ...
    Drop,
    /// ... any of these.
    AnyMigration,
}

/// How one round's kill landed.
#[derive(Default, Clone, Copy)]
struct KillSeen {
    /// `/info` of some asset said `promoting` in the last poll before the kill (the decision is
    /// being copied, or queued behind the copy the scheduler is doing).
    promoting: bool,
    /// ... `writing_back`.
    writing_back: bool,
    /// ... `dropping`.
    dropping: bool,
    /// The copy counters moved between the last two scrapes before the kill.
    copies_moving: bool,
    /// The demotion/eviction counters moved between the last two scrapes before the kill.
    drops_moving: bool,
}

impl KillSeen {
    fn hits(&self, aim: Aim) -> bool {
        match aim {
            Aim::Random => false,
            Aim::Promotion => self.promoting,
            Aim::WriteBack => self.writing_back,
            Aim::Drop => self.dropping,
            Aim::AnyMigration => self.promoting || self.writing_back || self.dropping,
        }
    }
}

#[test]
fn migration_survives_kill_9_during_copies_flips_and_evictions() {
    let test = "migration_survives_kill_9_during_copies_flips_and_evictions";
    if !probe::runnable(test, &[&probe::kill, &|| REEL.io_uring()]) {
        return;
    }
    let t0 = Instant::now();
    let rounds = env_u64("REEL_MIGRATION_CRASH_ROUNDS").unwrap_or(15) as usize;
    let seed = env_u64("REEL_MIGRATION_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("{test}: {rounds} rounds, REEL_MIGRATION_CRASH_SEED={seed}");
    let mut rng = Rng::new(seed);
    let dir = REEL.tempdir("reel-node-crash-");
    let (primary, secondary) = (dir.path().join("primary"), dir.path().join("secondary"));
    REEL.format(&primary, "64M");
    REEL.format(&secondary, "512M");

    let model = Mutex::new(Model::default());
    let hot: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut life = 0;
    let mut node = start(dir.path(), &primary, &secondary);
    // More than the primary holds from the first round on, so uploads evict under pressure.
    {
        let mut m = lock(&model);
        while m.live_bytes() < 80 * MIB {
            let id = format!("m/{:05}", m.next_id);
            m.next_id += 1;
            let size = MIB + rng.below(5 * MIB as u64 + 1) as usize;
            put_retrying(&node, &mut m, &id, rng.next(), size);
        }
        eprintln!(
            "{test}: {} assets ({} MiB) uploaded before the first round",
            m.live().len(),
            m.live_bytes() / MIB
        );
    }
    let mut totals = Counters::default();
    // Kills that hit: a promotion, a write-back, a drop, any of them (per /info); copy or drop
    // counters moving (per /metrics).
    let (mut k_promo, mut k_wb, mut k_drop, mut k_any, mut k_copies_moving, mut k_drops_moving) =
        (0, 0, 0, 0, 0, 0);
    let (mut landed, mut inspected) = (0, 0);
    let mut gets = 0;

    for round in 0..rounds {
        let aim = *rng
            .pick(&[
                Aim::Random,
                Aim::Random,
                Aim::Random,
                Aim::Promotion,
                Aim::Promotion,
                Aim::WriteBack,
                Aim::WriteBack,
                Aim::Drop,
                Aim::Drop,
                Aim::AnyMigration,
            ])
            .expect("an aim");
        let writer_seed = rng.next();
        let (min_t, deadline) = if aim == Aim::Random {
            (Duration::ZERO, rng.ms(200, 5000))
        } else {
            (rng.ms(300, 2500), rng.ms(3500, 7000))
        };
        let killed = AtomicBool::new(false);
        let stop = AtomicBool::new(false);
        let addr = node.addr();
        let mut seen = KillSeen::default();
        let mut last = Counters::default();
        let started = Instant::now();
        let (wr, lr) = std::thread::scope(|s| {
            let w = s.spawn(|| writer(addr, &model, &hot, writer_seed, &killed, &stop));
            let l = s.spawn(|| loader(addr, &model, &hot, &killed, &stop));
            // Monitor: rotate the hot set, poll placements, scrape counters, pick the moment.
            let mut placement: HashMap<String, Vec<String>> = HashMap::new();
            let mut prev = counters(&node);
            last = prev;
            let mut next_rotate = Instant::now();
            let mut rr = 0usize;
            loop {
                let now = started.elapsed();
                if now >= deadline {
                    break;
                }
                let live = lock(&model).live();
                if Instant::now() >= next_rotate && !live.is_empty() {
                    // Prefer assets seen on the secondary only: they get promoted.
                    let cold: Vec<String> = live
                        .iter()
                        .filter(|id| placement.get(*id).is_some_and(|t| t == &["secondary"]))
                        .cloned()
                        .collect();
                    let mut h = Vec::new();
                    for _ in 0..3 {
                        let from = if cold.is_empty() { &live } else { &cold };
                        if let Some(id) = rng.pick(from) {
                            if !h.contains(id) {
                                h.push(id.clone());
                            }
                        }
                    }
                    *lock(&hot) = h;
                    next_rotate = Instant::now() + rng.ms(1000, 2500);
                }
                let mut poll: Vec<String> = lock(&hot).clone();
                poll.extend(live.last().cloned());
                for _ in 0..5 {
                    if !live.is_empty() {
                        poll.push(live[rr % live.len()].clone());
                        rr += 1;
                    }
                }
                prev = last;
                last = counters(&node);
                seen = KillSeen {
                    copies_moving: last.copies() != prev.copies(),
                    drops_moving: last.drops() != prev.drops(),
                    ..KillSeen::default()
                };
                for id in &poll {
                    if let Some((tiers, residence, _)) = info(&node, id) {
                        seen.promoting |= residence == "promoting";
                        seen.writing_back |= residence == "writing_back";
                        seen.dropping |= residence == "dropping";
                        placement.insert(id.clone(), tiers);
                    }
                }
                if now >= min_t && seen.hits(aim) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            killed.store(true, SeqCst);
            node.kill9();
            stop.store(true, SeqCst);
            (
                w.join().expect("writer thread"),
                l.join().expect("loader thread"),
            )
        });
        let load_time = started.elapsed();
        let stderr = node.stderr();
        if let Err(e) = wr {
            panic!("round {round}: writer: {e}\nnode stderr:\n{stderr}");
        }
        match lr {
            Ok(n) => gets += n,
            Err(e) => panic!("round {round}: loader: {e}\nnode stderr:\n{stderr}"),
        }
        node.assert_no_panic(&format!("round {round}, before the kill"));
        totals.add(last);
        k_promo += usize::from(seen.promoting);
        k_wb += usize::from(seen.writing_back);
        k_drop += usize::from(seen.dropping);
        k_any += usize::from(seen.hits(Aim::AnyMigration));
        k_copies_moving += usize::from(seen.copies_moving);
        k_drops_moving += usize::from(seen.drops_moving);

        // The state recovery finds, before any node touches it again.
        if round % 4 == 1 {
            check_volumes(
                &primary,
                &secondary,
                &lock(&model),
                &format!("round {round}, right after the kill"),
            );
            inspected += 1;
        }

        life += 1;
        node.respawn();
        assert_eq!(node.life(), life);
        let mut m = lock(&model);
        let resolved = resolve_pending(&node, &mut m);
        landed += usize::from(resolved.ends_with(" landed"));
        let when = format!("round {round}, after the restart");
        let secondary_only = verify_node(&node, &m, &when);
        eprintln!(
            "round {round:2}: aim {aim:?}, kill after {:.2}s (in flight: promoting {}, \
             writing_back {}, dropping {}; counters moving: copies {}, drops {}); counters \
             {last:?}; request in flight: {resolved}; {} live assets ({} MiB, {secondary_only} \
             on the secondary only)",
            load_time.as_secs_f64(),
            seen.promoting,
            seen.writing_back,
            seen.dropping,
            seen.copies_moving,
            seen.drops_moving,
            m.live().len(),
            m.live_bytes() / MIB,
        );
        if round % 3 == 2 && round + 1 < rounds {
            // A clean stop: the volumes as the scheduler left them, exactly the model.
            node.stop();
            node.assert_no_panic(&format!("round {round}, clean stop"));
            check_volumes(
                &primary,
                &secondary,
                &m,
                &format!("round {round}, after a clean stop"),
            );
            inspected += 1;
            life += 1;
            node.respawn();
            assert_eq!(node.life(), life);
        }
    }

    // The scheduler resumed after the last restart: a new upload is written back, every dirty
    // asset reaches the secondary, and a hammered secondary-only asset is promoted.
    let mut m = lock(&model);
    put_retrying(&node, &mut m, "final/wb", rng.next(), 3 * MIB + 5);
    let wb_start = Instant::now();
    let deadline = wb_start + Duration::from_secs(20);
    let mut waiting: Vec<String> = m.live();
    while !waiting.is_empty() {
        waiting.retain(|id| {
            info(&node, id).is_some_and(|(tiers, _, _)| !tiers.iter().any(|t| t == "secondary"))
        });
        assert!(
            Instant::now() < deadline,
            "after the last restart, {waiting:?} were never written back (the scheduler did not \
             resume?); node stderr:\n{}",
            node.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "final: every asset on the secondary {:.1}s after the final PUT",
        wb_start.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let target = loop {
        let found = m
            .live()
            .into_iter()
            .find(|id| info(&node, id).is_some_and(|(t, _, _)| t == ["secondary"]));
        if let Some(id) = found {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "no asset is on the secondary only ({} MiB live on a 64 MiB primary)",
            m.live_bytes() / MIB
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let v = m.current(&target).expect("live").clone();
    let hammer = Instant::now();
    loop {
        let r = req(&node, "GET", &format!("/assets/{target}"));
        assert!(
            r.status() == 200 && matches(v.seed, v.size, &r.body),
            "hammering {target}: {} with {} bytes",
            r.status(),
            r.body.len()
        );
        let (tiers, residence, _) = info(&node, &target).expect("target info");
        if tiers.iter().any(|t| t == "primary") {
            eprintln!(
                "final: {target} ({} B) promoted {:.1}s after hammering began ({tiers:?}, \
                 {residence})",
                v.size,
                hammer.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            hammer.elapsed() < Duration::from_secs(15),
            "after the last restart, {target} stayed on the secondary for 15 s of GETs \
             ({residence}): the scheduler did not resume; counters {:?}; node stderr:\n{}",
            counters(&node),
            node.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    verify_node(&node, &m, "final");
    totals.add(counters(&node));
    node.stop();
    node.assert_no_panic("final clean stop");
    check_volumes(&primary, &secondary, &m, "final, after a clean stop");
    inspected += 1;

    eprintln!(
        "{test}: {rounds} kills in {:.1}s; {k_any} while a migration was in flight per /info \
         ({k_promo} promoting, {k_wb} writing_back, {k_drop} dropping); {k_copies_moving} while \
         copy counters moved, {k_drops_moving} while drop counters moved; in-flight requests \
         that landed: {landed}; inspected {inspected}×2 volumes; {} PUTs acknowledged, {} refused (507), \
         {} DELETEs; {gets} hot GETs; migrations {totals:?}",
        t0.elapsed().as_secs_f64(),
        m.puts_acked,
        m.puts_refused,
        m.deletes_acked,
    );
}
