//! `./demo.sh`, the README's one command, run exactly as a newcomer runs it:
//! its output shows the `Forwarding from` lines, the page fetched from
//! inside the "pod" and the request reaching the local service, and it
//! leaves nothing behind (no network namespace, no process, no temp
//! directory), also when stopped with Ctrl-C (SIGINT).
//!
//! The cluster flavour (`./demo.sh --cluster`) is `#[ignore]`d like every
//! cluster test:
//!
//! ```sh
//! RPF_E2E_KUBECONFIG=~/.kube/config cargo test -p rpf-e2e --test demo -- --ignored --nocapture
//! ```
//!
//! Environment of the cluster test (see `rpf_e2e::cluster`):
//! `RPF_E2E_KUBECONFIG` (required), `RPF_E2E_KUBECTL`,
//! `RPF_E2E_KUBECTL_RENDER` (a kubectl 1.27+ that renders the manifests when
//! `RPF_E2E_KUBECTL` is older), `RPF_E2E_LOAD_IMAGE`
//! (default `ctr -n k8s.io images import`), `RPF_E2E_CLIENT_IMAGE`
//! (default `busybox:1.36`).
//!
//! The script builds the binaries itself (cargo skips them when they are up
//! to date). A newcomer gets a release build; the namespace tests pass
//! `RPF_DEMO_PROFILE=debug` so that they reuse the test build instead of
//! adding a release build to every CI run.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rpf_e2e::cluster::{env_or, find_tool, repo_root, Kubectl};

/// A build may be part of the run: generous, but bounded.
const RUN_TIMEOUT: Duration = Duration::from_secs(1800);

