//! Resilience (issue 13): faults injected for real — kill -9 and SIGTERM by PID, a UDP relay
//! that rebinds or blackholes — against the real binaries. Each test prints what it measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use e2e::{
    Connector, ConnectorConfig, EdgeOptions, HttpVersion, Stack, StackOptions, StandIn, UdpRelay,
    poll_until,
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::get;

/// One value of a Prometheus text exposition (`name{labels}` exactly as printed), 0 if absent.
async fn metric(admin: std::net::SocketAddr, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .next()
        .unwrap_or(0.0)
}

fn limits(lines: &str) -> StackOptions {
    StackOptions {
        edge: EdgeOptions {
            limits: Some(lines.to_owned()),
            ..EdgeOptions::default()
        },
        ..StackOptions::default()
    }
}

/// A second connector for the stack's `home` site, in front of its own stand-in.
async fn second_connector(stack: &mut Stack, name: &str) -> (Connector, StandIn) {
    let ha = StandIn::start().await.unwrap();
    let mut token = stack.pki.connector_token("home", name).unwrap();
    token.edges = vec![stack.edge.tunnel_addr().to_string()];
    let connector = Connector::start(ConnectorConfig::new(token.encode(), ha.addr))
        .await
        .unwrap();
    (connector, ha)
}

async fn ws_echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                assert_eq!(t.as_str(), text);
                return;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("no echo: {other:?}"),
        }
    }
}

// --- 1: stream credit -------------------------------------------------------------------------

/// Open and close far more WebSockets than a connection may carry at once, ending them every
/// way a WebSocket ends (a close handshake, the client vanishing, the client vanishing with
/// data in flight), then open that many at once again: every one must succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_churn_never_wears_out_stream_credit() {
    const SLOTS: usize = 8;
    let mut options = limits(&format!(
        "max_streams_per_connector = {SLOTS}\nstream_open_timeout = \"3s\""
    ));
    options.connections = 1;
    let stack = Stack::start_with(options).await.unwrap();
    let started = Instant::now();
    let rounds = 30;
    for round in 0..rounds {
        // A full connection's worth at once, each ended a different way.
        let mut open = Vec::new();
        for _ in 0..SLOTS {
            open.push(stack.ws(0).await.unwrap_or_else(|e| {
                panic!(
                    "round {round}: WebSocket refused: {e:#}\n{}",
                    stack.edge.output()
                )
            }));
        }
        for (i, mut ws) in open.into_iter().enumerate() {
            ws_echo(&mut ws, &format!("r{round}-{i}")).await;
            match i % 3 {
                0 => {
                    ws.close(None).await.unwrap();
                    while let Some(Ok(_)) = ws.next().await {}
                }
                1 => drop(ws),
                _ => {
                    ws.send(Message::binary(vec![7u8; 32 * 1024]))
                        .await
                        .unwrap();
                    drop(ws);
                }
            }
        }
    }
    let churned = rounds * SLOTS;
    // The last round's streams close asynchronously; the next opens wait for their slots
    // (bounded by stream_open_timeout), never for credit that is gone.
    let mut again = Vec::new();
    for i in 0..SLOTS {
        let mut ws = stack
            .ws(0)
            .await
            .unwrap_or_else(|e| panic!("after {churned} WebSockets, #{i} refused: {e:#}"));
        ws_echo(&mut ws, "still here").await;
        again.push(ws);
    }
    eprintln!(
        "{churned} WebSockets opened and closed ({rounds} rounds of {SLOTS} on one connection \
         with {SLOTS} slots) in {:?}; then {SLOTS} at once: all open",
        started.elapsed()
    );
    let (status, _) = get(
        &stack.client(0, HttpVersion::Auto).unwrap(),
        &stack.url("/status/200"),
    )
    .await;
    // All slots are taken by the open WebSockets: a plain request must wait and get 503.
    assert_eq!(status, 503);
    drop(again);
    let took = crate::poll_status(
        &stack.client(0, HttpVersion::Auto).unwrap(),
        &stack.url("/status/200"),
        200,
        Duration::from_secs(10),
    )
    .await;
    eprintln!("slots free again {took:?} after the WebSockets closed");
}

// --- 2: a connector that dies silently ---------------------------------------------------------

