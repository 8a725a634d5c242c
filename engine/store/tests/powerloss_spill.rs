//! Power loss during uploads that outgrow the first volume and move to the other one
//! ([`reel_store::Ingest::spill_into`]), as a node's primary and secondary: the driver records
//! every completed write and sync to either volume file (dm-log-writes style, as in
//! `powerloss.rs`); for many crash points both files are rebuilt as a power cut could leave
//! them — everything before the last completed sync *of that file* is on the media, each later
//! write may be missing, whole or torn — and both must recover with every acknowledged asset
//! intact, the upload the cut interrupted absent or whole (never partial, on either volume), and
//! nothing of an aborted ingest left behind.

mod common;

use std::io::Read;
use std::sync::{Arc, Mutex};

use common::*;
use reel_store::driver::{Driver, DriverConfig, LogEvent};
use reel_store::{EngineError, PutOptions, Volume};

const SECTOR: usize = 512;

/// One upload of the workload: where it was acknowledged (`on_second`), its content.
#[derive(Clone, Debug)]
struct Upload {
    id: String,
    seed: u64,
    len: usize,
}

/// A reader that hands out `data` in pieces of at most `piece` bytes (a client's chunks).
struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
}

impl Read for Pieces<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = out.len().min(self.piece).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Uploads `data` as `id` of unknown length to `first`; when it no longer fits there, moves it
/// to `second`. Returns which volume holds it (true: `second`).
fn upload(drv: &mut Driver, first: &Volume, second: &Volume, id: &str, data: &[u8]) -> bool {
    let opts = PutOptions::default();
    let mut body = Pieces {
        data,
        piece: 300_000,
    };
    let mut ing = first.ingest(drv, id, &opts).expect("ingest");
    let mut moved = false;
    loop {
        match ing
            .fill_from(drv, &mut body)
            .and_then(|()| ing.write_tail(drv))
        {
            Ok(()) => break,
            Err(EngineError::NoSpace { .. }) if !moved => {
                ing = ing.spill_into(drv, second).expect("spill");
                moved = true;
            }
            Err(e) => panic!("upload {id}: {e}"),
        }
    }
    ing.finish(drv).expect("finish");
    moved
}

/// The image of the file behind `fd` after the first `k` events: its writes laid whole when a
/// completed sync of the same file followed, else at random dropped, whole or torn.
fn crash_image(
    events: &[LogEvent],
    k: usize,
    fd: i32,
    base: &[u8],
    rng: &mut fastrand::Rng,
) -> Vec<u8> {
    let last_sync = events[..k]
        .iter()
        .rposition(|e| matches!(e, LogEvent::Sync { fd: f } if *f == fd));
    let mut img = base.to_vec();
    for (i, ev) in events[..k].iter().enumerate() {
        let LogEvent::Write {
            fd: f,
            offset,
            data,
        } = ev
        else {
            continue;
        };
        if *f != fd {
            continue;
        }
        let off = *offset as usize;
        let synced = last_sync.is_some_and(|s| i < s);
        match if synced { 1 } else { rng.usize(0..3) } {
            0 => {}
            1 => img[off..off + data.len()].copy_from_slice(data),
            _ => {
                for s in (0..data.len()).step_by(SECTOR) {
                    if rng.bool() {
                        img[off + s..off + s + SECTOR].copy_from_slice(&data[s..s + SECTOR]);
                    }
                }
            }
        }
    }
    img
}

