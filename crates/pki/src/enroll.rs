//! Connector enrollment codes: a short, typeable, one-time secret that lets a connector get its
//! certificate for a key it made itself.
//!
//! A code reads `<edge-host>[:port]/1-XXXXX-XXXXX-XXXXX-XXXXX`: where to dial (the edge's HTTPS
//! port, 443 unless given), the format version `1`, and 20 Crockford base32 characters (100
//! random bits; case, dashes and the look-alikes O/I/L do not matter when typed).
//!
//! The secret never travels. Both ends derive from it a public lookup id and a MAC key
//! ([`CodeKeys`]); the connector sends the id, its CSR and a MAC over them, and the edge's answer
//! (certificate, tunnel CA, tunnel addresses) carries a MAC over the request's MAC and itself.
//! So whoever lacks the code can neither enroll nor pass off another tunnel CA, whatever TLS
//! certificate he shows.
//!
//! The edge keeps each code's MAC key only sealed (XOR with a pad derived from `session.key` and
//! the id), in `enroll-codes.json` (0600), so that file alone enrolls nothing. Codes are single
//! use, expire, can be revoked, and are pruned 30 days after they stopped being usable.
//!
//! What this module is not: it does no networking and no framing (`proto::enroll` frames the
//! messages; edge and connector do the IO).

use std::fmt;
use std::io::ErrorKind;

use aws_lc_rs::{constant_time, digest, hmac};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::ca::{Validity, now};
use crate::error::{Error, Result, clip};
use crate::fs::{self as sfs, PUBLIC, SECRET};
use crate::identity::{Identity, Kind, hex};
use crate::random_bytes;
use crate::state::{CONNECTOR_DAYS, StateDir};

/// Crockford's base32 alphabet: no I, L, O, U.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters of secret: 100 bits.
const SECRET_CHARS: usize = 20;
/// The code format version, the first group of the secret part.
const CODE_VERSION: &str = "1";
/// Bytes of a code id.
pub const CODE_ID_LEN: usize = 16;
/// How long a code is valid unless told otherwise.
pub const DEFAULT_CODE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Records of codes that can no longer be used are kept this long for `site codes`.
const KEEP_DONE: Duration = Duration::days(30);
const CODES_FILE: &str = "enroll-codes.json";

/// A connector enrollment code: where the edge is and the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct EnrollmentCode {
    edge: String,
    /// [`SECRET_CHARS`] characters of [`ALPHABET`].
    secret: String,
}

impl EnrollmentCode {
    /// A new random code for an edge reached at `edge` (`host` or `host:port`).
    pub fn generate(edge: &str) -> Result<Self> {
        let edge = check_edge(edge)?;
        let bytes = random_bytes::<SECRET_CHARS>()?;
        // 32 divides 256, so each masked byte is a uniform character.
        let secret = bytes
            .iter()
            .map(|b| char::from(ALPHABET[usize::from(b & 31)]))
            .collect();
        Ok(Self { edge, secret })
    }

