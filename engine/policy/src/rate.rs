//! Request-rate counters: per-shard tables written on the serving path, folded by the scheduler
//! into one decaying rate per asset.
//!
//! **Writers.** Each shard owns one [`RateWriter`]: it is neither `Clone` nor `Sync`, so exactly
//! one thread writes a shard's table. A request is one relaxed load and one relaxed store on each
//! of two counters of the asset's slot (requests, bytes) — no read-modify-write shared between
//! threads, no lock. The shard batches them ([`RateWriter::record_batched`], 32 at a time or
//! every loop turn) so that the cache misses of records into a large table overlap. A shard's table is its own allocation, aligned to 128 bytes (two cache lines,
//! the unit the adjacent-line prefetcher pulls), so shards never write the same line.
//!
//! **Growth.** A table is indexed by the asset's dense catalog slot. It is a fixed directory of
//! 23 segments whose sizes double (1024, 2048, … slots), which covers every `u32`. A segment is
//! allocated once and never moves, so growing never copies counters and never loses an update
//! made concurrently. The writer allocates a missing segment on first use; the scheduler can do
//! it ahead of time ([`RateCounters::ensure_slots`]) so a shard never pays for a large
//! allocation on the serving path. At most twice the slots in use are allocated.
//!
//! **Folding.** The counters are cumulative and never reset (a reset by another thread would race
//! with the writer's load and store). The scheduler's [`Rates`] keeps, per slot, the sum over
//! shards seen at the previous fold; the difference is what arrived since. Each fold turns that
//! into *views* — bytes requested ÷ asset size, so a player fetching an asset in 100 ranges counts
//! as about one view — and updates an exponentially decaying rate:
//!
//! ```text
//! d    = 2^(-dt / half_life)
//! rate = rate·d + views·(1 − d)/dt          (views per hour; dt in hours)
//! ```
//!
//! A steady `v` views per fold interval converges to exactly `v/dt`; with no requests the rate
//! halves every half-life. The fold reports which slots saw requests, which is all the policy
//! needs to find promotion candidates (two assets without requests decay by the same factor, so
//! their order never changes).
//!
//! **Memory.** 16 bytes per slot per shard (two `u64`, wrap-free), plus, in [`Rates`], 8 bytes
//! per slot and 4 per slot per half-life kept (one, or six while the policy tunes its half-life:
//! 32 bytes). 10M slots on 4 shards: 640 MB of counters. Halving it (32-bit wrapping counters,
//! whose per-fold deltas stay exact) is a possible follow-up.

use std::cell::Cell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Slots in the first segment; segment `k` holds `SEGMENT0_SLOTS << k`.
const SEGMENT0_SLOTS: u64 = 1024;
/// Segments in a table: `1024 · (2^23 − 1) ≥ 2^32`, so every `u32` slot has a place.
const SEGMENTS: usize = 23;
/// Counters of this many slots share one 128-byte line.
const SLOTS_PER_LINE: usize = 8;

#[derive(Default)]
struct SlotCounter {
    requests: AtomicU64,
    bytes: AtomicU64,
}

#[derive(Default)]
#[repr(align(128))]
struct Line([SlotCounter; SLOTS_PER_LINE]);

const _: () = assert!(std::mem::size_of::<Line>() == 128);

/// The segment holding `slot`, and the slot's index inside it.
fn locate(slot: u32) -> (usize, usize) {
    let x = u64::from(slot) / SEGMENT0_SLOTS + 1;
    let segment = (63 - x.leading_zeros()) as usize;
    (segment, (u64::from(slot) - segment_base(segment)) as usize)
}

fn segment_base(segment: usize) -> u64 {
    SEGMENT0_SLOTS * ((1u64 << segment) - 1)
}

fn segment_slots(segment: usize) -> usize {
    (SEGMENT0_SLOTS as usize) << segment
}

fn new_segment(segment: usize) -> Box<[Line]> {
    std::iter::repeat_with(Line::default)
        .take(segment_slots(segment) / SLOTS_PER_LINE)
        .collect()
}

