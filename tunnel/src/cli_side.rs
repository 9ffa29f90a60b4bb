//! The CLI's end of a session: the HTTP/2 server.
//!
//! [`handshake`] runs HTTP/2 and the hellos (the sidecar is then known, so
//! errors can name it); [`Greeted::bind`] binds every listener, so the
//! caller can print `Forwarding from` lines; [`Established::serve`] then carries connections until the session
//! ends. The sidecar is untrusted: a connection stream only names a
//! listener id, the CLI dials what its own [`Forward`] says, and the
//! connection limits are enforced here as well as in the pod (the allow
//! list only as a check on a buggy sidecar: the peer address is its word).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::control::{ControlReader, ControlWriter};
use crate::datagram::{self, Flow, FlowEnd, FlowError};
use crate::error::{Closed, SessionError, Violation};
use crate::events::{millis, ConnectionEvent, Outcome, Output};
use crate::http2::{self, Keepalive, HANDSHAKE_TIMEOUT};
use crate::metrics::FlowOutcome;
use crate::metrics::{ErrorType, Metrics};
use crate::net::{allowed, connection_limit, describe_io_error, dial};
use crate::pump::{splice, Meters, PumpError, Transferred};
use crate::ratelimit::Throttle;
use rpf_proto::message::{
    BindAddr, BoundListener, ListenerSpec, Message, PodRef, Protocol, RejectReason, SessionTicket,
};
use rpf_proto::wire;
use rpf_proto::Side;

/// One reverse port forward, as the user asked for it: the listener the
/// sidecar opens in the pod (the wire type both ends share) and what this
/// side dials for each of its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The listener in the pod, sent as is in the `bind`.
    pub listener: ListenerSpec,
    /// Host dialed on this side.
    pub local_host: String,
    /// Port dialed on this side.
    pub local_port: u16,
}

impl Forward {
    /// What this side dials, `HOST:PORT` (`[::1]:PORT` for IPv6).
    pub fn target(&self) -> String {
        if self.local_host.contains(':') {
            format!("[{}]:{}", self.local_host, self.local_port)
        } else {
            format!("{}:{}", self.local_host, self.local_port)
        }
    }
}

/// Session settings on the CLI side.
#[derive(Debug, Clone)]
pub struct CliConfig {
    /// The forwards to set up.
    pub forwards: Vec<Forward>,
    /// PING interval and timeout.
    pub keepalive: Keepalive,
    /// How long the sidecar should keep the session's listeners after the
    /// channel is lost without a goodbye (zero: close them at once).
    pub grace: Duration,
    /// How connection events are printed.
    pub output: Output,
}

impl CliConfig {
    /// Settings with the default keepalive and no grace period.
    pub fn new(forwards: Vec<Forward>) -> Self {
        Self {
            forwards,
            keepalive: Keepalive::default(),
            grace: Duration::ZERO,
            output: Output::Human,
        }
    }
}

/// What the sidecar said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SidecarInfo {
    /// Its rpf release.
    pub software: String,
    /// Its pod, when it knows it.
    pub pod: Option<PodRef>,
    /// Its host name.
    pub hostname: Option<String>,
    /// Whether it can keep a session through a lost channel and resume it.
    pub resume: bool,
    /// Whether it carries UDP (its hello listed the `udp` feature).
    pub udp: bool,
}

/// A session whose listeners are all bound.
pub struct Established {
    /// Who answered.
    pub sidecar: SidecarInfo,
    /// Where each forward is bound in the pod.
    pub bound: Vec<BoundListener>,
    /// How to resume this session after a lost channel; `None` when the
    /// sidecar will close its listeners with the channel.
    pub ticket: Option<SessionTicket>,
    channel: Channel,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established")
            .field("sidecar", &self.sidecar)
            .field("bound", &self.bound)
            .finish()
    }
}

