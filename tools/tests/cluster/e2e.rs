//! A manager and three nodes on loopback, all real processes: ingest through the manager,
//! redirects to a holder, overwrite and delete with no stale copy served, a node killed under
//! load and reconciled when it returns, the manager restarted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use reel_http::client::Response;
use reel_testkit::content::content;
use reel_testkit::node::NodeProc;
use reel_testkit::probe;
use sha2::{Digest, Sha256};

use super::*;

/// A cluster on loopback: the manager, its nodes by name, the token.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub manager: ManagerProc,
    pub nodes: BTreeMap<String, NodeProc>,
    pub token: String,
    pub token_path: std::path::PathBuf,
}

impl Cluster {
    /// A manager and `names` nodes, each with a 64 MiB primary and a 256 MiB secondary.
    pub fn start(test: &str, names: &[&str], manager_flags: &[&str]) -> Cluster {
        let dir = REEL.tempdir(&format!("reel-{test}-"));
        let token_path = token_file(dir.path());
        let manager = ManagerProc::spawn(
            &REEL,
            dir.path(),
            ManagerArgs::new(dir.path(), &token_path).flags(manager_flags),
        );
        let token = read_token(&token_path);
        let mut c = Cluster {
            dir,
            manager,
            nodes: BTreeMap::new(),
            token,
            token_path,
        };
        for n in names {
            c.add_node(n);
        }
        c.manager.wait_routable(names, Duration::from_secs(10));
        c
    }

    fn add_node(&mut self, name: &str) {
        let (d, args) = node_args(
            self.dir.path(),
            name,
            &self.manager.peer_url(),
            &self.token_path,
            "127.0.0.1:0",
            None,
        );
        let node = NodeProc::spawn(&REEL, &d, args);
        self.nodes.insert(name.to_string(), node);
    }

