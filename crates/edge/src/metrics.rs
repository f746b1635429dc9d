//! Every metric the edge exports, registered once. Names and labels: `docs/metrics.md`.
//!
//! Labels are bounded: site names come from the state dir, every other label from a fixed set
//! of `&'static str` values. No IPs, paths or device names.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `site`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct SiteLabel {
    /// Site name.
    pub(crate) site: String,
}

/// `site`, `result`, `reason`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct HandshakeLabels {
    /// Site name, or empty when SNI named none.
    pub(crate) site: String,
    /// `ok` or `denied`.
    pub(crate) result: &'static str,
    /// Why.
    pub(crate) reason: &'static str,
}

/// `reason`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    /// Why.
    pub(crate) reason: &'static str,
}

/// `site`, `class`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ClassLabels {
    /// Site name.
    pub(crate) site: String,
    /// Status class, `2xx` etc.
    pub(crate) class: &'static str,
}

/// `site`, `blame`, `reason`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    /// Site name.
    pub(crate) site: String,
    /// Who is to blame.
    pub(crate) blame: &'static str,
    /// Why.
    pub(crate) reason: &'static str,
}

/// `site`, `result`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct SiteResult {
    /// Site name.
    pub(crate) site: String,
    /// Outcome.
    pub(crate) result: &'static str,
}

/// `site`, `transport`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct SiteTransport {
    /// Site name.
    pub(crate) site: String,
    /// `quic` or `tcp`.
    pub(crate) transport: &'static str,
}

/// `transport`, `reason`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct TransportReason {
    /// `quic` or `tcp`.
    pub(crate) transport: &'static str,
    /// `handshake`, `identity` or `revoked`.
    pub(crate) reason: &'static str,
}

/// Why a tunnel connection was refused before its `Hello`, as the metric says it.
pub(crate) const TUNNEL_REFUSALS: [&str; 3] = ["handshake", "identity", "revoked"];

/// `site`, `reason`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct SiteReason {
    /// Site name.
    pub(crate) site: String,
    /// Why.
    pub(crate) reason: &'static str,
}

/// `site`, `kind`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct CertLabels {
    /// Site name, empty for edge-wide certificates.
    pub(crate) site: String,
    /// Which certificate.
    pub(crate) kind: &'static str,
}

/// `kind`, `result`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct EnrollLabels {
    /// `connector` (a code) or `device` (a link).
    pub(crate) kind: &'static str,
    /// Outcome.
    pub(crate) result: &'static str,
}

