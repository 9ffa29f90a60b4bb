//! The whole mission on a real cluster: build the images, load them into the
//! node, install rpf with Kustomize, let the webhook inject the sidecar into
//! an annotated Deployment, `rpf attach deploy/...` to a server on this
//! machine, prove that a request made INSIDE the pod reaches that server,
//! check that a dead webhook never blocks pod creation, then uninstall and
//! check that nothing is left behind.
//!
//! ```sh
//! RPF_E2E_KUBECONFIG=~/.kube/config cargo test -p rpf-e2e --test cluster_mission -- --nocapture
//! ```
//!
//! Without `RPF_E2E_KUBECONFIG` the test prints "skipped: RPF_E2E_KUBECONFIG
//! not set" and passes. It installs rpf cluster-wide, so it refuses to run on
//! a cluster where `rpf-webhook` is already installed.
//!
//! Environment:
//! - `RPF_E2E_KUBECONFIG`: the cluster (required to run).
//! - `RPF_E2E_KUBECTL`: kubectl to use (default `kubectl` on `PATH`).
//! - `RPF_E2E_LOAD_IMAGE`: command that loads an image archive into the
//!   node(s); the archive path is appended (default
//!   `ctr -n k8s.io images import`). For kind: `kind load image-archive`.
//! - `RPF_E2E_IMAGE_TAG`: tag for the locally built images (default `e2e`).
//! - `RPF_E2E_CLIENT_IMAGE`: a busybox image present on (or pullable by)
//!   the node, for the app container (default `busybox:1.36`).
//! - `RPF_E2E_SKIP_BUILD=1`: use the archives already in the build directory.
//! - `RPF_E2E_RPF`: the `rpf` binary (default: built by cargo for this test).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rpf_e2e::cluster::{images_env, relative_path, repo_root, run, wait_for, with_tag, Kubectl};

const WEBHOOK_NS: &str = "rpf-system";
const WEBHOOK: &str = "rpf-webhook";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[cluster_mission] {}", msg.as_ref());
}

/// Deletes what `kubectl apply -k DIR` created, unless disarmed.
struct Installed {
    kubectl: Kubectl,
    dir: PathBuf,
    armed: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if self.armed {
            log("cleanup: uninstalling rpf");
            let dir = self.dir.to_string_lossy().into_owned();
            let _ =
                self.kubectl
                    .try_run(["delete", "--ignore-not-found", "--wait=false", "-k", &dir]);
        }
    }
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

/// Kills a child process (the `rpf attach`) when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tiny HTTP server on this machine's loopback that answers every request
/// with `body`: the "service on the developer's machine".
fn host_server(body: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind host server");
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let body = body.clone();
            thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    body.len(),
                    body
                );
            });
        }
    });
    port
}

/// Builds the images with `images/build.sh` and loads them into the node.
fn build_and_load(tag: &str) {
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-images");
    if std::env::var_os("RPF_E2E_SKIP_BUILD").is_none() {
        log(format!(
            "building images (tag {tag}) into {}",
            out.display()
        ));
        let status = Command::new("bash")
            .arg(repo_root().join("images/build.sh"))
            .arg("--out")
            .arg(&out)
            .args(["--tag", tag])
            .status()
            .expect("run images/build.sh");
        assert!(status.success(), "images/build.sh failed: {status}");
    }
    let loader = env_or("RPF_E2E_LOAD_IMAGE", "ctr -n k8s.io images import");
    let mut words = loader.split_whitespace();
    let program = words.next().expect("RPF_E2E_LOAD_IMAGE is empty");
    for archive in ["rpf-sidecar.tar", "rpf-webhook.tar"] {
        let path = out.join(archive);
        assert!(path.is_file(), "{} missing", path.display());
        log(format!("loading {} with `{loader}`", path.display()));
        run(Command::new(program).args(words.clone()).arg(&path));
    }
}

