//! The coordination store: where the manager keeps its cluster state (membership, leadership,
//! cluster config, tombstones of deleted assets, later desired placements).
//!
//! One interface, [`CoordStore`], modeled on etcd v3's KV and lease API so that its two
//! implementations share semantics and the etcd one is a thin translation:
//! - [`embedded::EmbeddedStore`] (the default): one manager, in-process, kept durably in a log
//!   and a snapshot under the manager's data directory.
//! - [`etcd::EtcdStore`]: the same calls on an etcd cluster (through `etcd-client`), for several
//!   managers: liveness by leases, one active manager by election, every leader write fenced by a
//!   [`Txn`] comparing the leader key.
//!
//! Semantics, as etcd's:
//! - Keys and values are bytes. The store has one `revision`; every write (a `put`, a `delete`
//!   that removes something, a transaction that changes anything, a lease revoked or expired with
//!   keys attached) bumps it by exactly one, whatever the number of keys it changes. A write that
//!   changes nothing (deleting a missing key) does not bump it. An empty store is at revision 1,
//!   so the first write is revision 2.
//! - Each key has `create_revision` (the write that created it since it last did not exist),
//!   `mod_revision` (its last write) and `version` (1 at creation, +1 per put; a delete resets the
//!   key, so it is recreated at version 1).
//! - A transaction evaluates all its compares against the state before it, then runs `success` or
//!   `failure` in order; reads in it see its earlier writes. A transaction may not write one key
//!   twice nor put a key one of its deletes covers ([`StoreError::InvalidTxn`], as etcd's
//!   "duplicate key given in txn request").
//! - Keys are not empty (a `Range` or `DeletePrefix` with an empty prefix covers every key); a
//!   transaction carries at most [`REQUEST_MAX`] bytes of keys and values
//!   ([`StoreError::TooLarge`], etcd's "request is too large").
//! - A compare on a missing key compares against zeros (`version`, `create_revision`,
//!   `mod_revision` = 0); a `Value` compare on a missing key is always false.
//! - A lease has a TTL in seconds; a key put with it vanishes when the lease is revoked or expires
//!   (`keep_alive` restarts the TTL). Granting or renewing a lease is not a write (no revision).
//!
//! Watches are not part of the interface: the manager polls, reading a prefix and the revision it
//! reflects in one [`Txn`] with a [`TxnOp::Range`] (the response's `revision`), and compares that
//! revision with the one it acted on.
//!
//! Time never comes from the wall clock inside a store: the embedded store is given a [`Clock`]
//! (tests pass a [`ManualClock`]), etcd keeps its own.

pub mod embedded;
pub mod etcd;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most bytes of keys and values one transaction carries: etcd's default
/// `--max-request-bytes` (1.5 MiB), so that what the embedded store accepts etcd accepts too.
pub const REQUEST_MAX: usize = 1536 * 1024;

/// A lease id, as etcd's (a non-zero 64-bit integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaseId(pub i64);

/// One key as stored, with its revisions (etcd's `mvccpb.KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// The revision of the write that created the key (since it last did not exist).
    pub create_revision: i64,
    /// The revision of the key's last write.
    pub mod_revision: i64,
    /// 1 at creation, +1 per put.
    pub version: i64,
    /// The lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// How a [`Compare`] relates the key's field to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// Which field of a key a [`Compare`] looks at, and the value it is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    CreateRevision(i64),
    ModRevision(i64),
    /// Bytes, compared lexicographically; always false on a missing key.
    Value(Vec<u8>),
}

/// One condition of a [`Txn`] on one key (etcd's `Compare`, without key ranges).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

impl Compare {
    pub fn new(key: impl Into<Vec<u8>>, op: CompareOp, target: CompareTarget) -> Self {
        Compare {
            key: key.into(),
            op,
            target,
        }
    }

    /// True when `key` does not exist (etcd's `version = 0` idiom, used to create once).
    pub fn missing(key: impl Into<Vec<u8>>) -> Self {
        Compare::new(key, CompareOp::Equal, CompareTarget::Version(0))
    }

