//! `doorless-edge client`: issue, sign, list, revoke and renew device certificates, and re-sign
//! a site's CRL; writes the files a device imports (.p12, .mobileconfig, PEM).
//!
//! Not revocation on the running edge: that watches the state directory this writes.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Subcommand;

use crate::StateArg;

/// Where and how `client add` / `client renew` package a device certificate.
#[derive(Debug, clap::Args)]
pub(crate) struct PackageArgs {
    /// Validity in days.
    #[arg(long, default_value_t = 730)]
    days: u32,
    /// Output directory (created if missing).
    #[arg(long, default_value = ".")]
    out: PathBuf,
    /// Password of the .p12 (printable ASCII). Default: a strong generated one, printed once.
    #[arg(long, env = "DOORLESS_P12_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// Write an AES-256/SHA-256 .p12 instead of the legacy 3DES/SHA-1 one that imports
    /// everywhere (old iPhones and Android 13 and older refuse AES).
    #[arg(long)]
    modern: bool,
    /// RSA-2048 key instead of ECDSA P-256 (for very old devices).
    #[arg(long)]
    rsa: bool,
    /// Leave the edge's local server CA out of the .mobileconfig (when the edge has a publicly
    /// trusted HTTPS certificate).
    #[arg(long)]
    no_server_ca: bool,
    /// Overwrite existing output files.
    #[arg(long)]
    force: bool,
}

impl PackageArgs {
    /// The options given other than at their defaults, for refusing them where they mean
    /// nothing (renewing a connector, which packages nothing).
    fn given(&self) -> Vec<&'static str> {
        [
            ("--days", self.days != 730),
            ("--out", self.out != Path::new(".")),
            ("--password", self.password.is_some()),
            ("--modern", self.modern),
            ("--rsa", self.rsa),
            ("--no-server-ca", self.no_server_ca),
            ("--force", self.force),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }
}

