//! The eviction order: clean copies on primary, coldest first.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// A clean copy that may be evicted, ordered by rate (then slot, so the order is total and
/// deterministic).
#[derive(Debug, Clone, Copy)]
pub(super) struct Victim {
    pub(super) rate_per_h: f64,
    pub(super) slot: u32,
}

impl PartialEq for Victim {
    fn eq(&self, other: &Victim) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Victim {}

impl PartialOrd for Victim {
    fn partial_cmp(&self, other: &Victim) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Victim {
    fn cmp(&self, other: &Victim) -> std::cmp::Ordering {
        self.rate_per_h
            .total_cmp(&other.rate_per_h)
            .then(self.slot.cmp(&other.slot))
    }
}

/// Eviction candidates coldest first, sorted lazily: a tick usually needs only the first few,
/// so building the heap is O(n) and each victim taken costs O(log n).
pub(super) struct VictimOrder {
    pub(super) heap: BinaryHeap<Reverse<Victim>>,
    pub(super) sorted: Vec<Victim>,
}

impl VictimOrder {
    /// The `j`-th coldest, if there are that many.
    pub(super) fn get(&mut self, j: usize) -> Option<Victim> {
        while self.sorted.len() <= j {
            let Reverse(v) = self.heap.pop()?;
            self.sorted.push(v);
        }
        self.sorted.get(j).copied()
    }
}
