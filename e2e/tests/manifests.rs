//! The Kustomize manifests render and validate against the Kubernetes schemas.
//!
//! Every kustomization under `manifests/` is rendered with `kubectl kustomize`
//! and every object is validated, strictly (unknown fields are errors), with
//! `kubernetes-validate`, which ships the Kubernetes JSON schemas and needs
//! no network and no cluster. Then the properties the design depends on are
//! checked in the rendered output (fail-open webhook, restricted pods, image
//! names from `images.env`, which overlay carries what), and the
//! kustomizations themselves: current fields only, no warnings from a current
//! kubectl, and the `images` transformer reaching both images.
//!
//! ```sh
//! pip install kubernetes-validate==1.37.0   # the validator (schemas 1.25 to 1.37)
//! cargo test -p rpf-e2e --test manifests
//! ```
//!
//! Environment: `RPF_E2E_KUBECTL` (default `kubectl` on `PATH`: a current
//! one, 1.27+, whose Kustomize is v5), `RPF_E2E_KUBERNETES_VALIDATE` (default
//! `kubernetes-validate` on `PATH`). The overlays for old clusters are
//! rendered with a current Kustomize too (old kubectls' Kustomize v2 cannot
//! read current fields); Kubernetes 1.20 itself is covered by
//! `cluster_mission`, which applies overlays/kubernetes-1.20 to a real cluster.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use rpf_e2e::cluster::{find_tool, images_env, output, repo_root, Kubectl};

/// Schema versions every object is validated against: the oldest Kubernetes
/// the validator ships schemas for, and (None) its newest.
const VERSIONS: [Option<&str>; 2] = [Some("1.25.0"), None];

/// One thing to render and validate.
struct Case {
    /// Directory of a kustomization, or a plain manifest file.
    path: &'static str,
    /// Kinds (`apiVersion kind`) that have no schema in the validator and are
    /// expected: CRDs and APIs removed before the oldest shipped version.
    no_schema: &'static [&'static str],
    /// The oldest schema version this case is meant for, when newer than
    /// the default (API fields that appeared later).
    min_version: Option<&'static str>,
}

const CASES: &[Case] = &[
    Case {
        // The default install: matchConditions are GA from 1.30.
        path: "manifests",
        no_schema: &[],
        min_version: Some("1.30.0"),
    },
    Case {
        path: "manifests/base",
        no_schema: &[],
        min_version: None,
    },
    Case {
        path: "manifests/overlays/kubernetes-1.21",
        no_schema: &[],
        min_version: None,
    },
    Case {
        path: "manifests/overlays/kubernetes-1.20",
        // Removed in 1.25; the rest of this overlay is manifests/base.
        no_schema: &["policy/v1beta1 PodDisruptionBudget"],
        min_version: None,
    },
    Case {
        path: "manifests/overlays/cert-manager",
        no_schema: &[
            "cert-manager.io/v1 Issuer",
            "cert-manager.io/v1 Certificate",
        ],
        min_version: Some("1.30.0"),
    },
    Case {
        path: "manifests/examples/developer-role.yaml",
        no_schema: &[],
        min_version: None,
    },
    Case {
        path: "manifests/examples/expose-role.yaml",
        no_schema: &[],
        min_version: None,
    },
    Case {
        path: "manifests/examples/demo.yaml",
        no_schema: &[],
        min_version: None,
    },
];

/// The kustomizations a user installs, and whether each carries
/// matchConditions (only those for Kubernetes 1.28+ may).
const INSTALLS: [(&str, bool); 4] = [
    ("manifests", true),
    ("manifests/overlays/cert-manager", true),
    ("manifests/overlays/kubernetes-1.21", false),
    ("manifests/overlays/kubernetes-1.20", false),
];

fn validator() -> PathBuf {
    find_tool(
        "RPF_E2E_KUBERNETES_VALIDATE",
        "kubernetes-validate",
        "install it with `pip install kubernetes-validate==1.37.0` (offline JSON-schema \
         validation of Kubernetes objects), or point RPF_E2E_KUBERNETES_VALIDATE at it",
    )
}

/// Renders a case: `kubectl kustomize DIR` or the file itself.
fn render(kubectl: &Kubectl, path: &str) -> String {
    let full = repo_root().join(path);
    if full.is_dir() {
        kubectl.kustomize(&full)
    } else {
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {path}: {e}"))
    }
}

