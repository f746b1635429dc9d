//! `https://` upstreams: the stand-in Home Assistant behind a TLS-terminating front (a
//! tokio-rustls server with a certificate from a test CA, relaying bytes to the stand-in's TCP
//! port), reached by the real connector verified by `upstream_ca`, by a pinned certificate,
//! with the insecure opt-out, and refused (502, counted as `tls`) when nothing vouches for it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use e2e::{Connector, ConnectorConfig, HttpVersion, Stack, StackOptions};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::get;

/// A TLS server in front of `target`: terminates TLS, relays the bytes both ways.
struct TlsFront {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFront {
    async fn start(target: SocketAddr, chain: Vec<CertificateDer<'static>>, key: Vec<u8>) -> Self {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                conns.spawn(async move {
                    let Ok(Ok(mut tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        Self { addr, task }
    }
}

/// A test CA and a server certificate it signed for `localhost` and `127.0.0.1`.
struct Certs {
    ca_pem: String,
    leaf: CertificateDer<'static>,
    leaf_key: Vec<u8>,
}

fn certs() -> Certs {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test home CA");
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    Certs {
        ca_pem: ca_cert.pem(),
        leaf: leaf.der().clone(),
        leaf_key: leaf_key.serialize_der(),
    }
}

/// A stack without connectors; the home site's stand-in behind a TLS front serving `chain`.
async fn stack_with_front(chain: Vec<CertificateDer<'static>>, key: Vec<u8>) -> (Stack, TlsFront) {
    let stack = Stack::start_with(StackOptions {
        connectors: false,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let front = TlsFront::start(stack.home().ha.addr, chain, key).await;
    (stack, front)
}

async fn connector(stack: &Stack, upstream: String, extra: &str) -> Connector {
    let mut config = ConnectorConfig::new(stack.home().token.encode(), stack.home().ha.addr);
    config.upstream = upstream;
    config.extra_toml = Some(extra.to_owned());
    Connector::start(config).await.unwrap()
}

async fn upstream_errors(connector: &Connector, kind: &str) -> f64 {
    let admin = connector.admin_addr().unwrap();
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("doorless_connector_upstream_errors_total{{kind=\"{kind}\"}}");
    text.lines()
        .filter(|l| l.starts_with(&series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `doorless-connector check` with the same upstream settings: exit status and stdout+stderr.
async fn check(stack: &Stack, dir: &Path, upstream: &str, extra: &str) -> (bool, String) {
    let path = dir.join("check.toml");
    let token = stack.home().token.encode();
    let toml = format!(
        "token = \"{token}\"\nupstream = \"{upstream}\"\n{extra}\n[listen]\nadmin = \"127.0.0.1:0\"\n"
    );
    std::fs::write(&path, toml).unwrap();
    let (status, out, err) = e2e::run_to_exit(
        &e2e::binaries().connector,
        &["check", "--config", path.to_str().unwrap()],
        &[],
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    (status.success(), format!("{out}\n{err}"))
}

fn sha256_hex(der: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Verified against `upstream_ca` with SNI `localhost`: requests and a WebSocket pass, and
/// `check` passes over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_verified_by_ca_file_serves_http_and_websocket() {
    let certs = certs();
    let (stack, front) = stack_with_front(vec![certs.leaf.clone()], certs.leaf_key.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &certs.ca_pem).unwrap();
    let upstream = format!("https://localhost:{}", front.addr.port());
    let extra = format!("upstream_ca = \"{}\"", ca.display());
    let connector = connector(&stack, upstream.clone(), &extra).await;

    let client = stack.client(0, HttpVersion::Http1).unwrap();
    let (status, _) = get(&client, &stack.url("/")).await;
    assert_eq!(status, 200);
    let seen = stack.home().ha.last_seen().expect("the request reached HA");
    assert_eq!(seen.header_all("x-forwarded-proto"), ["https"]);

    let mut ws = stack.ws(0).await.unwrap();
    ws.send(Message::text("over TLS to HA")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .expect("no WebSocket message within 15 s")
        .expect("WebSocket ended")
        .expect("WebSocket error");
    assert_eq!(echo, Message::text("over TLS to HA"));
    assert_eq!(stack.home().ha.recorder.websockets_open(), 1);
    assert_eq!(upstream_errors(&connector, "tls").await, 0.0);

    let (ok, output) = check(&stack, dir.path(), &upstream, &extra).await;
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!("✓ Home Assistant reachable: {upstream}")),
        "{output}"
    );
}

/// An IP upstream (no SNI) with the certificate pinned by its SHA-256: 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_pinned_certificate_serves() {
    let certs = certs();
    let (stack, front) = stack_with_front(vec![certs.leaf.clone()], certs.leaf_key.clone()).await;
    let pin = sha256_hex(&certs.leaf);
    let upstream = format!("https://127.0.0.1:{}", front.addr.port());
    let _connector = connector(
        &stack,
        upstream,
        &format!("upstream_pin_sha256 = \"{pin}\""),
    )
    .await;
    let client = stack.client(0, HttpVersion::Http1).unwrap();
    let (status, _) = get(&client, &stack.url("/")).await;
    assert_eq!(status, 200);
}

/// A self-signed certificate: refused (502, counted as `tls`, `check` fails naming TLS) unless
/// `upstream_tls_insecure`, which serves and warns at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_self_signed_is_502_unless_insecure() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (stack, front) = stack_with_front(vec![cert.der().clone()], key.serialize_der()).await;
    let upstream = format!("https://127.0.0.1:{}", front.addr.port());
    let client = stack.client(0, HttpVersion::Http1).unwrap();

    let mut strict = connector(&stack, upstream.clone(), "").await;
    let before = stack.home().ha.requests();
    let (status, _) = get(&client, &stack.url("/")).await;
    assert_eq!(status, 502);
    assert_eq!(upstream_errors(&strict, "tls").await, 1.0);
    assert_eq!(upstream_errors(&strict, "connect").await, 0.0);
    assert_eq!(stack.home().ha.requests(), before, "nothing reached HA");
    let dir = tempfile::tempdir().unwrap();
    let (ok, output) = check(&stack, dir.path(), &upstream, "").await;
    assert!(!ok, "{output}");
    assert!(output.contains("TLS handshake failed"), "{output}");
    // Drained, not killed: the edge stops routing to it before the next one serves.
    strict.terminate().unwrap();
    strict.wait_exit(Duration::from_secs(30)).await.unwrap();

    let insecure = connector(&stack, upstream, "upstream_tls_insecure = true").await;
    let (status, _) = get(&client, &stack.url("/")).await;
    assert_eq!(status, 200);
    assert!(
        insecure.output().contains("upstream_tls_insecure"),
        "the start must warn: {}",
        insecure.output()
    );
}

/// A TCP server that accepts and never answers the ClientHello (it reads and discards what
/// comes, holding the connection open).
struct Silent {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Silent {
    async fn start() -> Self {
        use tokio::io::AsyncReadExt as _;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                conns.spawn(async move {
                    let mut sink = [0u8; 4096];
                    while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        Self {
            addr,
            task,
            accepted,
        }
    }
}

/// An `https://` upstream that accepts TCP and never answers the ClientHello: the request
/// fails after `limits.upstream_tls_handshake_timeout` (not the 90 s `upstream_timeout`) with
/// 504, counted by the connector as `tls_timeout` and by the edge as `upstream_timeout`
/// blamed on the upstream; `check` says the handshake did not complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_that_never_answers_the_handshake_is_504_after_its_own_timeout() {
    let stack = Stack::start_with(StackOptions {
        connectors: false,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let silent = Silent::start().await;
    let upstream = format!("https://127.0.0.1:{}", silent.addr.port());
    // Insecure, so that nothing but the handshake's silence can fail it.
    let extra = "upstream_tls_insecure = true\n[limits]\nupstream_tls_handshake_timeout = \"1s\"";
    let connector = connector(&stack, upstream.clone(), extra).await;
    let client = stack.client(0, HttpVersion::Http1).unwrap();

    let started = std::time::Instant::now();
    let (status, _) = get(&client, &stack.url("/")).await;
    let elapsed = started.elapsed();
    assert_eq!(status, 504);
    assert!(
        elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(15),
        "answered after {elapsed:?}: the handshake timeout is 1 s, upstream_timeout 90 s"
    );
    assert!(silent.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(upstream_errors(&connector, "tls_timeout").await, 1.0);
    for kind in ["tls", "timeout", "connect"] {
        assert_eq!(upstream_errors(&connector, kind).await, 0.0, "{kind}");
    }
    let edge_errors = stack
        .edge
        .metric(
            "doorless_edge_request_errors_total{site=\"home\",blame=\"upstream\",reason=\"upstream_timeout\"}",
        )
        .await
        .unwrap();
    assert_eq!(edge_errors, 1.0);
    assert_eq!(stack.home().ha.requests(), 0);

    let dir = tempfile::tempdir().unwrap();
    let (ok, output) = check(&stack, dir.path(), &upstream, extra).await;
    assert!(!ok, "{output}");
    assert!(
        output.contains("the TLS handshake did not complete within 1 s"),
        "{output}"
    );
}
