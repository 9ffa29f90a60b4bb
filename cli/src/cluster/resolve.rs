//! From a [`Target`] to one pod, asking the API server on every call so
//! that a workload whose pod was replaced is followed to the new pod. Only
//! pods with the `rpf-sidecar` container qualify; among them
//! [`ranking::best_pod`] picks as kubectl does.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::ListParams;
use kube::core::{Selector, SelectorExt};
use kube::{Api, Client};

use super::error::{self, ClusterError};
use super::preflight;
use super::ranking::{best_pod, phase};
use super::rbac::Permission;
use super::target::{Kind, ObjectRef, Target};

/// Picks the pod for a workload out of the pods its selector matched:
/// only pods with the sidecar, not terminated, best first.
pub fn choose(workload: &ObjectRef, selector: &str, pods: &[Pod]) -> Result<Pod, ClusterError> {
    if pods.is_empty() {
        return Err(ClusterError::NoPods {
            workload: workload.clone(),
            selector: selector.to_owned(),
        });
    }
    let with_sidecar: Vec<&Pod> = pods.iter().filter(|p| preflight::has_sidecar(p)).collect();
    if with_sidecar.is_empty() {
        return Err(ClusterError::NoSidecar {
            target: workload.clone(),
            pods: pods.iter().map(pod_name).collect(),
        });
    }
    let alive: Vec<Pod> = with_sidecar
        .iter()
        .filter(|p| !matches!(phase(p), "Succeeded" | "Failed"))
        .map(|p| (*p).clone())
        .collect();
    if alive.is_empty() {
        return Err(ClusterError::AllTerminated {
            workload: workload.clone(),
            pods: with_sidecar
                .iter()
                .map(|p| format!("{} ({})", pod_name(p), phase(p)))
                .collect::<Vec<_>>()
                .join(", "),
            // Jobs do not bring finished pods back; the others do.
            replaced: workload.kind != Kind::Job,
        });
    }
    Ok(best_pod(&alive).expect("not empty").clone())
}

fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().unwrap_or_default()
}

async fn get_object<K>(client: &Client, object: &ObjectRef) -> Result<K, ClusterError>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), &object.namespace);
    match api.get_opt(&object.name).await {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(ClusterError::NotFound(object.clone())),
        Err(e) => Err(error::from_api(
            e,
            || {
                format!(
                    "cannot get {}/{} in namespace \"{}\"",
                    object.kind, object.name, object.namespace
                )
            },
            Permission::new("get", object.kind.resource()),
            &object.namespace,
        )),
    }
}

/// The label selector of a workload object, fetched from the API.
async fn workload_selector(
    client: &Client,
    workload: &ObjectRef,
) -> Result<LabelSelector, ClusterError> {
    let no_selector = |reason: &str| ClusterError::NoSelector {
        object: workload.clone(),
        reason: reason.to_owned(),
    };
    let selector = match workload.kind {
        Kind::Pod => unreachable!("pods are fetched by name"),
        Kind::Deployment => get_object::<Deployment>(client, workload)
            .await?
            .spec
            .map(|s| s.selector),
        Kind::ReplicaSet => get_object::<ReplicaSet>(client, workload)
            .await?
            .spec
            .map(|s| s.selector),
        Kind::StatefulSet => get_object::<StatefulSet>(client, workload)
            .await?
            .spec
            .map(|s| s.selector),
        Kind::Job => {
            let job = get_object::<Job>(client, workload).await?;
            match job.spec.as_ref().and_then(|s| s.selector.clone()) {
                Some(selector) => Some(selector),
                // Jobs normally get a selector from the API server; without
                // one, the controller labels its pods with the job's uid.
                None => job.metadata.uid.map(|uid| LabelSelector {
                    match_labels: Some(BTreeMap::from([("controller-uid".to_owned(), uid)])),
                    ..Default::default()
                }),
            }
        }
        Kind::Service => {
            let svc = get_object::<Service>(client, workload).await?;
            match svc.spec.and_then(|s| s.selector).filter(|s| !s.is_empty()) {
                Some(labels) => Some(LabelSelector {
                    match_labels: Some(labels),
                    ..Default::default()
                }),
                None => {
                    return Err(no_selector(
                        "the service has no selector, so it selects no pods",
                    ))
                }
            }
        }
    };
    let selector = selector.ok_or_else(|| no_selector("it has no spec.selector"))?;
    if selector.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(|m| m.is_empty())
    {
        return Err(no_selector("its selector is empty"));
    }
    Ok(selector)
}

