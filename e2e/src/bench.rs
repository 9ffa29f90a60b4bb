//! What the benchmarks share: servers to measure against, a tunnel through
//! `rpf attach --via` with a local sidecar, the traffic shapes (bulk both
//! ways, ping-pong, connection churn) and memory readings from /proc.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::peer::{echo_server, listen};
use crate::process::{bin, free_port};

/// Write and read size of the bulk transfers.
pub const BLOCK: usize = 256 << 10;

/// The three servers the benchmark talks to, on the host's loopback.
pub struct Servers {
    /// Echoes what it reads.
    pub echo: SocketAddr,
    /// Reads to EOF, then closes.
    pub sink: SocketAddr,
    /// Sends the byte count the client names in 8 bytes.
    pub source: SocketAddr,
}

impl Servers {
    /// Starts the three servers on the host's loopback.
    pub async fn start() -> anyhow::Result<Self> {
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

/// `rpf attach --via 'rpf-sidecar stdio'` forwarding a port in the "pod"
/// (here the host) to each server.
pub struct Tunnel {
    attach: Killed,
    /// The sidecar's process id.
    pub sidecar_pid: u32,
    /// The pod-side port of the echo server.
    pub echo: u16,
    /// The pod-side port of the sink.
    pub sink: u16,
    /// The pod-side port of the source.
    pub source: u16,
}

impl Tunnel {
    /// Starts the tunnel with `sidecar` as the far end.
    pub async fn start(s: &Servers, sidecar: &std::path::Path) -> anyhow::Result<Self> {
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
            attach: Killed(child),
            sidecar_pid,
            echo,
            sink,
            source,
        })
    }

    /// The CLI's process id.
    pub fn cli_pid(&self) -> u32 {
        self.attach.0.id()
    }

    /// A pod-side port as an address on the loopback.
    pub fn addr(&self, port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }
}

/// A child process killed and reaped when dropped.
pub struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `n` bytes to a sink; the time until it closes.
pub async fn upload(addr: SocketAddr, n: u64) -> anyhow::Result<Duration> {
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

/// Reads `n` bytes from a source; the time until the last one.
pub async fn download(addr: SocketAddr, n: u64) -> anyhow::Result<Duration> {
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

/// `conns` downloads of `each` bytes at once; the time for all.
pub async fn parallel_download(
    addr: SocketAddr,
    conns: usize,
    each: u64,
) -> anyhow::Result<Duration> {
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
pub async fn ping_pong(addr: SocketAddr, n: usize) -> anyhow::Result<(f64, f64)> {
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
pub async fn conn_rate(addr: SocketAddr, n: usize) -> anyhow::Result<f64> {
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

/// The median of `runs` timings.
pub async fn median<F, Fut>(runs: usize, mut f: F) -> anyhow::Result<Duration>
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

/// Waits up to 2 s for something to listen on `addr`.
pub async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("nothing listens on {addr}")
}

/// A memory figure of a process from /proc, in KiB (`VmRSS`, `VmHWM`).
pub fn rss_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .with_context(|| format!("no {field} for pid {pid}"))
}
