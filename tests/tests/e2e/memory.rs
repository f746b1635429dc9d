//! Memory after a burst (issue 13 item 9): 2,000 WebSockets opened at once through the real
//! edge and connector, closed, and then nothing. The memory they used must go back to the
//! operating system once things are quiet, not stay at the peak for the life of the process.
//!
//! RSS is read from `/proc` (Linux). The numbers are printed (`--nocapture`) for
//! docs/benchmarks.md; the assertion is deliberately loose (the idle RSS gives back at least
//! half of what the burst added) and polled with a deadline, so it measures the allocator's
//! behaviour and not the machine's load.

use std::time::{Duration, Instant};

use e2e::{Stack, StackOptions, poll_until, rss_bytes};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

/// WebSockets open at the peak.
const SOCKETS: usize = 2_000;
/// Handshakes in flight at once while opening them.
const OPENING: usize = 32;
/// The whole burst (open, echo, close) must fit in this.
const BURST_DEADLINE: Duration = Duration::from_secs(240);
/// How long the processes get to give the memory back once idle.
const IDLE_DEADLINE: Duration = Duration::from_secs(30);
/// Once they have, how long the printed "after idle" figure keeps being observed.
const SETTLE: Duration = Duration::from_secs(5);

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// RSS of each pid, bytes (0 if unreadable).
fn sample(pids: &[u32]) -> Vec<u64> {
    pids.iter()
        .map(|&pid| rss_bytes(pid).unwrap_or(0))
        .collect()
}

async fn echo<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, text: &str) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(Message::text(text)).await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text => return Ok(()),
            Ok(Some(Ok(_))) => {}
            other => anyhow::bail!("no echo: {other:?}"),
        }
    }
}

/// The soft limit on open files of this process (the edge and connector inherit it).
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_of_closed_websockets_goes_back_when_idle() {
    // This process holds both ends on loopback: each WebSocket's client socket and the
    // stand-in's accepted one.
    let needed = 2 * SOCKETS as u64 + 512;
    let limit = open_files_limit().unwrap_or(0);
    assert!(
        limit >= needed,
        "this test opens {SOCKETS} WebSockets and needs `ulimit -n` >= {needed} (it is {limit})"
    );
    let slots = SOCKETS + 64;
    let stack = Stack::start_with(StackOptions::with_limits(format!(
        "max_connections_per_ip = {slots}\nmax_streams_per_connector = {slots}"
    )))
    .await
    .unwrap();
    let names = ["edge", "connector"];
    let pids = [
        stack.edge.pid().unwrap(),
        stack.connectors[0].pid().unwrap(),
    ];
    // Warm up (first TLS handshake, first WebSocket, every worker thread's heap), so the
    // baseline is a process that has served, not one that just started.
    for _ in 0..4 {
        let mut ws = stack.ws(0).await.unwrap();
        echo(&mut ws, "warm").await.unwrap();
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
    }
    let baseline = sample(&pids);

    let started = Instant::now();
    let opened: Vec<_> = tokio::time::timeout(
        BURST_DEADLINE,
        futures_util::stream::iter(0..SOCKETS)
            .map(|i| {
                let stack = &stack;
                async move {
                    let mut ws = stack.ws(0).await?;
                    echo(&mut ws, &format!("ws {i}")).await?;
                    anyhow::Ok(ws)
                }
            })
            .buffer_unordered(OPENING)
            .collect(),
    )
    .await
    .expect("opening the WebSockets took too long");
    let mut open = Vec::with_capacity(SOCKETS);
    for (i, ws) in opened.into_iter().enumerate() {
        open.push(ws.unwrap_or_else(|e| panic!("WebSocket #{i}: {e:#}\n{}", stack.edge.output())));
    }
    let opened_in = started.elapsed();
    let peak = sample(&pids);

    // Close them all with a close handshake, as a browser leaving the page does.
    tokio::time::timeout(
        BURST_DEADLINE,
        futures_util::stream::iter(open).for_each_concurrent(OPENING * 4, |mut ws| async move {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        }),
    )
    .await
    .expect("closing the WebSockets took too long");
    poll_until(
        "the edge to count no open WebSocket",
        Duration::from_secs(30),
        || async {
            let open = stack
                .edge
                .metric("doorless_edge_active_websockets")
                .await
                .ok()?;
            (open == 0.0).then_some(())
        },
    )
    .await
    .unwrap();
    let closed = sample(&pids);

    // Idle: poll until each process has given back at least half of what the burst added.
    let idle_started = Instant::now();
    let returned = |now: &[u64]| {
        now.iter()
            .zip(&baseline)
            .zip(&peak)
            .all(|((&now, &base), &peak)| now.saturating_sub(base) <= peak.saturating_sub(base) / 2)
    };
    let after = poll_until(
        "RSS to come back down after the burst",
        IDLE_DEADLINE,
        || async {
            let now = sample(&pids);
            returned(&now).then_some(now)
        },
    )
    .await;
    let came_back_after = idle_started.elapsed();
    // For the record (not a synchronisation): the lowest RSS over a few more idle seconds.
    let mut last = after.as_ref().cloned().unwrap_or_else(|_| sample(&pids));
    let settle = Instant::now();
    while after.is_ok() && settle.elapsed() < SETTLE {
        tokio::time::sleep(e2e::POLL_INTERVAL * 10).await;
        for (low, now) in last.iter_mut().zip(sample(&pids)) {
            *low = (*low).min(now);
        }
    }
    let idle_for = idle_started.elapsed();
    for (i, name) in names.iter().enumerate() {
        eprintln!(
            "{SOCKETS} WebSockets: {name} RSS baseline {:.1} MiB, peak {:.1} MiB (+{:.1}), \
             all closed {:.1} MiB, after {idle_for:.1?} idle {:.1} MiB (+{:.1})",
            mib(baseline[i]),
            mib(peak[i]),
            mib(peak[i].saturating_sub(baseline[i])),
            mib(closed[i]),
            mib(last[i]),
            mib(last[i].saturating_sub(baseline[i])),
        );
    }
    eprintln!(
        "opened and echoed {SOCKETS} WebSockets in {opened_in:?}; half the growth was back \
         {came_back_after:?} after the last one closed"
    );
    assert!(baseline.iter().all(|&b| b > 0), "could not read RSS");
    after.unwrap_or_else(|e| panic!("{e:#}: memory stayed at the peak"));
}
