//! Pod (or pod template) in, JSON patch out.
//!
//! The input is the object as JSON, exactly as an API server sends it in an
//! AdmissionReview or as it appears in a manifest, so fields this crate does
//! not know about are never lost. The output is an RFC 6902 patch against
//! that object, plus the [`Decision`] taken and [`Warning`]s for the user.
//!
//! What the pod's annotations control (keys from
//! [`rpf_proto::annotations`]):
//!
//! | annotation | values | effect |
//! |---|---|---|
//! | `rpf.dev/enabled` | `"true"` / `"false"` | opt in / out; anything else: no injection and a warning |
//! | `rpf.dev/control-port` | 1–65535 | the sidecar's control port (default 4499); invalid: warning, default |
//! | `rpf.dev/native-sidecar` | `"true"` / `"false"` | force or forbid a native sidecar, overriding the cluster default |
//! | `rpf.dev/lowest-port` | 1–65535 | below 1024: pod sysctl `net.ipv4.ip_unprivileged_port_start` |
//! | `rpf.dev/injected` | version | set by the injector; its presence makes injection a no-op |

use std::fmt;

use json_patch::jsonptr::{PointerBuf, Token};
use json_patch::{AddOperation, Patch, PatchOperation};
use rpf_proto::{annotations, DEFAULT_CONTROL_PORT, SIDECAR_CONTAINER, SOFTWARE_VERSION};
use serde_json::{json, Map, Value};

use crate::{sidecar, InjectConfig};

/// The sysctl that lets unprivileged processes bind low ports. It is in the
/// kubelet's "safe" set (Kubernetes ≥ 1.22), so Pod Security "restricted"
/// allows it, unlike the `NET_BIND_SERVICE` capability.
pub const UNPRIVILEGED_PORT_SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";

/// Which pods get the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// Only pods annotated `rpf.dev/enabled: "true"` (the webhook's rule).
    Annotated,
    /// Every pod except those explicitly annotated `rpf.dev/enabled:
    /// "false"` (`rpf inject --all`).
    All,
}

/// Why a pod did not get the sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// No `rpf.dev/enabled` annotation.
    NotAnnotated,
    /// `rpf.dev/enabled: "false"`.
    Disabled,
    /// `rpf.dev/enabled` has a value other than `"true"` or `"false"`.
    InvalidAnnotation,
    /// The pod already has the sidecar or the `rpf.dev/injected` mark.
    AlreadyInjected,
    /// The pod uses the node's network namespace: the sidecar would bind
    /// the reverse ports on the node itself, so rpf refuses.
    HostNetwork,
}

impl SkipReason {
    /// Stable snake_case name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::NotAnnotated => "not_annotated",
            SkipReason::Disabled => "disabled",
            SkipReason::InvalidAnnotation => "invalid_annotation",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::HostNetwork => "host_network",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the injector decided for one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The patch adds the sidecar.
    Inject,
    /// The patch is empty.
    Skip(SkipReason),
}

/// A message for the user (an admission warning, or stderr for
/// `rpf inject`): something about the pod's annotations is wrong but the
/// pod is still admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning(String);

impl Warning {
    fn new(message: impl Into<String>) -> Self {
        Warning(message.into())
    }

    /// The warning text.
    pub fn message(&self) -> &str {
        &self.0
    }

    /// Prefixes the warning with the object it is about.
    #[must_use]
    pub fn about(self, what: &str) -> Self {
        Warning(format!("{what}: {}", self.0))
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Warning> for String {
    fn from(w: Warning) -> String {
        w.0
    }
}

/// The result of planning the injection into one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Injection {
    /// Whether the sidecar is injected, and if not, why.
    pub decision: Decision,
    /// RFC 6902 patch against the object that was passed in; empty unless
    /// `decision` is [`Decision::Inject`].
    pub patch: Patch,
    /// Messages for the user.
    pub warnings: Vec<Warning>,
}

impl Injection {
    /// True when the patch adds the sidecar.
    pub fn injected(&self) -> bool {
        self.decision == Decision::Inject
    }

