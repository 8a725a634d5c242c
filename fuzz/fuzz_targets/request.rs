//! The bytes a client sends on one connection, fed to the node's HTTP layer the way the serving
//! loop will: heads parsed incrementally as reads arrive, each request routed and (for GET/HEAD)
//! planned, bodies skipped (`Content-Length`) or decoded (`chunked`), pipelined requests
//! handled after them, and the connection closed after an error or `Connection: close`.
//!
//! Input layout: `[config, cut_lo, cut_hi, wire...]`.
//! - `config` bits 0-1: asset size (0, 1, 4096 or 10 MiB); bit 2: the stored content type is
//!   one with a CR/LF in it (must never reach a response head); bits 3-7 (n): the reads
//!   after the first are n² bytes (0: everything at once; at most 64 reads).
//! - `cut`: where the first read ends (mod `wire.len() + 1`).
//!
//! Checked, besides "nothing panics":
//! - every parsed head is self-consistent (ranges inside the head, no CL+TE framing, the head
//!   parses identically from exactly its own bytes and needs more one byte short of them);
//! - every response head rendered (plans and error answers) parses as HTTP/1.1 with the plan's
//!   status, its `Content-Length` equals the body the serving loop will send, asset ranges lie
//!   inside the asset, literal ranges inside `plan.literals`, status-specific fields are right;
//! - a HEAD gets the head a GET would (unless Range made the GET partial); keep-alive follows
//!   `Connection` and the version; routing errors keep the connection, parse errors close it;
//! - chunked payload ranges are non-empty and inside the slice given, every call progresses;
//! - the whole exchange (every request, response status, body length and chunked payload) is
//!   the same whether the bytes arrive in one read, at the fuzz-chosen split, or byte by byte.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reel_http::response::Boundary;
use reel_http::{
    parse_head, plan, plan_error, route, AssetMeta, Body, BodyFraming, ChunkedDecoder, HttpError,
    Limits, Method, Parsed, Plan, RequestHead, Route, Segment, Version,
};

const SIZES: [u64; 4] = [0, 1, 4096, 10 << 20];
const ETAG: &str = "\"abc\"";
/// Sun, 06 Nov 1994 08:49:37 GMT (what the seeds' `If-Modified-Since` lines use).
const LAST_MODIFIED: u64 = 784_111_777;
const NOW: u64 = 784_111_800;
const CONTENT_TYPES: [&str; 2] = ["video/mp4", "video/mp4\r\nSet-Cookie: injected=1"];
/// Above this many bytes the byte-by-byte replay is skipped (it is quadratic in the head size).
const BYTEWISE_MAX: usize = 512;
/// At most this many reads after the first (bounds the cost of small read sizes).
const READS_MAX: usize = 64;

/// What the server did, in order; compared across different read patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Request {
        method: Method,
        version: Version,
        head_len: usize,
        framing: BodyFraming,
        keep_alive: bool,
        expect_continue: bool,
        /// Status the node answers with (200 stands for "handled by a non-plan endpoint").
        status: u16,
        body_len: u64,
    },
    /// A complete chunked body and its payload.
    Chunked(Vec<u8>),
    /// A rejected head or body; the connection closes.
    Error(u16),
    /// The client stopped sending in the middle of a head or body.
    Truncated,
}

enum State {
    Head,
    Skip(u64),
    Chunked(ChunkedDecoder, Vec<u8>),
}