    pub fn node(&self, name: &str) -> &NodeProc {
        &self.nodes[name]
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// `PUT` through the manager: the 307 and its put ticket, then the upload at the node it
    /// names (without the token, as `curl -L` sends it). The node's name and the 201.
    pub fn put(&self, id: &str, body: &[u8]) -> (String, Response) {
        let auth = self.bearer();
        let r = self.manager.request(
            "PUT",
            &format!("/assets/{id}"),
            &[("Authorization", auth.as_str())],
            Some(body),
        );
        assert_eq!(r.status(), 307, "PUT {id} at the manager: {}", r.text());
        let route = r.header("reel-route").unwrap_or_default().to_string();
        let node = route
            .split("node=")
            .nth(1)
            .and_then(|n| n.split_whitespace().next())
            .expect("Reel-Route names the node")
            .to_string();
        let (addr, target) = split_location(r.header("location").expect("Location"));
        let up = http::request(addr, "PUT", &target, &[], Some(body)).expect("PUT at the node");
        assert_eq!(up.status(), 201, "PUT {id} at {node}: {}", up.text());
        (node, up)
    }

    /// `GET` through the manager, following its redirect: the route and the node's answer.
    pub fn get(&self, id: &str, near: Option<&str>) -> (String, Response) {
        let target = match near {
            Some(n) => format!("/assets/{id}?near={n}"),
            None => format!("/assets/{id}"),
        };
        let r = self.manager.get(&target);
        let route = r.header("reel-route").unwrap_or_default().to_string();
        if r.status() != 307 {
            return (route, r);
        }
        let (addr, t) = split_location(r.header("location").expect("Location"));
        let got = http::request(addr, "GET", &t, &[], None).expect("GET at the node");
        (route, got)
    }
}

/// `http://ADDR/target` → (ADDR, target).
pub fn split_location(loc: &str) -> (SocketAddr, String) {
    let rest = loc.strip_prefix("http://").expect("an http:// Location");
    let (host, path) = rest.split_at(rest.find('/').expect("a path"));
    (
        host.parse().expect("Location's host is an address"),
        path.to_string(),
    )
}

pub fn sha(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn runnable(test: &str) -> bool {
    probe::runnable(test, &[&|| REEL.io_uring()])
}

#[test]
fn ingest_route_overwrite_and_delete_through_the_manager() {
    let test = "ingest_route_overwrite_and_delete_through_the_manager";
    if !runnable(test) {
        return;
    }
    let c = Cluster::start(test, &["n1", "n2", "n3"], &[]);
    let v1 = content(1, 3 << 20);
    let (holder, put) = c.put("movies/a.mp4", &v1);
    let etag1 = put.header("etag").expect("etag").to_string();
    // Straight to the holder, and as the holder's own client.
    let (route, got) = c.get("movies/a.mp4", None);
    assert!(route.ends_with(&format!("node={holder}")), "{route}");
    assert!(
        route.starts_with("primary") || route.starts_with("secondary"),
        "{route}"
    );
    assert_eq!(got.status(), 200);
    assert_eq!(sha(&got.body), sha(&v1));
    let (route, _) = c.get("movies/a.mp4", Some(&holder));
    assert!(route.starts_with("local-"), "{route}");
    let loc = c.manager.locations("movies/a.mp4");
    assert_eq!(loc["copies"][0]["node"], holder.as_str(), "{loc}");
    assert_eq!(loc["copies"][0]["etag"], etag1.as_str(), "{loc}");

    // An overwrite: once acknowledged, only the new version is ever served.
    let v2 = content(2, 2 << 20);
    let (holder2, put2) = c.put("movies/a.mp4", &v2);
    let etag2 = put2.header("etag").expect("etag").to_string();
    assert_ne!(etag1, etag2);
    for _ in 0..20 {
        let (route, got) = c.get("movies/a.mp4", None);
        assert_eq!(got.status(), 200, "{route}");
        assert_eq!(
            sha(&got.body),
            sha(&v2),
            "a stale copy was served ({route})"
        );
    }
    // The old copy (if elsewhere) goes when its node learns the tombstone.
    if holder2 != holder {
        reel_testkit::poll(
            Duration::from_secs(5),
            Duration::from_millis(50),
            || match c.node(&holder).info("movies/a.mp4") {
                None => Ok(()),
                Some(v) => Err(format!("the old copy is still on {holder}: {v}")),
            },
        );
    }

    // A delete removes every copy, and the manager says not found.
    let auth = c.bearer();
    let r = c.manager.request(
        "DELETE",
        "/assets/movies/a.mp4",
        &[("Authorization", auth.as_str())],
        None,
    );
    assert_eq!(r.status(), 204, "{}", r.text());
    let r = c.manager.get("/assets/movies/a.mp4");
    assert_eq!(r.status(), 404, "{}", r.text());
    for (name, n) in &c.nodes {
        assert!(n.info("movies/a.mp4").is_none(), "{name} still holds it");
    }
    let m = c.manager.metrics();
    assert!(
        m.sum("reel_manager_tombstones_written_total") >= 2,
        "{}",
        m.0
    );
    c.manager.assert_no_panic("end");
}

#[test]
fn a_killed_node_leaves_routing_within_3s_and_is_reconciled_when_it_returns() {
    let test = "a_killed_node_leaves_routing_within_3s_and_is_reconciled_when_it_returns";
    if !runnable(test) {
        return;
    }
    let mut c = Cluster::start(test, &["n1", "n2", "n3"], &[]);
    let auth = c.bearer();
    // Two copies of one asset (the same bytes uploaded to n1 and n2 with the token), and an
    // asset on n1 alone that is deleted while n1 is away.
    let both = content(5, 1 << 20);
    let gone = content(6, 1 << 20);
    for n in ["n1", "n2"] {
        let r = c.node(n).request(
            "PUT",
            "/assets/both",
            &[("Authorization", auth.as_str())],
            Some(&both),
        );
        assert_eq!(r.status(), 201, "PUT both at {n}: {}", r.text());
    }
    let r = c.node("n1").request(
        "PUT",
        "/assets/gone",
        &[("Authorization", auth.as_str())],
        Some(&gone),
    );
    assert_eq!(r.status(), 201, "{}", r.text());
    reel_testkit::poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let l = c.manager.locations("both");
        match l["copies"].as_array().map(Vec::len) {
            Some(2) => Ok(()),
            _ => Err(format!("{l}")),
        }
    });

