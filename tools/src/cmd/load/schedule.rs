//! The schedule: when each request arrives (constant or Poisson spacing from the seed), what it
//! asks for, and the count of arrivals offered so far.

use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde::Serialize;

use super::popularity::Picker;
use super::target::Asset;

/// How arrivals are spaced.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arrival {
    /// Every 1/rate seconds.
    Constant,
    /// Exponential gaps with mean 1/rate seconds (a Poisson process).
    Poisson,
}

impl std::fmt::Display for Arrival {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arrival::Constant => "constant",
            Arrival::Poisson => "poisson",
        })
    }
}

/// Arrival offsets in seconds from the start of the run, up to `end_s` (exclusive).
#[derive(Clone, Debug)]
pub(super) struct Arrivals {
    arrival: Arrival,
    rate: f64,
    rng: fastrand::Rng,
    k: u64,
    poisson_t_s: f64,
    end_s: f64,
    done: bool,
}

impl Arrivals {
    pub(super) fn new(arrival: Arrival, rate: f64, seed: u64, end_s: f64) -> Arrivals {
        Arrivals {
            arrival,
            rate,
            rng: fastrand::Rng::with_seed(seed),
            k: 0,
            poisson_t_s: 0.0,
            end_s,
            done: false,
        }
    }
}

impl Iterator for Arrivals {
    type Item = f64;

    fn next(&mut self) -> Option<f64> {
        if self.done {
            return None;
        }
        let t = match self.arrival {
            // From the index, not by summing gaps, so rounding does not accumulate.
            Arrival::Constant => self.k as f64 / self.rate,
            Arrival::Poisson => {
                // 1 - U is in (0, 1], so the logarithm is finite and the gap non-negative.
                self.poisson_t_s += -(1.0 - self.rng.f64()).ln() / self.rate;
                self.poisson_t_s
            }
        };
        if t >= self.end_s {
            self.done = true;
            return None;
        }
        self.k += 1;
        Some(t)
    }
}

/// One request of the schedule.
#[derive(Clone, Copy, Debug)]
pub(super) struct Job {
    pub(super) intended: Instant,
    pub(super) asset: usize,
    pub(super) range: Option<(u64, u64)>,
    /// Not in the warmup: counts in the results.
    pub(super) measured: bool,
}

/// The schedule as the workers consume it, one request at a time (behind a mutex).
pub(super) struct Schedule {
    pub(super) arrivals: Arrivals,
    pub(super) picker: Picker,
    pub(super) t0: Instant,
    pub(super) warmup_s: f64,
}

impl Schedule {
    pub(super) fn next_job(&mut self, assets: &[Asset]) -> Option<Job> {
        let t = self.arrivals.next()?;
        let intended = self.t0.checked_add(Duration::try_from_secs_f64(t).ok()?)?;
        let (asset, range) = self.picker.pick(assets);
        Some(Job {
            intended,
            asset,
            range,
            measured: t >= self.warmup_s,
        })
    }
}

/// Counts the arrivals that came due, split into warmup and measured, as time goes on: the
/// offered load, from the same arrivals the workers consume.
pub(super) struct OfferedCounter {
    arrivals: Arrivals,
    pending: Option<f64>,
    pub(super) warmup_s: f64,
    pub(super) warmup: u64,
    pub(super) measured: u64,
}

impl OfferedCounter {
    pub(super) fn new(mut arrivals: Arrivals, warmup_s: f64) -> OfferedCounter {
        let pending = arrivals.next();
        OfferedCounter {
            arrivals,
            pending,
            warmup_s,
            warmup: 0,
            measured: 0,
        }
    }

    /// Counts the arrivals before `t_s`; returns how many there were since the last call.
    pub(super) fn advance_to(&mut self, t_s: f64) -> u64 {
        let mut n = 0;
        while let Some(t) = self.pending.filter(|&t| t < t_s) {
            if t < self.warmup_s {
                self.warmup += 1;
            } else {
                self.measured += 1;
            }
            n += 1;
            self.pending = self.arrivals.next();
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_arrivals_are_exact() {
        let a: Vec<f64> = Arrivals::new(Arrival::Constant, 4.0, 1, 1.0).collect();
        assert_eq!(a, [0.0, 0.25, 0.5, 0.75]);
        assert_eq!(Arrivals::new(Arrival::Constant, 200.0, 1, 3.0).count(), 600);
    }

    #[test]
    fn poisson_arrivals_have_the_rate_and_follow_the_seed() {
        let a: Vec<f64> = Arrivals::new(Arrival::Poisson, 1000.0, 7, 10.0).collect();
        assert!((9_700..=10_300).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        let b: Vec<f64> = Arrivals::new(Arrival::Poisson, 1000.0, 7, 10.0).collect();
        assert_eq!(a, b);
        let c: Vec<f64> = Arrivals::new(Arrival::Poisson, 1000.0, 8, 10.0).collect();
        assert_ne!(a, c);
        // Coefficient of variation of exponential gaps is 1.
        let gaps: Vec<f64> = a.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!(
            (0.9..1.1).contains(&(var.sqrt() / mean)),
            "{}",
            var.sqrt() / mean
        );
    }

    #[test]
    fn offered_counter_splits_warmup() {
        let mut c = OfferedCounter::new(Arrivals::new(Arrival::Constant, 10.0, 1, 3.0), 1.0);
        assert_eq!(c.advance_to(0.5), 5);
        assert_eq!(c.advance_to(2.0), 15);
        assert_eq!(c.advance_to(100.0), 10);
        assert_eq!((c.warmup, c.measured), (10, 20));
    }
}
