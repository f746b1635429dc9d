//! What is measured: the target kinds, a running target, the benchmark PKI and the external
//! programs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, ensure};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::HOST;
use crate::procs::{cpu_secs, rss_kib, tree};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Direct,
    Doorless,
    /// doorless with `transport = "tcp"`: the tunnel over TLS/TCP with HTTP/2 framing (the
    /// fallback when UDP is blocked) instead of QUIC.
    DoorlessTcp,
    Nginx,
    NginxClassic,
    Rathole,
    Composite,
    /// The composite with rathole's Noise transport: the tunnel hop encrypted, as doorless's
    /// always is (plain rathole sends the tunnel in clear text).
    CompositeNoise,
}

impl Kind {
    pub(crate) const ALL: [Kind; 8] = [
        Kind::Direct,
        Kind::Doorless,
        Kind::DoorlessTcp,
        Kind::Nginx,
        Kind::NginxClassic,
        Kind::Rathole,
        Kind::Composite,
        Kind::CompositeNoise,
    ];
    pub(crate) fn id(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Doorless => "doorless",
            Kind::DoorlessTcp => "doorless_tcp",
            Kind::Nginx => "nginx",
            Kind::NginxClassic => "nginx_classic",
            Kind::Rathole => "rathole",
            Kind::Composite => "composite",
            Kind::CompositeNoise => "composite_noise",
        }
    }
    pub(crate) fn title(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Doorless => "doorless",
            Kind::DoorlessTcp => "doorless TLS/TCP",
            Kind::Nginx => "nginx mTLS 1-hop",
            Kind::NginxClassic => "nginx classic",
            Kind::Rathole => "rathole",
            Kind::Composite => "nginx+rathole",
            Kind::CompositeNoise => "nginx+rathole (noise)",
        }
    }
}

/// A running target: where a client connects and which processes are "the proxy".
pub(crate) struct Target {
    pub(crate) kind: Kind,
    pub(crate) addr: SocketAddr,
    pub(crate) tls: bool,
    /// Process roots whose trees count as the proxy (CPU, RSS).
    pub(crate) roots: Vec<u32>,
}

impl Target {
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.roots.iter().flat_map(|&p| tree(p)).collect()
    }
    pub(crate) fn cpu(&self, tck: f64) -> f64 {
        self.pids().iter().map(|&p| cpu_secs(p, tck)).sum()
    }
    pub(crate) fn rss_kib(&self) -> u64 {
        self.pids().iter().map(|&p| rss_kib(p)).sum()
    }
    pub(crate) fn url(&self, path: &str) -> String {
        if self.tls {
            format!("https://{HOST}:{}{path}", self.addr.port())
        } else {
            format!("http://{}{path}", self.addr)
        }
    }
}

/// Everything the clients need to authenticate.
pub(crate) struct Pki {
    _dir: tempfile::TempDir,
    pub(crate) state_root: PathBuf,
    pub(crate) state: pki::StateDir,
    pub(crate) server_ca: PathBuf,
    pub(crate) client_ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) device_cert: PathBuf,
    pub(crate) device_key: PathBuf,
    /// mTLS client config (ALPN http/1.1), resumption on (rustls default).
    pub(crate) tls: Arc<rustls::ClientConfig>,
    /// The same offering only ALPN h2 (the HTTP/2 bulk transfers).
    pub(crate) tls_h2: Arc<rustls::ClientConfig>,
    /// Same, resumption disabled (every connection a full handshake).
    pub(crate) tls_full: Arc<rustls::ClientConfig>,
    /// Same, resumption disabled, X25519 only (no post-quantum hybrid key share).
    pub(crate) tls_full_x25519: Arc<rustls::ClientConfig>,
    /// No client certificate (the flood).
    pub(crate) tls_anon: Arc<rustls::ClientConfig>,
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

pub(crate) fn make_pki() -> Result<Pki> {
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
        tls_h2: Arc::new({
            let mut c = client_config(&ca_pem, id, true, false)?;
            c.alpn_protocols = vec![b"h2".to_vec()];
            c
        }),
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
pub(crate) struct Tools {
    pub(crate) edge: PathBuf,
    pub(crate) connector: PathBuf,
    pub(crate) oha: PathBuf,
    pub(crate) rathole: PathBuf,
    pub(crate) nginx: PathBuf,
    pub(crate) iperf3: PathBuf,
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
    pub(crate) fn find(root: &Path) -> Result<Self> {
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
