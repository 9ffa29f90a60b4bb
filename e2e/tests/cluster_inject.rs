//! Sidecar injection on a real cluster, with the webhook running on this
//! machine and registered by URL.
//!
//! Starts the `rpf-webhook` binary on 127.0.0.1 with a test certificate,
//! registers a MutatingWebhookConfiguration (`clientConfig.url`,
//! `failurePolicy: Ignore`) limited by `namespaceSelector` to a namespace
//! the test creates, then proves on real API objects that:
//! - an annotated pod and the pod of an annotated Deployment get the sidecar
//!   exactly once and the `rpf.dev/injected` mark;
//! - a pod that `rpf inject` already injected is left alone (the two
//!   injectors agree);
//! - a non-annotated pod is untouched, and a garbage annotation value gives
//!   an admission warning and no sidecar;
//! - with the webhook killed, pod creation still works (fail open).
//!
//! A second test runs two replicas in `--self-managed-tls` mode against the
//! real API server: exactly one creates the Secret, both serve the same
//! certificate, the CA lands in the `caBundle` of every webhook of a
//! configuration created after they started, and a restart reuses it.
//!
//! Everything is removed at the end, also on failure (Drop guards).
//!
//! The API server must be able to reach 127.0.0.1 on this machine, i.e.
//! run on it (a single-node lab, kind with host networking, ...).
//!
//! ```sh
//! RPF_E2E_KUBECONFIG=~/.kube/config cargo test -p rpf-e2e --test cluster_inject -- --ignored --nocapture
//! ```
//!
//! Environment:
//! - `RPF_E2E_KUBECONFIG`: the cluster (without it the test prints
//!   "skipped: RPF_E2E_KUBECONFIG not set" and returns).
//! - `RPF_E2E_KUBECTL`: kubectl to use (default `kubectl` on `PATH`).
//! - `RPF_E2E_CLIENT_IMAGE`: image for the app containers (default
//!   `busybox:1.36`); pods are not required to run, only to be admitted.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rpf_e2e::cluster::{wait_for, Kubectl};
use rpf_inject::InjectConfig;
use rpf_proto::{SIDECAR_CONTAINER, SOFTWARE_VERSION};
use rpf_webhook::tls::{self, Validity};
use serde_json::Value;

const SIDECAR_IMAGE: &str = "rpf-e2e.invalid/rpf-sidecar:inject-test";

fn log(msg: impl AsRef<str>) {
    eprintln!("[cluster_inject] {}", msg.as_ref());
}

