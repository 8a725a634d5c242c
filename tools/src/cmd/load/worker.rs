//! The workers: each owns one keep-alive connection (reel-http's client), takes the next
//! request of the schedule, sends it at its intended start, checks the response against what
//! was asked and records the outcome. A failure is an [`ErrorKind`] with a detail for the
//! summary.

use std::io::{ErrorKind as IoKind, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use reel_http::client::{BodyLength, ClientError, Conn, ResponseHead};

use super::schedule::{Job, Schedule};
use super::stats::{lock, Outcome, WorkerStats};
use super::target::{Asset, Target};
use super::SLEEP_SLICE;

/// Largest body of an unexpected status (e.g. a 404's message) read to keep the connection.
const ERROR_BODY_MAX: u64 = 1 << 20;
/// Most redirects followed for one request; one more is a `redirect` error.
pub(super) const REDIRECTS_MAX: u32 = 5;
/// Most hosts a worker keeps a connection to besides the target (redirect destinations); the
/// one used longest ago is closed to make room.
const HOSTS_MAX: usize = 16;

/// What went wrong with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum ErrorKind {
    /// Connecting failed.
    Connect,
    /// The connection closed before a complete response head.
    Closed,
    /// No progress for `--timeout`.
    Timeout,
    /// Another socket error.
    Io,
    /// A response that is not valid HTTP/1.1 as we speak it (bad head, no Content-Length,
    /// chunked).
    Protocol,
    /// The connection closed inside the body.
    ShortBody,
    /// A status other than the one expected.
    Status(u16),
    /// The expected status, but a Content-Length other than the length asked for.
    WrongLength,
    /// A 206 whose Content-Range is not the range asked for.
    WrongRange,
    /// A redirect that cannot be followed: no usable `Location`, not `http://`, or more than
    /// [`REDIRECTS_MAX`] hops.
    Redirect,
}

impl ErrorKind {
    pub(super) fn name(self) -> String {
        match self {
            ErrorKind::Connect => "connect".into(),
            ErrorKind::Closed => "closed".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Io => "io".into(),
            ErrorKind::Protocol => "protocol".into(),
            ErrorKind::ShortBody => "short_body".into(),
            ErrorKind::Status(s) => format!("status_{s}"),
            ErrorKind::WrongLength => "wrong_length".into(),
            ErrorKind::WrongRange => "wrong_range".into(),
            ErrorKind::Redirect => "redirect".into(),
        }
    }
}

#[derive(Debug)]
pub(super) struct Failure {
    pub(super) kind: ErrorKind,
    pub(super) detail: String,
    /// The response was read to its end: the connection can serve the next request.
    keep_conn: bool,
}

impl Failure {
    pub(super) fn new(kind: ErrorKind, detail: impl Into<String>) -> Failure {
        Failure {
            kind,
            detail: detail.into(),
            keep_conn: false,
        }
    }

    /// This failure left the connection at the start of the next response.
    fn keep_conn(mut self) -> Failure {
        self.keep_conn = true;
        self
    }
}

impl From<ClientError> for Failure {
    /// The kind of a client error; the detail says what was going on (a socket timeout, which
    /// shows as EAGAIN, is a timeout).
    fn from(e: ClientError) -> Failure {
        let timeout = e.is_timeout();
        match e {
            ClientError::Io { during, .. } if timeout => Failure::new(
                ErrorKind::Timeout,
                format!("{during}: nothing arrived for --timeout"),
            ),
            ClientError::Io { during, source, .. } => {
                Failure::new(ErrorKind::Io, format!("{during}: {source}"))
            }
            ClientError::Protocol { reason } => Failure::new(ErrorKind::Protocol, reason),
            e @ ClientError::Closed { .. } => Failure::new(ErrorKind::Closed, e.to_string()),
            e @ ClientError::ShortBody { .. } => Failure::new(ErrorKind::ShortBody, e.to_string()),
            e @ ClientError::Connect { .. } => Failure::new(ErrorKind::Connect, e.to_string()),
            e => Failure::new(ErrorKind::Protocol, e.to_string()),
        }
    }
}

