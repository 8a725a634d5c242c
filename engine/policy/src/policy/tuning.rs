//! The self-tuning half-life: the policy keeps every asset's rate under several half-lives at
//! once ([`Rates::with_half_lives`]) and, on the node's own traffic, judges which of them would
//! have served best.
//!
//! **Why.** The half-life trades noise against staleness. A short one follows popularity as it
//! moves, but at a low request rate the boundary assets (those the primary can only just hold)
//! see a request or two per half-life, so their rates are noise and the same titles are
//! promoted and evicted again and again. A long one is steady but slow to see a new favourite
//! and slow to warm up. Which one is best depends on the request rate and on how fast
//! popularity moves, neither of which an operator knows in advance, and both change.
//!
//! **How.** For each half-life `h` a *shadow primary* holds, at every evaluation (each
//! [`EVAL_INTERVAL_NS`]), the assets an ideal policy reading the `h` rates would hold: the
//! hottest by `h`, filled by size up to the primary's capacity. Between evaluations, every
//! byte requested counts as a shadow hit of `h` if its asset is in `h`'s shadow primary, and
//! every asset that enters a shadow primary counts its size as a shadow write. Both sums decay
//! over [`WINDOW_S`], so the comparison follows the traffic. The policy then reads the
//! half-life with the most shadow hits, preferring the one with the fewest shadow writes among
//! those within [`HIT_TOLERANCE`] of the best (the longer half-life, as a rule: same service,
//! fewer copies). A shadow primary admits, as the policy does, only assets at or above the
//! promote threshold that half-life implies, and keeps them down to the demote threshold. The half-life read now is kept while it stays
//! within twice the tolerance of the best and within [`WRITE_TOLERANCE`] of the cheapest good
//! one's writes; a new choice must win [`PATIENCE`] evaluations in a row before it applies,
//! and the policy moves one step at a time, so a choice does not flap.
//!
//! The shadow primaries see a sample of the library: every asset up to [`SAMPLE_SLOTS_MAX`],
//! beyond that a fixed hash-chosen subset of about that many, against the capacity scaled by
//! the sampled bytes (as SHARDS samples miss-ratio curves). The work per evaluation is a sort
//! of the sample per half-life, and a membership byte per slot.

use super::{Entry, Residence};
use crate::rate::{FoldedRequests, Rates, HALF_LIVES_MAX};

/// The half-lives the tuner chooses among: 30 min to 8 h. Shorter ones follow churn a little
/// better but copy far more: on the churning traces of `reel simulate --all`, 15 min gained
/// about a point of byte-hit ratio for 1.5× the promotion writes of 30 min.
pub const TUNED_HALF_LIVES_S: [f64; 5] = [1800.0, 3600.0, 7200.0, 14_400.0, 28_800.0];

/// The half-life read until the first evaluations have something to say (30 min).
pub(super) const START: usize = 0;

/// Time between evaluations of the shadow primaries.
pub(super) const EVAL_INTERVAL_NS: u64 = 120_000_000_000;

/// The shadow hits and writes decay with this half-life, so the judgement follows the traffic
/// of the last hours.
pub(super) const WINDOW_S: f64 = 6.0 * 3600.0;

/// Half-lives whose shadow byte-hit ratio is within this of the best are as good; among them
/// the one with the fewest shadow writes is chosen.
pub(super) const HIT_TOLERANCE: f64 = 0.002;

/// The half-life read now stays while its shadow writes are within this factor of the
/// cheapest good one's (and its hits within twice [`HIT_TOLERANCE`] of the best).
pub(super) const WRITE_TOLERANCE: f64 = 1.25;

/// Evaluations in a row a new choice must win before the policy moves towards it.
pub(super) const PATIENCE: u32 = 5;

/// Assets the shadow primaries follow at most (a hash-chosen sample beyond).
pub(super) const SAMPLE_SLOTS_MAX: u64 = 1 << 16;

const _: () = assert!(TUNED_HALF_LIVES_S.len() <= HALF_LIVES_MAX);
const _: () = assert!(
    TUNED_HALF_LIVES_S.len() <= 8,
    "one membership bit per half-life"
);

