//! Step 2 of the request path: the TLS handshake of the public listener.
//!
//! The client's SNI picks the site; the site's own `ServerConfig` then demands a client
//! certificate issued by that site's client CA. A client without one, or with one from another
//! CA, expired, or otherwise invalid, fails the handshake: it never reaches HTTP, let alone a
//! connector. A verified certificate becomes a [`Peer`].

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{Acceptor, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::policy::SitePolicy;

/// One site as the edge serves it.
#[derive(Debug)]
pub struct Site {
    /// Site name (from the state dir).
    pub name: String,
    /// Hostnames that select it, lowercase.
    pub hostnames: Vec<String>,
    /// Access policy.
    pub policy: SitePolicy,
    /// Session cookie lifetime (`required_or_session`).
    pub session_lifetime: Duration,
    /// Header carrying the device name upstream, if configured.
    pub identity_header: Option<http::HeaderName>,
    tls: Arc<rustls::ServerConfig>,
}

/// All sites, by hostname and by name. Immutable; a reload builds a new one.
#[derive(Debug, Default)]
pub struct Sites {
    by_host: HashMap<String, Arc<Site>>,
    by_name: HashMap<String, Arc<Site>>,
    revoked: HashSet<[u8; 32]>,
    revoked_connectors: HashSet<[u8; 32]>,
    expiries: Vec<CertExpiry>,
}

/// When one of the edge's certificates expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertExpiry {
    /// Site, or empty for edge-wide certificates.
    pub site: String,
    /// `client_ca`, `server`, `tunnel`, `tunnel_ca` or `connector_ca`.
    pub kind: &'static str,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
}

/// Why a connection was refused before HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeDenial {
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
}

impl HandshakeDenial {
    /// Every variant, for pre-creating metric series.
    pub const ALL: [Self; 8] = [
        Self::UnknownSite,
        Self::NoCertificate,
        Self::UnknownCa,
        Self::Expired,
        Self::Revoked,
        Self::BadIdentity,
        Self::Protocol,
        Self::Timeout,
    ];

    /// Metric label and log value.
    pub fn reason(self) -> &'static str {
        match self {
            Self::UnknownSite => "unknown_site",
            Self::NoCertificate => "no_cert",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::BadIdentity => "bad_identity",
            Self::Protocol => "tls_error",
            Self::Timeout => "timeout",
        }
    }
}

/// A refused handshake: why, and for which site if SNI named one.
#[derive(Debug)]
pub struct HandshakeFailure {
    /// Why.
    pub denial: HandshakeDenial,
    /// The SNI's site, if any.
    pub site: Option<String>,
}

/// The client of one TLS connection.
#[derive(Debug)]
pub struct Peer {
    /// Client address (TCP peer).
    pub addr: SocketAddr,
    /// The site chosen by SNI (and proven by the certificate, if any).
    pub site: Arc<Site>,
    /// The verified device certificate; `None` only where the site's policy lets a
    /// handshake complete without one (session mode, public paths).
    pub certificate: Option<PeerCertificate>,
    /// Cancelled when the certificate is revoked: ends this connection and its WebSockets.
    pub revoked: CancellationToken,
}

/// A verified device certificate.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// Device name from the certificate identity.
    pub device: String,
    /// SHA-256 of the certificate.
    pub fingerprint: [u8; 32],
    /// Its expiry, Unix seconds (session cookies never outlive it).
    pub not_after: u64,
}

