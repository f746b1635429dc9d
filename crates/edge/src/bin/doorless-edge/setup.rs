//! `doorless-edge setup`: the one-command VPS setup. It creates the state directory, adds the
//! site, writes the configuration (with ACME), installs and starts the systemd unit, checks
//! what it can of reachability, and prints what to paste at home and how to add a device.
//!
//! Two phases: [`Plan`] looks at everything and decides, with no side effect (so a conflict
//! found late never leaves a half-done setup, and never a credential minted but not printed);
//! [`Plan::apply`] then does only what is missing. Run again, it reports what exists and
//! changes nothing: it never mints a second enrollment code (a lost one is replaced with
//! `site code`) and never overwrites a file that differs from what it would write unless
//! `--force` says so.
//!
//! Not the verbs it stands on: `init`, `site add`, `run` stay the manual path (docs/setup-vps.md)
//! and share their building blocks (`pki::StateDir`, `run::load_config`) with this.

use std::io::{BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs as _, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use figment::Figment;
use figment::providers::{Format as _, Toml};

use crate::StateArg;
use crate::run::{DEFAULT_CONFIG, load_config};

/// BSD `EX_USAGE`: a missing or malformed argument.
const EX_USAGE: u8 = 64;
/// BSD `EX_CONFIG`: the configuration (or the state it describes) stands in the way.
const EX_CONFIG: u8 = 78;

/// The state directory the systemd unit uses (`StateDirectory=doorless-edge`).
const UNIT_STATE_DIR: &str = "/var/lib/doorless-edge";
/// Where the unit runs the binary from.
const UNIT_BINARY: &str = "/usr/local/bin/doorless-edge";
const UNIT_PATH: &str = "/etc/systemd/system/doorless-edge.service";
const UNIT: &str = include_str!("../../../../../deploy/systemd/doorless-edge.service");
const SYSUSERS_PATH: &str = "/etc/sysusers.d/doorless.conf";
const SYSUSERS: &str = include_str!("../../../../../deploy/systemd/doorless.sysusers");
const SYSCTL_PATH: &str = "/etc/sysctl.d/99-doorless.conf";
const SYSCTL: &str = include_str!("../../../../../deploy/systemd/99-doorless.conf");
const MODULES_PATH: &str = "/etc/modules-load.d/doorless.conf";
const MODULES: &str = include_str!("../../../../../deploy/systemd/doorless-modules.conf");

/// How long each external look (DNS, the new edge's `/readyz`) may take.
const LOOK_DEADLINE: Duration = Duration::from_secs(10);
/// Longest answer read from the terminal.
const MAX_ANSWER: u64 = 1024;

/// The arguments of `setup` (its help text is on `Command::Setup`, which clap prefers).
#[derive(Debug, clap::Args)]
pub(crate) struct Setup {
    /// Hostname devices will use; its DNS record points at this machine.
    #[arg(long)]
    hostname: Option<String>,
    /// Contact address for the ACME CA (Let's Encrypt): certificate expiry notices.
    #[arg(long, conflicts_with = "no_acme")]
    email: Option<String>,
    /// Site name. Default: the hostname's first label (`ha` for ha.example.com).
    #[arg(long)]
    site: Option<String>,
    /// ACME directory URL. Default: Let's Encrypt production.
    #[arg(long, value_name = "URL", conflicts_with = "no_acme")]
    acme_directory: Option<String>,
    /// PEM file of the CA roots that sign a private ACME CA's own HTTPS (step-ca, pebble), for
    /// `--acme-directory`; written as `extra_roots` in `[acme]`.
    #[arg(
        long,
        value_name = "FILE",
        requires = "acme_directory",
        conflicts_with = "no_acme"
    )]
    acme_ca: Option<PathBuf>,
    /// Use the ACME CA's staging environment (untrusted certificates, generous rate limits).
    #[arg(long, conflicts_with = "no_acme")]
    staging: bool,
    /// No ACME: the edge serves a certificate from its own local CA, which every device must
    /// then trust (docs/devices.md).
    #[arg(long)]
    no_acme: bool,
    /// Public HTTPS listener (TCP).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:443")]
    https: SocketAddr,
    /// Tunnel listener for connectors (UDP).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:443")]
    tunnel: SocketAddr,
    /// Admin listener (/healthz, /readyz, /status, /metrics); keep it on loopback.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9470")]
    admin: SocketAddr,
    /// Tunnel address (HOST:PORT) the connector dials, told to it when it enrolls (kept in the
    /// state directory, as `init --edge-addr` does). Default: the hostname on the tunnel
    /// listener's port.
    #[arg(long, value_name = "HOST:PORT")]
    edge_addr: Option<String>,
    /// Configuration file to write.
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(flatten)]
    state: StateArg,
    /// Do not install the systemd unit; print the command that runs the edge instead.
    #[arg(long)]
    no_systemd: bool,
    /// Ask nothing: every missing flag is an error (for scripts and non-terminals).
    #[arg(long, short)]
    yes: bool,
    /// Replace a configuration file or systemd unit that differs from what setup writes (the
    /// old file is kept as FILE.old).
    #[arg(long)]
    force: bool,
}

/// Why setup stopped before changing anything; the exit code says which kind.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Refusal {
    code: u8,
    message: String,
}

impl Refusal {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            code: EX_USAGE,
            message: message.into(),
        }
    }

    fn config(message: impl Into<String>) -> Self {
        Self {
            code: EX_CONFIG,
            message: message.into(),
        }
    }

    /// The process exit code: 64 (usage) or 78 (configuration).
    pub(crate) fn exit_code(&self) -> u8 {
        self.code
    }
}

