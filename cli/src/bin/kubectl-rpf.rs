//! `kubectl-rpf`: the same command as `rpf`, named so that kubectl finds it
//! as a plugin (`kubectl rpf attach ...`).

fn main() -> std::process::ExitCode {
    rpf_cli::main()
}
