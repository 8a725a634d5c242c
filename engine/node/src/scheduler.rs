//! The migration scheduler of a node with two tiers: one thread that runs the tiering policy
//! ([`reel_policy::TierPolicy`]) over the wall clock and carries out its decisions.
//!
//! Every second it hands the policy the time; the policy folds the shards' rate counters and
//! answers with decisions, which this thread executes one after another under the shared copy
//! budget: promote (secondary → primary), write back (primary → secondary), demote or evict (drop
//! the clean primary copy). Each copy reads the source chunk by chunk, checks every chunk's
//! crc32c, and writes through an [`reel_store::Ingest`], each chunk I/O first yielding to the shards'
//! foreground reads ([`super::writeback`]).
//!
//! A finished copy is published at once ([`Volume::publish_volatile`]), under
//! [`super::writeback::TierLock`] and only if its source still holds the version copied: it
//! serves from then on, but it is not yet durable. The copies published since the last commit
//! are made durable together ([`Volume::commit_volatile`]: one data sync, one journal batch)
//! when the node has served no one for [`QUIET`], when the oldest has waited
//! `migration_commit_interval` (default 10 min; copies then pause for `migration_commit_settle`,
//! 20 s, first, so the device has written their data back and the flush is short), before a
//! drop needs a secondary copy, and at a graceful stop. Why: each device flush stalls
//! foreground reads while the device writes back its cache (hundreds of milliseconds on a
//! write-back cached disk; the figures are in docs/decisions/2026-11-24-commit-when-quiet.md),
//! so under load flushes must be rare; and a copy is never the only copy of acknowledged data, so a crash
//! that forgets a volatile one loses nothing: the asset is where it was before (its placement
//! is derived from the catalogs at start), and the copy is redone if still wanted.
//!
//! A drop deletes the primary copy only while the secondary holds the same version (which a
//! committed write-back guarantees is durable). Reads never miss: the old copy serves until the
//! new one is written and in its catalog; a stream that already holds the dropped copy keeps its
//! extents until it ends.
//!
//! Uploads and deletes reach the policy as [`Event`]s from the ingest workers (with the tier an
//! upload landed on). A worker short of room on the primary for an upload also asks the policy
//! (briefly under its lock) which clean copies make way, drops them itself
//! (`writeback::drop_primary_copy`, as this thread does a demotion or eviction) and reports
//! them; both threads pass the policy the node's time (`Shared::policy_now_ns`). At start, each
//! asset's placement is derived from the two catalogs, so nothing of the scheduler is persisted;
//! rates start at zero after a restart (and the policy demotes nothing cold until it has watched
//! for two half-lives).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::worker::chunk_ring;
use super::writeback::{commit_volume, copy_data, drop_primary_copy, same_version, Throttle};
use super::Shared;
use reel_policy::{Decision, Outcome, Placement, PolicyConfig, Tier, TierPolicy};
use reel_store::catalog::Asset;
use reel_store::driver::Driver;
use reel_store::ingest::PublishCond;
use reel_store::volume::Volume;

/// What the ingest workers tell the scheduler.
#[derive(Debug)]
pub enum Event {
    /// A new version of `id` is durable on `tier`: on the primary it is dirty (no secondary
    /// copy yet); on the secondary it is the only copy (the primary's older one, if any, was
    /// deleted before the upload was answered).
    Uploaded {
        id: String,
        slot: u32,
        size: u64,
        tier: Tier,
    },
    /// `id` was deleted from every tier; its slot was released.
    Deleted { id: String, slot: u32 },
}

/// The policy as the other threads may look at it (`/info`, `/metrics`).
pub type SharedPolicy = Mutex<TierPolicy>;

/// Builds the policy for a node: the primary's capacity, the node's budget and half-life.
pub fn policy_config(shared_cfg: &super::NodeConfig, primary: &Volume) -> PolicyConfig {
    let mut c = shared_cfg.policy.clone();
    c.primary_capacity_bytes = primary.stats().capacity_bytes;
    c.half_life_s = shared_cfg.rate_half_life.map(|d| d.as_secs_f64());
    c.copy_budget_bytes_per_s = shared_cfg.throttle.bytes_per_s_max.bytes_per_s();
    c.copy_burst_bytes = c.copy_burst_bytes.max(c.copy_budget_bytes_per_s);
    c.schedule_write_backs = true;
    c
}

