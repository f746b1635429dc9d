//! ACME end to end: the real edge with `[acme]` pointed at a real ACME server (Debian's
//! pebble, on loopback), which validates TLS-ALPN-01 against the edge's own HTTPS listener.
//!
//! Order of things: pebble must know the edge's HTTPS port (`tlsPort`) and the edge must know
//! pebble's URL, so pebble's port and listener CA are chosen first, the edge starts on port 0
//! (its first orders fail: nothing listens yet, and it retries fast), then pebble starts on the
//! chosen port. Pebble's mock DNS answers 127.0.0.1 for every name. Nothing talks to the
//! internet; every wait is a poll with a deadline.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, ensure};
use e2e::{Connector, ConnectorConfig, Edge, EdgeOptions, HOME_HOST, Pki, StandIn, poll_until};
use pebble_harness::{ListenerCa, Pebble, PebbleOptions, directory_url, free_port};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const DEADLINE: Duration = Duration::from_secs(60);

/// Everything but pebble: a site with a device and a connector, the edge with `[acme]`.
struct Setup {
    _connector: Connector,
    edge: Edge,
    ha: StandIn,
    device: pki::Issued,
    pebble_port: u16,
    listener_ca: Option<ListenerCa>,
    _files: tempfile::TempDir,
    _pki: Pki,
}

async fn setup() -> Result<Setup> {
    let mut pki = Pki::new()?;
    pki.add_site("home", HOME_HOST)?;
    let device = pki.device("home", "phone")?;
    let token = pki.connector_token("home", "connector-1")?;
    let pebble_port = free_port(false).map_err(|e| anyhow!("{e}"))?;
    let listener_ca = ListenerCa::new().map_err(|e| anyhow!("{e}"))?;
    let files = tempfile::tempdir()?;
    let roots = files.path().join("pebble-listener-ca.pem");
    std::fs::write(&roots, &listener_ca.ca_pem)?;
    let acme = format!(
        "[acme]\nemail = \"ops@home.test\"\ndirectory = \"{}\"\nextra_roots = {:?}\n\
         retry_initial = \"200ms\"\nretry_max = \"1s\"\nrequest_timeout = \"5s\"\norder_timeout = \"30s\"\n",
        directory_url(pebble_port),
        roots.display().to_string(),
    );
    let edge = Edge::start_with(
        pki.root(),
        EdgeOptions {
            extra_toml: Some(acme),
            // The renewal test keeps an idle keep-alive connection open across a renewal.
            limits: Some("header_read_timeout = \"60s\"".into()),
            ..EdgeOptions::default()
        },
    )
    .await?;
    let ha = StandIn::start().await?;
    let connector = Connector::start(ConnectorConfig::new(
        e2e::token_for(&token, &[edge.tunnel_addr()]),
        ha.addr,
    ))
    .await?;
    Ok(Setup {
        _connector: connector,
        edge,
        ha,
        device,
        pebble_port,
        listener_ca: Some(listener_ca),
        _files: files,
        _pki: pki,
    })
}

impl Setup {
    /// Starts pebble on the chosen port, validating against the edge's HTTPS port.
    async fn pebble(&mut self, validity_secs: Option<u64>, exact_log: bool) -> Result<Pebble> {
        let ca = self
            .listener_ca
            .take()
            .ok_or_else(|| anyhow!("pebble already started once"))?;
        Pebble::start_with_ca(
            PebbleOptions {
                tls_port: self.edge.https_addr().port(),
                validity_secs,
                listen_port: Some(self.pebble_port),
                exact_request_log: exact_log,
                ..PebbleOptions::default()
            },
            ca,
        )
        .await
        .map_err(|e| anyhow!("pebble: {e}"))
    }

    fn url(&self, path: &str) -> String {
        format!(
            "https://{HOME_HOST}:{}{path}",
            self.edge.https_addr().port()
        )
    }

    /// A client that trusts only `root` (pebble's) and presents the device certificate.
    fn client(&self, root: &str) -> Result<reqwest::Client> {
        Ok(e2e::client_builder(
            root.as_bytes(),
            HOME_HOST,
            self.edge.https_addr(),
            Some(&self.device),
        )?
        .build()?)
    }

