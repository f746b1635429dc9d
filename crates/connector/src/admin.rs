//! The admin listener: `/healthz`, `/readyz` (at least one registered edge connection),
//! `/status`, `/metrics`. Loopback by default.

use std::sync::Arc;

use daemon::json_response;
use http::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let routes: daemon::AdminRoutes = Arc::new(move |path| route(path, &shared));
    daemon::serve_admin(listener, routes, shutdown).await;
}

fn route(path: &str, shared: &Shared) -> daemon::AdminResponse {
    let sessions = shared.connected.now();
    match path {
        "/healthz" => json_response(StatusCode::OK, &json!({"status": "ok"})),
        "/metrics" => daemon::metrics_response(shared.metrics.encode()),
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
                "transport": shared.config.transport,
                "transports": shared.connected.by_transport(),
            }),
        ),
        _ => daemon::not_found(),
    }
}
