//! The operator's path through the CLI: `init`, `site add` (token), `client add` (cert files),
//! then `run` the edge and a connector with what the CLI printed and wrote.

use std::time::Duration;

use e2e::{ConnectorConfig, Edge, HOME_HOST, HttpVersion, StandIn, binaries, run_to_exit};

use crate::get;

async fn edge_cli(args: &[&str]) -> String {
    let (status, stdout, stderr) =
        run_to_exit(&binaries().edge, args, &[], Duration::from_secs(30))
            .await
            .unwrap();
    assert!(
        status.success(),
        "doorless-edge {args:?}: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_site_add_client_add_then_run() {
    e2e::init();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let state_s = state.to_str().unwrap();
    let out_s = out.to_str().unwrap();

    edge_cli(&["init", "--state-dir", state_s]).await;
    let printed = edge_cli(&[
        "site",
        "add",
        "home",
        "--hostname",
        HOME_HOST,
        "--state-dir",
        state_s,
    ])
    .await;
    let token = printed
        .split_whitespace()
        .find(|w| w.starts_with("dl1."))
        .unwrap_or_else(|| panic!("site add printed no token:\n{printed}"));
    let token = pki::EnrollmentToken::decode(token).unwrap();
    assert_eq!(token.site, "home");
    edge_cli(&[
        "client",
        "add",
        "phone",
        "--site",
        "home",
        "--out",
        out_s,
        "--state-dir",
        state_s,
    ])
    .await;
    let cert_pem = std::fs::read_to_string(out.join("phone.crt")).unwrap();
    let key_pem = std::fs::read_to_string(out.join("phone.key")).unwrap();

    let ha = StandIn::start().await.unwrap();
    let edge = Edge::start(&state).await.unwrap();
    let config = ConnectorConfig::new(e2e::token_for(&token, &[edge.tunnel_addr()]), ha.addr);
    let _connector = e2e::Connector::start(config).await.unwrap();

    let server_ca = std::fs::read(pki::StateDir::open(&state).unwrap().server_ca_path()).unwrap();
    let device = pki::Issued {
        cert_pem,
        key_pem,
        cert_der: Vec::new(),
        key_der: Vec::new(),
        serial: Vec::new(),
        not_after: time::OffsetDateTime::now_utc(),
        fingerprint: [0; 32],
    };
    let url = format!(
        "https://{HOME_HOST}:{}/status/200",
        edge.https_addr().port()
    );
    for version in [HttpVersion::Http1, HttpVersion::Auto] {
        let mut builder =
            e2e::client_builder(&server_ca, HOME_HOST, edge.https_addr(), Some(&device)).unwrap();
        if version == HttpVersion::Http1 {
            builder = builder.http1_only();
        }
        let (status, _) = get(&builder.build().unwrap(), &url).await;
        assert_eq!(status, 200, "{version:?}");
    }
    let no_cert = e2e::client_builder(&server_ca, HOME_HOST, edge.https_addr(), None)
        .unwrap()
        .build()
        .unwrap();
    crate::assert_refused(&no_cert, &url).await;
    assert_eq!(ha.requests(), 2);
}
