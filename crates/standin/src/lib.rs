//! A stand-in Home Assistant: the backend of `doorless-edge demo` and of the e2e tests.
//!
//! It is NOT Home Assistant and does not try to look like it beyond what the tunnel has to
//! carry: an HTML page with a WebSocket, the WebSocket echo on `/api/websocket` (with `?auth`:
//! Home Assistant's opening exchange first, see [`AUTH_REQUIRED`]), an endless
//! Server-Sent Events stream, streamed downloads and uploads of any size, slow answers, any
//! status code, a body that stalls half-way (`/stall/{n}`), unique request ids it counts
//! (`/id/{id}`, see [`Recorder::id_counts`]), and a `/debug/request` endpoint that reports exactly what arrived (method,
//! raw target, every header line, TCP peer).
//!
//! Start at [`serve`]; every request is counted and logged in a [`Recorder`] *before* it is
//! answered, so a test can prove that a denied request never reached "Home Assistant".
//! The connector's own self-check probes (`User-Agent: doorless-connector/<version> check`,
//! sent straight to HA, never through the tunnel) are counted apart, in
//! [`Recorder::self_checks`], so they cannot be mistaken for tunneled traffic.
//!
//! HTTP/1.1 only (with upgrades), like HA behind the connector.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_lc_rs::digest;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How many [`SeenRequest`]s a [`Recorder`] keeps (the oldest are dropped first).
pub const LOG_CAPACITY: usize = 1024;

/// Largest WebSocket message (and frame) the echo accepts.
pub const WS_MAX_MESSAGE: usize = 16 << 20;

/// What `/api/websocket?auth` sends right after the 101, as Home Assistant does; it answers
/// the client's first message with [`AUTH_OK`], then echoes.
pub const AUTH_REQUIRED: &str = r#"{"type":"auth_required","ha_version":"2026.12.0"}"#;

/// The answer to the first client message on `/api/websocket?auth`.
pub const AUTH_OK: &str = r#"{"type":"auth_ok","ha_version":"2026.12.0"}"#;

/// Interval between Server-Sent Events after the first one.
pub const SSE_INTERVAL: Duration = Duration::from_millis(100);

/// The title of the page served at `/`.
pub const PAGE_TITLE: &str = "Home Assistant (doorless stand-in)";

/// One request as the stand-in received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The request target as received (origin form: path and query, byte for byte).
    pub target: String,
    /// Every header line, names lowercase. Repeated lines stay separate entries; lines of the
    /// same name are grouped together in first-seen order (hyper's `HeaderMap` order).
    pub headers: Vec<(String, String)>,
    /// The TCP peer (`ip:port`), i.e. the connector.
    pub peer: String,
}

impl SeenRequest {
    /// All values of header `name` (case-insensitive), one per line.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of header `name` if it appears exactly once.
    pub fn header_one(&self, name: &str) -> Option<&str> {
        match self.header_all(name).as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }

    /// Whether this is a probe of the connector's self-check, by its `User-Agent`.
    pub fn is_self_check(&self) -> bool {
        self.header_one("user-agent")
            .is_some_and(|ua| ua.starts_with("doorless-connector/") && ua.ends_with(" check"))
    }
}

/// Counts and remembers requests; shared between the server and the test that inspects it.
#[derive(Debug, Default)]
pub struct Recorder {
    requests: AtomicU64,
    self_checks: AtomicU64,
    websockets_open: AtomicU64,
    log: Mutex<VecDeque<SeenRequest>>,
    ids: Mutex<std::collections::HashMap<String, u64>>,
}

impl Recorder {
    /// A new, empty recorder.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Total number of requests received (never decreases, not bounded by the log).
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    /// Number of connector self-check probes received; they are in neither
    /// [`Recorder::requests`] nor [`Recorder::seen`].
    pub fn self_checks(&self) -> u64 {
        self.self_checks.load(Ordering::SeqCst)
    }

