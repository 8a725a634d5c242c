//! Copies between the tiers, and the lock that keeps them consistent with deletes.
//!
//! `copy_data` copies one asset version from one volume to the other, chunk by chunk: each
//! chunk is read from the source straight into the registered buffer of an [`reel_store::Ingest`]
//! (no memcpy), checked against its stored crc32c (which the copy records as is), and written
//! from the same buffer, under the copy throttle (`Throttle`), each chunk I/O first yielding to the
//! shards' foreground reads, and each waited for before the next: one copy I/O in the device
//! queue at a time. The copy comes back prepared (written, not durable, invisible); the
//! migration scheduler ([`super::scheduler`]) publishes finished copies in groups, under
//! [`TierLock`], each only if the source still holds the version copied.
//!
//! A delete takes the same lock and removes the secondary copy before the primary one, so a
//! copy can never resurrect a deleted asset, and a crash between the two leaves the asset on the
//! primary only (the delete was not acknowledged), never a stale copy on the secondary alone.
//! An upload that lands on the secondary takes it too, to publish there and then delete the
//! primary's older version, so a write-back of that older version (which publishes only while
//! the primary still holds it) cannot land over the new one.
//!
//! `drop_primary_copy` is the one way a clean primary copy is dropped, for the scheduler's
//! demotions and evictions and for the ingest workers making room for an upload.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Shared;
use reel_policy::throttle::{CopyBudget, CopyThrottle, Step, ThrottleConfig};
use reel_policy::Outcome;
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

/// [`Volume::commit_volatile`] of one volume, counted and timed in the migration metrics.
pub(crate) fn commit_volume(
    shared: &Shared,
    v: &Volume,
    drv: &mut Driver,
) -> reel_store::Result<()> {
    let t0 = Instant::now();
    let n = v.commit_volatile(drv)?;
    if n > 0 {
        let took = t0.elapsed();
        let m = &shared.migration;
        m.commits.fetch_add(1, Relaxed);
        m.commit_ns.fetch_add(took.as_nanos() as u64, Relaxed);
        let ms = took.as_millis() as u64;
        tracing::info!(volume = %v.path().display(), copies = n, ms, "copies committed");
    }
    Ok(())
}

/// Drops the primary's clean copy of `id`: a policy's demotion or eviction, whether the
/// scheduler executes it or an ingest worker making room for an upload. Under the tier lock
/// (deletes and secondary publishes take it), only if the secondary holds the same version,
/// durably (its volatile copies are committed first when it does not yet), and only that very
/// version (`drop_if` with `ptr_eq` of the one checked: an upload that committed a newer one
/// since, without the tier lock, is kept). Lazily: the secondary holds the asset durably, so the
/// drop needs no device flush of its own (a power cut may bring the clean copy back, which is
/// harmless); its blocks are reusable after the next sync, which an ingest short of space does.
pub(crate) fn drop_primary_copy(
    shared: &Shared,
    primary: &Volume,
    secondary: &Volume,
    drv: &mut Driver,
    id: &str,
) -> Outcome {
    let _g = shared.tier_lock.lock();
    let (Some(p), Some(s)) = (primary.get(id), secondary.get(id)) else {
        return Outcome::Failed;
    };
    if !same_version(&p, &s) {
        return Outcome::Failed;
    }
    // The secondary copy must be durable before the primary one goes: a write-back still
    // waiting for its commit is committed now (with any others).
    if !secondary.is_durable(&s) {
        if let Err(e) = commit_volume(shared, secondary, drv) {
            tracing::warn!(id, error = %e, "committing the secondary copies failed");
            return Outcome::Failed;
        }
    }
    match primary.drop_if(drv, id, &|cur| Asset::ptr_eq(cur, &p)) {
        Ok(true) => {
            shared.note_changed(id);
            Outcome::Done
        }
        Ok(false) => Outcome::Failed,
        Err(e) => {
            tracing::warn!(id, error = %e, "dropping the primary copy failed");
            Outcome::Failed
        }
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
    /// Chunk I/Os of copies slower than [`ThrottleConfig::slow_io`] (`--copy-slow-io`).
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

/// What an operator may change about migration while the node runs (`PUT /migration`); not
/// persisted: a restart takes the configured values again.
pub struct MigrationControl {
    /// While set, no copy writes (an unfinished one waits at its next chunk), the policy makes
    /// no decisions, and no commit falls due under load (one still happens when the node is
    /// quiet, or at a graceful stop).
    paused: AtomicBool,
    /// The copies' shared budget in bytes/s as `/migration` shows it (0: unlimited).
    copy_budget: AtomicU64,
}

impl MigrationControl {
    pub fn new(budget: CopyBudget) -> MigrationControl {
        MigrationControl {
            paused: AtomicBool::new(false),
            copy_budget: AtomicU64::new(budget.bytes_per_s()),
        }
    }

    /// The copies' budget now.
    pub fn budget(&self) -> CopyBudget {
        CopyBudget::from_bytes_per_s(self.copy_budget())
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Relaxed)
    }

    pub fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Relaxed);
    }

    /// The budget in bytes/s as `/migration` and `/metrics` show it (0: unlimited).
    pub fn copy_budget(&self) -> u64 {
        self.copy_budget.load(Relaxed)
    }

    /// Sets the budget from bytes/s as `PUT /migration` gives it (0: unlimited).
    pub fn set_copy_budget(&self, bytes_per_s: u64) {
        self.copy_budget.store(bytes_per_s, Relaxed);
    }
}

