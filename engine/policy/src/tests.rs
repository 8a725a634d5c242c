//! Behaviour of the tiering policy under a simulated clock, deterministically from seeds:
//! hysteresis, no thrash under oscillating load, the copy budget, primary capacity, pinning,
//! write-back before eviction, failures and deletes in flight, and seeded sweeps through the
//! simulator with fault injection.

use std::sync::Arc;

use proptest::prelude::*;

use super::policy::{
    view_rate_per_h, AssetPolicy, Decision, Outcome, Placement, PolicyConfig, Residence, Tier,
    TierPolicy, TUNED_HALF_LIVES_S,
};
use super::rate::{RateCounters, RateWriter};
use super::sim::{simulate, zipf_trace, SimConfig, SimRng, ZipfSpec};

const MIB: u64 = 1 << 20;
const S: u64 = 1_000_000_000;

/// The policy, its rate writer and a simulated clock. Copies finish at the first step after
/// `bytes / budget` seconds (or fail, when told to); drops finish at once.
struct Rig {
    policy: TierPolicy,
    writer: RateWriter,
    sizes: Vec<u64>,
    now_ns: u64,
    in_flight: Vec<(u64, Decision)>,
    /// Every decision with the time it was made.
    log: Vec<(u64, Decision)>,
    /// `(time, bytes)` of each copy start, for budget checks.
    copy_starts: Vec<(u64, u64)>,
    fail_next_copies: u32,
}

impl Rig {
    fn new(cfg: PolicyConfig) -> Rig {
        let (counters, writers) = RateCounters::new(1);
        let writer = writers.into_iter().next().expect("one writer");
        Rig {
            policy: TierPolicy::new(cfg, Arc::clone(&counters)).expect("valid config"),
            writer,
            sizes: Vec::new(),
            now_ns: 0,
            in_flight: Vec::new(),
            log: Vec::new(),
            copy_starts: Vec::new(),
            fail_next_copies: 0,
        }
    }

    fn add(&mut self, slot: u32, size: u64, placement: Placement) {
        if self.sizes.len() <= slot as usize {
            self.sizes.resize(slot as usize + 1, 0);
        }
        self.sizes[slot as usize] = size;
        self.policy.add_asset(self.now_ns, slot, size, placement);
    }

    /// Requests worth `views` whole views of `slot` (fractions allowed: bytes ÷ size).
    fn views(&self, slot: u32, views: f64) {
        let bytes = (self.sizes[slot as usize] as f64 * views).round() as u64;
        if bytes > 0 {
            self.writer.record(slot, bytes);
        }
    }

    /// Advances the clock by `dt_s`, ends the copies due, ticks and executes the decisions.
    fn step(&mut self, dt_s: f64) {
        self.now_ns += (dt_s * 1e9) as u64;
        let now = self.now_ns;
        let due: Vec<(u64, Decision)> = self
            .in_flight
            .iter()
            .copied()
            .filter(|c| c.0 <= now)
            .collect();
        self.in_flight.retain(|c| c.0 > now);
        for (_, d) in due {
            let outcome = if self.fail_next_copies > 0 {
                self.fail_next_copies -= 1;
                Outcome::Failed
            } else {
                Outcome::Done
            };
            assert!(self.policy.finished(now, d.ticket(), outcome));
        }
        let mut out = Vec::new();
        self.policy.tick(now, &mut out);
        let budget = self.policy.config().copy_budget_bytes_per_s.max(1) as f64;
        for d in out {
            self.log.push((now, d));
            match d {
                Decision::Promote { bytes, .. } | Decision::WriteBack { bytes, .. } => {
                    self.copy_starts.push((now, bytes));
                    let took = (bytes as f64 / budget * 1e9) as u64;
                    self.in_flight.push((now + took, d));
                }
                Decision::Demote { ticket, .. } | Decision::Evict { ticket, .. } => {
                    assert!(self.policy.finished(now, ticket, Outcome::Done));
                }
            }
        }
        self.policy.check_invariants().expect("policy invariants");
        assert!(
            self.policy.used_bytes() <= self.policy.config().primary_capacity_bytes,
            "primary over capacity: {} > {}",
            self.policy.used_bytes(),
            self.policy.config().primary_capacity_bytes
        );
    }

    /// Steps `n` times of `dt_s`, each time recording `views_per_h(slot)` for every slot.
    fn run(&mut self, n: usize, dt_s: f64, views_per_h: impl Fn(u32, u64) -> f64) {
        for _ in 0..n {
            for slot in 0..self.sizes.len() as u32 {
                let v = views_per_h(slot, self.now_ns);
                if v > 0.0 {
                    self.views(slot, v * dt_s / 3600.0);
                }
            }
            self.step(dt_s);
        }
    }

    fn count(&self, slot: u32, kind: fn(&Decision) -> bool) -> usize {
        self.log
            .iter()
            .filter(|(_, d)| d.slot() == slot && kind(d))
            .count()
    }
}

fn is_promote(d: &Decision) -> bool {
    matches!(d, Decision::Promote { .. })
}

