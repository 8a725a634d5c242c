//! Statistics the comparison benchmarks share: medians, a log-bucket latency histogram with
//! quantiles, resampling intervals, and the window classification of the interleaved migration
//! design (which request counts as idle, which as migrating).

use std::collections::BTreeMap;

/// The median of `v` (the mean of the middle two for an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `a / b`, or `None` when `b` is not positive (no ratio to show).
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// Latencies in 1%-wide logarithmic buckets: bucket `b` holds values in
/// [1.01^b, 1.01^(b+1)) microseconds and stands for its geometric middle.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LogHistogram {
    counts: BTreeMap<i32, u64>,
}

impl LogHistogram {
    fn step() -> f64 {
        1.01f64.ln()
    }

    fn bucket(us: u64) -> i32 {
        ((us.max(1) as f64).ln() / Self::step()) as i32
    }

    fn unbucket(b: i32) -> f64 {
        ((f64::from(b) + 0.5) * Self::step()).exp()
    }

    pub fn record(&mut self, us: u64) {
        *self.counts.entry(Self::bucket(us)).or_insert(0) += 1;
    }

    pub fn add(&mut self, other: &LogHistogram) {
        for (b, c) in &other.counts {
            *self.counts.entry(*b).or_insert(0) += c;
        }
    }

    /// The union of `hists`.
    pub fn merged<'a>(hists: impl IntoIterator<Item = &'a LogHistogram>) -> LogHistogram {
        let mut out = LogHistogram::default();
        for h in hists {
            out.add(h);
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    pub fn len(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The q-quantile in microseconds: the bucket holding the value of rank q·(n−1); NaN when
    /// empty.
    pub fn quantile(&self, q: f64) -> f64 {
        let n = self.len();
        if n == 0 {
            return f64::NAN;
        }
        let rank = q * (n - 1) as f64;
        let mut seen = 0u64;
        for (b, c) in &self.counts {
            seen += c;
            if seen as f64 > rank {
                return Self::unbucket(*b);
            }
        }
        self.counts
            .keys()
            .next_back()
            .map_or(f64::NAN, |b| Self::unbucket(*b))
    }
}

/// The p99 of `a` over the p99 of `b`; NaN when either is empty.
pub fn p99_ratio(a: &LogHistogram, b: &LogHistogram) -> f64 {
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    a.quantile(0.99) / b.quantile(0.99)
}

/// The 90% interval (5th and 95th percentile) of `stat` over `resamples` draws of `units`
/// with replacement, seeded so a report is reproducible; draws where `stat` is NaN are left
/// out. `(NaN, NaN)` when no draw gave a value.
pub fn resampled_interval(
    units: &[usize],
    resamples: usize,
    seed: u64,
    stat: impl Fn(&[usize]) -> f64,
) -> (f64, f64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut values: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            let pick: Vec<usize> = units
                .iter()
                .map(|_| units[rng.usize(..units.len())])
                .collect();
            let v = stat(&pick);
            (!v.is_nan()).then_some(v)
        })
        .collect();
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    values.sort_by(f64::total_cmp);
    let n = values.len() as f64;
    let hi = ((0.95 * n) as usize).saturating_sub(1);
    (values[(0.05 * n) as usize], values[hi])
}

/// Which condition a stretch of an interleaved run belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    Idle,
    Migrating,
}

/// A stretch `[t0, t1)` (Unix seconds) of one class; cycle k is idle window k and the
/// migrating window after it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    pub class: Class,
    pub cycle: usize,
    pub t0: f64,
    pub t1: f64,
}

