//! `rpf version`: this CLI's release and protocol and, like `kubectl
//! version`, what runs in the cluster: the API server, the webhook and the
//! sidecar image it injects, and (with a TARGET) the sidecar of that pod,
//! with a warning when an image's release differs from the CLI's.
//!
//! The cluster part is best effort: each line that cannot be read says why
//! (a developer often may not read cluster-scoped webhook configurations),
//! and only an unreachable API server fails the command.

use clap::Args;
use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ServiceReference};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::{Api, Client};
use rpf_proto::{PROTOCOL_VERSION, SOFTWARE_VERSION};

use crate::cluster::preflight::sidecar_image;
use crate::cluster::{resolve, ClusterError, Target};

/// The name of the webhook configuration and Deployment the manifests install.
pub const WEBHOOK_NAME: &str = "rpf-webhook";

/// `rpf version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Only this CLI's version (no cluster needed).
    #[arg(long)]
    pub client: bool,
    /// Also show the sidecar of this pod or workload (pod/NAME, deploy/NAME, ...).
    #[arg(value_name = "TARGET")]
    pub target: Option<String>,
    /// Namespace, context and kubeconfig.
    #[command(flatten)]
    pub cluster: crate::args::ClusterFlags,
}

/// What `rpf version` found, one line each.
#[derive(Debug, Default)]
struct Report {
    lines: Vec<String>,
    warnings: Vec<String>,
}

/// Prints the versions; fails only when the API server cannot be reached.
pub async fn run(args: &VersionArgs) -> anyhow::Result<()> {
    println!("Client: rpf {SOFTWARE_VERSION}, protocol {PROTOCOL_VERSION}");
    if args.client {
        return Ok(());
    }
    let (client, namespace) = args.cluster.options().connect().await?;
    let server = client
        .apiserver_version()
        .await
        .map_err(|e| ClusterError::Unreachable(crate::cluster::error::api_message(&e)))?;
    println!("Server: Kubernetes {}", server.git_version);
    let mut report = Report::default();
    webhook(&client, &mut report).await;
    if let Some(target) = &args.target {
        sidecar(&client, target, &namespace, &mut report).await?;
    }
    for line in &report.lines {
        println!("{line}");
    }
    for warning in &report.warnings {
        tracing::warn!("{warning}");
    }
    Ok(())
}

/// The installed webhook, as far as the cluster shows it (`rpf version`
/// and `rpf doctor` read it alike).
pub enum Webhook {
    /// No MutatingWebhookConfiguration [`WEBHOOK_NAME`].
    NotInstalled,
    /// The configuration could not be read (often: no permission to read
    /// cluster-scoped objects).
    Unreadable(kube::Error),
    /// Installed and called by URL: no Deployment in the cluster to inspect.
    ByUrl(Box<MutatingWebhookConfiguration>),
    /// Installed and called through a Service; its Deployment as found
    /// (`Ok(None)`: missing).
    InCluster {
        /// The configuration.
        config: Box<MutatingWebhookConfiguration>,
        /// The Service the API server calls.
        service: ServiceReference,
        /// The Deployment of the Service's name in its namespace.
        deployment: Result<Option<Box<Deployment>>, kube::Error>,
    },
}

/// Looks the webhook up: its configuration, then the Deployment behind the
/// Service it names.
pub async fn find_webhook(client: &Client) -> Webhook {
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config = match configs.get_opt(WEBHOOK_NAME).await {
        Ok(Some(config)) => Box::new(config),
        Ok(None) => return Webhook::NotInstalled,
        Err(e) => return Webhook::Unreadable(e),
    };
    let service = config
        .webhooks
        .iter()
        .flatten()
        .find_map(|w| w.client_config.service.clone());
    let Some(service) = service else {
        return Webhook::ByUrl(config);
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &service.namespace);
    let deployment = deployments
        .get_opt(&service.name)
        .await
        .map(|d| d.map(Box::new));
    Webhook::InCluster {
        config,
        service,
        deployment,
    }
}

/// What a webhook Deployment runs: replicas ready and wanted, the image,
/// and the sidecar image it injects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDeployment {
    /// Ready replicas.
    pub ready: i32,
    /// Wanted replicas.
    pub wanted: i32,
    /// The webhook's image.
    pub image: String,
    /// The sidecar image it injects, when the Deployment says.
    pub injects: Option<String>,
}

impl WebhookDeployment {
    /// Reads `deployment`'s spec and status.
    pub fn of(deployment: &Deployment) -> Self {
        let spec = deployment.spec.as_ref();
        let container = spec
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.containers.first());
        Self {
            ready: deployment
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
            wanted: spec.and_then(|s| s.replicas).unwrap_or(1),
            image: container.and_then(|c| c.image.clone()).unwrap_or_default(),
            injects: container.and_then(injected_image),
        }
    }
}

