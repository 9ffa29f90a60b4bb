//! TARGET: what the user names (`web-7f9`, `deploy/web`, `svc/api`), parsed
//! the way `kubectl port-forward` parses it, and [`ObjectRef`], how
//! messages name an object in a namespace. No API calls here
//! ([`super::resolve`] makes them).

use std::fmt;

/// The kinds of object a TARGET may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `NAME`, `pod/NAME`.
    Pod,
    /// `deploy/NAME`, `deployment/NAME`.
    Deployment,
    /// `rs/NAME`, `replicaset/NAME`.
    ReplicaSet,
    /// `sts/NAME`, `statefulset/NAME`.
    StatefulSet,
    /// `job/NAME`.
    Job,
    /// `svc/NAME`, `service/NAME`.
    Service,
}

impl Kind {
    /// The singular lowercase name kubectl prints (`deployment`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pod => "pod",
            Kind::Deployment => "deployment",
            Kind::ReplicaSet => "replicaset",
            Kind::StatefulSet => "statefulset",
            Kind::Job => "job",
            Kind::Service => "service",
        }
    }

    /// The resource for RBAC messages (`deployments.apps`).
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Deployment => "deployments.apps",
            Kind::ReplicaSet => "replicasets.apps",
            Kind::StatefulSet => "statefulsets.apps",
            Kind::Job => "jobs.batch",
            Kind::Service => "services",
        }
    }

    fn from_prefix(prefix: &str) -> Option<Self> {
        let lower = prefix.to_ascii_lowercase();
        // kubectl also accepts the fully qualified `deployment.apps` forms.
        let bare = lower
            .strip_suffix(".apps")
            .or_else(|| lower.strip_suffix(".batch"))
            .unwrap_or(&lower);
        Some(match bare {
            "po" | "pod" | "pods" => Kind::Pod,
            "deploy" | "deployment" | "deployments" => Kind::Deployment,
            "rs" | "replicaset" | "replicasets" => Kind::ReplicaSet,
            "sts" | "statefulset" | "statefulsets" => Kind::StatefulSet,
            "job" | "jobs" => Kind::Job,
            "svc" | "service" | "services" => Kind::Service,
            _ => return None,
        })
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed TARGET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What kind of object.
    pub kind: Kind,
    /// Its name.
    pub name: String,
}

impl Target {
    /// The pod `name`.
    pub fn pod(name: &str) -> Self {
        Self {
            kind: Kind::Pod,
            name: name.to_owned(),
        }
    }

    /// Parses `NAME` or `KIND/NAME` as `kubectl port-forward` accepts it.
    pub fn parse(text: &str) -> Result<Self, InvalidTarget> {
        let bad = |reason: &str| InvalidTarget {
            target: text.to_owned(),
            reason: reason.to_owned(),
        };
        let (kind, name) = match text.split_once('/') {
            None => (Kind::Pod, text),
            Some((prefix, name)) => {
                let kind = Kind::from_prefix(prefix).ok_or_else(|| {
                    bad(&format!(
                        "unknown kind {prefix:?}; use pod, deploy, rs, sts, job or svc (e.g. deploy/web)"
                    ))
                })?;
                (kind, name)
            }
        };
        if name.is_empty() {
            return Err(bad("the name is empty"));
        }
        if name.contains('/') {
            return Err(bad("expected NAME or KIND/NAME"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(bad(
                "a Kubernetes name has only letters, digits, '-' and '.'",
            ));
        }
        Ok(Target {
            kind,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// TARGET does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid target {target:?}: {reason}")]
pub struct InvalidTarget {
    /// What the user typed.
    pub target: String,
    /// What is wrong with it.
    pub reason: String,
}

/// An object in a namespace, as error messages name it: `pod NS/NAME` for
/// a pod, `KIND/NAME in namespace "NS"` for anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
}

impl ObjectRef {
    /// The object `target` names in `namespace`.
    pub fn new(target: &Target, namespace: &str) -> Self {
        Self {
            kind: target.kind,
            name: target.name.clone(),
            namespace: namespace.to_owned(),
        }
    }

    /// A pod.
    pub fn pod(namespace: &str, name: &str) -> Self {
        Self {
            kind: Kind::Pod,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Pod => write!(f, "pod {}/{}", self.namespace, self.name),
            kind => write!(
                f,
                "{kind}/{} in namespace \"{}\"",
                self.name, self.namespace
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets_like_kubectl() {
        let ok = [
            ("web-7f9", Kind::Pod, "web-7f9"),
            ("pod/web", Kind::Pod, "web"),
            ("pods/web", Kind::Pod, "web"),
            ("po/web", Kind::Pod, "web"),
            ("deploy/web", Kind::Deployment, "web"),
            ("deployment/web", Kind::Deployment, "web"),
            ("deployments/web", Kind::Deployment, "web"),
            ("deployment.apps/web", Kind::Deployment, "web"),
            ("Deploy/web", Kind::Deployment, "web"),
            ("rs/web-1", Kind::ReplicaSet, "web-1"),
            ("replicaset/web-1", Kind::ReplicaSet, "web-1"),
            ("sts/db", Kind::StatefulSet, "db"),
            ("statefulset/db", Kind::StatefulSet, "db"),
            ("job/migrate", Kind::Job, "migrate"),
            ("jobs.batch/migrate", Kind::Job, "migrate"),
            ("svc/api", Kind::Service, "api"),
            ("service/api", Kind::Service, "api"),
            ("services/api.v2", Kind::Service, "api.v2"),
        ];
        for (text, kind, name) in ok {
            assert_eq!(
                Target::parse(text).unwrap(),
                Target {
                    kind,
                    name: name.into()
                },
                "{text}"
            );
        }
        let bad = [
            ("cm/x", "unknown kind \"cm\""),
            ("deploy/", "the name is empty"),
            ("", "the name is empty"),
            ("deploy/a/b", "expected NAME or KIND/NAME"),
            ("pod/a b", "letters, digits"),
        ];
        for (text, want) in bad {
            let err = Target::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(
                err.starts_with(&format!("invalid target {text:?}")),
                "{err}"
            );
        }
        assert_eq!(
            Target::parse("deploy/web").unwrap().to_string(),
            "deployment/web"
        );
    }

    #[test]
    fn object_refs_read_like_kubectl() {
        assert_eq!(ObjectRef::pod("dev", "web-1").to_string(), "pod dev/web-1");
        let deploy = ObjectRef::new(&Target::parse("deploy/web").unwrap(), "dev");
        assert_eq!(deploy.to_string(), "deployment/web in namespace \"dev\"");
    }
}
