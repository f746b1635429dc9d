//! The `doorless-connector` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use connector::config::{Config, LogFormat};
use tokio_util::sync::CancellationToken;

/// Exit code for bad configuration or usage (BSD `EX_USAGE`).
const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "doorless-connector",
    version,
    about = "doorless connector: dials the edge and forwards to Home Assistant"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the connector.
    Run {
        /// Configuration file (optional: DOORLESS_TOKEN and DOORLESS_UPSTREAM suffice).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Write the admin address as JSON here once the first edge connection registered.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Check a configuration and exit.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config, ready_file } => run(config.as_deref(), ready_file.as_deref()),
        Command::CheckConfig { config } => Config::load(config.as_deref())
            .map(|c| {
                println!(
                    "ok: site {} connector {}",
                    c.token.site, c.token.connector_id
                )
            })
            .map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("doorless-connector: {e:#}");
            if e.downcast_ref::<connector::config::ConfigError>().is_some() {
                ExitCode::from(EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(config: Option<&Path>, ready_file: Option<&Path>) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    init_logging(config.log.format, &config.log.filter);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let connector = connector::Connector::bind(config).await?;
        let shutdown = CancellationToken::new();
        tokio::spawn(signals(shutdown.clone()));
        if let Some(path) = ready_file {
            let path = path.to_owned();
            let admin = connector.admin_addr();
            let mut ready = connector.ready();
            tokio::spawn(async move {
                if ready.wait_for(|r| *r).await.is_ok() {
                    let body = serde_json::json!({ "admin": admin }).to_string();
                    if let Err(e) = write_atomic(&path, &body) {
                        tracing::error!(error = %e, "cannot write the ready file");
                    }
                }
            });
        }
        connector.run(shutdown).await
    })
}

fn write_atomic(path: &Path, body: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
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
