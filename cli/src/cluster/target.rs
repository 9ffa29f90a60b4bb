//! TARGET: what the user names (`web-7f9`, `deploy/web`, `svc/api`) and how
//! it becomes one pod, the way `kubectl port-forward` does it.
//!
//! Parsing, selector matching and the choice among several pods are pure
//! functions so that they can be table-tested; [`resolve`] is the only part
//! that talks to the API server. Pod choice follows kubectl
//! (`GetFirstPod` sorted by the reverse of `podutils.ActivePods`): assigned
//! before unassigned, Running before Unknown before Pending, ready before
//! not ready, ready for longer, fewer restarts, older. rpf adds two rules in
//! front: only pods with the `rpf-sidecar` container qualify, and a pod
//! that is being deleted comes after every pod that is not (otherwise a
//! reconnect after `kubectl delete pod` would pick the dying pod again,
//! because it has been ready the longest).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::ListParams;
use kube::{Api, Client};

use crate::cluster::error::{self, ClusterError, Permission};
use crate::cluster::preflight;

/// The kinds of object a TARGET may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `NAME`, `pod/NAME`.
    Pod,
    /// `deploy/NAME`, `deployment/NAME`.
    Deployment,
    /// `rs/NAME`, `replicaset/NAME`.
    ReplicaSet,
    /// `sts/NAME`, `statefulset/NAME`.
    StatefulSet,
    /// `job/NAME`.
    Job,
    /// `svc/NAME`, `service/NAME`.
    Service,
}

