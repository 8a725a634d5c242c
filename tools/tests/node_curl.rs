//! `reel node` as a client sees it: a real node process on loopback, driven by the real `curl`
//! binary (and, for pipelining and HEAD framing, a raw `TcpStream`). Bytes are compared with
//! `sha256sum` (whole assets) or byte-exactly in Rust (ranges).
//!
//! Every test formats its own 1 GiB volume under Cargo's target tmp dir (not /tmp, which may be
//! tmpfs without O_DIRECT) and starts its own node with two shards; the node is killed when the
//! test ends. A test skips, saying why, when `curl` is not installed or io_uring is unavailable.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const REEL: &str = env!("CARGO_BIN_EXE_reel");

/// The chunk size of a fresh volume: ranges crossing this boundary take two device reads.
const CHUNK: usize = 1 << 20;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("reel-node-curl-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Whether the tools this file needs are here; prints why the calling test skips when not.
fn prerequisites_or_skip(test: &str) -> bool {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipping {test}: curl not found (apt-get install curl)");
        return false;
    }
    if Command::new("sha256sum").arg("--version").output().is_err() {
        eprintln!("skipping {test}: sha256sum not found (coreutils)");
        return false;
    }
    // `inspect` probes io_uring before it looks at its argument.
    let out = Command::new(REEL)
        .args(["inspect", "/nonexistent/reel-probe"])
        .output()
        .expect("the reel binary runs");
    let err = text(&out.stderr);
    if err.contains("io_uring") {
        eprintln!("skipping {test}: io_uring is unavailable here: {err}");
        return false;
    }
    true
}

/// Pseudo-random bytes (xorshift), different per `seed`.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `sha256sum FILE` → the hex digest.
fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    assert!(
        out.status.success(),
        "sha256sum {} failed: {}",
        path.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum prints a digest")
        .to_string()
}

/// A `reel node` process serving a volume of its own; killed on drop.
struct Node {
    dir: tempfile::TempDir,
    vol: PathBuf,
    child: Child,
    addr: String,
    stderr_path: PathBuf,
    starts: usize,
    files: AtomicUsize,
}

impl Node {
    /// Formats a 1 GiB volume and starts a node on it, or `None` (having said why) when the
    /// prerequisites are missing.
    fn start(test: &str) -> Option<Node> {
        if !prerequisites_or_skip(test) {
            return None;
        }
        let dir = tempdir();
        let vol = dir.path().join("vol");
        let out = Command::new(REEL)
            .args(["format", path_str(&vol), "--size", "1G"])
            .output()
            .expect("reel format runs");
        assert!(
            out.status.success(),
            "reel format failed: {}",
            text(&out.stderr)
        );
        let (child, addr, stderr_path) = spawn_node(dir.path(), &vol, 0);
        Some(Node {
            dir,
            vol,
            child,
            addr,
            stderr_path,
            starts: 1,
            files: AtomicUsize::new(0),
        })
    }

    /// `kill -9` the node, then start a new one on the same volume.
    fn kill_and_restart(&mut self) {
        let vol = self.vol.clone();
        self.restart_on(&vol, &[]);
    }

    /// `kill -9` the node, then start a new one on `vol` with `extra` arguments.
    fn restart_on(&mut self, vol: &Path, extra: &[&str]) {
        self.child.kill().expect("kill the node");
        self.child.wait().expect("reap the node");
        let (child, addr, stderr_path) = spawn_node_with(self.dir.path(), vol, self.starts, extra);
        self.starts += 1;
        self.child = child;
        self.addr = addr;
        self.stderr_path = stderr_path;
        self.vol = vol.to_path_buf();
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A fresh scratch path in this node's temp dir.
    fn scratch(&self, what: &str) -> PathBuf {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        self.dir.path().join(format!("{what}-{n}"))
    }

    /// Writes `bytes` to a scratch file.
    fn file_of(&self, bytes: &[u8]) -> PathBuf {
        let p = self.scratch("src");
        std::fs::write(&p, bytes).expect("write source file");
        p
    }

    /// The node's stderr so far, for failure messages.
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Runs `curl ARGS URL(path)`; the response's last header block and body are returned.
    fn curl(&self, args: &[&str], path: &str) -> Resp {
        self.curl_stdin(args, path, None)
    }

    fn curl_stdin(&self, args: &[&str], path: &str, stdin: Option<&Path>) -> Resp {
        let heads = self.scratch("heads");
        let body = self.scratch("body");
        let url = self.url(path);
        let mut cmd = Command::new("curl");
        // -q: ignore ~/.curlrc; no proxy from the environment; never hang a test.
        cmd.args(["-q", "-sS", "--noproxy", "*", "--max-time", "30"])
            .arg("-D")
            .arg(&heads)
            .arg("-o")
            .arg(&body)
            .args(args)
            .arg(&url);
        if let Some(p) = stdin {
            cmd.stdin(Stdio::from(
                std::fs::File::open(p).expect("open curl's stdin file"),
            ));
        }
        let out: Output = cmd.output().expect("curl runs");
        let described = format!("curl {} {url}", args.join(" "));
        assert!(
            out.status.success(),
            "{described} failed ({}): {}\nnode stderr:\n{}",
            out.status,
            text(&out.stderr),
            self.stderr()
        );
        let dump = std::fs::read_to_string(&heads).unwrap_or_default();
        let (status, headers) = last_header_block(&dump)
            .unwrap_or_else(|| panic!("{described}: no response head in {dump:?}"));
        let bytes = std::fs::read(&body).unwrap_or_default();
        Resp {
            described,
            status,
            headers,
            body: bytes,
            body_path: body,
            curl_stderr: text(&out.stderr),
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).expect("connect to the node");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        s.set_write_timeout(Some(Duration::from_secs(10)))
            .expect("write timeout");
        s
    }

    /// PUTs `bytes` as `id` with Content-Length; returns the ETag of the 201.
    fn put(&self, id: &str, bytes: &[u8]) -> String {
        let src = self.file_of(bytes);
        let r = self.curl(&["-T", path_str(&src)], &format!("/assets/{id}"));
        assert_eq!(r.status, 201, "{}: {}", r.described, text(&r.body));
        r.header("etag")
            .unwrap_or_else(|| panic!("{}: 201 without ETag: {:?}", r.described, r.headers))
            .to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `reel node` on `vol` and waits for its "listening on" line.
fn spawn_node(dir: &Path, vol: &Path, n: usize) -> (Child, String, PathBuf) {
    spawn_node_with(dir, vol, n, &[])
}

fn spawn_node_with(dir: &Path, vol: &Path, n: usize, extra: &[&str]) -> (Child, String, PathBuf) {
    let stderr_path = dir.join(format!("node-{n}.stderr"));
    let stderr = std::fs::File::create(&stderr_path).expect("node stderr file");
    let mut child = Command::new(REEL)
        .args([
            "node",
            "--primary",
            path_str(vol),
            "--listen",
            "127.0.0.1:0",
            "--shards",
            "2",
            // Loopback clients get plain sends by default; these tests drive the SEND_ZC path
            // (and plain sends below 4 KiB), which the hostile battery's node does not.
            "--zero-copy-local",
            "--zero-copy-min",
            "4K",
        ])
        .args(extra)
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
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining.
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .expect("an address after 'listening on'")
                        .to_string();
                    return (child, addr, stderr_path);
                }
                seen.push(line);
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "reel node printed no 'listening on' line ({e}); stdout: {seen:?}; stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        }
    }
}

/// The status and fields of the last (final) response head in a `curl -D` dump; earlier
/// blocks are interim (`100 Continue`).
fn last_header_block(dump: &str) -> Option<(u16, Vec<(String, String)>)> {
    let mut last = None;
    let mut cur: Option<(u16, Vec<(String, String)>)> = None;
    for line in dump.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HTTP/") {
            if let Some(block) = cur.take() {
                last = Some(block);
            }
            let status = line.split_whitespace().nth(1)?.parse().ok()?;
            cur = Some((status, Vec::new()));
        } else if let Some((name, value)) = line.split_once(':') {
            if let Some((_, fields)) = cur.as_mut() {
                fields.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
    }
    cur.or(last)
}

struct Resp {
    described: String,
    status: u16,
    /// Names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    body_path: PathBuf,
    curl_stderr: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.headers, name)
    }
}

