//! The edge's state directory: CAs, keys, sites and the index of issued certificates.
//!
//! See the crate documentation for the layout. Every write is atomic (see `fs`), `init` writes
//! `state.json` last so an interrupted `init` is recognisable, and `add_site` builds the site in
//! a hidden directory renamed into place at the end, so a site is either complete or absent.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::ca::{
    CA_VALIDITY_DAYS, Ca, Certified, Issued, KeyType, MIN_VALIDITY_DAYS, Validity, now,
};
use crate::error::{Error, Result, clip};
use crate::fs::{self as sfs, PUBLIC, SECRET};
use crate::identity::{Fingerprint, Identity, Kind, hex, normalize_hostname, validate_name};
use crate::token::EnrollmentToken;
use crate::{TUNNEL_SERVER_NAME, random_bytes};

/// The only `state.json` version this build reads and writes.
const VERSION: u64 = 1;
/// Connector certificates: long-lived, since re-enrolling means pasting a new token at home.
pub(crate) const CONNECTOR_DAYS: u32 = 5 * 365 + 1;
/// Self-made public HTTPS certificates: Apple refuses TLS server certificates valid for more
/// than 825 days, even from private CAs.
const SERVER_DAYS: u32 = 825;

/// Options of [`StateDir::init`].
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    /// Public `host:port` of the edge's tunnel listener, written into enrollment tokens. Without
    /// it, tokens point at the site's first hostname, port 443.
    pub edge_addr: Option<String>,
}

/// The edge address an enrollment token carries: where its connector dials the tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeTarget {
    /// The address given to `init --edge-addr` if any, else the site's first hostname on
    /// `tunnel_port` (the port of the edge's `listen.tunnel`).
    Default { tunnel_port: u16 },
    /// Exactly this `HOST:PORT` (e.g. a public port mapped to another local one).
    Addr(String),
}

impl EdgeTarget {
    /// Checks an explicit address (`HOST:PORT`, IPv6 in brackets); the default needs a site.
    pub fn check(&self) -> Result<()> {
        match self {
            Self::Addr(addr) => validate_edge_addr(addr),
            Self::Default { .. } => Ok(()),
        }
    }
}

impl Default for EdgeTarget {
    /// The tunnel's default port, UDP 443.
    fn default() -> Self {
        Self::Default { tunnel_port: 443 }
    }
}

/// An opened (or freshly created) state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
    state: StateFile,
}

/// A site as stored in `sites/<name>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub name: String,
    pub hostnames: Vec<String>,
    pub client_ca_path: PathBuf,
    pub server_cert_path: PathBuf,
    pub server_key_path: PathBuf,
}

/// One issued device or connector certificate, as recorded in `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IndexEntry {
    pub kind: Kind,
    pub site: String,
    pub name: String,
    /// Serial number, lowercase hex.
    pub serial: String,
    /// SHA-256 of the certificate DER, lowercase hex.
    pub fingerprint: String,
    /// RFC 3339.
    pub not_after: String,
    /// RFC 3339.
    pub issued_at: String,
    /// RFC 3339; `None` while the certificate is valid.
    pub revoked_at: Option<String>,
}

/// A revoked certificate, as the edge enforces it (see [`StateDir::revoked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub kind: Kind,
    pub site: String,
    pub fingerprint: Fingerprint,
}

