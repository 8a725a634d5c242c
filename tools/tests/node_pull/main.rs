//! Node-to-node copies pulled by the receiving node (`PUT /v1/pull`), end to end: two
//! `reel node` processes on loopback with the same cluster token and no manager (a node with a
//! token and `--peer-listen` takes pull orders on its inter-server listener), A holding assets
//! and B ordered to pull them from A's inter-server listener, as the manager will order it.
//!
//! What is under test is B: the copy is byte-exact and lands on its primary, the order is
//! idempotent and refused when the version is held, only token holders on the inter-server
//! listener may order, and a pull that fails in any way (a corrupted chunk from a stub holder,
//! a cancel, the holder killed, B itself killed with `kill -9`) leaves nothing visible and no
//! space taken (`reel inspect --json` of B's volume after the kill). Pulls that must still be
//! running when something happens to them are paced by B's copy budget (`--copy-budget`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reel_http::client::Response;
use reel_http::cluster::{ChunkList, PullOrder};
use reel_testkit::content::content;
use reel_testkit::node::{NodeArgs, NodeProc};
use reel_testkit::{http, output_ok, path_str, poll, Reel};
use sha2::{Digest, Sha256};

const REEL: Reel = reel_testkit::reel!();
const TOKEN: &str = "pull-test-token-0123456789abcdef";
const MIB: usize = 1 << 20;
const CHUNK: usize = MIB;

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A node with the token, an inter-server listener and a 256 MiB primary named `vol-{name}` in
/// `dir`; `extra` flags after those.
fn node(dir: &Path, name: &str, extra: &[&str]) -> NodeProc {
    let vol = dir.join(format!("vol-{name}"));
    REEL.format(&vol, "256M");
    let tok = dir.join("token");
    let mut flags = vec![
        "--cluster-token-file",
        path_str(&tok),
        "--peer-listen",
        "127.0.0.1:0",
        "--read-bufs-per-shard",
        "8",
        // Copies run at the budget (no latency guard ramping up from an eighth of it).
        "--copy-latency-target",
        "0",
    ];
    flags.extend_from_slice(extra);
    NodeProc::spawn(&REEL, dir, NodeArgs::new(&vol).shards(1).flags(&flags))
}

/// A temp dir with the token file, or `None` (having said why) where io_uring is unavailable.
fn setup(test: &str) -> Option<tempfile::TempDir> {
    if !REEL.io_uring_or_skip(test) {
        return None;
    }
    let dir = REEL.tempdir("reel-pull-");
    std::fs::write(dir.path().join("token"), TOKEN).expect("token file");
    Some(dir)
}

/// PUTs `body` as `id` on `n` (with the token); its etag.
fn put(n: &NodeProc, id: &str, body: &[u8]) -> String {
    let auth = bearer();
    let r = n.request(
        "PUT",
        &format!("/assets/{id}"),
        &[("Authorization", &auth)],
        Some(body),
    );
    assert_eq!(r.status(), 201, "PUT {id}: {}", r.text());
    r.header("etag").expect("etag").to_string()
}

fn order(id: &str, etag: &str, size: usize, source: SocketAddr) -> PullOrder {
    PullOrder {
        id: id.into(),
        etag: etag.into(),
        size: size as u64,
        source,
        source_node: "na".into(),
        tier: "primary".into(),
    }
}

/// A request on `n`'s inter-server listener with the token.
fn peer(n: &NodeProc, method: &str, target: &str, body: Option<&[u8]>) -> Response {
    let auth = bearer();
    http::request(
        n.peer_addr(),
        method,
        target,
        &[("Authorization", &auth)],
        body,
    )
    .unwrap_or_else(|e| panic!("{method} {target}: {e}; stderr:\n{}", n.stderr()))
}

fn send_order(b: &NodeProc, o: &PullOrder) -> Response {
    let body = serde_json::to_vec(o).expect("order JSON");
    peer(b, "PUT", "/v1/pull", Some(&body))
}

