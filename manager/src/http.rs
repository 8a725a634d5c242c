//! The manager's HTTP/1.1 serving on tokio: heads parsed by `reel-http` (the node's parser, with
//! its limits and smuggling refusals), bodies by `Content-Length` only, keep-alive, timeouts.
//!
//! The manager is not on the data path: a request is a redirect, a JSON body or a report, so a
//! task per connection on a conventional async runtime is the right tool.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reel_http::{parse_head, BodyFraming, HttpError, Limits, Method, Parsed, RequestHead};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the handlers see it.
pub struct Request {
    pub head: RequestHead,
    /// The head's bytes (the head's ranges index into it).
    pub buf: Vec<u8>,
    /// The body (empty unless the listener reads bodies).
    pub body: Vec<u8>,
    pub client: SocketAddr,
}

impl Request {
    pub fn method(&self) -> Method {
        self.head.method
    }

    pub fn target(&self) -> &str {
        self.head.target(&self.buf)
    }

    pub fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        let (_, q) = self.target().split_once('?')?;
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then_some(v)
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .header_once(&self.buf, name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// A response to render.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub close: bool,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            content_type: "text/plain; charset=utf-8",
            body: Vec::new(),
            close: false,
        }
    }

    /// An error with a one-line reason as its body.
    pub fn error(status: u16, reason: impl AsRef<str>) -> Response {
        let mut r = Response::new(status);
        r.body = format!("{}\n", reason.as_ref()).into_bytes();
        if status == 401 {
            r = r.header("WWW-Authenticate", "Bearer realm=\"reel-cluster\"");
        }
        r
    }

    pub fn json(status: u16, body: Vec<u8>) -> Response {
        let mut r = Response::new(status);
        r.content_type = "application/json";
        r.body = body;
        r
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    pub fn closing(mut self) -> Response {
        self.close = true;
        self
    }

    fn render(&self, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        let reason = reason_phrase(self.status);
        out.extend_from_slice(format!("HTTP/1.1 {} {reason}\r\n", self.status).as_bytes());
        out.extend_from_slice(b"Server: reel-manager\r\n");
        if !self.body.is_empty() || self.status >= 300 {
            out.extend_from_slice(format!("Content-Type: {}\r\n", self.content_type).as_bytes());
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        for (n, v) in &self.headers {
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Status",
    }
}

/// What a listener does with request bodies.
#[derive(Clone, Copy, Debug)]
pub struct BodyPolicy {
    /// Largest body read; a larger `Content-Length` is a 413.
    pub max: usize,
    /// Methods whose body is read; a request of another method with a body gets its answer
    /// and the connection closes (an upload's redirect never reads the upload).
    pub read_for_put: bool,
    /// Also read a PUT's body (up to `max`) when its path ends so (`/policy` on the client
    /// listener, whose uploads are never read).
    pub put_path_suffix: Option<&'static str>,
}

/// Listener settings.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub body: BodyPolicy,
}

/// A request handler: the response, given the request.
pub trait Handler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, req: Request) -> impl Future<Output = Response> + Send;
}

/// Accepts connections on `listener` until the process ends, a task each.
pub async fn serve<H: Handler>(listener: TcpListener, handler: Arc<H>, opts: ServeOptions) {
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let h = handler.clone();
        tokio::spawn(async move {
            connection(stream, client, h, opts).await;
        });
    }
}

async fn read_more(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<usize, ()> {
    let mut chunk = [0u8; 16 * 1024];
    match tokio::time::timeout(timeout, stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => Err(()),
        Ok(Ok(n)) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(n)
        }
    }
}

/// After answering a request whose body was not read (an upload redirected elsewhere), reads
/// and discards what the client still sends, for a while, before the socket closes: closing
/// with unread bytes would reset the connection and could destroy the answer before the
/// client reads it (nginx's lingering close).
async fn linger(stream: &mut TcpStream) {
    const LINGER_FOR: Duration = Duration::from_secs(2);
    const LINGER_BYTES: usize = 256 << 20;
    let deadline = tokio::time::Instant::now() + LINGER_FOR;
    let mut scratch = vec![0u8; 64 * 1024];
    let mut drained = 0usize;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut scratch)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

async fn connection<H: Handler>(
    mut stream: TcpStream,
    client: SocketAddr,
    handler: Arc<H>,
    opts: ServeOptions,
) {
    let limits = Limits::default();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // The head.
        let mut first = true;
        let head = loop {
            if !buf.is_empty() {
                match parse_head(&buf, &limits) {
                    Ok(Parsed::Complete(h)) => break h,
                    Ok(Parsed::NeedMore) => {}
                    Err(e) => {
                        let r = Response::error(e.status().0, e.to_string()).closing();
                        let r = match e {
                            HttpError::MethodNotAllowed { allow } => r.header("Allow", allow),
                            HttpError::UnknownMethod => {
                                r.header("Allow", reel_http::error::ALLOW_ALL)
                            }
                            _ => r,
                        };
                        let _ = stream.write_all(&r.render(false)).await;
                        return;
                    }
                }
            }
            let t = if first && buf.is_empty() {
                opts.idle_timeout
            } else {
                opts.head_timeout
            };
            first = false;
            if read_more(&mut stream, &mut buf, t).await.is_err() {
                if !buf.is_empty() {
                    let r =
                        Response::error(408, "the request head did not arrive in time").closing();
                    let _ = stream.write_all(&r.render(false)).await;
                }
                return;
            }
        };
        let head_len = head.head_len;
        let head_framing = head.body;
        let head_only = head.method == Method::Head;
        let mut close = !head.keep_alive;
        let mut body = Vec::new();
        let mut consumed = head_len;
        let target = head.target(&buf);
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        let read_put = head.method == Method::Put
            && (opts.body.read_for_put
                || opts
                    .body
                    .put_path_suffix
                    .is_some_and(|sfx| path.ends_with(sfx)));
        match head.body {
            BodyFraming::None => {}
            BodyFraming::Length(n) if read_put => {
                if n > opts.body.max as u64 {
                    let r = Response::error(
                        413,
                        format!(
                            "the body is {n} bytes; this listener takes up to {}",
                            opts.body.max
                        ),
                    )
                    .closing();
                    let _ = stream.write_all(&r.render(false)).await;
                    return;
                }
                let n = n as usize;
                if head.expect_continue {
                    let _ = stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                }
                while buf.len() < head_len + n {
                    if read_more(&mut stream, &mut buf, opts.body_timeout)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                body = buf[head_len..head_len + n].to_vec();
                consumed = head_len + n;
            }
            BodyFraming::Chunked if read_put => {
                let r = Response::error(411, "send the body with a Content-Length").closing();
                let _ = stream.write_all(&r.render(false)).await;
                return;
            }
            // A body this listener does not read (an upload redirected elsewhere): answer,
            // then close, since the rest of the connection is that body.
            _ => close = true,
        }
        let head_buf = buf[..head_len].to_vec();
        buf.drain(..consumed.min(buf.len()));
        let req = Request {
            head,
            buf: head_buf,
            body,
            client,
        };
        let unread_body = close && !matches!(head_framing, BodyFraming::None);
        let mut resp = handler.clone().handle(req).await;
        if close {
            resp.close = true;
        }
        if stream.write_all(&resp.render(head_only)).await.is_err() || resp.close {
            let _ = stream.shutdown().await;
            if unread_body {
                linger(&mut stream).await;
            }
            return;
        }
    }
}