impl Setup {
    /// Runs the verb.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let answers = self.answers()?;
        let plan = Plan::make(&self, answers)?;
        // Only a person at a terminal reads the plan before it happens; a script reads
        // what was done.
        if self.interactive() {
            plan.print_summary();
            if !confirm()? {
                return Err(Refusal::usage("stopped; nothing was changed").into());
            }
        }
        plan.apply()
    }

    /// Whether setup may ask: a terminal on stdin and no `--yes`.
    fn interactive(&self) -> bool {
        !self.yes && std::io::stdin().is_terminal()
    }

    /// Hostname and email from the flags, or asked for on a terminal.
    fn answers(&self) -> anyhow::Result<Answers> {
        let interactive = self.interactive();
        let missing = |flag: &str| {
            let why = match self.yes {
                true => "--yes asks nothing",
                false => "stdin is not a terminal, so setup cannot ask",
            };
            Refusal::usage(format!("missing {flag} ({why})"))
        };
        let hostname = match (&self.hostname, interactive) {
            (Some(h), _) => h.clone(),
            (None, true) => ask("Hostname your devices will use (its DNS record points here)")?,
            (None, false) => return Err(missing("--hostname").into()),
        };
        let hostname = pki::normalize_hostname(hostname.trim())
            .map_err(|e| Refusal::usage(format!("--hostname: {e}")))?;
        let acme = match self.no_acme {
            true => None,
            false => {
                let email = match (&self.email, interactive) {
                    (Some(e), _) => e.clone(),
                    (None, true) => ask("Email for the ACME CA (Let's Encrypt expiry notices)")?,
                    (None, false) => {
                        return Err(missing("--email (or --no-acme for the local CA)").into());
                    }
                };
                Some(Acme::new(
                    email.trim(),
                    self.acme_directory.as_deref(),
                    self.acme_ca.as_deref(),
                    self.staging,
                )?)
            }
        };
        // Without a terminal nobody can confirm; scripts say so with --yes.
        if !self.yes && !interactive {
            return Err(Refusal::usage(
                "stdin is not a terminal: pass --yes to run setup without questions",
            )
            .into());
        }
        Ok(Answers { hostname, acme })
    }
}

/// What the user told setup (flags or answers), checked.
#[derive(Debug)]
struct Answers {
    hostname: String,
    acme: Option<Acme>,
}

/// The `[acme]` block setup writes (the keys acme-edge's config reads).
#[derive(Debug, Clone)]
struct Acme {
    email: String,
    directory: Option<String>,
    /// `extra_roots`: absolute, since `run` may start from another directory.
    ca: Option<PathBuf>,
    staging: bool,
}

impl Acme {
    fn new(
        email: &str,
        directory: Option<&str>,
        ca: Option<&Path>,
        staging: bool,
    ) -> Result<Self, Refusal> {
        let plausible = match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains('@')
            }
            None => false,
        };
        if !plausible || email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Refusal::usage(format!(
                "--email: {email:?} is not an email address"
            )));
        }
        if let Some(url) = directory
            && (!url.starts_with("https://") || url.chars().any(|c| c.is_whitespace()))
        {
            return Err(Refusal::usage(format!(
                "--acme-directory: {url:?} is not an https:// URL"
            )));
        }
        // The file itself is read (and its PEM checked) when the rendered configuration is
        // loaded before anything is written.
        let ca = ca
            .map(|path| {
                std::path::absolute(path)
                    .map_err(|e| Refusal::usage(format!("--acme-ca {}: {e}", path.display())))
            })
            .transpose()?;
        Ok(Self {
            email: email.to_owned(),
            directory: directory.map(str::to_owned),
            ca,
            staging,
        })
    }

    /// Which CA, in words.
    fn describe(&self) -> String {
        match (&self.directory, self.staging) {
            (Some(url), _) => url.clone(),
            (None, true) => "Let's Encrypt staging".into(),
            (None, false) => "Let's Encrypt".into(),
        }
    }
}

/// Everything setup will do, decided before it does any of it.
struct Plan {
    hostname: String,
    acme: Option<Acme>,
    state_dir: PathBuf,
    /// `--state-dir` was given with a non-default value: printed commands must repeat it.
    state_dir_flag: Option<PathBuf>,
    state: StateStep,
    site: SiteStep,
    config_path: PathBuf,
    config_text: String,
    config: FileStep,
    service: ServiceStep,
    listen: Listen,
    /// Where connectors dial the tunnel (for what setup prints; the edge tells them when they
    /// enroll).
    edge: pki::EdgeTarget,
    /// `--edge-addr`, for a state directory setup creates.
    edge_addr: Option<String>,
    /// `HOST[:PORT]` of the HTTPS listener, as written into the enrollment code.
    code_edge: String,
    /// How the user invoked us (`sudo doorless-edge`, or the path tests run).
    program: String,
}

#[derive(Debug, Clone, Copy)]
struct Listen {
    https: SocketAddr,
    tunnel: SocketAddr,
    admin: SocketAddr,
}

enum StateStep {
    Exists(pki::StateDir),
    Create,
}