    // Load: clients ask the manager and follow; after the kill, record the last request sent
    // to the dead node and any failure of a request made after the manager should know.
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let last_misroute = Arc::new(Mutex::new(None::<Instant>));
    let served = Arc::new(AtomicU64::new(0));
    let n1_addr = c.node("n1").addr();
    let maddr = c.manager.addr();
    let want = sha(&both);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, killed_at, last_misroute, served, want) = (
                stop.clone(),
                killed_at.clone(),
                last_misroute.clone(),
                served.clone(),
                want.clone(),
            );
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut late_failures = Vec::new();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(30) {
                    let sent = Instant::now();
                    let Ok(r) = http::request(maddr, "GET", "/assets/both", &[], None) else {
                        continue;
                    };
                    let Some(loc) = r.header("location") else {
                        late_failures.push(format!("manager answered {}", r.status()));
                        continue;
                    };
                    let (addr, t) = split_location(loc);
                    let killed = *killed_at.lock().expect("lock");
                    if addr == n1_addr && killed.is_some() {
                        *last_misroute.lock().expect("lock") = Some(sent);
                    }
                    match http::request(addr, "GET", &t, &[], None) {
                        Ok(g) if g.status() == 200 && sha(&g.body) == want => {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            if killed
                                .is_some_and(|k| sent.duration_since(k) > Duration::from_secs(3))
                            {
                                late_failures
                                    .push(format!("{addr}: {:?}", other.map(|g| g.status())));
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                late_failures
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    c.nodes.get_mut("n1").expect("n1").kill9();
    let kill = Instant::now();
    *killed_at.lock().expect("lock") = Some(kill);
    c.manager
        .wait_routable(&["n2", "n3"], Duration::from_secs(4));
    let out_after = kill.elapsed();
    // While n1 is away: delete `gone` (its only copy is on n1).
    let r = c.manager.request(
        "DELETE",
        "/assets/gone",
        &[("Authorization", auth.as_str())],
        None,
    );
    assert_eq!(r.status(), 204, "{}", r.text());
    std::thread::sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let failures: Vec<String> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    let last = last_misroute
        .lock()
        .expect("lock")
        .map(|t| t.saturating_duration_since(kill));
    eprintln!(
        "n1 out of routing {out_after:?} after the kill; last request routed to it {last:?} after; {} served",
        served.load(Ordering::Relaxed)
    );
    assert!(
        out_after <= Duration::from_secs(3),
        "out of routing after {out_after:?}"
    );
    assert!(
        last.is_none_or(|d| d <= Duration::from_secs(3)),
        "a request was routed to the dead node {last:?} after the kill"
    );
    assert!(
        failures.is_empty(),
        "requests failed 3 s after the kill: {failures:?}"
    );

    // n1 returns: reconciled, not trusted — the deleted asset is gone, `both` routes to it.
    let n1 = c.nodes.get_mut("n1").expect("n1");
    n1.respawn();
    c.manager
        .wait_routable(&["n1", "n2", "n3"], Duration::from_secs(5));
    reel_testkit::poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || match c.node("n1").info("gone") {
            None => Ok(()),
            Some(v) => Err(format!("n1 brought back a deleted asset: {v}")),
        },
    );
    assert_eq!(c.manager.get("/assets/gone").status(), 404);
    let (route, got) = c.get("both", Some("n1"));
    assert!(route.starts_with("local-"), "{route}");
    assert_eq!(sha(&got.body), want);
    c.manager.assert_no_panic("end");
}

#[test]
fn a_restarted_manager_routes_again_from_the_nodes_reports() {
    let test = "a_restarted_manager_routes_again_from_the_nodes_reports";
    if !runnable(test) {
        return;
    }
    // Clients on 127.0.0.1 belong to n1 (a zone of --config, which the store keeps).
    let zdir = REEL.tempdir("reel-zones-");
    let zones = zdir.path().join("zones.toml");
    std::fs::write(
        &zones,
        "[[zone]]\nnode = \"n1\"\nclients = [\"127.0.0.1/32\"]\n",
    )
    .expect("zones");
    let mut c = Cluster::start(
        test,
        &["n1", "n2"],
        &["--config", zones.to_str().expect("utf-8")],
    );
    let body = content(9, 1 << 20);
    let auth = c.bearer();
    let r = c.node("n1").request(
        "PUT",
        "/assets/keep/me",
        &[("Authorization", auth.as_str())],
        Some(&body),
    );
    assert_eq!(r.status(), 201, "{}", r.text());
    // A placement policy for it, kept in the store too.
    let policy = br#"{"min_copies":2,"pin_nodes":["n1"]}"#;
    let r = c.manager.request(
        "PUT",
        "/assets/keep/me/policy",
        &[("Authorization", auth.as_str())],
        Some(policy),
    );
    assert_eq!(r.status(), 200, "{}", r.text());
    c.manager.kill9();
    // Restarted without --config: the zones come from the store.
    c.manager.args.extra.clear();
    c.manager.respawn();
    // The first request may come before the nodes re-report: it waits for them (never a 404
    // for an asset a live node holds).
    let t0 = Instant::now();
    let r = c.manager.get("/assets/keep/me");
    assert_eq!(
        r.status(),
        307,
        "after a manager restart: {} {}",
        r.status(),
        r.text()
    );
    let route = r.header("reel-route").unwrap_or_default();
    assert!(
        route.starts_with("local-") && route.ends_with("node=n1"),
        "{route}"
    );
    eprintln!(
        "routing resumed {:?} after the manager restarted",
        t0.elapsed()
    );
    let r = c.manager.get("/assets/keep/me/policy");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("policy JSON");
    assert_eq!(v["min_copies"], 2, "{v}");
    assert_eq!(v["pin_nodes"][0], "n1", "{v}");
    c.manager
        .wait_routable(&["n1", "n2"], Duration::from_secs(5));
    let (_, got) = c.get("keep/me", None);
    assert_eq!(sha(&got.body), sha(&body));
}

#[test]
fn the_placement_removes_a_cooled_duplicate_primary_copy_and_keeps_one() {
    let test = "the_placement_removes_a_cooled_duplicate_primary_copy_and_keeps_one";
    if !runnable(test) {
        return;
    }
    // Placement every 300 ms; a duplicate may go after 1 s of residency and cool-down.
    let c = Cluster::start(
        test,
        &["n1", "n2"],
        &[
            "--placement-interval",
            "300ms",
            "--placement-cooldown",
            "1",
            "--placement-min-residency",
            "1",
        ],
    );
    let auth = c.bearer();
    let body = content(61, 1 << 20);
    for n in ["n1", "n2"] {
        let r = c.node(n).request(
            "PUT",
            "/assets/dup",
            &[("Authorization", auth.as_str())],
            Some(&body),
        );
        assert_eq!(r.status(), 201, "PUT at {n}: {}", r.text());
    }
    // Nobody asks for it: one primary copy is a duplicate. Once both are written back, the
    // placement drops one primary copy (the secondary copy stays), never both.
    let primaries = |c: &Cluster| -> Vec<String> {
        let l = c.manager.locations("dup");
        l["copies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|cp| {
                cp["tiers"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == "primary"))
            })
            .filter_map(|cp| cp["node"].as_str().map(str::to_string))
            .collect()
    };
    reel_testkit::poll(Duration::from_secs(20), Duration::from_millis(100), || {
        let p = primaries(&c);
        if p.len() == 1 {
            Ok(())
        } else {
            Err(format!(
                "primary copies on {p:?}; manager stderr:\n{}",
                c.manager.stderr()
            ))
        }
    });
    let m = c.manager.metrics();
    assert!(m.sum("reel_manager_placement_drops_total") >= 1, "{}", m.0);
    // Stable: it stays at one, and both nodes still serve it.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(primaries(&c).len(), 1);
    for n in ["n1", "n2"] {
        let g = c.node(n).get("/assets/dup");
        assert_eq!(g.status(), 200, "{n}");
        assert_eq!(sha(&g.body), sha(&body), "{n}");
    }
    c.manager.assert_no_panic("end");
}

