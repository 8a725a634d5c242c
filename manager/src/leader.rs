//! One active manager: leadership by a leased key in the coordination store, and writes fenced
//! on it.
//!
//! A manager *campaigns* by creating the leader key (`/reel/leader`) under a lease of its own,
//! only if the key is missing (a transaction comparing its version with 0). The one that created
//! it leads while it renews the lease; when it dies or stalls, the lease expires, the key goes
//! with it, and a standby's next campaign wins. Every write a leader makes is **fenced**: a
//! transaction that runs only while the leader key still holds this manager's id *and* the
//! `create_revision` of its own campaign. A deposed leader that has not noticed yet (a long GC
//! pause, a partition) cannot write, even if it comes back and wins a later campaign under the
//! same id: that campaign has another `create_revision`. This is etcd's election recipe; with
//! the embedded store there is one manager, and it wins at once.

use crate::store::{
    Compare, CompareOp, CompareTarget, CoordStore, LeaseId, Result, StoreError, Txn, TxnOp,
    TxnOpResponse, TxnResponse,
};

/// The key the leader holds.
pub const LEADER_KEY: &[u8] = b"/reel/leader";

/// Who leads now, as the store says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leader's id (what it campaigned with: its name or address).
    pub id: Vec<u8>,
    /// The revision of its campaign: what its writes are fenced on.
    pub since_revision: i64,
}

/// This manager's leadership, won by [`campaign`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub leader: Leader,
    pub lease: LeaseId,
}

/// A fenced write that did not run: this manager no longer leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposed {
    /// Who leads now, if anyone.
    pub now: Option<Leader>,
}

/// The current leader, if any.
pub fn current(store: &mut dyn CoordStore) -> Result<Option<Leader>> {
    Ok(store.get(LEADER_KEY)?.map(|kv| Leader {
        id: kv.value,
        since_revision: kv.create_revision,
    }))
}

/// Campaigns once with `id` under a new lease of `ttl_s` seconds: `Ok(Ok(leadership))` if this
/// manager now leads, `Ok(Err(leader))` with the leader otherwise (its lease is revoked again).
pub fn campaign(
    store: &mut dyn CoordStore,
    id: &[u8],
    ttl_s: i64,
) -> Result<std::result::Result<Leadership, Leader>> {
    let lease = store.grant_lease(ttl_s)?;
    let r = store.txn(Txn {
        compares: vec![Compare::missing(LEADER_KEY)],
        success: vec![TxnOp::Put {
            key: LEADER_KEY.to_vec(),
            value: id.to_vec(),
            lease: Some(lease),
        }],
        failure: vec![TxnOp::Get {
            key: LEADER_KEY.to_vec(),
        }],
    });
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            let _ = store.revoke(lease);
            return Err(e);
        }
    };
    if r.succeeded {
        return Ok(Ok(Leadership {
            leader: Leader {
                id: id.to_vec(),
                since_revision: r.revision,
            },
            lease,
        }));
    }
    store.revoke(lease)?;
    match r.responses.into_iter().next() {
        Some(TxnOpResponse::Get(Some(kv))) => Ok(Err(Leader {
            id: kv.value,
            since_revision: kv.create_revision,
        })),
        // The key vanished between the compare and now cannot happen in one transaction; an
        // answer without it is the store's error.
        _ => Err(StoreError::InvalidTxn(
            "a lost campaign did not read the leader key".into(),
        )),
    }
}

impl Leadership {
    /// The compares that hold only while this campaign still leads.
    fn fence(&self) -> Vec<Compare> {
        vec![
            Compare::new(
                LEADER_KEY,
                CompareOp::Equal,
                CompareTarget::Value(self.leader.id.clone()),
            ),
            Compare::new(
                LEADER_KEY,
                CompareOp::Equal,
                CompareTarget::CreateRevision(self.leader.since_revision),
            ),
        ]
    }

