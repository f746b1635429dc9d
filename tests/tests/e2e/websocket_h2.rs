//! WebSockets inside HTTP/2 (RFC 8441 extended CONNECT) end to end: a real HTTP/2 client
//! (hyper over `h2`, presenting the device certificate) opens WebSockets as streams of one
//! connection, next to ordinary requests; the stand-in Home Assistant sees an ordinary
//! HTTP/1.1 WebSocket handshake. Refusals (another `:protocol`, no version, a plain CONNECT,
//! no certificate on a public path, one WebSocket over the limit) are counted by reason and
//! reach nothing upstream; a revoked certificate's WebSockets close.

use std::time::Duration;

use bytes::Bytes;
use e2e::{EdgeOptions, H2Connection, H2WebSocket, HOME_HOST, Stack, StackOptions};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

async fn next(ws: &mut H2WebSocket) -> Message {
    tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .expect("no WebSocket message within 15 s")
        .expect("WebSocket ended")
        .expect("WebSocket error")
}

async fn echo(ws: &mut H2WebSocket, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    assert_eq!(next(ws).await, Message::text(text));
}

async fn errors(stack: &Stack, reason: &str) -> f64 {
    stack
        .edge
        .metric(&format!(
            "doorless_edge_request_errors_total{{site=\"home\",blame=\"client\",reason=\"{reason}\"}}"
        ))
        .await
        .unwrap()
}

async fn gauge(stack: &Stack, series: &str) -> f64 {
    stack.edge.metric(series).await.unwrap()
}

/// Echo (text, binary, 1 MiB, ping), what Home Assistant sees, four WebSockets and 40
/// ordinary requests on one connection at once, the gauges, and the access log at close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_over_http2_echo_and_share_the_connection() {
    let stack = Stack::start().await.unwrap();
    let ha = &stack.home().ha;
    let mut h2 = stack.h2(0).await.unwrap();
    let mut ws = h2.websocket("/api/websocket").await.unwrap();

    // Home Assistant sees an HTTP/1.1 WebSocket handshake with a key of the edge's making.
    let seen = ha.last_seen().expect("the handshake reached HA");
    assert_eq!(seen.target, "/api/websocket");
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.header_all("upgrade"), ["websocket"]);
    assert_eq!(seen.header_all("sec-websocket-version"), ["13"]);
    assert_eq!(seen.header_all("sec-websocket-key").len(), 1);
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(
        seen.header_all("host"),
        [format!("{HOME_HOST}:{}", stack.edge.https_addr().port())]
    );

    echo(&mut ws, "hello over HTTP/2").await;
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));
    let big: Vec<u8> = (0..(1u64 << 20)).map(standin::pattern_byte).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(big));
    ws.send(Message::Ping(Bytes::from_static(b"there?")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(Bytes::from_static(b"there?"))
    );

    // Three more WebSockets and 40 requests, all on this one connection, interleaved.
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(h2.websocket("/api/websocket").await.unwrap());
    }
    let requests = (0..40).map(|i| {
        let mut h2 = h2.clone();
        async move { h2.get(&format!("/bytes/{}", 1000 + i)).await }
    });
    let talk = async {
        for round in 0..10 {
            for (i, other) in others.iter_mut().enumerate() {
                echo(other, &format!("socket {i} round {round}")).await;
            }
            echo(&mut ws, &format!("first socket round {round}")).await;
        }
    };
    let (results, ()) = tokio::join!(futures_util::future::join_all(requests), talk);
    for (i, result) in results.into_iter().enumerate() {
        let (status, body) = result.unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        assert_eq!((status, body.len()), (200, 1000 + i));
    }
    assert_eq!(ha.recorder.websockets_open(), 4);
    assert_eq!(
        gauge(&stack, "doorless_edge_active_websockets{site=\"home\"}").await,
        4.0
    );
    assert_eq!(
        gauge(&stack, "doorless_edge_client_connections ").await,
        1.0
    );

    // A client ends its stream (END_STREAM) once the close handshake is done: here, on drop.
    for mut other in others {
        other.close(None).await.unwrap();
        assert!(e2e::ws_closed_within(&mut other, Duration::from_secs(10)).await);
    }
    ws.close(None).await.unwrap();
    assert!(e2e::ws_closed_within(&mut ws, Duration::from_secs(10)).await);
    drop(ws);
    e2e::poll_until(
        "the WebSockets to close",
        Duration::from_secs(10),
        || async {
            (ha.recorder.websockets_open() == 0
                && gauge(&stack, "doorless_edge_active_websockets{site=\"home\"}").await == 0.0)
                .then_some(())
        },
    )
    .await
    .unwrap();
    // The connection outlives its WebSockets.
    assert_eq!(h2.get("/bytes/7").await.unwrap().0, 200);

    // One access line per WebSocket at close, on HTTP/2, with the bytes each way.
    let lines = e2e::poll_until("four websocket lines", Duration::from_secs(10), || async {
        let lines: Vec<String> = stack
            .edge
            .output()
            .lines()
            .filter(|l| l.contains("websocket closed"))
            .map(str::to_owned)
            .collect();
        (lines.len() == 4).then_some(lines)
    })
    .await
    .unwrap();
    for line in &lines {
        assert!(line.contains("HTTP/2.0"), "{line}");
        assert!(line.contains("status=200"), "{line}");
        assert!(line.contains("grant=\"certificate\""), "{line}");
    }
    // The first socket carried the 1 MiB message up.
    let bytes_up = |line: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix("bytes_up=")?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(lines.iter().any(|l| bytes_up(l) > 1 << 20), "{lines:?}");
}

