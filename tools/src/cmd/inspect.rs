//! `reel inspect DEVICE [--json]`: opens a volume the way a node does (running recovery) and
//! prints its superblock geometry, what recovery found, space accounting and the asset list.
//!
//! Opening writes nothing unless recovery repairs something (a damaged superblock copy is
//! rewritten, a torn journal tail is cut); the open report says when it did.

use std::path::PathBuf;

use clap::Args;
use reel_store::{Asset, Volume};
use serde::Serialize;

use crate::cmd::format::{engine_error, region, size_exact, uuid_string};
use crate::units::human_bytes;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Block device or file holding a Reelstore volume.
    pub device: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    path: String,
    superblock: SuperblockJson,
    open_report: OpenReportJson,
    stats: StatsJson,
    assets: Vec<AssetJson>,
}

#[derive(Serialize)]
struct SuperblockJson {
    format_version: u32,
    uuid: String,
    block_size: u32,
    chunk_size: u32,
    volume_bytes: u64,
    checkpoint_offset: u64,
    checkpoint_slot_bytes: u64,
    journal_offset: u64,
    journal_bytes: u64,
    data_offset: u64,
    data_blocks: u64,
    created_unix_ns: u64,
}

#[derive(Serialize)]
struct OpenReportJson {
    superblock_repaired: Vec<&'static str>,
    checkpoint_fallback: bool,
    checkpoint_generation: u64,
    records_replayed: u64,
    torn_tail_cut: bool,
    assets: u64,
}

#[derive(Serialize)]
struct StatsJson {
    capacity_bytes: u64,
    used_bytes: u64,
    free_bytes: u64,
    reserved_bytes: u64,
    reclaim_pending_bytes: u64,
    assets: u64,
    journal_used_bytes: u64,
    journal_bytes: u64,
    checkpoint_generation: u64,
    catalog_encoded_bytes: u64,
    checkpoint_payload_max_bytes: u64,
}

#[derive(Serialize)]
struct AssetJson {
    id: String,
    size: u64,
    content_type: Option<String>,
    created_unix_ns: u64,
    checksum: String,
    /// `(start_block, blocks)` pairs, relative to the data region.
    extents: Vec<(u64, u32)>,
}

pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    crate::require_io_uring()?;
    if !args.device.exists() {
        // The engine's message for a missing target suggests --size, which is format's option.
        anyhow::bail!(
            "{} does not exist; name the device or file that holds the volume (create one with \
             `reel format PATH --size 4G`)",
            args.device.display()
        );
    }
    let vol =
        Volume::open(&args.device).map_err(|e| engine_error(e, "cannot open", &args.device))?;
    let report = build(&vol, &args.device);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", text(&report));
    }
    Ok(())
}

fn build(vol: &Volume, path: &std::path::Path) -> Report {
    let sb = vol.superblock();
    let or = vol.open_report();
    let st = vol.stats();
    Report {
        path: path.display().to_string(),
        superblock: SuperblockJson {
            format_version: reel_store::format::FORMAT_VERSION,
            uuid: uuid_string(&sb.uuid),
            block_size: sb.block_size,
            chunk_size: sb.chunk_size,
            volume_bytes: sb.volume_bytes,
            checkpoint_offset: sb.checkpoint_offset,
            checkpoint_slot_bytes: sb.checkpoint_slot_bytes,
            journal_offset: sb.journal_offset,
            journal_bytes: sb.journal_bytes,
            data_offset: sb.data_offset,
            data_blocks: sb.data_blocks,
            created_unix_ns: sb.created_unix_ns,
        },
        open_report: OpenReportJson {
            superblock_repaired: or
                .superblock_repaired
                .iter()
                .map(|&i| if i == 0 { "A" } else { "B" })
                .collect(),
            checkpoint_fallback: or.checkpoint_fallback,
            checkpoint_generation: or.checkpoint_generation,
            records_replayed: or.records_replayed,
            torn_tail_cut: or.torn_tail_cut,
            assets: or.assets,
        },
        stats: StatsJson {
            capacity_bytes: st.capacity_bytes,
            used_bytes: st.used_bytes,
            free_bytes: st.free_bytes,
            reserved_bytes: st.reserved_bytes,
            reclaim_pending_bytes: st.reclaim_pending_bytes,
            assets: st.assets,
            journal_used_bytes: st.journal_used_bytes,
            journal_bytes: st.journal_bytes,
            checkpoint_generation: st.checkpoint_generation,
            catalog_encoded_bytes: st.catalog_encoded_bytes,
            checkpoint_payload_max_bytes: st.checkpoint_payload_max_bytes,
        },
        assets: vol.list().iter().map(asset_json).collect(),
    }
}

