//! UDP through the tunnel: real clients in a network namespace (the pod),
//! real servers on the host (dnsmasq, the test peer's echo), `rpf attach
//! --via` between them; and sidecars that do not play by the rules.

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rpf_e2e::fake_sidecar::FakeListener;
use rpf_e2e::fixtures::{hostname, metric, scrape, testpeer, Pod};
use rpf_e2e::process::{free_port, Attach, Background};
use rpf_e2e::udp_peer::{Dnsmasq, FlowLimitReport, FlowsReport, SeqReport};
use rpf_proto::message::Message;
use rpf_proto::wire;

/// A free UDP port on the host's loopback (bound and released).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind an ephemeral UDP port")
        .port()
}

/// The test peer's UDP echo on the host.
fn udp_echo(port: u16) -> Background {
    Background::start({
        let mut cmd = testpeer(&["udp-echo", "--listen", &format!("127.0.0.1:{port}")]);
        cmd.stdin(std::process::Stdio::null());
        cmd
    })
}

/// Polls the CLI's metrics until `sample` reaches `at_least`.
fn wait_metric(port: u16, sample: &str, at_least: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = scrape(port);
        if text.contains(sample) && metric(&text, sample) >= at_least {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{sample} stayed below {at_least}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_pod_resolves_through_dnsmasq_on_the_host_over_udp_and_tcp() {
    let dns = Dnsmasq::start();
    let pod = Pod::new("udp-dns");
    let port = dns.port;
    // TCP and UDP on one port are two listeners.
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        &format!("5353:{port}/udp"),
        &format!("5353:{port}"),
    ]);
    let lines = attach.wait_forwarding(4);
    let host = hostname();
    for want in [
        format!("Forwarding from 127.0.0.1:5353/udp in host {host} -> localhost:{port}/udp"),
        format!("Forwarding from 127.0.0.1:5353 in host {host} -> localhost:{port}"),
    ] {
        assert!(lines.contains(&want), "{want} not in {lines:?}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("Forwarding from [::1]:5353/udp ")),
        "{lines:?}"
    );
    for transport in ["+notcp", "+tcp"] {
        let out = pod.ns.run(&[
            "dig",
            "@127.0.0.1",
            "-p",
            "5353",
            "example.test",
            "+short",
            "+time=5",
            "+tries=1",
            transport,
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "192.0.2.7",
            "{transport}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            attach.stderr()
        );
    }
    assert!(attach.wait_stderr("Handling UDP flow for 5353", Duration::from_secs(5)));
}

#[test]
fn a_thousand_datagrams_up_to_the_largest_come_back_intact_and_in_order() {
    let port = free_udp_port();
    let _echo = udp_echo(port);
    let pod = Pod::new("udp-seq");
    let metrics_port = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        &format!("7000:{port}/udp"),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    attach.wait_forwarding(1);
    let out = pod.testpeer(&["udp-seq", "--connect", "127.0.0.1:7000", "--count", "1000"]);
    let report: SeqReport = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report.error, None, "{}", attach.stderr());
    assert_eq!((report.sent, report.intact), (1000, 1000));
    // Over IPv6 as well (one more flow).
    let out = pod.testpeer(&["udp-seq", "--connect", "[::1]:7000", "--count", "20"]);
    let report6: SeqReport = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report6.intact, 20, "{report6:?}");
    let text = scrape(metrics_port);
    for direction in ["pod_to_local", "local_to_pod"] {
        let sample =
            format!("rpf_portforward_reverse_udp_datagrams_total{{direction=\"{direction}\"}}");
        assert_eq!(metric(&text, &sample), 1020.0, "{text}");
        let sample =
            format!("rpf_portforward_reverse_udp_bytes_total{{direction=\"{direction}\"}}");
        let want = (report.bytes + report6.bytes) as f64;
        assert_eq!(metric(&text, &sample), want, "{text}");
    }
    assert_eq!(
        metric(&text, "rpf_portforward_reverse_udp_active_flows"),
        2.0,
        "{text}"
    );
}

#[test]
fn a_hundred_concurrent_flows_are_all_served() {
    let port = free_udp_port();
    let _echo = udp_echo(port);
    let pod = Pod::new("udp-many");
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "--max-connections",
        "100",
        &format!("7000:{port}/udp"),
    ]);
    attach.wait_forwarding(1);
    let out = pod.testpeer(&["udp-many", "--connect", "127.0.0.1:7000", "--flows", "100"]);
    let report: FlowsReport = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report.error, None, "{}", attach.stderr());
    assert_eq!(report.served, 100);
}

