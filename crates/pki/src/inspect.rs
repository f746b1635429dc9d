//! Reading facts out of certificates that are not identities (those live in `identity`).

use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::hex;
use crate::{Error, Result};

/// The `notAfter` of a DER certificate: when it stops being valid.
pub fn cert_not_after(der: &[u8]) -> Result<OffsetDateTime> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| Error::Certificate {
        path: None,
        reason: "not a DER X.509 certificate".into(),
    })?;
    Ok(cert.validity().not_after.to_datetime())
}

/// The serial number of a DER certificate, lowercase hex of its bytes as encoded.
pub fn cert_serial(der: &[u8]) -> Result<String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| Error::Certificate {
        path: None,
        reason: "not a DER X.509 certificate".into(),
    })?;
    Ok(hex(cert.tbs_certificate.raw_serial()))
}