/// kill -9 during an endless streaming download and with an open WebSocket: both end within the
/// liveness limit (ping interval 2 s + margin 2 s, checked every 250 ms), not the 30 s idle
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connector_fails_every_stream_within_seconds() {
    const BOUND: Duration = Duration::from_secs(8);
    let mut stack = Stack::start().await.unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let mut sse = client
        .get(stack.url("/sse"))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 200);
    assert!(sse.chunk().await.unwrap().is_some());
    let mut ws = stack.ws(0).await.unwrap();
    ws_echo(&mut ws, "before").await;

    let pid = stack.connectors[0].pid().unwrap();
    e2e::signal(pid, "KILL").unwrap();
    let killed = Instant::now();
    let sse_ended = async {
        loop {
            match sse.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => return ("clean end", killed.elapsed()),
                Err(_) => return ("error", killed.elapsed()),
            }
        }
    };
    let ws_ended = async {
        assert!(e2e::ws_closed_within(&mut ws, Duration::from_secs(60)).await);
        killed.elapsed()
    };
    let ((how, sse_after), ws_after) = tokio::join!(sse_ended, ws_ended);
    eprintln!(
        "kill -9: streaming download ended ({how}) after {sse_after:?}, WebSocket after {ws_after:?}"
    );
    assert_eq!(how, "error", "a cut-off download must not look complete");
    assert!(sse_after < BOUND, "download hung {sse_after:?}");
    assert!(ws_after < BOUND, "WebSocket hung {ws_after:?}");
    stack.connectors[0].kill();
    // And the next request is a 503 with Retry-After, never a 502.
    let response = client.get(stack.url("/status/200")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
}

// --- 3: graceful connector shutdown -------------------------------------------------------------

/// SIGTERM mid 50 MB download: the client gets every byte; a slow request Home Assistant
/// answers during the drain gets its 200; the connector exits by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_responses_finish() {
    const SIZE: u64 = 50 * 1024 * 1024;
    let mut stack = Stack::start().await.unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let mut download = client
        .get(stack.url(&format!("/bytes/{SIZE}")))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    let slow = {
        let client = client.clone();
        let url = stack.url("/slow/1500");
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status()) })
    };
    let mut received = 0u64;
    let mut hash = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    while received < 4 * 1024 * 1024 {
        let chunk = download.chunk().await.unwrap().unwrap();
        received += chunk.len() as u64;
        hash.update(&chunk);
    }
    // The slow request is on its way to HA before the signal.
    poll_until(
        "the slow request at HA",
        Duration::from_secs(10),
        || async {
            stack
                .home()
                .ha
                .recorder
                .seen()
                .iter()
                .any(|r| r.target.contains("/slow/"))
                .then_some(())
        },
    )
    .await
    .unwrap();
    stack.connectors[0].terminate().unwrap();
    let signalled = Instant::now();
    while let Some(chunk) = download.chunk().await.unwrap_or_else(|e| {
        panic!(
            "download cut off after {received} of {SIZE} bytes: {e:?}\n{}",
            stack.connectors[0].output()
        )
    }) {
        received += chunk.len() as u64;
        hash.update(&chunk);
    }
    assert_eq!(
        received,
        SIZE,
        "download short by {} bytes",
        SIZE - received
    );
    let hex: String = hash
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(hex, standin::pattern_sha256(SIZE));
    let status = slow.await.unwrap().unwrap();
    assert_eq!(status, 200, "a request HA answered must reach the client");
    let exit = stack.connectors[0]
        .wait_exit(Duration::from_secs(30))
        .await
        .unwrap();
    eprintln!(
        "SIGTERM mid-download: all {SIZE} bytes and the slow 200 delivered; connector exited \
         ({exit}) {:?} after the signal",
        signalled.elapsed()
    );
    assert!(exit.success(), "{exit}");
}

// --- 4 and 5: rolling restarts, requests caught on a dead connection -----------------------------

/// A steady load of unique GETs (`/id/<worker>-<n>`) from a few workers, until stopped.
struct SteadyLoad {
    stop: tokio_util::sync::CancellationToken,
    sent: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<(Vec<String>, Duration)>>,
}

