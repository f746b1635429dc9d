//! The TLS/TCP tunnel transport with the real binaries: fallback when UDP is blocked (a UDP
//! relay of our own between connector and edge), the way back to QUIC without a failed
//! request, `transport = "tcp"`, and the tunnel's ALPN on the HTTPS port refusing anything
//! but a connector.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::udp_relay::UdpRelay;
use e2e::{Connector, ConnectorConfig, HttpVersion, Stack, StackOptions, token_for};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

/// Start to "serving over TCP" when UDP is dropped from the start: the 3 s QUIC handshake
/// limit of `auto`, then a TLS/TCP dial and registration. Asserted with 1 s for process start
/// on a loaded machine.
const FALLBACK_BOUND: Duration = Duration::from_secs(5);

/// The transports of `site`'s registered tunnels, from the edge's /status.
async fn tunnel_transports(stack: &Stack, site: &str) -> Vec<String> {
    let status = stack.edge.status().await.unwrap();
    let mut out = Vec::new();
    for s in status["sites"].as_array().into_iter().flatten() {
        if s["name"] != site {
            continue;
        }
        for c in s["connectors"].as_array().into_iter().flatten() {
            for t in c["sessions"].as_array().into_iter().flatten() {
                out.push(t["transport"].as_str().unwrap_or("?").to_owned());
            }
        }
    }
    out.sort();
    out
}

/// Polls until the site has exactly `n` tunnels, all over `transport`.
async fn wait_transports(stack: &Stack, transport: &str, n: usize, deadline: Duration) {
    let started = Instant::now();
    loop {
        let now = tunnel_transports(stack, "home").await;
        if now.len() == n && now.iter().all(|t| t == transport) {
            return;
        }
        assert!(
            started.elapsed() < deadline,
            "tunnels did not become {n}× {transport} within {deadline:?}: {now:?}\n{}",
            stack.edge.output()
        );
        tokio::time::sleep(e2e::POLL_INTERVAL * 5).await;
    }
}

