//! The embedded coordination store: one manager, in-process, nothing to install.
//!
//! State lives in memory (a `BTreeMap` of keys, the leases) and durably in the manager's data
//! directory:
//! - `coord.log`: append-only, one record per committed write (a whole transaction, a lease
//!   granted, a lease revoked or expired with the deletes of its keys). A record is
//!   `len: u32 LE | crc32c(len bytes): u32 LE | crc32c(payload): u32 LE | payload` (its layout
//!   is in `codec.rs`), and is `sync_data`'d before the call returns: a write acknowledged is
//!   durable. Each record carries a sequence number (+1 per record) and the revision after it.
//! - `coord.snap`: the whole state as one record of the same framing, written to a temp file,
//!   synced, renamed over the old one, then the directory synced. It says which record it includes
//!   up to, so the log is emptied after it is durable and a crash in between replays nothing twice.
//! - `coord.lock`: `flock`ed (`File::try_lock`) while a store is open, so two managers never open
//!   the same directory; the kernel drops the lock when the process dies.
//!
//! Opening reads the snapshot, then replays the log. A damaged last record is a write that never
//! returned (the crash tore it), so it is cut off; a damaged record followed by anything but zeros
//! is damage to acknowledged writes, and opening fails naming the file and offset. The header has
//! its own checksum so a flipped length cannot pass for a torn tail.
//!
//! Leases are persisted as (id, ttl) but not their deadlines: on open every lease's deadline
//! restarts from the clock's `now` plus its TTL. A restarted manager therefore gives nodes a full
//! TTL to renew instead of dropping them all at once for the time it was down; etcd does the same
//! when a new leader takes over (it extends every lease).
//!
//! Leases expire when the store is next called: every call first revokes the leases whose deadline
//! has passed on the [`Clock`] it was opened with (each revocation is one write, as in etcd).
//!
//! A write whose record fails to reach the disk leaves memory ahead of the log, so the store
//! refuses every later call ([`StoreError::Failed`]); reopening replays what is durable. As with
//! etcd, an error from a write means its outcome is unknown.

mod codec;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    Clock, CoordStore, KeyValue, LeaseId, Result, StoreError, Txn, TxnOp, TxnOpResponse,
    TxnResponse, REQUEST_MAX,
};

/// The log's file name in the store's directory.
pub const LOG_FILE: &str = "coord.log";
/// The snapshot's file name in the store's directory.
pub const SNAPSHOT_FILE: &str = "coord.snap";
/// The lock file's name in the store's directory.
pub const LOCK_FILE: &str = "coord.lock";
const SNAPSHOT_TMP: &str = "coord.snap.tmp";
const HEADER: usize = 12;
/// A record longer than this is damage, not data: a record holds one request, at most
/// [`REQUEST_MAX`] bytes of keys and values, plus their lengths and the revisions.
const RECORD_MAX: usize = 2 * REQUEST_MAX + (1 << 20);
/// What a key or a lease costs in the live-size estimate beyond its bytes (revisions, framing).
const KEY_OVERHEAD: u64 = 64;

/// When the log is folded into a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Compact when the log is larger than this many times the live data...
    pub compact_factor: u64,
    /// ...and larger than this many bytes (a small store does not bother).
    pub compact_min_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            compact_factor: 4,
            compact_min_bytes: 1 << 20,
        }
    }
}

/// One change to the state, as logged; replay applies the same changes in the same order.
#[derive(Debug, Clone)]
enum Effect {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: Vec<u8>,
    },
    Grant {
        id: LeaseId,
        ttl: i64,
    },
    /// The lease is gone; the deletes of its keys precede it in the same record.
    Revoke {
        id: LeaseId,
    },
}

impl Effect {
    fn changes_keys(&self) -> bool {
        matches!(self, Effect::Put { .. } | Effect::Delete { .. })
    }
}

#[derive(Debug)]
struct Record {
    seq: u64,
    /// The store's revision after this record.
    revision: i64,
    effects: Vec<Effect>,
}

#[derive(Debug)]
struct Snapshot {
    /// The last log record the snapshot includes.
    seq: u64,
    revision: i64,
    next_lease: i64,
    kvs: Vec<KeyValue>,
    /// (id, ttl in seconds).
    leases: Vec<(LeaseId, i64)>,
}

#[derive(Debug)]
struct Lease {
    ttl: i64,
    deadline: Duration,
    keys: BTreeSet<Vec<u8>>,
}

