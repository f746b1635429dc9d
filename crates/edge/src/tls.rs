//! Step 2 of the request path: the TLS handshake of the public listener.
//!
//! The client's SNI picks the site; the site's own `ServerConfig` then demands a client
//! certificate issued by that site's client CA. A client without one, or with one from another
//! CA, expired, or otherwise invalid, fails the handshake: it never reaches HTTP, let alone a
//! connector. A verified certificate becomes a [`Peer`].
//!
//! Before SNI picks a site, the ClientHello's ALPN is classified ([`Hello`]): an ACME CA's
//! TLS-ALPN-01 validation (`acme-tls/1` alone) gets the pending challenge certificate, the
//! handshake completes and the connection closes; it reaches no site, no HTTP, nothing else.
//!
//! A ClientHello offering the tunnel's ALPN (`doorless-tcp/1`) gets the tunnel's TLS
//! configuration instead (connector CA, certificate mandatory) and becomes an
//! [`Accepted::Tunnel`] for the connector accept path (`connectors`).
//!
//! What this module is not: the site registry (`site`, which builds each site's
//! `ServerConfig` through [`server_config`] here) or the revocation list (`revocation`, whose
//! [`RevocationCheck`] wraps the site CA's verifier).

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::server::{Acceptor, ClientHello, WebPkiClientVerifier};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::revocation::RevocationCheck;
use crate::site::{Site, Sites};
/// Why a connection was refused before HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandshakeDenial {
    /// No SNI, or SNI naming no site.
    UnknownSite,
    /// The client sent no certificate where one is required.
    NoCertificate,
    /// The certificate's issuer is not this site's client CA.
    UnknownCa,
    /// Expired or not yet valid.
    Expired,
    /// Revoked.
    Revoked,
    /// Verified by the CA but carries no device identity for this site.
    BadIdentity,
    /// Any other TLS failure (protocol, ALPN, malformed).
    Protocol,
    /// The client took too long.
    Timeout,
    /// The client hung up after our CertificateRequest without answering it: what Chromium
    /// does on its first handshake with a site to let the user (or its auto-selection) pick a
    /// certificate, then reconnects. Not a denial: counted as `result="aborted"`, not logged
    /// as one; it still spends the address's handshake token (see `accept`).
    ClientAborted,
    /// An `acme-tls/1` handshake for a hostname no ACME order is validating.
    NoAcmeChallenge,
}

impl HandshakeDenial {
    /// Every variant, for pre-creating metric series.
    pub(crate) const ALL: [Self; 10] = [
        Self::UnknownSite,
        Self::NoCertificate,
        Self::UnknownCa,
        Self::Expired,
        Self::Revoked,
        Self::BadIdentity,
        Self::Protocol,
        Self::Timeout,
        Self::ClientAborted,
        Self::NoAcmeChallenge,
    ];

    /// Metric label and log value.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::UnknownSite => "unknown_site",
            Self::NoCertificate => "no_cert",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::BadIdentity => "bad_identity",
            Self::Protocol => "tls_error",
            Self::Timeout => "timeout",
            Self::NoAcmeChallenge => "no_acme_challenge",
            Self::ClientAborted => "client_aborted",
        }
    }

    /// The `result` label: `denied`, or `aborted` for a client that hung up on its own.
    pub(crate) fn result(self) -> &'static str {
        match self {
            Self::ClientAborted => "aborted",
            _ => "denied",
        }
    }
}

/// A refused handshake: why, and for which site if SNI named one.
#[derive(Debug)]
pub(crate) struct HandshakeFailure {
    /// Why.
    pub(crate) denial: HandshakeDenial,
    /// The SNI's site, if any.
    pub(crate) site: Option<String>,
    /// The client offered the tunnel's ALPN: a refused connector (or an impostor), counted
    /// with the tunnel's refusals, not the sites' handshakes.
    pub(crate) tunnel: bool,
}

/// What a completed handshake on the public port was for.
// The large variant is moved once, straight to `serve`; boxing it would cost every client an
// allocation to save a few hundred bytes on the rare validation handshake.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Accepted {
    /// A browser or app (`h2`/`http/1.1`): HTTP for the SNI's site.
    Client(TlsStream<TcpStream>, Peer),
    /// A connector enrolling with a code ([`proto::enroll::ENROLL_ALPN`]): no client
    /// certificate, and the stream reaches nothing but `enroll`.
    Enroll(TlsStream<TcpStream>),
    /// A connector's TLS/TCP tunnel (ALPN `doorless-tcp/1`), its certificate verified against
    /// the connector CA; `connectors` takes it from here (identity, revocation, `Hello`).
    Tunnel(TlsStream<TcpStream>),
    /// An ACME CA validated a hostname of `site` (TLS-ALPN-01); the connection is closed.
    AcmeChallenge {
        /// The site the SNI names, if any.
        site: Option<String>,
    },
}

