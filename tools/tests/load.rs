//! `reel load` end to end: the real binary against a real `reel node` process on loopback.
//!
//! Each test formats its own small volume under Cargo's target tmp dir (not /tmp, which may be
//! tmpfs without O_DIRECT), starts a node with one shard, uploads assets with a plain HTTP PUT
//! and runs `reel load` with `--json`, then checks the JSON against the schedule it asked for
//! and against the node's own `/metrics`. A test that needs a node skips, saying why, when
//! io_uring is unavailable. Runs are short (at most 3 s of load each). Redirects are tested
//! against two stub servers in the test (a redirector and a stub that serves bytes).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reel_testkit::content::content;
use reel_testkit::node::{NodeArgs, NodeProc};
use reel_testkit::{path_str, text, Reel};
use serde_json::Value;

const REEL: Reel = reel_testkit::reel!();

/// A `reel node` process on a fresh volume of its own; killed on drop (before its directory
/// goes).
struct Node {
    proc: NodeProc,
    addr: String,
    dir: tempfile::TempDir,
}

impl Node {
    /// Formats a 256 MiB volume and starts a node with one shard on it, or `None` (having said
    /// why) when io_uring is unavailable.
    fn start(test: &str) -> Option<Node> {
        if !REEL.io_uring_or_skip(test) {
            return None;
        }
        let dir = REEL.tempdir("reel-load-");
        let vol = dir.path().join("vol");
        REEL.format(&vol, "256M");
        let proc = NodeProc::spawn(&REEL, dir.path(), NodeArgs::new(&vol).shards(1));
        let addr = proc.addr().to_string();
        Some(Node { proc, addr, dir })
    }

    /// Uploads `len` bytes of generated content as `id`.
    fn put(&self, id: &str, len: usize) {
        self.proc.put(id, &content(len as u64, len));
    }

    /// The sum of a metric over all its label sets.
    fn metric(&self, name: &str) -> u64 {
        self.proc.metrics().sum(name)
    }

    /// How many requests the node's rate counter has for an asset (`/assets/{id}/info`).
    fn requests_of(&self, id: &str) -> u64 {
        let v = self
            .proc
            .info(id)
            .unwrap_or_else(|| panic!("GET /assets/{id}/info: 404"));
        v["rate"]["requests"]
            .as_u64()
            .unwrap_or_else(|| panic!("no rate.requests in {v}"))
    }

    fn stderr(&self) -> String {
        self.proc.stderr()
    }
}

/// `reel load ARGS`; its output and, when it succeeded, its `--json` summary.
fn load(dir: &Path, args: &[&str]) -> (Output, Option<Value>) {
    let json = dir.join(format!(
        "summary-{}.json",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos()
    ));
    let out = Command::new(REEL.bin)
        .arg("load")
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("reel load runs");
    let summary = out.status.success().then(|| {
        let bytes = std::fs::read(&json).expect("the --json file was written");
        serde_json::from_slice(&bytes).expect("the --json file is JSON")
    });
    (out, summary)
}

/// `reel load ARGS` that must fail: its stderr.
fn load_fails(args: &[&str]) -> String {
    REEL.fails(&[&["load"], args].concat())
}

fn field(v: &Value, name: &str) -> f64 {
    v[name]
        .as_f64()
        .unwrap_or_else(|| panic!("no number {name:?} in {v}"))
}

/// Asserts the run succeeded and returns its JSON summary.
fn succeeded(node: &Node, what: &str, (out, summary): (Output, Option<Value>)) -> Value {
    assert!(
        out.status.success(),
        "{what}: reel load failed\nstdout:\n{}\nstderr:\n{}\nnode stderr:\n{}",
        text(&out.stdout),
        text(&out.stderr),
        node.stderr()
    );
    let s = summary.expect("a JSON summary");
    eprintln!("{what}: {}", text(&out.stdout));
    s
}

