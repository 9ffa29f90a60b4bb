//! Prometheus metrics for both ends of the tunnel (each binary serves
//! [`Metrics::render`] on its own endpoint).
//!
//! The CLI uses KEP-5695's names with an `rpf_` prefix instead of
//! `kubectl_` (`rpf_portforward_reverse_*`); the sidecar reports the same
//! measures as `rpf_sidecar_reverse_*`, plus its listeners and sessions.
//! Labelled counters are looked up once here, so the data path only ever
//! touches an atomic.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use rpf_proto::message::RejectReason;
use rpf_proto::Side;

type Labels = Vec<(&'static str, &'static str)>;

/// Kinds of per-connection errors, the `error_type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// The local target could not be dialed (CLI) or refused (sidecar).
    Dial,
    /// A connection was aborted mid-way (reset on either side).
    Stream,
    /// The peer broke the protocol.
    Protocol,
}

const ERROR_TYPES: [(ErrorType, &str); 3] = [
    (ErrorType::Dial, "dial"),
    (ErrorType::Stream, "stream"),
    (ErrorType::Protocol, "protocol"),
];

/// Why a UDP datagram was dropped, the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its flow's queue was full (the stream could not take it yet).
    QueueFull,
    /// A new flow, over the listener's flow limit.
    Limit,
    /// A new flow from a peer outside the allow list.
    NotAllowed,
    /// Larger than the 65,507 bytes a flow carries.
    TooLarge,
    /// The socket would not send it.
    SendFailed,
}

const DROP_REASONS: [(DropReason, &str); 5] = [
    (DropReason::QueueFull, "queue_full"),
    (DropReason::Limit, "limit"),
    (DropReason::NotAllowed, "not_allowed"),
    (DropReason::TooLarge, "too_large"),
    (DropReason::SendFailed, "send_failed"),
];

/// How a UDP flow ended, the `end` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowOutcome {
    /// No datagram either way for the idle timeout.
    Idle,
    /// The other end or the session closed it.
    Closed,
    /// The local target refused (ICMP port unreachable).
    Refused,
    /// A protocol or stream error.
    Error,
}

const FLOW_OUTCOMES: [(FlowOutcome, &str); 4] = [
    (FlowOutcome::Idle, "idle"),
    (FlowOutcome::Closed, "closed"),
    (FlowOutcome::Refused, "refused"),
    (FlowOutcome::Error, "error"),
];

/// Counters for one direction of UDP traffic, and the shared drop counts.
#[derive(Debug, Clone)]
pub struct UdpMeters {
    datagrams: Counter,
    bytes: Counter,
    drops: [Counter; 5],
}

impl UdpMeters {
    /// Counts one datagram of `len` payload bytes carried.
    pub fn carried(&self, len: u64) {
        self.datagrams.inc();
        self.bytes.inc_by(len);
    }

    /// Counts one datagram dropped.
    pub fn dropped(&self, reason: DropReason) {
        self.dropped_n(reason, 1);
    }

    /// Counts `n` datagrams dropped for `reason` (none: nothing happens).
    pub fn dropped_n(&self, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        let i = DROP_REASONS
            .iter()
            .position(|(r, _)| *r == reason)
            .unwrap_or(0);
        self.drops[i].inc_by(n);
    }
}

/// UDP flows and datagrams.
#[derive(Debug, Clone)]
pub struct UdpMetrics {
    /// Datagrams from pod peers towards the local targets.
    pub pod_to_local: UdpMeters,
    /// Datagrams from the local targets back to pod peers.
    pub local_to_pod: UdpMeters,
    /// Flows open now.
    pub active_flows: Gauge,
    flows: [Counter; 4],
}

impl UdpMetrics {
    /// Counts a flow that ended.
    pub fn ended(&self, outcome: FlowOutcome) {
        let i = FLOW_OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.flows[i].inc();
    }
}

/// Counters and gauges for one end of the tunnel.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Connections that completed their handshake with the other end.
    pub connections_ok: Counter,
    /// Connections that failed (local refused, aborted).
    pub connections_failed: Counter,
    /// Connections in flight.
    pub active_connections: Gauge,
    /// How long connections lived.
    pub connection_duration: Histogram,
    /// Bytes from the pod towards the user's machine.
    pub bytes_pod_to_local: Counter,
    /// Bytes from the user's machine towards the pod.
    pub bytes_local_to_pod: Counter,
    /// Reverse listeners currently bound (sidecar only; zero on the CLI).
    pub listeners_active: Gauge,
    /// Sessions currently open (sidecar: CLIs attached; CLI: 0 or 1).
    pub sessions_active: Gauge,
    /// Sessions (re)established: on the CLI, more than one means reconnects.
    pub sessions_total: Counter,
    /// UDP flows and datagrams.
    pub udp: UdpMetrics,
    rejected: [Counter; 2],
    errors: [Counter; 3],
}

