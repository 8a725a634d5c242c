//! What the demo shows: the node's figures from `/metrics`, a live line per second while the
//! clients run, and the summary at the end.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reel_http::client::{encode_request, Conn};

use super::library::names;
use super::load::{histogram, Clients, Counts, Load, Report};
use super::{connect, DemoArgs, BODY_MAX};
use crate::units::human_bytes;

/// The node's `/metrics` text.
fn scrape(conn: &mut Option<Conn>, addr: SocketAddr) -> Result<String> {
    let c = match conn {
        Some(c) => c,
        None => conn.insert(connect(addr)?),
    };
    let res = (|| {
        let req = encode_request("GET", "reel-demo", "/metrics", &[], None);
        let r = c.exchange(&req, false, BODY_MAX)?;
        let body = String::from_utf8(r.body).context("response body is not UTF-8")?;
        if r.head.status != 200 {
            bail!("GET /metrics answered {}", r.head.status);
        }
        Ok((body, r.head.close))
    })();
    match res {
        Ok((body, close)) => {
            if close {
                *conn = None;
            }
            Ok(body)
        }
        Err(e) => {
            *conn = None;
            Err(e)
        }
    }
}

/// The sum of a metric over its label sets, only those with `tier="…"` when `tier` is given.
fn metric(text: &str, name: &str, tier: Option<&str>) -> u64 {
    let label = tier.map(|t| format!("tier=\"{t}\""));
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| label.as_ref().is_none_or(|lab| l.contains(lab.as_str())))
        .filter_map(|l| l.rsplit(' ').next())
        .filter_map(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// What the live view and the summary show of the node's metrics.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct NodeFigures {
    promotions: u64,
    demotions: u64,
    evictions: u64,
    pub(super) write_backs: u64,
    failures: u64,
    copied_bytes: u64,
    primary_used: u64,
    primary_capacity: u64,
    primary_assets: u64,
    secondary_used: u64,
    secondary_capacity: u64,
    secondary_assets: u64,
}

impl NodeFigures {
    fn parse(text: &str) -> NodeFigures {
        let dev = |name: &str, tier: &str| metric(text, name, Some(tier));
        NodeFigures {
            promotions: metric(text, "reel_promotions_total", None),
            demotions: metric(text, "reel_demotions_total", None),
            evictions: metric(text, "reel_evictions_total", None),
            write_backs: metric(text, "reel_write_backs_total", None),
            failures: metric(text, "reel_migration_failures_total", None),
            copied_bytes: metric(text, "reel_migration_bytes_total", None),
            primary_used: dev("reel_device_used_bytes", "primary"),
            primary_capacity: dev("reel_device_capacity_bytes", "primary"),
            primary_assets: dev("reel_device_assets", "primary"),
            secondary_used: dev("reel_device_used_bytes", "secondary"),
            secondary_capacity: dev("reel_device_capacity_bytes", "secondary"),
            secondary_assets: dev("reel_device_assets", "secondary"),
        }
    }
}

/// The node's `/metrics`, scraped over a keep-alive connection of its own.
pub(super) struct Scraper {
    addr: SocketAddr,
    conn: Option<Conn>,
    last: NodeFigures,
}

impl Scraper {
    pub(super) fn new(addr: SocketAddr) -> Scraper {
        Scraper {
            addr,
            conn: None,
            last: NodeFigures::default(),
        }
    }

    /// The current figures (the previous ones if this scrape failed).
    pub(super) fn figures(&mut self) -> NodeFigures {
        if let Ok(text) = scrape(&mut self.conn, self.addr) {
            self.last = NodeFigures::parse(&text);
        }
        self.last
    }
}