/// What the tuner judged, for `/migration`, `/metrics` and `reel simulate`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TuningState {
    /// The half-life the policy reads now.
    pub half_life_s: f64,
    /// Each half-life considered, with its shadow byte-hit ratio and shadow writes (bytes per
    /// hour) over the recent window.
    pub candidates: Vec<TuningCandidate>,
    /// Times the policy switched half-life.
    pub switches: u64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TuningCandidate {
    pub half_life_s: f64,
    pub shadow_byte_hit_ratio: f64,
    pub shadow_write_bytes_per_h: f64,
}

/// The policy's rules the shadow primaries follow, for a given half-life (seconds).
pub(super) struct ShadowRules<'a> {
    /// The promote and demote thresholds, views per hour.
    pub thresholds_per_h: &'a dyn Fn(f64) -> (f64, f64),
    /// Whether a candidate at the first rate may evict a member at the second
    /// ([`super::TierPolicy::beats`]).
    pub beats: &'a dyn Fn(f64, f64, f64) -> bool,
}

pub(super) struct HalfLifeTuner {
    /// Bit `k` of slot `s`: `s` is in the shadow primary of half-life `k`.
    members: Vec<u8>,
    hit_bytes: [f64; HALF_LIVES_MAX],
    write_bytes: [f64; HALF_LIVES_MAX],
    all_bytes: f64,
    /// Hours the decayed sums cover (for writes per hour).
    window_h: f64,
    /// Every `stride`-th slot by hash is sampled.
    stride: u64,
    last_eval_ns: Option<u64>,
    /// The choice that won the last evaluations, and how many in a row.
    leader: usize,
    leader_runs: u32,
    switches: u64,
    scratch: Vec<(f32, u32)>,
}

impl HalfLifeTuner {
    pub(super) fn new() -> HalfLifeTuner {
        HalfLifeTuner {
            members: Vec::new(),
            hit_bytes: [0.0; HALF_LIVES_MAX],
            write_bytes: [0.0; HALF_LIVES_MAX],
            all_bytes: 0.0,
            window_h: 0.0,
            stride: 1,
            last_eval_ns: None,
            leader: START,
            leader_runs: 0,
            switches: 0,
            scratch: Vec::new(),
        }
    }

    fn sampled(&self, slot: u32) -> bool {
        self.stride <= 1 || mix(slot).is_multiple_of(self.stride)
    }

    /// Counts what one fold saw of one slot against the shadow primaries.
    pub(super) fn on_fold(&mut self, f: FoldedRequests<'_>) {
        if !self.sampled(f.slot) {
            return;
        }
        let b = f.bytes as f64;
        self.all_bytes += b;
        let m = self.members.get(f.slot as usize).copied().unwrap_or(0);
        for (k, hits) in self
            .hit_bytes
            .iter_mut()
            .enumerate()
            .take(f.before_per_h.len())
        {
            if m & (1 << k) != 0 {
                *hits += b;
            }
        }
    }

    /// Whether an evaluation is due at `now_ns`.
    pub(super) fn due(&self, now_ns: u64) -> bool {
        self.last_eval_ns
            .is_none_or(|t| now_ns.saturating_sub(t) >= EVAL_INTERVAL_NS)
    }

