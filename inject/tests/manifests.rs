//! `inject_manifests`: the YAML transform behind `rpf inject`.

use pretty_assertions::assert_eq;
use rpf_inject::{inject_manifests, InjectConfig, ManifestError};
use rpf_proto::{SIDECAR_CONTAINER, SOFTWARE_VERSION};
use serde_json::{json, Value};

const INPUT: &str = include_str!("fixtures/manifests/input.yaml");

fn cfg() -> InjectConfig {
    InjectConfig::new("lab.local/rpf-sidecar:dev")
}

fn parse(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

fn container_names(template: &Value, list: &str) -> Vec<String> {
    template["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Removes what injection adds to a template, to compare the rest.
fn strip_injection(template: &mut Value) {
    for list in ["containers", "initContainers"] {
        if let Some(a) = template["spec"].get_mut(list).and_then(Value::as_array_mut) {
            a.retain(|c| c["name"] != SIDECAR_CONTAINER);
        }
    }
    if let Some(a) = template
        .pointer_mut("/metadata/annotations")
        .and_then(Value::as_object_mut)
    {
        a.remove("rpf.dev/injected");
    }
}

#[test]
fn every_kind_in_a_stream() {
    let (out, warnings) = inject_manifests(INPUT, &cfg(), false).unwrap();
    let before = parse(INPUT);
    let after = parse(&out);
    assert_eq!(after.len(), before.len(), "same number of documents");
    // Same documents, same order.
    let kinds = |docs: &[Value]| -> Vec<String> {
        docs.iter()
            .map(|d| format!("{} {}", d["kind"], d["metadata"]["name"]))
            .collect()
    };
    assert_eq!(kinds(&after), kinds(&before));

    let by_kind = |kind: &str, api: &str| {
        let i = before
            .iter()
            .position(|d| d["kind"] == kind && d["apiVersion"] == api)
            .unwrap();
        (&before[i], &after[i])
    };

    // Untouched kinds: byte-for-byte equal values.
    for (kind, api) in [
        ("Service", "v1"),
        ("ConfigMap", "v1"),
        ("Deployment", "example.com/v1"),
        ("ReplicaSet", "apps/v1"), // rpf.dev/enabled: "false"
        ("DaemonSet", "apps/v1"),  // not annotated
    ] {
        let (b, a) = by_kind(kind, api);
        assert_eq!(a, b, "{kind} must pass through unchanged");
    }

    // Deployment: classic sidecar + sysctl, everything else identical.
    let (b, a) = by_kind("Deployment", "apps/v1");
    let t = &a["spec"]["template"];
    assert_eq!(container_names(t, "containers"), ["web", SIDECAR_CONTAINER]);
    assert_eq!(
        t["metadata"]["annotations"]["rpf.dev/injected"],
        SOFTWARE_VERSION
    );
    assert_eq!(
        t["spec"]["securityContext"]["sysctls"],
        json!([{ "name": "net.ipv4.ip_unprivileged_port_start", "value": "80" }])
    );
    let mut stripped = a.clone();
    strip_injection(&mut stripped["spec"]["template"]);
    stripped["spec"]["template"]["spec"]
        .as_object_mut()
        .unwrap()
        .remove("securityContext");
    assert_eq!(&stripped, b);

    // StatefulSet: native sidecar (annotation), first in initContainers.
    let (_, a) = by_kind("StatefulSet", "apps/v1");
    let t = &a["spec"]["template"];
    assert_eq!(
        container_names(t, "initContainers"),
        [SIDECAR_CONTAINER, "init-perms"]
    );
    assert_eq!(container_names(t, "containers"), ["db"]);

    // Job and CronJob.
    let (_, a) = by_kind("Job", "batch/v1");
    assert_eq!(
        container_names(&a["spec"]["template"], "containers"),
        ["migrate", SIDECAR_CONTAINER]
    );
    let (b, a) = by_kind("CronJob", "batch/v1");
    let t = &a["spec"]["jobTemplate"]["spec"]["template"];
    assert_eq!(
        container_names(t, "containers"),
        ["report", SIDECAR_CONTAINER]
    );
    assert_eq!(a["spec"]["schedule"], b["spec"]["schedule"]);

    // Pod with a garbage value: untouched, warned about.
    let (b, a) = by_kind("Pod", "v1");
    assert_eq!(a, b);

    let warnings: Vec<String> = warnings.into_iter().map(String::from).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].starts_with("CronJob nightly: rpf.dev/control-port: \"nope\""),
        "{warnings:#?}"
    );
    assert!(
        warnings[1].starts_with("Pod scratch-*: rpf.dev/enabled: \"on\" is neither"),
        "{warnings:#?}"
    );
}

#[test]
fn golden_output() {
    // The exact text, so that quoting and field order are reviewed too.
    let (out, _) = inject_manifests(INPUT, &cfg(), false).unwrap();
    let out = out.replace(SOFTWARE_VERSION, "<version>");
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/manifests/output.yaml"
    );
    if std::env::var_os("RPF_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &out).unwrap();
    }
    assert_eq!(out, std::fs::read_to_string(path).unwrap());
}

