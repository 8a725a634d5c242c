//! The one blocking HTTP/1.1 client of the workspace: `reel load`, the demo, the benchmark
//! drivers and the integration tests talk to nodes through it (and so will the manager and the
//! relay).
//!
//! A [`Conn`] is one keep-alive connection over std's `TcpStream` (`TCP_NODELAY`, read and write
//! timeouts). It writes request bytes as given — tests send malformed requests through the same
//! connection type — and reads responses strictly: a status line `HTTP/1.x NNN`, header lines,
//! interim (1xx) responses skipped, a body framed by `Content-Length`, `chunked` (decoded with
//! this crate's [`ChunkedDecoder`]) or the end of the connection. Bytes read past one response
//! stay buffered for the next, so pipelined responses are read in order.
//!
//! Every failure is a [`ClientError`] with what was going on; [`ClientError::is_stale`] tells a
//! keep-alive connection the server had already closed (safe to retry on a fresh one) from a
//! failure of the request itself.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::chunked::ChunkedDecoder;

/// The largest response head accepted (status line and headers together).
pub const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;

/// What went wrong with an exchange.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The connection could not be made.
    #[error("cannot connect to {addr}: {}; is the server listening there?", io_reason(.source))]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A socket call failed while `during`.
    #[error("{during}: {}", io_reason(.source))]
    Io {
        during: &'static str,
        source: std::io::Error,
        /// The connection had carried earlier responses and nothing of this one was read.
        stale: bool,
    },
    /// The server closed the connection before a complete response head.
    #[error("the connection closed before a complete response head")]
    Closed { stale: bool },
    /// The response is not HTTP/1.1 as this client reads it.
    #[error("protocol: {reason}")]
    Protocol { reason: String },
    /// The body ended before its announced length.
    #[error("the body ended after {got} of {want} bytes")]
    ShortBody { got: u64, want: u64 },
    /// The body is longer than the caller accepts.
    #[error("a body of {len} bytes, more than the {max} accepted")]
    TooLarge { len: u64, max: u64 },
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        ErrorKind::ConnectionRefused => "connection refused".to_string(),
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timed out".to_string(),
        _ => e.to_string(),
    }
}

impl ClientError {
    /// A reused keep-alive connection that the server had closed before this request: nothing
    /// of the response was read, so the request may be sent again on a new connection.
    pub fn is_stale(&self) -> bool {
        matches!(
            self,
            ClientError::Io { stale: true, .. } | ClientError::Closed { stale: true }
        )
    }

    /// A socket timeout (read or write) ran out.
    pub fn is_timeout(&self) -> bool {
        match self {
            ClientError::Io { source, .. } | ClientError::Connect { source, .. } => {
                matches!(source.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock)
            }
            _ => false,
        }
    }

    /// The server reset the connection.
    pub fn is_reset(&self) -> bool {
        match self {
            ClientError::Io { source, .. } => matches!(
                source.kind(),
                ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
            ),
            _ => false,
        }
    }

    fn protocol(reason: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            reason: reason.into(),
        }
    }
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// `Content-Length: n`.
    Exactly(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Neither: the body runs to the end of the connection.
    UntilClose,
}

/// A response's status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Header lines in order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: BodyLength,
    /// `Connection: close` was sent: the server closes after this response.
    pub close: bool,
}

impl ResponseHead {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header of that name, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `Content-Length`, when the body is framed by one.
    pub fn content_length(&self) -> Option<u64> {
        match self.body {
            BodyLength::Exactly(n) => Some(n),
            _ => None,
        }
    }

    /// `Content-Range: bytes a-b/size` as `(a, b, size)`.
    pub fn content_range(&self) -> Option<(u64, u64, u64)> {
        parse_content_range(self.header("content-range")?)
    }
}

/// A whole response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub head: ResponseHead,
    pub body: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head.status
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The body as text (lossy: a test or a message wants to show it, not to trust it).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// `bytes a-b/size` → `(a, b, size)`.
pub fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let (range, size) = v.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, size.parse().ok()?))
}

