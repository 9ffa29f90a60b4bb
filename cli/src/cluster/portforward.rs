//! The default transport: an API server port-forward to the sidecar's
//! control port on the pod's loopback. Needs nothing but `pods/portforward`.
//!
//! Two wire protocols reach the same kubelet code: SPDY/3.1 (what kubectl
//! speaks, [`open_spdy`]) and WebSocket `v4.channel.k8s.io`
//! ([`open_websocket`]). [`open`] tries SPDY first: the kubelet's streaming
//! server unmasks every WebSocket byte in a byte-at-a-time loop and grows a
//! buffer per message, so on the same cluster host → pod bytes through
//! WebSocket cost it about 2.8 times the CPU and came through at half of
//! kubectl's rate (numbers in docs/cluster.md). When the SPDY upgrade fails
//! for any reason but a refusal the WebSocket would get too (not found,
//! unauthorized), for instance a proxy in front of the API server that only
//! passes WebSocket upgrades, WebSocket is used, and kept for the rest of
//! the session ([`Fallback`]).
//!
//! The kubelet reports a failed dial ("connection refused" when nothing
//! listens on the control port) on the port's error stream and then closes
//! the data stream; [`PortStream`] turns that into the read error the
//! session sees.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::io::DuplexStream;

use super::spdy::{self, Fallback};
use super::stream::{FailureFuture, ReportingStream, TaskGuard};

/// The byte stream of one forwarded port, with the port's error channel.
pub type PortStream = ReportingStream<DuplexStream>;

/// How long the end of a port-forward stream waits for its error message.
pub const ERROR_GRACE: Duration = Duration::from_secs(1);

/// Most bytes of the error channel kept (the kubelet's text is one line).
const MAX_ERROR_TEXT: usize = 4 << 10;

/// Largest WebSocket message [`open_websocket`] sends (kube's own
/// Portforwarder sends at most 4 KiB per message, which capped throughput
/// at a third).
pub const RAW_MESSAGE: usize = 64 << 10;

/// Bytes buffered between the caller and the WebSocket task.
const RAW_PIPE: usize = 1 << 20;

/// Opens a port-forward to `port` of pod `name`: SPDY, or WebSocket when
/// SPDY fails (see the module documentation), for a one-off forward.
pub async fn open(
    client: &kube::Client,
    pods: &Api<Pod>,
    name: &str,
    port: u16,
) -> Result<(PortStream, TaskGuard), kube::Error> {
    open_with(client, pods, name, port, &Fallback::default()).await
}

/// As [`open`], with a fallback remembered across a source's channels.
pub async fn open_with(
    client: &kube::Client,
    pods: &Api<Pod>,
    name: &str,
    port: u16,
    fallback: &Fallback,
) -> Result<(PortStream, TaskGuard), kube::Error> {
    fallback
        .run(
            || open_spdy(client, pods, name, port),
            || open_websocket(client, pods, name, port),
        )
        .await
}

/// Opens a port-forward to `port` of pod `name` over SPDY/3.1 as kubectl
/// does: an error stream and a data stream, both naming the port; one DATA
/// frame per read of up to [`spdy::MAX_DATA_FRAME`] bytes.
pub async fn open_spdy(
    client: &kube::Client,
    pods: &Api<Pod>,
    name: &str,
    port: u16,
) -> Result<(PortStream, TaskGuard), kube::Error> {
    let path = format!("{}/{name}/portforward", pods.resource_url());
    let port_text = port.to_string();
    let error: &[(&str, &str)] = &[
        ("streamType", "error"),
        ("port", &port_text),
        ("requestID", "0"),
    ];
    let data: &[(&str, &str)] = &[
        ("streamType", "data"),
        ("port", &port_text),
        ("requestID", "0"),
    ];
    let plan = spdy::Plan {
        streams: &[error, data],
        write_to: 1,
        read_from: 1,
        error: 0,
    };
    let session = spdy::open(client, &path, "portforward.k8s.io", plan).await?;
    let error_rx = session.error;
    let error = Box::pin(async move { error_rx.await.ok() }) as FailureFuture;
    let what = format!("port-forward to port {port} of pod {name}");
    Ok((
        PortStream::new(session.io, Some(error), ERROR_GRACE, what),
        session.guard,
    ))
}

/// Opens a port-forward to `port` of pod `name` speaking the port-forward
/// WebSocket protocol (`v4.channel.k8s.io`) directly: data on channel 0, errors on channel 1,
/// each starting with a 2-byte little-endian port number; one message per
/// read of up to [`RAW_MESSAGE`] bytes.
pub async fn open_websocket(
    client: &kube::Client,
    pods: &Api<Pod>,
    name: &str,
    port: u16,
) -> Result<(PortStream, TaskGuard), kube::Error> {
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
        TaskGuard(task),
    ))
}
