//! The backend every target forwards to: a separate process
//! (`doorless-bench backend READY_FILE`) serving `/s`, `/bytes/N`, `/upload` and a WebSocket
//! echo on `/ws`; and the Home Assistant stand-in (`hafront`: `/`, `/frontend/*`,
//! `/api/websocket`). `doorless-bench backend READY_FILE [BIND]` (default 127.0.0.1:0).

use std::convert::Infallible;
use std::path::PathBuf;

use anyhow::Result;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::{GIB, SMALL, ZEROS};

type Body = BoxBody<Bytes, Infallible>;

pub(crate) fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).boxed()
}

pub(crate) async fn backend_main(ready: PathBuf, bind: Option<String>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(bind.as_deref().unwrap_or("127.0.0.1:0")).await?;
    let addr = listener.local_addr()?;
    std::fs::write(&ready, json!({ "addr": addr.to_string() }).to_string())?;
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(backend_handle);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn backend_handle(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if crate::hafront::owns(&path) {
        return Ok(crate::hafront::handle(req).await);
    }
    let resp = if path == "/s" {
        Response::builder()
            .header(header::CONTENT_TYPE, "text/plain")
            .body(full(Bytes::from_static(SMALL)))
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0).min(16 * GIB);
        let chunks = futures_util::stream::unfold(n, |left| async move {
            if left == 0 {
                return None;
            }
            let take = left.min(ZEROS.len() as u64) as usize;
            Some((
                Ok::<_, Infallible>(Frame::data(Bytes::from_static(&ZEROS[..take]))),
                left - take as u64,
            ))
        });
        Response::builder()
            .header(header::CONTENT_LENGTH, n)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(http_body_util::BodyExt::boxed(StreamBody::new(chunks)))
    } else if path == "/upload" {
        let mut body = req.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(_) => break,
            }
        }
        Response::builder().body(full(total.to_string()))
    } else if path == "/ws" {
        let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
        match key {
            Some(key) => {
                let accept = derive_accept_key(key.as_bytes());
                tokio::spawn(async move {
                    if let Ok(upgraded) = hyper::upgrade::on(req).await {
                        let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                            TokioIo::new(upgraded),
                            Role::Server,
                            None,
                        )
                        .await;
                        let (mut tx, mut rx) = ws.split();
                        while let Some(Ok(msg)) = rx.next().await {
                            if msg.is_text() || msg.is_binary() {
                                if tx.send(msg).await.is_err() {
                                    break;
                                }
                            } else if msg.is_close() {
                                break;
                            }
                        }
                    }
                });
                Response::builder()
                    .status(StatusCode::SWITCHING_PROTOCOLS)
                    .header(header::CONNECTION, "upgrade")
                    .header(header::UPGRADE, "websocket")
                    .header(header::SEC_WEBSOCKET_ACCEPT, accept)
                    .body(full(Bytes::new()))
            }
            None => Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(full(Bytes::new())),
        }
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(full(Bytes::new()))
    };
    Ok(resp.unwrap_or_else(|_| Response::new(full(Bytes::new()))))
}