#[test]
fn constant_rate_ranges_meet_the_schedule() {
    let Some(node) = Node::start("constant_rate_ranges_meet_the_schedule") else {
        return;
    };
    // The last range of each is clipped; the smallest asset is one 4 KiB range.
    let sizes = [(1 << 20) + 123, (300 << 10) + 7, 4 << 10];
    for (i, size) in sizes.iter().enumerate() {
        node.put(&format!("lib/a{i}"), *size);
    }
    let before = node.metric("reel_requests_total");
    let s = succeeded(
        &node,
        "constant",
        load(
            node.dir.path(),
            &[
                "--target",
                &node.addr,
                "--assets",
                "lib/a0,lib/a1,lib/a2",
                "--rate",
                "200",
                "--duration",
                "3s",
                "--range-bytes",
                "64K",
                "--connections",
                "8",
                "--interval",
                "1s",
            ],
        ),
    );
    let after = node.metric("reel_requests_total");
    let requests = field(&s, "requests");
    assert_eq!(field(&s, "offered"), 600.0, "{s}");
    assert!((570.0..=630.0).contains(&requests), "{s}");
    assert_eq!(field(&s, "errors"), 0.0, "{s}");
    let (offered, achieved) = (field(&s, "offered_per_s"), field(&s, "completed_per_s"));
    assert!((offered - 200.0).abs() < 1.0, "{s}");
    assert!((achieved - offered).abs() <= offered * 0.05, "{s}");
    assert!(field(&s, "p99_us") > 0.0, "{s}");
    for q in ["p50_us", "p90_us", "p99_us", "p999_us", "max_us"].windows(2) {
        assert!(
            field(&s, q[0]) <= field(&s, q[1]),
            "{} > {}: {s}",
            q[0],
            q[1]
        );
    }
    // Every range is 4 KiB to 64 KiB.
    let bytes = field(&s, "bytes");
    assert!(
        bytes >= requests * 4096.0 && bytes <= requests * 65536.0,
        "{s}"
    );
    assert!((field(&s, "bytes_per_s") - bytes / 3.0).abs() < 1.0, "{s}");
    for name in ["late", "duration_s"] {
        field(&s, name);
    }
    assert!(
        after - before >= requests as u64,
        "the node answered {} requests, reel load counted {requests}",
        after - before
    );
}

#[test]
fn poisson_arrivals_with_zipf_popularity() {
    let Some(node) = Node::start("poisson_arrivals_with_zipf_popularity") else {
        return;
    };
    for id in ["hot", "warm", "cold"] {
        node.put(id, 512 << 10);
    }
    let log = node.dir.path().join("latency.csv");
    let unix_s = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64()
    };
    let before = unix_s();
    let s = succeeded(
        &node,
        "poisson",
        load(
            node.dir.path(),
            &[
                "--latency-log",
                path_str(&log),
                "--target",
                &format!("http://{}", node.addr),
                "--assets",
                "hot,warm,cold",
                "--rate",
                "200",
                "--duration",
                "3s",
                "--arrival",
                "poisson",
                "--seed",
                "7",
                "--popularity",
                "zipf:1.0",
                "--range-bytes",
                "16K",
                "--connections",
                "8",
            ],
        ),
    );
    let requests = field(&s, "requests");
    assert!((510.0..=690.0).contains(&requests), "{s}");
    assert_eq!(field(&s, "errors"), 0.0, "{s}");
    assert_eq!(field(&s, "offered"), requests, "{s}");
    // --latency-log: one line per measured request, its intended start in Unix time within
    // the run, its latency, valid.
    let after = unix_s();
    let csv = std::fs::read_to_string(&log).expect("the --latency-log file was written");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("intended_unix_us,latency_us,ok"));
    let mut starts = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 3, "{line}");
        let t = f[0].parse::<f64>().expect("intended_unix_us") / 1e6;
        assert!(before <= t && t <= after, "{t} outside {before}..{after}");
        assert!(f[1].parse::<u64>().expect("latency_us") > 0, "{line}");
        assert_eq!(f[2], "1", "{line}");
        starts.push(t);
    }
    assert_eq!(starts.len() as f64, requests, "a line per request");
    starts.sort_by(f64::total_cmp);
    let span = starts[starts.len() - 1] - starts[0];
    assert!(
        (2.5..=3.0).contains(&span),
        "arrivals span {span} s of the 3 s run"
    );
    // Zipf(1) over three ranks: about 55%, 27%, 18%, as the node counted them.
    let [hot, warm, cold] = ["hot", "warm", "cold"].map(|id| node.requests_of(id));
    assert!(
        hot > warm && warm > cold,
        "hot {hot}, warm {warm}, cold {cold}"
    );
    assert!(hot as f64 > requests * 0.45, "hot {hot} of {requests}");
}

