//! The one `reel node` process harness: spawn with arguments, wait for its "listening on"
//! line, then `kill -9`, restart on the same (or other) volumes, stop cleanly; killed on drop.
//!
//! A cluster harness (several nodes and a manager) belongs in a `cluster` module next to this
//! one, built from [`NodeProc`]s.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reel_http::client::{ClientError, Conn, Response};

use crate::metrics::Metrics;
use crate::{http, path_str, poll, Reel};

/// A tier policy that acts within seconds instead of hours: a 2 s rate half-life, promote above
/// 10,000 views/h (about 3 views in a second), demote below 5,000 views/h.
pub const FAST_POLICY_FLAGS: &[&str] = &[
    "--rate-half-life",
    "2s",
    "--promote-per-h",
    "10000",
    "--demote-per-h",
    "5000",
];

/// How long a node may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The arguments of `reel node`.
#[derive(Clone, Debug)]
pub struct NodeArgs {
    pub primary: PathBuf,
    pub secondary: Option<PathBuf>,
    pub shards: Option<usize>,
    /// The access listener (default `127.0.0.1:0`).
    pub listen: String,
    /// A command the node runs under (e.g. `ip netns exec NS`), empty for none.
    pub wrap: Vec<String>,
    /// Further flags, after the volumes and `--listen`.
    pub extra: Vec<String>,
}

