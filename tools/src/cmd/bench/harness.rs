//! What the peer benchmarks (`reel bench nginx`, `reel bench migration`) share: a scratch
//! directory that goes away on exit, servers started as child processes and stopped on drop,
//! Ctrl-C that unwinds through those drops, wrk runs with a Lua script, HTTP through
//! [`reel_http::client::Conn`], and the host's counters (/proc) for the reports.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use reel_http::client::{encode_request, Conn, Response};

use crate::thread_cpu::{stat_fields, USER_HZ};

/// USER_HZ: the unit of /proc's CPU times (fixed at 100 in the Linux ABI).
pub const CLK_TCK: f64 = USER_HZ as f64;

static INTERRUPTED: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// Makes SIGINT and SIGTERM set a flag that [`check_interrupt`] turns into an error, so a
/// Ctrl-C unwinds through the drops that stop the servers and remove the scratch directory;
/// a second one ends the process at once.
pub fn install_interrupt() -> Result<()> {
    let flag = INTERRUPTED.get_or_init(|| Arc::new(AtomicBool::new(false)));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal, with the flag already set, ends the process at once (exit 130).
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(flag))
            .context("installing a signal handler")?;
        signal_hook::flag::register(sig, Arc::clone(flag))
            .context("installing a signal handler")?;
    }
    Ok(())
}

pub fn check_interrupt() -> Result<()> {
    if INTERRUPTED.get().is_some_and(|f| f.load(Ordering::Relaxed)) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// Sleeps `d`, waking every 50 ms to notice an interrupt.
pub fn sleep(d: Duration) -> Result<()> {
    let until = Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = Instant::now();
        if now >= until {
            return Ok(());
        }
        std::thread::sleep((until - now).min(Duration::from_millis(50)));
    }
}

/// Now, in seconds since the Unix epoch (the clock of `reel load --latency-log`).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Prints a progress line to stderr, prefixed by the benchmark's name.
pub fn note(me: &str, msg: impl std::fmt::Display) {
    eprintln!("{me}: {msg}");
}

/// The file system under a directory, from `df`.
pub struct FsInfo {
    pub fstype: String,
    /// The device, e.g. /dev/vda1.
    pub source: String,
    pub avail_mib: u64,
}

impl FsInfo {
    pub fn of(dir: &Path) -> Result<FsInfo> {
        let out = Command::new("df")
            .args(["--output=fstype,source,avail", "-B1M"])
            .arg(dir)
            .output()
            .context("running df")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<&str> = text
            .lines()
            .nth(1)
            .map(|l| l.split_whitespace().collect())
            .unwrap_or_default();
        if !out.status.success() || f.len() < 3 {
            bail!(
                "df {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(FsInfo {
            fstype: f[0].to_string(),
            source: f[1].to_string(),
            avail_mib: f[2].parse().unwrap_or(0),
        })
    }
}

/// A scratch directory under `parent`, removed on drop unless kept.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    keep: bool,
    me: &'static str,
}