fn header_of<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// A response read off a raw connection.
struct RawResp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads one response; `head_only` for a response to HEAD (no body whatever Content-Length
/// says).
fn read_response(r: &mut impl BufRead, head_only: bool, what: &str) -> RawResp {
    let mut status_line = String::new();
    r.read_line(&mut status_line)
        .unwrap_or_else(|e| panic!("{what}: reading the status line: {e}"));
    assert!(
        status_line.starts_with("HTTP/1.1 "),
        "{what}: expected a status line, got {status_line:?}"
    );
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{what}: bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line)
            .unwrap_or_else(|e| panic!("{what}: reading a header line: {e}"));
        assert!(!line.is_empty(), "{what}: connection closed inside a head");
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("{what}: malformed header line {line:?}"));
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut body = Vec::new();
    if !head_only {
        let len: usize = header_of(&headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{what}: no Content-Length in {headers:?}"));
        body.resize(len, 0);
        r.read_exact(&mut body)
            .unwrap_or_else(|e| panic!("{what}: reading a {len}-byte body: {e}"));
    }
    RawResp {
        status,
        headers,
        body,
    }
}

/// The sum of every sample of a counter family in a Prometheus text body.
fn metric_sum(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[test]
fn put_with_content_length_then_get_is_identical() {
    let Some(node) = Node::start("put_with_content_length_then_get_is_identical") else {
        return;
    };
    let data = random_bytes(5 << 20, 1);
    let src = node.file_of(&data);
    let put = node.curl(
        &["-T", path_str(&src), "-H", "Content-Type: video/mp4"],
        "/assets/movies/one.mp4",
    );
    assert_eq!(
        put.status,
        201,
        "{}: expected 201 Created, body {:?}",
        put.described,
        text(&put.body)
    );
    let etag = put
        .header("etag")
        .unwrap_or_else(|| panic!("the 201 carries no ETag: {:?}", put.headers))
        .to_string();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "a strong, quoted ETag: {etag}"
    );

    let get = node.curl(&[], "/assets/movies/one.mp4");
    assert_eq!(get.status, 200, "{}", get.described);
    assert_eq!(
        sha256(&get.body_path),
        sha256(&src),
        "GET returned different bytes than were PUT ({} of {} bytes)",
        get.body.len(),
        data.len()
    );
    assert_eq!(
        get.header("content-type"),
        Some("video/mp4"),
        "{:?}",
        get.headers
    );
    assert_eq!(
        get.header("accept-ranges"),
        Some("bytes"),
        "{:?}",
        get.headers
    );
    assert_eq!(
        get.header("content-length"),
        Some(data.len().to_string().as_str()),
        "{:?}",
        get.headers
    );
    let lm = get
        .header("last-modified")
        .unwrap_or_else(|| panic!("no Last-Modified: {:?}", get.headers));
    assert!(
        lm.ends_with(" GMT"),
        "Last-Modified is an IMF-fixdate: {lm}"
    );
    assert_eq!(
        get.header("etag"),
        Some(etag.as_str()),
        "the GET's ETag differs from the PUT's"
    );
}

#[test]
fn chunked_put_of_an_odd_size_reads_back_identical() {
    let Some(node) = Node::start("chunked_put_of_an_odd_size_reads_back_identical") else {
        return;
    };
    let data = random_bytes((3 << 20) + 12345, 2);
    let src = node.file_of(&data);

    // `curl -T -` streams stdin with Transfer-Encoding: chunked.
    let put = node.curl_stdin(&["-v", "-T", "-"], "/assets/chunked/stdin", Some(&src));
    assert_eq!(
        put.status,
        201,
        "{}: chunked PUT from stdin, body {:?}",
        put.described,
        text(&put.body)
    );
    assert!(
        put.curl_stderr
            .to_ascii_lowercase()
            .contains("> transfer-encoding: chunked"),
        "curl did not send the body chunked:\n{}",
        put.curl_stderr
    );
    let get = node.curl(&[], "/assets/chunked/stdin");
    assert_eq!(get.status, 200, "{}", get.described);
    assert_eq!(
        sha256(&get.body_path),
        sha256(&src),
        "chunked PUT (stdin) read back different bytes ({} of {} bytes)",
        get.body.len(),
        data.len()
    );
    assert_eq!(
        put.header("etag"),
        get.header("etag"),
        "PUT and GET ETags differ"
    );

    // The same body with an explicit chunked header and --data-binary.
    let put = node.curl(
        &[
            "-X",
            "PUT",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", path_str(&src)),
        ],
        "/assets/chunked/data-binary",
    );
    assert_eq!(put.status, 201, "{}: {}", put.described, text(&put.body));
    let get = node.curl(&[], "/assets/chunked/data-binary");
    assert_eq!(get.status, 200, "{}", get.described);
    assert_eq!(
        sha256(&get.body_path),
        sha256(&src),
        "chunked PUT (--data-binary) read back different bytes ({} of {} bytes)",
        get.body.len(),
        data.len()
    );
}