/// `client add --link`: a one-time link instead of files.
#[derive(Debug, clap::Args)]
pub(crate) struct LinkArgs {
    /// Print a one-time HTTPS link (and its QR code) that hands the certificate to the device,
    /// instead of writing files.
    #[arg(long)]
    link: bool,
    /// How long the link stays usable (e.g. `15m`, `2h`; at most a week).
    #[arg(long, default_value = "15m", requires = "link", value_parser = humantime_serde::re::humantime::parse_duration)]
    valid_for: std::time::Duration,
    /// The edge's public HTTPS port, when it is not 443 (default: the port of `listen.https`
    /// in `--config`, else 443).
    #[arg(long, requires = "link")]
    port: Option<u16>,
    /// The edge's configuration file, to read the HTTPS port from.
    #[arg(long, requires = "link")]
    config: Option<PathBuf>,
    /// Do not draw the QR code (it is drawn only when the output is a terminal).
    #[arg(long, requires = "link", conflicts_with = "qr")]
    no_qr: bool,
    /// Draw the QR code even when the output is not a terminal.
    #[arg(long, requires = "link")]
    qr: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClientCommand {
    /// Issue a device certificate; with --link, prints a one-time link (and QR code) the
    /// device opens to install it; otherwise writes NAME.p12, NAME.mobileconfig, NAME.crt and
    /// NAME.key.
    Add {
        /// Device name (lowercase letters, digits, `.`, `_`, `-`).
        name: String,
        /// Site the device may open.
        #[arg(long)]
        site: String,
        /// Print JSON instead of instructions (no QR code): `site`, `name`, `serial`,
        /// `not_after`, `password` (null when given with --password), and `files` or `link`
        /// (docs/devices.md).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        package: PackageArgs,
        #[command(flatten)]
        link: LinkArgs,
        #[command(flatten)]
        state: StateArg,
    },
    /// Sign a device's own certificate signing request (its key never leaves it); writes
    /// NAME.crt.
    SignCsr {
        /// The CSR (PEM).
        file: PathBuf,
        /// Site the device may open.
        #[arg(long)]
        site: String,
        /// Device name (the CSR's subject is ignored).
        #[arg(long)]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 730)]
        days: u32,
        /// Output directory (created if missing).
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Overwrite an existing NAME.crt.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        state: StateArg,
    },
    /// List issued certificates (devices and connectors).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
        /// Only certificates that expire within this duration (e.g. `30d`, `2w`) and are
        /// neither revoked nor expired already.
        #[arg(long, value_name = "DURATION", value_parser = humantime_serde::re::humantime::parse_duration)]
        expiring: Option<std::time::Duration>,
        #[command(flatten)]
        state: StateArg,
    },
    /// Revoke a certificate by device name or serial number; a running edge refuses it within
    /// a second and closes its connections.
    Revoke {
        /// Device (or connector) name, or serial number in hex (colons optional).
        target: String,
        /// Site of the device (needed when the name exists in several sites).
        #[arg(long)]
        site: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
    /// Renew a certificate. A device: re-issue it now (new key, new serial), write its files
    /// and revoke the old one. A connector: print a one-time renewal code; the connector
    /// enrolls with it (a new key made at home) under the same id, and its old certificate is
    /// revoked only then, so the site keeps its connector meanwhile.
    Renew {
        /// Device or connector name (as `client list` shows it).
        name: String,
        /// Site of the device or connector.
        #[arg(long)]
        site: String,
        #[command(flatten)]
        package: PackageArgs,
        #[command(flatten)]
        code: crate::site::CodeArgs,
        #[command(flatten)]
        config: crate::site::EdgeConfigArg,
        #[command(flatten)]
        state: StateArg,
    },
    /// Re-sign the site's CRL (crl.pem, valid for 7 days); run it from cron if other tools read
    /// the CRL.
    Crl {
        /// Site name.
        #[arg(long)]
        site: String,
        #[command(flatten)]
        state: StateArg,
    },
}

impl ClientCommand {
    /// Runs the verb.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
            ClientCommand::Add {
                name,
                site,
                json,
                package,
                link,
                state,
            } => {
                let state = pki::StateDir::open(&state.state_dir)?;
                if link.link {
                    return add_link(&state, &site, &name, &package, &link, json);
                }
                let mut plan = Package::prepare(&state, &name, &package)?;
                plan.quiet = json;
                let issued =
                    state.add_client(&site, &name, pki::Validity::days(package.days), plan.key)?;
                if !json {
                    println!(
                        "Issued device {name} for site {site}: serial {}, valid until {}.",
                        hex(&issued.serial),
                        issued.not_after.date()
                    );
                }
                plan.write(&state, &site, &name, &issued)?;
                if json {
                    let [p12, mobileconfig, crt, key] = &plan.files;
                    let files = serde_json::json!({
                        "p12": p12, "mobileconfig": mobileconfig, "crt": crt, "key": key,
                    });
                    print_add_json(
                        &site,
                        &name,
                        &issued,
                        plan.shown_password(),
                        Some(files),
                        None,
                    )?;
                }
                Ok(())
            }
            ClientCommand::Renew {
                name,
                site,
                package,
                code,
                config,
                state,
            } => {
                let state_dir = state.state_dir;
                let state = pki::StateDir::open(&state_dir)?;
                if renews_connector(&state, &site, &name)? {
                    let given = package.given();
                    anyhow::ensure!(
                        given.is_empty(),
                        "{name} is a connector: {} only apply to devices (a connector makes its \
                         own key and gets its certificate when it uses the renewal code); nothing \
                         changed",
                        given.join(", ")
                    );
                    let https_port = config.https_port(&state_dir)?;
                    return crate::site::print_renewal_code(
                        &state, &site, &name, &code, https_port,
                    );
                }
                anyhow::ensure!(
                    !code.edge_given(),
                    "{name} is a device: --edge only applies to renewing a connector; nothing \
                     changed"
                );
                let plan = Package::prepare(&state, &name, &package)?;
                let renewed =
                    state.renew(&site, &name, pki::Validity::days(package.days), plan.key)?;
                println!(
                    "Renewed device {name} of site {site}: new serial {}, valid until {}.",
                    hex(&renewed.issued.serial),
                    renewed.issued.not_after.date()
                );
                println!(
                    "Revoked the old certificate (serial {}); a running edge refuses it within a second.",
                    renewed.revoked.serial
                );
                if let Some(e) = &renewed.crl_error {
                    eprintln!(
                        "doorless-edge: warning: the CRL of site {site} could not be rewritten: {e}; \
                     run `doorless-edge client crl --site {site}`"
                    );
                }
                plan.write(&state, &site, &name, &renewed.issued)
            }
            ClientCommand::SignCsr {
                file,
                site,
                name,
                days,
                out,
                force,
                state,
            } => {
                let state = pki::StateDir::open(&state.state_dir)?;
                let csr = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let cert = out.join(format!("{name}.crt"));
                refuse_existing(&[&cert], force)?;
                let certified = state
                    .sign_client_csr(&site, &name, &csr, pki::Validity::days(days))
                    .with_context(|| format!("{}", file.display()))?;
                create_out_dir(&out)?;
                write_file(&cert, certified.cert_pem.as_bytes(), 0o644, force)?;
                println!(
                    "Signed {} for device {name} of site {site}: serial {}, valid until {}.",
                    file.display(),
                    hex(&certified.serial),
                    certified.not_after.date()
                );
                println!(
                    "  {}  the certificate (PEM); the key stayed on the device",
                    cert.display()
                );
                Ok(())
            }
            ClientCommand::List {
                json,
                site,
                expiring,
                state,
            } => {
                let state = pki::StateDir::open(&state.state_dir)?;
                if let Some(site) = &site {
                    state.site(site)?;
                }
                let now = time::OffsetDateTime::now_utc();
                let mut clients = Vec::new();
                for c in state.clients()? {
                    if site.as_ref().is_some_and(|s| &c.site != s) {
                        continue;
                    }
                    if let Some(within) = expiring
                        && !expires_within(&c, now, within)?
                    {
                        continue;
                    }
                    clients.push(c);
                }
                let pending: Vec<(String, String)> = state
                    .links()?
                    .into_iter()
                    .map(|l| (l.record.site, l.record.serial))
                    .collect();
                let is_pending = |c: &pki::IndexEntry| {
                    pending.iter().any(|(s, n)| *s == c.site && *n == c.serial)
                };
                if json {
                    let clients: Vec<serde_json::Value> = clients
                        .iter()
                        .map(|c| {
                            let mut v = serde_json::to_value(c)?;
                            if let Some(o) = v.as_object_mut() {
                                o.insert("link_pending".into(), is_pending(c).into());
                            }
                            Ok(v)
                        })
                        .collect::<Result<_, serde_json::Error>>()?;
                    println!("{}", serde_json::to_string_pretty(&clients)?);
                } else {
                    println!(
                        "{:<10} {:<16} {:<24} {:<32} {:<20} REVOKED",
                        "KIND", "SITE", "NAME", "SERIAL", "NOT AFTER"
                    );
                    for c in clients {
                        println!(
                            "{:<10} {:<16} {:<24} {:<32} {:<20} {}",
                            c.kind.as_str(),
                            c.site,
                            c.name,
                            c.serial,
                            c.not_after,
                            match (&c.revoked_at, is_pending(&c)) {
                                (Some(at), _) => at.as_str(),
                                (None, true) => "- (link pending)",
                                (None, false) => "-",
                            }
                        );
                    }
                }
                Ok(())
            }
            ClientCommand::Revoke {
                target,
                site,
                state,
            } => {
                let state = pki::StateDir::open(&state.state_dir)?;
                let entry = state.revoke_any(site.as_deref(), &target)?;
                println!(
                    "Revoked {} {} of site {} (serial {}, fingerprint {}).",
                    entry.kind, entry.name, entry.site, entry.serial, entry.fingerprint
                );
                if entry.kind == pki::Kind::Device {
                    println!(
                        "A running edge refuses it within a second and closes its open connections; \
                     no restart needed."
                    );
                    println!("CRL updated: {}", state.crl_path(&entry.site).display());
                    println!(
                        "To replace the device: doorless-edge client add NEW-NAME --site {} (or \
                     `client add {}` again now that the old certificate is revoked).",
                        entry.site, entry.name
                    );
                } else {
                    println!("A running edge refuses it within a second; no restart needed.");
                }
                Ok(())
            }
            ClientCommand::Crl { site, state } => {
                let state = pki::StateDir::open(&state.state_dir)?;
                let path = state.write_crl(&site)?;
                println!(
                    "Re-signed the CRL of site {site}: {} (valid for {} days; re-run before then).",
                    path.display(),
                    pki::CRL_DAYS
                );
                Ok(())
            }
        }
    }
}

