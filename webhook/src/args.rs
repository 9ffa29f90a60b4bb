//! Command-line flags (each with an environment variable fallback).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Parser, ValueEnum};

/// When to inject the sidecar as a native sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NativeSidecar {
    /// Ask the API server at startup: native from Kubernetes 1.29, classic
    /// before (and classic, with a warning, if the server cannot be asked).
    Auto,
    /// Always native (init container with `restartPolicy: Always`).
    Always,
    /// Always a regular container.
    Never,
}

/// `imagePullPolicy` of the injected sidecar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PullPolicy {
    /// Pull on every start.
    #[value(name = "Always", alias = "always")]
    Always,
    /// Pull only when absent from the node.
    #[value(name = "IfNotPresent", alias = "if-not-present")]
    IfNotPresent,
    /// Never pull (the image must be on the node).
    #[value(name = "Never", alias = "never")]
    Never,
}

impl PullPolicy {
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// rpf's mutating admission webhook: injects the rpf sidecar into pods
/// annotated `rpf.dev/enabled: "true"`.
#[derive(Debug, Clone, Parser)]
#[command(name = "rpf-webhook", version, about, long_about = None)]
#[command(group(ArgGroup::new("tls").required(true).args(["tls_cert", "self_managed_tls"])))]
pub struct Args {
    /// Address to serve HTTPS on.
    #[arg(long, env = "RPF_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,

    /// PEM certificate (chain) to serve; reloaded when the file changes.
    #[arg(
        long,
        env = "RPF_WEBHOOK_TLS_CERT",
        requires = "tls_key",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert; reloaded when the file changes.
    #[arg(
        long,
        env = "RPF_WEBHOOK_TLS_KEY",
        requires = "tls_cert",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,

    /// How often --tls-cert/--tls-key are checked for changes.
    #[arg(long, env = "RPF_WEBHOOK_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,

    /// Image of the injected rpf-sidecar container.
    #[arg(long, env = "RPF_SIDECAR_IMAGE", value_name = "IMAGE")]
    pub sidecar_image: String,

    /// imagePullPolicy of the injected container (default: the Kubernetes default).
    #[arg(long, env = "RPF_SIDECAR_IMAGE_PULL_POLICY", value_enum)]
    pub sidecar_image_pull_policy: Option<PullPolicy>,

    /// Inject a native sidecar (Kubernetes >= 1.29) or a regular container.
    /// Pods override it with the annotation rpf.dev/native-sidecar.
    #[arg(
        long,
        env = "RPF_WEBHOOK_NATIVE_SIDECAR",
        value_enum,
        default_value = "auto"
    )]
    pub native_sidecar: NativeSidecar,

    /// Generate the CA and serving certificate, keep them in --secret-name
    /// and write the CA into --webhook-config-name (no cert-manager needed).
    #[arg(long, env = "RPF_WEBHOOK_SELF_MANAGED_TLS", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub self_managed_tls: bool,

    /// Namespace of the webhook's Service and Secret (self-managed TLS).
    #[arg(long, env = "POD_NAMESPACE", default_value = "rpf-system")]
    pub namespace: String,

    /// Name of the webhook's Service: the certificate is for <svc>.<ns>.svc.
    #[arg(long, env = "RPF_WEBHOOK_SERVICE_NAME", default_value = "rpf-webhook")]
    pub service_name: String,

    /// Secret holding the self-managed CA and certificate.
    #[arg(
        long,
        env = "RPF_WEBHOOK_SECRET_NAME",
        default_value = "rpf-webhook-tls"
    )]
    pub secret_name: String,

    /// MutatingWebhookConfiguration whose caBundle is kept up to date.
    #[arg(long, env = "RPF_WEBHOOK_CONFIG_NAME", default_value = "rpf-webhook")]
    pub webhook_config_name: String,

    /// With --self-managed-tls: how often the Secret and the caBundle are
    /// checked again, so a wrong or wiped caBundle, or another replica's
    /// renewal, is repaired without a restart (two GETs per check).
    #[arg(long, env = "RPF_WEBHOOK_RECHECK_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub recheck_interval: Duration,

    /// On SIGTERM, keep serving (while /readyz fails) this long before
    /// closing the listener, so endpoints are updated first.
    #[arg(long, env = "RPF_WEBHOOK_SHUTDOWN_DELAY", default_value = "3s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Longest wait for in-flight requests once the listener is closed.
    #[arg(long, env = "RPF_WEBHOOK_SHUTDOWN_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
}

/// Parses `500ms`, `10s`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 500ms, 10s, 2m or 1h"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("rpf-webhook").chain(args.iter().copied()))
    }

    #[test]
    fn flags() {
        let a = parse(&[
            "--sidecar-image",
            "i:1",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
        ])
        .unwrap();
        assert_eq!(a.listen, "0.0.0.0:8443".parse().unwrap());
        assert_eq!(a.native_sidecar, NativeSidecar::Auto);
        assert!(!a.self_managed_tls);

        let a = parse(&[
            "--sidecar-image=i:1",
            "--self-managed-tls",
            "--namespace=ns",
            "--native-sidecar=never",
        ])
        .unwrap();
        assert!(a.self_managed_tls);
        assert_eq!(a.namespace, "ns");
        assert_eq!(a.native_sidecar, NativeSidecar::Never);

        // Pull policies in the Kubernetes spelling (and lower case).
        for (flag, want) in [
            ("Never", PullPolicy::Never),
            ("never", PullPolicy::Never),
            ("IfNotPresent", PullPolicy::IfNotPresent),
            ("Always", PullPolicy::Always),
        ] {
            let a = parse(&[
                "--sidecar-image=i",
                "--self-managed-tls",
                "--sidecar-image-pull-policy",
                flag,
            ])
            .unwrap();
            assert_eq!(a.sidecar_image_pull_policy, Some(want), "{flag}");
            assert_eq!(want.as_str(), format!("{want:?}"));
        }
        assert!(parse(&[
            "--sidecar-image=i",
            "--self-managed-tls",
            "--sidecar-image-pull-policy",
            "Sometimes"
        ])
        .is_err());

        // One TLS source, exactly.
        assert!(parse(&["--sidecar-image", "i"]).is_err());
        assert!(parse(&["--sidecar-image", "i", "--tls-cert", "c"]).is_err());
        assert!(parse(&[
            "--sidecar-image",
            "i",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--self-managed-tls"
        ])
        .is_err());
        // The image is required.
        assert!(parse(&["--self-managed-tls"]).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }
}
