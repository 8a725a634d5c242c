//! The migration scheduler of a node with two tiers: one thread that runs the tiering policy
//! ([`crate::tier::TierPolicy`]) over the wall clock and carries out its decisions.
//!
//! Every second it hands the policy the time; the policy folds the shards' rate counters and
//! answers with decisions, which this thread executes one after another under the shared copy
//! budget: promote (secondary → primary), write back (primary → secondary), demote or evict (drop
//! the clean primary copy). Each copy reads the source chunk by chunk, checks every chunk's
//! crc32c, and writes through an [`crate::Ingest`], each chunk I/O first yielding to the shards'
//! foreground reads ([`super::writeback`]).
//!
//! Finished copies wait for a group commit ([`commit`]): at most `migration_commit_interval`
//! after the first of them finished, or as soon as the policy's limit of copies in flight is
//! reached (it hands out no more until these finish), or at a graceful stop. A commit makes the
//! copies of each destination tier durable with one data sync, then publishes, under
//! [`super::writeback::TierLock`], those whose source still holds the version copied, in one
//! journal write and sync. Why: every device flush stalls foreground reads while the device
//! writes back its cache, and a flush issued later finds less left to write back (measured on
//! this project's VM: fio reads at a steady 800 MB/s saw p99 double with a flush per 128 MiB
//! copied, much less with one per 1 GiB). A crash before the commit leaves nothing: the copy's
//! extents were only reserved in memory, and the source still serves.
//!
//! A drop deletes the primary copy only while the secondary holds the same version (which a
//! committed write-back guarantees is durable). Reads never miss: the old copy serves until the
//! new one is durable and in its catalog; a stream that already holds the dropped copy keeps its
//! extents until it ends.
//!
//! Uploads and deletes reach the policy as [`Event`]s from the ingest workers. At start, each
//! asset's placement is derived from the two catalogs, so nothing of the scheduler is persisted;
//! rates start at zero after a restart (and the policy demotes nothing cold until it has watched
//! for two half-lives).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::writeback::{copy_data, same_version, Budget};
use super::Shared;
use crate::catalog::Asset;
use crate::driver::{Driver, DriverConfig};
use crate::ingest::{Prepared, PublishCond};
use crate::tier::{Decision, Outcome, Placement, PolicyConfig, TierPolicy};
use crate::volume::Volume;

/// What the ingest workers tell the scheduler.
#[derive(Debug)]
pub enum Event {
    /// A new version of `id` is durable on the primary (dirty: no secondary copy yet).
    Uploaded { id: String, slot: u32, size: u64 },
    /// `id` was deleted from every tier; its slot was released.
    Deleted { id: String, slot: u32 },
}

/// The policy as the other threads may look at it (`/info`, `/metrics`).
pub type SharedPolicy = Mutex<TierPolicy>;

