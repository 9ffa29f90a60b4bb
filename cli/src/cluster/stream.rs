//! One stream type for both transports: the pod's bytes, plus the words
//! the API server or kubelet sends on a side channel when the far end
//! fails (the port-forward's error channel, the exec's Status). At the end
//! of the stream (or on a failed write) those words become the I/O error
//! the session sees, so the user reads the kubelet's "connection refused"
//! or the exit code of the command instead of an unexplained end of
//! stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The far side's failure, in words (`None`: it ended without one).
pub type FailureFuture = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// Keeps a transport's connection task running; stops it when dropped
/// (the channel's guard).
pub struct TaskGuard(pub tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A transport's byte stream with its failure report.
pub struct ReportingStream<S> {
    inner: S,
    failure: Option<FailureFuture>,
    /// At end of stream, how long we still wait for the failure report
    /// (kube may deliver a port-forward error just after the data stream
    /// closes); zero: do not wait.
    wait_at_end: Duration,
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The far side's failure, once received.
    failed: Option<String>,
    /// What this stream is, for the error (`port-forward to port 4499 of pod web`).
    what: String,
}

impl<S> ReportingStream<S> {
    /// Wraps `inner` and the future of its failure report.
    pub fn new(
        inner: S,
        failure: Option<FailureFuture>,
        wait_at_end: Duration,
        what: String,
    ) -> Self {
        Self {
            inner,
            failure,
            wait_at_end,
            waiting: None,
            failed: None,
            what,
        }
    }

    /// The failure reported by now, if any. Kept once received: a failed
    /// write and the read after it both report it.
    fn reported_error(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if let Some(future) = self.failure.as_mut() {
            if let Poll::Ready(message) = future.as_mut().poll(cx) {
                self.failure = None;
                self.failed = message.map(|m| format!("{}: {}", self.what, m.trim()));
            }
        }
        self.failed
            .as_ref()
            .map(|m| io::Error::new(io::ErrorKind::ConnectionAborted, m.clone()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReportingStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                // End of stream: say why, when the far side told us.
                if let Some(e) = self.reported_error(cx) {
                    return Poll::Ready(Err(e));
                }
                if self.failure.is_none() || self.wait_at_end.is_zero() {
                    return Poll::Ready(Ok(()));
                }
                // The report may still be on its way: wait a little.
                let wait = self.wait_at_end;
                let waiting = self
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                match waiting.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.failure = None;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReportingStream<S> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const GRACE: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn reports_the_error_channel_at_end_of_stream() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let error: FailureFuture = Box::pin(async move { rx.await.ok() });
        let mut stream = ReportingStream::new(
            ours,
            Some(error),
            GRACE,
            "port-forward to port 4499 of pod p".into(),
        );
        theirs.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 2);
        tx.send("error forwarding port 4499 to pod p: connect: connection refused\n".into())
            .unwrap();
        drop(theirs);
        let err = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "port-forward to port 4499 of pod p: error forwarding port 4499 to pod p: connect: connection refused"
        );
    }

    #[tokio::test]
    async fn waits_briefly_for_an_error_that_comes_after_the_end() {
        let (ours, theirs) = tokio::io::duplex(64);
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let error: FailureFuture = Box::pin(async move { rx.await.ok() });
        let mut stream = ReportingStream::new(ours, Some(error), GRACE, "pf".into());
        drop(theirs);
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            tx.send("late".into()).unwrap();
        });
        let mut buf = [0u8; 8];
        assert_eq!(
            stream.read(&mut buf).await.unwrap_err().to_string(),
            "pf: late"
        );
    }

    #[tokio::test]
    async fn an_error_that_never_comes_delays_the_end_by_the_grace_only() {
        let (ours, theirs) = tokio::io::duplex(64);
        let error: FailureFuture = Box::pin(std::future::pending());
        let mut stream = ReportingStream::new(ours, Some(error), GRACE, "pf".into());
        drop(theirs);
        let started = std::time::Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        assert!(started.elapsed() >= GRACE && started.elapsed() < GRACE * 3);
    }

    #[tokio::test]
    async fn without_a_wait_the_end_is_reported_at_once() {
        let (ours, theirs) = tokio::io::duplex(64);
        let error: FailureFuture = Box::pin(std::future::pending());
        let mut stream = ReportingStream::new(ours, Some(error), Duration::ZERO, "exec".into());
        drop(theirs);
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf));
        assert_eq!(read.await.expect("no wait").unwrap(), 0);
    }

    #[tokio::test]
    async fn clean_end_of_stream_stays_clean() {
        let (ours, theirs) = tokio::io::duplex(64);
        let error: FailureFuture = Box::pin(async { None });
        let mut stream = ReportingStream::new(ours, Some(error), GRACE, "x".into());
        drop(theirs);
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    }
}