enum SiteStep {
    /// The hostname already belongs to this site; its connectors, by id.
    Exists {
        name: String,
        connectors: Vec<String>,
    },
    Add {
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileStep {
    Write,
    Unchanged,
    /// Differs; replaced because of `--force`.
    Replace,
}

enum ServiceStep {
    /// Printed as a command instead; the reason, if there is one worth saying.
    Manual {
        why: Option<String>,
    },
    Systemd {
        unit_text: String,
        unit: FileStep,
    },
}

impl Plan {
    fn make(args: &Setup, answers: Answers) -> anyhow::Result<Self> {
        let Answers { hostname, acme } = answers;
        let state_dir = args.state.state_dir.clone();
        let state_dir_flag = (state_dir != Path::new(UNIT_STATE_DIR)).then(|| state_dir.clone());
        let listen = Listen {
            https: args.https,
            tunnel: args.tunnel,
            admin: args.admin,
        };
        let edge = match &args.edge_addr {
            Some(addr) => pki::EdgeTarget::Addr(addr.clone()),
            None => pki::EdgeTarget::Default {
                tunnel_port: listen.tunnel.port(),
            },
        };
        edge.check()
            .map_err(|e| Refusal::usage(format!("--edge-addr: {e}")))?;
        if args.edge_addr.is_none() && listen.tunnel.port() == 0 {
            return Err(Refusal::usage(
                "--tunnel with port 0 gives connectors no port to dial: name a port, or pass \
                 --edge-addr HOST:PORT",
            )
            .into());
        }
        // The code carries the HTTPS port the connector enrolls at; a random one cannot be.
        let code_edge = match listen.https.port() {
            0 => {
                return Err(Refusal::usage(
                    "--https with port 0 gives the enrollment code no port to reach: name a port",
                )
                .into());
            }
            443 => hostname.clone(),
            port => format!("{hostname}:{port}"),
        };

        let state = match state_dir.join("state.json").exists() {
            true => StateStep::Exists(
                pki::StateDir::open(&state_dir).map_err(|e| Refusal::config(e.to_string()))?,
            ),
            false => {
                let empty = std::fs::read_dir(&state_dir)
                    .map(|mut d| d.next().is_none())
                    .unwrap_or(true);
                if !empty {
                    return Err(Refusal::config(format!(
                        "{} exists and is not an edge state directory (no state.json): pass \
                         another --state-dir, or empty it",
                        state_dir.display()
                    ))
                    .into());
                }
                StateStep::Create
            }
        };
        // Connectors learn the tunnel address when they enroll, from the state directory; an
        // existing one keeps what it says (changing it would split the site's connectors).
        if let (StateStep::Exists(existing), Some(addr)) = (&state, &args.edge_addr)
            && existing.edge_addr() != Some(addr.as_str())
        {
            return Err(Refusal::config(format!(
                "--edge-addr {addr}: the state directory {} already tells connectors {} \
                 (set when it was created); setup does not change it",
                state_dir.display(),
                existing
                    .edge_addr()
                    .map_or_else(|| "the site's hostname".into(), |a| a.to_owned())
            ))
            .into());
        }
        let site = plan_site(&state, &hostname, args.site.as_deref())?;

        let config_text = render_config(&state_dir, &listen, acme.as_ref());
        check_rendered(&config_text)?;
        let config = compare_file(&args.config, &config_text, args.force, compare_toml)?;

        // Compares an existing unit now, so a differing one stops setup before any write.
        let service = plan_service(args, &state_dir)?;
        Ok(Self {
            hostname,
            acme,
            state_dir,
            state_dir_flag,
            state,
            site,
            config_path: args.config.clone(),
            config_text,
            config,
            service,
            listen,
            edge,
            edge_addr: args.edge_addr.clone(),
            code_edge,
            program: program_name(),
        })
    }

    fn site_name(&self) -> &str {
        match &self.site {
            SiteStep::Exists { name, .. } | SiteStep::Add { name } => name,
        }
    }

    fn print_summary(&self) {
        println!("doorless-edge setup for {}", self.hostname);
        println!();
        let state = match &self.state {
            StateStep::Exists(_) => "exists",
            StateStep::Create => "create (CAs, keys)",
        };
        println!("  state dir  {}: {state}", self.state_dir.display());
        match &self.site {
            SiteStep::Exists { name, connectors } => println!(
                "  site       {name} ({}): exists, connectors: {}",
                self.hostname,
                list_or_none(connectors)
            ),
            SiteStep::Add { name } => println!(
                "  site       {name} ({}): add, with a one-time enrollment code for its connector",
                self.hostname
            ),
        }
        let what = match self.config {
            FileStep::Write => "write",
            FileStep::Unchanged => "unchanged",
            FileStep::Replace => "replace (--force; the old file is kept as .old)",
        };
        println!("  config     {}: {what}", self.config_path.display());
        match &self.acme {
            Some(acme) => println!(
                "  https      ACME certificate from {} for {}",
                acme.describe(),
                acme.email
            ),
            None => println!("  https      certificate from the edge's local CA (--no-acme)"),
        }
        match &self.service {
            ServiceStep::Systemd { unit, .. } => {
                let what = match unit {
                    FileStep::Write => "install, enable and start",
                    FileStep::Unchanged => "installed; enable and start if it is not running",
                    FileStep::Replace => "replace (--force), enable and restart",
                };
                println!("  service    {UNIT_PATH}: {what}");
            }
            ServiceStep::Manual { .. } => {
                println!("  service    none: setup prints the command that runs the edge")
            }
        }
        println!();
    }

    fn apply(self) -> anyhow::Result<()> {
        // Reachability first: once our own edge runs, its ports are taken by it.
        let edge_running = admin_answers(self.listen.admin);
        println!("Checks (from this machine's own view):");
        for line in reachability(&self.listen, &self.hostname, edge_running) {
            println!("  {line}");
        }
        println!();

        let state = match self.state {
            StateStep::Exists(ref state) => {
                println!("State dir {}: exists.", self.state_dir.display());
                state.clone()
            }
            StateStep::Create => {
                let options = pki::InitOptions {
                    edge_addr: self.edge_addr.clone(),
                };
                let state = pki::StateDir::init(&self.state_dir, &options)?;
                println!("State dir {}: created.", self.state_dir.display());
                state
            }
        };
        let code = match &self.site {
            SiteStep::Exists { name, .. } => {
                println!("Site {name} ({}): exists.", self.hostname);
                None
            }
            SiteStep::Add { name } => {
                state.add_site(name, std::slice::from_ref(&self.hostname))?;
                let (code, record) =
                    state.mint_code(name, &self.code_edge, pki::DEFAULT_CODE_LIFETIME)?;
                println!(
                    "Site {name} ({}): added, with a one-time enrollment code for its connector.",
                    self.hostname
                );
                Some((code, record))
            }
        };
        // From here on a code may exist that only this run can print: a later failure is
        // reported after the next steps, never instead of them.
        let mut failure = None;
        match write_step(&self.config_path, &self.config_text, self.config, 0o644) {
            Ok(()) => println!(
                "Config {}: {}.",
                self.config_path.display(),
                done(self.config)
            ),
            Err(e) => failure = Some(e),
        }
        if failure.is_none() {
            failure = self.start_service().err();
        }
        println!();
        self.print_next_steps(&state, code.as_ref());
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Installs and starts the unit, or prints how to run the edge.
    fn start_service(&self) -> anyhow::Result<()> {
        let (unit_text, unit) = match &self.service {
            ServiceStep::Manual { why } => {
                let config = match self.config_path == Path::new(DEFAULT_CONFIG) {
                    true => String::new(),
                    false => format!(" --config {}", self.config_path.display()),
                };
                if let Some(why) = why {
                    println!("No systemd unit installed: {why}.");
                }
                println!("Run the edge with:");
                println!();
                println!("    {} run{config}", self.program);
                if self.listen.https.port() < 1024 || self.listen.tunnel.port() < 1024 {
                    println!();
                    println!(
                        "(ports below 1024 need root or CAP_NET_BIND_SERVICE; the systemd unit \
                         in deploy/systemd runs it unprivileged with only that capability)"
                    );
                }
                return Ok(());
            }
            ServiceStep::Systemd { unit_text, unit } => (unit_text, *unit),
        };
        // The unit runs as the system user `doorless`; systemd hands it the state directory
        // (StateDirectory= chowns it at start).
        write_if_missing(Path::new(SYSUSERS_PATH), SYSUSERS)?;
        systemctl_like("systemd-sysusers", &[SYSUSERS_PATH])?;
        // TCP BBR for client connections: the module now and at boot (before sysctl reads
        // the allowed list that names it).
        write_if_missing(Path::new(MODULES_PATH), MODULES)?;
        if let Err(e) = systemctl_like("modprobe", &["tcp_bbr"]) {
            // The edge then logs that client connections use the kernel's default.
            println!("  warning: TCP BBR module not loaded: {e:#}");
        }
        write_if_missing(Path::new(SYSCTL_PATH), SYSCTL)?;
        if let Err(e) = systemctl_like("sysctl", &["-q", "-p", SYSCTL_PATH]) {
            // Containers and some VPS kernels refuse; the edge then logs its capped buffers
            // and the congestion control it could not set.
            println!("  warning: sysctl not (fully) applied: {e:#}");
        }
        write_step(Path::new(UNIT_PATH), unit_text, unit, 0o644)?;
        let changed = unit != FileStep::Unchanged || self.config != FileStep::Unchanged;
        if unit != FileStep::Unchanged {
            systemctl_like("systemctl", &["daemon-reload"])?;
        }
        systemctl_like("systemctl", &["enable", "--now", "doorless-edge"])?;
        if changed {
            // A running edge reads a changed configuration or unit only at start.
            systemctl_like("systemctl", &["restart", "doorless-edge"])?;
        }
        println!(
            "Service doorless-edge: enabled and running ({UNIT_PATH}: {}).",
            done(unit)
        );
        match wait_ready(self.listen.admin) {
            true => println!("The edge answers /readyz on {}.", self.listen.admin),
            false => println!(
                "  warning: the edge did not answer /readyz on {} within {LOOK_DEADLINE:?}: see \
                 `journalctl -u doorless-edge`",
                self.listen.admin
            ),
        }
        Ok(())
    }

    /// What to do next, in this order: the connector at home, then the first device.
    fn print_next_steps(
        &self,
        state: &pki::StateDir,
        code: Option<&(pki::EnrollmentCode, pki::CodeRecord)>,
    ) {
        println!("Next, at home: the connector.");
        self.print_connector_enrollment(state, code);
        println!();
        println!("Then your first device:");
        println!();
        println!(
            "    {}",
            first_device_command(
                &self.program,
                self.site_name(),
                self.listen.https.port(),
                self.state_dir_flag.as_deref()
            )
        );
        println!();
        println!(
            "It prints a one-time link and its QR code: scan it with the phone, which installs \
             the certificate with the password printed once. Files instead (a computer, curl): \
             leave out --link. Every device: docs/devices.md."
        );
        if self.acme.is_none() {
            println!(
                "Without ACME, devices must also trust the edge's local CA, {} (the .mobileconfig \
                 carries it; curl: --cacert).",
                state.server_ca_path().display()
            );
        }
    }

    /// What to paste into the Home Assistant add-on (or the connector's environment): the
    /// code this run minted, or, when it minted none, how to mint one. The one place that
    /// decides what a connector enrolls with.
    fn print_connector_enrollment(
        &self,
        state: &pki::StateDir,
        code: Option<&(pki::EnrollmentCode, pki::CodeRecord)>,
    ) {
        let name = self.site_name();
        // Where the enrolled connector dials: what the edge will tell it.
        let tunnel = state
            .site(name)
            .and_then(|site| state.edge_addr_for(&site, &self.edge))
            .ok();
        if let Some((code, record)) = code {
            let code = code.encode();
            println!(
                "In Home Assistant, install the add-on \"doorless connector\" and paste this \
                 one-time enrollment code into its Configuration tab as `enrollment_code` (it \
                 works once, for 24 hours: until {}):",
                record.expires
            );
            println!();
            println!("    {code}");
            println!();
            println!(
                "Not on Home Assistant OS? DOORLESS_ENROLLMENT_CODE='{code}' \
                 DOORLESS_UPSTREAM='http://HOME-ASSISTANT:8123' doorless-connector run"
            );
            match tunnel {
                Some(tunnel) => println!(
                    "The connector makes its own key, enrolls at {} (TCP), then dials {tunnel} \
                     (UDP).",
                    self.code_edge_with_port()
                ),
                None => println!("The connector makes its own key and enrolls with the code."),
            }
            return;
        }
        let connectors = match &self.site {
            SiteStep::Exists { connectors, .. } => connectors.as_slice(),
            SiteStep::Add { .. } => &[][..],
        };
        let pending = state
            .codes()
            .map(|codes| {
                codes
                    .iter()
                    .filter(|c| c.site == name && c.current_state() == pki::CodeState::Pending)
                    .count()
            })
            .unwrap_or(0);
        println!(
            "Site {name} has connector(s): {}; unused enrollment codes: {pending}. A code is \
             printed only when it is minted, and setup mints one only when it adds the site. \
             Lost it, or want another connector? Mint a new code:",
            list_or_none(connectors)
        );
        println!();
        println!(
            "    {}",
            with_state_dir(self.site_code_command(), self.state_dir_flag.as_deref())
        );
    }

    /// `site code SITE`, with `--edge` when the HTTPS port is not the 443 it assumes.
    fn site_code_command(&self) -> String {
        let command = format!("{} site code {}", self.program, self.site_name());
        match self.listen.https.port() {
            443 => command,
            _ => format!("{command} --edge {}", self.code_edge),
        }
    }

    /// The code's `HOST[:PORT]`, always with the port (what the connector connects to).
    fn code_edge_with_port(&self) -> String {
        match self.listen.https.port() {
            443 => format!("{}:443", self.code_edge),
            _ => self.code_edge.clone(),
        }
    }
}

/// The command that issues the first device's certificate. The one place that decides how a
/// device enrolls: a one-time link the phone opens by its QR code, so no file has to be copied
/// off the VPS. The link names the HTTPS port when it is not 443 (`client add --link` cannot
/// know it otherwise without `--config`).
fn first_device_command(
    program: &str,
    site: &str,
    https_port: u16,
    state_dir_flag: Option<&Path>,
) -> String {
    let port = match https_port {
        443 => String::new(),
        port => format!(" --port {port}"),
    };
    with_state_dir(
        format!("{program} client add phone --site {site} --link{port}"),
        state_dir_flag,
    )
}

fn with_state_dir(command: String, state_dir_flag: Option<&Path>) -> String {
    match state_dir_flag {
        Some(dir) => format!("{command} --state-dir {}", dir.display()),
        None => command,
    }
}

fn list_or_none(items: &[String]) -> String {
    match items.is_empty() {
        true => "none".into(),
        false => items.join(", "),
    }
}

fn done(step: FileStep) -> &'static str {
    match step {
        FileStep::Write => "written",
        FileStep::Unchanged => "unchanged",
        FileStep::Replace => "replaced (the old one is kept as .old)",
    }
}

/// `sudo doorless-edge` when run through sudo, else the name the user typed.
fn program_name() -> String {
    let argv0 = std::env::args()
        .next()
        .unwrap_or_else(|| "doorless-edge".into());
    // A bare name or a PATH lookup prints as `doorless-edge`; an explicit path stays as typed.
    let program = match argv0.contains('/') {
        true => argv0,
        false => "doorless-edge".into(),
    };
    match std::env::var_os("SUDO_USER").is_some() {
        true => format!("sudo {program}"),
        false => program,
    }
}

/// Finds the site that holds `hostname`, or decides which site to add.
fn plan_site(state: &StateStep, hostname: &str, wanted: Option<&str>) -> anyhow::Result<SiteStep> {
    let name = match wanted {
        Some(name) => {
            pki::validate_name(name).map_err(|e| Refusal::usage(format!("--site: {e}")))?;
            name.to_owned()
        }
        None => derived_site_name(hostname),
    };
    let StateStep::Exists(state) = state else {
        return Ok(SiteStep::Add { name });
    };
    let sites = state.sites().map_err(|e| Refusal::config(e.to_string()))?;
    if let Some(site) = sites
        .iter()
        .find(|s| s.hostnames.iter().any(|h| h == hostname))
    {
        if wanted.is_some_and(|w| w != site.name) {
            return Err(Refusal::config(format!(
                "{hostname} already belongs to site {}, not {name}",
                site.name
            ))
            .into());
        }
        let connectors = state
            .clients()
            .map_err(|e| Refusal::config(e.to_string()))?
            .into_iter()
            .filter(|e| {
                e.kind == pki::Kind::Connector && e.site == site.name && e.revoked_at.is_none()
            })
            .map(|e| e.name)
            .collect();
        return Ok(SiteStep::Exists {
            name: site.name.clone(),
            connectors,
        });
    }
    if let Some(site) = sites.iter().find(|s| s.name == name) {
        return Err(Refusal::config(format!(
            "site {name} already exists for {}; pass --site NAME to add {hostname} as a new site",
            site.hostnames.join(", ")
        ))
        .into());
    }
    Ok(SiteStep::Add { name })
}

/// `ha` for `ha.example.com`: short to type in `client add --site`. A first label that is no
/// valid site name (it cannot start with `-`, but may be longer than allowed) falls back to the
/// whole hostname, which always is one when short enough.
fn derived_site_name(hostname: &str) -> String {
    let first = hostname.split('.').next().unwrap_or(hostname);
    match pki::validate_name(first) {
        Ok(()) => first.to_owned(),
        Err(_) => hostname.chars().take(63).collect(),
    }
}

/// The configuration setup writes. Only what differs from the defaults, plus the listeners
/// (so the file says where the edge listens without a look at docs/config.md).
fn render_config(state_dir: &Path, listen: &Listen, acme: Option<&Acme>) -> String {
    let mut text = format!(
        "# doorless-edge configuration, written by `doorless-edge setup`.\n\
         # Every key: docs/config.md. Check it with `doorless-edge check-config`.\n\
         state_dir = {}\n\n\
         [listen]\n\
         https = \"{}\"    # TCP: browsers and apps\n\
         tunnel = \"{}\"   # UDP: QUIC from connectors\n\
         admin = \"{}\" # /healthz /readyz /status /metrics\n",
        toml_string(&state_dir.to_string_lossy()),
        listen.https,
        listen.tunnel,
        listen.admin,
    );
    if let Some(acme) = acme {
        text.push_str(&format!("\n[acme]\nemail = {}\n", toml_string(&acme.email)));
        if let Some(url) = &acme.directory {
            text.push_str(&format!("directory = {}\n", toml_string(url)));
        }
        if let Some(ca) = &acme.ca {
            text.push_str(&format!(
                "extra_roots = {}\n",
                toml_string(&ca.to_string_lossy())
            ));
        }
        if acme.staging {
            text.push_str("staging = true\n");
        }
    }
    text
}

/// A TOML basic string: JSON's escaping is valid TOML for every character.
fn toml_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// Loads the rendered configuration exactly as `run` will, before anything is written: a
/// build that does not know a key setup writes says so now, with exit code 78.
fn check_rendered(text: &str) -> anyhow::Result<()> {
    let path = std::env::temp_dir().join(format!("doorless-setup-{}.toml", std::process::id()));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    let loaded = load_config(&path);
    let _ = std::fs::remove_file(&path);
    loaded.map_err(|e| {
        // Name what the user knows, not the scratch file.
        let problem = format!("{e:#}").replace(&path.display().to_string(), "it");
        Refusal::config(format!(
            "this doorless-edge refuses the configuration setup would write (nothing was \
             changed): {problem}"
        ))
    })?;
    Ok(())
}

/// Decides what to do with `path`: write it if missing, leave it if it already says what
/// setup would write, replace it only with `--force`. `same` compares the two texts.
fn compare_file(
    path: &Path,
    wanted: &str,
    force: bool,
    same: fn(&Path, &str, &str) -> Result<Vec<String>, Refusal>,
) -> anyhow::Result<FileStep> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileStep::Write),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let differences = same(path, &existing, wanted)?;
    if differences.is_empty() {
        return Ok(FileStep::Unchanged);
    }
    if force {
        return Ok(FileStep::Replace);
    }
    Err(Refusal::config(format!(
        "{} exists and differs from what setup would write:\n  {}\nEdit it by hand, or pass \
         --force to replace it (the old file is kept as {}.old).",
        path.display(),
        differences.join("\n  "),
        path.display()
    ))
    .into())
}