/// Whether `client renew NAME --site SITE` is about a connector: NAME is a live connector of
/// the site and not also a live device (a device and a connector may share a name; the device,
/// renewed as before, wins only when there is no connector of that name).
fn renews_connector(state: &pki::StateDir, site: &str, name: &str) -> anyhow::Result<bool> {
    let site = state.site(site)?;
    let clients = state.clients()?;
    let live = |kind| {
        clients.iter().any(|e| {
            e.kind == kind && e.site == site.name && e.name == name && e.revoked_at.is_none()
        })
    };
    let connector = live(pki::Kind::Connector);
    let device = live(pki::Kind::Device);
    anyhow::ensure!(
        !(connector && device),
        "site {} has both a device and a connector named {name}; revoke one of them first",
        site.name
    );
    Ok(connector)
}

/// Whether `entry` is live (not revoked, not expired at `now`) and expires within `within`.
fn expires_within(
    entry: &pki::IndexEntry,
    now: time::OffsetDateTime,
    within: std::time::Duration,
) -> anyhow::Result<bool> {
    if entry.revoked_at.is_some() {
        return Ok(false);
    }
    let not_after = time::OffsetDateTime::parse(
        &entry.not_after,
        &time::format_description::well_known::Rfc3339,
    )
    .with_context(|| {
        format!(
            "index entry {} of site {}: bad not_after {:?}",
            entry.name, entry.site, entry.not_after
        )
    })?;
    Ok(not_after > now && not_after <= now + within)
}

