//! Copies between the tiers, and the lock that keeps them consistent with deletes.
//!
//! [`copy_data`] copies one asset version from one volume to the other, chunk by chunk: each
//! chunk is read from the source straight into the registered buffer of an [`reel_store::Ingest`]
//! (no memcpy), checked against its stored crc32c (which the copy records as is), and written
//! from the same buffer, under a bandwidth [`Budget`], each chunk I/O first yielding to the
//! shards' foreground reads, and each waited for before the next: one copy I/O in the device
//! queue at a time. The copy comes back prepared (written, not durable, invisible); the
//! migration scheduler ([`super::scheduler`]) publishes finished copies in groups, under
//! [`TierLock`], each only if the source still holds the version copied.
//!
//! A delete takes the same lock and removes the secondary copy before the primary one, so a
//! copy can never resurrect a deleted asset, and a crash between the two leaves the asset on the
//! primary only (the delete was not acknowledged), never a stale copy on the secondary alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::guard::{LatencyGuard, Step};
use super::Shared;
use reel_store::catalog::Asset;
use reel_store::driver::Driver;
use reel_store::error::EngineError;
use reel_store::ingest::{Prepared, PutOptions};
use reel_store::volume::Volume;

/// Serializes publishing a secondary copy against deleting an asset from both tiers.
#[derive(Default)]
pub struct TierLock(Mutex<()>);

impl TierLock {
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether the secondary holds the same version as the primary (same size and content checksum).
pub fn same_version(a: &Asset, b: &Asset) -> bool {
    a.size() == b.size() && a.checksum() == b.checksum()
}

/// Counters of the migration scheduler (single writer).
#[derive(Default)]
pub struct MigrationStats {
    pub promotions: AtomicU64,
    pub write_backs: AtomicU64,
    pub demotions: AtomicU64,
    pub evictions: AtomicU64,
    pub failures: AtomicU64,
    /// Bytes written by copies as they go (a copy declined at its commit still counted).
    pub bytes_copied: AtomicU64,
    /// Group commits of finished copies (each: one data sync and one journal write per tier).
    pub commits: AtomicU64,
    /// Time spent in those commits (their device flushes stall foreground reads meanwhile).
    pub commit_ns: AtomicU64,
    /// Time copies spent waiting for foreground reads to drain.
    pub yield_wait_ns: AtomicU64,
    /// Time copies paused after a slow chunk I/O.
    pub backoff_ns: AtomicU64,
    /// Chunk I/Os of copies slower than `--copy-slow-io`.
    pub slow_ios: AtomicU64,
    /// The copies' paced rate after slow I/Os (bytes/s; 0 while the budget applies).
    pub paced_bytes_per_s: AtomicU64,
    /// The rate the latency guard allows copies now (bytes/s; 0: no guard).
    pub guard_bytes_per_s: AtomicU64,
    /// The foreground's p99 device read time in the guard's last probe (ns).
    pub guard_baseline_ns: AtomicU64,
    /// The copying windows' p99 device read time over their probes', at the guard's last
    /// decision, in thousandths.
    pub guard_ratio_milli: AtomicU64,
    /// The guard's probes (copies stopped to measure the foreground without them) and the
    /// time they took.
    pub guard_probes: AtomicU64,
    pub guard_probe_ns: AtomicU64,
    /// The guard's decisions that found the foreground above the tolerance (each cut the rate).
    pub guard_cuts: AtomicU64,
}

/// How many times as long as a slow chunk I/O took a copy pauses after it.
pub const BACKOFF_FACTOR: u32 = 10;
/// The longest pause after one slow chunk I/O.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// After a slow chunk I/O the copies' rate is at most this fraction of what it was (halved).
const PACE_DECREASE: f64 = 0.5;
/// The paced rate never falls below the budget divided by this.
const PACE_FLOOR_DIVISOR: f64 = 64.0;
/// While no chunk I/O is slow the paced rate regains this fraction of the budget per second.
const PACE_INCREASE_PER_S: f64 = 0.125;

/// The pause after a copy chunk I/O that took `took` (zero unless it was slower than
/// `slow`, which 0 turns off).
fn backoff_for(took: Duration, slow: Duration) -> Duration {
    if slow.is_zero() || took <= slow {
        return Duration::ZERO;
    }
    (took * BACKOFF_FACTOR).min(BACKOFF_MAX)
}

/// What an operator may change about migration while the node runs (`PUT /migration`); not
/// persisted: a restart takes the configured values again.
pub struct MigrationControl {
    /// While set, no copy writes (an unfinished one waits at its next chunk), the policy makes
    /// no decisions, and no commit falls due under load (one still happens when the node is
    /// quiet, or at a graceful stop).
    paused: AtomicBool,
    /// The copies' shared budget in bytes/s (0: unlimited).
    copy_budget: AtomicU64,
}

impl MigrationControl {
    pub fn new(copy_budget: u64) -> MigrationControl {
        MigrationControl {
            paused: AtomicBool::new(false),
            copy_budget: AtomicU64::new(copy_budget),
        }
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Relaxed)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Relaxed);
    }

    pub fn copy_budget(&self) -> u64 {
        self.copy_budget.load(Relaxed)
    }

    pub fn set_copy_budget(&self, bytes_per_s: u64) {
        self.copy_budget.store(bytes_per_s, Relaxed);
    }
}

