//! The site registry: every site the edge serves, by hostname and by name, with its settings,
//! its TLS configuration and the expiry of its certificates.
//!
//! Built whole from the state dir and the config ([`Sites::load`]), immutable, and swapped whole
//! on reload. It does not run handshakes (that is `tls`) nor decide requests (`policy`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tracing::warn;

use crate::config::Config;
use crate::metrics::{CertLabels, Metrics};
use crate::policy::SitePolicy;
use crate::revocation::Revoked;
use crate::tls::{enroll_config, server_config};

/// One site as the edge serves it.
#[derive(Debug)]
pub(crate) struct Site {
    /// Site name (from the state dir).
    pub(crate) name: String,
    /// Hostnames that select it, lowercase.
    pub(crate) hostnames: Vec<String>,
    /// Access policy.
    pub(crate) policy: SitePolicy,
    /// Session cookie lifetime (`required_or_session`).
    pub(crate) session_lifetime: Duration,
    /// Header carrying the device name upstream, if configured.
    pub(crate) identity_header: Option<http::HeaderName>,
    /// The site's TLS configuration, used by the handshake once SNI chose the site.
    pub(crate) tls: Arc<rustls::ServerConfig>,
    /// The enrollment ALPN's configuration for this SNI: the site's certificate, no client
    /// authentication.
    pub(crate) enroll_tls: Arc<rustls::ServerConfig>,
    /// Pending device links, by id (SHA-256 of the path secret) → device name. While any is
    /// pending, a handshake without a certificate completes (so the phone can fetch its
    /// link); see `link` for what such a connection can reach.
    pub(crate) links: HashMap<String, String>,
}

impl Site {
    /// Whether a handshake may complete without a client certificate: the policy allows it
    /// (session mode, public paths), or a device link of this site is pending.
    pub(crate) fn certificate_optional(&self) -> bool {
        self.policy.certificate_optional() || !self.links.is_empty()
    }
}

/// All sites, by hostname and by name. Immutable; a reload builds a new one.
#[derive(Debug)]
pub(crate) struct Sites {
    by_host: HashMap<String, Arc<Site>>,
    by_name: HashMap<String, Arc<Site>>,
    revoked: Revoked,
    expiries: Vec<CertExpiry>,
    /// The enrollment ALPN's configuration without a site's SNI: the tunnel certificate.
    enroll_tls: Arc<rustls::ServerConfig>,
    /// When the first pending device link expires: the watcher reloads then, so the site's
    /// handshake becomes mandatory again without waiting for a file change.
    next_link_expiry: Option<std::time::SystemTime>,
}

/// When one of the edge's certificates expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertExpiry {
    /// Site, or empty for edge-wide certificates.
    pub(crate) site: String,
    /// `client_ca`, `server`, `tunnel`, `tunnel_ca` or `connector_ca`.
    pub(crate) kind: &'static str,
    /// `notAfter`, Unix seconds.
    pub(crate) not_after: i64,
}

impl Sites {
    /// Loads every site of the state dir and builds its TLS configuration.
    pub(crate) fn load(config: &Config) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let state = pki::StateDir::open(&config.state)
            .with_context(|| format!("opening state dir {}", config.state.display()))?;
        let mut sites = Self {
            by_host: HashMap::new(),
            by_name: HashMap::new(),
            revoked: Revoked::load(&state)?,
            expiries: Vec::new(),
            enroll_tls: enroll_config(
                pki::load_certs(&state.tunnel_cert_path())?,
                pki::load_key(&state.tunnel_key_path())?,
            )?,
            next_link_expiry: None,
        };
        // Unreadable links fail closed: no link pending, certificates mandatory.
        let links = state.links().unwrap_or_else(|e| {
            warn!(error = %e, "device links unreadable; serving none");
            Vec::new()
        });
        sites.next_link_expiry = links
            .iter()
            .filter_map(|l| l.record.expires_at())
            .map(std::time::SystemTime::from)
            .min();
        for (kind, path) in [
            ("tunnel", state.tunnel_cert_path()),
            ("tunnel_ca", state.tunnel_ca_path()),
            ("connector_ca", state.connector_ca_path()),
        ] {
            let certs = pki::load_certs(&path)?;
            sites.note_expiry("", kind, certs.first())?;
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
            let settings = config.sites.get(&site.name).cloned().unwrap_or_default();
            let (cert, key) = match &settings.certificate {
                Some(files) => (files.cert.clone(), files.key.clone()),
                None => (site.server_cert_path.clone(), site.server_key_path.clone()),
            };
            let chain = pki::load_certs(&cert)?;
            let key = pki::load_key(&key)?;
            let client_ca = pki::load_certs(&site.client_ca_path)?;
            sites.note_expiry(&site.name, "server", chain.first())?;
            sites.note_expiry(&site.name, "client_ca", client_ca.first())?;
            let revoked = sites.revoked.devices_of(&site.name);
            let enroll_tls = enroll_config(chain.clone(), key.clone_key())
                .with_context(|| format!("enrollment TLS setup of site {}", site.name))?;
            let site_links: HashMap<String, String> = links
                .iter()
                .filter(|l| l.record.site == site.name)
                .map(|l| (l.id.clone(), l.record.name.clone()))
                .collect();
            let tls = server_config(
                chain,
                key,
                client_ca,
                revoked,
                settings.policy.certificate_optional() || !site_links.is_empty(),
            )
            .with_context(|| format!("TLS setup of site {}", site.name))?;
            let entry = Arc::new(Site {
                name: site.name.clone(),
                hostnames: site.hostnames.clone(),
                policy: settings.policy,
                session_lifetime: settings.session_lifetime,
                identity_header: settings.identity_header,
                tls,
                enroll_tls,
                links: site_links,
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
    pub(crate) fn by_host(&self, host: &str) -> Option<&Arc<Site>> {
        self.by_host.get(&host.to_ascii_lowercase())
    }

    /// The enrollment ALPN's configuration for a ClientHello whose SNI names no site.
    pub(crate) fn enroll_tls(&self) -> Arc<rustls::ServerConfig> {
        self.enroll_tls.clone()
    }

    /// Whether a pending device link has expired since the load (time to reload).
    pub(crate) fn link_expired(&self, now: std::time::SystemTime) -> bool {
        self.next_link_expiry.is_some_and(|t| t <= now)
    }

    /// The site called `name`.
    pub(crate) fn by_name(&self, name: &str) -> Option<&Arc<Site>> {
        self.by_name.get(name)
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

    /// Every revoked certificate.
    pub(crate) fn revoked(&self) -> &Revoked {
        &self.revoked
    }

    /// All sites, sorted by name.
    pub(crate) fn all(&self) -> Vec<Arc<Site>> {
        let mut all: Vec<_> = self.by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Logs a warning for every certificate that expires within 30 days (or has expired).
    pub(crate) fn warn_expiring(&self) {
        let now = unix_now();
        for e in &self.expiries {
            let days = (e.not_after - now) as f64 / 86_400.0;
            if days < 30.0 {
                warn!(site = %e.site, kind = e.kind, days_left = format!("{days:.1}"), "certificate expires soon: renew it");
            }
        }
    }

    /// Copies days-until-expiry into the metrics (called on every scrape).
    pub(crate) fn export_expiry(&self, metrics: &Metrics) {
        let now = unix_now();
        for e in &self.expiries {
            metrics
                .certificate_days_left
                .get_or_create(&CertLabels {
                    site: e.site.clone(),
                    kind: e.kind,
                })
                .set((e.not_after - now) as f64 / 86_400.0);
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