/// The keys whose values differ between an existing configuration and setup's (comments and
/// layout do not count), each as `key: file has X, setup writes Y`.
fn compare_toml(path: &Path, existing: &str, wanted: &str) -> Result<Vec<String>, Refusal> {
    let parse = |text: &str| {
        Figment::from(Toml::string(text))
            .extract::<serde_json::Value>()
            .map_err(|e| e.to_string())
    };
    let existing = parse(existing)
        .map_err(|e| Refusal::config(format!("{}: not valid TOML: {e}", path.display())))?;
    let wanted =
        parse(wanted).map_err(|e| Refusal::config(format!("setup's own configuration: {e}")))?;
    let mut out = Vec::new();
    diff_values("", &existing, &wanted, &mut out);
    Ok(out)
}

fn diff_values(
    key: &str,
    have: &serde_json::Value,
    want: &serde_json::Value,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (have, want) {
        (Value::Object(have), Value::Object(want)) => {
            let mut keys: Vec<&String> = have.keys().chain(want.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let sub = match key.is_empty() {
                    true => k.clone(),
                    false => format!("{key}.{k}"),
                };
                match (have.get(k), want.get(k)) {
                    (Some(h), Some(w)) => diff_values(&sub, h, w, out),
                    (Some(h), None) => out.push(format!("{sub}: file has {h}, setup writes none")),
                    (None, Some(w)) => out.push(format!("{sub}: file has none, setup writes {w}")),
                    (None, None) => {}
                }
            }
        }
        (h, w) if h == w => {}
        (h, w) => out.push(format!("{key}: file has {h}, setup writes {w}")),
    }
}

