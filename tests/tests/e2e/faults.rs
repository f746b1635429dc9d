//! Faults: a dead connector, a restarted connector, a restarted edge, a dead upstream.

use std::time::{Duration, Instant};

use e2e::{HttpVersion, Stack};

use crate::{get, poll_status};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connector_gives_503() {
    let mut stack = Stack::start().await.unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let (status, _) = get(&client, &stack.url("/status/200")).await;
    assert_eq!(status, 200);

    // SIGKILL: the connector cannot say goodbye; the edge must notice by itself.
    stack.connectors[0].kill();
    let before = stack.ha_requests();
    let started = Instant::now();
    let response = client
        .get(stack.url("/debug/request"))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let elapsed = started.elapsed();
    eprintln!(
        "first request after killing the connector: {} after {elapsed:?}",
        response.status()
    );
    crate::assert_no_server_header(response.headers());
    assert_eq!(response.status(), 503, "after {elapsed:?}");
    if elapsed > Duration::from_secs(2) {
        eprintln!("NOTE: the 503 took {elapsed:?} (> 2 s)");
    }
    assert_eq!(stack.ha_requests(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_connector_serves_again_within_5s() {
    let mut stack = Stack::start().await.unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let (status, _) = get(&client, &stack.url("/status/200")).await;
    assert_eq!(status, 200);

    // Killed and started again at once: the edge may still hold the dead sessions.
    let started = Instant::now();
    stack.connectors[0].respawn().unwrap();
    let took = poll_status(
        &client,
        &stack.url("/status/200"),
        200,
        Duration::from_secs(5),
    )
    .await;
    eprintln!(
        "serving again {took:?} after the connector restart ({:?} including the spawn)",
        started.elapsed()
    );
    // And it keeps serving: a few more requests all succeed (none routed to a dead session).
    for _ in 0..10 {
        let (status, _) = get(&client, &stack.url("/status/200")).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_reconnects_by_itself_after_an_edge_restart() {
    let mut stack = Stack::start().await.unwrap();
    let connector_pid = stack.connectors[0].pid();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let (status, _) = get(&client, &stack.url("/status/200")).await;
    assert_eq!(status, 200);

    let tunnel = stack.edge.tunnel_addr();
    stack.edge.restart().await.unwrap();
    assert_eq!(stack.edge.tunnel_addr(), tunnel);
    // The HTTPS port may have changed: a new client resolves to the new one.
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let took = poll_status(
        &client,
        &stack.url("/status/200"),
        200,
        Duration::from_secs(15),
    )
    .await;
    eprintln!("connector back {took:?} after the edge restart");
    assert_eq!(stack.connectors[0].pid(), connector_pid);
    assert!(
        stack.connectors[0].try_wait().is_none(),
        "the connector exited"
    );
    assert!(stack.edge.site_connections("home").await.unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_502() {
    let mut stack = Stack::start().await.unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let (status, _) = get(&client, &stack.url("/status/200")).await;
    assert_eq!(status, 200);

    stack.sites[0].ha.stop().await;
    for version in [HttpVersion::Auto, HttpVersion::Http1] {
        let client = stack.client(0, version).unwrap();
        let started = Instant::now();
        let (status, body) = get(&client, &stack.url("/status/200")).await;
        eprintln!(
            "{version:?}: {status} after {:?}: {:?}",
            started.elapsed(),
            String::from_utf8_lossy(&body)
        );
        assert_eq!(status, 502, "{version:?}");
    }
}