    /// Parses a code as typed: surrounding space, an `https://` prefix, any case, dashes and
    /// spaces inside the secret, and O/I/L for 0/1/1 are all accepted.
    pub fn parse(s: &str) -> Result<Self> {
        let invalid = |reason: &'static str| Error::InvalidCode { reason };
        let s = s.trim();
        if s.len() > 256 {
            return Err(invalid("too long"));
        }
        let s = s.strip_prefix("https://").unwrap_or(s);
        let (edge, secret) = s
            .rsplit_once('/')
            .ok_or(invalid("expected HOST/1-XXXXX-XXXXX-XXXXX-XXXXX"))?;
        let (version, rest) = secret
            .split_once('-')
            .ok_or(invalid("expected HOST/1-XXXXX-XXXXX-XXXXX-XXXXX"))?;
        if version.trim() != CODE_VERSION {
            return Err(invalid(
                "unknown code version (this connector reads version 1 codes)",
            ));
        }
        let mut canonical = String::with_capacity(SECRET_CHARS);
        for c in rest.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                c if c.is_ascii() && ALPHABET.contains(&(c as u8)) => c,
                _ => return Err(invalid("a character that is not in the code's alphabet")),
            };
            canonical.push(c);
        }
        if canonical.len() != SECRET_CHARS {
            return Err(invalid(
                "wrong length: the secret has 20 characters after `1-`",
            ));
        }
        let edge = check_edge(edge)?;
        Ok(Self {
            edge,
            secret: canonical,
        })
    }

    /// The code as printed: `host[:port]/1-XXXXX-XXXXX-XXXXX-XXXXX`.
    pub fn encode(&self) -> String {
        let groups: Vec<&str> = (0..SECRET_CHARS)
            .step_by(5)
            .filter_map(|i| self.secret.get(i..i + 5))
            .collect();
        format!("{}/{CODE_VERSION}-{}", self.edge, groups.join("-"))
    }

    /// `host[:port]` as written in the code.
    pub fn edge(&self) -> &str {
        &self.edge
    }

    /// The host to dial and name in SNI (brackets of an IPv6 literal removed).
    pub fn host(&self) -> &str {
        split_edge(&self.edge).0
    }

    /// The port to dial: the code's, or 443.
    pub fn port(&self) -> u16 {
        split_edge(&self.edge).1.unwrap_or(443)
    }

    /// The id and MAC key derived from the secret.
    pub fn keys(&self) -> CodeKeys {
        let id = digest::digest(
            &digest::SHA256,
            &[b"doorless-enroll/1 id\0", self.secret.as_bytes()].concat(),
        );
        let mut code_id = [0u8; CODE_ID_LEN];
        code_id.copy_from_slice(&id.as_ref()[..CODE_ID_LEN]);
        let key = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, self.secret.as_bytes()),
            b"doorless-enroll/1 key",
        );
        let mut mac_key = [0u8; 32];
        mac_key.copy_from_slice(key.as_ref());
        CodeKeys {
            id: code_id,
            key: mac_key,
        }
    }
}

impl fmt::Debug for EnrollmentCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentCode")
            .field("edge", &self.edge)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// What both ends derive from a code: its public id and the key of the two MACs.
#[derive(Clone)]
pub struct CodeKeys {
    /// Identifies the code on the edge; reveals nothing of the secret.
    pub id: [u8; CODE_ID_LEN],
    key: [u8; 32],
}

impl fmt::Debug for CodeKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodeKeys")
            .field("id", &hex(&self.id))
            .finish_non_exhaustive()
    }
}

impl CodeKeys {
    /// The MAC of a request: HMAC-SHA256(key, "doorless-enroll/1 request\0" ‖ `input`).
    pub fn request_mac(&self, input: &[u8]) -> [u8; 32] {
        self.mac(b"doorless-enroll/1 request\0", &[], input)
    }

    /// The MAC of a response: HMAC-SHA256(key, "doorless-enroll/1 response\0" ‖ request MAC ‖
    /// `input`): it answers exactly that request.
    pub fn response_mac(&self, request_mac: &[u8; 32], input: &[u8]) -> [u8; 32] {
        self.mac(b"doorless-enroll/1 response\0", request_mac, input)
    }

    /// Whether `mac` is [`CodeKeys::request_mac`] of `input` (constant time).
    pub fn verify_request(&self, input: &[u8], mac: &[u8; 32]) -> bool {
        constant_time::verify_slices_are_equal(&self.request_mac(input), mac).is_ok()
    }

    /// Whether `mac` is [`CodeKeys::response_mac`] of `input` (constant time).
    pub fn verify_response(&self, request_mac: &[u8; 32], input: &[u8], mac: &[u8; 32]) -> bool {
        constant_time::verify_slices_are_equal(&self.response_mac(request_mac, input), mac).is_ok()
    }

