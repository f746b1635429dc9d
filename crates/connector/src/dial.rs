//! Keeps tunnel connections to the edge up, forever, over the transport `transport` says.
//!
//! `auto` dials QUIC with a short handshake limit; when that gets no answer (or UDP cannot be
//! sent at all) the slot dials TLS over TCP to the edge's HTTPS port instead, and while it
//! serves there retries QUIC in the background with backoff. A QUIC connection that registers
//! serves alongside; once it has stayed up for `reconnect.stable` the TLS/TCP connection is
//! drained (`Drain`, a ping whose answer proves the edge routes nothing new there, in-flight
//! streams finish, `GoAway`) and closed: no request is lost in the move.
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

use proto::{CloseCode, ControlEvent, Hello, Purpose, StreamError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use transport::congestion::Reductions;
use transport::{ClientEndpoint, ControlDriver, Liveness, TcpClient};

use crate::config::TransportPolicy;
use crate::metrics::{ConnectionLabel, ReductionLabel, ResultLabel};
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

/// Where one slot dials: the edge's QUIC address and its HTTPS address for TLS/TCP.
#[derive(Debug, Clone)]
pub struct Target {
    /// HOST:PORT of the edge's QUIC tunnel listener.
    pub quic: String,
    /// HOST:PORT of the edge's HTTPS listener (the TLS/TCP tunnel).
    pub tcp: String,
}

/// In `auto`, how long a QUIC handshake may take before the slot falls back to TLS/TCP. A
/// handshake on a working path takes a few round trips (well under a second even over
/// satellite); a blocked one gets no answer at all, so waiting longer only delays the fallback.
const AUTO_QUIC_HANDSHAKE: Duration = Duration::from_secs(3);
/// Leaving a connection (TLS/TCP → QUIC): after the edge answered the ping we sent behind our
/// `Drain` it routes nothing new here, but a stream it opened just before may still arrive;
/// keep accepting this long after its answer.
const DRAIN_WINDOW: Duration = Duration::from_secs(1);
/// ... and at most this long if the answer never comes.
const DRAIN_ANSWER: Duration = Duration::from_secs(3);
/// Least wait between two background QUIC attempts while on TLS/TCP.
const QUIC_RETRY_MIN: Duration = Duration::from_secs(1);

/// Why dialing a slot failed.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("resolving {0}: {1}")]
    Resolve(String, register::ResolveError),
    #[error("{0}")]
    Setup(transport::Error),
    #[error("{0}")]
    Register(#[from] register::RegisterError),
    #[error("the token's certificates: {0}")]
    Token(#[from] pki::Error),
}

impl DialError {
    /// Whether this QUIC failure says "UDP does not get through" (no answer at all, or the
    /// host refused to send), which is what TLS/TCP can work around.
    fn udp_blocked(&self) -> bool {
        let error = match self {
            Self::Setup(e) | Self::Register(register::RegisterError::Transport(e)) => e,
            _ => return false,
        };
        udp_blocked(error)
    }
}

/// A QUIC failure that TLS over TCP can work around: the handshake got no answer, or sending
/// UDP failed locally (`sendto: operation not permitted` from a firewall, no route).
pub(crate) fn udp_blocked(error: &transport::Error) -> bool {
    use std::io::ErrorKind as K;
    match error {
        transport::Error::TimedOut(transport::Wait::Handshake) => true,
        transport::Error::Io(e) => matches!(
            e.kind(),
            K::PermissionDenied | K::NetworkUnreachable | K::HostUnreachable | K::AddrNotAvailable
        ),
        _ => false,
    }
}

/// The dialers of one slot: its QUIC endpoint (one UDP socket, kept across reconnects so the
/// home NAT sees a stable source port) and its TLS/TCP client, made when first needed.
struct Dialer {
    target: Target,
    shared: Arc<Shared>,
    quic: Option<(bool, ClientEndpoint)>,
    tcp: Option<TcpClient>,
}

impl Dialer {
    fn hello(&self) -> Hello {
        Hello {
            version: proto::VERSION,
            connector_id: self.shared.config.token.connector_id.clone(),
            software: concat!("doorless-connector/", env!("CARGO_PKG_VERSION")).to_owned(),
            purpose: Purpose::Serve,
        }
    }

    /// Dials and registers over QUIC, the handshake bounded by `handshake`.
    async fn quic(&mut self, handshake: Duration) -> Result<Registered, DialError> {
        let addr = register::resolve(&self.target.quic, RESOLVE_TIMEOUT)
            .await
            .map_err(|e| DialError::Resolve(self.target.quic.clone(), e))?;
        let idle = self.shared.config.tuning.idle_timeout;
        let hello = self.hello();
        let ep = match &mut self.quic {
            Some((v4, ep)) if *v4 == addr.is_ipv4() => ep,
            slot => {
                let tls = register::client_tls(&self.shared.config.token)?;
                let ep = ClientEndpoint::new(addr, tls, &self.shared.config.tuning)
                    .map_err(DialError::Setup)?;
                &mut slot.insert((addr.is_ipv4(), ep)).1
            }
        };
        let result =
            register::register(ep.connect(addr, handshake), hello, idle, REGISTER_TIMEOUT).await;
        self.count(result.is_ok());
        Ok(result?)
    }

    /// Dials and registers over TLS/TCP.
    async fn tcp(&mut self) -> Result<Registered, DialError> {
        let addr = register::resolve(&self.target.tcp, RESOLVE_TIMEOUT)
            .await
            .map_err(|e| DialError::Resolve(self.target.tcp.clone(), e))?;
        let idle = self.shared.config.tuning.idle_timeout;
        let hello = self.hello();
        let client = match &mut self.tcp {
            Some(client) => client,
            slot => {
                let tls = register::client_tls(&self.shared.config.token)?;
                let client =
                    TcpClient::new(&tls, &self.shared.config.tuning).map_err(DialError::Setup)?;
                slot.insert(client)
            }
        };
        let result = register::register(
            client.connect(addr, REGISTER_TIMEOUT),
            hello,
            idle,
            REGISTER_TIMEOUT,
        )
        .await;
        self.count(result.is_ok());
        Ok(result?)
    }

    fn count(&self, ok: bool) {
        self.shared
            .metrics
            .connection_attempts
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }
}

/// One connection slot towards `target`; returns at shutdown.
pub async fn slot(index: usize, target: Target, shared: Arc<Shared>, shutdown: CancellationToken) {
    shared.metrics.init_slot(&ConnectionLabel {
        connection: index.to_string(),
    });
    let reconnect = &shared.config.reconnect;
    let mut backoff = Backoff::new(reconnect.initial, reconnect.max);
    let mut dialer = Dialer {
        target: target.clone(),
        shared: shared.clone(),
        quic: None,
        tcp: None,
    };
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let ended = match connect_and_serve(index, &mut dialer, &shared, &shutdown).await {
            Ok(ended) => ended,
            Err(e) => {
                warn!(slot = index, edge = %target.quic, error = %e, "tunnel connection failed");
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
            info!(slot = index, edge = %target.quic, "connection lost; redialling at once");
            continue;
        }
        let wait = backoff.next(random_unit());
        info!(slot = index, edge = %target.quic, wait_ms = wait.as_millis() as u64, "reconnecting");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => break,
        }
    }
    if let Some((_, ep)) = dialer.quic {
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
    /// We left (`leave`: back to QUIC from TLS/TCP), after `Drain` and the drain window.
    Left,
    /// The connection vanished: the edge went silent past the liveness limit, or closed it
    /// because it thought us silent (a NAT rebinding it could not follow).
    Lost,
}

/// One round of the slot's policy: dial (QUIC, TLS/TCP, or QUIC falling back to TLS/TCP) and
/// serve until the connection ends.
async fn connect_and_serve(
    index: usize,
    dialer: &mut Dialer,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ended> {
    let stay = CancellationToken::new();
    let registered = match shared.config.transport {
        TransportPolicy::Quic => dialer.quic(REGISTER_TIMEOUT).await?,
        TransportPolicy::Tcp => dialer.tcp().await?,
        TransportPolicy::Auto => match dialer.quic(AUTO_QUIC_HANDSHAKE).await {
            Ok(registered) => registered,
            Err(e) if e.udp_blocked() => {
                warn!(slot = index, edge = %dialer.target.quic, error = %e, tcp = %dialer.target.tcp, "no QUIC answer (UDP blocked?); falling back to TLS over TCP");
                shared.metrics.tcp_fallbacks.inc();
                let registered = dialer.tcp().await?;
                return serve_tcp_probing_quic(index, registered, dialer, shared, shutdown).await;
            }
            Err(e) => return Err(e.into()),
        },
    };
    serve_session(index, registered, shared, shutdown, &stay).await
}

/// Serves a TLS/TCP connection while retrying QUIC in the background (with backoff); once a
/// QUIC connection has stayed up for `reconnect.stable` (both serving meanwhile), drains the
/// TLS/TCP one (`Drain`, in-flight streams finish, `GoAway`, close) and serves QUIC alone.
async fn serve_tcp_probing_quic(
    index: usize,
    tcp: Registered,
    dialer: &mut Dialer,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Ended> {
    let leave_tcp = CancellationToken::new();
    let tcp_session = serve_session(index, tcp, shared, shutdown, &leave_tcp);
    tokio::pin!(tcp_session);
    let reconnect = &shared.config.reconnect;
    let mut backoff = Backoff::new(reconnect.initial.max(QUIC_RETRY_MIN), reconnect.max);
    loop {
        let quic = tokio::select! {
            result = &mut tcp_session => return result,
            quic = probe_quic(dialer, &mut backoff) => quic,
        };
        info!(slot = index, edge = %dialer.target.quic, "QUIC works again; serving on both until it has been up for reconnect.stable");
        let stay = CancellationToken::new();
        let quic_session = serve_session(index, quic, shared, shutdown, &stay);
        tokio::pin!(quic_session);
        tokio::select! {
            result = &mut quic_session => {
                warn!(slot = index, result = ?result.err(), "QUIC connection ended before it was stable; staying on TLS over TCP");
                continue;
            }
            result = &mut tcp_session => {
                if let Err(e) = result {
                    info!(slot = index, error = %e, "TLS/TCP connection ended; QUIC carries the slot");
                }
                return quic_session.await;
            }
            () = tokio::time::sleep(reconnect.stable) => {
                info!(slot = index, "moving back to QUIC: draining the TLS/TCP connection");
                leave_tcp.cancel();
                let (tcp_result, quic_result) = tokio::join!(&mut tcp_session, &mut quic_session);
                if let Err(e) = tcp_result {
                    info!(slot = index, error = %e, "drained TLS/TCP connection ended with an error");
                }
                return quic_result;
            }
        }
    }
}

/// Retries QUIC until a connection registers.
async fn probe_quic(dialer: &mut Dialer, backoff: &mut Backoff) -> Registered {
    loop {
        let wait = backoff.next(random_unit()).max(QUIC_RETRY_MIN);
        tokio::time::sleep(wait).await;
        match dialer.quic(AUTO_QUIC_HANDSHAKE).await {
            Ok(registered) => return registered,
            Err(e) => debug!(edge = %dialer.target.quic, error = %e, "QUIC still not working"),
        }
    }
}

/// Serves one registered connection until it ends, we shut down, or `leave` asks us to move
/// elsewhere; the last two end gracefully (`Drain`, in-flight streams finish within
/// `limits.shutdown_grace`, `GoAway`, close).
async fn serve_session(
    index: usize,
    registered: Registered,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    leave: &CancellationToken,
) -> anyhow::Result<Ended> {
    let Registered {
        conn,
        mut control,
        welcome,
    } = registered;
    let slot = ConnectionLabel {
        connection: index.to_string(),
    };
    let transport = conn.transport();
    info!(slot = index, addr = %conn.remote_addr(), %transport, site = %welcome.site, connector = %welcome.connector_id, "registered with edge");
    // Offer the edge as much stream credit as it says it will use (within our own limit),
    // plus the share QUIC holds back before it announces returned credit (1/8): the edge's
    // count of open streams and the transport's then describe the same streams.
    let wanted = welcome
        .max_streams
        .saturating_add(welcome.max_streams / 8)
        .saturating_add(1);
    conn.set_max_incoming_streams(wanted.min(shared.config.limits.max_streams));
    let connected = shared.connected.enter(transport);
    let streams = TaskTracker::new();
    let ping_interval = Duration::from_millis(u64::from(welcome.ping_interval_ms));
    let result = serve(
        &conn,
        &mut control,
        shared,
        Exits { shutdown, leave },
        &streams,
        &slot,
        ping_interval,
    )
    .await;
    drop(connected);
    let left = matches!(result, Ok(Ended::Left));
    if shutdown.is_cancelled() || left {
        let (code, text) = if left {
            (CloseCode::Normal, "connector moved to another connection")
        } else {
            (CloseCode::Shutdown, "connector shutting down")
        };
        drain(&conn, &mut control, &streams, shared, code, text).await;
        if left {
            info!(slot = index, %transport, "left the connection after draining it");
            return Ok(Ended::Left);
        }
        return Ok(Ended::Closed);
    }
    conn.close(CloseCode::Normal, "session ended");
    match result {
        Ok(ended) => Ok(ended),
        Err(Lost(why)) => {
            warn!(slot = index, %transport, reason = %why, "tunnel connection lost");
            Ok(Ended::Lost)
        }
    }
}

/// The connector's side of the drain protocol (SIGTERM, or leaving a TLS/TCP connection for
/// QUIC; `code` and `text` say which). `serve` already sent `Drain` (the
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
    code: CloseCode,
    text: &str,
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
        code,
        text: text.into(),
    });
    let _ = control.finish(Duration::from_secs(2)).await;
    conn.close(code, text);
}

/// Why `serve` gave up on a connection that did not end gracefully.
#[derive(Debug)]
struct Lost(String);

/// What ends a session gracefully: shutting down, or leaving for another connection.
struct Exits<'a> {
    shutdown: &'a CancellationToken,
    leave: &'a CancellationToken,
}

