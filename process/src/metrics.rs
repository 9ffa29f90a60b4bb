//! The Prometheus endpoint: plain HTTP/1 on an address of the user's
//! choosing, `GET /metrics` answered with whatever the caller renders (the
//! tunnel's [`Metrics`](https://docs.rs/prometheus-client) text, say), so
//! this crate needs no knowledge of the metrics themselves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The OpenMetrics content type prometheus-client's text encoder produces.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds `addr` and serves `GET /metrics` there in the background until
/// `shutdown`; each scrape calls `render`. Returns the bound address (`addr`
/// may ask for port 0).
pub async fn spawn_metrics_endpoint<F>(
    addr: SocketAddr,
    render: F,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr>
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let answer = move |path: &str| answer(path, &render);
    tokio::spawn(serve_get(
        listener,
        Arc::new(answer),
        shutdown,
        "the metrics endpoint",
    ));
    Ok(bound)
}

/// Serves plain HTTP/1 on `listener` until `shutdown`, answering every
/// request with what `answer` returns for its path.
pub(crate) async fn serve_get<A>(
    listener: TcpListener,
    answer: Arc<A>,
    shutdown: CancellationToken,
    what: &'static str,
) where
    A: Fn(&str) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    loop {
        let (tcp, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = crate::accept(&listener, what) => accepted,
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer(req.uri().path())) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn answer(path: &str, render: &dyn Fn() -> String) -> Response<Full<Bytes>> {
    let (status, body) = if path == "/metrics" {
        (StatusCode::OK, render())
    } else {
        (
            StatusCode::NOT_FOUND,
            "not found: try /metrics\n".to_string(),
        )
    };
    response(status, CONTENT_TYPE, body)
}

/// A response with `body` as `content_type`: both endpoints answer so.
pub(crate) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A plain HTTP/1.1 GET, the whole response as text.
    pub(crate) async fn get(addr: SocketAddr, path: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_what_render_returns_on_metrics_only() {
        let shutdown = CancellationToken::new();
        let addr = spawn_metrics_endpoint(
            "127.0.0.1:0".parse().unwrap(),
            || "rpf_up 1\n".to_string(),
            shutdown.clone(),
        )
        .await
        .unwrap();
        let ok = get(addr, "/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("openmetrics-text"), "{ok}");
        assert!(ok.ends_with("rpf_up 1\n"), "{ok}");
        let missing = get(addr, "/other").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        shutdown.cancel();
    }
}
