//! The CLI's own events: where a session forwards, when its channel is
//! lost and back, `rpf expose`'s objects and relays, and the error that
//! ends the command. Connection events are the tunnel's
//! ([`rpf_tunnel::events`]); both print through [`Output::report`], as
//! the human line or, with `--output json`, one JSON object a line on
//! stdout. docs/events.md names every field.

use std::net::SocketAddr;

use rpf_proto::message::Protocol;
#[cfg(doc)]
use rpf_tunnel::events::Output;
use serde::Serialize;

/// One thing `rpf attach` or `rpf expose` reports.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    /// A listener is bound in the pod (one event per address).
    Forwarding {
        /// Where the session runs (`pod NS/NAME`, `host NAME`).
        place: &'a str,
        /// The address bound in the pod.
        address: SocketAddr,
        /// `tcp` or `udp`.
        protocol: Protocol,
        /// What the CLI dials for it, `HOST:PORT`.
        target: String,
    },
    /// The channel to the sidecar was lost.
    Lost {
        /// Where the session ran.
        place: &'a str,
        /// Why.
        error: String,
        /// Whether rpf reconnects (otherwise an `error` event follows).
        reconnecting: bool,
        /// How long the sidecar keeps the ports for a resume, in seconds
        /// (absent: it closed them).
        #[serde(skip_serializing_if = "Option::is_none")]
        grace_s: Option<u64>,
    },
    /// A new channel carries the session again (`forwarding` events
    /// follow).
    Reconnected {
        /// Where the session runs.
        place: &'a str,
        /// Whether the sidecar kept the session (its ports stayed open)
        /// or a new one bound them anew.
        resumed: bool,
    },
    /// `rpf expose` created its objects.
    Created {
        /// The namespace.
        namespace: &'a str,
        /// `service/NAME`, `deployment/NAME`, and the route if any.
        objects: Vec<String>,
        /// Relay pods asked for.
        replicas: u16,
    },
    /// A relay pod's session is up and serving.
    RelayAttached {
        /// `NS/NAME` of the relay pod.
        relay: &'a str,
        /// Its pod IP, when known.
        #[serde(skip_serializing_if = "Option::is_none")]
        ip: Option<&'a str>,
        /// The Service ports it serves.
        ports: Vec<ServedPort>,
    },
    /// The first relay is up: the Service works.
    Exposed {
        /// The Service's namespace.
        namespace: &'a str,
        /// The Service's name.
        service: &'a str,
        /// `NAME.NS.svc.cluster.local`.
        dns_name: String,
        /// The Service's cluster IP.
        cluster_ip: &'a str,
        /// Its ports and where each leads.
        ports: Vec<ServedPort>,
    },
    /// A relay's session failed; rpf attaches again when it is ready.
    RelayLost {
        /// `NS/NAME` of the relay pod.
        relay: String,
        /// Why.
        error: String,
    },
    /// A relay pod is gone; the others keep serving.
    RelayGone {
        /// `NS/NAME` of the relay pod.
        relay: String,
    },
    /// `rpf expose` removed its objects on the way out.
    Removed {
        /// The namespace.
        namespace: &'a str,
        /// What was deleted.
        objects: &'a [String],
        /// Relay pods still stopping (Kubernetes removes them).
        pods_stopping: usize,
    },
    /// The command failed; it exits with `exit_code`.
    Error {
        /// The message also printed as `error: ...` on stderr.
        error: String,
        /// The exit status (README, "Exit status").
        exit_code: u8,
    },
}

/// A Service port and the local target behind it.
#[derive(Debug, Clone, Serialize)]
pub struct ServedPort {
    /// The Service port.
    pub port: u16,
    /// `tcp` or `udp`.
    pub protocol: Protocol,
    /// What the CLI dials, `HOST:PORT`.
    pub target: String,
}
