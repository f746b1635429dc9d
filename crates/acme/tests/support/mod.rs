//! Test support: the real ACME server comes from `pebble-harness` (Debian's pebble with a mock
//! DNS resolving every name to 127.0.0.1); here is a tiny TLS server that answers TLS-ALPN-01
//! from a challenge registry the way the edge's acceptor does, and helpers for the tests.

#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;
use std::sync::Arc;

use acme::{Challenges, is_tls_alpn_challenge};
use rcgen::{CertificateParams, KeyPair};
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;

pub(crate) use pebble_harness::{
    DEADLINE, ListenerCa, Pebble, PebbleOptions, TestResult, directory_url, free_port,
};

pub(crate) fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A TLS server on 127.0.0.1:0 that completes `acme-tls/1` handshakes from `challenges` and
/// refuses everything else: the edge's acceptor in miniature.
pub(crate) struct Responder {
    pub(crate) port: u16,
    task: JoinHandle<()>,
}

impl Responder {
    pub(crate) async fn start(challenges: Challenges) -> TestResult<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let challenges = challenges.clone();
                tokio::spawn(timeout(DEADLINE, answer(tcp, challenges)));
            }
        });
        Ok(Self { port, task })
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(tcp: TcpStream, challenges: Challenges) {
    let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp);
    let Ok(start) = acceptor.await else { return };
    let hello = start.client_hello();
    if !is_tls_alpn_challenge(&hello) {
        return;
    }
    let Some(config) = hello
        .server_name()
        .and_then(|name| challenges.server_config(name))
    else {
        return;
    };
    if let Ok(mut tls) = start.into_stream(config).await {
        let _ = tls.shutdown().await;
    }
}

/// Completes a real TLS handshake (in memory) between a server presenting `cert` and a client
/// that trusts only `root`, for `server_name`.
pub(crate) async fn handshake(
    cert: Arc<CertifiedKey>,
    root: &CertificateDer<'static>,
    server_name: &str,
) -> TestResult {
    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);
    impl rustls::server::ResolvesServerCert for Fixed {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let server = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(cert)));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone())?;
    let client = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let (a, b) = tokio::io::duplex(64 * 1024);
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
    let accept = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(a);
    let connect = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, b);
    let (served, connected) = timeout(DEADLINE, async { tokio::join!(accept, connect) }).await?;
    served?;
    connected?;
    Ok(())
}

/// Waits (bounded) until `rx` holds a value satisfying `pred`, returning a clone of it.
pub(crate) async fn wait_until<T: Clone + std::fmt::Debug>(
    rx: &mut watch::Receiver<T>,
    what: &str,
    mut pred: impl FnMut(&T) -> bool,
) -> TestResult<T> {
    let outcome = match timeout(DEADLINE, rx.wait_for(|v| pred(v))).await {
        Ok(Ok(value)) => Ok(value.clone()),
        Ok(Err(_)) => Err(format!("{what}: the task ended")),
        Err(_) => Err(format!("{what}: not within {DEADLINE:?}")),
    };
    outcome.map_err(|e| format!("{e}; last value: {:?}", *rx.borrow()).into())
}

/// A self-signed certificate (and key) for `names`, valid from `days_ago` to `days_left`.
pub(crate) fn self_signed(
    names: &[&str],
    days_ago: i64,
    days_left: i64,
) -> TestResult<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(days_ago);
    params.not_after = now + time::Duration::days(days_left);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub(crate) fn state_dir() -> TestResult<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("acme");
    Ok((dir, path))
}
