//! The sidecar under the memory limit the injector gives it: the real
//! `rpf-sidecar` in a memory cgroup (what the kubelet uses for a
//! container's limit) of exactly the injected `MEMORY_LIMIT`, carrying
//! 1,000 concurrent connections with data both ways.

use std::time::Duration;

use rpf_e2e::cgroup::{quantity_bytes, MemoryCgroup};
use rpf_e2e::fake_sidecar::{peak_rss_kib, rss_kib};
use rpf_e2e::fixtures::{testpeer, Pod};
use rpf_e2e::peer::ManyReport;
use rpf_e2e::process::{free_port, Attach, Background};
use rpf_inject::sidecar::MEMORY_LIMIT;

const CONNECTIONS: usize = 1000;
/// Per connection and direction: a realistic request or response.
const BYTES: usize = 64 << 10;

const MIB: f64 = (1 << 20) as f64;

#[test]
fn a_thousand_connections_fit_the_injected_memory_limit() {
    let limit = quantity_bytes(MEMORY_LIMIT);
    // Declared first, so it is removed last, once the sidecar is gone.
    let cgroup = MemoryCgroup::new("sidecar", limit);
    assert_eq!(cgroup.limit(), limit, "the kernel took the limit");
    let pod = Pod::new("memlimit");
    let port = free_port();
    let _echo = Background::start(testpeer(&[
        "echo",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]));
    let connections = CONNECTIONS.to_string();
    let mut attach = Attach::start(&[
        "--via",
        &cgroup.enter_then(&pod.via),
        "-q",
        "--max-connections",
        &connections,
        &format!("9000:{port}"),
    ]);
    attach.wait_forwarding(1);
    let sidecar = match cgroup.pids()[..] {
        [pid] => pid,
        ref pids => panic!("the cgroup should hold the sidecar alone: {pids:?}"),
    };
    assert_eq!(comm(sidecar), "rpf-sidecar");
    // Idle: after start-up, before any connection.
    std::thread::sleep(Duration::from_millis(500));
    let idle = cgroup.usage();
    let idle_rss = rss_kib(sidecar);

    let many = |n: &str, bytes: usize| -> ManyReport {
        let out = pod.testpeer(&[
            "many",
            "--connect",
            "127.0.0.1:9000",
            "--connections",
            n,
            "--bytes",
            &bytes.to_string(),
        ]);
        serde_json::from_str(out.trim()).unwrap()
    };
    // All open at once, a byte each way: what holding a connection costs.
    let report = many(&connections, 1);
    assert_eq!(
        report.ok,
        CONNECTIONS,
        "{report:?}, OOM kills {}\n{}",
        cgroup.oom_kills(),
        attach.stderr()
    );
    let open_peak = cgroup.peak();
    // All open at once, then BYTES each way on every one.
    let report = many(&connections, BYTES);
    assert_eq!(
        report.ok,
        CONNECTIONS,
        "{report:?}, OOM kills {}\n{}",
        cgroup.oom_kills(),
        attach.stderr()
    );
    let busy_peak = cgroup.peak();
    let tcp_peak = cgroup.tcp_peak();

    let per_connection = |peak: u64| peak.saturating_sub(idle) as f64 / CONNECTIONS as f64 / 1024.0;
    eprintln!(
        "sidecar under a {MEMORY_LIMIT} limit: idle {:.1} MiB (RSS {:.1} MiB); \
         {CONNECTIONS} open: peak {:.1} MiB, {:.1} KiB per connection; \
         {CONNECTIONS} moving {} KiB each way: peak {:.1} MiB, {:.1} KiB per connection \
         (peak RSS {:.1} MiB; socket buffers, counted apart on cgroup v1: {:.1} MiB)",
        idle as f64 / MIB,
        idle_rss as f64 / 1024.0,
        open_peak as f64 / MIB,
        per_connection(open_peak),
        BYTES >> 10,
        busy_peak as f64 / MIB,
        per_connection(busy_peak),
        peak_rss_kib(sidecar) as f64 / 1024.0,
        tcp_peak as f64 / MIB,
    );

    assert_eq!(cgroup.oom_kills(), 0, "the sidecar was OOM-killed");
    assert_eq!(
        cgroup.pids(),
        [sidecar],
        "the same sidecar is still running\n{}",
        attach.stderr()
    );
    // Where socket buffers are counted apart (cgroup v1), they would count
    // within the limit on cgroup v2: both together must fit.
    assert!(
        busy_peak + tcp_peak < limit,
        "memory {busy_peak} plus socket buffers {tcp_peak} exceed the limit {limit}"
    );
    let report = many("1", BYTES);
    assert_eq!(
        report.ok,
        1,
        "a further connection is served: {report:?}\n{}",
        attach.stderr()
    );
}

/// The process's command name.
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .expect("process alive")
        .trim()
        .to_string()
}
