//! UDP traffic generators and checkers for the test peer and the
//! benchmark: an echo server, sequential request/response with checked
//! payloads, many flows at once, a flow-limit probe; and dnsmasq as a
//! real DNS server.
//!
//! Every datagram carries its sequence number and a payload derived from
//! it, so a lost, cut, corrupted or reordered datagram is caught.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use crate::peer::Pattern;

/// Largest UDP payload rpf carries (one IPv4 datagram).
pub const MAX_DATAGRAM: usize = 65_507;

/// Echoes every datagram back to its sender, forever.
pub async fn echo_server(socket: UdpSocket) {
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, from)) = socket.recv_from(&mut buf).await {
        let _ = socket.send_to(&buf[..n], from).await;
    }
}

/// A socket of the right family, connected to `addr`.
pub async fn connected(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("valid")
    } else {
        "[::]:0".parse().expect("valid")
    };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(addr).await?;
    Ok(socket)
}

/// The datagram number `seq` of a run: 8 bytes of sequence number, then
/// pattern bytes, `size` bytes in all (at least 8).
pub fn datagram(seq: u64, size: usize) -> Vec<u8> {
    let mut d = vec![0u8; size.max(8)];
    d[..8].copy_from_slice(&seq.to_be_bytes());
    Pattern::new(seq).fill(&mut d[8..]);
    d
}

/// Size of datagram `seq` in a mixed run: mostly small and typical sizes,
/// with the largest allowed every so often.
pub fn mixed_size(seq: u64, max: usize) -> usize {
    let size = match seq % 10 {
        0 => max,
        1 => 8,
        2 => 512,
        3 => 1_400,
        4 => 8_972,
        5 => 32_768,
        _ => 8 + (seq as usize * 7_919) % max,
    };
    size.clamp(8, max)
}

/// What a sequential request/response run saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqReport {
    /// Datagrams sent.
    pub sent: u64,
    /// Replies identical to what was sent, in order.
    pub intact: u64,
    /// Payload bytes sent.
    pub bytes: u64,
    /// The first problem, if any.
    pub error: Option<String>,
    /// Round-trip times in microseconds, sorted (benchmark only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rtt_us: Vec<u64>,
}

/// Sends `count` datagrams of mixed sizes up to `max` one at a time, each
/// waiting for its echo (`wait` at most) and checked byte for byte.
pub async fn sequential(
    addr: SocketAddr,
    count: u64,
    max: usize,
    wait: Duration,
    keep_rtt: bool,
) -> SeqReport {
    let mut report = SeqReport {
        sent: 0,
        intact: 0,
        bytes: 0,
        error: None,
        rtt_us: Vec::new(),
    };
    let socket = match connected(addr).await {
        Ok(s) => s,
        Err(e) => {
            report.error = Some(format!("socket: {e}"));
            return report;
        }
    };
    let mut buf = vec![0u8; 65_536];
    for seq in 0..count {
        let d = datagram(seq, mixed_size(seq, max));
        let started = Instant::now();
        if let Err(e) = socket.send(&d).await {
            report.error = Some(format!("send #{seq} ({} bytes): {e}", d.len()));
            break;
        }
        report.sent += 1;
        report.bytes += d.len() as u64;
        match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
            Ok(Ok(n)) if buf[..n] == d[..] => {
                report.intact += 1;
                if keep_rtt {
                    report.rtt_us.push(started.elapsed().as_micros() as u64);
                }
            }
            Ok(Ok(n)) => {
                let got = if n >= 8 {
                    u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"))
                } else {
                    u64::MAX
                };
                report.error = Some(format!(
                    "#{seq}: sent {} bytes, got {n} bytes of #{got}",
                    d.len()
                ));
                break;
            }
            Ok(Err(e)) => {
                report.error = Some(format!("recv #{seq}: {e}"));
                break;
            }
            Err(_) => {
                report.error = Some(format!(
                    "#{seq} ({} bytes): no reply within {wait:?}",
                    d.len()
                ));
                break;
            }
        }
    }
    report.rtt_us.sort_unstable();
    report
}

/// What many concurrent flows saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsReport {
    /// Flows (client sockets) opened.
    pub flows: usize,
    /// Flows whose every datagram came back intact.
    pub served: usize,
    /// The first problem, if any.
    pub error: Option<String>,
}

