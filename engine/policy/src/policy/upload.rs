//! Room on the primary for an upload: which clean copies make way for it.
//!
//! An upload lands on the primary when it has room, or when room can be made by dropping clean
//! copies (their secondary copy stays) colder than the upload is presumed to be; otherwise it
//! goes to the secondary and is promoted later if it becomes hot. The policy picks the victims,
//! the node drops them and reports each one with [`TierPolicy::finished`], as for a tick's
//! [`Decision::Evict`].

use super::victim::Victim;
use super::{Decision, OpKind, Tier, TierPolicy};

impl TierPolicy {
    /// The rate, in views per hour, an upload of unknown popularity is valued at: the promote
    /// threshold that applies to an asset without overrides. A clean copy colder than this
    /// makes way for an upload; a copy at least this hot is worth more on the primary than a
    /// newcomer that would be promoted only once it reached this rate.
    pub fn newcomer_rate_per_h(&self) -> f64 {
        self.promote_floor_per_h()
    }

    /// Picks clean primary copies to drop so that an upload of `need_bytes` fits: coldest first,
    /// only copies whose rate is below [`TierPolicy::newcomer_rate_per_h`], never a dirty one
    /// (its only copy), one pinned to the primary or one with an op in flight. If their sizes
    /// reach `need_bytes`, it starts their drops (appended to `out` as [`Decision::Evict`],
    /// counted as dropping until the caller reports each with [`TierPolicy::finished`]) and
    /// returns true; otherwise it appends nothing and returns false (the upload goes to the
    /// secondary).
    ///
    /// The minimum residency does not hold a copy back here: it keeps promotions from
    /// bouncing, and a copy colder than the newcomer threshold was not promoted for its rate
    /// (or has cooled since).
    pub fn evict_for_upload(
        &mut self,
        now_ns: u64,
        need_bytes: u64,
        out: &mut Vec<Decision>,
    ) -> bool {
        // The caller's time, as every policy call takes it; the choice does not depend on it.
        let _ = now_ns;
        let newcomer = self.newcomer_rate_per_h();
        let mut cands: Vec<Victim> = self
            .clean
            .iter()
            .filter(|&&slot| {
                self.pin(slot) != Some(Tier::Primary)
                    && self.entry(slot).is_some_and(|e| e.op.is_none())
            })
            .map(|&slot| Victim {
                rate_per_h: self.rates.rate_per_h(slot),
                slot,
            })
            .filter(|v| v.rate_per_h < newcomer)
            .collect();
        cands.sort_unstable();
        let mut freed = 0u64;
        let mut victims = Vec::new();
        for v in cands {
            if freed >= need_bytes {
                break;
            }
            freed += self.entries[v.slot as usize].size;
            victims.push(v.slot);
        }
        if freed < need_bytes {
            return false;
        }
        for slot in victims {
            self.start_drop(OpKind::Evict, slot, out);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::{AssetPolicy, Outcome, Placement, PolicyConfig, Residence};
    use super::*;
    use crate::rate::RateCounters;

    const MIB: u64 = 1 << 20;
    const SEC: u64 = 1_000_000_000;

    /// A policy with a 100 MiB primary that promotes at 10 views/h and schedules nothing of
    /// its own on a tick but what the test asks for.
    fn policy() -> TierPolicy {
        let cfg = PolicyConfig {
            primary_capacity_bytes: 100 * MIB,
            promote_per_h: Some(10.0),
            demote_per_h: Some(1.0),
            schedule_write_backs: false,
            ..PolicyConfig::default()
        };
        let (counters, _) = RateCounters::new(1);
        TierPolicy::new(cfg, counters).expect("valid config")
    }

    /// Registers `slot` with 10 MiB at `placement` and the rate `rate_per_h`.
    fn asset(p: &mut TierPolicy, slot: u32, placement: Placement, rate_per_h: f64) {
        p.add_asset(0, slot, 10 * MIB, placement);
        p.rates.set_rate_per_h(slot, rate_per_h);
    }

    fn evicted(out: &[Decision]) -> Vec<u32> {
        out.iter()
            .map(|d| match d {
                Decision::Evict { slot, .. } => *slot,
                other => panic!("not an eviction: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_newcomer_is_valued_at_the_promote_threshold() {
        let p = policy();
        assert_eq!(p.newcomer_rate_per_h(), 10.0);
    }

    #[test]
    fn coldest_clean_copies_first_until_the_upload_fits() {
        let mut p = policy();
        for (slot, rate) in [(0, 5.0), (1, 9.0), (2, 0.0), (3, 2.0), (4, 0.0)] {
            asset(&mut p, slot, Placement::PrimaryClean, rate);
        }
        let mut out = Vec::new();
        assert!(p.evict_for_upload(SEC, 25 * MIB, &mut out));
        assert_eq!(
            evicted(&out),
            [2, 4, 3],
            "coldest first, ties by slot, until it fits"
        );
        for s in [2, 4, 3] {
            assert_eq!(p.residence(s), Residence::Dropping);
        }
        // A drop in flight is not picked again; too little left appends nothing.
        let mut more = Vec::new();
        assert!(!p.evict_for_upload(SEC, 21 * MIB, &mut more));
        assert!(more.is_empty(), "insufficient room appends nothing");
        assert_eq!(p.residence(0), Residence::Clean);
        // Reported as the scheduler reports a tick's evictions.
        for d in &out {
            assert!(p.finished(2 * SEC, d.ticket(), Outcome::Done));
        }
        assert_eq!(p.residence(2), Residence::Secondary);
        assert_eq!(p.used_bytes(), 20 * MIB);
        assert_eq!(p.stats().evictions, 3);
        p.check_invariants().expect("invariants");
    }

    #[test]
    fn dirty_pinned_and_hot_copies_are_never_chosen() {
        let mut p = policy();
        asset(&mut p, 0, Placement::PrimaryDirty, 0.0);
        asset(&mut p, 1, Placement::PrimaryClean, 0.0);
        let pin = AssetPolicy {
            pin: Some(Tier::Primary),
            ..AssetPolicy::default()
        };
        p.set_asset_policy(1, pin).expect("pin");
        // At the newcomer threshold is not below it; far above it neither.
        asset(&mut p, 2, Placement::PrimaryClean, 10.0);
        asset(&mut p, 3, Placement::PrimaryClean, 1e6);
        asset(&mut p, 4, Placement::Secondary, 0.0);
        asset(&mut p, 5, Placement::PrimaryClean, 9.99);
        let mut out = Vec::new();
        assert!(
            !p.evict_for_upload(SEC, 11 * MIB, &mut out),
            "only slot 5 may go (10 MiB)"
        );
        assert!(out.is_empty());
        assert!(p.evict_for_upload(SEC, 10 * MIB, &mut out));
        assert_eq!(evicted(&out), [5]);
        for (slot, want) in [
            (0, Residence::Dirty),
            (1, Residence::Clean),
            (2, Residence::Clean),
            (3, Residence::Clean),
            (4, Residence::Secondary),
        ] {
            assert_eq!(p.residence(slot), want, "slot {slot}");
        }
        p.check_invariants().expect("invariants");
    }

    #[test]
    fn a_copy_with_a_drop_in_flight_is_not_chosen_twice() {
        let mut p = policy();
        asset(&mut p, 0, Placement::PrimaryClean, 0.0);
        // A tick's demotion of slot 0 (pinned to the secondary) is in flight.
        let away = AssetPolicy {
            pin: Some(Tier::Secondary),
            ..AssetPolicy::default()
        };
        p.set_asset_policy(0, away).expect("pin");
        let mut tick = Vec::new();
        p.tick(SEC, &mut tick);
        assert!(matches!(
            tick.as_slice(),
            [Decision::Demote { slot: 0, .. }]
        ));
        let mut out = Vec::new();
        assert!(!p.evict_for_upload(SEC, MIB, &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn nothing_is_chosen_when_the_threshold_is_zero_or_no_room_is_needed() {
        let mut p = policy();
        asset(&mut p, 0, Placement::PrimaryClean, 0.0);
        let mut out = Vec::new();
        assert!(p.evict_for_upload(SEC, 0, &mut out), "no room needed");
        assert!(out.is_empty());
        p.cfg.promote_per_h = Some(0.0);
        p.cfg.demote_per_h = Some(0.0);
        assert!(
            !p.evict_for_upload(SEC, MIB, &mut out),
            "a rate of 0 is not below a threshold of 0"
        );
        assert!(out.is_empty());
    }
}
