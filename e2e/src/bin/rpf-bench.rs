//! `rpf-bench`: measures the tunnel against direct loopback (and a plain
//! socat relay for latency) in one run, on this machine, and prints a
//! Markdown report. Targets are ratios within the run, because a shared
//! machine's absolute numbers drift from one minute to the next.
//!
//! Build everything in release mode first, then run it:
//! `cargo build --release --workspace --bins && target/release/rpf-bench`

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rpf_e2e::bench::{
    conn_rate, download, median, parallel_download, ping_pong, rss_kib, upload, wait_listening,
    Killed, Servers, Tunnel,
};
use rpf_e2e::peer::many;
use rpf_e2e::process::{bin, free_port};

#[derive(Debug, Parser)]
struct Args {
    /// Bytes per single-connection throughput run.
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Repetitions of each throughput run (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Ping-pong round trips per latency run.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// Connections per connection-rate run.
    #[arg(long, default_value_t = 5_000)]
    connections: usize,
    /// The sidecar binary to measure (default: next to this benchmark).
    /// Give the shipped one (images/build.sh) to measure what pods run.
    #[arg(long)]
    sidecar: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let servers = Servers::start().await?;
    let socat_port = free_port();
    let _socat = Killed(
        Command::new("socat")
            .args([
                &format!("TCP-LISTEN:{socat_port},bind=127.0.0.1,fork,reuseaddr,nodelay"),
                &format!("TCP:{},nodelay", servers.echo),
            ])
            .spawn()
            .context("socat is needed for the relay baseline (Debian package socat)")?,
    );
    let sidecar = args.sidecar.clone().unwrap_or_else(|| bin("rpf-sidecar"));
    let tunnel = Tunnel::start(&servers, &sidecar).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_rss = rss_kib(tunnel.sidecar_pid, "VmRSS")?;

    let direct = Targets {
        echo: servers.echo,
        sink: servers.sink,
        source: servers.source,
    };
    let via = Targets {
        echo: tunnel.addr(tunnel.echo),
        sink: tunnel.addr(tunnel.sink),
        source: tunnel.addr(tunnel.source),
    };
    let relay: SocketAddr = ([127, 0, 0, 1], socat_port).into();
    wait_listening(relay).await?;

    let mut rows = Vec::new();
    let mb = |bytes: u64, d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;

    let up_d = median(args.runs, || upload(direct.sink, args.bytes)).await?;
    let up_t = median(args.runs, || upload(via.sink, args.bytes)).await?;
    rows.push(Row::ratio(
        "1 connection, pod → local (MB/s)",
        mb(args.bytes, up_d),
        mb(args.bytes, up_t),
        0.25,
        true,
    ));
    let down_d = median(args.runs, || download(direct.source, args.bytes)).await?;
    let down_t = median(args.runs, || download(via.source, args.bytes)).await?;
    rows.push(Row::ratio(
        "1 connection, local → pod (MB/s)",
        mb(args.bytes, down_d),
        mb(args.bytes, down_t),
        0.25,
        true,
    ));
    let per = args.bytes / 8;
    let par_d = median(args.runs, || parallel_download(direct.source, 8, per)).await?;
    let par_t = median(args.runs, || parallel_download(via.source, 8, per)).await?;
    rows.push(Row::ratio(
        "8 connections, local → pod (MB/s)",
        mb(per * 8, par_d),
        mb(per * 8, par_t),
        0.0,
        true,
    ));

    let lat_d = ping_pong(direct.echo, args.round_trips).await?;
    let lat_s = ping_pong(relay, args.round_trips).await?;
    let lat_t = ping_pong(via.echo, args.round_trips).await?;
    rows.push(Row::plain(
        "1-byte ping-pong p50, direct / socat / rpf (µs)",
        format!("{:.0} / {:.0} / {:.0}", lat_d.0, lat_s.0, lat_t.0),
    ));
    rows.push(Row {
        name: "1-byte ping-pong p99 (µs), rpf vs socat relay".into(),
        direct: format!("{:.0} (socat)", lat_s.1),
        tunnel: format!("{:.0}", lat_t.1),
        ratio: format!("{:.2}× socat", lat_t.1 / lat_s.1),
        target: "≤ 3× socat".into(),
        met: lat_t.1 <= 3.0 * lat_s.1,
    });

    let cps_d = conn_rate(direct.echo, args.connections).await?;
    let cps_t = conn_rate(via.echo, args.connections).await?;
    rows.push(Row::ratio(
        "new connections per second (connect, 1-byte echo, close)",
        cps_d,
        cps_t,
        0.5,
        true,
    ));

    let start = Instant::now();
    let report = many(via.echo, 1000, 1024, false).await;
    let took = start.elapsed();
    if report.ok != 1000 {
        bail!("1,000 concurrent connections through the tunnel: {report:?}");
    }
    let start = Instant::now();
    let direct_many = many(direct.echo, 1000, 1024, false).await;
    let took_d = start.elapsed();
    rows.push(Row {
        name: "1,000 concurrent connections, 1 KiB echo each (s, all intact)".into(),
        direct: format!("{:.2} ({} ok)", took_d.as_secs_f64(), direct_many.ok),
        tunnel: format!("{:.2} ({} ok)", took.as_secs_f64(), report.ok),
        ratio: String::new(),
        target: "none lost".into(),
        met: report.ok == 1000,
    });

    let peak_rss = rss_kib(tunnel.sidecar_pid, "VmHWM")?;
    let size = std::fs::metadata(&sidecar)?.len();
    rows.push(Row::limit(
        "sidecar idle RSS (MiB)",
        idle_rss as f64 / 1024.0,
        4.0,
    ));
    rows.push(Row::plain(
        "sidecar peak RSS over the run (MiB)",
        format!("{:.1}", peak_rss as f64 / 1024.0),
    ));
    rows.push(Row::limit(
        "rpf-sidecar binary (MB)",
        size as f64 / 1e6,
        4.0,
    ));

    print_report(&rows);
    Ok(())
}

#[derive(Clone, Copy)]
struct Targets {
    echo: SocketAddr,
    sink: SocketAddr,
    source: SocketAddr,
}

/// `rpf attach --via 'rpf-sidecar stdio'` with one forward per server.
struct Row {
    name: String,
    direct: String,
    tunnel: String,
    ratio: String,
    target: String,
    met: bool,
}

impl Row {
    fn ratio(name: &str, direct: f64, tunnel: f64, min: f64, higher_better: bool) -> Self {
        let r = tunnel / direct;
        Row {
            name: name.into(),
            direct: format!("{direct:.0}"),
            tunnel: format!("{tunnel:.0}"),
            ratio: format!("{:.0}%", r * 100.0),
            target: if min > 0.0 {
                format!("≥ {:.0}%", min * 100.0)
            } else {
                "—".into()
            },
            met: !higher_better || r >= min,
        }
    }

    fn limit(name: &str, value: f64, max: f64) -> Self {
        Row {
            name: name.into(),
            direct: String::new(),
            tunnel: format!("{value:.2}"),
            ratio: String::new(),
            target: format!("< {max}"),
            met: value < max,
        }
    }

    fn plain(name: &str, value: String) -> Self {
        Row {
            name: name.into(),
            direct: String::new(),
            tunnel: value,
            ratio: String::new(),
            target: "—".into(),
            met: true,
        }
    }
}

fn print_report(rows: &[Row]) {
    println!("| measure | direct loopback | through rpf | ratio | target | met |");
    println!("|---|---:|---:|---:|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            r.direct,
            r.tunnel,
            r.ratio,
            r.target,
            if r.target == "—" {
                ""
            } else if r.met {
                "yes"
            } else {
                "**no**"
            }
        );
    }
}
