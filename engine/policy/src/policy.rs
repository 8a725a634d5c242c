//! The migration policy: which asset goes to or leaves primary, and when.
//!
//! [`TierPolicy`] is a state machine with no I/O, no threads and no clock of its own: the caller
//! passes the time into every call (`now_ns`, any monotonic origin), executes the
//! [`Decision`]s a [`TierPolicy::tick`] returns, and reports each one's end back with
//! [`TierPolicy::finished`]. The node drives it from its scheduler thread; `reel simulate` and the
//! tests drive the very same code under a simulated clock.
//!
//! **What it keeps.** Per asset (by dense slot): its size and [`Residence`]. The policy's view of
//! primary counts every byte that is or may be there: resident copies (dirty, clean, being
//! written back, being dropped), promotions in flight (their destination is being written) and
//! upload reservations. Invariants, checked by [`TierPolicy::check_invariants`]:
//!
//! - primary bytes counted ≤ capacity, whenever the caller only adds primary bytes the policy
//!   granted (a promotion, an upload reservation); assets found on primary at start are counted
//!   as they are, and pressure then brings primary back under capacity;
//! - a dirty copy (no secondary copy yet) never leaves primary: it is written back first;
//! - a pinned-to-primary asset is never demoted or evicted; a pinned-to-secondary one is never
//!   promoted;
//! - background copies (promotions and write-backs) start only while the token bucket is not in
//!   debt, and each takes its size from it: copy bytes started over any window of `T` seconds
//!   are at most `budget·T + burst + largest asset`.
//!
//! **Decisions.** Each tick: fold the rate counters; demote clean copies whose rate fell below
//! the demote threshold (after the minimum residency, and once the rate has been observed for
//! two half-lives, so a restart — all rates 0 — demotes nothing); write back dirty copies
//! (oldest first); keep the upload headroom free by evicting the coldest clean copies; then
//! promote. A promotion candidate is a secondary asset that saw requests (or waited since the
//! last tick) whose rate reached its promote threshold, hottest first. While primary is filling
//! (more than 5 % free) it is promoted if it fits. Once primary is nearly full, free room only
//! goes to a candidate at least as hot as the coldest clean copy there (the admission rule "hotter
//! than the coldest resident"); otherwise it may evict clean copies, coldest first, but only
//! ones past their minimum residency and colder than it by the swap margin (`TierPolicy::beats`;
//! both in views per hour — for byte-hit ratio, views per hour is exactly the bytes served per
//! byte of primary). Evicted bytes become usable only once the caller confirms the drop, so the
//! candidate waits for a later tick. An upload short of room asks for clean copies to drop
//! ([`TierPolicy::evict_for_upload`]).
//!
//! The thresholds give hysteresis (promote above one rate, demote below a lower one); the margin
//! and the minimum residency keep an asset near the boundary from bouncing. **Unset, they tune
//! themselves** from what the policy observes: the half-life is the one whose shadow primary
//! served best on the recent traffic (`policy/tuning.rs`), the promote threshold is
//! [`AUTO_PROMOTE_VIEWS`] views' worth of rate under it (one request never promotes a cold
//! asset, at any request rate), the demote threshold a quarter of that, and the margin
//! [`AUTO_MARGIN_FRACTION`] plus [`AUTO_MARGIN_SIGMAS`] standard errors of the rates' difference.
//! How they were chosen, and what was tried: `docs/decisions/`, figures from
//! `reel simulate --all` in `docs/benchmarks.md`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::units::parse_seconds;

use super::rate::{RateCounters, Rates};

mod decision;
mod invariants;
mod tuning;
mod upload;
mod victim;

pub use decision::{AssetPolicy, Decision, Outcome, Placement, Residence, Ticket, Tier};
use tuning::HalfLifeTuner;
pub use tuning::{TuningCandidate, TuningState, TUNED_HALF_LIVES_S};
use victim::{Victim, VictimOrder};

