//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

pub mod acks;
#[allow(unused_imports)]
pub use reel_testkit::loopdev::LoopDevice;

use std::path::{Path, PathBuf};

use reel_store::driver::{Driver, DriverConfig};
use reel_store::format::GeometryOptions;
use reel_store::{Asset, FormatOptions, PutOptions, Volume};

pub fn driver() -> Driver {
    Driver::new(&DriverConfig {
        ring_entries: 64,
        buf_size: 1 << 20,
        buf_count: 16,
        write_log: None,
    })
    .expect("io_uring driver")
}

/// Formats a file-backed volume of `size` bytes with small metadata regions.
pub fn format_small(path: &Path, size: u64, journal: u64, ckpt: u64) -> Volume {
    let opts = FormatOptions {
        size: Some(size),
        force: false,
        geometry: GeometryOptions {
            checkpoint_slot_bytes: Some(ckpt),
            journal_bytes: Some(journal),
            chunk_size: None,
        },
    };
    Volume::format(path, &opts).expect("format");
    Volume::open(path).expect("open")
}

/// Deterministic asset content: `len` bytes derived from `seed`. Not the testkit's generator:
/// the committed images in `tests/fixtures/` hold these bytes.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// Used and free space add up to the capacity (no block leaked or counted twice); the stats.
pub fn assert_space_adds_up(vol: &Volume, ctx: &str) -> reel_store::VolumeStats {
    let st = vol.stats();
    assert_eq!(
        st.used_bytes + st.free_bytes,
        st.capacity_bytes,
        "{ctx}: space leaked: {st:?}"
    );
    st
}

pub fn tmp_volume_path(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

pub fn read_all(vol: &Volume, drv: &mut Driver, id: &str, verify: bool) -> Vec<u8> {
    let a = vol.get(id).expect("asset exists");
    let mut out = Vec::new();
    vol.read(drv, &a, 0, a.size(), verify, &mut out)
        .expect("read");
    out
}

/// Copies `a` from `from` to `to` as the tiers' copies do: each chunk read straight into the
/// ingest's registered buffer in reads of at most `io_max` bytes, verified, and written from
/// it ([`reel_store::Ingest::fill_chunk_with`]). Aborts (nothing left) on the first error.
pub fn copy_in_place(
    from: &Volume,
    to: &Volume,
    drv: &mut Driver,
    a: &reel_store::Asset,
    io_max: Option<usize>,
) -> reel_store::Result<reel_store::Asset> {
    let opts = reel_store::PutOptions {
        size: Some(a.size()),
        depth: Some(1),
        io_max,
        ..Default::default()
    };
    let mut ing = to.ingest(drv, a.id(), &opts)?;
    let chunk = u64::from(from.chunk_size());
    for c in 0..a.chunk_count() as u64 {
        let len = chunk.min(a.size() - c * chunk) as usize;
        let res = ing
            .fill_chunk_with(drv, len, |drv, buf| {
                from.read_chunk_verified_into(drv, a, c, io_max, buf)
            })
            .and_then(|()| ing.write_filled(drv));
        if let Err(e) = res {
            ing.abort(drv);
            return Err(e);
        }
    }
    ing.finish(drv)
}

/// `vol.put` of all of `data` as `id` with the default options.
pub fn put(vol: &Volume, drv: &mut Driver, id: &str, data: &[u8]) -> reel_store::Result<Asset> {
    vol.put(drv, id, &mut &data[..], &PutOptions::default())
}
