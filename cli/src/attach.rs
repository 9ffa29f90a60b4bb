//! `rpf attach`: open a channel, run a session, print where each port is
//! forwarded, and come back when the channel is lost.

use std::time::Duration;

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use rpf_proto::message::{BindAddr, BindErrorKind, BoundListener, ListenerSpec, SessionTicket};
use rpf_proto::Side;
use rpf_tunnel::cli_side::{
    default_bind_addrs, handshake, CliConfig, Established, Forward, Resume,
};
use rpf_tunnel::error::SessionError;
use rpf_tunnel::metrics::Metrics;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::args::AttachArgs;
use crate::channel::{Channel, OpenError, Place};
use crate::events::Event;
use crate::spec::{PortSpec, Protocol};
use crate::via::ViaSource;

/// Where channels come from.
#[derive(Debug)]
pub enum Source {
    /// A `--via` command.
    Via(ViaSource),
    /// A pod, through the API server.
    Cluster(Box<crate::cluster::ClusterSource>),
}

impl Source {
    async fn open(&mut self) -> Result<Channel, OpenError> {
        match self {
            Source::Via(v) => v.open().await,
            Source::Cluster(c) => c.open().await,
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Via(v) => v.describe(),
            Source::Cluster(c) => c.describe(),
        }
    }
}

/// Runs `rpf attach` until Ctrl-C (`Ok`) or a failure it cannot recover
/// from (`Err`, printed as `error: ...`).
pub async fn run(args: AttachArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (target, specs) = match &args.via {
        Some(_) => (None, &args.args[..]),
        None => (Some(args.args[0].as_str()), &args.args[1..]),
    };
    if specs.is_empty() {
        let why = match target {
            Some(t) => format!("no port spec after {t:?}: give at least one REMOTE[:[HOST:]LOCAL], e.g. `rpf attach {t} 8080:80`"),
            None => "no port spec given: e.g. `rpf attach --via '...' 8080:80`".to_string(),
        };
        return Err(crate::exit::BadInput(why).into());
    }
    let specs = PortSpec::parse_all(specs)?;
    let mut config = CliConfig::new(forwards(&specs, &args));
    config.output = args.output.into();
    // Without reconnecting nobody would come back for the kept ports.
    if !args.no_reconnect {
        config.grace = args.grace;
    }
    let metrics = Metrics::new(Side::Cli);
    if let Some(addr) = args.metrics_addr {
        let render = {
            let m = metrics.clone();
            move || m.render()
        };
        let bound = rpf_process::spawn_metrics_endpoint(addr, render, shutdown.clone())
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        info!("metrics on http://{bound}/metrics");
    }
    let mut source = match (&args.via, target) {
        (Some(command), _) => Source::Via(ViaSource::new(command)),
        (None, Some(target)) => Source::Cluster(Box::new(
            crate::cluster::ClusterSource::new(&args.cluster.options(), args.transport, target)
                .await
                .map_err(|e| e.error)?,
        )),
        (None, None) => unreachable!("clap requires a target or --via"),
    };
    let policy = Policy {
        reconnect: !args.no_reconnect,
        first_wait: args.pod_running_timeout,
        wait_for_ports: false,
    };
    let announce =
        |bound: &[BoundListener], place: &str| print_forwarding(bound, &specs, &config, place);
    supervise(&mut source, &config, &metrics, policy, &announce, shutdown).await
}

/// One forward per spec; ids are positions, so they are stable across
/// reconnects.
fn forwards(specs: &[PortSpec], args: &AttachArgs) -> Vec<Forward> {
    let addrs = if args.addresses.is_empty() {
        default_bind_addrs()
    } else {
        args.addresses
            .iter()
            .map(|ip| BindAddr {
                ip: *ip,
                required: true,
            })
            .collect()
    };
    specs
        .iter()
        .zip(1..)
        .map(|(s, id)| Forward {
            listener: ListenerSpec {
                id,
                port: s.remote_port,
                addrs: addrs.clone(),
                max_connections: args.max_connections,
                allow: args.allow.clone(),
                protocol: s.protocol,
                idle_timeout_ms: ListenerSpec::idle_timeout_ms(s.protocol, args.udp_idle_timeout),
            },
            local_host: s.local_host.clone(),
            local_port: s.local_port,
        })
        .collect()
}

/// When to try again.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Reopen a lost channel (otherwise exit non-zero).
    pub reconnect: bool,
    /// How long the first attempt waits for a pod that is not ready yet.
    pub first_wait: Duration,
    /// Whether the first attempt also waits (up to `first_wait`) for ports
    /// in use: right for an `rpf expose` relay, whose ports only a session
    /// of an earlier, killed rpf can hold; wrong for `rpf attach`, where a
    /// port in use is usually the user's mistake.
    pub wait_for_ports: bool,
}

/// Tells the user where a (re)established session's listeners are bound:
/// gets what the sidecar bound and where the session runs.
pub type Announce<'a> = dyn Fn(&[BoundListener], &str) + Send + Sync + 'a;

