//! `reel simulate`: replays a request trace through the node's tiering policy (the same code,
//! under a simulated clock) and prints the primary byte-hit ratio and migration traffic next to
//! LRU, a static oracle and Belady's offline optimum at the same primary capacity.
//!
//! The work is all in `reel_policy::sim`; this module maps flags onto it and prints.
//! `--all` runs the standard table ([`standard_rows`]) with the default settings and, on each
//! trace, each fixed half-life of [`FIXED_HALF_LIVES_S`] with the other defaults, and says
//! whether each target is met.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use reel_policy::sim::{
    ratio, simulate, simulate_policy, zipf_trace, PolicyRun, SimConfig, SimReport, Trace, ZipfSpec,
};
use reel_policy::PolicyConfig;
use serde::Serialize;

use crate::units::{human_bytes, parse_size};

mod cluster;

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    /// Replay a CSV trace: one request per line, `timestamp,asset,bytes[,size]` (timestamp in
    /// seconds as a float, asset id, bytes requested, optional asset size in bytes; without it
    /// the size is the largest `bytes` seen). A header line is allowed.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["zipf", "all"])]
    pub trace: Option<PathBuf>,
    /// Synthetic trace with Zipf(ALPHA) popularity (the default, with α = 1.0).
    #[arg(long, value_name = "ALPHA")]
    pub zipf: Option<f64>,
    /// Synthetic trace: assets in the library at the start.
    #[arg(long, default_value_t = 10_000)]
    pub assets: u32,
    /// Synthetic trace: number of requests [default: 1000000; with --all, 24 h of requests at
    /// --rate].
    #[arg(long, conflicts_with = "duration")]
    pub requests: Option<u64>,
    /// Synthetic trace: simulated length instead of --requests (e.g. 3600, 90m, 6h); the
    /// number of requests is duration × rate.
    #[arg(long, value_parser = parse_duration_h)]
    pub duration: Option<Duration>,
    /// Synthetic trace: requests per simulated second (Poisson arrivals).
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Synthetic trace: popularity churn, rank swaps per hour as a fraction of the library.
    /// Each swap exchanges the ranks of two assets drawn uniformly, so each asset's popularity
    /// is re-drawn about 2 × RATE times per hour (0.2: every 2.5 h on average).
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Synthetic trace: new releases per hour as a fraction of the initial library. A release
    /// is uploaded to the node (primary, if it has room) and enters at a rank drawn by
    /// popularity.
    #[arg(long, default_value_t = 0.0)]
    pub new_releases: f64,
    /// Seed of the synthetic trace (and of nothing else: the policy is deterministic).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Primary capacity as a fraction of the library's bytes.
    #[arg(long, default_value_t = 0.1)]
    pub primary_fraction: f64,
    /// Half-life of the decaying request rate (e.g. 1800, 30m, 1h).
    #[arg(long, value_parser = parse_duration_h)]
    pub half_life: Option<Duration>,
    /// Promote threshold, views per hour (a floor; a full primary also needs the swap margin).
    #[arg(long, value_name = "VIEWS_PER_H")]
    pub promote: Option<f64>,
    /// Demote threshold, views per hour (≤ --promote).
    #[arg(long, value_name = "VIEWS_PER_H")]
    pub demote: Option<f64>,
    /// A newcomer evicts a clean copy only if it is hotter by this fraction (0.25 = 25 %).
    #[arg(long)]
    pub margin: Option<f64>,
    /// Minimum time a copy stays on primary before it may be demoted or evicted.
    #[arg(long, value_parser = parse_duration_h)]
    pub min_residency: Option<Duration>,
    /// Background copy bandwidth budget, bytes per second (e.g. 256M).
    #[arg(long, value_parser = parse_size)]
    pub budget: Option<u64>,
    /// Simulated time between policy ticks.
    #[arg(long, value_parser = parse_duration_h, default_value = "1")]
    pub tick: Duration,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Run the standard table and report whether each target is met: steady Zipf 0.8 / 1.0 /
    /// 1.2 and a churning trace with new releases at --rate (50/s) for 24 h, and a low-rate
    /// churning trace (1/s, 83 h) with the primary at 20% and 10% of the library; each with the
    /// settings given and with each fixed half-life (30m, 1h, 2h, 4h), next to LRU, the static
    /// oracle and Belady. About a minute on 2 cores.
    #[arg(long)]
    pub all: bool,
    /// Simulate the cluster's placement policy: a library (secondary: everything; a primary
    /// of --library-primary) and --edges edges (primaries of --edge-primary), each edge's
    /// clients with their own taste (--locality), on a steady and a churning trace (churn
    /// 0.2/h, releases 0.02/h) of --assets at --rate for 24 h (or --requests/--duration);
    /// next to static popularity-proportional placement recomputed daily (Open Connect) and
    /// consistent hashing with --spread replicas (Traffic Control). About a minute on 2 cores.
    #[arg(long, conflicts_with_all = ["trace", "all"])]
    pub cluster: bool,
    /// With --cluster: a small run (500 assets, 5 requests/s, 4 h) for tests and a first look.
    #[arg(long, requires = "cluster")]
    pub quick: bool,
    /// With --cluster: edge nodes.
    #[arg(long, default_value_t = 4)]
    pub edges: u16,
    /// With --cluster: share of each edge's requests drawn from its own regional ranking.
    #[arg(long, default_value_t = 0.3)]
    pub locality: f64,
    /// With --cluster: each edge's primary as a fraction of the library's bytes.
    #[arg(long, default_value_t = 0.05)]
    pub edge_primary: f64,
    /// With --cluster: the library's primary as a fraction of the library's bytes.
    #[arg(long, default_value_t = 0.05)]
    pub library_primary: f64,
    /// With --cluster: consistent hashing's replicas per asset.
    #[arg(long, default_value_t = 2)]
    pub spread: u16,
    /// With --cluster: primary copies of one asset at most.
    #[arg(long, default_value_t = 4)]
    pub max_primary_copies: u32,
    /// With --cluster: the traffic one primary copy is sized to serve, bytes/s (e.g. 64M)
    /// [default: 5% of a node's mean traffic in the trace].
    #[arg(long, value_parser = parse_size)]
    pub copy_serve: Option<u64>,
}