    fn mac(&self, label: &[u8], prefix: &[u8], input: &[u8]) -> [u8; 32] {
        let key = hmac::Key::new(hmac::HMAC_SHA256, &self.key);
        let mut ctx = hmac::Context::with_key(&key);
        ctx.update(label);
        ctx.update(prefix);
        ctx.update(input);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

/// A fresh ECDSA P-256 key and a CSR for it, both PEM: what a connector sends (the CSR) and
/// keeps (the key). The CSR's subject is ignored by the edge.
pub fn connector_csr() -> Result<(String, String)> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let csr = CertificateParams::default().serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Where an enrolled connector keeps its credentials, inside its state directory.
const ENROLLED_FILE: &str = "enrollment.json";
const CONNECTOR_CRT: &str = "connector.crt";
const CONNECTOR_KEY: &str = "connector.key";
const TUNNEL_CA_CRT: &str = "tunnel-ca.crt";

/// What `enrollment.json` holds besides the three PEM files.
#[derive(Serialize, Deserialize)]
struct EnrolledFile {
    site: String,
    connector_id: String,
    edges: Vec<String>,
    server_name: String,
    enrolled_at: String,
    /// The id (hex) of the code these credentials came from, so that `run` tells the code it
    /// already used from a new one (a renewal) still configured beside it. Absent in files
    /// written before renewal existed, and for tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code_id: Option<String>,
}

/// Stores an enrolled connector's credentials in its state directory `dir` (created 0700):
/// `connector.key` (0600), `connector.crt`, `tunnel-ca.crt`, and `enrollment.json` last, whose
/// presence makes the directory enrolled, recording `code_id`, the id of the code they came
/// from. The credentials are checked first.
pub fn save_enrolled(
    dir: &std::path::Path,
    token: &crate::EnrollmentToken,
    code_id: Option<&[u8; CODE_ID_LEN]>,
) -> Result<()> {
    token.validate()?;
    sfs::create_dir_all(dir)?;
    sfs::restrict_dir(dir)?;
    sfs::write_atomic(&dir.join(CONNECTOR_KEY), token.key_pem.as_bytes(), SECRET)?;
    sfs::write_atomic(&dir.join(CONNECTOR_CRT), token.cert_pem.as_bytes(), PUBLIC)?;
    sfs::write_atomic(
        &dir.join(TUNNEL_CA_CRT),
        token.tunnel_ca_pem.as_bytes(),
        PUBLIC,
    )?;
    let file = EnrolledFile {
        site: token.site.clone(),
        connector_id: token.connector_id.clone(),
        edges: token.edges.clone(),
        server_name: token.server_name.clone(),
        enrolled_at: rfc3339(now()),
        code_id: code_id.map(|id| hex(id)),
    };
    write_enrolled_file(dir, &file)
}

fn write_enrolled_file(dir: &std::path::Path, file: &EnrolledFile) -> Result<()> {
    let path = dir.join(ENROLLED_FILE);
    let mut json = serde_json::to_vec_pretty(file).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    json.push(b'\n');
    sfs::write_atomic(&path, &json, PUBLIC)
}

fn read_enrolled_file(dir: &std::path::Path) -> Result<Option<EnrolledFile>> {
    let path = dir.join(ENROLLED_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| Error::Json { path, source })
}

/// Whether the credentials stored in `dir` came from the code with id `code_id`: `Some(true)`
/// or `Some(false)`, `None` when `dir` is not enrolled or does not record its code (written
/// before renewal existed, or enrolled with a token).
pub fn enrolled_with(dir: &std::path::Path, code_id: &[u8; CODE_ID_LEN]) -> Result<Option<bool>> {
    Ok(read_enrolled_file(dir)?
        .and_then(|file| file.code_id)
        .map(|id| id == hex(code_id)))
}

/// Records in `dir`'s `enrollment.json` that its credentials are past the code `code_id` (one
/// the edge says was used already), so that `run` does not offer it again at every start.
pub fn record_enrolled_code(dir: &std::path::Path, code_id: &[u8; CODE_ID_LEN]) -> Result<()> {
    let Some(mut file) = read_enrolled_file(dir)? else {
        return Ok(());
    };
    file.code_id = Some(hex(code_id));
    write_enrolled_file(dir, &file)
}

/// The credentials [`save_enrolled`] stored in `dir`, checked; `None` if `dir` is not
/// enrolled (no `enrollment.json`).
pub fn load_enrolled(dir: &std::path::Path) -> Result<Option<crate::EnrollmentToken>> {
    let Some(file) = read_enrolled_file(dir)? else {
        return Ok(None);
    };
    let token = crate::EnrollmentToken {
        edges: file.edges,
        server_name: file.server_name,
        site: file.site,
        connector_id: file.connector_id,
        cert_pem: sfs::read_to_string(&dir.join(CONNECTOR_CRT))?,
        key_pem: sfs::read_to_string(&dir.join(CONNECTOR_KEY))?,
        tunnel_ca_pem: sfs::read_to_string(&dir.join(TUNNEL_CA_CRT))?,
    };
    token.validate()?;
    Ok(Some(token))
}

/// One code as the edge records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CodeRecord {
    /// The code id, lowercase hex; its first 8 digits name it in `site codes`.
    pub id: String,
    /// The site it enrolls a connector for.
    pub site: String,
    /// The MAC key XOR a pad derived from `session.key`: useless without that key.
    sealed_key: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub expires: String,
    /// RFC 3339, once used.
    pub used_at: Option<String>,
    /// The connector it enrolled, once used.
    pub connector_id: Option<String>,
    /// RFC 3339, once revoked.
    pub revoked_at: Option<String>,
    /// A renewal code (`doorless-edge client renew`): the connector whose certificate it
    /// replaces. Redeeming it re-issues that connector's certificate on the new key and revokes
    /// the old one, in one index write; the site keeps its connector id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renews: Option<String>,
}

/// Where a code stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeState {
    /// Usable.
    Pending,
    /// Used once; never again.
    Used,
    /// Past its expiry, unused.
    Expired,
    /// Revoked before use.
    Revoked,
}

