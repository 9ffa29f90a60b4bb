//! TLS material: the certificate the server presents, swapped without a
//! restart.
//!
//! The server asks [`CertStore`] for the certificate on every handshake, so
//! replacing it affects new connections at once while established ones
//! keep the certificate they negotiated. Two sources fill the store:
//! [`watch_files`] (PEM files written by cert-manager or an operator,
//! polled for content changes) and the self-managed mode
//! ([`crate::self_managed`]), which generates the material with
//! [`generate`].
//!
//! rpf uses one crypto provider everywhere: *ring* (the `kube` default).
//! `rpf_process::install_crypto_provider` makes it the process default, and the
//! server config is built with it explicitly.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rpf_process::error_chain;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

/// Why TLS material could not be loaded or generated.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate PEM holds no usable certificate.
    #[error("no certificate in the PEM data")]
    NoCertificate,
    /// PEM data could not be decoded.
    #[error("invalid PEM data")]
    Pem(#[source] rustls_pki_types::pem::Error),
    /// The key is unusable or does not belong to the certificate.
    #[error("the private key does not fit the certificate")]
    Key(#[source] rustls::Error),
    /// rcgen failed to generate a key or certificate.
    #[error("cannot generate a certificate")]
    Generate(#[source] rcgen::Error),
}

/// The certificate currently served; empty until the first load.
#[derive(Default)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("loaded", &self.is_loaded())
            .finish()
    }
}

impl CertStore {
    /// An empty store: handshakes fail until [`CertStore::set`] is called.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replaces the served certificate (new handshakes only).
    pub fn set(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(key));
    }

    /// Whether a certificate has been loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// A rustls server config that resolves its certificate from this
    /// store, speaking HTTP/2 and HTTP/1.1 (the API server prefers h2).
    pub fn server_config(self: &Arc<Self>) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Parses a PEM certificate chain and private key into a [`CertifiedKey`],
/// checking that the key belongs to the first certificate.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::Pem)?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(TlsError::Pem)?;
    CertifiedKey::from_der(chain, key, &rustls::crypto::ring::default_provider())
        .map_err(TlsError::Key)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Loads the certificate and key files once into `store`.
pub fn load_files(store: &CertStore, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let (c, k) = (read(cert)?, read(key)?);
    store.set(certified_key(&c, &k)?);
    Ok(())
}

/// Polls the certificate and key files every `interval` and loads them
/// into `store` whenever their content changes, until `shutdown`.
///
/// Content, not mtime, is compared: Kubernetes updates a Secret volume by
/// swapping a symlink, and cert-manager may rewrite identical bytes. A
/// change that does not load (half-written files, key not matching the
/// certificate) is logged and the old certificate stays in service; the
/// next change is tried again. `on_reload` is called with the outcome of
/// every attempt (for metrics).
pub async fn watch_files(
    store: Arc<CertStore>,
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    shutdown: CancellationToken,
    on_reload: impl Fn(bool) + Send + 'static,
) {
    let mut last: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let contents = match (read(&cert), read(&key)) {
            (Ok(c), Ok(k)) => (c, k),
            (Err(e), _) | (_, Err(e)) => {
                if last.as_ref().is_some_and(|l| !l.0.is_empty()) {
                    tracing::warn!(error = %error_chain(&e), "TLS files unreadable; keeping the current certificate");
                    last = Some((Vec::new(), Vec::new()));
                }
                continue;
            }
        };
        if last.as_ref() == Some(&contents) {
            continue;
        }
        let first = last.is_none();
        match certified_key(&contents.0, &contents.1) {
            Ok(k) => {
                store.set(k);
                if !first {
                    tracing::info!(cert = %cert.display(), "reloaded the TLS certificate");
                }
                on_reload(true);
            }
            Err(e) => {
                tracing::warn!(
                    cert = %cert.display(),
                    error = %error_chain(&e),
                    "TLS files changed but do not load; keeping the current certificate"
                );
                on_reload(false);
            }
        }
        last = Some(contents);
    }
}

/// A CA and a serving certificate signed by it, all PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct Material {
    /// CA certificate (what goes into `caBundle`).
    pub ca_cert: String,
    /// CA private key (kept to issue the next serving certificate under
    /// the same CA, so that `caBundle` does not change on renewal).
    pub ca_key: String,
    /// Serving certificate.
    pub cert: String,
    /// Serving private key.
    pub key: String,
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Material")
            .field("ca_cert", &self.ca_cert)
            .field("cert", &self.cert)
            .finish_non_exhaustive()
    }
}

impl Material {
    /// The serving certificate and key as rustls wants them.
    pub fn certified_key(&self) -> Result<CertifiedKey, TlsError> {
        certified_key(self.cert.as_bytes(), self.key.as_bytes())
    }
}

/// How long generated certificates are valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// CA lifetime.
    pub ca: Duration,
    /// Serving certificate lifetime.
    pub leaf: Duration,
}

impl Default for Validity {
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Validity {
            ca: Duration::from_secs(10 * 365 * DAY),
            leaf: Duration::from_secs(365 * DAY),
        }
    }
}

/// Generates a new CA and a serving certificate for `names` (DNS names or
/// IP addresses).
pub fn generate(names: &[String], validity: Validity) -> Result<Material, TlsError> {
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = DistinguishedName::new();
    ca.distinguished_name
        .push(DnType::CommonName, "rpf-webhook-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    // Tolerate clock skew between the webhook and the API server.
    ca.not_before = now - time::Duration::hours(1);
    ca.not_after = now + validity.ca;
    let ca_cert = ca.self_signed(&ca_key).map_err(TlsError::Generate)?;
    let ca_cert_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let (cert, key) = issue(&ca_cert_pem, &ca_key_pem, names, validity.leaf)?;
    Ok(Material {
        ca_cert: ca_cert_pem,
        ca_key: ca_key_pem,
        cert,
        key,
    })
}

/// Issues a new serving certificate under an existing CA; returns
/// (certificate PEM, key PEM).
pub fn issue(
    ca_cert_pem: &str,
    ca_key_pem: &str,
    names: &[String],
    lifetime: Duration,
) -> Result<(String, String), TlsError> {
    let now = OffsetDateTime::now_utc();
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(TlsError::Generate)?;
    let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, ca_key).map_err(TlsError::Generate)?;
    let key = KeyPair::generate().map_err(TlsError::Generate)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(TlsError::Generate)?;
    params.distinguished_name = DistinguishedName::new();
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + lifetime;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(TlsError::Generate)?;
    Ok((cert.pem(), key.serialize_pem()))
}