#[test]
fn whole_assets_count_every_byte() {
    let Some(node) = Node::start("whole_assets_count_every_byte") else {
        return;
    };
    let size = (256 << 10) + 5;
    node.put("whole", size);
    let s = succeeded(
        &node,
        "whole",
        load(
            node.dir.path(),
            &[
                "--target",
                &node.addr,
                "--assets",
                "whole",
                "--rate",
                "50",
                "--duration",
                "1s",
                "--range-bytes",
                "0",
            ],
        ),
    );
    let requests = field(&s, "requests");
    assert_eq!(requests, 50.0, "{s}");
    assert_eq!(field(&s, "errors"), 0.0, "{s}");
    assert_eq!(field(&s, "bytes"), requests * size as f64, "{s}");
}

#[test]
fn all_assets_with_warmup_and_ctrl_c() {
    let Some(node) = Node::start("all_assets_with_warmup_and_ctrl_c") else {
        return;
    };
    for i in 0..5 {
        node.put(&format!("x/{i}"), 100_000);
    }
    let json = node.dir.path().join("interrupted.json");
    let child = Command::new(REEL.bin)
        .args([
            "load",
            "--target",
            &node.addr,
            "--all-assets",
            "--rate",
            "100",
        ])
        .args([
            "--duration",
            "20s",
            "--warmup",
            "500ms",
            "--range-bytes",
            "32K",
        ])
        .arg("--json")
        .arg(&json)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reel load");
    std::thread::sleep(Duration::from_millis(2000));
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success(), "kill -INT failed");
    let out = child.wait_with_output().expect("reel load ends");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "reel load after Ctrl-C: {stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("interrupted"), "{stdout}");
    let s: Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the --json file")).expect("JSON");
    assert_eq!(s["interrupted"], Value::Bool(true), "{s}");
    assert_eq!(field(&s, "assets"), 5.0, "{s}");
    let d = field(&s, "duration_s");
    assert!(
        (0.5..3.0).contains(&d),
        "measured {d} s after a 0.5 s warmup: {s}"
    );
    // The warmup's 50 requests are left out.
    let requests = field(&s, "requests");
    assert!((requests - d * 100.0).abs() <= 15.0, "{s}");
    assert_eq!(field(&s, "errors"), 0.0, "{s}");
    assert_eq!(field(&s, "unsent"), 0.0, "{s}");
}

