//! One shard: a thread with its own ring, listener, connections and registered buffers.
//!
//! The loop: accept → receive a head → parse (`http::parse_head`) → route → answer. GET/HEAD of
//! an asset become a `Stream`: the response head goes out with a plain `SEND`, then the asset
//! bytes are read chunk by chunk by the stream's source (`source`; from a volume, O_DIRECT
//! `READ_FIXED`) into registered buffers and sent with `SEND_ZC` out of the very same buffers (a
//! plain `SEND` below the zero-copy cutoff). Up to `stream_depth` chunks of a stream are read
//! ahead while one is being sent; unaligned range edges are a slice of the aligned buffer.
//! Uploads and deletes go to an ingest worker ([`super::worker`]), which hands the connection
//! back. The control endpoints are answered by [`super::control`] and sent as one small body.
//! A GET/HEAD with a relay ticket for an asset this node lacks asks the holder for its metadata
//! first (the connection waits in `Phase::Relay`, the request head still in its receive
//! buffer), then is planned and streamed like a local one, from a `RelaySource`.
//!
//! Invariants:
//! - A connection's socket is closed only when none of its operations is in the kernel
//!   (`Conn::ops == 0`), so a descriptor number is never reused under an in-flight operation.
//! - At most one send per connection is in flight, so response bytes leave in order.
//! - Buffers come from the shard's fixed pool; a stream that finds it empty waits in a FIFO
//!   and is resumed when a buffer is freed. The pool is the bound on device reads in flight and
//!   on buffers awaiting zero-copy notifications.
//! - Timeouts are enforced by `shutdown(2)` on the socket, which makes its pending operations
//!   complete; the normal completion path then closes it.

use std::collections::VecDeque;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::conn::{Conn, Phase, Piece, Stream};
use super::control::{self, Reply};
use super::metrics::{ErrorKind, ThreadMetrics};
use super::relay::{Ctl, RelaySource};
use super::source::{Cx, DeviceSource, Next, Source, SourceKind};
use super::worker::{Job, JobKind, Returned};
use super::Shared;
use reel_http::response::{render_head, Boundary, HeadFields};
use reel_http::{
    parse_head, plan, plan_error, route, AssetMeta, Body, BodyFraming, HttpError, Limits, Method,
    Parsed, RequestHead, Route, Segment, Status,
};
use reel_policy::RateWriter;
use reel_store::driver::sys::socket_send_queue_bytes;
use reel_store::driver::{Completion, Driver, DriverConfig, Op};

const K_ACCEPT: u64 = 1;
const K_WAKE: u64 = 2;
const K_RECV: u64 = 3;
const K_SEND: u64 = 4;
const K_SENDBUF: u64 = 6;
const K_PEER_ACCEPT: u64 = 7;
/// A relay's own operations on its holder socket (connect, requests, answer heads).
const K_RELAY: u64 = 8;
// Stream reads carry their source's kind (`source::TAG_KIND_BASE` and up).

const TICK: Duration = Duration::from_millis(100);

fn tag(kind: u64, conn: usize, chunk_seq: u32) -> u64 {
    (kind << 56) | ((chunk_seq as u64 & 0xff_ffff) << 32) | (conn as u64 & 0xffff_ffff)
}

fn untag(t: u64) -> (u64, usize, u32) {
    (
        t >> 56,
        (t & 0xffff_ffff) as usize,
        ((t >> 32) & 0xff_ffff) as u32,
    )
}

struct ShardState<'a> {
    id: usize,
    shared: &'a Shared,
    m: &'a ThreadMetrics,
    drv: Driver,
    conns: Vec<Option<Conn>>,
    conns_free: Vec<usize>,
    conns_open: usize,
    buf_waiters: VecDeque<usize>,
    jobs: Sender<Job>,
    returns: Receiver<Returned>,
    wake: io::PipeReader,
    listener: TcpListener,
    accept_armed: bool,
    /// The inter-server listener (`--peer-listen`): its connections are `peer` ones.
    peer_listener: Option<TcpListener>,
    peer_accept_armed: bool,
    limits: Limits,
    now_unix_s: u64,
    boundary_seed: u64,
    requests_in_flight: u64,
    /// This shard's request-rate counters (the only writer of its table).
    rate: RateWriter,
}

/// What a shard thread is started with, besides the shared state.
pub(crate) struct ShardParts {
    pub listener: TcpListener,
    pub peer_listener: Option<TcpListener>,
    pub jobs: Sender<Job>,
    pub returns: Receiver<Returned>,
    pub wake: io::PipeReader,
    pub rate: RateWriter,
    pub ready: Sender<Result<(), (usize, String)>>,
}

