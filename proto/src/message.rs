//! Control messages carried on the session stream, and their framing.
//!
//! One JSON object per line: easy to read in a capture, easy to extend
//! (unknown fields are ignored), and cheap next to the data it steers.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{PROTOCOL_VERSION, SOFTWARE_VERSION};

/// Longest control message accepted; anything longer is a protocol error.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// Pod identity the sidecar learns from the downward API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
}

/// One address a reverse listener binds in the pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindAddr {
    /// The IP to bind.
    pub ip: IpAddr,
    /// When false, a missing address family (no IPv6 in the pod) is skipped
    /// instead of failing the bind. "Port in use" always fails.
    pub required: bool,
}

/// Transport protocol of a reverse listener.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP connections, one stream each (the default, and all that peers
    /// older than UDP support).
    #[default]
    Tcp,
    /// UDP datagrams, one stream per pod-side peer address (a flow). Sent
    /// only to a sidecar whose hello lists [`crate::features::UDP`].
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`, as in a port spec's suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    fn is_tcp(&self) -> bool {
        *self == Protocol::Tcp
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A reverse listener the CLI asks the sidecar to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSpec {
    /// Chosen by the CLI; connection streams name it, never a destination.
    pub id: u32,
    /// Port to bind in the pod.
    pub port: u16,
    /// Addresses to bind it on.
    pub addrs: Vec<BindAddr>,
    /// Concurrent connections allowed; more are refused at once.
    pub max_connections: u32,
    /// Peers allowed to connect (empty: anyone who can reach the address).
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// TCP (absent, as older CLIs send it) or UDP. For UDP,
    /// `max_connections` caps the concurrent flows.
    #[serde(default, skip_serializing_if = "Protocol::is_tcp")]
    pub protocol: Protocol,
    /// UDP only: a flow with no datagram either way for this long ends
    /// (0 or absent: [`crate::DEFAULT_UDP_IDLE_TIMEOUT`]). The sidecar caps it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub idle_timeout_ms: u64,
}

impl ListenerSpec {
    /// The wire value of a UDP idle timeout: 0 (not sent) for TCP.
    pub fn idle_timeout_ms(protocol: Protocol, idle: Duration) -> u64 {
        match protocol {
            Protocol::Tcp => 0,
            Protocol::Udp => idle.as_millis().try_into().unwrap_or(u64::MAX),
        }
    }

    /// How long a UDP flow may sit idle, as both ends apply it: the
    /// default when absent, never above [`crate::MAX_UDP_IDLE_TIMEOUT`].
    pub fn udp_idle_timeout(&self) -> Duration {
        match Duration::from_millis(self.idle_timeout_ms) {
            Duration::ZERO => crate::DEFAULT_UDP_IDLE_TIMEOUT,
            asked => asked.min(crate::MAX_UDP_IDLE_TIMEOUT),
        }
    }
}

/// A listener the sidecar opened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundListener {
    /// The CLI's id for it.
    pub id: u32,
    /// Every address it is bound on.
    pub addrs: Vec<SocketAddr>,
}

/// What a CLI needs to resume a session after losing its channel.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTicket {
    /// Unguessable, issued by the sidecar; whoever holds it can take the
    /// session over, so it is never printed.
    pub token: String,
    /// How long the sidecar keeps the session without a channel.
    pub grace_ms: u64,
}

impl std::fmt::Debug for SessionTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionTicket")
            .field("token", &"<redacted>")
            .field("grace_ms", &self.grace_ms)
            .finish()
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why the sidecar refused a pod connection without asking the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The listener's concurrent-connection limit was reached.
    Limit,
    /// The peer is outside the listener's allow list.
    NotAllowed,
}

impl RejectReason {
    /// Label value for the `reason` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Limit => "limit",
            RejectReason::NotAllowed => "not_allowed",
        }
    }
}

/// Why a listener could not be bound, as far as the CLI's advice goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BindErrorKind {
    /// Something else in the pod already listens on the port.
    InUse,
    /// The port is below the pod's unprivileged-port floor.
    PermissionDenied,
    /// None of the requested addresses exists in the pod.
    AddressMissing,
    /// Anything else (and any kind a newer sidecar may add).
    #[default]
    #[serde(other)]
    Other,
}

/// Every message either end may send on the session stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// First message each way: who is talking, in which protocol version.
    Hello {
        /// Wire protocol version ([`PROTOCOL_VERSION`]).
        protocol: u32,
        /// rpf release of the sender.
        software: String,
        /// Sidecar only: its pod, when it runs in one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pod: Option<PodRef>,
        /// Sidecar only: its host name (the pod name in Kubernetes).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hostname: Option<String>,
        /// Sidecar only: it outlives the channel, so it can keep a session
        /// through a lost channel and understands `resume`. Absent (false)
        /// from older sidecars and from `stdio`, which ends with its channel.
        #[serde(default, skip_serializing_if = "is_false")]
        resume: bool,
        /// Sidecar only: optional abilities it has beyond protocol 1
        /// ([`crate::features`]), so a CLI never asks an older sidecar for
        /// something it would misread. Absent (empty) from older sidecars.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        features: Vec<String>,
    },
    /// CLI → sidecar: open these listeners, all or none.
    Bind {
        /// The listeners.
        listeners: Vec<ListenerSpec>,
        /// How long to keep the session's listeners after its channel is
        /// lost without a goodbye, waiting for a `resume` (0 or absent: close
        /// them at once, as older CLIs expect). The sidecar caps it.
        #[serde(default, skip_serializing_if = "is_zero")]
        grace_ms: u64,
    },
    /// Sidecar → CLI: every listener of the last `Bind` is open.
    Bound {
        /// Where each one is bound.
        listeners: Vec<BoundListener>,
        /// Present when the session will survive a lost channel: the token
        /// to resume it with, and the grace the sidecar granted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<SessionTicket>,
    },
    /// CLI → sidecar, instead of a first `Bind`: re-attach the session this
    /// token names, whose listeners the sidecar kept after a lost channel.
    /// Sent only to a sidecar whose hello said `resume`.
    Resume {
        /// The token from the session's `Bound`.
        token: String,
    },
    /// Sidecar → CLI: the session is re-attached; its listeners never closed
    /// and connections that waited for the channel now flow.
    Resumed {
        /// Where each listener is bound (as first reported).
        listeners: Vec<BoundListener>,
        /// The same token and grace as before.
        session: SessionTicket,
    },
    /// Sidecar → CLI: no session to resume (wrong or expired token). The
    /// session stream stays open: the CLI may `Bind` a fresh session.
    ResumeFailed {
        /// Why, for the user.
        reason: String,
    },
    /// Sidecar → CLI: a listener could not be opened; none of the `Bind` is.
    BindFailed {
        /// Listener id.
        id: u32,
        /// The address that failed.
        addr: SocketAddr,
        /// The operating system's reason, e.g. "address already in use".
        reason: String,
        /// What kind of failure, so the CLI can advise without parsing
        /// `reason` (absent from older sidecars: [`BindErrorKind::Other`]).
        #[serde(default)]
        kind: BindErrorKind,
    },
    /// Sidecar → CLI: a pod connection was refused before reaching the CLI.
    Rejected {
        /// Listener id.
        id: u32,
        /// The pod-side peer.
        peer: SocketAddr,
        /// Why.
        reason: RejectReason,
    },
    /// Either way: the session cannot go on (e.g. version mismatch).
    Error {
        /// Worded for the user.
        message: String,
    },
    /// Either way: the sender is closing the session on purpose.
    Goodbye {
        /// Why, for the log.
        reason: String,
    },
}

impl Message {
    /// This binary's hello.
    pub fn hello(pod: Option<PodRef>, hostname: Option<String>) -> Self {
        Message::Hello {
            protocol: PROTOCOL_VERSION,
            software: SOFTWARE_VERSION.to_string(),
            pod,
            hostname,
            resume: false,
            features: Vec::new(),
        }
    }

    /// The message's `type` on the wire, e.g. `bind_failed`: how errors
    /// name a message out of place without echoing what the peer put in it.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Bind { .. } => "bind",
            Message::Bound { .. } => "bound",
            Message::Resume { .. } => "resume",
            Message::Resumed { .. } => "resumed",
            Message::ResumeFailed { .. } => "resume_failed",
            Message::BindFailed { .. } => "bind_failed",
            Message::Rejected { .. } => "rejected",
            Message::Error { .. } => "error",
            Message::Goodbye { .. } => "goodbye",
        }
    }

    /// Serialises one message as a line.
    pub fn encode(&self) -> Bytes {
        let mut line = serde_json::to_vec(self).expect("control messages always serialise");
        line.push(b'\n');
        Bytes::from(line)
    }
}

/// A malformed control stream.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A line that is not a message we know.
    #[error("malformed control message {line:?}: {source}")]
    Malformed {
        /// The start of the offending line.
        line: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A line longer than [`MAX_MESSAGE_LEN`].
    #[error("control message longer than {MAX_MESSAGE_LEN} bytes")]
    TooLong,
}

/// Splits a byte stream into messages, one per line.
///
/// Each byte is searched for the newline once, however the line is split
/// into frames: a peer that sends a long line in tiny pieces costs linear,
/// not quadratic, time.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    /// How much of `buf` is known to hold no newline.
    scanned: usize,
}

impl Decoder {
    /// Adds received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if one has arrived.
    pub fn next_message(&mut self) -> Result<Option<Message>, DecodeError> {
        let Some(offset) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') else {
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_MESSAGE_LEN {
                return Err(DecodeError::TooLong);
            }
            return Ok(None);
        };
        let end = self.scanned + offset;
        if end > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLong);
        }
        self.scanned = 0;
        let line = self.buf.split_to(end);
        self.buf.advance(1);
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|source| DecodeError::Malformed {
                line: String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned(),
                source,
            })
    }

    /// Bytes received that do not yet form a whole message.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket() -> SessionTicket {
        SessionTicket {
            token: "ab".repeat(16),
            grace_ms: 30_000,
        }
    }

    fn sample() -> Vec<Message> {
        vec![
            Message::hello(
                Some(PodRef {
                    namespace: "default".into(),
                    name: "web-7f9".into(),
                }),
                Some("web-7f9".into()),
            ),
            Message::Bind {
                listeners: vec![
                    ListenerSpec {
                        id: 1,
                        port: 8080,
                        addrs: vec![
                            BindAddr {
                                ip: "127.0.0.1".parse().unwrap(),
                                required: true,
                            },
                            BindAddr {
                                ip: "::1".parse().unwrap(),
                                required: false,
                            },
                        ],
                        max_connections: 10,
                        allow: vec!["10.0.0.0/8".parse().unwrap()],
                        protocol: Protocol::Tcp,
                        idle_timeout_ms: 0,
                    },
                    ListenerSpec {
                        id: 2,
                        port: 5353,
                        addrs: vec![BindAddr {
                            ip: "127.0.0.1".parse().unwrap(),
                            required: true,
                        }],
                        max_connections: 10,
                        allow: vec![],
                        protocol: Protocol::Udp,
                        idle_timeout_ms: 5_000,
                    },
                ],
                grace_ms: 30_000,
            },
            Message::Bound {
                listeners: vec![BoundListener {
                    id: 1,
                    addrs: vec![
                        "127.0.0.1:8080".parse().unwrap(),
                        "[::1]:8080".parse().unwrap(),
                    ],
                }],
                session: Some(ticket()),
            },
            Message::Resume {
                token: "ab".repeat(16),
            },
            Message::Resumed {
                listeners: vec![BoundListener {
                    id: 1,
                    addrs: vec!["127.0.0.1:8080".parse().unwrap()],
                }],
                session: ticket(),
            },
            Message::ResumeFailed {
                reason: "no such session".into(),
            },
            Message::BindFailed {
                id: 1,
                addr: "127.0.0.1:8080".parse().unwrap(),
                reason: "address already in use".into(),
                kind: BindErrorKind::InUse,
            },
            Message::Rejected {
                id: 1,
                peer: "127.0.0.1:5555".parse().unwrap(),
                reason: RejectReason::Limit,
            },
            Message::Error {
                message: "boom".into(),
            },
            Message::Goodbye {
                reason: "interrupted".into(),
            },
        ]
    }

    #[test]
    fn kind_is_the_wire_type() {
        let all = sample();
        assert_eq!(all.len(), 10, "sample() covers every message");
        for msg in all {
            let json: serde_json::Value = serde_json::from_slice(&msg.encode()).unwrap();
            assert_eq!(json["type"], msg.kind(), "{msg:?}");
        }
    }

    #[test]
    fn every_message_round_trips_even_split_byte_by_byte() {
        let wire: Vec<u8> = sample().iter().flat_map(|m| m.encode().to_vec()).collect();
        let mut dec = Decoder::default();
        let mut got = Vec::new();
        for byte in wire {
            dec.extend(&[byte]);
            while let Some(m) = dec.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, sample());
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let mut dec = Decoder::default();
        dec.extend(b"{\"type\":\"goodbye\",\"reason\":\"x\",\"future\":42}\n");
        assert_eq!(
            dec.next_message().unwrap(),
            Some(Message::Goodbye { reason: "x".into() })
        );
    }

    #[test]
    fn messages_of_peers_that_predate_resume_decode_without_it() {
        let mut dec = Decoder::default();
        dec.extend(b"{\"type\":\"hello\",\"protocol\":1,\"software\":\"0.1.0\"}\n");
        dec.extend(b"{\"type\":\"bind\",\"listeners\":[]}\n");
        dec.extend(b"{\"type\":\"bound\",\"listeners\":[]}\n");
        assert!(matches!(
            dec.next_message().unwrap(),
            Some(Message::Hello { resume: false, .. })
        ));
        assert!(matches!(
            dec.next_message().unwrap(),
            Some(Message::Bind { grace_ms: 0, .. })
        ));
        assert!(matches!(
            dec.next_message().unwrap(),
            Some(Message::Bound { session: None, .. })
        ));
    }

    #[test]
    fn tcp_listeners_and_hellos_without_features_look_as_before() {
        let spec = ListenerSpec {
            id: 1,
            port: 80,
            addrs: vec![],
            max_connections: 1,
            allow: vec![],
            protocol: Protocol::Tcp,
            idle_timeout_ms: 0,
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert!(
            !json.contains("protocol") && !json.contains("idle"),
            "{json}"
        );
        let old: ListenerSpec =
            serde_json::from_str("{\"id\":1,\"port\":80,\"addrs\":[],\"max_connections\":1}")
                .unwrap();
        assert_eq!(
            old,
            ListenerSpec {
                allow: vec![],
                ..spec
            }
        );
        let udp = ListenerSpec {
            protocol: Protocol::Udp,
            ..old
        };
        assert!(serde_json::to_string(&udp)
            .unwrap()
            .contains("\"protocol\":\"udp\""));
        let mut dec = Decoder::default();
        dec.extend(b"{\"type\":\"hello\",\"protocol\":1,\"software\":\"0.1.0\",\"features\":[\"udp\",\"later\"]}\n");
        let Some(Message::Hello { features, .. }) = dec.next_message().unwrap() else {
            panic!("a hello")
        };
        assert_eq!(features, ["udp", "later"]);
    }

    #[test]
    fn without_grace_the_wire_is_what_older_peers_sent() {
        let bind = Message::Bind {
            listeners: vec![],
            grace_ms: 0,
        };
        assert_eq!(
            &bind.encode()[..],
            b"{\"type\":\"bind\",\"listeners\":[]}\n"
        );
        let hello = String::from_utf8(Message::hello(None, None).encode().to_vec()).unwrap();
        assert!(!hello.contains("resume"), "{hello}");
        assert!(!hello.contains("features"), "{hello}");
    }

    #[test]
    fn a_ticket_never_shows_its_token_in_logs() {
        assert!(!format!("{:?}", ticket()).contains("abab"));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for junk in [
            &b"GET / HTTP/1.1\n"[..],
            b"{\"type\":\"nope\"}\n",
            b"\xff\xfe\n",
        ] {
            let mut dec = Decoder::default();
            dec.extend(junk);
            assert!(matches!(
                dec.next_message(),
                Err(DecodeError::Malformed { .. })
            ));
        }
    }

    #[test]
    fn bind_failures_of_older_or_newer_sidecars_decode_as_other() {
        for line in [
            &b"{\"type\":\"bind_failed\",\"id\":1,\"addr\":\"127.0.0.1:1\",\"reason\":\"x\"}\n"[..],
            b"{\"type\":\"bind_failed\",\"id\":1,\"addr\":\"127.0.0.1:1\",\"reason\":\"x\",\"kind\":\"new\"}\n",
        ] {
            let mut dec = Decoder::default();
            dec.extend(line);
            assert!(matches!(
                dec.next_message().unwrap(),
                Some(Message::BindFailed { kind: BindErrorKind::Other, .. })
            ));
        }
    }

    #[test]
    fn a_long_line_in_tiny_pieces_is_scanned_once() {
        // Each call may scan only the bytes that arrived since the last
        // one: the scan position keeps up with the buffer, it never restarts
        // from the front while the line is incomplete.
        let mut dec = Decoder::default();
        dec.extend(b"{\"type\":\"goodbye\",\"reason\":\"");
        for _ in 0..(64 << 10) {
            let before = dec.buf.len();
            dec.extend(b"x");
            assert!(dec.next_message().unwrap().is_none());
            assert_eq!(dec.scanned, before + 1);
        }
        dec.extend(b"\"}\n");
        let Some(Message::Goodbye { reason }) = dec.next_message().unwrap() else {
            panic!("expected the goodbye");
        };
        assert_eq!(reason.len(), 64 << 10);
        assert_eq!((dec.pending(), dec.scanned), (0, 0));
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut dec = Decoder::default();
        dec.extend(&vec![b'x'; MAX_MESSAGE_LEN + 1]);
        assert!(matches!(dec.next_message(), Err(DecodeError::TooLong)));
    }
}
