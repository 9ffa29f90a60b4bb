//! Both ends of a session in one process, over an in-memory pipe, with
//! real TCP sockets at the edges: the layer between unit tests and the
//! end-to-end tests with separate processes.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rpf_proto::message::{BindAddr, ListenerSpec, Protocol};
use rpf_proto::Side;
use rpf_tunnel::cli_side::{handshake, CliConfig, Forward, Resume};
use rpf_tunnel::error::SessionError;
use rpf_tunnel::http2::Keepalive;
use rpf_tunnel::metrics::Metrics;
use rpf_tunnel::sidecar_side::{
    run_resumable_session, run_session, SessionEnd, Sessions, SidecarConfig,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// A forward on an ephemeral port in the "pod" (port 0: the sidecar reports
/// the port it got).
fn forward(local_port: u16) -> Forward {
    Forward {
        listener: ListenerSpec {
            id: 1,
            port: 0,
            addrs: vec![BindAddr {
                ip: "127.0.0.1".parse().unwrap(),
                required: true,
            }],
            max_connections: 10,
            allow: vec![],
            protocol: Protocol::Tcp,
            idle_timeout_ms: 0,
        },
        local_host: "127.0.0.1".into(),
        local_port,
    }
}

async fn udp_echo_server() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn udp_datagrams_cross_whole_and_a_second_peer_is_a_second_flow() {
    let local = udp_echo_server().await;
    let (cli_io, sidecar_io) = tokio::io::duplex(1 << 20);
    let stop = CancellationToken::new();
    let sidecar_metrics = Metrics::new(Side::Sidecar);
    tokio::spawn({
        let (stop, m) = (stop.clone(), sidecar_metrics.clone());
        async move { run_session(sidecar_io, &SidecarConfig::default(), &m, stop).await }
    });
    let mut forward = forward(local);
    forward.listener.protocol = Protocol::Udp;
    let metrics = Metrics::new(Side::Cli);
    let greeted = handshake(cli_io, &CliConfig::new(vec![forward]), &metrics)
        .await
        .unwrap();
    assert!(greeted.sidecar.udp, "the sidecar announces UDP");
    let session = greeted.bind().await.unwrap();
    let bound: SocketAddr = session.bound[0].addrs[0];
    tokio::spawn(session.serve(stop.clone()));

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.connect(bound).await.unwrap();
    let mut buf = vec![0u8; 65_536];
    for size in [0usize, 1, 512, 1400, 9000, 65_507] {
        let datagram: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        client.send(&datagram).await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no echo of {size} bytes"))
            .unwrap();
        assert_eq!(&buf[..n], &datagram[..], "{size} bytes");
    }
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other.connect(bound).await.unwrap();
    other.send(b"second").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), other.recv(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"second");
    let text = metrics.render();
    assert!(
        text.contains("rpf_portforward_reverse_udp_active_flows 2"),
        "{text}"
    );
    assert!(
        text.contains("rpf_portforward_reverse_udp_datagrams_total{direction=\"pod_to_local\"} 7"),
        "{text}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_crosses_and_goodbye_frees_the_port() {
    let local = echo_server().await;
    let (cli_io, sidecar_io) = tokio::io::duplex(1 << 20);
    let sidecar_stop = CancellationToken::new();
    let sidecar = tokio::spawn({
        let stop = sidecar_stop.clone();
        async move {
            run_session(
                sidecar_io,
                &SidecarConfig::default(),
                &Metrics::new(Side::Sidecar),
                stop,
            )
            .await
        }
    });
    let config = CliConfig::new(vec![forward(local)]);
    let metrics = Metrics::new(Side::Cli);
    let session = handshake(cli_io, &config, &metrics)
        .await
        .unwrap()
        .bind()
        .await
        .unwrap();
    let bound: SocketAddr = session.bound[0].addrs[0];
    assert_ne!(bound.port(), 0);

    let mut tcp = TcpStream::connect(bound).await.unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tcp.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    let stop = CancellationToken::new();
    let serving = tokio::spawn(session.serve(stop.clone()));
    stop.cancel();
    serving.await.unwrap().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), sidecar)
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_ok(), "{end:?}");
    assert!(
        TcpStream::connect(bound).await.is_err(),
        "the port is free after goodbye"
    );
    // The open connection was reset along with the session.
    let n = tcp.read(&mut buf).await;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    sidecar_stop.cancel();
}

/// Passes bytes until `dead` is set, then swallows writes and never yields
/// a read again: a channel that dies without closing.
struct BlackHole {
    inner: DuplexStream,
    dead: Arc<AtomicBool>,
}