fn is_drop(d: &Decision) -> bool {
    matches!(d, Decision::Demote { .. } | Decision::Evict { .. })
}

fn cfg(capacity: u64) -> PolicyConfig {
    PolicyConfig {
        primary_capacity_bytes: capacity,
        half_life_s: Some(600.0),
        promote_per_h: Some(10.0),
        demote_per_h: Some(2.0),
        swap_margin: Some(1.0),
        min_residency_s: 300.0,
        copy_budget_bytes_per_s: 100 * MIB,
        copy_burst_bytes: 100 * MIB,
        copies_in_flight_max: 4,
        upload_headroom_fraction: 0.0,
        retry_backoff_s: 60.0,
        schedule_write_backs: true,
    }
}

#[test]
fn hysteresis_between_the_thresholds() {
    // Plenty of room: only the thresholds decide.
    let mut rig = Rig::new(cfg(10_000 * MIB));
    rig.add(0, 100 * MIB, Placement::Secondary);
    rig.add(1, 100 * MIB, Placement::PrimaryClean);
    // Both at 5 views/h, between demote (2) and promote (10): nobody moves.
    rig.run(720, 10.0, |_, _| 5.0);
    assert_eq!(rig.policy.residence(0), Residence::Secondary);
    assert_eq!(rig.policy.residence(1), Residence::Clean);
    assert!(rig.log.is_empty(), "{:?}", rig.log);
    // Asset 0 heats up to 30 views/h: promoted.
    rig.run(360, 10.0, |s, _| if s == 0 { 30.0 } else { 5.0 });
    assert_eq!(rig.policy.residence(0), Residence::Clean);
    assert!(rig.policy.rate_per_h(0) > 10.0);
    // Back to 5 views/h: it stays (above the demote threshold), for hours.
    rig.run(1440, 10.0, |_, _| 5.0);
    assert_eq!(rig.policy.residence(0), Residence::Clean);
    assert_eq!(rig.count(0, is_drop), 0);
    // Silence: both fall below 2 views/h and are demoted, each exactly once.
    rig.run(720, 10.0, |_, _| 0.0);
    assert_eq!(rig.policy.residence(0), Residence::Secondary);
    assert_eq!(rig.policy.residence(1), Residence::Secondary);
    assert_eq!(rig.count(0, is_promote), 1);
    assert_eq!(rig.count(0, is_drop), 1);
    assert_eq!(rig.count(1, is_drop), 1);
    assert_eq!(rig.policy.stats().demotions, 2);
}

#[test]
fn minimum_residency_delays_a_demotion() {
    let mut c = cfg(10_000 * MIB);
    c.min_residency_s = 3600.0;
    let mut rig = Rig::new(c);
    rig.add(0, 10 * MIB, Placement::Secondary);
    // A burst promotes it, then it goes silent at once.
    rig.run(30, 10.0, |_, _| 500.0);
    assert_eq!(rig.policy.residence(0), Residence::Clean);
    let promoted_at = rig.log[0].0;
    rig.run(720, 10.0, |_, _| 0.0);
    let dropped_at = rig
        .log
        .iter()
        .find(|(_, d)| is_drop(d))
        .map(|x| x.0)
        .expect("demoted in the end");
    assert!(
        dropped_at - promoted_at >= 3600 * S,
        "{}",
        dropped_at - promoted_at
    );
}

#[test]
fn no_thrash_under_oscillating_load() {
    // Room for 3 of 6 equal assets. Two groups trade places every 5 minutes, much faster than
    // the 10-minute half-life: their decayed rates stay within the swap margin of each other,
    // so after the initial fill nothing moves.
    let mut rig = Rig::new(cfg(300 * MIB));
    for slot in 0..6 {
        rig.add(slot, 100 * MIB, Placement::Secondary);
    }
    rig.run(8640, 10.0, |slot, now| {
        let phase = (now / (300 * S)) % 2;
        if u64::from(slot % 2) == phase {
            60.0
        } else {
            20.0
        }
    });
    let promotions = rig.log.iter().filter(|(_, d)| is_promote(d)).count();
    assert!(promotions <= 3, "{promotions} promotions: {:?}", rig.log);
    // A slow oscillation (3 h half periods, far beyond the half-life) is a real change in
    // popularity: the policy follows it, once per swing, not once per tick.
    let mut rig = Rig::new(cfg(300 * MIB));
    for slot in 0..6 {
        rig.add(slot, 100 * MIB, Placement::Secondary);
    }
    rig.run(4320, 10.0, |slot, now| {
        let phase = (now / (3 * 3600 * S)) % 2;
        if u64::from(slot % 2) == phase {
            120.0
        } else {
            10.0
        }
    });
    for slot in 0..6 {
        let p = rig.count(slot, is_promote);
        assert!(p <= 2, "slot {slot}: {p} promotions in 12 h (4 swings)");
    }
    let hot_now: Vec<u32> = (0..6)
        .filter(|s| rig.policy.residence(*s).on_primary())
        .collect();
    assert_eq!(hot_now, vec![1, 3, 5]);
}

