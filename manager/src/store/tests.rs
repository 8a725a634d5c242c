//! The coordination store's semantics (revisions as etcd gives them, compares, leases) and the
//! embedded store's durability (reopen, torn tails, damage, compaction, the lock).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::embedded::{EmbeddedStore, Options, LOG_FILE, SNAPSHOT_FILE};
use super::*;

/// Opens the store, waiting out (at most 2 s) a lock held by someone else: a test spawning etcd
/// forks this process, and until the child's exec closes them it holds copies of every
/// descriptor, `coord.lock`s included (Linux lets `spawn` return before that close), so a store
/// closed and reopened meanwhile finds its own lock taken. A lock really held stays `Locked`.
fn retry_locked(open: impl Fn() -> Result<EmbeddedStore>) -> Result<EmbeddedStore> {
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match open() {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            r => return r,
        }
    }
}

fn open_store(dir: &Path, clock: Box<dyn Clock>) -> Result<EmbeddedStore> {
    let clock: Arc<dyn Clock> = Arc::from(clock);
    retry_locked(|| EmbeddedStore::open(dir, Box::new(SharedClock(clock.clone()))))
}

fn open_store_with(dir: &Path, clock: Box<dyn Clock>, options: Options) -> Result<EmbeddedStore> {
    let clock: Arc<dyn Clock> = Arc::from(clock);
    retry_locked(|| EmbeddedStore::open_with(dir, Box::new(SharedClock(clock.clone())), options))
}

struct SharedClock(Arc<dyn Clock>);

impl Clock for SharedClock {
    fn now(&self) -> Duration {
        self.0.now()
    }
}

fn open(dir: &Path, clock: &ManualClock) -> EmbeddedStore {
    open_store(dir, Box::new(clock.clone())).unwrap()
}

fn fresh() -> (tempfile::TempDir, ManualClock, EmbeddedStore) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let store = open(dir.path(), &clock);
    (dir, clock, store)
}

/// The whole visible state: revision and every key.
fn dump(s: &mut dyn CoordStore) -> (i64, Vec<KeyValue>) {
    (s.revision().unwrap(), s.range(b"").unwrap())
}

fn kv(key: &str, value: &str, create: i64, modr: i64, version: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
        create_revision: create,
        mod_revision: modr,
        version,
        lease: None,
    }
}

