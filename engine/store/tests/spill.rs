//! An upload that outgrows its volume moves to another one ([`reel_store::Ingest::spill_into`]):
//! no byte is lost when the reservation fails, the bytes read back whole from the other volume,
//! the first volume gets its space back, and a chunk that does not read back as written (crc32c)
//! or a volume of another chunk size refuses the move, leaving nothing on either volume.

mod common;

use common::*;
use std::os::unix::fs::FileExt;
use std::path::Path;

use reel_store::driver::Driver;
use reel_store::format::GeometryOptions;
use reel_store::{EngineError, FormatOptions, Ingest, PutOptions, Volume};

const MIB: usize = 1 << 20;

/// A file-backed volume of `size` bytes with 1 MiB metadata regions and chunks of `chunk`.
fn volume(path: &Path, size: u64, chunk: Option<u32>) -> Volume {
    let opts = FormatOptions {
        size: Some(size),
        force: false,
        geometry: GeometryOptions {
            checkpoint_slot_bytes: Some(1 << 20),
            journal_bytes: Some(1 << 20),
            chunk_size: chunk,
        },
    };
    Volume::format(path, &opts).expect("format");
    Volume::open(path).expect("open")
}

/// Nothing of an ingest is left on `vol`: no asset, nothing reserved, every block free.
fn assert_empty(vol: &Volume, ctx: &str) {
    let st = assert_space_adds_up(vol, ctx);
    assert_eq!(
        (st.assets, st.reserved_bytes, st.free_bytes),
        (0, 0, st.capacity_bytes),
        "{ctx}: {st:?}"
    );
}

/// Streams `data` into `ing` as the node does (`fill_from`, then `write_tail`); at the first
/// `NoSpace` checks that every byte read so far is kept, then spills into `to` and goes on.
/// Returns the finished asset's volume ingest and the offset of the spill.
fn stream_with_spill<'v>(
    drv: &mut Driver,
    mut ing: Ingest<'v>,
    to: &'v Volume,
    data: &[u8],
) -> (Ingest<'v>, Option<u64>) {
    let mut src = data;
    let mut spilled_at = None;
    loop {
        let res = ing
            .fill_from(drv, &mut src)
            .and_then(|()| ing.write_tail(drv));
        match res {
            Ok(()) => return (ing, spilled_at),
            Err(EngineError::NoSpace { .. }) if spilled_at.is_none() => {
                assert_eq!(
                    ing.len() as usize,
                    data.len() - src.len(),
                    "every byte read before the reservation failed is kept"
                );
                spilled_at = Some(ing.len());
                ing = ing.spill_into(drv, to).expect("spill");
                assert_eq!(ing.len(), spilled_at.unwrap_or_default(), "moved whole");
            }
            Err(e) => panic!("streaming: {e}"),
        }
    }
}

