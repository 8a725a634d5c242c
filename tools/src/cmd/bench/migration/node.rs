//! The migration benchmark's view of its node over HTTP: the migration counters of /metrics,
//! asset state from /assets/{id}/info, pins, uploads, PUT /migration, and the poller that
//! samples the copy counters every 0.5 s on a thread of this process.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reel_http::client::encode_request;

use crate::cmd::bench::harness::{self, fill_random, unix_now, Http};

/// Counters every run reads; a node without them is refused.
pub const COUNTERS: [&str; 8] = [
    "reel_promotions_total",
    "reel_write_backs_total",
    "reel_demotions_total",
    "reel_evictions_total",
    "reel_migration_failures_total",
    "reel_migration_bytes_total",
    "reel_policy_primary_bytes",
    "reel_migration_commits_total",
];

/// The counters that must not move while migration is idle: the first six of [`COUNTERS`].
pub const MOVING: &[&str] = COUNTERS.split_at(6).0;

/// Reported when the node has them: the copies' backoff and latency guard.
pub const OPTIONAL: [&str; 7] = [
    "reel_migration_slow_ios_total",
    "reel_migration_backoff_seconds_total",
    "reel_migration_guard_probes_total",
    "reel_migration_guard_probe_seconds_total",
    "reel_migration_guard_cuts_total",
    "reel_migration_guard_bytes_per_second",
    "reel_migration_guard_baseline_seconds_us",
];

/// The counters above, as whole numbers (the guard's baseline in microseconds).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics(pub BTreeMap<String, i64>);

impl Metrics {
    /// Picks the counters out of a /metrics text ("name value" lines, `#` comments).
    pub fn parse(text: &str) -> Metrics {
        let mut out = BTreeMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((name, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            if COUNTERS.contains(&name) || OPTIONAL.contains(&name) {
                out.insert(name.to_string(), v as i64);
            }
            if name == "reel_migration_guard_baseline_seconds" {
                out.insert(format!("{name}_us"), (v * 1e6) as i64);
            }
        }
        Metrics(out)
    }

    /// A counter every node has (checked when the node starts); 0 when absent.
    pub fn get(&self, name: &str) -> i64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// `later - self` of a counter.
    pub fn delta(&self, later: &Metrics, name: &str) -> i64 {
        later.get(name) - self.get(name)
    }
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = COUNTERS
            .iter()
            .chain(&OPTIONAL)
            .filter_map(|k| Some(format!("{k}={}", self.0.get(*k)?)))
            .collect();
        f.write_str(&parts.join(" "))
    }
}

/// The node under test.
pub struct Node {
    pub addr: SocketAddr,
    http: Http,
}

impl Node {
    pub fn new(addr: SocketAddr) -> Node {
        Node {
            addr,
            http: Http::new(addr, Duration::from_secs(600)),
        }
    }

    pub fn metrics(&mut self) -> Result<Metrics> {
        let r = self.http.expect("GET", "/metrics", None, &[200])?;
        Ok(Metrics::parse(&r.text()))
    }

    /// /metrics, failing unless it has every counter of [`COUNTERS`].
    pub fn check_metrics(&mut self) -> Result<Metrics> {
        let m = self.metrics()?;
        let missing: Vec<&str> = COUNTERS.iter().copied().filter(|c| !m.has(c)).collect();
        if !missing.is_empty() {
            bail!("the node's /metrics lacks {}", missing.join(", "));
        }
        Ok(m)
    }