/// The in-memory state; the live path and replay change it only through [`State::apply`].
#[derive(Debug)]
struct State {
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    leases: BTreeMap<LeaseId, Lease>,
    revision: i64,
    next_lease: i64,
    /// An estimate of the live data's size, for the compaction threshold.
    live_bytes: u64,
}

fn deadline(now: Duration, ttl: i64) -> Duration {
    now + Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}

fn kv_size(kv: &KeyValue) -> u64 {
    (kv.key.len() + kv.value.len()) as u64 + KEY_OVERHEAD
}

impl State {
    fn new() -> Self {
        State {
            kvs: BTreeMap::new(),
            leases: BTreeMap::new(),
            revision: 1,
            next_lease: 1,
            live_bytes: 0,
        }
    }

    fn range(&self, prefix: &[u8]) -> Vec<KeyValue> {
        self.kvs
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    fn detach(&mut self, key: &[u8], lease: Option<LeaseId>) {
        if let Some(l) = lease.and_then(|id| self.leases.get_mut(&id)) {
            l.keys.remove(key);
        }
    }

    /// Applies one change made at revision `rev` (puts take it as their `mod_revision`); `now`
    /// starts a granted lease's TTL. Errs (with what is wrong) only on a change that cannot
    /// follow the state, which the live path rules out beforehand, so replay reports it as damage.
    fn apply(
        &mut self,
        effect: &Effect,
        rev: i64,
        now: Duration,
    ) -> std::result::Result<(), String> {
        match effect {
            Effect::Put { key, value, lease } => {
                if let Some(id) = lease {
                    let l = self
                        .leases
                        .get_mut(id)
                        .ok_or_else(|| format!("put attaches to unknown lease {id:?}"))?;
                    l.keys.insert(key.clone());
                }
                let (create_revision, version, old_lease) = match self.kvs.get(key) {
                    Some(old) => {
                        self.live_bytes = self.live_bytes.saturating_sub(kv_size(old));
                        (old.create_revision, old.version + 1, old.lease)
                    }
                    None => (rev, 1, None),
                };
                if old_lease != *lease {
                    self.detach(key, old_lease);
                }
                let kv = KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision,
                    mod_revision: rev,
                    version,
                    lease: *lease,
                };
                self.live_bytes += kv_size(&kv);
                self.kvs.insert(key.clone(), kv);
            }
            Effect::Delete { key } => {
                let old = self
                    .kvs
                    .remove(key)
                    .ok_or_else(|| "delete of a missing key".to_string())?;
                self.live_bytes = self.live_bytes.saturating_sub(kv_size(&old));
                self.detach(key, old.lease);
            }
            Effect::Grant { id, ttl } => {
                if *ttl < 1 || self.leases.contains_key(id) {
                    return Err(format!("grant of lease {id:?} (ttl {ttl}) cannot follow"));
                }
                let l = Lease {
                    ttl: *ttl,
                    deadline: deadline(now, *ttl),
                    keys: BTreeSet::new(),
                };
                self.leases.insert(*id, l);
                self.next_lease = self.next_lease.max(id.0 + 1);
                self.live_bytes += KEY_OVERHEAD;
            }
            Effect::Revoke { id } => {
                let l = self
                    .leases
                    .remove(id)
                    .ok_or_else(|| format!("revoke of unknown lease {id:?}"))?;
                if !l.keys.is_empty() {
                    return Err(format!("lease {id:?} revoked with keys attached"));
                }
                self.live_bytes = self.live_bytes.saturating_sub(KEY_OVERHEAD);
            }
        }
        Ok(())
    }
}

/// See the module doc.
pub struct EmbeddedStore {
    dir: PathBuf,
    clock: Box<dyn Clock>,
    options: Options,
    state: State,
    /// The last record written (or included in the snapshot).
    seq: u64,
    log: File,
    log_len: u64,
    failed: bool,
    /// Held (locked) for as long as the store is open.
    _lock: File,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("dir", &self.dir)
            .field("revision", &self.state.revision)
            .field("keys", &self.state.kvs.len())
            .field("leases", &self.state.leases.len())
            .field("seq", &self.seq)
            .field("log_len", &self.log_len)
            .finish()
    }
}

fn io_err<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        what,
        source,
    }
}

