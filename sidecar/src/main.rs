//! `rpf-sidecar`: parses arguments and runs the sidecar library.

use std::net::SocketAddr;
use std::process::ExitCode;

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
    let shutdown = CancellationToken::new();
    tokio::spawn(rpf_process::cancel_on_signal(shutdown.clone()));
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
    let config = rpf_sidecar::config_from_env();
    match cli.command {
        Command::Serve { control_addr } => {
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
