//! The readiness endpoint of `rpf-sidecar serve --ready-addr` (what an
//! `rpf expose` relay's readinessProbe asks): 503 until a session has its
//! listeners bound and its channel attached, 200 while it has, 503 again
//! once it ends or is only held for a grace period; on SIGTERM with
//! `--drain`, 503 at once while the ports keep serving until the drain is
//! over. Real processes on the host's loopback, the channel through socat.

use std::process::Command;
use std::time::{Duration, Instant};

use rpf_e2e::fixtures::HttpServer;
use rpf_e2e::process::{bin, free_port, Attach, Background};

/// `rpf-sidecar serve` on the host with a readiness endpoint.
struct Relay {
    process: Background,
    control: u16,
    ready: u16,
}

impl Relay {
    fn start(drain: &str) -> Self {
        let (control, ready) = (free_port(), free_port());
        let process = Background::start({
            let mut cmd = Command::new("sh");
            cmd.args([
                "-c",
                &format!(
                    "echo started; exec {} serve --control-addr 127.0.0.1:{control} --ready-addr 127.0.0.1:{ready} --drain {drain}",
                    bin("rpf-sidecar").display()
                ),
            ]);
            cmd
        });
        let relay = Relay {
            process,
            control,
            ready,
        };
        assert!(
            wait_until(Duration::from_secs(10), || relay.status() != 0),
            "readiness endpoint up"
        );
        relay
    }

    fn via(&self) -> String {
        format!("socat - TCP:127.0.0.1:{}", self.control)
    }

    /// HTTP status of `GET /ready` (0: no answer).
    fn status(&self) -> u16 {
        http_status(&format!("http://127.0.0.1:{}/ready", self.ready))
    }
}

fn http_status(url: &str) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
            url,
        ])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .expect("curl");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn ready_only_while_a_session_serves() {
    let relay = Relay::start("0s");
    let server = HttpServer::start("through the relay");
    assert_eq!(relay.status(), 503, "no session yet");

    let remote = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &relay.via(),
        "--address",
        "127.0.0.1",
        "--grace",
        "30s",
        &format!("{remote}:{}", server.port),
    ]);
    attach.wait_forwarding(1);
    assert!(
        wait_until(Duration::from_secs(5), || relay.status() == 200),
        "ready once bound: {}",
        relay.status()
    );
    assert_eq!(
        get(&format!("http://127.0.0.1:{remote}/")).as_deref(),
        Some("through the relay")
    );

    // kill -9: the session is held for its grace period, ports still bound,
    // but the relay is not ready (its CLI may never come back).
    attach.signal("KILL");
    assert!(
        wait_until(Duration::from_secs(10), || relay.status() == 503),
        "held sessions are not ready: {}",
        relay.status()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", remote)).is_ok(),
        "the held session keeps its port"
    );
    drop(attach);

    // A new session: ready again; Ctrl-C: not ready.
    let other = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &relay.via(),
        "--address",
        "127.0.0.1",
        &format!("{other}:{}", server.port),
    ]);
    attach.wait_forwarding(1);
    assert!(wait_until(Duration::from_secs(5), || relay.status() == 200));
    attach.signal("INT");
    attach.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(
        wait_until(Duration::from_secs(5), || relay.status() == 503),
        "not ready after goodbye"
    );
}

#[test]
fn sigterm_turns_unready_but_keeps_serving_for_the_drain() {
    let relay = Relay::start("3s");
    let server = HttpServer::start("still here");
    let remote = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &relay.via(),
        "--address",
        "127.0.0.1",
        &format!("{remote}:{}", server.port),
    ]);
    attach.wait_forwarding(1);
    assert!(wait_until(Duration::from_secs(5), || relay.status() == 200));

    let _ = Command::new("kill")
        .args(["-TERM", &relay.process.pid().to_string()])
        .status();
    assert!(
        wait_until(Duration::from_secs(2), || relay.status() == 503),
        "unready at once on SIGTERM"
    );
    // Draining: the forwarded port still carries new connections.
    assert_eq!(
        get(&format!("http://127.0.0.1:{remote}/")).as_deref(),
        Some("still here")
    );
    // After the drain the sidecar ends the session and exits.
    assert!(
        attach.wait_stderr("Lost connection", Duration::from_secs(15)),
        "{}",
        attach.stderr()
    );
    assert!(
        wait_until(Duration::from_secs(10), || relay.status() == 0),
        "the sidecar exited"
    );
}
