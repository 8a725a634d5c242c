//! Write-back: every asset on the primary gets a copy on the secondary, in the background.
//!
//! New assets land on the primary (uploads are answered once the primary copy is durable). This
//! thread copies them to the secondary chunk by chunk — each chunk read from the primary is
//! checked against its stored crc32c before it is written — under a bandwidth budget, so a later
//! demotion of a clean copy is only a catalog change. Which copies are missing is derived from the
//! two catalogs (an asset is *dirty* when the secondary lacks it or holds another version), so
//! nothing about write-back needs persisting: after a restart the scan finds the same work.
//!
//! Races with deletes and replacements are closed by [`TierLock`]: a copy is published only if,
//! under the lock, the primary still holds the very version that was copied; a delete removes the
//! secondary copy first and then the primary one under the same lock. A crash between the two
//! leaves the asset on the primary only (the delete was not acknowledged), never a stale copy on
//! the secondary alone.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::Shared;
use crate::catalog::Asset;
use crate::driver::{Driver, DriverConfig};
use crate::error::EngineError;
use crate::ingest::PutOptions;
use crate::volume::Volume;

/// Serializes publishing a secondary copy against deleting an asset from both tiers.
#[derive(Default)]
pub struct TierLock(Mutex<()>);

impl TierLock {
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether the secondary holds the same version as the primary (same size and content checksum).
pub fn same_version(a: &Asset, b: &Asset) -> bool {
    a.size() == b.size() && a.checksum() == b.checksum()
}

/// Counters of the write-back thread (single writer).
#[derive(Default)]
pub struct WritebackStats {
    pub copies_done: std::sync::atomic::AtomicU64,
    pub copies_failed: std::sync::atomic::AtomicU64,
    pub bytes_copied: std::sync::atomic::AtomicU64,
    pub dirty: std::sync::atomic::AtomicU64,
}

/// A token bucket over wall time: `take(n)` sleeps until `n` bytes fit the budget.
struct Budget {
    bytes_per_s: u64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    fn new(bytes_per_s: u64) -> Budget {
        Budget {
            bytes_per_s,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    fn take(&mut self, n: u64, stop: &dyn Fn() -> bool) {
        if self.bytes_per_s == 0 {
            return;
        }
        // At most one second of burst.
        let cap = self.bytes_per_s as f64;
        loop {
            let now = Instant::now();
            self.tokens = (self.tokens
                + now.duration_since(self.last).as_secs_f64() * self.bytes_per_s as f64)
                .min(cap.max(n as f64));
            self.last = now;
            if self.tokens >= n as f64 || stop() {
                self.tokens -= n as f64;
                return;
            }
            let wait = (n as f64 - self.tokens) / self.bytes_per_s as f64;
            std::thread::sleep(Duration::from_secs_f64(wait.min(0.1)));
        }
    }
}

/// The write-back thread: scans at start and every `rescan`, and copies what `wake` names as
/// soon as it arrives.
pub(crate) fn run(shared: &Shared, wake: &Receiver<String>) {
    let Some(secondary) = shared.tiers.secondary.clone() else {
        return;
    };
    let primary = shared.tiers.primary.clone();
    let chunk = primary.chunk_size() as usize;
    let mut drv = match Driver::new(&DriverConfig {
        ring_entries: 64,
        buf_size: chunk,
        buf_count: 8,
        write_log: None,
    }) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "write-back cannot start its ring; no copies to the secondary");
            return;
        }
    };
    let stop = || shared.stop.load(std::sync::atomic::Ordering::Relaxed);
    let mut budget = Budget::new(shared.cfg.copy_bytes_per_s_max);
    let rescan = Duration::from_secs(30);
    let mut next_scan = Instant::now();
    while !stop() {
        if Instant::now() >= next_scan {
            let dirty: Vec<Asset> = primary
                .list()
                .into_iter()
                .filter(|a| !secondary.get(a.id()).is_some_and(|s| same_version(a, &s)))
                .collect();
            shared
                .writeback
                .dirty
                .store(dirty.len() as u64, std::sync::atomic::Ordering::Relaxed);
            for a in dirty {
                if stop() {
                    return;
                }
                copy_one(
                    shared,
                    &primary,
                    &secondary,
                    &mut drv,
                    &a,
                    &mut budget,
                    &stop,
                );
            }
            next_scan = Instant::now() + rescan;
        }
        match wake.recv_timeout(Duration::from_millis(200)) {
            Ok(id) => {
                if let Some(a) = primary.get(&id) {
                    if !secondary.get(&id).is_some_and(|s| same_version(&a, &s)) {
                        copy_one(
                            shared,
                            &primary,
                            &secondary,
                            &mut drv,
                            &a,
                            &mut budget,
                            &stop,
                        );
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn copy_one(
    shared: &Shared,
    primary: &Arc<Volume>,
    secondary: &Arc<Volume>,
    drv: &mut Driver,
    a: &Asset,
    budget: &mut Budget,
    stop: &dyn Fn() -> bool,
) {
    use std::sync::atomic::Ordering::Relaxed;
    match copy_asset(shared, primary, secondary, drv, a, budget, stop) {
        Ok(true) => {
            shared.writeback.copies_done.fetch_add(1, Relaxed);
            shared.writeback.bytes_copied.fetch_add(a.size(), Relaxed);
            let d = shared.writeback.dirty.load(Relaxed);
            shared.writeback.dirty.store(d.saturating_sub(1), Relaxed);
        }
        Ok(false) => {} // superseded or deleted meanwhile
        Err(e) => {
            shared.writeback.copies_failed.fetch_add(1, Relaxed);
            tracing::warn!(id = a.id(), error = %e, "copy to the secondary failed; retried at the next scan");
        }
    }
}

/// Copies one asset version to the secondary. Returns `Ok(false)` when the primary no longer
/// holds that version at publish time (the copy is abandoned, nothing becomes visible).
fn copy_asset(
    shared: &Shared,
    primary: &Volume,
    secondary: &Volume,
    drv: &mut Driver,
    a: &Asset,
    budget: &mut Budget,
    stop: &dyn Fn() -> bool,
) -> Result<bool, EngineError> {
    let opts = PutOptions {
        content_type: a.content_type().map(str::to_string),
        size: Some(a.size()),
        depth: None,
    };
    let mut ing = secondary.ingest(drv, a.id(), &opts)?;
    for c in 0..a.chunk_count() as u64 {
        if stop() {
            ing.abort(drv);
            return Ok(false);
        }
        let data = match primary.read_chunk_verified(drv, a, c) {
            Ok(d) => d,
            Err(e) => {
                ing.abort(drv);
                return Err(e);
            }
        };
        budget.take(data.len() as u64, stop);
        if let Err(e) = ing.write(drv, &data) {
            ing.abort(drv);
            return Err(e);
        }
    }
    let _g = shared.tier_lock.lock();
    let current = primary.get(a.id());
    if !current.is_some_and(|p| Asset::ptr_eq(&p, a)) {
        ing.abort(drv);
        return Ok(false);
    }
    ing.finish(drv)?;
    Ok(true)
}
