//! What can go wrong between "a kubeconfig and a TARGET" and "an open
//! channel", worded for the user, each variant knowing whether waiting can
//! help.
//!
//! Every message names the object, the namespace and, where there is one,
//! the next step, so that nobody has to decode a bare HTTP status.

use std::fmt;

use crate::channel::OpenError;
use crate::cluster::target::Kind;

/// How to opt a pod in, appended to every "no sidecar" message.
pub const OPT_IN_HINT: &str =
    "to opt a pod in, annotate its template with rpf.dev/enabled: \"true\" \
(with the rpf webhook installed in the cluster), or add the sidecar to the manifest with \
`rpf inject -f manifest.yaml | kubectl apply -f -`";

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

fn join_permissions(missing: &[Permission]) -> String {
    missing
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why the cluster side could not produce a channel.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig could not be loaded or has no usable context.
    #[error("cannot load the Kubernetes configuration: {0}")]
    Config(String),

    /// TARGET does not parse.
    #[error("invalid target {target:?}: {reason}")]
    BadTarget {
        /// What the user typed.
        target: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The named object does not exist.
    #[error("{kind} \"{name}\" not found in namespace \"{namespace}\"")]
    NotFound {
        /// Kind searched (`pod`, `deployment`, ...).
        kind: Kind,
        /// Name searched.
        name: String,
        /// Namespace searched.
        namespace: String,
    },

    /// The object's selector matches no pod (yet).
    #[error("{kind}/{name} in namespace \"{namespace}\" has no pods (selector {selector})")]
    NoPods {
        /// Kind of the workload.
        kind: Kind,
        /// Its name.
        name: String,
        /// Its namespace.
        namespace: String,
        /// The label selector used.
        selector: String,
    },

    /// The object cannot select pods at all (e.g. a Service without selector).
    #[error("{kind}/{name} in namespace \"{namespace}\" cannot be forwarded to: {reason}")]
    NoSelector {
        /// Kind of the object.
        kind: Kind,
        /// Its name.
        name: String,
        /// Its namespace.
        namespace: String,
        /// Why.
        reason: String,
    },

    /// None of the pods carries the sidecar.
    #[error("{}; {OPT_IN_HINT}", no_sidecar_text(.kind, .name, .namespace, .pods))]
    NoSidecar {
        /// Kind of the target.
        kind: Kind,
        /// Its name.
        name: String,
        /// Its namespace.
        namespace: String,
        /// Pods that were looked at (names).
        pods: Vec<String>,
    },

    /// Every pod of a workload has terminated.
    #[error("all pods of {kind}/{name} in namespace \"{namespace}\" have terminated ({pods})")]
    AllTerminated {
        /// Kind of the workload.
        kind: Kind,
        /// Its name.
        name: String,
        /// Its namespace.
        namespace: String,
        /// `name (phase)` of each.
        pods: String,
        /// Whether the controller will make new ones.
        replaced: bool,
    },

    /// The pod is not in phase Running.
    #[error("pod {namespace}/{name} is not running (phase {phase}{detail})")]
    NotRunning {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// Pod phase.
        phase: String,
        /// `: reason` or empty.
        detail: String,
        /// Pending pods may start; Succeeded/Failed ones never will.
        retryable: bool,
    },

    /// The pod is being deleted.
    #[error("pod {namespace}/{name} is terminating")]
    Terminating {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },

    /// The sidecar container is not (yet) ready.
    #[error("the rpf-sidecar container of pod {namespace}/{name} is not ready ({state})")]
    SidecarNotReady {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// What its status says.
        state: String,
    },

    /// The pod annotation naming the control port is not a port.
    #[error("pod {namespace}/{name}: annotation {annotation} is {value:?}, not a port number")]
    BadControlPort {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// The annotation key.
        annotation: &'static str,
        /// Its value.
        value: String,
    },

    /// RBAC denies something we need.
    #[error(
        "forbidden: you are not allowed to {} in namespace \"{namespace}\"; ask a cluster admin for a Role granting it{}",
        join_permissions(.missing),
        .server.as_deref().map(|s| format!(" (API server: {s})")).unwrap_or_default()
    )]
    Forbidden {
        /// What is missing.
        missing: Vec<Permission>,
        /// Namespace.
        namespace: String,
        /// The API server's own words, when they add something.
        server: Option<String>,
    },

    /// The credentials were rejected.
    #[error("the API server rejected the credentials (401 Unauthorized): {0}; check the kubeconfig user or log in again")]
    Unauthorized(String),

    /// The API server could not be reached or answered with a server error.
    #[error("cannot reach the Kubernetes API server: {0}")]
    Unreachable(String),

    /// Opening the port-forward or exec stream failed.
    #[error("cannot open {transport} to pod {namespace}/{name}: {reason}")]
    Upgrade {
        /// `port-forward` or `exec`.
        transport: &'static str,
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
        /// What went wrong.
        reason: String,
        /// Whether trying again may help.
        retryable: bool,
    },

    /// Another API error.
    #[error("{context}: {message}")]
    Api {
        /// What we were doing.
        context: String,
        /// The API server's message.
        message: String,
        /// Whether trying again may help.
        retryable: bool,
    },
}

