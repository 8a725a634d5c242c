//! One module per `reel` subcommand. Each exposes its clap `…Args` and a `run`.

pub mod bench;
pub mod cluster;
pub mod demo;
pub mod format;
pub mod inspect;
pub mod load;
pub mod manager;
pub mod node;
pub mod simulate;
