//! A model beside the real thing: random sequences of puts (known and unknown length), deletes,
//! reopens, checkpoints, ranged reads and long-lived readers run against a real volume on an
//! O_DIRECT file and against a `BTreeMap` of what should be stored. After every step the two
//! must agree on the listed ids, sizes and content types and on every byte read back, and the
//! volume's space accounting must add up (used + free + reserved + reclaim-pending = capacity,
//! used = the asset sizes rounded up to blocks, pending = exactly what pinned readers hold).
//!
//! The volume is small (24 MiB) and its metadata regions tiny, so journal laps, checkpoints,
//! `NoSpace` and (with an 8 KiB checkpoint slot) `MetadataFull` all happen within a run. A put
//! that fails with either must leave the model unchanged and nothing new visible. Readers
//! ("pins") hold an asset across deletes and replaces and must keep reading its old bytes.
//! Reopens happen mid-run (and once at the end); right after one, nothing may be reserved or
//! pending and every byte must verify.
//!
//! The volume and the caller's driver are used the way a node would use them: one driver for
//! all the steps, a volume dropped and reopened on the same thread. Reopens refused with `Locked`
//! are counted and fail the test at the end (see the last assertion), without stopping the run,
//! so everything else keeps being compared.
//!
//! `PROPTEST_CASES=N` raises the number of cases (default 40). A failing case is saved by
//! proptest in `model.proptest-regressions` next to this file and replayed first next time.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;

use common::{content, driver};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use reel_store::driver::Driver;
use reel_store::format::{GeometryOptions, BLOCK, EN_FIXED_LEN, EXTENT_LEN};
use reel_store::{Asset, EngineError, FormatOptions, PutOptions, Volume};

const VOLUME_BYTES: u64 = 24 << 20;
const MIB: u64 = 1 << 20;
const CASES_DEFAULT: u32 = 40;
const OPS_MAX: usize = 40;
const PINS_MAX: usize = 4;

