//! The copies' latency guard: background copies between the tiers run at the rate the
//! foreground's device reads tolerate, measured as they go, with `--copy-budget` as the ceiling.
//!
//! Why: a fixed budget is right for one device on one day only. On this project's VM, 16 MiB/s
//! kept the serving p99 within 10% on a day the disk read 2–3 GB/s, and missed it (1.12×) on a
//! day it read 0.5–1 GB/s; an NVMe primary takes far more. The rate a device tolerates next to
//! a given load is found by measuring that load's reads, not by configuration.
//!
//! How: the shards time every device read for a response, submission to completion
//! (the node's `ThreadMetrics::device_read_timed`, into a histogram of [`BUCKETS`]
//! buckets, 16 an octave). While copies run, they alternate copying windows of [`WINDOW`]
//! with probes: [`SETTLE`] with no copy I/O (the device finishes the copies' writes), then
//! [`PROBE`] more while the guard measures. Each window is paired with the probes on either
//! side of it, so the comparison is paired in time: a device's read time can drift by tens of
//! percent over tens of seconds with no copies at all, so a baseline even 20 s old is not one
//! (docs/decisions/2026-11-24-latency-guard-on-p99.md). Time with the copies idle or paused
//! gives the probe before the next window for free.
//!
//! The statistic is the [`QUANTILE`] (p99) of the read times, pooled over the windows and over
//! their probes: the copies' cost is in the tail (the migration bench saw p50 up 5–8% where
//! p99 rose 17%), and a guard on the mean let copies run at 180–256 MiB/s, its windows' mean
//! within 9% of the probes'. After [`PAIRS`] windows at one rate (and at least [`MIN_POOL`]
//! reads on each side), the windows' p99 over the probes' decides: above 1 + the tolerance
//! (`--copy-latency-target`) cuts the rate by [`DECREASE`], anything else raises it by
//! [`INCREASE`], up to the budget. A slowdown of more than [`CLEAR_FACTOR`] times the
//! tolerance halves the rate after the first pair that shows it. A window whose foreground made
//! too few reads to measure needs no probe: nobody to protect, so the rate goes to the budget
//! at once. The rate never falls below 1/[`FLOOR_DIVISOR`] of the budget, so copies always finish.
//!
//! The guard is plain code over the clock and read-time samples it is given (`now`: the time
//! since an epoch its caller chose), so the tests below drive it with a simulated device.

use std::time::Duration;

/// How long copies run between two probes.
pub const WINDOW: Duration = Duration::from_secs(4);
/// How long copies stop before a probe measures, so their writes have left the device.
pub const SETTLE: Duration = Duration::from_millis(500);
/// How long a probe measures the foreground with no copy I/O.
pub const PROBE: Duration = Duration::from_millis(1500);
/// Windows (each with its probes) measured at one rate before the rate changes.
pub const PAIRS: u32 = 5;
/// A window or probe with fewer foreground reads than this measures nothing.
pub const MIN_READS: u64 = 40;
/// A decision needs at least this many reads pooled over the windows, and over the probes.
pub const MIN_POOL: u64 = 2000;
/// The read-time quantile compared.
pub const QUANTILE: f64 = 0.99;
/// The rate after too slow a foreground, as a fraction of the rate before.
pub const DECREASE: f64 = 0.7;
/// A foreground slowed by more than this many times the tolerance is plain from one pair: the
/// rate is halved at once (copies that start at the budget, under a load that was too light to
/// measure a moment before, would otherwise run at it for [`PAIRS`] windows).
pub const CLEAR_FACTOR: f64 = 4.0;
/// The rate after such a clear slowdown.
pub const CLEAR_DECREASE: f64 = 0.5;
/// The rate after a foreground within the tolerance, as a multiple of the rate before.
pub const INCREASE: f64 = 1.2;
/// The rate never falls below the budget divided by this.
pub const FLOOR_DIVISOR: f64 = 64.0;
/// Copies start at the budget divided by this and work up.
const START_DIVISOR: f64 = 8.0;
/// A window that lasted more than this many times [`WINDOW`] spent most of its time with no
/// copies running (idle between copies): it measures nothing.
const WINDOW_STRETCH_MAX: u32 = 3;
/// A probe ended longer ago than this before a window's probe is not the one before that
/// window (the copies were idle or paused in between without measuring).
const ADJACENT: Duration = Duration::from_secs(16);

