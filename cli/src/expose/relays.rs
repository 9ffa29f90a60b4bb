//! Attaching to every relay pod at once: one `rpf attach` session per
//! relay, each reconnecting on its own, and a watch (a poll of the relay
//! pods by label) that attaches to new relays (a replaced pod, a scaled
//! Deployment) and lets go of the ones that are gone.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use rpf_proto::message::BoundListener;
use rpf_proto::Side;
use rpf_tunnel::cli_side::CliConfig;
use rpf_tunnel::metrics::Metrics;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::objects::Expose;
use crate::attach::{supervise, Policy, Source};
use crate::cluster::error::{api_message, classify, ApiFailure};
use crate::cluster::{preflight, ClusterSource};
use crate::events::{Event, ServedPort};
use crate::spec::PortSpec;

/// How often the relay pods are listed.
const POLL: Duration = Duration::from_secs(2);
/// How long a relay whose session failed waits before the next attach.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// How long sessions may take to say goodbye on exit.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(5);

/// A session with one relay pod.
struct Relay {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Runs a session with every relay pod until `shutdown`, or until the
/// first relay fails in a way only the user can fix (nothing attached yet,
/// `first_wait` over, an old sidecar image, a port taken).
pub async fn run(
    client: &Client,
    expose: &Expose,
    specs: &[PortSpec],
    config: CliConfig,
    cluster_ip: String,
    first_wait: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &expose.namespace);
    let list = ListParams::default().labels(&expose.selector());
    let metrics = Metrics::new(Side::Cli);
    let (attached_tx, mut attached_rx) = mpsc::unbounded_channel::<String>();
    let mut relays: HashMap<String, Relay> = HashMap::new();
    let mut retry_at: HashMap<String, Instant> = HashMap::new();
    let mut announced = false;
    let deadline = Instant::now() + first_wait;
    let mut last_state = String::new();
    // Relay pods being deleted.
    let mut going: Vec<String> = Vec::new();
    loop {
        match pods.list(&list).await {
            Ok(found) => {
                let found = found.items;
                // Let go of relays that are gone. A terminating relay keeps
                // its session: it drains (not ready, still serving) until
                // the Service has stopped sending it connections.
                for (name, relay) in &relays {
                    if !found.iter().any(|p| &p.name_any() == name) {
                        relay.stop.cancel();
                    }
                }
                going = found
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_some())
                    .map(|p| p.name_any())
                    .collect();
                let mut pull_failures = Vec::new();
                for pod in &found {
                    let name = pod.name_any();
                    if relays.contains_key(&name)
                        || retry_at.get(&name).is_some_and(|t| Instant::now() < *t)
                    {
                        continue;
                    }
                    match preflight::check_pod_started(pod) {
                        Ok(()) => {
                            let relay = spawn(
                                client,
                                expose,
                                specs,
                                &config,
                                &metrics,
                                pod,
                                &attached_tx,
                                &shutdown,
                            );
                            relays.insert(name, relay);
                        }
                        Err(e) => {
                            last_state = e.to_string();
                            if let Some(why) = preflight::image_pull_failure(pod) {
                                pull_failures.push(format!("pod {name}: {why}"));
                            }
                        }
                    }
                }
                // A relay that cannot get its image will not run however
                // long we wait: say so now, not at the timeout.
                let live = found
                    .iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .count();
                if !announced && relays.is_empty() && live > 0 && pull_failures.len() == live {
                    anyhow::bail!(
                        "the relay pods of service/{} cannot get their image: {}; load the image into the nodes, or give one they can pull with --image",
                        expose.name,
                        rpf_proto::untrusted::escape_cut(&pull_failures.join("; "), 1024)
                    );
                }
                if found.is_empty() {
                    last_state = format!(
                        "no relay pods yet (kubectl get pods -n {} -l {})",
                        expose.namespace,
                        expose.selector()
                    );
                }
                retry_at.retain(|name, _| found.iter().any(|p| &p.name_any() == name));
            }
            Err(e)
                if classify(&e) == ApiFailure::Forbidden
                    || classify(&e) == ApiFailure::Unauthorized =>
            {
                anyhow::bail!(
                    "cannot list the relay pods in namespace {}: {}",
                    expose.namespace,
                    api_message(&e)
                );
            }
            Err(e) => tracing::warn!(
                "cannot list the relay pods: {}; trying again",
                api_message(&e)
            ),
        }
        // Sessions that ended: a pod that went away, or a failure.
        let ended: Vec<String> = relays
            .iter()
            .filter(|(_, r)| r.task.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        for name in ended {
            let relay = relays.remove(&name).expect("listed above");
            let stopped = relay.stop.is_cancelled() || going.contains(&name);
            match relay.task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if !announced && !stopped => {
                    return Err(e.context(format!(
                        "cannot attach to relay pod {}/{name}",
                        expose.namespace
                    )));
                }
                Ok(Err(e)) if stopped || shutdown.is_cancelled() => {
                    tracing::debug!("relay {name} ended: {e:#}")
                }
                Ok(Err(e)) => {
                    let event = Event::RelayLost {
                        relay: format!("{}/{name}", expose.namespace),
                        error: format!("{e:#}"),
                    };
                    config.output.report(&event, || {
                        eprintln!(
                            "Relay pod {}/{name}: {e:#}; attaching again when it is ready",
                            expose.namespace
                        )
                    });
                }
                Err(e) => {
                    let event = Event::RelayLost {
                        relay: format!("{}/{name}", expose.namespace),
                        error: format!("session task failed: {e}"),
                    };
                    config.output.report(&event, || {
                        eprintln!(
                            "Relay pod {}/{name}: session task failed: {e}",
                            expose.namespace
                        )
                    });
                }
            }
            if stopped && !shutdown.is_cancelled() {
                let event = Event::RelayGone {
                    relay: format!("{}/{name}", expose.namespace),
                };
                config.output.report(&event, || {
                    eprintln!(
                        "Relay pod {}/{name} is gone; the other relays keep serving",
                        expose.namespace
                    )
                });
            }
            retry_at.insert(name, Instant::now() + RETRY_AFTER);
        }
        if !announced && relays.is_empty() && Instant::now() > deadline {
            anyhow::bail!(
                "no relay pod of service/{} could be attached within {}: {last_state}; if the image cannot be pulled, load it into the nodes or give another with --image",
                expose.name,
                humantime::format_duration(first_wait)
            );
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(POLL) => {}
            Some(_) = attached_rx.recv() => {
                if !announced {
                    announced = true;
                    let event = Event::Exposed {
                        namespace: &expose.namespace,
                        service: &expose.name,
                        dns_name: expose.dns_name(),
                        cluster_ip: &cluster_ip,
                        ports: served_ports(expose, specs),
                    };
                    config
                        .output
                        .report(&event, || println!("{}", summary(expose, specs, &cluster_ip)));
                }
            }
        }
    }
    // Every session watches `shutdown` and says goodbye to its relay.
    let goodbyes = futures::future::join_all(relays.into_values().map(|r| r.task));
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, goodbyes).await;
    Ok(())
}

