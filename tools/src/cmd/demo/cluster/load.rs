//! The cluster demo's clients: for each edge, threads that connect from the edge's client
//! address (127.0.0.2, 127.0.0.3: the manager's zones map them to the edge) or, where that
//! address cannot be bound, pass `?near=EDGE`. Each request asks the manager for a title, follows
//! its `307` to the node it names (the edge, which relays from the library, or a holder) and
//! compares every byte with the generator. Requests are paced per edge at its share of the
//! offered rate; titles are picked by Zipf over the edge's own ranking (the edges' hot sets
//! overlap but differ), half whole titles, half ranges. Latency, bytes, the route and the
//! serving node are recorded per request.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use reel_http::client::{encode_request, Conn};
use socket2::{Domain, Socket, Type};

use super::super::library::fill;
use super::super::load::histogram;
use super::super::MIB;
use super::Title;

/// Share of requests for the whole title; the others ask for one range of 256 KiB–1 MiB.
pub(super) const FULL_SHARE: f64 = 0.5;
/// Bytes compared per step when verifying a response.
const PIECE: usize = 256 << 10;
/// Largest body read from the manager (a 307's or an error's text).
const SMALL_BODY_MAX: u64 = 64 << 10;
/// Connect, read and write timeout of every client socket.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Most node connections a client keeps (the nodes of the demo).
const HOSTS_MAX: usize = 4;

/// Where an edge's clients come from.
#[derive(Clone, Debug)]
pub(super) struct EdgeClients {
    pub(super) edge: String,
    /// The source address bound before connecting (the manager's zone of the edge), or `None`:
    /// `?near=EDGE` instead.
    pub(super) source: Option<IpAddr>,
    /// The edge's titles, hottest first (indexes into the library).
    pub(super) ranking: Vec<usize>,
}

/// A TCP connection from `source` (if given) to `addr`.
pub(super) fn connect_from(source: Option<IpAddr>, addr: SocketAddr) -> Result<Conn> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if let Some(ip) = source {
        s.bind(&SocketAddr::new(ip, 0).into())
            .with_context(|| format!("binding a client socket to {ip}"))?;
    }
    s.connect_timeout(&addr.into(), IO_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    let s: TcpStream = s.into();
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(Conn::from_stream(s, addr))
}

/// Whether a socket can be bound to `ip` here (Linux routes all of 127/8 on lo).
pub(super) fn can_bind(ip: IpAddr) -> bool {
    Socket::new(
        Domain::for_address(SocketAddr::new(ip, 0)),
        Type::STREAM,
        None,
    )
    .and_then(|s| s.bind(&SocketAddr::new(ip, 0).into()))
    .is_ok()
}

/// `http://ADDR/target` → (ADDR, target).
pub(super) fn split_location(loc: &str) -> Option<(SocketAddr, String)> {
    let rest = loc.trim().strip_prefix("http://")?;
    let slash = rest.find('/')?;
    let (host, path) = rest.split_at(slash);
    if !path.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    Some((host.parse().ok()?, path.to_string()))
}

/// Cumulative Zipf (exponent 1) weights of `n` ranks.
pub(super) fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut acc = 0.0;
    (1..=n)
        .map(|k| {
            acc += 1.0 / k as f64;
            acc
        })
        .collect()
}

/// Figures of a set of requests.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Counts {
    pub(super) requests: u64,
    pub(super) full: u64,
    pub(super) ranges: u64,
    pub(super) bytes: u64,
    pub(super) wrong_bytes: u64,
    pub(super) wrong_responses: u64,
    pub(super) errors: u64,
}

impl Counts {
    pub(super) fn add(&mut self, o: &Counts) {
        let Counts {
            requests,
            full,
            ranges,
            bytes,
            wrong_bytes,
            wrong_responses,
            errors,
        } = *o;
        self.requests += requests;
        self.full += full;
        self.ranges += ranges;
        self.bytes += bytes;
        self.wrong_bytes += wrong_bytes;
        self.wrong_responses += wrong_responses;
        self.errors += errors;
    }
}

/// Requests and latencies of one group (a serving node, an edge's clients).
pub(super) struct Group {
    pub(super) counts: Counts,
    pub(super) us: Histogram<u64>,
}

impl Group {
    fn new() -> Result<Group> {
        Ok(Group {
            counts: Counts::default(),
            us: histogram()?,
        })
    }

    fn merge(&mut self, o: &Group) {
        self.counts.add(&o.counts);
        let _ = self.us.add(&o.us);
    }
}

