//! Checks made before a channel is opened, so that the user hears "the
//! sidecar is not ready (waiting: CrashLoopBackOff)" or "you may not create
//! pods/portforward" instead of a bare `failed to switch protocol: 403`.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use rpf_proto::{annotations, DEFAULT_CONTROL_PORT, SIDECAR_CONTAINER};

use crate::cluster::error::ClusterError;
use crate::cluster::target::ObjectRef;

fn pod_ref(pod: &Pod) -> ObjectRef {
    ObjectRef::pod(
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Whether the pod carries the sidecar: a container named `rpf-sidecar`,
/// or a native sidecar (an init container of that name with
/// `restartPolicy: Always`).
pub fn has_sidecar(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.containers.iter().any(|c| c.name == SIDECAR_CONTAINER)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == SIDECAR_CONTAINER && c.restart_policy.as_deref() == Some("Always"))
}

fn sidecar_status(pod: &Pod) -> Option<&ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .find(|c| c.name == SIDECAR_CONTAINER)
}

/// The image of the pod's `rpf-sidecar` container (empty when it has none).
pub fn sidecar_image(pod: &Pod) -> String {
    pod.spec
        .iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .find(|c| c.name == SIDECAR_CONTAINER)
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Reasons a container waits that waiting will not fix: the kubelet has
/// failed to pull at least once and backs off, or cannot pull at all.
const PULL_FAILURES: [&str; 3] = ["ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"];

/// When the sidecar cannot get its image: the image and the kubelet's
/// reason and message, e.g. `lab.local/nope:1 (ImagePullBackOff: Back-off
/// pulling image ...)`, so a caller can give up at once instead of waiting
/// out its timeout.
pub fn image_pull_failure(pod: &Pod) -> Option<String> {
    let status = sidecar_status(pod)?;
    let waiting = status.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    if !PULL_FAILURES.contains(&reason) {
        return None;
    }
    let image = match sidecar_image(pod) {
        spec if spec.is_empty() => status.image.clone(),
        spec => spec,
    };
    Some(match waiting.message.as_deref() {
        Some(m) if !m.is_empty() => format!("{image} ({reason}: {m})"),
        _ => format!("{image} ({reason})"),
    })
}

/// The state of a container in the words `kubectl get pod` would use.
fn describe_state(status: Option<&ContainerStatus>) -> String {
    let Some(status) = status else {
        return "no status reported yet".to_owned();
    };
    let Some(state) = status.state.as_ref() else {
        return "no state reported yet".to_owned();
    };
    if let Some(w) = &state.waiting {
        let reason = w.reason.as_deref().unwrap_or("waiting");
        match w.message.as_deref() {
            Some(m) if !m.is_empty() => format!("waiting: {reason}: {m}"),
            _ => format!("waiting: {reason}"),
        }
    } else if let Some(t) = &state.terminated {
        format!(
            "terminated: {} (exit code {})",
            t.reason.as_deref().unwrap_or("terminated"),
            t.exit_code
        )
    } else if state.running.is_some() {
        if status.restart_count > 0 {
            format!("running but not ready, {} restarts", status.restart_count)
        } else {
            "running but not ready".to_owned()
        }
    } else {
        "unknown state".to_owned()
    }
}

/// Checks that the pod can take a channel now: running, not being deleted,
/// sidecar container ready.
pub fn check_pod(pod: &Pod) -> Result<(), ClusterError> {
    check_running(pod)?;
    let sidecar = sidecar_status(pod);
    if !sidecar.is_some_and(|s| s.ready) {
        return Err(ClusterError::SidecarNotReady {
            pod: pod_ref(pod),
            state: describe_state(sidecar),
        });
    }
    Ok(())
}

/// As [`check_pod`], but the sidecar container need only be running, not
/// ready: an `rpf expose` relay becomes ready once a session is bound.
pub fn check_pod_started(pod: &Pod) -> Result<(), ClusterError> {
    check_running(pod)?;
    let sidecar = sidecar_status(pod);
    let running = sidecar
        .and_then(|s| s.state.as_ref())
        .is_some_and(|s| s.running.is_some());
    if !running {
        return Err(ClusterError::SidecarNotReady {
            pod: pod_ref(pod),
            state: describe_state(sidecar),
        });
    }
    Ok(())
}

/// Running, with the sidecar, and not being deleted.
fn check_running(pod: &Pod) -> Result<(), ClusterError> {
    let pod_ref = pod_ref(pod);
    if !has_sidecar(pod) {
        return Err(ClusterError::NoSidecar {
            pods: vec![pod_ref.name.clone()],
            target: pod_ref,
        });
    }
    if pod.metadata.deletion_timestamp.is_some() {
        return Err(ClusterError::Terminating { pod: pod_ref });
    }
    let status = pod.status.as_ref();
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".to_owned());
    if phase != "Running" {
        let reason = status.and_then(|s| s.reason.clone().or_else(|| s.message.clone()));
        let detail = match (phase.as_str(), reason) {
            (_, Some(r)) => format!(": {r}"),
            ("Pending", None) => format!(", rpf-sidecar {}", describe_state(sidecar_status(pod))),
            _ => String::new(),
        };
        return Err(ClusterError::NotRunning {
            pod: pod_ref,
            retryable: matches!(phase.as_str(), "Pending" | "Unknown"),
            phase,
            detail,
        });
    }
    Ok(())
}

/// The sidecar's control port: the pod annotation, or the default.
pub fn control_port(pod: &Pod) -> Result<u16, ClusterError> {
    let value = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(annotations::CONTROL_PORT));
    match value {
        None => Ok(DEFAULT_CONTROL_PORT),
        Some(v) => match v.trim().parse::<u16>() {
            Ok(port) if port != 0 => Ok(port),
            _ => Err(ClusterError::BadControlPort {
                pod: pod_ref(pod),
                annotation: annotations::CONTROL_PORT,
                value: v.clone(),
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Container, ContainerState, ContainerStateRunning, ContainerStateWaiting, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;

    fn pod(phase: &str, sidecar_ready: bool, waiting: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("dev".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![
                    Container {
                        name: "app".into(),
                        ..Default::default()
                    },
                    Container {
                        name: SIDECAR_CONTAINER.into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                container_statuses: Some(vec![ContainerStatus {
                    name: SIDECAR_CONTAINER.into(),
                    ready: sidecar_ready,
                    state: Some(ContainerState {
                        waiting: waiting.map(|r| ContainerStateWaiting {
                            reason: Some(r.into()),
                            message: None,
                        }),
                        running: waiting.is_none().then(ContainerStateRunning::default),
                        terminated: None,
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn sidecar_presence_classic_and_native() {
        let mut p = pod("Running", true, None);
        assert!(has_sidecar(&p));
        let spec = p.spec.as_mut().unwrap();
        let mut sidecar = spec.containers.pop().unwrap();
        assert!(!has_sidecar(&p));
        // An ordinary init container of that name is not a sidecar.
        p.spec.as_mut().unwrap().init_containers = Some(vec![sidecar.clone()]);
        assert!(!has_sidecar(&p));
        sidecar.restart_policy = Some("Always".into());
        p.spec.as_mut().unwrap().init_containers = Some(vec![sidecar]);
        assert!(has_sidecar(&p));
        assert!(!has_sidecar(&Pod::default()));
    }

    #[test]
    fn a_pull_failure_names_the_image_and_the_reason() {
        let mut p = pod("Pending", false, Some("ImagePullBackOff"));
        p.spec.as_mut().unwrap().containers[1].image = Some("lab.local/nope:1".into());
        assert_eq!(
            image_pull_failure(&p).as_deref(),
            Some("lab.local/nope:1 (ImagePullBackOff)")
        );
        // The first failed pull is retried by the kubelet: not yet final.
        assert_eq!(
            image_pull_failure(&pod("Pending", false, Some("ErrImagePull"))),
            None
        );
        assert_eq!(
            image_pull_failure(&pod("Pending", false, Some("ContainerCreating"))),
            None
        );
        assert_eq!(image_pull_failure(&pod("Running", true, None)), None);
    }

    #[test]
    fn pod_checks_say_phase_and_state() {
        assert!(check_pod(&pod("Running", true, None)).is_ok());

        let e = check_pod(&pod("Running", false, Some("CrashLoopBackOff"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the rpf-sidecar container of pod dev/web-1 is not ready (waiting: CrashLoopBackOff)"
        );
        assert!(e.is_retryable());

        let e = check_pod(&pod("Running", false, None)).unwrap_err();
        assert!(e.to_string().ends_with("(running but not ready)"), "{e}");

        let e = check_pod(&pod("Pending", false, Some("ContainerCreating"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod dev/web-1 is not running (phase Pending, rpf-sidecar waiting: ContainerCreating)"
        );
        assert!(e.is_retryable());

        let mut failed = pod("Failed", false, None);
        failed.status.as_mut().unwrap().reason = Some("Evicted".into());
        let e = check_pod(&failed).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod dev/web-1 is not running (phase Failed: Evicted)"
        );
        assert!(!e.is_retryable());

        let e = check_pod(&pod("Succeeded", false, None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "pod dev/web-1 is not running (phase Succeeded)"
        );

        let mut deleting = pod("Running", true, None);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let e = check_pod(&deleting).unwrap_err();
        assert_eq!(e.to_string(), "pod dev/web-1 is terminating");
        assert!(e.is_retryable());

        let mut bare = pod("Running", true, None);
        bare.spec.as_mut().unwrap().containers.pop();
        let e = check_pod(&bare).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("pod dev/web-1 has no rpf-sidecar container"),
            "{e}"
        );
        assert!(!e.is_retryable());
    }

    #[test]
    fn control_port_from_annotation() {
        let mut p = pod("Running", true, None);
        assert_eq!(control_port(&p).unwrap(), DEFAULT_CONTROL_PORT);
        p.metadata.annotations = Some(BTreeMap::from([(
            annotations::CONTROL_PORT.to_owned(),
            "5000".to_owned(),
        )]));
        assert_eq!(control_port(&p).unwrap(), 5000);
        for bad in ["0", "x", "70000", ""] {
            p.metadata.annotations = Some(BTreeMap::from([(
                annotations::CONTROL_PORT.to_owned(),
                bad.to_owned(),
            )]));
            let e = control_port(&p).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "pod dev/web-1: annotation rpf.dev/control-port is {bad:?}, not a port number"
                )
            );
        }
    }
}
