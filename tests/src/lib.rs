//! The e2e harness: mints certificates with the `pki` library, spawns the REAL `doorless-edge`
//! and `doorless-connector` binaries on 127.0.0.1 port 0 (reading their `--ready-file`), runs a
//! stand-in Home Assistant in-process, and hands out real clients (reqwest over TLS with or
//! without a client certificate, WebSocket over tokio-rustls, raw HTTP/1.1 over TLS).
//!
//! It is not a test itself: the cases live in `tests/e2e.rs`. Start at [`Stack`], which builds
//! a complete edge + connector + stand-in for one or two sites.
//!
//! Rules the harness keeps so tests stay reliable: port 0 everywhere, every wait is a poll with
//! a deadline (never a sleep used as synchronisation), every child process is killed by its own
//! handle when dropped (never by name), and its output is kept in files and printed when the
//! test panics.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

pub use standin::{Recorder, SeenRequest};

pub mod udp_relay;

/// How long a process gets to write its ready file.
pub const READY_DEADLINE: Duration = Duration::from_secs(20);

/// Interval between two looks at something a test is polling for.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Default hostnames of the two sites a [`Stack`] can have.
pub const HOME_HOST: &str = "ha.home.test";
/// Hostname of the second site.
pub const CABIN_HOST: &str = "ha.cabin.test";

// ---------------------------------------------------------------------------------------------
// process-wide setup