struct Conn<'a> {
    wire: &'a [u8],
    meta: AssetMeta<'a>,
    limits: Limits,
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let config = data[0];
    let cut = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let wire = &data[3..];
    let conn = Conn {
        wire,
        meta: AssetMeta {
            size: SIZES[usize::from(config & 3)],
            etag: ETAG,
            last_modified_unix_s: LAST_MODIFIED,
            content_type: CONTENT_TYPES[usize::from(config >> 2 & 1)],
        },
        limits: Limits::default(),
    };

    let cut = cut % (wire.len() + 1);
    let whole = conn.serve(&[wire.len()]);
    if trace() {
        eprintln!("size {}, first read {cut} bytes: {whole:?}", conn.meta.size);
    }

    let step = usize::from(config >> 3);
    let step = if step == 0 {
        wire.len().max(1)
    } else {
        (step * step).max(wire.len() / READS_MAX + 1)
    };
    let mut reads = vec![cut];
    let mut at = cut;
    while at < wire.len() {
        at = (at + step).min(wire.len());
        reads.push(at);
    }
    let split = conn.serve(&reads);
    assert_same(&whole, &split, "split reads");

    if wire.len() <= BYTEWISE_MAX {
        let reads: Vec<usize> = (0..=wire.len()).collect();
        let bytewise = conn.serve(&reads);
        assert_same(&whole, &bytewise, "byte-by-byte reads");
    }
});

/// The exchanges must agree, except that a head too large for the limit may be noticed as
/// such (431) on a partial read before the full buffer shows some other error.
fn assert_same(whole: &[Event], other: &[Event], how: &str) {
    if whole == other {
        return;
    }
    let n = whole.len();
    let last_errors = (n == other.len() && n > 0 && whole[..n - 1] == other[..n - 1])
        .then(|| match (&whole[n - 1], &other[n - 1]) {
            (Event::Error(a), Event::Error(b)) => Some((*a, *b)),
            _ => None,
        })
        .flatten();
    let tolerated = match last_errors {
        Some((a, b)) if a == 431 || b == 431 => true,
        _ => false,
    };
    assert!(
        tolerated,
        "{how} differ from one read:\n  one read: {whole:?}\n  {how}: {other:?}"
    );
}

/// `REEL_FUZZ_TRACE=1` prints what the server did with each input (to see what seeds reach:
/// `REEL_FUZZ_TRACE=1 cargo fuzz run request fuzz/corpus/request/*`).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| env_flag("REEL_FUZZ_TRACE"))
}

fn env_flag(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| v == "1")
}

/// A 505 must name a well-formed version the node does not speak: the third token of the
/// request line (RFC 9112 §3: `method SP request-target SP HTTP-version`), once the line end has
/// arrived. (The fuzzer once found 505 decided from the last space-separated token, so the
/// status depended on how the line was split into reads; `corpus/request/found-*` keep it.)
fn check_version_error(buf: &[u8]) {
    let Some(end) = buf.iter().position(|&b| b == b'\r' || b == b'\n') else {
        return;
    };
    let mut parts = buf[..end].splitn(3, |&b| b == b' ');
    let version = parts.nth(2).unwrap_or_default();
    let ok = matches!(
        version,
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit()
    ) || matches!(version, [b'H', b'T', b'T', b'P', b'/', major] if major.is_ascii_digit());
    assert!(
        ok,
        "505 for a request line whose version is {:?}",
        String::from_utf8_lossy(version)
    );
}