/// The output of `client add` / `client renew`, checked before anything is issued so that a
/// bad password or an existing file never costs a recorded certificate.
struct Package<'a> {
    args: &'a PackageArgs,
    key: pki::KeyType,
    password: String,
    generated: bool,
    files: [PathBuf; 4],
    /// Print nothing (`--json` prints the outcome instead).
    quiet: bool,
}

impl<'a> Package<'a> {
    fn prepare(state: &pki::StateDir, name: &str, args: &'a PackageArgs) -> anyhow::Result<Self> {
        // Before touching the file system with it: the name becomes file names.
        pki::validate_name(name)?;
        let (password, generated) = match &args.password {
            Some(p) => {
                pki::check_password(p)?;
                (p.clone(), false)
            }
            None => (pki::generate_password()?, true),
        };
        let files =
            ["p12", "mobileconfig", "crt", "key"].map(|ext| args.out.join(format!("{name}.{ext}")));
        refuse_existing(&files.iter().collect::<Vec<_>>(), args.force)?;
        // Readable before issuing: the profile needs it.
        if !args.no_server_ca {
            read_cert_der(&state.server_ca_path())?;
        }
        Ok(Self {
            args,
            key: if args.rsa {
                pki::KeyType::Rsa2048
            } else {
                pki::KeyType::EcdsaP256
            },
            password,
            generated,
            files,
            quiet: false,
        })
    }

    /// The password, if it was generated (one given by the user is not echoed back).
    fn shown_password(&self) -> Option<&str> {
        self.generated.then_some(self.password.as_str())
    }

    fn write(
        &self,
        state: &pki::StateDir,
        site: &str,
        name: &str,
        issued: &pki::Issued,
    ) -> anyhow::Result<()> {
        let result = self.write_files(state, site, name, issued);
        if result.is_err() {
            eprintln!(
                "doorless-edge: the certificate is recorded but its files could not all be \
                 written; its key exists nowhere else. Revoke it (doorless-edge client revoke \
                 {name} --site {site}) and issue a new one."
            );
        }
        result
    }

