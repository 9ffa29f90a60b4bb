//! The default transport: an API server port-forward (WebSocket,
//! `v4.channel.k8s.io`) to the sidecar's control port on the pod's
//! loopback. Needs nothing but `pods/portforward`.
//!
//! The kubelet reports a failed dial ("connection refused" when nothing
//! listens on the control port) on the port's error channel and then closes
//! the data stream; [`PortStream`] turns that into the read error the
//! session sees, so the user reads the kubelet's words instead of an
//! unexplained end of stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Portforwarder;
use kube::Api;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

type ErrorFuture = Pin<Box<dyn Future<Output = Option<String>> + Send>>;

/// The byte stream of one forwarded port, with the port's error channel.
pub struct PortStream {
    inner: DuplexStream,
    error: Option<ErrorFuture>,
    what: String,
}

impl PortStream {
    /// Wraps a stream and the future of its error message.
    fn new(inner: DuplexStream, error: Option<ErrorFuture>, what: String) -> Self {
        Self { inner, error, what }
    }

    /// The error the API server or kubelet reported, if it has by now.
    fn reported_error(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        let future = self.error.as_mut()?;
        match future.as_mut().poll(cx) {
            Poll::Ready(message) => {
                self.error = None;
                message.map(|m| {
                    io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("{}: {}", self.what, m.trim()),
                    )
                })
            }
            Poll::Pending => None,
        }
    }
}

impl AsyncRead for PortStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                // End of stream: say why, when the far side told us.
                match self.reported_error(cx) {
                    Some(e) => Poll::Ready(Err(e)),
                    None => Poll::Ready(Ok(())),
                }
            }
            other => other,
        }
    }
}

impl AsyncWrite for PortStream {
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

/// Keeps the port-forward's WebSocket task alive, and stops it when the
/// channel is dropped.
pub struct ForwarderGuard(Portforwarder);

impl Drop for ForwarderGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens a port-forward to `port` of pod `name`.
pub async fn open(
    pods: &Api<Pod>,
    name: &str,
    port: u16,
) -> Result<(PortStream, ForwarderGuard), kube::Error> {
    let mut forwarder = pods.portforward(name, &[port]).await?;
    let stream = forwarder.take_stream(port).expect("the port we asked for");
    let error = forwarder
        .take_error(port)
        .map(|f| Box::pin(f) as ErrorFuture);
    let what = format!("port-forward to port {port} of pod {name}");
    Ok((
        PortStream::new(stream, error, what),
        ForwarderGuard(forwarder),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reports_the_error_channel_at_end_of_stream() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let error: ErrorFuture = Box::pin(async move { rx.await.ok() });
        let mut stream = PortStream::new(
            ours,
            Some(error),
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
    async fn clean_end_of_stream_stays_clean() {
        let (ours, theirs) = tokio::io::duplex(64);
        let error: ErrorFuture = Box::pin(async { None });
        let mut stream = PortStream::new(ours, Some(error), "x".into());
        drop(theirs);
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    }
}