/// `(apiVersion kind, name)` of every object in a multi-document YAML
/// stream, read from the top-level keys (good enough for our own manifests).
fn objects(yaml: &str) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for doc in yaml.split("\n---") {
        let mut api = None;
        let mut kind = None;
        let mut name = None;
        let mut in_metadata = false;
        for line in doc.lines() {
            if let Some(v) = line.strip_prefix("apiVersion: ") {
                api = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("kind: ") {
                kind = Some(v.trim().to_owned());
            } else if line.starts_with("metadata:") {
                in_metadata = true;
            } else if !line.starts_with(' ') && !line.is_empty() {
                in_metadata = false;
            } else if in_metadata && name.is_none() {
                if let Some(v) = line.strip_prefix("  name: ") {
                    name = Some(v.trim().to_owned());
                }
            }
        }
        if let (Some(a), Some(k), Some(mut n)) = (api, kind, name) {
            // Generated ConfigMaps end in a content hash, computed differently
            // by different Kustomize versions: compare them without it.
            if k == "ConfigMap" {
                if let Some((stem, hash)) = n.rsplit_once('-') {
                    if hash.len() == 10 && hash.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        n = stem.to_owned();
                    }
                }
            }
            out.insert((format!("{a} {k}"), n));
        }
    }
    out
}

/// Validates `file` (holding the objects of `case`) with every schema
/// version; returns the problems found.
fn validate(validator: &Path, case: &Case, file: &Path, expected: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let versions: Vec<Option<&str>> = match case.min_version {
        Some(v) => vec![Some(v), None],
        None => VERSIONS.to_vec(),
    };
    for version in versions {
        let mut cmd = Command::new(validator);
        cmd.arg("--strict");
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        cmd.arg(file);
        let out = output(&mut cmd);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let label = format!("{} (schemas {})", case.path, version.unwrap_or("newest"));
        let mut passed = 0;
        for line in text.lines() {
            if line.contains(" passed for resource ") {
                passed += 1;
            } else if let Some(rest) = line.split("Couldn't find schema for kind ").nth(1) {
                // "Couldn't find schema for kind K with api version A for ..."
                let mut words = rest.split_whitespace();
                let kind = words.next().unwrap_or_default();
                let api = words.nth(3).unwrap_or_default();
                if case.no_schema.contains(&format!("{api} {kind}").as_str()) {
                    passed += 1;
                } else {
                    problems.push(format!("{label}: {line}"));
                }
            } else if line.starts_with("ERROR") || line.contains("Traceback") {
                problems.push(format!("{label}: {line}"));
            }
        }
        if !out.status.success() && problems.is_empty() {
            problems.push(format!("{label}: validator exited {}:\n{text}", out.status));
        }
        if passed != expected {
            problems.push(format!(
                "{label}: {passed} of {expected} objects validated; validator said:\n{text}"
            ));
        }
    }
    problems
}

#[test]
fn manifests_validate_against_kubernetes_schemas() {
    let kubectl = Kubectl::offline();
    let validator = validator();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("manifests");
    std::fs::create_dir_all(&dir).unwrap();

    let mut problems = Vec::new();
    for case in CASES {
        let yaml = render(&kubectl, case.path);
        let objs = objects(&yaml);
        assert!(
            !objs.is_empty(),
            "{}: no objects rendered:\n{yaml}",
            case.path
        );
        let file = dir.join(format!("{}.yaml", case.path.replace('/', "_")));
        std::fs::write(&file, &yaml).unwrap();
        problems.extend(validate(&validator, case, &file, objs.len()));
    }
    assert!(
        problems.is_empty(),
        "invalid manifests:\n{}",
        problems.join("\n")
    );
}

/// The properties that make the install safe, checked in what kubectl
/// actually renders.
#[test]
fn rendered_manifests_keep_their_promises() {
    let kubectl = Kubectl::offline();
    let (sidecar, webhook) = images_env();
    for (path, match_conditions) in INSTALLS {
        let y = render(&kubectl, path);
        let has = |s: &str| y.contains(s);
        for must in [
            "failurePolicy: Ignore",
            "sideEffects: None",
            "timeoutSeconds: 5",
            "reinvocationPolicy: Never",
            "- v1\n", // admissionReviewVersions
            "operator: NotIn",
            "- kube-system",
            "- rpf-system",
            "rpf.dev/injection",
            "runAsNonRoot: true",
            "runAsUser: 65532",
            "allowPrivilegeEscalation: false",
            "readOnlyRootFilesystem: true",
            "- ALL",
            "type: RuntimeDefault",
            "scheme: HTTPS",
            "replicas: 2",
            "topologySpreadConstraints",
            "kind: PodDisruptionBudget",
            "imagePullPolicy: IfNotPresent",
        ] {
            assert!(has(must), "{path}: rendered manifests lack {must:?}");
        }
        assert!(
            has(&format!("image: {webhook}\n")),
            "{path}: webhook image is not {webhook} (manifests/base/images.env)"
        );
        assert!(
            has(&format!(
                "- name: RPF_SIDECAR_IMAGE\n          value: {sidecar}\n"
            )) && has("--sidecar-image=$(RPF_SIDECAR_IMAGE)\n"),
            "{path}: sidecar image is not {sidecar} (manifests/base/images.env)"
        );
        let objs = objects(&y);
        for kind in [
            "v1 Namespace",
            "v1 ServiceAccount",
            "v1 Service",
            "apps/v1 Deployment",
            "admissionregistration.k8s.io/v1 MutatingWebhookConfiguration",
            "rbac.authorization.k8s.io/v1 ClusterRole",
            "rbac.authorization.k8s.io/v1 ClusterRoleBinding",
            "rbac.authorization.k8s.io/v1 Role",
            "rbac.authorization.k8s.io/v1 RoleBinding",
        ] {
            assert!(
                objs.iter().any(|(k, _)| k == kind),
                "{path}: no {kind} in {objs:?}"
            );
        }

        let cert_manager = path.ends_with("cert-manager");
        assert_eq!(has("--self-managed-tls"), !cert_manager, "{path}: TLS mode");
        assert_eq!(has("--tls-cert="), cert_manager, "{path}: TLS mode");
        assert_eq!(
            has("cert-manager.io/inject-ca-from: rpf-system/rpf-webhook"),
            cert_manager,
            "{path}: CA injection"
        );
        assert_eq!(
            has("matchConditions:") && has("'rpf.dev/enabled' in object.metadata.annotations"),
            match_conditions,
            "{path}: matchConditions belong in the installs for 1.28+ and only there"
        );
        assert_eq!(
            has("apiVersion: policy/v1beta1"),
            path.ends_with("kubernetes-1.20"),
            "{path}: PodDisruptionBudget API version"
        );
        // Least privilege: nothing cluster-wide beyond the webhook's own
        // configuration, no wildcard anywhere.
        assert!(!has("- '*'") && !has("- \"*\""), "{path}: wildcard in RBAC");
        assert!(
            !has("- pods\n  verbs"),
            "{path}: the webhook must not be granted access to pods"
        );
    }
}