    fn skip(reason: SkipReason, warnings: Vec<Warning>) -> Self {
        Injection {
            decision: Decision::Skip(reason),
            patch: Patch(Vec::new()),
            warnings,
        }
    }
}

/// The object does not have the shape of a pod.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// A field had the wrong JSON type.
    #[error("{pointer} must be {expected}")]
    Malformed {
        /// JSON pointer of the offending field.
        pointer: String,
        /// What it should have been.
        expected: &'static str,
    },
    /// Applying the computed patch failed (only for [`inject_pod`]).
    #[error("cannot apply the injection patch")]
    Apply(#[from] json_patch::PatchError),
}

/// Plans the injection into a Pod object (`{"metadata": ..., "spec": ...}`).
///
/// This is what the webhook calls with the `request.object` of an
/// AdmissionReview; the patch's paths are relative to that object.
pub fn pod_patch(
    pod: &Value,
    cfg: &InjectConfig,
    selection: Selection,
) -> Result<Injection, InjectError> {
    template_patch(pod, &[], cfg, selection)
}

/// Plans the injection into the pod template found at `template_path`
/// (JSON pointer tokens, unescaped) inside `object`, e.g.
/// `["spec", "template"]` for a Deployment or
/// `["spec", "jobTemplate", "spec", "template"]` for a CronJob. The
/// template must have the shape `{"metadata": ..., "spec": <PodSpec>}`; an
/// empty path means `object` is itself a Pod. The patch's paths are
/// relative to `object`.
pub fn template_patch(
    object: &Value,
    template_path: &[&str],
    cfg: &InjectConfig,
    selection: Selection,
) -> Result<Injection, InjectError> {
    let base = PointerBuf::from_tokens(template_path.iter().copied());
    let template = object
        .pointer(base.as_str())
        .and_then(Value::as_object)
        .ok_or_else(|| malformed(&base, "an object (a pod or pod template)"))?;
    Planner {
        base,
        template,
        cfg,
        selection,
        warnings: Vec::new(),
    }
    .plan()
}

/// Injects into a Pod object and returns the mutated object with the plan.
///
/// The object is returned unchanged when the decision is a skip.
pub fn inject_pod(
    pod: &Value,
    cfg: &InjectConfig,
    selection: Selection,
) -> Result<(Value, Injection), InjectError> {
    let injection = pod_patch(pod, cfg, selection)?;
    let mut out = pod.clone();
    json_patch::patch(&mut out, &injection.patch)?;
    Ok((out, injection))
}

fn malformed(pointer: &PointerBuf, expected: &'static str) -> InjectError {
    InjectError::Malformed {
        pointer: if pointer.is_root() {
            "/".to_owned()
        } else {
            pointer.to_string()
        },
        expected,
    }
}

/// Reads an optional JSON object field: absent and `null` are both "none".
fn opt_object<'a>(
    parent: &'a Map<String, Value>,
    key: &str,
    at: &PointerBuf,
) -> Result<Option<&'a Map<String, Value>>, InjectError> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(malformed(&at.with_trailing_token(key), "an object")),
    }
}

/// Reads an optional JSON array field: absent and `null` are both "none".
fn opt_array<'a>(
    parent: &'a Map<String, Value>,
    key: &str,
    at: &PointerBuf,
) -> Result<Option<&'a Vec<Value>>, InjectError> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(_) => Err(malformed(&at.with_trailing_token(key), "an array")),
    }
}

/// A boolean-valued annotation.
enum Flag<'a> {
    Absent,
    True,
    False,
    Invalid(&'a str),
}

struct Planner<'a> {
    /// Pointer to the pod template inside the object being patched.
    base: PointerBuf,
    template: &'a Map<String, Value>,
    cfg: &'a InjectConfig,
    selection: Selection,
    warnings: Vec<Warning>,
}