impl Kind {
    /// The singular lowercase name kubectl prints (`deployment`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pod => "pod",
            Kind::Deployment => "deployment",
            Kind::ReplicaSet => "replicaset",
            Kind::StatefulSet => "statefulset",
            Kind::Job => "job",
            Kind::Service => "service",
        }
    }

    /// The resource for RBAC messages (`deployments.apps`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Deployment => "deployments.apps",
            Kind::ReplicaSet => "replicasets.apps",
            Kind::StatefulSet => "statefulsets.apps",
            Kind::Job => "jobs.batch",
            Kind::Service => "services",
        }
    }

    fn from_prefix(prefix: &str) -> Option<Self> {
        let lower = prefix.to_ascii_lowercase();
        // kubectl also accepts the fully qualified `deployment.apps` forms.
        let bare = lower
            .strip_suffix(".apps")
            .or_else(|| lower.strip_suffix(".batch"))
            .unwrap_or(&lower);
        Some(match bare {
            "po" | "pod" | "pods" => Kind::Pod,
            "deploy" | "deployment" | "deployments" => Kind::Deployment,
            "rs" | "replicaset" | "replicasets" => Kind::ReplicaSet,
            "sts" | "statefulset" | "statefulsets" => Kind::StatefulSet,
            "job" | "jobs" => Kind::Job,
            "svc" | "service" | "services" => Kind::Service,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed TARGET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What kind of object.
    pub kind: Kind,
    /// Its name.
    pub name: String,
}

impl Target {
    /// Parses `NAME` or `KIND/NAME` as `kubectl port-forward` accepts it.
    pub fn parse(text: &str) -> Result<Self, ClusterError> {
        let bad = |reason: &str| ClusterError::BadTarget {
            target: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (kind, name) = match text.split_once('/') {
            None => (Kind::Pod, text),
            Some((prefix, name)) => {
                let kind = Kind::from_prefix(prefix).ok_or_else(|| {
                    bad(&format!(
                        "unknown kind {prefix:?}; use pod, deploy, rs, sts, job or svc (e.g. deploy/web)"
                    ))
                })?;
                (kind, name)
            }
        };
        if name.is_empty() {
            return Err(bad("the name is empty"));
        }
        if name.contains('/') {
            return Err(bad("expected NAME or KIND/NAME"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(bad(
                "a Kubernetes name has only letters, digits, '-' and '.'",
            ));
        }
        Ok(Target {
            kind,
            name: name.to_owned(),
        })
    }

    /// Whether this names a workload whose pods can be replaced.
    pub fn is_workload(&self) -> bool {
        self.kind != Kind::Pod
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// Renders a label selector in the syntax the API's `labelSelector`
/// parameter takes (`app=web,tier in (a,b),!legacy`).
pub fn selector_string(selector: &LabelSelector) -> Result<String, String> {
    let mut parts = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        parts.push(format!("{key}={value}"));
    }
    for expr in selector.match_expressions.iter().flatten() {
        let values = expr.values.clone().unwrap_or_default();
        let list = || {
            let mut v = values.clone();
            v.sort();
            v.join(",")
        };
        parts.push(match expr.operator.as_str() {
            "In" if !values.is_empty() => format!("{} in ({})", expr.key, list()),
            "NotIn" if !values.is_empty() => format!("{} notin ({})", expr.key, list()),
            "Exists" => expr.key.clone(),
            "DoesNotExist" => format!("!{}", expr.key),
            op => {
                return Err(format!(
                    "unsupported selector operator {op:?} on key {:?}",
                    expr.key
                ))
            }
        });
    }
    Ok(parts.join(","))
}

/// Whether `labels` satisfy `selector` (as the API server decides it). An
/// empty selector matches everything.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|expr| {
        let values = expr.values.as_deref().unwrap_or_default();
        let value = labels.get(&expr.key);
        match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// `Some(time of the Ready=True transition)` when the pod is ready.
fn ready_since(pod: &Pod) -> Option<Option<&Time>> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref())
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn phase_rank(pod: &Pod) -> u8 {
    match phase(pod) {
        "Running" => 2,
        "Unknown" => 1,
        _ => 0,
    }
}

fn max_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// kubectl's `afterOrZero(t1, t2)`: t1 after t2, a missing time counting
/// as after any present one.
fn after_or_zero(t1: Option<&Time>, t2: Option<&Time>) -> bool {
    match (t1, t2) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a.0 > b.0,
    }
}

/// kubectl's `ActivePods.Less`, as an ordering: `Less` means `a` is the
/// *less* useful pod (the one a controller would delete first).
pub fn compare_active(a: &Pod, b: &Pod) -> Ordering {
    let less = |i: &Pod, j: &Pod| -> bool {
        let node = |p: &Pod| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default()
        };
        let (ni, nj) = (node(i), node(j));
        if ni != nj && (ni.is_empty() || nj.is_empty()) {
            return ni.is_empty();
        }
        if phase_rank(i) != phase_rank(j) {
            return phase_rank(i) < phase_rank(j);
        }
        if is_ready(i) != is_ready(j) {
            return !is_ready(i);
        }
        if let (Some(ti), Some(tj)) = (ready_since(i), ready_since(j)) {
            if ti.map(|t| t.0) != tj.map(|t| t.0) {
                return after_or_zero(ti, tj);
            }
        }
        if max_restarts(i) != max_restarts(j) {
            return max_restarts(i) > max_restarts(j);
        }
        let (ci, cj) = (
            i.metadata.creation_timestamp.as_ref(),
            j.metadata.creation_timestamp.as_ref(),
        );
        if ci.map(|t| t.0) != cj.map(|t| t.0) {
            return after_or_zero(ci, cj);
        }
        false
    };
    if less(a, b) {
        Ordering::Less
    } else if less(b, a) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// The pod rpf would pick among `pods`: most active by [`compare_active`],
/// after preferring pods that are not being deleted. Ties keep the API's
/// order (first wins), as kubectl's stable choice of `pods[0]` does.
pub fn best_pod(pods: &[Pod]) -> Option<&Pod> {
    let mut best: Option<&Pod> = None;
    for pod in pods {
        best = match best {
            None => Some(pod),
            Some(current) => {
                let better = match (is_terminating(pod), is_terminating(current)) {
                    (false, true) => true,
                    (true, false) => false,
                    _ => compare_active(pod, current) == Ordering::Greater,
                };
                Some(if better { pod } else { current })
            }
        };
    }
    best
}

/// Picks the pod for a workload target out of the pods its selector
/// matched: only pods with the sidecar, not terminated, best first.
pub fn choose(
    target: &Target,
    namespace: &str,
    selector: &str,
    pods: &[Pod],
) -> Result<Pod, ClusterError> {
    if pods.is_empty() {
        return Err(ClusterError::NoPods {
            kind: target.kind,
            name: target.name.clone(),
            namespace: namespace.to_owned(),
            selector: selector.to_owned(),
        });
    }
    let with_sidecar: Vec<Pod> = pods
        .iter()
        .filter(|p| preflight::has_sidecar(p))
        .cloned()
        .collect();
    if with_sidecar.is_empty() {
        return Err(ClusterError::NoSidecar {
            kind: target.kind,
            name: target.name.clone(),
            namespace: namespace.to_owned(),
            pods: pods.iter().map(pod_name).collect(),
        });
    }
    let alive: Vec<Pod> = with_sidecar
        .iter()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .cloned()
        .collect();
    if alive.is_empty() {
        return Err(ClusterError::AllTerminated {
            kind: target.kind,
            name: target.name.clone(),
            namespace: namespace.to_owned(),
            pods: with_sidecar
                .iter()
                .map(|p| format!("{} ({})", pod_name(p), phase(p)))
                .collect::<Vec<_>>()
                .join(", "),
            // Jobs do not bring finished pods back; the others do.
            replaced: target.kind != Kind::Job,
        });
    }
    Ok(best_pod(&alive).expect("not empty").clone())
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

fn not_found(target: &Target, namespace: &str) -> ClusterError {
    ClusterError::NotFound {
        kind: target.kind,
        name: target.name.clone(),
        namespace: namespace.to_owned(),
    }
}

async fn get_object<K>(client: &Client, target: &Target, namespace: &str) -> Result<K, ClusterError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    match api.get_opt(&target.name).await {
        Ok(Some(object)) => Ok(object),
        Ok(None) => Err(not_found(target, namespace)),
        Err(e) => Err(error::from_api(
            e,
            || format!("cannot get {target} in namespace \"{namespace}\""),
            Permission::new("get", target.kind.resource()),
            namespace,
        )),
    }
}

/// The label selector of a workload object, fetched from the API.
async fn workload_selector(
    client: &Client,
    target: &Target,
    namespace: &str,
) -> Result<LabelSelector, ClusterError> {
    let no_selector = |reason: &str| ClusterError::NoSelector {
        kind: target.kind,
        name: target.name.clone(),
        namespace: namespace.to_owned(),
        reason: reason.to_owned(),
    };
    let selector = match target.kind {
        Kind::Pod => unreachable!("pods are fetched by name"),
        Kind::Deployment => get_object::<Deployment>(client, target, namespace)
            .await?
            .spec
            .map(|s| s.selector),
        Kind::ReplicaSet => get_object::<ReplicaSet>(client, target, namespace)
            .await?
            .spec
            .map(|s| s.selector),
        Kind::StatefulSet => get_object::<StatefulSet>(client, target, namespace)
            .await?
            .spec
            .map(|s| s.selector),
        Kind::Job => {
            let job = get_object::<Job>(client, target, namespace).await?;
            match job.spec.as_ref().and_then(|s| s.selector.clone()) {
                Some(selector) => Some(selector),
                // Jobs normally get a selector from the API server; without
                // one, the controller labels its pods with the job's uid.
                None => job.metadata.uid.map(|uid| LabelSelector {
                    match_labels: Some(BTreeMap::from([("controller-uid".to_owned(), uid)])),
                    ..Default::default()
                }),
            }
        }
        Kind::Service => {
            let svc = get_object::<Service>(client, target, namespace).await?;
            match svc.spec.and_then(|s| s.selector).filter(|s| !s.is_empty()) {
                Some(labels) => Some(LabelSelector {
                    match_labels: Some(labels),
                    ..Default::default()
                }),
                None => {
                    return Err(no_selector(
                        "the service has no selector, so it selects no pods",
                    ))
                }
            }
        }
    };
    let selector = selector.ok_or_else(|| no_selector("it has no spec.selector"))?;
    if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty())
    {
        return Err(no_selector("its selector is empty"));
    }
    Ok(selector)
}

/// Finds the pod for `target` in `namespace`, fetching again on every call.
pub async fn resolve(
    client: &Client,
    target: &Target,
    namespace: &str,
) -> Result<Pod, ClusterError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    if target.kind == Kind::Pod {
        let pod = get_object::<Pod>(client, target, namespace).await?;
        if !preflight::has_sidecar(&pod) {
            return Err(ClusterError::NoSidecar {
                kind: Kind::Pod,
                name: target.name.clone(),
                namespace: namespace.to_owned(),
                pods: vec![target.name.clone()],
            });
        }
        return Ok(pod);
    }
    let selector = workload_selector(client, target, namespace).await?;
    let text = selector_string(&selector).map_err(|reason| ClusterError::NoSelector {
        kind: target.kind,
        name: target.name.clone(),
        namespace: namespace.to_owned(),
        reason,
    })?;
    let list = pods
        .list(&ListParams::default().labels(&text))
        .await
        .map_err(|e| {
            error::from_api(
                e,
                || format!("cannot list the pods of {target} in namespace \"{namespace}\""),
                Permission::new("list", "pods"),
                namespace,
            )
        })?;
    // The server filtered already; filtering again keeps us honest should
    // a selector feature be unknown to an old server.
    let matching: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| {
            selector_matches(
                &selector,
                p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()),
            )
        })
        .collect();
    choose(target, namespace, &text, &matching)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerStatus, PodCondition, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};
    use k8s_openapi::jiff::Timestamp;

    fn t(secs: i64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + secs).unwrap())
    }

    /// A pod builder for the tables below.
    #[derive(Clone)]
    struct P {
        name: &'static str,
        node: bool,
        phase: &'static str,
        ready_at: Option<i64>,
        restarts: i32,
        created: i64,
        sidecar: bool,
        deleting: bool,
    }

    const BASE: P = P {
        name: "p",
        node: true,
        phase: "Running",
        ready_at: Some(10),
        restarts: 0,
        created: 0,
        sidecar: true,
        deleting: false,
    };

    impl P {
        fn pod(&self) -> Pod {
            let mut containers = vec![Container {
                name: "app".into(),
                ..Default::default()
            }];
            if self.sidecar {
                containers.push(Container {
                    name: "rpf-sidecar".into(),
                    ..Default::default()
                });
            }
            Pod {
                metadata: ObjectMeta {
                    name: Some(self.name.into()),
                    creation_timestamp: Some(t(self.created)),
                    deletion_timestamp: self.deleting.then(|| t(100)),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    node_name: self.node.then(|| "vm".to_owned()),
                    containers,
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    phase: Some(self.phase.into()),
                    conditions: self.ready_at.map(|at| {
                        vec![PodCondition {
                            type_: "Ready".into(),
                            status: "True".into(),
                            last_transition_time: Some(t(at)),
                            ..Default::default()
                        }]
                    }),
                    container_statuses: Some(vec![ContainerStatus {
                        name: "app".into(),
                        restart_count: self.restarts,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            }
        }
    }

    #[test]
    fn parses_targets_like_kubectl() {
        let ok = [
            ("web-7f9", Kind::Pod, "web-7f9"),
            ("pod/web", Kind::Pod, "web"),
            ("pods/web", Kind::Pod, "web"),
            ("po/web", Kind::Pod, "web"),
            ("deploy/web", Kind::Deployment, "web"),
            ("deployment/web", Kind::Deployment, "web"),
            ("deployments/web", Kind::Deployment, "web"),
            ("deployment.apps/web", Kind::Deployment, "web"),
            ("Deploy/web", Kind::Deployment, "web"),
            ("rs/web-1", Kind::ReplicaSet, "web-1"),
            ("replicaset/web-1", Kind::ReplicaSet, "web-1"),
            ("sts/db", Kind::StatefulSet, "db"),
            ("statefulset/db", Kind::StatefulSet, "db"),
            ("job/migrate", Kind::Job, "migrate"),
            ("jobs.batch/migrate", Kind::Job, "migrate"),
            ("svc/api", Kind::Service, "api"),
            ("service/api", Kind::Service, "api"),
            ("services/api.v2", Kind::Service, "api.v2"),
        ];
        for (text, kind, name) in ok {
            assert_eq!(
                Target::parse(text).unwrap(),
                Target {
                    kind,
                    name: name.into()
                },
                "{text}"
            );
        }
        let bad = [
            ("cm/x", "unknown kind \"cm\""),
            ("deploy/", "the name is empty"),
            ("", "the name is empty"),
            ("deploy/a/b", "expected NAME or KIND/NAME"),
            ("pod/a b", "letters, digits"),
        ];
        for (text, want) in bad {
            let err = Target::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(
                err.starts_with(&format!("invalid target {text:?}")),
                "{err}"
            );
        }
        assert!(!Target::parse("web").unwrap().is_workload());
        assert!(Target::parse("svc/web").unwrap().is_workload());
        assert_eq!(
            Target::parse("deploy/web").unwrap().to_string(),
            "deployment/web"
        );
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn req(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn selectors_render_and_match() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web"), ("tier", "fe")])),
            match_expressions: Some(vec![
                req("track", "In", &["stable", "canary"]),
                req("legacy", "DoesNotExist", &[]),
                req("zone", "NotIn", &["b"]),
                req("team", "Exists", &[]),
            ]),
        };
        assert_eq!(
            selector_string(&sel).unwrap(),
            "app=web,tier=fe,track in (canary,stable),!legacy,zone notin (b),team"
        );
        let base = [
            ("app", "web"),
            ("tier", "fe"),
            ("track", "stable"),
            ("team", "x"),
        ];
        assert!(selector_matches(&sel, &labels(&base)));
        let cases: &[(&[(&str, &str)], bool)] = &[
            (
                &[
                    ("app", "web"),
                    ("tier", "fe"),
                    ("track", "canary"),
                    ("team", "x"),
                    ("zone", "a"),
                ],
                true,
            ),
            (
                &[
                    ("app", "web"),
                    ("tier", "fe"),
                    ("track", "canary"),
                    ("team", "x"),
                    ("zone", "b"),
                ],
                false,
            ),
            (
                &[
                    ("app", "api"),
                    ("tier", "fe"),
                    ("track", "stable"),
                    ("team", "x"),
                ],
                false,
            ),
            (
                &[
                    ("app", "web"),
                    ("tier", "fe"),
                    ("track", "beta"),
                    ("team", "x"),
                ],
                false,
            ),
            (
                &[("app", "web"), ("tier", "fe"), ("track", "stable")],
                false,
            ),
            (
                &[
                    ("app", "web"),
                    ("tier", "fe"),
                    ("track", "stable"),
                    ("team", "x"),
                    ("legacy", "1"),
                ],
                false,
            ),
        ];
        for (l, want) in cases {
            assert_eq!(selector_matches(&sel, &labels(l)), *want, "{l:?}");
        }
        assert!(selector_matches(&LabelSelector::default(), &labels(&[])));
        let bad = LabelSelector {
            match_expressions: Some(vec![req("a", "Gt", &["1"])]),
            ..Default::default()
        };
        assert!(selector_string(&bad).unwrap_err().contains("Gt"));
        assert!(!selector_matches(&bad, &labels(&[("a", "2")])));
    }

    fn pick(pods: &[P]) -> &'static str {
        let pods: Vec<Pod> = pods.iter().map(P::pod).collect();
        let best = best_pod(&pods).unwrap();
        let name = best.metadata.name.clone().unwrap();
        pods.iter()
            .zip(["a", "b", "c", "d"])
            .find(|(p, _)| p.metadata.name.as_deref() == Some(name.as_str()))
            .map(|(_, n)| n)
            .unwrap()
    }

    #[test]
    fn chooses_the_most_active_pod_like_kubectl() {
        let p = |name, f: fn(&mut P)| {
            let mut p = BASE.clone();
            p.name = name;
            f(&mut p);
            p
        };
        // (pods, expected winner among a, b, ...)
        let cases: Vec<(Vec<P>, &str, &str)> = vec![
            (
                vec![p("a", |p| p.node = false), p("b", |_| {})],
                "b",
                "assigned beats unassigned",
            ),
            (
                vec![
                    p("a", |p| {
                        p.phase = "Pending";
                        p.ready_at = None
                    }),
                    p("b", |_| {}),
                ],
                "b",
                "running beats pending",
            ),
            (
                vec![
                    p("a", |p| {
                        p.phase = "Unknown";
                        p.ready_at = None
                    }),
                    p("b", |p| {
                        p.phase = "Pending";
                        p.ready_at = None
                    }),
                ],
                "a",
                "unknown beats pending",
            ),
            (
                vec![p("a", |p| p.ready_at = None), p("b", |_| {})],
                "b",
                "ready beats not ready",
            ),
            (
                vec![
                    p("a", |p| p.ready_at = Some(50)),
                    p("b", |p| p.ready_at = Some(20)),
                ],
                "b",
                "ready longer wins",
            ),
            (
                vec![p("a", |p| p.restarts = 3), p("b", |p| p.restarts = 1)],
                "b",
                "fewer restarts win",
            ),
            (
                vec![p("a", |p| p.created = 5), p("b", |p| p.created = 1)],
                "b",
                "older wins",
            ),
            (
                vec![p("a", |_| {}), p("b", |_| {})],
                "a",
                "ties keep the first",
            ),
            (
                vec![
                    p("a", |p| p.deleting = true),
                    p("b", |p| {
                        p.ready_at = None;
                        p.created = 9
                    }),
                ],
                "b",
                "terminating comes last",
            ),
            (
                vec![
                    p("a", |p| p.ready_at = None),
                    p("b", |p| p.ready_at = Some(30)),
                    p("c", |p| p.ready_at = Some(20)),
                    p("d", |p| p.node = false),
                ],
                "c",
                "mix",
            ),
        ];
        for (pods, want, why) in cases {
            assert_eq!(pick(&pods), want, "{why}");
        }
    }

    #[test]
    fn choose_filters_sidecar_and_terminated() {
        let target = Target::parse("deploy/web").unwrap();
        let mk = |name: &'static str, sidecar: bool, phase: &'static str| {
            P {
                name,
                sidecar,
                phase,
                ..BASE
            }
            .pod()
        };

        let err = choose(&target, "dev", "app=web", &[]).unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(
            err.to_string(),
            "deployment/web in namespace \"dev\" has no pods (selector app=web)"
        );

        let err = choose(
            &target,
            "dev",
            "app=web",
            &[mk("w1", false, "Running"), mk("w2", false, "Running")],
        )
        .unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.to_string()
                .contains("none of the 2 pods of deployment/web"),
            "{err}"
        );

        let chosen = choose(
            &target,
            "dev",
            "app=web",
            &[mk("w1", false, "Running"), mk("w2", true, "Pending")],
        )
        .unwrap();
        assert_eq!(chosen.metadata.name.as_deref(), Some("w2"));

        let chosen = choose(
            &target,
            "dev",
            "app=web",
            &[mk("w1", true, "Failed"), mk("w2", true, "Pending")],
        )
        .unwrap();
        assert_eq!(chosen.metadata.name.as_deref(), Some("w2"));

        let err = choose(&target, "dev", "app=web", &[mk("w1", true, "Failed")]).unwrap_err();
        assert!(err.is_retryable(), "a deployment replaces failed pods");
        assert!(err.to_string().contains("w1 (Failed)"), "{err}");
        let job = Target::parse("job/once").unwrap();
        let err = choose(
            &job,
            "dev",
            "controller-uid=1",
            &[mk("j1", true, "Succeeded")],
        )
        .unwrap_err();
        assert!(!err.is_retryable(), "a finished job stays finished");
    }
}