    /// The last [`LOG_CAPACITY`] requests, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// How often each id of `GET /id/{id}` arrived (a test sends each id once, so anything
    /// but 1 is a lost or a duplicated request).
    pub fn id_counts(&self) -> std::collections::HashMap<String, u64> {
        self.ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn count_id(&self, id: &str) {
        *self
            .ids
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default() += 1;
    }

    /// WebSocket connections currently open.
    pub fn websockets_open(&self) -> u64 {
        self.websockets_open.load(Ordering::SeqCst)
    }

    fn record(&self, seen: SeenRequest) {
        if seen.is_self_check() {
            self.self_checks.fetch_add(1, Ordering::SeqCst);
            return;
        }
        {
            let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
            if log.len() >= LOG_CAPACITY {
                log.pop_front();
            }
            log.push_back(seen);
        }
        // Count after logging so that a reader who sees the count also sees the entry.
        self.requests.fetch_add(1, Ordering::SeqCst);
    }
}

/// Decrements the open-WebSocket gauge when the echo task ends, however it ends.
struct WsOpenGuard(Arc<Recorder>);

impl WsOpenGuard {
    fn new(recorder: Arc<Recorder>) -> Self {
        recorder.websockets_open.fetch_add(1, Ordering::SeqCst);
        Self(recorder)
    }
}

impl Drop for WsOpenGuard {
    fn drop(&mut self) {
        self.0.websockets_open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves until `shutdown` is cancelled, then drops the listener and every open connection
/// (including WebSockets and endless streams) and returns once they are gone.
///
/// HTTP/1.1 only (like HA behind the connector), with upgrades.
pub async fn serve(listener: TcpListener, recorder: Arc<Recorder>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off a little instead of spinning.
                    tracing::warn!(%error, "standin: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctx = Ctx {
            recorder: recorder.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
            peer,
        };
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(ctx, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                result = conn => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %peer, "standin: connection ended with error");
                    }
                }
                () = shutdown.cancelled() => {}
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

#[derive(Clone)]
struct Ctx {
    recorder: Arc<Recorder>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    peer: SocketAddr,
}

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

fn full(
    status: StatusCode,
    content_type: Option<&'static str>,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let body = Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Some(content_type) = content_type {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    response
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response
}

fn not_found() -> Response<Body> {
    full(StatusCode::NOT_FOUND, Some("text/plain"), "not found\n")
}

fn seen_request(req: &Request<Incoming>, peer: SocketAddr) -> SeenRequest {
    SeenRequest {
        method: req.method().as_str().to_owned(),
        target: req.uri().to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        peer: peer.to_string(),
    }
}

async fn handle(ctx: Ctx, req: Request<Incoming>) -> Response<Body> {
    let seen = seen_request(&req, ctx.peer);
    ctx.recorder.record(seen.clone());

    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let method = req.method().clone();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();

    match (&method, segments.as_slice()) {
        (&Method::GET, [""]) => full(StatusCode::OK, Some("text/html; charset=utf-8"), PAGE),
        (&Method::GET, ["api", "websocket"]) => websocket(ctx, req),
        (_, ["debug", "request"]) => {
            // Drain a (bounded) body so the connection stays reusable.
            let _ = http_body_util::Limited::new(req.into_body(), 1 << 20)
                .collect()
                .await;
            match serde_json::to_vec(&seen) {
                Ok(json) => full(StatusCode::OK, Some("application/json"), json),
                Err(_) => empty(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
        (&Method::GET, ["bytes", n]) => match n.parse::<u64>() {
            Ok(n) => {
                let chunked = query.as_deref().is_some_and(|q| {
                    q.split('&')
                        .any(|kv| kv.split('=').next() == Some("chunked"))
                });
                bytes_response(n, chunked)
            }
            Err(_) => not_found(),
        },
        (&Method::POST | &Method::PUT, ["upload"]) => upload(req).await,
        (&Method::GET, ["sse"]) => sse(),
        (&Method::GET, ["status", code]) => match code.parse::<u16>().map(StatusCode::from_u16) {
            Ok(Ok(status)) => empty(status),
            _ => not_found(),
        },
        (_, ["cached", variant, name]) => cached(variant, name, ctx.recorder.requests()),
        (&Method::GET, ["id", id]) => {
            ctx.recorder.count_id(id);
            full(StatusCode::OK, Some("text/plain"), id.to_string())
        }
        (&Method::GET, ["stall", n]) => match n.parse::<u64>() {
            Ok(n) => stall(n),
            Err(_) => not_found(),
        },
        (&Method::GET, ["slow", ms]) => match ms.parse::<u64>() {
            Ok(ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                full(StatusCode::OK, Some("text/plain"), "slow")
            }
            Err(_) => not_found(),
        },
        _ => not_found(),
    }
}

/// `/cached/{variant}/{name}`: a small body naming the request's serial (so a client can tell
/// a response that came from Home Assistant from one a cache kept), with the caching headers
/// of `variant`: `ha` as Home Assistant serves its frontend files (`public, max-age=2678400`),
/// `short` (`public, max-age=1`), and the ones a shared cache must not keep: `private`,
/// `nostore`, `cookie` (public, with a `Set-Cookie`), `vary` (public, `Vary: Cookie`), `none`.
fn cached(variant: &str, name: &str, serial: u64) -> Response<Body> {
    let headers: &[(&str, &str)] = match variant {
        "ha" => &[("cache-control", "public, max-age=2678400")],
        "short" => &[("cache-control", "public, max-age=1")],
        "private" => &[("cache-control", "private, max-age=2678400")],
        "nostore" => &[("cache-control", "public, max-age=2678400, no-store")],
        "cookie" => &[
            ("cache-control", "public, max-age=2678400"),
            ("set-cookie", "session=1; Path=/"),
        ],
        "vary" => &[
            ("cache-control", "public, max-age=2678400"),
            ("vary", "Cookie"),
        ],
        "none" => &[],
        _ => return not_found(),
    };
    let mut response = full(
        StatusCode::OK,
        Some("application/javascript"),
        format!("{variant}/{name} #{serial}"),
    );
    for (name, value) in headers {
        response.headers_mut().insert(
            http::HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    response
}

/// Bytes per chunk of `/bytes/{n}`: a multiple of 251, so every chunk starts at pattern
/// offset 0 and all chunks can share one buffer.
const PATTERN_CHUNK: usize = 251 * 256;

fn pattern_chunk() -> Bytes {
    static CHUNK: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    CHUNK
        .get_or_init(|| {
            (0..PATTERN_CHUNK)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>()
                .into()
        })
        .clone()
}

/// The payload of `/bytes/{n}` as a stream of shared chunks (never allocates `n`); tests use
/// it to upload the same pattern.
pub fn pattern_stream(n: u64) -> impl futures_util::Stream<Item = Bytes> + Send + 'static {
    let chunk = pattern_chunk();
    futures_util::stream::unfold(n, move |remaining| {
        let chunk = chunk.clone();
        async move {
            if remaining == 0 {
                return None;
            }
            let len = remaining.min(PATTERN_CHUNK as u64);
            // `len <= PATTERN_CHUNK`, so the cast is lossless.
            Some((chunk.slice(..len as usize), remaining - len))
        }
    })
}

/// Hex SHA-256 of the `/bytes/{n}` payload, for tests.
pub fn pattern_sha256(n: u64) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let chunk = pattern_chunk();
    let mut remaining = n;
    while remaining > 0 {
        let len = remaining.min(PATTERN_CHUNK as u64);
        ctx.update(&chunk[..len as usize]);
        remaining -= len;
    }
    hex(ctx.finish().as_ref())
}

/// Byte `i` of every `/bytes/{n}` payload.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

fn bytes_response(n: u64, chunked: bool) -> Response<Body> {
    let body = StreamBody::new(pattern_stream(n).map(|b| Ok::<_, std::io::Error>(Frame::data(b))));
    let mut response = Response::new(BodyExt::boxed_unsync(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if !chunked {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    response
}

async fn upload(req: Request<Incoming>) -> Response<Body> {
    let mut body = req.into_body();
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut n: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    ctx.update(data);
                    n += data.len() as u64;
                }
            }
            Err(error) => {
                tracing::debug!(%error, received = n, "standin: upload body failed");
                return full(StatusCode::BAD_REQUEST, Some("text/plain"), "body error\n");
            }
        }
    }
    let json = serde_json::json!({ "bytes": n, "sha256": hex(ctx.finish().as_ref()) });
    full(StatusCode::OK, Some("application/json"), json.to_string())
}

/// `n` pattern bytes, then nothing more, ever (until shutdown): an upstream stalled mid-body.
fn stall(n: u64) -> Response<Body> {
    let body = pattern_stream(n)
        .map(|b| Ok::<_, std::io::Error>(Frame::data(b)))
        .chain(futures_util::stream::pending());
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn sse() -> Response<Body> {
    let events = futures_util::stream::unfold(0u64, |i| async move {
        if i > 0 {
            tokio::time::sleep(SSE_INTERVAL).await;
        }
        let event = Bytes::from(format!("data: {i}\n\n"));
        Some((Ok::<_, std::io::Error>(Frame::data(event)), i + 1))
    });
    let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(events)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn websocket(ctx: Ctx, mut req: Request<Incoming>) -> Response<Body> {
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_ok = req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v == "13");
    let (Some(key), true, true, true) = (
        key,
        version_ok,
        header_has_token(&req, header::CONNECTION, "upgrade"),
        header_has_token(&req, header::UPGRADE, "websocket"),
    ) else {
        return full(
            StatusCode::BAD_REQUEST,
            Some("text/plain"),
            "not a websocket request\n",
        );
    };

    let greet = req.uri().query() == Some("auth");
    let on_upgrade = hyper::upgrade::on(&mut req);
    let recorder = ctx.recorder.clone();
    let shutdown = ctx.shutdown.clone();
    ctx.tracker.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "standin: websocket upgrade failed");
                return;
            }
        };
        let _open = WsOpenGuard::new(recorder);
        let config = WebSocketConfig::default()
            .max_message_size(Some(WS_MAX_MESSAGE))
            .max_frame_size(Some(WS_MAX_MESSAGE));
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        tokio::select! {
            () = async {
                if greet && !home_assistant_auth(&mut ws).await {
                    return;
                }
                echo(ws).await;
            } => {}
            () = shutdown.cancelled() => {}
        }
    });