#[test]
fn the_placement_pulls_a_hot_asset_onto_the_node_whose_clients_ask() {
    let test = "the_placement_pulls_a_hot_asset_onto_the_node_whose_clients_ask";
    if !runnable(test) {
        return;
    }
    // One copy is sized to serve 1 KiB/s: a few requests make an asset want more copies.
    let c = Cluster::start(
        test,
        &["n1", "n2"],
        &["--placement-interval", "300ms", "--copy-serve", "1K"],
    );
    let auth = c.bearer();
    let body = content(71, (3 << 20) + 99);
    let r = c.node("n1").request(
        "PUT",
        "/assets/hot",
        &[("Authorization", auth.as_str())],
        Some(&body),
    );
    assert_eq!(r.status(), 201, "{}", r.text());
    // n2's clients ask for it: relayed through n2 from n1, and counted as n2's demand.
    for _ in 0..10 {
        let (route, got) = c.get("hot", Some("n2"));
        assert!(
            route.starts_with("relay-") || route.starts_with("local-"),
            "{route}"
        );
        assert_eq!(sha(&got.body), sha(&body));
    }
    // The placement orders n2 to pull it; n2 checks every chunk and publishes it whole.
    reel_testkit::poll(
        Duration::from_secs(20),
        Duration::from_millis(100),
        || match c.node("n2").info("hot") {
            Some(v)
                if v["tiers"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|x| x == "primary")) =>
            {
                Ok(())
            }
            other => Err(format!(
                "n2 has no primary copy yet: {other:?}; manager stderr:\n{}\nn2 stderr:\n{}",
                c.manager.stderr(),
                c.node("n2").stderr()
            )),
        },
    );
    let g = c.node("n2").get("/assets/hot");
    assert_eq!(sha(&g.body), sha(&body), "the pulled copy is byte-exact");
    let m = c.node("n2").metrics();
    assert!(
        m.sum_where("reel_pulls_total", "outcome=\"done\"") >= 1,
        "{}",
        m.0
    );
    assert!(
        m.sum("reel_pull_bytes_total") >= body.len() as u64,
        "{}",
        m.0
    );
    // Once n2 reports it, its clients are served locally.
    reel_testkit::poll(Duration::from_secs(5), Duration::from_millis(100), || {
        let (route, _) = c.get("hot", Some("n2"));
        if route.starts_with("local-") {
            Ok(())
        } else {
            Err(route)
        }
    });
    // A second order for the version it holds is refused as such.
    let order = serde_json::json!({
        "id": "hot", "etag": g.header("etag").unwrap_or_default(), "size": body.len(),
        "source": c.node("n1").peer_addr().to_string(), "source_node": "n1", "tier": "primary"
    })
    .to_string();
    let r = http::request(
        c.node("n2").peer_addr(),
        "PUT",
        "/v1/pull",
        &[("Authorization", auth.as_str())],
        Some(order.as_bytes()),
    )
    .expect("pull order");
    assert_eq!(r.status(), 409, "{}", r.text());
    // Without the token the order is refused before anything else.
    let r = http::request(
        c.node("n2").peer_addr(),
        "PUT",
        "/v1/pull",
        &[],
        Some(order.as_bytes()),
    )
    .expect("pull order");
    assert_eq!(r.status(), 401, "{}", r.text());
    c.manager.assert_no_panic("end");
}

