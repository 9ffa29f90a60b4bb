//! The sidecar's control port, reached both ways `rpf attach` can: the API
//! server's port-forward to the port and exec of `rpf-sidecar stdio` in the
//! container. Each runs the session handshake, so the sidecar names its
//! release and protocol: that answers whether it works with this CLI.

use k8s_openapi::api::core::v1::Pod;
use rpf_proto::{Side, PROTOCOL_VERSION, SIDECAR_BINARY_PATH, SIDECAR_CONTAINER, SOFTWARE_VERSION};
use rpf_tunnel::cli_side::{handshake, CliConfig, SidecarInfo};
use rpf_tunnel::error::SessionError;
use rpf_tunnel::metrics::Metrics;

use super::names::{EXEC, PORT_FORWARD, SIDECAR_VERSION};
use super::report::Check;
use super::{bounded, Cluster};
use crate::channel::Channel;
use crate::cluster::target::Target;
use crate::cluster::{preflight, ClusterSource, Transport};

/// What came of greeting the sidecar one way.
#[derive(Debug)]
pub enum Greeting {
    /// It answered and speaks our protocol.
    Greeted(SidecarInfo),
    /// It answered in another protocol version (the sidecar's words).
    Mismatch(String),
    /// It could not be reached, or did not answer.
    Failed(String),
}

/// Opens a channel to `pod` with `transport` and exchanges hellos; then
/// drops it (the sidecar sees a channel end without a session).
pub async fn greet(cluster: &Cluster, pod: &str, transport: Transport) -> Greeting {
    let mut source = ClusterSource::with_client(
        cluster.client.clone(),
        &cluster.namespace,
        Target::pod(pod),
        transport,
    );
    let channel = match bounded("the channel", source.open()).await {
        Err(why) => return Greeting::Failed(why),
        Ok(Err(e)) => return Greeting::Failed(rpf_process::error_chain(&e)),
        Ok(Ok(channel)) => channel,
    };
    let Channel { io, guard, .. } = channel;
    let metrics = Metrics::new(Side::Cli);
    let config = CliConfig::new(Vec::new());
    let greeting = match bounded("the sidecar's hello", handshake(io, &config, &metrics)).await {
        Err(why) => Greeting::Failed(why),
        Ok(Err(e @ SessionError::VersionMismatch { .. })) => Greeting::Mismatch(e.to_string()),
        Ok(Err(e)) => Greeting::Failed(rpf_process::error_chain(&e)),
        Ok(Ok(greeted)) => Greeting::Greeted(greeted.sidecar.clone()),
    };
    drop(guard);
    greeting
}

/// `port-forward` or `exec`: a failure only when it is the transport the
/// user chose (`required`).
pub fn reached(
    pod: &Pod,
    namespace: &str,
    transport: Transport,
    greeting: &Greeting,
    required: bool,
) -> Check {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let port = preflight::control_port(pod).unwrap_or(rpf_proto::DEFAULT_CONTROL_PORT);
    let (check, way) = match transport {
        Transport::Portforward => (
            PORT_FORWARD,
            format!("port-forward to port {port} of pod {namespace}/{name}"),
        ),
        Transport::Exec => (
            EXEC,
            format!("exec of {SIDECAR_BINARY_PATH} stdio in container {SIDECAR_CONTAINER} of pod {namespace}/{name}"),
        ),
    };
    match greeting {
        Greeting::Greeted(info) => Check::pass(
            check,
            format!(
                "{way}: rpf-sidecar {} answered the handshake",
                info.software
            ),
        ),
        Greeting::Mismatch(_) => Check::pass(
            check,
            format!(
                "{way}: the sidecar answered (in another protocol version: see {SIDECAR_VERSION})"
            ),
        ),
        Greeting::Failed(why) => {
            let logs = format!("kubectl -n {namespace} logs {name} -c {SIDECAR_CONTAINER}");
            let next = match (transport, required) {
                (Transport::Portforward, true) => format!(
                    "{logs} (does the sidecar listen on 127.0.0.1:{port}?); or try --transport exec"
                ),
                (Transport::Exec, true) => format!("{logs}; or try --transport port-forward"),
                (_, false) => format!(
                    "only needed with --transport {}; {logs}",
                    match transport {
                        Transport::Portforward => "port-forward",
                        Transport::Exec => "exec",
                    }
                ),
            };
            Check::fail_if(required, check, format!("{way}: {why}"), next)
        }
    }
}

/// `sidecar-version`: the release and protocol the sidecar named, from the
/// chosen transport's greeting, else the other's.
pub fn version(chosen: &Greeting, other: &Greeting) -> Check {
    let greeting = match (chosen, other) {
        (Greeting::Failed(_), g @ (Greeting::Greeted(_) | Greeting::Mismatch(_))) => g,
        (g, _) => g,
    };
    match greeting {
        Greeting::Greeted(info) if info.software == SOFTWARE_VERSION => Check::pass(
            SIDECAR_VERSION,
            format!("rpf-sidecar {} speaks protocol {PROTOCOL_VERSION}, as this CLI does", info.software),
        ),
        Greeting::Greeted(info) => Check::warn(
            SIDECAR_VERSION,
            format!(
                "rpf-sidecar {} speaks protocol {PROTOCOL_VERSION} like this CLI (rpf {SOFTWARE_VERSION}): they work together, but are not one release",
                info.software
            ),
            "keep the sidecar image and the CLI on one release",
        ),
        Greeting::Mismatch(words) => Check::fail(
            SIDECAR_VERSION,
            words.clone(),
            "use the rpf release that matches the sidecar, or recreate the pod with the sidecar image of this release",
        ),
        Greeting::Failed(_) => Check::skip(SIDECAR_VERSION, "the sidecar could not be reached"),
    }
}
