//! `rpf`: reverse port-forward for Kubernetes.

fn main() -> std::process::ExitCode {
    rpf_cli::main()
}
