//! `doorless-edge site`: add and list sites, mint connector credentials (enrollment tokens),
//! re-issue a site's local HTTPS certificate.
//!
//! Not the site registry the running edge serves from: that is the library's; this only writes
//! the state directory through `pki`.

use clap::Subcommand;

use crate::StateArg;

#[derive(Debug, Subcommand)]
pub(crate) enum SiteCommand {
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
        state: StateArg,
    },
}

impl SiteCommand {
    /// Runs the verb.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        match self {
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
