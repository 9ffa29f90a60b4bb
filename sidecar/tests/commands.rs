//! The `rpf-sidecar` binary as the pod runs it.

use std::process::Command;

#[test]
fn a_taken_control_port_is_a_clear_error_that_names_the_fix() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rpf-sidecar"))
        .args(["serve", "--control-addr", &addr.to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot bind the control port {addr}")),
        "{stderr}"
    );
    assert!(stderr.contains("rpf.dev/control-port"), "{stderr}");
}

#[test]
fn version_is_reported() {
    let out = Command::new(env!("CARGO_BIN_EXE_rpf-sidecar"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