/// The node-wide policy settings. Serializable, to sit in the node's TOML config; also the
/// `reel node` flags `--promote-per-h`, `--demote-per-h` and `--min-residency` (the other
/// fields are hidden flags, set in a config file's `[policy]` table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyConfig {
    /// Bytes of primary the policy may fill (uploads, promotions, resident copies).
    #[arg(long, hide = true, default_value_t = DEFAULT.primary_capacity_bytes)]
    pub primary_capacity_bytes: u64,
    /// Half-life of the decaying request rate, seconds. Unset: the policy chooses it among
    /// 30 min … 8 h from the node's own traffic (see `policy/tuning.rs`).
    #[arg(long, hide = true)]
    pub half_life_s: Option<f64>,
    /// Promote an asset to the primary when its rate reaches this many views per hour: a
    /// floor; when primary is full a candidate must also be hotter than what it would evict,
    /// by the swap margin. Unset: 1.5 views' worth of rate under the half-life in use, so one
    /// request never promotes a cold asset (two close together do).
    #[arg(long)]
    pub promote_per_h: Option<f64>,
    /// Demote (drop the clean primary copy) when the rate falls below this many views per
    /// hour; must not exceed the promote threshold. Unset: a quarter of the promote threshold.
    #[arg(long)]
    pub demote_per_h: Option<f64>,
    /// A candidate evicts a clean copy only if `victim_rate · (1 + swap_margin) ≤ its rate`.
    /// Unset: the margin follows the rates' noise (`TierPolicy::beats`).
    #[arg(long, hide = true)]
    pub swap_margin: Option<f64>,
    /// A copy that arrived on primary stays at least this long, in seconds (unless deleted or
    /// pinned away).
    #[arg(
        long = "min-residency",
        value_name = "MIN_RESIDENCY",
        value_parser = parse_seconds,
        default_value = "10m",
        help = "A copy stays on the primary at least this long"
    )]
    pub min_residency_s: f64,
    /// Bandwidth budget shared by all background copies (promotions and write-backs), bytes/s;
    /// 0 = unlimited, as everywhere a budget is given (a node sets it from its copy throttle's
    /// budget; pausing copies is the node's `/migration`, not a budget of 0).
    #[arg(long, hide = true, default_value_t = DEFAULT.copy_budget_bytes_per_s)]
    pub copy_budget_bytes_per_s: u64,
    /// Token bucket depth.
    #[arg(long, hide = true, default_value_t = DEFAULT.copy_burst_bytes)]
    pub copy_burst_bytes: u64,
    /// Background copies in flight at most (each reserves its destination).
    #[arg(long, hide = true, default_value_t = DEFAULT.copies_in_flight_max)]
    pub copies_in_flight_max: u32,
    /// Fraction of primary kept free for uploads (new assets land on primary): promotions leave
    /// it free, and clean copies are evicted (coldest first) when uploads eat into it.
    #[arg(long, hide = true, default_value_t = DEFAULT.upload_headroom_fraction)]
    pub upload_headroom_fraction: f64,
    /// After a failed copy, the asset is not retried for this long.
    #[arg(long, hide = true, default_value_t = DEFAULT.retry_backoff_s)]
    pub retry_backoff_s: f64,
    /// Whether the policy schedules write-backs ([`Decision::WriteBack`]) under its budget. Off
    /// when the caller copies dirty assets to secondary by itself and reports each with
    /// [`TierPolicy::mark_clean`].
    #[arg(long, hide = true, action = clap::ArgAction::Set, default_value_t = DEFAULT.schedule_write_backs)]
    pub schedule_write_backs: bool,
}

/// The defaults, written once for [`Default`] and the flags.
const DEFAULT: PolicyConfig = PolicyConfig {
    primary_capacity_bytes: 0,
    half_life_s: None,
    promote_per_h: None,
    demote_per_h: None,
    swap_margin: None,
    min_residency_s: 600.0,
    copy_budget_bytes_per_s: 256 << 20,
    copy_burst_bytes: 256 << 20,
    copies_in_flight_max: 4,
    upload_headroom_fraction: 0.02,
    retry_backoff_s: 60.0,
    schedule_write_backs: true,
};

impl Default for PolicyConfig {
    fn default() -> PolicyConfig {
        DEFAULT
    }
}

/// A setting the policy cannot work with. The message names the field and what is accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("tiering policy: {field} = {value} is invalid: {expected}")]
    Invalid {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
}

fn check(
    ok: bool,
    field: &'static str,
    value: f64,
    expected: &'static str,
) -> Result<(), PolicyError> {
    if ok {
        Ok(())
    } else {
        Err(PolicyError::Invalid {
            field,
            value: value.to_string(),
            expected,
        })
    }
}

impl PolicyConfig {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if let Some(h) = self.half_life_s {
            check(
                h.is_finite() && h > 0.0,
                "half_life_s",
                h,
                "a positive number of seconds",
            )?;
        }
        if let Some(p) = self.promote_per_h {
            check(
                p.is_finite() && p >= 0.0,
                "promote_per_h",
                p,
                "views per hour, ≥ 0",
            )?;
        }
        if let Some(d) = self.demote_per_h {
            check(
                d.is_finite() && d >= 0.0 && self.promote_per_h.is_none_or(|p| d <= p),
                "demote_per_h",
                d,
                "views per hour, ≥ 0 and ≤ promote_per_h (hysteresis)",
            )?;
        }
        if let Some(m) = self.swap_margin {
            check(
                m.is_finite() && m >= 0.0,
                "swap_margin",
                m,
                "a fraction ≥ 0, e.g. 0.25",
            )?;
        }
        let r = self.min_residency_s;
        check(
            r.is_finite() && r >= 0.0,
            "min_residency_s",
            r,
            "seconds, ≥ 0",
        )?;
        let f = self.upload_headroom_fraction;
        check(
            f.is_finite() && (0.0..1.0).contains(&f),
            "upload_headroom_fraction",
            f,
            "a fraction in [0, 1)",
        )?;
        let b = self.retry_backoff_s;
        check(
            b.is_finite() && b >= 0.0,
            "retry_backoff_s",
            b,
            "seconds, ≥ 0",
        )?;
        let c = self.copies_in_flight_max;
        check(c > 0, "copies_in_flight_max", f64::from(c), "at least 1")?;
        Ok(())
    }
}

