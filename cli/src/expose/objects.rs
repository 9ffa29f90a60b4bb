//! The objects `rpf expose` writes, as plain JSON for server-side apply:
//! the relay Deployment, the Service in front of it and, with `--gateway`,
//! a route from a Gateway to that Service. Pure functions, so golden files
//! pin every field.

use rpf_inject::InjectConfig;
use rpf_proto::expose::{
    EXPOSE_LABEL, FIRST_RELAY_PORT, MANAGED_BY, MANAGED_BY_LABEL, READY_PORT, RELAY_APP_NAME,
    RELAY_PREFIX,
};
use rpf_proto::message::Protocol;
use rpf_proto::DEFAULT_CONTROL_PORT;
use serde_json::{json, Map, Value};

/// API group of the Gateway API.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The Gateway API version rpf writes (HTTPRoute and TCPRoute are `v1`
/// since Gateway API 1.6).
pub const GATEWAY_VERSION: &str = "v1";

/// How long a relay keeps serving after SIGTERM while reporting not ready:
/// longer than the Service takes to drop it (endpoints controller, then
/// kube-proxy on every node), so no new connection meets a closed port.
pub const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// One exposed port: the Service port other pods use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePort {
    /// The Service's port.
    pub port: u16,
    /// The port the relay binds in its pod (`targetPort`).
    pub relay_port: u16,
    /// TCP or UDP (both may use the same port number, like DNS).
    pub protocol: Protocol,
}

impl ServicePort {
    /// The `index`-th port of an expose (from 0).
    pub fn new(index: usize, port: u16, protocol: Protocol) -> Self {
        Self {
            port,
            relay_port: FIRST_RELAY_PORT + u16::try_from(index).expect("at most MAX_PORTS ports"),
            protocol,
        }
    }

    /// The Service port's name (required once there are several; unique
    /// when TCP and UDP share a number).
    fn name(&self) -> String {
        match self.protocol {
            Protocol::Tcp => format!("port-{}", self.port),
            Protocol::Udp => format!("port-{}-udp", self.port),
        }
    }

    /// `TCP` or `UDP`, as Kubernetes spells it.
    fn kube_protocol(&self) -> &'static str {
        match self.protocol {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// Everything the objects depend on.
#[derive(Debug, Clone)]
pub struct Expose {
    /// The Service's name; also names the expose.
    pub name: String,
    /// Where everything goes.
    pub namespace: String,
    /// The ports, in the order given.
    pub ports: Vec<ServicePort>,
    /// How many relay pods.
    pub replicas: u16,
    /// The relay's image and pull policy.
    pub image: InjectConfig,
}

/// Where a route attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRef {
    /// The Gateway's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// A listener of it (`sectionName`), or all that accept the route.
    pub listener: Option<String>,
}

/// Which route, for which Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// The parent Gateway.
    pub gateway: GatewayRef,
    /// HTTPRoute for this host name; TCPRoute when absent.
    pub hostname: Option<String>,
}

impl RouteSpec {
    /// `HTTPRoute` or `TCPRoute`.
    pub fn kind(&self) -> &'static str {
        if self.hostname.is_some() {
            "HTTPRoute"
        } else {
            "TCPRoute"
        }
    }

    /// The plural resource name, e.g. `httproutes`.
    pub fn plural(&self) -> &'static str {
        if self.hostname.is_some() {
            "httproutes"
        } else {
            "tcproutes"
        }
    }
}

impl Expose {
    /// The relay Deployment's name.
    pub fn deployment_name(&self) -> String {
        format!("{RELAY_PREFIX}{}", self.name)
    }

    /// `NAME.NS.svc.cluster.local`: how other pods reach the Service.
    pub fn dns_name(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }

    /// The label selector of everything that belongs to this expose.
    pub fn selector(&self) -> String {
        format!(
            "{MANAGED_BY_LABEL}={MANAGED_BY},{EXPOSE_LABEL}={}",
            self.name
        )
    }

    /// The labels every object of this expose carries; the relay pods are
    /// selected by exactly these.
    fn labels(&self) -> Map<String, Value> {
        let mut labels = Map::new();
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        labels.insert(EXPOSE_LABEL.into(), self.name.clone().into());
        labels
    }

