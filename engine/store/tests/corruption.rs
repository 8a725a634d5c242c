//! Damage on purpose: flip bytes in each metadata structure of a real volume image and check
//! that recovery falls back to the other copy or reports the corruption — and never serves
//! wrong bytes or panics.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use reel_store::format::{self, CheckpointHeader, RecordHeader, Superblock, BLOCK};
use reel_store::{EngineError, Volume};

struct Image {
    _dir: tempfile::TempDir,
    path: PathBuf,
    sb: Superblock,
    /// id -> (seed, len) of every asset the image holds.
    assets: BTreeMap<String, (u64, usize)>,
    /// The id written by the journal's last record (see `last_record_flip_loses_only_that_asset`).
    last_id: String,
}

/// A volume with a checkpoint in each slot and a journal lap holding several batches.
fn build_image() -> Image {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("base.img");
    let mut drv = driver();
    let vol = format_small(&path, 12 << 20, 128 << 10, 256 << 10);
    let mut assets = BTreeMap::new();
    let put = |assets: &mut BTreeMap<String, (u64, usize)>,
               id: &str,
               seed: u64,
               len: usize,
               drv: &mut reel_store::driver::Driver| {
        common::put(&vol, drv, id, &content(seed, len)).expect("put");
        assets.insert(id.to_string(), (seed, len));
    };
    for i in 0..6u64 {
        put(
            &mut assets,
            &format!("early/{i}"),
            i,
            3000 + i as usize * 70_000,
            &mut drv,
        );
    }
    vol.checkpoint(&mut drv).expect("checkpoint 1");
    put(&mut assets, "mid/a", 100, 5000, &mut drv);
    vol.checkpoint(&mut drv).expect("checkpoint 2");
    for i in 0..5u64 {
        put(
            &mut assets,
            &format!("late/{i}"),
            200 + i,
            1 + i as usize * 300_000,
            &mut drv,
        );
    }
    vol.delete(&mut drv, "early/0").expect("delete");
    assets.remove("early/0");
    put(&mut assets, "last", 999, 12_345, &mut drv);
    let sb = vol.superblock().clone();
    drop(vol);
    Image {
        _dir: dir,
        path,
        sb,
        assets,
        last_id: "last".into(),
    }
}

fn copy_with(img: &Image, name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(&img.path).expect("read image");
    damage(&mut bytes);
    let p = img.path.with_file_name(name);
    std::fs::write(&p, bytes).expect("write copy");
    p
}

/// Checks that the volume at `p` holds exactly `expect`, byte for byte (verified reads).
fn assert_holds(p: &Path, expect: &BTreeMap<String, (u64, usize)>) {
    let vol = Volume::open(p).expect("open");
    let mut drv = driver();
    let ids: Vec<String> = vol.list().iter().map(|a| a.id().to_string()).collect();
    assert_eq!(ids, expect.keys().cloned().collect::<Vec<_>>());
    for (id, (s, n)) in expect {
        assert!(
            read_all(&vol, &mut drv, id, true) == content(*s, *n),
            "{id}: wrong bytes"
        );
    }
}

/// (slot offset, header) of both checkpoint slots, newest first.
fn checkpoints(img: &Image, bytes: &[u8]) -> Vec<(u64, CheckpointHeader)> {
    let seed = format::crc_seed(&img.sb.uuid);
    let mut v: Vec<(u64, CheckpointHeader)> = (0..2)
        .filter_map(|s| {
            let off = img.sb.checkpoint_slot_offset(s);
            let b = &bytes[off as usize..(off + BLOCK) as usize];
            CheckpointHeader::decode(b, seed, img.sb.checkpoint_payload_max())
                .ok()
                .map(|(h, _)| (off, h))
        })
        .collect();
    v.sort_by_key(|(_, h)| std::cmp::Reverse(h.generation));
    v
}

/// (absolute offset, header) of the records of the current journal lap, in order.
fn journal_records(img: &Image, bytes: &[u8]) -> Vec<(u64, RecordHeader)> {
    let seed = format::crc_seed(&img.sb.uuid);
    let j = &bytes
        [img.sb.journal_offset as usize..(img.sb.journal_offset + img.sb.journal_bytes) as usize];
    let (mut pos, mut out) = (0usize, Vec::new());
    let mut expect_seq = None;
    while let Ok((h, _)) = format::decode_record(&j[pos..], seed) {
        if expect_seq.is_some_and(|s| s != h.seq) {
            break;
        }
        expect_seq = Some(h.seq + 1);
        out.push((img.sb.journal_offset + pos as u64, h));
        pos += format::record_span(h.payload_len as usize);
        if pos % 4096 != 0 && (4096 - pos % 4096 < format::RH_LEN || j[pos..pos + 4] == [0; 4]) {
            pos = pos.div_ceil(4096) * 4096;
        }
    }
    out
}