/// Durations as `units::parse_duration`, plus an `h` suffix for hours.
fn parse_duration_h(s: &str) -> Result<Duration, String> {
    if let Some(h) = s.trim().strip_suffix('h') {
        let v: f64 = h
            .trim()
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: expected e.g. 1800, 30m or 2h"))?;
        if v.is_finite() && v > 0.0 {
            return Duration::try_from_secs_f64(v * 3600.0).map_err(|e| e.to_string());
        }
        return Err(format!(
            "invalid duration {s:?}: it must be greater than zero"
        ));
    }
    crate::units::parse_duration(s)
}

/// Requests of a single synthetic run unless --requests or --duration says otherwise.
const DEFAULT_REQUESTS: u64 = 1_000_000;

/// The standard table's traces at 50 requests/s run this long (unless --requests or --duration
/// says otherwise): long enough that the cold start (an empty primary, filled under the copy
/// budget) weighs little against the steady state the targets are about.
const ALL_HOURS: f64 = 24.0;
/// Churn of the `--all` churning trace: each asset's popularity is re-drawn every 2.5 h on average.
const ALL_CHURN_PER_H: f64 = 0.2;
/// New releases of the `--all` churning trace: 2 % of the library per hour.
const ALL_NEW_RELEASES_PER_H: f64 = 0.02;
/// The low-rate churning traces: a 5× smaller library (2,000 titles) requested 50× less often
/// (1 request/s), popularity re-drawn every 2.5 h on average, 1 % of the library released per
/// day, for 83 h — where one request lifts a cold title over an absolute threshold.
const LOW_RATE_LIBRARY_DIVISOR: u32 = 5;
const LOW_RATE_RATE_DIVISOR: f64 = 50.0;
const LOW_RATE_HOURS: f64 = 83.0;
const LOW_RATE_NEW_RELEASES_PER_H: f64 = 0.01 / 24.0;
/// The fixed half-lives each `--all` trace is also run with (each with the other defaults).
pub const FIXED_HALF_LIVES_S: [f64; 4] = [1800.0, 3600.0, 7200.0, 14_400.0];

