//! TLS-ALPN-01 (RFC 8737): the certificates that answer the CA's validation handshakes.
//!
//! An order puts one self-signed certificate per hostname into [`Challenges`] (with the
//! critical `acmeIdentifier` extension holding SHA-256 of the key authorization) and takes it
//! out again when the order ends. The edge's TLS acceptor asks [`is_tls_alpn_challenge`] about
//! each ClientHello; for a validation handshake it completes the handshake with
//! [`Challenges::server_config`] and then closes the connection: no HTTP, no client
//! certificate (the CA sends none), nothing else is reachable that way.
//!
//! This module does no I/O and knows nothing of orders.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::Error;

/// The ALPN protocol of TLS-ALPN-01 validation handshakes.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// True when a ClientHello is a TLS-ALPN-01 validation: its ALPN list is exactly
/// `acme-tls/1` (RFC 8737 §3: the CA offers that protocol alone).
pub fn is_tls_alpn_challenge(hello: &ClientHello<'_>) -> bool {
    let Some(mut protocols) = hello.alpn() else {
        return false;
    };
    protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
}

/// The challenge certificates of the orders in progress, by hostname. Cheap to clone; all
/// clones share one registry.
#[derive(Clone, Default)]
pub struct Challenges {
    by_host: Arc<RwLock<HashMap<String, Arc<CertifiedKey>>>>,
}

impl Challenges {
    /// The challenge certificate for `server_name` (the ClientHello's SNI), while an order for
    /// that hostname is waiting for validation.
    pub fn challenge_cert(&self, server_name: &str) -> Option<Arc<CertifiedKey>> {
        let map = self.by_host.read().unwrap_or_else(PoisonError::into_inner);
        map.get(&server_name.to_ascii_lowercase()).cloned()
    }

    /// A rustls `ServerConfig` that completes a validation handshake for `server_name`: ALPN
    /// `acme-tls/1`, that certificate only, no client authentication. `None` when no order
    /// waits for that hostname: the caller then refuses the handshake.
    pub fn server_config(&self, server_name: &str) -> Option<Arc<rustls::ServerConfig>> {
        let cert = self.challenge_cert(server_name)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(cert)));
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        // A validation handshake is one-shot: nothing to resume.
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        Some(Arc::new(config))
    }

    /// Answers validations for `hostname` with `digest` (SHA-256 of the key authorization)
    /// until the returned guard is dropped.
    pub(crate) fn insert(&self, hostname: &str, digest: &[u8]) -> Result<ChallengeGuard, Error> {
        let cert = challenge_certificate(hostname, digest)?;
        let key = hostname.to_ascii_lowercase();
        let mut map = self.by_host.write().unwrap_or_else(PoisonError::into_inner);
        map.insert(key.clone(), Arc::new(cert));
        Ok(ChallengeGuard {
            challenges: self.clone(),
            hostname: key,
        })
    }

    /// Number of hostnames currently answered (for tests and status).
    pub fn len(&self) -> usize {
        self.by_host
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no validation is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Challenges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.by_host.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_set().entries(map.keys()).finish()
    }
}

/// Removes a hostname's challenge certificate when the order that put it there ends, however
/// it ends.
#[derive(Debug)]
pub(crate) struct ChallengeGuard {
    challenges: Challenges,
    hostname: String,
}

impl Drop for ChallengeGuard {
    fn drop(&mut self) {
        let mut map = self
            .challenges
            .by_host
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        map.remove(&self.hostname);
    }
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The RFC 8737 §3 certificate: self-signed, one dNSName SAN, critical acmeIdentifier.
fn challenge_certificate(hostname: &str, digest: &[u8]) -> Result<CertifiedKey, Error> {
    // rcgen asserts the length; check here so no input can panic.
    if digest.len() != 32 {
        return Err(Error::Crypto(
            "key authorization digest is not 32 bytes".into(),
        ));
    }
    let crypto = |e: rcgen::Error| Error::Crypto(e.to_string());
    let mut params = CertificateParams::new(vec![hostname.to_owned()]).map_err(crypto)?;
    params.distinguished_name = DistinguishedName::new();
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let key = KeyPair::generate().map_err(crypto)?;
    let cert = params.self_signed(&key).map_err(crypto)?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its key check parses the certificate with webpki, which
    // (rightly, for real certificates) refuses the unknown critical acmeIdentifier extension.
    let signing_key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key_der)
        .map_err(|e| Error::Crypto(e.to_string()))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing_key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    #[test]
    fn registry_answers_only_while_the_guard_lives() -> Result<(), Error> {
        let challenges = Challenges::default();
        assert!(challenges.server_config("a.example").is_none());
        let guard = challenges.insert("A.example", &[7u8; 32])?;
        assert!(challenges.challenge_cert("a.example").is_some());
        assert!(challenges.challenge_cert("b.example").is_none());
        let config = challenges
            .server_config("a.EXAMPLE")
            .ok_or(Error::Crypto("no config".into()))?;
        assert_eq!(config.alpn_protocols, vec![ACME_TLS_ALPN.to_vec()]);
        drop(guard);
        assert!(challenges.is_empty());
        assert!(challenges.server_config("a.example").is_none());
        Ok(())
    }

    #[test]
    fn certificate_carries_the_critical_acme_identifier() -> Result<(), Error> {
        let digest = [0x5au8; 32];
        let cert = challenge_certificate("host.example", &digest)?;
        let der = cert.cert.first().ok_or(Error::Crypto("no cert".into()))?;
        let (_, parsed) =
            X509Certificate::from_der(der).map_err(|e| Error::Crypto(e.to_string()))?;
        let acme_oid = oid_registry::Oid::from(&[1, 3, 6, 1, 5, 5, 7, 1, 31])
            .map_err(|_| Error::Crypto("oid".into()))?;
        let ext = parsed
            .extensions()
            .iter()
            .find(|e| e.oid == acme_oid)
            .ok_or(Error::Crypto("no acmeIdentifier".into()))?;
        assert!(ext.critical);
        // OCTET STRING (0x04), length 32, then the digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
        let names: Vec<String> = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|n| n.to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(names, vec!["DNSName(host.example)".to_owned()]);
        assert!(challenge_certificate("host.example", &[1; 31]).is_err());
        Ok(())
    }
}
