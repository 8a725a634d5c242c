//! Request traces: read from CSV or generated (Zipf popularity with churn and new releases),
//! and the simulator's deterministic random generator.

use std::collections::BTreeMap;

use serde::Serialize;

/// A small deterministic generator (SplitMix64): the simulator's only source of randomness.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n); 0 when n is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Exponentially distributed with the given rate (mean 1/rate).
    pub fn exp(&mut self, rate: f64) -> f64 {
        -(1.0 - self.f64()).ln() / rate
    }
}

/// One asset of a trace's library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceAsset {
    pub id: String,
    pub size_bytes: u64,
    /// Upload time of a new release; `None`: in the library from the start.
    pub release_ns: Option<u64>,
}

/// One request: `bytes` of asset `asset` (an index into [`Trace::assets`]) at `at_ns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRequest {
    pub at_ns: u64,
    pub asset: u32,
    pub bytes: u64,
}

/// A library and its requests, ordered by time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub assets: Vec<TraceAsset>,
    pub requests: Vec<TraceRequest>,
}

/// A CSV trace that cannot be read. The message names the line and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    #[error("trace line {line}: {detail}; expected `timestamp,asset,bytes[,size]` (timestamp in seconds, e.g. `12.5,movie-42,1048576`)")]
    Line { line: usize, detail: String },
    #[error("the trace has no requests")]
    Empty,
    #[error("the trace has more than {max} distinct assets")]
    TooManyAssets { max: u64 },
}

impl Trace {
    /// Reads a CSV trace: one request per line, `timestamp,asset,bytes[,size]`.
    ///
    /// - `timestamp`: seconds (a float, any origin; the trace is rebased to start at 0 and
    ///   sorted by time, stably);
    /// - `asset`: the asset id, any text without a comma (surrounding spaces are trimmed);
    /// - `bytes`: bytes requested (the whole asset or a range's length);
    /// - `size` (optional): the asset's size in bytes. An asset's size is the largest `size` or
    ///   `bytes` seen for it.
    ///
    /// Blank lines and lines starting with `#` are skipped, and so is a first line whose first
    /// field is not a number (a header). All assets are in the library from the start.
    pub fn from_csv(text: &str) -> Result<Trace, TraceError> {
        let mut ids: BTreeMap<String, u32> = BTreeMap::new();
        let mut trace = Trace::default();
        let mut stamped: Vec<(f64, TraceRequest)> = Vec::new();
        let mut first_data_line = true;
        for (n, raw) in text.lines().enumerate() {
            let line = n + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = l.split(',').map(str::trim).collect();
            let bad = |detail: String| TraceError::Line { line, detail };
            let is_header = first_data_line
                && fields
                    .first()
                    .is_some_and(|f| f.parse::<f64>().is_err() && !f.is_empty());
            first_data_line = false;
            if is_header {
                continue;
            }
            if fields.len() < 3 || fields.len() > 4 {
                return Err(bad(format!("{} fields", fields.len())));
            }
            let t: f64 = fields[0]
                .parse()
                .ok()
                .filter(|t: &f64| t.is_finite())
                .ok_or_else(|| {
                    bad(format!(
                        "timestamp {:?} is not a number of seconds",
                        fields[0]
                    ))
                })?;
            let id = fields[1];
            if id.is_empty() {
                return Err(bad("empty asset id".into()));
            }
            let bytes: u64 = fields[2]
                .parse()
                .map_err(|_| bad(format!("bytes {:?} is not a whole number", fields[2])))?;
            let size: u64 = match fields.get(3) {
                Some(s) if !s.is_empty() => s
                    .parse()
                    .map_err(|_| bad(format!("size {s:?} is not a whole number")))?,
                _ => 0,
            };
            let next = trace.assets.len();
            let asset = *ids.entry(id.to_string()).or_insert_with(|| next as u32);
            if asset as usize == next {
                if next as u64 >= u64::from(u32::MAX) {
                    return Err(TraceError::TooManyAssets {
                        max: u64::from(u32::MAX),
                    });
                }
                trace.assets.push(TraceAsset {
                    id: id.to_string(),
                    size_bytes: 0,
                    release_ns: None,
                });
            }
            let a = &mut trace.assets[asset as usize];
            a.size_bytes = a.size_bytes.max(size).max(bytes).max(1);
            stamped.push((
                t,
                TraceRequest {
                    at_ns: 0,
                    asset,
                    bytes,
                },
            ));
        }
        if stamped.is_empty() {
            return Err(TraceError::Empty);
        }
        stamped.sort_by(|a, b| a.0.total_cmp(&b.0));
        let t0 = stamped[0].0;
        trace.requests = stamped
            .into_iter()
            .map(|(t, r)| TraceRequest {
                at_ns: ((t - t0) * 1e9).round() as u64,
                ..r
            })
            .collect();
        Ok(trace)
    }

