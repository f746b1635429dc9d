//! Each site's HTTPS (server) certificate: where it comes from, the resolver every handshake of
//! the site reads it from, and the ACME tasks that replace it.
//!
//! Sources, in order: the site's own `tls_cert`/`tls_key` files; else, with `[acme]` on, a
//! certificate from the ACME CA (until the first one arrives, the local one below); else the
//! certificate `site add` made, signed by the state dir's local server CA.
//!
//! Hot swap: a site's rustls `ServerConfig` resolves its certificate through a [`ServerCert`]
//! on every handshake, so a new certificate reaches the next handshake and an open connection
//! keeps the one it negotiated. [`Acme`] keeps one `acme` site task per ACME site across
//! reloads (restarted only when the site's hostnames change) and a forwarding task that moves
//! each certificate from the task's watch into the site's `ServerCert`.
//!
//! What this module is not: the ACME engine (crate `acme`: ordering, storage, renewal timing)
//! or the site registry (`site`, which asks here for each site's certificate when it builds).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// Where a served certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The site's `tls_cert` / `tls_key` files.
    Files,
    /// The ACME CA.
    Acme,
    /// The state dir's local server CA (`site add`, `site renew-cert`).
    Local,
}

impl Source {
    /// Every source, for metric series.
    pub(crate) const ALL: [Self; 3] = [Self::Files, Self::Acme, Self::Local];

    /// `/status` value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Files => "files",
            Self::Acme => "acme",
            Self::Local => "local",
        }
    }

    /// The `kind` label of the expiry metric.
    pub(crate) fn metric_kind(self) -> &'static str {
        match self {
            Self::Files => "server_files",
            Self::Acme => "server_acme",
            Self::Local => "server_local",
        }
    }
}

/// One certificate as served, with the facts `/status` and the metrics show.
#[derive(Debug)]
pub(crate) struct Served {
    /// Chain and key, for rustls.
    pub(crate) key: Arc<CertifiedKey>,
    /// Where it came from.
    pub(crate) source: Source,
    /// The leaf's serial, lowercase hex.
    pub(crate) serial: String,
    /// The leaf's `notAfter`, Unix seconds.
    pub(crate) not_after: i64,
}

impl Served {
    /// Checks the leaf (parses; the key fits it, as `with_single_cert` used to check).
    pub(crate) fn new(key: Arc<CertifiedKey>, source: Source) -> anyhow::Result<Self> {
        match key.keys_match() {
            // As rustls's own `CertifiedKey::from_der`: a key that cannot tell is not refused.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => anyhow::bail!("the private key does not fit the certificate: {e}"),
        }
        let leaf = key
            .end_entity_cert()
            .map_err(|_| anyhow::anyhow!("no certificate in the chain"))?;
        Ok(Self {
            serial: pki::cert_serial(leaf)?,
            not_after: pki::cert_not_after(leaf)?.unix_timestamp(),
            key,
            source,
        })
    }

    /// Loads a PEM chain and key from files.
    pub(crate) fn load(cert: &Path, key: &Path, source: Source) -> anyhow::Result<Self> {
        let chain = pki::load_certs(cert)?;
        let key = pki::load_key(key)?;
        Self::new(Arc::new(certified_key(chain, key)?), source)
    }
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<CertifiedKey> {
    let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| anyhow::anyhow!("unusable private key: {e}"))?;
    Ok(CertifiedKey::new(chain, signing))
}

/// The certificate a site's handshakes present, swappable.
#[derive(Debug)]
pub(crate) struct ServerCert(ArcSwap<Served>);

impl ServerCert {
    pub(crate) fn new(served: Served) -> Arc<Self> {
        Arc::new(Self(ArcSwap::from_pointee(served)))
    }

    /// What new handshakes get now.
    pub(crate) fn current(&self) -> Arc<Served> {
        self.0.load_full()
    }

    fn replace(&self, served: Served) {
        self.0.store(Arc::new(served));
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load().key.clone())
    }
}

/// The ACME side of the edge: the manager and one running site task per ACME site.
pub(crate) struct Acme {
    manager: acme::Manager,
    sites: Mutex<HashMap<String, Arc<AcmeSite>>>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acme").finish_non_exhaustive()
    }
}

/// One ACME site: its task (through the handle), the certificate it feeds, and the orders
/// already exported as metrics.
#[derive(Debug)]
pub(crate) struct AcmeSite {
    hostnames: Vec<String>,
    cert: Arc<ServerCert>,
    handle: acme::SiteHandle,
    forward: JoinHandle<()>,
    /// Orders counted into the metrics so far (the task's counts only grow).
    pub(crate) exported: Mutex<acme::OrderCounts>,
}

impl Drop for AcmeSite {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

impl AcmeSite {
    /// The task's current status.
    pub(crate) fn status(&self) -> acme::SiteStatus {
        self.handle.status().borrow().clone()
    }
}

impl Acme {
    /// The ACME engine with its storage in `<state>/acme`, answering validations through
    /// `challenges` (the registry the TLS acceptor consults).
    pub(crate) fn new(
        config: acme::AcmeConfig,
        state: &Path,
        challenges: acme::Challenges,
    ) -> anyhow::Result<Self> {
        let dir = state.join("acme");
        let store = acme::Store::open(&dir)
            .map_err(|e| anyhow::anyhow!("ACME storage {}: {e}", dir.display()))?;
        info!(
            directory = config.directory_url(),
            contact = config.contact(),
            "ACME on"
        );
        Ok(Self {
            manager: acme::Manager::with_challenges(config, store, challenges),
            sites: Mutex::new(HashMap::new()),
        })
    }