impl Conn<'_> {
    /// Runs the connection with reads ending at the offsets in `reads` (ascending; the last
    /// one is `wire.len()`).
    fn serve(&self, reads: &[usize]) -> Vec<Event> {
        let wire = self.wire;
        let mut events = Vec::new();
        let mut start = 0usize; // first byte not yet consumed
        let mut state = State::Head;
        for &arrived in reads {
            loop {
                match &mut state {
                    State::Head => {
                        let buf = &wire[start..arrived];
                        match parse_head(buf, &self.limits) {
                            Ok(Parsed::NeedMore) => {
                                assert!(buf.len() < self.limits.head_bytes_max);
                                break;
                            }
                            Err(e) => {
                                check_parse_error(&e);
                                if e.status().0 == 505 {
                                    check_version_error(buf);
                                }
                                events.push(Event::Error(e.status().0));
                                return events;
                            }
                            Ok(Parsed::Complete(head)) => {
                                self.check_head(&head, buf);
                                let (status, body_len, close) = self.respond(&head, buf);
                                events.push(Event::Request {
                                    method: head.method,
                                    version: head.version,
                                    head_len: head.head_len,
                                    framing: head.body,
                                    keep_alive: head.keep_alive,
                                    expect_continue: head.expect_continue,
                                    status,
                                    body_len,
                                });
                                start += head.head_len;
                                state = match head.body {
                                    BodyFraming::None => State::Head,
                                    BodyFraming::Length(0) => State::Head,
                                    BodyFraming::Length(n) => State::Skip(n),
                                    BodyFraming::Chunked => {
                                        State::Chunked(ChunkedDecoder::new(), Vec::new())
                                    }
                                };
                                if close {
                                    // The response says `Connection: close`: nothing after
                                    // the body (if we even read it) is looked at.
                                    return events;
                                }
                            }
                        }
                    }
                    State::Skip(remaining) => {
                        let avail = (arrived - start) as u64;
                        if avail == 0 {
                            break;
                        }
                        let take = (*remaining).min(avail);
                        start += take as usize;
                        *remaining -= take;
                        if *remaining == 0 {
                            state = State::Head;
                        }
                    }
                    State::Chunked(dec, payload) => {
                        if start == arrived {
                            break;
                        }
                        let piece = &wire[start..arrived];
                        let before = dec.body_bytes;
                        match dec.decode(piece) {
                            Err(e) => {
                                assert_eq!(e.status().0, 400, "{e}");
                                assert!(e.must_close());
                                events.push(Event::Error(400));
                                return events;
                            }
                            Ok(step) => {
                                assert!(step.consumed <= piece.len(), "{step:?}");
                                assert!(step.consumed > 0, "no progress on {piece:?}");
                                let got = match &step.data {
                                    Some(r) => {
                                        assert!(
                                            r.start < r.end && r.end <= piece.len(),
                                            "payload range {r:?} outside {} bytes",
                                            piece.len()
                                        );
                                        assert_eq!(step.consumed, r.end, "{step:?}");
                                        assert!(!step.done);
                                        payload.extend_from_slice(&piece[r.clone()]);
                                        r.len() as u64
                                    }
                                    None => 0,
                                };
                                assert_eq!(dec.body_bytes, before + got);
                                assert_eq!(dec.is_done(), step.done);
                                start += step.consumed;
                                if step.done {
                                    assert_eq!(dec.body_bytes, payload.len() as u64);
                                    // Once done, the decoder leaves the next request alone.
                                    let again = dec.decode(&wire[start..arrived]);
                                    assert!(
                                        matches!(&again, Ok(s) if s.consumed == 0 && s.done && s.data.is_none()),
                                        "{again:?}"
                                    );
                                    events.push(Event::Chunked(std::mem::take(payload)));
                                    state = State::Head;
                                }
                            }
                        }
                    }
                }
            }
        }
        if !(matches!(state, State::Head) && start == wire.len()) {
            events.push(Event::Truncated);
        }
        events
    }

    fn check_head(&self, head: &RequestHead, buf: &[u8]) {
        let n = head.head_len;
        assert!(n > 0 && n <= buf.len() && n <= self.limits.head_bytes_max);
        assert!(buf[..n].ends_with(b"\n"), "head does not end in a line end");
        let inside = |r: &std::ops::Range<usize>| r.start <= r.end && r.end <= n;
        assert!(inside(&head.target) && !head.target.is_empty());
        let mut te = false;
        let mut cl = false;
        for h in &head.headers {
            assert!(inside(&h.name) && inside(&h.value) && !h.name.is_empty());
            let name = &buf[h.name.clone()];
            te |= name.eq_ignore_ascii_case(b"transfer-encoding");
            cl |= name.eq_ignore_ascii_case(b"content-length");
        }
        // Request-smuggling guards: framing comes from exactly one mechanism.
        assert!(
            !(te && cl),
            "accepted both Transfer-Encoding and Content-Length"
        );
        match head.body {
            BodyFraming::Chunked => assert!(te && head.version == Version::Http11),
            BodyFraming::Length(_) => assert!(cl && !te),
            BodyFraming::None => assert!(!te),
        }
        if head.expect_continue {
            assert_eq!(head.version, Version::Http11);
        }
        // RFC 9112 §9.3, computed independently: `close` ends the connection; HTTP/1.0
        // persists only with `keep-alive`.
        let tokens = |want: &[u8]| {
            head.headers.iter().any(|h| {
                buf[h.name.clone()].eq_ignore_ascii_case(b"connection")
                    && buf[h.value.clone()]
                        .split(|&b| b == b',')
                        .any(|t| trim_ows(t).eq_ignore_ascii_case(want))
            })
        };
        if tokens(b"close") || (head.version == Version::Http10 && !tokens(b"keep-alive")) {
            assert!(!head.keep_alive, "keep-alive despite Connection/version");
        } else {
            assert!(head.keep_alive);
        }
        // The head is a function of its own bytes: the same parse from exactly those bytes,
        // and one byte fewer is still incomplete (a prefix of a valid head is never an error).
        let exact = parse_head(&buf[..n], &self.limits);
        assert_eq!(exact, Ok(Parsed::Complete(head.clone())));
        let short = parse_head(&buf[..n - 1], &self.limits);
        assert_eq!(short, Ok(Parsed::NeedMore), "head minus its last byte");
    }

    /// Routes and answers one request; returns (status, body bytes sent, close after).
    fn respond(&self, head: &RequestHead, buf: &[u8]) -> (u16, u64, bool) {
        let head_only = head.method == Method::Head;
        let close = !head.keep_alive;
        // Planning does not look at the target, so plan every GET/HEAD (and check the 405 for
        // the others) whatever it routes to: the fuzzer's mutations of the target then do not
        // hide the conditional/range code.
        let p = plan(head, buf, &self.meta, NOW, Boundary::from_seed(7));
        self.check_plan(&p, head, buf);
        let error = |e: HttpError| {
            let p = plan_error(&e, NOW, head_only, close);
            check_error_plan(&p, &e, head_only, close);
            (p.status.0, p.body_len(), p.close)
        };
        match route(head.target(buf)) {
            Err(e) => {
                assert!(matches!(e.status().0, 400 | 404), "{e:?}");
                assert!(!e.must_close(), "routing errors keep the framing: {e:?}");
                error(e)
            }
            Ok(r) => match r.check_method(head.method) {
                Err(e) => {
                    assert_eq!(e.status().0, 405);
                    error(e)
                }
                Ok(()) => match r {
                    Route::Asset(id) if matches!(head.method, Method::Get | Method::Head) => {
                        assert!(!id.is_empty());
                        (p.status.0, p.body_len(), p.close)
                    }
                    // Ingest, delete, metadata, listing: other handlers, not this layer's.
                    _ => (200, 0, close),
                },
            },
        }
    }

    fn check_plan(&self, p: &Plan, head: &RequestHead, buf: &[u8]) {
        let size = self.meta.size;
        let resp = ParsedResponse::new(&p.head);
        assert_eq!(resp.status, p.status.0);
        assert!(resp.no_injection());
        assert_eq!(p.close, !head.keep_alive);
        assert_eq!(resp.get("connection").is_some(), p.close);
        let mut asset_segments = Vec::new();
        if let Body::Ranges(segments) = &p.body {
            assert!(!segments.is_empty());
            for s in segments {
                match s {
                    Segment::Asset(r) => {
                        assert!(
                            r.start <= r.end_inclusive && r.end_inclusive < size,
                            "asset range {r:?} outside an asset of {size} bytes"
                        );
                        asset_segments.push(*r);
                    }
                    Segment::Literal(r) => assert!(r.start < r.end && r.end <= p.literals.len()),
                }
            }
        }
        let is_get = head.method == Method::Get;
        let content_length = resp.content_length();
        match p.status.0 {
            200 => {
                assert!(matches!(head.method, Method::Get | Method::Head));
                assert_eq!(content_length, Some(size));
                assert_eq!(resp.body_bytes, 0);
                if is_get && size > 0 {
                    assert_eq!(asset_segments.len(), 1);
                    assert_eq!(
                        (asset_segments[0].start, asset_segments[0].len()),
                        (0, size)
                    );
                } else {
                    assert_eq!(p.body, Body::Empty);
                }
                assert!(resp.get("content-range").is_none());
                let ct = self.expected_content_type();
                assert_eq!(resp.get("content-type"), Some(ct.as_bytes()));
            }
            206 => {
                // Range is honored for GET only.
                assert!(is_get, "206 for {:?}", head.method);
                assert!(head.header_once(buf, "range").is_some());
                assert_eq!(resp.body_bytes, 0);
                assert_eq!(content_length, Some(p.body_len()));
                let Body::Ranges(segments) = &p.body else {
                    panic!("206 without a body")
                };
                if asset_segments.len() == 1 && segments.len() == 1 {
                    let r = asset_segments[0];
                    let want = format!("bytes {}-{}/{size}", r.start, r.end_inclusive);
                    assert_eq!(resp.get("content-range"), Some(want.as_bytes()));
                    assert!(p.literals.is_empty());
                    let ct = self.expected_content_type();
                    assert_eq!(resp.get("content-type"), Some(ct.as_bytes()));
                } else {
                    self.check_multipart(p, &resp, segments, &asset_segments);
                }
            }
            304 => {
                assert!(matches!(head.method, Method::Get | Method::Head));
                assert_eq!(p.body, Body::Empty);
                assert_eq!(content_length, None);
                assert!(resp.get("content-type").is_none());
                assert_eq!(resp.get("etag"), Some(ETAG.as_bytes()));
                assert_eq!(resp.body_bytes, 0);
            }
            416 => {
                assert!(is_get);
                assert_eq!(p.body, Body::Empty);
                let want = format!("bytes */{size}");
                assert_eq!(resp.get("content-range"), Some(want.as_bytes()));
                assert_eq!(content_length, Some(resp.body_bytes as u64));
            }
            412 => {
                assert!(matches!(head.method, Method::Get | Method::Head));
                check_error_plan(p, &HttpError::PreconditionFailed, !is_get, !head.keep_alive);
            }
            405 => {
                assert!(matches!(head.method, Method::Put | Method::Delete));
                assert!(resp.get("allow").is_some());
                assert_eq!(content_length, Some(resp.body_bytes as u64));
            }
            other => panic!("plan answered {other}"),
        }
        if matches!(p.status.0, 200 | 206 | 304) {
            assert_eq!(resp.get("etag"), Some(ETAG.as_bytes()));
            assert!(resp.get("last-modified").is_some());
        }
        if head.method == Method::Head {
            assert_eq!(p.body, Body::Empty, "a HEAD response has no body");
            // RFC 9110 §9.3.2: the same head as a GET would get, unless Range made the GET
            // partial (Range applies to GET only).
            let mut get = head.clone();
            get.method = Method::Get;
            let g = plan(&get, buf, &self.meta, NOW, Boundary::from_seed(7));
            if !matches!(g.status.0, 206 | 416) {
                assert_eq!(g.status, p.status);
                assert!(g.head.starts_with(&p.head), "HEAD and GET heads differ");
                assert_eq!(g.close, p.close);
            }
        }
    }

    /// The stored type if it is a valid field value, else the generic one.
    fn expected_content_type(&self) -> &str {
        if self.meta.content_type.contains(['\r', '\n']) {
            "application/octet-stream"
        } else {
            self.meta.content_type
        }
    }

    fn check_multipart(
        &self,
        p: &Plan,
        resp: &ParsedResponse,
        segments: &[Segment],
        assets: &[reel_http::ByteRange],
    ) {
        let size = self.meta.size;
        let boundary = Boundary::from_seed(7);
        let ct = resp.get("content-type").unwrap_or_default();
        let want_ct = format!("multipart/byteranges; boundary={}", boundary.as_str());
        assert_eq!(ct, want_ct.as_bytes());
        assert!(resp.get("content-range").is_none());
        assert!((2..=reel_http::range::RANGES_MAX).contains(&assets.len()));
        // Parts: literal, asset, literal, asset, ..., closing literal; literals tile the buffer.
        assert_eq!(segments.len(), 2 * assets.len() + 1);
        let mut next = 0;
        for (i, s) in segments.iter().enumerate() {
            match (i % 2, s) {
                (0, Segment::Literal(r)) => {
                    assert_eq!(r.start, next);
                    next = r.end;
                    let text = &p.literals[r.clone()];
                    if let Some(Segment::Asset(a)) = segments.get(i + 1) {
                        let want = format!(
                            "\r\nContent-Range: bytes {}-{}/{size}\r\n\r\n",
                            a.start, a.end_inclusive
                        );
                        assert!(text.ends_with(want.as_bytes()), "{text:?}");
                        let ct = format!("\r\nContent-Type: {}\r\n", self.expected_content_type());
                        assert!(contains(text, ct.as_bytes()), "{text:?}");
                    } else {
                        let want = format!("\r\n--{}--\r\n", boundary.as_str());
                        assert_eq!(text, want.as_bytes());
                    }
                }
                (1, Segment::Asset(_)) => {}
                _ => panic!("multipart segments out of order: {segments:?}"),
            }
        }
        assert_eq!(next, p.literals.len());
        // No two parts overlap or touch (the range policy), so the work is bounded by the size.
        let mut sorted = assets.to_vec();
        sorted.sort_by_key(|r| r.start);
        for w in sorted.windows(2) {
            assert!(w[0].end_inclusive + 1 < w[1].start, "{assets:?}");
        }
    }
}