    /// The site's `certificate` object of `/status` once `pred` holds for it.
    async fn certificate_when(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let admin = self.edge.admin_addr();
        poll_until(what, DEADLINE, || async {
            let status = e2e::admin_get_json(admin, "/status").await.ok()?;
            let cert = status["sites"][0]["certificate"].clone();
            pred(&cert).then_some(cert)
        })
        .await
        .with_context(|| format!("last /status: {:?}", self.edge.output()))
    }
}

/// Serial (lowercase hex) of the certificate the server presented on `tls`.
fn served_serial(tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> Result<String> {
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow!("no server certificate"))?;
    Ok(pki::cert_serial(leaf)?)
}

/// One `GET path` on a kept-alive HTTP/1.1 connection; returns the status code.
async fn get_on(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    path: &str,
) -> Result<u16> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {HOME_HOST}\r\n\r\n");
    tls.write_all(request.as_bytes()).await?;
    tls.flush().await?;
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = tls.read(&mut chunk).await?;
            ensure!(n > 0, "connection closed after {} bytes", buf.len());
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = e2e::RawResponse::parse(&buf)?;
                let length: usize = head
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| anyhow!("no content-length in {:?}", head.headers))?;
                if buf.len() >= end + 4 + length {
                    return Ok(head.status);
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .context("no response within 15 s")?
}

async fn connect(setup: &Setup, root: &str, alpn: &[&[u8]]) -> Result<TlsConn> {
    e2e::tls_connect(
        root.as_bytes(),
        HOME_HOST,
        setup.edge.https_addr(),
        Some(&setup.device),
        alpn,
    )
    .await
}

