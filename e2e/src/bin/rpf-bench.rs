//! `rpf-bench`: measures the tunnel against direct loopback (and a plain
//! socat relay for latency) in one run, on this machine, and prints a
//! Markdown report. Targets are ratios within the run, because a shared
//! machine's absolute numbers drift from one minute to the next.
//!
//! Build everything in release mode first, then run it:
//! `cargo build --release --workspace --bins && target/release/rpf-bench`

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rpf_e2e::peer::{echo_server, listen, many};
use rpf_e2e::process::{bin, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

const BLOCK: usize = 256 << 10;

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
    let report = many(via.echo, 1000, 1024).await;
    let took = start.elapsed();
    if report.ok != 1000 {
        bail!("1,000 concurrent connections through the tunnel: {report:?}");
    }
    let start = Instant::now();
    let direct_many = many(direct.echo, 1000, 1024).await;
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

/// The three servers the benchmark talks to, on the host's loopback.
struct Servers {
    echo: SocketAddr,
    sink: SocketAddr,
    source: SocketAddr,
}

impl Servers {
    async fn start() -> anyhow::Result<Self> {
        let echo = listen(([127, 0, 0, 1], 0).into())?;
        let sink = listen(([127, 0, 0, 1], 0).into())?;
        let source = listen(([127, 0, 0, 1], 0).into())?;
        let s = Servers {
            echo: echo.local_addr()?,
            sink: sink.local_addr()?,
            source: source.local_addr()?,
        };
        tokio::spawn(echo_server(echo));
        // Sink: read to EOF, then close (the client times until it sees EOF).
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = sink.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; BLOCK];
                    while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
                    let _ = tcp.shutdown().await;
                });
            }
        });
        // Source: the client names the byte count in 8 bytes, then reads.
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = source.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(n) = tcp.read_u64().await else { return };
                    let buf = vec![0x5au8; BLOCK];
                    let mut left = n;
                    while left > 0 {
                        let k = left.min(BLOCK as u64) as usize;
                        if tcp.write_all(&buf[..k]).await.is_err() {
                            return;
                        }
                        left -= k as u64;
                    }
                    let _ = tcp.shutdown().await;
                });
            }
        });
        Ok(s)
    }
}

#[derive(Clone, Copy)]
struct Targets {
    echo: SocketAddr,
    sink: SocketAddr,
    source: SocketAddr,
}

/// `rpf attach --via 'rpf-sidecar stdio'` with one forward per server.
struct Tunnel {
    _attach: Killed,
    sidecar_pid: u32,
    echo: u16,
    sink: u16,
    source: u16,
}

impl Tunnel {
    async fn start(s: &Servers, sidecar: &std::path::Path) -> anyhow::Result<Self> {
        let (echo, sink, source) = (free_port(), free_port(), free_port());
        let pid_file = std::env::temp_dir().join(format!("rpf-bench-{}.pid", std::process::id()));
        let via = format!(
            "echo $$ > {}; exec {} -q stdio",
            pid_file.display(),
            sidecar.display()
        );
        let mut child = Command::new(bin("rpf"))
            .args(["attach", "-q", "--via", &via, "--max-connections", "2000"])
            .arg(format!("{echo}:{}", s.echo.port()))
            .arg(format!("{sink}:{}", s.sink.port()))
            .arg(format!("{source}:{}", s.source.port()))
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let lines = tokio::task::spawn_blocking(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .take(6)
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        let lines = tokio::time::timeout(Duration::from_secs(30), lines).await??;
        if lines.len() < 3 {
            bail!("rpf attach did not start: {lines:?}");
        }
        let sidecar_pid = std::fs::read_to_string(&pid_file)?.trim().parse()?;
        let _ = std::fs::remove_file(&pid_file);
        Ok(Tunnel {
            _attach: Killed(child),
            sidecar_pid,
            echo,
            sink,
            source,
        })
    }

    fn addr(&self, port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn upload(addr: SocketAddr, n: u64) -> anyhow::Result<Duration> {
    let mut tcp = TcpStream::connect(addr).await?;
    let buf = vec![0xa5u8; BLOCK];
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(BLOCK as u64) as usize;
        tcp.write_all(&buf[..k]).await?;
        left -= k as u64;
    }
    tcp.shutdown().await?;
    let mut rest = Vec::new();
    tcp.read_to_end(&mut rest).await?;
    Ok(start.elapsed())
}

async fn download(addr: SocketAddr, n: u64) -> anyhow::Result<Duration> {
    let mut tcp = TcpStream::connect(addr).await?;
    let start = Instant::now();
    tcp.write_u64(n).await?;
    let mut buf = vec![0u8; BLOCK];
    let mut got = 0u64;
    loop {
        let k = tcp.read(&mut buf).await?;
        if k == 0 {
            break;
        }
        got += k as u64;
    }
    if got != n {
        bail!("download from {addr}: {got} of {n} bytes");
    }
    Ok(start.elapsed())
}

async fn parallel_download(addr: SocketAddr, conns: usize, each: u64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(download(addr, each)))
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(start.elapsed())
}

/// p50 and p99 of 1-byte round trips, in microseconds.
async fn ping_pong(addr: SocketAddr, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut b = [0u8; 1];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 1000 {
        let start = Instant::now();
        tcp.write_all(b"x").await?;
        tcp.read_exact(&mut b).await?;
        if i >= 1000 {
            samples.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok((samples[n / 2], samples[n * 99 / 100]))
}

/// Connections per second with 4 clients: connect, 1-byte echo, close.
async fn conn_rate(addr: SocketAddr, n: usize) -> anyhow::Result<f64> {
    const WORKERS: usize = 4;
    let start = Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..n / WORKERS {
                    let mut tcp = TcpStream::connect(addr).await?;
                    tcp.set_nodelay(true)?;
                    tcp.write_all(b"x").await?;
                    let mut b = [0u8; 1];
                    tcp.read_exact(&mut b).await?;
                }
                Ok::<_, std::io::Error>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok((n / WORKERS * WORKERS) as f64 / start.elapsed().as_secs_f64())
}

async fn median<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Duration>>,
{
    let mut times = Vec::new();
    for _ in 0..runs.max(1) {
        times.push(f().await?);
    }
    times.sort();
    Ok(times[times.len() / 2])
}

async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("nothing listens on {addr}")
}

fn rss_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .with_context(|| format!("no {field} for pid {pid}"))
}

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
