//! `rpf attach --output json`: every line on stdout is one JSON event with
//! the documented fields, for a real session with real peers: a served
//! HTTP request, a dead local target, a refusal at the limit, a lost and
//! reopened channel, and the final error of `--no-reconnect`.

use std::time::{Duration, Instant};

use rpf_e2e::fixtures::{testpeer, HttpServer, Pod};
use rpf_e2e::peer::LimitReport;
use rpf_e2e::process::{free_port, Attach, Background};
use serde_json::Value;

/// Every stdout line as JSON; panics on a line that is not.
fn events(attach: &Attach) -> Vec<Value> {
    attach
        .stdout()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}")))
        .collect()
}

/// Waits until `n` events match `pred`; returns them.
fn wait_events(attach: &Attach, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found: Vec<Value> = events(attach).into_iter().filter(|e| pred(e)).collect();
        if found.len() >= n {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} such events within 20s; stdout: {:#?}\nstderr:\n{}",
            attach.stdout(),
            attach.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn is(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["event"] == kind
}

#[test]
fn a_session_is_a_stream_of_json_events() {
    let pod = Pod::new("events");
    let server = HttpServer::start("hello events");
    let dead = free_port();
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "-o",
        "json",
        &format!("8080:{}", server.port),
        &format!("8081:{dead}"),
    ]);
    let forwarding = wait_events(&attach, 4, is("forwarding"));
    let mut addresses: Vec<&str> = forwarding
        .iter()
        .map(|e| e["address"].as_str().unwrap())
        .collect();
    addresses.sort();
    assert_eq!(
        addresses,
        [
            "127.0.0.1:8080",
            "127.0.0.1:8081",
            "[::1]:8080",
            "[::1]:8081"
        ]
    );
    let first = &forwarding[0];
    assert_eq!(first["protocol"], "tcp");
    assert!(
        first["place"].as_str().unwrap().starts_with("host "),
        "{first}"
    );
    assert!(first["time"].as_str().unwrap().ends_with('Z'), "{first}");
    assert!(
        forwarding
            .iter()
            .any(|e| e["target"] == format!("localhost:{}", server.port)),
        "{forwarding:?}"
    );

    // A served request: opened, then closed with the bytes both ways.
    let out = pod.curl("http://127.0.0.1:8080/");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello events");
    let closed = wait_events(&attach, 1, |e| {
        e["event"] == "connection_closed" && e["port"] == 8080
    });
    let closed = &closed[0];
    assert_eq!(closed["outcome"], "closed", "{closed}");
    assert!(closed["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(closed["bytes_to_pod"].as_u64().unwrap() > "hello events".len() as u64);
    assert!(closed["bytes_from_pod"].as_u64().unwrap() > 0);
    assert!(closed["duration_ms"].is_u64());
    assert!(closed.get("error").is_none(), "{closed}");
    let opened = wait_events(&attach, 1, is("connection_opened"));
    assert_eq!(opened[0]["port"], 8080);
    assert_eq!(opened[0]["peer"], closed["peer"]);

    // Nothing listens behind 8081: the end says why.
    let out = pod.curl("http://127.0.0.1:8081/");
    assert!(!out.status.success());
    let failed = wait_events(&attach, 1, |e| {
        e["event"] == "connection_closed" && e["port"] == 8081
    });
    assert_eq!(failed[0]["outcome"], "target_unreachable", "{}", failed[0]);
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("connection refused"),
        "{}",
        failed[0]
    );

    // The channel is lost and comes back: lost, reconnected, forwarding.
    pod.ns.kill_all();
    let lost = wait_events(&attach, 1, is("lost"));
    assert_eq!(lost[0]["reconnecting"], true, "{}", lost[0]);
    assert!(lost[0]["error"].as_str().is_some_and(|e| !e.is_empty()));
    let back = wait_events(&attach, 1, is("reconnected"));
    assert!(back[0]["resumed"].is_boolean(), "{}", back[0]);
    wait_events(&attach, 8, is("forwarding"));

    // No human line leaked into the stream or the log.
    assert!(
        !attach.stderr().contains("Handling connection"),
        "{}",
        attach.stderr()
    );
    attach.signal("TERM");
    let status = attach.wait_exit(Duration::from_secs(10)).expect("exits");
    assert!(status.success(), "{status}\n{}", attach.stderr());
    events(&attach); // every line, to the last, is JSON
}

#[test]
fn refusals_and_the_final_error_are_events_too() {
    let pod = Pod::new("events-end");
    let port = free_port();
    let _echo = Background::start(testpeer(&[
        "echo",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]));
    let mut attach = Attach::start(&[
        "--via",
        &pod.via,
        "--output=json",
        "--no-reconnect",
        "--max-connections",
        "1",
        &format!("9000:{port}"),
    ]);
    wait_events(&attach, 2, is("forwarding"));
    // One connection held, the next refused by the sidecar at the limit.
    let report = pod.testpeer(&["probe-limit", "--connect", "127.0.0.1:9000", "--hold", "1"]);
    let report: LimitReport = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(report.extra, "refused", "{report:?}");
    let refused = wait_events(&attach, 1, is("refused"));
    assert_eq!(refused[0]["reason"], "limit", "{}", refused[0]);
    assert_eq!(refused[0]["port"], 9000);
    assert_eq!(refused[0]["protocol"], "tcp");

    // Without reconnecting, a lost channel ends the command: the last two
    // events say so, with the exit status.
    pod.ns.kill_all();
    let status = attach.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(3), "{}", attach.stderr());
    let all = events(&attach);
    let tail: Vec<&Value> = all.iter().rev().take(2).rev().collect();
    assert_eq!(tail[0]["event"], "lost", "{all:#?}");
    assert_eq!(tail[0]["reconnecting"], false);
    assert_eq!(tail[1]["event"], "error");
    assert_eq!(tail[1]["exit_code"], 3);
    assert!(
        tail[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("lost connection to host"),
        "{}",
        tail[1]
    );
    // The human error line is still on stderr.
    assert!(attach.stderr().contains("error: lost connection to host"));
}
