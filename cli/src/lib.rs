//! # rpf-cli
//!
//! The `rpf` command: parses arguments ([`args`], [`spec`]), opens a
//! [`channel`] to a sidecar (through a `--via` command or the cluster) and
//! runs the CLI side of a tunnel session over it.

pub mod args;
pub mod channel;
pub mod cluster;
pub mod spec;
