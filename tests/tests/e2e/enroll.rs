//! Enrollment without files: a connector joins with a one-time code (its key made at home),
//! through the real `doorless-edge site code` and `doorless-connector enroll`/`run`.

use std::path::Path;
use std::time::Duration;

use e2e::{ConnectorConfig, Edge, HOME_HOST, Pki, StandIn, binaries, run_to_exit};

use crate::get;

const CLI_DEADLINE: Duration = Duration::from_secs(60);

async fn edge_cli(args: &[&str]) -> String {
    let (status, stdout, stderr) = run_to_exit(&binaries().edge, args, &[], CLI_DEADLINE)
        .await
        .unwrap();
    assert!(
        status.success(),
        "doorless-edge {args:?}: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    stdout
}

/// `doorless-edge site code home --edge 127.0.0.1:PORT`: the printed code.
async fn mint_code(state: &Path, edge: &Edge, extra: &[&str]) -> String {
    let edge_addr = edge.https_addr().to_string();
    let mut args = vec![
        "site",
        "code",
        "home",
        "--edge",
        &edge_addr,
        "--state-dir",
        state.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let printed = edge_cli(&args).await;
    let code = printed
        .lines()
        .map(str::trim)
        .find(|l| l.contains("/1-") && !l.contains(' '))
        .unwrap_or_else(|| panic!("no code printed:\n{printed}"))
        .to_owned();
    assert!(code.len() <= 64, "{code}");
    code
}

/// `doorless-connector enroll CODE --state-dir DIR`: (success, stdout + stderr).
async fn enroll(code: &str, dir: &Path) -> (bool, String) {
    let (status, stdout, stderr) = run_to_exit(
        &binaries().connector,
        &["enroll", code, "--state-dir", dir.to_str().unwrap()],
        &[],
        CLI_DEADLINE,
    )
    .await
    .unwrap();
    (status.success(), format!("{stdout}{stderr}"))
}

/// A connector configured only by environment: upstream, state dir, and maybe a code.
fn connector_from_env(ha: &StandIn, state_dir: &Path, code: Option<&str>) -> ConnectorConfig {
    let mut config = ConnectorConfig::new(String::new(), ha.addr);
    config.from_env = true;
    config.env = vec![
        ("DOORLESS_UPSTREAM".into(), format!("http://{}", ha.addr)),
        (
            "DOORLESS_STATE_DIR".into(),
            state_dir.to_string_lossy().into_owned(),
        ),
    ];
    if let Some(code) = code {
        config
            .env
            .push(("DOORLESS_ENROLLMENT_CODE".into(), code.to_owned()));
    }
    config
}

/// `doorless_edge_enrollments_total{kind="connector",result=...}`.
async fn enrollments(edge: &Edge, result: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", edge.admin_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series =
        format!("doorless_edge_enrollments_total{{kind=\"connector\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The whole path: `run` with a code enrolls once (key made locally; the edge never sees it)
/// and serves; a restart runs from the stored credentials with the code ignored; the used code
/// is refused with a plain message; `enroll` with a second code makes a second connector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_enrolls_with_a_code_and_serves() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut pki = Pki::new().unwrap();
    pki.add_site("home", HOME_HOST).unwrap();
    let device = pki.device("home", "phone").unwrap();
    let server_ca = pki.server_ca_pem().unwrap();
    let ha = StandIn::start().await.unwrap();
    let edge = Edge::start(pki.root()).await.unwrap();
    let code = mint_code(pki.root(), &edge, &[]).await;

    let home = tempfile::tempdir().unwrap();
    let state_dir = home.path().join("connector");
    let mut connector = e2e::Connector::start(connector_from_env(&ha, &state_dir, Some(&code)))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = format!(
        "https://{HOME_HOST}:{}/status/200",
        edge.https_addr().port()
    );
    let client = e2e::client_builder(&server_ca, HOME_HOST, edge.https_addr(), Some(&device))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(get(&client, &url).await.0, 200);

    // The key was made at home, is 0600, and exists nowhere in the edge's state dir.
    let key_path = state_dir.join("connector.key");
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key_pem = std::fs::read_to_string(&key_path).unwrap();
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for file in files_under(pki.root()) {
        let bytes = std::fs::read(&file).unwrap();
        let text: String = String::from_utf8_lossy(&bytes)
            .lines()
            .collect::<Vec<_>>()
            .join("");
        assert!(
            !text.contains(&key_body),
            "{} holds the connector's key",
            file.display()
        );
    }
    assert!(
        !pki.root()
            .join("sites/home/connectors/connector-1.key")
            .exists()
            && pki
                .root()
                .join("sites/home/connectors/connector-1.crt")
                .exists()
    );

    // A restart uses the stored credentials; the code in the environment is ignored. (The
    // killed process's tunnels linger on the edge until found dead: poll.)
    connector.restart().await.unwrap();
    crate::poll_status(&client, &url, 200, Duration::from_secs(20)).await;
    let log = connector.all_text();
    assert!(log.contains("enrollment_code is ignored"), "{log}");

    // The used code is refused, plainly, and nothing is stored.
    let other = home.path().join("other");
    let (ok, text) = enroll(&code, &other).await;
    assert!(!ok, "{text}");
    assert!(text.contains("already used"), "{text}");
    assert!(!other.join("enrollment.json").exists());

    // A second code enrolls a second connector through the `enroll` verb.
    let second = mint_code(pki.root(), &edge, &[]).await;
    let (ok, text) = enroll(&second, &other).await;
    assert!(ok, "{text}");
    assert!(
        text.contains("connector connector-2 of site home"),
        "{text}"
    );
    // ... and `enroll` does not silently replace credentials.
    let third = mint_code(pki.root(), &edge, &[]).await;
    let (ok, text) = enroll(&third, &other).await;
    assert!(!ok && text.contains("--force"), "{text}");

    assert_eq!(enrollments(&edge, "ok").await, 2);
    assert_eq!(enrollments(&edge, "used").await, 1);
}

/// Expired and wrong codes are refused and counted; guessing hits the per-address limit, after
/// which even a good code waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_expired_and_guessed_codes_are_refused_and_counted() {
    let mut pki = Pki::new().unwrap();
    pki.add_site("home", HOME_HOST).unwrap();
    let edge = Edge::start(pki.root()).await.unwrap();
    let home = tempfile::tempdir().unwrap();
    let dir = home.path().join("connector");

    // Expired: wait (by polling the listing, not sleeping blindly) until the edge says so.
    let short = mint_code(pki.root(), &edge, &["--valid-for", "1s"]).await;
    let state = pki.root().to_str().unwrap().to_owned();
    e2e::poll_until("the code to expire", Duration::from_secs(10), || {
        let state = state.clone();
        async move {
            let list = edge_cli(&["site", "code", "home", "--list", "--state-dir", &state]).await;
            list.contains("expired").then_some(())
        }
    })
    .await
    .unwrap();
    let (ok, text) = enroll(&short, &dir).await;
    assert!(!ok && text.contains("expired"), "{text}");

    // Wrong: a good code with one character of its secret changed.
    let good = mint_code(pki.root(), &edge, &[]).await;
    let mut wrong = good.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'Z' { 'Y' } else { 'Z' });
    let (ok, text) = enroll(&wrong, &dir).await;
    assert!(!ok && text.contains("does not know this code"), "{text}");
    assert!(!dir.join("enrollment.json").exists());

    // Guessing: after 5 failed attempts from one address, further ones are refused outright.
    let mut limited = false;
    for _ in 0..4 {
        let (ok, text) = enroll(&wrong, &dir).await;
        assert!(!ok, "{text}");
        if text.contains("too many failed attempts") {
            limited = true;
            break;
        }
    }
    assert!(limited, "guessing was never rate limited");
    let (ok, text) = enroll(&good, &dir).await;
    assert!(!ok && text.contains("too many failed attempts"), "{text}");

    assert_eq!(enrollments(&edge, "expired").await, 1);
    assert!(enrollments(&edge, "wrong_code").await >= 4);
    assert!(enrollments(&edge, "rate_limited").await >= 2);
    assert_eq!(enrollments(&edge, "ok").await, 0);
    // The edge logged the attempts.
    let log = edge.output();
    assert!(log.contains("enrollment: refused"), "{log}");
}

/// `doorless-edge client list --json`: the live (unrevoked) certificates of `name`, and all.
async fn listed(state: &Path, name: &str) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let json = edge_cli(&[
        "client",
        "list",
        "--json",
        "--state-dir",
        state.to_str().unwrap(),
    ])
    .await;
    let all: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    let of_name: Vec<serde_json::Value> = all.into_iter().filter(|e| e["name"] == name).collect();
    let live = of_name
        .iter()
        .filter(|e| e["revoked_at"].is_null())
        .cloned()
        .collect();
    (live, of_name)
}