/// Path of the `rpf-webhook` binary, built on demand (a test of another
/// package does not get it built by `cargo test -p rpf-e2e`).
fn webhook_bin() -> PathBuf {
    let mut dir = std::env::current_exe().expect("current exe");
    dir.pop();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("rpf-webhook");
    if !bin.exists() {
        log("building rpf-webhook");
        let profile = dir.file_name().and_then(|p| p.to_str()).unwrap_or("debug");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "rpf-webhook", "--bin", "rpf-webhook"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build -p rpf-webhook failed");
    }
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

/// The webhook process; killed on drop.
struct Webhook {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Webhook {
    fn start(kubeconfig: &PathBuf, port: u16, args: &[&str]) -> Webhook {
        let mut child = Command::new(webhook_bin())
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--sidecar-image",
                SIDECAR_IMAGE,
                "--sidecar-image-pull-policy",
                "Never",
                "--shutdown-delay",
                "0s",
            ])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rpf-webhook");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Webhook { child, lines }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    fn wait_log(&mut self, needle: &str) -> String {
        wait_for(
            &format!("webhook log line containing {needle:?}"),
            Duration::from_secs(30),
            Duration::from_millis(50),
            |last| {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("rpf-webhook exited ({status}):\n{}", self.log());
                }
                *last = self.log();
                self.lines
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|l| l.contains(needle))
                    .cloned()
            },
        )
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Deletes the webhook configuration and the namespace, even on panic.
struct Cleanup {
    kubectl: Kubectl,
    namespace: String,
    webhook_config: String,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // The configuration first: nothing else may be sent to a dead URL.
        let _ = self.kubectl.try_run([
            "delete",
            "mutatingwebhookconfiguration",
            &self.webhook_config,
            "--ignore-not-found",
        ]);
        let _ = self.kubectl.try_run([
            "delete",
            "namespace",
            &self.namespace,
            "--ignore-not-found",
            "--wait=false",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
        log(format!(
            "cleaned up namespace {} and webhook configuration {}",
            self.namespace, self.webhook_config
        ));
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A name unique to this run.
fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis()
            % 1_000_000
    )
}

fn apply(kubectl: &Kubectl, yaml: &str) -> (String, String) {
    let mut child = kubectl
        .cmd(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubectl apply");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "kubectl apply failed:\n{stderr}\n--- input\n{yaml}"
    );
    (stdout, stderr)
}

fn pod_yaml(ns: &str, name: &str, image: &str, enabled: Option<&str>) -> String {
    let annotations = match enabled {
        Some(v) => format!("\n  annotations:\n    rpf.dev/enabled: \"{v}\""),
        None => String::new(),
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}{annotations}\n\
         spec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: app\n    image: {image}\n    \
         imagePullPolicy: IfNotPresent\n    command: [sleep, \"3600\"]\n"
    )
}

fn get_pod(kubectl: &Kubectl, ns: &str, name: &str) -> Value {
    serde_json::from_str(&kubectl.run(["get", "pod", "-n", ns, name, "-o", "json"])).unwrap()
}

fn container_names(pod: &Value, list: &str) -> Vec<String> {
    pod["spec"][list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn sidecar_count(pod: &Value) -> usize {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|l| container_names(pod, l))
        .filter(|n| n == SIDECAR_CONTAINER)
        .count()
}

/// Checks an injected pod; `native` says where the sidecar must be.
fn assert_injected(pod: &Value, native: bool) {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    assert_eq!(sidecar_count(pod), 1, "pod {name}: sidecar count\n{pod:#}");
    assert_eq!(
        pod["metadata"]["annotations"]["rpf.dev/injected"], SOFTWARE_VERSION,
        "pod {name}: mark"
    );
    let list = if native {
        "initContainers"
    } else {
        "containers"
    };
    let sidecar = pod["spec"][list]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == SIDECAR_CONTAINER))
        .unwrap_or_else(|| panic!("pod {name}: no sidecar in {list}\n{pod:#}"));
    assert_eq!(sidecar["image"], SIDECAR_IMAGE);
    assert_eq!(sidecar["imagePullPolicy"], "Never");
    assert_eq!(sidecar["securityContext"]["runAsNonRoot"], true);
    assert_eq!(sidecar["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(
        sidecar["env"][0]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    if native {
        assert_eq!(container_names(pod, "initContainers")[0], SIDECAR_CONTAINER);
        assert_eq!(sidecar["restartPolicy"], "Always");
    }
}

fn assert_untouched(pod: &Value) {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    assert_eq!(
        sidecar_count(pod),
        0,
        "pod {name} must not be injected\n{pod:#}"
    );
    assert!(
        pod["metadata"]["annotations"]
            .get("rpf.dev/injected")
            .is_none(),
        "pod {name} must not be marked"
    );
}

#[test]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
fn webhook_injects_on_a_real_cluster() {
    let Some(kubectl) = Kubectl::for_cluster("cluster_inject") else {
        return;
    };
    let kubeconfig = kubectl.kubeconfig.clone().expect("cluster kubeconfig");
    let image = std::env::var("RPF_E2E_CLIENT_IMAGE")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "busybox:1.36".to_owned());
    let minor = kubectl.server_minor();
    let native = minor >= 29;
    log(format!(
        "server 1.{minor}: expecting {} sidecars",
        if native { "native" } else { "classic" }
    ));

    let suffix = unique_suffix();
    let ns = format!("rpf-inject-e2e-{suffix}");
    let config_name = format!("rpf-inject-e2e-{suffix}");
    let dir = std::env::temp_dir().join(format!("rpf-inject-e2e-{suffix}"));
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup {
        kubectl: kubectl.clone(),
        namespace: ns.clone(),
        webhook_config: config_name.clone(),
        dir: dir.clone(),
    };

    // 1. The webhook on the host, with a test CA.
    let material = tls::generate(
        &["127.0.0.1".to_owned(), "localhost".to_owned()],
        Validity::default(),
    )
    .unwrap();
    std::fs::write(dir.join("tls.crt"), &material.cert).unwrap();
    std::fs::write(dir.join("tls.key"), &material.key).unwrap();
    let port = free_port();
    let mut webhook = Webhook::start(
        &kubeconfig,
        port,
        &[
            "--tls-cert",
            dir.join("tls.crt").to_str().unwrap(),
            "--tls-key",
            dir.join("tls.key").to_str().unwrap(),
            "--native-sidecar",
            "auto",
        ],
    );
    webhook.wait_log("serving HTTPS");
    // --native-sidecar auto asked the real API server.
    let mode = webhook.wait_log("sidecar mode chosen from the API server version");
    assert!(
        mode.contains(&format!("native_sidecar={native}")),
        "auto detection: {mode}"
    );
    log(format!("webhook up on 127.0.0.1:{port}: {mode}"));

    // 2. The namespace and the webhook configuration, limited to it.
    kubectl.run(["create", "namespace", &ns]);
    kubectl.run([
        "label",
        "namespace",
        &ns,
        &format!("rpf-e2e-inject={suffix}"),
    ]);
    wait_for(
        "the default ServiceAccount",
        Duration::from_secs(60),
        Duration::from_millis(200),
        |last| match kubectl.try_run(["get", "serviceaccount", "default", "-n", &ns]) {
            Ok(_) => Some(()),
            Err(e) => {
                *last = e;
                None
            }
        },
    );
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(&material.ca_cert);
    apply(
        &kubectl,
        &format!(
            "apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {config_name}
webhooks:
- name: inject.rpf.dev
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Ignore
  timeoutSeconds: 5
  reinvocationPolicy: Never
  clientConfig:
    url: https://127.0.0.1:{port}/mutate
    caBundle: {ca_bundle}
  rules:
  - operations: [CREATE]
    apiGroups: [\"\"]
    apiVersions: [v1]
    resources: [pods]
  namespaceSelector:
    matchLabels:
      rpf-e2e-inject: \"{suffix}\"
"
        ),
    );

    // The API server picks configurations up asynchronously: create probe
    // pods until one is injected.
    let mut probes = 0;
    wait_for(
        "the API server to call the webhook",
        Duration::from_secs(60),
        Duration::from_millis(500),
        |last| {
            probes += 1;
            let name = format!("probe-{probes}");
            apply(&kubectl, &pod_yaml(&ns, &name, &image, Some("true")));
            let pod = get_pod(&kubectl, &ns, &name);
            let _ = kubectl.try_run(["delete", "pod", "-n", &ns, &name, "--wait=false"]);
            *last = format!(
                "{name}: containers {:?}",
                container_names(&pod, "containers")
            );
            (sidecar_count(&pod) > 0).then_some(())
        },
    );
    log(format!("webhook active after {probes} probe pod(s)"));

    // 3. An annotated pod: injected exactly once, marked.
    apply(&kubectl, &pod_yaml(&ns, "annotated", &image, Some("true")));
    let pod = get_pod(&kubectl, &ns, "annotated");
    assert_injected(&pod, native);
    log(format!(
        "annotated pod: containers {:?}, initContainers {:?}, rpf.dev/injected={}",
        container_names(&pod, "containers"),
        container_names(&pod, "initContainers"),
        pod["metadata"]["annotations"]["rpf.dev/injected"]
    ));

    // 4. A non-annotated pod: untouched.
    apply(&kubectl, &pod_yaml(&ns, "plain", &image, None));
    let pod = get_pod(&kubectl, &ns, "plain");
    assert_untouched(&pod);
    assert_eq!(container_names(&pod, "containers"), ["app"]);
    log("plain pod: untouched");

    // 5. A garbage value: admitted, not injected, and kubectl shows why.
    let (_, stderr) = apply(&kubectl, &pod_yaml(&ns, "garbage", &image, Some("yes")));
    assert_untouched(&get_pod(&kubectl, &ns, "garbage"));
    assert!(
        stderr.contains("rpf: rpf.dev/enabled: \"yes\" is neither"),
        "expected an admission warning, kubectl said:\n{stderr}"
    );
    log(format!(
        "garbage annotation: warning shown: {}",
        stderr.trim()
    ));

    // 6. A pod already injected by `rpf inject` (the library the CLI uses):
    //    the webhook must not add a second sidecar.
    let cfg = InjectConfig::new(SIDECAR_IMAGE)
        .with_image_pull_policy("Never")
        .with_native_sidecar(native);
    let (pre_injected, _) = rpf_inject::inject_manifests(
        &pod_yaml(&ns, "pre-injected", &image, Some("true")),
        &cfg,
        false,
    )
    .unwrap();
    apply(&kubectl, &pre_injected);
    let pod = get_pod(&kubectl, &ns, "pre-injected");
    assert_injected(&pod, native);
    log("pod injected by rpf inject: still exactly one sidecar");

    // 7. An annotated Deployment: its pod (generateName, created by the
    //    ReplicaSet controller) is injected once; the Deployment is not.
    apply(
        &kubectl,
        &format!(
            "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
      annotations:
        rpf.dev/enabled: \"true\"
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: app
        image: {image}
        imagePullPolicy: IfNotPresent
        command: [sleep, \"3600\"]
"
        ),
    );
    let pod: Value = wait_for(
        "the Deployment's pod",
        Duration::from_secs(60),
        Duration::from_millis(300),
        |last| {
            let list: Value = serde_json::from_str(
                &kubectl.run(["get", "pods", "-n", &ns, "-l", "app=web", "-o", "json"]),
            )
            .unwrap();
            *last = format!("{} pods", list["items"].as_array().map_or(0, Vec::len));
            list["items"].as_array().and_then(|a| a.first()).cloned()
        },
    );
    assert!(
        pod["metadata"]["generateName"]
            .as_str()
            .is_some_and(|g| g.starts_with("web-")),
        "a ReplicaSet pod"
    );
    assert_injected(&pod, native);
    let deploy: Value =
        serde_json::from_str(&kubectl.run(["get", "deployment", "-n", &ns, "web", "-o", "json"]))
            .unwrap();
    assert_eq!(
        container_names(&deploy["spec"]["template"], "containers"),
        ["app"],
        "the Deployment itself is not mutated"
    );
    log(format!(
        "Deployment pod {}: injected once",
        pod["metadata"]["name"].as_str().unwrap_or_default()
    ));

    // What the webhook saw.
    let served = webhook.log();
    let injections = served.matches("injected the rpf sidecar").count();
    assert!(
        injections >= 3,
        "expected >= 3 injections in the webhook log:\n{served}"
    );

    // 8. The webhook dies: pods are still created (failurePolicy Ignore),
    //    without the sidecar.
    webhook.kill();
    log("webhook killed");
    let start = std::time::Instant::now();
    apply(&kubectl, &pod_yaml(&ns, "while-down", &image, Some("true")));
    let pod = get_pod(&kubectl, &ns, "while-down");
    assert_untouched(&pod);
    log(format!(
        "pod created with the webhook down in {:?}, not injected",
        start.elapsed()
    ));
}

/// The certificate a webhook on 127.0.0.1:`port` presents, verified
/// against `ca_pem` for the DNS name `name`.
fn served_cert(port: u16, ca_pem: &str, name: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).expect("ca.crt is PEM"))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from(name.to_owned()).unwrap(),
    )
    .unwrap();
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp)
            .unwrap_or_else(|e| panic!("TLS to 127.0.0.1:{port} as {name}: {e}"));
    }
    conn.peer_certificates().unwrap()[0].to_vec()
}

