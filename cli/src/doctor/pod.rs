//! The target's pods: does TARGET name any, does the pod carry the sidecar
//! (and if not, why not), and is the sidecar container ready.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use rpf_proto::{annotations, SIDECAR_CONTAINER};

use super::names::{INJECTION, SIDECAR, TARGET};
use super::report::Check;
use super::webhook::Facts;
use super::{bounded, Cluster};
use crate::cluster::error::ClusterError;
use crate::cluster::preflight;
use crate::cluster::preflight::sidecar_image;
use crate::cluster::resolve::{self, TargetPods};
use crate::cluster::target::{Kind, Target};
use crate::version::skew;

/// The pods TARGET names, looked up once.
pub async fn find(cluster: &Cluster, target: &Target) -> Result<TargetPods, ClusterError> {
    bounded(
        "the target",
        resolve::pods(&cluster.client, target, &cluster.namespace),
    )
    .await
    .map_err(ClusterError::Unreachable)?
}

fn name(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or_default()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn created(pod: &Pod) -> Option<Timestamp> {
    pod.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

/// `target`, and the pod the next checks look at: the one `rpf attach`
/// would pick, or (none has the sidecar) the newest, to explain why.
pub fn target(found: Result<TargetPods, ClusterError>) -> (Check, Option<Pod>) {
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            let next = match &e {
                ClusterError::NotFound(o) => format!(
                    "check the name and the namespace: kubectl get {} -n {}",
                    o.kind.resource(),
                    o.namespace
                ),
                ClusterError::Forbidden { .. } => {
                    "see the rbac check above".to_owned()
                }
                _ => "check the TARGET (pod/NAME, deploy/NAME, rs/NAME, sts/NAME, job/NAME, svc/NAME)"
                    .to_owned(),
            };
            return (Check::fail(TARGET, e.to_string(), next), None);
        }
    };
    let listed = found
        .pods
        .iter()
        .map(|p| format!("{} ({})", name(p), phase(p)))
        .collect::<Vec<_>>()
        .join(", ");
    // A pod target is examined whatever its state; of a workload's pods,
    // the one `rpf attach` would pick, or the newest when none has the
    // sidecar (to tell why).
    let chosen = match (found.object.kind, found.pods.first()) {
        (Kind::Pod, Some(pod)) => pod.clone(),
        _ => match resolve::choose(&found.object, &found.selector, &found.pods) {
            Ok(pod) => pod,
            Err(ClusterError::NoSidecar { .. }) => found
                .pods
                .iter()
                .max_by_key(|p| created(p))
                .cloned()
                .expect("no sidecar among some pods"),
            Err(e) => {
                let next = match &e {
                    ClusterError::NoPods { .. } => "scale the workload up, or check its selector and events (kubectl describe)",
                    _ => "wait for the controller to create a new pod, or check its events (kubectl describe)",
                };
                return (Check::fail(TARGET, e.to_string(), next), None);
            }
        },
    };
    let evidence = match found.object.kind {
        Kind::Pod => format!("{} exists ({})", found.object, phase(&chosen)),
        _ => format!(
            "{} selects {} pod{} ({}): {listed}; looking at {}",
            found.object,
            found.pods.len(),
            if found.pods.len() == 1 { "" } else { "s" },
            found.selector,
            name(&chosen)
        ),
    };
    (Check::pass(TARGET, evidence), Some(chosen))
}

/// `injection`: the pod has the sidecar; if not, why not.
pub fn injection(pod: &Pod, namespace: &str, facts: &Facts) -> Check {
    let pod_name = format!("pod {namespace}/{}", name(pod));
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::ENABLED))
        .map(String::as_str);
    if preflight::has_sidecar(pod) {
        let injected = pod
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(annotations::INJECTED));
        let how = match injected {
            Some(version) => format!("injected by rpf {version}"),
            None => "written into the pod spec".to_owned(),
        };
        return Check::pass(
            INJECTION,
            format!("{pod_name} has the {SIDECAR_CONTAINER} container ({how})"),
        );
    }
    let recreate =
        "then recreate the pod (kubectl delete pod, or kubectl rollout restart for a workload)";
    let inject =
        "or add the sidecar to the manifest: `rpf inject -f manifest.yaml | kubectl apply -f -`";
    let (why, next) = match annotation {
        None => (
            format!("it has no {} annotation", annotations::ENABLED),
            format!(
                "annotate the pod template with {}: \"true\", {recreate}; {inject}",
                annotations::ENABLED
            ),
        ),
        Some(value) if value != "true" => (
            format!(
                "its annotation {} is {value:?}; only \"true\" opts in",
                annotations::ENABLED
            ),
            format!("set it to \"true\", {recreate}; {inject}"),
        ),
        Some(_) => webhook_missed(pod, facts),
    };
    Check::fail(
        INJECTION,
        format!("{pod_name} has no {SIDECAR_CONTAINER} container: {why}"),
        next,
    )
}