/// Line by line, for the unit file (no structure to compare).
fn compare_lines(_path: &Path, existing: &str, wanted: &str) -> Result<Vec<String>, Refusal> {
    let have: Vec<&str> = existing.lines().collect();
    let want: Vec<&str> = wanted.lines().collect();
    let mut out: Vec<String> = want
        .iter()
        .filter(|l| !have.contains(l))
        .map(|l| format!("setup writes: {l}"))
        .collect();
    out.extend(
        have.iter()
            .filter(|l| !want.contains(l))
            .map(|l| format!("file has:     {l}")),
    );
    Ok(out)
}

/// Whether the systemd unit is installed, and if not why not.
fn plan_service(args: &Setup, state_dir: &Path) -> anyhow::Result<ServiceStep> {
    if args.no_systemd {
        return Ok(ServiceStep::Manual { why: None });
    }
    if !Path::new("/run/systemd/system").is_dir() {
        return Ok(ServiceStep::Manual {
            why: Some("systemd is not running here".into()),
        });
    }
    if !is_root() {
        return Ok(ServiceStep::Manual {
            why: Some("not root (run setup with sudo to install the systemd unit)".into()),
        });
    }
    if state_dir != Path::new(UNIT_STATE_DIR) {
        return Err(Refusal::usage(format!(
            "the systemd unit keeps its state in {UNIT_STATE_DIR} (StateDirectory=); with \
             --state-dir {} pass --no-systemd and run the edge yourself",
            state_dir.display()
        ))
        .into());
    }
    let exe = std::env::current_exe().context("finding this program's path")?;
    if exe.starts_with("/home") || exe.starts_with("/root") || exe.starts_with("/tmp") {
        return Err(Refusal::usage(format!(
            "the systemd unit cannot run {} (ProtectHome=, PrivateTmp=): install the binary \
             first, e.g. `sudo install -m 0755 {} {UNIT_BINARY}`, and run setup from there",
            exe.display(),
            exe.display()
        ))
        .into());
    }
    let unit_text = unit_text(&exe, &args.config);
    let unit = compare_file(Path::new(UNIT_PATH), &unit_text, args.force, compare_lines)?;
    Ok(ServiceStep::Systemd { unit_text, unit })
}

