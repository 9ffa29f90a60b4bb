//! A lost channel is not a lost session: with `rpf-sidecar serve` (which
//! outlives its channels) the pod's ports stay bound for the grace period,
//! connections made in the gap wait and then flow, and the session is
//! resumed with its token. After the grace period, or on Ctrl-C, the ports
//! close as before.
//!
//! The channel runs through a `--via` connector (`socat` to the sidecar's
//! control port) behind a gate file: killing the connector loses the
//! channel, and while the gate is closed no new channel can be opened, so
//! the gap lasts as long as the test wants.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rpf_e2e::fixtures::{HttpServer, Pod};
use rpf_e2e::process::{bin, Attach, Background};

/// A pod running `rpf-sidecar serve`, and a gated `--via` to reach it.
struct ServePod {
    pod: Pod,
    sidecar: Background,
    gate: PathBuf,
    via: String,
}

impl ServePod {
    fn new(tag: &str) -> Self {
        let pod = Pod::new(tag);
        let sidecar = Background::start(pod.ns.command(&[
            "sh",
            "-c",
            &format!(
                "echo started; exec {} serve --control-addr 127.0.0.1:4499",
                bin("rpf-sidecar").display()
            ),
        ]));
        assert!(
            wait_until(Duration::from_secs(10), || pod
                .ns
                .is_listening("127.0.0.1:4499")),
            "control port up"
        );
        let gate = std::env::temp_dir().join(format!("rpf-e2e-gate-{}", pod.ns.name()));
        std::fs::write(&gate, "open").expect("gate file");
        let via = format!(
            "test -e {} && exec {} socat - TCP:127.0.0.1:4499",
            gate.display(),
            pod.ns.exec_prefix()
        );
        ServePod {
            pod,
            sidecar,
            gate,
            via,
        }
    }

    /// Kills the connector (not rpf, not the sidecar) and keeps new ones
    /// from starting: the channel is lost and stays down.
    fn cut_channel(&self) {
        let _ = std::fs::remove_file(&self.gate);
        let connectors: Vec<u32> = self
            .pod
            .ns
            .pids()
            .into_iter()
            .filter(|pid| *pid != self.sidecar.pid())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "socat")
            })
            .collect();
        assert!(!connectors.is_empty(), "no connector to kill");
        for pid in connectors {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }

    /// Lets rpf open channels again.
    fn restore_channel(&self) {
        std::fs::write(&self.gate, "open").expect("gate file");
    }
}

impl Drop for ServePod {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.gate);
    }
}

#[test]
fn a_connection_made_while_the_channel_is_down_waits_and_then_flows() {
    let pod = ServePod::new("gracewait");
    let server = HttpServer::start("waited for you");
    let mut attach = Attach::start(&["--via", &pod.via, &format!("8080:{}", server.port)]);
    let first = attach.wait_forwarding(2);

    pod.cut_channel();
    assert!(
        attach.wait_stderr("Lost connection to host", Duration::from_secs(10)),
        "{}",
        attach.stderr()
    );
    assert!(
        attach.stderr().contains("the sidecar keeps the ports"),
        "{}",
        attach.stderr()
    );
    // The port stays bound in the gap, and a client that connects now is
    // held, not refused.
    assert!(pod.pod.ns.is_listening("127.0.0.1:8080"));
    let client = {
        let cmd =
            pod.pod
                .ns
                .command(&["curl", "-sS", "--max-time", "60", "http://127.0.0.1:8080/"]);
        std::thread::spawn(move || {
            let mut cmd = cmd;
            cmd.output().expect("curl")
        })
    };
    // Let the client connect while the channel is still down.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!client.is_finished(), "the client waits for the channel");
    assert!(!attach.stderr().contains("Reconnected"), "still down");

    pod.restore_channel();
    let out = client.join().expect("client thread");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        attach.stderr()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "waited for you");
    assert!(
        attach.stderr().contains("session resumed"),
        "{}",
        attach.stderr()
    );
    let lines = attach.wait_forwarding(4);
    assert_eq!(lines[2..], first[..], "the same listeners, never rebound");
    assert!(!attach.stderr().contains("starting a new session"));

    // Ctrl-C on the resumed session frees the port at once, as ever.
    attach.signal("INT");
    let status = attach
        .wait_exit(Duration::from_secs(10))
        .expect("exits on Ctrl-C");
    assert!(status.success(), "{status}\n{}", attach.stderr());
    assert!(
        pod.pod
            .ns
            .wait_released("127.0.0.1:8080", Duration::from_secs(5))
            .is_some(),
        "Ctrl-C frees the port"
    );
}

#[test]
fn after_the_grace_period_the_port_is_free_and_a_new_session_binds_it() {
    let pod = ServePod::new("graceover");
    let server = HttpServer::start("fresh");
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "--grace",
        "3s",
        &format!("8080:{}", server.port),
    ]);
    attach.wait_forwarding(2);
    pod.cut_channel();
    assert!(
        attach.wait_stderr("Lost connection to host", Duration::from_secs(10)),
        "{}",
        attach.stderr()
    );
    // Bindable again, not merely refusing: probing with connections would
    // not do, as they are held in the gap and, past the connection limit,
    // reset.
    assert!(
        wait_until(Duration::from_secs(30), || pod
            .pod
            .ns
            .run(&[
                "python3",
                "-c",
                "import socket; s = socket.socket(); s.bind(('127.0.0.1', 8080)); s.listen()",
            ])
            .status
            .success()),
        "the port must be free once the grace period is over"
    );

    // The session is gone: resuming it is refused, said in one line, and a
    // new session binds the ports anew.
    pod.restore_channel();
    attach.wait_forwarding(4);
    let stderr = attach.stderr();
    assert!(
        stderr.contains("did not resume the session (no session with this token"),
        "{stderr}"
    );
    assert!(
        stderr.contains("starting a new session, binding the ports anew"),
        "{stderr}"
    );
    let out = pod.pod.curl("http://127.0.0.1:8080/");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "fresh");
}

#[test]
fn ctrl_c_frees_the_port_at_once_even_with_a_grace_period() {
    let pod = ServePod::new("gracesigint");
    let server = HttpServer::start("x");
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "--grace",
        "10m",
        &format!("8080:{}", server.port),
    ]);
    attach.wait_forwarding(2);
    attach.signal("INT");
    let status = attach.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status}\n{}", attach.stderr());
    assert!(
        pod.pod
            .ns
            .wait_released("127.0.0.1:8080", Duration::from_secs(5))
            .is_some(),
        "a goodbye closes the session whatever its grace"
    );
    assert!(
        pod.pod.ns.is_listening("127.0.0.1:4499"),
        "sidecar serves on"
    );
}

#[test]
fn grace_zero_closes_the_ports_with_the_channel() {
    let pod = ServePod::new("gracezero");
    let server = HttpServer::start("x");
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "--grace",
        "0",
        &format!("8080:{}", server.port),
    ]);
    attach.wait_forwarding(2);
    pod.cut_channel();
    assert!(
        pod.pod
            .ns
            .wait_released("127.0.0.1:8080", Duration::from_secs(5))
            .is_some(),
        "no grace: the port closes with the channel"
    );
    assert!(
        attach.wait_stderr("Lost connection to host", Duration::from_secs(10)),
        "{}",
        attach.stderr()
    );
    assert!(!attach.stderr().contains("keeps the ports"));
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