/// What the clients measured: per serving node (the window since the last live line and the
/// totals), per edge's clients, per route reason.
#[derive(Default)]
pub(super) struct Measured {
    /// Since the last [`Clients::take_window`], by the node that served.
    pub(super) window: BTreeMap<String, Group>,
    pub(super) by_node: BTreeMap<String, Group>,
    pub(super) by_edge: BTreeMap<String, Group>,
    /// Requests by `Reel-Route` reason (`relay-primary`, `local-primary`, …).
    pub(super) routes: BTreeMap<String, u64>,
    /// Bytes by route reason.
    pub(super) route_bytes: BTreeMap<String, u64>,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    pub(super) first_wrong: Option<String>,
}

fn group<'a>(m: &'a mut BTreeMap<String, Group>, key: &str) -> Option<&'a mut Group> {
    if !m.contains_key(key) {
        m.insert(key.to_string(), Group::new().ok()?);
    }
    m.get_mut(key)
}

impl Measured {
    fn record(&mut self, edge: &str, done: &Done, us: u64, c: &Counts) {
        for g in [
            group(&mut self.window, &done.node),
            group(&mut self.by_node, &done.node),
            group(&mut self.by_edge, edge),
        ]
        .into_iter()
        .flatten()
        {
            g.counts.add(c);
            g.us.saturating_record(us.max(1));
        }
        *self.routes.entry(done.reason.clone()).or_default() += 1;
        *self.route_bytes.entry(done.reason.clone()).or_default() += c.bytes;
    }

    /// Adds `o`'s totals (not its window).
    pub(super) fn merge(&mut self, o: &Measured) {
        for (into, from) in [
            (&mut self.by_node, &o.by_node),
            (&mut self.by_edge, &o.by_edge),
        ] {
            for (k, g) in from {
                if let Some(mine) = group(into, k) {
                    mine.merge(g);
                }
            }
        }
        for (into, from) in [
            (&mut self.routes, &o.routes),
            (&mut self.route_bytes, &o.route_bytes),
        ] {
            for (k, v) in from {
                *into.entry(k.clone()).or_default() += v;
            }
        }
        self.errors += o.errors;
        self.first_error = self.first_error.take().or_else(|| o.first_error.clone());
        self.first_wrong = self.first_wrong.take().or_else(|| o.first_wrong.clone());
    }
}

/// What the load shares.
pub(super) struct Load {
    pub(super) manager: SocketAddr,
    pub(super) titles: Arc<Vec<Title>>,
    pub(super) edges: Vec<EdgeClients>,
    pub(super) zipf_cdf: Vec<f64>,
    /// Requests per second per edge.
    pub(super) rate_per_edge: f64,
    pub(super) t0: Instant,
    pub(super) end: Instant,
    /// Requests handed out so far, per edge.
    pub(super) issued: Vec<AtomicU64>,
    pub(super) stop: Arc<AtomicBool>,
}

/// A request that was answered and verified.
struct Done {
    /// The route's reason (`Reel-Route`'s first word).
    reason: String,
    /// The node that served it (`node=`).
    node: String,
    /// Wrong bytes.
    wrong: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A client's connections: to the manager, and to the nodes it was sent to.
struct Conns {
    source: Option<IpAddr>,
    manager: Option<Conn>,
    nodes: Vec<(SocketAddr, Conn)>,
}

impl Conns {
    fn manager(&mut self, addr: SocketAddr) -> Result<&mut Conn> {
        if self.manager.is_none() {
            self.manager = Some(connect_from(self.source, addr)?);
        }
        self.manager
            .as_mut()
            .ok_or_else(|| anyhow!("no connection to the manager"))
    }

    /// The connection to `addr`, kept for the next request (it is removed while in use, and
    /// put back with [`Conns::keep`]).
    fn take_node(&mut self, addr: SocketAddr) -> Result<Conn> {
        match self.nodes.iter().position(|(a, _)| *a == addr) {
            Some(i) => Ok(self.nodes.swap_remove(i).1),
            None => connect_from(self.source, addr),
        }
    }

    fn keep(&mut self, addr: SocketAddr, c: Conn) {
        if self.nodes.len() >= HOSTS_MAX {
            self.nodes.remove(0);
        }
        self.nodes.push((addr, c));
    }
}

impl Load {
    fn pick(&self, rng: &mut fastrand::Rng, ranking: &[usize]) -> (usize, Option<(u64, u64)>) {
        let u = rng.f64() * self.zipf_cdf.last().copied().unwrap_or(1.0);
        let rank = self.zipf_cdf.partition_point(|&c| c <= u);
        let title = ranking[rank.min(ranking.len().saturating_sub(1))];
        let size = self.titles[title].size;
        let range = (rng.f64() >= FULL_SHARE && size > 0).then(|| {
            let len = rng.u64((256 << 10)..=MIB).min(size);
            let first = rng.u64(0..=size - len);
            (first, first + len - 1)
        });
        (title, range)
    }