impl IndexEntry {
    /// Whether this entry is `kind`/`site`/`name` and not revoked.
    pub(crate) fn is_live(&self, kind: Kind, site: &str, name: &str) -> bool {
        self.kind == kind && self.site == site && self.name == name && self.revoked_at.is_none()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    version: u64,
    edge_addr: Option<String>,
    created: String,
}

#[derive(Serialize, Deserialize)]
struct SiteFile {
    name: String,
    hostnames: Vec<String>,
}

impl StateDir {
    /// Creates a state directory at `root`: CAs, the tunnel certificate, the session key, an
    /// empty index. `root` may exist if it is empty; otherwise [`Error::AlreadyInitialized`]
    /// (or [`Error::InterruptedInit`] for the leftovers of an interrupted `init`).
    pub fn init(root: &Path, options: &InitOptions) -> Result<StateDir> {
        if let Some(addr) = &options.edge_addr {
            validate_edge_addr(addr)?;
        }
        match std::fs::read_dir(root) {
            Ok(mut entries) => {
                if let Some(first) = entries.next() {
                    // Interrupted: no state.json, and something init writes (or its temp file).
                    let partial = !root.join(STATE_FILE).exists()
                        && std::iter::once(first)
                            .chain(entries)
                            .filter_map(|e| e.ok()?.file_name().into_string().ok())
                            .any(|name| is_init_output(&name));
                    return Err(match partial {
                        true => Error::InterruptedInit {
                            root: root.to_owned(),
                        },
                        false => Error::AlreadyInitialized,
                    });
                }
                sfs::restrict_dir(root)?;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => sfs::create_dir_all(root)?,
            Err(e) => return Err(Error::io(root, e)),
        }

        let dir = StateDir {
            root: root.to_owned(),
            state: StateFile {
                version: VERSION,
                edge_addr: options.edge_addr.clone(),
                created: rfc3339(now()),
            },
        };
        let tunnel_ca = Ca::generate(&neutral_ca_name()?, Validity::days(CA_VALIDITY_DAYS))?;
        write_ca(&tunnel_ca, &dir.tunnel_ca_path(), &dir.tunnel_ca_key_path())?;
        // Both ends of the tunnel are ours and the connector pins the CA, so the tunnel
        // certificate can live as long as the CA.
        let tunnel = tunnel_ca.issue_server(
            &[TUNNEL_SERVER_NAME.to_owned()],
            Validity::days(CA_VALIDITY_DAYS),
        )?;
        write_issued(&tunnel, &dir.tunnel_cert_path(), &dir.tunnel_key_path())?;
        let connector_ca = Ca::generate(&neutral_ca_name()?, Validity::days(CA_VALIDITY_DAYS))?;
        write_ca(
            &connector_ca,
            &dir.connector_ca_path(),
            &dir.connector_ca_key_path(),
        )?;
        let server_ca = Ca::generate(&neutral_ca_name()?, Validity::days(CA_VALIDITY_DAYS))?;
        write_ca(&server_ca, &dir.server_ca_path(), &dir.server_ca_key_path())?;
        sfs::write_atomic(&dir.session_key_path(), &random_bytes::<32>()?, SECRET)?;
        write_json(&dir.index_path(), &Vec::<IndexEntry>::new(), PUBLIC)?;
        sfs::create_dir(&dir.sites_path())?;
        // Last: its presence is what makes the directory a state dir.
        write_json(&dir.state_path(), &dir.state, PUBLIC)?;
        Ok(dir)
    }

    /// Opens an initialized state directory.
    pub fn open(root: &Path) -> Result<StateDir> {
        let path = root.join(STATE_FILE);
        let state: StateFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::NotInitialized {
                    root: root.to_owned(),
                });
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        if state.version != VERSION {
            return Err(Error::UnsupportedVersion {
                path,
                version: state.version,
            });
        }
        Ok(StateDir {
            root: root.to_owned(),
            state,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The edge address given to `init`, if any.
    pub fn edge_addr(&self) -> Option<&str> {
        self.state.edge_addr.as_deref()
    }

    /// Creates a site: its device CA and a public HTTPS certificate for `hostnames` signed by
    /// the local server CA. Hostnames are lowercased and deduplicated; at least one is needed,
    /// and none may belong to another site.
    pub fn add_site(&self, name: &str, hostnames: &[String]) -> Result<Site> {
        validate_name(name)?;
        let mut names: Vec<String> = Vec::with_capacity(hostnames.len());
        for hostname in hostnames {
            let hostname = normalize_hostname(hostname)?;
            if !names.contains(&hostname) {
                names.push(hostname);
            }
        }
        if names.is_empty() {
            return Err(Error::NoHostnames);
        }
        let final_dir = self.site_dir(name);
        if final_dir.exists() {
            return Err(Error::SiteExists {
                site: name.to_owned(),
            });
        }
        for other in self.sites()? {
            if let Some(taken) = names.iter().find(|h| other.hostnames.contains(h)) {
                return Err(Error::HostnameInUse {
                    hostname: taken.clone(),
                    site: other.name,
                });
            }
        }

        // Build the whole site in a hidden directory, then rename it into place: a crash leaves
        // at most an ignored `.name.tmp-*` directory, never a half-made site.
        let tmp_dir = sfs::temp_path(&final_dir)?;
        sfs::create_dir(&tmp_dir)?;
        let built = self.build_site(&tmp_dir, name, &names).and_then(|()| {
            std::fs::rename(&tmp_dir, &final_dir).map_err(|e| Error::io(&final_dir, e))
        });
        if let Err(e) = built {
            let _ = std::fs::remove_dir_all(&tmp_dir);
            return Err(e);
        }
        sfs::sync_dir(&self.sites_path())?;
        Ok(self.site_at(name, names))
    }

    fn build_site(&self, dir: &Path, name: &str, hostnames: &[String]) -> Result<()> {
        let client_ca = Ca::generate(&neutral_ca_name()?, Validity::days(CA_VALIDITY_DAYS))?;
        write_ca(
            &client_ca,
            &dir.join(CLIENT_CA_CRT),
            &dir.join(CLIENT_CA_KEY),
        )?;
        let server_ca = Ca::load(&self.server_ca_path(), &self.server_ca_key_path())?;
        let server = server_ca.issue_server(hostnames, Validity::days(SERVER_DAYS))?;
        write_issued(&server, &dir.join(SERVER_CRT), &dir.join(SERVER_KEY))?;
        sfs::create_dir(&dir.join(CLIENTS_DIR))?;
        sfs::create_dir(&dir.join(CONNECTORS_DIR))?;
        write_crl_in(dir, &client_ca, &[])?;
        let site = SiteFile {
            name: name.to_owned(),
            hostnames: hostnames.to_vec(),
        };
        write_json(&dir.join(SITE_FILE), &site, PUBLIC)
    }

    /// Re-issues the site's HTTPS certificate from the local server CA: a new key, the site's
    /// hostnames, 825 days (or less, never past the CA). For sites served without
    /// ACME or their own files (LAN, lab). The key is written before the certificate: a
    /// running edge reloads when the certificate changes, by which time its key is in place.
    pub fn renew_server_cert(&self, site: &str) -> Result<Issued> {
        let site = self.site(site)?;
        let ca = Ca::load(&self.server_ca_path(), &self.server_ca_key_path())?;
        let mut validity = Validity::days(SERVER_DAYS);
        validity.not_after = validity.not_after.min(ca.not_after());
        let issued = ca.issue_server(&site.hostnames, validity)?;
        write_issued(&issued, &site.server_cert_path, &site.server_key_path)?;
        Ok(issued)
    }

    /// A site by name; [`Error::SiteNotFound`] if there is none.
    pub fn site(&self, name: &str) -> Result<Site> {
        // Also keeps `name` from walking out of `sites/`.
        validate_name(name).map_err(|_| Error::SiteNotFound { site: clip(name) })?;
        let path = self.site_dir(name).join(SITE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::SiteNotFound {
                    site: name.to_owned(),
                });
            }
            Err(e) => return Err(Error::io(&path, e)),
        };
        let file: SiteFile = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        // The directory name is authoritative; a disagreeing site.json was edited by hand.
        if file.name != name {
            return Err(Error::CorruptState {
                path,
                reason: format!("names site {:?}, expected {name:?}", clip(&file.name)),
            });
        }
        if file.hostnames.is_empty() {
            return Err(Error::CorruptState {
                path,
                reason: "no hostnames".into(),
            });
        }
        Ok(self.site_at(name, file.hostnames))
    }

    /// All sites, sorted by name.
    pub fn sites(&self) -> Result<Vec<Site>> {
        let dir = self.sites_path();
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut sites = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            // Skips leftovers of interrupted `add_site`s (`.name.tmp-*`) and foreign files.
            if validate_name(&name).is_err() || !entry.path().is_dir() {
                continue;
            }
            sites.push(self.site(&name)?);
        }
        sites.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(sites)
    }

