//! The webhook that injects the sidecar: installed, Ready, trusted by the
//! API server (its `caBundle` against its serving certificate), and
//! serving this namespace. What is learned here also explains, later, why
//! a pod has no sidecar ([`Facts`]).
//!
//! A developer often may not read cluster-scoped objects or the webhook's
//! namespace: what cannot be read is skipped with the reason, never
//! guessed.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, ServiceReference};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::core::{Selector, SelectorExt};
use kube::{Api, Client};
use rustls::pki_types::UnixTime;

use super::certs;
use super::names::{
    WEBHOOK as INSTALLED, WEBHOOK_CA as CA, WEBHOOK_NAMESPACE as NAMESPACE, WEBHOOK_READY as READY,
};
use super::report::Check;
use super::{bounded, Cluster};
use crate::cluster::error::{api_message, classify, ApiFailure};
use crate::version::{find_webhook, skew, Webhook, WebhookDeployment, WEBHOOK_NAME};

/// What the webhook checks learned, for explaining a pod without sidecar.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Whether the configuration exists (`None`: could not tell).
    pub installed: Option<bool>,
    /// When the configuration was created.
    pub created: Option<Timestamp>,
    /// Whether a webhook replica is ready now (`None`: could not tell).
    pub ready: Option<bool>,
    /// Since when, at the latest, a replica has been ready without a break.
    pub ready_since: Option<Timestamp>,
    /// Why this namespace (or the pod's labels) is not served, if so.
    pub excluded: Option<String>,
}

/// How much a webhook problem matters: little once the pod being checked
/// has its sidecar.
#[derive(Debug, Clone, Copy)]
pub struct Stakes {
    /// A broken webhook is a failure (else a warning).
    pub needed: bool,
    /// A missing webhook is a failure: the pod has no sidecar and the
    /// cluster injects none (without a pod, `rpf inject` may be the way).
    pub missing_is_failure: bool,
}

/// The four webhook checks and what they learned.
pub async fn check(cluster: &Cluster, pod: Option<&Pod>, stakes: Stakes) -> (Vec<Check>, Facts) {
    let client = &cluster.client;
    let mut facts = Facts::default();
    let found = match bounded("the webhook configuration", find_webhook(client)).await {
        Ok(found) => found,
        Err(why) => return (skip_all(&why), facts),
    };
    let (config, service, deployment) = match found {
        Webhook::NotInstalled => {
            facts.installed = Some(false);
            let check = Check::fail_if(
                stakes.missing_is_failure,
                INSTALLED,
                format!("no MutatingWebhookConfiguration {WEBHOOK_NAME}: the cluster injects no sidecar"),
                "install rpf (kubectl apply -k manifests/, see docs/deploy.md), or add the sidecar to the manifests with `rpf inject -f manifest.yaml | kubectl apply -f -`",
            );
            let mut checks = vec![check];
            checks.extend(
                [READY, CA, NAMESPACE]
                    .map(|name| Check::skip(name, "the webhook is not installed")),
            );
            return (checks, facts);
        }
        Webhook::Unreadable(e) => {
            let why = format!(
                "cannot read MutatingWebhookConfiguration {WEBHOOK_NAME}: {}",
                api_message(&e)
            );
            return (skip_all(&why), facts);
        }
        Webhook::ByUrl(config) => (config, None, None),
        Webhook::InCluster {
            config,
            service,
            deployment,
        } => (config, Some(service), Some(deployment)),
    };
    facts.installed = Some(true);
    facts.created = config.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let webhooks: Vec<&MutatingWebhook> = config.webhooks.iter().flatten().collect();

    let running: Option<Box<Deployment>> = match &deployment {
        Some(Ok(Some(d))) => Some(d.clone()),
        _ => None,
    };
    let running = running.as_deref();
    let mut checks = vec![installed(service.as_ref(), running)];

    let ready = match (&service, deployment) {
        (None, _) | (_, None) => Check::skip(
            READY,
            "the webhook is called by URL: nothing in the cluster to inspect",
        ),
        (Some(service), Some(deployment)) => {
            readiness(client, service, deployment, stakes.needed, &mut facts).await
        }
    };
    checks.push(ready);
    checks.push(ca_bundle(client, &webhooks, service.as_ref(), running, stakes.needed).await);
    checks.push(namespace(cluster, &webhooks, pod, stakes.needed, &mut facts).await);
    (checks, facts)
}

