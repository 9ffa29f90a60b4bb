//! Chaos on a real cluster: the failures a cluster has in real life, while
//! traffic flows.
//!
//! `cluster_chaos_attach`: a client in the pod requests a host server
//! through `rpf attach` every 200 ms while, one after the other, the API
//! server restarts, the kubelet restarts, and the sidecar container is
//! killed. After a restart of the API server or the kubelet the channel is
//! lost, rpf reconnects and the sidecar resumes the session (its ports
//! stayed bound for the grace period): requests made while the channel is
//! down wait and succeed; only one in flight on the broken channel may
//! fail with it. After
//! the sidecar is killed the kubelet restarts it, rpf reconnects and binds
//! a new session, and requests succeed again.
//!
//! `cluster_chaos_webhook`: the webhook installed with the repo's
//! manifests (two replicas, self-managed TLS) while pods are created: a
//! replica deleted during a rollout of 20 opted-in pods (all 20 get the
//! sidecar), a replica's process killed during another (every pod is
//! created; the admission in flight to the killed process fails open, so
//! a pod may miss the sidecar: the count is reported), both replicas down
//! (pods are created without the sidecar: fail open), a wrong `caBundle`
//! repaired by the webhook without a restart, and the serving certificate
//! rotated while pods are created (every pod gets the sidecar).
//!
//! ```sh
//! RPF_E2E_KUBECONFIG=~/.kube/config \
//! RPF_E2E_RESTART_APISERVER='…' RPF_E2E_RESTART_KUBELET='…' \
//!   cargo test -p rpf-e2e --test cluster_chaos -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Environment (besides `RPF_E2E_KUBECONFIG` and the image variables of
//! `cluster_attach`):
//! - `RPF_E2E_RESTART_APISERVER`, `RPF_E2E_RESTART_KUBELET`: shell commands
//!   that restart the API server or the kubelet and return once it runs
//!   again (how depends on the cluster: a systemd unit, a static pod, a
//!   process). A phase whose command is not set is skipped and the test's
//!   last line names it.
//! - Killing a container's process needs the node's process table: run the
//!   tests on the (single) node; otherwise those phases are skipped and
//!   named the same way.
//!
//! The webhook test installs rpf cluster-wide and refuses to start when it
//! is installed already (as `cluster_mission` and `cluster_doctor` do).

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rpf_e2e::cluster::{
    apply_stdin, env_or, host_server, load_images, render_install, rpf_binary, scale_webhook,
    wait_for, wait_injecting, wait_not_terminating, webhook_rollout, DeleteNamespaces, Installed,
    Kubectl, Watched, WEBHOOK, WEBHOOK_NS,
};
use rpf_webhook::tls::{self, Validity};
use serde_json::Value;

fn log(msg: impl AsRef<str>) {
    eprintln!("[cluster_chaos] {}", msg.as_ref());
}

/// The pod port the client in the pod requests.
const REMOTE: u16 = 18080;

fn apply(kubectl: &Kubectl, yaml: &str) {
    if let Err(e) = apply_stdin(kubectl, &["apply", "-f", "-"], yaml) {
        panic!("kubectl apply failed: {e}\n{yaml}");
    }
}

/// Runs a shell command given in the environment variable `var`; `None`
/// when it is not set (the phase is skipped).
fn run_configured(var: &str) -> Option<()> {
    let cmd = std::env::var(var).ok().filter(|c| !c.trim().is_empty())?;
    log(format!("running {var}"));
    let status = Command::new("sh")
        .args(["-c", &cmd])
        .status()
        .unwrap_or_else(|e| panic!("run {var}: {e}"));
    assert!(status.success(), "{var} failed: {status}");
    Some(())
}

/// Waits until the API server answers again.
fn api_server_ready(kubectl: &Kubectl) {
    wait_for(
        "the API server's /readyz",
        Duration::from_secs(120),
        Duration::from_millis(500),
        |last| {
            let r = kubectl.try_run(["get", "--raw", "/readyz"]);
            *last = format!("{r:?}");
            r.ok().filter(|s| s.trim() == "ok").map(|_| ())
        },
    );
}

