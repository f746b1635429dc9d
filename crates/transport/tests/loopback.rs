//! Both ends of the tunnel in one process on 127.0.0.1:0, with certificates from `pki`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pki::{Ca, Identity, KeyType, Validity};
use proto::{ControlEvent, ControlState, Hello, StreamError, Welcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use transport::{
    CertificateProblem, ClientEndpoint, ClientTls, ControlDriver, Error, ServerEndpoint, ServerTls,
    Tuning, Wait,
};

const LIMIT: Duration = Duration::from_secs(5);

struct Pki {
    tunnel_ca: Ca,
    connector_ca: Ca,
}

impl Pki {
    fn new() -> Self {
        Self {
            tunnel_ca: Ca::generate("test tunnel CA", Validity::days(30)).unwrap(),
            connector_ca: Ca::generate("test connector CA", Validity::days(30)).unwrap(),
        }
    }

    fn server(&self) -> ServerEndpoint {
        let cert = self
            .tunnel_ca
            .issue_server(&[pki::TUNNEL_SERVER_NAME.to_owned()], Validity::days(30))
            .unwrap();
        let tls = ServerTls {
            cert_chain: pki::parse_certs(&cert.cert_pem).unwrap(),
            key: pki::parse_key(&cert.key_pem).unwrap(),
            connector_ca: pki::parse_certs(self.connector_ca.cert_pem()).unwrap(),
            reset_secret: None,
        };
        ServerEndpoint::bind("127.0.0.1:0".parse().unwrap(), tls, &Tuning::default()).unwrap()
    }

    fn client(&self, signer: &Ca, identity: &Identity, peer: SocketAddr) -> ClientEndpoint {
        let cert = signer
            .issue_client(identity, Validity::days(30), KeyType::EcdsaP256)
            .unwrap();
        let tls = ClientTls {
            cert_chain: pki::parse_certs(&cert.cert_pem).unwrap(),
            key: pki::parse_key(&cert.key_pem).unwrap(),
            tunnel_ca: pki::parse_certs(self.tunnel_ca.cert_pem()).unwrap(),
            server_name: pki::TUNNEL_SERVER_NAME.to_owned(),
        };
        ClientEndpoint::new(peer, tls, &Tuning::default()).unwrap()
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[tokio::test]
async fn control_handshake_and_echo_stream() {
    let pki = Pki::new();
    let server = pki.server();
    let addr = server.local_addr().unwrap();
    let edge = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().accept(LIMIT).await.unwrap();
        let identity = Identity::from_cert_der(&conn.peer_certificate().unwrap()).unwrap();
        assert_eq!(identity, Identity::connector("home", "c1").unwrap());
        let (send, recv) = conn.accept().await.unwrap();
        let mut control = ControlDriver::new(send, recv, ControlState::edge(now(), LIMIT));
        let ControlEvent::HelloReceived(hello) = control.next_event().await.unwrap() else {
            panic!("expected hello");
        };
        assert_eq!(hello.connector_id, "c1");
        control.state().accept(
            Welcome {
                version: proto::VERSION,
                site: "home".into(),
                connector_id: "c1".into(),
                ping_interval_ms: 1000,
                max_streams: 8,
            },
            now(),
        );
        control.flush(LIMIT).await.unwrap();
        // A data stream: write, FIN, read the echo.
        let (mut send, mut recv) = conn.open(LIMIT).await.unwrap();
        send.write_all(b"ping through the tunnel").await.unwrap();
        send.finish();
        let mut echoed = Vec::new();
        recv.read_to_end(&mut echoed).await.unwrap();
        assert_eq!(echoed, b"ping through the tunnel");
        // A reset carries its code to the peer.
        let (mut send, _recv) = conn.open(LIMIT).await.unwrap();
        send.write_all(b"x").await.unwrap();
        send.reset(StreamError::UpstreamTimeout);
        // Keep the connection alive until the client has seen the reset.
        let _ = tokio::time::timeout(LIMIT, conn.closed()).await;
    });

    let client = pki.client(
        &pki.connector_ca,
        &Identity::connector("home", "c1").unwrap(),
        addr,
    );
    let conn = client.connect(addr, LIMIT).await.unwrap();
    let (send, recv) = conn.open(LIMIT).await.unwrap();
    let hello = Hello {
        version: proto::VERSION,
        connector_id: "c1".into(),
        software: "test".into(),
        purpose: proto::Purpose::Serve,
    };
    let mut control = ControlDriver::new(send, recv, ControlState::connector(hello, now(), LIMIT));
    let ControlEvent::Welcomed(welcome) = control.next_event().await.unwrap() else {
        panic!("expected welcome");
    };
    assert_eq!(welcome.site, "home");
    // The default controller reports its window reductions through the connection (the
    // connector's metrics read them); none on an idle loopback path.
    let reductions = conn.reductions().expect("loss_tolerant is the default");
    assert_eq!(reductions.queue, 0);

    let (mut send, mut recv) = conn.accept().await.unwrap();
    let mut data = Vec::new();
    recv.read_to_end(&mut data).await.unwrap();
    send.write_all(&data).await.unwrap();
    send.shutdown().await.unwrap();

    let (_send, mut recv) = conn.accept().await.unwrap();
    let mut buf = Vec::new();
    // Through tokio's AsyncRead the reset is an io::Error that converts back, typed.
    let err = recv.read_to_end(&mut buf).await.unwrap_err();
    assert!(
        matches!(
            transport::Error::from(err),
            Error::StreamReset(StreamError::UpstreamTimeout)
        ),
        "reset code lost"
    );
    conn.close(proto::CloseCode::Normal, "done");
    edge.await.unwrap();
}

#[tokio::test]
async fn device_certificate_cannot_open_a_tunnel() {
    let pki = Pki::new();
    let server = pki.server();
    let addr = server.local_addr().unwrap();
    let (refused_tx, refused_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let incoming = server.accept().await.unwrap();
        // The handshake must fail: the certificate is not from the connector CA.
        let _ = refused_tx.send(incoming.accept(LIMIT).await.err());
    });
    // Signed by some other CA (e.g. a site's device CA).
    let device_ca = Ca::generate("a site's device CA", Validity::days(30)).unwrap();
    let client = pki.client(
        &device_ca,
        &Identity::device("home", "phone").unwrap(),
        addr,
    );
    // With TLS 1.3 the client learns of the rejection after its side of the handshake: the
    // first use of the connection fails.
    let result = async {
        let conn = client.connect(addr, LIMIT).await?;
        let (mut send, mut recv) = conn.open(LIMIT).await?;
        send.write_all(b"hello?").await?;
        let mut buf = [0u8; 1];
        recv.read_exact(&mut buf).await?;
        Ok::<_, transport::Error>(())
    }
    .await;
    assert!(
        result.is_err(),
        "a device certificate must not open a tunnel"
    );
    // Each side says why, typed: the edge refused an unknown issuer, and told the client
    // with the matching TLS alert.
    let refused = tokio::time::timeout(LIMIT, refused_rx)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            refused,
            Some(Error::InvalidPeerCertificate(
                CertificateProblem::UnknownIssuer
            ))
        ),
        "{refused:?}"
    );
    let Err(Error::HandshakeRefused(alert)) = result else {
        panic!("expected a refused handshake, got {result:?}");
    };
    assert_eq!(
        alert.certificate_problem(),
        Some(CertificateProblem::UnknownIssuer)
    );
}

