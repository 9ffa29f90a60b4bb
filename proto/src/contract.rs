//! Names and numbers: protocol version, HTTP/2 paths and header names, pod
//! annotations, container names and default tuning.

use std::time::Duration;

/// Version of the wire protocol. Bumped on any incompatible change; both
/// ends exchange it in their hello and refuse to talk across a mismatch.
pub const PROTOCOL_VERSION: u32 = 1;

/// Version of the rpf software that built this binary.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Name of the container the webhook (or `rpf inject`) adds to a pod.
pub const SIDECAR_CONTAINER: &str = "rpf-sidecar";

/// Sidecar image `rpf inject` uses unless told otherwise: the release that
/// matches this binary (the manifests set the same name in one place,
/// `manifests/base/images.env`).
pub const DEFAULT_SIDECAR_IMAGE: &str =
    concat!("ghcr.io/rpf-dev/rpf-sidecar:", env!("CARGO_PKG_VERSION"));

/// Path of the sidecar binary inside its image (the exec channel runs it).
pub const SIDECAR_BINARY_PATH: &str = "/rpf-sidecar";

/// Port the sidecar's control listener binds on 127.0.0.1 unless the pod
/// annotation [`annotations::CONTROL_PORT`] says otherwise.
pub const DEFAULT_CONTROL_PORT: u16 = 4499;

/// Concurrent connections allowed per reverse listener (KEP-5695 default).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;

/// How long `rpf attach` asks the sidecar to keep a session's listeners
/// after its channel is lost: long enough to ride out a port-forward that
/// drops (an API server restart, a laptop changing networks, the backoff
/// of a few reconnect attempts), short enough that a CLI which is really
/// gone does not hold the pod's ports for long.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The most grace the sidecar grants, whatever the CLI asks: the listeners
/// are the pod's resources, not the CLI's.
pub const MAX_GRACE: Duration = Duration::from_secs(600);

/// How long a UDP flow lives without a datagram either way, unless
/// `rpf attach --udp-idle-timeout` says otherwise: long enough for a
/// request/response protocol (DNS, syslog) to finish and for a chatty one
/// to keep its flow, short enough that a client's ephemeral ports do not
/// pile up flows against the limit.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest UDP idle timeout the sidecar applies, whatever the CLI asks:
/// idle flows hold one of the listener's flow slots.
pub const MAX_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Largest UDP payload carried: what fits in one IPv4 datagram
/// (65,535 − 20 bytes of IP header − 8 of UDP header). Larger ones (IPv6
/// allows 65,527) are dropped and counted; a length prefix above this on a
/// flow stream is a protocol error.
pub const MAX_DATAGRAM: usize = 65_507;

/// Optional abilities a sidecar announces in its hello (`features`). The
/// CLI uses one only when the sidecar listed it: an older sidecar ignores
/// fields it does not know, so asking it blindly would fail silently.
pub mod features {
    /// UDP listeners (`ListenerSpec.protocol = udp`) and flow streams.
    pub const UDP: &str = "udp";
}

/// Names and numbers of `rpf expose`: the relay Deployment and Service it
/// creates, and how to recognise them later (`rpf cleanup`, adoption).
pub mod expose {
    /// Label every object rpf creates carries (the Kubernetes convention).
    pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
    /// Value of [`MANAGED_BY_LABEL`]; also the server-side apply field manager.
    pub const MANAGED_BY: &str = "rpf";
    /// Label naming the expose (the Service name) an object belongs to.
    pub const EXPOSE_LABEL: &str = "rpf.dev/expose";
    /// `app.kubernetes.io/name` of the relay pods.
    pub const RELAY_APP_NAME: &str = "rpf-relay";
    /// Prefix of the relay Deployment's name: `rpf-relay-NAME`.
    pub const RELAY_PREFIX: &str = "rpf-relay-";
    /// Port of the relay sidecar's readiness endpoint (`GET /ready`).
    pub const READY_PORT: u16 = 4498;
    /// The relay binds the Service's n-th port (from 0) on this plus n: high,
    /// so a non-root relay can bind it whatever the Service port is.
    pub const FIRST_RELAY_PORT: u16 = 10000;
    /// Most ports one expose may have (keeps relay ports below 10100).
    pub const MAX_PORTS: usize = 100;
}

