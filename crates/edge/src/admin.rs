//! The admin listener: `/healthz`, `/readyz`, `/status`, `/metrics`. Loopback by default.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Shared;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(&req, &shared)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn route(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/readyz" => {
            let sites = shared.sites.load();
            json_response(
                StatusCode::OK,
                &json!({"status": "ready", "sites": sites.all().len()}),
            )
        }
        "/status" => json_response(StatusCode::OK, &status(shared)),
        "/metrics" => {
            crate::reload::export_expiry(shared);
            let mut response = Response::new(Full::new(Bytes::from(shared.metrics.encode())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(OPENMETRICS),
            );
            response
        }
        _ => json_response(StatusCode::NOT_FOUND, &json!({"error": "not found"})),
    }
}

fn status(shared: &Shared) -> serde_json::Value {
    let sites = shared.sites.load();
    let sites: Vec<_> = sites
        .all()
        .iter()
        .map(|site| {
            json!({
                "name": site.name,
                "hostnames": site.hostnames,
                "connectors": shared.registry.status(&site.name),
            })
        })
        .collect();
    json!({ "version": env!("CARGO_PKG_VERSION"), "sites": sites })
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
