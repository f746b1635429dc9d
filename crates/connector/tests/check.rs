//! `connector::check` against stand-ins on 127.0.0.1:0: a tiny Home Assistant (trusting or
//! not), edges that welcome, reject, present the wrong certificate, refuse ours, or stay silent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use connector::check::{self, Report, Timeouts};
use connector::config::{
    Config, RawConfig, RawLimits, RawListen, RawLog, RawReconnect, RawTunnel, Secret,
    TransportPolicy,
};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proto::{CloseCode, ControlEvent, ControlState, Reject, RejectCode, Welcome};
use tokio::net::TcpListener;
use transport::{ControlDriver, ServerEndpoint, ServerTls, Tuning};

const SHORT: Timeouts = Timeouts {
    http: Duration::from_secs(5),
    quic: Duration::from_secs(1),
};

const NORMAL: Timeouts = Timeouts {
    http: Duration::from_secs(5),
    quic: Duration::from_secs(5),
};

// === PKI and config ===

struct Pki {
    _dir: tempfile::TempDir,
    state: pki::StateDir,
    token: String,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let state =
        pki::StateDir::init(&dir.path().join("state"), &pki::InitOptions::default()).unwrap();
    state.add_site("home", &["ha.example.com".into()]).unwrap();
    let token = state.issue_connector("home", None).unwrap().encode();
    Pki {
        _dir: dir,
        state,
        token,
    }
}

fn config(token: &str, upstream: &str, edges: Vec<String>) -> Config {
    Config::from_raw(RawConfig {
        token: Some(Secret(token.to_owned())),
        token_file: None,
        edges,
        transport: TransportPolicy::Auto,
        tcp_edges: Vec::new(),
        upstream: upstream.to_owned(),
        connections: 1,
        listen: RawListen::default(),
        limits: RawLimits::default(),
        tunnel: RawTunnel::default(),
        reconnect: RawReconnect::default(),
        log: RawLog::default(),
        ..RawConfig::default()
    })
    .unwrap()
}

// === Stand-in Home Assistant ===

#[derive(Clone, Copy)]
enum Ha {
    /// Like HA without "use X-Forwarded-For" / with us outside `trusted_proxies`.
    Untrusted,
    /// Like HA trusting us: checks the headers as HA's forwarded middleware does.
    Trusting,
    /// Something that answers 400 to everything.
    AlwaysBadRequest,
}

async fn standin_ha(mode: Ha) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let service = service_fn(move |req: Request<Incoming>| async move {
                Ok::<_, Infallible>(answer(mode, &req))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    addr
}

fn answer(mode: Ha, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let all = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .collect()
    };
    let xff = all("x-forwarded-for");
    let ok = match mode {
        Ha::AlwaysBadRequest => false,
        Ha::Untrusted => xff.is_empty(),
        Ha::Trusting => {
            xff.is_empty()
                || (xff == ["203.0.113.7"]
                    && all("x-forwarded-proto") == ["https"]
                    && all("x-forwarded-host").len() == 1
                    && !all("x-forwarded-host")[0].is_empty())
        }
    };
    let ok = ok && headers.get(http::header::HOST).is_some();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    let mut response = Response::new(Full::new(Bytes::from_static(b"<html></html>")));
    *response.status_mut() = status;
    response
}

/// A free TCP port with nothing listening (bound, then released).
async fn refused_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

// === Stand-in edges ===

#[derive(Clone, Copy)]
enum Edge {
    Welcome,
    Reject,
}

/// The edge's tunnel listener with `tunnel` state's certificate, trusting `connectors`'
/// connector CA, answering each hello as `mode` says.
fn standin_edge(tunnel: &pki::StateDir, connectors: &pki::StateDir, mode: Edge) -> SocketAddr {
    let tls = ServerTls {
        cert_chain: pki::load_certs(&tunnel.tunnel_cert_path()).unwrap(),
        key: pki::load_key(&tunnel.tunnel_key_path()).unwrap(),
        connector_ca: pki::load_certs(&connectors.connector_ca_path()).unwrap(),
        reset_secret: None,
    };
    let endpoint = Arc::new(
        ServerEndpoint::bind("127.0.0.1:0".parse().unwrap(), tls, &Tuning::default()).unwrap(),
    );
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(edge_session(incoming, mode));
        }
    });
    addr
}

