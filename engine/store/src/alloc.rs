//! Extent allocator over the data region. Volatile: at open it is rebuilt as the complement of
//! the extents the catalog uses, so it never needs to be written to the device.
//!
//! Invariants: free extents never overlap, never touch (adjacent ones are coalesced), and lie
//! inside `[0, total_blocks)`; `free_blocks` is the sum of their lengths.

use std::collections::{BTreeMap, BTreeSet};

use crate::format::Extent;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("extent {start}+{blocks} {problem}")]
pub struct ExtentConflict {
    pub start: u64,
    pub blocks: u64,
    pub problem: &'static str,
}

#[derive(Debug, Clone)]
pub struct Allocator {
    total_blocks: u64,
    free_blocks: u64,
    /// start -> length
    by_start: BTreeMap<u64, u64>,
    /// (length, start), for best fit
    by_len: BTreeSet<(u64, u64)>,
}

impl Allocator {
    /// All blocks free.
    pub fn new(total_blocks: u64) -> Allocator {
        let mut a = Allocator {
            total_blocks,
            free_blocks: 0,
            by_start: BTreeMap::new(),
            by_len: BTreeSet::new(),
        };
        if total_blocks > 0 {
            a.insert(0, total_blocks);
        }
        a
    }

    /// The complement of `used`. Fails if a used extent leaves the region or overlaps another.
    pub fn from_used(total_blocks: u64, used: &mut [Extent]) -> Result<Allocator, ExtentConflict> {
        used.sort_unstable();
        let mut a = Allocator {
            total_blocks,
            free_blocks: 0,
            by_start: BTreeMap::new(),
            by_len: BTreeSet::new(),
        };
        let mut cursor = 0u64;
        for e in used.iter() {
            if e.blocks == 0 || e.end() > total_blocks {
                return Err(ExtentConflict {
                    start: e.start,
                    blocks: e.blocks as u64,
                    problem: "lies outside the data region",
                });
            }
            if e.start < cursor {
                return Err(ExtentConflict {
                    start: e.start,
                    blocks: e.blocks as u64,
                    problem: "overlaps another asset's extent",
                });
            }
            if e.start > cursor {
                a.insert(cursor, e.start - cursor);
            }
            cursor = e.end();
        }
        if cursor < total_blocks {
            a.insert(cursor, total_blocks - cursor);
        }
        Ok(a)
    }

    pub fn total_blocks(&self) -> u64 {
        self.total_blocks
    }

    pub fn free_blocks(&self) -> u64 {
        self.free_blocks
    }

    pub fn largest_free(&self) -> u64 {
        self.by_len.last().map_or(0, |&(len, _)| len)
    }

    pub fn free_extent_count(&self) -> usize {
        self.by_start.len()
    }

    /// Allocates up to `want` blocks as one extent: the smallest free extent that holds all of
    /// them (best fit keeps large holes for large assets), else the largest there is. `None` when
    /// nothing is free.
    pub fn alloc(&mut self, want: u64) -> Option<Extent> {
        let want = want.clamp(1, u32::MAX as u64);
        let (len, start) = match self.by_len.range((want, 0)..).next() {
            Some(&found) => found,
            None => *self.by_len.last()?,
        };
        let take = len.min(want);
        self.remove(start, len);
        if take < len {
            self.insert(start + take, len - take);
        }
        Some(Extent {
            start,
            blocks: take as u32,
        })
    }

    /// Returns an extent. Panics if it is (partly) free already: that would be a double free,
    /// a bug that must not reach the device.
    pub fn free(&mut self, e: Extent) {
        let (mut start, mut len) = (e.start, e.blocks as u64);
        assert!(
            len > 0 && start + len <= self.total_blocks,
            "freeing {e:?} outside the region"
        );
        if let Some((&ps, &pl)) = self.by_start.range(..=start).next_back() {
            assert!(
                ps + pl <= start,
                "double free of {e:?} (free extent {ps}+{pl})"
            );
            if ps + pl == start {
                self.remove(ps, pl);
                start = ps;
                len += pl;
            }
        }
        if let Some((&ns, &nl)) = self.by_start.range(start + 1..).next() {
            assert!(
                start + len <= ns,
                "double free of {e:?} (free extent {ns}+{nl})"
            );
            if start + len == ns {
                self.remove(ns, nl);
                len += nl;
            }
        }
        self.insert(start, len);
    }

    fn insert(&mut self, start: u64, len: u64) {
        self.by_start.insert(start, len);
        self.by_len.insert((len, start));
        self.free_blocks += len;
    }

    fn remove(&mut self, start: u64, len: u64) {
        self.by_start.remove(&start);
        self.by_len.remove(&(len, start));
        self.free_blocks -= len;
    }

    /// Full consistency check (tests and `strict-assertions`).
    pub fn check(&self) {
        let mut sum = 0;
        let mut prev_end = None;
        for (&s, &l) in &self.by_start {
            assert!(l > 0 && s + l <= self.total_blocks);
            if let Some(pe) = prev_end {
                assert!(s > pe, "free extents touch or overlap at {s}");
            }
            assert!(self.by_len.contains(&(l, s)));
            prev_end = Some(s + l);
            sum += l;
        }
        assert_eq!(sum, self.free_blocks);
        assert_eq!(self.by_len.len(), self.by_start.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_split_and_coalesce() {
        let mut a = Allocator::new(100);
        let x = a.alloc(10).expect("x");
        let y = a.alloc(20).expect("y");
        let z = a.alloc(30).expect("z");
        assert_eq!((x.start, y.start, z.start), (0, 10, 30));
        a.free(y);
        // best fit: a 15-block request goes into the 20-block hole, not the 40-block tail
        let w = a.alloc(15).expect("w");
        assert_eq!(w.start, 10);
        a.free(w);
        a.free(x);
        a.free(z);
        a.check();
        assert_eq!(a.free_blocks(), 100);
        assert_eq!(a.free_extent_count(), 1);
    }

    #[test]
    fn partial_when_fragmented() {
        let mut a = Allocator::from_used(
            10,
            &mut [Extent {
                start: 3,
                blocks: 2,
            }],
        )
        .expect("ok");
        assert_eq!(
            a.alloc(8),
            Some(Extent {
                start: 5,
                blocks: 5
            })
        );
        assert_eq!(
            a.alloc(8),
            Some(Extent {
                start: 0,
                blocks: 3
            })
        );
        assert_eq!(a.alloc(1), None);
    }

    #[test]
    fn overlap_and_out_of_range_are_detected() {
        let mut u = [
            Extent {
                start: 0,
                blocks: 5,
            },
            Extent {
                start: 4,
                blocks: 2,
            },
        ];
        assert!(Allocator::from_used(10, &mut u).is_err());
        assert!(Allocator::from_used(
            10,
            &mut [Extent {
                start: 8,
                blocks: 5
            }]
        )
        .is_err());
    }

    #[test]
    #[should_panic(expected = "double free")]
    fn double_free_panics() {
        let mut a = Allocator::new(10);
        let e = a.alloc(4).expect("e");
        a.free(e);
        a.free(e);
    }
}
