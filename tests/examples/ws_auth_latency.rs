//! Home Assistant's WebSocket opening, timed through the real edge and connector: upgrade →
//! wait for the server's `auth_required` → send `auth` → wait for `auth_ok`, as HA's frontend
//! does (the stand-in's `/api/websocket?auth`). Prints the medians of N exchanges per path:
//! straight to the stand-in (the floor), through doorless on a fresh HTTP/1.1 TLS connection
//! (the TLS handshake itself not timed), as RFC 8441 streams of one HTTP/2 connection, with
//! Chromium's request headers, and on a fresh HTTP/2 connection right after a page. A
//! measurement, never a test: nothing here asserts a time.
//!
//! ```text
//! cargo run -p e2e --example ws_auth_latency -- local [N] [idle-ms] [tcp]
//! cargo run -p e2e --example ws_auth_latency -- serve FILE        # stack on 0.0.0.0, until stdin ends
//! ws_auth_latency client FILE IP [N] [busy]                        # e.g. under `ip netns exec`
//! ws_auth_latency browser FILE IP [N] [chromium args]              # the same in headless Chromium
//! ```
//! `browser` drives Debian's `/usr/bin/chromium` over CDP: it loads the page, then runs HA's
//! opening N times in the page's JavaScript and prints the medians the page measured. The
//! client certificate must be selectable without a dialog (an NSS db in `$HOME/.pki/nssdb`
//! and the `AutoSelectCertificateForUrls` policy).
//! `idle-ms`: a pause before each exchange; `tcp`: the tunnel over TLS/TCP instead of QUIC.
//! `serve` + `client` put the client behind a delayed link (a network namespace reached over
//! netem, or, where the kernel has no netem, over a pair of TUN devices whose relay holds each
//! packet for the delay)
//! while edge, connector and stand-in stay on loopback. Debug binaries, as the e2e harness
//! builds them; `RUST_LOG=debug` gives both processes' µs-stamped traces.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

/// One exchange's phases, in microseconds.
#[derive(Debug, Clone, Copy)]
struct Phases {
    /// Request sent → 101 (or the HTTP/2 200) received.
    switched: u128,
    /// 101 → `auth_required` received.
    first_message: u128,
    /// `auth` sent → `auth_ok` received.
    auth: u128,
}

/// Where the client connects and as whom.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Target {
    host: String,
    https: SocketAddr,
    server_ca: Vec<u8>,
    cert_pem: String,
    key_pem: String,
}

async fn exchange<S>(ws: &mut S, started: Instant, switched: Instant) -> Phases
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + futures_util::Sink<Message>
        + Unpin,
    <S as futures_util::Sink<Message>>::Error: std::fmt::Debug,
{
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first, Message::text(standin::AUTH_REQUIRED));
    let got_first = Instant::now();
    ws.send(Message::text(r#"{"type":"auth","access_token":"x"}"#))
        .await
        .unwrap();
    let sent = Instant::now();
    let ok = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ok, Message::text(standin::AUTH_OK));
    Phases {
        switched: (switched - started).as_micros(),
        first_message: (got_first - switched).as_micros(),
        auth: sent.elapsed().as_micros(),
    }
}

fn report(name: &str, mut runs: Vec<Phases>) {
    let first = runs[0];
    let median = |f: fn(&Phases) -> u128, runs: &mut Vec<Phases>| {
        runs.sort_by_key(f);
        f(&runs[runs.len() / 2])
    };
    let max = |f: fn(&Phases) -> u128, runs: &[Phases]| runs.iter().map(f).max().unwrap_or(0);
    let s = median(|p| p.switched, &mut runs);
    let f = median(|p| p.first_message, &mut runs);
    let a = median(|p| p.auth, &mut runs);
    println!(
        "{name:<30} n={:<3} median µs: 101 {s:>7}  first msg {f:>7}  auth→ok {a:>7}   max µs: {:>7} {:>7} {:>7}   first: {} {} {}",
        runs.len(),
        max(|p| p.switched, &runs),
        max(|p| p.first_message, &runs),
        max(|p| p.auth, &runs),
        first.switched,
        first.first_message,
        first.auth,
    );
}

/// The doorless rows against `target`.
async fn through_doorless(target: &Target, n: usize, idle: Duration, only_busy: bool) {
    let device = e2e::pem_identity(target.cert_pem.clone(), target.key_pem.clone());
    let h2_connect =
        || e2e::H2Connection::connect(&target.server_ca, &target.host, target.https, Some(&device));
    if !only_busy {
        quiet(target, &device, n, idle).await;
    }
    beside_a_download(h2_connect, n).await;
}