/// The first check says why; the others point to it.
fn skip_all(why: &str) -> Vec<Check> {
    let mut checks = vec![Check::skip(INSTALLED, why)];
    checks.extend([READY, CA, NAMESPACE].map(|name| Check::skip(name, "see the webhook check")));
    checks
}

/// `webhook`: the configuration, the Service it calls and what runs there.
fn installed(service: Option<&ServiceReference>, deployment: Option<&Deployment>) -> Check {
    let Some(service) = service else {
        return Check::pass(
            INSTALLED,
            format!("MutatingWebhookConfiguration {WEBHOOK_NAME} calls the webhook by URL"),
        );
    };
    let mut evidence = format!(
        "MutatingWebhookConfiguration {WEBHOOK_NAME} calls Service {}/{}",
        service.namespace, service.name
    );
    let Some(deployment) = deployment else {
        return Check::pass(INSTALLED, evidence);
    };
    let running = WebhookDeployment::of(deployment);
    evidence.push_str(&format!(", which runs {}", running.image));
    if let Some(injects) = &running.injects {
        evidence.push_str(&format!(" and injects {injects}"));
    }
    let skewed: Vec<String> = skew("the webhook image", &running.image)
        .into_iter()
        .chain(
            running
                .injects
                .as_deref()
                .and_then(|i| skew("the sidecar image it injects", i)),
        )
        .collect();
    match skewed.is_empty() {
        true => Check::pass(INSTALLED, evidence),
        false => Check::warn(
            INSTALLED,
            format!("{evidence}; {}", skewed.join("; ")),
            "upgrade the webhook or this CLI so that both are one release",
        ),
    }
}

/// `webhook-ready`: replicas ready and endpoints behind the Service; and
/// since when, for the injection diagnosis.
async fn readiness(
    client: &Client,
    service: &ServiceReference,
    deployment: Result<Option<Box<Deployment>>, kube::Error>,
    needed: bool,
    facts: &mut Facts,
) -> Check {
    let ns = &service.namespace;
    let logs = format!(
        "kubectl -n {ns} describe deployment {name}; kubectl -n {ns} logs deployment/{name}",
        name = service.name
    );
    let deployment = match deployment {
        Ok(Some(d)) => d,
        Ok(None) => {
            facts.ready = Some(false);
            return Check::fail_if(
                needed,
                READY,
                format!(
                    "Deployment {ns}/{} is missing: the API server calls a webhook that is not there, and admits pods without the sidecar",
                    service.name
                ),
                "install rpf again (kubectl apply -k manifests/, see docs/deploy.md)",
            );
        }
        Err(e) => {
            return Check::skip(
                READY,
                format!(
                    "cannot read Deployment {ns}/{}: {}",
                    service.name,
                    api_message(&e)
                ),
            )
        }
    };
    let replicas = WebhookDeployment::of(&deployment);
    let mut evidence = format!(
        "Deployment {ns}/{} has {}/{} replicas ready",
        service.name, replicas.ready, replicas.wanted
    );
    let endpoints = ready_endpoints(client, service).await;
    if let Some(n) = endpoints {
        evidence.push_str(&format!(
            ", Service {} has {n} ready endpoints",
            service.name
        ));
    }
    facts.ready_since = ready_since(client, ns, &deployment).await;
    if let Some(since) = facts.ready_since {
        evidence.push_str(&format!(", ready since {since}"));
    }
    let ready = replicas.ready > 0 && endpoints != Some(0);
    facts.ready = Some(ready);
    match ready {
        true => Check::pass(READY, evidence),
        false => Check::fail_if(
            needed,
            READY,
            format!("{evidence}: pods created now get no sidecar (failurePolicy Ignore)"),
            format!("see why it is not ready: {logs}"),
        ),
    }
}

/// Ready addresses behind the webhook's Service (`None`: cannot read).
async fn ready_endpoints(client: &Client, service: &ServiceReference) -> Option<usize> {
    let api: Api<Endpoints> = Api::namespaced(client.clone(), &service.namespace);
    let endpoints = bounded("the webhook's endpoints", api.get_opt(&service.name))
        .await
        .ok()?
        .ok()?;
    Some(
        endpoints
            .into_iter()
            .flat_map(|e| e.subsets.into_iter().flatten())
            .map(|s| s.addresses.map_or(0, |a| a.len()))
            .sum(),
    )
}

