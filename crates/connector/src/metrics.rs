//! Every metric the connector exports, registered once. Names and labels: `docs/metrics.md`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `connection`: the connection slot, bounded by configuration (≤ 16 per edge).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ConnectionLabel {
    /// Slot number.
    pub connection: String,
}

/// `connection` and `reason`: why the congestion window was reduced.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReductionLabel {
    /// Slot number.
    pub connection: String,
    /// `loss` or `queue`.
    pub reason: &'static str,
}

/// `result`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabel {
    /// Outcome.
    pub result: &'static str,
}

/// `transport`: `quic` or `tcp`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TransportLabel {
    /// Transport name.
    pub transport: &'static str,
}

/// `kind`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabel {
    /// What failed.
    pub kind: &'static str,
}

/// The connector's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Registered edge connections now.
    pub edge_connections: Gauge,
    /// Dial + registration attempts.
    pub connection_attempts: Family<ResultLabel, Counter>,
    /// Registered edge connections now, by transport.
    pub transport_connections: Family<TransportLabel, Gauge>,
    /// Slots that fell back from QUIC to TLS/TCP because UDP got no answer or was refused.
    pub tcp_fallbacks: Counter,
    /// Smoothed RTT per slot, seconds.
    pub rtt: Family<ConnectionLabel, Gauge<f64, AtomicU64>>,
    /// Lost packets per slot.
    pub lost_packets: Family<ConnectionLabel, Counter>,
    /// Congestion window per slot.
    pub congestion_window: Family<ConnectionLabel, Gauge>,
    /// Window reductions per slot and reason (`loss_tolerant` only).
    pub congestion_reductions: Family<ReductionLabel, Counter>,
    /// Streams being served.
    pub active_streams: Gauge,
    /// Stream open to HA's response head.
    pub upstream_duration: Histogram,
    /// Failed requests to HA.
    pub upstream_errors: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family under the `doorless_connector` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("doorless_connector");
        let m = Self {
            registry: Registry::default(),
            edge_connections: Gauge::default(),
            connection_attempts: Family::default(),
            transport_connections: Family::default(),
            tcp_fallbacks: Counter::default(),
            rtt: Family::default(),
            lost_packets: Family::default(),
            congestion_window: Family::default(),
            congestion_reductions: Family::default(),
            active_streams: Gauge::default(),
            upstream_duration: Histogram::new(exponential_buckets(0.002, 2.0, 16)),
            upstream_errors: Family::default(),
        };
        daemon::register_build_info(&mut registry, env!("CARGO_PKG_VERSION"));
        let r = &mut registry;
        r.register(
            "edge_connections",
            "Registered edge connections now",
            m.edge_connections.clone(),
        );
        r.register(
            "connection_attempts",
            "Dial and registration attempts by result",
            m.connection_attempts.clone(),
        );
        r.register(
            "transport_connections",
            "Registered edge connections now, by transport (quic, tcp)",
            m.transport_connections.clone(),
        );
        r.register(
            "tcp_fallbacks",
            "Connection slots that fell back from QUIC to TLS over TCP (UDP blocked)",
            m.tcp_fallbacks.clone(),
        );
        r.register(
            "rtt_seconds",
            "Smoothed RTT per connection slot (QUIC; over TCP the HTTP/2 PING)",
            m.rtt.clone(),
        );
        r.register(
            "lost_packets",
            "QUIC packets declared lost per connection slot",
            m.lost_packets.clone(),
        );
        r.register(
            "congestion_window_bytes",
            "QUIC congestion window per connection slot",
            m.congestion_window.clone(),
        );
        r.register(
            "congestion_reductions",
            "Times the QUIC congestion controller (loss_tolerant) reduced its window, per connection slot, by reason: loss (losses it took for congestion), queue (a queue over its delay target)",
            m.congestion_reductions.clone(),
        );
        r.register(
            "active_streams",
            "Streams being served (requests and WebSockets)",
            m.active_streams.clone(),
        );
        r.register(
            "upstream_duration_seconds",
            "Time from stream open to Home Assistant's response head",
            m.upstream_duration.clone(),
        );
        r.register(
            "upstream_errors",
            "Requests to Home Assistant that failed, by kind",
            m.upstream_errors.clone(),
        );
        for result in ["ok", "error"] {
            let _ = m.connection_attempts.get_or_create(&ResultLabel { result });
        }
        for transport in transport::Transport::ALL {
            let _ = m.transport_connections.get_or_create(&TransportLabel {
                transport: transport.name(),
            });
        }
        for kind in [
            "connect",
            "tls",
            "tls_timeout",
            "timeout",
            "protocol",
            "framing",
            "bad_request",
            "body_idle",
        ] {
            let _ = m.upstream_errors.get_or_create(&KindLabel { kind });
        }
        Self { registry, ..m }
    }

    /// Creates the per-slot series at zero (slots are bounded by configuration).
    pub fn init_slot(&self, slot: &ConnectionLabel) {
        let _ = self.rtt.get_or_create(slot);
        let _ = self.lost_packets.get_or_create(slot);
        let _ = self.congestion_window.get_or_create(slot);
        for reason in transport::congestion::Reductions::REASONS {
            let _ = self.congestion_reductions.get_or_create(&ReductionLabel {
                connection: slot.connection.clone(),
                reason,
            });
        }
    }

    /// The OpenMetrics text of every family.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a failed upstream request.
    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabel { kind })
            .inc();
    }
}
