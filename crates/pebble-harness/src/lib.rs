//! A real ACME server for tests: Debian's `pebble` with a mock DNS (`pebble-challtestsrv`) that
//! resolves every name to 127.0.0.1. Used by `crates/acme`'s tests and the e2e suite; it never
//! talks to the internet and is never part of a shipped binary.
//!
//! Ports: pebble cannot report the ports it bound, so its listen, management and DNS ports are
//! picked here: bind port 0, read the port, release it, hand it to the process. Another process
//! could take the port in between; the window is a few milliseconds, and a start that fails
//! (the process exits before its ready line) is retried with new ports. Readiness is the
//! process's own ready line followed by a successful TCP connect, each under a deadline; no
//! sleeps. The processes are killed by PID (`kill_on_drop`) when the handle is dropped.
//!
//! What it is not: a TLS-ALPN-01 responder (the caller's TLS server answers pebble's
//! validation handshakes on `tlsPort`).
#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

/// Errors of the harness (test code: any error, boxed).
pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// How long any single wait may take before the harness gives up.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Most lines of process output kept (later lines are dropped, the count still grows).
const MAX_LOG_LINES: usize = 20_000;

/// What the pebble under test is configured with.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// `tlsPort`: where pebble connects for TLS-ALPN-01 (the test's responder).
    pub tls_port: u16,
    /// `certificateValidityPeriod` in seconds (pebble's default is 5 years).
    pub validity_secs: Option<u64>,
    /// EAB keys pebble requires (`externalAccountMACKeys`), if any.
    pub eab: Option<(String, String)>,
    /// Listen on this port instead of a fresh one (to bring a CA "back up" at the same URL).
    pub listen_port: Option<u16>,
    /// Reject no valid nonce. Pebble's default rejects 5% (`badNonce`), which the client must
    /// retry; tests that count requests in pebble's log turn it off, because pebble logs the
    /// rejected attempt too.
    pub exact_request_log: bool,
}

/// A running pebble + DNS pair.
pub struct Pebble {
    /// The port of the ACME API (`https://127.0.0.1:PORT/dir`).
    pub listen_port: u16,
    management_port: u16,
    /// The CA certificate of pebble's own HTTPS listener (the client's extra root).
    pub listener_ca_pem: String,
    pebble: Child,
    dns: Child,
    log: Log,
    _dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts pebble and its DNS with a new listener CA.
    pub async fn start(options: PebbleOptions) -> TestResult<Self> {
        Self::start_with_ca(options, ListenerCa::new()?).await
    }

    /// Starts pebble with a listener certificate from `ca` (made before, so that a client
    /// can be configured before the CA runs).
    pub async fn start_with_ca(options: PebbleOptions, ca: ListenerCa) -> TestResult<Self> {
        let mut last_error = None;
        for _ in 0..3 {
            match Self::try_start(&options, &ca).await {
                Ok(pebble) => return Ok(pebble),
                // A port taken between picking and binding: try again with new ones.
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| "pebble did not start".into()))
    }