/// Starts the session with one relay pod.
#[allow(clippy::too_many_arguments)]
fn spawn(
    client: &Client,
    expose: &Expose,
    specs: &[PortSpec],
    config: &CliConfig,
    metrics: &Metrics,
    pod: &Pod,
    attached: &mpsc::UnboundedSender<String>,
    shutdown: &CancellationToken,
) -> Relay {
    let name = pod.name_any();
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
    let stop = shutdown.child_token();
    let mut source = Source::Cluster(Box::new(ClusterSource::relay(
        client.clone(),
        &expose.namespace,
        &name,
    )));
    let (config, metrics, attached) = (config.clone(), metrics.clone(), attached.clone());
    let ports = served_ports(expose, specs);
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let announce = |bound: &[BoundListener], place: &str| {
            let serving: Vec<ServedPort> = ports
                .iter()
                .zip(1..)
                .filter(|(_, id)| bound.iter().any(|b| b.id == *id))
                .map(|(p, _)| p.clone())
                .collect();
            let relay = place.strip_prefix("pod ").unwrap_or(place);
            let event = Event::RelayAttached {
                relay,
                ip: ip.as_deref(),
                ports: serving.clone(),
            };
            config.output.report(&event, || {
                println!("{}", relay_line(relay, ip.as_deref(), &serving))
            });
            let _ = attached.send(place.to_owned());
        };
        let policy = Policy {
            reconnect: true,
            first_wait: Duration::from_secs(30),
            wait_for_ports: true,
        };
        supervise(&mut source, &config, &metrics, policy, &announce, token).await
    });
    Relay { stop, task }
}