/// `CONTAINER_ID` of a container of a pod, without the runtime prefix.
fn container_id(kubectl: &Kubectl, ns: &str, pod: &str, container: &str) -> String {
    let id = kubectl.run([
        "-n",
        ns,
        "get",
        "pod",
        pod,
        "-o",
        &format!("jsonpath={{.status.containerStatuses[?(@.name==\"{container}\")].containerID}}"),
    ]);
    id.rsplit("://")
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Process ids on this machine whose cgroup names the container: the
/// container's processes when this machine is its node.
fn container_pids(id: &str) -> Vec<u32> {
    if id.is_empty() {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        cgroup.contains(id).then_some(pid)
    })
    .collect()
}

/// Kills a container's processes with SIGKILL, as an OOM kill or a crash
/// would; `false` when they are not visible from here.
fn kill_container(kubectl: &Kubectl, ns: &str, pod: &str, container: &str) -> bool {
    let pids = container_pids(&container_id(kubectl, ns, pod, container));
    if pids.is_empty() {
        return false;
    }
    for pid in &pids {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    log(format!("killed {ns}/{pod} {container} (pids {pids:?})"));
    true
}

fn restart_count(kubectl: &Kubectl, ns: &str, pod: &str, container: &str) -> u32 {
    kubectl
        .run([
            "-n",
            ns,
            "get",
            "pod",
            pod,
            "-o",
            &format!(
                "jsonpath={{.status.containerStatuses[?(@.name==\"{container}\")].restartCount}}"
            ),
        ])
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Waits for the next JSON event `name` from `rpf attach -o json`.
fn event(attach: &mut Watched, name: &str, timeout: Duration) -> Value {
    let tag = format!("\"event\":\"{name}\"");
    attach.wait_line(&format!("`{name}` event"), timeout, |line| {
        let json = line.strip_prefix("stdout: ")?;
        json.contains(&tag)
            .then(|| serde_json::from_str(json).expect("events are JSON"))
    })
}

/// The client loop's results so far: (ok, failed).
fn loop_counts(kubectl: &Kubectl, ns: &str) -> (usize, usize) {
    let log = kubectl.run([
        "-n",
        ns,
        "exec",
        "web",
        "-c",
        "app",
        "--",
        "cat",
        "/tmp/loop.log",
    ]);
    let ok = log.lines().filter(|l| l.starts_with("ok ")).count();
    let failed = log.lines().filter(|l| l.starts_with("fail ")).count();
    (ok, failed)
}

/// Waits until the client loop has `more` successes past `ok`.
fn loop_flows(kubectl: &Kubectl, ns: &str, ok: usize, more: usize) -> (usize, usize) {
    wait_for(
        "requests from the pod to succeed",
        Duration::from_secs(90),
        Duration::from_millis(500),
        |last| {
            let counts = loop_counts(kubectl, ns);
            *last = format!("{counts:?}");
            (counts.0 >= ok + more).then_some(counts)
        },
    )
}

#[test]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
fn cluster_chaos_attach() {
    let Some(kubectl) = Kubectl::for_cluster("cluster_chaos_attach") else {
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

    let (ns, _namespace) = DeleteNamespaces::create(&kubectl, "rpf-e2e-chaos");
    // The sidecar as the webhook injects it (`serve`, so the session
    // outlives a channel), and an app container with a shell and wget.
    apply(
        &kubectl,
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata:
  name: web
  namespace: {ns}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: rpf-sidecar
      image: {sidecar}
      imagePullPolicy: IfNotPresent
      command: ["/rpf-sidecar", "serve", "--control-addr", "127.0.0.1:4499"]
    - name: app
      image: {client}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
"#
        ),
    );
    kubectl.run([
        "-n",
        &ns,
        "wait",
        "--for=condition=Ready",
        "pod/web",
        "--timeout=120s",
    ]);

    let local = host_server("chaos".into());
    let mut attach = Watched::spawn(
        Command::new(&rpf)
            .arg("attach")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["-n", &ns, "-o", "json", "pod/web"])
            .arg(format!("{REMOTE}:127.0.0.1:{local}")),
    );
    event(&mut attach, "forwarding", Duration::from_secs(90));

    // One request every 200 ms, each a line in /tmp/loop.log; detached
    // from the exec session, so it outlives every disruption below.
    // (`timeout`, not wget's -T: busybox 1.35's static wget crashes on it.)
    let script = format!(
        "i=0; while true; do i=$((i+1)); \
         if timeout 60 wget -qO /dev/null http://127.0.0.1:{REMOTE}/ 2>/dev/null; \
         then echo ok $i; else echo fail $i; fi; sleep 0.2; done"
    );
    kubectl.run([
        "-n",
        &ns,
        "exec",
        "web",
        "-c",
        "app",
        "--",
        "sh",
        "-c",
        &format!("setsid sh -c '{script}' </dev/null >/tmp/loop.log 2>&1 &"),
    ]);
    let (ok, failed) = loop_flows(&kubectl, &ns, 0, 5);
    assert_eq!(failed, 0, "requests failed before any disruption");
    log(format!("client loop running: {ok} ok"));

    let mut skipped = Vec::new();
    // The API server and the kubelet: the channel goes, the session stays.
    for (what, var) in [
        ("API server restart", "RPF_E2E_RESTART_APISERVER"),
        ("kubelet restart", "RPF_E2E_RESTART_KUBELET"),
    ] {
        let before = loop_counts(&kubectl, &ns);
        let t0 = Instant::now();
        if run_configured(var).is_none() {
            log(format!("{what}: skipped ({var} not set)"));
            skipped.push(what);
            continue;
        }
        api_server_ready(&kubectl);
        let lost = event(&mut attach, "lost", Duration::from_secs(60));
        assert_eq!(lost["reconnecting"], true, "{lost}");
        let back = event(&mut attach, "reconnected", Duration::from_secs(120));
        let down = t0.elapsed();
        assert_eq!(
            back["resumed"], true,
            "{what}: the sidecar kept the session: {back}"
        );
        let after = loop_flows(&kubectl, &ns, before.0, 10);
        log(format!(
            "{what}: lost ({}), resumed after {down:.1?}; requests ok {} → {}, failed {} → {}",
            lost["error"], before.0, after.0, before.1, after.1
        ));
        // The client is sequential, so at most one request is in flight
        // on the channel when it breaks: that one may be lost with it (a
        // stream cannot move to another channel once bytes went out).
        // Every request made after the break waits for the new channel.
        assert!(
            after.1 - before.1 <= 1,
            "{what}: {} requests from the pod failed while the channel was down",
            after.1 - before.1
        );
    }

    // The sidecar container killed: the kubelet restarts it, rpf binds a
    // new session on it.
    let restarts = restart_count(&kubectl, &ns, "web", "rpf-sidecar");
    let before = loop_counts(&kubectl, &ns);
    if kill_container(&kubectl, &ns, "web", "rpf-sidecar") {
        let lost = event(&mut attach, "lost", Duration::from_secs(60));
        assert_eq!(lost["reconnecting"], true, "{lost}");
        let back = event(&mut attach, "reconnected", Duration::from_secs(120));
        assert_eq!(
            back["resumed"], false,
            "a new sidecar process cannot resume: {back}"
        );
        event(&mut attach, "forwarding", Duration::from_secs(30));
        let after = loop_flows(&kubectl, &ns, before.0, 10);
        let now = restart_count(&kubectl, &ns, "web", "rpf-sidecar");
        assert!(now > restarts, "the sidecar was not restarted ({now})");
        log(format!(
            "sidecar killed: restarted by the kubelet (restarts {restarts} → {now}), rpf bound a new session; \
             requests ok {} → {}, failed while it was down: {}",
            before.0,
            after.0,
            after.1 - before.1
        ));
    } else {
        log("sidecar kill: skipped (its processes are not visible: not run on the node)");
        skipped.push("sidecar kill");
    }

    assert!(attach.child.try_wait().unwrap().is_none(), "rpf exited");
    log(format!(
        "passed in {:.0?}; phases skipped: {}",
        started.elapsed(),
        if skipped.is_empty() {
            "none".to_owned()
        } else {
            skipped.join(", ")
        }
    ));
}

/// An opted-in pod's YAML (bare pod or template metadata + spec).
fn annotated_pod(ns: &str, name: &str, group: &str, image: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{chaos: {group}}}
  annotations: {{rpf.dev/enabled: "true"}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: {image}
      imagePullPolicy: IfNotPresent
      command: ["sleep", "3600"]
"#
    )
}

