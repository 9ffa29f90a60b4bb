//! HTTP/2 settings for both ends of a channel, and the keepalive.
//!
//! The roles are reversed: the sidecar is the HTTP/2 client because new
//! connections appear on its side and only a client may open streams.
//!
//! h2's defaults suit a web server facing strangers; a tunnel is different:
//! resetting a stream is how a refused or aborted TCP connection is told,
//! so it happens in bursts, and 1-byte DATA frames are normal for
//! interactive protocols. But the sidecar is a stranger too (a pod may
//! replace it), so every limit here still bounds what the peer can make us
//! hold: the reset limits are sized for real bursts (1,000 pod connections
//! refused or aborted at once), not raised out of the way, and a peer that
//! exceeds them is told `ENHANCE_YOUR_CALM` and named as misbehaving
//! ([`channel_failed`]). Measured figures: docs/protocol.md, "Security".

use std::time::Duration;

use bytes::Bytes;
use h2::{Ping, PingPong};
use tokio::io::{AsyncRead, AsyncWrite};

use rpf_proto::{tuning, Side};

use crate::error::{Closed, SessionError};

/// How long the HTTP/2 handshake may take before the channel is given up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes h2 may queue per stream beyond what the socket has taken.
const SEND_BUFFER: usize = 1 << 20;
/// Streams we reset and still remember (for `reset_stream_duration`) so
/// the peer's late frames on them are ignored, not errors; beyond it the
/// oldest is forgotten. Bounds memory at a few hundred bytes each.
const REMEMBERED_RESETS: usize = 10_000;
/// Streams the peer opened and reset before we accepted them; one more is
/// a rapid-reset attack (CVE-2023-44487) and closes the channel. A real
/// sidecar only does this when pod connections abort within microseconds
/// of opening; 1,000 at once still pass.
const PENDING_ACCEPT_RESETS: usize = 1_000;
/// Streams we had to reset because the peer broke the protocol on them, per
/// connection; a real peer breaks none.
const LOCAL_ERROR_RESETS: usize = 1_000;
/// Decoded header bytes per request or response: rpf's headers are a
/// listener id, a peer address or an error line. HPACK can make a small
/// block decode to megabytes; h2's default allows 16 MiB.
const MAX_HEADER_LIST: u32 = 16 << 10;

/// Client (sidecar) side handshake with rpf's settings.
pub async fn client_handshake<T>(
    io: T,
) -> Result<
    (
        h2::client::SendRequest<Bytes>,
        h2::client::Connection<T, Bytes>,
    ),
    h2::Error,
>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    h2::client::Builder::new()
        .initial_window_size(tuning::STREAM_WINDOW)
        .initial_connection_window_size(tuning::CONNECTION_WINDOW)
        .max_frame_size(tuning::MAX_FRAME_SIZE)
        .max_send_buffer_size(SEND_BUFFER)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_reset_streams(REMEMBERED_RESETS)
        .max_local_error_reset_streams(Some(LOCAL_ERROR_RESETS))
        .data_frame_budget(tuning::CONNECTION_WINDOW as usize)
        .reset_stream_duration(Duration::from_secs(1))
        .enable_push(false)
        .handshake(io)
        .await
}

/// Server (CLI) side handshake with rpf's settings. `max_streams` caps the
/// streams the sidecar may open at once: a pod cannot exhaust the CLI.
pub async fn server_handshake<T>(
    io: T,
    max_streams: u32,
) -> Result<h2::server::Connection<T, Bytes>, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    h2::server::Builder::new()
        .initial_window_size(tuning::STREAM_WINDOW)
        .initial_connection_window_size(tuning::CONNECTION_WINDOW)
        .max_frame_size(tuning::MAX_FRAME_SIZE)
        .max_send_buffer_size(SEND_BUFFER)
        .max_concurrent_streams(max_streams)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_reset_streams(REMEMBERED_RESETS)
        .max_pending_accept_reset_streams(PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(LOCAL_ERROR_RESETS))
        .data_frame_budget(tuning::CONNECTION_WINDOW as usize)
        .reset_stream_duration(Duration::from_secs(1))
        .handshake(io)
        .await
}

/// The session error for a channel that failed under `peer`. A peer that
/// tripped one of the limits above is named as misbehaving: a real one
/// never does.
pub fn channel_failed(e: h2::Error, peer: Side) -> SessionError {
    if e.is_go_away() && !e.is_remote() && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) {
        SessionError::Misbehaved { peer }
    } else {
        SessionError::lost(e)
    }
}

/// Why a session ended when the task driving its connection did: the
/// same words on both ends.
pub fn driver_ended(
    ended: Result<Result<(), h2::Error>, tokio::task::JoinError>,
    peer: Side,
) -> SessionError {
    match ended {
        Ok(Ok(())) => SessionError::Closed {
            peer,
            what: Closed::Channel,
        },
        Ok(Err(e)) => channel_failed(e, peer),
        Err(e) => SessionError::lost(e),
    }
}

/// How often each end PINGs the other and how long it waits for the
/// answer: one type for both ends, so their settings cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Time between PINGs.
    pub interval: Duration,
    /// How long a PING may go unanswered before the channel is dead.
    pub timeout: Duration,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            interval: tuning::KEEPALIVE_INTERVAL,
            timeout: tuning::KEEPALIVE_TIMEOUT,
        }
    }
}

impl Keepalive {
    /// PINGs the peer every `interval`; returns why the session ended when
    /// a PING goes unanswered for `timeout` (the channel is dead) or the
    /// connection is gone. `peer` is the end being PINGed, for the message.
    pub async fn run(self, mut pings: PingPong, peer: Side) -> SessionError {
        loop {
            tokio::time::sleep(self.interval).await;
            match tokio::time::timeout(self.timeout, pings.ping(Ping::opaque())).await {
                Ok(Ok(_pong)) => {}
                Ok(Err(e)) => return channel_failed(e, peer),
                Err(_) => {
                    return SessionError::Keepalive {
                        peer,
                        timeout: self.timeout,
                    }
                }
            }
        }
    }
}
