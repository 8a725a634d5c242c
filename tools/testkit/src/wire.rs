//! Strict reading of raw exchanges, for tests that check the bytes on the wire (hostile
//! clients): requests are written as they are with [`Conn::write_all`], responses are read by
//! the one client, and whatever is not HTTP/1.1 as a server must send it fails the test. A read
//! timeout is a hang and fails; a close (FIN or RST) before the first byte is an answer.

use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::time::Duration;

use reel_http::client::{encode_request, Conn, ResponseHead};

use crate::excerpt;

/// A response read strictly.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub head: ResponseHead,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The response says `Connection: close`.
    pub fn closes(&self) -> bool {
        self.head.close
    }
}

/// What a client saw.
#[derive(Debug)]
pub enum Answer {
    Resp(Resp),
    /// The server closed (FIN or RST) without sending a byte.
    Closed(&'static str),
}

/// A connection whose reads and writes time out (a hang) after `hang`.
pub fn connect(addr: SocketAddr, hang: Duration) -> Conn {
    Conn::connect(addr, hang).unwrap_or_else(|e| panic!("connect to the node: {e}"))
}

pub fn is_reset(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

pub fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Writes `req`, ignoring a reset (the server may refuse before reading it all).
pub fn send(c: &mut Conn, req: &[u8]) {
    if let Err(e) = c.write_all(req) {
        assert!(e.is_reset(), "writing the request: {e}");
    }
}

/// A raw read off the socket, past the client's buffer (which must be empty: the test reads
/// the bytes itself from the start).
pub fn read_raw(c: &Conn, buf: &mut [u8]) -> std::io::Result<usize> {
    assert!(
        c.buffered().is_empty(),
        "raw read with {} bytes buffered by the client",
        c.buffered().len()
    );
    let mut s = c.stream();
    s.read(buf)
}

/// Reads one response (`head_request`: no body follows the head); nothing may follow it yet.
pub fn read_response(c: &mut Conn, head_request: bool, what: &str) -> Answer {
    let a = read_next(c, head_request, what);
    assert!(
        c.buffered().is_empty(),
        "{what}: bytes beyond the response's Content-Length: {:?}",
        excerpt(c.buffered())
    );
    a
}

/// [`read_response`] for pipelined responses: what follows this response stays buffered.
pub fn read_next(c: &mut Conn, head_request: bool, what: &str) -> Answer {
    if c.buffered().is_empty() {
        let mut first = [0u8; 9];
        match c.stream().peek(&mut first) {
            Ok(0) => return Answer::Closed("FIN"),
            Ok(n) => assert!(
                n < first.len() || first == *b"HTTP/1.1 ",
                "{what}: not an HTTP/1.1 status line: {:?}",
                excerpt(&first[..n])
            ),
            Err(e) if is_reset(&e) => return Answer::Closed("RST"),
            Err(e) if is_timeout(&e) => panic!("{what}: HANG: no response within the timeout"),
            Err(e) => panic!("{what}: reading the response head: {e}"),
        }
    }
    let head = c.read_head_or_interim().unwrap_or_else(|e| {
        if e.is_timeout() {
            panic!("{what}: HANG: no complete response head: {e}")
        }
        panic!("{what}: reading the response head: {e}")
    });
    let status = head.status;
    let body_len = if head_request || status == 204 || status == 304 || status < 200 {
        0
    } else {
        head.content_length()
            .unwrap_or_else(|| panic!("{what}: response without Content-Length: {head:?}"))
    };
    let body = if body_len == 0 {
        Vec::new()
    } else {
        c.read_body(&head, body_len).unwrap_or_else(|e| {
            if e.is_timeout() {
                panic!("{what}: HANG: the body stalled: {e}")
            }
            panic!("{what}: reading the body ({status}): {e}")
        })
    };
    Answer::Resp(Resp { status, head, body })
}

/// After a response that closes: the server must end the connection (FIN or RST), not leave it
/// hanging, and send nothing more.
pub fn assert_closes(c: &mut Conn, what: &str) {
    assert!(
        c.buffered().is_empty(),
        "{what}: bytes after the final response: {:?}",
        excerpt(c.buffered())
    );
    let mut b = [0u8; 4096];
    match read_raw(c, &mut b) {
        Ok(0) => {}
        Ok(n) => panic!(
            "{what}: bytes after the final response: {:?}",
            excerpt(&b[..n])
        ),
        Err(e) if is_reset(&e) => {}
        Err(e) if is_timeout(&e) => {
            panic!("{what}: HANG: the connection stayed open after a response that closes")
        }
        Err(e) => panic!("{what}: {e}"),
    }
}

/// The bytes of `METHOD target` with `Connection: close`, `headers` and `body` (with its
/// Content-Length when it is not empty).
pub fn request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut all = vec![("Connection", "close")];
    all.extend_from_slice(headers);
    encode_request(
        method,
        "node",
        target,
        &all,
        (!body.is_empty()).then_some(body),
    )
}
