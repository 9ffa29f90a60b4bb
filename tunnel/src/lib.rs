//! # rpf-tunnel
//!
//! The data plane of rpf, shared by both ends: the wire protocol
//! ([`protocol`]), the sidecar's side of a session, the CLI's side of a
//! session, and the byte pumps between TCP sockets and HTTP/2 streams.
//!
//! It knows nothing about Kubernetes: a session runs over any full-duplex
//! byte stream (a port-forward, an exec, a pipe to a `--via` command).

pub mod protocol;
