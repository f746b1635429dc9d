//! Both `/metrics` endpoints after real traffic: every family documented in docs/metrics.md
//! exists, and the counters count what happened.

use e2e::{HttpVersion, Stack};

/// Every `doorless_*` family name in docs/metrics.md.
fn documented() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let text = std::fs::read_to_string(path).unwrap();
    let mut names: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| n.starts_with("doorless_"))
        .map(str::to_owned)
        .collect();
    names.dedup();
    names
}

/// `# TYPE` lines name counters without `_total`.
fn family(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

fn value(text: &str, series_prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series_prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn scrape(admin: std::net::SocketAddr) -> String {
    let response = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_endpoints_export_every_documented_family_and_count_traffic() {
    use futures_util::{SinkExt, StreamExt};

    let stack = Stack::start().await.unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    for _ in 0..5 {
        assert_eq!(crate::get(&client, &stack.url("/status/200")).await.0, 200);
    }
    assert_eq!(crate::get(&client, &stack.url("/status/404")).await.0, 404);
    let (_, body) = crate::get(&client, &stack.url("/bytes/10000")).await;
    assert_eq!(body.len(), 10_000);
    // One denied handshake.
    let anonymous = stack
        .client_with(&stack.home().host, None, HttpVersion::Auto)
        .unwrap();
    assert!(anonymous.get(stack.url("/")).send().await.is_err());
    // One WebSocket round trip.
    let mut ws = stack.ws(0).await.unwrap();
    ws.send(tokio_tungstenite::tungstenite::Message::text("m"))
        .await
        .unwrap();
    let _ = ws.next().await;

    let edge = scrape(stack.edge.admin_addr()).await;
    let connector_admin = stack.connectors[0].admin_addr().unwrap();
    let connector = scrape(connector_admin).await;
    let names = documented();
    assert!(
        names.len() >= 25,
        "docs/metrics.md lists the families: {names:?}"
    );
    for name in &names {
        let text = if name.starts_with("doorless_edge_") {
            &edge
        } else {
            &connector
        };
        assert!(
            text.contains(&format!("# TYPE {} ", family(name))),
            "{name} is documented but not exported"
        );
    }
    // And nothing is exported that is not documented.
    for text in [&edge, &connector] {
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let exported = line.split(' ').nth(2).unwrap();
            assert!(
                names.iter().any(|n| family(n) == exported),
                "{exported} is exported but not documented in docs/metrics.md"
            );
        }
    }

    let site = "site=\"home\"";
    assert!(
        value(
            &edge,
            &format!("doorless_edge_requests_total{{{site},class=\"2xx\"}}")
        ) >= 6.0
    );
    assert!(
        value(
            &edge,
            &format!("doorless_edge_requests_total{{{site},class=\"4xx\"}}")
        ) >= 1.0
    );
    assert!(
        value(
            &edge,
            "doorless_edge_tls_handshakes_total{site=\"home\",result=\"denied\",reason=\"no_cert\"}"
        ) >= 1.0
    );
    assert!(value(&edge, "doorless_edge_response_bytes_total{site=\"home\"}") >= 10_000.0);
    assert_eq!(value(&edge, "doorless_edge_connectors{site=\"home\"}"), 2.0);
    assert_eq!(
        value(&edge, "doorless_edge_active_websockets{site=\"home\"}"),
        1.0
    );
    // Every certificate's expiry is in the future: the server, CA and issued ones.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for kind in [
        "server_local",
        "client_ca",
        "device",
        "connector",
        "tunnel",
        "tunnel_ca",
        "connector_ca",
    ] {
        let series: Vec<f64> = edge
            .lines()
            .filter(|l| l.starts_with("doorless_edge_certificate_expiry_timestamp_seconds{"))
            .filter(|l| l.contains(&format!("kind=\"{kind}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert!(
            !series.is_empty() && series.iter().all(|t| *t > now),
            "{kind}: {series:?}"
        );
    }
    assert_eq!(
        value(
            &edge,
            "doorless_edge_certificates_expiring{site=\"home\",kind=\"device\"}"
        ),
        1.0,
        "the 30-day device certificate is within 30 days"
    );
    assert_eq!(
        value(
            &edge,
            "doorless_edge_certificates_expiring{site=\"home\",kind=\"connector\"}"
        ),
        0.0
    );
    assert_eq!(
        value(&edge, "doorless_edge_acme_renewal_failing{site=\"home\"}"),
        0.0
    );
    assert_eq!(
        value(&connector, "doorless_connector_edge_connections"),
        2.0
    );
    assert!(
        value(
            &connector,
            "doorless_connector_upstream_duration_seconds_count"
        ) >= 8.0
    );
    assert!(
        value(
            &connector,
            "doorless_connector_connection_attempts_total{result=\"ok\"}"
        ) >= 2.0
    );
    // Every slot (and, on the edge, every site) has its window reductions from the start
    // (the default controller, loss_tolerant, counts them).
    for reason in ["loss", "queue"] {
        let series = format!(
            "doorless_edge_tunnel_congestion_reductions_total{{site=\"home\",reason=\"{reason}\"}}"
        );
        assert!(edge.contains(&series), "{series} missing");
    }
    for slot in ["0", "1"] {
        for reason in ["loss", "queue"] {
            let series = format!(
                "doorless_connector_congestion_reductions_total{{connection=\"{slot}\",reason=\"{reason}\"}}"
            );
            assert!(connector.contains(&series), "{series} missing");
        }
    }
    drop(ws);
}
