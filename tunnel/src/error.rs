//! Why a session could not start or did not go on.

use std::net::SocketAddr;
use std::time::Duration;

use crate::message::DecodeError;

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
        matches!(self, SessionError::Lost(_) | SessionError::Timeout(..))
    }
}

impl From<DecodeError> for SessionError {
    fn from(e: DecodeError) -> Self {
        SessionError::Protocol(e.to_string())
    }
}

/// The message a version mismatch shows on either end.
pub fn version_mismatch(ours: u32, theirs: u32, their_software: &str, we_are: Role) -> String {
    let (sidecar, cli) = match we_are {
        Role::Cli => (theirs, ours),
        Role::Sidecar => (ours, theirs),
    };
    let advice = if cli < sidecar {
        format!("upgrade rpf (the CLI) to {their_software} or later")
    } else {
        "upgrade the sidecar: recreate the pod so the webhook injects the current image, or re-run `rpf inject`".to_string()
    };
    format!(
        "protocol version mismatch: the sidecar speaks rpf protocol {sidecar}, the CLI speaks protocol {cli}; {advice}"
    )
}

/// Which end of the tunnel is speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The `rpf` command.
    Cli,
    /// The in-pod sidecar.
    Sidecar,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatch_says_both_versions_and_who_upgrades() {
        let m = version_mismatch(1, 2, "0.2.0", Role::Cli);
        assert!(m.contains("sidecar speaks rpf protocol 2"), "{m}");
        assert!(m.contains("CLI speaks protocol 1"), "{m}");
        assert!(m.contains("upgrade rpf (the CLI) to 0.2.0"), "{m}");
        let m = version_mismatch(2, 1, "0.1.0", Role::Cli);
        assert!(m.contains("upgrade the sidecar"), "{m}");
        let m = version_mismatch(1, 2, "0.2.0", Role::Sidecar);
        assert!(m.contains("upgrade the sidecar"), "{m}");
    }
}
