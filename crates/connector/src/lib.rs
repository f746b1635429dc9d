//! `doorless-connector`: the home side of doorless.
//!
//! It dials OUT to the edge over QUIC, or TLS over TCP where UDP is blocked (no port
//! forwarding either way), registers with its enrollment
//! credential, and serves the streams the edge opens: each one is a request (or WebSocket)
//! for Home Assistant, forwarded through a pooled HTTP client (TLS for an `https://` upstream).
//!
//! What it is not: it never listens on the network except for its loopback admin endpoint,
//! and it never decides who may come in: the edge does that before a stream exists.
//!
//! Start at [`Connector::bind`] and [`Connector::run`]; [`dial`] keeps the connections up,
//! [`forward`] handles one stream.

pub mod admin;
pub mod check;
pub mod config;
pub mod dial;
pub mod enroll;
pub mod forward;
pub mod metrics;
mod register;
mod upstream_tls;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::Config;
use crate::forward::UpstreamBody;

/// State shared by every task of one connector.
#[derive(Debug)]
pub struct Shared {
    /// Validated configuration.
    pub config: Config,
    /// Pooled client to Home Assistant (TLS for an `https://` upstream).
    pub client: Client<upstream_tls::UpstreamConnector, UpstreamBody>,
    /// Every exported metric.
    pub metrics: metrics::Metrics,
    /// The edge connections registered right now.
    pub(crate) connected: Connected,
}

/// How many edge connections are registered right now: the one notion of "connected".
/// `/readyz`, `/status`, the ready file and the `edge_connections` gauge all read this.
#[derive(Debug)]
pub(crate) struct Connected {
    count: watch::Sender<usize>,
    /// Mirrors `count`, set in the same place so the two cannot disagree.
    gauge: Gauge,
    transports: watch::Sender<Transports>,
    /// Mirrors `transports`.
    transport_gauges: prometheus_client::metrics::family::Family<metrics::TransportLabel, Gauge>,
}

/// Registered connections by transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Transports {
    /// Over QUIC.
    pub(crate) quic: usize,
    /// Over TLS/TCP.
    pub(crate) tcp: usize,
}

impl Transports {
    fn add(&mut self, transport: transport::Transport, delta: isize) {
        let n = match transport {
            transport::Transport::Quic => &mut self.quic,
            transport::Transport::Tcp => &mut self.tcp,
        };
        *n = n.saturating_add_signed(delta);
    }
}

impl Connected {
    fn new(
        gauge: Gauge,
        transport_gauges: prometheus_client::metrics::family::Family<
            metrics::TransportLabel,
            Gauge,
        >,
    ) -> Self {
        Self {
            count: watch::Sender::new(0),
            gauge,
            transports: watch::Sender::new(Transports::default()),
            transport_gauges,
        }
    }

    /// Registered connections right now.
    pub(crate) fn now(&self) -> usize {
        *self.count.borrow()
    }

    /// Counts one more registered connection, carried by `transport`, until the returned
    /// guard is dropped.
    pub(crate) fn enter(&self, transport: transport::Transport) -> ConnectedGuard<'_> {
        self.add(1);
        self.add_transport(transport, 1);
        ConnectedGuard(self, transport)
    }

    /// Registered connections right now, by transport.
    pub(crate) fn by_transport(&self) -> Transports {
        *self.transports.borrow()
    }

    fn add_transport(&self, transport: transport::Transport, delta: isize) {
        self.transports.send_modify(|t| {
            t.add(transport, delta);
            let n = match transport {
                transport::Transport::Quic => t.quic,
                transport::Transport::Tcp => t.tcp,
            };
            self.transport_gauges
                .get_or_create(&metrics::TransportLabel {
                    transport: transport.name(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        });
    }

    fn add(&self, delta: isize) {
        self.count.send_modify(|n| {
            *n = n.saturating_add_signed(delta);
            self.gauge.set(i64::try_from(*n).unwrap_or(i64::MAX));
        });
    }
}

/// One registered connection, counted in [`Connected`] while it lives.
#[derive(Debug)]
pub(crate) struct ConnectedGuard<'a>(&'a Connected, transport::Transport);

impl Drop for ConnectedGuard<'_> {
    fn drop(&mut self) {
        self.0.add(-1);
        self.0.add_transport(self.1, -1);
    }
}

/// A connector with its admin listener bound, ready to run.
#[derive(Debug)]
pub struct Connector {
    shared: Arc<Shared>,
    admin: TcpListener,
    admin_addr: SocketAddr,
}

impl Connector {
    /// Binds the admin listener and builds the upstream client.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let admin = TcpListener::bind(config.listen.admin)
            .await
            .with_context(|| format!("binding listen.admin {}", config.listen.admin))?;
        let admin_addr = admin.local_addr()?;
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.limits.upstream_connect_timeout));
        http.set_nodelay(true);
        // The TLS layer below checks the scheme; the TCP connector must pass https through.
        http.enforce_http(false);
        let https = upstream_tls::UpstreamConnector::new(
            http,
            upstream_tls::client_config(&config.upstream_tls).map_err(anyhow::Error::msg)?,
            config.limits.upstream_tls_handshake_timeout,
        );
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.limits.pool_idle_timeout)
            .pool_max_idle_per_host(config.limits.pool_max_idle)
            .build(https);
        let metrics = metrics::Metrics::new();
        let connected = Connected::new(
            metrics.edge_connections.clone(),
            metrics.transport_connections.clone(),
        );
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                client,
                metrics,
                connected,
            }),
            admin,
            admin_addr,
        })
    }

    /// The bound admin address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The number of registered edge connections, as it changes: ready once it is above 0.
    pub fn ready(&self) -> watch::Receiver<usize> {
        self.shared.connected.count.subscribe()
    }

    /// Runs until `shutdown`, then drains: tells the edge, lets in-flight requests finish
    /// within `limits.shutdown_grace`, and closes.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let shared = self.shared;
        info!(
            site = %shared.config.token.site,
            connector = %shared.config.token.connector_id,
            edges = ?shared.config.edges,
            transport = ?shared.config.transport,
            upstream = %shared.config.upstream,
            connections = shared.config.connections,
            "connector starting"
        );
        if shared.config.upstream_tls == config::UpstreamTls::Insecure {
            warn!(
                upstream = %shared.config.upstream,
                "upstream_tls_insecure: Home Assistant's certificate is NOT verified; anyone on \
                 the network path to it can read and change its traffic (see docs/security.md)"
            );
        }
        tasks.spawn(admin::serve(self.admin, shared.clone(), shutdown.clone()));
        let per_edge = shared.config.connections;
        let edges = shared.config.edges.iter().zip(&shared.config.tcp_edges);
        for (e, (edge, tcp_edge)) in edges.enumerate() {
            for index in 0..per_edge {
                let slot = e * per_edge + index;
                let target = dial::Target {
                    quic: edge.clone(),
                    tcp: tcp_edge.clone(),
                };
                tasks.spawn(dial::slot(slot, target, shared.clone(), shutdown.clone()));
            }
        }
        tasks.close();
        tasks.wait().await;
        Ok(())
    }
}