/// The node's one [`CopyThrottle`] and its glue, shared by every thread that copies (the
/// migration scheduler's copies between the tiers and the puller's node-to-node copies), so
/// they draw on one budget, one slow-I/O pace and one latency guard: a pull and a migration
/// running together stay within `--copy-budget` together, and a guard's probe stops both. The
/// throttle is locked per decision, never across a sleep. The glue reads the clock, sleeps what
/// the throttle says (in slices, so a stop is seen), gathers the shards' read times for it,
/// takes the budget from the [`MigrationControl`] as it goes (so a change applies at once) and
/// publishes the throttle's figures in [`MigrationStats`].
pub(crate) struct Throttle {
    throttle: Mutex<CopyThrottle>,
    epoch: Instant,
}

impl Throttle {
    pub(crate) fn new(cfg: &ThrottleConfig) -> Throttle {
        Throttle {
            throttle: Mutex::new(CopyThrottle::new(cfg, Duration::ZERO)),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CopyThrottle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The throttle's clock.
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Before a copy I/O: waits while the latency guard measures the foreground without copies
    /// (or until `stop`).
    pub(crate) fn gate(&self, shared: &Shared, stop: &dyn Fn() -> bool) {
        loop {
            let budget = shared.migration_control.budget();
            let step = {
                let mut t = self.lock();
                let step = t.step(self.now(), &shared.foreground_read_time(), budget);
                publish(&t, shared);
                step
            };
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

    /// While no copy runs (between copies, or paused): the latency guard's free probes. (The
    /// guard takes no probe within its settle time of any thread's last copy I/O.)
    pub(crate) fn idle(&self, shared: &Shared) {
        let mut t = self.lock();
        t.idle(self.now(), &shared.foreground_read_time());
        publish(&t, shared);
    }

    /// Waits while migration is paused (or until `stop`), the time measuring the foreground.
    pub(crate) fn wait_while_paused(&self, shared: &Shared, stop: &dyn Fn() -> bool) {
        while shared.migration_control.paused() && !stop() {
            self.idle(shared);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `n` copied bytes fit the rate that applies now (or until `stop`).
    pub(crate) fn take(&self, shared: &Shared, n: u64, stop: &dyn Fn() -> bool) {
        loop {
            let wait = {
                let mut t = self.lock();
                let wait = t.take(self.now(), n, shared.migration_control.budget());
                shared
                    .migration
                    .paced_bytes_per_s
                    .store(t.paced_bytes_per_s(), Relaxed);
                wait
            };
            if wait.is_zero() || stop() {
                return;
            }
            std::thread::sleep(wait.min(Duration::from_millis(100)));
        }
    }

    /// After a copy chunk I/O that took `took`: a slow one halves the pace and pauses the copy
    /// (see [`reel_policy::throttle::pacing`]).
    pub(crate) fn after_io(&self, shared: &Shared, took: Duration, stop: &dyn Fn() -> bool) {
        let budget = shared.migration_control.budget();
        let pause = {
            let mut t = self.lock();
            let pause = t.after_io(self.now(), took, budget);
            if !pause.is_zero() {
                shared
                    .migration
                    .paced_bytes_per_s
                    .store(t.paced_bytes_per_s(), Relaxed);
            }
            pause
        };
        if pause.is_zero() {
            return;
        }
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

/// The latency guard's figures into [`MigrationStats`].
fn publish(t: &CopyThrottle, shared: &Shared) {
    let f = t.guard_figures();
    let m = &shared.migration;
    m.guard_bytes_per_s.store(f.rate, Relaxed);
    m.guard_baseline_ns.store(f.baseline_ns, Relaxed);
    m.guard_ratio_milli
        .store((f.last_ratio * 1000.0).round() as u64, Relaxed);
    m.guard_probes.store(f.probes, Relaxed);
    m.guard_cuts.store(f.cuts, Relaxed);
}

/// Waits while the shards have at least [`ThrottleConfig::yield_depth`] device reads in flight
/// for responses, at most [`ThrottleConfig::yield_wait_max`]: a background copy's next chunk I/O goes to the
/// device in a lull of the foreground when there is one, and regardless after the wait, so the
/// copy still moves under constant load.
pub(crate) fn yield_to_foreground(shared: &Shared, stop: &dyn Fn() -> bool) {
    let Some(depth) = shared.cfg.throttle.yield_depth.map(NonZeroU64::get) else {
        return;
    };
    if shared.foreground_reads_in_flight() < depth {
        return;
    }
    let t0 = Instant::now();
    let max = shared.cfg.throttle.yield_wait_max;
    while shared.foreground_reads_in_flight() >= depth && t0.elapsed() < max && !stop() {
        std::thread::sleep(Duration::from_micros(100));
    }
    shared
        .migration
        .yield_wait_ns
        .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
}

/// The largest single device I/O of a copy (`None`: whole chunks).
pub(crate) fn io_max(shared: &Shared) -> Option<usize> {
    shared
        .cfg
        .throttle
        .io_bytes_max
        .map(std::num::NonZeroUsize::get)
}

/// Copies asset version `a` from `from` to `to` chunk by chunk (each chunk's crc32c checked
/// before it is written), under `throttle`, yielding to foreground reads. Returns the written but
/// not yet durable or visible copy (publish it with [`Volume::publish_prepared`]), or `None`
/// when `stop` said so (nothing is left behind).
pub(crate) fn copy_data<'v>(
    shared: &Shared,
    from: &Volume,
    to: &'v Volume,
    drv: &mut Driver,
    a: &Asset,
    throttle: &Throttle,
    stop: &dyn Fn() -> bool,
) -> Result<Option<Prepared<'v>>, EngineError> {
    let opts = PutOptions {
        content_type: a.content_type().map(str::to_string),
        size: Some(a.size()),
        // One chunk write in flight: a copy never puts more than one chunk of its writes in
        // the device queue ahead of a foreground read.
        depth: Some(1),
        created_unix_ns: Some(a.created_unix_ns()),
        io_max: io_max(shared),
    };
    let mut ing = to.ingest(drv, a.id(), &opts)?;
    let chunk = u64::from(from.chunk_size());
    for c in 0..a.chunk_count() as u64 {
        if stop() {
            ing.abort(drv);
            return Ok(None);
        }
        throttle.wait_while_paused(shared, stop);
        throttle.gate(shared, stop);
        yield_to_foreground(shared, stop);
        // The chunk is read straight into the registered buffer it is written from, and its
        // verified crc is the one recorded for the copy: no memcpy, one crc32c per byte.
        let len = chunk.min(a.size() - c * chunk);
        let t0 = Instant::now();
        if let Err(e) = ing.fill_chunk_with(drv, len as usize, |drv, buf| {
            from.read_chunk_verified_into(drv, a, c, io_max(shared), buf)
        }) {
            ing.abort(drv);
            return Err(e);
        }
        throttle.after_io(shared, t0.elapsed(), stop);
        throttle.take(shared, len, stop);
        throttle.wait_while_paused(shared, stop);
        throttle.gate(shared, stop);
        yield_to_foreground(shared, stop);
        // Written and waited for: one copy I/O in the device queue at a time.
        let t0 = Instant::now();
        if let Err(e) = ing.write_filled(drv) {
            ing.abort(drv);
            return Err(e);
        }
        throttle.after_io(shared, t0.elapsed(), stop);
        shared.migration.bytes_copied.fetch_add(len, Relaxed);
    }
    ing.prepare(drv).map(Some)
}
