//! `rpf expose` against a real cluster: a web server on this machine
//! (`python3 -m http.server`) becomes a Service that a pod in ANOTHER
//! namespace reaches through its ClusterIP, and dnsmasq its port 53/udp
//! (busybox `nslookup` in the pod); deleting one relay pod while
//! that pod keeps requesting loses no request; Ctrl-C leaves nothing
//! behind; after `kill -9`, `rpf cleanup` removes the rest; and a Service
//! rpf did not create is never taken over. `cluster_expose_failures`: an
//! unpullable relay image fails at once with its name and the kubelet's
//! reason, leaving nothing; a local service that is down gets its clients
//! reset while the expose stays up. `cluster_expose_gateway`: with the
//! Gateway API CRDs (`RPF_E2E_GATEWAY_API_CRDS`, a directory applied
//! first), `--gateway` creates a TCPRoute and an HTTPRoute the API server
//! accepts, parented on the Gateway and backed by the Service.
//!
//! ```sh
//! RPF_E2E_KUBECONFIG=~/.kube/config cargo test -p rpf-e2e --test cluster_expose -- --ignored --nocapture
//! ```
//!
//! Environment: as `cluster_attach` (`RPF_E2E_KUBECONFIG`, `RPF_E2E_KUBECTL`,
//! `RPF_E2E_LOAD_IMAGE`, `RPF_E2E_IMAGE_TAG`, `RPF_E2E_CLIENT_IMAGE`,
//! `RPF_E2E_SKIP_BUILD`, `RPF_E2E_RPF`, `RPF_E2E_KEEP`). It creates two
//! namespaces, `expose-e2e-*` and `expose-e2e-client-*`, deleted at the end
//! (also on failure).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::thread;
use std::time::{Duration, Instant};

use rpf_e2e::cluster::{
    env_or, load_images, rpf_binary, spawn_with_lines, unique_suffix, wait_for, DeleteNamespaces,
    Kill, Kubectl,
};
use rpf_e2e::udp_peer::Dnsmasq;

fn log(msg: impl AsRef<str>) {
    eprintln!("[cluster_expose] {}", msg.as_ref());
}

/// A running `rpf expose`, its output arriving line by line.
struct Expose {
    child: Kill,
    lines: Receiver<String>,
    seen: Vec<String>,
    /// Lines no `wait_line` has returned yet.
    pending: Vec<String>,
}

