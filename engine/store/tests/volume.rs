//! Behaviour of a volume on a real O_DIRECT file: ingest, read, delete, reopen, errors.

mod common;

use common::*;
use std::path::PathBuf;

use reel_store::driver::Driver;
use reel_store::{EngineError, FormatOptions, PutOptions, Volume};

/// A temp dir (keep it alive) holding `v.img`, its path, a driver, and the volume
/// `format_small` made there with these sizes.
fn small_volume(
    size: u64,
    journal: u64,
    checkpoint: u64,
) -> (tempfile::TempDir, PathBuf, Driver, Volume) {
    let dir = tempfile::tempdir().expect("tmp");
    let path = tmp_volume_path(&dir, "v.img");
    let drv = driver();
    let vol = format_small(&path, size, journal, checkpoint);
    (dir, path, drv, vol)
}

/// Every asset of `vol`: (id, size, checksum).
fn listing(vol: &Volume) -> Vec<(String, u64, u32)> {
    vol.list()
        .iter()
        .map(|a| (a.id().to_string(), a.size(), a.checksum()))
        .collect()
}

#[test]
fn put_get_delete_reopen() {
    let (_dir, path, mut drv, vol) = small_volume(256 << 20, 1 << 20, 1 << 20);
    let sizes = [
        0usize,
        1,
        4095,
        4096,
        4097,
        (1 << 20) - 1,
        1 << 20,
        (3 << 20) + 17,
        9 << 20,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let data = content(i as u64, n);
        let opts = PutOptions {
            content_type: Some("video/mp4".into()),
            size: if i % 2 == 0 { Some(n as u64) } else { None },
            depth: None,
            created_unix_ns: None,
            // Some written in pieces (12 KiB: not a power of two), as copies between tiers are.
            io_max: (i % 3 == 1).then_some(12 << 10),
        };
        let a = vol
            .put(&mut drv, &format!("a/{i}"), &mut &data[..], &opts)
            .expect("put");
        assert_eq!(a.size(), n as u64);
        assert_eq!(read_all(&vol, &mut drv, &format!("a/{i}"), true), data);
        assert_eq!(read_all(&vol, &mut drv, &format!("a/{i}"), false), data);
        // Chunk reads in pieces (as copies read) give the same verified bytes.
        for c in 0..a.chunk_count() as u64 {
            let whole = vol.read_chunk_verified(&mut drv, &a, c).expect("chunk");
            for piece in [Some(4096), Some(20 << 10), Some(1)] {
                assert_eq!(
                    vol.read_chunk_verified_in(&mut drv, &a, c, piece)
                        .expect("chunk in pieces"),
                    whole,
                    "a/{i} chunk {c} in pieces of {piece:?}"
                );
            }
        }
    }
    // Ranged reads at unaligned edges.
    let data = content(7, (3 << 20) + 17);
    let a = vol.get("a/7").expect("a/7");
    for (off, len) in [
        (0u64, 1u64),
        (4095, 2),
        (1 << 20, 5000),
        ((3 << 20) + 16, 1),
        (12345, 2 << 20),
    ] {
        for verify in [false, true] {
            let mut out = Vec::new();
            vol.read(&mut drv, &a, off, len, verify, &mut out)
                .expect("range");
            assert_eq!(
                out,
                &data[off as usize..(off + len) as usize],
                "range {off}+{len} verify={verify}"
            );
        }
    }
    assert!(matches!(
        vol.read(&mut drv, &a, a.size(), 1, false, &mut Vec::new()),
        Err(EngineError::Range { .. })
    ));
    assert!(vol.delete(&mut drv, "a/3").expect("delete"));
    assert!(!vol.delete(&mut drv, "a/3").expect("delete again"));
    drop(a);
    let st = vol.stats();
    assert_eq!(
        st.used_bytes + st.free_bytes + st.reclaim_pending_bytes,
        st.capacity_bytes
    );
    drop(vol);

    let vol = Volume::open(&path).expect("reopen");
    let ids: Vec<String> = vol.list().iter().map(|a| a.id().to_string()).collect();
    assert_eq!(ids.len(), sizes.len() - 1);
    assert!(vol.get("a/3").is_none());
    for (i, &n) in sizes.iter().enumerate() {
        if i != 3 {
            assert_eq!(
                read_all(&vol, &mut drv, &format!("a/{i}"), true),
                content(i as u64, n)
            );
        }
    }
    let st = vol.stats();
    assert_eq!(st.used_bytes + st.free_bytes, st.capacity_bytes);
    assert_eq!(vol.scrub(&mut drv).expect("scrub").len(), 0);
}

