//! The tunnel listener: connectors register here, over QUIC or over TLS/TCP.
//!
//! A connector proves who it is with a certificate from the connector CA (checked in the QUIC
//! handshake, or in the HTTPS listener's handshake for ALPN `doorless-tcp/1`, which `accept`
//! hands over as a [`TcpTunnel`]); its identity names the site it serves. Everything after the
//! handshake is one function for both transports, [`session`]: identity and revocation, then
//! the control stream's `Hello`; we answer `Welcome` and register the connection as a
//! [`Tunnel`] until it goes away, drains, or we shut down. A `Hello` we cannot decode (a newer
//! version) gets `Reject(UnsupportedVersion)`, as `docs/protocol.md` says. A `Hello` with
//! [`Purpose::Check`] (the connector's self-check) gets the same checks and `Welcome`, but is
//! never registered: no request can be routed to a connection that is about to close.
//!
//! While registered, each tunnel's liveness is watched continuously ([`Liveness`]): a
//! connection silent past one ping interval plus a margin is closed, which fails every stream
//! on it at once. At shutdown each tunnel runs the edge's side of the drain protocol
//! (`Drain`, streams finish and are acknowledged, `GoAway`, close).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proto::{CloseCode, ControlEvent, ControlState, Purpose, Reject, RejectCode, Welcome};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use transport::congestion::Reductions;
use transport::{Connection, ControlDriver, Incoming, Liveness, ServerEndpoint, Transport};

use crate::metrics::{Metrics, SiteReason, SiteResult, SiteTransport};
use crate::tunnels::Tunnel;
use crate::{Shared, route};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a self-check connection may stay after its `Welcome` before we close it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How often each tunnel's liveness is sampled; the verdict itself takes seconds of silence.
const LIVENESS_CHECK: Duration = Duration::from_millis(250);

/// How often a connector connection's congestion controller is sampled for metrics.
const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// TLS/TCP tunnels handed over by `accept` and not yet taken: a burst of connectors at once.
pub(crate) const TCP_TUNNEL_QUEUE: usize = 64;

/// A TLS/TCP tunnel connection whose TLS handshake `accept` finished (connector CA verified).
#[derive(Debug)]
pub(crate) struct TcpTunnel {
    /// The TLS stream.
    pub(crate) stream: tokio_rustls::server::TlsStream<TcpStream>,
    /// The connector's address.
    pub(crate) addr: SocketAddr,
    /// Dropped when the tunnel ends, so `accept` holds its connection slots until then.
    pub(crate) done: tokio::sync::oneshot::Sender<()>,
}

/// Accepts connector connections until `shutdown`: QUIC from the endpoint, TLS/TCP from
/// `accept` through `tcp`.
pub(crate) async fn serve(
    endpoint: Arc<ServerEndpoint>,
    mut tcp: tokio::sync::mpsc::Receiver<TcpTunnel>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                tracker.spawn(quic_tunnel(incoming, shared.clone(), shutdown.clone()));
            }
            Some(pending) = tcp.recv() => {
                tracker.spawn(tcp_tunnel(pending, endpoint.clone(), shared.clone(), shutdown.clone()));
            }
        }
    }
}

async fn quic_tunnel(incoming: Incoming, shared: Arc<Shared>, shutdown: CancellationToken) {
    let addr = incoming.remote_addr();
    match incoming.accept(HANDSHAKE_TIMEOUT).await {
        Ok(conn) => session(conn, addr, shared, shutdown).await,
        Err(e) => {
            shared.metrics.tunnel_refused(Transport::Quic, "handshake");
            info!(%addr, error = %e, transport = "quic", "tunnel handshake refused");
        }
    }
}

async fn tcp_tunnel(
    pending: TcpTunnel,
    endpoint: Arc<ServerEndpoint>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let TcpTunnel { stream, addr, done } = pending;
    match endpoint.accept_tcp(stream, HANDSHAKE_TIMEOUT).await {
        Ok(conn) => session(conn, addr, shared, shutdown).await,
        Err(e) => {
            shared.metrics.tunnel_refused(Transport::Tcp, "handshake");
            info!(%addr, error = %e, transport = "tcp", "tunnel handshake refused");
        }
    }
    drop(done);
}

