//! The edge's session cookie never reaches Home Assistant, whatever the `Cookie` header looks
//! like: non-UTF-8 bytes, several lines, odd spacing, other cases, `$` attributes, commas,
//! quotes. Sent byte for byte over HTTP/1.1 (raw bytes on a TLS stream) and over HTTP/2
//! (hyper's client, which sends header bytes as given), checked at the stand-in.

use bytes::Bytes;
use e2e::{HOME_HOST, Stack};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Cookie lines (one request each) that all carry our cookie somewhere, with `SECRET`.
const SHAPES: &[&[&[u8]]] = &[
    &[b"a=1; __Host-doorless=SECRET; b=\xff\xfe"],
    &[b"\xff=1;__Host-doorless=SECRET"],
    &[b"a=1", b"__Host-doorless=SECRET"],
    &[b"  __Host-doorless  =  SECRET  ;b=2"],
    &[b"a=1\t;\t__Host-doorless=SECRET"],
    &[b"a=1 __Host-doorless=SECRET"],
    &[b"a=1, __Host-doorless=SECRET; c=3"],
    &[b"__HOST-DOORLESS=SECRET; __host-doorless=SECRET; d=4"],
    &[b"$Version=1; __Host-doorless=SECRET; $Path=/"],
    &[b"$__Host-doorless=SECRET"],
    &[b"__Host-doorless=\"SECRET\""],
];

/// Asserts that the stand-in saw `count` requests under `prefix`, none carrying the secret or
/// our cookie's name in any header, and the other cookies intact where there were some.
fn assert_never_forwarded(stack: &Stack, prefix: &str, count: usize) {
    let seen: Vec<_> = stack
        .home()
        .ha
        .recorder
        .seen()
        .into_iter()
        .filter(|r| r.target.starts_with(prefix))
        .collect();
    assert_eq!(seen.len(), count, "{seen:?}");
    for request in &seen {
        for (name, value) in &request.headers {
            let lower = value.to_ascii_lowercase();
            assert!(
                !lower.contains("secret") && !lower.contains("doorless"),
                "{}: {name}: {value:?} reached Home Assistant",
                request.target
            );
        }
        assert!(
            request.header_all("cookie").len() <= 1,
            "one Cookie line at most: {request:?}"
        );
    }
    let first = seen
        .iter()
        .find(|r| r.target == format!("{prefix}0"))
        .unwrap_or_else(|| panic!("{prefix}0 not seen"));
    assert_eq!(
        first.header_one("cookie"),
        Some("a=1; b=\u{fffd}\u{fffd}"),
        "the other cookies pass, non-UTF-8 bytes and all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_never_reaches_home_assistant_over_http1() {
    let stack = Stack::start().await.unwrap();
    let mut bytes = Vec::new();
    for (i, lines) in SHAPES.iter().enumerate() {
        bytes.extend_from_slice(
            format!("GET /status/200?h1={i} HTTP/1.1\r\nHost: {HOME_HOST}\r\n").as_bytes(),
        );
        for line in *lines {
            bytes.extend_from_slice(b"Cookie: ");
            bytes.extend_from_slice(line);
            bytes.extend_from_slice(b"\r\n");
        }
        if i + 1 == SHAPES.len() {
            bytes.extend_from_slice(b"Connection: close\r\n");
        }
        bytes.extend_from_slice(b"\r\n");
    }
    let raw = e2e::raw_http1(
        &stack.server_ca,
        HOME_HOST,
        stack.edge.https_addr(),
        Some(&stack.home().device),
        &bytes,
    )
    .await
    .unwrap();
    let answered = raw.windows(9).filter(|w| w == b"HTTP/1.1 ").count();
    assert_eq!(answered, SHAPES.len(), "{}", String::from_utf8_lossy(&raw));
    assert_never_forwarded(&stack, "/status/200?h1=", SHAPES.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_never_reaches_home_assistant_over_http2() {
    let stack = Stack::start().await.unwrap();
    let tls = e2e::tls_connect(
        &stack.server_ca,
        HOME_HOST,
        stack.edge.https_addr(),
        Some(&stack.home().device),
        &[b"h2"],
    )
    .await
    .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    for (i, lines) in SHAPES.iter().enumerate() {
        let mut request = http::Request::get(format!("https://{HOME_HOST}/status/200?h2={i}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        for line in *lines {
            request.headers_mut().append(
                http::header::COOKIE,
                http::HeaderValue::from_bytes(line).unwrap(),
            );
        }
        let response = tokio::time::timeout(
            std::time::Duration::from_secs(15),
            sender.send_request(request),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(response.status(), 200, "shape {i}");
        response.into_body().collect().await.unwrap();
    }
    assert_never_forwarded(&stack, "/status/200?h2=", SHAPES.len());
}
