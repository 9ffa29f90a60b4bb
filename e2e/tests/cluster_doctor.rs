//! `rpf doctor` as a user runs it: the real binary, its output and exit
//! status.
//!
//! Without a cluster (always run): a kubeconfig naming a port where nothing
//! listens makes the first check fail at once, names it, skips the rest
//! that need the cluster, still checks the local targets, exits 1, and its
//! JSON lines parse.
//!
//! On a real cluster (`--ignored`): builds and loads the images, installs
//! rpf with the manifests for the server's version, and runs the doctor
//! against
//! - a healthy injected Deployment and a listening local target: every
//!   check passes, exit 0, within the time the doctor promises;
//! - a pod without the sidecar: `injection` fails naming the missing
//!   annotation;
//! - a namespace the webhook does not serve (labelled
//!   rpf.dev/injection=disabled) with an opted-in pod: `webhook-namespace`
//!   fails naming the label, `injection` says why the pod was missed;
//! - a ServiceAccount without RBAC: `rbac` fails naming what is missing;
//! - a stopped local target: `local-target` fails with "connection refused".
//!
//! ```sh
//! RPF_E2E_KUBECONFIG=~/.kube/config cargo test -p rpf-e2e --test cluster_doctor -- --ignored --nocapture
//! ```
//!
//! It installs rpf cluster-wide, so it refuses to run where `rpf-webhook`
//! is already installed; everything is removed at the end, also on failure.
//!
//! Environment: as `cluster_mission` (`RPF_E2E_KUBECONFIG`,
//! `RPF_E2E_KUBECTL`, `RPF_E2E_KUBECTL_RENDER`, `RPF_E2E_LOAD_IMAGE`,
//! `RPF_E2E_IMAGE_TAG`, `RPF_E2E_CLIENT_IMAGE`, `RPF_E2E_SKIP_BUILD`,
//! `RPF_E2E_RPF`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rpf_e2e::cluster::{
    apply_stdin, env_or, host_server, load_images, render_install, rpf_binary, sa_kubeconfig,
    scale_webhook, wait_for, wait_injecting, wait_not_terminating, webhook_rollout, Kubectl,
    WEBHOOK, WEBHOOK_NS,
};
use serde_json::Value;

/// Every check of a run with a TARGET and one SPEC, in order.
const ALL_CHECKS: [&str; 15] = [
    "api-server",
    "rbac",
    "rbac-expose",
    "webhook",
    "webhook-ready",
    "webhook-ca",
    "webhook-namespace",
    "target",
    "injection",
    "sidecar",
    "sidecar-version",
    "port-forward",
    "exec",
    "probe",
    "local-target",
];

fn log(msg: impl AsRef<str>) {
    eprintln!("[cluster_doctor] {}", msg.as_ref());
}

/// One run of `rpf doctor`: exit status, stdout, stderr, how long.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Run {
    /// Runs `rpf doctor ARGS` with `kubeconfig`.
    fn doctor(rpf: &Path, kubeconfig: &Path, args: &[&str]) -> Run {
        let started = Instant::now();
        let out: Output = Command::new(rpf)
            .arg("doctor")
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RPF_NAMESPACE")
            .output()
            .expect("run rpf doctor");
        let run = Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        };
        log(format!(
            "rpf doctor {} -> exit {:?} in {:.2?}\n{}{}",
            args.join(" "),
            run.code,
            run.took,
            run.stdout,
            run.stderr
        ));
        run
    }

    /// The JSON objects of a `-o json` run, every line one.
    fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The text line of check `name` (`STATUS  name  evidence`).
    fn line(&self, name: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{}", self.stdout))
    }

    /// The status word of check `name`.
    fn status(&self, name: &str) -> &str {
        self.line(name).split_whitespace().next().unwrap()
    }

    /// The `next:` line under check `name`, if any.
    fn next(&self, name: &str) -> Option<&str> {
        let mut lines = self.stdout.lines().skip_while(|l| *l != self.line(name));
        lines.next();
        lines.next()?.trim().strip_prefix("next: ")
    }
}

