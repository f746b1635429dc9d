//! The `doorless-edge` command line: parses the verb and dispatches to its module (PKI verbs
//! `init`, `site`, `client`; `run` and `check-config`; `demo`), and turns an error into the exit
//! code. Nothing else happens here.

mod client;
mod demo;
mod init;
mod run;
mod site;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edge::config::LogFormat;

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
    Init(init::Init),
    /// Manage sites (hostnames served by one Home Assistant).
    #[command(subcommand)]
    Site(site::SiteCommand),
    /// Manage device (client) certificates.
    #[command(subcommand)]
    Client(client::ClientCommand),
    /// Run the edge.
    Run(run::Run),
    /// Check a configuration file and exit.
    CheckConfig(run::CheckConfig),
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

/// mimalloc instead of glibc malloc: allocation was ~13% of the request path's CPU under
/// load, and mimalloc cut the small-request CPU per request (see docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(init) => init.run(),
        Command::Site(site) => site.run(),
        Command::Client(client) => client.run(),
        Command::Run(run) => run.run(),
        Command::CheckConfig(check) => check.run(),
        Command::Demo {
            port,
            dir,
            ready_file,
        } => run::runtime().and_then(|rt| {
            let _log = daemon::init_logging(LogFormat::Text, "info,access=off");
            rt.block_on(demo::run(port, dir, ready_file))
        }),
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