/// A small pool so that replaces and deletes of existing ids are frequent. Nested ids and a
/// prefix of another id ("m" vs "m/a.mp4") are all just ids to the engine. With `long`, every
/// id is padded to the 255-byte limit with a directory prefix, which (with more puts, see
/// `case_strategy`) pushes the catalog of a volume with a small checkpoint slot to its limit.
fn ids(long: bool) -> Vec<String> {
    let mut v: Vec<String> = [
        "a",
        "b.bin",
        "m",
        "m/a.mp4",
        "m/b.mp4",
        "m/sub/c.mp4",
        "M/a.mp4",
        "x-y_z.0",
        "deep/1/2/3/4/5/6/7/8/9",
        "a.b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("long/{}", "x".repeat(195)));
    v.push(format!("l/{}", "y".repeat(253)));
    if long {
        for id in &mut v {
            if id.len() < 254 {
                *id = format!("{}/{id}", "p".repeat(254 - id.len()));
            }
        }
    }
    v
}

fn content_types() -> [Option<String>; 4] {
    [
        None,
        Some("video/mp4".into()),
        Some("application/octet-stream".into()),
        Some(format!("application/x-{}", "z".repeat(241))),
    ]
}

/// An asset size, some of them resolved against the volume's state when the step runs.
#[derive(Clone, Debug)]
enum Size {
    Bytes(u64),
    /// `chunk_size + delta` (chunk boundaries are where per-chunk checksums split).
    Chunk(i64),
    /// `free_bytes + delta`: just too large.
    FreePlus(u64),
    /// `free_bytes - delta`: fits, possibly exactly.
    FreeMinus(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Put {
        id: usize,
        size: Size,
        seed: u64,
        content_type: usize,
        /// Announce the size (`PutOptions::size`), or stream from a reader of unknown length.
        known_len: bool,
        /// Bytes the reader hands out per `read` call.
        piece: usize,
    },
    Delete {
        id: usize,
    },
    Reopen,
    Checkpoint,
    Read {
        id: usize,
        offset: u64,
        len: u64,
        verify: bool,
    },
    /// A reader takes (and keeps) the current version of an asset.
    Pin {
        id: usize,
    },
    Unpin {
        k: usize,
    },
    /// Delete, or replace with a small new version, the asset a reader holds.
    DeletePinned {
        k: usize,
    },
    ReplacePinned {
        k: usize,
        seed: u64,
        len: u64,
    },
    ReadPinned {
        k: usize,
        offset: u64,
        len: u64,
        verify: bool,
    },
}

fn size_strategy() -> impl Strategy<Value = Size> {
    prop_oneof![
        3 => Just(Size::Bytes(0)),
        6 => prop::sample::select(vec![1u64, 4095, 4096, 4097, MIB - 1, MIB, MIB + 1, 2 * MIB])
            .prop_map(Size::Bytes),
        2 => (-1i64..=1).prop_map(Size::Chunk),
        5 => (0u64..100_000).prop_map(Size::Bytes),
        3 => (MIB..6 * MIB).prop_map(Size::Bytes),
        1 => (8 * MIB..14 * MIB).prop_map(Size::Bytes),
        1 => (1u64..=8192).prop_map(Size::FreePlus),
        1 => (0u64..=8192).prop_map(Size::FreeMinus),
    ]
}

fn op_strategy(put_weight: u32) -> impl Strategy<Value = Op> {
    let id = 0..ids(false).len();
    prop_oneof![
        put_weight => (
            id.clone(),
            size_strategy(),
            any::<u64>(),
            // Favour the 255-byte content type: it fills a small catalog.
            prop::sample::select(vec![0usize, 1, 2, 3, 3]),
            any::<bool>(),
            prop::sample::select(vec![1usize, 7, 4096, 65_537, 1 << 20]),
        )
            .prop_map(|(id, size, seed, content_type, known_len, piece)| Op::Put {
                id, size, seed, content_type, known_len, piece,
            }),
        4 => id.clone().prop_map(|id| Op::Delete { id }),
        2 => Just(Op::Reopen),
        1 => Just(Op::Checkpoint),
        5 => (id.clone(), any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(id, offset, len, verify)| Op::Read { id, offset, len, verify }),
        3 => id.prop_map(|id| Op::Pin { id }),
        1 => any::<usize>().prop_map(|k| Op::Unpin { k }),
        2 => any::<usize>().prop_map(|k| Op::DeletePinned { k }),
        2 => (any::<usize>(), any::<u64>(), 0u64..200_000)
            .prop_map(|(k, seed, len)| Op::ReplacePinned { k, seed, len }),
        4 => (any::<usize>(), any::<u64>(), any::<u64>(), any::<bool>())
            .prop_map(|(k, offset, len, verify)| Op::ReadPinned { k, offset, len, verify }),
    ]
}

#[derive(Clone, Debug)]
struct Geometry {
    journal_bytes: u64,
    checkpoint_slot_bytes: u64,
    chunk_size: u32,
    long_ids: bool,
}

/// A volume geometry and the steps to run on it. Long-id cases put more, to fill the catalog.
fn case_strategy() -> impl Strategy<Value = (Geometry, Vec<Op>)> {
    geometry_strategy().prop_flat_map(|g| {
        let put_weight = if g.long_ids { 24 } else { 10 };
        (
            Just(g),
            prop::collection::vec(op_strategy(put_weight), 1..=OPS_MAX),
        )
    })
}

/// One case in three has a tight catalog: the smallest checkpoint slot (4 KiB of entries) and
/// 255-byte ids, so `MetadataFull` is reached.
fn geometry_strategy() -> impl Strategy<Value = Geometry> {
    (
        prop::sample::select(vec![16u64 << 10, 64 << 10]),
        prop::sample::select(vec![16u64 << 10, 64 << 10, 128 << 10]),
        prop::sample::select(vec![64u32 << 10, 256 << 10, 1 << 20]),
        prop::sample::select(vec![false, false, true]),
    )
        .prop_map(
            |(journal_bytes, checkpoint_slot_bytes, chunk_size, tight)| Geometry {
                journal_bytes,
                checkpoint_slot_bytes: if tight {
                    8 << 10
                } else {
                    checkpoint_slot_bytes
                },
                chunk_size,
                long_ids: tight,
            },
        )
}

/// What the model says an asset is.
#[derive(Clone, Debug)]
struct Entry {
    seed: u64,
    content_type: Option<String>,
    bytes: Rc<Vec<u8>>,
}

impl PartialEq for Entry {
    fn eq(&self, o: &Entry) -> bool {
        self.seed == o.seed
            && self.content_type == o.content_type
            && self.bytes.len() == o.bytes.len()
    }
}

/// A reader of unknown length that hands out `piece` bytes per call and is interrupted now and
/// then (the ingest must retry `Interrupted`).
struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
    calls: u64,
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls == 5 {
            self.calls = 0;
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let n = self.piece.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn blocks(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK)
}

fn encoded_len(a: &Asset) -> u64 {
    (EN_FIXED_LEN
        + a.id().len()
        + a.content_type().map_or(0, str::len)
        + a.extents().len() * EXTENT_LEN
        + a.chunk_count() * 4) as u64
}

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(TestCaseError::fail(format!($($fmt)+)));
        }
    };
}