/// An extended CONNECT the edge must refuse, and the reason it is counted under.
struct Refused {
    protocol: Option<&'static str>,
    headers: &'static [(&'static str, &'static str)],
    reason: &'static str,
}

impl Refused {
    fn new(
        protocol: Option<&'static str>,
        headers: &'static [(&'static str, &'static str)],
        reason: &'static str,
    ) -> Self {
        Self {
            protocol,
            headers,
            reason,
        }
    }
}

/// `:protocol` other than `websocket`, a plain CONNECT, no or a wrong
/// `Sec-WebSocket-Version`: 400, counted by reason, nothing upstream, the connection fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_foreign_extended_connects_are_refused() {
    let stack = Stack::start().await.unwrap();
    let mut h2 = stack.h2(0).await.unwrap();
    let before_ha = stack.ha_requests();
    let version: &[(&str, &str)] = &[("sec-websocket-version", "13")];
    let cases = [
        Refused::new(Some("webtransport"), version, "upgrade_refused"),
        Refused::new(Some("connect-udp"), &[], "upgrade_refused"),
        // A plain CONNECT: a tunnel to anywhere.
        Refused::new(None, &[], "upgrade_refused"),
        Refused::new(Some("websocket"), &[], "bad_websocket_handshake"),
        Refused::new(
            Some("websocket"),
            &[("sec-websocket-version", "8")],
            "bad_websocket_handshake",
        ),
    ];
    for Refused {
        protocol,
        headers,
        reason,
    } in cases
    {
        let before = errors(&stack, reason).await;
        let response = h2
            .extended_connect("/api/websocket", protocol, headers)
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{protocol:?} {headers:?}");
        assert_eq!(
            errors(&stack, reason).await,
            before + 1.0,
            "{protocol:?} {headers:?}"
        );
    }
    assert_eq!(
        stack.ha_requests(),
        before_ha,
        "a refused CONNECT reached HA"
    );
    assert!(h2.is_open());
    assert_eq!(h2.get("/status/200").await.unwrap().0, 200);
}

