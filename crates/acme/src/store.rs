//! What survives a restart: the ACME account and each site's certificate, in a directory the
//! caller owns (the edge uses `<state>/acme/`).
//!
//! ```text
//! <dir>/                          0700
//!   accounts/<directory id>.json  0600  account key + URL, one per CA directory URL
//!   sites/<site>/cert.pem         0600  certificate chain (leaf first), then the private key
//!   sites/<site>/meta.json        0600  directory, issued_at, renew_after, leaf serial
//! ```
//! Every file is replaced atomically (temporary sibling, fsync, rename, fsync of the directory),
//! so a crash leaves the old file or the new one. Key and chain share one file because they
//! must change together. `meta.json` is written after `cert.pem` and names the leaf's serial:
//! a `meta.json` that names another serial is stale (a crash between the two writes) and is
//! ignored; the certificate itself is the truth for names and validity.
//!
//! This module does blocking file I/O; async callers run it on the blocking pool.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ::time::OffsetDateTime;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::Error;

const SECRET: u32 = 0o600;
const DIR: u32 = 0o700;

/// The state directory of the ACME engine.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A site's stored certificate, parsed and checked (the key matches the leaf).
#[derive(Clone)]
pub struct StoredCert {
    /// The leaf's DNS names, lowercase, in certificate order.
    pub hostnames: Vec<String>,
    /// The leaf's `notBefore`.
    pub not_before: SystemTime,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
    /// The leaf's serial number, lowercase hex.
    pub serial: String,
    /// The directory URL it was ordered from; `None` for an imported certificate.
    pub directory: Option<String>,
    /// When we received it.
    pub issued_at: Option<SystemTime>,
    /// The renewal time chosen when it was stored (jitter included), if any.
    pub renew_after: Option<SystemTime>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) certified: Arc<CertifiedKey>,
}

impl std::fmt::Debug for StoredCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCert")
            .field("hostnames", &self.hostnames)
            .field("not_after", &self.not_after)
            .field("serial", &self.serial)
            .field("directory", &self.directory)
            .finish_non_exhaustive()
    }
}

