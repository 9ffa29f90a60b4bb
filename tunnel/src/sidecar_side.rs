//! The sidecar's end of a session: the HTTP/2 client.
//!
//! It says hello, binds what the CLI asks for in the pod's own network
//! namespace, and carries every accepted connection to the CLI on a stream
//! of its own. Everything a session opened lives under one cancellation
//! token: when the session ends its listeners close at once (the ports are
//! free again) and its connections are reset.
//!
//! A session normally ends with its channel. Under `serve`, where the
//! process outlives its channels, a CLI may ask for a grace period: a
//! channel lost without a goodbye then only detaches the session, whose
//! listeners stay bound and whose new connections wait (bounded by each
//! listener's connection limit) until a channel resumes it with the
//! session's token, or the grace period ends.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::control::{ControlReader, ControlWriter};
use crate::datagram::{self, Flow, FlowEnd, FlowError, PushError, QueueRx, QueueTx, Sink};
use crate::error::{Closed, SessionError, Violation};
use crate::http2::{self, Keepalive, HANDSHAKE_TIMEOUT};
use crate::metrics::{DropReason, FlowOutcome};
use crate::metrics::{ErrorType, Metrics};
use crate::net::{allowed, connection_limit};
use crate::pump::{self, splice, Meters, PumpError};
use rpf_proto::message::{
    BindErrorKind, BoundListener, ListenerSpec, Message, PodRef, Protocol, RejectReason,
    SessionTicket,
};
use rpf_proto::Side;
use rpf_proto::{features, wire, MAX_DATAGRAM, MAX_GRACE};

/// What the sidecar knows about itself, told to the CLI in its hello.
#[derive(Debug, Clone, Default)]
pub struct SidecarConfig {
    /// Its pod, from the downward API.
    pub pod: Option<PodRef>,
    /// Its host name.
    pub hostname: Option<String>,
    /// PING interval and timeout.
    pub keepalive: Keepalive,
    /// Counts sessions that serve right now, for a readiness probe.
    pub readiness: Readiness,
}

/// How many sessions have their listeners bound *and* a channel to the CLI
/// attached: the sidecar of an `rpf expose` relay is ready for traffic only
/// then. A session parked in its grace period does not count: its
/// connections would wait for a CLI that may not come back, while another
/// relay with a live CLI can serve them at once.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<std::sync::atomic::AtomicUsize>);

impl Readiness {
    /// Sessions serving now.
    pub fn serving(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Whether at least one session serves.
    pub fn is_ready(&self) -> bool {
        self.serving() > 0
    }
}

/// How a session (or, for a resumable one, its channel) ended without error.
#[derive(Debug)]
pub enum SessionEnd {
    /// The CLI said goodbye.
    Goodbye(String),
    /// We were asked to stop.
    Shutdown,
    /// The channel was lost without a goodbye; the session keeps its
    /// listeners for `grace`, waiting for the CLI to resume it.
    Detached {
        /// Why the channel ended.
        cause: SessionError,
        /// How long the listeners stay.
        grace: Duration,
    },
}

/// Sessions that outlive their channel, shared by every channel of one
/// `serve` sidecar: a session whose channel was lost without a goodbye is
/// parked here for its grace period, and a channel that presents its token
/// takes it back.
#[derive(Clone, Default)]
pub struct Sessions {
    parked: Arc<Mutex<Vec<Parked>>>,
    epochs: Arc<AtomicU64>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("parked", &self.parked.lock().expect("lock").len())
            .finish()
    }
}

struct Parked {
    core: Arc<Core>,
    epoch: u64,
}

