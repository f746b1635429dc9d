//! `doorless-edge site`: add and list sites, mint connector credentials (enrollment tokens).
//!
//! Not the site registry the running edge serves from: that is the library's; this only writes
//! the state directory through `pki`.

use clap::Subcommand;

use crate::StateArg;

#[derive(Debug, Subcommand)]
pub(crate) enum SiteCommand {
    /// Add a site and print the enrollment token for its connector. Refuses an existing site
    /// (`site token` mints another connector credential).
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
                            "site {} already exists with hostname(s) {}; adding {} to an                              existing site is not supported; nothing changed",
                            site.name,
                            site.hostnames.join(", "),
                            new.join(", ")
                        );
                        anyhow::bail!(
                            "site {} already exists (hostname(s) {}); nothing changed. To mint                              another connector credential for it run `doorless-edge site token {}`",
                            site.name,
                            site.hostnames.join(", "),
                            site.name
                        );
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