/// Opens `n` client sockets at once; each sends `rounds` datagrams one at
/// a time and checks every echo.
pub async fn many_flows(addr: SocketAddr, n: usize, rounds: u64, wait: Duration) -> FlowsReport {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(async move {
                let socket = connected(addr).await.map_err(|e| e.to_string())?;
                let mut buf = vec![0u8; 2048];
                for r in 0..rounds {
                    let seq = (i as u64) << 32 | r;
                    let d = datagram(seq, 64 + (i % 900));
                    socket.send(&d).await.map_err(|e| e.to_string())?;
                    let got = tokio::time::timeout(wait, socket.recv(&mut buf))
                        .await
                        .map_err(|_| format!("flow {i}: no reply to round {r} within {wait:?}"))?
                        .map_err(|e| format!("flow {i}: {e}"))?;
                    if buf[..got] != d[..] {
                        return Err(format!("flow {i}: round {r} came back wrong"));
                    }
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    let mut report = FlowsReport {
        flows: n,
        served: 0,
        error: None,
    };
    for t in tasks {
        match t.await {
            Ok(Ok(())) => report.served += 1,
            Ok(Err(e)) => {
                report.error.get_or_insert(e);
            }
            Err(e) => {
                report.error.get_or_insert(e.to_string());
            }
        }
    }
    report
}

/// What a flow-limit probe saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowLimitReport {
    /// Flows that were served (a reply came) while all were held open.
    pub held: usize,
    /// Whether the extra flow got a reply.
    pub extra_served: bool,
}

/// Opens `hold` flows (one echoed datagram each, sockets kept), then one
/// more whose datagram should go unanswered for `wait`.
pub async fn probe_flow_limit(addr: SocketAddr, hold: usize, wait: Duration) -> FlowLimitReport {
    let mut kept = Vec::new();
    let mut held = 0;
    let mut buf = vec![0u8; 2048];
    for i in 0..hold {
        let Ok(socket) = connected(addr).await else {
            continue;
        };
        let d = datagram(i as u64, 100);
        if socket.send(&d).await.is_ok() {
            if let Ok(Ok(n)) = tokio::time::timeout(wait, socket.recv(&mut buf)).await {
                if buf[..n] == d[..] {
                    held += 1;
                }
            }
        }
        kept.push(socket);
    }
    let extra_served = match connected(addr).await {
        Ok(socket) => {
            let d = datagram(999, 100);
            let _ = socket.send(&d).await;
            matches!(
                tokio::time::timeout(wait, socket.recv(&mut buf)).await,
                Ok(Ok(n)) if buf[..n] == d[..]
            )
        }
        Err(_) => false,
    };
    drop(kept);
    FlowLimitReport { held, extra_served }
}

/// Sends `count` datagrams of `size` bytes to `addr` from one socket as
/// fast as the kernel takes them, never reading; returns how many it took.
pub async fn flood(addr: SocketAddr, count: u64, size: usize) -> u64 {
    let Ok(socket) = connected(addr).await else {
        return 0;
    };
    let d = datagram(0, size);
    let mut sent = 0;
    for _ in 0..count {
        if socket.send(&d).await.is_ok() {
            sent += 1;
        }
    }
    sent
}

/// Sends one datagram from a fresh socket; whether its echo came back
/// within `wait`.
pub async fn once(addr: SocketAddr, wait: Duration) -> bool {
    let Ok(socket) = connected(addr).await else {
        return false;
    };
    let d = datagram(7, 100);
    let _ = socket.send(&d).await;
    let mut buf = vec![0u8; 2048];
    matches!(
        tokio::time::timeout(wait, socket.recv(&mut buf)).await,
        Ok(Ok(n)) if buf[..n] == d[..]
    )
}

/// dnsmasq on 127.0.0.1, configured by its arguments alone: it answers
/// every name under `.test` (the TLD reserved for tests) with 192.0.2.7,
/// over UDP and TCP. Stopped when dropped.
pub struct Dnsmasq {
    _process: crate::process::Background,
    /// The port it answers on, UDP and TCP.
    pub port: u16,
}

impl Dnsmasq {
    /// The answer to every `.test` name.
    pub const ANSWER: &'static str = "192.0.2.7";

    /// Starts dnsmasq and waits until it answers. It binds UDP and TCP on
    /// one port; a port free for UDP may be taken for TCP (another
    /// process's connection), so a dnsmasq that exits at once is tried
    /// again on another port.
    pub fn start() -> Self {
        for _ in 0..5 {
            let port = free_udp_and_tcp_port();
            let mut cmd = std::process::Command::new("sh");
            cmd.args([
                "-c",
                "echo starting; exec dnsmasq --no-daemon --conf-file=/dev/null --pid-file \
                 --port=\"$0\" --listen-address=127.0.0.1 --bind-interfaces \
                 --no-resolv --no-hosts --address=/test/192.0.2.7 2>/dev/null",
                &port.to_string(),
            ]);
            let mut process = crate::process::Background::start(cmd);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !process.exited() {
                let out = std::process::Command::new("dig")
                    .args([
                        "@127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "probe.test",
                        "+short",
                    ])
                    .args(["+time=1", "+tries=1"])
                    .output()
                    .expect("the UDP tests need dig (Debian package dnsutils)");
                if String::from_utf8_lossy(&out.stdout).trim() == Self::ANSWER {
                    return Dnsmasq {
                        _process: process,
                        port,
                    };
                }
                assert!(
                    Instant::now() < deadline,
                    "dnsmasq (Debian package dnsmasq-base) did not answer on port {port}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("dnsmasq (Debian package dnsmasq-base) exited on five ports in a row");
    }
}

/// A loopback port free for both UDP and TCP at the time of asking.
fn free_udp_and_tcp_port() -> u16 {
    loop {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("bind an ephemeral UDP port")
            .port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