/// The bytes of a request: `METHOD target HTTP/1.1`, `Host`, the headers given, and a
/// `Content-Length` with the body when there is one (unless the headers frame it themselves).
pub fn encode_request(
    method: &str,
    host: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.map_or(0, <[u8]>::len));
    out.extend_from_slice(format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\n").as_bytes());
    let mut framed = false;
    for (name, value) in headers {
        framed |= name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding");
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    if let Some(body) = body {
        if !framed {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One keep-alive connection.
pub struct Conn {
    reader: BufReader<TcpStream>,
    peer: SocketAddr,
    line: Vec<u8>,
    /// Final responses read on this connection.
    responses_read: u64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("peer", &self.peer)
            .field("responses_read", &self.responses_read)
            .finish()
    }
}

impl Conn {
    /// Connects with `timeout` for the connect, and for every later read and write.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Conn, ClientError> {
        let connect_err = |source| ClientError::Connect { addr, source };
        let s = TcpStream::connect_timeout(&addr, timeout).map_err(connect_err)?;
        s.set_nodelay(true).map_err(connect_err)?;
        s.set_read_timeout(Some(timeout)).map_err(connect_err)?;
        s.set_write_timeout(Some(timeout)).map_err(connect_err)?;
        Ok(Conn::from_stream(s, addr))
    }

    /// Wraps a connected stream (its timeouts as they are).
    pub fn from_stream(s: TcpStream, peer: SocketAddr) -> Conn {
        Conn {
            reader: BufReader::with_capacity(64 << 10, s),
            peer,
            line: Vec::with_capacity(256),
            responses_read: 0,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The socket, for timeouts, `shutdown` or raw reads in tests.
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Bytes received but not yet consumed by a read of this connection.
    pub fn buffered(&self) -> &[u8] {
        self.reader.buffer()
    }

    /// How many final responses this connection has read.
    pub fn responses_read(&self) -> u64 {
        self.responses_read
    }

    /// Writes request bytes as they are (a whole request, a part of one, or garbage).
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        let stale = self.responses_read > 0;
        self.reader
            .get_mut()
            .write_all(bytes)
            .map_err(|source| ClientError::Io {
                during: "sending the request",
                stale: stale
                    && matches!(
                        source.kind(),
                        ErrorKind::BrokenPipe
                            | ErrorKind::ConnectionReset
                            | ErrorKind::ConnectionAborted
                    ),
                source,
            })
    }

    /// Sends `request` (bytes from [`encode_request`] or hand-made) and reads the head of its
    /// final response; the body is the caller's to read.
    pub fn send(&mut self, request: &[u8]) -> Result<ResponseHead, ClientError> {
        self.write_all(request)?;
        self.read_head()
    }

    /// Sends `request` and reads its whole response, keeping at most `max` body bytes.
    /// `head_request` says the request was `HEAD` (no body follows whatever the head says).
    pub fn exchange(
        &mut self,
        request: &[u8],
        head_request: bool,
        max: u64,
    ) -> Result<Response, ClientError> {
        let head = self.send(request)?;
        let body = if head_request {
            Vec::new()
        } else {
            self.read_body(&head, max)?
        };
        Ok(Response { head, body })
    }

    /// Sends one request built from its parts and reads the whole response (at most 1 GiB).
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, ClientError> {
        let host = self.peer.to_string();
        let bytes = encode_request(method, &host, target, headers, body);
        self.exchange(&bytes, method.eq_ignore_ascii_case("HEAD"), 1 << 30)
    }

    /// Reads a response head, skipping interim (1xx) ones.
    pub fn read_head(&mut self) -> Result<ResponseHead, ClientError> {
        self.read_head_as(true)
    }

    /// Reads the next response head, interim (1xx) or final: a client that sent
    /// `Expect: 100-continue` sends its body only after a `100 Continue`.
    pub fn read_head_or_interim(&mut self) -> Result<ResponseHead, ClientError> {
        self.read_head_as(false)
    }

    fn read_head_as(&mut self, skip_interim: bool) -> Result<ResponseHead, ClientError> {
        let reused = self.responses_read > 0;
        let mut total = 0usize;
        let mut status: Option<u16> = None;
        let mut headers = Vec::new();
        loop {
            self.line.clear();
            let n = match self.reader.read_until(b'\n', &mut self.line) {
                Ok(n) => n,
                Err(source) => {
                    let stale = reused
                        && total == 0
                        && matches!(
                            source.kind(),
                            ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                        );
                    return Err(ClientError::Io {
                        during: "reading the response head",
                        source,
                        stale,
                    });
                }
            };
            if n == 0 || self.line.last() != Some(&b'\n') {
                // Stale only if nothing of this response arrived: a part of a status line
                // followed by the close is a broken response, not a connection found closed.
                return Err(ClientError::Closed {
                    stale: reused && total == 0 && n == 0,
                });
            }
            total += n;
            if total > RESPONSE_HEAD_BYTES_MAX {
                return Err(ClientError::protocol("a response head larger than 64 KiB"));
            }
            let Ok(text) = std::str::from_utf8(&self.line) else {
                return Err(ClientError::protocol("a response head that is not UTF-8"));
            };
            let text = text.trim_end_matches(['\r', '\n']);
            let Some(code) = status else {
                status = Some(parse_status_line(text)?);
                continue;
            };
            if !text.is_empty() {
                let Some((name, value)) = text.split_once(':') else {
                    return Err(ClientError::protocol(format!(
                        "bad header line {:?}",
                        truncate(text, 80)
                    )));
                };
                headers.push((name.trim().to_string(), value.trim().to_string()));
                continue;
            }
            if (100..200).contains(&code) && !skip_interim {
                return finish_head(code, headers);
            }
            if (100..200).contains(&code) {
                // An interim response: the final one follows.
                status = None;
                headers.clear();
                continue;
            }
            self.responses_read += 1;
            return finish_head(code, headers);
        }
    }

    /// Reads the body that `head` announces, at most `max` bytes.
    pub fn read_body(&mut self, head: &ResponseHead, max: u64) -> Result<Vec<u8>, ClientError> {
        if no_body(head.status) {
            return Ok(Vec::new());
        }
        match head.body {
            BodyLength::Exactly(len) => {
                if len > max {
                    return Err(ClientError::TooLarge { len, max });
                }
                let mut body = Vec::with_capacity(len.min(16 << 20) as usize);
                (&mut self.reader)
                    .take(len)
                    .read_to_end(&mut body)
                    .map_err(body_io)?;
                if (body.len() as u64) < len {
                    return Err(ClientError::ShortBody {
                        got: body.len() as u64,
                        want: len,
                    });
                }
                Ok(body)
            }
            BodyLength::UntilClose => {
                let mut body = Vec::new();
                (&mut self.reader)
                    .take(max.saturating_add(1))
                    .read_to_end(&mut body)
                    .map_err(body_io)?;
                if body.len() as u64 > max {
                    return Err(ClientError::TooLarge {
                        len: body.len() as u64,
                        max,
                    });
                }
                Ok(body)
            }
            BodyLength::Chunked => self.read_chunked(max),
        }
    }

    /// Reads `len` body bytes into `scratch`, piece by piece, and forgets them.
    pub fn discard(&mut self, len: u64, scratch: &mut [u8]) -> Result<(), ClientError> {
        let mut left = len;
        while left > 0 {
            let n = (left.min(scratch.len() as u64)) as usize;
            match self.reader.read(&mut scratch[..n]) {
                Ok(0) => {
                    return Err(ClientError::ShortBody {
                        got: len - left,
                        want: len,
                    })
                }
                Ok(got) => left -= got as u64,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(source) => return Err(body_io(source)),
            }
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes of a body into `buf`, for a caller that checks a long
    /// body piece by piece without keeping it; the body's length is the caller's to track.
    pub fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ClientError> {
        self.reader.read_exact(buf).map_err(body_io)
    }

    /// Reads until the server closes the connection and returns what came (at most `max` bytes;
    /// a reset counts as a close). Tests use it to check that a connection is closed.
    pub fn read_to_close(&mut self, max: usize) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 << 10];
        loop {
            match self.reader.read(&mut buf) {
                Ok(0) => return Ok(out),
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    if out.len() > max {
                        return Err(ClientError::TooLarge {
                            len: out.len() as u64,
                            max: max as u64,
                        });
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return Ok(out)
                }
                Err(source) => {
                    return Err(ClientError::Io {
                        during: "waiting for the close",
                        source,
                        stale: false,
                    })
                }
            }
        }
    }

    fn read_chunked(&mut self, max: u64) -> Result<Vec<u8>, ClientError> {
        let mut decoder = ChunkedDecoder::new();
        let mut body = Vec::new();
        while !decoder.is_done() {
            let input = self.reader.fill_buf().map_err(body_io)?;
            if input.is_empty() {
                return Err(ClientError::protocol(
                    "the connection closed inside a chunked body",
                ));
            }
            let step = decoder
                .decode(input)
                .map_err(|e| ClientError::protocol(format!("chunked body: {e}")))?;
            if let Some(data) = step.data {
                if body.len() as u64 + data.len() as u64 > max {
                    return Err(ClientError::TooLarge {
                        len: body.len() as u64 + data.len() as u64,
                        max,
                    });
                }
                body.extend_from_slice(&input[data]);
            }
            self.reader.consume(step.consumed);
        }
        Ok(body)
    }
}

fn body_io(source: std::io::Error) -> ClientError {
    ClientError::Io {
        during: "reading the body",
        source,
        stale: false,
    }
}

/// 1xx, 204 and 304 responses have no body (RFC 9112 §6.3).
fn no_body(status: u16) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// Parses a complete response head at the start of `buf` (CRLF line ends, as HTTP/1.1
/// requires): the head and its length in bytes, `Ok(None)` while its blank line has not arrived.
/// For a caller that receives on its own (the relay's io_uring receives); an interim (1xx)
/// response is an error, since such a caller never asks for one.
pub fn parse_response_head(buf: &[u8]) -> Result<Option<(ResponseHead, usize)>, ClientError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > RESPONSE_HEAD_BYTES_MAX {
            return Err(ClientError::protocol("a response head larger than 64 KiB"));
        }
        return Ok(None);
    };
    let head_len = end + 4;
    if head_len > RESPONSE_HEAD_BYTES_MAX {
        return Err(ClientError::protocol("a response head larger than 64 KiB"));
    }
    let text = std::str::from_utf8(&buf[..end])
        .map_err(|_| ClientError::protocol("a response head that is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status = parse_status_line(lines.next().unwrap_or(""))?;
    if (100..200).contains(&status) {
        return Err(ClientError::protocol(format!(
            "an interim response ({status}) nobody asked for"
        )));
    }
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ClientError::protocol(format!(
                "bad header line {:?}",
                truncate(line, 80)
            )));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    finish_head(status, headers).map(|h| Some((h, head_len)))
}

fn finish_head(status: u16, headers: Vec<(String, String)>) -> Result<ResponseHead, ClientError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = false;
    for (name, value) in &headers {
        if name.eq_ignore_ascii_case("content-length") {
            let len = value.parse::<u64>().map_err(|_| {
                ClientError::protocol(format!("bad Content-Length {:?}", truncate(value, 40)))
            })?;
            if length.is_some_and(|l| l != len) {
                return Err(ClientError::protocol(
                    "two different Content-Length headers",
                ));
            }
            length = Some(len);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(ClientError::protocol(format!(
                    "Transfer-Encoding {:?} is not chunked",
                    truncate(value, 40)
                )));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            close |= value
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    let body = match (chunked, length) {
        (true, Some(_)) => {
            return Err(ClientError::protocol(
                "both Transfer-Encoding and Content-Length",
            ))
        }
        (true, None) => BodyLength::Chunked,
        (false, Some(n)) => BodyLength::Exactly(n),
        (false, None) => BodyLength::UntilClose,
    };
    Ok(ResponseHead {
        status,
        headers,
        body,
        close: close || body == BodyLength::UntilClose,
    })
}

fn parse_status_line(line: &str) -> Result<u16, ClientError> {
    let bad = || ClientError::protocol(format!("bad status line {:?}", truncate(line, 80)));
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(bad());
    }
    code.parse::<u16>()
        .ok()
        .filter(|c| (100..600).contains(c))
        .ok_or_else(bad)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread;

    /// A server that answers one connection with `reply` and records what it received.
    fn serve_once(reply: &'static [u8]) -> (SocketAddr, thread::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let h = thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let mut got = vec![0u8; 4096];
            let n = s.read(&mut got).unwrap_or(0);
            got.truncate(n);
            s.write_all(reply).expect("reply");
            got
        });
        (addr, h)
    }

    fn conn(addr: SocketAddr) -> Conn {
        Conn::connect(addr, Duration::from_secs(5)).expect("connect")
    }

    #[test]
    fn an_interim_head_is_returned_when_asked_for_and_not_counted() {
        let (addr, h) = serve_once(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 507 Insufficient Storage\r\nContent-Length: 4\r\n\r\nfull",
        );
        let mut c = conn(addr);
        c.write_all(
            b"PUT /a HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\nExpect: 100-continue\r\n\r\n",
        )
        .expect("send");
        let interim = c.read_head_or_interim().expect("interim head");
        assert_eq!(interim.status, 100);
        assert_eq!(c.responses_read(), 0);
        let head = c.read_head_or_interim().expect("final head");
        assert_eq!(head.status, 507);
        assert_eq!(c.read_body(&head, 100).expect("body"), b"full");
        assert_eq!(c.responses_read(), 1);
        h.join().expect("server");
    }

    #[test]
    fn content_length_bodies_and_pipelined_responses_read_in_order() {
        let (addr, h) = serve_once(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabc\
              HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 2-3/10\r\nContent-Length: 2\r\n\r\nxy",
        );
        let mut c = conn(addr);
        let r = c
            .request("GET", "/assets/a", &[("Range", "bytes=2-3")], None)
            .expect("first");
        assert_eq!((r.status(), r.body.as_slice()), (200, &b"abc"[..]));
        assert_eq!(r.header("x-a"), Some("1"));
        let head = c.read_head().expect("second");
        assert_eq!(head.status, 206);
        assert_eq!(head.content_range(), Some((2, 3, 10)));
        assert_eq!(c.read_body(&head, 10).expect("body"), b"xy");
        assert_eq!(c.responses_read(), 2);
        let sent = String::from_utf8(h.join().expect("server")).expect("utf8");
        assert!(sent.starts_with("GET /assets/a HTTP/1.1\r\nHost: 127.0.0.1:"));
        assert!(sent.contains("\r\nRange: bytes=2-3\r\n\r\n"));
    }

    #[test]
    fn chunked_and_until_close_bodies() {
        let (addr, _h) =
            serve_once(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n");
        let r = conn(addr).request("GET", "/", &[], None).expect("chunked");
        assert_eq!(r.body, b"abcde");
        let (addr, _h) = serve_once(b"HTTP/1.0 200 OK\r\n\r\nall of it");
        let r = conn(addr).request("GET", "/", &[], None).expect("close");
        assert!(r.head.close);
        assert_eq!(r.body, b"all of it");
    }

    #[test]
    fn bad_responses_are_typed_errors() {
        for (reply, want) in [
            (&b"garbage\r\n\r\n"[..], "bad status line"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
                "bad Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "two different",
            ),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "bad header line"),
        ] {
            let (addr, _h) = serve_once(reply);
            let e = conn(addr)
                .request("GET", "/", &[], None)
                .expect_err("an error");
            assert!(e.to_string().contains(want), "{e} (want {want})");
        }
        let (addr, _h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc");
        let e = conn(addr)
            .request("GET", "/", &[], None)
            .expect_err("an error");
        assert!(
            matches!(e, ClientError::ShortBody { got: 3, want: 9 }),
            "{e}"
        );
        let (addr, _h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Le");
        let e = conn(addr)
            .request("GET", "/", &[], None)
            .expect_err("an error");
        assert!(matches!(e, ClientError::Closed { stale: false }), "{e}");
        let (addr, _h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789");
        let e = conn(addr)
            .exchange(b"GET / HTTP/1.1\r\n\r\n", false, 4)
            .expect_err("an error");
        assert!(
            matches!(e, ClientError::TooLarge { len: 10, max: 4 }),
            "{e}"
        );
    }

    #[test]
    fn bodies_read_piece_by_piece() {
        let (addr, _h) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabcdeHTTP/1.1 204 No\r\n\r\n");
        let mut c = conn(addr);
        let head = c.send(b"GET / HTTP/1.1\r\n\r\n").expect("head");
        assert_eq!(head.content_length(), Some(5));
        let mut piece = [0u8; 3];
        c.read_exact(&mut piece).expect("first piece");
        assert_eq!(&piece, b"abc");
        c.read_exact(&mut piece[..2]).expect("second piece");
        assert_eq!(&piece[..2], b"de");
        assert_eq!(c.read_head().expect("next response").status, 204);
        let e = c.read_exact(&mut piece).expect_err("nothing more");
        assert!(e.to_string().starts_with("reading the body: "), "{e}");
    }

    #[test]
    fn a_close_after_part_of_a_head_is_not_stale() {
        let (addr, _h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 20");
        let mut c = conn(addr);
        let first = c.request("GET", "/", &[], None).expect("first");
        assert_eq!(first.body, b"a");
        let e = c.read_head().expect_err("a cut head");
        assert!(matches!(e, ClientError::Closed { stale: false }), "{e}");
    }

    #[test]
    fn a_refused_connection_names_the_address() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let e = Conn::connect(addr, Duration::from_secs(2)).expect_err("an error");
        let msg = e.to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("refused"),
            "{msg}"
        );
    }

    #[test]
    fn status_lines_and_header_values() {
        assert_eq!(
            parse_status_line("HTTP/1.1 206 Partial Content").expect("valid"),
            206
        );
        for bad in [
            "",
            "HTTP/1.1",
            "HTTP/2 200 OK",
            "HTTP/1.1 2000 X",
            "HTTP/1.1 abc",
        ] {
            assert!(parse_status_line(bad).is_err(), "{bad:?}");
        }
        let header = |n: &str, v: &str| (n.to_string(), v.to_string());
        let head = finish_head(
            206,
            vec![
                header("Content-Length", "42"),
                header("content-range", "bytes 0-41/100"),
                header("Connection", "keep-alive, close"),
            ],
        )
        .expect("valid");
        assert_eq!(
            (head.content_length(), head.content_range(), head.close),
            (Some(42), Some((0, 41, 100)), true)
        );
        assert!(finish_head(200, vec![header("Content-Length", "-1")]).is_err());
        assert!(finish_head(
            200,
            vec![
                header("Content-Length", "42"),
                header("Content-Length", "43")
            ]
        )
        .is_err());
    }

    #[test]
    fn requests_are_framed() {
        let r = encode_request("PUT", "h:1", "/assets/a", &[("X", "y")], Some(b"body"));
        assert_eq!(
            r,
            b"PUT /assets/a HTTP/1.1\r\nHost: h:1\r\nX: y\r\nContent-Length: 4\r\n\r\nbody"
        );
        let r = encode_request("GET", "h", "/", &[], None);
        assert_eq!(r, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(parse_content_range("bytes 0-0/1"), Some((0, 0, 1)));
        assert_eq!(parse_content_range("bytes */1"), None);
    }

    #[test]
    fn a_response_head_parses_from_bytes_or_asks_for_more() {
        let raw = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\nContent-Range: bytes 0-4/9\r\n\r\nhello";
        let (h, n) = parse_response_head(raw).expect("valid").expect("complete");
        assert_eq!(
            (h.status, n, h.body),
            (206, raw.len() - 5, BodyLength::Exactly(5))
        );
        assert_eq!(h.content_range(), Some((0, 4, 9)));
        for cut in 0..n {
            assert!(
                matches!(parse_response_head(&raw[..cut]), Ok(None)),
                "{cut}"
            );
        }
        for bad in [
            &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
            b"HTTP/1.1 20 OK\r\n\r\n",
            b"SPDY 200 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX: \xff\r\n\r\n",
        ] {
            assert!(
                parse_response_head(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_response_head(&vec![b'a'; RESPONSE_HEAD_BYTES_MAX + 1]).is_err());
    }
}
