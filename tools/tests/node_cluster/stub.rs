//! A stub cluster manager: a std `TcpListener` thread (one more per connection) that parses
//! requests with `reel_http`, records each one, and answers as the protocol says, or as the
//! test sets it to misbehave ([`Behaviour`]). Keep-alive; every socket has a read timeout and
//! every thread ends when the stub is dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reel_http::cluster::{Registered, ReportAck, Tombstone};
use reel_http::{parse_head, BodyFraming, Limits, Parsed};
use serde_json::Value;

/// One request the stub received.
#[derive(Clone, Debug)]
pub struct Rec {
    /// Its place in the order of arrival (from 1).
    pub seen: usize,
    pub path: String,
    pub body: Value,
    /// The `Authorization` header, as sent.
    pub auth: Option<String>,
}

/// How the stub answers.
#[derive(Debug)]
pub struct Behaviour {
    pub report_ms: u64,
    /// Sent with every registration.
    pub register_tombstones: Vec<Tombstone>,
    /// Sent with the next report's answer, then forgotten.
    pub ack_tombstones: Vec<Tombstone>,
    /// `/v1/published` gets a 500.
    pub refuse_published: bool,
    /// `/v1/published` gets no answer (the connection is held for 4 s, then closed).
    pub silent_published: bool,
    /// The next report gets a 409, as from a manager that forgot the session.
    pub conflict_next_report: bool,
    /// Every request gets a 503 naming this leader (a standby).
    pub not_leader: Option<String>,
}

/// Stubs started so far: each numbers its sessions from its own base, as a restarted manager
/// would not reuse the old one's.
static STUBS: AtomicU64 = AtomicU64::new(0);

struct State {
    token: String,
    session_base: u64,
    recs: Mutex<Vec<Rec>>,
    behaviour: Mutex<Behaviour>,
    sessions: Mutex<Vec<u64>>,
    stop: AtomicBool,
}