/// kube's [`Selector`] for a workload's `LabelSelector`; an operator kube
/// does not know (`Gt` in a hand-written object) is named in the error.
fn selector(workload: &ObjectRef, label_selector: LabelSelector) -> Result<Selector, ClusterError> {
    let unsupported = |reason: String| ClusterError::NoSelector {
        object: workload.clone(),
        reason,
    };
    const KNOWN: [&str; 4] = ["In", "NotIn", "Exists", "DoesNotExist"];
    if let Some(expr) = label_selector
        .match_expressions
        .iter()
        .flatten()
        .find(|e| !KNOWN.contains(&e.operator.as_str()))
    {
        return Err(unsupported(format!(
            "unsupported selector operator {:?} on key {:?}",
            expr.operator, expr.key
        )));
    }
    Selector::try_from(label_selector).map_err(|e| unsupported(e.to_string()))
}

/// Finds the pod for `target` in `namespace`, fetching again on every call.
pub async fn resolve(
    client: &Client,
    target: &Target,
    namespace: &str,
) -> Result<Pod, ClusterError> {
    let found = pods(client, target, namespace).await?;
    if target.kind == Kind::Pod {
        let pod = found
            .pods
            .into_iter()
            .next()
            .expect("a pod target finds one pod");
        if !preflight::has_sidecar(&pod) {
            return Err(ClusterError::NoSidecar {
                pods: vec![found.object.name.clone()],
                target: found.object,
            });
        }
        return Ok(pod);
    }
    choose(&found.object, &found.selector, &found.pods)
}

/// The pods a target names, sidecar or not.
#[derive(Debug)]
pub struct TargetPods {
    /// The object the user named.
    pub object: ObjectRef,
    /// The label selector used (empty for a pod target).
    pub selector: String,
    /// The pod itself, or the pods the workload's selector matches.
    pub pods: Vec<Pod>,
}

