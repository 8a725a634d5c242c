//! The copy throttle: how fast background copies between the tiers may go, as one concept.
//!
//! [`CopyThrottle`] answers "how long to wait before the next copy I/O, and before the next `n`
//! bytes" from what it is told: the time (`now`, a [`Duration`] since an epoch its caller
//! chose), the copies' chunk I/O times, the foreground's device read times ([`ReadTime`], the
//! shards' histograms summed) and the budget in force. It reads no clock, sleeps nowhere and
//! does no I/O: the node's glue reads the clock, sleeps, gathers the histograms and publishes
//! the metrics, and the tests drive it with a simulated device.
//!
//! Within the budget ([`ThrottleConfig::bytes_per_s_max`], the ceiling), three things lower
//! the rate or hold copies back, and the lowest wins:
//! - [`bucket`]: the token bucket that keeps copies at the rate that applies now.
//! - [`pacing`]: slow-I/O pacing: a chunk I/O slower than [`ThrottleConfig::slow_io`] halves
//!   the rate and pauses the copies; each second without one gives some back.
//! - [`guard`]: the latency guard: copies run at the rate the foreground's p99 read time
//!   tolerates ([`ThrottleConfig::latency_rise_max`]), measured with probes without copies.
//!
//! The node also holds copies back while the shards have foreground reads in flight
//! ([`ThrottleConfig::yield_depth`]) and splits their I/O into pieces
//! ([`ThrottleConfig::io_bytes_max`]); those read the shards' state directly, so they are
//! settings here and glue there.
//!
//! **What 0 means.** The flags, the config file and `PUT /migration` say "off" with 0 (e.g.
//! `--copy-budget 0`: no ceiling; `--copy-latency-target 0`: no guard, copies run at the budget;
//! `--copy-slow-io 0`: no I/O counts as slow; `--copy-io-size 0`: whole chunks;
//! `--copy-yield-depth 0`: never wait for the foreground). Inside, the types say it:
//! [`CopyBudget::Unlimited`] and `None`. The tier policy's own budget
//! ([`crate::PolicyConfig::copy_budget_bytes_per_s`], from [`CopyBudget::bytes_per_s`]) reads 0
//! the same way: unlimited. Stopping copies is a pause (`PUT /migration?paused=true`), never a
//! budget.

pub mod bucket;
pub mod guard;
pub mod pacing;

use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use crate::units::{
    parse_count_or_off, parse_duration, parse_duration_or_off, parse_percent_or_off, parse_size,
    parse_size_or_off, OrOff,
};

pub use bucket::TokenBucket;
pub use guard::{GuardFigures, LatencyGuard, ReadTime, Step};
pub use pacing::{backoff_for, Pacing};

/// The copies' bandwidth ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyBudget {
    /// No ceiling: copies go as fast as the device and the other limits let them.
    Unlimited,
    /// At most this many bytes/s.
    BytesPerS(NonZeroU64),
}

impl CopyBudget {
    /// The budget from bytes/s as flags, config files and `PUT /migration` give it (0:
    /// unlimited).
    pub fn from_bytes_per_s(bytes_per_s: u64) -> CopyBudget {
        NonZeroU64::new(bytes_per_s).map_or(CopyBudget::Unlimited, CopyBudget::BytesPerS)
    }

    /// Bytes/s as `/migration` and `/metrics` show it (0: unlimited).
    pub fn bytes_per_s(self) -> u64 {
        match self {
            CopyBudget::Unlimited => 0,
            CopyBudget::BytesPerS(b) => b.get(),
        }
    }

    /// The ceiling in bytes/s, if there is one.
    pub fn limit(self) -> Option<f64> {
        match self {
            CopyBudget::Unlimited => None,
            CopyBudget::BytesPerS(b) => Some(b.get() as f64),
        }
    }

    /// Parses a budget as the flags and config files give it: bytes/s with an optional
    /// suffix (`256M`); 0 means unlimited.
    pub fn parse(s: &str) -> Result<CopyBudget, String> {
        parse_size(s).map(CopyBudget::from_bytes_per_s)
    }
}