/// Buckets of the read-time histogram: 16 an octave from `LOWEST_NS` (8 µs) to 0.5 s; reads
/// outside fall in the first or last.
pub const BUCKETS: usize = 256;
const PER_OCTAVE: f64 = 16.0;
const LOWEST_NS: f64 = 8192.0;

/// The histogram bucket of a read that took `ns`.
pub fn bucket_of(ns: u64) -> usize {
    let x = (ns.max(1) as f64 / LOWEST_NS).log2() * PER_OCTAVE;
    if x <= 0.0 {
        0
    } else {
        (x as usize).min(BUCKETS - 1)
    }
}

/// Cumulative foreground device reads of a node, by read time (how many in all is their sum).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadTime {
    pub hist: Box<[u64; BUCKETS]>,
}

impl Default for ReadTime {
    fn default() -> Self {
        ReadTime {
            hist: Box::new([0; BUCKETS]),
        }
    }
}

impl ReadTime {
    /// Counts `n` reads that took `ns` each.
    pub fn add(&mut self, ns: u64, n: u64) {
        let b = &mut self.hist[bucket_of(ns)];
        *b = b.wrapping_add(n);
    }
}

/// The reads between two [`ReadTime`]s, by bucket.
#[derive(Clone, Debug)]
struct Hist {
    reads: u64,
    counts: Box<[u64; BUCKETS]>,
}

impl Hist {
    fn empty() -> Hist {
        Hist {
            reads: 0,
            counts: Box::new([0; BUCKETS]),
        }
    }

    fn between(later: &ReadTime, earlier: &ReadTime) -> Hist {
        let mut h = Hist::empty();
        for (i, c) in h.counts.iter_mut().enumerate() {
            *c = later.hist[i].wrapping_sub(earlier.hist[i]);
            if *c > u64::MAX / 2 {
                *c = 0; // a counter seen going back: count nothing
            }
            h.reads += *c;
        }
        h
    }

    fn add(&mut self, other: &Hist) {
        for (c, o) in self.counts.iter_mut().zip(other.counts.iter()) {
            *c += o;
        }
        self.reads += other.reads;
    }

    fn measurable(&self) -> bool {
        self.reads >= MIN_READS
    }

    /// The `q` quantile in ns (log-interpolated within its bucket), if any reads.
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.reads == 0 {
            return None;
        }
        let target = q * self.reads as f64;
        let mut below = 0.0;
        for (i, &c) in self.counts.iter().enumerate() {
            let c = c as f64;
            if c > 0.0 && below + c >= target {
                let frac = ((target - below) / c).clamp(0.0, 1.0);
                return Some(LOWEST_NS * ((i as f64 + frac) / PER_OCTAVE).exp2());
            }
            below += c;
        }
        Some(LOWEST_NS * (BUCKETS as f64 / PER_OCTAVE).exp2())
    }
}

/// What the copies do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Submit the next copy I/O (at [`LatencyGuard::rate`]).
    Copy,
    /// Submit no copy I/O for this long, then ask again.
    Wait(Duration),
}

#[derive(Clone, Debug)]
enum Phase {
    /// Copies run; the current window began at `start`, with the read times at `at`.
    Copying { start: Duration, at: ReadTime },
    /// No copy I/O after a window whose reads were `window`: the device settles until
    /// `settle_end`, then the guard measures for [`PROBE`] from `at` (taken then).
    Probing {
        window: Hist,
        settle_end: Duration,
        at: Option<(Duration, ReadTime)>,
    },
}

/// What `/metrics` shows of the guard.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GuardFigures {
    /// The rate copies may use now, bytes/s (0: no guard, the budget applies).
    pub rate: u64,
    /// The foreground's p99 device read time in the last probe (no copy I/O), ns.
    pub baseline_ns: u64,
    /// The last decision's copying windows' p99 read time over their probes' (0: none yet).
    pub last_ratio: f64,
    pub probes: u64,
    pub cuts: u64,
}