/// A copy between volumes reads each chunk straight into the target's registered buffer and
/// writes it from there, recording the crc verified on the read: the copy has the same bytes,
/// chunk checksums and content checksum, in reads of any piece size; a chunk that does not fit
/// the target's chunking is refused before any read, and nothing of the copy is left.
#[test]
fn copies_filled_in_place_carry_the_bytes_and_checksums() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut drv = driver();
    let src = format_small(
        &tmp_volume_path(&dir, "src.img"),
        64 << 20,
        1 << 20,
        1 << 20,
    );
    let dst = format_small(
        &tmp_volume_path(&dir, "dst.img"),
        64 << 20,
        1 << 20,
        1 << 20,
    );
    let sizes = [
        0usize,
        1,
        4095,
        4096,
        (1 << 20) - 1,
        1 << 20,
        (3 << 20) + 17,
    ];
    for (i, &n) in sizes.iter().enumerate() {
        let id = format!("c/{i}");
        let data = content(40 + i as u64, n);
        let a = src
            .put(&mut drv, &id, &mut &data[..], &PutOptions::default())
            .expect("put");
        let io_max = [None, Some(12 << 10), Some(4096)][i % 3];
        let b = copy_in_place(&src, &dst, &mut drv, &a, io_max).expect("copy");
        assert_eq!((b.size(), b.checksum()), (a.size(), a.checksum()), "{id}");
        assert_eq!(
            b.crcs().collect::<Vec<_>>(),
            a.crcs().collect::<Vec<_>>(),
            "{id}"
        );
        assert_eq!(read_all(&dst, &mut drv, &id, true), data, "{id}");
    }
    assert_eq!(dst.scrub(&mut drv).expect("scrub").len(), 0);

    let used = dst.stats().used_bytes;
    let opts = PutOptions {
        size: Some(3 << 20),
        ..Default::default()
    };
    for len in [100usize, (1 << 20) + 1, 0] {
        let mut ing = dst.ingest(&drv, "misfit", &opts).expect("ingest");
        let res = ing.fill_chunk_with(&mut drv, len, |_, _| {
            panic!("a misfit chunk must be refused before it is read")
        });
        assert!(
            matches!(res, Err(EngineError::BadTarget { .. })),
            "{len}: {res:?}"
        );
        ing.abort(&mut drv);
    }
    let mut ing = dst.ingest(&drv, "too-long", &opts).expect("ingest");
    for c in 0..3 {
        let a = src.get("c/5").expect("c/5");
        ing.fill_chunk_with(&mut drv, 1 << 20, |drv, buf| {
            src.read_chunk_verified_into(drv, &a, 0, None, buf)
        })
        .unwrap_or_else(|e| panic!("chunk {c}: {e}"));
        ing.write_filled(&mut drv).expect("write");
    }
    let res = ing.fill_chunk_with(&mut drv, 1 << 20, |_, _| panic!("past the size"));
    assert!(
        matches!(res, Err(EngineError::SizeMismatch { .. })),
        "{res:?}"
    );
    ing.abort(&mut drv);
    assert!(dst.get("misfit").is_none() && dst.get("too-long").is_none());
    assert_eq!(
        dst.stats().used_bytes,
        used,
        "nothing of the refused copies is left"
    );
}

#[test]
fn checkpoints_roll_the_journal() {
    // A 64 KiB journal holds 15 batches: 200 puts force many checkpoints and laps.
    let (_dir, path, mut drv, vol) = small_volume(32 << 20, 64 << 10, 256 << 10);
    for i in 0..200u64 {
        let data = content(i, (i as usize * 97) % 5000);
        common::put(&vol, &mut drv, &format!("x{}", i % 37), &data).expect("put");
        if i % 5 == 0 {
            vol.delete(&mut drv, &format!("x{}", (i * 7) % 37))
                .expect("delete");
        }
    }
    let before = listing(&vol);
    assert!(vol.stats().checkpoint_generation > 5);
    drop(vol);
    let vol = Volume::open(&path).expect("reopen");
    let after = listing(&vol);
    assert_eq!(before, after);
    assert_eq!(vol.scrub(&mut drv).expect("scrub").len(), 0);
}

