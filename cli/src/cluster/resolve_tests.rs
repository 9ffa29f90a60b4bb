//! [`resolve`] against a scripted API server (a tower service in
//! place of the HTTP stack): which requests it makes, with which label
//! selector, and what it makes of 404 and 403 answers. Logic only: the real
//! thing is exercised by `live_tests` and the e2e suite.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use k8s_openapi::serde_json::{json, Value};
use kube::client::Body;
use kube::Client;

use super::resolve::resolve;
use super::target::Target;

fn pod(name: &str, labels: Value, sidecar: bool, ready_at: &str) -> Value {
    let mut containers = vec![json!({"name": "app", "image": "busybox"})];
    if sidecar {
        containers.push(json!({"name": "rpf-sidecar", "image": "rpf-sidecar"}));
    }
    json!({
        "metadata": {"name": name, "namespace": "dev", "labels": labels,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"nodeName": "vm", "containers": containers},
        "status": {"phase": "Running", "conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": ready_at}
        ]}
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A client whose API server answers from `routes` (path and query →
/// status and body) and records every request line.
fn scripted(routes: Vec<(&'static str, u16, Value)>) -> (Client, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let service = tower::service_fn(move |req: Request<Body>| {
        let uri = req.uri().to_string();
        log.lock().unwrap().push(format!("{} {uri}", req.method()));
        let (code, body) = routes
            .iter()
            .find(|(path, _, _)| uri == *path)
            .map(|(_, code, body)| (*code, body.clone()))
            .unwrap_or_else(|| (404, status(404, "NotFound", &format!("no route for {uri}"))));
        async move {
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(body.to_string().into_bytes()))
                    .unwrap(),
            )
        }
    });
    (Client::new(service, "dev"), seen)
}

#[tokio::test]
async fn deployment_lists_pods_by_its_selector_and_picks_like_kubectl() {
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "dev"},
        "spec": {"selector": {"matchLabels": {"app": "web"},
                               "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe"]}]},
                 "template": {"spec": {"containers": []}}}
    });
    let labels = json!({"app": "web", "tier": "fe"});
    let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
        pod("web-new", labels.clone(), true, "2026-01-01T00:05:00Z"),
        pod("web-old", labels.clone(), true, "2026-01-01T00:01:00Z"),
        pod("web-bare", labels.clone(), false, "2026-01-01T00:00:10Z"),
        // The server would not return it; if it did, we would not take it.
        pod("other", json!({"app": "web", "tier": "be"}), true, "2026-01-01T00:00:01Z"),
    ]});
    let (client, seen) = scripted(vec![
        (
            "/apis/apps/v1/namespaces/dev/deployments/web",
            200,
            deployment,
        ),
        (
            "/api/v1/namespaces/dev/pods?&labelSelector=app%3Dweb%2Ctier+in+%28fe%29",
            200,
            pods,
        ),
    ]);
    let chosen = resolve(&client, &Target::parse("deploy/web").unwrap(), "dev")
        .await
        .unwrap();
    // Ready the longest among the pods with a sidecar.
    assert_eq!(chosen.metadata.name.as_deref(), Some("web-old"));
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "GET /apis/apps/v1/namespaces/dev/deployments/web",
            "GET /api/v1/namespaces/dev/pods?&labelSelector=app%3Dweb%2Ctier+in+%28fe%29",
        ]
    );
}

#[tokio::test]
async fn service_uses_spec_selector_and_reports_pods_without_sidecar() {
    let svc = json!({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "api", "namespace": "dev"},
                     "spec": {"selector": {"app": "api"}}});
    let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
        pod("api-1", json!({"app": "api"}), false, "2026-01-01T00:05:00Z"),
    ]});
    let (client, _) = scripted(vec![
        ("/api/v1/namespaces/dev/services/api", 200, svc),
        (
            "/api/v1/namespaces/dev/pods?&labelSelector=app%3Dapi",
            200,
            pods,
        ),
    ]);
    let err = resolve(&client, &Target::parse("svc/api").unwrap(), "dev")
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .starts_with("pod dev/api-1 of service/api has no rpf-sidecar container"),
        "{err}"
    );
}

#[tokio::test]
async fn service_without_selector_is_explained() {
    let svc = json!({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "db", "namespace": "dev"}, "spec": {}});
    let (client, _) = scripted(vec![("/api/v1/namespaces/dev/services/db", 200, svc)]);
    let err = resolve(&client, &Target::parse("svc/db").unwrap(), "dev")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "service/db in namespace \"dev\" cannot be forwarded to: the service has no selector, so it selects no pods"
    );
}

#[tokio::test]
async fn job_without_selector_falls_back_to_controller_uid() {
    let job = json!({"apiVersion": "batch/v1", "kind": "Job",
                     "metadata": {"name": "once", "namespace": "dev", "uid": "u-1"},
                     "spec": {"template": {"spec": {"containers": []}}}});
    let pods = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
        pod("once-x", json!({"controller-uid": "u-1"}), true, "2026-01-01T00:05:00Z"),
    ]});
    let (client, _) = scripted(vec![
        ("/apis/batch/v1/namespaces/dev/jobs/once", 200, job),
        (
            "/api/v1/namespaces/dev/pods?&labelSelector=controller-uid%3Du-1",
            200,
            pods,
        ),
    ]);
    let chosen = resolve(&client, &Target::parse("job/once").unwrap(), "dev")
        .await
        .unwrap();
    assert_eq!(chosen.metadata.name.as_deref(), Some("once-x"));
}

#[tokio::test]
async fn not_found_and_forbidden_name_kind_namespace_and_permission() {
    let (client, _) = scripted(vec![
        ("/apis/apps/v1/namespaces/dev/statefulsets/db", 403, status(403, "Forbidden",
            "statefulsets.apps \"db\" is forbidden: User \"jane\" cannot get resource \"statefulsets\" in API group \"apps\" in the namespace \"dev\"")),
    ]);
    let err = resolve(&client, &Target::parse("pod/nope").unwrap(), "dev")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "pod \"nope\" not found in namespace \"dev\""
    );
    let err = resolve(&client, &Target::parse("rs/gone").unwrap(), "dev")
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "replicaset \"gone\" not found in namespace \"dev\""
    );
    let err = resolve(&client, &Target::parse("sts/db").unwrap(), "dev")
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert!(
        err.to_string().starts_with(
            "forbidden: you are not allowed to get statefulsets.apps in namespace \"dev\"; ask a cluster admin"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn server_errors_are_retryable() {
    let (client, _) = scripted(vec![(
        "/api/v1/namespaces/dev/pods/web",
        503,
        status(503, "ServiceUnavailable", "etcd is restarting"),
    )]);
    let err = resolve(&client, &Target::parse("web").unwrap(), "dev")
        .await
        .unwrap_err();
    assert!(err.is_retryable());
    assert_eq!(
        err.to_string(),
        "cannot reach the Kubernetes API server: etcd is restarting"
    );
}
