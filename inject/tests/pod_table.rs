//! Table tests of the injection planner: every awkward pod shape and every
//! annotation value, checked on the patched object (not just the patch).

use pretty_assertions::assert_eq;
use rpf_inject::{
    inject_pod, pod_patch, template_patch, Decision, InjectConfig, InjectError, Selection,
    SkipReason,
};
use rpf_proto::{SIDECAR_CONTAINER, SOFTWARE_VERSION};
use serde_json::{json, Value};

const IMAGE: &str = "registry.example/rpf-sidecar:test";

fn classic() -> InjectConfig {
    InjectConfig::new(IMAGE)
}

fn native() -> InjectConfig {
    InjectConfig::new(IMAGE).with_native_sidecar(true)
}

/// A minimal pod with the given annotations (None: no annotations map).
fn pod(annotations: Option<Value>) -> Value {
    let mut p = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "web", "namespace": "default", "labels": { "app": "web" } },
        "spec": { "containers": [ { "name": "app", "image": "busybox" } ] }
    });
    if let Some(a) = annotations {
        p["metadata"]["annotations"] = a;
    }
    p
}

fn enabled() -> Value {
    pod(Some(json!({ "rpf.dev/enabled": "true" })))
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|a| a.iter().map(|c| c["name"].as_str().unwrap()).collect())
        .unwrap_or_default()
}

fn sidecar(p: &Value) -> &Value {
    p["spec"]["containers"]
        .as_array()
        .into_iter()
        .chain(p["spec"]["initContainers"].as_array())
        .flatten()
        .find(|c| c["name"] == SIDECAR_CONTAINER)
        .expect("sidecar container")
}

fn count_sidecars(p: &Value) -> usize {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|k| p["spec"][k].as_array().into_iter().flatten())
        .filter(|c| c["name"] == SIDECAR_CONTAINER)
        .count()
}

/// Injects and re-plans the result: the second pass must be a no-op.
fn inject_twice(p: &Value, cfg: &InjectConfig) -> Value {
    let (out, first) = inject_pod(p, cfg, Selection::Annotated).unwrap();
    assert_eq!(first.decision, Decision::Inject, "first pass: {first:?}");
    let second = pod_patch(&out, cfg, Selection::Annotated).unwrap();
    assert_eq!(second.decision, Decision::Skip(SkipReason::AlreadyInjected));
    assert!(second.patch.0.is_empty());
    assert_eq!(count_sidecars(&out), 1);
    out
}

