//! Keeps tunnel connections to the edge up, forever.
//!
//! Each connection slot dials and registers ([`crate::register`], `Hello` → `Welcome`) and
//! serves streams until the connection ends, then waits a backoff and dials again. The backoff is exponential with full
//! jitter (a random wait in `[0, min(max, initial × 2ⁿ))`, so a fleet of connectors does not
//! reconnect in lockstep after an edge restart) and resets once a connection has stayed up
//! for `reconnect.stable`. Each slot keeps its UDP socket across reconnects, so the home
//! NAT sees a stable source port. A connection that worked and was then lost (the edge went
//! silent past the liveness limit, or closed it) is redialled at once.
//!
//! At shutdown each slot runs the connector's side of the drain protocol ([`drain`]):
//! `Drain`, refuse new streams `not_processed`, let in-flight streams finish and be
//! acknowledged, `GoAway`, close.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use proto::{CloseCode, ControlEvent, Hello, Purpose, StreamError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use transport::{ClientEndpoint, ControlDriver, Liveness};

use crate::metrics::{ConnectionLabel, ResultLabel};
use crate::register::{self, Registered};
use crate::{Shared, forward};

/// Bounds each step of registering: the QUIC handshake, the control stream, the `Welcome`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often QUIC path statistics are copied into the metrics.
const STATS_INTERVAL: Duration = Duration::from_secs(5);
/// How often the connection's liveness is sampled (`transport::Liveness`).
const LIVENESS_CHECK: Duration = Duration::from_millis(250);

/// Exponential backoff with full jitter.
#[derive(Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The next wait, given a uniform random `unit` in [0, 1).
    pub fn next(&mut self, unit: f64) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(self.attempt))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1).min(31);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// Back to the first step.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// One connection slot towards `edge`; returns at shutdown.
pub async fn slot(index: usize, edge: String, shared: Arc<Shared>, shutdown: CancellationToken) {
    shared.metrics.init_slot(&ConnectionLabel {
        connection: index.to_string(),
    });
    let reconnect = &shared.config.reconnect;
    let mut backoff = Backoff::new(reconnect.initial, reconnect.max);
    let mut endpoint: Option<(bool, ClientEndpoint)> = None;
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let ended = match session(index, &edge, &mut endpoint, &shared, &shutdown).await {
            Ok(ended) => ended,
            Err(e) => {
                warn!(slot = index, %edge, error = %e, "tunnel connection failed");
                Ended::Failed
            }
        };
        if shutdown.is_cancelled() {
            break;
        }
        if started.elapsed() >= reconnect.stable {
            backoff.reset();
        }
        if ended == Ended::Lost && started.elapsed() >= reconnect.stable {
            // A connection that worked for a while and then vanished (a NAT rebinding the
            // edge gave up on, a dead path) is replaced at once: waiting would only leave
            // this slot's share of the capacity missing. Failing again backs off as usual.
            info!(slot = index, %edge, "connection lost; redialling at once");
            continue;
        }
        let wait = backoff.next(random_unit());
        info!(slot = index, %edge, wait_ms = wait.as_millis() as u64, "reconnecting");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => break,
        }
    }
    if let Some((_, ep)) = endpoint {
        ep.wait_idle(Duration::from_secs(1)).await;
    }
}

/// How a registered connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Registering or serving failed.
    Failed,
    /// The edge went away or told us to (GoAway, a graceful close), or we shut down.
    Closed,
    /// The connection vanished: the edge went silent past the liveness limit, or closed it
    /// because it thought us silent (a NAT rebinding it could not follow).
    Lost,
}

