//! `doorless-edge site`: add and list sites, mint connector credentials (enrollment tokens).
//!
//! Not the site registry the running edge serves from: that is the library's; this only writes
//! the state directory through `pki`.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::StateArg;
use crate::run::{DEFAULT_CONFIG, load_config};

/// Where a new token sends its connector.
#[derive(Debug, clap::Args)]
pub(crate) struct EdgeArgs {
    /// Tunnel address (HOST:PORT) the connector dials. Default: the address given to
    /// `init --edge-addr`, else the site's first hostname on the port of the configuration's
    /// `listen.tunnel`.
    #[arg(long, value_name = "HOST:PORT")]
    edge_addr: Option<String>,
    /// Configuration whose `listen.tunnel` port the token carries. Default:
    /// /etc/doorless/edge.toml if it exists and uses this state directory, else port 443.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

impl EdgeArgs {
    /// The edge address choice for `state`, reading the configuration if there is one.
    fn target(&self, state: &Path) -> anyhow::Result<pki::EdgeTarget> {
        if let Some(addr) = &self.edge_addr {
            return Ok(pki::EdgeTarget::Addr(addr.clone()));
        }
        let tunnel_port = match &self.config {
            Some(path) => load_config(path)?.listen.tunnel.port(),
            None => {
                let path = Path::new(DEFAULT_CONFIG);
                match path.exists() {
                    // Another edge's file (a test state dir on a machine that runs a real
                    // edge) says nothing about this one.
                    true => {
                        let config = load_config(path)?;
                        match same_dir(&config.state, state) {
                            true => config.listen.tunnel.port(),
                            false => 443,
                        }
                    }
                    false => 443,
                }
            }
        };
        Ok(pki::EdgeTarget::Default { tunnel_port })
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

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
        edge: EdgeArgs,
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
        edge: EdgeArgs,
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
                edge,
                state,
            } => {
                let target = edge.target(&state.state_dir)?;
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
                        let token = state.issue_connector_to(&site.name, None, &target)?;
                        println!(
                            "Site {} already exists; minted an additional connector credential.",
                            site.name
                        );
                        print_token(&token);
                    }
                    Err(pki::Error::SiteNotFound { .. }) => {
                        // Checked before the site is made, so a bad address leaves nothing behind.
                        target.check()?;
                        let site = state.add_site(&name, &hostnames)?;
                        let token = state.issue_connector_to(&site.name, None, &target)?;
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