macro_rules! ensure_eq {
    ($a:expr, $b:expr, $($fmt:tt)+) => {{
        let (a, b) = (&$a, &$b);
        if a != b {
            return Err(TestCaseError::fail(format!(
                "{}: left {:?} != right {:?}", format!($($fmt)+), a, b
            )));
        }
    }};
}

type Check = Result<(), TestCaseError>;

struct Harness {
    _dir: tempfile::TempDir,
    path: PathBuf,
    drv: Driver,
    vol: Option<Volume>,
    ids: Vec<String>,
    content_types: [Option<String>; 4],
    chunk_size: u64,
    model: BTreeMap<String, Entry>,
    /// Assets held by "readers", with what they must keep reading.
    pins: Vec<(Asset, Entry)>,
    /// A one-block file the harness driver can read to wait for a completion (see `reopen`).
    probe: std::fs::File,
    /// Outcomes seen, to show the runs reach the interesting states.
    stats: RunStats,
}

#[derive(Default, Debug)]
struct RunStats {
    puts_ok: u64,
    no_space: u64,
    metadata_full: u64,
    reopens: u64,
    checkpoints_auto: u64,
    pinned_reads_after_drop: u64,
    /// Reopens refused with `Locked` until the harness driver waited once (an engine bug).
    reopen_locked: u64,
}