async fn edge_session(incoming: transport::Incoming, mode: Edge) {
    let Ok(conn) = incoming.accept(Duration::from_secs(5)).await else {
        return;
    };
    let Ok((send, recv)) = conn.accept().await else {
        return;
    };
    let state = ControlState::edge(std::time::Instant::now(), Duration::from_secs(30));
    let mut control = ControlDriver::new(send, recv, state);
    let Ok(ControlEvent::HelloReceived(hello)) = control.next_event().await else {
        conn.close(CloseCode::ProtocolError, "expected hello");
        return;
    };
    assert!(hello.software.ends_with("(check)"), "{}", hello.software);
    match mode {
        Edge::Welcome => control.state().accept(
            Welcome {
                version: proto::VERSION,
                site: "home".into(),
                connector_id: hello.connector_id,
                ping_interval_ms: 0,
                max_streams: 16,
            },
            std::time::Instant::now(),
        ),
        Edge::Reject => {
            control.state().reject(Reject {
                code: RejectCode::UnknownSite,
                text: "site is not configured on this edge".into(),
            });
            let _ = control.flush(Duration::from_secs(1)).await;
            conn.close(CloseCode::Rejected, "site is not configured on this edge");
            return;
        }
    }
    // Like the real edge: serve the control stream until the connector goes away.
    loop {
        match control.next_event().await {
            Ok(ControlEvent::PeerGoingAway(_)) | Err(_) => break,
            Ok(_) => {}
        }
    }
    conn.close(CloseCode::Normal, "session ended");
}

/// A UDP port that swallows everything: the QUIC handshake never gets an answer.
fn silent_udp() -> (std::net::UdpSocket, SocketAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

fn item<'a>(report: &'a Report, prefix: &str) -> &'a check::CheckItem {
    report
        .items
        .iter()
        .find(|i| i.name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no item {prefix:?} in\n{report}"))
}

// === Tests ===

