//! The admin listener: `/healthz`, `/readyz`, `/status`, `/metrics`. Loopback by default.

use std::sync::Arc;

use daemon::json_response;
use http::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Shared;

/// Serves the admin endpoints until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    let routes: daemon::AdminRoutes = Arc::new(move |path| route(path, &shared));
    daemon::serve_admin(listener, routes, shutdown).await;
}

fn route(path: &str, shared: &Shared) -> daemon::AdminResponse {
    match path {
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
            shared.sites.load().export_expiry(&shared.metrics);
            daemon::metrics_response(shared.metrics.encode())
        }
        _ => daemon::not_found(),
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
                "connectors": shared.tunnels.status(&site.name),
            })
        })
        .collect();
    json!({ "version": env!("CARGO_PKG_VERSION"), "sites": sites })
}
