//! Power loss, simulated the way dm-log-writes does it: the driver records every completed
//! write (with its bytes) and every completed sync while a workload runs. For many crash points
//! we then rebuild the device as a power cut could leave it — everything before the last
//! completed sync is on the media; each write after it may be missing, complete, or torn at
//! 512-byte granularity — and check that recovery succeeds with every acknowledged asset intact.
//!
//! This catches what `kill -9` cannot: a missing or misplaced fdatasync (with O_DIRECT files a
//! killed process loses nothing that was written, power loss does).
//! `REEL_POWERLOSS_POINTS=N` sets the number of crash images (default 300).

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use reel_engine::driver::{Driver, DriverConfig, LogEvent};
use reel_engine::Volume;

const SECTOR: usize = 512;

#[test]
fn power_loss_at_any_point_keeps_every_acknowledged_asset() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("v.img");
    // Small journal and checkpoint slots: checkpoints and lap restarts happen in the workload.
    let vol = format_small(&path, 8 << 20, 32 << 10, 64 << 10);
    let base = std::fs::read(&path).expect("image after open");
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut drv = Driver::new(&DriverConfig {
        ring_entries: 64,
        buf_size: 1 << 20,
        buf_count: 16,
        write_log: Some(log.clone()),
    })
    .expect("driver");
    let seed = std::env::var("REEL_POWERLOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(42u64);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mark = log.clone();
    let mut emit = |line: String| mark.lock().expect("log").push(LogEvent::Mark(line));
    for n in 1..=80 {
        acks::workload_step(&vol, &mut drv, &mut rng, seed, n, 1_500_000, &mut emit);
    }
    let final_gen = vol.stats().checkpoint_generation;
    drop(vol);
    let events = log.lock().expect("log").clone();
    let syncs = events
        .iter()
        .filter(|e| matches!(e, LogEvent::Sync { .. }))
        .count();
    assert!(
        final_gen > 2,
        "the workload should roll the journal over a few times (generation {final_gen})"
    );
    assert!(syncs > 100, "{syncs} syncs");

    let points: usize = std::env::var("REEL_POWERLOSS_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let crash_path = dir.path().join("crash.img");
    let mut drv = driver();
    let (mut torn_writes, mut dropped_writes) = (0, 0);
    for p in 0..points {
        // Crash after event k (0..=len), spread over the whole run.
        let k = if p + 1 == points {
            events.len()
        } else {
            rng.usize(0..=events.len())
        };
        let last_sync = events[..k]
            .iter()
            .rposition(|e| matches!(e, LogEvent::Sync { .. }));
        let mut img = base.clone();
        let mut lines = Vec::new();
        for (i, ev) in events[..k].iter().enumerate() {
            match ev {
                LogEvent::Write { offset, data, .. } => {
                    let off = *offset as usize;
                    if last_sync.is_some_and(|s| i < s) {
                        img[off..off + data.len()].copy_from_slice(data);
                    } else {
                        // Not yet synced: gone, whole, or torn sector by sector.
                        match rng.u32(0..3) {
                            0 => dropped_writes += 1,
                            1 => img[off..off + data.len()].copy_from_slice(data),
                            _ => {
                                torn_writes += 1;
                                for s in (0..data.len()).step_by(SECTOR) {
                                    if rng.bool() {
                                        img[off + s..off + s + SECTOR]
                                            .copy_from_slice(&data[s..s + SECTOR]);
                                    }
                                }
                            }
                        }
                    }
                }
                LogEvent::Mark(l) => lines.push(l.clone()),
                LogEvent::Sync { .. } => {}
            }
        }
        let mut model = acks::Assets::new();
        let pending = acks::fold(&mut model, &lines);
        std::fs::write(&crash_path, &img).expect("write crash image");
        let ctx = format!(
            "crash point {p} (after event {k} of {}, seed {seed})",
            events.len()
        );
        let vol =
            Volume::open(&crash_path).unwrap_or_else(|e| panic!("{ctx}: recovery failed: {e}"));
        acks::check_recovered(&vol, &mut drv, &model, &pending, &ctx);
    }
    eprintln!(
        "power loss: {points} crash images over {} logged events ({syncs} syncs, {final_gen} checkpoint generations); {dropped_writes} unsynced writes dropped, {torn_writes} torn",
        events.len()
    );
}