    /// Issues a connector certificate for `site` (signed by the connector CA, 5 years) and
    /// returns it as an enrollment token whose connector dials [`EdgeTarget::default`] (the
    /// address given to `init`, else the site's first hostname on port 443). Without
    /// `connector_id`, the next free `connector-<N>` is used.
    pub fn issue_connector(
        &self,
        site: &str,
        connector_id: Option<&str>,
    ) -> Result<EnrollmentToken> {
        self.issue_connector_to(site, connector_id, &EdgeTarget::default())
    }

    /// Like [`StateDir::issue_connector`], with the edge address the token carries chosen by
    /// `edge`: the CLI knows the tunnel port the edge really listens on, this crate does not.
    pub fn issue_connector_to(
        &self,
        site: &str,
        connector_id: Option<&str>,
        edge: &EdgeTarget,
    ) -> Result<EnrollmentToken> {
        let _lock = crate::lock::lock(&self.root)?;
        let site = self.site(site)?;
        // Everything that can fail without side effects comes before the certificate is
        // recorded: a refused token leaves no orphan connector in the index.
        let edges = vec![self.edge_addr_for(&site, edge)?];
        let tunnel_ca_pem = sfs::read_to_string(&self.tunnel_ca_path())?;
        let index = self.read_index()?;
        let id = match connector_id {
            Some(id) => {
                validate_name(id)?;
                id.to_owned()
            }
            None => self.next_connector_id(&site, &index),
        };
        let identity = Identity::connector(&site.name, &id)?;
        let ca = Ca::load(&self.connector_ca_path(), &self.connector_ca_key_path())?;
        let issued = self.issue_recorded(
            &ca,
            &identity,
            Validity::days(CONNECTOR_DAYS),
            KeyType::EcdsaP256,
            index,
        )?;
        Ok(EnrollmentToken {
            edges,
            server_name: TUNNEL_SERVER_NAME.to_owned(),
            site: site.name,
            connector_id: id,
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            tunnel_ca_pem,
        })
    }

    /// The `HOST:PORT` a token for `site` carries, as [`StateDir::issue_connector_to`] would
    /// write it (so a caller can say where the connector will dial before minting anything).
    pub fn edge_addr_for(&self, site: &Site, edge: &EdgeTarget) -> Result<String> {
        match (edge, &self.state.edge_addr, site.hostnames.first()) {
            (EdgeTarget::Addr(addr), _, _) => {
                validate_edge_addr(addr)?;
                Ok(addr.clone())
            }
            (EdgeTarget::Default { .. }, Some(addr), _) => Ok(addr.clone()),
            (EdgeTarget::Default { tunnel_port }, None, Some(hostname)) => {
                let addr = format!("{hostname}:{tunnel_port}");
                validate_edge_addr(&addr)?;
                Ok(addr)
            }
            // `site()` refuses sites without hostnames.
            (EdgeTarget::Default { .. }, None, None) => Err(Error::NoHostnames),
        }
    }

    pub(crate) fn next_connector_id(&self, site: &Site, index: &[IndexEntry]) -> String {
        // Never reuse an id, not even a revoked one: logs and metrics name connectors by id.
        (1u64..)
            .map(|n| format!("connector-{n}"))
            .find(|id| {
                !index
                    .iter()
                    .any(|e| e.kind == Kind::Connector && e.site == site.name && &e.name == id)
                    && !self.cert_path(Kind::Connector, &site.name, id).exists()
            })
            .unwrap_or_default()
    }