/// Why an opted-in pod was not injected, from what the webhook checks saw.
fn webhook_missed(pod: &Pod, facts: &Facts) -> (String, String) {
    let born = created(pod);
    let at = born.map(|t| format!(" at {t}")).unwrap_or_default();
    let recreate = "recreate the pod now (kubectl delete pod, or kubectl rollout restart for a workload), or use `rpf inject`".to_owned();
    let fix_first = |what: &str| format!("{what}, then recreate the pod; or use `rpf inject`");
    let after = |t: Option<Timestamp>| matches!((born, t), (Some(b), Some(t)) if t > b);
    if facts.installed == Some(false) {
        return (
            "it opted in, but the rpf webhook is not installed".to_owned(),
            fix_first("install rpf (kubectl apply -k manifests/, see docs/deploy.md)"),
        );
    }
    if let Some(excluded) = &facts.excluded {
        return (
            format!("it opted in, but {excluded}"),
            fix_first("let the webhook serve the namespace (see the webhook-namespace check)"),
        );
    }
    if after(facts.created) {
        return (
            format!(
                "it opted in, but was created{at}, before the webhook was installed ({})",
                facts.created.map(|t| t.to_string()).unwrap_or_default()
            ),
            recreate,
        );
    }
    if facts.ready == Some(false) {
        return (
            "it opted in, but the webhook is not ready (pods are admitted without the sidecar while it is down)".to_owned(),
            fix_first("get the webhook ready (see the webhook-ready check)"),
        );
    }
    if after(facts.ready_since) {
        return (
            format!(
                "it opted in, but was created{at}, while the webhook was down: it has been ready only since {}",
                facts.ready_since.map(|t| t.to_string()).unwrap_or_default()
            ),
            recreate,
        );
    }
    (
        format!(
            "it opted in and was created{at}; the webhook did not inject it (down, unreachable from the API server, or not serving this namespace then; failurePolicy Ignore admits the pod anyway)"
        ),
        format!("{recreate}; if it is still not injected, read the webhook's logs"),
    )
}

/// `sidecar`: the container is running and ready.
pub fn sidecar(pod: &Pod) -> Check {
    let image = sidecar_image(pod);
    if let Err(e) = preflight::check_pod(pod) {
        let next = format!(
            "kubectl -n {ns} describe pod {name}; kubectl -n {ns} logs {name} -c {SIDECAR_CONTAINER}",
            ns = pod.metadata.namespace.as_deref().unwrap_or_default(),
            name = name(pod)
        );
        return Check::fail(SIDECAR, e.to_string(), next);
    }
    let restarts = pod
        .status
        .iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .find(|c| c.name == SIDECAR_CONTAINER)
        .map_or(0, |c| c.restart_count);
    let evidence = format!("{SIDECAR_CONTAINER} is ready (image {image}, {restarts} restarts)");
    match skew("its image", &image) {
        None => Check::pass(SIDECAR, evidence),
        Some(warning) => Check::warn(
            SIDECAR,
            format!("{evidence}; {warning}"),
            "recreate the pod with the sidecar image of this release",
        ),
    }
}

/// Why checks that need a ready sidecar are skipped, if they are.
pub fn not_ready(pod: &Pod) -> Option<String> {
    preflight::check_pod(pod).err().map(|e| match e {
        e if e.is_retryable() => format!("the sidecar is not ready: {e}"),
        e => e.to_string(),
    })
}
