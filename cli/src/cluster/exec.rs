//! The exec transport: `/rpf-sidecar stdio` run through the API server in
//! the `rpf-sidecar` container, its stdin and stdout joined into one
//! stream. For clusters where port-forward is disabled or the control port
//! cannot be bound; needs `pods/exec`.
//!
//! Like port-forward, exec speaks SPDY/3.1 as kubectl does ([`open_spdy`]:
//! error, stdin and stdout streams, `v4.channel.k8s.io`), and falls back to
//! kube's WebSocket `AttachedProcess` ([`open_websocket`]) when SPDY fails
//! (see [`Fallback`]). kube buffers at most 1 KiB per direction by default,
//! which throttles a tunnel to a trickle; we raise both buffers. stderr is
//! off so that the sidecar's logs cannot block the stream, and a tty would
//! mangle bytes. When the command fails (binary missing, non-zero exit),
//! the API server sends a Status on the error stream: [`ExecStream`]
//! reports it as the read error at end of stream.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{AttachParams, AttachedProcess};
use kube::Api;
use tokio::io::{Join, ReadHalf, SimplexStream, WriteHalf};

use super::spdy::{self, Fallback};
use super::stream::{FailureFuture, ReportingStream, TaskGuard};
use crate::channel::Duplex;

/// Bytes kube may buffer in each direction of an exec stream.
pub const EXEC_BUFFER: usize = 4 << 20;

/// How long the end of an exec's stdout over SPDY waits for its Status
/// (sent on its own stream, it may come just after stdout's end).
const STATUS_GRACE: Duration = Duration::from_secs(1);

/// stdout and stdin of the remote command as one stream (kube's exec).
pub type ExecStream = ReportingStream<Join<ReadHalf<SimplexStream>, WriteHalf<SimplexStream>>>;

/// What keeps an exec running (dropping it ends the exec).
pub type ExecGuard = Box<dyn Send>;

/// The words of a failure Status, or `None` for success.
pub fn status_failure(status: &Status) -> Option<String> {
    if status.status.as_deref() == Some("Success") {
        return None;
    }
    let mut text = status.message.clone().unwrap_or_default();
    if text.is_empty() {
        text = status
            .reason
            .clone()
            .unwrap_or_else(|| "the command failed".to_owned());
    }
    let exit_code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|c| c.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message.clone());
    if let Some(code) = exit_code {
        if !text.contains(&code) {
            text.push_str(&format!(" (exit code {code})"));
        }
    }
    Some(text)
}

fn params(container: &str) -> AttachParams {
    AttachParams {
        container: Some(container.to_owned()),
        stdin: true,
        stdout: true,
        stderr: false,
        tty: false,
        max_stdin_buf_size: Some(EXEC_BUFFER),
        max_stdout_buf_size: Some(EXEC_BUFFER),
        ..AttachParams::default()
    }
}

fn describe(name: &str, container: &str, command: &[&str]) -> String {
    format!(
        "exec of {:?} in container {container} of pod {name}",
        command.join(" ")
    )
}

/// Runs `command` in `container` of pod `name` and returns its stdin and
/// stdout as one stream, plus what keeps the exec running: SPDY, or
/// WebSocket when SPDY fails.
pub async fn open(
    client: &kube::Client,
    pods: &Api<Pod>,
    name: &str,
    container: &str,
    command: &[&str],
    fallback: &Fallback,
) -> Result<(Box<dyn Duplex>, ExecGuard), kube::Error> {
    fallback
        .run(
            || async {
                let (io, guard) = open_spdy(client, pods, name, container, command).await?;
                Ok((
                    Box::new(io) as Box<dyn Duplex>,
                    Box::new(guard) as ExecGuard,
                ))
            },
            || async {
                let (io, process) = open_websocket(pods, name, container, command).await?;
                Ok((
                    Box::new(io) as Box<dyn Duplex>,
                    Box::new(process) as ExecGuard,
                ))
            },
        )
        .await
}

/// The exec over SPDY/3.1, as kubectl runs it: error, stdin and stdout
/// streams; the error stream carries the command's Status as JSON.
pub async fn open_spdy(
    client: &kube::Client,
    pods: &Api<Pod>,
    name: &str,
    container: &str,
    command: &[&str],
) -> Result<(ReportingStream<tokio::io::DuplexStream>, TaskGuard), kube::Error> {
    let request = kube::core::Request::new(pods.resource_url())
        .exec(name, command.iter().copied(), &params(container))
        .map_err(kube::Error::BuildRequest)?;
    let path = request.uri().to_string();
    let plan = spdy::Plan {
        streams: &[
            &[("streamType", "error")],
            &[("streamType", "stdin")],
            &[("streamType", "stdout")],
        ],
        write_to: 1,
        read_from: 2,
        error: 0,
    };
    let session = spdy::open(client, &path, "v4.channel.k8s.io", plan).await?;
    let error_rx = session.error;
    let failure = Box::pin(async move {
        let text = error_rx.await.ok()?;
        match serde_json::from_str::<Status>(&text) {
            Ok(status) => status_failure(&status),
            Err(_) => Some(text),
        }
    }) as FailureFuture;
    Ok((
        ReportingStream::new(
            session.io,
            Some(failure),
            STATUS_GRACE,
            describe(name, container, command),
        ),
        session.guard,
    ))
}

/// The exec over WebSocket, through kube's `AttachedProcess` (the process
/// handle is the guard).
pub async fn open_websocket(
    pods: &Api<Pod>,
    name: &str,
    container: &str,
    command: &[&str],
) -> Result<(ExecStream, AttachedProcess), kube::Error> {
    let mut process = pods
        .exec(name, command.iter().copied(), &params(container))
        .await?;
    let stdout = process.stdout().expect("stdout requested");
    let stdin = process.stdin().expect("stdin requested");
    let failure = process.take_status().map(|status| {
        Box::pin(async move { status.await.as_ref().and_then(status_failure) }) as FailureFuture
    });
    Ok((
        ExecStream::new(
            tokio::io::join(stdout, stdin),
            failure,
            Duration::ZERO,
            describe(name, container, command),
        ),
        process,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{StatusCause, StatusDetails};

    #[test]
    fn failure_status_words() {
        let ok = Status {
            status: Some("Success".into()),
            ..Default::default()
        };
        assert_eq!(status_failure(&ok), None);
        let failed = Status {
            status: Some("Failure".into()),
            message: Some("command terminated with non-zero exit code: error executing command [/rpf-sidecar stdio], exit code 127".into()),
            reason: Some("NonZeroExitCode".into()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("127".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            status_failure(&failed).unwrap(),
            "command terminated with non-zero exit code: error executing command [/rpf-sidecar stdio], exit code 127"
        );
        let bare = Status {
            status: Some("Failure".into()),
            reason: Some("InternalError".into()),
            ..Default::default()
        };
        assert_eq!(status_failure(&bare).unwrap(), "InternalError");
    }
}
