//! doorless PKI: certificate authorities, device and connector certificates, identities, the
//! edge's state directory and connector enrollment tokens.
//!
//! # What this crate is not
//!
//! It does no TLS and no networking, and it does not *verify* certificates: chains are checked
//! by rustls in the edge and the connector, against the CA certificates this crate writes.
//! [`Identity::from_cert_der`] only reads who an already verified certificate belongs to.
//! Revocation is recorded as `revoked_at` in the index, which the edge acts on; each site's
//! `crl.pem` mirrors it for other tools.
//!
//! # Where to start
//!
//! - The edge CLI: [`StateDir::init`], then [`StateDir::add_site`] (which returns a [`Site`]),
//!   [`StateDir::issue_connector`] (an [`EnrollmentToken`] to print with
//!   [`EnrollmentToken::encode`]), [`StateDir::add_client`] (an [`Issued`] device
//!   certificate and key to package with [`export_p12`], [`generate_password`] and
//!   [`MobileConfig`]), [`StateDir::sign_client_csr`] (a [`Certified`] device certificate for a
//!   key the device keeps), [`StateDir::clients`], [`StateDir::revoke_any`] (by name or
//!   serial), [`StateDir::renew`] and [`StateDir::write_crl`]; `client add --link` stores the
//!   package with [`StateDir::save_link`].
//! - The edge at run time: [`StateDir::open`], the `*_path` accessors, [`load_certs`] /
//!   [`load_key`], [`StateDir::revoked`] and [`StateDir::watched_paths`] (what to enforce and
//!   what to watch), [`Identity::from_cert_der`] and [`Fingerprint::of`] on verified peer
//!   certificates; device links with [`StateDir::links`], [`StateDir::link`] and
//!   [`StateDir::take_link`].
//! - The connector: [`EnrollmentToken::decode`] (also `str::parse`), then [`parse_certs`] /
//!   [`parse_key`] on its fields, pinning `tunnel_ca_pem` and verifying [`TUNNEL_SERVER_NAME`].
//! - Tests and the demo: [`Ca`] directly.
//!
//! # Policy, fixed here so no caller forgets it
//!
//! - ECDSA P-256 keys by default ([`KeyType::Rsa2048`] for old devices).
//! - Random 16-byte positive serials; validity always explicit, starting one hour in the past,
//!   and never beyond the signing CA's own expiry (capped by [`Ca`]). Device certificates
//!   ([`StateDir::add_client`], [`StateDir::sign_client_csr`], [`StateDir::renew`]) are
//!   refused unless valid for at least [`MIN_VALIDITY_DAYS`] and ending inside the CA's life.
//! - CAs: CA:true with path length 0, keyCertSign + cRLSign + digitalSignature, 10 years, and
//!   a subject of one CN of 16 random hex digits: no product or site name, since anyone who
//!   starts a TLS handshake sees the device CA's name (CertificateRequest) and the server CA's
//!   (issuer of the HTTPS certificate). State dirs made before this keep their old names.
//! - Device certificates are signed directly by their site's own client CA (the iOS app sends no
//!   intermediates), so a certificate of site A never verifies against site B.
//! - Identity lives in one place, a URI SAN `urn:doorless:device:<site>:<name>` or
//!   `urn:doorless:connector:<site>:<name>`; names follow [`validate_name`].
//! - Client certificates: EKU clientAuth only; server certificates: EKU serverAuth.
//! - Devices' own CSRs: only the public key is used; ECDSA P-256/P-384, RSA 2048-8192 or
//!   Ed25519, and no requested extension beyond SAN, KU, EKU and basicConstraints.
//! - `.p12`: legacy 3DES/SHA-1 by default (imports everywhere), AES-256 on request, never
//!   without a password (see [`P12Profile`]).
//!
//! # State directory layout
//!
//! ```text
//! <root>/                     0700
//!   state.json                {"version":1,"edge_addr":...,"created":...}; written last by init
//!   tunnel-ca.crt / .key      signs the edge's QUIC server cert; pinned by connectors (in tokens)
//!   tunnel.crt / tunnel.key   edge's QUIC server cert (SAN DNS TUNNEL_SERVER_NAME, serverAuth)
//!   connector-ca.crt / .key   signs connector certs
//!   server-ca.crt / .key      local CA for the sites' self-made public HTTPS certs
//!   session.key               32 random bytes (0600), for session cookies
//!   index.json                [IndexEntry...] issued device and connector certificates
//!   sites/<site>/site.json    {"name":..., "hostnames":[...]}
//!   sites/<site>/client-ca.crt / .key     this site's device CA
//!   sites/<site>/server.crt / server.key  public HTTPS cert for the hostnames (signed by server-ca)
//!   sites/<site>/crl.pem                  CRL of the site's device CA (revoked devices, 7 days)
//!   sites/<site>/crl.json                 {"crl_number": N}, the last CRL number used
//!   sites/<site>/clients/<name>.crt       issued device certs (keys are never stored)
//!   sites/<site>/connectors/<id>.crt      issued connector certs
//!   links/<sha256 of secret>.json         one-time device links (0600): site, device, expiry,
//!                                         the password-protected .p12 and .mobileconfig
//!   enroll-codes.json         connector enrollment and renewal codes (0600; MAC keys sealed)
//!   state.lock                empty; its `flock` serialises writers (see below)
//! ```
//!
//! Every `*.key` and `session.key` is 0600 from creation, every directory 0700. Every file is
//! replaced atomically (temporary file, fsync, rename, fsync of the directory). A directory with
//! CA files but no `state.json` is an interrupted `init` ([`Error::InterruptedInit`]); a site is
//! built under `sites/.<site>.tmp-*` and renamed into place when complete. The index, the
//! enrollment codes and the CRL numbers are read, modified and atomically replaced under an
//! advisory lock on `state.lock` (`flock`, re-entrant within a thread, waiting at most 10 s),
//! so the CLI and the running edge (which redeems codes) can write at the same time.