impl SteadyLoad {
    fn start(stack: &Stack, workers: u64) -> Self {
        let client = stack.client(0, HttpVersion::Auto).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let sent = Arc::new(AtomicU64::new(0));
        let workers = (0..workers)
            .map(|w| {
                let client = client.clone();
                let base = stack.url("/id/");
                let stop = stop.clone();
                let sent = sent.clone();
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    let mut slowest = Duration::ZERO;
                    let mut n = 0u64;
                    while !stop.is_cancelled() {
                        let id = format!("{w}-{n}");
                        n += 1;
                        sent.fetch_add(1, Ordering::SeqCst);
                        let started = Instant::now();
                        match client.get(format!("{base}{id}")).send().await {
                            Ok(r) if r.status() == 200 => {}
                            Ok(r) => failures.push(format!("{id}: {}", r.status())),
                            Err(e) => failures.push(format!("{id}: {e:?}")),
                        }
                        slowest = slowest.max(started.elapsed());
                    }
                    (failures, slowest)
                })
            })
            .collect();
        Self {
            stop,
            sent,
            workers,
        }
    }

    /// Stops the load: the failed requests, how many were sent, the slowest.
    async fn finish(self) -> (Vec<String>, u64, Duration) {
        self.stop.cancel();
        let mut failures = Vec::new();
        let mut slowest = Duration::ZERO;
        for w in self.workers {
            let (failed, slow) = w.await.unwrap();
            failures.extend(failed);
            slowest = slowest.max(slow);
        }
        (failures, self.sent.load(Ordering::SeqCst), slowest)
    }
}

/// The edge's log lines about connectors and failed requests, for a failure message.
fn edge_log(stack: &Stack) -> String {
    stack
        .edge
        .all_text()
        .lines()
        .filter(|l| l.contains("request failed") || l.contains("connector"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Two connectors, each restarted in turn (SIGTERM, start again), for several rounds, under a
/// steady load of unique requests: none fails, none reaches Home Assistant twice. Each
/// connector keeps two connections, and both refuse streams unread until the edge has seen
/// their `Drain`: a request refused on one is sent to the other connector, not its sibling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restarts_lose_and_duplicate_nothing() {
    const ROUNDS: usize = 3;
    let mut stack = Stack::start().await.unwrap();
    let (mut second, second_ha) = second_connector(&mut stack, "connector-2").await;
    let load = SteadyLoad::start(&stack, 4);
    let started = Instant::now();
    for round in 0..ROUNDS {
        for which in 0..2 {
            let connector = if which == 0 {
                &mut stack.connectors[0]
            } else {
                &mut second
            };
            connector.terminate().unwrap();
            connector.wait_exit(Duration::from_secs(30)).await.unwrap();
            // Back once its ready file says it registered.
            connector.restart().await.unwrap();
            eprintln!(
                "round {round}: connector {which} restarted at {:?}",
                started.elapsed()
            );
        }
    }
    let (failures, total, slowest) = load.finish().await;
    let mut counts = stack.home().ha.recorder.id_counts();
    for (id, n) in second_ha.recorder.id_counts() {
        *counts.entry(id).or_default() += n;
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "rolling restarts ({ROUNDS} rounds × 2 connectors): {} failed, {} duplicated out of \
         {total} requests; slowest {slowest:?}",
        failures.len(),
        duplicated.len()
    );
    assert!(
        failures.is_empty(),
        "failed: {failures:?}\nedge:\n{}",
        edge_log(&stack)
    );
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    assert_eq!(
        counts.len() as u64,
        total,
        "every request reached HA exactly once"
    );
}

/// The only connector restarted (SIGTERM, started again: an add-on update) under a steady
/// load: the requests that come while it is away wait for it (`limits.connector_wait`), so
/// none fails and none reaches Home Assistant twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_the_only_connector_delays_requests_but_fails_none() {
    let mut stack = Stack::start().await.unwrap();
    let load = SteadyLoad::start(&stack, 4);
    poll_until("requests flowing", Duration::from_secs(10), || async {
        (load.sent.load(Ordering::SeqCst) > 20).then_some(())
    })
    .await
    .unwrap();
    let before = load.sent.load(Ordering::SeqCst);
    for _ in 0..2 {
        let connector = &mut stack.connectors[0];
        connector.terminate().unwrap();
        connector.wait_exit(Duration::from_secs(30)).await.unwrap();
        connector.restart().await.unwrap();
    }
    let (failures, total, slowest) = load.finish().await;
    let waited = metric(
        stack.edge.admin_addr(),
        r#"doorless_edge_connector_waits_total{site="home",result="arrived"}"#,
    )
    .await;
    let counts = stack.home().ha.recorder.id_counts();
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "the only connector restarted twice: {} failed, {} duplicated out of {total} requests \
         ({before} before the first restart), {waited} waited for it; slowest {slowest:?}",
        failures.len(),
        duplicated.len()
    );
    // Requests did arrive while it was away (else this test proves nothing).
    assert!(waited > 0.0, "no request waited for the connector");
    assert!(
        failures.is_empty(),
        "failed: {failures:?}\nedge:\n{}",
        edge_log(&stack)
    );
    assert!(duplicated.is_empty(), "duplicated: {duplicated:?}");
    assert_eq!(counts.len() as u64, total);
}