/// The value of the first `/metrics` line starting with `series` (name and labels).
async fn metric(admin: std::net::SocketAddr, series: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn connector_config(stack: &Stack, edges: &[std::net::SocketAddr], extra: &str) -> ConnectorConfig {
    let home = stack.home();
    let mut config = ConnectorConfig::new(token_for(&home.token, edges), home.ha.addr);
    config.extra_toml = Some(format!(
        "tcp_edges = [\"{}\"]\n{extra}",
        stack.edge.https_addr()
    ));
    config
}

/// Requests, an upload, a download and a WebSocket through whatever the tunnel is now.
async fn everything_works(stack: &Stack) {
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let (status, _) = crate::get(&client, &stack.url("/")).await;
    assert_eq!(status, 200);
    let n: u64 = 3_000_000;
    let response = client
        .get(stack.url(&format!("/bytes/{n}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.bytes().await.unwrap();
    assert_eq!(body.len() as u64, n);
    let upload = client
        .post(stack.url("/upload"))
        .body(reqwest::Body::wrap_stream(
            standin::pattern_stream(n).map(Ok::<_, std::io::Error>),
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 200);
    let json: serde_json::Value = serde_json::from_slice(&upload.bytes().await.unwrap()).unwrap();
    assert_eq!(json["sha256"], standin::pattern_sha256(n), "{json}");
    let mut ws = stack.ws(0).await.unwrap();
    ws.send(Message::text("over whatever carries the tunnel"))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, Message::text("over whatever carries the tunnel"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_blocked_falls_back_to_tcp_and_returns_to_quic_without_a_failed_request() {
    let stack = Stack::start_with(StackOptions {
        connectors: false,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let relay = UdpRelay::start(stack.edge.tunnel_addr(), true)
        .await
        .unwrap();
    let config = connector_config(
        &stack,
        &[relay.addr()],
        "transport = \"auto\"\n[reconnect]\ninitial = \"250ms\"\nmax = \"2s\"\nstable = \"3s\"",
    );
    let started = Instant::now();
    let mut connector = Connector::spawn(config).unwrap();
    let admin = connector.wait_ready(Duration::from_secs(20)).await.unwrap();
    let fallback = started.elapsed();
    eprintln!("connector serving over TLS/TCP {fallback:?} after start (UDP dropped)");
    assert!(
        fallback <= FALLBACK_BOUND,
        "fallback took {fallback:?}\n{}",
        connector.output()
    );
    assert!(relay.dropped() > 0, "the relay saw no QUIC at all");
    wait_transports(&stack, "tcp", 2, Duration::from_secs(15)).await;
    everything_works(&stack).await;
    assert_eq!(
        metric(
            admin,
            "doorless_connector_transport_connections{transport=\"tcp\"}"
        )
        .await,
        Some(2.0)
    );
    assert!(metric(admin, "doorless_connector_tcp_fallbacks_total").await >= Some(2.0));
    assert_eq!(
        metric(
            stack.edge.admin_addr(),
            "doorless_edge_connector_transports{site=\"home\",transport=\"tcp\"}"
        )
        .await,
        Some(2.0)
    );
    let status = e2e::admin_get_json(admin, "/status").await.unwrap();
    assert_eq!(status["transports"]["tcp"], 2, "{status}");
    assert!(
        connector
            .all_text()
            .contains("falling back to TLS over TCP"),
        "{}",
        connector.output()
    );

    // UDP comes back: light steady load while the slots move to QUIC and drain TCP.
    relay.set_blocked(false);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let load = {
        let client = stack.client(0, HttpVersion::Auto).unwrap();
        let url = stack.url("/");
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match client.get(&url).send().await {
                    Ok(r) => {
                        let status = r.status();
                        match r.bytes().await {
                            Ok(_) if status == 200 => {
                                ok.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(_) => failed.lock().unwrap().push(format!("status {status}")),
                            Err(e) => failed.lock().unwrap().push(format!("body {e:?}")),
                        }
                    }
                    Err(e) => failed.lock().unwrap().push(format!("{e:?}")),
                }
                // Pacing of the load, not synchronisation.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    let moved = Instant::now();
    wait_transports(&stack, "quic", 2, Duration::from_secs(45)).await;
    eprintln!("back on QUIC {:?} after UDP was restored", moved.elapsed());
    // Keep the load on a moment after the last TCP tunnel went away.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(e2e::POLL_INTERVAL).await;
    }
    stop.store(true, Ordering::SeqCst);
    load.await.unwrap();
    let failed = failed.lock().unwrap().clone();
    let ok = ok.load(Ordering::SeqCst);
    assert!(
        failed.is_empty(),
        "{} failed requests: {failed:?}",
        failed.len()
    );
    assert!(ok > 20, "only {ok} requests ran during the move");
    assert!(
        connector.all_text().contains("moving back to QUIC"),
        "{}",
        connector.output()
    );
    assert_eq!(
        metric(
            admin,
            "doorless_connector_transport_connections{transport=\"tcp\"}"
        )
        .await,
        Some(0.0)
    );
    everything_works(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_tcp_is_forced() {
    let stack = Stack::start_with(StackOptions {
        connectors: false,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let config = connector_config(&stack, &[stack.edge.tunnel_addr()], "transport = \"tcp\"");
    let connector = Connector::start(config).await.unwrap();
    let admin = connector.admin_addr().unwrap();
    wait_transports(&stack, "tcp", 2, Duration::from_secs(15)).await;
    everything_works(&stack).await;
    // Never tried QUIC, so never fell back.
    assert_eq!(
        metric(admin, "doorless_connector_tcp_fallbacks_total").await,
        Some(0.0)
    );
    assert_eq!(
        metric(
            admin,
            "doorless_connector_transport_connections{transport=\"quic\"}"
        )
        .await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_alpn_on_the_https_port_refuses_devices_and_strangers() {
    let stack = Stack::start().await.unwrap();
    let home = stack.home();
    let https = stack.edge.https_addr();
    let edge_admin = stack.edge.admin_addr();
    let refused = "doorless_edge_tunnel_refused_total{transport=\"tcp\",reason=\"handshake\"}";
    let before = metric(edge_admin, refused).await.unwrap();
    let tunnel_ca = pki::parse_certs(&home.token.tunnel_ca_pem).unwrap();

    // A device certificate (the site's client CA) offering the tunnel's ALPN: refused in the
    // TLS handshake, typed, like on QUIC.
    let device = transport::ClientTls {
        cert_chain: pki::parse_certs(&home.device.cert_pem).unwrap(),
        key: pki::parse_key(&home.device.key_pem).unwrap(),
        tunnel_ca: tunnel_ca.clone(),
        server_name: home.token.server_name.clone(),
    };
    let client = transport::TcpClient::new(&device, &transport::Tuning::default()).unwrap();
    let result = client.connect(https, Duration::from_secs(10)).await;
    let Err(transport::Error::HandshakeRefused(alert)) = result else {
        panic!("a device certificate must be refused, got {result:?}");
    };
    assert_eq!(
        alert.certificate_problem(),
        Some(transport::CertificateProblem::UnknownIssuer)
    );

    // A TLS client without any certificate offering the ALPN: refused as well.
    let mut roots = rustls::RootCertStore::empty();
    for ca in tunnel_ca {
        roots.add(ca).unwrap();
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![proto::ALPN_TCP.to_vec()];
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from(home.token.server_name.clone()).unwrap();
    let stranger = async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await?;
        Ok::<_, std::io::Error>(n)
    };
    let outcome = tokio::time::timeout(Duration::from_secs(10), stranger)
        .await
        .unwrap();
    assert!(
        !matches!(outcome, Ok(n) if n > 0),
        "a client without certificate got an answer: {outcome:?}"
    );

    // Counted; nothing registered; the connector's two QUIC tunnels untouched.
    let started = Instant::now();
    while metric(edge_admin, refused).await.unwrap() < before + 2.0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "refusals not counted\n{}",
            stack.edge.output()
        );
        tokio::time::sleep(e2e::POLL_INTERVAL * 5).await;
    }
    assert_eq!(tunnel_transports(&stack, "home").await, ["quic", "quic"]);
    assert_eq!(stack.ha_requests(), 0);
    // A browser on the same port sees no difference.
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let (status, _) = crate::get(&client, &stack.url("/")).await;
    assert_eq!(status, 200);
}