/// The exchange on an otherwise idle path, four ways.
async fn quiet(target: &Target, device: &pki::Issued, n: usize, idle: Duration) {
    let h2_connect =
        || e2e::H2Connection::connect(&target.server_ca, &target.host, target.https, Some(device));

    let mut http1 = Vec::new();
    for _ in 0..n {
        tokio::time::sleep(idle).await;
        let tls = e2e::tls_connect(
            &target.server_ca,
            &target.host,
            target.https,
            Some(device),
            &[b"http/1.1"],
        )
        .await
        .unwrap();
        let url = format!(
            "wss://{}:{}/api/websocket?auth",
            target.host,
            target.https.port()
        );
        let started = Instant::now();
        let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.unwrap();
        let switched = Instant::now();
        http1.push(exchange(&mut ws, started, switched).await);
        ws.close(None).await.ok();
    }
    report("doorless, HTTP/1.1 (new TLS)", http1);

    let mut http2 = Vec::new();
    let mut h2 = h2_connect().await.unwrap();
    for _ in 0..n {
        tokio::time::sleep(idle).await;
        let started = Instant::now();
        let mut ws = h2.websocket("/api/websocket?auth").await.unwrap();
        let switched = Instant::now();
        http2.push(exchange(&mut ws, started, switched).await);
        ws.close(None).await.ok();
    }
    report("doorless, HTTP/2 (RFC 8441)", http2);

    // What Chromium 148 sends with its extended CONNECT (from its netlog).
    let origin = format!("https://{}:{}", target.host, target.https.port());
    let chromium: Vec<(&str, &str)> = vec![
        ("pragma", "no-cache"),
        ("cache-control", "no-cache"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/148.0.0.0 Safari/537.36",
        ),
        ("origin", &origin),
        ("sec-websocket-version", "13"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "en-US,en;q=0.9"),
        (
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        ),
    ];
    let mut browser = Vec::new();
    for _ in 0..n {
        tokio::time::sleep(idle).await;
        let started = Instant::now();
        let response = h2
            .extended_connect("/api/websocket?auth", Some("websocket"), &chromium)
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let upgraded = hyper::upgrade::on(response).await.unwrap();
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await;
        let switched = Instant::now();
        browser.push(exchange(&mut ws, started, switched).await);
        ws.close(None).await.ok();
    }
    report("doorless, HTTP/2, Chromium's", browser);

    // As a page load: a fresh connection, the page, then its WebSocket.
    let mut page = Vec::new();
    for _ in 0..n {
        tokio::time::sleep(idle).await;
        let mut h2 = h2_connect().await.unwrap();
        let (status, _) = h2.get("/").await.unwrap();
        assert_eq!(status, 200);
        let started = Instant::now();
        let mut ws = h2.websocket("/api/websocket?auth").await.unwrap();
        let switched = Instant::now();
        page.push(exchange(&mut ws, started, switched).await);
        ws.close(None).await.ok();
    }
    report("doorless, HTTP/2, after page", page);
}

/// The exchange while an 8 MB download runs on the same HTTP/2 connection, and on another.
async fn beside_a_download<F, Fut>(h2_connect: F, n: usize)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<e2e::H2Connection>>,
{
    // Next to a download on the same connection (a page's assets still arriving): the
    // WebSocket's frames share the connection's TCP stream with the download's.
    for (name, same) in [
        ("HTTP/2 beside 8 MB, same conn", true),
        ("HTTP/2 beside 8 MB, other conn", false),
    ] {
        let mut busy = Vec::new();
        for _ in 0..n {
            let mut h2 = h2_connect().await.unwrap();
            let mut other = if same {
                h2.clone()
            } else {
                h2_connect().await.unwrap()
            };
            let download = tokio::spawn(async move { other.get("/bytes/8000000").await });
            tokio::time::sleep(Duration::from_millis(150)).await;
            let started = Instant::now();
            let mut ws = h2.websocket("/api/websocket?auth").await.unwrap();
            let switched = Instant::now();
            let phases = exchange(&mut ws, started, switched).await;
            let done = download.is_finished();
            busy.push(phases);
            ws.close(None).await.ok();
            let _ = download.await;
            if done {
                println!("(the download was over before the exchange ended)");
            }
        }
        report(name, busy);
    }
}

