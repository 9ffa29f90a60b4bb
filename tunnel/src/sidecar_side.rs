//! The sidecar's end of a session: the HTTP/2 client.
//!
//! It says hello, binds what the CLI asks for in the pod's own network
//! namespace, and carries every accepted connection to the CLI on a stream
//! of its own. Everything a session opened lives under one cancellation
//! token: when the session ends, for whatever reason, its listeners close
//! at once (the ports are free again) and its connections are reset.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::control::{ControlReader, ControlWriter};
use crate::error::SessionError;
use crate::http2::{self, Keepalive, HANDSHAKE_TIMEOUT};
use crate::metrics::{ErrorType, Metrics};
use crate::pump::{self, splice, Meters, PumpError};
use rpf_proto::message::{
    BindErrorKind, BoundListener, ListenerSpec, Message, PodRef, RejectReason,
};
use rpf_proto::{version_mismatch, Side};
use rpf_proto::{wire, PROTOCOL_VERSION};

/// What the sidecar knows about itself, told to the CLI in its hello.
#[derive(Debug, Clone, Default)]
pub struct SidecarConfig {
    /// Its pod, from the downward API.
    pub pod: Option<PodRef>,
    /// Its host name.
    pub hostname: Option<String>,
    /// PING interval and timeout.
    pub keepalive: Keepalive,
}

/// How a session ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// The CLI said goodbye.
    Goodbye(String),
    /// We were asked to stop.
    Shutdown,
}

/// Runs one session over `io` until it ends.
///
/// Returns only once every listener of the session is closed, so the ports
/// are free by the time the caller hears that the session ended.
pub async fn run_session<T>(
    io: T,
    config: &SidecarConfig,
    metrics: &Metrics,
    shutdown: CancellationToken,
) -> Result<SessionEnd, SessionError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = shutdown.child_token();
    let accept_tasks = TaskTracker::new();
    let end = session_until_end(io, config, metrics, shutdown, &session, &accept_tasks).await;
    session.cancel();
    accept_tasks.close();
    accept_tasks.wait().await;
    end
}