impl Sessions {
    /// Keeps `core` for its grace period, then closes it unless a channel
    /// took it back first.
    fn park(&self, core: Arc<Core>) {
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed);
        self.parked.lock().expect("lock").push(Parked {
            core: core.clone(),
            epoch,
        });
        let parked = self.parked.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(core.grace) => {}
                _ = core.session.cancelled() => {}
            }
            let expired = {
                let mut list = parked.lock().expect("lock");
                let before = list.len();
                list.retain(|p| p.epoch != epoch);
                list.len() != before
            };
            if expired {
                info!(
                    "no channel came back within {:?}: closing the session's listeners",
                    core.grace
                );
                core.close().await;
            }
        });
    }

    /// The parked session `token` names, taken out of the waiting list.
    /// Every parked token is compared, each in constant time, so the time
    /// taken says nothing about how close a guess was.
    fn take(&self, token: &str) -> Option<Arc<Core>> {
        let mut list = self.parked.lock().expect("lock");
        let mut found = None;
        for (i, p) in list.iter().enumerate() {
            let same = p
                .core
                .token
                .as_deref()
                .is_some_and(|t| same_token(t, token));
            if same && !p.core.session.is_cancelled() {
                found = Some(i);
            }
        }
        found.map(|i| list.swap_remove(i).core)
    }

    /// How many sessions wait for their CLI.
    pub fn parked(&self) -> usize {
        self.parked.lock().expect("lock").len()
    }
}

/// Compares two tokens without stopping at the first difference.
fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A new session token: 256 random bits from the kernel, in hex.
fn new_token() -> Option<String> {
    let mut bytes = [0u8; 32];
    match getrandom::getrandom(&mut bytes) {
        Ok(()) => Some(bytes.iter().map(|b| format!("{b:02x}")).collect()),
        Err(e) => {
            warn!("no randomness for a session token ({e}); this session cannot be resumed");
            None
        }
    }
}

/// Runs one session over `io` until it ends; the session ends with its
/// channel (`stdio`: the process ends with its channel too).
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
    run(io, config, metrics, shutdown, None).await
}

/// Runs one channel of a session that may outlive it (`serve`): the channel
/// either starts a session or resumes a parked one from `sessions`. When
/// the channel is lost without a goodbye and the CLI asked for a grace
/// period, the session is parked with its listeners bound
/// ([`SessionEnd::Detached`]); otherwise, as [`run_session`].
pub async fn run_resumable_session<T>(
    io: T,
    config: &SidecarConfig,
    metrics: &Metrics,
    shutdown: CancellationToken,
    sessions: &Sessions,
) -> Result<SessionEnd, SessionError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    run(io, config, metrics, shutdown, Some(sessions)).await
}

async fn run<T>(
    io: T,
    config: &SidecarConfig,
    metrics: &Metrics,
    shutdown: CancellationToken,
    sessions: Option<&Sessions>,
) -> Result<SessionEnd, SessionError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut core = None;
    let end = channel_until_end(io, config, metrics, &shutdown, sessions, &mut core).await;
    let Some(core) = core else { return end };
    core.detach();
    match (end, sessions) {
        (Err(e), Some(sessions))
            if e.is_retryable() && core.token.is_some() && !shutdown.is_cancelled() =>
        {
            let grace = core.grace;
            sessions.park(core);
            Ok(SessionEnd::Detached { cause: e, grace })
        }
        (end, _) => {
            core.close().await;
            end
        }
    }
}

