//! `reel simulate --cluster`: the cluster's placement policy on a simulated library and edges,
//! next to Open Connect's and Traffic Control's approaches, on a steady and a churning trace.
//! The work is in `reel_policy::sim::simulate_cluster`; this maps flags onto it and prints.

use std::time::Duration;

use reel_policy::sim::{cluster_trace, simulate_cluster, ClusterReport, ClusterRun, ClusterSpec};
use reel_policy::PlacementConfig;
use serde::Serialize;

use super::{zipf_spec, SimulateArgs};
use crate::units::human_bytes;

/// The churning trace's popularity churn and releases (as `--all`'s).
const CHURN_PER_H: f64 = 0.2;
const NEW_RELEASES_PER_H: f64 = 0.02;
/// A full run: 24 simulated hours at --rate.
const HOURS: f64 = 24.0;
/// `--quick`: 500 assets, 5 requests/s, 4 h.
const QUICK_ASSETS: u32 = 500;
const QUICK_RATE: f64 = 5.0;
const QUICK_HOURS: f64 = 4.0;
/// Unset, one copy is sized for this share of a node's mean traffic.
const COPY_SERVE_SHARE: f64 = 0.05;

#[derive(Serialize)]
struct Row {
    name: String,
    steady: bool,
    report: ClusterReport,
}

fn specs(args: &SimulateArgs) -> anyhow::Result<Vec<(String, bool, ClusterSpec)>> {
    let mut args = args.clone();
    if args.quick {
        args.assets = QUICK_ASSETS;
        args.rate = QUICK_RATE;
        if args.requests.is_none() && args.duration.is_none() {
            args.duration = Some(Duration::from_secs_f64(QUICK_HOURS * 3600.0));
        }
    }
    if args.requests.is_none() && args.duration.is_none() {
        args.duration = Some(Duration::from_secs_f64(HOURS * 3600.0));
    }
    if args.edges == 0 {
        anyhow::bail!("--edges 0: the cluster needs at least one edge");
    }
    for (flag, v) in [
        ("--locality", args.locality),
        ("--edge-primary", args.edge_primary),
        ("--library-primary", args.library_primary),
    ] {
        if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
            anyhow::bail!("{flag} {v} is invalid: expected a fraction in [0, 1], e.g. 0.05");
        }
    }
    if args.spread == 0 {
        anyhow::bail!("--spread 0: consistent hashing needs at least one replica");
    }
    let alpha = args.zipf.unwrap_or(1.0);
    let placement = PlacementConfig {
        max_primary_copies: args.max_primary_copies,
        ..PlacementConfig::default()
    };
    placement
        .validate()
        .map_err(|e| anyhow::anyhow!("{e}; adjust --max-primary-copies"))?;
    let base = ClusterSpec {
        edges: args.edges,
        locality: args.locality,
        edge_primary_fraction: args.edge_primary,
        library_primary_fraction: args.library_primary,
        spread: args.spread,
        placement,
        ..ClusterSpec::default()
    };
    let mut out = Vec::new();
    for (steady, churn, releases) in [(true, 0.0, 0.0), (false, CHURN_PER_H, NEW_RELEASES_PER_H)] {
        let name = if steady {
            format!("zipf {alpha:.1} steady")
        } else {
            format!("zipf {alpha:.1} churn {churn}/h releases {releases}/h")
        };
        let zipf = zipf_spec(&args, alpha, churn, releases)?;
        out.push((
            name,
            steady,
            ClusterSpec {
                zipf,
                ..base.clone()
            },
        ));
    }
    Ok(out)
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let specs = specs(args)?;
    let copy_serve = args.copy_serve;
    // One thread per trace: each simulation is single-threaded and deterministic.
    let rows: Vec<anyhow::Result<Row>> = std::thread::scope(|s| {
        let handles: Vec<_> = specs
            .into_iter()
            .map(|(name, steady, mut spec)| {
                s.spawn(move || -> anyhow::Result<Row> {
                    let ct = cluster_trace(&spec);
                    spec.placement.copy_serve_bytes_per_s = match copy_serve {
                        Some(b) => b,
                        None => {
                            let nodes = f64::from(spec.edges) + 1.0;
                            let per_node = ct.trace.requested_bytes() as f64
                                / ct.trace.duration_s().max(1.0)
                                / nodes;
                            ((per_node * COPY_SERVE_SHARE) as u64).max(1)
                        }
                    };
                    let report = simulate_cluster(&ct, &spec)?;
                    Ok(Row {
                        name,
                        steady,
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
    let rows = rows.into_iter().collect::<anyhow::Result<Vec<Row>>>()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    if let Some(first) = rows.first() {
        let r = &first.report;
        let sp = &r.spec;
        let edges = usize::from(sp.edges);
        let weights: Vec<String> = (0..edges)
            .map(|e| {
                let total = (edges * (edges + 1) / 2) as f64;
                format!("{:.0}", (edges - e) as f64 / total * 100.0)
            })
            .collect();
        s.push_str(&format!(
            "cluster: a library (secondary: every asset; primary {}) and {} edges (primary {} each); clients {} % per edge, {:.0}% regional taste\n",
            human_bytes(r.library_primary_bytes),
            sp.edges,
            human_bytes(r.edge_primary_bytes),
            weights.join("/"),
            sp.locality * 100.0,
        ));
        s.push_str(&format!(
            "placement: one copy per {}/s of traffic, at most {} copies, rates over a {:.0} s half-life, tick {} s, copies at {}/s per node; consistent hashing: {} replicas\n\n",
            human_bytes(sp.placement.copy_serve_bytes_per_s),
            sp.placement.max_primary_copies,
            sp.half_life_s,
            sp.tick_s,
            human_bytes(sp.copy_link_bytes_per_s as u64),
            sp.spread,
        ));
    }
    s.push_str(&format!(
        "{:<38}{:<22}{:>9}{:>9}{:>13}{:>10}{:>9}\n",
        "trace", "", "byte-hit", "relayed", "copy/served", "load max", "copies"
    ));
    let line = |trace: &str, who: &str, run: &ClusterRun| {
        format!(
            "{:<38}{:<22}{:>9.4}{:>9.4}{:>13.4}{:>10.2}{:>9}\n",
            trace,
            who,
            run.byte_hit_ratio,
            run.relayed_share,
            run.copy_ratio,
            run.load_max_over_mean,
            run.copies
        )
    };
    let mut checks = 0;
    for row in rows {
        let r = &row.report;
        s.push_str(&line(&row.name, "placement policy", &r.policy));
        s.push_str(&line("", "Open Connect (daily)*", &r.open_connect));
        s.push_str(&line(
            "",
            &format!("consistent hash k={}", r.spec.spread),
            &r.consistent_hashing,
        ));
        for run in [&r.policy, &r.open_connect, &r.consistent_hashing] {
            checks += run.capacity_violations + run.last_copy_drops;
        }
    }
    s.push_str(&format!(
        "\nbyte-hit = bytes read from a primary (local or relayed) ÷ bytes requested; relayed = read on another node than the client's edge; \
         copy/served = bytes written to primaries ÷ bytes requested; load max = most bytes read on one node ÷ the mean over nodes.\n\
         * placed at each simulated day's start from the previous day's requests (the first day from its own: a day-ahead oracle).\n\
         checks: capacity violations and last-copy drops {checks}\n"
    ));
    s
}
