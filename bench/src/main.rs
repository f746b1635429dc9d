//! doorless benchmark driver: doorless vs nginx mTLS (one hop, and "classic"), rathole alone,
//! the nginx-mTLS + rathole composite, the backend directly, and raw loopback TCP (iperf3).
//!
//! Everything runs on 127.0.0.0/8. Every load loop is bounded in count AND time. Child
//! processes are killed by their own handle (never by name) when the driver ends.
//!
//! Normally started by `bench/run.sh`, which installs nginx/iperf3/oha/rathole and builds the
//! release binaries first. `doorless-bench --help` lists the options.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::either::Either;

/// Public hostname of the benchmark site (SNI and Host for every TLS target).
const HOST: &str = "ha.home.test";
/// Body of `GET /s`.
const SMALL: &[u8; 100] = b"doorless-bench small response, one hundred bytes long..........................................done\n";
/// One GiB.
const GIB: u64 = 1 << 30;
/// Chunk served by `/bytes/N` and sent by the upload client.
static ZEROS: [u8; 256 * 1024] = [0u8; 256 * 1024];

// =============================================================================================
// options

#[derive(Debug, Clone)]
struct Opts {
    runs: usize,
    secs: u64,
    concurrency: Vec<usize>,
    bulk_bytes: u64,
    idle_ws: usize,
    ws_msgs: usize,
    flood: usize,
    flood_secs: u64,
    only: Option<Vec<String>>,
    targets: Option<Vec<String>>,
    out: PathBuf,
    root: PathBuf,
    h2: bool,
}

impl Opts {
    fn parse() -> Result<Self> {
        let root = std::env::var_os("DOORLESS_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            });
        let mut o = Opts {
            runs: 3,
            secs: 5,
            concurrency: vec![1, 32, 64, 256],
            bulk_bytes: GIB,
            idle_ws: 10_000,
            ws_msgs: 1000,
            flood: 2000,
            flood_secs: 10,
            only: None,
            targets: None,
            out: root.join("bench/results"),
            root,
            h2: true,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut val = || args.next().ok_or_else(|| anyhow!("{a} needs a value"));
            match a.as_str() {
                "--runs" => o.runs = val()?.parse()?,
                "--secs" => o.secs = val()?.parse()?,
                "--concurrency" => {
                    o.concurrency = val()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?
                }
                "--bulk-mib" => o.bulk_bytes = val()?.parse::<u64>()? << 20,
                "--idle-ws" => o.idle_ws = val()?.parse()?,
                "--ws-msgs" => o.ws_msgs = val()?.parse()?,
                "--flood" => o.flood = val()?.parse()?,
                "--only" => o.only = Some(val()?.split(',').map(str::to_owned).collect()),
                "--out" => o.out = PathBuf::from(val()?),
                "--targets" => o.targets = Some(val()?.split(',').map(str::to_owned).collect()),
                "--no-h2" => o.h2 = false,
                "--quick" => {
                    o.runs = 1;
                    o.secs = 2;
                    o.concurrency = vec![1, 64];
                    o.bulk_bytes = 256 << 20;
                    o.idle_ws = 1000;
                    o.ws_msgs = 300;
                    o.flood = 400;
                    o.flood_secs = 4;
                }
                "-h" | "--help" => {
                    println!(
                        "doorless-bench [--runs N=3] [--secs S=5] [--concurrency 1,32,64,256] \
                         [--bulk-mib 1024] [--idle-ws 10000] [--ws-msgs 1000] [--flood 2000] \
                         [--only get,bulk,handshake,ws,idle,flood,iperf] \
                         [--targets direct,doorless,nginx,nginx_classic,rathole,composite] [--no-h2] [--quick] \
                         [--out DIR]\n  env: DOORLESS_ROOT (repo root), BENCH_OHA, BENCH_RATHOLE, \
                         BENCH_NGINX, BENCH_IPERF3"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        Ok(o)
    }

    fn wants(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|l| l.iter().any(|p| p == part))
    }
}

// =============================================================================================
// the backend (a separate process: `doorless-bench backend READY_FILE`)

type Body = BoxBody<Bytes, Infallible>;

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

async fn backend_main(ready: PathBuf) -> Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    std::fs::write(&ready, json!({ "addr": addr.to_string() }).to_string())?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(backend_handle);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn backend_handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let resp = if path == "/s" {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(full(Bytes::from_static(SMALL)))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0).min(16 * GIB);
        let chunks = futures_util::stream::unfold(n, |left| async move {
            if left == 0 {
                return None;
            }
            let take = left.min(ZEROS.len() as u64) as usize;
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(&ZEROS[..take]))),
                left - take as u64,
            ))
        });
        Response::builder()
            .header(header::CONTENT_LENGTH, n)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(http_body_util::BodyExt::boxed(StreamBody::new(chunks)))
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => break,
            }
        }
        Response::builder().body(full(total.to_string()))
    } else if path == "/ws" {
        let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
        match key {
            Some(key) => {
                let accept = derive_accept_key(key.as_bytes());
                tokio::spawn(async move {
                    if let Ok(upgraded) = hyper::upgrade::on(req).await {
                        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                            TokioIo::new(upgraded),
                            Role::Server,
                            None,
                        )
                        .await;
                        let (mut tx, mut rx) = ws.split();
                        while let Some(Ok(msg)) = rx.next().await {
                            if msg.is_text() || msg.is_binary() {
                                if tx.send(msg).await.is_err() {
                                    break;
                                }
                            } else if msg.is_close() {
                                break;
                            }
                        }
                    }
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(header::CONNECTION, "upgrade")
                    .header(header::UPGRADE, "websocket")
                    .header(header::SEC_WEBSOCKET_ACCEPT, accept)
                    .body(full(Bytes::new()))
            }
            None => Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(full(Bytes::new())),
        }
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full(Bytes::new()))
    };
    Ok(resp.unwrap_or_else(|_| Response::new(full(Bytes::new()))))
}

// =============================================================================================
// processes

/// A child process, killed (by its handle, SIGKILL) and reaped on drop.
struct Proc {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, dir: &Path, cmd: &mut Command) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env("NO_COLOR", "1");
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name} ({cmd:?})"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn wait_json_file(proc: &mut Proc, path: &Path, deadline: Duration) -> Result<Value> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(v @ Value::Object(_)) = serde_json::from_str(&text)
        {
            return Ok(v);
        }
        proc.check_alive()?;
        ensure!(
            start.elapsed() < deadline,
            "{} wrote no ready file in {deadline:?}",
            proc.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn addr_of(v: &Value, key: &str) -> Result<SocketAddr> {
    v[key]
        .as_str()
        .ok_or_else(|| anyhow!("no {key} in {v}"))?
        .parse()
        .with_context(|| format!("{key} in {v}"))
}

/// A free loopback TCP port (bind :0, read, release). For programs that cannot bind port 0
/// and report it (nginx, rathole, iperf3).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Direct children of `pid` (e.g. nginx workers of a master).
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let kids = children(out[i]);
        out.extend(kids);
        i += 1;
    }
    out
}

fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of one process (all its threads), in seconds.
fn cpu_secs(pid: u32, tck: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the ")" of comm: state is field 3; utime 14, stime 15 (1-based).
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get(14) + get(15)) / tck
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

// =============================================================================================
// targets

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Direct,
    Doorless,
    Nginx,
    NginxClassic,
    Rathole,
    Composite,
    /// The composite with rathole's Noise transport: the tunnel hop encrypted, as doorless's
    /// always is (plain rathole sends the tunnel in clear text).
    CompositeNoise,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Direct,
        Kind::Doorless,
        Kind::Nginx,
        Kind::NginxClassic,
        Kind::Rathole,
        Kind::Composite,
        Kind::CompositeNoise,
    ];
    fn id(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Doorless => "doorless",
            Kind::Nginx => "nginx",
            Kind::NginxClassic => "nginx_classic",
            Kind::Rathole => "rathole",
            Kind::Composite => "composite",
            Kind::CompositeNoise => "composite_noise",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Doorless => "doorless",
            Kind::Nginx => "nginx mTLS 1-hop",
            Kind::NginxClassic => "nginx classic",
            Kind::Rathole => "rathole",
            Kind::Composite => "nginx+rathole",
            Kind::CompositeNoise => "nginx+rathole (noise)",
        }
    }
}

/// A running target: where a client connects and which processes are "the proxy".
struct Target {
    kind: Kind,
    addr: SocketAddr,
    tls: bool,
    /// Process roots whose trees count as the proxy (CPU, RSS).
    roots: Vec<u32>,
}