/// The earliest time a webhook pod that is ready now became ready: the
/// webhook has served without a break since then, at least.
async fn ready_since(client: &Client, ns: &str, deployment: &Deployment) -> Option<Timestamp> {
    let labels = deployment.spec.as_ref()?.selector.match_labels.as_ref()?;
    let selector = labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = bounded(
        "the webhook's pods",
        api.list(&ListParams::default().labels(&selector)),
    )
    .await
    .ok()?
    .ok()?;
    pods.items
        .iter()
        // A pod on its way out still reports Ready; it is not the future.
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            p.status
                .as_ref()?
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == "Ready" && c.status == "True")?
                .last_transition_time
                .as_ref()
                .map(|t| t.0)
        })
        .min()
}

/// The Secret the webhook serves its certificate from: `--secret-name`
/// (self-managed TLS) or the Secret volume (cert-manager).
fn serving_secret(deployment: &Deployment) -> Option<String> {
    let spec = deployment.spec.as_ref()?.template.spec.as_ref()?;
    let from_args = spec.containers.first().and_then(|c| {
        c.args
            .iter()
            .flatten()
            .find_map(|a| a.strip_prefix("--secret-name="))
            .map(str::to_owned)
    });
    from_args.or_else(|| {
        spec.volumes
            .iter()
            .flatten()
            .find_map(|v| v.secret.as_ref()?.secret_name.clone())
    })
}

