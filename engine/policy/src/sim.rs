//! The tiering simulator behind `reel simulate`: replays a request trace through the very same
//! [`TierPolicy`] and [`RateCounters`] code the node runs, under a simulated clock and simulated
//! tiers, and measures it against offline baselines at the same primary capacity.
//!
//! **Traces.** A [`Trace`] is a library of assets (id, size, and for new releases the time they
//! are uploaded) and time-ordered requests (asset, bytes asked for). It comes from a CSV file
//! ([`Trace::from_csv`]) or from the synthetic generator ([`zipf_trace`]: Zipf(α) popularity,
//! popularity churn, new releases), deterministic from a seed.
//!
//! **Simulated node.** Primary has the given capacity, secondary is unlimited. Every asset not
//! marked as a new release starts on secondary only (a cold start: primary is empty). A new
//! release is uploaded at its release time; as on the node, it lands on primary (dirty) when the
//! policy grants the room, else on secondary. Background copies (promotions and write-backs) run
//! one after another on one copy channel at the policy's bandwidth budget, so a copy of `n` bytes
//! takes `n / budget` seconds; until it finishes, reads of that asset are served from secondary.
//! Drops (demotions, evictions) are immediate. The policy ticks every `tick_s` simulated seconds.
//! A request is a primary hit if the asset's primary copy exists when it arrives. The simulator
//! keeps its own account of primary bytes and of which assets have a secondary copy, and counts
//! every step where primary would overflow, a copy without a secondary twin is dropped, or the
//! copy budget is exceeded; all three must stay 0.
//!
//! **Baselines**, all at the same primary capacity, all ideal (a miss is admitted instantly, no
//! bandwidth limit):
//! - *LRU*: admit every missed asset (and every new release at upload), evict least recently used.
//! - *Static oracle*: knowing the whole trace, the assets with the most requested bytes are placed
//!   once for the whole run (greedy by total bytes while they fit). Also reported, for reference:
//!   the same greedy by views (bytes ÷ size), which is the better static choice when sizes differ.
//! - *Belady with bypass*: see [`BELADY_VARIANT`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use super::policy::{Decision, Outcome, Placement, PolicyConfig, PolicyError, TierPolicy};
use super::rate::{RateCounters, RateWriter};

/// What the offline optimum baseline does, as printed in reports.
pub const BELADY_VARIANT: &str = "Belady with bypass, greedy for variable sizes: on a miss, the \
    cached assets whose next request is furthest in the future are the victims, taken in that \
    order while their next request is later than the newcomer's; if they free enough room they \
    are evicted and the newcomer admitted, otherwise it bypasses primary. Offline and instant, \
    but not the exact byte-hit optimum for variable sizes (that problem is NP-hard)";

const NEVER: u64 = u64::MAX;

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
    fn releases(&self) -> Vec<(u64, u32)> {
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

fn zipf_cdf(n: usize, alpha: f64) -> Vec<f64> {
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

fn zipf_rank(cdf: &[f64], rng: &mut SimRng) -> usize {
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

/// How to simulate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimConfig {
    /// The policy under test. Its `primary_capacity_bytes` is replaced by
    /// `primary_fraction × library bytes`.
    pub policy: PolicyConfig,
    /// Primary capacity as a fraction of the library's bytes.
    pub primary_fraction: f64,
    /// Simulated seconds between policy ticks.
    pub tick_s: f64,
    /// Probability that a copy or a drop fails (fault injection; 0 in `reel simulate`).
    pub failure_rate: f64,
    /// Seed of the fault injection.
    pub seed: u64,
    /// Run the policy's full invariant check after every tick (slow; for tests).
    pub check_every_tick: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            policy: PolicyConfig::default(),
            primary_fraction: 0.1,
            tick_s: 1.0,
            failure_rate: 0.0,
            seed: 1,
            check_every_tick: false,
        }
    }
}

/// What the trace was.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceSummary {
    pub assets: u64,
    pub new_releases: u64,
    pub requests: u64,
    pub library_bytes: u64,
    pub requested_bytes: u64,
    pub duration_s: f64,
}