/// One tunnel connection after its TLS handshake, whatever carries it: identity, revocation,
/// `Hello` → `Welcome` or `Reject`, then registered until it ends.
async fn session(
    conn: Connection,
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let transport = conn.transport();
    let leaf = match conn.peer_certificate() {
        Ok(der) => der,
        Err(e) => {
            shared.metrics.tunnel_refused(transport, "identity");
            warn!(%addr, %transport, error = %e, "tunnel refused: no connector certificate");
            conn.close(CloseCode::Rejected, "no connector certificate");
            return;
        }
    };
    let fingerprint = pki::Fingerprint::of(&leaf);
    if shared.sites.load().revoked().connector(&fingerprint) {
        shared.metrics.tunnel_refused(transport, "revoked");
        warn!(%addr, %transport, "tunnel refused: connector certificate revoked");
        conn.close(CloseCode::Revoked, "connector certificate revoked");
        return;
    }
    let identity = match pki::Identity::from_cert_der(&leaf) {
        Ok(id) if id.kind == pki::Kind::Connector => id,
        Ok(_) => {
            shared.metrics.tunnel_refused(transport, "identity");
            warn!(%addr, %transport, "tunnel refused: certificate is not a connector certificate");
            conn.close(CloseCode::Rejected, "not a connector certificate");
            return;
        }
        Err(e) => {
            shared.metrics.tunnel_refused(transport, "identity");
            warn!(%addr, %transport, error = %e, "tunnel refused: no connector identity");
            conn.close(CloseCode::Rejected, "no connector identity");
            return;
        }
    };
    let (send, recv) = match tokio::time::timeout(HELLO_TIMEOUT, conn.accept_control()).await {
        Ok(Ok(stream)) => stream,
        _ => {
            info!(%addr, "tunnel closed before its control stream opened");
            conn.close(CloseCode::Timeout, "no control stream");
            return;
        }
    };
    let state = ControlState::edge(now(), shared.config.tuning.idle_timeout);
    let mut control = ControlDriver::new(send, recv, state);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, control.next_event()).await {
        Ok(Ok(ControlEvent::HelloReceived(hello))) => hello,
        Ok(Err(transport::Error::Decode(e))) => {
            // docs/protocol.md: a Hello we cannot decode (a newer version, a purpose we do
            // not know) is answered, so the connector can say why instead of retrying blind.
            warn!(%addr, site = %identity.site, connector = %identity.name, error = %e, "connector rejected: undecodable hello");
            shared
                .metrics
                .registrations
                .get_or_create(&SiteResult {
                    site: identity.site.clone(),
                    result: "rejected",
                })
                .inc();
            control.state().reject(Reject {
                code: RejectCode::UnsupportedVersion,
                text: format!("cannot decode hello: {e}"),
            });
            let _ = control.finish(Duration::from_secs(1)).await;
            conn.close(CloseCode::Rejected, "unsupported hello");
            return;
        }
        _ => {
            info!(%addr, "tunnel closed: no valid hello");
            conn.close(CloseCode::ProtocolError, "expected hello");
            return;
        }
    };
    let site_known = shared.sites.load().by_name(&identity.site).is_some();
    let refusal = if hello.connector_id != identity.name {
        Some((
            RejectCode::Unauthorized,
            "connector id does not match its certificate",
        ))
    } else if !site_known {
        Some((
            RejectCode::UnknownSite,
            "site is not configured on this edge",
        ))
    } else if shutdown.is_cancelled() {
        Some((RejectCode::Overloaded, "edge is shutting down"))
    } else {
        None
    };
    let site_label = Metrics::site(&identity.site);
    if let Some((code, text)) = refusal {
        shared
            .metrics
            .registrations
            .get_or_create(&SiteResult {
                site: identity.site.clone(),
                result: "rejected",
            })
            .inc();
        warn!(%addr, site = %identity.site, connector = %identity.name, reason = text, "connector rejected");
        control.state().reject(Reject {
            code,
            text: text.into(),
        });
        let _ = control.finish(Duration::from_secs(1)).await;
        conn.close(CloseCode::Rejected, text);
        return;
    }
    let max_streams = shared.config.limits.max_streams_per_connector;
    control.state().accept(
        Welcome {
            version: proto::VERSION,
            site: identity.site.clone(),
            connector_id: identity.name.clone(),
            ping_interval_ms: u32::try_from(shared.config.ping_interval.as_millis())
                .unwrap_or(u32::MAX),
            max_streams,
        },
        now(),
    );
    if hello.purpose == Purpose::Check {
        shared
            .metrics
            .registrations
            .get_or_create(&SiteResult {
                site: identity.site.clone(),
                result: "check",
            })
            .inc();
        info!(%addr, site = %identity.site, connector = %identity.name, software = %hello.software, "connector self-check answered");
        // Let the Welcome out and the connector say goodbye; it has no business here after.
        let _ = tokio::time::timeout(CHECK_TIMEOUT, async {
            while control.next_event().await.is_ok() {}
        })
        .await;
        conn.close(CloseCode::Normal, "self-check done");
        return;
    }
    let tunnel = Arc::new(Tunnel::new(
        shared.tunnels.next_id(),
        identity.site.clone(),
        identity.name.clone(),
        fingerprint,
        conn.clone(),
        max_streams as usize,
    ));
    shared.tunnels.insert(tunnel.clone());
    let metrics = &shared.metrics;
    metrics
        .registrations
        .get_or_create(&SiteResult {
            site: identity.site.clone(),
            result: "ok",
        })
        .inc();
    metrics.connectors.get_or_create(&site_label).inc();
    let transport_label = SiteTransport {
        site: identity.site.clone(),
        transport: transport.name(),
    };
    metrics
        .connector_transports
        .get_or_create(&transport_label)
        .inc();
    info!(%addr, %transport, site = %identity.site, connector = %identity.name, software = %hello.software, "connector registered");

    // A connector that registers again (say, restarted after a crash) may have left dead
    // connections behind that still look registered: check its other tunnels now rather
    // than let requests find out.
    for other in shared.tunnels.of_connector(&identity.site, &identity.name) {
        if other.id != tunnel.id {
            tokio::spawn(route::reap_if_dead(other));
        }
    }

    let grace = shared.config.limits.shutdown_grace;
    let ping_interval = shared.config.ping_interval;
    let mut liveness = Liveness::new(ping_interval, Instant::now());
    let mut check = tokio::time::interval(LIVENESS_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sample = tokio::time::interval(STATS_INTERVAL);
    let mut reductions_seen = Reductions::default();
    let ended = loop {
        tokio::select! {
            event = control.next_event() => {
                if event.is_ok() {
                    tunnel.heard();
                }
                match event {
                    Ok(ControlEvent::PeerDraining) => {
                        info!(%addr, connector = %identity.name, "connector draining");
                        tunnel.draining.store(true, Ordering::Relaxed);
                    }
                    Ok(ControlEvent::PeerGoingAway(go)) => {
                        // The connector sends GoAway once its streams are done and
                        // acknowledged; it closes the connection itself. Closing here first
                        // could only cut off what we have not read yet.
                        tunnel.draining.store(true, Ordering::Relaxed);
                        shared.tunnels.remove(&tunnel);
                        let _ = tokio::time::timeout(grace, conn.closed()).await;
                        break format!("connector going away: {}", go.text);
                    }
                    Ok(ControlEvent::Rtt(rtt)) => {
                        tunnel.rtt_us.store(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
                    }
                    Ok(other) => debug!(?other, "control event"),
                    Err(e) => break e.to_string(),
                }
            }
            _ = check.tick() => {
                if !liveness.observe(&conn.stats(), ping_interval, Instant::now()) {
                    // Dead (killed, power cut, cut off): fail every stream on it now rather
                    // than let each wait for the transport's idle timeout.
                    warn!(%addr, connector = %identity.name, silent_ms = liveness.silent_for(Instant::now()).as_millis() as u64, "connector connection silent; closing it");
                    conn.close(CloseCode::Timeout, "connector silent");
                    break "connector silent past the liveness limit".to_owned();
                }
            }
            _ = sample.tick() => {
                if let Some(current) = conn.reductions() {
                    for (reason, new) in current.since(&reductions_seen) {
                        let label = SiteReason { site: identity.site.clone(), reason };
                        metrics.congestion_reductions.get_or_create(&label).inc_by(new);
                    }
                    reductions_seen = current;
                }
            }
            () = tunnel.probe.notified() => {
                if let Err(e) = control.state().ping_now(now()) {
                    break e.to_string();
                }
            }
            () = shutdown.cancelled() => {
                break drain(&tunnel, &conn, &mut control, grace).await;
            }
        }
    };
    shared.tunnels.remove(&tunnel);
    metrics.connectors.get_or_create(&site_label).dec();
    metrics
        .connector_transports
        .get_or_create(&transport_label)
        .dec();
    metrics.disconnects.get_or_create(&site_label).inc();
    conn.close(CloseCode::Normal, "session ended");
    info!(%addr, %transport, site = %identity.site, connector = %identity.name, reason = %ended, "connector unregistered");
}

/// The edge's side of the drain protocol at shutdown: `Drain` (the connector stops expecting
/// new streams on this connection), wait until every stream is closed and acknowledged (at
/// most `grace`), then `GoAway` and wait until the connector acknowledged it, and close.
async fn drain(
    tunnel: &Tunnel,
    conn: &transport::Connection,
    control: &mut ControlDriver,
    grace: Duration,
) -> String {
    tunnel.draining.store(true, Ordering::Relaxed);
    control.state().drain();
    let _ = control.flush(Duration::from_secs(1)).await;
    let done = tokio::select! {
        () = tunnel.idle() => true,
        _ = conn.closed() => return "connection closed while draining".to_owned(),
        () = tokio::time::sleep(grace) => false,
    };
    control.state().go_away(proto::GoAway {
        code: CloseCode::Shutdown,
        text: "edge shutting down".into(),
    });
    let _ = control.finish(Duration::from_secs(1)).await;
    conn.close(CloseCode::Shutdown, "edge shutting down");
    if done {
        "edge shut down; every stream finished".to_owned()
    } else {
        "edge shut down; grace period over with streams in flight".to_owned()
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}