/// Installs the aws-lc-rs rustls provider once (ignoring "already installed").
pub fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// Paths of the two binaries under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `doorless-edge`
    pub edge: PathBuf,
    /// `doorless-connector`
    pub connector: PathBuf,
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn target_dir() -> Result<PathBuf> {
    let root = workspace_root();
    let output = Command::new(cargo())
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(&root)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if output.status.success() {
        let meta: serde_json::Value =
            serde_json::from_slice(&output.stdout).context("parsing cargo metadata")?;
        if let Some(dir) = meta["target_directory"].as_str() {
            return Ok(PathBuf::from(dir));
        }
    }
    Ok(std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target")))
}

fn build_binaries() -> Result<Binaries> {
    let root = workspace_root();
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(cargo());
    // `edge/demo`: the `doorless-edge demo` verb (tests/e2e/demo.rs). The same features as the
    // workspace build (this package depends on edge with it), so this build finds it up to date.
    cmd.args([
        "build",
        "--bins",
        "-p",
        "edge",
        "-p",
        "connector",
        "--features",
        "edge/demo",
    ])
    .current_dir(&root);
    if release {
        cmd.arg("--release");
    }
    let output = cmd.output().context("spawning cargo build")?;
    ensure!(
        output.status.success(),
        "cargo build of doorless-edge and doorless-connector failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let dir = target_dir()?.join(if release { "release" } else { "debug" });
    let exe = std::env::consts::EXE_SUFFIX;
    let binaries = Binaries {
        edge: dir.join(format!("doorless-edge{exe}")),
        connector: dir.join(format!("doorless-connector{exe}")),
    };
    for path in [&binaries.edge, &binaries.connector] {
        ensure!(
            path.is_file(),
            "{} missing after cargo build",
            path.display()
        );
    }
    Ok(binaries)
}

/// Builds `doorless-edge` and `doorless-connector` once per test process and returns their
/// paths. Under `cargo test` the build lock is free again by the time tests run.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<std::result::Result<Binaries, String>> = OnceLock::new();
    let built = BINARIES.get_or_init(|| build_binaries().map_err(|e| format!("{e:#}")));
    match built {
        Ok(binaries) => binaries,
        Err(error) => panic!("{error}"),
    }
}

// ---------------------------------------------------------------------------------------------
// small helpers

fn pem<T: AsRef<[u8]> + ?Sized>(t: &T) -> &[u8] {
    t.as_ref()
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Some`, or fails after `deadline`.
pub async fn poll_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if started.elapsed() > deadline {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Resident set size of process `pid` in bytes, from `/proc/<pid>/status` (Linux only).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Samples the RSS of some processes in the background until [`RssSampler::stop`].
pub struct RssSampler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<(u32, u64, u64)>>,
}

/// Start and peak RSS of one process.
#[derive(Debug, Clone, Copy)]
pub struct RssReport {
    /// Process id.
    pub pid: u32,
    /// RSS when sampling started, bytes.
    pub start: u64,
    /// Highest RSS seen, bytes.
    pub peak: u64,
}

impl RssReport {
    /// Peak minus start, bytes.
    pub fn growth(&self) -> u64 {
        self.peak.saturating_sub(self.start)
    }
}

impl RssSampler {
    /// Starts sampling every 20 ms.
    pub fn start(pids: &[u32]) -> Self {
        let stop = CancellationToken::new();
        let pids = pids.to_vec();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut stats: Vec<(u32, u64, u64)> = pids
                .iter()
                .map(|&pid| {
                    let rss = rss_bytes(pid).unwrap_or(0);
                    (pid, rss, rss)
                })
                .collect();
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                for (pid, _, peak) in &mut stats {
                    if let Some(rss) = rss_bytes(*pid) {
                        *peak = (*peak).max(rss);
                    }
                }
            }
            stats
        });
        Self { stop, task }
    }

    /// Stops sampling and returns one report per pid, in the order given.
    pub async fn stop(self) -> Vec<RssReport> {
        self.stop.cancel();
        self.task
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|(pid, start, peak)| RssReport { pid, start, peak })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// PKI

/// A throwaway state dir with sites, device certificates and connector tokens.
pub struct Pki {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// The state dir itself.
    pub state: pki::StateDir,
}

impl Pki {
    /// `pki::StateDir::init` in a new temp dir.
    pub fn new() -> Result<Self> {
        init();
        let dir = tempfile::Builder::new().prefix("doorless-pki-").tempdir()?;
        let root = dir.path().join("state");
        let state = pki::StateDir::init(&root, &pki::InitOptions { edge_addr: None })
            .context("StateDir::init")?;
        Ok(Self {
            _dir: dir,
            root,
            state,
        })
    }

    /// The state dir path (for the edge config).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Adds a site serving `hostname`.
    pub fn add_site(&mut self, name: &str, hostname: &str) -> Result<pki::Site> {
        self.state
            .add_site(name, &[hostname.to_owned()])
            .with_context(|| format!("add_site {name}"))
    }

    /// A valid device certificate (30 days, ECDSA P-256) from the site's client CA.
    pub fn device(&mut self, site: &str, name: &str) -> Result<pki::Issued> {
        self.state
            .add_client(site, name, pki::Validity::days(30), pki::KeyType::EcdsaP256)
            .with_context(|| format!("add_client {site}/{name}"))
    }

    /// A device certificate from the site's real client CA that expired yesterday.
    pub fn expired_device(&mut self, site: &pki::Site, name: &str) -> Result<pki::Issued> {
        let key = self
            .state
            .root()
            .join("sites")
            .join(&site.name)
            .join("client-ca.key");
        let ca = pki::Ca::load(&site.client_ca_path, &key).context("Ca::load client CA")?;
        let now = time::OffsetDateTime::now_utc();
        let validity = pki::Validity {
            not_before: now - time::Duration::days(10),
            not_after: now - time::Duration::days(1),
        };
        let identity = pki::Identity::device(&site.name, name)?;
        ca.issue_client(&identity, validity, pki::KeyType::EcdsaP256)
            .context("issue expired client cert")
    }

    /// A device certificate for `site` signed by a CA the edge has never seen.
    pub fn foreign_device(&self, site: &str, name: &str) -> Result<pki::Issued> {
        let ca = pki::Ca::generate("doorless test foreign CA", pki::Validity::days(30))
            .context("Ca::generate")?;
        let identity = pki::Identity::device(site, name)?;
        ca.issue_client(&identity, pki::Validity::days(30), pki::KeyType::EcdsaP256)
            .context("issue foreign client cert")
    }

    /// An enrollment token for a new connector of `site`.
    pub fn connector_token(&mut self, site: &str, name: &str) -> Result<pki::EnrollmentToken> {
        self.state
            .issue_connector(site, Some(name))
            .with_context(|| format!("issue_connector {site}/{name}"))
    }

    /// PEM of the CA that signed the edge's public (HTTPS) certificates.
    pub fn server_ca_pem(&self) -> Result<Vec<u8>> {
        let path = self.state.server_ca_path();
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }
}

/// Encodes `token` with its edges replaced by `edges`.
pub fn token_for(token: &pki::EnrollmentToken, edges: &[SocketAddr]) -> String {
    let mut token = token.clone();
    token.edges = edges.iter().map(ToString::to_string).collect();
    token.encode()
}

// ---------------------------------------------------------------------------------------------
// processes

/// A child process with its output in files; killed (by its handle) on drop.
struct Proc {
    name: &'static str,
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
    generation: u32,
}

impl Proc {
    fn spawn(name: &'static str, dir: &Path, cmd: &mut Command, generation: u32) -> Result<Self> {
        let stdout = dir.join(format!("{name}.{generation}.stdout"));
        let stderr = dir.join(format!("{name}.{generation}.stderr"));
        cmd.stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("NO_COLOR", "1");
        let child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        Ok(Self {
            name,
            child: Some(child),
            stdout,
            stderr,
            generation,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn output(&self) -> String {
        let mut out = String::new();
        for (what, path) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let text = strip_ansi(&std::fs::read_to_string(path).unwrap_or_default());
            let _ = writeln!(
                out,
                "----- {} #{} {what} ({}) -----\n{}",
                self.name,
                self.generation,
                path.display(),
                tail(&text, 200)
            );
        }
        out
    }

    fn stderr_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.stderr).unwrap_or_default())
    }

    fn stdout_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.stdout).unwrap_or_default())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() || std::env::var_os("DOORLESS_E2E_LOGS").is_some() {
            eprintln!("{}", self.output());
        }
    }
}

/// Removes ANSI colour sequences (`ESC [ ... m`) so logs read well in test output.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let skip = all.len().saturating_sub(lines);
    let mut out = String::new();
    if skip > 0 {
        let _ = writeln!(out, "[... {skip} lines skipped ...]");
    }
    for line in &all[skip..] {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Waits for `path` to hold a JSON object, failing early if the process exits.
async fn wait_ready_file(
    proc: &mut Proc,
    path: &Path,
    deadline: Duration,
) -> Result<serde_json::Value> {
    let started = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(value @ serde_json::Value::Object(_)) = serde_json::from_str(&text)
        {
            return Ok(value);
        }
        if let Some(status) = proc.try_wait() {
            bail!(
                "{} exited ({status}) before writing its ready file\n{}",
                proc.name,
                proc.output()
            );
        }
        if started.elapsed() > deadline {
            bail!(
                "{} did not write its ready file {} within {deadline:?}\n{}",
                proc.name,
                path.display(),
                proc.output()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn addr_field(ready: &serde_json::Value, key: &str) -> Result<SocketAddr> {
    ready[key]
        .as_str()
        .ok_or_else(|| anyhow!("ready file has no {key:?}: {ready}"))?
        .parse()
        .with_context(|| format!("ready file {key:?} is not an address: {ready}"))
}

/// Bound addresses of a running edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgeAddrs {
    /// Public HTTPS (TCP).
    pub https: SocketAddr,
    /// QUIC tunnel for connectors (UDP).
    pub tunnel: SocketAddr,
    /// Admin listener (TCP).
    pub admin: SocketAddr,
}

/// Options for an edge process.
#[derive(Debug, Clone, Default)]
pub struct EdgeOptions {
    /// The `[limits]` table body (TOML lines), if any.
    pub limits: Option<String>,
    /// Extra top-level TOML (e.g. to test config validation).
    pub extra_toml: Option<String>,
    /// Environment variables for the process (e.g. `DOORLESS_*`).
    pub env: Vec<(String, String)>,
    /// Leave `state_dir` out of the file and pass it as `DOORLESS_STATE_DIR` instead.
    pub state_dir_from_env: bool,
}

/// A running `doorless-edge run`.
pub struct Edge {
    // Declared before `dir`: fields drop in order, and the process must be killed (and its
    // output printed) before its temp dir disappears.
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    state_dir: PathBuf,
    options: EdgeOptions,
    addrs: EdgeAddrs,
    generation: u32,
}

fn toml_str(s: &str) -> String {
    // serde_json string escaping is valid TOML basic-string escaping for what we pass.
    serde_json::Value::String(s.to_owned()).to_string()
}

impl Edge {
    /// Starts an edge on the state dir with all listeners on port 0.
    pub async fn start(state_dir: &Path) -> Result<Self> {
        Self::start_with(state_dir, EdgeOptions::default()).await
    }

    /// Starts an edge with options.
    pub async fn start_with(state_dir: &Path, options: EdgeOptions) -> Result<Self> {
        init();
        let dir = tempfile::Builder::new()
            .prefix("doorless-edge-")
            .tempdir()?;
        let unbound: SocketAddr = ([127, 0, 0, 1], 0).into();
        let mut edge = Self {
            dir,
            state_dir: state_dir.to_owned(),
            options,
            proc: None,
            addrs: EdgeAddrs {
                https: unbound,
                tunnel: unbound,
                admin: unbound,
            },
            generation: 0,
        };
        edge.spawn(unbound).await?;
        Ok(edge)
    }

    fn config(&self, tunnel: SocketAddr) -> String {
        let mut config = String::new();
        if !self.options.state_dir_from_env {
            let _ = writeln!(
                config,
                "state_dir = {}",
                toml_str(&self.state_dir.to_string_lossy())
            );
        }
        if let Some(extra) = &self.options.extra_toml {
            config.push_str(extra);
            config.push('\n');
        }
        let _ = write!(
            config,
            "\n[listen]\nhttps = \"127.0.0.1:0\"\ntunnel = \"{tunnel}\"\nadmin = \"127.0.0.1:0\"\n"
        );
        if let Some(limits) = &self.options.limits {
            let _ = write!(config, "\n[limits]\n{limits}\n");
        }
        config
    }

    async fn spawn(&mut self, tunnel: SocketAddr) -> Result<()> {
        self.generation += 1;
        let config_path = self.dir.path().join("edge.toml");
        std::fs::write(&config_path, self.config(tunnel))?;
        let ready = self
            .dir
            .path()
            .join(format!("ready.{}.json", self.generation));
        let mut cmd = Command::new(&binaries().edge);
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&ready);
        for (key, value) in &self.options.env {
            cmd.env(key, value);
        }
        if self.options.state_dir_from_env {
            cmd.env("DOORLESS_STATE_DIR", &self.state_dir);
        }
        let mut proc = Proc::spawn("edge", self.dir.path(), &mut cmd, self.generation)?;
        let value = wait_ready_file(&mut proc, &ready, READY_DEADLINE).await;
        self.proc = Some(proc);
        let value = value?;
        self.addrs = EdgeAddrs {
            https: addr_field(&value, "https")?,
            tunnel: addr_field(&value, "tunnel")?,
            admin: addr_field(&value, "admin")?,
        };
        if tunnel.port() != 0 {
            ensure!(
                self.addrs.tunnel == tunnel,
                "edge bound tunnel {} instead of {tunnel}",
                self.addrs.tunnel
            );
        }
        Ok(())
    }

    /// All bound addresses.
    pub fn addrs(&self) -> EdgeAddrs {
        self.addrs
    }
    /// Public HTTPS address.
    pub fn https_addr(&self) -> SocketAddr {
        self.addrs.https
    }
    /// QUIC tunnel address.
    pub fn tunnel_addr(&self) -> SocketAddr {
        self.addrs.tunnel
    }
    /// Admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.addrs.admin
    }
    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(proc) = &mut self.proc {
            proc.kill();
        }
    }

    /// Sends SIGTERM (a graceful stop) to the current process, by its PID.
    pub fn terminate(&self) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("edge not running"))?;
        signal(pid, "TERM")
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.proc.as_mut().and_then(Proc::try_wait)
    }

    /// Waits for the current process to exit (after [`Edge::terminate`]), polling until
    /// `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return Ok(status);
            }
            ensure!(
                started.elapsed() < deadline,
                "edge did not exit within {deadline:?}\n{}",
                self.output()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Kills and starts again with the same config and state dir, keeping the tunnel port so
    /// connectors can come back; HTTPS and admin ports may change.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        let tunnel = self.addrs.tunnel;
        self.spawn(tunnel).await
    }

    /// Everything the current process printed so far.
    pub fn output(&self) -> String {
        self.proc.as_ref().map(Proc::output).unwrap_or_default()
    }

    /// The full stdout + stderr of the current process.
    pub fn all_text(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| format!("{}{}", p.stdout_text(), p.stderr_text()))
            .unwrap_or_default()
    }

    /// `GET /status` on the admin listener, as JSON.
    pub async fn status(&self) -> Result<serde_json::Value> {
        admin_get_json(self.admin_addr(), "/status").await
    }

    /// The sum of every series on the admin `/metrics` whose line starts with `series_prefix`
    /// (e.g. `doorless_edge_request_errors_total{site="home",blame="client"`); 0 if none.
    pub async fn metric(&self, series_prefix: &str) -> Result<f64> {
        let text = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?
            .get(format!("http://{}/metrics", self.admin_addr()))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with(series_prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Number of connector connections the edge reports for `site` (0 if none or unknown).
    pub async fn site_connections(&self, site: &str) -> Result<u64> {
        let status = self.status().await?;
        let sites = status["sites"]
            .as_array()
            .ok_or_else(|| anyhow!("/status has no sites array: {status}"))?;
        Ok(sites
            .iter()
            .filter(|s| s["name"] == site)
            .flat_map(|s| s["connectors"].as_array().cloned().unwrap_or_default())
            .map(|c| c["connections"].as_u64().unwrap_or(1))
            .sum())
    }
}

/// GETs a JSON document from an admin listener (plain HTTP).
pub async fn admin_get_json(admin: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()?
        .get(format!("http://{admin}{path}"))
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "GET {path} on admin: {}",
        response.status()
    );
    Ok(serde_json::from_slice(&response.bytes().await?)?)
}

/// Configuration of a connector process.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// The encoded enrollment token.
    pub token: String,
    /// `edges` override (omitted when `None`).
    pub edges: Option<Vec<SocketAddr>>,
    /// `upstream`.
    pub upstream: String,
    /// `connections`.
    pub connections: u32,
    /// Extra top-level TOML.
    pub extra_toml: Option<String>,
    /// Environment variables for the process (e.g. `DOORLESS_*`).
    pub env: Vec<(String, String)>,
    /// Leave `token` and `upstream` out of the file (they come from `env`).
    pub from_env: bool,
}

