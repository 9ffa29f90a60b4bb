//! What the CLI tells its user, as typed events: each is printed either as
//! the human line it always was, or (`--output json`) as one JSON object a
//! line on stdout, for scripts. docs/events.md names every field; the
//! names are a contract, like the exit statuses.
//!
//! The human text stays at its call site (a closure), so it reads as
//! before and keeps its rate limit; the event carries the facts.

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use rpf_proto::message::{Protocol, RejectReason};
use serde::Serialize;

use crate::ratelimit::Throttle;

/// How events are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Output {
    /// The human lines (stdout for `Forwarding from`, the log for the rest).
    #[default]
    Human,
    /// One JSON object a line on stdout; the human lines are not printed.
    Json,
}

impl Output {
    /// Reports `event`: as JSON, or by running `human`, which prints the
    /// line people read.
    pub fn report<E: Serialize>(self, event: &E, human: impl FnOnce()) {
        match self {
            Output::Human => human(),
            Output::Json => print_json(event),
        }
    }

    /// Like [`Output::report`], for events a peer can trigger at will
    /// (the sidecar's refusals): as JSON, the first few of a window are
    /// printed and the rest counted, with the count logged as a warning
    /// when the window ends, as the human lines are ([`crate::ratelimit`]).
    pub fn report_limited<E: Serialize>(
        self,
        throttle: &'static Throttle,
        event: &E,
        human: impl FnOnce(),
    ) {
        match self {
            Output::Human => human(),
            Output::Json if throttle.admit() => {
                throttle.remember("a refused event");
                print_json(event)
            }
            Output::Json => {}
        }
    }
}

/// A JSON event line: the time, then the event's own fields.
#[derive(Serialize)]
struct Line<'a, E> {
    time: String,
    #[serde(flatten)]
    event: &'a E,
}

/// Writes one line to stdout. A closed stdout (the reading script is gone)
/// loses the event rather than ending the session.
fn print_json<E: Serialize>(event: &E) {
    let line = Line {
        time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        event,
    };
    let Ok(mut text) = serde_json::to_vec(&line) else {
        return;
    };
    text.push(b'\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&text).and_then(|()| out.flush());
}

/// One tunneled connection (or UDP flow) as the CLI sees it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ConnectionEvent<'a> {
    /// A pod connection reached the CLI, which dials the local target.
    ConnectionOpened {
        /// The port in the pod.
        port: u16,
        /// The pod-side peer, as the sidecar reports it.
        peer: SocketAddr,
        /// `tcp` or `udp` (a flow).
        protocol: Protocol,
        /// What the CLI dials, `HOST:PORT`.
        target: &'a str,
    },
    /// It ended.
    ConnectionClosed {
        /// The port in the pod.
        port: u16,
        /// The pod-side peer.
        peer: SocketAddr,
        /// `tcp` or `udp`.
        protocol: Protocol,
        /// How it ended.
        outcome: Outcome,
        /// Bytes from the local target to the pod (TCP, when it closed
        /// cleanly).
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes_to_pod: Option<u64>,
        /// Bytes from the pod to the local target (likewise).
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes_from_pod: Option<u64>,
        /// From opened to closed.
        duration_ms: u64,
        /// What went wrong, for any outcome but `closed` and `idle`.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A pod connection was refused before it was carried: by the sidecar
    /// (it reports it) or by the CLI.
    Refused {
        /// The port in the pod (0 when the sidecar named no listener of
        /// this session).
        port: u16,
        /// The pod-side peer.
        peer: SocketAddr,
        /// `tcp` or `udp`.
        protocol: Protocol,
        /// `limit` (`--max-connections` reached) or `not_allowed` (the peer
        /// is not in `--allow`).
        reason: RejectReason,
    },
}

/// How a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Both sides finished (TCP), or either end closed the flow (UDP).
    Closed,
    /// A UDP flow saw no datagram either way for the idle timeout.
    Idle,
    /// The local target could not be reached (refused, unreachable,
    /// ICMP port unreachable for UDP).
    TargetUnreachable,
    /// Either side aborted it (a reset, a broken stream).
    Aborted,
    /// The session ended while it was open.
    SessionEnded,
}

/// Milliseconds, for `duration_ms`.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_flat_snake_case_fields() {
        let e = ConnectionEvent::ConnectionClosed {
            port: 8080,
            peer: "127.0.0.1:5000".parse().unwrap(),
            protocol: Protocol::Tcp,
            outcome: Outcome::TargetUnreachable,
            bytes_to_pod: None,
            bytes_from_pod: None,
            duration_ms: 3,
            error: Some("connection refused".into()),
        };
        let line = serde_json::to_value(Line {
            time: "t".into(),
            event: &e,
        })
        .unwrap();
        assert_eq!(
            line,
            serde_json::json!({
                "time": "t",
                "event": "connection_closed",
                "port": 8080,
                "peer": "127.0.0.1:5000",
                "protocol": "tcp",
                "outcome": "target_unreachable",
                "duration_ms": 3,
                "error": "connection refused",
            })
        );
    }
}