/// What a ClientHello asks for, decided from its ALPN and SNI before any certificate is chosen.
enum Hello {
    /// A TLS-ALPN-01 validation (RFC 8737): `acme-tls/1` is its only ALPN protocol.
    AcmeChallenge,
    /// A connector enrolling with a code: it offers [`proto::enroll::ENROLL_ALPN`].
    Enroll,
    /// A connector's TLS/TCP tunnel: it offers [`proto::ALPN_TCP`].
    Tunnel,
    /// A client of the site its SNI names.
    Site(Arc<Site>),
}

impl Hello {
    fn of(hello: &ClientHello<'_>, sites: &Sites) -> Result<Self, HandshakeDenial> {
        if acme::is_tls_alpn_challenge(hello) {
            return Ok(Self::AcmeChallenge);
        }
        if offers(hello, proto::enroll::ENROLL_ALPN) {
            return Ok(Self::Enroll);
        }
        if offers(hello, proto::ALPN_TCP) {
            return Ok(Self::Tunnel);
        }
        hello
            .server_name()
            .and_then(|name| sites.by_host(name))
            .map(|site| Self::Site(site.clone()))
            .ok_or(HandshakeDenial::UnknownSite)
    }
}

/// The client of one TLS connection.
#[derive(Debug)]
pub(crate) struct Peer {
    /// Client address (TCP peer).
    pub(crate) addr: SocketAddr,
    /// The site chosen by SNI (and proven by the certificate, if any).
    pub(crate) site: Arc<Site>,
    /// The verified device certificate; `None` only where the site's policy lets a
    /// handshake complete without one (session mode, public paths).
    pub(crate) certificate: Option<PeerCertificate>,
    /// Cancelled when the certificate is revoked: ends this connection and its WebSockets.
    pub(crate) revoked: CancellationToken,
}

/// A verified device certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerCertificate {
    /// Device name from the certificate identity.
    pub(crate) device: String,
    /// SHA-256 of the certificate.
    pub(crate) fingerprint: pki::Fingerprint,
    /// Its expiry, Unix seconds (session cookies never outlive it).
    pub(crate) not_after: u64,
}

