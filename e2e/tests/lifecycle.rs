//! Sessions begin and end: cleanup after every kind of exit, reconnecting
//! after a lost channel, and the sidecar's `serve` mode with several
//! sessions at once over a real TCP control port.

use std::time::Duration;

use rpf_e2e::fixtures::{HttpServer, Pod};
use rpf_e2e::process::{bin, Attach, Background};

#[test]
fn kill_9_of_the_cli_frees_the_port_in_the_pod_within_a_second() {
    let pod = Pod::new("kill9");
    let server = HttpServer::start("x");
    let mut attach = Attach::start(&["--via", &pod.via, &format!("8080:{}", server.port)]);
    attach.wait_forwarding(2);
    assert!(pod.ns.is_listening("127.0.0.1:8080"));
    attach.signal("KILL");
    let took = pod
        .ns
        .wait_released("127.0.0.1:8080", Duration::from_secs(5))
        .expect("the listener must close when the CLI dies");
    assert!(took < Duration::from_secs(1), "released after {took:?}");
    assert!(!pod.ns.is_listening("[::1]:8080"));
    // And the sidecar process itself is gone, nothing lingers in the pod.
    assert!(
        wait_until(Duration::from_secs(5), || pod.ns.pids().is_empty()),
        "left behind: {:?}",
        pod.ns.pids()
    );
}

#[test]
fn ctrl_c_says_goodbye_exits_zero_and_frees_the_port() {
    let pod = Pod::new("sigint");
    let server = HttpServer::start("x");
    let mut attach = Attach::start(&["--via", &pod.via, &format!("8080:{}", server.port)]);
    attach.wait_forwarding(2);
    attach.signal("INT");
    let status = attach
        .wait_exit(Duration::from_secs(10))
        .expect("exits on Ctrl-C");
    assert!(
        status.success(),
        "exit 0 on Ctrl-C: {status}\n{}",
        attach.stderr()
    );
    assert!(
        attach.wait_stderr("the CLI said goodbye", Duration::from_secs(5)),
        "the sidecar heard the goodbye: {}",
        attach.stderr()
    );
    assert!(!pod.ns.is_listening("127.0.0.1:8080"));
}

#[test]
fn sigterm_exits_zero_too() {
    let pod = Pod::new("sigterm");
    let server = HttpServer::start("x");
    let mut attach = Attach::start(&["--via", &pod.via, &format!("8080:{}", server.port)]);
    attach.wait_forwarding(2);
    attach.signal("TERM");
    let status = attach.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status}\n{}", attach.stderr());
}

#[test]
fn a_lost_channel_is_reopened_and_the_ports_come_back() {
    let pod = Pod::new("reconnect");
    let server = HttpServer::start("back again");
    let mut attach = Attach::start(&["--via", &pod.via, &format!("8080:{}", server.port)]);
    attach.wait_forwarding(2);
    pod.ns.kill_all(); // the sidecar dies: the channel is lost
    assert!(
        attach.wait_stderr("Lost connection to host", Duration::from_secs(10)),
        "{}",
        attach.stderr()
    );
    assert!(
        attach.stderr().contains("; reconnecting"),
        "{}",
        attach.stderr()
    );
    let lines = attach.wait_forwarding(4);
    assert!(
        attach.stderr().contains("Reconnected to host"),
        "{}",
        attach.stderr()
    );
    assert_eq!(lines[2..], lines[..2], "the same listeners are back");
    let out = pod.curl("http://127.0.0.1:8080/");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "back again");
}

#[test]
fn no_reconnect_exits_non_zero_when_the_channel_is_lost() {
    let pod = Pod::new("noreconnect");
    let server = HttpServer::start("x");
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "--no-reconnect",
        &format!("8080:{}", server.port),
    ]);
    attach.wait_forwarding(2);
    pod.ns.kill_all();
    let status = attach.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(3), "a lost channel exits 3");
    assert!(
        attach.stderr().contains("error: lost connection to host"),
        "{}",
        attach.stderr()
    );
}