#[test]
fn an_idle_flow_ends_and_the_next_datagram_opens_a_new_one() {
    let port = free_udp_port();
    let _echo = udp_echo(port);
    let pod = Pod::new("udp-idle");
    let metrics_port = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "--udp-idle-timeout",
        "1s",
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        &format!("7000:{port}/udp"),
    ]);
    attach.wait_forwarding(1);
    let echoed = pod.testpeer(&["udp-once", "--connect", "127.0.0.1:7000"]);
    assert_eq!(echoed.trim(), "{\"echoed\":true}", "{}", attach.stderr());
    let text = wait_metric(
        metrics_port,
        "rpf_portforward_reverse_udp_flows_total{end=\"idle\"}",
        1.0,
    );
    assert_eq!(
        metric(&text, "rpf_portforward_reverse_udp_active_flows"),
        0.0,
        "{text}"
    );
    let echoed = pod.testpeer(&["udp-once", "--connect", "127.0.0.1:7000"]);
    assert_eq!(echoed.trim(), "{\"echoed\":true}", "{}", attach.stderr());
    let opened = attach
        .stderr()
        .matches("Handling UDP flow for 7000")
        .count();
    assert_eq!(opened, 2, "{}", attach.stderr());
}

#[test]
fn beyond_the_flow_limit_a_new_peer_is_not_served_and_counted() {
    let port = free_udp_port();
    let _echo = udp_echo(port);
    let pod = Pod::new("udp-limit");
    let metrics_port = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "--max-connections",
        "2",
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        &format!("7000:{port}/udp"),
    ]);
    attach.wait_forwarding(1);
    let out = pod.testpeer(&[
        "udp-probe-limit",
        "--connect",
        "127.0.0.1:7000",
        "--hold",
        "2",
    ]);
    let report: FlowLimitReport = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        report,
        FlowLimitReport {
            held: 2,
            extra_served: false
        },
        "{}",
        attach.stderr()
    );
    wait_metric(
        metrics_port,
        "rpf_portforward_reverse_connections_rejected_total{reason=\"limit\"}",
        1.0,
    );
    assert!(attach.wait_stderr("limit of 2 concurrent flows", Duration::from_secs(5)));
}

#[test]
fn a_missing_local_target_is_counted_not_fatal() {
    let port = free_udp_port();
    let pod = Pod::new("udp-refused");
    let metrics_port = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        &format!("7000:{port}/udp"),
    ]);
    attach.wait_forwarding(1);
    let echoed = pod.testpeer(&[
        "udp-once",
        "--connect",
        "127.0.0.1:7000",
        "--wait-secs",
        "1",
    ]);
    assert_eq!(echoed.trim(), "{\"echoed\":false}");
    wait_metric(
        metrics_port,
        "rpf_portforward_reverse_udp_flows_total{end=\"refused\"}",
        1.0,
    );
    assert!(attach.wait_stderr(
        &format!("nothing listens on local UDP port {port}"),
        Duration::from_secs(5)
    ));
    assert!(attach.wait_exit(Duration::from_millis(200)).is_none());
    let _echo = udp_echo(port);
    let echoed = pod.testpeer(&["udp-once", "--connect", "127.0.0.1:7000"]);
    assert_eq!(echoed.trim(), "{\"echoed\":true}", "{}", attach.stderr());
}

/// A pod floods a target that never reads (its socket is bound, so no
/// ICMP ends the flow): 120 MB in 100,000 datagrams as fast as the pod
/// can send. What the tunnel cannot carry is shed, never hoarded: the
/// pod's kernel drops what the sidecar's read loop cannot take, and a
/// flow's queue holds at most 128 datagrams / 512 KiB (measured by hand on
/// a debug build: ~79,000 `UdpRcvbufErrors` in the pod, ~21,000 carried,
/// no queue drop). Neither end grows with the flood, and the session
/// still carries the next flow.
#[test]
fn a_flood_against_a_stalled_target_stays_within_the_queue_bound() {
    use rpf_e2e::fake_sidecar::{peak_rss_kib, rss_kib};
    let stalled = free_udp_port();
    let _stalled = Background::start({
        let mut cmd = Command::new("python3");
        cmd.args([
            "-u",
            "-c",
            "import socket, sys, time\n\
             s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
             s.bind(('127.0.0.1', int(sys.argv[1])))\n\
             print('listening', flush=True)\n\
             time.sleep(600)",
            &stalled.to_string(),
        ]);
        cmd
    });
    let echo = free_udp_port();
    let _echo = udp_echo(echo);
    let pod = Pod::new("udp-flood");
    let metrics_port = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        &format!("7000:{stalled}/udp"),
        &format!("7001:{echo}/udp"),
    ]);
    attach.wait_forwarding(2);
    let sidecar = *pod.ns.pids().first().expect("the sidecar runs in the pod");
    let before = (rss_kib(attach.pid()), rss_kib(sidecar));
    let sent = pod.testpeer(&[
        "udp-flood",
        "--connect",
        "127.0.0.1:7000",
        "--count",
        "100000",
        "--size",
        "1200",
    ]);
    let peak = (peak_rss_kib(attach.pid()), peak_rss_kib(sidecar));
    let text = scrape(metrics_port);
    let arrived = metric(
        &text,
        "rpf_portforward_reverse_udp_datagrams_total{direction=\"pod_to_local\"}",
    );
    eprintln!(
        "flood: {} from the pod, {arrived} reached the CLI; RSS before (CLI, sidecar) {before:?} KiB, peak {peak:?} KiB",
        sent.trim()
    );
    assert!(arrived > 0.0, "{text}");
    // The queues bound a flow at 512 KiB; HTTP/2 windows and buffers add a
    // few MiB. A tunnel that hoarded the flood would hold ~120 MB.
    for (name, before, peak) in [("CLI", before.0, peak.0), ("sidecar", before.1, peak.1)] {
        assert!(
            peak < before + 32 * 1024,
            "{name} grew from {before} KiB to {peak} KiB during the flood"
        );
    }
    let echoed = pod.testpeer(&["udp-once", "--connect", "127.0.0.1:7001"]);
    assert_eq!(echoed.trim(), "{\"echoed\":true}", "{}", attach.stderr());
    assert!(attach.wait_exit(Duration::from_millis(100)).is_none());
}

