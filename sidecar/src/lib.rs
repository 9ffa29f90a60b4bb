//! # rpf-sidecar
//!
//! The in-pod half of rpf. It runs in the pod's own network namespace, so
//! the ports it binds are the pod's `localhost` ports: no `setns`, no
//! privileges. Two ways in:
//! - [`serve`]: a control port on 127.0.0.1 that the CLI reaches through
//!   the API server's port-forward; every connection is one session, and
//!   sessions (two developers, say) each own their listeners.
//! - [`stdio`]: one session over stdin/stdout, for the exec transport and
//!   for `rpf attach --via COMMAND`.

use std::io;
use std::os::fd::AsFd;

use rpf_proto::env;
use rpf_proto::message::PodRef;
use rpf_tunnel::error::SessionError;
use rpf_tunnel::http2::Keepalive;
use rpf_tunnel::metrics::Metrics;
use rpf_tunnel::sidecar_side::{
    run_resumable_session, run_session, SessionEnd, Sessions, SidecarConfig,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The sidecar's identity, from the downward API and the kernel.
pub fn config_from_env() -> SidecarConfig {
    let var = |k| std::env::var(k).ok().filter(|v: &String| !v.is_empty());
    let pod = match (var(env::POD_NAMESPACE), var(env::POD_NAME)) {
        (Some(namespace), Some(name)) => Some(PodRef { namespace, name }),
        _ => None,
    };
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty());
    SidecarConfig {
        pod,
        hostname,
        keepalive: Keepalive::default(),
        readiness: Default::default(),
    }
}

/// Accepts CLI channels on `listener` until `shutdown` fires; each one runs
/// a session of its own, or resumes one whose channel was lost (this
/// process outlives its channels, so it can keep a session for the grace
/// period the CLI asked for).
pub async fn serve(
    listener: TcpListener,
    config: SidecarConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let sessions = Sessions::default();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = rpf_process::accept(&listener, "the control port") => accepted,
        };
        let _ = tcp.set_nodelay(true);
        let (config, metrics, shutdown) = (config.clone(), metrics.clone(), shutdown.clone());
        let sessions = sessions.clone();
        tokio::spawn(async move {
            info!("channel from {peer} opened");
            match run_resumable_session(tcp, &config, &metrics, shutdown, &sessions).await {
                Ok(end @ SessionEnd::Detached { .. }) => {
                    info!("channel from {peer} lost: {}", describe_end(&end))
                }
                Ok(end) => info!("session from {peer} ended: {}", describe_end(&end)),
                Err(e) => warn!(
                    "session from {peer} ended: {}",
                    rpf_process::error_chain(&e)
                ),
            }
        });
    }
}

/// Runs one session over this process's stdin and stdout. The session ends
/// with the channel, grace period or not: so does this process.
pub async fn stdio(
    config: SidecarConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<SessionEnd, SessionError> {
    let io = tokio::io::join(
        stdin().map_err(SessionError::lost)?,
        stdout().map_err(SessionError::lost)?,
    );
    run_session(io, &config, &metrics, shutdown).await
}

/// Words a clean session end for the log.
pub fn describe_end(end: &SessionEnd) -> String {
    match end {
        SessionEnd::Goodbye(reason) => format!("the CLI said goodbye ({reason})"),
        SessionEnd::Shutdown => "the sidecar is shutting down".into(),
        SessionEnd::Detached { cause, grace } => format!(
            "{}; keeping its listeners for {}s for the CLI to resume",
            rpf_process::error_chain(cause),
            grace.as_secs_f64()
        ),
    }
}

/// Stdin as an async reader. A pipe (the usual case: exec, `--via`) is
/// driven by the event loop directly; anything else falls back to tokio's
/// thread-backed stdin.
fn stdin() -> io::Result<Box<dyn AsyncRead + Send + Unpin>> {
    let fd = io::stdin().as_fd().try_clone_to_owned()?;
    rpf_tunnel::net::grow_pipe(&fd);
    Ok(match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(pipe) => Box::new(pipe),
        Err(_) => Box::new(tokio::io::stdin()),
    })
}

/// Stdout as an async writer; see [`stdin`].
fn stdout() -> io::Result<Box<dyn AsyncWrite + Send + Unpin>> {
    let fd = io::stdout().as_fd().try_clone_to_owned()?;
    rpf_tunnel::net::grow_pipe(&fd);
    Ok(match tokio::net::unix::pipe::Sender::from_owned_fd(fd) {
        Ok(pipe) => Box::new(pipe),
        Err(_) => Box::new(tokio::io::stdout()),
    })
}