    /// Issues a device certificate signed by the site's client CA, records it in the index and
    /// writes `sites/<site>/clients/<name>.crt`. The private key is only returned, never stored.
    pub fn add_client(
        &self,
        site: &str,
        name: &str,
        validity: Validity,
        key: KeyType,
    ) -> Result<Issued> {
        let _lock = crate::lock::lock(&self.root)?;
        let site = self.site(site)?;
        let identity = Identity::device(&site.name, name)?;
        let ca = self.client_ca(&site.name)?;
        check_device_validity(&validity, &ca)?;
        let index = self.read_index()?;
        self.issue_recorded(&ca, &identity, validity, key, index)
    }

    /// Like [`StateDir::add_client`] for a device that keeps its own key: signs the public key
    /// of its CSR (see [`Ca::issue_client_csr`]), records it and writes the certificate.
    pub fn sign_client_csr(
        &self,
        site: &str,
        name: &str,
        csr_pem: &str,
        validity: Validity,
    ) -> Result<Certified> {
        let _lock = crate::lock::lock(&self.root)?;
        let site = self.site(site)?;
        let identity = Identity::device(&site.name, name)?;
        let ca = self.client_ca(&site.name)?;
        check_device_validity(&validity, &ca)?;
        let index = self.read_index()?;
        self.record(&identity, index, || {
            ca.issue_client_csr(csr_pem, &identity, validity)
        })
    }

    /// A connector certificate for `identity` on the public key of the connector's own CSR
    /// (PEM), signed by the connector CA and recorded like [`StateDir::issue_connector`]'s.
    pub(crate) fn issue_connector_csr(
        &self,
        identity: &Identity,
        csr_pem: &str,
        validity: Validity,
        index: Vec<IndexEntry>,
    ) -> Result<Certified> {
        let ca = Ca::load(&self.connector_ca_path(), &self.connector_ca_key_path())?;
        self.record(identity, index, || {
            ca.issue_client_csr(csr_pem, identity, validity)
        })
    }

    /// Re-issues the live connector certificate of `identity` on the public key of the
    /// connector's new CSR, and revokes the old one in the same index write (as
    /// [`StateDir::renew`] does for devices): there is no moment with both or neither live.
    pub(crate) fn renew_connector_csr(
        &self,
        identity: &Identity,
        csr_pem: &str,
        validity: Validity,
        mut index: Vec<IndexEntry>,
    ) -> Result<Certified> {
        let Identity { kind, site, name } = identity;
        let old = index
            .iter()
            .position(|e| e.is_live(*kind, site, name))
            .ok_or_else(|| Error::NotIssued {
                kind: *kind,
                site: site.clone(),
                name: name.clone(),
            })?;
        let ca = Ca::load(&self.connector_ca_path(), &self.connector_ca_key_path())?;
        let certified = ca.issue_client_csr(csr_pem, identity, validity)?;
        sfs::write_atomic(
            &self.cert_path(*kind, site, name),
            certified.cert_pem.as_bytes(),
            PUBLIC,
        )?;
        index[old].revoked_at = Some(rfc3339(now()));
        index.push(new_entry(
            identity,
            &certified.serial,
            &certified.fingerprint,
            certified.not_after,
        ));
        self.write_index(&index)?;
        Ok(certified)
    }

    /// Issues, writes the certificate file, then records it: a crash in between leaves an
    /// unrecorded file that the next issue for that name overwrites, never a recorded
    /// certificate that does not exist.
    fn issue_recorded(
        &self,
        ca: &Ca,
        identity: &Identity,
        validity: Validity,
        key: KeyType,
        index: Vec<IndexEntry>,
    ) -> Result<Issued> {
        self.record(identity, index, || ca.issue_client(identity, validity, key))
    }

    fn record<T: CertParts>(
        &self,
        identity: &Identity,
        mut index: Vec<IndexEntry>,
        issue: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let Identity { kind, site, name } = identity;
        if index.iter().any(|e| e.is_live(*kind, site, name)) {
            return Err(Error::AlreadyIssued {
                kind: *kind,
                site: site.clone(),
                name: name.clone(),
            });
        }
        let issued = issue()?;
        let (cert_pem, serial, fingerprint, not_after) = issued.parts();
        sfs::write_atomic(
            &self.cert_path(*kind, site, name),
            cert_pem.as_bytes(),
            PUBLIC,
        )?;
        index.push(new_entry(identity, serial, fingerprint, not_after));
        self.write_index(&index)?;
        Ok(issued)
    }

    /// Marks the unrevoked certificate of `kind`/`site`/`name` revoked and returns its entry.
    /// The certificate file stays, for the record. For devices, the site's CRL is rewritten
    /// afterwards (see [`StateDir::write_crl`]).
    pub fn revoke(&self, kind: Kind, site: &str, name: &str) -> Result<IndexEntry> {
        let _lock = crate::lock::lock(&self.root)?;
        let index = self.read_index()?;
        let position = index
            .iter()
            .position(|e| e.is_live(kind, site, name))
            .ok_or_else(|| Error::NotIssued {
                kind,
                site: clip(site),
                name: clip(name),
            })?;
        self.revoke_at(index, position)
    }

