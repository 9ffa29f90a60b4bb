//! `rpf-udp-bench`: UDP through the tunnel against the same echo server
//! reached directly, in one run, on this machine: round-trip time (p50,
//! p99) of one flow, and echoed datagrams per second over many flows.
//! Prints a Markdown table. A benchmark, not a test: nothing is asserted
//! about speed.
//!
//! `cargo build --release --workspace --bins && target/release/rpf-udp-bench`

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rpf_e2e::process::bin;
use rpf_e2e::udp_peer::{connected, echo_server, many_flows};
use tokio::net::UdpSocket;

#[derive(Debug, Parser)]
struct Args {
    /// Round trips of the latency run.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// Payload bytes of the latency run.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Concurrent flows of the rate run.
    #[arg(long, default_value_t = 16)]
    flows: usize,
    /// Sequential round trips per flow in the rate run.
    #[arg(long, default_value_t = 5_000)]
    per_flow: u64,
    /// The sidecar binary to measure (default: next to this benchmark).
    #[arg(long)]
    sidecar: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let echo = UdpSocket::bind("127.0.0.1:0").await?;
    let direct = echo.local_addr()?;
    tokio::spawn(echo_server(echo));
    let remote = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let sidecar = args.sidecar.clone().unwrap_or_else(|| bin("rpf-sidecar"));
    let _attach = start_tunnel(&sidecar, remote, direct.port(), args.flows).await?;
    let via: SocketAddr = ([127, 0, 0, 1], remote).into();

    let (d50, d99) = rtt(direct, args.round_trips, args.size).await?;
    let (t50, t99) = rtt(via, args.round_trips, args.size).await?;
    let rate_d = rate(direct, args.flows, args.per_flow).await?;
    let rate_t = rate(via, args.flows, args.per_flow).await?;

    println!("| measure | direct loopback | rpf | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| {}-byte datagram RTT p50 (µs) | {d50:.0} | {t50:.0} | {:.1}× |",
        args.size,
        t50 / d50
    );
    println!(
        "| {}-byte datagram RTT p99 (µs) | {d99:.0} | {t99:.0} | {:.1}× |",
        args.size,
        t99 / d99
    );
    println!(
        "| echoed datagrams/s, {} flows × sequential, 64–964 bytes | {rate_d:.0} | {rate_t:.0} | {:.0}% |",
        args.flows,
        100.0 * rate_t / rate_d
    );
    Ok(())
}

async fn start_tunnel(
    sidecar: &std::path::Path,
    remote: u16,
    local: u16,
    flows: usize,
) -> anyhow::Result<Killed> {
    let via = format!("exec {} -q stdio", sidecar.display());
    let mut child = Command::new(bin("rpf"))
        .args(["attach", "-q", "--via", &via, "--address", "127.0.0.1"])
        .args(["--max-connections", &(flows + 8).to_string()])
        .arg(format!("{remote}:{local}/udp"))
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stdout).lines().next()
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .context("rpf attach did not start within 30s")??;
    match line {
        Some(Ok(l)) if l.starts_with("Forwarding from") => Ok(Killed(child)),
        other => bail!("rpf attach did not start: {other:?}"),
    }
}

/// p50 and p99 round-trip time of `n` sequential echoes, in microseconds.
async fn rtt(addr: SocketAddr, n: usize, size: usize) -> anyhow::Result<(f64, f64)> {
    let socket = connected(addr).await?;
    let payload = vec![0x5a; size];
    let mut buf = vec![0u8; 65_536];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        socket.send(&payload).await?;
        tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
            .await
            .context("a datagram was lost")??;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok((samples[n / 2], samples[n * 99 / 100]))
}

/// Echoed datagrams per second over `flows` flows, each sequential.
async fn rate(addr: SocketAddr, flows: usize, per_flow: u64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let report = many_flows(addr, flows, per_flow, Duration::from_secs(5)).await;
    let took = start.elapsed();
    if report.served != flows {
        bail!("rate run through {addr}: {report:?}");
    }
    Ok((flows as u64 * per_flow) as f64 / took.as_secs_f64())
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
