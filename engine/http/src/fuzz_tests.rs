//! Property tests: no parser in this layer panics on any input, and the invariants the
//! serving loop relies on hold for whatever a client sends.

use proptest::prelude::*;

use super::chunked::ChunkedDecoder;
use super::plan::{plan, AssetMeta, Body, Segment};
use super::range::{parse_range, RangeOutcome};
use super::request::{parse_head, Limits, Method, Parsed};
use super::response::Boundary;
use super::route::route;

/// Bytes biased towards HTTP syntax so the parsers get past their first check often.
fn http_ish() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(&b"GET "[..]),
        Just(&b"HEAD "[..]),
        Just(&b"PUT "[..]),
        Just(&b"/assets/a"[..]),
        Just(&b" HTTP/1.1\r\n"[..]),
        Just(&b"Host: h\r\n"[..]),
        Just(&b"Range: bytes="[..]),
        Just(&b"Transfer-Encoding: chunked\r\n"[..]),
        Just(&b"Content-Length: 5\r\n"[..]),
        Just(&b"If-None-Match: \"abc\"\r\n"[..]),
        Just(&b"If-Range: \"abc\"\r\n"[..]),
        Just(&b"0-1,-5,7-\r\n"[..]),
        Just(&b"\r\n"[..]),
        Just(&b"5\r\nhello\r\n"[..]),
        Just(&b"0\r\n\r\n"[..]),
        Just(&b";ext=1"[..]),
        Just(&b"%2F"[..]),
        Just(&b"/"[..]),
        Just(&b".."[..]),
        Just(&b"info"[..]),
    ];
    prop::collection::vec(
        prop_oneof![
            piece.prop_map(|p| p.to_vec()),
            prop::collection::vec(any::<u8>(), 0..8)
        ],
        0..24,
    )
    .prop_map(|v| v.concat())
}

