//! `reel manager`: the cluster's manager. Nodes join it with `reel node … --manager URL`;
//! clients ask it for assets and are redirected to a node that has them (or through their own
//! node, which relays). See `reel_manager` for its parts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use reel_manager::{Manager, ManagerConfig};

#[derive(Args, Debug)]
pub struct ManagerArgs {
    #[command(flatten)]
    pub config: ManagerConfig,
}

pub fn run(args: &ManagerArgs) -> anyhow::Result<()> {
    let m = Manager::start(args.config.clone()).map_err(|e| anyhow!(e))?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handler")?;
    }
    println!(
        "reel manager: listening on {} (clients) and {} (nodes), store {}",
        m.access_addr(),
        m.peer_addr(),
        m.shared().store_kind
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("reel manager: stopping");
    m.shutdown();
    Ok(())
}
