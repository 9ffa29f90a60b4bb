//! `rpf-soak`: an hour (by default) of mixed traffic through
//! `rpf attach --via 'rpf-sidecar stdio'`: bulk transfers both ways,
//! ping-pong on long-lived connections and connection churn, all at once.
//! The CLI's and the sidecar's RSS are sampled every 10 s; the report says
//! whether memory stayed flat after the warm-up and whether any connection
//! failed. A benchmark, not a test: it runs for as long as it is told.
//!
//! `cargo build --release --workspace --bins && target/release/rpf-soak
//! [--duration 1h] [--csv /tmp/soak.csv]`

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rpf_e2e::bench::{download, rss_kib, upload, Servers, Tunnel};
use rpf_e2e::process::bin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
struct Args {
    /// How long to run (e.g. 1h, 10m).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// How often to sample memory.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    sample: Duration,
    /// Memory before this is warm-up and not held against the run.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    warm_up: Duration,
    /// Bytes per bulk transfer (each way, one after the other).
    #[arg(long, default_value_t = 64 << 20)]
    bulk_bytes: u64,
    /// One bulk transfer each way starts this often (a soak, not a
    /// throughput test: the machine keeps room for the other traffic).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    bulk_every: Duration,
    /// Connections opened and closed per second by the churn workers.
    #[arg(long, default_value_t = 100)]
    churn_per_second: u32,
    /// Long-lived ping-pong connections.
    #[arg(long, default_value_t = 8)]
    ping_pongs: usize,
    /// Write every sample here as CSV, too.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// The sidecar binary (default: next to this benchmark).
    #[arg(long)]
    sidecar: Option<PathBuf>,
}

/// What the workloads did, counted as they go.
#[derive(Default)]
struct Counts {
    bulk_bytes: AtomicU64,
    round_trips: AtomicU64,
    churned: AtomicU64,
    failed: AtomicU64,
}

struct Sample {
    at: Duration,
    cli_kib: u64,
    sidecar_kib: u64,
    bulk_mib: u64,
    round_trips: u64,
    churned: u64,
    failed: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let servers = Servers::start().await?;
    let sidecar = args.sidecar.clone().unwrap_or_else(|| bin("rpf-sidecar"));
    let tunnel = Tunnel::start(&servers, &sidecar).await?;
    let counts = Arc::new(Counts::default());
    let start = Instant::now();
    let until = start + args.duration;

    let mut work = Vec::new();
    work.push(tokio::spawn(bulk(
        tunnel.addr(tunnel.sink),
        tunnel.addr(tunnel.source),
        args.bulk_bytes,
        args.bulk_every,
        until,
        counts.clone(),
    )));
    for _ in 0..args.ping_pongs {
        work.push(tokio::spawn(ping_pong(
            tunnel.addr(tunnel.echo),
            until,
            counts.clone(),
        )));
    }
    const CHURNERS: u32 = 4;
    let gap = Duration::from_secs(1) * CHURNERS / args.churn_per_second.max(1);
    for _ in 0..CHURNERS {
        work.push(tokio::spawn(churn(
            tunnel.addr(tunnel.echo),
            gap,
            until,
            counts.clone(),
        )));
    }

    let mut csv = match &args.csv {
        Some(path) => {
            Some(std::fs::File::create(path).with_context(|| path.display().to_string())?)
        }
        None => None,
    };
    if let Some(f) = csv.as_mut() {
        writeln!(
            f,
            "seconds,cli_rss_kib,sidecar_rss_kib,bulk_mib,round_trips,connections_churned,failed"
        )?;
    }
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(args.sample);
    loop {
        tick.tick().await;
        let sample = Sample {
            at: start.elapsed(),
            cli_kib: rss_kib(tunnel.cli_pid(), "VmRSS")?,
            sidecar_kib: rss_kib(tunnel.sidecar_pid, "VmRSS")?,
            bulk_mib: counts.bulk_bytes.load(Ordering::Relaxed) >> 20,
            round_trips: counts.round_trips.load(Ordering::Relaxed),
            churned: counts.churned.load(Ordering::Relaxed),
            failed: counts.failed.load(Ordering::Relaxed),
        };
        if let Some(f) = csv.as_mut() {
            writeln!(
                f,
                "{},{},{},{},{},{},{}",
                sample.at.as_secs(),
                sample.cli_kib,
                sample.sidecar_kib,
                sample.bulk_mib,
                sample.round_trips,
                sample.churned,
                sample.failed
            )?;
        }
        eprintln!(
            "{:>5}s  CLI {:.1} MiB  sidecar {:.1} MiB  bulk {} MiB  round trips {}  churned {}  failed {}",
            sample.at.as_secs(),
            mib(sample.cli_kib),
            mib(sample.sidecar_kib),
            sample.bulk_mib,
            sample.round_trips,
            sample.churned,
            sample.failed
        );
        samples.push(sample);
        if Instant::now() >= until {
            break;
        }
    }
    for w in work {
        w.await?;
    }
    let peak_cli = rss_kib(tunnel.cli_pid(), "VmHWM")?;
    let peak_sidecar = rss_kib(tunnel.sidecar_pid, "VmHWM")?;
    report(&args, &samples, peak_cli, peak_sidecar);
    let failed = counts.failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} operations failed");
    Ok(())
}