/// See the module docs.
#[derive(Debug)]
pub struct LatencyGuard {
    /// How far above the probes' the windows' p99 read time may be (0.05: 5%); `None`: no
    /// guard, copies run at the budget.
    tolerance: Option<f64>,
    /// The rate copies may use, bytes/s (`None` until the first copy under a budget).
    rate: Option<f64>,
    phase: Option<Phase>,
    /// The last probe's reads (if enough to measure) and when it ended.
    before: Option<(Hist, Duration)>,
    /// The reads of the windows measured at the current rate, and of the probes around them.
    windows: Hist,
    probes: Hist,
    pairs: u32,
    /// When the last copy I/O finished.
    last_copy_io: Option<Duration>,
    /// Where an idle probe began.
    idle_mark: Option<(Duration, ReadTime)>,
    figures: GuardFigures,
}

impl LatencyGuard {
    /// A guard that keeps the rise of the foreground's p99 read time within `tolerance` (a
    /// fraction; `None`, or one that is not a positive number: no guard).
    pub fn new(tolerance: Option<f64>) -> LatencyGuard {
        LatencyGuard {
            tolerance: tolerance.filter(|t| t.is_finite() && *t > 0.0),
            rate: None,
            phase: None,
            before: None,
            windows: Hist::empty(),
            probes: Hist::empty(),
            pairs: 0,
            last_copy_io: None,
            idle_mark: None,
            figures: GuardFigures::default(),
        }
    }

    /// The tolerance, if the guard is on.
    pub fn tolerance(&self) -> Option<f64> {
        self.tolerance
    }

    /// The rate copies may use now under a budget of `budget` bytes/s (an unlimited budget has
    /// no guard: [`super::CopyThrottle`] does not ask).
    pub fn rate(&mut self, budget: u64) -> f64 {
        if self.tolerance.is_none() {
            return budget as f64;
        }
        let b = budget as f64;
        let r = self
            .rate
            .unwrap_or(b / START_DIVISOR)
            .clamp(b / FLOOR_DIVISOR, b);
        self.rate = Some(r);
        self.figures.rate = r as u64;
        r
    }

    /// Before each copy I/O: whether to submit it now (`now` and the node's read times `rt`).
    pub fn step(&mut self, now: Duration, rt: &ReadTime, budget: u64) -> Step {
        let Some(tolerance) = self.tolerance else {
            return Step::Copy;
        };
        self.idle_mark = None;
        let b = budget as f64;
        match self.phase.take() {
            None => {
                self.phase = Some(Phase::Copying {
                    start: now,
                    at: rt.clone(),
                });
                Step::Copy
            }
            Some(Phase::Copying { start, at }) => {
                let took = now.saturating_sub(start);
                if took < WINDOW {
                    self.phase = Some(Phase::Copying { start, at });
                    return Step::Copy;
                }
                let window = Hist::between(rt, &at);
                if !window.measurable() {
                    // Too light a foreground to measure: nobody to protect.
                    self.set_rate(b, b);
                } else if took <= WINDOW * WINDOW_STRETCH_MAX {
                    return self.start_probe(now, rt, window);
                }
                // (Else mostly idle between copies: it measures nothing.) A fresh window.
                self.phase = Some(Phase::Copying {
                    start: now,
                    at: rt.clone(),
                });
                Step::Copy
            }
            Some(Phase::Probing {
                window,
                settle_end,
                at,
            }) => {
                if now < settle_end {
                    self.phase = Some(Phase::Probing {
                        window,
                        settle_end,
                        at,
                    });
                    return Step::Wait(settle_end - now);
                }
                let Some((from, at)) = at else {
                    self.phase = Some(Phase::Probing {
                        window,
                        settle_end,
                        at: Some((now, rt.clone())),
                    });
                    return Step::Wait(PROBE);
                };
                let end = from + PROBE;
                if now < end {
                    self.phase = Some(Phase::Probing {
                        window,
                        settle_end,
                        at: Some((from, at)),
                    });
                    return Step::Wait(end - now);
                }
                self.figures.probes += 1;
                let probe = Hist::between(rt, &at);
                let adjacent = self
                    .before
                    .take()
                    .filter(|(_, t)| now.saturating_sub(*t) <= ADJACENT);
                if let Some((before, _)) = adjacent.filter(|_| probe.measurable()) {
                    self.windows.add(&window);
                    self.probes.add(&before);
                    self.probes.add(&probe);
                    self.pairs += 1;
                    self.maybe_decide(b, tolerance);
                }
                self.note_probe(probe, now);
                self.phase = Some(Phase::Copying {
                    start: now,
                    at: rt.clone(),
                });
                Step::Copy
            }
        }
    }