/// `reel inspect --json` of a stopped node's primary: its asset ids, and whether its space
/// adds up (used + free = capacity: no extent leaked by an unfinished ingest).
fn inspect_primary(c: &Cluster, node: &str) -> (Vec<String>, bool) {
    let path = c.dir.path().join(node).join("primary");
    let json = REEL.ok(&["inspect", "--json", path.to_str().expect("utf-8")]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("inspect --json");
    let ids = v["assets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["id"].as_str().map(str::to_string))
        .collect();
    let st = &v["stats"];
    let adds_up = st["used_bytes"]
        .as_u64()
        .zip(st["free_bytes"].as_u64())
        .is_some_and(|(u, f)| Some(u + f) == st["capacity_bytes"].as_u64());
    (ids, adds_up)
}

#[test]
fn kill_9_during_a_pull_on_either_side_leaves_no_partial_copy() {
    let test = "kill_9_during_a_pull_on_either_side_leaves_no_partial_copy";
    if !runnable(test) {
        return;
    }
    // No placement here: the test orders the pulls itself.
    let mut c = Cluster::start(test, &["n1", "n2"], &["--placement-interval", "0s"]);
    let auth = c.bearer();
    let body = content(81, 24 << 20);
    let r = c.node("n1").request(
        "PUT",
        "/assets/big",
        &[("Authorization", auth.as_str())],
        Some(&body),
    );
    assert_eq!(r.status(), 201, "{}", r.text());
    let etag = r.header("etag").expect("etag").to_string();
    // n2 pulls at 4 MiB/s, so a kill lands inside the pull.
    let slow = |c: &Cluster| {
        let r = c.node("n2").request(
            "PUT",
            "/migration?copy_budget=4M",
            &[("Authorization", auth.as_str())],
            None,
        );
        assert_eq!(r.status(), 200, "{}", r.text());
    };
    let order = |c: &Cluster| {
        let o = serde_json::json!({
            "id": "big", "etag": etag, "size": body.len(),
            "source": c.node("n1").peer_addr().to_string(), "source_node": "n1", "tier": "primary"
        })
        .to_string();
        let r = http::request(
            c.node("n2").peer_addr(),
            "PUT",
            "/v1/pull",
            &[("Authorization", auth.as_str())],
            Some(o.as_bytes()),
        )
        .expect("pull order");
        assert_eq!(r.status(), 202, "{}", r.text());
    };
    let wait_pulling = |c: &Cluster| {
        reel_testkit::poll(Duration::from_secs(5), Duration::from_millis(20), || {
            let m = c.node("n2").metrics();
            if m.sum("reel_pulls_in_flight") == 1 {
                Ok(())
            } else {
                Err(m.lines_of(&["reel_pull"]))
            }
        });
        std::thread::sleep(Duration::from_millis(1500));
    };

    // The receiver killed mid-pull: after the crash nothing of the copy is visible.
    slow(&c);
    order(&c);
    wait_pulling(&c);
    c.nodes.get_mut("n2").expect("n2").kill9();
    let (ids, adds_up) = inspect_primary(&c, "n2");
    assert!(
        !ids.iter().any(|i| i == "big"),
        "a partial copy is visible after the kill: {ids:?}"
    );
    assert!(
        adds_up,
        "the receiver's space does not add up after the kill"
    );
    c.nodes.get_mut("n2").expect("n2").respawn();
    assert!(
        c.node("n2").info("big").is_none(),
        "a partial copy after the restart"
    );

    // The holder killed mid-pull: the receiver aborts, nothing published, the holder noted.
    c.manager
        .wait_routable(&["n1", "n2"], Duration::from_secs(5));
    slow(&c);
    order(&c);
    wait_pulling(&c);
    c.nodes.get_mut("n1").expect("n1").kill9();
    // The pull may still hold a window the holder sent before it died: unpaced, it reaches the
    // end of what arrived, and fails at the holder's silence, in a moment.
    let r = c.node("n2").request(
        "PUT",
        "/migration?copy_budget=0",
        &[("Authorization", auth.as_str())],
        None,
    );
    assert_eq!(r.status(), 200, "{}", r.text());
    reel_testkit::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        let m = c.node("n2").metrics();
        if m.sum_where("reel_pulls_total", "outcome=\"failed\"") >= 1 {
            Ok(())
        } else {
            Err(m.lines_of(&["reel_pull"]))
        }
    });
    assert!(
        c.node("n2").info("big").is_none(),
        "an aborted pull published a copy"
    );
    // Nothing lost: the holder's copy is whole after its restart.
    c.nodes.get_mut("n1").expect("n1").respawn();
    let g = c.node("n1").get("/assets/big");
    assert_eq!(sha(&g.body), sha(&body));
}
