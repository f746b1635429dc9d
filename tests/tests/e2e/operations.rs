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
