//! The cluster's processes: `reel manager` ([`ManagerProc`]), a cluster token file, and etcd
//! ([`Etcd`], Debian's `etcd-server`) on free loopback ports with a temporary data directory.
//! Nodes are [`crate::node::NodeProc`]s given the `--manager` flags.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reel_http::client::{ClientError, Response};

use crate::metrics::Metrics;
use crate::{http, path_str, poll, Reel};

const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes a random cluster token (32 hex digits) to `dir/token`; its path.
pub fn token_file(dir: &Path) -> PathBuf {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let p = dir.join("token");
    std::fs::write(&p, format!("{hex}\n")).expect("write the token file");
    p
}

/// The token in a token file (for `Authorization: Bearer`).
pub fn read_token(path: &Path) -> String {
    std::fs::read_to_string(path)
        .expect("read the token file")
        .trim()
        .to_string()
}

/// A free loopback port (bound and released: a race, retried by callers that care).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The arguments of `reel manager`.
#[derive(Clone, Debug)]
pub struct ManagerArgs {
    pub listen: String,
    pub peer_listen: String,
    pub token: PathBuf,
    pub data_dir: PathBuf,
    /// A command the manager runs under (e.g. `ip netns exec NS`), empty for none.
    pub wrap: Vec<String>,
    pub extra: Vec<String>,
}

impl ManagerArgs {
    /// A manager on ephemeral loopback ports with the embedded store under `dir`.
    pub fn new(dir: &Path, token: &Path) -> ManagerArgs {
        ManagerArgs {
            listen: "127.0.0.1:0".into(),
            peer_listen: "127.0.0.1:0".into(),
            token: token.to_path_buf(),
            data_dir: dir.join("manager-data"),
            wrap: Vec::new(),
            extra: Vec::new(),
        }
    }

    pub fn flags(mut self, flags: &[&str]) -> ManagerArgs {
        self.extra.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// Listens on these addresses instead of ephemeral loopback ports.
    pub fn listen(mut self, access: &str, peer: &str) -> ManagerArgs {
        self.listen = access.to_string();
        self.peer_listen = peer.to_string();
        self
    }

    /// Runs the manager under `wrap` (e.g. `ip netns exec NS`).
    pub fn wrap(mut self, wrap: Vec<String>) -> ManagerArgs {
        self.wrap = wrap;
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
        c.args(["manager", "--listen", &self.listen])
            .args(["--peer-listen", &self.peer_listen])
            .args(["--cluster-token-file", path_str(&self.token)])
            .args(["--data-dir", path_str(&self.data_dir)])
            .args(&self.extra);
        c
    }
}

/// A running `reel manager`; stderr in `manager-<life>.stderr` of its directory.
pub struct ManagerProc {
    reel: Reel,
    dir: PathBuf,
    pub args: ManagerArgs,
    child: Child,
    access: SocketAddr,
    peer: SocketAddr,
    stderr_path: PathBuf,
    lives: usize,
}

impl ManagerProc {
    pub fn spawn(reel: &Reel, dir: &Path, args: ManagerArgs) -> ManagerProc {
        let (child, access, peer, stderr_path) = start(reel, dir, &args, 0);
        let mut args = args;
        // A restart keeps the addresses, so nodes find the manager again.
        args.listen = access.to_string();
        args.peer_listen = peer.to_string();
        ManagerProc {
            reel: *reel,
            dir: dir.to_path_buf(),
            args,
            child,
            access,
            peer,
            stderr_path,
            lives: 1,
        }
    }

    /// Where clients reach it.
    pub fn addr(&self) -> SocketAddr {
        self.access
    }

