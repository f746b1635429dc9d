//! Edge configuration: `RawConfig` mirrors the TOML file; [`Config`] is the finished form,
//! checked and typed once at load (per-site settings become [`SiteSettings`], defaults applied),
//! so nothing downstream re-parses or re-defaults a setting.
//!
//! Layers, later wins: built-in defaults, the TOML file, then `DOORLESS_*` environment
//! variables (nested keys joined with `__`, e.g. `DOORLESS_LISTEN__HTTPS=0.0.0.0:8443`).
//! Every field is documented in `docs/config.md`; keep the two in step.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use daemon::{ConfigError, LogFormat, RawLog};

pub use crate::policy::{ClientAuth, SitePolicy};

/// Top-level keys that `DOORLESS_*` variables may set. Limiting env to these keeps a stray
/// variable meant for the connector (e.g. `DOORLESS_TOKEN`) from breaking the edge.
const ENV_KEYS: &[&str] = &[
    "state_dir",
    "listen",
    "limits",
    "tunnel",
    "log",
    "sites",
    "acme",
    "cache",
];

/// The edge configuration as written in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// State directory created by `doorless-edge init` (CAs, keys, sites).
    pub state_dir: PathBuf,
    /// Listening addresses.
    #[serde(default)]
    pub listen: RawListen,
    /// Limits and timeouts of the public listener and the proxy path.
    #[serde(default)]
    pub limits: RawLimits,
    /// QUIC tunnel settings.
    #[serde(default)]
    pub tunnel: RawTunnel,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// Per-site settings, keyed by site name. Sites themselves come from the state dir.
    #[serde(default)]
    pub sites: BTreeMap<String, RawSite>,
    /// Publicly trusted certificates from an ACME CA (on when `email` is set).
    #[serde(default)]
    pub acme: RawAcme,
    /// The edge's cache of responses Home Assistant marks public.
    #[serde(default)]
    pub cache: RawCache,
}

/// `[cache]`: responses Home Assistant marks `public` (its frontend files), answered by the
/// edge itself to devices the site's policy lets in, instead of crossing the tunnel again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCache {
    /// Bytes all entries may hold together (bodies, headers, bookkeeping); 0 turns the cache
    /// off. Responses being recorded may hold as much again.
    pub max_bytes: usize,
    /// Largest response body stored.
    pub max_object: usize,
    /// Longest an entry is kept, whatever the response allowed.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
}

