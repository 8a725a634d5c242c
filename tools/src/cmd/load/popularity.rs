//! Which asset each request picks (uniform, or Zipf over the ranks given) and which range of it
//! (aligned to the range size, the last one clipped).

use super::target::Asset;

/// How requests spread over the assets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Popularity {
    Uniform,
    /// Rank k (from 1) has weight 1/k^alpha.
    Zipf(f64),
}

impl std::fmt::Display for Popularity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Popularity::Uniform => write!(f, "uniform"),
            Popularity::Zipf(a) => write!(f, "zipf:{a}"),
        }
    }
}

pub(super) fn parse_popularity(s: &str) -> Result<Popularity, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("uniform") {
        return Ok(Popularity::Uniform);
    }
    if t.eq_ignore_ascii_case("zipf") {
        return Ok(Popularity::Zipf(1.0));
    }
    let Some(alpha) = t.strip_prefix("zipf:") else {
        return Err(format!(
            "unknown popularity {s:?}: use uniform or zipf:ALPHA, e.g. zipf:1.0"
        ));
    };
    match alpha.trim().parse::<f64>() {
        Ok(a) if a.is_finite() && a > 0.0 && a <= 100.0 => Ok(Popularity::Zipf(a)),
        _ => Err(format!(
            "zipf's alpha must be a number greater than 0 (and at most 100), e.g. zipf:1.0 \
             (or uniform for no skew); got {alpha:?}"
        )),
    }
}

/// What a request asks of its asset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    /// The whole asset: a plain GET, answered 200.
    Whole,
    /// One random range of this many bytes, aligned to its size, answered 206.
    Range(u64),
}

/// Picks the asset and the range of each request.
pub(super) struct Picker {
    /// Cumulative, normalised Zipf weights by rank (last = 1.0); `None` for uniform.
    zipf_cdf: Option<Vec<f64>>,
    shape: Shape,
    rng: fastrand::Rng,
}

fn zipf_cdf(n: usize, alpha: f64) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|k| {
            acc += (k as f64).powf(-alpha);
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    if let Some(last) = cdf.last_mut() {
        *last = 1.0;
    }
    cdf
}

impl Picker {
    pub(super) fn new(popularity: Popularity, n: usize, shape: Shape, seed: u64) -> Picker {
        Picker {
            zipf_cdf: match popularity {
                Popularity::Uniform => None,
                Popularity::Zipf(alpha) => Some(zipf_cdf(n, alpha)),
            },
            shape,
            // A stream of its own, so the picks do not shift the Poisson gaps.
            rng: fastrand::Rng::with_seed(seed ^ 0x9E37_79B9_7F4A_7C15),
        }
    }

    /// The asset index and the range (first and last byte; `None` for the whole asset).
    pub(super) fn pick(&mut self, assets: &[Asset]) -> (usize, Option<(u64, u64)>) {
        let n = assets.len();
        let i = match &self.zipf_cdf {
            None => self.rng.usize(..n),
            Some(cdf) => {
                let u = self.rng.f64();
                cdf.partition_point(|&c| c <= u).min(n - 1)
            }
        };
        let range = match self.shape {
            Shape::Whole => None,
            Shape::Range(len) => Some(aligned_range(assets[i].size, len, &mut self.rng)),
        };
        (i, range)
    }
}

/// A random `len`-byte range of an asset of `size` bytes (> 0), aligned to `len`, the last one
/// clipped to the size: (first byte, last byte).
fn aligned_range(size: u64, len: u64, rng: &mut fastrand::Rng) -> (u64, u64) {
    let slots = size.div_ceil(len);
    let first = rng.u64(..slots) * len;
    (first, first.saturating_add(len).min(size) - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn popularities() {
        assert_eq!(parse_popularity("uniform"), Ok(Popularity::Uniform));
        assert_eq!(parse_popularity("zipf:1.2"), Ok(Popularity::Zipf(1.2)));
        for s in ["zipf:0", "zipf:-1", "zipf:x", "zipf:inf"] {
            assert!(
                parse_popularity(s).expect_err(s).contains("zipf:1.0"),
                "{s}"
            );
        }
        assert!(parse_popularity("pareto").is_err());
    }

    fn assets(sizes: &[u64]) -> Vec<Asset> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| Asset::new(format!("a{i}"), s, "h:1"))
            .collect()
    }

    #[test]
    fn ranges_are_aligned_and_clipped() {
        let a = assets(&[10_000]);
        let mut p = Picker::new(Popularity::Uniform, 1, Shape::Range(4096), 3);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let (i, r) = p.pick(&a);
            assert_eq!(i, 0);
            seen.insert(r.expect("a range"));
        }
        let want: std::collections::BTreeSet<_> = [(0, 4095), (4096, 8191), (8192, 9999)]
            .into_iter()
            .collect();
        assert_eq!(seen, want);
        // A range longer than the asset is the whole asset.
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(aligned_range(100, 1 << 20, &mut rng), (0, 99));
        let mut w = Picker::new(Popularity::Uniform, 1, Shape::Whole, 3);
        assert_eq!(w.pick(&a), (0, None));
    }

    #[test]
    fn zipf_ranks_follow_the_weights() {
        let a = assets(&[1, 1, 1, 1]);
        let mut p = Picker::new(Popularity::Zipf(1.0), 4, Shape::Whole, 5);
        let mut n = [0u32; 4];
        for _ in 0..100_000 {
            n[p.pick(&a).0] += 1;
        }
        // Weights 1, 1/2, 1/3, 1/4 over 25/12.
        for (k, &got) in n.iter().enumerate() {
            let want = 100_000.0 / (k + 1) as f64 * 12.0 / 25.0;
            assert!((got as f64 - want).abs() < want * 0.05, "rank {k}: {n:?}");
        }
        let cdf = zipf_cdf(3, 2.0);
        assert_eq!(cdf.last(), Some(&1.0));
    }
}
