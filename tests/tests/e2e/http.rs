//! Plain HTTP through the tunnel: methods, protocols, statuses, the header contract, raw
//! targets, streaming responses.

use std::time::Duration;

use e2e::{HOME_HOST, HttpVersion, RawResponse, SeenRequest, Stack, StackOptions};
use reqwest::{StatusCode, Version};

use crate::{assert_no_server_header, get};

const VERSIONS: [(HttpVersion, Version); 2] = [
    (HttpVersion::Http1, Version::HTTP_11),
    (HttpVersion::Auto, Version::HTTP_2),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_over_http1_and_http2() {
    let stack = Stack::start().await.unwrap();
    for (version, expected) in VERSIONS {
        let client = stack.client(0, version).unwrap();
        let before = stack.ha_requests();

        let response = client.get(stack.url("/")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), expected, "negotiated protocol");
        assert_no_server_header(response.headers());
        let page = String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap();
        assert!(page.contains(standin::PAGE_TITLE), "{page}");

        let data: Vec<u8> = (0..100_000u64).map(standin::pattern_byte).collect();
        let response = client
            .post(stack.url("/upload"))
            .body(data)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), expected);
        let json: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(json["bytes"], 100_000);
        assert_eq!(json["sha256"], standin::pattern_sha256(100_000));

        let response = client
            .post(stack.url("/debug/request"))
            .body("hello")
            .send()
            .await
            .unwrap();
        let seen: SeenRequest = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.target, "/debug/request");

        for code in [201u16, 204, 302, 404, 418, 500, 503] {
            let (status, body) = get(&client, &stack.url(&format!("/status/{code}"))).await;
            assert_eq!(status.as_u16(), code, "HA's own status passes through");
            assert!(body.is_empty());
        }
        let (status, body) = get(&client, &stack.url("/bytes/1000?chunked")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.len(), 1000);

        assert_eq!(stack.ha_requests() - before, 3 + 7 + 1, "{version:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_and_tls13_both_work() {
    let stack = Stack::start().await.unwrap();
    let site = stack.home();
    for (min, max) in [
        (
            reqwest::tls::Version::TLS_1_2,
            reqwest::tls::Version::TLS_1_2,
        ),
        (
            reqwest::tls::Version::TLS_1_3,
            reqwest::tls::Version::TLS_1_3,
        ),
    ] {
        let client = e2e::client_builder(
            &stack.server_ca,
            &site.host,
            stack.edge.https_addr(),
            Some(&site.device),
        )
        .unwrap()
        .tls_version_min(min)
        .tls_version_max(max)
        .build()
        .unwrap();
        let (status, _) = get(&client, &stack.url("/status/200")).await;
        assert_eq!(status, StatusCode::OK, "{max:?}");
    }
}

/// What HA must see: exactly one X-Forwarded-For (bare client IP), one X-Forwarded-Proto:
/// https, one X-Forwarded-Host (the Host); no client-sent forwarding header survives; Host and
/// the raw target are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_header_contract() {
    let stack = Stack::start().await.unwrap();
    let port = stack.edge.https_addr().port();
    let target = "/debug/request?p=/a/../b&x=%2e";
    for (version, _) in VERSIONS {
        let client = stack.client(0, version).unwrap();
        let response = client
            .get(stack.url(target))
            .header("X-Forwarded-For", "203.0.113.9")
            .header("X-Forwarded-For", "10.1.2.3, 10.4.5.6")
            .header("Forwarded", "for=203.0.113.9;proto=http;host=evil.example")
            .header("X-Real-IP", "203.0.113.9")
            .header("X-Forwarded-Proto", "http")
            .header("X-Forwarded-Host", "evil.example")
            .header("X-Forwarded-Port", "80")
            .header("X-Forwarded-Server", "evil")
            .header("X-Custom", "kept")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_no_server_header(response.headers());
        let seen: SeenRequest = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert_eq!(Some(&seen), stack.home().ha.last_seen().as_ref());
        let host = format!("{HOME_HOST}:{port}");
        let ctx = format!("{version:?}: {seen:#?}");
        assert_eq!(seen.target, target, "raw target: {ctx}");
        assert_eq!(seen.header_all("host"), [host.as_str()], "{ctx}");
        assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"], "{ctx}");
        assert_eq!(seen.header_all("x-forwarded-proto"), ["https"], "{ctx}");
        assert_eq!(
            seen.header_all("x-forwarded-host"),
            [host.as_str()],
            "{ctx}"
        );
        assert!(seen.header_all("forwarded").is_empty(), "{ctx}");
        assert!(seen.header_all("x-real-ip").is_empty(), "{ctx}");
        let other_forwarded: Vec<_> = seen
            .headers
            .iter()
            .filter(|(n, _)| n.starts_with("x-forwarded-"))
            .filter(|(n, _)| {
                !["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"].contains(&n.as_str())
            })
            .collect();
        assert!(
            other_forwarded.is_empty(),
            "client-sent X-Forwarded-* survived: {ctx}"
        );
        assert_eq!(seen.header_all("x-custom"), ["kept"], "{ctx}");
        // The stand-in sees the connector as its TCP peer.
        assert!(seen.peer.starts_with("127.0.0.1:"), "{ctx}");
    }
}

