//! Everything revoked, and what a revocation ends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// The site CA's verifier plus the state dir's revocation list, checked on every handshake.
///
/// The list is the index of issued certificates (what `client revoke` writes), keyed by
/// certificate fingerprint; a reload builds a new verifier, so a revocation applies to the
/// next handshake. (The standard `crl.pem` is kept for other tools; the index is the source.)
#[derive(Debug)]
pub struct RevocationCheck {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub revoked: Arc<HashSet<[u8; 32]>>,
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

pub fn parse_fingerprint(hex: &str) -> Option<[u8; 32]> {
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

/// Live connections of one certificate: (registration id, kill switch).
type ByFingerprint = HashMap<[u8; 32], Vec<(u64, CancellationToken)>>;

/// Live client connections by certificate fingerprint, so a revocation can end them.
#[derive(Debug, Default)]
pub struct LiveClients {
    map: Mutex<ByFingerprint>,
    next_id: AtomicU64,
}

/// Removes a connection from [`LiveClients`] when dropped.
#[derive(Debug)]
pub struct Registration {
    shared: Arc<Shared>,
    fingerprint: [u8; 32],
    id: u64,
}

impl LiveClients {
    /// Records a connection; it stays recorded while the returned guard lives.
    pub fn register(
        shared: &Arc<Shared>,
        fingerprint: [u8; 32],
        token: CancellationToken,
    ) -> Registration {
        let live = &shared.live;
        let id = live.next_id.fetch_add(1, Ordering::Relaxed);
        live.lock()
            .entry(fingerprint)
            .or_default()
            .push((id, token));
        Registration {
            shared: shared.clone(),
            fingerprint,
            id,
        }
    }

    /// Ends every connection of `fingerprint`; returns how many.
    pub fn revoke(&self, fingerprint: &[u8; 32]) -> usize {
        let tokens = self.lock().remove(fingerprint).unwrap_or_default();
        for (_, token) in &tokens {
            token.cancel();
        }
        tokens.len()
    }

    /// Number of live authenticated connections.
    pub fn count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ByFingerprint> {
        // Every update is a single insert/remove, so a poisoned map is still consistent.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = self.shared.live.lock();
        if let Some(list) = map.get_mut(&self.fingerprint) {
            list.retain(|(id, _)| *id != self.id);
            if list.is_empty() {
                map.remove(&self.fingerprint);
            }
        }
    }
}
