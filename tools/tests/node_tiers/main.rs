//! `reel node` with two tiers as a client sees it: a real node process on loopback with a
//! primary and a secondary volume, driven by the real `curl` binary: write-backs, commits,
//! promotions and demotions, the latency guard, pinned policies and the migration controls;
//! and where uploads land ([`uploads`]).
//!
//! Every test formats its own volumes (1 GiB; the upload tests the sizes they need) under
//! Cargo's target tmp dir (not /tmp, which may be tmpfs without O_DIRECT) and starts its own
//! node with two shards; the node is killed when the test ends. A test skips, saying why, when
//! `curl` is not installed or io_uring is unavailable.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reel_testkit::content::content;
use reel_testkit::curl::{sha256, CurlResp, ZERO_COPY_FLAGS};
use reel_testkit::metrics::metric_sum;
use reel_testkit::node::{NodeArgs, NodeProc, FAST_POLICY_FLAGS};
use reel_testkit::{curl, http, path_str, poll, text, Reel};

mod uploads;

const REEL: Reel = reel_testkit::reel!();

/// The chunk size of a fresh volume: ranges crossing this boundary take two device reads.
const CHUNK: usize = 1 << 20;

/// The volumes of a two-tier test node: two primaries (to restart on an empty one); the
/// secondary is in the node's arguments.
struct Tiered {
    p1: PathBuf,
    p2: PathBuf,
}

/// Formats `primary-1`, `primary-2` and `secondary` and starts a node on `primary-1` with
/// `--secondary` and `extra` flags, or `None` (having said why) without the prerequisites.
fn start_tiered(test: &str, extra: &[&str]) -> Option<(NodeProc, Tiered)> {
    if !curl::runnable(&REEL, test) {
        return None;
    }
    let dir = REEL.tempdir("reel-node-tiers-");
    let (p1, p2, sec) = (
        dir.path().join("primary-1"),
        dir.path().join("primary-2"),
        dir.path().join("secondary"),
    );
    for v in [&p1, &p2, &sec] {
        REEL.format(v, "1G");
    }
    let args = NodeArgs::new(&p1)
        .secondary(&sec)
        .shards(2)
        .flags(ZERO_COPY_FLAGS)
        .flags(extra);
    let node = NodeProc::spawn_in(&REEL, dir, args);
    Some((node, Tiered { p1, p2 }))
}

/// `kill -9` the node, then start a new one on the primary `vol` (same secondary and flags).
fn restart_on(node: &mut NodeProc, vol: &Path) {
    node.args.primary = vol.to_path_buf();
    node.restart();
}

/// `id`'s (tiers, uncommitted tiers) per `/assets/{id}/info`, or None while it is not found.
fn tiers_of(node: &NodeProc, id: &str) -> Option<(Vec<String>, Vec<String>)> {
    let r = node.curl(&[], &format!("/assets/{id}/info"));
    if r.status != 200 {
        return None;
    }
    let info: serde_json::Value = serde_json::from_slice(&r.body).expect("info is JSON");
    Some((
        http::names(&info, "tiers"),
        http::names(&info, "uncommitted"),
    ))
}

/// Each `(name, value)` of `expected` is the sum of that metric on the node's /metrics now.
fn assert_metrics(node: &NodeProc, expected: &[(&str, u64)]) {
    let metrics = text(&node.curl(&[], "/metrics").body);
    for &(name, want) in expected {
        assert_eq!(metric_sum(&metrics, name), want, "{name}: {metrics}");
    }
}

/// Waits until `id` is on exactly the tiers `want`, and durable on all of them unless
/// `durable` is false.
fn wait_for_tiers_as(node: &NodeProc, id: &str, want: &[&str], durable: bool) {
    poll(Duration::from_secs(20), Duration::from_millis(100), || {
        let found = tiers_of(node, id);
        if let Some((tiers, uncommitted)) = &found {
            if tiers == want && (uncommitted.is_empty() || !durable) {
                return Ok(());
            }
        }
        Err(format!(
            "{id}: (tiers, uncommitted) {found:?}, waited for {want:?}; node stderr:\n{}",
            node.stderr()
        ))
    });
}