/// reqwest (the `url` crate) removes dot segments, so this request is written by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_target_with_dot_segments_reaches_ha_byte_for_byte() {
    let stack = Stack::start().await.unwrap();
    let port = stack.edge.https_addr().port();
    let target = "/debug/request/../secret/%2e%2e/x?a=..%2F&b=/../c";
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {HOME_HOST}:{port}\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n"
    );
    let response = stack.raw(0, request.as_bytes()).await.unwrap();
    // The stand-in has no such route: its 404 comes back unchanged.
    assert_eq!(response.status, 404, "{response:?}");
    assert!(response.header("server").is_none(), "{response:?}");
    let seen = stack.home().ha.last_seen().expect("the request reached HA");
    assert_eq!(seen.target, target);
    assert_eq!(seen.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(stack.ha_requests(), 1);
}

/// The first Server-Sent Event arrives while the (endless) response is still open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_arrive_before_the_response_ends() {
    let stack = Stack::start().await.unwrap();
    for (version, _) in VERSIONS {
        let client = stack.client(0, version).unwrap();
        let mut response = client
            .get(stack.url("/sse"))
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut text = String::new();
        let started = std::time::Instant::now();
        // Two events prove streaming (the first is sent immediately, the next after 100 ms).
        while !text.contains("data: 1\n\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
                .await
                .unwrap_or_else(|_| panic!("{version:?}: no SSE event within 5 s; got {text:?}"))
                .unwrap()
                .expect("the stream must not end");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(text.starts_with("data: 0\n\n"), "{text:?}");
        eprintln!("{version:?}: two SSE events after {:?}", started.elapsed());
    }
}

/// Bodies larger than one read, with and without Content-Length, in both protocols.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_with_and_without_content_length() {
    let stack = Stack::start().await.unwrap();
    let n = 3_000_017u64;
    for (version, _) in VERSIONS {
        let client = stack.client(0, version).unwrap();
        for query in ["", "?chunked"] {
            let response = client
                .get(stack.url(&format!("/bytes/{n}{query}")))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            if query.is_empty() {
                assert_eq!(response.content_length(), Some(n), "{version:?}");
            }
            let body = response.bytes().await.unwrap();
            assert_eq!(body.len() as u64, n);
            assert!(
                body.iter()
                    .enumerate()
                    .all(|(i, b)| *b == standin::pattern_byte(i as u64))
            );
        }
    }
}

/// A long HTTP/2 download through the smallest response queue the edge allows
/// (`limits.h2_response_queue = 16384`: `feed` lets one 16 KiB piece at a time into `h2`),
/// while small responses share the connection: every byte arrives in order, and the small
/// ones still come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_http2_download_through_the_smallest_queue_arrives_whole() {
    let stack = Stack::start_with(StackOptions::with_limits("h2_response_queue = 16384"))
        .await
        .unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let n = 40_000_003u64;
    let started = std::time::Instant::now();
    let download = {
        let (client, url) = (client.clone(), stack.url(&format!("/bytes/{n}")));
        tokio::spawn(async move {
            let response = client.get(url).send().await.unwrap();
            assert_eq!(response.version(), Version::HTTP_2);
            response.bytes().await.unwrap()
        })
    };
    for i in 0..20u64 {
        let response = client
            .get(stack.url(&format!("/bytes/{}", 100 + i)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.bytes().await.unwrap().len() as u64, 100 + i);
    }
    let body = tokio::time::timeout(Duration::from_secs(60), download)
        .await
        .unwrap()
        .unwrap();
    eprintln!("{n} bytes over HTTP/2 in {:?}", started.elapsed());
    assert_eq!(body.len() as u64, n);
    assert!(
        body.iter()
            .enumerate()
            .all(|(i, b)| *b == standin::pattern_byte(i as u64))
    );
}