/// The policy's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyRun {
    /// Bytes served from primary ÷ all bytes requested.
    pub byte_hit_ratio: f64,
    /// Secondary → primary copies finished.
    pub promoted_bytes: u64,
    pub promotions: u64,
    pub demoted_bytes: u64,
    pub demotions: u64,
    pub evicted_bytes: u64,
    pub evictions: u64,
    pub written_back_bytes: u64,
    /// New releases uploaded to primary (and bytes).
    pub uploads_to_primary: u64,
    pub uploads_to_primary_bytes: u64,
    /// New releases that found no room on primary and went to secondary.
    pub uploads_to_secondary: u64,
    pub copies_failed: u64,
    /// Distinct assets promoted at least once, promotions per such asset (mean, max), and how
    /// many were promoted three times or more (a sign of thrash).
    pub assets_promoted: u64,
    pub promotions_per_promoted_asset: f64,
    pub promotions_per_asset_max: u64,
    pub assets_promoted_3_or_more: u64,
    pub primary_used_max_bytes: u64,
    /// Steps where primary would have held more than its capacity. Must be 0.
    pub capacity_violations: u64,
    /// Primary copies dropped while no secondary copy existed. Must be 0.
    pub unclean_drops: u64,
    /// Copy starts beyond `budget·t + burst + largest asset`. Must be 0.
    pub budget_violations: u64,
    /// First policy invariant failure (only with `check_every_tick`), if any.
    pub invariant_error: Option<String>,
}

/// A baseline's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineRun {
    pub byte_hit_ratio: f64,
    /// Bytes written to primary because of a request (admissions on misses; for the static
    /// oracles, the one-time placement).
    pub promotion_bytes: u64,
    pub promotions: u64,
    /// New releases written to primary at upload.
    pub upload_bytes: u64,
}

/// The ratios the targets are stated in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratios {
    pub policy_over_lru: f64,
    pub policy_over_static_oracle: f64,
    pub policy_over_belady: f64,
    /// Policy promotion bytes ÷ Belady's admitted bytes (on misses).
    pub promotion_bytes_over_belady: f64,
}

/// Everything one simulation measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimReport {
    pub trace: TraceSummary,
    pub primary_capacity_bytes: u64,
    pub config: SimConfig,
    pub policy: PolicyRun,
    pub lru: BaselineRun,
    pub static_oracle: BaselineRun,
    pub static_oracle_by_views: BaselineRun,
    pub belady: BaselineRun,
    pub belady_variant: &'static str,
    pub ratios: Ratios,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else if a > 0.0 {
        f64::INFINITY
    } else {
        1.0
    }
}

/// Runs the policy and every baseline over `trace`.
pub fn simulate(trace: &Trace, cfg: &SimConfig) -> Result<SimReport, PolicyError> {
    let library_bytes = trace.library_bytes();
    let capacity = (library_bytes as f64 * cfg.primary_fraction.clamp(0.0, 1.0)) as u64;
    let mut policy_cfg = cfg.policy.clone();
    policy_cfg.primary_capacity_bytes = capacity;
    let mut cfg = cfg.clone();
    cfg.policy = policy_cfg;
    let policy = run_policy(trace, &cfg)?;
    let lru = run_lru(trace, capacity);
    let static_oracle = run_static(trace, capacity, false);
    let static_oracle_by_views = run_static(trace, capacity, true);
    let belady = run_belady(trace, capacity);
    let ratios = Ratios {
        policy_over_lru: ratio(policy.byte_hit_ratio, lru.byte_hit_ratio),
        policy_over_static_oracle: ratio(policy.byte_hit_ratio, static_oracle.byte_hit_ratio),
        policy_over_belady: ratio(policy.byte_hit_ratio, belady.byte_hit_ratio),
        promotion_bytes_over_belady: ratio(
            policy.promoted_bytes as f64,
            belady.promotion_bytes as f64,
        ),
    };
    Ok(SimReport {
        trace: TraceSummary {
            assets: trace.assets.len() as u64,
            new_releases: trace
                .assets
                .iter()
                .filter(|a| a.release_ns.is_some())
                .count() as u64,
            requests: trace.requests.len() as u64,
            library_bytes,
            requested_bytes: trace.requested_bytes(),
            duration_s: trace.duration_s(),
        },
        primary_capacity_bytes: capacity,
        config: cfg,
        policy,
        lru,
        static_oracle,
        static_oracle_by_views,
        belady,
        belady_variant: BELADY_VARIANT,
        ratios,
    })
}

