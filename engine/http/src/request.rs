//! Incremental request-head parsing (RFC 9112) on `httparse`.
//!
//! The serving loop calls [`parse_head`] on everything it has received so far; it answers
//! [`Parsed::NeedMore`] until the blank line ending the head has arrived. The parsed head stores
//! byte ranges into that buffer instead of copies, so a parse allocates only the small header
//! index. The message framing (how long the body is) is decided here, strictly: anything
//! ambiguous is rejected rather than guessed, because a guess that differs from a front proxy's
//! is how request smuggling works.

use std::ops::Range;

use super::error::HttpError;

/// Bounds on what a client may make us parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request head (request line + header fields + blank line) accepted.
    pub head_bytes_max: usize,
    /// Most header fields accepted. At most [`HEADERS_MAX`]: the index lives on the stack.
    pub headers_max: usize,
}

/// Hard ceiling on header fields (the size of the on-stack `httparse` header array).
pub const HEADERS_MAX: usize = 64;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            head_bytes_max: 16 * 1024,
            headers_max: HEADERS_MAX,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body: neither `Content-Length` nor `Transfer-Encoding` was sent.
    None,
    /// Exactly this many bytes follow the head.
    Length(u64),
    /// A chunked body follows; decode it with [`super::ChunkedDecoder`].
    Chunked,
}

/// One header field as ranges into the parsed buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRange {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

/// A parsed request head. Ranges index the buffer given to [`parse_head`]; the serving loop
/// must keep those bytes until it is done with the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: Method,
    pub target: Range<usize>,
    pub version: Version,
    pub headers: Vec<HeaderRange>,
    /// Bytes of the head including the final blank line; the body (or the next pipelined
    /// request) starts here.
    pub head_len: usize,
    /// Whether the connection may stay open after this exchange (RFC 9112 §9.3).
    pub keep_alive: bool,
    pub body: BodyFraming,
    /// The client sent `Expect: 100-continue` and waits for a `100 Continue` before the body.
    pub expect_continue: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet; read more and call again with the longer buffer.
    NeedMore,
    Complete(RequestHead),
}

impl RequestHead {
    /// The request target as sent (it is ASCII: `httparse` rejects anything else).
    pub fn target<'b>(&self, buf: &'b [u8]) -> &'b str {
        buf.get(self.target.clone())
            .and_then(|t| std::str::from_utf8(t).ok())
            .unwrap_or("")
    }

    /// Every value of header `name` (case-insensitive), in order of appearance.
    pub fn header_values<'a, 'b: 'a>(
        &'a self,
        buf: &'b [u8],
        name: &'a str,
    ) -> impl Iterator<Item = &'b [u8]> + 'a {
        self.headers.iter().filter_map(move |h| {
            let n = buf.get(h.name.clone())?;
            if n.eq_ignore_ascii_case(name.as_bytes()) {
                buf.get(h.value.clone())
            } else {
                None
            }
        })
    }

    /// The value of header `name` if it appears exactly once; `None` if absent or repeated
    /// (for singleton fields a repetition is an error the caller treats as absence).
    pub fn header_once<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        let mut it = self.header_values(buf, name);
        let first = it.next()?;
        if it.next().is_some() {
            return None;
        }
        Some(first)
    }

    /// Whether header `name` appears at all.
    pub fn has_header(&self, buf: &[u8], name: &str) -> bool {
        self.header_values(buf, name).next().is_some()
    }
}

