//! The edge's cache of what Home Assistant marks public, through the real binaries: its
//! frontend files are fetched through the tunnel once and then answered by the edge, to
//! devices the policy lets in, per site; anything personal, private or uncacheable always
//! goes to Home Assistant.

use std::time::Duration;

use e2e::{EdgeOptions, HttpVersion, Stack, StackOptions};

/// GETs `path` on `site` and returns the status, the body and the `Age` header (present only
/// on answers from the cache).
async fn get(
    stack: &Stack,
    site: usize,
    version: HttpVersion,
    path: &str,
    header: Option<(&str, &str)>,
) -> (u16, String, Option<String>) {
    let client = stack.client(site, version).unwrap();
    let mut request = client.get(stack.url_for(site, path));
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let age = response
        .headers()
        .get("age")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, response.text().await.unwrap(), age)
}

fn requests(stack: &Stack, site: usize) -> u64 {
    stack.site(site).ha.recorder.requests()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frontend_files_cross_the_tunnel_once_per_site() {
    let stack = Stack::start_with(StackOptions {
        sites: 2,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let path = "/cached/ha/app.abc123.js";
    let series =
        |result| format!("doorless_edge_cache_requests_total{{site=\"home\",result=\"{result}\"}}");

    // First load: from Home Assistant, through the tunnel.
    let before = requests(&stack, 0);
    let (status, first, age) = get(&stack, 0, HttpVersion::Auto, path, None).await;
    assert_eq!((status, age), (200, None), "{first}");
    assert_eq!(requests(&stack, 0), before + 1);
    // Then from the edge, over either HTTP version, on new connections: same body, an `Age`.
    for version in [HttpVersion::Http1, HttpVersion::Auto] {
        let (status, again, age) = get(&stack, 0, version, path, None).await;
        assert_eq!((status, again.as_str()), (200, first.as_str()));
        assert!(age.is_some(), "a cached answer says its age");
    }
    assert_eq!(
        requests(&stack, 0),
        before + 1,
        "Home Assistant saw one request"
    );
    assert_eq!(stack.edge.metric(&series("miss")).await.unwrap(), 1.0);
    assert_eq!(stack.edge.metric(&series("hit")).await.unwrap(), 2.0);
    assert!(
        stack
            .edge
            .metric("doorless_edge_cache_bytes")
            .await
            .unwrap()
            > 0.0,
        "the entry is counted"
    );

    // Another site's same path is its own: it reaches that site's Home Assistant.
    let cabin = requests(&stack, 1);
    let (status, other, age) = get(&stack, 1, HttpVersion::Auto, path, None).await;
    assert_eq!((status, age), (200, None), "{other}");
    assert_eq!(requests(&stack, 1), cabin + 1);
    // A home device is still refused on the cabin's host, cached or not.
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let refused = client.get(stack.url_for(1, path)).send().await;
    assert!(
        refused.as_ref().map_or(true, |r| !r.status().is_success()),
        "{refused:?}"
    );
    assert_eq!(requests(&stack, 1), cabin + 1);

    // A different encoding asked for is a different entry.
    let (_, _, age) = get(
        &stack,
        0,
        HttpVersion::Auto,
        path,
        Some(("accept-encoding", "identity")),
    )
    .await;
    assert_eq!(age, None);
    assert_eq!(requests(&stack, 0), before + 2);

    // Credentials of its own: always Home Assistant's to answer.
    for personal in [
        ("authorization", "Bearer token"),
        ("cookie", "session=1"),
        ("range", "bytes=0-3"),
    ] {
        let seen = requests(&stack, 0);
        let (_, _, age) = get(&stack, 0, HttpVersion::Auto, path, Some(personal)).await;
        assert_eq!(age, None, "{personal:?}");
        assert_eq!(requests(&stack, 0), seen + 1, "{personal:?}");
    }

    // A hard reload (`no-cache`) goes to Home Assistant and refreshes the entry.
    let (_, fresh, age) = get(
        &stack,
        0,
        HttpVersion::Auto,
        path,
        Some(("cache-control", "no-cache")),
    )
    .await;
    assert_eq!(age, None);
    assert_ne!(fresh, first, "a new serial from Home Assistant");
    let seen = requests(&stack, 0);
    let (_, again, age) = get(&stack, 0, HttpVersion::Auto, path, None).await;
    assert_eq!((again.as_str(), age.is_some()), (fresh.as_str(), true));
    assert_eq!(requests(&stack, 0), seen);

    // Any other method on the path drops the entry.
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let posted = client.post(stack.url(path)).body("x").send().await.unwrap();
    assert_eq!(posted.status(), 200);
    let seen = requests(&stack, 0);
    let (_, _, age) = get(&stack, 0, HttpVersion::Auto, path, None).await;
    assert_eq!(age, None);
    assert_eq!(requests(&stack, 0), seen + 1);

    // An entry lives as long as the response allowed: `max-age=1` is gone within a second or
    // two, and the next request reaches Home Assistant.
    let short = "/cached/short/x.js";
    get(&stack, 0, HttpVersion::Auto, short, None).await;
    let seen = requests(&stack, 0);
    e2e::poll_until(
        "the 1 s entry to expire",
        Duration::from_secs(5),
        || async {
            let (_, _, age) = get(&stack, 0, HttpVersion::Http1, short, None).await;
            age.is_none().then_some(())
        },
    )
    .await
    .unwrap();
    assert!(requests(&stack, 0) > seen);

    // The access log says which answers came from the cache.
    e2e::poll_until(
        "access lines with cache=hit",
        Duration::from_secs(5),
        || async { stack.edge.output().contains("cache=\"hit\"").then_some(()) },
    )
    .await
    .unwrap();

    // A revoked device gets nothing, cached or not.
    get(&stack, 0, HttpVersion::Auto, path, None).await;
    stack
        .pki
        .state
        .revoke(pki::Kind::Device, "home", "phone")
        .unwrap();
    e2e::poll_until(
        "the revoked device to be refused",
        Duration::from_secs(5),
        || async {
            let client = stack.client(0, HttpVersion::Auto).unwrap();
            let refused = client.get(stack.url(path)).send().await;
            refused
                .map_or(true, |r| !r.status().is_success())
                .then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_not_marked_public_always_reach_home_assistant() {
    let stack = Stack::start().await.unwrap();
    for variant in ["private", "nostore", "cookie", "vary", "none"] {
        let path = format!("/cached/{variant}/a.js");
        let before = requests(&stack, 0);
        let (_, first, _) = get(&stack, 0, HttpVersion::Auto, &path, None).await;
        let (status, second, age) = get(&stack, 0, HttpVersion::Auto, &path, None).await;
        assert_eq!((status, age), (200, None), "{variant}");
        assert_ne!(first, second, "{variant}: both answered by Home Assistant");
        assert_eq!(requests(&stack, 0), before + 2, "{variant}");
    }
    assert_eq!(
        stack
            .edge
            .metric("doorless_edge_cache_entries")
            .await
            .unwrap(),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_zero_turns_the_cache_off() {
    let stack = Stack::start_with(StackOptions {
        edge: EdgeOptions {
            extra_toml: Some("[cache]\nmax_bytes = 0\n".into()),
            ..EdgeOptions::default()
        },
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let before = requests(&stack, 0);
    for _ in 0..2 {
        let (status, _, age) = get(&stack, 0, HttpVersion::Auto, "/cached/ha/a.js", None).await;
        assert_eq!((status, age), (200, None));
    }
    assert_eq!(requests(&stack, 0), before + 2);
}
