//! `reel bench routing --quick` end to end: a manager, synthetic nodes, `reel load --no-follow`
//! against it (and against nginx when installed). Asserts only that the figures come out,
//! never a speed.

use reel_testkit::{text, Reel};
use serde_json::Value;

const REEL: Reel = reel_testkit::reel!();

#[test]
fn the_routing_bench_produces_its_figures() {
    let dir = REEL.tempdir("reel-bench-routing-");
    let json = dir.path().join("routing.json");
    let out = std::process::Command::new(REEL.bin)
        .args(["bench", "routing", "--quick", "--holdings", "20000"])
        .args(["--run-seconds", "1", "--connections", "4", "--dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .output()
        .expect("reel bench routing runs");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "reel bench routing failed\nstdout:\n{stdout}\nstderr:\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("B per asset"), "{stdout}");
    assert!(stdout.contains("| 1000 |"), "{stdout}");
    let f: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the --json file")).expect("JSON");
    assert_eq!(f["holdings"].as_u64(), Some(20_000), "{f}");
    assert!(
        f["bytes_per_asset"].as_f64().is_some_and(|b| b > 0.0),
        "{f}"
    );
    let p = &f["points"][0];
    assert!(
        p["manager"]["completed_per_s"]
            .as_f64()
            .is_some_and(|r| r > 0.0),
        "{f}"
    );
    assert!(
        p["decision_mean_us"].as_f64().is_some_and(|d| d > 0.0),
        "{f}"
    );
    assert!(f["reports_sent"].as_u64().is_some_and(|n| n > 0), "{f}");
}