/// Every pod `target` names in `namespace`: the pod itself, or the pods
/// its selector matches (`rpf doctor` looks at pods without the sidecar too).
pub async fn pods(
    client: &Client,
    target: &Target,
    namespace: &str,
) -> Result<TargetPods, ClusterError> {
    let object = ObjectRef::new(target, namespace);
    if target.kind == Kind::Pod {
        let pod = get_object::<Pod>(client, &object).await?;
        return Ok(TargetPods {
            object,
            selector: String::new(),
            pods: vec![pod],
        });
    }
    let selector = selector(&object, workload_selector(client, &object).await?)?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels_from(&selector))
        .await
        .map_err(|e| {
            error::from_api(
                e,
                || format!("cannot list the pods of {target} in namespace \"{namespace}\""),
                Permission::new("list", "pods"),
                namespace,
            )
        })?;
    // The server filtered already; filtering again keeps us honest should
    // a selector feature be unknown to an old server.
    let matching: Vec<Pod> = list
        .items
        .into_iter()
        .filter(|p| selector.matches(p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
        .collect();
    Ok(TargetPods {
        object,
        selector: selector.to_string(),
        pods: matching,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_pods::{labels, req, BASE, P};

    /// kube's selector, as [`resolve`] builds it, renders what the API
    /// takes and matches as the API server does.
    #[test]
    fn selectors_render_and_match() {
        let workload = ObjectRef::new(&Target::parse("deploy/web").unwrap(), "dev");
        let to_sel = |s: &LabelSelector| selector(&workload, s.clone()).unwrap();
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web"), ("tier", "fe")])),
            match_expressions: Some(vec![
                req("track", "In", &["stable", "canary"]),
                req("legacy", "DoesNotExist", &[]),
                req("zone", "NotIn", &["b"]),
                req("team", "Exists", &[]),
            ]),
        };
        assert_eq!(
            to_sel(&sel).to_string(),
            "app=web,tier=fe,track in (canary,stable),!legacy,zone notin (b),team"
        );
        let base = [
            ("app", "web"),
            ("tier", "fe"),
            ("track", "stable"),
            ("team", "x"),
        ];
        assert!(to_sel(&sel).matches(&labels(&base)));
        let cases: &[(&[(&str, &str)], bool)] = &[
            (
                &[
                    ("app", "web"),
                    ("tier", "fe"),
                    ("track", "canary"),
                    ("team", "x"),
                    ("zone", "a"),
                ],
                true,
            ),
            (
                &[
                    ("app", "web"),
                    ("tier", "fe"),
                    ("track", "canary"),
                    ("team", "x"),
                    ("zone", "b"),
                ],
                false,
            ),
            (
                &[
                    ("app", "api"),
                    ("tier", "fe"),
                    ("track", "stable"),
                    ("team", "x"),
                ],
                false,
            ),
            (
                &[
                    ("app", "web"),
                    ("tier", "fe"),
                    ("track", "beta"),
                    ("team", "x"),
                ],
                false,
            ),
            (
                &[("app", "web"), ("tier", "fe"), ("track", "stable")],
                false,
            ),
            (
                &[
                    ("app", "web"),
                    ("tier", "fe"),
                    ("track", "stable"),
                    ("team", "x"),
                    ("legacy", "1"),
                ],
                false,
            ),
        ];
        for (l, want) in cases {
            assert_eq!(to_sel(&sel).matches(&labels(l)), *want, "{l:?}");
        }
        assert!(to_sel(&LabelSelector::default()).matches(&labels(&[])));
        let bad = LabelSelector {
            match_expressions: Some(vec![req("a", "Gt", &["1"])]),
            ..Default::default()
        };
        let err = selector(&workload, bad).unwrap_err().to_string();
        assert!(err.contains("Gt"), "{err}");
    }

    #[test]
    fn choose_filters_sidecar_and_terminated() {
        let target = Target::parse("deploy/web").unwrap();
        let mk = |name: &'static str, sidecar: bool, phase: &'static str| {
            P {
                name,
                sidecar,
                phase,
                ..BASE
            }
            .pod()
        };

        let err = choose(&ObjectRef::new(&target, "dev"), "app=web", &[]).unwrap_err();
        assert!(err.is_retryable());
        assert_eq!(
            err.to_string(),
            "deployment/web in namespace \"dev\" has no pods (selector app=web)"
        );

        let err = choose(
            &ObjectRef::new(&target, "dev"),
            "app=web",
            &[mk("w1", false, "Running"), mk("w2", false, "Running")],
        )
        .unwrap_err();
        assert!(!err.is_retryable());
        assert!(
            err.to_string()
                .contains("none of the 2 pods of deployment/web"),
            "{err}"
        );

        let chosen = choose(
            &ObjectRef::new(&target, "dev"),
            "app=web",
            &[mk("w1", false, "Running"), mk("w2", true, "Pending")],
        )
        .unwrap();
        assert_eq!(chosen.metadata.name.as_deref(), Some("w2"));

        let chosen = choose(
            &ObjectRef::new(&target, "dev"),
            "app=web",
            &[mk("w1", true, "Failed"), mk("w2", true, "Pending")],
        )
        .unwrap();
        assert_eq!(chosen.metadata.name.as_deref(), Some("w2"));

        let err = choose(
            &ObjectRef::new(&target, "dev"),
            "app=web",
            &[mk("w1", true, "Failed")],
        )
        .unwrap_err();
        assert!(err.is_retryable(), "a deployment replaces failed pods");
        assert!(err.to_string().contains("w1 (Failed)"), "{err}");
        let job = Target::parse("job/once").unwrap();
        let err = choose(
            &ObjectRef::new(&job, "dev"),
            "controller-uid=1",
            &[mk("j1", true, "Succeeded")],
        )
        .unwrap_err();
        assert!(!err.is_retryable(), "a finished job stays finished");
    }
}
