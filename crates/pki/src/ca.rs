//! Certificate authorities and the certificates they issue.
//!
//! Policy lives here, not in callers: every certificate gets a random serial, an explicit
//! validity and exactly the key usages of its role, so no caller can forget one.

use std::fmt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, PKCS_RSA_SHA256, PublicKeyData, RevokedCertParams, RsaKeySize, SanType,
    SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};
use crate::identity::{Identity, fingerprint, normalize_server_name};
use crate::pem::parse_certs;

/// The key algorithm of a new certificate.
///
/// ECDSA P-256 works on every device kind we target (iOS rejects P-521, Apple's TLS stack does
/// not offer Ed25519); RSA-2048 is there for very old devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyType {
    #[default]
    EcdsaP256,
    Rsa2048,
}

/// The validity period of a new certificate.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From one hour ago (so a peer whose clock is a little behind accepts it) until `days`
    /// from now; whole seconds, as certificates cannot express more.
    pub fn days(days: u32) -> Self {
        let now = now();
        Self {
            not_before: now - Duration::hours(1),
            // Saturating: an absurd `days` is refused by the checks of whoever issues (and
            // capped at the CA's expiry by `Ca`), not a panic here.
            not_after: now.saturating_add(Duration::days(days.into())),
        }
    }

    /// Both bounds truncated to whole seconds, checked to be in order.
    fn checked(self) -> Result<Self> {
        let truncate = |t: OffsetDateTime| t.replace_nanosecond(0).unwrap_or(t);
        let (not_before, not_after) = (truncate(self.not_before), truncate(self.not_after));
        if not_after <= not_before {
            return Err(Error::InvalidValidity);
        }
        Ok(Self {
            not_before,
            not_after,
        })
    }
}

/// The shortest validity `StateDir` issues a device certificate for: one day. Shorter would be
/// a certificate that dies before anyone has installed it (`--days 0`: already expired).
pub const MIN_VALIDITY_DAYS: i64 = 1;

/// Default lifetime of the CAs `StateDir::init` makes: ten years, as CAs live as long as the
/// installation and rotating one means re-enrolling everything.
pub const CA_VALIDITY_DAYS: u32 = 3652;

/// A CA certificate with its signing key.
pub struct Ca {
    cert_pem: String,
    cert_der: Vec<u8>,
    /// The CA's own `notAfter`: nothing it signs is valid for longer.
    not_after: OffsetDateTime,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new self-signed ECDSA P-256 CA (path length 0: it signs leaves only).
    pub fn generate(common_name: &str, validity: Validity) -> Result<Ca> {
        let validity = validity.checked()?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let cert = params.self_signed(&key)?;
        // Go through the same path as a loaded CA so that fresh and reloaded CAs sign
        // identically (issuer DN and key identifier taken from the certificate itself).
        Self::from_cert_and_key(cert.pem(), cert.der().to_vec(), key)
    }