/// Durable too: the tests kill -9 the node next, which forgets uncommitted copies.
fn wait_for_tiers(node: &NodeProc, id: &str, want: &[&str]) {
    wait_for_tiers_as(node, id, want, true);
}

#[test]
fn copies_are_committed_once_the_node_serves_no_one() {
    // The default commit deadline (10 min): only quiet can commit within the test.
    let Some((mut node, t)) = start_tiered("copies_are_committed_once_the_node_serves_no_one", &[])
    else {
        return;
    };
    let data = content(43, 2 * CHUNK + 5);
    node.curl_put("quiet/movie", &data);
    // Polled every 100 ms, the node is never quiet: the write-back serves but waits.
    wait_for_tiers_as(&node, "quiet/movie", &["primary", "secondary"], false);
    for _ in 0..10 {
        let (_, uncommitted) = tiers_of(&node, "quiet/movie").expect("info");
        assert_eq!(
            uncommitted,
            ["secondary"],
            "no commit while requests keep coming"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Left alone for 2 s (plus a scheduler tick or two), it commits.
    std::thread::sleep(Duration::from_secs(4));
    let (tiers, uncommitted) = tiers_of(&node, "quiet/movie").expect("info");
    assert_eq!(
        (tiers.as_slice(), uncommitted.len()),
        (&["primary".to_string(), "secondary".to_string()][..], 0)
    );
    let metrics = text(&node.curl(&[], "/metrics").body);
    assert_eq!(
        metric_sum(&metrics, "reel_migration_commits_total"),
        1,
        "{metrics}"
    );
    // Durable: after kill -9, a node with an empty primary serves it from the secondary.
    restart_on(&mut node, &t.p2);
    let r = node.curl(&[], "/assets/quiet/movie");
    assert_eq!(r.status, 200, "GET from the secondary after kill -9");
    assert!(r.body == data, "the committed copy's bytes");
}

/// A tiered node whose commits under load fall due 200 ms after a copy and first wait out a
/// 3 s settle, with `id` uploaded and its write-back serving but not yet committed. `None`:
/// the test skips (see [`start_tiered`]).
fn node_with_a_settling_copy(name: &str, id: &str, len: usize, seed: u64) -> Option<NodeProc> {
    let extra = [
        "--migration-commit-interval",
        "200ms",
        "--migration-commit-settle",
        "3s",
    ];
    let (node, _) = start_tiered(name, &extra)?;
    node.curl_put(id, &content(seed, len));
    wait_for_tiers_as(&node, id, &["primary", "secondary"], false);
    Some(node)
}

#[test]
fn under_load_a_due_commit_first_lets_the_copies_settle() {
    // Polled every 100 ms (never quiet): the commit is due 200 ms after the write-back, and
    // waits out the 3 s settle first.
    let Some(node) = node_with_a_settling_copy(
        "under_load_a_due_commit_first_lets_the_copies_settle",
        "settle/movie",
        CHUNK + 9,
        45,
    ) else {
        return;
    };
    let t0 = Instant::now();
    wait_for_tiers_as(&node, "settle/movie", &["primary", "secondary"], true);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(10),
        "committed {waited:?} after the copy, want the 3 s settle (plus a tick or two)"
    );
}

#[test]
fn a_settle_counts_time_paused_so_frequent_pauses_do_not_starve_the_commit() {
    // Paused and resumed every second under load, with a 3 s settle: the settle runs from the
    // last copy's end, through the pauses, so the commit lands in a resumed second after it.
    // (Restarted at every resume, it never ended: copies stopped for good.)
    let Some(node) = node_with_a_settling_copy(
        "a_settle_counts_time_paused_so_frequent_pauses_do_not_starve_the_commit",
        "toggled/movie",
        CHUNK + 3,
        46,
    ) else {
        return;
    };
    let t0 = Instant::now();
    let mut paused = false;
    let committed = loop {
        let (_, uncommitted) = tiers_of(&node, "toggled/movie").expect("info");
        if uncommitted.is_empty() {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            break false;
        }
        paused = !paused;
        let r = node.curl(&["-X", "PUT"], &format!("/migration?paused={paused}"));
        assert_eq!(r.status, 200, "PUT /migration: {}", text(&r.body));
        // Polled every 100 ms for the second between toggles: never quiet.
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            tiers_of(&node, "toggled/movie").expect("info");
        }
    };
    assert!(
        committed,
        "still uncommitted 15 s after the copy, paused and resumed every second; node stderr:\n{}",
        node.stderr()
    );
}

