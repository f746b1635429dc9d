//! The `doorless-edge` command line: PKI verbs, `run`, and `demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edge::config::{Config, LogFormat};

#[derive(Debug, Parser)]
#[command(
    name = "doorless-edge",
    version,
    about = "doorless edge: certificate-gated public entry to Home Assistant"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the state directory: CAs, keys, and an example edge.toml.
    Init {
        #[command(flatten)]
        state: StateArg,
        /// Public address of this edge's tunnel listener (HOST:PORT) for enrollment tokens.
        /// Default: each site's first hostname on port 443.
        #[arg(long)]
        edge_addr: Option<String>,
    },
    /// Manage sites (hostnames served by one Home Assistant).
    #[command(subcommand)]
    Site(SiteCommand),
    /// Manage device (client) certificates.
    #[command(subcommand)]
    Client(ClientCommand),
    /// Run the edge.
    Run {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// Write the bound addresses as JSON here once ready.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Log format (`text` or `json`), overriding `log.format`.
        #[arg(long)]
        log_format: Option<LogFormat>,
    },
    /// Check a configuration file and exit.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a complete local demo: edge, connector and a stand-in Home Assistant.
    Demo {
        /// HTTPS port on 127.0.0.1 (0 picks a free one).
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Directory for the demo's throwaway PKI (default: a new temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Write the demo's addresses and files as JSON here once ready.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct StateArg {
    /// State directory.
    #[arg(
        long,
        env = "DOORLESS_STATE_DIR",
        default_value = "/var/lib/doorless-edge"
    )]
    state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum SiteCommand {
    /// Add a site and print the enrollment token for its connector. On an existing site (with
    /// no new hostnames), mint an additional connector credential instead.
    Add {
        /// Site name (lowercase letters, digits, `.`, `_`, `-`).
        name: String,
        /// Hostname(s) that select this site; repeat for several.
        #[arg(long = "hostname", required = true)]
        hostnames: Vec<String>,
        #[command(flatten)]
        state: StateArg,
    },
    /// List sites.
    List {
        #[command(flatten)]
        state: StateArg,
    },
    /// Mint another connector credential (enrollment token) for an existing site.
    Token {
        /// Site name.
        name: String,
        /// Connector id (default: the next free `connector-N`).
        #[arg(long)]
        connector_id: Option<String>,
        #[command(flatten)]
        state: StateArg,
    },
}