    /// A raw /metrics value (e.g. a float total), as printed.
    pub fn metric_text(&mut self, name: &str) -> Result<String> {
        let r = self.http.expect("GET", "/metrics", None, &[200])?;
        Ok(r.text()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_string))
            .unwrap_or_default())
    }

    /// PUT /migration?QUERY, failing unless answered 200. No process starts here, so it may
    /// run inside a measurement.
    pub fn migration(&mut self, query: &str) -> Result<()> {
        self.http
            .expect("PUT", &format!("/migration?{query}"), Some(b""), &[200])?;
        Ok(())
    }

    /// Pins every asset of `ids` to `tier` (PUT /assets/{id}/policy) over one connection.
    pub fn pin(&mut self, tier: &str, ids: &[String]) -> Result<()> {
        let body = format!("{{\"pin\":\"{tier}\"}}");
        for id in ids {
            self.http.expect(
                "PUT",
                &format!("/assets/{id}/policy"),
                Some(body.as_bytes()),
                &[200, 201],
            )?;
        }
        Ok(())
    }

    /// PUTs `len` bytes of the pseudo-random stream of `seed` as asset `id`.
    pub fn upload(&mut self, id: &str, len: u64, seed: u64) -> Result<()> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let status = self.http.put_stream(&format!("/assets/{id}"), len, |buf| {
            fill_random(&mut rng, buf)
        })?;
        if status != 200 && status != 201 {
            bail!("PUT /assets/{id} answered {status}");
        }
        Ok(())
    }

    /// GETs asset `id` whole and checks it is the stream of `seed` that was uploaded.
    pub fn verify(&mut self, id: &str, len: u64, seed: u64) -> Result<()> {
        let r = self
            .http
            .expect("GET", &format!("/assets/{id}"), None, &[200])?;
        let mut want = vec![0u8; len as usize];
        fill_random(&mut fastrand::Rng::with_seed(seed), &mut want);
        if r.body != want {
            bail!(
                "GET /assets/{id} sent {} bytes that differ from the {len} uploaded",
                r.body.len()
            );
        }
        Ok(())
    }

    /// GET with a Range header: (status, body length).
    pub fn range(&mut self, id: &str, first: u64, last: u64) -> Result<(u16, usize)> {
        let range = format!("bytes={first}-{last}");
        let target = format!("/assets/{id}");
        let host = self.addr.to_string();
        let req = encode_request("GET", &host, &target, &[("Range", &range)], None);
        let r = self.http.exchange(&target, &req)?;
        Ok((r.status(), r.body.len()))
    }

    /// (residence, tiers) of an asset, from /assets/{id}/info.
    fn info(&mut self, id: &str) -> Result<(String, Vec<String>)> {
        let r = self
            .http
            .expect("GET", &format!("/assets/{id}/info"), None, &[200])?;
        let v: serde_json::Value =
            serde_json::from_slice(&r.body).with_context(|| format!("/assets/{id}/info"))?;
        let residence = v["residence"].as_str().unwrap_or("none").to_string();
        let tiers = v["tiers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok((residence, tiers))
    }

    /// (settled, summary): hot all clean on both tiers, cold all on the secondary only,
    /// nothing in flight (the policy's primary bytes are the hot set's).
    pub fn state(
        &mut self,
        hot: &[String],
        cold: &[String],
        hot_bytes: u64,
    ) -> Result<(bool, String)> {
        let (mut h_ok, mut c_ok) = (0, 0);
        let mut odd = Vec::new();
        for id in hot {
            let (res, mut tiers) = self.info(id)?;
            tiers.sort();
            if res == "clean" && tiers == ["primary", "secondary"] {
                h_ok += 1;
            } else {
                odd.push(format!("{id}: {res} {tiers:?}"));
            }
        }
        for id in cold {
            let (res, tiers) = self.info(id)?;
            if res == "secondary" && tiers == ["secondary"] {
                c_ok += 1;
            } else {
                odd.push(format!("{id}: {res} {tiers:?}"));
            }
        }
        let pb = self
            .metrics()?
            .0
            .get("reel_policy_primary_bytes")
            .copied()
            .unwrap_or(-1);
        let settled = h_ok == hot.len() && c_ok == cold.len() && pb == hot_bytes as i64;
        let mut summary = format!(
            "hot clean on both tiers {h_ok}/{}, cold on secondary only {c_ok}/{}, policy primary bytes {pb} (want {hot_bytes})",
            hot.len(),
            cold.len()
        );
        if !odd.is_empty() {
            summary += &format!("; e.g. {}", odd[..odd.len().min(3)].join(", "));
        }
        Ok((settled, summary))
    }

    /// Waits until the policy counts primary bytes beyond the hot set (a promotion started).
    pub fn wait_promoting(&mut self, hot_bytes: u64, timeout: Duration) -> Result<bool> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.metrics()?.get("reel_policy_primary_bytes") > hot_bytes as i64 {
                return Ok(true);
            }
            harness::sleep(Duration::from_millis(50))?;
        }
        Ok(false)
    }
}

/// One poller sample: Unix seconds, reel_migration_bytes_total, reel_promotions_total,
/// reel_migration_commits_total.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    pub t: f64,
    pub bytes: u64,
    pub promotions: u64,
    pub commits: u64,
}

/// Samples the copy counters every `interval` on its own connection until stopped.
pub struct Poller {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(Vec<Sample>, u64)>>,
}

impl Poller {
    pub fn start(addr: SocketAddr, interval: Duration) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut node = Node::new(addr);
            let (mut samples, mut failures) = (Vec::new(), 0u64);
            while !flag.load(Ordering::Relaxed) {
                match node.metrics() {
                    Ok(m) => samples.push(Sample {
                        t: unix_now(),
                        bytes: m.get("reel_migration_bytes_total") as u64,
                        promotions: m.get("reel_promotions_total") as u64,
                        commits: m.get("reel_migration_commits_total") as u64,
                    }),
                    // Keep polling; the report counts the samples.
                    Err(_) => failures += 1,
                }
                let until = Instant::now() + interval;
                while !flag.load(Ordering::Relaxed) && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            (samples, failures)
        });
        Poller {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops the poller and returns its samples; `file`, when given, gets them as text
    /// ("unix_s bytes promotions commits" lines).
    pub fn finish(mut self, file: Option<&std::path::Path>) -> Result<Vec<Sample>> {
        self.stop.store(true, Ordering::Relaxed);
        let (samples, failures) = self
            .handle
            .take()
            .context("poller already stopped")?
            .join()
            .map_err(|_| anyhow::anyhow!("the metrics poller panicked"))?;
        if let Some(path) = file {
            let mut text: String = samples
                .iter()
                .map(|s| format!("{:.3} {} {} {}\n", s.t, s.bytes, s.promotions, s.commits))
                .collect();
            if failures > 0 {
                text += &format!("# {failures} samples failed\n");
            }
            std::fs::write(path, text)?;
        }
        Ok(samples)
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_pick_the_counters() {
        let text = "# HELP x\nreel_promotions_total 3\nreel_migration_bytes_total 1.34217728e8\n\
                    reel_other 5\nreel_migration_guard_baseline_seconds 0.0025\n";
        let m = Metrics::parse(text);
        assert_eq!(m.get("reel_promotions_total"), 3);
        assert_eq!(m.get("reel_migration_bytes_total"), 134217728);
        assert!(!m.has("reel_other"));
        assert_eq!(m.get("reel_migration_guard_baseline_seconds_us"), 2500);
        assert_eq!(
            m.to_string(),
            "reel_promotions_total=3 reel_migration_bytes_total=134217728 reel_migration_guard_baseline_seconds_us=2500"
        );
        let later = Metrics::parse("reel_promotions_total 5\n");
        assert_eq!(m.delta(&later, "reel_promotions_total"), 2);
    }
}