#[test]
fn single_and_multi_ranges_are_byte_exact() {
    let Some(node) = Node::start("single_and_multi_ranges_are_byte_exact") else {
        return;
    };
    let size = (2 << 20) + 777;
    let data = random_bytes(size, 3);
    node.put("r/asset", &data);

    // (curl -r argument, first byte, last byte inclusive)
    let cases: [(&str, usize, usize); 5] = [
        ("0-0", 0, 0),
        ("100-199", 100, 199),
        ("1048570-1048580", CHUNK - 6, CHUNK + 4),
        ("-500", size - 500, size - 1),
        ("4096-", 4096, size - 1),
    ];
    for (spec, first, last) in cases {
        let r = node.curl(&["-r", spec], "/assets/r/asset");
        assert_eq!(r.status, 206, "Range: bytes={spec}: expected 206");
        let want_cr = format!("bytes {first}-{last}/{size}");
        assert_eq!(
            r.header("content-range"),
            Some(want_cr.as_str()),
            "Range: bytes={spec}: wrong Content-Range"
        );
        assert_eq!(
            r.header("content-length"),
            Some((last - first + 1).to_string().as_str()),
            "Range: bytes={spec}: wrong Content-Length"
        );
        assert_eq!(
            r.body.len(),
            last - first + 1,
            "Range: bytes={spec}: body length"
        );
        assert!(
            r.body == data[first..=last],
            "Range: bytes={spec}: the body differs from bytes {first}..={last} of the source"
        );
    }

    let r = node.curl(&["-r", "0-9,100-109"], "/assets/r/asset");
    assert_eq!(r.status, 206, "multi-range: expected 206");
    let ct = r.header("content-type").unwrap_or_default().to_string();
    assert!(
        ct.starts_with("multipart/byteranges"),
        "multi-range Content-Type: {ct}"
    );
    let boundary = ct
        .split("boundary=")
        .nth(1)
        .unwrap_or_else(|| panic!("no boundary in {ct}"))
        .trim_matches('"')
        .to_string();
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str()),
        "multi-range Content-Length must equal the body length"
    );
    let body = &r.body;
    let find = |needle: &[u8]| body.windows(needle.len()).position(|w| w == needle);
    let p1 = find(&data[0..10]).unwrap_or_else(|| panic!("bytes 0-9 missing from multipart body"));
    let p2 = find(&data[100..110])
        .unwrap_or_else(|| panic!("bytes 100-109 missing from multipart body"));
    assert!(p1 < p2, "parts out of order");
    let body_text = text(body);
    assert!(
        body_text.contains(&format!("Content-Range: bytes 0-9/{size}")),
        "{body_text:?}"
    );
    assert!(
        body_text.contains(&format!("Content-Range: bytes 100-109/{size}")),
        "{body_text:?}"
    );
    assert!(
        body_text.contains(&format!("--{boundary}--")),
        "no closing delimiter: {body_text:?}"
    );
    let part_head = format!("--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-9/{size}\r\n\r\n");
    assert!(
        body.windows(part_head.len() + 10)
            .any(|w| w[..part_head.len()] == *part_head.as_bytes()
                && w[part_head.len()..] == data[0..10]),
        "the first part is not framed as delimiter, headers, blank line, bytes: {body_text:?}"
    );
}

#[test]
fn unsatisfiable_range_is_416_with_the_size() {
    let Some(node) = Node::start("unsatisfiable_range_is_416_with_the_size") else {
        return;
    };
    let data = random_bytes(100_000, 4);
    node.put("r416", &data);
    let r = node.curl(&["-r", "99999999999-"], "/assets/r416");
    assert_eq!(r.status, 416, "{}: {}", r.described, text(&r.body));
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes */{}", data.len()).as_str()),
        "416 must name the size"
    );
    assert!(
        r.body.len() < 200,
        "a 416 carries no asset bytes: {} bytes",
        r.body.len()
    );
}

#[test]
fn conditional_requests() {
    let Some(node) = Node::start("conditional_requests") else {
        return;
    };
    let data = random_bytes(300_000, 5);
    let etag = node.put("cond", &data);
    let src = node.file_of(&data);

    let r = node.curl(&["-H", &format!("If-None-Match: {etag}")], "/assets/cond");
    assert_eq!(r.status, 304, "If-None-Match with the current ETag");
    assert!(
        r.body.is_empty(),
        "a 304 has no body: {} bytes",
        r.body.len()
    );
    assert_eq!(
        r.header("etag"),
        Some(etag.as_str()),
        "a 304 carries the ETag"
    );

    let r = node.curl(&["-H", "If-None-Match: \"other\""], "/assets/cond");
    assert_eq!(r.status, 200, "If-None-Match with another tag");
    assert_eq!(
        sha256(&r.body_path),
        sha256(&src),
        "200 after If-None-Match"
    );

    let r = node.curl(
        &["-r", "10-19", "-H", &format!("If-Range: {etag}")],
        "/assets/cond",
    );
    assert_eq!(r.status, 206, "If-Range with the current ETag + Range");
    assert_eq!(r.body, data[10..20], "If-Range 206 body");
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 10-19/{}", data.len()).as_str())
    );

    let r = node.curl(
        &["-r", "10-19", "-H", "If-Range: \"stale\""],
        "/assets/cond",
    );
    assert_eq!(
        r.status, 200,
        "If-Range with a wrong ETag must send the whole asset"
    );
    assert_eq!(
        sha256(&r.body_path),
        sha256(&src),
        "If-Range mismatch: full body expected ({} bytes got)",
        r.body.len()
    );
    assert_eq!(
        r.header("content-range"),
        None,
        "a 200 has no Content-Range"
    );
}

#[test]
fn head_has_the_length_and_no_body() {
    let Some(node) = Node::start("head_has_the_length_and_no_body") else {
        return;
    };
    let data = random_bytes(1_500_000, 6);
    let etag = node.put("h", &data);
    let r = node.curl(&["-I"], "/assets/h");
    assert_eq!(r.status, 200, "HEAD");
    assert_eq!(
        r.header("content-length"),
        Some(data.len().to_string().as_str()),
        "HEAD Content-Length is the asset size"
    );
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    // With -I curl writes the head itself to -o; nothing may follow its blank line.
    let out = text(&r.body);
    assert!(
        out.starts_with("HTTP/1.1 200")
            && out.ends_with("\r\n\r\n")
            && out.matches("\r\n\r\n").count() == 1,
        "curl -I output is the head alone: {out:?}"
    );

    // On the wire: a HEAD followed by a GET on one connection. If the HEAD response carried
    // any body bytes, the second response would not start with its status line.
    let mut s = node.connect();
    s.write_all(
        b"HEAD /assets/h HTTP/1.1\r\nHost: t\r\n\r\nGET /assets/h HTTP/1.1\r\nHost: t\r\nRange: bytes=0-4\r\nConnection: close\r\n\r\n",
    )
    .expect("send HEAD + GET");
    let mut r = BufReader::new(s);
    let head = read_response(&mut r, true, "HEAD on a raw connection");
    assert_eq!(head.status, 200);
    assert_eq!(
        header_of(&head.headers, "content-length"),
        Some(data.len().to_string().as_str())
    );
    let get = read_response(&mut r, false, "GET after HEAD on one connection");
    assert_eq!(get.status, 206, "the GET after a HEAD");
    assert_eq!(get.body, data[0..5], "GET after HEAD body");
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "bytes after the last response: {:?}",
        text(&rest)
    );
}