fn policy_config(args: &SimulateArgs) -> PolicyConfig {
    let mut p = PolicyConfig::default();
    if let Some(h) = args.half_life {
        p.half_life_s = Some(h.as_secs_f64());
    }
    if let Some(v) = args.promote {
        p.promote_per_h = Some(v);
    }
    if let Some(v) = args.demote {
        p.demote_per_h = Some(v);
    }
    if let Some(m) = args.margin {
        p.swap_margin = Some(m);
    }
    if let Some(r) = args.min_residency {
        p.min_residency_s = r.as_secs_f64();
    }
    if let Some(b) = args.budget {
        p.copy_budget_bytes_per_s = b;
        p.copy_burst_bytes = p.copy_burst_bytes.min(b.max(1));
    }
    p
}

fn sim_config(args: &SimulateArgs) -> anyhow::Result<SimConfig> {
    let cfg = SimConfig {
        policy: policy_config(args),
        primary_fraction: args.primary_fraction,
        tick_s: args.tick.as_secs_f64(),
        ..SimConfig::default()
    };
    if !(cfg.primary_fraction > 0.0 && cfg.primary_fraction <= 1.0) {
        anyhow::bail!(
            "--primary-fraction {} is invalid: expected a fraction in (0, 1], e.g. 0.1",
            cfg.primary_fraction
        );
    }
    cfg.policy
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}; adjust the corresponding flag"))?;
    Ok(cfg)
}

fn zipf_spec(
    args: &SimulateArgs,
    alpha: f64,
    churn: f64,
    new_releases: f64,
) -> anyhow::Result<ZipfSpec> {
    if !(alpha.is_finite() && alpha >= 0.0) {
        anyhow::bail!("--zipf {alpha} is invalid: expected an exponent ≥ 0, e.g. 0.8 or 1.0");
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        anyhow::bail!(
            "--rate {} is invalid: expected requests per second > 0",
            args.rate
        );
    }
    if args.assets == 0 {
        anyhow::bail!("--assets 0: the library needs at least one asset");
    }
    for (flag, v) in [("--churn", churn), ("--new-releases", new_releases)] {
        if !(v.is_finite() && v >= 0.0) {
            anyhow::bail!("{flag} {v} is invalid: expected a fraction per hour ≥ 0, e.g. 0.2");
        }
    }
    let requests = match (args.duration, args.requests) {
        (Some(d), _) => (d.as_secs_f64() * args.rate).round() as u64,
        (None, Some(n)) => n,
        (None, None) => DEFAULT_REQUESTS,
    };
    if requests == 0 {
        anyhow::bail!("no requests to simulate: raise --requests or --duration");
    }
    Ok(ZipfSpec {
        assets: args.assets,
        alpha,
        requests,
        rate_per_s: args.rate,
        churn_per_h: churn,
        new_releases_per_h: new_releases,
        seed: args.seed,
        ..ZipfSpec::default()
    })
}

/// One simulated scenario: its name, what generated it, and what was measured.
#[derive(Serialize)]
struct Scenario {
    name: String,
    steady: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<ZipfSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_file: Option<PathBuf>,
    /// The settings given (the defaults in `--all`), with every baseline.
    report: SimReport,
    /// `--all`: the same trace with each fixed half-life and the other settings as given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    fixed: Vec<FixedRun>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    targets: Vec<Target>,
}

#[derive(Serialize)]
struct FixedRun {
    half_life_s: f64,
    run: PolicyRun,
}

impl Scenario {
    /// The fixed half-life with the best byte-hit ratio (the shorter one on a tie).
    fn best_fixed(&self) -> Option<&FixedRun> {
        self.fixed.iter().reduce(|a, b| {
            if b.run.byte_hit_ratio > a.run.byte_hit_ratio {
                b
            } else {
                a
            }
        })
    }
}