/// `webhook-ca`: every webhook's `caBundle` against the serving
/// certificate in the webhook's Secret, for the Service's DNS name.
async fn ca_bundle(
    client: &Client,
    webhooks: &[&MutatingWebhook],
    service: Option<&ServiceReference>,
    deployment: Option<&Deployment>,
    needed: bool,
) -> Check {
    let (ns, name) = service.map_or(("rpf-system", "rpf-webhook"), |s| {
        (s.namespace.as_str(), s.name.as_str())
    });
    let refill = format!(
        "self-managed TLS: the webhook writes its CA into the caBundle when it starts (restart it: kubectl -n {ns} rollout restart deployment {name}); cert-manager: check its CA injector and the annotation cert-manager.io/inject-ca-from"
    );
    let mut bundles = Vec::new();
    for webhook in webhooks {
        let bundle = webhook
            .client_config
            .ca_bundle
            .as_ref()
            .map(|b| b.0.clone())
            .unwrap_or_default();
        if let Err(e) = certs::parse(&bundle, "the caBundle") {
            return Check::fail_if(
                needed,
                CA,
                format!(
                    "webhook {}: {e}: the API server cannot trust the webhook and admits pods without the sidecar",
                    webhook.name
                ),
                &refill,
            );
        }
        bundles.push((webhook.name.clone(), bundle));
    }
    let Some((first, _)) = bundles.first() else {
        return Check::fail_if(
            needed,
            CA,
            format!("MutatingWebhookConfiguration {WEBHOOK_NAME} has no webhooks"),
            "install rpf again (kubectl apply -k manifests/)",
        );
    };
    let parsed = format!("caBundle of {first} holds PEM certificates");
    let (Some(service), Some(deployment)) = (service, deployment) else {
        return Check::pass(
            CA,
            format!(
                "{parsed} (called by URL: the serving certificate is not in the cluster to check)"
            ),
        );
    };
    let Some(secret_name) = serving_secret(deployment) else {
        return Check::pass(
            CA,
            format!("{parsed}; the webhook Deployment names no TLS Secret to check it against"),
        );
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = match bounded("the webhook's TLS Secret", secrets.get_opt(&secret_name)).await {
        Ok(Ok(Some(s))) => s,
        Ok(Ok(None)) => {
            return Check::fail_if(
                needed,
                CA,
                format!("Secret {ns}/{secret_name} with the serving certificate is missing"),
                &refill,
            )
        }
        Ok(Err(e)) => {
            return Check::pass(
                CA,
                format!(
                    "{parsed}; the serving certificate was not checked: cannot read Secret {ns}/{secret_name} ({})",
                    api_message(&e)
                ),
            )
        }
        Err(why) => return Check::skip(CA, why),
    };
    let cert = secret
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .map(|b| b.0.clone())
        .unwrap_or_default();
    let dns_name = format!("{}.{ns}.svc", service.name);
    for (name, bundle) in &bundles {
        if let Err(e) = certs::verify(bundle, &cert, &dns_name, UnixTime::now()) {
            return Check::fail_if(
                needed,
                CA,
                format!(
                    "the serving certificate in Secret {ns}/{secret_name} does not verify against the caBundle of webhook {name} for {dns_name}: {e}; the API server admits pods without the sidecar"
                ),
                &refill,
            );
        }
    }
    Check::pass(
        CA,
        format!(
            "the serving certificate in Secret {ns}/{secret_name} verifies against the caBundle for {dns_name}"
        ),
    )
}

/// `key=value` or `key NotIn (a, b)`, as a selector says it.
fn requirement_text(r: &LabelSelectorRequirement) -> String {
    match r.values.as_deref() {
        Some(values) if !values.is_empty() => {
            format!("{} {} ({})", r.key, r.operator, values.join(", "))
        }
        _ => format!("{} {}", r.key, r.operator),
    }
}

/// The parts of `selector` that `labels` fail, in words; empty when the
/// labels match. A part kube cannot evaluate is named as such.
fn unmatched(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> Vec<String> {
    let mut failed = Vec::new();
    for (key, value) in selector.match_labels.iter().flatten() {
        if labels.get(key) != Some(value) {
            failed.push(format!("{key}={value}"));
        }
    }
    for requirement in selector.match_expressions.iter().flatten() {
        let single = LabelSelector {
            match_expressions: Some(vec![requirement.clone()]),
            match_labels: None,
        };
        match Selector::try_from(single) {
            Ok(s) if s.matches(labels) => {}
            Ok(_) => failed.push(requirement_text(requirement)),
            Err(_) => failed.push(format!(
                "{} (cannot evaluate)",
                requirement_text(requirement)
            )),
        }
    }
    failed
}

/// Why the webhooks do not serve a namespace with `ns_labels` (and a pod
/// with `pod_labels`, when known), or `None` when one of them does.
fn exclusion(
    webhooks: &[&MutatingWebhook],
    ns_labels: &BTreeMap<String, String>,
    pod_labels: Option<&BTreeMap<String, String>>,
) -> Option<String> {
    let mut reasons = Vec::new();
    for webhook in webhooks {
        let by_namespace = webhook
            .namespace_selector
            .as_ref()
            .map(|s| unmatched(s, ns_labels))
            .unwrap_or_default();
        let by_object = match (webhook.object_selector.as_ref(), pod_labels) {
            (Some(s), Some(labels)) => unmatched(s, labels),
            _ => Vec::new(),
        };
        if by_namespace.is_empty() && by_object.is_empty() {
            return None;
        }
        if !by_namespace.is_empty() {
            reasons.push(format!(
                "the namespace's labels fail `{}` of the namespaceSelector of {}",
                by_namespace.join(", "),
                webhook.name
            ));
        }
        if !by_object.is_empty() {
            reasons.push(format!(
                "the pod's labels fail `{}` of the objectSelector of {}",
                by_object.join(", "),
                webhook.name
            ));
        }
    }
    Some(reasons.join("; "))
}

/// `webhook-namespace`: the namespace's labels (and the pod's) against the
/// webhooks' selectors.
async fn namespace(
    cluster: &Cluster,
    webhooks: &[&MutatingWebhook],
    pod: Option<&Pod>,
    needed: bool,
    facts: &mut Facts,
) -> Check {
    let ns = &cluster.namespace;
    let api: Api<Namespace> = Api::all(cluster.client.clone());
    let labels = match bounded("the namespace", api.get_opt(ns)).await {
        Ok(Ok(Some(n))) => n.metadata.labels.unwrap_or_default(),
        Ok(Ok(None)) => {
            return Check::fail(
                NAMESPACE,
                format!("namespace \"{ns}\" does not exist"),
                "check -n / the context's namespace (kubectl get namespaces)",
            )
        }
        Ok(Err(e)) => {
            let why = match classify(&e) {
                ApiFailure::Forbidden => "not allowed to read namespaces".to_owned(),
                _ => api_message(&e),
            };
            return Check::skip(
                NAMESPACE,
                format!("cannot read the labels of namespace \"{ns}\" ({why})"),
            );
        }
        Err(why) => return Check::skip(NAMESPACE, why),
    };
    let pod_labels = pod.and_then(|p| p.metadata.labels.as_ref());
    match exclusion(webhooks, &labels, pod_labels) {
        None => {
            let conditions: Vec<String> = webhooks
                .iter()
                .flat_map(|w| w.match_conditions.iter().flatten())
                .map(|c| c.name.clone())
                .collect();
            let mut evidence =
                format!("the webhook serves namespace \"{ns}\" (its selectors match)");
            if !conditions.is_empty() {
                evidence.push_str(&format!(
                    "; matchConditions {} also apply (the default one calls the webhook only for pods with the rpf.dev/enabled annotation)",
                    conditions.join(", ")
                ));
            }
            Check::pass(NAMESPACE, evidence)
        }
        Some(reason) => {
            let text = format!("namespace \"{ns}\" is not served by the webhook: {reason}");
            facts.excluded = Some(text.clone());
            Check::fail_if(
                needed,
                NAMESPACE,
                text,
                format!(
                    "use a namespace the webhook serves, change the labels (e.g. kubectl label namespace {ns} rpf.dev/injection-) and recreate the pods, or add the sidecar with `rpf inject`"
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_pods::{labels, req};

    /// The namespaceSelector of manifests/base/mutatingwebhook.yaml.
    fn shipped() -> MutatingWebhook {
        MutatingWebhook {
            name: "inject.rpf.dev".into(),
            namespace_selector: Some(LabelSelector {
                match_expressions: Some(vec![
                    req(
                        "kubernetes.io/metadata.name",
                        "NotIn",
                        &["kube-system", "rpf-system"],
                    ),
                    req("rpf.dev/injection", "NotIn", &["disabled"]),
                ]),
                match_labels: None,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_shipped_selector_serves_ordinary_namespaces_only() {
        let webhook = shipped();
        let hooks = [&webhook];
        assert_eq!(exclusion(&hooks, &labels(&[]), None), None);
        assert_eq!(
            exclusion(
                &hooks,
                &labels(&[("kubernetes.io/metadata.name", "dev")]),
                None
            ),
            None
        );
        assert_eq!(
            exclusion(&hooks, &labels(&[("rpf.dev/injection", "disabled")]), None).unwrap(),
            "the namespace's labels fail `rpf.dev/injection NotIn (disabled)` of the namespaceSelector of inject.rpf.dev"
        );
        let system = labels(&[
            ("kubernetes.io/metadata.name", "kube-system"),
            ("rpf.dev/injection", "disabled"),
        ]);
        assert!(exclusion(&hooks, &system, None)
            .unwrap()
            .contains("kubernetes.io/metadata.name NotIn (kube-system, rpf-system), rpf.dev/injection NotIn (disabled)"));
    }

    #[test]
    fn object_selectors_and_match_labels_are_named() {
        let webhook = MutatingWebhook {
            name: "w".into(),
            namespace_selector: Some(LabelSelector {
                match_labels: Some(labels(&[("team", "a")])),
                match_expressions: None,
            }),
            object_selector: Some(LabelSelector {
                match_expressions: Some(vec![req("rpf", "Exists", &[])]),
                match_labels: None,
            }),
            ..Default::default()
        };
        let hooks = [&webhook];
        let team = labels(&[("team", "a")]);
        assert_eq!(exclusion(&hooks, &team, None), None, "pod unknown");
        assert_eq!(
            exclusion(&hooks, &team, Some(&labels(&[("rpf", "")]))),
            None
        );
        assert_eq!(
            exclusion(&hooks, &labels(&[]), Some(&labels(&[]))).unwrap(),
            "the namespace's labels fail `team=a` of the namespaceSelector of w; the pod's labels fail `rpf Exists` of the objectSelector of w"
        );
        // One webhook serving the namespace is enough.
        let open = MutatingWebhook {
            name: "open".into(),
            ..Default::default()
        };
        assert_eq!(exclusion(&[&webhook, &open], &labels(&[]), None), None);
    }

    #[test]
    fn the_serving_secret_comes_from_args_or_the_volume() {
        let manifests: Deployment = serde_json::from_value(serde_json::json!({
            "spec": {"selector": {}, "template": {"spec": {"containers": [
                {"name": "webhook", "args": ["--self-managed-tls", "--secret-name=rpf-webhook-tls"]}
            ]}}}
        }))
        .unwrap();
        assert_eq!(
            serving_secret(&manifests).as_deref(),
            Some("rpf-webhook-tls")
        );
        let cert_manager: Deployment = serde_json::from_value(serde_json::json!({
            "spec": {"selector": {}, "template": {"spec": {
                "containers": [{"name": "webhook", "args": ["--tls-cert=/etc/rpf-webhook/tls/tls.crt"]}],
                "volumes": [{"name": "tls", "secret": {"secretName": "from-cert-manager"}}]
            }}}
        }))
        .unwrap();
        assert_eq!(
            serving_secret(&cert_manager).as_deref(),
            Some("from-cert-manager")
        );
    }
}
