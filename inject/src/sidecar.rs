//! The `rpf-sidecar` container as it is injected into a pod.
//!
//! The container is built as plain JSON (the shape of a Kubernetes
//! `core/v1` `Container`), so this crate needs no Kubernetes API types and
//! no cluster version feature. Its security context passes the Pod Security
//! "restricted" profile: the sidecar needs no privilege at all, because the
//! only thing it does is bind sockets in the pod's network namespace (ports
//! below 1024 are handled with a pod sysctl, see [`crate::pod`]).

use rpf_proto::{env, SIDECAR_BINARY_PATH, SIDECAR_CONTAINER};
use serde_json::{json, Value};

use crate::InjectConfig;

/// Numeric user (and group) the sidecar runs as: the conventional
/// "nonroot" uid of distroless images. Numeric, so that `runAsNonRoot` can
/// be verified by the kubelet without reading `/etc/passwd` in the image.
pub const SIDECAR_UID: i64 = 65532;

/// CPU the sidecar requests: it is idle unless a tunnel carries traffic.
pub const CPU_REQUEST: &str = "10m";
/// Memory the sidecar requests: its steady use with some connections
/// (0.5 to 2.5 MiB idle, 2 to 12 MiB after bursts; see docs/injection.md).
pub const MEMORY_REQUEST: &str = "16Mi";
/// Memory limit of the sidecar: twice the measured peak of 1,000 concurrent
/// connections moving 64 KiB each way (up to 76 MiB of memory plus 52 MiB
/// of socket buffers, which cgroup v2 counts too; `e2e/tests/memory_limit.rs`).
/// Under the former 64Mi that load got the shipped sidecar OOM-killed. No
/// CPU limit: throttling a byte pump only makes the tunnel slower, and the
/// request already bounds scheduling.
pub const MEMORY_LIMIT: &str = "256Mi";

/// Builds the sidecar container.
///
/// `control_port` is the port the sidecar's control listener binds on
/// 127.0.0.1; `native` adds `restartPolicy: Always`, which turns an init
/// container into a native sidecar (only meaningful in `initContainers`).
pub fn container(cfg: &InjectConfig, control_port: u16, native: bool) -> Value {
    let mut c = json!({
        "name": SIDECAR_CONTAINER,
        "image": cfg.image,
        "command": [SIDECAR_BINARY_PATH],
        "args": ["serve", "--control-addr", format!("127.0.0.1:{control_port}")],
        "env": [
            {
                "name": env::POD_NAME,
                "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } }
            },
            {
                "name": env::POD_NAMESPACE,
                "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } }
            }
        ],
        "resources": {
            "requests": { "cpu": CPU_REQUEST, "memory": MEMORY_REQUEST },
            "limits": { "memory": MEMORY_LIMIT }
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_UID,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" }
        }
    });
    let obj = c.as_object_mut().expect("json! object literal");
    if let Some(policy) = &cfg.image_pull_policy {
        obj.insert("imagePullPolicy".into(), Value::String(policy.clone()));
    }
    if native {
        obj.insert("restartPolicy".into(), Value::String("Always".into()));
    }
    c
}