impl Scratch {
    /// Fails on tmpfs (no O_DIRECT, which reel volumes and nginx directio need).
    pub fn new(me: &'static str, parent: &Path, prefix: &str, keep: bool) -> Result<Scratch> {
        if !parent.is_dir() {
            bail!("{} is not a directory", parent.display());
        }
        let fs = FsInfo::of(parent)?;
        if fs.fstype == "tmpfs" {
            bail!(
                "{} is on tmpfs, which has no O_DIRECT (reel volumes); choose --dir on ext4/xfs",
                parent.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .with_context(|| format!("creating a scratch directory in {}", parent.display()))?;
        let path = dir.path().to_path_buf();
        Ok(Scratch {
            dir: Some(dir),
            path,
            keep,
            me,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if self.keep {
                note(self.me, format!("kept {}", dir.keep().display()));
            }
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server to take).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// A child process (a server or a load generator), stopped on drop: SIGTERM, up to 10 s,
/// then SIGKILL.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr into `log`.
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last `n` lines of the log, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    /// Fails when the process has exited.
    pub fn alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} (pid {}) is no longer running ({status}); its log:\n{}",
                self.name,
                self.pid(),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Waits until `GET /healthz` on `addr` answers 200.
    pub fn wait_ready(&mut self, addr: SocketAddr, timeout: Duration) -> Result<()> {
        let until = Instant::now() + timeout;
        loop {
            self.alive()?;
            if let Ok(mut c) = Conn::connect(addr, Duration::from_secs(2)) {
                if c.request("GET", "/healthz", &[], None)
                    .is_ok_and(|r| r.status() == 200)
                {
                    return Ok(());
                }
            }
            if Instant::now() >= until {
                bail!(
                    "{} did not answer http://{addr}/healthz with 200 within {timeout:?}; its log:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            sleep(Duration::from_millis(100))?;
        }
    }

    /// Waits for the process to exit by itself; an interrupt stops it.
    pub fn wait(mut self) -> Result<std::process::ExitStatus> {
        loop {
            check_interrupt()?;
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM through kill(1): std offers only SIGKILL, and this is no measurement.
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "{} (pid {}) did not stop on SIGTERM; sending SIGKILL",
            self.name,
            self.pid()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `n` lines of a file (a log), for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `cmd` to its end with its output in `log`; fails (with the log's tail) unless it exits 0.
pub fn run_logged(name: &str, cmd: &mut Command, log: &Path) -> Result<()> {
    let p = Proc::spawn(name, cmd, log)?;
    let status = p.wait()?;
    if !status.success() {
        bail!("{name} failed ({status}): {}", tail(log, 20));
    }
    Ok(())
}

/// `reel format PATH --size N M` with this binary.
pub fn format_volume(path: &Path, mib: u64, log: &Path) -> Result<()> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("format")
        .arg(path)
        .arg("--size")
        .arg(format!("{mib}M"));
    run_logged("reel format", &mut cmd, log)
}

/// utime + stime of a process in USER_HZ ticks, from /proc/PID/stat.
pub fn proc_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(&format!("/proc/{pid}/stat"))?;
    // Fields 14 and 15 of the line.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The parent pid of a process (field 4 of /proc/PID/stat).
fn parent_pid(pid: u32) -> Option<u32> {
    stat_fields(&format!("/proc/{pid}/stat"))?
        .get(1)?
        .parse()
        .ok()
}

/// [`proc_ticks`] of a process and its children (nginx: the master and its workers).
pub fn tree_ticks(pid: u32) -> u64 {
    let mut total = proc_ticks(pid).unwrap_or(0);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(child) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) {
                if parent_pid(child) == Some(pid) {
                    total += proc_ticks(child).unwrap_or(0);
                }
            }
        }
    }
    total
}

/// (busy, total) jiffies of the whole host, from /proc/stat (idle and iowait are not busy).
pub fn host_cpu() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The block device under a directory, for /proc/diskstats (all processes).
pub struct Disk {
    /// The device name as /proc/diskstats spells it; `None` when it has no line there.
    pub dev: Option<String>,
}

/// One sample of a disk: bytes read, bytes written, milliseconds busy.
#[derive(Clone, Copy, Debug, Default)]
pub struct DiskSample {
    pub read: u64,
    pub written: u64,
    pub busy_ms: u64,
}

impl Disk {
    pub fn of(fs: &FsInfo) -> Disk {
        let name = Path::new(&fs.source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let dev = name.filter(|n| Disk::line(n).is_some());
        Disk { dev }
    }

    fn line(dev: &str) -> Option<DiskSample> {
        let text = std::fs::read_to_string("/proc/diskstats").ok()?;
        text.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.get(2) != Some(&dev) {
                return None;
            }
            let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            Some(DiskSample {
                read: n(5) * 512,
                written: n(9) * 512,
                busy_ms: n(12),
            })
        })
    }

    pub fn sample(&self) -> DiskSample {
        self.dev.as_deref().and_then(Disk::line).unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.dev.as_deref().unwrap_or("?")
    }
}

/// The first `n` fields of /proc/loadavg.
pub fn loadavg(n: usize) -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace()
        .take(n)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A /proc/meminfo field in KiB.
pub fn meminfo_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// "Linux 6.1.0, 2 CPUs, 8 GiB RAM": the host, for the report's header.
pub fn host_line() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    format!(
        "{} {}, {} CPUs, {:.0} GiB RAM",
        read("/proc/sys/kernel/ostype"),
        read("/proc/sys/kernel/osrelease"),
        cpus(),
        meminfo_kib("MemTotal") as f64 / 1048576.0
    )
}

pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Whether this process runs as root (the owner of /proc/self is the effective user).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Raises this process's soft open-file limit to the hard one (what `ulimit -n "$(ulimit -Hn)"`
/// does in a shell), through prlimit(1): servers and load generators started later inherit it,
/// and 128 connections plus nginx's open_file_cache need more than 1024. Best effort.
pub fn raise_nofile() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let hard = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_string));
    if let Some(hard) = hard {
        let _ = Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={hard}:{hard}"))
            .stderr(Stdio::null())
            .status();
    }
}

/// Fails unless every tool is on PATH, naming the apt packages that bring them.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing: {m}; install with: apt-get install -y {m} (or benches/peers.sh)",
            m = missing.join(" ")
        );
    }
    Ok(())
}

