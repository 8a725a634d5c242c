//! Device bytes are untrusted: every decoder returns an error on garbage and never panics.
//! (A property test rather than `cargo fuzz`: that needs a nightly toolchain, which the project's
//! machines do not have. The random-flip sweep in corruption.rs covers whole-volume opening.)

use proptest::prelude::*;
use reel_store::format::{
    self, CheckpointHeader, EntryRecord, Reader, Record, RecordKind, Superblock,
};

fn valid_record_bytes() -> Vec<u8> {
    let rec = Record::Put(EntryRecord {
        id: "a/b.mp4".into(),
        content_type: Some("video/mp4".into()),
        size: 3 << 20,
        created_unix_ns: 1,
        extents: vec![format::Extent {
            start: 1,
            blocks: 768,
        }],
        crcs: vec![1, 2, 3],
    });
    let mut out = Vec::new();
    format::encode_record(&mut out, 7, &rec, 5, 5, 0);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Superblock::decode(&bytes);
        let _ = CheckpointHeader::decode(&bytes, 7, 1 << 20);
        let _ = format::decode_record(&bytes, 7);
        let _ = EntryRecord::decode(&mut Reader::new(&bytes, "fuzz"));
        for kind in [RecordKind::Put, RecordKind::Delete, RecordKind::LapStart] {
            let _ = Record::decode_payload(kind, &bytes);
        }
    }

    /// Mutations of a valid record: the checksum catches them, and when the checksum is
    /// recomputed (a writer bug rather than media damage) the payload decoder still only errs.
    #[test]
    fn mutated_records_are_rejected(pos in 0usize..200, val in any::<u8>(), cut in 0usize..200) {
        let good = valid_record_bytes();
        let mut b = good.clone();
        let pos = pos % b.len();
        if b[pos] != val {
            b[pos] = val;
            prop_assert!(format::decode_record(&b, 7).is_err());
        }
        let _ = Record::decode_payload(RecordKind::Put, &b[format::RH_LEN..]);
        let cut = cut % good.len();
        let _ = format::decode_record(&good[..cut], 7);
        let _ = EntryRecord::decode(&mut Reader::new(&good[format::RH_LEN..format::RH_LEN.max(cut)], "fuzz"));
    }
}
