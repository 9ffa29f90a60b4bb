//! `rpf attach` against a real cluster: both transports, pod, Deployment
//! and Service targets, traffic proven from inside the pod, reconnect to a
//! replacement pod, and the error texts a user sees (not found, no sidecar,
//! not running, forbidden).
//!
//! ```sh
//! RPF_E2E_KUBECONFIG=~/.kube/config cargo test -p rpf-e2e --test cluster_attach -- --ignored --nocapture
//! ```
//!
//! Without `RPF_E2E_KUBECONFIG` it prints "skipped: RPF_E2E_KUBECONFIG not
//! set" and passes. Everything it creates lives in its own namespace,
//! deleted at the end (also on failure). It needs no cluster-wide install:
//! the sidecar container is written into the pod specs.
//!
//! Environment:
//! - `RPF_E2E_KUBECONFIG`: the cluster (required to run).
//! - `RPF_E2E_KUBECTL`: kubectl to use (default `kubectl` on `PATH`).
//! - `RPF_E2E_LOAD_IMAGE`: command that loads an image archive into the
//!   node(s); the archive path is appended (default
//!   `ctr -n k8s.io images import`). For kind: `kind load image-archive`.
//! - `RPF_E2E_IMAGE_TAG`: tag for the locally built sidecar image (default `e2e`).
//! - `RPF_E2E_CLIENT_IMAGE`: a busybox image present on (or pullable by)
//!   the node, for the app container (default `busybox:1.36`).
//! - `RPF_E2E_SKIP_BUILD=1`: use the sidecar archive already built.
//! - `RPF_E2E_RPF`: the `rpf` binary (default: built by cargo).

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rpf_e2e::cluster::{
    apply_stdin, env_or, host_server, load_images, rpf_binary, sa_kubeconfig, unique_suffix,
    wait_for, DeleteNamespaces, Kubectl, Watched,
};

fn log(msg: impl AsRef<str>) {
    eprintln!("[cluster_attach] {}", msg.as_ref());
}

/// Waits for a `Forwarding from 127.0.0.1:REMOTE in pod NS/POD -> ...`
/// line and returns POD.
fn forwarding(attach: &mut Watched, ns: &str, remote: u16) -> String {
    let prefix = format!("stdout: Forwarding from 127.0.0.1:{remote} in pod {ns}/");
    attach.wait_line("`Forwarding from` line", Duration::from_secs(90), |line| {
        let rest = line.strip_prefix(&prefix)?;
        Some(rest.split_whitespace().next()?.to_owned())
    })
}

/// `kubectl apply -f -` with `yaml` on stdin.
fn apply(kubectl: &Kubectl, yaml: &str) {
    if let Err(e) = apply_stdin(kubectl, &["apply", "-f", "-"], yaml) {
        panic!("kubectl apply failed: {e}\n{yaml}");
    }
}

/// The pod spec shared by the pod and the Deployment: the sidecar as the
/// webhook would inject it, plus an app container with a shell and wget.
fn pod_spec(sidecar_image: &str, client_image: &str, indent: usize) -> String {
    let spec = format!(
        r#"terminationGracePeriodSeconds: 1
containers:
  - name: rpf-sidecar
    image: {sidecar_image}
    imagePullPolicy: IfNotPresent
    command: ["/rpf-sidecar", "serve", "--control-addr", "127.0.0.1:4499"]
  - name: app
    image: {client_image}
    imagePullPolicy: IfNotPresent
    command: ["sleep", "3600"]
"#
    );
    let pad = " ".repeat(indent);
    spec.lines().map(|l| format!("{pad}{l}\n")).collect()
}

fn manifests(ns: &str, sidecar: &str, client: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: {ns}
  labels: {{app: web}}
spec:
{pod}---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: api
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: api}}
  template:
    metadata:
      labels: {{app: api}}
    spec:
{tpl}---
apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: {ns}
spec:
  selector: {{app: api}}
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Pod
metadata:
  name: plain
  namespace: {ns}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: {client}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: stuck
  namespace: {ns}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: rpf-sidecar
      image: rpf.invalid/no-such-image:0
      imagePullPolicy: Never
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: reader
  namespace: {ns}
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: nobody
  namespace: {ns}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: pod-reader
  namespace: {ns}