#[test]
fn power_loss_during_uploads_that_move_to_the_other_volume() {
    let dir = tempfile::tempdir().expect("tmp");
    let (p1, p2) = (
        tmp_volume_path(&dir, "primary.img"),
        tmp_volume_path(&dir, "secondary.img"),
    );
    let first = format_small(&p1, 8 << 20, 64 << 10, 64 << 10);
    let second = format_small(&p2, 28 << 20, 64 << 10, 64 << 10);
    let (base1, base2) = (
        std::fs::read(&p1).expect("image"),
        std::fs::read(&p2).expect("image"),
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut drv = Driver::new(&DriverConfig {
        ring_entries: 64,
        buf_size: 1 << 20,
        buf_count: 16,
        write_log: Some(log.clone()),
    })
    .expect("driver");
    let (fd1, fd2) = (first.fd(), second.fd());
    // Uploads of 1.5–3.5 MiB into a primary of about 6 MiB of data: the first ones fit, then
    // each is deleted from the primary at random to make some room, and the others move over
    // part-way. The marks say what was acknowledged where.
    let mark = |line: String| log.lock().expect("log").push(LogEvent::Mark(line));
    let mut rng = fastrand::Rng::with_seed(7);
    let mut moved = 0;
    for n in 0..14u64 {
        let id = format!("up/{n}");
        let len = rng.usize((3 << 19)..(7 << 19));
        let data = content(1000 + n, len);
        mark(format!("B {id} {} {len}", 1000 + n));
        let on_second = upload(&mut drv, &first, &second, &id, &data);
        moved += usize::from(on_second);
        mark(format!("A {id} {} {len} {}", 1000 + n, u8::from(on_second)));
        if rng.usize(0..3) == 0 {
            let victim = first.list().first().map(|a| a.id().to_string());
            if let Some(v) = victim {
                mark(format!("B {v} del 0"));
                assert!(first.delete(&mut drv, &v).expect("delete"));
                mark(format!("D {v}"));
            }
        }
    }
    assert!(moved >= 5, "the workload moves uploads over ({moved})");
    drop((first, second));
    let events = log.lock().expect("log").clone();
    let points: usize = std::env::var("REEL_POWERLOSS_POINTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let mut check_drv = driver();
    let (c1, c2) = (dir.path().join("c1.img"), dir.path().join("c2.img"));
    for p in 0..points {
        let k = if p + 1 == points {
            events.len()
        } else {
            rng.usize(0..=events.len())
        };
        std::fs::write(&c1, crash_image(&events, k, fd1, &base1, &mut rng)).expect("write");
        std::fs::write(&c2, crash_image(&events, k, fd2, &base2, &mut rng)).expect("write");
        let ctx = format!("crash point {p} (after event {k} of {})", events.len());
        let v1 = Volume::open(&c1).unwrap_or_else(|e| panic!("{ctx}: the primary: {e}"));
        let v2 = Volume::open(&c2).unwrap_or_else(|e| panic!("{ctx}: the secondary: {e}"));
        // Replay the marks: what is acknowledged where, and what the cut interrupted.
        let mut acked: Vec<(Upload, bool)> = Vec::new();
        let mut cut: Option<(String, Option<(u64, usize)>)> = None;
        for ev in &events[..k] {
            let LogEvent::Mark(line) = ev else { continue };
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["B", id, "del", _] => cut = Some((id.to_string(), None)),
                ["B", id, s, n] => {
                    cut = Some((
                        id.to_string(),
                        Some((s.parse().expect("seed"), n.parse().expect("len"))),
                    ))
                }
                ["A", id, s, n, second] => {
                    acked.push((
                        Upload {
                            id: id.to_string(),
                            seed: s.parse().expect("seed"),
                            len: n.parse().expect("len"),
                        },
                        *second == "1",
                    ));
                    cut = None;
                }
                ["D", id] => {
                    acked.retain(|(u, on_second)| *on_second || u.id != *id);
                    cut = None;
                }
                other => panic!("unexpected mark {other:?}"),
            }
        }
        for (u, on_second) in &acked {
            let (vol, other) = if *on_second { (&v2, &v1) } else { (&v1, &v2) };
            let delete_cut = cut
                .as_ref()
                .is_some_and(|(id, op)| op.is_none() && *id == u.id);
            if delete_cut && vol.get(&u.id).is_none() {
                // The interrupted delete took effect.
                continue;
            }
            assert!(
                vol.get(&u.id).is_some_and(|a| a.size() == u.len as u64),
                "{ctx}: acknowledged {} lost",
                u.id
            );
            assert!(
                read_all(vol, &mut check_drv, &u.id, true) == content(u.seed, u.len),
                "{ctx}: acknowledged {} damaged",
                u.id
            );
            assert!(
                other.get(&u.id).is_none(),
                "{ctx}: {} on both volumes",
                u.id
            );
        }
        // Nothing else, but the cut upload whole (on either volume) or a cut delete undone.
        for (vol, name) in [(&v1, "primary"), (&v2, "secondary")] {
            for a in vol.list() {
                let known = acked.iter().any(|(u, _)| u.id == a.id());
                let is_cut = cut.as_ref().is_some_and(|(id, _)| id == a.id());
                assert!(
                    known || is_cut,
                    "{ctx}: {} on the {name} was never acknowledged",
                    a.id()
                );
                if is_cut && !known {
                    if let Some((_, Some((s, n)))) = &cut {
                        assert!(
                            read_all(vol, &mut check_drv, a.id(), true) == content(*s, *n),
                            "{ctx}: the interrupted {} is partial on the {name}",
                            a.id()
                        );
                    }
                }
            }
            assert_space_adds_up(vol, &ctx);
        }
    }
}