    fn start_probe(&mut self, now: Duration, rt: &ReadTime, window: Hist) -> Step {
        let settled = self.last_copy_io.map_or(now, |t| t + SETTLE);
        if settled <= now {
            self.phase = Some(Phase::Probing {
                window,
                settle_end: now,
                at: Some((now, rt.clone())),
            });
            return Step::Wait(PROBE);
        }
        self.phase = Some(Phase::Probing {
            window,
            settle_end: settled,
            at: None,
        });
        Step::Wait(settled - now)
    }

    /// After each pair: cut or raise the rate once the pooled reads tell.
    fn maybe_decide(&mut self, budget: f64, tolerance: f64) {
        let (Some(w), Some(p)) = (
            self.windows.quantile(QUANTILE),
            self.probes.quantile(QUANTILE),
        ) else {
            return;
        };
        let ratio = w / p;
        let pooled = self.windows.reads.min(self.probes.reads / 2);
        let clear = ratio > 1.0 + CLEAR_FACTOR * tolerance && pooled >= MIN_POOL / 4;
        let enough = self.pairs >= PAIRS && pooled >= MIN_POOL;
        let r = self.rate.unwrap_or(budget / START_DIVISOR);
        if clear {
            self.figures.last_ratio = ratio;
            self.figures.cuts += 1;
            self.set_rate(r * CLEAR_DECREASE, budget);
        } else if enough {
            self.figures.last_ratio = ratio;
            if ratio > 1.0 + tolerance {
                self.figures.cuts += 1;
                self.set_rate(r * DECREASE, budget);
            } else {
                self.set_rate(r * INCREASE, budget);
            }
        } else if self.pairs >= 4 * PAIRS {
            // Too few reads to tell in 20 windows: a light foreground, little to protect.
            self.set_rate(r * INCREASE, budget);
        }
    }

    /// A new rate: the windows measured at the old one no longer count.
    fn set_rate(&mut self, rate: f64, budget: f64) {
        let r = rate.clamp(budget / FLOOR_DIVISOR, budget);
        self.rate = Some(r);
        self.figures.rate = r as u64;
        self.windows = Hist::empty();
        self.probes = Hist::empty();
        self.pairs = 0;
    }

    fn note_probe(&mut self, probe: Hist, now: Duration) {
        if let Some(q) = probe.quantile(QUANTILE).filter(|_| probe.measurable()) {
            self.figures.baseline_ns = q as u64;
        }
        self.before = probe.measurable().then_some((probe, now));
    }

    /// After each copy I/O.
    pub fn copied(&mut self, now: Duration) {
        self.last_copy_io = Some(now);
    }

    /// While no copy runs (called every so often: between copies, and while paused): once
    /// [`SETTLE`] has passed since the last copy I/O, each [`PROBE`] is a probe, the one before
    /// the next window, and the next copy starts a fresh window. A shorter gap (the scheduler
    /// between two copies) leaves the window running.
    pub fn idle(&mut self, now: Duration, rt: &ReadTime) {
        if self.tolerance.is_none()
            || self
                .last_copy_io
                .is_some_and(|t| now.saturating_sub(t) < SETTLE)
        {
            return;
        }
        if matches!(self.phase, Some(Phase::Copying { .. })) {
            self.phase = None;
        }
        match self.idle_mark.take() {
            Some((t, at)) if now.saturating_sub(t) >= PROBE => {
                self.note_probe(Hist::between(rt, &at), now);
                self.idle_mark = Some((now, rt.clone()));
            }
            Some(mark) => self.idle_mark = Some(mark),
            None => self.idle_mark = Some((now, rt.clone())),
        }
    }