#[test]
fn unknown_asset_is_named_before_any_load() {
    let Some(node) = Node::start("unknown_asset_is_named_before_any_load") else {
        return;
    };
    node.put("real", 10_000);
    let before = node.metric("reel_requests_total");
    let err = load_fails(&[
        "--target",
        &node.addr,
        "--assets",
        "real,no/such-asset",
        "--rate",
        "1000",
        "--duration",
        "2s",
    ]);
    assert!(err.contains("\"no/such-asset\" not found"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // Two HEADs and the first /metrics scrape, not a second of load.
    let after = node.metric("reel_requests_total");
    assert!(after - before <= 5, "{} requests answered", after - before);
}

#[test]
fn bad_arguments_are_refused() {
    // An address nobody listens on: bind a port, then free it.
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("address")
        .port();
    let target = format!("127.0.0.1:{port}");
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--target", &target, "--assets", "a", "--duration", "1s"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |extra: &[&str]| {
        let args = base(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        load_fails(&args)
    };
    let err = run(&["--rate", "10"]);
    assert!(
        err.contains(&format!(
            "cannot connect to {target}: connection refused; is `reel node` listening there?"
        )),
        "{err}"
    );
    let err = run(&["--rate", "0"]);
    assert!(
        err.contains("--rate") && err.contains("greater than 0"),
        "{err}"
    );
    let err = run(&["--rate", "10", "--popularity", "zipf:0"]);
    assert!(err.contains("zipf:1.0"), "{err}");
    // (target, assets, duration, what the error names), each at --rate 5.
    for (to, assets, duration, expected) in [
        (target.as_str(), "a", "0", "greater than zero"),
        (target.as_str(), ",", "1", "no assets given"),
        ("localhost", "a", "1", "HOST:PORT"),
        ("https://127.0.0.1:1", "a", "1", "https is not supported"),
    ] {
        let err = load_fails(&[
            "--target",
            to,
            "--assets",
            assets,
            "--rate",
            "5",
            "--duration",
            duration,
        ]);
        assert!(err.contains(expected), "{err}");
    }
}

/// How long a stub server accepts connections and waits on a quiet one.
const STUB_LIFE: Duration = Duration::from_secs(30);
const STUB_IDLE: Duration = Duration::from_secs(5);

/// A stub HTTP/1.1 server on a free loopback port, answering each request head with
/// `answer(method, target)` on kept-alive connections; it counts the GETs it answered. It stops
/// accepting after [`STUB_LIFE`], and a connection quiet for [`STUB_IDLE`] is closed.
struct Stub {
    port: u16,
    gets: Arc<AtomicU64>,
}

impl Stub {
    fn start(answer: impl Fn(&str, &str) -> Vec<u8> + Send + Sync + 'static) -> Stub {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("non-blocking");
        let port = l.local_addr().expect("addr").port();
        let gets = Arc::new(AtomicU64::new(0));
        let (answer, g) = (Arc::new(answer), gets.clone());
        std::thread::spawn(move || {
            let until = std::time::Instant::now() + STUB_LIFE;
            while std::time::Instant::now() < until {
                match l.accept() {
                    Ok((s, _)) => {
                        let (answer, g) = (answer.clone(), g.clone());
                        std::thread::spawn(move || serve(s, &*answer, &g));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Stub { port, gets }
    }

    fn authority(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Serves one connection: a response per request head until the client closes or goes quiet.
fn serve(mut s: std::net::TcpStream, answer: &dyn Fn(&str, &str) -> Vec<u8>, gets: &AtomicU64) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(STUB_IDLE));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 4);
            let mut line = head.lines().next().unwrap_or_default().split(' ');
            let (method, target) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
            if method == "GET" {
                gets.fetch_add(1, Ordering::Relaxed);
            }
            if s.write_all(&answer(method, target)).is_err() {
                return;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 1 << 20 {
            return;
        }
    }
}

/// A response with `status`, extra header lines and a body (left out for a HEAD).
fn reply(method: &str, status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        r.extend_from_slice(body);
    }
    r
}

/// A redirector answering every `/assets/{id}` with a 307 to the same path on `to`.
fn redirector(to: String) -> Stub {
    Stub::start(move |method, target| {
        let route = "Reel-Route: primary node=stub\r\n";
        reply(
            method,
            "307 Temporary Redirect",
            &format!("Location: http://{to}{target}\r\n{route}"),
            b"redirected",
        )
    })
}

/// A stub serving 1000 bytes for every asset.
fn bytes_stub() -> Stub {
    Stub::start(|method, _| reply(method, "200 OK", "", &[7u8; 1000]))
}

fn redirect_run(extra: &[&str]) -> (Value, String, u64) {
    let node = bytes_stub();
    let router = redirector(node.authority());
    let dir = REEL.tempdir("reel-load-redirect-");
    let target = router.authority();
    let mut args = vec![
        "--target",
        &target,
        "--assets",
        "a,b/c",
        "--rate",
        "100",
        "--duration",
        "1s",
        "--connections",
        "4",
    ];
    args.extend_from_slice(extra);
    let (out, summary) = load(dir.path(), &args);
    assert!(
        out.status.success(),
        "reel load failed\nstdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let s = summary.expect("a JSON summary");
    (s, text(&out.stdout), node.gets.load(Ordering::Relaxed))
}

#[test]
fn redirects_are_followed_and_their_share_reported() {
    let (s, stdout, node_gets) = redirect_run(&["--range-bytes", "0"]);
    assert_eq!(field(&s, "requests"), 100.0, "{s}");
    assert_eq!(field(&s, "errors"), 0.0, "{s}");
    assert_eq!(field(&s, "bytes"), 100_000.0, "{s}");
    assert_eq!(s["follow_redirects"], Value::Bool(true), "{s}");
    assert_eq!(field(&s, "redirected"), 100.0, "{s}");
    assert_eq!(field(&s, "redirect_hops"), 100.0, "{s}");
    assert!(field(&s, "redirect_p50_us") > 0.0, "{s}");
    assert!(
        field(&s, "redirect_p50_us") <= field(&s, "redirect_p99_us"),
        "{s}"
    );
    let share = field(&s, "redirect_share");
    assert!(share > 0.0 && share < 1.0, "{s}");
    assert!(stdout.contains("% of latency"), "{stdout}");
    assert_eq!(node_gets, 100, "every request reached the second server");
}

#[test]
fn no_follow_counts_each_redirect_as_the_answer() {
    let (s, stdout, node_gets) = redirect_run(&["--no-follow"]);
    assert_eq!(field(&s, "requests"), 100.0, "{s}");
    assert_eq!(field(&s, "errors"), 0.0, "{s}");
    assert_eq!(field(&s, "bytes"), 0.0, "{s}");
    assert_eq!(s["follow_redirects"], Value::Bool(false), "{s}");
    assert_eq!(field(&s, "redirected"), 100.0, "{s}");
    assert_eq!(field(&s, "redirect_hops"), 0.0, "{s}");
    assert!(field(&s, "p50_us") > 0.0, "{s}");
    assert!(stdout.contains("--no-follow"), "{stdout}");
    assert_eq!(node_gets, 0, "nothing reached the second server");
    // Ranges need sizes, which --no-follow does not ask.
    let err = load_fails(&[
        "--target",
        "127.0.0.1:1",
        "--assets",
        "a",
        "--rate",
        "5",
        "--duration",
        "1s",
        "--no-follow",
        "--range-bytes",
        "64K",
    ]);
    assert!(err.contains("--no-follow"), "{err}");
}

#[test]
fn an_assets_file_lists_the_ids() {
    let node = bytes_stub();
    let router = redirector(node.authority());
    let dir = REEL.tempdir("reel-load-file-");
    let list = dir.path().join("ids.txt");
    std::fs::write(&list, "# most popular first\nx/1\n\nx/2\nx/3\n").expect("write the list");
    let target = router.authority();
    let (out, summary) = load(
        dir.path(),
        &[
            "--target",
            &target,
            "--assets-file",
            path_str(&list),
            "--rate",
            "50",
            "--duration",
            "1s",
            "--no-follow",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = summary.expect("a JSON summary");
    assert_eq!(field(&s, "assets"), 3.0, "{s}");
    assert_eq!(field(&s, "requests"), 50.0, "{s}");
    std::fs::write(&list, "x/1\nbad id\n").expect("write the list");
    let err = load_fails(&[
        "--target",
        &target,
        "--assets-file",
        path_str(&list),
        "--rate",
        "5",
        "--duration",
        "1s",
    ]);
    assert!(err.contains("line 2"), "{err}");
}