impl Harness {
    fn new(g: &Geometry) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("model.img");
        let opts = FormatOptions {
            size: Some(VOLUME_BYTES),
            force: false,
            geometry: GeometryOptions {
                checkpoint_slot_bytes: Some(g.checkpoint_slot_bytes),
                journal_bytes: Some(g.journal_bytes),
                chunk_size: Some(g.chunk_size),
            },
        };
        Volume::format(&path, &opts).expect("format");
        let vol = Volume::open(&path).expect("open");
        let probe_path = dir.path().join("probe.bin");
        std::fs::write(&probe_path, [0u8; BLOCK as usize]).expect("probe file");
        let probe = std::fs::File::open(&probe_path).expect("probe file");
        Harness {
            _dir: dir,
            path,
            drv: driver(),
            vol: Some(vol),
            ids: ids(g.long_ids),
            content_types: content_types(),
            chunk_size: g.chunk_size as u64,
            model: BTreeMap::new(),
            pins: Vec::new(),
            probe,
            stats: RunStats::default(),
        }
    }

    fn run(&mut self, op: &Op) -> Check {
        match op {
            Op::Put {
                id,
                size,
                seed,
                content_type,
                known_len,
                piece,
            } => self.put(
                &self.ids[*id].clone(),
                size,
                *seed,
                *content_type,
                *known_len,
                *piece,
            ),
            Op::Delete { id } => self.delete(&self.ids[*id].clone()),
            Op::DeletePinned { k } => match self.pinned_id(*k) {
                Some(id) => self.delete(&id),
                None => Ok(()),
            },
            Op::ReplacePinned { k, seed, len } => match self.pinned_id(*k) {
                Some(id) => self.put(&id, &Size::Bytes(*len), *seed, 1, true, 4096),
                None => Ok(()),
            },
            Op::Reopen => self.reopen(),
            Op::Checkpoint => {
                let vol = self.vol.as_ref().expect("open");
                let before = vol.stats().checkpoint_generation;
                vol.checkpoint(&mut self.drv)
                    .map_err(|e| TestCaseError::fail(format!("checkpoint: {e}")))?;
                let st = vol.stats();
                ensure_eq!(
                    st.checkpoint_generation,
                    before + 1,
                    "checkpoint generation"
                );
                // The new lap holds just its lap-start record.
                ensure_eq!(st.journal_used_bytes, BLOCK, "journal after checkpoint");
                Ok(())
            }
            Op::Read {
                id,
                offset,
                len,
                verify,
            } => {
                let id = &self.ids[*id];
                let vol = self.vol.as_ref().expect("open");
                let Some(entry) = self.model.get(id) else {
                    ensure!(
                        vol.get(id).is_none(),
                        "{id} is visible but not in the model"
                    );
                    return Ok(());
                };
                let asset = vol.get(id).ok_or_else(|| {
                    TestCaseError::fail(format!("{id} is in the model but not visible"))
                })?;
                check_range(vol, &mut self.drv, &asset, entry, *offset, *len, *verify)
            }
            Op::Pin { id } => {
                let id = &self.ids[*id];
                let vol = self.vol.as_ref().expect("open");
                match (vol.get(id), self.model.get(id)) {
                    (Some(a), Some(e)) => {
                        if self.pins.len() < PINS_MAX {
                            self.pins.push((a, e.clone()));
                        }
                        Ok(())
                    }
                    (None, None) => Ok(()),
                    (a, e) => Err(TestCaseError::fail(format!(
                        "{id}: visible {} but in model {}",
                        a.is_some(),
                        e.is_some()
                    ))),
                }
            }
            Op::Unpin { k } => {
                if !self.pins.is_empty() {
                    let k = k % self.pins.len();
                    self.pins.remove(k);
                }
                Ok(())
            }
            Op::ReadPinned {
                k,
                offset,
                len,
                verify,
            } => {
                if self.pins.is_empty() {
                    return Ok(());
                }
                let (asset, entry) = &self.pins[k % self.pins.len()];
                let vol = self.vol.as_ref().expect("open");
                let current = vol
                    .get(asset.id())
                    .is_some_and(|c| Asset::ptr_eq(&c, asset));
                if !current {
                    self.stats.pinned_reads_after_drop += 1;
                }
                check_range(vol, &mut self.drv, asset, entry, *offset, *len, *verify)
            }
        }
    }

    fn pinned_id(&self, k: usize) -> Option<String> {
        (!self.pins.is_empty()).then(|| self.pins[k % self.pins.len()].0.id().to_string())
    }

    fn delete(&mut self, id: &str) -> Check {
        let vol = self.vol.as_ref().expect("open");
        let gen = vol.stats().checkpoint_generation;
        let existed = vol
            .delete(&mut self.drv, id)
            .map_err(|e| TestCaseError::fail(format!("delete {id}: {e}")))?;
        ensure_eq!(existed, self.model.contains_key(id), "delete {id} result");
        ensure!(vol.get(id).is_none(), "{id} still visible after delete");
        if vol.stats().checkpoint_generation != gen {
            self.stats.checkpoints_auto += 1;
        }
        self.model.remove(id);
        Ok(())
    }

    fn put(
        &mut self,
        id: &str,
        size: &Size,
        seed: u64,
        content_type: usize,
        known_len: bool,
        piece: usize,
    ) -> Check {
        let vol = self.vol.as_ref().expect("open");
        let before = vol.stats();
        let len = match *size {
            Size::Bytes(n) => n,
            Size::Chunk(d) => self.chunk_size.saturating_add_signed(d),
            Size::FreePlus(d) => before.free_bytes + d,
            Size::FreeMinus(d) => before.free_bytes.saturating_sub(d),
        };
        let ct = self.content_types[content_type].clone();
        let data = Rc::new(content(seed, len as usize));
        let opts = PutOptions {
            content_type: ct.clone(),
            size: known_len.then_some(len),
            depth: None,
            created_unix_ns: None,
            // A third written in pieces of 4-32 KiB (as copies between tiers are).
            io_max: seed.is_multiple_of(3).then_some(4096 << (seed % 4)),
        };
        let old = vol.get(id);

        // What must happen. Space: the new version needs its blocks while the old one is still
        // stored. Metadata: the catalog entry's size depends on how many extents the allocator
        // hands out, which the model does not know, so there is a band where either is right.
        let need_blocks = blocks(len);
        let no_space = need_blocks > before.free_bytes / BLOCK;
        let chunks = len.div_ceil(self.chunk_size);
        let entry_min = (EN_FIXED_LEN + id.len() + ct.as_deref().map_or(0, str::len)) as u64
            + if len > 0 { EXTENT_LEN as u64 } else { 0 }
            + 4 * chunks;
        let catalog_rest = before.catalog_encoded_bytes - old.as_ref().map_or(0, encoded_len);
        let max = before.checkpoint_payload_max_bytes;
        let extents_max = (self.model.len() + self.pins.len() + 2) as u64;
        let meta_full_must = catalog_rest + entry_min > max;
        let meta_full_may = catalog_rest + entry_min + EXTENT_LEN as u64 * extents_max > max;

        let res = if known_len {
            vol.put(&mut self.drv, id, &mut &data[..], &opts)
        } else {
            let mut r = Pieces {
                data: &data[..],
                piece,
                calls: 0,
            };
            vol.put(&mut self.drv, id, &mut r, &opts)
        };
        let gen_after = vol.stats().checkpoint_generation;
        if gen_after != before.checkpoint_generation {
            self.stats.checkpoints_auto += 1;
        }
        match res {
            Ok(asset) => {
                ensure!(
                    !no_space,
                    "put {id} of {len} bytes succeeded with only {} bytes free",
                    before.free_bytes
                );
                ensure!(
                    !meta_full_must,
                    "put {id} succeeded though its entry ({entry_min}+ bytes) cannot fit the catalog ({catalog_rest} of {max})"
                );
                ensure_eq!(asset.size(), len, "put {id} size");
                ensure_eq!(asset.content_type(), ct.as_deref(), "put {id} ct");
                drop(asset);
                drop(old);
                self.stats.puts_ok += 1;
                self.model.insert(
                    id.to_string(),
                    Entry {
                        seed,
                        content_type: ct,
                        bytes: data,
                    },
                );
                // The whole new asset reads back, checked and unchecked.
                let vol = self.vol.as_ref().expect("open");
                let entry = &self.model[id];
                let asset = vol
                    .get(id)
                    .ok_or_else(|| TestCaseError::fail("put not visible"))?;
                check_range(vol, &mut self.drv, &asset, entry, 0, u64::MAX, true)?;
                check_range(vol, &mut self.drv, &asset, entry, 0, u64::MAX, false)
            }
            Err(EngineError::NoSpace { .. }) => {
                ensure!(
                    no_space,
                    "put {id} of {len} bytes: NoSpace with {} bytes free",
                    before.free_bytes
                );
                self.stats.no_space += 1;
                self.check_unchanged(id, old, &before)
            }
            Err(EngineError::MetadataFull { .. }) => {
                ensure!(
                    !no_space,
                    "put {id}: MetadataFull, but NoSpace was due first"
                );
                ensure!(
                    meta_full_may,
                    "put {id}: MetadataFull though its entry ({entry_min}+ bytes) fits the catalog ({catalog_rest} of {max})"
                );
                self.stats.metadata_full += 1;
                self.check_unchanged(id, old, &before)
            }
            Err(e) => Err(TestCaseError::fail(format!(
                "put {id} of {len} bytes (known_len {known_len}): unexpected error {e}"
            ))),
        }
    }

    /// After a failed put: the old version (if any) is still the visible one and no space leaked.
    fn check_unchanged(
        &mut self,
        id: &str,
        old: Option<Asset>,
        before: &reel_store::VolumeStats,
    ) -> Check {
        let vol = self.vol.as_ref().expect("open");
        let now = vol.get(id);
        match (&old, &now) {
            (Some(o), Some(n)) => ensure!(Asset::ptr_eq(o, n), "{id}: a failed put replaced it"),
            (None, None) => {}
            _ => {
                return Err(TestCaseError::fail(format!(
                    "{id}: visibility changed by a failed put (before {}, after {})",
                    old.is_some(),
                    now.is_some()
                )))
            }
        }
        drop((old, now));
        let st = vol.stats();
        ensure_eq!(
            st.free_bytes,
            before.free_bytes,
            "free bytes after a failed put"
        );
        ensure_eq!(st.reserved_bytes, 0, "reserved bytes after a failed put");
        ensure_eq!(
            st.used_bytes,
            before.used_bytes,
            "used bytes after a failed put"
        );
        ensure_eq!(
            st.catalog_encoded_bytes,
            before.catalog_encoded_bytes,
            "catalog bytes after a failed put"
        );
        Ok(())
    }

    fn reopen(&mut self) -> Check {
        // Readers do not survive a restart (their extents are free space in the new instance).
        self.pins.clear();
        drop(self.vol.take());
        let vol = match Volume::open(&self.path) {
            Ok(v) => v,
            Err(e @ EngineError::Locked { .. }) => {
                // Nobody else has this file. Known engine bug (see `reopen_locked` in the test
                // below): the dropped volume's file, and with it its flock, can stay referenced
                // by the harness driver's ring until that driver next waits for a completion.
                // Prove it is that (a wait on the driver releases it), record it, and carry on so
                // the rest of the model keeps being checked.
                let waited = self
                    .drv
                    .read_to_vec(self.probe.as_raw_fd(), 0, BLOCK as usize);
                let retry = Volume::open(&self.path);
                match (waited, retry) {
                    (Ok(_), Ok(v)) => {
                        self.stats.reopen_locked += 1;
                        v
                    }
                    (_, retry) => {
                        return Err(TestCaseError::fail(format!(
                            "reopen: {e}; after a wait on the driver: {:?}",
                            retry.err()
                        )))
                    }
                }
            }
            Err(e) => return Err(TestCaseError::fail(format!("reopen: {e}"))),
        };
        let r = vol.open_report().clone();
        ensure!(
            r.superblock_repaired.is_empty() && !r.checkpoint_fallback && !r.torn_tail_cut,
            "a clean reopen needed repairs: {r:?}"
        );
        ensure_eq!(
            r.assets,
            self.model.len() as u64,
            "assets in the open report"
        );
        self.vol = Some(vol);
        self.stats.reopens += 1;
        let vol = self.vol.as_ref().expect("open");
        let st = vol.stats();
        ensure_eq!(st.reserved_bytes, 0, "reserved after reopen");
        ensure_eq!(st.reclaim_pending_bytes, 0, "pending after reopen");
        ensure_eq!(
            st.used_bytes + st.free_bytes,
            st.capacity_bytes,
            "used + free after reopen"
        );
        // Every byte of every asset survived.
        for (id, entry) in &self.model {
            let asset = vol
                .get(id)
                .ok_or_else(|| TestCaseError::fail(format!("{id} lost by reopen")))?;
            check_range(vol, &mut self.drv, &asset, entry, 0, u64::MAX, true)?;
        }
        let bad = vol
            .scrub(&mut self.drv)
            .map_err(|e| TestCaseError::fail(format!("scrub: {e}")))?;
        ensure!(bad.is_empty(), "scrub after reopen: {bad:?}");
        Ok(())
    }

    /// The invariants that hold between any two steps.
    fn check(&mut self, step: usize) -> Check {
        let vol = self.vol.as_ref().expect("open");
        let list = vol.list();
        let listed: Vec<(&str, u64, Option<&str>)> = list
            .iter()
            .map(|a| (a.id(), a.size(), a.content_type()))
            .collect();
        let expected: Vec<(&str, u64, Option<&str>)> = self
            .model
            .iter()
            .map(|(id, e)| (id.as_str(), e.bytes.len() as u64, e.content_type.as_deref()))
            .collect();
        ensure_eq!(listed, expected, "step {step}: listing");
        let mut catalog_bytes = 0;
        for a in &list {
            let blocks_held: u64 = a.extents().map(|e| e.blocks as u64).sum();
            ensure_eq!(
                blocks_held,
                blocks(a.size()),
                "step {step}: {} extent blocks",
                a.id()
            );
            ensure_eq!(
                a.chunk_count() as u64,
                a.size().div_ceil(self.chunk_size),
                "step {step}: {} chunk checksums",
                a.id()
            );
            catalog_bytes += encoded_len(a);
        }
        drop(list);

        let st = vol.stats();
        let model_used: u64 = self
            .model
            .values()
            .map(|e| blocks(e.bytes.len() as u64) * BLOCK)
            .sum();
        // Pinned assets that have left the catalog hold their blocks until the reader lets go.
        let mut held: Vec<&Asset> = Vec::new();
        for (a, _) in &self.pins {
            let current = vol.get(a.id()).is_some_and(|c| Asset::ptr_eq(&c, a));
            if !current && !held.iter().any(|h| Asset::ptr_eq(h, a)) {
                held.push(a);
            }
        }
        let pending: u64 = held.iter().map(|a| a.allocated_bytes()).sum();
        ensure_eq!(
            st.used_bytes + st.free_bytes + st.reserved_bytes + st.reclaim_pending_bytes,
            st.capacity_bytes,
            "step {step}: used + free + reserved + pending = capacity ({st:?})"
        );
        ensure!(
            st.used_bytes >= model_used,
            "step {step}: used {} < the assets' {model_used}",
            st.used_bytes
        );
        // Ingest trims its reservation to the blocks the data occupies: nothing is over-held.
        ensure_eq!(st.used_bytes, model_used, "step {step}: used bytes");
        ensure_eq!(
            st.reserved_bytes,
            0,
            "step {step}: reserved between operations"
        );
        ensure_eq!(
            st.reclaim_pending_bytes,
            pending,
            "step {step}: pending (pinned, dropped)"
        );
        ensure_eq!(
            st.assets,
            self.model.len() as u64,
            "step {step}: asset count"
        );
        ensure_eq!(
            st.catalog_encoded_bytes,
            catalog_bytes,
            "step {step}: catalog bytes"
        );
        ensure!(
            st.catalog_encoded_bytes <= st.checkpoint_payload_max_bytes,
            "step {step}: the catalog no longer fits a checkpoint ({st:?})"
        );
        ensure!(
            st.journal_used_bytes <= st.journal_bytes
                && st.journal_used_bytes / BLOCK * BLOCK == st.journal_used_bytes,
            "step {step}: journal head ({st:?})"
        );

        // Every operation the engine started on the caller's driver has finished and been
        // claimed: nothing is left in flight or unclaimed between steps.
        ensure_eq!(self.drv.in_flight(), 0, "step {step}: driver ops in flight");
        ensure!(
            self.drv.pop().is_none(),
            "step {step}: an unclaimed completion on the driver"
        );

        // A reader keeps reading the version it holds, whatever happened since: its blocks
        // must not have been handed to another asset. Check each pinned asset's first and last
        // block (all of it when small).
        for (a, entry) in &self.pins {
            let size = entry.bytes.len() as u64;
            let head = size.min(BLOCK);
            check_range(vol, &mut self.drv, a, entry, 0, head, false)?;
            let tail_at = size.saturating_sub(BLOCK);
            check_range(vol, &mut self.drv, a, entry, tail_at, size - tail_at, false)?;
        }
        self.stats.pinned_reads_after_drop += held.len() as u64;
        Ok(())
    }
}

