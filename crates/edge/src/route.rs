//! Step 6 of the request path: site → the tunnel that carries the request, and its stream slot.
//!
//! [`route`] picks among the site's usable tunnels (registered, not draining) the least loaded
//! one with a free stream slot (fewest active streams across all connectors and connections,
//! ties broken at random), else waits up to `limits.stream_open_timeout` on the least loaded.
//! While the site has no usable tunnel at all (its only connector restarting, or every one
//! draining), it waits up to `limits.connector_wait` for one to register.
//! The [`Route`] it returns holds the slot; [`Route::open_stream`] hands it to the stream,
//! which keeps it until the stream is closed in both directions and acknowledged, so the
//! edge's count of a tunnel's streams is the transport's count.
//!
//! What this module is not: the registry of tunnels (`tunnels`), the tunnel listener and its
//! liveness watch (`connectors`), or the decision to retry (`proxy`). It chooses; it does not
//! keep.

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info};
use transport::{RecvHalf, SendHalf};

use crate::Shared;
use crate::error::ProxyError;
use crate::metrics::{SiteReason, SiteResult};
use crate::tunnels::Tunnel;

/// The tunnel chosen for one request, with the stream slot it holds there.
#[derive(Debug)]
pub(crate) struct Route {
    /// The chosen tunnel.
    pub(crate) tunnel: Arc<Tunnel>,
    /// One of its stream slots, until the stream takes it over.
    permit: Option<OwnedSemaphorePermit>,
}

/// Chooses a tunnel of `site` with a free stream slot; never one of `tried` (the tunnels a
/// request already failed on, when it is sent again), and another connector's before a tried
/// one's (a connector refuses on all its connections when it drains).
pub(crate) async fn route(
    shared: &Shared,
    site: &str,
    tried: &[Arc<Tunnel>],
) -> Result<Route, ProxyError> {
    let limits = &shared.config.limits;
    let deadline = tokio::time::Instant::now() + limits.connector_wait;
    let (mut candidates, waited) = shared.tunnels.candidates_by(site, tried, deadline).await;
    if waited {
        let result = if candidates.is_empty() {
            "timed_out"
        } else {
            "arrived"
        };
        shared
            .metrics
            .connector_waits
            .get_or_create(&SiteResult {
                site: site.to_owned(),
                result,
            })
            .inc();
    }
    // Stable: the load order stays within each group.
    candidates.sort_by_key(|t| tried.iter().any(|x| x.connector_id == t.connector_id));
    if candidates.is_empty() {
        return Err(ProxyError::NoConnector);
    }
    let limit = limits.stream_open_timeout;
    // First pass: any tunnel with a free slot right now; second: wait on the best one.
    let mut picked = candidates
        .iter()
        .find_map(|t| t.try_slot().map(|slot| (t.clone(), slot)));
    if picked.is_none()
        && let Some(best) = candidates.first()
    {
        picked = best.slot(limit).await.map(|slot| (best.clone(), slot));
    }
    let Some((tunnel, permit)) = picked else {
        return Err(stream_failed(shared, site, "no_slot"));
    };
    Ok(Route {
        tunnel,
        permit: Some(permit),
    })
}

impl Route {
    /// Opens the request's stream on the chosen tunnel; the stream takes over the slot.
    pub(crate) async fn open_stream(
        &mut self,
        shared: &Shared,
    ) -> Result<(SendHalf, RecvHalf), ProxyError> {
        let limit = shared.config.limits.stream_open_timeout;
        let permit = self.permit.take();
        self.tunnel.conn.open_holding(limit, permit).await.map_err(|e| {
            debug!(error = %e, connector = %self.tunnel.connector_id, "opening tunnel stream failed");
            stream_failed(shared, &self.tunnel.site, "open_failed")
        })
    }
}

/// Closes `tunnel` if its connector does not answer a ping: its process is gone.
pub(crate) async fn reap_if_dead(tunnel: Arc<Tunnel>) {
    if !tunnel.alive().await {
        info!(addr = %tunnel.addr, connector = %tunnel.connector_id, "connector connection unresponsive; closing it");
        tunnel
            .conn
            .close(proto::CloseCode::Timeout, "no answer to liveness probe");
    }
}

/// Every `result` of `doorless_edge_connector_waits_total`: a connector registered while the
/// request waited, or none did within `limits.connector_wait`.
pub(crate) const CONNECTOR_WAIT_RESULTS: [&str; 2] = ["arrived", "timed_out"];

/// Every `reason` of `doorless_edge_tunnel_stream_failures_total`: no free slot in time, the
/// stream could not be opened, the request was sent again on another tunnel (`retried`), a
/// body went idle past `limits.body_idle_timeout` (`body_idle`).
pub(crate) const STREAM_FAILURE_REASONS: [&str; 4] =
    ["no_slot", "open_failed", "retried", "body_idle"];

/// Counts a failure to get a stream for `site`.
pub(crate) fn stream_failed(shared: &Shared, site: &str, reason: &'static str) -> ProxyError {
    count_stream_failure(shared, site, reason);
    ProxyError::TunnelUnavailable
}

/// Counts a stream of `site` that ended for `reason` (`doorless_edge_stream_failures_total`).
pub(crate) fn count_stream_failure(shared: &Shared, site: &str, reason: &'static str) {
    shared
        .metrics
        .stream_failures
        .get_or_create(&SiteReason {
            site: site.to_owned(),
            reason,
        })
        .inc();
}