/// Builds the policy for a node: the primary's capacity, the node's budget and half-life.
pub fn policy_config(shared_cfg: &super::NodeConfig, primary: &Volume) -> PolicyConfig {
    let mut c = shared_cfg.policy.clone();
    c.primary_capacity_bytes = primary.stats().capacity_bytes;
    c.half_life_s = shared_cfg.rate_half_life.as_secs_f64();
    c.copy_budget_bytes_per_s = shared_cfg.copy_bytes_per_s_max;
    c.copy_burst_bytes = c.copy_burst_bytes.max(shared_cfg.copy_bytes_per_s_max);
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
    let mut drv = match Driver::new(&DriverConfig {
        ring_entries: 64,
        buf_size: chunk,
        buf_count: 8,
        write_log: None,
    }) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "the scheduler cannot start its ring; no migrations");
            return;
        }
    };
    let start = Instant::now();
    let now_ns = || start.elapsed().as_nanos() as u64;
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
    let mut budget = Budget::new(shared.cfg.copy_bytes_per_s_max);
    let interval = shared.cfg.migration_commit_interval;
    let pending_max = lock(policy).config().copies_in_flight_max.max(1) as usize;
    let mut pending: Vec<Pending<'_>> = Vec::new();
    let mut decisions = Vec::new();
    let mut next_tick = Instant::now();
    let due = |pending: &[Pending<'_>]| {
        pending.len() >= pending_max
            || pending
                .first()
                .is_some_and(|p| p.since.elapsed() >= interval)
    };
    'run: while !stop() {
        let mut wake = next_tick;
        if let Some(p) = pending.first() {
            wake = wake.min(p.since + interval);
        }
        match events.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(ev) => {
                on_event(shared, policy, ev, now_ns());
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
        if due(&pending) {
            commit(
                shared,
                &primary,
                &secondary,
                &mut drv,
                policy,
                &mut pending,
                now_ns(),
            );
        }
        if Instant::now() < next_tick {
            continue;
        }
        next_tick = Instant::now() + Duration::from_secs(1);
        // Events that arrived meanwhile first, so the tick sees the current catalog.
        while let Ok(ev) = events.try_recv() {
            on_event(shared, policy, ev, now_ns());
        }
        decisions.clear();
        lock(policy).tick(now_ns(), &mut decisions);
        for d in decisions.drain(..) {
            if stop() {
                // Unstarted decisions die with the process; finished copies are committed below.
                break 'run;
            }
            match execute(
                shared,
                &primary,
                &secondary,
                &mut drv,
                &d,
                &mut budget,
                &stop,
            ) {
                Exec::Now(outcome) => finish(shared, policy, &d, outcome, now_ns()),
                Exec::Copied(p) => pending.push(Pending { decision: d, ..p }),
            }
            if due(&pending) {
                commit(
                    shared,
                    &primary,
                    &secondary,
                    &mut drv,
                    policy,
                    &mut pending,
                    now_ns(),
                );
            }
            // Uploads and deletes may have arrived during a long copy.
            while let Ok(ev) = events.try_recv() {
                on_event(shared, policy, ev, now_ns());
            }
        }
    }
    // A graceful stop keeps the copies already finished.
    commit(
        shared,
        &primary,
        &secondary,
        &mut drv,
        policy,
        &mut pending,
        now_ns(),
    );
}

/// A finished copy waiting for its group commit.
struct Pending<'v> {
    decision: Decision,
    prepared: Prepared<'v>,
    /// The source version copied: published only if the source still holds it.
    src: Asset,
    to_primary: bool,
    since: Instant,
}