/// The floor: straight to the stand-in over plain TCP.
async fn direct(ha: SocketAddr, n: usize, idle: Duration) {
    let mut runs = Vec::new();
    for _ in 0..n {
        tokio::time::sleep(idle).await;
        let tcp = tokio::net::TcpStream::connect(ha).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let url = format!("ws://{ha}/api/websocket?auth");
        let started = Instant::now();
        let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
        let switched = Instant::now();
        runs.push(exchange(&mut ws, started, switched).await);
    }
    report("stand-in directly (TCP)", runs);
}

/// One site's stack, its tunnel over QUIC or (`tcp`) TLS/TCP, the edge's HTTPS on `https`.
async fn stack(tcp: bool, https: &str) -> (e2e::Stack, Option<e2e::Connector>) {
    let stack = e2e::Stack::start_with(e2e::StackOptions {
        connectors: !tcp,
        edge: e2e::EdgeOptions {
            env: vec![("DOORLESS_LISTEN__HTTPS".into(), https.into())],
            ..e2e::EdgeOptions::default()
        },
        ..e2e::StackOptions::default()
    })
    .await
    .unwrap();
    let connector = if tcp {
        let home = stack.home();
        let mut config = e2e::ConnectorConfig::new(
            e2e::token_for(&home.token, &[stack.edge.tunnel_addr()]),
            home.ha.addr,
        );
        config.extra_toml = Some(format!(
            "tcp_edges = [\"127.0.0.1:{}\"]\ntransport = \"tcp\"",
            stack.edge.https_addr().port()
        ));
        Some(e2e::Connector::start(config).await.unwrap())
    } else {
        None
    };
    (stack, connector)
}

fn target(stack: &e2e::Stack, ip: std::net::IpAddr) -> Target {
    let home = stack.home();
    Target {
        host: home.host.clone(),
        https: SocketAddr::new(ip, stack.edge.https_addr().port()),
        server_ca: stack.server_ca.clone(),
        cert_pem: home.device.cert_pem.clone(),
        key_pem: home.device.key_pem.clone(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(1) {
        Some("serve") => {
            let file = arg(2).expect("serve FILE");
            let tcp = arg(3) == Some("tcp");
            let (stack, _connector) = stack(tcp, "0.0.0.0:0").await;
            let json = serde_json::to_vec(&target(&stack, [127, 0, 0, 1].into())).unwrap();
            std::fs::write(file, json).unwrap();
            println!("serving; the target is in {file}; end stdin to stop");
            let mut line = String::new();
            let _ =
                tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
        }
        Some("client") => {
            let file = arg(2).expect("client FILE IP [N]");
            let ip: std::net::IpAddr = arg(3).expect("client FILE IP [N]").parse().unwrap();
            let n = arg(4).and_then(|a| a.parse().ok()).unwrap_or(20);
            let mut target: Target = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
            target.https.set_ip(ip);
            through_doorless(&target, n, Duration::ZERO, arg(5) == Some("busy")).await;
        }
        Some("browser") => {
            let file = arg(2).expect("browser FILE IP [N] [chromium args…]");
            let ip: std::net::IpAddr = arg(3).expect("browser FILE IP [N]").parse().unwrap();
            let n = arg(4).and_then(|a| a.parse().ok()).unwrap_or(10);
            let target: Target = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
            browser(&target, ip, n, &args[5.min(args.len())..]).await;
        }
        _ => {
            let n = arg(2).and_then(|a| a.parse().ok()).unwrap_or(30);
            let idle = Duration::from_millis(arg(3).and_then(|a| a.parse().ok()).unwrap_or(0));
            let tcp = arg(4) == Some("tcp");
            let (stack, _connector) = stack(tcp, "127.0.0.1:0").await;
            println!("tunnel: {}", if tcp { "TLS/TCP" } else { "QUIC" });
            direct(stack.home().ha.addr, n, idle).await;
            through_doorless(&target(&stack, [127, 0, 0, 1].into()), n, idle, false).await;
        }
    }
}

/// HA's opening in the page, as HA's frontend does it; resolves to the page's timings (ms).
const BROWSER_EXCHANGE: &str = r#"(async () => {
  if (window.busy) {
    // A page still downloading (8 MB) on the same connection when its WebSocket opens.
    window.download = fetch('/bytes/8000000').then((r) => r.arrayBuffer());
    await new Promise((r) => setTimeout(r, 150));
  }
  const t0 = performance.now();
  const ws = new WebSocket('wss://' + location.host + '/api/websocket?auth');
  const r = {};
  await new Promise((resolve, reject) => {
    ws.onopen = () => { r.open = performance.now() - t0; };
    ws.onerror = () => reject(new Error('websocket error'));
    let seen = 0;
    ws.onmessage = () => {
      seen += 1;
      if (seen === 1) {
        r.first = performance.now() - t0;
        r.sent = performance.now();
        ws.send('{"type":"auth","access_token":"x"}');
      } else {
        r.auth = performance.now() - r.sent;
        ws.close();
        resolve();
      }
    };
  });
  if (window.download) { await window.download; window.download = null; }
  return JSON.stringify(r);
})()"#;

