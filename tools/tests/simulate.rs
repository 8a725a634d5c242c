//! `reel simulate` as a user runs it: on a CSV trace generated here (a steady Zipf workload over
//! a small library) and on small synthetic traces. Checks that the numbers are sane (ratios in
//! [0, 1], the static oracle ahead of LRU on a steady skewed workload, no capacity/budget
//! violations), that runs are deterministic from the seed, and that bad input gets a message
//! naming the fix. No io_uring or devices needed: the simulator is pure computation.

use std::path::{Path, PathBuf};

use reel_testkit::{text, Reel};
use serde_json::Value;

const REEL: Reel = reel_testkit::reel!();

/// A steady Zipf(1.0) trace over `assets` assets of 1–64 MiB: `requests` lines of
/// `timestamp,asset,bytes,size`, one request every 0.1 s, a quarter of them ranges (a part of
/// the asset). Deterministic (xorshift from a fixed seed).
fn write_zipf_csv(dir: &Path, assets: usize, requests: usize) -> PathBuf {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let sizes: Vec<u64> = (0..assets)
        .map(|_| ((1.0 + 63.0 * next()) * 1048576.0) as u64)
        .collect();
    let weights: Vec<f64> = (1..=assets).map(|k| 1.0 / k as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut cdf = Vec::with_capacity(assets);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cdf.push(acc);
    }
    let mut csv = String::from("timestamp,asset,bytes,size\n");
    for i in 0..requests {
        let u = next();
        let a = cdf.partition_point(|&c| c <= u).min(assets - 1);
        let size = sizes[a];
        let bytes = if next() < 0.25 {
            ((size as f64 * next()) as u64).max(1)
        } else {
            size
        };
        csv.push_str(&format!("{:.3},movie-{a},{bytes},{size}\n", i as f64 * 0.1));
    }
    let path = dir.join("zipf.csv");
    std::fs::write(&path, csv).expect("write the trace");
    path
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

fn assert_sane(report: &Value) {
    for who in [
        "policy",
        "lru",
        "static_oracle",
        "static_oracle_by_bytes",
        "belady",
    ] {
        let bhr = f(report, &[who, "byte_hit_ratio"]);
        assert!((0.0..=1.0).contains(&bhr), "{who}: byte-hit ratio {bhr}");
    }
    for check in ["capacity_violations", "unclean_drops", "budget_violations"] {
        assert_eq!(f(report, &["policy", check]), 0.0, "{check}");
    }
    assert!(report["policy"]["invariant_error"].is_null());
    assert!(
        f(report, &["policy", "primary_used_max_bytes"]) <= f(report, &["primary_capacity_bytes"])
    );
    // Belady is offline: on these traces it is ahead of every online policy.
    let belady = f(report, &["belady", "byte_hit_ratio"]);
    assert!(belady >= f(report, &["lru", "byte_hit_ratio"]));
    assert!(belady >= f(report, &["policy", "byte_hit_ratio"]));
}

#[test]
fn csv_trace_gives_sane_numbers_and_oracle_beats_lru() {
    let dir = REEL.tempdir("reel-sim-");
    let trace = write_zipf_csv(dir.path(), 300, 60_000);
    let trace = trace.to_str().expect("utf-8 path");
    let out = REEL.ok(&["simulate", "--trace", trace, "--json", "--tick", "5"]);
    let v = json(&out);
    let report = &v["report"];
    assert_eq!(f(report, &["trace", "requests"]), 60_000.0);
    assert_eq!(f(report, &["trace", "assets"]), 300.0);
    assert!((f(report, &["trace", "duration_s"]) - 5999.9).abs() < 0.01);
    assert_sane(report);
    // Steady Zipf: knowing the popularity beats chasing recency.
    let oracle = f(report, &["static_oracle", "byte_hit_ratio"]);
    let lru = f(report, &["lru", "byte_hit_ratio"]);
    assert!(oracle >= lru, "oracle {oracle} < LRU {lru}");
    // The policy learns the popularity too.
    let policy = f(report, &["policy", "byte_hit_ratio"]);
    assert!(policy >= lru, "policy {policy} < LRU {lru}");
    assert!(f(report, &["policy", "promotions"]) > 0.0);

    // The table names every contender and the Belady variant.
    let table = REEL.ok(&["simulate", "--trace", trace, "--tick", "5"]);
    for word in [
        "policy",
        "LRU",
        "static oracle",
        "Belady (bypass)",
        "with bypass",
    ] {
        assert!(table.contains(word), "{word} missing from:\n{table}");
    }
}

#[test]
fn same_seed_same_output() {
    let args = [
        "simulate",
        "--zipf",
        "0.9",
        "--assets",
        "300",
        "--requests",
        "30000",
        "--rate",
        "5",
        "--churn",
        "0.3",
        "--new-releases",
        "0.05",
        "--seed",
        "42",
        "--tick",
        "5",
    ];
    let a = REEL.ok(&args);
    let b = REEL.ok(&args);
    assert_eq!(a, b, "two runs with the same seed differ");
    let mut other = args.to_vec();
    let seed_at = other
        .iter()
        .position(|a| *a == "42")
        .expect("the seed argument");
    other[seed_at] = "43";
    let c = REEL.ok(&other);
    assert_ne!(a, c, "a different seed gave the very same output");
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let j1 = REEL.ok(&with_json);
    assert_eq!(j1, REEL.ok(&with_json));
    let v = json(&j1);
    assert_sane(&v["report"]);
    assert!(f(&v["report"], &["trace", "new_releases"]) > 0.0);
    assert!(f(&v["report"], &["policy", "uploads_to_primary"]) > 0.0);
}

#[test]
fn synthetic_steady_zipf_oracle_beats_lru() {
    let out = REEL.ok(&[
        "simulate",
        "--zipf",
        "1.0",
        "--assets",
        "500",
        "--requests",
        "50000",
        "--rate",
        "10",
        "--json",
        "--tick",
        "5",
    ]);
    let v = json(&out);
    let report = &v["report"];
    assert_sane(report);
    assert!(
        f(report, &["static_oracle", "byte_hit_ratio"]) >= f(report, &["lru", "byte_hit_ratio"])
    );
    assert!(
        f(report, &["static_oracle_by_bytes", "byte_hit_ratio"])
            >= f(report, &["lru", "byte_hit_ratio"])
    );
}

/// `reel simulate --all` scaled down (the real `--all` runs 24 h of requests per trace).
const ALL_SCALED_DOWN: [&str; 10] = [
    "simulate",
    "--all",
    "--assets",
    "300",
    "--requests",
    "20000",
    "--rate",
    "5",
    "--tick",
    "5",
];

#[test]
fn all_mode_prints_the_standard_table_and_the_targets() {
    // Scaled down (the real `--all` runs 24 h of requests per trace); only the shape is checked.
    let out = REEL.ok(&ALL_SCALED_DOWN);
    for row in [
        "zipf 0.8 steady",
        "zipf 1.0 steady",
        "zipf 1.2 steady",
        "churn",
        "low rate",
    ] {
        assert!(out.contains(row), "{row} missing:\n{out}");
    }
    assert!(out.contains("targets:"), "{out}");
    for target in [
        "best fixed half-life",
        "× the best fixed half-life's",
        "≥ LRU's",
        "static oracle (by requests) − 1 point",
    ] {
        assert!(out.contains(target), "{target} missing:\n{out}");
    }
    assert!(out.contains("fixed half-lives"), "{out}");
    assert!(out.contains("all targets met") || out.contains("NOT all targets met"));
    let j = REEL.ok(&[&ALL_SCALED_DOWN[..], &["--json"]].concat());
    let v: Value = json(&j);
    let rows = v.as_array().expect("--all --json prints an array");
    assert_eq!(rows.len(), 6);
    for r in rows {
        assert_sane(&r["report"]);
        assert!(!r["targets"].as_array().expect("targets").is_empty());
        // Each trace also ran with each fixed half-life, the others at their defaults.
        let fixed = r["fixed"].as_array().expect("fixed runs");
        assert_eq!(fixed.len(), 4);
        for f in fixed {
            assert!(f["half_life_s"].as_f64().is_some_and(|h| h >= 1800.0));
            let bhr = f["run"]["byte_hit_ratio"].as_f64().expect("a ratio");
            assert!((0.0..=1.0).contains(&bhr));
        }
        // The default settings choose the half-life: the tuner reports what it judged.
        assert!(r["report"]["policy"]["tuning"]["candidates"].is_array());
    }
}

#[test]
fn bad_input_names_the_fix() {
    let dir = REEL.tempdir("reel-sim-");
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "0.0,a,100\n1.0,b\n").expect("write");
    let out = REEL.run(&["simulate", "--trace", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("timestamp,asset,bytes"),
        "{err}"
    );

    let out = REEL.run(&["simulate", "--trace", "/nonexistent/trace.csv"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read the trace file"));

    let err = REEL.fails(&["simulate", "--primary-fraction", "1.5"]);
    assert!(err.contains("--primary-fraction"), "{err}");

    let err = REEL.fails(&[
        "simulate",
        "--promote",
        "1",
        "--demote",
        "2",
        "--requests",
        "10",
    ]);
    assert!(err.contains("demote_per_h"), "{err}");

    let out = REEL.run(&["simulate", "--trace", "x.csv", "--zipf", "1.0"]);
    assert!(!out.status.success(), "--trace and --zipf conflict");
}

#[test]
fn cluster_mode_prints_the_table_and_placement_beats_consistent_hashing() {
    let out = REEL.ok(&["simulate", "--cluster", "--quick"]);
    for word in [
        "zipf 1.0 steady",
        "churn",
        "placement policy",
        "Open Connect (daily)*",
        "consistent hash k=2",
        "byte-hit",
        "relayed",
        "copy/served",
        "load max",
        "checks: capacity violations and last-copy drops 0",
    ] {
        assert!(out.contains(word), "{word} missing:\n{out}");
    }
    let j = REEL.ok(&["simulate", "--cluster", "--quick", "--json"]);
    assert_eq!(j, REEL.ok(&["simulate", "--cluster", "--quick", "--json"]));
    let v = json(&j);
    let rows = v.as_array().expect("--cluster --json prints an array");
    assert_eq!(rows.len(), 2, "a steady and a churning trace");
    for row in rows {
        let r = &row["report"];
        let requested = f(r, &["requested_bytes"]);
        for who in ["policy", "open_connect", "consistent_hashing"] {
            for m in ["byte_hit_ratio", "relayed_share"] {
                let x = f(r, &[who, m]);
                assert!((0.0..=1.0).contains(&x), "{who} {m} {x}");
            }
            assert!(f(r, &[who, "load_max_over_mean"]) >= 1.0);
            assert_eq!(f(r, &[who, "capacity_violations"]), 0.0, "{who}");
            assert_eq!(f(r, &[who, "last_copy_drops"]), 0.0, "{who}");
            let read: f64 = r[who]["node_read_bytes"]
                .as_array()
                .expect("bytes read per node")
                .iter()
                .map(|x| x.as_f64().expect("a number"))
                .sum();
            assert_eq!(read, requested, "{who}: every requested byte is read once");
        }
        // Measured on seeds 1–5 (0.10–0.20 ahead, steady and churning): a copy count by
        // demand and placement by where clients ask beat a fixed spread of LRU caches.
        let policy = f(r, &["policy", "byte_hit_ratio"]);
        let ch = f(r, &["consistent_hashing", "byte_hit_ratio"]);
        assert!(
            policy > ch,
            "{}: policy {policy} ≤ consistent hashing {ch}",
            row["name"]
        );
    }
    let err = REEL.fails(&["simulate", "--cluster", "--edges", "0", "--quick"]);
    assert!(err.contains("--edges"), "{err}");
    let out = REEL.run(&["simulate", "--cluster", "--all"]);
    assert!(!out.status.success(), "--cluster and --all conflict");
}
