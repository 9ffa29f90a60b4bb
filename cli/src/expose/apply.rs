//! Writing the expose's objects: refuse to take over anything rpf did not
//! create, then server-side apply (field manager `rpf`) each object.
//! Applying again adopts what an earlier `rpf expose` of the same name left.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client, Resource};
use rpf_proto::expose::{EXPOSE_LABEL, MANAGED_BY, MANAGED_BY_LABEL};

use super::objects::{Expose, RouteSpec, GATEWAY_GROUP, GATEWAY_VERSION};
use super::ExposeError;
use crate::cluster::error::api_message;

/// The route's API, in the expose's namespace.
pub fn route_api(client: &Client, namespace: &str, route: &RouteSpec) -> Api<DynamicObject> {
    gateway_api(client, namespace, route.kind(), route.plural())
}

/// A Gateway API kind's API in `namespace`.
pub fn gateway_api(
    client: &Client,
    namespace: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(GATEWAY_GROUP, GATEWAY_VERSION, kind);
    let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Whether an object's labels say it belongs to the expose `name`.
pub fn is_ours(labels: Option<&std::collections::BTreeMap<String, String>>, name: &str) -> bool {
    labels.is_some_and(|l| {
        l.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
            && l.get(EXPOSE_LABEL).map(String::as_str) == Some(name)
    })
}

/// Fails if the Service, the Deployment or the route exists without
/// belonging to this expose.
pub async fn check_ownership(
    client: &Client,
    expose: &Expose,
    route: Option<&RouteSpec>,
) -> anyhow::Result<()> {
    let ns = &expose.namespace;
    let service = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(&expose.name)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot look up service {ns}/{}: {}",
                expose.name,
                api_message(&e)
            )
        })?;
    ensure_ours(
        service.as_ref().map(|o| o.meta()),
        "service",
        &expose.name,
        expose,
    )?;
    let name = expose.deployment_name();
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get_opt(&name)
        .await
        .map_err(|e| {
            anyhow::anyhow!("cannot look up deployment {ns}/{name}: {}", api_message(&e))
        })?;
    ensure_ours(
        deployment.as_ref().map(|o| o.meta()),
        "deployment",
        &name,
        expose,
    )?;
    if let Some(route) = route {
        let found = route_api(client, ns, route)
            .get_opt(&expose.name)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot look up {} {ns}/{}: {}",
                    route.kind(),
                    expose.name,
                    api_message(&e)
                )
            })?;
        ensure_ours(
            found.as_ref().map(|o| o.meta()),
            &route.kind().to_lowercase(),
            &expose.name,
            expose,
        )?;
    }
    Ok(())
}

fn ensure_ours(
    meta: Option<&kube::core::ObjectMeta>,
    kind: &str,
    name: &str,
    expose: &Expose,
) -> Result<(), ExposeError> {
    match meta {
        Some(m) if !is_ours(m.labels.as_ref(), &expose.name) => Err(ExposeError::NotOurs {
            kind: kind.to_owned(),
            name: name.to_owned(),
            namespace: expose.namespace.clone(),
        }),
        _ => Ok(()),
    }
}

/// Applies the Service, the Deployment and the route; returns the
/// Service's ClusterIP.
pub async fn apply(
    client: &Client,
    expose: &Expose,
    route: Option<&RouteSpec>,
) -> anyhow::Result<String> {
    let ns = &expose.namespace;
    // Objects rpf owns by label: take back fields someone edited.
    let params = PatchParams::apply(MANAGED_BY).force();
    let service: Service = Api::<Service>::namespaced(client.clone(), ns)
        .patch(&expose.name, &params, &Patch::Apply(&expose.service()))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot apply service {ns}/{}: {}",
                expose.name,
                api_message(&e)
            )
        })?;
    let name = expose.deployment_name();
    Api::<Deployment>::namespaced(client.clone(), ns)
        .patch(&name, &params, &Patch::Apply(&expose.deployment()))
        .await
        .map_err(|e| anyhow::anyhow!("cannot apply deployment {ns}/{name}: {}", api_message(&e)))?;
    if let Some(route) = route {
        route_api(client, ns, route)
            .patch(&expose.name, &params, &Patch::Apply(&expose.route(route)))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot apply {} {ns}/{}: {}",
                    route.kind(),
                    expose.name,
                    api_message(&e)
                )
            })?;
    }
    Ok(service
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap_or_else(|| "none".to_owned()))
}