    fn client(&self, e: usize, k: usize, out: &Mutex<Measured>) {
        let edge = &self.edges[e];
        let mut rng = fastrand::Rng::with_seed(0xC1A5_7E00 + (e as u64) * 1000 + k as u64);
        let mut conns = Conns {
            source: edge.source,
            manager: None,
            nodes: Vec::new(),
        };
        let mut got = vec![0u8; PIECE];
        let mut want = vec![0u8; PIECE];
        loop {
            let n = self.issued[e].fetch_add(1, Relaxed);
            let due = self.t0 + Duration::from_secs_f64(n as f64 / self.rate_per_edge);
            if due >= self.end {
                break;
            }
            loop {
                if self.stop.load(Relaxed) {
                    return;
                }
                let now = Instant::now();
                if now >= due {
                    break;
                }
                std::thread::sleep((due - now).min(Duration::from_millis(100)));
            }
            let (title, range) = self.pick(&mut rng, &edge.ranking);
            let t = &self.titles[title];
            let start = Instant::now();
            let res = self.fetch(&mut conns, edge, t, range, &mut got, &mut want);
            let us = start.elapsed().as_micros() as u64;
            if self.stop.load(Relaxed) {
                // Ctrl-C: the children are stopping too; what fails now is no error of theirs.
                return;
            }
            let mut m = lock(out);
            match res {
                Ok(done) => {
                    let bytes = range.map_or(t.size, |(a, b)| b - a + 1);
                    let c = Counts {
                        requests: 1,
                        full: u64::from(range.is_none()),
                        ranges: u64::from(range.is_some()),
                        bytes,
                        wrong_bytes: done.wrong,
                        wrong_responses: u64::from(done.wrong > 0),
                        errors: 0,
                    };
                    if done.wrong > 0 && m.first_wrong.is_none() {
                        m.first_wrong = Some(format!(
                            "GET {} {} via {}: {} bytes differ from the generator",
                            t.id,
                            describe(range),
                            done.node,
                            done.wrong
                        ));
                    }
                    m.record(&edge.edge, &done, us, &c);
                }
                Err(err) => {
                    conns.manager = None;
                    conns.nodes.clear();
                    m.errors += 1;
                    if m.first_error.is_none() {
                        m.first_error = Some(format!(
                            "GET {} {} (a client of {}): {err:#}",
                            t.id,
                            describe(range),
                            edge.edge
                        ));
                    }
                }
            }
        }
    }

    /// Asks the manager for `t` (or a range), follows the redirect and verifies the answer.
    fn fetch(
        &self,
        conns: &mut Conns,
        edge: &EdgeClients,
        t: &Title,
        range: Option<(u64, u64)>,
        got: &mut [u8],
        want: &mut [u8],
    ) -> Result<Done> {
        let target = match edge.source {
            Some(_) => format!("/assets/{}", t.id),
            None => format!("/assets/{}?near={}", t.id, edge.edge),
        };
        let req = encode_request("GET", "reel-demo", &target, &[], None);
        let m = conns.manager(self.manager)?;
        let r = m.exchange(&req, false, SMALL_BODY_MAX)?;
        if r.head.close {
            conns.manager = None;
        }
        let route = r.head.header("reel-route").unwrap_or_default().to_string();
        if r.head.status != 307 {
            bail!(
                "the manager answered {} ({route}): {}",
                r.head.status,
                String::from_utf8_lossy(&r.body).trim()
            );
        }
        let loc = r.head.header("location").unwrap_or_default();
        let (addr, node_target) =
            split_location(loc).ok_or_else(|| anyhow!("a 307 without a usable Location"))?;
        let mut words = route.split_whitespace();
        let reason = words.next().unwrap_or("?").to_string();
        let node = words
            .find_map(|w| w.strip_prefix("node="))
            .unwrap_or("?")
            .to_string();
        let mut c = conns.take_node(addr)?;
        let (wrong, close) = get_verified(&mut c, &node_target, t, range, got, want)
            .with_context(|| format!("at {node} ({route})"))?;
        if !close {
            conns.keep(addr, c);
        }
        Ok(Done {
            reason,
            node,
            wrong,
        })
    }
}

fn describe(range: Option<(u64, u64)>) -> String {
    range.map_or("(whole)".to_string(), |(a, b)| format!("bytes={a}-{b}"))
}

/// GETs `target` (a title or a range of it) on `c` and compares every byte with the generator:
/// the wrong bytes, and whether the connection closes.
fn get_verified(
    c: &mut Conn,
    target: &str,
    t: &Title,
    range: Option<(u64, u64)>,
    got: &mut [u8],
    want: &mut [u8],
) -> Result<(u64, bool)> {
    let (req, status, first, len) = match range {
        None => (
            encode_request("GET", "reel-demo", target, &[], None),
            200,
            0,
            t.size,
        ),
        Some((a, b)) => (
            encode_request(
                "GET",
                "reel-demo",
                target,
                &[("Range", &format!("bytes={a}-{b}"))],
                None,
            ),
            206,
            a,
            b - a + 1,
        ),
    };
    let h = c.send(&req)?;
    if h.status != status {
        let body = c.read_body(&h, SMALL_BODY_MAX).unwrap_or_default();
        bail!(
            "answered {} (expected {status}): {}",
            h.status,
            String::from_utf8_lossy(&body).trim()
        );
    }
    let (got_len, range_start) = (h.content_length(), h.content_range().map(|r| r.0));
    if got_len != Some(len) || range_start.unwrap_or(0) != first {
        bail!(
            "answered {} bytes from {range_start:?}, expected {len} from {first}",
            got_len.unwrap_or(0)
        );
    }
    let mut wrong = 0u64;
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(got.len() as u64) as usize;
        c.read_exact(&mut got[..n])?;
        fill(t.seed, first + pos, &mut want[..n]);
        if got[..n] != want[..n] {
            wrong += got[..n]
                .iter()
                .zip(&want[..n])
                .filter(|(a, b)| a != b)
                .count() as u64;
        }
        pos += n as u64;
    }
    Ok((wrong, h.close))
}

