//! # rpf-tunnel
//!
//! The data plane of rpf, shared by both ends. It knows nothing about
//! Kubernetes: names, numbers and messages come from `rpf-proto`; a session runs over any full-duplex byte stream (a
//! port-forward, an exec, a pipe to a `--via` command).
//!
//! # Layout
//! - [`http2`]: HTTP/2 settings for both ends, and the keepalive.
//! - [`control`]: the session stream as typed messages.
//! - [`pump`]: TCP connection ⇄ HTTP/2 stream, with TCP's half-close and abort.
//! - [`datagram`]: UDP flow ⇄ HTTP/2 stream: length-prefixed datagrams,
//!   bounded queues, idle timeout.
//! - [`sidecar_side`]: the sidecar's end of a session (HTTP/2 client).
//! - [`cli_side`]: the CLI's end of a session (HTTP/2 server).
//! - [`metrics`]: Prometheus metrics for both ends and their endpoint.
//! - [`net`]: dialing and error wording.
//! - [`error`]: session errors.
//! - [`events`]: what the CLI reports, as human lines or JSON.
//! - [`ratelimit`]: peer-triggered warnings rate-limited with a count.

pub mod cli_side;
mod control;
pub mod datagram;
pub mod error;
pub mod events;
pub mod http2;
pub mod metrics;
pub mod net;
mod pump;
pub mod ratelimit;
pub mod sidecar_side;
