//! Crash consistency, for real: a child process ingests and deletes assets on a volume and is
//! SIGKILLed at a random moment; the parent reopens the volume and checks that every
//! acknowledged asset is there with its exact bytes, that nothing unacknowledged is visible
//! (the one operation in flight at the kill may land either way, but whole), and that used + free
//! space equals capacity. The same volume carries over from kill to kill, so recovery of an
//! already-recovered volume is exercised too.
//!
//! `REEL_CRASH_ITERS=N` sets the number of kills (default 50); `REEL_CRASH_SEED` fixes the seed.
//! The loop-device variant runs when the test runs as root with `losetup` available, and says
//! why it skips otherwise.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use reel_store::Volume;

const ENV_CHILD_PATH: &str = "REEL_CRASH_CHILD_PATH";
const ENV_CHILD_SEED: &str = "REEL_CRASH_CHILD_SEED";

/// The child side. Ignored in normal runs; the parent runs it by name with `--ignored`.
#[test]
#[ignore = "crash-test child process; run by crash tests"]
fn crash_child_worker() {
    let Ok(path) = std::env::var(ENV_CHILD_PATH) else {
        return;
    };
    let seed: u64 = std::env::var(ENV_CHILD_SEED)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut out = std::io::stdout().lock();
    let vol = Volume::open(Path::new(&path)).expect("child: open");
    let mut drv = driver();
    writeln!(out, "@@READY")
        .and_then(|()| out.flush())
        .expect("stdout");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut emit = |line: String| {
        writeln!(out, "@@{line}")
            .and_then(|()| out.flush())
            .expect("stdout")
    };
    for n in 1.. {
        acks::workload_step(&vol, &mut drv, &mut rng, seed, n, usize::MAX, &mut emit);
    }
}

/// Runs `iters` kill/recover rounds against the volume at `path`.
fn crash_rounds(path: &Path, iters: u32, seed: u64) {
    let exe = std::env::current_exe().expect("test binary");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model = acks::Assets::new();
    let mut drv = driver();
    let mut kills_mid_op = 0;
    for round in 0..iters {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child_worker",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ENV_CHILD_PATH, path)
            .env(
                ENV_CHILD_SEED,
                (seed ^ (round as u64 + 1).wrapping_mul(0x9E37_79B9)).to_string(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest's own output may share a line with ours: keep what follows the marker.
                let Some(at) = line.find("@@") else { continue };
                if tx.send(line[at + 2..].to_string()).is_err() {
                    break;
                }
            }
        });
        // Mostly kill while ingesting; sometimes during recovery (before READY).
        let during_open = rng.u32(0..10) == 0;
        let mut lines = Vec::new();
        if !during_open {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(l) if l == "READY" => break,
                    Ok(l) => lines.push(l),
                    Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                        if let Ok(Some(status)) = child.try_wait() {
                            let mut err = String::new();
                            if let Some(mut e) = child.stderr.take() {
                                let _ = std::io::Read::read_to_string(&mut e, &mut err);
                            }
                            panic!("round {round}: child exited before READY ({status}): {err}");
                        }
                    }
                    Err(_) => panic!("round {round}: child never became ready"),
                }
            }
            std::thread::sleep(Duration::from_micros(rng.u64(0..120_000)));
        } else {
            std::thread::sleep(Duration::from_micros(rng.u64(0..3_000)));
        }
        child.kill().expect("SIGKILL");
        let status = child.wait().expect("wait");
        assert!(
            !status.success(),
            "round {round}: the child must have been killed, not exited"
        );
        reader.join().expect("reader thread");
        lines.extend(rx.try_iter());
        // A kill can cut the last line short: only whole lines count.
        if let Some(last) = lines.last() {
            let whole = last == "READY"
                || last.split(' ').count()
                    == match last.get(..5) {
                        Some("B put") | Some("A put") => 5,
                        _ => 3,
                    };
            if !whole {
                lines.pop();
            }
        }

        let pending = acks::fold(&mut model, &lines);
        if pending.is_some() {
            kills_mid_op += 1;
        }
        let vol =
            Volume::open(path).unwrap_or_else(|e| panic!("round {round}: recovery failed: {e}"));
        model = acks::check_recovered(&vol, &mut drv, &model, &pending, &format!("round {round}"));
        drop(vol);
    }
    eprintln!("crash test: {iters} kills ({kills_mid_op} in the middle of an operation), {} assets at the end", model.len());
}

fn iters() -> u32 {
    std::env::var("REEL_CRASH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
}

fn seed() -> u64 {
    std::env::var("REEL_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let s = fastrand::u64(..);
            eprintln!("crash test seed: {s} (REEL_CRASH_SEED={s} to repeat)");
            s
        })
}

#[test]
fn kill9_during_ingest_and_delete_on_a_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("crash.img");
    // A small journal (64 KiB) so that checkpoints and journal laps happen under the kills too.
    drop(format_small(&path, 96 << 20, 64 << 10, 256 << 10));
    crash_rounds(&path, iters(), seed());
}

#[test]
fn kill9_during_ingest_and_delete_on_a_loop_device() {
    let Some(dev) = LoopDevice::attach(
        "kill9_during_ingest_and_delete_on_a_loop_device",
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")),
        96 << 20,
    ) else {
        return;
    };
    let opts = reel_store::FormatOptions {
        size: None,
        force: true,
        geometry: reel_store::format::GeometryOptions {
            journal_bytes: Some(64 << 10),
            checkpoint_slot_bytes: Some(256 << 10),
            chunk_size: None,
        },
    };
    Volume::format(&dev.path, &opts).expect("format loop device");
    crash_rounds(&dev.path, iters().div_ceil(2), seed());
}
