//! The end-to-end probe: the whole path `rpf attach` uses, proven with
//! bytes. A short session asks the sidecar to bind an ephemeral port
//! (REMOTE port 0) on the pod's 127.0.0.1 and forward it to an echo server
//! on this machine; the probe then connects to that pod port through a
//! second API server port-forward, standing in for a process in the pod,
//! and checks that the bytes it sends come back unchanged. The session
//! then says goodbye, which closes the listener in the pod.
//!
//! Why a port-forward plays the pod's process: the sidecar image has no
//! shell or client to exec, and the app container may have neither; a
//! port-forward reaches the pod's loopback like a local process does, and
//! the doctor may use it whenever `rpf attach` can (see docs/doctor.md).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use rpf_proto::message::{BindAddr, ListenerSpec, Protocol};
use rpf_proto::Side;
use rpf_tunnel::cli_side::{handshake, CliConfig, Forward};
use rpf_tunnel::metrics::Metrics;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::names::PROBE;
use super::report::Check;
use super::Cluster;
use crate::channel::Channel;
use crate::cluster::error::api_message;
use crate::cluster::target::Target;
use crate::cluster::{portforward, ClusterSource, Transport};

/// Bytes sent through the path: a few round trips' worth, fast to move.
const PROBE_BYTES: usize = 32 << 10;

/// The longest the probe may take, everything included.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// `probe`: bind, loop bytes, clean up.
pub async fn probe(cluster: &Cluster, pod: &Pod, transport: Transport) -> Check {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let started = Instant::now();
    match tokio::time::timeout(PROBE_TIMEOUT, run(cluster, name, transport)).await {
        Err(_) => Check::fail(
            PROBE,
            format!(
                "no result within {} s (the session and port-forward were dropped)",
                PROBE_TIMEOUT.as_secs()
            ),
            "run it again with -v to see where it stops",
        ),
        Ok(Err(why)) => Check::fail(
            PROBE,
            why,
            format!(
                "kubectl -n {} logs {name} -c rpf-sidecar",
                cluster.namespace
            ),
        ),
        Ok(Ok((bound, looped))) => Check::pass(
            PROBE,
            format!(
                "bound {bound} in pod {}/{name}, {PROBE_BYTES} bytes went from it to this machine and back unchanged in {} ms ({} ms in all), then the listener was closed",
                cluster.namespace,
                looped.as_millis(),
                started.elapsed().as_millis()
            ),
        ),
    }
}

/// Echoes every connection on `listener` back to itself.
async fn echo(listener: TcpListener) {
    while let Ok((mut tcp, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (mut from, mut to) = tcp.split();
            let _ = tokio::io::copy(&mut from, &mut to).await;
        });
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The probe proper: where it bound and how long the bytes took.
async fn run(
    cluster: &Cluster,
    pod: &str,
    transport: Transport,
) -> Result<(SocketAddr, Duration), String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| format!("cannot listen on this machine for the echo: {e}"))?;
    let echo_port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let _echo = AbortOnDrop(tokio::spawn(echo(listener)));
    let forward = Forward {
        listener: ListenerSpec {
            id: 1,
            port: 0,
            addrs: vec![BindAddr {
                ip: Ipv4Addr::LOCALHOST.into(),
                required: true,
            }],
            max_connections: 1,
            allow: Vec::new(),
            protocol: Protocol::Tcp,
            idle_timeout_ms: 0,
        },
        local_host: Ipv4Addr::LOCALHOST.to_string(),
        local_port: echo_port,
    };
    // No grace: the listener goes with the session, even if we vanish.
    let config = CliConfig::new(vec![forward]);
    let mut source = ClusterSource::with_client(
        cluster.client.clone(),
        &cluster.namespace,
        Target::pod(pod),
        transport,
    );
    let Channel { io, guard, .. } = source
        .open()
        .await
        .map_err(|e| format!("cannot open the channel: {e}"))?;
    let metrics = Metrics::new(Side::Cli);
    let session = handshake(io, &config, &metrics)
        .await
        .map_err(|e| format!("handshake: {e}"))?
        .bind()
        .await
        .map_err(|e| format!("the sidecar could not bind an ephemeral port: {e}"))?;
    let bound = session
        .bound
        .first()
        .and_then(|b| b.addrs.first())
        .copied()
        .ok_or("the sidecar reported no bound address")?;
    tracing::debug!(%bound, "probe listener bound");
    let stop = CancellationToken::new();
    let serving = tokio::spawn(session.serve(stop.clone()));
    let looped = loop_bytes(cluster, pod, bound.port()).await;
    stop.cancel();
    let goodbye = serving.await;
    drop(guard);
    let looped = looped?;
    match goodbye {
        Ok(Ok(())) => Ok((bound, looped)),
        Ok(Err(e)) => Err(format!(
            "the bytes came back, but the session ended badly: {e}"
        )),
        Err(e) => Err(format!("the session task failed: {e}")),
    }
}

/// Bytes nobody could have sent before: a pattern seeded by the clock.
fn payload(len: usize) -> Vec<u8> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            // xorshift64: cheap, and no byte pattern repeats soon.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Connects to `port` in the pod through a port-forward, sends the
/// payload and reads it back; how long that took.
async fn loop_bytes(cluster: &Cluster, pod: &str, port: u16) -> Result<Duration, String> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &cluster.namespace);
    let started = Instant::now();
    let (stream, _forwarder) = portforward::open(&cluster.client, &pods, pod, port)
        .await
        .map_err(|e| {
            format!(
                "cannot port-forward to the bound port {port}: {}",
                api_message(&e)
            )
        })?;
    let sent = payload(PROBE_BYTES);
    let (mut from_pod, mut to_pod) = tokio::io::split(stream);
    let write = async {
        to_pod.write_all(&sent).await?;
        to_pod.flush().await
    };
    let read = async {
        let mut back = vec![0u8; sent.len()];
        from_pod.read_exact(&mut back).await.map(|_| back)
    };
    let (_, back) = tokio::try_join!(write, read).map_err(|e| {
        format!("connected to port {port} in the pod, but the bytes did not come back: {e}")
    })?;
    if back != sent {
        let at = back
            .iter()
            .zip(&sent)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(format!(
            "the bytes came back altered (first difference at byte {at} of {PROBE_BYTES})"
        ));
    }
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_differ_from_run_to_run() {
        let a = payload(4096);
        std::thread::sleep(Duration::from_millis(2));
        let b = payload(4096);
        assert_eq!(a.len(), 4096);
        assert_ne!(a, b);
        // Not a short repeating pattern either.
        assert_ne!(a[..2048], a[2048..]);
    }

    #[tokio::test]
    async fn the_echo_server_returns_what_it_gets() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _echo = AbortOnDrop(tokio::spawn(echo(listener)));
        let mut tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        let sent = payload(PROBE_BYTES);
        let (mut r, mut w) = tcp.split();
        let mut back = vec![0u8; sent.len()];
        let (written, read) = tokio::join!(w.write_all(&sent), r.read_exact(&mut back));
        written.unwrap();
        read.unwrap();
        assert_eq!(back, sent);
    }
}