/// Reads `[offset, offset + len)` of `asset` (both reduced into range) and compares the bytes
/// with the model's.
fn check_range(
    vol: &Volume,
    drv: &mut Driver,
    asset: &Asset,
    entry: &Entry,
    offset: u64,
    len: u64,
    verify: bool,
) -> Check {
    let size = entry.bytes.len() as u64;
    ensure_eq!(asset.size(), size, "{} size", asset.id());
    let offset = offset % (size + 1);
    let len = if len == u64::MAX {
        size - offset
    } else {
        len % (size - offset + 1)
    };
    let mut out = Vec::new();
    vol.read(drv, asset, offset, len, verify, &mut out)
        .map_err(|e| TestCaseError::fail(format!("read {} {offset}+{len}: {e}", asset.id())))?;
    let want = &entry.bytes[offset as usize..(offset + len) as usize];
    ensure!(
        out == want,
        "read {} {offset}+{len} (verify {verify}): bytes differ from the model",
        asset.id()
    );
    // One byte past the end is refused.
    let past = vol.read(drv, asset, size, 1, verify, &mut Vec::new());
    ensure!(
        matches!(past, Err(EngineError::Range { .. })),
        "read past the end of {}: {past:?}",
        asset.id()
    );
    Ok(())
}

fn run_case(g: &Geometry, ops: &[Op]) -> Result<RunStats, TestCaseError> {
    let mut h = Harness::new(g);
    h.check(0)?;
    for (i, op) in ops.iter().enumerate() {
        h.run(op)
            .map_err(|e| TestCaseError::fail(format!("step {} {op:?}: {e}", i + 1)))?;
        h.check(i + 1)?;
    }
    // Whatever the run did, a final restart must bring back exactly the model.
    h.reopen()?;
    h.check(ops.len() + 1)?;
    Ok(h.stats)
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CASES_DEFAULT)
}

