//! The one test harness of Reelstore's integration tests: the `reel` binary and its temp dirs
//! ([`Reel`]), the `reel node` process ([`node::NodeProc`]), deterministic content
//! ([`content`]), prerequisite probes ([`probe`]), Prometheus scrapes ([`metrics`]), file
//! volumes ([`volume`]) and HTTP helpers on the one client ([`http`]).
//!
//! It depends on no crate it tests: it drives the `reel` binary, whose path only the test crate
//! knows; [`reel!`] builds the [`Reel`] handle there.

pub mod cluster;
pub mod content;
pub mod curl;
pub mod http;
pub mod loopdev;
pub mod metrics;
pub mod netns;
pub mod node;
pub mod probe;
pub mod volume;
pub mod wire;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `reel` binary under test and the directory its tests keep temp files in.
#[derive(Clone, Copy, Debug)]
pub struct Reel {
    /// `env!("CARGO_BIN_EXE_reel")` of the test crate.
    pub bin: &'static str,
    /// `env!("CARGO_TARGET_TMPDIR")` of the test crate: under target/, not /tmp (which may be
    /// tmpfs without O_DIRECT).
    pub tmp: &'static str,
}

/// The [`Reel`] of the calling test crate (which must build the `reel` binary).
#[macro_export]
macro_rules! reel {
    () => {
        $crate::Reel {
            bin: env!("CARGO_BIN_EXE_reel"),
            tmp: env!("CARGO_TARGET_TMPDIR"),
        }
    };
}

impl Reel {
    /// `reel ARGS`, its output.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(self.bin)
            .args(args)
            .output()
            .expect("the reel binary runs")
    }

    /// `reel ARGS` that must succeed: its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "reel {args:?} failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    /// `reel ARGS` that must fail: its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "reel {args:?} should have failed; stdout:\n{}",
            text(&out.stdout)
        );
        text(&out.stderr)
    }

    /// A fresh temp dir named `prefix…` under [`Reel::tmp`]; removed on drop.
    pub fn tempdir(&self, prefix: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.tmp)
            .expect("temp dir")
    }
}

/// Calls `attempt` every `every` until it gives `Ok`: that value. An `Err` once `within` has
/// passed fails the test with the `Err`'s message.
pub fn poll<T>(
    within: Duration,
    every: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < deadline, "{why}"),
        }
        std::thread::sleep(every);
    }
}

/// Runs `cmd`, which must succeed: its output. A failure names `what` and shows the stderr.
pub fn output_ok(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(out.status.success(), "{what} failed: {}", text(&out.stderr));
    out
}

/// Bytes as text, lossily (for messages and text bodies).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// At most the first 300 bytes as text, for messages.
pub fn excerpt(b: &[u8]) -> String {
    let mut s = text(&b[..b.len().min(300)]);
    if b.len() > 300 {
        s.push_str(&format!("… ({} bytes)", b.len()));
    }
    s
}

/// A temp path as `&str` (they are UTF-8: the tests make them).
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}