/// B's pulls as `GET /v1/pulls` lists them.
fn pulls(b: &NodeProc) -> Vec<serde_json::Value> {
    let r = peer(b, "GET", "/v1/pulls", None);
    assert_eq!(r.status(), 200, "GET /v1/pulls: {}", r.text());
    serde_json::from_slice(&r.body).expect("pulls JSON")
}

/// The last pull of `id` on B.
fn pull_of(b: &NodeProc, id: &str) -> Option<serde_json::Value> {
    pulls(b).into_iter().rev().find(|p| p["id"] == id)
}

/// Waits until the pull of `id` is in one of `states`; returns it.
fn wait_state(b: &NodeProc, id: &str, states: &[&str]) -> serde_json::Value {
    poll(Duration::from_secs(60), Duration::from_millis(20), || {
        let p = pull_of(b, id).ok_or("no such pull")?;
        let st = p["state"].as_str().unwrap_or_default();
        if states.contains(&st) {
            Ok(p)
        } else {
            Err(format!("the pull of {id} is {p}; stderr:\n{}", b.stderr()))
        }
    })
}

/// Waits until the pull of `id` has copied some bytes and is still running.
fn wait_running_with_bytes(b: &NodeProc, id: &str) -> u64 {
    poll(Duration::from_secs(30), Duration::from_millis(10), || {
        let p = pull_of(b, id).ok_or("no such pull")?;
        let done = p["bytes_done"].as_u64().unwrap_or(0);
        match p["state"].as_str() {
            Some("running") if done > 0 => Ok(done),
            Some("running" | "queued") => Err(format!("not yet: {p}")),
            _ => panic!("the pull ended before it could be interrupted: {p}"),
        }
    })
}

/// B does not serve `id` and lists no asset.
fn assert_nothing_visible(b: &NodeProc, id: &str, when: &str) {
    let r = b.get(&format!("/assets/{id}"));
    assert_eq!(
        r.status(),
        404,
        "{when}: {id} is visible on B: {}",
        r.text()
    );
    let list: serde_json::Value = serde_json::from_slice(&b.get("/assets").body).expect("list");
    assert_eq!(list["total"], 0, "{when}: B lists {list}");
}

