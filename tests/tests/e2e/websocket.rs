//! WebSocket upgrades spliced end to end.

use std::time::Duration;

use bytes::Bytes;
use e2e::{HttpVersion, Stack};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn next<S>(ws: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(15), ws.next())
        .await
        .expect("no WebSocket message within 15 s")
        .expect("WebSocket ended")
        .expect("WebSocket error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_text_binary_big_ping_close() {
    let stack = Stack::start().await.unwrap();
    let ha = &stack.home().ha;
    let mut ws = stack.ws(0).await.unwrap();

    let seen = ha.last_seen().expect("the upgrade reached HA");
    assert_eq!(seen.target, "/api/websocket");
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.header_all("x-forwarded-proto"), ["https"]);

    ws.send(Message::text("hello through the tunnel"))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::text("hello through the tunnel")
    );
    assert_eq!(ha.recorder.websockets_open(), 1);

    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(vec![0u8, 1, 2, 255]));

    let big: Vec<u8> = (0..(1u64 << 20)).map(standin::pattern_byte).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::binary(big));

    ws.send(Message::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    assert_eq!(
        next(&mut ws).await,
        Message::Pong(Bytes::from_static(b"are you there"))
    );

    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4321),
        reason: "bye from the test".into(),
    }))
    .await
    .unwrap();
    match next(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Library(4321));
            assert_eq!(frame.reason.as_str(), "bye from the test");
        }
        other => panic!("expected the close frame back, got {other:?}"),
    }
    let end = tokio::time::timeout(Duration::from_secs(15), ws.next()).await;
    assert!(matches!(end, Ok(None | Some(Err(_)))), "{end:?}");
    e2e::poll_until(
        "the stand-in's WebSocket to close",
        Duration::from_secs(10),
        || async { (ha.recorder.websockets_open() == 0).then_some(()) },
    )
    .await
    .unwrap();
    assert_eq!(ha.requests(), 1);
}

/// A WebSocket stays usable while 100 other requests run next to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_stays_up_while_100_requests_run() {
    let stack = Stack::start().await.unwrap();
    let mut ws = stack.ws(0).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("before"));

    let client = stack.client(0, HttpVersion::Auto).unwrap();
    // Establish the HTTP/2 connection first so the 100 requests share it (see bulk.rs).
    let (status, _) = crate::get(&client, &stack.url("/status/204")).await;
    assert_eq!(status, 204);
    let requests = (0..100).map(|i| {
        let client = client.clone();
        let url = stack.url(&format!("/bytes/{}", 1000 + i));
        async move {
            client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await
        }
    });
    let (results, ()) = tokio::join!(futures_util::future::join_all(requests), async {
        // Keep talking on the WebSocket while the requests run.
        for i in 0..20 {
            let text = format!("during {i}");
            ws.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(next(&mut ws).await, Message::text(text));
        }
    });
    for (i, result) in results.into_iter().enumerate() {
        let body = result.unwrap_or_else(|e| panic!("request {i}: {e:?}"));
        assert_eq!(body.len(), 1000 + i);
    }

    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text("after"));
    assert_eq!(stack.home().ha.recorder.websockets_open(), 1);
    assert_eq!(stack.ha_requests(), 102);
}

/// Home Assistant speaks first on its WebSocket (`auth_required` right after the 101) and
/// answers `auth` at once. Each message must get through on its own, without the other side
/// sending anything more: a byte left in a buffer until the next write (a missing flush, a
/// Nagle delay behind an unacknowledged segment) would hold it back, and the client would
/// wait here, not just be slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_speaks_first_and_each_message_gets_through_alone() {
    let stack = Stack::start().await.unwrap();
    let home = stack.home();
    let https = stack.edge.https_addr();
    let tls = e2e::tls_connect(
        &stack.server_ca,
        &home.host,
        https,
        Some(&home.device),
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    let url = format!("wss://{}:{}/api/websocket?auth", home.host, https.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
    // Nothing sent yet: the server's first message must come on its own.
    assert_eq!(next(&mut ws).await, Message::text(standin::AUTH_REQUIRED));
    ws.send(Message::text(r#"{"type":"auth"}"#)).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::text(standin::AUTH_OK));
}
