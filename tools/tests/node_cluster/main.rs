//! A real `reel node` in a cluster, over real sockets: its inter-server listener, put tickets,
//! and its side of the cluster protocol (`reel_http::cluster`).
//!
//! The manager here is a stub ([`stub::Stub`]): a std `TcpListener` thread that parses each
//! request with `reel_http`, records it, and answers as the protocol says (or as a test tells
//! it to misbehave). What is under test is the node; the stub only records and answers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reel_http::auth::ClusterToken;
use reel_http::cluster::{Ticket, TicketKind, Tombstone};
use reel_testkit::content::content;
use reel_testkit::metrics::Metrics;
use reel_testkit::node::{NodeArgs, NodeProc};
use reel_testkit::{poll, Reel};
use serde_json::Value;

mod stub;
use stub::Stub;

const REEL: Reel = reel_testkit::reel!();

const TOKEN: &str = "c1uster-T0ken-for-the-node-cluster-test";

/// How long anything the node should do by itself may take (reports come every 100 ms).
const SOON: Duration = Duration::from_secs(10);

fn token() -> ClusterToken {
    ClusterToken::from_bytes(TOKEN.as_bytes(), "test").expect("token")
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn now_unix_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A formatted volume and a token file in a fresh directory.
struct Setup {
    dir: tempfile::TempDir,
    vol: PathBuf,
    token_file: String,
}

impl Setup {
    /// `None` (after saying why) where io_uring is unavailable.
    fn new(test: &str) -> Option<Setup> {
        if !REEL.io_uring_or_skip(test) {
            return None;
        }
        let dir = REEL.tempdir("reel-cluster-");
        let vol = dir.path().join("vol");
        REEL.format(&vol, "256M");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token file");
        let token_file = token_file.to_str().expect("utf-8 path").to_string();
        Some(Setup {
            dir,
            vol,
            token_file,
        })
    }

    /// `reel node` flags: small, with the token and an inter-server listener.
    fn args(&self) -> NodeArgs {
        NodeArgs::new(&self.vol).shards(1).flags(&[
            "--ingest-workers",
            "2",
            "--read-bufs-per-shard",
            "16",
            "--cluster-token-file",
            &self.token_file,
            "--peer-listen",
            "127.0.0.1:0",
        ])
    }

    /// [`Setup::args`] in the cluster of `stub` as node `name`.
    fn clustered(&self, stub: &Stub, name: &str) -> NodeArgs {
        self.args()
            .flags(&["--manager", &stub.url(), "--node-name", name])
    }

    fn spawn(&self, args: NodeArgs) -> NodeProc {
        NodeProc::spawn(&REEL, self.dir.path(), args)
    }
}

/// `PUT /assets/{id}` with the token on the access listener: the response.
fn put(node: &NodeProc, id: &str, body: &[u8]) -> reel_http::Response {
    let auth = bearer();
    node.request(
        "PUT",
        &format!("/assets/{id}"),
        &[("Authorization", &auth)],
        Some(body),
    )
}

/// [`put`] that must answer 201: the etag.
fn put_ok(node: &NodeProc, id: &str, body: &[u8]) -> String {
    let r = put(node, id, body);
    assert_eq!(r.status(), 201, "PUT {id}: {}", r.text());
    r.header("etag").expect("an etag").to_string()
}

fn request_at(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> reel_http::Response {
    reel_testkit::http::request(addr, method, target, headers, None)
        .unwrap_or_else(|e| panic!("{method} {target} at {addr}: {e}"))
}

fn metric(node: &NodeProc, name: &str) -> u64 {
    node.metrics().sum(name)
}

fn error_count(m: &Metrics, kind: &str) -> u64 {
    m.sum_where("reel_errors_total", &format!("kind=\"{kind}\""))
}

fn ids_of(holdings: &Value) -> Vec<String> {
    let mut v: Vec<String> = holdings
        .as_array()
        .unwrap_or_else(|| panic!("an array: {holdings}"))
        .iter()
        .map(|h| h["id"].as_str().unwrap_or_default().to_string())
        .collect();
    v.sort();
    v
}

fn strings(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_default().to_string())
        .collect();
    out.sort();
    out
}

/// Every request on the inter-server listener needs the cluster token (401 without, 403 with
/// a wrong one, counted as unauthorized); with it the listener serves the access listener's
/// routes, assets byte-exact. The access listener's reads stay anonymous.
#[test]
fn the_peer_listener_asks_the_token_of_every_request_and_serves_the_same_routes() {
    let test = "the_peer_listener_asks_the_token_of_every_request_and_serves_the_same_routes";
    let Some(s) = Setup::new(test) else { return };
    let node = s.spawn(s.args());
    let peer = node.peer_addr();
    assert_ne!(peer, node.addr());
    let body = content(7, (1 << 20) + 12345);
    put_ok(&node, "movies/a.bin", &body);
    let auth = bearer();
    let wrong = format!("Bearer {TOKEN}x");
    for target in ["/assets/movies/a.bin", "/healthz", "/metrics", "/assets"] {
        let r = request_at(peer, "GET", target, &[]);
        assert_eq!(
            r.status(),
            401,
            "GET {target} without the token: {}",
            r.text()
        );
        assert!(r.text().contains("Authorization: Bearer"), "{}", r.text());
        assert_eq!(r.text().lines().count(), 1, "one line: {:?}", r.text());
        let r = request_at(peer, "GET", target, &[("Authorization", &wrong)]);
        assert_eq!(r.status(), 403, "GET {target} with a wrong token");
        assert!(!r.text().contains(TOKEN), "the reason echoes no token");
    }
    let m = node.metrics();
    assert_eq!(error_count(&m, "unauthorized"), 8, "{}", m.0);
    // With the token: the same routes, the asset byte-exact (whole and a range).
    let with = [("Authorization", auth.as_str())];
    let r = request_at(peer, "GET", "/assets/movies/a.bin", &with);
    assert_eq!(r.status(), 200, "{}", r.text());
    assert!(r.body == body, "the peer listener's bytes differ");
    let range = [
        ("Authorization", auth.as_str()),
        ("Range", "bytes=1000-1999"),
    ];
    let r = request_at(peer, "GET", "/assets/movies/a.bin", &range);
    assert_eq!(r.status(), 206);
    assert!(r.body == body[1000..2000], "the range differs");
    let r = request_at(peer, "HEAD", "/assets/movies/a.bin", &with);
    assert_eq!(
        (r.status(), r.head.content_length()),
        (200, Some(body.len() as u64))
    );
    assert_eq!(request_at(peer, "GET", "/healthz", &with).status(), 200);
    let r = request_at(peer, "GET", "/assets/movies/a.bin/info", &with);
    assert_eq!(r.status(), 200);
    assert!(r.text().contains("\"movies/a.bin\""), "{}", r.text());
    // The access listener: reads without a token, as before.
    let r = node.get("/assets/movies/a.bin");
    assert_eq!(r.status(), 200);
    assert!(r.body == body);
    // A delete on the peer listener with the token deletes locally.
    let r = request_at(peer, "DELETE", "/assets/movies/a.bin", &with);
    assert_eq!(r.status(), 204, "{}", r.text());
    assert_eq!(node.get("/assets/movies/a.bin").status(), 404);
    node.assert_no_panic(test);
    assert!(!node.stderr().contains(TOKEN), "the token reached the log");
}

/// A put ticket for this asset and node lets a PUT through without the token; a forged,
/// expired, other node's, other asset's or relay ticket is a 403 naming why, and stores nothing.
#[test]
fn a_put_ticket_admits_one_upload_and_a_bad_one_is_refused_naming_why() {
    let test = "a_put_ticket_admits_one_upload_and_a_bad_one_is_refused_naming_why";
    let Some(s) = Setup::new(test) else { return };
    let stub = Stub::start(TOKEN);
    let node = s.spawn(s.clustered(&stub, "n1"));
    let t = token();
    let ticket = |kind, node: &str, expires: u64| Ticket {
        kind,
        node: node.to_string(),
        expires_unix_s: expires,
        source: None,
        source_node: None,
        etag: None,
    };
    let later = now_unix_s() + 600;
    let body = content(11, 70_000);
    let put_with = |id: &str, enc: &str| {
        node.request(
            "PUT",
            &format!("/assets/{id}?ticket={enc}"),
            &[],
            Some(&body),
        )
    };
    let good = ticket(TicketKind::Put, "n1", later).encode(&t, "up/a");
    let r = put_with("up/a", &good);
    assert_eq!(r.status(), 201, "a valid put ticket: {}", r.text());
    assert!(node.get("/assets/up/a").body == body);
    let other_token = ClusterToken::from_bytes(b"another-cluster-token-0123", "t").expect("t");
    let refusals = [
        (
            "forged",
            "up/b",
            ticket(TicketKind::Put, "n1", later).encode(&other_token, "up/b"),
            "signature",
        ),
        (
            "for another asset",
            "up/b",
            ticket(TicketKind::Put, "n1", later).encode(&t, "up/a"),
            "signature",
        ),
        (
            "expired",
            "up/b",
            ticket(TicketKind::Put, "n1", now_unix_s() - 5).encode(&t, "up/b"),
            "expired",
        ),
        (
            "for another node",
            "up/b",
            ticket(TicketKind::Put, "n2", later).encode(&t, "up/b"),
            "for node n2",
        ),
        (
            "a relay ticket",
            "up/b",
            ticket(TicketKind::Relay, "n1", later).encode(&t, "up/b"),
            "relay ticket",
        ),
        ("malformed", "up/b", "zz.zz".to_string(), "malformed"),
    ];
    for (what, id, enc, why) in refusals {
        let r = put_with(id, &enc);
        assert_eq!(r.status(), 403, "{what}: {}", r.text());
        assert!(
            r.text().contains(why),
            "{what}: {:?} names no {why:?}",
            r.text()
        );
        assert_eq!(r.text().lines().count(), 1, "{what}: one line");
        assert_eq!(node.get(&format!("/assets/{id}")).status(), 404, "{what}");
    }
    // Without a ticket, the token is still asked.
    let r = node.request("PUT", "/assets/up/c", &[], Some(&body));
    assert_eq!(r.status(), 401);
    // The ticket never reaches the log.
    let err = node.stderr();
    assert!(
        !err.contains(&good) && !err.contains(TOKEN),
        "a secret reached the log"
    );
    node.assert_no_panic(test);
}

/// Registration carries the name, the advertised addresses and the tier fills; the first
/// report is full and lists the holdings; later ones carry only what changed (an upload, a
/// delete), and nothing while nothing changes; the manager heard of the upload before its 201.
/// A 409 makes the node register again and send a full report.
#[test]
fn the_node_registers_reports_in_full_then_deltas_and_registers_again_on_409() {
    let test = "the_node_registers_reports_in_full_then_deltas_and_registers_again_on_409";
    let Some(s) = Setup::new(test) else { return };
    // Two assets stored before the node joins.
    let mut node = s.spawn(s.args());
    let etag_a = put_ok(&node, "lib/a", &content(1, 5000));
    put_ok(&node, "lib/b", &content(2, 6000));
    let stub = Stub::start(TOKEN);
    node.args = s.clustered(&stub, "edge-1");
    node.restart();
    let reg = stub.wait_for("a registration", SOON, |r| r.path == "/v1/register");
    assert_eq!(reg.body["node"], "edge-1");
    assert_eq!(reg.body["access"], node.addr().to_string());
    assert_eq!(reg.body["peer"], node.peer_addr().to_string());
    let tiers = reg.body["tiers"].as_array().expect("tiers");
    assert_eq!(tiers.len(), 1, "{}", reg.body);
    assert_eq!(tiers[0]["tier"], "primary");
    assert!(tiers[0]["capacity_bytes"].as_u64().unwrap_or(0) > 0);
    assert!(tiers[0]["used_bytes"].as_u64().unwrap_or(0) >= 11_000);
    assert_eq!(reg.auth.as_deref(), Some(bearer().as_str()));
    let first = stub.wait_for("a report", SOON, |r| r.path == "/v1/report");
    assert_eq!(first.body["full"], true, "{}", first.body);
    assert_eq!(first.body["seq"], 1);
    assert_eq!(first.body["node"], "edge-1");
    assert_eq!(ids_of(&first.body["upsert"]), vec!["lib/a", "lib/b"]);
    let a = &first.body["upsert"][0];
    assert_eq!(
        (a["etag"].as_str(), a["size"].as_u64()),
        (Some(etag_a.as_str()), Some(5000))
    );
    assert_eq!(strings(&a["tiers"]), vec!["primary"]);
    assert!(first.body["load"].is_object() && first.body["tiers"].is_array());
    // An upload: the manager hears of it before the 201, then a delta upserts it.
    let etag_c = put_ok(&node, "lib/c", &content(3, 7000));
    let published = stub.find(|r| r.path == "/v1/published").expect(
        "the manager had no /v1/published when the 201 arrived: the node must confirm first",
    );
    assert_eq!(published.body["id"], "lib/c");
    assert_eq!(published.body["etag"], etag_c.as_str());
    assert_eq!(published.body["size"], 7000);
    assert_eq!(published.body["tier"], "primary");
    assert_eq!(published.body["node"], "edge-1");
    let up = stub.wait_for("a delta with lib/c", SOON, |r| {
        r.path == "/v1/report" && ids_of(&r.body["upsert"]) == ["lib/c"]
    });
    assert_eq!(up.body["full"], false);
    assert_eq!(up.body["remove"], serde_json::json!([]));
    // A delete: a delta removes it.
    let auth = bearer();
    let r = node.request("DELETE", "/assets/lib/a", &[("Authorization", &auth)], None);
    assert_eq!(r.status(), 204, "{}", r.text());
    let rm = stub.wait_for("a delta removing lib/a", SOON, |r| {
        r.path == "/v1/report" && strings(&r.body["remove"]) == ["lib/a"]
    });
    assert_eq!(rm.body["upsert"], serde_json::json!([]), "{}", rm.body);
    // Nothing changes: the next reports carry no holdings.
    let after = rm.seen;
    let idle = stub.wait_for("two more reports", SOON, |r| {
        r.path == "/v1/report" && r.seen > after + 1
    });
    for r in stub.all(|r| r.path == "/v1/report" && r.seen > after && r.seen <= idle.seen) {
        assert_eq!(r.body["upsert"], serde_json::json!([]), "idle: {}", r.body);
        assert_eq!(r.body["remove"], serde_json::json!([]), "idle: {}", r.body);
    }
    // Sequence numbers count up within the session.
    let seqs: Vec<u64> = stub
        .all(|r| r.path == "/v1/report")
        .iter()
        .map(|r| r.body["seq"].as_u64().unwrap_or(0))
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // Requests: a report carries the asset's rate (the rate thread folds every second).
    for _ in 0..3 {
        assert_eq!(node.get("/assets/lib/b").status(), 200);
    }
    let rated = stub.wait_for("a report with lib/b's rate", SOON, |r| {
        r.path == "/v1/report"
            && r.body["rates"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["id"] == "lib/b"))
    });
    let rates = rated.body["rates"].as_array().expect("rates");
    assert_eq!(rates.len(), 1, "only the asset requested: {}", rated.body);
    assert!(
        rates[0]["views_per_h"].as_f64().unwrap_or(0.0) > 0.0,
        "{}",
        rated.body
    );
    assert!(rated.body["load"]["tx_bytes_per_s"].as_f64().is_some());
    assert_eq!(rated.body["failed_sources"], serde_json::json!([]));
    // A 409: register again, then a full report of what is held now.
    stub.set(|b| b.conflict_next_report = true);
    let regs = stub.all(|r| r.path == "/v1/register").len();
    poll(SOON, Duration::from_millis(50), || {
        let n = stub.all(|r| r.path == "/v1/register").len();
        (n > regs).then_some(()).ok_or(format!("{n} registrations"))
    });
    let reg2 = stub
        .all(|r| r.path == "/v1/register")
        .pop()
        .expect("a registration");
    let full = stub.wait_for("a full report after the 409", SOON, |r| {
        r.path == "/v1/report" && r.seen > reg2.seen
    });
    assert_eq!(full.body["full"], true, "{}", full.body);
    assert_eq!(full.body["seq"], 1);
    assert_eq!(ids_of(&full.body["upsert"]), vec!["lib/b", "lib/c"]);
    assert_ne!(full.body["session"], first.body["session"]);
    let m = node.metrics();
    assert!(m.sum("reel_cluster_registrations_total") >= 2, "{}", m.0);
    assert!(m.sum("reel_cluster_reports_total") >= 4, "{}", m.0);
    assert_eq!(m.sum("reel_cluster_manager_up"), 1);
    node.assert_no_panic(test);
    assert!(!node.stderr().contains(TOKEN), "the token reached the log");
}