impl StoredCert {
    /// The chain and key, ready for a rustls resolver.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// True when the certificate names every one of `hostnames` (exact names; no wildcards
    /// are ever ordered).
    pub fn covers(&self, hostnames: &[String]) -> bool {
        hostnames
            .iter()
            .all(|h| self.hostnames.iter().any(|n| n.eq_ignore_ascii_case(h)))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    serial: String,
    directory: Option<String>,
    #[serde(with = "::time::serde::rfc3339")]
    issued_at: OffsetDateTime,
    #[serde(with = "::time::serde::rfc3339::option", default)]
    renew_after: Option<OffsetDateTime>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct StoredAccount {
    pub(crate) directory: String,
    pub(crate) contact: String,
    pub(crate) credentials: instant_acme::AccountCredentials,
}

impl Store {
    /// Opens (creating it, 0700, if needed) the state directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, Error> {
        let dir = dir.into();
        for sub in [dir.clone(), dir.join("accounts"), dir.join("sites")] {
            create_dir_all(&sub)?;
        }
        Ok(Self { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The stored certificate of `site`, if any. A missing certificate is `Ok(None)`; a
    /// present but unusable one is an error (the caller decides whether to order anew).
    pub fn load_site(&self, site: &str) -> Result<Option<StoredCert>, Error> {
        let dir = self.site_dir(site)?;
        let cert_path = dir.join("cert.pem");
        let pem = match fs::read(&cert_path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::storage(&cert_path, e)),
        };
        let mut cert = parse_bundle(&pem).map_err(|reason| Error::corrupt(&cert_path, reason))?;
        let meta_path = dir.join("meta.json");
        match fs::read(&meta_path) {
            Ok(bytes) => match serde_json::from_slice::<Meta>(&bytes) {
                Ok(meta) if meta.serial == cert.serial => {
                    cert.directory = meta.directory;
                    cert.issued_at = Some(meta.issued_at.into());
                    cert.renew_after = meta.renew_after.map(Into::into);
                }
                // Stale (crash between the two writes) or unreadable: the certificate alone
                // still tells names and validity.
                Ok(_) | Err(_) => {
                    tracing::warn!(path = %meta_path.display(), "ignoring stale or unreadable ACME metadata");
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::storage(&meta_path, e)),
        }
        Ok(Some(cert))
    }

    /// Stores a certificate obtained elsewhere (e.g. from another ACME client) for `site`.
    /// It is served and renewed like an ordered one.
    pub fn import(&self, site: &str, chain_pem: &str, key_pem: &str) -> Result<StoredCert, Error> {
        self.save_site(site, chain_pem, key_pem, None, None)
    }

    pub(crate) fn save_site(
        &self,
        site: &str,
        chain_pem: &str,
        key_pem: &str,
        directory: Option<&str>,
        renew_after: Option<SystemTime>,
    ) -> Result<StoredCert, Error> {
        let dir = self.site_dir(site)?;
        let mut bundle = String::with_capacity(chain_pem.len() + key_pem.len() + 1);
        bundle.push_str(chain_pem.trim_end());
        bundle.push('\n');
        bundle.push_str(key_pem.trim_end());
        bundle.push('\n');
        // Check before writing: never replace a working certificate with a broken one.
        let mut cert = parse_bundle(bundle.as_bytes()).map_err(Error::BadCertificate)?;
        create_dir_all(&dir)?;
        write_atomic(&dir.join("cert.pem"), bundle.as_bytes())?;
        let now = OffsetDateTime::now_utc();
        let meta = Meta {
            serial: cert.serial.clone(),
            directory: directory.map(str::to_owned),
            issued_at: now,
            renew_after: renew_after.map(Into::into),
        };
        let meta_json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| Error::corrupt(dir.join("meta.json"), e.to_string()))?;
        write_atomic(&dir.join("meta.json"), &meta_json)?;
        cert.directory = meta.directory;
        cert.issued_at = Some(now.into());
        cert.renew_after = renew_after;
        Ok(cert)
    }

    pub(crate) fn load_account(&self, directory: &str) -> Result<Option<StoredAccount>, Error> {
        let path = self.account_path(directory);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::storage(&path, e)),
        };
        let account: StoredAccount =
            serde_json::from_slice(&bytes).map_err(|e| Error::corrupt(&path, e.to_string()))?;
        if account.directory != directory {
            return Err(Error::corrupt(
                &path,
                "account belongs to another directory",
            ));
        }
        Ok(Some(account))
    }

    pub(crate) fn save_account(&self, account: &StoredAccount) -> Result<(), Error> {
        let path = self.account_path(&account.directory);
        let json =
            serde_json::to_vec_pretty(account).map_err(|e| Error::corrupt(&path, e.to_string()))?;
        write_atomic(&path, &json)
    }

    /// Forgets the account of `directory` (the CA no longer knows it).
    pub(crate) fn remove_account(&self, directory: &str) -> Result<(), Error> {
        let path = self.account_path(directory);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::storage(&path, e)),
        }
    }

    fn account_path(&self, directory: &str) -> PathBuf {
        // One account per CA: switching staging <-> production keeps both. The name is a hash
        // because a URL is not a file name.
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, directory.as_bytes());
        let id = hex(&digest.as_ref()[..8]);
        self.dir.join("accounts").join(format!("{id}.json"))
    }

    fn site_dir(&self, site: &str) -> Result<PathBuf, Error> {
        check_site_name(site)?;
        Ok(self.dir.join("sites").join(site))
    }
}

/// A site name is a directory name: `[A-Za-z0-9._-]{1,64}`, not starting with `.`.
pub(crate) fn check_site_name(site: &str) -> Result<(), Error> {
    let usable = !site.is_empty()
        && site.len() <= 64
        && !site.starts_with('.')
        && site
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !usable {
        return Err(Error::SiteName(site.to_owned()));
    }
    Ok(())
}

