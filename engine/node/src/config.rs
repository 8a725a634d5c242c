//! The node's settings: one struct per component, [`NodeConfig`] with the copy throttle's
//! [`ThrottleConfig`] and the tier policy's [`reel_policy::PolicyConfig`] inside.

use std::net::SocketAddr;
use std::time::Duration;

use reel_policy::ThrottleConfig;

/// Everything `reel node` can be told. Defaults suit a 2–64 core host with 1 MiB assets or
/// larger.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    /// Shard threads (0 = one per online CPU).
    pub shards: usize,
    /// Pin shard `i` to CPU `i % cpus`.
    pub pin: bool,
    /// Bytes per registered read buffer: the unit of device reads and payload sends.
    pub read_buf_bytes: usize,
    /// Registered read buffers per shard. This bounds both device reads in flight and buffers
    /// awaiting zero-copy notifications on the shard.
    pub read_bufs_per_shard: usize,
    /// Chunks read ahead per stream (2–4 keeps the device and the socket busy).
    pub stream_depth: usize,
    /// Payload sends of at least this many bytes use `SEND_ZC`; smaller ones a plain `SEND`
    /// (below it the notification costs more than the copy saves).
    pub zero_copy_min_bytes: usize,
    /// Use `SEND_ZC` for peers on this host too. Off by default: the kernel copies zero-copy
    /// pages anyway when it delivers them to a local socket (msg_zerocopy.rst, "Loopback"), and
    /// the notification and page allocation make that dearer than a plain send.
    pub zero_copy_local: bool,
    /// Connections per shard; more are answered 503 and closed.
    pub connections_per_shard_max: usize,
    /// A request head must arrive completely within this time of its first byte.
    pub head_timeout: Duration,
    /// A keep-alive connection may sit idle between requests this long.
    pub idle_timeout: Duration,
    /// A client must take response bytes at least this often.
    pub send_timeout: Duration,
    /// An upload must deliver body bytes at least this often.
    pub body_timeout: Duration,
    /// Upload/delete worker threads.
    pub ingest_workers: usize,
    /// Uploads queued for a worker beyond which new ones get 503.
    pub ingest_queue_max: usize,
    /// Largest request head accepted (431 above).
    pub head_bytes_max: usize,
    /// Assets per `/assets` page when the request names no `limit`.
    pub list_limit_default: u32,
    /// Half-life of the decaying per-asset request rate.
    pub rate_half_life: Duration,
    /// Copies between the tiers are served as soon as they are written and made durable
    /// together later (one device flush pair per tier for all of them): when the node has
    /// served nothing for [`crate::scheduler::QUIET`], when the oldest has waited this long, before a
    /// drop needs a secondary copy, and at a graceful stop. A crash forgets the copies not yet
    /// committed (never an acknowledged asset: their source still holds it); they are redone
    /// if still wanted. Longer: fewer flushes under load, each stalling foreground reads.
    pub migration_commit_interval: Duration,
    /// Before a commit under load, copies stop writing for this long (counted from the last
    /// copy's end, time paused included), so the device has written their data back by the
    /// time the commit flushes it (a flush right after writes stalled reads 160–205 ms on this
    /// project's VM; 20 s later, 1–8 ms).
    pub migration_commit_settle: Duration,
    /// How fast background copies between the tiers may go (see [`reel_policy::throttle`]).
    pub throttle: ThrottleConfig,
    /// Tiering thresholds and limits (capacity, half-life and budget are filled in from the
    /// fields above, the throttle's budget and the primary's size).
    pub policy: reel_policy::PolicyConfig,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            shards: 0,
            pin: true,
            read_buf_bytes: 1 << 20,
            read_bufs_per_shard: 128,
            stream_depth: 3,
            zero_copy_min_bytes: 64 << 10,
            zero_copy_local: false,
            connections_per_shard_max: 4096,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(30),
            ingest_workers: 8,
            ingest_queue_max: 256,
            head_bytes_max: 16 << 10,
            list_limit_default: 1000,
            rate_half_life: Duration::from_secs(30 * 60),
            migration_commit_interval: Duration::from_secs(600),
            migration_commit_settle: Duration::from_secs(20),
            throttle: ThrottleConfig::default(),
            policy: reel_policy::PolicyConfig::default(),
        }
    }
}
