#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

struct Server {
    addr: SocketAddr,
    recorder: Arc<Recorder>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorder = Recorder::new();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(serve(listener, recorder.clone(), shutdown.clone()));
    Server {
        addr,
        recorder,
        shutdown,
        task,
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn client(addr: SocketAddr) -> Sender {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn get(addr: SocketAddr, target: &str) -> Request<Full<Bytes>> {
    Request::get(target)
        .header(header::HOST, addr.to_string())
        .body(Full::default())
        .unwrap()
}

async fn body_bytes(response: Response<Incoming>) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn debug_request_reports_target_headers_and_peer() {
    let server = start().await;
    let mut sender = client(server.addr).await;
    let request = Request::post("/debug/request?p=/a/../b&x=%2e")
        .header(header::HOST, "ha.example")
        .header("X-Forwarded-For", "203.0.113.7")
        .header("x-forwarded-for", "198.51.100.1")
        .header("X-Custom", "v")
        .body(Full::new(Bytes::from_static(b"ignored body")))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    let seen: SeenRequest = serde_json::from_slice(&body_bytes(response).await).unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/debug/request?p=/a/../b&x=%2e");
    assert_eq!(seen.header_one("host"), Some("ha.example"));
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        ["203.0.113.7", "198.51.100.1"]
    );
    assert_eq!(seen.header_one("X-CUSTOM"), Some("v"));
    assert!(
        seen.headers
            .iter()
            .all(|(n, _)| n == &n.to_ascii_lowercase())
    );
    assert!(seen.peer.starts_with("127.0.0.1:"), "{}", seen.peer);
    assert_eq!(server.recorder.requests(), 1);
    assert_eq!(server.recorder.seen(), vec![seen]);

    // The connection is still usable after a body that was not read by the route.
    let response = sender
        .send_request(get(server.addr, "/status/204"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(server.recorder.requests(), 2);
}

#[tokio::test]
async fn raw_target_with_dot_segments_is_kept_byte_for_byte() {
    let server = start().await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"GET /debug/request/../../etc/%2e%2e/x?q=%2F.. HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 404"), "{raw}");
    let seen = server.recorder.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].target, "/debug/request/../../etc/%2e%2e/x?q=%2F..");
}