rules:
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get", "list"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: reader-reads-pods
  namespace: {ns}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: pod-reader
subjects:
  - kind: ServiceAccount
    name: reader
    namespace: {ns}
"#,
        pod = pod_spec(sidecar, client, 2),
        tpl = pod_spec(sidecar, client, 6),
    )
}

/// `wget` inside the pod's app container, to the reverse-forwarded port.
fn wget_in_pod(kubectl: &Kubectl, ns: &str, pod: &str, remote: u16) -> Result<String, String> {
    kubectl.try_run([
        "-n",
        ns,
        "exec",
        pod,
        "-c",
        "app",
        "--",
        "timeout",
        "10",
        "wget",
        "-qO-",
        &format!("http://127.0.0.1:{remote}/"),
    ])
}

/// Runs `rpf attach ARGS` expecting it to fail; returns its stderr.
fn attach_fails(rpf: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(rpf);
    cmd.arg("attach")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .arg("--no-reconnect");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("rpf attach {args:?} did not exit within 60s"))
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    log(format!(
        "rpf attach {} -> {}: {}",
        args.join(" "),
        out.status,
        stderr.trim()
    ));
    assert!(!out.status.success(), "rpf attach {args:?} succeeded");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("Forwarding from"),
        "rpf attach {args:?} printed Forwarding"
    );
    stderr
}

