//! The webhook's AdmissionReview → patch path on arbitrary bodies: the
//! JSON body, its `request.object` as the injector plans it, and the patch
//! applied to that object as the API server would.
//!
//! Checks: no panic; an injection's patch applies cleanly to the object it
//! was planned for, and the patched pod is not injected again (the
//! injector is idempotent, so a reinvocation cannot stack sidecars).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpf_inject::{json_patch, pod_patch, Decision, InjectConfig, Selection, SkipReason};
use serde_json::Value;

fuzz_target!(|body: &[u8]| {
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let object = &review["request"]["object"];
    let cfg = InjectConfig::new("rpf-sidecar:fuzz");
    for selection in [Selection::Annotated, Selection::All] {
        let Ok(injection) = pod_patch(object, &cfg, selection) else {
            continue;
        };
        if injection.decision != Decision::Inject {
            continue;
        }
        let mut patched = object.clone();
        json_patch::patch(&mut patched, &injection.patch)
            .expect("the planned patch applies to the object it was planned for");
        let again = pod_patch(&patched, &cfg, selection).expect("a patched pod is still a pod");
        assert_eq!(again.decision, Decision::Skip(SkipReason::AlreadyInjected));
    }
});