#[tokio::test]
async fn untrusted_ha_prints_the_fix() {
    let pki = pki();
    let ha = standin_ha(Ha::Untrusted).await;
    let edge = standin_edge(&pki.state, &pki.state, Edge::Welcome);
    let config = config(&pki.token, &format!("http://{ha}"), vec![edge.to_string()]);
    let report = check::run(&config, NORMAL).await;
    let text = report.to_string();
    println!("{text}");
    assert!(!report.ok(), "{text}");
    assert!(item(&report, "Home Assistant reachable").ok(), "{text}");
    let trust = item(&report, "Home Assistant trusts");
    assert!(!trust.ok(), "{text}");
    for needle in [
        "400",
        "from 127.0.0.1",
        "Settings › System › Network › HTTP server",
        "add 127.0.0.1/32 to \"Trusted proxies\"",
        "use_x_forwarded_for: true",
        "trusted_proxies:",
        "- 127.0.0.1/32",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(item(&report, "Edge").ok(), "{text}");
}

#[tokio::test]
async fn trusting_ha_and_welcoming_edge_pass() {
    let pki = pki();
    let ha = standin_ha(Ha::Trusting).await;
    let edge = standin_edge(&pki.state, &pki.state, Edge::Welcome);
    let config = config(&pki.token, &format!("http://{ha}"), vec![edge.to_string()]);
    let report = check::run(&config, NORMAL).await;
    let text = report.to_string();
    println!("{text}");
    assert!(report.ok(), "{text}");
    assert_eq!(report.items.len(), 3, "{text}");
    assert!(
        text.contains("✓ Home Assistant trusts the connector as a proxy: Home Assistant accepts forwarded requests from 127.0.0.1"),
        "{text}"
    );
    assert!(text.contains("welcomed site home as connector-1"), "{text}");
    assert!(text.ends_with("3 passed, 0 failed: all good"), "{text}");
}

#[tokio::test]
async fn bad_request_without_forwarding_is_not_blamed_on_proxies() {
    let pki = pki();
    let ha = standin_ha(Ha::AlwaysBadRequest).await;
    let edge = standin_edge(&pki.state, &pki.state, Edge::Welcome);
    let config = config(&pki.token, &format!("http://{ha}"), vec![edge.to_string()]);
    let report = check::run(&config, NORMAL).await;
    let text = report.to_string();
    let trust = item(&report, "Home Assistant trusts");
    assert!(!trust.ok(), "{text}");
    assert!(
        trust.detail.contains("even without forwarding headers"),
        "{text}"
    );
    assert!(!text.contains("use_x_forwarded_for"), "{text}");
}

#[tokio::test]
async fn refused_upstream_names_the_url() {
    let pki = pki();
    let ha = refused_port().await;
    let edge = standin_edge(&pki.state, &pki.state, Edge::Welcome);
    let config = config(&pki.token, &format!("http://{ha}"), vec![edge.to_string()]);
    let report = check::run(&config, NORMAL).await;
    let text = report.to_string();
    println!("{text}");
    assert!(!report.ok(), "{text}");
    let reachable = item(&report, "Home Assistant reachable");
    assert!(!reachable.ok(), "{text}");
    assert!(reachable.detail.contains(&format!("http://{ha}")), "{text}");
    assert!(
        reachable.detail.contains("http://homeassistant:8123"),
        "{text}"
    );
    assert_eq!(
        item(&report, "Home Assistant trusts").status,
        check::Status::Skip,
        "{text}"
    );
}

#[tokio::test]
async fn silent_edge_says_udp_may_be_blocked() {
    let pki = pki();
    let ha = standin_ha(Ha::Trusting).await;
    let (_socket, udp) = silent_udp();
    let config = config(&pki.token, &format!("http://{ha}"), vec![udp.to_string()]);
    let started = std::time::Instant::now();
    let report = check::run(&config, SHORT).await;
    let text = report.to_string();
    println!("{text}");
    assert!(!report.ok(), "{text}");
    let edge = item(&report, "Edge");
    assert!(!edge.ok(), "{text}");
    assert!(
        edge.detail
            .contains(&format!("no answer over UDP from {udp}")),
        "{text}"
    );
    assert!(edge.detail.contains("UDP"), "{text}");
    assert!(edge.detail.contains("firewall"), "{text}");
    // Bounded by the QUIC timeout (plus the endpoint's close), not by the 10 s default.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn rejecting_edge_shows_the_reason() {
    let pki = pki();
    let ha = standin_ha(Ha::Trusting).await;
    let edge = standin_edge(&pki.state, &pki.state, Edge::Reject);
    let config = config(&pki.token, &format!("http://{ha}"), vec![edge.to_string()]);
    let report = check::run(&config, NORMAL).await;
    let text = report.to_string();
    let edge = item(&report, "Edge");
    assert!(!edge.ok(), "{text}");
    assert!(edge.detail.contains("rejected this connector"), "{text}");
    assert!(
        edge.detail.contains("site is not configured on this edge"),
        "{text}"
    );
}

#[tokio::test]
async fn edge_with_another_tunnel_certificate_fails_the_pin() {
    let pki = pki();
    let other = pki_other();
    let ha = standin_ha(Ha::Trusting).await;
    // The other edge's tunnel certificate, but it would accept our connector certificate.
    let edge = standin_edge(&other.state, &pki.state, Edge::Welcome);
    let config = config(&pki.token, &format!("http://{ha}"), vec![edge.to_string()]);
    let report = check::run(&config, NORMAL).await;
    let text = report.to_string();
    println!("{text}");
    let edge = item(&report, "Edge");
    assert!(!edge.ok(), "{text}");
    assert!(
        edge.detail.contains("does not match the token's pin"),
        "{text}"
    );
}

#[tokio::test]
async fn edge_refusing_our_certificate_says_so() {
    let pki = pki();
    let other = pki_other();
    let ha = standin_ha(Ha::Trusting).await;
    // Our pinned tunnel certificate, but it trusts only the other edge's connectors.
    let edge = standin_edge(&pki.state, &other.state, Edge::Welcome);
    let config = config(&pki.token, &format!("http://{ha}"), vec![edge.to_string()]);
    let report = check::run(&config, NORMAL).await;
    let text = report.to_string();
    println!("{text}");
    let edge = item(&report, "Edge");
    assert!(!edge.ok(), "{text}");
    assert!(
        edge.detail.contains("the edge refused our certificate"),
        "{text}"
    );
}

#[tokio::test]
async fn every_edge_is_checked() {
    let pki = pki();
    let ha = standin_ha(Ha::Trusting).await;
    let good = standin_edge(&pki.state, &pki.state, Edge::Welcome);
    let (_socket, silent) = silent_udp();
    let config = config(
        &pki.token,
        &format!("http://{ha}"),
        vec![good.to_string(), silent.to_string()],
    );
    let report = check::run(&config, SHORT).await;
    let text = report.to_string();
    assert_eq!(report.items.len(), 4, "{text}");
    assert!(item(&report, &format!("Edge {good}")).ok(), "{text}");
    assert!(!item(&report, &format!("Edge {silent}")).ok(), "{text}");
}

fn pki_other() -> Pki {
    pki()
}

// === The command line ===

fn cli(config: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_doorless-connector"))
        .args(["check", "--config"])
        .arg(config)
        .env_remove("DOORLESS_TOKEN")
        .env_remove("DOORLESS_UPSTREAM")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_exit_codes() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let edge = standin_edge(&pki.state, &pki.state, Edge::Welcome);

    // All good: 0.
    let ha = standin_ha(Ha::Trusting).await;
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "token = \"{}\"\nupstream = \"http://{ha}\"\nedges = [\"{edge}\"]\n",
            pki.token
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || cli(&good))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("site home, connector connector-1"),
        "{stdout}"
    );

    // HA answers 400 to forwarded requests: 1, and the fix on stdout.
    let ha = standin_ha(Ha::Untrusted).await;
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "token = \"{}\"\nupstream = \"http://{ha}\"\nedges = [\"{edge}\"]\n",
            pki.token
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || cli(&bad))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("use_x_forwarded_for: true"), "{stdout}");

    // Bad configuration: 64.
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "upstream = \"http://127.0.0.1:1\"\n").unwrap();
    let out = tokio::task::spawn_blocking(move || cli(&broken))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(78),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn cli_json(config: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_doorless-connector"))
        .args(["check", "--json", "--config"])
        .arg(config)
        .env_remove("DOORLESS_TOKEN")
        .env_remove("DOORLESS_UPSTREAM")
        .output()
        .unwrap()
}

