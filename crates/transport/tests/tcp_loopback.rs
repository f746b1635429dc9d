//! The TLS/TCP transport, both ends in one process on 127.0.0.1:0: the edge's HTTPS-side
//! accept (a plain TLS acceptor with the tunnel endpoint's TCP configuration, as the edge's
//! listener does for ALPN `doorless-tcp/1`) and the connector's `TcpClient`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use pki::{Ca, Identity, KeyType, Validity};
use proto::{ControlEvent, ControlState, Hello, StreamError, Welcome};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use transport::{
    CertificateProblem, ClientTls, Connection, ControlDriver, Error, ServerEndpoint, ServerTls,
    TcpClient, Transport, Tuning, Wait,
};

const LIMIT: Duration = Duration::from_secs(5);

struct Pki {
    tunnel_ca: Ca,
    connector_ca: Ca,
}

/// An edge side: the tunnel endpoint (QUIC bound too, unused) and a TCP listener standing in
/// for the HTTPS port.
struct Edge {
    endpoint: Arc<ServerEndpoint>,
    listener: TcpListener,
}

impl Edge {
    async fn accept(&self) -> Result<Connection, Error> {
        let (tcp, _) = self.listener.accept().await?;
        let acceptor = tokio_rustls::TlsAcceptor::from(self.endpoint.tcp_tls_config());
        let tls = acceptor.accept(tcp).await?;
        self.endpoint.accept_tcp(tls, LIMIT).await
    }
}

impl Pki {
    fn new() -> Self {
        Self {
            tunnel_ca: Ca::generate("test tunnel CA", Validity::days(30)).unwrap(),
            connector_ca: Ca::generate("test connector CA", Validity::days(30)).unwrap(),
        }
    }