/// Pod annotations understood by rpf.
pub mod annotations {
    /// `"true"` opts a pod into sidecar injection.
    pub const ENABLED: &str = "rpf.dev/enabled";
    /// Set by the injector to the rpf version that injected the sidecar.
    pub const INJECTED: &str = "rpf.dev/injected";
    /// Control port of the sidecar, when 4499 is taken in the pod.
    pub const CONTROL_PORT: &str = "rpf.dev/control-port";
    /// `"true"`/`"false"`: force or forbid a native sidecar (init container
    /// with `restartPolicy: Always`) regardless of the cluster version.
    pub const NATIVE_SIDECAR: &str = "rpf.dev/native-sidecar";
    /// Lowest reverse port the pod will need, when below 1024: the injector
    /// then sets the safe sysctl `net.ipv4.ip_unprivileged_port_start`.
    pub const LOWEST_PORT: &str = "rpf.dev/lowest-port";
}

/// Environment variables the injector sets on the sidecar (downward API).
pub mod env {
    /// Name of the pod the sidecar runs in.
    pub const POD_NAME: &str = "POD_NAME";
    /// Namespace of the pod the sidecar runs in.
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
}

/// Default HTTP/2 and keepalive tuning. See `docs/protocol.md` for why
/// these numbers.
pub mod tuning {
    use super::Duration;

    /// Per-stream receive window: 4 MiB keeps one connection busy at
    /// 200 MB/s over a 20 ms round trip (bandwidth-delay product 4 MB).
    pub const STREAM_WINDOW: u32 = 4 << 20;
    /// Per-channel receive window: bounds the bytes buffered for all streams
    /// of one channel, in each direction, to 16 MiB.
    pub const CONNECTION_WINDOW: u32 = 16 << 20;
    /// Largest DATA frame we accept; fewer, larger frames cost less CPU.
    pub const MAX_FRAME_SIZE: u32 = 256 << 10;
    /// Largest chunk read from a socket before it is sent as DATA.
    pub const READ_CHUNK: usize = 64 << 10;
    /// How often each end PINGs the other.
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
    /// How long a PING may go unanswered before the channel is declared dead.
    pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Datagrams a UDP flow queues while its stream cannot take them (no
    /// window yet, or no channel during a grace period); beyond it, new
    /// datagrams are dropped and counted.
    pub const UDP_QUEUE_DATAGRAMS: usize = 128;
    /// Bytes a UDP flow queues at most, whichever limit comes first.
    pub const UDP_QUEUE_BYTES: usize = 512 << 10;
}

/// HTTP/2 request paths and header names of the tunnel.
pub mod wire {
    /// URI of the session stream (the sidecar opens one per channel).
    pub const SESSION_URI: &str = "http://rpf.tunnel/rpf/session";
    /// Path of [`SESSION_URI`].
    pub const SESSION_PATH: &str = "/rpf/session";
    /// URI of a connection stream (one per tunneled TCP connection).
    pub const CONNECT_URI: &str = "http://rpf.tunnel/rpf/connect";
    /// Path of [`CONNECT_URI`].
    pub const CONNECT_PATH: &str = "/rpf/connect";
    /// URI of a UDP flow stream (one per pod-side peer of a UDP listener).
    pub const UDP_URI: &str = "http://rpf.tunnel/rpf/udp";
    /// Path of [`UDP_URI`].
    pub const UDP_PATH: &str = "/rpf/udp";
    /// Connection stream header: the CLI's id of the listener that accepted.
    pub const LISTENER_HEADER: &str = "rpf-listener";
    /// Connection stream header: the pod-side peer address.
    pub const PEER_HEADER: &str = "rpf-peer";
    /// Response header: why the CLI refused a connection.
    pub const ERROR_HEADER: &str = "rpf-error";
}
