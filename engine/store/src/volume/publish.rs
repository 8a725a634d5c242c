//! Publishing and removing assets: group commit of prepared ingests, volatile copies (a
//! tier's copy whose content another volume holds durably) and their later commit, deletes
//! and drops.

use std::time::Instant;

use crate::catalog::Asset;
use crate::driver::Driver;
use crate::error::Result;
use crate::format::{EntryRecord, Extent, Record};

use super::journal::{batch_len, encoded_len};
use super::{Volume, WriteState};

/// A publish condition of [`crate::Ingest::finish_if`]: given the catalog's current version of
/// the id.
pub type PublishCond<'a> = dyn Fn(Option<&Asset>) -> bool + 'a;

/// An ingest whose data is written and trimmed but neither durable nor visible: the first half of
/// [`crate::Ingest::finish`], for group commit with [`Volume::publish_prepared`] (one data sync
/// and one journal write for many assets). Dropping it releases its reservation (no write is in
/// flight).
pub struct Prepared<'v> {
    pub(crate) vol: &'v Volume,
    pub(crate) rec: Option<EntryRecord>,
}

impl Prepared<'_> {
    pub fn id(&self) -> &str {
        self.rec.as_ref().map_or("", |r| r.id.as_str())
    }

    pub fn size(&self) -> u64 {
        self.rec.as_ref().map_or(0, |r| r.size)
    }

    /// Takes the record (and with it the reservation) out: the caller publishes or releases it.
    pub(crate) fn take_record(&mut self) -> Option<EntryRecord> {
        self.rec.take()
    }
}

impl Drop for Prepared<'_> {
    fn drop(&mut self) {
        if let Some(rec) = self.rec.take() {
            self.vol.lock().unreserve(rec.extents);
        }
    }
}

impl Volume {
    /// Deletes an asset. Its record is durable when this returns; its extents become free once
    /// no reader holds the asset any more. Returns false if there was no such asset.
    pub fn delete(&self, drv: &mut Driver, id: &str) -> Result<bool> {
        self.delete_if(drv, id, &|_| true)
    }

    /// Deletes `id` only if `cond`, given the current version, says yes; `cond` runs under the
    /// write lock, so no put can slip in between (a migration drops exactly the version it
    /// checked, never a newer upload). Returns whether it deleted.
    pub fn delete_if(
        &self,
        drv: &mut Driver,
        id: &str,
        cond: &dyn Fn(&Asset) -> bool,
    ) -> Result<bool> {
        self.remove_if(drv, id, cond, true)
    }

    /// Drops `id` if `cond` (as in [`Volume::delete_if`]) says yes, **without** waiting for the
    /// drop to be durable: the Delete record is written but not synced, so no device flush (each
    /// stalls foreground reads). For a copy whose content another volume holds durably (a
    /// migration's demotion or eviction): if a power cut loses the record, the copy comes back
    /// whole, which loses nothing. Its blocks are reused only after a sync covers the record:
    /// the next synced journal write (any upload, delete or commit), [`Volume::commit_volatile`],
    /// or an ingest that would otherwise run out of space. A volatile copy is simply forgotten.
    pub fn drop_if(
        &self,
        drv: &mut Driver,
        id: &str,
        cond: &dyn Fn(&Asset) -> bool,
    ) -> Result<bool> {
        self.remove_if(drv, id, cond, false)
    }

    /// [`Volume::delete_if`] (`durable`) or [`Volume::drop_if`].
    fn remove_if(
        &self,
        drv: &mut Driver,
        id: &str,
        cond: &dyn Fn(&Asset) -> bool,
        durable: bool,
    ) -> Result<bool> {
        let mut w = self.lock();
        self.check_writable(&w)?;
        if durable && w.dropped_unsynced.iter().any(|a| a.id() == id) {
            // A drop's Delete of this id is not yet durable: a power cut could bring that copy
            // back after this delete is acknowledged. Make it durable first.
            self.sync_dropped_locked(drv, &mut w)?;
        }
        let Some(old) = self.get(id) else {
            return Ok(false);
        };
        if !cond(&old) {
            return Ok(false);
        }
        let delta = -(encoded_len(&old) as i64);
        let volatile = w.volatile.iter().any(|v| Asset::ptr_eq(v, &old));
        if volatile {
            // Never journaled (a volatile copy): the journal does not know it, and a Delete of
            // an unknown id would read as corruption at recovery. Forgetting it is the delete.
            w.catalog_bytes = w.catalog_bytes.saturating_sub(encoded_len(&old));
        } else {
            let records = [Record::Delete { id: id.to_string() }];
            self.commit_with(drv, &mut w, &records, delta, durable)?;
        }
        self.catalog.remove(id);
        if volatile || durable {
            self.retire(&mut w, old);
            self.reclaim_locked(&mut w);
        } else {
            // Reclaimable once a sync covers the record (`journal_synced`).
            let blocks = old.allocated_blocks();
            w.used_blocks -= blocks;
            w.pending_blocks += blocks;
            w.dropped_unsynced.push(old);
            w.volatile_since.get_or_insert_with(Instant::now);
        }
        Ok(true)
    }

