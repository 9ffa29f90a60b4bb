//! `rpf-sidecar`: parses arguments and runs the sidecar library.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rpf_process::LogStyle;
use rpf_proto::Side;
use rpf_proto::DEFAULT_CONTROL_PORT;
use rpf_tunnel::metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// The in-pod half of rpf: binds reverse ports in the pod and carries their
/// connections to `rpf attach`.
#[derive(Debug, Parser)]
#[command(name = "rpf-sidecar", version)]
struct Cli {
    /// More logging (-v: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Only warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Serve Prometheus metrics on this address.
    #[arg(long, global = true, value_name = "ADDR", env = "RPF_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept CLI sessions on a control port (reached through port-forward);
    /// a session outlives a lost channel for the grace the CLI asked for.
    Serve {
        /// Address of the control port; keep it on loopback.
        #[arg(long, value_name = "ADDR", env = "RPF_CONTROL_ADDR",
              default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_CONTROL_PORT)))]
        control_addr: SocketAddr,
        /// Serve a readiness probe here: `GET /ready` is 200 while a CLI
        /// session has its listeners bound and its channel attached, 503
        /// otherwise (the `rpf expose` relays use it).
        #[arg(long, value_name = "ADDR", env = "RPF_READY_ADDR")]
        ready_addr: Option<SocketAddr>,
        /// On SIGTERM, report not ready at once but keep serving for this
        /// long (e.g. 5s) before closing the sessions, so a Service stops
        /// sending new connections here before the listeners close.
        #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
        drain: Duration,
    },
    /// Run one session over stdin/stdout (exec transport, `rpf attach --via`).
    Stdio,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    rpf_process::init_logging(LogStyle::Machine, cli.verbose, cli.quiet);
    rpf_process::raise_fd_limit();
    // One thread: the sidecar only moves bytes, and on a pod's small CPU
    // share a single event loop beats cross-thread wakeups and costs less
    // memory.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rpf-sidecar: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let signalled = CancellationToken::new();
    tokio::spawn(rpf_process::cancel_on_signal(signalled.clone()));
    let drain = match &cli.command {
        Command::Serve { drain, .. } => *drain,
        Command::Stdio => Duration::ZERO,
    };
    let config = rpf_sidecar::config_from_env();
    // Stop `drain` after the signal (at once if no session serves);
    // meanwhile the readiness endpoint says "draining".
    let shutdown = CancellationToken::new();
    {
        let (signalled, shutdown) = (signalled.clone(), shutdown.clone());
        let readiness = config.readiness.clone();
        tokio::spawn(async move {
            signalled.cancelled().await;
            if !drain.is_zero() && readiness.is_ready() {
                info!("draining for {drain:?} before closing the sessions");
                tokio::time::sleep(drain).await;
            }
            shutdown.cancel();
        });
    }
    let metrics = Metrics::new(Side::Sidecar);
    if let Some(addr) = cli.metrics_addr {
        let render = {
            let m = metrics.clone();
            move || m.render()
        };
        let bound = rpf_process::spawn_metrics_endpoint(addr, render, shutdown.clone())
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        info!("metrics on http://{bound}/metrics");
    }
    match cli.command {
        Command::Serve {
            control_addr,
            ready_addr,
            drain: _,
        } => {
            if let Some(addr) = ready_addr {
                let readiness = config.readiness.clone();
                let check = move || match readiness.serving() {
                    _ if signalled.is_cancelled() => {
                        Err("not ready: shutting down, draining".to_owned())
                    }
                    0 => Err("not ready: no rpf session has its listeners bound here".to_owned()),
                    n => Ok(format!("ready: {n} rpf session(s) serving")),
                };
                let bound = rpf_process::spawn_ready_endpoint(addr, check, shutdown.clone())
                    .await
                    .with_context(|| format!("cannot serve the readiness endpoint on {addr}"))?;
                info!("readiness on http://{bound}{}", rpf_process::READY_PATH);
            }
            let listener = tokio::net::TcpListener::bind(control_addr)
                .await
                .with_context(|| format!("cannot bind the control port {control_addr} (set the pod annotation rpf.dev/control-port to another port)"))?;
            info!(
                "rpf-sidecar {} listening on {control_addr}",
                rpf_proto::SOFTWARE_VERSION
            );
            rpf_sidecar::serve(listener, config, metrics, shutdown).await;
            Ok(())
        }
        Command::Stdio => {
            let end = rpf_sidecar::stdio(config, metrics, shutdown).await?;
            info!("session ended: {}", rpf_sidecar::describe_end(&end));
            Ok(())
        }
    }
}