fn asset_json(a: &Asset) -> AssetJson {
    AssetJson {
        id: a.id().to_string(),
        size: a.size(),
        content_type: a.content_type().map(str::to_string),
        created_unix_ns: a.created_unix_ns(),
        checksum: format!("{:08x}", a.checksum()),
        extents: a.extents().map(|e| (e.start, e.blocks)).collect(),
    }
}

fn text(r: &Report) -> String {
    let sb = &r.superblock;
    let or = &r.open_report;
    let st = &r.stats;
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("  {k:<22}{v}\n"));
    line("path", r.path.clone());
    line("format version", sb.format_version.to_string());
    line("uuid", sb.uuid.clone());
    line("volume", size_exact(sb.volume_bytes));
    line(
        "block / chunk size",
        format!(
            "{} B / {}",
            sb.block_size,
            human_bytes(u64::from(sb.chunk_size))
        ),
    );
    line(
        "checkpoints",
        format!(
            "2 slots of {}",
            region(sb.checkpoint_slot_bytes, sb.checkpoint_offset)
        ),
    );
    line("journal", region(sb.journal_bytes, sb.journal_offset));
    line(
        "data region",
        format!("{} blocks at offset {}", sb.data_blocks, sb.data_offset),
    );
    let mut out = format!("superblock\n{s}");

    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("  {k:<22}{v}\n"));
    line(
        "superblock repaired",
        if or.superblock_repaired.is_empty() {
            "no".to_string()
        } else {
            format!("copy {} rewritten", or.superblock_repaired.join(", "))
        },
    );
    line(
        "checkpoint",
        format!(
            "generation {}{}",
            or.checkpoint_generation,
            if or.checkpoint_fallback {
                " (newest slot unreadable; fell back to the other)"
            } else {
                ""
            }
        ),
    );
    line("records replayed", or.records_replayed.to_string());
    line(
        "torn tail cut",
        if or.torn_tail_cut { "yes" } else { "no" }.to_string(),
    );
    out.push_str(&format!("recovery\n{s}"));

    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("  {k:<22}{v}\n"));
    let pct = |v: u64| {
        if st.capacity_bytes == 0 {
            0.0
        } else {
            v as f64 * 100.0 / st.capacity_bytes as f64
        }
    };
    line("capacity", human_bytes(st.capacity_bytes));
    line(
        "used",
        format!(
            "{} ({:.1}%)",
            human_bytes(st.used_bytes),
            pct(st.used_bytes)
        ),
    );
    line(
        "free",
        format!(
            "{} ({:.1}%)",
            human_bytes(st.free_bytes),
            pct(st.free_bytes)
        ),
    );
    line("reserved (ingests)", human_bytes(st.reserved_bytes));
    line("reclaim pending", human_bytes(st.reclaim_pending_bytes));
    line(
        "journal used",
        format!(
            "{} of {}",
            human_bytes(st.journal_used_bytes),
            human_bytes(st.journal_bytes)
        ),
    );
    line(
        "catalog (encoded)",
        format!(
            "{} of {} per checkpoint slot",
            human_bytes(st.catalog_encoded_bytes),
            human_bytes(st.checkpoint_payload_max_bytes)
        ),
    );
    out.push_str(&format!("space\n{s}"));

    out.push_str(&format!("assets ({})\n", r.assets.len()));
    if !r.assets.is_empty() {
        out.push_str(&format!(
            "  {:<40} {:>14} {:>9}  extents (start_block+blocks)\n",
            "id", "size", "crc32c"
        ));
    }
    for a in &r.assets {
        let extents: Vec<String> = a.extents.iter().map(|(s, n)| format!("{s}+{n}")).collect();
        out.push_str(&format!(
            "  {:<40} {:>14} {:>9}  {}\n",
            a.id,
            a.size,
            a.checksum,
            extents.join(" ")
        ));
    }
    out
}