#[test]
fn swap_needs_the_margin() {
    let mut rig = Rig::new(cfg(100 * MIB));
    rig.add(0, 100 * MIB, Placement::PrimaryClean);
    rig.add(1, 100 * MIB, Placement::Secondary);
    // The newcomer is 1.5× hotter: not enough for margin 1.0.
    rig.run(1080, 10.0, |s, _| if s == 0 { 40.0 } else { 60.0 });
    assert_eq!(rig.policy.residence(0), Residence::Clean);
    assert_eq!(rig.policy.residence(1), Residence::Secondary);
    // 3× hotter: swapped, once.
    rig.run(1080, 10.0, |s, _| if s == 0 { 40.0 } else { 120.0 });
    assert_eq!(rig.policy.residence(0), Residence::Secondary);
    assert_eq!(rig.policy.residence(1), Residence::Clean);
    assert_eq!(rig.count(0, is_drop), 1);
    assert_eq!(rig.count(1, is_promote), 1);
}

#[test]
fn copy_budget_is_respected() {
    let mut c = cfg(100_000 * MIB);
    c.copy_budget_bytes_per_s = 50 * MIB;
    c.copy_burst_bytes = 20 * MIB;
    c.copies_in_flight_max = 64;
    let mut rig = Rig::new(c.clone());
    let mut rng = SimRng::new(7);
    for slot in 0..400 {
        rig.add(slot, (1 + rng.below(300)) * MIB, Placement::Secondary);
    }
    rig.run(600, 1.0, |_, _| 100.0);
    assert!(rig.copy_starts.len() > 20, "copies did start");
    let largest = rig.sizes.iter().copied().max().unwrap_or(0) as f64;
    let budget = c.copy_budget_bytes_per_s as f64;
    // Over every window [a, b] of copy starts: bytes ≤ budget·(b − a) + burst + largest.
    for (i, &(a, _)) in rig.copy_starts.iter().enumerate() {
        let mut bytes = 0.0;
        for &(b, n) in &rig.copy_starts[i..] {
            bytes += n as f64;
            let allowed = budget * (b - a) as f64 / 1e9 + c.copy_burst_bytes as f64 + largest;
            assert!(
                bytes <= allowed,
                "{bytes} bytes started in [{a}, {b}] ns, {allowed} allowed"
            );
        }
    }
    // And the budget is used: over the 10 minutes, at least half of it.
    let total: u64 = rig.copy_starts.iter().map(|c| c.1).sum();
    assert!(total as f64 >= 0.5 * budget * 600.0, "{total}");
    // A zero budget is no ceiling, as `--copy-budget 0` is: with a bucket far smaller than the
    // assets, a budget of 1 byte/s lets one copy start in 100 s (the bucket then stays in
    // debt), while 0 lets both start.
    let starts = |budget: u64| {
        let mut c = cfg(100_000 * MIB);
        c.copy_budget_bytes_per_s = budget;
        c.copy_burst_bytes = 1;
        let mut rig = Rig::new(c);
        rig.add(0, MIB, Placement::Secondary);
        rig.add(1, MIB, Placement::PrimaryDirty);
        rig.run(100, 1.0, |_, _| 1000.0);
        rig.copy_starts.len()
    };
    assert_eq!(starts(1), 1);
    assert_eq!(starts(0), 2);
}

#[test]
fn pinned_assets_stay_where_they_are_pinned() {
    let mut rig = Rig::new(cfg(200 * MIB));
    for slot in 0..5 {
        rig.add(slot, 100 * MIB, Placement::Secondary);
    }
    let pin = |tier| AssetPolicy {
        pin: Some(tier),
        ..AssetPolicy::default()
    };
    // Nobody asks for slot 0, slot 1 is the hottest, the rest warm up with their number.
    let views = |s: u32, _: u64| match s {
        0 => 0.0,
        1 => 1000.0,
        _ => 100.0 * f64::from(s),
    };
    // Slot 0 pinned to primary although nobody asks for it; slot 1, the hottest, to secondary.
    rig.policy
        .set_asset_policy(0, pin(Tier::Primary))
        .expect("valid policy");
    rig.policy
        .set_asset_policy(1, pin(Tier::Secondary))
        .expect("valid policy");
    rig.run(2160, 10.0, views);
    assert_eq!(rig.policy.residence(0), Residence::Clean);
    assert_eq!(rig.policy.residence(1), Residence::Secondary);
    assert_eq!(rig.count(0, is_drop), 0);
    assert_eq!(rig.count(1, is_promote), 0);
    // The one other slot on primary is the hottest unpinned one.
    assert_eq!(rig.policy.residence(4), Residence::Clean);
    // Unpinning slot 1 lets it in (evicting slot 4, 2.5× colder); pinning slot 4 to secondary
    // would have pushed it out anyway.
    rig.policy
        .set_asset_policy(1, AssetPolicy::default())
        .expect("valid policy");
    rig.run(360, 10.0, views);
    assert_eq!(rig.policy.residence(1), Residence::Clean);
    assert_eq!(rig.policy.residence(0), Residence::Clean);
    // Pinned to secondary while on primary: it leaves.
    rig.policy
        .set_asset_policy(1, pin(Tier::Secondary))
        .expect("valid policy");
    rig.step(10.0);
    assert_eq!(rig.policy.residence(1), Residence::Secondary);
}