    fn metadata(&self, name: &str) -> Value {
        json!({
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(),
        })
    }

    /// The relay Deployment: `replicas` pods running `rpf-sidecar serve`,
    /// ready (readiness probe on `/ready`) only while an `rpf` session has
    /// its listeners bound there, spread over nodes when possible, passing
    /// the Pod Security "restricted" profile.
    pub fn deployment(&self) -> Value {
        let mut container =
            rpf_inject::sidecar::container(&self.image, DEFAULT_CONTROL_PORT, false);
        let c = container
            .as_object_mut()
            .expect("the sidecar is a JSON object");
        c["args"]
            .as_array_mut()
            .expect("the sidecar has args")
            .extend([
                "--ready-addr".into(),
                format!("0.0.0.0:{READY_PORT}").into(),
                "--drain".into(),
                format!("{}s", DRAIN.as_secs()).into(),
            ]);
        let mut ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| json!({ "name": format!("relay-{}", p.relay_port - FIRST_RELAY_PORT), "containerPort": p.relay_port, "protocol": p.kube_protocol() }))
            .collect();
        ports.push(json!({ "name": "ready", "containerPort": READY_PORT, "protocol": "TCP" }));
        c.insert("ports".into(), Value::Array(ports));
        c.insert(
            "readinessProbe".into(),
            json!({
                "httpGet": { "path": rpf_process::READY_PATH, "port": READY_PORT },
                "periodSeconds": 2,
                "timeoutSeconds": 1,
                "successThreshold": 1,
                "failureThreshold": 1,
            }),
        );
        let mut pod_labels = self.labels();
        pod_labels.insert("app.kubernetes.io/name".into(), RELAY_APP_NAME.into());
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": self.metadata(&self.deployment_name()),
            "spec": {
                "replicas": self.replicas,
                "revisionHistoryLimit": 2,
                "selector": { "matchLabels": self.labels() },
                "template": {
                    "metadata": { "labels": pod_labels },
                    "spec": {
                        "automountServiceAccountToken": false,
                        "enableServiceLinks": false,
                        "terminationGracePeriodSeconds": DRAIN.as_secs() + 10,
                        "securityContext": {
                            "runAsNonRoot": true,
                            "seccompProfile": { "type": "RuntimeDefault" }
                        },
                        "affinity": {
                            "podAntiAffinity": {
                                "preferredDuringSchedulingIgnoredDuringExecution": [{
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "topologyKey": "kubernetes.io/hostname",
                                        "labelSelector": { "matchLabels": self.labels() }
                                    }
                                }]
                            }
                        },
                        "containers": [container]
                    }
                }
            }
        })
    }

    /// The Service other pods use: each port to its relay port, selecting
    /// the relay pods (only ready ones get traffic).
    pub fn service(&self) -> Value {
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| json!({ "name": p.name(), "port": p.port, "targetPort": p.relay_port, "protocol": p.kube_protocol() }))
            .collect();
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(&self.name),
            "spec": {
                "type": "ClusterIP",
                "selector": self.labels(),
                "ports": ports,
            }
        })
    }

    /// The port a route leads to: the first TCP one (routes carry TCP).
    pub fn route_port(&self) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.protocol == Protocol::Tcp)
    }

    /// An HTTPRoute (with a host name) or a TCPRoute from the Gateway to
    /// the Service's first TCP port ([`Expose::route_port`]; the caller
    /// makes sure there is one).
    pub fn route(&self, route: &RouteSpec) -> Value {
        let mut parent = json!({
            "group": GATEWAY_GROUP,
            "kind": "Gateway",
            "namespace": route.gateway.namespace,
            "name": route.gateway.name,
        });
        if let Some(listener) = &route.gateway.listener {
            parent["sectionName"] = listener.clone().into();
        }
        let port = self.route_port().expect("a TCP port to route to").port;
        let backend = json!({ "name": self.name, "port": port });
        let mut spec = json!({
            "parentRefs": [parent],
            "rules": [{ "backendRefs": [backend] }],
        });
        if let Some(host) = &route.hostname {
            spec["hostnames"] = json!([host]);
        }
        json!({
            "apiVersion": format!("{GATEWAY_GROUP}/{GATEWAY_VERSION}"),
            "kind": route.kind(),
            "metadata": self.metadata(&self.name),
            "spec": spec,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn expose() -> Expose {
        Expose {
            name: "web".into(),
            namespace: "dev".into(),
            ports: vec![
                ServicePort::new(0, 80, Protocol::Tcp),
                ServicePort::new(1, 8443, Protocol::Tcp),
            ],
            replicas: 2,
            image: InjectConfig::new("ghcr.io/rpf-dev/rpf-sidecar:0.1.0")
                .with_image_pull_policy("IfNotPresent"),
        }
    }

    /// Compares with `golden/NAME.json`; `RPF_UPDATE_GOLDEN=1` rewrites it.
    fn golden(name: &str, value: &Value) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/expose/golden")
            .join(format!("{name}.json"));
        let text = serde_json::to_string_pretty(value).unwrap() + "\n";
        if std::env::var_os("RPF_UPDATE_GOLDEN").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let want = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (RPF_UPDATE_GOLDEN=1 writes it)", path.display()));
        assert_eq!(
            text,
            want,
            "{} differs (RPF_UPDATE_GOLDEN=1 rewrites it)",
            path.display()
        );
    }

    #[test]
    fn deployment_matches_golden() {
        golden("deployment", &expose().deployment());
    }

    #[test]
    fn service_matches_golden() {
        golden("service", &expose().service());
    }

    #[test]
    fn routes_match_golden() {
        let gateway = GatewayRef {
            namespace: "infra".into(),
            name: "public".into(),
            listener: Some("https".into()),
        };
        let http = RouteSpec {
            gateway: gateway.clone(),
            hostname: Some("web.example.com".into()),
        };
        golden("httproute", &expose().route(&http));
        let tcp = RouteSpec {
            gateway: GatewayRef {
                listener: None,
                ..gateway
            },
            hostname: None,
        };
        golden("tcproute", &expose().route(&tcp));
    }

    #[test]
    fn relay_pods_are_what_the_service_selects() {
        let e = expose();
        let d = e.deployment();
        let s = e.service();
        let pod_labels = d["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap();
        for (k, v) in s["spec"]["selector"].as_object().unwrap() {
            assert_eq!(pod_labels.get(k), Some(v), "{k}");
        }
        assert_eq!(d["spec"]["selector"]["matchLabels"], s["spec"]["selector"]);
        // Each Service port leads to a port the relay declares.
        let declared: Vec<&Value> = d["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["containerPort"])
            .collect();
        for p in s["spec"]["ports"].as_array().unwrap() {
            assert!(declared.contains(&&p["targetPort"]), "{p}");
        }
        assert_eq!(
            e.selector(),
            "app.kubernetes.io/managed-by=rpf,rpf.dev/expose=web"
        );
    }

    /// DNS's shape: 53/udp and 53/tcp on one Service, each to a relay port
    /// of its own protocol; a route goes to the TCP one.
    #[test]
    fn udp_ports_are_udp_all_the_way_to_the_relay() {
        let e = Expose {
            ports: vec![
                ServicePort::new(0, 53, Protocol::Udp),
                ServicePort::new(1, 53, Protocol::Tcp),
            ],
            ..expose()
        };
        let s = e.service();
        assert_eq!(
            s["spec"]["ports"],
            json!([
                { "name": "port-53-udp", "port": 53, "targetPort": FIRST_RELAY_PORT, "protocol": "UDP" },
                { "name": "port-53", "port": 53, "targetPort": FIRST_RELAY_PORT + 1, "protocol": "TCP" },
            ])
        );
        let d = e.deployment();
        let declared = &d["spec"]["template"]["spec"]["containers"][0]["ports"];
        assert_eq!(declared[0]["containerPort"], FIRST_RELAY_PORT);
        assert_eq!(declared[0]["protocol"], "UDP");
        assert_eq!(declared[1]["protocol"], "TCP");
        let route = e.route(&RouteSpec {
            gateway: GatewayRef {
                namespace: "infra".into(),
                name: "public".into(),
                listener: None,
            },
            hostname: None,
        });
        assert_eq!(route["spec"]["rules"][0]["backendRefs"][0]["port"], 53);
        assert_eq!(e.route_port().map(|p| p.protocol), Some(Protocol::Tcp));
    }
}