/// A kubeconfig for a server on 127.0.0.1 where nothing listens.
fn dead_kubeconfig(dir: &Path) -> PathBuf {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let path = dir.join("dead.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: dead\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n\
             users:\n- name: u\n  user:\n    token: t\n\
             contexts:\n- name: dead\n  context:\n    cluster: dead\n    user: u\n    namespace: dev\n\
             current-context: dead\n"
        ),
    )
    .unwrap();
    path
}

/// A port on 127.0.0.1 where nothing listens (bound, then closed).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn an_unreachable_api_server_fails_the_first_check_at_once() {
    let rpf = rpf_binary();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("doctor-offline");
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dead_kubeconfig(&dir);
    let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listening.local_addr().unwrap().port();
    let closed = closed_port();
    let spec_open = format!("8080:{open}");
    let spec_closed = format!("8081:127.0.0.1:{closed}");

    let run = Run::doctor(&rpf, &kubeconfig, &["deploy/web", &spec_open, &spec_closed]);
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    assert!(run.took < Duration::from_secs(5), "took {:?}", run.took);
    let first = run.stdout.lines().next().unwrap();
    assert!(
        first.starts_with("FAIL  api-server")
            && first.contains(&format!(
                "cannot reach the API server at https://127.0.0.1:{}",
                kubeconfig_port(&kubeconfig)
            )),
        "{first}"
    );
    assert!(run
        .next("api-server")
        .is_some_and(|n| n.contains("kubectl get --raw /version")));
    for name in &ALL_CHECKS[1..14] {
        assert_eq!(run.status(name), "SKIP", "{name}");
    }
    assert!(
        run.stderr
            .contains("error: failed: api-server, local-target; each says"),
        "{}",
        run.stderr
    );

    let run = Run::doctor(
        &rpf,
        &kubeconfig,
        &["-o", "json", "deploy/web", &spec_open, &spec_closed],
    );
    assert_eq!(run.code, Some(1));
    let objects = run.json();
    let names: Vec<&str> = objects
        .iter()
        .map(|o| o["check"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = ALL_CHECKS.to_vec();
    want.push("local-target");
    want.push("summary");
    assert_eq!(names, want);
    for o in &objects {
        for field in ["check", "status", "evidence", "next"] {
            assert!(o[field].is_string(), "{field} missing in {o}");
        }
    }
    assert_eq!(objects[0]["status"], "fail");
    assert_eq!(objects[14]["status"], "pass", "{}", objects[14]);
    assert_eq!(objects[14]["spec"], format!("8080:localhost:{open}"));
    assert_eq!(objects[15]["status"], "fail");
    assert!(objects[15]["evidence"]
        .as_str()
        .unwrap()
        .ends_with("connection refused"));
    let summary = &objects[16];
    assert_eq!(summary["status"], "fail");
    assert_eq!(summary["failed"], 2);
    assert_eq!(summary["passed"], 1);
    assert_eq!(summary["skipped"], 13);
    drop(listening);
}

fn kubeconfig_port(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let server = text.split("https://127.0.0.1:").nth(1).unwrap();
    server.lines().next().unwrap().to_owned()
}

/// Uninstalls rpf and deletes the test namespaces when dropped.
struct Cleanup {
    kubectl: Kubectl,
    rendered: Option<PathBuf>,
    namespaces: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var_os("RPF_E2E_KEEP").is_some() {
            log("RPF_E2E_KEEP: leaving rpf and the namespaces in place");
            return;
        }
        for ns in &self.namespaces {
            let _ = self.kubectl.try_run([
                "delete",
                "namespace",
                ns,
                "--ignore-not-found",
                "--wait=false",
            ]);
        }
        if let Some(rendered) = &self.rendered {
            let file = rendered.to_string_lossy().into_owned();
            let _ =
                self.kubectl
                    .try_run(["delete", "--ignore-not-found", "--wait=false", "-f", &file]);
        }
        log("cleaned up");
    }
}

fn pod_yaml(ns: &str, name: &str, image: &str, annotated: bool) -> String {
    let annotations = match annotated {
        true => "\n  annotations:\n    rpf.dev/enabled: \"true\"",
        false => "",
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}{annotations}\n\
         spec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: app\n    image: {image}\n    \
         imagePullPolicy: IfNotPresent\n    command: [sleep, \"3600\"]\n"
    )
}

