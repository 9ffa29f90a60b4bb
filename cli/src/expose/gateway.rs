//! `--gateway`: before anything is created, make sure the Gateway API is
//! installed (the route's kind is served) and the Gateway exists, so that
//! a typo fails with a sentence instead of a dangling route.

use kube::api::DynamicObject;
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Api, Client};

use super::objects::{RouteSpec, GATEWAY_GROUP, GATEWAY_VERSION};
use super::ExposeError;
use crate::cluster::error::{api_message, classify, ApiFailure};

/// Checks the Gateway API's CRDs and the Gateway `route` attaches to.
pub async fn check(client: &Client, route: &RouteSpec) -> anyhow::Result<()> {
    let group_version = format!("{GATEWAY_GROUP}/{GATEWAY_VERSION}");
    let served = match client.list_api_group_resources(&group_version).await {
        Ok(list) => list
            .resources
            .into_iter()
            .map(|r| r.name)
            .collect::<Vec<_>>(),
        Err(e) if classify(&e) == ApiFailure::NotFound => Vec::new(),
        Err(e) => anyhow::bail!(
            "cannot ask the API server about {group_version}: {}",
            api_message(&e)
        ),
    };
    for plural in ["gateways", route.plural()] {
        if !served.iter().any(|r| r == plural) {
            return Err(ExposeError::NoGatewayApi {
                what: format!("the API server does not serve {plural}.{group_version}"),
            }
            .into());
        }
    }
    let gvk = GroupVersionKind::gvk(GATEWAY_GROUP, GATEWAY_VERSION, "Gateway");
    let gateways: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &route.gateway.namespace,
        &ApiResource::from_gvk_with_plural(&gvk, "gateways"),
    );
    match gateways.get_opt(&route.gateway.name).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(ExposeError::NoGateway {
            namespace: route.gateway.namespace.clone(),
            name: route.gateway.name.clone(),
        }
        .into()),
        Err(e) => anyhow::bail!(
            "cannot look up gateway {}/{}: {}",
            route.gateway.namespace,
            route.gateway.name,
            api_message(&e)
        ),
    }
}
