//! The cluster: `reel manager` and `reel node --manager` as real processes on real sockets.
//!
//! - `hostile` — the manager's two listeners against malformed, oversized, unauthenticated and
//!   slow requests (the node's battery is the model).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use reel_testkit::cluster::{read_token, token_file, ManagerArgs, ManagerProc};
use reel_testkit::{http, reel, Reel};

mod e2e;
mod etcd;
mod hostile;
mod measure;
mod netns;

const REEL: Reel = reel!();

/// Sends raw bytes on a fresh connection and reads until the server closes or `wait` passes:
/// the status of the first response (0 when none) and everything read.
fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A manager with the embedded store in a fresh directory, and its token.
fn manager(test: &str, flags: &[&str]) -> (tempfile::TempDir, ManagerProc, String) {
    let dir = REEL.tempdir(&format!("reel-{test}-"));
    let tok = token_file(dir.path());
    let m = ManagerProc::spawn(
        &REEL,
        dir.path(),
        ManagerArgs::new(dir.path(), &tok).flags(flags),
    );
    let token = read_token(&tok);
    (dir, m, token)
}

/// A clustered node's arguments: volumes formatted in `dir/name` (a 64 MiB primary, or
/// `primary_size`, and a 256 MiB secondary unless `primary_size` is given), one shard, joined to
/// `managers` (comma-separated peer URLs) with its inter-server listener on `peer_listen`.
fn node_args(
    dir: &std::path::Path,
    name: &str,
    managers: &str,
    token: &std::path::Path,
    peer_listen: &str,
    primary_size: Option<&str>,
) -> (std::path::PathBuf, reel_testkit::node::NodeArgs) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("node dir");
    let p = d.join("primary");
    REEL.format(&p, primary_size.unwrap_or("64M"));
    let mut args = reel_testkit::node::NodeArgs::new(&p).shards(1);
    if primary_size.is_none() {
        let s = d.join("secondary");
        REEL.format(&s, "256M");
        args = args.secondary(&s);
    }
    let args = args.flags(&[
        "--manager",
        managers,
        "--peer-listen",
        peer_listen,
        "--node-name",
        name,
        "--cluster-token-file",
        token.to_str().expect("utf-8 path"),
    ]);
    (d, args)
}
