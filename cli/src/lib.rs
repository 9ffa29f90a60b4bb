//! # rpf-cli
//!
//! The `rpf` command. [`args`] and [`spec`] turn the command line into
//! forwards; [`attach`] opens a [`channel`] (through [`via`] or [`cluster`])
//! and runs the CLI side of a tunnel session over it, reconnecting when the
//! channel is lost; [`inject`] adds the sidecar to manifests; [`doctor`]
//! checks every step on the way and says what to fix.
//!
//! The public surface is [`main`], which both binaries call; everything
//! else is private, so the compiler reports what nothing uses. (The fuzz
//! targets compile the two parsers, `spec.rs` and `cluster/target.rs`,
//! from source: both are leaf modules.)

mod args;
mod attach;
mod channel;
mod cluster;
mod completion;
mod doctor;
mod events;
mod exit;
mod expose;
mod inject;
mod spec;
mod version;
mod via;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::args::{Cli, Command};

/// Entry point of both `rpf` and `kubectl-rpf`: parses arguments, sets up
/// logging, runs the command, and prints failures as `error: ...`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The doctor's report is its output: the tunnel's progress lines (a
    // probe connection) would only interleave with it, unless asked for.
    let doctor = matches!(cli.command, Command::Doctor(_)) && cli.verbose == 0;
    // Scripts reading events learn how the command ended from the stream.
    let events = match &cli.command {
        Command::Attach(a) => a.output.into(),
        Command::Expose(a) => a.output.into(),
        _ => rpf_tunnel::events::Output::Human,
    };
    rpf_process::init_logging(
        rpf_process::LogStyle::Human,
        cli.verbose,
        cli.quiet || doctor,
    );
    rpf_process::raise_fd_limit();
    // A thread pool: with several busy connections the CLI uses more than
    // one core (measured: 8 connections move ~35% more than on one thread).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(rpf_process::cancel_on_signal(shutdown.clone()));
        match cli.command {
            Command::Attach(args) => attach::run(args, shutdown).await,
            Command::Expose(args) => expose::run(args, shutdown).await,
            Command::Cleanup(args) => expose::cleanup(args).await,
            Command::Inject(args) => inject::run(args),
            Command::Doctor(args) => doctor::run(args, shutdown).await,
            Command::Version(args) => version::run(&args).await,
            Command::Completion(args) => completion::run(&args),
            Command::CompleteTargets(args) => completion::run_targets(&args).await,
        }
    });
    // Don't wait for stray tasks (a blocked DNS lookup) on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    if let Err(e) = &result {
        eprintln!("error: {e:#}");
        let event = events::Event::Error {
            error: format!("{e:#}"),
            exit_code: exit::status(e),
        };
        events.report(&event, || {});
    }
    exit::code(&result)
}
