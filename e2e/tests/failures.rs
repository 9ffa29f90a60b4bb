//! Bad input and broken peers: every case ends with a clear message, a
//! non-zero exit where the user asked for something impossible, no panic,
//! no hang, and nothing left bound.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rpf_e2e::fake_sidecar::read_messages;
use rpf_e2e::fixtures::{testpeer, HttpServer, Pod};
use rpf_e2e::process::{bin, free_port, Attach, Background};
use rpf_proto::message::Message;
use rpf_proto::wire;

#[test]
fn malformed_specs_fail_before_anything_starts() {
    let marker = std::env::temp_dir().join(format!("rpf-e2e-marker-{}", std::process::id()));
    let via = format!("touch {}", marker.display());
    let cases: [(&[&str], &str); 7] = [
        (&["0:80"], "remote port \"0\""),
        (&["70000:80"], "remote port \"70000\""),
        (&["a:b"], "remote port \"a\""),
        (&["8080:"], "local port is missing"),
        (
            &["8080:80", "9090", "8080:81"],
            "remote port 8080 is given twice",
        ),
        (&["8080:[::1]80"], "invalid port spec"),
        (&[], "required arguments were not provided"),
    ];
    for (specs, want) in cases {
        let out = Command::new(bin("rpf"))
            .args(["attach", "--via", &via])
            .args(specs)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{specs:?}: bad input exits 2");
        assert!(stderr.starts_with("error: "), "{specs:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{specs:?}: {stderr} should say {want}"
        );
        assert!(out.stdout.is_empty(), "{specs:?}: nothing forwarded");
    }
    assert!(!marker.exists(), "the channel command must not have run");
    // clap's own checks (a limit of 0) read the same way.
    let out = Command::new(bin("rpf"))
        .args(["attach", "--via", "true", "--max-connections", "0", "8080"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error: "));
}

/// `rpf expose` refuses a wrong command line with exit status 2 before it
/// reads a kubeconfig (one that does not exist: reaching for it would be a
/// different error, exit 1), so nothing is ever half-created.
#[test]
fn a_wrong_expose_command_fails_before_the_cluster() {
    let cases: [(&[&str], &str); 9] = [
        (&["svc/web", "0:80"], "remote port \"0\""),
        (&["svc/web", "80:abc"], "local port \"abc\""),
        (&["svc/web", "53/sctp"], "unknown protocol \"sctp\""),
        (&["svc/web", "80", "--replicas", "0"], "0 is not in 1..=20"),
        (&["svc/Bad_Name", "80"], "invalid service name"),
        (&["deploy/web", "80"], "the kind must be svc"),
        (&["svc/web"], "no port given after svc/web"),
        (
            &["svc/web", "53/udp", "--gateway", "infra/public"],
            "--gateway needs a TCP port",
        ),
        (
            &["svc/web", "80", "--gateway", "a/b/c"],
            "invalid --gateway",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(bin("rpf"))
            .arg("expose")
            .args(args)
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(want),
            "{args:?}: {stderr} should say {want}"
        );
        assert!(!stderr.contains("kubeconfig"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_port_already_bound_in_the_pod_fails_before_forwarding_and_binds_nothing() {
    let pod = Pod::new("inuse");
    let server = HttpServer::start("x");
    let bin = bin("rpf-testpeer");
    let _squatter = Background::start(pod.ns.command(&[
        bin.to_str().unwrap(),
        "listen",
        "--listen",
        "127.0.0.1:8080",
    ]));
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        &format!("8081:{}", server.port),
        &format!("8080:{}", server.port),
    ]);
    let status = attach
        .wait_exit(Duration::from_secs(20))
        .expect("attach must give up");
    assert_eq!(
        status.code(),
        Some(1),
        "a refusal exits 1, not as bad input or lost"
    );
    let stderr = attach.stderr();
    assert!(
        stderr.contains(&format!(
            "error: port 8080 is already in use in host {}",
            rpf_e2e::fixtures::hostname()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("127.0.0.1:8080"),
        "names the address: {stderr}"
    );
    assert!(
        attach.stdout().iter().all(|l| !l.starts_with("Forwarding")),
        "{:?}",
        attach.stdout()
    );
    // The other forward of the same command was bound first, then released.
    assert!(
        !pod.ns.is_listening("127.0.0.1:8081"),
        "8081 must not stay bound"
    );
}

#[test]
fn a_local_target_not_listening_resets_the_pod_connection_and_the_tunnel_goes_on() {
    let pod = Pod::new("refused");
    let server = HttpServer::start("still serving");
    let dead = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        &format!("8080:{dead}"),
        &format!("8081:{}", server.port),
    ]);
    attach.wait_forwarding(4);
    let started = Instant::now();
    let out = pod.curl("http://127.0.0.1:8080/");
    assert!(!out.status.success(), "the pod's connection must fail");
    let why = String::from_utf8_lossy(&out.stderr);
    // curl words a reset that beats its non-blocking connect check as
    // "Couldn't connect"; the CLI's log below proves the connection crossed.
    assert!(
        why.contains("reset") || why.contains("Empty reply") || why.contains("Couldn't connect"),
        "reset, not a timeout: {why}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "promptly, not by curl's timeout"
    );
    assert!(
        attach.wait_stderr(
            &format!("cannot connect to local port {dead}: connection refused"),
            Duration::from_secs(5)
        ),
        "{}",
        attach.stderr()
    );
    let out = pod.curl("http://127.0.0.1:8081/");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "still serving");
}

#[test]
fn garbage_or_silence_on_the_channel_is_a_clear_error() {
    let cases = [
        (
            "echo 'HTTP/1.1 400 Bad Request'; sleep 5",
            "does not speak rpf's protocol",
        ),
        (
            "head -c 100000 /dev/urandom; sleep 5",
            "does not speak rpf's protocol",
        ),
        ("exit 3", "channel lost"),
    ];
    for (via, want) in cases {
        let started = Instant::now();
        let out = Command::new(bin("rpf"))
            .args(["attach", "--via", via, "8080"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{via}: {stderr}");
        assert!(stderr.contains("error: "), "{via}: {stderr}");
        assert!(stderr.contains(want), "{via}: {stderr} should say {want}");
        assert!(!stderr.contains("panicked"), "{via}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{via}: took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn garbage_into_the_sidecar_is_a_clear_error() {
    for input in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xffu8; 4096][..],
        b"",
    ] {
        let mut child = Command::new(bin("rpf-sidecar"))
            .arg("stdio")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin.write_all(input);
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{input:?}: {stderr}");
        assert!(stderr.contains("rpf-sidecar: error: "), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// A sidecar from the future (protocol 99), reached through `--via socat`.
#[tokio::test(flavor = "multi_thread")]
async fn a_sidecar_speaking_another_protocol_version_is_named_with_the_fix() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let fake = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut client = client.ready().await.unwrap();
        let req = http::Request::post(wire::SESSION_URI).body(()).unwrap();
        let (resp, mut send) = client.send_request(req, false).unwrap();
        let hello = serde_json::json!({"type": "hello", "protocol": 99, "software": "9.9.9"});
        send.send_data(Bytes::from(format!("{hello}\n")), false)
            .unwrap();
        read_messages(resp.await.unwrap().into_body()).await
    });
    let out = tokio::process::Command::new(bin("rpf"))
        .args([
            "attach",
            "--via",
            &format!("socat - TCP:127.0.0.1:{port}"),
            "8080",
        ])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("the sidecar speaks rpf protocol 99, the CLI speaks protocol 1; upgrade rpf (the CLI) to 9.9.9 or later"),
        "{stderr}"
    );
    let told = fake.await.unwrap();
    assert!(
        matches!(told.first(), Some(Message::Error { message }) if message.contains("protocol 99")),
        "the sidecar is told too: {told:?}"
    );
}

/// A CLI from the future (protocol 99) against a real `rpf-sidecar stdio`.
#[tokio::test(flavor = "multi_thread")]
async fn a_cli_speaking_another_protocol_version_is_named_by_the_sidecar() {
    let mut child = tokio::process::Command::new(bin("rpf-sidecar"))
        .arg("stdio")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let io = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let mut conn = h2::server::handshake(io).await.unwrap();
    let (req, mut respond) = conn.accept().await.unwrap().unwrap();
    let driver = tokio::spawn(async move { while conn.accept().await.is_some() {} });
    let mut send = respond
        .send_response(http::Response::new(()), false)
        .unwrap();
    let hello = serde_json::json!({"type": "hello", "protocol": 99, "software": "9.9.9"});
    send.send_data(Bytes::from(format!("{hello}\n")), false)
        .unwrap();
    let told = read_messages(req.into_body()).await;
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("the sidecar exits")
        .unwrap();
    driver.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "the sidecar speaks rpf protocol 1, the CLI speaks protocol 99; upgrade the sidecar"
        ),
        "{stderr}"
    );
    assert!(
        matches!(told.first(), Some(Message::Hello { protocol: 1, .. })),
        "{told:?}"
    );
    assert!(
        told.iter().any(
            |m| matches!(m, Message::Error { message } if message.contains("upgrade the sidecar"))
        ),
        "{told:?}"
    );
}

/// The sidecar dies mid-transfer: with `--no-reconnect` the CLI exits
/// non-zero and names the loss; the host side is reset, nothing hangs.
#[test]
fn a_sidecar_vanishing_mid_transfer_ends_everything_cleanly() {
    let pod = Pod::new("vanish");
    let port = free_port();
    let host = Background::start(testpeer(&[
        "serve-bulk",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--send",
        "100000000000",
    ]));
    let mut attach = Attach::start(&["--via", &pod.via, "--no-reconnect", &format!("9000:{port}")]);
    attach.wait_forwarding(1);
    let bin = bin("rpf-testpeer");
    let _client = Background::start({
        let mut c = pod.ns.command(&[
            "sh",
            "-c",
            &format!(
                "echo started; exec {} bulk --connect 127.0.0.1:9000 --send 100000000000",
                bin.display()
            ),
        ]);
        c.stdin(Stdio::null());
        c
    });
    std::thread::sleep(Duration::from_millis(1500));
    pod.ns.kill_all();
    let status = attach
        .wait_exit(Duration::from_secs(20))
        .expect("attach exits");
    assert_eq!(status.code(), Some(3), "a lost channel exits 3");
    let stderr = attach.stderr();
    assert!(
        stderr.contains("error: lost connection to host"),
        "{stderr}"
    );
    let lines = host.wait_lines(2, Duration::from_secs(10));
    assert!(
        lines.get(1).is_some_and(|l| l.contains("error")),
        "the host side sees an abort, not a clean end: {lines:?}"
    );
}