mod ca;
mod csr;
mod enroll;
mod error;
#[cfg(feature = "p12")]
mod export;
mod fs;
mod identity;
mod inspect;
mod links;
mod lock;
#[cfg(feature = "p12")]
mod mobileconfig;
mod pem;
mod state;
mod token;

pub use ca::{CA_VALIDITY_DAYS, Ca, Certified, Issued, KeyType, MIN_VALIDITY_DAYS, Validity};
pub use csr::{MAX_RSA_BITS, MIN_RSA_BITS};
pub use enroll::{
    CODE_ID_LEN, CodeKeys, CodeRecord, CodeState, DEFAULT_CODE_LIFETIME, EnrollmentCode,
    RedeemError, Redeemed, connector_csr, enrolled_with, load_enrolled, record_enrolled_code,
    save_enrolled,
};
pub use error::{Error, Result};
#[cfg(feature = "p12")]
pub use export::{P12Profile, check_password, export_p12, generate_password};
pub use identity::{
    Fingerprint, Identity, InvalidFingerprint, Kind, fingerprint, fingerprint_hex,
    normalize_hostname, validate_name,
};
pub use inspect::{cert_not_after, cert_serial};
pub use links::{DEFAULT_LINK_LIFETIME, LinkPackage, LinkRecord, LinkSecret, PendingLink};
#[cfg(feature = "p12")]
pub use mobileconfig::MobileConfig;
pub use pem::{load_certs, load_key, parse_certs, parse_key};
pub use state::{
    CRL_DAYS, EdgeTarget, IndexEntry, InitOptions, Renewed, Revocation, Site, StateDir,
};
pub use token::EnrollmentToken;

/// The DNS name in the edge's tunnel certificate. Connectors verify it against the pinned tunnel
/// CA; `.invalid` (RFC 2606) can never be a real, publicly certifiable name.
pub const TUNNEL_SERVER_NAME: &str = "edge.doorless.invalid";

/// `N` bytes from the system CSPRNG (aws-lc-rs).
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Error::Random)?;
    Ok(bytes)
}
