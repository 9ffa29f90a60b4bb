//! Traffic through the tunnel: real clients in a network namespace (the
//! pod), real servers on the host, `rpf attach --via` between them.

use std::time::Duration;

use rpf_e2e::fixtures::{hostname, metric, scrape, testpeer, HttpServer, Pod};
use rpf_e2e::peer::{BulkReport, LimitReport, ManyReport};
use rpf_e2e::process::{free_port, Attach, Background};

#[test]
fn http_get_from_the_pod_reaches_the_host_server() {
    let pod = Pod::new("http");
    let server = HttpServer::start("hello from the workstation");
    let port = server.port;
    let metrics_port = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
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

    let out = pod.curl("http://127.0.0.1:8080/");
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
    let text = scrape(metrics_port);
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
    let pod = Pod::new("localhost");
    let server = HttpServer::start("either way");
    let port = server.port;
    let mut attach = Attach::start(&["--via", &pod.via, &format!("8080:{port}")]);
    attach.wait_forwarding(2);
    for url in [
        "http://localhost:8080/",
        "http://[::1]:8080/",
        "http://127.0.0.1:8080/",
    ] {
        let out = pod.curl(url);
        assert!(
            out.status.success(),
            "{url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "either way", "{url}");
    }
    // IPv6 forced: the app resolving localhost to ::1 only.
    let out = pod.ns.run(&[
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
    let pod = Pod::new("address");
    let server = HttpServer::start("v6 only");
    let port = server.port;
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "--address",
        "::1",
        &format!("8080:{port}"),
    ]);
    let lines = attach.wait_forwarding(1);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(pod.curl("http://[::1]:8080/").status.success());
    assert!(
        !pod.ns.is_listening("127.0.0.1:8080"),
        "127.0.0.1 must not be bound"
    );
}

#[test]
fn one_gib_each_way_arrives_intact() {
    const GIB: u64 = 1 << 30;
    let pod = Pod::new("bulk");
    let port = free_port();
    let server = Background::start(testpeer(&[
        "serve-bulk",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--send",
        &GIB.to_string(),
    ]));
    let mut attach = Attach::start(&["--via", &pod.via, &format!("9000:{port}")]);
    attach.wait_forwarding(1);
    let out = pod.testpeer(&[
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
    let pod = Pod::new("halfclose");
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
    let mut attach = Attach::start(&["--via", &pod.via, &format!("9000:{port}")]);
    attach.wait_forwarding(1);
    let out = pod.testpeer(&["bulk", "--connect", "127.0.0.1:9000", "--send", "100000"]);
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
    let pod = Pod::new("many");
    let port = free_port();
    let _echo = Background::start(testpeer(&[
        "echo",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]));
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "-q",
        "--max-connections",
        "1000",
        &format!("9000:{port}"),
    ]);
    attach.wait_forwarding(1);
    let out = pod.testpeer(&[
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

/// 1,000 connections that each send a little and stay open: none may keep
/// a share of the channel's window it does not use, or the others starve.
#[test]
fn a_thousand_connections_held_open_after_a_ping_pong_all_get_their_echo() {
    let pod = Pod::new("held");
    let port = free_port();
    let _echo = Background::start(testpeer(&[
        "echo",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]));
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "-q",
        "--max-connections",
        "1000",
        &format!("9000:{port}"),
    ]);
    attach.wait_forwarding(1);
    let out = pod.testpeer(&[
        "many",
        "--connect",
        "127.0.0.1:9000",
        "--connections",
        "1000",
        "--bytes",
        "1",
        "--keep-open",
    ]);
    let report: ManyReport = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report.ok, 1000, "{report:?}\n{}", attach.stderr());
}

#[test]
fn the_default_limit_refuses_the_eleventh_connection() {
    let pod = Pod::new("limit");
    let port = free_port();
    let _echo = Background::start(testpeer(&[
        "echo",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]));
    let metrics_port = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        &format!("9000:{port}"),
    ]);
    attach.wait_forwarding(1);
    let out = pod.testpeer(&["probe-limit", "--connect", "127.0.0.1:9000", "--hold", "10"]);
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
    let text = scrape(metrics_port);
    assert!(
        text.contains("rpf_portforward_reverse_connections_rejected_total{reason=\"limit\"} 1"),
        "{text}"
    );
}