/// Parses the request head at the start of `buf`.
pub fn parse_head(buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
    let headers_max = limits.headers_max.min(HEADERS_MAX);
    let mut storage = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut storage[..headers_max]);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::TooManyHeaders { limit: headers_max })
        }
        Err(httparse::Error::Version) => return version_error(buf, limits),
        Err(e) => return Err(parse_error(e)),
    };
    let head_len = match status {
        httparse::Status::Partial => {
            // Checking the limit on a partial head bounds what a slow client can make us buffer.
            if buf.len() >= limits.head_bytes_max {
                return Err(HttpError::HeadTooLarge {
                    limit_bytes: limits.head_bytes_max,
                });
            }
            return Ok(Parsed::NeedMore);
        }
        httparse::Status::Complete(n) => n,
    };
    if head_len > limits.head_bytes_max {
        return Err(HttpError::HeadTooLarge {
            limit_bytes: limits.head_bytes_max,
        });
    }
    let version = match req.version {
        Some(0) => Version::Http10,
        Some(1) => Version::Http11,
        _ => return Err(HttpError::VersionNotSupported),
    };
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("PUT") => Method::Put,
        Some("DELETE") => Method::Delete,
        _ => return Err(HttpError::UnknownMethod),
    };
    let target = match req.path {
        Some(p) => range_of(buf, p.as_bytes()),
        None => return Err(bad("missing request target")),
    };
    let headers: Vec<HeaderRange> = req
        .headers
        .iter()
        .map(|h| HeaderRange {
            name: range_of(buf, h.name.as_bytes()),
            value: range_of(buf, h.value),
        })
        .collect();
    let mut head = RequestHead {
        method,
        target,
        version,
        headers,
        head_len,
        keep_alive: false,
        body: BodyFraming::None,
        expect_continue: false,
    };
    head.keep_alive = keep_alive(&head, buf);
    head.body = body_framing(&head, buf)?;
    head.expect_continue = expect_continue(&head, buf)?;
    // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is a 400.
    if version == Version::Http11 && head.header_values(buf, "host").count() != 1 {
        return Err(bad("HTTP/1.1 request needs exactly one Host header"));
    }
    Ok(Parsed::Complete(head))
}

fn bad(reason: &'static str) -> HttpError {
    HttpError::BadRequest { reason }
}

/// `httparse` hands out subslices of `buf`; recover their position by address so the head can
/// outlive the `httparse::Request` without copying.
fn range_of(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(buf.as_ptr() as usize);
    let start = start.min(buf.len());
    start..(start + part.len()).min(buf.len())
}

fn parse_error(e: httparse::Error) -> HttpError {
    bad(match e {
        httparse::Error::HeaderName => "invalid header field name",
        httparse::Error::HeaderValue => "invalid header field value",
        httparse::Error::NewLine => "invalid line ending in request head",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        _ => "malformed request head",
    })
}

/// `httparse` reports both `HTTP/2.0` and `HTXP/1.1` as a version error, as soon as it has
/// seen the major digit. A well-formed version we do not speak is a 505; anything else is a
/// malformed request line, 400. The version is everything after the second space of the line
/// (`method SP target SP version`, `httparse` allows no other spaces), so a target with a space
/// in it is a 400, not a 505 for the line's last word. Until the line end has arrived, a version
/// that can still become `HTTP/d.d` waits for more: the answer must not depend on how the
/// client's bytes were split into reads.
fn version_error(buf: &[u8], limits: &Limits) -> Result<Parsed, HttpError> {
    let malformed = || Err(bad("malformed HTTP version in request line"));
    let line_end = buf.iter().position(|&b| b == b'\r' || b == b'\n');
    let line = &buf[..line_end.unwrap_or(buf.len())];
    let Some(version) = line.splitn(3, |&b| b == b' ').nth(2) else {
        return malformed();
    };
    if line_end.is_none() {
        const TEMPLATE: &[u8] = b"HTTP/0.0"; // '0' stands for any digit
        let could_become = version.len() <= TEMPLATE.len()
            && version.iter().zip(TEMPLATE).all(|(&b, &t)| {
                if t == b'0' {
                    b.is_ascii_digit()
                } else {
                    b == t
                }
            });
        return if !could_become {
            malformed()
        } else if buf.len() >= limits.head_bytes_max {
            Err(HttpError::HeadTooLarge {
                limit_bytes: limits.head_bytes_max,
            })
        } else {
            Ok(Parsed::NeedMore)
        };
    }
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(HttpError::VersionNotSupported)
        }
        [b'H', b'T', b'T', b'P', b'/', major] if major.is_ascii_digit() => {
            Err(HttpError::VersionNotSupported)
        }
        _ => malformed(),
    }
}

/// Splits a comma-separated field value into trimmed, non-empty elements (RFC 9110 §5.6.1).
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

