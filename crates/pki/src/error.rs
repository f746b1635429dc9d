//! The one error type of this crate.
//!
//! Messages name the file where one is involved and never include key material: a private key
//! only ever appears in an error as "the private key", never as bytes or PEM.

use std::io;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::ca::MIN_VALIDITY_DAYS;
use crate::identity::Kind;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A site, device or connector name is not of the form `[a-z0-9][a-z0-9._-]{0,62}`.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// A hostname is not a DNS name.
    #[error("invalid hostname {name:?}: {reason}")]
    InvalidHostname { name: String, reason: &'static str },

    /// A site hostname is an IP address, which no client would name in SNI.
    #[error(
        "hostname {name:?} is an IP address: TLS clients send no server name (SNI) for an IP \
         address, so the edge could never tell which site they want; use a DNS name that \
         points at the edge"
    )]
    IpHostname { name: String },

    /// The edge address for enrollment tokens is not `host:port`.
    #[error("invalid edge address {addr:?}: {reason}")]
    InvalidEdgeAddr { addr: String, reason: &'static str },

    /// A string is not a `urn:doorless:<kind>:<site>:<name>` URI.
    #[error("invalid identity URI {uri:?}: {reason}")]
    InvalidIdentityUri { uri: String, reason: &'static str },

    /// A certificate does not carry exactly one doorless identity URI.
    #[error("certificate has no usable doorless identity: {reason}")]
    NoIdentity { reason: &'static str },

    /// A certificate (or PEM meant to hold certificates) cannot be parsed.
    #[error("{}invalid certificate: {reason}", at(.path))]
    Certificate {
        path: Option<PathBuf>,
        reason: String,
    },

    /// A private key cannot be parsed. `reason` never contains key bytes.
    #[error("{}invalid private key: {reason}", at(.path))]
    Key {
        path: Option<PathBuf>,
        reason: String,
    },

    /// A private key belongs to another certificate.
    #[error("{}the private key does not match the certificate", at(.path))]
    KeyMismatch { path: Option<PathBuf> },

    /// A certificate meant to be a CA is not one.
    #[error("{}certificate is not a CA certificate", at(.path))]
    NotCa { path: Option<PathBuf> },

    /// A certificate signing request cannot be parsed or its signature is wrong.
    #[error("invalid certificate signing request: {reason}")]
    Csr { reason: String },

    /// `not_after` is not after `not_before`.
    #[error("invalid validity: not_after must be after not_before")]
    InvalidValidity,

    /// A requested certificate would expire within a day (or already has): `--days 0`.
    #[error(
        "a certificate must be valid for at least {MIN_VALIDITY_DAYS} day (this one would expire \
         {})",
        .not_after.date()
    )]
    ValidityTooShort { not_after: OffsetDateTime },

    /// A requested certificate would outlive the CA that signs it (and stop verifying when the
    /// CA expires anyway).
    #[error(
        "a certificate cannot be valid beyond its CA, which expires {}: at most {max_days} days \
         are possible",
        .ca_not_after.date()
    )]
    ValidityBeyondCa {
        ca_not_after: OffsetDateTime,
        max_days: i64,
    },

    /// The CA itself has expired; it can sign nothing that would verify.
    #[error("the issuing CA expired {}; replace it before issuing", .not_after.date())]
    CaExpired { not_after: OffsetDateTime },

    /// A server certificate was requested without any name.
    #[error("a server certificate needs at least one hostname")]
    NoHostnames,

    /// rcgen refused to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),

    /// The system random number generator failed.
    #[error("the system random number generator failed")]
    Random,

    /// Reading or writing a file failed.
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: io::Error },

    /// `index.json` parses but records something impossible.
    #[error("{}: {reason}", .path.display())]
    Index { path: PathBuf, reason: String },

    /// A JSON state file is malformed.
    #[error("{}: invalid JSON: {source}", .path.display())]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },

    /// `StateDir::init` on a directory that exists and is not empty (an initialized state dir
    /// or anything else). Nothing was touched.
    #[error(
        "refusing to init: the state directory exists and is not empty (already initialized?); \
         use it as is or choose another path"
    )]
    AlreadyInitialized,

    /// `StateDir::init` on a directory left behind by an interrupted `init`.
    #[error(
        "{}: an earlier init was interrupted (CA files exist but no state.json); \
         remove this directory and run init again",
        .root.display()
    )]
    InterruptedInit { root: PathBuf },

    /// `StateDir::open` on a directory without `state.json`.
    #[error(
        "{}: not a doorless state directory (no state.json); run init first, or, if an init was \
         interrupted, remove the directory and run init again",
        .root.display()
    )]
    NotInitialized { root: PathBuf },

    /// `state.json` has a version this build does not understand.
    #[error("{}: unsupported state version {version} (this build understands 1)", .path.display())]
    UnsupportedVersion { path: PathBuf, version: u64 },

    /// A state file parses but contradicts the directory it is in (edited by hand?).
    #[error("{}: {reason}", .path.display())]
    CorruptState { path: PathBuf, reason: String },

    /// `add_site` with a name that already exists.
    #[error("site {site:?} already exists")]
    SiteExists { site: String },

    /// A site that does not exist.
    #[error("site {site:?} does not exist")]
    SiteNotFound { site: String },

    /// `add_site` with a hostname another site already serves.
    #[error("hostname {hostname:?} is already used by site {site:?}")]
    HostnameInUse { hostname: String, site: String },

    /// A device or connector with this name already holds an unrevoked certificate in the site.
    #[error(
        "{kind} {name:?} already has an unrevoked certificate in site {site:?}; revoke it first"
    )]
    AlreadyIssued {
        kind: Kind,
        site: String,
        name: String,
    },

    /// No unrevoked certificate for this device or connector.
    #[error("no unrevoked certificate for {kind} {name:?} in site {site:?}")]
    NotIssued {
        kind: Kind,
        site: String,
        name: String,
    },

    /// Nothing in the index matches a `revoke` target (a name or a serial).
    #[error("no unrevoked certificate named or with serial {target:?}{}", in_site(.site))]
    NoSuchCertificate {
        target: String,
        site: Option<String>,
    },

    /// The certificate with this serial is already revoked.
    #[error(
        "the certificate with serial {serial} ({kind} {name:?} of site {site:?}) is already revoked"
    )]
    AlreadyRevoked {
        serial: String,
        kind: Kind,
        site: String,
        name: String,
    },

    /// A `revoke` target matches several certificates.
    #[error("{target:?} matches more than one certificate: {}; {hint}", .matches.join(", "))]
    Ambiguous {
        target: String,
        matches: Vec<String>,
        hint: &'static str,
    },

    /// The revocation is recorded (and the edge acts on it), but `crl.pem` could not be
    /// rewritten.
    #[error(
        "revoked in index.json (a running edge picks it up), but the CRL of site {site:?} could          not be rewritten: {source}; run `doorless-edge client crl --site {site}`"
    )]
    CrlAfterRevoke {
        site: String,
        #[source]
        source: Box<Error>,
    },

    /// A `.p12` password that some importer would refuse or mangle.
    #[error("unusable .p12 password: {reason}")]
    BadPassword { reason: &'static str },

    /// Writing a PKCS#12 file failed.
    #[error("cannot write the PKCS#12 file: {reason}")]
    Pkcs12 { reason: String },

    /// The string is not a connector enrollment code.
    #[error("not a valid enrollment code: {reason}")]
    InvalidCode { reason: &'static str },

    /// No pending enrollment code matched.
    #[error("no pending enrollment code{} of site {site:?}", match id { Some(id) => format!(" starting with {id:?}"), None => String::new() })]
    NoSuchCode { site: String, id: Option<String> },

    /// The string is not an enrollment token at all.
    #[error("not a doorless enrollment token: {reason}")]
    TokenFormat { reason: &'static str },

    /// The token looks like one but its checksum does not match: it was damaged in copying.
    #[error("enrollment token is damaged (checksum mismatch); copy the whole token again")]
    TokenTampered,

    /// The token is intact but its contents are inconsistent (wrong identity, bad cert, ...).
    #[error("enrollment token is invalid: {reason}")]
    TokenInvalid { reason: String },
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Attaches `path` to errors about a certificate or key that came from that file.
    pub(crate) fn in_file(self, file: &Path) -> Self {
        let file = Some(file.to_owned());
        match self {
            Self::Certificate { path: None, reason } => Self::Certificate { path: file, reason },
            Self::Key { path: None, reason } => Self::Key { path: file, reason },
            Self::KeyMismatch { path: None } => Self::KeyMismatch { path: file },
            Self::NotCa { path: None } => Self::NotCa { path: file },
            other => other,
        }
    }
}

/// Prefix for messages about something that may have come from a file.
fn at(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!("{}: ", path.display()),
        None => String::new(),
    }
}

fn in_site(site: &Option<String>) -> String {
    match site {
        Some(site) => format!(" in site {site:?}"),
        None => String::new(),
    }
}

/// Shortens untrusted input quoted in error messages so a hostile peer cannot make log lines huge.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_owned(),
    }
}