enum Exec<'v> {
    /// Done or failed already.
    Now(Outcome),
    /// Written; the decision completes at the group commit.
    Copied(Pending<'v>),
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

/// Makes finished copies durable and visible, per destination tier in one group: one data sync,
/// then (under the tier lock and the destination's write lock) each copy is published if its
/// source still holds the version copied and no upload put a version on the destination that
/// the copy must not replace. One journal write and sync covers the lot.
fn commit(
    shared: &Shared,
    primary: &Volume,
    secondary: &Volume,
    drv: &mut Driver,
    policy: &SharedPolicy,
    pending: &mut Vec<Pending<'_>>,
    now_ns: u64,
) {
    if pending.is_empty() {
        return;
    }
    let mut done = Vec::with_capacity(pending.len());
    {
        let _g = shared.tier_lock.lock();
        for to_primary in [true, false] {
            let (group, rest): (Vec<_>, Vec<_>) =
                pending.drain(..).partition(|p| p.to_primary == to_primary);
            *pending = rest;
            if group.is_empty() {
                continue;
            }
            let dest = if to_primary { primary } else { secondary };
            let mut decisions = Vec::with_capacity(group.len());
            let mut items = Vec::with_capacity(group.len());
            let mut conds: Vec<Box<PublishCond<'_>>> = Vec::with_capacity(group.len());
            for p in group {
                let src = p.src;
                let id = src.id().to_string();
                conds.push(if to_primary {
                    // A promotion: the secondary still holds the version copied, and no upload
                    // put a (newer) version on the primary meanwhile.
                    Box::new(move |cur: Option<&Asset>| {
                        cur.is_none() && secondary.get(&id).is_some_and(|s| Asset::ptr_eq(&s, &src))
                    })
                } else {
                    // A write-back: the primary still holds the version copied. The secondary
                    // only changes through this thread and deletes (which take the tier lock),
                    // so whatever it holds may be replaced.
                    Box::new(move |_: Option<&Asset>| {
                        primary.get(&id).is_some_and(|p| Asset::ptr_eq(&p, &src))
                    })
                });
                decisions.push(p.decision);
                items.push(p.prepared);
            }
            let items = items.into_iter().zip(conds.iter().map(|c| &**c)).collect();
            match dest.publish_prepared(drv, items) {
                Ok(published) => {
                    for (d, a) in decisions.into_iter().zip(published) {
                        let outcome = if a.is_some() {
                            Outcome::Done
                        } else {
                            Outcome::Failed
                        };
                        done.push((d, outcome));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, copies = decisions.len(), "committing finished copies failed");
                    done.extend(decisions.into_iter().map(|d| (d, Outcome::Failed)));
                }
            }
        }
    }
    shared.migration.commits.fetch_add(1, Relaxed);
    for (d, outcome) in done {
        finish(shared, policy, &d, outcome, now_ns);
    }
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
    match serde_json::from_slice::<crate::tier::AssetPolicy>(&json) {
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
        Event::Uploaded { id, slot, size } => {
            // A stale event (the id was deleted and the slot reused since) is dropped.
            if shared.index.slot(&id) == Some(slot) {
                // Re-adding clears overrides; a new version keeps the asset's stored policy.
                let kept = pol.asset_policy(slot);
                pol.add_asset(now_ns, slot, size, Placement::PrimaryDirty);
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

fn execute<'v>(
    shared: &Shared,
    primary: &'v Volume,
    secondary: &'v Volume,
    drv: &mut Driver,
    d: &Decision,
    budget: &mut Budget,
    stop: &dyn Fn() -> bool,
) -> Exec<'v> {
    let Some(id) = shared.index.id_of(d.slot()) else {
        return Exec::Now(Outcome::Failed);
    };
    let ok = |b: bool| Exec::Now(if b { Outcome::Done } else { Outcome::Failed });
    let (src, from, to, to_primary) = match d {
        Decision::Promote { .. } => {
            let Some(src) = secondary.get(&id) else {
                return ok(false);
            };
            if let Some(p) = primary.get(&id) {
                // Already there (an upload raced the promotion): nothing to copy.
                return ok(same_version(&p, &src));
            }
            (src, secondary, primary, true)
        }
        Decision::WriteBack { .. } => {
            let Some(src) = primary.get(&id) else {
                return ok(false);
            };
            if secondary.get(&id).is_some_and(|s| same_version(&src, &s)) {
                return ok(true);
            }
            (src, primary, secondary, false)
        }
        Decision::Demote { .. } | Decision::Evict { .. } => {
            let _g = shared.tier_lock.lock();
            let (Some(p), Some(s)) = (primary.get(&id), secondary.get(&id)) else {
                return ok(false);
            };
            if !same_version(&p, &s) {
                return ok(false);
            }
            // Drop exactly the version checked: an upload that committed a newer one since (it
            // does not take the tier lock) is kept.
            return match primary.delete_if(drv, &id, &|cur| Asset::ptr_eq(cur, &p)) {
                Ok(done) => ok(done),
                Err(e) => {
                    tracing::warn!(id, error = %e, "dropping the primary copy failed");
                    ok(false)
                }
            };
        }
    };
    match copy_data(shared, from, to, drv, &src, budget, stop) {
        Ok(Some(prepared)) => Exec::Copied(Pending {
            decision: *d,
            prepared,
            src,
            to_primary,
            since: Instant::now(),
        }),
        Ok(None) => ok(false),
        Err(e) => {
            let what = if to_primary {
                "promotion"
            } else {
                "write-back"
            };
            tracing::warn!(id, error = %e, "{what} failed");
            ok(false)
        }
    }
}