/// The reconnect loop. The first attempt waits (up to `first_wait`) only
/// for a pod that is still starting, like `kubectl port-forward`; anything
/// else fails fast (a typo, a taken port). After that, a lost channel is
/// reopened with jittered exponential backoff until Ctrl-C, unless
/// reconnecting is off. A session the sidecar kept through the lost channel
/// is resumed; if it is gone (grace over, another pod), a new one starts.
/// `announce` runs on every (re)established session.
pub async fn supervise(
    source: &mut Source,
    config: &CliConfig,
    metrics: &Metrics,
    policy: Policy,
    announce: &Announce<'_>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut established_once = false;
    let mut backoff = new_backoff();
    let first_deadline = std::time::Instant::now() + policy.first_wait;
    // The session the sidecar keeps for us while the channel is down.
    let mut ticket: Option<SessionTicket> = None;
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return release(source, config, metrics, ticket).await,
            attempt = connect(source, config, metrics, ticket.as_ref()) => attempt,
        };
        let (session, place, transport, resumed) = match attempt {
            Ok(ok) => ok,
            Err(Failure::Open(e))
                if !established_once
                    && e.retryable
                    && std::time::Instant::now() < first_deadline =>
            {
                let delay = backoff
                    .next()
                    .unwrap_or(Duration::from_secs(5))
                    .min(Duration::from_secs(5));
                warn!("waiting for {}: {:#}", source.describe(), e.error);
                tokio::select! {
                    _ = shutdown.cancelled() => return release(source, config, metrics, ticket).await,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
            Err(Failure::Session(
                SessionError::BindFailed {
                    addr,
                    kind: BindErrorKind::InUse,
                    ..
                },
                place,
            )) if policy.wait_for_ports
                && !established_once
                && std::time::Instant::now() < first_deadline =>
            {
                let delay = backoff
                    .next()
                    .unwrap_or(Duration::from_secs(5))
                    .min(Duration::from_secs(5));
                warn!("waiting for port {} in {place} to be free: a session of an rpf that is gone may still hold it until the sidecar notices (within {}s)",
                    addr.port(),
                    (rpf_proto::tuning::KEEPALIVE_INTERVAL + rpf_proto::tuning::KEEPALIVE_TIMEOUT).as_secs());
                tokio::select! {
                    _ = shutdown.cancelled() => return release(source, config, metrics, ticket).await,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
            Err(failure) if !established_once || !failure.retryable() => {
                return Err(failure.into_error())
            }
            Err(failure) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                warn!(
                    "still reconnecting to {}: {:#} (next try in {:.1}s)",
                    source.describe(),
                    failure.into_error(),
                    delay.as_secs_f64()
                );
                tokio::select! {
                    _ = shutdown.cancelled() => return release(source, config, metrics, ticket).await,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if established_once || resumed {
            let event = Event::Reconnected {
                place: &place,
                resumed,
            };
            config.output.report(&event, || {
                if resumed {
                    eprintln!(
                        "Reconnected to {place}; session resumed, its ports in the pod stayed open"
                    );
                } else {
                    eprintln!("Reconnected to {place}");
                }
            });
        }
        announce(&session.bound, &place);
        established_once = true;
        backoff = new_backoff();
        ticket = session.ticket.clone();
        let served = session.serve(shutdown.clone()).await;
        drop(transport);
        let e = match served {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        let reconnecting = policy.reconnect && e.is_retryable();
        let grace_s = ticket
            .as_ref()
            .map(|t| Duration::from_millis(t.grace_ms).as_secs());
        let why = rpf_process::error_chain(&e);
        let event = Event::Lost {
            place: &place,
            error: why.clone(),
            reconnecting,
            grace_s: grace_s.filter(|_| reconnecting),
        };
        config.output.report(&event, || match grace_s {
            _ if !reconnecting => {}
            Some(grace) => eprintln!(
                "Lost connection to {place}: {why}; reconnecting (the sidecar keeps the ports for {grace}s)"
            ),
            None => eprintln!("Lost connection to {place}: {why}; reconnecting"),
        });
        if !reconnecting {
            return Err(anyhow::Error::new(e).context(format!("lost connection to {place}")));
        }
    }
}

fn new_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Why an attempt failed, keeping whether retrying can help.
enum Failure {
    Open(OpenError),
    Session(SessionError, String),
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            Failure::Open(e) => e.retryable,
            // A bind failure right after a reconnect is usually the old
            // session still holding the port: it clears within seconds.
            Failure::Session(e, _) => {
                e.is_retryable() || matches!(e, SessionError::BindFailed { .. })
            }
        }
    }

    fn into_error(self) -> anyhow::Error {
        match self {
            Failure::Open(e) => e.error,
            Failure::Session(e, place) => session_error(e, &place),
        }
    }
}

/// An established session, where it runs, what keeps its transport alive,
/// and whether it is a resumed one.
type Connected = (Established, String, Option<Box<dyn Send>>, bool);

/// Opens a channel and establishes a session over it: resumes the session
/// `ticket` names when the sidecar can, or binds a new one.
async fn connect(
    source: &mut Source,
    config: &CliConfig,
    metrics: &Metrics,
    ticket: Option<&SessionTicket>,
) -> Result<Connected, Failure> {
    let channel = source.open().await.map_err(Failure::Open)?;
    let Channel { io, place, guard } = channel;
    let described = match &place {
        Place::Pod { .. } => place.to_string(),
        Place::Via => source.describe(),
    };
    let greeted = handshake(io, config, metrics)
        .await
        .map_err(|e| Failure::Session(e, described.clone()))?;
    let place = match (&place, &greeted.sidecar.pod, &greeted.sidecar.hostname) {
        (Place::Pod { .. }, _, _) => place.to_string(),
        (Place::Via, Some(pod), _) => format!("pod {}/{}", pod.namespace, pod.name),
        (Place::Via, None, Some(host)) => format!("host {host}"),
        (Place::Via, None, None) => described,
    };
    let failed = |e| Failure::Session(e, place.clone());
    let greeted = match ticket {
        Some(ticket) if greeted.sidecar.resume => {
            match greeted.resume(&ticket.token).await.map_err(failed)? {
                // The transport (child process, API connection) lives with
                // the session.
                Resume::Resumed(session) => return Ok((session, place, guard, true)),
                Resume::Refused(greeted, reason) => {
                    eprintln!("The sidecar in {place} did not resume the session ({reason}); starting a new session, binding the ports anew");
                    greeted
                }
            }
        }
        Some(_) => {
            eprintln!("The sidecar in {place} cannot resume sessions; starting a new session, binding the ports anew");
            greeted
        }
        None => greeted,
    };
    let session = greeted.bind().await.map_err(failed)?;
    Ok((session, place, guard, false))
}

/// On Ctrl-C while the channel is down: the sidecar still keeps our ports
/// for the grace period, so reach it once more, briefly, to resume the
/// session and say goodbye, freeing them now. Best effort: exiting is
/// still a success if it fails.
async fn release(
    source: &mut Source,
    config: &CliConfig,
    metrics: &Metrics,
    ticket: Option<SessionTicket>,
) -> anyhow::Result<()> {
    let Some(ticket) = ticket else {
        return Ok(());
    };
    let goodbye = async {
        let channel = source.open().await.ok()?;
        let greeted = handshake(channel.io, config, metrics).await.ok()?;
        if !greeted.sidecar.resume {
            return None;
        }
        let Resume::Resumed(session) = greeted.resume(&ticket.token).await.ok()? else {
            return None;
        };
        let now = CancellationToken::new();
        now.cancel();
        session.serve(now).await.ok()
    };
    if tokio::time::timeout(RELEASE_TIMEOUT, goodbye)
        .await
        .is_err()
    {
        info!(
            "could not reach the sidecar to close the session: it keeps the ports for up to {}s",
            Duration::from_millis(ticket.grace_ms).as_secs()
        );
    }
    Ok(())
}

/// How long exiting may take to free ports kept across a lost channel.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Words a session failure with the place and the next step.
fn session_error(e: SessionError, place: &str) -> anyhow::Error {
    match e {
        SessionError::BindFailed { addr, kind: BindErrorKind::InUse, .. } => anyhow::anyhow!(
            "port {} is already in use in {place} ({addr}): pick another REMOTE port, or stop what listens there",
            addr.port()
        ),
        SessionError::BindFailed { addr, kind: BindErrorKind::PermissionDenied, .. } => anyhow::anyhow!(
            "cannot bind {addr} in {place}: permission denied: ports below 1024 need the pod annotation rpf.dev/lowest-port: \"{}\" (set before the pod is created)",
            addr.port()
        ),
        SessionError::BindFailed { addr, reason, .. } => anyhow::anyhow!("cannot bind {addr} in {place}: {reason}"),
        other => anyhow::Error::new(other).context(format!("cannot attach to {place}")),
    }
}

fn print_forwarding(bound: &[BoundListener], specs: &[PortSpec], config: &CliConfig, place: &str) {
    for listener in bound {
        let Some(forward) = config
            .forwards
            .iter()
            .find(|f| f.listener.id == listener.id)
        else {
            continue;
        };
        let spec = &specs[(forward.listener.id - 1) as usize];
        let suffix = match spec.protocol {
            Protocol::Tcp => "",
            Protocol::Udp => "/udp",
        };
        for addr in &listener.addrs {
            let event = Event::Forwarding {
                place,
                address: *addr,
                protocol: spec.protocol,
                target: spec.local_display(),
            };
            config.output.report(&event, || {
                println!(
                    "Forwarding from {addr}{suffix} in {place} -> {}{suffix}",
                    spec.local_display()
                )
            });
        }
    }
}