/// A manager that does not confirm an upload makes its PUT a 503 naming why: the client was
/// not acknowledged.
#[test]
fn an_upload_the_manager_does_not_confirm_is_answered_503() {
    let test = "an_upload_the_manager_does_not_confirm_is_answered_503";
    let Some(s) = Setup::new(test) else { return };
    let stub = Stub::start(TOKEN);
    let node = s.spawn(s.clustered(&stub, "n1"));
    stub.wait_for("a report", SOON, |r| r.path == "/v1/report");
    stub.set(|b| b.refuse_published = true);
    let r = put(&node, "x/refused", &content(5, 3000));
    assert_eq!(r.status(), 503, "{}", r.text());
    assert!(
        r.text()
            .contains("the cluster manager did not confirm the upload; retry"),
        "{}",
        r.text()
    );
    assert!(stub.find(|r| r.path == "/v1/published").is_some());
    // A manager that does not answer at all: 503 too, within a few seconds.
    stub.set(|b| {
        b.refuse_published = false;
        b.silent_published = true;
    });
    let started = std::time::Instant::now();
    let r = put(&node, "x/unanswered", &content(6, 3000));
    assert_eq!(r.status(), 503, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(error_count(&node.metrics(), "manager_unconfirmed"), 2);
    // Confirmed again: 201.
    stub.set(|b| b.silent_published = false);
    put_ok(&node, "x/confirmed", &content(7, 3000));
    node.assert_no_panic(test);
}

/// Tombstones in the registration answer delete the stale copies before the first report
/// (which therefore does not list them), through the delete path: a restart does not bring
/// them back. A tombstone that keeps the current etag keeps the copy.
#[test]
fn tombstones_at_registration_delete_stale_copies_before_the_first_report_for_good() {
    let test = "tombstones_at_registration_delete_stale_copies_before_the_first_report_for_good";
    let Some(s) = Setup::new(test) else { return };
    let mut node = s.spawn(s.args());
    put_ok(&node, "t/deleted", &content(1, 4000));
    put_ok(&node, "t/overwritten", &content(2, 4000));
    let etag_kept = put_ok(&node, "t/kept", &content(3, 4000));
    put_ok(&node, "t/other", &content(4, 4000));
    let stub = Stub::start(TOKEN);
    stub.set(|b| {
        b.register_tombstones = vec![
            Tombstone {
                id: "t/deleted".into(),
                keep: None,
                rev: 10,
            },
            Tombstone {
                id: "t/overwritten".into(),
                keep: Some("\"00000000-1\"".into()),
                rev: 11,
            },
            Tombstone {
                id: "t/kept".into(),
                keep: Some(etag_kept.clone()),
                rev: 12,
            },
        ]
    });
    node.args = s.clustered(&stub, "n1");
    node.restart();
    let first = stub.wait_for("a report", SOON, |r| r.path == "/v1/report");
    assert_eq!(first.body["full"], true);
    assert_eq!(ids_of(&first.body["upsert"]), vec!["t/kept", "t/other"]);
    for id in ["t/deleted", "t/overwritten"] {
        assert_eq!(node.get(&format!("/assets/{id}")).status(), 404, "{id}");
    }
    assert_eq!(node.get("/assets/t/kept").status(), 200);
    assert_eq!(metric(&node, "reel_cluster_tombstones_applied_total"), 2);
    // kill -9 and back, with a manager that sends no tombstones: still deleted.
    stub.set(|b| b.register_tombstones.clear());
    node.restart();
    for id in ["t/deleted", "t/overwritten"] {
        assert_eq!(
            node.get(&format!("/assets/{id}")).status(),
            404,
            "{id} came back"
        );
    }
    assert_eq!(node.get("/assets/t/other").status(), 200);
    node.assert_no_panic(test);
}

/// Tombstones in a report's answer delete the copies they kill.
#[test]
fn tombstones_in_a_report_answer_delete_the_copy() {
    let test = "tombstones_in_a_report_answer_delete_the_copy";
    let Some(s) = Setup::new(test) else { return };
    let stub = Stub::start(TOKEN);
    let node = s.spawn(s.clustered(&stub, "n1"));
    put_ok(&node, "r/a", &content(1, 4000));
    stub.set(|b| {
        b.ack_tombstones = vec![Tombstone {
            id: "r/a".into(),
            keep: None,
            rev: 3,
        }]
    });
    poll(SOON, Duration::from_millis(50), || {
        let st = node.get("/assets/r/a").status();
        (st == 404)
            .then_some(())
            .ok_or(format!("r/a still answers {st}"))
    });
    stub.wait_for("a delta removing r/a", SOON, |r| {
        r.path == "/v1/report" && strings(&r.body["remove"]) == ["r/a"]
    });
    node.assert_no_panic(test);
}

/// On a node with a secondary, a write-back changes the asset's tiers: a delta says so (the
/// migration scheduler notes the change as uploads and deletes do).
#[test]
fn a_write_back_is_reported_as_a_change_of_tiers() {
    let test = "a_write_back_is_reported_as_a_change_of_tiers";
    let Some(s) = Setup::new(test) else { return };
    let secondary = s.dir.path().join("secondary");
    REEL.format(&secondary, "256M");
    let stub = Stub::start(TOKEN);
    let node = s.spawn(s.clustered(&stub, "lib-1").secondary(&secondary));
    let etag = put_ok(&node, "w/a", &content(9, 300_000));
    let both = stub.wait_for("a delta with w/a on both tiers", SOON, |r| {
        r.path == "/v1/report"
            && r.body["upsert"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|h| h["id"] == "w/a" && strings(&h["tiers"]) == ["primary", "secondary"])
            })
    });
    assert_eq!(both.body["full"], false, "{}", both.body);
    let h = &both.body["upsert"][0];
    assert_eq!(h["etag"], etag.as_str());
    let tiers = strings(&Value::Array(
        both.body["tiers"]
            .as_array()
            .expect("tiers")
            .iter()
            .map(|t| t["tier"].clone())
            .collect(),
    ));
    assert_eq!(tiers, ["primary", "secondary"]);
    node.assert_no_panic(test);
}

