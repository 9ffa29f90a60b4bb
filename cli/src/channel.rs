//! The channel: one full-duplex byte stream from the CLI to a sidecar.
//!
//! Port-forward, exec and `--via` all produce a [`Channel`]; the session
//! above it never knows which one it got.

use std::fmt;

use tokio::io::{AsyncRead, AsyncWrite};

/// Anything that carries bytes both ways.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Duplex for T {}

/// Where a channel leads, as the user should read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// A pod found through the cluster.
    Pod {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// Whatever a `--via` command reaches; the sidecar may name its pod.
    Via,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Pod { namespace, name } => write!(f, "pod {namespace}/{name}"),
            Place::Via => f.write_str("the sidecar"),
        }
    }
}

/// An open channel, and whatever must live as long as it does.
pub struct Channel {
    /// The byte stream.
    pub io: Box<dyn Duplex>,
    /// Where it leads.
    pub place: Place,
    /// Kept alive with the channel (a child process, a connection task);
    /// dropping it tears the transport down.
    pub guard: Option<Box<dyn Send>>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("place", &self.place)
            .finish()
    }
}

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct OpenError {
    /// Whether trying again later can help (network, pod restarting), as
    /// opposed to something the user must fix (no such pod, forbidden).
    pub retryable: bool,
    /// What happened, worded for the user.
    pub error: anyhow::Error,
}

impl OpenError {
    /// An error that retrying may fix.
    pub fn retryable(error: impl Into<anyhow::Error>) -> Self {
        Self {
            retryable: true,
            error: error.into(),
        }
    }

    /// An error only the user can fix.
    pub fn fatal(error: impl Into<anyhow::Error>) -> Self {
        Self {
            retryable: false,
            error: error.into(),
        }
    }
}
