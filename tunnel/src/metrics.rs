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
        Metrics {
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