/// A background copy on the simulated copy channel.
struct Copy {
    finish_ns: u64,
    decision: Decision,
    fails: bool,
}

/// The simulated node around the policy.
struct Node {
    policy: TierPolicy,
    writer: RateWriter,
    capacity: u64,
    on_primary: Vec<bool>,
    on_secondary: Vec<bool>,
    primary_used: u64,
    copies: VecDeque<Copy>,
    channel_free_ns: u64,
    budget_bytes_per_s: f64,
    copy_bytes_started: u64,
    largest_asset: u64,
    burst_bytes: u64,
    rng: SimRng,
    failure_rate: f64,
    promotions_per_asset: Vec<u64>,
    run: PolicyRun,
    decisions: Vec<Decision>,
}

impl Node {
    fn fails(&mut self) -> bool {
        self.failure_rate > 0.0 && self.rng.f64() < self.failure_rate
    }

    fn account(&mut self) {
        self.run.primary_used_max_bytes = self.run.primary_used_max_bytes.max(self.primary_used);
        if self.primary_used > self.capacity {
            self.run.capacity_violations += 1;
        }
    }

    fn execute(&mut self, now_ns: u64) {
        let decisions = std::mem::take(&mut self.decisions);
        for d in &decisions {
            match *d {
                Decision::Promote { bytes, .. } | Decision::WriteBack { bytes, .. } => {
                    if let Decision::Promote { .. } = d {
                        // The destination is allocated when the copy starts.
                        self.primary_used += bytes;
                        self.account();
                    }
                    self.copy_bytes_started += bytes;
                    let allowed = self.budget_bytes_per_s * now_ns as f64 / 1e9
                        + (self.burst_bytes + self.largest_asset) as f64;
                    if self.copy_bytes_started as f64 > allowed {
                        self.run.budget_violations += 1;
                    }
                    let start = self.channel_free_ns.max(now_ns);
                    let took_ns = (bytes as f64 / self.budget_bytes_per_s * 1e9) as u64;
                    self.channel_free_ns = start + took_ns.max(1);
                    let fails = self.fails();
                    self.copies.push_back(Copy {
                        finish_ns: self.channel_free_ns,
                        decision: *d,
                        fails,
                    });
                }
                Decision::Demote {
                    ticket,
                    slot,
                    bytes,
                }
                | Decision::Evict {
                    ticket,
                    slot,
                    bytes,
                } => {
                    let outcome = if self.fails() {
                        Outcome::Failed
                    } else {
                        let i = slot as usize;
                        if !self.on_secondary[i] {
                            self.run.unclean_drops += 1;
                        }
                        self.on_primary[i] = false;
                        self.primary_used -= bytes;
                        Outcome::Done
                    };
                    self.policy.finished(now_ns, ticket, outcome);
                }
            }
        }
        self.decisions = decisions;
        self.decisions.clear();
    }

    fn copy_done(&mut self, c: Copy) {
        let now_ns = c.finish_ns;
        let (ticket, slot, bytes) = (c.decision.ticket(), c.decision.slot(), c.decision.bytes());
        let i = slot as usize;
        let outcome = if c.fails {
            self.run.copies_failed += 1;
            if let Decision::Promote { .. } = c.decision {
                self.primary_used -= bytes;
            }
            Outcome::Failed
        } else {
            match c.decision {
                Decision::Promote { .. } => {
                    self.on_primary[i] = true;
                    self.promotions_per_asset[i] += 1;
                }
                _ => self.on_secondary[i] = true,
            }
            Outcome::Done
        };
        self.policy.finished(now_ns, ticket, outcome);
    }
}

