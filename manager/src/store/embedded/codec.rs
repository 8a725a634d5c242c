//! The byte layout of the embedded store's record payloads (the framing around them is in
//! `embedded.rs`). Little-endian integers; `bytes` is a `u32` length then the bytes; an optional
//! lease is a `u8` (0 none, 1 some) then an `i64`. Every payload starts with a format byte.
//!
//! - log record: `FORMAT | seq u64 | revision i64 | count u32 | effect*`, an effect being
//!   `1 key value lease?` (put), `2 key` (delete), `3 id ttl` (grant), `4 id` (revoke).
//! - snapshot: `FORMAT | seq u64 | revision i64 | next_lease i64 | count u32 | (id ttl)* |
//!   count u32 | (key value create_revision mod_revision version lease?)*`.
//!
//! The decoder treats the payload as untrusted (it passed a checksum, but a bug or an older
//! format must not panic): every read is bounds-checked, every byte must be consumed, and an
//! error says what was being read.

use super::{Effect, Record, Snapshot};
use crate::store::{KeyValue, LeaseId};

const FORMAT: u8 = 1;
const PUT: u8 = 1;
const DELETE: u8 = 2;
const GRANT: u8 = 3;
const REVOKE: u8 = 4;

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn count(&mut self, n: usize) {
        // Requests are at most REQUEST_MAX bytes and the store holds metadata: far below 2^32.
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    fn bytes(&mut self, b: &[u8]) {
        self.count(b.len());
        self.0.extend_from_slice(b);
    }
    fn lease(&mut self, lease: Option<LeaseId>) {
        match lease {
            None => self.u8(0),
            Some(id) => {
                self.u8(1);
                self.i64(id.0);
            }
        }
    }
}

pub(super) fn encode_record(rec: &Record) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(FORMAT);
    w.u64(rec.seq);
    w.i64(rec.revision);
    w.count(rec.effects.len());
    for e in &rec.effects {
        match e {
            Effect::Put { key, value, lease } => {
                w.u8(PUT);
                w.bytes(key);
                w.bytes(value);
                w.lease(*lease);
            }
            Effect::Delete { key } => {
                w.u8(DELETE);
                w.bytes(key);
            }
            Effect::Grant { id, ttl } => {
                w.u8(GRANT);
                w.i64(id.0);
                w.i64(*ttl);
            }
            Effect::Revoke { id } => {
                w.u8(REVOKE);
                w.i64(id.0);
            }
        }
    }
    w.0
}

pub(super) fn encode_snapshot(snap: &Snapshot) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(FORMAT);
    w.u64(snap.seq);
    w.i64(snap.revision);
    w.i64(snap.next_lease);
    w.count(snap.leases.len());
    for (id, ttl) in &snap.leases {
        w.i64(id.0);
        w.i64(*ttl);
    }
    w.count(snap.kvs.len());
    for kv in &snap.kvs {
        w.bytes(&kv.key);
        w.bytes(&kv.value);
        w.i64(kv.create_revision);
        w.i64(kv.mod_revision);
        w.i64(kv.version);
        w.lease(kv.lease);
    }
    w.0
}

type Decoded<T> = std::result::Result<T, String>;

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Decoded<&'a [u8]> {
        let end = (self.at.checked_add(n)).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| format!("{what} runs past the end of the payload"))?;
        let out = &self.b[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self, what: &str) -> Decoded<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    fn u8(&mut self, what: &str) -> Decoded<u8> {
        Ok(self.array::<1>(what)?[0])
    }
    fn u32(&mut self, what: &str) -> Decoded<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Decoded<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn i64(&mut self, what: &str) -> Decoded<i64> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }
    fn bytes(&mut self, what: &str) -> Decoded<Vec<u8>> {
        let n = self.u32(what)? as usize;
        Ok(self.take(n, what)?.to_vec())
    }
    fn lease(&mut self) -> Decoded<Option<LeaseId>> {
        match self.u8("lease flag")? {
            0 => Ok(None),
            1 => Ok(Some(LeaseId(self.i64("lease id")?))),
            other => Err(format!("lease flag {other}")),
        }
    }
    /// Reads a count of items at least `min_size` bytes each, refusing one the payload cannot hold.
    fn count(&mut self, what: &str, min_size: usize) -> Decoded<usize> {
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_size) > self.b.len() - self.at {
            return Err(format!("{what} {n} exceeds the payload"));
        }
        Ok(n)
    }
    fn format(&mut self) -> Decoded<()> {
        match self.u8("format")? {
            FORMAT => Ok(()),
            other => Err(format!("unknown format {other}")),
        }
    }
    fn end(&self) -> Decoded<()> {
        if self.at == self.b.len() {
            Ok(())
        } else {
            Err(format!("{} bytes after the end", self.b.len() - self.at))
        }
    }
}