/// `cannot connect to HOST:PORT: connection refused; is `reel node` listening there?`
fn connect_message(authority: &str, e: &ClientError, timeout: Duration) -> String {
    let why = match e {
        _ if e.is_timeout() => format!("no answer within {timeout:?}"),
        ClientError::Connect { source, .. } if source.kind() == IoKind::ConnectionRefused => {
            "connection refused".to_string()
        }
        ClientError::Connect { source, .. } => source.to_string(),
        e => e.to_string(),
    };
    format!("cannot connect to {authority}: {why}; is `reel node` listening there?")
}

/// Opens a connection to the node, with `timeout` for the connect and every read and write.
fn connect(target: &Target, timeout: Duration) -> Result<Conn, Failure> {
    Conn::connect(target.addr, timeout).map_err(|e| {
        Failure::new(
            ErrorKind::Connect,
            connect_message(&target.authority, &e, timeout),
        )
    })
}

/// Opens a connection before the load, failing with the message that names the fix.
pub(super) fn open_for_setup(target: &Target, timeout: Duration) -> Result<Conn> {
    connect(target, timeout).map_err(|f| anyhow!("{}", f.detail))
}

/// The Content-Length of a response, if it has one. A chunked body is refused: a reel node
/// answers with Content-Length, which load checks against the length asked for before it reads
/// any body.
pub(super) fn framed_length(head: &ResponseHead) -> Result<Option<u64>, Failure> {
    match head.body {
        BodyLength::Exactly(len) => Ok(Some(len)),
        BodyLength::UntilClose => Ok(None),
        BodyLength::Chunked => {
            let te: String = head
                .header("transfer-encoding")
                .unwrap_or_default()
                .chars()
                .take(40)
                .collect();
            Err(Failure::new(
                ErrorKind::Protocol,
                format!("Transfer-Encoding {te:?}: a reel node answers GETs with Content-Length"),
            ))
        }
    }
}

/// Sends `req` and reads the whole response, keeping the body (at most `max` bytes, framed by
/// Content-Length).
pub(super) fn exchange_body(
    conn: &mut Conn,
    req: &[u8],
    max: u64,
) -> Result<(ResponseHead, Vec<u8>), Failure> {
    let head = conn.send(req)?;
    let len = framed_length(&head)?
        .ok_or_else(|| Failure::new(ErrorKind::Protocol, "a response without Content-Length"))?;
    if len > max {
        return Err(Failure::new(
            ErrorKind::Protocol,
            format!("a body of {len} bytes, more than the {max} expected"),
        ));
    }
    let body = conn.read_body(&head, max)?;
    Ok((head, body))
}

/// What the workers share.
pub(super) struct Shared {
    pub(super) target: Target,
    pub(super) assets: Vec<Asset>,
    pub(super) schedule: Mutex<Schedule>,
    pub(super) stop: Arc<AtomicBool>,
    /// Requests still owed are not sent after this (the end of the arrivals + `--timeout`).
    pub(super) send_until: Instant,
    pub(super) timeout: Duration,
    /// Follow redirects (else a redirect is the valid answer: `--no-follow`).
    pub(super) follow: bool,
}

/// Sleeps until `deadline`; false if the stop flag was raised first.
fn sleep_until(deadline: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Acquire) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        std::thread::sleep((deadline - now).min(SLEEP_SLICE));
    }
}

