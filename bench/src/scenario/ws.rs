//! Scenario 4: WebSocket echo RTT and idle WebSockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::HOST;
use crate::clients::{Io, connect};
use crate::results::percentile;
use crate::targets::{Pki, Target};

type Ws = tokio_tungstenite::WebSocketStream<Io>;

async fn ws_open(t: &Target, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Ws> {
    let io = connect(t, tls).await?;
    let url = format!(
        "{}://{HOST}:{}/ws",
        if t.tls { "wss" } else { "ws" },
        t.addr.port()
    );
    let (ws, resp) = tokio_tungstenite::client_async(url, io).await?;
    ensure!(resp.status() == 101, "WebSocket: {}", resp.status());
    Ok(ws)
}

pub(crate) async fn ws_rtt(t: &Target, pki: &Pki, msgs: usize) -> Result<(f64, f64)> {
    let mut ws = ws_open(t, Some(&pki.tls)).await?;
    let payload = "x".repeat(32);
    let mut rtts = Vec::with_capacity(msgs);
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..(msgs + 50) {
        ensure!(Instant::now() < deadline, "WebSocket RTT run over 60 s");
        let start = Instant::now();
        ws.send(Message::text(payload.clone())).await?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await?
                .ok_or_else(|| anyhow!("WebSocket closed"))??;
            if m.is_text() {
                break;
            }
        }
        if i >= 50 {
            rtts.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    let _ = ws.close(None).await;
    rtts.sort_by(f64::total_cmp);
    Ok((percentile(&rtts, 50.0), percentile(&rtts, 99.0)))
}

/// Opens `n` idle WebSockets; returns (opened, RSS KiB per WebSocket of the proxy processes).
pub(crate) async fn ws_idle(t: &Target, pki: &Pki, n: usize) -> Result<(usize, f64)> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = t.rss_kib();
    let target = Arc::new(Target {
        kind: t.kind,
        addr: t.addr,
        tls: t.tls,
        roots: vec![],
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let sockets = Arc::new(tokio::sync::Mutex::new(Vec::with_capacity(n)));
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (target, sockets, next, failures, tls) = (
            target.clone(),
            sockets.clone(),
            next.clone(),
            failures.clone(),
            pki.tls.clone(),
        );
        set.spawn(async move {
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < n
                && Instant::now() < deadline
                && failures.load(Ordering::Relaxed) < 50
            {
                match tokio::time::timeout(Duration::from_secs(10), ws_open(&target, Some(&tls)))
                    .await
                {
                    Ok(Ok(ws)) => sockets.lock().await.push(ws),
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    let opened = sockets.lock().await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Every one still alive? One echo on a sample proves the path.
    {
        let mut guard = sockets.lock().await;
        if let Some(ws) = guard.last_mut() {
            ws.send(Message::text("ping")).await?;
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.next()).await?;
        }
    }
    let after = t.rss_kib();
    let per = (after as f64 - before as f64) / opened.max(1) as f64;
    // Close them all (drop), then give the proxies a moment to clean up.
    drop(sockets);
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok((opened, per))
}