async fn serve(
    conn: &transport::Connection,
    control: &mut ControlDriver,
    shared: &Arc<Shared>,
    exits: Exits<'_>,
    streams: &TaskTracker,
    slot: &ConnectionLabel,
    ping_interval: Duration,
) -> Result<Ended, Lost> {
    let Exits { shutdown, leave } = exits;
    let metrics = &shared.metrics;
    let mut sample = tokio::time::interval(STATS_INTERVAL);
    let mut lost_seen = 0u64;
    let mut reductions_seen = Reductions::default();
    let mut liveness = Liveness::new(ping_interval, Instant::now());
    let mut check = tokio::time::interval(LIVENESS_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Once leaving: when to stop accepting streams.
    let mut leaving: Option<Instant> = None;
    loop {
        let until_left = async {
            match leaving {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sample.tick() => {
                let stats = conn.stats();
                metrics.rtt.get_or_create(slot).set(stats.rtt.as_secs_f64());
                metrics.congestion_window.get_or_create(slot).set(i64::try_from(stats.cwnd).unwrap_or(i64::MAX));
                metrics.lost_packets.get_or_create(slot).inc_by(stats.lost_packets.saturating_sub(lost_seen));
                lost_seen = lost_seen.max(stats.lost_packets);
                if let Some(current) = conn.reductions() {
                    for (reason, new) in current.since(&reductions_seen) {
                        let label = ReductionLabel { connection: slot.connection.clone(), reason };
                        metrics.congestion_reductions.get_or_create(&label).inc_by(new);
                    }
                    reductions_seen = current;
                }
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
                    return Ok(Ended::Closed);
                }
                Ok(ControlEvent::Rtt(_)) if leaving.is_some() => {
                    // The edge has processed our Drain (the control stream is ordered).
                    let window = Instant::now() + DRAIN_WINDOW;
                    leaving = leaving.map(|at| at.min(window));
                }
                Ok(_) => {}
                Err(e) => return Err(Lost(e.to_string())),
            },
            () = leave.cancelled(), if leaving.is_none() => {
                control.state().drain();
                let _ = control.state().ping_now(now());
                let _ = control.flush(Duration::from_secs(1)).await;
                leaving = Some(Instant::now() + DRAIN_ANSWER);
            }
            () = until_left => return Ok(Ended::Left),
            () = shutdown.cancelled() => {
                control.state().drain();
                let _ = control.flush(Duration::from_secs(1)).await;
                return Ok(Ended::Closed);
            }
        }
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
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