/// Whether a status is a redirect that names its destination in `Location`.
fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// Where a redirect sends the request: the authority (`HOST:PORT`) and the request target
/// (path and query). An absolute `http://` URL or an absolute path (same host) is accepted;
/// anything else (https, another scheme, a relative path, bytes that do not belong in a
/// request line) is a [`ErrorKind::Redirect`] failure.
pub(super) fn parse_location(location: &str, current: &str) -> Result<(String, String), Failure> {
    let bad = |why: &str| {
        let shown: String = location.chars().take(80).collect();
        Failure::new(ErrorKind::Redirect, format!("Location {shown:?}: {why}"))
    };
    let loc = location.trim();
    if loc.is_empty() {
        return Err(bad("empty"));
    }
    // Visible ASCII only: nothing of it can break the request line or headers built from it.
    if !loc.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad("not a plain URL"));
    }
    let lower = loc.get(..8).unwrap_or(loc).to_ascii_lowercase();
    if lower.starts_with("http://") {
        let rest = &loc["http://".len()..];
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') || !authority.contains(':') {
            return Err(bad("the destination needs HOST:PORT"));
        }
        let target = match target {
            "" => "/".to_string(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_string(),
        };
        return Ok((authority.to_string(), target));
    }
    if lower.starts_with("https://") {
        return Err(bad("https is not supported (plain HTTP only)"));
    }
    if loc.starts_with('/') && !loc.starts_with("//") {
        return Ok((current.to_string(), loc.to_string()));
    }
    Err(bad("only http:// URLs and absolute paths are followed"))
}

/// A worker's connections to redirect destinations, by authority; at most [`HOSTS_MAX`], the
/// most recently used last.
#[derive(Default)]
pub(super) struct Hosts {
    hosts: Vec<Host>,
}

struct Host {
    authority: String,
    addr: SocketAddr,
    conn: Option<Conn>,
}

impl Hosts {
    /// The entry of `authority` (resolved on first use), moved to the most-recent end.
    fn get(&mut self, authority: &str) -> Result<&mut Host, Failure> {
        match self.hosts.iter().position(|h| h.authority == authority) {
            Some(i) => {
                let h = self.hosts.remove(i);
                self.hosts.push(h);
            }
            None => {
                let addr = authority
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| {
                        Failure::new(
                            ErrorKind::Redirect,
                            format!("cannot resolve the redirect destination {authority}"),
                        )
                    })?;
                if self.hosts.len() >= HOSTS_MAX {
                    self.hosts.remove(0);
                }
                self.hosts.push(Host {
                    authority: authority.to_string(),
                    addr,
                    conn: None,
                });
            }
        }
        self.hosts
            .last_mut()
            .ok_or_else(|| Failure::new(ErrorKind::Redirect, "no host entry"))
    }
}

/// The answer to one request as the worker records it.
#[derive(Debug, Default)]
pub(super) struct Answer {
    /// Body bytes of the final response.
    pub(super) bytes: u64,
    /// Redirects followed.
    pub(super) hops: u32,
    /// When the last redirect followed was read (the end of the redirect leg).
    pub(super) redirect_done: Option<Instant>,
    /// The first answer was a redirect (followed, or the valid answer with `--no-follow`).
    pub(super) redirected: bool,
}

/// Sends `req` on `conn` (opening it to `addr` if needed; once more on a fresh connection if
/// the kept-alive one turns out closed) and reads the response head.
fn send_on<'c>(
    conn: &'c mut Option<Conn>,
    addr: SocketAddr,
    authority: &str,
    req: &[u8],
    timeout: Duration,
    reconnects: &mut u64,
) -> Result<(&'c mut Conn, ResponseHead), Failure> {
    let mut retried = false;
    let head = loop {
        if conn.is_none() {
            *reconnects += 1;
            *conn = Some(Conn::connect(addr, timeout).map_err(|e| {
                Failure::new(ErrorKind::Connect, connect_message(authority, &e, timeout))
            })?);
        }
        let sent = match conn.as_mut() {
            Some(c) => c.send(req),
            None => return Err(Failure::new(ErrorKind::Closed, "no connection")),
        };
        match sent {
            Ok(head) => break head,
            Err(e) => {
                *conn = None;
                // A kept-alive connection the server had already closed: nothing of the
                // response arrived, so the request is worth one retry on a new one.
                if e.is_stale() && !retried {
                    retried = true;
                    continue;
                }
                return Err(e.into());
            }
        }
    };
    match conn.as_mut() {
        Some(c) => Ok((c, head)),
        None => Err(Failure::new(ErrorKind::Closed, "no connection")),
    }
}

