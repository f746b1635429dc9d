//! How the real edge counts a client that hangs up after our CertificateRequest instead of
//! answering it (Chromium's first handshake with a site, before it picks a certificate and
//! reconnects): `result="aborted", reason="client_aborted"`, not a denial, no denial log line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::{HOME_HOST, Stack};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Notes that the server asked for a certificate; offers none.
#[derive(Debug, Default)]
struct Asked(AtomicBool);

impl ResolvesClientCert for Asked {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.store(true, Ordering::SeqCst);
        None
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// How the client leaves once it has read our CertificateRequest.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// TCP FIN.
    Close,
    /// TCP RST (linger 0), as a socket closed with unread data.
    Reset,
}

/// Runs a handshake until the server's CertificateRequest has been read, then leaves without
/// sending anything more.
async fn abort_after_certificate_request(
    stack: &Stack,
    version: &'static rustls::SupportedProtocolVersion,
    leave: Leave,
) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&stack.server_ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let asked = Arc::new(Asked::default());
    let mut config = rustls::ClientConfig::builder_with_protocol_versions(&[version])
        .with_root_certificates(roots)
        .with_client_cert_resolver(asked.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = ServerName::try_from(HOME_HOST).unwrap();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut tcp = tokio::net::TcpStream::connect(stack.edge.https_addr())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 16 * 1024];
        while !asked.0.load(Ordering::SeqCst) {
            let mut out = Vec::new();
            while tls.wants_write() {
                tls.write_tls(&mut out).unwrap();
            }
            tcp.write_all(&out).await.unwrap();
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "the edge closed before its CertificateRequest");
            tls.read_tls(&mut &buf[..n]).unwrap();
            tls.process_new_packets().unwrap();
        }
    })
    .await
    .unwrap();
    // Whatever rustls queued in answer (its Certificate, Finished) is never sent.
    match leave {
        Leave::Close => {
            tcp.shutdown().await.unwrap();
            // Wait for the edge to close its side, so its metrics are final when we look.
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest)).await;
        }
        Leave::Reset => {
            #[allow(deprecated)]
            tcp.set_linger(Some(Duration::ZERO)).unwrap();
            drop(tcp);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_after_the_certificate_request_aborted_and_was_not_denied() {
    let stack = Stack::start().await.unwrap();
    let aborted = "doorless_edge_tls_handshakes_total{site=\"home\",result=\"aborted\",reason=\"client_aborted\"}";
    let denied = "doorless_edge_tls_handshakes_total{site=\"home\",result=\"denied\"";
    let denied_before = stack.edge.metric(denied).await.unwrap();
    let mut expected = stack.edge.metric(aborted).await.unwrap();
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for leave in [Leave::Close, Leave::Reset] {
            abort_after_certificate_request(&stack, version, leave).await;
            expected += 1.0;
            e2e::poll_until(
                &format!("{version:?} {leave:?} counted as client_aborted"),
                Duration::from_secs(10),
                || async { (stack.edge.metric(aborted).await.ok()? == expected).then_some(()) },
            )
            .await
            .unwrap();
        }
    }
    assert_eq!(stack.edge.metric(denied).await.unwrap(), denied_before);
    assert!(
        !stack.edge.output().contains("connection denied"),
        "an aborted handshake is not logged as a denial"
    );
    // A client that does answer, without a certificate, is still denied.
    let client = stack
        .client_with(HOME_HOST, None, e2e::HttpVersion::Http1)
        .unwrap();
    crate::assert_refused(&client, &stack.url("/")).await;
    e2e::poll_until(
        "no_cert denial counted",
        Duration::from_secs(10),
        || async { (stack.edge.metric(denied).await.ok()? == denied_before + 1.0).then_some(()) },
    )
    .await
    .unwrap();
}
