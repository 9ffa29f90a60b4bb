//! The transports against a real cluster, without the tunnel: a pod whose
//! `rpf-sidecar` container is a busybox echo server (`nc -e cat` on the
//! control port, and a `/rpf-sidecar` script that runs `cat`), reached
//! through [`ClusterSource`] with both transports. Proves the byte
//! plumbing (both directions, binary-clean, large transfers), measures raw
//! throughput, and checks the preflight error texts on real API answers.
//!
//! Runs only when `RPF_E2E_KUBECONFIG` names a kubeconfig:
//! ```sh
//! RPF_E2E_KUBECONFIG=~/.kube/config RPF_E2E_CLIENT_IMAGE=busybox:1.36 \
//!   cargo test -p rpf-cli --lib cluster::live_tests -- --ignored --nocapture --test-threads 1
//! ```
//! `RPF_E2E_CLIENT_IMAGE` is a busybox image the node has (default
//! `busybox:1.36`, pulled if allowed); `RPF_E2E_THROUGHPUT_MIB` sets the
//! transfer size (default 64).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::serde_json::{self, json};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::channel::Duplex;
use crate::cluster::stream::{FailureFuture, ReportingStream};
use kube::api::Portforwarder;

async fn client() -> Option<Client> {
    let Some(path) = std::env::var_os("RPF_E2E_KUBECONFIG").filter(|v| !v.is_empty()) else {
        eprintln!("skipped: RPF_E2E_KUBECONFIG not set");
        return None;
    };
    rpf_process::install_crypto_provider();
    let kubeconfig = Kubeconfig::read_from(&path).expect("read RPF_E2E_KUBECONFIG");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig");
    Some(super::client::build(config).expect("client"))
}

fn image() -> String {
    std::env::var("RPF_E2E_CLIENT_IMAGE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "busybox:1.36".to_owned())
}

/// A namespace deleted when dropped (even when the test panics).
struct TestNamespace {
    client: Client,
    name: String,
}

impl TestNamespace {
    async fn create(client: &Client, prefix: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("{prefix}-{}-{nanos:x}", std::process::id());
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        eprintln!("namespace {name}");
        Self {
            client: client.clone(),
            name,
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let name = self.name.clone();
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(async move {
                let _ = api.delete(&name, &DeleteParams::background()).await;
            })
        });
    }
}

/// The fake sidecar: echoes on 127.0.0.1:4499 and answers exec of
/// `/rpf-sidecar stdio` with `cat`.
fn echo_pod(name: &str, image: &str, sidecar: bool) -> Pod {
    // busybox's small nc cannot choose the address: it listens on all.
    let script = "printf '#!/bin/sh\\nexec cat\\n' > /rpf-sidecar && chmod +x /rpf-sidecar && \
                  exec nc -ll -p 4499 -e cat";
    let container = if sidecar { "rpf-sidecar" } else { "echo" };
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": container,
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", script],
                "readinessProbe": {
                    "exec": {"command": ["sh", "-c", "netstat -tln | grep -q ':4499 '"]},
                    "periodSeconds": 1,
                },
            }],
        }
    }))
    .unwrap()
}

/// Creates a pod, waiting out the few seconds in which a new namespace has
/// no ServiceAccount token yet.
async fn create_pod(pods: &Api<Pod>, pod: &Pod) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match pods.create(&PostParams::default(), pod).await {
            Ok(_) => return,
            Err(kube::Error::Api(s)) if s.code >= 500 && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("create pod: {e}"),
        }
    }
}