#[tokio::test]
async fn bytes_with_content_length_and_chunked() {
    let server = start().await;
    let mut sender = client(server.addr).await;
    let n = 1_000_003u64;

    let response = sender
        .send_request(get(server.addr, &format!("/bytes/{n}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_LENGTH],
        n.to_string().as_str()
    );
    let body = body_bytes(response).await;
    assert_eq!(body.len() as u64, n);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, b)| *b == pattern_byte(i as u64))
    );
    let sha = hex(digest::digest(&digest::SHA256, &body).as_ref());
    assert_eq!(sha, pattern_sha256(n));

    let response = sender
        .send_request(get(server.addr, &format!("/bytes/{n}?chunked")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
    assert_eq!(response.headers()[header::TRANSFER_ENCODING], "chunked");
    let body = body_bytes(response).await;
    assert_eq!(
        hex(digest::digest(&digest::SHA256, &body).as_ref()),
        pattern_sha256(n)
    );

    let response = sender
        .send_request(get(server.addr, "/bytes/0"))
        .await
        .unwrap();
    assert_eq!(response.headers()[header::CONTENT_LENGTH], "0");
    assert!(body_bytes(response).await.is_empty());
    assert_eq!(
        pattern_sha256(0),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[tokio::test]
async fn upload_counts_and_hashes_streamed_body() {
    let server = start().await;
    let mut sender = client(server.addr).await;
    let data: Vec<u8> = (0..300_000u64).map(pattern_byte).collect();
    for method in [Method::POST, Method::PUT] {
        let request = Request::builder()
            .method(method)
            .uri("/upload")
            .header(header::HOST, "h")
            .body(Full::new(Bytes::from(data.clone())))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let json: serde_json::Value = serde_json::from_slice(&body_bytes(response).await).unwrap();
        assert_eq!(json["bytes"], 300_000);
        assert_eq!(json["sha256"], pattern_sha256(300_000));
    }
}

#[tokio::test]
async fn sse_first_event_arrives_immediately_and_keeps_coming() {
    let server = start().await;
    let mut sender = client(server.addr).await;
    let started = Instant::now();
    let response = sender.send_request(get(server.addr, "/sse")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&first[..], b"data: 0\n\n");
    let second = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&second[..], b"data: 1\n\n");
    assert!(started.elapsed() >= SSE_INTERVAL);
}

#[tokio::test]
async fn page_status_slow_and_not_found() {
    let server = start().await;
    let mut sender = client(server.addr).await;

    let response = sender.send_request(get(server.addr, "/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = String::from_utf8(body_bytes(response).await.to_vec()).unwrap();
    assert!(page.contains(&format!("<title>{PAGE_TITLE}</title>")));
    assert!(page.contains("/api/websocket"));
    assert!(page.contains("wss://"));

    for code in [200u16, 302, 418, 500, 503] {
        let response = sender
            .send_request(get(server.addr, &format!("/status/{code}")))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), code);
        assert!(body_bytes(response).await.is_empty());
    }

    let started = Instant::now();
    let response = sender
        .send_request(get(server.addr, "/slow/150"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(&body_bytes(response).await[..], b"slow");
    assert!(started.elapsed() >= Duration::from_millis(150));

    for target in ["/nope", "/bytes/x", "/status/abc", "/api/websocket/x"] {
        let response = sender.send_request(get(server.addr, target)).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{target}");
        body_bytes(response).await;
    }
    let request = Request::delete("/bytes/10")
        .header(header::HOST, "h")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        sender.send_request(request).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    // Every request was counted, including the 404s.
    assert_eq!(server.recorder.requests(), 1 + 5 + 1 + 4 + 1);
}

#[tokio::test]
async fn websocket_echo_text_binary_ping_close() {
    let server = start().await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let config = WebSocketConfig::default()
        .max_message_size(Some(WS_MAX_MESSAGE))
        .max_frame_size(Some(WS_MAX_MESSAGE));
    let (mut ws, response) = tokio_tungstenite::client_async_with_config(
        format!("ws://{}/api/websocket", server.addr),
        stream,
        Some(config),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(server.recorder.requests(), 1);
    assert_eq!(server.recorder.seen()[0].target, "/api/websocket");

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    assert_eq!(server.recorder.websockets_open(), 1);

    let big: Vec<u8> = (0..(2u64 << 20)).map(pattern_byte).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));

    ws.send(Message::Ping(Bytes::from_static(b"p1")))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(Bytes::from_static(b"p1"))
    );

    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4001),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Library(4001));
            assert_eq!(frame.reason.as_str(), "bye");
        }
        other => panic!("expected close echo, got {other:?}"),
    }
    assert!(ws.next().await.is_none());

    let deadline = Instant::now() + Duration::from_secs(5);
    while server.recorder.websockets_open() != 0 {
        assert!(Instant::now() < deadline, "websocket count did not drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `?auth`: Home Assistant's opening (the server speaks first), then the echo.
#[tokio::test]
async fn websocket_with_auth_opens_as_home_assistant_does() {
    let server = start().await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/api/websocket?auth", server.addr), stream)
            .await
            .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text(AUTH_REQUIRED)
    );
    ws.send(Message::text(r#"{"type":"auth"}"#)).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(AUTH_OK));
    ws.send(Message::text("then echo")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("then echo")
    );
}

#[tokio::test]
async fn websocket_without_upgrade_headers_is_400() {
    let server = start().await;
    let mut sender = client(server.addr).await;
    let response = sender
        .send_request(get(server.addr, "/api/websocket"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn shutdown_closes_listener_and_open_connections() {
    let server = start().await;
    let mut sender = client(server.addr).await;
    let response = sender.send_request(get(server.addr, "/sse")).await.unwrap();
    let mut body = response.into_body();
    body.frame().await.unwrap().unwrap();

    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("ws://{}/api/websocket", server.addr), stream)
            .await
            .unwrap();

    server.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("serve returns after shutdown")
        .unwrap();

    // The endless stream ends (with an error: the connection was dropped).
    let rest = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
    assert!(rest.is_ok());
    // The WebSocket is gone too.
    let ws_end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ws_end.is_ok());
    assert_eq!(server.recorder.websockets_open(), 0);
    assert!(TcpStream::connect(server.addr).await.is_err());
}

#[test]
fn recorder_log_is_bounded() {
    let recorder = Recorder::new();
    for i in 0..(LOG_CAPACITY + 10) {
        recorder.record(SeenRequest {
            method: "GET".into(),
            target: format!("/{i}"),
            headers: vec![],
            peer: "p".into(),
        });
    }
    assert_eq!(recorder.requests(), (LOG_CAPACITY + 10) as u64);
    let seen = recorder.seen();
    assert_eq!(seen.len(), LOG_CAPACITY);
    assert_eq!(seen[0].target, "/10");
}

#[test]
fn self_check_probes_are_counted_apart() {
    let recorder = Recorder::new();
    let request = |ua: &str| SeenRequest {
        method: "GET".into(),
        target: "/".into(),
        headers: vec![("user-agent".into(), ua.into())],
        peer: "p".into(),
    };
    recorder.record(request("doorless-connector/0.1.0 check"));
    recorder.record(request("Mozilla/5.0 check"));
    recorder.record(request("doorless-connector/0.1.0"));
    assert_eq!(recorder.self_checks(), 1);
    assert_eq!(recorder.requests(), 2);
    assert!(recorder.seen().iter().all(|s| !s.is_self_check()));
}
