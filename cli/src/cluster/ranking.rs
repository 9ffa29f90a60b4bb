//! kubectl's choice among several pods (`GetFirstPod` sorted by the reverse
//! of `podutils.ActivePods`): assigned before unassigned, Running before
//! Unknown before Pending, ready before not ready, ready for longer, fewer
//! restarts, older. rpf adds one rule in front: a pod that is being
//! deleted comes after every pod that is not (otherwise a reconnect after
//! `kubectl delete pod` would pick the dying pod again, because it has been
//! ready the longest). Pure functions, table-tested.

use std::cmp::Ordering;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// `Some(time of the Ready=True transition)` when the pod is ready.
fn ready_since(pod: &Pod) -> Option<Option<&Time>> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| c.last_transition_time.as_ref())
}

/// The pod's phase (`Running`, `Pending`, ...), empty when unknown.
pub(super) fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn phase_rank(pod: &Pod) -> u8 {
    match phase(pod) {
        "Running" => 2,
        "Unknown" => 1,
        _ => 0,
    }
}

fn max_restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

/// kubectl's `afterOrZero(t1, t2)`: t1 after t2, a missing time counting
/// as after any present one.
fn after_or_zero(t1: Option<&Time>, t2: Option<&Time>) -> bool {
    match (t1, t2) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a.0 > b.0,
    }
}

/// kubectl's `ActivePods.Less`, as an ordering: `Less` means `a` is the
/// *less* useful pod (the one a controller would delete first).
fn compare_active(a: &Pod, b: &Pod) -> Ordering {
    let less = |i: &Pod, j: &Pod| -> bool {
        let node = |p: &Pod| {
            p.spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default()
        };
        let (ni, nj) = (node(i), node(j));
        if ni != nj && (ni.is_empty() || nj.is_empty()) {
            return ni.is_empty();
        }
        if phase_rank(i) != phase_rank(j) {
            return phase_rank(i) < phase_rank(j);
        }
        if is_ready(i) != is_ready(j) {
            return !is_ready(i);
        }
        if let (Some(ti), Some(tj)) = (ready_since(i), ready_since(j)) {
            if ti.map(|t| t.0) != tj.map(|t| t.0) {
                return after_or_zero(ti, tj);
            }
        }
        if max_restarts(i) != max_restarts(j) {
            return max_restarts(i) > max_restarts(j);
        }
        let (ci, cj) = (
            i.metadata.creation_timestamp.as_ref(),
            j.metadata.creation_timestamp.as_ref(),
        );
        if ci.map(|t| t.0) != cj.map(|t| t.0) {
            return after_or_zero(ci, cj);
        }
        false
    };
    if less(a, b) {
        Ordering::Less
    } else if less(b, a) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

/// The pod rpf would pick among `pods`: most active by [`compare_active`],
/// after preferring pods that are not being deleted. Ties keep the API's
/// order (first wins), as kubectl's stable choice of `pods[0]` does.
pub fn best_pod(pods: &[Pod]) -> Option<&Pod> {
    let mut best: Option<&Pod> = None;
    for pod in pods {
        best = match best {
            None => Some(pod),
            Some(current) => {
                let better = match (is_terminating(pod), is_terminating(current)) {
                    (false, true) => true,
                    (true, false) => false,
                    _ => compare_active(pod, current) == Ordering::Greater,
                };
                Some(if better { pod } else { current })
            }
        };
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::test_pods::{BASE, P};

    fn pick(pods: &[P]) -> &'static str {
        let pods: Vec<Pod> = pods.iter().map(P::pod).collect();
        let best = best_pod(&pods).unwrap();
        let name = best.metadata.name.clone().unwrap();
        pods.iter()
            .zip(["a", "b", "c", "d"])
            .find(|(p, _)| p.metadata.name.as_deref() == Some(name.as_str()))
            .map(|(_, n)| n)
            .unwrap()
    }

    #[test]
    fn chooses_the_most_active_pod_like_kubectl() {
        let p = |name, f: fn(&mut P)| {
            let mut p = BASE.clone();
            p.name = name;
            f(&mut p);
            p
        };
        // (pods, expected winner among a, b, ...)
        let cases: Vec<(Vec<P>, &str, &str)> = vec![
            (
                vec![p("a", |p| p.node = false), p("b", |_| {})],
                "b",
                "assigned beats unassigned",
            ),
            (
                vec![
                    p("a", |p| {
                        p.phase = "Pending";
                        p.ready_at = None
                    }),
                    p("b", |_| {}),
                ],
                "b",
                "running beats pending",
            ),
            (
                vec![
                    p("a", |p| {
                        p.phase = "Unknown";
                        p.ready_at = None
                    }),
                    p("b", |p| {
                        p.phase = "Pending";
                        p.ready_at = None
                    }),
                ],
                "a",
                "unknown beats pending",
            ),
            (
                vec![p("a", |p| p.ready_at = None), p("b", |_| {})],
                "b",
                "ready beats not ready",
            ),
            (
                vec![
                    p("a", |p| p.ready_at = Some(50)),
                    p("b", |p| p.ready_at = Some(20)),
                ],
                "b",
                "ready longer wins",
            ),
            (
                vec![p("a", |p| p.restarts = 3), p("b", |p| p.restarts = 1)],
                "b",
                "fewer restarts win",
            ),
            (
                vec![p("a", |p| p.created = 5), p("b", |p| p.created = 1)],
                "b",
                "older wins",
            ),
            (
                vec![p("a", |_| {}), p("b", |_| {})],
                "a",
                "ties keep the first",
            ),
            (
                vec![
                    p("a", |p| p.deleting = true),
                    p("b", |p| {
                        p.ready_at = None;
                        p.created = 9
                    }),
                ],
                "b",
                "terminating comes last",
            ),
            (
                vec![
                    p("a", |p| p.ready_at = None),
                    p("b", |p| p.ready_at = Some(30)),
                    p("c", |p| p.ready_at = Some(20)),
                    p("d", |p| p.node = false),
                ],
                "c",
                "mix",
            ),
        ];
        for (pods, want, why) in cases {
            assert_eq!(pick(&pods), want, "{why}");
        }
    }
}
