//! Counters of one serving thread, and their Prometheus text rendering.
//!
//! Each shard and each ingest worker owns one [`ThreadMetrics`] and is its only writer, so an
//! update is a relaxed load and store on a cache line no other thread writes — no shared
//! read-modify-write on the hot path. `/metrics` reads every thread's block (relaxed loads; a
//! scrape may see a request counted but its bytes not yet, which Prometheus tolerates) and
//! renders per-thread series plus node-wide totals.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the latency histogram buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS_S: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Why a request or connection ended badly. Each kind is one labelled counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// Malformed head, bad framing (incl. CL+TE smuggling attempts), bad chunked body.
    BadRequest,
    /// Head larger than the limit, or too many header fields.
    HeadTooLarge,
    /// Invalid asset id or unknown path.
    BadTarget,
    /// Range header that cannot be satisfied (416).
    RangeNotSatisfiable,
    /// No complete head within the header timeout (slowloris).
    TimeoutHead,
    /// A keep-alive connection idle past the idle timeout.
    TimeoutIdle,
    /// A client that stopped reading its response for the send timeout.
    TimeoutSend,
    /// A request body that stalled past the body timeout.
    TimeoutBody,
    /// The client went away in the middle of a response.
    ClientGoneGet,
    /// The client went away (or broke framing) in the middle of an upload.
    ClientGonePut,
    /// Connection refused because the shard is at its connection limit.
    ConnectionLimit,
    /// Upload refused because every ingest worker is busy and the queue is full.
    Overloaded,
    /// The volume is full.
    NoSpace,
    /// A device read or write failed.
    DeviceError,
    /// Accept failed (e.g. out of file descriptors).
    AcceptFailed,
    /// A write or admin request without the cluster token (401) or with a wrong one (403),
    /// a request on the inter-server listener without it, or a refused put ticket (403).
    Unauthorized,
    /// An upload the cluster manager did not confirm in time (503; the client was not
    /// acknowledged).
    ManagerUnconfirmed,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 17] = [
        ErrorKind::BadRequest,
        ErrorKind::HeadTooLarge,
        ErrorKind::BadTarget,
        ErrorKind::RangeNotSatisfiable,
        ErrorKind::TimeoutHead,
        ErrorKind::TimeoutIdle,
        ErrorKind::TimeoutSend,
        ErrorKind::TimeoutBody,
        ErrorKind::ClientGoneGet,
        ErrorKind::ClientGonePut,
        ErrorKind::ConnectionLimit,
        ErrorKind::Overloaded,
        ErrorKind::NoSpace,
        ErrorKind::DeviceError,
        ErrorKind::AcceptFailed,
        ErrorKind::Unauthorized,
        ErrorKind::ManagerUnconfirmed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::HeadTooLarge => "head_too_large",
            ErrorKind::BadTarget => "bad_target",
            ErrorKind::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorKind::TimeoutHead => "timeout_head",
            ErrorKind::TimeoutIdle => "timeout_idle",
            ErrorKind::TimeoutSend => "timeout_send",
            ErrorKind::TimeoutBody => "timeout_body",
            ErrorKind::ClientGoneGet => "client_gone_get",
            ErrorKind::ClientGonePut => "client_gone_put",
            ErrorKind::ConnectionLimit => "connection_limit",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::NoSpace => "no_space",
            ErrorKind::DeviceError => "device_error",
            ErrorKind::AcceptFailed => "accept_failed",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::ManagerUnconfirmed => "manager_unconfirmed",
        }
    }
}

/// Status classes counted separately.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Device reads for responses by time taken, in the latency guard's buckets
/// ([`super::guard::bucket_of`]).
pub struct ReadHist([AtomicU64; super::guard::BUCKETS]);