pub(super) fn decode_record(b: &[u8]) -> Decoded<Record> {
    let mut r = Reader { b, at: 0 };
    r.format()?;
    let seq = r.u64("seq")?;
    let revision = r.i64("revision")?;
    let n = r.count("effect count", 5)?;
    let mut effects = Vec::with_capacity(n);
    for _ in 0..n {
        effects.push(match r.u8("effect tag")? {
            PUT => Effect::Put {
                key: r.bytes("put key")?,
                value: r.bytes("put value")?,
                lease: r.lease()?,
            },
            DELETE => Effect::Delete {
                key: r.bytes("delete key")?,
            },
            GRANT => Effect::Grant {
                id: LeaseId(r.i64("grant id")?),
                ttl: r.i64("grant ttl")?,
            },
            REVOKE => Effect::Revoke {
                id: LeaseId(r.i64("revoke id")?),
            },
            other => return Err(format!("effect tag {other}")),
        });
    }
    r.end()?;
    Ok(Record {
        seq,
        revision,
        effects,
    })
}

pub(super) fn decode_snapshot(b: &[u8]) -> Decoded<Snapshot> {
    let mut r = Reader { b, at: 0 };
    r.format()?;
    let seq = r.u64("seq")?;
    let revision = r.i64("revision")?;
    let next_lease = r.i64("next lease")?;
    let n = r.count("lease count", 16)?;
    let mut leases = Vec::with_capacity(n);
    for _ in 0..n {
        leases.push((LeaseId(r.i64("lease id")?), r.i64("lease ttl")?));
    }
    let n = r.count("key count", 33)?;
    let mut kvs = Vec::with_capacity(n);
    for _ in 0..n {
        kvs.push(KeyValue {
            key: r.bytes("key")?,
            value: r.bytes("value")?,
            create_revision: r.i64("create_revision")?,
            mod_revision: r.i64("mod_revision")?,
            version: r.i64("version")?,
            lease: r.lease()?,
        });
    }
    r.end()?;
    Ok(Snapshot {
        seq,
        revision,
        next_lease,
        kvs,
        leases,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_snapshots_round_trip_and_every_truncation_is_refused() {
        let rec = Record {
            seq: 7,
            revision: 42,
            effects: vec![
                Effect::Put {
                    key: b"k".to_vec(),
                    value: vec![0, 255, 3],
                    lease: Some(LeaseId(5)),
                },
                Effect::Put {
                    key: b"k2".to_vec(),
                    value: Vec::new(),
                    lease: None,
                },
                Effect::Delete { key: b"d".to_vec() },
                Effect::Grant {
                    id: LeaseId(9),
                    ttl: 10,
                },
                Effect::Revoke { id: LeaseId(9) },
            ],
        };
        let b = encode_record(&rec);
        assert_eq!(
            format!("{:?}", decode_record(&b)),
            format!("{:?}", Ok::<_, String>(rec))
        );
        for cut in 0..b.len() {
            assert!(decode_record(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = b.clone();
        longer.push(0);
        assert!(decode_record(&longer).is_err());

        let snap = Snapshot {
            seq: 3,
            revision: 9,
            next_lease: 4,
            kvs: vec![KeyValue {
                key: b"a".to_vec(),
                value: b"b".to_vec(),
                create_revision: 2,
                mod_revision: 8,
                version: 3,
                lease: Some(LeaseId(3)),
            }],
            leases: vec![(LeaseId(3), 60)],
        };
        let b = encode_snapshot(&snap);
        assert_eq!(
            format!("{:?}", decode_snapshot(&b)),
            format!("{:?}", Ok::<_, String>(snap))
        );
        for cut in 0..b.len() {
            assert!(decode_snapshot(&b[..cut]).is_err(), "cut at {cut}");
        }
    }
}