#[test]
fn strings_that_look_like_other_types_stay_strings() {
    let (out, _) = inject_manifests(INPUT, &cfg(), false).unwrap();
    let after = parse(&out);
    let cm = after.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    assert_eq!(
        cm["data"],
        json!({
            "enabled": "true", "port": "8080", "octal": "0755",
            "float": "1e3", "tilde": "~", "answer": "no"
        })
    );
    // YAML 1.1 readers (kubectl's) would turn a bare `no`/`yes` into a
    // boolean: they must come out quoted.
    assert!(
        out.contains("answer: \"no\"") || out.contains("answer: 'no'"),
        "{out}"
    );
    let deploy = after.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let env = &deploy["spec"]["template"]["spec"]["containers"][0]["env"];
    assert_eq!(env[0]["value"], "yes");
    assert_eq!(env[1]["value"], "8080");
    assert_eq!(env[2]["value"], "");
    assert_eq!(env[3]["value"], "null");
    assert_eq!(env[4]["value"], "line one\nline two\n");
}

#[test]
fn idempotent() {
    let (once, _) = inject_manifests(INPUT, &cfg(), false).unwrap();
    let (twice, warnings) = inject_manifests(&once, &cfg(), false).unwrap();
    assert_eq!(twice, once);
    // The pod with a garbage opt-in is still reported; the CronJob's bad
    // control port is not, because that template is now injected and left
    // alone.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].message().starts_with("Pod scratch-*"));
}

#[test]
fn all_injects_everything_but_explicit_opt_outs() {
    let (out, warnings) = inject_manifests(INPUT, &cfg(), true).unwrap();
    let after = parse(&out);
    let template = |kind: &str| {
        let d = after
            .iter()
            .find(|d| d["kind"] == kind && d["apiVersion"] != "example.com/v1")
            .unwrap();
        match kind {
            "Pod" => d.clone(),
            "CronJob" => d["spec"]["jobTemplate"]["spec"]["template"].clone(),
            _ => d["spec"]["template"].clone(),
        }
    };
    for kind in [
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "CronJob",
        "Pod",
    ] {
        let t = template(kind);
        let n = ["containers", "initContainers"]
            .iter()
            .flat_map(|l| container_names(&t, l))
            .filter(|n| n == SIDECAR_CONTAINER)
            .count();
        assert_eq!(n, 1, "{kind}");
    }
    assert!(!container_names(&template("ReplicaSet"), "containers")
        .contains(&SIDECAR_CONTAINER.to_owned()));
    let warnings: Vec<String> = warnings.into_iter().map(String::from).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("ReplicaSet rs:") && w.contains("--all")),
        "{warnings:#?}"
    );
    // A second --all pass changes nothing.
    let (again, _) = inject_manifests(&out, &cfg(), true).unwrap();
    assert_eq!(again, out);
}

#[test]
fn lists_are_walked() {
    let input = r#"
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: a, annotations: {rpf.dev/enabled: "true"}}
  spec: {containers: [{name: app, image: x}]}
- apiVersion: v1
  kind: Pod
  metadata: {name: b}
  spec: {containers: [{name: app, image: x}]}
"#;
    let (out, _) = inject_manifests(input, &cfg(), false).unwrap();
    let doc = &parse(&out)[0];
    assert_eq!(
        container_names(&doc["items"][0], "containers"),
        ["app", SIDECAR_CONTAINER]
    );
    assert_eq!(container_names(&doc["items"][1], "containers"), ["app"]);
}

#[test]
fn empty_and_comment_only_input() {
    assert_eq!(inject_manifests("", &cfg(), false).unwrap().0, "");
    assert_eq!(
        inject_manifests("# nothing\n---\n", &cfg(), false)
            .unwrap()
            .0,
        ""
    );
}

#[test]
fn errors_name_the_document() {
    let err = inject_manifests("a: [1, 2\n", &cfg(), false).unwrap_err();
    assert!(matches!(err, ManifestError::Parse(_)), "{err:?}");

    let input = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n\
                 apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: broken, namespace: ns}\nspec: {replicas: 1}\n";
    match inject_manifests(input, &cfg(), true).unwrap_err() {
        ManifestError::Object {
            document, object, ..
        } => {
            assert_eq!(document, 2);
            assert_eq!(object, "Deployment ns/broken");
        }
        other => panic!("{other:?}"),
    }
}