async fn session_until_end<T>(
    io: T,
    config: &SidecarConfig,
    metrics: &Metrics,
    shutdown: CancellationToken,
    session: &CancellationToken,
    accept_tasks: &TaskTracker,
) -> Result<SessionEnd, SessionError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send_req, mut conn) = tokio::time::timeout(HANDSHAKE_TIMEOUT, http2::client_handshake(io))
        .await
        .map_err(|_| SessionError::Timeout(HANDSHAKE_TIMEOUT, "the HTTP/2 handshake"))?
        .map_err(|e| SessionError::Handshake(e.to_string()))?;
    let pings = conn.ping_pong().expect("ping_pong is taken once");
    let mut driver = tokio::spawn(conn);
    // Everything this session opens dies with it, even if we return early.
    let _close_all = session.clone().drop_guard();

    let mut send_req = send_req.ready().await.map_err(SessionError::lost)?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(wire::SESSION_URI)
        .body(())
        .expect("static request is valid");
    let (response, send) = send_req
        .send_request(request, false)
        .map_err(SessionError::lost)?;
    let mut ctl_out = ControlWriter::new(send);
    ctl_out.send(&Message::hello(config.pod.clone(), config.hostname.clone()))?;
    let response = tokio::time::timeout(HANDSHAKE_TIMEOUT, response)
        .await
        .map_err(|_| SessionError::Timeout(HANDSHAKE_TIMEOUT, "the CLI's answer"))?
        .map_err(SessionError::lost)?;
    if response.status() != StatusCode::OK {
        return Err(SessionError::Protocol(format!(
            "the CLI answered the session stream with HTTP {}",
            response.status()
        )));
    }
    let mut ctl_in = ControlReader::new(response.into_body());
    match ctl_in.next().await? {
        Some(Message::Hello { protocol, .. }) if protocol == PROTOCOL_VERSION => {}
        Some(Message::Hello {
            protocol, software, ..
        }) => {
            let msg = version_mismatch(PROTOCOL_VERSION, protocol, &software, Side::Sidecar);
            ctl_out.finish(&Message::Error {
                message: msg.clone(),
            });
            // h2 has no flush: let the driver write the error before we go.
            let _ = tokio::time::timeout(Duration::from_millis(500), &mut driver).await;
            return Err(SessionError::VersionMismatch(msg));
        }
        Some(Message::Error { message }) => return Err(SessionError::Remote(message)),
        Some(other) => {
            return Err(SessionError::Protocol(format!(
                "expected hello from the CLI, got {other:?}"
            )))
        }
        None => {
            return Err(SessionError::Lost(
                "the CLI closed the session before its hello".into(),
            ))
        }
    }
    metrics.sessions_active.inc();
    metrics.sessions_total.inc();
    let _session_gauge = GaugeGuard(metrics.sessions_active.clone());

    let keepalive = config.keepalive.run(pings, Side::Cli);
    tokio::pin!(keepalive);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<Message>();
    let ctx = Arc::new(Ctx {
        send_req,
        metrics: metrics.clone(),
        session: session.clone(),
        events: events_tx,
    });

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                ctl_out.finish(&Message::Goodbye { reason: "the sidecar is shutting down".into() });
                return Ok(SessionEnd::Shutdown);
            }
            msg = ctl_in.next() => match msg? {
                Some(Message::Bind { listeners }) => {
                    let reply = match bind_all(&listeners).await {
                        Ok(bound) => {
                            let report = bound.iter().map(|(id, ls)| BoundListener {
                                id: *id,
                                addrs: ls.iter().filter_map(|(l, _)| l.local_addr().ok()).collect(),
                            }).collect();
                            for (id, ls) in bound {
                                let spec = listeners.iter().find(|s| s.id == id).expect("bound from specs");
                                let limit = Arc::new(Semaphore::new(spec.max_connections as usize));
                                for (listener, _) in ls {
                                    accept_tasks.spawn(accept_loop(listener, spec.clone(), limit.clone(), ctx.clone()));
                                }
                            }
                            Message::Bound { listeners: report }
                        }
                        Err(failed) => failed,
                    };
                    ctl_out.send(&reply)?;
                }
                Some(Message::Goodbye { reason }) => return Ok(SessionEnd::Goodbye(reason)),
                Some(Message::Error { message }) => return Err(SessionError::Remote(message)),
                Some(other) => return Err(SessionError::Protocol(format!("unexpected message from the CLI: {other:?}"))),
                None => return Err(SessionError::Lost("the CLI closed the session".into())),
            },
            Some(event) = events_rx.recv() => ctl_out.send(&event)?,
            ended = &mut driver => {
                let why = match ended {
                    Ok(Ok(())) => "the CLI closed the channel".to_string(),
                    Ok(Err(e)) => format!("channel lost: {e}"),
                    Err(e) => format!("channel task failed: {e}"),
                };
                return Err(SessionError::Lost(why));
            }
            end = &mut keepalive => return Err(end),
        }
    }
}

/// State shared by a session's listeners and connections.
struct Ctx {
    send_req: SendRequest<Bytes>,
    metrics: Metrics,
    session: CancellationToken,
    events: mpsc::UnboundedSender<Message>,
}

/// Decrements a gauge when dropped, however the scope is left.
struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);
impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

type BoundSet = Vec<(u32, Vec<(TcpListener, SocketAddr)>)>;

/// Binds every listener of one request, or none: on the first failure the
/// ones already bound are dropped (closed) and the failure is reported.
async fn bind_all(specs: &[ListenerSpec]) -> Result<BoundSet, Message> {
    let mut bound: BoundSet = Vec::new();
    for spec in specs {
        let mut mine = Vec::new();
        for addr in &spec.addrs {
            let sa = SocketAddr::new(addr.ip, spec.port);
            match bind(sa) {
                Ok(l) => mine.push((l, sa)),
                Err(e) if !addr.required && family_missing(&e) => {
                    debug!("skipping {sa}: {e} (no such address family in this network namespace)");
                }
                Err(e) => {
                    return Err(Message::BindFailed {
                        id: spec.id,
                        addr: sa,
                        reason: crate::net::describe_io_error(&e),
                        kind: match e.kind() {
                            io::ErrorKind::AddrInUse => BindErrorKind::InUse,
                            io::ErrorKind::PermissionDenied => BindErrorKind::PermissionDenied,
                            _ if family_missing(&e) => BindErrorKind::AddressMissing,
                            _ => BindErrorKind::Other,
                        },
                    })
                }
            }
        }
        if mine.is_empty() {
            let sa = SocketAddr::new(
                spec.addrs
                    .first()
                    .map(|a| a.ip)
                    .unwrap_or(IpAddr::from([127, 0, 0, 1])),
                spec.port,
            );
            return Err(Message::BindFailed {
                id: spec.id,
                addr: sa,
                reason: "none of the requested addresses exists in the pod".into(),
                kind: BindErrorKind::AddressMissing,
            });
        }
        bound.push((spec.id, mine));
    }
    Ok(bound)
}