impl Target {
    fn pids(&self) -> Vec<u32> {
        self.roots.iter().flat_map(|&p| tree(p)).collect()
    }
    fn cpu(&self, tck: f64) -> f64 {
        self.pids().iter().map(|&p| cpu_secs(p, tck)).sum()
    }
    fn rss_kib(&self) -> u64 {
        self.pids().iter().map(|&p| rss_kib(p)).sum()
    }
    fn url(&self, path: &str) -> String {
        if self.tls {
            format!("https://{HOST}:{}{path}", self.addr.port())
        } else {
            format!("http://{}{path}", self.addr)
        }
    }
}

/// Everything the clients need to authenticate.
struct Pki {
    _dir: tempfile::TempDir,
    state_root: PathBuf,
    state: pki::StateDir,
    server_ca: PathBuf,
    client_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    device_cert: PathBuf,
    device_key: PathBuf,
    /// mTLS client config (ALPN http/1.1), resumption on (rustls default).
    tls: Arc<rustls::ClientConfig>,
    /// Same, resumption disabled (every connection a full handshake).
    tls_full: Arc<rustls::ClientConfig>,
    /// Same, resumption disabled, X25519 only (no post-quantum hybrid key share).
    tls_full_x25519: Arc<rustls::ClientConfig>,
    /// No client certificate (the flood).
    tls_anon: Arc<rustls::ClientConfig>,
}

fn client_config(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
    resumption: bool,
    x25519_only: bool,
) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    if x25519_only {
        provider.kx_groups = vec![rustls::crypto::aws_lc_rs::kx_group::X25519];
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert).collect::<Result<Vec<_>, _>>()?;
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(key)?)?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resumption {
        config.resumption = rustls::client::Resumption::disabled();
    }
    Ok(config)
}

fn make_pki() -> Result<Pki> {
    let dir = tempfile::Builder::new()
        .prefix("doorless-bench-pki-")
        .tempdir()?;
    let root = dir.path().join("state");
    let state = pki::StateDir::init(&root, &pki::InitOptions { edge_addr: None })?;
    let site = state.add_site("home", &[HOST.to_owned()])?;
    let device = state.add_client(
        "home",
        "bench",
        pki::Validity::days(30),
        pki::KeyType::EcdsaP256,
    )?;
    let device_cert = dir.path().join("device.crt");
    let device_key = dir.path().join("device.key");
    std::fs::write(&device_cert, &device.cert_pem)?;
    std::fs::write(&device_key, &device.key_pem)?;
    let server_ca = state.server_ca_path();
    let ca_pem = std::fs::read(&server_ca)?;
    let id = Some((device.cert_pem.as_bytes(), device.key_pem.as_bytes()));
    Ok(Pki {
        tls: Arc::new(client_config(&ca_pem, id, true, false)?),
        tls_full: Arc::new(client_config(&ca_pem, id, false, false)?),
        tls_full_x25519: Arc::new(client_config(&ca_pem, id, false, true)?),
        tls_anon: Arc::new(client_config(&ca_pem, None, false, false)?),
        state_root: root,
        state,
        server_ca,
        client_ca: site.client_ca_path.clone(),
        server_cert: site.server_cert_path.clone(),
        server_key: site.server_key_path.clone(),
        device_cert,
        device_key,
        _dir: dir,
    })
}

/// Paths of the external programs.
struct Tools {
    edge: PathBuf,
    connector: PathBuf,
    oha: PathBuf,
    rathole: PathBuf,
    nginx: PathBuf,
    iperf3: PathBuf,
}

