//! The default transport: an API server port-forward (WebSocket,
//! `v4.channel.k8s.io`) to the sidecar's control port on the pod's
//! loopback. Needs nothing but `pods/portforward`.
//!
//! The kubelet reports a failed dial ("connection refused" when nothing
//! listens on the control port) on the port's error channel and then closes
//! the data stream; [`PortStream`] turns that into the read error the
//! session sees.
//!
//! [`open`] speaks the port-forward WebSocket protocol itself, sending up
//! to 64 KiB per message; kube's `Portforwarder` sends 4 KiB messages and
//! measured at a third of the throughput on the same cluster (numbers in
//! docs/cluster.md; the comparison is a live test).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::io::DuplexStream;

use super::stream::{FailureFuture, ReportingStream};

/// The byte stream of one forwarded port, with the port's error channel.
pub type PortStream = ReportingStream<DuplexStream>;

/// How long the end of a port-forward stream waits for its error message.
pub const ERROR_GRACE: Duration = Duration::from_secs(1);

/// Most bytes of the error channel kept (the kubelet's text is one line).
const MAX_ERROR_TEXT: usize = 4 << 10;

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
                    let room = MAX_ERROR_TEXT.saturating_sub(error_text.len());
                    error_text.extend_from_slice(&payload[..payload.len().min(room)]);
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
    let error = Box::pin(async move { error_rx.await.ok() }) as FailureFuture;
    let what = format!("port-forward to port {port} of pod {name}");
    Ok((
        PortStream::new(ours, Some(error), ERROR_GRACE, what),
        RawForwarderGuard(task),
    ))
}
