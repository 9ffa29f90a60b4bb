//! Self-managed certificates: a plain `kubectl apply -k` works without
//! cert-manager.
//!
//! The webhook keeps a CA and a serving certificate in one Secret
//! (`tls.crt`, `tls.key`, `ca.crt`, `ca.key`) and writes the CA into the
//! `caBundle` of every webhook of its MutatingWebhookConfiguration.
//!
//! Several replicas must agree on one certificate, and there is no leader:
//! every replica reads the Secret first and uses it when it is valid for
//! more than [`MIN_REMAINING`]; only when it is missing or expiring does a
//! replica write a new one, with `create` (or an `update` carrying the
//! resourceVersion it read). A replica that loses that race gets a 409 and
//! reads again, and then finds the winner's certificate valid. Renewal keeps
//! the CA when it is still good, so `caBundle` stays the same and replicas
//! serving the old and the new leaf are both trusted meanwhile.
//!
//! RBAC needed (see `manifests/base/rbac.yaml`): Secrets `create`, and
//! `get`/`update` on the named Secret; `get`/`patch` on the named
//! MutatingWebhookConfiguration.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::{json, Value};
use time::OffsetDateTime;
use x509_parser::pem::parse_x509_pem;

use crate::tls::{self, CertStore, Material, TlsError, Validity};
use backon::{BackoffBuilder, ExponentialBuilder};
use rpf_process::error_chain;
use tokio_util::sync::CancellationToken;

/// A stored serving certificate is reused while it has at least this long
/// to live (so replicas agree, and renewal happens well before expiry).
pub const MIN_REMAINING: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the self-managed mode manages, and where.
#[derive(Clone)]
pub struct SelfManaged {
    /// Kubernetes client.
    pub client: Client,
    /// Namespace of the Service and the Secret.
    pub namespace: String,
    /// Name of the webhook's Service (the certificate's DNS names).
    pub service: String,
    /// Name of the Secret holding the material.
    pub secret: String,
    /// Name of the MutatingWebhookConfiguration to patch.
    pub webhook_config: String,
    /// Certificate lifetimes.
    pub validity: Validity,
    /// How often the Secret and `caBundle` are checked again once in place:
    /// this bounds how long a wiped or wrong `caBundle` (a re-apply of the
    /// manifests, a hand edit) or another replica's renewal goes unnoticed.
    pub recheck: Duration,
}

/// Failures of the self-managed mode (all retried by [`maintain`]).
#[derive(Debug, thiserror::Error)]
pub enum SelfManagedError {
    /// A Kubernetes API call failed.
    #[error("{action}")]
    Kube {
        /// What was being done.
        action: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Generating or loading certificates failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Other replicas kept changing the Secret under us.
    #[error("Secret {0} kept changing while being written; will retry")]
    Contended(String),
    /// The MutatingWebhookConfiguration does not exist (yet).
    #[error("MutatingWebhookConfiguration {0} not found")]
    NoWebhookConfig(String),
}

impl std::fmt::Debug for SelfManaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelfManaged")
            .field("namespace", &self.namespace)
            .field("service", &self.service)
            .field("secret", &self.secret)
            .field("webhook_config", &self.webhook_config)
            .finish_non_exhaustive()
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// What to do with the material found in the Secret.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it as is.
    Valid,
    /// The CA is good, the serving certificate is not: issue a new one.
    RenewLeaf(String),
    /// Start over with a new CA.
    Regenerate(String),
}