/// Requests assembled from plausible parts, then optionally damaged at one byte: most parse
/// to completion, so the routing, conditional, range and plan code behind the parser is reached.
fn request_like() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        6 => Just("GET"),
        2 => Just("HEAD"),
        1 => Just("PUT"),
        1 => Just("DELETE"),
        1 => Just("POST")
    ];
    let target = prop_oneof![
        Just("/assets/a".to_string()),
        Just("/assets/a/info".to_string()),
        Just("/assets?limit=3&after=b".to_string()),
        "/[!-~]{0,40}",
    ];
    let version = prop_oneof![8 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0"), 1 => Just("HTTP/2.0")];
    let range_value = prop_oneof![
        "bytes=[0-9]{0,6}-[0-9]{0,6}(,[0-9]{0,4}-[0-9]{0,4}){0,20}",
        "bytes=-[0-9]{1,25}",
        // Disjoint ascending ranges, so multipart plans are generated too.
        prop::collection::vec((1u64..5_000, 0u64..5_000), 1..18).prop_map(|gaps| {
            let mut at = 0;
            let specs: Vec<String> = gaps
                .iter()
                .map(|&(gap, len)| {
                    let start = at + gap;
                    at = start + len + 1;
                    format!("{start}-{}", start + len)
                })
                .collect();
            format!("bytes={}", specs.join(","))
        }),
        "[ -~]{0,30}",
    ];
    let header = prop_oneof![
        range_value.prop_map(|v| format!("Range: {v}")),
        Just("If-None-Match: \"abc\", W/\"x\"".to_string()),
        Just("If-Match: *".to_string()),
        Just("If-Range: \"abc\"".to_string()),
        Just("If-Modified-Since: Thu, 01 Jan 1970 00:00:01 GMT".to_string()),
        Just("Connection: close".to_string()),
        Just("Transfer-Encoding: chunked".to_string()),
        Just("Content-Length: 5".to_string()),
        Just("Expect: 100-continue".to_string()),
        "[A-Za-z-]{1,12}: [ -~]{0,30}",
    ];
    let headers = prop::collection::vec(header, 0..10);
    let damage = prop::option::weighted(0.2, (any::<prop::sample::Index>(), any::<u8>()));
    (method, target, version, headers, damage).prop_map(|(m, t, v, hs, damage)| {
        // Host first: without it every HTTP/1.1 request is a 400 and nothing past the parser runs.
        let mut s = format!("{m} {t} {v}\r\nHost: h\r\n");
        for h in hs {
            s.push_str(&h);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        let mut bytes = s.into_bytes();
        if let Some((at, byte)) = damage {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        bytes
    })
}

fn inputs() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        request_like(),
        http_ish(),
        prop::collection::vec(any::<u8>(), 0..512)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// A peer's response head (what a relay parses from a holder): never a panic, and a
    /// complete head's length lies within the bytes given.
    #[test]
    fn response_head_parser_never_panics(buf in inputs()) {
        let mut b = b"HTTP/1.1 206 x\r\n".to_vec();
        b.extend_from_slice(&buf);
        for input in [&buf[..], &b[..]] {
            if let Ok(Some((_, n))) = super::client::parse_response_head(input) {
                prop_assert!(n <= input.len());
            }
        }
    }

    #[test]
    fn head_parser_and_plan_never_panic(buf in inputs(), size in prop_oneof![0u64..100_000, any::<u64>()]) {
        if let Ok(Parsed::Complete(head)) = parse_head(&buf, &Limits::default()) {
            prop_assert!(head.head_len <= buf.len());
            let _ = route(head.target(&buf));
            let meta = AssetMeta {
                size,
                etag: "\"abc\"",
                last_modified_unix_s: 1,
                content_type: "video/mp4",
            };
            let p = plan(&head, &buf, &meta, 2, Boundary::from_seed(7));
            // The Content-Length sent is exactly the body the serving loop will stream.
            let text = String::from_utf8_lossy(&p.head);
            if head.method == Method::Get && matches!(p.status.0, 200 | 206) {
                let sent = text
                    .lines()
                    .find_map(|l| l.strip_prefix("Content-Length: "))
                    .and_then(|n| n.parse::<u64>().ok());
                prop_assert_eq!(sent, Some(p.body_len()));
            }
            // Every asset range the plan asks for lies inside the asset.
            if let Body::Ranges(segments) = &p.body {
                for s in segments {
                    match s {
                        Segment::Asset(r) => prop_assert!(r.start <= r.end_inclusive && r.end_inclusive < size),
                        Segment::Literal(r) => prop_assert!(r.end <= p.literals.len()),
                    }
                }
            }
        }
    }

    #[test]
    fn chunked_decoder_never_panics(buf in inputs(), cut in 0usize..512) {
        let cut = cut.min(buf.len());
        let mut dec = ChunkedDecoder::new();
        'outer: for piece in [&buf[..cut], &buf[cut..]] {
            let mut pos = 0;
            while pos < piece.len() {
                match dec.decode(&piece[pos..]) {
                    Ok(step) => {
                        if let Some(r) = &step.data {
                            prop_assert!(!r.is_empty() && r.end <= piece.len() - pos);
                        }
                        if step.done { break 'outer; }
                        prop_assert!(step.consumed > 0);
                        pos += step.consumed;
                    }
                    Err(e) => { prop_assert_eq!(e.status().0, 400); break 'outer; }
                }
            }
        }
    }

    #[test]
    fn range_parser_never_panics(buf in inputs(), size in any::<u64>()) {
        match parse_range(&buf, size) {
            RangeOutcome::Single(r) => prop_assert!(r.start <= r.end_inclusive && r.end_inclusive < size),
            RangeOutcome::Multi(v) => {
                prop_assert!(v.len() >= 2 && v.len() <= super::range::RANGES_MAX);
                for r in v { prop_assert!(r.start <= r.end_inclusive && r.end_inclusive < size); }
            }
            RangeOutcome::Full | RangeOutcome::Unsatisfiable => {}
        }
    }

    #[test]
    fn router_never_panics(target in "\\PC{0,300}", raw in inputs()) {
        let _ = route(&target);
        let _ = route(&String::from_utf8_lossy(&raw));
    }

    /// Model test: any payload, chunked with arbitrary chunk sizes and extensions and cut at an
    /// arbitrary point, decodes back to itself.
    #[test]
    fn chunked_round_trips(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 0..8),
        ext in prop::bool::ANY,
        upper in prop::bool::ANY,
        cut in any::<prop::sample::Index>(),
    ) {
        let mut wire = Vec::new();
        for c in &chunks {
            let size = if upper { format!("{:X}", c.len()) } else { format!("{:x}", c.len()) };
            wire.extend_from_slice(size.as_bytes());
            if ext {
                wire.extend_from_slice(b";name=\"v\"");
            }
            wire.extend_from_slice(b"\r\n");
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\nTrailer: t\r\n\r\nNEXT");
        let at = cut.index(wire.len() + 1);
        let got = super::chunked::decode_pieces(&[&wire[..at], &wire[at..]]);
        prop_assert_eq!(got, Ok((chunks.concat(), b"NEXT".to_vec(), true)));
    }
}
