//! The `doorless-edge` command line: parses the verb and dispatches to its module (`setup`;
//! PKI verbs `init`, `site`, `client`; `run`, `check-config` and `status`; `demo`), and turns an error
//! into the exit code. Nothing else happens here.

mod client;
#[cfg(feature = "demo")]
mod demo;
mod init;
mod run;
mod setup;
mod site;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Set up this machine as an edge in one go: state directory, site, configuration with
    /// ACME, systemd unit; then print what to paste at home and how to add a device.
    Setup(setup::Setup),
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
    /// Show what the running edge reports on its admin listener: sites, connectors (transport,
    /// age, streams), the last reload, certificates about to expire.
    Status(status::Status),
    /// Print a shell completion script: `doorless-edge completions bash >
    /// /etc/bash_completion.d/doorless-edge` (zsh: a `_doorless-edge` file on $fpath; fish:
    /// ~/.config/fish/completions/doorless-edge.fish).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Run a complete local demo: edge, connector and a stand-in Home Assistant.
    #[cfg(feature = "demo")]
    Demo(demo::Demo),
    /// Built without the `demo` feature (release builds): the verb is hidden and takes any
    /// arguments, only to say how to get it.
    #[cfg(not(feature = "demo"))]
    #[command(hide = true, disable_help_flag = true)]
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        _args: Vec<String>,
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
/// load, and mimalloc cut the small-request CPU per request (see docs/benchmarks.md). The
/// runtime's worker threads give freed memory back when idle (`allocator::on_thread_park`).
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup(setup) => setup.run(),
        Command::Init(init) => init.run(),
        Command::Site(site) => site.run(),
        Command::Client(client) => client.run(),
        Command::Run(run) => run.run(),
        Command::CheckConfig(check) => check.run(),
        Command::Status(status) => status.run(),
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "doorless-edge",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        #[cfg(feature = "demo")]
        Command::Demo(demo) => demo.run(),
        // Exit code 2, as clap gives for a verb that does not exist.
        #[cfg(not(feature = "demo"))]
        Command::Demo { .. } => {
            eprintln!(
                "doorless-edge: this build has no demo (release builds leave it out); run it \
                 from a source checkout with: cargo run -p edge --features demo -- demo"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("doorless-edge: {}", daemon::error_chain(&e));
            if let Some(refusal) = e.downcast_ref::<setup::Refusal>() {
                ExitCode::from(refusal.exit_code())
            } else if e.downcast_ref::<edge::config::ConfigError>().is_some() {
                ExitCode::from(daemon::EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