    /// Total size of the library (every asset of the trace, new releases included).
    pub fn library_bytes(&self) -> u64 {
        self.assets.iter().map(|a| a.size_bytes).sum()
    }

    pub fn requested_bytes(&self) -> u64 {
        self.requests.iter().map(|r| r.bytes).sum()
    }

    pub fn duration_s(&self) -> f64 {
        self.requests.last().map_or(0.0, |r| r.at_ns as f64 / 1e9)
    }

    /// New releases as `(release_ns, asset)`, by time.
    pub(super) fn releases(&self) -> Vec<(u64, u32)> {
        let mut v: Vec<(u64, u32)> = self
            .assets
            .iter()
            .enumerate()
            .filter_map(|(i, a)| a.release_ns.map(|t| (t, i as u32)))
            .collect();
        v.sort_unstable();
        v
    }
}

/// The synthetic workload: Zipf(α) popularity over ranks, a permutation of assets over ranks
/// that churns, and new releases that enter it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ZipfSpec {
    /// Assets in the library at the start.
    pub assets: u32,
    /// Zipf exponent: the asset at rank `k` (from 1) is requested with weight `k^-α`.
    pub alpha: f64,
    /// Requests to generate (Poisson arrivals at `rate_per_s`).
    pub requests: u64,
    pub rate_per_s: f64,
    /// Popularity churn: rank swaps per hour, as a fraction of the initial library size. Each
    /// swap exchanges the ranks of two assets drawn uniformly, so an asset's popularity is
    /// re-drawn about `2 × churn_per_h` times per hour: a hot asset cools down, a cold one heats
    /// up.
    pub churn_per_h: f64,
    /// New releases per hour, as a fraction of the initial library. A release is uploaded at
    /// that moment and enters the ranking at a rank drawn by popularity (new releases are often
    /// hot); the assets below it move down one rank.
    pub new_releases_per_h: f64,
    /// Asset sizes are log-uniform in [min, max].
    pub size_min_bytes: u64,
    pub size_max_bytes: u64,
    /// Fraction of requests that read the whole asset; the others read a uniformly random 2 %
    /// to 100 % of it (players that stop early).
    pub whole_fraction: f64,
    pub seed: u64,
}

impl Default for ZipfSpec {
    fn default() -> ZipfSpec {
        ZipfSpec {
            assets: 10_000,
            alpha: 1.0,
            requests: 1_000_000,
            rate_per_s: 50.0,
            churn_per_h: 0.0,
            new_releases_per_h: 0.0,
            size_min_bytes: 4 << 20,
            size_max_bytes: 512 << 20,
            whole_fraction: 0.5,
            seed: 1,
        }
    }
}

pub(super) fn zipf_cdf(n: usize, alpha: f64) -> Vec<f64> {
    let mut cdf = Vec::with_capacity(n);
    let mut sum = 0.0;
    for k in 1..=n {
        sum += (k as f64).powf(-alpha);
        cdf.push(sum);
    }
    for c in &mut cdf {
        *c /= sum;
    }
    cdf
}