/// The channel under one session, from the hellos on: the session stream
/// both ways, the HTTP/2 connection's task and PINGs, and what the
/// connection handlers share. [`Greeted`] and [`Established`] are this
/// plus what each step learned, so a step hands it on whole.
struct Channel {
    ctl_in: ControlReader,
    ctl_out: ControlWriter,
    driver: JoinHandle<Result<(), h2::Error>>,
    stop_driver: Option<oneshot::Sender<()>>,
    /// Taken by the keepalive when the session starts serving.
    pings: Option<h2::PingPong>,
    state: Arc<State>,
    keepalive: Keepalive,
}

impl Channel {
    /// Sends `last`, ends the session stream and stops the connection,
    /// giving the message up to 2 s to leave (h2 has no flush); never
    /// hangs.
    async fn close(&mut self, last: &Message) {
        self.ctl_out.finish(last);
        if let Some(stop) = self.stop_driver.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.driver).await;
    }

    /// The next answer to a request, skipping events; errors end here.
    async fn reply(&mut self, what: &'static str) -> Result<Option<Message>, SessionError> {
        loop {
            let msg = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.ctl_in.next())
                .await
                .map_err(|_| SessionError::Timeout(HANDSHAKE_TIMEOUT, what))??;
            match msg {
                Some(Message::Rejected { .. }) => continue,
                Some(Message::Error { message }) => return Err(remote(message)),
                other => return Ok(other),
            }
        }
    }
}

/// Shared by the connection handlers of one session.
struct State {
    /// Each forward with its connection limit, in the order given.
    forwards: Vec<(Forward, Semaphore)>,
    metrics: Metrics,
    /// Fires when the session ends: open connections are reset.
    ended: CancellationToken,
    output: Output,
}

impl State {
    fn forward(&self, id: u32) -> Option<&(Forward, Semaphore)> {
        self.forwards.iter().find(|(f, _)| f.listener.id == id)
    }
}

/// Runs the handshake over `io`: HTTP/2, then hellos both ways.
pub async fn handshake<T>(
    io: T,
    config: &CliConfig,
    metrics: &Metrics,
) -> Result<Greeted, SessionError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let max_streams = config
        .forwards
        .iter()
        .map(|f| f.listener.max_connections)
        .fold(16u32, u32::saturating_add);
    let mut conn =
        tokio::time::timeout(HANDSHAKE_TIMEOUT, http2::server_handshake(io, max_streams))
            .await
            .map_err(|_| {
                SessionError::Timeout(HANDSHAKE_TIMEOUT, "the sidecar's HTTP/2 handshake")
            })?
            .map_err(handshake_error)?;
    let pings = conn.ping_pong().expect("ping_pong is taken once");
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.accept())
        .await
        .map_err(|_| SessionError::Timeout(HANDSHAKE_TIMEOUT, "the sidecar's session stream"))?;
    let (request, mut respond) = match first {
        Some(Ok(pair)) => pair,
        Some(Err(e)) => return Err(handshake_error(e)),
        None => {
            return Err(SessionError::Closed {
                peer: Side::Sidecar,
                what: Closed::ChannelBeforeSession,
            })
        }
    };
    if request.uri().path() != wire::SESSION_PATH {
        return Err(SessionError::Protocol {
            peer: Side::Sidecar,
            violation: Violation::NotSessionStream {
                path: rpf_proto::untrusted::escape_cut(
                    request.uri().path(),
                    rpf_proto::untrusted::MAX_CHARS,
                ),
            },
        });
    }

    let state = Arc::new(State {
        forwards: config
            .forwards
            .iter()
            .map(|f| (f.clone(), connection_limit(f.listener.max_connections)))
            .collect(),
        metrics: metrics.clone(),
        ended: CancellationToken::new(),
        output: config.output,
    });
    let (stop_tx, stop_rx) = oneshot::channel();
    let driver = tokio::spawn(drive(conn, state.clone(), stop_rx));

    let send = respond
        .send_response(Response::new(()), false)
        .map_err(SessionError::lost)?;
    let mut channel = Channel {
        ctl_in: ControlReader::new(request.into_body(), Side::Sidecar),
        ctl_out: ControlWriter::new(send),
        driver,
        stop_driver: Some(stop_tx),
        pings: Some(pings),
        state,
        keepalive: config.keepalive,
    };
    let step = |what| SessionError::Timeout(HANDSHAKE_TIMEOUT, what);
    let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, channel.ctl_in.hello(Side::Cli))
        .await
        .map_err(|_| step("the sidecar's hello"))?;
    let hello = match hello {
        Err(mismatch @ SessionError::VersionMismatch { .. }) => {
            let message = mismatch.to_string();
            channel.close(&Message::Error { message }).await;
            return Err(mismatch);
        }
        other => other?,
    };
    let sidecar = SidecarInfo {
        udp: hello.features.iter().any(|f| f == rpf_proto::features::UDP),
        software: hello.software,
        pod: hello.pod,
        hostname: hello.hostname,
        resume: hello.resume,
    };
    channel.ctl_out.send(&Message::hello(None, None))?;
    Ok(Greeted {
        sidecar,
        channel,
        grace: config.grace,
    })
}

