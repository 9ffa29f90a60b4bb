//! Network namespaces as stand-in pods: each has its own loopback (IPv4 and
//! IPv6) and its own port space, exactly what a pod's sidecar binds in.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates a namespace with `lo` up. Needs root: panics with a message
    /// that says so instead of skipping.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "rpf-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("the end-to-end tests need `ip` (Debian package iproute2)");
        assert!(
            out.status.success(),
            "cannot create network namespace {name} (the end-to-end tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = NetNs { name };
        ns.run_ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME` as a shell prefix, for `--via`.
    pub fn exec_prefix(&self) -> String {
        format!("ip netns exec {}", self.name)
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(argv);
        cmd
    }

    /// Runs `argv` inside the namespace and returns its output.
    pub fn run(&self, argv: &[&str]) -> Output {
        self.command(argv)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {argv:?} in {}: {e}", self.name))
    }

    /// Runs `argv` inside the namespace; panics unless it succeeds.
    pub fn run_ok(&self, argv: &[&str]) -> String {
        let out = self.run(argv);
        assert!(
            out.status.success(),
            "{argv:?} in {} failed ({}): {}{}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether something accepts TCP connections on `addr` in the namespace.
    pub fn is_listening(&self, addr: &str) -> bool {
        let target = format!("TCP:{addr},connect-timeout=1");
        self.run(&["socat", "-u", "OPEN:/dev/null", &target])
            .status
            .success()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

impl NetNs {
    /// Processes running inside the namespace.
    pub fn pids(&self) -> Vec<u32> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .expect("ip netns pids");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Kills every process inside the namespace with SIGKILL.
    pub fn kill_all(&self) {
        for pid in self.pids() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }

    /// Polls until nothing listens on `addr` any more; returns how long it
    /// took, or `None` if it still listens after `timeout`.
    pub fn wait_released(
        &self,
        addr: &str,
        timeout: std::time::Duration,
    ) -> Option<std::time::Duration> {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            if !self.is_listening(addr) {
                return Some(start.elapsed());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }
}