/// Counters since the policy started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PolicyStats {
    pub promotions: u64,
    pub promoted_bytes: u64,
    pub promotions_failed: u64,
    pub write_backs: u64,
    pub written_back_bytes: u64,
    pub write_backs_failed: u64,
    pub demotions: u64,
    pub demoted_bytes: u64,
    pub evictions: u64,
    pub evicted_bytes: u64,
    pub uploads_to_primary: u64,
    pub uploads_to_primary_bytes: u64,
    pub uploads_refused: u64,
    /// Bytes of background copies started (promotions and write-backs), whatever their outcome.
    pub copy_bytes_started: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Promote,
    WriteBack,
    Demote,
    Evict,
    Upload,
}

#[derive(Debug, Clone, Copy)]
struct Op {
    kind: OpKind,
    slot: u32,
    bytes: u64,
    /// The asset was removed while the op was in flight: its bytes count until it ends.
    orphaned: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    size: u64,
    residence: Residence,
    /// When the primary copy arrived (for the minimum residency).
    on_primary_since_ns: u64,
    /// When it became dirty (write-back order).
    dirty_since_ns: u64,
    /// No new copy before this time (after a failure).
    retry_after_ns: u64,
    /// Since when its requests are counted (its rate is trusted for a demotion only after
    /// [`RATE_TRUSTED_HALF_LIVES`] half-lives: before, it still climbs from 0).
    observed_since_ns: u64,
    /// The op in flight for this asset, if any.
    op: Option<Ticket>,
}

const UNKNOWN: Entry = Entry {
    size: 0,
    residence: Residence::Unknown,
    on_primary_since_ns: 0,
    dirty_since_ns: 0,
    retry_after_ns: 0,
    observed_since_ns: 0,
    op: None,
};

/// A decaying rate that started from 0 reaches `1 − 2^-n` of the true rate after `n`
/// half-lives; a cold demotion waits until it is at 75 %, so a restart (all rates 0) or a
/// newly registered asset is not demoted for a rate that has not caught up yet.
const RATE_TRUSTED_HALF_LIVES: f64 = 2.0;

/// The automatic promote threshold, in views within about one half-life: more than one, so a
/// single request never promotes a cold asset (two close together do).
pub const AUTO_PROMOTE_VIEWS: f64 = 1.5;

/// The automatic demote threshold as a fraction of the promote threshold (hysteresis).
pub const AUTO_DEMOTE_FRACTION: f64 = 0.25;

/// The rate one view adds under half-life `h` seconds, views per hour: `ln 2 · 3600 / h` (the
/// limit of `(1 − 2^(−dt/h)) / dt` for a fold interval `dt` much shorter than `h`).
pub fn view_rate_per_h(half_life_s: f64) -> f64 {
    std::f64::consts::LN_2 * 3600.0 / half_life_s
}

/// The automatic swap margin's relative part (see `TierPolicy::beats`).
pub const AUTO_MARGIN_FRACTION: f64 = 0.25;
/// The automatic swap margin's statistical part, in standard errors.
pub const AUTO_MARGIN_SIGMAS: f64 = 1.0;

/// The promote and demote thresholds (views per hour) of an asset without overrides under
/// half-life `half_life_s`: the configured ones, else [`AUTO_PROMOTE_VIEWS`] views' worth of
/// rate and [`AUTO_DEMOTE_FRACTION`] of that.
fn thresholds_per_h(cfg: &PolicyConfig, half_life_s: f64) -> (f64, f64) {
    let promote = cfg
        .promote_per_h
        .unwrap_or_else(|| AUTO_PROMOTE_VIEWS * view_rate_per_h(half_life_s));
    let demote = cfg.demote_per_h.unwrap_or(AUTO_DEMOTE_FRACTION * promote);
    (promote, demote)
}

/// [`TierPolicy::beats`] for a configured margin (or none) and a half-life in seconds.
fn beats(margin: Option<f64>, half_life_s: f64, candidate_per_h: f64, victim_per_h: f64) -> bool {
    match margin {
        Some(m) => victim_per_h * (1.0 + m) <= candidate_per_h,
        None => {
            let h = half_life_s / 3600.0;
            let sigma =
                ((candidate_per_h + victim_per_h) * std::f64::consts::LN_2 / (2.0 * h)).sqrt();
            candidate_per_h
                >= victim_per_h * (1.0 + AUTO_MARGIN_FRACTION) + AUTO_MARGIN_SIGMAS * sigma
        }
    }
}

/// Primary counts as filling (free room open to any candidate above its threshold) while more
/// than this fraction of it is free beyond the upload headroom.
const FILLING_FREE_FRACTION: f64 = 0.05;

/// Candidates considered per tick (the hottest first). Bounds the work of one tick.
const CANDIDATES_PER_TICK_MAX: usize = 512;

/// The migration policy of one node. See the module documentation.
pub struct TierPolicy {
    cfg: PolicyConfig,
    counters: Arc<RateCounters>,
    rates: Rates,
    /// Chooses the half-life when the configuration leaves it unset.
    tuner: Option<HalfLifeTuner>,
    entries: Vec<Entry>,
    overrides: BTreeMap<u32, AssetPolicy>,
    /// Slots whose residence is `Clean` (the only copies that may leave primary).
    clean: BTreeSet<u32>,
    /// `(dirty_since_ns, slot)` of `Dirty` assets, oldest first.
    dirty: BTreeSet<(u64, u32)>,
    ops: BTreeMap<Ticket, Op>,
    next_ticket: u64,
    /// Every byte on or reserved on primary (see the module documentation).
    used_bytes: u64,
    /// Part of `used_bytes` being dropped (will be free once confirmed).
    dropping_bytes: u64,
    copies_in_flight: u32,
    /// Token bucket, bytes; negative is debt.
    tokens: f64,
    last_tick_ns: Option<u64>,
    /// Candidates that qualified but waited (budget, or space being freed), retried next tick.
    deferred: Vec<u32>,
    touched: Vec<u32>,
    stats: PolicyStats,
}

