//! End-to-end tests and benchmarks for rpf: real processes, real sockets,
//! network namespaces standing in for pods, and a real cluster when one is
//! configured.
//!
//! # Layout
//! - [`bench`]: what the benchmarks share (servers, a `--via` tunnel, traffic shapes).
//! - [`cgroup`]: a memory cgroup, the kernel's container memory limit.
//! - [`netns`]: a network namespace as a pod.
//! - [`process`]: the binaries under test and handles on running ones.
//! - [`fixtures`]: a pod with a sidecar, an HTTP server, the test peer.
//! - [`peer`]: traffic generators and checkers (the test peer, the benchmark).
//! - [`udp_peer`]: the same for UDP: echo, checked sequences, many flows.
//! - [`fake_sidecar`]: a scripted, possibly hostile sidecar; memory and CPU of a process.
//! - [`cluster`]: helpers for tests against a real Kubernetes cluster.

pub mod bench;
pub mod cgroup;
pub mod cluster;
pub mod fake_sidecar;
pub mod fixtures;
pub mod netns;
pub mod peer;
pub mod process;
pub mod udp_peer;
