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

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::api::{AttachParams, AttachedProcess};
use kube::Api;
use tokio::io::{AsyncRead, AsyncWrite, Join, ReadBuf, ReadHalf, SimplexStream, WriteHalf};

/// Bytes kube may buffer in each direction of an exec stream.
pub const EXEC_BUFFER: usize = 4 << 20;

type StatusFuture = Pin<Box<dyn Future<Output = Option<Status>> + Send>>;

/// stdout and stdin of the remote command as one stream.
pub struct ExecStream {
    inner: Join<ReadHalf<SimplexStream>, WriteHalf<SimplexStream>>,
    status: Option<StatusFuture>,
    /// The command's failure, once reported.
    failed: Option<String>,
    what: String,
}

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

impl ExecStream {
    /// The failure is kept once received: a failed write and the read
    /// after it both report it.
    fn reported_error(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if let Some(future) = self.status.as_mut() {
            if let Poll::Ready(status) = future.as_mut().poll(cx) {
                self.status = None;
                self.failed = status
                    .as_ref()
                    .and_then(status_failure)
                    .map(|m| format!("{}: {m}", self.what));
            }
        }
        self.failed
            .as_ref()
            .map(|m| io::Error::new(io::ErrorKind::ConnectionAborted, m.clone()))
    }
}

impl AsyncRead for ExecStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                match self.reported_error(cx) {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Ready(Ok(())),
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for ExecStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(self.reported_error(cx).unwrap_or(e))),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
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
    let status = process.take_status().map(|f| Box::pin(f) as StatusFuture);
    let what = format!(
        "exec of {:?} in container {container} of pod {name}",
        command.join(" ")
    );
    Ok((
        ExecStream {
            inner: tokio::io::join(stdout, stdin),
            status,
            failed: None,
            what,
        },
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
