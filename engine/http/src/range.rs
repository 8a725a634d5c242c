//! `Range: bytes=…` against a representation of known size (RFC 9110 §14).
//!
//! Policy decisions, all allowed by §14.2:
//! - A header that does not parse (unknown unit, bad syntax, `last < first`) is ignored and
//!   the whole representation is served with 200, as the RFC requires.
//! - Unsatisfiable specs inside a list are dropped; if none remain, the answer is 416.
//! - Multiple satisfiable ranges are served as `multipart/byteranges` only when there are at
//!   most [`RANGES_MAX`] of them and no two overlap (or touch); otherwise the header is
//!   ignored and the whole representation is served. This bounds the per-request work an
//!   attacker can cause ("many small or overlapping ranges", §17.15) without the guesswork of
//!   coalescing, and parts keep the client's order, as the client asked for them.

/// Most range specs honored in one request; more makes us ignore the header.
pub const RANGES_MAX: usize = 16;

/// An inclusive byte range within a representation; `start <= end_inclusive < size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end_inclusive: u64,
}

impl ByteRange {
    /// Saturating, so a hand-built range (the fields are public) cannot make this panic.
    pub fn len(&self) -> u64 {
        self.end_inclusive
            .saturating_sub(self.start)
            .saturating_add(1)
    }

