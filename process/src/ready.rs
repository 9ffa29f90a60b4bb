//! A readiness endpoint for a kubelet `httpGet` probe: `GET /ready`
//! answers 200 while the caller says it is ready, 503 otherwise, so a
//! Service sends traffic only to pods that can serve it.

use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The path the probe asks.
pub const READY_PATH: &str = "/ready";

/// Binds `addr` and serves `GET /ready` in the background until `shutdown`:
/// `check` returns `Ok(why)` for 200 or `Err(why)` for 503, `why` being
/// the body (a person reads it with curl). Returns the bound address.
pub async fn spawn_ready_endpoint<F>(
    addr: SocketAddr,
    check: F,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr>
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let answer = move |path: &str| answer(path, &check);
    tokio::spawn(crate::metrics::serve_get(
        listener,
        Arc::new(answer),
        shutdown,
        "the readiness endpoint",
    ));
    Ok(bound)
}

fn answer(path: &str, check: &dyn Fn() -> Result<String, String>) -> Response<Full<Bytes>> {
    let (status, body) = match (path == READY_PATH).then(check) {
        Some(Ok(why)) => (StatusCode::OK, why),
        Some(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, why),
        None => (StatusCode::NOT_FOUND, "not found: try /ready".to_owned()),
    };
    crate::metrics::response(status, "text/plain; charset=utf-8", body + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::get;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn answers_what_check_says_on_ready_only() {
        let shutdown = CancellationToken::new();
        let ready = Arc::new(AtomicBool::new(false));
        let flag = ready.clone();
        let addr = spawn_ready_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            move || match flag.load(Ordering::SeqCst) {
                true => Ok("ready".into()),
                false => Err("no session".into()),
            },
            shutdown.clone(),
        )
        .await
        .unwrap();
        let no = get(addr, "/ready").await;
        assert!(no.starts_with("HTTP/1.1 503"), "{no}");
        assert!(no.ends_with("no session\n"), "{no}");
        ready.store(true, Ordering::SeqCst);
        let yes = get(addr, "/ready").await;
        assert!(yes.starts_with("HTTP/1.1 200"), "{yes}");
        let other = get(addr, "/metrics").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        shutdown.cancel();
    }
}
