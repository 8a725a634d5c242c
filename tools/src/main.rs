//! `reel`: the Reelstore command line. One module per subcommand; this file only parses the
//! command line, sets up logging and turns errors into a message and a non-zero exit code.
//!
//! Errors are `anyhow` here (the edge) and carry the engine's typed error as their source, so the
//! message that reaches the user is the engine's, which names the fix.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cmd::bench;
use cmd::{cluster, demo, format, inspect, load, manager, node, simulate};

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
    /// A cluster on loopback: the manager, a library node and two edges as child processes
    /// on file-backed volumes in a temporary directory, titles ingested through the manager, a
    /// skewed load from each edge's clients relayed through it, a live view per node, every
    /// response verified, a summary, then cleanup (`--keep`: leave it running). `--single`: one
    /// node's tiers, promotions and demotions. No root, no setup.
    Demo(demo::DemoArgs),
    /// Write a fresh, empty volume onto a block device or a regular file.
    Format(format::FormatArgs),
    /// Open a volume (running recovery) and print its geometry, space and assets.
    Inspect(inspect::InspectArgs),
    /// Serve a volume over HTTP/1.1: one pinned shard per core, zero-copy streaming.
    Node(Box<node::NodeArgs>),
    /// The cluster's manager: nodes register with it; it routes each stream to a node that
    /// holds the asset (or relays it through the client's own node), sends uploads to a node
    /// with room and deletes everywhere.
    Manager(Box<manager::ManagerArgs>),
    /// What the manager knows: nodes (liveness, fill, load, last report) and the hottest
    /// assets, or where one asset is (`--asset ID`).
    Cluster(cluster::ClusterArgs),
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
    /// `reel node` against nginx (sendfile, and directio with aio threads) on the same
    /// generated assets under wrk: GB/s, req/s and server CPU-s per GB, medians of alternating
    /// runs and their ratios against the targets. Needs nginx and wrk (benches/peers.sh).
    Nginx(bench::nginx::NginxArgs),
    /// What background migration costs the foreground: one node with a primary and a
    /// secondary volume serves short range requests of a hot set while promotions of a cold
    /// set are paused and resumed (interleaved) or run in separate runs (alternating); p50/p99
    /// per condition, their ratios, a resampled interval and an A/A control. Needs wrk.
    Migration(bench::migration::MigrationArgs),
    /// `reel manager`'s routing: a manager with synthetic nodes reporting 10^6 copies; its
    /// RSS per inventory entry, redirects/s and p50/p99 under `reel load --no-follow` against
    /// nginx `return 307` in the same run, and its mean decision time.
    Routing(bench::routing::RoutingArgs),
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::Format(args) => format::run(&args),
        Command::Inspect(args) => inspect::run(&args),
        Command::Node(args) => node::run(&args),
        Command::Manager(args) => manager::run(&args),
        Command::Cluster(args) => cluster::run(&args),
        Command::Load(args) => load::run(&args),
        Command::Simulate(args) => simulate::run(&args),
        Command::Bench {
            what: BenchCommand::Device(args),
        } => bench::device::run_cli(&args),
        Command::Bench {
            what: BenchCommand::Nginx(args),
        } => bench::nginx::run(&args),
        Command::Bench {
            what: BenchCommand::Migration(args),
        } => bench::migration::run(&args),
        Command::Bench {
            what: BenchCommand::Routing(args),
        } => bench::routing::run(&args),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_help_parses() {
        for what in ["nginx", "migration"] {
            let err = Cli::try_parse_from(["reel", "bench", what, "--help"])
                .expect_err("--help stops the parse");
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp, "{what}");
            assert!(err.to_string().contains("--quick"), "{what}: {err}");
        }
    }

    /// The bench subcommand that `argv` (after `reel bench`) parses to.
    fn bench(argv: &[&str]) -> BenchCommand {
        let full = ["reel", "bench"].iter().chain(argv).copied();
        match Cli::try_parse_from(full)
            .expect("bench flags parse")
            .command
        {
            Command::Bench { what } => what,
            other => panic!("not a bench command: {other:?}"),
        }
    }

    #[test]
    fn bench_flags_parse() {
        let BenchCommand::Nginx(a) = bench(&["nginx", "--quick", "--conns", "8,32", "--skip-reel"])
        else {
            panic!("not bench nginx");
        };
        assert_eq!(a.conns, Some(vec![8, 32]));
        assert!(a.quick && a.skip_reel);
        assert_eq!(
            (a.threads, a.timeout.as_str(), a.workers.as_str()),
            (2, "60s", "auto")
        );
        let BenchCommand::Migration(a) = bench(&[
            "migration",
            "--budget",
            "64M",
            "--node-args",
            "--migration-commit-interval 120s",
        ]) else {
            panic!("not bench migration");
        };
        assert_eq!(a.budget, 64 << 20);
        assert_eq!(a.node_args, "--migration-commit-interval 120s");
        assert_eq!(
            (a.open_conns, a.conns, a.shards, a.range_kb),
            (32, 16, 2, 1024)
        );
    }
}
