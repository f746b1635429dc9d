//! TLS towards an `https://` Home Assistant: the rustls client configuration for the
//! forwarding client ([`crate::Connector::bind`]) and the self-check ([`crate::check`]), the
//! forwarding client's connector ([`UpstreamConnector`]: TCP, then the TLS handshake under its
//! own timeout), and the typed tests that tell a TLS failure or a hung handshake from a plain
//! connect failure.
//!
//! What it is not: it does not choose the trust mode (that is `config.rs`, from
//! `upstream_ca` / `upstream_pin_sha256` / `upstream_tls_insecure`), and it never touches the
//! tunnel's TLS to the edge.
//!
//! SNI and name checks follow the upstream's host: rustls sends no SNI for an IP address and
//! checks IP SANs instead of DNS names.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use aws_lc_rs::digest;
use http::Uri;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

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

/// The forwarding client's connector: TCP through hyper's [`HttpConnector`] (bounded by
/// `limits.upstream_connect_timeout`), then, for an `https://` upstream, the TLS handshake
/// bounded by `limits.upstream_tls_handshake_timeout`.
///
/// Why not hyper-rustls' own connector: it gives the handshake no bound of its own, so a Home
/// Assistant (or anything else on its port) that accepts TCP and never answers the
/// ClientHello held a request until `limits.upstream_timeout` (90 s), and the failure looked
/// like a slow response rather than a handshake that never happened.
#[derive(Clone)]
pub struct UpstreamConnector {
    http: HttpConnector,
    /// `None`: a plain `http://` upstream.
    tls: Option<tokio_rustls::TlsConnector>,
    handshake_timeout: Duration,
}

/// What [`UpstreamConnector`] fails with, as hyper-util wants it.
pub(crate) type ConnectError = Box<dyn std::error::Error + Send + Sync>;

impl std::fmt::Debug for UpstreamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamConnector")
            .field("tls", &self.tls.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

impl UpstreamConnector {
    /// `tls` is the configuration from [`client_config`] (`None`: plain HTTP).
    pub(crate) fn new(
        http: HttpConnector,
        tls: Option<Arc<rustls::ClientConfig>>,
        handshake_timeout: Duration,
    ) -> Self {
        Self {
            http,
            tls: tls.map(tokio_rustls::TlsConnector::from),
            handshake_timeout,
        }
    }
}

impl tower_service::Service<Uri> for UpstreamConnector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = ConnectError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // The scheme was checked once, by the configuration: TLS or not is its decision.
        let name = match &self.tls {
            Some(_) => match server_name(&uri) {
                Ok(name) => Some(name),
                Err(e) => return Box::pin(async move { Err(e) }),
            },
            None => None,
        };
        let tcp = self.http.call(uri);
        let tls = self.tls.clone();
        let limit = self.handshake_timeout;
        Box::pin(async move {
            let tcp = tcp.await.map_err(|e| Box::new(e) as ConnectError)?;
            let (Some(tls), Some(name)) = (tls, name) else {
                return Ok(MaybeHttpsStream::Http(tcp));
            };
            match tokio::time::timeout(limit, tls.connect(name, TokioIo::new(tcp))).await {
                Ok(Ok(stream)) => Ok(MaybeHttpsStream::Https(TokioIo::new(stream))),
                Ok(Err(e)) => Err(Box::new(e) as ConnectError),
                Err(_) => Err(Box::new(HandshakeTimeout { limit }) as ConnectError),
            }
        })
    }
}

/// SNI and the name check: the upstream's host (IPv6 brackets off); an IP address sends no
/// SNI and is checked against the certificate's IP SANs.
fn server_name(uri: &Uri) -> Result<ServerName<'static>, ConnectError> {
    let host = uri.host().unwrap_or_default();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|e| Box::new(e) as ConnectError)
}

/// The upstream accepted the TCP connection but did not complete the TLS handshake within
/// `limits.upstream_tls_handshake_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the TLS handshake with the upstream did not complete within {} s", limit.as_secs_f32())]
pub(crate) struct HandshakeTimeout {
    limit: Duration,
}

/// Whether `error` (or anything it was caused by) is [`HandshakeTimeout`].
pub(crate) fn is_handshake_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<HandshakeTimeout>() {
            return true;
        }
        next = e.source();
    }
    false
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