impl Default for RawCache {
    fn default() -> Self {
        Self {
            // Home Assistant's frontend as one browser loads it is ~1-5 MB compressed.
            max_bytes: 32 * 1024 * 1024,
            // Its largest bundles are a few hundred KB compressed.
            max_object: 2 * 1024 * 1024,
            max_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// `[acme]`: certificates for every site without `tls_cert`, from an ACME CA (Let's Encrypt by
/// default), validated with TLS-ALPN-01 on the HTTPS listener. `doorless-edge setup` writes
/// `email` (and `directory` / `staging` when given): keep those names.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcme {
    /// Contact address for the CA account; setting it turns ACME on.
    pub email: Option<String>,
    /// `false` keeps ACME off even with `email` set (default: on when `email` is set).
    pub enabled: Option<bool>,
    /// The CA's directory URL (default: Let's Encrypt production).
    pub directory: Option<String>,
    /// Let's Encrypt staging instead of production (untrusted certificates, for trying out).
    #[serde(default)]
    pub staging: bool,
    /// External account binding key id (CAs other than Let's Encrypt).
    pub eab_kid: Option<String>,
    /// External account binding HMAC key (base64url).
    pub eab_hmac_key: Option<String>,
    /// File holding the EAB HMAC key, instead of `eab_hmac_key`.
    pub eab_hmac_key_file: Option<PathBuf>,
    /// PEM file of extra roots to trust for the CA's own HTTPS (a private CA, a test CA).
    pub extra_roots: Option<PathBuf>,
    /// Fraction of the lifetime after which to renew when the CA offers no ARI window.
    pub renew_at: Option<f64>,
    /// Ask the CA for its renewal window (ACME Renewal Information, RFC 9773).
    pub ari: Option<bool>,
    /// First retry after a failed order; doubles per failure.
    #[serde(default, with = "humantime_serde")]
    pub retry_initial: Option<Duration>,
    /// The longest wait between retries.
    #[serde(default, with = "humantime_serde")]
    pub retry_max: Option<Duration>,
    /// One order, validation included.
    #[serde(default, with = "humantime_serde")]
    pub order_timeout: Option<Duration>,
    /// One HTTP request to the CA.
    #[serde(default, with = "humantime_serde")]
    pub request_timeout: Option<Duration>,
}

/// `[listen]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListen {
    /// Public HTTPS listener (TCP).
    pub https: SocketAddr,
    /// Tunnel listener for connectors (UDP, QUIC).
    pub tunnel: SocketAddr,
    /// Admin listener: `/healthz`, `/readyz`, `/status`. Keep it on loopback.
    pub admin: SocketAddr,
    /// TCP congestion control of the HTTPS listener's connections (clients, and connectors
    /// over TLS/TCP): a kernel module name (`bbr`, `cubic`); empty: the kernel's default.
    pub tcp_congestion_control: String,
}

/// The longest congestion control name Linux takes (`TCP_CA_NAME_MAX` 16, with its NUL).
pub const MAX_CONGESTION_NAME: usize = 15;

impl Default for RawListen {
    fn default() -> Self {
        Self {
            https: SocketAddr::from(([0, 0, 0, 0], 443)),
            tunnel: SocketAddr::from(([0, 0, 0, 0], 443)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9470)),
            tcp_congestion_control: "bbr".into(),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Maximum concurrent client connections on the public listener.
    pub max_connections: usize,
    /// Time a client has to complete the TLS handshake.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Time a client has to send a complete request head (slowloris guard).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Maximum size of a request head in bytes (HTTP/1 buffer, HTTP/2 header list); more → 431.
    pub max_header_bytes: usize,
    /// Maximum concurrent HTTP/2 streams per client connection.
    pub h2_max_streams: u32,
    /// Maximum WebSockets open at once on one HTTP/2 client connection (RFC 8441; each holds
    /// one of its `h2_max_streams` until it closes); more → 429. At most `h2_max_streams`;
    /// below it, so that a page with many tabs' WebSockets still loads.
    pub h2_max_websockets: u32,
    /// HTTP/2 receive window per stream, in bytes: how much of one request body a client may
    /// send ahead of what the tunnel took.
    pub h2_stream_window: u32,
    /// HTTP/2 receive window per client connection, in bytes: the most request-body bytes
    /// one connection can make the edge buffer, over all its streams.
    pub h2_connection_window: u32,
    /// Most response-body bytes an HTTP/2 connection may hold queued in front of its socket,
    /// all streams together (the edge keeps it to ~2 ms of what the socket drains): what a
    /// WebSocket message or a small response can find ahead of it.
    pub h2_response_queue: usize,
    /// Time the connector has to return the response head; then 504.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Maximum concurrent tunnel streams (requests + WebSockets) per connector connection.
    pub max_streams_per_connector: u32,
    /// Time to wait for a free tunnel stream before answering 503.
    #[serde(with = "humantime_serde")]
    pub stream_open_timeout: Duration,
    /// Time a request waits for a connector to register while its site has none that takes
    /// requests (restarting, draining, reconnecting) before it is answered 503; 0: at once.
    #[serde(with = "humantime_serde")]
    pub connector_wait: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A request or response body that moves no byte for this long ends its stream (the
    /// client sees the response cut off). Far above what live streams go quiet for: Home
    /// Assistant's event stream sends every 50 s, camera streams every frame.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Concurrent connections from one client address.
    pub max_connections_per_ip: usize,
    /// TLS handshakes in progress at once, all clients together; more are closed at once.
    pub max_concurrent_handshakes: usize,
    /// Unauthenticated handshakes one address may start per second, sustained.
    pub handshake_rate_per_ip: f64,
    /// Burst of unauthenticated handshakes one address may start at once.
    pub handshake_burst_per_ip: u32,
    /// IPv4 clients are one "address" for the per-address limits per network of this prefix
    /// length (32: each address on its own).
    pub ipv4_prefix: u8,
    /// IPv6 clients are one "address" per network of this prefix length: 64 by default, since
    /// one subscriber usually gets a whole /64 (or more) and can pick any address in it.
    pub ipv6_prefix: u8,
    /// Forward request headers whose names contain `_` (nginx's `underscores_in_headers`).
    /// Off by default: such headers are dropped, since servers that map `-` to `_` (CGI,
    /// WSGI, some frameworks) would read `X_Forwarded_For` as `X-Forwarded-For`.
    pub underscores_in_headers: bool,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            h2_max_streams: 128,
            h2_max_websockets: 64,
            h2_stream_window: 2 * 1024 * 1024,
            h2_connection_window: 4 * 1024 * 1024,
            h2_response_queue: 256 * 1024,
            upstream_timeout: Duration::from_secs(100),
            max_streams_per_connector: 1024,
            stream_open_timeout: Duration::from_secs(5),
            connector_wait: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(300),
            max_connections_per_ip: 256,
            max_concurrent_handshakes: 256,
            handshake_rate_per_ip: 5.0,
            handshake_burst_per_ip: 40,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            underscores_in_headers: false,
        }
    }
}

/// `[tunnel]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTunnel {
    /// Keep-alive interval of connector connections.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// A connector connection silent for this long is dead.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Interval of control-stream pings (RTT measurement, liveness).
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Requested UDP socket buffer size in bytes.
    pub udp_buffer: usize,
    /// QUIC congestion controller for what this end sends: `loss_tolerant` (default), `cubic`
    /// or `bbr`.
    pub congestion_control: transport::Congestion,
    /// The longest the peer may hold back the ACK of a lone packet (1–25 ms).
    #[serde(with = "humantime_serde")]
    pub ack_delay: Duration,
    /// QUIC receive window per stream, in bytes: bounds one stream's downloads (what connectors send) to this per
    /// round trip, and what one slow reader can make this end buffer.
    pub stream_window: u32,
}

