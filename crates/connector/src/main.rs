//! The `doorless-connector` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use connector::config::{Config, LogFormat};

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
    /// Join a site with a one-time enrollment code from `doorless-edge site add` or `site
    /// code`: makes this connector's key here, fetches its certificate, and stores both (and the
    /// edge's tunnel CA and addresses) in the state directory. `run` then needs no code.
    Enroll {
        /// The code, `HOST[:PORT]/1-XXXXX-XXXXX-XXXXX-XXXXX`.
        code: String,
        /// Where to keep the credentials.
        #[arg(
            long,
            env = "DOORLESS_STATE_DIR",
            default_value = "/var/lib/doorless-connector"
        )]
        state_dir: PathBuf,
        /// Enroll again even if the state directory already holds credentials (they are
        /// replaced).
        #[arg(long)]
        force: bool,
    },
    /// Run the connector.
    Run {
        /// Configuration file (optional: DOORLESS_TOKEN and DOORLESS_UPSTREAM suffice).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Write the admin address as JSON here once the first edge connection registered.
        #[arg(long)]
        ready_file: Option<PathBuf>,
        /// Log format (`text` or `json`), overriding `log.format`.
        #[arg(long)]
        log_format: Option<LogFormat>,
    },
    /// Probe a running connector's admin endpoint; exit 0 if healthy (for container
    /// HEALTHCHECKs, which have no curl).
    Health {
        /// URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:9471/healthz")]
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Check the setup: Home Assistant reachable and trusting the connector as a proxy, every
    /// edge reachable over QUIC. Exit 0 if all is well, 1 if a check failed, 64 on a bad
    /// configuration.
    Check {
        /// Configuration file (optional: DOORLESS_TOKEN and DOORLESS_UPSTREAM suffice).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the report as JSON (docs/connector-check.md); the exit code is the same.
        #[arg(long)]
        json: bool,
    },
    /// Check a configuration and exit.
    CheckConfig {
        /// Configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

/// mimalloc instead of glibc malloc: allocation was ~13% of the request path's CPU under
/// load, and mimalloc cut the small-request CPU per request (see docs/benchmarks.md). The
/// runtime's worker threads give freed memory back when idle (`allocator::on_thread_park`).
#[global_allocator]
static ALLOCATOR: allocator::MiMalloc = allocator::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Enroll {
            code,
            state_dir,
            force,
        } => enroll(&code, &state_dir, force),
        Command::Run {
            config,
            ready_file,
            log_format,
        } => run(config.as_deref(), ready_file.as_deref(), log_format),
        Command::Check { config, json } => check(config.as_deref(), json),
        Command::Health { url, timeout } => health(&url, std::time::Duration::from_secs(timeout)),
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
            eprintln!("doorless-connector: {}", daemon::error_chain(&e));
            if e.downcast_ref::<connector::config::ConfigError>().is_some() {
                ExitCode::from(daemon::EXIT_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// How long `run` waits for its first tunnel before telling systemd it is up anyway.
const READY_WITHOUT_EDGE: std::time::Duration = std::time::Duration::from_secs(20);

fn run(
    config: Option<&Path>,
    ready_file: Option<&Path>,
    log_format: Option<LogFormat>,
) -> anyhow::Result<()> {
    // A code and no credentials yet: enroll first (once); from then on the stored
    // credentials are used and that code is ignored. A different code beside stored
    // credentials is a renewal (`doorless-edge client renew`): enroll with it, replacing them.
    let pending = Config::pending_enrollment(config)?;
    let just_enrolled = pending.is_some();
    if let Some(pending) = pending {
        eprintln!(
            "doorless-connector: enrolling with the code for {} ...",
            pending.code.edge()
        );
        // Who we were, to tell a renewal (same connector) from a new enrollment.
        let before = match pending.replaces {
            true => pki::load_enrolled(&pending.state_dir)?,
            false => None,
        };
        match connector::enroll::enroll(&pending.code, &pending.state_dir) {
            Ok(enrolled) => {
                eprintln!(
                    "doorless-connector: {} as connector {} of site {}; credentials stored in {}",
                    if pending.replaces {
                        "renewed: enrolled again"
                    } else {
                        "enrolled"
                    },
                    enrolled.connector_id,
                    enrolled.site,
                    pending.state_dir.display()
                );
                if let Some(old) = before.filter(|old| {
                    old.site != enrolled.site || old.connector_id != enrolled.connector_id
                }) {
                    // A code from `site code` rather than `client renew`: a new connector.
                    eprintln!(
                        "doorless-connector: warning: this replaced connector {} of site {}, \
                         whose certificate is still valid on the edge (its key is gone from \
                         here); revoke it there: doorless-edge client revoke {} --site {}",
                        old.connector_id, old.site, old.connector_id, old.site
                    );
                }
            }
            Err(e) if pending.replaces => {
                // The stored credentials still stand (the edge revokes them only when it
                // redeems a renewal code), so a code that fails must not stop the tunnel.
                if let connector::enroll::EnrollError::Refused(proto::enroll::Refusal::Used) = e {
                    // Not offered again at every start (a file written before the code id
                    // was recorded still has the code it came from configured).
                    pki::record_enrolled_code(&pending.state_dir, &pending.code.keys().id)?;
                }
                eprintln!(
                    "doorless-connector: warning: the configured enrollment_code was not used                      ({e}); running with the credentials stored in {}",
                    pending.state_dir.display()
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    let config = Config::load(config)?;
    let _log = daemon::init_logging(log_format.unwrap_or(config.log.format), &config.log.filter);
    // Right after enrolling the code is still configured, but it was not ignored: it was used.
    if !just_enrolled
        && config.credentials == (connector::config::Credentials::Enrolled { code_ignored: true })
    {
        tracing::info!(
            "already enrolled: the configured enrollment_code is ignored (it may be removed)"
        );
    }
    // One worker unless TOKIO_WORKER_THREADS says otherwise (`daemon::runtime_builder` says
    // why); an idle worker gives freed memory back to the OS, so a burst's peak (thousands of
    // WebSockets) does not stay resident.
    let rt = daemon::runtime_builder()
        .on_thread_park(allocator::on_thread_park)
        .build()?;
    let check_config = config.clone();
    rt.block_on(async {
        let connector = connector::Connector::bind(config).await?;
        // Self-check in the background: it only logs, and the tunnel comes up regardless.
        tokio::spawn(async move {
            connector::check::run(&check_config, connector::check::Timeouts::default())
                .await
                .log();
        });
        let shutdown = daemon::shutdown_on_signal();
        let ready_file = ready_file.map(Path::to_owned);
        let admin = connector.admin_addr();
        let mut ready = connector.ready();
        tokio::spawn(async move {
            // systemd (Type=notify) hears READY=1 once the first tunnel is registered, so
            // `systemctl start` returns with the connector really connected; but no later
            // than READY_WITHOUT_EDGE: an unreachable edge is retried forever by the
            // connector itself, and must not hold up the boot or fail the unit.
            let registered = tokio::time::timeout(
                READY_WITHOUT_EDGE,
                ready.wait_for(|connected| *connected > 0),
            )
            .await
            .map(|connected| connected.is_ok());
            match registered {
                Ok(true) => daemon::notify::ready(),
                // The connector stopped before it ever connected.
                Ok(false) => return,
                Err(_) => {
                    daemon::notify::status("no edge reachable yet; still dialing");
                    daemon::notify::ready();
                    if ready.wait_for(|connected| *connected > 0).await.is_err() {
                        return;
                    }
                    daemon::notify::status("registered with an edge");
                }
            }
            if let Some(path) = ready_file {
                let body = serde_json::json!({ "admin": admin });
                if let Err(e) = daemon::write_ready_file(&path, &body) {
                    tracing::error!(error = %e, "cannot write the ready file");
                }
            }
        });
        connector.run(shutdown).await
    })
}

/// `doorless-connector enroll CODE`.
fn enroll(code: &str, state_dir: &Path, force: bool) -> anyhow::Result<()> {
    let code = pki::EnrollmentCode::parse(code)?;
    if !force && let Some(existing) = pki::load_enrolled(state_dir)? {
        anyhow::bail!(
            "{} already holds the credentials of connector {} of site {}; `doorless-connector \
             run` uses them. To renew them with a code from `doorless-edge client renew`, or to \
             enroll again, replacing them, add --force",
            state_dir.display(),
            existing.connector_id,
            existing.site
        );
    }
    let enrolled = connector::enroll::enroll(&code, state_dir)?;
    println!(
        "Enrolled as connector {} of site {}; key, certificate and the edge's tunnel CA are in {}.",
        enrolled.connector_id,
        enrolled.site,
        state_dir.display()
    );
    println!("Tunnel address(es): {}", enrolled.edges.join(", "));
    println!("Start it with: doorless-connector run   (the code is not needed any more)");
    Ok(())
}

/// `doorless-connector check`: prints the report; fails (exit 1) if any check failed.
fn check(config: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let config = Config::load(config)?;
    if !json {
        println!(
            "doorless-connector check: site {}, connector {}, upstream {}",
            config.token.site, config.token.connector_id, config.upstream
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(connector::check::run(
        &config,
        connector::check::Timeouts::default(),
    ));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.to_json(&config))?
        );
    } else {
        println!("{report}");
    }
    let failed = report.items.iter().filter(|i| !i.ok()).count();
    anyhow::ensure!(failed == 0, "{failed} check(s) did not pass");
    Ok(())
}

/// GETs `url` (plain HTTP, loopback admin listener) and succeeds on a 2xx answer.
fn health(url: &str, limit: std::time::Duration) -> anyhow::Result<()> {
    use http_body_util::Empty;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client: Client<_, Empty<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let response = tokio::time::timeout(limit, client.get(uri))
            .await
            .map_err(|_| anyhow::anyhow!("{url}: no answer within {limit:?}"))?
            .with_context(|| format!("{url}: unreachable"))?;
        anyhow::ensure!(
            response.status().is_success(),
            "{url}: answered {}",
            response.status()
        );
        println!("{url}: {}", response.status());
        Ok(())
    })
}
