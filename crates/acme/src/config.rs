//! The ACME settings, checked once: an [`AcmeConfig`] that exists is one that can be used.
//!
//! This is not the edge's TOML: the edge owns its `[acme]` block (serde, key names, figment) and
//! builds an [`AcmeConfig`] from it; a [`ConfigError`] names the field so the edge can name the key.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// Let's Encrypt production: the default directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt staging: untrusted certificates, generous rate limits, for trying things out.
pub const LETS_ENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// Everything the ACME engine needs to know, validated.
#[derive(Clone)]
pub struct AcmeConfig {
    contact: String,
    directory: String,
    eab: Option<Eab>,
    extra_roots: Vec<CertificateDer<'static>>,
    renewal: RenewalPolicy,
}

impl AcmeConfig {
    /// A configuration for Let's Encrypt production with the given contact address
    /// (`you@example.com`; a `mailto:` prefix is accepted and removed).
    pub fn new(contact_email: &str) -> Result<Self, ConfigError> {
        Ok(Self {
            contact: parse_email(contact_email)?,
            directory: LETS_ENCRYPT.to_owned(),
            eab: None,
            extra_roots: Vec::new(),
            renewal: RenewalPolicy::default(),
        })
    }

    /// Uses Let's Encrypt staging instead of production (overrides [`Self::directory`]).
    pub fn staging(mut self) -> Self {
        self.directory = LETS_ENCRYPT_STAGING.to_owned();
        self
    }

    /// Uses another CA's directory URL (must be `https://`).
    pub fn directory(mut self, url: &str) -> Result<Self, ConfigError> {
        self.directory = parse_directory(url)?;
        Ok(self)
    }

    /// External account binding (RFC 8555 §7.3.4), as CAs other than Let's Encrypt hand it out:
    /// a key id and a base64url HMAC key.
    pub fn eab(mut self, key_id: &str, hmac_key_base64: &str) -> Result<Self, ConfigError> {
        self.eab = Some(Eab::parse(key_id, hmac_key_base64)?);
        Ok(self)
    }

    /// Also trusts these PEM root certificates for the ACME server's own HTTPS (a private CA,
    /// or a test server), on top of the operating system's roots.
    pub fn extra_roots_pem(mut self, pem: &[u8]) -> Result<Self, ConfigError> {
        let mut roots = Vec::new();
        for cert in CertificateDer::pem_slice_iter(pem) {
            roots.push(cert.map_err(|_| ConfigError::ExtraRoots)?);
        }
        if roots.is_empty() {
            return Err(ConfigError::ExtraRoots);
        }
        self.extra_roots.extend(roots);
        Ok(self)
    }

    /// Replaces the renewal policy.
    pub fn renewal(mut self, policy: RenewalPolicy) -> Result<Self, ConfigError> {
        policy.check()?;
        self.renewal = policy;
        Ok(self)
    }

    /// The contact address, without `mailto:`.
    pub fn contact(&self) -> &str {
        &self.contact
    }

    /// The directory URL.
    pub fn directory_url(&self) -> &str {
        &self.directory
    }

    /// The renewal policy.
    pub fn renewal_policy(&self) -> &RenewalPolicy {
        &self.renewal
    }

    pub(crate) fn eab_key(&self) -> Option<&Eab> {
        self.eab.as_ref()
    }

    pub(crate) fn extra_roots(&self) -> &[CertificateDer<'static>] {
        &self.extra_roots
    }
}

impl fmt::Debug for AcmeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcmeConfig")
            .field("contact", &self.contact)
            .field("directory", &self.directory)
            .field("eab", &self.eab)
            .field("extra_roots", &self.extra_roots.len())
            .field("renewal", &self.renewal)
            .finish()
    }
}

/// An external account binding. The HMAC key never appears in `Debug`.
#[derive(Clone)]
pub(crate) struct Eab {
    pub(crate) key_id: String,
    pub(crate) hmac_key: Vec<u8>,
}

