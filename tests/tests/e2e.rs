//! End-to-end tests: the real `doorless-edge` and `doorless-connector` binaries on port 0,
//! driven by real clients, in front of the in-process stand-in Home Assistant.
//!
//! One test binary (one link); the cases live in `e2e/*.rs`. The harness is `e2e` (`src/lib.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "e2e/access_log.rs"]
mod access_log;
#[path = "e2e/acme.rs"]
mod acme;
#[path = "e2e/bodies.rs"]
mod bodies;
#[path = "e2e/bulk.rs"]
mod bulk;
#[path = "e2e/cache.rs"]
mod cache;
#[path = "e2e/cli.rs"]
mod cli;
#[path = "e2e/config.rs"]
mod config;
#[path = "e2e/cookies.rs"]
mod cookies;
#[path = "e2e/demo.rs"]
mod demo;
#[path = "e2e/denials.rs"]
mod denials;
#[path = "e2e/edge_drain.rs"]
mod edge_drain;
#[path = "e2e/enroll.rs"]
mod enroll;
#[path = "e2e/faults.rs"]
mod faults;
#[path = "e2e/handshakes.rs"]
mod handshakes;
#[path = "e2e/headers.rs"]
mod headers;
#[path = "e2e/hostile_upstream.rs"]
mod hostile_upstream;
#[path = "e2e/http.rs"]
mod http;
#[path = "e2e/https_upstream.rs"]
mod https_upstream;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/limits.rs"]
mod limits;
#[path = "e2e/links.rs"]
mod links;
#[path = "e2e/memory.rs"]
mod memory;
#[path = "e2e/metrics.rs"]
mod metrics;
#[path = "e2e/operations.rs"]
mod operations;
#[path = "e2e/policy.rs"]
mod policy;
#[path = "e2e/readme.rs"]
mod readme;
#[path = "e2e/resilience.rs"]
mod resilience;
#[path = "e2e/security.rs"]
mod security;
#[path = "e2e/setup_acme.rs"]
mod setup_acme;
#[path = "e2e/tcp_fallback.rs"]
mod tcp_fallback;
#[path = "e2e/upgrades.rs"]
mod upgrades;
#[path = "e2e/websocket.rs"]
mod websocket;
#[path = "e2e/websocket_h2.rs"]
mod websocket_h2;

use std::time::Duration;

/// Fails if a response carries a `Server` header (the edge must never send one).
#[track_caller]
pub fn assert_no_server_header(headers: &reqwest::header::HeaderMap) {
    assert!(
        headers.get(reqwest::header::SERVER).is_none(),
        "response carries a Server header: {:?}",
        headers.get(reqwest::header::SERVER)
    );
}

/// GETs `url` and returns status and body.
pub async fn get(client: &reqwest::Client, url: &str) -> (reqwest::StatusCode, bytes::Bytes) {
    let response = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let status = response.status();
    assert_no_server_header(response.headers());
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e:?}"));
    (status, body)
}

/// Polls GET `url` until it answers `want`, or panics after `deadline`. Returns how long it took.
pub async fn poll_status(
    client: &reqwest::Client,
    url: &str,
    want: u16,
    deadline: Duration,
) -> Duration {
    let started = std::time::Instant::now();
    loop {
        let last = match client.get(url).timeout(Duration::from_secs(2)).send().await {
            Ok(response) if response.status().as_u16() == want => return started.elapsed(),
            Ok(response) => format!("status {}", response.status()),
            Err(error) => format!("error {error:?}"),
        };
        assert!(
            started.elapsed() < deadline,
            "GET {url} did not answer {want} within {deadline:?}; last: {last}"
        );
        tokio::time::sleep(e2e::POLL_INTERVAL * 5).await;
    }
}

/// Asserts that a request is refused at the TLS layer (handshake error, or with TLS 1.3 an
/// error on the first request) rather than answered.
pub async fn assert_refused(client: &reqwest::Client, url: &str) {
    match client.get(url).send().await {
        Err(error) => eprintln!("refused as expected: {error:?}"),
        Ok(response) => panic!(
            "expected a TLS refusal, got {} with headers {:?}",
            response.status(),
            response.headers()
        ),
    }
}
