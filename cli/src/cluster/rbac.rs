//! RBAC as `kubectl auth can-i` spells it: the [`Permission`]s rpf needs,
//! and which of them the API server says the current user lacks.

use std::fmt;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::PostParams;
use kube::{Api, Client};

/// An RBAC permission, as `kubectl auth can-i` spells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// `get`, `list`, `create`.
    pub verb: String,
    /// `pods`, `deployments.apps`, `pods/portforward`.
    pub resource: String,
}

impl Permission {
    /// A verb on a resource (`resource[/subresource][.group]` as kubectl writes it).
    pub fn new(verb: &str, resource: &str) -> Self {
        Self {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)
    }
}

/// `get pods, create pods/portforward`.
pub fn join_permissions(missing: &[Permission]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Permission {
    /// `(resource, subresource, group)` from kubectl's spelling:
    /// `pods/portforward` → `(pods, portforward, "")`,
    /// `deployments.apps` → `(deployments, None, apps)`.
    fn attributes(&self) -> (String, Option<String>, String) {
        let (resource, subresource) = match self.resource.split_once('/') {
            Some((r, s)) => (r, Some(s.to_owned())),
            None => (self.resource.as_str(), None),
        };
        let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
        (resource.to_owned(), subresource, group.to_owned())
    }
}

/// Asks the API server (SelfSubjectAccessReview) which of `wanted` the
/// current user lacks in `namespace`, on the object `name` or (without a
/// name) on any object. `None` when the question itself could not be
/// answered.
pub async fn missing_permissions(
    client: &Client,
    namespace: &str,
    name: Option<&str>,
    wanted: &[Permission],
) -> Option<Vec<Permission>> {
    let mut missing = Vec::new();
    for permission in wanted {
        match allowed(client, namespace, name, permission).await {
            Ok(true) => {}
            Ok(false) => missing.push(permission.clone()),
            Err(e) => {
                tracing::debug!(error = %e, "SelfSubjectAccessReview failed");
                return None;
            }
        }
    }
    Some(missing)
}

/// Whether the API server says the current user has `permission` in
/// `namespace` (on the object `name`, or on any object).
pub async fn allowed(
    client: &Client,
    namespace: &str,
    name: Option<&str>,
    permission: &Permission,
) -> Result<bool, kube::Error> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let (resource, subresource, group) = permission.attributes();
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_owned()),
                verb: Some(permission.verb.clone()),
                group: Some(group),
                resource: Some(resource),
                subresource,
                name: name.map(str::to_owned),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer = api.create(&PostParams::default(), &review).await?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubectl_spelling_splits_into_review_attributes() {
        let attrs = |r| Permission::new("get", r).attributes();
        assert_eq!(attrs("pods"), ("pods".into(), None, String::new()));
        assert_eq!(
            attrs("pods/portforward"),
            ("pods".into(), Some("portforward".into()), String::new())
        );
        assert_eq!(
            attrs("deployments.apps"),
            ("deployments".into(), None, "apps".into())
        );
        assert_eq!(
            attrs("httproutes.gateway.networking.k8s.io"),
            (
                "httproutes".into(),
                None,
                "gateway.networking.k8s.io".into()
            )
        );
    }
}