impl Metrics {
    /// Registers every metric for `side` in a fresh registry.
    pub fn new(side: Side) -> Self {
        let mut registry = Registry::default();
        let p = match side {
            Side::Cli => "rpf_portforward_reverse",
            Side::Sidecar => "rpf_sidecar_reverse",
        };
        let connections = Family::<Labels, Counter>::default();
        registry.register(
            format!("{p}_connections"),
            "Tunneled connections by outcome",
            connections.clone(),
        );
        let active_connections = Gauge::default();
        registry.register(
            format!("{p}_active_connections"),
            "Tunneled connections in flight",
            active_connections.clone(),
        );
        let errors = Family::<Labels, Counter>::default();
        registry.register(
            format!("{p}_errors"),
            "Per-connection errors by type",
            errors.clone(),
        );
        let connection_duration = Histogram::new(exponential_buckets(0.001, 4.0, 12));
        registry.register(
            format!("{p}_connection_duration_seconds"),
            "Lifetime of tunneled connections",
            connection_duration.clone(),
        );
        let rejected = Family::<Labels, Counter>::default();
        registry.register(
            format!("{p}_connections_rejected"),
            "Pod connections refused before reaching the local target",
            rejected.clone(),
        );
        let bytes = Family::<Labels, Counter>::default();
        registry.register(
            format!("{p}_bytes"),
            "Bytes carried through the tunnel by direction",
            bytes.clone(),
        );
        let udp_datagrams = Family::<Labels, Counter>::default();
        registry.register(
            format!("{p}_udp_datagrams"),
            "UDP datagrams carried by direction",
            udp_datagrams.clone(),
        );
        let udp_bytes = Family::<Labels, Counter>::default();
        registry.register(
            format!("{p}_udp_bytes"),
            "UDP payload bytes carried by direction",
            udp_bytes.clone(),
        );
        let udp_dropped = Family::<Labels, Counter>::default();
        registry.register(
            format!("{p}_udp_dropped"),
            "UDP datagrams dropped by reason",
            udp_dropped.clone(),
        );
        let udp_flows = Family::<Labels, Counter>::default();
        registry.register(
            format!("{p}_udp_flows"),
            "UDP flows ended, by how they ended",
            udp_flows.clone(),
        );
        let udp_active = Gauge::default();
        registry.register(
            format!("{p}_udp_active_flows"),
            "UDP flows open",
            udp_active.clone(),
        );
        let sessions_active = Gauge::default();
        let sessions_total = Counter::default();
        let listeners_active = Gauge::default();
        match side {
            Side::Sidecar => {
                registry.register(
                    "rpf_sidecar_reverse_listeners_active",
                    "Reverse listeners bound in the pod",
                    listeners_active.clone(),
                );
                registry.register(
                    "rpf_sidecar_sessions_active",
                    "CLI sessions attached to this sidecar",
                    sessions_active.clone(),
                );
                registry.register(
                    "rpf_sidecar_sessions",
                    "CLI sessions accepted",
                    sessions_total.clone(),
                );
            }
            Side::Cli => {
                registry.register(
                    "rpf_portforward_reverse_sessions",
                    "Sessions established with a sidecar (more than one: reconnects)",
                    sessions_total.clone(),
                );
            }
        }
        let get = |family: &Family<Labels, Counter>, k: &'static str, v: &'static str| {
            family.get_or_create_owned(&vec![(k, v)])
        };
        let drops = DROP_REASONS.map(|(_, name)| get(&udp_dropped, "reason", name));
        let meters = |direction| UdpMeters {
            datagrams: get(&udp_datagrams, "direction", direction),
            bytes: get(&udp_bytes, "direction", direction),
            drops: drops.clone(),
        };
        let udp = UdpMetrics {
            pod_to_local: meters("pod_to_local"),
            local_to_pod: meters("local_to_pod"),
            active_flows: udp_active,
            flows: FLOW_OUTCOMES.map(|(_, name)| get(&udp_flows, "end", name)),
        };
        Metrics {
            udp,
            connections_ok: get(&connections, "status", "success"),
            connections_failed: get(&connections, "status", "error"),
            active_connections,
            connection_duration,
            bytes_pod_to_local: get(&bytes, "direction", "pod_to_local"),
            bytes_local_to_pod: get(&bytes, "direction", "local_to_pod"),
            listeners_active,
            sessions_active,
            sessions_total,
            rejected: [
                get(&rejected, "reason", RejectReason::Limit.as_str()),
                get(&rejected, "reason", RejectReason::NotAllowed.as_str()),
            ],
            errors: ERROR_TYPES.map(|(_, name)| get(&errors, "error_type", name)),
            registry: Arc::new(registry),
        }
    }