/// A wrk Lua script: each request is what `request_body` (Lua, returning a request) makes, with
/// `paths` (one request path per line of `paths_file`) and a per-thread seed; `done_body` (Lua,
/// in `done(summary, latency, requests)` with `e = summary.errors`) prints a `RESULT k=v …` line.
pub fn wrk_script(paths_file: &Path, comment: &str, request_body: &str, done_body: &str) -> String {
    format!(
        r#"-- {comment}
local paths = {{}}
for line in io.lines("{paths}") do
    if line ~= "" then paths[#paths + 1] = line end
end
local next_id = 1
function setup(thread)
    thread:set("thread_id", next_id)
    next_id = next_id + 1
end
function init(args)
    math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
    for _ = 1, 10 do math.random() end
end
function request()
{request_body}
end
function done(summary, latency, requests)
    local e = summary.errors
{done_body}
end
"#,
        paths = paths_file.display()
    )
}

/// The `RESULT k=v …` line a wrk script's done() printed, as numbers.
pub fn parse_result_line(out: &str) -> Option<BTreeMap<String, f64>> {
    let line = out.lines().find_map(|l| l.strip_prefix("RESULT "))?;
    Some(
        line.split_whitespace()
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect(),
    )
}

/// Runs wrk to its end with its output in `out`, and returns that output.
pub fn run_wrk(args: &[String], url: &str, out: &Path) -> Result<String> {
    let mut cmd = Command::new("wrk");
    cmd.args(args).arg(url);
    run_logged("wrk", &mut cmd, out)?;
    Ok(std::fs::read_to_string(out)?)
}

/// Fills `buf` with the next bytes of `rng`'s stream: test data, incompressible enough for
/// serving benchmarks and reproducible from a seed for checking what a server sends back.
pub fn fill_random(rng: &mut fastrand::Rng, buf: &mut [u8]) {
    for c in buf.chunks_mut(8) {
        let v = rng.u64(..).to_le_bytes();
        c.copy_from_slice(&v[..c.len()]);
    }
}

/// HTTP to one server over one keep-alive connection, reconnecting when it was closed.
pub struct Http {
    pub addr: SocketAddr,
    conn: Option<Conn>,
    timeout: Duration,
}

impl Http {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Http {
        Http {
            addr,
            conn: None,
            timeout,
        }
    }

    fn conn(&mut self) -> Result<&mut Conn> {
        if self.conn.is_none() {
            self.conn = Some(Conn::connect(self.addr, self.timeout)?);
        }
        self.conn.as_mut().context("no connection")
    }

    /// Sends `request` (bytes from [`encode_request`]; not HEAD) and reads the whole response;
    /// a stale keep-alive connection is replaced and the request sent again. `what` names the
    /// request in errors.
    pub fn exchange(&mut self, what: &str, request: &[u8]) -> Result<Response> {
        for attempt in 0..2 {
            match self.conn()?.exchange(request, false, 1 << 30) {
                Ok(resp) => {
                    if resp.head.close {
                        self.conn = None;
                    }
                    return Ok(resp);
                }
                Err(e) => {
                    self.conn = None;
                    if !(e.is_stale() && attempt == 0) {
                        return Err(e).with_context(|| what.to_string());
                    }
                }
            }
        }
        bail!("{what}: the connection kept closing")
    }

    /// `request`, failing unless the status is one of `want`.
    pub fn expect(
        &mut self,
        method: &str,
        target: &str,
        body: Option<&[u8]>,
        want: &[u16],
    ) -> Result<Response> {
        let host = self.addr.to_string();
        let request = encode_request(method, &host, target, &[], body);
        let r = self.exchange(&format!("{method} {target}"), &request)?;
        if !want.contains(&r.status()) {
            let text = r.text();
            bail!(
                "{method} {target} answered {}: {}",
                r.status(),
                &text[..text.len().min(300)]
            );
        }
        Ok(r)
    }

    /// PUTs `len` bytes that `fill` writes piece by piece, without holding them all in memory.
    pub fn put_stream(
        &mut self,
        target: &str,
        len: u64,
        mut fill: impl FnMut(&mut [u8]),
    ) -> Result<u16> {
        let host = self.addr.to_string();
        let cl = len.to_string();
        let head = encode_request("PUT", &host, target, &[("Content-Length", &cl)], None);
        let conn = self.conn()?;
        conn.write_all(&head)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            fill(&mut buf[..n]);
            conn.write_all(&buf[..n])?;
            left -= n as u64;
        }
        let head = conn.read_head()?;
        conn.read_body(&head, 1 << 20)?;
        if head.close {
            self.conn = None;
        }
        Ok(head.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines_parse() {
        let out =
            "Running 1s test\nRESULT bytes=100 duration_us=2000000 errors=0\nRequests/sec: 5\n";
        let r = parse_result_line(out).expect("a RESULT line");
        assert_eq!(r["bytes"], 100.0);
        assert_eq!(r["duration_us"], 2e6);
        assert!(parse_result_line("no result").is_none());
    }

    #[test]
    fn own_process_counters_read() {
        assert!(proc_ticks(std::process::id()).is_some());
        let (busy, total) = host_cpu();
        assert!(busy <= total && total > 0);
        assert!(!loadavg(3).is_empty());
        assert!(host_line().contains("CPUs"));
    }
}
