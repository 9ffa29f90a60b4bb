//! End-to-end tests and benchmarks for rpf: real processes, real sockets, network namespaces.
pub mod cluster;