#[test]
fn volume_matches_model() {
    let config = ProptestConfig {
        cases: cases(),
        max_shrink_iters: 2000,
        // Failing cases are saved next to this file (model.proptest-regressions) and replayed
        // first on the next run.
        source_file: Some(file!()),
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let totals = std::cell::RefCell::new(RunStats::default());
    let result = runner.run(&case_strategy(), |(g, ops)| {
        let s = run_case(&g, &ops)?;
        let mut t = totals.borrow_mut();
        t.puts_ok += s.puts_ok;
        t.no_space += s.no_space;
        t.metadata_full += s.metadata_full;
        t.reopens += s.reopens;
        t.checkpoints_auto += s.checkpoints_auto;
        t.pinned_reads_after_drop += s.pinned_reads_after_drop;
        t.reopen_locked += s.reopen_locked;
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let t = totals.into_inner();
    eprintln!("model test totals: {t:?}");
    // The run must reach the states it exists to test (shrinking aside, these are totals over
    // all cases, so they hold for any reasonable seed).
    assert!(t.puts_ok > 0 && t.reopens > 0, "{t:?}");
    assert!(t.no_space > 0, "no put ever ran out of space: {t:?}");
    assert!(t.checkpoints_auto > 0, "the journal never filled up: {t:?}");
    // Reopening right after dropping a volume, on the same thread, must work. It fails when the
    // last reference to the volume's file is a request freed by an io-wq worker after its
    // completion was reaped (fsync always runs on io-wq): on a DEFER_TASKRUN ring that free is
    // queued as task work that runs only when the driver next waits, so the open file
    // description, and the flock taken on it, outlive `drop(volume)`.
    assert_eq!(
        t.reopen_locked, 0,
        "engine bug: {} reopen(s) failed with EngineError::Locked (\"in use by another process\") \
         although no one else had the file open; the dropped volume's file and flock stayed \
         referenced by the caller's io_uring driver until it next waited for a completion, which \
         released them at once. Volume::open retried for 3 s and gave up. Totals: {t:?}",
        t.reopen_locked
    );
}
