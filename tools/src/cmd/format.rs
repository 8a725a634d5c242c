//! `reel format DEVICE [--size N] [--force]`: writes a fresh volume and prints its geometry.
//!
//! All the checks (existing volume or filesystem signature, device size, minimum size) are the
//! engine's; this module only maps the command line onto [`Volume::format`] and prints.

use std::path::{Path, PathBuf};

use clap::Args;
use reel_store::format::Superblock;
use reel_store::{EngineError, FormatOptions, Volume};

use crate::units::{human_bytes, parse_size};

#[derive(Args, Debug)]
pub struct FormatArgs {
    /// Block device or regular file to format (a missing file is created; needs --size).
    pub device: PathBuf,
    /// Volume size, e.g. 4G. A regular file is created or resized to it; on a block device
    /// only this many bytes are used (default: the whole device).
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Overwrite a target that holds a Reelstore volume or a filesystem signature.
    /// Everything on it is lost.
    #[arg(long)]
    pub force: bool,
}

pub fn run(args: &FormatArgs) -> anyhow::Result<()> {
    crate::require_io_uring()?;
    let opts = FormatOptions {
        size: args.size,
        force: args.force,
        ..FormatOptions::default()
    };
    let sb = Volume::format(&args.device, &opts)
        .map_err(|e| engine_error(e, "cannot format", &args.device))?;
    print!("{}", summary(&args.device, &sb));
    Ok(())
}

fn summary(path: &Path, sb: &Superblock) -> String {
    let data_bytes = sb.data_blocks * u64::from(sb.block_size);
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("  {k:<18}{v}\n"));
    line("path", path.display().to_string());
    line("uuid", uuid_string(&sb.uuid));
    line("volume", size_exact(sb.volume_bytes));
    line(
        "data capacity",
        format!(
            "{} ({} blocks of {} B, at offset {})",
            human_bytes(data_bytes),
            sb.data_blocks,
            sb.block_size,
            sb.data_offset
        ),
    );
    line("journal", region(sb.journal_bytes, sb.journal_offset));
    line(
        "checkpoints",
        format!(
            "2 slots of {}",
            region(sb.checkpoint_slot_bytes, sb.checkpoint_offset)
        ),
    );
    line("chunk size", human_bytes(u64::from(sb.chunk_size)));
    format!("formatted a Reelstore volume\n{s}")
}

/// Engine errors name the path and the fix already; driver errors do not name the path, so
/// those get it as context.
pub fn engine_error(e: EngineError, verb: &str, path: &Path) -> anyhow::Error {
    match e {
        EngineError::Driver(_) => {
            anyhow::Error::new(e).context(format!("{verb} {}", path.display()))
        }
        other => anyhow::Error::new(other),
    }
}

/// A size readable and exact: "64.00 MiB (67108864 bytes)".
pub fn size_exact(bytes: u64) -> String {
    format!("{} ({bytes} bytes)", human_bytes(bytes))
}

/// Where a region of the volume lies: "1.00 MiB at offset 8192".
pub fn region(bytes: u64, offset: u64) -> String {
    format!("{} at offset {offset}", human_bytes(bytes))
}

/// The canonical 8-4-4-4-12 hex spelling of a UUID.
pub fn uuid_string(uuid: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*uuid).hyphenated().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_spelling() {
        let u = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(uuid_string(&u), "12345678-9abc-def0-0123-456789abcdef");
    }
}
