//! Live-update latency: a state change at the backend (its `state_changed` event, stamped with
//! the backend's wall clock) to the message arriving at an open WebSocket client speaking
//! HA's protocol. Backend and client run on one machine (other network namespaces, one
//! clock), so the difference of wall clocks is the one-way latency through the target.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::HOST;
use crate::clients::connect;
use crate::results::percentile;
use crate::scenario::netbulk::AbortOnDrop;
use crate::targets::{Pki, Target};

type Ws<S> = WebSocketStream<S>;

async fn next_json<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut Ws<S>,
    limit: Duration,
) -> Result<Value> {
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
    session(&mut ws, n, warmup, every).await
}

/// HA's opening on `ws` (`auth_required`, `auth`, `auth_ok`), a `state_changed`
/// subscription, then `n` events after `warmup`: their p50 and p99 latency (ms) and count.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut Ws<S>,
    n: usize,
    warmup: usize,
    every: Duration,
) -> Result<(f64, f64, usize)> {
    let limit = Duration::from_secs(20);
    let m = next_json(ws, limit).await?;
    ensure!(
        m["type"] == "auth_required",
        "expected auth_required, got {m}"
    );
    ws.send(Message::text(
        json!({"type": "auth", "access_token": "bench"}).to_string(),
    ))
    .await?;
    let m = next_json(ws, limit).await?;
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
        let m = next_json(ws, limit).await?;
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

/// Live updates on a WebSocket that shares one HTTP/2 connection with a download, as a
/// browser's dashboard tab does when it also loads a camera stream or a backup: the download
/// (`bytes`) starts first and is read until the events are in; the WebSocket is an RFC 8441
/// stream of the same connection, opened `ramp` after the download started. Only for a target
/// that offers extended CONNECT (doorless; nginx has no RFC 8441). `events`: (n, warmup,
/// every) as for [`live_update`]. Returns the events' (p50, p99, count) and the download's
/// MB/s.
pub(crate) async fn live_beside_download(
    t: &Target,
    pki: &Pki,
    (n, warmup, every): (usize, usize, Duration),
    bytes: u64,
    ramp: Duration,
) -> Result<((f64, f64, usize), f64)> {
    let io = tokio::time::timeout(Duration::from_secs(20), connect(t, Some(&pki.tls_h2)))
        .await
        .context("connect took over 20 s")??;
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(io))
        .await?;
    let _conn = AbortOnDrop(tokio::spawn(conn));
    let authority = format!("{HOST}:{}", t.addr.port());
    let get = http::Request::get(format!("https://{authority}/bytes/{bytes}"))
        .body(Empty::<Bytes>::new())?;
    // Its head also means the server's SETTINGS (extended CONNECT allowed) are in.
    let resp = tokio::time::timeout(Duration::from_secs(20), send.send_request(get))
        .await
        .context("no download head in 20 s")??;
    ensure!(resp.status() == 200, "download: {}", resp.status());
    let started = Instant::now();
    let moved = Arc::new(AtomicU64::new(0));
    let counter = moved.clone();
    let download = AbortOnDrop(tokio::spawn(async move {
        let mut body = resp.into_body();
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }));
    tokio::time::sleep(ramp).await;
    let connect = http::Request::builder()
        .method(http::Method::CONNECT)
        .version(http::Version::HTTP_2)
        .uri(format!(
            "https://{authority}/api/websocket?events_ms={}",
            every.as_millis()
        ))
        .header("sec-websocket-version", "13")
        .extension(hyper::ext::Protocol::from_static("websocket"))
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(20), send.send_request(connect))
        .await
        .context("no answer to the WebSocket's CONNECT in 20 s")??;
    ensure!(
        resp.status() == 200,
        "WebSocket over HTTP/2: {}",
        resp.status()
    );
    let upgraded = hyper::upgrade::on(resp).await?;
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    let live = session(&mut ws, n, warmup, every).await;
    let _ = ws.close(None).await;
    // What the download moved meanwhile (stopped here, not finished: it is sized to last).
    let mbps = moved.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64() / 1e6;
    drop(download);
    Ok((live?, mbps))
}