async fn channel_until_end<T>(
    io: T,
    config: &SidecarConfig,
    metrics: &Metrics,
    shutdown: &CancellationToken,
    sessions: Option<&Sessions>,
    core: &mut Option<Arc<Core>>,
) -> Result<SessionEnd, SessionError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send_req, mut conn) = tokio::time::timeout(HANDSHAKE_TIMEOUT, http2::client_handshake(io))
        .await
        .map_err(|_| SessionError::Timeout(HANDSHAKE_TIMEOUT, "the HTTP/2 handshake"))?
        .map_err(|e| SessionError::Handshake {
            expected: Side::Cli,
            source: e,
        })?;
    let pings = conn.ping_pong().expect("ping_pong is taken once");
    let mut driver = tokio::spawn(conn);

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
    let mut hello = Message::hello(config.pod.clone(), config.hostname.clone());
    if let Message::Hello {
        resume, features, ..
    } = &mut hello
    {
        *resume = sessions.is_some();
        *features = vec![features::UDP.to_string()];
    }
    ctl_out.send(&hello)?;
    let response = tokio::time::timeout(HANDSHAKE_TIMEOUT, response)
        .await
        .map_err(|_| SessionError::Timeout(HANDSHAKE_TIMEOUT, "the CLI's answer"))?
        .map_err(SessionError::lost)?;
    if response.status() != StatusCode::OK {
        return Err(SessionError::Protocol {
            peer: Side::Cli,
            violation: Violation::Status {
                status: response.status(),
            },
        });
    }
    let mut ctl_in = ControlReader::new(response.into_body(), Side::Cli);
    match ctl_in.hello(Side::Sidecar).await {
        Ok(_) => {}
        Err(mismatch @ SessionError::VersionMismatch { .. }) => {
            ctl_out.finish(&Message::Error {
                message: mismatch.to_string(),
            });
            // h2 has no flush: let the driver write the error before we go.
            let _ = tokio::time::timeout(Duration::from_millis(500), &mut driver).await;
            return Err(mismatch);
        }
        Err(e) => return Err(e),
    }

    let keepalive = config.keepalive.run(pings, Side::Cli);
    tokio::pin!(keepalive);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel::<Message>();
    let link = Link {
        send_req,
        events: events_tx,
        channel: shutdown.child_token(),
    };
    // Connections carried on this channel die with it, even on early return.
    let _reset_on_exit = link.channel.clone().drop_guard();

    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                ctl_out.finish(&Message::Goodbye { reason: "the sidecar is shutting down".into() });
                return Ok(SessionEnd::Shutdown);
            }
            msg = ctl_in.next() => match msg? {
                Some(Message::Bind { listeners, grace_ms }) => {
                    let core = core.get_or_insert_with(|| {
                        let grace = match sessions {
                            Some(_) => Duration::from_millis(grace_ms).min(MAX_GRACE),
                            None => Duration::ZERO,
                        };
                        let core = Core::new(grace, metrics, shutdown, &config.readiness);
                        core.attach(&link);
                        core
                    });
                    let reply = match bind_all(&listeners).await {
                        Ok(bound) => {
                            let report: Vec<BoundListener> = bound.iter().map(|(id, ls)| BoundListener {
                                id: *id,
                                addrs: ls.iter().filter_map(|(l, _)| l.local_addr().ok()).collect(),
                            }).collect();
                            for (id, ls) in bound {
                                let spec = listeners.iter().find(|s| s.id == id).expect("bound from specs");
                                let limit = Arc::new(connection_limit(spec.max_connections));
                                for (listener, _) in ls {
                                    match listener {
                                        Socket::Tcp(l) => core.accept_tasks.spawn(accept_loop(l, spec.clone(), limit.clone(), core.clone())),
                                        Socket::Udp(u) => core.accept_tasks.spawn(udp_loop(u, spec.clone(), limit.clone(), core.clone())),
                                    };
                                }
                            }
                            core.bound.lock().expect("lock").extend(report.iter().cloned());
                            core.set_serving(true);
                            Message::Bound { listeners: report, session: core.ticket() }
                        }
                        Err(failed) => failed,
                    };
                    ctl_out.send(&reply)?;
                }
                Some(Message::Resume { token }) => {
                    let reply = match (sessions, core.is_some()) {
                        (_, true) => Message::ResumeFailed {
                            reason: "this channel already has a session".into(),
                        },
                        (None, _) => Message::ResumeFailed {
                            reason: "this sidecar keeps no session beyond its channel".into(),
                        },
                        (Some(sessions), false) => match sessions.take(&token) {
                            Some(found) => {
                                found.attach(&link);
                                found.set_serving(true);
                                info!("session resumed; its listeners never closed");
                                let reply = Message::Resumed {
                                    listeners: found.bound.lock().expect("lock").clone(),
                                    session: found.ticket().expect("parked sessions have a ticket"),
                                };
                                *core = Some(found);
                                reply
                            }
                            None => {
                                info!("refused to resume a session: unknown or expired token");
                                Message::ResumeFailed {
                                    reason: "no session with this token: it expired, ended, or belongs to another sidecar".into(),
                                }
                            }
                        },
                    };
                    ctl_out.send(&reply)?;
                }
                Some(Message::Goodbye { reason }) => return Ok(SessionEnd::Goodbye(reason)),
                Some(Message::Error { message }) => return Err(SessionError::Remote { peer: Side::Cli, message }),
                Some(other) => return Err(SessionError::unexpected(Side::Cli, "a bind, resume, goodbye or error message", &other)),
                None => return Err(SessionError::Closed { peer: Side::Cli, what: Closed::Session }),
            },
            Some(event) = events_rx.recv() => ctl_out.send(&event)?,
            ended = &mut driver => return Err(http2::driver_ended(ended, Side::Cli)),
            end = &mut keepalive => return Err(end),
        }
    }
}