impl Default for RawTunnel {
    fn default() -> Self {
        let t = transport::Tuning::default();
        Self {
            keep_alive: t.keep_alive,
            idle_timeout: t.idle_timeout,
            // Also the liveness clock: a connector silent for this plus max(2 s, 4 RTT) is
            // dead (`transport::Liveness`), so 2 s notices a crashed connector within ~4 s.
            ping_interval: Duration::from_secs(2),
            udp_buffer: t.udp_buffer,
            congestion_control: t.congestion,
            ack_delay: t.ack_delay,
            stream_window: t.stream_window,
        }
    }
}

/// `[sites.NAME]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    /// PEM certificate chain for the site's hostnames (e.g. from Let's Encrypt). Default: the
    /// certificate the state dir made at `site add` (signed by the local server CA).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// `required` (default) or `required_or_session`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Lifetime of session cookies in `required_or_session` mode (default 1h, 1m..24h).
    #[serde(default, with = "humantime_serde")]
    pub session_lifetime: Option<Duration>,
    /// Path prefixes that pass WITHOUT a certificate, e.g. `/api/webhook/`. Off by default.
    #[serde(default)]
    pub public_paths: Vec<String>,
    /// If set, only these client networks may reach the site.
    #[serde(default)]
    pub allow_cidrs: Vec<IpNet>,
    /// These client networks may never reach the site.
    #[serde(default)]
    pub deny_cidrs: Vec<IpNet>,
    /// Header that carries the device name to Home Assistant (off by default). Whatever a
    /// client sends under this name is always removed.
    pub identity_header: Option<String>,
}

/// How long a session cookie lives unless `session_lifetime` says otherwise.
const DEFAULT_SESSION_LIFETIME: Duration = Duration::from_secs(3600);

/// One site's settings, finished: `[sites.NAME]` with defaults applied and names parsed. A
/// site the file does not mention gets [`SiteSettings::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteSettings {
    /// The public certificate to serve instead of the state dir's own, if configured.
    pub certificate: Option<CertificateFiles>,
    /// Access policy.
    pub policy: SitePolicy,
    /// Session cookie lifetime (used in `required_or_session` mode).
    pub session_lifetime: Duration,
    /// Header carrying the device name upstream, if configured.
    pub identity_header: Option<http::HeaderName>,
}

impl Default for SiteSettings {
    fn default() -> Self {
        Self {
            certificate: None,
            policy: SitePolicy::default(),
            session_lifetime: DEFAULT_SESSION_LIFETIME,
            identity_header: None,
        }
    }
}

/// A PEM certificate chain and its key (`tls_cert` and `tls_key`, set together).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// The finished configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source: String,
    /// The state dir, opened and checked.
    pub state: PathBuf,
    /// Listening addresses.
    pub listen: RawListen,
    /// Limits.
    pub limits: RawLimits,
    /// Tunnel transport settings.
    pub tuning: transport::Tuning,
    /// Control ping interval.
    pub ping_interval: Duration,
    /// Logging.
    pub log: RawLog,
    /// Per-site settings of the sites the file mentions.
    pub sites: BTreeMap<String, SiteSettings>,
    /// ACME settings, checked; `None` when ACME is off.
    pub acme: Option<acme::AcmeConfig>,
    /// Cache limits (`max_bytes` 0: off).
    pub cache: RawCache,
}

