//! The injected sidecar under its default memory limit on a real cluster:
//! a pod made by `rpf inject` (so the sidecar has exactly the requests and
//! limits every injected pod gets) carries 1,000 concurrent connections,
//! 64 KiB each way on each, through `rpf attach`: all 1,000 arrive whole,
//! the sidecar is not OOM-killed or restarted, and its peak memory (the
//! container's memory cgroup, read on the node) is reported against the
//! limit.
//!
//! ```sh
//! RPF_E2E_KUBECONFIG=~/.kube/config cargo test -p rpf-e2e --test cluster_memory_limit -- --ignored --nocapture
//! ```
//!
//! Environment as for `cluster_attach`. The peak is read from the node's
//! cgroup files, so it is reported only when the test runs on the node;
//! the other checks run anywhere.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rpf_e2e::cgroup::quantity_bytes;
use rpf_e2e::cluster::{
    apply_stdin, env_or, load_images, pipe, rpf_binary, DeleteNamespaces, Kubectl, Watched,
};
use rpf_e2e::process::{bin, free_port, Background};
use serde_json::Value;

fn log(msg: impl AsRef<str>) {
    eprintln!("[cluster_memory_limit] {}", msg.as_ref());
}

const CONNECTIONS: usize = 1000;
const BYTES: usize = 65536;

/// Peak memory of a container's cgroup on this machine (cgroup v1
/// `memory.max_usage_in_bytes` or v2 `memory.peak`), if visible here.
fn container_peak(container_id: &str) -> Option<u64> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(cgroup) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        for line in cgroup.lines().filter(|l| l.contains(container_id)) {
            let mut parts = line.splitn(3, ':');
            let (controllers, path) = (parts.nth(1)?, parts.next()?);
            let file = match controllers {
                "memory" => format!("/sys/fs/cgroup/memory{path}/memory.max_usage_in_bytes"),
                "" => format!("/sys/fs/cgroup{path}/memory.peak"),
                _ => continue,
            };
            if let Ok(text) = std::fs::read_to_string(file) {
                return text.trim().parse().ok();
            }
        }
    }
    None
}

#[test]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
fn cluster_memory_limit() {
    let Some(kubectl) = Kubectl::for_cluster("cluster_memory_limit") else {
        return;
    };
    let kubeconfig = kubectl.kubeconfig.clone().unwrap();
    let started = Instant::now();
    let client = env_or("RPF_E2E_CLIENT_IMAGE", "busybox:1.36");
    let (sidecar, _) = load_images(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-images"),
        &["rpf-sidecar.tar"],
    );
    let rpf = rpf_binary();
    let (ns, _namespace) = DeleteNamespaces::create(&kubectl, "rpf-e2e-mem");

    // The pod as `rpf inject` writes it: the default resources.
    let pod = format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: {ns}
  annotations: {{rpf.dev/enabled: "true"}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: {client}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
"#
    );
    let mut inject = Command::new(&rpf);
    inject.args([
        "inject",
        "-f",
        "-",
        "--image",
        &sidecar,
        "--image-pull-policy",
        "IfNotPresent",
    ]);
    let injected = pipe(&mut inject, &pod).unwrap_or_else(|e| panic!("rpf inject: {e}"));
    apply_stdin(&kubectl, &["apply", "-f", "-"], &injected).unwrap_or_else(|e| panic!("{e}"));
    kubectl.run([
        "-n",
        &ns,
        "wait",
        "--for=condition=Ready",
        "pod/web",
        "--timeout=120s",
    ]);
    let spec: Value =
        serde_json::from_str(&kubectl.run(["-n", &ns, "get", "pod", "web", "-o", "json"])).unwrap();
    let resources = spec["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "rpf-sidecar")
        .expect("rpf inject added the sidecar")["resources"]
        .clone();
    let limit = resources["limits"]["memory"]
        .as_str()
        .expect("the sidecar has a memory limit")
        .to_owned();
    log(format!("sidecar resources: {resources}"));

    let echo_port = free_port();
    let _echo = Background::start({
        let mut cmd = Command::new(bin("rpf-testpeer"));
        cmd.args(["echo", "--listen", &format!("127.0.0.1:{echo_port}")]);
        cmd
    });
    let mut attach = Watched::spawn(
        Command::new(&rpf)
            .arg("attach")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["-n", &ns, "-q", "--max-connections", "1000", "pod/web"])
            .arg(format!("9000:127.0.0.1:{echo_port}")),
    );
    attach.wait_line("`Forwarding from`", Duration::from_secs(90), |l| {
        l.contains("Forwarding from 127.0.0.1:9000").then_some(())
    });

    // 1,000 connections at once, each sending 64 KiB, holding for 10 s,
    // and counting the bytes echoed back.
    let script = format!(
        "for i in $(seq {CONNECTIONS}); do \
           ( (head -c {BYTES} /dev/zero; sleep 10) | nc -w 5 127.0.0.1 9000 | wc -c > /tmp/r$i ) & \
         done; wait; cat /tmp/r* | grep -c '^ *{BYTES}$'"
    );
    let t = Instant::now();
    let whole = kubectl.run([
        "-n", &ns, "exec", "web", "-c", "app", "--", "sh", "-c", &script,
    ]);
    let whole: usize = whole.trim().parse().unwrap_or(0);
    log(format!(
        "{whole} of {CONNECTIONS} connections echoed {BYTES} bytes whole ({:.0?})",
        t.elapsed()
    ));

    let status: Value =
        serde_json::from_str(&kubectl.run(["-n", &ns, "get", "pod", "web", "-o", "json"])).unwrap();
    let sidecar_status = status["status"]["containerStatuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "rpf-sidecar")
        .unwrap()
        .clone();
    let id = sidecar_status["containerID"]
        .as_str()
        .unwrap_or_default()
        .rsplit("://")
        .next()
        .unwrap_or_default()
        .to_owned();
    match container_peak(&id) {
        Some(peak) => log(format!(
            "sidecar peak memory {:.1} MiB of its {limit} limit ({:.0}%)",
            peak as f64 / 1048576.0,
            100.0 * peak as f64 / quantity_bytes(&limit) as f64
        )),
        None => log("sidecar peak memory: not visible here (not run on the node)"),
    }
    assert_eq!(
        sidecar_status["restartCount"], 0,
        "the sidecar restarted: {sidecar_status}"
    );
    assert!(
        sidecar_status["lastState"]["terminated"].is_null(),
        "the sidecar was terminated: {sidecar_status}"
    );
    assert_eq!(whole, CONNECTIONS, "connections lost");
    assert!(attach.child.try_wait().unwrap().is_none(), "rpf exited");
    log(format!("passed in {:.0?}", started.elapsed()));
}