impl CodeState {
    /// Lowercase name, for listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Used => "used",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
        }
    }
}

impl CodeRecord {
    /// The state at `now`.
    pub fn state(&self, now: OffsetDateTime) -> CodeState {
        if self.used_at.is_some() {
            CodeState::Used
        } else if self.revoked_at.is_some() {
            CodeState::Revoked
        } else if parse_time(&self.expires).is_none_or(|t| t <= now) {
            CodeState::Expired
        } else {
            CodeState::Pending
        }
    }

    /// The state now.
    pub fn current_state(&self) -> CodeState {
        self.state(now())
    }

    /// When it stopped (or stops) being usable.
    fn done_at(&self) -> Option<OffsetDateTime> {
        [&self.used_at, &self.revoked_at, &Some(self.expires.clone())]
            .into_iter()
            .flatten()
            .filter_map(|t| parse_time(t))
            .min()
    }
}

/// Why the edge did not enroll a connector. `Unknown` covers both "no such code" and "wrong
/// MAC": a guesser learns nothing from the difference.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    /// No code with that id, or the MAC did not verify.
    #[error("unknown code or wrong proof")]
    Unknown,
    /// Already used.
    #[error("code already used (by connector {connector_id})")]
    Used {
        /// The connector it enrolled.
        connector_id: String,
    },
    /// Expired.
    #[error("code expired")]
    Expired,
    /// Revoked.
    #[error("code revoked")]
    Revoked,
    /// The CSR is unacceptable.
    #[error("{0}")]
    BadCsr(Error),
    /// The edge's state could not be read or written.
    #[error("{0}")]
    State(Error),
}

/// A redeemed code: the connector's certificate and what to tell it, with the keys to MAC the
/// answer.
#[derive(Debug)]
pub struct Redeemed {
    /// The code's keys (for the response MAC).
    pub keys: CodeKeys,
    /// The site.
    pub site: String,
    /// The connector id chosen.
    pub connector_id: String,
    /// The connector's new certificate, PEM.
    pub cert_pem: String,
    /// The tunnel CA, PEM.
    pub tunnel_ca_pem: String,
}

impl StateDir {
    /// Mints a code for a new connector of `site`, reached at `edge` (`host[:port]` of the
    /// edge's HTTPS listener), usable once within `lifetime`.
    pub fn mint_code(
        &self,
        site: &str,
        edge: &str,
        lifetime: std::time::Duration,
    ) -> Result<(EnrollmentCode, CodeRecord)> {
        self.mint(site, edge, lifetime, None)
    }

