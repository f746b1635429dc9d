//! `doorless-edge`: the public side of doorless.
//!
//! It listens for browsers and apps on HTTPS (TCP) and for connectors on QUIC (UDP), or on the
//! HTTPS port with the tunnel's own ALPN when UDP is blocked (TLS/TCP). A client must present a
//! certificate from its site's client CA or the TLS handshake fails; an authenticated request
//! rides its own tunnel stream to a connector of that site, which forwards it to Home
//! Assistant.
//!
//! What it is not: a general reverse proxy. There is one upstream per site (behind its
//! connectors) and no path routing.
//!
//! The request path, one module per step, in order:
//! 1. `accept` — TCP accept loop, connection limits.
//! 2. `tls` — handshake: SNI → `site::Site`, client certificate → `tls::Peer`.
//! 3. `serve` — HTTP/1.1 and HTTP/2; `handle_request` runs steps 4–8 for each request:
//! 4. `cookie` — the session cookie's verdict (`required_or_session` sites only).
//! 5. `policy` — `policy::decide`: a `policy::Grant` with its evidence, or a denial; then
//!    `upgrade::classify`: a valid WebSocket handshake, plain HTTP, or a refusal.
//! 6. `route` — site → `route::Route`: a tunnel and a stream slot on it.
//! 7. `proxy` — request and response through a stream of that tunnel; WebSocket splice.
//! 8. `body` — the response body, counted; when it ends, `serve`'s `finish` writes the one
//!    access-log line. Every failure and its status code is in `error`.
//!
//! Beside the path: `enroll` answers the enrollment ALPN (connector codes); `connectors`
//! registers connectors as `tunnels::Tunnel`s; `site` is the site registry, `server_cert`
//! each site's swappable HTTPS certificate (files, ACME or the local server CA),
//! `revocation` everything revoked, `reload` watches the state dir;
//! `limit`, `metrics`, `admin`. `Edge::bind` then `Edge::run` is the whole server;
//! `main.rs` adds the CLI.

mod accept;
mod admin;
mod body;
mod cache;
pub mod config;
mod connectors;
mod cookie;
mod enroll;
mod error;
mod feed;
mod limit;
mod linger;
mod link;
mod metrics;
mod policy;
mod proxy;
mod reload;
mod revocation;
mod route;
mod serve;
mod server_cert;
mod site;
mod tls;
mod tunnels;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::config::Config;
use crate::site::Sites;
use crate::tunnels::Tunnels;

/// State shared by every task of one edge.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Validated configuration.
    pub(crate) config: Config,
    /// The state dir.
    pub(crate) state: pki::StateDir,
    /// Sites; swapped whole on reload.
    pub(crate) sites: ArcSwap<Sites>,
    /// ACME site tasks, when `[acme]` is on.
    pub(crate) acme: Option<server_cert::Acme>,
    /// Pending TLS-ALPN-01 validations (empty without ACME), for the handshake.
    pub(crate) challenges: acme::Challenges,
    /// Registered connector connections.
    pub(crate) tunnels: Tunnels,
    /// Authenticated client connections, by certificate.
    pub(crate) live: revocation::LiveClients,
    /// Every exported metric.
    pub(crate) metrics: metrics::Metrics,
    /// Signs and checks session cookies.
    pub(crate) session_key: cookie::SessionKey,
    /// Per-address budget of unauthenticated handshakes.
    pub(crate) budget: limit::HandshakeBudget,
    /// Per-address connection caps.
    pub(crate) per_address: limit::PerAddress,
    /// Handshakes in progress, all clients together.
    pub(crate) handshakes: tokio::sync::Semaphore,
    /// Keeps denial logging bounded under a flood.
    pub(crate) denial_log: limit::LogLimiter,
    /// Connector enrollment: its rate limits and the lock that serialises redemptions.
    pub(crate) enrollment: enroll::Enrollment,
    /// Whether a dropped underscored request header was logged yet (once per process).
    pub(crate) underscore_logged: std::sync::atomic::AtomicBool,
    /// The tunnel's TLS configuration for a `doorless-tcp/1` ClientHello on the HTTPS port.
    pub(crate) tunnel_tls: Arc<rustls::ServerConfig>,
    /// Where `accept` hands TLS/TCP tunnel connections to `connectors`.
    pub(crate) tcp_tunnels: tokio::sync::mpsc::Sender<connectors::TcpTunnel>,
    /// Per-address budget of device-link requests.
    pub(crate) link_limit: link::LinkLimit,
    /// How the last reload went, for `/status`.
    pub(crate) last_reload: reload::ReloadRecord,
    /// Responses Home Assistant marked public (`[cache]`).
    pub(crate) cache: Arc<cache::Cache>,
    request_ids: AtomicU64,
}