pub(crate) fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// RFC 9112 §9.3: `close` always wins; HTTP/1.1 persists by default; HTTP/1.0 persists only
/// with `keep-alive`.
fn keep_alive(head: &RequestHead, buf: &[u8]) -> bool {
    let mut close = false;
    let mut keep = false;
    for v in head.header_values(buf, "connection") {
        for token in list_elements(v) {
            close |= token.eq_ignore_ascii_case(b"close");
            keep |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    !close && (head.version == Version::Http11 || keep)
}

/// RFC 9112 §6: decides the body length, rejecting every ambiguous combination.
fn body_framing(head: &RequestHead, buf: &[u8]) -> Result<BodyFraming, HttpError> {
    let has_te = head.has_header(buf, "transfer-encoding");
    let has_cl = head.has_header(buf, "content-length");
    if has_te && has_cl {
        // §6.1 allows a server to process TE and drop CL, but a proxy in front may have used
        // CL; refusing is the only answer that cannot disagree with it.
        return Err(bad("both Content-Length and Transfer-Encoding sent"));
    }
    if has_te {
        if head.version == Version::Http10 {
            // §6.1: TE in HTTP/1.0 means faulty framing.
            return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        let mut codings = head
            .header_values(buf, "transfer-encoding")
            .flat_map(list_elements)
            .peekable();
        let mut last_is_chunked = false;
        let mut count = 0usize;
        while let Some(coding) = codings.next() {
            count += 1;
            let is_chunked = coding.eq_ignore_ascii_case(b"chunked");
            if codings.peek().is_none() {
                last_is_chunked = is_chunked;
            } else if is_chunked {
                // §7: chunked must not be applied more than once, and only last.
                return Err(bad("chunked must be the only, final transfer coding"));
            }
        }
        if !last_is_chunked {
            // §6.3: a request whose final coding is not chunked has no determinable length.
            return Err(bad("final transfer coding must be chunked"));
        }
        if count > 1 {
            return Err(HttpError::NotImplemented {
                reason: "transfer codings other than chunked are not supported",
            });
        }
        return Ok(BodyFraming::Chunked);
    }
    if has_cl {
        let mut length: Option<u64> = None;
        for v in head.header_values(buf, "content-length") {
            let mut any = false;
            for element in v.split(|&b| b == b',').map(trim_ows) {
                any = true;
                let n = parse_decimal(element).ok_or(bad("invalid Content-Length"))?;
                // §6.3: identical repeats ("42, 42") may be accepted; differing ones may not.
                if length.is_some_and(|l| l != n) {
                    return Err(bad("conflicting Content-Length values"));
                }
                length = Some(n);
            }
            if !any {
                return Err(bad("invalid Content-Length"));
            }
        }
        return Ok(length.map_or(BodyFraming::None, BodyFraming::Length));
    }
    Ok(BodyFraming::None)
}

/// `1*DIGIT` into a u64; `None` for empty, non-digit or overflowing input (no sign, no
/// whitespace, no `+`: `str::parse` would accept `+5`).
pub(crate) fn parse_decimal(b: &[u8]) -> Option<u64> {
    if b.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &d in b {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

fn expect_continue(head: &RequestHead, buf: &[u8]) -> Result<bool, HttpError> {
    let mut cont = false;
    for v in head.header_values(buf, "expect") {
        for e in list_elements(v) {
            if e.eq_ignore_ascii_case(b"100-continue") {
                cont = true;
            } else {
                return Err(HttpError::ExpectationFailed);
            }
        }
    }
    // §10.1.1: HTTP/1.0 clients cannot use 100-continue; we must not send a 1xx to them.
    Ok(cont && head.version == Version::Http11)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    fn parse(s: &str) -> Result<Parsed, HttpError> {
        parse_head(s.as_bytes(), &Limits::default())
    }

    fn complete(s: &str) -> RequestHead {
        match parse(s) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{s:?} → {other:?}"),
        }
    }

    #[test]
    fn simple_get_parses_with_ranges_into_buffer() {
        let s = "GET /assets/a.mp4 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\nNEXT";
        let h = complete(s);
        let buf = s.as_bytes();
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.version, Version::Http11);
        assert_eq!(h.target(buf), "/assets/a.mp4");
        assert_eq!(h.header_once(buf, "RANGE"), Some(&b"bytes=0-9"[..]));
        assert_eq!(&buf[h.head_len..], b"NEXT");
        assert!(h.keep_alive);
        assert_eq!(h.body, BodyFraming::None);
        assert!(!h.expect_continue);
    }

    #[test]
    fn partial_heads_need_more_at_every_split() {
        let s = b"PUT /assets/x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n";
        for cut in 0..s.len() {
            assert_eq!(
                parse_head(&s[..cut], &Limits::default()),
                Ok(Parsed::NeedMore),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            parse_head(s, &Limits::default()),
            Ok(Parsed::Complete(RequestHead {
                body: BodyFraming::Length(3),
                ..
            }))
        ));
    }

    #[test]
    fn keep_alive_rules() {
        let table: &[(&str, bool)] = &[
            ("GET / HTTP/1.1\r\nHost: h\r\n\r\n", true),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                false,
            ),
            (
                "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, CLOSE\r\n\r\n",
                false,
            ),
            ("GET / HTTP/1.0\r\n\r\n", false),
            ("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true),
            (
                "GET / HTTP/1.0\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
                false,
            ),
        ];
        for &(s, want) in table {
            assert_eq!(complete(s).keep_alive, want, "{s:?}");
        }
    }

    #[test]
    fn framing_table() {
        let ok: &[(&str, BodyFraming)] = &[
            ("Content-Length: 0", BodyFraming::Length(0)),
            ("Content-Length: 42", BodyFraming::Length(42)),
            ("Content-Length: 42, 42", BodyFraming::Length(42)),
            (
                "Content-Length: 42\r\nContent-Length: 42",
                BodyFraming::Length(42),
            ),
            ("Transfer-Encoding: chunked", BodyFraming::Chunked),
            ("Transfer-Encoding: Chunked", BodyFraming::Chunked),
            ("X-Other: 1", BodyFraming::None),
        ];
        for &(h, want) in ok {
            let s = format!("PUT /assets/a HTTP/1.1\r\nHost: h\r\n{h}\r\n\r\n");
            assert_eq!(complete(&s).body, want, "{h:?}");
        }
        let err: &[(&str, u16)] = &[
            ("Content-Length: 42\r\nContent-Length: 43", 400),
            ("Content-Length: 42, 43", 400),
            ("Content-Length: -1", 400),
            ("Content-Length: +1", 400),
            ("Content-Length: 1 2", 400),
            ("Content-Length: ", 400),
            ("Content-Length: 0x10", 400),
            ("Content-Length: 99999999999999999999999", 400),
            ("Content-Length: 5\r\nTransfer-Encoding: chunked", 400),
            ("Transfer-Encoding: chunked\r\nContent-Length: 5", 400),
            ("Transfer-Encoding: gzip", 400),
            ("Transfer-Encoding: chunked, gzip", 400),
            ("Transfer-Encoding: chunked, chunked", 400),
            ("Transfer-Encoding: ", 400),
            ("Transfer-Encoding: gzip, chunked", 501),
            ("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked", 501),
            ("Expect: something-else", 417),
        ];
        for &(h, want) in err {
            let s = format!("PUT /assets/a HTTP/1.1\r\nHost: h\r\n{h}\r\n\r\n");
            match parse(&s) {
                Err(e) => assert_eq!(e.status(), Status(want), "{h:?}: {e}"),
                other => panic!("{h:?} → {other:?}"),
            }
        }
    }

    #[test]
    fn smuggling_variants_are_rejected() {
        // Spellings that some parsers accept as chunked and others do not: every one must be
        // refused, never read as a length of zero.
        for h in [
            "Transfer-Encoding : chunked",
            "Transfer-Encoding:\tchunked\r\n chunked",
            "Transfer-Encoding: xchunked",
            "Transfer-Encoding: chunked;q=1",
            "Transfer-Encoding: \"chunked\"",
            "Content-Length: 5\r\nTransfer-Encoding: identity",
            "Content-Length: 5\r\n Content-Length: 6",
            "Content-Length: 0x5",
            "Content-Length: 5\x0b",
        ] {
            let s = format!("PUT /assets/a HTTP/1.1\r\nHost: h\r\n{h}\r\n\r\n");
            assert!(parse(&s).is_err(), "{h:?} → {:?}", parse(&s));
        }
    }

    #[test]
    fn pipelined_requests_parse_one_after_another() {
        let s = "GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\nGET /c";
        let buf = s.as_bytes();
        let first = complete(s);
        assert_eq!(first.target(buf), "/a");
        let rest = &buf[first.head_len..];
        let second = match parse_head(rest, &Limits::default()) {
            Ok(Parsed::Complete(h)) => h,
            other => panic!("{other:?}"),
        };
        assert_eq!((second.method, second.target(rest)), (Method::Head, "/b"));
        assert_eq!(
            parse_head(&rest[second.head_len..], &Limits::default()),
            Ok(Parsed::NeedMore)
        );
    }

    #[test]
    fn version_errors_do_not_depend_on_the_reads() {
        for s in [
            "GET / HTTP/2.0\r\nHost: h\r\n\r\n",
            "GET / HTTP/2x0\r\nHost: h\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: h\r\n\r\n",
            "GET / HTTP/12.0\r\nHost: h\r\n\r\n",
        ] {
            let whole = parse(s).map_err(|e| e.status());
            assert!(whole.is_err(), "{s:?}");
            for cut in 0..s.len() {
                let part = parse_head(&s.as_bytes()[..cut], &Limits::default());
                if part != Ok(Parsed::NeedMore) {
                    assert_eq!(part.map_err(|e| e.status()), whole, "{s:?} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn transfer_encoding_in_http10_is_rejected() {
        let e = parse("PUT /assets/a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(e, Err(HttpError::BadRequest { .. })), "{e:?}");
    }

    #[test]
    fn expect_continue_flag() {
        let s = "PUT /assets/a HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n";
        assert!(complete(s).expect_continue);
        let s = "PUT /assets/a HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
        assert!(!complete(s).expect_continue);
    }

    #[test]
    fn request_line_errors() {
        let table: &[(&str, u16)] = &[
            ("POST /assets/a HTTP/1.1\r\nHost: h\r\n\r\n", 405),
            ("get /assets/a HTTP/1.1\r\nHost: h\r\n\r\n", 405),
            ("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", 405),
            ("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
            ("GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505),
            ("GET / HTXP/1.1\r\nHost: h\r\n\r\n", 400),
            // A space in the target: malformed, whatever the line's last word is.
            ("GET /a b HTTP/1.1\r\nHost: h\r\n\r\n", 400),
            ("GET / HTTP/2\r\nHost: h\r\n\r\n", 505),
            ("GET / HTTP/1.1\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", 400),
            ("GET  / HTTP/1.1\r\n\r\n", 400),
        ];
        for &(s, want) in table {
            match parse(s) {
                Err(e) => assert_eq!(e.status(), Status(want), "{s:?}: {e}"),
                other => panic!("{s:?} → {other:?}"),
            }
        }
        // A 405 raised while parsing names the allowed methods.
        assert_eq!(
            parse("POST / HTTP/1.1\r\nHost: h\r\n\r\n")
                .err()
                .and_then(|e| e.allow()),
            Some("GET, HEAD, PUT, DELETE")
        );
    }

    #[test]
    fn limits_give_431() {
        let limits = Limits {
            head_bytes_max: 64,
            headers_max: 4,
        };
        // Partial head already over the limit: no point waiting for the rest.
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(100));
        assert_eq!(
            parse_head(long.as_bytes(), &limits),
            Err(HttpError::HeadTooLarge { limit_bytes: 64 })
        );
        // Complete head over the limit.
        let s = format!("GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n", "b".repeat(60));
        assert_eq!(
            parse_head(s.as_bytes(), &limits),
            Err(HttpError::HeadTooLarge { limit_bytes: 64 })
        );
        let s = "GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n";
        let e = parse_head(s.as_bytes(), &limits).err();
        assert_eq!(e, Some(HttpError::TooManyHeaders { limit: 4 }));
        assert_eq!(e.map(|e| e.status()), Some(Status(431)));
        // Default: 64 headers are fine, 65 are not.
        let many = |n: usize| {
            let mut s = String::from("GET / HTTP/1.1\r\nHost: h\r\n");
            for i in 1..n {
                s.push_str(&format!("X-{i}: v\r\n"));
            }
            s.push_str("\r\n");
            s
        };
        assert!(matches!(parse(&many(64)), Ok(Parsed::Complete(_))));
        assert_eq!(
            parse(&many(65)),
            Err(HttpError::TooManyHeaders { limit: 64 })
        );
    }
}