pub struct Stub {
    addr: SocketAddr,
    state: Arc<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stub {
    /// A stub on a free loopback port that asks `token` of every request.
    pub fn start(token: &str) -> Stub {
        Stub::start_at(token, "127.0.0.1:0".parse().expect("addr"))
    }

    /// A stub at `addr` (a restarted manager on the port of a dropped one).
    pub fn start_at(token: &str, addr: SocketAddr) -> Stub {
        let l = TcpListener::bind(addr).expect("bind the stub manager");
        let addr = l.local_addr().expect("stub address");
        l.set_nonblocking(true).expect("nonblocking listener");
        let state = Arc::new(State {
            token: token.to_string(),
            session_base: 1000 * (1 + STUBS.fetch_add(1, Ordering::Relaxed)),
            recs: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Behaviour {
                report_ms: 100,
                register_tombstones: Vec::new(),
                ack_tombstones: Vec::new(),
                refuse_published: false,
                silent_published: false,
                conflict_next_report: false,
                not_leader: None,
            }),
            sessions: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            while !st.stop.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((sock, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || serve(&st, sock));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Stub { addr, state }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes how the stub answers from now on.
    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut lock(&self.state.behaviour));
    }

    /// Every request so far that `pred` accepts, in order of arrival.
    pub fn all(&self, pred: impl Fn(&Rec) -> bool) -> Vec<Rec> {
        lock(&self.state.recs)
            .iter()
            .filter(|r| pred(r))
            .cloned()
            .collect()
    }

    /// The first request so far that `pred` accepts.
    pub fn find(&self, pred: impl Fn(&Rec) -> bool) -> Option<Rec> {
        lock(&self.state.recs).iter().find(|r| pred(r)).cloned()
    }

    /// The first request `pred` accepts, waiting for it up to `within`.
    pub fn wait_for(&self, what: &str, within: Duration, pred: impl Fn(&Rec) -> bool) -> Rec {
        let deadline = Instant::now() + within;
        loop {
            if let Some(r) = self.find(&pred) {
                return r;
            }
            if Instant::now() > deadline {
                let paths: Vec<String> = lock(&self.state.recs)
                    .iter()
                    .map(|r| format!("{} {}", r.path, r.body))
                    .collect();
                panic!("the stub manager saw no {what} within {within:?}; it saw: {paths:#?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
    }
}

/// Serves one connection's requests until it closes or the stub stops.
fn serve(st: &State, mut sock: TcpStream) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    while !st.stop.load(Ordering::Relaxed) {
        let parsed = if buf.is_empty() {
            Ok(Parsed::NeedMore)
        } else {
            parse_head(&buf, &Limits::default())
        };
        let head = match parsed {
            Ok(Parsed::Complete(h)) => h,
            Ok(Parsed::NeedMore) => match sock.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => return,
            },
            Err(_) => return,
        };
        let len = match head.body {
            BodyFraming::Length(n) => n as usize,
            _ => 0,
        };
        while buf.len() < head.head_len + len {
            match sock.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    if st.stop.load(Ordering::Relaxed) {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
        // The protocol's requests are PUTs (see reel_http::cluster); another method shows in
        // the recorded path.
        let head_len = head.head_len;
        let as_parsed: Vec<u8> = buf[..head_len].to_vec();
        let put = head.method == reel_http::Method::Put;
        let path = format!(
            "{}{}",
            if put { "" } else { "(not a PUT) " },
            head.target(&as_parsed)
        );
        let auth = head
            .header_once(&as_parsed, "authorization")
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let body: Value =
            serde_json::from_slice(&buf[head_len..head_len + len]).unwrap_or(Value::Null);
        buf.drain(..head_len + len);
        let answer = answer(st, &path, &body, auth.as_deref());
        {
            let mut recs = lock(&st.recs);
            let seen = recs.len() + 1;
            recs.push(Rec {
                seen,
                path,
                body,
                auth,
            });
        }
        let Some((status, extra, out)) = answer else {
            // No answer: hold the connection, then close it.
            std::thread::sleep(Duration::from_secs(4));
            return;
        };
        let mut resp = if status == 204 {
            b"HTTP/1.1 204 No Content\r\n\r\n".to_vec()
        } else {
            format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
                out.len()
            )
            .into_bytes()
        };
        resp.extend_from_slice(&out);
        if sock.write_all(&resp).is_err() {
            return;
        }
    }
}

/// The answer to one request: status, extra header lines, body; `None` for none at all.
fn answer(
    st: &State,
    path: &str,
    body: &Value,
    auth: Option<&str>,
) -> Option<(u16, String, Vec<u8>)> {
    if auth != Some(format!("Bearer {}", st.token).as_str()) {
        return Some((401, String::new(), b"{}".to_vec()));
    }
    let mut b = lock(&st.behaviour);
    if let Some(leader) = &b.not_leader {
        return Some((503, format!("Reel-Leader: {leader}\r\n"), b"{}".to_vec()));
    }
    match path {
        "/v1/register" => {
            let mut sessions = lock(&st.sessions);
            let session = st.session_base + sessions.len() as u64;
            sessions.push(session);
            let r = Registered {
                session,
                report_ms: b.report_ms,
                tombstones: b.register_tombstones.clone(),
            };
            Some((200, String::new(), json(&r)))
        }
        "/v1/report" => {
            let session = body["session"].as_u64().unwrap_or(0);
            if b.conflict_next_report || !lock(&st.sessions).contains(&session) {
                b.conflict_next_report = false;
                return Some((409, String::new(), b"{}".to_vec()));
            }
            let ack = ReportAck {
                resync: false,
                tombstones: std::mem::take(&mut b.ack_tombstones),
            };
            Some((200, String::new(), json(&ack)))
        }
        "/v1/published" if b.silent_published => None,
        "/v1/published" if b.refuse_published => Some((500, String::new(), b"{}".to_vec())),
        "/v1/published" => Some((204, String::new(), Vec::new())),
        _ => Some((404, String::new(), b"{}".to_vec())),
    }
}

fn json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("a protocol body serializes")
}
