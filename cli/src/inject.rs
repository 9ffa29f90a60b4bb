//! `rpf inject`: adds the sidecar to opted-in pods and pod templates in
//! YAML manifests, with the same library the webhook uses, for clusters
//! where nobody can install a webhook:
//! `rpf inject -f app.yaml | kubectl apply -f -`.

use std::io::Read;

use anyhow::Context;
use rpf_inject::{inject_manifests, InjectConfig};

use crate::args::InjectArgs;

/// Runs `rpf inject`: manifests in, manifests out on stdout, warnings on
/// stderr.
pub fn run(args: InjectArgs) -> anyhow::Result<()> {
    let input = if args.file.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        s
    } else {
        std::fs::read_to_string(&args.file)
            .with_context(|| format!("cannot read {}", args.file.display()))?
    };
    let mut config = InjectConfig::new(args.image).with_native_sidecar(args.native_sidecar);
    if let Some(policy) = args.image_pull_policy {
        config = config.with_image_pull_policy(policy);
    }
    let (output, warnings) = inject_manifests(&input, &config, args.all)
        .with_context(|| format!("cannot inject into {}", args.file.display()))?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    print!("{output}");
    Ok(())
}
