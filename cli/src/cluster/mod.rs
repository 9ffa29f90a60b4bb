//! The cluster side of `rpf attach`: from (kubeconfig, TARGET, transport)
//! to an open [`Channel`] to the target pod's sidecar.
//!
//! [`ClusterSource`] is what the attach loop holds: it is built once
//! (kubeconfig loaded, TARGET parsed) and asked for a channel on every
//! (re)connect. Each [`ClusterSource::open`] resolves the target again, so a
//! workload whose pod was replaced is followed to the new pod; checks the
//! pod before dialing ([`preflight`]) so that the user reads why a pod
//! cannot be reached; and then opens the transport ([`portforward`] or
//! [`exec`]). Every failure is a [`ClusterError`] that knows whether
//! waiting can help, and becomes a retryable or fatal
//! [`OpenError`].
//!
//! Only the API server is ever contacted: no node or pod address needs to
//! be reachable from the user's machine.

mod client;
pub mod error;
pub mod exec;
pub mod portforward;
pub mod preflight;
mod ranking;
pub mod rbac;
pub mod resolve;
mod spdy;
mod stream;
pub mod target;
#[cfg(test)]
pub mod test_pods;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rpf_proto::{SIDECAR_BINARY_PATH, SIDECAR_CONTAINER};

use crate::channel::{Channel, OpenError, Place};
use error::ApiFailure;
pub use error::ClusterError;
use rbac::Permission;
pub use target::{ObjectRef, Target};

/// How long resolving and checking a target may take before the API server
/// counts as unreachable (the stream itself has no time limit).
pub const API_TIMEOUT: Duration = Duration::from_secs(20);

/// How long establishing a TCP connection to the API server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A cluster and a target in it: opens channels to the target's sidecar.
pub struct ClusterSource {
    client: Client,
    namespace: String,
    target: Target,
    transport: Transport,
    /// Whether the sidecar container must be ready before a channel is
    /// opened; not for an `rpf expose` relay, which is ready only once a
    /// session has bound its listeners.
    need_ready: bool,
    /// SPDY or WebSocket (a fallback is remembered).
    fallback: spdy::Fallback,
}

impl std::fmt::Debug for ClusterSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSource")
            .field("namespace", &self.namespace)
            .field("target", &self.target)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// Which cluster and namespace to work in, as kubectl's flags name them.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `-n`; the context's namespace when absent.
    pub namespace: Option<String>,
}

impl ClusterOptions {
    /// A kube client for these options and the namespace to work in.
    ///
    /// Loads the configuration like kubectl: `--kubeconfig`, else
    /// `$KUBECONFIG`, else `~/.kube/config`; `--context` or the current
    /// context; in a pod without any kubeconfig, the in-cluster service
    /// account. The client keeps `TCP_NODELAY` on ([`client::build`]).
    pub async fn connect(&self) -> Result<(Client, String), ClusterError> {
        let (client, namespace, _) = self.connect_to().await?;
        Ok((client, namespace))
    }

    /// As [`Self::connect`], also naming the API server's URL (what
    /// `rpf doctor` shows as evidence).
    pub async fn connect_to(&self) -> Result<(Client, String, String), ClusterError> {
        rpf_process::install_crypto_provider();
        let config = self.load_config().await?;
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| config.default_namespace.clone());
        let url = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        Ok((client::build(config)?, namespace, url))
    }

    async fn load_config(&self) -> Result<Config, ClusterError> {
        let options = KubeConfigOptions {
            context: self.context.clone(),
            cluster: None,
            user: None,
        };
        let config_error = |e: &dyn std::fmt::Display| ClusterError::Config(e.to_string());
        let mut config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)
                    .map_err(|e| ClusterError::Config(format!("{}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| config_error(&e))?
            }
            None => match Config::from_kubeconfig(&options).await {
                Ok(config) => config,
                Err(kubeconfig_error) => {
                    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
                    let explicit =
                        self.context.is_some() || std::env::var_os("KUBECONFIG").is_some();
                    match (in_pod && !explicit).then(Config::incluster) {
                        Some(Ok(config)) => config,
                        _ => return Err(config_error(&kubeconfig_error)),
                    }
                }
            },
        };
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        Ok(config)
    }
}

/// How to reach the sidecar through the Kubernetes API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// API port-forward to the sidecar's control port (needs pods/portforward).
    Portforward,
    /// API exec of `/rpf-sidecar stdio` in the sidecar container (needs pods/exec).
    Exec,
}

impl ClusterSource {
    /// Connects to the cluster `options` name and parses TARGET.
    pub async fn new(
        options: &ClusterOptions,
        transport: Transport,
        target: &str,
    ) -> Result<Self, OpenError> {
        let target = Target::parse(target).map_err(ClusterError::from)?;
        let (client, namespace) = options.connect().await?;
        Ok(Self {
            client,
            namespace,
            target,
            transport,
            need_ready: true,
            fallback: Default::default(),
        })
    }