    /// Removes site `name`: revokes its pending enrollment codes, revokes every live device
    /// and connector certificate of it in one index write (the entries stay, for the record),
    /// deletes the devices' pending links, then deletes the site's directory (its CAs, keys,
    /// certificates and CRL). Revocation goes first so that a failure half-way leaves a
    /// revoked site, never a deleted one whose certificates are still live. Returns the
    /// certificates it revoked.
    pub fn remove_site(&self, name: &str) -> Result<Vec<IndexEntry>> {
        let _lock = crate::lock::lock(&self.root)?;
        let site = self.site(name)?;
        self.revoke_codes(&site.name, None)?;
        let mut index = self.read_index()?;
        let at = rfc3339(now());
        let mut revoked = Vec::new();
        for entry in index
            .iter_mut()
            .filter(|e| e.site == site.name && e.revoked_at.is_none())
        {
            entry.revoked_at = Some(at.clone());
            revoked.push(entry.clone());
        }
        self.write_index(&index)?;
        for entry in revoked.iter().filter(|e| e.kind == Kind::Device) {
            self.remove_links_of(&site.name, &entry.name)?;
        }
        let dir = self.site_dir(&site.name);
        std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        sfs::sync_dir(&self.sites_path())?;
        Ok(revoked)
    }

    /// Revokes one certificate named by device (or connector) name or by serial number.
    ///
    /// A serial is hex, case-insensitive, with or without colons or a `0x` prefix (as
    /// `openssl x509 -serial` or `-text` print it). A name must be unique among unrevoked
    /// certificates, of `site` if given: a name used in several sites without `site` is
    /// [`Error::Ambiguous`] (the message lists them). Revoking a revoked serial is
    /// [`Error::AlreadyRevoked`].
    pub fn revoke_any(&self, site: Option<&str>, target: &str) -> Result<IndexEntry> {
        let _lock = crate::lock::lock(&self.root)?;
        if let Some(site) = site {
            self.site(site)?;
        }
        let index = self.read_index()?;
        let serial = normalize_serial(target);
        let in_site = |e: &IndexEntry| site.is_none_or(|s| e.site == s);
        let by_serial = |e: &IndexEntry| {
            serial
                .as_deref()
                .is_some_and(|s| e.serial.trim_start_matches('0') == s)
        };
        let live: Vec<usize> = (0..index.len())
            .filter(|&i| {
                let e = &index[i];
                in_site(e) && e.revoked_at.is_none() && (e.name == target || by_serial(e))
            })
            .collect();
        match live.as_slice() {
            [i] => self.revoke_at(index, *i),
            [] => match index.iter().find(|e| in_site(e) && by_serial(e)) {
                Some(e) => Err(Error::AlreadyRevoked {
                    serial: e.serial.clone(),
                    kind: e.kind,
                    site: e.site.clone(),
                    name: e.name.clone(),
                }),
                None => Err(Error::NoSuchCertificate {
                    target: clip(target),
                    site: site.map(clip),
                }),
            },
            many => {
                let entries: Vec<&IndexEntry> = many.iter().map(|&i| &index[i]).collect();
                let several_sites = entries.iter().any(|e| e.site != entries[0].site);
                Err(Error::Ambiguous {
                    target: clip(target),
                    matches: entries
                        .iter()
                        .map(|e| {
                            format!(
                                "{} {} of site {} (serial {})",
                                e.kind, e.name, e.site, e.serial
                            )
                        })
                        .collect(),
                    hint: if several_sites {
                        "name the site with --site, or revoke by serial"
                    } else {
                        "revoke by serial"
                    },
                })
            }
        }
    }

    fn revoke_at(&self, mut index: Vec<IndexEntry>, position: usize) -> Result<IndexEntry> {
        let Some(entry) = index.get_mut(position) else {
            return Err(Error::CorruptState {
                path: self.index_path(),
                reason: "entry vanished".into(),
            });
        };
        entry.revoked_at = Some(rfc3339(now()));
        let entry = entry.clone();
        // The index is what the edge acts on: it goes first, the CRL (for other tools) after.
        self.write_index(&index)?;
        if entry.kind == Kind::Device {
            // A pending link would hand out the revoked certificate: it goes with it.
            self.remove_links_of(&entry.site, &entry.name)?;
            self.write_crl(&entry.site)
                .map_err(|e| Error::CrlAfterRevoke {
                    site: entry.site.clone(),
                    source: Box::new(e),
                })?;
        }
        Ok(entry)
    }