impl<'a> Planner<'a> {
    fn plan(mut self) -> Result<Injection, InjectError> {
        let meta_ptr = self.base.with_trailing_token("metadata");
        let spec_ptr = self.base.with_trailing_token("spec");
        let metadata = opt_object(self.template, "metadata", &self.base)?;
        let annotations = match metadata {
            Some(m) => opt_object(m, "annotations", &meta_ptr)?,
            None => None,
        };
        let spec = opt_object(self.template, "spec", &self.base)?
            .ok_or_else(|| malformed(&spec_ptr, "an object (the pod spec)"))?;
        let containers = opt_array(spec, "containers", &spec_ptr)?;
        let init_containers = opt_array(spec, "initContainers", &spec_ptr)?;

        // 1. Is the pod opted in?
        match (flag(annotations, annotations::ENABLED), self.selection) {
            (Flag::True, _) | (Flag::Absent, Selection::All) => {}
            (Flag::Absent, Selection::Annotated) => {
                return Ok(Injection::skip(SkipReason::NotAnnotated, self.warnings))
            }
            (Flag::False, selection) => {
                if selection == Selection::All {
                    self.warn(format!(
                        "{}: \"false\" opts this pod out, even with --all",
                        annotations::ENABLED
                    ));
                }
                return Ok(Injection::skip(SkipReason::Disabled, self.warnings));
            }
            (Flag::Invalid(v), Selection::Annotated) => {
                self.warn(format!(
                    "{}: {v:?} is neither \"true\" nor \"false\"; the rpf sidecar was not injected",
                    annotations::ENABLED
                ));
                return Ok(Injection::skip(
                    SkipReason::InvalidAnnotation,
                    self.warnings,
                ));
            }
            (Flag::Invalid(v), Selection::All) => {
                self.warn(format!(
                    "{}: {v:?} is neither \"true\" nor \"false\"; injecting anyway (--all)",
                    annotations::ENABLED
                ));
            }
        }

        // 2. Idempotency: the mark, or the container itself, means done.
        let has_sidecar = |list: Option<&Vec<Value>>| {
            list.into_iter()
                .flatten()
                .any(|c| c.get("name").and_then(Value::as_str) == Some(SIDECAR_CONTAINER))
        };
        if annotations.is_some_and(|a| a.contains_key(annotations::INJECTED))
            || has_sidecar(containers)
            || has_sidecar(init_containers)
        {
            return Ok(Injection::skip(SkipReason::AlreadyInjected, self.warnings));
        }

        if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
            self.warn(
                "hostNetwork pods share the node's network namespace; the rpf sidecar was not injected"
                    .to_owned(),
            );
            return Ok(Injection::skip(SkipReason::HostNetwork, self.warnings));
        }

        // 3. What the pod asks for.
        let control_port = self
            .port_annotation(annotations, annotations::CONTROL_PORT)
            .unwrap_or(DEFAULT_CONTROL_PORT);
        let native =
            match flag(annotations, annotations::NATIVE_SIDECAR) {
                Flag::Absent => self.cfg.native_sidecar,
                Flag::True => true,
                Flag::False => false,
                Flag::Invalid(v) => {
                    self.warn(format!(
                    "{}: {v:?} is neither \"true\" nor \"false\"; using the cluster default ({})",
                    annotations::NATIVE_SIDECAR,
                    if self.cfg.native_sidecar { "native" } else { "classic" }
                ));
                    self.cfg.native_sidecar
                }
            };
        let lowest_port = self.port_annotation(annotations, annotations::LOWEST_PORT);

        // 4. The patch.
        let mut ops = Vec::new();
        let container = sidecar::container(self.cfg, control_port, native);
        // A native sidecar goes first, so it is up before any other init
        // container runs (those may already want the tunnel).
        let (list_key, list, at) = if native {
            ("initContainers", init_containers, Token::from(0usize))
        } else {
            ("containers", containers, Token::new("-"))
        };
        let list_ptr = spec_ptr.with_trailing_token(list_key);
        ops.push(match list {
            Some(_) => add(list_ptr.with_trailing_token(at), container),
            None => add(list_ptr, Value::Array(vec![container])),
        });

        if let Some(port) = lowest_port.filter(|p| *p < 1024) {
            if let Some(op) = self.sysctl_op(spec, &spec_ptr, port)? {
                ops.push(op);
            }
        }

