//! Step 6 of the request path: site → the tunnel that carries the request, and its stream slot.
//!
//! [`route`] picks among the site's usable tunnels (registered, not draining) the first with a
//! free stream slot, best first (most free slots), else waits up to
//! `limits.stream_open_timeout` on the best one. The [`Route`] it returns holds the slot for as
//! long as the request (or its WebSocket) lives, and is also how a request finds out that its
//! tunnel died under it ([`Route::until_unresponsive`]).
//!
//! What this module is not: the registry of tunnels (`tunnels`) or the tunnel listener
//! (`connectors`). It chooses; it does not keep.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, info};
use transport::{RecvHalf, SendHalf};

use crate::Shared;
use crate::error::ProxyError;
use crate::metrics::SiteReason;
use crate::tunnels::Tunnel;

/// How long a response head may take before we check that the connector is still there.
const PROBE_AFTER: Duration = Duration::from_millis(500);
/// While still waiting, re-check this often (long polls can legitimately take minutes).
const PROBE_EVERY: Duration = Duration::from_secs(5);

/// The tunnel chosen for one request, with the stream slot it holds there.
#[derive(Debug)]
pub(crate) struct Route {
    /// The chosen tunnel.
    pub(crate) tunnel: Arc<Tunnel>,
    /// One of its stream slots, held until the request's stream ends.
    _permit: OwnedSemaphorePermit,
}

/// Chooses a tunnel of `site` with a free stream slot.
pub(crate) async fn route(shared: &Shared, site: &str) -> Result<Route, ProxyError> {
    let candidates = shared.tunnels.candidates(site);
    if candidates.is_empty() {
        return Err(ProxyError::NoConnector);
    }
    let limit = shared.config.limits.stream_open_timeout;
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
        _permit: permit,
    })
}

impl Route {
    /// Opens the request's stream on the chosen tunnel.
    pub(crate) async fn open_stream(
        &self,
        shared: &Shared,
    ) -> Result<(SendHalf, RecvHalf), ProxyError> {
        let limit = shared.config.limits.stream_open_timeout;
        self.tunnel.conn.open(limit).await.map_err(|e| {
            debug!(error = %e, connector = %self.tunnel.connector_id, "opening tunnel stream failed");
            stream_failed(shared, &self.tunnel.site, "open_failed")
        })
    }

    /// Resolves only if the tunnel stops answering pings while a response is awaited.
    pub(crate) async fn until_unresponsive(&self) {
        tokio::time::sleep(PROBE_AFTER).await;
        loop {
            if !self.tunnel.alive().await {
                return;
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// The tunnel stopped answering: its connector's process is gone (crash, power cut) and
    /// cannot have answered. Closes it so no other request waits on it, and checks the rest of
    /// the site's tunnels the same way.
    pub(crate) fn abandon(&self, shared: &Shared) {
        self.tunnel
            .conn
            .close(proto::CloseCode::Timeout, "no answer to liveness probe");
        for other in shared.tunnels.candidates(&self.tunnel.site) {
            tokio::spawn(reap_if_dead(other));
        }
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

fn stream_failed(shared: &Shared, site: &str, reason: &'static str) -> ProxyError {
    shared
        .metrics
        .stream_failures
        .get_or_create(&SiteReason {
            site: site.to_owned(),
            reason,
        })
        .inc();
    ProxyError::TunnelUnavailable
}
