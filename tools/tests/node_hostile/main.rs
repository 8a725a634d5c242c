//! Hostile and malformed traffic against a real `reel node`, over real sockets.
//!
//! Each test formats a 1 GiB file volume, starts `reel node` on it (short timeouts so the
//! timeout cases are quick), stores known assets, and then sends a battery of requests that a
//! careless or malicious client could send. The node must answer each with a 4xx (one-line
//! `text/plain` body) or close the connection — never hang (every client socket has a read
//! timeout, and running into it fails the case), never crash, never store anything from a
//! rejected request, and never leak space, connections or file descriptors.
//!
//! The cases of the battery run one after another; a failing case is recorded and the battery
//! goes on, so one run names every failure. Temp files live under Cargo's target tmp dir.

use std::io::Write;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use reel_http::client::Conn;
use reel_testkit::content::content;
use reel_testkit::metrics::Metrics;
use reel_testkit::node::{NodeArgs, NodeProc};
use reel_testkit::wire::{
    assert_closes, find, is_reset, is_timeout, read_next, read_raw, read_response, request, send,
    Answer, Resp,
};
use reel_testkit::{excerpt, probe, text, Reel};

mod battery;
mod peer;

const REEL: Reel = reel_testkit::reel!();

/// A client read that waits this long for the node is a hang.
const HANG: Duration = Duration::from_secs(5);

/// The node's timeouts in the battery.
const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
const IDLE_TIMEOUT: Duration = Duration::from_secs(1);
const SEND_TIMEOUT: Duration = Duration::from_secs(1);
const BODY_TIMEOUT: Duration = Duration::from_secs(1);

const KNOWN_ID: &str = "known/clip-1.bin";
const KNOWN_SIZE: usize = (3 << 20) + 4321;
const BIG_ID: &str = "big/movie.bin";
const BIG_SIZE: usize = 64 << 20;

// ---------------------------------------------------------------------------------------------
// The node process

/// A `reel node` on a 1 GiB volume of its own; killed on drop.
struct Node {
    proc: NodeProc,
    addr: SocketAddr,
}

impl Node {
    /// Formats a 1 GiB volume and starts `reel node` on it with `flags`; `None` (after saying
    /// why) where io_uring is unavailable.
    fn start(test: &str, flags: &[&str]) -> Option<Node> {
        if !REEL.io_uring_or_skip(test) {
            return None;
        }
        let dir = REEL.tempdir("reel-hostile-");
        let vol = dir.path().join("vol");
        REEL.format(&vol, "1G");
        let proc = NodeProc::spawn_in(&REEL, dir, NodeArgs::new(&vol).flags(flags));
        let addr = proc.addr();
        Some(Node { proc, addr })
    }

    fn alive(&mut self) -> bool {
        self.proc.alive()
    }

    /// The inter-server listener (the node must have been started with `--peer-listen`).
    fn peer(&self) -> SocketAddr {
        self.proc.peer_addr()
    }

    fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Open file descriptors of the node process.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.proc.pid()))
            .expect("read /proc/PID/fd of the node")
            .count()
    }

    fn metrics(&self) -> Metrics {
        let r = get(self.addr, "/metrics", &[]);
        assert_eq!(r.status, 200, "GET /metrics: {}", excerpt(&r.body));
        Metrics(text(&r.body))
    }

    /// Scrapes until `pred` holds, failing after `within`.
    fn wait_metrics(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Metrics) -> bool,
    ) -> Metrics {
        let deadline = Instant::now() + within;
        loop {
            let m = self.metrics();
            if pred(&m) {
                return m;
            }
            if Instant::now() > deadline {
                panic!(
                    "{what}: not true within {within:?}; metrics now:\n{}",
                    m.summary()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the node holds no connection but the scrape's own, and returns the fd count.
    fn quiet_fds(&self) -> usize {
        self.wait_metrics("connections drain", Duration::from_secs(5), |m| {
            m.connections_open() <= 1
        });
        std::thread::sleep(Duration::from_millis(300));
        self.fds()
    }
}

/// The families of a scrape the battery reads.
trait Scrape {
    fn error(&self, kind: &str) -> u64;
    fn connections_open(&self) -> u64;
    fn used_bytes(&self) -> u64;
    fn assets(&self) -> u64;
    fn summary(&self) -> String;
}

impl Scrape for Metrics {
    fn error(&self, kind: &str) -> u64 {
        self.sum_where("reel_errors_total", &format!("kind=\"{kind}\""))
    }

    fn connections_open(&self) -> u64 {
        self.sum_where("reel_connections_open", "thread=")
    }

    fn used_bytes(&self) -> u64 {
        self.sum_where("reel_device_used_bytes", "tier=\"primary\"")
    }

    fn assets(&self) -> u64 {
        self.sum_where("reel_device_assets", "tier=\"primary\"")
    }

    fn summary(&self) -> String {
        self.lines_of(&[
            "reel_errors_total",
            "reel_connections_open",
            "reel_device_",
            "reel_requests_in_flight",
        ])
    }
}

// ---------------------------------------------------------------------------------------------
// Exchanges

fn connect(addr: SocketAddr) -> Conn {
    reel_testkit::wire::connect(addr, HANG)
}

fn exchange(addr: SocketAddr, req: &[u8], what: &str) -> (Conn, Answer) {
    let mut s = connect(addr);
    send(&mut s, req);
    let a = read_response(&mut s, req.starts_with(b"HEAD "), what);
    (s, a)
}

fn assert_one_line(r: &Resp, what: &str) {
    let body = text(&r.body);
    assert!(
        body.ends_with('\n') && body.matches('\n').count() == 1 && !body.trim().is_empty(),
        "{what}: the error body must be one line, got {body:?}"
    );
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("text/plain")),
        "{what}: error body not text/plain: {:?}",
        r.head
    );
}

/// `r` has one of the statuses `want` (`expected` says what was expected, for the message) and
/// a one-line text/plain body.
fn assert_refusal(r: &Resp, what: &str, want: &[u16], expected: &str) {
    assert!(
        want.contains(&r.status),
        "{what}: expected {expected}, got {}: {}",
        r.status,
        excerpt(&r.body)
    );
    assert_one_line(r, what);
}

/// The node must answer `req` with one of `want`, a one-line body, and then close.
fn rejects(addr: SocketAddr, what: &str, req: &[u8], want: &[u16]) -> Resp {
    let (mut s, a) = exchange(addr, req, what);
    let r = match a {
        Answer::Resp(r) => r,
        Answer::Closed(how) => panic!("{what}: closed ({how}) without the expected {want:?}"),
    };
    assert_refusal(&r, what, want, &format!("{want:?}"));
    assert!(
        r.closes(),
        "{what}: no `Connection: close` on {}: {:?}",
        r.status,
        r.head
    );
    assert_closes(&mut s, what);
    r
}

/// The node must answer with one of `want` (one-line body) and close, or just close.
fn rejects_or_closes(addr: SocketAddr, what: &str, req: &[u8], want: &[u16]) {
    let (mut s, a) = exchange(addr, req, what);
    if let Answer::Resp(r) = a {
        assert_refusal(&r, what, want, &format!("{want:?} or a close"));
        assert_closes(&mut s, what);
    }
}

fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Resp {
    let what = format!("GET {target}");
    match exchange(addr, &request("GET", target, headers, b""), &what).1 {
        Answer::Resp(r) => r,
        Answer::Closed(how) => panic!("{what}: closed ({how}) without an answer"),
    }
}

fn put(addr: SocketAddr, id: &str, body: &[u8]) {
    let what = format!("PUT /assets/{id}");
    let req = request("PUT", &format!("/assets/{id}"), &[], body);
    match exchange(addr, &req, &what).1 {
        Answer::Resp(r) => assert_eq!(r.status, 201, "{what}: {}", excerpt(&r.body)),
        Answer::Closed(how) => panic!("{what}: closed ({how})"),
    }
}

fn assert_absent(addr: SocketAddr, id: &str, what: &str) {
    let r = get(addr, &format!("/assets/{id}"), &[]);
    assert_eq!(
        r.status, 404,
        "{what}: {id} is visible after a rejected upload"
    );
}

/// Records failing cases and goes on, so one run names every failure.
#[derive(Default)]
struct Battery {
    failures: Vec<String>,
}

impl Battery {
    fn case(&mut self, name: &str, f: impl FnOnce()) {
        let t = Instant::now();
        let r = std::panic::catch_unwind(AssertUnwindSafe(f));
        let took = t.elapsed();
        match r {
            Ok(()) => eprintln!("case {name}: ok ({took:.2?})"),
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_else(|| "panic".into());
                eprintln!("case {name}: FAILED ({took:.2?}): {msg}");
                self.failures.push(format!("{name}: {msg}"));
            }
        }
    }

    fn finish(self, node: &mut Node) {
        let stderr = node.stderr();
        assert!(
            self.failures.is_empty(),
            "{} case(s) failed:\n  {}\nnode stderr:\n{stderr}",
            self.failures.len(),
            self.failures.join("\n  ")
        );
    }
}