/// What came of asking the sidecar to resume a session.
// Both variants are a whole session's state; one value per reconnect.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Resume {
    /// The session is back, with the listeners it never closed.
    Resumed(Established),
    /// The sidecar has no such session (expired, ended, another pod); the
    /// channel is still good for [`Greeted::bind`].
    Refused(Greeted, String),
}

/// A session whose hellos are exchanged: the sidecar is known, nothing is
/// bound yet.
pub struct Greeted {
    /// Who answered.
    pub sidecar: SidecarInfo,
    channel: Channel,
    grace: Duration,
}

impl std::fmt::Debug for Greeted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Greeted")
            .field("sidecar", &self.sidecar)
            .finish()
    }
}

impl Greeted {
    /// Asks the sidecar to bind every forward, all or none.
    pub async fn bind(mut self) -> Result<Established, SessionError> {
        // An older sidecar ignores `protocol` and would bind TCP instead:
        // refuse before asking.
        if !self.sidecar.udp {
            let forwards = &self.channel.state.forwards;
            if let Some((f, _)) = forwards
                .iter()
                .find(|(f, _)| f.listener.protocol == Protocol::Udp)
            {
                let unsupported = SessionError::UdpUnsupported {
                    sidecar: self.sidecar.software.clone(),
                    port: f.listener.port,
                };
                self.channel
                    .close(&Message::Goodbye {
                        reason: "UDP is not supported by this sidecar".into(),
                    })
                    .await;
                return Err(unsupported);
            }
        }
        let listeners = self
            .channel
            .state
            .forwards
            .iter()
            .map(|(f, _)| f.listener.clone())
            .collect();
        // Only a sidecar that can resume is asked for grace: with any other
        // there would be nothing to come back to.
        let grace = if self.sidecar.resume {
            self.grace
        } else {
            Duration::ZERO
        };
        self.channel.ctl_out.send(&Message::Bind {
            listeners,
            grace_ms: grace.as_millis().try_into().unwrap_or(u64::MAX),
        })?;
        match self.channel.reply("the sidecar to bind").await? {
            Some(Message::Bound { listeners, session }) => Ok(self.established(listeners, session)),
            Some(Message::BindFailed {
                id,
                addr,
                reason,
                kind,
            }) => {
                self.channel
                    .close(&Message::Goodbye {
                        reason: format!("cannot bind {addr}"),
                    })
                    .await;
                Err(SessionError::BindFailed {
                    id,
                    addr,
                    reason,
                    kind,
                })
            }
            Some(other) => Err(unexpected("the bind result", &other)),
            None => Err(closed_session()),
        }
    }

    /// Asks the sidecar to re-attach the session `token` names; only for a
    /// sidecar whose hello offered it ([`SidecarInfo::resume`]).
    pub async fn resume(mut self, token: &str) -> Result<Resume, SessionError> {
        self.channel.ctl_out.send(&Message::Resume {
            token: token.to_string(),
        })?;
        match self.channel.reply("the sidecar to resume").await? {
            Some(Message::Resumed { listeners, session }) => {
                let resumed = self.established(listeners, Some(session));
                Ok(Resume::Resumed(resumed))
            }
            Some(Message::ResumeFailed { reason }) => Ok(Resume::Refused(self, reason)),
            Some(other) => Err(unexpected("the resume result", &other)),
            None => Err(closed_session()),
        }
    }