    /// Counts a refused pod connection.
    pub fn rejected(&self, reason: RejectReason) -> &Counter {
        match reason {
            RejectReason::Limit => &self.rejected[0],
            RejectReason::NotAllowed => &self.rejected[1],
        }
    }

    /// Counts a per-connection error.
    pub fn error(&self, kind: ErrorType) -> &Counter {
        let i = ERROR_TYPES
            .iter()
            .position(|(k, _)| *k == kind)
            .unwrap_or(0);
        &self.errors[i]
    }

    /// Counts a finished TCP connection the same way on both ends: ok, or
    /// failed and why (a refused dial, a broken stream or socket; a session
    /// that ended under it is neither), and how long it lived.
    pub fn connection_finished(
        &self,
        result: &Result<crate::pump::Transferred, crate::pump::PumpError>,
        lived: std::time::Duration,
    ) {
        use crate::pump::PumpError;
        if let Err(e) = result {
            self.connections_failed.inc();
            let kind = match e {
                PumpError::Refused(_) => Some(ErrorType::Dial),
                PumpError::Socket(_) | PumpError::Stream(_) => Some(ErrorType::Stream),
                PumpError::Cancelled => None,
            };
            if let Some(kind) = kind {
                self.error(kind).inc();
            }
        } else {
            self.connections_ok.inc();
        }
        self.connection_duration.observe(lived.as_secs_f64());
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_kep_5695_with_the_rpf_prefix() {
        let m = Metrics::new(Side::Cli);
        m.connections_ok.inc();
        m.rejected(RejectReason::Limit).inc();
        m.error(ErrorType::Dial).inc();
        m.bytes_pod_to_local.inc_by(5);
        let text = m.render();
        for want in [
            "rpf_portforward_reverse_connections_total{status=\"success\"} 1",
            "rpf_portforward_reverse_active_connections 0",
            "rpf_portforward_reverse_errors_total{error_type=\"dial\"} 1",
            "rpf_portforward_reverse_connection_duration_seconds_bucket",
            "rpf_portforward_reverse_connections_rejected_total{reason=\"limit\"} 1",
            "rpf_portforward_reverse_bytes_total{direction=\"pod_to_local\"} 5",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert!(!text.contains("rpf_sidecar"));
    }

    #[test]
    fn finished_connections_are_counted_by_outcome() {
        use crate::pump::{PumpError, Transferred};
        let m = Metrics::new(Side::Sidecar);
        let lived = std::time::Duration::from_millis(5);
        let ok = Transferred {
            sent: 1,
            received: 2,
        };
        m.connection_finished(&Ok(ok), lived);
        m.connection_finished(&Err(PumpError::Refused("no".into())), lived);
        m.connection_finished(&Err(PumpError::Cancelled), lived);
        let broken = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        m.connection_finished(&Err(PumpError::Socket(broken)), lived);
        let text = m.render();
        for want in [
            "rpf_sidecar_reverse_connections_total{status=\"success\"} 1",
            "rpf_sidecar_reverse_connections_total{status=\"error\"} 3",
            "rpf_sidecar_reverse_errors_total{error_type=\"dial\"} 1",
            "rpf_sidecar_reverse_errors_total{error_type=\"stream\"} 1",
            "rpf_sidecar_reverse_connection_duration_seconds_count 4",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }

    #[test]
    fn udp_counts_datagrams_drops_and_flows() {
        let m = Metrics::new(Side::Cli);
        m.udp.pod_to_local.carried(40);
        m.udp.local_to_pod.carried(100);
        m.udp.local_to_pod.dropped(DropReason::QueueFull);
        m.udp.pod_to_local.dropped(DropReason::Limit);
        m.udp.ended(FlowOutcome::Refused);
        m.udp.active_flows.inc();
        let text = m.render();
        for want in [
            "rpf_portforward_reverse_udp_datagrams_total{direction=\"pod_to_local\"} 1",
            "rpf_portforward_reverse_udp_bytes_total{direction=\"local_to_pod\"} 100",
            "rpf_portforward_reverse_udp_dropped_total{reason=\"queue_full\"} 1",
            "rpf_portforward_reverse_udp_dropped_total{reason=\"limit\"} 1",
            "rpf_portforward_reverse_udp_dropped_total{reason=\"too_large\"} 0",
            "rpf_portforward_reverse_udp_flows_total{end=\"refused\"} 1",
            "rpf_portforward_reverse_udp_flows_total{end=\"idle\"} 0",
            "rpf_portforward_reverse_udp_active_flows 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }

    #[test]
    fn sidecar_reports_its_listeners() {
        let m = Metrics::new(Side::Sidecar);
        m.listeners_active.set(2);
        let text = m.render();
        assert!(
            text.contains("rpf_sidecar_reverse_listeners_active 2"),
            "{text}"
        );
        assert!(
            text.contains("rpf_sidecar_reverse_connections_total"),
            "{text}"
        );
    }
}