#[test]
fn bad_input_is_refused_and_nothing_is_stored() {
    let (dir, path, mut drv, vol) = small_volume(16 << 20, 256 << 10, 256 << 10);
    for bad in ["", "../x", "a//b", "a b"] {
        assert!(matches!(
            vol.put(&mut drv, bad, &mut &b"x"[..], &PutOptions::default()),
            Err(EngineError::InvalidId { .. })
        ));
    }
    // Announced size differs from the body.
    let opts = PutOptions {
        size: Some(10),
        ..Default::default()
    };
    assert!(matches!(
        vol.put(&mut drv, "short", &mut &b"12345"[..], &opts),
        Err(EngineError::SizeMismatch { .. })
    ));
    assert!(matches!(
        vol.put(&mut drv, "long", &mut &[0u8; 20][..], &opts),
        Err(EngineError::SizeMismatch { .. })
    ));
    // Larger than the volume.
    let big = vec![1u8; 20 << 20];
    assert!(matches!(
        vol.put(&mut drv, "big", &mut &big[..], &PutOptions::default()),
        Err(EngineError::NoSpace { .. })
    ));
    assert!(vol.is_empty());
    let st = vol.stats();
    assert_eq!((st.used_bytes, st.reserved_bytes), (0, 0));
    assert_eq!(st.free_bytes, st.capacity_bytes);
    // A second open of the same volume is refused while the first holds it.
    assert!(matches!(
        Volume::open(&path),
        Err(EngineError::Locked { .. })
    ));
    drop(vol);
    // Formatting over a volume needs --force.
    let e = Volume::format(&path, &FormatOptions::default()).expect_err("refused");
    assert!(
        e.to_string().contains("Reelstore volume") && e.to_string().contains("--force"),
        "{e}"
    );
    Volume::format(
        &path,
        &FormatOptions {
            force: true,
            ..Default::default()
        },
    )
    .expect("forced");
    // Not a volume.
    let other = tmp_volume_path(&dir, "zero.img");
    std::fs::write(&other, vec![0u8; 1 << 20]).expect("write");
    assert!(matches!(
        Volume::open(&other),
        Err(EngineError::NotAVolume { .. })
    ));
}

/// Migrations publish and drop conditionally (`Ingest::finish_if`, `Volume::delete_if`): a
/// version that another writer committed in between wins, and the space of the declined copy
/// comes back. (The node's crash test found the unconditional version losing an acknowledged
/// overwrite that landed while a promotion was finishing.)
#[test]
fn conditional_publish_and_delete_never_override_a_newer_version() {
    let (_dir, _path, mut drv, vol) = small_volume(256 << 20, 1 << 20, 1 << 20);
    let free0 = vol.stats().free_bytes;
    let old = content(1, 3 << 20);
    let new = content(2, 1 << 20);
    let opts = PutOptions::default();

    // A "promotion" of `old` is in progress when an upload of `new` commits.
    let mut copy = vol.ingest(&drv, "x", &opts).expect("ingest");
    copy.write(&mut drv, &old).expect("write");
    let mut drv2 = driver();
    let uploaded = vol
        .put(&mut drv2, "x", &mut &new[..], &opts)
        .expect("upload");
    let published = copy
        .finish_if(&mut drv, &|cur| cur.is_none())
        .expect("finish_if");
    assert!(published.is_none(), "the copy must not replace the upload");
    assert_eq!(
        read_all(&vol, &mut drv, "x", true),
        new,
        "the upload's bytes stay"
    );

    // A "drop" decided on a stale handle deletes nothing.
    let stale = uploaded.clone();
    let newer = vol
        .put(&mut drv2, "x", &mut &old[..], &opts)
        .expect("second upload");
    let dropped = vol
        .delete_if(&mut drv, "x", &|cur| reel_store::Asset::ptr_eq(cur, &stale))
        .expect("delete_if");
    assert!(!dropped, "a newer version is not dropped");
    assert_eq!(read_all(&vol, &mut drv, "x", true), old);
    let dropped = vol
        .delete_if(&mut drv, "x", &|cur| reel_store::Asset::ptr_eq(cur, &newer))
        .expect("delete_if");
    assert!(dropped, "the checked version is dropped");
    drop((stale, newer, uploaded));
    assert!(vol.get("x").is_none());
    // Nothing leaked: the declined copy's reservation and the replaced versions came back.
    let st = vol.stats();
    assert_eq!(st.reserved_bytes, 0);
    assert_eq!(st.free_bytes + st.reclaim_pending_bytes, free0, "{st:?}");
}

