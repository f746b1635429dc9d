//! `doorless-edge site`: add and list sites, mint connector credentials: one-time enrollment
//! codes (the default) and enrollment tokens (`--token`, `site token`); re-issue a site's local
//! HTTPS certificate.
//!
//! Not the site registry the running edge serves from: that is the library's; this only writes
//! the state directory through `pki`.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::StateArg;
use crate::run::{DEFAULT_CONFIG, load_config};

/// The edge's configuration file, where the ports a credential carries come from.
#[derive(Debug, clap::Args)]
pub(crate) struct EdgeConfigArg {
    /// The edge's configuration: a token carries its `listen.tunnel` port, a code its
    /// `listen.https` port. Default: /etc/doorless/edge.toml if it exists and uses this state
    /// directory, else port 443 for both.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl EdgeConfigArg {
    /// The configuration of the edge serving `state`, if there is one.
    fn load(&self, state: &Path) -> anyhow::Result<Option<edge::config::Config>> {
        if let Some(path) = &self.config {
            return Ok(Some(load_config(path)?));
        }
        let path = Path::new(DEFAULT_CONFIG);
        if !path.exists() {
            return Ok(None);
        }
        let config = load_config(path)?;
        // Another edge's file (a test state dir on a machine that runs a real edge) says
        // nothing about this one.
        Ok(same_dir(&config.state, state).then_some(config))
    }

    /// The public HTTPS port a code for the edge serving `state` carries.
    pub(crate) fn https_port(&self, state: &Path) -> anyhow::Result<u16> {
        Ok(self.load(state)?.map_or(443, |c| c.listen.https.port()))
    }
}

/// Where a new token sends its connector.
#[derive(Debug, clap::Args)]
pub(crate) struct EdgeArgs {
    /// Tunnel address (HOST:PORT) the connector dials. Default: the address given to
    /// `init --edge-addr`, else the site's first hostname on the port of the configuration's
    /// `listen.tunnel`.
    #[arg(long, value_name = "HOST:PORT")]
    edge_addr: Option<String>,
    #[command(flatten)]
    config: EdgeConfigArg,
}