/// `rpf-sidecar serve` in the pod, reached over TCP (as port-forward does):
/// two sessions at once, each owning its listeners; garbage on the control
/// port hurts nobody.
#[test]
fn serve_mode_hosts_independent_sessions_over_tcp() {
    let pod = Pod::new("serve");
    let sidecar = bin("rpf-sidecar");
    let _sidecar = Background::start(pod.ns.command(&[
        "sh",
        "-c",
        &format!(
            "echo started; exec {} serve --control-addr 127.0.0.1:4499",
            sidecar.display()
        ),
    ]));
    assert!(
        wait_until(Duration::from_secs(10), || pod
            .ns
            .is_listening("127.0.0.1:4499")),
        "control port up"
    );
    let via = format!("{} socat - TCP:127.0.0.1:4499", pod.ns.exec_prefix());
    let (one, two) = (HttpServer::start("one"), HttpServer::start("two"));
    let mut a = Attach::start(&["--via", &via, &format!("8080:{}", one.port)]);
    // No grace for this one: its kill -9 below must free the port at once.
    let mut b = Attach::start(&["--via", &via, "--grace", "0", &format!("8081:{}", two.port)]);
    a.wait_forwarding(2);
    b.wait_forwarding(2);

    // Garbage on the control port ends only that session.
    let garbage = pod.ns.run(&[
        "sh",
        "-c",
        "printf 'GET / HTTP/1.1\\r\\n\\r\\n' | socat -t 2 - TCP:127.0.0.1:4499",
    ]);
    assert!(garbage.status.code().is_some(), "no hang");

    assert_eq!(
        String::from_utf8_lossy(&pod.curl("http://127.0.0.1:8080/").stdout),
        "one"
    );
    assert_eq!(
        String::from_utf8_lossy(&pod.curl("http://127.0.0.1:8081/").stdout),
        "two"
    );

    // A second session cannot take a port the first one holds.
    let mut c = Attach::start(&["--via", &via, &format!("8080:{}", two.port)]);
    let status = c.wait_exit(Duration::from_secs(20)).expect("refused");
    assert!(!status.success());
    assert!(
        c.stderr().contains("port 8080 is already in use"),
        "{}",
        c.stderr()
    );

    // Ending one session frees its ports only.
    a.signal("INT");
    assert!(a
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
    assert!(pod
        .ns
        .wait_released("127.0.0.1:8080", Duration::from_secs(5))
        .is_some());
    assert_eq!(
        String::from_utf8_lossy(&pod.curl("http://127.0.0.1:8081/").stdout),
        "two"
    );

    // Killing a CLI outright frees its ports too (the TCP channel closes),
    // once its grace period, here none, is over.
    b.signal("KILL");
    assert!(pod
        .ns
        .wait_released("127.0.0.1:8081", Duration::from_secs(5))
        .is_some());
    assert!(
        pod.ns.is_listening("127.0.0.1:4499"),
        "the sidecar keeps serving"
    );
}

#[test]
fn the_sidecar_exports_its_metrics() {
    let pod = Pod::new("sidecarmetrics");
    let server = HttpServer::start("x");
    let via = format!(
        "{} {} --metrics-addr 127.0.0.1:9464 stdio",
        pod.ns.exec_prefix(),
        bin("rpf-sidecar").display()
    );
    let mut attach = Attach::start(&["--via", &via, &format!("8080:{}", server.port)]);
    attach.wait_forwarding(2);
    assert!(pod.curl("http://127.0.0.1:8080/").status.success());
    let scrape =
        || String::from_utf8_lossy(&pod.curl("http://127.0.0.1:9464/metrics").stdout).into_owned();
    // The connection is counted once both directions have closed.
    let done = "rpf_sidecar_reverse_connections_total{status=\"success\"} 1";
    wait_until(Duration::from_secs(5), || scrape().contains(done));
    let text = scrape();
    assert!(text.contains(done), "{text}");
    assert!(
        text.contains("rpf_sidecar_reverse_listeners_active 2"),
        "{text}"
    );
    assert!(text.contains("rpf_sidecar_sessions_active 1"), "{text}");
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