/// A revoked certificate's WebSockets over HTTP/2 close, and its connection takes nothing
/// more, as on HTTP/1.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_certificate_loses_its_http2_websockets() {
    let stack = Stack::start().await.unwrap();
    let mut h2 = stack.h2(0).await.unwrap();
    let mut ws = h2.websocket("/api/websocket").await.unwrap();
    echo(&mut ws, "before").await;
    let before = stack.ha_requests();
    stack
        .pki
        .state
        .revoke(pki::Kind::Device, "home", "phone")
        .unwrap();
    assert!(
        e2e::ws_closed_within(&mut ws, Duration::from_secs(10)).await,
        "the revoked device's HTTP/2 WebSocket is still open 10 s after revoke"
    );
    assert!(
        h2.get("/status/200").await.is_err(),
        "the revoked connection still works"
    );
    e2e::poll_until("HA's end to close", Duration::from_secs(10), || async {
        (stack.home().ha.recorder.websockets_open() == 0).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(stack.ha_requests(), before);
}

/// `limits.h2_max_websockets` bounds the WebSockets of one connection (429, counted); the
/// connection still serves requests, and a closed WebSocket's place is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_per_http2_connection_are_limited() {
    let stack = Stack::start_with(StackOptions::with_limits("h2_max_websockets = 2\n"))
        .await
        .unwrap();
    let mut h2 = stack.h2(0).await.unwrap();
    let mut first = h2.websocket("/api/websocket").await.unwrap();
    let mut second = h2.websocket("/api/websocket").await.unwrap();
    let before = errors(&stack, "too_many_websockets").await;
    let before_ha = stack.ha_requests();
    let third = h2
        .extended_connect(
            "/api/websocket",
            Some("websocket"),
            &[("sec-websocket-version", "13")],
        )
        .await
        .unwrap();
    assert_eq!(third.status(), 429);
    assert_eq!(errors(&stack, "too_many_websockets").await, before + 1.0);
    assert_eq!(stack.ha_requests(), before_ha);
    echo(&mut first, "still here").await;
    echo(&mut second, "me too").await;
    assert_eq!(h2.get("/status/200").await.unwrap().0, 200);

    // Another connection has its own places.
    let mut other = stack.h2(0).await.unwrap();
    let mut elsewhere = other.websocket("/api/websocket").await.unwrap();
    echo(&mut elsewhere, "elsewhere").await;

    second.close(None).await.unwrap();
    assert!(e2e::ws_closed_within(&mut second, Duration::from_secs(10)).await);
    drop(second);
    let mut again = e2e::poll_until("a free WebSocket place", Duration::from_secs(10), || {
        let mut h2 = h2.clone();
        async move { h2.websocket("/api/websocket").await.ok() }
    })
    .await
    .unwrap();
    echo(&mut again, "again").await;
}

/// A public path exempts plain requests only: a WebSocket there over HTTP/2 without a
/// certificate is 403 and reaches nothing; a plain request on it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_http2_websocket_on_a_public_path_without_credentials() {
    let stack = Stack::start_with(StackOptions {
        edge: EdgeOptions {
            extra_toml: Some("[sites.home]\npublic_paths = [\"/api/webhook/\"]\n".into()),
            ..EdgeOptions::default()
        },
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let mut anonymous =
        H2Connection::connect(&stack.server_ca, HOME_HOST, stack.edge.https_addr(), None)
            .await
            .unwrap_or_else(|e| panic!("a certificate-less HTTP/2 connection: {e:?}"));
    let before = errors(&stack, "no_credentials").await;
    let before_ha = stack.ha_requests();
    for path in ["/api/webhook/ws", "/api/websocket"] {
        let response = anonymous
            .extended_connect(path, Some("websocket"), &[("sec-websocket-version", "13")])
            .await
            .unwrap();
        assert_eq!(response.status(), 403, "{path}");
    }
    assert_eq!(errors(&stack, "no_credentials").await, before + 2.0);
    assert_eq!(stack.ha_requests(), before_ha);
    assert_eq!(anonymous.get("/api/webhook/plain").await.unwrap().0, 404);
    assert_eq!(stack.ha_requests(), before_ha + 1);
}

/// As `websocket::the_server_speaks_first_and_each_message_gets_through_alone`, over HTTP/2:
/// `auth_required` arrives after the 200 with nothing sent, `auth_ok` after `auth`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_speaks_first_over_http2() {
    let stack = Stack::start().await.unwrap();
    let mut h2 = stack.h2(0).await.unwrap();
    let mut ws = h2.websocket("/api/websocket?auth").await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text(standin::AUTH_REQUIRED));
    ws.send(Message::text(r#"{"type":"auth"}"#)).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text(standin::AUTH_OK));
}

/// `limits.h2_max_websockets = 0`: the edge does not offer RFC 8441, so an extended CONNECT
/// never reaches Home Assistant, while WebSockets over HTTP/1.1 and plain HTTP/2 requests work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_websocket_places_turns_extended_connect_off() {
    let stack = Stack::start_with(StackOptions::with_limits("h2_max_websockets = 0\n"))
        .await
        .unwrap();
    let mut h2 = stack.h2(0).await.unwrap();
    let before = stack.ha_requests();
    let refused = h2
        .extended_connect(
            "/api/websocket",
            Some("websocket"),
            &[("sec-websocket-version", "13")],
        )
        .await;
    assert!(
        refused.as_ref().map_or(true, |r| r.status() != 200),
        "{refused:?}"
    );
    assert_eq!(stack.ha_requests(), before);
    let mut h2 = stack.h2(0).await.unwrap();
    assert_eq!(h2.get("/status/200").await.unwrap().0, 200);
    let mut ws = stack.ws(0).await.unwrap();
    ws.send(Message::Text("over http/1.1".into()))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(matches!(echoed, Some(Ok(Message::Text(t))) if t.as_str() == "over http/1.1"));
}