/// Where and how `client add` / `client renew` package a device certificate.
#[derive(Debug, clap::Args)]
struct PackageArgs {
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

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Issue a device certificate; writes NAME.p12, NAME.mobileconfig, NAME.crt and NAME.key.
    Add {
        /// Device name (lowercase letters, digits, `.`, `_`, `-`).
        name: String,
        /// Site the device may open.
        #[arg(long)]
        site: String,
        #[command(flatten)]
        package: PackageArgs,
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
    /// Re-issue a device certificate (new key, new serial) and revoke the old one.
    Renew {
        /// Device name.
        name: String,
        /// Site of the device.
        #[arg(long)]
        site: String,
        #[command(flatten)]
        package: PackageArgs,
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

/// mimalloc instead of glibc malloc: allocation was ~13% of the request path's CPU under
/// load, and mimalloc cut the small-request CPU per request (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            ready_file,
            log_format,
        } => run(&config, ready_file.as_deref(), log_format),
        Command::CheckConfig { config } => load_config(&config).map(|_| {
            println!("{}: ok", config.display());
        }),
        Command::Demo {
            port,
            dir,
            ready_file,
        } => runtime().and_then(|rt| {
            let _log = daemon::init_logging(LogFormat::Text, "info,access=off");
            rt.block_on(edge::demo::run(port, dir, ready_file))
        }),
        Command::Init { state, edge_addr } => init(&state.state_dir, edge_addr),
        Command::Site(cmd) => site(cmd),
        Command::Client(cmd) => client(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("doorless-edge: {e:#}");
            if e.downcast_ref::<edge::config::ConfigError>().is_some() {
                ExitCode::from(daemon::EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn run(
    config: &Path,
    ready_file: Option<&Path>,
    log_format: Option<LogFormat>,
) -> anyhow::Result<()> {
    let config = load_config(config)?;
    let _log = daemon::init_logging(log_format.unwrap_or(config.log.format), &config.log.filter);
    let rt = runtime()?;
    rt.block_on(async {
        let edge = edge::Edge::bind(config).await?;
        if let Some(path) = ready_file {
            daemon::write_ready_file(path, &serde_json::to_value(edge.addrs())?)?;
        }
        edge.run(daemon::shutdown_on_signal()).await
    })
}

fn init(state_dir: &Path, edge_addr: Option<String>) -> anyhow::Result<()> {
    let state = pki::StateDir::init(state_dir, &pki::InitOptions { edge_addr })?;
    let example = state.root().join("edge.toml");
    let text = format!(
        "# doorless-edge configuration; every key is described in docs/config.md.\n\
         state_dir = \"{}\"\n\n\
         [listen]\n\
         https = \"0.0.0.0:443\"    # TCP, browsers and apps\n\
         tunnel = \"0.0.0.0:443\"   # UDP, QUIC from connectors\n\
         admin = \"127.0.0.1:9470\" # /healthz /readyz /status\n",
        state.root().display()
    );
    std::fs::write(&example, text).with_context(|| format!("writing {}", example.display()))?;
    println!("Initialised {}", state.root().display());
    println!("Example configuration: {}", example.display());
    println!(
        "Next: doorless-edge site add NAME --hostname ha.example.com --state-dir {}",
        state.root().display()
    );
    Ok(())
}

fn site(cmd: SiteCommand) -> anyhow::Result<()> {
    match cmd {
        SiteCommand::Add {
            name,
            hostnames,
            state,
        } => {
            let state = pki::StateDir::open(&state.state_dir)?;
            match state.site(&name) {
                Ok(site) => {
                    // An existing site: mint one more connector credential, but never
                    // silently ignore hostnames the user expected to be added.
                    let mut new = Vec::new();
                    for hostname in &hostnames {
                        let hostname = pki::normalize_hostname(hostname)?;
                        if !site.hostnames.contains(&hostname) && !new.contains(&hostname) {
                            new.push(hostname);
                        }
                    }
                    if !new.is_empty() {
                        anyhow::bail!(
                            "site {} already exists with hostname(s) {}; adding {} to an existing \
                             site is not supported (run `site add` with only its hostnames to mint \
                             another connector credential)",
                            site.name,
                            site.hostnames.join(", "),
                            new.join(", ")
                        );
                    }
                    let token = state.issue_connector(&site.name, None)?;
                    println!(
                        "Site {} already exists; minted an additional connector credential.",
                        site.name
                    );
                    print_token(&token);
                }
                Err(pki::Error::SiteNotFound { .. }) => {
                    let site = state.add_site(&name, &hostnames)?;
                    let token = state.issue_connector(&site.name, None)?;
                    println!(
                        "Site {} added for {}.",
                        site.name,
                        site.hostnames.join(", ")
                    );
                    print_token(&token);
                }
                Err(e) => return Err(e.into()),
            }
            Ok(())
        }
        SiteCommand::List { state } => {
            let state = pki::StateDir::open(&state.state_dir)?;
            for site in state.sites()? {
                println!("{}\t{}", site.name, site.hostnames.join(","));
            }
            Ok(())
        }
        SiteCommand::Token {
            name,
            connector_id,
            state,
        } => {
            let state = pki::StateDir::open(&state.state_dir)?;
            let token = state.issue_connector(&name, connector_id.as_deref())?;
            println!("Site {name}: new connector credential.");
            print_token(&token);
            Ok(())
        }
    }
}

fn print_token(token: &pki::EnrollmentToken) {
    println!(
        "Enrollment token for connector {} of site {} (a secret: paste it into the connector's \
         configuration as `token`, or DOORLESS_TOKEN):",
        token.connector_id, token.site
    );
    println!();
    println!("{}", token.encode());
}

fn client(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Add {
            name,
            site,
            package,
            state,
        } => {
            let state = pki::StateDir::open(&state.state_dir)?;
            let plan = Package::prepare(&state, &name, &package)?;
            let issued =
                state.add_client(&site, &name, pki::Validity::days(package.days), plan.key)?;
            println!(
                "Issued device {name} for site {site}: serial {}, valid until {}.",
                hex(&issued.serial),
                issued.not_after.date()
            );
            plan.write(&state, &site, &name, &issued)
        }
        ClientCommand::Renew {
            name,
            site,
            package,
            state,
        } => {
            let state = pki::StateDir::open(&state.state_dir)?;
            let plan = Package::prepare(&state, &name, &package)?;
            let renewed = state.renew(&site, &name, pki::Validity::days(package.days), plan.key)?;
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
        ClientCommand::List { json, site, state } => {
            let state = pki::StateDir::open(&state.state_dir)?;
            if let Some(site) = &site {
                state.site(site)?;
            }
            let clients: Vec<pki::IndexEntry> = state
                .clients()?
                .into_iter()
                .filter(|c| site.as_ref().is_none_or(|s| &c.site == s))
                .collect();
            if json {
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
                        c.revoked_at.as_deref().unwrap_or("-")
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

/// The output of `client add` / `client renew`, checked before anything is issued so that a
/// bad password or an existing file never costs a recorded certificate.
struct Package<'a> {
    args: &'a PackageArgs,
    key: pki::KeyType,
    password: String,
    generated: bool,
    files: [PathBuf; 4],
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
        })
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

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