    /// A source for one `rpf expose` relay pod: port-forward to it by
    /// name, once its sidecar runs (its readiness waits for our session).
    pub fn relay(client: Client, namespace: &str, pod: &str) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
            target: Target::pod(pod),
            transport: Transport::Portforward,
            need_ready: false,
            fallback: Default::default(),
        }
    }

    /// A source for an existing client (`rpf doctor`, the live tests).
    pub fn with_client(
        client: Client,
        namespace: &str,
        target: Target,
        transport: Transport,
    ) -> Self {
        Self {
            client,
            namespace: namespace.to_owned(),
            target,
            transport,
            need_ready: true,
            fallback: Default::default(),
        }
    }

    /// e.g. `deployment/web in namespace default`, for messages.
    pub fn describe(&self) -> String {
        format!("{} in namespace {}", self.target, self.namespace)
    }

    /// Resolves the target to a pod (again on every call for workload
    /// targets, so a replaced pod is found), checks it (running, sidecar
    /// present and ready, RBAC) and opens a channel with the chosen
    /// transport.
    pub async fn open(&mut self) -> Result<Channel, OpenError> {
        let resolved = tokio::time::timeout(API_TIMEOUT, self.resolve())
            .await
            .map_err(|_| {
                ClusterError::Unreachable(format!(
                    "no answer within {} s while looking up {}",
                    API_TIMEOUT.as_secs(),
                    self.describe()
                ))
            })?;
        let pod = match resolved {
            // A relay being deleted never comes back; `rpf expose` attaches
            // to its replacement instead.
            Err(e @ ClusterError::Terminating { .. }) if !self.need_ready => {
                return Err(OpenError::fatal(e))
            }
            other => other?,
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        tracing::debug!(pod = %name, namespace = %self.namespace, transport = ?self.transport, "opening channel");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let place = Place::Pod {
            namespace: self.namespace.clone(),
            name: name.clone(),
        };
        let opened = match self.transport {
            Transport::Portforward => {
                let port = preflight::control_port(&pod)?;
                tokio::time::timeout(
                    API_TIMEOUT,
                    portforward::open_with(&self.client, &pods, &name, port, &self.fallback),
                )
                .await
                .map(|r| {
                    r.map(|(io, guard)| Channel {
                        io: Box::new(io),
                        place,
                        guard: Some(Box::new(guard)),
                    })
                })
            }
            Transport::Exec => {
                let command = [SIDECAR_BINARY_PATH, "stdio"];
                tokio::time::timeout(
                    API_TIMEOUT,
                    exec::open(
                        &self.client,
                        &pods,
                        &name,
                        SIDECAR_CONTAINER,
                        &command,
                        &self.fallback,
                    ),
                )
                .await
                .map(|r| {
                    r.map(|(io, guard)| Channel {
                        io,
                        place,
                        guard: Some(guard),
                    })
                })
            }
        };
        match opened {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(self.upgrade_error(e, &name).await.into()),
            Err(_) => Err(ClusterError::Upgrade {
                transport: self.transport_name(),
                pod: ObjectRef::pod(&self.namespace, &name),
                reason: format!("no answer within {} s", API_TIMEOUT.as_secs()),
                retryable: true,
            }
            .into()),
        }
    }

    async fn resolve(&self) -> Result<Pod, ClusterError> {
        let pod = resolve::resolve(&self.client, &self.target, &self.namespace).await?;
        match self.need_ready {
            true => preflight::check_pod(&pod)?,
            false => preflight::check_pod_started(&pod)?,
        }
        Ok(pod)
    }

    fn transport_name(&self) -> &'static str {
        match self.transport {
            Transport::Portforward => "port-forward",
            Transport::Exec => "exec",
        }
    }

    /// The subresource the transport needs.
    fn needed(&self) -> &'static str {
        match self.transport {
            Transport::Portforward => "pods/portforward",
            Transport::Exec => "pods/exec",
        }
    }

    /// Explains a refused or failed upgrade. On 403 a
    /// SelfSubjectAccessReview names exactly what is missing (API servers
    /// check `get` for WebSocket upgrades and, newer ones, `create` too).
    async fn upgrade_error(&self, error: kube::Error, pod: &str) -> ClusterError {
        let message = error::api_message(&error);
        let failure = error::classify(&error);
        tracing::debug!(%message, ?failure, "upgrade failed");
        let upgrade = |reason: String, retryable: bool| ClusterError::Upgrade {
            transport: self.transport_name(),
            pod: ObjectRef::pod(&self.namespace, pod),
            reason,
            retryable,
        };
        match failure {
            ApiFailure::Forbidden => {
                let wanted = [
                    Permission::new("create", self.needed()),
                    Permission::new("get", self.needed()),
                ];
                let missing =
                    rbac::missing_permissions(&self.client, &self.namespace, Some(pod), &wanted)
                        .await;
                let missing = match missing {
                    Some(m) if !m.is_empty() => m,
                    // The review could not tell: name what the transport needs.
                    _ => vec![wanted[0].clone()],
                };
                ClusterError::Forbidden {
                    missing,
                    namespace: self.namespace.clone(),
                    server: Some(message),
                }
            }
            ApiFailure::Unauthorized => ClusterError::Unauthorized(message),
            // Gone between lookup and upgrade: the next attempt re-resolves.
            ApiFailure::NotFound => upgrade(format!("the pod is gone ({message})"), true),
            // The kubelet answers 400/500 while a container (re)starts.
            ApiFailure::Transient | ApiFailure::Other => upgrade(message, true),
        }
    }
}

#[cfg(test)]
mod live_tests;
#[cfg(test)]
mod resolve_tests;