/// A session: its listeners, the connections they accepted, and the channel
/// it is attached to, if any. Lives as long as the session, which with a
/// grace period is longer than one channel.
struct Core {
    /// Set only when the session may outlive its channel.
    token: Option<String>,
    grace: Duration,
    metrics: Metrics,
    /// Everything the session opened; cancelled when it ends.
    session: CancellationToken,
    accept_tasks: TaskTracker,
    /// The channel connections are carried on; `None` between channels,
    /// when accepted connections wait for the next one.
    link: watch::Sender<Option<Link>>,
    /// What `Bound` reported, repeated in `Resumed`.
    bound: Mutex<Vec<BoundListener>>,
    /// Whether this session counts in `readiness`.
    serving: std::sync::atomic::AtomicBool,
    readiness: Readiness,
    _gauge: GaugeGuard,
}

/// One channel, as the connections of a session see it.
#[derive(Clone)]
struct Link {
    send_req: SendRequest<Bytes>,
    events: mpsc::UnboundedSender<Message>,
    /// Cancelled when the channel ends: its connections are reset.
    channel: CancellationToken,
}

impl Core {
    fn new(
        grace: Duration,
        metrics: &Metrics,
        shutdown: &CancellationToken,
        readiness: &Readiness,
    ) -> Arc<Self> {
        let token = if grace.is_zero() { None } else { new_token() };
        metrics.sessions_active.inc();
        metrics.sessions_total.inc();
        Arc::new(Core {
            token,
            grace,
            metrics: metrics.clone(),
            session: shutdown.child_token(),
            accept_tasks: TaskTracker::new(),
            link: watch::Sender::new(None),
            bound: Mutex::new(Vec::new()),
            serving: std::sync::atomic::AtomicBool::new(false),
            readiness: readiness.clone(),
            _gauge: GaugeGuard(metrics.sessions_active.clone()),
        })
    }

