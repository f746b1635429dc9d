//! The Home Assistant stand-in inside the backend: a frontend asset set shaped like HA's
//! (one index.html and 69 gzip-encoded assets, ≈900 KB on the wire, deterministic content)
//! and `/api/websocket` speaking the start of HA's WebSocket API (`auth_required` on open,
//! `auth` → `auth_ok`, `get_states` → a states result, `subscribe_events` → a result and then,
//! if the URL asks with `?events_ms=N`, one `state_changed` event every N ms carrying the
//! backend's wall clock in `sent_ns` for the live-update measurement).
//!
//! The page's script records `performance.now()` when the WebSocket opens, at `auth_ok` and
//! when the states arrive into `window.__bench`; `scenario::pageload` reads it over CDP.
//!
//! Not HA: no real auth, no service calls; the asset bytes are filler (random base64 in
//! comments, gzip "stored" blocks so the wire size is the asset size).

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::backend::full;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Entities in the `get_states` result.
const ENTITIES: usize = 200;
/// Total asset bytes on the wire (index + 69 assets) aimed at.
const TOTAL: usize = 900 * 1024;

struct Asset {
    path: String,
    content_type: &'static str,
    gz: Bytes,
}

struct Site {
    assets: Vec<Asset>,
    states: String,
}

/// splitmix64 for deterministic filler.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn filler(rng: &mut Rng, n: usize) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..n)
        .map(|_| B64[(rng.next() % 64) as usize] as char)
        .collect()
}

fn crc32(data: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !0u32;
    for &b in data {
        c = table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// gzip with deflate "stored" blocks: valid gzip any browser decodes, wire size ≈ input.
fn gzip_stored(data: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 32);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff]);
    let mut chunks = data.chunks(65535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(c) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = c.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(c);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Bytes::from(out)
}

/// The page's own script: opens the WebSocket at once (as HA's core.js does), sends `auth` as
/// soon as it is open without waiting for `auth_required` (as home-assistant-js-websocket
/// does: auth is mandatory) and records the milestones.
const CORE_JS: &str = r#"(function(){
var B=window.__bench;
B.t.created=performance.now();
var ws=new WebSocket((location.protocol==='https:'?'wss://':'ws://')+location.host+'/api/websocket');
ws.onopen=function(){B.t.open=performance.now();ws.send(JSON.stringify({type:'auth',access_token:'bench'}));};
ws.onmessage=function(e){var m=JSON.parse(e.data);
 if(m.type==='auth_required'){B.t.auth_required=performance.now();}
 else if(m.type==='auth_ok'){B.t.auth_ok=performance.now();
   ws.send(JSON.stringify({id:1,type:'subscribe_events',event_type:'state_changed'}));
   ws.send(JSON.stringify({id:2,type:'get_states'}));}
 else if(m.type==='result'&&m.id===2){B.t.states=performance.now();B.entities=m.result.length;B.done=true;}
};
ws.onerror=function(){B.error='websocket error';};
ws.onclose=function(e){if(!B.done){B.error='websocket closed '+e.code;}};
window.addEventListener('load',function(){B.t.load=performance.now();B.chunks=window.__chunks||0;});
})();
"#;

fn build() -> Site {
    let mut rng = Rng(0x4a55_4f4f_524c_4553);
    // Sizes shaped like HA's frontend: a big app bundle, a core, many small chunks, a few
    // large ones, some CSS and images.
    let mut specs: Vec<(String, &'static str, usize)> = vec![
        ("/frontend/core.js".into(), "application/javascript", 48_000),
        ("/frontend/app.js".into(), "application/javascript", 260_000),
    ];
    for i in 0..58 {
        let size = match i % 10 {
            0 => 40_000,
            1 | 2 => 16_000,
            _ => 4_000 + (rng.next() % 8_000) as usize,
        };
        specs.push((
            format!("/frontend/chunk.{i:02}.js"),
            "application/javascript",
            size,
        ));
    }
    for i in 0..5 {
        specs.push((format!("/frontend/s{i}.css"), "text/css", 6_000));
    }
    for i in 0..4 {
        specs.push((format!("/frontend/icon{i}.png"), "image/png", 9_000));
    }
    let raw: usize = specs.iter().map(|s| s.2).sum();
    let scale = (TOTAL - 3_000) as f64 / raw as f64;
    let mut assets = Vec::new();
    let mut head = String::new();
    let mut body = String::new();
    for (path, ct, size) in specs {
        let size = (size as f64 * scale) as usize;
        let content = match ct {
            "application/javascript" if path.ends_with("core.js") => {
                format!(
                    "{CORE_JS}/*{}*/\n",
                    filler(&mut rng, size.saturating_sub(CORE_JS.len()))
                )
            }
            "application/javascript" => format!(
                "window.__chunks=(window.__chunks||0)+1;/*{}*/\n",
                filler(&mut rng, size)
            ),
            "text/css" => format!("/*{}*/body{{margin:0}}\n", filler(&mut rng, size)),
            _ => filler(&mut rng, size),
        };
        match ct {
            "text/css" => head.push_str(&format!("<link rel=\"stylesheet\" href=\"{path}\">\n")),
            "image/png" => body.push_str(&format!("<img src=\"{path}\" alt=\"\">\n")),
            _ if path.ends_with("core.js") => {}
            _ => head.push_str(&format!("<script defer src=\"{path}\"></script>\n")),
        }
        assets.push(Asset {
            path,
            content_type: ct,
            gz: gzip_stored(content.as_bytes()),
        });
    }
    let index = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>doorless bench: HA-like</title>\n\
         <script>window.__bench={{t:{{}}}};</script>\n<script src=\"/frontend/core.js\"></script>\n\
         {head}</head><body>\n{body}<!-- {} -->\n</body></html>\n",
        filler(&mut rng, 1500)
    );
    assets.push(Asset {
        path: "/".into(),
        content_type: "text/html; charset=utf-8",
        gz: gzip_stored(index.as_bytes()),
    });
    let states: Vec<Value> = (0..ENTITIES)
        .map(|i| {
            json!({
                "entity_id": format!("sensor.bench_{i}"),
                "state": format!("{}", i * 7 % 101),
                "attributes": {"friendly_name": format!("Bench sensor {i}"), "unit_of_measurement": "°C",
                               "device_class": "temperature", "state_class": "measurement"},
                "last_changed": "2026-01-01T00:00:00+00:00",
                "last_updated": "2026-01-01T00:00:00+00:00",
                "context": {"id": format!("01HBENCH{i:018}"), "parent_id": null, "user_id": null}
            })
        })
        .collect();
    Site {
        assets,
        states: Value::Array(states).to_string(),
    }
}

