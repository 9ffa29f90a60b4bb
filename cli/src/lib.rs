//! # rpf-cli
//!
//! The `rpf` command. [`args`] and [`spec`] turn the command line into
//! forwards; [`attach`] opens a [`channel`] (through [`via`] or [`cluster`])
//! and runs the CLI side of a tunnel session over it, reconnecting when the
//! channel is lost; [`inject`] adds the sidecar to manifests.

pub mod args;
pub mod attach;
pub mod channel;
pub mod cluster;
pub mod completion;
pub mod inject;
pub mod spec;
pub mod via;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::args::{Cli, Command};

/// Entry point of both `rpf` and `kubectl-rpf`: parses arguments, sets up
/// logging, runs the command, and prints failures as `error: ...`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    rpf_tunnel::net::raise_fd_limit();
    // A thread pool: with several busy connections the CLI uses more than
    // one core (measured: 8 connections move ~35% more than on one thread).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        match cli.command {
            Command::Attach(args) => attach::run(args, shutdown).await,
            Command::Inject(args) => inject::run(args),
            Command::Completion(args) => completion::run(&args),
            Command::CompleteTargets(args) => completion::run_targets(&args).await,
        }
    });
    // Don't wait for stray tasks (a blocked DNS lookup) on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => tracing::Level::WARN,
        (false, 0) => tracing::Level::INFO,
        (false, 1) => tracing::Level::DEBUG,
        _ => tracing::Level::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

/// First Ctrl-C or SIGTERM: say goodbye and exit cleanly. Second: exit now.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    shutdown.cancel();
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    std::process::exit(130);
}