    /// Mints a renewal code for the live connector `connector_id` of `site`: the connector
    /// enrolls with it as with any code (a new key made at home), and gets a new certificate
    /// under the same id; the old certificate is revoked when, and only when, the code is
    /// redeemed, so the site keeps its connector until the new one is in place.
    pub fn mint_renewal_code(
        &self,
        site: &str,
        connector_id: &str,
        edge: &str,
        lifetime: std::time::Duration,
    ) -> Result<(EnrollmentCode, CodeRecord)> {
        let _lock = crate::lock::lock(self.root())?;
        let site = self.site(site)?;
        if !self
            .read_index()?
            .iter()
            .any(|e| e.is_live(Kind::Connector, &site.name, connector_id))
        {
            return Err(Error::NotIssued {
                kind: Kind::Connector,
                site: site.name,
                name: clip(connector_id),
            });
        }
        self.mint(&site.name, edge, lifetime, Some(connector_id.to_owned()))
    }

    fn mint(
        &self,
        site: &str,
        edge: &str,
        lifetime: std::time::Duration,
        renews: Option<String>,
    ) -> Result<(EnrollmentCode, CodeRecord)> {
        let _lock = crate::lock::lock(self.root())?;
        let site = self.site(site)?;
        let lifetime = Duration::try_from(lifetime)
            .ok()
            .filter(|l| *l > Duration::ZERO && *l <= Duration::days(365))
            .ok_or(Error::InvalidCode {
                reason: "the lifetime must be between a second and a year",
            })?;
        let code = EnrollmentCode::generate(edge)?;
        let keys = code.keys();
        let now = now();
        let record = CodeRecord {
            id: hex(&keys.id),
            site: site.name,
            sealed_key: hex(&xor(&keys.key, &self.seal_pad(&keys.id)?)),
            created: rfc3339(now),
            expires: rfc3339(now + lifetime),
            used_at: None,
            connector_id: None,
            revoked_at: None,
            renews,
        };
        let mut codes = self.codes()?;
        codes.push(record.clone());
        self.write_codes(codes)?;
        Ok((code, record))
    }

