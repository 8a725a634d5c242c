//! A volume: one device (or O_DIRECT file) in the Reelstore format — formatting, recovery,
//! the journal and checkpoints, deletes and reads. Ingest lives in `ingest.rs`.
//!
//! Invariants:
//! - An asset is in the catalog only after its data and its journal record are durable.
//! - The catalog holds exactly the state of the journal up to `next_seq - 1` whenever the write
//!   lock is free; the allocator holds the complement of the catalog's extents, minus extents
//!   reserved by ingests in progress and extents of retired assets a reader may still hold.
//! - A batch is written only after the previous one is durable (one batch in flight), and every
//!   batch starts on a block boundary, so an acknowledged record is never rewritten.
//! - After any metadata write or sync fails, the volume is poisoned: no further writes, because
//!   the device state is unknown (cf. PostgreSQL's fsync lesson). Reads keep working.
//!
//! Here: the [`Volume`] type, its shared write state and its stats. By concern: `device` (open,
//! lock, signatures), `recovery` (format and open), `journal` (batches, commit, checkpoints),
//! `publish` (publication, volatile copies, deletes and drops) and `read` (reads and scrub).

mod device;
mod journal;
mod publish;
mod read;
mod recovery;

pub use publish::{Prepared, PublishCond};

use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::alloc::Allocator;
use crate::catalog::{Asset, Catalog};
use crate::driver::{Driver, DriverConfig};
use crate::error::{EngineError, Result};
use crate::format::{Extent, FormatError, GeometryOptions, Superblock, BLOCK};

use device::Device;

/// Options of [`Volume::format`].
#[derive(Clone, Debug, Default)]
pub struct FormatOptions {
    /// For a regular file: its size (created or resized). For a block device: use only this many
    /// bytes of it (default: all).
    pub size: Option<u64>,
    /// Overwrite a target that holds a Reelstore volume or a filesystem signature.
    pub force: bool,
    pub geometry: GeometryOptions,
}

/// What recovery found when the volume was opened (also logged).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Superblock copies (0 = A, 1 = B) that were damaged and rewritten from the other copy.
    pub superblock_repaired: Vec<usize>,
    /// The newest checkpoint slot was unreadable and the other one was used.
    pub checkpoint_fallback: bool,
    pub checkpoint_generation: u64,
    pub records_replayed: u64,
    /// Bytes of a torn (never acknowledged) tail batch that were cut.
    pub torn_tail_cut: bool,
    pub assets: u64,
}

/// Space accounting, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VolumeStats {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
    /// Held by ingests in progress.
    pub reserved_bytes: u64,
    /// Held by deleted or replaced assets that a reader may still be reading.
    pub reclaim_pending_bytes: u64,
    pub assets: u64,
    pub journal_used_bytes: u64,
    pub journal_bytes: u64,
    pub checkpoint_generation: u64,
    pub catalog_encoded_bytes: u64,
    pub checkpoint_payload_max_bytes: u64,
}

pub(crate) struct WriteState {
    pub(crate) alloc: Allocator,
    next_seq: u64,
    prev_crc: u32,
    /// Byte offset inside the journal region where the next batch goes (block aligned).
    journal_head: u64,
    ckpt_generation: u64,
    /// The slot (0 or 1) that holds the checkpoint `ckpt_generation`.
    ckpt_slot: usize,
    /// Sum of the encoded sizes of all catalog entries: what the next checkpoint needs.
    catalog_bytes: u64,
    next_slot: u32,
    slots_free: Vec<u32>,
    pub(crate) reserved_blocks: u64,
    /// Assets that left the catalog (deleted or replaced) while a reader may still hold them.
    retired: Vec<Asset>,
    /// Their blocks.
    pending_blocks: u64,
    /// Blocks of all assets in the catalog.
    used_blocks: u64,
    poisoned: Option<String>,
    /// Assets published by [`Volume::publish_volatile`] and not yet journaled: visible, their
    /// data written but not known durable. A crash forgets them (their extents are free after
    /// recovery); [`Volume::commit_volatile`] or a checkpoint makes them durable.
    volatile: Vec<Asset>,
    /// Assets dropped by [`Volume::drop_if`]: their Delete record is written but not yet synced,
    /// so a power cut may bring them back, and their blocks must not be reused until a sync
    /// covers the record (the asset would come back pointing at someone else's bytes). The next
    /// synced journal write moves them to `retired`.
    dropped_unsynced: Vec<Asset>,
    /// When the oldest entry of `volatile` or `dropped_unsynced` got there (None while both are
    /// empty). An upper bound on the age of the oldest still there: one leaving early does not
    /// make it younger.
    volatile_since: Option<Instant>,
}