#[test]
fn one_damaged_superblock_is_repaired_from_the_other() {
    let img = build_image();
    for copy in 0..2usize {
        for field in [
            0usize,
            format::SB_VERSION,
            format::SB_JOURNAL_OFFSET + 3,
            format::SB_DATA_BLOCKS,
            format::SB_CRC,
        ] {
            let p = copy_with(&img, "sb.img", |b| b[copy * 4096 + field] ^= 0x10);
            {
                let vol = Volume::open(&p).expect("opens from the other copy");
                assert_eq!(
                    vol.open_report().superblock_repaired,
                    vec![copy],
                    "copy {copy} field {field}"
                );
            }
            assert_holds(&p, &img.assets);
            let vol = Volume::open(&p).expect("reopen");
            assert_eq!(
                vol.open_report().superblock_repaired,
                Vec::<usize>::new(),
                "the repair persisted"
            );
        }
    }
}

#[test]
fn both_superblocks_damaged_is_reported() {
    let img = build_image();
    let p = copy_with(&img, "sb2.img", |b| {
        b[100] ^= 1;
        b[4096 + 50] ^= 1;
    });
    match Volume::open(&p) {
        Err(EngineError::Corrupted { what, .. }) => assert!(what.contains("superblock"), "{what}"),
        other => panic!(
            "expected superblock corruption, got {:?}",
            other.map(|_| ())
        ),
    }
}

#[test]
fn damaged_older_checkpoint_is_harmless() {
    let img = build_image();
    let bytes = std::fs::read(&img.path).expect("read");
    let cks = checkpoints(&img, &bytes);
    assert_eq!(cks.len(), 2, "the image has both slots written");
    let (older, _) = cks[1];
    for at in [older + 20, older + format::CK_PAYLOAD_OFFSET + 5] {
        let p = copy_with(&img, "ck-old.img", |b| b[at as usize] ^= 0xff);
        assert_holds(&p, &img.assets);
    }
}

#[test]
fn damaged_newest_checkpoint_is_reported_not_silently_rolled_back() {
    let img = build_image();
    let bytes = std::fs::read(&img.path).expect("read");
    let (newest, h) = checkpoints(&img, &bytes)[0];
    assert!(h.payload_bytes > 0);
    for at in [
        newest + 17,
        newest + format::CK_PAYLOAD_OFFSET + h.payload_bytes / 2,
    ] {
        let p = copy_with(&img, "ck-new.img", |b| b[at as usize] ^= 0x01);
        match Volume::open(&p) {
            Err(EngineError::Inconsistent {
                what: "checkpoint", ..
            }) => {}
            other => panic!(
                "flip at {at}: expected checkpoint damage to be reported, got {:?}",
                other.map(|_| ())
            ),
        }
    }
}

#[test]
fn damaged_journal_record_followed_by_durable_ones_is_reported() {
    let img = build_image();
    let bytes = std::fs::read(&img.path).expect("read");
    let recs = journal_records(&img, &bytes);
    assert!(recs.len() >= 5, "lap start + several puts: {}", recs.len());
    // Every record but the last: header bytes and payload bytes.
    for (off, h) in &recs[..recs.len() - 1] {
        for delta in [
            format::RH_SEQ as u64,
            format::RH_LEN as u64 + h.payload_len as u64 / 2,
        ] {
            let p = copy_with(&img, "jr.img", |b| b[(off + delta) as usize] ^= 0x04);
            match Volume::open(&p) {
                Err(EngineError::Corrupted {
                    what: "journal", ..
                }) => {}
                other => panic!(
                    "record seq {} +{delta}: expected journal corruption, got {:?}",
                    h.seq,
                    other.map(|_| ())
                ),
            }
        }
    }
}

/// A flip in the last record cannot be told from a write torn by a crash (the record was
/// written last and nothing after it proves it was ever durable), so it is cut like a torn tail.
/// This is the one documented loss case (FORMAT.md, "Assumptions about the media"): the asset it
/// introduced disappears; nothing wrong is ever served.
#[test]
fn last_record_flip_loses_only_that_asset() {
    let img = build_image();
    let bytes = std::fs::read(&img.path).expect("read");
    let (off, h) = *journal_records(&img, &bytes).last().expect("records");
    let p = copy_with(&img, "jl.img", |b| {
        b[(off + format::RH_LEN as u64 + h.payload_len as u64 / 2) as usize] ^= 0x80
    });
    {
        let vol = Volume::open(&p).expect("open");
        assert!(vol.open_report().torn_tail_cut);
    }
    let mut expect = img.assets.clone();
    expect.remove(&img.last_id);
    assert_holds(&p, &expect);
}