#[test]
fn writeback_copies_to_the_secondary_which_serves_without_the_primary() {
    // Finished copies committed after 200 ms instead of 5 s: the test waits for them.
    let extra = [
        "--migration-commit-interval",
        "200ms",
        "--migration-commit-settle",
        "1ms",
    ];
    let Some((mut node, t)) = start_tiered(
        "writeback_copies_to_the_secondary_which_serves_without_the_primary",
        &extra,
    ) else {
        return;
    };
    let data = content(41, 3 * CHUNK + 777);
    let src = node.file_of(&data);
    let want = sha256(&src);
    node.curl_put("wb/movie", &data);
    // Written back in the background: both tiers hold it.
    wait_for_tiers(&node, "wb/movie", &["primary", "secondary"]);
    let m = node.curl(&[], "/metrics");
    let metrics = text(&m.body);
    assert!(
        metric_sum(&metrics, "reel_write_backs_total") >= 1,
        "write-back counted: {metrics}"
    );

    // A node whose primary is empty serves the asset from the secondary copy.
    restart_on(&mut node, &t.p2);
    let r = node.curl(&[], "/assets/wb/movie");
    assert_eq!(r.status, 200, "GET from the secondary");
    let out = node.file_of(&r.body);
    assert_eq!(
        sha256(&out),
        want,
        "the secondary's bytes are the primary's"
    );
    wait_for_tiers(&node, "wb/movie", &["secondary"]);
    let r = node.curl(&["-r", "100-199"], "/assets/wb/movie");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[100..200], "a range from the secondary");
    let list = node.curl(&[], "/assets");
    assert!(
        text(&list.body).contains("wb/movie"),
        "listed: {}",
        text(&list.body)
    );

    // DELETE removes it from every tier, durably.
    let d = node.curl(&["-X", "DELETE"], "/assets/wb/movie");
    assert_eq!(d.status, 204, "delete");
    assert_eq!(node.curl(&[], "/assets/wb/movie").status, 404);
    restart_on(&mut node, &t.p1);
    // The first primary never saw the delete, so it still has the asset: that copy is the one
    // a restart finds. (Deletes reach every tier the node has open; a primary that was swapped
    // out keeps its own state.) Its write-back puts it on the secondary again.
    wait_for_tiers(&node, "wb/movie", &["primary", "secondary"]);
}

#[test]
fn the_clients_reads_are_timed_for_the_latency_guard() {
    for target in ["5%", "0"] {
        let name = format!(
            "the_clients_reads_are_timed_for_the_latency_guard_{}",
            target.trim_end_matches('%')
        );
        let Some((node, _)) = start_tiered(&name, &["--copy-latency-target", target]) else {
            return;
        };
        let data = content(47, 2 * CHUNK + 11);
        node.curl_put("guard/movie", &data);
        wait_for_tiers_as(&node, "guard/movie", &["primary", "secondary"], false);
        for _ in 0..3 {
            assert!(node.curl(&[], "/assets/guard/movie").body == data);
        }
        let metrics = text(&node.curl(&[], "/metrics").body);
        // The clients' reads are timed: 3 GETs of 3 chunks, at least one read each.
        assert!(
            metric_sum(&metrics, "reel_device_reads_done_total") >= 3,
            "{metrics}"
        );
        assert!(
            metric_sum(&metrics, "reel_device_read_nanoseconds_total") > 0,
            "{metrics}"
        );
        // A write-back with no one reading meanwhile needs no probe.
        assert_eq!(
            metric_sum(&metrics, "reel_migration_guard_probes_total"),
            0,
            "{metrics}"
        );
        let rate = metric_sum(&metrics, "reel_migration_guard_bytes_per_second");
        if target == "0" {
            assert_eq!(rate, 0, "no guard: the budget applies\n{metrics}");
        } else {
            let budget = metric_sum(&metrics, "reel_migration_copy_budget_bytes_per_second");
            assert!(
                rate >= budget / 64 && rate <= budget,
                "the guard's rate {rate} within [budget/64, budget {budget}]"
            );
        }
    }
}