/// Parses `cert.pem`: certificates (leaf first) and one private key matching the leaf.
fn parse_bundle(pem: &[u8]) -> Result<StoredCert, String> {
    let mut chain = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        chain.push(cert.map_err(|e| format!("bad PEM certificate: {e}"))?);
    }
    let leaf = chain.first().ok_or("no certificate")?.clone();
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key: {e}"))?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    // `from_der` also checks that the key belongs to the leaf.
    let certified = CertifiedKey::from_der(chain.clone(), key, &provider)
        .map_err(|e| format!("key does not fit the certificate: {e}"))?;
    let (_, parsed) =
        X509Certificate::from_der(&leaf).map_err(|e| format!("bad leaf certificate: {e}"))?;
    let validity = parsed.validity();
    let hostnames = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(StoredCert {
        hostnames,
        not_before: validity.not_before.to_datetime().into(),
        not_after: validity.not_after.to_datetime().into(),
        serial: hex(parsed.tbs_certificate.raw_serial()),
        directory: None,
        issued_at: None,
        renew_after: None,
        chain,
        certified: Arc::new(certified),
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut random = [0u8; 8];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| Error::Crypto("no randomness".into()))?;
    // Random so that a temp file left by a crash never blocks a later write.
    let tmp = dir.join(format!(".{name}.tmp-{}", hex(&random)));
    let written = write_new(&tmp, contents).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(Error::storage(path, e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::storage(dir, e))
}

fn write_new(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // The mode is set at creation: a key is never readable by others, not even briefly.
        options.mode(SECRET);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn create_dir_all(path: &Path) -> Result<(), Error> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR);
    }
    builder.create(path).map_err(|e| Error::storage(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn self_signed(names: &[&str]) -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let cert = params.self_signed(&key)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    #[test]
    fn import_then_load_round_trips_with_private_modes() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let store = Store::open(tmp.path().join("acme"))?;
        assert!(store.load_site("home")?.is_none());
        let (chain, key) = self_signed(&["Home.Example", "alt.example"])?;
        let saved = store.import("home", &chain, &key)?;
        let loaded = store.load_site("home")?.ok_or("not stored")?;
        assert_eq!(loaded.serial, saved.serial);
        assert_eq!(loaded.hostnames, vec!["home.example", "alt.example"]);
        assert!(loaded.covers(&["home.example".into(), "ALT.example".into()]));
        assert!(!loaded.covers(&["other.example".into()]));
        assert_eq!(loaded.directory, None);
        assert!(loaded.issued_at.is_some());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: PathBuf| fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode(tmp.path().join("acme"))?, 0o700);
            assert_eq!(mode(tmp.path().join("acme/sites/home/cert.pem"))?, 0o600);
            assert_eq!(mode(tmp.path().join("acme/sites/home/meta.json"))?, 0o600);
        }
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(tmp.path().join("acme/sites/home"))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        Ok(())
    }

    #[test]
    fn broken_input_is_refused_and_nothing_is_replaced() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let store = Store::open(tmp.path())?;
        let (chain, key) = self_signed(&["a.example"])?;
        let (_, other_key) = self_signed(&["a.example"])?;
        let good = store.import("s", &chain, &key)?;
        assert!(matches!(
            store.import("s", &chain, &other_key),
            Err(Error::BadCertificate(_))
        ));
        assert!(matches!(
            store.import("s", "junk", &key),
            Err(Error::BadCertificate(_))
        ));
        assert_eq!(store.load_site("s")?.ok_or("gone")?.serial, good.serial);
        for bad in ["", "..", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(
                matches!(store.load_site(bad), Err(Error::SiteName(_))),
                "{bad}"
            );
        }
        fs::write(tmp.path().join("sites/s/cert.pem"), "garbage")?;
        assert!(matches!(store.load_site("s"), Err(Error::Corrupt { .. })));
        Ok(())
    }

    #[test]
    fn stale_meta_is_ignored() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let store = Store::open(tmp.path())?;
        let (chain, key) = self_signed(&["a.example"])?;
        store.save_site("s", &chain, &key, Some("https://ca.example/dir"), None)?;
        let meta = fs::read(tmp.path().join("sites/s/meta.json"))?;
        let (chain2, key2) = self_signed(&["a.example"])?;
        store.save_site("s", &chain2, &key2, Some("https://ca.example/dir"), None)?;
        // Simulate a crash after cert.pem was replaced but before meta.json was.
        fs::write(tmp.path().join("sites/s/meta.json"), meta)?;
        let loaded = store.load_site("s")?.ok_or("gone")?;
        assert_eq!(loaded.directory, None);
        assert_eq!(loaded.issued_at, None);
        Ok(())
    }
}
