//! `reel simulate`: replays a request trace through the node's tiering policy (the same code,
//! under a simulated clock) and prints the primary byte-hit ratio and migration traffic next to
//! LRU, a static oracle and Belady's offline optimum at the same primary capacity.
//!
//! The work is all in `reel_policy::sim`; this module maps flags onto it and prints.
//! `--all` runs the standard table (steady Zipf 0.8, 1.0, 1.2 and a churning trace with new
//! releases) and says whether each target is met.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use reel_policy::sim::{simulate, zipf_trace, SimConfig, SimReport, Trace, ZipfSpec};
use reel_policy::PolicyConfig;
use serde::Serialize;

use crate::units::{human_bytes, parse_size};

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
    /// Synthetic trace: number of requests.
    #[arg(long, default_value_t = 1_000_000, conflicts_with = "duration")]
    pub requests: u64,
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
    /// Run the standard table (steady Zipf 0.8 / 1.0 / 1.2 and a churning trace with new
    /// releases) and report whether each target is met.
    #[arg(long)]
    pub all: bool,
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

/// Churn of the `--all` churning trace: each asset's popularity is re-drawn every 2.5 h on average.
const ALL_CHURN_PER_H: f64 = 0.2;
/// New releases of the `--all` churning trace: 2 % of the library per hour.
const ALL_NEW_RELEASES_PER_H: f64 = 0.02;

