//! The model of acknowledged operations shared by the crash and power-loss tests: a log of
//! `B <op>` (begun) / `A <op>` (acknowledged) / `F put <id>` (refused) lines is folded into the
//! set of assets that must survive, and a recovered volume is checked against it.

use std::collections::BTreeMap;

use reel_store::driver::Driver;
use reel_store::Volume;

use super::{content, read_all};

/// id -> (content seed, length)
pub type Assets = BTreeMap<String, (u64, usize)>;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pending {
    Put { id: String, seed: u64, len: usize },
    Del { id: String },
}

/// Applies acknowledged operations to `model`; returns the operation begun but not finished.
pub fn fold(model: &mut Assets, lines: &[String]) -> Option<Pending> {
    let mut pending = None;
    for l in lines {
        let f: Vec<&str> = l.split(' ').collect();
        match f.as_slice() {
            ["B", "put", id, s, n] => {
                pending = Some(Pending::Put {
                    id: id.to_string(),
                    seed: s.parse().expect("seed"),
                    len: n.parse().expect("len"),
                })
            }
            ["B", "del", id] => pending = Some(Pending::Del { id: id.to_string() }),
            ["A", "put", id, s, n] => {
                model.insert(
                    id.to_string(),
                    (s.parse().expect("seed"), n.parse().expect("len")),
                );
                pending = None;
            }
            ["A", "del", id] => {
                model.remove(*id);
                pending = None;
            }
            ["F", "put", _] => pending = None,
            ["READY"] => {}
            other => panic!("unexpected log line {other:?}"),
        }
    }
    pending
}

/// Checks a recovered volume: every acknowledged asset with its exact bytes, nothing else except
/// the outcome of the one operation in flight (either way, but whole), and no leaked space.
/// Returns the model as recovered.
pub fn check_recovered(
    vol: &Volume,
    drv: &mut Driver,
    model: &Assets,
    pending: &Option<Pending>,
    ctx: &str,
) -> Assets {
    let mut expected = model.clone();
    match pending {
        Some(Pending::Put { id, seed, len }) => {
            if let Some(a) = vol.get(id) {
                if a.size() == *len as u64 && read_all(vol, drv, id, true) == content(*seed, *len) {
                    expected.insert(id.clone(), (*seed, *len));
                }
            }
        }
        Some(Pending::Del { id }) if vol.get(id).is_none() => {
            expected.remove(id);
        }
        Some(Pending::Del { .. }) | None => {}
    }
    let present: Vec<String> = vol.list().iter().map(|a| a.id().to_string()).collect();
    let want: Vec<String> = expected.keys().cloned().collect();
    assert_eq!(
        present, want,
        "{ctx}: the set of assets after recovery (in flight: {pending:?})"
    );
    for (id, (s, n)) in &expected {
        assert!(
            read_all(vol, drv, id, true) == content(*s, *n),
            "{ctx}: asset {id} has wrong bytes after recovery"
        );
    }
    let st = super::assert_space_adds_up(vol, ctx);
    assert_eq!(
        (st.reserved_bytes, st.reclaim_pending_bytes),
        (0, 0),
        "{ctx}"
    );
    expected
}

/// One random operation of the crash workloads: a put (new or replacing, sizes from empty to a
/// few MiB, with and without a known length) or a delete. `emit` receives the `B`/`A`/`F` lines.
pub fn workload_step(
    vol: &Volume,
    drv: &mut Driver,
    rng: &mut fastrand::Rng,
    seed: u64,
    n: u64,
    max_len: usize,
    emit: &mut dyn FnMut(String),
) {
    let ids: Vec<String> = vol.list().iter().map(|a| a.id().to_string()).collect();
    if rng.u32(0..100) < 25 && !ids.is_empty() {
        let id = &ids[rng.usize(0..ids.len())];
        emit(format!("B del {id}"));
        vol.delete(drv, id).expect("delete");
        emit(format!("A del {id}"));
        return;
    }
    let id = format!("c/{}", rng.u32(0..40));
    let len = match rng.u32(0..10) {
        0 => 0,
        1..=5 => rng.usize(1..70_000),
        6..=8 => rng.usize(70_000..(2 << 20)),
        _ => rng.usize((2 << 20)..(5 << 20)),
    }
    .min(max_len);
    let cseed = seed.wrapping_mul(1_000_003).wrapping_add(n);
    let data = content(cseed, len);
    emit(format!("B put {id} {cseed} {len}"));
    let opts = reel_store::PutOptions {
        size: if n.is_multiple_of(2) {
            Some(len as u64)
        } else {
            None
        },
        ..Default::default()
    };
    match vol.put(drv, &id, &mut &data[..], &opts) {
        Ok(_) => emit(format!("A put {id} {cseed} {len}")),
        // Full is a clean refusal; later deletes make room.
        Err(reel_store::EngineError::NoSpace { .. }) => emit(format!("F put {id}")),
        Err(e) => panic!("put {id}: {e}"),
    }
}