#[test]
fn delete_then_404() {
    let Some(node) = Node::start("delete_then_404") else {
        return;
    };
    node.put("gone/soon", &random_bytes(10_000, 7));
    let r = node.curl(&["-X", "DELETE"], "/assets/gone/soon");
    assert_eq!(r.status, 204, "first DELETE: {}", text(&r.body));
    assert!(r.body.is_empty(), "a 204 has no body");
    let r = node.curl(&[], "/assets/gone/soon");
    assert_eq!(r.status, 404, "GET after DELETE");
    let r = node.curl(&["-I"], "/assets/gone/soon");
    assert_eq!(r.status, 404, "HEAD after DELETE");
    let r = node.curl(&["-X", "DELETE"], "/assets/gone/soon");
    assert_eq!(r.status, 404, "second DELETE");
    let r = node.curl(&[], "/assets/gone/soon/info");
    assert_eq!(r.status, 404, "info after DELETE");
}

#[test]
fn list_info_health_and_metrics() {
    let Some(node) = Node::start("list_info_health_and_metrics") else {
        return;
    };
    let sizes = [("list/a", 1000usize), ("list/b", 2000), ("list/c", 3000)];
    let mut etags = Vec::new();
    for (i, (id, size)) in sizes.iter().enumerate() {
        etags.push(node.put(id, &random_bytes(*size, 10 + i as u64)));
    }

    let json = |path: &str| -> serde_json::Value {
        let r = node.curl(&[], path);
        assert_eq!(r.status, 200, "GET {path}: {}", text(&r.body));
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "GET {path} Content-Type: {:?}",
            r.header("content-type")
        );
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {}", text(&r.body)))
    };

    let all = json("/assets");
    let listed: Vec<(String, u64)> = all["assets"]
        .as_array()
        .unwrap_or_else(|| panic!("no assets array: {all}"))
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap_or_default().to_string(),
                a["size"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect();
    let want: Vec<(String, u64)> = sizes
        .iter()
        .map(|(id, s)| (id.to_string(), *s as u64))
        .collect();
    assert_eq!(
        listed, want,
        "GET /assets lists the uploads with sizes: {all}"
    );
    assert_eq!(all["total"], 3, "{all}");
    assert!(
        all.get("next").is_none(),
        "a single page has no next: {all}"
    );

    let p1 = json("/assets?limit=1");
    assert_eq!(p1["assets"][0]["id"], "list/a", "{p1}");
    assert_eq!(p1["assets"].as_array().map(Vec::len), Some(1), "{p1}");
    let next = p1["next"]
        .as_str()
        .unwrap_or_else(|| panic!("?limit=1 of 3 has a next cursor: {p1}"))
        .to_string();
    let p2 = json(&format!("/assets?limit=1&after={next}"));
    assert_eq!(p2["assets"][0]["id"], "list/b", "second page: {p2}");
    assert_eq!(p2["assets"].as_array().map(Vec::len), Some(1), "{p2}");
    let next = p2["next"]
        .as_str()
        .unwrap_or_else(|| panic!("page 2 of 3 has a next cursor: {p2}"))
        .to_string();
    let p3 = json(&format!("/assets?after={next}&limit=1"));
    assert_eq!(p3["assets"][0]["id"], "list/c", "third page: {p3}");
    assert!(p3.get("next").is_none(), "the last page has no next: {p3}");

    let info = json("/assets/list/b/info");
    assert_eq!(info["id"], "list/b", "{info}");
    assert_eq!(info["size"], 2000, "{info}");
    assert_eq!(
        info["etag"],
        etags[1].as_str(),
        "info etag = PUT ETag: {info}"
    );

    let h = node.curl(&[], "/healthz");
    assert_eq!(h.status, 200, "healthz");
    assert_eq!(text(&h.body).trim(), "ok", "healthz body");

    let scrape = || {
        let r = node.curl(&[], "/metrics");
        assert_eq!(r.status, 200, "/metrics");
        text(&r.body)
    };
    let before = scrape();
    for family in ["reel_requests_total", "reel_response_bytes_total"] {
        assert!(
            before.lines().any(|l| l.starts_with(family)),
            "/metrics lacks {family}:\n{before}"
        );
    }
    let req0 = metric_sum(&before, "reel_requests_total");
    let bytes0 = metric_sum(&before, "reel_response_bytes_total");
    // 3 PUTs, 4 list pages, info, healthz.
    assert!(req0 >= 9, "requests so far are counted: {req0}");

    let g = node.curl(&[], "/assets/list/c");
    assert_eq!(g.status, 200);
    let _ = node.curl(&[], "/healthz");
    // Counters are written by the serving thread after the last byte is handed to the
    // kernel, so a scrape on another shard may briefly lag: poll.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = scrape();
        let req1 = metric_sum(&after, "reel_requests_total");
        let bytes1 = metric_sum(&after, "reel_response_bytes_total");
        // The first scrape, the GET and the healthz at least.
        if req1 >= req0 + 3 && bytes1 >= bytes0 + 3000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics did not grow: requests {req0} -> {req1}, response bytes {bytes0} -> {bytes1}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn pipelined_gets_on_one_connection_answer_in_order() {
    let Some(node) = Node::start("pipelined_gets_on_one_connection_answer_in_order") else {
        return;
    };
    let size = (1 << 20) + 4096;
    let data = random_bytes(size, 20);
    node.put("pipe", &data);
    let ranges = [
        (0usize, 99usize),
        (CHUNK - 10, CHUNK + 9),
        (size - 50, size - 1),
    ];
    let mut req = Vec::new();
    for (a, b) in ranges {
        req.extend_from_slice(
            format!("GET /assets/pipe HTTP/1.1\r\nHost: t\r\nRange: bytes={a}-{b}\r\n\r\n")
                .as_bytes(),
        );
    }
    let mut s = node.connect();
    s.write_all(&req).expect("send three pipelined requests");
    let mut r = BufReader::new(s.try_clone().expect("clone stream"));
    for (i, (a, b)) in ranges.into_iter().enumerate() {
        let what = format!("pipelined response {} (bytes={a}-{b})", i + 1);
        let resp = read_response(&mut r, false, &what);
        assert_eq!(resp.status, 206, "{what}");
        assert_eq!(
            header_of(&resp.headers, "content-range"),
            Some(format!("bytes {a}-{b}/{size}").as_str()),
            "{what}: out of order or wrong range"
        );
        assert!(resp.body == data[a..=b], "{what}: wrong bytes");
    }
    // The connection is still alive for a fourth request.
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send a fourth request");
    let resp = read_response(&mut r, false, "request after the pipelined three");
    assert_eq!(resp.status, 200);
    assert_eq!(text(&resp.body).trim(), "ok");
}

#[test]
fn invalid_ids_are_400_and_put_without_length_is_411() {
    let Some(node) = Node::start("invalid_ids_are_400_and_put_without_length_is_411") else {
        return;
    };
    for (args, path) in [
        (vec!["--path-as-is"], "/assets/a/../b"),
        (vec![], "/assets/bad%00id"),
        (vec![], "/assets/a:b"),
        (vec!["-X", "PUT", "--data-binary", "x"], "/assets/a//b"),
    ] {
        let r = node.curl(&args, path);
        assert_eq!(r.status, 400, "{}: {}", r.described, text(&r.body));
        let body = text(&r.body);
        assert!(
            body.ends_with('\n') && body.matches('\n').count() == 1 && body.trim().len() > 10,
            "{}: the body must be a one-line reason, got {body:?}",
            r.described
        );
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("text/plain")),
            "{}: {:?}",
            r.described,
            r.headers
        );
    }
    let r = node.curl(&["-X", "PUT"], "/assets/nolen");
    assert_eq!(r.status, 411, "PUT with neither Content-Length nor chunked");
    let body = text(&r.body);
    assert!(
        body.ends_with('\n') && body.matches('\n').count() == 1,
        "411 reason: {body:?}"
    );
    let r = node.curl(&[], "/assets/nolen");
    assert_eq!(r.status, 404, "a refused PUT stores nothing");
}