#[test]
fn an_upload_that_outgrows_its_volume_spills_whole_and_returns_its_space() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut drv = driver();
    let small = volume(&tmp_volume_path(&dir, "small.img"), 24 << 20, None);
    let big = volume(&tmp_volume_path(&dir, "big.img"), 96 << 20, None);
    let chunk = small.chunk_size() as u64;
    // (unknown length, known length, the last short chunk is the one that does not fit).
    for (case, known, tail) in [
        ("chunked", false, false),
        ("content-length", true, false),
        ("tail", false, true),
    ] {
        let mut filler = None;
        let len = if tail {
            // Free space a whole number of chunks, then a body of exactly that plus 100 bytes:
            // every full chunk fits, the short last one does not.
            let free = small.stats().free_bytes;
            if !free.is_multiple_of(chunk) {
                let f = content(7, (free % chunk) as usize);
                put(&small, &mut drv, "filler", &f).expect("filler");
                filler = Some(f);
            }
            small.stats().free_bytes as usize + 100
        } else {
            40 * MIB + 12_345
        };
        let data = content(100 + len as u64, len);
        let opts = PutOptions {
            size: known.then_some(len as u64),
            content_type: Some("video/mp4".into()),
            io_max: Some(12 << 10),
            ..Default::default()
        };
        let id = format!("spill/{case}");
        let ing = small.ingest(&drv, &id, &opts).expect("ingest");
        let (ing, at) = stream_with_spill(&mut drv, ing, &big, &data);
        let at = at.unwrap_or_else(|| panic!("{case}: the upload never outgrew the volume"));
        if known {
            assert_eq!(
                at, chunk,
                "{case}: refused at its first chunk's reservation"
            );
        }
        if tail {
            assert_eq!(at as usize, len, "{case}: refused at the short last chunk");
        }
        let a = ing.finish(&mut drv).expect("finish on the other volume");
        assert_eq!(
            (a.size(), a.content_type()),
            (len as u64, Some("video/mp4")),
            "{case}"
        );
        assert!(
            read_all(&big, &mut drv, &id, true) == data,
            "{case}: the bytes read back from the other volume"
        );
        assert!(
            small.get(&id).is_none(),
            "{case}: nothing on the first volume"
        );
        if let Some(f) = filler {
            assert!(read_all(&small, &mut drv, "filler", true) == f);
            assert!(small.delete(&mut drv, "filler").expect("delete filler"));
        }
        assert_empty(
            &small,
            &format!("{case}: the first volume's space returned"),
        );
        drop(a);
        assert!(big.delete(&mut drv, &id).expect("delete"));
        assert_empty(&big, case);
    }
    // Reopened, both volumes agree: nothing of the spills but what was published.
    drop((small, big));
    let small = Volume::open(&tmp_volume_path(&dir, "small.img")).expect("reopen");
    assert_empty(&small, "reopened");
}

#[test]
fn a_spill_refuses_a_damaged_chunk_or_another_chunk_size_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut drv = driver();
    let path = tmp_volume_path(&dir, "a.img");
    let a = volume(&path, 32 << 20, None);
    let b = volume(&tmp_volume_path(&dir, "b.img"), 32 << 20, None);
    let half = volume(
        &tmp_volume_path(&dir, "half.img"),
        32 << 20,
        Some(512 << 10),
    );
    let chunk = a.chunk_size() as usize;
    let data = content(9, 2 * chunk + 77);
    // Two chunks written and waited for (the first extent of an empty volume starts at its
    // data region), the rest in the current buffer.
    let start = |drv: &mut Driver| {
        let mut ing = a.ingest(drv, "x", &PutOptions::default()).expect("ingest");
        for c in 0..2 {
            let piece = &data[c * chunk..(c + 1) * chunk];
            ing.fill_chunk_with(drv, chunk, |drv, buf| {
                drv.buf_mut(&buf)[..chunk].copy_from_slice(piece);
                (Ok(crc32c::crc32c(piece)), buf)
            })
            .expect("fill");
            ing.write_filled(drv).expect("write");
        }
        ing.write(drv, &data[2 * chunk..]).expect("rest");
        ing
    };

    // Another chunk size: refused before anything is read.
    let ing = start(&mut drv);
    match ing.spill_into(&mut drv, &half) {
        Err(EngineError::BadTarget { detail, .. }) => {
            assert!(detail.contains("chunk size"), "{detail}")
        }
        Err(e) => panic!("another chunk size: {e}"),
        Ok(_) => panic!("a spill into another chunk size went ahead"),
    }
    assert_empty(&a, "after the refused spill (chunk size)");
    assert_empty(&half, "nothing on the volume of another chunk size");

    // The second chunk damaged on the device after it was written: its crc32c no longer
    // matches the recorded one, and the spill stops there.
    let ing = start(&mut drv);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open the volume file");
    file.write_at(&[0x5a; 4096], a.data_offset() + chunk as u64 + 8192)
        .expect("damage");
    file.sync_all().expect("sync");
    match ing.spill_into(&mut drv, &b) {
        Err(EngineError::ChecksumMismatch { chunk: 1, id, .. }) => assert_eq!(id, "x"),
        Err(e) => panic!("a damaged chunk: {e}"),
        Ok(_) => panic!("a spill copied a damaged chunk"),
    }
    assert_empty(&a, "after the refused spill (crc)");
    assert_empty(&b, "nothing on the other volume after the refused spill");
    assert_eq!(b.stats().reserved_bytes, 0);
}