fn no_sidecar_text(kind: &Kind, name: &str, namespace: &str, pods: &[String]) -> String {
    match (kind, pods) {
        (Kind::Pod, _) => format!(
            "pod {namespace}/{name} has no rpf-sidecar container, so rpf cannot reach it"
        ),
        (_, [one]) => format!(
            "pod {namespace}/{one} of {kind}/{name} has no rpf-sidecar container, so rpf cannot reach it"
        ),
        _ => format!(
            "none of the {} pods of {kind}/{name} in namespace \"{namespace}\" has an rpf-sidecar container ({})",
            pods.len(),
            pods.join(", ")
        ),
    }
}

impl ClusterError {
    /// Whether retrying later may help (the pod is starting, the API server
    /// is restarting), as opposed to something only the user can fix.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClusterError::NoPods { .. }
            | ClusterError::Terminating { .. }
            | ClusterError::SidecarNotReady { .. }
            | ClusterError::Unreachable(_) => true,
            ClusterError::AllTerminated { replaced, .. } => *replaced,
            ClusterError::NotRunning { retryable, .. }
            | ClusterError::Upgrade { retryable, .. }
            | ClusterError::Api { retryable, .. } => *retryable,
            ClusterError::Config(_)
            | ClusterError::BadTarget { .. }
            | ClusterError::NotFound { .. }
            | ClusterError::NoSelector { .. }
            | ClusterError::NoSidecar { .. }
            | ClusterError::BadControlPort { .. }
            | ClusterError::Forbidden { .. }
            | ClusterError::Unauthorized(_) => false,
        }
    }
}

impl From<ClusterError> for OpenError {
    fn from(error: ClusterError) -> Self {
        if error.is_retryable() {
            OpenError::retryable(error)
        } else {
            OpenError::fatal(error)
        }
    }
}

/// How a failed API call should be reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFailure {
    /// 404.
    NotFound,
    /// 403.
    Forbidden,
    /// 401.
    Unauthorized,
    /// No answer, 5xx, 429: the server may come back.
    Transient,
    /// Anything else (4xx the user must look at).
    Other,
}

/// Sorts a kube error into what the user should hear.
pub fn classify(error: &kube::Error) -> ApiFailure {
    match error {
        kube::Error::Api(status) => match status.code {
            404 => ApiFailure::NotFound,
            403 => ApiFailure::Forbidden,
            401 => ApiFailure::Unauthorized,
            408 | 429 | 500..=599 => ApiFailure::Transient,
            _ => ApiFailure::Other,
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => ApiFailure::Transient,
        kube::Error::UpgradeConnection(_) => ApiFailure::Transient,
        _ => ApiFailure::Other,
    }
}

/// The API server's message for an error, without kube's wrapping.
pub fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => {
            // kube's Display for transport errors is terse ("ServiceError:
            // client error (Connect)"); the source chain says why.
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                let s_text = s.to_string();
                if !text.contains(&s_text) {
                    text.push_str(": ");
                    text.push_str(&s_text);
                }
                source = s.source();
            }
            text
        }
    }
}