#[test]
fn damaged_data_is_caught_by_verified_reads_and_scrub() {
    let img = build_image();
    let (dev_off, id) = {
        let vol = Volume::open(&img.path).expect("open");
        let a = vol.get("late/3").expect("asset");
        let first_block = a.extents().map(|e| e.start).next().expect("an extent");
        (
            vol.data_offset() + first_block * BLOCK + 700_000,
            a.id().to_string(),
        )
    };
    let p = copy_with(&img, "data.img", |b| b[dev_off as usize] ^= 0x20);
    let vol = Volume::open(&p).expect("metadata is intact");
    let mut drv = driver();
    let a = vol.get(&id).expect("asset");
    let mut out = Vec::new();
    match vol.read(&mut drv, &a, 0, a.size(), true, &mut out) {
        Err(EngineError::ChecksumMismatch { chunk: 0, .. }) => {}
        other => panic!("expected a checksum mismatch in chunk 0, got {other:?}"),
    }
    let bad = vol.scrub(&mut drv).expect("scrub");
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].to_string().contains(&id));
    // A copy to another volume (as between tiers) stops at the damaged chunk, and leaves
    // nothing on the target.
    let dir = tempfile::tempdir().expect("tmp");
    let to = format_small(&dir.path().join("to.img"), 12 << 20, 128 << 10, 256 << 10);
    for io_max in [None, Some(64 << 10)] {
        match copy_in_place(&vol, &to, &mut drv, &a, io_max) {
            Err(EngineError::ChecksumMismatch { chunk: 0, .. }) => {}
            other => panic!("expected the copy to stop at chunk 0, got {other:?}"),
        }
    }
    assert!(to.get(&id).is_none());
    assert_eq!(to.stats().used_bytes, 0);
}

/// Random single-byte flips anywhere in the metadata: opening either reports an error or yields
/// assets whose bytes are exactly right (the last record's asset may be cut, see above).
#[test]
fn random_metadata_flips_never_serve_wrong_bytes() {
    let img = build_image();
    let bytes = std::fs::read(&img.path).expect("read");
    let recs = journal_records(&img, &bytes);
    let cks = checkpoints(&img, &bytes);
    // Only bytes that carry meaning: padding and reserved space are ignored by design.
    let sb_len = format::SB_LEN as u64;
    let mut regions: Vec<(u64, u64)> = vec![(0, sb_len), (BLOCK, BLOCK + sb_len)];
    for (off, h) in &cks {
        regions.push((*off, off + format::CK_LEN as u64));
        regions.push((
            off + format::CK_PAYLOAD_OFFSET,
            off + format::CK_PAYLOAD_OFFSET + h.payload_bytes,
        ));
    }
    for (off, h) in &recs {
        regions.push((*off, off + (format::RH_LEN + h.payload_len as usize) as u64));
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let (mut ok, mut refused) = (0, 0);
    let mut drv = driver();
    for i in 0..150 {
        let (s, e) = regions[rng.usize(0..regions.len())];
        let at = rng.u64(s..e) as usize;
        let bit = 1u8 << rng.u32(0..8);
        let p = copy_with(&img, "rnd.img", |b| b[at] ^= bit);
        match Volume::open(&p) {
            Err(_) => refused += 1,
            Ok(vol) => {
                ok += 1;
                for a in vol.list() {
                    let (seed, len) = img
                        .assets
                        .get(a.id())
                        .unwrap_or_else(|| panic!("flip {i} at {at}: unknown asset {:?}", a.id()));
                    assert_eq!(a.size(), *len as u64, "flip {i} at {at}");
                    assert!(
                        read_all(&vol, &mut drv, a.id(), true) == content(*seed, *len),
                        "flip {i} at {at}: wrong bytes"
                    );
                }
                let missing: Vec<&String> = img
                    .assets
                    .keys()
                    .filter(|id| vol.get(id).is_none())
                    .collect();
                assert!(
                    missing.is_empty() || missing == vec![&img.last_id],
                    "flip {i} at {at}: lost {missing:?}"
                );
            }
        }
    }
    eprintln!("random flips: {ok} recovered intact, {refused} reported as corruption");
    assert!(
        ok > 0 && refused > 0,
        "both outcomes should occur over 150 flips"
    );
}