    /// Every code recorded (pending ones and those done within the last 30 days), oldest first.
    pub fn codes(&self) -> Result<Vec<CodeRecord>> {
        let path = self.root().join(CODES_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| Error::Json { path, source })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Revokes the pending code whose id starts with `prefix` (at least 6 hex digits), or every
    /// pending code of `site` when `prefix` is `None`. Returns the codes revoked.
    pub fn revoke_codes(&self, site: &str, prefix: Option<&str>) -> Result<Vec<CodeRecord>> {
        let _lock = crate::lock::lock(self.root())?;
        let site = self.site(site)?;
        let now = now();
        let mut codes = self.codes()?;
        let prefix = prefix.map(str::to_ascii_lowercase);
        if prefix.as_ref().is_some_and(|p| p.len() < 6) {
            return Err(Error::InvalidCode {
                reason: "name a code by at least 6 digits of its id",
            });
        }
        let mut revoked = Vec::new();
        for record in &mut codes {
            let matches = record.site == site.name
                && prefix.as_ref().is_none_or(|p| record.id.starts_with(p))
                && record.state(now) == CodeState::Pending;
            if matches {
                record.revoked_at = Some(rfc3339(now));
                revoked.push(record.clone());
            }
        }
        if revoked.is_empty() {
            return Err(Error::NoSuchCode {
                site: site.name,
                id: prefix.map(|p| clip(&p)),
            });
        }
        self.write_codes(codes)?;
        Ok(revoked)
    }

    /// Redeems a code for the connector's CSR: verifies the request's MAC (made over
    /// `mac_input` with the code's key), refuses a used, expired or revoked code, marks the code
    /// used, then issues the connector certificate (5 years) on the CSR's key.
    ///
    /// The code is marked used before the certificate is issued: a crash in between burns the
    /// code (mint another) rather than letting it enroll twice. The caller serialises calls.
    pub fn redeem_code(
        &self,
        code_id: &[u8; CODE_ID_LEN],
        mac_input: &[u8],
        mac: &[u8; 32],
        csr_pem: &str,
    ) -> Result<Redeemed, RedeemError> {
        let _lock = crate::lock::lock(self.root()).map_err(RedeemError::State)?;
        let now = now();
        let mut codes = self.codes().map_err(RedeemError::State)?;
        let id = hex(code_id);
        let Some(record) = codes.iter_mut().find(|r| r.id == id) else {
            return Err(RedeemError::Unknown);
        };
        let sealed = unhex32(&record.sealed_key).ok_or_else(|| {
            RedeemError::State(Error::CorruptState {
                path: self.root().join(CODES_FILE),
                reason: format!("sealed key of code {}", &record.id),
            })
        })?;
        let keys = CodeKeys {
            id: *code_id,
            key: xor(
                &sealed,
                &self.seal_pad(code_id).map_err(RedeemError::State)?,
            ),
        };
        if !keys.verify_request(mac_input, mac) {
            return Err(RedeemError::Unknown);
        }
        match record.state(now) {
            CodeState::Pending => {}
            CodeState::Used => {
                return Err(RedeemError::Used {
                    connector_id: record.connector_id.clone().unwrap_or_default(),
                });
            }
            CodeState::Expired => return Err(RedeemError::Expired),
            CodeState::Revoked => return Err(RedeemError::Revoked),
        }
        // Refuse a bad CSR before burning the code.
        crate::csr::check_pem(csr_pem).map_err(RedeemError::BadCsr)?;
        let site = self.site(&record.site).map_err(RedeemError::State)?;
        let index = self.read_index().map_err(RedeemError::State)?;
        let renews = record.renews.clone();
        let connector_id = match &renews {
            // The connector was revoked (or its site removed) since the code was minted:
            // the code went with it.
            Some(id)
                if !index
                    .iter()
                    .any(|e| e.is_live(Kind::Connector, &site.name, id)) =>
            {
                return Err(RedeemError::Revoked);
            }
            Some(id) => id.clone(),
            None => self.next_connector_id(&site, &index),
        };
        record.used_at = Some(rfc3339(now));
        record.connector_id = Some(connector_id.clone());
        self.write_codes(codes).map_err(RedeemError::State)?;
        let identity =
            Identity::connector(&site.name, &connector_id).map_err(RedeemError::State)?;
        let validity = Validity::days(CONNECTOR_DAYS);
        let certified = match renews {
            Some(_) => self.renew_connector_csr(&identity, csr_pem, validity, index),
            None => self.issue_connector_csr(&identity, csr_pem, validity, index),
        }
        .map_err(|e| match e {
            e @ Error::Csr { .. } => RedeemError::BadCsr(e),
            e => RedeemError::State(e),
        })?;
        let tunnel_ca_pem =
            sfs::read_to_string(&self.tunnel_ca_path()).map_err(RedeemError::State)?;
        Ok(Redeemed {
            keys,
            site: site.name,
            connector_id,
            cert_pem: certified.cert_pem,
            tunnel_ca_pem,
        })
    }

    /// The pad a code's MAC key is sealed with: HMAC-SHA256(session.key, label ‖ id).
    fn seal_pad(&self, id: &[u8; CODE_ID_LEN]) -> Result<[u8; 32]> {
        let path = self.session_key_path();
        let secret = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let tag = hmac::sign(&key, &[b"doorless-enroll/1 seal\0".as_slice(), id].concat());
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Writes the codes, dropping those done for longer than [`KEEP_DONE`].
    fn write_codes(&self, mut codes: Vec<CodeRecord>) -> Result<()> {
        let now = now();
        codes.retain(|r| {
            r.state(now) == CodeState::Pending || r.done_at().is_none_or(|t| now - t < KEEP_DONE)
        });
        let mut json = serde_json::to_vec_pretty(&codes).map_err(|source| Error::Json {
            path: self.root().join(CODES_FILE),
            source,
        })?;
        json.push(b'\n');
        sfs::write_atomic(&self.root().join(CODES_FILE), &json, SECRET)
    }
}

/// Checks `host` or `host:port` (a DNS name, an IPv4 address or a bracketed IPv6 address).
fn check_edge(edge: &str) -> Result<String> {
    let invalid = |reason: &'static str| Error::InvalidCode { reason };
    let edge = edge.trim().to_ascii_lowercase();
    let (host, port) = split_edge(&edge);
    if host.is_empty() {
        return Err(invalid("no edge host before the `/`"));
    }
    if port == Some(0) {
        return Err(invalid("the edge port must be 1-65535"));
    }
    let ok = host.parse::<std::net::IpAddr>().is_ok() || crate::normalize_hostname(host).is_ok();
    if !ok {
        return Err(invalid(
            "the edge must be a DNS name or an IP address, with an optional :port",
        ));
    }
    Ok(edge)
}

/// `host` (without IPv6 brackets) and the port, if any.
fn split_edge(edge: &str) -> (&str, Option<u16>) {
    if let Some(rest) = edge.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, "")) => (host, None),
            // Anything after `]` but a valid `:port` reads as port 0, which is refused.
            Some((host, tail)) => (
                host,
                Some(
                    tail.strip_prefix(':')
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0),
                ),
            ),
            None => ("", None),
        };
    }
    match edge.rsplit_once(':') {
        // Exactly one colon: host:port. More would be an unbracketed IPv6 address.
        Some((host, port)) if !host.contains(':') => (host, Some(port.parse().unwrap_or(0))),
        _ => (edge, None),
    }
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, (x, y)) in out.iter_mut().zip(a.iter().zip(b)) {
        *o = x ^ y;
    }
    out
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_short_typeable_and_round_trips() {
        let code = EnrollmentCode::generate("ha.example.com").unwrap();
        let text = code.encode();
        assert!(text.starts_with("ha.example.com/1-"), "{text}");
        assert_eq!(text.len(), "ha.example.com/".len() + 2 + 20 + 3);
        assert!(text.len() <= 64);
        assert_eq!(EnrollmentCode::parse(&text).unwrap(), code);
        // Typed sloppily: lower case, no dashes, look-alikes, a URL prefix, spaces around.
        let secret = text.rsplit_once("/1-").unwrap().1.replace('-', "");
        let sloppy = format!(
            "  https://HA.example.com/1-{} ",
            secret.to_lowercase().replace('0', "o").replace('1', "l")
        );
        assert_eq!(EnrollmentCode::parse(&sloppy).unwrap(), code);
        assert!(!format!("{code:?}").contains(&secret));
    }

    #[test]
    fn bad_codes_say_why() {
        for bad in [
            "",
            "ha.example.com",
            "ha.example.com/2-AAAAA-AAAAA-AAAAA-AAAAA",
            "ha.example.com/1-AAAAA-AAAAA-AAAAA-AAAA",
            "ha.example.com/1-AAAAA-AAAAA-AAAAA-AAAAU",
            "/1-AAAAA-AAAAA-AAAAA-AAAAA",
            "ha.example.com:0/1-AAAAA-AAAAA-AAAAA-AAAAA",
            "bad_host!/1-AAAAA-AAAAA-AAAAA-AAAAA",
        ] {
            assert!(
                matches!(EnrollmentCode::parse(bad), Err(Error::InvalidCode { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn ports_and_addresses() {
        let code = EnrollmentCode::parse("127.0.0.1:8443/1-AAAAA-AAAAA-AAAAA-AAAAA").unwrap();
        assert_eq!((code.host(), code.port()), ("127.0.0.1", 8443));
        let code = EnrollmentCode::parse("[::1]:9/1-AAAAA-AAAAA-AAAAA-AAAAA").unwrap();
        assert_eq!((code.host(), code.port()), ("::1", 9));
        let code = EnrollmentCode::parse("edge.test/1-AAAAA-AAAAA-AAAAA-AAAAA").unwrap();
        assert_eq!((code.host(), code.port()), ("edge.test", 443));
    }

    #[test]
    fn macs_bind_the_key_and_the_request() {
        let a = EnrollmentCode::generate("e.test").unwrap().keys();
        let b = EnrollmentCode::generate("e.test").unwrap().keys();
        assert_ne!(a.id, b.id);
        let mac = a.request_mac(b"csr");
        assert!(a.verify_request(b"csr", &mac));
        assert!(!b.verify_request(b"csr", &mac));
        assert!(!a.verify_request(b"csr2", &mac));
        let answer = a.response_mac(&mac, b"cert");
        assert!(a.verify_response(&mac, b"cert", &answer));
        assert!(!a.verify_response(&[0; 32], b"cert", &answer));
        assert!(!b.verify_response(&mac, b"cert", &answer));
    }
}
