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
//!
//! # One model, two roles
//! Both ends share every type and rule the protocol has in common: the
//! listener ([`rpf_proto::message::ListenerSpec`], which the CLI's
//! [`cli_side::Forward`] wraps with its local target), the keepalive
//! ([`http2::Keepalive`]), the hello check ([`control`]), how a dead
//! connection task or a tripped limit becomes a [`error::SessionError`]
//! ([`http2::driver_ended`]), the allow list and connection limit
//! ([`net::allowed`], [`net::connection_limit`]) and the count of a
//! finished connection ([`metrics::Metrics::connection_finished`]). The
//! session itself stays one type per end on purpose: the CLI is the HTTP/2
//! server that accepts streams and dials this machine, the sidecar the
//! client that listens in the pod, opens streams and may keep a session
//! through a lost channel; one type for both would be a bag of options
//! that each end half-uses.

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