/// An index entry's `not_after` as a Unix timestamp, as the expiry metric exports it.
fn not_after_unix(entry: &serde_json::Value) -> f64 {
    let text = entry["not_after"].as_str().unwrap();
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
    t.unix_timestamp() as f64
}

/// `client renew` for a connector: prints a one-time renewal code while the connector keeps
/// serving; the connector, restarted with the code where the first one was, makes a new key
/// and gets a new certificate under the same id; the old certificate is then revoked (a
/// connector still holding it is refused and counted), the expiry metric and `client list`
/// follow the new certificate, and later restarts ignore the used code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_renews_with_a_code_and_keeps_its_site() {
    let mut pki = Pki::new().unwrap();
    pki.add_site("home", HOME_HOST).unwrap();
    let device = pki.device("home", "phone").unwrap();
    let server_ca = pki.server_ca_pem().unwrap();
    let ha = StandIn::start().await.unwrap();
    let edge = Edge::start(pki.root()).await.unwrap();
    let code = mint_code(pki.root(), &edge, &[]).await;
    let home = tempfile::tempdir().unwrap();
    let state_dir = home.path().join("connector");
    let mut connector = e2e::Connector::start(connector_from_env(&ha, &state_dir, Some(&code)))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let url = format!(
        "https://{HOME_HOST}:{}/status/200",
        edge.https_addr().port()
    );
    let client = e2e::client_builder(&server_ca, HOME_HOST, edge.https_addr(), Some(&device))
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(get(&client, &url).await.0, 200);

    let expiry =
        "doorless_edge_certificate_expiry_timestamp_seconds{site=\"home\",kind=\"connector\"}";
    let (live, _) = listed(pki.root(), "connector-1").await;
    assert_eq!(live.len(), 1, "{live:?}");
    let old = live[0].clone();
    // The edge reloads the index within a second of the enrollment: poll.
    let old_not_after = not_after_unix(&old);
    e2e::poll_until(
        "the expiry metric shows the first certificate",
        Duration::from_secs(10),
        || async {
            let value = edge.metric(expiry).await.ok()?;
            (value == old_not_after).then_some(())
        },
    )
    .await
    .unwrap();
    // The old credentials, kept aside to show they stop working.
    let stale_dir = home.path().join("stale");
    std::fs::create_dir(&stale_dir).unwrap();
    for file in std::fs::read_dir(&state_dir).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), stale_dir.join(file.file_name())).unwrap();
    }

    // Renewing a name that is no connector (or device) of the site is refused.
    let state = pki.root().to_str().unwrap();
    let (status, _, stderr) = run_to_exit(
        &binaries().edge,
        &[
            "client",
            "renew",
            "connector-7",
            "--site",
            "home",
            "--state-dir",
            state,
        ],
        &[],
        CLI_DEADLINE,
    )
    .await
    .unwrap();
    assert!(!status.success(), "{stderr}");
    let edge_addr = edge.https_addr().to_string();
    let printed = edge_cli(&[
        "client",
        "renew",
        "connector-1",
        "--site",
        "home",
        "--edge",
        &edge_addr,
        "--state-dir",
        state,
    ])
    .await;
    assert!(
        printed.contains("renewal code for connector connector-1"),
        "{printed}"
    );
    let renewal = printed
        .lines()
        .map(str::trim)
        .find(|l| l.contains("/1-") && !l.contains(' '))
        .unwrap_or_else(|| panic!("no code printed:\n{printed}"))
        .to_owned();
    // Until the code is used nothing changes: the connector serves, its certificate is live.
    assert_eq!(get(&client, &url).await.0, 200);
    assert_eq!(listed(pki.root(), "connector-1").await.0, vec![old.clone()]);

    // The renewal code goes where the first code was; the connector restarts with it.
    connector.kill();
    let mut connector = e2e::Connector::start(connector_from_env(&ha, &state_dir, Some(&renewal)))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = connector.all_text();
    assert!(log.contains("renewed"), "{log}");
    crate::poll_status(&client, &url, 200, Duration::from_secs(20)).await;
    let (live, all) = listed(pki.root(), "connector-1").await;
    assert_eq!(live.len(), 1, "{all:?}");
    assert_ne!(live[0]["serial"], old["serial"]);
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(
        all.iter()
            .any(|e| e["serial"] == old["serial"] && !e["revoked_at"].is_null()),
        "{all:?}"
    );
    assert!(listed(pki.root(), "connector-2").await.1.is_empty());
    let renewed_not_after = not_after_unix(&live[0]);
    e2e::poll_until(
        "the expiry metric follows the new certificate",
        Duration::from_secs(10),
        || async {
            let value = edge.metric(expiry).await.ok()?;
            (value == renewed_not_after).then_some(())
        },
    )
    .await
    .unwrap();

    // The old credentials are refused, and counted.
    let revoked = |transport: &'static str| {
        format!(
            "doorless_edge_tunnel_refused_total{{transport=\"{transport}\",reason=\"revoked\"}}"
        )
    };
    let mut stale = e2e::Connector::spawn(connector_from_env(&ha, &stale_dir, None)).unwrap();
    e2e::poll_until(
        "the old certificate is refused",
        Duration::from_secs(20),
        || async {
            let refused = edge.metric(&revoked("quic")).await.ok()?
                + edge.metric(&revoked("tcp")).await.ok()?;
            (refused >= 1.0).then_some(())
        },
    )
    .await
    .unwrap();
    assert!(
        !stale.is_ready(),
        "a connector with the revoked certificate registered:\n{}\nedge:\n{}",
        stale.all_text(),
        edge.all_text()
    );
    stale.kill();

    // Restarted with the same (used) renewal code configured: it is ignored.
    connector.restart().await.unwrap();
    crate::poll_status(&client, &url, 200, Duration::from_secs(20)).await;
    assert!(
        connector.all_text().contains("enrollment_code is ignored"),
        "{}",
        connector.all_text()
    );
    assert_eq!(listed(pki.root(), "connector-1").await.0.len(), 1);
    assert_eq!(enrollments(&edge, "ok").await, 2);

    // A code from `site code` in its place is no renewal: it enrolls a new connector,
    // replacing the stored credentials, and says the old certificate is still valid.
    let fresh = mint_code(pki.root(), &edge, &[]).await;
    connector.kill();
    let connector = e2e::Connector::start(connector_from_env(&ha, &state_dir, Some(&fresh)))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = connector.all_text();
    assert!(
        log.contains("replaced connector connector-1 of site home")
            && log.contains("client revoke connector-1 --site home"),
        "{log}"
    );
    assert_eq!(listed(pki.root(), "connector-2").await.0.len(), 1);
    assert_eq!(listed(pki.root(), "connector-1").await.0.len(), 1);
    crate::poll_status(&client, &url, 200, Duration::from_secs(20)).await;
}
