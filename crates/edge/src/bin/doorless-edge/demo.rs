//! `doorless-edge demo`: the whole product on one machine in one command.
//!
//! Creates a throwaway state dir (CAs, a site `demo` for `home.localhost`, a device
//! certificate, a connector credential), starts a stand-in Home Assistant, the edge and a
//! connector in this process, and prints the curl command that gets through and the one that
//! is refused.
//!
//! Compiled only with the edge's `demo` feature (`cargo run -p edge --features demo -- demo`):
//! it links a connector and the stand-in Home Assistant, which a release edge has no use for.
//! Without the feature `main.rs` keeps a hidden `demo` verb that says how to get it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use edge::Edge;
use edge::config::{Config, LogFormat, RawConfig, RawListen};

const SITE: &str = "demo";
const HOST: &str = "home.localhost";
const DEVICE: &str = "demo-phone";

/// The arguments of `demo` (its help text is on `Command::Demo`, which clap prefers).
#[derive(Debug, clap::Args)]
pub(crate) struct Demo {
    /// HTTPS port on 127.0.0.1 (0 picks a free one).
    #[arg(long, default_value_t = 8443)]
    port: u16,
    /// Directory for the demo's throwaway PKI (default: a new temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the demo's addresses and files as JSON here once ready.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

impl Demo {
    /// Runs the demo until Ctrl-C.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let rt = crate::run::runtime()?;
        let _log = daemon::init_logging(LogFormat::Text, "info,access=off");
        rt.block_on(run(self.port, self.dir, self.ready_file))
    }
}

async fn run(port: u16, dir: Option<PathBuf>, ready_file: Option<PathBuf>) -> anyhow::Result<()> {
    let (dir, _temp_guard) = match dir {
        Some(d) => (d, None),
        None => {
            let d = std::env::temp_dir().join(format!("doorless-demo-{}", std::process::id()));
            (d.clone(), Some(RemoveOnDrop(d)))
        }
    };
    let state_dir = dir.join("state");
    let state = pki::StateDir::init(&state_dir, &pki::InitOptions::default())
        .with_context(|| format!("creating the demo state in {}", state_dir.display()))?;
    state.add_site(SITE, &[HOST.to_owned()])?;
    let issued = state.add_client(
        SITE,
        DEVICE,
        pki::Validity::days(30),
        pki::KeyType::EcdsaP256,
    )?;
    let cert = dir.join(format!("{DEVICE}.crt"));
    let key = dir.join(format!("{DEVICE}.key"));
    std::fs::write(&cert, &issued.cert_pem)?;
    std::fs::write(&key, &issued.key_pem)?;
    let ca = state.server_ca_path();
    // The same identity as a .p12 for a browser or a phone (legacy format: imports anywhere).
    let p12 = dir.join(format!("{DEVICE}.p12"));
    let password = pki::generate_password()?;
    let site_ca = state.client_ca(SITE)?;
    let p12_bytes = pki::export_p12(
        DEVICE,
        &issued.cert_der,
        &issued.key_der,
        site_ca.cert_der(),
        &password,
        pki::P12Profile::Legacy,
    )?;
    std::fs::write(&p12, p12_bytes)?;

    // Stand-in Home Assistant.
    let shutdown = CancellationToken::new();
    let ha_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let ha_addr = ha_listener.local_addr()?;
    let recorder = standin::Recorder::new();
    tokio::spawn(standin::serve(ha_listener, recorder, shutdown.clone()));

    // Edge.
    let config = Config::from_raw(RawConfig {
        state_dir: state_dir.clone(),
        listen: RawListen {
            https: SocketAddr::from(([127, 0, 0, 1], port)),
            tunnel: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            // Loopback: the kernel's default is right, and a machine without BBR gets no
            // warning about it in the demo's output.
            tcp_congestion_control: String::new(),
        },
        limits: Default::default(),
        tunnel: Default::default(),
        log: Default::default(),
        sites: Default::default(),
        acme: Default::default(),
        cache: Default::default(),
    })?;
    let edge = Edge::bind(config).await?;
    let addrs = edge.addrs();
    let edge_task = tokio::spawn(edge.run(shutdown.clone()));

    // Connector, enrolled with a fresh token.
    let mut token = state.issue_connector(SITE, None)?;
    token.edges = vec![addrs.tunnel.to_string()];
    let connector_config = connector::config::Config::new(
        &token,
        &format!("http://{ha_addr}"),
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )?;
    let connector = connector::Connector::bind(connector_config).await?;
    let mut ready = connector.ready();
    let connector_task = tokio::spawn(connector.run(shutdown.clone()));
    tokio::time::timeout(
        Duration::from_secs(10),
        ready.wait_for(|connected| *connected > 0),
    )
    .await
    .context("the demo connector did not register within 10 s")??;

    let https_port = addrs.https.port();
    let url = format!("https://{HOST}:{https_port}/");
    let resolve = format!("--resolve {HOST}:{https_port}:127.0.0.1");
    let ok = format!(
        "curl --cacert {} --cert {} --key {} {resolve} {url}",
        ca.display(),
        cert.display(),
        key.display()
    );
    let refused = format!("curl --cacert {} {resolve} {url}", ca.display());
    println!();
    println!("doorless demo is running (Ctrl-C to stop).");
    println!("  stand-in Home Assistant: http://{ha_addr}");
    println!(
        "  edge: https {} · tunnel (QUIC) {} · admin http://{}",
        addrs.https, addrs.tunnel, addrs.admin
    );
    println!();
    println!("This works (a device certificate issued for site `{SITE}`):");
    println!("  {ok}");
    println!();
    println!("This is refused at the TLS handshake (no certificate):");
    println!("  {refused}");
    println!();
    println!(
        "In a browser: import {} (password {password}),",
        p12.display()
    );
    println!(
        "trust {} as a CA for websites, and open {url}",
        ca.display()
    );
    println!("(home.localhost resolves to 127.0.0.1 in current browsers).");
    println!();
    println!(
        "Status of sites and connectors: curl http://{}/status",
        addrs.admin
    );
    println!();
    if let Some(path) = ready_file {
        let body = json!({
            "https": addrs.https, "tunnel": addrs.tunnel, "admin": addrs.admin,
            "host": HOST, "ca": ca, "cert": cert, "key": key,
            "curl_ok": ok, "curl_refused": refused,
            "p12": p12, "p12_password": password,
        });
        daemon::write_ready_file(&path, &body)?;
    }

    daemon::shutdown_signal().await;
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = connector_task.await;
        let _ = edge_task.await;
    })
    .await;
    Ok(())
}

/// Deletes the demo's temporary directory when the demo ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
