//! `rpf inject`: add the sidecar to the pod templates of a multi-document
//! YAML stream, for clusters where nobody can install the webhook.
//!
//! Each document is parsed into a JSON value, the same planning code as the
//! webhook's ([`crate::pod`]) produces a patch against it, and the patched
//! documents are written back in order. Fields rpf does not touch keep
//! their values and their order (`serde_json`'s `preserve_order`); comments
//! and YAML styling are lost. Kinds that hold no pod template pass through
//! unchanged.
//!
//! YAML crate: `serde-saphyr`. `serde_yaml` is archived upstream, and of its
//! maintained successors this is the one `kube` itself moved to, so the
//! workspace compiles a single YAML implementation; it is also built to be
//! panic-free on hostile input and follows YAML 1.2.

use serde_json::Value;

use crate::pod::{template_patch, InjectError, Selection, Warning};
use crate::InjectConfig;

/// Why a manifest stream could not be transformed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The input is not valid YAML.
    #[error("cannot parse the YAML input")]
    Parse(#[source] Box<serde_saphyr::Error>),
    /// A document could not be written back as YAML.
    #[error("cannot write the YAML output")]
    Serialize(#[source] Box<serde_saphyr::ser::Error>),
    /// A document of a known kind does not have the shape of that kind.
    #[error("document {document} ({object})")]
    Object {
        /// 1-based index of the document in the stream.
        document: usize,
        /// `Kind namespace/name` of the object.
        object: String,
        /// What was wrong with it.
        #[source]
        source: InjectError,
    },
}

/// Where the pod template of a kind lives, as JSON pointer tokens; `None`
/// for kinds that hold no pod template (they pass through untouched).
fn template_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    // Only the built-in groups: a CRD that happens to be called "Job" in
    // some other API group has a shape we know nothing about.
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("", "Pod") => Some(&[]),
        ("", "PodTemplate") => Some(&["template"]),
        ("", "ReplicationController")
        | ("apps" | "extensions", "Deployment" | "DaemonSet" | "ReplicaSet")
        | ("apps", "StatefulSet")
        | ("batch", "Job") => Some(&["spec", "template"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// Injects the sidecar into every opted-in pod template of a multi-document
/// YAML stream (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job,
/// CronJob, ReplicationController, PodTemplate, and the items of a `List`).
///
/// With `all`, every template is injected unless it is explicitly annotated
/// `rpf.dev/enabled: "false"`. Returns the rewritten stream and the
/// warnings for the user, each prefixed with the object it is about.
/// Documents, their order and all unrelated fields are preserved; comments
/// are not. Running it twice gives the same output as running it once.
pub fn inject_manifests(
    input: &str,
    cfg: &InjectConfig,
    all: bool,
) -> Result<(String, Vec<Warning>), ManifestError> {
    let mut docs: Vec<Value> =
        serde_saphyr::from_multiple(input).map_err(|e| ManifestError::Parse(Box::new(e)))?;
    let selection = if all {
        Selection::All
    } else {
        Selection::Annotated
    };
    let mut warnings = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        inject_object(doc, cfg, selection, &mut warnings).map_err(|(object, source)| {
            ManifestError::Object {
                document: i + 1,
                object,
                source,
            }
        })?;
    }
    if docs.is_empty() {
        return Ok((String::new(), warnings));
    }
    let out = serde_saphyr::to_string_multiple(&docs)
        .map_err(|e| ManifestError::Serialize(Box::new(e)))?;
    Ok((out, warnings))
}

/// Injects into one object (recursing into `List` items) in place.
fn inject_object(
    doc: &mut Value,
    cfg: &InjectConfig,
    selection: Selection,
    warnings: &mut Vec<Warning>,
) -> Result<(), (String, InjectError)> {
    let str_field = |doc: &Value, key: &str| {
        doc.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let api_version = str_field(doc, "apiVersion");
    let kind = str_field(doc, "kind");

    if kind == "List" || (kind.ends_with("List") && doc.get("items").is_some_and(Value::is_array)) {
        if let Some(Value::Array(items)) = doc.get_mut("items") {
            for item in items {
                inject_object(item, cfg, selection, warnings)?;
            }
        }
        return Ok(());
    }
    let Some(path) = template_path(&api_version, &kind) else {
        return Ok(());
    };
    let what = describe(doc, &kind);
    let injection = template_patch(doc, path, cfg, selection).map_err(|e| (what.clone(), e))?;
    warnings.extend(injection.warnings.into_iter().map(|w| w.about(&what)));
    json_patch::patch(doc, &injection.patch).map_err(|e| (what, InjectError::Apply(e)))?;
    Ok(())
}

/// `Deployment ns/name`, for messages.
fn describe(doc: &Value, kind: &str) -> String {
    let meta = doc.get("metadata");
    let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
    let name = field("name")
        .map(str::to_owned)
        .or_else(|| field("generateName").map(|g| format!("{g}*")))
        .unwrap_or_else(|| "<unnamed>".to_owned());
    match field("namespace") {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}