    fn established(self, bound: Vec<BoundListener>, ticket: Option<SessionTicket>) -> Established {
        self.channel.state.metrics.sessions_total.inc();
        Established {
            sidecar: self.sidecar,
            bound,
            // The token goes back to the sidecar verbatim; a sane one is
            // short hex, anything else is not worth keeping.
            ticket: ticket.filter(|t| {
                t.grace_ms > 0
                    && (1..=MAX_TOKEN_LEN).contains(&t.token.len())
                    && t.token.bytes().all(|b| b.is_ascii_hexdigit())
            }),
            channel: self.channel,
        }
    }
}

/// Longest session token the CLI keeps (the sidecar issues 64 hex digits).
const MAX_TOKEN_LEN: usize = 128;

fn unexpected(expected: &'static str, got: &Message) -> SessionError {
    SessionError::unexpected(Side::Sidecar, expected, got)
}

fn remote(message: String) -> SessionError {
    SessionError::Remote {
        peer: Side::Sidecar,
        message,
    }
}

fn closed_session() -> SessionError {
    SessionError::Closed {
        peer: Side::Sidecar,
        what: Closed::Session,
    }
}

impl Established {
    /// Carries connections until `shutdown` fires (`Ok`: goodbye said) or
    /// the session is lost (`Err`: the caller may reconnect).
    pub async fn serve(mut self, shutdown: CancellationToken) -> Result<(), SessionError> {
        let channel = &mut self.channel;
        let _reset_connections = channel.state.ended.clone().drop_guard();
        let pings = channel.pings.take().expect("a session serves once");
        let keepalive = channel.keepalive.run(pings, Side::Sidecar);
        tokio::pin!(keepalive);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    channel.close(&Message::Goodbye { reason: "rpf attach is exiting".into() }).await;
                    return Ok(());
                }
                msg = channel.ctl_in.next() => match msg? {
                    Some(Message::Rejected { id, peer, reason }) => {
                        let state = &channel.state;
                        let forward = state.forward(id).map(|(f, _)| f);
                        let port = forward.map(|f| f.listener.port).unwrap_or(0);
                        state.metrics.rejected(reason).inc();
                        let protocol = forward.map(|f| f.listener.protocol).unwrap_or_default();
                        let udp = protocol == Protocol::Udp;
                        let event = ConnectionEvent::Refused { port, peer, protocol, reason };
                        static REFUSALS: Throttle = Throttle::new();
                        state.output.report_limited(&REFUSALS, &event, || match reason {
                            RejectReason::Limit if udp => crate::warn_limited!(
                                "dropped datagrams from {peer} to UDP port {port} in the pod: limit of {} concurrent flows reached (raise it with --max-connections)",
                                forward.map(|f| f.listener.max_connections).unwrap_or(0)
                            ),
                            RejectReason::NotAllowed if udp => crate::warn_limited!(
                                "dropped datagrams from {peer} to UDP port {port} in the pod: peer not in --allow"
                            ),
                            RejectReason::Limit => crate::warn_limited!(
                                "refused connection from {peer} to port {port} in the pod: limit of {} concurrent connections reached (raise it with --max-connections)",
                                forward.map(|f| f.listener.max_connections).unwrap_or(0)
                            ),
                            RejectReason::NotAllowed => crate::warn_limited!(
                                "refused connection from {peer} to port {port} in the pod: peer not in --allow"
                            ),
                        });
                    }
                    Some(Message::Goodbye { reason }) => {
                        return Err(SessionError::Ended { peer: Side::Sidecar, reason })
                    }
                    Some(Message::Error { message }) => return Err(remote(message)),
                    Some(other) => return Err(unexpected("a rejected, goodbye or error message", &other)),
                    None => return Err(closed_session()),
                },
                ended = &mut channel.driver => return Err(http2::driver_ended(ended, Side::Sidecar)),
                end = &mut keepalive => return Err(end),
            }
        }
    }
}

