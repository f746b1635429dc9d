//! Connection limits through the real edge: a connection upgraded to a WebSocket keeps its
//! place under `max_connections_per_ip` and `max_connections`, and its count in
//! `client_connections`, until the WebSocket closes.

use std::time::Duration;

use e2e::{EdgeOptions, HttpVersion, Stack, StackOptions};

async fn stack_with_limits(limits: &str) -> Stack {
    Stack::start_with(StackOptions {
        edge: EdgeOptions {
            limits: Some(limits.into()),
            ..EdgeOptions::default()
        },
        ..StackOptions::default()
    })
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