impl Config {
    /// Loads `path` (must exist), applies `DOORLESS_*` env, and validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let figment = Figment::new()
            .merge(Toml::file_exact(path))
            .merge(daemon::env(ENV_KEYS));
        Self::from_figment(figment, &path.display().to_string())
    }

    /// Validates an in-memory `RawConfig` (used by the demo and tests).
    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Serialized::defaults(raw)), "built-in")
    }

    fn from_figment(figment: Figment, source: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = figment.extract().map_err(ConfigError::parse)?;
        let invalid = |key: &str, problem: &str| ConfigError::invalid(source, key, problem);
        let cc = &raw.listen.tcp_congestion_control;
        if cc.len() > MAX_CONGESTION_NAME
            || !cc
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(invalid(
                "listen.tcp_congestion_control",
                "must be a kernel congestion control name (e.g. \"bbr\", \"cubic\"; at most 15 of a-z, 0-9, _) or empty for the kernel's default",
            ));
        }
        let limits = &raw.limits;
        if limits.max_connections == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        if limits.max_header_bytes < 8192 {
            return Err(invalid("limits.max_header_bytes", "must be at least 8192"));
        }
        if limits.max_streams_per_connector == 0 {
            return Err(invalid(
                "limits.max_streams_per_connector",
                "must be at least 1",
            ));
        }
        if limits.h2_max_streams == 0 {
            return Err(invalid("limits.h2_max_streams", "must be at least 1"));
        }
        if limits.h2_max_websockets > limits.h2_max_streams {
            return Err(invalid(
                "limits.h2_max_websockets",
                "must be at most limits.h2_max_streams",
            ));
        }
        // RFC 9113 §6.9.2: windows run from the protocol's default (65,535) to 2^31 - 1.
        for (key, window) in [
            ("limits.h2_stream_window", limits.h2_stream_window),
            ("limits.h2_connection_window", limits.h2_connection_window),
        ] {
            if !(65_535..=i32::MAX as u32).contains(&window) {
                return Err(invalid(key, "must be between 65535 and 2147483647"));
            }
        }
        if limits.h2_connection_window < limits.h2_stream_window {
            return Err(invalid(
                "limits.h2_connection_window",
                "must be at least limits.h2_stream_window",
            ));
        }
        if limits.h2_response_queue != 0
            && !(16 * 1024..=16 * 1024 * 1024).contains(&limits.h2_response_queue)
        {
            return Err(invalid(
                "limits.h2_response_queue",
                "must be 0 (no bound) or between 16384 and 16777216",
            ));
        }
        for (key, d) in [
            ("limits.handshake_timeout", limits.handshake_timeout),
            ("limits.header_read_timeout", limits.header_read_timeout),
            ("limits.upstream_timeout", limits.upstream_timeout),
            ("limits.stream_open_timeout", limits.stream_open_timeout),
            ("limits.body_idle_timeout", limits.body_idle_timeout),
            ("tunnel.ping_interval", raw.tunnel.ping_interval),
            ("tunnel.keep_alive", raw.tunnel.keep_alive),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        if raw.tunnel.idle_timeout <= raw.tunnel.keep_alive {
            return Err(invalid(
                "tunnel.idle_timeout",
                "must be longer than tunnel.keep_alive",
            ));
        }
        if raw.tunnel.idle_timeout < Duration::from_secs(5) {
            return Err(invalid("tunnel.idle_timeout", "must be at least 5s"));
        }
        if !(16..=32).contains(&limits.ipv4_prefix) {
            return Err(invalid("limits.ipv4_prefix", "must be between 16 and 32"));
        }
        if !(32..=128).contains(&limits.ipv6_prefix) {
            return Err(invalid("limits.ipv6_prefix", "must be between 32 and 128"));
        }
        if limits.max_connections_per_ip == 0 || limits.max_concurrent_handshakes == 0 {
            return Err(invalid(
                "limits.max_connections_per_ip",
                "connection and handshake limits must be at least 1",
            ));
        }
        if !(limits.handshake_rate_per_ip > 0.0 && limits.handshake_rate_per_ip.is_finite())
            || limits.handshake_burst_per_ip == 0
        {
            return Err(invalid(
                "limits.handshake_rate_per_ip",
                "rate and burst must be greater than zero",
            ));
        }
        let mut sites = BTreeMap::new();
        for (name, site) in raw.sites {
            let settings = SiteSettings::from_raw(site, |k, problem| {
                invalid(&format!("sites.{name}.{k}"), problem)
            })?;
            sites.insert(name, settings);
        }
        let acme = raw
            .acme
            .finish(|k, problem| invalid(&format!("acme.{k}"), problem))?;
        let tuning = transport::Tuning {
            keep_alive: raw.tunnel.keep_alive,
            idle_timeout: raw.tunnel.idle_timeout,
            udp_buffer: raw.tunnel.udp_buffer,
            congestion: raw.tunnel.congestion_control,
            ack_delay: raw.tunnel.ack_delay,
            stream_window: raw.tunnel.stream_window,
            ..transport::Tuning::default()
        };
        tuning
            .check()
            .map_err(|(key, problem)| invalid(key, &problem))?;
        let cache = raw.cache;
        if cache.max_bytes > 0 && !(1..=cache.max_bytes).contains(&cache.max_object) {
            return Err(invalid(
                "cache.max_object",
                "must be between 1 and cache.max_bytes",
            ));
        }
        if cache.max_bytes > 0 && cache.max_ttl < Duration::from_secs(1) {
            return Err(invalid("cache.max_ttl", "must be at least 1s"));
        }
        Ok(Self {
            source: source.to_owned(),
            state: raw.state_dir,
            listen: raw.listen,
            limits: raw.limits,
            tuning,
            ping_interval: raw.tunnel.ping_interval,
            log: raw.log,
            sites,
            acme,
            cache,
        })
    }
}

