//! Prerequisite probes. Each returns `None` when the prerequisite is here and `Some(reason)`
//! (naming the fix) when it is not; [`skip`] says out loud why a test does not run.

use std::process::Command;

use crate::{text, Reel};

/// Whether every probe passed; otherwise prints `SKIPPED: <test>: <reason>` for the first that
/// failed and returns false, so the test returns early.
pub fn runnable(test: &str, probes: &[&dyn Fn() -> Option<String>]) -> bool {
    for p in probes {
        if let Some(reason) = p() {
            skip(test, &reason);
            return false;
        }
    }
    true
}

/// Prints why `test` skips.
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIPPED: {test}: {reason}");
}

/// The process runs as root (effective uid 0).
pub fn root() -> Option<String> {
    // /proc/self/status carries the effective uid (third field of "Uid:").
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    (!root).then(|| "needs root (it attaches a loop device)".to_string())
}

/// `name ARGS` runs (the program is installed); `install` names the fix.
pub fn command(name: &str, args: &[&str], install: &str) -> Option<String> {
    match Command::new(name).args(args).output() {
        Ok(_) => None,
        Err(e) => Some(format!("{name} not found ({e}); {install}")),
    }
}

pub fn curl() -> Option<String> {
    command("curl", &["--version"], "apt-get install curl")
}

pub fn sha256sum() -> Option<String> {
    command("sha256sum", &["--version"], "install coreutils")
}

pub fn fio() -> Option<String> {
    command("fio", &["--version"], "apt-get install fio")
}

/// The `kill` command (for SIGTERM).
pub fn kill() -> Option<String> {
    command("kill", &["-l"], "install procps")
}

/// Root and `losetup`, for a loop device.
pub fn loop_device() -> Option<String> {
    root().or_else(|| command("losetup", &["--version"], "install util-linux"))
}

impl Reel {
    /// io_uring works here (`reel inspect` probes it before it looks at its argument).
    pub fn io_uring(&self) -> Option<String> {
        let out = self.run(&["inspect", "/nonexistent/reel-probe"]);
        let err = text(&out.stderr);
        err.contains("io_uring")
            .then(|| format!("io_uring is unavailable here: {err}"))
    }

    /// [`Reel::io_uring`] for `test`: false (having said why) when it is unavailable.
    pub fn io_uring_or_skip(&self, test: &str) -> bool {
        runnable(test, &[&|| self.io_uring()])
    }
}