impl std::fmt::Debug for TierPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TierPolicy")
            .field("used_bytes", &self.used_bytes)
            .field("capacity_bytes", &self.cfg.primary_capacity_bytes)
            .field("copies_in_flight", &self.copies_in_flight)
            .field("stats", &self.stats)
            .finish()
    }
}

impl TierPolicy {
    /// A policy reading the rate counters the shards write.
    pub fn new(cfg: PolicyConfig, counters: Arc<RateCounters>) -> Result<TierPolicy, PolicyError> {
        cfg.validate()?;
        let (rates, tuner) = match cfg.half_life_s {
            Some(h) => (Rates::new(h), None),
            None => {
                let mut r = Rates::with_half_lives(&TUNED_HALF_LIVES_S);
                r.set_active(tuning::START);
                (r, Some(HalfLifeTuner::new()))
            }
        };
        Ok(TierPolicy {
            rates,
            tuner,
            tokens: cfg.copy_burst_bytes as f64,
            cfg,
            counters,
            entries: Vec::new(),
            overrides: BTreeMap::new(),
            clean: BTreeSet::new(),
            dirty: BTreeSet::new(),
            ops: BTreeMap::new(),
            next_ticket: 1,
            used_bytes: 0,
            dropping_bytes: 0,
            copies_in_flight: 0,
            last_tick_ns: None,
            deferred: Vec::new(),
            touched: Vec::new(),
            stats: PolicyStats::default(),
        })
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.cfg
    }

    pub fn stats(&self) -> PolicyStats {
        self.stats
    }

    /// Bytes on or reserved on primary.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Background copies (promotions, write-backs) in flight.
    pub fn copies_in_flight(&self) -> u32 {
        self.copies_in_flight
    }

    /// Where the asset in `slot` is.
    pub fn residence(&self, slot: u32) -> Residence {
        self.entry(slot).map_or(Residence::Unknown, |e| e.residence)
    }

    /// The asset's decaying request rate, views per hour, as of the last tick.
    pub fn rate_per_h(&self, slot: u32) -> f64 {
        self.rates.rate_per_h(slot)
    }

    pub fn asset_policy(&self, slot: u32) -> AssetPolicy {
        self.overrides.get(&slot).copied().unwrap_or_default()
    }

    /// Sets the overrides of the asset in `slot` (they go with the asset: removing it clears
    /// them). Takes effect at the next tick.
    pub fn set_asset_policy(&mut self, slot: u32, policy: AssetPolicy) -> Result<(), PolicyError> {
        policy.validate()?;
        if policy == AssetPolicy::default() {
            self.overrides.remove(&slot);
        } else {
            self.overrides.insert(slot, policy);
        }
        Ok(())
    }

    fn entry(&self, slot: u32) -> Option<&Entry> {
        self.entries
            .get(slot as usize)
            .filter(|e| e.residence != Residence::Unknown)
    }

    fn entry_mut(&mut self, slot: u32) -> &mut Entry {
        let i = slot as usize;
        if self.entries.len() <= i {
            self.entries.resize(i + 1, UNKNOWN);
        }
        &mut self.entries[i]
    }

    fn ticket(&mut self) -> Ticket {
        let t = Ticket(self.next_ticket);
        self.next_ticket += 1;
        t
    }

    /// The half-life the rates are read with now (configured, or chosen by the tuner).
    pub fn half_life_s(&self) -> f64 {
        self.rates.half_life_s()
    }

    /// What the half-life tuner judged; `None` when the half-life is configured.
    pub fn tuning(&self) -> Option<TuningState> {
        self.tuner.as_ref().map(|t| t.state(&self.rates))
    }

    /// The promote threshold of an asset without overrides, views per hour: the configured
    /// one, or [`AUTO_PROMOTE_VIEWS`] views' worth of rate under the current half-life, so one
    /// request never promotes a cold asset, at any request rate.
    pub fn promote_floor_per_h(&self) -> f64 {
        thresholds_per_h(&self.cfg, self.rates.half_life_s()).0
    }

    /// The demote threshold of an asset without overrides: the configured one, or
    /// [`AUTO_DEMOTE_FRACTION`] of the promote threshold.
    pub fn demote_floor_per_h(&self) -> f64 {
        thresholds_per_h(&self.cfg, self.rates.half_life_s()).1
    }

    /// Whether a candidate at `candidate_per_h` may evict a clean copy at `victim_per_h`.
    /// With a configured margin: `victim · (1 + margin) ≤ candidate`. Unset, the margin follows
    /// the noise of the rates: the candidate must be hotter by [`AUTO_MARGIN_FRACTION`] and by
    /// [`AUTO_MARGIN_SIGMAS`] standard errors of the difference. A decaying rate of a Poisson
    /// stream of `r` views per hour under half-life `h` hours has variance `r · ln 2 / (2h)`,
    /// so at a low request rate or a short half-life the margin widens (a request or two more
    /// is no reason to copy), and at a high one it narrows towards the fraction (a small but
    /// real difference is worth a copy).
    fn beats(&self, candidate_per_h: f64, victim_per_h: f64) -> bool {
        beats(
            self.cfg.swap_margin,
            self.rates.half_life_s(),
            candidate_per_h,
            victim_per_h,
        )
    }