/// A token bucket over wall time: `take(n)` sleeps until `n` bytes fit the budget, whose rate
/// it reads from the [`MigrationControl`] as it goes (so a change applies at once), or the lower
/// paced rate after slow chunk I/Os.
///
/// Pacing (additive increase, multiplicative decrease, as TCP's congestion control): a chunk
/// I/O slower than `--copy-slow-io` halves the rate the copies may use (never below 1/64 of the
/// budget) and pauses them 10x that I/O's time (at most 2 s); each second without one gives back
/// an eighth of the budget, until the budget itself. Why: the pause alone resumed at the full
/// budget, straight into the same congestion. A device (or, in a VM, the host under it) that
/// stalls every request while it cannot absorb the copies' writes is thus written at the rate
/// it takes without stalling, found by probing, not at the budget; the bench reports the copy
/// rate reached.
///
/// Within the budget, the [`LatencyGuard`] sets the rate the foreground's device reads
/// tolerate (`--copy-latency-target`), and the copies stop now and then for it to measure
/// them without copies.
pub(crate) struct Budget {
    tokens: f64,
    last: Instant,
    /// The paced rate in bytes/s, below the budget; `None` while the budget applies.
    paced: Option<f64>,
    guard: LatencyGuard,
}

impl Budget {
    /// A budget whose latency guard allows the p99 of the foreground's device reads to rise by
    /// `latency_tolerance` (0.05: 5%; 0: no guard).
    pub(crate) fn new(latency_tolerance: f64) -> Budget {
        Budget {
            tokens: 0.0,
            last: Instant::now(),
            paced: None,
            guard: LatencyGuard::new(latency_tolerance),
        }
    }

    /// The rate that applies now (bytes/s, 0: unlimited), regaining pace for `dt`.
    fn rate(&mut self, budget: u64, dt: Duration) -> f64 {
        if budget == 0 {
            self.paced = None;
            return 0.0;
        }
        let b = budget as f64;
        if let Some(p) = self.paced {
            let p = p.min(b) + b * PACE_INCREASE_PER_S * dt.as_secs_f64();
            self.paced = (p < b).then_some(p);
        }
        self.paced.unwrap_or(b).min(self.guard.rate(budget))
    }

    /// Before a copy I/O: waits while the latency guard measures the foreground without copies
    /// (or until `stop`).
    fn gate(&mut self, shared: &Shared, stop: &dyn Fn() -> bool) {
        loop {
            let budget = shared.migration_control.copy_budget();
            let step = self
                .guard
                .step(Instant::now(), &shared.foreground_read_time(), budget);
            self.publish(shared);
            let Step::Wait(d) = step else { return };
            let t0 = Instant::now();
            if d.is_zero() || stop() {
                return;
            }
            std::thread::sleep(d.min(Duration::from_millis(50)));
            shared
                .migration
                .guard_probe_ns
                .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
        }
    }

    /// While no copy runs (between copies, or paused): the latency guard's free probes.
    pub(crate) fn idle(&mut self, shared: &Shared) {
        self.guard
            .idle(Instant::now(), &shared.foreground_read_time());
        self.publish(shared);
    }