fn handshake_error(e: h2::Error) -> SessionError {
    if e.is_io() {
        SessionError::lost(e)
    } else {
        SessionError::Handshake {
            expected: Side::Sidecar,
            source: e,
        }
    }
}

/// Accepts connection streams until the channel closes or `stop` fires.
async fn drive<T>(
    mut conn: h2::server::Connection<T, Bytes>,
    state: Arc<State>,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut stopping = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = &mut stop, if !stopping => {
                stopping = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        match next {
            Some(Ok((request, respond))) => {
                tokio::spawn(handle_connection(request, respond, state.clone()));
            }
            Some(Err(e)) => return Err(e),
            None => return Ok(()),
        }
    }
}

/// One tunneled connection: checks, dials the local target, pumps.
async fn handle_connection(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    state: Arc<State>,
) {
    let m = &state.metrics;
    let header = |name| request.headers().get(name).and_then(|v| v.to_str().ok());
    let id = header(wire::LISTENER_HEADER).and_then(|v| v.parse::<u32>().ok());
    let peer = header(wire::PEER_HEADER).and_then(|v| v.parse::<SocketAddr>().ok());
    let found = id.and_then(|id| state.forward(id));
    // The path must match what the CLI's own spec says the listener is.
    let path_fits = |(f, _): &&(Forward, Semaphore)| match f.listener.protocol {
        Protocol::Tcp => request.uri().path() == wire::CONNECT_PATH,
        Protocol::Udp => request.uri().path() == wire::UDP_PATH,
    };
    let (Some((forward, active)), Some(peer)) = (found.filter(path_fits), peer) else {
        m.error(ErrorType::Protocol).inc();
        crate::warn_limited!(
            "the sidecar sent a malformed connection stream ({} {}); ignored",
            crate::ratelimit::bounded_debug(&request.uri().path(), 200),
            crate::ratelimit::bounded_debug(request.headers(), 400)
        );
        return refuse(
            &mut respond,
            StatusCode::BAD_REQUEST,
            "malformed connection stream",
        );
    };
    let port = forward.listener.port;
    let refused = |reason| ConnectionEvent::Refused {
        port,
        peer,
        protocol: forward.listener.protocol,
        reason,
    };
    // `rpf-peer` is the sidecar's word: this only catches a buggy sidecar;
    // the allow list is enforced where the true peer is seen, in the pod.
    if !allowed(&forward.listener.allow, peer.ip()) {
        m.rejected(RejectReason::NotAllowed).inc();
        state.output.report(&refused(RejectReason::NotAllowed), || {
            crate::warn_limited!(
                "refused connection from {peer} to port {port} in the pod: peer not in --allow"
            )
        });
        return refuse(&mut respond, StatusCode::FORBIDDEN, "peer not allowed");
    }
    let Ok(_slot) = active.try_acquire() else {
        m.rejected(RejectReason::Limit).inc();
        state.output.report(&refused(RejectReason::Limit), || {
            crate::warn_limited!(
                "refused connection from {peer} to port {port} in the pod: limit of {} concurrent connections reached (raise it with --max-connections)",
                forward.listener.max_connections
            )
        });
        return refuse(
            &mut respond,
            StatusCode::SERVICE_UNAVAILABLE,
            "connection limit reached",
        );
    };
    let tracked = Tracked {
        port,
        peer,
        protocol: forward.listener.protocol,
        started: Instant::now(),
        output: state.output,
    };
    let target = forward.target();
    let opened = ConnectionEvent::ConnectionOpened {
        port,
        peer,
        protocol: forward.listener.protocol,
        target: &target,
    };
    if forward.listener.protocol == Protocol::Udp {
        state.output.report(&opened, || {
            info!("Handling UDP flow for {port} from {peer}")
        });
        return carry_udp_flow(request, respond, forward, tracked, &state).await;
    }
    state.output.report(&opened, || {
        info!("Handling connection for {port} from {peer}")
    });
    let local = match dial(&forward.local_host, forward.local_port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let why = describe_io_error(&e);
            m.error(ErrorType::Dial).inc();
            m.connections_failed.inc();
            tracked.closed(Outcome::TargetUnreachable, None, Some(why.clone()), || {
                crate::warn_limited!("cannot connect to local port {}: {why}", forward.local_port)
            });
            return refuse(&mut respond, StatusCode::BAD_GATEWAY, &why);
        }
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(send) => send,
        Err(e) => {
            m.connections_failed.inc();
            let why = e.to_string();
            return tracked.closed(Outcome::Aborted, None, Some(why.clone()), || {
                debug!("connection from {peer} gone before it was answered: {why}")
            });
        }
    };
    m.active_connections.inc();
    let recv = request.into_body();
    let meters = Meters {
        socket_to_stream: &m.bytes_local_to_pod,
        stream_to_socket: &m.bytes_pod_to_local,
    };
    let result = splice(
        local,
        send,
        std::future::ready(Ok(recv)),
        meters,
        &state.ended,
    )
    .await;
    m.active_connections.dec();
    m.connection_finished(&result, tracked.started.elapsed());
    match result {
        Ok(t) => {
            tracked.closed(Outcome::Closed, Some(t), None, || {
                debug!(
                    "connection from {peer} on port {port} closed: {} bytes to the pod, {} from it",
                    t.sent, t.received
                )
            });
        }
        Err(PumpError::Cancelled) => {
            tracked.closed(Outcome::SessionEnded, None, None, || {
                debug!("connection from {peer} on port {port} reset: the session ended")
            });
        }
        Err(e) => {
            let why = e.to_string();
            tracked.closed(Outcome::Aborted, None, Some(why.clone()), || {
                debug!("connection from {peer} on port {port} aborted: {why}")
            });
        }
    }
}

