//! Live-update latency: a state change at the backend (its `state_changed` event, stamped with
//! the backend's wall clock) to the message arriving at an open WebSocket client speaking
//! HA's protocol. Backend and client run on one machine (other network namespaces, one
//! clock), so the difference of wall clocks is the one-way latency through the target.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::HOST;
use crate::clients::{Io, connect};
use crate::results::percentile;
use crate::targets::{Pki, Target};

type Ws = tokio_tungstenite::WebSocketStream<Io>;

async fn next_json(ws: &mut Ws, limit: Duration) -> Result<Value> {
    loop {
        let m = tokio::time::timeout(limit, ws.next())
            .await
            .context("no WebSocket message in time")?
            .ok_or_else(|| anyhow!("WebSocket closed"))??;
        if let Message::Text(t) = m {
            return Ok(serde_json::from_str(&t)?);
        }
    }
}

/// Opens an HA-like session, subscribes, and measures `n` events sent every `every`
/// (after `warmup` discarded ones). Returns (p50 ms, p99 ms, samples).
pub(crate) async fn live_update(
    t: &Target,
    pki: &Pki,
    n: usize,
    warmup: usize,
    every: Duration,
) -> Result<(f64, f64, usize)> {
    let io = connect(t, Some(&pki.tls)).await?;
    let url = format!(
        "{}://{HOST}:{}/api/websocket?events_ms={}",
        if t.tls { "wss" } else { "ws" },
        t.addr.port(),
        every.as_millis()
    );
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(20),
        tokio_tungstenite::client_async(url, io),
    )
    .await
    .context("WebSocket upgrade took over 20 s")??;
    ensure!(resp.status() == 101, "WebSocket: {}", resp.status());
    let limit = Duration::from_secs(20);
    let m = next_json(&mut ws, limit).await?;
    ensure!(
        m["type"] == "auth_required",
        "expected auth_required, got {m}"
    );
    ws.send(Message::text(
        json!({"type": "auth", "access_token": "bench"}).to_string(),
    ))
    .await?;
    let m = next_json(&mut ws, limit).await?;
    ensure!(m["type"] == "auth_ok", "expected auth_ok, got {m}");
    ws.send(Message::text(
        json!({"id": 1, "type": "subscribe_events", "event_type": "state_changed"}).to_string(),
    ))
    .await?;
    let mut lat = Vec::with_capacity(n);
    let deadline = Instant::now() + every * (n + warmup) as u32 + Duration::from_secs(30);
    let mut seen = 0usize;
    while lat.len() < n {
        if Instant::now() > deadline {
            bail!("only {} of {n} events in time", lat.len());
        }
        let m = next_json(&mut ws, limit).await?;
        if m["type"] != "event" {
            continue;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let sent: u128 = m["event"]["sent_ns"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("event without sent_ns: {m}"))?;
        seen += 1;
        if seen > warmup {
            lat.push(now.saturating_sub(sent) as f64 / 1e6);
        }
    }
    let _ = ws.close(None).await;
    lat.sort_by(f64::total_cmp);
    Ok((percentile(&lat, 50.0), percentile(&lat, 99.0), lat.len()))
}