    /// Makes an asset whose data is already durable visible: journals it, then publishes it.
    pub(crate) fn publish(
        &self,
        drv: &mut Driver,
        w: &mut WriteState,
        rec: EntryRecord,
    ) -> Result<Asset> {
        let mut out = self.publish_batch(drv, w, vec![rec])?;
        Ok(out.pop().expect("one record in, one asset out"))
    }

    /// Journals records (ids distinct, data already durable) as one batch: one journal write and
    /// one sync for all of them. Then publishes them. All or none.
    fn publish_batch(
        &self,
        drv: &mut Driver,
        w: &mut WriteState,
        recs: Vec<EntryRecord>,
    ) -> Result<Vec<Asset>> {
        let mut assets = Vec::with_capacity(recs.len());
        let mut delta = 0i64;
        for rec in &recs {
            let slot = w.take_slot();
            let asset = Asset::from_record(rec, slot);
            let old = self.get(&rec.id);
            delta += encoded_len(&asset) as i64 - old.as_ref().map_or(0, |o| encoded_len(o) as i64);
            assets.push(asset);
        }
        let records: Vec<Record> = recs.into_iter().map(Record::Put).collect();
        let committed = self
            .check_metadata_room(w, delta)
            .and_then(|()| self.commit(drv, w, &records, delta));
        if let Err(e) = committed {
            w.slots_free.extend(assets.iter().map(Asset::slot));
            return Err(e);
        }
        for asset in &assets {
            let blocks = asset.allocated_blocks();
            w.reserved_blocks -= blocks;
            w.used_blocks += blocks;
            if let Some(old) = self.catalog.insert(asset.clone()) {
                self.retire(w, old);
            }
        }
        self.reclaim_locked(w);
        Ok(assets)
    }

