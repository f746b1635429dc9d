//! The admin listener: `/healthz`, `/readyz` (at least one registered edge connection),
//! `/status`. Loopback by default.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(req.uri().path(), &shared)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn route(path: &str, shared: &Shared) -> Response<Full<Bytes>> {
    let sessions = shared.sessions.load(Ordering::Relaxed);
    match path {
        "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/metrics" => {
            let mut response = Response::new(Full::new(Bytes::from(shared.metrics.encode())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            response
        }
        "/readyz" if sessions > 0 => json_response(
            StatusCode::OK,
            &json!({"status": "ready", "edge_connections": sessions}),
        ),
        "/readyz" => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not ready", "edge_connections": 0}),
        ),
        "/status" => json_response(
            StatusCode::OK,
            &json!({
                "version": env!("CARGO_PKG_VERSION"),
                "site": shared.config.token.site,
                "connector": shared.config.token.connector_id,
                "edges": shared.config.edges,
                "upstream": shared.config.upstream.to_string(),
                "edge_connections": sessions,
            }),
        ),
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
