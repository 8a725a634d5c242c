//! Two managers on etcd: one leads, the other stands by; kill -9 the leader under load and the
//! standby routes correctly within 3 s, nodes following it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use reel_testkit::cluster::{etcd_probe, Etcd};
use reel_testkit::content::content;
use reel_testkit::node::NodeProc;
use reel_testkit::probe;

use super::e2e::{sha, split_location};
use super::*;

/// GET `id` at the manager `addr`, following redirects (a standby's to the leader, the
/// leader's to a node): the final response and the routes seen.
fn fetch(addr: SocketAddr, id: &str) -> Result<(u16, Vec<u8>, Vec<String>), String> {
    let (mut addr, mut target) = (addr, format!("/assets/{id}"));
    let mut routes = Vec::new();
    for _ in 0..4 {
        let r = http::request(addr, "GET", &target, &[], None).map_err(|e| e.to_string())?;
        routes.push(r.header("reel-route").unwrap_or_default().to_string());
        if r.status() != 307 {
            return Ok((r.status(), r.body, routes));
        }
        (addr, target) = split_location(r.header("location").ok_or("a 307 without Location")?);
    }
    Err(format!("too many redirects: {routes:?}"))
}

#[test]
fn the_standby_takes_over_within_3s_when_the_leader_is_killed() {
    let test = "the_standby_takes_over_within_3s_when_the_leader_is_killed";
    if !probe::runnable(test, &[&|| REEL.io_uring(), &etcd_probe]) {
        return;
    }
    let dir = REEL.tempdir("reel-cluster-etcd-");
    let etcd = Etcd::start(dir.path());
    let tok = token_file(dir.path());
    let token = read_token(&tok);
    let store = format!("etcd://{}", etcd.endpoint);
    let spawn = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        ManagerProc::spawn(
            &REEL,
            &d,
            ManagerArgs::new(&d, &tok).flags(&["--store", &store, "--name", name]),
        )
    };
    let mut a = spawn("a");
    let b = spawn("b");
    let managers = format!("{},{}", a.peer_url(), b.peer_url());
    let mut nodes = Vec::new();
    for name in ["n1", "n2"] {
        let (d, args) = node_args(dir.path(), name, &managers, &tok, "127.0.0.1:0", None);
        nodes.push(NodeProc::spawn(&REEL, &d, args));
    }
    a.wait_routable(&["n1", "n2"], Duration::from_secs(10));
    assert_eq!(a.cluster()["leader"], true, "the first manager leads");
    // The standby sends clients to the leader.
    let r = b.get("/assets/x");
    assert_eq!(r.status(), 307, "{}", r.text());
    assert!(r
        .header("reel-route")
        .unwrap_or_default()
        .starts_with("standby leader=a"));
    // An asset on both nodes.
    let body = content(31, 1 << 20);
    let bearer = format!("Bearer {token}");
    for n in &nodes {
        let r = n.request(
            "PUT",
            "/assets/film",
            &[("Authorization", bearer.as_str())],
            Some(&body),
        );
        assert_eq!(r.status(), 201, "{}", r.text());
    }
    let want = sha(&body);
    reel_testkit::poll(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || match fetch(b.addr(), "film") {
            Ok((200, got, _)) if sha(&got) == want => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // Load through the standby while the leader is killed.
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let (stop, addr, want) = (stop.clone(), b.addr(), want.clone());
        std::thread::spawn(move || {
            let mut outcomes = Vec::new();
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(20) {
                let ok = matches!(fetch(addr, "film"), Ok((200, got, _)) if sha(&got) == want);
                outcomes.push((Instant::now(), ok));
                std::thread::sleep(Duration::from_millis(10));
            }
            outcomes
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    a.kill9();
    let killed = Instant::now();
    // Routing resumes at the standby: it leads and routes to a node with the right bytes.
    let resumed =
        reel_testkit::poll(
            Duration::from_secs(6),
            Duration::from_millis(20),
            || match fetch(b.addr(), "film") {
                Ok((200, got, routes))
                    if sha(&got) == want && !routes[0].starts_with("standby") =>
                {
                    Ok(killed.elapsed())
                }
                other => Err(format!("{other:?}; b stderr:\n{}", b.stderr())),
            },
        );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let outcomes = loader.join().expect("loader");
    let last_failure = outcomes
        .iter()
        .filter(|(t, ok)| !ok && *t > killed)
        .map(|(t, _)| t.duration_since(killed))
        .max();
    eprintln!(
        "the standby routed {resumed:?} after the leader's kill; last failed request {last_failure:?} after; {} requests",
        outcomes.len()
    );
    assert!(
        resumed <= Duration::from_secs(3),
        "routing resumed after {resumed:?}"
    );
    assert!(
        last_failure.is_none_or(|d| d <= Duration::from_secs(3)),
        "a request failed {last_failure:?} after the kill"
    );
    assert_eq!(b.cluster()["leader"], true);
    b.wait_routable(&["n1", "n2"], Duration::from_secs(3));
    b.assert_no_panic("end");
    drop(nodes);
    drop(etcd);
}
