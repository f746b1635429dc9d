//! Step 1 of the request path: the public TCP accept loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::body::ActiveGuard;
use crate::limit::AddressSlot;
use crate::metrics::{HandshakeLabels, ReasonLabel};
use crate::revocation::LiveClients;
use crate::{Shared, connectors, enroll, serve, tls};

/// Accepts connections until `shutdown`; each runs in its own task, at most
/// `limits.max_connections` at once (more are closed at once).
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(shared.config.limits.max_connections));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, addr)) => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    // Over the connection limit: closing is the cheapest answer.
                    drop(tcp);
                    shared
                        .metrics
                        .connections_rejected
                        .get_or_create(&ReasonLabel {
                            reason: "max_connections",
                        })
                        .inc();
                    continue;
                };
                tracker.spawn(connection(
                    tcp,
                    addr,
                    shared.clone(),
                    shutdown.clone(),
                    permit,
                ));
            }
            Err(e) => {
                // Usually out of file descriptors; back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// What an authenticated client connection holds while it is open: its place under
/// `limits.max_connections`, its address's slot under `limits.max_connections_per_ip`, and
/// its count in `client_connections`. Shared (`Arc`) by the HTTP connection and any WebSocket
/// spliced from it, so a connection upgraded to a WebSocket (whose socket hyper hands over, and
/// whose HTTP task then ends) keeps all three until the WebSocket closes.
#[derive(Debug)]
pub(crate) struct ConnectionHold {
    _permit: OwnedSemaphorePermit,
    _address_slot: AddressSlot,
    _counted: ActiveGuard,
}

async fn connection(
    tcp: TcpStream,
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    permit: OwnedSemaphorePermit,
) {
    let ip = addr.ip().to_canonical();
    let metrics = &shared.metrics;
    let reject = |reason: &'static str| {
        metrics
            .connections_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
        log_denial(&shared, ip, "", reason);
    };
    // Cheapest checks first, before any TLS work.
    let Some(address_slot) = shared.per_address.acquire(ip) else {
        return reject("per_ip_limit");
    };
    if !shared.budget.take(ip, now()) {
        return reject("handshake_rate");
    }
    let Ok(handshake_slot) = shared.handshakes.try_acquire() else {
        return reject("handshake_overload");
    };
    let _ = tcp.set_nodelay(true);
    let sites = shared.sites.load_full();
    let handshake = tls::handshake(
        tcp,
        addr,
        &sites,
        &shared.challenges,
        &shared.tunnel_tls,
        shared.config.limits.handshake_timeout,
    )
    .await;
    drop(handshake_slot);
    match handshake {
        Ok(tls::Accepted::Enroll(stream)) => {
            // No certificate, no site, no tunnel: only the enrollment exchange.
            enroll::serve(stream, addr, shared.clone()).await;
        }
        Ok(tls::Accepted::AcmeChallenge { site }) => {
            // A CA validating one of our orders: its validators (several addresses) must never
            // run out of budget, so a completed validation costs nothing, as an authenticated
            // handshake does. One that found no pending order stays spent.
            shared.budget.refund(ip);
            metrics
                .handshakes
                .get_or_create(&HandshakeLabels {
                    site: site.unwrap_or_default(),
                    result: "ok",
                    reason: "acme_challenge",
                })
                .inc();
        }
        Ok(tls::Accepted::Tunnel(stream)) => {
            // A certificate from the connector CA: this handshake costs the address nothing.
            shared.budget.refund(ip);
            // The tunnel lives in `connectors` (drained with the tunnel, not with HTTP); this
            // task keeps its connection slots until the tunnel ends or we shut down.
            let (done, ended) = tokio::sync::oneshot::channel();
            let handed = shared
                .tcp_tunnels
                .try_send(connectors::TcpTunnel { stream, addr, done });
            if handed.is_err() {
                metrics.tunnel_refused(transport::Transport::Tcp, "handshake");
                log_denial(&shared, ip, "", "tunnel_overload");
                return;
            }
            tokio::select! {
                _ = ended => {}
                () = shutdown.cancelled() => {}
            }
        }
        Err(failure) if failure.tunnel => {
            metrics.tunnel_refused(transport::Transport::Tcp, "handshake");
            if let Some(suppressed) = shared.denial_log.admit(now()) {
                info!(%addr, reason = failure.denial.reason(), transport = "tcp", suppressed, "tunnel handshake refused");
            }
        }
        Ok(tls::Accepted::Client(stream, peer)) => {
            // Between the handshake and this registration a revocation could slip by; check
            // the current state once more now that the connection is findable.
            let _registration = peer
                .certificate
                .as_ref()
                .map(|cert| LiveClients::register(&shared, cert.fingerprint, peer.revoked.clone()));
            if let Some(cert) = &peer.certificate
                && shared.sites.load().revoked().device(&cert.fingerprint)
            {
                count_handshake(metrics, &peer.site.name, tls::HandshakeDenial::Revoked);
                log_denial(&shared, ip, &peer.site.name, "revoked");
                return;
            }
            if peer.certificate.is_some() {
                // Authenticated: this handshake costs the address nothing.
                shared.budget.refund(ip);
            }
            metrics
                .handshakes
                .get_or_create(&HandshakeLabels {
                    site: peer.site.name.clone(),
                    result: "ok",
                    reason: if peer.certificate.is_some() {
                        "ok"
                    } else {
                        "no_cert_allowed"
                    },
                })
                .inc();
            metrics.client_connections.inc();
            let hold = Arc::new(ConnectionHold {
                _permit: permit,
                _address_slot: address_slot,
                _counted: ActiveGuard(metrics.client_connections.clone()),
            });
            serve::connection(stream, peer, hold, shared.clone(), shutdown).await;
        }
        Err(failure) => {
            let site = failure.site.unwrap_or_default();
            count_handshake(metrics, &site, failure.denial);
            if failure.denial == tls::HandshakeDenial::ClientAborted {
                // Chromium's certificate-choice reconnect: no denial, no denial log line. Its
                // token stays spent: refunding would let anyone run full handshakes (a
                // server signature each) for free by hanging up at the same point, and a
                // browser does this once per site, far inside the burst.
                tracing::debug!(client = %ip, site, "client aborted the handshake after the certificate request");
            } else {
                log_denial(&shared, ip, &site, failure.denial.reason());
            }
        }
    }
}

/// One info line per denial, at most 20 per 10 s; the rest are counted in the next line.
fn log_denial(shared: &Shared, ip: std::net::IpAddr, site: &str, reason: &str) {
    if let Some(suppressed) = shared.denial_log.admit(now()) {
        info!(client = %ip, site, reason, suppressed, "connection denied");
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

fn count_handshake(metrics: &crate::metrics::Metrics, site: &str, denial: tls::HandshakeDenial) {
    metrics
        .handshakes
        .get_or_create(&HandshakeLabels {
            site: site.to_owned(),
            result: denial.result(),
            reason: denial.reason(),
        })
        .inc();
}