/// Binds without SO_REUSEADDR surprises: a port another process holds is
/// reported as in use, as `bind(2)` would.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // Reuse lets a port be bound again right after a session ends, while
    // its old connections sit in TIME_WAIT; it never steals a live listener.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn family_missing(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == 97 /* EAFNOSUPPORT */ || code == 99 /* EADDRNOTAVAIL */
    )
}

async fn accept_loop(
    listener: TcpListener,
    spec: ListenerSpec,
    limit: Arc<Semaphore>,
    ctx: Arc<Ctx>,
) {
    let local = listener.local_addr().ok();
    ctx.metrics.listeners_active.inc();
    let _gauge = GaugeGuard(ctx.metrics.listeners_active.clone());
    debug!(?local, id = spec.id, "listening");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = ctx.session.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!("accept on {local:?} failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !allowed(&spec.allow, peer.ip()) {
            reject(&ctx, &spec, &tcp, peer, RejectReason::NotAllowed);
            continue;
        }
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            reject(&ctx, &spec, &tcp, peer, RejectReason::Limit);
            continue;
        };
        let ctx = ctx.clone();
        let id = spec.id;
        tokio::spawn(async move {
            carry(tcp, peer, id, &ctx).await;
            drop(permit);
        });
    }
    debug!(?local, id = spec.id, "listener closed");
}

fn allowed(allow: &[IpNet], ip: IpAddr) -> bool {
    let ip = crate::net::canonical_ip(ip);
    allow.is_empty() || allow.iter().any(|net| net.contains(&ip))
}

fn reject(ctx: &Ctx, spec: &ListenerSpec, tcp: &TcpStream, peer: SocketAddr, reason: RejectReason) {
    pump::abort(tcp);
    ctx.metrics.rejected(reason).inc();
    match reason {
        RejectReason::Limit => info!(
            "refused connection from {peer} to port {}: limit of {} concurrent connections reached",
            spec.port, spec.max_connections
        ),
        RejectReason::NotAllowed => info!(
            "refused connection from {peer} to port {}: peer not in the allow list",
            spec.port
        ),
    }
    let _ = ctx.events.send(Message::Rejected {
        id: spec.id,
        peer,
        reason,
    });
}

/// Carries one pod connection to the CLI on a stream of its own.
async fn carry(tcp: TcpStream, peer: SocketAddr, id: u32, ctx: &Ctx) {
    let _ = tcp.set_nodelay(true);
    let started = Instant::now();
    let m = &ctx.metrics;
    m.active_connections.inc();
    let _gauge = GaugeGuard(m.active_connections.clone());
    let opened = async {
        let mut sender = ctx.send_req.clone().ready().await?;
        let request = Request::builder()
            .method(Method::POST)
            .uri(wire::CONNECT_URI)
            .header(wire::LISTENER_HEADER, id)
            .header(wire::PEER_HEADER, peer.to_string())
            .body(())
            .expect("valid request");
        sender.send_request(request, false)
    };
    let (response, send) = tokio::select! {
        _ = ctx.session.cancelled() => return pump::abort(&tcp),
        opened = opened => match opened {
            Ok(pair) => pair,
            Err(e) => {
                debug!("cannot open a stream for {peer}: {e}");
                m.error(ErrorType::Stream).inc();
                m.connections_failed.inc();
                return pump::abort(&tcp);
            }
        },
    };
    let answer = async {
        let response = response.await?;
        if response.status() != StatusCode::OK {
            let why = response
                .headers()
                .get(wire::ERROR_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("refused by the CLI")
                .to_string();
            return Err(PumpError::Refused(why));
        }
        Ok(response.into_body())
    };
    let meters = Meters {
        socket_to_stream: &m.bytes_pod_to_local,
        stream_to_socket: &m.bytes_local_to_pod,
    };
    match splice(tcp, send, answer, meters, &ctx.session).await {
        Ok(t) => {
            m.connections_ok.inc();
            debug!(
                "connection from {peer} closed: {} bytes out, {} bytes in",
                t.sent, t.received
            );
        }
        Err(PumpError::Refused(why)) => {
            m.connections_failed.inc();
            m.error(ErrorType::Dial).inc();
            debug!("connection from {peer} refused: {why}");
        }
        Err(e) => {
            m.connections_failed.inc();
            m.error(ErrorType::Stream).inc();
            debug!("connection from {peer} aborted: {e}");
        }
    }
    m.connection_duration
        .observe(started.elapsed().as_secs_f64());
}