#[test]
fn opt_in_decisions() {
    struct Case {
        name: &'static str,
        pod: Value,
        selection: Selection,
        decision: Decision,
        warning: Option<&'static str>,
    }
    let inject = Decision::Inject;
    let skip = Decision::Skip;
    let cases = [
        Case {
            name: "no annotations map",
            pod: pod(None),
            selection: Selection::Annotated,
            decision: skip(SkipReason::NotAnnotated),
            warning: None,
        },
        Case {
            name: "annotations: null",
            pod: pod(Some(Value::Null)),
            selection: Selection::Annotated,
            decision: skip(SkipReason::NotAnnotated),
            warning: None,
        },
        Case {
            name: "other annotations only",
            pod: pod(Some(json!({ "team": "a" }))),
            selection: Selection::Annotated,
            decision: skip(SkipReason::NotAnnotated),
            warning: None,
        },
        Case {
            name: "true",
            pod: enabled(),
            selection: Selection::Annotated,
            decision: inject,
            warning: None,
        },
        Case {
            name: "false",
            pod: pod(Some(json!({ "rpf.dev/enabled": "false" }))),
            selection: Selection::Annotated,
            decision: skip(SkipReason::Disabled),
            warning: None,
        },
        Case {
            name: "garbage",
            pod: pod(Some(json!({ "rpf.dev/enabled": "yes" }))),
            selection: Selection::Annotated,
            decision: skip(SkipReason::InvalidAnnotation),
            warning: Some("rpf.dev/enabled: \"yes\" is neither \"true\" nor \"false\""),
        },
        Case {
            name: "case matters",
            pod: pod(Some(json!({ "rpf.dev/enabled": "True" }))),
            selection: Selection::Annotated,
            decision: skip(SkipReason::InvalidAnnotation),
            warning: Some("\"True\""),
        },
        Case {
            name: "empty string",
            pod: pod(Some(json!({ "rpf.dev/enabled": "" }))),
            selection: Selection::Annotated,
            decision: skip(SkipReason::InvalidAnnotation),
            warning: Some("\"\" is neither"),
        },
        Case {
            name: "--all, not annotated",
            pod: pod(None),
            selection: Selection::All,
            decision: inject,
            warning: None,
        },
        Case {
            name: "--all, garbage",
            pod: pod(Some(json!({ "rpf.dev/enabled": "maybe" }))),
            selection: Selection::All,
            decision: inject,
            warning: Some("injecting anyway (--all)"),
        },
        Case {
            name: "--all respects an explicit opt-out",
            pod: pod(Some(json!({ "rpf.dev/enabled": "false" }))),
            selection: Selection::All,
            decision: skip(SkipReason::Disabled),
            warning: Some("even with --all"),
        },
        Case {
            name: "already marked",
            pod: pod(Some(
                json!({ "rpf.dev/enabled": "true", "rpf.dev/injected": "0.0.1" }),
            )),
            selection: Selection::Annotated,
            decision: skip(SkipReason::AlreadyInjected),
            warning: None,
        },
        Case {
            name: "sidecar container present without the mark",
            pod: {
                let mut p = enabled();
                p["spec"]["containers"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({ "name": "rpf-sidecar", "image": "x" }));
                p
            },
            selection: Selection::Annotated,
            decision: skip(SkipReason::AlreadyInjected),
            warning: None,
        },
        Case {
            name: "native sidecar present without the mark",
            pod: {
                let mut p = enabled();
                p["spec"]["initContainers"] =
                    json!([{ "name": "rpf-sidecar", "image": "x", "restartPolicy": "Always" }]);
                p
            },
            selection: Selection::All,
            decision: skip(SkipReason::AlreadyInjected),
            warning: None,
        },
        Case {
            name: "hostNetwork",
            pod: {
                let mut p = enabled();
                p["spec"]["hostNetwork"] = json!(true);
                p
            },
            selection: Selection::Annotated,
            decision: skip(SkipReason::HostNetwork),
            warning: Some("hostNetwork"),
        },
    ];
    for case in cases {
        let got = pod_patch(&case.pod, &classic(), case.selection).unwrap();
        assert_eq!(got.decision, case.decision, "case {:?}", case.name);
        assert_eq!(
            got.patch.0.is_empty(),
            case.decision != Decision::Inject,
            "case {:?}: patch {:?}",
            case.name,
            got.patch
        );
        match case.warning {
            None => assert!(
                got.warnings.is_empty(),
                "case {:?}: {:?}",
                case.name,
                got.warnings
            ),
            Some(w) => assert!(
                got.warnings.len() == 1 && got.warnings[0].message().contains(w),
                "case {:?}: wanted a warning containing {w:?}, got {:?}",
                case.name,
                got.warnings
            ),
        }
    }
}

