//! `rpf expose`: a service on this machine as a Kubernetes Service for
//! other pods, the way ngrok exposes one to the internet, but in-cluster.
//!
//! rpf applies (server-side, field manager `rpf`) a Deployment of relay
//! pods running `rpf-sidecar serve` and a Service selecting them
//! ([`objects`]), attaches to every relay as `rpf attach` attaches to a
//! pod ([`relays`]), and removes everything on exit ([`remove`]). A relay
//! is ready, and so an endpoint of the Service, only while an rpf session
//! has its listeners bound there. Permissions are checked before anything
//! is created ([`access`]); with `--gateway` a route is added ([`gateway`]).

pub mod access;
mod apply;
mod gateway;
mod objects;
mod relays;
mod remove;

use std::net::Ipv4Addr;

use anyhow::Context;
use rpf_inject::InjectConfig;
use rpf_proto::expose::MAX_PORTS;
use rpf_proto::message::{BindAddr, ListenerSpec};
use rpf_tunnel::cli_side::{CliConfig, Forward};
use rpf_tunnel::events::Output;
use tokio_util::sync::CancellationToken;

use crate::args::{CleanupArgs, ExposeArgs};
use crate::events::Event;
use crate::spec::{PortSpec, Protocol};
use objects::{Expose, GatewayRef, RouteSpec, ServicePort};

/// Why `rpf expose` refuses to start or to go on; worded for the user.
#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    /// The Service name is not one Kubernetes accepts.
    #[error("invalid service name {name:?}: {why}; use svc/NAME with NAME a DNS label of at most 53 lowercase letters, digits and '-', starting with a letter (e.g. svc/my-api)")]
    BadName {
        /// As typed.
        name: String,
        /// What is wrong.
        why: &'static str,
    },
    /// No PORT after the name.
    #[error("no port given after svc/{0}: give at least one PORT[:[HOST:]LOCAL], e.g. `rpf expose svc/{0} 80:8000`")]
    NoPorts(String),
    /// `--gateway` with UDP ports only: Gateway API routes carry TCP
    /// (UDPRoute is experimental and rarely implemented).
    #[error("--gateway needs a TCP port to route to, and every port given is UDP; routes carry TCP (UDPRoute is experimental): leave out --gateway, or add a TCP port")]
    NoRoutablePort,
    /// More ports than a relay reserves.
    #[error("{0} ports given; one expose takes at most {MAX_PORTS}")]
    TooManyPorts(usize),
    /// An object of that name exists and is not rpf's.
    #[error("{kind} \"{name}\" already exists in namespace \"{namespace}\" and was not created by rpf expose; rpf does not take it over: choose another name, or remove it yourself (kubectl delete {kind} {name} -n {namespace})")]
    NotOurs {
        /// `service`, `deployment`, `httproute`.
        kind: String,
        /// Its name.
        name: String,
        /// Its namespace.
        namespace: String,
    },
    /// `--gateway` without the Gateway API in the cluster.
    #[error("the Gateway API is not installed in this cluster ({what}); install its CRDs (kubectl apply -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.6.1/standard-install.yaml) and a Gateway controller, or leave out --gateway")]
    NoGatewayApi {
        /// What is missing.
        what: String,
    },
    /// `--gateway` names no Gateway.
    #[error("gateway \"{name}\" not found in namespace \"{namespace}\" (kubectl get gateways -A lists them); nothing was created")]
    NoGateway {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// `--gateway` does not parse.
    #[error("invalid --gateway {0:?}: expected NAME or NAMESPACE/NAME")]
    BadGateway(String),
}

impl ExposeError {
    /// Whether the command line is at fault (exit status 2), not the
    /// cluster.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ExposeError::BadName { .. }
                | ExposeError::NoPorts(_)
                | ExposeError::NoRoutablePort
                | ExposeError::TooManyPorts(_)
                | ExposeError::BadGateway(_)
        )
    }
}

