//! Copies between the tiers, and the lock that keeps them consistent with deletes.
//!
//! [`copy_asset`] copies one asset version from one volume to the other, chunk by chunk: each
//! chunk read from the source is checked against its stored crc32c before it is written through
//! an [`crate::Ingest`], under a bandwidth [`Budget`]; it is published only if, under
//! [`TierLock`], the caller's check says the source still holds that version. The migration
//! scheduler ([`super::scheduler`]) uses it for promotions and write-backs.
//!
//! A delete takes the same lock and removes the secondary copy before the primary one, so a
//! copy can never resurrect a deleted asset, and a crash between the two leaves the asset on the
//! primary only (the delete was not acknowledged), never a stale copy on the secondary alone.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Shared;
use crate::catalog::Asset;
use crate::driver::Driver;
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

/// Counters of the migration scheduler (single writer).
#[derive(Default)]
pub struct MigrationStats {
    pub promotions: std::sync::atomic::AtomicU64,
    pub write_backs: std::sync::atomic::AtomicU64,
    pub demotions: std::sync::atomic::AtomicU64,
    pub evictions: std::sync::atomic::AtomicU64,
    pub failures: std::sync::atomic::AtomicU64,
    pub bytes_copied: std::sync::atomic::AtomicU64,
}

/// A token bucket over wall time: `take(n)` sleeps until `n` bytes fit the budget.
pub(crate) struct Budget {
    bytes_per_s: u64,
    tokens: f64,
    last: Instant,
}

impl Budget {
    pub(crate) fn new(bytes_per_s: u64) -> Budget {
        Budget {
            bytes_per_s,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    pub(crate) fn take(&mut self, n: u64, stop: &dyn Fn() -> bool) {
        if self.bytes_per_s == 0 {
            return;
        }
        // At most 50 ms of burst: a copy that starts after an idle spell must not hit the
        // device at full speed for a second (the migration-impact bench saw that in p99).
        let cap = self.bytes_per_s as f64 / 20.0;
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

/// Copies asset version `a` from `from` to `to`. Returns `Ok(false)` when the copy is no longer
/// wanted and was abandoned (nothing became visible): `publish` (called under the tier lock) says
/// no, or `dest_ok` (called under the destination volume's write lock with the destination's
/// current version, so no upload can commit in between) says no.
#[allow(clippy::too_many_arguments)]
pub(crate) fn copy_asset(
    shared: &Shared,
    from: &Volume,
    to: &Volume,
    drv: &mut Driver,
    a: &Asset,
    budget: &mut Budget,
    stop: &dyn Fn() -> bool,
    publish: &dyn Fn() -> bool,
    dest_ok: &dyn Fn(Option<&Asset>) -> bool,
) -> Result<bool, EngineError> {
    let opts = PutOptions {
        content_type: a.content_type().map(str::to_string),
        size: Some(a.size()),
        depth: None,
    };
    let mut ing = to.ingest(drv, a.id(), &opts)?;
    for c in 0..a.chunk_count() as u64 {
        if stop() {
            ing.abort(drv);
            return Ok(false);
        }
        let data = match from.read_chunk_verified(drv, a, c) {
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
    if !publish() {
        ing.abort(drv);
        return Ok(false);
    }
    Ok(ing.finish_if(drv, dest_ok)?.is_some())
}
