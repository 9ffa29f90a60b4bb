//! A memory cgroup: the kernel mechanism behind a container's memory limit,
//! so a test can run the real sidecar under the limit the injector gives it
//! and read what it cost. Works on cgroup v1 (the `memory` controller) and
//! v2 (unified).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of a Kubernetes memory quantity such as `64Mi`, `1Gi` or `500M`
/// (integers only: that is all the injector writes).
pub fn quantity_bytes(q: &str) -> u64 {
    let split = q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len());
    let (n, suffix) = q.split_at(split);
    let n: u64 = n
        .parse()
        .unwrap_or_else(|_| panic!("not a quantity: {q:?}"));
    let unit: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => panic!("unsupported quantity suffix in {q:?}"),
    };
    n * unit
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A child memory cgroup with a limit, removed on drop (its processes are
/// moved back to where the test runs first).
#[derive(Debug)]
pub struct MemoryCgroup {
    dir: PathBuf,
    home: PathBuf,
    version: Version,
    sampled_peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl MemoryCgroup {
    /// Creates a cgroup limited to `limit` bytes, nested under the test's
    /// own cgroup where the kernel allows it (so the test's own limits still
    /// apply), else under the hierarchy's root. Panics with the reason when
    /// the machine has none that is writable: a test of the limit must not
    /// pass without one.
    pub fn new(tag: &str, limit: u64) -> Self {
        let (version, mount, own) = locate();
        let name = {
            static N: AtomicU32 = AtomicU32::new(0);
            format!(
                "rpf-e2e-{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            )
        };
        let mut tried = Vec::new();
        let mut parents = vec![own.clone(), mount];
        parents.dedup();
        for parent in parents {
            match create(version, &parent, &name, limit) {
                Ok(dir) => {
                    let cg = MemoryCgroup {
                        dir,
                        home: own,
                        version,
                        sampled_peak: Arc::new(AtomicU64::new(0)),
                        stop: Arc::new(AtomicBool::new(false)),
                    };
                    cg.sample();
                    return cg;
                }
                Err(e) => tried.push(format!("{}: {e}", parent.display())),
            }
        }
        panic!(
            "no writable memory cgroup (this test needs root and the memory controller, \
             as a container's limit does): {}",
            tried.join("; ")
        )
    }

    /// The shell command that moves the shell itself into this cgroup and
    /// then `exec`s `command`, which so runs (with its children) inside.
    pub fn enter_then(&self, command: &str) -> String {
        format!(
            "echo $$ > '{}' && exec {command}",
            self.dir.join("cgroup.procs").display()
        )
    }

    /// Processes in the cgroup.
    pub fn pids(&self) -> Vec<u32> {
        read(&self.dir.join("cgroup.procs"))
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// The limit in bytes, as the kernel holds it.
    pub fn limit(&self) -> u64 {
        match self.version {
            Version::V1 => number(&self.dir.join("memory.limit_in_bytes")),
            Version::V2 => number(&self.dir.join("memory.max")),
        }
    }

    /// Memory charged now, in bytes (what the limit is compared with).
    pub fn usage(&self) -> u64 {
        number(&self.dir.join(usage_file(self.version)))
    }

    /// Most memory charged since creation, in bytes: the kernel's own
    /// high-water mark where it keeps one, and never less than what was
    /// sampled every few milliseconds.
    pub fn peak(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        let kernel = std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        kernel.max(self.sampled_peak.load(Ordering::Relaxed))
    }

    /// Most TCP socket buffer memory charged since creation, in bytes, when
    /// it is kept apart from [`usage`](Self::usage): cgroup v1 counts it
    /// separately, v2 (what current Kubernetes nodes use) within the limit.
    /// So on v1, `peak() + tcp_peak()` bounds what v2 would have charged.
    pub fn tcp_peak(&self) -> u64 {
        match self.version {
            Version::V1 => {
                std::fs::read_to_string(self.dir.join("memory.kmem.tcp.max_usage_in_bytes"))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0)
            }
            Version::V2 => 0,
        }
    }

    /// Processes the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = read(&self.dir.join(file));
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no oom_kill count in {file}: {text}"))
    }

    /// Samples usage in the background: the only peak a v2 kernel without
    /// `memory.peak` offers.
    fn sample(&self) {
        let (version, dir) = (self.version, self.dir.clone());
        let (peak, stop) = (self.sampled_peak.clone(), self.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(now) = std::fs::read_to_string(dir.join(usage_file(version))) {
                    if let Ok(now) = now.trim().parse() {
                        peak.fetch_max(now, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // A cgroup with processes cannot be removed: send any left back.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for pid in self.pids() {
                let _ = std::fs::write(self.home.join("cgroup.procs"), pid.to_string());
            }
            if std::fs::remove_dir(&self.dir).is_ok() || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Which version holds the memory controller, its mount point, and the
/// test's own cgroup in it.
fn locate() -> (Version, PathBuf, PathBuf) {
    let mountinfo = read(Path::new("/proc/self/mountinfo"));
    let own = read(Path::new("/proc/self/cgroup"));
    let mut v2 = None;
    for line in mountinfo.lines() {
        // ID PARENT DEV ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let left: Vec<&str> = left.split(' ').collect();
        let right: Vec<&str> = right.split(' ').collect();
        let (Some(root), Some(point), Some(fstype)) = (left.get(3), left.get(4), right.first())
        else {
            continue;
        };
        let point = PathBuf::from(point);
        let has_memory =
            |opts: Option<&&str>| opts.is_some_and(|o| o.split(',').any(|o| o == "memory"));
        if *fstype == "cgroup" && has_memory(right.get(2)) {
            // `N:memory,...:/path` in /proc/self/cgroup.
            let path = own.lines().find_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
                ctrls.split(',').any(|c| c == "memory").then_some(path)
            });
            let own = own_dir(&point, root, path);
            return (Version::V1, point, own);
        }
        if *fstype == "cgroup2"
            && read(&point.join("cgroup.controllers"))
                .split_whitespace()
                .any(|c| c == "memory")
        {
            let path = own.lines().find_map(|l| l.strip_prefix("0::"));
            let own = own_dir(&point, root, path);
            v2 = Some((Version::V2, point, own));
        }
    }
    v2.unwrap_or_else(|| {
        panic!(
            "no memory cgroup controller is mounted (this test needs one, \
             as a container's memory limit does)"
        )
    })
}

/// The directory of the cgroup at `path` (as /proc/self/cgroup names it)
/// in a hierarchy whose `root` is mounted at `point`; the mount point when
/// that does not exist (e.g. in a container seeing only part of it).
fn own_dir(point: &Path, root: &str, path: Option<&str>) -> PathBuf {
    let rel = path
        .map(|p| p.strip_prefix(root).unwrap_or(p))
        .unwrap_or("")
        .trim_start_matches('/');
    let dir = point.join(rel);
    if dir.join("cgroup.procs").exists() {
        dir
    } else {
        point.to_path_buf()
    }
}

/// Makes `parent/name` a memory cgroup limited to `limit` bytes, without
/// swap.
fn create(version: Version, parent: &Path, name: &str, limit: u64) -> Result<PathBuf, String> {
    let dir = parent.join(name);
    std::fs::create_dir(&dir).map_err(|e| format!("mkdir: {e}"))?;
    let set = |file: &str, value: &str| {
        std::fs::write(dir.join(file), value).map_err(|e| format!("{file}: {e}"))
    };
    let result = match version {
        Version::V1 => set("memory.limit_in_bytes", &limit.to_string()).map(|()| {
            // Best effort, as a container runtime does: memory plus swap at
            // the same limit (absent without swap accounting), and socket
            // buffers counted (separately, the only way v1 counts them).
            let _ = set("memory.memsw.limit_in_bytes", &limit.to_string());
            let _ = set("memory.kmem.tcp.limit_in_bytes", &limit.to_string());
        }),
        Version::V2 => {
            if !dir.join("memory.max").exists() {
                // Delegate the controller; refused when the parent holds
                // processes and is not the root ("no internal processes").
                let _ = std::fs::write(parent.join("cgroup.subtree_control"), "+memory");
            }
            if dir.join("memory.max").exists() {
                set("memory.max", &limit.to_string()).map(|()| {
                    let _ = set("memory.swap.max", "0");
                })
            } else {
                Err("the memory controller is not enabled for children".into())
            }
        }
    };
    match result {
        Ok(()) => Ok(dir),
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            Err(e)
        }
    }
}

fn usage_file(version: Version) -> &'static str {
    match version {
        Version::V1 => "memory.usage_in_bytes",
        Version::V2 => "memory.current",
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn number(path: &Path) -> u64 {
    let text = read(path);
    match text.trim() {
        // v2 writes "max" for no limit.
        "max" => u64::MAX,
        t => t
            .parse()
            .unwrap_or_else(|_| panic!("{} is not a number: {t:?}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::quantity_bytes;

    #[test]
    fn quantities() {
        assert_eq!(quantity_bytes("64Mi"), 64 << 20);
        assert_eq!(quantity_bytes("16Mi"), 16 << 20);
        assert_eq!(quantity_bytes("1Gi"), 1 << 30);
        assert_eq!(quantity_bytes("500M"), 500_000_000);
        assert_eq!(quantity_bytes("4096"), 4096);
    }
}