impl SelfManaged {
    /// DNS names the serving certificate must cover: what the API server
    /// dials for a `clientConfig.service` is `<svc>.<ns>.svc`.
    pub fn dns_names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service, &self.namespace);
        vec![
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
            format!("{svc}.{ns}"),
            svc.clone(),
        ]
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn kube_err(&self, action: impl Into<String>) -> impl FnOnce(kube::Error) -> SelfManagedError {
        let action = action.into();
        move |source| SelfManagedError::Kube { action, source }
    }

    /// Returns valid material from the Secret, creating or renewing it when
    /// needed. Safe to run from several replicas at once.
    pub async fn ensure_secret(&self) -> Result<Material, SelfManagedError> {
        let api = self.secrets();
        let names = self.dns_names();
        let what = format!("Secret {}/{}", self.namespace, self.secret);
        for _ in 0..5 {
            let existing = api
                .get_opt(&self.secret)
                .await
                .map_err(self.kube_err(format!("cannot read {what}")))?;
            let Some(existing) = existing else {
                let material = tls::generate(&names, self.validity)?;
                match api
                    .create(&PostParams::default(), &self.secret_object(&material, None))
                    .await
                {
                    Ok(_) => {
                        tracing::info!(secret = %what, "created a new CA and serving certificate");
                        return Ok(material);
                    }
                    // Another replica created it first: use theirs.
                    Err(e) if is_status(&e, 409) => continue,
                    Err(e) => return Err(self.kube_err(format!("cannot create {what}"))(e)),
                }
            };
            let stored = material_from_secret(&existing);
            let material = match stored.as_ref().map(|m| check(m, &names, MIN_REMAINING)) {
                Some(Verdict::Valid) => return Ok(stored.expect("checked above")),
                Some(Verdict::RenewLeaf(why)) => {
                    let m = stored.expect("checked above");
                    tracing::info!(secret = %what, reason = %why, "issuing a new serving certificate under the existing CA");
                    let (cert, key) =
                        tls::issue(&m.ca_cert, &m.ca_key, &names, self.validity.leaf)?;
                    Material { cert, key, ..m }
                }
                Some(Verdict::Regenerate(why)) => {
                    tracing::info!(secret = %what, reason = %why, "generating a new CA and serving certificate");
                    tls::generate(&names, self.validity)?
                }
                None => {
                    tracing::info!(secret = %what, "Secret is incomplete; generating a new CA and serving certificate");
                    tls::generate(&names, self.validity)?
                }
            };
            let rv = existing.metadata.resource_version.clone();
            match api
                .replace(
                    &self.secret,
                    &PostParams::default(),
                    &self.secret_object(&material, rv),
                )
                .await
            {
                Ok(_) => return Ok(material),
                // Someone else updated it since we read it: read again.
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(self.kube_err(format!("cannot update {what}"))(e)),
            }
        }
        Err(SelfManagedError::Contended(what))
    }

    fn secret_object(&self, m: &Material, resource_version: Option<String>) -> Secret {
        let data = [
            ("tls.crt", &m.cert),
            ("tls.key", &m.key),
            ("ca.crt", &m.ca_cert),
            ("ca.key", &m.ca_key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(self.secret.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version,
                labels: Some(
                    [
                        ("app.kubernetes.io/name", "rpf-webhook"),
                        ("app.kubernetes.io/part-of", "rpf"),
                        ("app.kubernetes.io/managed-by", "rpf-webhook"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                ),
                ..ObjectMeta::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Makes `caBundle` of every webhook in the configuration equal to
    /// `ca_pem`. Returns whether anything had to change.
    pub async fn patch_ca_bundle(&self, ca_pem: &str) -> Result<bool, SelfManagedError> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(self.client.clone());
        let what = format!("MutatingWebhookConfiguration {}", self.webhook_config);
        let config = api
            .get_opt(&self.webhook_config)
            .await
            .map_err(self.kube_err(format!("cannot read {what}")))?
            .ok_or_else(|| SelfManagedError::NoWebhookConfig(self.webhook_config.clone()))?;
        let Some(patch) = ca_bundle_patch(&config, ca_pem) else {
            return Ok(false);
        };
        api.patch(
            &self.webhook_config,
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await
        .map_err(self.kube_err(format!("cannot patch the caBundle of {what}")))?;
        tracing::info!(config = %self.webhook_config, "caBundle updated");
        Ok(true)
    }
}

/// The JSON patch that sets `caBundle` on every webhook whose bundle
/// differs, or `None` when all are right. Each change is guarded by a
/// `test` of the webhook's name, so a concurrent reordering of the list
/// makes the patch fail (and be retried) instead of hitting the wrong entry.
pub fn ca_bundle_patch(
    config: &MutatingWebhookConfiguration,
    ca_pem: &str,
) -> Option<json_patch::Patch> {
    let want = ByteString(ca_pem.as_bytes().to_vec());
    let encoded = serde_json::to_value(&want).expect("ByteString serializes");
    let mut ops: Vec<Value> = Vec::new();
    for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
        if webhook.client_config.ca_bundle.as_ref() == Some(&want) {
            continue;
        }
        ops.push(
            json!({ "op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name }),
        );
        ops.push(json!({ "op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded }));
    }
    if ops.is_empty() {
        return None;
    }
    Some(serde_json::from_value(Value::Array(ops)).expect("well-formed JSON patch"))
}

fn material_from_secret(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| {
        data.get(k)
            .and_then(|b| String::from_utf8(b.0.clone()).ok())
            .filter(|s| !s.is_empty())
    };
    Some(Material {
        ca_cert: get("ca.crt")?,
        ca_key: get("ca.key")?,
        cert: get("tls.crt")?,
        key: get("tls.key")?,
    })
}

/// Decides whether stored material can be served as is.
pub fn check(m: &Material, names: &[String], min_remaining: Duration) -> Verdict {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let min = i64::try_from(min_remaining.as_secs()).unwrap_or(i64::MAX);

    let ca_der = match parse_x509_pem(m.ca_cert.as_bytes()) {
        Ok((_, pem)) => pem.contents,
        Err(e) => return Verdict::Regenerate(format!("ca.crt does not parse: {e}")),
    };
    let ca = match x509_parser::parse_x509_certificate(&ca_der) {
        Ok((_, c)) => c,
        Err(e) => return Verdict::Regenerate(format!("ca.crt does not parse: {e}")),
    };
    // The CA must outlive the next serving certificate it would issue.
    if ca.validity().not_after.timestamp() - now < 2 * min {
        return Verdict::Regenerate("the CA expires soon".into());
    }
    if rcgen::KeyPair::from_pem(&m.ca_key).is_err() {
        return Verdict::Regenerate("ca.key does not parse".into());
    }

    let renew = |why: String| Verdict::RenewLeaf(why);
    let leaf_der = match parse_x509_pem(m.cert.as_bytes()) {
        Ok((_, pem)) => pem.contents,
        Err(e) => return renew(format!("tls.crt does not parse: {e}")),
    };
    let leaf = match x509_parser::parse_x509_certificate(&leaf_der) {
        Ok((_, c)) => c,
        Err(e) => return renew(format!("tls.crt does not parse: {e}")),
    };
    if leaf.verify_signature(Some(ca.public_key())).is_err() {
        return renew("tls.crt is not signed by ca.crt".into());
    }
    if leaf.validity().not_after.timestamp() - now < min {
        return renew("the serving certificate expires within 30 days".into());
    }
    if leaf.validity().not_before.timestamp() > now {
        return renew("the serving certificate is not valid yet".into());
    }
    let sans: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(ext)) => ext
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if let Some(missing) = names.iter().find(|n| !sans.contains(n)) {
        return renew(format!("the serving certificate does not cover {missing}"));
    }
    if m.certified_key().is_err() {
        return renew("tls.key does not match tls.crt".into());
    }
    Verdict::Valid
}

/// Keeps the Secret, the served certificate and `caBundle` in place until
/// `shutdown`: retries with backoff until the first certificate is served
/// and `caBundle` is patched (the configuration may be applied after the
/// webhook starts), then checks again every [`SelfManaged::recheck`] so
/// that renewals by another replica, or a `caBundle` wiped or changed by a
/// re-apply, are repaired without a restart.
pub async fn maintain(
    sm: SelfManaged,
    store: std::sync::Arc<CertStore>,
    shutdown: CancellationToken,
    on_reload: impl Fn(bool) + Send + 'static,
) {
    // Jittered, so that replicas failing together do not retry together.
    let retries = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(30))
        .with_jitter()
        .without_max_times();
    let mut served: Option<Material> = None;
    let mut backoff = retries.build();
    loop {
        let ok = match sm.ensure_secret().await {
            Ok(m) => {
                if served.as_ref() != Some(&m) {
                    match m.certified_key() {
                        Ok(k) => {
                            store.set(k);
                            tracing::info!(names = ?sm.dns_names(), "serving the self-managed certificate");
                            on_reload(true);
                            served = Some(m);
                        }
                        Err(e) => {
                            tracing::error!(error = %error_chain(&e), "self-managed certificate does not load");
                            on_reload(false);
                        }
                    }
                }
                match &served {
                    Some(m) => match sm.patch_ca_bundle(&m.ca_cert).await {
                        Ok(_) => true,
                        Err(e @ SelfManagedError::NoWebhookConfig(_)) => {
                            tracing::info!(error = %e, "waiting for the webhook configuration to patch its caBundle");
                            false
                        }
                        Err(e) => {
                            tracing::warn!(error = %error_chain(&e), "cannot update caBundle; will retry");
                            false
                        }
                    },
                    None => false,
                }
            }
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "cannot set up the self-managed certificate; will retry");
                false
            }
        };
        let wait = if ok {
            backoff = retries.build();
            sm.recheck
        } else {
            backoff.next().unwrap_or(Duration::from_secs(30))
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["rpf-webhook.rpf-system.svc".into(), "rpf-webhook".into()]
    }

    #[test]
    fn fresh_material_is_valid() {
        let m = tls::generate(&names(), Validity::default()).unwrap();
        assert_eq!(check(&m, &names(), MIN_REMAINING), Verdict::Valid);
    }

    #[test]
    fn expiring_leaf_is_renewed_under_the_same_ca() {
        let short = Validity {
            ca: Validity::default().ca,
            leaf: Duration::from_secs(10 * 24 * 3600),
        };
        let m = tls::generate(&names(), short).unwrap();
        assert!(matches!(
            check(&m, &names(), MIN_REMAINING),
            Verdict::RenewLeaf(_)
        ));
        let (cert, key) =
            tls::issue(&m.ca_cert, &m.ca_key, &names(), Validity::default().leaf).unwrap();
        let renewed = Material {
            cert,
            key,
            ..m.clone()
        };
        assert_eq!(check(&renewed, &names(), MIN_REMAINING), Verdict::Valid);
        assert_eq!(renewed.ca_cert, m.ca_cert);
    }

    #[test]
    fn expiring_ca_regenerates() {
        let short = Validity {
            ca: Duration::from_secs(40 * 24 * 3600),
            leaf: Duration::from_secs(35 * 24 * 3600),
        };
        let m = tls::generate(&names(), short).unwrap();
        assert!(matches!(
            check(&m, &names(), MIN_REMAINING),
            Verdict::Regenerate(_)
        ));
    }

    #[test]
    fn wrong_names_key_or_ca_renew_the_leaf() {
        let m = tls::generate(&names(), Validity::default()).unwrap();
        let other = tls::generate(&names(), Validity::default()).unwrap();
        let more = vec!["rpf-webhook.other.svc".to_owned()];
        assert!(matches!(
            check(&m, &more, MIN_REMAINING),
            Verdict::RenewLeaf(_)
        ));
        let wrong_key = Material {
            key: other.key.clone(),
            ..m.clone()
        };
        assert!(matches!(
            check(&wrong_key, &names(), MIN_REMAINING),
            Verdict::RenewLeaf(_)
        ));
        let foreign_leaf = Material {
            cert: other.cert,
            key: other.key,
            ..m.clone()
        };
        assert!(matches!(
            check(&foreign_leaf, &names(), MIN_REMAINING),
            Verdict::RenewLeaf(_)
        ));
        let garbage_ca = Material {
            ca_cert: "nope".into(),
            ..m
        };
        assert!(matches!(
            check(&garbage_ca, &names(), MIN_REMAINING),
            Verdict::Regenerate(_)
        ));
    }

    #[test]
    fn ca_bundle_patch_touches_only_stale_webhooks() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": { "name": "rpf-webhook" },
            "webhooks": [
                { "name": "a.rpf.dev", "clientConfig": { "caBundle": ByteString(ca.as_bytes().to_vec()) },
                  "admissionReviewVersions": ["v1"], "sideEffects": "None" },
                { "name": "b.rpf.dev", "clientConfig": {}, "admissionReviewVersions": ["v1"], "sideEffects": "None" }
            ]
        }))
        .unwrap();
        let patch = serde_json::to_value(ca_bundle_patch(&config, ca).unwrap()).unwrap();
        assert_eq!(
            patch,
            json!([
                { "op": "test", "path": "/webhooks/1/name", "value": "b.rpf.dev" },
                { "op": "add", "path": "/webhooks/1/clientConfig/caBundle",
                  "value": serde_json::to_value(ByteString(ca.as_bytes().to_vec())).unwrap() }
            ])
        );
        // Applying it makes the configuration current: no further patch.
        let mut v = serde_json::to_value(&config).unwrap();
        json_patch::patch(
            &mut v,
            &serde_json::from_value::<json_patch::Patch>(patch).unwrap(),
        )
        .unwrap();
        let patched: MutatingWebhookConfiguration = serde_json::from_value(v).unwrap();
        assert!(ca_bundle_patch(&patched, ca).is_none());
    }
}
