//! The `doorless-edge` command line: PKI verbs, `run`, and `demo`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use edge::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

/// Exit code for bad configuration or usage (BSD `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

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
    /// Add a site and print the enrollment token for its connector.
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

#[derive(Debug, Subcommand)]
enum ClientCommand {
    /// Issue a device certificate; writes NAME.crt and NAME.key.
    Add {
        /// Device name (lowercase letters, digits, `.`, `_`, `-`).
        name: String,
        /// Site the device may open.
        #[arg(long)]
        site: String,
        /// Validity in days.
        #[arg(long, default_value_t = 730)]
        days: u32,
        /// Output directory.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        #[command(flatten)]
        state: StateArg,
    },
    /// List issued certificates.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        state: StateArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, ready_file } => run(&config, ready_file.as_deref()),
        Command::CheckConfig { config } => load_config(&config).map(|_| {
            println!("{}: ok", config.display());
        }),
        Command::Demo {
            port,
            dir,
            ready_file,
        } => runtime().and_then(|rt| {
            init_logging(LogFormat::Text, "info,access=off");
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
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

fn run(config: &Path, ready_file: Option<&Path>) -> anyhow::Result<()> {
    let config = load_config(config)?;
    init_logging(config.log.format, &config.log.filter);
    let rt = runtime()?;
    rt.block_on(async {
        let edge = edge::Edge::bind(config).await?;
        if let Some(path) = ready_file {
            write_ready_file(path, &serde_json::to_value(edge.addrs())?)?;
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        edge.run(shutdown).await
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
            let site = state.add_site(&name, &hostnames)?;
            let token = state.issue_connector(&site.name, None)?;
            println!(
                "Site {} added for {}.",
                site.name,
                site.hostnames.join(", ")
            );
            println!(
                "Enrollment token for connector {} (a secret: paste it into the connector's configuration):",
                token.connector_id
            );
            println!();
            println!("{}", token.encode());
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
            println!(
                "Enrollment token for connector {} of site {name}:",
                token.connector_id
            );
            println!();
            println!("{}", token.encode());
            Ok(())
        }
    }
}

fn client(cmd: ClientCommand) -> anyhow::Result<()> {
    match cmd {
        ClientCommand::Add {
            name,
            site,
            days,
            out,
            state,
        } => {
            let state = pki::StateDir::open(&state.state_dir)?;
            let issued = state.add_client(
                &site,
                &name,
                pki::Validity::days(days),
                pki::KeyType::EcdsaP256,
            )?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let cert = out.join(format!("{name}.crt"));
            let key = out.join(format!("{name}.key"));
            std::fs::write(&cert, &issued.cert_pem)
                .with_context(|| format!("writing {}", cert.display()))?;
            write_private(&key, issued.key_pem.as_bytes())?;
            println!(
                "Issued {name} for site {site}, valid until {}.",
                issued.not_after
            );
            println!("  certificate: {}", cert.display());
            println!("  private key: {}", key.display());
            Ok(())
        }
        ClientCommand::List { json, state } => {
            let state = pki::StateDir::open(&state.state_dir)?;
            let clients = state.clients()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&clients)?);
            } else {
                println!(
                    "{:<10} {:<16} {:<24} {:<26} {:<10}",
                    "KIND", "SITE", "NAME", "NOT AFTER", "REVOKED"
                );
                for c in clients {
                    println!(
                        "{:<10} {:<16} {:<24} {:<26} {:<10}",
                        format!("{:?}", c.kind).to_lowercase(),
                        c.site,
                        c.name,
                        c.not_after,
                        c.revoked_at.as_deref().unwrap_or("-")
                    );
                }
            }
            Ok(())
        }
    }
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(data)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn write_ready_file(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, value.to_string())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging(format: LogFormat, filter: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.compact().init(),
    }
}

async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}