/// The running clients.
pub(super) struct Clients {
    threads: Vec<JoinHandle<()>>,
    stats: Vec<Arc<Mutex<Measured>>>,
}

impl Clients {
    /// Starts `per_edge` client threads for each edge; if one cannot start, stops those that
    /// did.
    pub(super) fn start(load: &Arc<Load>, per_edge: usize) -> Result<Clients> {
        let mut threads = Vec::new();
        let mut stats = Vec::new();
        for e in 0..load.edges.len() {
            for k in 0..per_edge {
                let s = Arc::new(Mutex::new(Measured::default()));
                let (load2, s2) = (load.clone(), s.clone());
                match std::thread::Builder::new()
                    .name(format!("demo-{}-{k}", load.edges[e].edge))
                    .spawn(move || load2.client(e, k, &s2))
                {
                    Ok(h) => {
                        threads.push(h);
                        stats.push(s);
                    }
                    Err(err) => {
                        load.stop.store(true, Relaxed);
                        for h in threads {
                            let _ = h.join();
                        }
                        return Err(err).context("starting a client thread");
                    }
                }
            }
        }
        Ok(Clients { threads, stats })
    }

    /// The window since the last call, by serving node (reset).
    pub(super) fn take_window(&self) -> BTreeMap<String, Group> {
        let mut out: BTreeMap<String, Group> = BTreeMap::new();
        for s in &self.stats {
            let w = std::mem::take(&mut lock(s).window);
            for (k, g) in w {
                match out.get_mut(&k) {
                    Some(mine) => mine.merge(&g),
                    None => {
                        out.insert(k, g);
                    }
                }
            }
        }
        out
    }

    /// Requests answered and failed so far (all clients).
    pub(super) fn so_far(&self) -> (u64, u64) {
        self.stats.iter().fold((0, 0), |(n, e), s| {
            let m = lock(s);
            let done: u64 = m.by_edge.values().map(|g| g.counts.requests).sum();
            (n + done, e + m.errors)
        })
    }

    /// Waits for the clients to end; what they measured, merged.
    pub(super) fn finish(self) -> Measured {
        for h in self.threads {
            let _ = h.join();
        }
        let mut all = Measured::default();
        for s in &self.stats {
            all.merge(&lock(s));
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_split_into_address_and_target() {
        assert_eq!(
            split_location("http://127.0.0.1:8080/assets/a/b.mp4?ticket=x.y"),
            Some((
                "127.0.0.1:8080".parse().expect("addr"),
                "/assets/a/b.mp4?ticket=x.y".to_string()
            ))
        );
        assert_eq!(split_location("https://127.0.0.1:8080/assets/a"), None);
        assert_eq!(split_location("http://host:80/a"), None, "not an address");
        assert_eq!(split_location("http://127.0.0.1:8080"), None);
        assert_eq!(split_location("http://127.0.0.1:1/a b"), None);
    }

    #[test]
    fn zipf_weights_are_skewed() {
        let cdf = zipf_cdf(30);
        assert_eq!(cdf.len(), 30);
        let top = cdf[0] / cdf[29];
        assert!(top > 0.2 && top < 0.3, "{top}");
        assert!(zipf_cdf(0).is_empty());
    }
}