/// deploy/systemd/doorless-edge.service, its `ExecStart` pointing at this binary and config.
fn unit_text(exe: &Path, config: &Path) -> String {
    let exec = format!(
        "ExecStart={} run --config {}",
        exe.display(),
        config.display()
    );
    UNIT.lines()
        .map(|line| match line.starts_with("ExecStart=") {
            true => exec.as_str(),
            false => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn is_root() -> bool {
    // /proc/self/status: "Uid:\treal\teffective\t...". No libc call (unsafe is forbidden).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Writes (or replaces, keeping `.old`) a file atomically; nothing for `Unchanged`.
fn write_step(path: &Path, text: &str, step: FileStep, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if step == FileStep::Unchanged {
        return Ok(());
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if step == FileStep::Replace {
        let old = PathBuf::from(format!("{}.old", path.display()));
        std::fs::copy(path, &old).with_context(|| format!("keeping {}", old.display()))?;
    }
    let tmp = PathBuf::from(format!("{}.tmp-{}", path.display(), std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Writes a drop-in only if absent: the administrator may have tuned an existing one.
fn write_if_missing(path: &Path, text: &str) -> anyhow::Result<()> {
    match path.exists() {
        true => Ok(()),
        false => write_step(path, text, FileStep::Write, 0o644),
    }
}

/// Runs a system tool, failing with its output.
fn systemctl_like(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        anyhow::bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// reachability, as far as this machine can tell

/// One line per check; problems start with `warning:`. Never fails setup: a firewall or DNS
/// record can be fixed after it.
fn reachability(listen: &Listen, hostname: &str, edge_running: bool) -> Vec<String> {
    let mut lines = vec![
        bind_check("TCP", listen.https, edge_running, |a| {
            TcpListener::bind(a).map(drop)
        }),
        bind_check("UDP", listen.tunnel, edge_running, |a| {
            UdpSocket::bind(a).map(drop)
        }),
    ];
    lines.push(dns_check(hostname));
    lines.push(
        "not checkable from here: the provider's firewall must let TCP and UDP in on these ports"
            .into(),
    );
    lines
}

fn bind_check(
    proto: &str,
    addr: SocketAddr,
    edge_running: bool,
    bind: impl Fn(SocketAddr) -> std::io::Result<()>,
) -> String {
    use std::io::ErrorKind;
    match bind(addr) {
        Ok(()) => format!("{proto} {addr}: free"),
        Err(e) if e.kind() == ErrorKind::AddrInUse && edge_running => {
            format!("{proto} {addr}: in use by the running edge")
        }
        Err(e) if e.kind() == ErrorKind::AddrInUse => format!(
            "warning: {proto} {addr} is in use by another program: the edge cannot start until \
             it is freed (or choose another port with --{})",
            if proto == "TCP" { "https" } else { "tunnel" }
        ),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => format!(
            "{proto} {addr}: needs root or CAP_NET_BIND_SERVICE to bind (the systemd unit has it)"
        ),
        Err(e) => format!("warning: {proto} {addr} cannot be bound: {e}"),
    }
}

/// Does the hostname resolve, and to an address of this machine? An address that is not
/// local is only a warning: behind 1:1 NAT (many clouds) the public address is on no interface.
fn dns_check(hostname: &str) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    let host = hostname.to_owned();
    // getaddrinfo cannot be cancelled; a thread with a deadline bounds the wait.
    std::thread::spawn(move || {
        let _ = tx.send(
            (host.as_str(), 443)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>()),
        );
    });
    let addrs = match rx.recv_timeout(LOOK_DEADLINE) {
        Ok(Ok(addrs)) if !addrs.is_empty() => addrs,
        Ok(_) => {
            return format!(
                "warning: {hostname} does not resolve (yet): create its A/AAAA record pointing \
                 here; ACME and connectors need it"
            );
        }
        Err(_) => return format!("warning: resolving {hostname} took over {LOOK_DEADLINE:?}"),
    };
    let mut ips: Vec<std::net::IpAddr> = addrs.iter().map(SocketAddr::ip).collect();
    ips.sort();
    ips.dedup();
    // Binding succeeds only for an address this machine has.
    let local: Vec<_> = ips
        .iter()
        .filter(|ip| UdpSocket::bind(SocketAddr::new(**ip, 0)).is_ok())
        .collect();
    let shown = ips
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match local.is_empty() {
        false => format!("{hostname} resolves to {shown}: an address of this machine"),
        true => format!(
            "warning: {hostname} resolves to {shown}, not an address of this machine (fine \
             behind 1:1 NAT, as on many clouds; otherwise fix the DNS record)"
        ),
    }
}

/// Whether something answers `/healthz` on the admin address (our edge, already running).
fn admin_answers(admin: SocketAddr) -> bool {
    http_status(admin, "/healthz", Duration::from_secs(2)) == Some(200)
}

/// Polls `/readyz` until 200 or [`LOOK_DEADLINE`].
fn wait_ready(admin: SocketAddr) -> bool {
    let started = Instant::now();
    while started.elapsed() < LOOK_DEADLINE {
        if http_status(admin, "/readyz", Duration::from_secs(2)) == Some(200) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// A bare HTTP/1.0 GET on loopback; the status code, if any answer came in time.
fn http_status(admin: SocketAddr, path: &str, timeout: Duration) -> Option<u16> {
    let target = match admin.ip().is_unspecified() {
        true => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), admin.port()),
        false => admin,
    };
    let mut stream = TcpStream::connect_timeout(&target, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {target}\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        match stream.read(&mut head[len..]).ok()? {
            0 => break,
            n => len += n,
        }
    }
    std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()
}

// ---------------------------------------------------------------------------------------------
// the terminal

/// Asks on stderr, reads one line from stdin (bounded); an empty answer asks again.
fn ask(question: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    for _ in 0..3 {
        eprint!("{question}: ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        stdin.lock().take(MAX_ANSWER).read_line(&mut line)?;
        if line.is_empty() {
            return Err(Refusal::usage("no answer (end of input); nothing was changed").into());
        }
        let answer = line.trim();
        if !answer.is_empty() {
            return Ok(answer.to_owned());
        }
    }
    Err(Refusal::usage(format!("no answer to {question:?}; nothing was changed")).into())
}

/// "Proceed? [Y/n]" on stderr.
fn confirm() -> anyhow::Result<bool> {
    eprint!("Proceed? [Y/n] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(MAX_ANSWER)
        .read_line(&mut line)?;
    Ok(matches!(line.trim(), "" | "y" | "Y" | "yes" | "Yes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_device_gets_a_link_naming_a_port_other_than_443() {
        assert_eq!(
            first_device_command("doorless-edge", "ha", 443, None),
            "doorless-edge client add phone --site ha --link"
        );
        assert_eq!(
            first_device_command("edge", "ha", 8443, Some(Path::new("/s"))),
            "edge client add phone --site ha --link --port 8443 --state-dir /s"
        );
    }

    #[test]
    fn site_names_from_hostnames() {
        assert_eq!(derived_site_name("ha.example.com"), "ha");
        assert_eq!(derived_site_name("home"), "home");
        let long = format!("{}.example.com", "a".repeat(63));
        assert_eq!(derived_site_name(&long), "a".repeat(63));
    }

    #[test]
    fn acme_block_is_exactly_what_acme_edge_reads() {
        let listen = Listen {
            https: "0.0.0.0:443".parse().unwrap_or_else(|e| panic!("{e}")),
            tunnel: "0.0.0.0:443".parse().unwrap_or_else(|e| panic!("{e}")),
            admin: "127.0.0.1:9470".parse().unwrap_or_else(|e| panic!("{e}")),
        };
        let dir = Path::new("/var/lib/doorless-edge");
        let plain =
            Acme::new("you@example.com", None, None, false).unwrap_or_else(|e| panic!("{e}"));
        let text = render_config(dir, &listen, Some(&plain));
        assert!(
            text.ends_with("\n[acme]\nemail = \"you@example.com\"\n"),
            "{text}"
        );
        let both = Acme::new("you@example.com", Some("https://acme.test/dir"), None, true)
            .unwrap_or_else(|e| panic!("{e}"));
        let text = render_config(dir, &listen, Some(&both));
        assert!(
            text.ends_with(
                "\n[acme]\nemail = \"you@example.com\"\ndirectory = \"https://acme.test/dir\"\nstaging = true\n"
            ),
            "{text}"
        );
        assert!(!render_config(dir, &listen, None).contains("[acme]"));
        let private = Acme::new(
            "you@example.com",
            Some("https://ca.internal/acme/acme/directory"),
            Some(Path::new("/etc/doorless/step-ca-root.pem")),
            false,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let text = render_config(dir, &listen, Some(&private));
        assert!(
            text.ends_with(
                "\ndirectory = \"https://ca.internal/acme/acme/directory\"\nextra_roots = \"/etc/doorless/step-ca-root.pem\"\n"
            ),
            "{text}"
        );
    }

    /// `--acme-ca` names roots for a CA the user names: alone (Let's Encrypt needs none) or
    /// with `--no-acme` it is a usage error.
    #[test]
    fn acme_ca_needs_an_acme_directory() {
        use clap::Parser as _;
        let parse = |extra: &[&str]| {
            let mut args = vec!["doorless-edge", "setup", "--hostname", "ha.example.com"];
            args.extend_from_slice(extra);
            crate::Cli::try_parse_from(args).map(|_| ())
        };
        assert!(parse(&["--acme-ca", "root.pem"]).is_err());
        assert!(parse(&["--no-acme", "--acme-ca", "root.pem"]).is_err());
        let dir = ["--acme-directory", "https://ca.internal/dir"];
        assert!(parse(&[&dir[..], &["--acme-ca", "root.pem"]].concat()).is_ok());
    }

    #[test]
    fn bad_emails_and_directories_are_usage_errors() {
        for email in [
            "",
            "you",
            "you@",
            "@example.com",
            "you@example",
            "a b@example.com",
        ] {
            let Err(e) = Acme::new(email, None, None, false) else {
                panic!("{email:?} must be refused");
            };
            assert_eq!(e.exit_code(), EX_USAGE);
        }
        let Err(e) = Acme::new("you@example.com", Some("http://acme.test/dir"), None, false) else {
            panic!("http directory must be refused");
        };
        assert_eq!(e.exit_code(), EX_USAGE);
    }

    #[test]
    fn config_differences_name_the_keys() {
        let path = Path::new("edge.toml");
        let have = "state_dir = \"/a\"\n# a comment\n[listen]\nhttps = \"0.0.0.0:443\"\n";
        let same = "state_dir = \"/a\"\n\n[listen]\nhttps = \"0.0.0.0:443\" # TCP\n";
        assert!(
            compare_toml(path, have, same)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_empty()
        );
        let want =
            "state_dir = \"/a\"\n[listen]\nhttps = \"0.0.0.0:8443\"\n[acme]\nemail = \"x@y.z\"\n";
        let diff = compare_toml(path, have, want).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff[0].starts_with("acme: file has none"), "{diff:?}");
        assert!(
            diff[1].starts_with("listen.https: file has \"0.0.0.0:443\""),
            "{diff:?}"
        );
        let Err(e) = compare_toml(path, "state_dir = ", want) else {
            panic!("broken TOML must be refused");
        };
        assert_eq!(e.exit_code(), EX_CONFIG);
    }

    #[test]
    fn unit_runs_this_binary_with_this_config() {
        let text = unit_text(
            Path::new("/opt/doorless/doorless-edge"),
            Path::new("/etc/d/e.toml"),
        );
        let exec: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("ExecStart="))
            .collect();
        assert_eq!(
            exec,
            ["ExecStart=/opt/doorless/doorless-edge run --config /etc/d/e.toml"]
        );
        // The shipped unit, unchanged, for the default paths.
        assert_eq!(
            unit_text(Path::new(UNIT_BINARY), Path::new(DEFAULT_CONFIG)),
            UNIT
        );
    }
}