fn put(key: &str, value: &str) -> TxnOp {
    TxnOp::Put {
        key: key.into(),
        value: value.into(),
        lease: None,
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[test]
fn revisions_follow_etcd() {
    revisions_follow_etcd_on(&mut fresh().2);
}

fn revisions_follow_etcd_on(s: &mut dyn CoordStore) {
    assert_eq!(s.revision().unwrap(), 1, "an empty etcd is at revision 1");
    assert_eq!(s.put(b"a", b"1", None).unwrap(), 2);
    assert_eq!(s.put(b"a", b"2", None).unwrap(), 3);
    assert_eq!(s.put(b"b/x", b"3", None).unwrap(), 4);
    assert_eq!(s.put(b"b/y", b"4", None).unwrap(), 5);
    assert_eq!(s.put(b"c", b"5", None).unwrap(), 6);
    assert_eq!(s.get(b"a").unwrap(), Some(kv("a", "2", 2, 3, 2)));
    assert_eq!(s.get(b"zz").unwrap(), None);
    assert_eq!(
        s.range(b"b/").unwrap(),
        vec![kv("b/x", "3", 4, 4, 1), kv("b/y", "4", 5, 5, 1)]
    );
    let all: Vec<Vec<u8>> = s.range(b"").unwrap().into_iter().map(|kv| kv.key).collect();
    assert_eq!(
        all,
        vec![
            b"a".to_vec(),
            b"b/x".to_vec(),
            b"b/y".to_vec(),
            b"c".to_vec()
        ]
    );

    // Deleting nothing is not a write.
    assert!(!s.delete(b"missing").unwrap());
    assert_eq!(s.delete_prefix(b"nothing/").unwrap(), 0);
    assert_eq!(s.revision().unwrap(), 6);
    assert!(s.delete(b"a").unwrap());
    assert_eq!(s.revision().unwrap(), 7);
    // Recreated: a new create_revision, version back to 1.
    assert_eq!(s.put(b"a", b"x", None).unwrap(), 8);
    assert_eq!(s.get(b"a").unwrap(), Some(kv("a", "x", 8, 8, 1)));
    // Two keys deleted by one call: one revision.
    assert_eq!(s.delete_prefix(b"b/").unwrap(), 2);
    assert_eq!(s.revision().unwrap(), 9);
    assert_eq!(s.range(b"b/").unwrap(), vec![]);
}

#[test]
fn a_txn_is_one_revision_and_reads_its_own_writes() {
    let (_dir, _clock, mut s) = fresh();
    a_txn_is_one_revision_and_reads_its_own_writes_on(&mut s);
    // The embedded store counts only keys and values against the limit; etcd counts the whole
    // encoded request, so it refuses this one (see `etcd.rs`).
    let big = vec![7u8; REQUEST_MAX];
    assert_eq!(s.put(b"k", &big[..REQUEST_MAX - 1], None).unwrap(), 5);
    assert_eq!(dump(&mut s).0, 5);
}

fn a_txn_is_one_revision_and_reads_its_own_writes_on(s: &mut dyn CoordStore) {
    s.put(b"k0", b"v", None).unwrap(); // 2
    let r = s
        .txn(Txn {
            compares: vec![],
            success: vec![
                put("k1", "a"),
                put("k2", "b"),
                TxnOp::Get { key: b"k1".into() },
                TxnOp::Delete { key: b"k0".into() },
                TxnOp::Range {
                    prefix: b"k".into(),
                },
            ],
            failure: vec![],
        })
        .unwrap();
    assert!(r.succeeded);
    assert_eq!(r.revision, 3);
    assert_eq!(
        r.responses,
        vec![
            TxnOpResponse::Put,
            TxnOpResponse::Put,
            TxnOpResponse::Get(Some(kv("k1", "a", 3, 3, 1))),
            TxnOpResponse::Delete(1),
            TxnOpResponse::Range(vec![kv("k1", "a", 3, 3, 1), kv("k2", "b", 3, 3, 1)]),
        ]
    );
    // A txn that only reads (or deletes nothing) leaves the revision alone.
    let r = s
        .txn(Txn {
            success: vec![
                TxnOp::Get { key: b"k1".into() },
                TxnOp::Delete { key: b"no".into() },
            ],
            ..Txn::default()
        })
        .unwrap();
    assert_eq!((r.revision, s.revision().unwrap()), (3, 3));
    // etcd refuses a txn writing one key twice, or putting a key it deletes.
    for success in [
        vec![put("k1", "x"), put("k1", "y")],
        vec![put("k1", "x"), TxnOp::Delete { key: b"k1".into() }],
        vec![
            put("k1", "x"),
            TxnOp::DeletePrefix {
                prefix: b"k".into(),
            },
        ],
    ] {
        let e = s
            .txn(Txn {
                success,
                ..Txn::default()
            })
            .unwrap_err();
        assert!(matches!(e, StoreError::InvalidTxn(_)), "{e}");
    }
    // Empty keys and oversized requests are refused as etcd refuses them, before any write.
    assert!(matches!(
        s.put(b"", b"v", None),
        Err(StoreError::InvalidTxn(_))
    ));
    assert!(matches!(s.get(b""), Err(StoreError::InvalidTxn(_))));
    let big = vec![7u8; REQUEST_MAX];
    assert!(matches!(
        s.put(b"k", &big, None),
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(s.put(b"k", &big[..REQUEST_MAX - 1024], None).unwrap(), 4);
    assert_eq!(dump(s).0, 4);
}

#[test]
fn compares_cover_etcd_targets_and_ops() {
    compares_cover_etcd_targets_and_ops_on(&mut fresh().2);
}

fn compares_cover_etcd_targets_and_ops_on(s: &mut dyn CoordStore) {
    s.put(b"k", b"m", None).unwrap(); // 2
    s.put(b"k", b"m", None).unwrap(); // 3: create 2, mod 3, version 2
    use CompareOp::*;
    use CompareTarget::*;
    let cases: Vec<(&str, CompareOp, CompareTarget, bool)> = vec![
        ("k", Equal, Version(2), true),
        ("k", NotEqual, Version(2), false),
        ("k", Less, Version(3), true),
        ("k", Greater, Version(1), true),
        ("k", Greater, Version(2), false),
        ("k", Equal, CreateRevision(2), true),
        ("k", Less, CreateRevision(2), false),
        ("k", Equal, ModRevision(3), true),
        ("k", Greater, ModRevision(2), true),
        ("k", NotEqual, ModRevision(3), false),
        ("k", Equal, Value(b"m".to_vec()), true),
        ("k", NotEqual, Value(b"m".to_vec()), false),
        ("k", Less, Value(b"n".to_vec()), true),
        ("k", Greater, Value(b"l".to_vec()), true),
        // A missing key compares as zeros; its value compares false whatever the op.
        ("gone", Equal, Version(0), true),
        ("gone", Equal, CreateRevision(0), true),
        ("gone", Equal, ModRevision(0), true),
        ("gone", Equal, Value(Vec::new()), false),
        ("gone", NotEqual, Value(b"x".to_vec()), false),
    ];
    for (key, op, target, expect) in cases {
        let c = Compare::new(key, op, target.clone());
        let r = s
            .txn(Txn {
                compares: vec![c],
                success: vec![TxnOp::Get { key: b"k".into() }],
                failure: vec![TxnOp::Range { prefix: b"".into() }],
            })
            .unwrap();
        assert_eq!(r.succeeded, expect, "{key} {op:?} {target:?}");
        assert!(matches!(
            (&r.responses[0], expect),
            (TxnOpResponse::Get(_), true) | (TxnOpResponse::Range(_), false)
        ));
    }
    // All compares must hold.
    let r = s
        .txn(Txn {
            compares: vec![
                Compare::new("k", Equal, Version(2)),
                Compare::new("k", Equal, Version(1)),
            ],
            success: vec![put("x", "1")],
            failure: vec![put("y", "1")],
        })
        .unwrap();
    assert!(!r.succeeded);
    assert_eq!(r.revision, 4);
    assert!(s.get(b"x").unwrap().is_none());
    assert!(s.get(b"y").unwrap().is_some());
}

#[test]
fn fencing_on_the_leader_key_and_compare_and_swap() {
    let (_dir, clock, mut s) = fresh();
    // a stops renewing; b keeps its lease and takes over once a's lease expires.
    let mut lapse = |s: &mut dyn CoordStore, _a: LeaseId, b: LeaseId| {
        clock.advance(secs(6));
        s.keep_alive(b).unwrap();
        clock.advance(secs(4));
    };
    fencing_on_the_leader_key_and_compare_and_swap_on(&mut s, &mut lapse);
}

/// `lapse` ends the first leader's lease (the first id) while the second stays alive.
fn fencing_on_the_leader_key_and_compare_and_swap_on(
    s: &mut dyn CoordStore,
    lapse: &mut dyn FnMut(&mut dyn CoordStore, LeaseId, LeaseId),
) {
    let campaign = |s: &mut dyn CoordStore, me: &str, lease: LeaseId| {
        s.txn(Txn {
            compares: vec![Compare::missing("leader")],
            success: vec![TxnOp::Put {
                key: b"leader".into(),
                value: me.into(),
                lease: Some(lease),
            }],
            failure: vec![TxnOp::Get {
                key: b"leader".into(),
            }],
        })
        .unwrap()
    };
    let fenced = |s: &mut dyn CoordStore, me: &str, create: i64, key: &str| {
        s.txn(Txn {
            compares: vec![
                Compare::new("leader", CompareOp::Equal, CompareTarget::Value(me.into())),
                Compare::new(
                    "leader",
                    CompareOp::Equal,
                    CompareTarget::CreateRevision(create),
                ),
            ],
            success: vec![put(key, me)],
            failure: vec![],
        })
        .unwrap()
        .succeeded
    };
    let la = s.grant_lease(10).unwrap();
    let r = campaign(s, "a", la);
    assert!(r.succeeded);
    let a_rev = r.revision;
    let lb = s.grant_lease(10).unwrap();
    assert!(!campaign(s, "b", lb).succeeded, "one leader at a time");
    assert!(fenced(s, "a", a_rev, "cfg/1"));
    lapse(s, la, lb);
    let r = campaign(s, "b", lb);
    assert!(r.succeeded);
    assert!(
        !fenced(s, "a", a_rev, "cfg/2"),
        "a deposed leader's write is fenced"
    );
    assert!(fenced(s, "b", r.revision, "cfg/2"));
    // Even if a comes back with the same value, its create_revision is stale.
    s.revoke(lb).unwrap();
    let la2 = s.grant_lease(10).unwrap();
    assert!(campaign(s, "a", la2).succeeded);
    assert!(!fenced(s, "a", a_rev, "cfg/3"));

    // Compare-and-swap on mod_revision.
    let rev = s.put(b"counter", b"1", None).unwrap();
    let cas = |s: &mut dyn CoordStore, seen: i64, v: &str| {
        s.txn(Txn {
            compares: vec![Compare::new(
                "counter",
                CompareOp::Equal,
                CompareTarget::ModRevision(seen),
            )],
            success: vec![put("counter", v)],
            failure: vec![TxnOp::Get {
                key: b"counter".into(),
            }],
        })
        .unwrap()
    };
    let r = cas(s, rev, "2");
    assert!(r.succeeded);
    let r2 = cas(s, rev, "3");
    assert!(!r2.succeeded);
    assert_eq!(
        r2.responses,
        vec![TxnOpResponse::Get(Some(kv(
            "counter", "2", rev, r.revision, 2
        )))]
    );
}

#[test]
fn leases_revoke_keys_and_keep_alive_answers_the_ttl() {
    leases_revoke_keys_and_keep_alive_answers_the_ttl_on(&mut fresh().2);
}

/// Leases without the passing of time (which only the embedded store's clock controls).
fn leases_revoke_keys_and_keep_alive_answers_the_ttl_on(s: &mut dyn CoordStore) {
    let l = s.grant_lease(10).unwrap();
    assert_eq!(s.revision().unwrap(), 1, "granting a lease is not a write");
    s.put(b"node/1", b"up", Some(l)).unwrap(); // 2
    s.put(b"node/2", b"up", Some(l)).unwrap(); // 3
    s.put(b"other", b"x", Some(l)).unwrap(); // 4
    s.put(b"other", b"y", None).unwrap(); // 5: detached from the lease
    assert_eq!(s.get(b"node/1").unwrap().unwrap().lease, Some(l));
    assert_eq!(s.get(b"other").unwrap().unwrap().lease, None);
    assert_eq!(s.keep_alive(l).unwrap(), 10);
    assert_eq!(s.revision().unwrap(), 5, "renewing a lease is not a write");
    s.revoke(l).unwrap();
    assert_eq!(s.range(b"node/").unwrap(), vec![]);
    assert_eq!(
        s.revision().unwrap(),
        6,
        "a revoke deleting two keys is one revision"
    );
    {
        let r = s.keep_alive(l);
        assert!(
            matches!(r, Err(StoreError::LeaseNotFound(id)) if id == l),
            "{r:?}"
        );
    }
    assert!(matches!(
        s.put(b"k", b"v", Some(l)),
        Err(StoreError::LeaseNotFound(id)) if id == l
    ));
    assert!(matches!(s.revoke(l), Err(StoreError::LeaseNotFound(id)) if id == l));
    // A lease without keys is revoked without a revision.
    let empty = s.grant_lease(5).unwrap();
    assert_ne!(empty, l);
    s.revoke(empty).unwrap();
    assert!(matches!(s.grant_lease(0), Err(StoreError::InvalidTtl(0))));
    assert_eq!(dump(s), (6, vec![kv("other", "y", 4, 5, 2)]));
}

#[test]
fn leases_expire_keys_on_time_and_keep_alive_extends() {
    let (_dir, clock, mut s) = fresh();
    let l = s.grant_lease(10).unwrap();
    assert_eq!(s.revision().unwrap(), 1, "granting a lease is not a write");
    s.put(b"node/1", b"up", Some(l)).unwrap(); // 2
    s.put(b"node/2", b"up", Some(l)).unwrap(); // 3
    s.put(b"other", b"x", Some(l)).unwrap(); // 4
    s.put(b"other", b"y", None).unwrap(); // 5: detached from the lease
    assert_eq!(s.get(b"node/1").unwrap().unwrap().lease, Some(l));
    clock.advance(Duration::from_millis(9_999));
    assert_eq!(s.range(b"node/").unwrap().len(), 2);
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        s.range(b"node/").unwrap(),
        vec![],
        "gone at exactly the TTL"
    );
    assert_eq!(
        s.revision().unwrap(),
        6,
        "an expiry deleting two keys is one revision"
    );
    assert!(s.get(b"other").unwrap().is_some());
    assert!(matches!(s.keep_alive(l), Err(StoreError::LeaseNotFound(id)) if id == l));
    assert!(matches!(
        s.put(b"k", b"v", Some(l)),
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(matches!(s.revoke(l), Err(StoreError::LeaseNotFound(_))));

    // keep_alive restarts the TTL from now.
    let l2 = s.grant_lease(5).unwrap();
    assert_ne!(l2, l);
    s.put(b"node/3", b"up", Some(l2)).unwrap(); // 7
    for _ in 0..4 {
        clock.advance(secs(4));
        assert_eq!(s.keep_alive(l2).unwrap(), 5);
    }
    clock.advance(secs(4));
    assert!(s.get(b"node/3").unwrap().is_some());
    clock.advance(secs(1));
    assert!(s.get(b"node/3").unwrap().is_none());
    assert_eq!(s.revision().unwrap(), 8);

    // A lease without keys expires without a revision; revoke deletes at once.
    let empty = s.grant_lease(1).unwrap();
    clock.advance(secs(1));
    assert_eq!(s.revision().unwrap(), 8);
    assert!(s.keep_alive(empty).is_err());
    let l3 = s.grant_lease(100).unwrap();
    s.put(b"node/4", b"up", Some(l3)).unwrap(); // 9
    s.revoke(l3).unwrap(); // 10
    assert_eq!(dump(&mut s), (10, vec![kv("other", "y", 4, 5, 2)]));
    assert!(matches!(s.grant_lease(0), Err(StoreError::InvalidTtl(0))));
}

#[test]
fn reopen_gives_identical_state_and_leases_restart_from_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut s = open(dir.path(), &clock);
    let l = s.grant_lease(10).unwrap();
    s.put(b"node/1", b"up", Some(l)).unwrap();
    s.put(b"tomb/a", b"1", None).unwrap();
    s.put(b"tomb/a", b"2", None).unwrap();
    s.txn(Txn {
        success: vec![put("policy/x", "p"), put("policy/y", "q")],
        ..Txn::default()
    })
    .unwrap();
    s.delete(b"tomb/a").unwrap();
    s.put(b"tomb/b", b"3", None).unwrap();
    let before = dump(&mut s);
    drop(s);
    // Down for longer than the TTL: the lease still gets a full TTL from the reopen.
    clock.advance(secs(60));
    let mut s = open(dir.path(), &clock);
    assert_eq!(dump(&mut s), before);
    clock.advance(secs(9));
    assert!(s.get(b"node/1").unwrap().is_some());
    assert_eq!(s.keep_alive(l).unwrap(), 10);
    // New leases never reuse an id.
    assert_ne!(s.grant_lease(5).unwrap(), l);
    clock.advance(secs(10));
    assert!(s.get(b"node/1").unwrap().is_none());
    let after = dump(&mut s);
    assert_eq!(after.0, before.0 + 1);
    drop(s);
    assert_eq!(dump(&mut open(dir.path(), &clock)), after);
}

fn copy_dir(from: &Path, to: &Path) {
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn a_torn_last_record_is_cut_off_at_every_offset() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut s = open(dir.path(), &clock);
    s.put(b"a", b"1", None).unwrap();
    s.put(b"b", b"2", None).unwrap();
    let before = dump(&mut s);
    let good_len = s.log_len();
    s.txn(Txn {
        success: vec![put("c", "3"), put("a", "changed")],
        ..Txn::default()
    })
    .unwrap();
    let full_len = s.log_len();
    drop(s);
    let log = dir.path().join(LOG_FILE);
    assert_eq!(fs::metadata(&log).unwrap().len(), full_len);
    for cut in good_len..full_len {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        let f = fs::OpenOptions::new()
            .write(true)
            .open(copy.path().join(LOG_FILE))
            .unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let mut s = open(copy.path(), &clock);
        assert_eq!(dump(&mut s), before, "cut at {cut}");
        assert_eq!(
            fs::metadata(copy.path().join(LOG_FILE)).unwrap().len(),
            good_len
        );
        // The store goes on from there, and that survives another reopen.
        assert_eq!(s.put(b"d", b"4", None).unwrap(), before.0 + 1);
        let next = dump(&mut s);
        drop(s);
        assert_eq!(dump(&mut open(copy.path(), &clock)), next);
    }
    // Zeros where the last record should be (space extended, never written) are a torn tail too.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), copy.path());
    let mut bytes = fs::read(copy.path().join(LOG_FILE)).unwrap();
    bytes[good_len as usize..].fill(0);
    fs::write(copy.path().join(LOG_FILE), &bytes).unwrap();
    assert_eq!(dump(&mut open(copy.path(), &clock)), before);
}

#[test]
fn damage_before_the_tail_is_refused_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let mut s = open(dir.path(), &clock);
    s.put(b"a", b"1", None).unwrap();
    let second = s.log_len();
    s.put(b"b", b"2", None).unwrap();
    let third = s.log_len();
    s.put(b"c", b"3", None).unwrap();
    drop(s);
    let original = fs::read(dir.path().join(LOG_FILE)).unwrap();
    // Every byte of the first two records: header (length, its checksum, the payload's) and
    // payload.
    for at in 0..third {
        let copy = tempfile::tempdir().unwrap();
        let mut bytes = original.clone();
        bytes[at as usize] ^= 0x40;
        fs::write(copy.path().join(LOG_FILE), &bytes).unwrap();
        let e = open_store(copy.path(), Box::new(clock.clone())).unwrap_err();
        let record = if at < second { 0 } else { second };
        match &e {
            StoreError::Corrupt { path, offset, .. } => {
                assert_eq!(path, &copy.path().join(LOG_FILE));
                assert_eq!(*offset, record, "flip at {at}");
            }
            other => panic!("flip at {at}: {other}"),
        }
        let msg = e.to_string();
        assert!(
            msg.contains("coord.log") && msg.contains(&format!("offset {record}")),
            "{msg}"
        );
        // Refused without touching the file.
        assert_eq!(fs::read(copy.path().join(LOG_FILE)).unwrap(), bytes);
    }
}

#[test]
fn compaction_preserves_state_and_revisions() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new();
    let options = Options {
        compact_factor: 3,
        compact_min_bytes: 2048,
    };
    let reopen = || open_store_with(dir.path(), Box::new(clock.clone()), options).unwrap();
    let mut s = reopen();
    let l = s.grant_lease(30).unwrap();
    s.put(b"node/1", b"up", Some(l)).unwrap();
    for i in 0..200 {
        s.put(
            format!("k{}", i % 5).as_bytes(),
            format!("v{i}").as_bytes(),
            None,
        )
        .unwrap();
        assert!(
            s.log_len() <= 4096,
            "the log stays bounded: {}",
            s.log_len()
        );
    }
    s.delete(b"k0").unwrap();
    assert!(dir.path().join(SNAPSHOT_FILE).exists());
    let before = dump(&mut s);
    assert_eq!(before.0, 1 + 1 + 200 + 1);
    drop(s);
    let mut s = reopen();
    assert_eq!(dump(&mut s), before);
    assert_eq!(
        s.keep_alive(l).unwrap(),
        30,
        "the lease survives the snapshot"
    );

    // A crash after the snapshot is in place but before the log is emptied replays nothing twice.
    s.put(b"k9", b"x", None).unwrap();
    drop(s);
    let log = fs::read(dir.path().join(LOG_FILE)).unwrap();
    let mut s = reopen();
    s.compact().unwrap();
    let state = dump(&mut s);
    drop(s);
    fs::write(dir.path().join(LOG_FILE), &log).unwrap();
    let mut s = reopen();
    assert_eq!(dump(&mut s), state);
    assert_eq!(s.put(b"k9", b"y", None).unwrap(), state.0 + 1);
    let state = dump(&mut s);
    drop(s);
    assert_eq!(dump(&mut reopen()), state);

    // A half-written snapshot (a crash before its rename) is ignored and removed.
    fs::write(dir.path().join("coord.snap.tmp"), b"partial").unwrap();
    assert_eq!(dump(&mut reopen()), state);
    assert!(!dir.path().join("coord.snap.tmp").exists());
    // The snapshot is written whole and renamed into place, so any damage to it is refused.
    let snap = dir.path().join(SNAPSHOT_FILE);
    let good = fs::read(&snap).unwrap();
    for at in [0, 5, 11, 12, good.len() / 2, good.len() - 1] {
        let mut bytes = good.clone();
        bytes[at] ^= 1;
        fs::write(&snap, &bytes).unwrap();
        let e = open_store_with(dir.path(), Box::new(clock.clone()), options).unwrap_err();
        assert!(
            matches!(&e, StoreError::Corrupt { path, offset: 0, .. } if path == &snap),
            "flip at {at}: {e}"
        );
    }
    fs::write(&snap, &good[..good.len() - 1]).unwrap();
    assert!(matches!(
        open_store_with(dir.path(), Box::new(clock.clone()), options),
        Err(StoreError::Corrupt { .. })
    ));
    fs::write(&snap, &good).unwrap();
    assert_eq!(dump(&mut reopen()), state);
}

#[test]
fn a_second_open_of_the_same_directory_fails_while_the_first_is_open() {
    let (dir, clock, mut s) = fresh();
    s.put(b"a", b"1", None).unwrap();
    let e = EmbeddedStore::open(dir.path(), Box::new(clock.clone())).unwrap_err();
    assert!(matches!(e, StoreError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("coord.lock"), "{e}");
    drop(s);
    let mut s = open(dir.path(), &clock);
    assert_eq!(s.get(b"a").unwrap().unwrap().value, b"1");
}

/// A tiny deterministic generator (xorshift64*), so the randomized test needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The obvious model: a map and a revision, etcd's rules written out plainly.
#[derive(Default)]
struct Model {
    revision: i64,
    kvs: std::collections::BTreeMap<Vec<u8>, KeyValue>,
}

impl Model {
    fn put(&mut self, rev: i64, key: &[u8], value: &[u8]) {
        let (create, version) = self
            .kvs
            .get(key)
            .map_or((rev, 1), |kv| (kv.create_revision, kv.version + 1));
        let kv = KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: rev,
            version,
            lease: None,
        };
        self.kvs.insert(key.to_vec(), kv);
    }
}

#[test]
fn randomized_against_a_model() {
    for seed in [1u64, 7, 42, 1234] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let options = Options {
            compact_factor: 2,
            compact_min_bytes: 4096,
        };
        let reopen = || open_store_with(dir.path(), Box::new(clock.clone()), options).unwrap();
        let mut s = reopen();
        let mut m = Model {
            revision: 1,
            ..Model::default()
        };
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let keys: Vec<Vec<u8>> = ["a", "a/1", "a/2", "b", "b/1", "c"]
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .collect();
        for step in 0..600 {
            let key = keys[rng.below(keys.len() as u64) as usize].clone();
            let value = format!("v{}", rng.below(4)).into_bytes();
            match rng.below(10) {
                0..=3 => {
                    let rev = s.put(&key, &value, None).unwrap();
                    m.revision += 1;
                    m.put(m.revision, &key, &value);
                    assert_eq!(rev, m.revision);
                }
                4 => {
                    let existed = s.delete(&key).unwrap();
                    assert_eq!(existed, m.kvs.remove(&key).is_some());
                    m.revision += i64::from(existed);
                }
                5 => {
                    let n = s.delete_prefix(&key[..1]).unwrap();
                    let gone: Vec<_> = m
                        .kvs
                        .keys()
                        .filter(|k| k.starts_with(&key[..1]))
                        .cloned()
                        .collect();
                    assert_eq!(n, gone.len() as u64);
                    for k in &gone {
                        m.kvs.remove(k);
                    }
                    m.revision += i64::from(n > 0);
                }
                6..=8 => {
                    // Compare-and-swap on a version that is right about half of the time.
                    let current = m.kvs.get(&key).map_or(0, |kv| kv.version);
                    let guess = current + rng.below(2) as i64;
                    let other = keys[rng.below(keys.len() as u64) as usize].clone();
                    let mut success = vec![TxnOp::Put {
                        key: key.clone(),
                        value: value.clone(),
                        lease: None,
                    }];
                    if other != key {
                        success.push(TxnOp::Put {
                            key: other.clone(),
                            value: value.clone(),
                            lease: None,
                        });
                    }
                    let r = s
                        .txn(Txn {
                            compares: vec![Compare::new(
                                key.clone(),
                                CompareOp::Equal,
                                CompareTarget::Version(guess),
                            )],
                            success,
                            failure: vec![TxnOp::Get { key: key.clone() }],
                        })
                        .unwrap();
                    assert_eq!(r.succeeded, guess == current);
                    if r.succeeded {
                        m.revision += 1;
                        m.put(m.revision, &key, &value);
                        if other != key {
                            m.put(m.revision, &other, &value);
                        }
                    } else {
                        assert_eq!(
                            r.responses,
                            vec![TxnOpResponse::Get(m.kvs.get(&key).cloned())]
                        );
                    }
                    assert_eq!(r.revision, m.revision);
                }
                _ => {
                    drop(s);
                    s = reopen();
                }
            }
            let model: Vec<KeyValue> = m.kvs.values().cloned().collect();
            assert_eq!(dump(&mut s), (m.revision, model), "seed {seed} step {step}");
        }
        assert!(
            dir.path().join(SNAPSHOT_FILE).exists(),
            "seed {seed} compacted at least once"
        );
    }
}

/// The model of leases: each with its TTL and deadline; expiry as etcd does it, lease by lease.
#[derive(Default)]
struct LeaseModel {
    kv: Model,
    leases: std::collections::BTreeMap<LeaseId, (i64, Duration)>,
}

impl LeaseModel {
    fn expire(&mut self, now: Duration) {
        let expired: Vec<LeaseId> = (self.leases.iter())
            .filter(|(_, (_, deadline))| *deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.revoke(id);
        }
    }

    fn revoke(&mut self, id: LeaseId) {
        self.leases.remove(&id);
        let before = self.kv.kvs.len();
        self.kv.kvs.retain(|_, kv| kv.lease != Some(id));
        self.kv.revision += i64::from(self.kv.kvs.len() != before);
    }
}

#[test]
fn randomized_with_leases_against_a_model() {
    for seed in [3u64, 99, 2024] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new();
        let options = Options {
            compact_factor: 2,
            compact_min_bytes: 4096,
        };
        let reopen = || open_store_with(dir.path(), Box::new(clock.clone()), options).unwrap();
        let mut s = reopen();
        let mut m = LeaseModel::default();
        m.kv.revision = 1;
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut granted: Vec<LeaseId> = Vec::new();
        for step in 0..800 {
            let now = clock.now();
            m.expire(now);
            let key = format!("n/{}", rng.below(6)).into_bytes();
            let pick = |rng: &mut Rng, granted: &[LeaseId]| {
                (!granted.is_empty()).then(|| granted[rng.below(granted.len() as u64) as usize])
            };
            match rng.below(12) {
                0..=1 => {
                    let ttl = 1 + rng.below(5) as i64;
                    let id = s.grant_lease(ttl).unwrap();
                    assert!(!granted.contains(&id), "lease ids are never reused");
                    granted.push(id);
                    m.leases.insert(id, (ttl, now + secs(ttl as u64)));
                }
                2..=5 => {
                    let lease = if rng.below(3) == 0 {
                        None
                    } else {
                        pick(&mut rng, &granted)
                    };
                    let r = s.put(&key, b"v", lease);
                    if lease.is_some_and(|id| !m.leases.contains_key(&id)) {
                        assert!(matches!(r, Err(StoreError::LeaseNotFound(_))), "{r:?}");
                    } else {
                        m.kv.revision += 1;
                        m.kv.put(m.kv.revision, &key, b"v");
                        if let Some(kv) = m.kv.kvs.get_mut(&key) {
                            kv.lease = lease;
                        }
                        assert_eq!(r.unwrap(), m.kv.revision);
                    }
                }
                6..=7 => {
                    if let Some(id) = pick(&mut rng, &granted) {
                        let r = s.keep_alive(id);
                        match m.leases.get_mut(&id) {
                            Some((ttl, deadline)) => {
                                *deadline = now + secs(*ttl as u64);
                                assert_eq!(r.unwrap(), *ttl);
                            }
                            None => assert!(matches!(r, Err(StoreError::LeaseNotFound(_)))),
                        }
                    }
                }
                8 => {
                    if let Some(id) = pick(&mut rng, &granted) {
                        let r = s.revoke(id);
                        if m.leases.contains_key(&id) {
                            r.unwrap();
                            m.revoke(id);
                        } else {
                            assert!(matches!(r, Err(StoreError::LeaseNotFound(_))));
                        }
                    }
                }
                9 => {
                    let existed = s.delete(&key).unwrap();
                    assert_eq!(existed, m.kv.kvs.remove(&key).is_some());
                    m.kv.revision += i64::from(existed);
                }
                10 => clock.advance(Duration::from_millis(rng.below(2500))),
                _ => {
                    drop(s);
                    clock.advance(secs(rng.below(20)));
                    s = reopen();
                    // A reopen gives every lease a full TTL from now.
                    let now = clock.now();
                    for (ttl, deadline) in m.leases.values_mut() {
                        *deadline = now + secs(*ttl as u64);
                    }
                }
            }
            m.expire(clock.now());
            let model: Vec<KeyValue> = m.kv.kvs.values().cloned().collect();
            assert_eq!(
                dump(&mut s),
                (m.kv.revision, model),
                "seed {seed} step {step}"
            );
        }
    }
}