fn corrupt(path: &Path, offset: u64, what: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        offset,
        what: what.into(),
    }
}

/// Frames `payload` as one record (see the module doc).
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc32c::crc32c(&len).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

/// The records `scan` found (offset, payload) and where the intact part of the file ends.
type Scanned<'a> = (Vec<(u64, &'a [u8])>, usize);

/// Splits `bytes` into records: their offsets and payloads, and where the intact part ends (a
/// torn tail starts there). Damage before the tail is an error naming `path` and the offset.
fn scan<'a>(path: &Path, bytes: &'a [u8]) -> Result<Scanned<'a>> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let tail_is_zeros = || rest.iter().all(|&b| b == 0);
        if rest.len() < HEADER {
            break; // a torn header
        }
        let len = le32(rest) as usize;
        if crc32c::crc32c(&rest[..4]) != le32(&rest[4..]) || len == 0 || len > RECORD_MAX {
            if tail_is_zeros() {
                break; // space the file system extended, never written
            }
            return Err(corrupt(path, at as u64, "record header checksum mismatch"));
        }
        if rest.len() < HEADER + len {
            break; // a torn payload (the header is intact, so the length is genuine)
        }
        let payload = &rest[HEADER..HEADER + len];
        if crc32c::crc32c(payload) != le32(&rest[8..]) {
            if rest.len() == HEADER + len {
                break; // the last record, torn in place
            }
            return Err(corrupt(path, at as u64, "record payload checksum mismatch"));
        }
        records.push((at as u64, payload));
        at += HEADER + len;
    }
    Ok((records, at))
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "sync directory"))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` with the default [`Options`].
    pub fn open(dir: &Path, clock: Box<dyn Clock>) -> Result<Self> {
        Self::open_with(dir, clock, Options::default())
    }

    /// Opens (creating if needed) the store in `dir`: locks it, reads the snapshot, replays the
    /// log and cuts off a torn tail. Leases get a full TTL from `clock.now()`.
    pub fn open_with(dir: &Path, clock: Box<dyn Clock>, options: Options) -> Result<Self> {
        fs::create_dir_all(dir).map_err(io_err(dir, "create directory"))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path, "open"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Locked { path: lock_path })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path, "lock")(e)),
        }
        let now = clock.now();
        let mut state = State::new();
        let mut seq = 0;

        let tmp = dir.join(SNAPSHOT_TMP);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(io_err(&tmp, "remove"))?;
        }
        let snap_path = dir.join(SNAPSHOT_FILE);
        if snap_path.exists() {
            let bytes = fs::read(&snap_path).map_err(io_err(&snap_path, "read"))?;
            let (records, end) = scan(&snap_path, &bytes)?;
            let [(_, payload)] = records.as_slice() else {
                return Err(corrupt(&snap_path, 0, "not exactly one record"));
            };
            if end != bytes.len() {
                return Err(corrupt(&snap_path, end as u64, "torn snapshot"));
            }
            let snap = codec::decode_snapshot(payload)
                .map_err(|e| corrupt(&snap_path, 0, format!("snapshot does not decode: {e}")))?;
            for (id, ttl) in &snap.leases {
                state
                    .apply(&Effect::Grant { id: *id, ttl: *ttl }, 0, now)
                    .map_err(|e| corrupt(&snap_path, 0, e))?;
            }
            for kv in snap.kvs {
                if let Some(l) = kv.lease.and_then(|id| state.leases.get_mut(&id)) {
                    l.keys.insert(kv.key.clone());
                } else if kv.lease.is_some() {
                    return Err(corrupt(&snap_path, 0, "a key attached to an unknown lease"));
                }
                state.live_bytes += kv_size(&kv);
                state.kvs.insert(kv.key.clone(), kv);
            }
            state.revision = snap.revision;
            state.next_lease = state.next_lease.max(snap.next_lease);
            seq = snap.seq;
        }

        let log_path = dir.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&log_path)
            .map_err(io_err(&log_path, "open"))?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes)
            .map_err(io_err(&log_path, "read"))?;
        let (records, end) = scan(&log_path, &bytes)?;
        for (offset, payload) in records {
            let rec = codec::decode_record(payload)
                .map_err(|e| corrupt(&log_path, offset, format!("record does not decode: {e}")))?;
            if rec.seq <= seq {
                continue; // already in the snapshot
            }
            if rec.seq != seq + 1 {
                let what = format!("record {} follows record {seq}", rec.seq);
                return Err(corrupt(&log_path, offset, what));
            }
            let bumps = rec.effects.iter().any(Effect::changes_keys);
            if rec.revision != state.revision + i64::from(bumps) {
                let what = format!(
                    "revision {} follows revision {}",
                    rec.revision, state.revision
                );
                return Err(corrupt(&log_path, offset, what));
            }
            for e in &rec.effects {
                state
                    .apply(e, rec.revision, now)
                    .map_err(|what| corrupt(&log_path, offset, what))?;
            }
            state.revision = rec.revision;
            seq = rec.seq;
        }
        if end < bytes.len() {
            log.set_len(end as u64)
                .and_then(|()| log.sync_all())
                .map_err(io_err(&log_path, "truncate the torn tail"))?;
        }
        sync_dir(dir)?;
        Ok(EmbeddedStore {
            dir: dir.to_path_buf(),
            clock,
            options,
            state,
            seq,
            log,
            log_len: end as u64,
            failed: false,
            _lock: lock,
        })
    }

    /// The size of the log in bytes (what compaction keeps bounded).
    pub fn log_len(&self) -> u64 {
        self.log_len
    }

    /// Revokes every lease whose deadline has passed (every call does this first).
    pub fn expire_leases(&mut self) -> Result<()> {
        self.usable()?;
        self.expire()
    }

    /// Writes the whole state as the snapshot and empties the log.
    pub fn compact(&mut self) -> Result<()> {
        self.usable()?;
        let snap = Snapshot {
            seq: self.seq,
            revision: self.state.revision,
            next_lease: self.state.next_lease,
            kvs: self.state.kvs.values().cloned().collect(),
            leases: self
                .state
                .leases
                .iter()
                .map(|(id, l)| (*id, l.ttl))
                .collect(),
        };
        let tmp = self.dir.join(SNAPSHOT_TMP);
        let path = self.dir.join(SNAPSHOT_FILE);
        let bytes = frame(&codec::encode_snapshot(&snap));
        let mut f = File::create(&tmp).map_err(io_err(&tmp, "create"))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_err(&tmp, "write"))?;
        fs::rename(&tmp, &path).map_err(io_err(&path, "rename into place"))?;
        sync_dir(&self.dir)?;
        // The snapshot is durable and names the last record it holds; emptying the log can no
        // longer lose anything, and a crash before it replays nothing twice.
        let log_path = self.dir.join(LOG_FILE);
        if let Err(e) = self.log.set_len(0).and_then(|()| self.log.sync_all()) {
            self.failed = true;
            return Err(io_err(&log_path, "empty after a snapshot")(e));
        }
        self.log_len = 0;
        Ok(())
    }

    fn usable(&self) -> Result<()> {
        if self.failed {
            Err(StoreError::Failed)
        } else {
            Ok(())
        }
    }

    fn expire(&mut self) -> Result<()> {
        let now = self.clock.now();
        let expired: Vec<LeaseId> = (self.state.leases.iter())
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.revoke_now(id)?;
        }
        Ok(())
    }

    fn revoke_now(&mut self, id: LeaseId) -> Result<()> {
        let keys: Vec<Vec<u8>> = (self.state.leases.get(&id))
            .map(|l| l.keys.iter().cloned().collect())
            .unwrap_or_default();
        let mut effects: Vec<Effect> = keys.into_iter().map(|key| Effect::Delete { key }).collect();
        effects.push(Effect::Revoke { id });
        self.apply_and_log(effects)
    }

    /// Applies `effects` at the next revision (taken only if they change keys), then logs them
    /// as one record and syncs it.
    fn apply_and_log(&mut self, effects: Vec<Effect>) -> Result<()> {
        let rev = self.state.revision + 1;
        let now = self.clock.now();
        for e in &effects {
            self.apply_live(e, rev, now)?;
        }
        self.log_effects(effects, rev)
    }

    fn apply_live(&mut self, effect: &Effect, rev: i64, now: Duration) -> Result<()> {
        self.state.apply(effect, rev, now).map_err(|what| {
            // The callers check beforehand; reaching this is a bug, and memory may be ahead.
            self.failed = true;
            StoreError::InvalidTxn(what)
        })
    }

    /// Logs effects already applied at revision `rev`.
    fn log_effects(&mut self, effects: Vec<Effect>, rev: i64) -> Result<()> {
        if effects.is_empty() {
            return Ok(());
        }
        if effects.iter().any(Effect::changes_keys) {
            self.state.revision = rev;
        }
        let rec = Record {
            seq: self.seq + 1,
            revision: self.state.revision,
            effects,
        };
        let bytes = frame(&codec::encode_record(&rec));
        if let Err(e) = self
            .log
            .write_all(&bytes)
            .and_then(|()| self.log.sync_data())
        {
            self.failed = true;
            return Err(io_err(&self.dir.join(LOG_FILE), "append a record")(e));
        }
        self.seq += 1;
        self.log_len += bytes.len() as u64;
        let live = self.state.live_bytes.max(1);
        if self.log_len > self.options.compact_min_bytes
            && self.log_len > self.options.compact_factor.saturating_mul(live)
        {
            self.compact()?;
        }
        Ok(())
    }
}

impl CoordStore for EmbeddedStore {
    fn txn(&mut self, txn: Txn) -> Result<TxnResponse> {
        self.usable()?;
        self.expire()?;
        txn.validate()?;
        let succeeded = (txn.compares.iter()).all(|c| c.holds(self.state.kvs.get(&c.key)));
        let ops = if succeeded { txn.success } else { txn.failure };
        for op in &ops {
            if let TxnOp::Put {
                lease: Some(id), ..
            } = op
            {
                if !self.state.leases.contains_key(id) {
                    return Err(StoreError::LeaseNotFound(*id));
                }
            }
        }
        let rev = self.state.revision + 1;
        let now = self.clock.now();
        let mut effects = Vec::new();
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op {
                TxnOp::Get { key } => TxnOpResponse::Get(self.state.kvs.get(&key).cloned()),
                TxnOp::Range { prefix } => TxnOpResponse::Range(self.state.range(&prefix)),
                TxnOp::Put { key, value, lease } => {
                    let e = Effect::Put { key, value, lease };
                    self.apply_live(&e, rev, now)?;
                    effects.push(e);
                    TxnOpResponse::Put
                }
                TxnOp::Delete { key } => {
                    let keys = if self.state.kvs.contains_key(&key) {
                        vec![key]
                    } else {
                        Vec::new()
                    };
                    TxnOpResponse::Delete(self.delete_keys(keys, rev, now, &mut effects)?)
                }
                TxnOp::DeletePrefix { prefix } => {
                    let keys = (self.state.range(&prefix).into_iter())
                        .map(|kv| kv.key)
                        .collect();
                    TxnOpResponse::Delete(self.delete_keys(keys, rev, now, &mut effects)?)
                }
            };
            responses.push(response);
        }
        self.log_effects(effects, rev)?;
        Ok(TxnResponse {
            succeeded,
            revision: self.state.revision,
            responses,
        })
    }

    fn revision(&mut self) -> Result<i64> {
        self.usable()?;
        self.expire()?;
        Ok(self.state.revision)
    }

    fn grant_lease(&mut self, ttl: i64) -> Result<LeaseId> {
        self.usable()?;
        self.expire()?;
        if ttl < 1 {
            return Err(StoreError::InvalidTtl(ttl));
        }
        let id = LeaseId(self.state.next_lease);
        self.apply_and_log(vec![Effect::Grant { id, ttl }])?;
        Ok(id)
    }

    fn keep_alive(&mut self, id: LeaseId) -> Result<i64> {
        self.usable()?;
        self.expire()?;
        let now = self.clock.now();
        let l = (self.state.leases.get_mut(&id)).ok_or(StoreError::LeaseNotFound(id))?;
        l.deadline = deadline(now, l.ttl);
        Ok(l.ttl)
    }

    fn revoke(&mut self, id: LeaseId) -> Result<()> {
        self.usable()?;
        self.expire()?;
        if !self.state.leases.contains_key(&id) {
            return Err(StoreError::LeaseNotFound(id));
        }
        self.revoke_now(id)
    }
}

impl EmbeddedStore {
    fn delete_keys(
        &mut self,
        keys: Vec<Vec<u8>>,
        rev: i64,
        now: Duration,
        effects: &mut Vec<Effect>,
    ) -> Result<u64> {
        let n = keys.len() as u64;
        for key in keys {
            let e = Effect::Delete { key };
            self.apply_live(&e, rev, now)?;
            effects.push(e);
        }
        Ok(n)
    }
}