/// Single-writer store: a load and a store, not a locked read-modify-write.
#[inline]
fn bump(a: &AtomicU64, by: u64) {
    a.store(
        a.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

#[repr(align(128))]
struct ShardTable {
    segments: [OnceLock<Box<[Line]>>; SEGMENTS],
}

impl ShardTable {
    fn new() -> ShardTable {
        ShardTable {
            segments: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    fn counter(&self, slot: u32) -> Option<&SlotCounter> {
        let (segment, i) = locate(slot);
        let lines = self.segments.get(segment)?.get()?;
        lines
            .get(i / SLOTS_PER_LINE)
            .map(|l| &l.0[i % SLOTS_PER_LINE])
    }
}

/// Every shard's counter table. Shared (`Arc`) between the shards, which write through their
/// [`RateWriter`], and the scheduler, which reads.
pub struct RateCounters {
    shards: Box<[ShardTable]>,
}

impl std::fmt::Debug for RateCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateCounters")
            .field("shards", &self.shards.len())
            .field("slots_allocated", &self.slots_allocated())
            .finish()
    }
}

impl RateCounters {
    /// Tables for `shards` writers (at least one), and the one writer handle of each.
    pub fn new(shards: usize) -> (Arc<RateCounters>, Vec<RateWriter>) {
        let shards = shards.max(1);
        let counters = Arc::new(RateCounters {
            shards: (0..shards).map(|_| ShardTable::new()).collect(),
        });
        let writers = (0..shards)
            .map(|shard| RateWriter {
                counters: Arc::clone(&counters),
                shard,
                batch: [(0, 0); RECORD_BATCH],
                batch_len: 0,
                _one_thread: PhantomData,
            })
            .collect();
        (counters, writers)
    }

    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Allocates the segments covering slots `0..slots` in every shard's table, so writers
    /// never allocate on the serving path for those slots. Safe to call from any thread:
    /// allocating a segment is not a counter write.
    pub fn ensure_slots(&self, slots: u32) {
        if slots == 0 {
            return;
        }
        let (last, _) = locate(slots - 1);
        for table in self.shards.iter() {
            for (segment, cell) in table.segments.iter().enumerate().take(last + 1) {
                cell.get_or_init(|| new_segment(segment));
            }
        }
    }

    /// Slots covered by the segments allocated so far in any shard (the fold's range).
    pub fn slots_allocated(&self) -> u64 {
        let mut covered = 0;
        for table in self.shards.iter() {
            for (segment, cell) in table.segments.iter().enumerate() {
                if cell.get().is_some() {
                    covered = covered.max(segment_base(segment) + segment_slots(segment) as u64);
                }
            }
        }
        covered
    }

    /// Requests and bytes counted for `slot` since the start, summed over shards. A read may see
    /// a request whose bytes are not counted yet; the next read sees both.
    pub fn totals(&self, slot: u32) -> (u64, u64) {
        let mut requests = 0u64;
        let mut bytes = 0u64;
        for table in self.shards.iter() {
            if let Some(c) = table.counter(slot) {
                requests = requests.wrapping_add(c.requests.load(Ordering::Relaxed));
                bytes = bytes.wrapping_add(c.bytes.load(Ordering::Relaxed));
            }
        }
        (requests, bytes)
    }

    /// Bytes counted for every slot of `segment` (summed over shards) into `out`, which is
    /// cleared first. Empty when no shard has allocated the segment.
    fn segment_bytes(&self, segment: usize, out: &mut Vec<u64>) {
        out.clear();
        for table in self.shards.iter() {
            let Some(lines) = table.segments[segment].get() else {
                continue;
            };
            if out.is_empty() {
                out.resize(segment_slots(segment), 0);
            }
            for (line_index, line) in lines.iter().enumerate() {
                let base = line_index * SLOTS_PER_LINE;
                for (j, c) in line.0.iter().enumerate() {
                    let total = &mut out[base + j];
                    *total = total.wrapping_add(c.bytes.load(Ordering::Relaxed));
                }
            }
        }
    }
}

/// Records [`RateWriter::record_batched`] gathers before it applies them together.
pub const RECORD_BATCH: usize = 32;

/// The one writer of one shard's table. Not `Clone`, not `Sync`: a shard thread owns it.
pub struct RateWriter {
    counters: Arc<RateCounters>,
    shard: usize,
    /// Records not yet applied ([`RateWriter::record_batched`]); `batch_len` of them are valid.
    batch: [(u32, u64); RECORD_BATCH],
    batch_len: usize,
    /// `Cell` makes the handle `!Sync`, so it cannot be shared between threads by reference.
    _one_thread: PhantomData<Cell<()>>,
}

impl std::fmt::Debug for RateWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateWriter")
            .field("shard", &self.shard)
            .finish()
    }
}