impl NodeArgs {
    /// A node on `primary`, listening on an ephemeral loopback port, default flags.
    pub fn new(primary: &Path) -> NodeArgs {
        NodeArgs {
            primary: primary.to_path_buf(),
            secondary: None,
            shards: None,
            listen: "127.0.0.1:0".into(),
            wrap: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Listens on `addr` instead of an ephemeral loopback port.
    pub fn listen(mut self, addr: &str) -> NodeArgs {
        self.listen = addr.to_string();
        self
    }

    /// Runs the node under `wrap` (e.g. `ip netns exec NS`, from `netns::Host::wrap`).
    pub fn wrap(mut self, wrap: Vec<String>) -> NodeArgs {
        self.wrap = wrap;
        self
    }

    pub fn secondary(mut self, path: &Path) -> NodeArgs {
        self.secondary = Some(path.to_path_buf());
        self
    }

    pub fn shards(mut self, n: usize) -> NodeArgs {
        self.shards = Some(n);
        self
    }

    pub fn flags(mut self, flags: &[&str]) -> NodeArgs {
        self.extra.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    fn command(&self, bin: &str) -> Command {
        let mut c = match self.wrap.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        c.args(["node", "--primary", path_str(&self.primary)]);
        if let Some(s) = &self.secondary {
            c.args(["--secondary", path_str(s)]);
        }
        c.args(["--listen", &self.listen]);
        if let Some(n) = self.shards {
            c.args(["--shards", &n.to_string()]);
        }
        c.args(&self.extra);
        c
    }
}

/// A running `reel node`; its stderr goes to `node-<life>.stderr` in its directory.
pub struct NodeProc {
    reel: Reel,
    dir: PathBuf,
    pub args: NodeArgs,
    child: Child,
    addr: SocketAddr,
    /// The inter-server listener's address (`--peer-listen`), if the node has one.
    peer: Option<SocketAddr>,
    stderr_path: PathBuf,
    /// Processes started so far (the current one included).
    lives: usize,
    /// Scratch files made so far ([`NodeProc::scratch`]).
    files: AtomicUsize,
    /// The directory, when the node owns it: removed after the process is killed.
    _owned: Option<tempfile::TempDir>,
}

impl NodeProc {
    /// Starts `reel node ARGS`, stderr into `dir`, and waits for its address.
    pub fn spawn(reel: &Reel, dir: &Path, args: NodeArgs) -> NodeProc {
        let (child, (addr, peer), stderr_path) = start(reel, dir, &args, 0);
        NodeProc {
            reel: *reel,
            dir: dir.to_path_buf(),
            args,
            child,
            addr,
            peer,
            stderr_path,
            lives: 1,
            files: AtomicUsize::new(0),
            _owned: None,
        }
    }

    /// [`NodeProc::spawn`] in `dir`, which the node keeps until it is dropped.
    pub fn spawn_in(reel: &Reel, dir: tempfile::TempDir, args: NodeArgs) -> NodeProc {
        let mut node = NodeProc::spawn(reel, dir.path(), args);
        node._owned = Some(dir);
        node
    }

    /// The directory of the node's stderr files and scratch files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh scratch path in the node's directory.
    pub fn scratch(&self, what: &str) -> PathBuf {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{what}-{n}"))
    }

    /// Writes `bytes` to a scratch file; its path.
    pub fn file_of(&self, bytes: &[u8]) -> PathBuf {
        let p = self.scratch("src");
        std::fs::write(&p, bytes).expect("write source file");
        p
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The inter-server listener's address; the node must have one (`--peer-listen`).
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer.unwrap_or_else(|| {
            panic!(
                "the node printed no inter-server listener (no --peer-listen?); stderr:\n{}",
                self.stderr()
            )
        })
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Which process this is: 0 for the first, one more per restart.
    pub fn life(&self) -> usize {
        self.lives - 1
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process has not exited.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The current process's stderr so far, for failure messages.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// No thread of this process panicked.
    pub fn assert_no_panic(&self, when: &str) {
        let err = self.stderr();
        assert!(
            !err.contains("panicked"),
            "the node panicked ({when}); stderr:\n{err}"
        );
    }

    /// SIGKILL, and reap.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the node");
        self.child.wait().expect("reap the node");
    }

    /// `kill -9`, then a new process with [`NodeProc::args`] (change them first to restart on
    /// other volumes or flags).
    pub fn restart(&mut self) {
        self.kill9();
        self.respawn();
    }

    /// A new process with [`NodeProc::args`] after this one exited ([`NodeProc::kill9`],
    /// [`NodeProc::stop`]).
    pub fn respawn(&mut self) {
        let (child, (addr, peer), stderr_path) =
            start(&self.reel, &self.dir, &self.args, self.lives);
        self.lives += 1;
        self.child = child;
        self.addr = addr;
        self.peer = peer;
        self.stderr_path = stderr_path;
    }

    /// SIGTERM (the `kill` command), and wait up to 15 s for a clean exit.
    pub fn stop(&mut self) {
        self.stop_within(Duration::from_secs(15));
    }

    /// SIGTERM (the `kill` command), and wait up to `within` for a clean exit.
    pub fn stop_within(&mut self, within: Duration) {
        let pid = self.child.id().to_string();
        let st = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM {pid}: {st}");
        let status = poll(within, Duration::from_millis(50), || {
            self.child
                .try_wait()
                .expect("poll the node")
                .ok_or_else(|| {
                    format!(
                        "HANG: the node did not stop within {within:?} of SIGTERM; stderr:\n{}",
                        self.stderr()
                    )
                })
        });
        assert!(
            status.success(),
            "the node exited with {status} on SIGTERM; stderr:\n{}",
            self.stderr()
        );
    }

    /// A fresh connection.
    pub fn conn(&self) -> Conn {
        http::connect(self.addr)
    }

    /// One request on a fresh connection, or the client's error.
    pub fn try_request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        http::request(self.addr, method, target, headers, body)
    }

    /// One request on a fresh connection; a transport error fails the test (the node must be
    /// up) with the node's stderr.
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        self.try_request(method, target, headers, body)
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {target}: {e} (the node should be up); node stderr:\n{}",
                    self.stderr()
                )
            })
    }

    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[], None)
    }

    pub fn delete(&self, target: &str) -> Response {
        self.request("DELETE", target, &[], None)
    }

    /// PUTs `body` as `id`, which must answer 201; the response.
    pub fn put(&self, id: &str, body: &[u8]) -> Response {
        let r = self.request("PUT", &format!("/assets/{id}"), &[], Some(body));
        assert_eq!(r.status(), 201, "PUT /assets/{id}: {}", r.text());
        r
    }

    /// `/assets/{id}/info` parsed, or `None` on 404.
    pub fn info(&self, id: &str) -> Option<serde_json::Value> {
        http::info(self.addr, id)
    }

    /// A `/metrics` scrape.
    pub fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status(), 200, "GET /metrics: {}", r.text());
        Metrics(r.text())
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The access and inter-server addresses a node printed.
type Addrs = (SocketAddr, Option<SocketAddr>);

/// The address after `marker` in `line`, if there is one.
fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse::<SocketAddr>().ok())
}

/// Spawns life `life` of a node and waits for its "listening on" line (an "inter-server
/// listener on" line comes before it when the node has one).
fn start(reel: &Reel, dir: &Path, args: &NodeArgs, life: usize) -> (Child, Addrs, PathBuf) {
    let stderr_path = dir.join(format!("node-{life}.stderr"));
    let stderr = std::fs::File::create(&stderr_path).expect("node stderr file");
    let mut child = args
        .command(reel.bin)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn reel node");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    // Reads stdout for the node's whole life, so the node never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Nobody listens once the address arrived; keep draining.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let mut seen = Vec::new();
    let mut peer = None;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                if let Some(p) = addr_after(&line, "inter-server listener on ") {
                    peer = Some(p);
                } else if let Some(addr) = addr_after(&line, "listening on ") {
                    return (child, (addr, peer), stderr_path);
                }
                seen.push(line);
            }
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "reel node (life {life}) printed no 'listening on' line ({e}, exit \
                     {status:?}); stdout: {seen:?}; stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        }
    }
}