fn which(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let home_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin").join(name));
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .chain(home_bin)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

impl Tools {
    fn find(root: &Path) -> Result<Self> {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .map(|t| if t.is_absolute() { t } else { root.join(t) })
            .unwrap_or_else(|| root.join("target"));
        let t = Tools {
            edge: target.join("release/doorless-edge"),
            connector: target.join("release/doorless-connector"),
            oha: which("BENCH_OHA", "oha"),
            rathole: which("BENCH_RATHOLE", "rathole"),
            nginx: which("BENCH_NGINX", "nginx"),
            iperf3: which("BENCH_IPERF3", "iperf3"),
        };
        for p in [&t.edge, &t.connector] {
            ensure!(
                p.is_file(),
                "{} missing: run `cargo build --release -j2 -p edge -p connector` at the repo \
                 root first (bench/run.sh does)",
                p.display()
            );
        }
        if !t.rathole.is_file() {
            eprintln!(
                "  WARNING: rathole not found ({}): the rathole and nginx+rathole targets are \
                 skipped; bench/run.sh installs it",
                t.rathole.display()
            );
        }
        for p in [&t.oha, &t.nginx, &t.iperf3] {
            ensure!(
                p.is_file(),
                "{} not found: bench/run.sh installs it",
                p.display()
            );
        }
        Ok(t)
    }
}

/// All processes of the benchmark; dropping it kills them.
struct Fleet {
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
    backend: SocketAddr,
}

impl Fleet {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<usize> {
        let p = Proc::spawn(name, self.dir.path(), cmd)?;
        self.procs.push(p);
        Ok(self.procs.len() - 1)
    }

    async fn start_backend() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("doorless-bench-")
            .tempdir()?;
        let ready = dir.path().join("backend.ready");
        let mut proc = Proc::spawn(
            "backend",
            dir.path(),
            Command::new(std::env::current_exe()?)
                .arg("backend")
                .arg(&ready),
        )?;
        let v = wait_json_file(&mut proc, &ready, Duration::from_secs(10)).await?;
        let backend = addr_of(&v, "addr")?;
        Ok(Self {
            dir,
            procs: vec![proc],
            backend,
        })
    }

    /// Edge + connector. `bench_limits`: generous limits for load; else the defaults.
    async fn doorless(
        &mut self,
        tools: &Tools,
        pki: &Pki,
        name: &str,
        bench_limits: bool,
        access_log: bool,
    ) -> Result<Target> {
        let limits = if bench_limits {
            "\n[limits]\nmax_connections = 60000\nmax_connections_per_ip = 60000\n\
             max_concurrent_handshakes = 4096\nhandshake_rate_per_ip = 1000000.0\n\
             handshake_burst_per_ip = 1000000\nmax_streams_per_connector = 16384\n"
        } else {
            ""
        };
        let edge_toml = format!(
            "state_dir = {state:?}\n\n[listen]\nhttps = \"127.0.0.1:0\"\ntunnel = \"127.0.0.1:0\"\n\
             admin = \"127.0.0.1:0\"\n{limits}\n[log]\nfilter = \"{filter}\"\n",
            state = pki.state_root.to_string_lossy(),
            filter = if access_log {
                "info"
            } else {
                "info,access=off"
            },
        );
        let edge_conf = self.path(&format!("{name}-edge.toml"));
        let edge_ready = self.path(&format!("{name}-edge.ready"));
        std::fs::write(&edge_conf, &edge_toml)?;
        let i = self.spawn(
            &format!("{name}-edge"),
            Command::new(&tools.edge)
                .arg("run")
                .arg("--config")
                .arg(&edge_conf)
                .arg("--ready-file")
                .arg(&edge_ready),
        )?;
        let v = wait_json_file(&mut self.procs[i], &edge_ready, Duration::from_secs(20)).await?;
        let https = addr_of(&v, "https")?;
        let tunnel = addr_of(&v, "tunnel")?;
        let admin = addr_of(&v, "admin")?;
        let edge_pid = self.procs[i].pid();

        let token = pki.state.issue_connector("home", Some(name))?;
        let conn_limits = if bench_limits {
            "\n[limits]\nmax_streams = 16384\npool_max_idle = 256\n"
        } else {
            ""
        };
        let conn_toml = format!(
            "token = {token:?}\nupstream = \"http://{backend}\"\nedges = [\"{tunnel}\"]\n\
             connections = 2\n\n[listen]\nadmin = \"127.0.0.1:0\"\n{conn_limits}\n[log]\n\
             filter = \"warn\"\n",
            token = token.encode(),
            backend = self.backend,
        );
        let conn_conf = self.path(&format!("{name}-connector.toml"));
        let conn_ready = self.path(&format!("{name}-connector.ready"));
        std::fs::write(&conn_conf, &conn_toml)?;
        let j = self.spawn(
            &format!("{name}-connector"),
            Command::new(&tools.connector)
                .arg("run")
                .arg("--config")
                .arg(&conn_conf)
                .arg("--ready-file")
                .arg(&conn_ready),
        )?;
        wait_json_file(&mut self.procs[j], &conn_ready, Duration::from_secs(20)).await?;
        let conn_pid = self.procs[j].pid();
        // Both QUIC connections registered.
        let start = Instant::now();
        loop {
            let status = admin_status(admin).await.unwrap_or(Value::Null);
            let n: u64 = status["sites"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["connectors"].as_array().cloned().unwrap_or_default())
                .map(|c| c["connections"].as_u64().unwrap_or(1))
                .sum();
            if n >= 2 {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                eprintln!("  note: {name}: only {n} tunnel connection(s) after 10 s: {status}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let t = Target {
            kind: Kind::Doorless,
            addr: https,
            tls: true,
            roots: vec![edge_pid, conn_pid],
        };
        wait_get_ok(&t, pki).await?;
        Ok(t)
    }

    /// nginx with `ssl_verify_client on`, `worker_processes 1`, proxying to `upstream`.
    async fn nginx(
        &mut self,
        tools: &Tools,
        pki: &Pki,
        name: &str,
        upstream: SocketAddr,
        keepalive: bool,
    ) -> Result<(Target, usize)> {
        let dir = self.path(name);
        std::fs::create_dir_all(dir.join("logs"))?;
        let port = free_port()?;
        let root_user = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
        let (pool, conn_default) = if keepalive {
            (
                "    keepalive 512;\n    keepalive_requests 1000000;\n    keepalive_timeout 60s;\n",
                "\"\"",
            )
        } else {
            ("", "close")
        };
        let conf = format!(
            r#"# generated by doorless-bench
{user}worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_max_body_size 0;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' {conn_default}; }}
  upstream backend {{
    server {upstream};
{pool}  }}
  server {{
    listen 127.0.0.1:{port} ssl http2;
    server_name _;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_client_certificate {client_ca};
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_buffer_size 64k;
      proxy_buffers 8 64k;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
{extra}    }}
  }}
}}
"#,
            user = if root_user { "user root;\n" } else { "" },
            extra = std::env::var("BENCH_NGINX_EXTRA")
                .map(|e| format!("      {e}\n"))
                .unwrap_or_default(),
            dir = dir.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
            client_ca = pki.client_ca.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let i = self.spawn(
            name,
            Command::new(&tools.nginx)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("logs/error.log"))
                .arg("-c")
                .arg(&conf_path),
        )?;
        let t = Target {
            kind: Kind::Nginx,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tls: true,
            roots: vec![self.procs[i].pid()],
        };
        let start = Instant::now();
        while TcpStream::connect(t.addr).await.is_err() {
            self.procs[i].check_alive()?;
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "{name} did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((t, i))
    }

    /// rathole server + client (TCP transport) exposing the backend; returns the service
    /// address and the two pids.
    async fn rathole(
        &mut self,
        tools: &Tools,
        name: &str,
        noise: bool,
    ) -> Result<(SocketAddr, Vec<u32>)> {
        let control = free_port()?;
        let service = free_port()?;
        let (server_transport, client_transport) = if noise {
            // `rathole --genkey`: "Private Key:\n<b64>\n\nPublic Key:\n<b64>".
            let out = Command::new(&tools.rathole).arg("--genkey").output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let keys: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.ends_with(':'))
                .collect();
            let [private, public] = keys[..] else {
                bail!("rathole --genkey printed {text:?}");
            };
            (
                format!(
                    "[server.transport]\ntype = \"noise\"\n[server.transport.noise]\n\
                     local_private_key = \"{private}\"\n"
                ),
                format!(
                    "[client.transport]\ntype = \"noise\"\n[client.transport.noise]\n\
                     remote_public_key = \"{public}\"\n"
                ),
            )
        } else {
            (String::new(), String::new())
        };
        let server = format!(
            "[server]\nbind_addr = \"127.0.0.1:{control}\"\ndefault_token = \"doorless-bench\"\n\
             [server.services.ha]\nbind_addr = \"127.0.0.1:{service}\"\n{server_transport}"
        );
        let client = format!(
            "[client]\nremote_addr = \"127.0.0.1:{control}\"\ndefault_token = \"doorless-bench\"\n\
             [client.services.ha]\nlocal_addr = \"{}\"\n{client_transport}",
            self.backend
        );
        let sp = self.path(&format!("{name}-server.toml"));
        let cp = self.path(&format!("{name}-client.toml"));
        std::fs::write(&sp, server)?;
        std::fs::write(&cp, client)?;
        let s = self.spawn(
            &format!("{name}-server"),
            Command::new(&tools.rathole).arg("--server").arg(&sp),
        )?;
        let s_pid = self.procs[s].pid();
        // Let the server bind before the client dials (the client retries anyway).
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", control)).await.is_err() {
            self.procs[s].check_alive()?;
            ensure!(start.elapsed() < Duration::from_secs(10), "rathole server");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = self.spawn(
            &format!("{name}-client"),
            Command::new(&tools.rathole).arg("--client").arg(&cp),
        )?;
        let c_pid = self.procs[c].pid();
        let addr = SocketAddr::from(([127, 0, 0, 1], service));
        // Ready when a request goes through.
        let probe = Target {
            kind: Kind::Rathole,
            addr,
            tls: false,
            roots: vec![],
        };
        let start = Instant::now();
        loop {
            if let Ok(Ok(200)) =
                tokio::time::timeout(Duration::from_secs(2), get_status(&probe, None, "/s")).await
            {
                break;
            }
            self.procs[s].check_alive()?;
            self.procs[c].check_alive()?;
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "rathole {name} never forwarded a request"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((addr, vec![s_pid, c_pid]))
    }
}

async fn admin_status(admin: SocketAddr) -> Result<Value> {
    let mut s = TcpStream::connect(admin).await?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // The body may be chunked; take the JSON object inside.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    Ok(serde_json::from_str(&body[start..end])?)
}