#[test]
fn classic_sidecar_is_appended_and_pod_is_marked() {
    let p = enabled();
    let got = pod_patch(&p, &classic(), Selection::Annotated).unwrap();
    // The annotation key's "/" must be escaped in the JSON pointer.
    let paths: Vec<String> = got
        .patch
        .0
        .iter()
        .map(|op| {
            serde_json::to_value(op).unwrap()["path"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        paths,
        [
            "/spec/containers/-",
            "/metadata/annotations/rpf.dev~1injected"
        ]
    );

    let out = inject_twice(&p, &classic());
    assert_eq!(
        names(&out["spec"]["containers"]),
        ["app", SIDECAR_CONTAINER]
    );
    assert!(out["spec"].get("initContainers").is_none());
    assert_eq!(
        out["metadata"]["annotations"],
        json!({ "rpf.dev/enabled": "true", "rpf.dev/injected": SOFTWARE_VERSION })
    );
    // Nothing else changed.
    let mut back = out.clone();
    back["spec"]["containers"].as_array_mut().unwrap().pop();
    back["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("rpf.dev/injected");
    assert_eq!(back, p);
}

#[test]
fn sidecar_container_contents() {
    let cfg = classic().with_image_pull_policy("Never");
    let (out, _) = inject_pod(&enabled(), &cfg, Selection::Annotated).unwrap();
    assert_eq!(
        *sidecar(&out),
        json!({
            "name": "rpf-sidecar",
            "image": IMAGE,
            "command": ["/rpf-sidecar"],
            "args": ["serve", "--control-addr", "127.0.0.1:4499"],
            "env": [
                { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                { "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } }
            ],
            "resources": {
                "requests": { "cpu": "10m", "memory": "16Mi" },
                "limits": { "memory": "256Mi" }
            },
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65532,
                "runAsGroup": 65532,
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": { "drop": ["ALL"] },
                "seccompProfile": { "type": "RuntimeDefault" }
            },
            "imagePullPolicy": "Never"
        })
    );
    // Without a configured pull policy, the Kubernetes default applies.
    let (out, _) = inject_pod(&enabled(), &classic(), Selection::Annotated).unwrap();
    assert!(sidecar(&out).get("imagePullPolicy").is_none());
    assert!(sidecar(&out).get("restartPolicy").is_none());
}

#[test]
fn native_sidecar_goes_first_in_init_containers() {
    // No initContainers yet: the list is created.
    let out = inject_twice(&enabled(), &native());
    assert_eq!(names(&out["spec"]["initContainers"]), [SIDECAR_CONTAINER]);
    assert_eq!(names(&out["spec"]["containers"]), ["app"]);
    assert_eq!(sidecar(&out)["restartPolicy"], "Always");

    // Existing init containers: the sidecar is inserted before them.
    let mut p = enabled();
    p["spec"]["initContainers"] =
        json!([{ "name": "migrate", "image": "m" }, { "name": "seed", "image": "s" }]);
    let out = inject_twice(&p, &native());
    assert_eq!(
        names(&out["spec"]["initContainers"]),
        [SIDECAR_CONTAINER, "migrate", "seed"]
    );

    // Empty list.
    let mut p = enabled();
    p["spec"]["initContainers"] = json!([]);
    let out = inject_twice(&p, &native());
    assert_eq!(names(&out["spec"]["initContainers"]), [SIDECAR_CONTAINER]);
}

#[test]
fn native_sidecar_annotation_overrides_the_cluster_default() {
    // (cluster default, annotation value, expect native, expect warning)
    let table = [
        (false, None, false, false),
        (true, None, true, false),
        (false, Some("true"), true, false),
        (true, Some("false"), false, false),
        (true, Some("sometimes"), true, true),
        (false, Some("sometimes"), false, true),
    ];
    for (default, annotation, want_native, want_warning) in table {
        let mut p = enabled();
        if let Some(v) = annotation {
            p["metadata"]["annotations"]["rpf.dev/native-sidecar"] = json!(v);
        }
        let cfg = classic().with_native_sidecar(default);
        let (out, inj) = inject_pod(&p, &cfg, Selection::Annotated).unwrap();
        let case = format!("default {default}, annotation {annotation:?}");
        assert_eq!(
            sidecar(&out).get("restartPolicy").is_some(),
            want_native,
            "{case}"
        );
        let in_init = names(&out["spec"]["initContainers"]).contains(&SIDECAR_CONTAINER);
        assert_eq!(in_init, want_native, "{case}");
        assert_eq!(
            !inj.warnings.is_empty(),
            want_warning,
            "{case}: {:?}",
            inj.warnings
        );
        assert_eq!(count_sidecars(&out), 1, "{case}");
    }
}

#[test]
fn control_port_annotation() {
    // (annotation, expected port, expect warning)
    let table = [
        (None, 4499, false),
        (Some(json!("5000")), 5000, false),
        (Some(json!(" 6000 ")), 6000, false),
        (Some(json!("65535")), 65535, false),
        (Some(json!("0")), 4499, true),
        (Some(json!("65536")), 4499, true),
        (Some(json!("-1")), 4499, true),
        (Some(json!("http")), 4499, true),
        (Some(json!(5000)), 4499, true),
    ];
    for (annotation, port, want_warning) in table {
        let mut p = enabled();
        if let Some(v) = &annotation {
            p["metadata"]["annotations"]["rpf.dev/control-port"] = v.clone();
        }
        let (out, inj) = inject_pod(&p, &classic(), Selection::Annotated).unwrap();
        assert_eq!(
            sidecar(&out)["args"],
            json!(["serve", "--control-addr", format!("127.0.0.1:{port}")]),
            "{annotation:?}"
        );
        assert_eq!(!inj.warnings.is_empty(), want_warning, "{annotation:?}");
        if want_warning {
            assert!(inj.warnings[0].message().contains("rpf.dev/control-port"));
        }
    }
}

const SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";

#[test]
fn lowest_port_sysctl() {
    // (existing pod securityContext, lowest-port annotation, expected
    //  securityContext after injection, expect warning)
    let table: Vec<(Option<Value>, &str, Option<Value>, bool)> = vec![
        // No securityContext at all.
        (
            None,
            "80",
            Some(json!({ "sysctls": [{ "name": SYSCTL, "value": "80" }] })),
            false,
        ),
        // Empty securityContext (what the API server sends).
        (
            Some(json!({})),
            "443",
            Some(json!({ "sysctls": [{ "name": SYSCTL, "value": "443" }] })),
            false,
        ),
        // Other fields and other sysctls are kept, ours is appended.
        (
            Some(
                json!({ "runAsUser": 1000, "sysctls": [{ "name": "net.ipv4.tcp_syncookies", "value": "1" }] }),
            ),
            "22",
            Some(json!({ "runAsUser": 1000, "sysctls": [
                { "name": "net.ipv4.tcp_syncookies", "value": "1" },
                { "name": SYSCTL, "value": "22" }
            ] })),
            false,
        ),
        // The pod already allows lower ports: kept as is, no duplicate.
        (
            Some(json!({ "sysctls": [{ "name": SYSCTL, "value": "0" }] })),
            "80",
            Some(json!({ "sysctls": [{ "name": SYSCTL, "value": "0" }] })),
            false,
        ),
        // The pod's own value is stricter: never clobbered, but warned about.
        (
            Some(json!({ "sysctls": [{ "name": SYSCTL, "value": "1024" }] })),
            "80",
            Some(json!({ "sysctls": [{ "name": SYSCTL, "value": "1024" }] })),
            true,
        ),
        // 1024 and above need nothing.
        (None, "1024", None, false),
        (Some(json!({})), "8080", Some(json!({})), false),
        // Invalid: warning, nothing added.
        (None, "low", None, true),
        (None, "0", None, true),
    ];
    for (existing, annotation, want, want_warning) in table {
        let mut p = enabled();
        p["metadata"]["annotations"]["rpf.dev/lowest-port"] = json!(annotation);
        if let Some(sc) = &existing {
            p["spec"]["securityContext"] = sc.clone();
        }
        let (out, inj) = inject_pod(&p, &classic(), Selection::Annotated).unwrap();
        let case = format!("existing {existing:?}, lowest-port {annotation}");
        assert_eq!(out["spec"].get("securityContext"), want.as_ref(), "{case}");
        assert_eq!(
            !inj.warnings.is_empty(),
            want_warning,
            "{case}: {:?}",
            inj.warnings
        );
        // The sidecar itself never gets a capability for it.
        assert_eq!(
            sidecar(&out)["securityContext"]["capabilities"],
            json!({ "drop": ["ALL"] })
        );
    }
}

#[test]
fn generate_name_pod() {
    // Pods created by controllers have no name yet, only generateName.
    let p = json!({
        "metadata": {
            "generateName": "web-7f9c-",
            "annotations": { "rpf.dev/enabled": "true" }
        },
        "spec": { "containers": [{ "name": "app", "image": "busybox" }] }
    });
    let out = inject_twice(&p, &classic());
    assert_eq!(out["metadata"]["generateName"], "web-7f9c-");
    assert!(out["metadata"].get("name").is_none());
    // The sidecar learns its pod's final name from the downward API.
    assert_eq!(
        sidecar(&out)["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
}

#[test]
fn missing_lists_and_maps_are_created() {
    // No metadata at all (--all on a bare template).
    let p = json!({ "spec": { "containers": [{ "name": "app", "image": "a" }] } });
    let (out, _) = inject_pod(&p, &classic(), Selection::All).unwrap();
    assert_eq!(
        out["metadata"],
        json!({ "annotations": { "rpf.dev/injected": SOFTWARE_VERSION } })
    );

    // metadata without annotations.
    let p = json!({ "metadata": { "name": "x" }, "spec": { "containers": [] } });
    let (out, _) = inject_pod(&p, &classic(), Selection::All).unwrap();
    assert_eq!(
        out["metadata"]["annotations"],
        json!({ "rpf.dev/injected": SOFTWARE_VERSION })
    );
    assert_eq!(names(&out["spec"]["containers"]), [SIDECAR_CONTAINER]);

    // No containers list (not a valid pod, but not our place to judge).
    let p = json!({ "metadata": { "annotations": { "rpf.dev/enabled": "true" } }, "spec": {} });
    let out = inject_twice(&p, &classic());
    assert_eq!(names(&out["spec"]["containers"]), [SIDECAR_CONTAINER]);
}

#[test]
fn pod_template_of_a_workload() {
    let deploy = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web", "annotations": { "rpf.dev/enabled": "true" } },
        "spec": {
            "replicas": 2,
            "template": {
                "metadata": { "labels": { "app": "web" }, "annotations": { "rpf.dev/enabled": "true" } },
                "spec": { "containers": [{ "name": "app", "image": "a" }] }
            }
        }
    });
    let inj = template_patch(
        &deploy,
        &["spec", "template"],
        &native(),
        Selection::Annotated,
    )
    .unwrap();
    assert!(inj.injected());
    let mut out = deploy.clone();
    json_patch::patch(&mut out, &inj.patch).unwrap();
    let t = &out["spec"]["template"];
    assert_eq!(names(&t["spec"]["initContainers"]), [SIDECAR_CONTAINER]);
    assert_eq!(
        t["metadata"]["annotations"]["rpf.dev/injected"],
        SOFTWARE_VERSION
    );
    // The Deployment's own metadata is not the template's.
    assert!(out["metadata"]["annotations"]
        .get("rpf.dev/injected")
        .is_none());
}

#[test]
fn malformed_objects_are_errors_not_panics() {
    let cases = [
        (json!("a string"), "/"),
        (json!({ "metadata": {} }), "/spec"),
        (json!({ "metadata": [], "spec": {} }), "/metadata"),
        (
            json!({ "metadata": { "annotations": "x" }, "spec": {} }),
            "/metadata/annotations",
        ),
        (
            json!({ "metadata": { "annotations": { "rpf.dev/enabled": "true" } }, "spec": { "containers": {} } }),
            "/spec/containers",
        ),
    ];
    for (p, pointer) in cases {
        match pod_patch(&p, &classic(), Selection::All) {
            Err(InjectError::Malformed { pointer: got, .. }) => assert_eq!(got, pointer, "{p}"),
            other => panic!("{p}: expected a Malformed error at {pointer}, got {other:?}"),
        }
    }
    // A securityContext of the wrong type is only looked at when needed.
    let mut p = enabled();
    p["metadata"]["annotations"]["rpf.dev/lowest-port"] = json!("80");
    p["spec"]["securityContext"] = json!(7);
    assert!(matches!(
        pod_patch(&p, &classic(), Selection::Annotated),
        Err(InjectError::Malformed { .. })
    ));
}

#[test]
fn annotation_keys_are_escaped_in_pointers() {
    // A pod whose annotations already contain keys with "/" and "~":
    // patching must add ours without touching them.
    let p = pod(Some(json!({ "rpf.dev/enabled": "true", "a~b/c": "1" })));
    let (out, _) = inject_pod(&p, &classic(), Selection::Annotated).unwrap();
    assert_eq!(
        out["metadata"]["annotations"],
        json!({ "rpf.dev/enabled": "true", "a~b/c": "1", "rpf.dev/injected": SOFTWARE_VERSION })
    );
}