#[derive(Serialize)]
struct Target {
    what: String,
    value: f64,
    needed: f64,
    met: bool,
}

/// Byte-hit ratio points the default settings may trail the best fixed half-life by.
const BEST_FIXED_POINTS: f64 = 0.5;
/// Promotion writes the default settings may make, in multiples of the best fixed half-life's.
const BEST_FIXED_WRITES: f64 = 1.5;
/// Byte-hit ratio points the policy may trail the static oracle by on a steady trace.
const ORACLE_POINTS: f64 = 1.0;

fn targets(sc: &Scenario) -> Vec<Target> {
    let r = &sc.report;
    let p = &r.policy;
    let bhr = p.byte_hit_ratio;
    let mut t = Vec::new();
    if let Some(best) = sc.best_fixed() {
        let need = best.run.byte_hit_ratio - BEST_FIXED_POINTS / 100.0;
        t.push(Target {
            what: format!(
                "byte-hit ≥ best fixed half-life ({}) − {BEST_FIXED_POINTS} point",
                human_duration(best.half_life_s)
            ),
            value: bhr,
            needed: need,
            met: bhr >= need,
        });
        let writes = ratio(p.promoted_bytes as f64, best.run.promoted_bytes as f64);
        t.push(Target {
            what: format!("promotion writes ≤ {BEST_FIXED_WRITES} × the best fixed half-life's"),
            value: writes,
            needed: BEST_FIXED_WRITES,
            met: writes <= BEST_FIXED_WRITES,
        });
    }
    t.push(Target {
        what: "byte-hit ≥ LRU's".into(),
        value: bhr,
        needed: r.lru.byte_hit_ratio,
        met: bhr >= r.lru.byte_hit_ratio,
    });
    if sc.steady {
        let need = r.static_oracle.byte_hit_ratio - ORACLE_POINTS / 100.0;
        t.push(Target {
            what: format!("byte-hit ≥ static oracle (by requests) − {ORACLE_POINTS} point"),
            value: bhr,
            needed: need,
            met: bhr >= need,
        });
    }
    let violations = p.capacity_violations + p.unclean_drops + p.budget_violations;
    t.push(Target {
        what: "no capacity, clean-drop or budget violation".into(),
        value: violations as f64,
        needed: 0.0,
        met: violations == 0 && p.invariant_error.is_none(),
    });
    t
}

/// A trace of the standard table: its name, whether it is steady, its workload and the
/// primary's share of the library.
struct Row {
    name: String,
    steady: bool,
    spec: ZipfSpec,
    primary_fraction: f64,
}

