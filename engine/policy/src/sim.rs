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
//! policy grants the room or room can be made by dropping clean copies colder than a newcomer
//! ([`TierPolicy::evict_for_upload`]), else on secondary. Background copies (promotions and write-backs) run
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
//! - *Static oracle*: knowing the whole trace, the assets with the most requests are placed once
//!   for the whole run, greedy while they fit. Requests are counted as views (bytes requested ÷
//!   size, so a range counts by its share of the asset): the byte-hit value of an asset per byte
//!   of primary, which makes this the stronger static choice. Also reported, for reference: the
//!   same greedy by requested bytes, which favours large assets and is weaker when sizes differ.
//! - *Belady with bypass*: see [`BELADY_VARIANT`].
//!
//! **Cluster** (`reel simulate --cluster`, [`simulate_cluster`]): the placement policy on a
//! simulated library and edges, next to static popularity-proportional placement and
//! consistent hashing; see `sim/cluster.rs`.

use serde::Serialize;

use super::policy::{PolicyConfig, PolicyError};
#[cfg(doc)]
use super::{policy::TierPolicy, rate::RateCounters};

mod baseline;
mod cluster;
mod node;
mod trace;

use baseline::{run_belady, run_lru, run_static};
pub use cluster::{
    cluster_trace, simulate_cluster, ClusterReport, ClusterRun, ClusterSpec, ClusterTrace,
};
use node::run_policy;
pub use trace::{zipf_trace, SimRng, Trace, TraceAsset, TraceError, TraceRequest, ZipfSpec};

/// What the offline optimum baseline does, as printed in reports.
pub const BELADY_VARIANT: &str = "Belady with bypass, greedy for variable sizes: on a miss, the \
    cached assets whose next request is furthest in the future are the victims, taken in that \
    order while their next request is later than the newcomer's; if they free enough room they \
    are evicted and the newcomer admitted, otherwise it bypasses primary. Offline and instant, \
    but not the exact byte-hit optimum for variable sizes (that problem is NP-hard)";

const NEVER: u64 = u64::MAX;

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
    /// Clean copies dropped to make room for new releases (as the node does for an upload).
    pub upload_room_drops: u64,
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
    /// The half-life the policy read at the end (configured, or chosen).
    pub half_life_s: f64,
    /// What the half-life tuner judged at the end (`None`: the half-life was configured).
    pub tuning: Option<crate::policy::TuningState>,
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
    /// By requests (views) per asset: the target.
    pub static_oracle: BaselineRun,
    /// By requested bytes: for reference.
    pub static_oracle_by_bytes: BaselineRun,
    pub belady: BaselineRun,
    pub belady_variant: &'static str,
    pub ratios: Ratios,
}

/// `a / b`, with `x / 0` as infinity (or 1 when both are 0).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else if a > 0.0 {
        f64::INFINITY
    } else {
        1.0
    }
}

/// The primary's capacity for `trace` under `cfg`, and `cfg` with the policy's capacity set.
fn sized(trace: &Trace, cfg: &SimConfig) -> (u64, SimConfig) {
    let capacity = (trace.library_bytes() as f64 * cfg.primary_fraction.clamp(0.0, 1.0)) as u64;
    let mut cfg = cfg.clone();
    cfg.policy.primary_capacity_bytes = capacity;
    (capacity, cfg)
}

/// Runs the policy alone over `trace` (no baselines): for comparing policy settings on one trace.
pub fn simulate_policy(trace: &Trace, cfg: &SimConfig) -> Result<PolicyRun, PolicyError> {
    run_policy(trace, &sized(trace, cfg).1)
}

/// Runs the policy and every baseline over `trace`.
pub fn simulate(trace: &Trace, cfg: &SimConfig) -> Result<SimReport, PolicyError> {
    let library_bytes = trace.library_bytes();
    let (capacity, cfg) = sized(trace, cfg);
    let policy = run_policy(trace, &cfg)?;
    let lru = run_lru(trace, capacity);
    let static_oracle = run_static(trace, capacity, true);
    let static_oracle_by_bytes = run_static(trace, capacity, false);
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
        static_oracle_by_bytes,
        belady,
        belady_variant: BELADY_VARIANT,
        ratios,
    })
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
