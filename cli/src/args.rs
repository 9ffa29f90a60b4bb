//! Command-line arguments: the only place the CLI's flags are defined.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

use crate::cluster::{ClusterOptions, Transport};

/// rpf: reverse port-forward for Kubernetes.
///
/// Like `kubectl port-forward`, in reverse (like `ssh -R`): a process in a pod
/// connects to localhost:REMOTE and reaches HOST:LOCAL on this machine.
#[derive(Debug, Parser)]
#[command(name = "rpf", version, propagate_version = true)]
pub struct Cli {
    /// More logging (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less logging: only warnings and errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Forward ports in a pod back to this machine.
    Attach(AttachArgs),
    /// Expose a service on this machine as a Kubernetes Service for other
    /// pods (relay pods in the cluster, removed again on exit).
    Expose(ExposeArgs),
    /// Remove every `rpf expose` leftover (relays, Services, routes) in a
    /// namespace, e.g. after `rpf expose` was killed with -9.
    Cleanup(CleanupArgs),
    /// Add the rpf sidecar to opted-in pods and workloads in YAML manifests.
    Inject(InjectArgs),
    /// Check everything `rpf attach` needs, step by step, and say what to
    /// fix first.
    Doctor(DoctorArgs),
    /// Print the versions of rpf and of what runs in the cluster.
    Version(crate::version::VersionArgs),
    /// Print a shell completion script (bash, zsh, fish, powershell).
    Completion(crate::completion::CompletionArgs),
    /// List TARGETs for the completion scripts (one a line).
    #[command(name = "__complete-targets", hide = true)]
    CompleteTargets(crate::completion::CompleteTargetsArgs),
}

/// `rpf attach`.
#[derive(Debug, Args)]
#[command(
    override_usage = "rpf attach [OPTIONS] TARGET SPEC...\n       rpf attach [OPTIONS] --via COMMAND SPEC...",
    after_help = "TARGET: NAME, pod/NAME, deploy/NAME, rs/NAME, sts/NAME, job/NAME or svc/NAME.\n\
SPEC: REMOTE:LOCAL, REMOTE:HOST:LOCAL or REMOTE, then /udp for UDP (/tcp is the default).\n\
REMOTE is the port bound in the pod, HOST:LOCAL what rpf dials on this machine\n\
(HOST defaults to localhost).\n\n\
Examples:\n  rpf attach pod/web 8080:80\n  rpf attach deploy/api 5432 6379:redis.local:6379\n  \
rpf attach pod/web 5353:53/udp\n  \
rpf attach --via 'ip netns exec pod1 rpf-sidecar stdio' 8080:80"
)]
pub struct AttachArgs {
    /// TARGET then SPEC..., or only SPEC... with --via.
    #[arg(value_name = "TARGET|SPEC", required = true, num_args = 1..)]
    pub args: Vec<String>,

    /// Run COMMAND (with `sh -c`) and speak to `rpf-sidecar stdio` over its
    /// stdin/stdout instead of going through a cluster.
    #[arg(long, value_name = "COMMAND")]
    pub via: Option<String>,

    /// Namespace, context and kubeconfig.
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// How to reach the sidecar.
    #[arg(long, value_enum, default_value_t = Transport::Portforward)]
    pub transport: Transport,

    /// Address to bind in the pod, repeatable (default: 127.0.0.1 and ::1).
    #[arg(long = "address", value_name = "ADDR")]
    pub addresses: Vec<IpAddr>,
    /// Concurrent connections allowed per forwarded port (for a /udp port:
    /// concurrent flows, one per pod-side peer address).
    #[arg(long, value_name = "N", default_value_t = rpf_proto::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_connections: u32,
    /// Accept connections in the pod only from these peers (CIDR), repeatable.
    /// Enforced by the sidecar, which sees the peer: it keeps other workloads
    /// out, but a modified sidecar could ignore it.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<IpNet>,

