//! `doorless-edge run` and `check-config`: load the configuration, then serve until a signal.
//!
//! Not the server itself: `edge::Edge` is; this only binds it, writes the ready file and
//! hands it the shutdown signal.

use std::path::{Path, PathBuf};

use edge::config::{Config, ConfigError, LogFormat};

/// Where `run`, `check-config` and `setup` look for the configuration unless told otherwise:
/// where `setup` writes it and the systemd unit reads it.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/doorless/edge.toml";

/// The arguments of `run` (its help text is on `Command::Run`, which clap prefers).
#[derive(Debug, clap::Args)]
pub(crate) struct Run {
    /// Configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Write the bound addresses as JSON here once ready.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Log format (`text` or `json`), overriding `log.format`.
    #[arg(long)]
    log_format: Option<LogFormat>,
}

impl Run {
    /// Runs the edge until SIGTERM or Ctrl-C.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let config = load_config(&self.config)?;
        let _log = daemon::init_logging(
            self.log_format.unwrap_or(config.log.format),
            &config.log.filter,
        );
        tracing::info!(config = %self.config.display(), "configuration loaded");
        let rt = runtime()?;
        rt.block_on(async {
            let edge = edge::Edge::bind(config).await?;
            if let Some(path) = &self.ready_file {
                daemon::write_ready_file(path, &serde_json::to_value(edge.addrs())?)?;
            }
            // Listeners bound, state loaded: `systemctl start` (Type=notify) returns now.
            daemon::notify::ready();
            edge.run(daemon::shutdown_on_signal()).await
        })
    }
}

/// The arguments of `check-config`.
#[derive(Debug, clap::Args)]
pub(crate) struct CheckConfig {
    /// Configuration file.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

impl CheckConfig {
    /// Loads and validates the file; prints `PATH: ok`.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        load_config(&self.config)?;
        println!("{}: ok", self.config.display());
        Ok(())
    }
}

/// Loads `path`; a missing file is a configuration error that says how to make one (figment's
/// own message for it names no remedy).
pub(crate) fn load_config(path: &Path) -> anyhow::Result<Config> {
    if !path.exists() {
        return Err(ConfigError::Parse(format!(
            "no configuration file at {}: create one with `doorless-edge setup`, or pass \
             --config FILE",
            path.display()
        ))
        .into());
    }
    Ok(Config::load(path)?)
}

/// The runtime of `run` and `demo` (`daemon::runtime_builder`: one worker unless
/// `TOKIO_WORKER_THREADS` says otherwise). An idle worker gives freed memory back to the OS
/// (`allocator::on_thread_park`), so a burst's peak does not stay resident.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(daemon::runtime_builder()
        .on_thread_park(allocator::on_thread_park)
        .build()?)
}
