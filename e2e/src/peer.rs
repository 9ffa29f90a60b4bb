//! Traffic generators and checkers used by the test peer and the benchmark.
//!
//! Data is a seeded pseudo-random stream, hashed with SHA-256 on both ends,
//! so a single flipped, lost or reordered byte fails the comparison.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BLOCK: usize = 64 << 10;

/// What one end of a bulk transfer saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BulkReport {
    /// Bytes written.
    pub sent: u64,
    /// SHA-256 of the bytes written.
    pub sent_sha256: String,
    /// Bytes read until EOF.
    pub received: u64,
    /// SHA-256 of the bytes read.
    pub received_sha256: String,
}

/// Deterministic pseudo-random bytes (xorshift64*), fast enough not to be
/// the bottleneck of a throughput test.
#[derive(Debug, Clone)]
pub struct Pattern(u64);

impl Pattern {
    /// A stream for `seed`.
    pub fn new(seed: u64) -> Self {
        Pattern(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Fills `buf` with the next bytes of the stream.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Sends `n` pattern bytes, half-closes, and reads to EOF at the same time
/// (or, with `after_eof`, reads to EOF first and only then sends).
pub async fn bulk(
    tcp: TcpStream,
    n: u64,
    seed: u64,
    after_eof: bool,
) -> std::io::Result<BulkReport> {
    let (mut rd, mut wr) = tcp.into_split();
    let send = async move {
        let mut pattern = Pattern::new(seed);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; BLOCK];
        let mut left = n;
        while left > 0 {
            let len = left.min(BLOCK as u64) as usize;
            pattern.fill(&mut buf[..len]);
            hash.update(&buf[..len]);
            wr.write_all(&buf[..len]).await?;
            left -= len as u64;
        }
        wr.shutdown().await?;
        Ok::<_, std::io::Error>(hex::encode(hash.finalize()))
    };
    let recv = async move {
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; BLOCK];
        let mut total = 0u64;
        loop {
            let k = rd.read(&mut buf).await?;
            if k == 0 {
                break;
            }
            hash.update(&buf[..k]);
            total += k as u64;
        }
        Ok::<_, std::io::Error>((total, hex::encode(hash.finalize())))
    };
    let (sent_sha256, (received, received_sha256)) = if after_eof {
        let r = recv.await?;
        (send.await?, r)
    } else {
        tokio::try_join!(send, recv)?
    };
    Ok(BulkReport {
        sent: n,
        sent_sha256,
        received,
        received_sha256,
    })
}

/// Accept queue of the test servers: what Go servers get from the kernel
/// (`net.core.somaxconn`, 4,096 today), not the 128 of `std` and tokio.
/// With 128, a burst of 1,000 connections from the CLI overflows the
/// queue, SYN cookies fail for some and the kernel resets them: a property
/// of the peer, not of rpf.
const BACKLOG: u32 = 4096;

/// Listens on `addr` with a real server's accept queue ([`BACKLOG`]).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Echoes every connection on `listener` until the process ends.
pub async fn echo_server(listener: TcpListener) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let (mut rd, mut wr) = tcp.split();
            let _ = tokio::io::copy(&mut rd, &mut wr).await;
            let _ = wr.shutdown().await;
        });
    }
}

/// Result of [`many`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManyReport {
    /// Connections whose echo came back intact.
    pub ok: usize,
    /// Connections that failed.
    pub failed: usize,
    /// The first few errors.
    pub errors: Vec<String>,
}

/// Opens `n` connections to an echo server, all at once, then sends `bytes`
/// on each, half-closes, and checks the echo.
pub async fn many(addr: SocketAddr, n: usize, bytes: usize, keep_open: bool) -> ManyReport {
    let mut conns = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for _ in 0..n {
        match TcpStream::connect(addr).await {
            Ok(tcp) => conns.push(tcp),
            Err(e) => errors.push(format!("connect: {e}")),
        }
    }
    // With `keep_open`, every connection stays open (no half-close) until
    // all have their echo back, as long-lived connections do.
    let all_echoed = std::sync::Arc::new(tokio::sync::Barrier::new(conns.len()));
    // All are open now; only then does any of them talk.
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut tcp)| {
            let all_echoed = all_echoed.clone();
            tokio::spawn(async move {
                let mut data = vec![0u8; bytes];
                Pattern::new(i as u64).fill(&mut data);
                tcp.write_all(&data)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                let mut back = vec![0u8; bytes];
                let echoed = async {
                    if keep_open {
                        tcp.read_exact(&mut back).await.map(|_| ())
                    } else {
                        tcp.shutdown().await?;
                        back.clear();
                        tcp.read_to_end(&mut back).await.map(|_| ())
                    }
                };
                tokio::time::timeout(Duration::from_secs(60), echoed)
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| format!("read: {e}"))?;
                if keep_open {
                    // Bounded: a connection that failed never arrives.
                    let _ = tokio::time::timeout(Duration::from_secs(60), all_echoed.wait()).await;
                }
                if back == data {
                    Ok(())
                } else {
                    Err(format!(
                        "echo mismatch: sent {} bytes, got {}",
                        data.len(),
                        back.len()
                    ))
                }
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let failed = n - ok;
    errors.truncate(5);
    ManyReport { ok, failed, errors }
}

/// Result of [`probe_limit`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitReport {
    /// Connections opened and proven to work through an echo round trip.
    pub held: usize,
    /// What happened to one more: "refused" (reset or closed without
    /// data) or "served" (echoed).
    pub extra: String,
}

/// Holds `hold` working connections to an echo server, then tries one more.
pub async fn probe_limit(addr: SocketAddr, hold: usize) -> LimitReport {
    let mut held = Vec::new();
    for _ in 0..hold {
        let Ok(mut tcp) = TcpStream::connect(addr).await else {
            break;
        };
        let mut b = [0u8; 1];
        let echoed = async {
            tcp.write_all(b"x").await?;
            tcp.read_exact(&mut b).await
        };
        if tokio::time::timeout(Duration::from_secs(10), echoed)
            .await
            .is_ok_and(|r| r.is_ok())
        {
            held.push(tcp);
        }
    }
    let extra = match TcpStream::connect(addr).await {
        Err(_) => "refused".to_string(),
        Ok(mut tcp) => {
            let _ = tcp.write_all(b"x").await;
            let mut b = [0u8; 1];
            match tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut b)).await {
                Ok(Ok(1)) => "served".to_string(),
                Ok(_) => "refused".to_string(),
                Err(_) => "hung".to_string(),
            }
        }
    };
    LimitReport {
        held: held.len(),
        extra,
    }
}
