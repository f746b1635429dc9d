//! The edge's access log through the real binaries: `complete=true` exactly when the whole
//! body went out (with and without `Content-Length`, HTTP/1.1 and HTTP/2, HEAD), `false` when
//! the client left mid-body, and one `websocket closed` line per WebSocket when it closes,
//! with its duration and the bytes each way.

use std::time::Duration;

use e2e::{HttpVersion, Stack};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

/// The access lines (`access:` target) of the edge so far.
fn access_lines(stack: &Stack) -> Vec<String> {
    stack
        .edge
        .output()
        .lines()
        .filter(|l| l.contains(" access:") || l.contains("\"access\""))
        .map(str::to_owned)
        .collect()
}

/// Waits for the access line that carries `needle`.
async fn line_with(stack: &Stack, needle: &str) -> String {
    e2e::poll_until(needle, Duration::from_secs(10), || async {
        access_lines(stack).into_iter().find(|l| l.contains(needle))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", access_lines(stack).join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_is_true_exactly_when_the_body_was_delivered() {
    let stack = Stack::start().await.unwrap();
    let h1 = stack.client(0, HttpVersion::Http1).unwrap();
    let h2 = stack.client(0, HttpVersion::Auto).unwrap();
    for (client, path, bytes) in [
        (&h1, "/bytes/100001", 100_001),
        (&h1, "/bytes/100002?chunked", 100_002),
        (&h2, "/bytes/100003", 100_003),
        (&h2, "/bytes/100004?chunked", 100_004),
        (&h1, "/bytes/3", 3),
    ] {
        let (status, body) = crate::get(client, &stack.url(path)).await;
        assert_eq!((status.as_u16(), body.len()), (200, bytes), "{path}");
        let line = line_with(&stack, &format!("bytes={bytes} ")).await;
        assert!(line.contains("complete=true"), "{path}: {line}");
    }
    // The stand-in answers HEAD with an empty 404; what matters is the empty body.
    h1.head(stack.url("/bytes/100006")).send().await.unwrap();
    let line = line_with(&stack, "method=HEAD").await;
    assert!(
        line.contains("bytes=0 ") && line.contains("complete=true"),
        "{line}"
    );

    // A client that leaves after the first bytes of a large body.
    let mut response = h1.get(stack.url("/bytes/50000000")).send().await.unwrap();
    let first = response.chunk().await.unwrap().unwrap_or_default();
    assert!(!first.is_empty());
    drop(response);
    let line = line_with(&stack, "complete=false").await;
    assert!(!line.contains("bytes=50000000 "), "{line}");
    assert_eq!(
        access_lines(&stack)
            .iter()
            .filter(|l| l.contains("complete=false"))
            .count(),
        1,
        "{}",
        access_lines(&stack).join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_logged_when_it_closes_with_bytes_each_way() {
    let stack = Stack::start().await.unwrap();
    let mut ws = stack.ws(0).await.unwrap();
    ws.send(Message::text("x".repeat(1000))).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo.len(), 1000);
    assert!(
        !access_lines(&stack)
            .iter()
            .any(|l| l.contains("status=101")),
        "logged before it closed: {:?}",
        access_lines(&stack)
    );
    ws.close(None).await.unwrap();
    assert!(e2e::ws_closed_within(&mut ws, Duration::from_secs(10)).await);
    drop(ws);
    let line = line_with(&stack, "websocket closed").await;
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in {line}"))
    };
    assert!(line.contains("status=101"), "{line}");
    assert!(field("bytes_up") >= 1000, "{line}");
    assert!(field("bytes_down") >= 1000, "{line}");
    assert!(line.contains("total_ms="), "{line}");
}