/// `reel inspect --json` of a stopped node's volume: the space adds up, nothing is reserved,
/// and the used bytes are exactly the assets' extents (no leaked extent). Returns the ids.
fn inspect(vol: &Path, when: &str) -> Vec<String> {
    let out = output_ok(
        Command::new(REEL.bin).args(["inspect", path_str(vol), "--json"]),
        &format!("{when}: reel inspect"),
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    let st = &v["stats"];
    let n = |k: &str| {
        st[k]
            .as_u64()
            .unwrap_or_else(|| panic!("inspect has no {k}: {v}"))
    };
    assert_eq!(
        n("used_bytes") + n("free_bytes") + n("reserved_bytes") + n("reclaim_pending_bytes"),
        n("capacity_bytes"),
        "{when}: space does not add up: {st}"
    );
    assert_eq!(n("reserved_bytes"), 0, "{when}: reserved after open");
    let block = v["superblock"]["block_size"].as_u64().expect("block size");
    let assets = v["assets"].as_array().expect("assets");
    let mut used = 0;
    for a in assets {
        for e in a["extents"].as_array().expect("extents") {
            used += e[1].as_u64().expect("extent length") * block;
        }
    }
    assert_eq!(used, n("used_bytes"), "{when}: a leaked or lost extent");
    assets
        .iter()
        .map(|a| a["id"].as_str().expect("id").to_string())
        .collect()
}

#[test]
fn pulls_a_multi_chunk_asset_byte_exact_idempotently_then_says_held() {
    let Some(dir) = setup("pulls_a_multi_chunk_asset_byte_exact_idempotently_then_says_held")
    else {
        return;
    };
    let a = node(dir.path(), "a", &[]);
    // Paced, so the second order finds the first still queued or running.
    let b = node(dir.path(), "b", &["--copy-budget", "8M"]);
    let id = "films/pulled.bin";
    let size = 12 * MIB + 4321;
    let body = content(7, size);
    let etag = put(&a, id, &body);
    let o = order(id, &etag, size, a.peer_addr());
    let r = send_order(&b, &o);
    assert_eq!(r.status(), 202, "the order: {}", r.text());
    let st: serde_json::Value = serde_json::from_slice(&r.body).expect("status JSON");
    assert_eq!(st["state"], "queued", "{st}");
    let again = send_order(&b, &o);
    assert_eq!(
        again.status(),
        202,
        "the same order again: {}",
        again.text()
    );
    let st2: serde_json::Value = serde_json::from_slice(&again.body).expect("status JSON");
    assert!(
        matches!(st2["state"].as_str(), Some("queued" | "running")),
        "{st2}"
    );
    assert_eq!(pulls(&b).len(), 1, "one pull for the same id and etag");
    // Nothing is visible until the copy is whole.
    let r = b.get(&format!("/assets/{id}"));
    assert!(
        r.status() == 404 || sha(&r.body) == sha(&body),
        "a partial copy is visible: {} with {} bytes",
        r.status(),
        r.body.len()
    );
    let done = wait_state(&b, id, &["done", "failed", "cancelled"]);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["bytes_done"], size as u64);
    let got = b.get(&format!("/assets/{id}"));
    assert_eq!(got.status(), 200, "{}", got.text());
    assert_eq!(
        sha(&got.body),
        sha(&body),
        "B serves the pulled asset byte-exact"
    );
    assert_eq!(got.header("etag"), Some(etag.as_str()), "the same version");
    let info = b.info(id).expect("info");
    assert_eq!(info["tiers"], serde_json::json!(["primary"]), "{info}");
    assert_eq!(
        a.get(&format!("/assets/{id}")).header("last-modified"),
        got.header("last-modified"),
        "Last-Modified as on the holder"
    );
    // Held now: 409, saying so.
    let held = send_order(&b, &o);
    assert_eq!(held.status(), 409, "{}", held.text());
    let h: serde_json::Value = serde_json::from_slice(&held.body).expect("held JSON");
    assert_eq!(h["state"], "held", "{h}");
    let m = b.metrics();
    assert_eq!(m.sum_where("reel_pulls_total", "outcome=\"done\""), 1);
    assert_eq!(m.sum("reel_pull_bytes_total"), size as u64);
    assert_eq!(m.sum("reel_pulls_in_flight"), 0);
    // Survives a restart: it was published durably.
    let mut b = b;
    b.restart();
    let got = b.get(&format!("/assets/{id}"));
    assert_eq!(sha(&got.body), sha(&body), "after kill -9 and restart");
    a.assert_no_panic("end");
    b.assert_no_panic("end");
}

