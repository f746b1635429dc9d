//! Device links: one-time HTTPS links that hand a device its certificate.
//!
//! `client add --link` issues a device certificate (recorded in the index like any other),
//! packages it (`.p12` and `.mobileconfig`, both under the password printed in the terminal)
//! and stores the package in `links/<id>.json` (0600), where `id` is the SHA-256 of the link's
//! path secret: the secret itself (≥128 bits, URL-safe) is stored nowhere. The edge serves the
//! package at `https://<site host>/<secret>` until the first download, the expiry, or a
//! `client revoke` of the device, whichever comes first.
//!
//! What this module is not: the HTTP side (the edge's `link` step) or the packaging
//! (`export_p12`, `MobileConfig`); it only keeps the files and hands each package out once.

use std::io::ErrorKind;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::ca::now;
use crate::error::{Error, Result};
use crate::fs::{self as sfs, SECRET};
use crate::identity::hex;
use crate::{StateDir, random_bytes};

/// How long a link stays usable unless told otherwise.
pub const DEFAULT_LINK_LIFETIME: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Random bytes in a link's path secret: 160 bits (27 base64url characters).
const SECRET_BYTES: usize = 20;
/// Its length as text.
const SECRET_CHARS: usize = 27;
const LINKS_DIR: &str = "links";

/// The secret path segment of a device link. Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkSecret(String);

impl std::fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSecret(..)")
    }
}

impl LinkSecret {
    fn generate() -> Result<Self> {
        Ok(Self(
            URL_SAFE_NO_PAD.encode(random_bytes::<SECRET_BYTES>()?),
        ))
    }

    /// A path segment that has the shape of a secret (27 base64url characters), else `None`.
    pub fn parse(segment: &str) -> Option<Self> {
        let ok = segment.len() == SECRET_CHARS
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        ok.then(|| Self(segment.to_owned()))
    }

    /// The secret, for the URL (and only the URL).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id the link is stored under: SHA-256 of the secret, lowercase hex.
    pub fn id(&self) -> String {
        hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.0.as_bytes()).as_ref())
    }
}

/// One pending link, as stored in `links/<id>.json`.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkRecord {
    /// The site the device may open.
    pub site: String,
    /// The device name.
    pub name: String,
    /// Serial of the certificate inside, lowercase hex.
    pub serial: String,
    /// RFC 3339.
    pub created: String,
    /// RFC 3339.
    pub expires: String,
    /// The password-protected `.p12`, base64.
    p12: String,
    /// The `.mobileconfig` (XML; carries the same `.p12`).
    mobileconfig: String,
}

impl std::fmt::Debug for LinkRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkRecord")
            .field("site", &self.site)
            .field("name", &self.name)
            .field("serial", &self.serial)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl LinkRecord {
    /// When it expires (`None` if the stored time is unreadable: treated as expired).
    pub fn expires_at(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.expires, &Rfc3339).ok()
    }

    /// Whether it is still usable at `now`.
    pub fn is_pending(&self, now: OffsetDateTime) -> bool {
        self.expires_at().is_some_and(|t| t > now)
    }

    /// The `.p12`.
    pub fn p12(&self) -> Result<Vec<u8>> {
        STANDARD.decode(&self.p12).map_err(|_| Error::CorruptState {
            path: PathBuf::from(LINKS_DIR),
            reason: format!("the .p12 of the link for {}/{}", self.site, self.name),
        })
    }

    /// The `.mobileconfig`.
    pub fn mobileconfig(&self) -> &str {
        &self.mobileconfig
    }
}

/// A pending link and the id it is stored under.
#[derive(Debug, Clone)]
pub struct PendingLink {
    /// SHA-256 of the secret, lowercase hex.
    pub id: String,
    /// The link.
    pub record: LinkRecord,
}

/// What [`StateDir::save_link`] stores besides the package.
#[derive(Debug, Clone, Copy)]
pub struct LinkPackage<'a> {
    /// Site.
    pub site: &'a str,
    /// Device name.
    pub name: &'a str,
    /// Serial of the certificate, raw bytes.
    pub serial: &'a [u8],
    /// The `.p12` (password-protected).
    pub p12: &'a [u8],
    /// The `.mobileconfig`.
    pub mobileconfig: &'a str,
}

impl StateDir {
    /// Stores a package behind a new link usable for `lifetime` (a second to a week), and
    /// returns the link's secret (stored nowhere) and its record.
    pub fn save_link(
        &self,
        package: LinkPackage<'_>,
        lifetime: std::time::Duration,
    ) -> Result<(LinkSecret, LinkRecord)> {
        let site = self.site(package.site)?;
        let lifetime = Duration::try_from(lifetime)
            .ok()
            .filter(|l| *l >= Duration::SECOND && *l <= Duration::days(7))
            .ok_or(Error::InvalidCode {
                reason: "a link's lifetime must be between a second and a week",
            })?;
        let secret = LinkSecret::generate()?;
        let now = now();
        let record = LinkRecord {
            site: site.name,
            name: package.name.to_owned(),
            serial: hex(package.serial),
            created: rfc3339(now),
            expires: rfc3339(now + lifetime),
            p12: STANDARD.encode(package.p12),
            mobileconfig: package.mobileconfig.to_owned(),
        };
        let dir = self.links_path();
        sfs::create_dir_all(&dir)?;
        let json = serde_json::to_vec(&record).map_err(|source| Error::Json {
            path: dir.clone(),
            source,
        })?;
        sfs::write_atomic(&self.link_path(&secret.id()), &json, SECRET)?;
        Ok((secret, record))
    }