/// The windows of an interleaved run: migrating from each resume until `guard` seconds after
/// the pause that follows it (what the copies leave behind is charged to migration), idle for
/// the rest of each paused window, the first from `guard` after the start. In time order.
pub fn windows(start: f64, end: f64, resumes: &[f64], pauses: &[f64], guard: f64) -> Vec<Window> {
    let mut out = Vec::with_capacity(2 * resumes.len() + 1);
    let mut idle_from = start + guard;
    for (k, (&r, &p)) in resumes.iter().zip(pauses).enumerate() {
        out.push(Window {
            class: Class::Idle,
            cycle: k,
            t0: idle_from,
            t1: r,
        });
        out.push(Window {
            class: Class::Migrating,
            cycle: k,
            t0: r,
            t1: p + guard,
        });
        idle_from = p + guard;
    }
    out.push(Window {
        class: Class::Idle,
        cycle: resumes.len(),
        t0: idle_from,
        t1: end,
    });
    out
}

/// The window `t` falls in, if any (`windows` in time order, as [`windows`] makes them).
pub fn window_of(windows: &[Window], t: f64) -> Option<&Window> {
    let i = windows.partition_point(|w| w.t0 <= t).checked_sub(1)?;
    let w = &windows[i];
    (w.t0 <= t && t < w.t1).then_some(w)
}

/// Where in a migrating window a moment falls, for the cost by phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The first half of the copying (from the resume to the middle before the pause).
    First,
    /// The second half of the copying.
    Second,
    /// The guard after the pause.
    After,
}

/// The phase of `t` in the migrating window it belongs to (`None`: idle or before the first
/// resume).
pub fn phase_of(resumes: &[f64], pauses: &[f64], guard: f64, t: f64) -> Option<Phase> {
    let i = resumes.partition_point(|&r| r <= t).checked_sub(1)?;
    let (r, p) = (resumes[i], *pauses.get(i)?);
    if t < p {
        Some(if t < (r + p) / 2.0 {
            Phase::First
        } else {
            Phase::Second
        })
    } else if t < p + guard {
        Some(Phase::After)
    } else {
        None
    }
}