fn run_policy(trace: &Trace, cfg: &SimConfig) -> Result<PolicyRun, PolicyError> {
    let (counters, writers) = RateCounters::new(1);
    let writer = writers
        .into_iter()
        .next()
        .expect("RateCounters::new(1) gives one writer");
    let n = trace.assets.len();
    let mut node = Node {
        policy: TierPolicy::new(cfg.policy.clone(), Arc::clone(&counters))?,
        writer,
        capacity: cfg.policy.primary_capacity_bytes,
        on_primary: vec![false; n],
        on_secondary: vec![false; n],
        primary_used: 0,
        copies: VecDeque::new(),
        channel_free_ns: 0,
        budget_bytes_per_s: cfg.policy.copy_budget_bytes_per_s as f64,
        copy_bytes_started: 0,
        largest_asset: trace.assets.iter().map(|a| a.size_bytes).max().unwrap_or(0),
        burst_bytes: cfg.policy.copy_burst_bytes,
        rng: SimRng::new(cfg.seed ^ 0x5EED_FA17),
        failure_rate: cfg.failure_rate,
        promotions_per_asset: vec![0; n],
        run: PolicyRun {
            byte_hit_ratio: 0.0,
            promoted_bytes: 0,
            promotions: 0,
            demoted_bytes: 0,
            demotions: 0,
            evicted_bytes: 0,
            evictions: 0,
            written_back_bytes: 0,
            uploads_to_primary: 0,
            uploads_to_primary_bytes: 0,
            uploads_to_secondary: 0,
            copies_failed: 0,
            assets_promoted: 0,
            promotions_per_promoted_asset: 0.0,
            promotions_per_asset_max: 0,
            assets_promoted_3_or_more: 0,
            primary_used_max_bytes: 0,
            capacity_violations: 0,
            unclean_drops: 0,
            budget_violations: 0,
            invariant_error: None,
        },
        decisions: Vec::new(),
    };
    for (i, a) in trace.assets.iter().enumerate() {
        if a.release_ns.is_none() {
            node.on_secondary[i] = true;
            node.policy
                .add_asset(0, i as u32, a.size_bytes, Placement::Secondary);
        }
    }
    let releases = trace.releases();
    let tick_ns = ((cfg.tick_s.max(1e-3)) * 1e9) as u64;
    let mut next_tick_ns = 0u64;
    let mut next_release = 0usize;
    let mut hit_bytes = 0u64;
    let mut all_bytes = 0u64;
    for r in &trace.requests {
        // Everything due before (or at) this request, in order: copy completions, ticks,
        // releases; ties in that order.
        loop {
            let copy_ns = node.copies.front().map_or(NEVER, |c| c.finish_ns);
            let release_ns = releases.get(next_release).map_or(NEVER, |x| x.0);
            let due = copy_ns.min(next_tick_ns).min(release_ns);
            if due > r.at_ns {
                break;
            }
            if copy_ns == due {
                if let Some(c) = node.copies.pop_front() {
                    node.copy_done(c);
                }
            } else if next_tick_ns == due {
                node.policy.tick(due, &mut node.decisions);
                node.execute(due);
                if cfg.check_every_tick && node.run.invariant_error.is_none() {
                    node.run.invariant_error = node.policy.check_invariants().err();
                }
                next_tick_ns += tick_ns;
            } else {
                let (_, asset) = releases[next_release];
                next_release += 1;
                let size = trace.assets[asset as usize].size_bytes;
                let i = asset as usize;
                match node.policy.reserve_upload(size) {
                    Some(ticket) => {
                        node.primary_used += size;
                        node.account();
                        node.on_primary[i] = true;
                        node.policy.upload_committed(due, ticket, asset);
                    }
                    None => {
                        node.on_secondary[i] = true;
                        node.run.uploads_to_secondary += 1;
                        node.policy
                            .add_asset(due, asset, size, Placement::Secondary);
                    }
                }
            }
            if node.primary_used != node.policy.used_bytes() && node.run.invariant_error.is_none() {
                node.run.invariant_error = Some(format!(
                    "the simulated primary holds {} bytes, the policy counts {}",
                    node.primary_used,
                    node.policy.used_bytes()
                ));
            }
        }
        all_bytes += r.bytes;
        if node.on_primary[r.asset as usize] {
            hit_bytes += r.bytes;
        }
        node.writer.record(r.asset, r.bytes);
    }
    let stats = node.policy.stats();
    let mut run = node.run;
    run.byte_hit_ratio = ratio(hit_bytes as f64, all_bytes as f64).min(1.0);
    run.promoted_bytes = stats.promoted_bytes;
    run.promotions = stats.promotions;
    run.demoted_bytes = stats.demoted_bytes;
    run.demotions = stats.demotions;
    run.evicted_bytes = stats.evicted_bytes;
    run.evictions = stats.evictions;
    run.written_back_bytes = stats.written_back_bytes;
    run.uploads_to_primary = stats.uploads_to_primary;
    run.uploads_to_primary_bytes = stats.uploads_to_primary_bytes;
    let promoted: Vec<u64> = node
        .promotions_per_asset
        .iter()
        .copied()
        .filter(|&p| p > 0)
        .collect();
    run.assets_promoted = promoted.len() as u64;
    run.promotions_per_promoted_asset =
        ratio(promoted.iter().sum::<u64>() as f64, promoted.len() as f64);
    run.promotions_per_asset_max = promoted.iter().copied().max().unwrap_or(0);
    run.assets_promoted_3_or_more = promoted.iter().filter(|&&p| p >= 3).count() as u64;
    if run.invariant_error.is_none() && cfg.check_every_tick {
        run.invariant_error = node.policy.check_invariants().err();
    }
    Ok(run)
}