#[test]
fn a_hot_asset_is_promoted_and_demoted_when_it_cools() {
    // Seconds instead of hours, so the test sees both transitions: a 2 s half-life, promote at
    // 10,000 views/h (about 3 views in a second), demote below 5,000 views/h, 2 s residency.
    let extra = [
        FAST_POLICY_FLAGS,
        &[
            "--min-residency",
            "2s",
            "--migration-commit-interval",
            "200ms",
            "--migration-commit-settle",
            "1ms",
        ],
    ]
    .concat();
    let Some((mut node, t)) =
        start_tiered("a_hot_asset_is_promoted_and_demoted_when_it_cools", &extra)
    else {
        return;
    };
    let data = content(51, 2 * CHUNK + 999);
    node.curl_put("hot/a", &data);
    let last_modified = |node: &NodeProc| {
        let r = node.curl(&[], "/assets/hot/a");
        assert_eq!(r.status, 200);
        r.header("last-modified")
            .expect("Last-Modified")
            .to_string()
    };
    let uploaded_lm = last_modified(&node);
    wait_for_tiers(&node, "hot/a", &["primary", "secondary"]);
    // Now on the secondary only: a node with an empty primary.
    restart_on(&mut node, &t.p2);
    wait_for_tiers(&node, "hot/a", &["secondary"]);

    // Hot: GETs until it is promoted; every response is the right bytes throughout.
    poll(Duration::from_secs(20), Duration::from_millis(50), || {
        let r = node.curl(&[], "/assets/hot/a");
        assert_eq!(r.status, 200);
        assert!(r.body == data, "wrong bytes while hot");
        let i = node.curl(&[], "/assets/hot/a/info");
        let info: serde_json::Value = serde_json::from_slice(&i.body).expect("info JSON");
        if info["tiers"] == serde_json::json!(["primary", "secondary"]) {
            return Ok(());
        }
        Err(format!(
            "never promoted: {info}; stderr:\n{}",
            node.stderr()
        ))
    });
    let metrics = text(&node.curl(&[], "/metrics").body);
    assert!(
        metric_sum(&metrics, "reel_promotions_total") >= 1,
        "promotion counted: {metrics}"
    );
    // The copies (write-back, then promotion) kept the upload's time.
    assert_eq!(
        last_modified(&node),
        uploaded_lm,
        "Last-Modified moved with the asset"
    );
    // Cold: no requests; the clean primary copy is dropped, the secondary still serves.
    wait_for_tiers(&node, "hot/a", &["secondary"]);
    let metrics = text(&node.curl(&[], "/metrics").body);
    assert!(
        metric_sum(&metrics, "reel_demotions_total") >= 1,
        "demotion counted: {metrics}"
    );
    let r = node.curl(&[], "/assets/hot/a");
    assert_eq!(r.status, 200);
    assert!(
        r.body == data,
        "served from the secondary after the demotion"
    );
}