fn secret_data(kubectl: &Kubectl, ns: &str, name: &str) -> Option<serde_json::Map<String, Value>> {
    let json = kubectl
        .try_run(["get", "secret", "-n", ns, name, "-o", "json"])
        .ok()?;
    let v: Value = serde_json::from_str(&json).unwrap();
    v["data"].as_object().cloned()
}

fn decode(v: &Value) -> String {
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .unwrap(),
    )
    .unwrap()
}

#[test]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
fn self_managed_tls_on_a_real_cluster() {
    let Some(kubectl) = Kubectl::for_cluster("cluster_inject (self-managed TLS)") else {
        return;
    };
    let kubeconfig = kubectl.kubeconfig.clone().expect("cluster kubeconfig");
    let suffix = unique_suffix();
    let ns = format!("rpf-tls-e2e-{suffix}");
    let config_name = format!("rpf-tls-e2e-{suffix}");
    let dir = std::env::temp_dir().join(format!("rpf-tls-e2e-{suffix}"));
    let _cleanup = Cleanup {
        kubectl: kubectl.clone(),
        namespace: ns.clone(),
        webhook_config: config_name.clone(),
        dir,
    };
    kubectl.run(["create", "namespace", &ns]);
    // A configuration with two webhooks and no caBundle, matching no
    // namespace: only its caBundle matters here.
    let webhook = |name: &str| {
        format!(
            "- name: {name}
  admissionReviewVersions: [v1]
  sideEffects: None
  failurePolicy: Ignore
  clientConfig:
    url: https://127.0.0.1:1/mutate
  rules:
  - operations: [CREATE]
    apiGroups: [\"\"]
    apiVersions: [v1]
    resources: [pods]
  namespaceSelector:
    matchLabels:
      rpf-e2e-never: \"{suffix}\"
"
        )
    };
    let secret = "rpf-webhook-tls";
    let args = [
        "--self-managed-tls",
        "--namespace",
        &ns,
        "--service-name",
        "rpf-webhook",
        "--secret-name",
        secret,
        "--webhook-config-name",
        &config_name,
        "--native-sidecar",
        "never",
    ];

    // Two replicas start at once, before the configuration exists.
    let (p1, p2) = (free_port(), free_port());
    let mut a = Webhook::start(&kubeconfig, p1, &args);
    let mut b = Webhook::start(&kubeconfig, p2, &args);
    a.wait_log("serving the self-managed certificate");
    b.wait_log("serving the self-managed certificate");
    let created = [&a, &b]
        .iter()
        .filter(|w| w.log().contains("created a new CA and serving certificate"))
        .count();
    assert_eq!(
        created,
        1,
        "exactly one replica creates the Secret:\n--- a\n{}\n--- b\n{}",
        a.log(),
        b.log()
    );
    a.wait_log("waiting for the webhook configuration");
    apply(
        &kubectl,
        &format!(
            "apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {config_name}
webhooks:
{}{}",
            webhook("one.rpf.dev"),
            webhook("two.rpf.dev")
        ),
    );

    let data = secret_data(&kubectl, &ns, secret).expect("the Secret exists");
    for key in ["tls.crt", "tls.key", "ca.crt", "ca.key"] {
        assert!(data.contains_key(key), "Secret lacks {key}");
    }
    let ca = decode(&data["ca.crt"]);
    // Both webhooks of the configuration get the CA (within the backoff).
    wait_for(
        "caBundle on every webhook",
        Duration::from_secs(90),
        Duration::from_millis(500),
        |last| {
            let v: Value = serde_json::from_str(&kubectl.run([
                "get",
                "mutatingwebhookconfiguration",
                &config_name,
                "-o",
                "json",
            ]))
            .unwrap();
            let bundles: Vec<String> = v["webhooks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| decode(&w["clientConfig"]["caBundle"]))
                .collect();
            *last = format!(
                "{} bundles set",
                bundles.iter().filter(|b| **b == ca).count()
            );
            bundles.iter().all(|b| *b == ca).then_some(())
        },
    );
    // Both replicas serve the same certificate, valid for the Service name
    // under the published CA.
    let svc_name = format!("rpf-webhook.{ns}.svc");
    let cert_a = served_cert(p1, &ca, &svc_name);
    let cert_b = served_cert(p2, &ca, &svc_name);
    assert_eq!(cert_a, cert_b, "the replicas serve different certificates");
    log(format!(
        "self-managed: one Secret, caBundle on 2 webhooks, both replicas serve the same certificate for {svc_name}"
    ));

    // A restart reuses the stored material.
    a.kill();
    b.kill();
    let p3 = free_port();
    let mut c = Webhook::start(&kubeconfig, p3, &args);
    c.wait_log("serving the self-managed certificate");
    assert!(!c.log().contains("created a new CA"), "{}", c.log());
    assert_eq!(served_cert(p3, &ca, &svc_name), cert_a);
    assert_eq!(
        secret_data(&kubectl, &ns, secret).unwrap(),
        data,
        "the Secret was rewritten on restart"
    );
    log("self-managed: restart reuses the stored certificate");
}