impl ConnectorConfig {
    /// The usual config: token (with the edges inside it), upstream, 2 connections.
    pub fn new(token: String, upstream: SocketAddr) -> Self {
        Self {
            token,
            edges: None,
            upstream: format!("http://{upstream}"),
            connections: 2,
            extra_toml: None,
            env: Vec::new(),
            from_env: false,
        }
    }

    fn toml(&self) -> String {
        let mut config = String::new();
        if !self.from_env {
            let _ = writeln!(config, "token = {}", toml_str(&self.token));
            let _ = writeln!(config, "upstream = {}", toml_str(&self.upstream));
        }
        if let Some(edges) = &self.edges {
            let list: Vec<String> = edges.iter().map(|e| format!("\"{e}\"")).collect();
            let _ = writeln!(config, "edges = [{}]", list.join(", "));
        }
        let _ = writeln!(config, "connections = {}", self.connections);
        if let Some(extra) = &self.extra_toml {
            config.push_str(extra);
            config.push('\n');
        }
        config.push_str("\n[listen]\nadmin = \"127.0.0.1:0\"\n");
        config
    }
}

/// A running `doorless-connector run`.
pub struct Connector {
    // Before `dir`, see `Edge`.
    proc: Option<Proc>,
    dir: tempfile::TempDir,
    config: ConnectorConfig,
    generation: u32,
    ready: PathBuf,
    admin: Option<SocketAddr>,
}