/// The same semantic tests against a real etcd (`/usr/bin/etcd`, Debian's etcd-server), one
/// fresh server per test on free loopback ports (never 2379/2380).
mod against_etcd {
    use std::time::Instant;

    use reel_testkit::cluster::{etcd_probe, free_port, Etcd};

    use super::super::etcd::EtcdStore;
    use super::*;

    /// Starts etcd (the test kit's: free loopback ports, a temporary data directory, killed on
    /// drop) and connects to it, or `None` (said out loud) when etcd is not installed.
    fn start() -> Option<(Etcd, EtcdStore)> {
        if let Some(why) = etcd_probe() {
            println!("SKIPPED: {why}");
            return None;
        }
        let etcd = Etcd::start(&std::env::temp_dir());
        let url = format!("http://{}", etcd.endpoint);
        let store = EtcdStore::connect(&[url], Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("etcd is healthy but the store cannot connect: {e}"));
        Some((etcd, store))
    }

    #[test]
    fn revisions_follow_etcd() {
        let Some((_etcd, mut s)) = start() else {
            return;
        };
        revisions_follow_etcd_on(&mut s);
    }

    #[test]
    fn a_txn_is_one_revision_and_reads_its_own_writes() {
        let Some((_etcd, mut s)) = start() else {
            return;
        };
        a_txn_is_one_revision_and_reads_its_own_writes_on(&mut s);
        // Where etcd differs: its limit is on the encoded request, so keys and values one byte
        // under `REQUEST_MAX` (which the embedded store takes) are refused.
        let big = vec![7u8; REQUEST_MAX];
        let e = s.put(b"k", &big[..REQUEST_MAX - 1], None).unwrap_err();
        assert!(matches!(e, StoreError::TooLarge { .. }), "{e}");
        assert_eq!(s.revision().unwrap(), 4);
    }

