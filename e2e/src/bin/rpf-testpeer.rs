//! `rpf-testpeer`: the client and server processes of the end-to-end tests.
//! Runs inside a network namespace (the "pod") or on the host, prints one
//! JSON report per line on stdout.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use std::time::Duration;

use rpf_e2e::{peer, udp_peer};

/// How long a UDP reply may take before the run counts it lost.
const WAIT: Duration = Duration::from_secs(10);
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Connect, send N bytes and read to EOF; report both hashes.
    Bulk {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        send: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Accept connections; on each send N bytes and read to EOF.
    ServeBulk {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        send: u64,
        #[arg(long, default_value_t = 2)]
        seed: u64,
        /// Read to EOF before sending (proves half-close reaches us).
        #[arg(long)]
        after_eof: bool,
    },
    /// Echo server.
    Echo {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// N simultaneous connections to an echo server, each checked.
    Many {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        connections: usize,
        #[arg(long, default_value_t = 1000)]
        bytes: usize,
        /// Keep every connection open (no half-close) until all are echoed.
        #[arg(long)]
        keep_open: bool,
    },
    /// Hold N echo connections, then try one more.
    ProbeLimit {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        hold: usize,
    },
    /// UDP echo server.
    UdpEcho {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// COUNT datagrams of mixed sizes up to MAX, one at a time, each echo
    /// checked.
    UdpSeq {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: u64,
        #[arg(long, default_value_t = rpf_e2e::udp_peer::MAX_DATAGRAM)]
        max: usize,
    },
    /// N client sockets at once, ROUNDS echoed datagrams each.
    UdpMany {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        flows: usize,
        #[arg(long, default_value_t = 3)]
        rounds: u64,
    },
    /// Hold N echoed flows, then try one more.
    UdpProbeLimit {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        hold: usize,
    },
    /// One datagram from a fresh socket: was it echoed?
    UdpOnce {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long, default_value_t = 3)]
        wait_secs: u64,
    },
    /// Send COUNT datagrams of SIZE bytes as fast as possible, never read.
    UdpFlood {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        count: u64,
        #[arg(long, default_value_t = 1200)]
        size: usize,
    },
    /// Just listen (to occupy a port).
    Listen {
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Bulk {
            connect,
            send,
            seed,
        } => {
            let tcp = TcpStream::connect(connect).await?;
            let report = peer::bulk(tcp, send, seed, false).await?;
            println!("{}", serde_json::to_string(&report)?);
        }
        Cmd::ServeBulk {
            listen,
            send,
            seed,
            after_eof,
        } => {
            let listener = peer::listen(listen)?;
            println!("listening {}", listener.local_addr()?);
            loop {
                let (tcp, _) = listener.accept().await?;
                tokio::spawn(async move {
                    match peer::bulk(tcp, send, seed, after_eof).await {
                        Ok(r) => println!("{}", serde_json::to_string(&r).expect("json")),
                        Err(e) => println!("{{\"error\":{:?}}}", e.to_string()),
                    }
                });
            }
        }
        Cmd::Echo { listen } => {
            let listener = peer::listen(listen)?;
            println!("listening {}", listener.local_addr()?);
            peer::echo_server(listener).await;
        }
        Cmd::Many {
            connect,
            connections,
            bytes,
            keep_open,
        } => {
            let report = peer::many(connect, connections, bytes, keep_open).await;
            println!("{}", serde_json::to_string(&report)?);
        }
        Cmd::ProbeLimit { connect, hold } => {
            let report = peer::probe_limit(connect, hold).await;
            println!("{}", serde_json::to_string(&report)?);
        }
        Cmd::UdpEcho { listen } => {
            let socket = tokio::net::UdpSocket::bind(listen).await?;
            println!("listening {}", socket.local_addr()?);
            udp_peer::echo_server(socket).await;
        }
        Cmd::UdpSeq {
            connect,
            count,
            max,
        } => {
            let report = udp_peer::sequential(connect, count, max, WAIT, false).await;
            println!("{}", serde_json::to_string(&report)?);
        }
        Cmd::UdpMany {
            connect,
            flows,
            rounds,
        } => {
            let report = udp_peer::many_flows(connect, flows, rounds, WAIT).await;
            println!("{}", serde_json::to_string(&report)?);
        }
        Cmd::UdpProbeLimit { connect, hold } => {
            let report = udp_peer::probe_flow_limit(connect, hold, Duration::from_secs(2)).await;
            println!("{}", serde_json::to_string(&report)?);
        }
        Cmd::UdpOnce { connect, wait_secs } => {
            let echoed = udp_peer::once(connect, Duration::from_secs(wait_secs)).await;
            println!("{{\"echoed\":{echoed}}}");
        }
        Cmd::UdpFlood {
            connect,
            count,
            size,
        } => {
            let sent = udp_peer::flood(connect, count, size).await;
            println!("{{\"sent\":{sent}}}");
        }
        Cmd::Listen { listen } => {
            let listener = peer::listen(listen)?;
            println!("listening {}", listener.local_addr()?);
            std::future::pending::<()>().await;
        }
    }
    Ok(())
}
