//! [`EtcdStore`]: the [`CoordStore`] over a real etcd v3 cluster, through the `etcd-client`
//! crate. Every call is one etcd RPC, translated 1:1 (a [`Txn`] is one etcd `Txn`; the single-key
//! helpers are the trait's one-operation transactions; `revision` is an empty `Txn`), except
//! `keep_alive`: two requests on one keep-alive stream (see there). `grant_lease` refuses a TTL
//! below 1 itself, as the interface does (etcd would raise it to its minimum).
//!
//! The trait is synchronous (the manager's callers are synchronous today) and `etcd-client` is
//! async, so each store keeps one private current-thread tokio runtime and blocks on it for each
//! call. One runtime per store: no runtime is shared or global, and none may be running on the
//! calling thread (`block_on` inside a runtime panics).
//!
//! etcd is the reference for the semantics; where it differs from [`super::embedded`] (lease TTLs
//! below etcd's minimum are raised to it; the request-size limit counts the encoded request, not
//! only keys and values), this store reports what etcd does.

use std::time::Duration;

use etcd_client as ec;

use super::{
    CompareOp, CompareTarget, CoordStore, KeyValue, LeaseId, Result, StoreError, Txn, TxnOp,
    TxnOpResponse, TxnResponse, REQUEST_MAX,
};

/// A [`CoordStore`] kept in etcd (see the module doc).
pub struct EtcdStore {
    runtime: tokio::runtime::Runtime,
    client: ec::Client,
    /// The endpoints, joined, for error messages.
    endpoints: String,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (e.g. `http://127.0.0.1:2379`); `timeout` bounds the
    /// connection and every request. Reads the revision once, so an unreachable etcd is an error
    /// here ([`StoreError::Unavailable`]) rather than at the first use.
    pub fn connect(endpoints: &[String], timeout: Duration) -> Result<EtcdStore> {
        let joined = endpoints.join(",");
        let unavailable = |detail: String| StoreError::Unavailable {
            endpoints: joined.clone(),
            detail,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| unavailable(format!("cannot start the client runtime: {e}")))?;
        let options = ec::ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let client = runtime
            .block_on(async {
                tokio::time::timeout(timeout, ec::Client::connect(endpoints, Some(options))).await
            })
            .map_err(|_| unavailable(format!("no answer within {timeout:?}")))?
            .map_err(|e| unavailable(e.to_string()))?;
        let mut store = EtcdStore {
            runtime,
            client,
            endpoints: joined,
        };
        store.revision()?;
        Ok(store)
    }

    /// Maps an etcd error to the store's (`txn`: the request, to size a "too large" refusal).
    fn error(&self, e: ec::Error, id: Option<LeaseId>, txn: Option<&Txn>) -> StoreError {
        if let ec::Error::LeaseKeepAliveError(msg) = &e {
            if msg.contains("lease not found") {
                return StoreError::LeaseNotFound(id.unwrap_or(LeaseId(0)));
            }
        }
        if let ec::Error::GRpcStatus(status) = &e {
            let msg = status.message();
            if msg.contains("requested lease not found") {
                return StoreError::LeaseNotFound(id.unwrap_or(LeaseId(0)));
            }
            if msg.contains("request is too large") {
                return StoreError::TooLarge {
                    bytes: txn.map_or(0, txn_bytes),
                    max: REQUEST_MAX,
                };
            }
            // gRPC's INVALID_ARGUMENT (3): an empty key, a key written twice in a txn...
            if status.code() as i32 == 3 {
                return StoreError::InvalidTxn(msg.trim_start_matches("etcdserver: ").to_string());
            }
        }
        StoreError::Unavailable {
            endpoints: self.endpoints.clone(),
            detail: e.to_string(),
        }
    }

    /// The lease a put names, if the request failed for lack of it.
    fn put_lease(txn: &Txn) -> Option<LeaseId> {
        txn.success
            .iter()
            .chain(&txn.failure)
            .find_map(|op| match op {
                TxnOp::Put { lease, .. } => *lease,
                _ => None,
            })
    }
}

/// Keys and values a transaction carries (as [`Txn::validate`] counts them).
fn txn_bytes(txn: &Txn) -> usize {
    let op_bytes = |op: &TxnOp| match op {
        TxnOp::Get { key } | TxnOp::Delete { key } => key.len(),
        TxnOp::Put { key, value, .. } => key.len() + value.len(),
        TxnOp::Range { prefix } | TxnOp::DeletePrefix { prefix } => prefix.len(),
    };
    let compares: usize = (txn.compares.iter())
        .map(|c| {
            c.key.len()
                + match &c.target {
                    CompareTarget::Value(v) => v.len(),
                    _ => 0,
                }
        })
        .sum();
    compares
        + txn
            .success
            .iter()
            .chain(&txn.failure)
            .map(op_bytes)
            .sum::<usize>()
}