/// One connection's identity, for its events.
struct Tracked {
    port: u16,
    peer: SocketAddr,
    protocol: Protocol,
    started: Instant,
    output: Output,
}

impl Tracked {
    /// Reports the end: as JSON, or by running `human`.
    fn closed(
        &self,
        outcome: Outcome,
        bytes: Option<Transferred>,
        error: Option<String>,
        human: impl FnOnce(),
    ) {
        let event = ConnectionEvent::ConnectionClosed {
            port: self.port,
            peer: self.peer,
            protocol: self.protocol,
            outcome,
            bytes_to_pod: bytes.map(|t| t.sent),
            bytes_from_pod: bytes.map(|t| t.received),
            duration_ms: millis(self.started.elapsed()),
            error,
        };
        self.output.report(&event, human);
    }
}

/// One UDP flow: a connected socket to the target, so its replies (and
/// its ICMP errors) come back to this flow alone, then datagrams both ways
/// until the flow idles out, either end closes it, or the target refuses.
async fn carry_udp_flow(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    forward: &Forward,
    tracked: Tracked,
    state: &State,
) {
    let m = &state.metrics;
    let (port, peer) = (tracked.port, tracked.peer);
    let socket = match connect_udp(&forward.local_host, forward.local_port).await {
        Ok(socket) => socket,
        Err(e) => {
            let why = describe_io_error(&e);
            m.error(ErrorType::Dial).inc();
            m.udp.ended(FlowOutcome::Error);
            tracked.closed(Outcome::TargetUnreachable, None, Some(why.clone()), || {
                crate::warn_limited!("cannot reach local UDP port {}: {why}", forward.local_port)
            });
            return refuse(&mut respond, StatusCode::BAD_GATEWAY, &why);
        }
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(send) => send,
        Err(e) => {
            m.udp.ended(FlowOutcome::Error);
            let why = e.to_string();
            return tracked.closed(Outcome::Aborted, None, Some(why.clone()), || {
                debug!("UDP flow from {peer} gone before it was answered: {why}")
            });
        }
    };
    m.udp.active_flows.inc();
    let (queue, outbox) = datagram::queue();
    let flow = Flow {
        outbox,
        sink: datagram::Sink::Target(&socket),
        source: datagram::read_target(&socket, queue, &m.udp.local_to_pod),
        idle: forward.listener.udp_idle_timeout(),
        out_meters: &m.udp.local_to_pod,
        in_meters: &m.udp.pod_to_local,
        cancel: &state.ended,
    };
    let result = datagram::run_flow(flow, send, std::future::ready(Ok(request.into_body()))).await;
    m.udp.active_flows.dec();
    let outcome = match result {
        Ok(FlowEnd::Idle) => {
            tracked.closed(Outcome::Idle, None, None, || {
                debug!("UDP flow from {peer} on port {port} idle: closed")
            });
            FlowOutcome::Idle
        }
        Ok(FlowEnd::Closed) => {
            tracked.closed(Outcome::Closed, None, None, || {
                debug!("UDP flow from {peer} on port {port} closed")
            });
            FlowOutcome::Closed
        }
        Err(FlowError::Pump(PumpError::Cancelled)) => {
            tracked.closed(Outcome::SessionEnded, None, None, || {
                debug!("UDP flow from {peer} on port {port} ended with the session")
            });
            FlowOutcome::Closed
        }
        Err(e @ FlowError::Refused) => {
            m.error(ErrorType::Dial).inc();
            tracked.closed(Outcome::TargetUnreachable, None, Some(e.to_string()), || {
                crate::warn_limited!(
                    "UDP flow from {peer} to port {port} in the pod ended: nothing listens on local UDP port {} (connection refused)",
                    forward.local_port
                )
            });
            FlowOutcome::Refused
        }
        Err(e @ FlowError::Protocol(_)) => {
            m.error(ErrorType::Protocol).inc();
            tracked.closed(Outcome::Aborted, None, Some(e.to_string()), || {
                crate::warn_limited!(
                    "UDP flow from {peer} on port {port} reset: the sidecar sent a {e}"
                )
            });
            FlowOutcome::Error
        }
        Err(e) => {
            m.error(ErrorType::Stream).inc();
            tracked.closed(Outcome::Aborted, None, Some(e.to_string()), || {
                debug!("UDP flow from {peer} on port {port} aborted: {e}")
            });
            FlowOutcome::Error
        }
    };
    m.udp.ended(outcome);
}