fn check_parse_error(e: &HttpError) {
    assert!(
        matches!(e.status().0, 400 | 405 | 417 | 431 | 501 | 505),
        "{e:?} → {}",
        e.status().0
    );
    for head_only in [false, true] {
        let p = plan_error(e, NOW, head_only, true);
        check_error_plan(&p, e, head_only, true);
    }
}

/// An error answer: the status of the error, a one-line body inside `head` whose length is
/// the `Content-Length` (left out for HEAD), `Allow` for 405s, `Connection: close` when due.
fn check_error_plan(p: &Plan, e: &HttpError, head_only: bool, close: bool) {
    let resp = ParsedResponse::new(&p.head);
    assert!(resp.no_injection());
    assert_eq!(p.status, e.status());
    assert_eq!(resp.status, e.status().0);
    assert_eq!(p.body, Body::Empty);
    assert_eq!(p.close, close || e.must_close());
    assert_eq!(resp.get("connection").is_some(), p.close);
    assert_eq!(resp.get("allow").is_some(), e.allow().is_some());
    let cl = resp
        .content_length()
        .expect("error answers carry Content-Length");
    if head_only {
        assert_eq!(resp.body_bytes, 0);
    } else {
        assert_eq!(cl, resp.body_bytes as u64);
        assert!(p.head.ends_with(b"\n"));
    }
}

