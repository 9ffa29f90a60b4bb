//! From an AdmissionReview body to the AdmissionReview answer.
//!
//! The rule that shapes this module: the webhook must never be the reason a
//! pod cannot be created. A request that is not even an AdmissionReview is
//! answered 400 (the API server then applies the configuration's
//! `failurePolicy`, `Ignore` in rpf's manifests); anything that goes wrong
//! with a well-formed review is answered `allowed` with a warning, so the
//! pod is created without the sidecar and the user is told why.

use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use rpf_inject::{pod_patch, Decision, InjectConfig, Selection};
use serde_json::Value;

use crate::metrics::Metrics;

/// The only AdmissionReview version rpf speaks (the manifests ask for it
/// with `admissionReviewVersions: ["v1"]`).
pub const ADMISSION_V1: &str = "admission.k8s.io/v1";

/// A body that is not a usable AdmissionReview: answered with HTTP 400.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(String);

/// Answers one AdmissionReview.
///
/// Returns the response review to serialize, or [`BadRequest`] with a
/// reason for the 400 body. Counts into `metrics`.
pub fn review(
    body: &[u8],
    cfg: &InjectConfig,
    metrics: &Metrics,
) -> Result<AdmissionReview<DynamicObject>, BadRequest> {
    let bad = |reason: String| {
        metrics.error("malformed_request");
        metrics.request("bad_request");
        BadRequest(reason)
    };
    // Parsed twice on purpose: kube's types for the envelope, and the raw
    // JSON of the pod, so the patch is computed against exactly what the API
    // server sent (a typed round trip could drop fields, and a patch that
    // "adds" a map we failed to see would replace the real one).
    let raw: Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("request body is not JSON: {e}")))?;
    let api_version = raw.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    if raw.get("kind").and_then(Value::as_str) != Some("AdmissionReview") {
        return Err(bad("request body is not an AdmissionReview".into()));
    }
    if api_version != ADMISSION_V1 {
        return Err(bad(format!(
            "unsupported AdmissionReview version {api_version:?}: rpf-webhook speaks {ADMISSION_V1} \
             (set admissionReviewVersions: [\"v1\"])"
        )));
    }
    let review: AdmissionReview<DynamicObject> = serde_json::from_value(raw.clone())
        .map_err(|e| bad(format!("malformed AdmissionReview: {e}")))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| bad("AdmissionReview has no request".into()))?;

    let response = answer(&request, &raw["request"]["object"], cfg, metrics);
    metrics.request("allowed");
    Ok(response.into_review())
}

/// The answer to a well-formed request: always `allowed`.
fn answer(
    req: &AdmissionRequest<DynamicObject>,
    object: &Value,
    cfg: &InjectConfig,
    metrics: &Metrics,
) -> AdmissionResponse {
    let mut response = AdmissionResponse::from(req);
    let is_pod_create = req.kind.group.is_empty()
        && req.kind.kind == "Pod"
        && req.operation == Operation::Create
        && req.sub_resource.as_deref().unwrap_or("").is_empty();
    if !is_pod_create || !object.is_object() {
        // Only possible with a misconfigured webhook rule.
        tracing::debug!(uid = %req.uid, kind = %req.kind.kind, operation = ?req.operation, "not a pod creation; allowed");
        metrics.skip("not_pod_create");
        return response;
    }
    let pod = pod_name(req, object);

    let injection = match pod_patch(object, cfg, Selection::Annotated) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(uid = %req.uid, %pod, error = %e, "pod does not look like a pod; admitted without the sidecar");
            metrics.error("invalid_pod");
            response.warnings = Some(vec![format!("rpf: sidecar not injected into {pod}: {e}")]);
            return response;
        }
    };
    let mut warnings: Vec<String> = injection
        .warnings
        .iter()
        .map(|w| format!("rpf: {w}"))
        .collect();
    match injection.decision {
        Decision::Skip(reason) => {
            tracing::debug!(uid = %req.uid, %pod, %reason, "not injected");
            metrics.skip(reason.as_str());
        }
        Decision::Inject => match response.clone().with_patch(injection.patch) {
            Ok(patched) => {
                tracing::info!(uid = %req.uid, %pod, dry_run = req.dry_run, "injected the rpf sidecar");
                metrics.injection();
                response = patched;
            }
            Err(e) => {
                tracing::error!(uid = %req.uid, %pod, error = %e, "cannot serialize the patch");
                metrics.error("serialize");
                warnings.push(format!(
                    "rpf: sidecar not injected into {pod}: internal error: {e}"
                ));
            }
        },
    }
    if !warnings.is_empty() {
        for w in &warnings {
            tracing::info!(uid = %req.uid, %pod, warning = %w, "admission warning");
        }
        response.warnings = Some(warnings);
    }
    response
}

/// `namespace/name` of the pod, or `namespace/generateName*` for pods
/// whose name the API server has not chosen yet.
fn pod_name(req: &AdmissionRequest<DynamicObject>, object: &Value) -> String {
    let meta = &object["metadata"];
    let ns = req
        .namespace
        .as_deref()
        .or_else(|| meta["namespace"].as_str())
        .unwrap_or("");
    let name = match (meta["name"].as_str(), meta["generateName"].as_str()) {
        (Some(n), _) if !n.is_empty() => n.to_owned(),
        (_, Some(g)) => format!("{g}*"),
        _ => req.name.clone(),
    };
    format!("pod {ns}/{name}")
}