/// An upstream slower than `limits.upstream_timeout` is answered 504 by the edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504() {
    let stack = Stack::start_with(StackOptions::with_limits("upstream_timeout = \"1s\""))
        .await
        .unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let (status, body) = get(&client, &stack.url("/slow/100")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"slow");
    let started = std::time::Instant::now();
    let (status, _) = get(&client, &stack.url("/slow/5000")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    eprintln!("504 after {:?}", started.elapsed());
}

/// A response parsed from a raw exchange keeps header names lowercase (sanity of the helper).
#[test]
fn raw_response_parser() {
    let raw = b"HTTP/1.1 421 Misdirected Request\r\nContent-Length: 0\r\nX-A: b\r\n\r\n";
    let response = RawResponse::parse(raw).unwrap();
    assert_eq!(response.status, 421);
    assert_eq!(response.header("x-a"), Some("b"));
    assert!(response.body.is_empty());
}

/// The admin listener: `/healthz` and a `/status` naming sites, hostnames and connectors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_healthz_and_status() {
    let stack = Stack::start().await.unwrap();
    let admin = stack.edge.admin_addr();
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let response = plain
        .get(format!("http://{admin}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let status = stack.edge.status().await.unwrap();
    let sites = status["sites"].as_array().expect("sites array");
    assert_eq!(sites.len(), 1, "{status}");
    let home = &sites[0];
    assert_eq!(home["name"], "home", "{status}");
    assert_eq!(
        home["hostnames"],
        serde_json::json!([HOME_HOST]),
        "{status}"
    );
    let connectors = home["connectors"].as_array().expect("connectors array");
    assert_eq!(connectors.len(), 1, "{status}");
    assert_eq!(connectors[0]["id"], "connector-1", "{status}");
    assert_eq!(connectors[0]["connections"], 2, "{status}");
}

/// A download the client stops reading fills its HTTP/2 stream window and leaves body bytes
/// queued at the edge that the socket will not take; the connection's other responses still
/// come (the edge takes back credit that does not drain, `feed`), and the stalled one goes on
/// once it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_http2_download_does_not_hold_up_the_connection() {
    use http_body_util::BodyExt as _;
    let stack = Stack::start().await.unwrap();
    let mut h2 = stack.h2(0).await.unwrap();
    let stalled = h2.head_only("/bytes/50000000").await.unwrap();
    assert_eq!(stalled.status(), 200);
    // Wait until the edge has filled the stream's window and the count stops moving: what
    // it handed over since then sits queued in front of a socket that will not take it.
    let metric = "doorless_edge_response_bytes_total";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut last = -1.0;
    loop {
        let now = stack.edge.metric(metric).await.unwrap();
        if now >= 1_000_000.0 && now == last {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the download never stalled ({now} bytes)"
        );
        last = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let started = std::time::Instant::now();
    for i in 0..5 {
        let (status, body) = tokio::time::timeout(
            Duration::from_secs(15),
            h2.get(&format!("/bytes/{}", 1000 + i)),
        )
        .await
        .expect("a small response within 15 s beside the stalled download")
        .unwrap();
        assert_eq!((status, body.len()), (200, 1000 + i));
    }
    // Whether credit had to be taken back depends on where the client's window cut the last
    // piece handed to `h2` (at most one piece is queued beyond it) against the bound, which
    // follows this run's drain rate: so the count is shown, not asserted here (the `feed`
    // unit tests assert it deterministically).
    eprintln!(
        "5 small responses beside the stalled download: {:?} (credit reclaims: {})",
        started.elapsed(),
        stack
            .edge
            .metric("doorless_edge_h2_queue_reclaims_total")
            .await
            .unwrap()
    );
    // The stalled download resumes when read.
    let mut body = stalled.into_body();
    let mut got = 0usize;
    while got < 5_000_000 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got += frame.data_ref().map_or(0, |d| d.len());
    }
}