#[test]
fn a_pinned_policy_promotes_persists_and_is_validated() {
    let extra = [
        "--migration-commit-interval",
        "200ms",
        "--migration-commit-settle",
        "1ms",
    ];
    let Some((mut node, t)) =
        start_tiered("a_pinned_policy_promotes_persists_and_is_validated", &extra)
    else {
        return;
    };
    let data = content(61, CHUNK + 5);
    node.curl_put("pin/a", &data);
    wait_for_tiers(&node, "pin/a", &["primary", "secondary"]);
    restart_on(&mut node, &t.p2);
    wait_for_tiers(&node, "pin/a", &["secondary"]);

    let put = |node: &NodeProc, body: &str, path: &str| {
        let f = node.file_of(body.as_bytes());
        node.curl(&["-T", path_str(&f)], path)
    };
    // Bad policies are refused with a reason, and change nothing.
    let r = put(&node, "{\"pin\": \"tape\"}", "/assets/pin/a/policy");
    assert_eq!(r.status, 400, "unknown tier: {}", text(&r.body));
    let r = put(
        &node,
        "{\"promote_per_h\": 1, \"demote_per_h\": 5}",
        "/assets/pin/a/policy",
    );
    assert_eq!(r.status, 400, "demote above promote: {}", text(&r.body));
    assert!(text(&r.body).contains("demote_per_h"), "{}", text(&r.body));
    let r = put(&node, "{\"pin\": \"primary\"}", "/assets/nope/policy");
    assert_eq!(r.status, 404, "policy of a missing asset");

    // Pinned to primary: promoted without any load.
    let r = put(&node, "{\"pin\": \"primary\"}", "/assets/pin/a/policy");
    assert_eq!(r.status, 200, "policy accepted: {}", text(&r.body));
    wait_for_tiers(&node, "pin/a", &["primary", "secondary"]);
    let g = node.curl(&[], "/assets/pin/a");
    assert!(
        g.status == 200 && g.body == data,
        "served after the promotion"
    );

    // The policy survives a restart and is not listed as an asset.
    restart_on(&mut node, &t.p2);
    let r = node.curl(&[], "/assets/pin/a/policy");
    assert_eq!(r.status, 200);
    let p: serde_json::Value = serde_json::from_slice(&r.body).expect("policy JSON");
    assert_eq!(p["pin"], "primary", "persisted: {p}");
    let list = text(&node.curl(&[], "/assets").body);
    assert!(
        !list.contains("/policy"),
        "internal records are not listed: {list}"
    );
    // Deleting the asset deletes its policy.
    assert_eq!(node.curl(&["-X", "DELETE"], "/assets/pin/a").status, 204);
    assert_eq!(node.curl(&[], "/assets/pin/a/policy").status, 404);
}