    /// Its inter-server listener.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// `http://PEER` — what nodes take as `--manager`.
    pub fn peer_url(&self) -> String {
        format!("http://{}", self.peer)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn assert_no_panic(&self, when: &str) {
        let err = self.stderr();
        assert!(
            !err.contains("panicked"),
            "the manager panicked ({when}); stderr:\n{err}"
        );
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new process on the same addresses and data after this one exited.
    pub fn respawn(&mut self) {
        let (child, access, peer, stderr_path) =
            start(&self.reel, &self.dir, &self.args, self.lives);
        self.lives += 1;
        self.child = child;
        self.access = access;
        self.peer = peer;
        self.stderr_path = stderr_path;
    }

    /// SIGTERM and wait (at most 10 s) for a clean exit.
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = poll(Duration::from_secs(10), Duration::from_millis(50), || {
            self.child
                .try_wait()
                .expect("poll the manager")
                .ok_or_else(|| {
                    format!("HANG: the manager did not stop; stderr:\n{}", self.stderr())
                })
        });
        assert!(
            status.success(),
            "manager exit {status}; stderr:\n{}",
            self.stderr()
        );
    }

    /// One request to the client listener (redirects are not followed).
    pub fn try_request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        http::request(self.access, method, target, headers, body)
    }

    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        self.try_request(method, target, headers, body)
            .unwrap_or_else(|e| {
                panic!("{method} {target}: {e}; manager stderr:\n{}", self.stderr())
            })
    }

    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[], None)
    }

    /// `/cluster`, parsed.
    pub fn cluster(&self) -> serde_json::Value {
        let r = self.get("/cluster");
        assert_eq!(r.status(), 200, "GET /cluster: {}", r.text());
        serde_json::from_slice(&r.body).expect("/cluster is JSON")
    }

    /// `/assets/{id}/locations`, parsed.
    pub fn locations(&self, id: &str) -> serde_json::Value {
        let r = self.get(&format!("/assets/{id}/locations"));
        assert_eq!(r.status(), 200, "GET locations of {id}: {}", r.text());
        serde_json::from_slice(&r.body).expect("locations are JSON")
    }

    /// Names of the nodes `/cluster` shows routable.
    pub fn routable_nodes(&self) -> Vec<String> {
        let c = self.cluster();
        c["nodes"]
            .as_array()
            .map(|ns| {
                ns.iter()
                    .filter(|n| n["routable"].as_bool() == Some(true))
                    .filter_map(|n| n["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until exactly `names` are routable (at most `within`).
    pub fn wait_routable(&self, names: &[&str], within: Duration) {
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        poll(within, Duration::from_millis(50), || {
            let mut got = self.routable_nodes();
            got.sort();
            if got == want {
                Ok(())
            } else {
                Err(format!(
                    "routable {got:?}, want {want:?}; manager stderr:\n{}",
                    self.stderr()
                ))
            }
        })
    }

    pub fn metrics(&self) -> Metrics {
        let r = self.get("/metrics");
        assert_eq!(r.status(), 200, "GET /metrics: {}", r.text());
        Metrics(r.text())
    }
}

impl Drop for ManagerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(
    reel: &Reel,
    dir: &Path,
    args: &ManagerArgs,
    life: usize,
) -> (Child, SocketAddr, SocketAddr, PathBuf) {
    let stderr_path = dir.join(format!("manager-{life}.stderr"));
    let stderr = std::fs::File::create(&stderr_path).expect("manager stderr file");
    let mut child = args
        .command(reel.bin)
        .env("REEL_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()
        .expect("spawn reel manager");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                // "reel manager: listening on A (clients) and P (nodes), store …"
                let Some(rest) = line.split("listening on ").nth(1) else {
                    continue;
                };
                let mut words = rest.split_whitespace();
                let access = words.next().and_then(|w| w.parse().ok());
                let peer = words.nth(2).and_then(|w| w.parse().ok());
                if let (Some(a), Some(p)) = (access, peer) {
                    return (child, a, p, stderr_path);
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "reel manager did not start within {START_TIMEOUT:?}; stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        }
    }
}

/// One etcd process (Debian's `etcd-server`) with its data directory; killed on drop.
pub struct Etcd {
    child: Child,
    /// `HOST:PORT` of its client listener.
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where the `etcd` binary is, if installed.
pub fn etcd_binary() -> Option<String> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// A probe for [`crate::probe::runnable`]: etcd is installed.
pub fn etcd_probe() -> Option<String> {
    etcd_binary()
        .is_none()
        .then(|| "etcd is not installed (Debian etcd-server); CI installs it".to_string())
}

impl Etcd {
    /// Starts etcd on free loopback ports and waits (at most 10 s) for `/health`.
    pub fn start(tmp: &Path) -> Etcd {
        let bin = etcd_binary().expect("etcd installed (check etcd_probe first)");
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("etcd-")
                .tempdir_in(tmp)
                .expect("etcd temp dir");
            let (client, peer) = (free_port(), free_port());
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.path().join("etcd.log")).expect("etcd log");
            let child = Command::new(&bin)
                .args(["--name", "default", "--data-dir"])
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &url])
                .args(["--advertise-client-urls", &url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &format!("default={peer_url}")])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            let mut etcd = Etcd {
                child,
                endpoint: format!("127.0.0.1:{client}"),
                _dir: dir,
            };
            let addr: SocketAddr = etcd.endpoint.parse().expect("addr");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = etcd.child.try_wait() {
                    last = format!("etcd exited: {status}");
                    break;
                }
                if let Ok(r) = http::request(addr, "GET", "/health", &[], None) {
                    if r.status() == 200 && r.text().contains("true") {
                        return etcd;
                    }
                    last = r.text();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let log =
                std::fs::read_to_string(etcd._dir.path().join("etcd.log")).unwrap_or_default();
            last = format!(
                "{last}\n{}",
                log.lines().rev().take(10).collect::<Vec<_>>().join("\n")
            );
        }
        panic!("etcd did not become healthy within 10 s: {last}");
    }
}
