//! `reel`: the Reelstore command line. One module per subcommand; this file only parses the
//! command line, sets up logging and turns errors into a message and a non-zero exit code.
//!
//! Errors are `anyhow` here (the edge) and carry the engine's typed error as their source, so the
//! message that reaches the user is the engine's, which names the fix.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cmd::bench;
use cmd::{demo, format, inspect, load, node, simulate};

mod cmd;
mod thread_cpu;
mod units;

#[derive(Parser, Debug)]
#[command(
    name = "reel",
    version,
    about = "Reelstore: a tiered media storage engine",
    after_help = "Logging: set REEL_LOG (e.g. REEL_LOG=info or REEL_LOG=reel_store=debug)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The embedded default: a node with two file-backed tiers in a temporary directory, a
    /// library ingested, a skewed load with a live view of promotions and demotions, every
    /// response verified, a summary, then cleanup. No root, no setup.
    Demo(demo::DemoArgs),
    /// Write a fresh, empty volume onto a block device or a regular file.
    Format(format::FormatArgs),
    /// Open a volume (running recovery) and print its geometry, space and assets.
    Inspect(inspect::InspectArgs),
    /// Serve a volume over HTTP/1.1: one pinned shard per core, zero-copy streaming.
    Node(Box<node::NodeArgs>),
    /// Open-loop HTTP load against a node: requests arrive on a fixed schedule (constant or
    /// Poisson) whatever the node does, and latency counts from each request's intended start.
    Load(load::LoadArgs),
    /// Replay a request trace (CSV or synthetic Zipf) through the tiering policy under a
    /// simulated clock; compare with LRU, a static oracle and Belady at the same capacity.
    Simulate(simulate::SimulateArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Read benchmark of a device or file on the engine's own io_uring read path
    /// (O_DIRECT READ_FIXED into registered buffers), with fio-comparable output.
    Device(bench::device::BenchDeviceArgs),
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Format(args) => format::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Node(args) => node::run(&args),
        Command::Load(args) => load::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Bench {
            what: BenchCommand::Device(args),
        } => bench::device::run_cli(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("REEL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Fails with the driver's own message (which names the fix) when io_uring is unusable here.
/// Commands that do I/O call it first, so the user sees that message instead of a failure
/// deep inside an operation.
pub(crate) fn require_io_uring() -> anyhow::Result<()> {
    reel_store::driver::probe_kernel().map_err(anyhow::Error::new)
}