/// Turns an error from a plain API call (get, list) into a [`ClusterError`].
/// `forbidden` is the permission that call needed.
pub fn from_api(
    error: kube::Error,
    context: impl FnOnce() -> String,
    forbidden: Permission,
    namespace: &str,
) -> ClusterError {
    match classify(&error) {
        ApiFailure::Forbidden => ClusterError::Forbidden {
            missing: vec![forbidden],
            namespace: namespace.to_owned(),
            server: Some(api_message(&error)),
        },
        ApiFailure::Unauthorized => ClusterError::Unauthorized(api_message(&error)),
        ApiFailure::Transient => ClusterError::Unreachable(api_message(&error)),
        ApiFailure::NotFound | ApiFailure::Other => ClusterError::Api {
            context: context(),
            message: api_message(&error),
            retryable: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_name_object_namespace_and_next_step() {
        let e = ClusterError::NotFound {
            kind: Kind::Deployment,
            name: "web".into(),
            namespace: "dev".into(),
        };
        assert_eq!(
            e.to_string(),
            "deployment \"web\" not found in namespace \"dev\""
        );
        assert!(!e.is_retryable());

        let e = ClusterError::NoSidecar {
            kind: Kind::Pod,
            name: "web-1".into(),
            namespace: "dev".into(),
            pods: vec!["web-1".into()],
        };
        let text = e.to_string();
        assert!(
            text.starts_with("pod dev/web-1 has no rpf-sidecar container"),
            "{text}"
        );
        assert!(text.contains("rpf.dev/enabled: \"true\""), "{text}");
        assert!(
            text.contains("rpf inject -f manifest.yaml | kubectl apply -f -"),
            "{text}"
        );

        let e = ClusterError::NoSidecar {
            kind: Kind::Deployment,
            name: "web".into(),
            namespace: "dev".into(),
            pods: vec!["web-a".into(), "web-b".into()],
        };
        assert!(e
            .to_string()
            .starts_with("none of the 2 pods of deployment/web in namespace \"dev\" has an rpf-sidecar container (web-a, web-b)"));

        let e = ClusterError::Forbidden {
            missing: vec![Permission::new("create", "pods/portforward")],
            namespace: "dev".into(),
            server: None,
        };
        assert_eq!(
            e.to_string(),
            "forbidden: you are not allowed to create pods/portforward in namespace \"dev\"; ask a cluster admin for a Role granting it"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn retryable_or_not() {
        let pending = ClusterError::NotRunning {
            namespace: "n".into(),
            name: "p".into(),
            phase: "Pending".into(),
            detail: String::new(),
            retryable: true,
        };
        assert!(pending.is_retryable());
        assert!(OpenError::from(pending).retryable);
        let gone = ClusterError::NotRunning {
            namespace: "n".into(),
            name: "p".into(),
            phase: "Failed".into(),
            detail: ": Error".into(),
            retryable: false,
        };
        assert_eq!(
            gone.to_string(),
            "pod n/p is not running (phase Failed: Error)"
        );
        assert!(!OpenError::from(gone).retryable);
        assert!(ClusterError::Unreachable("connection refused".into()).is_retryable());
    }

    #[test]
    fn api_errors_are_classified() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: format!("m{code}"),
                ..Default::default()
            }))
        };
        assert_eq!(classify(&status(404)), ApiFailure::NotFound);
        assert_eq!(classify(&status(403)), ApiFailure::Forbidden);
        assert_eq!(classify(&status(401)), ApiFailure::Unauthorized);
        assert_eq!(classify(&status(503)), ApiFailure::Transient);
        assert_eq!(classify(&status(422)), ApiFailure::Other);
        let e = from_api(
            status(403),
            || "x".into(),
            Permission::new("get", "pods"),
            "ns",
        );
        assert_eq!(
            e.to_string(),
            "forbidden: you are not allowed to get pods in namespace \"ns\"; ask a cluster admin for a Role granting it (API server: m403)"
        );
        assert!(from_api(
            status(500),
            || "x".into(),
            Permission::new("get", "pods"),
            "ns"
        )
        .is_retryable());
    }
}
