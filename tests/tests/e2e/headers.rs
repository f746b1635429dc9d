//! Request header hygiene through the real binaries: header names with underscores are
//! dropped by default (nginx's `underscores_in_headers off`), counted, and forwarded only when
//! `limits.underscores_in_headers = true`.

use e2e::{HttpVersion, Stack, StackOptions};

async fn send_underscored(stack: &Stack, version: HttpVersion, tag: &str) {
    let client = stack.client(0, version).unwrap();
    let response = client
        .get(stack.url(&format!("/status/200?{tag}")))
        .header("X_Forwarded_For", "6.6.6.6")
        .header("X_Remote_User", "admin")
        .header("X-Kept", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

fn seen(stack: &Stack, tag: &str) -> e2e::SeenRequest {
    stack
        .home()
        .ha
        .recorder
        .seen()
        .into_iter()
        .find(|r| r.target.ends_with(tag))
        .unwrap_or_else(|| panic!("{tag} not seen"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscored_header_names_are_dropped_and_counted() {
    let stack = Stack::start().await.unwrap();
    let series = "doorless_edge_request_headers_dropped_total{site=\"home\",reason=\"underscore\"}";
    for (version, tag) in [(HttpVersion::Http1, "h1"), (HttpVersion::Auto, "h2")] {
        let before = stack.edge.metric(series).await.unwrap();
        send_underscored(&stack, version, tag).await;
        let request = seen(&stack, tag);
        assert!(
            !request.headers.iter().any(|(n, _)| n.contains('_')),
            "{tag}: {request:?}"
        );
        assert_eq!(request.header_one("x-kept"), Some("1"));
        assert_eq!(
            request.header_all("x-forwarded-for").len(),
            1,
            "{request:?}"
        );
        assert_ne!(request.header_one("x-forwarded-for"), Some("6.6.6.6"));
        assert_eq!(stack.edge.metric(series).await.unwrap(), before + 2.0);
    }
    assert!(
        stack.edge.output().contains("underscores_in_headers"),
        "the first drop is logged with the setting's name"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn underscored_header_names_pass_when_allowed() {
    let stack = Stack::start_with(StackOptions::with_limits("underscores_in_headers = true"))
        .await
        .unwrap();
    send_underscored(&stack, HttpVersion::Http1, "allowed").await;
    let request = seen(&stack, "allowed");
    assert_eq!(
        request.header_one("x_remote_user"),
        Some("admin"),
        "{request:?}"
    );
}