/// Runs `rpf expose` (or `--delete`) until Ctrl-C, then removes what it
/// created.
pub async fn run(args: ExposeArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(name) = &args.delete {
        let (client, namespace) = args.cluster.options().connect().await?;
        access::check(&client, &namespace, &access::removing()).await?;
        let removed = remove::expose(&client, &namespace, Some(name), Output::Human).await?;
        if removed.is_empty() {
            println!("Nothing to delete: no rpf expose named {name:?} in namespace {namespace}");
        }
        return Ok(());
    }
    let (name, specs) = parse_args(&args.args)?;
    if let Some(gateway) = &args.gateway {
        parse_gateway(gateway)?;
        if specs.iter().all(|s| s.protocol == Protocol::Udp) {
            return Err(ExposeError::NoRoutablePort.into());
        }
    }
    let (client, namespace) = args.cluster.options().connect().await?;
    let mut image = InjectConfig::new(&args.image);
    image.image_pull_policy = args.image_pull_policy.clone();
    let expose = Expose {
        ports: specs
            .iter()
            .enumerate()
            .map(|(i, s)| ServicePort::new(i, s.remote_port, s.protocol))
            .collect(),
        name,
        namespace: namespace.clone(),
        replicas: args.replicas,
        image,
    };
    let route = route_spec(&args, &namespace)?;

    // Everything that can refuse is asked before anything is created.
    access::check(&client, &namespace, &access::exposing(route.as_ref())).await?;
    if let Some(route) = &route {
        access::check(&client, &route.gateway.namespace, &[access::get_gateways()]).await?;
        gateway::check(&client, route).await?;
    }
    apply::check_ownership(&client, &expose, route.as_ref()).await?;

    let output = Output::from(args.output);
    let applied = apply::apply(&client, &expose, route.as_ref()).await;
    let served = match applied {
        Ok(cluster_ip) => {
            let route_name = route
                .as_ref()
                .map(|r| format!("{}/{}", r.kind().to_lowercase(), expose.name));
            let mut objects = vec![
                format!("service/{}", expose.name),
                format!("deployment/{}", expose.deployment_name()),
            ];
            objects.extend(route_name.clone());
            let event = Event::Created {
                namespace: &namespace,
                objects,
                replicas: expose.replicas,
            };
            output.report(&event, || {
                println!(
                    "Created service/{} and deployment/{} ({} relay pods){} in namespace {namespace}; waiting for the relays",
                    expose.name,
                    expose.deployment_name(),
                    expose.replicas,
                    route_name.map(|r| format!(", {r}")).unwrap_or_default(),
                )
            });
            let config = cli_config(&expose, &specs, &args);
            relays::run(
                &client,
                &expose,
                &specs,
                config,
                cluster_ip,
                args.pod_running_timeout,
                shutdown,
            )
            .await
        }
        Err(e) => Err(e),
    };
    // Whatever happened, leave nothing behind.
    let removing = format!(
        "Removing service/{} and its relays from namespace {namespace}",
        expose.name
    );
    match output {
        Output::Human => println!("{removing}"),
        Output::Json => eprintln!("{removing}"),
    }
    let removed = remove::expose(&client, &namespace, Some(&expose.name), output)
        .await
        .context("cannot remove what rpf expose created; run `rpf expose --delete` again");
    match (served, removed) {
        (Err(e), _) => Err(e),
        (Ok(()), removed) => removed.map(|_| ()),
    }
}

/// `rpf cleanup`: removes every expose's objects in the namespace.
pub async fn cleanup(args: CleanupArgs) -> anyhow::Result<()> {
    let (client, namespace) = args.cluster.options().connect().await?;
    access::check(&client, &namespace, &access::removing()).await?;
    let removed = remove::expose(&client, &namespace, None, Output::Human).await?;
    if removed.is_empty() {
        println!("Nothing to clean up: no rpf expose objects in namespace {namespace}");
    }
    Ok(())
}

/// `svc/NAME PORT...` → the name and the port specs.
fn parse_args(args: &[String]) -> Result<(String, Vec<PortSpec>), anyhow::Error> {
    let (target, ports) = args.split_first().expect("clap requires the arguments");
    let name = parse_service(target)?;
    if ports.is_empty() {
        return Err(ExposeError::NoPorts(name).into());
    }
    if ports.len() > MAX_PORTS {
        return Err(ExposeError::TooManyPorts(ports.len()).into());
    }
    let specs = PortSpec::parse_all(ports)?;
    Ok((name, specs))
}