/// A rendered response head parsed back with `httparse`.
struct ParsedResponse {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    /// Bytes after the head inside the rendered buffer (an error's text body).
    body_bytes: usize,
}

impl ParsedResponse {
    fn new(rendered: &[u8]) -> ParsedResponse {
        let mut storage = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut storage);
        let n = match resp.parse(rendered) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "rendered head does not parse: {other:?}\n{}",
                String::from_utf8_lossy(rendered)
            ),
        };
        assert_eq!(resp.version, Some(1));
        // Strict CRLF everywhere in what we send.
        let head = &rendered[..n];
        assert!(head.ends_with(b"\r\n\r\n"));
        for (i, &b) in head.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && head[i - 1] == b'\r', "bare LF in response head");
            }
        }
        let headers: Vec<(String, Vec<u8>)> = resp
            .headers
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
            .collect();
        for (i, (name, _)) in headers.iter().enumerate() {
            assert!(
                headers[i + 1..].iter().all(|(other, _)| other != name),
                "header {name} sent twice"
            );
        }
        ParsedResponse {
            status: resp.code.expect("status code"),
            headers,
            body_bytes: rendered.len() - n,
        }
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn content_length(&self) -> Option<u64> {
        let v = self.get("content-length")?;
        let n = std::str::from_utf8(v).ok().and_then(|s| s.parse().ok());
        assert!(n.is_some(), "Content-Length {v:?}");
        n
    }

    /// The injected content type must have been replaced, never split into header lines.
    fn no_injection(&self) -> bool {
        self.get("set-cookie").is_none()
    }
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