async fn wait_get_ok(t: &Target, pki: &Pki) -> Result<()> {
    let start = Instant::now();
    loop {
        let r =
            tokio::time::timeout(Duration::from_secs(3), get_status(t, Some(&pki.tls), "/s")).await;
        match r {
            Ok(Ok(200)) => return Ok(()),
            other => {
                if start.elapsed() > Duration::from_secs(15) {
                    bail!("{}: GET /s never answered 200: {other:?}", t.kind.title());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// =============================================================================================
// clients

type Io = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

async fn connect_from(
    t: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
    source: Option<IpAddr>,
) -> Result<Io> {
    let tcp = match source {
        Some(ip) => {
            let sock = TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(t.addr).await?
        }
        None => TcpStream::connect(t.addr).await?,
    };
    tcp.set_nodelay(true)?;
    if !t.tls {
        return Ok(Either::Left(tcp));
    }
    let config = tls.ok_or_else(|| anyhow!("TLS target needs a client config"))?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = ServerName::try_from(HOST)?;
    Ok(Either::Right(connector.connect(name, tcp).await?))
}

async fn connect(t: &Target, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Io> {
    connect_from(t, tls, None).await
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns the status.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Result<u16> {
    buf.clear();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("bad status line"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut tmp).await?;
                ensure!(n > 0, "EOF in body");
                buf.extend_from_slice(&tmp[..n]);
            }
            return Ok(status);
        }
        let n = s.read(&mut tmp).await?;
        ensure!(n > 0, "EOF before response head");
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn get_request(path: &str, close: bool) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// One GET on a new connection.
async fn get_status(
    t: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
    path: &str,
) -> Result<u16> {
    let mut s = connect(t, tls).await?;
    s.write_all(&get_request(path, true)).await?;
    s.flush().await?;
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf).await
}

// =============================================================================================
// results

#[derive(Debug, Clone)]
struct Metric {
    id: String,
    label: String,
    unit: String,
    higher_better: bool,
    values: BTreeMap<Kind, Vec<f64>>,
}

#[derive(Default)]
struct Results {
    metrics: Vec<Metric>,
    notes: Vec<String>,
    extra: serde_json::Map<String, Value>,
}

impl Results {
    fn add(&mut self, id: &str, label: &str, unit: &str, higher_better: bool, k: Kind, v: f64) {
        if !v.is_finite() {
            return;
        }
        let i = match self.metrics.iter().position(|m| m.id == id) {
            Some(i) => i,
            None => {
                self.metrics.push(Metric {
                    id: id.to_owned(),
                    label: label.to_owned(),
                    unit: unit.to_owned(),
                    higher_better,
                    values: BTreeMap::new(),
                });
                self.metrics.len() - 1
            }
        };
        self.metrics[i].values.entry(k).or_default().push(v);
    }

    fn median(&self, id: &str, k: Kind) -> Option<f64> {
        self.metrics
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.values.get(&k))
            .map(|v| median(v))
    }

    fn note(&mut self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("  note: {s}");
        self.notes.push(s);
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "—".into()
    } else if v.abs() >= 1000.0 {
        let s = format!("{v:.0}");
        // thousands separators
        let bytes = s.as_bytes();
        let mut out = String::new();
        for (i, c) in bytes.iter().enumerate() {
            if i > 0 && (bytes.len() - i) % 3 == 0 && *c != b'-' {
                out.push(',');
            }
            out.push(*c as char);
        }
        out
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

// =============================================================================================
// scenario 1: small GET with oha

async fn oha(
    tools: &Tools,
    pki: &Pki,
    t: &Target,
    conc: usize,
    h2: bool,
    secs: u64,
) -> Result<(f64, f64, f64, f64)> {
    let mut cmd = tokio::process::Command::new(&tools.oha);
    cmd.arg("--no-tui")
        .arg("--output-format")
        .arg("json")
        .arg("-z")
        .arg(format!("{secs}s"));
    if h2 {
        // Browser-like: few connections, many streams each (≤ 32 per connection, below both
        // nginx's and doorless's 128-stream limit).
        let per = conc.min(32);
        let conns = conc.div_ceil(per);
        cmd.arg("--http2")
            .arg("-c")
            .arg(conns.to_string())
            .arg("-p")
            .arg(per.to_string());
    } else {
        cmd.arg("-c").arg(conc.to_string());
    }
    if t.tls {
        cmd.arg("--cacert")
            .arg(&pki.server_ca)
            .arg("--cert")
            .arg(&pki.device_cert)
            .arg("--key")
            .arg(&pki.device_key)
            .arg("--connect-to")
            .arg(format!(
                "{HOST}:{}:127.0.0.1:{}",
                t.addr.port(),
                t.addr.port()
            ));
    }
    cmd.arg(t.url("/s"));
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(secs + 30), cmd.output())
        .await
        .context("oha did not finish in time")??;
    ensure!(
        out.status.success(),
        "oha failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "oha output: {}",
            String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(500)])
        )
    })?;
    let rps = v["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN);
    let p50 = v["latencyPercentiles"]["p50"].as_f64().unwrap_or(f64::NAN) * 1e3;
    let p99 = v["latencyPercentiles"]["p99"].as_f64().unwrap_or(f64::NAN) * 1e3;
    let ok = v["statusCodeDistribution"]["200"].as_f64().unwrap_or(0.0);
    let total: f64 = v["statusCodeDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_f64).sum())
        .unwrap_or(0.0);
    let errors: f64 = v["errorDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_f64).sum())
        .unwrap_or(0.0);
    let bad = (total - ok) + errors;
    // Errors at the deadline (requests cut off) are normal for oha -z; report them.
    let success = v["summary"]["successRate"].as_f64().unwrap_or(f64::NAN);
    let _ = success;
    Ok((rps * ok / total.max(1.0), p50, p99, bad))
}

// =============================================================================================
// scenario 2: one-connection bulk download and upload

async fn h1_client(
    t: &Target,
    pki: &Pki,
) -> Result<hyper::client::conn::http1::SendRequest<BoxBody<Bytes, Infallible>>> {
    let io = connect(t, Some(&pki.tls)).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// Returns (MB/s, proxy CPU-seconds per GiB).
async fn download(t: &Target, pki: &Pki, bytes: u64, tck: f64) -> Result<(f64, f64)> {
    let mut send = h1_client(t, pki).await?;
    let req = Request::get(format!("/bytes/{bytes}"))
        .header(header::HOST, HOST)
        .body(full(Bytes::new()))?;
    let cpu0 = t.cpu(tck);
    let start = Instant::now();
    let resp = send.send_request(req).await?;
    ensure!(resp.status() == 200, "download: {}", resp.status());
    let mut body = resp.into_body();
    let mut got = 0u64;
    let deadline = start + Duration::from_secs(180);
    while let Some(frame) = tokio::time::timeout_at(deadline.into(), body.frame())
        .await
        .context("download took over 180 s")?
    {
        got += frame?.data_ref().map_or(0, |d| d.len() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = t.cpu(tck) - cpu0;
    ensure!(got == bytes, "download got {got} of {bytes} bytes");
    Ok((bytes as f64 / secs / 1e6, cpu * GIB as f64 / bytes as f64))
}

async fn upload(t: &Target, pki: &Pki, bytes: u64, tck: f64) -> Result<(f64, f64)> {
    let mut send = h1_client(t, pki).await?;
    let chunks = futures_util::stream::unfold(bytes, |left| async move {
        if left == 0 {
            return None;
        }
        let take = left.min(ZEROS.len() as u64) as usize;
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(&ZEROS[..take]))),
            left - take as u64,
        ))
    });
    let req = Request::post("/upload")
        .header(header::HOST, HOST)
        .header(header::CONTENT_LENGTH, bytes)
        .body(http_body_util::BodyExt::boxed(StreamBody::new(chunks)))?;
    let cpu0 = t.cpu(tck);
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(180), send.send_request(req))
        .await
        .context("upload took over 180 s")??;
    ensure!(resp.status() == 200, "upload: {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    let secs = start.elapsed().as_secs_f64();
    let cpu = t.cpu(tck) - cpu0;
    let n: u64 = String::from_utf8_lossy(&body).trim().parse().unwrap_or(0);
    ensure!(n == bytes, "upload: backend counted {n} of {bytes}");
    Ok((bytes as f64 / secs / 1e6, cpu * GIB as f64 / bytes as f64))
}

// =============================================================================================
// scenario 3: full mTLS handshakes per second (a request each, no resumption)

async fn handshakes(
    t: &Target,
    config: &Arc<rustls::ClientConfig>,
    secs: u64,
    tasks: usize,
) -> Result<(f64, u64)> {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let max_per_task = 200_000 / tasks as u64;
    let mut set = tokio::task::JoinSet::new();
    let target = Arc::new(Target {
        kind: t.kind,
        addr: t.addr,
        tls: t.tls,
        roots: vec![],
    });
    for _ in 0..tasks {
        let (ok, failed, config, target) =
            (ok.clone(), failed.clone(), config.clone(), target.clone());
        set.spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            for _ in 0..max_per_task {
                if Instant::now() >= deadline {
                    break;
                }
                let r = tokio::time::timeout(Duration::from_secs(10), async {
                    let mut s = connect(&target, Some(&config)).await?;
                    s.write_all(&get_request("/s", true)).await?;
                    read_response(&mut s, &mut buf).await
                })
                .await;
                match r {
                    Ok(Ok(200)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while set.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    Ok((
        ok.load(Ordering::Relaxed) as f64 / secs,
        failed.load(Ordering::Relaxed),
    ))
}

// =============================================================================================
// scenario 4: WebSocket echo RTT and idle WebSockets

type Ws = tokio_tungstenite::WebSocketStream<Io>;

async fn ws_open(t: &Target, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Ws> {
    let io = connect(t, tls).await?;
    let url = format!(
        "{}://{HOST}:{}/ws",
        if t.tls { "wss" } else { "ws" },
        t.addr.port()
    );
    let (ws, resp) = tokio_tungstenite::client_async(url, io).await?;
    ensure!(resp.status() == 101, "WebSocket: {}", resp.status());
    Ok(ws)
}

async fn ws_rtt(t: &Target, pki: &Pki, msgs: usize) -> Result<(f64, f64)> {
    let mut ws = ws_open(t, Some(&pki.tls)).await?;
    let payload = "x".repeat(32);
    let mut rtts = Vec::with_capacity(msgs);
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..(msgs + 50) {
        ensure!(Instant::now() < deadline, "WebSocket RTT run over 60 s");
        let start = Instant::now();
        ws.send(Message::text(payload.clone())).await?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await?
                .ok_or_else(|| anyhow!("WebSocket closed"))??;
            if m.is_text() {
                break;
            }
        }
        if i >= 50 {
            rtts.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = ws.close(None).await;
    rtts.sort_by(f64::total_cmp);
    Ok((percentile(&rtts, 50.0), percentile(&rtts, 99.0)))
}

/// Opens `n` idle WebSockets; returns (opened, RSS KiB per WebSocket of the proxy processes).
async fn ws_idle(t: &Target, pki: &Pki, n: usize) -> Result<(usize, f64)> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = t.rss_kib();
    let target = Arc::new(Target {
        kind: t.kind,
        addr: t.addr,
        tls: t.tls,
        roots: vec![],
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let sockets = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(n)));
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (target, sockets, next, failures, tls) = (
            target.clone(),
            sockets.clone(),
            next.clone(),
            failures.clone(),
            pki.tls.clone(),
        );
        set.spawn(async move {
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < n
                && Instant::now() < deadline
                && failures.load(Ordering::Relaxed) < 50
            {
                match tokio::time::timeout(Duration::from_secs(10), ws_open(&target, Some(&tls)))
                    .await
                {
                    Ok(Ok(ws)) => sockets.lock().await.push(ws),
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let opened = sockets.lock().await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every one still alive? One echo on a sample proves the path.
    {
        let mut guard = sockets.lock().await;
        if let Some(ws) = guard.last_mut() {
            ws.send(Message::text("ping")).await?;
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
        }
    }
    let after = t.rss_kib();
    let per = (after as f64 - before as f64) / opened.max(1) as f64;
    // Close them all (drop), then give the proxies a moment to clean up.
    drop(sockets);
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok((opened, per))
}

// =============================================================================================
// scenario 5: unauthenticated handshake flood vs an authenticated client

struct FloodReport {
    calm_p50: f64,
    calm_p99: f64,
    flood_p50: f64,
    flood_p99: f64,
    calm_new_p99: f64,
    flood_new_p99: f64,
    auth_failed: u64,
    flood_sent: u64,
    flood_completed_handshakes: u64,
}

/// Authenticated client for `secs`: sequential keep-alive GETs on one connection, plus a new
/// connection (full handshake) + GET every 50 ms. Returns (keep-alive latencies µs,
/// new-connection latencies µs, failures).
async fn auth_probe(
    t: Arc<Target>,
    pki_tls: Arc<rustls::ClientConfig>,
    full: Arc<rustls::ClientConfig>,
    secs: u64,
) -> (Vec<f64>, Vec<f64>, u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t2 = t.clone();
    let fresh = tokio::spawn(async move {
        let mut lat = Vec::new();
        let mut failed = 0u64;
        let mut buf = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while Instant::now() < deadline && lat.len() < 10_000 {
            tick.tick().await;
            let start = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(10), async {
                let mut s = connect(&t2, Some(&full)).await?;
                s.write_all(&get_request("/s", true)).await?;
                read_response(&mut s, &mut buf).await
            })
            .await;
            match r {
                Ok(Ok(200)) => lat.push(start.elapsed().as_secs_f64() * 1e6),
                _ => failed += 1,
            }
        }
        (lat, failed)
    });
    let mut lat = Vec::new();
    let mut failed = 0u64;
    let mut conn: Option<Io> = None;
    let mut buf = Vec::new();
    let req = get_request("/s", false);
    while Instant::now() < deadline && lat.len() < 200_000 {
        let start = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            if conn.is_none() {
                conn = Some(connect(&t, Some(&pki_tls)).await?);
            }
            let s = conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
            s.write_all(&req).await?;
            read_response(s, &mut buf).await
        })
        .await;
        match r {
            Ok(Ok(200)) => lat.push(start.elapsed().as_secs_f64() * 1e6),
            _ => {
                failed += 1;
                conn = None;
            }
        }
        // ~1000 requests/s: a user, not a load generator.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (fresh_lat, fresh_failed) = fresh.await.unwrap_or_default();
    (lat, fresh_lat, failed + fresh_failed)
}

async fn flood(t: &Target, pki: &Pki, count: usize, secs: u64) -> Result<FloodReport> {
    let target = Arc::new(Target {
        kind: t.kind,
        addr: t.addr,
        tls: t.tls,
        roots: vec![],
    });
    // Calm.
    let (mut calm, mut calm_new, calm_failed) = auth_probe(
        target.clone(),
        pki.tls.clone(),
        pki.tls_full.clone(),
        secs.min(5),
    )
    .await;
    calm.sort_by(f64::total_cmp);
    calm_new.sort_by(f64::total_cmp);
    // Flood from 127.0.0.2, paced evenly over `secs`, at most 256 in flight.
    let sent = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let flood_task = {
        let (target, anon, sent, completed) = (
            target.clone(),
            pki.tls_anon.clone(),
            sent.clone(),
            completed.clone(),
        );
        tokio::spawn(async move {
            let gap = Duration::from_secs_f64(secs as f64 / count as f64);
            let limit = Arc::new(tokio::sync::Semaphore::new(256));
            let mut tick = tokio::time::interval(gap);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut set = tokio::task::JoinSet::new();
            let stop = Instant::now() + Duration::from_secs(secs + 5);
            for _ in 0..count {
                tick.tick().await;
                if Instant::now() > stop {
                    break;
                }
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                sent.fetch_add(1, Ordering::Relaxed);
                let (target, anon, completed) = (target.clone(), anon.clone(), completed.clone());
                set.spawn(async move {
                    let _permit = permit;
                    let r = tokio::time::timeout(Duration::from_secs(5), async {
                        let mut s = connect_from(
                            &target,
                            Some(&anon),
                            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
                        )
                        .await?;
                        // The handshake completed (nginx defers the check to the request).
                        completed.fetch_add(1, Ordering::Relaxed);
                        s.write_all(&get_request("/s", true)).await?;
                        let mut buf = Vec::new();
                        read_response(&mut s, &mut buf).await
                    })
                    .await;
                    let _ = r;
                });
                while set.try_join_next().is_some() {}
            }
            while set.join_next().await.is_some() {}
        })
    };
    let (mut fl, mut fl_new, fl_failed) =
        auth_probe(target.clone(), pki.tls.clone(), pki.tls_full.clone(), secs).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), flood_task).await;
    fl.sort_by(f64::total_cmp);
    fl_new.sort_by(f64::total_cmp);
    Ok(FloodReport {
        calm_p50: percentile(&calm, 50.0),
        calm_p99: percentile(&calm, 99.0),
        flood_p50: percentile(&fl, 50.0),
        flood_p99: percentile(&fl, 99.0),
        calm_new_p99: percentile(&calm_new, 99.0),
        flood_new_p99: percentile(&fl_new, 99.0),
        auth_failed: calm_failed + fl_failed,
        flood_sent: sent.load(Ordering::Relaxed),
        flood_completed_handshakes: completed.load(Ordering::Relaxed),
    })
}

// =============================================================================================
// iperf3

async fn iperf(tools: &Tools, fleet: &mut Fleet, secs: u64) -> Result<f64> {
    let port = free_port()?;
    let i = fleet.spawn(
        "iperf3-server",
        Command::new(&tools.iperf3)
            .args(["-s", "-B", "127.0.0.1", "-p"])
            .arg(port.to_string()),
    )?;
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        fleet.procs[i].check_alive()?;
        ensure!(start.elapsed() < Duration::from_secs(10), "iperf3 server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The probe connection above sent no cookie: the (long-running, not `-1`) server drops
    // it and keeps listening.
    let out = tokio::time::timeout(
        Duration::from_secs(secs + 20),
        tokio::process::Command::new(&tools.iperf3)
            .args(["-c", "127.0.0.1", "-J", "-t"])
            .arg(secs.to_string())
            .arg("-p")
            .arg(port.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3: {}", String::from_utf8_lossy(&out.stdout)))?;
    // Dropping the server's handle kills it (by its own pid).
    drop(fleet.procs.remove(i));
    Ok(bps / 8.0 / 1e6)
}

// =============================================================================================
// machine info

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine(tools: &Tools) -> BTreeMap<&'static str, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let mut m = BTreeMap::new();
    m.insert("nproc", sh("nproc", &[]));
    m.insert("cpu", model);
    m.insert("kernel", sh("uname", &["-r"]));
    m.insert("rustc", sh("rustc", &["--version"]));
    m.insert(
        "memory",
        std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    );
    m.insert("nginx", {
        let o = Command::new(&tools.nginx).arg("-v").output();
        o.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default()
    });
    m.insert("oha", sh(&tools.oha.to_string_lossy(), &["--version"]));
    m.insert(
        "rathole",
        sh(&tools.rathole.to_string_lossy(), &["--version"])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    );
    m.insert(
        "iperf3",
        sh(&tools.iperf3.to_string_lossy(), &["--version"])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    );
    m.insert("ulimit_nofile", sh("sh", &["-c", "ulimit -n"]));
    m.insert(
        "load_before",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    );
    m
}

// =============================================================================================
// main

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("backend") {
        let ready = PathBuf::from(args.next().ok_or_else(|| anyhow!("backend READY_FILE"))?);
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(backend_main(ready));
    }
    let opts = Opts::parse()?;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(opts))
}

/// Starts every target kind (those in `only`, if given) in `fleet`, process names prefixed
/// with `prefix`.
async fn start_targets(
    fleet: &mut Fleet,
    tools: &Tools,
    pki: &Pki,
    prefix: &str,
    only: Option<&[String]>,
) -> Result<Vec<Target>> {
    let wanted = |k: Kind| only.is_none_or(|l| l.iter().any(|id| id == k.id()));
    let backend = fleet.backend;
    let mut targets: Vec<Target> = Vec::new();
    if wanted(Kind::Direct) {
        targets.push(Target {
            kind: Kind::Direct,
            addr: backend,
            tls: false,
            roots: vec![],
        });
    }
    if wanted(Kind::Doorless) {
        targets.push(
            fleet
                .doorless(tools, pki, &format!("{prefix}doorless"), true, false)
                .await?,
        );
    }
    for (kind, name, pool) in [
        (Kind::Nginx, "nginx", true),
        (Kind::NginxClassic, "nginx-classic", false),
    ] {
        if wanted(kind) {
            let (mut t, _) = fleet
                .nginx(tools, pki, &format!("{prefix}{name}"), backend, pool)
                .await?;
            t.kind = kind;
            wait_get_ok(&t, pki).await?;
            targets.push(t);
        }
    }
    if !tools.rathole.is_file() {
        return Ok(targets);
    }
    if wanted(Kind::Rathole) {
        let (addr, roots) = fleet
            .rathole(tools, &format!("{prefix}rathole"), false)
            .await?;
        targets.push(Target {
            kind: Kind::Rathole,
            addr,
            tls: false,
            roots,
        });
    }
    for (kind, name, noise) in [
        (Kind::Composite, "composite", false),
        (Kind::CompositeNoise, "composite-noise", true),
    ] {
        if wanted(kind) {
            let (rat, rat_pids) = fleet
                .rathole(tools, &format!("{prefix}{name}-rathole"), noise)
                .await?;
            let (mut t, _) = fleet
                .nginx(tools, pki, &format!("{prefix}{name}-nginx"), rat, true)
                .await?;
            t.kind = kind;
            t.roots.extend(rat_pids);
            wait_get_ok(&t, pki).await?;
            targets.push(t);
        }
    }
    Ok(targets)
}

async fn run(opts: Opts) -> Result<()> {
    let tools = Tools::find(&opts.root)?;
    let tck = clk_tck();
    let info = machine(&tools);
    eprintln!("== machine: {info:?}");
    let pki = make_pki()?;
    let mut fleet = Fleet::start_backend().await?;
    let backend = fleet.backend;
    eprintln!("== backend on {backend}");

    let mut targets = start_targets(&mut fleet, &tools, &pki, "", opts.targets.as_deref()).await?;
    // The same with the default log filter (one access line per request on stderr).
    let door_log = if opts.wants("get") {
        Some(
            fleet
                .doorless(&tools, &pki, "doorless-accesslog", true, true)
                .await?,
        )
    } else {
        None
    };
    targets.sort_by_key(|t| t.kind);
    for t in &targets {
        eprintln!(
            "== {:<16} {} pids {:?}",
            t.kind.title(),
            t.url("/"),
            t.pids()
        );
    }

    let mut res = Results::default();
    res.note(format!(
        "worker counts: nginx worker_processes 1 (each nginx); doorless edge and connector use \
         tokio's default multi-thread runtime (one worker per core = {}); rathole default \
         (tokio multi-thread); backend tokio multi-thread. Nothing is pinned; the load \
         generator shares the same cores.",
        info["nproc"]
    ));

    for run in 0..opts.runs {
        eprintln!("== run {}/{}", run + 1, opts.runs);
        if opts.wants("get") {
            for &c in &opts.concurrency {
                for t in &targets {
                    for h2 in [false, true] {
                        if h2 && (!opts.h2 || !t.tls) {
                            continue;
                        }
                        let proto = if h2 { "h2" } else { "h1" };
                        match oha(&tools, &pki, t, c, h2, opts.secs).await {
                            Ok((rps, p50, p99, bad)) => {
                                eprintln!(
                                    "  GET {proto} c={c:<3} {:<16} {rps:>9.0} req/s  p50 {p50:.3} ms  p99 {p99:.3} ms  non-200/errors {bad}",
                                    t.kind.title()
                                );
                                let k = t.kind;
                                res.add(
                                    &format!("get_{proto}_c{c}_rps"),
                                    &format!("small GET {proto} c={c}"),
                                    "req/s",
                                    true,
                                    k,
                                    rps,
                                );
                                res.add(
                                    &format!("get_{proto}_c{c}_p50"),
                                    &format!("small GET {proto} c={c} p50"),
                                    "ms",
                                    false,
                                    k,
                                    p50,
                                );
                                res.add(
                                    &format!("get_{proto}_c{c}_p99"),
                                    &format!("small GET {proto} c={c} p99"),
                                    "ms",
                                    false,
                                    k,
                                    p99,
                                );
                            }
                            Err(e) => {
                                res.note(format!("GET {proto} c={c} {}: {e:#}", t.kind.title()))
                            }
                        }
                    }
                }
            }
        }
        if let Some(t) = &door_log {
            match oha(&tools, &pki, t, 64, false, opts.secs).await {
                Ok((rps, _, p99, _)) => {
                    eprintln!(
                        "  GET h1 c=64  doorless + access log {rps:>9.0} req/s  p99 {p99:.3} ms"
                    );
                    res.add(
                        "get_h1_c64_rps_accesslog",
                        "small GET h1 c=64, doorless with its default access log on stderr",
                        "req/s",
                        true,
                        Kind::Doorless,
                        rps,
                    );
                }
                Err(e) => res.note(format!("GET doorless+access log: {e:#}")),
            }
        }
        if opts.wants("bulk") {
            for t in &targets {
                let mib = opts.bulk_bytes >> 20;
                match download(t, &pki, opts.bulk_bytes, tck).await {
                    Ok((mbps, cpu)) => {
                        eprintln!(
                            "  download {mib} MiB {:<16} {mbps:>8.0} MB/s  proxy CPU {cpu:.2} s/GiB",
                            t.kind.title()
                        );
                        res.add(
                            "down_mbps",
                            &format!("download {mib} MiB, 1 connection"),
                            "MB/s",
                            true,
                            t.kind,
                            mbps,
                        );
                        if !t.roots.is_empty() {
                            res.add(
                                "down_cpu",
                                "download: proxy CPU per GiB",
                                "CPU-s/GiB",
                                false,
                                t.kind,
                                cpu,
                            );
                        }
                    }
                    Err(e) => res.note(format!("download {}: {e:#}", t.kind.title())),
                }
                match upload(t, &pki, opts.bulk_bytes, tck).await {
                    Ok((mbps, cpu)) => {
                        eprintln!(
                            "  upload   {mib} MiB {:<16} {mbps:>8.0} MB/s  proxy CPU {cpu:.2} s/GiB",
                            t.kind.title()
                        );
                        res.add(
                            "up_mbps",
                            &format!("upload {mib} MiB, 1 connection"),
                            "MB/s",
                            true,
                            t.kind,
                            mbps,
                        );
                        if !t.roots.is_empty() {
                            res.add(
                                "up_cpu",
                                "upload: proxy CPU per GiB",
                                "CPU-s/GiB",
                                false,
                                t.kind,
                                cpu,
                            );
                        }
                    }
                    Err(e) => res.note(format!("upload {}: {e:#}", t.kind.title())),
                }
            }
        }
        if opts.wants("handshake") {
            for t in targets
                .iter()
                .filter(|t| t.tls && t.kind != Kind::NginxClassic)
            {
                for (id, label, cfg) in [
                    (
                        "hs",
                        "full mTLS handshakes + GET, 8 clients (client offers X25519MLKEM768+X25519)",
                        &pki.tls_full,
                    ),
                    (
                        "hs_x25519",
                        "full mTLS handshakes + GET, 8 clients (client offers X25519 only)",
                        &pki.tls_full_x25519,
                    ),
                ] {
                    match handshakes(t, cfg, opts.secs, 8).await {
                        Ok((rate, failed)) => {
                            eprintln!(
                                "  {id:<9} {:<16} {rate:>8.0} /s  failed {failed}",
                                t.kind.title()
                            );
                            res.add(id, label, "handshakes/s", true, t.kind, rate);
                            if failed > 0 {
                                res.note(format!("{id} {}: {failed} failed", t.kind.title()));
                            }
                        }
                        Err(e) => res.note(format!("{id} {}: {e:#}", t.kind.title())),
                    }
                }
            }
        }
        if opts.wants("ws") {
            for t in &targets {
                match ws_rtt(t, &pki, opts.ws_msgs).await {
                    Ok((p50, p99)) => {
                        eprintln!(
                            "  ws rtt {:<16} p50 {p50:.0} µs  p99 {p99:.0} µs",
                            t.kind.title()
                        );
                        res.add(
                            "ws_p50",
                            &format!("WebSocket echo RTT p50 ({} msgs)", opts.ws_msgs),
                            "µs",
                            false,
                            t.kind,
                            p50,
                        );
                        res.add(
                            "ws_p99",
                            &format!("WebSocket echo RTT p99 ({} msgs)", opts.ws_msgs),
                            "µs",
                            false,
                            t.kind,
                            p99,
                        );
                    }
                    Err(e) => res.note(format!("ws rtt {}: {e:#}", t.kind.title())),
                }
            }
        }
        if opts.wants("idle") {
            // A proxy holds ~2 fds per WebSocket (client + upstream side): stay under the limit.
            let nofile: usize = sh("sh", &["-c", "ulimit -n"]).parse().unwrap_or(1024);
            let idle_n = opts.idle_ws.min(nofile.saturating_sub(200) / 2);
            if idle_n < opts.idle_ws && run == 0 {
                res.note(format!("idle WebSockets: {idle_n} instead of {} (open-file limit {nofile}; a proxy needs 2 fds per WebSocket)", opts.idle_ws));
            }
            // On freshly started processes: the long-lived ones have run every other
            // scenario, and what their allocators kept would pass for WebSocket memory.
            let mut fresh_fleet = Fleet {
                dir: tempfile::Builder::new()
                    .prefix("doorless-bench-idle-")
                    .tempdir()?,
                procs: Vec::new(),
                backend,
            };
            let fresh = start_targets(
                &mut fresh_fleet,
                &tools,
                &pki,
                &format!("idle{run}-"),
                opts.targets.as_deref(),
            )
            .await?;
            for t in fresh.iter().filter(|t| !t.roots.is_empty()) {
                match ws_idle(t, &pki, idle_n).await {
                    Ok((opened, per)) => {
                        eprintln!(
                            "  idle ws {:<16} {opened} open, {per:.1} KiB RSS each",
                            t.kind.title()
                        );
                        res.add(
                            "idle_ws_kib",
                            &format!(
                                "idle WebSockets (fresh processes): proxy RSS per WebSocket (target {})",
                                opts.idle_ws
                            ),
                            "KiB",
                            false,
                            t.kind,
                            per,
                        );
                        res.add(
                            "idle_ws_n",
                            "idle WebSockets actually held open",
                            "count",
                            true,
                            t.kind,
                            opened as f64,
                        );
                    }
                    Err(e) => res.note(format!("idle ws {}: {e:#}", t.kind.title())),
                }
            }
            drop(fresh_fleet);
        }
        if opts.wants("iperf") {
            match iperf(&tools, &mut fleet, opts.secs).await {
                Ok(mbps) => {
                    eprintln!("  iperf3 raw TCP loopback {mbps:.0} MB/s");
                    if let Some(runs) = res
                        .extra
                        .entry("iperf3_mbps")
                        .or_insert_with(|| json!([]))
                        .as_array_mut()
                    {
                        runs.push(json!(mbps));
                    }
                }
                Err(e) => res.note(format!("iperf3: {e:#}")),
            }
        }
    }

    // The flood: doorless with DEFAULT limits, and nginx one hop for comparison.
    let mut floods = Vec::new();
    if opts.wants("flood") {
        let door_default = fleet
            .doorless(&tools, &pki, "doorless-defaults", false, true)
            .await?;
        let nginx_t = targets.iter().find(|t| t.kind == Kind::Nginx);
        for run in 0..opts.runs {
            for (name, t) in [
                ("doorless (default limits)", Some(&door_default)),
                ("nginx mTLS 1-hop", nginx_t),
            ] {
                let Some(t) = t else { continue };
                match flood(t, &pki, opts.flood, opts.flood_secs).await {
                    Ok(r) => {
                        eprintln!(
                            "  flood {} run {}: calm p50/p99 {:.0}/{:.0} µs, flood p50/p99 {:.0}/{:.0} µs, new-conn p99 calm {:.0} flood {:.0} µs, auth failed {}, flood sent {} completed handshakes {}",
                            name,
                            run + 1,
                            r.calm_p50,
                            r.calm_p99,
                            r.flood_p50,
                            r.flood_p99,
                            r.calm_new_p99,
                            r.flood_new_p99,
                            r.auth_failed,
                            r.flood_sent,
                            r.flood_completed_handshakes
                        );
                        floods.push(json!({
                            "target": name, "run": run + 1,
                            "calm_p50_us": r.calm_p50, "calm_p99_us": r.calm_p99,
                            "flood_p50_us": r.flood_p50, "flood_p99_us": r.flood_p99,
                            "calm_new_conn_p99_us": r.calm_new_p99, "flood_new_conn_p99_us": r.flood_new_p99,
                            "auth_failed": r.auth_failed, "flood_sent": r.flood_sent,
                            "flood_completed_handshakes": r.flood_completed_handshakes,
                        }));
                    }
                    Err(e) => res.note(format!("flood {name}: {e:#}")),
                }
            }
        }
    }

    let report = render(&opts, &info, &res, &floods);
    std::fs::create_dir_all(&opts.out)?;
    std::fs::write(opts.out.join("latest.md"), &report.0)?;
    std::fs::write(
        opts.out.join("latest.json"),
        serde_json::to_string_pretty(&report.1)?,
    )?;
    println!("{}", report.0);
    eprintln!("== wrote {}/latest.md and latest.json", opts.out.display());
    drop(fleet);
    Ok(())
}

// =============================================================================================
// report

fn render(
    opts: &Opts,
    info: &BTreeMap<&'static str, String>,
    res: &Results,
    floods: &[Value],
) -> (String, Value) {
    let mut md = String::new();
    let _ = writeln!(md, "# doorless benchmark — latest run\n");
    let _ = writeln!(
        md,
        "Medians of {} run(s); every load loop {} s unless stated; loopback only. Ratios are \
         doorless ÷ reference (for latency, CPU and RSS lower is better, so a ratio < 1 is \
         doorless ahead).\n",
        opts.runs, opts.secs
    );
    let _ = writeln!(md, "| machine | |\n|---|---|");
    for (k, v) in info {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(md);
    let _ = write!(md, "| figure | unit |");
    for k in Kind::ALL {
        let _ = write!(md, " {} |", k.title());
    }
    let _ = writeln!(
        md,
        " ÷ nginx 1-hop | ÷ nginx+rathole | ÷ nginx+rathole (noise) | ÷ direct |"
    );
    let _ = write!(md, "|---|---|");
    for _ in Kind::ALL {
        let _ = write!(md, "---:|");
    }
    let _ = writeln!(md, "---:|---:|---:|---:|");
    let mut metrics_json = Vec::new();
    for m in &res.metrics {
        let _ = write!(md, "| {} | {} |", m.label, m.unit);
        let mut meds = BTreeMap::new();
        for k in Kind::ALL {
            let v = m.values.get(&k).map(|v| median(v));
            if let Some(v) = v {
                meds.insert(k, v);
            }
            let _ = write!(md, " {} |", v.map_or("—".into(), fmt_num));
        }
        let d = meds.get(&Kind::Doorless).copied();
        for r in [
            Kind::Nginx,
            Kind::Composite,
            Kind::CompositeNoise,
            Kind::Direct,
        ] {
            let ratio = match (d, meds.get(&r)) {
                (Some(d), Some(&x)) if x != 0.0 => format!("{:.2}×", d / x),
                _ => "—".into(),
            };
            let _ = write!(md, " {ratio} |");
        }
        let _ = writeln!(md);
        metrics_json.push(json!({
            "id": m.id, "label": m.label, "unit": m.unit, "higher_is_better": m.higher_better,
            "runs": m.values.iter().map(|(k, v)| (k.id().to_owned(), json!(v))).collect::<serde_json::Map<_,_>>(),
            "median": meds.iter().map(|(k, v)| (k.id().to_owned(), json!(v))).collect::<serde_json::Map<_,_>>(),
        }));
    }
    if let Some(Value::Array(a)) = res.extra.get("iperf3_mbps") {
        let v: Vec<f64> = a.iter().filter_map(Value::as_f64).collect();
        let _ = writeln!(
            md,
            "\nRaw loopback TCP (iperf3, one stream, {} s): **{} MB/s** (median of {}).",
            opts.secs,
            fmt_num(median(&v)),
            v.len()
        );
    }

    // Flood.
    if !floods.is_empty() {
        let _ = writeln!(
            md,
            "\n## Unauthenticated handshake flood\n\n{} handshakes without a client certificate \
             from 127.0.0.2 in {} s; meanwhile an authenticated client from 127.0.0.1 sends \
             keep-alive GETs (~1 ms apart) and a new full-handshake connection + GET every \
             50 ms. Medians over runs.\n",
            opts.flood, opts.flood_secs
        );
        let _ = writeln!(
            md,
            "| target | calm p50 µs | calm p99 µs | flood p50 µs | flood p99 µs | flood p99 ÷ calm p99 | new-conn p99 calm µs | new-conn p99 flood µs | auth failures (all runs) | flood handshakes completed |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let mut names: Vec<&str> = floods.iter().filter_map(|f| f["target"].as_str()).collect();
        names.dedup();
        names.sort();
        names.dedup();
        for name in names {
            let rows: Vec<&Value> = floods.iter().filter(|f| f["target"] == name).collect();
            let med = |k: &str| {
                median(
                    &rows
                        .iter()
                        .filter_map(|r| r[k].as_f64())
                        .collect::<Vec<_>>(),
                )
            };
            let failed: f64 = rows.iter().filter_map(|r| r["auth_failed"].as_f64()).sum();
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {:.2}× | {} | {} | {failed} | {} |",
                fmt_num(med("calm_p50_us")),
                fmt_num(med("calm_p99_us")),
                fmt_num(med("flood_p50_us")),
                fmt_num(med("flood_p99_us")),
                med("flood_p99_us") / med("calm_p99_us"),
                fmt_num(med("calm_new_conn_p99_us")),
                fmt_num(med("flood_new_conn_p99_us")),
                fmt_num(med("flood_completed_handshakes")),
            );
        }
    }

    // Targets.
    let _ = writeln!(md, "\n## Targets (issue 6), from the medians above\n");
    let g = |id: &str, k: Kind| res.median(id, k).unwrap_or(f64::NAN);
    let mut check = |what: String, ok: bool| {
        let _ = writeln!(md, "- {} {what}", if ok { "**met**" } else { "**missed**" });
    };
    let (d, c, n) = (Kind::Doorless, Kind::Composite, Kind::Nginx);
    let rps = "get_h1_c64_rps";
    if res.median(rps, d).is_some() {
        check(
            format!(
                "GET c=64 h1 req/s ≥ 1.5× composite: {:.2}×",
                g(rps, d) / g(rps, c)
            ),
            g(rps, d) >= 1.5 * g(rps, c),
        );
        check(
            format!(
                "GET c=64 h1 req/s ≥ 0.6× nginx 1-hop: {:.2}×",
                g(rps, d) / g(rps, n)
            ),
            g(rps, d) >= 0.6 * g(rps, n),
        );
        for p in ["p50", "p99"] {
            let id = format!("get_h1_c64_{p}");
            check(
                format!(
                    "GET c=64 h1 {p} ≤ composite: {} vs {} ms",
                    fmt_num(g(&id, d)),
                    fmt_num(g(&id, c))
                ),
                g(&id, d) <= g(&id, c),
            );
        }
    }
    for (id, what) in [("down_mbps", "download"), ("up_mbps", "upload")] {
        if res.median(id, d).is_some() {
            check(
                format!("{what} ≥ composite: {:.2}×", g(id, d) / g(id, c)),
                g(id, d) >= g(id, c),
            );
            check(
                format!("{what} ≥ 0.5× nginx 1-hop: {:.2}×", g(id, d) / g(id, n)),
                g(id, d) >= 0.5 * g(id, n),
            );
        }
    }
    for (id, what) in [("down_cpu", "download"), ("up_cpu", "upload")] {
        if res.median(id, d).is_some() {
            check(
                format!(
                    "{what} CPU-s/GiB ≤ composite: {} vs {}",
                    fmt_num(g(id, d)),
                    fmt_num(g(id, c))
                ),
                g(id, d) <= g(id, c),
            );
        }
    }
    if res.median("hs", d).is_some() {
        check(
            format!(
                "full mTLS handshakes/s ≥ nginx (client default groups): {:.2}×",
                g("hs", d) / g("hs", n)
            ),
            g("hs", d) >= g("hs", n),
        );
        check(
            format!(
                "full mTLS handshakes/s ≥ nginx (X25519 only): {:.2}×",
                g("hs_x25519", d) / g("hs_x25519", n)
            ),
            g("hs_x25519", d) >= g("hs_x25519", n),
        );
    }
    // The same comparisons against the composite with an encrypted tunnel hop (rathole's
    // Noise transport), which is what doorless's QUIC hop always is. Not issue targets.
    let e = Kind::CompositeNoise;
    let mut reference = Vec::new();
    for (id, what, unit) in [
        ("get_h1_c64_rps", "GET c=64 h1 req/s", "req/s"),
        ("get_h1_c64_p99", "GET c=64 h1 p99", "ms"),
        ("down_mbps", "download", "MB/s"),
        ("up_mbps", "upload", "MB/s"),
        ("down_cpu", "download CPU", "CPU-s/GiB"),
        ("up_cpu", "upload CPU", "CPU-s/GiB"),
    ] {
        if let (Some(dv), Some(ev)) = (res.median(id, d), res.median(id, e)) {
            reference.push(format!(
                "- {what}: doorless {} vs {} {unit} ({:.2}×)",
                fmt_num(dv),
                fmt_num(ev),
                dv / ev
            ));
        }
    }
    if res.median("idle_ws_kib", d).is_some() {
        check(
            format!(
                "idle WebSocket RSS ≤ nginx 1-hop: {} vs {} KiB",
                fmt_num(g("idle_ws_kib", d)),
                fmt_num(g("idle_ws_kib", n))
            ),
            g("idle_ws_kib", d) <= g("idle_ws_kib", n),
        );
    }
    let door_floods: Vec<&Value> = floods
        .iter()
        .filter(|f| {
            f["target"]
                .as_str()
                .is_some_and(|s| s.starts_with("doorless"))
        })
        .collect();
    if !door_floods.is_empty() {
        let med = |k: &str| {
            median(
                &door_floods
                    .iter()
                    .filter_map(|r| r[k].as_f64())
                    .collect::<Vec<_>>(),
            )
        };
        let failed: f64 = door_floods
            .iter()
            .filter_map(|r| r["auth_failed"].as_f64())
            .sum();
        let ratio = med("flood_p99_us") / med("calm_p99_us");
        check(
            format!("flood: keep-alive p99 ≤ 3× calm: {ratio:.2}×"),
            ratio <= 3.0,
        );
        let ratio_new = med("flood_new_conn_p99_us") / med("calm_new_conn_p99_us");
        check(
            format!("flood: new-connection p99 ≤ 3× calm: {ratio_new:.2}×"),
            ratio_new <= 3.0,
        );
        check(
            format!("flood: zero failed authenticated requests: {failed}"),
            failed == 0.0,
        );
    }
    if !reference.is_empty() {
        let _ = writeln!(
            md,
            "\nAgainst nginx + rathole with its Noise transport (tunnel hop encrypted, like \
             doorless's; for reference, not a target):\n\n{}\n",
            reference.join("\n")
        );
    }
    if !res.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in &res.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    let json = json!({
        "machine": info,
        "options": {
            "runs": opts.runs, "secs": opts.secs, "concurrency": opts.concurrency,
            "bulk_bytes": opts.bulk_bytes, "idle_ws": opts.idle_ws, "ws_msgs": opts.ws_msgs,
            "flood": opts.flood, "flood_secs": opts.flood_secs,
        },
        "metrics": metrics_json,
        "iperf3_mbps": res.extra.get("iperf3_mbps"),
        "flood": floods,
        "notes": res.notes,
    });
    (md, json)
}
