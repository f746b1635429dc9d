//! What an operator reads off a running edge: a failed reload in `/status` (and its metric),
//! and `doorless-edge status` against the admin listener.

use std::time::Duration;

use e2e::{Edge, Pki, poll_until};

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_shows_in_status_until_one_succeeds() {
    let mut pki = Pki::new().unwrap();
    pki.add_site("home", e2e::HOME_HOST).unwrap();
    let edge = Edge::start(pki.root()).await.unwrap();
    let status = edge.status().await.unwrap();
    assert!(status["last_reload"].is_null(), "{status}");

    // A hand-edited, broken index: the edge keeps its previous state and says so.
    let index = pki.state.index_path();
    let good = std::fs::read(&index).unwrap();
    std::fs::write(&index, b"{ not json").unwrap();
    let last = poll_until("a failed reload in /status", DEADLINE, || async {
        let status = edge.status().await.ok()?;
        (status["last_reload"]["result"] == "error").then(|| status["last_reload"].clone())
    })
    .await
    .unwrap();
    let error = last["error"].as_str().unwrap();
    assert!(error.contains("index.json"), "{last}");
    assert!(
        last["at"].as_str().is_some_and(|t| t.contains('T')),
        "{last}"
    );
    assert!(
        edge.metric("doorless_edge_config_reloads_total{result=\"error\"}")
            .await
            .unwrap()
            >= 1.0
    );
    // Still serving the old state.
    assert_eq!(edge.status().await.unwrap()["sites"][0]["name"], "home");

    std::fs::write(&index, good).unwrap();
    let last = poll_until("a good reload in /status", DEADLINE, || async {
        let status = edge.status().await.ok()?;
        (status["last_reload"]["result"] == "ok").then(|| status["last_reload"].clone())
    })
    .await
    .unwrap();
    assert!(last["error"].is_null(), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_verb_shows_sites_connectors_and_passes_json_through() {
    let mut pki = Pki::new().unwrap();
    pki.add_site("home", e2e::HOME_HOST).unwrap();
    pki.add_site("cabin", e2e::CABIN_HOST).unwrap();
    let token = pki.connector_token("home", "connector-1").unwrap();
    let ha = e2e::StandIn::start().await.unwrap();
    let edge = Edge::start(pki.root()).await.unwrap();
    let config = e2e::ConnectorConfig::new(e2e::token_for(&token, &[edge.tunnel_addr()]), ha.addr);
    let _connector = e2e::Connector::start(config).await.unwrap();
    poll_until("the connector registered", DEADLINE, || async {
        (edge.site_connections("home").await.ok()? > 0).then_some(())
    })
    .await
    .unwrap();

    let admin = edge.admin_addr().to_string();
    let status = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (exit, stdout, stderr) =
            e2e::run_to_exit(&e2e::binaries().edge, &args, &[], Duration::from_secs(30))
                .await
                .unwrap();
        (exit, stdout, stderr)
    };
    let (exit, text, stderr) = status(vec!["status".into(), "--admin".into(), admin.clone()]).await;
    assert!(exit.success(), "{stderr}");
    assert!(
        text.contains(&format!("site home ({})", e2e::HOME_HOST)),
        "{text}"
    );
    assert!(text.contains("connector connector-1"), "{text}");
    assert!(text.contains("quic from 127.0.0.1:"), "{text}");
    assert!(text.contains(", up "), "{text}");
    assert!(text.contains("active stream(s)"), "{text}");
    assert!(
        text.contains(&format!(
            "site cabin ({})\n  no connector connected",
            e2e::CABIN_HOST
        )),
        "{text}"
    );
    assert!(text.contains("last reload: none since start"), "{text}");
    assert!(text.contains("certificate: local, valid until "), "{text}");

    let (exit, json, stderr) = status(vec![
        "status".into(),
        "--admin".into(),
        admin.clone(),
        "--json".into(),
    ])
    .await;
    assert!(exit.success(), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    let direct = edge.status().await.unwrap();
    assert_eq!(json["sites"].as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(json["version"], direct["version"]);
    assert_eq!(
        json["sites"][1]["connectors"][0]["id"], "connector-1",
        "{json}"
    );

    // Nothing listening: a clear error, not a hang.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (exit, _, stderr) = status(vec!["status".into(), "--admin".into(), closed_addr]).await;
    assert!(!exit.success());
    assert!(stderr.contains("is the edge running"), "{stderr}");
}
