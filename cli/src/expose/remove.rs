//! Removing an expose: everything rpf made, found by its labels (never by
//! name alone, so an object rpf did not create is never touched), deleted,
//! and the relay pods waited for so that nothing is left when rpf says so.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};
use rpf_proto::expose::{EXPOSE_LABEL, MANAGED_BY, MANAGED_BY_LABEL};

use super::apply::gateway_api;
use rpf_tunnel::events::Output;

use crate::cluster::error::{api_message, classify, ApiFailure};
use crate::events::Event;

/// How long to wait for relay pods to be gone after their Deployment is
/// deleted. The relays exit at once, but a busy kubelet can take half a
/// minute to report that, and until then `kubectl get pods` still lists
/// them. A second Ctrl-C stops waiting.
const PODS_GONE_TIMEOUT: Duration = Duration::from_secs(90);

/// The label selector of the expose `name`, or of every expose.
pub fn selector(name: Option<&str>) -> String {
    match name {
        Some(name) => format!("{MANAGED_BY_LABEL}={MANAGED_BY},{EXPOSE_LABEL}={name}"),
        None => format!("{MANAGED_BY_LABEL}={MANAGED_BY},{EXPOSE_LABEL}"),
    }
}

/// Deletes the objects of the expose `name` (every expose when `None`) in
/// `namespace`, waits for their relay pods to stop, and says what it
/// removed (a `removed` event with `--output json`, whose progress lines
/// then go to stderr); returns that list (`service/web`, ...), empty if
/// none.
pub async fn expose(
    client: &Client,
    namespace: &str,
    name: Option<&str>,
    output: Output,
) -> anyhow::Result<Vec<String>> {
    let say = |line: String| match output {
        Output::Human => println!("{line}"),
        Output::Json => eprintln!("{line}"),
    };
    let list = ListParams::default().labels(&selector(name));
    let delete = DeleteParams::background();
    let mut removed = Vec::new();
    let failed = |what: &str, e: kube::Error| {
        anyhow::anyhow!(
            "cannot {what} in namespace {namespace}: {}",
            api_message(&e)
        )
    };

    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    for s in services
        .list(&list)
        .await
        .map_err(|e| failed("list services", e))?
    {
        services
            .delete(&s.name_any(), &delete)
            .await
            .map_err(|e| failed("delete a service", e))?;
        removed.push(format!("service/{}", s.name_any()));
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    for d in deployments
        .list(&list)
        .await
        .map_err(|e| failed("list deployments", e))?
    {
        deployments
            .delete(&d.name_any(), &delete)
            .await
            .map_err(|e| failed("delete a deployment", e))?;
        removed.push(format!("deployment/{}", d.name_any()));
    }
    for (kind, plural) in [("HTTPRoute", "httproutes"), ("TCPRoute", "tcproutes")] {
        let routes = gateway_api(client, namespace, kind, plural);
        let found = match routes.list(&list).await {
            Ok(found) => found,
            // No Gateway API in this cluster: no routes to remove.
            Err(e) if classify(&e) == ApiFailure::NotFound => continue,
            Err(e) => {
                eprintln!(
                    "warning: cannot list {plural} in namespace {namespace} ({}); remove any left by rpf with kubectl delete {plural} -n {namespace} -l {}",
                    api_message(&e),
                    selector(name)
                );
                continue;
            }
        };
        for r in found {
            routes
                .delete(&r.name_any(), &delete)
                .await
                .map_err(|e| failed(&format!("delete a {kind}"), e))?;
            removed.push(format!("{}/{}", kind.to_lowercase(), r.name_any()));
        }
    }

    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = tokio::time::Instant::now() + PODS_GONE_TIMEOUT;
    let mut told = false;
    let left = loop {
        let left = pods
            .list(&list)
            .await
            .map_err(|e| failed("list pods", e))?
            .items
            .len();
        if left == 0 || tokio::time::Instant::now() >= deadline {
            break left;
        }
        if !told {
            say(format!("Waiting for {left} relay pod(s) to be gone"));
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let event = Event::Removed {
        namespace,
        objects: &removed,
        pods_stopping: left,
    };
    output.report(&event, || {
        if !removed.is_empty() {
            println!("Deleted {} in namespace {namespace}", removed.join(", "));
        }
        if left > 0 {
            println!(
                "{left} relay pod(s) are still stopping; Kubernetes removes them (kubectl get pods -n {namespace} -l {})",
                selector(name)
            );
        }
    });
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert_eq!(
            selector(Some("web")),
            "app.kubernetes.io/managed-by=rpf,rpf.dev/expose=web"
        );
        // Every expose, and nothing else rpf might label in the future.
        assert_eq!(
            selector(None),
            "app.kubernetes.io/managed-by=rpf,rpf.dev/expose"
        );
    }
}