fn to_compare(c: super::Compare) -> ec::Compare {
    let op = match c.op {
        CompareOp::Equal => ec::CompareOp::Equal,
        CompareOp::NotEqual => ec::CompareOp::NotEqual,
        CompareOp::Less => ec::CompareOp::Less,
        CompareOp::Greater => ec::CompareOp::Greater,
    };
    match c.target {
        CompareTarget::Version(v) => ec::Compare::version(c.key, op, v),
        CompareTarget::CreateRevision(r) => ec::Compare::create_revision(c.key, op, r),
        CompareTarget::ModRevision(r) => ec::Compare::mod_revision(c.key, op, r),
        CompareTarget::Value(v) => ec::Compare::value(c.key, op, v),
    }
}

fn to_op(op: TxnOp) -> ec::TxnOp {
    match op {
        TxnOp::Get { key } => ec::TxnOp::get(key, None),
        // etcd's `WithPrefix`: range_end = prefix with its last byte below 0xff plus one; an
        // empty prefix is every key ("\0" to "\0").
        TxnOp::Range { prefix } => {
            ec::TxnOp::get(prefix, Some(ec::GetOptions::new().with_prefix()))
        }
        TxnOp::Put { key, value, lease } => ec::TxnOp::put(
            key,
            value,
            lease.map(|l| ec::PutOptions::new().with_lease(l.0)),
        ),
        TxnOp::Delete { key } => ec::TxnOp::delete(key, None),
        TxnOp::DeletePrefix { prefix } => {
            ec::TxnOp::delete(prefix, Some(ec::DeleteOptions::new().with_prefix()))
        }
    }
}

fn from_kv(kv: &ec::KeyValue) -> KeyValue {
    KeyValue {
        key: kv.key().to_vec(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    }
}

impl CoordStore for EtcdStore {
    fn txn(&mut self, txn: Txn) -> Result<TxnResponse> {
        // The shape of each response follows the request: a `Get` answers one key or none, a
        // `Range` every key of the prefix.
        let request = ec::Txn::new()
            .when(
                txn.compares
                    .iter()
                    .cloned()
                    .map(to_compare)
                    .collect::<Vec<_>>(),
            )
            .and_then(txn.success.iter().cloned().map(to_op).collect::<Vec<_>>())
            .or_else(txn.failure.iter().cloned().map(to_op).collect::<Vec<_>>());
        let mut client = self.client.kv_client();
        let resp = match self.runtime.block_on(client.txn(request)) {
            Ok(r) => r,
            Err(e) => return Err(self.error(e, Self::put_lease(&txn), Some(&txn))),
        };
        let branch = if resp.succeeded() {
            &txn.success
        } else {
            &txn.failure
        };
        let responses = (branch.iter().zip(resp.op_responses()))
            .map(|(op, r)| match (op, r) {
                (TxnOp::Get { .. }, ec::TxnOpResponse::Get(g)) => {
                    TxnOpResponse::Get(g.kvs().first().map(from_kv))
                }
                (_, ec::TxnOpResponse::Get(g)) => {
                    TxnOpResponse::Range(g.kvs().iter().map(from_kv).collect())
                }
                (_, ec::TxnOpResponse::Put(_)) => TxnOpResponse::Put,
                (_, ec::TxnOpResponse::Delete(d)) => {
                    TxnOpResponse::Delete(u64::try_from(d.deleted()).unwrap_or(0))
                }
                // Nested transactions are never sent.
                (_, ec::TxnOpResponse::Txn(_)) => TxnOpResponse::Put,
            })
            .collect();
        Ok(TxnResponse {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
            responses,
        })
    }

    fn revision(&mut self) -> Result<i64> {
        // An empty transaction: no write, and its header carries the current revision.
        Ok(self.txn(Txn::default())?.revision)
    }

    fn grant_lease(&mut self, ttl: i64) -> Result<LeaseId> {
        // etcd raises a TTL below its minimum rather than refusing it; the interface refuses < 1.
        if ttl < 1 {
            return Err(StoreError::InvalidTtl(ttl));
        }
        let mut client = self.client.lease_client();
        match self.runtime.block_on(client.grant(ttl, None)) {
            Ok(r) => Ok(LeaseId(r.id())),
            Err(e) => Err(self.error(e, None, None)),
        }
    }

    fn keep_alive(&mut self, id: LeaseId) -> Result<i64> {
        // A keep-alive stream, ended when dropped. `etcd-client`'s `keep_alive` sends the first
        // request itself and keeps its answer (refusing a lease etcd answers with TTL 0 as "lease
        // not found"), so the TTL is read from a second request on the same stream.
        let mut client = self.client.lease_client();
        let answer = self.runtime.block_on(async {
            let (mut keeper, mut stream) = client.keep_alive(id.0).await?;
            keeper.keep_alive().await?;
            stream.message().await
        });
        match answer {
            // etcd answers a lease it does not have with a TTL of 0 (or less).
            Ok(Some(r)) if r.ttl() > 0 => Ok(r.ttl()),
            Ok(_) => Err(StoreError::LeaseNotFound(id)),
            Err(e) => Err(self.error(e, Some(id), None)),
        }
    }

    fn revoke(&mut self, id: LeaseId) -> Result<()> {
        let mut client = self.client.lease_client();
        match self.runtime.block_on(client.revoke(id.0)) {
            Ok(_) => Ok(()),
            Err(e) => Err(self.error(e, Some(id), None)),
        }
    }
}