    /// Runs `ops` only while this manager leads.
    pub fn write(
        &self,
        store: &mut dyn CoordStore,
        ops: Vec<TxnOp>,
    ) -> Result<std::result::Result<TxnResponse, Deposed>> {
        let r = store.txn(Txn {
            compares: self.fence(),
            success: ops,
            failure: vec![TxnOp::Get {
                key: LEADER_KEY.to_vec(),
            }],
        })?;
        if r.succeeded {
            return Ok(Ok(r));
        }
        let now = match r.responses.into_iter().next() {
            Some(TxnOpResponse::Get(Some(kv))) => Some(Leader {
                id: kv.value,
                since_revision: kv.create_revision,
            }),
            _ => None,
        };
        Ok(Err(Deposed { now }))
    }

    /// Renews the lease; false when it is gone (expired or revoked: this manager no longer
    /// leads, whatever it believed).
    pub fn renew(&self, store: &mut dyn CoordStore) -> Result<bool> {
        match store.keep_alive(self.lease) {
            Ok(_) => Ok(true),
            Err(StoreError::LeaseNotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Steps down: the leader key goes with the lease, and a standby may win at once.
    pub fn resign(self, store: &mut dyn CoordStore) -> Result<()> {
        match store.revoke(self.lease) {
            Ok(()) | Err(StoreError::LeaseNotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::ManualClock;

    fn put(key: &str, value: &str) -> TxnOp {
        TxnOp::Put {
            key: key.into(),
            value: value.into(),
            lease: None,
        }
    }

    #[test]
    fn one_leader_fenced_writes_and_a_standby_takes_over_when_the_lease_lapses() {
        let dir = tempfile::tempdir().expect("tmp");
        let clock = ManualClock::default();
        let mut s = EmbeddedStore::open(dir.path(), Box::new(clock.clone())).expect("open");
        let a = campaign(&mut s, b"manager-a", 5)
            .expect("store")
            .expect("a leads");
        assert_eq!(current(&mut s).expect("store"), Some(a.leader.clone()));
        // b loses while a leads, and learns who leads.
        let lost = campaign(&mut s, b"manager-b", 5).expect("store");
        assert_eq!(lost, Err(a.leader.clone()));
        assert!(a
            .write(&mut s, vec![put("/reel/cfg/x", "1")])
            .expect("store")
            .is_ok());
        // a stalls past its lease: the key goes; b wins; a's writes are fenced.
        clock.advance(Duration::from_secs(6));
        assert!(!a.renew(&mut s).expect("store"), "a's lease is gone");
        let b = campaign(&mut s, b"manager-b", 5)
            .expect("store")
            .expect("b leads");
        let refused = a
            .write(&mut s, vec![put("/reel/cfg/x", "2")])
            .expect("store");
        assert_eq!(
            refused,
            Err(Deposed {
                now: Some(b.leader.clone())
            })
        );
        assert_eq!(
            s.get(b"/reel/cfg/x").expect("store").map(|kv| kv.value),
            Some(b"1".to_vec())
        );
        assert!(b
            .write(&mut s, vec![put("/reel/cfg/x", "3")])
            .expect("store")
            .is_ok());
        // b resigns; a wins again under the same id, but its old campaign stays fenced.
        b.resign(&mut s).expect("resign");
        let a2 = campaign(&mut s, b"manager-a", 5)
            .expect("store")
            .expect("a leads again");
        assert_ne!(a2.leader.since_revision, a.leader.since_revision);
        assert!(a
            .write(&mut s, vec![put("/reel/cfg/x", "4")])
            .expect("store")
            .is_err());
        assert!(a2
            .write(&mut s, vec![put("/reel/cfg/x", "5")])
            .expect("store")
            .is_ok());
        // Renewing keeps the lead past the TTL.
        for _ in 0..4 {
            clock.advance(Duration::from_secs(3));
            assert!(a2.renew(&mut s).expect("store"));
        }
        assert_eq!(current(&mut s).expect("store"), Some(a2.leader.clone()));
    }
}