impl Connector {
    /// Spawns a connector and waits until it reports its first registered edge session.
    pub async fn start(config: ConnectorConfig) -> Result<Self> {
        let mut connector = Self::spawn(config)?;
        connector.wait_ready(READY_DEADLINE).await?;
        Ok(connector)
    }

    /// Spawns a connector without waiting for it to be ready.
    pub fn spawn(config: ConnectorConfig) -> Result<Self> {
        init();
        let dir = tempfile::Builder::new()
            .prefix("doorless-connector-")
            .tempdir()?;
        let mut connector = Self {
            ready: dir.path().join("ready.json"),
            dir,
            config,
            proc: None,
            generation: 0,
            admin: None,
        };
        connector.spawn_proc()?;
        Ok(connector)
    }

    fn spawn_proc(&mut self) -> Result<()> {
        self.generation += 1;
        let config_path = self.dir.path().join("connector.toml");
        std::fs::write(&config_path, self.config.toml())?;
        self.ready = self
            .dir
            .path()
            .join(format!("ready.{}.json", self.generation));
        self.admin = None;
        let mut cmd = Command::new(&binaries().connector);
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .arg("--ready-file")
            .arg(&self.ready);
        for (key, value) in &self.config.env {
            cmd.env(key, value);
        }
        self.proc = Some(Proc::spawn(
            "connector",
            self.dir.path(),
            &mut cmd,
            self.generation,
        )?);
        Ok(())
    }

    /// Waits for the ready file (first edge session registered).
    pub async fn wait_ready(&mut self, deadline: Duration) -> Result<SocketAddr> {
        let proc = self
            .proc
            .as_mut()
            .ok_or_else(|| anyhow!("connector not running"))?;
        let value = wait_ready_file(proc, &self.ready, deadline).await?;
        let admin = addr_field(&value, "admin")?;
        self.admin = Some(admin);
        Ok(admin)
    }

    /// Whether the current process has written its ready file.
    pub fn is_ready(&self) -> bool {
        self.ready.exists()
    }

    /// The admin address (once ready).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// Process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.proc.as_mut().and_then(Proc::try_wait)
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(proc) = &mut self.proc {
            proc.kill();
        }
    }

    /// Sends SIGTERM (a graceful stop) to the current process, by its PID.
    pub fn terminate(&self) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("connector not running"))?;
        signal(pid, "TERM")
    }

    /// Waits for the current process to exit (after [`Connector::terminate`]), polling until
    /// `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_wait() {
                return Ok(status);
            }
            ensure!(
                started.elapsed() < deadline,
                "connector did not exit within {deadline:?}\n{}",
                self.output()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Kills and starts again with the same config, without waiting until ready.
    pub fn respawn(&mut self) -> Result<()> {
        self.kill();
        self.spawn_proc()
    }

    /// Kills and starts again with the same config, waiting until ready.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn_proc()?;
        self.wait_ready(READY_DEADLINE).await?;
        Ok(())
    }

    /// Everything the current process printed so far (stdout and stderr, tails).
    pub fn output(&self) -> String {
        self.proc.as_ref().map(Proc::output).unwrap_or_default()
    }

    /// The full stdout + stderr of the current process.
    pub fn all_text(&self) -> String {
        self.proc
            .as_ref()
            .map(|p| format!("{}{}", p.stdout_text(), p.stderr_text()))
            .unwrap_or_default()
    }
}

