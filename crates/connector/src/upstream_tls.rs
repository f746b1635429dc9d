//! TLS towards an `https://` Home Assistant: the rustls client configuration for the
//! forwarding client ([`crate::Connector::bind`]) and the self-check ([`crate::check`]), and
//! the typed test that tells a TLS failure from a plain connect failure.
//!
//! What it is not: it does not choose the trust mode (that is `config.rs`, from
//! `upstream_ca` / `upstream_pin_sha256` / `upstream_tls_insecure`), and it never touches the
//! tunnel's TLS to the edge.
//!
//! SNI and name checks follow the upstream's host: rustls sends no SNI for an IP address and
//! checks IP SANs instead of DNS names.

use std::sync::Arc;

use aws_lc_rs::digest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::UpstreamTls;

/// The client configuration for `mode`, or `None` for a plain `http://` upstream.
pub(crate) fn client_config(
    mode: &UpstreamTls,
) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let config = match mode {
        UpstreamTls::Plain => return Ok(None),
        UpstreamTls::SystemRoots => {
            // The OS trust store (what Let's Encrypt/DuckDNS certificates chain to), updated
            // with the system rather than with a doorless release.
            let verifier = rustls_platform_verifier::Verifier::new(provider)
                .map_err(|e| format!("system trust store: {e}"))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_no_client_auth()
        }
        UpstreamTls::Ca { certs, .. } => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots
                    .add(cert.clone())
                    .map_err(|e| format!("upstream_ca: {e}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        UpstreamTls::Pin(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Accept {
                provider,
                pin: Some(*pin),
            }))
            .with_no_client_auth(),
        UpstreamTls::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Accept::any(provider)))
            .with_no_client_auth(),
    };
    Ok(Some(Arc::new(config)))
}

/// Whether `error` (or anything it was caused by) is a TLS failure: a certificate that did
/// not verify, a handshake alert. Walks the typed chain: hyper-rustls wraps tokio-rustls'
/// `io::Error` (which wraps the `rustls::Error`) in another `io::Error`, and an `io::Error`'s
/// `source()` skips the error it wraps, so an `io::Error` is followed through `get_ref()`.
pub(crate) fn is_tls_error(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        next = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

/// Accepts the server certificate whose SHA-256 is `pin` (any certificate when `pin` is
/// `None`: `upstream_tls_insecure`). A pin trusts exactly one certificate, so neither chain
/// nor name nor expiry is checked; the handshake signature is still checked against it, so
/// the peer holds that certificate's key.
#[derive(Debug)]
pub(crate) struct Accept {
    provider: Arc<CryptoProvider>,
    pin: Option<[u8; 32]>,
}

impl Accept {
    /// Any certificate, its handshake signature still checked: for a peer that something else
    /// authenticates (enrollment's response MAC) or that the user chose not to verify.
    pub(crate) fn any(provider: Arc<CryptoProvider>) -> Self {
        Self {
            provider,
            pin: None,
        }
    }
}

impl ServerCertVerifier for Accept {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(pin) if digest::digest(&digest::SHA256, end_entity).as_ref() == pin => {
                Ok(ServerCertVerified::assertion())
            }
            Some(_) => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_are_found_through_nested_io_errors() {
        let rustls_error =
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // tokio-rustls' error, wrapped again by hyper-rustls.
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_error);
        let outer = std::io::Error::other(inner);
        assert!(is_tls_error(&outer));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_tls_error(&std::io::Error::other(refused)));
    }
}