impl Expose {
    fn spawn(cmd: &mut Command) -> Self {
        let (child, lines) = spawn_with_lines(cmd);
        Expose {
            child: Kill(child),
            lines,
            seen: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Waits for a line starting with `prefix` that no earlier call
    /// returned (lines arrive in any order); returns the rest.
    fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        if let Some(i) = self.pending.iter().position(|l| l.starts_with(prefix)) {
            let line = self.pending.remove(i);
            return line[prefix.len()..].to_owned();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    match line.strip_prefix(prefix) {
                        Some(rest) => return rest.to_owned(),
                        None => self.pending.push(line),
                    }
                }
                Err(_) => panic!(
                    "rpf expose: no line starting {prefix:?} within {timeout:?} (exit: {:?}); output so far:\n{}",
                    self.child.0.try_wait(),
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for a `--output json` event of kind `event` that no earlier
    /// call returned; returns it parsed.
    fn wait_event(&mut self, event: &str, timeout: Duration) -> serde_json::Value {
        let needle = format!("\"event\":\"{event}\"");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.pending.iter().position(|l| l.contains(&needle)) {
                let line = self.pending.remove(i);
                let json = line.strip_prefix("stdout: ").expect("events are on stdout");
                return serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    self.pending.push(line);
                }
                Err(_) => panic!(
                    "rpf expose: no {event} event within {timeout:?}; output so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit; returns the rest of
    /// the output.
    fn interrupt(&mut self) -> String {
        let pid = self.child.0.id().to_string();
        assert!(Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success());
        let deadline = Instant::now() + Duration::from_secs(150);
        while self.child.0.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "rpf expose did not exit within 150s of Ctrl-C"
            );
            thread::sleep(Duration::from_millis(200));
        }
        let status = self.child.0.wait().unwrap();
        assert!(status.success(), "rpf expose exited with {status}");
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
        self.seen.join("\n")
    }
}

/// `python3 -m http.server` on 127.0.0.1 serving a directory with one file.
fn python_server(dir: &Path, body: &str) -> (Kill, u16) {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    (python_server_at(dir, body, port), port)
}

/// `python3 -m http.server` on `port`, serving `hello.txt` = `body`.
fn python_server_at(dir: &Path, body: &str, port: u16) -> Kill {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("hello.txt"), body).unwrap();
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server (install python3)");
    wait_for(
        "the local web server",
        Duration::from_secs(20),
        Duration::from_millis(100),
        |_| std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    );
    Kill(child)
}

/// `wget` from the client pod.
fn wget(kubectl: &Kubectl, ns: &str, url: &str) -> Result<String, String> {
    wget_from(kubectl, ns, "client", url)
}

/// `wget` from pod `pod`.
fn wget_from(kubectl: &Kubectl, ns: &str, pod: &str, url: &str) -> Result<String, String> {
    kubectl.try_run([
        "-n", ns, "exec", pod, "--", "timeout", "5", "wget", "-qO-", url,
    ])
}

/// Waits until service `svc` has at least `n` ready endpoints.
fn wait_ready_endpoints(kubectl: &Kubectl, ns: &str, svc: &str, n: usize) {
    wait_for(
        &format!("{n} ready endpoints of service/{svc}"),
        Duration::from_secs(60),
        Duration::from_secs(1),
        |last| {
            *last = kubectl
                .try_run([
                    "-n",
                    ns,
                    "get",
                    "endpoints",
                    svc,
                    "-o",
                    "jsonpath={.subsets[*].addresses[*].ip}",
                ])
                .unwrap_or_else(|e| e);
            (!last.contains("rror") && last.split_whitespace().count() >= n).then_some(())
        },
    );
}

/// Objects rpf made, across the cluster, as `kubectl get` names them.
fn leftovers(kubectl: &Kubectl, namespace: &str) -> String {
    kubectl
        .run([
            "-n",
            namespace,
            "get",
            "deploy,svc,pods",
            "-l",
            "app.kubernetes.io/managed-by=rpf",
            "-o",
            "name",
        ])
        .trim()
        .to_owned()
}

fn rpf_expose(rpf: &Path, kubeconfig: &Path, ns: &str, image: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(rpf);
    cmd.arg("expose")
        .args(args)
        .args([
            "-n",
            ns,
            "--image",
            image,
            "--image-pull-policy",
            "IfNotPresent",
        ])
        .arg("--kubeconfig")
        .arg(kubeconfig);
    cmd
}

/// What both tests start from: the cluster, the sidecar image on its
/// node, rpf built, a suffix for names.
struct Lab {
    kubectl: Kubectl,
    kubeconfig: PathBuf,
    client_image: String,
    sidecar: String,
    rpf: PathBuf,
    suffix: String,
    started: Instant,
}

impl Lab {
    fn start(test: &str) -> Option<Lab> {
        let kubectl = Kubectl::for_cluster(test)?;
        let kubeconfig = kubectl.kubeconfig.clone().unwrap();
        let started = Instant::now();
        let (sidecar, _) = load_images(
            &Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-images"),
            &["rpf-sidecar.tar"],
        );
        Some(Lab {
            kubectl,
            kubeconfig,
            client_image: env_or("RPF_E2E_CLIENT_IMAGE", "busybox:1.36"),
            sidecar,
            rpf: rpf_binary(),
            suffix: unique_suffix(),
            started,
        })
    }
}

/// A busybox pod that sleeps, for `kubectl exec ... wget`.
fn client_pod(kubectl: &Kubectl, image: &str, ns: &str, name: &str) {
    kubectl.run([
        "-n",
        ns,
        "run",
        name,
        "--image",
        image,
        "--image-pull-policy",
        "IfNotPresent",
        "--restart",
        "Never",
        "--command",
        "--",
        "sleep",
        "3600",
    ]);
}

#[test]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
fn cluster_expose() {
    let Some(lab) = Lab::start("cluster_expose") else {
        return;
    };
    let Lab {
        kubectl,
        kubeconfig,
        client_image,
        sidecar,
        rpf,
        suffix,
        started,
    } = lab;
    let ns = format!("expose-e2e-{suffix}");
    let client_ns = format!("expose-e2e-client-{suffix}");
    let _cleanup = DeleteNamespaces {
        kubectl: kubectl.clone(),
        names: vec![ns.clone(), client_ns.clone()],
    };
    for n in [&ns, &client_ns] {
        kubectl.run(["create", "namespace", n]);
    }
    // `client` is let in by `--allow` below; `intruder` is not.
    for pod in ["client", "intruder"] {
        client_pod(&kubectl, &client_image, &client_ns, pod);
    }
    let www: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("expose-www-{suffix}"));
    let token = format!("hello from the developer's machine {suffix}");
    let (_server, port) = python_server(&www, &token);

    // A Service that is not rpf's is refused, and nothing is created.
    kubectl.run([
        "-n",
        &ns,
        "create",
        "service",
        "clusterip",
        "taken",
        "--tcp",
        "80:80",
    ]);
    let out = rpf_expose(&rpf, &kubeconfig, &ns, &sidecar, &["svc/taken", "80"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    log(format!(
        "rpf expose svc/taken -> {}: {}",
        out.status,
        stderr.trim()
    ));
    assert!(!out.status.success());
    assert!(stderr.contains("not created by rpf expose"), "{stderr}");
    assert_eq!(leftovers(&kubectl, &ns), "", "refusal created something");

    // Expose the local server as svc/web port 80, and dnsmasq on this
    // machine as its port 53/udp.
    let spec = format!("80:127.0.0.1:{port}");
    let dns = Dnsmasq::start();
    let dns_spec = format!("53:127.0.0.1:{}/udp", dns.port);
    let mut expose = Expose::spawn(&mut rpf_expose(
        &rpf,
        &kubeconfig,
        &ns,
        &sidecar,
        &["svc/web", &spec, &dns_spec, "--replicas", "2"],
    ));
    expose.wait_line("stdout: Created service/web", Duration::from_secs(60));
    let first = expose.wait_line("stdout: Relay pod ", Duration::from_secs(180));
    let second = expose.wait_line("stdout: Relay pod ", Duration::from_secs(180));
    log(format!("relays: {first} | {second}"));
    let summary = expose.wait_line("stdout: Exposed ", Duration::from_secs(30));
    let service_ip = || {
        kubectl
            .run([
                "-n",
                &ns,
                "get",
                "svc",
                "web",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ])
            .trim()
            .to_owned()
    };
    let cluster_ip = service_ip();
    assert!(
        summary.contains(&format!("web.{ns}.svc.cluster.local:80"))
            && summary.contains(&cluster_ip),
        "{summary}"
    );
    wait_for(
        "the client pod to run",
        Duration::from_secs(120),
        Duration::from_secs(1),
        |last| {
            *last = kubectl
                .try_run([
                    "-n",
                    &client_ns,
                    "get",
                    "pod",
                    "client",
                    "-o",
                    "jsonpath={.status.phase}",
                ])
                .unwrap_or_else(|e| e);
            (last == "Running").then_some(())
        },
    );
    // Both relays become ready endpoints once their sessions are bound.
    wait_ready_endpoints(&kubectl, &ns, "web", 2);
    let url = format!("http://{cluster_ip}:80/hello.txt");
    let body = wget(&kubectl, &client_ns, &url).expect("wget through the Service");
    assert_eq!(body.trim(), token);
    log(format!("pod in {client_ns} got {body:?} through {url}"));
    // UDP: busybox nslookup in the pod, through the Service's 53/udp, to
    // dnsmasq on this machine.
    let name = format!("dev-{suffix}.test");
    let answer = kubectl
        .try_run([
            "-n",
            &client_ns,
            "exec",
            "client",
            "--",
            "sh",
            "-c",
            // busybox exits 1 when any of its queries fails: dnsmasq
            // refuses the AAAA one; the A answer is what counts.
            &format!("timeout 15 nslookup {name} {cluster_ip} 2>&1; echo rc=$?"),
        ])
        .unwrap_or_else(|e| e);
    log(format!("nslookup {name} {cluster_ip}: {answer:?}"));
    assert!(answer.contains("192.0.2.7"), "{answer}");

    // A client loops while one relay pod is deleted: every request succeeds.
    let looped = 40;
    let script = format!(
        "ok=0; fail=0; i=0; while [ $i -lt {looped} ]; do \
           if timeout 5 wget -qO- {url} | grep -q '{suffix}'; then ok=$((ok+1)); else fail=$((fail+1)); fi; \
           i=$((i+1)); sleep 0.5; done; echo ok=$ok fail=$fail"
    );
    let client_loop = kubectl
        .cmd([
            "-n", &client_ns, "exec", "client", "--", "sh", "-c", &script,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_secs(3));
    let victim = first
        .split_whitespace()
        .next()
        .and_then(|p| p.rsplit('/').next())
        .unwrap()
        .to_owned();
    log(format!(
        "deleting relay pod {victim} while the client loops"
    ));
    kubectl.run(["-n", &ns, "delete", "pod", &victim, "--wait=false"]);
    let out = client_loop.wait_with_output().unwrap();
    let result = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    log(format!("client loop: {result}"));
    assert_eq!(
        result,
        format!("ok={looped} fail=0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // rpf attaches to the replacement.
    let pod_of = |line: &str| {
        line.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    let known = [pod_of(&first), pod_of(&second)];
    let replacement = loop {
        let line = expose.wait_line("stdout: Relay pod ", Duration::from_secs(180));
        if !known.contains(&pod_of(&line)) {
            break line;
        }
    };
    log(format!("replacement: {replacement}"));

    // Ctrl-C removes everything and says so.
    let output = expose.interrupt();
    assert!(
        output.contains("Deleted service/web, deployment/rpf-relay-web"),
        "{output}"
    );
    assert_eq!(leftovers(&kubectl, &ns), "", "left after Ctrl-C");
    assert!(
        wget(&kubectl, &client_ns, &url).is_err(),
        "still served after Ctrl-C"
    );

    // kill -9 leaves the objects; the same command adopts them, and
    // `rpf cleanup` removes them.
    let mut killed = Expose::spawn(&mut rpf_expose(
        &rpf,
        &kubeconfig,
        &ns,
        &sidecar,
        &["svc/web", &spec],
    ));
    killed.wait_line("stdout: Exposed ", Duration::from_secs(240));
    wait_ready_endpoints(&kubectl, &ns, "web", 1);
    killed.child.0.kill().unwrap();
    killed.child.0.wait().unwrap();
    assert_ne!(leftovers(&kubectl, &ns), "");
    // The leftovers carry no traffic: without rpf the relays turn unready
    // (their probe fails once the sessions are gone), so the Service has
    // no ready endpoint and clients are refused, never held.
    let killed_at = Instant::now();
    wait_for(
        "no ready endpoint after kill -9",
        Duration::from_secs(90),
        Duration::from_secs(1),
        |last| {
            *last = kubectl
                .try_run([
                    "-n",
                    &ns,
                    "get",
                    "endpoints",
                    "web",
                    "-o",
                    "jsonpath={.subsets[*].addresses[*].ip}",
                ])
                .unwrap_or_else(|e| e);
            last.trim().is_empty().then_some(())
        },
    );
    log(format!(
        "after kill -9: no ready endpoint within {:.0?}",
        killed_at.elapsed()
    ));
    // The adopting run speaks JSON (the same story as events) and lets
    // only the client pod in (`--allow`, enforced by the relays, which see
    // the client's pod IP through the Service).
    let client_ip = kubectl
        .run([
            "-n",
            &client_ns,
            "get",
            "pod",
            "client",
            "-o",
            "jsonpath={.status.podIP}",
        ])
        .trim()
        .to_owned();
    let allow = format!("{client_ip}/32");
    let mut adopted = Expose::spawn(&mut rpf_expose(
        &rpf,
        &kubeconfig,
        &ns,
        &sidecar,
        &["svc/web", &spec, "-o", "json", "--allow", &allow],
    ));
    let created = adopted.wait_event("created", Duration::from_secs(60));
    assert_eq!(created["namespace"], ns.as_str(), "{created}");
    assert_eq!(created["objects"][0], "service/web", "{created}");
    let relay = adopted.wait_event("relay_attached", Duration::from_secs(240));
    assert_eq!(relay["ports"][0]["port"], 80, "{relay}");
    assert_eq!(relay["ports"][0]["target"], format!("127.0.0.1:{port}"));
    let exposed = adopted.wait_event("exposed", Duration::from_secs(240));
    log(format!("exposed event: {exposed}"));
    assert_eq!(exposed["dns_name"], format!("web.{ns}.svc.cluster.local"));
    // The Service was made anew after Ctrl-C: its address is today's.
    assert_eq!(exposed["cluster_ip"], service_ip().as_str());
    assert!(
        adopted.seen.iter().all(|l| !l.starts_with("stdout: ")
            || serde_json::from_str::<serde_json::Value>(&l["stdout: ".len()..]).is_ok()),
        "a stdout line that is not JSON: {:#?}",
        adopted.seen
    );
    wait_ready_endpoints(&kubectl, &ns, "web", 1);
    let url = format!("http://{}/hello.txt", service_ip());
    let allowed = wget(&kubectl, &client_ns, &url).expect("the allowed pod is served");
    assert_eq!(allowed.trim(), token);
    let intruder = wget_from(&kubectl, &client_ns, "intruder", &url);
    log(format!(
        "--allow {allow}: client served, intruder got {intruder:?}"
    ));
    assert!(intruder.is_err(), "a pod outside --allow was served");
    let refused = adopted.wait_event("refused", Duration::from_secs(10));
    assert_eq!(refused["reason"], "not_allowed", "{refused}");
    // Connection events name the port in the relay pod (10000 + i).
    assert_eq!(refused["port"], 10000);
    adopted.child.0.kill().unwrap();
    adopted.child.0.wait().unwrap();
    let cleanup = kubectl_free_rpf(&rpf, &kubeconfig, &["cleanup", "-n", &ns]);
    log(format!("rpf cleanup: {cleanup}"));
    assert!(
        cleanup.contains("Deleted service/web, deployment/rpf-relay-web"),
        "{cleanup}"
    );
    assert_eq!(leftovers(&kubectl, &ns), "", "left after rpf cleanup");
    // The Service rpf did not create is still there.
    kubectl.run(["-n", &ns, "get", "svc", "taken"]);
    log(format!("done in {:.0?}", started.elapsed()));
}

/// Runs `rpf ARGS` to completion, expecting success; returns stdout.
fn kubectl_free_rpf(rpf: &Path, kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new(rpf)
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "rpf {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The failures the expose issue lists that need a cluster: a relay image
/// that cannot be pulled (a prompt error naming the image and the
/// kubelet's reason, nothing left behind); the local service down
/// (clients are reset and the event says so; the expose stays up and
/// serves as soon as the service is back); a relay killed mid-transfer
/// (the other relay's connections go on, new ones are served).
#[test]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
fn cluster_expose_failures() {
    let Some(lab) = Lab::start("cluster_expose_failures") else {
        return;
    };
    let Lab {
        kubectl,
        kubeconfig,
        client_image,
        sidecar,
        rpf,
        suffix,
        started,
    } = lab;
    let ns = format!("expose-fail-{suffix}");
    let _cleanup = DeleteNamespaces {
        kubectl: kubectl.clone(),
        names: vec![ns.clone()],
    };
    kubectl.run(["create", "namespace", &ns]);
    client_pod(&kubectl, &client_image, &ns, "client");

    // RBAC missing for one kind: a ServiceAccount may do everything expose
    // needs except write Services. It is refused before anything is
    // created, and told which verbs on which resource it lacks.
    let role = format!(
        r#"{{"apiVersion": "v1", "kind": "List", "items": [
          {{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {{"name": "partial", "namespace": "{ns}"}}}},
          {{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {{"name": "partial", "namespace": "{ns}"}},
            "rules": [
              {{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "create", "patch", "delete"]}},
              {{"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list"]}},
              {{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}},
              {{"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]}}]}},
          {{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {{"name": "partial", "namespace": "{ns}"}},
            "roleRef": {{"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "partial"}},
            "subjects": [{{"kind": "ServiceAccount", "name": "partial", "namespace": "{ns}"}}]}}]}}"#
    );
    rpf_e2e::cluster::apply_stdin(&kubectl, &["apply", "-f", "-"], &role)
        .expect("create the partial Role");
    let sa_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("expose-fail-sa-{suffix}"));
    std::fs::create_dir_all(&sa_dir).unwrap();
    let partial = rpf_e2e::cluster::sa_kubeconfig(&kubectl, &ns, "partial", &sa_dir);
    let out = rpf_expose(
        &rpf,
        &partial,
        &ns,
        &sidecar,
        &["svc/rbac", "80:127.0.0.1:9"],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    log(format!("without write access to services: {stderr}"));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("create services") && stderr.contains("delete services"),
        "{stderr}"
    );
    assert!(!stderr.contains("deployments"), "{stderr}");
    assert_eq!(leftovers(&kubectl, &ns), "", "created without permission");

    // An image no node has and none can pull: the error comes once the
    // kubelet backs off, well before the 2-minute wait for the relays,
    // names the image and the reason, and everything is removed.
    let missing = format!("lab.local/rpf-no-such-image:{suffix}");
    let tried = Instant::now();
    let mut child = rpf_expose(
        &rpf,
        &kubeconfig,
        &ns,
        &missing,
        &["svc/noimage", "80:127.0.0.1:9", "--replicas", "1"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(110);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "rpf expose with an unpullable image still waits after 110s"
        );
        thread::sleep(Duration::from_millis(500));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    log(format!(
        "unpullable image: {status} after {:.0?}: {stderr}",
        tried.elapsed()
    ));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot get their image"), "{stderr}");
    assert!(stderr.contains(&missing), "{stderr}");
    assert!(stderr.contains("ImagePullBackOff"), "{stderr}");
    wait_for(
        "nothing left of the failed expose",
        Duration::from_secs(120),
        Duration::from_secs(2),
        |last| {
            *last = leftovers(&kubectl, &ns);
            last.is_empty().then_some(())
        },
    );

    // The local service is down: a client's connection is reset (not held
    // open), the CLI reports the target unreachable and keeps the expose;
    // once the service starts, the same Service serves it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let spec = format!("80:127.0.0.1:{port}");
    let mut expose = Expose::spawn(&mut rpf_expose(
        &rpf,
        &kubeconfig,
        &ns,
        &sidecar,
        &["svc/down", &spec, "--replicas", "1", "-o", "json"],
    ));
    let exposed = expose.wait_event("exposed", Duration::from_secs(240));
    let cluster_ip = exposed["cluster_ip"].as_str().unwrap().to_owned();
    wait_ready_endpoints(&kubectl, &ns, "down", 1);
    let url = format!("http://{cluster_ip}/hello.txt");
    let refused = wget(&kubectl, &ns, &url);
    log(format!("local service down: {refused:?}"));
    assert!(refused.is_err(), "served with the local service down");
    let closed = expose.wait_event("connection_closed", Duration::from_secs(20));
    assert_eq!(closed["outcome"], "target_unreachable", "{closed}");
    assert!(
        closed["error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{closed}"
    );
    assert!(
        expose.child.0.try_wait().unwrap().is_none(),
        "rpf expose exited when the local service was down"
    );
    let token = format!("back up {suffix}");
    let www = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("expose-fail-www-{suffix}"));
    let _server = python_server_at(&www, &token, port);
    let served = wget(&kubectl, &ns, &url).expect("served once the local service is up");
    assert_eq!(served.trim(), token);
    let output = expose.interrupt();
    assert!(output.contains("\"event\":\"removed\""), "{output}");
    assert_eq!(leftovers(&kubectl, &ns), "", "left after Ctrl-C");

    // A relay killed mid-transfer: ten long-lived echo connections spread
    // over two relays; one relay pod is deleted while they run (SIGTERM:
    // its sidecar drains for 5 s, then exits). The connections on it are
    // cut; those on the other relay carry every line to the end, and a new
    // connection afterwards is served.
    let echo = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _echo = Kill(
        Command::new("socat")
            .args([
                &format!("TCP-LISTEN:{echo},bind=127.0.0.1,fork,reuseaddr"),
                "EXEC:cat",
            ])
            .spawn()
            .expect("socat (Debian package socat)"),
    );
    let spec = format!("81:127.0.0.1:{echo}");
    let mut expose = Expose::spawn(&mut rpf_expose(
        &rpf,
        &kubeconfig,
        &ns,
        &sidecar,
        &["svc/echo", &spec, "--replicas", "2", "-o", "json"],
    ));
    let exposed = expose.wait_event("exposed", Duration::from_secs(240));
    let echo_ip = exposed["cluster_ip"].as_str().unwrap().to_owned();
    wait_ready_endpoints(&kubectl, &ns, "echo", 2);
    const LINES: usize = 60;
    let script = format!(
        "for i in 0 1 2 3 4 5 6 7 8 9; do \
           (for n in $(seq 1 {LINES}); do echo line$n; sleep 0.5; done \
             | timeout 45 nc {echo_ip} 81 > /tmp/c$i.out 2>/dev/null) & \
         done; wait; for i in 0 1 2 3 4 5 6 7 8 9; do wc -l < /tmp/c$i.out; done"
    );
    let clients = {
        let kubectl = kubectl.clone();
        let ns = ns.clone();
        thread::spawn(move || {
            kubectl.try_run(["-n", &ns, "exec", "client", "--", "sh", "-c", &script])
        })
    };
    thread::sleep(Duration::from_secs(6));
    let relays = kubectl.run([
        "-n",
        &ns,
        "get",
        "pods",
        "-l",
        "rpf.dev/expose=echo",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let victim = relays
        .split_whitespace()
        .next()
        .expect("a relay pod")
        .to_owned();
    kubectl.run(["-n", &ns, "delete", "pod", &victim, "--wait=false"]);
    let counts: Vec<usize> = clients
        .join()
        .unwrap()
        .expect("the client script runs")
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    log(format!(
        "relay {victim} deleted mid-transfer: lines echoed per connection {counts:?} (of {LINES})"
    ));
    assert_eq!(counts.len(), 10, "{counts:?}");
    assert!(
        counts.contains(&LINES),
        "no connection survived on the other relay: {counts:?}"
    );
    // Ten connections all on one relay: 1 run in 512.
    assert!(
        counts.iter().any(|&n| n < LINES),
        "no connection was cut with its relay: {counts:?}"
    );
    let again = kubectl.try_run([
        "-n",
        &ns,
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        &format!("echo after | timeout 5 nc {echo_ip} 81"),
    ]);
    assert_eq!(again.as_deref().map(str::trim), Ok("after"), "{again:?}");
    assert!(
        expose.child.0.try_wait().unwrap().is_none(),
        "rpf expose exited when a relay was killed"
    );
    let output = expose.interrupt();
    assert!(output.contains("\"event\":\"removed\""), "{output}");
    log(format!("done in {:.0?}", started.elapsed()));
}

/// `--gateway` on a live cluster with the Gateway API CRDs
/// (`RPF_E2E_GATEWAY_API_CRDS`: a directory of them, applied first; no
/// Gateway controller is needed, so what is proven is the routes: a
/// TCPRoute without `--hostname`, an HTTPRoute with it, each accepted by
/// the API server's schema, parented on the Gateway, pointing at the
/// Service's port, labelled as rpf's, and deleted on Ctrl-C).
#[test]
#[ignore = "needs a cluster: set RPF_E2E_KUBECONFIG and run with --ignored"]
fn cluster_expose_gateway() {
    let Some(lab) = Lab::start("cluster_expose_gateway") else {
        return;
    };
    let crds = std::env::var("RPF_E2E_GATEWAY_API_CRDS").expect(
        "set RPF_E2E_GATEWAY_API_CRDS to a directory of Gateway API CRDs (standard channel) for this cluster's version",
    );
    let Lab {
        kubectl,
        kubeconfig,
        sidecar,
        rpf,
        suffix,
        started,
        ..
    } = lab;
    kubectl.run(["apply", "-f", &crds]);
    kubectl.run([
        "wait",
        "--for",
        "condition=established",
        "--timeout",
        "60s",
        "crd/gateways.gateway.networking.k8s.io",
        "crd/httproutes.gateway.networking.k8s.io",
        "crd/tcproutes.gateway.networking.k8s.io",
    ]);
    let ns = format!("expose-gw-{suffix}");
    let _cleanup = DeleteNamespaces {
        kubectl: kubectl.clone(),
        names: vec![ns.clone()],
    };
    kubectl.run(["create", "namespace", &ns]);
    let gateway = format!(
        r#"{{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {{"name": "public", "namespace": "{ns}"}},
            "spec": {{"gatewayClassName": "none-offline",
              "listeners": [{{"name": "http", "protocol": "HTTP", "port": 80}},
                            {{"name": "tcp", "protocol": "TCP", "port": 9000}}]}}}}"#
    );
    rpf_e2e::cluster::apply_stdin(&kubectl, &["apply", "-f", "-"], &gateway)
        .expect("create the Gateway");
    let www = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("expose-gw-www-{suffix}"));
    let (_server, port) = python_server(&www, "through a route");
    let spec = format!("80:127.0.0.1:{port}");
    let host = format!("dev-{suffix}.example.test");
    let gateway_ref = format!("{ns}/public");

    // A Gateway that does not exist: an error naming it, nothing created.
    let missing = format!("{ns}/nowhere");
    let out = rpf_expose(
        &rpf,
        &kubeconfig,
        &ns,
        &sidecar,
        &["svc/gw", &spec, "--gateway", &missing],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    log(format!("--gateway {missing}: {stderr}"));
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nowhere"), "{stderr}");
    assert_eq!(
        leftovers(&kubectl, &ns),
        "",
        "created for a missing Gateway"
    );

    for (kind, extra) in [
        ("tcproute", vec!["--listener", "tcp"]),
        ("httproute", vec!["--hostname", host.as_str()]),
    ] {
        let mut args = vec![
            "svc/gw",
            spec.as_str(),
            "--replicas",
            "1",
            "-o",
            "json",
            "--gateway",
            gateway_ref.as_str(),
        ];
        args.extend(extra);
        let mut expose = Expose::spawn(&mut rpf_expose(&rpf, &kubeconfig, &ns, &sidecar, &args));
        let created = expose.wait_event("created", Duration::from_secs(60));
        assert!(
            created["objects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o == &format!("{kind}/gw")),
            "{created}"
        );
        expose.wait_event("exposed", Duration::from_secs(240));
        let route: serde_json::Value =
            serde_json::from_str(&kubectl.run(["-n", &ns, "get", kind, "gw", "-o", "json"]))
                .unwrap();
        log(format!("{kind}: {}", route["spec"]));
        assert_eq!(
            route["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "rpf"
        );
        let parent = &route["spec"]["parentRefs"][0];
        assert_eq!(parent["name"], "public", "{route}");
        assert_eq!(parent["namespace"], ns.as_str(), "{route}");
        let backend = &route["spec"]["rules"][0]["backendRefs"][0];
        assert_eq!(backend["name"], "gw", "{route}");
        assert_eq!(backend["port"], 80, "{route}");
        if kind == "httproute" {
            assert_eq!(route["spec"]["hostnames"][0], host.as_str(), "{route}");
        } else {
            assert_eq!(parent["sectionName"], "tcp", "{route}");
        }
        let output = expose.interrupt();
        assert!(output.contains("\"event\":\"removed\""), "{output}");
        let left = kubectl.run([
            "-n",
            &ns,
            "get",
            "deploy,svc,httproute,tcproute",
            "-l",
            "app.kubernetes.io/managed-by=rpf",
            "-o",
            "name",
        ]);
        assert_eq!(left.trim(), "", "left after Ctrl-C");
    }
    log(format!("done in {:.0?}", started.elapsed()));
}