/// `demo.sh ARGS` running, stdout and stderr merged into one transcript.
struct Demo {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Demo {
    fn start(args: &[&str], envs: &[(&str, String)]) -> Self {
        // SIGINT back to its default: a test run started in the background
        // (`cmd &` in a script) inherits it ignored, and a shell cannot trap
        // a signal ignored on entry, so the Ctrl-C test would hang.
        let mut child = Command::new("env")
            .args(["--default-signal=INT", "bash", "-c"])
            .arg("exec ./demo.sh \"$@\" 2>&1")
            .arg("demo.sh")
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .current_dir(repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run ./demo.sh");
        let output = Arc::new(Mutex::new(Vec::new()));
        let sink = output.clone();
        let pipe = child.stdout.take().expect("piped");
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("[demo.sh] {line}");
                sink.lock().expect("lock").push(line);
            }
        });
        Demo { child, output }
    }

    fn transcript(&self) -> String {
        self.output.lock().expect("lock").join("\n")
    }

    /// Waits until the transcript contains `needle`; panics after `timeout`
    /// or if the script exits first.
    fn wait_for(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.transcript().contains(needle) {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "demo.sh exited ({status}) before printing {needle:?}:\n{}",
                    self.transcript()
                );
            }
            assert!(
                Instant::now() < deadline,
                "demo.sh did not print {needle:?} within {timeout:?}:\n{}",
                self.transcript()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // The reader ends when the last holder of the pipe exits.
                thread::sleep(Duration::from_millis(200));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "demo.sh still running after {timeout:?}:\n{}\nits processes:\n{}",
                self.transcript(),
                process_tree(self.child.id())
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: its trap still cleans up.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

/// `ps` of `pid` and its descendants: when the script hangs, which step.
fn process_tree(pid: u32) -> String {
    let out = Command::new("ps")
        .args(["-o", "pid,ppid,stat,etime,args", "--forest", "--ppid"])
        .arg(pid.to_string())
        .output();
    match out {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("(ps: {e})"),
    }
}

/// The word after `prefix` in `text` (e.g. the namespace the script made).
fn word_after(text: &str, prefix: &str) -> String {
    let start = text
        .find(prefix)
        .unwrap_or_else(|| panic!("{prefix:?} not in the output:\n{text}"))
        + prefix.len();
    text[start..]
        .split(|c: char| c.is_whitespace() || c == '\'')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Command lines of running processes that contain `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmdline.contains(needle) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

/// The namespace, temp directory and processes of one namespace demo are gone.
fn assert_nothing_left(ns: &str, dir: &Path) {
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.split_whitespace().any(|n| n == ns),
        "network namespace {ns} left behind: {netns}"
    );
    assert!(!dir.exists(), "{} left behind", dir.display());
    let procs = processes_mentioning(ns);
    assert!(procs.is_empty(), "processes left behind: {procs:#?}");
    let procs = processes_mentioning(&dir.to_string_lossy());
    assert!(procs.is_empty(), "processes left behind: {procs:#?}");
}

/// What the namespace demo shows: the forwarding, the page in the pod, the
/// request at the local service. Returns its namespace and temp directory.
fn assert_shows_demo(out: &str) -> (String, PathBuf) {
    assert!(
        out.contains("Forwarding from 127.0.0.1:8080")
            && out.contains("Forwarding from [::1]:8080"),
        "no Forwarding lines:\n{out}"
    );
    assert!(
        out.contains("<h1>Hello from your machine</h1>"),
        "the page was not fetched inside the pod:\n{out}"
    );
    assert!(
        out.contains("\"GET / HTTP/1.1\" 200"),
        "the local service did not log the request:\n{out}"
    );
    (word_after(out, "$ ip netns add "), demo_dir(out))
}

/// The script's temp directory: the one the local web server serves.
fn demo_dir(out: &str) -> PathBuf {
    PathBuf::from(word_after(out, " --directory "))
}

/// The namespace flavour on the debug binaries the tests were built with.
fn debug_build() -> [(&'static str, String); 1] {
    [("RPF_DEMO_PROFILE", "debug".to_owned())]
}

#[test]
fn demo_runs_end_to_end_and_leaves_nothing() {
    let mut demo = Demo::start(&[], &debug_build());
    let status = demo.wait_exit(RUN_TIMEOUT);
    let out = demo.transcript();
    assert!(status.success(), "demo.sh failed ({status}):\n{out}");
    assert!(out.contains("Done: the pod reached your machine"), "{out}");
    let (ns, dir) = assert_shows_demo(&out);
    assert_nothing_left(&ns, &dir);
}

#[test]
fn demo_keep_running_stops_cleanly_on_ctrl_c() {
    let mut demo = Demo::start(&["--keep-running"], &debug_build());
    demo.wait_for("Running until Ctrl-C", RUN_TIMEOUT);
    let out = demo.transcript();
    let (ns, dir) = assert_shows_demo(&out);

    // What the script invites the reader to try, from another terminal.
    let curl = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "curl",
            "-sS",
            "http://localhost:8080/",
        ])
        .output()
        .expect("ip netns exec curl");
    assert!(
        String::from_utf8_lossy(&curl.stdout).contains("Hello from your machine"),
        "curl in {ns}: {curl:?}"
    );

    Command::new("kill")
        .args(["-INT", &demo.child.id().to_string()])
        .status()
        .expect("kill -INT");
    let status = demo.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(130), "{}", demo.transcript());
    assert_nothing_left(&ns, &dir);
}

#[test]
#[ignore = "needs a cluster (RPF_E2E_KUBECONFIG) whose nodes take image archives"]
fn demo_cluster_runs_end_to_end_and_uninstalls() {
    let Some(kubectl) = Kubectl::for_cluster("demo_cluster") else {
        return;
    };
    let kubeconfig = kubectl.kubeconfig.clone().expect("cluster kubeconfig");
    let kubectl_bin = find_tool("RPF_E2E_KUBECTL", "kubectl", "install kubectl");
    let path = format!(
        "{}:{}",
        kubectl_bin.parent().expect("kubectl's directory").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let envs = [
        ("KUBECONFIG", kubeconfig.display().to_string()),
        ("PATH", path),
        (
            "RPF_DEMO_LOAD_IMAGE",
            env_or("RPF_E2E_LOAD_IMAGE", "ctr -n k8s.io images import"),
        ),
        (
            "RPF_DEMO_CLIENT_IMAGE",
            env_or("RPF_E2E_CLIENT_IMAGE", "busybox:1.36"),
        ),
        (
            "RPF_DEMO_RENDER",
            std::env::var("RPF_E2E_KUBECTL_RENDER")
                .map(|k| format!("{k} kustomize"))
                .unwrap_or_default(),
        ),
    ];
    let mut demo = Demo::start(&["--cluster"], &envs);
    let status = demo.wait_exit(RUN_TIMEOUT);
    let out = demo.transcript();
    assert!(
        status.success(),
        "demo.sh --cluster failed ({status}):\n{out}"
    );
    assert!(out.contains("Forwarding from 127.0.0.1:8080"), "{out}");
    assert!(
        out.contains("<h1>Hello from your machine</h1>"),
        "the pod's client did not show the page:\n{out}"
    );
    assert!(out.contains("\"GET / HTTP/1.1\" 200"), "{out}");
    assert!(out.contains("Uninstalling"), "{out}");

    // Uninstalled: the demo namespace and the webhook configuration are
    // gone or going (deleted without waiting).
    let ns = word_after(&out, "$ kubectl create namespace ");
    let gone_or_going = |args: &[&str]| match kubectl.try_run(args.iter().copied()) {
        Err(_) => true,
        Ok(phase) => phase.contains("Terminating") || phase.trim().is_empty(),
    };
    assert!(
        gone_or_going(&["get", "namespace", &ns, "-o", "jsonpath={.status.phase}"]),
        "namespace {ns} left behind"
    );
    let webhooks = kubectl.run([
        "get",
        "mutatingwebhookconfigurations",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    assert!(
        !webhooks.contains("rpf"),
        "webhook left installed: {webhooks}"
    );
    let dir = demo_dir(&out);
    assert!(!dir.exists(), "{} left behind", dir.display());
    let procs = processes_mentioning(&dir.to_string_lossy());
    assert!(procs.is_empty(), "processes left behind: {procs:#?}");
}
