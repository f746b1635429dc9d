//! Packaging a device certificate for phones and browsers: PKCS#12 (`.p12`) and its password.
//!
//! # Why legacy is the default
//!
//! OpenSSL 3's default PKCS#12 (PBES2/AES-256/SHA-256) fails to import, often with a misleading
//! "wrong password", on many iOS and macOS versions and on Android 13 and older. The profile that
//! imports everywhere is the old one: pbeWithSHAAnd3-KeyTripleDES-CBC for *both* the shrouded
//! key bag and the encrypted certificate bag (never RC2-40), an HMAC-SHA1 MAC with an 8-byte salt,
//! 2048 iterations, a non-empty password and exactly one identity. [`P12Profile::Modern`]
//! (PBES2 AES-256-CBC, PBKDF2-HMAC-SHA256, HMAC-SHA256 MAC) is there for platforms known to
//! read it (Windows 10 1709+, Android 14+, OpenSSL 3, Firefox).
//!
//! The weak legacy ciphers matter less than they seem: the password [`generate_password`] makes
//! carries about 99 bits, so no key derivation needs to slow down a guesser, and the file is a
//! transport format that is deleted once imported.

use std::fmt;

use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
    PrivateKeyChain,
};

use crate::error::{Error, Result};

/// Which PKCS#12 encryption to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum P12Profile {
    /// 3DES for key and certificate bags, SHA-1 MAC, 2048 iterations: imports on every iOS,
    /// macOS, Android (old and new), Windows and Firefox.
    #[default]
    Legacy,
    /// PBES2 AES-256-CBC with PBKDF2-HMAC-SHA256, HMAC-SHA256 MAC, 10,000 iterations: for
    /// platforms known to read it; old Apple and Android devices refuse it.
    Modern,
}

impl P12Profile {
    /// Key-derivation and MAC iterations: 2048 for legacy (what old importers are tested with),
    /// 10,000 for modern.
    pub fn iterations(self) -> u32 {
        match self {
            Self::Legacy => LEGACY_ITERATIONS,
            Self::Modern => MODERN_ITERATIONS,
        }
    }
}

impl fmt::Display for P12Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Legacy => "legacy (3DES, SHA-1 MAC)",
            Self::Modern => "modern (AES-256, SHA-256 MAC)",
        })
    }
}

const LEGACY_ITERATIONS: u32 = 2048;
const MODERN_ITERATIONS: u32 = 10_000;

/// A PKCS#12 file holding exactly one identity: the private key (PKCS#8 DER) with the device
/// certificate and, after it, the CA certificate that signed it (not an intermediate: device
/// certificates are signed directly by the site CA; some importers like to see the issuer).
///
/// `friendly_name` (the device name) labels the key bag, which is what phones and Keychain show.
/// The certificate bags carry their subject as friendly name (a choice of `p12-keystore`).
///
/// The password must be non-empty (Apple's importer fails on empty ones) and printable ASCII
/// (importers disagree on how to encode anything else, which surfaces as "wrong password").
pub fn export_p12(
    friendly_name: &str,
    cert_der: &[u8],
    key_pkcs8_der: &[u8],
    ca_der: &[u8],
    password: &str,
    profile: P12Profile,
) -> Result<Vec<u8>> {
    check_password(password)?;
    let p12 = |e: p12_keystore::error::Error| Error::Pkcs12 {
        reason: e.to_string(),
    };
    let key = PrivateKey::from_der(key_pkcs8_der).map_err(|_| Error::Key {
        path: None,
        reason: "not a PKCS#8 private key".into(),
    })?;
    let leaf = Certificate::from_der(cert_der).map_err(p12)?;
    let ca = Certificate::from_der(ca_der).map_err(p12)?;
    // The local key id ties the key bag to the leaf's certificate bag; the certificate's
    // fingerprint is unique and stable.
    let local_key_id = crate::fingerprint(cert_der).to_vec();
    let mut store = KeyStore::new();
    store.add_entry(
        friendly_name,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, [leaf, ca])),
    );
    let (encryption, mac) = match profile {
        // Never `PbeWithShaAnd40BitRc4Cbc`: despite its name it writes RC2-40.
        P12Profile::Legacy => (
            EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
            MacAlgorithm::HmacSha1,
        ),
        P12Profile::Modern => (
            EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
            MacAlgorithm::HmacSha256,
        ),
    };
    store
        .writer(password)
        .encryption_algorithm(encryption)
        .encryption_iterations(profile.iterations())
        .mac_algorithm(mac)
        .mac_iterations(profile.iterations())
        .write()
        .map_err(p12)
}

/// Refuses passwords that some importer would choke on.
pub fn check_password(password: &str) -> Result<()> {
    if password.is_empty() {
        return Err(Error::BadPassword {
            reason: "empty (iOS and macOS cannot import a .p12 without a password)",
        });
    }
    if !password.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(Error::BadPassword {
            reason: "only printable ASCII is allowed (importers encode other characters \
                     differently and then report a wrong password)",
        });
    }
    Ok(())
}

/// Lowercase letters and digits without the look-alikes 0/o, 1/l/i: easy to type on a phone.
const ALPHABET: &[u8; 31] = b"23456789abcdefghjkmnpqrstuvwxyz";
const GROUPS: usize = 4;
const GROUP_LEN: usize = 5;

/// A random password for a `.p12`: four groups of five characters from a 31-character
/// unambiguous alphabet, e.g. `k7m2q-x9aby-4hcdr-tw3ne` (20 × log2(31) ≈ 99 bits).
pub fn generate_password() -> Result<String> {
    let mut out = String::with_capacity(GROUPS * (GROUP_LEN + 1));
    let mut pool: Vec<u8> = Vec::new();
    for group in 0..GROUPS {
        if group > 0 {
            out.push('-');
        }
        let mut taken = 0;
        while taken < GROUP_LEN {
            if pool.is_empty() {
                pool = crate::random_bytes::<32>()?.to_vec();
            }
            let byte = pool.pop().unwrap_or_default();
            // Rejection sampling: 248 = 8 × 31, so the accepted bytes map uniformly.
            if usize::from(byte) < ALPHABET.len() * 8 {
                out.push(char::from(ALPHABET[usize::from(byte) % ALPHABET.len()]));
                taken += 1;
            }
        }
    }
    Ok(out)
}
