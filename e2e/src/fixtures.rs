//! Ready-made pieces of an end-to-end test: a pod with a sidecar reachable
//! through `--via`, a real HTTP server on the host, the test peer.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::netns::NetNs;
use crate::process::{bin, free_port, Background};

/// A network namespace standing in for a pod, and the `--via` command that
/// runs `rpf-sidecar stdio` inside it.
#[derive(Debug)]
pub struct Pod {
    /// The namespace.
    pub ns: NetNs,
    /// `ip netns exec NS /path/rpf-sidecar stdio`.
    pub via: String,
}

impl Pod {
    /// A fresh pod.
    pub fn new(tag: &str) -> Self {
        let ns = NetNs::new(tag);
        let via = format!(
            "{} {} stdio",
            ns.exec_prefix(),
            bin("rpf-sidecar").display()
        );
        Pod { ns, via }
    }

    /// `curl -sS URL` from inside the pod (10 s cap).
    pub fn curl(&self, url: &str) -> Output {
        self.ns.run(&["curl", "-sS", "-g", "--max-time", "10", url])
    }

    /// Runs the test peer inside the pod; panics unless it succeeds.
    pub fn testpeer(&self, args: &[&str]) -> String {
        let bin = bin("rpf-testpeer");
        let mut argv = vec![bin.to_str().expect("utf-8 path")];
        argv.extend_from_slice(args);
        self.ns.run_ok(&argv)
    }
}

/// The test peer as a host-side command.
pub fn testpeer(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("rpf-testpeer"));
    cmd.args(args);
    cmd
}

/// A real HTTP server (Python's http.server) on the host's loopback,
/// serving one page; stopped and cleaned up on drop.
#[derive(Debug)]
pub struct HttpServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    _process: Background,
    dir: PathBuf,
}

impl HttpServer {
    /// Serves `body` as `/`.
    pub fn start(body: &str) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("rpf-e2e-http-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("index.html"), body).expect("write page");
        let mut cmd = Command::new("python3");
        cmd.args(["-u", "-c", PY_HTTP, &port.to_string(), path_str(&dir)]);
        HttpServer {
            port,
            _process: Background::start(cmd),
            dir,
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// http.server that says when it listens and keeps quiet about requests.
const PY_HTTP: &str = r#"
import functools, http.server, sys
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
handler = functools.partial(Quiet, directory=sys.argv[2])
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), handler)
print("listening", flush=True)
server.serve_forever()
"#;

/// Fetches a metrics endpoint and returns the text.
pub fn scrape(port: u16) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of one sample (`name{labels}`) in Prometheus text.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in\n{text}"))
}

/// This machine's host name (what a `--via` sidecar outside a pod reports).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string()
}
