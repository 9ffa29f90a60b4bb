//! The whole mission on a real cluster: build the images, load them into the
//! node, install rpf with Kustomize (the install for the server's version:
//! manifests/ from 1.28, overlays/kubernetes-1.21 or -1.20 before; rendered
//! with a current kubectl, applied with the cluster's), let the webhook inject the sidecar into
//! an annotated Deployment, `rpf attach deploy/...` to a server on this
//! machine, prove that a request made INSIDE the pod reaches that server,
//! check that a dead webhook never blocks pod creation, then uninstall and
//! check that nothing is left behind.
//!
//! ```sh
//! RPF_E2E_KUBECONFIG=~/.kube/config cargo test -p rpf-e2e --test cluster_mission -- --ignored --nocapture
//! ```
//!
//! Without `RPF_E2E_KUBECONFIG` the test prints "skipped: RPF_E2E_KUBECONFIG
//! not set" and passes. It installs rpf cluster-wide, so it refuses to run on
//! a cluster where `rpf-webhook` is already installed.
//!
//! Environment:
//! - `RPF_E2E_KUBECONFIG`: the cluster (required to run).
//! - `RPF_E2E_KUBECTL`: kubectl to use (default `kubectl` on `PATH`).
//! - `RPF_E2E_KUBECTL_RENDER`: a current kubectl (1.27+, Kustomize v5) that
//!   renders the manifests (default `RPF_E2E_KUBECTL`); needed when the
//!   cluster's kubectl is older (its Kustomize cannot read current fields).
//! - `RPF_E2E_LOAD_IMAGE`: command that loads an image archive into the
//!   node(s); the archive path is appended (default
//!   `ctr -n k8s.io images import`). For kind: `kind load image-archive`.
//! - `RPF_E2E_IMAGE_TAG`: tag for the locally built images (default `e2e`).
//! - `RPF_E2E_CLIENT_IMAGE`: a busybox image present on (or pullable by)
//!   the node, for the app container (default `busybox:1.36`).
//! - `RPF_E2E_SKIP_BUILD=1`: use the archives already in the build directory.
//! - `RPF_E2E_RPF`: the `rpf` binary (default: built by cargo for this test).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rpf_e2e::cluster::{
    apply_stdin, env_or, host_server, load_images, render_install, rpf_binary, scale_webhook,
    wait_for, wait_injecting, wait_not_terminating, webhook_rollout, Installed, Kill, Kubectl,
    WEBHOOK, WEBHOOK_NS,
};

fn log(msg: impl AsRef<str>) {
    eprintln!("[cluster_mission] {}", msg.as_ref());
}

/// Deletes a namespace, unless disarmed.
struct Namespace {
    kubectl: Kubectl,
    name: String,
    armed: bool,
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if self.armed {
            log(format!("cleanup: deleting namespace {}", self.name));
            let _ = self.kubectl.try_run([
                "delete",
                "namespace",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ]);
        }
    }
}

fn annotated_pod_yaml(ns: &str, name: &str, image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  annotations:
    rpf.dev/enabled: "true"
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: {image}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
"#
    )
}

fn deployment_yaml(ns: &str, name: &str, image: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: {name}
  template:
    metadata:
      labels:
        app: {name}
      annotations:
        rpf.dev/enabled: "true"
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: client
          image: {image}
          imagePullPolicy: IfNotPresent
          command: ["sleep", "3600"]
"#
    )
}

/// Names of all containers and init containers of a pod.
fn container_names(kubectl: &Kubectl, ns: &str, pod: &str) -> String {
    kubectl.run([
        "-n",
        ns,
        "get",
        "pod",
        pod,
        "-o",
        "jsonpath={.spec.initContainers[*].name} {.spec.containers[*].name}",
    ])
}