impl RawAcme {
    /// The checked settings, or `None` when ACME is off; `invalid(key, problem)` names the key.
    /// Files it names (`extra_roots`, `eab_hmac_key_file`) are read here, once.
    fn finish(
        self,
        invalid: impl Fn(&str, &str) -> ConfigError,
    ) -> Result<Option<acme::AcmeConfig>, ConfigError> {
        let Some(email) = self.email.filter(|_| self.enabled != Some(false)) else {
            if self.enabled == Some(true) {
                return Err(invalid("email", "required when acme.enabled = true"));
            }
            return Ok(None);
        };
        let problem = |e: acme::ConfigError| e.to_string();
        let mut config =
            acme::AcmeConfig::new(&email).map_err(|e| invalid("email", &problem(e)))?;
        config = match (self.directory, self.staging) {
            (Some(_), true) => {
                return Err(invalid(
                    "staging",
                    "set either directory or staging = true, not both",
                ));
            }
            (Some(url), false) => config
                .directory(&url)
                .map_err(|e| invalid("directory", &problem(e)))?,
            (None, true) => config.staging(),
            (None, false) => config,
        };
        let hmac_key = match (self.eab_hmac_key, self.eab_hmac_key_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "eab_hmac_key_file",
                    "set either eab_hmac_key or eab_hmac_key_file, not both",
                ));
            }
            (Some(key), None) => Some(key),
            (None, Some(path)) => Some(std::fs::read_to_string(&path).map_err(|e| {
                invalid(
                    "eab_hmac_key_file",
                    &format!("cannot read {}: {e}", path.display()),
                )
            })?),
            (None, None) => None,
        };
        config = match (self.eab_kid, hmac_key) {
            (Some(kid), Some(key)) => config
                .eab(&kid, &key)
                .map_err(|e| invalid("eab_kid", &problem(e)))?,
            (None, None) => config,
            _ => {
                return Err(invalid(
                    "eab_kid",
                    "eab_kid and eab_hmac_key (or eab_hmac_key_file) must be set together",
                ));
            }
        };
        if let Some(path) = self.extra_roots {
            let pem = std::fs::read(&path).map_err(|e| {
                invalid(
                    "extra_roots",
                    &format!("cannot read {}: {e}", path.display()),
                )
            })?;
            config = config
                .extra_roots_pem(&pem)
                .map_err(|e| invalid("extra_roots", &problem(e)))?;
        }
        let defaults = acme::RenewalPolicy::default();
        let policy = acme::RenewalPolicy {
            renew_at: self.renew_at.unwrap_or(defaults.renew_at),
            ari: self.ari.unwrap_or(defaults.ari),
            retry_initial: self.retry_initial.unwrap_or(defaults.retry_initial),
            retry_max: self.retry_max.unwrap_or(defaults.retry_max),
            order_timeout: self.order_timeout.unwrap_or(defaults.order_timeout),
            request_timeout: self.request_timeout.unwrap_or(defaults.request_timeout),
            ..defaults
        };
        // The policy's own check names no key; point at the one most likely wrong.
        let key = if self.renew_at.is_some() {
            "renew_at"
        } else {
            "retry_initial"
        };
        config = config
            .renewal(policy)
            .map_err(|e| invalid(key, &problem(e)))?;
        Ok(Some(config))
    }
}

