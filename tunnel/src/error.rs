//! Why a session could not start or did not go on.
//!
//! Each variant says which end it is about and keeps what caused it as its
//! [`source`](std::error::Error::source), so callers match on kinds instead
//! of words. Messages leave the source out: print them with their chain
//! (`{:#}` on `anyhow`, or an error-chain walker), as every binary does.

use std::net::SocketAddr;
use std::time::Duration;

use rpf_proto::message::{BindErrorKind, DecodeError};
use rpf_proto::Side;

/// A session-level failure, worded for the user.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The far end of the channel is not an rpf peer speaking HTTP/2.
    #[error("the other end of the channel does not speak rpf's protocol{}", far_end_hint(*expected))]
    Handshake {
        /// The end that should have been there.
        expected: Side,
        /// What the HTTP/2 handshake said.
        #[source]
        source: h2::Error,
    },
    /// The two ends speak different protocol versions.
    #[error("{}", rpf_proto::version_mismatch(*ours, *theirs, their_software, *we_are))]
    VersionMismatch {
        /// This end's protocol version.
        ours: u32,
        /// The peer's protocol version.
        theirs: u32,
        /// The peer's release, for the advice (escaped as decoded).
        their_software: String,
        /// Which end this is.
        we_are: Side,
    },
    /// The sidecar could not bind a requested address.
    #[error("cannot bind {addr}: {reason}")]
    BindFailed {
        /// Listener id.
        id: u32,
        /// Address that failed.
        addr: SocketAddr,
        /// Why, e.g. "address already in use".
        reason: String,
        /// The kind of failure, for advice.
        kind: BindErrorKind,
    },
    /// The peer reported a fatal error (its words, escaped as decoded).
    #[error("{message}")]
    Remote {
        /// The end that reported it.
        peer: Side,
        /// What it said.
        message: String,
    },
    /// The peer broke the protocol.
    #[error("protocol error from {peer}")]
    Protocol {
        /// The end that broke it.
        peer: Side,
        /// How.
        #[source]
        violation: Violation,
    },
    /// The peer closed the session stream or the whole channel.
    #[error("{peer} closed the {what}")]
    Closed {
        /// The end that closed it.
        peer: Side,
        /// What it closed, and when.
        what: Closed,
    },
    /// The peer ended the session on purpose (a goodbye).
    #[error("{peer} ended the session: {reason}")]
    Ended {
        /// The end that said goodbye.
        peer: Side,
        /// Its reason (escaped as decoded).
        reason: String,
    },
    /// The channel broke underneath the session.
    #[error("channel lost")]
    Lost {
        /// What broke.
        #[source]
        source: ChannelError,
    },
    /// The peer tripped one of our abuse limits (a real peer never does),
    /// so we closed the channel.
    #[error(
        "{peer} misbehaved (it reset or broke streams far faster than any tunnel does: \
         a modified or broken {}?); the channel was closed",
        match peer { Side::Sidecar => "sidecar", Side::Cli => "client" }
    )]
    Misbehaved {
        /// The end that misbehaved.
        peer: Side,
    },
    /// The peer did not answer a keepalive PING in time.
    #[error("{} did not answer a keepalive PING within {timeout:?}", peer.name())]
    Keepalive {
        /// The end that went silent.
        peer: Side,
        /// How long it was given.
        timeout: Duration,
    },
    /// The sidecar lacks UDP, which a forward asks for; retrying the same
    /// sidecar cannot help.
    #[error(
        "this sidecar (rpf-sidecar {sidecar}) does not support UDP, asked for by {port}/udp; \
         upgrade it to rpf-sidecar {} (the release of this rpf) or later, or forward TCP only",
        rpf_proto::SOFTWARE_VERSION
    )]
    UdpUnsupported {
        /// The sidecar's release.
        sidecar: String,
        /// The first UDP port asked for.
        port: u16,
    },
    /// A step of the handshake took too long.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