async fn wait_ready(pods: &Api<Pod>, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let pod = pods.get(name).await.expect("get pod");
        if preflight::check_pod(&pod).is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pod {name} not ready: {:?}",
            pod.status
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Sends `size` bytes of a pattern through an echo channel while reading
/// them back; checks every byte; returns MB/s (10^6 bytes per second).
/// The pattern is prebuilt and compared with `==` on slices, so that this
/// (unoptimised) test code is not what limits the measurement.
async fn echo_round_trip(io: Box<dyn Duplex>, size: usize) -> f64 {
    const PERIOD: usize = 251;
    const READ: usize = 256 << 10;
    let pattern: std::sync::Arc<Vec<u8>> =
        std::sync::Arc::new((0..READ + 2 * PERIOD).map(|i| (i % PERIOD) as u8).collect());
    let (mut rd, mut wr) = tokio::io::split(io);
    let start = Instant::now();
    let source = pattern.clone();
    let writer = tokio::spawn(async move {
        // A multiple of the period, so that every chunk starts at phase 0.
        let chunk = &source[..PERIOD * 256];
        let mut sent = 0usize;
        while sent < size {
            let n = chunk.len().min(size - sent);
            wr.write_all(&chunk[..n]).await.expect("write");
            sent += n;
        }
        wr.flush().await.expect("flush");
        wr
    });
    let mut received = 0usize;
    let mut buf = vec![0u8; READ];
    while received < size {
        let n = tokio::time::timeout(Duration::from_secs(60), rd.read(&mut buf))
            .await
            .expect("echo stalled")
            .expect("read");
        assert!(n > 0, "echo ended after {received} of {size} bytes");
        let phase = received % PERIOD;
        assert!(
            buf[..n] == pattern[phase..phase + n],
            "corrupted data in bytes {received}..{}",
            received + n
        );
        received += n;
    }
    let elapsed = start.elapsed();
    let _wr = writer.await.unwrap();
    size as f64 / elapsed.as_secs_f64() / 1e6
}

fn size() -> usize {
    std::env::var("RPF_E2E_THROUGHPUT_MIB")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(64)
        << 20
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
async fn transports_carry_bytes_both_ways() {
    let Some(client) = client().await else { return };
    let ns = TestNamespace::create(&client, "rpf-cl-raw").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    create_pod(&pods, &echo_pod("echo", &image(), true)).await;
    wait_ready(&pods, "echo").await;

    for transport in [Transport::Portforward, Transport::Exec] {
        let mut source = ClusterSource::with_client(
            client.clone(),
            &ns.name,
            Target::parse("pod/echo").unwrap(),
            transport,
        );
        // A small exchange first: the channel works and is binary-clean.
        let channel = source.open().await.expect("open");
        assert_eq!(
            channel.place,
            Place::Pod {
                namespace: ns.name.clone(),
                name: "echo".into()
            }
        );
        let mut io = channel.io;
        let all: Vec<u8> = (0..=255u8).collect();
        io.write_all(&all).await.unwrap();
        let mut back = vec![0u8; 256];
        tokio::time::timeout(Duration::from_secs(20), io.read_exact(&mut back))
            .await
            .expect("no echo")
            .unwrap();
        assert_eq!(back, all);
        drop(io);
        drop(channel.guard);

        // Then a large transfer, measured.
        let size = size();
        let channel = source.open().await.expect("open");
        let mbps = echo_round_trip(channel.io, size).await;
        eprintln!(
            "THROUGHPUT {transport:?} (ClusterSource): {} MiB echoed in both directions at {mbps:.1} MB/s",
            size >> 20
        );
    }

    // Nothing listens on 4598: the kubelet's words reach the reader, with
    // every port-forward client.
    for client_kind in ["spdy", "websocket", "kube"] {
        // The guard must outlive the stream: dropping it ends the forward.
        let (mut io, _guard): (Box<dyn Duplex>, Box<dyn Send>) = match client_kind {
            "spdy" => {
                let (io, guard) = portforward::open_spdy(&client, &pods, "echo", 4598)
                    .await
                    .unwrap();
                (Box::new(io), Box::new(guard))
            }
            "websocket" => {
                let (io, guard) = portforward::open_websocket(&client, &pods, "echo", 4598)
                    .await
                    .unwrap();
                (Box::new(io), Box::new(guard))
            }
            _ => {
                let (io, guard) = open_kube(&pods, "echo", 4598).await.unwrap();
                (Box::new(io), Box::new(guard))
            }
        };
        let _ = io.write_all(b"hello").await;
        let mut buf = [0u8; 16];
        let err = tokio::time::timeout(Duration::from_secs(20), io.read(&mut buf))
            .await
            .expect("no answer from a closed port")
            .expect_err("a closed port gives an error");
        let text = err.to_string();
        eprintln!("closed port ({client_kind}): {text}");
        assert!(
            text.starts_with("port-forward to port 4598 of pod echo: "),
            "{text}"
        );
        assert!(text.contains("4598"), "{text}");
    }

    // The port-forward clients side by side: kube's Portforwarder, ours
    // over WebSocket, ours over SPDY (the default).
    for round in 0..2 {
        let (io, guard) = open_kube(&pods, "echo", 4499)
            .await
            .expect("kube port-forward");
        let kube_mbps = echo_round_trip(Box::new(io), size()).await;
        drop(guard);
        let (io, guard) = portforward::open_websocket(&client, &pods, "echo", 4499)
            .await
            .expect("WebSocket port-forward");
        let websocket_mbps = echo_round_trip(Box::new(io), size()).await;
        drop(guard);
        let (io, guard) = portforward::open_spdy(&client, &pods, "echo", 4499)
            .await
            .expect("SPDY port-forward");
        let spdy_mbps = echo_round_trip(Box::new(io), size()).await;
        drop(guard);
        eprintln!(
            "THROUGHPUT round {round}: kube Portforwarder {kube_mbps:.1} MB/s, WebSocket {websocket_mbps:.1} MB/s, SPDY {spdy_mbps:.1} MB/s ({} MiB echo)",
            size() >> 20
        );
    }

    // A command that fails: its Status reaches the reader, over SPDY and
    // over WebSocket.
    for spdy in [true, false] {
        let command = ["/no-such-binary"];
        let (mut io, _guard): (Box<dyn Duplex>, Box<dyn Send>) = if spdy {
            let (io, guard) = exec::open_spdy(&client, &pods, "echo", "rpf-sidecar", &command)
                .await
                .expect("exec");
            (Box::new(io), Box::new(guard))
        } else {
            let (io, process) = exec::open_websocket(&pods, "echo", "rpf-sidecar", &command)
                .await
                .expect("exec");
            (Box::new(io), Box::new(process))
        };
        let mut buf = [0u8; 16];
        let err = tokio::time::timeout(Duration::from_secs(20), io.read(&mut buf))
            .await
            .expect("no answer from a failing exec")
            .expect_err("a failing command gives an error");
        eprintln!("failing exec (SPDY: {spdy}): {err}");
        assert!(
            err.to_string()
                .starts_with("exec of \"/no-such-binary\" in container rpf-sidecar of pod echo: "),
            "{err}"
        );
    }

    // Both exec clients side by side.
    let command = ["/rpf-sidecar", "stdio"];
    let (io, process) = exec::open_websocket(&pods, "echo", "rpf-sidecar", &command)
        .await
        .expect("WebSocket exec");
    let websocket_mbps = echo_round_trip(Box::new(io), size()).await;
    drop(process);
    let (io, guard) = exec::open_spdy(&client, &pods, "echo", "rpf-sidecar", &command)
        .await
        .expect("SPDY exec");
    let spdy_mbps = echo_round_trip(Box::new(io), size()).await;
    drop(guard);
    eprintln!(
        "THROUGHPUT exec: WebSocket {websocket_mbps:.1} MB/s, SPDY {spdy_mbps:.1} MB/s ({} MiB echo)",
        size() >> 20
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
async fn errors_on_a_real_cluster_say_what_to_do() {
    let Some(client) = client().await else { return };
    let ns = TestNamespace::create(&client, "rpf-cl-err").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let open = |target: &str, transport| {
        let mut source = ClusterSource::with_client(
            client.clone(),
            &ns.name,
            Target::parse(target).unwrap(),
            transport,
        );
        async move { source.open().await.map(|_| ()).unwrap_err() }
    };

    let e = open("pod/nope", Transport::Portforward).await;
    assert!(!e.retryable);
    assert_eq!(
        e.to_string(),
        format!("pod \"nope\" not found in namespace \"{}\"", ns.name)
    );
    let e = open("deploy/nope", Transport::Exec).await;
    assert_eq!(
        e.to_string(),
        format!("deployment \"nope\" not found in namespace \"{}\"", ns.name)
    );

    create_pod(&pods, &echo_pod("plain", &image(), false)).await;
    let e = open("pod/plain", Transport::Portforward).await;
    assert!(!e.retryable);
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "pod {}/plain has no rpf-sidecar container",
            ns.name
        )),
        "{text}"
    );
    assert!(text.contains("rpf.dev/enabled"), "{text}");

    // A service whose selector matches the sidecar-less pod only.
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), &ns.name);
    let svc = serde_json::from_value(json!({
        "metadata": {"name": "plain"},
        "spec": {"selector": {"app": "plain"}, "ports": [{"port": 80}]}
    }))
    .unwrap();
    svcs.create(&PostParams::default(), &svc).await.unwrap();
    let e = open("svc/plain", Transport::Portforward).await;
    assert!(
        e.to_string().starts_with(&format!(
            "pod {}/plain of service/plain has no rpf-sidecar",
            ns.name
        )),
        "{e}"
    );

    // A pod whose sidecar cannot start (the image does not exist and may
    // not be pulled): not running, retryable, and says why.
    let mut broken = echo_pod("broken", "rpf.invalid/none:0", true);
    broken.spec.as_mut().unwrap().containers[0].image_pull_policy = Some("Never".into());
    create_pod(&pods, &broken).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let e = open("pod/broken", Transport::Portforward).await;
        assert!(e.retryable, "{e}");
        let text = e.to_string();
        if text.contains("ErrImageNeverPull") || Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(
        text,
        format!(
            "pod {}/broken is not running (phase Pending, rpf-sidecar waiting: ErrImageNeverPull: \
             Container image \"rpf.invalid/none:0\" is not present with pull policy of Never)",
            ns.name
        )
    );
}

/// Keeps the port-forward's WebSocket task alive, and stops it when the
/// channel is dropped.
struct ForwarderGuard(Portforwarder);

impl Drop for ForwarderGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens a port-forward to `port` of pod `name` with kube's own
/// `Portforwarder`, for the comparison below (see docs/cluster.md): it
/// sends at most 4 KiB per WebSocket message and measured 3x slower than
/// [`portforward::open_websocket`].
async fn open_kube(
    pods: &Api<Pod>,
    name: &str,
    port: u16,
) -> Result<(ReportingStream<tokio::io::DuplexStream>, ForwarderGuard), kube::Error> {
    let mut forwarder = pods.portforward(name, &[port]).await?;
    let stream = forwarder.take_stream(port).expect("the port we asked for");
    let error = forwarder
        .take_error(port)
        .map(|f| Box::pin(f) as FailureFuture);
    let what = format!("port-forward to port {port} of pod {name}");
    Ok((
        ReportingStream::new(stream, error, portforward::ERROR_GRACE, what),
        ForwarderGuard(forwarder),
    ))
}
