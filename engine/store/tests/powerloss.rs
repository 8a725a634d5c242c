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
use reel_store::driver::{Driver, DriverConfig, LogEvent};
use reel_store::Volume;

const SECTOR: usize = 512;

/// A driver that records every completed write (with its bytes) and sync, and the log.
fn logging_driver() -> (Driver, Arc<Mutex<Vec<LogEvent>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let drv = Driver::new(&DriverConfig {
        ring_entries: 64,
        buf_size: 1 << 20,
        buf_count: 16,
        write_log: Some(log.clone()),
    })
    .expect("driver");
    (drv, log)
}

/// What a power cut left of one logged write.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Laid {
    Whole,
    Dropped,
    Torn,
}

/// Lays a logged write into a crash image: whole if a completed sync followed it (`synced`),
/// else at random gone, whole, or torn sector by sector.
fn lay_write(
    img: &mut [u8],
    rng: &mut fastrand::Rng,
    synced: bool,
    offset: u64,
    data: &[u8],
) -> Laid {
    let off = offset as usize;
    let laid = if synced {
        Laid::Whole
    } else {
        [Laid::Dropped, Laid::Whole, Laid::Torn][rng.usize(0..3)]
    };
    match laid {
        Laid::Whole => img[off..off + data.len()].copy_from_slice(data),
        Laid::Dropped => {}
        Laid::Torn => {
            for s in (0..data.len()).step_by(SECTOR) {
                if rng.bool() {
                    img[off + s..off + s + SECTOR].copy_from_slice(&data[s..s + SECTOR]);
                }
            }
        }
    }
    laid
}

/// Crash point `p` of `points` over `events` logged events: crash after event k (0..=events),
/// at random, spread over the whole run; the last point after every event.
fn crash_point(p: usize, points: usize, events: usize, rng: &mut fastrand::Rng) -> usize {
    if p + 1 == points {
        events
    } else {
        rng.usize(0..=events)
    }
}

/// The crash image after the first `k` logged events (each write laid by [`lay_write`], whole
/// if a completed sync among those events followed it, reported to `laid`), and the marks
/// among those events, in order.
fn crash_image(
    events: &[LogEvent],
    k: usize,
    base: &[u8],
    rng: &mut fastrand::Rng,
    mut laid: impl FnMut(Laid),
) -> (Vec<u8>, Vec<String>) {
    let last_sync = events[..k]
        .iter()
        .rposition(|e| matches!(e, LogEvent::Sync { .. }));
    let mut img = base.to_vec();
    let mut marks = Vec::new();
    for (i, ev) in events[..k].iter().enumerate() {
        match ev {
            LogEvent::Write { offset, data, .. } => {
                let synced = last_sync.is_some_and(|s| i < s);
                laid(lay_write(&mut img, rng, synced, *offset, data));
            }
            LogEvent::Mark(l) => marks.push(l.clone()),
            LogEvent::Sync { .. } => {}
        }
    }
    (img, marks)
}

