//! `rpf-webhook`: parses the flags, sets up logging, runs the library.

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = rpf_webhook::Args::parse();
    // For `kubectl logs`: timestamps and levels; `RUST_LOG` picks the level.
    rpf_process::init_logging(rpf_process::LogStyle::Machine, 0, false);
    rpf_process::raise_fd_limit();
    rpf_webhook::run(args).await.context("rpf-webhook")
}