#[tokio::test]
async fn connector_refuses_an_edge_outside_its_pinned_ca() {
    let pki = Pki::new();
    let impostor = Pki::new();
    // The impostor edge has a valid-looking certificate from another tunnel CA.
    let server = impostor.server();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            let _ = incoming.accept(LIMIT).await;
        }
    });
    let client = pki.client(
        &pki.connector_ca,
        &Identity::connector("home", "c1").unwrap(),
        addr,
    );
    let result = client.connect(addr, LIMIT).await;
    assert!(result.is_err());
    // The impostor's CA has the same name as ours, so its certificate names a trusted issuer
    // whose key did not sign it.
    assert!(
        matches!(
            result,
            Err(Error::InvalidPeerCertificate(
                CertificateProblem::BadSignature
            ))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn silent_peer_times_out_typed() {
    let pki = Pki::new();
    // A UDP port that swallows everything: the handshake never gets an answer.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let client = pki.client(
        &pki.connector_ca,
        &Identity::connector("home", "c1").unwrap(),
        addr,
    );
    let result = client.connect(addr, Duration::from_millis(300)).await;
    assert!(
        matches!(result, Err(Error::TimedOut(Wait::Handshake))),
        "{result:?}"
    );
}

#[tokio::test]
async fn close_code_and_reason_reach_the_peer() {
    let pki = Pki::new();
    let server = pki.server();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        let conn = server.accept().await.unwrap().accept(LIMIT).await.unwrap();
        let _ = conn.accept().await;
        conn.close(proto::CloseCode::Revoked, "connector certificate revoked");
        // Keep the endpoint until the close went out.
        server.wait_idle(LIMIT).await;
    });
    let client = pki.client(
        &pki.connector_ca,
        &Identity::connector("home", "c1").unwrap(),
        addr,
    );
    let conn = client.connect(addr, LIMIT).await.unwrap();
    let (mut send, _recv) = conn.open(LIMIT).await.unwrap();
    // The server only sees the stream once data arrives on it.
    send.write_all(b"x").await.unwrap();
    let reason = conn.close_reason(LIMIT).await;
    let Some(Error::ClosedByPeer { code, reason }) = reason else {
        panic!("expected a close by the peer, got {reason:?}");
    };
    assert_eq!(code, proto::CloseCode::Revoked);
    assert_eq!(reason, "connector certificate revoked");
    // Using the connection now says the same.
    assert!(matches!(
        conn.open(LIMIT).await,
        Err(Error::ClosedByPeer {
            code: proto::CloseCode::Revoked,
            ..
        })
    ));
}

