//! The first two questions: does the API server answer and take our
//! credentials, and may we do in the namespace what `rpf attach` (and
//! `rpf expose`) will do.

use futures::future::join_all;
use kube::Client;

use super::names::{API_SERVER as API, RBAC, RBAC_EXPOSE};
use super::report::Check;
use super::{bounded, Cluster};
use crate::cluster::error::{api_message, classify, ApiFailure};
use crate::cluster::rbac::{allowed, join_permissions, Permission};
use crate::cluster::target::{Kind, Target};
use crate::cluster::{ClusterOptions, Transport};

/// Connects and asks the API server for its version (public) and an access
/// review (only for authenticated users): the cluster to check further, or
/// none when it cannot be reached.
pub async fn reachable(options: &ClusterOptions) -> (Check, Option<Cluster>) {
    let (client, namespace, url) = match options.connect_to().await {
        Ok(connected) => connected,
        Err(e) => {
            let check = Check::fail(
                API,
                e.to_string(),
                "check --kubeconfig, --context or $KUBECONFIG (`kubectl config view --minify` shows what is used)",
            );
            return (check, None);
        }
    };
    let unreachable = |why: String| {
        Check::fail(
            API,
            format!("cannot reach the API server at {url}: {why}"),
            "check the server address in the kubeconfig and that this machine can reach it (VPN, proxy, firewall); `kubectl get --raw /version` should answer",
        )
    };
    let version = match bounded("the server version", client.apiserver_version()).await {
        Err(why) => return (unreachable(why), None),
        Ok(Err(e)) if classify(&e) == ApiFailure::Unauthorized => {
            return (rejected(&url, &api_message(&e)), None)
        }
        Ok(Err(e)) => return (unreachable(api_message(&e)), None),
        Ok(Ok(info)) => info.git_version,
    };
    // /version is public; an access review needs an authenticated user.
    let probe = Permission::new("get", "pods");
    let review = bounded(
        "an access review",
        allowed(&client, &namespace, None, &probe),
    )
    .await;
    let check = match review {
        Err(why) => unreachable(why),
        Ok(Err(e)) if classify(&e) == ApiFailure::Unauthorized => {
            rejected(&url, &api_message(&e))
        }
        Ok(Err(e)) if api_message(&e).contains("system:anonymous") => Check::fail(
            API,
            format!(
                "Kubernetes {version} at {url} answers, but takes this client for an anonymous user: {}",
                api_message(&e)
            ),
            "give the kubeconfig user credentials (a token, a client certificate or an exec plugin)",
        ),
        // Access reviews refused otherwise: still an authenticated user.
        Ok(_) => Check::pass(
            API,
            format!("Kubernetes {version} at {url}, credentials accepted, namespace \"{namespace}\""),
        ),
    };
    let cluster =
        (check.status == super::report::Status::Pass).then_some(Cluster { client, namespace });
    (check, cluster)
}

fn rejected(url: &str, message: &str) -> Check {
    Check::fail(
        API,
        format!("the API server at {url} rejected the credentials (401 Unauthorized): {message}"),
        "log in again or refresh the kubeconfig user's token or certificate",
    )
}

/// What `rpf attach TARGET` needs in the namespace: find the pod (through
/// its workload) and open the transport.
fn attach_needs(target: Option<&Target>, transport: Transport) -> Vec<Permission> {
    let mut wanted = vec![Permission::new("get", "pods")];
    match target.map(|t| t.kind) {
        Some(Kind::Pod) => {}
        Some(kind) => {
            wanted.push(Permission::new("get", kind.resource()));
            wanted.push(Permission::new("list", "pods"));
        }
        None => wanted.push(Permission::new("list", "pods")),
    }
    let subresource = match transport {
        Transport::Portforward => "pods/portforward",
        Transport::Exec => "pods/exec",
    };
    // Older API servers authorize the upgrade as `get`, newer as `create`.
    wanted.push(Permission::new("create", subresource));
    wanted.push(Permission::new("get", subresource));
    wanted
}

/// Which of `wanted` the user lacks, asked all at once.
async fn missing(
    client: &Client,
    namespace: &str,
    wanted: &[Permission],
) -> Result<Vec<Permission>, String> {
    let answers = join_all(
        wanted
            .iter()
            .map(|p| bounded("access reviews", allowed(client, namespace, None, p))),
    )
    .await;
    let mut missing = Vec::new();
    for (permission, answer) in wanted.iter().zip(answers) {
        match answer {
            Err(why) => return Err(why),
            Ok(Err(e)) => return Err(api_message(&e)),
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => missing.push(permission.clone()),
        }
    }
    Ok(missing)
}

/// `rbac` (what attach needs; a failure) and `rbac-expose` (what expose
/// needs; a warning).
pub async fn rbac(cluster: &Cluster, target: Option<&Target>, transport: Transport) -> [Check; 2] {
    let Cluster { client, namespace } = cluster;
    let attach = attach_needs(target, transport);
    let expose = crate::expose::access::exposing(None);
    let (attach_missing, expose_missing) = tokio::join!(
        missing(client, namespace, &attach),
        missing(client, namespace, &expose)
    );
    let role_hint = |example: &str| {
        format!("ask a cluster admin for a Role granting them in namespace \"{namespace}\" (example: {example})")
    };
    let attach = match attach_missing {
        Err(why) => Check::skip(RBAC, format!("could not ask the API server: {why}")),
        Ok(m) if m.is_empty() => Check::pass(
            RBAC,
            format!(
                "may {} in namespace \"{namespace}\"",
                join_permissions(&attach)
            ),
        ),
        Ok(m) => Check::fail(
            RBAC,
            format!(
                "not allowed to {} in namespace \"{namespace}\" (rpf attach needs them)",
                join_permissions(&m)
            ),
            role_hint("manifests/examples/developer-role.yaml"),
        ),
    };
    let expose = match expose_missing {
        Err(why) => Check::skip(RBAC_EXPOSE, format!("could not ask the API server: {why}")),
        Ok(m) if m.is_empty() => Check::pass(
            RBAC_EXPOSE,
            format!("may create and remove what rpf expose needs in namespace \"{namespace}\""),
        ),
        Ok(m) => Check::warn(
            RBAC_EXPOSE,
            format!(
                "rpf expose would be refused: not allowed to {} in namespace \"{namespace}\" (rpf attach does not need these)",
                join_permissions(&m)
            ),
            role_hint("manifests/examples/expose-role.yaml"),
        ),
    };
    [attach, expose]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_needs_follow_target_and_transport() {
        let names = |t: Option<&str>, transport| {
            let target = t.map(|t| Target::parse(t).unwrap());
            join_permissions(&attach_needs(target.as_ref(), transport))
        };
        assert_eq!(
            names(Some("pod/web"), Transport::Portforward),
            "get pods, create pods/portforward, get pods/portforward"
        );
        assert_eq!(
            names(Some("deploy/web"), Transport::Exec),
            "get pods, get deployments.apps, list pods, create pods/exec, get pods/exec"
        );
        assert_eq!(
            names(None, Transport::Portforward),
            "get pods, list pods, create pods/portforward, get pods/portforward"
        );
    }
}