#[test]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
fn cluster_attach() {
    let Some(kubectl) = Kubectl::for_cluster("cluster_attach") else {
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

    let suffix = unique_suffix();
    let ns = format!("rpf-e2e-attach-{suffix}");
    kubectl.run(["create", "namespace", &ns]);
    let _namespace = DeleteNamespaces {
        kubectl: kubectl.clone(),
        names: vec![ns.clone()],
    };
    log(format!("namespace {ns}"));
    apply(&kubectl, &manifests(&ns, &sidecar, &client));
    kubectl.run([
        "-n",
        &ns,
        "wait",
        "--for=condition=Ready",
        "pod/web",
        "pod/plain",
        "--timeout=120s",
    ]);
    kubectl.run([
        "-n",
        &ns,
        "rollout",
        "status",
        "deploy/api",
        "--timeout=120s",
    ]);

    let body = format!("hello from the host, run {suffix}");
    let local = host_server(body.clone());
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cluster-attach-{suffix}"));
    std::fs::create_dir_all(&tmp).unwrap();

    // 1. Traffic: pod and Deployment targets over both transports, and a
    //    Service; for the Deployment, delete its pod and follow the attach
    //    to the new one.
    let cases = [
        ("pod/web", "portforward", 18080u16),
        ("pod/web", "exec", 18081),
        ("deploy/api", "portforward", 18082),
        ("deploy/api", "exec", 18083),
        ("svc/api", "portforward", 18084),
    ];
    for (target, transport, remote) in cases {
        log(format!(
            "attach {target} over {transport}, {remote} -> 127.0.0.1:{local}"
        ));
        let mut attach = Watched::spawn(
            Command::new(&rpf)
                .arg("attach")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["-n", &ns, "--transport", transport, target])
                .arg(format!("{remote}:127.0.0.1:{local}")),
        );
        let pod = forwarding(&mut attach, &ns, remote);
        if target == "pod/web" {
            assert_eq!(pod, "web");
        }
        let got = wait_for(
            "wget in the pod",
            Duration::from_secs(20),
            Duration::from_millis(300),
            |last| {
                let r = wget_in_pod(&kubectl, &ns, &pod, remote);
                *last = format!("{r:?}");
                r.ok()
            },
        );
        assert_eq!(got, body, "{target} {transport}");
        log(format!("  pod {pod} reached the host server"));

        if target.starts_with("deploy/") {
            log(format!("  deleting pod {pod}"));
            kubectl.run(["-n", &ns, "delete", "pod", &pod, "--wait=false"]);
            let lost = format!("stderr: Lost connection to pod {ns}/{pod}");
            attach.wait_line(
                "`Lost connection` on stderr",
                Duration::from_secs(60),
                |l| l.starts_with(&lost).then_some(()),
            );
            let new_pod = forwarding(&mut attach, &ns, remote);
            assert_ne!(new_pod, pod, "reconnected to the deleted pod");
            // stderr and stdout interleave freely: the line may come later.
            let reconnected = format!("stderr: Reconnected to pod {ns}/{new_pod}");
            if !attach.seen.contains(&reconnected) {
                attach.wait_line("`Reconnected to` on stderr", Duration::from_secs(30), |l| {
                    (l == reconnected).then_some(())
                });
            }
            let got = wait_for(
                "wget in the new pod",
                Duration::from_secs(30),
                Duration::from_millis(300),
                |last| {
                    let r = wget_in_pod(&kubectl, &ns, &new_pod, remote);
                    *last = format!("{r:?}");
                    r.ok()
                },
            );
            assert_eq!(got, body);
            log(format!("  reconnected to {new_pod}, traffic flows again"));
            kubectl.run([
                "-n",
                &ns,
                "rollout",
                "status",
                "deploy/api",
                "--timeout=120s",
            ]);
        }
        drop(attach);
    }

    // 2. Errors, each worded for the user, before any channel is opened.
    let spec = format!("18090:{local}");
    let e = attach_fails(&rpf, &kubeconfig, &["-n", &ns, "pod/nope", &spec]);
    assert!(
        e.contains(&format!(
            "error: pod \"nope\" not found in namespace \"{ns}\""
        )),
        "{e}"
    );
    let e = attach_fails(&rpf, &kubeconfig, &["-n", &ns, "deploy/nope", &spec]);
    assert!(
        e.contains(&format!(
            "error: deployment \"nope\" not found in namespace \"{ns}\""
        )),
        "{e}"
    );
    let e = attach_fails(&rpf, &kubeconfig, &["-n", &ns, "pod/plain", &spec]);
    assert!(
        e.contains(&format!(
            "error: pod {ns}/plain has no rpf-sidecar container"
        )),
        "{e}"
    );
    assert!(e.contains("rpf.dev/enabled: \"true\""), "{e}");
    assert!(
        e.contains("rpf inject -f manifest.yaml | kubectl apply -f -"),
        "{e}"
    );
    // A pod that never starts is waited for (--pod-running-timeout), then
    // named with its state.
    let e = attach_fails(
        &rpf,
        &kubeconfig,
        &["-n", &ns, "--pod-running-timeout", "3s", "stuck", &spec],
    );
    assert!(
        e.contains(&format!(
            "error: pod {ns}/stuck is not running (phase Pending"
        )),
        "{e}"
    );

    // Forbidden: a reader may look pods up but not open channels; nobody
    // may not even look.
    let reader = sa_kubeconfig(&kubectl, &ns, "reader", &tmp);
    let e = attach_fails(&rpf, &reader, &["pod/web", &spec]);
    assert!(
        e.contains("forbidden: you are not allowed to create pods/portforward"),
        "{e}"
    );
    assert!(e.contains(&format!("in namespace \"{ns}\"")), "{e}");
    let e = attach_fails(&rpf, &reader, &["--transport", "exec", "pod/web", &spec]);
    assert!(
        e.contains("forbidden: you are not allowed to create pods/exec"),
        "{e}"
    );
    let nobody = sa_kubeconfig(&kubectl, &ns, "nobody", &tmp);
    let e = attach_fails(&rpf, &nobody, &["deploy/api", &spec]);
    assert!(
        e.contains("forbidden: you are not allowed to get deployments.apps"),
        "{e}"
    );

    let _ = std::fs::remove_dir_all(&tmp);
    log(format!("passed in {:.0?}", started.elapsed()));
}