    /// Re-issues the device certificate of `site`/`name` with a new key and serial, and
    /// revokes the old one in the same index write, so there is no moment with both or neither
    /// recorded. A running edge refuses the old certificate once it sees the new index.
    ///
    /// The CRL is rewritten afterwards; if that fails, the renewal still stands (the new key
    /// exists only in the returned value) and [`Renewed::crl_error`] says so.
    pub fn renew(
        &self,
        site: &str,
        name: &str,
        validity: Validity,
        key: KeyType,
    ) -> Result<Renewed> {
        let _lock = crate::lock::lock(&self.root)?;
        let site = self.site(site)?;
        let identity = Identity::device(&site.name, name)?;
        let ca = self.client_ca(&site.name)?;
        check_device_validity(&validity, &ca)?;
        let mut index = self.read_index()?;
        let old = index
            .iter()
            .position(|e| e.is_live(Kind::Device, &site.name, name))
            .ok_or_else(|| Error::NotIssued {
                kind: Kind::Device,
                site: site.name.clone(),
                name: name.to_owned(),
            })?;
        // A pending link would hand out the certificate being replaced: it goes first, before
        // anything is written, so a failure here leaves the renewal undone and nothing lost.
        self.remove_links_of(&site.name, name)?;
        let issued = ca.issue_client(&identity, validity, key)?;
        sfs::write_atomic(
            &self.cert_path(Kind::Device, &site.name, name),
            issued.cert_pem.as_bytes(),
            PUBLIC,
        )?;
        let mut revoked = index[old].clone();
        revoked.revoked_at = Some(rfc3339(now()));
        index[old] = revoked.clone();
        index.push(new_entry(
            &identity,
            &issued.serial,
            &issued.fingerprint,
            issued.not_after,
        ));
        self.write_index(&index)?;
        let crl_error = self.write_crl(&site.name).err();
        Ok(Renewed {
            issued,
            revoked,
            crl_error,
        })
    }

    /// Re-signs `sites/<site>/crl.pem`: every revoked device certificate of the site, signed
    /// by the site's client CA, valid for [`CRL_DAYS`] days, with a CRL number one above the
    /// last (kept in `sites/<site>/crl.json`). Called by every revocation; run it from cron
    /// (`doorless-edge client crl`) before `next_update` if other tools consume the CRL.
    pub fn write_crl(&self, site: &str) -> Result<PathBuf> {
        let _lock = crate::lock::lock(&self.root)?;
        let site = self.site(site)?;
        let ca = self.client_ca(&site.name)?;
        let index = self.read_index()?;
        let mut revoked = Vec::new();
        for e in index
            .iter()
            .filter(|e| e.kind == Kind::Device && e.site == site.name)
        {
            let Some(at) = &e.revoked_at else { continue };
            let corrupt = |what: &str| Error::CorruptState {
                path: self.index_path(),
                reason: format!("{what} of {} {} in site {}", e.kind, e.name, e.site),
            };
            let serial = unhex(&e.serial).ok_or_else(|| corrupt("bad serial"))?;
            let at = OffsetDateTime::parse(at, &Rfc3339).map_err(|_| corrupt("bad revoked_at"))?;
            revoked.push((serial, at));
        }
        let dir = self.site_dir(&site.name);
        write_crl_in(&dir, &ca, &revoked)?;
        Ok(dir.join(CRL_FILE))
    }

    /// The site's CRL in PEM (see [`StateDir::write_crl`]).
    pub fn crl_path(&self, site: &str) -> PathBuf {
        self.site_dir(site).join(CRL_FILE)
    }

    /// Every issued client certificate, devices and connectors alike (both authenticate as TLS
    /// clients), in issue order, revoked ones included.
    pub fn clients(&self) -> Result<Vec<IndexEntry>> {
        self.read_index()
    }

    /// Every revoked certificate of the index, devices and connectors, with its fingerprint
    /// parsed. A revoked entry whose fingerprint is malformed is an error: it could not be
    /// enforced.
    pub fn revoked(&self) -> Result<Vec<Revocation>> {
        let mut out = Vec::new();
        for entry in self.read_index()? {
            if entry.revoked_at.is_none() {
                continue;
            }
            let Ok(fingerprint) = entry.fingerprint.parse() else {
                return Err(Error::Index {
                    path: self.index_path(),
                    reason: format!(
                        "entry {}/{} has a malformed fingerprint",
                        entry.site, entry.name
                    ),
                });
            };
            out.push(Revocation {
                kind: entry.kind,
                site: entry.site,
                fingerprint,
            });
        }
        Ok(out)
    }

    /// The files a change of the state goes through, for a process that serves from it and
    /// reloads on change: the index, the sites directory, the links directory, and each site's `site.json` and
    /// server certificate. Sorted, so two calls compare equal when nothing changed.
    pub fn watched_paths(&self) -> Vec<PathBuf> {
        let sites = self.sites_path();
        let mut paths = vec![self.index_path(), sites.clone(), self.links_path()];
        if let Ok(entries) = std::fs::read_dir(&sites) {
            let mut dirs: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            dirs.sort();
            for dir in dirs {
                paths.push(dir.join(SITE_FILE));
                paths.push(dir.join(SERVER_CRT));
            }
        }
        paths
    }

    /// The device CA of `site`, with its key, for signing.
    pub fn client_ca(&self, site: &str) -> Result<Ca> {
        let site = self.site(site)?;
        Ca::load(
            &site.client_ca_path,
            &self.site_dir(&site.name).join(CLIENT_CA_KEY),
        )
    }

    pub(crate) fn read_index(&self) -> Result<Vec<IndexEntry>> {
        let path = self.index_path();
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json { path, source })
    }

    fn write_index(&self, index: &[IndexEntry]) -> Result<()> {
        write_json(&self.index_path(), &index, PUBLIC)
    }

    fn site_at(&self, name: &str, hostnames: Vec<String>) -> Site {
        let dir = self.site_dir(name);
        Site {
            name: name.to_owned(),
            hostnames,
            client_ca_path: dir.join(CLIENT_CA_CRT),
            server_cert_path: dir.join(SERVER_CRT),
            server_key_path: dir.join(SERVER_KEY),
        }
    }