        let version = Value::String(SOFTWARE_VERSION.to_owned());
        ops.push(match (metadata, annotations) {
            (None, _) => add(
                meta_ptr,
                json!({ "annotations": { annotations::INJECTED: version } }),
            ),
            (Some(_), None) => add(
                meta_ptr.with_trailing_token("annotations"),
                json!({ annotations::INJECTED: version }),
            ),
            (Some(_), Some(_)) => add(
                meta_ptr
                    .with_trailing_token("annotations")
                    .with_trailing_token(annotations::INJECTED),
                version,
            ),
        });

        Ok(Injection {
            decision: Decision::Inject,
            patch: Patch(ops),
            warnings: self.warnings,
        })
    }

    fn warn(&mut self, message: String) {
        self.warnings.push(Warning::new(message));
    }

    /// Parses a port-valued annotation; an invalid value is a warning.
    fn port_annotation(
        &mut self,
        annotations: Option<&Map<String, Value>>,
        key: &str,
    ) -> Option<u16> {
        let raw = annotations?.get(key)?;
        let parsed = raw
            .as_str()
            .and_then(|s| s.trim().parse::<u16>().ok())
            .filter(|p| *p != 0);
        if parsed.is_none() {
            let shown = match raw {
                Value::String(s) => format!("{s:?}"),
                other => other.to_string(),
            };
            self.warn(format!(
                "{key}: {shown} is not a port number (1-65535); ignored"
            ));
        }
        parsed
    }

    /// Adds `net.ipv4.ip_unprivileged_port_start=<port>` to the pod's
    /// sysctls, merging with what is there and never overriding the pod's
    /// own value for it.
    fn sysctl_op(
        &mut self,
        spec: &Map<String, Value>,
        spec_ptr: &PointerBuf,
        port: u16,
    ) -> Result<Option<PatchOperation>, InjectError> {
        let sysctl = json!({ "name": UNPRIVILEGED_PORT_SYSCTL, "value": port.to_string() });
        let sc_ptr = spec_ptr.with_trailing_token("securityContext");
        let Some(sc) = opt_object(spec, "securityContext", spec_ptr)? else {
            return Ok(Some(add(sc_ptr, json!({ "sysctls": [sysctl] }))));
        };
        let sysctls_ptr = sc_ptr.with_trailing_token("sysctls");
        let Some(sysctls) = opt_array(sc, "sysctls", &sc_ptr)? else {
            return Ok(Some(add(sysctls_ptr, json!([sysctl]))));
        };
        let existing = sysctls
            .iter()
            .find(|s| s.get("name").and_then(Value::as_str) == Some(UNPRIVILEGED_PORT_SYSCTL));
        match existing {
            None => Ok(Some(add(
                sysctls_ptr.with_trailing_token(Token::new("-")),
                sysctl,
            ))),
            Some(s) => {
                let value = s.get("value").and_then(Value::as_str).unwrap_or("");
                if value
                    .trim()
                    .parse::<u32>()
                    .map_or(true, |v| v > u32::from(port))
                {
                    self.warn(format!(
                        "the pod sets {UNPRIVILEGED_PORT_SYSCTL}={value:?}, which does not allow port {port} \
                         ({} asks for it); the pod's value is kept",
                        annotations::LOWEST_PORT
                    ));
                }
                Ok(None)
            }
        }
    }
}

fn flag<'a>(annotations: Option<&'a Map<String, Value>>, key: &str) -> Flag<'a> {
    match annotations.and_then(|a| a.get(key)) {
        None | Some(Value::Null) => Flag::Absent,
        Some(Value::String(s)) if s == "true" => Flag::True,
        Some(Value::String(s)) if s == "false" => Flag::False,
        Some(Value::String(s)) => Flag::Invalid(s),
        // Annotation values are strings; an API server never sends anything
        // else, but a hand-written manifest might (`enabled: true` unquoted).
        Some(Value::Bool(true)) => Flag::True,
        Some(Value::Bool(false)) => Flag::False,
        Some(_) => Flag::Invalid("<not a string>"),
    }
}

fn add(path: PointerBuf, value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation { path, value })
}