/// Uploads then downloads `bytes`, once per `every`.
async fn bulk(
    sink: std::net::SocketAddr,
    source: std::net::SocketAddr,
    bytes: u64,
    every: Duration,
    until: Instant,
    counts: Arc<Counts>,
) {
    let mut tick = tokio::time::interval(every);
    while Instant::now() < until {
        tick.tick().await;
        for result in [upload(sink, bytes).await, download(source, bytes).await] {
            match result {
                Ok(_) => counts.bulk_bytes.fetch_add(bytes, Ordering::Relaxed),
                Err(e) => {
                    eprintln!("bulk transfer failed: {e:#}");
                    counts.failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        }
    }
}

/// One long-lived connection doing 1-byte round trips, 10 ms apart; a
/// new connection after each 1,000.
async fn ping_pong(echo: std::net::SocketAddr, until: Instant, counts: Arc<Counts>) {
    while Instant::now() < until {
        let result = async {
            let mut tcp = TcpStream::connect(echo).await?;
            tcp.set_nodelay(true)?;
            let mut b = [0u8; 1];
            for _ in 0..1000 {
                if Instant::now() >= until {
                    break;
                }
                tcp.write_all(b"p").await?;
                tcp.read_exact(&mut b).await?;
                counts.round_trips.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok::<_, std::io::Error>(())
        }
        .await;
        if let Err(e) = result {
            eprintln!("ping-pong failed: {e}");
            counts.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Connect, echo 1 KiB, close; `gap` apart.
async fn churn(echo: std::net::SocketAddr, gap: Duration, until: Instant, counts: Arc<Counts>) {
    let payload = [0x42u8; 1024];
    while Instant::now() < until {
        let result = async {
            let mut tcp = TcpStream::connect(echo).await?;
            tcp.write_all(&payload).await?;
            let mut back = [0u8; 1024];
            tcp.read_exact(&mut back).await?;
            if back != payload {
                return Err(std::io::Error::other("echo came back different"));
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => counts.churned.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                eprintln!("churn connection failed: {e}");
                counts.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        tokio::time::sleep(gap).await;
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A Markdown summary: the curve at a few points, and flat or not.
fn report(args: &Args, samples: &[Sample], peak_cli: u64, peak_sidecar: u64) {
    let Some(last) = samples.last() else { return };
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= args.warm_up).collect();
    let at_warm = after.first().copied().unwrap_or(last);
    let max_after = |f: fn(&Sample) -> u64| after.iter().map(|s| f(s)).max().unwrap_or(0);
    println!(
        "\n## rpf soak: {} of mixed traffic through --via\n",
        humantime::format_duration(Duration::from_secs(last.at.as_secs()))
    );
    println!(
        "Bulk {} MiB in all (half each way), {} ping-pong round trips on {} connections, {} connections churned; failed: {}.\n",
        last.bulk_mib, last.round_trips, args.ping_pongs, last.churned, last.failed
    );
    println!("| RSS (MiB) | after warm-up ({}) | max after warm-up | end | growth after warm-up | peak |", humantime::format_duration(args.warm_up));
    println!("|---|---|---|---|---|---|");
    for (name, f, peak) in [
        (
            "rpf (CLI)",
            (|s: &Sample| s.cli_kib) as fn(&Sample) -> u64,
            peak_cli,
        ),
        ("rpf-sidecar", |s: &Sample| s.sidecar_kib, peak_sidecar),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:+.1} | {:.1} |",
            mib(f(at_warm)),
            mib(max_after(f)),
            mib(f(last)),
            mib(f(last)) - mib(f(at_warm)),
            mib(peak)
        );
    }
    println!("\nCurve (every tenth sample): seconds, CLI MiB, sidecar MiB");
    for s in samples.iter().step_by(10) {
        println!(
            "- {:>5} s: {:.1} / {:.1}",
            s.at.as_secs(),
            mib(s.cli_kib),
            mib(s.sidecar_kib)
        );
    }
}
