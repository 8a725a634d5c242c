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
//!
//! [`uploads`] kills the node during uploads that make room on the primary by dropping clean
//! copies, and during chunked ones that move to the secondary part-way (some of them new
//! versions of assets on the primary), with the same checks.

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
use reel_testkit::node::{NodeArgs, NodeProc, FAST_POLICY_FLAGS};
use reel_testkit::{http, output_ok, path_str, probe, text, Reel};

mod check;
mod load;
mod model;
mod uploads;

use check::*;
use load::*;
use model::*;

const REEL: Reel = reel_testkit::reel!();
const MIB: usize = 1 << 20;

/// Flags of every node in this file besides [`FAST_POLICY_FLAGS`]: two shards, 1 s residency and
/// a 64 MiB/s copy budget, so a copy of a few MiB takes 20–100 ms: long enough for the monitor's
/// ~25 ms polls to see it in flight, short enough that write-backs keep up with the uploads.
const NODE_FLAGS: &[&str] = &[
    "--shards",
    "2",
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
        .flags(FAST_POLICY_FLAGS)
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
// ---------------------------------------------------------------------------------------------
// The test

/// Starts `node` again, which must then count one life more than `life`, its new life.
fn respawn_counted(node: &mut NodeProc, life: &mut usize) {
    *life += 1;
    node.respawn();
    assert_eq!(node.life(), *life);
}

/// PUTs a new asset, retrying while no tier has room for it (507: the scheduler frees the
/// primary by writing back and evicting), and records it in the model.
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
    // The volumes of a stopped node against the model.
    let check = |m: &Model, when: &str| check_volumes(&primary, &secondary, m, when);
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
            check(
                &lock(&model),
                &format!("round {round}, right after the kill"),
            );
            inspected += 1;
        }

        respawn_counted(&mut node, &mut life);
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
            check(&m, &format!("round {round}, after a clean stop"));
            inspected += 1;
            respawn_counted(&mut node, &mut life);
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
    check(&m, "final, after a clean stop");
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