fn deployment_yaml(ns: &str, name: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {ns}\n\
         spec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      \
         labels: {{app: {name}}}\n      annotations:\n        rpf.dev/enabled: \"true\"\n    spec:\n      \
         terminationGracePeriodSeconds: 1\n      containers:\n      - name: app\n        image: {image}\n        \
         imagePullPolicy: IfNotPresent\n        command: [sleep, \"3600\"]\n---\n\
         apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: nobody\n  namespace: {ns}\n"
    )
}

#[test]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
fn cluster_doctor() {
    let Some(kubectl) = Kubectl::for_cluster("cluster_doctor") else {
        return;
    };
    let kubeconfig = kubectl.kubeconfig.clone().expect("a cluster");
    let minor = kubectl.server_minor();
    if kubectl
        .try_run(["get", "mutatingwebhookconfiguration", WEBHOOK])
        .is_ok()
    {
        panic!(
            "MutatingWebhookConfiguration {WEBHOOK} already exists: rpf is installed on this \
             cluster (another test running?); uninstall it first (kubectl delete -k manifests/)"
        );
    }

    // Images and the CLI first, so the install lasts no longer than needed.
    let (sidecar, webhook) = load_images(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-images"),
        &["rpf-sidecar.tar", "rpf-webhook.tar"],
    );
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("doctor-cluster");

    let rpf = rpf_binary();
    let client_image = env_or("RPF_E2E_CLIENT_IMAGE", "busybox:1.36");

    let suffix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 100_000;
    let (ns, off) = (
        format!("rpf-doctor-{suffix}"),
        format!("rpf-doctor-off-{suffix}"),
    );
    let rendered = render_install(minor, &sidecar, &webhook, &tmp.join("overlay"));
    let _cleanup = Cleanup {
        kubectl: kubectl.clone(),
        rendered: Some(rendered.clone()),
        namespaces: vec![ns.clone(), off.clone()],
    };
    log(format!("installing rpf for 1.{minor}"));
    wait_not_terminating(&kubectl, WEBHOOK_NS);
    kubectl.run(["apply", "-f", rendered.to_str().unwrap()]);
    webhook_rollout(&kubectl);
    kubectl.run(["create", "namespace", &ns]);
    kubectl.run(["create", "namespace", &off]);
    kubectl.run(["label", "namespace", &off, "rpf.dev/injection=disabled"]);
    wait_injecting(
        &kubectl,
        &pod_yaml(&ns, "probe", &client_image, true),
        Duration::from_secs(90),
    );
    log("webhook injects");

    apply_stdin(
        &kubectl,
        &["apply", "-f", "-"],
        &deployment_yaml(&ns, "web", &client_image),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    apply_stdin(
        &kubectl,
        &["apply", "-f", "-"],
        &pod_yaml(&ns, "plain", &client_image, false),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    apply_stdin(
        &kubectl,
        &["apply", "-f", "-"],
        &pod_yaml(&off, "orphan", &client_image, true),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    kubectl.run([
        "-n",
        &ns,
        "rollout",
        "status",
        "deployment/web",
        "--timeout=180s",
    ]);
    let local = host_server("doctor".into());
    let local_spec = format!("8080:{local}");

    // 1. Healthy: every check passes, exit 0, fast.
    let run = Run::doctor(&rpf, &kubeconfig, &["-n", &ns, "deploy/web", &local_spec]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    for name in ALL_CHECKS {
        assert_eq!(run.status(name), "PASS", "{name}: {}", run.line(name));
    }
    assert!(
        run.line("probe").contains("unchanged"),
        "{}",
        run.line("probe")
    );
    assert!(run
        .line("webhook-ca")
        .contains("verifies against the caBundle"));
    assert!(
        run.took < Duration::from_secs(5),
        "healthy run took {:?}",
        run.took
    );
    let timings: Vec<Duration> = (0..3)
        .map(|_| Run::doctor(&rpf, &kubeconfig, &["-n", &ns, "deploy/web", &local_spec]).took)
        .collect();
    log(format!("healthy runs took {timings:.2?}"));
    let json = Run::doctor(
        &rpf,
        &kubeconfig,
        &["-n", &ns, "-o", "json", "deploy/web", &local_spec],
    );
    assert_eq!(json.code, Some(0));
    let objects = json.json();
    assert!(
        objects[..15].iter().all(|o| o["status"] == "pass"),
        "{}",
        json.stdout
    );
    assert_eq!(objects[15]["check"], "summary");
    assert_eq!(objects[15]["passed"], 15);

    // 2. A pod without the sidecar.
    let run = Run::doctor(&rpf, &kubeconfig, &["-n", &ns, "pod/plain"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.status("target"), "PASS");
    assert_eq!(run.status("injection"), "FAIL");
    assert!(
        run.line("injection").contains(&format!(
            "pod {ns}/plain has no rpf-sidecar container: it has no rpf.dev/enabled annotation"
        )),
        "{}",
        run.line("injection")
    );
    assert!(run.next("injection").unwrap().contains("rpf inject"));
    assert_eq!(run.status("sidecar"), "SKIP");
    assert_eq!(run.status("webhook-namespace"), "PASS");

    // 3. A namespace the webhook does not serve.
    let run = Run::doctor(&rpf, &kubeconfig, &["-n", &off, "orphan"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(run.status("webhook"), "PASS");
    assert_eq!(run.status("webhook-namespace"), "FAIL");
    assert!(
        run.line("webhook-namespace")
            .contains("fail `rpf.dev/injection NotIn (disabled)` of the namespaceSelector"),
        "{}",
        run.line("webhook-namespace")
    );
    assert!(
        run.line("injection").contains("it opted in, but namespace"),
        "{}",
        run.line("injection")
    );

    // 4. A ServiceAccount without RBAC.
    let nobody = sa_kubeconfig(&kubectl, &ns, "nobody", &tmp);
    let run = Run::doctor(&rpf, &nobody, &["deploy/web", &local_spec]);
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.status("api-server"),
        "PASS",
        "authenticated, only not allowed"
    );
    assert_eq!(run.status("rbac"), "FAIL");
    assert!(
        run.line("rbac").contains(&format!(
            "not allowed to get pods, get deployments.apps, list pods, create pods/portforward, get pods/portforward in namespace \"{ns}\""
        )),
        "{}",
        run.line("rbac")
    );
    assert_eq!(
        run.status("webhook"),
        "SKIP",
        "may not read cluster objects"
    );
    assert_eq!(run.status("target"), "FAIL");
    assert_eq!(run.status("local-target"), "PASS");

    // 5. A stopped local target.
    let stopped = format!("8080:{}", closed_port());
    let run = Run::doctor(&rpf, &kubeconfig, &["-n", &ns, "deploy/web", &stopped]);
    assert_eq!(run.code, Some(1));
    for name in &ALL_CHECKS[..14] {
        assert_eq!(run.status(name), "PASS", "{name}");
    }
    assert_eq!(run.status("local-target"), "FAIL");
    assert!(run.line("local-target").contains("connection refused"));
    assert!(run
        .stderr
        .contains("error: failed: local-target; each says"));

    // 6. The webhook down: a pod created meanwhile is admitted without the
    //    sidecar; the doctor says the webhook is not ready, and once it is
    //    back, that the pod was created while it was down.
    scale_webhook(&kubectl, 0);
    apply_stdin(
        &kubectl,
        &["apply", "-f", "-"],
        &pod_yaml(&ns, "missed", &client_image, true),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let run = Run::doctor(&rpf, &kubeconfig, &["-n", &ns, "pod/missed"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(
        run.status("webhook-ready"),
        "FAIL",
        "{}",
        run.line("webhook-ready")
    );
    assert!(run.line("webhook-ready").contains("has 0/0 replicas ready"));
    assert!(run
        .line("injection")
        .contains("it opted in, but the webhook is not ready"));
    scale_webhook(&kubectl, 2);
    let run = wait_for(
        "the doctor to see the webhook ready again",
        Duration::from_secs(60),
        Duration::from_secs(1),
        |last| {
            let run = Run::doctor(&rpf, &kubeconfig, &["-n", &ns, "pod/missed"]);
            *last = run.line("webhook-ready").to_owned();
            (run.status("webhook-ready") == "PASS").then_some(run)
        },
    );
    assert_eq!(run.status("injection"), "FAIL");
    assert!(
        run.line("injection")
            .contains("while the webhook was down: it has been ready only since"),
        "{}",
        run.line("injection")
    );
    assert!(run
        .next("injection")
        .unwrap()
        .starts_with("recreate the pod now"));
}
