//! Issue 11's "done means", on loopback: a fresh state directory and a real ACME server
//! (Debian's pebble), `doorless-edge setup` with `--acme-directory` and `--acme-ca` (the
//! private-CA path), the exact `run` command it printed, a connector enrolled with the code it
//! printed, the first device it told us to add, and curl trusting ONLY pebble's root gets 200
//! from the stand-in Home Assistant through edge and connector.
//!
//! Order of things: pebble validates TLS-ALPN-01 against `tlsPort`, which must be the edge's
//! HTTPS port, so that port is chosen first; pebble starts next (setup checks the
//! configuration it writes, which reads the `--acme-ca` file, and the edge's first order finds
//! pebble up); then setup, then the edge. Pebble's DNS answers 127.0.0.1 for every name.
//! Substituted as in readme.rs: loopback listeners, temp paths, `--yes --no-systemd`, the
//! code's host replaced by 127.0.0.1 (standing in for DNS), curl's `--resolve`.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{Spawned, StandIn, binaries, poll_until};
use pebble_harness::{ListenerCa, Pebble, PebbleOptions};

use crate::readme::{free_tcp_port, free_udp_port, line_after, printed_code, run_ok, shell_words};

const HOST: &str = "ha.setup-acme.test";
/// First order, validation and issuance, on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_with_a_private_acme_ca_serves_a_certificate_curl_trusts() {
    e2e::init();
    let started = Instant::now();
    let edge_bin = &binaries().edge;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("edge.toml");
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let https_port = free_tcp_port();
    let tunnel_port = free_udp_port();

    // Pebble, validating against the edge's HTTPS port; its listener CA is the private root.
    let listener_ca = ListenerCa::new().unwrap();
    let acme_ca = dir.path().join("pebble-listener-ca.pem");
    std::fs::write(&acme_ca, &listener_ca.ca_pem).unwrap();
    let pebble = Pebble::start_with_ca(
        PebbleOptions {
            tls_port: https_port,
            ..PebbleOptions::default()
        },
        listener_ca,
    )
    .await
    .unwrap();

    // setup, as an operator with a private CA runs it.
    let setup: Vec<String> = [
        "setup",
        "--hostname",
        HOST,
        "--email",
        "you@example.com",
        "--acme-directory",
        &pebble.directory(),
        "--acme-ca",
        &acme_ca.display().to_string(),
        "--no-systemd",
        "--yes",
        "--state-dir",
        &state.display().to_string(),
        "--config",
        &config.display().to_string(),
        "--https",
        &format!("127.0.0.1:{https_port}"),
        "--tunnel",
        &format!("127.0.0.1:{tunnel_port}"),
        "--admin",
        "127.0.0.1:0",
    ]
    .map(str::to_owned)
    .to_vec();
    let printed = run_ok(edge_bin, &setup, "setup").await;
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains(&format!(
            "extra_roots = {}",
            serde_json::Value::String(acme_ca.display().to_string())
        )),
        "{written}"
    );
    let code = printed_code(&printed)
        .unwrap_or_else(|| panic!("setup printed no enrollment code:\n{printed}"))
        .encode();
    assert!(
        code.starts_with(&format!("{HOST}:{https_port}/1-")),
        "{code}"
    );

    // The edge, with the command setup printed.
    let run_line = line_after(&printed, "Run the edge with:");
    let mut run = shell_words(&run_line);
    assert_eq!(run.remove(0), edge_bin.display().to_string(), "{run_line}");
    let edge = Spawned::start("edge", edge_bin, &run, &[]).await.unwrap();
    let https = edge.addr("https").unwrap();
    assert_eq!(https.port(), https_port);
    let admin = edge.addr("admin").unwrap();

    // Until its first order succeeds the edge serves its local CA's certificate: wait for
    // the ACME one.
    let cert = poll_until("the ACME certificate", DEADLINE, || async {
        let status = e2e::admin_get_json(admin, "/status").await.ok()?;
        let cert = status["sites"][0]["certificate"].clone();
        (cert["source"] == "acme").then_some(cert)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}\n{}", edge.output(), pebble.log_text()));
    let issued_at = started.elapsed();

    // The connector, enrolling with the code setup printed (its host standing in for DNS).
    let ha = StandIn::start().await.unwrap();
    let connector_state = dir.path().join("connector-state");
    let env = [
        (
            "DOORLESS_ENROLLMENT_CODE".to_owned(),
            code.replacen(&format!("{HOST}:"), "127.0.0.1:", 1),
        ),
        (
            "DOORLESS_UPSTREAM".to_owned(),
            format!("http://{}", ha.addr),
        ),
        (
            "DOORLESS_STATE_DIR".to_owned(),
            connector_state.display().to_string(),
        ),
        (
            "DOORLESS_LISTEN__ADMIN".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
    ];
    // Its arguments are the ones setup printed (after the environment and the program).
    let said = printed
        .lines()
        .find_map(|l| l.strip_prefix("Not on Home Assistant OS?"))
        .unwrap_or_else(|| panic!("setup printed no connector command:\n{printed}"));
    let args: Vec<String> = shell_words(said)
        .into_iter()
        .skip_while(|w| w.contains('=') && !w.starts_with('-'))
        .skip(1)
        .collect();
    let connector = Spawned::start("connector", &binaries().connector, &args, &env)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", edge.output()));

    // The first device, with the command setup printed, the way setup says to get files for
    // a computer instead of a link for a phone: without `--link` (and its `--port`).
    let mut device = shell_words(&line_after(&printed, "Then your first device:"));
    assert_eq!(device.remove(0), edge_bin.display().to_string());
    assert!(
        printed.contains("Files instead (a computer, curl): leave out --link."),
        "{printed}"
    );
    let link_at = device.iter().position(|a| a == "--link");
    let Some(link_at) = link_at else {
        panic!("setup's device command has no --link: {device:?}");
    };
    device.remove(link_at);
    if let Some(port_at) = device.iter().position(|a| a == "--port") {
        device.drain(port_at..port_at + 2);
    }
    let name = device
        .iter()
        .skip_while(|a| *a != "add")
        .nth(1)
        .cloned()
        .unwrap_or_else(|| panic!("no device name in {device:?}"));
    device.extend(["--out".into(), out.display().to_string()]);
    run_ok(edge_bin, &device, "client add").await;

    // curl trusting only pebble's root (not the system's, not the edge's local CA).
    let root = dir.path().join("pebble-root.pem");
    std::fs::write(&root, pebble.root_pem().await.unwrap()).unwrap();
    let curl = |with_device: bool| {
        let mut args = vec![
            "--cacert".to_owned(),
            root.display().to_string(),
            "--resolve".into(),
            format!("{HOST}:{https_port}:127.0.0.1"),
            "-sS".into(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "--max-time".into(),
            "20".into(),
        ];
        if with_device {
            args.extend([
                "--cert".into(),
                out.join(format!("{name}.crt")).display().to_string(),
                "--key".into(),
                out.join(format!("{name}.key")).display().to_string(),
            ]);
        }
        args.push(format!("https://{HOST}:{https_port}/"));
        args
    };
    let status = run_ok(Path::new("curl"), &curl(true), "curl").await;
    let elapsed = started.elapsed();
    assert_eq!(
        status.trim(),
        "200",
        "{cert}\n{}\n{}",
        edge.output(),
        connector.output()
    );
    assert_eq!(ha.requests(), 1);

    // The same trust without the device certificate gets no further than the handshake.
    let refs: Vec<String> = curl(false);
    let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
    let (exit, status, _) =
        e2e::run_to_exit(Path::new("curl"), &refs, &[], Duration::from_secs(30))
            .await
            .unwrap();
    assert!(!exit.success() && status.trim() == "000", "{exit} {status}");
    assert_eq!(ha.requests(), 1);

    eprintln!(
        "setup with a private ACME CA: certificate after {issued_at:.2?}, curl 200 after \
         {elapsed:.2?}"
    );
}