/// `/udp` for a UDP port, as in a SPEC; nothing for TCP.
fn udp_suffix(protocol: rpf_proto::message::Protocol) -> &'static str {
    match protocol {
        rpf_proto::message::Protocol::Tcp => "",
        rpf_proto::message::Protocol::Udp => "/udp",
    }
}

/// Each Service port and the local target behind it.
fn served_ports(expose: &Expose, specs: &[PortSpec]) -> Vec<ServedPort> {
    expose
        .ports
        .iter()
        .zip(specs)
        .map(|(p, s)| ServedPort {
            port: p.port,
            protocol: s.protocol,
            target: s.local_display(),
        })
        .collect()
}

/// `Relay pod dev/rpf-relay-web-x (10.1.0.7) serves port 80 -> localhost:8000`.
fn relay_line(relay: &str, ip: Option<&str>, serving: &[ServedPort]) -> String {
    let serving: Vec<String> = serving
        .iter()
        .map(|p| format!("port {}{} -> {}", p.port, udp_suffix(p.protocol), p.target))
        .collect();
    match ip {
        Some(ip) => format!("Relay pod {relay} ({ip}) serves {}", serving.join(", ")),
        None => format!("Relay pod {relay} serves {}", serving.join(", ")),
    }
}

/// `Exposed web.dev.svc.cluster.local:80 -> localhost:8000 (ClusterIP 10.96.0.12); Ctrl-C removes it`.
fn summary(expose: &Expose, specs: &[PortSpec], cluster_ip: &str) -> String {
    let ports: Vec<String> = expose
        .ports
        .iter()
        .zip(specs)
        .map(|(p, s)| {
            format!(
                "{}:{}{} -> {}",
                expose.dns_name(),
                p.port,
                udp_suffix(p.protocol),
                s.local_display()
            )
        })
        .collect();
    format!(
        "Exposed {} (service/{} in namespace {}, ClusterIP {cluster_ip}); Ctrl-C removes it",
        ports.join(", "),
        expose.name,
        expose.namespace
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expose::objects::ServicePort;
    use crate::spec::Protocol;
    use rpf_inject::InjectConfig;

    #[test]
    fn lines_name_relay_service_and_destination() {
        let expose = Expose {
            name: "web".into(),
            namespace: "dev".into(),
            ports: vec![
                ServicePort::new(0, 80, Protocol::Tcp),
                ServicePort::new(1, 443, Protocol::Tcp),
            ],
            replicas: 2,
            image: InjectConfig::new("x"),
        };
        let specs = PortSpec::parse_all(&["80:8000", "443:h:8443"]).unwrap();
        assert_eq!(
            summary(&expose, &specs, "10.96.0.12"),
            "Exposed web.dev.svc.cluster.local:80 -> localhost:8000, web.dev.svc.cluster.local:443 -> h:8443 (service/web in namespace dev, ClusterIP 10.96.0.12); Ctrl-C removes it"
        );
        assert_eq!(
            relay_line("dev/r-1", Some("10.1.0.7"), &served_ports(&expose, &specs)),
            "Relay pod dev/r-1 (10.1.0.7) serves port 80 -> localhost:8000, port 443 -> h:8443"
        );
    }
}