#[test]
fn assets_survive_kill_9_and_restart() {
    let Some(mut node) = Node::start("assets_survive_kill_9_and_restart") else {
        return;
    };
    let data = random_bytes((2 << 20) + 333, 30);
    let src = node.file_of(&data);
    let etag = node.put("durable/a", &data);
    node.put("durable/deleted", &random_bytes(70_000, 31));
    let r = node.curl(&["-X", "DELETE"], "/assets/durable/deleted");
    assert_eq!(r.status, 204, "DELETE before the kill");

    node.kill_and_restart();

    let r = node.curl(&[], "/assets/durable/a");
    assert_eq!(
        r.status,
        200,
        "GET after kill -9 and restart: {}",
        text(&r.body)
    );
    assert_eq!(
        sha256(&r.body_path),
        sha256(&src),
        "an acknowledged PUT changed across kill -9 ({} of {} bytes)",
        r.body.len(),
        data.len()
    );
    assert_eq!(r.header("etag"), Some(etag.as_str()), "ETag after restart");
    let r = node.curl(&[], "/assets/durable/deleted");
    assert_eq!(
        r.status, 404,
        "an acknowledged DELETE came back after kill -9"
    );
    let r = node.curl(&[], "/assets");
    assert_eq!(r.status, 200);
    let list: serde_json::Value = serde_json::from_slice(&r.body).expect("list JSON");
    assert_eq!(list["total"], 1, "assets after restart: {list}");

    // The restarted node takes new uploads.
    let more = random_bytes(123_457, 32);
    let more_src = node.file_of(&more);
    node.put("durable/b", &more);
    let r = node.curl(&[], "/assets/durable/b");
    assert_eq!(r.status, 200, "GET of a PUT after restart");
    assert_eq!(sha256(&r.body_path), sha256(&more_src), "PUT after restart");
}

fn format_volume(path: &Path) {
    let out = Command::new(REEL)
        .args(["format", path_str(path), "--size", "1G"])
        .output()
        .expect("reel format runs");
    assert!(
        out.status.success(),
        "reel format failed: {}",
        text(&out.stderr)
    );
}

/// Polls `/assets/{id}/info` until its `tiers` equal `want`.
/// The volumes of a two-tier test node: two primaries (to restart on an empty one) and one
/// secondary, and the node's tier flags.
struct Tiered {
    p1: PathBuf,
    p2: PathBuf,
    args: Vec<String>,
}

impl Tiered {
    fn args(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }
}

impl Node {
    /// Formats `primary-1`, `primary-2` and `secondary` and starts a node on `primary-1` with
    /// `--secondary` and `extra` flags, or `None` (having said why) without the prerequisites.
    fn start_tiered(test: &str, extra: &[&str]) -> Option<(Node, Tiered)> {
        if !prerequisites_or_skip(test) {
            return None;
        }
        let dir = tempdir();
        let (p1, p2, sec) = (
            dir.path().join("primary-1"),
            dir.path().join("primary-2"),
            dir.path().join("secondary"),
        );
        for v in [&p1, &p2, &sec] {
            format_volume(v);
        }
        let mut args = vec!["--secondary".to_string(), path_str(&sec).to_string()];
        args.extend(extra.iter().map(|a| a.to_string()));
        let t = Tiered { p1, p2, args };
        let (child, addr, stderr_path) = spawn_node_with(dir.path(), &t.p1, 0, &t.args());
        let node = Node {
            dir,
            vol: t.p1.clone(),
            child,
            addr,
            stderr_path,
            starts: 1,
            files: AtomicUsize::new(0),
        };
        Some((node, t))
    }
}

/// `id`'s (tiers, uncommitted tiers) per `/assets/{id}/info`, or None while it is not found.
fn tiers_of(node: &Node, id: &str) -> Option<(Vec<String>, Vec<String>)> {
    let r = node.curl(&[], &format!("/assets/{id}/info"));
    if r.status != 200 {
        return None;
    }
    let info: serde_json::Value = serde_json::from_slice(&r.body).expect("info is JSON");
    let names = |key: &str| -> Vec<String> {
        info[key]
            .as_array()
            .unwrap_or_else(|| panic!("{key} array in {info}"))
            .iter()
            .map(|t| t.as_str().unwrap_or_default().to_string())
            .collect()
    };
    Some((names("tiers"), names("uncommitted")))
}

