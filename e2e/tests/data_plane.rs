//! Traffic through the tunnel: real clients in a network namespace (the
//! pod), real servers on the host, `rpf attach --via` between them.

use std::process::Command;
use std::time::Duration;

use rpf_e2e::netns::NetNs;
use rpf_e2e::peer::{BulkReport, LimitReport, ManyReport};
use rpf_e2e::process::{bin, free_port, Attach, Background};

/// A namespace with the `--via` command that reaches a sidecar in it.
fn pod(tag: &str) -> (NetNs, String) {
    let ns = NetNs::new(tag);
    let via = format!(
        "{} {} stdio",
        ns.exec_prefix(),
        bin("rpf-sidecar").display()
    );
    (ns, via)
}

/// A real HTTP server on the host's loopback serving one page.
fn http_server(token: &str) -> (Background, u16, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    std::fs::write(dir.path().join("index.html"), token).unwrap();
    let port = free_port();
    let mut cmd = Command::new("python3");
    cmd.args([
        "-u",
        "-c",
        PY_HTTP,
        &port.to_string(),
        dir.path().to_str().unwrap(),
    ]);
    (Background::start(cmd), port, dir)
}

/// http.server that says when it is listening (its own banner is late).
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

fn testpeer(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("rpf-testpeer"));
    cmd.args(args);
    cmd
}

fn curl(ns: &NetNs, url: &str) -> std::process::Output {
    ns.run(&["curl", "-sS", "-g", "--max-time", "10", url])
}