impl Sites {
    /// Loads every site of the state dir and builds its TLS configuration.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let state = pki::StateDir::open(&config.state)
            .with_context(|| format!("opening state dir {}", config.state.display()))?;
        let mut sites = Self::default();
        for (kind, path) in [
            ("tunnel", state.tunnel_cert_path()),
            ("tunnel_ca", state.tunnel_ca_path()),
            ("connector_ca", state.connector_ca_path()),
        ] {
            let certs = pki::load_certs(&path)?;
            sites.note_expiry("", kind, certs.first())?;
        }
        // Revoked device certificates, per site, from the state dir's index.
        let mut revoked_by_site: HashMap<String, HashSet<[u8; 32]>> = HashMap::new();
        for entry in state.clients()? {
            if entry.revoked_at.is_none() {
                continue;
            }
            let Some(fp) = parse_fingerprint(&entry.fingerprint) else {
                anyhow::bail!(
                    "{}: index entry {}/{} has a malformed fingerprint",
                    state.root().display(),
                    entry.site,
                    entry.name
                );
            };
            if entry.kind == pki::Kind::Connector {
                sites.revoked_connectors.insert(fp);
                continue;
            }
            sites.revoked.insert(fp);
            revoked_by_site.entry(entry.site).or_default().insert(fp);
        }
        for name in config.sites.keys() {
            state.site(name).with_context(|| {
                format!(
                    "{}: key `sites.{name}`: no such site in the state dir",
                    config.source
                )
            })?;
        }
        for site in state.sites()? {
            let overrides = config.sites.get(&site.name).cloned().unwrap_or_default();
            let (cert, key) = match (overrides.tls_cert.clone(), overrides.tls_key.clone()) {
                (Some(c), Some(k)) => (c, k),
                _ => (site.server_cert_path.clone(), site.server_key_path.clone()),
            };
            let chain = pki::load_certs(&cert)?;
            let key = pki::load_key(&key)?;
            let client_ca = pki::load_certs(&site.client_ca_path)?;
            sites.note_expiry(&site.name, "server", chain.first())?;
            sites.note_expiry(&site.name, "client_ca", client_ca.first())?;
            let revoked = Arc::new(revoked_by_site.remove(&site.name).unwrap_or_default());
            let policy = SitePolicy {
                client_auth: overrides.client_auth,
                public_paths: overrides.public_paths.clone(),
                allow_cidrs: overrides.allow_cidrs.clone(),
                deny_cidrs: overrides.deny_cidrs.clone(),
            };
            let identity_header = overrides
                .identity_header
                .as_deref()
                .map(|h| http::HeaderName::from_bytes(h.as_bytes()))
                .transpose()
                .with_context(|| format!("sites.{}.identity_header", site.name))?;
            let tls = server_config(
                chain,
                key,
                client_ca,
                revoked,
                policy.certificate_optional(),
            )
            .with_context(|| format!("TLS setup of site {}", site.name))?;
            let entry = Arc::new(Site {
                name: site.name.clone(),
                hostnames: site.hostnames.clone(),
                session_lifetime: overrides
                    .session_lifetime
                    .unwrap_or(Duration::from_secs(3600)),
                policy,
                identity_header,
                tls,
            });
            for host in &site.hostnames {
                sites
                    .by_host
                    .insert(host.to_ascii_lowercase(), entry.clone());
            }
            sites.by_name.insert(site.name, entry);
        }
        Ok(sites)
    }

    /// The site serving `host` (no port, any case).
    pub fn by_host(&self, host: &str) -> Option<&Arc<Site>> {
        self.by_host.get(&host.to_ascii_lowercase())
    }

    /// The site called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Arc<Site>> {
        self.by_name.get(name)
    }

    /// Fingerprints of every revoked connector certificate.
    pub fn revoked_connectors(&self) -> &HashSet<[u8; 32]> {
        &self.revoked_connectors
    }

    /// Every certificate's expiry.
    pub fn expiries(&self) -> &[CertExpiry] {
        &self.expiries
    }

    fn note_expiry(
        &mut self,
        site: &str,
        kind: &'static str,
        cert: Option<&CertificateDer<'_>>,
    ) -> anyhow::Result<()> {
        let Some(cert) = cert else {
            anyhow::bail!("{kind} certificate of `{site}` is missing");
        };
        self.expiries.push(CertExpiry {
            site: site.to_owned(),
            kind,
            not_after: pki::cert_not_after(cert)?.unix_timestamp(),
        });
        Ok(())
    }

    /// Fingerprints of every revoked device certificate.
    pub fn revoked(&self) -> &HashSet<[u8; 32]> {
        &self.revoked
    }

    /// All sites, sorted by name.
    pub fn all(&self) -> Vec<Arc<Site>> {
        let mut all: Vec<_> = self.by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }
}

fn server_config(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    client_ca: Vec<rustls_pki_types::CertificateDer<'static>>,
    revoked: Arc<HashSet<[u8; 32]>>,
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
    let verifier = Arc::new(RevocationCheck {
        inner: webpki,
        revoked,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No resumption at all (no TLS 1.3 tickets, no TLS 1.2 session IDs; the default ticketer
    // makes no TLS 1.2 tickets): a resumed session skips the certificate check, so a revoked
    // or expired certificate would keep working. Every handshake is a full one.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// The site CA's verifier plus the state dir's revocation list, checked on every handshake.
///
/// The list is the index of issued certificates (what `client revoke` writes), keyed by
/// certificate fingerprint; a reload builds a new verifier, so a revocation applies to the
/// next handshake. (The standard `crl.pem` is kept for other tools; the index is the source.)
#[derive(Debug)]
struct RevocationCheck {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<HashSet<[u8; 32]>>,
}

impl ClientCertVerifier for RevocationCheck {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.revoked.contains(&pki::fingerprint(end_entity)) {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Revoked,
            ));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn parse_fingerprint(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(out)
}

/// Runs the handshake for one TCP connection.
pub async fn handshake(
    tcp: TcpStream,
    addr: SocketAddr,
    sites: &Sites,
    limit: Duration,
) -> Result<(TlsStream<TcpStream>, Peer), HandshakeFailure> {
    let mut site_name = None;
    let run = async {
        let start = LazyConfigAcceptor::new(Acceptor::default(), tcp)
            .await
            .map_err(|e| classify(&e))?;
        let site = start
            .client_hello()
            .server_name()
            .and_then(|name| sites.by_host(name))
            .ok_or(HandshakeDenial::UnknownSite)?
            .clone();
        site_name = Some(site.name.clone());
        let stream = start
            .into_stream(site.tls.clone())
            .await
            .map_err(|e| classify(&e))?;
        let (_, conn) = stream.get_ref();
        let certificate = match conn.peer_certificates().and_then(|c| c.first()) {
            Some(leaf) => Some(peer_certificate(leaf, &site.name)?),
            // rustls only lets this through when the site's policy allows it; check anyway.
            None if site.policy.certificate_optional() => None,
            None => return Err(HandshakeDenial::NoCertificate),
        };
        let peer = Peer {
            addr,
            site,
            certificate,
            revoked: CancellationToken::new(),
        };
        Ok((stream, peer))
    };
    let result = match tokio::time::timeout(limit, run).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeDenial::Timeout),
    };
    result.map_err(|denial| HandshakeFailure {
        denial,
        site: site_name,
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
        fingerprint: pki::fingerprint(leaf),
        not_after: u64::try_from(not_after).unwrap_or(0),
    })
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
