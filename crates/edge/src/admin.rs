//! The admin listener: `/healthz`, `/readyz`, `/status`, `/metrics`. Loopback by default.

use std::sync::Arc;

use daemon::json_response;
use http::StatusCode;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use time::format_description::well_known::Rfc3339;

use crate::Shared;
use crate::site::Site;

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
            shared
                .sites
                .load()
                .export_certificates(&shared.metrics, shared.acme.as_ref());
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
                "certificate": certificate(shared, site),
            })
        })
        .collect();
    let last_reload = shared.last_reload.get().map(|r| {
        json!({
            "result": if r.ok { "ok" } else { "error" },
            "at": rfc3339(r.at),
            "error": r.error,
        })
    });
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "sites": sites,
        "last_reload": last_reload,
    })
}

/// The site's served certificate and, for an ACME site, what its task is doing.
fn certificate(shared: &Shared, site: &Site) -> serde_json::Value {
    let served = site.certificate.current();
    let acme = shared
        .acme
        .as_ref()
        .and_then(|acme| acme.get(&site.name))
        .map(|acme| {
            let status = acme.status();
            json!({
                "state": acme_state(status.state),
                "renew_at": status.renew_at.map(rfc3339),
                "next_attempt": status.next_attempt.map(rfc3339),
                "last_attempt": status.last_attempt.map(rfc3339),
                "consecutive_failures": status.consecutive_failures,
                "last_error": status.last_error.as_ref().map(|e| json!({
                    "result": e.result.as_str(),
                    "message": e.message,
                    "at": rfc3339(e.at),
                })),
                "ari": status.ari,
            })
        });
    json!({
        "source": served.source.as_str(),
        "serial": served.serial,
        "not_after": time::OffsetDateTime::from_unix_timestamp(served.not_after)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok()),
        "acme": acme,
    })
}

fn acme_state(state: acme::SiteState) -> &'static str {
    match state {
        acme::SiteState::Loading => "loading",
        acme::SiteState::Valid => "valid",
        acme::SiteState::Ordering(_) => "ordering",
        acme::SiteState::Failing => "failing",
    }
}

fn rfc3339(at: std::time::SystemTime) -> Option<String> {
    time::OffsetDateTime::from(at).format(&Rfc3339).ok()
}
