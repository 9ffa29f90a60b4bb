//! The HTTPS server: routes, the TLS accept loop, graceful shutdown.
//!
//! axum provides the routes; the accept loop is our own (tokio-rustls +
//! hyper-util) so that the certificate comes from the reloadable
//! [`CertStore`] on every handshake and so that shutdown can drain the
//! connections in flight: stop accepting, let every open connection finish
//! its current requests, then return.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rpf_inject::InjectConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::admission;
use crate::metrics::Metrics;
use crate::tls::CertStore;

/// Largest request body accepted. Pods are stored in etcd, whose request
/// limit is 1.5 MiB; an AdmissionReview carries the object once (twice for
/// updates, which rpf does not handle).
const BODY_LIMIT: usize = 4 << 20;

/// How long a client may take to complete the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// State shared by every request.
#[derive(Debug)]
pub struct AppState {
    /// What to inject.
    pub inject: InjectConfig,
    /// Counters and histograms.
    pub metrics: Arc<Metrics>,
    /// Served certificate (readiness = loaded).
    pub certs: Arc<CertStore>,
    /// Cleared when shutdown starts, so that `/readyz` fails while the
    /// endpoint is taken out of the Service.
    pub accepting: AtomicBool,
}

impl AppState {
    /// State for a webhook injecting with `inject`.
    pub fn new(inject: InjectConfig, metrics: Arc<Metrics>, certs: Arc<CertStore>) -> Arc<Self> {
        Arc::new(AppState {
            inject,
            metrics,
            certs,
            accepting: AtomicBool::new(true),
        })
    }
}

/// The routes: `POST /mutate`, `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn mutate(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let start = Instant::now();
    let response = match admission::review(&body, &state.inject, &state.metrics) {
        Ok(review) => match serde_json::to_vec(&review) {
            Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
            Err(e) => {
                // Cannot happen with kube's types; answer something useful.
                tracing::error!(error = %e, "cannot serialize the AdmissionReview");
                state.metrics.error("serialize");
                (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
            }
        },
        Err(bad) => {
            tracing::warn!(reason = %bad, "rejected a malformed admission request");
            (StatusCode::BAD_REQUEST, format!("{bad}\n")).into_response()
        }
    };
    state
        .metrics
        .observe_duration(start.elapsed().as_secs_f64());
    response
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if !state.certs.is_loaded() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "TLS material not loaded yet\n",
        )
            .into_response()
    } else if !state.accepting.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    } else {
        "ok\n".into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// Serves `router` over TLS on `listener` until `shutdown`, then stops
/// accepting and waits up to `drain` for open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    certs: Arc<CertStore>,
    shutdown: CancellationToken,
    drain: Duration,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(certs.server_config());
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = rpf_process::accept(&listener, "the HTTPS port") => accepted,
            () = shutdown.cancelled() => break,
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return handshake_failed(peer, &e),
                Err(_) => {
                    return tracing::debug!(%peer, "TLS handshake timed out");
                }
            };
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining open connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(drain) => tracing::warn!(?drain, "connections still open after the drain timeout"),
    }
    Ok(())
}

fn handshake_failed(peer: SocketAddr, e: &std::io::Error) {
    // A client that does not trust our CA shows up here; at debug level
    // only, since health checkers and scanners cause the same.
    tracing::debug!(%peer, error = %e, "TLS handshake failed");
}