    /// A CA from its PEM certificate and PEM private key, as stored on disk.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let der = parse_certs(cert_pem)?
            .into_iter()
            .next()
            .ok_or_else(|| Error::Certificate {
                path: None,
                reason: "no certificate".into(),
            })?;
        let key = KeyPair::from_pem(key_pem).map_err(|e| Error::Key {
            path: None,
            reason: e.to_string(),
        })?;
        Self::from_cert_and_key(cert_pem.to_owned(), der.to_vec(), key)
    }

    /// [`Ca::from_pem`] from files; errors name the file at fault.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Ca> {
        let cert_pem = crate::fs::read_to_string(cert_path)?;
        let key_pem = crate::fs::read_to_string(key_path)?;
        Self::from_pem(&cert_pem, &key_pem).map_err(|e| match e {
            Error::Key { .. } | Error::KeyMismatch { .. } => e.in_file(key_path),
            other => other.in_file(cert_path),
        })
    }

    fn from_cert_and_key(cert_pem: String, cert_der: Vec<u8>, key: KeyPair) -> Result<Ca> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(&cert_der).map_err(|e| Error::Certificate {
                path: None,
                reason: e.to_string(),
            })?;
        if !cert.is_ca() {
            return Err(Error::NotCa { path: None });
        }
        // A mismatched key would sign certificates that verify nowhere; fail at load instead.
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(Error::KeyMismatch { path: None });
        }
        let not_after = cert.validity().not_after.to_datetime();
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der.as_slice()), key)?;
        Ok(Ca {
            cert_pem,
            cert_der,
            not_after,
            issuer,
        })
    }

    /// The CA certificate in PEM, as given or generated.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// When the CA itself expires. Certificates it issues never outlive it: a longer
    /// validity is capped here (a chain is only valid while every certificate in it is).
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The CA private key as PKCS#8 PEM. Secret: write it with mode 0600.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A TLS client certificate for `identity`, signed directly by this CA (no intermediate:
    /// the iOS app does not send one), with a fresh key.
    pub fn issue_client(
        &self,
        identity: &Identity,
        validity: Validity,
        key: KeyType,
    ) -> Result<Issued> {
        let uri = identity.to_uri();
        let mut params = self.leaf_params(&identity.name, validity)?;
        params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, generate_key(key)?)
    }

    /// A TLS server certificate (ECDSA P-256) for `names`: DNS SANs, or IP SANs for names that
    /// parse as IP addresses. The CN is the first name.
    pub fn issue_server(&self, names: &[String], validity: Validity) -> Result<Issued> {
        let names = names
            .iter()
            .map(|n| normalize_server_name(n))
            .collect::<Result<Vec<_>>>()?;
        let first = names.first().ok_or(Error::NoHostnames)?;
        let mut params = self.leaf_params(first, validity)?;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName(n.as_str().try_into()?)),
            })
            .collect::<Result<_>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, generate_key(KeyType::EcdsaP256)?)
    }

    /// A TLS client certificate for `identity` on the public key of a device's own CSR (PEM),
    /// so the private key never leaves the device. The CSR must be well signed, hold an
    /// acceptable key (ECDSA P-256 or P-384, RSA 2048 to 8192 bits, Ed25519) and request no
    /// extension beyond subjectAltName, keyUsage, extendedKeyUsage and basicConstraints.
    /// Everything it asks for (subject, SANs, key usages, CA flag) is ignored and replaced by
    /// the same policy as [`Ca::issue_client`].
    pub fn issue_client_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        validity: Validity,
    ) -> Result<Certified> {
        let (key, spki_der) = crate::csr::check_pem(csr_pem)?;
        let uri = identity.to_uri();
        let mut params = self.leaf_params(&identity.name, validity)?;
        params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        // Only the public key is taken from the CSR, with the key algorithm read from the key
        // itself: rcgen's `PublicKey` takes it from the CSR's *signature* algorithm, which would
        // label a P-384 key signed with SHA-256 as P-256.
        let certified = self.sign(&params, &key)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&certified.cert_der).map_err(|e| {
            Error::Certificate {
                path: None,
                reason: e.to_string(),
            }
        })?;
        if cert.public_key().raw != spki_der.as_slice() {
            return Err(Error::Csr {
                reason: "internal check failed: the certificate's key differs from the CSR's"
                    .into(),
            });
        }
        Ok(certified)
    }

    /// A CRL of this CA listing `revoked` (serial bytes and revocation time), valid from now for
    /// `days`, numbered `crl_number`. Returns it in PEM.
    pub fn crl_pem(
        &self,
        revoked: &[(Vec<u8>, OffsetDateTime)],
        crl_number: u64,
        days: u32,
    ) -> Result<String> {
        let this_update = now();
        let params = CertificateRevocationListParams {
            this_update,
            next_update: this_update.saturating_add(Duration::days(days.max(1).into())),
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at)| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: *at,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// What every leaf shares: CN, not a CA, digitalSignature only, AKI, random serial, and the
    /// validity, capped at the CA's own expiry.
    fn leaf_params(&self, common_name: &str, validity: Validity) -> Result<CertificateParams> {
        if self.not_after <= now() {
            return Err(Error::CaExpired {
                not_after: self.not_after,
            });
        }
        let validity = Validity {
            not_before: validity.not_before,
            not_after: validity.not_after.min(self.not_after),
        }
        .checked()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        // Explicit CA:false so no verifier can mistake a leaf for an issuer.
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        Ok(params)
    }

    fn issue(&self, params: CertificateParams, key: KeyPair) -> Result<Issued> {
        let Certified {
            cert_pem,
            cert_der,
            serial,
            not_after,
            fingerprint,
        } = self.sign(&params, &key)?;
        Ok(Issued {
            cert_pem,
            key_pem: key.serialize_pem(),
            cert_der,
            key_der: key.serialize_der(),
            serial,
            not_after,
            fingerprint,
        })
    }

    fn sign(&self, params: &CertificateParams, key: &impl PublicKeyData) -> Result<Certified> {
        let cert = params.signed_by(key, &self.issuer)?;
        let cert_der = cert.der().to_vec();
        Ok(Certified {
            cert_pem: cert.pem(),
            serial: params
                .serial_number
                .as_ref()
                .map(SerialNumber::to_bytes)
                .unwrap_or_default(),
            not_after: params.not_after,
            fingerprint: fingerprint(&cert_der),
            cert_der,
        })
    }
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("fingerprint", &crate::fingerprint_hex(&self.cert_der))
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A freshly issued certificate with its new private key.
pub struct Issued {
    pub cert_pem: String,
    /// PKCS#8 PEM. Secret.
    pub key_pem: String,
    pub cert_der: Vec<u8>,
    /// PKCS#8 DER. Secret.
    pub key_der: Vec<u8>,
    /// The serial number as encoded: 16 bytes, positive.
    pub serial: Vec<u8>,
    pub not_after: OffsetDateTime,
    /// SHA-256 of `cert_der`.
    pub fingerprint: [u8; 32],
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .field("key_der", &"<redacted>")
            .field("serial", &crate::identity::hex(&self.serial))
            .field("not_after", &self.not_after)
            .field("fingerprint", &crate::identity::hex(&self.fingerprint))
            .finish_non_exhaustive()
    }
}

/// A certificate issued for a key this crate never saw (from a CSR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certified {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    /// The serial number as encoded: 16 bytes, positive.
    pub serial: Vec<u8>,
    pub not_after: OffsetDateTime,
    /// SHA-256 of `cert_der`.
    pub fingerprint: [u8; 32],
}

fn common_name_dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn generate_key(key: KeyType) -> Result<KeyPair> {
    Ok(match key {
        KeyType::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?,
        KeyType::Rsa2048 => KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)?,
    })
}

/// 16 random bytes, top bit clear so the INTEGER is positive, first byte non-zero so DER keeps
/// all 16 bytes (a leading zero byte would be stripped and the serial would shrink).
///
/// Never rcgen's default, which derives the serial from the public key: re-issuing for the same
/// key would repeat it, and revoking one certificate would revoke both.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = crate::random_bytes::<16>()?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}