    let mut response = empty(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Home Assistant's opening: `auth_required` at once, then `auth_ok` to the first message.
/// False if the WebSocket ended first.
async fn home_assistant_auth<S>(ws: &mut WebSocketStream<S>) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    if ws.send(Message::text(AUTH_REQUIRED)).await.is_err() {
        return false;
    }
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                return ws.send(Message::text(AUTH_OK)).await.is_ok();
            }
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return false,
        }
    }
}

/// Echoes text and binary messages. Pings are answered and a peer's close frame is echoed by
/// tungstenite itself (the replies are flushed as part of reading).
async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    while let Some(message) = ws.next().await {
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::debug!(%error, "standin: websocket ended");
                return;
            }
        };
        let reply = match message {
            Message::Text(_) | Message::Binary(_) => message,
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            Message::Close(_) => {
                // tungstenite queued the echo of the close frame; flush it out.
                let _ = ws.flush().await;
                continue;
            }
        };
        if let Err(error) = ws.send(reply).await {
            tracing::debug!(%error, "standin: websocket send failed");
            return;
        }
    }
}

const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Home Assistant (doorless stand-in)</title>
<style>
 body { font-family: system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
 #log { background: #f4f4f4; padding: 1rem; white-space: pre-wrap; }
 .ok { color: #137333; } .err { color: #b00020; }
</style>
</head>
<body>
<h1>Home Assistant (doorless stand-in)</h1>
<p>If you can read this, your client certificate was accepted and the request came through the
doorless tunnel. Below, this page opens a WebSocket to <code>/api/websocket</code> through the same
tunnel and shows the echo.</p>
<div id="log">connecting…</div>
<script>
(function () {
  var log = document.getElementById('log');
  function say(text, cls) {
    var line = document.createElement('div');
    line.textContent = text;
    if (cls) line.className = cls;
    log.appendChild(line);
  }
  log.textContent = '';
  var scheme = location.protocol === 'http:' ? 'ws://' : 'wss://';
  var url = scheme + location.host + '/api/websocket';
  say('opening ' + url);
  var ws = new WebSocket(url);
  ws.onopen = function () {
    var msg = 'hello through the tunnel at ' + new Date().toISOString();
    say('open; sending: ' + msg);
    ws.send(msg);
  };
  ws.onmessage = function (ev) { say('echo: ' + ev.data, 'ok'); say('WebSocket works.', 'ok'); };
  ws.onerror = function () { say('WebSocket error', 'err'); };
  ws.onclose = function (ev) { say('closed (code ' + ev.code + ')'); };
})();
</script>
</body>
</html>
"#;

#[cfg(test)]
mod tests;