/// Sends a signal (`TERM`, `KILL`, ...) to `pid` with `kill(1)`: by PID, never by name.
pub fn signal(pid: u32, name: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    ensure!(status.success(), "kill -{name} {pid} failed: {status}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// a UDP relay: the network between connector and edge, with faults on demand

/// A UDP relay in front of the edge's tunnel port: connectors dial [`UdpRelay::addr`], and the
/// relay forwards each client's datagrams from a socket of its own (one per client, like a NAT
/// mapping) and the answers back. Faults, all for real on the wire: [`UdpRelay::rebind`] gives
/// every client a new source port towards the edge (a NAT rebinding: the old mapping is gone,
/// the edge's packets to it are lost), [`UdpRelay::blackhole`] drops everything, and
/// [`UdpRelay::set_delay`] delays every datagram.
pub struct UdpRelay {
    addr: SocketAddr,
    state: Arc<RelayState>,
    stop: CancellationToken,
}

struct RelayState {
    target: SocketAddr,
    front: tokio::net::UdpSocket,
    blackhole: std::sync::atomic::AtomicBool,
    delay_ms: std::sync::atomic::AtomicU64,
    rebinds: std::sync::atomic::AtomicU64,
    mappings: std::sync::Mutex<std::collections::HashMap<SocketAddr, RelayMapping>>,
}

struct RelayMapping {
    socket: Arc<tokio::net::UdpSocket>,
    /// Stops this mapping's reader (the old mapping of a rebinding).
    gone: CancellationToken,
}

impl UdpRelay {
    /// Binds 127.0.0.1:0 and relays to `target`.
    pub async fn start(target: SocketAddr) -> Result<Self> {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let addr = front.local_addr()?;
        let state = Arc::new(RelayState {
            target,
            front,
            blackhole: std::sync::atomic::AtomicBool::new(false),
            delay_ms: std::sync::atomic::AtomicU64::new(0),
            rebinds: std::sync::atomic::AtomicU64::new(0),
            mappings: std::sync::Mutex::new(std::collections::HashMap::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(relay_front(state.clone(), stop.clone()));
        Ok(Self { addr, state, stop })
    }

    /// Where connectors dial.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// NAT rebinding: every client's next datagram leaves from a new source port; what the
    /// edge sends to the old ports is dropped from now on.
    pub fn rebind(&self) {
        use std::sync::atomic::Ordering;
        self.state.rebinds.fetch_add(1, Ordering::SeqCst);
        let old: Vec<RelayMapping> = self
            .state
            .mappings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, m)| m)
            .collect();
        for mapping in old {
            mapping.gone.cancel();
        }
    }

    /// Drops every datagram both ways while `on`.
    pub fn blackhole(&self, on: bool) {
        self.state
            .blackhole
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Delays every datagram by `delay` (both ways).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state
            .delay_ms
            .store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// The source ports the edge sees now, one per client.
    pub fn mapped_ports(&self) -> Vec<u16> {
        self.state
            .mappings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .filter_map(|m| m.socket.local_addr().ok())
            .map(|a| a.port())
            .collect()
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop.cancel();
        self.rebind();
    }
}

impl RelayState {
    fn pass(&self) -> Option<Duration> {
        use std::sync::atomic::Ordering;
        if self.blackhole.load(Ordering::SeqCst) {
            return None;
        }
        Some(Duration::from_millis(self.delay_ms.load(Ordering::SeqCst)))
    }
}

/// Client → edge: one upstream socket per client address, made on its first datagram.
async fn relay_front(state: Arc<RelayState>, stop: CancellationToken) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            () = stop.cancelled() => return,
            r = state.front.recv_from(&mut buf) => r,
        };
        let Ok((n, client)) = received else { continue };
        let socket = {
            let mut mappings = state
                .mappings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(m) = mappings.get(&client) {
                Some(m.socket.clone())
            } else {
                match std::net::UdpSocket::bind("127.0.0.1:0")
                    .and_then(|s| s.set_nonblocking(true).map(|()| s))
                    .and_then(tokio::net::UdpSocket::from_std)
                {
                    Ok(socket) => {
                        let socket = Arc::new(socket);
                        let gone = stop.child_token();
                        tokio::spawn(relay_back(
                            state.clone(),
                            socket.clone(),
                            client,
                            gone.clone(),
                        ));
                        mappings.insert(
                            client,
                            RelayMapping {
                                socket: socket.clone(),
                                gone,
                            },
                        );
                        Some(socket)
                    }
                    Err(_) => None,
                }
            }
        };
        let (Some(socket), Some(delay)) = (socket, state.pass()) else {
            continue;
        };
        let data = buf[..n].to_vec();
        let target = state.target;
        if delay.is_zero() {
            let _ = socket.send_to(&data, target).await;
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = socket.send_to(&data, target).await;
            });
        }
    }
}

/// Edge → client, through one mapping, until the mapping is gone.
async fn relay_back(
    state: Arc<RelayState>,
    socket: Arc<tokio::net::UdpSocket>,
    client: SocketAddr,
    gone: CancellationToken,
) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let received = tokio::select! {
            () = gone.cancelled() => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let Ok((n, from)) = received else { continue };
        if from != state.target {
            continue;
        }
        let Some(delay) = state.pass() else { continue };
        let data = buf[..n].to_vec();
        if delay.is_zero() {
            let _ = state.front.send_to(&data, client).await;
        } else {
            let state = state.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = state.front.send_to(&data, client).await;
            });
        }
    }
}

/// A running `doorless-edge demo` (everything in one process).
pub struct Demo {
    proc: Proc,
    dir: tempfile::TempDir,
    /// The demo's ready file (addresses, host, CA/cert/key paths, curl commands).
    pub ready: serde_json::Value,
}

impl Demo {
    /// Spawns `doorless-edge demo --port 0 --dir <tmp> --ready-file <tmp>` and waits for it.
    pub async fn start() -> Result<Self> {
        init();
        let dir = tempfile::Builder::new()
            .prefix("doorless-demo-")
            .tempdir()?;
        let ready_path = dir.path().join("ready.json");
        let mut cmd = Command::new(&binaries().edge);
        cmd.arg("demo")
            .arg("--port")
            .arg("0")
            .arg("--dir")
            .arg(dir.path().join("demo"))
            .arg("--ready-file")
            .arg(&ready_path);
        let mut proc = Proc::spawn("demo", dir.path(), &mut cmd, 1)?;
        let ready = wait_ready_file(&mut proc, &ready_path, READY_DEADLINE).await?;
        Ok(Self { proc, dir, ready })
    }

    /// A string field of the ready file.
    pub fn field(&self, key: &str) -> Result<String> {
        self.ready[key]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("demo ready file has no {key:?}: {}", self.ready))
    }

    /// An address field of the ready file.
    pub fn addr(&self, key: &str) -> Result<SocketAddr> {
        addr_field(&self.ready, key)
    }

    /// What the demo printed on stdout so far.
    pub fn stdout(&self) -> String {
        self.proc.stdout_text()
    }

    /// Tails of stdout and stderr.
    pub fn output(&self) -> String {
        self.proc.output()
    }

    /// The temp dir holding the demo's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A process started from a command line the test did not write itself (the README's), plus
/// `--ready-file`; killed on drop like every harness process.
pub struct Spawned {
    // Before `dir`, see `Edge`.
    proc: Proc,
    _dir: tempfile::TempDir,
    /// Its ready file.
    pub ready: serde_json::Value,
}