impl Eab {
    fn parse(key_id: &str, hmac_key: &str) -> Result<Self, ConfigError> {
        let key_id = key_id.trim();
        if key_id.is_empty() {
            return Err(ConfigError::EabKeyId);
        }
        let text = hmac_key.trim();
        // RFC 8555 says base64url; some CAs hand out standard base64. Accept all four spellings.
        let key = [URL_SAFE_NO_PAD, URL_SAFE, STANDARD_NO_PAD, STANDARD]
            .iter()
            .find_map(|engine| engine.decode(text).ok())
            .ok_or(ConfigError::EabHmacKey)?;
        if key.is_empty() {
            return Err(ConfigError::EabHmacKey);
        }
        Ok(Self {
            key_id: key_id.to_owned(),
            hmac_key: key,
        })
    }
}

impl fmt::Debug for Eab {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Eab")
            .field("key_id", &self.key_id)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// When to renew and how to retry. Defaults suit Let's Encrypt's 90-day (and shorter)
/// certificates and its rate limits.
#[derive(Debug, Clone, PartialEq)]
pub struct RenewalPolicy {
    /// Renew once this fraction of the lifetime has passed, when the CA offers no renewal
    /// window (ARI). Default 2/3: day 60 of 90, day 4 of a 6-day certificate.
    pub renew_at: f64,
    /// Spread renewals of many sites (and many edges) over this fraction of the lifetime,
    /// always earlier than `renew_at`, never later. Default 1/30 (3 days of 90).
    pub jitter: f64,
    /// Ask the CA for its renewal window (RFC 9773) when it offers one. Default on.
    pub ari: bool,
    /// First retry after a failed order; doubles per consecutive failure. Default 5 min, so
    /// that a broken setup stays well inside Let's Encrypt's "5 failed validations per hour".
    pub retry_initial: Duration,
    /// The longest wait between retries (also used after `rateLimited`). Default 4 h.
    pub retry_max: Duration,
    /// One order from new-order to certificate, validation included. Default 3 min.
    pub order_timeout: Duration,
    /// One HTTP request to the CA, body included. Default 30 s.
    pub request_timeout: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        Self {
            renew_at: 2.0 / 3.0,
            jitter: 1.0 / 30.0,
            ari: true,
            retry_initial: Duration::from_secs(5 * 60),
            retry_max: Duration::from_secs(4 * 3600),
            order_timeout: Duration::from_secs(3 * 60),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl RenewalPolicy {
    fn check(&self) -> Result<(), ConfigError> {
        let fraction = |v: f64| v.is_finite() && v > 0.0 && v < 1.0;
        if !fraction(self.renew_at) {
            return Err(ConfigError::Renewal("renew_at must be between 0 and 1"));
        }
        if !(self.jitter.is_finite() && self.jitter >= 0.0 && self.jitter < self.renew_at) {
            return Err(ConfigError::Renewal(
                "jitter must be at least 0 and below renew_at",
            ));
        }
        if self.retry_initial.is_zero() || self.retry_max < self.retry_initial {
            return Err(ConfigError::Renewal(
                "retry_initial must be positive and at most retry_max",
            ));
        }
        if self.order_timeout.is_zero() || self.request_timeout.is_zero() {
            return Err(ConfigError::Renewal("timeouts must be positive"));
        }
        Ok(())
    }
}

/// A setting that cannot be used; the variant says which one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The contact is not an email address.
    #[error("contact email: not an address like you@example.com")]
    Contact,
    /// The directory URL is not an absolute `https://` URL.
    #[error("directory: not an https:// URL")]
    Directory,
    /// The EAB key id is empty.
    #[error("eab key id: empty")]
    EabKeyId,
    /// The EAB HMAC key is not base64 (or empty).
    #[error("eab hmac key: not base64url")]
    EabHmacKey,
    /// The extra roots are not PEM certificates.
    #[error("extra root certificates: no PEM certificate found")]
    ExtraRoots,
    /// The renewal policy is inconsistent.
    #[error("renewal policy: {0}")]
    Renewal(&'static str),
}

fn parse_email(text: &str) -> Result<String, ConfigError> {
    let text = text.trim();
    let text = text.strip_prefix("mailto:").unwrap_or(text);
    let (local, domain) = text.split_once('@').ok_or(ConfigError::Contact)?;
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_graphic() && !matches!(c, '@' | ',' | '<' | '>' | '"'))
    };
    if !plain(local) || !plain(domain) || !domain.contains('.') || text.len() > 254 {
        return Err(ConfigError::Contact);
    }
    Ok(text.to_owned())
}

fn parse_directory(text: &str) -> Result<String, ConfigError> {
    let uri: http::Uri = text.trim().parse().map_err(|_| ConfigError::Directory)?;
    if uri.scheme_str() != Some("https") || uri.authority().is_none() {
        return Err(ConfigError::Directory);
    }
    Ok(text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_is_a_plain_address() {
        for good in ["you@example.com", "mailto:a.b+c@d.example", " x@y.z "] {
            assert!(AcmeConfig::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "you",
            "@example.com",
            "you@",
            "a b@c.d",
            "you@localhost",
            "a@b@c.d",
        ] {
            assert_eq!(
                AcmeConfig::new(bad).err(),
                Some(ConfigError::Contact),
                "{bad}"
            );
        }
    }

    #[test]
    fn directory_defaults_to_production_and_must_be_https() -> Result<(), ConfigError> {
        let config = AcmeConfig::new("a@b.c")?;
        assert_eq!(config.directory_url(), LETS_ENCRYPT);
        assert_eq!(
            config.clone().staging().directory_url(),
            LETS_ENCRYPT_STAGING
        );
        let custom = config.clone().directory("https://127.0.0.1:14000/dir")?;
        assert_eq!(custom.directory_url(), "https://127.0.0.1:14000/dir");
        for bad in ["http://ca.example/dir", "ca.example/dir", "", "https://"] {
            assert_eq!(
                config.clone().directory(bad).err(),
                Some(ConfigError::Directory),
                "{bad}"
            );
        }
        Ok(())
    }

    #[test]
    fn eab_key_is_base64_and_hidden() -> Result<(), ConfigError> {
        let config = AcmeConfig::new("a@b.c")?.eab("kid-1", "c2VjcmV0LWtleQ")?;
        let eab = config.eab_key().ok_or(ConfigError::EabKeyId)?;
        assert_eq!(eab.hmac_key, b"secret-key");
        assert!(!format!("{config:?}").contains("c2VjcmV0"));
        assert!(!format!("{config:?}").contains("secret"));
        let base = AcmeConfig::new("a@b.c")?;
        assert_eq!(
            base.clone().eab("", "AAAA").err(),
            Some(ConfigError::EabKeyId)
        );
        assert_eq!(
            base.clone().eab("k", "***").err(),
            Some(ConfigError::EabHmacKey)
        );
        assert_eq!(base.eab("k", "").err(), Some(ConfigError::EabHmacKey));
        Ok(())
    }

    #[test]
    fn renewal_policy_is_checked() -> Result<(), ConfigError> {
        let base = AcmeConfig::new("a@b.c")?;
        let bad = [
            RenewalPolicy {
                renew_at: 1.0,
                ..RenewalPolicy::default()
            },
            RenewalPolicy {
                renew_at: f64::NAN,
                ..RenewalPolicy::default()
            },
            RenewalPolicy {
                jitter: 0.9,
                ..RenewalPolicy::default()
            },
            RenewalPolicy {
                retry_initial: Duration::ZERO,
                ..RenewalPolicy::default()
            },
            RenewalPolicy {
                retry_max: Duration::from_secs(1),
                ..RenewalPolicy::default()
            },
            RenewalPolicy {
                order_timeout: Duration::ZERO,
                ..RenewalPolicy::default()
            },
        ];
        for policy in bad {
            assert!(
                matches!(
                    base.clone().renewal(policy.clone()),
                    Err(ConfigError::Renewal(_))
                ),
                "{policy:?}"
            );
        }
        assert!(base.renewal(RenewalPolicy::default()).is_ok());
        Ok(())
    }

    #[test]
    fn extra_roots_must_be_pem_certificates() -> Result<(), ConfigError> {
        let base = AcmeConfig::new("a@b.c")?;
        assert_eq!(
            base.clone().extra_roots_pem(b"not pem").err(),
            Some(ConfigError::ExtraRoots)
        );
        Ok(())
    }
}