    /// Whether the condition holds for `kv` (`None`: the key is missing).
    pub fn holds(&self, kv: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering as O;
        let ord = match (&self.target, kv) {
            (CompareTarget::Value(_), None) => return false,
            (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
            (CompareTarget::Version(t), kv) => kv.map_or(0, |kv| kv.version).cmp(t),
            (CompareTarget::CreateRevision(t), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(t),
            (CompareTarget::ModRevision(t), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(t),
        };
        match self.op {
            CompareOp::Equal => ord == O::Equal,
            CompareOp::NotEqual => ord != O::Equal,
            CompareOp::Less => ord == O::Less,
            CompareOp::Greater => ord == O::Greater,
        }
    }
}

/// One operation of a [`Txn`] branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Get {
        key: Vec<u8>,
    },
    /// Every key starting with `prefix` (all keys for an empty prefix), sorted by key.
    Range {
        prefix: Vec<u8>,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: Vec<u8>,
    },
    DeletePrefix {
        prefix: Vec<u8>,
    },
}

/// What one [`TxnOp`] answered, in the same position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOpResponse {
    Get(Option<KeyValue>),
    Range(Vec<KeyValue>),
    Put,
    /// How many keys the delete removed.
    Delete(u64),
}

/// An etcd transaction: if every compare holds, run `success`, else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    /// Refuses what etcd refuses before looking at the state: an empty key, a request over
    /// [`REQUEST_MAX`], a branch that writes one key twice or puts a key one of its deletes covers.
    pub fn validate(&self) -> Result<()> {
        let mut bytes = 0usize;
        for c in &self.compares {
            bytes += c.key.len()
                + if let CompareTarget::Value(v) = &c.target {
                    v.len()
                } else {
                    0
                };
            if c.key.is_empty() {
                return Err(StoreError::InvalidTxn("a compare on an empty key".into()));
            }
        }
        for ops in [&self.success, &self.failure] {
            bytes += check_branch(ops)?;
        }
        if bytes > REQUEST_MAX {
            return Err(StoreError::TooLarge {
                bytes,
                max: REQUEST_MAX,
            });
        }
        Ok(())
    }
}

/// Checks one branch (see [`Txn::validate`]); returns the bytes of keys and values it carries.
fn check_branch(ops: &[TxnOp]) -> Result<usize> {
    let mut bytes = 0;
    let mut puts = BTreeSet::new();
    for op in ops {
        let key = match op {
            TxnOp::Get { key } | TxnOp::Delete { key } => key,
            TxnOp::Put { key, value, .. } => {
                bytes += value.len();
                if !puts.insert(key.as_slice()) {
                    return Err(StoreError::InvalidTxn("a key is put twice".into()));
                }
                key
            }
            TxnOp::Range { prefix } | TxnOp::DeletePrefix { prefix } => {
                bytes += prefix.len();
                continue;
            }
        };
        if key.is_empty() {
            return Err(StoreError::InvalidTxn("an empty key".into()));
        }
        bytes += key.len();
    }
    for op in ops {
        let overlaps = match op {
            TxnOp::Delete { key } => puts.contains(key.as_slice()),
            TxnOp::DeletePrefix { prefix } => puts.iter().any(|k| k.starts_with(prefix)),
            _ => false,
        };
        if overlaps {
            return Err(StoreError::InvalidTxn(
                "a key is both put and deleted".into(),
            ));
        }
    }
    Ok(bytes)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResponse {
    /// Whether every compare held (and `success` ran).
    pub succeeded: bool,
    /// The store's revision after the transaction (the one its writes have, if any).
    pub revision: i64,
    pub responses: Vec<TxnOpResponse>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("lease {0:?} not found (never granted, expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("invalid lease ttl {0}: at least 1 second")]
    InvalidTtl(i64),
    #[error("invalid transaction: {0}")]
    InvalidTxn(String),
    #[error("request too large: {bytes} bytes of keys and values, at most {max}")]
    TooLarge { bytes: usize, max: usize },
    #[error("{}: another manager holds this coordination store (lock file is locked)", path.display())]
    Locked { path: PathBuf },
    #[error("{}: damaged at offset {offset}: {what}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("{}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error(
        "cannot reach etcd at {endpoints}: {detail}; is etcd running there? (start it, or give the manager its client URL, http://HOST:PORT)"
    )]
    Unavailable { endpoints: String, detail: String },
    #[error(
        "an earlier write failed to reach the disk; the store refuses further use until reopened"
    )]
    Failed,
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The coordination store's interface (see the module doc for the semantics).
///
/// Synchronous and object-safe; `&mut self` everywhere since any call may first expire leases.
/// The required methods are the transaction and the lease calls; the single-key helpers are
/// one-operation transactions.
pub trait CoordStore: Send {
    /// Runs a transaction atomically; its writes are durable when it returns.
    fn txn(&mut self, txn: Txn) -> Result<TxnResponse>;
    /// The store's current revision.
    fn revision(&mut self) -> Result<i64>;
    /// Grants a lease of `ttl` seconds.
    fn grant_lease(&mut self, ttl: i64) -> Result<LeaseId>;
    /// Restarts the lease's TTL; returns the TTL (seconds) it now has.
    fn keep_alive(&mut self, id: LeaseId) -> Result<i64>;
    /// Revokes the lease and deletes its keys (one revision if it had any).
    fn revoke(&mut self, id: LeaseId) -> Result<()>;