impl Spawned {
    /// Runs `program args... --ready-file <tmp>` with `env` and waits for the ready file.
    pub async fn start(
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<Self> {
        init();
        let dir = tempfile::Builder::new()
            .prefix("doorless-spawned-")
            .tempdir()?;
        let ready_path = dir.path().join("ready.json");
        let mut cmd = Command::new(program);
        cmd.args(args).arg("--ready-file").arg(&ready_path);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let mut proc = Proc::spawn(name, dir.path(), &mut cmd, 1)?;
        let ready = wait_ready_file(&mut proc, &ready_path, READY_DEADLINE).await?;
        Ok(Self {
            proc,
            _dir: dir,
            ready,
        })
    }

    /// An address field of the ready file.
    pub fn addr(&self, key: &str) -> Result<SocketAddr> {
        addr_field(&self.ready, key)
    }

    /// Tails of stdout and stderr.
    pub fn output(&self) -> String {
        self.proc.output()
    }
}

/// Runs a binary to completion with a deadline; returns (status, stdout, stderr). The child is
/// killed if it outlives the deadline.
pub async fn run_to_exit(
    program: &Path,
    args: &[&str],
    env: &[(&str, &str)],
    deadline: Duration,
) -> Result<(ExitStatus, String, String)> {
    let dir = tempfile::Builder::new().prefix("doorless-run-").tempdir()?;
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .env("NO_COLOR", "1");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("spawning {}", program.display()))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} {args:?} did not exit within {deadline:?}; stderr:\n{}",
                program.display(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    Ok((
        status,
        std::fs::read_to_string(&out_path).unwrap_or_default(),
        std::fs::read_to_string(&err_path).unwrap_or_default(),
    ))
}

// ---------------------------------------------------------------------------------------------
// stand-in Home Assistant

/// The stand-in HA, served in-process on 127.0.0.1:0.
pub struct StandIn {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it saw.
    pub recorder: Arc<Recorder>,
    shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StandIn {
    /// Binds 127.0.0.1:0 and serves.
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let recorder = Recorder::new();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(standin::serve(listener, recorder.clone(), shutdown.clone()));
        Ok(Self {
            addr,
            recorder,
            shutdown,
            task: Some(task),
        })
    }

    /// Total requests it received.
    pub fn requests(&self) -> u64 {
        self.recorder.requests()
    }

    /// The most recent request it saw.
    pub fn last_seen(&self) -> Option<SeenRequest> {
        self.recorder.seen().pop()
    }

    /// Shuts it down (listener closed, connections dropped) and waits until it is gone.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

// ---------------------------------------------------------------------------------------------
// clients

/// Options for an HTTPS client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpVersion {
    /// Let ALPN decide (the edge should pick h2).
    #[default]
    Auto,
    /// Offer only http/1.1.
    Http1,
}

/// A reqwest client that trusts only the state dir's server CA, presents `identity` (if any),
/// and resolves `host` to `https`.
pub fn client_builder(
    server_ca_pem: &[u8],
    host: &str,
    https: SocketAddr,
    identity: Option<&pki::Issued>,
) -> Result<reqwest::ClientBuilder> {
    init();
    let ca = reqwest::Certificate::from_pem(server_ca_pem)?;
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([ca])
        .resolve(host, https)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60));
    if let Some(issued) = identity {
        builder = builder.identity(identity_of(pem(&issued.cert_pem), pem(&issued.key_pem))?);
    }
    Ok(builder)
}

/// A reqwest identity from certificate and key PEM.
pub fn identity_of(cert_pem: &[u8], key_pem: &[u8]) -> Result<reqwest::Identity> {
    let mut buf = key_pem.to_vec();
    if !buf.ends_with(b"\n") {
        buf.push(b'\n');
    }
    buf.extend_from_slice(cert_pem);
    Ok(reqwest::Identity::from_pem(&buf)?)
}

/// A rustls client config trusting only the server CA, with an optional client identity.
pub fn tls_config(
    server_ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig> {
    init();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(server_ca_pem) {
        roots.add(cert?)?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem).collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(key_pem)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A TLS connection to the edge with SNI `host`.
pub async fn tls_connect(
    server_ca_pem: &[u8],
    host: &str,
    https: SocketAddr,
    identity: Option<&pki::Issued>,
    alpn: &[&[u8]],
) -> Result<TlsStream<TcpStream>> {
    let identity = identity.map(|i| (pem(&i.cert_pem), pem(&i.key_pem)));
    let config = tls_config(server_ca_pem, identity, alpn)?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(https).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.to_owned())?;
    let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .context("TLS handshake timed out")??;
    Ok(tls)
}

/// Sends raw bytes over TLS (ALPN http/1.1) and reads until the server closes (or 15 s pass).
/// For requests a normal client would rewrite (dot segments, odd Host headers).
pub async fn raw_http1(
    server_ca_pem: &[u8],
    host: &str,
    https: SocketAddr,
    identity: Option<&pki::Issued>,
    request: &[u8],
) -> Result<Vec<u8>> {
    let mut tls = tls_connect(server_ca_pem, host, https, identity, &[b"http/1.1"]).await?;
    tls.write_all(request).await?;
    tls.flush().await?;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), tls.read_to_end(&mut response)).await;
    match read {
        Ok(Ok(_)) => Ok(response),
        // A TLS close without close_notify is fine for a `Connection: close` exchange.
        Ok(Err(_)) if !response.is_empty() => Ok(response),
        Ok(Err(error)) => Err(error.into()),
        Err(_) if !response.is_empty() => Ok(response),
        Err(_) => bail!("no response within 15 s"),
    }
}

/// A parsed HTTP/1.1 response head.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Header lines, names lowercase, in order.
    pub headers: Vec<(String, String)>,
    /// Everything after the head.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Parses a response read by [`raw_http1`].
    pub fn parse(raw: &[u8]) -> Result<Self> {
        let end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| anyhow!("no end of head in {:?}", String::from_utf8_lossy(raw)))?;
        let head = std::str::from_utf8(&raw[..end])?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Ok(Self {
            status,
            headers,
            body: raw[end + 4..].to_vec(),
        })
    }

    /// First value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Whether `ws` is closed (end, error or a Close frame) within `deadline`; messages that