#[test]
fn per_asset_thresholds_override_the_defaults() {
    let mut rig = Rig::new(cfg(10_000 * MIB));
    rig.add(0, 10 * MIB, Placement::Secondary);
    rig.add(1, 10 * MIB, Placement::Secondary);
    rig.policy
        .set_asset_policy(
            1,
            AssetPolicy {
                promote_per_h: Some(2.0),
                demote_per_h: Some(1.0),
                pin: None,
            },
        )
        .expect("valid policy");
    // 5 views/h: under the default promote threshold (10), over slot 1's own (2).
    rig.run(720, 10.0, |_, _| 5.0);
    assert_eq!(rig.policy.residence(0), Residence::Secondary);
    assert_eq!(rig.policy.residence(1), Residence::Clean);
    let bad = AssetPolicy {
        promote_per_h: Some(1.0),
        demote_per_h: Some(3.0),
        pin: None,
    };
    let e = rig
        .policy
        .set_asset_policy(0, bad)
        .expect_err("demote above promote");
    assert!(e.to_string().contains("demote_per_h"), "{e}");
    // The overrides are serializable for persistence.
    let json = serde_json::to_string(&rig.policy.asset_policy(1)).expect("serialize");
    assert_eq!(json, r#"{"promote_per_h":2.0,"demote_per_h":1.0}"#);
    let back: AssetPolicy = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, rig.policy.asset_policy(1));
    let pinned: AssetPolicy = serde_json::from_str(r#"{"pin":"primary"}"#).expect("deserialize");
    assert_eq!(pinned.pin, Some(Tier::Primary));
    assert!(serde_json::from_str::<AssetPolicy>(r#"{"pinned":true}"#).is_err());
}

#[test]
fn dirty_uploads_are_written_back_before_they_can_leave() {
    let mut c = cfg(300 * MIB);
    c.upload_headroom_fraction = 0.34;
    c.copy_budget_bytes_per_s = 10 * MIB;
    let mut rig = Rig::new(c);
    for slot in 0..3 {
        rig.sizes.push(100 * MIB);
        let t = rig
            .policy
            .reserve_upload(100 * MIB)
            .expect("room for the upload");
        assert!(rig.policy.upload_committed(rig.now_ns, t, slot));
        assert_eq!(rig.policy.residence(slot), Residence::Dirty);
    }
    // Primary is full of dirty copies; a fourth upload does not fit.
    assert!(rig.policy.reserve_upload(100 * MIB).is_none());
    // Headroom pressure wants one out, but only after its write-back, under the 10 MiB/s budget:
    // each write-back of 100 MiB takes 10 s.
    let mut evicted_at = None;
    for _ in 0..400 {
        rig.step(1.0);
        if let Some((t, d)) = rig.log.iter().find(|(_, d)| is_drop(d)) {
            evicted_at = Some(*t);
            let slot = d.slot();
            let wrote_back = rig
                .log
                .iter()
                .position(|(_, w)| matches!(w, Decision::WriteBack { slot: s, .. } if *s == slot))
                .expect("written back first");
            let dropped = rig
                .log
                .iter()
                .position(|(_, w)| is_drop(w))
                .expect("dropped");
            assert!(wrote_back < dropped);
            break;
        }
    }
    let evicted_at = evicted_at.expect("pressure evicted a clean copy");
    // Not before the first write-back (10 s) plus the residency (300 s) of a fresh upload.
    assert!(evicted_at >= 300 * S, "{evicted_at}");
    rig.run(100, 10.0, |_, _| 0.0);
    assert_eq!(rig.policy.stats().write_backs, 3);
}

#[test]
fn write_back_done_by_the_caller_is_reported_with_mark_clean() {
    let mut c = cfg(200 * MIB);
    c.schedule_write_backs = false;
    c.upload_headroom_fraction = 0.5;
    let mut rig = Rig::new(c);
    for slot in 0..2 {
        rig.sizes.push(100 * MIB);
        let t = rig.policy.reserve_upload(100 * MIB).expect("room");
        assert!(rig.policy.upload_committed(rig.now_ns, t, slot));
    }
    // Pressure (headroom) but both dirty and no write-back scheduled: nothing leaves.
    rig.run(100, 10.0, |_, _| 0.0);
    assert!(rig.log.is_empty(), "{:?}", rig.log);
    assert!(rig.policy.mark_clean(1));
    assert!(!rig.policy.mark_clean(1), "already clean");
    assert!(!rig.policy.mark_clean(7), "unknown slot");
    rig.step(10.0);
    assert_eq!(rig.policy.residence(0), Residence::Dirty);
    assert_eq!(rig.policy.residence(1), Residence::Secondary);
    assert_eq!(rig.policy.stats().evictions, 1);
}

#[test]
fn failed_copies_back_off_and_retry() {
    let mut rig = Rig::new(cfg(10_000 * MIB));
    rig.add(0, 10 * MIB, Placement::Secondary);
    rig.fail_next_copies = 1;
    // Promoted at the second tick (20 s), failed at the third.
    rig.run(5, 10.0, |_, _| 1000.0);
    assert_eq!(rig.policy.stats().promotions_failed, 1);
    assert_eq!(rig.policy.residence(0), Residence::Secondary);
    assert_eq!(rig.count(0, is_promote), 1, "backing off for 60 s");
    rig.run(12, 10.0, |_, _| 1000.0);
    assert_eq!(rig.policy.residence(0), Residence::Clean);
    assert_eq!(rig.count(0, is_promote), 2);
}

#[test]
fn a_delete_during_a_copy_keeps_its_bytes_until_the_copy_ends() {
    let mut rig = Rig::new(cfg(10_000 * MIB));
    rig.add(0, 500 * MIB, Placement::Secondary);
    rig.run(2, 1.0, |_, _| 100_000.0);
    assert_eq!(rig.policy.residence(0), Residence::Promoting);
    assert_eq!(rig.policy.used_bytes(), 500 * MIB);
    rig.policy.remove_asset(0);
    assert_eq!(rig.policy.residence(0), Residence::Unknown);
    rig.policy
        .check_invariants()
        .expect("invariants after delete");
    // The copy is still writing primary: its bytes stay counted, and the slot may be reused.
    assert_eq!(rig.policy.used_bytes(), 500 * MIB);
    rig.add(0, MIB, Placement::Secondary);
    assert_eq!(rig.policy.rate_per_h(0), 0.0, "a reused slot starts afresh");
    rig.run(10, 1.0, |_, _| 0.0);
    assert_eq!(rig.policy.used_bytes(), 0);
    assert_eq!(rig.policy.residence(0), Residence::Secondary);
    // Ending an unknown ticket changes nothing.
    assert!(!rig
        .policy
        .finished(rig.now_ns, super::Ticket(999_999), Outcome::Done));
}

#[test]
fn low_budget_still_fills_primary() {
    // Regression: with a slow copy budget, the first promotions (the hottest) must not set the
    // bar for the free room that is left.
    let mut c = cfg(1000 * MIB);
    c.copy_budget_bytes_per_s = MIB;
    c.copy_burst_bytes = MIB;
    c.promote_per_h = Some(1.0);
    c.demote_per_h = Some(0.5);
    let mut rig = Rig::new(c);
    for slot in 0..20 {
        rig.add(slot, 100 * MIB, Placement::Secondary);
    }
    rig.run(2000, 1.0, |s, _| 1000.0 / f64::from(s + 1));
    let resident = (0..20)
        .filter(|s| rig.policy.residence(*s).on_primary())
        .count();
    assert!(resident >= 9, "{resident} of 10 possible");
}

#[test]
fn config_errors_name_the_field() {
    let (counters, _) = RateCounters::new(1);
    let bad = PolicyConfig {
        demote_per_h: Some(5.0),
        promote_per_h: Some(1.0),
        ..PolicyConfig::default()
    };
    let e = TierPolicy::new(bad, Arc::clone(&counters)).expect_err("demote above promote");
    assert!(e.to_string().contains("demote_per_h"), "{e}");
    let bad = PolicyConfig {
        half_life_s: Some(0.0),
        ..PolicyConfig::default()
    };
    let e = TierPolicy::new(bad, counters).expect_err("zero half-life");
    assert!(e.to_string().contains("half_life_s"), "{e}");
    // The config round-trips through TOML-like serde (JSON here) with defaults filled in.
    let c: PolicyConfig =
        serde_json::from_str(r#"{"primary_capacity_bytes":1000}"#).expect("defaults");
    assert_eq!(c.primary_capacity_bytes, 1000);
    assert_eq!(c.half_life_s, PolicyConfig::default().half_life_s);
}

/// A random mix of requests, uploads, deletes, pins and failures against small capacities:
/// after every step the invariants hold and primary is within capacity (checked in `step`).
#[test]
fn seeded_random_operations_keep_the_invariants() {
    for seed in 0..12u64 {
        let mut rng = SimRng::new(seed);
        let mut c = cfg((200 + rng.below(800)) * MIB);
        c.upload_headroom_fraction = rng.f64() * 0.2;
        c.swap_margin = Some(rng.f64() * 2.0);
        c.min_residency_s = rng.below(600) as f64;
        c.copy_budget_bytes_per_s = (1 + rng.below(200)) * MIB;
        c.copies_in_flight_max = 1 + rng.below(6) as u32;
        let mut rig = Rig::new(c);
        let slots = 40u32;
        for slot in 0..slots {
            rig.add(slot, (1 + rng.below(150)) * MIB, Placement::Secondary);
        }
        let mut uploads = Vec::new();
        for _ in 0..3000 {
            match rng.below(100) {
                0..=69 => {
                    let slot = rng.below(u64::from(slots)) as u32;
                    if rig.policy.residence(slot) != Residence::Unknown {
                        rig.views(slot, 1.0 + rng.f64() * 5.0 / f64::from(slot + 1));
                    }
                }
                70..=74 => {
                    let size = (1 + rng.below(150)) * MIB;
                    if let Some(t) = rig.policy.reserve_upload(size) {
                        uploads.push((t, size));
                    }
                }
                75..=79 => {
                    if let Some((t, size)) = uploads.pop() {
                        let slot = rng.below(u64::from(slots)) as u32;
                        if rng.below(4) == 0 {
                            assert!(rig.policy.finished(rig.now_ns, t, Outcome::Failed));
                        } else {
                            rig.sizes[slot as usize] = size;
                            assert!(rig.policy.upload_committed(rig.now_ns, t, slot));
                        }
                    }
                }
                80..=81 => {
                    let slot = rng.below(u64::from(slots)) as u32;
                    rig.policy.remove_asset(slot);
                }
                82..=83 => {
                    let slot = rng.below(u64::from(slots)) as u32;
                    if rig.policy.residence(slot) == Residence::Unknown {
                        let size = (1 + rng.below(150)) * MIB;
                        rig.add(slot, size, Placement::Secondary);
                    }
                }
                84 => {
                    let slot = rng.below(u64::from(slots)) as u32;
                    let pin =
                        [None, Some(Tier::Primary), Some(Tier::Secondary)][rng.below(3) as usize];
                    let p = AssetPolicy {
                        pin,
                        ..AssetPolicy::default()
                    };
                    rig.policy.set_asset_policy(slot, p).expect("valid policy");
                }
                85..=86 => rig.fail_next_copies += 1,
                _ => rig.step(1.0 + rng.below(30) as f64),
            }
        }
        // Drain: every op ends, and the accounting returns to exactly what is resident.
        for (t, _) in uploads {
            assert!(rig.policy.finished(rig.now_ns, t, Outcome::Failed));
        }
        rig.fail_next_copies = 0;
        rig.run(200, 60.0, |_, _| 0.0);
        rig.policy
            .check_invariants()
            .expect("invariants after draining");
        for (slot, _) in rig.sizes.iter().enumerate() {
            let r = rig.policy.residence(slot as u32);
            assert!(
                !matches!(
                    r,
                    Residence::Promoting | Residence::WritingBack | Residence::Dropping
                ),
                "seed {seed} slot {slot}: {r:?} after draining"
            );
        }
    }
}

#[test]
fn simulation_is_deterministic_and_checks_pass_with_faults() {
    let spec = ZipfSpec {
        assets: 400,
        requests: 40_000,
        rate_per_s: 5.0,
        churn_per_h: 0.3,
        new_releases_per_h: 0.05,
        seed: 3,
        ..ZipfSpec::default()
    };
    let trace = zipf_trace(&spec);
    let cfg = SimConfig {
        failure_rate: 0.05,
        check_every_tick: true,
        tick_s: 5.0,
        ..SimConfig::default()
    };
    let a = simulate(&trace, &cfg).expect("valid config");
    let b = simulate(&trace, &cfg).expect("valid config");
    assert_eq!(a, b);
    let p = &a.policy;
    assert_eq!(p.invariant_error, None);
    assert_eq!(p.capacity_violations, 0);
    assert_eq!(p.unclean_drops, 0);
    assert_eq!(p.budget_violations, 0);
    assert!(p.copies_failed > 0, "faults were injected");
    assert!(p.uploads_to_primary > 0 && p.written_back_bytes > 0);
    assert!(p.primary_used_max_bytes <= a.primary_capacity_bytes);
    for r in [&a.lru, &a.static_oracle, &a.belady] {
        assert!((0.0..=1.0).contains(&r.byte_hit_ratio));
    }
    assert!((0.0..=1.0).contains(&p.byte_hit_ratio) && p.byte_hit_ratio > 0.0);
}

proptest! {
    // Failures are not persisted to a regressions file: a failing case is turned into a named
    // test below instead (see `sweep_regression_filling_candidate_without_free_room`).
    #![proptest_config(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Any workload and any sane policy settings: the simulated node never overflows primary,
    /// never drops a copy without a secondary twin, never exceeds the copy budget, and the
    /// policy's own accounting agrees with the simulator's after every step.
    #[test]
    fn sweep_never_violates_the_limits(
        seed in any::<u64>(),
        alpha in 0.5f64..1.5,
        churn in 0.0f64..1.0,
        releases in 0.0f64..0.1,
        fraction in 0.02f64..0.5,
        margin in 0.0f64..2.0,
        half_life_s in 60.0f64..7200.0,
        budget_mib in 1u64..512,
        failure_rate in 0.0f64..0.2,
    ) {
        let r = sweep_case(seed, alpha, churn, releases, fraction, margin, half_life_s, budget_mib, failure_rate);
        prop_assert_eq!(r.policy.invariant_error, None);
        prop_assert_eq!(r.policy.capacity_violations, 0);
        prop_assert_eq!(r.policy.unclean_drops, 0);
        prop_assert_eq!(r.policy.budget_violations, 0);
        prop_assert!((0.0..=1.0).contains(&r.policy.byte_hit_ratio));
    }
}

#[allow(clippy::too_many_arguments)]
fn sweep_case(
    seed: u64,
    alpha: f64,
    churn: f64,
    releases: f64,
    fraction: f64,
    margin: f64,
    half_life_s: f64,
    budget_mib: u64,
    failure_rate: f64,
) -> super::sim::SimReport {
    let trace = zipf_trace(&ZipfSpec {
        assets: 200,
        alpha,
        requests: 6_000,
        rate_per_s: 2.0,
        churn_per_h: churn,
        new_releases_per_h: releases,
        seed,
        ..ZipfSpec::default()
    });
    let mut cfg = SimConfig {
        primary_fraction: fraction,
        failure_rate,
        seed,
        check_every_tick: true,
        tick_s: 5.0,
        ..SimConfig::default()
    };
    cfg.policy.swap_margin = Some(margin);
    cfg.policy.half_life_s = Some(half_life_s);
    cfg.policy.copy_budget_bytes_per_s = budget_mib * MIB;
    simulate(&trace, &cfg).expect("valid config")
}

/// Found by the sweep: a candidate refused the free room (colder than every resident) must pay
/// for all of its size with evictions; computing what it needed underflowed.
#[test]
fn sweep_regression_filling_candidate_without_free_room() {
    let r = sweep_case(
        0,
        0.5,
        0.7871362084545169,
        0.014354759403179262,
        0.15909092569324487,
        1.3220983357612388,
        4167.515938523064,
        141,
        0.13899462452440384,
    );
    assert_eq!(r.policy.invariant_error, None);
    assert_eq!(r.policy.capacity_violations, 0);
}

#[test]
fn steady_zipf_policy_beats_lru_and_tracks_the_oracle() {
    // A scaled-down version of `reel simulate --zipf 1.0` (the full one runs in the CLI tests
    // and `--all`).
    let trace = zipf_trace(&ZipfSpec {
        assets: 2000,
        requests: 200_000,
        rate_per_s: 20.0,
        seed: 11,
        ..ZipfSpec::default()
    });
    let cfg = SimConfig {
        tick_s: 5.0,
        ..SimConfig::default()
    };
    let r = simulate(&trace, &cfg).expect("valid config");
    assert!(
        r.policy.byte_hit_ratio >= r.lru.byte_hit_ratio,
        "{:?}",
        r.ratios
    );
    assert!(r.ratios.policy_over_static_oracle >= 0.95, "{:?}", r.ratios);
    assert!(
        r.ratios.promotion_bytes_over_belady <= 1.2,
        "{:?}",
        r.ratios
    );
}

#[test]
fn observing_while_paused_decides_nothing_and_keeps_the_candidates() {
    let mut rig = Rig::new(cfg(10_000 * MIB));
    rig.add(0, 100 * MIB, Placement::Secondary);
    rig.add(1, 100 * MIB, Placement::PrimaryClean);
    rig.add(2, 100 * MIB, Placement::PrimaryDirty);
    // Paused for an hour: asset 0 gets hot (only in the first half), asset 1 stays cold;
    // the rates follow, nothing is decided.
    for i in 0..360 {
        if i < 180 {
            rig.views(0, 30.0 * 10.0 / 3600.0 * 4.0);
        }
        rig.now_ns += 10 * S;
        rig.policy.observe(rig.now_ns);
        rig.policy.check_invariants().expect("policy invariants");
    }
    assert!(
        rig.policy.rate_per_h(0) > 10.0,
        "{}",
        rig.policy.rate_per_h(0)
    );
    assert_eq!(rig.policy.residence(0), Residence::Secondary);
    assert_eq!(rig.policy.residence(1), Residence::Clean);
    assert_eq!(rig.policy.residence(2), Residence::Dirty);
    assert_eq!(rig.policy.copies_in_flight(), 0);
    // Resumed: the first tick promotes asset 0 although no request came since the last
    // observation, writes asset 2 back and demotes asset 1.
    rig.step(1.0);
    assert_eq!(rig.count(0, is_promote), 1, "{:?}", rig.log);
    assert_eq!(rig.count(1, is_drop), 1, "{:?}", rig.log);
    assert!(
        rig.log
            .iter()
            .any(|(_, d)| d.slot() == 2 && matches!(d, Decision::WriteBack { .. })),
        "{:?}",
        rig.log
    );
}

/// The default settings: the half-life, thresholds and margin are left to the policy.
fn auto_cfg(capacity: u64) -> PolicyConfig {
    PolicyConfig {
        primary_capacity_bytes: capacity,
        copy_budget_bytes_per_s: 100 * MIB,
        copy_burst_bytes: 100 * MIB,
        upload_headroom_fraction: 0.0,
        ..PolicyConfig::default()
    }
}

/// Background traffic at `per_s` requests per second spread over slots `1..n` (Zipf-like), for
/// `secs` seconds in 1 s ticks, with one request of the cold slot 0 at `cold_at_s` (if any).
/// Returns whether slot 0 was ever promoted.
fn single_request_promotes(per_s: f64, secs: usize, cold_at_s: Option<usize>) -> bool {
    let mut rig = Rig::new(auto_cfg(100_000 * MIB));
    rig.add(0, 10 * MIB, Placement::Secondary);
    for slot in 1..50 {
        rig.add(slot, 10 * MIB, Placement::Secondary);
    }
    let mut owed = 0.0;
    for t in 0..secs {
        owed += per_s;
        let mut k = 0u32;
        while owed >= 1.0 {
            owed -= 1.0;
            // A fixed spread: slot 1 most, the others less.
            rig.views(1 + (k * k + t as u32) % 49, 1.0);
            k += 1;
        }
        if cold_at_s == Some(t) {
            rig.views(0, 1.0);
        }
        rig.step(1.0);
    }
    rig.count(0, is_promote) > 0
}

#[test]
fn one_request_never_promotes_a_cold_asset_at_any_request_rate() {
    // Primary is nearly empty (filling): only the promote threshold stands in the way. The
    // half-life is the policy's choice; the threshold follows it.
    for per_s in [0.1, 100.0] {
        assert!(
            !single_request_promotes(per_s, 3 * 3600, Some(2 * 3600)),
            "one request promoted a cold asset at {per_s} requests/s"
        );
    }
    // Two requests close together do.
    let mut rig = Rig::new(auto_cfg(100_000 * MIB));
    rig.add(0, 10 * MIB, Placement::Secondary);
    rig.views(0, 1.0);
    rig.step(1.0);
    rig.views(0, 1.0);
    rig.step(1.0);
    rig.step(1.0);
    assert_eq!(rig.count(0, is_promote), 1);
    // An explicit threshold still wins: at 0.5 views/h one request promotes.
    let mut c = auto_cfg(100_000 * MIB);
    c.promote_per_h = Some(0.5);
    let mut rig = Rig::new(c);
    rig.add(0, 10 * MIB, Placement::Secondary);
    rig.views(0, 1.0);
    rig.step(1.0);
    rig.step(1.0);
    assert_eq!(rig.count(0, is_promote), 1);
}

#[test]
fn the_promote_floor_follows_the_half_life() {
    let (counters, _) = RateCounters::new(1);
    let mut c = auto_cfg(MIB);
    for (h, floor) in [(1800.0, 2.079), (7200.0, 0.520)] {
        c.half_life_s = Some(h);
        let p = TierPolicy::new(c.clone(), Arc::clone(&counters)).expect("valid");
        assert!(
            (p.promote_floor_per_h() - floor).abs() < 1e-3,
            "{h}: {}",
            p.promote_floor_per_h()
        );
        assert!((p.demote_floor_per_h() - floor / 4.0).abs() < 1e-3);
        // One view's worth of rate is below the floor, 1.5 views' reach it.
        assert!(view_rate_per_h(h) < p.promote_floor_per_h());
        assert!(p.tuning().is_none(), "a configured half-life is not tuned");
    }
    c.half_life_s = None;
    let p = TierPolicy::new(c, counters).expect("valid");
    assert_eq!(p.half_life_s(), TUNED_HALF_LIVES_S[0]);
    assert!(p.tuning().is_some());
}

/// Popularity that moves every 15 minutes keeps the half-life at its shortest: the shadow
/// primaries of longer ones hold yesterday's favourites. (Which half-life wins on steady
/// traffic is `reel simulate --all`'s table; the choice rule itself is tested in
/// `policy/tuning.rs`.)
#[test]
fn the_tuner_keeps_a_short_half_life_while_popularity_moves() {
    let mut rig = Rig::new(auto_cfg(100 * MIB));
    for slot in 0..100 {
        rig.add(slot, 10 * MIB, Placement::Secondary);
    }
    let weights: Vec<f64> = (1..=100).map(|k| 1.0 / f64::from(k)).collect();
    let total: f64 = weights.iter().sum();
    let mut rng = SimRng::new(7);
    // 6 h of 2 requests/s, Zipf(1) over ranks; every 15 min every rank moves by 37.
    for tick in 0..6 * 3600u32 {
        let shift = tick / 900 * 37;
        for _ in 0..2 {
            let mut u = rng.f64() * total;
            let mut rank = 0u32;
            while rank < 99 && u >= weights[rank as usize] {
                u -= weights[rank as usize];
                rank += 1;
            }
            rig.views((rank + shift) % 100, 1.0);
        }
        rig.step(1.0);
    }
    let t = rig.policy.tuning().expect("tuned");
    assert_eq!(rig.policy.half_life_s(), TUNED_HALF_LIVES_S[0], "{t:?}");
    // The shadows saw it: the shortest half-life served the most.
    let best = t
        .candidates
        .iter()
        .max_by(|a, b| a.shadow_byte_hit_ratio.total_cmp(&b.shadow_byte_hit_ratio))
        .expect("candidates");
    assert_eq!(best.half_life_s, TUNED_HALF_LIVES_S[0], "{t:?}");
}