/// The standard table: steady Zipf 0.8, 1.0 and 1.2; Zipf 1.0 with churn and new releases; and
/// the low-rate churning trace with the primary at 20 % and at 10 % of the library (the
/// library 10× the primary). --assets, --rate and --requests/--duration scale the 50/s traces
/// (and the low-rate ones in proportion); the primary's share is fixed per row.
fn standard_rows(args: &SimulateArgs) -> anyhow::Result<Vec<Row>> {
    let base = zipf_spec(args, 1.0, 0.0, 0.0)?;
    let requests = match (args.duration, args.requests) {
        (None, None) => (ALL_HOURS * 3600.0 * args.rate).round() as u64,
        _ => base.requests,
    };
    let hours = requests as f64 / args.rate / 3600.0;
    let fast = |alpha: f64, churn: f64, releases: f64| ZipfSpec {
        alpha,
        requests,
        churn_per_h: churn,
        new_releases_per_h: releases,
        ..base.clone()
    };
    let low_rate = args.rate / LOW_RATE_RATE_DIVISOR;
    let slow = ZipfSpec {
        assets: (args.assets / LOW_RATE_LIBRARY_DIVISOR).max(1),
        rate_per_s: low_rate,
        requests: (LOW_RATE_HOURS * hours / ALL_HOURS * 3600.0 * low_rate)
            .round()
            .max(1.0) as u64,
        churn_per_h: ALL_CHURN_PER_H,
        new_releases_per_h: LOW_RATE_NEW_RELEASES_PER_H,
        ..base.clone()
    };
    let f = args.primary_fraction;
    let mut rows = Vec::new();
    for alpha in [0.8, 1.0, 1.2] {
        rows.push(Row {
            name: format!("zipf {alpha:.1} steady"),
            steady: true,
            spec: fast(alpha, 0.0, 0.0),
            primary_fraction: f,
        });
    }
    rows.push(Row {
        name: format!("zipf 1.0 churn {ALL_CHURN_PER_H}/h releases {ALL_NEW_RELEASES_PER_H}/h"),
        steady: false,
        spec: fast(1.0, ALL_CHURN_PER_H, ALL_NEW_RELEASES_PER_H),
        primary_fraction: f,
    });
    for fraction in [0.2, 0.1] {
        rows.push(Row {
            name: format!("low rate {low_rate} req/s churn {ALL_CHURN_PER_H}/h"),
            steady: false,
            spec: slow.clone(),
            primary_fraction: fraction,
        });
    }
    Ok(rows)
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    if args.cluster {
        return cluster::run(args);
    }
    let cfg = sim_config(args)?;
    let scenarios = if args.all {
        run_all(standard_rows(args)?, &cfg, args.tick.as_secs_f64())?
    } else if let Some(path) = &args.trace {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the trace file {}", path.display()))?;
        let trace = Trace::from_csv(&text).with_context(|| format!("{}", path.display()))?;
        let report = simulate(&trace, &cfg)?;
        vec![Scenario {
            name: format!("trace {}", path.display()),
            steady: false,
            workload: None,
            trace_file: Some(path.clone()),
            report,
            fixed: Vec::new(),
            targets: Vec::new(),
        }]
    } else {
        let alpha = args.zipf.unwrap_or(1.0);
        let churning = args.churn > 0.0 || args.new_releases > 0.0;
        let spec = zipf_spec(args, alpha, args.churn, args.new_releases)?;
        let name = if churning {
            format!(
                "zipf {alpha} churn {}/h releases {}/h",
                args.churn, args.new_releases
            )
        } else {
            format!("zipf {alpha} steady")
        };
        let trace = zipf_trace(&spec);
        let report = simulate(&trace, &cfg)?;
        vec![Scenario {
            name,
            steady: !churning,
            workload: Some(spec),
            trace_file: None,
            report,
            fixed: Vec::new(),
            targets: Vec::new(),
        }]
    };
    if args.json {
        let out = if args.all {
            serde_json::to_string_pretty(&scenarios)?
        } else {
            serde_json::to_string_pretty(&scenarios[0])?
        };
        println!("{out}");
    } else if args.all {
        print!("{}", all_table(&scenarios));
    } else {
        print!("{}", single_report(&scenarios[0]));
    }
    Ok(())
}

/// What one simulation of `--all` computes.
enum Job {
    /// The settings given, with every baseline.
    Report(usize),
    /// The policy alone with a fixed half-life.
    Fixed(usize, f64),
}

enum Done {
    Report(usize, Box<SimReport>),
    Fixed(usize, f64, Box<PolicyRun>),
}