    fn publish(&self, shared: &Shared) {
        let f = self.guard.figures();
        let m = &shared.migration;
        m.guard_bytes_per_s.store(f.rate, Relaxed);
        m.guard_baseline_ns.store(f.baseline_ns, Relaxed);
        m.guard_ratio_milli
            .store((f.last_ratio * 1000.0).round() as u64, Relaxed);
        m.guard_probes.store(f.probes, Relaxed);
        m.guard_cuts.store(f.cuts, Relaxed);
    }

    /// Waits while migration is paused (or until `stop`), the time measuring the foreground.
    pub(crate) fn wait_while_paused(&mut self, shared: &Shared, stop: &dyn Fn() -> bool) {
        while shared.migration_control.paused() && !stop() {
            self.idle(shared);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The paced rate in bytes/s, or 0 while the budget applies (for `/metrics`).
    pub(crate) fn paced_bytes_per_s(&self) -> u64 {
        self.paced.map_or(0, |p| p as u64)
    }

    /// A chunk I/O was slow: halve the rate (a node with no budget is not paced).
    fn slowed(&mut self, budget: u64) {
        if budget == 0 {
            return;
        }
        let b = budget as f64;
        let now = self.paced.unwrap_or(b);
        self.paced = Some((now * PACE_DECREASE).max(b / PACE_FLOOR_DIVISOR));
    }

    pub(crate) fn take(&mut self, n: u64, control: &MigrationControl, stop: &dyn Fn() -> bool) {
        loop {
            let now = Instant::now();
            let bytes_per_s = self.rate(control.copy_budget(), now.duration_since(self.last));
            if bytes_per_s == 0.0 {
                self.last = now;
                return;
            }
            // At most 50 ms of burst: a copy that starts after an idle spell must not hit the
            // device at full speed for a second (the migration-impact bench saw that in p99).
            let cap = bytes_per_s / 20.0;
            self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * bytes_per_s)
                .min(cap.max(n as f64));
            self.last = now;
            if self.tokens >= n as f64 || stop() {
                self.tokens -= n as f64;
                return;
            }
            let wait = (n as f64 - self.tokens) / bytes_per_s;
            std::thread::sleep(Duration::from_secs_f64(wait.min(0.1)));
        }
    }

    /// After a copy chunk I/O that took `took`: if it was slower than
    /// [`super::NodeConfig::copy_slow_io`], halves the pace and pauses (see [`Budget`]).
    fn after_io(&mut self, shared: &Shared, took: Duration, stop: &dyn Fn() -> bool) {
        let pause = backoff_for(took, shared.cfg.copy_slow_io);
        if pause.is_zero() {
            return;
        }
        self.slowed(shared.migration_control.copy_budget());
        shared
            .migration
            .paced_bytes_per_s
            .store(self.paced_bytes_per_s(), Relaxed);
        shared.migration.slow_ios.fetch_add(1, Relaxed);
        let t0 = Instant::now();
        let until = t0 + pause;
        while Instant::now() < until && !stop() {
            std::thread::sleep(
                until
                    .saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(50)),
            );
        }
        shared
            .migration
            .backoff_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
    }
}

/// Waits while the shards have at least `copy_yield_depth` device reads in flight for
/// responses, at most `copy_yield_wait_max`: a background copy's next chunk I/O goes to the
/// device in a lull of the foreground when there is one, and regardless after the wait, so the
/// copy still moves under constant load.
fn yield_to_foreground(shared: &Shared, stop: &dyn Fn() -> bool) {
    let depth = shared.cfg.copy_yield_depth;
    if depth == 0 || shared.foreground_reads_in_flight() < depth {
        return;
    }
    let t0 = Instant::now();
    let max = shared.cfg.copy_yield_wait_max;
    while shared.foreground_reads_in_flight() >= depth && t0.elapsed() < max && !stop() {
        std::thread::sleep(Duration::from_micros(100));
    }
    shared
        .migration
        .yield_wait_ns
        .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
}

