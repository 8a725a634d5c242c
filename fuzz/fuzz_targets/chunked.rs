//! The input is a chunked request body (and whatever follows it on the connection), fed to
//! `ChunkedDecoder` whole, byte by byte, and split in two at every position (at 64 spread
//! positions for long inputs). Besides "nothing panics":
//! - every payload range is non-empty and inside the slice passed, every call on non-empty
//!   input before the end consumes something, `consumed` stops right after a payload run;
//! - `body_bytes` counts exactly the payload returned; once done, nothing more is consumed;
//! - the outcome (payload, where the body ends, error or incomplete) does not depend on how
//!   the bytes were split into reads.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reel_http::ChunkedDecoder;

/// Inputs up to this long are split at every position; longer ones at `SPREAD` positions.
const EVERY_SPLIT_MAX: usize = 512;
const SPREAD: usize = 64;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The body ended; `end` is the offset of the first byte after it.
    Done { payload: Vec<u8>, end: usize },
    /// The input ran out before the end of the body.
    Incomplete { payload: Vec<u8> },
    /// Rejected (always a 400), after this much payload had been returned.
    Rejected { payload: Vec<u8> },
}

fn decode(pieces: &[&[u8]]) -> Outcome {
    let mut dec = ChunkedDecoder::new();
    let mut payload = Vec::new();
    let mut offset = 0usize; // of the current piece within the whole input
    for piece in pieces {
        let mut pos = 0;
        while pos < piece.len() {
            let rest = &piece[pos..];
            let before = dec.body_bytes;
            match dec.decode(rest) {
                Err(e) => {
                    assert_eq!(e.status().0, 400, "{e}");
                    return Outcome::Rejected { payload };
                }
                Ok(step) => {
                    assert!(step.consumed <= rest.len(), "{step:?}");
                    let mut got = 0;
                    if let Some(r) = &step.data {
                        assert!(
                            r.start < r.end && r.end <= rest.len(),
                            "{r:?} of {}",
                            rest.len()
                        );
                        assert_eq!(step.consumed, r.end, "{step:?}");
                        assert!(!step.done);
                        payload.extend_from_slice(&rest[r.clone()]);
                        got = r.len() as u64;
                    }
                    assert_eq!(dec.body_bytes, before + got);
                    assert_eq!(dec.body_bytes, payload.len() as u64);
                    assert_eq!(dec.is_done(), step.done);
                    pos += step.consumed;
                    if step.done {
                        let after = dec.decode(&piece[pos..]);
                        assert!(
                            matches!(&after, Ok(s) if s.consumed == 0 && s.done && s.data.is_none()),
                            "{after:?}"
                        );
                        return Outcome::Done {
                            payload,
                            end: offset + pos,
                        };
                    }
                    assert!(step.consumed > 0, "no progress on {rest:?}");
                }
            }
        }
        offset += piece.len();
    }
    Outcome::Incomplete { payload }
}

fuzz_target!(|data: &[u8]| {
    let whole = decode(&[data]);
    if let Outcome::Done { end, payload } = &whole {
        assert!(*end >= 5 && *end <= data.len(), "end {end}"); // at least "0\r\n\r\n"
        assert!(data[..*end].ends_with(b"\r\n\r\n"));
        check_size_lines(&data[..*end], payload);
    }

    let bytes: Vec<&[u8]> = data.chunks(1).collect();
    assert_eq!(decode(&bytes), whole, "byte by byte");

    let cuts: Vec<usize> = if data.len() <= EVERY_SPLIT_MAX {
        (0..=data.len()).collect()
    } else {
        (0..=SPREAD).map(|i| data.len() * i / SPREAD).collect()
    };
    for cut in cuts {
        let split = decode(&[&data[..cut], &data[cut..]]);
        assert_eq!(split, whole, "split at {cut}");
    }
});

/// In a body the decoder accepted, every chunk-size line must be
/// `1*HEXDIG *( BWS ";" ... ) CRLF` (RFC 9112 §7.1.1): after the digits and optional
/// whitespace only `;` or the CR may follow. Walks the accepted body again, independently,
/// and also checks the payload it finds is the one the decoder returned.
fn check_size_lines(body: &[u8], payload: &[u8]) {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let digits = body[at..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit())
            .count();
        assert!(digits > 0, "size line without digits at {at}");
        let hex = std::str::from_utf8(&body[at..at + digits]).unwrap_or_default();
        let size = u64::from_str_radix(hex, 16).unwrap_or(u64::MAX);
        at += digits;
        while matches!(body[at], b' ' | b'\t') {
            at += 1;
        }
        assert!(
            matches!(body[at], b';' | b'\r'),
            "chunk size followed by {:?}: {:?}",
            body[at] as char,
            String::from_utf8_lossy(&body[..at + 1])
        );
        let line_end = at + body[at..].iter().position(|&b| b == b'\r').unwrap_or(0);
        at = line_end + 2;
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        data.extend_from_slice(&body[at..at + size]);
        at += size + 2;
    }
    assert_eq!(data, payload);
}