impl Shared {
    pub(super) fn worker(&self, stats: &Mutex<WorkerStats>, conn: Conn) {
        let mut conn = Some(conn);
        let mut hosts = Hosts::default();
        let mut buf = vec![0u8; 256 << 10];
        let mut req = Vec::with_capacity(512);
        loop {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            let job = lock(&self.schedule).next_job(&self.assets);
            let Some(job) = job else { break };
            let taken = Instant::now();
            if taken > self.send_until {
                break;
            }
            let free_early = taken < job.intended;
            if free_early && !sleep_until(job.intended, &self.stop) {
                break;
            }
            let sent = Instant::now();
            let asset = &self.assets[job.asset];
            req.clear();
            req.extend_from_slice(&asset.get_prefix);
            push_range_and_end(&mut req, job.range);
            let mut reconnects = 0;
            let result = self.request(&mut conn, &mut hosts, &req, &job, &mut buf, &mut reconnects);
            let outcome = Outcome {
                result,
                sent,
                done: Instant::now(),
                free_early,
                reconnects,
            };
            lock(stats).record(&job, &asset.id, outcome);
        }
    }

    /// Sends one request to the target and checks the answer: a redirect is followed (up to
    /// [`REDIRECTS_MAX`] hops, each destination on a kept-alive connection of its own from
    /// `hosts`) unless `--no-follow` makes it the valid answer; the final response's head is
    /// checked against what was asked before any body is read, then the body is read. A
    /// connection is dropped whenever what follows on it is in doubt.
    fn request(
        &self,
        conn: &mut Option<Conn>,
        hosts: &mut Hosts,
        req: &[u8],
        job: &Job,
        buf: &mut [u8],
        reconnects: &mut u64,
    ) -> Result<Answer, Failure> {
        let mut answer = Answer::default();
        let (c, head) = send_on(
            conn,
            self.target.addr,
            &self.target.authority,
            req,
            self.timeout,
            reconnects,
        )?;
        let mut step = self.answer(c, &head, job, buf, &mut answer);
        if head.close || step.as_ref().is_err_and(|f| !f.keep_conn) {
            *conn = None;
        }
        let mut from = self.target.authority.clone();
        let mut hop_req = Vec::new();
        while let Step::Redirect(location) = step? {
            if answer.hops >= REDIRECTS_MAX {
                return Err(Failure::new(
                    ErrorKind::Redirect,
                    format!("more than {REDIRECTS_MAX} redirects"),
                ));
            }
            answer.hops += 1;
            let (authority, target) = parse_location(&location, &from)?;
            hop_req.clear();
            // Writing into a Vec cannot fail.
            let _ = write!(hop_req, "GET {target} HTTP/1.1\r\nHost: {authority}\r\n");
            push_range_and_end(&mut hop_req, job.range);
            let host = hosts.get(&authority)?;
            let (c, head) = send_on(
                &mut host.conn,
                host.addr,
                &authority,
                &hop_req,
                self.timeout,
                reconnects,
            )?;
            step = self.answer(c, &head, job, buf, &mut answer);
            if head.close || step.as_ref().is_err_and(|f| !f.keep_conn) {
                host.conn = None;
            }
            from = authority;
        }
        Ok(answer)
    }

    /// Reads one response whose head is `head`: a redirect to follow (its small body read, so
    /// the connection stays usable), or the final response checked and read into `answer`.
    fn answer(
        &self,
        c: &mut Conn,
        head: &ResponseHead,
        job: &Job,
        buf: &mut [u8],
        answer: &mut Answer,
    ) -> Result<Step, Failure> {
        let len = framed_length(head)?;
        if is_redirect(head.status) {
            if let Some(location) = head.header("location") {
                answer.redirected |= answer.hops == 0;
                // A redirect's body is a short reason; one unframed or large is refused, as
                // reading it would cost more than the redirect itself.
                let Some(l) = len.filter(|&l| l <= ERROR_BODY_MAX) else {
                    return Err(Failure::new(
                        ErrorKind::Protocol,
                        format!("a {} without a small Content-Length body", head.status),
                    ));
                };
                let location = location.to_string();
                c.discard(l, buf)?;
                if !self.follow {
                    return Ok(Step::Done);
                }
                answer.redirect_done = Some(Instant::now());
                return Ok(Step::Redirect(location));
            }
        }
        let size = self.assets[job.asset].size;
        answer.bytes = check_and_read(c, head, len, job, size, buf)?;
        Ok(Step::Done)
    }
}