/// What a peer closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The session stream, with the channel still up.
    Session,
    /// The session stream, before its hello.
    SessionBeforeHello,
    /// The whole channel.
    Channel,
    /// The whole channel, before opening a session stream.
    ChannelBeforeSession,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Closed::Session => "session",
            Closed::SessionBeforeHello => "session before its hello",
            Closed::Channel => "channel",
            Closed::ChannelBeforeSession => "channel before opening a session",
        })
    }
}

/// How a peer broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    /// A control line that does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The session stream ended inside a message.
    #[error("the session stream ended in the middle of a message")]
    Truncated,
    /// A message out of place, named by its wire type (never its fields).
    #[error("expected {expected}, got a `{got}` message")]
    Unexpected {
        /// What the protocol called for here.
        expected: &'static str,
        /// The wire type of what came instead.
        got: &'static str,
    },
    /// The first stream of the channel was not the session stream.
    #[error("expected the session stream first, got {path}")]
    NotSessionStream {
        /// The path it asked for (an HTTP path: no control characters).
        path: String,
    },
    /// The CLI refused the session stream.
    #[error("the session stream was answered with HTTP {status}")]
    Status {
        /// The HTTP status.
        status: http::StatusCode,
    },
}

/// What broke when a channel was lost.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The HTTP/2 connection failed.
    #[error(transparent)]
    Http2(#[from] h2::Error),
    /// The channel's pipe or socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The task driving the connection died.
    #[error("the channel's task failed")]
    Task(#[from] tokio::task::JoinError),
}

impl SessionError {
    /// The channel broke underneath us.
    pub fn lost(e: impl Into<ChannelError>) -> Self {
        SessionError::Lost { source: e.into() }
    }

    /// `peer` sent `got` where the protocol called for `expected`.
    pub fn unexpected(
        peer: Side,
        expected: &'static str,
        got: &rpf_proto::message::Message,
    ) -> Self {
        SessionError::Protocol {
            peer,
            violation: Violation::Unexpected {
                expected,
                got: got.kind(),
            },
        }
    }

    /// Whether a new channel may fix this (as opposed to a fatal refusal).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SessionError::Closed { .. }
                | SessionError::Ended { .. }
                | SessionError::Lost { .. }
                | SessionError::Misbehaved { .. }
                | SessionError::Keepalive { .. }
                | SessionError::Timeout(..)
        )
    }
}

/// The next step for a handshake that found something else at the far end.
fn far_end_hint(expected: Side) -> &'static str {
    match expected {
        Side::Sidecar => {
            " (is `rpf-sidecar stdio`, or the sidecar's control port, at the far end?)"
        }
        Side::Cli => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(e: &(dyn std::error::Error + 'static)) -> String {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        text
    }

    #[test]
    fn messages_name_the_side_and_keep_the_cause_as_source() {
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let lost = SessionError::lost(io);
        assert_eq!(chain(&lost), "channel lost: broken pipe");
        assert!(lost.is_retryable());

        let closed = SessionError::Closed {
            peer: Side::Sidecar,
            what: Closed::ChannelBeforeSession,
        };
        assert_eq!(
            closed.to_string(),
            "the sidecar closed the channel before opening a session"
        );

        let hello = rpf_proto::message::Message::hello(None, None);
        let unexpected = SessionError::unexpected(Side::Cli, "a bind", &hello);
        assert_eq!(
            chain(&unexpected),
            "protocol error from the CLI: expected a bind, got a `hello` message"
        );
        assert!(!unexpected.is_retryable());

        let udp = SessionError::UdpUnsupported {
            sidecar: "0.1.0".into(),
            port: 53,
        };
        assert!(udp.to_string().contains("rpf-sidecar 0.1.0"), "{udp}");
        assert!(udp.to_string().contains("53/udp"), "{udp}");
        assert!(!udp.is_retryable());
    }

    #[test]
    fn decode_errors_are_protocol_errors_of_the_peer() {
        let mut decoder = rpf_proto::message::Decoder::default();
        decoder.extend(b"{not json}\n");
        let e = decoder.next_message().unwrap_err();
        let e = SessionError::Protocol {
            peer: Side::Sidecar,
            violation: e.into(),
        };
        assert!(
            chain(&e).starts_with("protocol error from the sidecar: malformed control message"),
            "{e}"
        );
    }
}