    async fn try_start(options: &PebbleOptions, ca: &ListenerCa) -> TestResult<Self> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("cert.pem"), &ca.cert_pem)?;
        std::fs::write(dir.path().join("key.pem"), &ca.key_pem)?;

        let dns_port = free_port(true)?;
        let dns_management = free_port(false)?;
        let mut dns = Command::new("pebble-challtestsrv");
        dns.args([
            "-dns01",
            &format!("127.0.0.1:{dns_port}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{dns_management}"),
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ]);
        let (mut dns, dns_log) = spawn(dns)?;
        dns_log
            .wait_for(&mut dns, "Starting management server", DEADLINE)
            .await?;
        wait_connectable(dns_port).await?;

        let listen_port = match options.listen_port {
            Some(port) => port,
            None => free_port(false)?,
        };
        let management_port = free_port(false)?;
        let mut config = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{listen_port}"),
            "managementListenAddress": format!("127.0.0.1:{management_port}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            // Unused: only TLS-ALPN-01 is answered, and pebble-challtestsrv's HTTP-01 is off.
            "httpPort": free_port(false)?,
            "tlsPort": options.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": options.eab.is_some(),
        });
        if let Some(validity) = options.validity_secs {
            config["certificateValidityPeriod"] = validity.into();
        }
        if let Some((kid, key)) = &options.eab {
            config["externalAccountMACKeys"] = serde_json::json!({ kid: key });
        }
        let config_path = dir.path().join("pebble.json");
        std::fs::write(
            &config_path,
            serde_json::to_vec(&serde_json::json!({ "pebble": config }))?,
        )?;

        let mut pebble = Command::new("pebble");
        pebble
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            // No random 0-15 s validation delays.
            .env("PEBBLE_VA_NOSLEEP", "1");
        if options.exact_request_log {
            pebble.env("PEBBLE_WFE_NONCEREJECT", "0");
        }
        let (mut pebble, log) = spawn(pebble)?;
        log.wait_for(&mut pebble, "ACME directory available at", DEADLINE)
            .await?;
        wait_connectable(listen_port).await?;
        // Pebble prints its ready line before it binds its management listener, and exits
        // if that port was taken in the meantime (the pick-then-bind race above): only a
        // pebble whose management interface answers and which is still running has started.
        wait_connectable(management_port).await?;
        if let Ok(Some(status)) = pebble.try_wait() {
            return Err(format!("pebble exited at start: {status}").into());
        }
        Ok(Self {
            listen_port,
            management_port,
            listener_ca_pem: ca.ca_pem.clone(),
            pebble,
            dns,
            log,
            _dir: dir,
        })
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        directory_url(self.listen_port)
    }

    /// Pebble's issuing root (a new one per start), from its management interface.
    pub async fn root(&self) -> TestResult<CertificateDer<'static>> {
        Ok(CertificateDer::from_pem_slice(
            self.root_pem().await?.as_bytes(),
        )?)
    }

    /// [`Pebble::root`] as PEM, what a client is told to trust.
    pub async fn root_pem(&self) -> TestResult<String> {
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(
                self.listener_ca_pem.as_bytes(),
            )?])
            .timeout(DEADLINE)
            .build()?;
        let pem = client
            .get(format!(
                "https://127.0.0.1:{}/roots/0",
                self.management_port
            ))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(pem)
    }

    /// How many requests pebble logged whose line contains `needle` (e.g. `/order-plz`).
    pub fn requests(&self, needle: &str) -> usize {
        self.log.count(needle)
    }

    pub fn log_text(&self) -> String {
        self.log.text()
    }

    /// Kills both processes (by PID) and waits for them.
    pub async fn stop(mut self) -> TestResult {
        for child in [&mut self.pebble, &mut self.dns] {
            child.start_kill()?;
            timeout(DEADLINE, child.wait()).await??;
        }
        Ok(())
    }
}

pub fn directory_url(port: u16) -> String {
    format!("https://127.0.0.1:{port}/dir")
}

/// A CA and a leaf for 127.0.0.1/localhost signed by it: pebble's HTTPS listener.
pub struct ListenerCa {
    pub ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl ListenerCa {
    pub fn new() -> TestResult<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "acme tests: pebble listener CA");
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let mut leaf = CertificateParams::new(vec!["localhost".to_owned()])?;
        leaf.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse()?));
        let cert = leaf.signed_by(&key, &issuer)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A port that was free on 127.0.0.1 a moment ago (TCP, and UDP too when `udp`).
pub fn free_port(udp: bool) -> TestResult<u16> {
    for _ in 0..20 {
        let tcp = StdTcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if udp && UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        return Ok(port);
    }
    Err("no free port".into())
}

async fn wait_connectable(port: u16) -> TestResult {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + DEADLINE;
    loop {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("nothing listens on {addr}").into());
        }
        // Poll with a deadline: the ready line comes just before the listener is up.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Output lines of a child process, shared with the reader tasks.
#[derive(Clone)]
struct Log {
    lines: Arc<Mutex<(Vec<String>, usize)>>,
    changed: watch::Sender<usize>,
}

impl Log {
    fn push(&self, line: String) {
        let count = {
            let mut guard = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            if guard.0.len() < MAX_LOG_LINES {
                guard.0.push(line);
            }
            guard.1 += 1;
            guard.1
        };
        self.changed.send_replace(count);
    }

    fn count(&self, needle: &str) -> usize {
        let guard = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.iter().filter(|l| l.contains(needle)).count()
    }

    fn text(&self) -> String {
        let guard = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.join("\n")
    }

    /// Waits for a line containing `needle`; fails early if the process exits first.
    async fn wait_for(&self, child: &mut Child, needle: &str, limit: Duration) -> TestResult {
        let mut rx = self.changed.subscribe();
        let deadline = Instant::now() + limit;
        loop {
            if self.count(needle) > 0 {
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                return Err(
                    format!("exited ({status}) before {needle:?}:\n{}", self.text()).into(),
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no {needle:?} within {limit:?}:\n{}", self.text()).into());
            }
            // Woken by a new line; the short cap notices an exit that prints nothing.
            let _ = timeout(left.min(Duration::from_millis(200)), rx.changed()).await;
        }
    }
}

fn spawn(mut command: Command) -> TestResult<(Child, Log)> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let log = Log {
        lines: Arc::new(Mutex::new((Vec::new(), 0))),
        changed: watch::channel(0).0,
    };
    if let Some(out) = child.stdout.take() {
        tokio::spawn(read_lines(out, log.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(read_lines(err, log.clone()));
    }
    Ok((child, log))
}

async fn read_lines(stream: impl AsyncRead + Unpin, log: Log) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        log.push(line);
    }
}