fn placement(p: Option<&Asset>, s: Option<&Asset>) -> Option<Placement> {
    match (p, s) {
        (Some(p), Some(s)) if same_version(p, s) => Some(Placement::PrimaryClean),
        (Some(_), _) => Some(Placement::PrimaryDirty),
        (None, Some(_)) => Some(Placement::Secondary),
        (None, None) => None,
    }
}

pub(crate) fn run(shared: &Shared, events: &Receiver<Event>) {
    let (Some(secondary), Some(policy)) = (shared.tiers.secondary.clone(), &shared.policy) else {
        return;
    };
    let primary = shared.tiers.primary.clone();
    let chunk = primary.chunk_size() as usize;
    let mut drv = match chunk_ring(chunk) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "the scheduler cannot start its ring; no migrations");
            return;
        }
    };
    let now_ns = || shared.policy_now_ns();
    let stop = || shared.stop.load(Relaxed);
    // Register what the two catalogs hold.
    {
        let mut pol = lock(policy);
        for v in [&primary, &secondary] {
            for a in v.list() {
                if super::is_policy_asset(a.id()) {
                    continue;
                }
                let Some(slot) = shared.index.slot(a.id()) else {
                    continue;
                };
                let (p, s) = (primary.get(a.id()), secondary.get(a.id()));
                if let Some(pl) = placement(p.as_ref(), s.as_ref()) {
                    pol.add_asset(now_ns(), slot, a.size(), pl);
                }
            }
        }
    }
    // Per-asset policies persisted as "{id}/policy" assets on the primary.
    for a in primary.list() {
        if let Some(id) = a.id().strip_suffix(super::POLICY_SUFFIX) {
            apply_stored_policy(shared, policy, &primary, &mut drv, id);
        }
    }
    let throttle = &shared.copy_throttle;
    let control = &shared.migration_control;
    // The budget the policy plans with, to follow `PUT /migration` changes.
    let mut planned_budget = control.budget();
    let mut quiet = QuietWatch::default();
    // When the last copy finished writing: a commit due under load waits until
    // `migration_commit_settle` has passed since (see below).
    let mut last_copy_end: Option<Instant> = None;
    let mut decisions = Vec::new();
    let mut next_tick = Instant::now();
    while !stop() {
        match events.recv_timeout(next_tick.saturating_duration_since(Instant::now())) {
            Ok(ev) => {
                on_event(shared, policy, ev, now_ns());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if Instant::now() < next_tick {
            continue;
        }
        next_tick = Instant::now() + Duration::from_secs(1);
        // No copy runs between ticks' decisions: the latency guard measures the foreground.
        throttle.idle(shared);
        let idle = quiet.observe(Instant::now(), shared.foreground_activity());
        let paused = control.paused();
        let oldest = [&primary, &secondary]
            .iter()
            .filter_map(|v| v.volatile_since())
            .min();
        if oldest.is_some() && idle {
            commit_copies(shared, &[&primary, &secondary], &mut drv);
        } else if paused {
            // An operator asked for no migration I/O under load: the commit waits too (the
            // copies stay served, and a crash forgets them, never an asset). The time paused
            // counts towards the settle: no copy writes meanwhile either.
        } else if oldest.is_some_and(|t| t.elapsed() >= shared.cfg.migration_commit_interval) {
            // Under load: stop writing copies (no tick, so no new decisions) until the device
            // has had `migration_commit_settle` since the last copy's writes to write them
            // back, so the commit's flush finds little to do. Measured from the last copy, not
            // from when the commit fell due: a settle restarted at every resume never ended
            // when migration was paused and resumed more often than the settle lasts (the
            // migration-impact bench's 20 s windows stopped all copies that way).
            if last_copy_end.is_some_and(|t| t.elapsed() < shared.cfg.migration_commit_settle) {
                continue;
            }
            commit_copies(shared, &[&primary, &secondary], &mut drv);
        }
        // Events that arrived meanwhile first, so the tick sees the current catalog.
        while let Ok(ev) = events.try_recv() {
            on_event(shared, policy, ev, now_ns());
        }
        let budget_now = control.budget();
        if budget_now != planned_budget {
            lock(policy).set_copy_budget(budget_now.bytes_per_s());
            planned_budget = budget_now;
        }
        if paused {
            let mut pol = lock(policy);
            pol.observe(now_ns());
            shared.note_touched(pol.touched());
            continue;
        }
        decisions.clear();
        {
            let mut pol = lock(policy);
            pol.tick(now_ns(), &mut decisions);
            shared.note_touched(pol.touched());
        }
        for d in decisions.drain(..) {
            // A pause holds the decisions not yet started (a copy under way holds at its next
            // chunk).
            throttle.wait_while_paused(shared, &stop);
            if stop() {
                // Unstarted decisions die with the process; nothing of them is visible.
                break;
            }
            let outcome = execute(shared, &primary, &secondary, &mut drv, &d, throttle, &stop);
            if matches!(d, Decision::Promote { .. } | Decision::WriteBack { .. }) {
                last_copy_end = Some(Instant::now());
            }
            finish(shared, policy, &d, outcome, now_ns());
            // Uploads and deletes may have arrived during a long copy.
            while let Ok(ev) = events.try_recv() {
                on_event(shared, policy, ev, now_ns());
            }
        }
    }
    // A graceful stop keeps the copies made so far.
    commit_copies(shared, &[&primary, &secondary], &mut drv);
}

/// How long the node must have served no one before the copies are committed early: a commit
/// is a device flush pair, which stalls reads for as long as the device takes to write its
/// cache back (hundreds of milliseconds on a write-back cached disk), so it waits for a moment
/// with no one to stall.
pub const QUIET: Duration = Duration::from_secs(2);

/// Tells, from samples of [`super::Shared::foreground_activity`], whether the node has served
/// no one for [`QUIET`]: the activity sum has not moved and nothing was in flight at any sample.
#[derive(Debug, Default)]
struct QuietWatch {
    /// The activity sum and when it was first seen with nothing in flight.
    still: Option<(u64, Instant)>,
}

impl QuietWatch {
    fn observe(&mut self, now: Instant, (moved, in_flight): (u64, u64)) -> bool {
        match self.still {
            Some((m, since)) if m == moved && in_flight == 0 => now.duration_since(since) >= QUIET,
            _ => {
                self.still = (in_flight == 0).then_some((moved, now));
                false
            }
        }
    }
}

/// Makes the copies published since the last commit durable ([`Volume::commit_volatile`]):
/// one data sync and one journal batch (or a few) per volume that has any.
fn commit_copies(shared: &Shared, volumes: &[&Volume], drv: &mut Driver) {
    for v in volumes {
        if let Err(e) = commit_volume(shared, v, drv) {
            tracing::warn!(volume = %v.path().display(), error = %e, "committing copies failed");
        }
    }
}

/// Counts a decision's outcome and tells the policy.
fn finish(shared: &Shared, policy: &SharedPolicy, d: &Decision, outcome: Outcome, now_ns: u64) {
    let m = &shared.migration;
    let counter = match (d, outcome) {
        (Decision::Promote { .. }, Outcome::Done) => &m.promotions,
        (Decision::WriteBack { .. }, Outcome::Done) => &m.write_backs,
        (Decision::Demote { .. }, Outcome::Done) => &m.demotions,
        (Decision::Evict { .. }, Outcome::Done) => &m.evictions,
        (_, _) => &m.failures,
    };
    counter.fetch_add(1, Relaxed);
    lock(policy).finished(now_ns, d.ticket(), outcome);
}

/// Reads `{id}/policy` from the primary and applies it to `id`'s slot.
fn apply_stored_policy(
    shared: &Shared,
    policy: &SharedPolicy,
    primary: &Volume,
    drv: &mut Driver,
    id: &str,
) {
    let (Some(slot), Some(a)) = (
        shared.index.slot(id),
        primary.get(&super::policy_asset_name(id)),
    ) else {
        return;
    };
    let mut json = Vec::new();
    if let Err(e) = primary.read(drv, &a, 0, a.size(), true, &mut json) {
        tracing::warn!(id, error = %e, "cannot read the stored policy");
        return;
    }
    match serde_json::from_slice::<reel_policy::AssetPolicy>(&json) {
        Ok(p) => {
            if let Err(e) = lock(policy).set_asset_policy(slot, p) {
                tracing::warn!(id, error = %e, "stored policy rejected");
            }
        }
        Err(e) => tracing::warn!(id, error = %e, "stored policy is not valid JSON"),
    }
}

pub(crate) fn lock(p: &SharedPolicy) -> std::sync::MutexGuard<'_, TierPolicy> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

fn on_event(shared: &Shared, policy: &SharedPolicy, ev: Event, now_ns: u64) {
    let mut pol = lock(policy);
    match ev {
        Event::Uploaded {
            id,
            slot,
            size,
            tier,
        } => {
            // A stale event (the id was deleted and the slot reused since) is dropped.
            if shared.index.slot(&id) == Some(slot) {
                // Re-adding clears overrides; a new version keeps the asset's stored policy.
                let kept = pol.asset_policy(slot);
                let placement = match tier {
                    Tier::Primary => Placement::PrimaryDirty,
                    Tier::Secondary => Placement::Secondary,
                };
                pol.add_asset(now_ns, slot, size, placement);
                let _ = pol.set_asset_policy(slot, kept);
            }
        }
        Event::Deleted { id, slot } => {
            // If the slot already belongs to another asset, its Uploaded event replaced the
            // record; removing it now would forget that asset.
            match shared.index.id_of(slot) {
                Some(other) if other != id => {}
                _ => pol.remove_asset(slot),
            }
        }
    }
}

fn execute(
    shared: &Shared,
    primary: &Volume,
    secondary: &Volume,
    drv: &mut Driver,
    d: &Decision,
    throttle: &Throttle,
    stop: &dyn Fn() -> bool,
) -> Outcome {
    let Some(id) = shared.index.id_of(d.slot()) else {
        return Outcome::Failed;
    };
    let ok = |b: bool| if b { Outcome::Done } else { Outcome::Failed };
    let (src, from, to, to_primary) = match d {
        Decision::Promote { .. } => {
            let Some(src) = secondary.get(&id) else {
                return Outcome::Failed;
            };
            if let Some(p) = primary.get(&id) {
                // Already there (an upload raced the promotion): nothing to copy.
                return ok(same_version(&p, &src));
            }
            (src, secondary, primary, true)
        }
        Decision::WriteBack { .. } => {
            let Some(src) = primary.get(&id) else {
                return Outcome::Failed;
            };
            if secondary.get(&id).is_some_and(|s| same_version(&src, &s)) {
                return Outcome::Done;
            }
            (src, primary, secondary, false)
        }
        Decision::Demote { .. } | Decision::Evict { .. } => {
            return drop_primary_copy(shared, primary, secondary, drv, &id);
        }
    };
    let what = if to_primary {
        "promotion"
    } else {
        "write-back"
    };
    let prepared = match copy_data(shared, from, to, drv, &src, throttle, stop) {
        Ok(Some(p)) => p,
        Ok(None) => return Outcome::Failed,
        Err(e) => {
            tracing::warn!(id, error = %e, "{what} failed");
            return Outcome::Failed;
        }
    };
    // Published under the tier lock (deletes take it) and, inside, the destination's write
    // lock (uploads take that): only if the source still holds the version copied and, for a
    // promotion, no upload put a (newer) version on the primary meanwhile.
    let _g = shared.tier_lock.lock();
    let source_holds = || {
        let cur = if to_primary {
            secondary.get(&id)
        } else {
            primary.get(&id)
        };
        cur.is_some_and(|c| Asset::ptr_eq(&c, &src))
    };
    let published = if to.get(&id).is_none() {
        // The usual case: visible now, durable at the next commit.
        to.publish_volatile(prepared, &|cur: Option<&Asset>| {
            cur.is_none() && source_holds()
        })
    } else if to_primary {
        // An upload won the race: the promotion is dropped.
        Ok(None)
    } else {
        // A write-back over an older secondary version: replacing it must be durable at once
        // (the old version's extents are freed).
        let cond = |_: Option<&Asset>| source_holds();
        to.publish_prepared(drv, vec![(prepared, &cond as &PublishCond<'_>)])
            .map(|mut v| v.pop().flatten())
    };
    match published {
        Ok(a) => {
            if a.is_some() {
                shared.note_changed(&id);
            }
            ok(a.is_some())
        }
        Err(e) => {
            tracing::warn!(id, error = %e, "publishing the {what} failed");
            Outcome::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_only_after_no_activity_and_nothing_in_flight_for_the_whole_span() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut q = QuietWatch::default();
        assert!(!q.observe(at(0), (5, 0)));
        assert!(!q.observe(at(1000), (5, 0)));
        assert!(q.observe(at(2000), (5, 0)), "still for QUIET");
        assert!(q.observe(at(3000), (5, 0)));
        // Anything served restarts the span.
        assert!(!q.observe(at(4000), (6, 0)));
        assert!(!q.observe(at(5000), (6, 0)));
        assert!(q.observe(at(6000), (6, 0)));
        // A request in flight (a long stream moves no counter until it ends) is not quiet, and
        // the span restarts only once nothing is in flight.
        assert!(!q.observe(at(7000), (6, 1)));
        assert!(!q.observe(at(10_000), (6, 1)));
        assert!(!q.observe(at(11_000), (6, 0)));
        assert!(!q.observe(at(12_000), (6, 0)));
        assert!(q.observe(at(13_000), (6, 0)));
    }
}
