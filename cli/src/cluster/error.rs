//! What can go wrong between "a kubeconfig and a TARGET" and "an open
//! channel", worded for the user, each variant knowing whether waiting can
//! help.
//!
//! Every message names the object, the namespace and, where there is one,
//! the next step, so that nobody has to decode a bare HTTP status.

use crate::channel::OpenError;
use crate::cluster::rbac::{join_permissions, Permission};
use crate::cluster::target::{InvalidTarget, Kind, ObjectRef};

/// How to opt a pod in, appended to every "no sidecar" message.
pub const OPT_IN_HINT: &str =
    "to opt a pod in, annotate its template with rpf.dev/enabled: \"true\" \
(with the rpf webhook installed in the cluster), or add the sidecar to the manifest with \
`rpf inject -f manifest.yaml | kubectl apply -f -`";

/// Why the cluster side could not produce a channel.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig could not be loaded or has no usable context.
    #[error("cannot load the Kubernetes configuration: {0}")]
    Config(String),

    /// TARGET does not parse.
    #[error(transparent)]
    BadTarget(#[from] InvalidTarget),

    /// The named object does not exist.
    #[error("{} \"{}\" not found in namespace \"{}\"", .0.kind, .0.name, .0.namespace)]
    NotFound(ObjectRef),

    /// The object's selector matches no pod (yet).
    #[error("{workload} has no pods (selector {selector})")]
    NoPods {
        /// The workload.
        workload: ObjectRef,
        /// The label selector used.
        selector: String,
    },

    /// The object cannot select pods at all (e.g. a Service without selector).
    #[error("{object} cannot be forwarded to: {reason}")]
    NoSelector {
        /// The object.
        object: ObjectRef,
        /// Why.
        reason: String,
    },

    /// None of the pods carries the sidecar.
    #[error("{}; {OPT_IN_HINT}", no_sidecar_text(.target, .pods))]
    NoSidecar {
        /// What the user named.
        target: ObjectRef,
        /// Pods that were looked at (names).
        pods: Vec<String>,
    },

    /// Every pod of a workload has terminated.
    #[error("all pods of {workload} have terminated ({pods})")]
    AllTerminated {
        /// The workload.
        workload: ObjectRef,
        /// `name (phase)` of each.
        pods: String,
        /// Whether the controller will make new ones.
        replaced: bool,
    },

    /// The pod is not in phase Running.
    #[error("{pod} is not running (phase {phase}{detail})")]
    NotRunning {
        /// The pod.
        pod: ObjectRef,
        /// Pod phase.
        phase: String,
        /// `: reason` or empty.
        detail: String,
        /// Pending pods may start; Succeeded/Failed ones never will.
        retryable: bool,
    },

    /// The pod is being deleted.
    #[error("{pod} is terminating")]
    Terminating {
        /// The pod.
        pod: ObjectRef,
    },

    /// The sidecar container is not (yet) ready.
    #[error("the rpf-sidecar container of {pod} is not ready ({state})")]
    SidecarNotReady {
        /// The pod.
        pod: ObjectRef,
        /// What its status says.
        state: String,
    },

    /// The pod annotation naming the control port is not a port.
    #[error("{pod}: annotation {annotation} is {value:?}, not a port number")]
    BadControlPort {
        /// The pod.
        pod: ObjectRef,
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
    #[error("cannot open {transport} to {pod}: {reason}")]
    Upgrade {
        /// `port-forward` or `exec`.
        transport: &'static str,
        /// The pod.
        pod: ObjectRef,
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

fn no_sidecar_text(target: &ObjectRef, pods: &[String]) -> String {
    let ObjectRef {
        kind,
        name,
        namespace,
    } = target;
    match (kind, pods) {
        (Kind::Pod, _) => format!("{target} has no rpf-sidecar container, so rpf cannot reach it"),
        (_, [one]) => format!(
            "pod {namespace}/{one} of {kind}/{name} has no rpf-sidecar container, so rpf cannot reach it"
        ),
        _ => format!(
            "none of the {} pods of {target} has an rpf-sidecar container ({})",
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
            | ClusterError::BadTarget(_)
            | ClusterError::NotFound(_)
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
        // kube's Display for transport errors is terse ("ServiceError:
        // client error (Connect)"); the source chain says why.
        other => rpf_process::error_chain(other),
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
        let web = ObjectRef {
            kind: Kind::Deployment,
            name: "web".into(),
            namespace: "dev".into(),
        };
        let e = ClusterError::NotFound(web.clone());
        assert_eq!(
            e.to_string(),
            "deployment \"web\" not found in namespace \"dev\""
        );
        assert!(!e.is_retryable());

        let e = ClusterError::NoSidecar {
            target: ObjectRef::pod("dev", "web-1"),
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
            target: web,
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
            pod: ObjectRef::pod("n", "p"),
            phase: "Pending".into(),
            detail: String::new(),
            retryable: true,
        };
        assert!(pending.is_retryable());
        assert!(OpenError::from(pending).retryable);
        let gone = ClusterError::NotRunning {
            pod: ObjectRef::pod("n", "p"),
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
