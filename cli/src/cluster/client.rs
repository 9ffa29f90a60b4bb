//! The kube client rpf talks to the API server with, built on a TCP
//! connector that keeps `TCP_NODELAY` on.
//!
//! kube's default client (`Client::try_from(config)`) builds its hyper
//! `HttpConnector` with Nagle's algorithm left on. Every port-forward and
//! exec channel is an upgraded connection of that client, so each small
//! frame (a new tunneled connection's HEADERS, a 1-byte echo) waited for the
//! API server's delayed ACK: 44 ms per new connection on the lab cluster,
//! 23 connections/s where kubectl port-forward makes 280. The stack below is
//! kube's, minus the retry and tracing layers rpf does not use.
//!
//! Through an HTTP or SOCKS proxy (`proxy-url` in the kubeconfig) the client
//! is kube's own, Nagle included: the proxy connectors are kube's to build.

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt;
use kube::{Client, Config};
use tower::{BoxError, ServiceBuilder};

use super::ClusterError;

/// The plain TCP connector under TLS: `TCP_NODELAY` on, kube's connect
/// timeout.
fn tcp_connector(config: &Config) -> HttpConnector {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector.set_connect_timeout(config.connect_timeout);
    connector
}

/// A client for `config` whose connections to the API server have
/// `TCP_NODELAY` on.
pub(super) fn build(config: Config) -> Result<Client, ClusterError> {
    let config_error = |e: kube::Error| ClusterError::Config(e.to_string());
    if config.proxy_url.is_some() {
        return Client::try_from(config).map_err(config_error);
    }
    let https = config
        .rustls_https_connector_with_connector(tcp_connector(&config))
        .map_err(config_error)?;
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(config_error)?)
        .layer(config.extra_headers_layer().map_err(config_error)?)
        .map_err(BoxError::from)
        .service(http);
    Ok(Client::new(service, config.default_namespace))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::Service;

    /// The socket the connector opens has `TCP_NODELAY` on (kube's default
    /// connector turns it off).
    #[tokio::test]
    async fn api_server_connections_have_nodelay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let config = Config::new(format!("https://{address}").parse().unwrap());
        let mut connector = tcp_connector(&config);
        let uri = format!("http://{address}").parse().unwrap();
        let (stream, accepted) = tokio::join!(connector.call(uri), listener.accept());
        let (stream, _) = (stream.unwrap(), accepted.unwrap());
        assert!(stream.inner().nodelay().unwrap(), "Nagle is on");
    }

    /// The client builds from a plain configuration (no proxy).
    #[tokio::test]
    async fn builds_without_proxy() {
        rpf_process::install_crypto_provider();
        let config = Config::new("https://127.0.0.1:6443".parse().unwrap());
        build(config).unwrap();
    }
}