/// `svc/NAME`, `service/NAME` or `NAME`, NAME a DNS-1035 label short
/// enough for `rpf-relay-NAME` to be one too.
fn parse_service(text: &str) -> Result<String, ExposeError> {
    let name = match text.split_once('/') {
        Some((kind, name))
            if ["svc", "service", "services"].contains(&kind.to_lowercase().as_str()) =>
        {
            name
        }
        Some(_) => {
            return Err(ExposeError::BadName {
                name: text.into(),
                why: "rpf expose creates a Service, so the kind must be svc",
            })
        }
        None => text,
    };
    let bad = |why| ExposeError::BadName {
        name: name.into(),
        why,
    };
    if name.is_empty() {
        return Err(bad("it is empty"));
    }
    if name.len() > 53 {
        return Err(bad("it is longer than 53 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err(bad("only lowercase letters, digits and '-' are allowed"));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(bad("it must start with a letter"));
    }
    if name.ends_with('-') {
        return Err(bad("it must not end with '-'"));
    }
    Ok(name.to_owned())
}

/// `--gateway [NAMESPACE/]NAME`, checked before anything touches the
/// cluster.
fn parse_gateway(gateway: &str) -> Result<(Option<&str>, &str), ExposeError> {
    let (ns, name) = match gateway.split_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, gateway),
    };
    if ns == Some("") || name.is_empty() || name.contains('/') {
        return Err(ExposeError::BadGateway(gateway.to_owned()));
    }
    Ok((ns, name))
}

fn route_spec(args: &ExposeArgs, namespace: &str) -> Result<Option<RouteSpec>, ExposeError> {
    let Some(gateway) = &args.gateway else {
        return Ok(None);
    };
    let (ns, name) = parse_gateway(gateway)?;
    let ns = ns.unwrap_or(namespace);
    Ok(Some(RouteSpec {
        gateway: GatewayRef {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            listener: args.listener.clone(),
        },
        hostname: args.hostname.clone(),
    }))
}

/// One forward per port: the relay binds its relay port on every IPv4
/// address of its pod (the Service sends traffic to the pod IP), and rpf
/// dials HOST:LOCAL. Relays keep no session across a lost channel (grace
/// 0): the other relays and the Service's readiness cover the gap, and a
/// new `rpf expose` after `kill -9` can bind at once.
fn cli_config(expose: &Expose, specs: &[PortSpec], args: &ExposeArgs) -> CliConfig {
    let forwards = expose
        .ports
        .iter()
        .zip(specs)
        .zip(1..)
        .map(|((port, spec), id)| Forward {
            listener: ListenerSpec {
                id,
                port: port.relay_port,
                addrs: vec![BindAddr {
                    ip: Ipv4Addr::UNSPECIFIED.into(),
                    required: true,
                }],
                max_connections: args.max_connections,
                allow: args.allow.clone(),
                protocol: spec.protocol,
                // Absent: the default idle timeout.
                idle_timeout_ms: 0,
            },
            local_host: spec.local_host.clone(),
            local_port: spec.local_port,
        })
        .collect();
    let mut config = CliConfig::new(forwards);
    config.output = args.output.into();
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names() {
        assert_eq!(parse_service("svc/web").unwrap(), "web");
        assert_eq!(parse_service("service/a-1").unwrap(), "a-1");
        assert_eq!(parse_service("web").unwrap(), "web");
        for bad in [
            "deploy/web",
            "svc/",
            "svc/Web",
            "svc/1web",
            "svc/web-",
            "svc/a.b",
        ] {
            let e = parse_service(bad).unwrap_err().to_string();
            assert!(e.contains("svc/NAME"), "{bad}: {e}");
        }
        assert!(parse_service(&format!("svc/{}", "a".repeat(54))).is_err());
        assert!(parse_service(&format!("svc/{}", "a".repeat(53))).is_ok());
    }

    #[test]
    fn ports_follow_the_name() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (name, specs) = parse_args(&args(&["svc/web", "80:8000", "443:h:8443"])).unwrap();
        assert_eq!(name, "web");
        assert_eq!(specs[0].to_string(), "80:localhost:8000");
        assert_eq!(specs[1].to_string(), "443:h:8443");
        let e = parse_args(&args(&["svc/web"])).unwrap_err().to_string();
        assert!(e.contains("rpf expose svc/web 80:8000"), "{e}");
        assert!(parse_args(&args(&["svc/web", "80", "80:81"])).is_err());
        // UDP and TCP on one number are two ports, as for DNS.
        let (_, specs) = parse_args(&args(&["svc/dns", "53:5353/udp", "53:5353"])).unwrap();
        assert_eq!(specs[0].protocol, Protocol::Udp);
        assert_eq!(specs[1].protocol, Protocol::Tcp);
    }

    #[test]
    fn not_ours_says_what_to_do() {
        let e = ExposeError::NotOurs {
            kind: "service".into(),
            name: "web".into(),
            namespace: "dev".into(),
        }
        .to_string();
        assert!(e.contains("not created by rpf expose"), "{e}");
        assert!(e.contains("kubectl delete service web -n dev"), "{e}");
    }
}
