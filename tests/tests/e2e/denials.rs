//! Fail closed: every denied request is refused at the edge and ZERO requests reach HA.

use std::time::{Duration, Instant};

use e2e::{CABIN_HOST, ConnectorConfig, HOME_HOST, HttpVersion, RawResponse, Stack, StackOptions};

use crate::{assert_no_server_header, assert_refused, get};

fn two_sites() -> StackOptions {
    StackOptions {
        sites: 2,
        ..StackOptions::default()
    }
}

/// Refused over HTTP/1.1, HTTP/2 and a raw TLS socket, and nothing reaches HA.
async fn assert_refused_everywhere(stack: &Stack, host: &str, identity: Option<&pki::Issued>) {
    let site = stack.sites.iter().position(|s| s.host == host).unwrap();
    let url = stack.url_for(site, "/debug/request");
    for version in [HttpVersion::Http1, HttpVersion::Auto] {
        let client = stack.client_with(host, identity, version).unwrap();
        assert_refused(&client, &url).await;
    }
    let port = stack.edge.https_addr().port();
    let request =
        format!("GET /debug/request HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    match e2e::raw_http1(
        &stack.server_ca,
        host,
        stack.edge.https_addr(),
        identity,
        request.as_bytes(),
    )
    .await
    {
        Err(error) => eprintln!("raw: refused as expected: {error:#}"),
        Ok(raw) => assert!(
            raw.is_empty(),
            "raw TLS request was answered: {:?}",
            String::from_utf8_lossy(&raw)
        ),
    }
    assert_eq!(
        stack.ha_requests(),
        0,
        "a denied request reached HA: {:?}",
        stack.ha_counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_certificate_is_refused() {
    let stack = Stack::start().await.unwrap();
    assert_refused_everywhere(&stack, HOME_HOST, None).await;
    // Over TLS 1.2 as well (the refusal is then in the handshake itself).
    let client = e2e::client_builder(&stack.server_ca, HOME_HOST, stack.edge.https_addr(), None)
        .unwrap()
        .tls_version_max(reqwest::tls::Version::TLS_1_2)
        .build()
        .unwrap();
    assert_refused(&client, &stack.url("/")).await;
    assert_eq!(stack.ha_requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_unknown_ca_is_refused() {
    let stack = Stack::start().await.unwrap();
    let foreign = stack.pki.foreign_device("home", "phone").unwrap();
    assert_refused_everywhere(&stack, HOME_HOST, Some(&foreign)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_is_refused() {
    let mut stack = Stack::start().await.unwrap();
    let site = stack.home().site.clone();
    let expired = stack.pki.expired_device(&site, "old-phone").unwrap();
    assert_refused_everywhere(&stack, HOME_HOST, Some(&expired)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_of_site_a_does_not_open_site_b() {
    let stack = Stack::start_with(two_sites()).await.unwrap();
    assert_refused_everywhere(&stack, CABIN_HOST, Some(&stack.site(0).device)).await;
    // Each device still opens its own site (and reaches that site's HA only).
    for i in 0..2 {
        let client = stack.client(i, HttpVersion::Auto).unwrap();
        let (status, _) = get(&client, &stack.url_for(i, "/status/200")).await;
        assert_eq!(status, 200);
        assert_eq!(stack.site(i).ha.requests(), 1, "site {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_of_site_a_with_host_of_site_b_is_421() {
    let stack = Stack::start_with(two_sites()).await.unwrap();
    let port = stack.edge.https_addr().port();
    for host_header in [
        format!("{CABIN_HOST}:{port}"),
        CABIN_HOST.to_owned(),
        "evil.example".to_owned(),
    ] {
        let request = format!(
            "GET /debug/request HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n"
        );
        let response = stack.raw(0, request.as_bytes()).await.unwrap();
        assert_eq!(response.status, 421, "Host {host_header}: {response:?}");
        assert!(response.header("server").is_none(), "{response:?}");
    }
    // The same over HTTP/2 (`:authority` of the other site on a connection for site A).
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let response = client
        .get(stack.url_for(0, "/debug/request"))
        .header("host", format!("{CABIN_HOST}:{port}"))
        .send()
        .await;
    // RFC 9113 8.3.1: a Host that differs from `:authority` makes the request malformed, so
    // 400 is as good as 421 here; what must never happen is HA seeing it.
    match response {
        Ok(response) => {
            assert_no_server_header(response.headers());
            let status = response.status();
            let body = response.bytes().await.unwrap_or_default();
            assert!(
                status == 421 || status == 400,
                "h2 with :authority of site A and Host of site B answered {status}; HA saw {:#?}; body {:?}",
                stack.home().ha.last_seen(),
                String::from_utf8_lossy(&body)
            );
        }
        Err(error) => panic!("h2 request with a foreign Host failed: {error:?}"),
    }
    assert_eq!(stack.ha_requests(), 0, "{:?}", stack.ha_counts());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_certificate_presented_as_device_is_refused() {
    let stack = Stack::start().await.unwrap();
    let token = &stack.home().token;
    let device = &stack.home().device;
    let as_device = pki::Issued {
        cert_pem: token.cert_pem.clone(),
        key_pem: token.key_pem.clone(),
        cert_der: Vec::new(),
        key_der: Vec::new(),
        serial: Vec::new(),
        not_after: device.not_after,
        fingerprint: [0; 32],
    };
    assert_refused_everywhere(&stack, HOME_HOST, Some(&as_device)).await;
}

/// Spawns a connector with `token` and asserts it never registers: it either exits non-zero
/// or keeps failing without writing its ready file, and the edge counts no connection.
async fn assert_never_registers(stack: &Stack, token: String) -> String {
    let config = ConnectorConfig::new(token, stack.home().ha.addr);
    let mut connector = e2e::Connector::spawn(config).unwrap();
    let deadline = Duration::from_secs(5);
    let started = Instant::now();
    let exited = loop {
        assert!(
            !connector.is_ready(),
            "connector registered:\n{}",
            connector.output()
        );
        if let Some(status) = connector.try_wait() {
            break Some(status);
        }
        if started.elapsed() > deadline {
            break None;
        }
        tokio::time::sleep(e2e::POLL_INTERVAL).await;
    };
    assert!(
        !connector.is_ready(),
        "connector registered:\n{}",
        connector.output()
    );
    if let Some(status) = exited {
        assert!(
            !status.success(),
            "connector exited successfully:\n{}",
            connector.output()
        );
    }
    assert_eq!(
        stack.edge.site_connections("home").await.unwrap(),
        0,
        "{}",
        stack.edge.status().await.unwrap()
    );
    let text = connector.all_text();
    eprintln!("connector exit: {exited:?}\n{}", connector.output());
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_certificate_cannot_register_as_connector() {
    let stack = Stack::start_with(StackOptions {
        connectors: false,
        ..StackOptions::default()
    })
    .await
    .unwrap();

    // (a) A genuine device certificate (device CA, device identity) in a hand-made token.
    let mut token = stack.home().token.clone();
    token.cert_pem = stack.home().device.cert_pem.clone();
    token.key_pem = stack.home().device.key_pem.clone();
    let text = assert_never_registers(&stack, token.encode()).await;
    let lower = text.to_lowercase();
    assert!(
        [
            "reject",
            "denied",
            "invalid",
            "certificate",
            "refused",
            "unknown"
        ]
        .iter()
        .any(|w| lower.contains(w)),
        "the connector does not say why it failed:\n{text}"
    );

    // (b) A certificate claiming a connector identity but signed by the site's DEVICE CA:
    //     the token is self-consistent, so only the edge's chain check can stop it.
    assert_never_registers(&stack, forged_connector_token(&stack)).await;

    // Nothing registered, so the site has no connector: 503, and HA saw nothing.
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let (status, _) = get(&client, &stack.url("/debug/request")).await;
    assert_eq!(status, 503);
    assert_eq!(stack.ha_requests(), 0);
}

/// A token whose certificate claims `connector-evil` of `home` but is signed by the site's
/// device CA instead of the connector CA.
fn forged_connector_token(stack: &Stack) -> String {
    let ca = stack.pki.state.client_ca("home").unwrap();
    let identity = pki::Identity::connector("home", "connector-evil").unwrap();
    let forged = ca
        .issue_client(&identity, pki::Validity::days(30), pki::KeyType::EcdsaP256)
        .unwrap();
    let mut token = stack.home().token.clone();
    token.connector_id = "connector-evil".to_owned();
    token.cert_pem = forged.cert_pem;
    token.key_pem = forged.key_pem;
    let encoded = token.encode();
    assert!(
        pki::EnrollmentToken::decode(&encoded).is_ok(),
        "the forged token must be self-consistent for this case to test the edge"
    );
    encoded
}

/// An operator whose connector is refused must be told why: the edge's TLS alert (unknown CA /
/// bad certificate) has to show up in the connector's log, not just "connection lost".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connector_logs_why() {
    let stack = Stack::start_with(StackOptions {
        connectors: false,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let text = assert_never_registers(&stack, forged_connector_token(&stack)).await;
    let lower = text.to_lowercase();
    assert!(
        [
            "reject",
            "denied",
            "refused",
            "certificate",
            "unknown ca",
            "unknownissuer",
            "alert"
        ]
        .iter()
        .any(|w| lower.contains(w)),
        "the connector does not say that the edge refused its certificate:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_without_connector_is_503() {
    // A request waits `limits.connector_wait` for a connector to register, then gets 503.
    const WAIT: Duration = Duration::from_millis(600);
    let stack = Stack::start_with(StackOptions {
        connectors: false,
        ..StackOptions::with_limits(format!("connector_wait = \"{}ms\"", WAIT.as_millis()))
    })
    .await
    .unwrap();
    for version in [HttpVersion::Http1, HttpVersion::Auto] {
        let client = stack.client(0, version).unwrap();
        let started = Instant::now();
        let response = client.get(stack.url("/")).send().await.unwrap();
        let waited = started.elapsed();
        assert_eq!(response.status(), 503, "{version:?}");
        assert_eq!(response.headers()["retry-after"], "1");
        assert!(waited >= WAIT, "answered after {waited:?}, before {WAIT:?}");
    }
    assert_eq!(stack.ha_requests(), 0);
    let timed_out = stack
        .edge
        .metric(r#"doorless_edge_connector_waits_total{site="home",result="timed_out""#)
        .await
        .unwrap();
    assert_eq!(timed_out, 2.0);
}

/// Denials look the same whatever the reason: the bodies of 421 and 503 carry no HA bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_responses_carry_no_fingerprint() {
    let stack = Stack::start_with(StackOptions {
        connectors: false,
        sites: 2,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let port = stack.edge.https_addr().port();
    for (host, want) in [
        (format!("{HOME_HOST}:{port}"), 503),
        (format!("{CABIN_HOST}:{port}"), 421),
    ] {
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let response: RawResponse = stack.raw(0, request.as_bytes()).await.unwrap();
        assert_eq!(response.status, want, "{response:?}");
        assert!(response.header("server").is_none(), "{response:?}");
        let body = String::from_utf8_lossy(&response.body).to_lowercase();
        assert!(!body.contains("home assistant"), "{body}");
    }
    assert_eq!(stack.ha_requests(), 0);
}

/// Revoking a device takes effect on the running edge without a restart: new connections are
/// refused and the device's open WebSocket is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_device_is_cut_off_without_restart() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let stack = Stack::start().await.unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let (status, _) = get(&client, &stack.url("/status/200")).await;
    assert_eq!(status, 200);
    let mut ws = stack.ws(0).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("before"))
        .await
        .unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(matches!(echo, Some(Ok(Message::Text(_)))), "{echo:?}");

    let started = Instant::now();
    stack
        .pki
        .state
        .revoke(pki::Kind::Device, "home", "phone")
        .unwrap();

    // New connections from the revoked device are refused.
    let refused = e2e::poll_until(
        "new connections to be refused",
        Duration::from_secs(10),
        || async {
            let fresh = stack.client(0, HttpVersion::Http1).unwrap();
            fresh
                .get(stack.url("/status/200"))
                .send()
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    let refused_after = started.elapsed();
    let before = stack.ha_requests();
    // The client whose HTTP/2 connection was open before the revoke gets nothing either.
    let old_connection = client.get(stack.url("/status/200")).send().await;
    // The open WebSocket is closed (no more echo).
    let ws_closed = e2e::ws_closed_within(&mut ws, Duration::from_secs(10)).await;
    eprintln!(
        "new connections refused {refused_after:?} after revoke; old HTTP/2 connection: {:?}; \
         WebSocket closed: {} ({:?} after revoke)",
        old_connection.as_ref().map(reqwest::Response::status),
        ws_closed,
        started.elapsed()
    );
    refused.unwrap();
    assert!(
        old_connection.is_err(),
        "the revoked device's open HTTP/2 connection still works: {old_connection:?}"
    );
    assert!(
        ws_closed,
        "the revoked device's WebSocket is still open 10 s after revoke"
    );
    assert_eq!(stack.ha_requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_connector_is_disconnected_and_cannot_return() {
    let stack = Stack::start().await.unwrap();
    assert_eq!(stack.edge.site_connections("home").await.unwrap(), 2);
    let started = Instant::now();
    stack
        .pki
        .state
        .revoke(pki::Kind::Connector, "home", "connector-1")
        .unwrap();
    // Its live connections are closed, and its reconnects are refused.
    e2e::poll_until(
        "the revoked connector to be gone",
        Duration::from_secs(5),
        || async { (stack.edge.site_connections("home").await.ok()? == 0).then_some(()) },
    )
    .await
    .unwrap();
    let gone_after = started.elapsed();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let (status, _) = get(&client, &stack.url("/status/200")).await;
    assert_eq!(status, 503);
    // Give its backoff a chance to redial, then check it is still out.
    let redialled = e2e::poll_until(
        "a refused redial in the logs",
        Duration::from_secs(10),
        || async {
            stack
                .edge
                .output()
                .contains("connector certificate revoked")
                .then_some(())
        },
    )
    .await;
    eprintln!("connector gone {gone_after:?} after revoke");
    redialled.unwrap();
    assert_eq!(stack.edge.site_connections("home").await.unwrap(), 0);
}

/// A connector's self-check is authenticated and welcomed like a real session, but the edge
/// never routes a request to it: while one is open and no real connector is, users get 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_check_session_never_carries_requests() {
    use proto::{ControlEvent, ControlState, Hello, Purpose};
    use transport::{ClientEndpoint, ClientTls, ControlDriver, Tuning};

    const LIMIT: Duration = Duration::from_secs(10);
    let stack = Stack::start_with(StackOptions {
        connectors: false,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = &stack.home().token;
    let tls = ClientTls {
        cert_chain: pki::parse_certs(&token.cert_pem).unwrap(),
        key: pki::parse_key(&token.key_pem).unwrap(),
        tunnel_ca: pki::parse_certs(&token.tunnel_ca_pem).unwrap(),
        server_name: token.server_name.clone(),
    };
    let tunnel = stack.edge.tunnel_addr();
    let endpoint = ClientEndpoint::new(tunnel, tls, &Tuning::default()).unwrap();
    let conn = endpoint.connect(tunnel, LIMIT).await.unwrap();
    let (send, recv) = conn.open(LIMIT).await.unwrap();
    let hello = Hello {
        version: proto::VERSION,
        connector_id: token.connector_id.clone(),
        software: "e2e".into(),
        purpose: Purpose::Check,
    };
    let state = ControlState::connector(hello, Instant::now(), LIMIT);
    let mut control = ControlDriver::new(send, recv, state);
    let event = tokio::time::timeout(LIMIT, control.next_event()).await;
    assert!(
        matches!(event, Ok(Ok(ControlEvent::Welcomed(_)))),
        "{event:?}"
    );

    // The check connection is up and welcomed; it must not count as a connector.
    for version in [HttpVersion::Http1, HttpVersion::Auto] {
        let client = stack.client(0, version).unwrap();
        let (status, _) = get(&client, &stack.url("/debug/request")).await;
        assert_eq!(status, 503, "{version:?}");
    }
    assert_eq!(stack.ha_requests(), 0);
    let metrics = reqwest::get(format!("http://{}/metrics", stack.edge.admin_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (series, want) in [
        (
            "doorless_edge_connector_registrations_total{site=\"home\",result=\"check\"}",
            "1",
        ),
        (
            "doorless_edge_connector_registrations_total{site=\"home\",result=\"ok\"}",
            "0",
        ),
        ("doorless_edge_connectors{site=\"home\"}", "0"),
    ] {
        let line = metrics.lines().find(|l| l.starts_with(series));
        assert_eq!(
            line.and_then(|l| l.rsplit(' ').next()),
            Some(want),
            "{series}"
        );
    }
    drop(control);
    conn.close(proto::CloseCode::Normal, "done");
}

/// A `Hello` the edge cannot decode (here: a newer protocol version) is answered with
/// `Reject(UnsupportedVersion)` before the edge closes, as docs/protocol.md says, so a newer
/// connector learns why; nothing is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_hello_gets_reject_unsupported_version() {
    use bytes::BytesMut;
    use proto::{Control, FrameBuffer, Hello, Purpose, RejectCode};
    use transport::{ClientEndpoint, ClientTls, Tuning};

    const LIMIT: Duration = Duration::from_secs(10);
    let stack = Stack::start_with(StackOptions {
        connectors: false,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = &stack.home().token;
    let tls = ClientTls {
        cert_chain: pki::parse_certs(&token.cert_pem).unwrap(),
        key: pki::parse_key(&token.key_pem).unwrap(),
        tunnel_ca: pki::parse_certs(&token.tunnel_ca_pem).unwrap(),
        server_name: token.server_name.clone(),
    };
    let tunnel = stack.edge.tunnel_addr();
    let endpoint = ClientEndpoint::new(tunnel, tls, &Tuning::default()).unwrap();
    let conn = endpoint.connect(tunnel, LIMIT).await.unwrap();
    let (mut send, mut recv) = conn.open(LIMIT).await.unwrap();
    // The encoder writes fields as they are; the edge's decoder refuses the version.
    let mut hello = BytesMut::new();
    Control::Hello(Hello {
        version: proto::VERSION + 1,
        connector_id: token.connector_id.clone(),
        software: "e2e (from the future)".into(),
        purpose: Purpose::Serve,
    })
    .encode(&mut hello)
    .unwrap();
    send.write_all(&hello).await.unwrap();

    let mut inbox = FrameBuffer::new(64 * 1024);
    let answer = tokio::time::timeout(LIMIT, async {
        loop {
            if let Some(msg) = inbox.next_control().unwrap() {
                return Some(msg);
            }
            let chunk = recv.read_chunk(16 * 1024).await.unwrap()?;
            inbox.push(&chunk).unwrap();
        }
    })
    .await
    .expect("no answer to the hello");
    let Some(Control::Reject(reject)) = answer else {
        panic!("expected a Reject, got {answer:?}");
    };
    assert_eq!(reject.code, RejectCode::UnsupportedVersion, "{reject:?}");
    // Then the edge closes the connection as rejected.
    let closed = conn.close_reason(LIMIT).await;
    assert!(
        matches!(
            closed,
            Some(transport::Error::ClosedByPeer {
                code: proto::CloseCode::Rejected,
                ..
            })
        ),
        "{closed:?}"
    );
    assert_eq!(stack.edge.site_connections("home").await.unwrap(), 0);
    let metrics = reqwest::get(format!("http://{}/metrics", stack.edge.admin_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rejected = metrics.lines().find(|l| {
        l.starts_with(
            "doorless_edge_connector_registrations_total{site=\"home\",result=\"rejected\"}",
        )
    });
    assert_eq!(rejected.and_then(|l| l.rsplit(' ').next()), Some("1"));
}