impl SiteSettings {
    /// Checks `[sites.NAME]` and finishes it; `invalid(key, problem)` names the offending key.
    fn from_raw(
        site: RawSite,
        invalid: impl Fn(&str, &str) -> ConfigError,
    ) -> Result<Self, ConfigError> {
        if site.tls_cert.is_some() != site.tls_key.is_some() {
            return Err(invalid(
                "tls_cert",
                "tls_cert and tls_key must be set together",
            ));
        }
        for path in &site.public_paths {
            if !path.starts_with('/') || !path.ends_with('/') || path.len() < 2 {
                return Err(invalid(
                    "public_paths",
                    &format!("`{path}` must start and end with `/`, e.g. \"/api/webhook/\""),
                ));
            }
            if !crate::policy::is_public(std::slice::from_ref(path), path) {
                return Err(invalid(
                    "public_paths",
                    &format!(
                        "`{path}` must be a plain path: no dot segments, `;`, `%`, `//` or `\\`"
                    ),
                ));
            }
        }
        if let Some(d) = site.session_lifetime
            && !(Duration::from_secs(60)..=Duration::from_secs(86_400)).contains(&d)
        {
            return Err(invalid("session_lifetime", "must be between 1m and 24h"));
        }
        if site.session_lifetime.is_some() && site.client_auth != ClientAuth::RequiredOrSession {
            return Err(invalid(
                "session_lifetime",
                "only meaningful with client_auth = \"required_or_session\"",
            ));
        }
        let identity_header = match &site.identity_header {
            Some(h) => Some(identity_header(h).ok_or_else(|| {
                invalid(
                    "identity_header",
                    "must be a valid header name that is not a standard or forwarding header, e.g. \"X-Doorless-Device\"",
                )
            })?),
            None => None,
        };
        let certificate = match (site.tls_cert, site.tls_key) {
            (Some(cert), Some(key)) => Some(CertificateFiles { cert, key }),
            _ => None,
        };
        Ok(Self {
            certificate,
            policy: SitePolicy {
                client_auth: site.client_auth,
                public_paths: site.public_paths,
                allow_cidrs: site.allow_cidrs,
                deny_cidrs: site.deny_cidrs,
            },
            session_lifetime: site.session_lifetime.unwrap_or(DEFAULT_SESSION_LIFETIME),
            identity_header,
        })
    }
}

