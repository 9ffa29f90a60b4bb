//! The port-spec parser (`rpf attach TARGET SPEC...`) on arbitrary text.
//!
//! Checks: no panic; an accepted spec displays without panicking, with the
//! `/udp` suffix exactly when it is a UDP spec; a list parses to exactly as
//! many specs as it has items, or fails.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The parser is a leaf module: compiled here as it is, without the CLI's
// Kubernetes client, so the instrumented build takes seconds.
#[allow(dead_code)]
#[path = "../../src/spec.rs"]
mod spec;
use spec::{PortSpec, Protocol};

fuzz_target!(|text: &str| {
    if let Ok(spec) = PortSpec::parse(text) {
        let _ = spec.local_display();
        assert_eq!(
            spec.to_string().ends_with("/udp"),
            spec.protocol == Protocol::Udp
        );
    }
    let items: Vec<&str> = text.split(' ').collect();
    if let Ok(specs) = PortSpec::parse_all(&items) {
        assert_eq!(specs.len(), items.len());
    }
});