/// What a response leaves to do.
pub(super) enum Step {
    Done,
    /// Follow this `Location`.
    Redirect(String),
}

/// Ends a GET request: the `Range` header when one is asked, then the blank line.
fn push_range_and_end(req: &mut Vec<u8>, range: Option<(u64, u64)>) {
    if let Some((a, b)) = range {
        // Writing into a Vec cannot fail.
        let _ = write!(req, "Range: bytes={a}-{b}\r\n");
    }
    req.extend_from_slice(b"\r\n");
}

/// The body length of a valid response (the body read), or why it is not valid. A body
/// is only read when its length is known and sane, so a hostile length cannot keep a
/// worker reading; a failure says whether the connection is still usable.
fn check_and_read(
    c: &mut Conn,
    head: &ResponseHead,
    content_length: Option<u64>,
    job: &Job,
    size: u64,
    buf: &mut [u8],
) -> Result<u64, Failure> {
    // Size 0: not asked (`--no-follow`), so a whole asset's length is taken as it comes.
    let (status, want) = match job.range {
        Some((a, b)) => (206, Some(b - a + 1)),
        None => (200, (size > 0).then_some(size)),
    };
    if head.status != status {
        let f = Failure::new(
            ErrorKind::Status(head.status),
            format!("answered {} instead of {status}", head.status),
        );
        // A small error body (a 404's message) is read so that the connection stays
        // usable; for a large one a new connection is cheaper.
        return Err(match content_length.filter(|&l| l <= ERROR_BODY_MAX) {
            Some(len) => {
                c.discard(len, buf)?;
                f.keep_conn()
            }
            None => f,
        });
    }
    let Some(len) = content_length else {
        return Err(Failure::new(
            ErrorKind::Protocol,
            format!("a {} response without Content-Length", head.status),
        ));
    };
    if let Some(want) = want.filter(|&w| w != len) {
        return Err(Failure::new(
            ErrorKind::WrongLength,
            format!("Content-Length {len} instead of {want}"),
        ));
    }
    c.discard(len, buf)?;
    if let Some((a, b)) = job.range {
        let got = head.content_range();
        if got != Some((a, b, size)) {
            return Err(Failure::new(
                ErrorKind::WrongRange,
                format!("Content-Range {got:?} instead of bytes {a}-{b}/{size}"),
            )
            .keep_conn());
        }
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// Sends a request to a server that answers `reply`, and checks the response as a worker
    /// does for `range` of a 100-byte asset; also returns the connection.
    fn check(reply: &'static [u8], range: Option<(u64, u64)>) -> (Result<u64, Failure>, Conn) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().expect("accept");
            let mut got = [0u8; 1024];
            let _ = s.read(&mut got);
            s.write_all(reply).expect("reply");
        });
        let mut c = Conn::connect(addr, Duration::from_secs(5)).expect("connect");
        let head = c.send(b"GET /assets/a HTTP/1.1\r\n\r\n").expect("a head");
        let job = Job {
            intended: Instant::now(),
            asset: 0,
            range,
            measured: true,
        };
        let mut buf = [0u8; 4];
        let result = framed_length(&head)
            .and_then(|len| check_and_read(&mut c, &head, len, &job, 100, &mut buf));
        (result, c)
    }

    #[test]
    fn responses_are_checked_against_the_request() {
        let ok = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 10-19/100\r\n\
                   Content-Length: 10\r\n\r\n0123456789";
        assert_eq!(check(ok, Some((10, 19))).0.expect("valid"), 10);
        let whole = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        let e = check(whole, None).0.expect_err("100 bytes asked");
        assert_eq!(e.kind, ErrorKind::WrongLength, "{e:?}");
        let e = check(ok, Some((0, 9))).0.expect_err("another range");
        assert_eq!(
            (e.kind, e.keep_conn),
            (ErrorKind::WrongRange, true),
            "{e:?}"
        );
        let e = check(ok, None).0.expect_err("a 206 for a whole asset");
        assert_eq!(
            (e.kind, e.keep_conn),
            (ErrorKind::Status(206), true),
            "{e:?}"
        );
        // A small error body is read, so the next response on the connection is readable.
        let (r, mut c) = check(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot foundHTTP/1.1 204 OK\r\n\r\n",
            Some((0, 9)),
        );
        let e = r.expect_err("a 404");
        assert_eq!(
            (e.kind, e.keep_conn),
            (ErrorKind::Status(404), true),
            "{e:?}"
        );
        assert_eq!(e.detail, "answered 404 instead of 206");
        assert_eq!(c.read_head().expect("the next response").status, 204);
        for reply in [
            &b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/100\r\n\r\n",
        ] {
            let e = check(reply, Some((0, 9)))
                .0
                .expect_err("not framed by Content-Length");
            assert_eq!((e.kind, e.keep_conn), (ErrorKind::Protocol, false), "{e:?}");
        }
        let e = check(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 0-9/100\r\nContent-Length: 10\r\n\r\n01234",
            Some((0, 9)),
        )
        .0
        .expect_err("a short body");
        assert_eq!(e.kind, ErrorKind::ShortBody, "{e:?}");
        assert_eq!(e.detail, "the body ended after 5 of 10 bytes");
    }

    #[test]
    fn locations_are_followed_only_over_http() {
        let ok = |l: &str| parse_location(l, "h:1").expect(l);
        assert_eq!(
            ok("http://10.0.0.2:7001/assets/a?ticket=ab.cd"),
            ("10.0.0.2:7001".into(), "/assets/a?ticket=ab.cd".into())
        );
        assert_eq!(ok("HTTP://n:2"), ("n:2".into(), "/".into()));
        assert_eq!(ok("http://n:2?x=1"), ("n:2".into(), "/?x=1".into()));
        assert_eq!(ok("/assets/b"), ("h:1".into(), "/assets/b".into()));
        for bad in [
            "",
            "https://n:2/a",
            "ftp://n:2/a",
            "//n:2/a",
            "assets/a",
            "http://n/a",
            "http://u@n:2/a",
            "http://n:2/a b",
            "http://n:2/a\r\nX: 1",
        ] {
            let f = parse_location(bad, "h:1").expect_err(bad);
            assert_eq!(f.kind, ErrorKind::Redirect, "{bad:?}");
        }
    }

    #[test]
    fn client_errors_keep_their_kinds_and_messages() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let target = Target {
            authority: format!("localhost:{}", addr.port()),
            addr,
        };
        let f = connect(&target, Duration::from_secs(2)).expect_err("refused");
        assert_eq!(f.kind, ErrorKind::Connect);
        assert_eq!(
            f.detail,
            format!(
                "cannot connect to localhost:{}: connection refused; is `reel node` listening \
                 there?",
                addr.port()
            )
        );
        let timeout = ClientError::Io {
            during: "reading the response head",
            source: std::io::Error::from(IoKind::WouldBlock),
            stale: false,
        };
        let f = Failure::from(timeout);
        assert_eq!(f.kind, ErrorKind::Timeout);
        assert_eq!(
            f.detail,
            "reading the response head: nothing arrived for --timeout"
        );
        let f = Failure::from(ClientError::Closed { stale: true });
        assert_eq!(f.kind, ErrorKind::Closed);
        assert_eq!(
            f.detail,
            "the connection closed before a complete response head"
        );
    }
}