/// A UDP socket connected to `host:port`. `localhost` is 127.0.0.1: with
/// UDP nothing answers a connect, so there is no falling back to ::1 (write
/// `[::1]` for an IPv6-only target).
async fn connect_udp(host: &str, port: u16) -> std::io::Result<tokio::net::UdpSocket> {
    let target = if host.eq_ignore_ascii_case("localhost") {
        SocketAddr::new(IpAddr::from([127, 0, 0, 1]), port)
    } else if let Ok(ip) = host.parse::<IpAddr>() {
        SocketAddr::new(ip, port)
    } else {
        tokio::net::lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{host} has no address"),
                )
            })?
    };
    let any: SocketAddr = match target {
        SocketAddr::V4(_) => (IpAddr::from([0, 0, 0, 0]), 0).into(),
        SocketAddr::V6(_) => (IpAddr::from([0u16; 8]), 0).into(),
    };
    let socket = tokio::net::UdpSocket::bind(any).await?;
    socket.connect(target).await?;
    Ok(socket)
}

fn refuse(respond: &mut SendResponse<Bytes>, status: StatusCode, why: &str) {
    let mut response = Response::builder().status(status);
    if let Ok(value) = http::HeaderValue::from_str(why) {
        response = response.header(wire::ERROR_HEADER, value);
    }
    let response = response.body(()).expect("valid response");
    let _ = respond.send_response(response, true);
}

/// The default bind addresses in the pod: both loopbacks, so `localhost`
/// works whichever way the app resolves it; IPv6 is skipped where the pod
/// has none.
pub fn default_bind_addrs() -> Vec<BindAddr> {
    vec![
        BindAddr {
            ip: IpAddr::from([127, 0, 0, 1]),
            required: true,
        },
        BindAddr {
            ip: "::1".parse().expect("valid"),
            required: false,
        },
    ]
}
