//! The permissions `rpf expose` and `rpf cleanup` need, checked with
//! SelfSubjectAccessReviews before anything is created, so that a refusal
//! never leaves half an expose behind.

use kube::Client;

use crate::cluster::rbac::{missing_permissions, Permission};
use crate::cluster::ClusterError;

use super::objects::{RouteSpec, GATEWAY_GROUP};

const DEPLOYMENTS: &str = "deployments.apps";
const SERVICES: &str = "services";

/// What `rpf expose` needs in the Service's namespace: apply (`create`
/// and `patch`) and remove (`list`, `delete`) its Deployment, Service and
/// route; find (`list`, `get`) the relay pods and port-forward to them.
pub fn exposing(route: Option<&RouteSpec>) -> Vec<Permission> {
    let mut wanted = Vec::new();
    for resource in [SERVICES, DEPLOYMENTS] {
        for verb in ["get", "create", "patch", "list", "delete"] {
            wanted.push(Permission::new(verb, resource));
        }
    }
    wanted.push(Permission::new("list", "pods"));
    wanted.push(Permission::new("get", "pods"));
    wanted.push(Permission::new("create", "pods/portforward"));
    wanted.push(Permission::new("get", "pods/portforward"));
    if let Some(route) = route {
        let resource = format!("{}.{GATEWAY_GROUP}", route.plural());
        for verb in ["get", "create", "patch", "list", "delete"] {
            wanted.push(Permission::new(verb, &resource));
        }
    }
    wanted
}

/// What looking up the Gateway needs, in the Gateway's namespace.
pub fn get_gateways() -> Permission {
    Permission::new("get", &format!("gateways.{GATEWAY_GROUP}"))
}

/// What `rpf cleanup` and `rpf expose --delete` need (routes are removed
/// when they can be listed, see [`super::remove`]).
pub fn removing() -> Vec<Permission> {
    let mut wanted = Vec::new();
    for resource in [SERVICES, DEPLOYMENTS] {
        wanted.push(Permission::new("list", resource));
        wanted.push(Permission::new("delete", resource));
    }
    wanted.push(Permission::new("list", "pods"));
    wanted
}

/// Fails with every missing permission named when the API server says the
/// user lacks any of `wanted` in `namespace`. When the reviews themselves
/// cannot be made, goes on: the API server still refuses, later, with its
/// own words.
pub async fn check(
    client: &Client,
    namespace: &str,
    wanted: &[Permission],
) -> Result<(), ClusterError> {
    match missing_permissions(client, namespace, None, wanted).await {
        Some(missing) if !missing.is_empty() => Err(ClusterError::Forbidden {
            missing,
            namespace: namespace.to_owned(),
            server: None,
        }),
        Some(_) => Ok(()),
        None => {
            tracing::debug!("could not ask the API server about permissions; going on");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expose::objects::GatewayRef;

    #[test]
    fn expose_needs_apply_remove_and_portforward() {
        let text: Vec<String> = exposing(None).iter().map(ToString::to_string).collect();
        for want in [
            "create services",
            "patch deployments.apps",
            "delete deployments.apps",
            "list pods",
            "create pods/portforward",
        ] {
            assert!(text.iter().any(|t| t == want), "{want} in {text:?}");
        }
        assert!(!text.iter().any(|t| t.contains("routes")));
        let route = RouteSpec {
            gateway: GatewayRef {
                namespace: "infra".into(),
                name: "gw".into(),
                listener: None,
            },
            hostname: Some("a.example".into()),
        };
        let text: Vec<String> = exposing(Some(&route))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(text
            .iter()
            .any(|t| t == "patch httproutes.gateway.networking.k8s.io"));
    }
}