    fn promote_per_h(&self, slot: u32) -> f64 {
        self.overrides
            .get(&slot)
            .and_then(|p| p.promote_per_h)
            .unwrap_or_else(|| self.promote_floor_per_h())
    }

    fn demote_per_h(&self, slot: u32) -> f64 {
        self.overrides
            .get(&slot)
            .and_then(|p| p.demote_per_h)
            .unwrap_or_else(|| self.demote_floor_per_h())
    }

    fn pin(&self, slot: u32) -> Option<Tier> {
        self.overrides.get(&slot).and_then(|p| p.pin)
    }

    fn headroom_bytes(&self) -> u64 {
        (self.cfg.primary_capacity_bytes as f64 * self.cfg.upload_headroom_fraction) as u64
    }

    /// Registers an asset that exists (found at start, or uploaded to secondary). An asset
    /// already in `slot` is removed first.
    pub fn add_asset(&mut self, now_ns: u64, slot: u32, size: u64, placement: Placement) {
        self.remove_asset(slot);
        self.counters.ensure_slots(slot.saturating_add(1));
        self.rates.forget(&self.counters, slot);
        let residence = match placement {
            Placement::Secondary => Residence::Secondary,
            Placement::PrimaryClean => {
                self.clean.insert(slot);
                self.used_bytes += size;
                Residence::Clean
            }
            Placement::PrimaryDirty => {
                self.dirty.insert((now_ns, slot));
                self.used_bytes += size;
                Residence::Dirty
            }
        };
        *self.entry_mut(slot) = Entry {
            size,
            residence,
            on_primary_since_ns: now_ns,
            dirty_since_ns: now_ns,
            observed_since_ns: now_ns,
            ..UNKNOWN
        };
    }

    /// Forgets the asset in `slot` (deleted). An op in flight for it keeps its bytes counted
    /// until the caller reports its end.
    pub fn remove_asset(&mut self, slot: u32) {
        let Some(e) = self.entry(slot).copied() else {
            return;
        };
        match e.residence {
            Residence::Dirty => {
                self.dirty.remove(&(e.dirty_since_ns, slot));
                self.used_bytes -= e.size;
            }
            Residence::Clean => {
                self.clean.remove(&slot);
                self.used_bytes -= e.size;
            }
            _ => {}
        }
        if let Some(op) = e.op.and_then(|t| self.ops.get_mut(&t)) {
            op.orphaned = true;
        }
        self.overrides.remove(&slot);
        self.entries[slot as usize] = UNKNOWN;
        self.rates.forget(&self.counters, slot);
    }

    /// Asks for room on primary for an upload of `bytes` (new assets land on primary). `Some`:
    /// write it to primary; the bytes are reserved until [`TierPolicy::upload_committed`] or
    /// [`TierPolicy::finished`] with [`Outcome::Failed`]. `None`: primary has no room (even in
    /// the headroom kept for uploads); write it to secondary and register it with
    /// [`TierPolicy::add_asset`].
    pub fn reserve_upload(&mut self, bytes: u64) -> Option<Ticket> {
        if self.used_bytes.saturating_add(bytes) > self.cfg.primary_capacity_bytes {
            self.stats.uploads_refused += 1;
            return None;
        }
        let ticket = self.ticket();
        self.used_bytes += bytes;
        self.ops.insert(
            ticket,
            Op {
                kind: OpKind::Upload,
                slot: u32::MAX,
                bytes,
                orphaned: false,
            },
        );
        Some(ticket)
    }

    /// The reserved upload is durable on primary as the asset in `slot` (dirty: write-back
    /// follows). Returns false for an unknown ticket.
    pub fn upload_committed(&mut self, now_ns: u64, ticket: Ticket, slot: u32) -> bool {
        let Some(op) = self.ops.get(&ticket).copied() else {
            return false;
        };
        if op.kind != OpKind::Upload {
            return false;
        }
        self.ops.remove(&ticket);
        // The reservation becomes the dirty copy's bytes.
        self.used_bytes -= op.bytes;
        self.add_asset(now_ns, slot, op.bytes, Placement::PrimaryDirty);
        self.stats.uploads_to_primary += 1;
        self.stats.uploads_to_primary_bytes += op.bytes;
        true
    }

