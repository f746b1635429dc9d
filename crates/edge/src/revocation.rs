//! Everything revoked, and what a revocation ends.
//!
//! The source of truth is the state dir's index (what `client revoke` writes), read into
//! [`Revoked`] on every (re)load. It is enforced in four places, all here or calling here:
//! - the TLS handshake refuses a revoked device certificate ([`RevocationCheck`]);
//! - a session cookie of a revoked certificate is dead (`cookie` checks [`Revoked::devices`]);
//! - a revoked connector cannot register (`connectors` checks [`Revoked::connector`]);
//! - a reload that revokes something ends what is already open ([`enforce`]): client
//!   connections and WebSockets found through [`LiveClients`], connector tunnels.
//!
//! (The standard `crl.pem` is kept for other tools; the index is the source.) What this module
//! is not: the watcher that notices a change (that is `reload`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pki::Fingerprint;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Every revoked certificate, from the state dir's index. Immutable; a reload reads a new one.
#[derive(Debug, Default)]
pub(crate) struct Revoked {
    devices: HashSet<Fingerprint>,
    devices_by_site: HashMap<String, Arc<HashSet<Fingerprint>>>,
    connectors: HashSet<Fingerprint>,
}

/// What a reload revoked that the previous state did not.
#[derive(Debug, Default)]
pub(crate) struct NewlyRevoked {
    devices: Vec<Fingerprint>,
    connectors: HashSet<Fingerprint>,
}

impl Revoked {
    /// Reads the index of `state`.
    pub(crate) fn load(state: &pki::StateDir) -> pki::Result<Self> {
        let mut revoked = Self::default();
        let mut by_site: HashMap<String, HashSet<Fingerprint>> = HashMap::new();
        for entry in state.revoked()? {
            match entry.kind {
                pki::Kind::Connector => {
                    revoked.connectors.insert(entry.fingerprint);
                }
                pki::Kind::Device => {
                    revoked.devices.insert(entry.fingerprint);
                    by_site
                        .entry(entry.site)
                        .or_default()
                        .insert(entry.fingerprint);
                }
            }
        }
        revoked.devices_by_site = by_site
            .into_iter()
            .map(|(site, set)| (site, Arc::new(set)))
            .collect();
        Ok(revoked)
    }

    /// Revoked device certificates of every site.
    pub(crate) fn devices(&self) -> &HashSet<Fingerprint> {
        &self.devices
    }

    /// Revoked device certificates of `site`, for its handshake's [`RevocationCheck`].
    pub(crate) fn devices_of(&self, site: &str) -> Arc<HashSet<Fingerprint>> {
        self.devices_by_site.get(site).cloned().unwrap_or_default()
    }

    /// Whether a device certificate is revoked.
    pub(crate) fn device(&self, fingerprint: &Fingerprint) -> bool {
        self.devices.contains(fingerprint)
    }

    /// Whether a connector certificate is revoked.
    pub(crate) fn connector(&self, fingerprint: &Fingerprint) -> bool {
        self.connectors.contains(fingerprint)
    }

    /// What `self` revokes that `old` did not.
    pub(crate) fn since(&self, old: &Self) -> NewlyRevoked {
        NewlyRevoked {
            devices: self.devices.difference(&old.devices).copied().collect(),
            connectors: self
                .connectors
                .difference(&old.connectors)
                .copied()
                .collect(),
        }
    }
}

impl NewlyRevoked {
    /// Newly revoked device certificates.
    pub(crate) fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Newly revoked connector certificates.
    pub(crate) fn connectors(&self) -> usize {
        self.connectors.len()
    }
}

/// Ends everything open under a newly revoked certificate: client connections and their
/// WebSockets, and connector tunnels. Returns how many were ended.
pub(crate) fn enforce(shared: &Shared, newly: &NewlyRevoked) -> usize {
    let mut closed = 0;
    for fp in &newly.devices {
        closed += shared.live.revoke(fp);
    }
    for tunnel in shared.tunnels.all() {
        if newly.connectors.contains(&tunnel.fingerprint) {
            tunnel
                .conn
                .close(proto::CloseCode::Revoked, "connector certificate revoked");
            closed += 1;
        }
    }
    closed
}

/// The site CA's verifier plus the state dir's revocation list, checked on every handshake.
///
/// The list is the index of issued certificates (what `client revoke` writes), keyed by
/// certificate fingerprint; a reload builds a new verifier, so a revocation applies to the
/// next handshake. (The standard `crl.pem` is kept for other tools; the index is the source.)
#[derive(Debug)]
pub(crate) struct RevocationCheck {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<HashSet<Fingerprint>>,
}

impl RevocationCheck {
    /// `inner`, refusing also every certificate in `revoked`.
    pub(crate) fn new(
        inner: Arc<dyn ClientCertVerifier>,
        revoked: Arc<HashSet<Fingerprint>>,
    ) -> Self {
        Self { inner, revoked }
    }
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
        if self.revoked.contains(&Fingerprint::of(end_entity)) {
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

/// Live connections of one certificate: (registration id, kill switch).
type ByFingerprint = HashMap<Fingerprint, Vec<(u64, CancellationToken)>>;

/// Live client connections by certificate fingerprint, so a revocation can end them.
#[derive(Debug, Default)]
pub(crate) struct LiveClients {
    map: Mutex<ByFingerprint>,
    next_id: AtomicU64,
}

/// Removes a connection from [`LiveClients`] when dropped.
#[derive(Debug)]
pub(crate) struct Registration {
    shared: Arc<Shared>,
    fingerprint: Fingerprint,
    id: u64,
}

impl LiveClients {
    /// Records a connection; it stays recorded while the returned guard lives.
    pub(crate) fn register(
        shared: &Arc<Shared>,
        fingerprint: Fingerprint,
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
    pub(crate) fn revoke(&self, fingerprint: &Fingerprint) -> usize {
        let tokens = self.lock().remove(fingerprint).unwrap_or_default();
        for (_, token) in &tokens {
            token.cancel();
        }
        tokens.len()
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
