//! Who a certificate belongs to, and the names it may use.
//!
//! The identity lives in exactly one place in a certificate: a URI SAN
//! `urn:doorless:<kind>:<site>:<name>`. The CN repeats the name for humans but is never read.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;

use crate::error::{Error, Result, clip};

/// What a client certificate authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A phone, laptop or browser of a user of the site.
    Device,
    /// A `doorless-connector` tunnelling to the site's Home Assistant.
    Connector,
}

impl Kind {
    /// The word used in identity URIs and in `index.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Connector => "connector",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity a doorless client certificate carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub kind: Kind,
    pub site: String,
    pub name: String,
}

impl Identity {
    /// A device of `site`; both names are validated with [`validate_name`].
    pub fn device(site: &str, name: &str) -> Result<Self> {
        Self::new(Kind::Device, site, name)
    }

    /// A connector of `site`; both names are validated with [`validate_name`].
    pub fn connector(site: &str, name: &str) -> Result<Self> {
        Self::new(Kind::Connector, site, name)
    }

    fn new(kind: Kind, site: &str, name: &str) -> Result<Self> {
        validate_name(site)?;
        validate_name(name)?;
        Ok(Self {
            kind,
            site: site.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `urn:doorless:<kind>:<site>:<name>`.
    pub fn to_uri(&self) -> String {
        format!("{URI_PREFIX}{}:{}:{}", self.kind, self.site, self.name)
    }

    /// Parses what [`Identity::to_uri`] produces, and nothing else.
    pub fn from_uri(uri: &str) -> Result<Self> {
        let invalid = |reason| Error::InvalidIdentityUri {
            uri: clip(uri),
            reason,
        };
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| invalid("does not start with urn:doorless:"))?;
        let mut parts = rest.split(':');
        let (Some(kind), Some(site), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("expected urn:doorless:<kind>:<site>:<name>"));
        };
        let kind = match kind {
            "device" => Kind::Device,
            "connector" => Kind::Connector,
            _ => return Err(invalid("kind is neither device nor connector")),
        };
        Self::new(kind, site, name)
    }

    /// The identity of a DER certificate: it must carry exactly one doorless URI SAN.
    ///
    /// This does not verify the certificate; call it on certificates the TLS stack has already
    /// verified against the right CA.
    pub fn from_cert_der(der: &[u8]) -> Result<Self> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| Error::Certificate {
                path: None,
                reason: e.to_string(),
            })?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| Error::Certificate {
                path: None,
                reason: format!("subject alternative name: {e}"),
            })?;
        let mut uris = san
            .iter()
            .flat_map(|san| san.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some(*uri),
                _ => None,
            });
        match (uris.next(), uris.next()) {
            (Some(uri), None) => Self::from_uri(uri),
            (None, _) => Err(Error::NoIdentity {
                reason: "no urn:doorless: URI SAN",
            }),
            (Some(_), Some(_)) => Err(Error::NoIdentity {
                reason: "more than one urn:doorless: URI SAN",
            }),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

const URI_PREFIX: &str = "urn:doorless:";

/// Checks a site, device or connector name: `[a-z0-9][a-z0-9._-]{0,62}`.
///
/// Names become file names and parts of identity URIs, hence no colon, no slash, no uppercase
/// (two names differing only in case would collide on case-insensitive file systems).
pub fn validate_name(s: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: clip(s),
            reason,
        })
    };
    let Some(&first) = s.as_bytes().first() else {
        return invalid("empty");
    };
    if s.len() > 63 {
        return invalid("longer than 63 characters");
    }
    if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
        return invalid("must start with a lowercase letter or a digit");
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b);
    if !s.bytes().all(allowed) {
        return invalid("only lowercase letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Lowercases and checks a site hostname: a DNS name (RFC 1123 letter-digit-hyphen labels of
/// at most 63 characters, at most 253 in all, the last label not all digits). Refused, each
/// with its own message:
///
/// - IP addresses (v4, v6, bracketed v6, and dotted numbers that merely look like one): TLS
///   clients send no SNI for an IP address (RFC 6066), so the edge could never tell which
///   site such a client wants ([`Error::IpHostname`]);
/// - wildcards: the edge routes on the exact SNI name;
/// - a trailing dot, non-ASCII (use the `xn--` form), `_`, empty labels.
pub fn normalize_hostname(s: &str) -> Result<String> {
    let invalid = |reason| {
        Err(Error::InvalidHostname {
            name: clip(s),
            reason,
        })
    };
    let unbracketed = s
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .unwrap_or(s);
    if unbracketed.parse::<IpAddr>().is_ok() {
        return Err(Error::IpHostname { name: clip(s) });
    }
    let name = s.to_ascii_lowercase();
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > 253 {
        return invalid("longer than 253 characters");
    }
    if !name.is_ascii() {
        return invalid("not ASCII: write an internationalized name in its xn-- (punycode) form");
    }
    if name.starts_with("*.") || name.contains('*') {
        return invalid(
            "wildcards are not supported: the edge picks the site by the exact name the client \
             asks for; list each hostname with its own --hostname",
        );
    }
    if name.ends_with('.') && name.len() > 1 {
        return invalid("trailing dot: write the name without it (ha.example.com)");
    }
    if name.contains(':') {
        return invalid("contains ':' (a port, or a malformed IPv6 address?); give the bare name");
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return invalid("empty label (leading, trailing or double dot)");
        }
        if label.len() > 63 {
            return invalid("label longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return invalid("only letters, digits, '-' and '.' are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return invalid("a label starts or ends with '-'");
        }
    }
    let all_digits = |label: &&str| label.bytes().all(|b| b.is_ascii_digit());
    if labels.iter().all(all_digits) {
        // `203.0.113` or `010.0.0.1`: not an address Rust parses, but resolvers and browsers
        // may read it as one, and it is no DNS name either.
        return Err(Error::IpHostname { name: clip(s) });
    }
    if labels.last().is_some_and(all_digits) {
        return invalid("the last label is all digits, which no DNS name has");
    }
    Ok(name)
}

/// [`normalize_hostname`], or an IP address in canonical form: the names a server certificate
/// may carry (IP SANs are fine for certificates, just not for choosing a site).
pub(crate) fn normalize_server_name(s: &str) -> Result<String> {
    match s.parse::<IpAddr>() {
        Ok(ip) => Ok(ip.to_string()),
        Err(_) => normalize_hostname(s),
    }
}

/// SHA-256 of a certificate's DER: what the edge revokes by and the index records (as
/// lowercase hex, which is also its `Display` form and what [`str::parse`] reads).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a certificate (DER).
    pub fn of(cert_der: &[u8]) -> Self {
        Self(fingerprint(cert_der))
    }

    /// A fingerprint from its raw digest (as carried on the wire or in a cookie).
    pub const fn from_bytes(digest: [u8; 32]) -> Self {
        Self(digest)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a fingerprint is 64 hex digits")]
pub struct InvalidFingerprint;

impl std::str::FromStr for Fingerprint {
    type Err = InvalidFingerprint;

    fn from_str(hex: &str) -> std::result::Result<Self, InvalidFingerprint> {
        let hex = hex.as_bytes();
        // `from_str_radix` alone would also take a sign (`+0`).
        if hex.len() != 64 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(InvalidFingerprint);
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
            let text = std::str::from_utf8(pair).map_err(|_| InvalidFingerprint)?;
            *byte = u8::from_str_radix(text, 16).map_err(|_| InvalidFingerprint)?;
        }
        Ok(Self(out))
    }
}

/// SHA-256 of a certificate's DER (the bytes of its [`Fingerprint`]).
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// [`fingerprint`] as lowercase hex without separators.
pub fn fingerprint_hex(cert_der: &[u8]) -> String {
    hex(&fingerprint(cert_der))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    #[test]
    fn fingerprint_hex_round_trip() {
        let fp = Fingerprint::of(b"not really a certificate");
        let text = fp.to_string();
        assert_eq!(text, fingerprint_hex(b"not really a certificate"));
        assert_eq!(text.parse::<Fingerprint>(), Ok(fp));
        assert_eq!(text.to_uppercase().parse::<Fingerprint>(), Ok(fp));
        for bad in ["", "00", &"0".repeat(63), &"g".repeat(64), &"+0".repeat(32)] {
            assert_eq!(
                bad.parse::<Fingerprint>(),
                Err(InvalidFingerprint),
                "{bad:?}"
            );
        }
    }
}
