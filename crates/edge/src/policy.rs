//! Step 5 of the request path: may this request go to this site? A pure function.
//!
//! The TLS handshake already proved any certificate belongs to the SNI's site. The policy adds
//! the HTTP layer's say:
//! - the Host (HTTP/1) or :authority (HTTP/2) must name the same site, or a browser coalescing
//!   connections could carry site B's request on site A's connection (421);
//! - the client address must pass the site's `deny_cidrs` / `allow_cidrs`;
//! - a request without a certificate passes only in the modes that allow it: with a valid
//!   session cookie (`required_or_session`) or on an explicit public path prefix. A public
//!   path exempts plain HTTP only: a request that asks for an upgrade (a WebSocket) there
//!   needs a certificate or a session like anywhere else, since after a 101 its bytes no
//!   longer pass the request path.
//!
//! Public paths are matched on a normalised copy of the path, and the normalisation fails
//! closed: anything a server might interpret differently from us (dot segments, `;`
//! parameters, backslashes, doubled slashes, control bytes, bad percent-encoding) is simply
//! not exempt. The raw target is forwarded unchanged either way.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::cookie::{Claims, Verdict};
use crate::tls::PeerCertificate;

/// How a site authenticates clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// A valid client certificate on every connection (enforced in the TLS handshake when the
    /// site has no public paths).
    #[default]
    Required,
    /// A certificate, or a session cookie the edge issued on an earlier certificate-
    /// authenticated request (for browsers that omit the certificate on WebSockets).
    RequiredOrSession,
}

/// A site's access policy, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SitePolicy {
    /// Authentication mode.
    pub client_auth: ClientAuth,
    /// Path prefixes that pass without a certificate; each starts and ends with `/`.
    pub public_paths: Vec<String>,
    /// If not empty, only these client networks may pass.
    pub allow_cidrs: Vec<IpNet>,
    /// These client networks never pass (checked before `allow_cidrs`).
    pub deny_cidrs: Vec<IpNet>,
}

impl SitePolicy {
    /// Whether the TLS handshake may complete without a client certificate.
    pub fn certificate_optional(&self) -> bool {
        self.client_auth == ClientAuth::RequiredOrSession || !self.public_paths.is_empty()
    }
}

/// The facts about one request that the policy decides on. `'e` is the lifetime of the
/// evidence a grant carries (certificate, cookie claims), `'a` that of the rest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a, 'e> {
    /// The site the connection's SNI selected.
    pub(crate) conn_site: &'a str,
    /// The Host header / :authority, if any.
    pub(crate) host: Option<&'a str>,
    /// The site the Host selects, if any.
    pub(crate) host_site: Option<&'a str>,
    /// Client address.
    pub(crate) client_ip: IpAddr,
    /// The verified device certificate of the connection, if the client presented one (the
    /// handshake refuses any other).
    pub(crate) certificate: Option<&'e PeerCertificate>,
    /// The verdict on the request's session cookie, if it carried one.
    pub(crate) cookie: Option<&'e Verdict>,
    /// The raw request target.
    pub(crate) target: &'a str,
    /// The request carries an `Upgrade` header (or is a `CONNECT`): it asks to leave HTTP.
    pub(crate) upgrade: bool,
}

/// What the policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision<'e> {
    /// Proxy; the value says on what grounds.
    Allow(Grant<'e>),
    /// Refuse, with the reason.
    Deny(DenyReason),
}

/// Why a request was allowed, with the evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grant<'e> {
    /// This client certificate.
    Certificate(&'e PeerCertificate),
    /// A valid session cookie with these claims.
    Session(&'e Claims),
    /// A public path prefix.
    PublicPath,
}

impl Grant<'_> {
    /// Log value.
    pub(crate) fn as_str(&self) -> &'static str {
        match self {
            Self::Certificate(_) => "certificate",
            Self::Session(_) => "session",
            Self::PublicPath => "public_path",
        }
    }
}

/// Why a request is refused at the HTTP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DenyReason {
    /// No Host at all.
    MissingHost,
    /// Host names another site, or none.
    HostMismatch,
    /// The client address is denied or not allowed.
    Address,
    /// No certificate and nothing else that opens this path.
    NoCredentials,
}

/// Decides one request.
pub(crate) fn decide<'e>(policy: &SitePolicy, facts: &Facts<'_, 'e>) -> Decision<'e> {
    if facts.host.is_none() {
        return Decision::Deny(DenyReason::MissingHost);
    }
    if facts.host_site != Some(facts.conn_site) {
        return Decision::Deny(DenyReason::HostMismatch);
    }
    if policy
        .deny_cidrs
        .iter()
        .any(|n| n.contains(&facts.client_ip))
        || (!policy.allow_cidrs.is_empty()
            && !policy
                .allow_cidrs
                .iter()
                .any(|n| n.contains(&facts.client_ip)))
    {
        return Decision::Deny(DenyReason::Address);
    }
    if let Some(certificate) = facts.certificate {
        return Decision::Allow(Grant::Certificate(certificate));
    }
    if policy.client_auth == ClientAuth::RequiredOrSession
        && let Some(Verdict::Valid(claims)) = facts.cookie
    {
        return Decision::Allow(Grant::Session(claims));
    }
    if !facts.upgrade && is_public(&policy.public_paths, facts.target) {
        return Decision::Allow(Grant::PublicPath);
    }
    Decision::Deny(DenyReason::NoCredentials)
}

/// Whether `target`'s path falls under one of `prefixes`, judged on a fail-closed
/// normalisation (see the module docs).
pub(crate) fn is_public(prefixes: &[String], target: &str) -> bool {
    if prefixes.is_empty() {
        return false;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let Some(path) = normalise(path) else {
        return false;
    };
    prefixes
        .iter()
        .any(|prefix| path.starts_with(prefix.as_str()))
}

/// Percent-decodes `path` until stable (at most 3 rounds, so `%252e` is seen as `.`) and
/// returns it only if it is plain: absolute, no dot segments, no empty segments, no `;`,
/// `\`, `%`-leftovers or control bytes. `None` means "not plain": never exempt.
fn normalise(path: &str) -> Option<String> {
    let mut current = path.to_owned();
    for _ in 0..3 {
        let decoded = percent_decode(&current)?;
        if decoded == current {
            break;
        }
        current = decoded;
    }
    if current.contains('%') {
        // Still encoded after 3 rounds: someone is layering encodings; don't play.
        return None;
    }
    if !current.starts_with('/')
        || current.contains("//")
        || current
            .bytes()
            .any(|b| b == b';' || b == b'\\' || b.is_ascii_control())
    {
        return None;
    }
    if current
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return None;
    }
    Some(current)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The hostname part of a Host header value: lowercase, without port; IPv6 literals keep
/// their brackets stripped. `None` if it is empty or malformed.
pub(crate) fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    if host.is_empty() {
        return None;
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        &rest[..end]
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return None,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
