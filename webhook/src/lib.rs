//! rpf's mutating admission webhook: injects the sidecar into opted-in pods.
//!
//! The decision and the patch come from [`rpf_inject`], the same library
//! `rpf inject` uses; this crate is the HTTPS service around it.
//!
//! # Layout
//!
//! - [`args`]: command-line flags.
//! - [`admission`]: AdmissionReview body in, AdmissionReview answer out.
//! - [`server`]: routes (`/mutate`, `/healthz`, `/readyz`, `/metrics`), the
//!   TLS accept loop and graceful shutdown.
//! - [`tls`]: the served certificate, reloaded from files or replaced by
//!   [`self_managed`], which keeps a generated CA in a Secret and in the
//!   webhook configuration's `caBundle`.
//! - [`version`]: native sidecar support from the API server's version.
//! - [`metrics`]: what it says.
//!
//! [`run`] wires them: the binary parses [`Args`] and calls it; tests call
//! [`run_until`] with their own listener and stop signal.

mod admission;
mod args;
mod metrics;
mod self_managed;
mod server;
pub mod tls;
mod version;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use args::{parse_duration, Args, NativeSidecar, PullPolicy};
use rpf_inject::InjectConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::self_managed::SelfManaged;
use crate::server::AppState;
use crate::tls::{CertStore, TlsError, Validity};

/// Why the webhook could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS files could not be loaded at startup.
    #[error("cannot load the TLS certificate and key")]
    Tls(#[from] TlsError),
    /// No Kubernetes client for --self-managed-tls.
    #[error("--self-managed-tls needs access to the Kubernetes API")]
    Kube(#[source] kube::Error),
    /// The server failed.
    #[error("the HTTPS server failed")]
    Serve(#[source] std::io::Error),
}

/// Runs the webhook until SIGTERM or Ctrl-C (a second one exits at once).
pub async fn run(args: Args) -> Result<(), Error> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: args.listen,
            source,
        })?;
    let signalled = CancellationToken::new();
    tokio::spawn(rpf_process::cancel_on_signal(signalled.clone()));
    run_until(args, listener, signalled.cancelled_owned()).await
}

/// Runs the webhook on `listener` until `stop` resolves, then shuts down
/// gracefully: `/readyz` fails for `--shutdown-delay` while requests are
/// still served, then the listener closes and open connections get up to
/// `--shutdown-timeout` to finish.
pub async fn run_until(
    args: Args,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    rpf_process::install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let certs = CertStore::new();
    let shutdown = CancellationToken::new();

    let needs_client = args.self_managed_tls || args.native_sidecar == NativeSidecar::Auto;
    let client = if needs_client {
        match kube::Client::try_default().await {
            Ok(c) => Some(c),
            Err(e) if args.self_managed_tls => return Err(Error::Kube(e)),
            Err(e) => {
                tracing::warn!(error = %rpf_process::error_chain(&e), "no Kubernetes client; cannot detect native sidecar support");
                None
            }
        }
    } else {
        None
    };
    let native = match args.native_sidecar {
        NativeSidecar::Always => true,
        NativeSidecar::Never => false,
        NativeSidecar::Auto => match &client {
            Some(c) => version::detect(c).await.unwrap_or(false),
            None => false,
        },
    };
    let mut inject = InjectConfig::new(&args.sidecar_image).with_native_sidecar(native);
    if let Some(p) = args.sidecar_image_pull_policy {
        inject = inject.with_image_pull_policy(p.as_str());
    }
    tracing::info!(image = %inject.image, native_sidecar = native, "injector configured");

    let reload_metrics = metrics.clone();
    let on_reload = move |ok| reload_metrics.tls_reload(ok);
    match (&args.tls_cert, &args.tls_key, client) {
        (Some(cert), Some(key), _) => {
            tls::load_files(&certs, cert, key)?;
            tracing::info!(cert = %cert.display(), "TLS certificate loaded");
            tokio::spawn(tls::watch_files(
                certs.clone(),
                cert.clone(),
                key.clone(),
                args.tls_reload_interval,
                shutdown.clone(),
                on_reload,
            ));
        }
        (_, _, Some(client)) if args.self_managed_tls => {
            let sm = SelfManaged {
                client,
                namespace: args.namespace.clone(),
                service: args.service_name.clone(),
                secret: args.secret_name.clone(),
                webhook_config: args.webhook_config_name.clone(),
                validity: Validity::default(),
                recheck: args.recheck_interval,
            };
            tokio::spawn(self_managed::maintain(
                sm,
                certs.clone(),
                shutdown.clone(),
                on_reload,
            ));
        }
        // clap guarantees one TLS source, and a client exists in
        // self-managed mode (checked above).
        _ => unreachable!("no TLS source"),
    }

    let state = AppState::new(inject, metrics, certs.clone());
    let addr = listener.local_addr().map_err(Error::Serve)?;
    tracing::info!(%addr, "serving HTTPS");

    let (delay, drain) = (args.shutdown_delay, args.shutdown_timeout);
    let stopping = state.clone();
    let shutdown_after_delay = shutdown.clone();
    tokio::spawn(async move {
        stop.await;
        tracing::info!(
            ?delay,
            "shutting down: failing /readyz, then closing the listener"
        );
        stopping.accepting.store(false, Ordering::Relaxed);
        tokio::time::sleep(delay).await;
        shutdown_after_delay.cancel();
    });
    server::serve(listener, server::router(state), certs, shutdown, drain)
        .await
        .map_err(Error::Serve)
}