    /// Counts this session in [`Readiness`] while it has listeners bound
    /// and a channel attached; idempotent.
    fn set_serving(&self, serving: bool) {
        let serving = serving && !self.bound.lock().expect("lock").is_empty();
        if self.serving.swap(serving, Ordering::SeqCst) != serving {
            if serving {
                self.readiness.0.fetch_add(1, Ordering::SeqCst);
            } else {
                self.readiness.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    fn ticket(&self) -> Option<SessionTicket> {
        self.token.as_ref().map(|token| SessionTicket {
            token: token.clone(),
            grace_ms: self.grace.as_millis().try_into().unwrap_or(u64::MAX),
        })
    }

    /// Connections (waiting ones first) now flow on `link`.
    fn attach(&self, link: &Link) {
        self.link.send_replace(Some(link.clone()));
    }

    /// The channel is gone: its connections are reset, new ones wait.
    fn detach(&self) {
        self.set_serving(false);
        if let Some(link) = self.link.send_replace(None) {
            link.channel.cancel();
        }
    }

    /// Ends the session; returns once every listener is closed.
    async fn close(&self) {
        self.session.cancel();
        self.accept_tasks.close();
        self.accept_tasks.wait().await;
    }

    /// The channel to carry a connection on, waiting for one if there is
    /// none; `None` once the session ends.
    async fn next_link(&self) -> Option<Link> {
        let mut rx = self.link.subscribe();
        let found = tokio::select! {
            _ = self.session.cancelled() => return None,
            found = rx.wait_for(|l| l.as_ref().is_some_and(|l| !l.channel.is_cancelled())) => found,
        };
        found.ok().and_then(|l| l.clone())
    }

    /// Tells the CLI about an event, if a channel is attached; between
    /// channels it is only counted, so nothing piles up.
    fn event(&self, msg: Message) {
        if let Some(link) = self.link.borrow().as_ref() {
            let _ = link.events.send(msg);
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        self.set_serving(false);
    }
}

/// Decrements a gauge when dropped, however the scope is left.
struct GaugeGuard(prometheus_client::metrics::gauge::Gauge);
impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A bound listener socket of either protocol.
enum Socket {
    Tcp(TcpListener),
    Udp(UdpSocket),
}

impl Socket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Socket::Tcp(l) => l.local_addr(),
            Socket::Udp(u) => u.local_addr(),
        }
    }
}

type BoundSet = Vec<(u32, Vec<(Socket, SocketAddr)>)>;

/// Binds every listener of one request, or none: on the first failure the
/// ones already bound are dropped (closed) and the failure is reported.
async fn bind_all(specs: &[ListenerSpec]) -> Result<BoundSet, Message> {
    let mut bound: BoundSet = Vec::new();
    for spec in specs {
        let mut mine = Vec::new();
        for addr in &spec.addrs {
            let sa = SocketAddr::new(addr.ip, spec.port);
            let bound = match spec.protocol {
                Protocol::Tcp => bind(sa).map(Socket::Tcp),
                Protocol::Udp => bind_udp(sa).map(Socket::Udp),
            };
            match bound {
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
    // The accept queue Go servers get (the kernel caps it at
    // `net.core.somaxconn`): a burst of pod connections waits, not resets.
    socket.listen(4096)
}

/// Binds a UDP socket. No SO_REUSEADDR: for UDP it would let two sockets
/// share the port (and split its datagrams) instead of reporting it in use.
fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
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
    ctx: Arc<Core>,
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
        // Connections waiting for a channel hold a slot too: the limit
        // bounds the queue as well as the connections in flight.
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

fn reject(
    ctx: &Core,
    spec: &ListenerSpec,
    tcp: &TcpStream,
    peer: SocketAddr,
    reason: RejectReason,
) {
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
    ctx.event(Message::Rejected {
        id: spec.id,
        peer,
        reason,
    });
}

/// Carries one pod connection to the CLI on a stream of its own, on the
/// session's current channel; between channels it waits for the next one.
async fn carry(tcp: TcpStream, peer: SocketAddr, id: u32, ctx: &Core) {
    let _ = tcp.set_nodelay(true);
    let started = Instant::now();
    let m = &ctx.metrics;
    m.active_connections.inc();
    let _gauge = GaugeGuard(m.active_connections.clone());
    let (link, (response, send)) = loop {
        let Some(link) = ctx.next_link().await else {
            return pump::abort(&tcp);
        };
        let sender = link.send_req.clone();
        let opened = async move {
            let mut sender = sender.ready().await?;
            let request = Request::builder()
                .method(Method::POST)
                .uri(wire::CONNECT_URI)
                .header(wire::LISTENER_HEADER, id)
                .header(wire::PEER_HEADER, peer.to_string())
                .body(())
                .expect("valid request");
            sender.send_request(request, false)
        };
        let channel = link.channel.clone();
        let failed = tokio::select! {
            _ = channel.cancelled() => continue,
            opened = opened => match opened {
                Ok(pair) => break (link, pair),
                Err(e) => e,
            },
        };
        // No byte of this connection has left yet: if its channel is dying,
        // the connection can wait for the next one instead of failing.
        debug!("cannot open a stream for {peer}: {failed}");
        if tokio::time::timeout(HANDSHAKE_TIMEOUT, link.channel.cancelled())
            .await
            .is_err()
        {
            m.error(ErrorType::Stream).inc();
            m.connections_failed.inc();
            return pump::abort(&tcp);
        }
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
    let result = splice(tcp, send, answer, meters, &link.channel).await;
    m.connection_finished(&result, started.elapsed());
    match result {
        Ok(t) => debug!(
            "connection from {peer} closed: {} bytes out, {} bytes in",
            t.sent, t.received
        ),
        Err(PumpError::Refused(why)) => debug!("connection from {peer} refused: {why}"),
        Err(e) => debug!("connection from {peer} aborted: {e}"),
    }
}

/// Peer events (`rejected`) one UDP listener socket sends to the CLI per
/// second at most: every datagram of a refused peer is a new refusal, and
/// the control stream must not carry a flood. The rest are only counted.
const UDP_EVENTS_PER_SECOND: u32 = 10;

/// How much later than the CLI the sidecar ends an idle flow. The CLI
/// decides idleness and closes the stream cleanly; the sidecar's own timer
/// is only a backstop for a CLI that never does. Two equal timers would race
/// and the loser would see a reset instead of an idle end.
const UDP_IDLE_BACKSTOP: Duration = Duration::from_secs(2);

/// Receives the datagrams of one UDP listener socket and hands each to the
/// flow of its peer address, opening a flow for a new peer (within the
/// allow list and the flow limit).
async fn udp_loop(socket: UdpSocket, spec: ListenerSpec, limit: Arc<Semaphore>, ctx: Arc<Core>) {
    let socket = Arc::new(socket);
    let local = socket.local_addr().ok();
    let m = &ctx.metrics;
    m.listeners_active.inc();
    let _gauge = GaugeGuard(m.listeners_active.clone());
    let idle = spec.udp_idle_timeout();
    let max_flows = spec.max_connections as usize;
    let mut flows: std::collections::HashMap<SocketAddr, QueueTx> = Default::default();
    let mut events = EventBudget::default();
    // One receive buffer per listener socket, never per flow.
    let mut buf = vec![0u8; datagram::RECV_BUF];
    debug!(?local, id = spec.id, "listening (udp)");
    loop {
        let (n, peer) = tokio::select! {
            _ = ctx.session.cancelled() => break,
            received = socket.recv_from(&mut buf) => match received {
                Ok(r) => r,
                Err(e) => {
                    debug!("receive on {local:?} failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if n > MAX_DATAGRAM {
            m.udp.pod_to_local.dropped(DropReason::TooLarge);
            continue;
        }
        let mut datagram = bytes::Bytes::copy_from_slice(&buf[..n]);
        if let Some(queue) = flows.get(&peer) {
            match queue.push(datagram) {
                Ok(dropped) => {
                    m.udp.pod_to_local.dropped_n(DropReason::QueueFull, dropped);
                    continue;
                }
                // That flow ended (idle, refused): this datagram opens a new one.
                Err(PushError::Closed(d)) => {
                    flows.remove(&peer);
                    datagram = d;
                }
            }
        }
        let refused = if !allowed(&spec.allow, peer.ip()) {
            Some((RejectReason::NotAllowed, DropReason::NotAllowed))
        } else {
            None
        };
        let permit = match refused {
            Some(_) => None,
            None => limit.clone().try_acquire_owned().ok(),
        };
        let Some(permit) = permit else {
            let (reason, drop) = refused.unwrap_or((RejectReason::Limit, DropReason::Limit));
            m.udp.pod_to_local.dropped(drop);
            m.rejected(reason).inc();
            if events.take() {
                info!(
                    "dropped a datagram from {peer} to UDP port {}: {}",
                    spec.port,
                    match reason {
                        RejectReason::Limit =>
                            format!("limit of {} concurrent flows reached", spec.max_connections),
                        RejectReason::NotAllowed => "peer not in the allow list".into(),
                    }
                );
                ctx.event(Message::Rejected {
                    id: spec.id,
                    peer,
                    reason,
                });
            }
            continue;
        };
        // Ended flows leave their entry behind: sweep them before the map
        // outgrows the live ones, which the limit bounds.
        if flows.len() >= max_flows {
            flows.retain(|_, q| !q.is_closed());
        }
        let (queue, outbox) = datagram::queue();
        let _ = queue.push(datagram);
        flows.insert(peer, queue);
        let ctx = ctx.clone();
        let socket = socket.clone();
        let id = spec.id;
        tokio::spawn(async move {
            carry_flow(&socket, peer, id, outbox, idle, &ctx).await;
            drop(permit);
        });
    }
    debug!(?local, id = spec.id, "listener closed (udp)");
}

/// A per-second budget of events sent to the CLI.
#[derive(Debug, Default)]
struct EventBudget {
    window: Option<Instant>,
    used: u32,
}

impl EventBudget {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        if self
            .window
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.used = 0;
        }
        self.used += 1;
        self.used <= UDP_EVENTS_PER_SECOND
    }
}

/// Carries one UDP flow (one pod peer) to the CLI on a stream of its own,
/// on the session's current channel; between channels it waits (its queue
/// bounded, its idle timeout running).
async fn carry_flow(
    socket: &UdpSocket,
    peer: SocketAddr,
    id: u32,
    outbox: QueueRx,
    idle: Duration,
    ctx: &Core,
) {
    let m = &ctx.metrics;
    m.udp.active_flows.inc();
    let _gauge = GaugeGuard(m.udp.active_flows.clone());
    let opened = tokio::time::timeout(idle, async {
        loop {
            let link = ctx.next_link().await?;
            let mut sender = match link.send_req.clone().ready().await {
                Ok(s) => s,
                Err(e) => {
                    debug!("cannot open a stream for UDP peer {peer}: {e}");
                    link.channel.cancelled().await;
                    continue;
                }
            };
            let request = Request::builder()
                .method(Method::POST)
                .uri(wire::UDP_URI)
                .header(wire::LISTENER_HEADER, id)
                .header(wire::PEER_HEADER, peer.to_string())
                .body(())
                .expect("valid request");
            match sender.send_request(request, false) {
                Ok(pair) => return Some((link, pair)),
                Err(e) => {
                    debug!("cannot open a stream for UDP peer {peer}: {e}");
                    link.channel.cancelled().await;
                }
            }
        }
    })
    .await;
    let (link, (response, send)) = match opened {
        Ok(Some(opened)) => opened,
        // The session ended, or no channel came within the idle timeout.
        Ok(None) => return m.udp.ended(FlowOutcome::Closed),
        Err(_) => return m.udp.ended(FlowOutcome::Idle),
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
    let flow = Flow {
        outbox,
        sink: Sink::Peer(socket, peer),
        source: std::future::pending(),
        idle: idle + UDP_IDLE_BACKSTOP,
        out_meters: &m.udp.pod_to_local,
        in_meters: &m.udp.local_to_pod,
        cancel: &link.channel,
    };
    let outcome = match datagram::run_flow(flow, send, answer).await {
        Ok(FlowEnd::Idle) => FlowOutcome::Idle,
        Ok(FlowEnd::Closed) => FlowOutcome::Closed,
        Err(FlowError::Refused) => {
            debug!("UDP flow from {peer}: the target on the CLI's side refused it");
            FlowOutcome::Refused
        }
        Err(FlowError::Pump(PumpError::Cancelled)) => FlowOutcome::Closed,
        Err(e) => {
            debug!("UDP flow from {peer} aborted: {e}");
            FlowOutcome::Error
        }
    };
    m.udp.ended(outcome);
}
