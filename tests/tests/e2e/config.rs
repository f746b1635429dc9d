//! Configuration: unknown keys are refused with exit code 78 (EX_CONFIG) naming the key; the connector can
//! take its token and upstream from the environment and its edges from the file.

use std::time::Duration;

use e2e::{ConnectorConfig, HttpVersion, Pki, Stack, StackOptions, binaries, run_to_exit};

use crate::get;

const EXIT_CONFIG: i32 = 78;

async fn assert_config_error(program: &std::path::Path, config: &str, key: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let path = path.to_str().unwrap();
    let (status, stdout, stderr) = run_to_exit(
        program,
        &["run", "--config", path],
        &[],
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    let context = format!(
        "{} with\n{config}\nstatus {status}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        program.display()
    );
    assert_eq!(status.code(), Some(EXIT_CONFIG), "{context}");
    assert!(
        stderr.contains(key),
        "the message does not name {key:?}: {context}"
    );
}

#[tokio::test]
async fn connector_unknown_key_exits_78_naming_it() {
    let mut pki = Pki::new().unwrap();
    pki.add_site("home", e2e::HOME_HOST).unwrap();
    let token = pki.connector_token("home", "connector-1").unwrap().encode();
    let valid =
        format!("token = \"{token}\"\nupstream = \"http://127.0.0.1:8123\"\nconnections = 1\n");
    let connector = &binaries().connector;
    assert_config_error(
        connector,
        &format!("{valid}frobnicate = true\n[listen]\nadmin = \"127.0.0.1:0\"\n"),
        "frobnicate",
    )
    .await;
    assert_config_error(
        connector,
        &format!("{valid}[listen]\nadmin = \"127.0.0.1:0\"\nwobble = 1\n"),
        "wobble",
    )
    .await;
}

#[tokio::test]
async fn edge_unknown_key_exits_78_naming_it() {
    let pki = Pki::new().unwrap();
    let state = pki.root().to_str().unwrap().to_owned();
    let listen =
        "[listen]\nhttps = \"127.0.0.1:0\"\ntunnel = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n";
    let edge = &binaries().edge;
    assert_config_error(
        edge,
        &format!("state_dir = \"{state}\"\nfrobnicate = true\n{listen}"),
        "frobnicate",
    )
    .await;
    assert_config_error(
        edge,
        &format!("state_dir = \"{state}\"\n{listen}wobble = 1\n"),
        "wobble",
    )
    .await;
    assert_config_error(
        edge,
        &format!("state_dir = \"{state}\"\n{listen}[limits]\nheader_read_timout = \"10s\"\n"),
        "header_read_timout",
    )
    .await;
}

/// `DOORLESS_TOKEN` / `DOORLESS_UPSTREAM` from the environment, and an `edges` override in the
/// file that wins over the (wrong) edge address inside the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connector_from_environment_with_edges_override() {
    let stack = Stack::start_with(StackOptions {
        connectors: false,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let site = stack.home();
    // Nothing listens on UDP port 9 (discard) here: only the override can work.
    let token = e2e::token_for(&site.token, &["127.0.0.1:9".parse().unwrap()]);
    let mut config = ConnectorConfig::new(String::new(), site.ha.addr);
    config.from_env = true;
    config.edges = Some(vec![stack.edge.tunnel_addr()]);
    config.connections = 1;
    config.env = vec![
        ("DOORLESS_TOKEN".to_owned(), token),
        (
            "DOORLESS_UPSTREAM".to_owned(),
            format!("http://{}", site.ha.addr),
        ),
    ];
    let _connector = e2e::Connector::start(config).await.unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let (status, _) = get(&client, &stack.url("/status/200")).await;
    assert_eq!(status, 200);
    assert_eq!(stack.ha_requests(), 1);
}

/// The edge takes `DOORLESS_STATE_DIR` and nested keys (`DOORLESS_LIMITS__UPSTREAM_TIMEOUT`)
/// from the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_from_environment_with_nested_key() {
    let stack = Stack::start_with(StackOptions {
        edge: e2e::EdgeOptions {
            state_dir_from_env: true,
            env: vec![(
                "DOORLESS_LIMITS__UPSTREAM_TIMEOUT".to_owned(),
                "1s".to_owned(),
            )],
            ..e2e::EdgeOptions::default()
        },
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let (status, _) = get(&client, &stack.url("/status/200")).await;
    assert_eq!(status, 200);
    // The 1 s upstream timeout from the environment applies.
    let (status, _) = get(&client, &stack.url("/slow/5000")).await;
    assert_eq!(status, 504);
}
