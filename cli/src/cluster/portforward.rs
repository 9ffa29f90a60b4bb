//! The default transport: an API server port-forward (WebSocket,
//! `v4.channel.k8s.io`) to the sidecar's control port on the pod's
//! loopback. Needs nothing but `pods/portforward`.
//!
//! The kubelet reports a failed dial ("connection refused" when nothing
//! listens on the control port) on the port's error channel and then closes
//! the data stream; [`PortStream`] turns that into the read error the
//! session sees, so the user reads the kubelet's words instead of an
//! unexplained end of stream.
//!
//! [`open`] speaks the port-forward WebSocket protocol itself, sending up
//! to 64 KiB per message; kube's `Portforwarder` ([`open_kube`]) sends 4 KiB
//! messages and measured at a third of the throughput on the same cluster
//! (numbers in docs/cluster.md).

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
    /// At end of stream, how long we still wait for the error message
    /// (kube may deliver it just after the data stream closes).
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The far side's error, once received.
    failed: Option<String>,
    what: String,
}

/// How long the end of a port-forward stream waits for its error message.
const ERROR_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl PortStream {
    /// Wraps a stream and the future of its error message.
    fn new(inner: DuplexStream, error: Option<ErrorFuture>, what: String) -> Self {
        Self {
            inner,
            error,
            grace: None,
            failed: None,
            what,
        }
    }

    /// The error the API server or kubelet reported, if it has by now.
    /// The error is kept once received: a failed write and the read after
    /// it both report it.
    fn reported_error(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        if let Some(future) = self.error.as_mut() {
            if let Poll::Ready(message) = future.as_mut().poll(cx) {
                self.error = None;
                self.failed = message.map(|m| format!("{}: {}", self.what, m.trim()));
            }
        }
        self.failed
            .as_ref()
            .map(|m| io::Error::new(io::ErrorKind::ConnectionAborted, m.clone()))
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
                if let Some(e) = self.reported_error(cx) {
                    return Poll::Ready(Err(e));
                }
                if self.error.is_none() {
                    return Poll::Ready(Ok(()));
                }
                // The message may still be on its way: wait a little.
                let grace = self
                    .grace
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(ERROR_GRACE)));
                match grace.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.error = None;
                        Poll::Ready(Ok(()))
                    }
                    Poll::Pending => Poll::Pending,
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

/// Opens a port-forward to `port` of pod `name` with kube's own
/// `Portforwarder`. Kept for comparison (see docs/cluster.md): it sends at
/// most 4 KiB per WebSocket message and measured 3x slower than [`open`].
pub async fn open_kube(
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

/// Largest WebSocket message [`open`] sends (kube's own Portforwarder
/// sends at most 4 KiB per message, which capped throughput at a third).
pub const RAW_MESSAGE: usize = 64 << 10;

/// Bytes buffered between the caller and the raw port-forward task.
const RAW_PIPE: usize = 1 << 20;

/// Stops the port-forward task when the channel is dropped.
pub struct RawForwarderGuard(tokio::task::JoinHandle<()>);

impl Drop for RawForwarderGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens a port-forward to `port` of pod `name` speaking the port-forward
/// WebSocket protocol directly: data on channel 0, errors on channel 1,
/// each starting with a 2-byte little-endian port number; one message per
/// read of up to [`RAW_MESSAGE`] bytes.
pub async fn open(
    client: &kube::Client,
    pods: &Api<Pod>,
    name: &str,
    port: u16,
) -> Result<(PortStream, RawForwarderGuard), kube::Error> {
    use futures::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;

    let request = kube::core::Request::new(pods.resource_url())
        .portforward(name, &[port])
        .map_err(kube::Error::BuildRequest)?;
    let ws = client.connect(request).await?.into_stream();
    let (ours, theirs) = tokio::io::duplex(RAW_PIPE);
    let (error_tx, error_rx) = tokio::sync::oneshot::channel::<String>();
    let task = tokio::spawn(async move {
        let (mut sink, mut stream) = ws.split();
        let (mut from_caller, mut to_caller) = tokio::io::split(theirs);
        let upstream = async {
            let mut buf = vec![0u8; RAW_MESSAGE + 1];
            loop {
                let n = match from_caller.read(&mut buf[1..]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf[0] = 0;
                let message = Message::binary(buf[..=n].to_vec());
                if sink.send(message).await.is_err() {
                    return;
                }
            }
            let _ = sink.send(Message::Close(None)).await;
        };
        let downstream = async {
            let mut seen_port = [false, false];
            let mut error_text = Vec::new();
            while let Some(Ok(message)) = stream.next().await {
                let data = match message {
                    Message::Binary(data) => data,
                    Message::Close(_) => break,
                    _ => continue,
                };
                let Some((&channel, payload)) = data.split_first() else {
                    continue;
                };
                let channel = usize::from(channel);
                if channel > 1 {
                    continue;
                }
                if !seen_port[channel] {
                    // The first message on each channel only names the port.
                    seen_port[channel] = true;
                    continue;
                }
                if channel == 0 {
                    if to_caller.write_all(payload).await.is_err() {
                        break;
                    }
                } else {
                    error_text.extend_from_slice(payload);
                }
            }
            if !error_text.is_empty() {
                let _ = error_tx.send(String::from_utf8_lossy(&error_text).into_owned());
            }
            let _ = to_caller.shutdown().await;
        };
        // The pod side ending (or failing) ends the channel; the caller
        // closing its side only closes the upstream direction.
        tokio::pin!(downstream);
        tokio::select! {
            _ = &mut downstream => {}
            _ = upstream => downstream.await,
        }
    });
    let error = Box::pin(async move { error_rx.await.ok() }) as ErrorFuture;
    let what = format!("port-forward to port {port} of pod {name}");
    Ok((
        PortStream::new(ours, Some(error), what),
        RawForwarderGuard(task),
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
    async fn waits_briefly_for_an_error_that_comes_after_the_end() {
        let (ours, theirs) = tokio::io::duplex(64);
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        let error: ErrorFuture = Box::pin(async move { rx.await.ok() });
        let mut stream = PortStream::new(ours, Some(error), "pf".into());
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
        let error: ErrorFuture = Box::pin(std::future::pending());
        let mut stream = PortStream::new(ours, Some(error), "pf".into());
        drop(theirs);
        let started = std::time::Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        assert!(started.elapsed() >= ERROR_GRACE && started.elapsed() < ERROR_GRACE * 3);
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