    /// Group commit of prepared ingests ([`crate::Ingest::prepare`]): one sync makes all their
    /// data durable; then, under the write lock, each one's condition is asked (given the
    /// catalog's current version of its id, as in [`crate::Ingest::finish_if`]) and those it
    /// accepts are journaled as one batch (one write, one sync) and published. Returns, in order,
    /// the published asset or `None` for a declined one (its space is released; so is a later
    /// duplicate of an id already in the batch). On error nothing is published.
    pub fn publish_prepared(
        &self,
        drv: &mut Driver,
        items: Vec<(Prepared<'_>, &PublishCond<'_>)>,
    ) -> Result<Vec<Option<Asset>>> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        // Data first, then the records that point at it.
        drv.sync(self.fd())?;
        let count = items.len();
        let mut w = self.lock();
        // Declined and failed records give their space back here, under the lock already held
        // (a Prepared's own drop would take it again).
        let mut taken = Vec::new();
        let mut recs = Vec::new();
        let writable = self.check_writable(&w);
        for (k, (mut p, cond)) in items.into_iter().enumerate() {
            let Some(rec) = p.take_record() else { continue };
            if writable.is_err()
                || recs.iter().any(|r: &EntryRecord| r.id == rec.id)
                || !cond(self.get(&rec.id).as_ref())
            {
                w.unreserve(rec.extents);
                continue;
            }
            taken.push(k);
            recs.push(rec);
        }
        writable?;
        let mut res: Vec<Option<Asset>> = vec![None; count];
        if recs.is_empty() {
            return Ok(res);
        }
        let extents: Vec<Extent> = recs.iter().flat_map(|r| r.extents.clone()).collect();
        match self.publish_batch(drv, &mut w, recs) {
            Ok(assets) => {
                for (k, a) in taken.into_iter().zip(assets) {
                    res[k] = Some(a);
                }
                Ok(res)
            }
            Err(e) => {
                w.unreserve(extents);
                Err(e)
            }
        }
    }

    /// Publishes a prepared copy at once, **without** making it durable: it is visible and
    /// served from now on, but neither its data nor a journal record is synced, so a crash
    /// forgets it (its space is free after recovery) until [`Volume::commit_volatile`] or a
    /// checkpoint makes it durable. For migration copies, whose source still holds the asset:
    /// losing one loses no acknowledged data, and the device flushes that durability costs
    /// (each stalls foreground reads) are paid rarely and in batches.
    ///
    /// Published only if `cond` (under the write lock, given the current version) says yes
    /// **and** the id has no current version: replacing one would retire (and free) extents
    /// that the journal still names, which after a crash would point at reused space. Use
    /// [`Volume::publish_prepared`] to replace.
    pub fn publish_volatile(
        &self,
        p: Prepared<'_>,
        cond: &PublishCond<'_>,
    ) -> Result<Option<Asset>> {
        let mut p = p;
        let mut w = self.lock();
        let Some(rec) = p.take_record() else {
            return Ok(None);
        };
        if let Err(e) = self.check_writable(&w) {
            w.unreserve(rec.extents);
            return Err(e);
        }
        let cur = self.get(&rec.id);
        if cur.is_some() || !cond(cur.as_ref()) {
            w.unreserve(rec.extents);
            return Ok(None);
        }
        let slot = w.take_slot();
        let asset = Asset::from_record(&rec, slot);
        let delta = encoded_len(&asset) as i64;
        // A checkpoint would have to hold it too.
        if let Err(e) = self.check_metadata_room(&w, delta) {
            w.slots_free.push(slot);
            w.unreserve(rec.extents);
            return Err(e);
        }
        w.catalog_bytes += delta as u64;
        let blocks = asset.allocated_blocks();
        w.reserved_blocks -= blocks;
        w.used_blocks += blocks;
        self.catalog.insert(asset.clone());
        w.volatile.push(asset.clone());
        w.volatile_since.get_or_insert_with(Instant::now);
        Ok(Some(asset))
    }

    /// Whether `a` is durable here (not a volatile copy still waiting for its commit).
    pub fn is_durable(&self, a: &Asset) -> bool {
        !self.lock().volatile.iter().any(|v| Asset::ptr_eq(v, a))
    }

    /// Volatile copies still current (count, bytes).
    pub fn volatile_stats(&self) -> (u64, u64) {
        let w = self.lock();
        w.volatile
            .iter()
            .filter(|a| self.get(a.id()).is_some_and(|c| Asset::ptr_eq(&c, a)))
            .fold((0, 0), |(n, b), a| (n + 1, b + a.size()))
    }

    /// When the oldest volatile copy still waiting for its commit was published (None if none
    /// waits): what a commit deadline is measured from.
    pub fn volatile_since(&self) -> Option<Instant> {
        self.lock().volatile_since
    }

    /// Makes every volatile copy published so far durable: one sync for their data, then their
    /// records (those still current: a copy deleted or replaced since is not journaled, so it
    /// cannot come back) in journal batches, synced. Returns how many were journaled.
    pub fn commit_volatile(&self, drv: &mut Driver) -> Result<usize> {
        let snapshot: Vec<Asset> = self.lock().volatile.clone();
        let snapshot_at = Instant::now();
        if snapshot.is_empty() {
            let mut w = self.lock();
            self.check_writable(&w)?;
            self.sync_dropped_locked(drv, &mut w)?;
            return Ok(0);
        }
        // Their data writes completed before they were published: this sync covers them.
        drv.sync(self.fd())?;
        let mut w = self.lock();
        self.check_writable(&w)?;
        let in_snapshot = |v: &Asset| snapshot.iter().any(|a| Asset::ptr_eq(v, a));
        // Still volatile (a checkpoint since made them durable otherwise) and still current.
        let recs: Vec<Record> = w
            .volatile
            .iter()
            .filter(|v| in_snapshot(v))
            .filter(|v| self.get(v.id()).is_some_and(|c| Asset::ptr_eq(&c, v)))
            .map(|v| Record::Put(v.to_record()))
            .collect();
        w.volatile.retain(|v| !in_snapshot(v));
        // Those published during the sync wait for the next commit (published after the
        // snapshot: not older than it). Lazily dropped ones are synced by the journal batch.
        w.volatile_since = (!w.volatile.is_empty()).then_some(snapshot_at);
        if recs.is_empty() {
            self.sync_dropped_locked(drv, &mut w)?;
        }
        // Batches of at most a quarter of the journal (a batch must fit in one lap).
        let max = self.sb.journal_bytes / 4;
        let mut start = 0;
        while start < recs.len() {
            let mut end = start + 1;
            while end < recs.len() && batch_len(&recs[start..=end]) <= max {
                end += 1;
            }
            self.commit(drv, &mut w, &recs[start..end], 0)?;
            start = end;
        }
        Ok(recs.len())
    }
}