/// Waits until `id` is on exactly the tiers `want`, and durable on all of them unless
/// `durable` is false.
fn wait_for_tiers_as(node: &Node, id: &str, want: &[&str], durable: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = tiers_of(node, id);
        if let Some((tiers, uncommitted)) = &found {
            if tiers == want && (uncommitted.is_empty() || !durable) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{id}: (tiers, uncommitted) {found:?}, waited for {want:?}; node stderr:\n{}",
            node.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Durable too: the tests kill -9 the node next, which forgets uncommitted copies.
fn wait_for_tiers(node: &Node, id: &str, want: &[&str]) {
    wait_for_tiers_as(node, id, want, true);
}

#[test]
fn copies_are_committed_once_the_node_serves_no_one() {
    // The default commit deadline (10 min): only quiet can commit within the test.
    let Some((mut node, t)) =
        Node::start_tiered("copies_are_committed_once_the_node_serves_no_one", &[])
    else {
        return;
    };
    let data = random_bytes(2 * CHUNK + 5, 43);
    node.put("quiet/movie", &data);
    // Polled every 100 ms, the node is never quiet: the write-back serves but waits.
    wait_for_tiers_as(&node, "quiet/movie", &["primary", "secondary"], false);
    for _ in 0..10 {
        let (_, uncommitted) = tiers_of(&node, "quiet/movie").expect("info");
        assert_eq!(
            uncommitted,
            ["secondary"],
            "no commit while requests keep coming"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Left alone for 2 s (plus a scheduler tick or two), it commits.
    std::thread::sleep(Duration::from_secs(4));
    let (tiers, uncommitted) = tiers_of(&node, "quiet/movie").expect("info");
    assert_eq!(
        (tiers.as_slice(), uncommitted.len()),
        (&["primary".to_string(), "secondary".to_string()][..], 0)
    );
    let metrics = text(&node.curl(&[], "/metrics").body);
    assert_eq!(
        metric_sum(&metrics, "reel_migration_commits_total"),
        1,
        "{metrics}"
    );
    // Durable: after kill -9, a node with an empty primary serves it from the secondary.
    node.restart_on(&t.p2, &t.args());
    let r = node.curl(&[], "/assets/quiet/movie");
    assert_eq!(r.status, 200, "GET from the secondary after kill -9");
    assert!(r.body == data, "the committed copy's bytes");
}

/// A tiered node whose commits under load fall due 200 ms after a copy and first wait out a
/// 3 s settle, with `id` uploaded and its write-back serving but not yet committed. `None`:
/// the test skips (see [`Node::start_tiered`]).
fn node_with_a_settling_copy(name: &str, id: &str, len: usize, seed: u64) -> Option<Node> {
    let extra = [
        "--migration-commit-interval",
        "200ms",
        "--migration-commit-settle",
        "3s",
    ];
    let (node, _) = Node::start_tiered(name, &extra)?;
    node.put(id, &random_bytes(len, seed));
    wait_for_tiers_as(&node, id, &["primary", "secondary"], false);
    Some(node)
}

#[test]
fn under_load_a_due_commit_first_lets_the_copies_settle() {
    // Polled every 100 ms (never quiet): the commit is due 200 ms after the write-back, and
    // waits out the 3 s settle first.
    let Some(node) = node_with_a_settling_copy(
        "under_load_a_due_commit_first_lets_the_copies_settle",
        "settle/movie",
        CHUNK + 9,
        45,
    ) else {
        return;
    };
    let t0 = Instant::now();
    wait_for_tiers_as(&node, "settle/movie", &["primary", "secondary"], true);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(2500) && waited < Duration::from_secs(10),
        "committed {waited:?} after the copy, want the 3 s settle (plus a tick or two)"
    );
}

#[test]
fn a_settle_counts_time_paused_so_frequent_pauses_do_not_starve_the_commit() {
    // Paused and resumed every second under load, with a 3 s settle: the settle runs from the
    // last copy's end, through the pauses, so the commit lands in a resumed second after it.
    // (Restarted at every resume, it never ended: copies stopped for good.)
    let Some(node) = node_with_a_settling_copy(
        "a_settle_counts_time_paused_so_frequent_pauses_do_not_starve_the_commit",
        "toggled/movie",
        CHUNK + 3,
        46,
    ) else {
        return;
    };
    let t0 = Instant::now();
    let mut paused = false;
    let committed = loop {
        let (_, uncommitted) = tiers_of(&node, "toggled/movie").expect("info");
        if uncommitted.is_empty() {
            break true;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            break false;
        }
        paused = !paused;
        let r = node.curl(&["-X", "PUT"], &format!("/migration?paused={paused}"));
        assert_eq!(r.status, 200, "PUT /migration: {}", text(&r.body));
        // Polled every 100 ms for the second between toggles: never quiet.
        for _ in 0..10 {
            std::thread::sleep(Duration::from_millis(100));
            tiers_of(&node, "toggled/movie").expect("info");
        }
    };
    assert!(
        committed,
        "still uncommitted 15 s after the copy, paused and resumed every second; node stderr:\n{}",
        node.stderr()
    );
}

#[test]
fn writeback_copies_to_the_secondary_which_serves_without_the_primary() {
    // Finished copies committed after 200 ms instead of 5 s: the test waits for them.
    let extra = [
        "--migration-commit-interval",
        "200ms",
        "--migration-commit-settle",
        "1ms",
    ];
    let Some((mut node, t)) = Node::start_tiered(
        "writeback_copies_to_the_secondary_which_serves_without_the_primary",
        &extra,
    ) else {
        return;
    };
    let data = random_bytes(3 * CHUNK + 777, 41);
    let src = node.file_of(&data);
    let want = sha256(&src);
    node.put("wb/movie", &data);
    // Written back in the background: both tiers hold it.
    wait_for_tiers(&node, "wb/movie", &["primary", "secondary"]);
    let m = node.curl(&[], "/metrics");
    let metrics = text(&m.body);
    assert!(
        metric_sum(&metrics, "reel_write_backs_total") >= 1,
        "write-back counted: {metrics}"
    );

    // A node whose primary is empty serves the asset from the secondary copy.
    node.restart_on(&t.p2, &t.args());
    let r = node.curl(&[], "/assets/wb/movie");
    assert_eq!(r.status, 200, "GET from the secondary");
    let out = node.file_of(&r.body);
    assert_eq!(
        sha256(&out),
        want,
        "the secondary's bytes are the primary's"
    );
    wait_for_tiers(&node, "wb/movie", &["secondary"]);
    let r = node.curl(&["-r", "100-199"], "/assets/wb/movie");
    assert_eq!(r.status, 206);
    assert_eq!(r.body, data[100..200], "a range from the secondary");
    let list = node.curl(&[], "/assets");
    assert!(
        text(&list.body).contains("wb/movie"),
        "listed: {}",
        text(&list.body)
    );

    // DELETE removes it from every tier, durably.
    let d = node.curl(&["-X", "DELETE"], "/assets/wb/movie");
    assert_eq!(d.status, 204, "delete");
    assert_eq!(node.curl(&[], "/assets/wb/movie").status, 404);
    node.restart_on(&t.p1, &t.args());
    // The first primary never saw the delete, so it still has the asset: that copy is the one
    // a restart finds. (Deletes reach every tier the node has open; a primary that was swapped
    // out keeps its own state.) Its write-back puts it on the secondary again.
    wait_for_tiers(&node, "wb/movie", &["primary", "secondary"]);
}

#[test]
fn the_clients_reads_are_timed_for_the_latency_guard() {
    for target in ["5%", "0"] {
        let name = format!(
            "the_clients_reads_are_timed_for_the_latency_guard_{}",
            target.trim_end_matches('%')
        );
        let Some((node, _)) = Node::start_tiered(&name, &["--copy-latency-target", target]) else {
            return;
        };
        let data = random_bytes(2 * CHUNK + 11, 47);
        node.put("guard/movie", &data);
        wait_for_tiers_as(&node, "guard/movie", &["primary", "secondary"], false);
        for _ in 0..3 {
            assert!(node.curl(&[], "/assets/guard/movie").body == data);
        }
        let metrics = text(&node.curl(&[], "/metrics").body);
        // The clients' reads are timed: 3 GETs of 3 chunks, at least one read each.
        assert!(
            metric_sum(&metrics, "reel_device_reads_done_total") >= 3,
            "{metrics}"
        );
        assert!(
            metric_sum(&metrics, "reel_device_read_nanoseconds_total") > 0,
            "{metrics}"
        );
        // A write-back with no one reading meanwhile needs no probe.
        assert_eq!(
            metric_sum(&metrics, "reel_migration_guard_probes_total"),
            0,
            "{metrics}"
        );
        let rate = metric_sum(&metrics, "reel_migration_guard_bytes_per_second");
        if target == "0" {
            assert_eq!(rate, 0, "no guard: the budget applies\n{metrics}");
        } else {
            let budget = metric_sum(&metrics, "reel_migration_copy_budget_bytes_per_second");
            assert!(
                rate >= budget / 64 && rate <= budget,
                "the guard's rate {rate} within [budget/64, budget {budget}]"
            );
        }
    }
}

#[test]
fn info_counts_requests_and_weights_ranges_by_bytes() {
    let Some(node) = Node::start("info_counts_requests_and_weights_ranges_by_bytes") else {
        return;
    };
    let size = 4 * CHUNK;
    let data = random_bytes(size, 77);
    node.put("rated/a", &data);
    // Two whole views, then one view fetched as four quarter ranges.
    for _ in 0..2 {
        assert_eq!(node.curl(&[], "/assets/rated/a").status, 200);
    }
    for q in 0..4 {
        let r = format!("{}-{}", q * CHUNK, (q + 1) * CHUNK - 1);
        assert_eq!(node.curl(&["-r", &r], "/assets/rated/a").status, 206);
    }
    // HEAD and 304 ask for no bytes and do not count.
    let _ = node.curl(&["-I"], "/assets/rated/a");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = node.curl(&[], "/assets/rated/a/info");
        assert_eq!(r.status, 200);
        let info: serde_json::Value = serde_json::from_slice(&r.body).expect("info JSON");
        let rate = &info["rate"];
        let requests = rate["requests"].as_u64().expect("requests");
        let bytes = rate["bytes_requested"].as_u64().expect("bytes_requested");
        let per_h = rate["views_per_h"].as_f64().expect("views_per_h");
        assert_eq!(requests, 6, "2 GETs + 4 ranges counted, HEAD not: {info}");
        assert_eq!(
            bytes,
            3 * size as u64,
            "three views' worth of bytes: {info}"
        );
        if per_h > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the folded rate never became positive: {info}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_hot_asset_is_promoted_and_demoted_when_it_cools() {
    // Seconds instead of hours, so the test sees both transitions: a 2 s half-life, promote at
    // 10,000 views/h (about 3 views in a second), demote below 5,000 views/h, 2 s residency.
    let extra = [
        "--rate-half-life",
        "2s",
        "--promote-per-h",
        "10000",
        "--demote-per-h",
        "5000",
        "--min-residency",
        "2s",
        "--migration-commit-interval",
        "200ms",
        "--migration-commit-settle",
        "1ms",
    ];
    let Some((mut node, t)) =
        Node::start_tiered("a_hot_asset_is_promoted_and_demoted_when_it_cools", &extra)
    else {
        return;
    };
    let data = random_bytes(2 * CHUNK + 999, 51);
    node.put("hot/a", &data);
    let last_modified = |node: &Node| {
        let r = node.curl(&[], "/assets/hot/a");
        assert_eq!(r.status, 200);
        r.header("last-modified")
            .expect("Last-Modified")
            .to_string()
    };
    let uploaded_lm = last_modified(&node);
    wait_for_tiers(&node, "hot/a", &["primary", "secondary"]);
    // Now on the secondary only: a node with an empty primary.
    node.restart_on(&t.p2, &t.args());
    wait_for_tiers(&node, "hot/a", &["secondary"]);

    // Hot: GETs until it is promoted; every response is the right bytes throughout.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = node.curl(&[], "/assets/hot/a");
        assert_eq!(r.status, 200);
        assert!(r.body == data, "wrong bytes while hot");
        let i = node.curl(&[], "/assets/hot/a/info");
        let info: serde_json::Value = serde_json::from_slice(&i.body).expect("info JSON");
        if info["tiers"] == serde_json::json!(["primary", "secondary"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never promoted: {info}; stderr:\n{}",
            node.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let metrics = text(&node.curl(&[], "/metrics").body);
    assert!(
        metric_sum(&metrics, "reel_promotions_total") >= 1,
        "promotion counted: {metrics}"
    );
    // The copies (write-back, then promotion) kept the upload's time.
    assert_eq!(
        last_modified(&node),
        uploaded_lm,
        "Last-Modified moved with the asset"
    );
    // Cold: no requests; the clean primary copy is dropped, the secondary still serves.
    wait_for_tiers(&node, "hot/a", &["secondary"]);
    let metrics = text(&node.curl(&[], "/metrics").body);
    assert!(
        metric_sum(&metrics, "reel_demotions_total") >= 1,
        "demotion counted: {metrics}"
    );
    let r = node.curl(&[], "/assets/hot/a");
    assert_eq!(r.status, 200);
    assert!(
        r.body == data,
        "served from the secondary after the demotion"
    );
}

#[test]
fn a_pinned_policy_promotes_persists_and_is_validated() {
    let extra = [
        "--migration-commit-interval",
        "200ms",
        "--migration-commit-settle",
        "1ms",
    ];
    let Some((mut node, t)) =
        Node::start_tiered("a_pinned_policy_promotes_persists_and_is_validated", &extra)
    else {
        return;
    };
    let data = random_bytes(CHUNK + 5, 61);
    node.put("pin/a", &data);
    wait_for_tiers(&node, "pin/a", &["primary", "secondary"]);
    node.restart_on(&t.p2, &t.args());
    wait_for_tiers(&node, "pin/a", &["secondary"]);

    let put = |node: &Node, body: &str, path: &str| {
        let f = node.file_of(body.as_bytes());
        node.curl(&["-T", path_str(&f)], path)
    };
    // Bad policies are refused with a reason, and change nothing.
    let r = put(&node, "{\"pin\": \"tape\"}", "/assets/pin/a/policy");
    assert_eq!(r.status, 400, "unknown tier: {}", text(&r.body));
    let r = put(
        &node,
        "{\"promote_per_h\": 1, \"demote_per_h\": 5}",
        "/assets/pin/a/policy",
    );
    assert_eq!(r.status, 400, "demote above promote: {}", text(&r.body));
    assert!(text(&r.body).contains("demote_per_h"), "{}", text(&r.body));
    let r = put(&node, "{\"pin\": \"primary\"}", "/assets/nope/policy");
    assert_eq!(r.status, 404, "policy of a missing asset");

    // Pinned to primary: promoted without any load.
    let r = put(&node, "{\"pin\": \"primary\"}", "/assets/pin/a/policy");
    assert_eq!(r.status, 200, "policy accepted: {}", text(&r.body));
    wait_for_tiers(&node, "pin/a", &["primary", "secondary"]);
    let g = node.curl(&[], "/assets/pin/a");
    assert!(
        g.status == 200 && g.body == data,
        "served after the promotion"
    );

    // The policy survives a restart and is not listed as an asset.
    node.restart_on(&t.p2, &t.args());
    let r = node.curl(&[], "/assets/pin/a/policy");
    assert_eq!(r.status, 200);
    let p: serde_json::Value = serde_json::from_slice(&r.body).expect("policy JSON");
    assert_eq!(p["pin"], "primary", "persisted: {p}");
    let list = text(&node.curl(&[], "/assets").body);
    assert!(
        !list.contains("/policy"),
        "internal records are not listed: {list}"
    );
    // Deleting the asset deletes its policy.
    assert_eq!(node.curl(&["-X", "DELETE"], "/assets/pin/a").status, 204);
    assert_eq!(node.curl(&[], "/assets/pin/a/policy").status, 404);
}

#[test]
fn migration_pauses_resumes_and_changes_budget_at_run_time() {
    let test = "migration_pauses_resumes_and_changes_budget_at_run_time";
    let Some((node, _)) = Node::start_tiered(test, &[]) else {
        return;
    };
    let state = |r: &Resp| -> serde_json::Value {
        assert_eq!(r.status, 200, "{}: {}", r.described, text(&r.body));
        serde_json::from_slice(&r.body).expect("migration state is JSON")
    };
    let s = state(&node.curl(&[], "/migration"));
    assert_eq!(
        (&s["tiered"], &s["paused"], &s["copy_budget_bytes_per_s"]),
        (
            &serde_json::json!(true),
            &serde_json::json!(false),
            &serde_json::json!(256u64 << 20)
        )
    );
    let s = state(&node.curl(&["-X", "PUT"], "/migration?paused=true&copy_budget=8M"));
    assert_eq!(
        (&s["paused"], &s["copy_budget_bytes_per_s"]),
        (&serde_json::json!(true), &serde_json::json!(8u64 << 20))
    );
    let metrics = text(&node.curl(&[], "/metrics").body);
    assert_eq!(
        metric_sum(&metrics, "reel_migration_paused"),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "reel_migration_copy_budget_bytes_per_second"),
        8 << 20
    );

    // Paused: a new upload stays on the primary alone (no write-back starts).
    let data = random_bytes(2 * CHUNK + 11, 47);
    node.put("paused/movie", &data);
    std::thread::sleep(Duration::from_secs(3));
    let (tiers, _) = tiers_of(&node, "paused/movie").expect("info");
    assert_eq!(tiers, ["primary"], "no write-back while paused");
    let metrics = text(&node.curl(&[], "/metrics").body);
    assert_eq!(
        metric_sum(&metrics, "reel_write_backs_total"),
        0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "reel_migration_bytes_total"),
        0,
        "{metrics}"
    );

    // Resumed: the write-back happens.
    let s = state(&node.curl(&["-X", "PUT"], "/migration?paused=false"));
    assert_eq!(s["paused"], serde_json::json!(false));
    wait_for_tiers_as(&node, "paused/movie", &["primary", "secondary"], false);
    let metrics = text(&node.curl(&[], "/metrics").body);
    assert_eq!(
        metric_sum(&metrics, "reel_write_backs_total"),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "reel_migration_paused"),
        0,
        "{metrics}"
    );

    // Bad requests: a one-line reason, nothing changed.
    for (args, path, want) in [
        (&["-X", "PUT"][..], "/migration", 400),
        (&["-X", "PUT"][..], "/migration?paused=maybe", 400),
        (&["-X", "PUT"][..], "/migration?copy_budget=lots", 400),
        (
            &["-X", "PUT", "-d", "paused=true"][..],
            "/migration?paused=true",
            400,
        ),
        (&[][..], "/migration?paused=true", 400),
        (&["-X", "DELETE"][..], "/migration", 405),
    ] {
        let r = node.curl(args, path);
        assert_eq!(r.status, want, "{}: {}", r.described, text(&r.body));
        assert!(
            !text(&r.body).trim().is_empty(),
            "{}: a reason",
            r.described
        );
    }
    let s = state(&node.curl(&[], "/migration"));
    assert_eq!(
        (&s["paused"], &s["copy_budget_bytes_per_s"]),
        (&serde_json::json!(false), &serde_json::json!(8u64 << 20))
    );
}

#[test]
fn migration_controls_need_a_secondary() {
    let Some(node) = Node::start("migration_controls_need_a_secondary") else {
        return;
    };
    let r = node.curl(&["-X", "PUT"], "/migration?paused=true");
    assert_eq!(r.status, 409, "{}: {}", r.described, text(&r.body));
    assert!(text(&r.body).contains("no secondary"), "{}", text(&r.body));
    let r = node.curl(&[], "/migration");
    assert_eq!(r.status, 200);
    let s: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(
        (&s["tiered"], &s["paused"]),
        (&serde_json::json!(false), &serde_json::json!(false))
    );
}