/// The `rpf` binary: `RPF_E2E_RPF`, else built with cargo next to this test.
#[test]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
fn cluster_mission() {
    let Some(kubectl) = Kubectl::for_cluster("cluster_mission") else {
        return;
    };
    let started = Instant::now();
    let minor = kubectl.server_minor();
    log(format!("cluster: Kubernetes 1.{minor}"));

    // Never take over (and then delete) somebody else's rpf install.
    if kubectl
        .try_run(["get", "mutatingwebhookconfiguration", WEBHOOK])
        .is_ok()
    {
        panic!(
            "MutatingWebhookConfiguration {WEBHOOK} already exists: rpf is installed on this \
             cluster; uninstall it first (kubectl delete -k manifests/)"
        );
    }

    // 1. Images.
    let (sidecar, webhook) = load_images(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-images"),
        &["rpf-sidecar.tar", "rpf-webhook.tar"],
    );

    // Build the CLI now, so the cluster-wide install below lasts no longer
    // than the test needs it.
    let rpf = rpf_binary();

    // 2. Install: the repo's manifests for this server version, with our images.
    let rendered = render_install(
        minor,
        &sidecar,
        &webhook,
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-overlay"),
    );
    log(format!(
        "installing rpf for 1.{minor} via {}",
        rendered.display()
    ));
    let mut installed = Installed {
        kubectl: kubectl.clone(),
        file: rendered.clone(),
        armed: true,
    };
    let rendered_arg = rendered.to_str().unwrap().to_owned();
    wait_not_terminating(&kubectl, WEBHOOK_NS);
    kubectl.run(["apply", "-f", &rendered_arg]);

    // 3. The webhook is ready, has put its CA into the webhook configuration,
    //    and the API server really calls it (server-side dry run of an
    //    annotated pod comes back with the sidecar).
    webhook_rollout(&kubectl);
    wait_for(
        "the caBundle of the MutatingWebhookConfiguration",
        Duration::from_secs(90),
        Duration::from_secs(2),
        |last| {
            let ca = kubectl
                .try_run([
                    "get",
                    "mutatingwebhookconfiguration",
                    WEBHOOK,
                    "-o",
                    "jsonpath={.webhooks[0].clientConfig.caBundle}",
                ])
                .unwrap_or_default();
            *last = format!("caBundle of {} bytes", ca.len());
            (ca.len() > 100).then_some(())
        },
    );
    log("webhook ready, caBundle set");

    // `rpf version` names the installed webhook and the image it injects.
    let out = Command::new(&rpf)
        .arg("version")
        .env(
            "KUBECONFIG",
            kubectl.kubeconfig.as_ref().expect("a cluster"),
        )
        .output()
        .expect("run rpf version");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rpf version: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("Server: Kubernetes v1."), "{stdout}");
    assert!(
        stdout.contains(&format!("Webhook: {webhook} in rpf-system"))
            && stdout.contains(&format!("injects {sidecar}")),
        "{stdout}"
    );
    log(format!(
        "rpf version: {}",
        stdout.trim().replace('\n', " | ")
    ));

    let suffix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 100_000;
    let ns = format!("rpf-e2e-{suffix}");
    let mut namespace = Namespace {
        kubectl: kubectl.clone(),
        name: ns.clone(),
        armed: true,
    };
    kubectl.run(["create", "namespace", &ns]);
    let client_image = env_or("RPF_E2E_CLIENT_IMAGE", "busybox:1.36");

    wait_injecting(
        &kubectl,
        &annotated_pod_yaml(&ns, "probe", &client_image),
        Duration::from_secs(60),
    );
    log("webhook injects into annotated pods");

    // 4. An annotated Deployment whose app container is a client.
    let app = "rpf-e2e-client";
    apply_stdin(
        &kubectl,
        &["apply", "-f", "-"],
        &deployment_yaml(&ns, app, &client_image),
    )
    .unwrap_or_else(|e| panic!("create deployment: {e}"));
    kubectl.run([
        "-n",
        &ns,
        "rollout",
        "status",
        &format!("deployment/{app}"),
        "--timeout=180s",
    ]);
    let pod = kubectl.run([
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        &format!("app={app}"),
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let names = container_names(&kubectl, &ns, &pod);
    assert!(
        names.split_whitespace().any(|n| n == "rpf-sidecar"),
        "pod {ns}/{pod} has no rpf-sidecar container: {names}"
    );
    log(format!("pod {ns}/{pod} runs containers: {names}"));

    // 5. rpf attach deploy/... REMOTE:LOCAL to a server on this machine.
    let token = format!("hello from the host, run {suffix}");
    let local = host_server(token.clone());
    let remote = 8080;
    log(format!("rpf attach deploy/{app} {remote}:{local} -n {ns}"));
    let mut child = Command::new(&rpf)
        .args([
            "attach",
            &format!("deploy/{app}"),
            &format!("{remote}:{local}"),
            "-n",
            &ns,
        ])
        .env("KUBECONFIG", kubectl.kubeconfig.as_ref().unwrap())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", rpf.display()));
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let tx2 = tx.clone();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(format!("stdout: {line}"));
        }
    });
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx2.send(format!("stderr: {line}"));
        }
    });
    let mut attach = Kill(child);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                log(format!("rpf {line}"));
                let forwarding = line.starts_with("stdout: Forwarding from ");
                seen.push(line);
                if forwarding {
                    break;
                }
            }
            Err(_) => {
                let status = attach.0.try_wait().ok().flatten();
                panic!(
                    "rpf attach printed no `Forwarding from` line within 90s (exit: {status:?}); output:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
    let expected = format!("Forwarding from 127.0.0.1:{remote} in pod {ns}/{pod} -> ");
    assert!(
        seen.iter().any(|l| l.contains(&expected)),
        "expected a line containing {expected:?}, got:\n{}",
        seen.join("\n")
    );
    // Keep draining rpf's output so it never blocks on a full pipe.
    thread::spawn(move || {
        for line in rx {
            log(format!("rpf {line}"));
        }
    });

    // 6. From INSIDE the pod, the app's localhost:REMOTE is the host server.
    for i in 0..3 {
        let body = kubectl.run([
            "-n",
            &ns,
            "exec",
            &pod,
            "-c",
            "client",
            "--",
            "timeout",
            "20",
            "wget",
            "-qO-",
            &format!("http://127.0.0.1:{remote}/"),
        ]);
        assert_eq!(
            body.trim(),
            token,
            "request {i} from the pod got the wrong answer"
        );
    }
    log("3 requests from inside the pod reached the host server");
    drop(attach);

    // 7. A webhook that is down never blocks pod creation (failurePolicy Ignore).
    scale_webhook(&kubectl, 0);
    let t = Instant::now();
    apply_stdin(
        &kubectl,
        &["create", "-f", "-"],
        &annotated_pod_yaml(&ns, "while-webhook-down", &client_image),
    )
    .unwrap_or_else(|e| panic!("pod creation failed while the webhook was down: {e}"));
    let names = container_names(&kubectl, &ns, "while-webhook-down");
    assert!(
        !names.contains("rpf-sidecar"),
        "a pod created while the webhook was down has a sidecar?! {names}"
    );
    log(format!(
        "with the webhook scaled to 0, an annotated pod was created in {:?} (without sidecar)",
        t.elapsed()
    ));

    // 8. Uninstall and check that nothing is left.
    kubectl.run(["delete", "namespace", &ns, "--wait=false"]);
    namespace.armed = false;
    kubectl.run([
        "delete",
        "-f",
        &rendered_arg,
        "--wait=true",
        "--timeout=180s",
    ]);
    installed.armed = false;
    wait_for(
        "namespace rpf-system to be gone",
        Duration::from_secs(180),
        Duration::from_secs(2),
        |last| match kubectl.try_run(["get", "namespace", WEBHOOK_NS, "-o", "name"]) {
            Ok(s) => {
                *last = s;
                None
            }
            Err(e) if e.contains("NotFound") || e.contains("not found") => Some(()),
            Err(e) => {
                *last = e;
                None
            }
        },
    );
    for kind in [
        "mutatingwebhookconfigurations",
        "validatingwebhookconfigurations",
        "clusterroles",
        "clusterrolebindings",
    ] {
        let left = kubectl.run([
            "get",
            kind,
            "-l",
            "app.kubernetes.io/part-of=rpf",
            "-o",
            "name",
        ]);
        assert!(
            left.trim().is_empty(),
            "left behind after uninstall: {left}"
        );
    }
    for obj in [
        "mutatingwebhookconfiguration/rpf-webhook",
        "clusterrole/rpf-webhook",
        "clusterrolebinding/rpf-webhook",
    ] {
        let r = kubectl.try_run(["get", obj, "-o", "name"]);
        assert!(r.is_err(), "left behind after uninstall: {obj}");
    }
    log(format!(
        "uninstalled cleanly; whole mission took {:?}",
        started.elapsed()
    ));
}
