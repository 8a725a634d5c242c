//! Slow-I/O pacing (additive increase, multiplicative decrease, as TCP's congestion control):
//! a copy chunk I/O slower than the slow-I/O threshold (`--copy-slow-io`) halves the rate the
//! copies may use (never below 1/[`PACE_FLOOR_DIVISOR`] of the budget) and pauses them
//! [`BACKOFF_FACTOR`] times that I/O's time (at most [`BACKOFF_MAX`]); each second without one
//! gives back an eighth of the budget, until the budget itself.
//!
//! Why: the pause alone resumed at the full budget, straight into the same congestion. A device
//! (or, in a VM, the host under it) that stalls every request while it cannot absorb the copies'
//! writes is thus written at the rate it takes without stalling, found by probing, not at the
//! budget; the bench reports the copy rate reached.

use std::time::Duration;

use super::CopyBudget;

/// How many times as long as a slow chunk I/O took a copy pauses after it.
pub const BACKOFF_FACTOR: u32 = 10;
/// The longest pause after one slow chunk I/O.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// After a slow chunk I/O the copies' rate is at most this fraction of what it was (halved).
const PACE_DECREASE: f64 = 0.5;
/// The paced rate never falls below the budget divided by this.
pub const PACE_FLOOR_DIVISOR: f64 = 64.0;
/// While no chunk I/O is slow the paced rate regains this fraction of the budget per second.
const PACE_INCREASE_PER_S: f64 = 0.125;

/// The pause after a copy chunk I/O that took `took`: zero unless it was slower than `slow`
/// (`None`: no I/O counts as slow).
pub fn backoff_for(took: Duration, slow: Option<Duration>) -> Duration {
    match slow {
        Some(slow) if took > slow => (took * BACKOFF_FACTOR).min(BACKOFF_MAX),
        _ => Duration::ZERO,
    }
}

/// The paced rate after slow chunk I/Os, below the budget.
#[derive(Clone, Debug, Default)]
pub struct Pacing {
    /// The paced rate in bytes/s; `None` while the budget applies.
    paced: Option<f64>,
}

impl Pacing {
    /// The rate that applies now under `budget` (bytes/s; `None`: unlimited), after regaining
    /// pace for `dt`.
    pub fn rate(&mut self, budget: CopyBudget, dt: Duration) -> Option<f64> {
        let Some(b) = budget.limit() else {
            self.paced = None;
            return None;
        };
        if let Some(p) = self.paced {
            let p = p.min(b) + b * PACE_INCREASE_PER_S * dt.as_secs_f64();
            self.paced = (p < b).then_some(p);
        }
        Some(self.paced.unwrap_or(b))
    }

    /// A chunk I/O was slow: halve the rate (an unlimited budget is not paced).
    pub fn slowed(&mut self, budget: CopyBudget) {
        let Some(b) = budget.limit() else { return };
        let now = self.paced.unwrap_or(b);
        self.paced = Some((now * PACE_DECREASE).max(b / PACE_FLOOR_DIVISOR));
    }

    /// The paced rate in bytes/s, or 0 while the budget applies (for `/metrics`).
    pub fn paced_bytes_per_s(&self) -> u64 {
        self.paced.map_or(0, |p| p as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_halves_after_a_slow_io_and_regains_an_eighth_of_the_budget_a_second() {
        let b = 64u64 << 20;
        let budget = CopyBudget::from_bytes_per_s(b);
        let mut p = Pacing::default();
        let s = Duration::from_secs;
        assert_eq!(
            p.rate(budget, s(0)),
            Some(b as f64),
            "the budget applies at first"
        );
        p.slowed(budget);
        assert_eq!(p.rate(budget, s(0)), Some(b as f64 / 2.0));
        p.slowed(budget);
        assert_eq!(p.rate(budget, s(0)), Some(b as f64 / 4.0));
        assert_eq!(p.paced_bytes_per_s(), b / 4);
        assert_eq!(p.rate(budget, s(1)), Some(b as f64 * (0.25 + 0.125)));
        // A lower budget set meanwhile caps the pace at once.
        let lower = CopyBudget::from_bytes_per_s(b / 8);
        assert_eq!(p.rate(lower, s(0)), Some((b / 8) as f64));
        assert_eq!(p.paced_bytes_per_s(), 0, "back at the (new) budget");
        for _ in 0..20 {
            p.slowed(budget);
        }
        assert_eq!(
            p.rate(budget, s(0)),
            Some(b as f64 / 64.0),
            "never below 1/64 of the budget"
        );
        assert_eq!(p.rate(budget, s(8)), Some(b as f64), "regained within 8 s");
        assert_eq!(p.paced_bytes_per_s(), 0);
        p.slowed(CopyBudget::Unlimited);
        assert_eq!(
            p.rate(CopyBudget::Unlimited, s(0)),
            None,
            "no budget: not paced"
        );
    }

    #[test]
    fn backoff_only_after_a_slow_io_and_bounded() {
        let ms = Duration::from_millis;
        assert_eq!(backoff_for(ms(3), Some(ms(50))), Duration::ZERO);
        assert_eq!(backoff_for(ms(50), Some(ms(50))), Duration::ZERO);
        assert_eq!(backoff_for(ms(80), Some(ms(50))), ms(800));
        assert_eq!(backoff_for(ms(900), Some(ms(50))), BACKOFF_MAX);
        assert_eq!(
            backoff_for(ms(900), None),
            Duration::ZERO,
            "None turns it off"
        );
    }
}