/// A manager that goes away and comes back (forgetting every session) hears from the node
/// again: the reports fail meanwhile (the manager is down in the metrics), then the unknown
/// session's 409 makes the node register and send a full report.
#[test]
fn a_restarted_manager_gets_a_new_registration_and_a_full_report() {
    let test = "a_restarted_manager_gets_a_new_registration_and_a_full_report";
    let Some(s) = Setup::new(test) else { return };
    let stub = Stub::start(TOKEN);
    let addr = stub.addr();
    let node = s.spawn(s.clustered(&stub, "n1"));
    put_ok(&node, "m/a", &content(1, 2000));
    stub.wait_for("a report", SOON, |r| r.path == "/v1/report");
    drop(stub);
    poll(SOON, Duration::from_millis(50), || {
        let m = node.metrics();
        let (up, errors) = (
            m.sum("reel_cluster_manager_up"),
            m.sum("reel_cluster_report_errors_total"),
        );
        (up == 0 && errors > 0)
            .then_some(())
            .ok_or(format!("manager_up {up}, report errors {errors}"))
    });
    poll(SOON, Duration::from_millis(50), || {
        // The old listener's thread closes it within a few milliseconds of the drop.
        std::net::TcpListener::bind(addr)
            .map(drop)
            .map_err(|e| format!("rebind {addr}: {e}"))
    });
    let stub = Stub::start_at(TOKEN, addr);
    let reg = stub.wait_for("a registration with the restarted manager", SOON, |r| {
        r.path == "/v1/register"
    });
    let first = stub.wait_for("a report of the new session", SOON, |r| {
        r.path == "/v1/report" && r.seen > reg.seen
    });
    assert_eq!(first.body["full"], true, "{}", first.body);
    assert_eq!(ids_of(&first.body["upsert"]), vec!["m/a"]);
    // The old session's report came first and was refused.
    let old = stub
        .find(|r| r.path == "/v1/report")
        .expect("a report of the old session");
    assert!(old.seen < reg.seen && old.body["session"] != first.body["session"]);
    poll(SOON, Duration::from_millis(50), || {
        let up = node.metrics().sum("reel_cluster_manager_up");
        (up == 1).then_some(()).ok_or(format!("manager_up {up}"))
    });
    node.assert_no_panic(test);
}