type TlsConn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn metric(admin: SocketAddr, series: &str) -> Result<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn serial_of(cert: &serde_json::Value) -> String {
    cert["serial"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_orders_serves_and_renews_under_an_open_connection() {
    let mut setup = setup().await.unwrap();
    // Before pebble is up the site serves the local server CA's certificate.
    let cert = setup
        .certificate_when("the local certificate", |c| c["source"] == "local")
        .await
        .unwrap();
    assert!(cert["acme"]["state"].is_string(), "{cert}");

    // 15-second certificates: renewed after about 10 s (2/3 of the lifetime).
    let pebble = setup.pebble(Some(15), false).await.unwrap();
    let first = setup
        .certificate_when("the first ACME certificate", |c| c["source"] == "acme")
        .await
        .unwrap();
    let first_serial = serial_of(&first);
    assert!(!first_serial.is_empty(), "{first}");
    assert_eq!(first["acme"]["consecutive_failures"], 0, "{first}");
    let root = pebble.root_pem().await.unwrap();

    // A client trusting only pebble's root, with its device certificate, reaches HA.
    let client = setup.client(&root).unwrap();
    let before = setup.ha.requests();
    let (status, _) = crate::get(&client, &setup.url("/status/200")).await;
    assert_eq!(status, 200);
    assert_eq!(setup.ha.requests(), before + 1);
    // Without a device certificate the same trust gets no further than the handshake.
    let anonymous = e2e::client_builder(root.as_bytes(), HOME_HOST, setup.edge.https_addr(), None)
        .unwrap()
        .build()
        .unwrap();
    assert!(anonymous.get(setup.url("/")).send().await.is_err());
    assert_eq!(setup.ha.requests(), before + 1);

    // An open connection on the first certificate...
    let mut open = connect(&setup, &root, &[b"http/1.1"]).await.unwrap();
    assert_eq!(served_serial(&open).unwrap(), first_serial);
    assert_eq!(get_on(&mut open, "/status/200").await.unwrap(), 200);

    // ...survives the renewal, and keeps working on its key.
    let renewed = setup
        .certificate_when("the renewed certificate", |c| {
            c["source"] == "acme" && serial_of(c) != first_serial && !serial_of(c).is_empty()
        })
        .await
        .unwrap();
    assert_eq!(get_on(&mut open, "/status/200").await.unwrap(), 200);
    assert_eq!(served_serial(&open).unwrap(), first_serial);
    // A new handshake gets the new certificate (or a later one: renewals keep coming).
    let fresh = connect(&setup, &root, &[b"http/1.1"]).await.unwrap();
    let fresh_serial = served_serial(&fresh).unwrap();
    assert_ne!(fresh_serial, first_serial, "renewed to {renewed}");
    let (status, _) = crate::get(&setup.client(&root).unwrap(), &setup.url("/status/200")).await;
    assert_eq!(status, 200);

    let admin = setup.edge.admin_addr();
    assert!(
        metric(
            admin,
            "doorless_edge_acme_orders_total{site=\"home\",result=\"issued\"}"
        )
        .await
        .unwrap()
            >= 2.0
    );
    assert!(
        metric(
            admin,
            "doorless_edge_tls_handshakes_total{site=\"home\",result=\"ok\",reason=\"acme_challenge\"}"
        )
        .await
        .unwrap()
            >= 2.0
    );
    assert!(
        metric(
            admin,
            "doorless_edge_certificate_expiry_timestamp_seconds{site=\"home\",kind=\"server_acme\"}"
        )
        .await
        .unwrap()
            > 0.0
    );
    assert_eq!(
        metric(
            admin,
            "doorless_edge_certificate_expiry_timestamp_seconds{site=\"home\",kind=\"server_local\"}"
        )
        .await
        .unwrap(),
        0.0,
        "one server series per site: the local one is gone"
    );
    drop((open, fresh, pebble));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_certificate_survives_restarts_without_new_orders_even_with_the_ca_down() {
    let mut setup = setup().await.unwrap();
    let pebble = setup.pebble(None, true).await.unwrap();
    let first = setup
        .certificate_when("the first ACME certificate", |c| c["source"] == "acme")
        .await
        .unwrap();
    let serial = serial_of(&first);
    let root = pebble.root_pem().await.unwrap();
    assert_eq!(pebble.requests("/order-plz"), 1, "{}", pebble.log_text());
    let accounts = pebble.requests("/sign-me-up");

    // Restart with the same state dir: the stored certificate is served from the first
    // handshake, and once the task has looked at it (and asked pebble about ARI), no order.
    setup.edge.restart().await.unwrap();
    let cert = setup
        .certificate_when("the stored certificate", |c| c["source"] == "acme")
        .await
        .unwrap();
    assert_eq!(serial_of(&cert), serial);
    let tls = connect(&setup, &root, &[b"http/1.1"]).await.unwrap();
    assert_eq!(served_serial(&tls).unwrap(), serial);
    drop(tls);
    setup
        .certificate_when("the task settled", |c| {
            c["acme"]["state"] == "valid" && c["acme"]["ari"].is_boolean()
        })
        .await
        .unwrap();
    assert_eq!(pebble.requests("/order-plz"), 1, "{}", pebble.log_text());
    assert_eq!(pebble.requests("/sign-me-up"), accounts);

    // The CA goes away; the edge restarts and still serves the stored certificate.
    pebble.stop().await.unwrap();
    setup.edge.restart().await.unwrap();
    let cert = setup
        .certificate_when("the stored certificate, CA down", |c| c["source"] == "acme")
        .await
        .unwrap();
    assert_eq!(serial_of(&cert), serial);
    let client = setup.client(&root).unwrap();
    crate::poll_status(&client, &setup.url("/status/200"), 200, DEADLINE).await;
    let tls = connect(&setup, &root, &[b"http/1.1"]).await.unwrap();
    assert_eq!(served_serial(&tls).unwrap(), serial);

    // An acme-tls/1 handshake while no order is pending gets nothing.
    let before = metric(
        setup.edge.admin_addr(),
        "doorless_edge_tls_handshakes_total{site=\"home\",result=\"denied\",reason=\"no_acme_challenge\"}",
    )
    .await
    .unwrap();
    assert!(connect(&setup, &root, &[b"acme-tls/1"]).await.is_err());
    let after = metric(
        setup.edge.admin_addr(),
        "doorless_edge_tls_handshakes_total{site=\"home\",result=\"denied\",reason=\"no_acme_challenge\"}",
    )
    .await
    .unwrap();
    assert_eq!(after, before + 1.0);
    assert!(
        setup.edge.pid().is_some(),
        "the edge is running: {}",
        setup.edge.output()
    );
}