impl Default for ReadHist {
    fn default() -> Self {
        ReadHist(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// One thread's counters. Single writer (the owning thread); any thread may read.
#[derive(Default)]
#[repr(align(128))]
pub struct ThreadMetrics {
    requests: [AtomicU64; 5],
    response_bytes: AtomicU64,
    request_body_bytes: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_S.len() + 1],
    latency_sum_ns: AtomicU64,
    errors: [AtomicU64; ErrorKind::ALL.len()],
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    requests_in_flight: AtomicU64,
    device_reads: AtomicU64,
    device_read_bytes: AtomicU64,
    device_reads_in_flight: AtomicU64,
    device_reads_done: AtomicU64,
    device_read_ns: AtomicU64,
    device_read_hist: ReadHist,
    zero_copy_sends: AtomicU64,
    plain_sends: AtomicU64,
    buffers_free: AtomicU64,
    buffer_waits: AtomicU64,
    uploads_to_secondary: AtomicU64,
    uploads_spilled: AtomicU64,
    upload_room_drops: AtomicU64,
    upload_room_dropped_bytes: AtomicU64,
    relay_streams: AtomicU64,
    relay_bytes: AtomicU64,
    relay_crc_failures: AtomicU64,
    relay_fetch_failures: AtomicU64,
}

/// Where an ingest worker's uploads went when the primary was short of room (summed over the
/// threads for `/metrics`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UploadPlacement {
    /// Uploads that landed on the secondary (spilled ones included).
    pub to_secondary: u64,
    /// Uploads of those that began on the primary and moved to the secondary part-way.
    pub spilled: u64,
    /// Clean primary copies dropped to make room for uploads, and their bytes.
    pub room_drops: u64,
    pub room_dropped_bytes: u64,
}

impl UploadPlacement {
    pub fn add(&mut self, o: UploadPlacement) {
        self.to_secondary += o.to_secondary;
        self.spilled += o.spilled;
        self.room_drops += o.room_drops;
        self.room_dropped_bytes += o.room_dropped_bytes;
    }
}

fn bump(a: &AtomicU64, by: u64) {
    // Single writer: a load and a store, not a locked read-modify-write.
    a.store(
        a.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

fn set(a: &AtomicU64, v: u64) {
    a.store(v, Ordering::Relaxed);
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl ThreadMetrics {
    /// A finished request: its status, the body bytes sent and the time from its head to the
    /// last byte handed to the kernel.
    pub fn request_done(&self, status: u16, response_bytes: u64, latency_ns: u64) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        bump(&self.requests[class], 1);
        bump(&self.response_bytes, response_bytes);
        let s = latency_ns as f64 / 1e9;
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|b| s <= *b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        bump(&self.latency_buckets[i], 1);
        bump(&self.latency_sum_ns, latency_ns);
    }

    pub fn error(&self, kind: ErrorKind) {
        let i = ErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        bump(&self.errors[i], 1);
    }

    pub fn error_count(&self, kind: ErrorKind) -> u64 {
        let i = ErrorKind::ALL
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_default();
        get(&self.errors[i])
    }

    pub fn body_bytes(&self, n: u64) {
        bump(&self.request_body_bytes, n);
    }

    pub fn response_bytes(&self, n: u64) {
        bump(&self.response_bytes, n);
    }

    pub fn connection_opened(&self) {
        bump(&self.connections_accepted, 1);
        bump(&self.connections_open, 1);
    }

    pub fn connection_closed(&self) {
        set(
            &self.connections_open,
            get(&self.connections_open).saturating_sub(1),
        );
    }

    pub fn set_in_flight(&self, n: u64) {
        set(&self.requests_in_flight, n);
    }

    /// A device read for a response was submitted; [`ThreadMetrics::device_read_done`] when
    /// its completion arrives. The in-flight gauge is what background copies yield to.
    pub fn device_read(&self, bytes: u64) {
        bump(&self.device_reads, 1);
        bump(&self.device_read_bytes, bytes);
        bump(&self.device_reads_in_flight, 1);
    }

    pub fn device_read_done(&self) {
        bump(&self.device_reads_in_flight, u64::MAX); // wrapping: minus one
    }

    /// A device read for a response succeeded `ns` after it was submitted (what background
    /// copies' latency guard watches).
    pub fn device_read_timed(&self, ns: u64) {
        bump(&self.device_reads_done, 1);
        bump(&self.device_read_ns, ns);
        bump(&self.device_read_hist.0[super::guard::bucket_of(ns)], 1);
    }

    /// Adds this thread's device reads for responses, by time taken, to `rt`.
    pub fn add_device_read_time(&self, rt: &mut super::guard::ReadTime) {
        for (sum, b) in rt.hist.iter_mut().zip(self.device_read_hist.0.iter()) {
            *sum = sum.wrapping_add(get(b));
        }
    }

    pub fn device_reads_in_flight(&self) -> u64 {
        get(&self.device_reads_in_flight)
    }

    /// Requests being answered now (a shard's streams).
    pub fn requests_in_flight(&self) -> u64 {
        get(&self.requests_in_flight)
    }

    /// Response bytes handed to the kernel so far.
    pub fn response_bytes_total(&self) -> u64 {
        get(&self.response_bytes)
    }

    /// (a sum that moves with every request, byte and connection; what is in flight now):
    /// two equal samples with nothing in flight mean the thread served no one in between.
    pub fn activity(&self) -> (u64, u64) {
        let moved = self
            .requests
            .iter()
            .chain([
                &self.response_bytes,
                &self.request_body_bytes,
                &self.connections_accepted,
            ])
            .map(get)
            .fold(0u64, u64::wrapping_add);
        let in_flight =
            get(&self.requests_in_flight).wrapping_add(get(&self.device_reads_in_flight));
        (moved, in_flight)
    }

    pub fn send(&self, zero_copy: bool) {
        bump(
            if zero_copy {
                &self.zero_copy_sends
            } else {
                &self.plain_sends
            },
            1,
        );
    }

    pub fn set_buffers_free(&self, n: u64) {
        set(&self.buffers_free, n);
    }

    pub fn buffer_wait(&self) {
        bump(&self.buffer_waits, 1);
    }

    /// An upload landed on the secondary; `spilled`: it began on the primary.
    pub fn upload_to_secondary(&self, spilled: bool) {
        bump(&self.uploads_to_secondary, 1);
        bump(&self.uploads_spilled, u64::from(spilled));
    }

    /// A clean primary copy of `bytes` was dropped to make room for an upload.
    pub fn upload_room_drop(&self, bytes: u64) {
        bump(&self.upload_room_drops, 1);
        bump(&self.upload_room_dropped_bytes, bytes);
    }

    /// A relayed stream began (a relay ticket accepted for an asset this node lacks).
    pub fn relay_stream(&self) {
        bump(&self.relay_streams, 1);
    }

    /// `n` asset bytes arrived from a holder and passed their chunks' crc check.
    pub fn relay_bytes(&self, n: u64) {
        bump(&self.relay_bytes, n);
    }

    /// A relayed chunk's crc32c did not match the holder's chunk list.
    pub fn relay_crc_failure(&self) {
        bump(&self.relay_crc_failures, 1);
    }

    /// A relay fetch failed (holder unreachable, refused, a bad answer, or cut off).
    pub fn relay_fetch_failure(&self) {
        bump(&self.relay_fetch_failures, 1);
    }

    pub fn upload_placement(&self) -> UploadPlacement {
        UploadPlacement {
            to_secondary: get(&self.uploads_to_secondary),
            spilled: get(&self.uploads_spilled),
            room_drops: get(&self.upload_room_drops),
            room_dropped_bytes: get(&self.upload_room_dropped_bytes),
        }
    }
}

/// A metric's name, help text and how to read it from one thread's block.
type ThreadSeries<'a> = (&'a str, &'a str, &'a dyn Fn(&ThreadMetrics) -> u64);
type DeviceSeries = (&'static str, &'static str, fn(&DeviceFigures<'_>) -> u64);

/// A per-device figure for the rendering.
pub struct DeviceFigures<'a> {
    pub tier: &'a str,
    pub path: &'a str,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub assets: u64,
}

/// Renders every thread's counters (labelled `thread="shard-0"` etc.) and node totals in the
/// Prometheus text exposition format, version 0.0.4.
pub fn render(threads: &[(String, &ThreadMetrics)], devices: &[DeviceFigures<'_>]) -> String {
    let mut out = String::with_capacity(8192);
    let total = |f: &dyn Fn(&ThreadMetrics) -> u64| threads.iter().map(|(_, m)| f(m)).sum::<u64>();

    let _ = writeln!(
        out,
        "# HELP reel_requests_total Requests answered, by status class.\n# TYPE reel_requests_total counter"
    );
    for (c, class) in STATUS_CLASSES.iter().enumerate() {
        for (name, m) in threads {
            let _ = writeln!(
                out,
                "reel_requests_total{{thread=\"{name}\",class=\"{class}\"}} {}",
                get(&m.requests[c])
            );
        }
    }
    let counters: [ThreadSeries<'_>; 14] = [
        (
            "reel_response_bytes_total",
            "Response body bytes handed to the kernel.",
            &|m| get(&m.response_bytes),
        ),
        (
            "reel_request_body_bytes_total",
            "Request body bytes received (uploads).",
            &|m| get(&m.request_body_bytes),
        ),
        (
            "reel_connections_accepted_total",
            "Connections accepted.",
            &|m| get(&m.connections_accepted),
        ),
        (
            "reel_device_reads_total",
            "Device reads issued for responses.",
            &|m| get(&m.device_reads),
        ),
        (
            "reel_device_read_bytes_total",
            "Bytes read from devices for responses (block aligned).",
            &|m| get(&m.device_read_bytes),
        ),
        (
            "reel_device_reads_done_total",
            "Device reads for responses completed.",
            &|m| get(&m.device_reads_done),
        ),
        (
            "reel_device_read_nanoseconds_total",
            "Time device reads for responses took, submission to completion (divided by reel_device_reads_done_total: their mean; background copies' latency guard watches their p99).",
            &|m| get(&m.device_read_ns),
        ),
        (
            "reel_zero_copy_sends_total",
            "Payload sends made with SEND_ZC.",
            &|m| get(&m.zero_copy_sends),
        ),
        (
            "reel_plain_sends_total",
            "Payload sends made with plain SEND (below the zero-copy cutoff).",
            &|m| get(&m.plain_sends),
        ),
        (
            "reel_buffer_waits_total",
            "Times a stream waited for a free read buffer (the per-shard bound was hit).",
            &|m| get(&m.buffer_waits),
        ),
        (
            "reel_relay_streams_total",
            "Streams relayed from another node (relay tickets for assets this node lacks).",
            &|m| get(&m.relay_streams),
        ),
        (
            "reel_relay_bytes_total",
            "Asset bytes received from holders for relayed streams, crc-checked (whole chunks).",
            &|m| get(&m.relay_bytes),
        ),
        (
            "reel_relay_crc_failures_total",
            "Relayed chunks whose crc32c did not match the holder's chunk list (the stream was cut before their bytes went out).",
            &|m| get(&m.relay_crc_failures),
        ),
        (
            "reel_relay_fetch_failures_total",
            "Relay fetches that failed: holder unreachable, refused, a bad answer or cut off (crc mismatches are counted apart).",
            &|m| get(&m.relay_fetch_failures),
        ),
    ];
    let gauges: [ThreadSeries<'_>; 4] = [
        ("reel_connections_open", "Connections open.", &|m| {
            get(&m.connections_open)
        }),
        (
            "reel_requests_in_flight",
            "Requests being answered.",
            &|m| get(&m.requests_in_flight),
        ),
        (
            "reel_device_reads_in_flight",
            "Device reads for responses submitted and not yet completed (background copies yield to them).",
            &|m| get(&m.device_reads_in_flight),
        ),
        (
            "reel_buffers_free",
            "Registered read buffers free (the bound on reads and zero-copy sends in flight).",
            &|m| get(&m.buffers_free),
        ),
    ];
    // Every series, counters first: its HELP and TYPE, then one sample per thread.
    for (kind, series) in [("counter", &counters[..]), ("gauge", &gauges[..])] {
        for (name, help, f) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (t, m) in threads {
                let _ = writeln!(out, "{name}{{thread=\"{t}\"}} {}", f(m));
            }
        }
    }

    let _ = writeln!(
        out,
        "# HELP reel_errors_total Requests and connections that ended badly, by kind.\n# TYPE reel_errors_total counter"
    );
    for (i, kind) in ErrorKind::ALL.iter().enumerate() {
        let _ = writeln!(
            out,
            "reel_errors_total{{kind=\"{}\"}} {}",
            kind.label(),
            total(&|m| get(&m.errors[i]))
        );
    }

    let _ = writeln!(
        out,
        "# HELP reel_request_duration_seconds Time from a request's head to its last byte sent.\n# TYPE reel_request_duration_seconds histogram"
    );
    let mut cumulative = 0u64;
    for (i, b) in LATENCY_BUCKETS_S.iter().enumerate() {
        cumulative += total(&|m| get(&m.latency_buckets[i]));
        let _ = writeln!(
            out,
            "reel_request_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
        );
    }
    cumulative += total(&|m| get(&m.latency_buckets[LATENCY_BUCKETS_S.len()]));
    let _ = writeln!(
        out,
        "reel_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "reel_request_duration_seconds_sum {}",
        total(&|m| get(&m.latency_sum_ns)) as f64 / 1e9
    );
    let _ = writeln!(out, "reel_request_duration_seconds_count {cumulative}");

    let device: [DeviceSeries; 3] = [
        (
            "reel_device_capacity_bytes",
            "Data region of the device.",
            |d| d.capacity_bytes,
        ),
        (
            "reel_device_used_bytes",
            "Bytes allocated to assets.",
            |d| d.used_bytes,
        ),
        ("reel_device_assets", "Assets stored.", |d| d.assets),
    ];
    for (name, help, f) in device {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for d in devices {
            let _ = writeln!(
                out,
                "{name}{{tier=\"{}\",device=\"{}\"}} {}",
                d.tier,
                d.path.replace('\\', "\\\\").replace('"', "\\\""),
                f(d)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_buckets_and_totals() {
        let a = ThreadMetrics::default();
        let b = ThreadMetrics::default();
        a.request_done(200, 100, 300_000); // 0.3 ms → le=0.0005
        b.request_done(404, 10, 2_000_000_000); // 2 s → le=2.5
        b.error(ErrorKind::BadTarget);
        let text = render(
            &[("shard-0".into(), &a), ("shard-1".into(), &b)],
            &[DeviceFigures {
                tier: "primary",
                path: "/dev/x",
                capacity_bytes: 10,
                used_bytes: 4,
                assets: 1,
            }],
        );
        assert!(text.contains("reel_requests_total{thread=\"shard-0\",class=\"2xx\"} 1"));
        assert!(text.contains("reel_requests_total{thread=\"shard-1\",class=\"4xx\"} 1"));
        assert!(text.contains("reel_errors_total{kind=\"bad_target\"} 1"));
        assert!(text.contains("reel_request_duration_seconds_bucket{le=\"0.00025\"} 0"));
        assert!(text.contains("reel_request_duration_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("reel_request_duration_seconds_bucket{le=\"2.5\"} 2"));
        assert!(text.contains("reel_request_duration_seconds_count 2"));
        assert!(text.contains("reel_device_used_bytes{tier=\"primary\",device=\"/dev/x\"} 4"));
        // Every non-comment line is `name{labels} value` with a numeric value.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let v = line.rsplit(' ').next().expect("value");
            assert!(v.parse::<f64>().is_ok(), "bad sample line {line}");
        }
    }
}
