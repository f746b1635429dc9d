//! Per-site access policy and abuse resistance: session cookies (the Safari-like flow), public
//! path exemptions, a handshake flood beside a real user, slowloris.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::{EdgeOptions, HttpVersion, Stack, StackOptions};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const COOKIE: &str = "__Host-doorless";

fn session_mode(sites: usize) -> StackOptions {
    let mut toml = String::new();
    for site in ["home", "cabin"].iter().take(sites) {
        toml.push_str(&format!(
            "[sites.{site}]\nclient_auth = \"required_or_session\"\n"
        ));
    }
    StackOptions {
        sites,
        edge: EdgeOptions {
            extra_toml: Some(toml),
            ..EdgeOptions::default()
        },
        ..StackOptions::default()
    }
}

/// The session cookie's value from a response's `Set-Cookie`.
fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (pair, attributes) = v.split_once(';')?;
            let value = pair.strip_prefix(&format!("{COOKIE}="))?;
            for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
                assert!(attributes.contains(attr), "cookie lacks {attr}: {v}");
            }
            assert!(
                !attributes.contains("Domain"),
                "a __Host- cookie has no Domain: {v}"
            );
            Some(value.to_owned())
        })
}

/// A WebSocket to `host` WITHOUT a client certificate, sending `cookie`.
async fn ws_with_cookie(
    stack: &Stack,
    host: &str,
    cookie: &str,
) -> anyhow::Result<
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
> {
    let https = stack.edge.https_addr();
    let tls = e2e::tls_connect(&stack.server_ca, host, https, None, &[b"http/1.1"]).await?;
    let mut request =
        format!("wss://{host}:{}/api/websocket", https.port()).into_client_request()?;
    request
        .headers_mut()
        .insert("cookie", format!("{COOKIE}={cookie}").parse()?);
    let (ws, response) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(request, tls),
    )
    .await??;
    anyhow::ensure!(response.status() == 101, "answered {}", response.status());
    Ok(ws)
}

