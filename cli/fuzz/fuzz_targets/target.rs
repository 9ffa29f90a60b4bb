//! The TARGET parser (`pod/NAME`, `deploy/NAME`, `NAME`, ...) on arbitrary
//! text. Checks: no panic; an accepted target has a valid name and parses
//! back to itself from its canonical `kind/name` form.
#![no_main]

use libfuzzer_sys::fuzz_target;

// TARGET parsing is a leaf module: compiled here as it is, without the
// CLI's Kubernetes client, so the instrumented build takes seconds.
#[allow(dead_code)]
#[path = "../../src/cluster/target.rs"]
mod target;
use target::Target;

fuzz_target!(|text: &str| {
    if let Ok(target) = Target::parse(text) {
        assert!(!target.name.is_empty());
        let canonical = format!("{}/{}", target.kind, target.name);
        assert_eq!(Target::parse(&canonical).ok(), Some(target));
    }
});