    /// Every pending (unexpired) link, sorted by id. Files that are not links (temporary
    /// files, claimed ones) are skipped.
    pub fn links(&self) -> Result<Vec<PendingLink>> {
        let now = now();
        let mut out = Vec::new();
        for id in self.link_ids()? {
            if let Some(record) = self.read_link(&id)?
                && record.is_pending(now)
            {
                out.push(PendingLink { id, record });
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The pending link of `secret`, without using it up.
    pub fn link(&self, secret: &LinkSecret) -> Result<Option<LinkRecord>> {
        Ok(self
            .read_link(&secret.id())?
            .filter(|r| r.is_pending(now())))
    }

    /// Uses up the link of `secret`: claims its file (an atomic rename, so of two concurrent
    /// downloads exactly one wins), deletes it and returns the record if it was still pending.
    pub fn take_link(&self, secret: &LinkSecret) -> Result<Option<LinkRecord>> {
        let path = self.link_path(&secret.id());
        let claimed = sfs::temp_path(&path)?;
        match std::fs::rename(&path, &claimed) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        }
        let read = std::fs::read(&claimed).map_err(|e| Error::io(&claimed, e));
        let _ = std::fs::remove_file(&claimed);
        sfs::sync_dir(&self.links_path())?;
        let record: LinkRecord = serde_json::from_slice(&read?).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        Ok(record.is_pending(now()).then_some(record))
    }

    /// Deletes every link of device `name` of `site` (pending or not); returns how many.
    pub fn remove_links_of(&self, site: &str, name: &str) -> Result<usize> {
        let mut removed = 0;
        for id in self.link_ids()? {
            if self
                .read_link(&id)?
                .is_some_and(|r| r.site == site && r.name == name)
            {
                remove(&self.link_path(&id))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes expired links; returns how many.
    pub fn prune_links(&self) -> Result<usize> {
        let now = now();
        let mut removed = 0;
        for id in self.link_ids()? {
            if self.read_link(&id)?.is_some_and(|r| !r.is_pending(now)) {
                remove(&self.link_path(&id))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The links directory (watched by the edge: its mtime changes whenever a link is made
    /// or used up).
    pub fn links_path(&self) -> PathBuf {
        self.root().join(LINKS_DIR)
    }

    fn link_path(&self, id: &str) -> PathBuf {
        self.links_path().join(format!("{id}.json"))
    }

    fn link_ids(&self) -> Result<Vec<String>> {
        let dir = self.links_path();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&dir, e)),
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let Ok(file) = entry.file_name().into_string() else {
                continue;
            };
            if let Some(id) = file.strip_suffix(".json")
                && id.len() == 64
                && id.bytes().all(|b| b.is_ascii_hexdigit())
            {
                ids.push(id.to_owned());
            }
        }
        Ok(ids)
    }

    /// The link stored under `id`, if its file exists (a vanished file is `None`: it was used
    /// up or revoked meanwhile).
    fn read_link(&self, id: &str) -> Result<Option<LinkRecord>> {
        let path = self.link_path(id);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::Json { path, source }),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&path, e)),
        }
    }
}

fn remove(path: &std::path::Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state() -> (tempfile::TempDir, StateDir) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        let state = StateDir::init(&root, &crate::InitOptions::default()).unwrap();
        state.add_site("home", &["ha.example.com".into()]).unwrap();
        (dir, state)
    }

    fn package<'a>(name: &'a str) -> LinkPackage<'a> {
        LinkPackage {
            site: "home",
            name,
            serial: &[1, 2],
            p12: b"p12 bytes",
            mobileconfig: "<plist/>",
        }
    }

    #[test]
    fn a_link_is_stored_by_hash_and_used_once() {
        let (_dir, state) = state();
        let (secret, record) = state
            .save_link(package("phone"), DEFAULT_LINK_LIFETIME)
            .unwrap();
        assert_eq!(secret.as_str().len(), SECRET_CHARS);
        assert_eq!(LinkSecret::parse(secret.as_str()), Some(secret.clone()));
        assert!(!format!("{secret:?}{record:?}").contains(secret.as_str()));
        // Only the hash is on disk, with mode 0600.
        let file = state.links_path().join(format!("{}.json", secret.id()));
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(secret.as_str()));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(state.links().unwrap().len(), 1);
        assert_eq!(state.link(&secret).unwrap().unwrap().name, "phone");
        let taken = state.take_link(&secret).unwrap().unwrap();
        assert_eq!(taken.p12().unwrap(), b"p12 bytes");
        assert_eq!(taken.mobileconfig(), "<plist/>");
        assert!(state.take_link(&secret).unwrap().is_none());
        assert!(state.link(&secret).unwrap().is_none());
        assert!(state.links().unwrap().is_empty());
    }

    #[test]
    fn revoking_and_expiry_end_links() {
        let (_dir, state) = state();
        let (a, _) = state
            .save_link(package("a"), DEFAULT_LINK_LIFETIME)
            .unwrap();
        let (b, _) = state
            .save_link(package("b"), DEFAULT_LINK_LIFETIME)
            .unwrap();
        assert_eq!(state.remove_links_of("home", "a").unwrap(), 1);
        assert!(state.link(&a).unwrap().is_none());
        assert!(state.link(&b).unwrap().is_some());
        assert!(
            state
                .save_link(package("c"), std::time::Duration::ZERO)
                .is_err()
        );
        // Renewing replaces the certificate: its pending link goes.
        state
            .add_client(
                "home",
                "b",
                crate::Validity::days(30),
                crate::KeyType::EcdsaP256,
            )
            .unwrap();
        state
            .renew(
                "home",
                "b",
                crate::Validity::days(30),
                crate::KeyType::EcdsaP256,
            )
            .unwrap();
        assert!(state.link(&b).unwrap().is_none());
        assert!(LinkSecret::parse("short").is_none());
        assert!(LinkSecret::parse(&"a/".repeat(14)[..27]).is_none());
    }
}