/// arrive before that are read and dropped.
pub async fn ws_closed_within<S>(ws: &mut WebSocketStream<S>, deadline: Duration) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    tokio::time::timeout(deadline, async {
        loop {
            match ws.next().await {
                None | Some(Err(_) | Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A client identity from PEM alone (what the CLI wrote), for [`client_builder`] and
/// [`ws_connect`]; the other fields are unused placeholders.
pub fn pem_identity(cert_pem: String, key_pem: String) -> pki::Issued {
    pki::Issued {
        cert_pem,
        key_pem,
        cert_der: Vec::new(),
        key_der: Vec::new(),
        serial: Vec::new(),
        not_after: time::OffsetDateTime::now_utc(),
        fingerprint: [0; 32],
    }
}

/// A WebSocket to `wss://host/api/websocket` over tokio-rustls (ALPN http/1.1, SNI = host).
pub async fn ws_connect(
    server_ca_pem: &[u8],
    host: &str,
    https: SocketAddr,
    identity: Option<&pki::Issued>,
) -> Result<WebSocketStream<TlsStream<TcpStream>>> {
    let tls = tls_connect(server_ca_pem, host, https, identity, &[b"http/1.1"]).await?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(standin::WS_MAX_MESSAGE))
        .max_frame_size(Some(standin::WS_MAX_MESSAGE));
    let url = format!("wss://{host}:{}/api/websocket", https.port());
    let (ws, response) = tokio::time::timeout(
        Duration::from_secs(15),
        tokio_tungstenite::client_async_with_config(url, tls, Some(config)),
    )
    .await
    .context("WebSocket handshake timed out")??;
    ensure!(
        response.status() == 101,
        "WebSocket handshake answered {}",
        response.status()
    );
    Ok(ws)
}

/// One HTTP/2 connection to the edge (ALPN `h2`, SNI = host), driven by hyper's HTTP/2 client
/// (the `h2` crate) on a background task: ordinary requests and RFC 8441 WebSockets
/// (extended CONNECT, `:protocol`) share it, as a browser's would.
/// Clones share the connection; it closes when the last one is dropped.
#[derive(Clone)]
pub struct H2Connection {
    send: hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    authority: String,
    _driver: Arc<AbortOnDrop>,
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A WebSocket carried on one stream of an [`H2Connection`].
pub type H2WebSocket = WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

impl H2Connection {
    /// Connects with `identity` (or none) and sends one `GET /status/204`, so the server's
    /// SETTINGS (with `SETTINGS_ENABLE_CONNECT_PROTOCOL`) are known before any CONNECT.
    pub async fn connect(
        server_ca_pem: &[u8],
        host: &str,
        https: SocketAddr,
        identity: Option<&pki::Issued>,
    ) -> Result<Self> {
        let tls = tls_connect(server_ca_pem, host, https, identity, &[b"h2"]).await?;
        let (send, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .handshake(hyper_util::rt::TokioIo::new(tls))
                .await?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut connection = Self {
            send,
            authority: format!("{host}:{}", https.port()),
            _driver: Arc::new(AbortOnDrop(driver)),
        };
        connection.get("/status/204").await?;
        Ok(connection)
    }

    /// Whether the connection still takes requests.
    pub fn is_open(&self) -> bool {
        !self.send.is_closed()
    }

    /// `GET path`: the status and the whole body (15 s).
    pub async fn get(&mut self, path: &str) -> Result<(u16, bytes::Bytes)> {
        use http_body_util::BodyExt as _;
        let request = http::Request::get(format!("https://{}{path}", self.authority))
            .body(http_body_util::Empty::new())?;
        tokio::time::timeout(Duration::from_secs(15), async {
            let response = self.send.send_request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok((status, body))
        })
        .await
        .context("no HTTP/2 response within 15 s")?
    }

    /// `GET path`: the response head only (15 s); its body is left for the caller, and while
    /// nobody reads it, flow control stops the server's sending on that stream.
    pub async fn head_only(&mut self, path: &str) -> Result<http::Response<hyper::body::Incoming>> {
        let request = http::Request::get(format!("https://{}{path}", self.authority))
            .body(http_body_util::Empty::new())?;
        tokio::time::timeout(Duration::from_secs(15), self.send.send_request(request))
            .await
            .context("no HTTP/2 response head within 15 s")?
            .map_err(Into::into)
    }

    /// An extended CONNECT for `path` with `:protocol` (none: a plain CONNECT to the
    /// authority) and `headers`; the answer as it came (a 200's stream is the tunnel).
    pub async fn extended_connect(
        &mut self,
        path: &str,
        protocol: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<http::Response<hyper::body::Incoming>> {
        let uri = match protocol {
            Some(_) => format!("https://{}{path}", self.authority),
            None => self.authority.clone(),
        };
        let mut builder = http::Request::builder()
            .method(http::Method::CONNECT)
            .version(http::Version::HTTP_2)
            .uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(protocol) = protocol {
            builder = builder.extension(hyper::ext::Protocol::from(protocol));
        }
        let request = builder.body(http_body_util::Empty::new())?;
        tokio::time::timeout(Duration::from_secs(15), self.send.send_request(request))
            .await
            .context("no answer to the CONNECT within 15 s")?
            .map_err(Into::into)
    }

    /// A WebSocket to `path` (RFC 8441: `:protocol = websocket`, `Sec-WebSocket-Version: 13`),
    /// or an error naming the status it was answered with.
    pub async fn websocket(&mut self, path: &str) -> Result<H2WebSocket> {
        let response = self
            .extended_connect(path, Some("websocket"), &[("sec-websocket-version", "13")])
            .await?;
        ensure!(
            response.status() == 200,
            "WebSocket over HTTP/2 answered {}",
            response.status()
        );
        let upgraded = hyper::upgrade::on(response).await?;
        let config = WebSocketConfig::default()
            .max_message_size(Some(standin::WS_MAX_MESSAGE))
            .max_frame_size(Some(standin::WS_MAX_MESSAGE));
        Ok(WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            Some(config),
        )
        .await)
    }
}

// ---------------------------------------------------------------------------------------------
// a whole stack

/// One site of a [`Stack`].
pub struct SiteFixture {
    /// Site name (`home`, `cabin`).
    pub name: String,
    /// Its public hostname.
    pub host: String,
    /// What `add_site` returned.
    pub site: pki::Site,
    /// A valid device certificate.
    pub device: pki::Issued,
    /// The connector's enrollment token (edges set to the edge's tunnel address).
    pub token: pki::EnrollmentToken,
    /// The site's stand-in Home Assistant.
    pub ha: StandIn,
}

/// Options for a [`Stack`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// 1 (`home`) or 2 (`home` and `cabin`).
    pub sites: usize,
    /// Start a connector for each site.
    pub connectors: bool,
    /// `connections` per connector.
    pub connections: u32,
    /// Edge options.
    pub edge: EdgeOptions,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            sites: 1,
            connectors: true,
            connections: 2,
            edge: EdgeOptions::default(),
        }
    }
}

impl StackOptions {
    /// The defaults, with `limits` as the edge's `[limits]` table body (TOML lines).
    pub fn with_limits(limits: impl Into<String>) -> Self {
        Self {
            edge: EdgeOptions {
                limits: Some(limits.into()),
                ..EdgeOptions::default()
            },
            ..Self::default()
        }
    }
}

/// Stand-in HA + edge + connectors for one or two sites, all on port 0.
pub struct Stack {
    // Field order is drop order: processes first, the state dir last.
    /// One connector per site (same order) when `connectors` was set.
    pub connectors: Vec<Connector>,
    /// The edge.
    pub edge: Edge,
    /// The sites, `home` first.
    pub sites: Vec<SiteFixture>,
    /// PEM of the server CA (what clients trust).
    pub server_ca: Vec<u8>,
    /// The PKI (state dir).
    pub pki: Pki,
}

impl Stack {
    /// One site, one connector (2 connections).
    pub async fn start() -> Result<Self> {
        Self::start_with(StackOptions::default()).await
    }

    /// Starts everything and waits until every connector is registered.
    pub async fn start_with(options: StackOptions) -> Result<Self> {
        init();
        let mut pki = Pki::new()?;
        let mut planned = Vec::new();
        for (name, host) in [("home", HOME_HOST), ("cabin", CABIN_HOST)]
            .into_iter()
            .take(options.sites.clamp(1, 2))
        {
            let site = pki.add_site(name, host)?;
            let device = pki.device(name, "phone")?;
            let token = pki.connector_token(name, "connector-1")?;
            planned.push((name, host, site, device, token));
        }
        let server_ca = pki.server_ca_pem()?;
        let edge = Edge::start_with(pki.root(), options.edge.clone()).await?;
        let mut sites = Vec::new();
        for (name, host, site, device, mut token) in planned {
            token.edges = vec![edge.tunnel_addr().to_string()];
            sites.push(SiteFixture {
                name: name.to_owned(),
                host: host.to_owned(),
                site,
                device,
                token,
                ha: StandIn::start().await?,
            });
        }
        let mut connectors = Vec::new();
        if options.connectors {
            // Spawn all first, then wait: the connectors start in parallel.
            for site in &sites {
                let mut config = ConnectorConfig::new(site.token.encode(), site.ha.addr);
                config.connections = options.connections;
                connectors.push(Connector::spawn(config)?);
            }
            for connector in &mut connectors {
                connector.wait_ready(READY_DEADLINE).await?;
            }
        }
        Ok(Self {
            pki,
            server_ca,
            sites,
            edge,
            connectors,
        })
    }

    /// The first site (`home`).
    pub fn home(&self) -> &SiteFixture {
        &self.sites[0]
    }

    /// Site by index.
    pub fn site(&self, i: usize) -> &SiteFixture {
        &self.sites[i]
    }

    /// `https://<home host>:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        self.url_for(0, path)
    }

    /// `https://<site host>:<port><path>`.
    pub fn url_for(&self, site: usize, path: &str) -> String {
        format!(
            "https://{}:{}{path}",
            self.sites[site].host,
            self.edge.https_addr().port()
        )
    }

    /// A client for site `site` presenting its device certificate.
    pub fn client(&self, site: usize, version: HttpVersion) -> Result<reqwest::Client> {
        let s = &self.sites[site];
        self.client_with(&s.host, Some(&s.device), version)
    }

    /// A client for `host` presenting `identity` (or none).
    pub fn client_with(
        &self,
        host: &str,
        identity: Option<&pki::Issued>,
        version: HttpVersion,
    ) -> Result<reqwest::Client> {
        let mut builder = client_builder(&self.server_ca, host, self.edge.https_addr(), identity)?;
        if version == HttpVersion::Http1 {
            builder = builder.http1_only();
        }
        Ok(builder.build()?)
    }

    /// A WebSocket to the site's `/api/websocket` with its device certificate.
    pub async fn ws(&self, site: usize) -> Result<WebSocketStream<TlsStream<TcpStream>>> {
        let s = &self.sites[site];
        ws_connect(
            &self.server_ca,
            &s.host,
            self.edge.https_addr(),
            Some(&s.device),
        )
        .await
    }

    /// An HTTP/2 connection to the site with its device certificate (see [`H2Connection`]).
    pub async fn h2(&self, site: usize) -> Result<H2Connection> {
        let s = &self.sites[site];
        H2Connection::connect(
            &self.server_ca,
            &s.host,
            self.edge.https_addr(),
            Some(&s.device),
        )
        .await
    }

    /// Raw HTTP/1.1 over TLS to the site's host with its device certificate.
    pub async fn raw(&self, site: usize, request: &[u8]) -> Result<RawResponse> {
        let s = &self.sites[site];
        let raw = raw_http1(
            &self.server_ca,
            &s.host,
            self.edge.https_addr(),
            Some(&s.device),
            request,
        )
        .await?;
        RawResponse::parse(&raw)
    }

    /// Sum of requests that reached any stand-in.
    pub fn ha_requests(&self) -> u64 {
        self.sites.iter().map(|s| s.ha.requests()).sum()
    }

    /// Requests per stand-in (for messages).
    pub fn ha_counts(&self) -> BTreeMap<String, u64> {
        self.sites
            .iter()
            .map(|s| (s.name.clone(), s.ha.requests()))
            .collect()
    }
}
