//! Pure sidecar injection logic shared by `rpf-webhook` and `rpf inject`.
//!
//! Opting a pod into rpf takes one annotation, `rpf.dev/enabled: "true"`.
//! Two programs act on it: the mutating admission webhook (for pods created
//! in a cluster where the webhook is installed) and `rpf inject` (which
//! rewrites manifests on the user's machine, for clusters where nobody can
//! install a webhook). Both call into this crate, so they can never disagree
//! about what an injected pod looks like.
//!
//! # Layout
//!
//! - [`config`]: [`InjectConfig`], what the operator chooses (image, native
//!   sidecar support of the cluster).
//! - [`pod`]: the core: a pod (or a pod template) as JSON in, a
//!   [`json_patch::Patch`] out, plus the [`Decision`] and the [`Warning`]s
//!   for the user. [`pod_patch`] is what the webhook calls; [`inject_pod`]
//!   applies the patch and returns the mutated object.
//! - [`sidecar`]: the injected container itself.
//! - [`manifests`]: [`inject_manifests`], the multi-document YAML transform
//!   behind `rpf inject`.
//!
//! Everything here is a pure function of its inputs: no I/O, no clock, no
//! Kubernetes client. The annotation keys and names come from
//! [`rpf_proto`].

pub mod config;
pub mod manifests;
pub mod pod;
pub mod sidecar;

pub use config::InjectConfig;
pub use json_patch;
pub use manifests::{inject_manifests, ManifestError};
pub use pod::{
    inject_pod, pod_patch, template_patch, Decision, InjectError, Injection, Selection, SkipReason,
    Warning,
};