impl RateWriter {
    /// Counts one request of `bytes` bytes (the bytes it asks for: the whole asset, or the
    /// length of its range) against the asset in `slot`.
    #[inline]
    pub fn record(&self, slot: u32, bytes: u64) {
        let (segment, i) = locate(slot);
        let table = &self.counters.shards[self.shard];
        let lines = table.segments[segment].get_or_init(|| new_segment(segment));
        let c = &lines[i / SLOTS_PER_LINE].0[i % SLOTS_PER_LINE];
        bump(&c.requests, 1);
        bump(&c.bytes, bytes);
    }

    /// [`RateWriter::record`], deferred: the record joins a batch that is applied when it holds
    /// [`RECORD_BATCH`] records or at [`RateWriter::flush`] (the shard flushes every loop turn,
    /// before it waits). Why: with the asset's counters somewhere in a large table, a record is
    /// a cache miss; one record between two responses exposes the whole miss (measured
    /// 130–270 ns per request over 1M–10M slots, 1.4–3% of sending a 64 KiB range), while the
    /// records of a batch are independent, so their misses overlap (about 13–32 ns each, as
    /// back-to-back records).
    #[inline]
    pub fn record_batched(&mut self, slot: u32, bytes: u64) {
        self.batch[self.batch_len] = (slot, bytes);
        self.batch_len += 1;
        if self.batch_len == RECORD_BATCH {
            self.flush();
        }
    }

    /// Applies the batched records.
    pub fn flush(&mut self) {
        let n = std::mem::take(&mut self.batch_len);
        for k in 0..n {
            let (slot, bytes) = self.batch[k];
            self.record(slot, bytes);
        }
    }

    /// Records batched and not yet applied.
    pub fn pending(&self) -> usize {
        self.batch_len
    }

    pub fn shard(&self) -> usize {
        self.shard
    }
}

impl Drop for RateWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Rates below this (views per hour) are flushed to zero, which keeps long-idle slots out of
/// subnormal floating point (slow) and makes "no rate" exact.
const RATE_FLOOR_PER_H: f32 = 1e-9;

/// Half-lives one [`Rates`] keeps at most.
pub const HALF_LIVES_MAX: usize = 8;

/// What one fold saw of one slot, before its new views were added: for whoever judges the
/// estimators ([`crate::policy`]'s half-life tuner).
#[derive(Debug, Clone, Copy)]
pub struct FoldedRequests<'a> {
    pub slot: u32,
    /// Bytes requested since the previous fold.
    pub bytes: u64,
    /// The slot's rate under each half-life (views per hour, decayed to now) before these
    /// requests are added, in the order of [`Rates::half_lives_s`].
    pub before_per_h: &'a [f32],
}

/// The scheduler's side: the decaying rate of every slot, in views per hour, under one or more
/// half-lives at once. One of them is *active*: [`Rates::rate_per_h`] reads it. Keeping several
/// lets the policy judge, on the node's own traffic, which half-life would have served best,
/// and switch without a warm-up (every estimator has seen everything).
///
/// Rates are `f32` (7 significant digits, plenty for a rate): 4 bytes per slot per half-life,
/// plus 8 bytes per slot for the counters seen. A fold touches only the slots that saw
/// requests: each half-life's rates are stored divided by a common factor that carries the
/// decay (`rate = stored · scale`), and only when that factor has shrunk by 2^20 are they all
/// rescaled (once per 20 half-lives), which is also when rates that decayed to nothing are
/// flushed to zero.
#[derive(Debug, Clone)]
pub struct Rates {
    half_lives_s: Vec<f64>,
    active: usize,
    /// Sum over shards of the byte counter at the previous fold.
    seen_bytes: Vec<u64>,
    /// One vector per half-life, indexed by slot: the rate divided by `scale`.
    stored: Vec<Vec<f32>>,
    /// Per half-life: the decay since the last rescale.
    scale: Vec<f64>,
    scratch: Vec<u64>,
}

/// Rates are rescaled once their common factor falls below this.
const RESCALE_BELOW: f64 = 1.0 / (1u64 << 20) as f64;