fn pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// Runs the clients until the end of the load (or Ctrl-C), printing a live line every second.
pub(super) fn drive(load: &Arc<Load>, clients: usize, scraper: &mut Scraper) -> Result<Report> {
    let mut window_us = histogram()?;
    let clients = Clients::start(load, clients)?;
    println!(
        "  {:>5} {:>6} {:>6} {:>7} {:>5}   {:<13} {:<13} {:>6} {:>6} {:>6} {:>6}",
        "time",
        "MB/s",
        "req/s",
        "p99 ms",
        "hit%",
        "primary",
        "secondary",
        "promo",
        "demo",
        "evict",
        "wback"
    );
    let t0 = load.t0;
    let mut shifted = false;
    let mut last = t0;
    for second in 1u64.. {
        let until = (t0 + Duration::from_secs(second)).min(load.end);
        while Instant::now() < until && !load.stop.load(Relaxed) {
            std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
        }
        let now = Instant::now();
        let w = clients.take_window(&mut window_us);
        let f = scraper.figures();
        if !shifted && now >= load.shift_at {
            shifted = true;
            println!(
                "  -- {:.0?}: the hot set shifts to {}",
                load.shift_at - t0,
                names(&load.titles, &load.hot[1])
            );
        }
        let dt = now.duration_since(last).as_secs_f64().max(1e-9);
        last = now;
        let p99 = if window_us.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1}", window_us.value_at_quantile(0.99) as f64 / 1e3)
        };
        let fill = |used: u64, cap: u64| format!("{:>4} MiB {:>3.0}%", used >> 20, pct(used, cap));
        println!(
            "  {:>4.0}s {:>6.0} {:>6.0} {:>7} {:>5.0}   {:<13} {:<13} {:>6} {:>6} {:>6} {:>6}",
            now.duration_since(t0).as_secs_f64(),
            w.bytes as f64 / dt / 1e6,
            w.requests as f64 / dt,
            p99,
            pct(w.primary_bytes, w.bytes),
            fill(f.primary_used, f.primary_capacity),
            fill(f.secondary_used, f.secondary_capacity),
            f.promotions,
            f.demotions,
            f.evictions,
            f.write_backs
        );
        if now >= load.end || load.stop.load(Relaxed) {
            break;
        }
    }
    let interrupted = load.stop.load(Relaxed);
    clients.finish(t0, interrupted)
}

/// Prints the summary; returns the totals.
pub(super) fn print_summary(args: &DemoArgs, r: &Report, f: &NodeFigures) -> Counts {
    let mut all = r.phase[0];
    all.add(&r.phase[1]);
    let ms = |q: f64| r.latency_us.value_at_quantile(q) as f64 / 1e3;
    let ratio = |c: &Counts| {
        if c.bytes == 0 {
            "-".to_string()
        } else {
            format!("{:.2}", c.primary_bytes as f64 / c.bytes as f64)
        }
    };
    let secs = r.elapsed.as_secs_f64().max(1e-9);
    let achieved = all.requests as f64 / secs;
    println!("reel demo: summary");
    if r.interrupted {
        println!("  interrupted after {:.1?}", r.elapsed);
    }
    println!(
        "  load         {secs:.1} s, {} clients, {} requests ({} whole titles, {} ranges), \
         {achieved:.1} req/s of {:.0} offered, {:.2} GB, {:.0} MB/s",
        args.clients(),
        all.requests,
        all.full,
        all.ranges,
        args.rate(),
        all.bytes as f64 / 1e9,
        all.bytes as f64 / secs / 1e6
    );
    if achieved < 0.8 * args.rate() && !r.interrupted {
        println!(
            "               this machine did not keep up with the offered rate; the tiering \
             thresholds assume it, so fewer titles qualify (try --rate {:.0})",
            (achieved * 0.7).max(1.0)
        );
    }
    if !r.latency_us.is_empty() {
        println!(
            "  latency      p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms (request sent \
             to last byte received)",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            r.latency_us.max() as f64 / 1e3
        );
    }
    println!(
        "  verified     {} responses, {:.2} GB compared with the generator: {} wrong bytes",
        all.requests,
        all.bytes as f64 / 1e9,
        all.wrong_bytes
    );
    println!(
        "  byte-hit     primary byte-hit ratio {} (first hot set {}, second {}): bytes of titles \
         on the primary when requested / all bytes",
        ratio(&all),
        ratio(&r.phase[0]),
        ratio(&r.phase[1])
    );
    println!(
        "  migrations   {} promotions, {} demotions, {} evictions, {} write-backs, {} failures; \
         {} copied between the tiers",
        f.promotions,
        f.demotions,
        f.evictions,
        f.write_backs,
        f.failures,
        human_bytes(f.copied_bytes)
    );
    println!(
        "  tiers        primary {} of {} used ({} titles), secondary {} of {} ({} titles)",
        human_bytes(f.primary_used),
        human_bytes(f.primary_capacity),
        f.primary_assets,
        human_bytes(f.secondary_used),
        human_bytes(f.secondary_capacity),
        f.secondary_assets
    );
    println!("  errors       {}", all.errors);
    if let Some(e) = &r.first_error {
        println!("               first: {e}");
    }
    if let Some(e) = &r.first_wrong {
        println!("  WRONG BYTES  first: {e}");
    }
    all
}