/// Fields that current Kustomize deprecates (and kubectl 1.27+ warns about).
const DEPRECATED_FIELDS: [&str; 7] = [
    "bases",
    "vars",
    "patchesJson6902",
    "patchesStrategicMerge",
    "commonLabels",
    "imageTags",
    "crds",
];

/// Every kustomization under `manifests/` uses current fields only, and a
/// current kubectl renders each without a word on stderr (no deprecation
/// warnings).
#[test]
fn kustomizations_use_current_fields_and_render_without_warnings() {
    let kubectl = Kubectl::offline();
    let mut dirs = Vec::new();
    let mut stack = vec![repo_root().join("manifests")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
                dirs.push(dir.clone());
            }
        }
    }
    assert!(dirs.len() >= 7, "kustomizations found: {dirs:?}");
    for dir in dirs {
        let text = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
        for line in text.lines() {
            let key = line.split(':').next().unwrap_or_default();
            assert!(
                !DEPRECATED_FIELDS.contains(&key),
                "{}: deprecated Kustomize field `{key}`",
                dir.display()
            );
        }
        if text.contains("kind: Component") {
            continue; // not buildable by itself
        }
        let out = output(Command::new(&kubectl.bin).arg("kustomize").arg(&dir));
        assert!(
            out.status.success(),
            "kubectl kustomize {} failed",
            dir.display()
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.trim().is_empty(),
            "kubectl kustomize {} warned:\n{stderr}",
            dir.display()
        );
    }
}

/// The `images` transformer (what `kustomize edit set image` writes) reaches
/// both images in every install: the webhook's container image and the
/// sidecar image the webhook injects.
#[test]
fn images_transformer_sets_both_images() {
    let kubectl = Kubectl::offline();
    let (sidecar, webhook) = images_env();
    let name = |r: &str| r.rsplit_once(':').map_or(r, |(n, _)| n).to_owned();
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("manifests-set-image");
    let _ = std::fs::remove_dir_all(&tmp);
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("manifests"))
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(status.success());
    for (path, _) in INSTALLS {
        let dir = tmp.join(path.trim_start_matches("manifests").trim_start_matches('/'));
        let file = dir.join("kustomization.yaml");
        let text = std::fs::read_to_string(&file).unwrap();
        for image in [&sidecar, &webhook] {
            let entry = format!("  - name: {}\n", name(image));
            assert!(
                text.contains(&entry),
                "{path}: no `images` entry for {image}"
            );
        }
        // What `kustomize edit set image OLD=registry.test/team/NAME:dev` writes.
        let text = text
            .replace(
                &format!("  - name: {}\n", name(&sidecar)),
                &format!(
                    "  - name: {}\n    newName: registry.test/team/rpf-sidecar\n    newTag: dev\n",
                    name(&sidecar)
                ),
            )
            .replace(
                &format!("  - name: {}\n", name(&webhook)),
                &format!(
                    "  - name: {}\n    newName: registry.test/team/rpf-webhook\n    newTag: dev\n",
                    name(&webhook)
                ),
            );
        std::fs::write(&file, text).unwrap();
        let y = kubectl.kustomize(&dir);
        assert!(
            y.contains("value: registry.test/team/rpf-sidecar:dev\n")
                && y.contains("image: registry.test/team/rpf-webhook:dev\n")
                && !y.contains(&sidecar)
                && !y.contains(&webhook),
            "{path}: set image did not reach both images:\n{y}"
        );
    }
}
