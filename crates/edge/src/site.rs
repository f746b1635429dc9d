//! The site registry: every site the edge serves, by hostname and by name, with its settings,
//! its TLS configuration and the expiry of its certificates.
//!
//! Built whole from the state dir and the config ([`Sites::load`]), immutable, and swapped whole
//! on reload. It does not run handshakes (that is `tls`), decide requests (`policy`), nor keep
//! server certificates current (`server_cert`: each site holds its swappable [`ServerCert`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tracing::warn;

use crate::config::Config;
use crate::metrics::{CertLabels, Metrics, SiteResult};
use crate::policy::SitePolicy;
use crate::revocation::Revoked;
use crate::server_cert::{Acme, Served, ServerCert, Source};
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
    /// The server certificate `tls` presents (swapped in place by ACME renewals).
    pub(crate) certificate: Arc<ServerCert>,
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
    /// The sites whose certificate comes from ACME.
    acme_sites: Vec<String>,
    /// Issued device and connector certificates, per site and kind.
    issued: Vec<IssuedExpiry>,
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
    /// Loads every site of the state dir and builds its TLS configuration; with `acme`, sites
    /// without their own files get (or keep) an ACME site task.
    pub(crate) fn load(config: &Config, acme: Option<&Acme>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let state = pki::StateDir::open(&config.state)
            .with_context(|| format!("opening state dir {}", config.state.display()))?;
        let mut sites = Self {
            by_host: HashMap::new(),
            by_name: HashMap::new(),
            revoked: Revoked::load(&state)?,
            expiries: Vec::new(),
            enroll_tls: enroll_config(ServerCert::new(
                Served::load(
                    &state.tunnel_cert_path(),
                    &state.tunnel_key_path(),
                    Source::Local,
                )
                .context("the tunnel certificate, for enrollment without SNI")?,
            ))?,
            acme_sites: Vec::new(),
            issued: Vec::new(),
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
        sites.issued = issued_expiries(&state)?;
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
            let local = || {
                Served::load(&site.server_cert_path, &site.server_key_path, Source::Local)
                    .with_context(|| format!("local server certificate of site {}", site.name))
            };
            let certificate = match (&settings.certificate, acme) {
                (Some(files), _) => ServerCert::new(
                    Served::load(&files.cert, &files.key, Source::Files)
                        .with_context(|| format!("sites.{}.tls_cert / tls_key", site.name))?,
                ),
                (None, Some(acme)) => {
                    sites.acme_sites.push(site.name.clone());
                    acme.site(&site.name, &site.hostnames, local()?)
                }
                (None, None) => ServerCert::new(local()?),
            };
            let client_ca = pki::load_certs(&site.client_ca_path)?;
            sites.note_expiry(&site.name, "client_ca", client_ca.first())?;
            let revoked = sites.revoked.devices_of(&site.name);
            // Enrollment presents the site's certificate too, renewals included.
            let enroll_tls = enroll_config(certificate.clone())
                .with_context(|| format!("enrollment TLS setup of site {}", site.name))?;
            let site_links: HashMap<String, String> = links
                .iter()
                .filter(|l| l.record.site == site.name)
                .map(|l| (l.id.clone(), l.record.name.clone()))
                .collect();
            let tls = server_config(
                certificate.clone(),
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
                certificate,
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

    /// The sites whose certificate comes from ACME (the others' tasks can stop).
    pub(crate) fn acme_sites(&self) -> &[String] {
        &self.acme_sites
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

    /// Logs a warning for every certificate that expires within 30 days (or has expired),
    /// except ACME's (renewed by themselves; a failing renewal logs its own warnings).
    pub(crate) fn warn_expiring(&self) {
        let now = unix_now();
        let served = self.all().into_iter().map(|site| {
            let cert = site.certificate.current();
            (site.name.clone(), cert.source, cert.not_after)
        });
        let served: Vec<_> = served
            .filter(|(_, source, _)| *source != Source::Acme)
            .map(|(site, source, not_after)| (site, source.metric_kind(), not_after))
            .collect();
        let others = self
            .expiries
            .iter()
            .map(|e| (e.site.clone(), e.kind, e.not_after));
        for (site, kind, not_after) in served.into_iter().chain(others) {
            let days = (not_after - now) as f64 / 86_400.0;
            if days < 30.0 {
                warn!(site = %site, kind, days_left = format!("{days:.1}"), "certificate expires soon: renew it");
            }
        }
    }

    /// Copies certificate expiry and ACME progress into the metrics (on every scrape).
    pub(crate) fn export_certificates(&self, metrics: &Metrics, acme: Option<&Acme>) {
        let now = unix_now();
        let expiry = |site: &str, kind: &'static str| CertLabels {
            site: site.to_owned(),
            kind,
        };
        for e in &self.expiries {
            metrics
                .certificate_expiry
                .get_or_create(&expiry(&e.site, e.kind))
                .set(e.not_after);
        }
        for site in self.all() {
            let served = site.certificate.current();
            metrics
                .certificate_expiry
                .get_or_create(&expiry(&site.name, served.source.metric_kind()))
                .set(served.not_after);
            // One server series per site: the source it serves from now.
            for other in Source::ALL.into_iter().filter(|s| *s != served.source) {
                metrics
                    .certificate_expiry
                    .remove(&expiry(&site.name, other.metric_kind()));
            }
        }
        let issued = self
            .all()
            .into_iter()
            .flat_map(|site| ISSUED_KINDS.map(|kind| (site.name.clone(), kind)));
        for (site, kind) in issued {
            let labels = expiry(&site, kind);
            let not_after = self
                .issued
                .iter()
                .find(|i| i.site == site && i.kind == kind)
                .map_or(&[][..], |i| &i.not_after[..]);
            let valid = not_after.iter().filter(|t| **t > now);
            match valid.clone().min() {
                Some(soonest) => {
                    metrics
                        .certificate_expiry
                        .get_or_create(&labels)
                        .set(*soonest);
                }
                None => {
                    metrics.certificate_expiry.remove(&labels);
                }
            }
            let expiring = valid.filter(|t| **t <= now + EXPIRING_WITHIN).count();
            metrics
                .certificates_expiring
                .get_or_create(&labels)
                .set(i64::try_from(expiring).unwrap_or(i64::MAX));
        }
        let Some(acme) = acme else { return };
        for name in &self.acme_sites {
            let Some(site) = acme.get(name) else { continue };
            let status = site.status();
            let mut exported = site
                .exported
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (result, count) in status.orders.iter() {
                let before = exported.get(result);
                if count > before {
                    metrics
                        .acme_orders
                        .get_or_create(&SiteResult {
                            site: name.clone(),
                            result: result.as_str(),
                        })
                        .inc_by(count - before);
                }
            }
            *exported = status.orders.clone();
            metrics
                .acme_renewal_failing
                .get_or_create(&Metrics::site(name))
                .set(i64::from(status.consecutive_failures > 0));
        }
    }
}

/// The `kind`s of issued certificates in the expiry metrics.
pub(crate) const ISSUED_KINDS: [&str; 2] = ["device", "connector"];

/// "Expiring" for `doorless_edge_certificates_expiring`: within 30 days.
const EXPIRING_WITHIN: i64 = 30 * 86_400;

/// The issued (device or connector) certificates of one site that are not revoked.
#[derive(Debug)]
struct IssuedExpiry {
    site: String,
    /// `device` or `connector`.
    kind: &'static str,
    /// Their `notAfter`s, Unix seconds.
    not_after: Vec<i64>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The live (not revoked) device and connector certificates of the index, by site and kind.
fn issued_expiries(state: &pki::StateDir) -> anyhow::Result<Vec<IssuedExpiry>> {
    use time::format_description::well_known::Rfc3339;
    let mut out: Vec<IssuedExpiry> = Vec::new();
    for entry in state.clients()? {
        if entry.revoked_at.is_some() {
            continue;
        }
        let kind = match entry.kind {
            pki::Kind::Device => "device",
            pki::Kind::Connector => "connector",
        };
        let not_after = time::OffsetDateTime::parse(&entry.not_after, &Rfc3339)
            .map_err(|e| {
                anyhow::anyhow!(
                    "index: not_after of {kind} {}/{}: {e}",
                    entry.site,
                    entry.name
                )
            })?
            .unix_timestamp();
        match out
            .iter_mut()
            .find(|i| i.site == entry.site && i.kind == kind)
        {
            Some(issued) => issued.not_after.push(not_after),
            None => out.push(IssuedExpiry {
                site: entry.site,
                kind,
                not_after: vec![not_after],
            }),
        }
    }
    Ok(out)
}