/// Copies asset version `a` from `from` to `to` chunk by chunk (each chunk's crc32c checked
/// before it is written), under `budget`, yielding to foreground reads. Returns the written but
/// not yet durable or visible copy (publish it with [`Volume::publish_prepared`]), or `None`
/// when `stop` said so (nothing is left behind).
pub(crate) fn copy_data<'v>(
    shared: &Shared,
    from: &Volume,
    to: &'v Volume,
    drv: &mut Driver,
    a: &Asset,
    budget: &mut Budget,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Prepared<'v>>, EngineError> {
    let opts = PutOptions {
        content_type: a.content_type().map(str::to_string),
        size: Some(a.size()),
        // One chunk write in flight: a copy never puts more than one chunk of its writes in
        // the device queue ahead of a foreground read.
        depth: Some(1),
        created_unix_ns: Some(a.created_unix_ns()),
        io_max: shared.cfg.copy_io_max,
    };
    let mut ing = to.ingest(drv, a.id(), &opts)?;
    let chunk = u64::from(from.chunk_size());
    for c in 0..a.chunk_count() as u64 {
        if stop() {
            ing.abort(drv);
            return Ok(None);
        }
        budget.wait_while_paused(shared, stop);
        budget.gate(shared, stop);
        yield_to_foreground(shared, stop);
        // The chunk is read straight into the registered buffer it is written from, and its
        // verified crc is the one recorded for the copy: no memcpy, one crc32c per byte.
        let len = chunk.min(a.size() - c * chunk);
        let t0 = Instant::now();
        if let Err(e) = ing.fill_chunk_with(drv, len as usize, |drv, buf| {
            from.read_chunk_verified_into(drv, a, c, shared.cfg.copy_io_max, buf)
        }) {
            ing.abort(drv);
            return Err(e);
        }
        budget.guard.copied(Instant::now());
        budget.after_io(shared, t0.elapsed(), stop);
        budget.take(len, &shared.migration_control, stop);
        shared
            .migration
            .paced_bytes_per_s
            .store(budget.paced_bytes_per_s(), Relaxed);
        budget.wait_while_paused(shared, stop);
        budget.gate(shared, stop);
        yield_to_foreground(shared, stop);
        // Written and waited for: one copy I/O in the device queue at a time.
        let t0 = Instant::now();
        if let Err(e) = ing.write_filled(drv) {
            ing.abort(drv);
            return Err(e);
        }
        budget.guard.copied(Instant::now());
        budget.after_io(shared, t0.elapsed(), stop);
        shared.migration.bytes_copied.fetch_add(len, Relaxed);
    }
    ing.prepare(drv).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_halves_after_a_slow_io_and_regains_an_eighth_of_the_budget_a_second() {
        let b = 64u64 << 20;
        let mut p = Budget::new(0.0);
        let s = Duration::from_secs;
        assert_eq!(p.rate(b, s(0)), b as f64, "the budget applies at first");
        p.slowed(b);
        assert_eq!(p.rate(b, s(0)), b as f64 / 2.0);
        p.slowed(b);
        assert_eq!(p.rate(b, s(0)), b as f64 / 4.0);
        assert_eq!(p.paced_bytes_per_s(), b / 4);
        assert_eq!(p.rate(b, s(1)), b as f64 * (0.25 + 0.125));
        // A lower budget set meanwhile caps the pace at once.
        assert_eq!(p.rate(b / 8, s(0)), (b / 8) as f64);
        assert_eq!(p.paced_bytes_per_s(), 0, "back at the (new) budget");
        for _ in 0..20 {
            p.slowed(b);
        }
        assert_eq!(
            p.rate(b, s(0)),
            b as f64 / 64.0,
            "never below 1/64 of the budget"
        );
        assert_eq!(p.rate(b, s(8)), b as f64, "regained within 8 s");
        assert_eq!(p.paced_bytes_per_s(), 0);
        p.slowed(0);
        assert_eq!(p.rate(0, s(0)), 0.0, "no budget: not paced");
    }

    #[test]
    fn backoff_only_after_a_slow_io_and_bounded() {
        let ms = Duration::from_millis;
        assert_eq!(backoff_for(ms(3), ms(50)), Duration::ZERO);
        assert_eq!(backoff_for(ms(50), ms(50)), Duration::ZERO);
        assert_eq!(backoff_for(ms(80), ms(50)), ms(800));
        assert_eq!(backoff_for(ms(900), ms(50)), BACKOFF_MAX);
        assert_eq!(
            backoff_for(ms(900), Duration::ZERO),
            Duration::ZERO,
            "0 turns it off"
        );
    }
}