/// A Deployment of `replicas` opted-in pods labelled `app: NAME`.
fn annotated_deployment(ns: &str, name: &str, image: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {ns}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
      annotations: {{rpf.dev/enabled: "true"}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
        - name: app
          image: {image}
          imagePullPolicy: IfNotPresent
          command: ["sleep", "3600"]
"#
    )
}

/// Pods matching `selector`: (total, with the rpf-sidecar container).
fn injected(kubectl: &Kubectl, ns: &str, selector: &str) -> (usize, usize) {
    let v: Value =
        serde_json::from_str(&kubectl.run(["-n", ns, "get", "pods", "-l", selector, "-o", "json"]))
            .unwrap();
    let pods = v["items"].as_array().cloned().unwrap_or_default();
    let with = pods
        .iter()
        .filter(|p| {
            ["containers", "initContainers"].iter().any(|k| {
                p["spec"][k]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["name"] == "rpf-sidecar"))
            })
        })
        .count();
    (pods.len(), with)
}

/// Waits until `n` pods match `selector`; returns (total, injected).
fn wait_pods(kubectl: &Kubectl, ns: &str, selector: &str, n: usize) -> (usize, usize) {
    wait_for(
        &format!("{n} pods {selector}"),
        Duration::from_secs(120),
        Duration::from_millis(500),
        |last| {
            let counts = injected(kubectl, ns, selector);
            *last = format!("{counts:?}");
            (counts.0 >= n).then_some(counts)
        },
    )
}