/// Copies seen by a poller of a byte counter between `t0` and `t1`: the seconds and bytes from
/// the first to the last increment, each placed midway between its two samples (the copy rate
/// from completion to completion); `(0, 0)` with fewer than two increments.
pub fn completion_span(samples: &[(f64, u64)], t0: f64, t1: f64) -> (f64, u64) {
    let s: Vec<(f64, u64)> = samples
        .iter()
        .copied()
        .filter(|&(t, _)| t0 <= t && t <= t1)
        .collect();
    let steps: Vec<usize> = (1..s.len()).filter(|&i| s[i].1 > s[i - 1].1).collect();
    match (steps.first(), steps.last()) {
        (Some(&a), Some(&b)) if a != b => {
            let mid = |i: usize| (s[i - 1].0 + s[i].0) / 2.0;
            (mid(b) - mid(a), s[b].1 - s[a].1)
        }
        _ => (0.0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
    }

    #[test]
    fn quantiles_land_within_a_bucket_of_the_value() {
        let mut h = LogHistogram::default();
        for us in 1..=1000u64 {
            h.record(us);
        }
        assert_eq!(h.len(), 1000);
        // Rank 0.5 * 999 = 499.5: the 500th value, 500 µs, within 1%.
        let p50 = h.quantile(0.5);
        assert!((p50 / 500.0 - 1.0).abs() < 0.01, "{p50}");
        let p99 = h.quantile(0.99);
        assert!((p99 / 990.0 - 1.0).abs() < 0.01, "{p99}");
        assert!(LogHistogram::default().quantile(0.5).is_nan());
        // 0 counts as 1 µs.
        let mut z = LogHistogram::default();
        z.record(0);
        assert!((z.quantile(0.5) - 1.01f64.sqrt()).abs() < 1e-9);
    }

    #[test]
    fn merged_histograms_and_p99_ratio() {
        let mut a = LogHistogram::default();
        let mut b = LogHistogram::default();
        for _ in 0..100 {
            a.record(1000);
            b.record(2000);
        }
        let m = LogHistogram::merged([&a, &b]);
        assert_eq!(m.len(), 200);
        let r = p99_ratio(&b, &a);
        assert!((r - 2.0).abs() < 0.02, "{r}");
        assert!(p99_ratio(&a, &LogHistogram::default()).is_nan());
    }

    #[test]
    fn resampled_interval_brackets_the_units() {
        let values = [1.0, 2.0, 3.0, 4.0, 5.0];
        let units: Vec<usize> = (0..values.len()).collect();
        let mean = |pick: &[usize]| pick.iter().map(|&k| values[k]).sum::<f64>() / 5.0;
        let (lo, hi) = resampled_interval(&units, 400, 1, mean);
        assert!(
            (1.0..3.0).contains(&lo) && hi > 3.0 && hi <= 5.0,
            "{lo} {hi}"
        );
        // Same seed, same interval.
        assert_eq!(resampled_interval(&units, 400, 1, mean), (lo, hi));
        // Every draw the same value: a point.
        assert_eq!(resampled_interval(&units, 10, 1, |_| 7.0), (7.0, 7.0));
        assert!(resampled_interval(&units, 10, 1, |_| f64::NAN).0.is_nan());
    }

    #[test]
    fn windows_of_an_interleaved_run() {
        // Start at 0, 10 s windows, resumes at 10 and 30, pauses at 20 and 40, end at 50,
        // guard 2 s.
        let w = windows(0.0, 50.0, &[10.0, 30.0], &[20.0, 40.0], 2.0);
        let got: Vec<(Class, usize, f64, f64)> =
            w.iter().map(|w| (w.class, w.cycle, w.t0, w.t1)).collect();
        assert_eq!(
            got,
            vec![
                (Class::Idle, 0, 2.0, 10.0),
                (Class::Migrating, 0, 10.0, 22.0),
                (Class::Idle, 1, 22.0, 30.0),
                (Class::Migrating, 1, 30.0, 42.0),
                (Class::Idle, 2, 42.0, 50.0),
            ]
        );
        let class = |t: f64| window_of(&w, t).map(|w| (w.class, w.cycle));
        assert_eq!(class(1.0), None, "the guard after the start is skipped");
        assert_eq!(class(2.0), Some((Class::Idle, 0)));
        assert_eq!(class(10.0), Some((Class::Migrating, 0)));
        assert_eq!(
            class(21.9),
            Some((Class::Migrating, 0)),
            "guard after a pause"
        );
        assert_eq!(class(22.0), Some((Class::Idle, 1)));
        assert_eq!(class(49.9), Some((Class::Idle, 2)));
        assert_eq!(class(50.0), None);
    }

    #[test]
    fn phases_of_migrating_windows() {
        let (r, p) = ([10.0, 30.0], [20.0, 40.0]);
        assert_eq!(phase_of(&r, &p, 2.0, 5.0), None);
        assert_eq!(phase_of(&r, &p, 2.0, 10.0), Some(Phase::First));
        assert_eq!(phase_of(&r, &p, 2.0, 15.0), Some(Phase::Second));
        assert_eq!(phase_of(&r, &p, 2.0, 21.0), Some(Phase::After));
        assert_eq!(phase_of(&r, &p, 2.0, 22.0), None);
        assert_eq!(phase_of(&r, &p, 2.0, 34.9), Some(Phase::First));
    }

    #[test]
    fn completion_to_completion_span() {
        // Increments between samples 1-2 (mid 1.5) and 3-4 (mid 3.5): 2 s, 200 bytes.
        let s = [
            (0.0, 0),
            (1.0, 0),
            (2.0, 100),
            (3.0, 100),
            (4.0, 300),
            (5.0, 300),
        ];
        assert_eq!(completion_span(&s, 0.0, 10.0), (2.0, 200));
        // One increment only: nothing to measure.
        assert_eq!(completion_span(&s, 0.0, 3.0), (0.0, 0));
    }
}