    /// Exit (non-zero) when the channel is lost instead of reconnecting.
    #[arg(long)]
    pub no_reconnect: bool,
    /// How long the sidecar keeps the ports in the pod bound after the
    /// channel is lost (not after Ctrl-C), so pod connections wait for the
    /// reconnect instead of being refused, e.g. 30s, 2m, 45; 0 closes them
    /// at once. The sidecar caps it at 10m. Needs a sidecar that outlives
    /// the channel (the port-forward transport); none with exec or a
    /// `--via` command that starts `rpf-sidecar stdio`.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_grace)]
    pub grace: std::time::Duration,
    /// How long a UDP flow (one pod-side peer address) lives without a
    /// datagram either way, e.g. 60s, 5m, 30; its next datagram opens a new
    /// flow. The sidecar caps it at 1h.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_idle)]
    pub udp_idle_timeout: std::time::Duration,
    /// How long the first attach waits for the pod to be running with its
    /// sidecar ready (as kubectl port-forward does), e.g. 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = humantime::parse_duration)]
    pub pod_running_timeout: std::time::Duration,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Output: lines for people, or one JSON event a line on stdout
    /// (docs/events.md).
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// A duration as humantime (`30s`, `2m`, `1m30s`) or plain seconds (`45`).
fn parse_grace(s: &str) -> Result<std::time::Duration, String> {
    match s.trim().parse::<u64>() {
        Ok(secs) => Ok(std::time::Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s).map_err(|e| e.to_string()),
    }
}

/// A positive duration, as [`parse_grace`] reads it.
fn parse_idle(s: &str) -> Result<std::time::Duration, String> {
    match parse_grace(s)? {
        d if d.is_zero() => Err("must be more than zero".into()),
        d => Ok(d),
    }
}

/// Which cluster and namespace, as kubectl's flags name them.
#[derive(Debug, Clone, Args)]
pub struct ClusterFlags {
    /// Namespace to work in, of TARGET too (default: the context's namespace).
    #[arg(short, long, env = "RPF_NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubeconfig context to use.
    #[arg(long)]
    pub context: Option<String>,
    /// Path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
}

impl ClusterFlags {
    /// The cluster flags, for the cluster module.
    pub fn options(&self) -> ClusterOptions {
        ClusterOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespace: self.namespace.clone(),
        }
    }
}

/// `rpf expose`.
#[derive(Debug, Args)]
#[command(
    override_usage = "rpf expose [OPTIONS] svc/NAME PORT[:[HOST:]LOCAL]...\n       rpf expose --delete NAME [-n NS]",
    after_help = "PORT is the Service port other pods use; HOST:LOCAL what rpf dials on this machine\n\
(default localhost:PORT). Other pods reach NAME.NS.svc.cluster.local:PORT while rpf runs;\n\
Ctrl-C removes everything rpf created. After kill -9: `rpf expose --delete NAME` or `rpf cleanup`.\n\n\
Examples:\n  rpf expose svc/api 80:8000\n  rpf expose svc/db 5432 -n dev --allow 10.244.0.0/16\n  \
rpf expose svc/web 80:3000 --gateway infra/public --hostname web.example.com"
)]
pub struct ExposeArgs {
    /// svc/NAME then PORT[:[HOST:]LOCAL]...
    #[arg(value_name = "svc/NAME PORT", num_args = 0.., required_unless_present = "delete")]
    pub args: Vec<String>,
    /// Remove what `rpf expose svc/NAME` created (after it was killed).
    #[arg(long, value_name = "NAME", conflicts_with = "args")]
    pub delete: Option<String>,
    /// Which cluster and namespace.
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// Relay pods: the Service keeps working while one of them is replaced.
    #[arg(long, value_name = "N", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=20))]
    pub replicas: u16,
    /// Accept connections only from these peers (CIDR), repeatable.
    /// Enforced by the relay, the only place that sees the true peer
    /// address; through a Gateway the peer is the Gateway's proxy.
    #[arg(long = "allow", value_name = "CIDR")]
    pub allow: Vec<IpNet>,
    /// Concurrent connections allowed per port on each relay.
    #[arg(long, value_name = "N", default_value_t = EXPOSE_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_connections: u32,
    /// Also route a Gateway to the Service: `[NS/]NAME` (an HTTPRoute with
    /// --hostname, else a TCPRoute).
    #[arg(long, value_name = "[NS/]NAME")]
    pub gateway: Option<String>,
    /// Host name of the HTTPRoute (makes the route an HTTPRoute).
    #[arg(long, value_name = "HOST", requires = "gateway")]
    pub hostname: Option<String>,
    /// Listener of the Gateway to attach to (`sectionName`).
    #[arg(long, value_name = "SECTION", requires = "gateway")]
    pub listener: Option<String>,
    /// Image of the relay pods (the rpf sidecar image).
    #[arg(long, env = "RPF_SIDECAR_IMAGE", value_name = "IMAGE",
          default_value = rpf_proto::DEFAULT_SIDECAR_IMAGE)]
    pub image: String,
    /// Image pull policy of the relay pods (Always, IfNotPresent, Never).
    #[arg(long, value_name = "POLICY")]
    pub image_pull_policy: Option<String>,
    /// How long to wait for the first relay pod to run, e.g. 30s, 2m.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = humantime::parse_duration)]
    pub pod_running_timeout: std::time::Duration,
    /// Output: lines for people, or one JSON event a line on stdout
    /// (docs/events.md).
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// Connections per port and relay unless `--max-connections`: a Service is
/// shared by many pods, so more than `rpf attach`'s 10, still bounded.
pub const EXPOSE_MAX_CONNECTIONS: u32 = 100;