/// The webhook the API server calls, the image it runs and the sidecar
/// image it injects.
async fn webhook(client: &Client, report: &mut Report) {
    let (service, deployment) = match find_webhook(client).await {
        Webhook::NotInstalled => {
            report.lines.push(format!(
                "Webhook: not installed (no MutatingWebhookConfiguration {WEBHOOK_NAME}); \
                 pods need `rpf inject` (install: kubectl apply -k manifests/)"
            ));
            return;
        }
        Webhook::Unreadable(e) => {
            report.lines.push(format!(
                "Webhook: unknown ({})",
                crate::cluster::error::api_message(&e)
            ));
            return;
        }
        Webhook::ByUrl(_) => {
            report.lines.push(
                "Webhook: installed, called by URL (no in-cluster Deployment to inspect)".into(),
            );
            return;
        }
        Webhook::InCluster {
            service,
            deployment,
            ..
        } => (service, deployment),
    };
    let deployment = match deployment {
        Ok(Some(d)) => WebhookDeployment::of(&d),
        Ok(None) => {
            report.lines.push(format!(
                "Webhook: configured, but Deployment {}/{} is missing: pods are created without the sidecar",
                service.namespace, service.name
            ));
            return;
        }
        Err(e) => {
            report.lines.push(format!(
                "Webhook: in {}, Deployment unreadable ({})",
                service.namespace,
                crate::cluster::error::api_message(&e)
            ));
            return;
        }
    };
    let WebhookDeployment {
        ready,
        wanted,
        image,
        injects,
    } = deployment;
    report.lines.push(format!(
        "Webhook: {image} in {} ({ready}/{wanted} ready){}",
        service.namespace,
        injects
            .as_deref()
            .map(|i| format!(", injects {i}"))
            .unwrap_or_default()
    ));
    report.warnings.extend(skew("the webhook image", &image));
    if let Some(injects) = injects {
        report
            .warnings
            .extend(skew("the sidecar image the webhook injects", &injects));
    }
}

/// The sidecar image a webhook container injects: its `RPF_SIDECAR_IMAGE`
/// environment value or a literal `--sidecar-image=` argument.
fn injected_image(container: &Container) -> Option<String> {
    let from_env = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "RPF_SIDECAR_IMAGE")
        .and_then(|e| e.value.clone());
    let from_args = || {
        container
            .args
            .iter()
            .flatten()
            .find_map(|a| a.strip_prefix("--sidecar-image="))
            .filter(|v| !v.starts_with("$("))
            .map(str::to_owned)
    };
    from_env.or_else(from_args)
}

/// The sidecar image of TARGET's pod.
async fn sidecar(
    client: &Client,
    target: &str,
    namespace: &str,
    report: &mut Report,
) -> Result<(), ClusterError> {
    let target = Target::parse(target)?;
    let pod: Pod = resolve::resolve(client, &target, namespace).await?;
    let image = sidecar_image(&pod);
    report.lines.push(format!(
        "Sidecar: {image} in pod {}/{}",
        namespace,
        pod.metadata.name.as_deref().unwrap_or_default()
    ));
    report
        .warnings
        .extend(skew("the pod's sidecar image", &image));
    Ok(())
}

/// A warning when `image`'s tag names another release than this CLI.
/// Digests and tags that are not versions (`dev`, `latest`) say nothing.
pub fn skew(what: &str, image: &str) -> Option<String> {
    let tag = image_tag(image)?;
    let version = tag.strip_prefix('v').unwrap_or(tag);
    if !version.starts_with(|c: char| c.is_ascii_digit()) || version == SOFTWARE_VERSION {
        return None;
    }
    Some(format!(
        "{what} is release {version}, this CLI is {SOFTWARE_VERSION}: they work together while \
         both speak protocol {PROTOCOL_VERSION} (a mismatch is named when a session starts); \
         keep them on one release to be sure"
    ))
}

/// The tag of an image reference (`registry:5000/a/b:1.2` → `1.2`), if any.
fn image_tag(image: &str) -> Option<&str> {
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    last.split_once(':').map(|(_, tag)| tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::EnvVar;

    #[test]
    fn tags_are_read_past_registry_ports_and_digests() {
        assert_eq!(
            image_tag("ghcr.io/rpf-dev/rpf-sidecar:0.1.0"),
            Some("0.1.0")
        );
        assert_eq!(
            image_tag("localhost:5000/rpf-sidecar:v0.2.0"),
            Some("v0.2.0")
        );
        assert_eq!(image_tag("localhost:5000/rpf-sidecar"), None);
        assert_eq!(image_tag("rpf-sidecar:dev@sha256:abc"), Some("dev"));
        assert_eq!(image_tag("rpf-sidecar@sha256:abc"), None);
    }

    #[test]
    fn only_another_release_is_a_skew() {
        assert_eq!(
            skew("x", &format!("r/rpf-sidecar:{SOFTWARE_VERSION}")),
            None
        );
        assert_eq!(skew("x", "r/rpf-sidecar:dev"), None);
        assert_eq!(skew("x", "r/rpf-sidecar"), None);
        let warning = skew("the webhook image", "r/rpf-webhook:v9.9.9").unwrap();
        assert!(warning.starts_with("the webhook image is release 9.9.9, this CLI is"));
    }

    #[test]
    fn the_injected_image_comes_from_env_or_a_literal_arg() {
        let mut c = Container {
            args: Some(vec!["--sidecar-image=$(RPF_SIDECAR_IMAGE)".into()]),
            ..Default::default()
        };
        assert_eq!(injected_image(&c), None);
        c.env = Some(vec![EnvVar {
            name: "RPF_SIDECAR_IMAGE".into(),
            value: Some("r/rpf-sidecar:1.0.0".into()),
            ..Default::default()
        }]);
        assert_eq!(injected_image(&c).as_deref(), Some("r/rpf-sidecar:1.0.0"));
        let c = Container {
            args: Some(vec!["--sidecar-image=r/s:2".into()]),
            ..Default::default()
        };
        assert_eq!(injected_image(&c).as_deref(), Some("r/s:2"));
    }
}
