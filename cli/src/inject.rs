//! `rpf inject`: adds the sidecar to opted-in pods and pod templates in
//! YAML manifests, with the same library the webhook uses.

use crate::args::InjectArgs;

/// Runs `rpf inject`.
pub fn run(_args: InjectArgs) -> anyhow::Result<()> {
    anyhow::bail!("rpf inject is not wired yet")
}
