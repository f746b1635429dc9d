//! Running under a service manager: systemd's readiness protocol (`READY=1` once serving,
//! `STOPPING=1` on SIGTERM) through a real `NOTIFY_SOCKET`, plain-text logs when stderr is not
//! a terminal, and an OS error printed once.

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{Pki, binaries, run_to_exit};
use tokio::net::UnixDatagram;

/// The next datagram on `socket`, within `deadline`.
async fn next_state(socket: &UnixDatagram, deadline: Duration) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(deadline, socket.recv(&mut buf))
        .await
        .expect("no sd_notify message in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn edge_tells_systemd_ready_and_stopping_and_logs_plain_text() {
    let mut pki = Pki::new().unwrap();
    pki.add_site("home", e2e::HOME_HOST).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    let config = dir.path().join("edge.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {:?}\n[listen]\nhttps = \"127.0.0.1:0\"\ntunnel = \"127.0.0.1:0\"\n\
             admin = \"127.0.0.1:0\"\n",
            pki.root().to_str().unwrap()
        ),
    )
    .unwrap();
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(&binaries().edge)
        .args(["run", "--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("RUST_LOG", "info")
        // Colour is decided by whether stderr is a terminal; NO_COLOR must not be what
        // keeps it off here.
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();

    let ready = next_state(&socket, Duration::from_secs(30)).await;
    assert_eq!(ready, "READY=1");
    // The "edge ready" line is written by the log thread, possibly just after READY=1.
    let log = e2e::poll_until("the edge ready log line", Duration::from_secs(10), || {
        let path = stderr_path.clone();
        async move {
            let log = std::fs::read_to_string(&path).ok()?;
            log.contains("edge ready").then_some(log)
        }
    })
    .await
    .unwrap();
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log that goes to a file:\n{log}"
    );

    let term = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(term.success());
    assert_eq!(
        next_state(&socket, Duration::from_secs(10)).await,
        "STOPPING=1"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edge did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn an_os_error_is_printed_once() {
    // index.json replaced by a directory: pki's I/O error names the path and the OS error,
    // and carries the OS error as its source; anyhow's `{:#}` printed it twice.
    let pki = Pki::new().unwrap();
    let index = pki.root().join("index.json");
    std::fs::remove_file(&index).unwrap();
    std::fs::create_dir(&index).unwrap();
    let (status, _stdout, stderr) = run_to_exit(
        &binaries().edge,
        &[
            "client",
            "list",
            "--state-dir",
            pki.root().to_str().unwrap(),
        ],
        &[],
        Duration::from_secs(20),
    )
    .await
    .unwrap();
    assert!(!status.success());
    let os = std::io::Error::from_raw_os_error(21).to_string();
    assert_eq!(stderr.matches(&os).count(), 1, "{stderr}");
    assert!(stderr.contains("index.json"), "{stderr}");
}