impl Shared {
    /// A new request id, unique in this process.
    pub(crate) fn next_request_id(&self) -> u64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// The addresses an edge actually bound (port 0 resolved).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Addrs {
    /// Public HTTPS.
    pub https: SocketAddr,
    /// QUIC tunnel.
    pub tunnel: SocketAddr,
    /// Admin.
    pub admin: SocketAddr,
}

/// An edge with its listeners bound and state loaded, ready to run.
#[derive(Debug)]
pub struct Edge {
    shared: Arc<Shared>,
    https: TcpListener,
    admin: TcpListener,
    tunnel: Arc<transport::ServerEndpoint>,
    tcp_tunnels: tokio::sync::mpsc::Receiver<connectors::TcpTunnel>,
    addrs: Addrs,
}

impl Edge {
    /// Loads the state dir and binds every listener.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let challenges = acme::Challenges::default();
        let acme = match &config.acme {
            Some(settings) => Some(server_cert::Acme::new(
                settings.clone(),
                &config.state,
                challenges.clone(),
            )?),
            None => None,
        };
        let sites = Sites::load(&config, acme.as_ref())?;
        let state = pki::StateDir::open(&config.state)?;
        let session_key = cookie::SessionKey::load(&state.session_key_path())?;
        let tunnel_tls = transport::ServerTls {
            cert_chain: pki::load_certs(&state.tunnel_cert_path())?,
            key: pki::load_key(&state.tunnel_key_path())?,
            connector_ca: pki::load_certs(&state.connector_ca_path())?,
            reset_secret: Some(session_key.derive("doorless/1 QUIC stateless reset")),
        };
        let https = TcpListener::bind(config.listen.https)
            .await
            .with_context(|| format!("binding listen.https {}", config.listen.https))?;
        let congestion = &config.listen.tcp_congestion_control;
        if !congestion.is_empty()
            && let Err(e) = serve::set_congestion_control(&https, congestion)
        {
            // Best effort: the listener works with the kernel's default.
            tracing::warn!(
                wanted = %congestion,
                kernel_default = serve::congestion_control(&https).unwrap_or_default(),
                error = %e,
                "listen.tcp_congestion_control not applied: client connections use the kernel's \
                 default (for bbr: `modprobe tcp_bbr` and add it to \
                 net.ipv4.tcp_allowed_congestion_control, as `doorless-edge setup` and \
                 deploy/systemd/99-doorless.conf do)"
            );
        }
        let admin = TcpListener::bind(config.listen.admin)
            .await
            .with_context(|| format!("binding listen.admin {}", config.listen.admin))?;
        let tunnel =
            transport::ServerEndpoint::bind(config.listen.tunnel, tunnel_tls, &config.tuning)
                .with_context(|| format!("binding listen.tunnel {}", config.listen.tunnel))?;
        let addrs = Addrs {
            https: https.local_addr()?,
            tunnel: tunnel.local_addr()?,
            admin: admin.local_addr()?,
        };
        let prefixes = limit::Prefixes {
            v4: config.limits.ipv4_prefix,
            v6: config.limits.ipv6_prefix,
        };
        let metrics = metrics::Metrics::new();
        metrics.init_edge();
        let (tcp_tunnels_tx, tcp_tunnels) =
            tokio::sync::mpsc::channel(connectors::TCP_TUNNEL_QUEUE);
        for site in sites.all() {
            metrics.init_site(&site.name);
        }
        let cache = Arc::new(cache::Cache::new(
            cache::CacheLimits {
                max_bytes: config.cache.max_bytes,
                max_object: config.cache.max_object,
                max_ttl: config.cache.max_ttl,
            },
            metrics.cache_bytes.clone(),
            metrics.cache_entries.clone(),
        ));
        let shared = Arc::new(Shared {
            cache,
            state,
            sites: ArcSwap::from_pointee(sites),
            acme,
            challenges,
            tunnels: Tunnels::default(),
            live: revocation::LiveClients::default(),
            metrics,
            session_key,
            budget: limit::HandshakeBudget::new(
                config.limits.handshake_rate_per_ip,
                config.limits.handshake_burst_per_ip,
                prefixes,
            ),
            per_address: limit::PerAddress::new(config.limits.max_connections_per_ip, prefixes),
            handshakes: tokio::sync::Semaphore::new(config.limits.max_concurrent_handshakes),
            denial_log: limit::LogLimiter::new(
                20,
                std::time::Duration::from_secs(10),
                tokio::time::Instant::now().into_std(),
            ),
            underscore_logged: std::sync::atomic::AtomicBool::new(false),
            request_ids: AtomicU64::new(1),
            enrollment: enroll::Enrollment::new(addrs.tunnel.port(), prefixes),
            tunnel_tls: tunnel.tcp_tls_config(),
            tcp_tunnels: tcp_tunnels_tx,
            link_limit: link::LinkLimit::new(prefixes),
            last_reload: reload::ReloadRecord::default(),
            config,
        });
        Ok(Self {
            shared,
            https,
            admin,
            tunnel: Arc::new(tunnel),
            tcp_tunnels,
            addrs,
        })
    }

    /// The bound addresses.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// Serves until `shutdown`, then drains: stops accepting, lets in-flight requests finish
    /// within `limits.shutdown_grace`, tells connectors, and closes the tunnel.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // Two trackers: client-facing tasks drain first (bounded by the grace period) while
        // the tunnel still carries their streams; connector sessions end after that.
        let http = TaskTracker::new();
        let tunnel = TaskTracker::new();
        let shared = self.shared;
        shared.sites.load().warn_expiring();
        for site in shared.sites.load().all() {
            info!(site = %site.name, hostnames = ?site.hostnames, client_auth = ?site.policy.client_auth, "serving site");
            for path in &site.policy.public_paths {
                tracing::warn!(site = %site.name, path = %path, "public path: requests under it pass WITHOUT a client certificate");
            }
            if site.policy.client_auth == policy::ClientAuth::RequiredOrSession {
                tracing::warn!(site = %site.name, lifetime = ?site.session_lifetime, "session mode: a cookie issued after a certificate-authenticated request also opens this site");
            }
        }
        info!(https = %self.addrs.https, tunnel = %self.addrs.tunnel, admin = %self.addrs.admin, "edge ready");
        http.spawn(accept::serve(
            self.https,
            shared.clone(),
            shutdown.clone(),
            http.clone(),
        ));
        http.spawn(reload::watch(shared.clone(), shutdown.clone()));
        http.spawn(admin::serve(self.admin, shared.clone(), shutdown.clone()));
        tunnel.spawn(connectors::serve(
            self.tunnel.clone(),
            self.tcp_tunnels,
            shared.clone(),
            shutdown.clone(),
            tunnel.clone(),
        ));
        shutdown.cancelled().await;
        info!("shutting down: draining in-flight requests");
        http.close();
        tunnel.close();
        let grace = shared.config.limits.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, http.wait())
            .await
            .is_err()
        {
            info!("grace period over; closing remaining connections");
        }
        // Each tunnel drains by itself (Drain, its streams finish and are acknowledged,
        // GoAway, close) within the same grace period; then close whatever is left.
        let late = deadline + std::time::Duration::from_secs(2);
        let _ = tokio::time::timeout_at(late, tunnel.wait()).await;
        self.tunnel
            .close(proto::CloseCode::Shutdown, "edge shutting down");
        self.tunnel
            .wait_idle(std::time::Duration::from_secs(2))
            .await;
        Ok(())
    }
}