pub(super) fn zipf_rank(cdf: &[f64], rng: &mut SimRng) -> usize {
    let u = rng.f64();
    cdf.partition_point(|&c| c <= u)
        .min(cdf.len().saturating_sub(1))
}

/// Generates the synthetic trace described by `spec`, deterministically from its seed.
pub fn zipf_trace(spec: &ZipfSpec) -> Trace {
    let mut rng = SimRng::new(spec.seed);
    let lo = (spec.size_min_bytes.max(1) as f64).ln();
    let hi = (spec.size_max_bytes.max(spec.size_min_bytes).max(1) as f64).ln();
    let size = |rng: &mut SimRng| ((lo + (hi - lo) * rng.f64()).exp().round() as u64).max(1);
    let mut trace = Trace::default();
    for i in 0..spec.assets {
        let s = size(&mut rng);
        trace.assets.push(TraceAsset {
            id: format!("a{i:07}"),
            size_bytes: s,
            release_ns: None,
        });
    }
    if spec.assets == 0 {
        return trace;
    }
    let mut ranks: Vec<u32> = (0..spec.assets).collect();
    let mut cdf = zipf_cdf(ranks.len(), spec.alpha);
    let churn_rate_per_s = spec.churn_per_h.max(0.0) * f64::from(spec.assets) / 3600.0;
    let release_rate_per_s = spec.new_releases_per_h.max(0.0) * f64::from(spec.assets) / 3600.0;
    let next_after = |rng: &mut SimRng, t: f64, rate: f64| {
        if rate > 0.0 {
            t + rng.exp(rate)
        } else {
            f64::INFINITY
        }
    };
    let mut next_request = next_after(&mut rng, 0.0, spec.rate_per_s);
    let mut next_churn = next_after(&mut rng, 0.0, churn_rate_per_s);
    let mut next_release = next_after(&mut rng, 0.0, release_rate_per_s);
    trace.requests.reserve(spec.requests as usize);
    while (trace.requests.len() as u64) < spec.requests && next_request.is_finite() {
        if next_churn <= next_request && next_churn <= next_release {
            let t = next_churn;
            let a = rng.below(ranks.len() as u64) as usize;
            let b = rng.below(ranks.len() as u64) as usize;
            ranks.swap(a, b);
            next_churn = next_after(&mut rng, t, churn_rate_per_s);
        } else if next_release <= next_request {
            let t = next_release;
            let id = trace.assets.len() as u32;
            let s = size(&mut rng);
            trace.assets.push(TraceAsset {
                id: format!("new{id:07}"),
                size_bytes: s,
                release_ns: Some((t * 1e9) as u64),
            });
            let r = zipf_rank(&cdf, &mut rng);
            ranks.insert(r, id);
            cdf = zipf_cdf(ranks.len(), spec.alpha);
            next_release = next_after(&mut rng, t, release_rate_per_s);
        } else {
            let t = next_request;
            let asset = ranks[zipf_rank(&cdf, &mut rng)];
            let s = trace.assets[asset as usize].size_bytes;
            let bytes = if rng.f64() < spec.whole_fraction {
                s
            } else {
                ((s as f64 * (0.02 + 0.98 * rng.f64())) as u64).clamp(1, s)
            };
            trace.requests.push(TraceRequest {
                at_ns: (t * 1e9) as u64,
                asset,
                bytes,
            });
            next_request = next_after(&mut rng, t, spec.rate_per_s);
        }
    }
    // Releases generated after the last request are never requested; drop them.
    let end_ns = trace.requests.last().map_or(0, |r| r.at_ns);
    while trace
        .assets
        .last()
        .is_some_and(|a| a.release_ns.is_some_and(|t| t > end_ns))
    {
        trace.assets.pop();
    }
    trace
}