/// `check --json`: the report as one JSON document on stdout (nothing else there), the same
/// exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_json_report() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let edge = standin_edge(&pki.state, &pki.state, Edge::Welcome);
    let write = |name: &str, ha: std::net::SocketAddr| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                "token = \"{}\"\nupstream = \"http://{ha}\"\nedges = [\"{edge}\"]\n",
                pki.token
            ),
        )
        .unwrap();
        path
    };
    let good = write("good.toml", standin_ha(Ha::Trusting).await);
    let out = tokio::task::spawn_blocking(move || cli_json(&good))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["site"], "home");
    assert_eq!(report["connector_id"], "connector-1");
    assert!(report["upstream"].as_str().unwrap().starts_with("http://"));
    assert_eq!(report["ok"], true);
    assert_eq!(
        (&report["passed"], &report["failed"], &report["skipped"]),
        (
            &serde_json::json!(3),
            &serde_json::json!(0),
            &serde_json::json!(0)
        )
    );
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 3, "{report}");
    assert_eq!(checks[0]["name"], "Home Assistant reachable");
    assert_eq!(
        checks[2]["name"],
        format!("Edge {edge} reachable over QUIC")
    );
    assert!(
        checks
            .iter()
            .all(|c| c["status"] == "pass" && c["detail"].is_string())
    );

    let bad = write("bad.toml", standin_ha(Ha::Untrusted).await);
    let out = tokio::task::spawn_blocking(move || cli_json(&bad))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["failed"], 1);
    let trusts = &report["checks"][1];
    assert_eq!(trusts["status"], "fail");
    assert!(
        trusts["detail"]
            .as_str()
            .unwrap()
            .contains("use_x_forwarded_for: true"),
        "{report}"
    );
}
