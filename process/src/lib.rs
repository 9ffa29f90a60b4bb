//! # rpf-process
//!
//! What each rpf binary (`rpf`, `rpf-sidecar`, `rpf-webhook`) does around
//! its real work, written once: logging for people or for machines
//! ([`init_logging`]), Ctrl-C and SIGTERM ([`cancel_on_signal`]), the
//! open-file limit ([`raise_fd_limit`]), accepting with a back-off when
//! the process runs out of descriptors ([`accept`]), the Prometheus
//! endpoint ([`spawn_metrics_endpoint`]), the readiness endpoint
//! ([`spawn_ready_endpoint`]) and error chains for logs
//! ([`error_chain`]). Small on purpose: the sidecar links it, so nothing
//! here pulls TLS or a Kubernetes client unless a feature asks for it
//! (`tls` adds [`install_crypto_provider`]).

mod accept;
mod log;
mod metrics;
mod ready;
mod signal;

pub use accept::accept;
pub use log::{init_logging, LogStyle, PEER_NOISE_FILTER};
pub use metrics::spawn_metrics_endpoint;
pub use ready::{spawn_ready_endpoint, READY_PATH};
pub use signal::cancel_on_signal;

/// Raises this process's open-file soft limit to its hard limit, as Go
/// programs do at start: a tunnel holds two sockets per connection and the
/// usual soft limit of 1024 would cap it near 500. Failure is harmless and
/// only logged at debug level.
pub fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!("cannot raise the open-file limit: {e}");
    }
}

/// Formats an error with its sources, `a: b: c`, leaving out a source whose
/// text the message already contains (many errors repeat their source).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Makes *ring*, the provider kube and our TLS code are built with, the
/// process-wide rustls crypto provider. Idempotent: an error only means a
/// provider is already installed, which the Cargo features make ours.
#[cfg(feature = "tls")]
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Outer(&'static str, std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.1)
        }
    }

    #[test]
    fn chains_sources_once() {
        let io = || std::io::Error::other("connection refused");
        let e = Outer("cannot reach the API server", io());
        assert_eq!(
            error_chain(&e),
            "cannot reach the API server: connection refused"
        );
        // A message that already quotes its source does not repeat it.
        let e = Outer("dial failed: connection refused", io());
        assert_eq!(error_chain(&e), "dial failed: connection refused");
    }
}
