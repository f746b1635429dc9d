//! What a device's certificate signing request may ask for.
//!
//! Only the public key of a CSR ends up in the certificate; this module decides whether that key
//! is acceptable and whether the request asks for anything doorless would not silently replace.

use rcgen::{
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256, PublicKeyData,
    SignatureAlgorithm,
};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519, OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_EXTENDED_KEY_USAGE,
    OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::error::{Error, Result};

/// RSA keys below this are refused (NIST deprecated 1024-bit RSA long ago).
pub const MIN_RSA_BITS: usize = 2048;
/// RSA keys above this are refused: every handshake would verify a huge signature.
pub const MAX_RSA_BITS: usize = 8192;

/// The public key of an accepted CSR, with the algorithm that writes its SubjectPublicKeyInfo.
#[derive(Debug)]
pub(crate) struct CsrKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

fn refuse(reason: impl Into<String>) -> Error {
    Error::Csr {
        reason: reason.into(),
    }
}

/// Checks a DER CSR's key and requested extensions (not its signature: rcgen does that).
/// Returns the key to certify and the CSR's SubjectPublicKeyInfo DER, which the certificate's
/// must equal.
pub(crate) fn check(der: &[u8]) -> Result<(CsrKey, Vec<u8>)> {
    let (rest, csr) = X509CertificationRequest::from_der(der)
        .map_err(|_| refuse("not a PKCS#10 certificate signing request"))?;
    if !rest.is_empty() {
        return Err(refuse("trailing data after the request"));
    }
    let info = &csr.certification_request_info;
    for attribute in info.iter_attributes() {
        if let ParsedCriAttribute::ExtensionRequest(request) = attribute.parsed_attribute() {
            for ext in &request.extensions {
                let allowed = [
                    OID_X509_EXT_SUBJECT_ALT_NAME,
                    OID_X509_EXT_KEY_USAGE,
                    OID_X509_EXT_EXTENDED_KEY_USAGE,
                    OID_X509_EXT_BASIC_CONSTRAINTS,
                ];
                if !allowed.contains(&ext.oid) {
                    return Err(refuse(format!(
                        "it requests extension {} which doorless does not issue; a CSR may only \
                         request subjectAltName, keyUsage, extendedKeyUsage and basicConstraints \
                         (and those are replaced by doorless's device profile anyway)",
                        ext.oid
                    )));
                }
            }
        }
    }

    let spki = &info.subject_pki;
    let raw = spki.subject_public_key.data.to_vec();
    let oid = &spki.algorithm.algorithm;
    let accepted = "accepted keys: ECDSA P-256 (recommended) or P-384, RSA 2048-8192 bits, Ed25519";
    let alg: &'static SignatureAlgorithm = if *oid == OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err(refuse("malformed RSA public key"));
        };
        let bits = bit_len(rsa.modulus);
        if bits < MIN_RSA_BITS {
            return Err(refuse(format!(
                "weak key: RSA-{bits} (at least {MIN_RSA_BITS} bits required; {accepted})"
            )));
        }
        if bits > MAX_RSA_BITS {
            return Err(refuse(format!(
                "RSA-{bits} is larger than {MAX_RSA_BITS} bits; {accepted}"
            )));
        }
        let e = trim(rsa.exponent);
        let odd = e.last().is_some_and(|b| b & 1 == 1);
        if !odd || (e.len() == 1 && e[0] < 3) {
            return Err(refuse(
                "RSA public exponent is not an odd number of at least 3",
            ));
        }
        &PKCS_RSA_SHA256
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        // Uncompressed points only (0x04 || X || Y): what every TLS stack expects.
        match curve {
            Some(c) if c == OID_EC_P256 && raw.len() == 65 && raw[0] == 4 => {
                &PKCS_ECDSA_P256_SHA256
            }
            Some(c) if c == OID_NIST_EC_P384 && raw.len() == 97 && raw[0] == 4 => {
                &PKCS_ECDSA_P384_SHA384
            }
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => {
                return Err(refuse("EC public key is not an uncompressed point"));
            }
            Some(c) => {
                return Err(refuse(format!(
                    "EC curve {c} is not accepted (iOS refuses P-521; {accepted})"
                )));
            }
            None => return Err(refuse("EC public key without a named curve")),
        }
    } else if *oid == OID_SIG_ED25519 {
        if raw.len() != 32 || spki.algorithm.parameters.is_some() {
            return Err(refuse("malformed Ed25519 public key"));
        }
        &PKCS_ED25519
    } else {
        return Err(refuse(format!(
            "key algorithm {oid} is not accepted; {accepted}"
        )));
    };
    Ok((CsrKey { raw, alg }, spki.raw.to_vec()))
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn bit_len(bytes: &[u8]) -> usize {
    let bytes = trim(bytes);
    match bytes.first() {
        Some(&first) => bytes.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// [`check`] on a PEM CSR, plus its signature: what [`crate::Ca::issue_client_csr`] accepts.
pub(crate) fn check_pem(csr_pem: &str) -> Result<(CsrKey, Vec<u8>)> {
    use rcgen::CertificateSigningRequestParams;
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject as _;
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|_| refuse("no CERTIFICATE REQUEST section found (expected a PEM CSR)"))?;
    let checked = check(&der)?;
    // rcgen checks the signature (and refuses extensions it does not know, too).
    CertificateSigningRequestParams::from_der(&der).map_err(|e| {
        refuse(match e {
            rcgen::Error::InvalidCertificationRequestSignature => {
                "the signature does not verify (damaged or forged CSR)".into()
            }
            other => other.to_string(),
        })
    })?;
    Ok(checked)
}