/// A sidecar from before UDP: its hello lists no `udp` feature.
#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_without_udp_is_refused_with_the_fix_not_bound_as_tcp() {
    let fake = FakeListener::bind().await;
    let mut attach = Attach::start(&["--via", &fake.via, "5353:53/udp"]);
    let hello = Message::Hello {
        protocol: rpf_proto::PROTOCOL_VERSION,
        software: "0.0.9".into(),
        pod: None,
        hostname: Some("old".into()),
        resume: false,
        features: vec![],
    };
    let mut pod = fake.accept(&hello).await;
    let mut told = Vec::new();
    while let Some(m) = pod.next().await {
        let end = matches!(m, Message::Goodbye { .. });
        told.push(m);
        if end {
            break;
        }
    }
    assert!(
        !told.iter().any(|m| matches!(m, Message::Bind { .. })),
        "nothing is bound: {told:?}"
    );
    let status = tokio::task::block_in_place(|| attach.wait_exit(Duration::from_secs(20)))
        .expect("the CLI exits instead of hanging");
    assert!(!status.success());
    let stderr = attach.stderr();
    assert!(
        stderr.contains("this sidecar (rpf-sidecar 0.0.9) does not support UDP")
            && stderr.contains("upgrade it to rpf-sidecar"),
        "{stderr}"
    );
}

/// A flow stream whose length prefix announces more than a datagram holds:
/// that flow is reset, nothing is allocated for it, the session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_length_prefix_resets_only_its_flow() {
    let port = free_udp_port();
    let _echo = udp_echo(port);
    let fake = FakeListener::bind().await;
    let mut attach = Attach::start(&["--via", &fake.via, &format!("7000:{port}/udp")]);
    let hello = Message::Hello {
        protocol: rpf_proto::PROTOCOL_VERSION,
        software: rpf_proto::SOFTWARE_VERSION.into(),
        pod: None,
        hostname: Some("fake".into()),
        resume: false,
        features: vec![rpf_proto::features::UDP.into()],
    };
    let mut pod = fake.accept(&hello).await;
    let ids = pod.accept_bind().await;
    let request = |peer: &str| {
        http::Request::post(wire::UDP_URI)
            .header(wire::LISTENER_HEADER, ids[0].to_string())
            .header(wire::PEER_HEADER, peer)
            .body(())
            .unwrap()
    };
    let mut client = pod.client.clone().ready().await.unwrap();
    let (response, mut send) = client
        .send_request(request("127.0.0.1:40000"), false)
        .unwrap();
    send.send_data(Bytes::from_static(&[0xff, 0xe4]), false)
        .unwrap();
    let answered = async {
        // The reset may overtake the answer's headers.
        match response.await {
            Ok(r) => match r.into_body().data().await {
                Some(Err(e)) => e.reason(),
                other => panic!("expected a reset, got {other:?}"),
            },
            Err(e) => e.reason(),
        }
    };
    let reason = tokio::time::timeout(Duration::from_secs(10), answered)
        .await
        .expect("the CLI answers the flow");
    assert_eq!(reason, Some(h2::Reason::PROTOCOL_ERROR));
    // A well-framed flow on the same channel still works.
    let mut client = client.ready().await.unwrap();
    let (response, mut send) = client
        .send_request(request("127.0.0.1:40001"), false)
        .unwrap();
    send.send_data(Bytes::from_static(b"\x00\x05hello"), false)
        .unwrap();
    let mut body = response.await.unwrap().into_body();
    let echo = tokio::time::timeout(Duration::from_secs(10), body.data())
        .await
        .expect("echo")
        .expect("data")
        .expect("no error");
    assert_eq!(&echo[..], b"\x00\x05hello");
    assert!(tokio::task::block_in_place(|| attach.wait_stderr(
        "length prefix 65508 is larger than the UDP maximum",
        Duration::from_secs(5)
    )));
    assert!(tokio::task::block_in_place(|| attach.wait_exit(Duration::from_millis(200))).is_none());
}