    /// The certificate of ACME site `name`: its running task's if the hostnames are the same,
    /// else a new task's (the stored certificate if it covers the hostnames, else `local`
    /// until the first order succeeds). Must run inside the runtime.
    pub(crate) fn site(&self, name: &str, hostnames: &[String], local: Served) -> Arc<ServerCert> {
        let mut sites = self.lock();
        if let Some(site) = sites.get(name)
            && site.hostnames == hostnames
        {
            return site.cert.clone();
        }
        let handle = match self.manager.start_site(name, hostnames) {
            Ok(handle) => handle,
            Err(e) => {
                warn!(site = name, error = %e, "no ACME for this site; serving the local server CA's certificate");
                sites.remove(name);
                return ServerCert::new(local);
            }
        };
        let stored = self
            .manager
            .store()
            .load_site(name)
            .ok()
            .flatten()
            .filter(|c| c.covers(hostnames))
            .and_then(|c| Served::new(c.certified_key(), Source::Acme).ok());
        let first = match stored {
            Some(stored) => stored,
            None => {
                info!(
                    site = name,
                    "no ACME certificate yet: serving the local server CA's certificate until the first one arrives"
                );
                local
            }
        };
        let cert = ServerCert::new(first);
        let forward = tokio::spawn(forward(name.to_owned(), handle.certificate(), cert.clone()));
        sites.insert(
            name.to_owned(),
            Arc::new(AcmeSite {
                hostnames: hostnames.to_vec(),
                cert: cert.clone(),
                handle,
                forward,
                exported: Mutex::new(acme::OrderCounts::default()),
            }),
        );
        cert
    }

    /// Stops the tasks of sites not in `keep` (removed, or switched to their own files).
    pub(crate) fn retain(&self, keep: &[String]) {
        self.lock().retain(|name, _| keep.contains(name));
    }

    /// The running ACME site `name`, if any.
    pub(crate) fn get(&self, name: &str) -> Option<Arc<AcmeSite>> {
        self.lock().get(name).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AcmeSite>>> {
        // Every update is one map operation: a poisoned map is still consistent.
        self.sites.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Moves each certificate of a site task into the site's `ServerCert` until the task ends.
async fn forward(
    site: String,
    mut certs: tokio::sync::watch::Receiver<Option<Arc<CertifiedKey>>>,
    cert: Arc<ServerCert>,
) {
    loop {
        let next = certs.borrow_and_update().clone();
        if let Some(key) = next {
            match Served::new(key, Source::Acme) {
                // The stored certificate, already served since the site was set up.
                Ok(served)
                    if cert.current().source == Source::Acme
                        && cert.current().serial == served.serial => {}
                Ok(served) => {
                    info!(site, serial = %served.serial, not_after = served.not_after, "serving a new ACME certificate");
                    cert.replace(served);
                }
                // The store checked it already; should it still be unusable, keep the old one.
                Err(e) => {
                    warn!(site, error = %format!("{e:#}"), "ACME certificate unusable; keeping the current one");
                }
            }
        }
        if certs.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(name: &str) -> anyhow::Result<pki::Issued> {
        let ca = pki::Ca::generate("test CA", pki::Validity::days(30))?;
        Ok(ca.issue_server(&[name.to_owned()], pki::Validity::days(10))?)
    }

    fn served(cert: &pki::Issued, key: &pki::Issued) -> anyhow::Result<Served> {
        let chain = pki::parse_certs(&cert.cert_pem)?;
        let key = pki::parse_key(&key.key_pem)?;
        Served::new(Arc::new(certified_key(chain, key)?), Source::Files)
    }

    #[test]
    fn a_key_that_does_not_fit_the_certificate_is_refused() -> anyhow::Result<()> {
        let (a, b) = (issued("a.example")?, issued("b.example")?);
        let Err(e) = served(&a, &b) else {
            anyhow::bail!("a mismatched key must be refused");
        };
        assert!(e.to_string().contains("does not fit"), "{e}");
        let ok = served(&a, &a)?;
        assert_eq!(ok.not_after, a.not_after.unix_timestamp());
        assert_eq!(ok.serial, pki::cert_serial(&a.cert_der)?);
        Ok(())
    }

    #[test]
    fn a_swap_reaches_the_next_resolve_only() -> anyhow::Result<()> {
        let (a, b) = (issued("a.example")?, issued("a.example")?);
        let cert = ServerCert::new(served(&a, &a)?);
        let before = cert.current();
        cert.replace(served(&b, &b)?);
        // What an open connection holds is unchanged; new handshakes get the new one.
        assert_eq!(before.serial, pki::cert_serial(&a.cert_der)?);
        assert_eq!(cert.current().serial, pki::cert_serial(&b.cert_der)?);
        Ok(())
    }
}
