//! The routes `rpf expose --gateway` writes — the golden JSON the unit
//! tests pin the builders to — validated against the Gateway API v1.6.1
//! CRDs' `openAPIV3Schema`, unchanged from upstream
//! (`e2e/fixtures/gateway-api/`), with Python's `jsonschema` (installed
//! with `kubernetes-validate`, as for the manifest test).

use std::path::{Path, PathBuf};
use std::process::Command;

use rpf_e2e::cluster::repo_root;

/// Validates one object against the CRD's schema for its version; the
/// validator's complaints on failure.
const VALIDATE: &str = r#"
import json, sys, yaml, jsonschema
crd = yaml.safe_load(open(sys.argv[1]))
obj = json.load(open(sys.argv[2]))
group, version = obj["apiVersion"].split("/")
assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == obj["kind"], "wrong CRD"
served = [v for v in crd["spec"]["versions"] if v["name"] == version and v.get("served")]
assert served, f"{obj['kind']} {version} is not served by this CRD"
schema = served[0]["schema"]["openAPIV3Schema"]
errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(obj), key=str)
for e in errors:
    print("/".join(map(str, e.path)) + ": " + e.message)
sys.exit(1 if errors else 0)
"#;

fn validate(crd: &Path, object: &Path) -> Result<(), String> {
    let out = Command::new("python3")
        .arg("-c")
        .arg(VALIDATE)
        .arg(crd)
        .arg(object)
        .output()
        .expect("python3 (with PyYAML and jsonschema: pip install kubernetes-validate)");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn paths(golden: &str, crd: &str) -> (PathBuf, PathBuf) {
    let root = repo_root();
    (
        root.join("cli/src/expose/golden").join(golden),
        root.join("e2e/fixtures/gateway-api").join(crd),
    )
}

#[test]
fn golden_routes_validate_against_the_upstream_gateway_api_schemas() {
    for (golden, crd) in [
        ("httproute.json", "httproutes.yaml"),
        ("tcproute.json", "tcproutes.yaml"),
    ] {
        let (object, crd) = paths(golden, crd);
        if let Err(why) = validate(&crd, &object) {
            panic!(
                "{golden} does not validate against {}:\n{why}",
                crd.display()
            );
        }
    }
}

#[test]
fn a_route_the_schema_forbids_is_caught() {
    let (object, crd) = paths("tcproute.json", "tcproutes.yaml");
    let mut route: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&object).unwrap()).unwrap();
    route["spec"]["rules"][0]["backendRefs"][0]["port"] = 70_000.into();
    let bad = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tcproute-bad-port.json");
    std::fs::write(&bad, route.to_string()).unwrap();
    let why = validate(&crd, &bad).expect_err("port 70000 passed the TCPRoute schema");
    assert!(why.contains("70000"), "{why}");
}
