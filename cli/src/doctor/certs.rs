//! Whether the API server can trust the webhook: the serving certificate
//! the webhook presents must chain to a certificate in the
//! MutatingWebhookConfiguration's `caBundle` and name the Service's DNS
//! name, as the API server checks when it calls the webhook.
//!
//! The API server does not let a client see the certificate a Service
//! presents (its service proxy terminates TLS), so the certificate is read
//! where the webhook reads it: its TLS Secret.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;

/// Why the bundle or the certificate is not what the API server needs.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// No PEM certificate in the text.
    #[error("{0} holds no PEM certificate")]
    Empty(&'static str),
    /// PEM that does not decode, or a certificate a trust store refuses.
    #[error("{0} does not parse: {1}")]
    Parse(&'static str, String),
    /// The chain does not verify (unknown issuer, expired, other name).
    #[error("{0}")]
    Invalid(String),
}

/// The certificates in PEM text; `what` names the text for errors.
pub fn parse(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::Parse(what, e.to_string()))?;
    match certs.is_empty() {
        true => Err(CertError::Empty(what)),
        false => Ok(certs),
    }
}

/// Verifies the serving chain `serving` (leaf first) against the CAs of
/// `ca_bundle` for `dns_name` at `now`.
pub fn verify(
    ca_bundle: &[u8],
    serving: &[u8],
    dns_name: &str,
    now: UnixTime,
) -> Result<(), CertError> {
    let mut roots = RootCertStore::empty();
    for ca in parse(ca_bundle, "the caBundle")? {
        roots
            .add(ca)
            .map_err(|e| CertError::Parse("the caBundle", e.to_string()))?;
    }
    let chain = parse(serving, "the serving certificate")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| CertError::Invalid(e.to_string()))?;
    let name = ServerName::try_from(dns_name.to_owned())
        .map_err(|e| CertError::Invalid(format!("{dns_name:?} is not a DNS name: {e}")))?;
    verifier
        .verify_server_cert(&chain[0], &chain[1..], &name, &[], now)
        .map(|_| ())
        .map_err(|e| CertError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use std::time::Duration;

    const NAME: &str = "rpf-webhook.rpf-system.svc";

    /// A CA named `rpf-webhook-ca` (as the webhook names its own), as
    /// PEM, and what signs with it.
    fn ca() -> (String, Issuer<'static, KeyPair>) {
        named_ca("rpf-webhook-ca")
    }

    fn named_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        let pem = params.self_signed(&key).unwrap().pem();
        (pem, Issuer::new(params, key))
    }

    fn serving(issuer: &Issuer<'_, KeyPair>, name: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.signed_by(&key, issuer).unwrap().pem()
    }

    #[test]
    fn a_certificate_of_the_bundle_for_the_service_name_verifies() {
        let (ca_pem, issuer) = ca();
        let cert = serving(&issuer, NAME);
        let now = UnixTime::now();
        assert_eq!(
            verify(ca_pem.as_bytes(), cert.as_bytes(), NAME, now),
            Ok(())
        );
        // A bundle with another CA first still finds the right one.
        let (other_pem, _) = ca();
        let bundle = format!("{other_pem}{ca_pem}");
        assert_eq!(
            verify(bundle.as_bytes(), cert.as_bytes(), NAME, now),
            Ok(())
        );
    }

    #[test]
    fn another_ca_another_name_or_an_expired_certificate_fail() {
        let (ca_pem, issuer) = ca();
        let cert = serving(&issuer, NAME);
        let now = UnixTime::now();
        let (other_pem, _) = named_ca("someone-else");
        let e = verify(other_pem.as_bytes(), cert.as_bytes(), NAME, now).unwrap_err();
        assert!(e.to_string().contains("UnknownIssuer"), "{e}");
        // A CA made again (same name, new key): the bundle is stale.
        let (regenerated_pem, _) = ca();
        let e = verify(regenerated_pem.as_bytes(), cert.as_bytes(), NAME, now).unwrap_err();
        assert!(e.to_string().contains("BadSignature"), "{e}");
        let e = verify(
            ca_pem.as_bytes(),
            cert.as_bytes(),
            "other.rpf-system.svc",
            now,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("not valid for name \"other.rpf-system.svc\""),
            "{e}"
        );
        // rcgen's default validity ends in 4096; look from beyond it.
        let later = UnixTime::since_unix_epoch(Duration::from_secs(5_000 * 365 * 86_400 / 2));
        let e = verify(ca_pem.as_bytes(), cert.as_bytes(), NAME, later).unwrap_err();
        assert!(e.to_string().contains("certificate expired"), "{e}");
    }

    #[test]
    fn bundles_that_are_not_certificates_are_named() {
        let (_, issuer) = ca();
        let cert = serving(&issuer, NAME);
        let now = UnixTime::now();
        assert_eq!(
            verify(b"", cert.as_bytes(), NAME, now),
            Err(CertError::Empty("the caBundle"))
        );
        assert_eq!(
            verify(b"not pem at all", cert.as_bytes(), NAME, now),
            Err(CertError::Empty("the caBundle"))
        );
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let e = verify(broken.as_bytes(), cert.as_bytes(), NAME, now).unwrap_err();
        assert!(matches!(e, CertError::Parse("the caBundle", _)), "{e}");
    }
}