#[tokio::test]
async fn reject_arrives_before_the_close() {
    let pki = Pki::new();
    let server = pki.server();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        let conn = server.accept().await.unwrap().accept(LIMIT).await.unwrap();
        let (send, recv) = conn.accept().await.unwrap();
        let mut control = ControlDriver::new(send, recv, ControlState::edge(now(), LIMIT));
        let event = control.next_event().await.unwrap();
        assert!(matches!(event, ControlEvent::HelloReceived(_)), "{event:?}");
        control.state().reject(proto::Reject {
            code: proto::RejectCode::UnknownSite,
            text: "site is not configured on this edge".into(),
        });
        // Closing right after `finish` must not lose the Reject.
        control.finish(LIMIT).await.unwrap();
        conn.close(proto::CloseCode::Rejected, "rejected");
        server.wait_idle(LIMIT).await;
    });
    let client = pki.client(
        &pki.connector_ca,
        &Identity::connector("home", "c1").unwrap(),
        addr,
    );
    let conn = client.connect(addr, LIMIT).await.unwrap();
    let (send, recv) = conn.open(LIMIT).await.unwrap();
    let hello = Hello {
        version: proto::VERSION,
        connector_id: "c1".into(),
        software: "test".into(),
        purpose: proto::Purpose::Serve,
    };
    let mut control = ControlDriver::new(send, recv, ControlState::connector(hello, now(), LIMIT));
    let event = control.next_event().await;
    let Ok(ControlEvent::Rejected(reject)) = event else {
        panic!("expected the Reject, got {event:?}");
    };
    assert_eq!(reject.code, proto::RejectCode::UnknownSite);
}