async fn session(
    index: usize,
    edge: &str,
    endpoint: &mut Option<(bool, ClientEndpoint)>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ended> {
    let addr = register::resolve(edge, RESOLVE_TIMEOUT)
        .await
        .with_context(|| format!("resolving {edge}"))?;
    let ep = match endpoint {
        Some((v4, ep)) if *v4 == addr.is_ipv4() => ep,
        _ => {
            let tls = register::client_tls(&shared.config.token)?;
            let ep = ClientEndpoint::new(addr, tls, &shared.config.tuning)?;
            &mut endpoint.insert((addr.is_ipv4(), ep)).1
        }
    };
    let slot = ConnectionLabel {
        connection: index.to_string(),
    };
    let metrics = &shared.metrics;
    let hello = Hello {
        version: proto::VERSION,
        connector_id: shared.config.token.connector_id.clone(),
        software: concat!("doorless-connector/", env!("CARGO_PKG_VERSION")).to_owned(),
        purpose: Purpose::Serve,
    };
    let idle = shared.config.tuning.idle_timeout;
    let registered = register::register(ep, addr, hello, idle, REGISTER_TIMEOUT).await;
    metrics
        .connection_attempts
        .get_or_create(&ResultLabel {
            result: if registered.is_ok() { "ok" } else { "error" },
        })
        .inc();
    let Registered {
        conn,
        mut control,
        welcome,
    } = registered?;
    info!(%edge, %addr, site = %welcome.site, connector = %welcome.connector_id, "registered with edge");
    // Offer the edge as much stream credit as it says it will use (within our own limit),
    // plus the share QUIC holds back before it announces returned credit (1/8): the edge's
    // count of open streams and the transport's then describe the same streams.
    let wanted = welcome
        .max_streams
        .saturating_add(welcome.max_streams / 8)
        .saturating_add(1);
    conn.set_max_incoming_streams(wanted.min(shared.config.limits.max_streams));
    let connected = shared.connected.enter();
    let streams = TaskTracker::new();
    let ping_interval = Duration::from_millis(u64::from(welcome.ping_interval_ms));
    let result = serve(
        &conn,
        &mut control,
        shared,
        shutdown,
        &streams,
        &slot,
        ping_interval,
    )
    .await;
    drop(connected);
    if shutdown.is_cancelled() {
        drain(&conn, &mut control, &streams, shared).await;
        return Ok(Ended::Closed);
    }
    conn.close(CloseCode::Normal, "session ended");
    match result {
        Ok(()) => Ok(Ended::Closed),
        Err(Lost(why)) => {
            warn!(slot = index, %edge, reason = %why, "tunnel connection lost");
            Ok(Ended::Lost)
        }
    }
}

/// The connector's side of the drain protocol (SIGTERM). `serve` already sent `Drain` (the
/// edge routes new requests elsewhere). Streams the edge opened before it saw `Drain` are
/// refused `not_processed` (the edge sends them again elsewhere); every stream in flight
/// finishes and is acknowledged by the edge, within `limits.shutdown_grace`; then `GoAway`,
/// acknowledged too, and the close. Closing any earlier would throw away response bytes the
/// edge has not received yet.
async fn drain(
    conn: &transport::Connection,
    control: &mut ControlDriver,
    streams: &TaskTracker,
    shared: &Shared,
) {
    streams.close();
    let grace = shared.config.limits.shutdown_grace;
    let finished = async {
        loop {
            tokio::select! {
                () = streams.wait() => return,
                stream = conn.accept() => match stream {
                    Ok((mut send, mut recv)) => {
                        send.reset(StreamError::NotProcessed);
                        recv.stop(StreamError::NotProcessed);
                    }
                    Err(_) => return,
                },
                // Keep answering pings: a silent connector looks dead to the edge.
                event = control.next_event() => if event.is_err() { return },
            }
        }
    };
    if tokio::time::timeout(grace, finished).await.is_err() {
        warn!("shutdown grace period over with streams in flight");
    }
    control.state().go_away(proto::GoAway {
        code: CloseCode::Shutdown,
        text: "connector shutting down".into(),
    });
    let _ = control.finish(Duration::from_secs(2)).await;
    conn.close(CloseCode::Shutdown, "connector shutting down");
}

/// Why `serve` gave up on a connection that did not end gracefully.
#[derive(Debug)]
struct Lost(String);

async fn serve(
    conn: &transport::Connection,
    control: &mut ControlDriver,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    streams: &TaskTracker,
    slot: &ConnectionLabel,
    ping_interval: Duration,
) -> Result<(), Lost> {
    let metrics = &shared.metrics;
    let mut sample = tokio::time::interval(STATS_INTERVAL);
    let mut lost_seen = 0u64;
    let mut liveness = Liveness::new(ping_interval, Instant::now());
    let mut check = tokio::time::interval(LIVENESS_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = sample.tick() => {
                let stats = conn.stats();
                metrics.rtt.get_or_create(slot).set(stats.rtt.as_secs_f64());
                metrics.congestion_window.get_or_create(slot).set(i64::try_from(stats.cwnd).unwrap_or(i64::MAX));
                metrics.lost_packets.get_or_create(slot).inc_by(stats.lost_packets.saturating_sub(lost_seen));
                lost_seen = lost_seen.max(stats.lost_packets);
            }
            _ = check.tick(), if !ping_interval.is_zero() => {
                if !liveness.observe(&conn.stats(), ping_interval, Instant::now()) {
                    conn.close(CloseCode::Timeout, "edge silent");
                    return Err(Lost(format!("edge silent for {:?}", liveness.limit())));
                }
            }
            stream = conn.accept() => {
                let (send, recv) = stream.map_err(|e| Lost(e.to_string()))?;
                streams.spawn(forward::stream(send, recv, shared.clone()));
            }
            event = control.next_event() => match event {
                Ok(ControlEvent::PeerDraining) => {
                    // The edge is restarting: in-flight streams finish on this connection,
                    // and we dial again once it closes.
                    info!("edge is draining this connection");
                }
                Ok(ControlEvent::PeerGoingAway(go)) => {
                    info!(reason = %go.text, "edge going away");
                    // Everything we sent was acknowledged (the edge's GoAway comes after
                    // its streams are done); let it close, briefly.
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => return Err(Lost(e.to_string())),
            },
            () = shutdown.cancelled() => {
                control.state().drain();
                let _ = control.flush(Duration::from_secs(1)).await;
                return Ok(());
            }
        }
    }
}

fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    // 53 random bits → a uniform float in [0, 1).
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let ceilings: Vec<_> = (0..8).map(|_| b.next(1.0)).collect();
        assert_eq!(ceilings[0], Duration::from_millis(100));
        assert_eq!(ceilings[1], Duration::from_millis(200));
        assert_eq!(ceilings[4], Duration::from_millis(1600));
        assert_eq!(ceilings[7], Duration::from_secs(2));
        assert_eq!(b.next(0.0), Duration::ZERO);
        b.reset();
        assert_eq!(b.next(0.5), Duration::from_millis(50));
    }

    #[test]
    fn random_unit_in_range() {
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
