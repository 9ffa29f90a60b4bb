//! # rpf-proto
//!
//! The contract every rpf binary shares, and nothing else: no sockets, no
//! runtime, no HTTP. The sidecar, the CLI, the webhook and `rpf inject`
//! import their names and numbers from here, so they can never disagree.
//!
//! # Layout
//! - the crate root: protocol version, container and binary names, pod
//!   annotations, environment variables, default tuning, HTTP/2 paths and
//!   headers.
//! - [`message`]: control messages on the session stream and their framing.
//! - [`untrusted`]: peer text escaped and cut before it is printed.
//! - [`Side`] and [`version_mismatch`]: which end speaks, and the one wording
//!   both ends use when their versions differ.

mod contract;
pub mod message;
mod side;
pub mod untrusted;

pub use contract::*;
pub use side::{version_mismatch, Side};
