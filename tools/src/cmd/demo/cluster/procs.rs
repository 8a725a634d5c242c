//! The cluster demo's processes: `reel manager` and `reel node`s, children of this very binary
//! (`std::env::current_exe()`), each waited for until it prints its "listening on" line (as the
//! test kit does), stderr in a log file of the demo's directory. [`Procs`] owns them: dropped,
//! it stops every child (SIGTERM, then SIGKILL after a grace period) and reaps it, so no exit
//! path of the demo leaves one behind; a second Ctrl-C kills them at once
//! ([`Procs::kill_all`] from the signal thread).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// How long a child may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One running child.
pub(super) struct Proc {
    pub(super) name: String,
    child: Child,
    pub(super) log: PathBuf,
    /// Where clients reach it.
    pub(super) access: SocketAddr,
}

impl Proc {
    /// The last lines of its stderr, for an error message.
    pub(super) fn log_tail(&self) -> String {
        log_tail(&self.log)
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(15);
    lines[from..].join("\n")
}

/// The children, in the order started; stopped in the reverse order.
#[derive(Default)]
pub(super) struct Procs {
    procs: Mutex<Vec<Proc>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The address after `marker` in `line`, if there is one.
fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
}

/// What a child printed that says where it listens: `(access, peer)` once both are known.
///
/// - `reel manager: listening on A (clients) and P (nodes), store …`
/// - `reel node: inter-server listener on P (…)`, then `reel node: listening on A (…)`
fn parse_listening(line: &str, peer: &mut Option<SocketAddr>) -> Option<(SocketAddr, SocketAddr)> {
    if let Some(p) = addr_after(line, "inter-server listener on ") {
        *peer = Some(p);
        return None;
    }
    let access = addr_after(line, "listening on ")?;
    if let Some(p) = addr_after(line, "(clients) and ") {
        return Some((access, p));
    }
    peer.map(|p| (access, p))
}

impl Procs {
    /// Starts `reel ARGS` as `name` (stderr into `log`) and waits for its addresses; gives up
    /// when it exits, after [`START_TIMEOUT`], or when `stop` is raised.
    pub(super) fn spawn(
        &self,
        name: &str,
        args: &[String],
        log: &Path,
        stop: &AtomicBool,
    ) -> Result<(SocketAddr, SocketAddr)> {
        let exe = std::env::current_exe().context("cannot find this program's own binary")?;
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("creating the log {}", log.display()))?;
        let mut child = Command::new(&exe)
            .args(args)
            .env(
                "REEL_LOG",
                std::env::var("REEL_LOG").unwrap_or("warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("starting {name} ({} {})", exe.display(), args.join(" ")))?;
        let stdout = child.stdout.take();
        let (tx, rx) = mpsc::channel();
        // Reads stdout for the child's whole life, so it never blocks on a full pipe; ends at
        // the child's exit.
        if let Some(out) = stdout {
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + START_TIMEOUT;
        let mut peer = None;
        let found = loop {
            if stop.load(Relaxed) {
                break Err(anyhow!("interrupted while {name} was starting"));
            }
            if Instant::now() >= deadline {
                break Err(anyhow!(
                    "{name} printed no address within {START_TIMEOUT:?}"
                ));
            }
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(addrs) = parse_listening(&line, &mut peer) {
                        break Ok(addrs);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Stdout closed: the child is exiting; give it a moment to be reaped.
                    std::thread::sleep(Duration::from_millis(100));
                    let status = child.try_wait().ok().flatten();
                    break Err(anyhow!(
                        "{name} exited before it was listening ({})",
                        status.map_or("still running".to_string(), |s| s.to_string())
                    ));
                }
            }
        };
        match found {
            Ok((access, peer)) => {
                lock(&self.procs).push(Proc {
                    name: name.to_string(),
                    child,
                    log: log.to_path_buf(),
                    access,
                });
                Ok((access, peer))
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(e.context(format!(
                    "starting {name}; its stderr ({}):\n{}",
                    log.display(),
                    log_tail(log)
                )))
            }
        }
    }

    /// The first child that has exited, with its status and the end of its log.
    pub(super) fn exited(&self) -> Option<String> {
        let mut procs = lock(&self.procs);
        procs.iter_mut().find_map(|p| match p.child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}); the end of its log ({}):\n{}",
                p.name,
                p.log.display(),
                p.log_tail()
            )),
            _ => None,
        })
    }

    /// Runs `f` on the child named `name`.
    pub(super) fn with<T>(&self, name: &str, f: impl FnOnce(&Proc) -> T) -> Option<T> {
        lock(&self.procs).iter().find(|p| p.name == name).map(f)
    }

    /// SIGKILL to every child, and reap them (the second Ctrl-C).
    pub(super) fn kill_all(&self) {
        let mut procs = lock(&self.procs);
        for p in procs.iter_mut().rev() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        procs.clear();
    }

    /// Stops every child: SIGTERM (the nodes first, the manager last), then waits up to
    /// [`STOP_GRACE`] for all, then SIGKILL to the rest; every child is reaped. A failure to
    /// stop cleanly is reported, not fatal.
    pub(super) fn stop_all(&self) -> Result<()> {
        let mut procs = lock(&self.procs);
        for p in procs.iter().rev() {
            // `kill -TERM` (the command: std only sends SIGKILL, and the workspace has no
            // unsafe outside the driver).
            let _ = Command::new("kill")
                .args(["-TERM", &p.child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + STOP_GRACE;
        let mut unclean = Vec::new();
        for p in procs.iter_mut().rev() {
            let status = loop {
                match p.child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => break None,
                }
            };
            match status {
                Some(s) if s.success() => {}
                Some(s) => unclean.push(format!("{} exited with {s}", p.name)),
                None => {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    unclean.push(format!(
                        "{} did not stop within {STOP_GRACE:?} of SIGTERM and was killed",
                        p.name
                    ));
                }
            }
        }
        procs.clear();
        if !unclean.is_empty() {
            bail!("{}", unclean.join("; "));
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        let _ = self.stop_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_lines_give_both_addresses() {
        let mut peer = None;
        assert_eq!(
            parse_listening(
                "reel manager: listening on 127.0.0.1:4000 (clients) and 127.0.0.1:4001 \
                 (nodes), store embedded",
                &mut peer
            ),
            Some((
                "127.0.0.1:4000".parse().expect("addr"),
                "127.0.0.1:4001".parse().expect("addr")
            ))
        );
        assert_eq!(
            parse_listening(
                "reel node: inter-server listener on 127.0.0.1:5001 (cluster token required)",
                &mut peer
            ),
            None
        );
        assert_eq!(
            parse_listening(
                "reel node: listening on 127.0.0.1:5000 (primary /x: 0 assets, …)",
                &mut peer
            ),
            Some((
                "127.0.0.1:5000".parse().expect("addr"),
                "127.0.0.1:5001".parse().expect("addr")
            ))
        );
        let mut none = None;
        assert_eq!(
            parse_listening("reel node: listening on 127.0.0.1:5000 (…)", &mut none),
            None,
            "a node without its inter-server listener is not a cluster member"
        );
        assert_eq!(parse_listening("listening on nonsense", &mut none), None);
    }
}