/// Generates each row's trace and runs every simulation of the table on all cores (each
/// simulation is single-threaded and deterministic; threads only shorten `--all`).
fn run_all(rows: Vec<Row>, cfg: &SimConfig, tick_s: f64) -> anyhow::Result<Vec<Scenario>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let traces: Vec<Trace> = std::thread::scope(|s| {
        let handles: Vec<_> = rows
            .iter()
            .map(|r| s.spawn(|| zipf_trace(&r.spec)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut jobs = Vec::new();
    for i in 0..rows.len() {
        jobs.push(Job::Report(i));
        for h in FIXED_HALF_LIVES_S {
            jobs.push(Job::Fixed(i, h));
        }
    }
    let row_cfg = |i: usize, half_life_s: Option<f64>| {
        let mut c = cfg.clone();
        c.primary_fraction = rows[i].primary_fraction;
        c.tick_s = tick_s;
        if half_life_s.is_some() {
            c.policy.half_life_s = half_life_s;
        }
        c
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<anyhow::Result<Vec<Done>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.min(jobs.len()).max(1))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<Vec<Done>> {
                    let mut out = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(job) = jobs.get(k) else {
                            return Ok(out);
                        };
                        out.push(match *job {
                            Job::Report(i) => {
                                Done::Report(i, Box::new(simulate(&traces[i], &row_cfg(i, None))?))
                            }
                            Job::Fixed(i, h) => Done::Fixed(
                                i,
                                h,
                                Box::new(simulate_policy(&traces[i], &row_cfg(i, Some(h)))?),
                            ),
                        });
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a simulation thread panicked")))
            })
            .collect()
    });
    let mut reports: Vec<Option<SimReport>> = rows.iter().map(|_| None).collect();
    let mut fixed: Vec<Vec<FixedRun>> = rows.iter().map(|_| Vec::new()).collect();
    for r in results {
        for d in r? {
            match d {
                Done::Report(i, rep) => reports[i] = Some(*rep),
                Done::Fixed(i, h, run) => fixed[i].push(FixedRun {
                    half_life_s: h,
                    run: *run,
                }),
            }
        }
    }
    let mut out = Vec::new();
    for ((row, report), mut fixed) in rows.into_iter().zip(reports).zip(fixed) {
        let report = report.ok_or_else(|| anyhow::anyhow!("a simulation did not finish"))?;
        fixed.sort_by(|a, b| a.half_life_s.total_cmp(&b.half_life_s));
        let mut sc = Scenario {
            name: row.name,
            steady: row.steady,
            workload: Some(row.spec),
            trace_file: None,
            report,
            fixed,
            targets: Vec::new(),
        };
        sc.targets = targets(&sc);
        out.push(sc);
    }
    Ok(out)
}

/// `1800` → `30m`, `7200` → `2h`.
fn human_duration(s: f64) -> String {
    if s >= 3600.0 && (s / 3600.0).fract() == 0.0 {
        format!("{}h", s / 3600.0)
    } else if s >= 60.0 && (s / 60.0).fract() == 0.0 {
        format!("{}m", s / 60.0)
    } else {
        format!("{s:.0}s")
    }
}

/// The policy's knobs as the text reports name them: half-life, thresholds, margin,
/// residency and copy budget.
fn policy_summary(c: &PolicyConfig) -> String {
    format!(
        "half-life {}, promote ≥ {}, demote < {}, margin {}, min residency {:.0} s, budget {}/s",
        c.half_life_s.map_or("auto".into(), |h| format!("{h:.0} s")),
        c.promote_per_h.map_or("auto".into(), |v| format!("{v} /h")),
        c.demote_per_h.map_or("auto".into(), |v| format!("{v} /h")),
        c.swap_margin.map_or("auto".into(), |m| m.to_string()),
        c.min_residency_s,
        human_bytes(c.copy_budget_bytes_per_s),
    )
}

