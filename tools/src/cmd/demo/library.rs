//! The demo's library: titles of deterministic pseudo-random content (any range can be
//! generated, and so checked, on its own), the back catalogue ingested straight into the
//! secondary volume and the new releases uploaded over HTTP.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reel_http::client::{encode_request, Conn};
use reel_store::driver::{Driver, DriverConfig};
use reel_store::{PutOptions, Volume};

use super::view::Scraper;
use super::{connect, BODY_MAX, MIB};
use crate::units::human_bytes;

/// splitmix64's output function: a good 64-bit mix.
pub(super) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The content of title `seed` at byte `offset`: one mixed word per 8 bytes, so any range can be
/// generated (and checked) without generating what precedes it.
pub(super) fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let word = |i: u64| mix((seed << 40) ^ i).to_le_bytes();
    let mut rest: &mut [u8] = buf;
    let skip = (offset % 8) as usize;
    let mut idx = offset / 8;
    if skip != 0 {
        let n = (8 - skip).min(rest.len());
        let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
        head.copy_from_slice(&word(idx)[skip..skip + n]);
        rest = tail;
        idx += 1;
    }
    let mut words = rest.chunks_exact_mut(8);
    for w in &mut words {
        w.copy_from_slice(&word(idx));
        idx += 1;
    }
    let tail = words.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&word(idx)[..n]);
}

/// A title's content as a reader (for `Volume::put`).
struct Content {
    seed: u64,
    offset: u64,
    left: u64,
}

impl Read for Content {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        fill(self.seed, self.offset, &mut buf[..n]);
        self.offset += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

pub(super) struct Title {
    pub(super) id: String,
    pub(super) seed: u64,
    pub(super) size: u64,
    /// A new release: uploaded over HTTP (lands on the primary); else back catalogue, ingested
    /// straight into the secondary.
    pub(super) new_release: bool,
}

fn title_size(i: u32) -> u64 {
    // 4–16 MiB, not block-aligned.
    4 * MIB + mix(u64::from(i) ^ 0x5EED) % (12 * MIB + 1)
}

pub(super) fn library(n: u32) -> Vec<Title> {
    (0..n)
        .map(|i| Title {
            id: format!("demo/title-{i:02}.mp4"),
            seed: u64::from(i) + 1,
            size: title_size(i),
            new_release: false,
        })
        .collect()
}

pub(super) fn names(titles: &[Title], set: &[usize]) -> String {
    set.iter()
        .map(|&i| {
            let t = &titles[i];
            let n =
                t.id.trim_start_matches("demo/title-")
                    .trim_end_matches(".mp4");
            if t.new_release {
                format!("{n}*")
            } else {
                n.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

/// PUTs a title (Content-Length body streamed from the generator); Ok once answered 201.
fn put_title(conn: &mut Conn, t: &Title, buf: &mut [u8]) -> Result<()> {
    let len = t.size.to_string();
    let head = encode_request(
        "PUT",
        "reel-demo",
        &format!("/assets/{}", t.id),
        &[("Content-Type", "video/mp4"), ("Content-Length", &len)],
        None,
    );
    conn.write_all(&head).context("sending")?;
    let mut sent = 0u64;
    while sent < t.size {
        let n = (t.size - sent).min(buf.len() as u64) as usize;
        fill(t.seed, sent, &mut buf[..n]);
        conn.write_all(&buf[..n]).context("sending")?;
        sent += n as u64;
    }
    let h = conn.read_head()?;
    let body = conn.read_body(&h, BODY_MAX)?;
    let body = String::from_utf8(body).context("response body is not UTF-8")?;
    if h.status != 201 {
        bail!("PUT {} answered {}: {}", t.id, h.status, body.trim());
    }
    Ok(())
}

pub(super) fn ingest_back_catalogue(
    secondary: &Volume,
    titles: &[Title],
    chunk: u64,
) -> Result<()> {
    let t = Instant::now();
    let mut drv = Driver::new(&DriverConfig {
        ring_entries: 64,
        buf_size: chunk as usize,
        buf_count: 8,
        write_log: None,
    })?;
    let mut bytes = 0;
    let back: Vec<&Title> = titles.iter().filter(|t| !t.new_release).collect();
    for t in &back {
        let opts = PutOptions {
            content_type: Some("video/mp4".into()),
            size: Some(t.size),
            depth: None,
            created_unix_ns: None,
            io_max: None,
        };
        let mut body = Content {
            seed: t.seed,
            offset: 0,
            left: t.size,
        };
        secondary
            .put(&mut drv, &t.id, &mut body, &opts)
            .with_context(|| format!("ingesting {} into the secondary", t.id))?;
        bytes += t.size;
    }
    println!(
        "  back catalogue: {} titles, {} written straight into the secondary volume in {:.2?} \
         ({:.0} MB/s)",
        back.len(),
        human_bytes(bytes),
        t.elapsed(),
        mb_s(bytes, t.elapsed())
    );
    Ok(())
}

pub(super) fn upload_new_releases(
    addr: SocketAddr,
    titles: &[Title],
    scraper: &mut Scraper,
    stop: &AtomicBool,
) -> Result<()> {
    let news: Vec<&Title> = titles.iter().filter(|t| t.new_release).collect();
    let bytes: u64 = news.iter().map(|t| t.size).sum();
    let t = Instant::now();
    {
        let mut conn = connect(addr)?;
        let mut buf = vec![0u8; MIB as usize];
        for t in &news {
            put_title(&mut conn, t, &mut buf)?;
        }
    }
    let put_time = t.elapsed();
    // Wait for the write-backs (the scheduler starts them within a second), at most 30 s.
    let mut written_back = 0;
    while t.elapsed() < Duration::from_secs(30) && !stop.load(Relaxed) {
        written_back = scraper.figures().write_backs;
        if written_back >= news.len() as u64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "  new releases: {} titles, {} uploaded with HTTP PUT in {:.2?} ({:.0} MB/s; each 201 \
         once durable on the primary); {} written back to the secondary after {:.1?}",
        news.len(),
        human_bytes(bytes),
        put_time,
        mb_s(bytes, put_time),
        written_back,
        t.elapsed()
    );
    Ok(())
}