impl AsyncRead for BlackHole {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.dead.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for BlackHole {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.dead.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(data.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, data)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_channel_is_declared_dead_by_keepalive_on_both_ends() {
    let local = echo_server().await;
    let (cli_io, sidecar_io) = tokio::io::duplex(1 << 20);
    let dead = Arc::new(AtomicBool::new(false));
    let cli_io = BlackHole {
        inner: cli_io,
        dead: dead.clone(),
    };
    let keepalive = Keepalive {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(300),
    };
    let sidecar_config = SidecarConfig {
        keepalive,
        ..SidecarConfig::default()
    };
    let sidecar = tokio::spawn(async move {
        run_session(
            sidecar_io,
            &sidecar_config,
            &Metrics::new(Side::Sidecar),
            CancellationToken::new(),
        )
        .await
    });
    let mut config = CliConfig::new(vec![forward(local)]);
    config.keepalive = keepalive;
    let session = handshake(cli_io, &config, &Metrics::new(Side::Cli))
        .await
        .unwrap()
        .bind()
        .await
        .unwrap();
    let bound = session.bound[0].addrs[0];
    dead.store(true, Ordering::SeqCst);
    let cli_end = tokio::time::timeout(
        Duration::from_secs(5),
        session.serve(CancellationToken::new()),
    )
    .await
    .expect("the CLI notices");
    assert!(
        matches!(
            &cli_end,
            Err(SessionError::Keepalive {
                peer: Side::Sidecar,
                ..
            })
        ),
        "{cli_end:?}"
    );
    let sidecar_end = tokio::time::timeout(Duration::from_secs(5), sidecar)
        .await
        .expect("the sidecar notices")
        .unwrap();
    assert!(
        matches!(
            &sidecar_end,
            Err(SessionError::Lost { .. }
                | SessionError::Keepalive {
                    peer: Side::Cli,
                    ..
                })
        ),
        "{sidecar_end:?}"
    );
    assert!(
        TcpStream::connect(bound).await.is_err(),
        "the dead session's port is free"
    );
}

/// A channel made of two pipes and a relay between them: aborting the
/// relay loses the channel on both ends at once, as a killed connector
/// (port-forward, socat) does.
fn cuttable_channel() -> (DuplexStream, DuplexStream, tokio::task::JoinHandle<()>) {
    let (cli, mut cli_inner) = tokio::io::duplex(1 << 20);
    let (sidecar, mut sidecar_inner) = tokio::io::duplex(1 << 20);
    let relay = tokio::spawn(async move {
        let _ = tokio::io::copy_bidirectional(&mut cli_inner, &mut sidecar_inner).await;
    });
    (cli, sidecar, relay)
}

fn resumable_sidecar(
    io: DuplexStream,
    sessions: &Sessions,
) -> tokio::task::JoinHandle<Result<SessionEnd, SessionError>> {
    let sessions = sessions.clone();
    tokio::spawn(async move {
        run_resumable_session(
            io,
            &SidecarConfig::default(),
            &Metrics::new(Side::Sidecar),
            CancellationToken::new(),
            &sessions,
        )
        .await
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_channel_keeps_the_session_and_only_its_token_resumes_it() {
    let local = echo_server().await;
    let sessions = Sessions::default();
    let mut config = CliConfig::new(vec![forward(local)]);
    config.grace = Duration::from_secs(3600);
    let metrics = Metrics::new(Side::Cli);

    let (cli_io, sidecar_io, relay) = cuttable_channel();
    let sidecar = resumable_sidecar(sidecar_io, &sessions);
    let greeted = handshake(cli_io, &config, &metrics).await.unwrap();
    assert!(greeted.sidecar.resume, "serve-mode sidecars offer resume");
    let session = greeted.bind().await.unwrap();
    let ticket = session
        .ticket
        .clone()
        .expect("a grace period was asked for");
    assert_eq!(
        Duration::from_millis(ticket.grace_ms),
        rpf_proto::MAX_GRACE,
        "the sidecar caps the grace"
    );
    assert_eq!(ticket.token.len(), 64);
    let first_bound = session.bound.clone();
    let bound = first_bound[0].addrs[0];
    let cli = tokio::spawn(session.serve(CancellationToken::new()));

    relay.abort();
    let end = tokio::time::timeout(Duration::from_secs(5), sidecar)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(end, Ok(SessionEnd::Detached { .. })), "{end:?}");
    let cli_end = tokio::time::timeout(Duration::from_secs(5), cli)
        .await
        .unwrap()
        .unwrap();
    assert!(cli_end.is_err_and(|e| e.is_retryable()));
    assert_eq!(sessions.parked(), 1);

    // In the gap the port is still bound; a connection waits.
    let mut tcp = TcpStream::connect(bound).await.expect("still listening");
    tcp.write_all(b"waited").await.unwrap();

    let (cli_io, sidecar_io, _relay) = cuttable_channel();
    let sidecar = resumable_sidecar(sidecar_io, &sessions);
    let greeted = handshake(cli_io, &config, &metrics).await.unwrap();
    let Resume::Refused(greeted, reason) = greeted.resume(&"0".repeat(64)).await.unwrap() else {
        panic!("a wrong token must not resume the session");
    };
    assert!(reason.contains("no session with this token"), "{reason}");
    assert_eq!(sessions.parked(), 1, "a wrong guess leaves the session be");
    let Resume::Resumed(session) = greeted.resume(&ticket.token).await.unwrap() else {
        panic!("the right token resumes it on the same channel");
    };
    assert_eq!(session.bound, first_bound, "nothing was bound anew");
    assert_eq!(sessions.parked(), 0);
    let stop = CancellationToken::new();
    let cli = tokio::spawn(session.serve(stop.clone()));

    let mut buf = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut buf))
        .await
        .expect("the waiting connection flows once the session is back")
        .unwrap();
    assert_eq!(&buf, b"waited");

    stop.cancel();
    cli.await.unwrap().unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), sidecar)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(end, Ok(SessionEnd::Goodbye(_))), "{end:?}");
    assert!(
        TcpStream::connect(bound).await.is_err(),
        "goodbye frees the port at once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_session_that_ends_with_its_channel_offers_no_resume() {
    let local = echo_server().await;
    let (cli_io, sidecar_io, relay) = cuttable_channel();
    let sidecar = tokio::spawn(async move {
        run_session(
            sidecar_io,
            &SidecarConfig::default(),
            &Metrics::new(Side::Sidecar),
            CancellationToken::new(),
        )
        .await
    });
    let mut config = CliConfig::new(vec![forward(local)]);
    config.grace = Duration::from_secs(30);
    let greeted = handshake(cli_io, &config, &Metrics::new(Side::Cli))
        .await
        .unwrap();
    assert!(!greeted.sidecar.resume);
    let session = greeted.bind().await.unwrap();
    assert!(session.ticket.is_none());
    let bound = session.bound[0].addrs[0];
    let _cli = tokio::spawn(session.serve(CancellationToken::new()));
    relay.abort();
    let end = tokio::time::timeout(Duration::from_secs(5), sidecar)
        .await
        .unwrap()
        .unwrap();
    assert!(end.is_err(), "{end:?}");
    assert!(
        TcpStream::connect(bound).await.is_err(),
        "no grace: the port closes with the channel"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grace_period_ends_the_session_and_frees_the_port() {
    let local = echo_server().await;
    let sessions = Sessions::default();
    let mut config = CliConfig::new(vec![forward(local)]);
    config.grace = Duration::from_millis(300);
    let (cli_io, sidecar_io, relay) = cuttable_channel();
    let sidecar = resumable_sidecar(sidecar_io, &sessions);
    let session = handshake(cli_io, &config, &Metrics::new(Side::Cli))
        .await
        .unwrap()
        .bind()
        .await
        .unwrap();
    let ticket = session.ticket.clone().unwrap();
    let bound = session.bound[0].addrs[0];
    let _cli = tokio::spawn(session.serve(CancellationToken::new()));
    relay.abort();
    let end = sidecar.await.unwrap();
    assert!(matches!(end, Ok(SessionEnd::Detached { .. })), "{end:?}");
    let mut freed = false;
    for _ in 0..250 {
        // (A reset is not it: probes made in the grace period wait, and
        // past the connection limit they are refused with a reset.)
        let probe = TcpStream::connect(bound).await;
        if probe.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused) {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(freed, "the port is free after the grace period");
    assert_eq!(sessions.parked(), 0);

    let (cli_io, sidecar_io, _relay) = cuttable_channel();
    let _sidecar = resumable_sidecar(sidecar_io, &sessions);
    let greeted = handshake(cli_io, &config, &Metrics::new(Side::Cli))
        .await
        .unwrap();
    assert!(matches!(
        greeted.resume(&ticket.token).await.unwrap(),
        Resume::Refused(..)
    ));
}
