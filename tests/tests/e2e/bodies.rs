//! Request bodies the client got wrong, through the real binaries: a malformed chunked body is
//! the client's fault (400, blamed on the client), not the upstream's (it was 502).

use e2e::{HOME_HOST, RawResponse, Stack};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunked_body_is_a_400_blamed_on_the_client() {
    let stack = Stack::start().await.unwrap();
    let series = "doorless_edge_request_errors_total{site=\"home\",blame=\"client\",reason=\"bad_request_body\"}";
    let upstream = "doorless_edge_request_errors_total{site=\"home\",blame=\"upstream\"";
    let upstream_before = stack.edge.metric(upstream).await.unwrap();
    let bodies: [&[u8]; 3] = [
        // A chunk size that is no number.
        b"5\r\nhello\r\nzz\r\nbad\r\n0\r\n\r\n",
        // A chunk longer than its size line says.
        b"3\r\nhello\r\n0\r\n\r\n",
        // A size that overflows.
        b"5\r\nhello\r\nffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
    ];
    for (i, body) in bodies.iter().enumerate() {
        let before = stack.edge.metric(series).await.unwrap();
        let mut request = format!(
            "POST /upload HTTP/1.1\r\nHost: {HOME_HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        .into_bytes();
        request.extend_from_slice(body);
        let response = stack.raw(0, &request).await.unwrap();
        assert_eq!(response.status, 400, "body {i}: {response:?}");
        assert_eq!(
            stack.edge.metric(series).await.unwrap(),
            before + 1.0,
            "body {i}"
        );
    }
    assert_eq!(stack.edge.metric(upstream).await.unwrap(), upstream_before);
    // A well-formed chunked body still goes through.
    let request = format!(
        "POST /upload HTTP/1.1\r\nHost: {HOME_HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let response: RawResponse = stack.raw(0, request.as_bytes()).await.unwrap();
    assert_eq!(response.status, 200, "{response:?}");
}
