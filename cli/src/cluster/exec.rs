//! The exec transport: `/rpf-sidecar stdio` run through the API server in
//! the `rpf-sidecar` container, its stdin and stdout joined into one
//! stream. For clusters where port-forward is disabled or the control port
//! cannot be bound; needs `pods/exec`.
//!
//! kube buffers at most 1 KiB per direction by default, which throttles a
//! tunnel to a trickle; we raise both buffers. stderr is off so that the
//! sidecar's logs cannot block the stream, and a tty would mangle bytes.
//! When the command fails (binary missing, non-zero exit), the API server
//! sends a Status on the error channel: [`ExecStream`] reports it as the
//! read error at end of stream.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{AttachParams, AttachedProcess};
use kube::Api;
use tokio::io::{Join, ReadHalf, SimplexStream, WriteHalf};

use super::stream::{FailureFuture, ReportingStream};

/// Bytes kube may buffer in each direction of an exec stream.
pub const EXEC_BUFFER: usize = 4 << 20;

/// stdout and stdin of the remote command as one stream.
pub type ExecStream = ReportingStream<Join<ReadHalf<SimplexStream>, WriteHalf<SimplexStream>>>;

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

/// Runs `command` in `container` of pod `name` and returns its stdin and
/// stdout as one stream, plus the process handle (dropping it ends the exec).
pub async fn open(
    pods: &Api<Pod>,
    name: &str,
    container: &str,
    command: &[&str],
) -> Result<(ExecStream, AttachedProcess), kube::Error> {
    let params = AttachParams {
        container: Some(container.to_owned()),
        stdin: true,
        stdout: true,
        stderr: false,
        tty: false,
        max_stdin_buf_size: Some(EXEC_BUFFER),
        max_stdout_buf_size: Some(EXEC_BUFFER),
        ..AttachParams::default()
    };
    let mut process = pods.exec(name, command.iter().copied(), &params).await?;
    let stdout = process.stdout().expect("stdout requested");
    let stdin = process.stdin().expect("stdin requested");
    let failure = process.take_status().map(|status| {
        Box::pin(async move { status.await.as_ref().and_then(status_failure) }) as FailureFuture
    });
    let what = format!(
        "exec of {:?} in container {container} of pod {name}",
        command.join(" ")
    );
    Ok((
        ExecStream::new(
            tokio::io::join(stdout, stdin),
            failure,
            Duration::ZERO,
            what,
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
