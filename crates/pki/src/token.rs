//! Enrollment tokens: everything a connector needs, as one copy-pasteable line.
//!
//! `dl1.<base64url(JSON)>.<base64url(first 12 bytes of SHA-256(JSON))>`
//!
//! The checksum catches copy-paste damage, it is not a signature: anyone can build a token. A
//! token is a bearer secret (it holds the connector's private key); what makes it trustworthy
//! is that the edge only accepts certificates its connector CA signed.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rcgen::{KeyPair, PublicKeyData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::pem::parse_certs;

/// What `doorless-connector` needs to enroll: where to dial, whom to trust, who it is.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentToken {
    /// `host:port` of the edge's tunnel listener(s).
    pub edges: Vec<String>,
    /// The name to verify on the edge's tunnel certificate ([`crate::TUNNEL_SERVER_NAME`]).
    pub server_name: String,
    pub site: String,
    pub connector_id: String,
    /// The connector's certificate (PEM).
    pub cert_pem: String,
    /// The connector's private key (PKCS#8 PEM). Secret.
    pub key_pem: String,
    /// The tunnel CA to pin (PEM).
    pub tunnel_ca_pem: String,
}

const PREFIX: &str = "dl1.";
const CHECKSUM_LEN: usize = 12;
/// Far above a real token (~3 KiB); bounds the work done on garbage from the environment.
const MAX_LEN: usize = 64 * 1024;

impl EnrollmentToken {
    /// The one-line form: `dl1.<payload>.<checksum>`.
    pub fn encode(&self) -> String {
        let payload = Payload {
            edges: &self.edges,
            server_name: &self.server_name,
            site: &self.site,
            connector_id: &self.connector_id,
            cert_pem: &self.cert_pem,
            key_pem: &self.key_pem,
            tunnel_ca_pem: &self.tunnel_ca_pem,
        };
        // Serializing plain strings into a Vec cannot fail; an empty payload would be refused
        // by `decode`, never silently accepted.
        let json = serde_json::to_vec(&payload).unwrap_or_default();
        format!(
            "{PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(&json),
            URL_SAFE_NO_PAD.encode(checksum(&json))
        )
    }

    /// Parses and checks a token: intact (else [`Error::TokenTampered`]), and consistent: the
    /// certificate and key parse and belong together, the certificate is the connector
    /// `connector_id` of `site`, the tunnel CA parses, at least one edge.
    pub fn decode(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.len() > MAX_LEN {
            return Err(Error::TokenFormat {
                reason: "longer than 64 KiB",
            });
        }
        let body = s.strip_prefix(PREFIX).ok_or(Error::TokenFormat {
            reason: "does not start with \"dl1.\"",
        })?;
        // Past the prefix, any damage (a changed, missing or extra character) is reported as
        // tampering: that is what a user who pasted a bad copy needs to hear.
        let (payload, sum) = body.split_once('.').ok_or(Error::TokenTampered)?;
        let json = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| Error::TokenTampered)?;
        let sum = URL_SAFE_NO_PAD
            .decode(sum)
            .map_err(|_| Error::TokenTampered)?;
        if sum != checksum(&json) {
            return Err(Error::TokenTampered);
        }
        let payload: OwnedPayload = serde_json::from_slice(&json).map_err(|e| {
            // Only the position: serde messages may quote values, and the payload holds a key.
            Error::TokenInvalid {
                reason: format!(
                    "malformed JSON ({:?} error at column {})",
                    e.classify(),
                    e.column()
                ),
            }
        })?;
        let token = Self {
            edges: payload.edges,
            server_name: payload.server_name,
            site: payload.site,
            connector_id: payload.connector_id,
            cert_pem: payload.cert_pem,
            key_pem: payload.key_pem,
            tunnel_ca_pem: payload.tunnel_ca_pem,
        };
        token.check()?;
        Ok(token)
    }

    /// Checks that the parts agree (see [`EnrollmentToken::decode`]): what a connector checks
    /// before it stores credentials it was sent.
    pub fn validate(&self) -> Result<()> {
        self.check()
    }

    fn check(&self) -> Result<()> {
        let invalid = |reason: String| Error::TokenInvalid { reason };
        if self.edges.is_empty() || self.edges.iter().any(|e| e.trim().is_empty()) {
            return Err(invalid("no edge address".into()));
        }
        if self.server_name.is_empty() {
            return Err(invalid("empty server_name".into()));
        }
        let expected = Identity::connector(&self.site, &self.connector_id)
            .map_err(|e| invalid(format!("site or connector_id: {e}")))?;

        let cert = parse_certs(&self.cert_pem)
            .map_err(|e| invalid(format!("cert_pem: {e}")))?
            .into_iter()
            .next()
            .ok_or_else(|| invalid("cert_pem: no certificate".into()))?;
        let identity =
            Identity::from_cert_der(&cert).map_err(|e| invalid(format!("cert_pem: {e}")))?;
        if identity != expected {
            return Err(invalid(format!(
                "the certificate is for {identity}, the token says {expected}"
            )));
        }

        // The key error is rcgen's description, never the key itself.
        let key = KeyPair::from_pem(&self.key_pem)
            .map_err(|_| invalid("key_pem: cannot parse the private key".into()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| invalid(format!("cert_pem: {e}")))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(invalid("key_pem does not match cert_pem".into()));
        }

        let ca =
            parse_certs(&self.tunnel_ca_pem).map_err(|e| invalid(format!("tunnel_ca_pem: {e}")))?;
        for der in &ca {
            let (_, ca) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| invalid(format!("tunnel_ca_pem: {e}")))?;
            if !ca.is_ca() {
                return Err(invalid("tunnel_ca_pem is not a CA certificate".into()));
            }
        }
        Ok(())
    }
}

impl FromStr for EnrollmentToken {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::decode(s)
    }
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("edges", &self.edges)
            .field("server_name", &self.server_name)
            .field("site", &self.site)
            .field("connector_id", &self.connector_id)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("tunnel_ca_pem", &self.tunnel_ca_pem)
            .finish()
    }
}

/// The wire form; separate from [`EnrollmentToken`] so the public type does not have to be
/// `Serialize` (which would make leaking the key into logs one `to_string` away).
#[derive(Serialize)]
struct Payload<'a> {
    edges: &'a [String],
    server_name: &'a str,
    site: &'a str,
    connector_id: &'a str,
    cert_pem: &'a str,
    key_pem: &'a str,
    tunnel_ca_pem: &'a str,
}

#[derive(Deserialize)]
struct OwnedPayload {
    edges: Vec<String>,
    server_name: String,
    site: String,
    connector_id: String,
    cert_pem: String,
    key_pem: String,
    tunnel_ca_pem: String,
}

fn checksum(json: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = crate::fingerprint(json);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    out
}