/// GET without a certificate, optionally with a cookie; returns the status.
async fn get_without_cert(stack: &Stack, site: usize, path: &str, cookie: Option<&str>) -> u16 {
    let host = &stack.site(site).host;
    let client = stack.client_with(host, None, HttpVersion::Http1).unwrap();
    let mut request = client.get(stack.url_for(site, path));
    if let Some(c) = cookie {
        request = request.header("cookie", format!("{COOKIE}={c}"));
    }
    let response = request.send().await.unwrap();
    crate::assert_no_server_header(response.headers());
    response.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safari_like_flow_with_session_cookie() {
    let stack = Stack::start_with(session_mode(2)).await.unwrap();
    let client = stack.client(0, HttpVersion::Http1).unwrap();

    // A page load WITH the certificate sets the cookie; the cookie never reaches HA.
    let response = client
        .get(stack.url("/debug/request"))
        .header("cookie", "theme=dark")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookie = session_cookie(&response)
        .expect("a certificate-authenticated response sets the session cookie");
    let seen: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let ha_cookies: Vec<&str> = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "cookie")
        .map(|h| h[1].as_str().unwrap())
        .collect();
    assert_eq!(
        ha_cookies,
        ["theme=dark"],
        "HA must see the client's own cookies only"
    );
    // Sent back with the certificate, the cookie is stripped too.
    let response = client
        .get(stack.url("/debug/request"))
        .header("cookie", format!("{COOKIE}={cookie}"))
        .send()
        .await
        .unwrap();
    let seen = response.text().await.unwrap();
    assert!(
        !seen.contains(COOKIE),
        "the session cookie reached HA: {seen}"
    );

    // Without certificate and cookie: a bare 403, nothing reaches HA.
    let before = stack.ha_requests();
    assert_eq!(get_without_cert(&stack, 0, "/status/200", None).await, 403);
    assert_eq!(
        get_without_cert(&stack, 0, "/status/200", Some("forged")).await,
        403
    );
    assert_eq!(stack.ha_requests(), before);

    // The WebSocket upgrade without a certificate but with the cookie works end to end.
    let mut ws = ws_with_cookie(&stack, &stack.home().host, &cookie)
        .await
        .unwrap();
    ws.send(Message::text("hello from safari")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(&echo, Some(Ok(Message::Text(t))) if t.as_str() == "hello from safari"),
        "{echo:?}"
    );
    let seen = stack.home().ha.last_seen().unwrap();
    assert!(
        !seen
            .headers
            .iter()
            .any(|(n, v)| n == "cookie" && v.contains(COOKIE)),
        "the cookie reached HA on the upgrade: {:?}",
        seen.headers
    );
    // Plain requests with the cookie pass too.
    assert_eq!(
        get_without_cert(&stack, 0, "/status/200", Some(&cookie)).await,
        200
    );

    // Replayed on another site (same edge, also in session mode): refused.
    let before = stack.ha_requests();
    assert_eq!(
        get_without_cert(&stack, 1, "/status/200", Some(&cookie)).await,
        403
    );
    assert!(
        ws_with_cookie(&stack, &stack.site(1).host, &cookie)
            .await
            .is_err()
    );
    assert_eq!(stack.ha_requests(), before);

    // Revoking the certificate kills the cookie (within a second) and its open WebSocket.
    let started = Instant::now();
    stack
        .pki
        .state
        .revoke(pki::Kind::Device, "home", "phone")
        .unwrap();
    e2e::poll_until(
        "the cookie to be refused",
        Duration::from_secs(5),
        || async {
            (get_without_cert(&stack, 0, "/status/200", Some(&cookie)).await == 403).then_some(())
        },
    )
    .await
    .unwrap();
    let refused_after = started.elapsed();
    let closed = e2e::ws_closed_within(&mut ws, Duration::from_secs(5)).await;
    eprintln!(
        "cookie refused {refused_after:?} after revoke; WebSocket closed: {}",
        closed
    );
    assert!(
        refused_after < Duration::from_secs(1),
        "took {refused_after:?}"
    );
    assert!(
        closed,
        "the cookie's WebSocket stayed open after the revoke"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_paths_pass_without_certificate_and_resist_tricks() {
    let options = StackOptions {
        edge: EdgeOptions {
            extra_toml: Some("[sites.home]\npublic_paths = [\"/api/webhook/\"]\n".into()),
            ..EdgeOptions::default()
        },
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    // Exempt: reaches HA without a certificate (the stand-in answers 404 for the path, which
    // proves the request got there).
    let before = stack.ha_requests();
    assert_eq!(
        get_without_cert(&stack, 0, "/api/webhook/abc", None).await,
        404
    );
    assert_eq!(stack.ha_requests(), before + 1);
    assert_eq!(
        stack.home().ha.last_seen().unwrap().target,
        "/api/webhook/abc"
    );

    // Not exempt, raw bytes so no client normalises them: a bare 403, nothing reaches HA.
    let before = stack.ha_requests();
    for target in [
        "/debug/request",
        "/api/webhook/../debug/request",
        "/api/webhook/%2e%2e/debug/request",
        "/api/webhook/%252e%252e/debug/request",
        "/api/webhook//x",
        "/api/webhook/..;/debug/request",
        "/API/WEBHOOK/abc",
    ] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            stack.home().host
        );
        let raw = e2e::raw_http1(
            &stack.server_ca,
            &stack.home().host,
            stack.edge.https_addr(),
            None,
            request.as_bytes(),
        )
        .await
        .unwrap();
        let response = e2e::RawResponse::parse(&raw).unwrap();
        assert_eq!(response.status, 403, "{target} must need a certificate");
        assert!(response.header("server").is_none());
    }
    assert_eq!(stack.ha_requests(), before);
    // With a certificate everything still works.
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    assert_eq!(crate::get(&client, &stack.url("/status/200")).await.0, 200);
}

/// One TLS handshake without a certificate from `source`; `true` if the edge refused it
/// (handshake error, reset, or a closed connection on the first read).
async fn unauthenticated_handshake(stack: &Stack, source: SocketAddr) -> bool {
    let attempt = async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(source)?;
        let tcp = socket.connect(stack.edge.https_addr()).await?;
        let config = e2e::tls_config(&stack.server_ca, None, &[b"http/1.1"])?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls_pki_types::ServerName::try_from(stack.home().host.clone())?;
        let mut tls = connector.connect(name, tcp).await?;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
        let mut buf = [0u8; 64];
        let n = tls.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "closed");
        Ok::<_, anyhow::Error>(())
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), attempt).await,
        Ok(Err(_)) | Err(_)
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_flood_does_not_starve_a_real_user() {
    let stack = Stack::start().await.unwrap();
    let client = stack.client(0, HttpVersion::Http1).unwrap();
    let url = stack.url("/status/200");
    assert_eq!(crate::get(&client, &url).await.0, 200);

    // Calm: the authenticated client alone.
    let mut calm = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
        calm.push(t.elapsed());
    }
    calm.sort();

    // Flood: 2,000 unauthenticated handshakes from another loopback address, 50 at a time,
    // bounded at 10 s, while the real user keeps going.
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let refused = Arc::new(AtomicU64::new(0));
    let flood = {
        let stack = &stack;
        let refused = refused.clone();
        let flooding = flooding.clone();
        async move {
            let started = Instant::now();
            let attempts = futures_util::stream::iter(0..2000)
                .take_while(|_| {
                    let go = started.elapsed() < Duration::from_secs(10);
                    async move { go }
                })
                .map(|_| async {
                    if unauthenticated_handshake(stack, "127.0.0.2:0".parse().unwrap()).await {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .buffer_unordered(50)
                .count()
                .await;
            flooding.store(false, Ordering::Relaxed);
            (attempts, started.elapsed())
        }
    };
    let user = async {
        let mut during = Vec::new();
        let mut failures = 0;
        while flooding.load(Ordering::Relaxed) {
            let t = Instant::now();
            match client.get(&url).send().await {
                Ok(r) if r.status() == 200 => during.push(t.elapsed()),
                _ => failures += 1,
            }
        }
        (during, failures)
    };
    let ((attempts, flood_time), (mut during, failures)) = tokio::join!(flood, user);
    during.sort();
    let metrics = reqwest::get(format!("http://{}/metrics", stack.edge.admin_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let denied: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("doorless_edge_tls_handshakes_total{") && l.contains("result=\"denied\"")
                || l.starts_with("doorless_edge_connections_rejected_total{")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    eprintln!(
        "flood: {attempts} unauthenticated handshakes in {flood_time:?}, {} refused, {denied} counted \
         as denied/rejected; real user: {} requests, {failures} failed; p50 calm {:?} / flood {:?}; \
         p99 calm {:?} / flood {:?}",
        refused.load(Ordering::Relaxed),
        during.len(),
        percentile(&calm, 0.5),
        percentile(&during, 0.5),
        percentile(&calm, 0.99),
        percentile(&during, 0.99),
    );
    assert_eq!(
        failures, 0,
        "the authenticated client must not fail during the flood"
    );
    assert!(!during.is_empty());
    assert_eq!(
        refused.load(Ordering::Relaxed),
        attempts as u64,
        "every unauthenticated handshake is refused"
    );
    assert!(
        denied >= attempts as f64,
        "every refusal is counted ({denied} < {attempts})"
    );
    assert_eq!(stack.ha_requests() as usize, 101 + during.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_closed_at_the_header_timeout() {
    let options = StackOptions {
        edge: EdgeOptions {
            limits: Some("header_read_timeout = \"1s\"\n".into()),
            ..EdgeOptions::default()
        },
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let mut tls = e2e::tls_connect(
        &stack.server_ca,
        &stack.home().host,
        stack.edge.https_addr(),
        Some(&stack.home().device),
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    let started = Instant::now();
    // An incomplete head, then silence.
    tls.write_all(b"GET / HTTP/1.1\r\nHost: ").await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf)).await;
    let took = started.elapsed();
    eprintln!("slowloris connection closed after {took:?}");
    assert!(closed.is_ok(), "the slow connection was not closed");
    assert!(
        took >= Duration::from_millis(900),
        "closed too early: {took:?}"
    );
    assert_eq!(stack.ha_requests(), 0);
}