    /// Rebuilds the shadow primaries from the rates now and returns the half-life (an index
    /// into `rates.half_lives_s()`) the policy should read from now on.
    pub(super) fn evaluate(
        &mut self,
        now_ns: u64,
        rates: &Rates,
        entries: &[Entry],
        capacity_bytes: u64,
        rules: &ShadowRules<'_>,
    ) -> usize {
        let dt_s = self
            .last_eval_ns
            .map_or(0.0, |t| now_ns.saturating_sub(t) as f64 / 1e9);
        self.last_eval_ns = Some(now_ns);
        let decay = (-dt_s / WINDOW_S).exp2();
        for v in self.hit_bytes.iter_mut().chain(self.write_bytes.iter_mut()) {
            *v *= decay;
        }
        self.all_bytes *= decay;
        self.window_h = self.window_h * decay + dt_s / 3600.0;

        let live = entries
            .iter()
            .filter(|e| e.residence != Residence::Unknown)
            .count() as u64;
        self.stride = live.div_ceil(SAMPLE_SLOTS_MAX).max(1);
        if self.members.len() < entries.len() {
            self.members.resize(entries.len(), 0);
        }
        let (mut sampled_bytes, mut all_bytes) = (0u64, 0u64);
        for (slot, e) in entries.iter().enumerate() {
            if e.residence == Residence::Unknown {
                continue;
            }
            all_bytes += e.size;
            if self.sampled(slot as u32) {
                sampled_bytes += e.size;
            }
        }
        let capacity = if all_bytes == 0 {
            0
        } else {
            (capacity_bytes as f64 * sampled_bytes as f64 / all_bytes as f64) as u64
        };
        let kn = rates.half_lives_s().len();
        for k in 0..kn {
            let h = rates.half_lives_s()[k];
            let written = self.rebuild(k, h, rates, entries, capacity, rules);
            self.write_bytes[k] += written as f64;
        }
        self.choose(rates.active(), kn)
    }

    /// Rebuilds half-life `k`'s shadow primary as the policy would move it, and returns the
    /// bytes that entered it. Members stay while at or above the demote threshold; candidates
    /// (at or above the promote threshold), hottest first, take free room, else evict the
    /// coldest members they beat by the swap margin, as in the policy's promotion step.
    fn rebuild(
        &mut self,
        k: usize,
        half_life_s: f64,
        rates: &Rates,
        entries: &[Entry],
        capacity: u64,
        rules: &ShadowRules<'_>,
    ) -> u64 {
        let (promote, demote) = (rules.thresholds_per_h)(half_life_s);
        let bit = 1u8 << k;
        let mut members: Vec<(f64, u32)> = Vec::new();
        let mut cands = std::mem::take(&mut self.scratch);
        cands.clear();
        let mut used = 0u64;
        for (slot, e) in entries.iter().enumerate() {
            let s = slot as u32;
            let sampled = self.sampled(s);
            let m = &mut self.members[slot];
            if *m & bit == 0 {
                let r = rates.rate_per_h_at(k, s);
                if sampled && e.residence != Residence::Unknown && r > 0.0 && r >= promote {
                    cands.push((r as f32, s));
                }
                continue;
            }
            let r = rates.rate_per_h_at(k, s);
            if e.residence == Residence::Unknown || r < demote || r <= 0.0 {
                *m &= !bit;
                continue;
            }
            used += e.size;
            members.push((r, s));
        }
        // Hottest candidates first; coldest members first.
        cands.sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        members.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut coldest = 0usize;
        let mut written = 0u64;
        for &(r, s) in &cands {
            let size = entries[s as usize].size;
            if size > capacity {
                continue;
            }
            let mut end = coldest;
            let mut freed = 0u64;
            while used + size > capacity + freed {
                let Some(&(v, _)) = members.get(end) else {
                    break;
                };
                if !(rules.beats)(f64::from(r), v, half_life_s) {
                    break;
                }
                freed += entries[members[end].1 as usize].size;
                end += 1;
            }
            if used + size > capacity + freed {
                continue;
            }
            for &(_, victim) in &members[coldest..end] {
                self.members[victim as usize] &= !bit;
            }
            coldest = end;
            used = used + size - freed;
            self.members[s as usize] |= bit;
            written += size;
        }
        self.scratch = cands;
        written
    }

    /// The half-life to read next, from the decayed shadow sums.
    fn choose(&mut self, active: usize, kn: usize) -> usize {
        if self.all_bytes <= 0.0 {
            return active;
        }
        let best = self.hit_bytes[..kn]
            .iter()
            .copied()
            .fold(f64::MIN, f64::max);
        let floor = best - HIT_TOLERANCE * self.all_bytes;
        // Hysteresis: the half-life read now stays while it is within twice the tolerance.
        if self.hit_bytes[active] >= best - 2.0 * HIT_TOLERANCE * self.all_bytes
            && self.write_bytes[active]
                <= (0..kn)
                    .filter(|&k| self.hit_bytes[k] >= floor)
                    .map(|k| self.write_bytes[k])
                    .fold(f64::MAX, f64::min)
                    * WRITE_TOLERANCE
        {
            self.leader = active;
            self.leader_runs = 0;
            return active;
        }
        let target = (0..kn)
            .filter(|&k| self.hit_bytes[k] >= floor)
            .min_by(|&a, &b| {
                self.write_bytes[a]
                    .total_cmp(&self.write_bytes[b])
                    .then(b.cmp(&a))
            })
            .unwrap_or(active);
        if target == self.leader {
            self.leader_runs = self.leader_runs.saturating_add(1);
        } else {
            self.leader = target;
            self.leader_runs = 1;
        }
        if target == active || self.leader_runs < PATIENCE {
            return active;
        }
        self.switches += 1;
        // One step at a time; the next evaluations decide whether to go on.
        self.leader_runs = 0;
        if target > active {
            active + 1
        } else {
            active - 1
        }
    }