    fn write_files(
        &self,
        state: &pki::StateDir,
        site: &str,
        name: &str,
        issued: &pki::Issued,
    ) -> anyhow::Result<()> {
        let profile = if self.args.modern {
            pki::P12Profile::Modern
        } else {
            pki::P12Profile::Legacy
        };
        let ca_der = read_cert_der(&state.site(site)?.client_ca_path)?;
        let p12 = pki::export_p12(
            name,
            &issued.cert_der,
            &issued.key_der,
            &ca_der,
            &self.password,
            profile,
        )?;
        let server_ca = match self.args.no_server_ca {
            true => None,
            false => Some(read_cert_der(&state.server_ca_path())?),
        };
        let mobileconfig = pki::MobileConfig {
            site,
            name,
            cert_der: &issued.cert_der,
            p12: &p12,
            server_ca_der: server_ca.as_deref(),
        }
        .to_xml();

        create_out_dir(&self.args.out)?;
        let [p12_path, mc_path, crt_path, key_path] = &self.files;
        let force = self.args.force;
        write_file(key_path, issued.key_pem.as_bytes(), 0o600, force)?;
        write_file(crt_path, issued.cert_pem.as_bytes(), 0o644, force)?;
        write_file(p12_path, &p12, 0o600, force)?;
        write_file(mc_path, mobileconfig.as_bytes(), 0o600, force)?;
        if self.quiet {
            return Ok(());
        }

        println!(
            "  {}  PKCS#12, {profile}: import on the device",
            p12_path.display()
        );
        println!(
            "  {}  iOS/macOS profile with the .p12{} (asks for the same password)",
            mc_path.display(),
            if server_ca.is_some() {
                " and the edge's server CA"
            } else {
                ""
            }
        );
        println!("  {}  certificate (PEM)", crt_path.display());
        println!(
            "  {}  private key (PEM, unencrypted, mode 0600) for curl and scripts",
            key_path.display()
        );
        if self.generated {
            println!();
            println!(
                "Password of {name}.p12 and {name}.mobileconfig (shown only now, stored nowhere):"
            );
            println!();
            println!("    {}", self.password);
            println!();
        }
        println!("How to install it on each kind of device: docs/devices.md");
        Ok(())
    }
}

/// `client add --link`: issues and records the certificate, packages it and stores the
/// package behind a one-time link; prints the link, its QR code and the password.
fn add_link(
    state: &pki::StateDir,
    site: &str,
    name: &str,
    args: &PackageArgs,
    link: &LinkArgs,
    json: bool,
) -> anyhow::Result<()> {
    pki::validate_name(name)?;
    let site = state.site(site)?;
    let host = site
        .hostnames
        .first()
        .with_context(|| format!("site {} has no hostname", site.name))?
        .clone();
    let port = match (link.port, &link.config) {
        (Some(port), _) => port,
        (None, Some(config)) => edge::config::Config::load(config)?.listen.https.port(),
        (None, None) => 443,
    };
    let (password, generated) = match &args.password {
        Some(p) => {
            pki::check_password(p)?;
            (p.clone(), false)
        }
        None => (pki::generate_password()?, true),
    };
    let server_ca = match args.no_server_ca {
        true => None,
        false => Some(read_cert_der(&state.server_ca_path())?),
    };
    let client_ca = read_cert_der(&site.client_ca_path)?;
    let key = if args.rsa {
        pki::KeyType::Rsa2048
    } else {
        pki::KeyType::EcdsaP256
    };
    let issued = state.add_client(&site.name, name, pki::Validity::days(args.days), key)?;
    let saved = (|| {
        let profile = if args.modern {
            pki::P12Profile::Modern
        } else {
            pki::P12Profile::Legacy
        };
        let p12 = pki::export_p12(
            name,
            &issued.cert_der,
            &issued.key_der,
            &client_ca,
            &password,
            profile,
        )?;
        let mobileconfig = pki::MobileConfig {
            site: &site.name,
            name,
            cert_der: &issued.cert_der,
            p12: &p12,
            server_ca_der: server_ca.as_deref(),
        }
        .to_xml();
        let package = pki::LinkPackage {
            site: &site.name,
            name,
            serial: &issued.serial,
            p12: &p12,
            mobileconfig: &mobileconfig,
        };
        anyhow::Ok(state.save_link(package, link.valid_for)?)
    })();
    let (secret, record) = match saved {
        Ok(saved) => saved,
        Err(e) => {
            // The key exists nowhere else: a certificate nobody can use must not stay valid.
            let _ = state.revoke(pki::Kind::Device, &site.name, name);
            return Err(e.context("storing the device link (the certificate was revoked again)"));
        }
    };
    let authority = match port {
        443 => host,
        port => format!("{host}:{port}"),
    };
    let url = format!("https://{authority}/{}", secret.as_str());
    if json {
        let link = serde_json::json!({"url": url, "expires": record.expires});
        let password = generated.then_some(password.as_str());
        return print_add_json(&site.name, name, &issued, password, None, Some(link));
    }
    println!(
        "Issued device {name} for site {}: serial {}, valid until {}.",
        site.name,
        hex(&issued.serial),
        issued.not_after.date()
    );
    println!(
        "Open this link on the device (once; valid until {}):",
        record.expires
    );
    println!();
    println!("    {url}");
    println!();
    use std::io::IsTerminal as _;
    let draw = link.qr || (!link.no_qr && std::io::stdout().is_terminal());
    if draw {
        match qr(&url) {
            Ok(art) => println!("{art}"),
            Err(e) => eprintln!("doorless-edge: no QR code ({e}); type the link instead"),
        }
    }
    println!("Password of the certificate (shown only now, stored nowhere; not in the link):");
    println!();
    println!("    {password}");
    println!();
    println!(
        "The page offers the right file for the device. Until the link is used, `client list` \
         shows the device as pending; `client revoke {name} --site {}` cancels it.",
        site.name
    );
    Ok(())
}