/// `name` as a header name, unless it is a standard or forwarding header that the identity
/// header must not replace.
fn identity_header(name: &str) -> Option<http::HeaderName> {
    const RESERVED: [&str; 7] = [
        "host",
        "cookie",
        "connection",
        "upgrade",
        "content-length",
        "transfer-encoding",
        "forwarded",
    ];
    let parsed = http::HeaderName::from_bytes(name.as_bytes()).ok()?;
    let lower = name.to_ascii_lowercase();
    (!RESERVED.contains(&lower.as_str()) && !lower.starts_with("x-forwarded-")).then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let figment = Figment::new().merge(Toml::string(text));
        Config::from_figment(figment, "test.toml")
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let Ok(c) = load("state_dir = \"/tmp/x\"") else {
            panic!("minimal config must load");
        };
        assert_eq!(c.listen.https.port(), 443);
        assert_eq!(c.limits.upstream_timeout, Duration::from_secs(100));
    }

    #[test]
    fn unknown_key_is_named() {
        let Err(e) = load("state_dir = \"/x\"\n[limits]\nheader_read_timout = \"1s\"") else {
            panic!("typo must be refused");
        };
        assert!(e.to_string().contains("header_read_timout"), "{e}");
    }

    #[test]
    fn tcp_congestion_control_takes_a_kernel_name_or_nothing() {
        let Ok(c) = load("state_dir = \"/x\"") else {
            panic!("defaults must load");
        };
        assert_eq!(c.listen.tcp_congestion_control, "bbr");
        for good in ["cubic", "", "bbr", "dctcp", "a_b_c_d_e_f_g_h"] {
            let text = format!("state_dir = \"/x\"\n[listen]\ntcp_congestion_control = \"{good}\"");
            match load(&text) {
                Ok(c) => assert_eq!(c.listen.tcp_congestion_control, good),
                Err(e) => panic!("{good:?}: {e}"),
            }
        }
        for bad in ["BBR", "bbr cubic", "a_b_c_d_e_f_g_h_", "bbr\\n", "../x"] {
            let text = format!("state_dir = \"/x\"\n[listen]\ntcp_congestion_control = \"{bad}\"");
            let Err(e) = load(&text) else {
                panic!("{bad:?} must be refused");
            };
            assert!(
                e.to_string().contains("listen.tcp_congestion_control"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn bad_value_is_named() {
        let Err(e) = load("state_dir = \"/x\"\n[listen]\nhttps = \"nope\"") else {
            panic!("bad address must be refused");
        };
        assert!(e.to_string().contains("listen.https"), "{e}");
    }

    #[test]
    fn stream_window_is_configurable_within_the_connection_window() {
        let Ok(c) = load("state_dir = \"/x\"") else {
            panic!("minimal config must load");
        };
        assert_eq!(c.tuning.stream_window, 2 * 1024 * 1024);
        for (value, ok) in [
            (8_388_608u64, true),
            (65_536, true),
            (65_535, false),
            (1 << 26, false),
        ] {
            let text = format!("state_dir = \"/x\"\n[tunnel]\nstream_window = {value}");
            match load(&text) {
                Ok(c) if ok => assert_eq!(u64::from(c.tuning.stream_window), value),
                Ok(_) => panic!("{value} must be refused"),
                Err(e) if !ok => assert!(e.to_string().contains("tunnel.stream_window"), "{e}"),
                Err(e) => panic!("{value}: {e}"),
            }
        }
    }

    #[test]
    fn ack_delay_defaults_to_5ms_and_stays_within_quic_bounds() {
        let Ok(c) = load("state_dir = \"/x\"") else {
            panic!("minimal config must load");
        };
        assert_eq!(c.tuning.ack_delay, Duration::from_millis(5));
        for (value, want) in [
            ("1ms", Some(Duration::from_millis(1))),
            ("25ms", Some(Duration::from_millis(25))),
            ("0s", None),
            ("26ms", None),
        ] {
            let text = format!("state_dir = \"/x\"\n[tunnel]\nack_delay = \"{value}\"");
            match (load(&text), want) {
                (Ok(c), Some(want)) => assert_eq!(c.tuning.ack_delay, want, "{value}"),
                (Ok(_), None) => panic!("{value} must be refused"),
                (Err(e), None) => assert!(e.to_string().contains("tunnel.ack_delay"), "{e}"),
                (Err(e), Some(_)) => panic!("{value}: {e}"),
            }
        }
    }

    #[test]
    fn congestion_control_parses_and_refuses_unknown() {
        let Ok(c) = load("state_dir = \"/x\"") else {
            panic!("minimal config must load");
        };
        assert_eq!(c.tuning.congestion, transport::Congestion::LossTolerant);
        for (value, want) in [
            ("cubic", transport::Congestion::Cubic),
            ("bbr", transport::Congestion::Bbr),
            ("loss_tolerant", transport::Congestion::LossTolerant),
        ] {
            let text = format!("state_dir = \"/x\"\n[tunnel]\ncongestion_control = \"{value}\"");
            match load(&text) {
                Ok(c) => assert_eq!(c.tuning.congestion, want, "{value}"),
                Err(e) => panic!("{value}: {e}"),
            }
        }
        for bad in ["\"BBR\"", "\"reno\"", "\"\"", "1"] {
            let text = format!("state_dir = \"/x\"\n[tunnel]\ncongestion_control = {bad}");
            let Err(e) = load(&text) else {
                panic!("{bad} must be refused");
            };
            assert!(e.to_string().contains("congestion_control"), "{bad}: {e}");
        }
    }

    #[test]
    fn invalid_limit_is_named() {
        let Err(e) = load("state_dir = \"/x\"\n[limits]\nmax_connections = 0") else {
            panic!("zero must be refused");
        };
        assert!(e.to_string().contains("limits.max_connections"), "{e}");
    }

    #[test]
    fn h2_windows_are_bounded() {
        for (limits, key) in [
            ("h2_stream_window = 1000", "limits.h2_stream_window"),
            (
                "h2_connection_window = 2147483648",
                "limits.h2_connection_window",
            ),
            (
                "h2_stream_window = 8388608\nh2_connection_window = 4194304",
                "limits.h2_connection_window",
            ),
        ] {
            let Err(e) = load(&format!("state_dir = \"/x\"\n[limits]\n{limits}")) else {
                panic!("{limits} must be refused");
            };
            assert!(e.to_string().contains(key), "{e}");
        }
        let Ok(c) = load("state_dir = \"/x\"\n[limits]\nh2_connection_window = 16777216") else {
            panic!("a bigger connection window must load");
        };
        assert_eq!(c.limits.h2_connection_window, 16 << 20);
    }

    #[test]
    fn response_queue_websockets_and_cache_are_checked() {
        for (body, key) in [
            (
                "[limits]\nh2_response_queue = 1000",
                "limits.h2_response_queue",
            ),
            (
                "[limits]\nh2_max_websockets = 129",
                "limits.h2_max_websockets",
            ),
            ("[cache]\nmax_object = 0", "cache.max_object"),
            (
                "[cache]\nmax_bytes = 1000\nmax_object = 2000",
                "cache.max_object",
            ),
            ("[cache]\nmax_ttl = \"0s\"", "cache.max_ttl"),
            ("[cache]\nmax_entries = 5", "max_entries"),
        ] {
            let Err(e) = load(&format!("state_dir = \"/x\"\n{body}")) else {
                panic!("{body} must be refused");
            };
            assert!(e.to_string().contains(key), "{body}: {e}");
        }
        // 0 switches each off.
        let Ok(c) = load(
            "state_dir = \"/x\"\n[limits]\nh2_response_queue = 0\nh2_max_websockets = 0\n\
             [cache]\nmax_bytes = 0\nmax_object = 0",
        ) else {
            panic!("zeros must load");
        };
        assert_eq!(
            (
                c.limits.h2_response_queue,
                c.limits.h2_max_websockets,
                c.cache.max_bytes
            ),
            (0, 0, 0)
        );
        let Ok(c) = load("state_dir = \"/x\"") else {
            panic!("defaults must load");
        };
        assert_eq!(c.cache, RawCache::default());
        assert_eq!(c.limits.h2_response_queue, 256 * 1024);
    }

    #[test]
    fn acme_is_off_without_email_and_on_with_it() {
        let Ok(c) = load("state_dir = \"/x\"") else {
            panic!("minimal config must load");
        };
        assert!(c.acme.is_none());
        // What `doorless-edge setup` writes.
        let Ok(c) = load("state_dir = \"/x\"\n[acme]\nemail = \"you@example.com\"") else {
            panic!("[acme] email must load");
        };
        let acme = c.acme.as_ref().map(|a| (a.contact(), a.directory_url()));
        assert_eq!(acme, Some(("you@example.com", acme::LETS_ENCRYPT)));
        let Ok(c) = load(
            "state_dir = \"/x\"\n[acme]\nemail = \"a@b.example\"\nstaging = true\nrenew_at = 0.5\nretry_initial = \"1s\"",
        ) else {
            panic!("staging must load");
        };
        let acme = c.acme.as_ref();
        assert_eq!(
            acme.map(|a| a.directory_url()),
            Some(acme::LETS_ENCRYPT_STAGING)
        );
        assert_eq!(acme.map(|a| a.renewal_policy().renew_at), Some(0.5));
        assert_eq!(
            acme.map(|a| a.renewal_policy().retry_initial),
            Some(Duration::from_secs(1))
        );
        let Ok(c) = load("state_dir = \"/x\"\n[acme]\nemail = \"a@b.example\"\nenabled = false")
        else {
            panic!("enabled = false must load");
        };
        assert!(c.acme.is_none());
    }

    #[test]
    fn acme_mistakes_are_named() {
        for (body, key) in [
            ("email = \"nope\"", "acme.email"),
            ("enabled = true", "acme.email"),
            (
                "email = \"a@b.example\"\ndirectory = \"http://ca.example/dir\"",
                "acme.directory",
            ),
            (
                "email = \"a@b.example\"\ndirectory = \"https://ca.example/dir\"\nstaging = true",
                "acme.staging",
            ),
            ("email = \"a@b.example\"\neab_kid = \"k\"", "acme.eab_kid"),
            (
                "email = \"a@b.example\"\neab_kid = \"k\"\neab_hmac_key = \"***\"",
                "acme.eab_kid",
            ),
            (
                "email = \"a@b.example\"\nextra_roots = \"/nonexistent/roots.pem\"",
                "acme.extra_roots",
            ),
            ("email = \"a@b.example\"\nrenew_at = 1.5", "acme.renew_at"),
            ("email = \"a@b.example\"\nemial = \"x\"", "emial"),
        ] {
            let Err(e) = load(&format!("state_dir = \"/x\"\n[acme]\n{body}")) else {
                panic!("{body:?} must be refused");
            };
            assert!(e.to_string().contains(key), "{body:?}: {e}");
        }
    }

    #[test]
    fn deploy_example_matches_defaults() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/edge.toml.example"
        );
        let figment = Figment::new().merge(Toml::file_exact(path));
        let Ok(c) = Config::from_figment(figment, path) else {
            panic!("the deploy example must load");
        };
        let d = RawLimits::default();
        assert_eq!(c.limits.upstream_timeout, d.upstream_timeout);
        assert_eq!(c.limits.max_header_bytes, d.max_header_bytes);
        assert_eq!(c.listen.admin, RawListen::default().admin);
        assert_eq!(c.tuning, transport::Tuning::default());
    }
}