impl EdgeArgs {
    /// The edge address choice for `state`, reading the configuration if there is one.
    fn target(&self, state: &Path) -> anyhow::Result<pki::EdgeTarget> {
        if let Some(addr) = &self.edge_addr {
            return Ok(pki::EdgeTarget::Addr(addr.clone()));
        }
        let tunnel_port = self
            .config
            .load(state)?
            .map_or(443, |c| c.listen.tunnel.port());
        Ok(pki::EdgeTarget::Default { tunnel_port })
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

#[derive(Debug, Subcommand)]
pub(crate) enum SiteCommand {
    /// Add a site and print a one-time enrollment code for its connector (`--token`: an
    /// enrollment token). Refuses an existing site (`site code` / `site token` mint another
    /// connector credential).
    Add {
        /// Site name (lowercase letters, digits, `.`, `_`, `-`).
        name: String,
        /// Hostname(s) that select this site; repeat for several.
        #[arg(long = "hostname", required = true)]
        hostnames: Vec<String>,
        /// Print an enrollment token (a long secret carrying the connector's key) instead of a
        /// code.
        #[arg(long)]
        token: bool,
        /// Print JSON (`site`, `hostnames`, and `code` or `token`) instead of instructions.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        code: CodeArgs,
        #[command(flatten)]
        edge: EdgeArgs,
        #[command(flatten)]
        state: StateArg,
    },
    /// Mint another one-time enrollment code for a site; or list (`--list`) or revoke
    /// (`--revoke ID`, `--revoke-all`) its codes.
    Code {
        /// Site name.
        name: String,
        /// List the site's codes (pending, and those used, expired or revoked in the last 30
        /// days).
        #[arg(long, conflicts_with_all = ["revoke", "revoke_all"])]
        list: bool,
        /// Revoke the pending code whose id starts with ID (as `--list` shows it).
        #[arg(long, value_name = "ID", conflicts_with = "revoke_all")]
        revoke: Option<String>,
        /// Revoke every pending code of the site.
        #[arg(long)]
        revoke_all: bool,
        #[command(flatten)]
        code: CodeArgs,
        #[command(flatten)]
        config: EdgeConfigArg,
        #[command(flatten)]
        state: StateArg,
    },
    /// List the enrollment codes of every site.
    Codes {
        #[command(flatten)]
        state: StateArg,
    },
    /// Remove a site: revoke its devices, connectors and pending codes (a running edge drops
    /// them within a second), and delete its files (CAs, keys, certificates) from the state
    /// directory. Asks first; without a terminal it needs --yes.
    Remove {
        /// Site name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        state: StateArg,
    },
    /// List sites.
    List {
        /// Print JSON (an array of `{name, hostnames}`) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateArg,
    },
    /// Re-issue the site's HTTPS certificate from the local server CA (new key, same
    /// hostnames, 825 days). For sites without ACME or their own tls_cert; a running edge
    /// picks it up by itself.
    RenewCert {
        /// Site name.
        name: String,
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
        edge: EdgeArgs,
        #[command(flatten)]
        state: StateArg,
    },
}

/// How a code is minted.
#[derive(Debug, clap::Args)]
pub(crate) struct CodeArgs {
    /// Where the connector reaches the edge's HTTPS port, `HOST[:PORT]`, as written into the
    /// code (default: the site's first hostname, on the port of the configuration's
    /// `listen.https`, else 443).
    #[arg(long, value_name = "HOST[:PORT]")]
    edge: Option<String>,
    /// How long the code stays usable (e.g. `24h`, `30m`, `7d`).
    #[arg(long, default_value = "24h", value_parser = humantime_serde::re::humantime::parse_duration)]
    valid_for: std::time::Duration,
}

impl CodeArgs {
    /// Whether `--edge` was given.
    pub(crate) fn edge_given(&self) -> bool {
        self.edge.is_some()
    }
}

impl SiteCommand {
    /// Runs the verb.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
            SiteCommand::Add {
                name,
                hostnames,
                token,
                json,
                code,
                edge,
                state,
            } => {
                let target = edge.target(&state.state_dir)?;
                let https_port = edge.config.https_port(&state.state_dir)?;
                let state = pki::StateDir::open(&state.state_dir)?;
                match state.site(&name) {
                    Ok(site) => {
                        // Refuse, and change nothing: minting a connector credential (a
                        // secret) as a side effect of a repeated `add` is how stray tokens
                        // appear; that is `site token`'s job. Hostnames are still checked so
                        // a bad one is reported as such.
                        let mut new = Vec::new();
                        for hostname in &hostnames {
                            let hostname = pki::normalize_hostname(hostname)?;
                            if !site.hostnames.contains(&hostname) && !new.contains(&hostname) {
                                new.push(hostname);
                            }
                        }
                        anyhow::ensure!(
                            new.is_empty(),
                            "site {} already exists with hostname(s) {}; adding {} to an existing \
                             site is not supported; nothing changed",
                            site.name,
                            site.hostnames.join(", "),
                            new.join(", ")
                        );
                        anyhow::bail!(
                            "site {} already exists (hostname(s) {}); nothing changed. To let \
                             another connector join it run `doorless-edge site code {}` (a one-time \
                             code) or `doorless-edge site token {}` (a token)",
                            site.name,
                            site.hostnames.join(", "),
                            site.name,
                            site.name
                        );
                    }
                    Err(pki::Error::SiteNotFound { .. }) => {
                        // Checked before the site is made, so a bad address leaves nothing behind.
                        target.check()?;
                        let site = state.add_site(&name, &hostnames)?;
                        if json {
                            return print_add_json(
                                &state,
                                &site,
                                token.then_some(&target),
                                &code,
                                https_port,
                            );
                        }
                        println!(
                            "Site {} added for {}.",
                            site.name,
                            site.hostnames.join(", ")
                        );
                        credential(&state, &site, token.then_some(&target), &code, https_port)?;
                    }
                    Err(e) => return Err(e.into()),
                }
                Ok(())
            }
            SiteCommand::Remove { name, yes, state } => {
                let state = pki::StateDir::open(&state.state_dir)?;
                let site = state.site(&name)?;
                if !yes && !confirm_remove(&site)? {
                    anyhow::bail!("site {} not removed", site.name);
                }
                let revoked = state.remove_site(&site.name)?;
                println!(
                    "Removed site {} ({}): revoked {} certificate(s), deleted its files.",
                    site.name,
                    site.hostnames.join(", "),
                    revoked.len()
                );
                for entry in &revoked {
                    println!(
                        "  revoked {} {} (serial {})",
                        entry.kind, entry.name, entry.serial
                    );
                }
                println!(
                    "A running edge stops serving it within a second. Remove any [sites.{}] \
                     section from the edge configuration.",
                    site.name
                );
                Ok(())
            }
            SiteCommand::List { json, state } => {
                let state = pki::StateDir::open(&state.state_dir)?;
                if json {
                    let sites: Vec<_> = state
                        .sites()?
                        .iter()
                        .map(|s| serde_json::json!({"name": s.name, "hostnames": s.hostnames}))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&sites)?);
                    return Ok(());
                }
                for site in state.sites()? {
                    println!("{}\t{}", site.name, site.hostnames.join(","));
                }
                Ok(())
            }
            SiteCommand::Code {
                name,
                list,
                revoke,
                revoke_all,
                code,
                config,
                state,
            } => {
                let https_port = match list || revoke.is_some() || revoke_all {
                    true => 443,
                    false => config.https_port(&state.state_dir)?,
                };
                let state = pki::StateDir::open(&state.state_dir)?;
                let site = state.site(&name)?;
                if list {
                    print_codes(&state, Some(&site.name))
                } else if revoke.is_some() || revoke_all {
                    for record in state.revoke_codes(&site.name, revoke.as_deref())? {
                        println!(
                            "Revoked code {} of site {}.",
                            short(&record.id),
                            record.site
                        );
                    }
                    Ok(())
                } else {
                    print_code(&state, &site, &code, https_port)
                }
            }
            SiteCommand::Codes { state } => {
                let state = pki::StateDir::open(&state.state_dir)?;
                print_codes(&state, None)
            }
            SiteCommand::RenewCert { name, state } => {
                let state = pki::StateDir::open(&state.state_dir)?;
                let issued = state.renew_server_cert(&name)?;
                let not_after = issued
                    .not_after
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| issued.not_after.to_string());
                println!(
                    "Site {name}: new HTTPS certificate from the local server CA, valid until {not_after}."
                );
                println!(
                    "Devices that trust the local server CA (server-ca.crt) accept it as they did the \
                     old one; with [acme] on or a tls_cert set, the edge does not serve it."
                );
                Ok(())
            }
            SiteCommand::Token {
                name,
                connector_id,
                edge,
                state,
            } => {
                let target = edge.target(&state.state_dir)?;
                let state = pki::StateDir::open(&state.state_dir)?;
                let token = state.issue_connector_to(&name, connector_id.as_deref(), &target)?;
                println!("Site {name}: new connector credential.");
                print_token(&token);
                Ok(())
            }
        }
    }
}