/// Requests caught on a connection that dies (kill -9): GETs without a body are sent again on
/// the surviving connector (200); a POST whose body was already on its way gets 503 with
/// `Retry-After`, never 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_a_dead_connection_are_retried_or_503() {
    let mut stack = Stack::start().await.unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    // Only connector-1 is registered: these land on it.
    let mut gets = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        let url = stack.url("/slow/8000");
        gets.push(tokio::spawn(async move {
            client.get(url).send().await.map(|r| r.status().as_u16())
        }));
    }
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(1);
    body_tx
        .send(Ok(bytes::Bytes::from_static(b"part one")))
        .await
        .unwrap();
    let post = {
        let client = client.clone();
        let url = stack.url("/upload");
        let body = reqwest::Body::wrap_stream(tokio_stream_from(body_rx));
        tokio::spawn(async move { client.post(url).body(body).send().await })
    };
    poll_until(
        "4 slow GETs and the upload at HA",
        Duration::from_secs(10),
        || async {
            let seen = stack.home().ha.recorder.seen();
            let slow = seen.iter().filter(|r| r.target.contains("/slow/")).count();
            let upload = seen.iter().any(|r| r.target == "/upload");
            (slow == 4 && upload).then_some(())
        },
    )
    .await
    .unwrap();
    let (second, second_ha) = second_connector(&mut stack, "connector-2").await;
    let pid = stack.connectors[0].pid().unwrap();
    e2e::signal(pid, "KILL").unwrap();
    let killed = Instant::now();
    let post = post.await.unwrap().unwrap();
    eprintln!(
        "POST with a body in flight: {} after {:?}",
        post.status(),
        killed.elapsed()
    );
    assert_eq!(post.status(), 503);
    assert_eq!(post.headers()["retry-after"], "1");
    drop(body_tx);
    for get in gets {
        assert_eq!(
            get.await.unwrap().unwrap(),
            200,
            "a GET caught on the dead connection"
        );
    }
    let retried = second_ha
        .recorder
        .seen()
        .iter()
        .filter(|r| r.target.contains("/slow/"))
        .count();
    eprintln!(
        "GETs caught on the dead connection: all 200 after {:?} ({retried} sent again to the other connector)",
        killed.elapsed()
    );
    assert_eq!(
        retried, 4,
        "the GETs were not caught on the dead connection"
    );
    drop(second);
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

// --- 6: load spreading ---------------------------------------------------------------------------

/// Two idle connectors: requests go to both, not all to the first registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connectors_share_requests() {
    let mut stack = Stack::start().await.unwrap();
    let (_second, second_ha) = second_connector(&mut stack, "connector-2").await;
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    for _ in 0..40 {
        let (status, _) = get(&client, &stack.url("/status/200")).await;
        assert_eq!(status, 200);
    }
    let (first, second) = (stack.home().ha.requests(), second_ha.requests());
    eprintln!("40 sequential requests, two idle connectors: {first} and {second}");
    assert_eq!(first + second, 40);
    assert!(first >= 5 && second >= 5, "{first} / {second}");
}

// --- 7: NAT rebinding ----------------------------------------------------------------------------

