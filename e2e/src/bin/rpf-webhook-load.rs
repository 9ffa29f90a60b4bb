//! `rpf-webhook-load`: one `rpf-webhook` replica (the real binary, serving
//! its own freshly generated certificate) under a steady admission rate,
//! as the API server calls it: HTTPS, HTTP/2, one connection, AdmissionReview
//! bodies captured from a real kube-apiserver with the opt-in annotation
//! added (every request is a full injection). Prints p50/p90/p99/max latency
//! and the error count as Markdown.
//!
//! Open loop: request *n* is due at `n / rate` seconds and its latency is
//! measured from that due time, so a stall in the webhook shows up in the
//! figures instead of silently slowing the load down.
//!
//! `cargo build --release -p rpf-webhook -p rpf-e2e --bins && target/release/rpf-webhook-load`

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use bytes::Bytes;
use clap::Parser;
use rpf_e2e::process::{bin, free_port};
use rpf_webhook::args::parse_duration;
use rpf_webhook::tls::{self, Validity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, Parser)]
struct Args {
    /// Admissions per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// How long to keep the rate up.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// The webhook binary (default: next to this benchmark).
    #[arg(long)]
    webhook: Option<std::path::PathBuf>,
}

const CAPTURES: [&str; 2] = [
    include_str!("../../../inject/tests/fixtures/captured-admissionreview.json"),
    include_str!("../../../inject/tests/fixtures/captured-admissionreview-replicaset.json"),
];

/// The webhook process, killed on drop.
struct Webhook(Child);
impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("rpf-webhook-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let material = tls::generate(&names, Validity::default())?;
    std::fs::write(dir.join("tls.crt"), &material.cert)?;
    std::fs::write(dir.join("tls.key"), &material.key)?;

    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let exe = args.webhook.clone().unwrap_or_else(|| bin("rpf-webhook"));
    let _webhook = Webhook(
        Command::new(&exe)
            .args([
                "--listen",
                &addr.to_string(),
                "--sidecar-image",
                "registry.local/rpf-sidecar:bench",
            ])
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", exe.display()))?,
    );

    let bodies: Vec<Value> = CAPTURES
        .iter()
        .map(|text| {
            let mut review: Value = serde_json::from_str(text).expect("capture is JSON");
            review["request"]["object"]["metadata"]["annotations"]["rpf.dev/enabled"] =
                json!("true");
            review
        })
        .collect();

    let mut send = connect(addr, &material.ca_cert).await?;
    // Warm-up, and proof that the answer is an injection.
    let (status, answer) = admit(&mut send, &bodies[0], 0).await?;
    ensure!(status == 200, "warm-up admission answered {status}");
    ensure!(
        has_patch(&answer),
        "warm-up admission was not injected: {answer}"
    );

    let total = (u128::from(args.rate) * args.duration.as_millis() / 1000) as usize;
    let period = Duration::from_secs(1) / args.rate;
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let due = start + period * n as u32;
        tokio::time::sleep_until(due.into()).await;
        let mut send = send.clone();
        let body = bodies[n % bodies.len()].clone();
        tasks.spawn(async move {
            let result = admit(&mut send, &body, n).await;
            let latency = due.elapsed();
            let ok = match result {
                Ok((200, answer)) => {
                    answer["response"]["allowed"] == json!(true)
                        && answer["response"]["uid"] == json!(format!("bench-{n}"))
                        && has_patch(&answer)
                }
                _ => false,
            };
            (latency, ok)
        });
    }
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0usize;
    while let Some(done) = tasks.join_next().await {
        let (latency, ok) = done?;
        latencies.push(latency);
        errors += usize::from(!ok);
    }
    let elapsed = start.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!("## rpf-webhook under load\n");
    println!(
        "{} admissions at {}/s over {:.1} s (one replica, HTTPS + HTTP/2, one connection, every pod injected)\n",
        latencies.len(),
        args.rate,
        elapsed.as_secs_f64()
    );
    println!("| p50 | p90 | p99 | max | errors |\n|---|---|---|---|---|");
    println!(
        "| {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {errors} |",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(latencies[latencies.len() - 1]),
    );
    let _ = std::fs::remove_dir_all(&dir);
    if errors > 0 {
        bail!("{errors} admissions failed");
    }
    Ok(())
}

/// kube serialises the patch as an array of bytes (which the API server's
/// JSON decoder accepts for a `[]byte`), not as base64: accept either.
fn has_patch(answer: &Value) -> bool {
    let patch = &answer["response"]["patch"];
    patch.is_string() || patch.as_array().is_some_and(|a| !a.is_empty())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// An HTTP/2 connection to the webhook, retried while it starts.
async fn connect(addr: SocketAddr, ca_pem: &str) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let connector = TlsConnector::from(Arc::new(cfg));
    let deadline = Instant::now() + Duration::from_secs(10);
    let tcp = loop {
        match TcpStream::connect(addr).await {
            Ok(tcp) => break tcp,
            Err(e) if Instant::now() > deadline => {
                bail!("rpf-webhook did not listen on {addr}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    tcp.set_nodelay(true)?;
    let tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await
        .context("TLS handshake with rpf-webhook")?;
    let (send, conn) = h2::client::handshake(tls).await?;
    tokio::spawn(conn);
    Ok(send.ready().await?)
}

/// One admission: POST /mutate, the whole answer read and parsed.
async fn admit(
    send: &mut h2::client::SendRequest<Bytes>,
    review: &Value,
    n: usize,
) -> anyhow::Result<(u16, Value)> {
    let mut review = review.clone();
    review["request"]["uid"] = json!(format!("bench-{n}"));
    let body = Bytes::from(serde_json::to_vec(&review)?);
    let req = http::Request::post("https://localhost/mutate")
        .header("content-type", "application/json")
        .body(())?;
    let mut ready = send.clone().ready().await?;
    let (resp, mut stream) = ready.send_request(req, false)?;
    stream.send_data(body, true)?;
    let resp = resp.await?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    Ok((status, serde_json::from_slice(&bytes)?))
}
