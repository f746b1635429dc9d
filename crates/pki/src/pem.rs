//! PEM loading for the binaries, on rustls-pki-types (rustls-pemfile is unmaintained).

use std::path::Path;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{Error, Result};

/// Every certificate in a PEM file, in file order; an error if there is none.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    parse_certs(&read_pem(path)?).map_err(|e| e.in_file(path))
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    parse_key(&read_pem(path)?).map_err(|e| e.in_file(path))
}

/// Every certificate in a PEM string, in order; an error if there is none.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Certificate {
            path: None,
            reason: pem_reason(&e),
        })?;
    if certs.is_empty() {
        return Err(Error::Certificate {
            path: None,
            reason: "no CERTIFICATE section found".into(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM string.
pub fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| Error::Key {
        path: None,
        reason: match e {
            pem::Error::NoItemsFound => "no PRIVATE KEY section found".into(),
            other => pem_reason(&other),
        },
    })
}

fn read_pem(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Describes a PEM error without quoting file contents: for key files the contents are secret.
fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "PEM section without END line".into(),
        pem::Error::IllegalSectionStart { .. } => "malformed PEM BEGIN line".into(),
        pem::Error::Base64Decode(_) => "PEM body is not valid base64".into(),
        pem::Error::NoItemsFound => "nothing found".into(),
        pem::Error::SectionTooLarge => "PEM section too large".into(),
        other => format!("{other}"),
    }
}