    pub(super) fn state(&self, rates: &Rates) -> TuningState {
        let all = self.all_bytes;
        TuningState {
            half_life_s: rates.half_life_s(),
            candidates: rates
                .half_lives_s()
                .iter()
                .enumerate()
                .map(|(k, &h)| TuningCandidate {
                    half_life_s: h,
                    shadow_byte_hit_ratio: if all > 0.0 {
                        self.hit_bytes[k] / all
                    } else {
                        0.0
                    },
                    shadow_write_bytes_per_h: if self.window_h > 0.0 {
                        self.write_bytes[k] / self.window_h
                    } else {
                        0.0
                    },
                })
                .collect(),
            switches: self.switches,
        }
    }
}

/// A fixed 32-bit mix of the slot (the sample must not follow slot order, which follows upload
/// order).
fn mix(slot: u32) -> u64 {
    let mut x = u64::from(slot).wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tuner whose decayed sums are as given (per half-life), 100 bytes requested.
    fn with_sums(hits: [f64; 5], writes: [f64; 5]) -> HalfLifeTuner {
        let mut t = HalfLifeTuner::new();
        t.all_bytes = 100.0;
        t.hit_bytes[..5].copy_from_slice(&hits);
        t.write_bytes[..5].copy_from_slice(&writes);
        t
    }

    #[test]
    fn the_cheapest_good_half_life_wins_after_patience_one_step_at_a_time() {
        // 30 min, 1 h and 2 h serve as well (within the tolerance); 2 h copies least.
        let mut t = with_sums([50.0, 50.0, 49.9, 45.0, 40.0], [10.0, 6.0, 4.0, 3.0, 2.0]);
        let mut active = 0;
        for _ in 1..PATIENCE {
            assert_eq!(t.choose(active, 5), 0, "not before it won PATIENCE times");
        }
        active = t.choose(active, 5);
        assert_eq!(active, 1, "one step towards 2 h");
        for _ in 1..PATIENCE {
            assert_eq!(t.choose(active, 5), 1);
        }
        active = t.choose(active, 5);
        assert_eq!(active, 2);
        // Arrived: it stays.
        for _ in 0..3 * PATIENCE {
            assert_eq!(t.choose(active, 5), 2);
        }
        assert_eq!(t.switches, 2);
    }

    #[test]
    fn the_half_life_read_now_stays_while_it_is_nearly_as_good() {
        // 1 h is read; 30 min serves 0.3 point more (within twice the tolerance) and copies
        // no less: no reason to move.
        let mut t = with_sums([50.3, 50.0, 48.0, 45.0, 40.0], [6.0, 6.0, 4.0, 3.0, 2.0]);
        for _ in 0..3 * PATIENCE {
            assert_eq!(t.choose(1, 5), 1);
        }
        // 2 points behind: it moves to the better one.
        let mut t = with_sums([52.0, 50.0, 48.0, 45.0, 40.0], [6.0, 6.0, 4.0, 3.0, 2.0]);
        let mut got = 1;
        for _ in 0..PATIENCE {
            got = t.choose(1, 5);
        }
        assert_eq!(got, 0);
    }

    #[test]
    fn nothing_requested_changes_nothing() {
        let mut t = HalfLifeTuner::new();
        for _ in 0..3 * PATIENCE {
            assert_eq!(t.choose(3, 5), 3);
        }
    }
}