/// Runs shard `id` until the node stops. Reports start-up success or failure on `ready`.
pub(crate) fn run(id: usize, shared: &Shared, parts: ShardParts) {
    let ShardParts {
        listener,
        peer_listener,
        jobs,
        returns,
        wake,
        rate,
        ready,
    } = parts;
    let cfg = &shared.cfg;
    let ring_entries = ((cfg.read_bufs_per_shard * 2 + 64).next_power_of_two() as u32).min(4096);
    let drv = match Driver::new(&DriverConfig {
        ring_entries,
        buf_size: cfg.read_buf_bytes,
        buf_count: cfg.read_bufs_per_shard,
        write_log: None,
    }) {
        Ok(d) => d,
        Err(e) => {
            let _ = ready.send(Err((id, e.to_string())));
            return;
        }
    };
    let mut s = ShardState {
        id,
        shared,
        m: shared.shard_metrics(id),
        drv,
        conns: Vec::new(),
        conns_free: Vec::new(),
        conns_open: 0,
        buf_waiters: VecDeque::new(),
        jobs,
        returns,
        wake,
        listener,
        accept_armed: false,
        peer_listener,
        peer_accept_armed: false,
        limits: Limits {
            head_bytes_max: cfg.head_bytes_max,
            ..Limits::default()
        },
        now_unix_s: unix_now(),
        boundary_seed: fastrand_seed(id),
        requests_in_flight: 0,
        rate,
    };
    s.arm_accept();
    s.arm_peer_accept();
    s.arm_wake();
    let _ = ready.send(Ok(()));
    drop(ready);
    let mut last_tick = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        if let Err(e) = s.drv.wait_timeout(TICK) {
            tracing::error!(shard = id, error = %e, "ring failed; shard stops");
            break;
        }
        s.now_unix_s = unix_now();
        while let Some(c) = s.drv.pop() {
            s.on_completion(c);
        }
        // The requests of this turn become visible to the scheduler's next fold.
        s.rate.flush();
        if !s.accept_armed {
            s.arm_accept();
        }
        if !s.peer_accept_armed {
            s.arm_peer_accept();
        }
        let now = Instant::now();
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            s.check_timeouts(now);
            s.m.set_buffers_free(s.drv.bufs_free() as u64);
        }
        s.m.set_in_flight(s.requests_in_flight);
    }
    // Shutting down: close every socket so pending operations end, then let the driver's drop
    // cancel and drain the rest.
    for c in s.conns.iter().flatten() {
        if let Some(sock) = &c.sock {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn fastrand_seed(id: usize) -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ ((id as u64) << 48) ^ 0x9e37_79b9_7f4a_7c15
}

impl ShardState<'_> {
    fn cfg(&self) -> &super::NodeConfig {
        &self.shared.cfg
    }

    fn arm_accept(&mut self) {
        let fd = self.listener.as_raw_fd();
        if self
            .drv
            .push(Op::Accept { fd }, tag(K_ACCEPT, 0, 0))
            .is_ok()
        {
            self.accept_armed = true;
        }
    }

    fn arm_peer_accept(&mut self) {
        let Some(fd) = self.peer_listener.as_ref().map(|l| l.as_raw_fd()) else {
            return;
        };
        if self
            .drv
            .push(Op::Accept { fd }, tag(K_PEER_ACCEPT, 0, 0))
            .is_ok()
        {
            self.peer_accept_armed = true;
        }
    }

    fn arm_wake(&mut self) {
        let fd = self.wake.as_raw_fd();
        let _ = self.drv.push(Op::PollIn { fd }, tag(K_WAKE, 0, 0));
    }

    fn on_completion(&mut self, c: Completion) {
        let (kind, ci, seq) = untag(c.tag);
        match kind {
            K_ACCEPT => self.on_accept(c, false),
            K_PEER_ACCEPT => self.on_accept(c, true),
            K_WAKE => self.on_wake(),
            K_RECV => self.on_recv(ci, c),
            K_SEND => self.on_send(ci, c),
            K_SENDBUF => self.on_sendbuf(ci, seq, c),
            K_RELAY => self.on_relay_ctl(ci, c),
            k => match SourceKind::from_tag_kind(k) {
                Some(source) => self.on_source_read(ci, seq, source, c),
                None => tracing::error!(tag = c.tag, "completion with an unknown tag"),
            },
        }
    }

    /// A connection accepted on the access listener, or (`peer`) on the inter-server one.
    fn on_accept(&mut self, c: Completion, peer: bool) {
        if peer {
            self.peer_accept_armed = false;
        } else {
            self.accept_armed = false;
        }
        let fd = match (c.result, c.fd) {
            (Ok(_), Some(fd)) => fd,
            (Err(e), _) => {
                self.m.error(ErrorKind::AcceptFailed);
                tracing::warn!(shard = self.id, error = %e, "accept failed");
                // Re-armed at the next tick, not now, so EMFILE cannot spin the loop.
                return;
            }
            (Ok(_), None) => return,
        };
        let sock = TcpStream::from(fd);
        // Keep accepting even at the limit, so excess clients get a quick 503 instead of
        // waiting unseen in the listen backlog.
        if peer {
            self.arm_peer_accept();
        } else {
            self.arm_accept();
        }
        if self.conns_open >= self.cfg().connections_per_shard_max {
            self.m.error(ErrorKind::ConnectionLimit);
            let mut head = Vec::new();
            let err = HttpError::Node {
                status: Status::SERVICE_UNAVAILABLE,
                reason: "connection limit reached on this node; retry later".into(),
            };
            reel_http::response::render_error(&mut head, &err, self.now_unix_s, false, true);
            let _ = sock.set_nonblocking(true);
            let _ = (&sock).write(&head);
            return;
        }
        let _ = sock.set_nodelay(true);
        self.m.connection_opened();
        let conn = Conn::new(sock, &[], self.cfg(), peer);
        let ci = self.insert(conn);
        self.arm_recv(ci);
    }

    fn insert(&mut self, conn: Conn) -> usize {
        self.conns_open += 1;
        if let Some(i) = self.conns_free.pop() {
            self.conns[i] = Some(conn);
            i
        } else {
            self.conns.push(Some(conn));
            self.conns.len() - 1
        }
    }

    fn on_wake(&mut self) {
        let mut b = [0u8; 64];
        let _ = self.wake.read(&mut b);
        while let Ok(r) = self.returns.try_recv() {
            self.on_returned(r);
        }
        if !self.shared.stop.load(Ordering::Relaxed) {
            self.arm_wake();
        }
    }

    /// A connection comes back from an ingest worker after its upload or delete.
    fn on_returned(&mut self, r: Returned) {
        if r.close {
            self.m.connection_closed();
            return; // dropping the stream closes it
        }
        let conn = Conn::new(r.sock, &r.leftover, self.cfg(), r.peer);
        let ci = self.insert(conn);
        self.next_request(ci);
    }

    fn conn(&mut self, ci: usize) -> Option<&mut Conn> {
        self.conns.get_mut(ci).and_then(|c| c.as_mut())
    }

    fn arm_recv(&mut self, ci: usize) {
        let Some(c) = self.conn(ci) else { return };
        let Some(data) = c.rbuf.take() else { return };
        let at = c.rlen;
        let fd = c.fd;
        c.ops += 1;
        let _ = self.drv.push(Op::Recv { fd, data, at }, tag(K_RECV, ci, 0));
    }

    fn on_recv(&mut self, ci: usize, comp: Completion) {
        let Some(c) = self.conn(ci) else { return };
        c.ops -= 1;
        c.rbuf = comp.data;
        // An error (e.g. a reset) ends the connection like an orderly close.
        let n = comp.result.unwrap_or_default();
        if c.dying {
            self.maybe_close(ci);
            return;
        }
        if n == 0 {
            // The peer closed (or a timeout shut the socket down).
            if c.head_timed_out {
                self.send_error(
                    ci,
                    &HttpError::Node {
                        status: Status::REQUEST_TIMEOUT,
                        reason: "the request head did not arrive in time".into(),
                    },
                    true,
                );
            } else {
                self.kill(ci);
            }
            return;
        }
        if c.rlen == 0 {
            c.since = Instant::now();
        }
        c.rlen += n;
        c.phase = Phase::Head;
        self.next_request(ci);
    }

    /// Parses what the receive buffer holds: answers a complete head, or receives more.
    fn next_request(&mut self, ci: usize) {
        let limits = self.limits;
        let head_max = self.cfg().head_bytes_max;
        let Some(c) = self.conn(ci) else { return };
        if c.rlen == 0 {
            c.phase = Phase::Idle;
            c.since = Instant::now();
            self.arm_recv(ci);
            return;
        }
        let Some(rbuf) = c.rbuf.as_ref() else { return };
        let parsed = parse_head(&rbuf[..c.rlen], &limits);
        match parsed {
            Ok(Parsed::NeedMore) => {
                if c.rlen >= head_max {
                    self.m.error(ErrorKind::HeadTooLarge);
                    self.send_error(
                        ci,
                        &HttpError::HeadTooLarge {
                            limit_bytes: head_max,
                        },
                        true,
                    );
                } else {
                    if c.phase == Phase::Idle {
                        c.since = Instant::now();
                    }
                    c.phase = Phase::Head;
                    self.arm_recv(ci);
                }
            }
            Err(e) => {
                self.m.error(match e {
                    HttpError::HeadTooLarge { .. } | HttpError::TooManyHeaders { .. } => {
                        ErrorKind::HeadTooLarge
                    }
                    _ => ErrorKind::BadRequest,
                });
                self.send_error(ci, &e, true);
            }
            Ok(Parsed::Complete(head)) => {
                c.req_start = Instant::now();
                self.dispatch(ci, head);
            }
        }
    }

    fn dispatch(&mut self, ci: usize, head: RequestHead) {
        let Some(c) = self.conn(ci) else { return };
        let Some(rbuf) = c.rbuf.take() else { return };
        let target = head.target(&rbuf).to_string();
        let has_body = !matches!(head.body, BodyFraming::None | BodyFraming::Length(0));
        // On the inter-server listener the token comes before routing: a 400 for a bad target
        // or a 405 for a method would tell a client without the token which routes and methods
        // exist (issue 17's battery found route errors answered first).
        let peer = self.conn(ci).is_some_and(|c| c.peer);
        let refused = match (peer, &self.shared.cluster_token) {
            (true, Some(token)) => token
                .check(&head, &rbuf, "requests on the inter-server listener")
                .err(),
            _ => None,
        };
        if let Some(e) = refused {
            let c = self.conn(ci).expect("connection exists");
            c.rbuf = Some(rbuf);
            self.m.error(ErrorKind::Unauthorized);
            self.consume_head(ci, head.head_len);
            // The body is not read: close rather than take it for the next request.
            self.send_error(ci, &e, has_body || !head.keep_alive);
            return;
        }
        let r = route(&target);
        let outcome = r.and_then(|r| r.check_method(head.method).map(|()| r));
        let c = self.conn(ci).expect("connection exists");
        c.rbuf = Some(rbuf);
        let route = match outcome {
            Ok(r) => r,
            Err(e) => {
                self.m.error(ErrorKind::BadTarget);
                self.consume_head(ci, head.head_len);
                // A body we do not read would be taken for the next request: close.
                self.send_error(ci, &e, has_body || !head.keep_alive);
                return;
            }
        };
        if let Err(e) = self.authorize(ci, &head, &route, &target) {
            // Never logged with the token or the ticket: the reason names neither.
            self.m.error(ErrorKind::Unauthorized);
            self.consume_head(ci, head.head_len);
            // The body is not read: close rather than take it for the next request.
            self.send_error(ci, &e, has_body || !head.keep_alive);
            return;
        }
        if let Route::Chunks { .. } = route {
            // Chunk lists are for cluster peers only, whatever the method.
            let shared = self.shared;
            let c = self.conn(ci).expect("connection exists");
            let refusal = match &shared.cluster_token {
                None => Some(HttpError::Forbidden {
                    reason: "chunk lists are for cluster peers; this node has no cluster token \
                             (--cluster-token-file)"
                        .into(),
                }),
                Some(token) => c
                    .rbuf
                    .as_deref()
                    .and_then(|rbuf| token.check(&head, rbuf, "chunk lists").err()),
            };
            if let Some(e) = refusal {
                self.m.error(ErrorKind::Unauthorized);
                self.send_refusal(ci, &head, &e, has_body);
                return;
            }
        }
        if matches!(route, Route::PullOrder | Route::Pulls | Route::Pull(_)) && !peer {
            // Pull orders come from the manager over the inter-server network only.
            let e = HttpError::Forbidden {
                reason: "pull orders are taken on the inter-server listener only".into(),
            };
            self.m.error(ErrorKind::Unauthorized);
            self.send_refusal(ci, &head, &e, has_body);
            return;
        }
        match route {
            Route::PullOrder => self.hand_off(ci, head, String::new(), JobKind::PullOrder),
            Route::Asset(id) if matches!(head.method, Method::Put | Method::Delete) => {
                let id = id.to_string();
                self.hand_off(ci, head, id, JobKind::Asset);
            }
            Route::Asset(id) => {
                let id = id.to_string();
                match reel_http::cluster::ticket_param(&target) {
                    Some(t) => self.relay_or_local(ci, &head, &id, t, has_body),
                    None => self.get_asset(ci, &head, &id, has_body),
                }
            }
            Route::AssetPolicy(id) if head.method == Method::Put => {
                // Stored as the internal asset "{id}/policy" (a name no user asset can have,
                // the last segment being reserved); the worker recognizes it by that suffix.
                let name = super::policy_asset_name(id);
                self.hand_off(ci, head, name, JobKind::Asset);
            }
            _ => {
                self.consume_head(ci, head.head_len);
                match control::answer(self.shared, &route, head.method, has_body) {
                    Some(Reply::Ok { content_type, body }) => {
                        self.send_small(ci, &head, Status::OK, content_type, body, has_body)
                    }
                    Some(Reply::Err { err, bad_target }) => {
                        if bad_target {
                            self.m.error(ErrorKind::BadTarget);
                        }
                        self.send_error(ci, &err, has_body || !head.keep_alive);
                    }
                    // The arms above take the routes the control endpoints leave to the shard.
                    None => {}
                }
            }
        }
    }

    /// Whether the request may go on: on the inter-server listener every request needs the
    /// cluster token; on the access listener of a node with a token, writes and admin requests
    /// do, except a PUT of an asset carrying a put ticket for it on this clustered node (the
    /// manager's redirect of an upload; a client following it drops `Authorization`).
    fn authorize(
        &mut self,
        ci: usize,
        head: &RequestHead,
        route: &Route<'_>,
        target: &str,
    ) -> Result<(), HttpError> {
        let Some(token) = &self.shared.cluster_token else {
            return Ok(());
        };
        let now = self.now_unix_s;
        let cluster = self.shared.cluster.as_ref();
        let Some(c) = self.conn(ci) else {
            return Ok(());
        };
        let rbuf = c.rbuf.as_deref().unwrap_or_default();
        if c.peer {
            return token.check(head, rbuf, "requests on the inter-server listener");
        }
        if !matches!(head.method, Method::Put | Method::Delete) {
            return Ok(());
        }
        let ticket = reel_http::cluster::ticket_param(target);
        match (cluster, ticket, route) {
            (Some(cl), Some(t), Route::Asset(id)) if head.method == Method::Put => {
                match reel_http::cluster::Ticket::verify(t, token, id, cl.node(), now) {
                    Ok(t) if t.kind == reel_http::cluster::TicketKind::Put => Ok(()),
                    Ok(_) => Err(HttpError::Forbidden {
                        reason: "the ticket is a relay ticket, not a put ticket".into(),
                    }),
                    Err(e) => Err(HttpError::Forbidden {
                        reason: format!("put ticket refused: {e}"),
                    }),
                }
            }
            _ => token.check(head, rbuf, "writes and admin requests"),
        }
    }

    /// Drops the head's bytes from the receive buffer; what follows (a pipelined request)
    /// moves to the front.
    fn consume_head(&mut self, ci: usize, head_len: usize) {
        let Some(c) = self.conn(ci) else { return };
        if let Some(rbuf) = c.rbuf.as_mut() {
            let n = head_len.min(c.rlen);
            rbuf.copy_within(n..c.rlen, 0);
            c.rlen -= n;
        }
    }

    fn hand_off(&mut self, ci: usize, head: RequestHead, id: String, kind: JobKind) {
        let Some(c) = self.conn(ci) else { return };
        if c.ops != 0 {
            // The socket may not leave while the kernel still works on it for us.
            c.phase = Phase::Sending;
            c.since = Instant::now();
            c.handoff = Some((head, id, kind));
            return;
        }
        let (Some(sock), Some(rbuf)) = (c.sock.take(), c.rbuf.take()) else {
            return;
        };
        let rlen = c.rlen;
        let req_start = c.req_start;
        let peer = c.peer;
        // The connection leaves this shard; the worker owns it until it hands it back.
        self.conns[ci] = None;
        self.conns_free.push(ci);
        self.conns_open -= 1;
        let job = Job {
            sock,
            rbuf,
            rlen,
            head,
            id,
            shard: self.id,
            req_start,
            peer,
            kind,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                self.m.error(ErrorKind::Overloaded);
                let err = HttpError::Node {
                    status: Status::SERVICE_UNAVAILABLE,
                    reason: "every ingest worker is busy; retry later".into(),
                };
                let mut out = Vec::new();
                reel_http::response::render_error(&mut out, &err, self.now_unix_s, false, true);
                let _ = job.sock.set_write_timeout(Some(Duration::from_millis(100)));
                let _ = (&job.sock).write_all(&out);
                self.m.request_done(503, 0, 0);
                self.m.connection_closed();
            }
        }
    }

    fn get_asset(&mut self, ci: usize, head: &RequestHead, id: &str, has_body: bool) {
        let found = self.shared.tiers.lookup(id);
        let (asset, vol) = match found {
            Some((a, vol)) => (Some(a), Some((vol.fd(), vol.data_offset()))),
            None => (None, None),
        };
        let Some(c) = self.conn(ci) else { return };
        let Some(rbuf) = c.rbuf.take() else { return };
        let close_extra = has_body;
        let p = match &asset {
            None => {
                let close = !head.keep_alive || close_extra;
                plan_error(
                    &super::no_such_asset(),
                    self.now_unix_s,
                    head.method == Method::Head,
                    close,
                )
            }
            Some(a) => {
                let etag = a.etag();
                let meta = AssetMeta {
                    size: a.size(),
                    etag: &etag,
                    last_modified_unix_s: a.created_unix_ns() / 1_000_000_000,
                    content_type: a
                        .content_type()
                        .unwrap_or(reel_http::response::DEFAULT_CONTENT_TYPE),
                };
                self.boundary_seed = self
                    .boundary_seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                plan(
                    head,
                    &rbuf,
                    &meta,
                    self.now_unix_s,
                    Boundary::from_seed(self.boundary_seed),
                )
            }
        };
        let c = self.conn(ci).expect("connection exists");
        c.rbuf = Some(rbuf);
        if p.status == Status::RANGE_NOT_SATISFIABLE {
            self.m.error(ErrorKind::RangeNotSatisfiable);
        }
        self.consume_head(ci, head.head_len);
        let todo: VecDeque<Segment> = match p.body {
            Body::Empty => VecDeque::new(),
            Body::Ranges(segs) => segs.into(),
        };
        // Count the request against the asset by the bytes it asks for, so a player fetching
        // an asset in many ranges adds up to about one view.
        let asked: u64 = todo
            .iter()
            .map(|s| match s {
                Segment::Asset(r) => r.len(),
                Segment::Literal(_) => 0,
            })
            .sum();
        if asked > 0 {
            if let Some(slot) = self.shared.index.slot(id) {
                self.rate.record_batched(slot, asked);
            }
        }
        let stream = Stream {
            status: p.status.0,
            source: match (asset, vol) {
                (Some(a), Some((fd, data_offset))) if !todo.is_empty() => {
                    Some(Source::Device(DeviceSource::new(fd, data_offset, a)))
                }
                _ => None,
            },
            todo,
            literals: p.literals,
            pieces: VecDeque::from([Piece::Bytes(p.head)]),
            next_seq: 0,
            send_in_flight: false,
            close_after: p.close || close_extra,
            failed: false,
        };
        self.start_stream(ci, stream);
    }

    /// `GET`/`HEAD /assets/{id}?ticket=T`: a relay ticket for this node, checked (a 403
    /// otherwise); the asset served from here if this node holds the ticket's version, else
    /// fetched from the ticket's source by a relay.
    fn relay_or_local(
        &mut self,
        ci: usize,
        head: &RequestHead,
        id: &str,
        encoded: &str,
        has_body: bool,
    ) {
        let ticket = match self.check_ticket(id, encoded) {
            Ok(None) => return self.get_asset(ci, head, id, has_body),
            Ok(Some(t)) => t,
            Err(e) => {
                self.m.error(ErrorKind::Unauthorized);
                return self.send_refusal(ci, head, &e, has_body);
            }
        };
        self.m.relay_stream();
        let Some(token) = &self.shared.cluster_token else {
            return;
        };
        let (relay, op) = match RelaySource::start(&ticket, id, token, &self.shared.own_addrs) {
            Ok(started) => started,
            Err(reason) => {
                self.m.relay_fetch_failure();
                let e = HttpError::Node {
                    status: Status(502),
                    reason,
                };
                return self.send_refusal(ci, head, &e, has_body);
            }
        };
        let Some(c) = self.conn(ci) else { return };
        c.relay = Some(relay);
        c.relay_req = Some((head.clone(), has_body));
        c.phase = Phase::Relay;
        c.since = Instant::now();
        c.ops += 1;
        let _ = self.drv.push(op, tag(K_RELAY, ci, 0));
    }

    /// The relay ticket `encoded` for `id`: `Ok(None)` when this node holds the version it
    /// names (serve it from here), `Ok(Some)` to relay, a 403 naming why it is refused.
    fn check_ticket(
        &self,
        id: &str,
        encoded: &str,
    ) -> Result<Option<reel_http::cluster::Ticket>, HttpError> {
        use reel_http::cluster::{Ticket, TicketKind};
        let forbid = |reason: String| HttpError::Forbidden { reason };
        let Some(token) = &self.shared.cluster_token else {
            return Err(forbid(
                "relay tickets are honoured by clustered nodes only; this node has no cluster \
                 token (--cluster-token-file)"
                    .into(),
            ));
        };
        // The cluster's name for this node (with --manager: --node-name or the host name),
        // else --node-name alone.
        let name = self
            .shared
            .cluster
            .as_ref()
            .map(|c| c.node())
            .or(self.cfg().node_name.as_deref());
        let Some(node) = name else {
            return Err(forbid(
                "this node has no --node-name, so no relay ticket names it".into(),
            ));
        };
        let t = Ticket::verify(encoded, token, id, node, self.now_unix_s)
            .map_err(|e| forbid(format!("relay ticket refused: {e}")))?;
        if t.kind != TicketKind::Relay {
            return Err(forbid("this ticket is not a relay ticket".into()));
        }
        let (Some(_), Some(etag)) = (t.source, t.etag.as_deref()) else {
            return Err(forbid("the relay ticket names no source or version".into()));
        };
        if self
            .shared
            .tiers
            .lookup(id)
            .is_some_and(|(a, _)| a.etag() == etag)
        {
            return Ok(None);
        }
        Ok(Some(t))
    }

    /// A relay's operation on its holder socket completed.
    fn on_relay_ctl(&mut self, ci: usize, comp: Completion) {
        let cx = Cx {
            m: self.m,
            shared: self.shared,
            shard: self.id,
            buf_size: self.drv.buf_size() as u64,
        };
        let Some(c) = self.conns.get_mut(ci).and_then(|c| c.as_mut()) else {
            return;
        };
        c.ops -= 1;
        if c.dying {
            self.maybe_close(ci);
            return;
        }
        let (setup, outcome) = if let Some(r) = c.relay.as_mut() {
            (true, r.on_ctl(comp, &cx))
        } else if let Some(Source::Relay(r)) = c.stream.as_mut().and_then(|st| st.source.as_mut()) {
            (false, r.on_ctl(comp, &cx))
        } else {
            tracing::error!(shard = self.id, "a relay completion without its relay");
            return;
        };
        match (setup, outcome) {
            (_, Ctl::Push(op)) => {
                c.ops += 1;
                let _ = self.drv.push(op, tag(K_RELAY, ci, 0));
            }
            (true, Ctl::MetaReady) => self.relay_ready(ci),
            (true, Ctl::Failed(reason)) => self.relay_failed(ci, reason),
            (true, Ctl::CoverReady) => {
                self.relay_failed(ci, "internal: a cover before the response".into())
            }
            (false, Ctl::CoverReady) => self.after_event(ci),
            (false, Ctl::MetaReady | Ctl::Failed(_)) => {
                if let Some(st) = c.stream.as_mut() {
                    st.failed = true;
                }
                self.after_event(ci);
            }
        }
    }

    /// The holder's metadata arrived: the response is planned from it as for a local asset,
    /// and streamed from the relay.
    fn relay_ready(&mut self, ci: usize) {
        let now = self.now_unix_s;
        self.boundary_seed = self
            .boundary_seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let boundary = Boundary::from_seed(self.boundary_seed);
        let Some(c) = self.conn(ci) else { return };
        let (Some(relay), Some((head, has_body))) = (c.relay.take(), c.relay_req.take()) else {
            return;
        };
        let (Some(meta), Some(rbuf)) = (relay.meta().cloned(), c.rbuf.take()) else {
            return;
        };
        let etag = relay.etag().to_string();
        let am = AssetMeta {
            size: meta.size,
            etag: &etag,
            last_modified_unix_s: meta.last_modified_unix_s,
            content_type: &meta.content_type,
        };
        let p = plan(&head, &rbuf, &am, now, boundary);
        c.rbuf = Some(rbuf);
        if p.status == Status::RANGE_NOT_SATISFIABLE {
            self.m.error(ErrorKind::RangeNotSatisfiable);
        }
        self.consume_head(ci, head.head_len);
        let todo: VecDeque<Segment> = match p.body {
            Body::Empty => VecDeque::new(),
            Body::Ranges(segs) => segs.into(),
        };
        // The demand this node's clients put on an asset it lacks, weighed as rates are
        // (bytes asked ÷ size), for the manager's placement.
        if meta.size > 0 && head.method == Method::Get {
            let asked: u64 = todo
                .iter()
                .map(|s| match s {
                    Segment::Asset(r) => r.len(),
                    Segment::Literal(_) => 0,
                })
                .sum();
            self.shared
                .note_relay_demand(relay.id(), asked as f64 / meta.size as f64);
        }
        let stream = Stream {
            status: p.status.0,
            // Without asset bytes to send the relay closes its holder socket here: nothing of
            // it is in flight between its answers.
            source: (!todo.is_empty()).then_some(Source::Relay(relay)),
            todo,
            literals: p.literals,
            pieces: VecDeque::from([Piece::Bytes(p.head)]),
            next_seq: 0,
            send_in_flight: false,
            close_after: p.close || has_body,
            failed: false,
        };
        self.start_stream(ci, stream);
    }

    /// The relay failed before the response head: a 502 with its reason.
    fn relay_failed(&mut self, ci: usize, reason: String) {
        let Some(c) = self.conn(ci) else { return };
        // Nothing of the holder socket is in flight (this was its completion): it closes.
        c.relay = None;
        let Some((head, has_body)) = c.relay_req.take() else {
            return;
        };
        let e = HttpError::Node {
            status: Status(502),
            reason,
        };
        self.send_refusal(ci, &head, &e, has_body);
    }

    /// Answers the request `head` (still in the receive buffer) with an error: no body for a
    /// HEAD; closes if the request has a body or asked to.
    fn send_refusal(&mut self, ci: usize, head: &RequestHead, err: &HttpError, has_body: bool) {
        self.consume_head(ci, head.head_len);
        let close = has_body || !head.keep_alive;
        let mut out = Vec::new();
        let close = reel_http::response::render_error(
            &mut out,
            err,
            self.now_unix_s,
            head.method == Method::Head,
            close,
        );
        let stream = Stream::bytes(err.status().0, out, close);
        self.start_stream(ci, stream);
    }

    fn send_small(
        &mut self,
        ci: usize,
        head: &RequestHead,
        status: Status,
        content_type: &str,
        body: Vec<u8>,
        has_body: bool,
    ) {
        let close = !head.keep_alive || has_body;
        let mut out = Vec::with_capacity(256 + body.len());
        let mut f = HeadFields::new(status, self.now_unix_s);
        f.content_type = Some(content_type);
        f.content_length = Some(body.len() as u64);
        f.close = close;
        render_head(&mut out, &f);
        if head.method != Method::Head {
            out.extend_from_slice(&body);
        }
        let stream = Stream::bytes(status.0, out, close);
        self.start_stream(ci, stream);
    }

    /// Answers with an error head (and one-line body), closing afterwards if asked or if the
    /// error demands it.
    fn send_error(&mut self, ci: usize, err: &HttpError, close: bool) {
        let Some(c) = self.conn(ci) else { return };
        if c.req_start < c.since {
            // A parse error or timeout: no head was completed, so the request starts now.
            c.req_start = Instant::now();
        }
        let mut out = Vec::new();
        let close = reel_http::response::render_error(&mut out, err, self.now_unix_s, false, close);
        let stream = Stream::bytes(err.status().0, out, close);
        self.start_stream(ci, stream);
    }

    fn start_stream(&mut self, ci: usize, stream: Stream) {
        let Some(c) = self.conn(ci) else { return };
        c.phase = Phase::Sending;
        c.since = Instant::now();
        c.stream = Some(Box::new(stream));
        self.requests_in_flight += 1;
        self.fill(ci);
        self.pump(ci);
    }

    /// Starts the next send of a stream if none is in flight and the next piece is ready;
    /// finishes the response when nothing is left.
    fn pump(&mut self, ci: usize) {
        let cutoff = self.cfg().zero_copy_min_bytes;
        let has_zc = self.drv.has_send_zc();
        let Some(c) = self.conns.get_mut(ci).and_then(|c| c.as_mut()) else {
            return;
        };
        if c.dying {
            return;
        }
        let fd = c.fd;
        let Some(st) = c.stream.as_mut() else { return };
        if st.send_in_flight {
            return;
        }
        if st.failed {
            self.kill(ci);
            return;
        }
        match st.pieces.front_mut() {
            None => {
                if st.todo.is_empty() {
                    self.finish_response(ci);
                }
            }
            Some(Piece::Bytes(_)) => {
                let Some(Piece::Bytes(data)) = st.pieces.pop_front() else {
                    return;
                };
                st.send_in_flight = true;
                c.ops += 1;
                c.send_tag = Some(tag(K_SEND, ci, 0));
                c.send_progress_seen = 0;
                let _ = self
                    .drv
                    .push(Op::Send { fd, data, at: 0 }, tag(K_SEND, ci, 0));
            }
            Some(Piece::Chunk { buf: None, .. }) => {} // its read is still in flight
            Some(Piece::Chunk { .. }) => {
                let Some(Piece::Chunk {
                    seq,
                    buf: Some(buf),
                    skip,
                    len,
                    ..
                }) = st.pieces.pop_front()
                else {
                    return;
                };
                let zero_copy = c.zero_copy && len >= cutoff;
                self.m.send(zero_copy && has_zc);
                st.send_in_flight = true;
                c.ops += 1;
                c.send_tag = Some(tag(K_SENDBUF, ci, seq));
                c.send_progress_seen = 0;
                let _ = self.drv.push(
                    Op::SendBuf {
                        fd,
                        buf,
                        buf_offset: skip,
                        len,
                        zero_copy,
                    },
                    tag(K_SENDBUF, ci, seq),
                );
            }
        }
    }

    fn on_send(&mut self, ci: usize, comp: Completion) {
        let Some(c) = self.conn(ci) else { return };
        c.ops -= 1;
        if c.dying {
            self.maybe_close(ci);
            return;
        }
        if let Some(st) = c.stream.as_mut() {
            st.send_in_flight = false;
        }
        match comp.result {
            Ok(_) => {
                c.since = Instant::now();
                self.after_event(ci);
            }
            Err(_) => {
                self.m.error(ErrorKind::ClientGoneGet);
                self.kill(ci);
            }
        }
    }

    /// A stream read completed: its source says which bytes of the buffer are payload.
    fn on_source_read(&mut self, ci: usize, seq: u32, kind: SourceKind, mut comp: Completion) {
        let (m, shard) = (self.m, self.id);
        let cx = Cx {
            m,
            shared: self.shared,
            shard,
            buf_size: self.drv.buf_size() as u64,
        };
        let Some(c) = self.conns.get_mut(ci).and_then(|c| c.as_mut()) else {
            kind.orphaned(m);
            if let Some(b) = comp.buf.take() {
                self.drv.free_buf(b);
            }
            return;
        };
        c.ops -= 1;
        let mut spare = comp.buf.take();
        let mut settled = false;
        if let Some(st) = c.stream.as_mut().filter(|_| !c.dying) {
            let piece = st.pieces.iter_mut().find_map(|p| match p {
                Piece::Chunk {
                    seq: s,
                    buf,
                    pending,
                    skip,
                    len,
                } if *s == seq && buf.is_none() => Some((buf, *pending, skip, len)),
                _ => None,
            });
            if let (Some((buf, pending, skip, len)), Some(source)) = (piece, st.source.as_mut()) {
                settled = true;
                let bytes = spare.as_ref().map(|b| self.drv.buf(b));
                match source.complete(pending, &comp, bytes, &cx) {
                    Ok(filled) => {
                        *buf = spare.take();
                        *skip = filled.skip;
                        *len = filled.len;
                    }
                    Err(()) => st.failed = true,
                }
            }
        }
        if !settled {
            kind.orphaned(m);
        }
        if let Some(b) = spare {
            // Not placed in a piece (the stream failed or is gone): give it back.
            c.chunks_held -= 1;
            self.drv.free_buf(b);
            self.wake_buf_waiters();
        }
        self.after_event(ci);
    }

    fn on_sendbuf(&mut self, ci: usize, _seq: u32, comp: Completion) {
        let Some(c) = self.conns.get_mut(ci).and_then(|c| c.as_mut()) else {
            if let Some(b) = comp.buf {
                self.drv.free_buf(b);
            }
            return;
        };
        if let Some(b) = comp.buf {
            // The buffer is free: a plain send finished, or a zero-copy send's notification.
            c.ops -= 1;
            c.chunks_held -= 1;
            self.drv.free_buf(b);
        }
        if !comp.notification {
            if let Some(st) = c.stream.as_mut() {
                st.send_in_flight = false;
            }
            match comp.result {
                Ok(n) => {
                    c.since = Instant::now();
                    self.m.response_bytes(n as u64);
                }
                Err(_) => {
                    if !c.dying {
                        self.m.error(ErrorKind::ClientGoneGet);
                        self.kill(ci);
                    }
                }
            }
        }
        self.wake_buf_waiters();
        self.after_event(ci);
    }

    /// Continues a connection after one of its operations finished.
    fn after_event(&mut self, ci: usize) {
        let dying = self.conn(ci).is_none_or(|c| c.dying);
        if dying {
            self.maybe_close(ci);
        } else if let Some(c) = self.conn(ci).filter(|c| c.ops == 0 && c.handoff.is_some()) {
            if let Some((head, id, kind)) = c.handoff.take() {
                self.hand_off(ci, head, id, kind);
            }
        } else {
            self.fill(ci);
            self.pump(ci);
        }
    }

    /// Resumes streams that waited for a buffer, in arrival order, while buffers last.
    fn wake_buf_waiters(&mut self) {
        while self.drv.bufs_free() > 0 {
            let Some(ci) = self.buf_waiters.pop_front() else {
                break;
            };
            let Some(c) = self.conn(ci) else { continue };
            if !c.waiting_buf {
                continue;
            }
            c.waiting_buf = false;
            if c.dying {
                continue;
            }
            self.fill(ci);
            self.pump(ci);
        }
    }

    fn finish_response(&mut self, ci: usize) {
        let Some(c) = self.conns.get_mut(ci).and_then(|c| c.as_mut()) else {
            return;
        };
        let Some(st) = c.stream.take() else { return };
        self.requests_in_flight = self.requests_in_flight.saturating_sub(1);
        let latency = c.req_start.elapsed().as_nanos() as u64;
        self.m.request_done(st.status, 0, latency);
        if st.close_after {
            // Half-close so the client reads everything before the FIN, then close.
            if let Some(sock) = &c.sock {
                let _ = sock.shutdown(Shutdown::Write);
            }
            c.dying = true;
            self.maybe_close(ci);
            return;
        }
        c.phase = Phase::Idle;
        c.since = Instant::now();
        c.head_timed_out = false;
        self.next_request(ci);
    }

    /// Abandons a connection: shuts the socket down so its pending operations end, gives back
    /// the buffers it holds, and closes it once nothing is in flight.
    fn kill(&mut self, ci: usize) {
        let Some(c) = self.conns.get_mut(ci).and_then(|c| c.as_mut()) else {
            return;
        };
        if !c.dying {
            c.dying = true;
            if let Some(sock) = &c.sock {
                let _ = sock.shutdown(Shutdown::Both);
            }
        }
        if let Some(r) = c.relay.as_mut() {
            r.shutdown(false);
        }
        if let Some(mut st) = c.stream.take() {
            if let Some(Source::Relay(mut r)) = st.source.take() {
                // Its operation in flight ends with the socket cut; the socket closes with the
                // connection, once nothing of it is in the kernel.
                r.shutdown(false);
                c.parked = Some(r);
            }
            self.requests_in_flight = self.requests_in_flight.saturating_sub(1);
            let freed = st.free_bufs(&mut self.drv);
            c.chunks_held -= freed;
            if freed > 0 {
                self.wake_buf_waiters();
            }
        }
        self.maybe_close(ci);
    }

    fn maybe_close(&mut self, ci: usize) {
        let Some(c) = self.conns.get_mut(ci).and_then(|c| c.as_mut()) else {
            return;
        };
        if !c.dying || c.ops > 0 {
            return;
        }
        if let Some(st) = c.stream.take() {
            self.requests_in_flight = self.requests_in_flight.saturating_sub(1);
            st.free_bufs(&mut self.drv);
        }
        debug_assert!(c.ops == 0);
        self.conns[ci] = None; // closes the socket
        self.conns_free.push(ci);
        self.conns_open -= 1;
        self.m.connection_closed();
        self.wake_buf_waiters();
    }

    fn check_timeouts(&mut self, now: Instant) {
        let (idle, head, send) = (
            self.cfg().idle_timeout,
            self.cfg().head_timeout,
            self.cfg().send_timeout,
        );
        let mut expired = Vec::new();
        for (ci, c) in self.conns.iter_mut().enumerate() {
            let Some(c) = c.as_mut() else { continue };
            if c.dying || c.head_timed_out {
                continue;
            }
            let waited = now.saturating_duration_since(c.since);
            match c.phase {
                Phase::Idle if waited > idle => expired.push((ci, ErrorKind::TimeoutIdle)),
                Phase::Head if waited > head => {
                    // Stop receiving; the pending receive returns 0 and we answer 408.
                    c.head_timed_out = true;
                    if let Some(sock) = &c.sock {
                        let _ = sock.shutdown(Shutdown::Read);
                    }
                    self.m.error(ErrorKind::TimeoutHead);
                }
                Phase::Relay if waited > send => {
                    // The holder is too slow to answer: cut its socket; the failed operation
                    // answers the client 502.
                    if let Some(r) = c.relay.as_mut() {
                        r.shutdown(true);
                    }
                    c.since = now;
                }
                Phase::Sending if waited > send => {
                    // Progress is either the driver continuing a short send or the socket's
                    // send queue draining (one large send can sit in flight for long while a
                    // slow client keeps reading).
                    let sent = c.send_tag.and_then(|t| self.drv.progress(t)).unwrap_or(0);
                    let queued = socket_send_queue_bytes(c.fd).unwrap_or(0) as usize;
                    let mark = sent.wrapping_mul(31).wrapping_add(queued);
                    let stalled_holder = c
                        .stream
                        .as_mut()
                        .filter(|st| !st.send_in_flight)
                        .and_then(|st| match st.source.as_mut() {
                            Some(Source::Relay(r)) if r.waiting_on_holder() => Some(r),
                            _ => None,
                        });
                    if c.send_tag.is_some() && mark != c.send_progress_seen {
                        c.send_progress_seen = mark;
                        c.since = now;
                    } else if let Some(r) = stalled_holder {
                        // The client took all that was sent; the relay's holder is what
                        // stalls. Cut its socket so the relay fails as a holder that did not
                        // answer in time (counted, the holder noted for the manager, the
                        // stream cut), not as a client timeout (issue 17's hostile holder).
                        // Should its operation not end, the next tick drops the connection.
                        r.shutdown(true);
                        c.since = now;
                    } else {
                        expired.push((ci, ErrorKind::TimeoutSend));
                    }
                }
                _ => {}
            }
        }
        for (ci, kind) in expired {
            self.m.error(kind);
            self.kill(ci);
        }
    }

    /// Turns pending body parts into pieces: literals at once, asset ranges as reads into
    /// buffers, up to the stream depth and while buffers last.
    fn fill(&mut self, ci: usize) {
        let depth = self.cfg().stream_depth;
        let cx = Cx {
            m: self.m,
            shared: self.shared,
            shard: self.id,
            buf_size: self.drv.buf_size() as u64,
        };
        let Some(c) = self.conns.get_mut(ci).and_then(|c| c.as_mut()) else {
            return;
        };
        if c.dying {
            return;
        }
        let Some(st) = c.stream.as_mut() else { return };
        while let Some(seg) = st.todo.front().cloned() {
            match seg {
                Segment::Literal(r) => {
                    st.todo.pop_front();
                    let bytes = st.literals.get(r).map(<[u8]>::to_vec).unwrap_or_default();
                    st.pieces.push_back(Piece::Bytes(bytes));
                }
                Segment::Asset(r) => {
                    if r.start > r.end_inclusive {
                        st.todo.pop_front();
                        continue;
                    }
                    if c.chunks_held >= depth || st.failed {
                        break;
                    }
                    let Some(buf) = self.drv.alloc_buf() else {
                        if !c.waiting_buf {
                            c.waiting_buf = true;
                            self.buf_waiters.push_back(ci);
                            self.m.buffer_wait();
                        }
                        break;
                    };
                    let Some(source) = st.source.as_mut() else {
                        self.drv.free_buf(buf);
                        st.failed = true;
                        break;
                    };
                    let r_end = r.end_inclusive.saturating_add(1);
                    let bytes = self.drv.buf_mut(&buf);
                    let read = match source.next_read(r.start..r_end, buf, bytes, &cx) {
                        Ok(Next::Read(read)) => read,
                        Ok(Next::Wait { buf, ctl }) => {
                            self.drv.free_buf(buf);
                            if let Some(op) = ctl {
                                c.ops += 1;
                                let _ = self.drv.push(op, tag(K_RELAY, ci, 0));
                            }
                            break;
                        }
                        Err(buf) => {
                            self.drv.free_buf(buf);
                            st.failed = true;
                            break;
                        }
                    };
                    let end = read.end;
                    let seq = st.next_seq;
                    st.next_seq = st.next_seq.wrapping_add(1) & 0xff_ffff;
                    st.pieces.push_back(Piece::Chunk {
                        seq,
                        buf: None,
                        pending: read.pending,
                        skip: 0,
                        len: 0,
                    });
                    c.chunks_held += 1;
                    c.ops += 1;
                    let _ = self.drv.push(read.op, tag(source.tag_kind(), ci, seq));
                    if end >= r_end {
                        st.todo.pop_front();
                    } else if let Some(Segment::Asset(front)) = st.todo.front_mut() {
                        front.start = end;
                    }
                }
            }
        }
    }
}