impl WriteState {
    /// Returns reserved extents (written or not, never published) to the allocator.
    pub(crate) fn unreserve(&mut self, extents: impl IntoIterator<Item = Extent>) {
        for e in extents {
            self.reserved_blocks -= e.blocks as u64;
            self.alloc.free(e);
        }
    }

    /// A free catalog slot.
    fn take_slot(&mut self) -> u32 {
        self.slots_free.pop().unwrap_or_else(|| {
            self.next_slot += 1;
            self.next_slot - 1
        })
    }
}

pub struct Volume {
    path: PathBuf,
    dev: Device,
    pub(crate) sb: Superblock,
    seed: u32,
    catalog: Catalog,
    pub(crate) w: Mutex<WriteState>,
    report: OpenReport,
}

pub(crate) fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> EngineError + 'a {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

fn corrupted(what: &'static str, offset: u64) -> impl FnOnce(FormatError) -> EngineError {
    move |source| EngineError::Corrupted {
        what,
        offset,
        source,
    }
}

/// A small driver for metadata I/O at format and open time.
fn metadata_driver() -> Result<Driver> {
    Ok(Driver::new(&DriverConfig {
        ring_entries: 16,
        buf_size: 1 << 20,
        buf_count: 2,
        write_log: None,
    })?)
}

impl Volume {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The device's fd, for the shard's data path (READ_FIXED with [`Asset::segments`]).
    pub fn fd(&self) -> RawFd {
        self.dev.file.as_raw_fd()
    }

    /// Byte offset of the data region on the device.
    pub fn data_offset(&self) -> u64 {
        self.sb.data_offset
    }

    pub fn chunk_size(&self) -> u32 {
        self.sb.chunk_size
    }

    /// Lock-free lookup.
    pub fn get(&self, id: &str) -> Option<Asset> {
        self.catalog.get(id)
    }

    /// All assets, sorted by id.
    pub fn list(&self) -> Vec<Asset> {
        let mut v = self.catalog.all();
        v.sort_unstable_by(|a, b| a.id().cmp(b.id()));
        v
    }

    pub fn len(&self) -> usize {
        self.catalog.len()
    }

    pub fn is_empty(&self) -> bool {
        self.catalog.is_empty()
    }

    pub fn stats(&self) -> VolumeStats {
        let mut w = self.lock();
        self.reclaim_locked(&mut w);
        VolumeStats {
            capacity_bytes: self.sb.data_blocks * BLOCK,
            used_bytes: w.used_blocks * BLOCK,
            free_bytes: w.alloc.free_blocks() * BLOCK,
            reserved_bytes: w.reserved_blocks * BLOCK,
            reclaim_pending_bytes: w.pending_blocks * BLOCK,
            assets: self.catalog.len() as u64,
            journal_used_bytes: w.journal_head,
            journal_bytes: self.sb.journal_bytes,
            checkpoint_generation: w.ckpt_generation,
            catalog_encoded_bytes: w.catalog_bytes,
            checkpoint_payload_max_bytes: self.sb.checkpoint_payload_max(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, WriteState> {
        self.w.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns extents and slots of dropped assets to the allocator.
    pub(crate) fn reclaim_locked(&self, w: &mut WriteState) {
        let mut i = 0;
        while i < w.retired.len() {
            if w.retired[i].is_last_reference() {
                let a = w.retired.swap_remove(i);
                for e in a.extents() {
                    w.alloc.free(e);
                }
                w.pending_blocks -= a.allocated_blocks();
                w.slots_free.push(a.slot());
            } else {
                i += 1;
            }
        }
    }

    pub(crate) fn check_writable(&self, w: &WriteState) -> Result<()> {
        match &w.poisoned {
            Some(reason) => Err(EngineError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }
}