    #[test]
    fn compares_cover_etcd_targets_and_ops() {
        let Some((_etcd, mut s)) = start() else {
            return;
        };
        compares_cover_etcd_targets_and_ops_on(&mut s);
    }

    #[test]
    fn fencing_on_the_leader_key_and_compare_and_swap() {
        let Some((_etcd, mut s)) = start() else {
            return;
        };
        // Waiting out a real TTL here would cost seconds: the first leader's lease ends by revoke
        // (what its expiry does), the expiry itself is `a_lease_expires_on_time`.
        let mut lapse = |s: &mut dyn CoordStore, a: LeaseId, _b: LeaseId| s.revoke(a).unwrap();
        fencing_on_the_leader_key_and_compare_and_swap_on(&mut s, &mut lapse);
    }

    #[test]
    fn leases_revoke_keys_and_keep_alive_answers_the_ttl() {
        let Some((_etcd, mut s)) = start() else {
            return;
        };
        leases_revoke_keys_and_keep_alive_answers_the_ttl_on(&mut s);
    }

    /// Real time, bounded: a 2 s lease (etcd's minimum) is gone within 5 s, in one revision.
    #[test]
    fn a_lease_expires_on_time() {
        let Some((_etcd, mut s)) = start() else {
            return;
        };
        let l = s.grant_lease(2).unwrap();
        let start = Instant::now();
        s.put(b"node/1", b"up", Some(l)).unwrap(); // 2
        s.put(b"node/2", b"up", Some(l)).unwrap(); // 3
        while s.get(b"node/1").unwrap().is_some() {
            assert!(start.elapsed() < secs(5), "the lease outlived 5 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            start.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(s.range(b"node/").unwrap(), vec![]);
        assert_eq!(
            s.revision().unwrap(),
            4,
            "an expiry deleting two keys is one revision"
        );
        assert!(matches!(s.keep_alive(l), Err(StoreError::LeaseNotFound(_))));
        // Where etcd differs from the embedded store: a TTL below its minimum (2 s with the
        // default election timeout) is raised to it.
        let short = s.grant_lease(1).unwrap();
        assert_eq!(s.keep_alive(short).unwrap(), 2);
    }

    #[test]
    fn an_unreachable_etcd_is_unavailable_naming_the_endpoint() {
        let url = format!("http://127.0.0.1:{}", free_port());
        let e =
            EtcdStore::connect(std::slice::from_ref(&url), Duration::from_millis(500)).unwrap_err();
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains(&url) && msg.contains("is etcd running"),
            "{msg}"
        );
    }
}
