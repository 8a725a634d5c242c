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
use reel_testkit::node::NodeProc;
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
        let (d, args) = node_args(dir.path(), name, &managers, &tok, "127.0.0.1:0", None);
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
            // A standby answers /cluster with a redirect to the leader.
            ms_.iter()
                .position(|m| {
                    m.try_request("GET", "/cluster", &[], None)
                        .is_ok_and(|r| r.status() == 200)
                        && m.routable_nodes().len() == 2
                })
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

/// Relayed against direct bytes/s with links shaped like a network's (ignored: run with
/// `cargo test --release -p reel-tools --test cluster measure_relay -- --ignored --nocapture`;
/// `REEL_LINK_RATE` sets the links' rate, `1gbit` by default). Each host's egress on both
/// networks goes through a token bucket (`tc tbf`), so both paths are limited by links, as
/// between machines, rather than by the cores the holder, the relay and the client share here.
#[test]
#[ignore = "a measurement for docs/benchmarks.md"]
fn measure_relay() {
    use reel_testkit::netns::{self, Net};
    let test = "measure_relay";
    if !probe::runnable(test, &[&|| REEL.io_uring(), &netns::probe]) {
        return;
    }
    let rate = std::env::var("REEL_LINK_RATE").unwrap_or_else(|_| "1gbit".into());
    let dir = REEL.tempdir("reel-measure-relay-");
    let tok = token_file(dir.path());
    let token = read_token(&tok);
    let mut net = Net::new();
    let mh = net.host("m", 1, true);
    let h1 = net.host("n1", 11, true);
    let h3 = net.host("n3", 13, true);
    for h in [&h1, &h3] {
        for dev in ["etha", "ethi"] {
            let st = std::process::Command::new("ip")
                .args([
                    "netns", "exec", &h.ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                ])
                .args(["rate", &rate, "burst", "512kb", "latency", "50ms"])
                .status()
                .expect("tc");
            assert!(st.success(), "tc on {} {dev}", h.ns);
        }
    }
    let zones = dir.path().join("zones.toml");
    std::fs::write(
        &zones,
        format!(
            "[[zone]]\nnode = \"n3\"\nclients = [\"{}/32\"]\n",
            net.client
        ),
    )
    .expect("zones");
    let inter = |h: &netns::Host| h.inter.expect("inter");
    let manager = ManagerProc::spawn(
        &REEL,
        dir.path(),
        ManagerArgs::new(dir.path(), &tok)
            .listen(
                &format!("{}:7000", mh.access),
                &format!("{}:7100", inter(&mh)),
            )
            .wrap(mh.wrap())
            .flags(&["--config", zones.to_str().expect("utf-8")]),
    );
    let mut nodes = Vec::new();
    for (name, h) in [("n1", &h1), ("n3", &h3)] {
        let (d, args) = node_args(
            dir.path(),
            name,
            &format!("http://{}:7100", inter(&mh)),
            &tok,
            &format!("{}:8100", inter(h)),
            Some("1G"),
        );
        let args = args.listen(&format!("{}:8080", h.access)).wrap(h.wrap());
        nodes.push(NodeProc::spawn(&REEL, &d, args));
    }
    manager.wait_routable(&["n1", "n3"], Duration::from_secs(10));
    let size = 256usize << 20;
    let body = content(51, size);
    let bearer = format!("Bearer {token}");
    let r = nodes[0].request(
        "PUT",
        "/assets/big",
        &[("Authorization", bearer.as_str())],
        Some(&body),
    );
    assert_eq!(r.status(), 201, "{}", r.text());
    let want = sha(&body);
    drop(body);
    let rate_of = |target_near: &str| -> (f64, f64) {
        let r = manager.get(&format!("/assets/big?near={target_near}"));
        assert_eq!(r.status(), 307, "{}", r.text());
        let (addr, t) = split_location(r.header("location").expect("Location"));
        let cpu0 = super::measure::cpu_s(nodes[1].pid());
        let t0 = Instant::now();
        let g = http::request(addr, "GET", &t, &[], None).expect("GET");
        let secs = t0.elapsed().as_secs_f64();
        let cpu = super::measure::cpu_s(nodes[1].pid()) - cpu0;
        assert_eq!(g.status(), 200);
        assert_eq!(sha(&g.body), want);
        (
            size as f64 / secs / 1e6,
            cpu / (size as f64 / (1u64 << 30) as f64),
        )
    };
    let (mut direct, mut relayed, mut relay_cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        direct.push(rate_of("n1").0);
        let (r, cpu) = rate_of("n3");
        relayed.push(r);
        relay_cpu.push(cpu);
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (d, r) = (med(direct.clone()), med(relayed.clone()));
    eprintln!(
        "links {rate}: direct {d:.0} MB/s {direct:.0?}, relayed {r:.0} MB/s {relayed:.0?}, ratio {:.2}; relay node CPU {:.2} s/GiB",
        r / d,
        med(relay_cpu)
    );
    drop(nodes);
    drop(manager);
    drop(net);
}

/// utime + stime of process `pid`, in seconds.
pub fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of /proc/PID/stat (1-based), i.e. 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}