    async fn edge(&self, tuning: &Tuning) -> Edge {
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
        let endpoint = ServerEndpoint::bind("127.0.0.1:0".parse().unwrap(), tls, tuning).unwrap();
        Edge {
            endpoint: Arc::new(endpoint),
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn client(&self, signer: &Ca, identity: &Identity, tuning: &Tuning) -> TcpClient {
        let cert = signer
            .issue_client(identity, Validity::days(30), KeyType::EcdsaP256)
            .unwrap();
        let tls = ClientTls {
            cert_chain: pki::parse_certs(&cert.cert_pem).unwrap(),
            key: pki::parse_key(&cert.key_pem).unwrap(),
            tunnel_ca: pki::parse_certs(self.tunnel_ca.cert_pem()).unwrap(),
            server_name: pki::TUNNEL_SERVER_NAME.to_owned(),
        };
        TcpClient::new(&tls, tuning).unwrap()
    }

    fn connector(&self, tuning: &Tuning) -> TcpClient {
        self.client(
            &self.connector_ca,
            &Identity::connector("home", "c1").unwrap(),
            tuning,
        )
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn hello() -> Hello {
    Hello {
        version: proto::VERSION,
        connector_id: "c1".into(),
        software: "test".into(),
        purpose: proto::Purpose::Serve,
    }
}

/// A connected pair: (edge side, connector side).
async fn pair(pki: &Pki, tuning: &Tuning) -> (Connection, Connection, Edge) {
    let edge = pki.edge(tuning).await;
    let addr = edge.listener.local_addr().unwrap();
    let client = pki.connector(tuning);
    let (edge_conn, conn) = tokio::join!(edge.accept(), client.connect(addr, LIMIT));
    (edge_conn.unwrap(), conn.unwrap(), edge)
}

#[tokio::test]
async fn control_handshake_and_streams_both_ways() {
    let pki = Pki::new();
    let (edge, conn, _keep) = pair(&pki, &Tuning::default()).await;
    assert_eq!(edge.transport(), Transport::Tcp);
    assert_eq!(conn.transport(), Transport::Tcp);
    let identity = Identity::from_cert_der(&edge.peer_certificate().unwrap()).unwrap();
    assert_eq!(identity, Identity::connector("home", "c1").unwrap());

    let edge_task = tokio::spawn(async move {
        let (send, recv) = edge.accept_control().await.unwrap();
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
        // Data stream: write, FIN, read the echo (bigger than one frame and one window step).
        let payload: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let (mut send, mut recv) = edge.open(LIMIT).await.unwrap();
        let writer = {
            let payload = payload.clone();
            tokio::spawn(async move {
                send.write_all(&payload).await.unwrap();
                send.finish();
                send
            })
        };
        let mut echoed = Vec::new();
        recv.read_to_end(&mut echoed).await.unwrap();
        assert_eq!(echoed, payload);
        drop(writer.await.unwrap());
        // The edge never accepts data streams over TCP; the control stream is taken once.
        assert!(edge.accept_control().await.is_err());
        (edge, control)
    });

    let (send, recv) = conn.open_control(LIMIT).await.unwrap();
    let mut control =
        ControlDriver::new(send, recv, ControlState::connector(hello(), now(), LIMIT));
    let ControlEvent::Welcomed(welcome) = control.next_event().await.unwrap() else {
        panic!("expected welcome");
    };
    assert_eq!(welcome.site, "home");
    // The connector cannot open data streams over TCP.
    assert!(conn.open(LIMIT).await.is_err());

    let (mut send, mut recv) = conn.accept().await.unwrap();
    let mut data = Vec::new();
    recv.read_to_end(&mut data).await.unwrap();
    send.write_all(&data).await.unwrap();
    send.shutdown().await.unwrap();
    let (edge, _control) = edge_task.await.unwrap();
    // Keep-alive PINGs give an RTT.
    let started = Instant::now();
    while edge.stats().rtt.is_zero() && started.elapsed() < LIMIT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!edge.stats().rtt.is_zero(), "no RTT from the h2 PING");
    conn.close(proto::CloseCode::Normal, "done");
}

#[tokio::test]
async fn reset_and_stop_carry_their_codes() {
    let pki = Pki::new();
    let (edge, conn, _keep) = pair(&pki, &Tuning::default()).await;
    // Edge resets after a byte: the connector's read fails with the code, typed, also
    // through tokio's AsyncRead.
    let (mut send, _recv) = edge.open(LIMIT).await.unwrap();
    send.write_all(b"x").await.unwrap();
    let (_csend, mut crecv) = conn.accept().await.unwrap();
    let mut one = [0u8; 1];
    crecv.read_exact(&mut one).await.unwrap();
    send.reset(StreamError::UpstreamTimeout);
    let mut buf = Vec::new();
    let err = crecv.read_to_end(&mut buf).await.unwrap_err();
    assert!(
        matches!(
            Error::from(err),
            Error::StreamReset(StreamError::UpstreamTimeout)
        ),
        "reset code lost"
    );

    // The connector stops reading: the edge's writes fail with the code.
    let (mut send, _recv) = edge.open(LIMIT).await.unwrap();
    send.write_all(b"hello").await.unwrap();
    let (_csend, mut crecv) = conn.accept().await.unwrap();
    let mut five = [0u8; 5];
    crecv.read_exact(&mut five).await.unwrap();
    crecv.stop(StreamError::Refused);
    let stopped = tokio::time::timeout(LIMIT, send.stopped()).await.unwrap();
    assert_eq!(stopped, Some(StreamError::Refused));
    let started = Instant::now();
    let err = loop {
        match send.write_all(&[0u8; 1024]).await {
            Err(e) => break e,
            Ok(()) => assert!(started.elapsed() < LIMIT, "writes kept succeeding"),
        }
    };
    assert!(
        matches!(err, Error::StreamStopped(StreamError::Refused)),
        "{err:?}"
    );

    // The connector's response reset reaches the edge's reader.
    let (mut send, mut recv) = edge.open(LIMIT).await.unwrap();
    send.finish();
    let (mut csend, _crecv) = conn.accept().await.unwrap();
    csend.write_all(b"partial").await.unwrap();
    csend.reset(StreamError::UpstreamConnect);
    let mut buf = Vec::new();
    let err = recv.read_to_end(&mut buf).await.unwrap_err();
    assert!(matches!(
        Error::from(err),
        Error::StreamReset(StreamError::UpstreamConnect)
    ));
}

#[tokio::test]
async fn slow_reader_bounds_what_the_writer_gets_ahead() {
    let pki = Pki::new();
    let window: u32 = 256 * 1024;
    let tuning = Tuning {
        stream_window: window,
        connection_window: 4 * window,
        ..Tuning::default()
    };
    let (edge, conn, _keep) = pair(&pki, &tuning).await;
    let (mut send, _recv) = edge.open(LIMIT).await.unwrap();
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total: u64 = 8 * 1024 * 1024;
    let writer = {
        let written = written.clone();
        tokio::spawn(async move {
            let chunk = vec![7u8; 64 * 1024];
            let mut sent = 0;
            while sent < total {
                let want = usize::try_from(total - sent).unwrap().min(chunk.len());
                let n = send.write_some(&chunk[..want]).await.unwrap();
                sent += n as u64;
                written.store(sent, std::sync::atomic::Ordering::SeqCst);
            }
            send.finish();
        })
    };
    let (_csend, mut recv) = conn.accept().await.unwrap();
    let mut read: u64 = 0;
    let mut max_ahead = 0u64;
    while let Some(chunk) = recv.read_chunk(16 * 1024).await.unwrap() {
        read += chunk.len() as u64;
        // A slow reader: the writer may be at most one window (plus the h2 send buffer that
        // the window admits, and what is in flight) ahead of it.
        if read % (512 * 1024) < 16 * 1024 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ahead = written
            .load(std::sync::atomic::Ordering::SeqCst)
            .saturating_sub(read);
        max_ahead = max_ahead.max(ahead);
    }
    writer.await.unwrap();
    assert_eq!(read, total);
    assert!(
        max_ahead <= u64::from(window) + 128 * 1024,
        "writer got {max_ahead} bytes ahead of a slow reader (window {window})"
    );
}

#[tokio::test]
async fn many_concurrent_streams() {
    let pki = Pki::new();
    let (edge, conn, _keep) = pair(&pki, &Tuning::default()).await;
    let server = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..300 {
            let (mut send, mut recv) = conn.accept().await.unwrap();
            tasks.push(tokio::spawn(async move {
                let mut data = Vec::new();
                recv.read_to_end(&mut data).await.unwrap();
                data.reverse();
                send.write_all(&data).await.unwrap();
                send.finish();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        conn
    });
    let mut clients = Vec::new();
    for i in 0..300u32 {
        let edge = edge.clone();
        clients.push(tokio::spawn(async move {
            let (mut send, mut recv) = edge.open(LIMIT).await.unwrap();
            let msg = format!("stream {i} says hello").into_bytes();
            send.write_all(&msg).await.unwrap();
            send.finish();
            let mut back = Vec::new();
            recv.read_to_end(&mut back).await.unwrap();
            back.reverse();
            assert_eq!(back, msg);
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let _conn = server.await.unwrap();
}

#[tokio::test]
async fn device_certificate_is_refused_typed() {
    let pki = Pki::new();
    let edge = pki.edge(&Tuning::default()).await;
    let addr = edge.listener.local_addr().unwrap();
    let device_ca = Ca::generate("a site's device CA", Validity::days(30)).unwrap();
    let client = pki.client(
        &device_ca,
        &Identity::device("home", "phone").unwrap(),
        &Tuning::default(),
    );
    let (refused, result) = tokio::join!(edge.accept(), client.connect(addr, LIMIT));
    let Err(refused) = refused else {
        panic!("the edge accepted a device certificate");
    };
    // The TLS acceptor refused it; the rustls verdict is inside the io::Error.
    assert!(matches!(refused, Error::Io(_)), "{refused:?}");
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
    let edge = impostor.edge(&Tuning::default()).await;
    let addr = edge.listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = edge.accept().await;
    });
    let result = pki.connector(&Tuning::default()).connect(addr, LIMIT).await;
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
async fn close_code_and_reason_reach_the_peer() {
    let pki = Pki::new();
    for edge_closes in [true, false] {
        let (edge, conn, _keep) = pair(&pki, &Tuning::default()).await;
        let (closer, peer) = if edge_closes {
            (&edge, &conn)
        } else {
            (&conn, &edge)
        };
        closer.close(proto::CloseCode::Revoked, "connector certificate revoked");
        assert!(closer.open(LIMIT).await.is_err());
        let reason = peer.close_reason(LIMIT).await;
        let Some(Error::ClosedByPeer { code, reason }) = reason else {
            panic!("expected a close by the peer, got {reason:?}");
        };
        assert_eq!(code, proto::CloseCode::Revoked);
        assert_eq!(reason, "connector certificate revoked");
        assert!(matches!(closer.closed().await, Error::LocallyClosed));
    }
}

#[tokio::test]
async fn reject_arrives_before_the_close() {
    let pki = Pki::new();
    let (edge, conn, _keep) = pair(&pki, &Tuning::default()).await;
    tokio::spawn(async move {
        let (send, recv) = edge.accept_control().await.unwrap();
        let mut control = ControlDriver::new(send, recv, ControlState::edge(now(), LIMIT));
        let event = control.next_event().await.unwrap();
        assert!(matches!(event, ControlEvent::HelloReceived(_)), "{event:?}");
        control.state().reject(proto::Reject {
            code: proto::RejectCode::UnknownSite,
            text: "site is not configured on this edge".into(),
        });
        control.finish(LIMIT).await.unwrap();
        edge.close(proto::CloseCode::Rejected, "rejected");
    });
    let (send, recv) = conn.open_control(LIMIT).await.unwrap();
    let mut control =
        ControlDriver::new(send, recv, ControlState::connector(hello(), now(), LIMIT));
    let event = control.next_event().await;
    let Ok(ControlEvent::Rejected(reject)) = event else {
        panic!("expected the Reject, got {event:?}");
    };
    assert_eq!(reject.code, proto::RejectCode::UnknownSite);
    let reason = conn.close_reason(LIMIT).await;
    assert!(
        matches!(
            reason,
            Some(Error::ClosedByPeer {
                code: proto::CloseCode::Rejected,
                ..
            })
        ),
        "{reason:?}"
    );
}

#[tokio::test]
async fn tls_server_without_http2_times_out_in_the_handshake() {
    let pki = Pki::new();
    let tuning = Tuning {
        keep_alive: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..Tuning::default()
    };
    // A TLS server that never speaks HTTP/2: the dial times out in the handshake.
    let edge = pki.edge(&tuning).await;
    let addr = edge.listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (tcp, _) = edge.listener.accept().await.unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(edge.endpoint.tcp_tls_config());
        let tls = acceptor.accept(tcp).await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(tls);
    });
    let result = pki
        .connector(&tuning)
        .connect(addr, Duration::from_millis(500))
        .await;
    assert!(
        matches!(result, Err(Error::TimedOut(Wait::Handshake))),
        "{result:?}"
    );
    hold.abort();
}

#[tokio::test]
async fn closing_the_endpoint_closes_tcp_tunnels() {
    let pki = Pki::new();
    let (_edge, conn, keep) = pair(&pki, &Tuning::default()).await;
    keep.endpoint
        .close(proto::CloseCode::Shutdown, "edge shutting down");
    let reason = conn.close_reason(LIMIT).await;
    assert!(
        matches!(
            reason,
            Some(Error::ClosedByPeer {
                code: proto::CloseCode::Shutdown,
                ..
            })
        ),
        "{reason:?}"
    );
    keep.endpoint.wait_idle(LIMIT).await;
}

#[tokio::test]
async fn a_peer_gone_silent_times_out() {
    let pki = Pki::new();
    let tuning = Tuning {
        keep_alive: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(600),
        ..Tuning::default()
    };
    let edge = pki.edge(&tuning).await;
    let target = edge.listener.local_addr().unwrap();
    // A TCP relay that forwards until `freeze` is set, then drops everything while keeping
    // both sockets open (a path that silently died).
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let freeze = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let freeze = freeze.clone();
        tokio::spawn(async move {
            let (a, _) = relay.accept().await.unwrap();
            let b = tokio::net::TcpStream::connect(target).await.unwrap();
            let (ar, aw) = a.into_split();
            let (br, bw) = b.into_split();
            let pump = |mut r: tokio::net::tcp::OwnedReadHalf,
                        mut w: tokio::net::tcp::OwnedWriteHalf,
                        freeze: Arc<std::sync::atomic::AtomicBool>| async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if !freeze.load(std::sync::atomic::Ordering::SeqCst) {
                        let _ = w.write_all(&buf[..n]).await;
                    }
                }
                // Hold the write half open: no FIN.
                std::future::pending::<()>().await;
            };
            tokio::join!(pump(ar, bw, freeze.clone()), pump(br, aw, freeze));
        });
    }
    let client = pki.connector(&tuning);
    let (edge_conn, conn) = tokio::join!(edge.accept(), client.connect(relay_addr, LIMIT));
    let (edge_conn, conn) = (edge_conn.unwrap(), conn.unwrap());
    freeze.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = Instant::now();
    let (a, b) = tokio::join!(
        tokio::time::timeout(LIMIT, edge_conn.closed()),
        tokio::time::timeout(LIMIT, conn.closed())
    );
    assert!(matches!(a, Ok(Error::TimedOut(Wait::PeerSilent))), "{a:?}");
    assert!(matches!(b, Ok(Error::TimedOut(Wait::PeerSilent))), "{b:?}");
    // idle_timeout plus one keep-alive tick, with slack for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn write_chunk_right_after_open() {
    let pki = Pki::new();
    let (edge, conn, _keep) = pair(&pki, &Tuning::default()).await;
    let (mut send, mut recv) = edge.open(LIMIT).await.unwrap();
    send.write_chunk(bytes::Bytes::from(vec![1u8; 100]))
        .await
        .unwrap();
    send.finish();
    let (mut csend, mut crecv) = conn.accept().await.unwrap();
    let mut got = Vec::new();
    crecv.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), 100);
    csend
        .write_chunk(bytes::Bytes::from(vec![2u8; 70_000]))
        .await
        .unwrap();
    csend.finish();
    let mut back = Vec::new();
    recv.read_to_end(&mut back).await.unwrap();
    assert_eq!(back.len(), 70_000);
}

#[tokio::test]
async fn stopped_waits_while_the_peer_reads() {
    let pki = Pki::new();
    let (edge, conn, _keep) = pair(&pki, &Tuning::default()).await;
    let (mut send, _recv) = edge.open(LIMIT).await.unwrap();
    send.write_chunk(bytes::Bytes::from(vec![1u8; 10]))
        .await
        .unwrap();
    send.finish();
    drop(send);
    let (mut csend, mut crecv) = conn.accept().await.unwrap();
    let mut got = [0u8; 10];
    crecv.read_exact(&mut got).await.unwrap();
    drop(crecv);
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(300)) => {}
        code = csend.stopped() => panic!("stopped() resolved early: {code:?}"),
    }
}

#[tokio::test]
async fn stop_cancelled_keeps_our_response_going() {
    // What the connector does once the upstream answered: "nothing more to read", then the
    // response. Over HTTP/2 that must not reset the stream.
    let pki = Pki::new();
    let (edge, conn, _keep) = pair(&pki, &Tuning::default()).await;
    let (mut send, mut recv) = edge.open(LIMIT).await.unwrap();
    send.write_all(b"request head").await.unwrap();
    let (mut csend, mut crecv) = conn.accept().await.unwrap();
    let mut head = [0u8; 12];
    crecv.read_exact(&mut head).await.unwrap();
    crecv.stop(StreamError::Cancelled);
    assert!(matches!(
        crecv.read_chunk(10).await,
        Err(Error::LocallyClosed)
    ));
    csend.write_all(b"the response").await.unwrap();
    csend.finish();
    let mut response = Vec::new();
    recv.read_to_end(&mut response).await.unwrap();
    assert_eq!(response, b"the response");
}
