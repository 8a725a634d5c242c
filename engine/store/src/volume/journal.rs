//! The journal: batches of records appended after the previous one is durable, their commit
//! into the catalog, syncs of dropped assets' Delete records, and checkpoints that start a
//! new journal lap.

use crate::catalog::Asset;
use crate::driver::Driver;
use crate::error::{EngineError, Result};
use crate::format::{self, encode_record, CheckpointHeader, Record, BLOCK, CK_PAYLOAD_OFFSET};

use super::{Volume, WriteState};

impl Volume {
    /// Bytes of dropped assets whose Delete is not yet synced ([`Volume::drop_if`]): not free
    /// until the next sync.
    pub fn dropped_unsynced_bytes(&self) -> u64 {
        self.lock()
            .dropped_unsynced
            .iter()
            .map(|a| a.allocated_blocks() * BLOCK)
            .sum()
    }

    /// Syncs the Delete records of [`Volume::drop_if`] and lets their blocks be reclaimed.
    /// Returns whether there were any.
    pub(crate) fn sync_dropped_locked(&self, drv: &mut Driver, w: &mut WriteState) -> Result<bool> {
        if w.dropped_unsynced.is_empty() {
            return Ok(false);
        }
        if let Err(e) = drv.sync(self.fd()) {
            w.poisoned = Some(format!("journal sync failed: {e}"));
            return Err(e.into());
        }
        self.journal_synced(w);
        Ok(true)
    }

    /// Every journal write so far is durable: lazily dropped assets become reclaimable.
    pub(super) fn journal_synced(&self, w: &mut WriteState) {
        let dropped = std::mem::take(&mut w.dropped_unsynced);
        w.retired.extend(dropped);
        if w.volatile.is_empty() {
            w.volatile_since = None;
        }
        self.reclaim_locked(w);
    }

    /// An asset left the catalog: its space is reclaimed once no reader holds it.
    pub(super) fn retire(&self, w: &mut WriteState, old: Asset) {
        // A volatile copy that leaves the catalog is never journaled; its handle there would
        // keep its space from being reclaimed.
        w.volatile.retain(|v| !Asset::ptr_eq(v, &old));
        if w.volatile.is_empty() && w.dropped_unsynced.is_empty() {
            w.volatile_since = None;
        }
        let blocks = old.allocated_blocks();
        w.used_blocks -= blocks;
        w.pending_blocks += blocks;
        w.retired.push(old);
    }

    pub(super) fn check_metadata_room(&self, w: &WriteState, delta: i64) -> Result<()> {
        let needed = (w.catalog_bytes as i64 + delta).max(0) as u64;
        if needed > self.sb.checkpoint_payload_max() {
            return Err(EngineError::MetadataFull {
                needed_bytes: needed,
                max_bytes: self.sb.checkpoint_payload_max(),
            });
        }
        Ok(())
    }

    /// Appends records to the journal durably, checkpointing first when the journal is full.
    pub(super) fn commit(
        &self,
        drv: &mut Driver,
        w: &mut WriteState,
        records: &[Record],
        catalog_delta: i64,
    ) -> Result<()> {
        self.commit_with(drv, w, records, catalog_delta, true)
    }

    /// [`Volume::commit`], synced or (`sync` false: durable at the next sync, or lost whole or
    /// torn by a power cut before it) not.
    pub(super) fn commit_with(
        &self,
        drv: &mut Driver,
        w: &mut WriteState,
        records: &[Record],
        catalog_delta: i64,
        sync: bool,
    ) -> Result<()> {
        let len = batch_len(records);
        if len > self.sb.journal_bytes - BLOCK {
            return Err(EngineError::RecordTooLarge {
                bytes: len,
                journal_bytes: self.sb.journal_bytes,
            });
        }
        if w.journal_head + len > self.sb.journal_bytes {
            self.checkpoint_locked(drv, w)?;
        }
        self.append_batch_with(drv, w, records, sync)?;
        w.catalog_bytes = (w.catalog_bytes as i64 + catalog_delta).max(0) as u64;
        Ok(())
    }

    /// Writes one batch at the journal head and syncs it. Poisons the volume on failure.
    pub(super) fn append_batch(
        &self,
        drv: &mut Driver,
        w: &mut WriteState,
        records: &[Record],
    ) -> Result<()> {
        self.append_batch_with(drv, w, records, true)
    }