/// Headless Chromium on the page of `target` (at `ip`), HA's opening `n` times, medians.
async fn browser(target: &Target, ip: std::net::IpAddr, n: usize, extra: &[String]) {
    use tokio::io::AsyncBufReadExt as _;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("https://{}:{}/", target.host, target.https.port());
    let mut chromium = tokio::process::Command::new("/usr/bin/chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--remote-debugging-port=0",
            &format!("--user-data-dir={}", profile.path().display()),
            &format!("--host-resolver-rules=MAP {} {ip}", target.host),
        ])
        .args(extra)
        .arg("about:blank")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(chromium.stderr.take().unwrap()).lines();
    let browser_ws = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("ws://") {
                return line[at..].trim().to_owned();
            }
        }
        panic!("chromium exited");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (mut cdp, _) = tokio_tungstenite::connect_async(&browser_ws).await.unwrap();
    let mut next_id = 0u64;
    let mut call = async |cdp: &mut tokio_tungstenite::WebSocketStream<_>,
                          method: &str,
                          params: serde_json::Value,
                          session: Option<&str>| {
        next_id += 1;
        let mut message = serde_json::json!({"id": next_id, "method": method, "params": params});
        if let Some(s) = session {
            message["sessionId"] = s.into();
        }
        cdp.send(Message::text(message.to_string())).await.unwrap();
        loop {
            let reply = tokio::time::timeout(Duration::from_secs(30), cdp.next())
                .await
                .expect("CDP answer within 30 s")
                .unwrap()
                .unwrap();
            let reply: serde_json::Value = serde_json::from_str(reply.to_text().unwrap()).unwrap();
            if reply["id"] == next_id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    };
    let created = call(
        &mut cdp,
        "Target.createTarget",
        serde_json::json!({"url": "about:blank"}),
        None,
    )
    .await;
    let attached = call(
        &mut cdp,
        "Target.attachToTarget",
        serde_json::json!({"targetId": created["targetId"], "flatten": true}),
        None,
    )
    .await;
    let session = attached["sessionId"].as_str().unwrap().to_owned();
    let session = Some(session.as_str());
    call(
        &mut cdp,
        "Page.navigate",
        serde_json::json!({"url": url}),
        session,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = call(
            &mut cdp,
            "Runtime.evaluate",
            serde_json::json!({"expression": "document.readyState", "returnByValue": true}),
            session,
        )
        .await;
        if state["result"]["value"] == "complete" {
            break;
        }
        assert!(Instant::now() < deadline, "the page did not load");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for busy in [false, true] {
        call(
        &mut cdp,
        "Runtime.evaluate",
        serde_json::json!({"expression": format!("window.busy = {busy}"), "returnByValue": true}),
        session,
    )
    .await;
        let mut runs = Vec::new();
        for _ in 0..n {
            let result = call(
            &mut cdp,
            "Runtime.evaluate",
            serde_json::json!({"expression": BROWSER_EXCHANGE, "awaitPromise": true, "returnByValue": true}),
            session,
        )
        .await;
            let text = result["result"]["value"]
                .as_str()
                .unwrap_or_else(|| panic!("{result}"));
            let r: serde_json::Value = serde_json::from_str(text).unwrap();
            let us = |k: &str| (r[k].as_f64().unwrap_or(f64::NAN) * 1000.0) as u128;
            runs.push(Phases {
                switched: us("open"),
                first_message: us("first").saturating_sub(us("open")),
                auth: us("auth"),
            });
        }
        let beside = if busy { ", beside 8 MB" } else { "" };
        report(&format!("Chromium {}{beside}", extra.join(" ")), runs);
    }
    let _ = chromium.kill().await;
}
