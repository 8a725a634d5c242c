//! Deleted extents are reused only once no reader can still be reading them, and readers on
//! other threads see a consistent catalog while a writer puts and deletes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use reel_store::{EngineError, PutOptions};

#[test]
fn a_held_asset_keeps_its_extents_until_the_reader_lets_go() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("v.img");
    let mut drv = driver();
    let vol = format_small(&path, 8 << 20, 256 << 10, 256 << 10);
    let cap = vol.stats().capacity_bytes as usize;
    let big = content(1, cap - (1 << 20));
    vol.put(&mut drv, "big", &mut &big[..], &PutOptions::default())
        .expect("put big");
    let reader = vol.get("big").expect("held by a reader");
    assert!(vol.delete(&mut drv, "big").expect("delete"));
    assert!(vol.get("big").is_none(), "gone from the catalog at once");
    // The space is not free while the reader holds the asset: a new asset of the same size
    // does not fit, and the reader still reads the right bytes.
    let other = content(2, cap - (1 << 20));
    assert!(matches!(
        vol.put(&mut drv, "other", &mut &other[..], &PutOptions::default()),
        Err(EngineError::NoSpace { .. })
    ));
    let mut out = Vec::new();
    vol.read(&mut drv, &reader, 0, reader.size(), true, &mut out)
        .expect("read held asset");
    assert!(out == big);
    assert!(vol.stats().reclaim_pending_bytes > 0);
    drop(reader);
    // Now the extents come back (the map's epoch may need another operation to pass).
    let mut placed = false;
    for _ in 0..100 {
        match vol.put(&mut drv, "other", &mut &other[..], &PutOptions::default()) {
            Ok(_) => {
                placed = true;
                break;
            }
            Err(EngineError::NoSpace { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(placed, "extents of the dropped asset were never reclaimed");
    assert!(read_all(&vol, &mut drv, "other", true) == other);
    let st = vol.stats();
    assert_eq!(
        st.used_bytes + st.free_bytes + st.reclaim_pending_bytes,
        st.capacity_bytes
    );
}

#[test]
fn concurrent_readers_never_see_wrong_bytes_while_a_writer_churns() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("v.img");
    let vol = Arc::new(format_small(&path, 64 << 20, 1 << 20, 1 << 20));
    let stop = Arc::new(AtomicBool::new(false));
    // Asset `k/i` always holds content(i * 1000 + version, len(i)); readers check the prefix
    // that encodes the version against the rest.
    let len = |i: u64| 100_000 + i as usize * 50_000;
    let readers: Vec<_> = (0..2)
        .map(|t| {
            let (vol, stop) = (vol.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut drv = driver();
                let mut reads = 0u64;
                let mut buf = drv.alloc_buf();
                while !stop.load(Ordering::Relaxed) {
                    for i in 0..8u64 {
                        let Some(a) = vol.get(&format!("k/{i}")) else {
                            continue;
                        };
                        let mut out = Vec::new();
                        vol.read(&mut drv, &a, 0, a.size(), true, &mut out)
                            .expect("verified read");
                        let version = u64::from_le_bytes(out[..8].try_into().expect("8 bytes"));
                        let mut want = content(i * 1000 + version, len(i));
                        want[..8].copy_from_slice(&version.to_le_bytes());
                        assert!(out == want, "reader {t}: k/{i} v{version} wrong bytes");
                        // The zero-copy path: an unaligned range straight into a registered buffer.
                        let (res, b) =
                            vol.read_into(&mut drv, &a, 4097, 10_000, buf.take().expect("buf"));
                        let skip = res.expect("read_into");
                        assert!(drv.buf(&b)[skip..skip + 10_000] == want[4097..14_097]);
                        buf = Some(b);
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect();
    let mut drv = driver();
    for round in 0..60u64 {
        let i = round % 8;
        let mut data = content(i * 1000 + round, len(i));
        data[..8].copy_from_slice(&round.to_le_bytes());
        common::put(&vol, &mut drv, &format!("k/{i}"), &data).expect("put");
        if round % 7 == 3 {
            vol.delete(&mut drv, &format!("k/{}", (i + 3) % 8))
                .expect("delete");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let reads: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
    assert!(reads > 0);
    let st = vol.stats();
    assert_eq!(
        st.used_bytes + st.free_bytes + st.reclaim_pending_bytes,
        st.capacity_bytes
    );
}