/// Events of a baseline run in time order: releases (uploads) before requests at the same time.
enum Event {
    Release(u32),
    Request(usize),
}

fn events(trace: &Trace) -> Vec<Event> {
    let releases = trace.releases();
    let mut out = Vec::with_capacity(trace.requests.len() + releases.len());
    let mut next = 0;
    for (i, r) in trace.requests.iter().enumerate() {
        while next < releases.len() && releases[next].0 <= r.at_ns {
            out.push(Event::Release(releases[next].1));
            next += 1;
        }
        out.push(Event::Request(i));
    }
    out
}

fn run_lru(trace: &Trace, capacity: u64) -> BaselineRun {
    let n = trace.assets.len();
    let mut stamp_of = vec![0u64; n];
    let mut order: BTreeMap<u64, u32> = BTreeMap::new();
    let mut clock = 0u64;
    let mut used = 0u64;
    let mut run = BaselineRun {
        byte_hit_ratio: 0.0,
        promotion_bytes: 0,
        promotions: 0,
        upload_bytes: 0,
    };
    let mut hit_bytes = 0u64;
    let mut all_bytes = 0u64;
    for ev in events(trace) {
        let (asset, request_bytes) = match ev {
            Event::Release(a) => (a, None),
            Event::Request(i) => (trace.requests[i].asset, Some(trace.requests[i].bytes)),
        };
        let i = asset as usize;
        let size = trace.assets[i].size_bytes;
        clock += 1;
        if let Some(b) = request_bytes {
            all_bytes += b;
        }
        if stamp_of[i] != 0 {
            if let Some(b) = request_bytes {
                hit_bytes += b;
            }
            order.remove(&stamp_of[i]);
            order.insert(clock, asset);
            stamp_of[i] = clock;
            continue;
        }
        if size > capacity {
            continue;
        }
        while used + size > capacity {
            let Some((_, victim)) = order.pop_first() else {
                break;
            };
            stamp_of[victim as usize] = 0;
            used -= trace.assets[victim as usize].size_bytes;
        }
        used += size;
        order.insert(clock, asset);
        stamp_of[i] = clock;
        if request_bytes.is_some() {
            run.promotion_bytes += size;
            run.promotions += 1;
        } else {
            run.upload_bytes += size;
        }
    }
    run.byte_hit_ratio = ratio(hit_bytes as f64, all_bytes as f64).min(1.0);
    run
}

fn run_static(trace: &Trace, capacity: u64, by_views: bool) -> BaselineRun {
    let n = trace.assets.len();
    let mut requested = vec![0u64; n];
    for r in &trace.requests {
        requested[r.asset as usize] += r.bytes;
    }
    let score = |i: usize| {
        if by_views {
            requested[i] as f64 / trace.assets[i].size_bytes.max(1) as f64
        } else {
            requested[i] as f64
        }
    };
    let mut order: Vec<usize> = (0..n).filter(|&i| requested[i] > 0).collect();
    order.sort_by(|&a, &b| score(b).total_cmp(&score(a)).then(a.cmp(&b)));
    let mut placed = vec![false; n];
    let mut used = 0u64;
    let mut run = BaselineRun {
        byte_hit_ratio: 0.0,
        promotion_bytes: 0,
        promotions: 0,
        upload_bytes: 0,
    };
    for i in order {
        let size = trace.assets[i].size_bytes;
        if used + size <= capacity {
            used += size;
            placed[i] = true;
            run.promotion_bytes += size;
            run.promotions += 1;
        }
    }
    let hit: u64 = trace
        .requests
        .iter()
        .filter(|r| placed[r.asset as usize])
        .map(|r| r.bytes)
        .sum();
    run.byte_hit_ratio = ratio(hit as f64, trace.requested_bytes() as f64).min(1.0);
    run
}