/// `rpf doctor`.
#[derive(Debug, Args)]
#[command(
    override_usage = "rpf doctor [OPTIONS] [TARGET] [SPEC...]",
    after_help = "Checks, in order, each PASS, WARN, FAIL or SKIP with the evidence and the next step:\n\
the API server and credentials, RBAC, the webhook (installed, ready, caBundle, namespace),\n\
the target's pod (injected, sidecar ready, its version), the control port through\n\
port-forward and exec, an end-to-end probe through the pod, and each SPEC's local target.\n\
Exit status 0 when nothing failed (warnings allowed), 1 otherwise. See docs/doctor.md.\n\n\
Examples:\n  rpf doctor\n  rpf doctor deploy/web 8080:3000\n  rpf doctor -n dev pod/web-7f9 -o json"
)]
pub struct DoctorArgs {
    /// TARGET (optional; pod/NAME, deploy/NAME, ...) then SPEC... (as for `rpf attach`).
    #[arg(value_name = "TARGET|SPEC", num_args = 0..)]
    pub args: Vec<String>,
    /// Which cluster and namespace.
    #[command(flatten)]
    pub cluster: ClusterFlags,
    /// The transport `rpf attach` will use: a failure of the other one is
    /// only a warning.
    #[arg(long, value_enum, default_value_t = Transport::Portforward)]
    pub transport: Transport,
    /// Output format: aligned text, or one JSON object a line.
    #[arg(short, long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

/// How `attach`, `expose` and `doctor` print what happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Lines for people.
    Text,
    /// One JSON object a line on stdout, for scripts (docs/events.md and
    /// docs/doctor.md name the fields).
    Json,
}

impl From<Format> for rpf_tunnel::events::Output {
    fn from(f: Format) -> Self {
        match f {
            Format::Text => Self::Human,
            Format::Json => Self::Json,
        }
    }
}

/// `rpf cleanup`.
#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Which cluster and namespace.
    #[command(flatten)]
    pub cluster: ClusterFlags,
}

/// `rpf inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// YAML file to read, or - for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    /// Inject into every pod template, annotated or not.
    #[arg(long)]
    pub all: bool,
    /// Sidecar image to inject.
    #[arg(long, env = "RPF_SIDECAR_IMAGE", value_name = "IMAGE",
          default_value = rpf_proto::DEFAULT_SIDECAR_IMAGE)]
    pub image: String,
    /// Image pull policy of the sidecar (Always, IfNotPresent, Never).
    #[arg(long, value_name = "POLICY")]
    pub image_pull_policy: Option<String>,
    /// Inject as a native sidecar (an init container with restartPolicy
    /// Always); only for clusters running Kubernetes 1.29 or later.
    #[arg(long)]
    pub native_sidecar: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn grace_takes_humantime_or_plain_seconds() {
        assert_eq!(parse_grace("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_grace("0"), Ok(Duration::ZERO));
        assert_eq!(parse_grace("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_grace("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_grace("soon").is_err());
        assert!(parse_grace("-5").is_err());
    }

    #[test]
    fn grace_defaults_to_thirty_seconds() {
        let cli = Cli::try_parse_from(["rpf", "attach", "--via", "x", "8080"]).unwrap();
        let Command::Attach(args) = cli.command else {
            panic!("attach")
        };
        assert_eq!(args.grace, rpf_proto::DEFAULT_GRACE);
        assert_eq!(args.udp_idle_timeout, rpf_proto::DEFAULT_UDP_IDLE_TIMEOUT);
    }

    #[test]
    fn udp_idle_timeout_must_be_positive() {
        assert_eq!(parse_idle("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_idle("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_idle("0").is_err());
    }
}
