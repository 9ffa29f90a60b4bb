//! The `rpf` binary as users run it: plugin name, help, `rpf inject`.

use std::io::Write;
use std::process::{Command, Stdio};

fn rpf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rpf"))
}

#[test]
fn the_kubectl_plugin_binary_is_the_same_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-rpf"))
        .args(["attach", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("REMOTE:HOST:LOCAL"), "{help}");
    assert!(help.contains("--transport"), "{help}");
}

#[test]
fn inject_adds_the_sidecar_to_opted_in_workloads_only() {
    let manifests = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
      annotations:
        rpf.dev/enabled: "true"
    spec:
      containers:
        - name: app
          image: busybox
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Pod
metadata:
  name: plain
spec:
  containers:
    - name: app
      image: busybox
"#;
    let mut child = rpf()
        .args([
            "inject",
            "-f",
            "-",
            "--image",
            "example.com/rpf-sidecar:test",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(manifests.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("name: rpf-sidecar").count(),
        1,
        "only the Deployment: {text}"
    );
    assert!(
        text.contains("image: example.com/rpf-sidecar:test"),
        "{text}"
    );
    assert!(text.contains("rpf.dev/injected"), "{text}");
    assert!(
        text.contains("kind: Service"),
        "other kinds pass through: {text}"
    );
    assert_eq!(
        text.matches("---").count(),
        2,
        "three documents, in order: {text}"
    );
    assert!(text.find("kind: Deployment") < text.find("kind: Service"));
}

#[test]
fn inject_names_a_missing_file() {
    let out = rpf()
        .args(["inject", "-f", "/nonexistent/app.yaml"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: cannot read /nonexistent/app.yaml"),
        "{stderr}"
    );
}