fn run_belady(trace: &Trace, capacity: u64) -> BaselineRun {
    let n = trace.assets.len();
    // Next request (index) of the same asset after each request, and each asset's first.
    let mut next_use = vec![NEVER; trace.requests.len()];
    let mut first_use = vec![NEVER; n];
    for (i, r) in trace.requests.iter().enumerate().rev() {
        let a = r.asset as usize;
        next_use[i] = first_use[a];
        first_use[a] = i as u64;
    }
    // Cached assets by their next request: (next, asset); `key_of` holds each one's key.
    let mut cached: BTreeSet<(u64, u32)> = BTreeSet::new();
    let mut key_of: Vec<Option<u64>> = vec![None; n];
    let mut used = 0u64;
    let mut run = BaselineRun {
        byte_hit_ratio: 0.0,
        promotion_bytes: 0,
        promotions: 0,
        upload_bytes: 0,
    };
    let mut hit_bytes = 0u64;
    let mut all_bytes = 0u64;
    let mut victims = Vec::new();
    for ev in events(trace) {
        let (asset, next, request_bytes) = match ev {
            Event::Release(a) => (a, first_use[a as usize], None),
            Event::Request(i) => {
                let r = trace.requests[i];
                (r.asset, next_use[i], Some(r.bytes))
            }
        };
        let i = asset as usize;
        let size = trace.assets[i].size_bytes;
        if let Some(b) = request_bytes {
            all_bytes += b;
        }
        if let Some(key) = key_of[i] {
            if let Some(b) = request_bytes {
                hit_bytes += b;
            }
            cached.remove(&(key, asset));
            if next == NEVER {
                // Never asked for again: keeping it can only cost room.
                key_of[i] = None;
                used -= size;
            } else {
                cached.insert((next, asset));
                key_of[i] = Some(next);
            }
            continue;
        }
        if next == NEVER || size > capacity {
            continue;
        }
        let free = capacity - used;
        if free < size {
            victims.clear();
            let mut freed = 0u64;
            for &(victim_next, victim) in cached.iter().rev() {
                if free + freed >= size || victim_next <= next {
                    break;
                }
                freed += trace.assets[victim as usize].size_bytes;
                victims.push((victim_next, victim));
            }
            if free + freed < size {
                continue;
            }
            for v in &victims {
                cached.remove(v);
                key_of[v.1 as usize] = None;
                used -= trace.assets[v.1 as usize].size_bytes;
            }
        }
        used += size;
        cached.insert((next, asset));
        key_of[i] = Some(next);
        if request_bytes.is_some() {
            run.promotion_bytes += size;
            run.promotions += 1;
        } else {
            run.upload_bytes += size;
        }
    }
    run.byte_hit_ratio = ratio(hit_bytes as f64, all_bytes as f64).min(1.0);
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_trace(rows: &[(f64, &str, u64)]) -> Trace {
        let csv: String = rows
            .iter()
            .map(|(t, a, b)| format!("{t},{a},{b}\n"))
            .collect();
        Trace::from_csv(&csv).expect("valid csv")
    }

    #[test]
    fn csv_parses_headers_sizes_and_sorts() {
        let t = Trace::from_csv(
            "timestamp,asset,bytes,size\n# comment\n\n5.5, b ,10\n1.0,a,100,1000\n2,a,50\n",
        )
        .expect("valid");
        assert_eq!(t.assets.len(), 2);
        assert_eq!(t.assets[0].id, "b");
        assert_eq!(t.assets[0].size_bytes, 10);
        assert_eq!(t.assets[1].size_bytes, 1000);
        let at: Vec<u64> = t.requests.iter().map(|r| r.at_ns).collect();
        assert_eq!(at, vec![0, 1_000_000_000, 4_500_000_000]);
        assert_eq!(t.requests[2].asset, 0);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let e = Trace::from_csv("1,a,10\n2,b\n").expect_err("two fields");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = Trace::from_csv("1,a,ten\n").expect_err("bad bytes");
        assert!(e.to_string().contains("bytes \"ten\""), "{e}");
        let e = Trace::from_csv("1,a,1\nx,a,1\n").expect_err("bad time not on first line");
        assert!(e.to_string().contains("line 2"), "{e}");
        assert_eq!(Trace::from_csv("t,a,b\n"), Err(TraceError::Empty));
    }

    #[test]
    fn belady_beats_lru_on_a_cyclic_scan() {
        // Three equal assets cycled through a cache of two: LRU always misses, Belady keeps one.
        let rows: Vec<(f64, &str, u64)> = (0..30)
            .map(|i| (i as f64, ["a", "b", "c"][i % 3], 100))
            .collect();
        let t = tiny_trace(&rows);
        let lru = run_lru(&t, 200);
        let belady = run_belady(&t, 200);
        assert_eq!(lru.byte_hit_ratio, 0.0);
        assert!(belady.byte_hit_ratio > 0.4, "{}", belady.byte_hit_ratio);
    }

    #[test]
    fn belady_bypasses_one_off_requests() {
        let t = tiny_trace(&[(0.0, "hot", 100), (1.0, "once", 100), (2.0, "hot", 100)]);
        let b = run_belady(&t, 100);
        // `hot` admitted, `once` never used again: bypassed; second `hot` hits.
        assert_eq!(b.promotions, 1);
        assert!((b.byte_hit_ratio - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn static_oracles_pick_by_bytes_or_by_views() {
        // `big` (size 300) takes most bytes; `small` (size 100) has the most views per byte.
        let t = tiny_trace(&[
            (0.0, "big", 300),
            (1.0, "big", 300),
            (2.0, "small", 100),
            (3.0, "small", 100),
            (4.0, "small", 100),
        ]);
        let by_bytes = run_static(&t, 300, false);
        let by_views = run_static(&t, 300, true);
        assert!((by_bytes.byte_hit_ratio - 600.0 / 900.0).abs() < 1e-12);
        // By views: `small` first (3 views against 2), then `big` does not fit next to it.
        assert!((by_views.byte_hit_ratio - 300.0 / 900.0).abs() < 1e-12);
    }

    #[test]
    fn zipf_trace_is_deterministic_and_skewed() {
        let spec = ZipfSpec {
            assets: 500,
            requests: 20_000,
            ..ZipfSpec::default()
        };
        let a = zipf_trace(&spec);
        let b = zipf_trace(&spec);
        assert_eq!(a, b);
        let c = zipf_trace(&ZipfSpec {
            seed: 2,
            ..spec.clone()
        });
        assert_ne!(a, c);
        let mut count = vec![0u32; 500];
        for r in &a.requests {
            count[r.asset as usize] += 1;
            assert!(r.bytes >= 1 && r.bytes <= a.assets[r.asset as usize].size_bytes);
        }
        // Without churn the asset at rank 1 is asset 0: about 1/H(500) ≈ 15 % of requests.
        assert!(count[0] > 2000 && count[0] < 4000, "{}", count[0]);
        assert!(a.requests.windows(2).all(|w| w[0].at_ns <= w[1].at_ns));
    }

    #[test]
    fn zipf_releases_arrive_before_their_requests() {
        let spec = ZipfSpec {
            assets: 300,
            requests: 30_000,
            rate_per_s: 10.0,
            new_releases_per_h: 0.1,
            churn_per_h: 0.5,
            ..ZipfSpec::default()
        };
        let t = zipf_trace(&spec);
        let released = t.assets.iter().filter(|a| a.release_ns.is_some()).count();
        // 30 000 requests at 10/s: ~0.83 h, so about 25 releases.
        assert!((10..=50).contains(&released), "{released}");
        for r in &t.requests {
            if let Some(at) = t.assets[r.asset as usize].release_ns {
                assert!(at <= r.at_ns);
            }
        }
    }
}