/// The marks the volatile-copy and lazy-drop workloads log around their operations.
#[derive(Debug)]
enum Mark<'a> {
    /// `B id seed len` / `B id del 0`: an upload or publish (content seed, length) or a delete
    /// begins; not acknowledged until its closing mark.
    Begin(&'a str, Option<(u64, usize)>),
    /// `A id seed len`: the upload is acknowledged (durable).
    Acked(&'a str, u64, usize),
    /// `V id seed len`: the copy is published, volatile.
    Volatile(&'a str, u64, usize),
    /// `C`: every volatile copy is committed.
    Committed,
    /// `D id`: the delete is acknowledged.
    Deleted(&'a str),
    /// `F id`: the upload failed (no space).
    Failed,
    /// `L id`: the asset is dropped lazily (its Delete record written, not synced).
    Dropped(&'a str),
    /// `S`: no drop waits for a sync.
    Settled,
}

fn parse_mark(line: &str) -> Mark<'_> {
    let f: Vec<&str> = line.split(' ').collect();
    let num = |s: &str| {
        s.parse::<u64>()
            .unwrap_or_else(|_| panic!("bad mark {line:?}"))
    };
    match f.as_slice() {
        ["B", id, "del", _] => Mark::Begin(id, None),
        ["B", id, s, n] => Mark::Begin(id, Some((num(s), num(n) as usize))),
        ["A", id, s, n] => Mark::Acked(id, num(s), num(n) as usize),
        ["V", id, s, n] => Mark::Volatile(id, num(s), num(n) as usize),
        ["C"] => Mark::Committed,
        ["D", id] => Mark::Deleted(id),
        ["F", _] => Mark::Failed,
        ["L", id] => Mark::Dropped(id),
        ["S"] => Mark::Settled,
        other => panic!("unexpected mark {other:?}"),
    }
}

/// Whether the operation the crash cut (`Begin(id, op)`) shows as done after recovery: the
/// asset there whole with the new content, or, for a delete, gone. Either outcome is allowed.
fn cut_operation_done(vol: &Volume, drv: &mut Driver, id: &str, op: Option<(u64, usize)>) -> bool {
    match op {
        Some((s, n)) => vol
            .get(id)
            .is_some_and(|a| a.size() == n as u64 && read_all(vol, drv, id, true) == content(s, n)),
        None => vol.get(id).is_none(),
    }
}

#[test]
fn power_loss_at_any_point_keeps_every_acknowledged_asset() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("v.img");
    // Small journal and checkpoint slots: checkpoints and lap restarts happen in the workload.
    let vol = format_small(&path, 8 << 20, 32 << 10, 64 << 10);
    let base = std::fs::read(&path).expect("image after open");
    let (mut drv, log) = logging_driver();
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
        let k = crash_point(p, points, events.len(), &mut rng);
        let (img, lines) = crash_image(&events, k, &base, &mut rng, |laid| match laid {
            Laid::Dropped => dropped_writes += 1,
            Laid::Torn => torn_writes += 1,
            Laid::Whole => {}
        });
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

/// Migration copies published volatile (`Volume::publish_volatile`) and made durable later
/// (`Volume::commit_volatile`), between synced uploads and deletes, under the same simulated
/// power cuts: after recovery every acknowledged upload is intact; a copy committed (and not
/// deleted since) is there and intact; a copy not yet committed is absent or intact, never
/// wrong; a deleted one is gone; and no space leaks.
#[test]
fn power_loss_never_corrupts_volatile_copies() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("v.img");
    let vol = format_small(&path, 16 << 20, 32 << 10, 64 << 10);
    let base = std::fs::read(&path).expect("image after open");
    let (mut drv, log) = logging_driver();
    let mark = |line: String| log.lock().expect("log").push(LogEvent::Mark(line));
    let mut rng = fastrand::Rng::with_seed(7);
    let opts = reel_store::PutOptions::default();
    for n in 1..=60u64 {
        // An upload (synced, acknowledged when put returns).
        let uid = format!("u/{}", n % 5);
        let len = rng.usize(0..300_000);
        mark(format!("B {uid} {n} {len}"));
        vol.put(&mut drv, &uid, &mut &content(n, len)[..], &opts)
            .expect("put");
        mark(format!("A {uid} {n} {len}"));
        // A copy, published volatile.
        let cid = format!("c/{n}");
        let clen = rng.usize(1..400_000);
        let mut ing = vol.ingest(&drv, &cid, &opts).expect("ingest");
        ing.write(&mut drv, &content(1000 + n, clen))
            .expect("write");
        let p = ing.prepare(&mut drv).expect("prepare");
        let yes = |_: Option<&reel_store::Asset>| true;
        mark(format!("B {cid} {} {clen}", 1000 + n));
        assert!(vol.publish_volatile(p, &yes).expect("publish").is_some());
        mark(format!("V {cid} {} {clen}", 1000 + n));
        if n % 5 == 0 {
            vol.commit_volatile(&mut drv).expect("commit");
            mark("C".to_string());
        }
        if n % 7 == 0 || n % 7 == 3 {
            // Delete an older copy (committed, n % 7 == 0, or most likely not yet: the one just
            // published; a delete must not journal what the journal never knew).
            let old = format!("c/{}", if n % 7 == 0 { n - 3 } else { n });
            mark(format!("B {old} del 0"));
            assert!(vol.delete(&mut drv, &old).expect("delete"));
            mark(format!("D {old}"));
        }
    }
    drop(vol);
    let events = log.lock().expect("log").clone();
    let mut drv = driver();
    let crash_path = dir.path().join("crash.img");
    let points = 200;
    let (mut volatile_kept, mut volatile_lost) = (0, 0);
    for p in 0..points {
        let k = crash_point(p, points, events.len(), &mut rng);
        let (img, marks) = crash_image(&events, k, &base, &mut rng, |_| {});
        // id -> (seed, len, durable)
        let mut model: std::collections::BTreeMap<String, (u64, usize, bool)> = Default::default();
        // The operation begun and not acknowledged: (id, Some((seed, len)) for a put or a
        // publish, None for a delete). Recovery may show it done or not, whole either way.
        let mut in_flight: Option<(&str, Option<(u64, usize)>)> = None;
        for l in &marks {
            match parse_mark(l) {
                Mark::Begin(id, op) => in_flight = Some((id, op)),
                Mark::Acked(id, s, n) => {
                    in_flight = None;
                    model.insert(id.to_string(), (s, n, true));
                }
                Mark::Volatile(id, s, n) => {
                    in_flight = None;
                    model.insert(id.to_string(), (s, n, false));
                }
                Mark::Committed => model.values_mut().for_each(|v| v.2 = true),
                Mark::Deleted(id) => {
                    in_flight = None;
                    model.remove(id);
                }
                other => panic!("unexpected mark {other:?}"),
            }
        }
        std::fs::write(&crash_path, &img).expect("crash image");
        let ctx = format!("crash point {p} (after event {k} of {})", events.len());
        let vol =
            Volume::open(&crash_path).unwrap_or_else(|e| panic!("{ctx}: recovery failed: {e}"));
        // The operation in flight may have happened: then the model is the one after it.
        if let Some((id, op)) = in_flight {
            if cut_operation_done(&vol, &mut drv, id, op) {
                match op {
                    Some((s, n)) => {
                        model.insert(id.to_string(), (s, n, id.starts_with("u/")));
                    }
                    None => {
                        model.remove(id);
                    }
                }
            }
        }
        for a in vol.list() {
            let Some((s, n, durable)) = model.get(a.id()) else {
                panic!(
                    "{ctx}: {} is there but was never published or was deleted",
                    a.id()
                );
            };
            assert!(
                read_all(&vol, &mut drv, a.id(), true) == content(*s, *n),
                "{ctx}: {} has wrong bytes (durable: {durable})",
                a.id()
            );
            if !durable {
                volatile_kept += 1;
            }
        }
        for (id, (_, _, durable)) in &model {
            let here = vol.get(id).is_some();
            assert!(here || !durable, "{ctx}: durable {id} lost");
            if !here {
                volatile_lost += 1;
            }
        }
        assert_space_adds_up(&vol, &ctx);
    }
    eprintln!(
        "volatile copies under power loss: {points} crash images; uncommitted copies lost {volatile_lost} times, kept whole {volatile_kept} times (by a later checkpoint or sync), never wrong"
    );
    assert!(
        volatile_lost > 0,
        "some crash points must fall before a commit"
    );
}

/// Lazy drops (`Volume::drop_if`, a migration's demotion or eviction: the Delete record is
/// written but not synced) between synced uploads on a nearly full volume, where uploads need
/// the dropped blocks, under the same simulated power cuts: after recovery every acknowledged
/// upload is intact; a dropped asset is gone once a sync covered its drop (a later upload, a
/// durable delete, a commit), and before that it is either gone or back **whole** — never
/// pointing at blocks reused by a later upload; a deleted one stays gone; no space leaks.
#[test]
fn power_loss_never_brings_back_a_lazily_dropped_asset_wrong() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("v.img");
    let vol = format_small(&path, 8 << 20, 32 << 10, 64 << 10);
    let base = std::fs::read(&path).expect("image after open");
    let (mut drv, log) = logging_driver();
    let mark = |line: String| log.lock().expect("log").push(LogEvent::Mark(line));
    let mut rng = fastrand::Rng::with_seed(11);
    let opts = reel_store::PutOptions::default();
    let mut needed_dropped_space = 0;
    for n in 1..=90u64 {
        let id = format!("a/{}", rng.u64(0..6));
        let len = rng.usize(500_000..3_000_000);
        let short = vol.stats().free_bytes < len as u64 && vol.dropped_unsynced_bytes() > 0;
        mark(format!("B {id} {n} {len}"));
        match vol.put(&mut drv, &id, &mut &content(n, len)[..], &opts) {
            Ok(_) => {
                mark(format!("A {id} {n} {len}"));
                needed_dropped_space += usize::from(short);
            }
            Err(reel_store::EngineError::NoSpace { .. }) => mark(format!("F {id}")),
            Err(e) => panic!("put {id}: {e}"),
        }
        // "S": no drop waits for a sync (the volume says so; the crash images below hold it to
        // the syncs really logged).
        let settled = |vol: &Volume| {
            if vol.dropped_unsynced_bytes() == 0 {
                mark("S".to_string());
            }
        };
        settled(&vol);
        // Now and then drop an asset lazily, as a demotion does.
        for _ in 0..usize::from(rng.u8(0..3) == 0) {
            let victim = format!("a/{}", rng.u64(0..6));
            // Marked before: once its record is written it may be on the media.
            mark(format!("L {victim}"));
            vol.drop_if(&mut drv, &victim, &|_| true).expect("drop");
        }
        if n % 11 == 0 {
            // A client's delete of a dropped id: durable, so the drop is too.
            let victim = format!("a/{}", rng.u64(0..6));
            if vol.get(&victim).is_none() {
                mark(format!("B {victim} del 0"));
                vol.delete(&mut drv, &victim).expect("delete");
                mark(format!("D {victim}"));
                settled(&vol);
            }
        }
        if n % 13 == 0 {
            vol.commit_volatile(&mut drv).expect("commit");
            settled(&vol);
        }
    }
    assert!(
        needed_dropped_space > 0,
        "some upload must have needed the blocks of a drop not yet synced"
    );
    drop(vol);
    let events = log.lock().expect("log").clone();
    let mut drv = driver();
    let crash_path = dir.path().join("crash.img");
    let points = 200;
    let (mut came_back, mut stayed_gone) = (0, 0);
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum State {
        Durable,
        Dropped,
    }
    for p in 0..points {
        let k = crash_point(p, points, events.len(), &mut rng);
        let (img, marks) = crash_image(&events, k, &base, &mut rng, |_| {});
        let mut model: std::collections::BTreeMap<String, (u64, usize, State)> = Default::default();
        let mut in_flight: Option<(&str, Option<(u64, usize)>)> = None;
        for l in &marks {
            match parse_mark(l) {
                Mark::Begin(id, op) => in_flight = Some((id, op)),
                Mark::Acked(id, s, n) => {
                    in_flight = None;
                    model.insert(id.to_string(), (s, n, State::Durable));
                }
                Mark::Failed => in_flight = None,
                Mark::Dropped(id) => {
                    if let Some(e) = model.get_mut(id) {
                        e.2 = State::Dropped;
                    }
                }
                Mark::Deleted(id) => {
                    in_flight = None;
                    model.remove(id);
                }
                Mark::Settled => model.retain(|_, v| v.2 != State::Dropped),
                other => panic!("unexpected mark {other:?}"),
            }
        }
        std::fs::write(&crash_path, &img).expect("crash image");
        let ctx = format!("crash point {p} (after event {k} of {})", events.len());
        let vol =
            Volume::open(&crash_path).unwrap_or_else(|e| panic!("{ctx}: recovery failed: {e}"));
        if let Some((id, op)) = in_flight {
            if cut_operation_done(&vol, &mut drv, id, op) {
                match op {
                    Some((s, n)) => {
                        model.insert(id.to_string(), (s, n, State::Durable));
                    }
                    None => {
                        model.remove(id);
                    }
                }
            }
        }
        for a in vol.list() {
            let Some((s, n, state)) = model.get(a.id()) else {
                panic!(
                    "{ctx}: {} is there but was never uploaded, or its drop or delete was durable",
                    a.id()
                );
            };
            let mut out = Vec::new();
            let read = vol.read(&mut drv, &a, 0, a.size(), true, &mut out);
            assert!(
                read.is_ok() && out == content(*s, *n),
                "{ctx}: {} ({state:?}) has wrong bytes: {read:?}",
                a.id()
            );
            if *state == State::Dropped {
                came_back += 1;
            }
        }
        for (id, (_, _, state)) in &model {
            let here = vol.get(id).is_some();
            if !(here || *state == State::Dropped) {
                // The last events, to see which operation the crash cut.
                let marks: Vec<String> = events[..k]
                    .iter()
                    .map(|e| match e {
                        LogEvent::Mark(l) => l.clone(),
                        LogEvent::Sync { .. } => "sync".into(),
                        LogEvent::Write { offset, data, .. } => {
                            format!("w {offset} {}", data.len())
                        }
                    })
                    .collect();
                panic!(
                    "{ctx}: durable {id} lost; events: {}",
                    marks[marks.len().saturating_sub(60)..].join(" | ")
                );
            }
            if !here {
                stayed_gone += 1;
            }
        }
        let st = vol.stats();
        assert_eq!(
            st.used_bytes + st.free_bytes,
            st.capacity_bytes,
            "{ctx}: {st:?}"
        );
    }
    eprintln!(
        "lazy drops under power loss: {points} crash images; an unsynced drop came back whole {came_back} times and stayed gone {stayed_gone} times, never wrong; {needed_dropped_space} uploads needed a drop's blocks"
    );
    assert!(
        came_back > 0 && stayed_gone > 0,
        "crash points must fall both before and after drops reach the device"
    );
}