    /// Where the certificate of a device or connector is kept.
    pub fn cert_path(&self, kind: Kind, site: &str, name: &str) -> PathBuf {
        let sub = match kind {
            Kind::Device => CLIENTS_DIR,
            Kind::Connector => CONNECTORS_DIR,
        };
        self.site_dir(site).join(sub).join(format!("{name}.crt"))
    }

    pub fn tunnel_ca_path(&self) -> PathBuf {
        self.root.join("tunnel-ca.crt")
    }

    pub fn tunnel_ca_key_path(&self) -> PathBuf {
        self.root.join("tunnel-ca.key")
    }

    pub fn tunnel_cert_path(&self) -> PathBuf {
        self.root.join("tunnel.crt")
    }

    pub fn tunnel_key_path(&self) -> PathBuf {
        self.root.join("tunnel.key")
    }

    pub fn connector_ca_path(&self) -> PathBuf {
        self.root.join("connector-ca.crt")
    }

    pub fn connector_ca_key_path(&self) -> PathBuf {
        self.root.join("connector-ca.key")
    }

    pub fn server_ca_path(&self) -> PathBuf {
        self.root.join("server-ca.crt")
    }

    pub fn server_ca_key_path(&self) -> PathBuf {
        self.root.join("server-ca.key")
    }

    pub fn session_key_path(&self) -> PathBuf {
        self.root.join("session.key")
    }

    pub fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn state_path(&self) -> PathBuf {
        self.root.join(STATE_FILE)
    }

    fn sites_path(&self) -> PathBuf {
        self.root.join("sites")
    }

    fn site_dir(&self, name: &str) -> PathBuf {
        self.sites_path().join(name)
    }
}

/// What the index records of an [`Issued`] or a [`Certified`].
trait CertParts {
    fn parts(&self) -> (&str, &[u8], &[u8; 32], OffsetDateTime);
}

impl CertParts for Issued {
    fn parts(&self) -> (&str, &[u8], &[u8; 32], OffsetDateTime) {
        (
            &self.cert_pem,
            &self.serial,
            &self.fingerprint,
            self.not_after,
        )
    }
}

impl CertParts for Certified {
    fn parts(&self) -> (&str, &[u8], &[u8; 32], OffsetDateTime) {
        (
            &self.cert_pem,
            &self.serial,
            &self.fingerprint,
            self.not_after,
        )
    }
}

/// How long a CRL is valid (`next_update - this_update`): a week, re-signed on every
/// revocation and by `doorless-edge client crl`.
pub const CRL_DAYS: u32 = 7;

const STATE_FILE: &str = "state.json";
const CRL_FILE: &str = "crl.pem";
const CRL_STATE_FILE: &str = "crl.json";
const SITE_FILE: &str = "site.json";
const CLIENT_CA_CRT: &str = "client-ca.crt";
const CLIENT_CA_KEY: &str = "client-ca.key";
const SERVER_CRT: &str = "server.crt";
const SERVER_KEY: &str = "server.key";
const CLIENTS_DIR: &str = "clients";
const CONNECTORS_DIR: &str = "connectors";

/// Whether `name` is something `init` writes at the top of a state dir, or a temp file of one.
fn is_init_output(name: &str) -> bool {
    const OUTPUTS: [&str; 11] = [
        "tunnel-ca.crt",
        "tunnel-ca.key",
        "tunnel.crt",
        "tunnel.key",
        "connector-ca.crt",
        "connector-ca.key",
        "server-ca.crt",
        "server-ca.key",
        "session.key",
        "index.json",
        "sites",
    ];
    OUTPUTS
        .iter()
        .any(|o| name == *o || name.starts_with(&format!(".{o}.tmp-")))
}

/// The result of [`StateDir::renew`].
#[derive(Debug)]
pub struct Renewed {
    /// The new certificate and its key (the key is stored nowhere else).
    pub issued: Issued,
    /// The old certificate's index entry, now revoked.
    pub revoked: IndexEntry,
    /// Set if `crl.pem` could not be rewritten (the renewal itself stands).
    pub crl_error: Option<Error>,
}

#[derive(Serialize, Deserialize, Default)]
struct CrlState {
    crl_number: u64,
}

/// Writes `crl.json` with the next CRL number, then `crl.pem`: a crash in between skips a
/// number, never reuses one.
fn write_crl_in(dir: &Path, ca: &Ca, revoked: &[(Vec<u8>, OffsetDateTime)]) -> Result<()> {
    let state_path = dir.join(CRL_STATE_FILE);
    let previous = match std::fs::read(&state_path) {
        Ok(bytes) => serde_json::from_slice::<CrlState>(&bytes).map_err(|source| Error::Json {
            path: state_path.clone(),
            source,
        })?,
        Err(e) if e.kind() == ErrorKind::NotFound => CrlState::default(),
        Err(e) => return Err(Error::io(&state_path, e)),
    };
    let next = CrlState {
        crl_number: previous.crl_number.saturating_add(1),
    };
    write_json(&state_path, &next, PUBLIC)?;
    let pem = ca.crl_pem(revoked, next.crl_number, CRL_DAYS)?;
    sfs::write_atomic(&dir.join(CRL_FILE), pem.as_bytes(), PUBLIC)
}