    /// Ends a decision (or aborts an upload reservation with [`Outcome::Failed`]). Returns false
    /// for an unknown ticket (already ended), which changes nothing.
    pub fn finished(&mut self, now_ns: u64, ticket: Ticket, outcome: Outcome) -> bool {
        let Some(op) = self.ops.get(&ticket).copied() else {
            return false;
        };
        if op.kind == OpKind::Upload {
            // A reservation ends with `upload_committed`, or here when the upload failed.
            if outcome == Outcome::Done {
                return false;
            }
            self.ops.remove(&ticket);
            self.used_bytes -= op.bytes;
            return true;
        }
        self.ops.remove(&ticket);
        match op.kind {
            OpKind::Promote | OpKind::WriteBack => self.copies_in_flight -= 1,
            OpKind::Demote | OpKind::Evict => self.dropping_bytes -= op.bytes,
            OpKind::Upload => {}
        }
        if op.orphaned {
            // The asset was deleted meanwhile: whatever the op left on primary goes with it.
            self.used_bytes -= op.bytes;
            return true;
        }
        let backoff_ns = (self.cfg.retry_backoff_s * 1e9) as u64;
        let slot = op.slot;
        // Not orphaned: the slot still holds the asset the op was started for.
        let e = &mut self.entries[slot as usize];
        e.op = None;
        match (op.kind, outcome) {
            (OpKind::Promote, Outcome::Done) => {
                e.residence = Residence::Clean;
                e.on_primary_since_ns = now_ns;
                self.clean.insert(slot);
                self.stats.promotions += 1;
                self.stats.promoted_bytes += op.bytes;
            }
            (OpKind::Promote, Outcome::Failed) => {
                e.residence = Residence::Secondary;
                e.retry_after_ns = now_ns.saturating_add(backoff_ns);
                self.used_bytes -= op.bytes;
                self.stats.promotions_failed += 1;
            }
            (OpKind::WriteBack, Outcome::Done) => {
                e.residence = Residence::Clean;
                self.clean.insert(slot);
                self.stats.write_backs += 1;
                self.stats.written_back_bytes += op.bytes;
            }
            (OpKind::WriteBack, Outcome::Failed) => {
                e.residence = Residence::Dirty;
                e.retry_after_ns = now_ns.saturating_add(backoff_ns);
                self.dirty.insert((e.dirty_since_ns, slot));
                self.stats.write_backs_failed += 1;
            }
            (OpKind::Demote | OpKind::Evict, Outcome::Done) => {
                e.residence = Residence::Secondary;
                self.used_bytes -= op.bytes;
                if op.kind == OpKind::Demote {
                    self.stats.demotions += 1;
                    self.stats.demoted_bytes += op.bytes;
                } else {
                    self.stats.evictions += 1;
                    self.stats.evicted_bytes += op.bytes;
                }
            }
            (OpKind::Demote | OpKind::Evict, Outcome::Failed) => {
                e.residence = Residence::Clean;
                self.clean.insert(slot);
            }
            (OpKind::Upload, _) => {}
        }
        true
    }

    /// A dirty asset got its secondary copy outside the policy (the caller's own write-back, or
    /// a scan that found the copy): it is clean from now on. Returns false (and changes nothing)
    /// unless the asset in `slot` is `Dirty`.
    pub fn mark_clean(&mut self, slot: u32) -> bool {
        let Some(e) = self.entry(slot).copied() else {
            return false;
        };
        if e.residence != Residence::Dirty {
            return false;
        }
        self.dirty.remove(&(e.dirty_since_ns, slot));
        self.clean.insert(slot);
        self.entries[slot as usize].residence = Residence::Clean;
        true
    }