/// The webhook's running pods that are not terminating.
fn webhook_pods(kubectl: &Kubectl) -> Vec<String> {
    let v: Value = serde_json::from_str(&kubectl.run([
        "-n",
        WEBHOOK_NS,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=rpf-webhook",
        "-o",
        "json",
    ]))
    .unwrap();
    v["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| {
            p["metadata"]["deletionTimestamp"].is_null() && p["status"]["phase"] == "Running"
        })
        .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
        .collect()
}

fn secret_field(kubectl: &Kubectl, key: &str) -> String {
    let v = kubectl.run([
        "-n",
        WEBHOOK_NS,
        "get",
        "secret",
        "rpf-webhook-tls",
        "-o",
        &format!("jsonpath={{.data.{}}}", key.replace('.', "\\.")),
    ]);
    decode(&v)
}

fn ca_bundle(kubectl: &Kubectl) -> String {
    decode(&kubectl.run([
        "get",
        "mutatingwebhookconfiguration",
        WEBHOOK,
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle}",
    ]))
}

fn decode(b64: &str) -> String {
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .unwrap_or_default(),
    )
    .unwrap_or_default()
}

fn encode(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[test]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
fn cluster_chaos_webhook() {
    let Some(kubectl) = Kubectl::for_cluster("cluster_chaos_webhook") else {
        return;
    };
    let started = Instant::now();
    if kubectl
        .try_run(["get", "mutatingwebhookconfiguration", WEBHOOK])
        .is_ok()
    {
        panic!(
            "MutatingWebhookConfiguration {WEBHOOK} already exists: rpf is installed on this \
             cluster; uninstall it first (kubectl delete -k manifests/)"
        );
    }
    let client = env_or("RPF_E2E_CLIENT_IMAGE", "busybox:1.36");
    let (sidecar, webhook) = load_images(
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-images"),
        &["rpf-sidecar.tar", "rpf-webhook.tar"],
    );
    let rendered = render_install(
        kubectl.server_minor(),
        &sidecar,
        &webhook,
        &Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos-overlay"),
    );
    wait_not_terminating(&kubectl, WEBHOOK_NS);
    let _installed = Installed {
        kubectl: kubectl.clone(),
        file: rendered.clone(),
        armed: true,
    };
    kubectl.run(["apply", "-f", rendered.to_str().unwrap()]);
    // A short re-check, so the repairs below take seconds, not the
    // default minute.
    kubectl.run([
        "-n",
        WEBHOOK_NS,
        "set",
        "env",
        &format!("deployment/{WEBHOOK}"),
        "RPF_WEBHOOK_RECHECK_INTERVAL=2s",
    ]);
    webhook_rollout(&kubectl);
    let ca = wait_for(
        "the caBundle",
        Duration::from_secs(90),
        Duration::from_secs(1),
        |last| {
            let ca = ca_bundle(&kubectl);
            *last = format!("{} bytes", ca.len());
            (ca.contains("BEGIN CERTIFICATE")).then_some(ca)
        },
    );

    let (ns, _namespace) = DeleteNamespaces::create(&kubectl, "rpf-e2e-chaos");
    log("webhook installed");
    wait_injecting(
        &kubectl,
        &annotated_pod(&ns, "probe", "probe", &client),
        Duration::from_secs(60),
    );
    let mut skipped = Vec::new();

    // 1. A replica deleted (a drain, a rollout) during a rollout of 20
    //    opted-in pods: it stops being ready before it stops serving, so
    //    every pod gets the sidecar.
    let replicas = webhook_pods(&kubectl);
    assert_eq!(replicas.len(), 2, "two webhook replicas: {replicas:?}");
    apply(&kubectl, &annotated_deployment(&ns, "roll-a", &client, 20));
    kubectl.run([
        "-n",
        WEBHOOK_NS,
        "delete",
        "pod",
        &replicas[0],
        "--wait=false",
    ]);
    let (total, with) = wait_pods(&kubectl, &ns, "app=roll-a", 20);
    log(format!(
        "replica {} deleted during a rollout: {with} of {total} pods injected",
        replicas[0]
    ));
    assert_eq!((total, with), (20, 20));
    kubectl.run(["-n", &ns, "delete", "deployment", "roll-a", "--wait=false"]);
    webhook_rollout(&kubectl);

    // 2. A replica's process killed during a rollout: no drain, so the
    //    API server may call it until its endpoint goes. Every pod is
    //    created (fail open); the count of pods without the sidecar is the
    //    price of a hard kill.
    let replicas = webhook_pods(&kubectl);
    apply(&kubectl, &annotated_deployment(&ns, "roll-b", &client, 20));
    if kill_container(&kubectl, WEBHOOK_NS, &replicas[0], "webhook") {
        let (total, with) = wait_pods(&kubectl, &ns, "app=roll-b", 20);
        log(format!(
            "replica {} killed during a rollout: {with} of {total} pods injected, {} created without the sidecar",
            replicas[0],
            total - with
        ));
        assert_eq!(total, 20, "every pod is created");
    } else {
        log("webhook replica kill: skipped (its processes are not visible: not run on the node)");
        skipped.push("webhook replica kill");
    }
    kubectl.run(["-n", &ns, "delete", "deployment", "roll-b", "--wait=false"]);
    webhook_rollout(&kubectl);

    // 3. Both replicas down: pods are created, without the sidecar.
    scale_webhook(&kubectl, 0);
    apply(&kubectl, &annotated_pod(&ns, "while-down", "down", &client));
    let (total, with) = injected(&kubectl, &ns, "chaos=down");
    assert_eq!((total, with), (1, 0), "fail open: created, no sidecar");
    log("both replicas down: the opted-in pod was created without the sidecar (fail open)");
    kubectl.run(["-n", &ns, "delete", "pod", "while-down", "--wait=false"]);
    scale_webhook(&kubectl, 2);

    // 4. A wrong caBundle (another CA, as a stale re-apply or a hand edit
    //    leaves it) is repaired by the running replicas.
    let names = [format!("{WEBHOOK}.{WEBHOOK_NS}.svc")];
    let other = tls::generate(&names, Validity::default()).unwrap();
    kubectl.run([
        "patch",
        "mutatingwebhookconfiguration",
        WEBHOOK,
        "--type=json",
        "-p",
        &format!(
            r#"[{{"op":"replace","path":"/webhooks/0/clientConfig/caBundle","value":"{}"}}]"#,
            encode(&other.ca_cert)
        ),
    ]);
    let t0 = Instant::now();
    wait_for(
        "the caBundle to be repaired",
        Duration::from_secs(60),
        Duration::from_millis(250),
        |last| {
            let now = ca_bundle(&kubectl);
            *last = format!("{} bytes", now.len());
            (now == ca).then_some(())
        },
    );
    log(format!(
        "a wrong caBundle was repaired in {:.1?}",
        t0.elapsed()
    ));

    // 5. The serving certificate rotated while pods are created: a leaf
    //    that expires in a day makes the replicas issue a new one under
    //    the same CA, so `caBundle` stays and no admission fails.
    let old_leaf = secret_field(&kubectl, "tls.crt");
    let ca_key = secret_field(&kubectl, "ca.key");
    let all_names: Vec<String> = [
        format!("{WEBHOOK}.{WEBHOOK_NS}.svc"),
        format!("{WEBHOOK}.{WEBHOOK_NS}.svc.cluster.local"),
        format!("{WEBHOOK}.{WEBHOOK_NS}"),
        WEBHOOK.to_owned(),
    ]
    .into();
    let (short_cert, short_key) =
        tls::issue(&ca, &ca_key, &all_names, Duration::from_secs(24 * 3600)).unwrap();
    let load = {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        let client = client.clone();
        thread::spawn(move || {
            for i in 0..30 {
                apply(
                    &kubectl,
                    &annotated_pod(&ns, &format!("load-{i}"), "load", &client),
                );
                thread::sleep(Duration::from_millis(300));
            }
        })
    };
    thread::sleep(Duration::from_secs(2));
    kubectl.run([
        "-n",
        WEBHOOK_NS,
        "patch",
        "secret",
        "rpf-webhook-tls",
        "-p",
        &format!(
            r#"{{"data":{{"tls.crt":"{}","tls.key":"{}"}}}}"#,
            encode(&short_cert),
            encode(&short_key)
        ),
    ]);
    let t0 = Instant::now();
    let renewed = wait_for(
        "the replicas to renew the serving certificate",
        Duration::from_secs(60),
        Duration::from_millis(250),
        |last| {
            let leaf = secret_field(&kubectl, "tls.crt");
            *last = if leaf == short_cert {
                "still the expiring one".into()
            } else {
                "other".into()
            };
            (leaf != short_cert && leaf != old_leaf).then_some(leaf)
        },
    );
    let renewal = t0.elapsed();
    load.join().expect("the load thread");
    assert!(!renewed.is_empty());
    assert_eq!(ca_bundle(&kubectl), ca, "renewal keeps the CA and caBundle");
    let (total, with) = injected(&kubectl, &ns, "chaos=load");
    log(format!(
        "serving certificate rotated under load (renewed {renewal:.1?} after the change): {with} of {total} pods injected"
    ));
    assert_eq!((total, with), (30, 30));

    log(format!(
        "passed in {:.0?}; phases skipped: {}",
        started.elapsed(),
        if skipped.is_empty() {
            "none".to_owned()
        } else {
            skipped.join(", ")
        }
    ));
}
