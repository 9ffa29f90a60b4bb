//! Helpers for the tests that drive real tools: `kubectl`, `kubectl kustomize`,
//! a schema validator, `images/build.sh` and, when one is configured, a real
//! cluster.
//!
//! Everything here shells out: the point of these tests is to run exactly
//! what a user runs. Tools are found through an environment variable or
//! `PATH`, and a missing tool is a test failure that says what to install,
//! never a silent pass.
//!
//! Environment:
//! - `RPF_E2E_KUBECTL`: the kubectl to use (default: `kubectl` on `PATH`).
//! - `RPF_E2E_KUBECONFIG`: kubeconfig of the cluster for cluster tests; when
//!   unset those tests print why they are skipped and return.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The repository root (the Cargo workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// Finds a program: the path in `env_var` if set, else `name` on `PATH`.
/// Panics with `install_hint` when it is nowhere to be found.
pub fn find_tool(env_var: &str, name: &str, install_hint: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return p;
        }
        if let Some(found) = which(p.as_os_str()) {
            return found;
        }
        panic!("{env_var}={} does not name a program", p.display());
    }
    which(OsStr::new(name))
        .unwrap_or_else(|| panic!("`{name}` not found on PATH (or set {env_var}): {install_hint}"))
}

/// `PATH` lookup, like the shell's `command -v`.
pub fn which(name: &OsStr) -> Option<PathBuf> {
    let path = Path::new(name);
    if path.components().count() > 1 {
        return path.is_file().then(|| path.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd`, capturing its output; panics if it cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs `cmd` and returns its stdout; panics with stdout+stderr on failure.
pub fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Calls `f` every `every` until it returns `Some`, or panics after `timeout`
/// with `what` and the last value `f` reported through `last`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut(&mut String) -> Option<T>,
) -> T {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(v) = f(&mut last) {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        thread::sleep(every);
    }
}

/// The path of `to` relative to the directory `from` (both absolute), e.g. to
/// reference the repository's manifests from a generated kustomization
/// (old Kustomize versions only accept relative paths there).
pub fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..from.len() {
        rel.push("..");
    }
    for c in &to[common..] {
        rel.push(c.as_os_str());
    }
    rel
}

/// A kubectl bound to one kubeconfig (or to none, for offline commands such
/// as `kubectl kustomize`).
#[derive(Clone, Debug)]
pub struct Kubectl {
    /// The kubectl program.
    pub bin: PathBuf,
    /// Passed as `KUBECONFIG` when set.
    pub kubeconfig: Option<PathBuf>,
}

impl Kubectl {
    /// kubectl from `RPF_E2E_KUBECTL` or `PATH`, without a cluster.
    pub fn offline() -> Self {
        Kubectl {
            bin: find_tool(
                "RPF_E2E_KUBECTL",
                "kubectl",
                "install kubectl (https://kubernetes.io/docs/tasks/tools/)",
            ),
            kubeconfig: None,
        }
    }

    /// kubectl for the cluster in `RPF_E2E_KUBECONFIG`, or `None` (after
    /// printing why the caller is skipped) when that variable is unset.
    pub fn for_cluster(test: &str) -> Option<Self> {
        match std::env::var_os("RPF_E2E_KUBECONFIG").filter(|v| !v.is_empty()) {
            None => {
                eprintln!("{test}: skipped: RPF_E2E_KUBECONFIG not set");
                None
            }
            Some(kc) => {
                let kc = PathBuf::from(kc);
                assert!(
                    kc.is_file(),
                    "RPF_E2E_KUBECONFIG={} is not a file",
                    kc.display()
                );
                Some(Kubectl {
                    kubeconfig: Some(kc),
                    ..Kubectl::offline()
                })
            }
        }
    }

    /// A `kubectl ARGS...` command, ready to run.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(&self.bin);
        if let Some(kc) = &self.kubeconfig {
            c.env("KUBECONFIG", kc);
        }
        c.args(args);
        c
    }

    /// Runs `kubectl ARGS...`, panics on failure, returns stdout.
    pub fn run<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run(&mut self.cmd(args))
    }

    /// Runs `kubectl ARGS...` and returns stdout, or stderr as the error.
    pub fn try_run<I, S>(&self, args: I) -> Result<String, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = output(&mut self.cmd(args));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// `kubectl kustomize DIR`: the rendered YAML (deprecation warnings, which
    /// current kubectl prints on stderr, are ignored).
    pub fn kustomize(&self, dir: &Path) -> String {
        self.run([OsStr::new("kustomize"), dir.as_os_str()])
    }

    /// The server's minor version, e.g. 20 for v1.20.2.
    pub fn server_minor(&self) -> u32 {
        let v = self.run(["version", "-o", "json"]);
        // "serverVersion": { "major": "1", "minor": "20", ... }; the minor
        // may carry a suffix such as "20+" on managed clusters.
        let server = v
            .split("\"serverVersion\"")
            .nth(1)
            .unwrap_or_else(|| panic!("no serverVersion in `kubectl version -o json`: {v}"));
        let minor = server
            .split("\"minor\"")
            .nth(1)
            .and_then(|s| s.split('"').nth(1))
            .unwrap_or_else(|| panic!("no minor in serverVersion: {server}"));
        minor
            .trim_end_matches(|c: char| !c.is_ascii_digit())
            .parse()
            .unwrap_or_else(|e| panic!("bad server minor version {minor:?}: {e}"))
    }
}

/// The workspace version from the root `Cargo.toml` (`[workspace.package]`).
pub fn workspace_version() -> String {
    let toml = std::fs::read_to_string(repo_root().join("Cargo.toml")).expect("read Cargo.toml");
    let section = toml
        .split("[workspace.package]")
        .nth(1)
        .expect("[workspace.package] in Cargo.toml");
    section
        .lines()
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "version").then(|| v.trim().trim_matches('"').to_owned())
        })
        .expect("version in [workspace.package]")
}

/// The image references set in `manifests/base/images.env`:
/// `(sidecar, webhook)`, e.g. `ghcr.io/rpf-dev/rpf-sidecar:0.1.0`.
pub fn images_env() -> (String, String) {
    let path = repo_root().join("manifests/base/images.env");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{key} missing in {}", path.display()))
            .trim()
            .to_owned()
    };
    (get("RPF_SIDECAR_IMAGE"), get("RPF_WEBHOOK_IMAGE"))
}

/// `repo:tag` with the tag replaced.
pub fn with_tag(image: &str, tag: &str) -> String {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    let repo = match image[slash..].rfind(':') {
        Some(i) => &image[..slash + i],
        None => image,
    };
    format!("{repo}:{tag}")
}

/// An environment variable, or `default` when unset or empty.
pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// A tiny HTTP server on this machine's loopback answering `body`: the
/// "service on the developer's machine".
pub fn host_server(body: String) -> u16 {
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

/// Builds the images with `images/build.sh` (unless `RPF_E2E_SKIP_BUILD`)
/// into `out` and loads `archives` into the node with `RPF_E2E_LOAD_IMAGE`.
pub fn build_and_load(out: &Path, archives: &[&str], tag: &str) {
    if std::env::var_os("RPF_E2E_SKIP_BUILD").is_none() {
        eprintln!(
            "[cluster] building images (tag {tag}) into {}",
            out.display()
        );
        let status = Command::new("bash")
            .arg(repo_root().join("images/build.sh"))
            .arg("--out")
            .arg(out)
            .args(["--tag", tag])
            .status()
            .expect("run images/build.sh");
        assert!(status.success(), "images/build.sh failed: {status}");
    }
    let loader = env_or("RPF_E2E_LOAD_IMAGE", "ctr -n k8s.io images import");
    let mut words = loader.split_whitespace();
    let program = words.next().expect("RPF_E2E_LOAD_IMAGE is empty");
    for archive in archives {
        let path = out.join(archive);
        assert!(path.is_file(), "{} missing", path.display());
        eprintln!("[cluster] loading {} with `{loader}`", path.display());
        run(Command::new(program).args(words.clone()).arg(&path));
    }
}

/// The images of this workspace tagged `RPF_E2E_IMAGE_TAG` (default `e2e`),
/// built into `out` and loaded into the node: `(sidecar, webhook)`. Only
/// the `archives` given (e.g. `rpf-sidecar.tar`) are loaded.
pub fn load_images(out: &Path, archives: &[&str]) -> (String, String) {
    let tag = env_or("RPF_E2E_IMAGE_TAG", "e2e");
    let (sidecar, webhook) = images_env();
    build_and_load(out, archives, &tag);
    (with_tag(&sidecar, &tag), with_tag(&webhook, &tag))
}

/// A suffix for object names that no other run shares: process id and
/// the clock's nanoseconds.
pub fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}-{nanos:x}", std::process::id())
}

/// Deletes namespaces when dropped (also when the test panics), unless
/// `RPF_E2E_KEEP` is set.
pub struct DeleteNamespaces {
    /// The cluster's kubectl.
    pub kubectl: Kubectl,
    /// The namespaces.
    pub names: Vec<String>,
}

impl DeleteNamespaces {
    /// Creates a namespace `PREFIX-<unique suffix>`, deleted when the
    /// guard is dropped; returns its name and the guard.
    pub fn create(kubectl: &Kubectl, prefix: &str) -> (String, Self) {
        let name = format!("{prefix}-{}", unique_suffix());
        kubectl.run(["create", "namespace", &name]);
        eprintln!("[cluster] namespace {name}");
        let guard = DeleteNamespaces {
            kubectl: kubectl.clone(),
            names: vec![name.clone()],
        };
        (name, guard)
    }
}

impl Drop for DeleteNamespaces {
    fn drop(&mut self) {
        if std::env::var_os("RPF_E2E_KEEP").is_some() {
            eprintln!("[cluster] keeping namespaces {:?}", self.names);
            return;
        }
        for name in &self.names {
            eprintln!("[cluster] cleanup: deleting namespace {name}");
            let _ = self.kubectl.try_run([
                "delete",
                "namespace",
                name,
                "--ignore-not-found",
                "--wait=false",
            ]);
        }
    }
}

/// A child process killed when dropped.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with its stdout and stderr read line by line: each line is
/// echoed to the test's stderr and sent as `stdout: …` or `stderr: …`.
pub fn spawn_with_lines(cmd: &mut Command) -> (Child, Receiver<String>) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let (tx, lines) = mpsc::channel();
    for (tag, stream) in [
        (
            "stdout",
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
        ),
        ("stderr", Box::new(child.stderr.take().unwrap())),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                eprintln!("    rpf {tag}: {line}");
                if tx.send(format!("{tag}: {line}")).is_err() {
                    break;
                }
            }
        });
    }
    (child, lines)
}

/// A running command (`rpf attach`, `rpf expose`) whose output is read
/// line by line; killed when dropped.
pub struct Watched {
    /// The process.
    pub child: Child,
    lines: Receiver<String>,
    /// Every line read so far, `stdout: …` or `stderr: …`.
    pub seen: Vec<String>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watched {
    /// Starts `cmd` (see [`spawn_with_lines`]).
    pub fn spawn(cmd: &mut Command) -> Self {
        let (child, lines) = spawn_with_lines(cmd);
        Watched {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line for which `want` returns `Some`; panics with the
    /// output so far after `timeout`.
    pub fn wait_line<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = want(&line);
                    self.seen.push(line);
                    if let Some(v) = found {
                        return v;
                    }
                }
                Err(_) => {
                    let status = self.child.try_wait();
                    panic!(
                        "no {what} within {timeout:?} (exit: {status:?}); output so far:\n{}",
                        self.seen.join("\n")
                    );
                }
            }
        }
    }
}

/// Deletes what `kubectl apply -f FILE` created when dropped, unless
/// disarmed (an install of rpf, cluster-wide).
pub struct Installed {
    /// The cluster's kubectl.
    pub kubectl: Kubectl,
    /// The applied file.
    pub file: PathBuf,
    /// Whether to delete on drop.
    pub armed: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if self.armed {
            eprintln!("[cluster] cleanup: uninstalling rpf");
            let file = self.file.to_string_lossy().into_owned();
            let _ =
                self.kubectl
                    .try_run(["delete", "--ignore-not-found", "--wait=false", "-f", &file]);
        }
    }
}

/// Where the manifests install the webhook: namespace and Deployment name.
pub const WEBHOOK_NS: &str = "rpf-system";
/// The webhook's Deployment, Service and configuration name.
pub const WEBHOOK: &str = "rpf-webhook";

/// Waits (up to 3 minutes) for the webhook Deployment to be rolled out.
pub fn webhook_rollout(kubectl: &Kubectl) {
    kubectl.run([
        "-n",
        WEBHOOK_NS,
        "rollout",
        "status",
        &format!("deployment/{WEBHOOK}"),
        "--timeout=180s",
    ]);
}

/// Scales the webhook to `replicas` and waits: for every pod to be gone
/// (0), or for the rollout.
pub fn scale_webhook(kubectl: &Kubectl, replicas: u32) {
    let arg = format!("--replicas={replicas}");
    kubectl.run(["-n", WEBHOOK_NS, "scale", "deployment", WEBHOOK, &arg]);
    if replicas == 0 {
        wait_webhook_gone(kubectl);
    } else {
        webhook_rollout(kubectl);
    }
}

/// Waits until the API server has the webhook inject the sidecar into
/// `pod_yaml` (an opted-in pod), asked with a server-side dry run.
pub fn wait_injecting(kubectl: &Kubectl, pod_yaml: &str, timeout: Duration) {
    wait_for(
        "the webhook to inject the sidecar (server-side dry run)",
        timeout,
        Duration::from_secs(1),
        |last| {
            let names = apply_stdin(
                kubectl,
                &[
                    "create",
                    "--dry-run=server",
                    "-o",
                    "jsonpath={.spec.initContainers[*].name} {.spec.containers[*].name}",
                    "-f",
                    "-",
                ],
                pod_yaml,
            );
            *last = format!("{names:?}");
            names
                .ok()?
                .split_whitespace()
                .any(|n| n == "rpf-sidecar")
                .then_some(())
        },
    );
}

/// Waits while namespace `ns` is terminating (an earlier uninstall or test
/// may still be deleting it; nothing can be created in it meanwhile).
pub fn wait_not_terminating(kubectl: &Kubectl, ns: &str) {
    wait_for(
        &format!("namespace {ns} to finish terminating"),
        Duration::from_secs(180),
        Duration::from_secs(1),
        |last| {
            let phase = kubectl
                .try_run(["get", "namespace", ns, "-o", "jsonpath={.status.phase}"])
                .unwrap_or_default();
            *last = phase.clone();
            (phase != "Terminating").then_some(())
        },
    );
}

/// Waits until no webhook pod is left, not even a terminating one that
/// still serves (after scaling to zero or uninstalling).
pub fn wait_webhook_gone(kubectl: &Kubectl) {
    wait_for(
        "the webhook pods to be gone",
        Duration::from_secs(90),
        Duration::from_millis(500),
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
}

/// `kubectl ARGS...` with `input` on stdin: stdout, or stderr as the error.
pub fn apply_stdin(kubectl: &Kubectl, args: &[&str], input: &str) -> Result<String, String> {
    pipe(&mut kubectl.cmd(args), input)
}

/// Runs `cmd` with `input` on stdin: its stdout, or its stderr as the
/// error.
pub fn pipe(cmd: &mut Command, input: &str) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A kustomization in `dir` that installs `base` (a directory of the
/// repo's manifests) with the images `sidecar` and `webhook`, as
/// `kustomize edit set image` would write it.
fn local_overlay(dir: &Path, base: &Path, sidecar: &str, webhook: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let rel = relative_path(dir, base);
    // The images transformer sets both the webhook image and the sidecar
    // image it injects.
    let (sidecar_name, sidecar_tag) = sidecar.rsplit_once(':').unwrap();
    let (webhook_name, webhook_tag) = webhook.rsplit_once(':').unwrap();
    let (default_sidecar, default_webhook) = images_env();
    let name = |r: &str| r.rsplit_once(':').map_or(r, |(n, _)| n).to_owned();
    let kustomization = format!(
        "# Generated by the rpf e2e tests: rpf with locally built images.\n\
         resources:\n  - {}\n\
         images:\n\
         \x20 - name: {}\n    newName: {sidecar_name}\n    newTag: {sidecar_tag}\n\
         \x20 - name: {}\n    newName: {webhook_name}\n    newTag: {webhook_tag}\n",
        rel.display(),
        name(&default_sidecar),
        name(&default_webhook),
    );
    std::fs::write(dir.join("kustomization.yaml"), kustomization).unwrap();
}

/// Renders the install for a server of minor version `minor` (manifests/
/// from 1.28, overlays/kubernetes-1.21 or -1.20 before) with the images
/// `sidecar` and `webhook` into `dir`, with `RPF_E2E_KUBECTL_RENDER` (a
/// current kubectl) or `RPF_E2E_KUBECTL`; returns the rendered file, for
/// `kubectl apply -f` and `kubectl delete -f`.
pub fn render_install(minor: u32, sidecar: &str, webhook: &str, dir: &Path) -> PathBuf {
    let manifests = repo_root().join("manifests");
    let base = match minor {
        ..=20 => manifests.join("overlays/kubernetes-1.20"),
        21..=27 => manifests.join("overlays/kubernetes-1.21"),
        _ => manifests.clone(),
    };
    local_overlay(dir, &base, sidecar, webhook);
    let render = match std::env::var_os("RPF_E2E_KUBECTL_RENDER").filter(|v| !v.is_empty()) {
        Some(bin) => Kubectl {
            bin: PathBuf::from(bin),
            kubeconfig: None,
        },
        None => Kubectl::offline(),
    };
    let rendered = dir.join("rendered.yaml");
    std::fs::write(&rendered, render.kustomize(dir)).unwrap();
    rendered
}

/// A token for a ServiceAccount: `kubectl create token` (1.24+), else the
/// token Secret the controller made for it (older clusters).
fn sa_token(kubectl: &Kubectl, ns: &str, sa: &str) -> String {
    if let Ok(token) = kubectl.try_run(["-n", ns, "create", "token", sa]) {
        return token.trim().to_owned();
    }
    let secret = wait_for(
        &format!("the token Secret of ServiceAccount {sa}"),
        Duration::from_secs(60),
        Duration::from_millis(500),
        |last| {
            let s = kubectl
                .try_run([
                    "-n",
                    ns,
                    "get",
                    "sa",
                    sa,
                    "-o",
                    "jsonpath={.secrets[0].name}",
                ])
                .unwrap_or_else(|e| e);
            *last = s.clone();
            (!s.trim().is_empty()).then(|| s.trim().to_owned())
        },
    );
    let b64 = kubectl.run([
        "-n",
        ns,
        "get",
        "secret",
        &secret,
        "-o",
        "jsonpath={.data.token}",
    ]);
    let out = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b64.trim().as_bytes())?;
            c.wait_with_output()
        })
        .expect("base64 -d");
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A kubeconfig for `sa`: same server and CA as the admin's, token user.
pub fn sa_kubeconfig(kubectl: &Kubectl, ns: &str, sa: &str, dir: &Path) -> PathBuf {
    let get = |path: &str| {
        kubectl.run([
            "config",
            "view",
            "--raw",
            "--minify",
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
    };
    let server = get(".clusters[0].cluster.server");
    let ca = get(".clusters[0].cluster.certificate-authority-data");
    let ca_file = get(".clusters[0].cluster.certificate-authority");
    let ca_line = if !ca.trim().is_empty() {
        format!("certificate-authority-data: {}", ca.trim())
    } else {
        format!("certificate-authority: {}", ca_file.trim())
    };
    let token = sa_token(kubectl, ns, sa);
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    {ca_line}\n\
             users:\n- name: {sa}\n  user:\n    token: {token}\n\
             contexts:\n- name: {sa}\n  context:\n    cluster: c\n    user: {sa}\n    namespace: {ns}\n\
             current-context: {sa}\n"
        ),
    )
    .unwrap();
    path
}

/// The `rpf` binary: `RPF_E2E_RPF`, or built for this test's profile.
pub fn rpf_binary() -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_path(Path::new("/a/b/c"), Path::new("/a/x")),
            PathBuf::from("../../x")
        );
        assert_eq!(
            relative_path(Path::new("/a"), Path::new("/a/m/n")),
            PathBuf::from("m/n")
        );
    }

    #[test]
    fn tags() {
        assert_eq!(with_tag("ghcr.io/a/b:1.0", "e2e"), "ghcr.io/a/b:e2e");
        assert_eq!(with_tag("localhost:5000/b", "x"), "localhost:5000/b:x");
        assert_eq!(with_tag("b", "x"), "b:x");
    }

    #[test]
    fn images_env_matches_workspace_version() {
        let v = workspace_version();
        let (sidecar, webhook) = images_env();
        assert!(sidecar.ends_with(&format!(":{v}")), "{sidecar} vs {v}");
        assert!(webhook.ends_with(&format!(":{v}")), "{webhook} vs {v}");
    }
}
