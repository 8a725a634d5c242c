//! Failover timings, for docs/benchmarks.md (ignored: a measurement, not a check; run with
//! `cargo test --release -p reel-tools --test cluster measure_failover -- --ignored
//! --nocapture`).
//!
//! - Node: kill -9 of a node holding one of two copies, under load through the manager; the
//!   time from the kill to the last request the manager sent to the dead node, and to the node
//!   leaving `/cluster`'s routable set. 10 rounds, the node restarted between them.
//! - Manager: two managers on etcd, kill -9 of the leader under load through the standby; the
//!   time from the kill to the first request routed to a node with the right bytes. 10 rounds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use reel_testkit::cluster::{etcd_probe, Etcd};
use reel_testkit::content::content;
use reel_testkit::node::{NodeArgs, NodeProc};
use reel_testkit::probe;

use super::e2e::{sha, split_location, Cluster};
use super::*;

const ROUNDS: usize = 10;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

#[test]
#[ignore = "a measurement for docs/benchmarks.md"]
fn measure_failover() {
    if !probe::runnable("measure_failover", &[&|| REEL.io_uring()]) {
        return;
    }
    let mut c = Cluster::start("measure-failover", &["n1", "n2"], &[]);
    let bearer = c.bearer();
    let body = content(41, 256 << 10);
    for n in ["n1", "n2"] {
        let r = c.node(n).request(
            "PUT",
            "/assets/f",
            &[("Authorization", bearer.as_str())],
            Some(&body),
        );
        assert_eq!(r.status(), 201, "{}", r.text());
    }
    let maddr = c.manager.addr();
    let (mut misroute, mut out) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        c.manager
            .wait_routable(&["n1", "n2"], Duration::from_secs(10));
        let dead = c.node("n1").addr();
        let stop = Arc::new(AtomicBool::new(false));
        let killed: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        let last = Arc::new(Mutex::new(None::<Instant>));
        let load = {
            let (stop, killed, last) = (stop.clone(), killed.clone(), last.clone());
            std::thread::spawn(move || {
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(20) {
                    let sent = Instant::now();
                    if let Ok(r) = http::request(maddr, "GET", "/assets/f", &[], None) {
                        if let Some(loc) = r.header("location") {
                            let (addr, _) = split_location(loc);
                            if addr == dead && killed.lock().expect("lock").is_some() {
                                *last.lock().expect("lock") = Some(sent);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        c.nodes.get_mut("n1").expect("n1").kill9();
        let k = Instant::now();
        *killed.lock().expect("lock") = Some(k);
        c.manager.wait_routable(&["n2"], Duration::from_secs(5));
        out.push(k.elapsed());
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        load.join().expect("load");
        let l = last
            .lock()
            .expect("lock")
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(k));
        misroute.push(l);
        eprintln!(
            "node round {round}: last misrouted {} after the kill, out of routing {}",
            ms(l),
            ms(out[round])
        );
        c.nodes.get_mut("n1").expect("n1").respawn();
    }
    let node_line = format!(
        "node kill -9: last request routed to it {} (max {}), out of routing {} (max {}), median of {ROUNDS}",
        ms(median(misroute.clone())),
        ms(misroute.iter().copied().max().unwrap_or_default()),
        ms(median(out.clone())),
        ms(out.iter().copied().max().unwrap_or_default()),
    );
    drop(c);

    if etcd_probe().is_some() {
        eprintln!("{node_line}\nmanager failover: SKIPPED (etcd not installed)");
        return;
    }
    let dir = REEL.tempdir("reel-measure-etcd-");
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
    let mut ms_ = [spawn("a"), spawn("b")];
    let managers = format!("{},{}", ms_[0].peer_url(), ms_[1].peer_url());
    let mut nodes = Vec::new();
    for name in ["n1", "n2"] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("dir");
        let (p, s) = (d.join("primary"), d.join("secondary"));
        REEL.format(&p, "64M");
        REEL.format(&s, "256M");
        let args = NodeArgs::new(&p).secondary(&s).shards(1).flags(&[
            "--manager",
            &managers,
            "--peer-listen",
            "127.0.0.1:0",
            "--node-name",
            name,
            "--cluster-token-file",
            tok.to_str().expect("utf-8"),
        ]);
        nodes.push(NodeProc::spawn(&REEL, &d, args));
    }
    let bearer = format!("Bearer {token}");
    for n in &nodes {
        let r = n.request(
            "PUT",
            "/assets/f",
            &[("Authorization", bearer.as_str())],
            Some(&body),
        );
        assert_eq!(r.status(), 201, "{}", r.text());
    }
    let want = sha(&body);
    let mut resumed = Vec::new();
    for round in 0..ROUNDS {
        // The leader is whichever says so; the other stands by.
        let leader = reel_testkit::poll(Duration::from_secs(10), Duration::from_millis(50), || {
            ms_.iter()
                .position(|m| m.cluster()["leader"] == true && m.routable_nodes().len() == 2)
                .ok_or_else(|| "no leader with both nodes yet".to_string())
        });
        let standby = 1 - leader;
        let saddr = ms_[standby].addr();
        ms_[leader].kill9();
        let k = Instant::now();
        let t = reel_testkit::poll(Duration::from_secs(10), Duration::from_millis(10), || {
            let mut addr = saddr;
            let mut target = "/assets/f".to_string();
            for _ in 0..3 {
                let r =
                    http::request(addr, "GET", &target, &[], None).map_err(|e| e.to_string())?;
                match r.status() {
                    307 => {
                        let route = r.header("reel-route").unwrap_or_default().to_string();
                        (addr, target) = split_location(r.header("location").ok_or("no Location")?);
                        if route.starts_with("standby") {
                            continue;
                        }
                    }
                    200 if sha(&r.body) == want => return Ok(k.elapsed()),
                    s => return Err(format!("{s}")),
                }
            }
            Err("not routed yet".into())
        });
        resumed.push(t);
        eprintln!(
            "manager round {round}: routing resumed {} after the leader's kill",
            ms(t)
        );
        ms_[leader].respawn();
    }
    eprintln!(
        "\n{node_line}\nmanager kill -9 (etcd, 2 managers): routing resumed {} (max {}), median of {ROUNDS}",
        ms(median(resumed.clone())),
        ms(resumed.iter().copied().max().unwrap_or_default()),
    );
    drop(nodes);
    drop(etcd);
}