#[test]
fn pull_orders_need_the_token_the_inter_server_listener_and_a_good_body() {
    let Some(dir) = setup("pull_orders_need_the_token_the_inter_server_listener_and_a_good_body")
    else {
        return;
    };
    let b = node(dir.path(), "b", &[]);
    let src: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let good = serde_json::to_vec(&order("x", "\"0-1\"", 1, src)).expect("json");
    let pa = b.peer_addr();
    let req = |addr, method: &str, target: &str, auth: Option<&str>, body: Option<&[u8]>| {
        let h = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        http::request(addr, method, target, &h, body).expect("request")
    };
    let right = bearer();
    for (method, target, body) in [
        ("PUT", "/v1/pull", Some(&good[..])),
        ("GET", "/v1/pulls", None),
        ("DELETE", "/v1/pull/x", None),
    ] {
        let none = req(pa, method, target, None, body);
        assert_eq!(none.status(), 401, "{method} {target} without the token");
        let wrong = req(pa, method, target, Some("Bearer nope"), body);
        assert_eq!(wrong.status(), 403, "{method} {target} with a wrong token");
        let access = req(b.addr(), method, target, Some(&right), body);
        assert_eq!(
            access.status(),
            403,
            "{method} {target} on the access listener: {}",
            access.text()
        );
    }
    let bad = |o: serde_json::Value, what: &str| {
        let r = peer(&b, "PUT", "/v1/pull", Some(o.to_string().as_bytes()));
        assert_eq!(r.status(), 400, "{what}: {}", r.text());
    };
    let base = serde_json::to_value(order("x", "\"0-1\"", 1, src)).expect("value");
    let with = |k: &str, v: serde_json::Value| {
        let mut o = base.clone();
        o[k] = v;
        o
    };
    bad(with("tier", "secondary".into()), "tier secondary");
    bad(with("id", "../x".into()), "bad id");
    bad(with("id", "a/info".into()), "reserved last segment");
    bad(with("etag", "".into()), "empty etag");
    bad(with("etag", "\"a\r\nX: y\"".into()), "etag with CRLF");
    bad(with("source_node", "a b".into()), "bad node name");
    bad(with("source", "0.0.0.0:80".into()), "unspecified source");
    bad(
        with("source", pa.to_string().into()),
        "the node itself as source",
    );
    bad(with("size", (-1).into()), "negative size");
    bad(with("extra", 1.into()), "unknown field");
    bad(serde_json::json!([]), "not an object");
    let r = peer(&b, "PUT", "/v1/pull", Some(b"{not json"));
    assert_eq!(r.status(), 400, "{}", r.text());
    // More than the primary can ever hold: 507.
    let huge = with("size", (64u64 << 30).into());
    let r = peer(&b, "PUT", "/v1/pull", Some(huge.to_string().as_bytes()));
    assert_eq!(r.status(), 507, "{}", r.text());
    // No such pull to cancel.
    let r = peer(&b, "DELETE", "/v1/pull/x", None);
    assert_eq!(r.status(), 404, "{}", r.text());
    assert!(pulls(&b).is_empty(), "nothing queued by refused orders");
    b.assert_no_panic("end");
}

/// A stub holder of `body` (as id `id`, version `etag`) whose chunk list is right but whose
/// bytes have one flipped in chunk `bad_chunk`. Serves keep-alive connections until the test
/// ends.
fn corrupt_holder(id: &str, etag: &str, body: Vec<u8>, bad_chunk: usize) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (id, etag) = (id.to_string(), etag.to_string());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (id, etag, body) = (id.clone(), etag.clone(), body.clone());
            std::thread::spawn(move || serve_corrupt(s, &id, &etag, &body, bad_chunk));
        }
    });
    addr
}

fn serve_corrupt(s: TcpStream, id: &str, etag: &str, body: &[u8], bad_chunk: usize) {
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut w = s;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut range = None;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                let (a, b) = v.trim().split_once('-').expect("range");
                range = Some((
                    a.parse::<usize>().expect("a"),
                    b.parse::<usize>().expect("b"),
                ));
            }
        }
        let chunks: Vec<u32> = body.chunks(CHUNK).map(crc32c::crc32c).collect();
        let (status, ctype, payload, extra) = if let Some(q) = target
            .strip_prefix(&format!("/chunks/{id}?"))
            .map(str::to_string)
        {
            let mut from = 0;
            let mut count = 0;
            for kv in q.split('&') {
                match kv.split_once('=') {
                    Some(("from", v)) => from = v.parse().expect("from"),
                    Some(("count", v)) => count = v.parse().expect("count"),
                    _ => {}
                }
            }
            let list = ChunkList {
                etag: etag.to_string(),
                size: body.len() as u64,
                content_type: "application/octet-stream".into(),
                chunk_bytes: CHUNK as u32,
                crcs: chunks.iter().skip(from).take(count).copied().collect(),
                last_modified_unix_s: None,
            };
            (
                "200 OK",
                "application/json",
                serde_json::to_vec(&list).expect("json"),
                String::new(),
            )
        } else if let Some((a, b)) = range {
            let mut bytes = body[a..=b].to_vec();
            let flip = bad_chunk * CHUNK + 100;
            if (a..=b).contains(&flip) {
                bytes[flip - a] ^= 0x40;
            }
            (
                "206 Partial Content",
                "application/octet-stream",
                bytes,
                format!("Content-Range: bytes {a}-{b}/{}\r\n", body.len()),
            )
        } else {
            (
                "404 Not Found",
                "text/plain",
                b"no\n".to_vec(),
                String::new(),
            )
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n{extra}\r\n",
            payload.len()
        );
        if w.write_all(head.as_bytes()).is_err() || w.write_all(&payload).is_err() {
            return;
        }
    }
}

