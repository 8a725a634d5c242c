//! `reel cluster`: what the manager knows — the nodes (liveness, fill, load, last report) and
//! the hottest assets, or where one asset is (`--asset ID`).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use reel_http::client::Conn;
use serde_json::Value;

use crate::units::human_bytes;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// The manager's client address (its --listen), HOST:PORT or http://HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub manager: String,
    /// Show where this asset is instead (every copy: node, state, tiers, version).
    #[arg(long)]
    pub asset: Option<String>,
    /// Print the manager's JSON as it is.
    #[arg(long)]
    pub json: bool,
}

fn addr_of(s: &str) -> anyhow::Result<SocketAddr> {
    let hostport = s.strip_prefix("http://").unwrap_or(s).trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .with_context(|| format!("--manager {s}: not HOST:PORT"))?
        .next()
        .ok_or_else(|| anyhow!("--manager {s}: no address"))
}

fn fetch(addr: SocketAddr, target: &str) -> anyhow::Result<Value> {
    let mut c = Conn::connect(addr, Duration::from_secs(5)).with_context(|| {
        format!("cannot reach the manager at {addr} (is `reel manager` running there?)")
    })?;
    let r = c.request("GET", target, &[], None)?;
    if r.status() != 200 {
        bail!("GET {target}: {} {}", r.status(), r.text().trim());
    }
    serde_json::from_slice(&r.body).context("the manager's answer is not JSON")
}

fn fill(tiers: &Value, name: &str) -> String {
    tiers
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["tier"] == name))
        .map(|t| {
            let cap = t["capacity_bytes"].as_u64().unwrap_or(0);
            let used = t["used_bytes"].as_u64().unwrap_or(0);
            let pct = if cap == 0 {
                0.0
            } else {
                used as f64 * 100.0 / cap as f64
            };
            format!("{pct:.0}% of {}", human_bytes(cap))
        })
        .unwrap_or_else(|| "-".into())
}

pub fn run(args: &ClusterArgs) -> anyhow::Result<()> {
    let addr = addr_of(&args.manager)?;
    if let Some(id) = &args.asset {
        let v = fetch(addr, &format!("/assets/{id}/locations"))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
        println!(
            "{id}: current {}",
            v["current"]
                .as_str()
                .unwrap_or("(not published since the manager started)")
        );
        if let Some(t) = v.get("tombstone") {
            match t["keep"].as_str() {
                Some(k) => println!("  tombstone: every version but {k} is dead"),
                None => println!("  tombstone: deleted"),
            }
        }
        println!(
            "  {:<16} {:<10} {:<20} {:<22} routed",
            "node", "state", "tiers", "etag"
        );
        for c in v["copies"].as_array().into_iter().flatten() {
            let tiers: Vec<&str> = c["tiers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            println!(
                "  {:<16} {:<10} {:<20} {:<22} {}",
                c["node"].as_str().unwrap_or(""),
                c["state"].as_str().unwrap_or(""),
                tiers.join("+"),
                c["etag"].as_str().unwrap_or(""),
                if c["current"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                }
            );
        }
        return Ok(());
    }
    let v = fetch(addr, "/cluster")?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "manager {} ({}, store {}): {} assets, {} tombstones",
        v["manager"].as_str().unwrap_or(""),
        if v["leader"].as_bool() == Some(true) {
            "leader"
        } else {
            "standby"
        },
        v["store"].as_str().unwrap_or(""),
        v["assets"],
        v["tombstones"]
    );
    println!(
        "{:<16} {:<10} {:<22} {:<18} {:<18} {:>8} {:>10} {:>9} {:>8}",
        "node", "state", "access", "primary", "secondary", "streams", "tx MB/s", "assets", "report"
    );
    for n in v["nodes"].as_array().into_iter().flatten() {
        let ago = n["last_report_ms"]
            .as_u64()
            .map_or("never".to_string(), |ms| format!("{:.1}s", ms as f64 / 1e3));
        println!(
            "{:<16} {:<10} {:<22} {:<18} {:<18} {:>8} {:>10.1} {:>9} {:>8}",
            n["name"].as_str().unwrap_or(""),
            n["state"].as_str().unwrap_or(""),
            n["access"].as_str().unwrap_or(""),
            fill(&n["tiers"], "primary"),
            fill(&n["tiers"], "secondary"),
            n["load"]["streams"].as_u64().unwrap_or(0),
            n["load"]["tx_bytes_per_s"].as_f64().unwrap_or(0.0) / 1e6,
            n["holdings"].as_u64().unwrap_or(0),
            ago
        );
    }
    let hot = v["hottest"].as_array().cloned().unwrap_or_default();
    if !hot.is_empty() {
        println!("hottest:");
        for h in hot.iter().take(10) {
            println!(
                "  {:<40} {:>10.1} views/h on {} node(s)",
                h["id"].as_str().unwrap_or(""),
                h["views_per_h"].as_f64().unwrap_or(0.0),
                h["copies"]
            );
        }
    }
    Ok(())
}