    /// Never true: a `ByteRange` holds at least one byte. Present for clippy's `len` rule.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The whole of a non-empty representation.
    pub fn full(size: u64) -> Option<ByteRange> {
        size.checked_sub(1).map(|end_inclusive| ByteRange {
            start: 0,
            end_inclusive,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeOutcome {
    /// Serve the whole representation (no usable Range header): 200.
    Full,
    /// One range: 206 with `Content-Range`.
    Single(ByteRange),
    /// Several non-overlapping ranges in request order: 206 `multipart/byteranges`.
    Multi(Vec<ByteRange>),
    /// Valid syntax, nothing satisfiable: 416 with `Content-Range: bytes */size`.
    Unsatisfiable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spec {
    /// `first-last` or `first-` (`last` = u64::MAX).
    Int { first: u64, last: u64 },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

/// Evaluates a `Range` header value against a representation of `size` bytes.
pub fn parse_range(value: &[u8], size: u64) -> RangeOutcome {
    let Some(specs) = parse_specs(value) else {
        return RangeOutcome::Full;
    };
    if specs.len() > RANGES_MAX {
        return RangeOutcome::Full;
    }
    let mut ranges: Vec<ByteRange> = Vec::with_capacity(specs.len());
    for spec in specs {
        if let Some(r) = resolve(spec, size) {
            ranges.push(r);
        }
    }
    match ranges.len() {
        0 => RangeOutcome::Unsatisfiable,
        1 => RangeOutcome::Single(ranges[0]),
        _ => {
            let mut sorted = ranges.clone();
            sorted.sort_by_key(|r| r.start);
            // Touching ranges count as overlapping too: they would be cheaper as one part, and
            // serving them separately is exactly the fragmentation §17.15 warns about.
            let overlapping = sorted
                .windows(2)
                .any(|w| w[1].start <= w[0].end_inclusive.saturating_add(1));
            if overlapping {
                RangeOutcome::Full
            } else {
                RangeOutcome::Multi(ranges)
            }
        }
    }
}

/// The satisfiable part of one spec (§14.1.2), clamped to the representation.
fn resolve(spec: Spec, size: u64) -> Option<ByteRange> {
    let last_byte = size.checked_sub(1)?; // nothing is satisfiable in an empty representation
    match spec {
        Spec::Int { first, last } => (first < size).then(|| ByteRange {
            start: first,
            end_inclusive: last.min(last_byte),
        }),
        Spec::Suffix(0) => None,
        Spec::Suffix(n) => Some(ByteRange {
            start: size.saturating_sub(n),
            end_inclusive: last_byte,
        }),
    }
}

/// `bytes=spec, spec, …`; `None` if the value is not valid syntax. Parsing stops (and the
/// header is ignored) as soon as more than [`RANGES_MAX`] specs are seen, so a huge header
/// costs no more than a short one.
fn parse_specs(value: &[u8]) -> Option<Vec<Spec>> {
    let eq = value.iter().position(|&b| b == b'=')?;
    let (unit, list) = (&value[..eq], &value[eq + 1..]);
    if !unit.eq_ignore_ascii_case(b"bytes") {
        return None;
    }
    let mut specs = Vec::new();
    for element in super::request::list_elements(list) {
        if specs.len() == RANGES_MAX {
            // One more than we honor: the caller serves Full.
            specs.push(Spec::Suffix(0));
            return Some(specs);
        }
        specs.push(parse_spec(element)?);
    }
    // `1#range-spec`: at least one element.
    (!specs.is_empty()).then_some(specs)
}

fn parse_spec(s: &[u8]) -> Option<Spec> {
    let dash = s.iter().position(|&b| b == b'-')?;
    let (first, last) = (&s[..dash], &s[dash + 1..]);
    if first.is_empty() {
        return Some(Spec::Suffix(digits_saturating(last)?));
    }
    let first = digits_saturating(first)?;
    let last = if last.is_empty() {
        u64::MAX
    } else {
        digits_saturating(last)?
    };
    // §14.1.1: a range with last < first is invalid, which invalidates the whole header.
    (first <= last).then_some(Spec::Int { first, last })
}

/// `1*DIGIT`, saturating at u64::MAX: a position past any real size means the same as a huge
/// one (clamped or unsatisfiable), so overflow needs no error of its own.
fn digits_saturating(b: &[u8]) -> Option<u64> {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end_inclusive: u64) -> ByteRange {
        ByteRange {
            start,
            end_inclusive,
        }
    }

    #[test]
    fn rfc_9110_examples_on_10000_bytes() {
        use RangeOutcome::*;
        // §14.1.2's examples, for a 10000-byte representation.
        let table: &[(&str, RangeOutcome)] = &[
            ("bytes=0-499", Single(r(0, 499))),
            ("bytes=500-999", Single(r(500, 999))),
            ("bytes=-500", Single(r(9500, 9999))),
            ("bytes=9500-", Single(r(9500, 9999))),
            ("bytes=0-0,-1", Multi(vec![r(0, 0), r(9999, 9999)])),
            (
                "bytes= 0-999, 4500-5499, -1000",
                Multi(vec![r(0, 999), r(4500, 5499), r(9000, 9999)]),
            ),
            // "bytes=500-600,601-999" and "500-700,601-999" are the same bytes; both touch or
            // overlap, so we serve the whole representation.
            ("bytes=500-600,601-999", Full),
            ("bytes=500-700,601-999", Full),
        ];
        for (value, want) in table {
            assert_eq!(&parse_range(value.as_bytes(), 10_000), want, "{value}");
        }
    }

    #[test]
    fn edge_cases() {
        use RangeOutcome::*;
        let table: &[(&str, u64, RangeOutcome)] = &[
            ("bytes=0-", 1, Single(r(0, 0))),
            ("bytes=0-99", 50, Single(r(0, 49))),
            ("bytes=0-18446744073709551615", 50, Single(r(0, 49))),
            ("bytes=0-99999999999999999999999", 50, Single(r(0, 49))),
            ("bytes=-99999999999999999999999", 50, Single(r(0, 49))),
            ("bytes=-100", 50, Single(r(0, 49))),
            ("bytes=49-49", 50, Single(r(49, 49))),
            ("BYTES=1-2", 50, Single(r(1, 2))),
            ("bytes=1-2,", 50, Single(r(1, 2))),
            ("bytes=,1-2", 50, Single(r(1, 2))),
            ("bytes=50-", 50, Unsatisfiable),
            ("bytes=50-60", 50, Unsatisfiable),
            ("bytes=-0", 50, Unsatisfiable),
            ("bytes=99999999999999999999999-", 50, Unsatisfiable),
            ("bytes=0-0", 0, Unsatisfiable),
            ("bytes=-5", 0, Unsatisfiable),
            ("bytes=0-", 0, Unsatisfiable),
            // Unsatisfiable specs are dropped when another one is satisfiable.
            ("bytes=100-200,0-9", 50, Single(r(0, 9))),
            ("bytes=100-200,-0", 50, Unsatisfiable),
            // Out of order but disjoint: served in request order.
            ("bytes=20-29,0-9", 50, Multi(vec![r(20, 29), r(0, 9)])),
            // Invalid syntax: ignore the header.
            ("bytes=5-1", 50, Full),
            ("bytes=0-1,5-1", 50, Full),
            ("bytes=", 50, Full),
            ("bytes=,", 50, Full),
            ("bytes=-", 50, Full),
            ("bytes=a-b", 50, Full),
            ("bytes=1-2-3", 50, Full),
            ("bytes=+1-2", 50, Full),
            ("bytes=1 -2", 50, Full),
            ("bytes 0-1", 50, Full),
            ("items=0-1", 50, Full),
            ("", 50, Full),
            ("=0-1", 50, Full),
        ];
        for (value, size, want) in table {
            assert_eq!(
                &parse_range(value.as_bytes(), *size),
                want,
                "{value} on {size}"
            );
        }
    }

    #[test]
    fn range_count_limit() {
        let specs = |n: u64| {
            let list: Vec<String> = (0..n)
                .map(|i| format!("{}-{}", i * 10, i * 10 + 1))
                .collect();
            format!("bytes={}", list.join(","))
        };
        match parse_range(specs(16).as_bytes(), 1000) {
            RangeOutcome::Multi(v) => assert_eq!(v.len(), 16),
            other => panic!("16 ranges → {other:?}"),
        }
        assert_eq!(parse_range(specs(17).as_bytes(), 1000), RangeOutcome::Full);
        // Too many specs is Full even when the excess would be unsatisfiable or malformed.
        let huge = format!("bytes={}", "0-0,".repeat(100_000));
        assert_eq!(parse_range(huge.as_bytes(), 1000), RangeOutcome::Full);
    }
}