pub(crate) fn server_config(
    certificate: Arc<dyn rustls::server::ResolvesServerCert>,
    client_ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    revoked: Arc<HashSet<pki::Fingerprint>>,
    certificate_optional: bool,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in client_ca {
        roots.add(ca)?;
    }
    // Mandatory client authentication: no certificate, no handshake.
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    if certificate_optional {
        // A client without a certificate may finish the handshake; the HTTP policy then
        // decides per request. A client WITH a bad certificate still fails here.
        builder = builder.allow_unauthenticated();
    }
    let webpki = builder.build()?;
    let verifier = Arc::new(RevocationCheck::new(webpki, revoked));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        // Resolved per handshake, so a renewed certificate reaches new handshakes while open
        // connections keep theirs (`server_cert`).
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No resumption at all (no TLS 1.3 tickets, no TLS 1.2 session IDs; the default ticketer
    // makes no TLS 1.2 tickets): a resumed session skips the certificate check, so a revoked
    // or expired certificate would keep working. Every handshake is a full one.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Whether the ClientHello offers `protocol` among its ALPN tokens.
fn offers(hello: &rustls::server::ClientHello<'_>, protocol: &[u8]) -> bool {
    hello
        .alpn()
        .is_some_and(|mut offered| offered.any(|p| p == protocol))
}

/// The TLS configuration of the enrollment ALPN: the given certificate, no client
/// authentication, only [`proto::enroll::ENROLL_ALPN`], no resumption.
pub(crate) fn enroll_config(
    certificate: Arc<dyn rustls::server::ResolvesServerCert>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = vec![proto::enroll::ENROLL_ALPN.to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// Runs the handshake for one TCP connection. The ClientHello's ALPN picks the configuration:
/// the tunnel's for `doorless-tcp/1` (`tunnel_tls`: connector CA, certificate mandatory),
/// otherwise the SNI's site's.
pub(crate) async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    sites: &Sites,
    challenges: &acme::Challenges,
    tunnel_tls: &Arc<rustls::ServerConfig>,
    limit: Duration,
) -> Result<Accepted, HandshakeFailure> {
    let mut site_name = None;
    let mut tunnel = false;
    let run = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), tcp)
            .await
            .map_err(|e| classify(&e))?;
        let hello = start.client_hello();
        let site = match Hello::of(&hello, sites)? {
            Hello::Site(site) => site,
            Hello::Tunnel => {
                tunnel = true;
                let stream = start
                    .into_stream(tunnel_tls.clone())
                    .await
                    .map_err(|e| classify(&e))?;
                return Ok(Accepted::Tunnel(stream));
            }
            Hello::Enroll => {
                // Enrollment: the site's certificate if SNI names one (a publicly trusted one
                // then verifies), else the tunnel certificate; either way the code's MAC is
                // what authenticates the edge to the connector.
                let config = hello
                    .server_name()
                    .and_then(|name| sites.by_host(name))
                    .map_or_else(|| sites.enroll_tls(), |site| site.enroll_tls.clone());
                let stream = start.into_stream(config).await.map_err(|e| classify(&e))?;
                return Ok(Accepted::Enroll(stream));
            }
            Hello::AcmeChallenge => {
                let name = hello.server_name().map(str::to_owned);
                site_name = name
                    .as_deref()
                    .and_then(|n| sites.by_host(n))
                    .map(|s| s.name.clone());
                let config = name
                    .as_deref()
                    .and_then(|n| challenges.server_config(n))
                    .ok_or(HandshakeDenial::NoAcmeChallenge)?;
                let mut stream = start.into_stream(config).await.map_err(|e| classify(&e))?;
                // The CA only checks the certificate; close at once.
                let _ = stream.shutdown().await;
                return Ok(Accepted::AcmeChallenge {
                    site: site_name.clone(),
                });
            }
        };
        site_name = Some(site.name.clone());
        // Our whole first flight (for TLS 1.3 up to Finished; for 1.2 up to ServerHelloDone)
        // goes out at once, CertificateRequest included: from here, a client that hangs up
        // is one that chose not to answer it.
        let stream = start
            .into_stream(site.tls.clone())
            .await
            .map_err(|e| classify_after_hello(&e))?;
        let (_, conn) = stream.get_ref();
        let certificate = match conn.peer_certificates().and_then(|c| c.first()) {
            Some(leaf) => Some(peer_certificate(leaf, &site.name)?),
            // rustls only lets this through when the site allows it (its policy, or a pending
            // device link); check anyway.
            None if site.certificate_optional() => None,
            None => return Err(HandshakeDenial::NoCertificate),
        };
        let peer = Peer {
            addr,
            site,
            certificate,
            revoked: CancellationToken::new(),
        };
        Ok(Accepted::Client(stream, peer))
    };
    let result = match tokio::time::timeout(limit, run).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeDenial::Timeout),
    };
    result.map_err(|denial| HandshakeFailure {
        denial,
        site: site_name,
        tunnel,
    })
}

/// The identity of a verified leaf. The CA signature proves the site (each site has its own
/// client CA); the identity in the certificate must agree, or it was minted by something else.
fn peer_certificate(
    leaf: &CertificateDer<'_>,
    site: &str,
) -> Result<PeerCertificate, HandshakeDenial> {
    let identity = pki::Identity::from_cert_der(leaf).map_err(|_| HandshakeDenial::BadIdentity)?;
    if identity.kind != pki::Kind::Device || identity.site != site {
        return Err(HandshakeDenial::BadIdentity);
    }
    let not_after = pki::cert_not_after(leaf)
        .map_err(|_| HandshakeDenial::BadIdentity)?
        .unix_timestamp();
    Ok(PeerCertificate {
        device: identity.name,
        fingerprint: pki::Fingerprint::of(leaf),
        not_after: u64::try_from(not_after).unwrap_or(0),
    })
}

/// [`classify`] for failures after our ServerHello flight: a client that closes (FIN or RST,
/// with or without a `close_notify`/`user_canceled` alert) instead of answering our
/// CertificateRequest aborted; it was not refused. Judged by error kind and alert type, never
/// by message text.
fn classify_after_hello(err: &io::Error) -> HandshakeDenial {
    use rustls::{AlertDescription, Error};
    let hung_up = matches!(
        err.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    );
    let said_goodbye = matches!(
        err.get_ref().and_then(|e| e.downcast_ref::<Error>()),
        Some(Error::AlertReceived(
            AlertDescription::CloseNotify | AlertDescription::UserCanceled
        ))
    );
    if hung_up || said_goodbye {
        HandshakeDenial::ClientAborted
    } else {
        classify(err)
    }
}

fn classify(err: &io::Error) -> HandshakeDenial {
    use rustls::{CertificateError, Error};
    let Some(tls) = err.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return HandshakeDenial::Protocol;
    };
    match tls {
        Error::NoCertificatesPresented => HandshakeDenial::NoCertificate,
        Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                HandshakeDenial::UnknownCa
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => HandshakeDenial::Expired,
            CertificateError::Revoked => HandshakeDenial::Revoked,
            _ => HandshakeDenial::BadIdentity,
        },
        _ => HandshakeDenial::Protocol,
    }
}