/// The copy throttle's settings: the `--copy-*` flags of `reel node` (see the module docs for
/// what their 0 means). The doc comments are the flags' help.
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub struct ThrottleConfig {
    /// Bandwidth budget of background copies between the tiers, bytes/s; 0 = unlimited.
    #[arg(long = "copy-budget", value_name = "COPY_BUDGET", value_parser = CopyBudget::parse, default_value = "256M")]
    pub bytes_per_s_max: CopyBudget,
    /// A background copy submits its next chunk I/O only while the shards have fewer than this
    /// many device reads in flight for responses (waiting at most --copy-yield-max); 0 = never
    /// wait.
    #[arg(long = "copy-yield-depth", value_name = "COPY_YIELD_DEPTH", value_parser = parse_count_or_off, default_value = "1")]
    pub yield_depth: OrOff<NonZeroU64>,
    /// The longest a copy waits for foreground reads per chunk I/O, so it keeps moving under
    /// any load.
    #[arg(long = "copy-yield-max", value_name = "COPY_YIELD_MAX", value_parser = parse_duration, default_value = "5ms")]
    pub yield_wait_max: Duration,
    /// A copy chunk I/O slower than this means a congested device: the copies' rate is halved
    /// (regaining 1/8 of --copy-budget a second) and they pause 10x as long as that I/O took
    /// (at most 2 s); 0 = never.
    #[arg(long = "copy-slow-io", value_name = "COPY_SLOW_IO", value_parser = parse_duration_or_off, default_value = "50ms")]
    pub slow_io: OrOff<Duration>,
    /// The largest device I/O of a copy: chunks are read and written in pieces of at most this
    /// (whole 4 KiB blocks), one after another, so a foreground read queued behind one waits
    /// for a piece, not a chunk (on a device that serves requests in order, such as a VM's
    /// virtio disk); 0 = whole chunks.
    #[arg(long = "copy-io-size", value_name = "COPY_IO_SIZE", value_parser = parse_size_or_off, default_value = "128K")]
    pub io_bytes_max: OrOff<NonZeroUsize>,
    /// How far the p99 of the clients' device reads may rise while copies run (e.g. 5% or
    /// 0.05): within --copy-budget, copies run at the rate that keeps it there, measured as
    /// they go (while clients read, they stop for 2 s after every 4 s to measure them without
    /// copies); 0 = copies run at the budget.
    #[arg(
        long = "copy-latency-target",
        value_name = "COPY_LATENCY_TARGET",
        value_parser = parse_percent_or_off,
        default_value = "5%"
    )]
    pub latency_rise_max: OrOff<f64>,
}

impl Default for ThrottleConfig {
    /// The flags' defaults.
    fn default() -> Self {
        crate::units::defaults_of::<ThrottleConfig>()
    }
}

/// See the module docs. One per copying thread; the budget is passed to each call, so a change
/// at run time (`PUT /migration`) applies at once.
#[derive(Debug)]
pub struct CopyThrottle {
    slow_io: Option<Duration>,
    bucket: TokenBucket,
    pacing: Pacing,
    guard: LatencyGuard,
    /// When the rate was last asked for: the bucket fills, and the pace recovers, from then.
    last: Duration,
}

impl CopyThrottle {
    /// A throttle with `cfg`'s slow-I/O threshold and latency guard, its clock at `now`.
    pub fn new(cfg: &ThrottleConfig, now: Duration) -> CopyThrottle {
        CopyThrottle {
            slow_io: cfg.slow_io,
            bucket: TokenBucket::default(),
            pacing: Pacing::default(),
            guard: LatencyGuard::new(cfg.latency_rise_max),
            last: now,
        }
    }

    /// Before each copy I/O: whether to submit it now, or to wait while the latency guard
    /// measures the foreground without copies (`rt`: the foreground's read times so far).
    pub fn step(&mut self, now: Duration, rt: &ReadTime, budget: CopyBudget) -> Step {
        match budget {
            CopyBudget::Unlimited => Step::Copy,
            CopyBudget::BytesPerS(b) => self.guard.step(now, rt, b.get()),
        }
    }