/// A standby's 503 with `Reel-Leader` moves the node to the leader; a manager that cannot be
/// reached moves it to the next of `--manager`.
#[test]
fn the_node_follows_the_leader_and_moves_past_an_unreachable_manager() {
    let test = "the_node_follows_the_leader_and_moves_past_an_unreachable_manager";
    let Some(s) = Setup::new(test) else { return };
    let leader = Stub::start(TOKEN);
    let standby = Stub::start(TOKEN);
    standby.set(|b| b.not_leader = Some(leader.url()));
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let managers = format!("http://{closed},{}", standby.url());
    let node = s.spawn(
        s.args()
            .flags(&["--manager", &managers, "--node-name", "n1"]),
    );
    let r = leader.wait_for("a report at the leader", SOON, |r| r.path == "/v1/report");
    assert_eq!(r.body["full"], true);
    assert!(standby.find(|r| r.path == "/v1/register").is_some());
    // Uploads are confirmed with the leader.
    put_ok(&node, "l/a", &content(1, 1000));
    assert!(leader.find(|r| r.path == "/v1/published").is_some());
    node.assert_no_panic(test);
}

/// The cluster flags are checked before anything starts, each error naming the fix.
#[test]
fn cluster_flags_without_what_they_need_are_refused_naming_the_fix() {
    let test = "cluster_flags_without_what_they_need_are_refused_naming_the_fix";
    let Some(s) = Setup::new(test) else { return };
    let vol = s.vol.to_str().expect("utf-8");
    let base = ["node", "--primary", vol, "--listen", "127.0.0.1:0"];
    let run = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let e = REEL.fails(&args);
        assert!(!e.contains("panicked") && e.starts_with("error: "), "{e}");
        e
    };
    let mgr = ["--manager", "http://127.0.0.1:7100"];
    let e = run(&[&mgr[..], &["--peer-listen", "127.0.0.1:0"]].concat());
    assert!(e.contains("--manager needs --cluster-token-file"), "{e}");
    let e = run(&[&mgr[..], &["--cluster-token-file", &s.token_file]].concat());
    assert!(e.contains("--manager needs --peer-listen"), "{e}");
    let e = run(&["--peer-listen", "127.0.0.1:0"]);
    assert!(
        e.contains("--peer-listen needs --cluster-token-file"),
        "{e}"
    );
    let e = run(&["--manager", "10.0.0.1:7100"]);
    assert!(e.contains("http://HOST:PORT"), "{e}");
    let e = run(&["--node-name", "a.b"]);
    assert!(e.contains("node name"), "{e}");
    let e = REEL.fails(&[
        "node",
        "--primary",
        vol,
        "--listen",
        "0.0.0.0:0",
        "--manager",
        "http://127.0.0.1:7100",
        "--cluster-token-file",
        &s.token_file,
        "--peer-listen",
        "127.0.0.1:0",
        "--node-name",
        "n1",
    ]);
    assert!(e.contains("--advertise ADDR"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}