fn new_entry(
    identity: &Identity,
    serial: &[u8],
    fingerprint: &[u8; 32],
    not_after: OffsetDateTime,
) -> IndexEntry {
    IndexEntry {
        kind: identity.kind,
        site: identity.site.clone(),
        name: identity.name.clone(),
        serial: hex(serial),
        fingerprint: hex(fingerprint),
        not_after: rfc3339(not_after),
        issued_at: rfc3339(now()),
        revoked_at: None,
    }
}

/// A serial as the user typed it, in the index's form without leading zeros; `None` if it is
/// not hex.
fn normalize_serial(s: &str) -> Option<String> {
    let s = s.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let digits = digits.to_ascii_lowercase();
    Some(digits.trim_start_matches('0').to_owned())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.is_empty() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn write_ca(ca: &Ca, cert_path: &Path, key_path: &Path) -> Result<()> {
    // Key first: a certificate on disk without its key would look usable but is not.
    sfs::write_atomic(key_path, ca.key_pem().as_bytes(), SECRET)?;
    sfs::write_atomic(cert_path, ca.cert_pem().as_bytes(), PUBLIC)
}

fn write_issued(issued: &Issued, cert_path: &Path, key_path: &Path) -> Result<()> {
    sfs::write_atomic(key_path, issued.key_pem.as_bytes(), SECRET)?;
    sfs::write_atomic(cert_path, issued.cert_pem.as_bytes(), PUBLIC)
}

fn write_json<T: Serialize + ?Sized>(path: &Path, value: &T, mode: u32) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })?;
    json.push(b'\n');
    sfs::write_atomic(path, &json, mode)
}

fn rfc3339(t: OffsetDateTime) -> String {
    // Our timestamps are UTC and within years 0..=9999, which RFC 3339 can always express.
    t.format(&Rfc3339).unwrap_or_default()
}

/// Checks the validity a user asked for a device certificate: at least [`MIN_VALIDITY_DAYS`]
/// from now and ending inside the CA's life. (`Ca` would silently cap the end at the CA's; a
/// user who typed `--days` deserves to hear that it was too much.)
fn check_device_validity(validity: &Validity, ca: &Ca) -> Result<()> {
    let now = now();
    // Whole days, rounded: `Validity::days(1)` made a moment ago still counts as one day.
    let days = (validity.not_after - now + Duration::hours(12)).whole_days();
    if days < MIN_VALIDITY_DAYS {
        return Err(Error::ValidityTooShort {
            not_after: validity.not_after,
        });
    }
    if validity.not_after > ca.not_after() {
        return Err(Error::ValidityBeyondCa {
            ca_not_after: ca.not_after(),
            max_days: max_days_before(ca.not_after(), now),
        });
    }
    Ok(())
}

/// The most whole days a certificate asked for at `now` or a little later can last and end by
/// `ca_not_after`: what the refusal offers must work when the user types it. Measured from a
/// minute on, so a CA made in the same second (exactly 3,652 days left) offers 3,651, which
/// still fits a second later.
fn max_days_before(ca_not_after: OffsetDateTime, now: OffsetDateTime) -> i64 {
    (ca_not_after - now - Duration::minutes(1)).whole_days()
}

/// The subject CN of a new CA: 16 random hex digits, nothing else.
///
/// CA names are public: the TLS CertificateRequest lists the site's device CA to every client
/// that connects, and the sites' HTTPS certificates name the server CA as their issuer. A name
/// with the product or the site in it would tell a scanner what it is talking to. Random
/// rather than fixed so it is no fingerprint either, and distinct per CA so a browser's
/// certificate picker (which matches issuer DNs against the hinted names) still tells sites
/// apart.
fn neutral_ca_name() -> Result<String> {
    Ok(hex(&random_bytes::<8>()?))
}

/// `host:443`; site hostnames are DNS names, never IP addresses.
fn validate_edge_addr(addr: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidEdgeAddr {
            addr: clip(addr),
            reason,
        })
    };
    let Some((host, port)) = addr.rsplit_once(':') else {
        return invalid("expected host:port");
    };
    if port.parse::<u16>().map_or(true, |p| p == 0) {
        return invalid("port must be 1-65535");
    }
    let ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<Ipv6Addr>().is_ok(),
        // An unbracketed IPv6 address would make the port ambiguous.
        None => host.parse::<Ipv4Addr>().is_ok() || normalize_hostname(host).is_ok(),
    };
    if !ok {
        return invalid("host must be a DNS name, an IPv4 address or a bracketed IPv6 address");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a refusal offers fits when asked for a moment later, even right after the CA was
    /// made (exactly its whole life left).
    #[test]
    fn the_offered_maximum_still_fits_a_moment_later() {
        let made = now();
        let ca_not_after = made + Duration::days(i64::from(crate::CA_VALIDITY_DAYS));
        for offered_at in [made, made + Duration::seconds(1), made + Duration::hours(5)] {
            let max = max_days_before(ca_not_after, offered_at);
            assert_eq!(max, i64::from(crate::CA_VALIDITY_DAYS) - 1);
            let asked_at = offered_at + Duration::seconds(30);
            assert!(asked_at + Duration::days(max) <= ca_not_after);
        }
    }
}