    fn get(&mut self, key: &[u8]) -> Result<Option<KeyValue>> {
        match one(self, TxnOp::Get { key: key.to_vec() })?.1 {
            TxnOpResponse::Get(kv) => Ok(kv),
            _ => Ok(None),
        }
    }

    /// Every key starting with `prefix`, sorted by key.
    fn range(&mut self, prefix: &[u8]) -> Result<Vec<KeyValue>> {
        match one(
            self,
            TxnOp::Range {
                prefix: prefix.to_vec(),
            },
        )?
        .1
        {
            TxnOpResponse::Range(kvs) => Ok(kvs),
            _ => Ok(Vec::new()),
        }
    }

    /// Puts `value` at `key`; returns the write's revision.
    fn put(&mut self, key: &[u8], value: &[u8], lease: Option<LeaseId>) -> Result<i64> {
        let op = TxnOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
        };
        Ok(one(self, op)?.0)
    }

    /// Deletes `key`; returns whether it existed.
    fn delete(&mut self, key: &[u8]) -> Result<bool> {
        match one(self, TxnOp::Delete { key: key.to_vec() })?.1 {
            TxnOpResponse::Delete(n) => Ok(n > 0),
            _ => Ok(false),
        }
    }

    /// Deletes every key starting with `prefix`; returns how many.
    fn delete_prefix(&mut self, prefix: &[u8]) -> Result<u64> {
        let op = TxnOp::DeletePrefix {
            prefix: prefix.to_vec(),
        };
        match one(self, op)?.1 {
            TxnOpResponse::Delete(n) => Ok(n),
            _ => Ok(0),
        }
    }
}

/// Runs `op` as an unconditional transaction; returns the revision after it and its response.
fn one<S: CoordStore + ?Sized>(store: &mut S, op: TxnOp) -> Result<(i64, TxnOpResponse)> {
    let resp = store.txn(Txn {
        compares: Vec::new(),
        success: vec![op],
        failure: Vec::new(),
    })?;
    let r = resp
        .responses
        .into_iter()
        .next()
        .unwrap_or(TxnOpResponse::Put);
    Ok((resp.revision, r))
}

/// Where a store reads the time from: a monotonic duration since an arbitrary origin.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
}

/// The process's monotonic clock (what `reel manager` passes).
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told (tests); clones share the time.
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests;
