//! Golden tests on AdmissionReview bodies captured from a real
//! kube-apiserver (v1.20): `fixtures/captured-admissionreview.json` is a pod
//! created by kubectl, `fixtures/captured-admissionreview-replicaset.json` a
//! pod created by the ReplicaSet controller (no name, only `generateName`,
//! and a ServiceAccount token volume already mounted).
//!
//! The captures were made before rpf existed, so their pods carry no
//! `rpf.dev/enabled`; each test checks the body as captured (no injection)
//! and with the opt-in annotation added. The expected patches live in
//! `fixtures/golden/`; regenerate them with `RPF_UPDATE_GOLDEN=1 cargo test`
//! after an intended change, and review the diff.

use std::path::PathBuf;

use pretty_assertions::assert_eq;
use rpf_inject::{pod_patch, Decision, InjectConfig, Selection, SkipReason};
use rpf_proto::SOFTWARE_VERSION;
use serde_json::{json, Value};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn review_object(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    let review: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    review["request"]["object"].clone()
}

/// The version mark changes with every release; goldens hold a placeholder.
fn normalise(patch: &json_patch::Patch) -> Value {
    let mut v = serde_json::to_value(patch).unwrap();
    for op in v.as_array_mut().unwrap() {
        if op["path"] == "/metadata/annotations/rpf.dev~1injected" {
            assert_eq!(op["value"], SOFTWARE_VERSION);
            op["value"] = json!("<version>");
        }
    }
    v
}

fn check_golden(golden: &str, got: Value) {
    let path = fixture("golden").join(golden);
    if std::env::var_os("RPF_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (RPF_UPDATE_GOLDEN=1 creates it)", path.display())
        }))
        .unwrap();
    assert_eq!(got, want, "golden {golden}");
}

fn cfg(native: bool) -> InjectConfig {
    InjectConfig::new("lab.local/rpf-sidecar:dev")
        .with_image_pull_policy("Never")
        .with_native_sidecar(native)
}

fn opted_in(mut object: Value, extra: &[(&str, &str)]) -> Value {
    let annotations = object["metadata"]
        .as_object_mut()
        .unwrap()
        .entry("annotations")
        .or_insert_with(|| json!({}));
    annotations["rpf.dev/enabled"] = json!("true");
    for (k, v) in extra {
        annotations[*k] = json!(v);
    }
    object
}

#[test]
fn captured_bodies_without_opt_in_are_untouched() {
    for name in [
        "captured-admissionreview.json",
        "captured-admissionreview-replicaset.json",
    ] {
        let got = pod_patch(&review_object(name), &cfg(false), Selection::Annotated).unwrap();
        assert_eq!(
            got.decision,
            Decision::Skip(SkipReason::NotAnnotated),
            "{name}"
        );
        assert!(got.patch.0.is_empty());
        assert!(got.warnings.is_empty());
    }
}

#[test]
fn kubectl_pod_classic() {
    let pod = opted_in(review_object("captured-admissionreview.json"), &[]);
    let got = pod_patch(&pod, &cfg(false), Selection::Annotated).unwrap();
    assert!(got.injected());
    check_golden("kubectl-pod-classic.patch.json", normalise(&got.patch));
}

#[test]
fn kubectl_pod_native_with_low_port_and_control_port() {
    let pod = opted_in(
        review_object("captured-admissionreview.json"),
        &[
            ("rpf.dev/lowest-port", "80"),
            ("rpf.dev/control-port", "4500"),
        ],
    );
    let got = pod_patch(&pod, &cfg(true), Selection::Annotated).unwrap();
    assert!(got.injected());
    assert!(got.warnings.is_empty(), "{:?}", got.warnings);
    check_golden(
        "kubectl-pod-native-lowport.patch.json",
        normalise(&got.patch),
    );
}

#[test]
fn replicaset_pod_generate_name() {
    // The ReplicaSet's pod has annotations (a foreign one): ours is added
    // next to it, and the unnamed pod is handled like any other.
    let object = review_object("captured-admissionreview-replicaset.json");
    assert!(object["metadata"].get("name").is_none());
    let pod = opted_in(object, &[]);
    let got = pod_patch(&pod, &cfg(false), Selection::Annotated).unwrap();
    assert!(got.injected());
    check_golden("replicaset-pod-classic.patch.json", normalise(&got.patch));

    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &got.patch).unwrap();
    let again = pod_patch(&patched, &cfg(false), Selection::Annotated).unwrap();
    assert_eq!(again.decision, Decision::Skip(SkipReason::AlreadyInjected));
}