mod tempdir {
    //! A temporary directory removed on drop.
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);
    impl Dir {
        pub fn new() -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("rpf-e2e-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[test]
fn http_get_from_the_pod_reaches_the_host_server() {
    let (ns, via) = pod("http");
    let (_server, port, _dir) = http_server("hello from the workstation");
    let metrics_port = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &via,
        &format!("8080:{port}"),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    let lines = attach.wait_forwarding(2);
    assert!(
        lines.contains(&format!(
            "Forwarding from 127.0.0.1:8080 in host {} -> localhost:{port}",
            hostname()
        )),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Forwarding from [::1]:8080 ")),
        "{lines:?}"
    );

    let out = curl(&ns, "http://127.0.0.1:8080/");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        attach.stderr()
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from the workstation"
    );

    // Per-connection events are logged at info level.
    assert!(attach.wait_stderr("Handling connection for 8080", Duration::from_secs(5)));

    // The CLI's metrics count it, with KEP-5695's names.
    let out = Command::new("curl")
        .args(["-sS", &format!("http://127.0.0.1:{metrics_port}/metrics")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rpf_portforward_reverse_connections_total{status=\"success\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("rpf_portforward_reverse_bytes_total{direction=\"local_to_pod\"}"),
        "{text}"
    );
    let pod_to_local = metric(
        &text,
        "rpf_portforward_reverse_bytes_total{direction=\"pod_to_local\"}",
    );
    assert!(
        pod_to_local > 50.0,
        "the request went through: {pod_to_local}"
    );
}

#[test]
fn localhost_works_over_ipv4_and_ipv6_in_the_pod() {
    let (ns, via) = pod("localhost");
    let (_server, port, _dir) = http_server("either way");
    let mut attach = Attach::start(&["--via", &via, &format!("8080:{port}")]);
    attach.wait_forwarding(2);
    for url in [
        "http://localhost:8080/",
        "http://[::1]:8080/",
        "http://127.0.0.1:8080/",
    ] {
        let out = curl(&ns, url);
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "either way", "{url}");
    }
    // IPv6 forced: the app resolving localhost to ::1 only.
    let out = ns.run(&[
        "curl",
        "-sS",
        "-6",
        "--max-time",
        "10",
        "http://localhost:8080/",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_explicit_address_binds_only_there() {
    let (ns, via) = pod("address");
    let (_server, port, _dir) = http_server("v6 only");
    let mut attach = Attach::start(&["--via", &via, "--address", "::1", &format!("8080:{port}")]);
    let lines = attach.wait_forwarding(1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(curl(&ns, "http://[::1]:8080/").status.success());
    assert!(
        !ns.is_listening("127.0.0.1:8080"),
        "127.0.0.1 must not be bound"
    );
}

#[test]
fn one_gib_each_way_arrives_intact() {
    const GIB: u64 = 1 << 30;
    let (ns, via) = pod("bulk");
    let port = free_port();
    let server = Background::start(testpeer(&[
        "serve-bulk",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--send",
        &GIB.to_string(),
    ]));
    let mut attach = Attach::start(&["--via", &via, &format!("9000:{port}")]);
    attach.wait_forwarding(1);
    let bin = bin("rpf-testpeer");
    let out = ns.run_ok(&[
        bin.to_str().unwrap(),
        "bulk",
        "--connect",
        "127.0.0.1:9000",
        "--send",
        &GIB.to_string(),
    ]);
    let client: BulkReport = serde_json::from_str(out.trim()).unwrap();
    let lines = server.wait_lines(2, Duration::from_secs(30));
    let host: BulkReport =
        serde_json::from_str(&lines[1]).unwrap_or_else(|e| panic!("{e}: {lines:?}"));
    assert_eq!(
        client.received, GIB,
        "pod received everything the host sent"
    );
    assert_eq!(host.received, GIB, "host received everything the pod sent");
    assert_eq!(
        client.sent_sha256, host.received_sha256,
        "pod → host bytes identical"
    );
    assert_eq!(
        host.sent_sha256, client.received_sha256,
        "host → pod bytes identical"
    );
}

#[test]
fn half_close_lets_the_client_still_read_the_whole_reply() {
    let (ns, via) = pod("halfclose");
    let port = free_port();
    // The server answers only after it has seen EOF: the FIN must cross.
    let server = Background::start(testpeer(&[
        "serve-bulk",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--send",
        "3000000",
        "--after-eof",
    ]));
    let mut attach = Attach::start(&["--via", &via, &format!("9000:{port}")]);
    attach.wait_forwarding(1);
    let bin = bin("rpf-testpeer");
    let out = ns.run_ok(&[
        bin.to_str().unwrap(),
        "bulk",
        "--connect",
        "127.0.0.1:9000",
        "--send",
        "100000",
    ]);
    let client: BulkReport = serde_json::from_str(out.trim()).unwrap();
    let lines = server.wait_lines(2, Duration::from_secs(10));
    let host: BulkReport = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(host.received, 100_000);
    assert_eq!(client.received, 3_000_000);
    assert_eq!(client.sent_sha256, host.received_sha256);
    assert_eq!(host.sent_sha256, client.received_sha256);
}

#[test]
fn a_thousand_concurrent_connections_with_a_raised_limit_lose_nothing() {
    let (ns, via) = pod("many");
    let port = free_port();
    let _echo = Background::start(testpeer(&[
        "echo",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]));
    let mut attach = Attach::start(&[
        "--via",
        &via,
        "-q",
        "--max-connections",
        "1000",
        &format!("9000:{port}"),
    ]);
    attach.wait_forwarding(1);
    let bin = bin("rpf-testpeer");
    let out = ns.run_ok(&[
        bin.to_str().unwrap(),
        "many",
        "--connect",
        "127.0.0.1:9000",
        "--connections",
        "1000",
        "--bytes",
        "4096",
    ]);
    let report: ManyReport = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report.ok, 1000, "{report:?}\n{}", attach.stderr());
}

#[test]
fn the_default_limit_refuses_the_eleventh_connection() {
    let (ns, via) = pod("limit");
    let port = free_port();
    let _echo = Background::start(testpeer(&[
        "echo",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]));
    let metrics_port = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &via,
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        &format!("9000:{port}"),
    ]);
    attach.wait_forwarding(1);
    let bin = bin("rpf-testpeer");
    let out = ns.run_ok(&[
        bin.to_str().unwrap(),
        "probe-limit",
        "--connect",
        "127.0.0.1:9000",
        "--hold",
        "10",
    ]);
    let report: LimitReport = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report.held, 10, "ten connections fit: {report:?}");
    assert_eq!(
        report.extra, "refused",
        "the eleventh is refused at once: {report:?}"
    );
    assert!(
        attach.wait_stderr(
            "limit of 10 concurrent connections reached",
            Duration::from_secs(5)
        ),
        "{}",
        attach.stderr()
    );
    let text = String::from_utf8(
        Command::new("curl")
            .args(["-sS", &format!("http://127.0.0.1:{metrics_port}/metrics")])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        text.contains("rpf_portforward_reverse_connections_rejected_total{reason=\"limit\"} 1"),
        "{text}"
    );
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}