    /// One scheduler step at `now_ns`: folds the rate counters and appends the decisions to
    /// `out`, in the order to execute them.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Decision>) {
        self.fold(now_ns);
        self.demote_cold(now_ns, out);
        self.write_back(now_ns, out);
        self.keep_headroom(now_ns, out);
        self.promote(now_ns, out);
    }

    /// A step that decides nothing (migration is paused): folds the rate counters, so rates
    /// stay current, and keeps the assets that saw requests as candidates for the next
    /// [`TierPolicy::tick`].
    pub fn observe(&mut self, now_ns: u64) {
        let mut seen = std::mem::take(&mut self.deferred);
        self.fold(now_ns);
        seen.extend_from_slice(&self.touched);
        seen.sort_unstable();
        seen.dedup();
        self.deferred = seen;
    }

    /// The slots that saw requests in the last fold ([`TierPolicy::tick`] or
    /// [`TierPolicy::observe`]), ascending: whose rates changed.
    pub fn touched(&self) -> &[u32] {
        &self.touched
    }

    /// Changes the copy budget (bytes/s, 0 = unlimited); the token bucket keeps at least one
    /// second of it.
    pub fn set_copy_budget(&mut self, bytes_per_s: u64) {
        self.cfg.copy_budget_bytes_per_s = bytes_per_s;
        self.cfg.copy_burst_bytes = self.cfg.copy_burst_bytes.max(bytes_per_s);
    }

    fn fold(&mut self, now_ns: u64) {
        let last = self.last_tick_ns.unwrap_or(now_ns);
        let elapsed_ns = now_ns.saturating_sub(last);
        self.last_tick_ns = Some(last.max(now_ns));
        self.touched.clear();
        let entries = &self.entries;
        let tuner = &mut self.tuner;
        self.rates.fold_with(
            &self.counters,
            elapsed_ns,
            |slot| entries.get(slot as usize).map_or(0, |e| e.size),
            &mut self.touched,
            |f| {
                if let Some(t) = tuner.as_mut() {
                    t.on_fold(f);
                }
            },
        );
        let capacity = self
            .cfg
            .primary_capacity_bytes
            .saturating_sub(self.headroom_bytes());
        if let Some(t) = self.tuner.as_mut().filter(|t| t.due(now_ns)) {
            let cfg = &self.cfg;
            let thresholds = |h: f64| thresholds_per_h(cfg, h);
            let margin = self.cfg.swap_margin;
            let beats = |c: f64, v: f64, h: f64| beats(margin, h, c, v);
            let rules = tuning::ShadowRules {
                thresholds_per_h: &thresholds,
                beats: &beats,
            };
            let k = t.evaluate(now_ns, &self.rates, &self.entries, capacity, &rules);
            self.rates.set_active(k);
        }
        let burst = self.cfg.copy_burst_bytes as f64;
        self.tokens = match self.cfg.copy_budget_bytes_per_s {
            // Unlimited: the bucket is always full, so a copy waits for nothing but the
            // in-flight limit.
            0 => burst,
            budget => (self.tokens + budget as f64 * elapsed_ns as f64 / 1e9).min(burst),
        };
    }

    fn past_residency(&self, e: &Entry, now_ns: u64) -> bool {
        now_ns.saturating_sub(e.on_primary_since_ns) as f64 >= self.cfg.min_residency_s * 1e9
    }

    fn may_copy(&self) -> bool {
        self.within_budget(self.tokens) && self.copies_in_flight < self.cfg.copies_in_flight_max
    }

    /// A copy may start with `tokens` left in the bucket: always when the budget is unlimited
    /// (0), else while the bucket is not in debt.
    fn within_budget(&self, tokens: f64) -> bool {
        self.cfg.copy_budget_bytes_per_s == 0 || tokens >= 0.0
    }

    fn start_copy(&mut self, kind: OpKind, slot: u32, out: &mut Vec<Decision>) {
        let ticket = self.ticket();
        let e = &mut self.entries[slot as usize];
        let bytes = e.size;
        e.op = Some(ticket);
        if kind == OpKind::Promote {
            e.residence = Residence::Promoting;
            self.used_bytes += bytes;
            out.push(Decision::Promote {
                ticket,
                slot,
                bytes,
            });
        } else {
            e.residence = Residence::WritingBack;
            self.dirty.remove(&(e.dirty_since_ns, slot));
            out.push(Decision::WriteBack {
                ticket,
                slot,
                bytes,
            });
        }
        self.tokens -= bytes as f64;
        self.copies_in_flight += 1;
        self.stats.copy_bytes_started += bytes;
        self.ops.insert(
            ticket,
            Op {
                kind,
                slot,
                bytes,
                orphaned: false,
            },
        );
    }

    fn start_drop(&mut self, kind: OpKind, slot: u32, out: &mut Vec<Decision>) {
        let ticket = self.ticket();
        let e = &mut self.entries[slot as usize];
        let bytes = e.size;
        e.op = Some(ticket);
        e.residence = Residence::Dropping;
        self.clean.remove(&slot);
        self.dropping_bytes += bytes;
        self.ops.insert(
            ticket,
            Op {
                kind,
                slot,
                bytes,
                orphaned: false,
            },
        );
        out.push(if kind == OpKind::Demote {
            Decision::Demote {
                ticket,
                slot,
                bytes,
            }
        } else {
            Decision::Evict {
                ticket,
                slot,
                bytes,
            }
        });
    }

    fn demote_cold(&mut self, now_ns: u64, out: &mut Vec<Decision>) {
        let mut cold = Vec::new();
        for &slot in &self.clean {
            let Some(e) = self.entry(slot) else { continue };
            let go = match self.pin(slot) {
                Some(Tier::Primary) => false,
                Some(Tier::Secondary) => true,
                None => {
                    self.rates.rate_per_h(slot) < self.demote_per_h(slot)
                        && self.past_residency(e, now_ns)
                        && now_ns.saturating_sub(e.observed_since_ns) as f64
                            >= RATE_TRUSTED_HALF_LIVES * self.rates.half_life_s() * 1e9
                }
            };
            if go {
                cold.push(slot);
            }
        }
        for slot in cold {
            self.start_drop(OpKind::Demote, slot, out);
        }
    }

    fn write_back(&mut self, now_ns: u64, out: &mut Vec<Decision>) {
        if !self.cfg.schedule_write_backs {
            return;
        }
        let mut picked = Vec::new();
        let mut tokens = self.tokens;
        let mut in_flight = self.copies_in_flight;
        for &(_, slot) in &self.dirty {
            if !self.within_budget(tokens) || in_flight >= self.cfg.copies_in_flight_max {
                break;
            }
            let Some(e) = self.entry(slot) else { continue };
            if e.retry_after_ns > now_ns {
                continue;
            }
            tokens -= e.size as f64;
            in_flight += 1;
            picked.push(slot);
        }
        for slot in picked {
            self.start_copy(OpKind::WriteBack, slot, out);
        }
    }

    /// Clean copies that may be evicted (not pinned to primary, past the minimum residency), to
    /// be taken coldest first from a [`VictimOrder`].
    fn eviction_order(&self, now_ns: u64) -> VictimOrder {
        let heap: BinaryHeap<Reverse<Victim>> = self
            .clean
            .iter()
            .filter(|&&slot| {
                self.pin(slot) != Some(Tier::Primary)
                    && self
                        .entry(slot)
                        .is_some_and(|e| self.past_residency(e, now_ns))
            })
            .map(|&slot| {
                Reverse(Victim {
                    rate_per_h: self.rates.rate_per_h(slot),
                    slot,
                })
            })
            .collect();
        VictimOrder {
            heap,
            sorted: Vec::new(),
        }
    }

    fn keep_headroom(&mut self, now_ns: u64, out: &mut Vec<Decision>) {
        let target_used = self
            .cfg
            .primary_capacity_bytes
            .saturating_sub(self.headroom_bytes());
        let used_soon = self.used_bytes - self.dropping_bytes;
        if used_soon <= target_used {
            return;
        }
        let mut excess = used_soon - target_used;
        let mut order = self.eviction_order(now_ns);
        let mut victims = Vec::new();
        let mut j = 0;
        while excess > 0 {
            let Some(v) = order.get(j) else { break };
            j += 1;
            excess = excess.saturating_sub(self.entries[v.slot as usize].size);
            victims.push(v.slot);
        }
        for slot in victims {
            self.start_drop(OpKind::Evict, slot, out);
        }
    }

    fn promote(&mut self, now_ns: u64, out: &mut Vec<Decision>) {
        // Candidates: assets that saw requests this tick, those deferred last tick, and those
        // pinned to primary; on secondary, not backing off, at or above their threshold.
        let mut cands: Vec<u32> = self.touched.clone();
        cands.append(&mut self.deferred);
        cands.extend(
            self.overrides
                .iter()
                .filter(|(_, p)| p.pin == Some(Tier::Primary))
                .map(|(&slot, _)| slot),
        );
        cands.sort_unstable();
        cands.dedup();
        let mut cands: Vec<(bool, f64, u32)> = cands
            .into_iter()
            .filter_map(|slot| {
                let e = self.entry(slot)?;
                let pin = self.pin(slot);
                let rate = self.rates.rate_per_h(slot);
                let qualifies = e.residence == Residence::Secondary
                    && e.retry_after_ns <= now_ns
                    && e.size <= self.cfg.primary_capacity_bytes
                    && match pin {
                        Some(Tier::Primary) => true,
                        Some(Tier::Secondary) => false,
                        None => rate > 0.0 && rate >= self.promote_per_h(slot),
                    };
                qualifies.then_some((pin == Some(Tier::Primary), rate, slot))
            })
            .collect();
        if cands.is_empty() {
            return;
        }
        // Pinned first, then hottest; ties by slot, so the order is deterministic.
        cands.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
        cands.truncate(CANDIDATES_PER_TICK_MAX);

        let capacity = self.cfg.primary_capacity_bytes;
        let headroom = self.headroom_bytes();
        // Room for promotions now, and once the drops in flight are confirmed.
        let mut room_now = capacity
            .saturating_sub(headroom)
            .saturating_sub(self.used_bytes);
        let mut room_soon = room_now + self.dropping_bytes;
        let mut victims: Option<VictimOrder> = None;
        let mut victim_next = 0usize;
        let mut deferred = Vec::new();
        // While primary is filling, anything at or above its threshold is admitted. Once it is
        // (nearly) full, free room goes only to candidates at least as hot as the coldest clean
        // copy already there: otherwise room freed by evicting a large asset for a small one
        // would admit whatever happened to be requested this tick, for the next pressure to
        // evict again.
        let filling = room_soon as f64 >= capacity as f64 * FILLING_FREE_FRACTION;
        let admission_floor_per_h = if filling {
            0.0
        } else {
            self.clean
                .iter()
                .filter(|&&s| self.pin(s) != Some(Tier::Primary))
                .map(|&s| self.rates.rate_per_h(s))
                .min_by(f64::total_cmp)
                .unwrap_or(0.0)
        };
        for (pinned, rate, slot) in cands {
            let size = self.entry(slot).map_or(0, |e| e.size);
            if !self.may_copy() {
                deferred.push(slot);
                continue;
            }
            let may_take_free_room = pinned || rate >= admission_floor_per_h;
            if size <= room_now && may_take_free_room {
                room_now -= size;
                room_soon -= size;
                self.start_copy(OpKind::Promote, slot, out);
                continue;
            }
            if size <= room_soon && may_take_free_room {
                // Fits once the drops in flight are confirmed; the space is earmarked.
                room_soon -= size;
                room_now = room_now.min(room_soon);
                deferred.push(slot);
                continue;
            }
            // What it must free by evicting: all of its size if it may not take free room.
            let need = size.saturating_sub(if may_take_free_room { room_soon } else { 0 });
            let order = victims.get_or_insert_with(|| self.eviction_order(now_ns));
            let mut freed = 0u64;
            let mut end = victim_next;
            while freed < need {
                let Some(v) = order.get(end) else { break };
                if !pinned && !self.beats(rate, v.rate_per_h) {
                    break;
                }
                freed += self.entries[v.slot as usize].size;
                end += 1;
            }
            if freed < need {
                // Not hot enough to displace what it would need to (a smaller, colder candidate
                // may still fit).
                continue;
            }
            let chosen: Vec<u32> = (victim_next..end)
                .filter_map(|j| order.get(j).map(|v| v.slot))
                .collect();
            victim_next = end;
            for victim in chosen {
                self.start_drop(OpKind::Evict, victim, out);
            }
            room_soon = room_soon + freed - size;
            room_now = room_now.min(room_soon);
            deferred.push(slot);
        }
        self.deferred = deferred;
    }
}