    /// [`Volume::append_batch`], synced only if `sync`. An unsynced batch may be lost or torn by a
    /// power cut, and then ends the journal at recovery; every later batch was unsynced too
    /// (a synced one makes all earlier writes durable), so none is acknowledged.
    pub(super) fn append_batch_with(
        &self,
        drv: &mut Driver,
        w: &mut WriteState,
        records: &[Record],
        sync: bool,
    ) -> Result<()> {
        let mut buf = Vec::with_capacity(batch_len(records) as usize);
        let first = w.next_seq;
        let mut prev = w.prev_crc;
        for (i, r) in records.iter().enumerate() {
            prev = encode_record(&mut buf, self.seed, r, first + i as u64, first, prev);
        }
        buf.resize(buf.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
        assert!(
            w.journal_head.is_multiple_of(BLOCK)
                && w.journal_head + buf.len() as u64 <= self.sb.journal_bytes
        );
        let fd = self.fd();
        let res = drv
            .write_from_slice(fd, self.sb.journal_offset + w.journal_head, &buf)
            .and_then(|()| if sync { drv.sync(fd) } else { Ok(()) });
        if let Err(e) = res {
            w.poisoned = Some(format!("journal write failed: {e}"));
            return Err(e.into());
        }
        if sync {
            self.journal_synced(w);
        }
        w.journal_head += buf.len() as u64;
        w.next_seq = first + records.len() as u64;
        w.prev_crc = prev;
        Ok(())
    }

    /// Forces a checkpoint now (normally taken when the journal fills up).
    pub fn checkpoint(&self, drv: &mut Driver) -> Result<()> {
        let mut w = self.lock();
        self.check_writable(&w)?;
        self.checkpoint_locked(drv, &mut w)
    }

    /// Writes the whole catalog into the other checkpoint slot, then starts a new journal lap.
    pub(super) fn checkpoint_locked(&self, drv: &mut Driver, w: &mut WriteState) -> Result<()> {
        let mut payload = Vec::with_capacity(w.catalog_bytes as usize);
        let mut count = 0u64;
        // Order does not matter in a checkpoint; no need to sort millions of ids.
        for a in self.catalog.all() {
            a.to_record().encode(&mut payload);
            count += 1;
        }
        let max = self.sb.checkpoint_payload_max();
        if payload.len() as u64 > max {
            return Err(EngineError::MetadataFull {
                needed_bytes: payload.len() as u64,
                max_bytes: max,
            });
        }
        let generation = w.ckpt_generation + 1;
        let slot = 1 - w.ckpt_slot;
        let hdr = CheckpointHeader {
            generation,
            last_seq: w.next_seq - 1,
            entry_count: count,
            payload_bytes: payload.len() as u64,
            payload_crc: crc32c::crc32c_append(self.seed, &payload),
        };
        let (hblock, hcrc) = hdr.encode(self.seed);
        payload.resize(payload.len().div_ceil(BLOCK as usize) * BLOCK as usize, 0);
        let fd = self.fd();
        let off = self.sb.checkpoint_slot_offset(slot);
        let res = drv
            .write_from_slice(fd, off + CK_PAYLOAD_OFFSET, &payload)
            .and_then(|()| drv.write_from_slice(fd, off, &hblock))
            .and_then(|()| drv.sync(fd));
        if let Err(e) = res {
            w.poisoned = Some(format!("checkpoint write failed: {e}"));
            return Err(e.into());
        }
        // The checkpoint is durable: the old lap is no longer needed. Start the new one.
        w.ckpt_generation = generation;
        w.ckpt_slot = slot;
        // The checkpoint holds every catalog entry, and its sync came after their data writes
        // completed: the volatile ones are durable now.
        w.volatile.clear();
        w.volatile_since = None;
        w.journal_head = 0;
        w.prev_crc = hcrc;
        self.append_batch(drv, w, &[Record::LapStart { generation }])?;
        tracing::debug!(generation, entries = count, "checkpoint written");
        Ok(())
    }
}

/// Bytes an asset takes in a checkpoint (what `to_record().encoded_len()` would say, without
/// building the record).
pub(super) fn encoded_len(a: &Asset) -> u64 {
    (format::EN_FIXED_LEN
        + a.id().len()
        + a.content_type().map_or(0, str::len)
        + a.extents().len() * format::EXTENT_LEN
        + a.chunk_count() * 4) as u64
}

pub(super) fn batch_len(records: &[Record]) -> u64 {
    let mut n = 0;
    let mut tmp = Vec::new();
    for r in records {
        tmp.clear();
        r.encode_payload(&mut tmp);
        n += format::record_span(tmp.len());
    }
    (n as u64).div_ceil(BLOCK) * BLOCK
}