#[test]
fn a_corrupted_chunk_aborts_the_pull_with_nothing_published() {
    let Some(dir) = setup("a_corrupted_chunk_aborts_the_pull_with_nothing_published") else {
        return;
    };
    let b = node(dir.path(), "b", &[]);
    let id = "films/corrupt.bin";
    let size = 4 * MIB + 77;
    let etag = "\"0badcafe-1\"";
    let holder = corrupt_holder(id, etag, content(3, size), 2);
    let r = send_order(&b, &order(id, etag, size, holder));
    assert_eq!(r.status(), 202, "{}", r.text());
    let p = wait_state(&b, id, &["done", "failed", "cancelled"]);
    assert_eq!(p["state"], "failed", "{p}");
    let err = p["error"].as_str().unwrap_or_default();
    assert!(err.contains("chunk 2 has crc32c"), "the reason: {err}");
    assert_eq!(p["bytes_done"], (2 * CHUNK) as u64, "chunks 0 and 1 only");
    assert_nothing_visible(&b, id, "after the corrupted pull");
    let m = b.metrics();
    assert_eq!(m.sum_where("reel_pulls_total", "outcome=\"failed\""), 1);
    assert_eq!(m.sum_where("reel_pulls_total", "outcome=\"done\""), 0);
    // Nothing reserved or used is left behind.
    let mut b = b;
    b.kill9();
    let ids = inspect(&dir.path().join("vol-b"), "after the corrupted pull");
    assert!(ids.is_empty(), "B's volume holds {ids:?}");
    b.assert_no_panic("end");
}

#[test]
fn a_cancelled_pull_publishes_nothing() {
    let Some(dir) = setup("a_cancelled_pull_publishes_nothing") else {
        return;
    };
    let a = node(dir.path(), "a", &[]);
    let b = node(dir.path(), "b", &["--copy-budget", "4M"]);
    let id = "films/cancelled.bin";
    let size = 24 * MIB;
    let etag = put(&a, id, &content(11, size));
    let r = send_order(&b, &order(id, &etag, size, a.peer_addr()));
    assert_eq!(r.status(), 202, "{}", r.text());
    wait_running_with_bytes(&b, id);
    let c = peer(&b, "DELETE", &format!("/v1/pull/{id}"), None);
    assert_eq!(c.status(), 200, "cancel: {}", c.text());
    let p = wait_state(&b, id, &["done", "failed", "cancelled"]);
    assert_eq!(p["state"], "cancelled", "{p}");
    assert_nothing_visible(&b, id, "after the cancel");
    assert_eq!(
        b.metrics()
            .sum_where("reel_pulls_total", "outcome=\"cancelled\""),
        1
    );
    // The same order again is a new pull.
    let r = send_order(&b, &order(id, &etag, size, a.peer_addr()));
    assert_eq!(r.status(), 202, "{}", r.text());
    assert_eq!(pulls(&b).len(), 2, "the cancelled pull and the new one");
    a.assert_no_panic("end");
    b.assert_no_panic("end");
}