/// `client add --json`: what was issued, for scripts. Keys are stable and always present:
/// `site`, `name`, `serial` (hex), `not_after` (RFC 3339), `password` (the generated one, or
/// null when given), `files` (`p12`, `mobileconfig`, `crt`, `key`: paths) or null, and `link`
/// (`url`, `expires`) or null.
fn print_add_json(
    site: &str,
    name: &str,
    issued: &pki::Issued,
    password: Option<&str>,
    files: Option<serde_json::Value>,
    link: Option<serde_json::Value>,
) -> anyhow::Result<()> {
    let not_after = issued
        .not_after
        .format(&time::format_description::well_known::Rfc3339)?;
    let out = serde_json::json!({
        "site": site,
        "name": name,
        "serial": hex(&issued.serial),
        "not_after": not_after,
        "password": password,
        "files": files,
        "link": link,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// The QR code of `text` in Unicode half blocks, light on dark so that it scans from a dark
/// terminal, with its quiet zone.
fn qr(text: &str) -> Result<String, qrcode::types::QrError> {
    use qrcode::render::unicode::Dense1x2;
    let code = qrcode::QrCode::new(text.as_bytes())?;
    Ok(code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

fn refuse_existing(files: &[&PathBuf], force: bool) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    for file in files {
        if file.exists() {
            anyhow::bail!(
                "{} already exists; choose another --out directory, or pass --force to overwrite",
                file.display()
            );
        }
    }
    Ok(())
}

fn create_out_dir(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))
}

fn read_cert_der(path: &Path) -> anyhow::Result<Vec<u8>> {
    let certs = pki::load_certs(path)?;
    let first = certs
        .into_iter()
        .next()
        .with_context(|| format!("{}: no certificate", path.display()))?;
    Ok(first.to_vec())
}

/// Writes `data` with `mode` from creation on. Without `force`, never replaces a file (even one
/// that appeared since the check); with it, replaces atomically.
fn write_file(path: &Path, data: &[u8], mode: u32, force: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let context = || format!("writing {}", path.display());
    let target = if force {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        path.with_file_name(format!(
            ".{}.tmp-{}",
            name.unwrap_or_default(),
            std::process::id()
        ))
    } else {
        path.to_owned()
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&target)
        .with_context(context)?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .with_context(context)?;
    if force {
        std::fs::rename(&target, path).with_context(context)?;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