fn site() -> &'static Site {
    static SITE: OnceLock<Site> = OnceLock::new();
    SITE.get_or_init(build)
}

/// (requests, bytes on the wire) of one page load, for the report.
pub(crate) fn shape() -> (usize, usize) {
    let s = site();
    (s.assets.len(), s.assets.iter().map(|a| a.gz.len()).sum())
}

/// True when `path` is the stand-in's.
pub(crate) fn owns(path: &str) -> bool {
    path == "/" || path.starts_with("/frontend/") || path == "/api/websocket"
}

pub(crate) async fn handle(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/api/websocket" {
        return websocket(req);
    }
    let resp = match site().assets.iter().find(|a| a.path == path) {
        Some(a) => Response::builder()
            .header(header::CONTENT_TYPE, a.content_type)
            .header(header::CONTENT_ENCODING, "gzip")
            // As Home Assistant: its frontend files `public` for 31 days
            // (`CachingStaticResource`), the page itself not stored.
            .header(
                header::CACHE_CONTROL,
                if a.path == "/" {
                    "no-cache"
                } else {
                    "public, max-age=2678400"
                },
            )
            .body(full(a.gz.clone())),
        None => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full(Bytes::new())),
    };
    resp.unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

fn websocket(req: Request<Incoming>) -> Response<Body> {
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(full(Bytes::new()))
            .unwrap_or_else(|_| Response::new(full(Bytes::new())));
    };
    let events_ms: u64 = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("events_ms=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        .min(60_000);
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                None,
            )
            .await;
            let _ = ha_session(ws, events_ms).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        )
        .body(full(Bytes::new()))
        .unwrap_or_else(|_| Response::new(full(Bytes::new())))
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

async fn ha_session<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    events_ms: u64,
) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::text(
        json!({"type": "auth_required", "ha_version": "2025.11.0"}).to_string(),
    ))
    .await?;
    let mut authed = false;
    let mut sub_id: Option<u64> = None;
    let mut seq = 0u64;
    // A WebSocket lives at most 10 minutes here (every wait bounded).
    let end = tokio::time::Instant::now() + Duration::from_secs(600);
    let mut tick = tokio::time::interval(Duration::from_millis(events_ms.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.next() => {
                let Some(Ok(msg)) = msg else { return Ok(()) };
                let Message::Text(text) = msg else {
                    if msg.is_close() { return Ok(()); }
                    continue;
                };
                let Ok(m) = serde_json::from_str::<Value>(&text) else { continue };
                let id = m["id"].as_u64();
                match (m["type"].as_str().unwrap_or(""), authed) {
                    ("auth", false) => {
                        authed = true;
                        tx.send(Message::text(json!({"type": "auth_ok", "ha_version": "2025.11.0"}).to_string())).await?;
                    }
                    (_, false) => {
                        tx.send(Message::text(json!({"type": "auth_invalid", "message": "auth first"}).to_string())).await?;
                        return Ok(());
                    }
                    ("get_states", true) => {
                        let text = format!(r#"{{"id":{},"type":"result","success":true,"result":{}}}"#, id.unwrap_or(0), site().states);
                        tx.send(Message::text(text)).await?;
                    }
                    ("subscribe_events", true) => {
                        sub_id = id;
                        tx.send(Message::text(json!({"id": id, "type": "result", "success": true, "result": null}).to_string())).await?;
                    }
                    (_, true) => {
                        tx.send(Message::text(json!({"id": id, "type": "result", "success": true, "result": null}).to_string())).await?;
                    }
                }
            }
            _ = tick.tick(), if events_ms > 0 && sub_id.is_some() => {
                seq += 1;
                let ev = json!({"id": sub_id, "type": "event", "event": {
                    "event_type": "state_changed",
                    "data": {"entity_id": "sensor.bench_0", "new_state": {"entity_id": "sensor.bench_0",
                        "state": format!("{}", seq % 100), "attributes": {"unit_of_measurement": "°C"}}},
                    "origin": "LOCAL", "time_fired": "2026-01-01T00:00:00+00:00",
                    "seq": seq, "sent_ns": unix_ns().to_string()}});
                tx.send(Message::text(ev.to_string())).await?;
            }
            _ = tokio::time::sleep_until(end) => return Ok(()),
        }
    }
}
