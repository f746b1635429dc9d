//! Enrollment against an in-process stand-in edge on loopback: an honest answer is taken; an
//! answer from a man in the middle who lacks the code, or one altered in transit (another
//! tunnel CA), is refused and nothing is stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::Arc;

use bytes::BytesMut;
use connector::enroll::{EnrollError, enroll, exchange};
use proto::enroll::{ENROLL_ALPN, EnrollRequest, EnrollResponse, Enrolled};

#[derive(Clone, Copy)]
enum Edge {
    /// Knows the code: redeems it and MACs the answer.
    Honest,
    /// Redeems it honestly, but the tunnel CA is swapped after the MAC (altered in transit).
    SwapsTunnelCa,
    /// Does not know the code: answers with a MAC under another code's key.
    WithoutTheCode,
}

/// A one-connection enrollment server on 127.0.0.1 with a self-made certificate; returns the
/// code minted for it.
fn stand_in_edge(kind: Edge) -> (pki::EnrollmentCode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let state =
        pki::StateDir::init(&dir.path().join("state"), &pki::InitOptions::default()).unwrap();
    state.add_site("home", &["ha.example.com".into()]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (code, _) = state
        .mint_code("home", &addr.to_string(), pki::DEFAULT_CODE_LIFETIME)
        .unwrap();
    let (other, _) = state
        .mint_code("home", &addr.to_string(), pki::DEFAULT_CODE_LIFETIME)
        .unwrap();
    let ca = pki::Ca::generate("stand-in", pki::Validity::days(2)).unwrap();
    let server = ca
        .issue_server(&["127.0.0.1".into()], pki::Validity::days(1))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            pki::parse_certs(&server.cert_pem).unwrap(),
            pki::parse_key(&server.key_pem).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![ENROLL_ALPN.to_vec()];
    let config = Arc::new(config);
    std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(config).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let request = loop {
            if let Some((request, _)) = EnrollRequest::decode(&buf).unwrap() {
                break request;
            }
            let n = tls.read(&mut chunk).unwrap();
            assert!(n > 0, "closed early");
            buf.extend_from_slice(&chunk[..n]);
        };
        let input = request.mac_input().unwrap();
        let redeemed = state
            .redeem_code(&request.code_id, &input, &request.mac, &request.csr_pem)
            .unwrap();
        let mut enrolled = Enrolled {
            site: redeemed.site,
            connector_id: redeemed.connector_id,
            server_name: pki::TUNNEL_SERVER_NAME.into(),
            edges: vec!["127.0.0.1:443".into()],
            cert_pem: redeemed.cert_pem,
            tunnel_ca_pem: redeemed.tunnel_ca_pem,
            mac: [0; 32],
        };
        let keys = match kind {
            Edge::WithoutTheCode => other.keys(),
            Edge::Honest | Edge::SwapsTunnelCa => redeemed.keys,
        };
        enrolled.mac = keys.response_mac(&request.mac, &enrolled.mac_input().unwrap());
        if let Edge::SwapsTunnelCa = kind {
            enrolled.tunnel_ca_pem = ca.cert_pem().to_owned();
        }
        let mut out = BytesMut::new();
        EnrollResponse::Enrolled(enrolled).encode(&mut out).unwrap();
        tls.write_all(&out).unwrap();
        tls.flush().unwrap();
        tls.conn.send_close_notify();
        let _ = tls.flush();
    });
    (code, dir)
}

#[test]
fn an_honest_answer_is_stored() {
    let (code, _edge) = stand_in_edge(Edge::Honest);
    let home = tempfile::tempdir().unwrap();
    let enrolled = enroll(&code, home.path()).unwrap();
    assert_eq!(enrolled.site, "home");
    let stored = pki::load_enrolled(home.path()).unwrap().unwrap();
    assert_eq!(stored.connector_id, enrolled.connector_id);
}

#[test]
fn an_answer_without_the_code_is_refused() {
    let (code, _edge) = stand_in_edge(Edge::WithoutTheCode);
    let home = tempfile::tempdir().unwrap();
    let err = enroll(&code, home.path()).unwrap_err();
    assert!(matches!(err, EnrollError::NotTheEdge), "{err}");
    assert!(pki::load_enrolled(home.path()).unwrap().is_none());
}

#[test]
fn a_swapped_tunnel_ca_is_refused() {
    let (code, _edge) = stand_in_edge(Edge::SwapsTunnelCa);
    let err = exchange(&code).unwrap_err();
    assert!(matches!(err, EnrollError::NotTheEdge), "{err}");
}