/// Group commit of migration copies (`Ingest::prepare` + `Volume::publish_prepared`): prepared
/// copies are invisible until published; one call publishes those whose condition holds, in one
/// journal batch that survives a reopen; declined, duplicate and dropped ones give their space
/// back; and a prepared copy never published leaves nothing behind after a reopen.
#[test]
fn group_commit_publishes_what_its_conditions_accept_and_nothing_else() {
    let (_dir, path, mut drv, vol) = small_volume(256 << 20, 1 << 20, 1 << 20);
    let free0 = vol.stats().free_bytes;
    let body = |seed: u64, len: usize| content(seed, len);
    let keep_time = 1_234_567_890_000_000_000u64;
    let prepare = |drv: &mut reel_store::driver::Driver, id: &str, data: &[u8], t: Option<u64>| {
        let opts = PutOptions {
            created_unix_ns: t,
            ..Default::default()
        };
        let mut ing = vol.ingest(drv, id, &opts).expect("ingest");
        ing.write(drv, data).expect("write");
        ing.prepare(drv).expect("prepare")
    };
    let a = prepare(&mut drv, "a", &body(1, (3 << 20) + 17), Some(keep_time));
    let b = prepare(&mut drv, "b", &body(2, 5000), None);
    let c = prepare(&mut drv, "c", &body(3, 1 << 20), None);
    let a_dup = prepare(&mut drv, "a", &body(4, 100), None);
    assert_eq!((a.id(), a.size()), ("a", (3 << 20) + 17));
    // Prepared is invisible; its space is reserved.
    assert!(vol.get("a").is_none() && vol.get("b").is_none());
    assert!(vol.stats().reserved_bytes > 0);
    // A prepared copy dropped unpublished gives its space back.
    let d = prepare(&mut drv, "d", &body(5, 2 << 20), None);
    let reserved = vol.stats().reserved_bytes;
    drop(d);
    assert!(vol.stats().reserved_bytes < reserved);

    let yes = |_: Option<&reel_store::Asset>| true;
    let no = |_: Option<&reel_store::Asset>| false;
    let out = vol
        .publish_prepared(
            &mut drv,
            vec![(a, &yes), (b, &no), (c, &yes), (a_dup, &yes)],
        )
        .expect("group commit");
    assert_eq!(
        out.iter().map(Option::is_some).collect::<Vec<_>>(),
        [true, false, true, false],
        "a and c published; b declined; the duplicate of a declined"
    );
    assert_eq!(read_all(&vol, &mut drv, "a", true), body(1, (3 << 20) + 17));
    assert_eq!(read_all(&vol, &mut drv, "c", true), body(3, 1 << 20));
    assert!(vol.get("b").is_none());
    assert_eq!(vol.get("a").expect("a").created_unix_ns(), keep_time);
    assert_eq!(vol.stats().reserved_bytes, 0);
    assert!(vol
        .publish_prepared(&mut drv, Vec::new())
        .expect("empty")
        .is_empty());

    // One more prepared but never published, then the volume is closed and reopened.
    let e = prepare(&mut drv, "e", &body(6, 1 << 20), None);
    std::mem::forget(e); // as if the process died here: no drop, no publish
    drop(vol);
    let vol = Volume::open(&path).expect("reopen");
    assert_eq!(read_all(&vol, &mut drv, "a", true), body(1, (3 << 20) + 17));
    assert_eq!(read_all(&vol, &mut drv, "c", true), body(3, 1 << 20));
    assert_eq!(vol.get("a").expect("a").created_unix_ns(), keep_time);
    assert!(vol.get("b").is_none() && vol.get("e").is_none());
    let st = vol.stats();
    let used: u64 = [(3u64 << 20) + 17, 1 << 20]
        .iter()
        .map(|n| n.div_ceil(4096) * 4096)
        .sum();
    assert_eq!(st.reserved_bytes, 0);
    assert_eq!(st.free_bytes + used, free0, "{st:?}");
}