#[test]
fn migration_pauses_resumes_and_changes_budget_at_run_time() {
    let test = "migration_pauses_resumes_and_changes_budget_at_run_time";
    let Some((node, _)) = start_tiered(test, &[]) else {
        return;
    };
    let state = |r: &CurlResp| -> serde_json::Value {
        assert_eq!(r.status, 200, "{}: {}", r.described, text(&r.body));
        serde_json::from_slice(&r.body).expect("migration state is JSON")
    };
    let s = state(&node.curl(&[], "/migration"));
    assert_eq!(
        (&s["tiered"], &s["paused"], &s["copy_budget_bytes_per_s"]),
        (
            &serde_json::json!(true),
            &serde_json::json!(false),
            &serde_json::json!(256u64 << 20)
        )
    );
    // No half-life or thresholds configured: the policy tunes them, starting at 30 min with a
    // promote threshold of 1.5 views' worth of rate (one request does not promote).
    let p = &s["policy"];
    assert_eq!(p["half_life_tuned"], serde_json::json!(true), "{s}");
    assert_eq!(p["half_life_s"], serde_json::json!(1800.0), "{s}");
    let promote = p["promote_per_h"].as_f64().expect("a threshold");
    assert!((promote - 1.5 * 2f64.ln() * 2.0).abs() < 1e-9, "{s}");
    let metrics = text(&node.curl(&[], "/metrics").body);
    assert_eq!(metric_sum(&metrics, "reel_policy_half_life_seconds"), 1800);
    assert!(metrics.contains("reel_policy_shadow_byte_hit_ratio{half_life_seconds=\"28800\"}"));
    let s = state(&node.curl(&["-X", "PUT"], "/migration?paused=true&copy_budget=8M"));
    assert_eq!(
        (&s["paused"], &s["copy_budget_bytes_per_s"]),
        (&serde_json::json!(true), &serde_json::json!(8u64 << 20))
    );
    let metrics = text(&node.curl(&[], "/metrics").body);
    assert_eq!(
        metric_sum(&metrics, "reel_migration_paused"),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "reel_migration_copy_budget_bytes_per_second"),
        8 << 20
    );

    // Paused: a new upload stays on the primary alone (no write-back starts).
    let data = content(47, 2 * CHUNK + 11);
    node.curl_put("paused/movie", &data);
    std::thread::sleep(Duration::from_secs(3));
    let (tiers, _) = tiers_of(&node, "paused/movie").expect("info");
    assert_eq!(tiers, ["primary"], "no write-back while paused");
    assert_metrics(
        &node,
        &[
            ("reel_write_backs_total", 0),
            ("reel_migration_bytes_total", 0),
        ],
    );

    // Resumed: the write-back happens.
    let s = state(&node.curl(&["-X", "PUT"], "/migration?paused=false"));
    assert_eq!(s["paused"], serde_json::json!(false));
    wait_for_tiers_as(&node, "paused/movie", &["primary", "secondary"], false);
    assert_metrics(
        &node,
        &[("reel_write_backs_total", 1), ("reel_migration_paused", 0)],
    );

    // Bad requests: a one-line reason, nothing changed.
    for (args, path, want) in [
        (&["-X", "PUT"][..], "/migration", 400),
        (&["-X", "PUT"][..], "/migration?paused=maybe", 400),
        (&["-X", "PUT"][..], "/migration?copy_budget=lots", 400),
        (
            &["-X", "PUT", "-d", "paused=true"][..],
            "/migration?paused=true",
            400,
        ),
        (&[][..], "/migration?paused=true", 400),
        (&["-X", "DELETE"][..], "/migration", 405),
    ] {
        let r = node.curl(args, path);
        assert_eq!(r.status, want, "{}: {}", r.described, text(&r.body));
        assert!(
            !text(&r.body).trim().is_empty(),
            "{}: a reason",
            r.described
        );
    }
    let s = state(&node.curl(&[], "/migration"));
    assert_eq!(
        (&s["paused"], &s["copy_budget_bytes_per_s"]),
        (&serde_json::json!(false), &serde_json::json!(8u64 << 20))
    );
}

#[test]
fn deleting_only_the_primary_copy_keeps_the_secondary_and_refuses_a_dirty_one() {
    let extra = [
        "--migration-commit-interval",
        "200ms",
        "--migration-commit-settle",
        "1ms",
    ];
    let Some((node, _t)) = start_tiered(
        "deleting_only_the_primary_copy_keeps_the_secondary_and_refuses_a_dirty_one",
        &extra,
    ) else {
        return;
    };
    let data = content(43, 2 * CHUNK + 5);
    node.curl_put("dup/movie", &data);
    wait_for_tiers(&node, "dup/movie", &["primary", "secondary"]);
    // The manager's removal of a duplicate primary copy: the secondary copy stays and serves.
    let d = node.curl(&["-X", "DELETE"], "/assets/dup/movie?tier=primary");
    assert_eq!(d.status, 204, "{}", text(&d.body));
    wait_for_tiers(&node, "dup/movie", &["secondary"]);
    let r = node.curl(&[], "/assets/dup/movie");
    assert_eq!(r.status, 200);
    assert!(r.body == data, "served from the secondary");
    // Again: the primary holds none now.
    let d = node.curl(&["-X", "DELETE"], "/assets/dup/movie?tier=primary");
    assert_eq!(d.status, 404, "{}", text(&d.body));
    // A copy not yet written back is the only one: refused, and still served.
    let m = node.curl(&["-X", "PUT"], "/migration?paused=true");
    assert_eq!(m.status, 200, "{}", text(&m.body));
    let fresh = content(44, CHUNK);
    node.curl_put("dup/fresh", &fresh);
    let d = node.curl(&["-X", "DELETE"], "/assets/dup/fresh?tier=primary");
    assert_eq!(d.status, 409, "{}", text(&d.body));
    assert!(text(&d.body).contains("only one here"), "{}", text(&d.body));
    assert!(node.curl(&[], "/assets/dup/fresh").body == fresh);
}
