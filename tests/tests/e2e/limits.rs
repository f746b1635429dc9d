//! Connection limits through the real edge: a connection upgraded to a WebSocket keeps its
//! place under `max_connections_per_ip` and `max_connections`, and its count in
//! `client_connections`, until the WebSocket closes.

use std::time::Duration;

use e2e::{HttpVersion, Stack, StackOptions};

async fn stack_with_limits(limits: &str) -> Stack {
    Stack::start_with(StackOptions::with_limits(limits))
        .await
        .unwrap()
}

async fn gauge(stack: &Stack) -> f64 {
    stack
        .edge
        .metric("doorless_edge_client_connections ")
        .await
        .unwrap()
}

async fn rejected(stack: &Stack, reason: &str) -> f64 {
    stack
        .edge
        .metric(&format!(
            "doorless_edge_connections_rejected_total{{reason=\"{reason}\"}}"
        ))
        .await
        .unwrap()
}

/// Two WebSockets fill a limit of two; a third connection is closed at accept (counted under
/// `reason`) while both are open; once one closes, a new connection gets through.
async fn websockets_hold_their_connection(limits: &str, reason: &str) {
    let stack = stack_with_limits(limits).await;
    let mut first = stack.ws(0).await.unwrap();
    let second = stack.ws(0).await.unwrap();
    e2e::poll_until(
        "two connections counted",
        Duration::from_secs(10),
        || async { (gauge(&stack).await == 2.0).then_some(()) },
    )
    .await
    .unwrap();
    let before = rejected(&stack, reason).await;
    let client = stack.client(0, HttpVersion::Http1).unwrap();
    let third = client.get(stack.url("/")).send().await;
    assert!(
        third.is_err(),
        "a third connection got through while two WebSockets were open: {third:?}"
    );
    assert_eq!(rejected(&stack, reason).await, before + 1.0);
    assert_eq!(gauge(&stack).await, 2.0, "the WebSockets are still counted");

    first.close(None).await.unwrap();
    drop(first);
    e2e::poll_until(
        "one connection counted",
        Duration::from_secs(10),
        || async { (gauge(&stack).await == 1.0).then_some(()) },
    )
    .await
    .unwrap();
    let (status, _) = crate::get(
        &stack.client(0, HttpVersion::Http1).unwrap(),
        &stack.url("/"),
    )
    .await;
    assert_eq!(status, 200);
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_count_against_max_connections_per_ip() {
    websockets_hold_their_connection("max_connections_per_ip = 2", "per_ip_limit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_count_against_max_connections() {
    websockets_hold_their_connection("max_connections = 2", "max_connections").await;
}

/// A TLS connection to the home site from source address `from` (any 127/8 address works on
/// Linux loopback), with the site's device certificate.
async fn connect_from(
    stack: &Stack,
    from: std::net::IpAddr,
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let home = stack.home();
    let config = e2e::tls_config(
        &stack.server_ca,
        Some((
            home.device.cert_pem.as_bytes(),
            home.device.key_pem.as_bytes(),
        )),
        &[b"http/1.1"],
    )?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((from, 0).into())?;
    let tcp = socket.connect(stack.edge.https_addr()).await?;
    let name = rustls_pki_types::ServerName::try_from(home.host.clone())?;
    let mut tls = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await??;
    // TLS 1.3: a refusal after the handshake shows on the first exchange.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", home.host).as_bytes())
        .await?;
    let mut first = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut first)).await??;
    anyhow::ensure!(first.starts_with(b"HTTP/1.1 200"), "{first:?}");
    Ok(tls)
}

/// With `ipv4_prefix = 24`, 127.0.0.1 and 127.0.0.2 are one address for the per-address cap
/// (the default IPv6 grouping, /64, works the same way; unit-tested in `limit.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_limits_group_clients_by_prefix() {
    let stack = stack_with_limits("max_connections_per_ip = 1\nipv4_prefix = 24").await;
    let one: std::net::IpAddr = [127, 0, 0, 1].into();
    let two: std::net::IpAddr = [127, 0, 0, 2].into();
    let held = connect_from(&stack, one).await.unwrap();
    let before = rejected(&stack, "per_ip_limit").await;
    assert!(
        connect_from(&stack, two).await.is_err(),
        "127.0.0.2 is in 127.0.0.1's /24"
    );
    assert_eq!(rejected(&stack, "per_ip_limit").await, before + 1.0);
    drop(held);
    e2e::poll_until(
        "the /24's slot is free",
        Duration::from_secs(10),
        || async { connect_from(&stack, two).await.ok().map(drop) },
    )
    .await
    .unwrap();
}