/// Writes a kustomization that installs `base` (a directory of the repo's
/// manifests) with the locally built images.
fn local_overlay(base: &Path, sidecar: &str, webhook: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-overlay");
    std::fs::create_dir_all(&dir).unwrap();
    let rel = relative_path(&dir, base);
    // `bases` and `configMapGenerator.env` keep Kustomize v2.0.3 (kubectl
    // 1.14-1.20) working; newer kubectl prints deprecation warnings only.
    let kustomization = format!(
        "# Generated by e2e/tests/cluster_mission.rs: rpf with locally built images.\n\
         bases:\n  - {}\n\
         configMapGenerator:\n  - name: rpf-images\n    namespace: {WEBHOOK_NS}\n    behavior: merge\n    literals:\n\
         \x20     - RPF_SIDECAR_IMAGE={sidecar}\n      - RPF_WEBHOOK_IMAGE={webhook}\n",
        rel.display()
    );
    std::fs::write(dir.join("kustomization.yaml"), kustomization).unwrap();
    dir
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

/// `kubectl apply -f -` with `yaml` on stdin.
fn apply_stdin(kubectl: &Kubectl, args: &[&str], yaml: &str) -> Result<String, String> {
    let mut child = kubectl
        .cmd(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
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
fn rpf_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RPF_E2E_RPF").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    // This test runs from <target>/<profile>/deps/; rpf goes to <target>/<profile>/.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let target_dir = profile_dir.parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .env("CARGO_TARGET_DIR", target_dir)
        .args(["build", "-p", "rpf-cli", "--bin", "rpf"]);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build -p rpf-cli failed");
    profile_dir.join("rpf")
}

#[test]
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
    let tag = env_or("RPF_E2E_IMAGE_TAG", "e2e");
    let (sidecar, webhook) = images_env();
    let (sidecar, webhook) = (with_tag(&sidecar, &tag), with_tag(&webhook, &tag));
    build_and_load(&tag);
    // Build the CLI now, so the cluster-wide install below lasts no longer
    // than the test needs it.
    let rpf = rpf_binary();

    // 2. Install: the repo's manifests for this server version, with our images.
    let manifests = repo_root().join("manifests");
    let base = if minor < 21 {
        manifests.join("overlays/kubernetes-1.20")
    } else {
        manifests.clone()
    };
    let overlay = local_overlay(&base, &sidecar, &webhook);
    log(format!(
        "installing {} via {}",
        base.display(),
        overlay.display()
    ));
    let mut installed = Installed {
        kubectl: kubectl.clone(),
        dir: overlay.clone(),
        armed: true,
    };
    let overlay_arg = overlay.to_str().unwrap().to_owned();
    kubectl.run(["apply", "-k", &overlay_arg]);

    // 3. The webhook is ready, has put its CA into the webhook configuration,
    //    and the API server really calls it (server-side dry run of an
    //    annotated pod comes back with the sidecar).
    kubectl.run([
        "-n",
        WEBHOOK_NS,
        "rollout",
        "status",
        &format!("deployment/{WEBHOOK}"),
        "--timeout=180s",
    ]);
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

    wait_for(
        "the webhook to inject rpf-sidecar (server-side dry run)",
        Duration::from_secs(60),
        Duration::from_secs(2),
        |last| {
            let pod = annotated_pod_yaml(&ns, "probe", &client_image);
            match apply_stdin(
                &kubectl,
                &[
                    "create",
                    "--dry-run=server",
                    "-o",
                    "jsonpath={.spec.initContainers[*].name} {.spec.containers[*].name}",
                    "-f",
                    "-",
                ],
                &pod,
            ) {
                Ok(names) => {
                    *last = names.clone();
                    names
                        .split_whitespace()
                        .any(|n| n == "rpf-sidecar")
                        .then_some(())
                }
                Err(e) => {
                    *last = e;
                    None
                }
            }
        },
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
    kubectl.run([
        "-n",
        WEBHOOK_NS,
        "scale",
        &format!("deployment/{WEBHOOK}"),
        "--replicas=0",
    ]);
    wait_for(
        "the webhook pods to be gone",
        Duration::from_secs(90),
        Duration::from_secs(2),
        |last| {
            let pods = kubectl
                .try_run([
                    "-n",
                    WEBHOOK_NS,
                    "get",
                    "pods",
                    "-l",
                    "app.kubernetes.io/name=rpf-webhook",
                    "-o",
                    "name",
                ])
                .unwrap_or_else(|e| e);
            *last = pods.clone();
            pods.trim().is_empty().then_some(())
        },
    );
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
        "-k",
        &overlay_arg,
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
