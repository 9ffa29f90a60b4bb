//! Why a session could not start or did not go on.

use std::net::SocketAddr;
use std::time::Duration;

use rpf_proto::message::{BindErrorKind, DecodeError};
use rpf_proto::Side;

/// A session-level failure, worded for the user.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The far end of the channel is not an rpf peer speaking HTTP/2.
    #[error("the other end of the channel does not speak rpf's protocol ({0})")]
    Handshake(String),
    /// The two ends speak different protocol versions.
    #[error("{0}")]
    VersionMismatch(String),
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
    /// The peer reported a fatal error.
    #[error("{0}")]
    Remote(String),
    /// The peer broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The channel went away (closed, broken, or silent past the keepalive).
    #[error("{0}")]
    Lost(String),
    /// The peer did not answer a keepalive PING in time.
    #[error("{} did not answer a keepalive PING within {timeout:?}", peer.name())]
    Keepalive {
        /// The end that went silent.
        peer: Side,
        /// How long it was given.
        timeout: Duration,
    },
    /// The sidecar lacks something the forwards need (e.g. UDP); retrying
    /// the same sidecar cannot help.
    #[error("{0}")]
    Unsupported(String),
    /// A step of the handshake took too long.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

impl SessionError {
    /// The channel broke underneath us.
    pub fn lost(e: impl std::fmt::Display) -> Self {
        SessionError::Lost(format!("channel lost: {e}"))
    }

    /// Whether a new channel may fix this (as opposed to a fatal refusal).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            SessionError::Lost(_) | SessionError::Keepalive { .. } | SessionError::Timeout(..)
        )
    }
}

impl From<DecodeError> for SessionError {
    fn from(e: DecodeError) -> Self {
        SessionError::Protocol(e.to_string())
    }
}
