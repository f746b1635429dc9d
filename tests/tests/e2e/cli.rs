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
        "--token",
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
    let device = e2e::pem_identity(cert_pem, key_pem);
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

/// curl with issued certificates; `doorless-edge client revoke` on the running edge's state
/// dir refuses the revoked certificate within 1 s and closes its WebSocket, while another
/// device of the same site keeps working throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_then_cli_revoke_cuts_one_device_and_spares_the_other() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let mut stack = e2e::Stack::start().await.unwrap();
    let tablet = stack.pki.device("home", "tablet").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let ca = write("server-ca.pem", &stack.server_ca);
    let phone = &stack.home().device;
    let phone_files = (
        write("phone.crt", phone.cert_pem.as_bytes()),
        write("phone.key", phone.key_pem.as_bytes()),
    );
    let tablet_files = (
        write("tablet.crt", tablet.cert_pem.as_bytes()),
        write("tablet.key", tablet.key_pem.as_bytes()),
    );
    let port = stack.edge.https_addr().port();
    let resolve = format!("{HOME_HOST}:{port}:127.0.0.1");
    let url = format!("https://{HOME_HOST}:{port}/status/200");
    // curl's exit status and the HTTP status it saw ("000" when there was no response).
    let curl = |(cert, key): &(String, String)| {
        let args = [
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            "--max-time",
            "10",
            "--cacert",
            ca.as_str(),
            "--resolve",
            resolve.as_str(),
            "--cert",
            cert.as_str(),
            "--key",
            key.as_str(),
            url.as_str(),
        ]
        .map(str::to_owned);
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (status, stdout, stderr) = run_to_exit(
                std::path::Path::new("curl"),
                &args,
                &[],
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|e| panic!("curl (a test prerequisite, see README): {e:#}"));
            (status.success(), format!("{stdout} {stderr}"))
        }
    };
    assert_eq!(curl(&phone_files).await, (true, "200 ".into()));
    assert_eq!(curl(&tablet_files).await, (true, "200 ".into()));

    let mut phone_ws = stack.ws(0).await.unwrap();
    let mut tablet_ws = e2e::ws_connect(
        &stack.server_ca,
        HOME_HOST,
        stack.edge.https_addr(),
        Some(&tablet),
    )
    .await
    .unwrap();
    for ws in [&mut phone_ws, &mut tablet_ws] {
        ws.send(Message::text("before")).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(10), ws.next()).await;
        assert!(matches!(echo, Ok(Some(Ok(Message::Text(_))))), "{echo:?}");
    }

    let state = stack.pki.root().to_str().unwrap().to_owned();
    edge_cli(&[
        "client",
        "revoke",
        "phone",
        "--site",
        "home",
        "--state-dir",
        &state,
    ])
    .await;
    let revoked = std::time::Instant::now();

    // Poll with curl until the phone is refused; the attempt that was refused must have
    // started within 1 s of the revoke.
    let refused_at = e2e::poll_until("curl to be refused", Duration::from_secs(10), || async {
        let started = revoked.elapsed();
        let (ok, out) = curl(&phone_files).await;
        (!ok).then_some((started, out))
    })
    .await
    .unwrap();
    eprintln!(
        "revoked phone refused by an attempt started {:?} after `client revoke` exited ({})",
        refused_at.0, refused_at.1
    );
    assert!(
        refused_at.0 <= Duration::from_secs(1),
        "the revoked certificate still worked {:?} after the revoke",
        refused_at.0
    );
    assert!(refused_at.1.starts_with("000"), "{}", refused_at.1);

    // The phone's WebSocket is closed; the tablet's still echoes, and curl still works for it.
    let phone_closed = e2e::ws_closed_within(&mut phone_ws, Duration::from_secs(10)).await;
    assert!(phone_closed, "the revoked phone's WebSocket is open");
    tablet_ws.send(Message::text("after")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), tablet_ws.next()).await;
    assert!(
        matches!(&echo, Ok(Some(Ok(Message::Text(t)))) if t.as_str() == "after"),
        "{echo:?}"
    );
    assert_eq!(curl(&tablet_files).await, (true, "200 ".into()));
    assert!(!curl(&phone_files).await.0);
}

/// `site renew-cert`: a new local HTTPS certificate, picked up by the running edge without a
/// restart; open connections keep the old one, clients trusting the local server CA accept
/// the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn site_renew_cert_reissues_the_local_certificate_and_the_running_edge_serves_it() {
    let stack = e2e::Stack::start().await.unwrap();
    let state_s = stack.pki.root().to_str().unwrap().to_owned();
    let serial_of = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        pki::cert_serial(&leaf).unwrap()
    };
    let connect = || {
        e2e::tls_connect(
            &stack.server_ca,
            HOME_HOST,
            stack.edge.https_addr(),
            Some(&stack.home().device),
            &[b"http/1.1"],
        )
    };
    let open = connect().await.unwrap();
    let old = serial_of(&open);

    let printed = edge_cli(&["site", "renew-cert", "home", "--state-dir", &state_s]).await;
    assert!(printed.contains("valid until"), "{printed}");
    let new = pki::cert_serial(&pki::load_certs(&stack.home().site.server_cert_path).unwrap()[0])
        .unwrap();
    assert_ne!(new, old);

    // The reload watcher sees the new file; new handshakes get it.
    e2e::poll_until(
        "the new certificate served",
        Duration::from_secs(20),
        || async {
            let tls = connect().await.ok()?;
            (serial_of(&tls) == new).then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(serial_of(&open), old);
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    assert_eq!(get(&client, &stack.url("/status/200")).await.0, 200);

    // An unknown site is refused with a message.
    let (status, _, stderr) = run_to_exit(
        &binaries().edge,
        &["site", "renew-cert", "nope", "--state-dir", &state_s],
        &[],
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert!(!status.success());
    assert!(stderr.contains("nope"), "{stderr}");
}