#[test]
fn kill_9_of_the_holder_mid_pull_aborts_cleanly() {
    let Some(dir) = setup("kill_9_of_the_holder_mid_pull_aborts_cleanly") else {
        return;
    };
    let mut a = node(dir.path(), "a", &[]);
    let b = node(dir.path(), "b", &["--copy-budget", "4M"]);
    let id = "films/holder-dies.bin";
    let size = 24 * MIB;
    let etag = put(&a, id, &content(13, size));
    let r = send_order(&b, &order(id, &etag, size, a.peer_addr()));
    assert_eq!(r.status(), 202, "{}", r.text());
    wait_running_with_bytes(&b, id);
    a.kill9();
    let p = wait_state(&b, id, &["done", "failed", "cancelled"]);
    assert_eq!(p["state"], "failed", "{p}");
    assert!(
        (p["bytes_done"].as_u64().unwrap_or(0) as usize) < size,
        "{p}"
    );
    assert_nothing_visible(&b, id, "after the holder died");
    assert_eq!(
        b.metrics()
            .sum_where("reel_pulls_total", "outcome=\"failed\""),
        1
    );
    let mut b = b;
    b.kill9();
    let ids = inspect(&dir.path().join("vol-b"), "after the holder died");
    assert!(ids.is_empty(), "B's volume holds {ids:?}");
    b.assert_no_panic("end");
}

#[test]
fn kill_9_of_the_receiver_mid_pull_leaves_no_partial_copy() {
    let Some(dir) = setup("kill_9_of_the_receiver_mid_pull_leaves_no_partial_copy") else {
        return;
    };
    let a = node(dir.path(), "a", &[]);
    let mut b = node(dir.path(), "b", &["--copy-budget", "4M"]);
    let id = "films/receiver-dies.bin";
    let size = 24 * MIB + 999;
    let body = content(17, size);
    let etag = put(&a, id, &body);
    let r = send_order(&b, &order(id, &etag, size, a.peer_addr()));
    assert_eq!(r.status(), 202, "{}", r.text());
    let done = wait_running_with_bytes(&b, id);
    b.kill9();
    let ids = inspect(&dir.path().join("vol-b"), "right after kill -9 mid-pull");
    assert!(
        ids.is_empty(),
        "a partial copy ({done} of {size} bytes pulled) is on B's volume: {ids:?}"
    );
    // Restarted without the pacing budget.
    let at = b
        .args
        .extra
        .iter()
        .position(|f| f == "--copy-budget")
        .expect("the budget flag");
    b.args.extra.drain(at..at + 2);
    b.respawn();
    assert_nothing_visible(&b, id, "after the restart");
    assert!(pulls(&b).is_empty(), "a restarted node does not resume");
    // Ordered again, it lands whole; the holder served on throughout.
    let r = send_order(&b, &order(id, &etag, size, a.peer_addr()));
    assert_eq!(r.status(), 202, "{}", r.text());
    let p = wait_state(&b, id, &["done", "failed", "cancelled"]);
    assert_eq!(p["state"], "done", "{p}");
    assert_eq!(sha(&b.get(&format!("/assets/{id}")).body), sha(&body));
    assert_eq!(sha(&a.get(&format!("/assets/{id}")).body), sha(&body));
    a.assert_no_panic("end");
    b.assert_no_panic("end");
}

#[test]
fn an_upload_during_a_pull_wins() {
    let Some(dir) = setup("an_upload_during_a_pull_wins") else {
        return;
    };
    let a = node(dir.path(), "a", &[]);
    let b = node(dir.path(), "b", &["--copy-budget", "4M"]);
    let id = "films/raced.bin";
    let size = 16 * MIB;
    let etag = put(&a, id, &content(19, size));
    let r = send_order(&b, &order(id, &etag, size, a.peer_addr()));
    assert_eq!(r.status(), 202, "{}", r.text());
    wait_running_with_bytes(&b, id);
    let newer = content(23, 3 * MIB);
    put(&b, id, &newer);
    let p = wait_state(&b, id, &["done", "failed", "cancelled"]);
    assert_eq!(p["state"], "failed", "{p}");
    let got = b.get(&format!("/assets/{id}"));
    assert_eq!(sha(&got.body), sha(&newer), "the upload stands");
    a.assert_no_panic("end");
    b.assert_no_panic("end");
}