impl Rates {
    /// One half-life; `half_life_s` must be positive and finite (the policy's config validation
    /// checks it).
    pub fn new(half_life_s: f64) -> Rates {
        Rates::with_half_lives(&[half_life_s])
    }

    /// Several half-lives (1 to [`HALF_LIVES_MAX`], each positive and finite), the first one
    /// active.
    pub fn with_half_lives(half_lives_s: &[f64]) -> Rates {
        let half_lives_s: Vec<f64> = half_lives_s.iter().take(HALF_LIVES_MAX).copied().collect();
        assert!(
            !half_lives_s.is_empty(),
            "Rates needs at least one half-life"
        );
        Rates {
            stored: vec![Vec::new(); half_lives_s.len()],
            scale: vec![1.0; half_lives_s.len()],
            half_lives_s,
            active: 0,
            seen_bytes: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The active half-life.
    pub fn half_life_s(&self) -> f64 {
        self.half_lives_s[self.active]
    }

    /// Every half-life kept, in the order given.
    pub fn half_lives_s(&self) -> &[f64] {
        &self.half_lives_s
    }

    pub fn active(&self) -> usize {
        self.active
    }

    /// Makes half-life `k` (an index into [`Rates::half_lives_s`]) the one
    /// [`Rates::rate_per_h`] reads; out of range is ignored.
    pub fn set_active(&mut self, k: usize) {
        if k < self.half_lives_s.len() {
            self.active = k;
        }
    }

    /// The decaying rate of `slot` in views per hour under the active half-life (0 for a slot
    /// never folded).
    pub fn rate_per_h(&self, slot: u32) -> f64 {
        self.rate_per_h_at(self.active, slot)
    }

    /// The rate of `slot` under half-life `k`.
    pub fn rate_per_h_at(&self, k: usize, slot: u32) -> f64 {
        self.stored
            .get(k)
            .and_then(|v| v.get(slot as usize))
            .map_or(0.0, |&r| f64::from(r) * self.scale[k])
    }

    /// Folds what the shards counted since the previous fold, `elapsed_ns` ago, into the rates.
    /// `size_of(slot)` is the asset's size in bytes (0 for a free slot: its bytes are dropped).
    /// Slots that saw requests are appended to `touched`, in ascending order.
    ///
    /// With `elapsed_ns == 0` nothing changes; what arrived stays counted for the next fold.
    pub fn fold(
        &mut self,
        counters: &RateCounters,
        elapsed_ns: u64,
        size_of: impl Fn(u32) -> u64,
        touched: &mut Vec<u32>,
    ) {
        self.fold_with(counters, elapsed_ns, size_of, touched, |_| {});
    }

    /// [`Rates::fold`], calling `seen` for every slot with requests of a known size, before its
    /// views are added.
    pub fn fold_with(
        &mut self,
        counters: &RateCounters,
        elapsed_ns: u64,
        size_of: impl Fn(u32) -> u64,
        touched: &mut Vec<u32>,
        mut seen: impl FnMut(FoldedRequests<'_>),
    ) {
        if elapsed_ns == 0 {
            return;
        }
        let covered = counters.slots_allocated() as usize;
        if self.seen_bytes.len() < covered {
            self.seen_bytes.resize(covered, 0);
            for v in &mut self.stored {
                v.resize(covered, 0.0);
            }
        }
        let dt_s = elapsed_ns as f64 / 1e9;
        let k_n = self.half_lives_s.len();
        let mut gain = [0f64; HALF_LIVES_MAX];
        for (k, g) in gain.iter_mut().enumerate().take(k_n) {
            let decay = (-dt_s / self.half_lives_s[k]).exp2();
            self.scale[k] *= decay;
            if self.scale[k] < RESCALE_BELOW {
                self.rescale(k);
            }
            // Views add `(1 − d)/dt` per hour to the rate, so this over the scale when stored.
            *g = (1.0 - decay) / (dt_s / 3600.0) / self.scale[k];
        }
        let mut before = [0f32; HALF_LIVES_MAX];
        let mut scratch = std::mem::take(&mut self.scratch);
        let len = self.seen_bytes.len();
        for segment in 0..SEGMENTS {
            let base = segment_base(segment) as usize;
            if base >= len {
                break;
            }
            counters.segment_bytes(segment, &mut scratch);
            if scratch.is_empty() {
                continue;
            }
            let end = (base + segment_slots(segment)).min(len);
            for (j, &total) in scratch.iter().enumerate().take(end - base) {
                let i = base + j;
                let delta = total.wrapping_sub(self.seen_bytes[i]);
                if delta == 0 {
                    continue;
                }
                self.seen_bytes[i] = total;
                let slot = i as u32;
                let size = size_of(slot);
                if size > 0 {
                    for (k, b) in before.iter_mut().enumerate().take(k_n) {
                        *b = (f64::from(self.stored[k][i]) * self.scale[k]) as f32;
                    }
                    seen(FoldedRequests {
                        slot,
                        bytes: delta,
                        before_per_h: &before[..k_n],
                    });
                    let views = delta as f64 / size as f64;
                    for (k, g) in gain.iter().enumerate().take(k_n) {
                        let r = &mut self.stored[k][i];
                        *r = (f64::from(*r) + views * g) as f32;
                    }
                }
                touched.push(slot);
            }
        }
        self.scratch = scratch;
    }

    /// Folds half-life `k`'s decay into its stored rates (a pass over every slot) and flushes
    /// the ones that decayed to nothing.
    fn rescale(&mut self, k: usize) {
        let f = self.scale[k] as f32;
        for r in &mut self.stored[k] {
            *r *= f;
            if *r < RATE_FLOOR_PER_H {
                *r = 0.0;
            }
        }
        self.scale[k] = 1.0;
    }

    /// Starts `slot` afresh (the asset in it was deleted, or the slot was reused): rate 0, and
    /// what was counted so far is treated as seen.
    pub fn forget(&mut self, counters: &RateCounters, slot: u32) {
        let i = slot as usize;
        if i < self.seen_bytes.len() {
            for v in &mut self.stored {
                v[i] = 0.0;
            }
            self.seen_bytes[i] = counters.totals(slot).1;
        }
    }

    /// Sets the rate of `slot` (views per hour) under every half-life. For tests and for
    /// restoring persisted rates.
    pub fn set_rate_per_h(&mut self, slot: u32, rate_per_h: f64) {
        let i = slot as usize;
        if self.seen_bytes.len() <= i {
            self.seen_bytes.resize(i + 1, 0);
            for v in &mut self.stored {
                v.resize(i + 1, 0.0);
            }
        }
        for (v, scale) in self.stored.iter_mut().zip(&self.scale) {
            v[i] = (rate_per_h / scale) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const HOUR_NS: u64 = 3_600_000_000_000;

    /// Equal to the precision of an `f32` rate folded a few thousand times.
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-5 * a.abs().max(b.abs()).max(1.0)
    }

    #[test]
    fn locate_covers_every_slot_once() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(1023), (0, 1023));
        assert_eq!(locate(1024), (1, 0));
        assert_eq!(locate(3071), (1, 2047));
        assert_eq!(locate(3072), (2, 0));
        let (s, i) = locate(u32::MAX);
        assert!(s < SEGMENTS);
        assert!(i < segment_slots(s));
        // Consecutive slots map to consecutive positions across segment boundaries.
        for slot in [1023u32, 3071, 7167, 1_000_000, u32::MAX - 1] {
            let (s0, i0) = locate(slot);
            let (s1, i1) = locate(slot + 1);
            if s0 == s1 {
                assert_eq!(i1, i0 + 1);
            } else {
                assert_eq!((s1, i1, i0 + 1), (s0 + 1, 0, segment_slots(s0)));
            }
        }
    }

    #[test]
    fn one_burst_decays_by_half_each_half_life() {
        let (counters, writers) = RateCounters::new(1);
        let mut rates = Rates::new(3600.0);
        let mut touched = Vec::new();
        for _ in 0..10 {
            writers[0].record(7, GIB);
        }
        rates.fold(&counters, HOUR_NS, |_| GIB, &mut touched);
        assert_eq!(touched, vec![7]);
        // One fold of one hour at half-life one hour: rate = 10 views · (1 − ½) / 1 h.
        let r0 = rates.rate_per_h(7);
        assert!(close(r0, 5.0), "{r0}");
        for k in 1..=5 {
            touched.clear();
            rates.fold(&counters, HOUR_NS, |_| GIB, &mut touched);
            assert!(touched.is_empty());
            assert!(close(rates.rate_per_h(7), r0 * 0.5f64.powi(k)));
        }
        assert_eq!(rates.rate_per_h(8), 0.0);
    }

    #[test]
    fn steady_views_converge_to_their_rate() {
        let (counters, writers) = RateCounters::new(1);
        let mut rates = Rates::new(600.0);
        let mut touched = Vec::new();
        // 3 views every 10 s = 1080 views per hour.
        for _ in 0..2000 {
            for _ in 0..3 {
                writers[0].record(0, 1000);
            }
            rates.fold(&counters, 10_000_000_000, |_| 1000, &mut touched);
        }
        assert!(
            close(rates.rate_per_h(0), 1080.0),
            "{}",
            rates.rate_per_h(0)
        );
    }

    #[test]
    fn ranges_count_by_bytes_over_size() {
        let (counters, writers) = RateCounters::new(1);
        let mut rates = Rates::new(3600.0);
        let mut touched = Vec::new();
        let size = 100 * (1 << 20);
        // 100 ranges of 1 MiB of a 100 MiB asset: one view. One whole GET of slot 2: one view.
        for _ in 0..100 {
            writers[0].record(1, 1 << 20);
        }
        writers[0].record(2, size);
        // A quarter of slot 3: a quarter view, however many requests it took.
        writers[0].record(3, size / 8);
        writers[0].record(3, size / 8);
        rates.fold(&counters, HOUR_NS, |_| size, &mut touched);
        assert_eq!(touched, vec![1, 2, 3]);
        assert!(close(rates.rate_per_h(1), rates.rate_per_h(2)));
        assert!(close(rates.rate_per_h(3), rates.rate_per_h(2) / 4.0));
        assert_eq!(counters.totals(1), (100, 100 << 20));
        assert_eq!(counters.totals(3), (2, size / 4));
    }

    #[test]
    fn shards_fold_into_one_rate() {
        let (counters, writers) = RateCounters::new(4);
        let mut rates = Rates::new(3600.0);
        let mut touched = Vec::new();
        for (k, w) in writers.iter().enumerate() {
            for _ in 0..=k {
                w.record(5000, 10);
            }
        }
        rates.fold(&counters, HOUR_NS, |_| 10, &mut touched);
        // 1 + 2 + 3 + 4 views in one hour at half-life one hour.
        assert!(close(rates.rate_per_h(5000), 5.0));
        assert_eq!(counters.totals(5000), (10, 100));
        assert_eq!(touched, vec![5000]);
    }

    #[test]
    fn shards_write_concurrently_without_losing_counts() {
        let (counters, writers) = RateCounters::new(2);
        let handles: Vec<_> = writers
            .into_iter()
            .map(|w| {
                std::thread::spawn(move || {
                    // Slots spread over several segments, so the writers also grow the table.
                    for n in 0..20_000u32 {
                        w.record((n * 7) % 50_000, 3);
                    }
                })
            })
            .collect();
        let mut rates = Rates::new(60.0);
        let mut touched = Vec::new();
        // Fold while they write: folding must not disturb them.
        for _ in 0..20 {
            rates.fold(&counters, 1_000_000, |_| 3, &mut touched);
        }
        for h in handles {
            h.join().expect("writer thread");
        }
        let total: u64 = (0..50_000).map(|s| counters.totals(s).0).sum();
        assert_eq!(total, 40_000);
    }

    #[test]
    fn batched_records_apply_when_full_at_flush_and_on_drop() {
        let (counters, mut writers) = RateCounters::new(1);
        let mut w = writers.pop().expect("one writer");
        w.record_batched(3, 100);
        w.record_batched(3, 50);
        assert_eq!(counters.totals(3), (0, 0), "not applied before a flush");
        assert_eq!(w.pending(), 2);
        w.flush();
        assert_eq!(counters.totals(3), (2, 150));
        assert_eq!(w.pending(), 0);
        // A full batch applies itself.
        for k in 0..RECORD_BATCH as u32 {
            w.record_batched(1000 + k, 1);
        }
        assert_eq!(w.pending(), 0);
        assert_eq!(counters.totals(1000 + RECORD_BATCH as u32 - 1), (1, 1));
        w.record_batched(5, 7);
        drop(w);
        assert_eq!(
            counters.totals(5),
            (1, 7),
            "dropping the writer applies what it held"
        );
    }

    #[test]
    fn table_grows_with_slots_and_keeps_counts() {
        let (counters, writers) = RateCounters::new(2);
        assert_eq!(counters.slots_allocated(), 0);
        writers[0].record(10, 1);
        assert_eq!(counters.slots_allocated(), 1024);
        let mut rates = Rates::new(3600.0);
        let mut touched = Vec::new();
        rates.fold(&counters, HOUR_NS, |_| 1, &mut touched);
        // A new, far slot on the other shard: a bigger segment appears; the old count stays.
        writers[1].record(100_000, 1);
        assert!(counters.slots_allocated() > 100_000);
        touched.clear();
        rates.fold(&counters, HOUR_NS, |_| 1, &mut touched);
        assert_eq!(touched, vec![100_000]);
        assert!(close(rates.rate_per_h(100_000), 0.5));
        assert!(close(rates.rate_per_h(10), 0.25));
        assert_eq!(counters.totals(10), (1, 1));
        // Growing ahead of the writers.
        counters.ensure_slots(1 << 20);
        assert!(counters.slots_allocated() >= 1 << 20);
        assert_eq!(counters.totals(10), (1, 1));
    }

    #[test]
    fn forget_starts_a_slot_afresh() {
        let (counters, writers) = RateCounters::new(1);
        let mut rates = Rates::new(3600.0);
        let mut touched = Vec::new();
        writers[0].record(1, 8);
        rates.fold(&counters, HOUR_NS, |_| 8, &mut touched);
        assert!(rates.rate_per_h(1) > 0.0);
        // Counted after the fold, then the slot is reused: none of it belongs to the new asset.
        writers[0].record(1, 8);
        rates.forget(&counters, 1);
        assert_eq!(rates.rate_per_h(1), 0.0);
        touched.clear();
        rates.fold(&counters, HOUR_NS, |_| 8, &mut touched);
        assert!(touched.is_empty());
        assert_eq!(rates.rate_per_h(1), 0.0);
    }

    #[test]
    fn several_half_lives_fold_together_and_report_the_rates_before() {
        let (counters, writers) = RateCounters::new(1);
        let mut rates = Rates::with_half_lives(&[1800.0, 3600.0, 7200.0]);
        let mut touched = Vec::new();
        writers[0].record(4, 10);
        rates.fold(&counters, HOUR_NS, |_| 10, &mut touched);
        // One view folded over one hour: (1 − 2^(−1 h / h_k)) per hour.
        assert!(close(rates.rate_per_h_at(0, 4), 0.75));
        assert!(close(rates.rate_per_h_at(1, 4), 0.5));
        assert!(close(rates.rate_per_h_at(2, 4), 1.0 - 0.5f64.sqrt()));
        assert_eq!(rates.rate_per_h(4), rates.rate_per_h_at(0, 4));
        rates.set_active(2);
        assert_eq!(rates.half_life_s(), 7200.0);
        assert_eq!(rates.rate_per_h(4), rates.rate_per_h_at(2, 4));
        rates.set_active(9);
        assert_eq!(rates.active(), 2, "out of range is ignored");
        // The next fold reports the rates decayed to now, before the new view is added.
        writers[0].record(4, 5);
        let mut seen = Vec::new();
        touched.clear();
        rates.fold_with(
            &counters,
            HOUR_NS,
            |_| 10,
            &mut touched,
            |f| {
                seen.push((f.slot, f.bytes, f.before_per_h.to_vec()));
            },
        );
        assert_eq!(seen.len(), 1);
        let (slot, bytes, before) = &seen[0];
        assert_eq!((*slot, *bytes), (4, 5));
        assert!(close(f64::from(before[0]), 0.75 / 4.0));
        assert!(close(f64::from(before[1]), 0.25));
        assert!(close(
            f64::from(before[2]),
            (1.0 - 0.5f64.sqrt()) * 0.5f64.sqrt()
        ));
        assert_eq!(touched, vec![4]);
    }

    #[test]
    fn zero_elapsed_keeps_counts_for_the_next_fold() {
        let (counters, writers) = RateCounters::new(1);
        let mut rates = Rates::new(3600.0);
        let mut touched = Vec::new();
        writers[0].record(0, 4);
        rates.fold(&counters, 0, |_| 4, &mut touched);
        assert_eq!(rates.rate_per_h(0), 0.0);
        rates.fold(&counters, HOUR_NS, |_| 4, &mut touched);
        assert!(close(rates.rate_per_h(0), 0.5));
    }
}