fn policy_config(args: &SimulateArgs) -> PolicyConfig {
    let mut p = PolicyConfig::default();
    if let Some(h) = args.half_life {
        p.half_life_s = h.as_secs_f64();
    }
    if let Some(v) = args.promote {
        p.promote_per_h = v;
        if args.demote.is_none() {
            p.demote_per_h = p.demote_per_h.min(v);
        }
    }
    if let Some(v) = args.demote {
        p.demote_per_h = v;
    }
    if let Some(m) = args.margin {
        p.swap_margin = m;
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
    let requests = match args.duration {
        Some(d) => (d.as_secs_f64() * args.rate).round() as u64,
        None => args.requests,
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
    churning: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    workload: Option<ZipfSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_file: Option<PathBuf>,
    report: SimReport,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    targets: Vec<Target>,
}

#[derive(Serialize)]
struct Target {
    what: String,
    value: f64,
    needed: f64,
    met: bool,
}

fn targets(r: &SimReport, churning: bool) -> Vec<Target> {
    let mut t = Vec::new();
    let policy = r.policy.byte_hit_ratio;
    if churning {
        t.push(Target {
            what: "policy byte-hit ratio > static oracle's".into(),
            value: policy,
            needed: r.static_oracle.byte_hit_ratio,
            met: policy > r.static_oracle.byte_hit_ratio,
        });
    } else {
        t.push(Target {
            what: "policy byte-hit ratio ≥ LRU's".into(),
            value: policy,
            needed: r.lru.byte_hit_ratio,
            met: policy >= r.lru.byte_hit_ratio,
        });
        t.push(Target {
            what: "policy byte-hit ratio ≥ 0.95 × static oracle's".into(),
            value: r.ratios.policy_over_static_oracle,
            needed: 0.95,
            met: r.ratios.policy_over_static_oracle >= 0.95,
        });
    }
    t.push(Target {
        what: "promotion writes ≤ 1.2 × Belady's".into(),
        value: r.ratios.promotion_bytes_over_belady,
        needed: 1.2,
        met: r.ratios.promotion_bytes_over_belady <= 1.2,
    });
    let violations =
        r.policy.capacity_violations + r.policy.unclean_drops + r.policy.budget_violations;
    t.push(Target {
        what: "no capacity, clean-drop or budget violation".into(),
        value: violations as f64,
        needed: 0.0,
        met: violations == 0 && r.policy.invariant_error.is_none(),
    });
    t
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let cfg = sim_config(args)?;
    let scenarios = if args.all {
        let mut jobs = Vec::new();
        for alpha in [0.8, 1.0, 1.2] {
            jobs.push((
                format!("zipf {alpha:.1} steady"),
                false,
                zipf_spec(args, alpha, 0.0, 0.0)?,
            ));
        }
        jobs.push((
            format!("zipf 1.0 churn {ALL_CHURN_PER_H}/h releases {ALL_NEW_RELEASES_PER_H}/h"),
            true,
            zipf_spec(args, 1.0, ALL_CHURN_PER_H, ALL_NEW_RELEASES_PER_H)?,
        ));
        run_parallel(jobs, &cfg)?
    } else if let Some(path) = &args.trace {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the trace file {}", path.display()))?;
        let trace = Trace::from_csv(&text).with_context(|| format!("{}", path.display()))?;
        let report = simulate(&trace, &cfg)?;
        vec![Scenario {
            name: format!("trace {}", path.display()),
            churning: false,
            workload: None,
            trace_file: Some(path.clone()),
            report,
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
        run_parallel(vec![(name, churning, spec)], &cfg)?
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

/// Generates and simulates each scenario, two at a time (the simulation is single-threaded and
/// deterministic; threads only shorten `--all`).
fn run_parallel(
    jobs: Vec<(String, bool, ZipfSpec)>,
    cfg: &SimConfig,
) -> anyhow::Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for pair in jobs.chunks(2) {
        let results: Vec<anyhow::Result<Scenario>> = std::thread::scope(|s| {
            let handles: Vec<_> = pair
                .iter()
                .map(|(name, churning, spec)| {
                    s.spawn(move || -> anyhow::Result<Scenario> {
                        let trace = zipf_trace(spec);
                        let report = simulate(&trace, cfg)?;
                        Ok(Scenario {
                            name: name.clone(),
                            churning: *churning,
                            workload: Some(spec.clone()),
                            trace_file: None,
                            targets: targets(&report, *churning),
                            report,
                        })
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
        for r in results {
            out.push(r?);
        }
    }
    Ok(out)
}

/// The policy's knobs as the text reports name them: half-life, thresholds, margin,
/// residency and copy budget.
fn policy_summary(c: &PolicyConfig) -> String {
    format!(
        "half-life {:.0} s, promote ≥ {} /h, demote < {} /h, margin {}, min residency {:.0} s, budget {}/s",
        c.half_life_s,
        c.promote_per_h,
        c.demote_per_h,
        c.swap_margin,
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
        "static oracle (bytes)*",
        r.static_oracle.byte_hit_ratio,
        r.static_oracle.promotion_bytes,
        r.static_oracle.promotions,
    ));
    s.push_str(&row(
        "static oracle (views)*",
        r.static_oracle_by_views.byte_hit_ratio,
        r.static_oracle_by_views.promotion_bytes,
        r.static_oracle_by_views.promotions,
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
        "migrations: {} assets promoted, {:.2} promotions each (max {}), {} promoted 3+ times; primary peak {}\n",
        p.assets_promoted,
        p.promotions_per_promoted_asset,
        p.promotions_per_asset_max,
        p.assets_promoted_3_or_more,
        human_bytes(p.primary_used_max_bytes),
    ));
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
        "* placed once for the whole run, knowing the trace: assets with the most requested \
         bytes (the target), or the most views per byte (for reference). Their 'promoted' is the \
         one-time placement.\n",
    );
    s.push_str(&format!("Belady: {}.\n", r.belady_variant));
    s
}

fn all_table(scenarios: &[Scenario]) -> String {
    let mut s = String::new();
    if let Some(first) = scenarios.first() {
        let r = &first.report;
        s.push_str(&format!(
            "primary = {:.0}% of the library; {} requests per trace; policy: {}\n\n",
            r.config.primary_fraction * 100.0,
            r.trace.requests,
            policy_summary(&r.config.policy),
        ));
    }
    s.push_str(&format!(
        "{:<36}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>12}{:>7}{:>12}{:>7}{:>10}\n",
        "trace",
        "policy",
        "LRU",
        "oracle",
        "oracleV",
        "Belady",
        "/LRU",
        "/oracle",
        "/Belady",
        "promoted",
        "/cap",
        "Belady wr",
        "wr/Bel",
        "migr/max"
    ));
    for sc in scenarios {
        let r = &sc.report;
        s.push_str(&format!(
            "{:<36}{:>8.4}{:>8.4}{:>8.4}{:>8.4}{:>8.4}{:>8.3}{:>8.3}{:>8.3}{:>12}{:>7.2}{:>12}{:>7.3}{:>10}\n",
            sc.name,
            r.policy.byte_hit_ratio,
            r.lru.byte_hit_ratio,
            r.static_oracle.byte_hit_ratio,
            r.static_oracle_by_views.byte_hit_ratio,
            r.belady.byte_hit_ratio,
            r.ratios.policy_over_lru,
            r.ratios.policy_over_static_oracle,
            r.ratios.policy_over_belady,
            human_bytes(r.policy.promoted_bytes),
            r.policy.promoted_bytes as f64 / r.primary_capacity_bytes.max(1) as f64,
            human_bytes(r.belady.promotion_bytes),
            r.ratios.promotion_bytes_over_belady,
            format!(
                "{:.2}/{}",
                r.policy.promotions_per_promoted_asset, r.policy.promotions_per_asset_max
            ),
        ));
    }
    s.push_str("\ntargets:\n");
    let mut all_met = true;
    for sc in scenarios {
        for t in &sc.targets {
            all_met &= t.met;
            s.push_str(&format!(
                "  {:<4} {:<36} {} (value {:.4}, needed {:.4})\n",
                if t.met { "MET" } else { "MISS" },
                sc.name,
                t.what,
                t.value,
                t.needed
            ));
        }
    }
    s.push_str(&format!(
        "\n{}\noracle = static oracle by requested bytes (the target); oracleV = static oracle by views per byte (reference);\npromoted = policy promotion writes, /cap = in primary capacities; wr = promotion writes; migr/max = promotions per promoted asset, mean/max.\nBelady: {}.\n",
        if all_met { "all targets met" } else { "NOT all targets met" },
        BELADY
    ));
    s
}

const BELADY: &str = reel_policy::sim::BELADY_VARIANT;