fn single_report(sc: &Scenario) -> String {
    let r = &sc.report;
    let p = &r.policy;
    let mut s = String::new();
    let t = &r.trace;
    s.push_str(&format!(
        "trace: {}: {} assets ({} new releases), {} requests over {:.1} h; library {}, requested {}\n",
        sc.name,
        t.assets,
        t.new_releases,
        t.requests,
        t.duration_s / 3600.0,
        human_bytes(t.library_bytes),
        human_bytes(t.requested_bytes),
    ));
    s.push_str(&format!(
        "primary: {} ({:.0}% of the library); policy: {}, tick {} s\n\n",
        human_bytes(r.primary_capacity_bytes),
        r.config.primary_fraction * 100.0,
        policy_summary(&r.config.policy),
        r.config.tick_s,
    ));
    s.push_str(&format!(
        "{:<26}{:>9}{:>14}{:>12}{:>12}\n",
        "", "byte-hit", "promoted", "promotions", "policy/this"
    ));
    let row = |name: &str, bhr: f64, bytes: u64, n: u64| {
        format!(
            "{:<26}{:>9.4}{:>14}{:>12}{:>12.3}\n",
            name,
            bhr,
            human_bytes(bytes),
            n,
            if bhr > 0.0 {
                p.byte_hit_ratio / bhr
            } else {
                f64::NAN
            }
        )
    };
    s.push_str(&row(
        "policy",
        p.byte_hit_ratio,
        p.promoted_bytes,
        p.promotions,
    ));
    s.push_str(&row(
        "LRU",
        r.lru.byte_hit_ratio,
        r.lru.promotion_bytes,
        r.lru.promotions,
    ));
    s.push_str(&row(
        "static oracle (requests)*",
        r.static_oracle.byte_hit_ratio,
        r.static_oracle.promotion_bytes,
        r.static_oracle.promotions,
    ));
    s.push_str(&row(
        "static oracle (bytes)*",
        r.static_oracle_by_bytes.byte_hit_ratio,
        r.static_oracle_by_bytes.promotion_bytes,
        r.static_oracle_by_bytes.promotions,
    ));
    s.push_str(&row(
        "Belady (bypass)",
        r.belady.byte_hit_ratio,
        r.belady.promotion_bytes,
        r.belady.promotions,
    ));
    s.push_str(&format!(
        "\npolicy: promotion writes {:.3}× Belady's; demoted {} ({}), evicted {} ({}), written back {}, uploads to primary {} ({}), to secondary {}\n",
        r.ratios.promotion_bytes_over_belady,
        human_bytes(p.demoted_bytes),
        p.demotions,
        human_bytes(p.evicted_bytes),
        p.evictions,
        human_bytes(p.written_back_bytes),
        p.uploads_to_primary,
        human_bytes(p.uploads_to_primary_bytes),
        p.uploads_to_secondary,
    ));
    s.push_str(&format!(
        "migrations: {} assets promoted, {:.2} promotions each (max {}), {} promoted 3+ times; promotion writes {:.2}× the primary; primary peak {}\n",
        p.assets_promoted,
        p.promotions_per_promoted_asset,
        p.promotions_per_asset_max,
        p.assets_promoted_3_or_more,
        p.promoted_bytes as f64 / r.primary_capacity_bytes.max(1) as f64,
        human_bytes(p.primary_used_max_bytes),
    ));
    if let Some(t) = &p.tuning {
        s.push_str(&format!(
            "half-life: chosen from the traffic, {} at the end ({} switches); shadow byte-hit ratio by half-life: {}\n",
            human_duration(t.half_life_s),
            t.switches,
            t.candidates
                .iter()
                .map(|c| format!("{} {:.4}", human_duration(c.half_life_s), c.shadow_byte_hit_ratio))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    s.push_str(&format!(
        "checks: capacity violations {}, drops without a secondary copy {}, budget violations {}{}\n",
        p.capacity_violations,
        p.unclean_drops,
        p.budget_violations,
        p.invariant_error
            .as_deref()
            .map(|e| format!(", invariant: {e}"))
            .unwrap_or_default(),
    ));
    s.push_str(
        "* placed once for the whole run, knowing the trace: the assets with the most requests \
         (views: bytes requested ÷ size, the stronger choice and the target), or with the most \
         requested bytes (for reference). Their 'promoted' is the one-time placement.\n",
    );
    s.push_str(&format!("Belady: {}.\n", r.belady_variant));
    s
}

fn all_table(scenarios: &[Scenario]) -> String {
    let mut s = String::new();
    if let Some(first) = scenarios.first() {
        let r = &first.report;
        s.push_str(&format!(
            "policy (default settings): {}\nfixed: the same with each fixed half-life; best = the one with the highest byte-hit ratio\n\n",
            policy_summary(&r.config.policy),
        ));
    }
    s.push_str(&format!(
        "{:<34}{:>5}{:>9}{:>5}{:>8}{:>8}{:>8}{:>8}{:>12}{:>7}{:>8}{:>7}{:>7}{:>10}\n",
        "trace",
        "prim",
        "requests",
        "hl",
        "policy",
        "LRU",
        "oracle",
        "Belady",
        "best fixed",
        "Δ pt",
        "wr/cap",
        "÷best",
        "Δorc",
        "migr/max"
    ));
    for sc in scenarios {
        let r = &sc.report;
        let p = &r.policy;
        let cap = r.primary_capacity_bytes.max(1) as f64;
        let (best_name, best_bhr, best_writes) =
            sc.best_fixed()
                .map_or(("-".to_string(), f64::NAN, f64::NAN), |b| {
                    (
                        human_duration(b.half_life_s),
                        b.run.byte_hit_ratio,
                        b.run.promoted_bytes as f64,
                    )
                });
        s.push_str(&format!(
            "{:<34}{:>4.0}%{:>9}{:>5}{:>8.4}{:>8.4}{:>8.4}{:>8.4}{:>5} {:>6.4}{:>+7.2}{:>8.2}{:>7.2}{:>+7.2}{:>10}\n",
            sc.name,
            r.config.primary_fraction * 100.0,
            r.trace.requests,
            human_duration(p.half_life_s),
            p.byte_hit_ratio,
            r.lru.byte_hit_ratio,
            r.static_oracle.byte_hit_ratio,
            r.belady.byte_hit_ratio,
            best_name,
            best_bhr,
            (p.byte_hit_ratio - best_bhr) * 100.0,
            p.promoted_bytes as f64 / cap,
            ratio(p.promoted_bytes as f64, best_writes),
            (p.byte_hit_ratio - r.static_oracle.byte_hit_ratio) * 100.0,
            format!(
                "{:.2}/{}",
                p.promotions_per_promoted_asset, p.promotions_per_asset_max
            ),
        ));
    }
    s.push_str("\nfixed half-lives (byte-hit ratio / promotion writes in primary capacities / promotions per promoted asset):\n");
    s.push_str(&format!("{:<34}{:>5}", "trace", "prim"));
    if let Some(first) = scenarios.first() {
        for f in &first.fixed {
            s.push_str(&format!("{:>24}", human_duration(f.half_life_s)));
        }
    }
    s.push('\n');
    for sc in scenarios {
        let cap = sc.report.primary_capacity_bytes.max(1) as f64;
        s.push_str(&format!(
            "{:<34}{:>4.0}%",
            sc.name,
            sc.report.config.primary_fraction * 100.0
        ));
        for f in &sc.fixed {
            s.push_str(&format!(
                "{:>24}",
                format!(
                    "{:.4} / {:.2} / {:.2}",
                    f.run.byte_hit_ratio,
                    f.run.promoted_bytes as f64 / cap,
                    f.run.promotions_per_promoted_asset
                )
            ));
        }
        s.push('\n');
    }
    s.push_str("\ntargets:\n");
    let mut all_met = true;
    for sc in scenarios {
        for t in &sc.targets {
            all_met &= t.met;
            s.push_str(&format!(
                "  {:<4} {:<34} {:>4.0}%  {} (value {:.4}, needed {:.4})\n",
                if t.met { "MET" } else { "MISS" },
                sc.name,
                sc.report.config.primary_fraction * 100.0,
                t.what,
                t.value,
                t.needed
            ));
        }
    }
    s.push_str(&format!(
        "\n{}\nprim = primary as a share of the library; hl = the half-life the policy read at the end (auto: chosen from the traffic);\noracle = static oracle by requests (views) per asset, placed once knowing the trace; Δ pt = policy − best fixed, in points;\nwr/cap = promotion writes in primary capacities; ÷best = over the best fixed half-life's; Δorc = policy − oracle, in points;\nmigr/max = promotions per promoted asset, mean/max.\nBelady: {}.\n",
        if all_met { "all targets met" } else { "NOT all targets met" },
        BELADY
    ));
    s
}

const BELADY: &str = reel_policy::sim::BELADY_VARIANT;