/// `result`
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    /// Outcome.
    pub(crate) result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The edge's metrics.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    /// Public TLS handshakes.
    pub(crate) handshakes: Family<HandshakeLabels, Counter>,
    /// TCP connections closed at accept.
    pub(crate) connections_rejected: Family<ReasonLabel, Counter>,
    /// Authenticated client connections open now.
    pub(crate) client_connections: Gauge,
    /// Requests by status class.
    pub(crate) requests: Family<ClassLabels, Counter>,
    /// Failed requests by blame and reason.
    pub(crate) request_errors: Family<ErrorLabels, Counter>,
    /// Request head to response head.
    pub(crate) request_duration: HistogramFamily<SiteLabel>,
    /// Request body bytes into the tunnel.
    pub(crate) request_bytes: Family<SiteLabel, Counter>,
    /// Response body bytes out of the tunnel.
    pub(crate) response_bytes: Family<SiteLabel, Counter>,
    /// Requests in flight.
    pub(crate) active_requests: Family<SiteLabel, Gauge>,
    /// WebSockets open.
    pub(crate) active_websockets: Family<SiteLabel, Gauge>,
    /// Registered connector connections.
    pub(crate) connectors: Family<SiteLabel, Gauge>,
    /// Registered connector connections by transport.
    pub(crate) connector_transports: Family<SiteTransport, Gauge>,
    /// Tunnel connections refused before their `Hello`, by transport and reason.
    pub(crate) tunnel_refused: Family<TransportReason, Counter>,
    /// Connector registrations.
    pub(crate) registrations: Family<SiteResult, Counter>,
    /// Registered connector connections that ended.
    pub(crate) disconnects: Family<SiteLabel, Counter>,
    /// Requests that found no connector taking requests and waited for one, by outcome.
    pub(crate) connector_waits: Family<SiteResult, Counter>,
    /// Tunnel streams that could not be opened, were tried again elsewhere, or idled out.
    pub(crate) stream_failures: Family<SiteReason, Counter>,
    /// Request headers the edge dropped rather than forward.
    pub(crate) dropped_headers: Family<SiteReason, Counter>,
    /// Window reductions of the tunnels' QUIC congestion controllers (what the edge sends).
    pub(crate) congestion_reductions: Family<SiteReason, Counter>,
    /// When certificates expire (Unix seconds).
    pub(crate) certificate_expiry: Family<CertLabels, Gauge>,
    /// Issued certificates expiring within 30 days.
    pub(crate) certificates_expiring: Family<CertLabels, Gauge>,
    /// ACME orders by result.
    pub(crate) acme_orders: Family<SiteResult, Counter>,
    /// 1 while a site's last ACME order failed.
    pub(crate) acme_renewal_failing: Family<SiteLabel, Gauge>,
    /// State reloads.
    pub(crate) reloads: Family<ResultLabel, Counter>,
    /// Connections closed by a revocation.
    pub(crate) revoked_connections_closed: Counter,
    /// HTTP/2 response-queue credit taken back after a stall (`feed`).
    pub(crate) h2_queue_reclaims: Counter,
    /// Enrollment attempts (connector codes, device links) by result.
    pub(crate) enrollments: Family<EnrollLabels, Counter>,
    /// Requests the cache looked at, by result.
    pub(crate) cache_requests: Family<SiteResult, Counter>,
    /// Bytes the cache holds.
    pub(crate) cache_bytes: Gauge,
    /// Entries the cache holds.
    pub(crate) cache_entries: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family under the `doorless_edge` prefix.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("doorless_edge");
        let m = Self {
            handshakes: Family::default(),
            connector_transports: Family::default(),
            tunnel_refused: Family::default(),
            connections_rejected: Family::default(),
            client_connections: Gauge::default(),
            requests: Family::default(),
            request_errors: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            active_requests: Family::default(),
            active_websockets: Family::default(),
            connectors: Family::default(),
            registrations: Family::default(),
            disconnects: Family::default(),
            congestion_reductions: Family::default(),
            connector_waits: Family::default(),
            stream_failures: Family::default(),
            dropped_headers: Family::default(),
            certificate_expiry: Family::default(),
            certificates_expiring: Family::default(),
            acme_orders: Family::default(),
            acme_renewal_failing: Family::default(),
            reloads: Family::default(),
            revoked_connections_closed: Counter::default(),
            h2_queue_reclaims: Counter::default(),
            enrollments: Family::default(),
            cache_requests: Family::default(),
            cache_bytes: Gauge::default(),
            cache_entries: Gauge::default(),
            registry: Registry::default(),
        };
        daemon::register_build_info(&mut registry, env!("CARGO_PKG_VERSION"));
        let r = &mut registry;
        r.register(
            "connector_transports",
            "Registered connector connections by transport (quic, tcp)",
            m.connector_transports.clone(),
        );
        r.register(
            "tunnel_refused",
            "Tunnel connections refused before their hello, by transport and reason",
            m.tunnel_refused.clone(),
        );
        r.register(
            "tls_handshakes",
            "Public TLS handshakes by result and reason",
            m.handshakes.clone(),
        );
        r.register(
            "connections_rejected",
            "TCP connections closed at accept",
            m.connections_rejected.clone(),
        );
        r.register(
            "client_connections",
            "Authenticated client connections open now",
            m.client_connections.clone(),
        );
        r.register(
            "requests",
            "Requests answered, by status class",
            m.requests.clone(),
        );
        r.register(
            "request_errors",
            "Failed requests by blame and reason",
            m.request_errors.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from request head to response head",
            m.request_duration.clone(),
        );
        r.register(
            "request_bytes",
            "Request body bytes sent into the tunnel",
            m.request_bytes.clone(),
        );
        r.register(
            "response_bytes",
            "Response body bytes received from the tunnel",
            m.response_bytes.clone(),
        );
        r.register(
            "active_requests",
            "Requests in flight",
            m.active_requests.clone(),
        );
        r.register(
            "active_websockets",
            "Spliced WebSockets open now",
            m.active_websockets.clone(),
        );
        r.register(
            "connectors",
            "Registered connector connections",
            m.connectors.clone(),
        );
        r.register(
            "connector_registrations",
            "Connector registrations by result",
            m.registrations.clone(),
        );
        r.register(
            "tunnel_congestion_reductions",
            "Times the QUIC congestion controller (loss_tolerant) of a tunnel reduced its window for what the edge sends (uploads), by site and reason: loss, queue",
            m.congestion_reductions.clone(),
        );
        r.register(
            "connector_disconnects",
            "Registered connector connections that ended",
            m.disconnects.clone(),
        );
        r.register(
            "connector_waits",
            "Requests that found no connector taking requests and waited for one: arrived, timed_out",
            m.connector_waits.clone(),
        );
        r.register(
            "cache_requests",
            "Requests the response cache answered (hit), forwarded and may store (miss), or forwarded to refresh (refresh)",
            m.cache_requests.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes held by the response cache",
            m.cache_bytes.clone(),
        );
        r.register(
            "cache_entries",
            "Responses held by the response cache",
            m.cache_entries.clone(),
        );
        r.register(
            "tunnel_stream_failures",
            "Tunnel streams that failed: not opened, tried again elsewhere, or idle mid-body",
            m.stream_failures.clone(),
        );
        r.register(
            "request_headers_dropped",
            "Request headers dropped instead of forwarded, by reason",
            m.dropped_headers.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When the certificate expires (notAfter), Unix seconds",
            m.certificate_expiry.clone(),
        );
        r.register(
            "certificates_expiring",
            "Valid issued certificates that expire within 30 days",
            m.certificates_expiring.clone(),
        );
        r.register(
            "acme_orders",
            "ACME certificate orders by result",
            m.acme_orders.clone(),
        );
        r.register(
            "acme_renewal_failing",
            "1 while the site's last ACME order failed (the current certificate stays in service)",
            m.acme_renewal_failing.clone(),
        );
        r.register(
            "config_reloads",
            "State reloads by result",
            m.reloads.clone(),
        );
        r.register(
            "h2_queue_reclaims",
            "HTTP/2 response-queue credit taken back after 50 ms without socket writes: a stream the client stopped reading, or a stuck client",
            m.h2_queue_reclaims.clone(),
        );
        r.register(
            "revoked_connections_closed",
            "Open connections closed because their certificate was revoked",
            m.revoked_connections_closed.clone(),
        );
        r.register(
            "enrollments",
            "Enrollment attempts: connector codes and device links, by result",
            m.enrollments.clone(),
        );
        Self { registry, ..m }
    }

    /// The OpenMetrics text of every family.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Creates every bounded series of `site` at zero, so dashboards and `rate()` see the
    /// families before the first event (an empty family is not exported at all).
    pub(crate) fn init_site(&self, site: &str) {
        let s = || site.to_owned();
        let label = Self::site(site);
        for transport in transport::Transport::ALL {
            let _ = self.connector_transports.get_or_create(&SiteTransport {
                site: s(),
                transport: transport.name(),
            });
        }
        let _ = self.handshakes.get_or_create(&HandshakeLabels {
            site: s(),
            result: "ok",
            reason: "ok",
        });
        let _ = self.handshakes.get_or_create(&HandshakeLabels {
            site: s(),
            result: "ok",
            reason: "acme_challenge",
        });
        for denial in crate::tls::HandshakeDenial::ALL {
            if denial != crate::tls::HandshakeDenial::UnknownSite {
                let _ = self.handshakes.get_or_create(&HandshakeLabels {
                    site: s(),
                    result: denial.result(),
                    reason: denial.reason(),
                });
            }
        }
        for result in ["hit", "miss", "refresh"] {
            let _ = self
                .cache_requests
                .get_or_create(&SiteResult { site: s(), result });
        }
        for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
            let _ = self
                .requests
                .get_or_create(&ClassLabels { site: s(), class });
        }
        for e in crate::error::ProxyError::ALL {
            let _ = self.request_errors.get_or_create(&ErrorLabels {
                site: s(),
                blame: e.blame().as_str(),
                reason: e.reason(),
            });
        }
        let _ = self.request_duration.get_or_create(&label);
        let _ = self.request_bytes.get_or_create(&label);
        let _ = self.response_bytes.get_or_create(&label);
        let _ = self.active_requests.get_or_create(&label);
        let _ = self.active_websockets.get_or_create(&label);
        let _ = self.connectors.get_or_create(&label);
        let _ = self.disconnects.get_or_create(&label);
        for result in ["ok", "rejected", "check"] {
            let _ = self
                .registrations
                .get_or_create(&SiteResult { site: s(), result });
        }
        for result in crate::route::CONNECTOR_WAIT_RESULTS {
            let _ = self
                .connector_waits
                .get_or_create(&SiteResult { site: s(), result });
        }
        for result in acme::OrderResult::ALL {
            let _ = self.acme_orders.get_or_create(&SiteResult {
                site: s(),
                result: result.as_str(),
            });
        }
        let _ = self.acme_renewal_failing.get_or_create(&label);
        for kind in crate::site::ISSUED_KINDS {
            let _ = self
                .certificates_expiring
                .get_or_create(&CertLabels { site: s(), kind });
        }
        for reason in crate::route::STREAM_FAILURE_REASONS {
            let _ = self
                .stream_failures
                .get_or_create(&SiteReason { site: s(), reason });
        }
        let _ = self.dropped_headers.get_or_create(&SiteReason {
            site: s(),
            reason: "underscore",
        });
        for reason in transport::congestion::Reductions::REASONS {
            let _ = self
                .congestion_reductions
                .get_or_create(&SiteReason { site: s(), reason });
        }
    }

    /// Creates the edge-wide bounded series at zero.
    /// Counts a tunnel connection refused before its `Hello`.
    pub(crate) fn tunnel_refused(&self, transport: transport::Transport, reason: &'static str) {
        self.tunnel_refused
            .get_or_create(&TransportReason {
                transport: transport.name(),
                reason,
            })
            .inc();
    }

    pub(crate) fn init_edge(&self) {
        for transport in transport::Transport::ALL {
            for reason in TUNNEL_REFUSALS {
                let _ = self.tunnel_refused.get_or_create(&TransportReason {
                    transport: transport.name(),
                    reason,
                });
            }
        }
        for reason in [
            "max_connections",
            "per_ip_limit",
            "handshake_rate",
            "handshake_overload",
        ] {
            let _ = self
                .connections_rejected
                .get_or_create(&ReasonLabel { reason });
        }
        for result in ["ok", "error"] {
            let _ = self.reloads.get_or_create(&ResultLabel { result });
        }
        for result in crate::enroll::CODE_RESULTS {
            let _ = self.enrollments.get_or_create(&EnrollLabels {
                kind: "connector",
                result,
            });
        }
        for result in crate::link::LINK_RESULTS {
            let _ = self.enrollments.get_or_create(&EnrollLabels {
                kind: "device",
                result,
            });
        }
        for denial in [
            crate::tls::HandshakeDenial::UnknownSite,
            crate::tls::HandshakeDenial::Timeout,
            crate::tls::HandshakeDenial::Protocol,
        ] {
            let _ = self.handshakes.get_or_create(&HandshakeLabels {
                site: String::new(),
                result: "denied",
                reason: denial.reason(),
            });
        }
    }

    /// Shorthand for a site label.
    pub(crate) fn site(site: &str) -> SiteLabel {
        SiteLabel {
            site: site.to_owned(),
        }
    }
}

/// 5 ms … ~80 s: from a cached asset to a long-poll answer.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// `2xx` etc. for a status code.
pub(crate) fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_carry_the_documented_names() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&ClassLabels {
                site: "home".into(),
                class: "2xx",
            })
            .inc();
        let text = m.encode();
        assert!(
            text.contains("doorless_edge_requests_total{site=\"home\",class=\"2xx\"} 1"),
            "{text}"
        );
        assert!(text.contains("doorless_edge_build_info{version="), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
