//! Keeps tunnel connections to the edge up, forever.
//!
//! Each connection slot dials and registers ([`crate::register`], `Hello` → `Welcome`) and
//! serves streams until the connection ends, then waits a backoff and dials again. The backoff is exponential with full
//! jitter (a random wait in `[0, min(max, initial × 2ⁿ))`, so a fleet of connectors does not
//! reconnect in lockstep after an edge restart) and resets once a connection has stayed up
//! for `reconnect.stable`. Each slot keeps its UDP socket across reconnects, so the home
//! NAT sees a stable source port.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use proto::{CloseCode, ControlEvent, Hello, Purpose};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use transport::{ClientEndpoint, ControlDriver};

use crate::metrics::{ConnectionLabel, ResultLabel};
use crate::register::{self, Registered};
use crate::{Shared, forward};

/// Bounds each step of registering: the QUIC handshake, the control stream, the `Welcome`.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often QUIC path statistics are copied into the metrics.
const STATS_INTERVAL: Duration = Duration::from_secs(5);

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
        match session(index, &edge, &mut endpoint, &shared, &shutdown).await {
            Ok(()) => {}
            Err(e) => warn!(slot = index, %edge, error = %e, "tunnel connection failed"),
        }
        if shutdown.is_cancelled() {
            break;
        }
        if started.elapsed() >= reconnect.stable {
            backoff.reset();
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

async fn session(
    index: usize,
    edge: &str,
    endpoint: &mut Option<(bool, ClientEndpoint)>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
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
    let connected = shared.connected.enter();
    let streams = TaskTracker::new();
    let result = serve(&conn, &mut control, shared, shutdown, &streams, &slot).await;
    drop(connected);
    if shutdown.is_cancelled() {
        // Graceful: the edge already knows we drain; let in-flight requests finish.
        streams.close();
        let grace = shared.config.limits.shutdown_grace;
        let _ = tokio::time::timeout(grace, streams.wait()).await;
        control.state().go_away(proto::GoAway {
            code: CloseCode::Shutdown,
            text: "connector shutting down".into(),
        });
        let _ = control.flush(Duration::from_secs(1)).await;
        conn.close(CloseCode::Shutdown, "connector shutting down");
    } else {
        conn.close(CloseCode::Normal, "session ended");
    }
    result
}

async fn serve(
    conn: &transport::Connection,
    control: &mut ControlDriver,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    streams: &TaskTracker,
    slot: &ConnectionLabel,
) -> anyhow::Result<()> {
    let metrics = &shared.metrics;
    let mut sample = tokio::time::interval(STATS_INTERVAL);
    let mut lost_seen = 0u64;
    loop {
        tokio::select! {
            _ = sample.tick() => {
                let stats = conn.stats();
                metrics.rtt.get_or_create(slot).set(stats.rtt.as_secs_f64());
                metrics.congestion_window.get_or_create(slot).set(i64::try_from(stats.cwnd).unwrap_or(i64::MAX));
                metrics.lost_packets.get_or_create(slot).inc_by(stats.lost_packets.saturating_sub(lost_seen));
                lost_seen = lost_seen.max(stats.lost_packets);
            }
            stream = conn.accept() => {
                let (send, recv) = stream?;
                streams.spawn(forward::stream(send, recv, shared.clone()));
            }
            event = control.next_event() => match event? {
                ControlEvent::PeerDraining => {
                    // The edge is restarting: in-flight streams finish on this connection,
                    // and we dial again once it closes.
                    info!("edge is draining this connection");
                }
                ControlEvent::PeerGoingAway(go) => {
                    info!(reason = %go.text, "edge going away");
                    return Ok(());
                }
                _ => {}
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