/// The connector's source port changes (a UDP relay rebinds) while requests flow: the tunnel
/// survives (QUIC migrates), no request fails. Then the path goes dark for longer than the
/// liveness limit: both ends give the connection up, and once the path is back the connector
/// has redialled without waiting for a backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nat_rebinding_keeps_the_tunnel() {
    let mut options = StackOptions {
        connectors: false,
        ..StackOptions::default()
    };
    options.connections = 1;
    let stack = Stack::start_with(options).await.unwrap();
    let relay = UdpRelay::start(stack.edge.tunnel_addr()).await.unwrap();
    let mut config = ConnectorConfig::new(stack.home().token.encode(), stack.home().ha.addr);
    config.edges = Some(vec![relay.addr()]);
    config.connections = 1;
    let connector = Connector::start(config).await.unwrap();
    let admin = connector.admin_addr().unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let client = client.clone();
        let base = stack.url("/id/");
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.is_cancelled() {
                match client.get(format!("{base}n{ok}")).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    other => failed.push(format!("{other:?}")),
                }
            }
            (ok, failed)
        })
    };
    for i in 0..3 {
        let before = relay.mapped_ports();
        relay.rebind();
        let served = stack.home().ha.requests();
        poll_until(
            "requests after the rebinding",
            Duration::from_secs(10),
            || async {
                let after = relay.mapped_ports();
                (stack.home().ha.requests() > served + 20 && !after.is_empty() && after != before)
                    .then_some(())
            },
        )
        .await
        .unwrap();
        eprintln!("rebinding {i}: {before:?} → {:?}", relay.mapped_ports());
    }
    stop.cancel();
    let (ok, failed) = load.await.unwrap();
    let attempts = metric(
        admin,
        "doorless_connector_connection_attempts_total{result=\"ok\"}",
    )
    .await;
    eprintln!(
        "3 NAT rebindings under load: {ok} requests ok, {} failed, {attempts} registrations",
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(attempts, 1.0, "the tunnel was replaced instead of migrated");

    // Dark for longer than the liveness limit (2 s + 2 s): the connection is given up.
    relay.blackhole(true);
    poll_until(
        "the connector to give the connection up",
        Duration::from_secs(15),
        || async {
            let up = metric(admin, "doorless_connector_edge_connections").await;
            (up == 0.0).then_some(())
        },
    )
    .await
    .unwrap();
    relay.blackhole(false);
    let back = Instant::now();
    let took = crate::poll_status(
        &client,
        &stack.url("/status/200"),
        200,
        Duration::from_secs(15),
    )
    .await;
    eprintln!(
        "path back: serving again after {took:?} ({:?})",
        back.elapsed()
    );
    drop(connector);
}

// --- 10: body idle timeouts ----------------------------------------------------------------------

/// An upstream that stalls mid-body ends the stream after the connector's body idle timeout
/// (counted), and the edge's own timeout does the same from its side (counted); an event stream
/// that keeps sending outlives both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_end_after_the_idle_timeout() {
    // The connector's limit (1 s), the edge's left at its default.
    let stack = Stack::start_with(StackOptions {
        connectors: false,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let mut config = ConnectorConfig::new(stack.home().token.encode(), stack.home().ha.addr);
    config.extra_toml = Some("[limits]\nbody_idle_timeout = \"1s\"".to_owned());
    let connector = Connector::start(config).await.unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let ended = stalled_download(&client, &stack.url("/stall/100000")).await;
    let counted = metric(
        connector.admin_addr().unwrap(),
        "doorless_connector_upstream_errors_total{kind=\"body_idle\"}",
    )
    .await;
    eprintln!(
        "connector body idle timeout 1 s: stalled body cut off after {ended:?}, counted {counted}"
    );
    assert!(ended >= Duration::from_millis(900) && ended < Duration::from_secs(10));
    assert_eq!(counted, 1.0);
    sse_outlives(&client, &stack.url("/sse"), Duration::from_secs(3)).await;
    drop(connector);

    // The edge's limit (1 s), the connector's at its default.
    let stack = Stack::start_with(limits("body_idle_timeout = \"1s\""))
        .await
        .unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    let ended = stalled_download(&client, &stack.url("/stall/100000")).await;
    let counted = metric(
        stack.edge.admin_addr(),
        "doorless_edge_tunnel_stream_failures_total{site=\"home\",reason=\"body_idle\"}",
    )
    .await;
    eprintln!(
        "edge body idle timeout 1 s: stalled body cut off after {ended:?}, counted {counted}"
    );
    assert!(ended >= Duration::from_millis(900) && ended < Duration::from_secs(10));
    assert_eq!(counted, 1.0);
    sse_outlives(&client, &stack.url("/sse"), Duration::from_secs(3)).await;
}

/// Reads the stall's first bytes, then returns how long until the body failed.
async fn stalled_download(client: &reqwest::Client, url: &str) -> Duration {
    let mut response = client
        .get(url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut received = 0;
    let mut last_byte = Instant::now();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                received += chunk.len();
                last_byte = Instant::now();
            }
            Ok(None) => panic!("a stalled body ended cleanly after {received} bytes"),
            Err(_) => break,
        }
    }
    assert_eq!(received, 100_000);
    last_byte.elapsed()
}

/// An event stream (an event every 100 ms) keeps flowing for `how_long`.
async fn sse_outlives(client: &reqwest::Client, url: &str, how_long: Duration) {
    let mut sse = client
        .get(url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    while started.elapsed() < how_long {
        assert!(sse.chunk().await.unwrap().is_some());
    }
}