#[test]
fn connection_limit_refuses_excess_and_recovers() {
    let Some(mut node) = Node::start(
        "connection_limit_refuses_excess_and_recovers",
        &[
            "--shards",
            "1",
            "--connections-per-shard-max",
            "4",
            "--idle-timeout",
            "20s",
            "--head-timeout",
            "5s",
        ],
    ) else {
        return;
    };
    let addr = node.addr;
    let base = node.metrics();
    let fds_before = node.quiet_fds();
    let mut b = Battery::default();
    b.case("excess connections get 503 or are closed", || {
        let mut socks: Vec<Conn> = (0..10).map(|_| connect(addr)).collect();
        std::thread::sleep(Duration::from_millis(300));
        let (mut served, mut refused_503, mut closed) = (0, 0, 0);
        let mut kept = Vec::new();
        for (i, mut s) in socks.drain(..).enumerate() {
            send(&mut s, b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n");
            match read_response(&mut s, false, &format!("connection {i}")) {
                Answer::Resp(r) if r.status == 200 => {
                    served += 1;
                    kept.push(s);
                }
                Answer::Resp(r) => {
                    assert_eq!(r.status, 503, "connection {i}: {}", excerpt(&r.body));
                    assert_one_line(&r, "503");
                    assert_closes(&mut s, "503");
                    refused_503 += 1;
                }
                Answer::Closed(_) => closed += 1,
            }
        }
        eprintln!("served {served}, 503 {refused_503}, closed {closed}");
        assert!(served <= 4, "{served} connections served over a limit of 4");
        assert!(
            refused_503 + closed >= 6,
            "only {} refused",
            refused_503 + closed
        );
        drop(kept);
        let m = node.wait_metrics("held connections close", HANG, |m| {
            m.connections_open() <= 1
        });
        assert!(
            m.error("connection_limit") >= base.error("connection_limit") + refused_503.max(1),
            "connection_limit not counted:\n{}",
            m.summary()
        );
        // Room again: four new connections are all served.
        let mut fresh: Vec<Conn> = (0..4).map(|_| connect(addr)).collect();
        for (i, s) in fresh.iter_mut().enumerate() {
            send(s, b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n");
            match read_response(s, false, &format!("fresh connection {i}")) {
                Answer::Resp(r) => assert_eq!(r.status, 200, "fresh connection {i}"),
                Answer::Closed(how) => panic!("fresh connection {i} closed ({how})"),
            }
        }
    });
    b.case("no leak after the limit", || {
        assert!(node.alive(), "the node process died");
        let fds_after = node.quiet_fds();
        assert!(
            fds_after <= fds_before + 4,
            "descriptors leaked: {fds_before} before, {fds_after} after"
        );
    });
    b.finish(&mut node);
}

/// With `--cluster-token-file`, writes and admin requests need `Authorization: Bearer <token>`:
/// none is a 401 with a challenge, a wrong one a 403, each a one-line reason that never echoes a
/// token, and nothing is stored; the right one passes; reads stay open; the token never reaches
/// the log.
#[test]
fn cluster_token_guards_writes_and_admin_but_not_reads() {
    let test = "cluster_token_guards_writes_and_admin_but_not_reads";
    const TOKEN: &str = "c1uster-T0ken-for-the-hostile-test";
    let dir = REEL.tempdir("reel-token-");
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).expect("write the token file");
    let path = file.to_str().expect("utf-8 path");
    let Some(node) = Node::start(test, &["--cluster-token-file", path]) else {
        return;
    };
    let auth = format!("Bearer {TOKEN}");
    let body = content(3, 100_000);
    // No token: 401 with the challenge; nothing stored.
    let req = request("PUT", "/assets/guarded", &[], &body);
    let r = rejects(node.addr, "PUT without the token", &req, &[401]);
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "{:?}",
        r.head
    );
    assert!(
        text(&r.body).contains("Authorization: Bearer"),
        "{}",
        text(&r.body)
    );
    assert_absent(node.addr, "guarded", "PUT without the token");
    // A wrong token: 403, nothing stored.
    let wrong = format!("Bearer {TOKEN}x");
    let req = request(
        "PUT",
        "/assets/guarded",
        &[("Authorization", &wrong)],
        &body,
    );
    let r = rejects(node.addr, "PUT with a wrong token", &req, &[403]);
    assert!(!text(&r.body).contains(TOKEN), "the reason echoes no token");
    assert_absent(node.addr, "guarded", "PUT with a wrong token");
    // The right token: stored, and readable without one.
    let req = request("PUT", "/assets/guarded", &[("Authorization", &auth)], &body);
    match exchange(node.addr, &req, "PUT with the token").1 {
        Answer::Resp(r) => assert_eq!(r.status, 201, "{}", excerpt(&r.body)),
        Answer::Closed(how) => panic!("PUT with the token: closed ({how})"),
    }
    let r = get(node.addr, "/assets/guarded", &[]);
    assert_eq!((r.status, r.body.len()), (200, body.len()));
    assert_eq!(r.body, body);
    assert_eq!(get(node.addr, "/assets/guarded/info", &[]).status, 200);
    assert_eq!(get(node.addr, "/migration", &[]).status, 200);
    // Deletes, policies and migration controls are guarded too.
    for (method, target) in [
        ("DELETE", "/assets/guarded"),
        ("PUT", "/assets/guarded/policy"),
        ("PUT", "/migration?paused=true"),
    ] {
        let req = request(method, target, &[], b"");
        let what = format!("{method} {target} without the token");
        let (_, a) = exchange(node.addr, &req, &what);
        match a {
            Answer::Resp(r) => assert_refusal(&r, &what, &[401], "401"),
            Answer::Closed(how) => panic!("{what}: closed ({how})"),
        }
    }
    assert_eq!(
        get(node.addr, "/assets/guarded", &[]).status,
        200,
        "still there"
    );
    let req = request(
        "DELETE",
        "/assets/guarded",
        &[("Authorization", &auth)],
        b"",
    );
    match exchange(node.addr, &req, "DELETE with the token").1 {
        Answer::Resp(r) => assert_eq!(r.status, 204, "{}", excerpt(&r.body)),
        Answer::Closed(how) => panic!("DELETE with the token: closed ({how})"),
    }
    assert_absent(node.addr, "guarded", "DELETE with the token");
    let m = node.metrics();
    assert!(
        m.sum_where("reel_errors_total", "kind=\"unauthorized\"") >= 5,
        "{}",
        m.summary()
    );
    assert!(!node.stderr().contains(TOKEN), "the token reached the log");
}

/// A token file that cannot serve stops the node at start with a message naming the file and
/// the fix, never the token.
#[test]
fn a_bad_cluster_token_file_is_refused_at_start() {
    let dir = REEL.tempdir("reel-token-");
    let vol = dir.path().join("vol");
    REEL.format(&vol, "64M");
    let file = dir.path().join("token");
    std::fs::write(&file, "short\n").expect("write");
    let out = REEL.run(&[
        "node",
        "--primary",
        vol.to_str().expect("utf-8"),
        "--listen",
        "127.0.0.1:0",
        "--cluster-token-file",
        file.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("token") && err.contains("base64"), "{err}");
    assert!(!err.contains("short\n"), "{err}");
}