/// Asks on the terminal whether to remove `site`; refuses when stdin is not a terminal, so a
/// script cannot remove a site by accident.
fn confirm_remove(site: &pki::Site) -> anyhow::Result<bool> {
    use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
    anyhow::ensure!(
        std::io::stdin().is_terminal(),
        "site remove revokes every device and connector of site {} and deletes its files; \
         stdin is not a terminal to confirm on, so pass --yes; nothing changed",
        site.name
    );
    print!(
        "Remove site {} ({}), revoking all its devices and connectors? [y/N] ",
        site.name,
        site.hostnames.join(", ")
    );
    std::io::stdout().flush()?;
    let mut answer = String::new();
    // One line; a terminal line is short, and `take` bounds it anyway.
    std::io::stdin().lock().take(1024).read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Prints a new connector credential for `site`: a code, or a token dialing `token_target`
/// if one was asked for.
fn credential(
    state: &pki::StateDir,
    site: &pki::Site,
    token_target: Option<&pki::EdgeTarget>,
    code: &CodeArgs,
    https_port: u16,
) -> anyhow::Result<()> {
    match token_target {
        Some(target) => {
            print_token(&state.issue_connector_to(&site.name, None, target)?);
            Ok(())
        }
        None => print_code(state, site, code, https_port),
    }
}

/// `site add --json`: the new site and its connector credential, for scripts. Keys are stable:
/// `site`, `hostnames`, and either `code` (`code`, `id`, `expires`) or `token` (`token`,
/// `connector_id`, `edges`).
fn print_add_json(
    state: &pki::StateDir,
    site: &pki::Site,
    token_target: Option<&pki::EdgeTarget>,
    code: &CodeArgs,
    https_port: u16,
) -> anyhow::Result<()> {
    let credential = match token_target {
        Some(target) => {
            let token = state.issue_connector_to(&site.name, None, target)?;
            serde_json::json!({"token": {
                "token": token.encode(),
                "connector_id": token.connector_id,
                "edges": token.edges,
            }})
        }
        None => {
            let (code, record) = state.mint_code(
                &site.name,
                &code_edge(site, code, https_port)?,
                code.valid_for,
            )?;
            serde_json::json!({"code": {
                "code": code.encode(),
                "id": record.id,
                "expires": record.expires,
            }})
        }
    };
    let mut out = serde_json::json!({"site": site.name, "hostnames": site.hostnames});
    if let (Some(out), Some(credential)) = (out.as_object_mut(), credential.as_object()) {
        out.extend(credential.clone());
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Where a code sends its connector: `--edge`, else the site's first hostname on
/// `https_port` (the edge's `listen.https`; left out when it is 443, the code's default).
fn code_edge(site: &pki::Site, args: &CodeArgs, https_port: u16) -> anyhow::Result<String> {
    if let Some(edge) = &args.edge {
        return Ok(edge.clone());
    }
    let host = site
        .hostnames
        .first()
        .ok_or_else(|| anyhow::anyhow!("site {} has no hostname", site.name))?;
    Ok(match https_port {
        443 => host.clone(),
        port => format!("{host}:{port}"),
    })
}

fn print_code(
    state: &pki::StateDir,
    site: &pki::Site,
    args: &CodeArgs,
    https_port: u16,
) -> anyhow::Result<()> {
    let edge = code_edge(site, args, https_port)?;
    let (code, record) = state.mint_code(&site.name, &edge, args.valid_for)?;
    println!(
        "One-time enrollment code for a new connector of site {} (valid until {}, id {}):",
        site.name,
        record.expires,
        short(&record.id)
    );
    println!();
    println!("    {}", code.encode());
    println!();
    println!(
        "At home: paste it into the add-on's `enrollment_code` option, or run
             doorless-connector enroll {}
The connector makes its own key; the code works once.",
        code.encode()
    );
    Ok(())
}

/// `client renew CONNECTOR`: a one-time renewal code for a live connector of `site`.
pub(crate) fn print_renewal_code(
    state: &pki::StateDir,
    site: &str,
    connector_id: &str,
    args: &CodeArgs,
    https_port: u16,
) -> anyhow::Result<()> {
    let site = state.site(site)?;
    let edge = code_edge(&site, args, https_port)?;
    let (code, record) =
        state.mint_renewal_code(&site.name, connector_id, &edge, args.valid_for)?;
    println!(
        "One-time renewal code for connector {connector_id} of site {} (valid until {}, id {}):",
        site.name,
        record.expires,
        short(&record.id)
    );
    println!();
    println!("    {}", code.encode());
    println!();
    println!("At home, give it to the connector in place of its first code:");
    println!("  - the add-on: paste it into the `enrollment_code` option and restart the add-on;");
    println!(
        "  - otherwise: doorless-connector enroll --force {}   then restart the connector.",
        code.encode()
    );
    println!(
        "The connector makes a new key and gets a new certificate as {connector_id}; the old \
         certificate keeps working until then and is revoked the moment the code is used."
    );
    println!(
        "The code works once; `doorless-edge site code {} --revoke {}` cancels it.",
        site.name,
        short(&record.id)
    );
    Ok(())
}

fn print_codes(state: &pki::StateDir, site: Option<&str>) -> anyhow::Result<()> {
    println!("ID\tSITE\tSTATE\tEXPIRES\tCONNECTOR");
    for record in state
        .codes()?
        .iter()
        .filter(|r| site.is_none_or(|s| r.site == s))
    {
        println!(
            "{}\t{}\t{}\t{}\t{}",
            short(&record.id),
            record.site,
            record.current_state().as_str(),
            record.expires,
            record.connector_id.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// The first 8 hex digits of a code id: enough to name it.
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn print_token(token: &pki::EnrollmentToken) {
    println!(
        "Enrollment token for connector {} of site {} (a secret: paste it into the connector's \
         configuration as `token`, or DOORLESS_TOKEN):",
        token.connector_id, token.site
    );
    println!();
    println!("{}", token.encode());
    println!();
    println!(
        "The connector dials {} (UDP). Another address? Mint a token with \
         `doorless-edge site token {} --edge-addr HOST:PORT`, or set DOORLESS_EDGES=HOST:PORT on \
         the connector.",
        token.edges.join(", "),
        token.site
    );
}