    pub fn figures(&self) -> GuardFigures {
        self.figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = (1 << 20) as f64;

    /// A device whose foreground reads take `base_ns` (spread ×0.5 to ×2.7 around it), plus
    /// `per_mib_s` of that for each MiB/s of copies, times a slow drift of ±`drift` over 40 s;
    /// `reads_per_s` of them a second.
    struct Device {
        base_ns: f64,
        per_mib_s: f64,
        drift: f64,
        reads_per_s: u64,
        t: f64,
        rt: ReadTime,
        seed: u64,
    }

    impl Device {
        /// Uniform in [0, 1), from a fixed seed: the tests are deterministic.
        fn uniform(&mut self) -> f64 {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            (self.seed >> 11) as f64 / (1u64 << 53) as f64
        }

        /// `dt` passes with copies at `copy_rate` bytes/s.
        fn run(&mut self, dt: Duration, copy_rate: f64) {
            let reads = (self.reads_per_s as f64 * dt.as_secs_f64()) as u64;
            let drift = 1.0 + self.drift * (self.t * std::f64::consts::TAU / 40.0).sin();
            let typical = self.base_ns * drift * self.ratio(copy_rate);
            for _ in 0..reads {
                // Roughly log-normal: a sum of three uniforms in the exponent.
                let z = self.uniform() + self.uniform() + self.uniform() - 1.5;
                self.rt.add((typical * (0.6 * z).exp()) as u64, 1);
            }
            self.t += dt.as_secs_f64();
        }

        /// How much copies at `copy_rate` slow every read.
        fn ratio(&self, copy_rate: f64) -> f64 {
            1.0 + self.per_mib_s * copy_rate / MIB
        }
    }

    fn device(per_mib_s: f64, drift: f64, reads_per_s: u64) -> Device {
        Device {
            base_ns: 2e6,
            per_mib_s,
            drift,
            reads_per_s,
            t: 0.0,
            rt: ReadTime::default(),
            seed: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// What copies under the guard did for a while.
    struct Run {
        /// Bytes/s copied over the whole time.
        mean: f64,
        /// Bytes/s copied while copying (probes excluded).
        while_copying: f64,
        /// The guard's rate at the end.
        end: f64,
    }

    /// Drives copies under the guard for `secs` in 100 ms steps from `t0`.
    fn drive(g: &mut LatencyGuard, dev: &mut Device, budget: u64, t0: Duration, secs: u64) -> Run {
        let mut now = t0;
        let step = Duration::from_millis(100);
        let (mut copied, mut copying) = (0.0, 0.0);
        while now < t0 + Duration::from_secs(secs) {
            match g.step(now, &dev.rt, budget) {
                Step::Copy => {
                    let r = g.rate(budget);
                    dev.run(step, r);
                    copied += r * step.as_secs_f64();
                    copying += step.as_secs_f64();
                    now += step;
                    g.copied(now);
                }
                Step::Wait(d) => {
                    dev.run(d, 0.0);
                    now += d;
                }
            }
        }
        Run {
            mean: copied / secs as f64,
            while_copying: copied / copying.max(1e-9),
            end: g.rate(budget),
        }
    }

    /// A guard with a 5% tolerance, driven from time zero for `secs`.
    fn fresh(dev: &mut Device, budget: u64, secs: u64) -> (LatencyGuard, Run) {
        let mut g = LatencyGuard::new(Some(0.05));
        let run = drive(&mut g, dev, budget, Duration::ZERO, secs);
        (g, run)
    }

    #[test]
    fn quantiles_come_from_the_histogram_within_a_bucket() {
        let mut rt = ReadTime::default();
        for ms in 1..=100u64 {
            rt.add(ms * 1_000_000, 1);
        }
        let h = Hist::between(&rt, &ReadTime::default());
        assert_eq!(h.reads, 100);
        let bucket = (1.0f64 / PER_OCTAVE).exp2();
        for (q, want) in [(0.5, 50e6), (0.9, 90e6), (0.99, 99e6)] {
            let got = h.quantile(q).expect("reads");
            assert!(
                got / want < bucket && want / got < bucket,
                "q {q}: {got} vs {want}"
            );
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
        assert_eq!(Hist::empty().quantile(0.99), None);
    }

    #[test]
    fn copies_settle_where_the_foreground_stays_within_the_tolerance_despite_drift() {
        // Each MiB/s of copies slows reads by 0.5%: 5% at 10 MiB/s. The foreground itself
        // drifts ±25% over 40 s, 50 times the copies' effect at 1 MiB/s.
        let budget = 256 << 20;
        let mut dev = device(0.005, 0.25, 700);
        let mut g = LatencyGuard::new(Some(0.05));
        let t0 = Duration::ZERO;
        drive(&mut g, &mut dev, budget, t0, 300);
        let run = drive(
            &mut g,
            &mut dev,
            budget,
            t0 + Duration::from_secs(300),
            1800,
        );
        let f = g.figures();
        assert!(f.probes >= 200, "a probe after each window: {f:?}");
        assert!(f.cuts > 0, "{f:?}");
        assert!(
            dev.ratio(run.while_copying) <= 1.05,
            "copies at {:.1} MiB/s slow reads {:.3}x",
            run.while_copying / MIB,
            dev.ratio(run.while_copying)
        );
        assert!(
            run.while_copying >= 5.0 * MIB && run.mean >= 3.0 * MIB,
            "copies use at least half what the tolerance allows: {:.1} MiB/s while copying, \
             {:.1} MiB/s overall",
            run.while_copying / MIB,
            run.mean / MIB
        );
    }

    #[test]
    fn a_device_that_copies_cannot_hurt_gets_the_whole_budget() {
        let budget = 64 << 20;
        let mut dev = device(0.0, 0.0, 700);
        let (g, run) = fresh(&mut dev, budget, 600);
        assert_eq!(run.end, budget as f64);
        assert_eq!(g.figures().cuts, 0);
        // With the foreground drifting ±25% on its own, a false cut is rare: one in 10 min.
        let mut dev = device(0.0, 0.25, 700);
        let (g, run) = fresh(&mut dev, budget, 600);
        assert!(g.figures().cuts <= 1, "{:?}", g.figures());
        assert!(
            run.while_copying >= 0.6 * budget as f64,
            "{:.1} MiB/s",
            run.while_copying / MIB
        );
    }

    #[test]
    fn a_foreground_too_light_to_measure_gets_the_budget_at_once_and_no_probes() {
        let budget = 64 << 20;
        let mut dev = device(1.0, 0.0, 5);
        let (g, run) = fresh(&mut dev, budget, 60);
        assert_eq!(run.end, budget as f64, "after the first window");
        assert_eq!(g.figures().probes, 0);
        assert!(run.mean > 0.9 * budget as f64, "{}", run.mean / MIB);
    }

    #[test]
    fn a_load_arriving_while_copies_run_at_the_budget_halves_them_after_one_pair() {
        // No one reads, so copies go to the budget; then a load arrives that the copies slow
        // down by 0.5% per MiB/s: at 64 MiB/s, 32%.
        let budget = 64 << 20;
        let mut dev = device(0.005, 0.0, 0);
        let mut g = LatencyGuard::new(Some(0.05));
        let t0 = Duration::ZERO;
        let run = drive(&mut g, &mut dev, budget, t0, 10);
        assert_eq!(run.end, budget as f64);
        dev.reads_per_s = 700;
        // A window, its probe (no `before` yet), then a window with a probe on either side.
        let run = drive(&mut g, &mut dev, budget, t0 + Duration::from_secs(10), 13);
        assert_eq!(g.figures().cuts, 1, "{:?}", g.figures());
        assert_eq!(run.end, budget as f64 * CLEAR_DECREASE);
        // Then down to where the load is near the tolerance, in about a minute.
        let run = drive(&mut g, &mut dev, budget, t0 + Duration::from_secs(23), 60);
        assert!(dev.ratio(run.end) <= 1.05 * 1.25, "{}", run.end / MIB);
    }

    #[test]
    fn the_rate_stays_between_the_floor_and_the_budget() {
        // Any copy rate hurts a lot: the rate sinks to the floor and stays there.
        let budget = 64 << 20;
        let mut dev = device(10.0, 0.0, 700);
        let (mut g, run) = fresh(&mut dev, budget, 600);
        assert_eq!(run.end, budget as f64 / FLOOR_DIVISOR);
        // A lower budget caps the rate at once; no guard means the budget (and an unlimited
        // budget has none: see the throttle's tests).
        assert_eq!(g.rate(budget / 128), (budget / 128) as f64);
        let mut off = LatencyGuard::new(None);
        assert_eq!(off.step(Duration::ZERO, &dev.rt, budget), Step::Copy);
        assert_eq!(off.rate(budget), budget as f64);
    }

    #[test]
    fn windows_alternate_with_probes_that_wait_for_the_copies_writes_to_settle() {
        let budget = 64 << 20;
        let mut dev = device(0.0, 0.0, 700);
        let mut g = LatencyGuard::new(Some(0.05));
        let t0 = Duration::ZERO;
        let mut now = t0;
        assert_eq!(g.step(now, &dev.rt, budget), Step::Copy, "no probe first");
        let ms = Duration::from_millis;
        for window in 0..3u64 {
            let start = now;
            while now < start + WINDOW {
                dev.run(ms(100), g.rate(budget));
                now += ms(100);
                g.copied(now);
                if now < start + WINDOW {
                    assert_eq!(g.step(now, &dev.rt, budget), Step::Copy);
                }
            }
            assert_eq!(g.step(now, &dev.rt, budget), Step::Wait(SETTLE), "{window}");
            dev.run(SETTLE, 0.0);
            now += SETTLE;
            assert_eq!(g.step(now, &dev.rt, budget), Step::Wait(PROBE));
            dev.run(PROBE / 2, 0.0);
            now += PROBE / 2;
            assert_eq!(g.step(now, &dev.rt, budget), Step::Wait(PROBE / 2));
            dev.run(PROBE / 2, 0.0);
            now += PROBE / 2;
            assert_eq!(g.step(now, &dev.rt, budget), Step::Copy);
            assert_eq!(g.figures().probes, window + 1);
        }
    }

    #[test]
    fn a_window_runs_on_across_the_short_gaps_between_copies() {
        // Copies of 0.5 s with the scheduler's tick between them: one window, then a probe.
        let budget = 64 << 20;
        let mut dev = device(0.0, 0.0, 700);
        let mut g = LatencyGuard::new(Some(0.05));
        let t0 = Duration::ZERO;
        let mut now = t0;
        let ms = Duration::from_millis;
        for copy in 0..8 {
            for _ in 0..5 {
                assert_eq!(g.step(now, &dev.rt, budget), Step::Copy, "copy {copy}");
                dev.run(ms(100), g.rate(budget));
                now += ms(100);
                g.copied(now);
            }
            g.idle(now + ms(1), &dev.rt);
        }
        assert_eq!(now, t0 + WINDOW);
        assert_eq!(g.step(now, &dev.rt, budget), Step::Wait(SETTLE));
    }

    #[test]
    fn idle_time_is_the_probe_before_the_next_window() {
        let budget = 64 << 20;
        let t0 = Duration::ZERO;
        let mut rt = ReadTime::default();
        let mut g = LatencyGuard::new(Some(0.05));
        g.copied(t0);
        // Within SETTLE of the last copy I/O, idle time measures nothing; after it, each
        // PROBE of it is a probe.
        g.idle(t0 + SETTLE / 2, &rt);
        g.idle(t0 + SETTLE, &rt);
        rt.add(3_000_000, 1000);
        g.idle(t0 + SETTLE + PROBE, &rt);
        let base = g.figures().baseline_ns as f64;
        assert!((base / 3e6 - 1.0).abs() < 0.05, "{base}");
        // The next window is paired with it: 5 windows at 3.45 ms between probes at 3 ms
        // (15% up) cut the rate.
        let mut now = t0 + SETTLE + PROBE;
        let start_rate = g.rate(budget);
        for _ in 0..PAIRS {
            assert_eq!(g.step(now, &rt, budget), Step::Copy);
            now += WINDOW;
            rt.add(3_450_000, 1000);
            g.copied(now);
            assert_eq!(g.step(now, &rt, budget), Step::Wait(SETTLE));
            now += SETTLE;
            assert_eq!(g.step(now, &rt, budget), Step::Wait(PROBE));
            now += PROBE;
            rt.add(3_000_000, 1000);
        }
        assert_eq!(g.step(now, &rt, budget), Step::Copy);
        assert_eq!(g.figures().cuts, 1, "{:?}", g.figures());
        let ratio = g.figures().last_ratio;
        assert!((1.05..1.2).contains(&ratio), "{ratio}");
        assert_eq!(g.rate(budget), start_rate * DECREASE);
        // An idle probe long before a window is not paired with it.
        let later = now + ADJACENT * 4;
        g.idle(later, &rt);
        assert_eq!(g.step(later, &rt, budget), Step::Copy);
        rt.add(9_000_000, 1000);
        let end = later + WINDOW;
        g.copied(end);
        assert_eq!(g.step(end, &rt, budget), Step::Wait(SETTLE));
        assert_eq!(g.step(end + SETTLE, &rt, budget), Step::Wait(PROBE));
        rt.add(3_000_000, 1000);
        assert_eq!(g.step(end + SETTLE + PROBE, &rt, budget), Step::Copy);
        assert_eq!(g.figures().cuts, 1, "the lone window decides nothing");
    }
}