    /// While no copy runs (between copies, or paused): the latency guard's free probes.
    pub fn idle(&mut self, now: Duration, rt: &ReadTime) {
        self.guard.idle(now, rt);
    }

    /// After a copy chunk I/O that ended at `now` and took `took`: how long the copies pause
    /// (zero unless it was slow, which also halves the pace).
    pub fn after_io(&mut self, now: Duration, took: Duration, budget: CopyBudget) -> Duration {
        self.guard.copied(now);
        let pause = backoff_for(took, self.slow_io);
        if !pause.is_zero() {
            self.pacing.slowed(budget);
        }
        pause
    }

    /// How long to wait before `n` more copied bytes fit the rate that applies now (zero: they
    /// are taken now). A wait takes nothing: ask again after it.
    pub fn take(&mut self, now: Duration, n: u64, budget: CopyBudget) -> Duration {
        let dt = now.saturating_sub(self.last);
        self.last = self.last.max(now);
        let Some(paced) = self.pacing.rate(budget, dt) else {
            return Duration::ZERO;
        };
        let rate = paced.min(self.guard.rate(budget.bytes_per_s()));
        self.bucket.take(n, rate, dt)
    }

    /// The paced rate in bytes/s, or 0 while the budget applies (for `/metrics`).
    pub fn paced_bytes_per_s(&self) -> u64 {
        self.pacing.paced_bytes_per_s()
    }

    /// What `/metrics` shows of the latency guard.
    pub fn guard_figures(&self) -> GuardFigures {
        self.guard.figures()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn zero_means_off_as_the_types_say() {
        assert_eq!(CopyBudget::from_bytes_per_s(0), CopyBudget::Unlimited);
        assert_eq!(CopyBudget::Unlimited.bytes_per_s(), 0);
        assert_eq!(CopyBudget::Unlimited.limit(), None);
        let b = CopyBudget::from_bytes_per_s(8 * MIB);
        assert_eq!(
            (b.bytes_per_s(), b.limit()),
            (8 * MIB, Some(8.0 * MIB as f64))
        );
    }

    #[test]
    fn an_unlimited_budget_is_neither_guarded_nor_paced_nor_waited_for() {
        let mut t = CopyThrottle::new(&ThrottleConfig::default(), Duration::ZERO);
        let rt = ReadTime::default();
        let s = Duration::from_secs;
        for i in 0..100 {
            let now = s(i);
            assert_eq!(t.step(now, &rt, CopyBudget::Unlimited), Step::Copy);
            assert_eq!(t.take(now, 1 << 30, CopyBudget::Unlimited), Duration::ZERO);
            let pause = t.after_io(now, s(1), CopyBudget::Unlimited);
            assert_eq!(pause, pacing::BACKOFF_MAX, "a slow I/O still pauses");
        }
        assert_eq!(t.paced_bytes_per_s(), 0);
        assert_eq!(t.guard_figures().rate, 0, "no guard");
    }

    #[test]
    fn the_lowest_of_budget_pace_and_guard_sets_the_wait() {
        let budget = CopyBudget::from_bytes_per_s(64 * MIB);
        let ms = Duration::from_millis;
        // Without a guard: the budget, then half of it after a slow I/O.
        let cfg = ThrottleConfig {
            latency_rise_max: None,
            ..ThrottleConfig::default()
        };
        let mut t = CopyThrottle::new(&cfg, Duration::ZERO);
        assert_eq!(t.take(ms(0), MIB, budget), ms(1000) / 64);
        assert_eq!(t.take(ms(1000) / 64, MIB, budget), Duration::ZERO);
        assert_eq!(
            t.after_io(ms(20), ms(10), budget),
            Duration::ZERO,
            "not slow"
        );
        assert_eq!(t.after_io(ms(20), ms(80), budget), ms(800));
        assert_eq!(t.paced_bytes_per_s(), 32 * MIB);
        // With the guard: copies start at 1/8 of the budget.
        let mut t = CopyThrottle::new(&ThrottleConfig::default(), Duration::ZERO);
        assert_eq!(t.take(ms(0), MIB, budget), ms(1000) / 8);
        assert_eq!(t.guard_figures().rate, 8 * MIB);
    }
}
