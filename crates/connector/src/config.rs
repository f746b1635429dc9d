//! Connector configuration: `RawConfig` mirrors the TOML file; [`Config`] is the validated form.
//!
//! Layers, later wins: defaults, the TOML file (optional: everything can come from the
//! environment), then `DOORLESS_*` variables (nested keys joined with `__`). The two that
//! matter most have short forms: `DOORLESS_TOKEN` and `DOORLESS_UPSTREAM`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use http::Uri;
use serde::{Deserialize, Serialize};

pub use daemon::{ConfigError, LogFormat, RawLog};

const ENV_KEYS: &[&str] = &[
    "enrollment_code",
    "state_dir",
    "token",
    "token_file",
    "edges",
    "tcp_edges",
    "transport",
    "upstream",
    "upstream_ca",
    "upstream_pin_sha256",
    "upstream_tls_insecure",
    "connections",
    "listen",
    "limits",
    "tunnel",
    "reconnect",
    "log",
];

/// A secret string: never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

/// The connector configuration as written in the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// One-time enrollment code printed by `doorless-edge site add` / `site code` (a secret
    /// until used). `run` enrolls with it once and keeps the credentials in `state_dir`; once
    /// enrolled it is ignored.
    #[serde(default)]
    pub enrollment_code: Option<Secret>,
    /// Where the connector keeps the credentials it enrolled with a code.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Enrollment token printed by `doorless-edge site add` (a secret).
    #[serde(default)]
    pub token: Option<Secret>,
    /// File holding the enrollment token (alternative to `token`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Edge tunnel addresses (HOST:PORT), overriding those in the token. Also accepted as one
    /// comma-separated string, the form `DOORLESS_EDGES=host:port,host:port` arrives in.
    #[serde(default, deserialize_with = "list_or_commas")]
    pub edges: Vec<String>,
    /// Which tunnel transport to use: `auto` (QUIC, falling back to TLS over TCP when UDP is
    /// blocked, and back to QUIC when it works again), `quic` or `tcp`.
    #[serde(default)]
    pub transport: TransportPolicy,
    /// The edges' HTTPS addresses (HOST:PORT) for the TLS/TCP transport, in the order of
    /// `edges`. Default: the same HOST:PORT as each edge (the edge serves both on 443).
    #[serde(default)]
    pub tcp_edges: Vec<String>,
    /// Home Assistant's base URL, `http://HOST:PORT` or `https://HOST:PORT`.
    #[serde(default = "default_upstream")]
    pub upstream: String,
    /// An `https://` upstream: verify its certificate against this CA file (PEM) instead of
    /// the system's trust store.
    #[serde(default)]
    pub upstream_ca: Option<PathBuf>,
    /// An `https://` upstream: trust exactly the certificate with this SHA-256 (hex, of the
    /// DER; colons allowed) instead of the system's trust store.
    #[serde(default)]
    pub upstream_pin_sha256: Option<String>,
    /// An `https://` upstream: accept any certificate (self-signed). Anyone on the path to
    /// Home Assistant can then read and change its traffic; logged as a warning at start.
    #[serde(default)]
    pub upstream_tls_insecure: bool,
    /// QUIC connections kept to each edge (≥ 1; 2 rides out one connection's loss).
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Listening addresses.
    #[serde(default)]
    pub listen: RawListen,
    /// Limits and timeouts towards Home Assistant.
    #[serde(default)]
    pub limits: RawLimits,
    /// QUIC tunnel settings.
    #[serde(default)]
    pub tunnel: RawTunnel,
    /// Reconnect backoff.
    #[serde(default)]
    pub reconnect: RawReconnect,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
}

impl Default for RawConfig {
    /// What an empty file means: no token yet, every other key at its documented default.
    fn default() -> Self {
        Self {
            enrollment_code: None,
            state_dir: default_state_dir(),
            token: None,
            token_file: None,
            edges: Vec::new(),
            transport: TransportPolicy::default(),
            tcp_edges: Vec::new(),
            upstream: default_upstream(),
            upstream_ca: None,
            upstream_pin_sha256: None,
            upstream_tls_insecure: false,
            connections: default_connections(),
            listen: RawListen::default(),
            limits: RawLimits::default(),
            tunnel: RawTunnel::default(),
            reconnect: RawReconnect::default(),
            log: RawLog::default(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/doorless-connector")
}

fn default_upstream() -> String {
    "http://homeassistant:8123".into()
}

fn default_connections() -> usize {
    2
}

/// `transport`: which tunnel transport a connection slot uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportPolicy {
    /// QUIC first; TLS/TCP after a bounded QUIC failure (no answer within a few seconds, or
    /// UDP refused by the host); back to QUIC once it has worked for `reconnect.stable`.
    #[default]
    Auto,
    /// QUIC only (UDP).
    Quic,
    /// TLS over TCP only (the edge's HTTPS port).
    Tcp,
}

/// `[listen]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawListen {
    /// Admin listener: `/healthz`, `/readyz`, `/status`. Keep it on loopback.
    pub admin: SocketAddr,
}

impl Default for RawListen {
    fn default() -> Self {
        Self {
            admin: SocketAddr::from(([127, 0, 0, 1], 9471)),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    /// Time to connect to Home Assistant; then the edge answers 502.
    #[serde(with = "humantime_serde")]
    pub upstream_connect_timeout: Duration,
    /// An `https://` upstream: time for the TLS handshake once TCP is connected; then the
    /// edge answers 504 (Home Assistant is there but does not answer, like a slow response).
    #[serde(with = "humantime_serde")]
    pub upstream_tls_handshake_timeout: Duration,
    /// Time Home Assistant has to send a response head; then the edge answers 504.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// Concurrent streams (requests + WebSockets) the edge may open per connection.
    pub max_streams: u32,
    /// Idle keep-alive connections kept to Home Assistant.
    pub pool_max_idle: usize,
    /// How long an idle pooled connection to Home Assistant is kept; stays below aiohttp's
    /// keep-alive so we never reuse a connection HA is closing.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A body that moves no byte for this long ends its stream: Home Assistant's response
    /// stalled mid-body (the edge's client sees it cut off), or the edge's request body.
    /// Far above the 50 s between Home Assistant's event-stream pings.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            upstream_connect_timeout: Duration::from_secs(10),
            upstream_tls_handshake_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(90),
            max_streams: 1024,
            pool_max_idle: 32,
            pool_idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(300),
        }
    }
}

/// `[tunnel]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTunnel {
    /// Keep-alive interval; must stay under the home NAT's UDP timeout.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// A connection silent for this long is dead and is redialled.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Requested UDP socket buffer size in bytes.
    pub udp_buffer: usize,
    /// QUIC congestion controller for what this end sends: `loss_tolerant` (default), `cubic`
    /// or `bbr`.
    pub congestion_control: transport::Congestion,
    /// The longest the peer may hold back the ACK of a lone packet (1–25 ms).
    #[serde(with = "humantime_serde")]
    pub ack_delay: Duration,
    /// QUIC receive window per stream, in bytes: bounds one stream's uploads (what the edge sends) to this per
    /// round trip, and what one slow reader can make this end buffer ([`STREAM_WINDOW`]).
    pub stream_window: u32,
}

/// The connector's default `tunnel.stream_window`: 8 MiB, where the edge keeps transport's
/// 2 MiB. On this end the window bounds only uploads (request bodies the edge sends), one
/// window per tunnel round trip: 2 MiB held one upload at 18.5 MB/s at 80 ms per leg where
/// nginx+rathole moved 28 (0.66×), and at 36–40 MB/s at 20 ms with 1 % loss where it moved
/// 60; with 8 MiB 28.2–28.7 and 62.5–63.8 MB/s (two alternating rounds each,
/// docs/benchmarks.md). What the window costs is memory while the reader lags, and the
/// reader here is Home Assistant on the LAN: the connector's peak RSS during a 100 MB upload
/// was the same 23 MB with either (the window never filled). The edge keeps 2 MiB because
/// its reader is a phone, which does lag, and there quinn's copying of a stream buffer that
/// holds more than 2,048 packets cost 30–50 MiB (`transport::Tuning::stream_window`).
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;

impl Default for RawTunnel {
    fn default() -> Self {
        let t = transport::Tuning::default();
        Self {
            keep_alive: t.keep_alive,
            idle_timeout: t.idle_timeout,
            udp_buffer: t.udp_buffer,
            congestion_control: t.congestion,
            ack_delay: t.ack_delay,
            stream_window: STREAM_WINDOW,
        }
    }
}

/// `[reconnect]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReconnect {
    /// First backoff step.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Backoff cap.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// A connection that stayed up this long resets the backoff.
    #[serde(with = "humantime_serde")]
    pub stable: Duration,
}

impl Default for RawReconnect {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
            stable: Duration::from_secs(60),
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The credentials: from the enrollment token, or stored by enrolling with a code.
    pub token: pki::EnrollmentToken,
    /// Where the credentials came from.
    pub credentials: Credentials,
    /// Edge addresses to dial.
    pub edges: Vec<String>,
    /// Transport policy.
    pub transport: TransportPolicy,
    /// Each edge's HTTPS address for TLS/TCP (same order and length as `edges`).
    pub tcp_edges: Vec<String>,
    /// Upstream base URI (scheme http or https, authority).
    pub upstream: Uri,
    /// How an `https://` upstream's certificate is verified.
    pub upstream_tls: UpstreamTls,
    /// Connections per edge.
    pub connections: usize,
    /// Listening addresses.
    pub listen: RawListen,
    /// Limits.
    pub limits: RawLimits,
    /// Tunnel transport settings.
    pub tuning: transport::Tuning,
    /// Reconnect backoff.
    pub reconnect: RawReconnect,
    /// Logging.
    pub log: RawLog,
}

/// How the upstream's TLS certificate is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTls {
    /// `http://`: no TLS.
    Plain,
    /// `https://`, verified against the system's trust store (the default).
    SystemRoots,
    /// `https://`, verified against the CA certificates of `upstream_ca`.
    Ca {
        /// The file they came from.
        path: PathBuf,
        /// The certificates in it.
        certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    },
    /// `https://`, exactly the certificate with this SHA-256 (`upstream_pin_sha256`).
    Pin([u8; 32]),
    /// `https://`, any certificate (`upstream_tls_insecure`).
    Insecure,
}

/// Where a connector's credentials came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// `token` or `token_file`.
    Token,
    /// Enrolled with a code earlier, stored in `state_dir`.
    Enrolled {
        /// An `enrollment_code` is configured too, and ignored (worth an info line).
        code_ignored: bool,
    },
}

/// A code to enroll with before running: configured, and not the one the stored credentials
/// (if any) came from.
#[derive(Debug, Clone)]
pub struct PendingEnrollment {
    /// The code, parsed.
    pub code: pki::EnrollmentCode,
    /// Where to store the credentials.
    pub state_dir: PathBuf,
    /// `state_dir` already holds credentials: the code is a renewal (or a re-enrollment) that
    /// replaces them once it succeeds. If it fails, `run` goes on with the stored ones.
    pub replaces: bool,
}

impl RawConfig {
    /// The layers `Config::load` reads, unvalidated, with a name for messages.
    fn layers(path: Option<&Path>) -> (Figment, String) {
        let mut figment = Figment::new();
        let source = match path {
            Some(p) => {
                figment = figment.merge(Toml::file_exact(p));
                p.display().to_string()
            }
            None => "environment".to_owned(),
        };
        (figment.merge(daemon::env(ENV_KEYS)), source)
    }
}

impl Config {
    /// Loads `path` if given (it must then exist), applies `DOORLESS_*` env, validates.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let (figment, source) = RawConfig::layers(path);
        Self::from_figment(figment, &source)
    }

    /// The enrollment `run` must do before [`Config::load`]: an `enrollment_code` is set, no
    /// token, and `state_dir` holds no credentials yet, or credentials that came from another
    /// code (a renewal code from `doorless-edge client renew` pasted where the first code
    /// was). The code the stored credentials came from is ignored.
    pub fn pending_enrollment(
        path: Option<&Path>,
    ) -> Result<Option<PendingEnrollment>, ConfigError> {
        let (figment, source) = RawConfig::layers(path);
        let raw: RawConfig = figment.extract().map_err(ConfigError::parse)?;
        let Some(code) = raw
            .enrollment_code
            .as_ref()
            .filter(|c| !c.0.trim().is_empty())
        else {
            return Ok(None);
        };
        if raw.token.is_some() || raw.token_file.is_some() {
            return Ok(None);
        }
        let invalid = |key: &str, problem: String| ConfigError::invalid(&source, key, problem);
        let enrolled = pki::load_enrolled(&raw.state_dir)
            .map_err(|e| invalid("state_dir", e.to_string()))?
            .is_some();
        let code = pki::EnrollmentCode::parse(&code.0)
            .map_err(|e| invalid("enrollment_code", e.to_string()))?;
        if enrolled
            && pki::enrolled_with(&raw.state_dir, &code.keys().id)
                .map_err(|e| invalid("state_dir", e.to_string()))?
                == Some(true)
        {
            return Ok(None);
        }
        Ok(Some(PendingEnrollment {
            code,
            state_dir: raw.state_dir,
            replaces: enrolled,
        }))
    }

    /// An in-process connector (the demo's): enrolled with `token`, forwarding to `upstream`
    /// (`http://HOST:PORT`), its admin listener on `admin`, every other key at its default.
    /// Validated exactly like a file.
    pub fn new(
        token: &pki::EnrollmentToken,
        upstream: &str,
        admin: SocketAddr,
    ) -> Result<Self, ConfigError> {
        Self::from_raw(RawConfig {
            token: Some(Secret(token.encode())),
            upstream: upstream.to_owned(),
            listen: RawListen { admin },
            ..RawConfig::default()
        })
    }

    /// Validates an in-memory `RawConfig` (used by tests).
    pub fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Serialized::defaults(raw)), "built-in")
    }

    fn from_figment(figment: Figment, source: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = figment.extract().map_err(ConfigError::parse)?;
        let invalid = |key: &str, problem: String| ConfigError::invalid(source, key, problem);
        let code = raw
            .enrollment_code
            .as_ref()
            .is_some_and(|c| !c.0.trim().is_empty());
        let token_text = match (&raw.token, &raw.token_file) {
            (Some(t), None) => Some((t.0.clone(), "token")),
            (None, Some(f)) => Some((
                std::fs::read_to_string(f)
                    .map_err(|e| invalid("token_file", format!("{}: {e}", f.display())))?,
                "token_file",
            )),
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "token",
                    "set either token or token_file, not both".into(),
                ));
            }
            (None, None) => None,
        };
        let (token, credentials) = match token_text {
            Some(_) if code => {
                return Err(invalid(
                    "enrollment_code",
                    "set either an enrollment code or a token, not both".into(),
                ));
            }
            Some((text, key)) => (
                pki::EnrollmentToken::decode(&text).map_err(|e| invalid(key, e.to_string()))?,
                Credentials::Token,
            ),
            None => match pki::load_enrolled(&raw.state_dir)
                .map_err(|e| invalid("state_dir", e.to_string()))?
            {
                Some(token) => (token, Credentials::Enrolled { code_ignored: code }),
                None if code => {
                    return Err(invalid(
                        "enrollment_code",
                        format!(
                            "not enrolled yet ({} holds no credentials): `doorless-connector run` \
                             enrolls with the code first, or run `doorless-connector enroll CODE`",
                            raw.state_dir.display()
                        ),
                    ));
                }
                None => {
                    return Err(invalid(
                        "enrollment_code",
                        "missing: paste the enrollment code from `doorless-edge site add` \
                         (DOORLESS_ENROLLMENT_CODE), or set a `token`"
                            .into(),
                    ));
                }
            },
        };
        let upstream: Uri = raw
            .upstream
            .parse()
            .map_err(|e| invalid("upstream", format!("not a URL: {e}")))?;
        let https = match upstream.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(invalid(
                    "upstream",
                    "must be http://HOST:PORT or https://HOST:PORT (e.g. http://homeassistant:8123)"
                        .into(),
                ));
            }
        };
        if upstream.authority().is_none() {
            return Err(invalid(
                "upstream",
                "must be http://HOST:PORT or https://HOST:PORT (e.g. http://homeassistant:8123)"
                    .into(),
            ));
        }
        if upstream.path() != "/" && !upstream.path().is_empty() {
            return Err(invalid("upstream", "must not have a path".into()));
        }
        let upstream_tls = upstream_tls(&raw, https, &invalid)?;
        if raw.connections == 0 || raw.connections > 16 {
            return Err(invalid("connections", "must be between 1 and 16".into()));
        }
        let edges = if raw.edges.is_empty() {
            token.edges.clone()
        } else {
            raw.edges.clone()
        };
        if let Some(bad) = edges.iter().find(|e| !looks_like_host_port(e)) {
            return Err(invalid("edges", format!("`{bad}` is not HOST:PORT")));
        }
        let tcp_edges = if raw.tcp_edges.is_empty() {
            edges.clone()
        } else {
            raw.tcp_edges.clone()
        };
        if tcp_edges.len() != edges.len() {
            return Err(invalid(
                "tcp_edges",
                format!("must name one address per edge ({} edges)", edges.len()),
            ));
        }
        if let Some(bad) = tcp_edges.iter().find(|e| !looks_like_host_port(e)) {
            return Err(invalid("tcp_edges", format!("`{bad}` is not HOST:PORT")));
        }
        if raw.limits.max_streams == 0 {
            return Err(invalid("limits.max_streams", "must be at least 1".into()));
        }
        if raw.limits.upstream_tls_handshake_timeout.is_zero() {
            return Err(invalid(
                "limits.upstream_tls_handshake_timeout",
                "must be greater than zero".into(),
            ));
        }
        if raw.limits.body_idle_timeout.is_zero() {
            return Err(invalid(
                "limits.body_idle_timeout",
                "must be greater than zero".into(),
            ));
        }
        if raw.tunnel.idle_timeout <= raw.tunnel.keep_alive {
            return Err(invalid(
                "tunnel.idle_timeout",
                "must be longer than tunnel.keep_alive".into(),
            ));
        }
        if raw.reconnect.initial.is_zero() || raw.reconnect.max < raw.reconnect.initial {
            return Err(invalid(
                "reconnect.max",
                "need 0 < reconnect.initial <= reconnect.max".into(),
            ));
        }
        let tuning = transport::Tuning {
            keep_alive: raw.tunnel.keep_alive,
            idle_timeout: raw.tunnel.idle_timeout,
            udp_buffer: raw.tunnel.udp_buffer,
            congestion: raw.tunnel.congestion_control,
            ack_delay: raw.tunnel.ack_delay,
            stream_window: raw.tunnel.stream_window,
            max_incoming_streams: raw.limits.max_streams,
            ..transport::Tuning::default()
        };
        tuning
            .check()
            .map_err(|(key, problem)| invalid(key, problem))?;
        Ok(Self {
            token,
            credentials,
            edges,
            transport: raw.transport,
            tcp_edges,
            upstream,
            upstream_tls,
            connections: raw.connections,
            listen: raw.listen,
            limits: raw.limits,
            tuning,
            reconnect: raw.reconnect,
            log: raw.log,
        })
    }
}

/// The upstream's TLS verification from the three keys: at most one of them, and only with an
/// `https://` upstream (a key that would be silently ignored is refused by name).
fn upstream_tls(
    raw: &RawConfig,
    https: bool,
    invalid: &dyn Fn(&str, String) -> ConfigError,
) -> Result<UpstreamTls, ConfigError> {
    let given: Vec<&str> = [
        ("upstream_ca", raw.upstream_ca.is_some()),
        ("upstream_pin_sha256", raw.upstream_pin_sha256.is_some()),
        ("upstream_tls_insecure", raw.upstream_tls_insecure),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect();
    if let Some(first) = given.first()
        && !https
    {
        return Err(invalid(
            first,
            "only applies to an https:// upstream; `upstream` is http://".into(),
        ));
    }
    if let [first, second, ..] = given.as_slice() {
        return Err(invalid(
            second,
            format!("conflicts with `{first}`: choose one way to trust the upstream"),
        ));
    }
    if !https {
        return Ok(UpstreamTls::Plain);
    }
    if let Some(path) = &raw.upstream_ca {
        use rustls::pki_types::pem::PemObject as _;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| invalid("upstream_ca", format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(invalid(
                "upstream_ca",
                format!("{}: no PEM certificate in it", path.display()),
            ));
        }
        return Ok(UpstreamTls::Ca {
            path: path.clone(),
            certs,
        });
    }
    if let Some(hex) = &raw.upstream_pin_sha256 {
        return parse_sha256(hex).map(UpstreamTls::Pin).ok_or_else(|| {
            invalid(
                "upstream_pin_sha256",
                "must be 64 hex digits (the certificate's SHA-256; colons allowed)".into(),
            )
        });
    }
    if raw.upstream_tls_insecure {
        return Ok(UpstreamTls::Insecure);
    }
    Ok(UpstreamTls::SystemRoots)
}

/// 32 bytes from 64 hex digits, optionally colon-separated (as `openssl x509 -fingerprint`
/// prints them).
fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let digits: Vec<u8> = hex.bytes().filter(|&b| b != b':').collect();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

/// A list of strings, or one string of comma-separated items (spaces around them trimmed).
/// An empty item is kept, so `a:1,,b:2` is refused by the HOST:PORT check rather than read as
/// two addresses.
fn list_or_commas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCommas {
        List(Vec<String>),
        Commas(String),
    }
    Ok(match ListOrCommas::deserialize(d)? {
        ListOrCommas::List(list) => list,
        ListOrCommas::Commas(text) => text.split(',').map(|e| e.trim().to_owned()).collect(),
    })
}

fn looks_like_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_token_is_named() {
        let Err(e) = Config::from_figment(Figment::new(), "test") else {
            panic!("a config without a token must be refused");
        };
        assert!(e.to_string().contains("`token`"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let figment = Figment::new().merge(Toml::string("tokn = \"x\""));
        let Err(e) = Config::from_figment(figment, "test") else {
            panic!("typo must be refused");
        };
        assert!(e.to_string().contains("tokn"), "{e}");
    }

    #[test]
    fn raw_default_is_an_empty_file() {
        let empty: RawConfig = match Figment::new().extract() {
            Ok(raw) => raw,
            Err(e) => panic!("an empty file must parse: {e}"),
        };
        let json = |raw: &RawConfig| serde_json::to_value(raw).map_err(|e| e.to_string());
        assert_eq!(json(&RawConfig::default()), json(&empty));
    }

    #[test]
    fn new_is_token_upstream_admin_and_defaults() {
        let issue = || -> Result<_, Box<dyn std::error::Error>> {
            let dir = tempfile::tempdir()?;
            let state = pki::StateDir::init(dir.path(), &pki::InitOptions::default())?;
            state.add_site("demo", &["home.localhost".to_owned()])?;
            Ok(state.issue_connector("demo", None)?)
        };
        let token = match issue() {
            Ok(token) => token,
            Err(e) => panic!("issuing a token: {e}"),
        };
        let admin = SocketAddr::from(([127, 0, 0, 1], 0));
        let config = match Config::new(&token, "http://127.0.0.1:8123", admin) {
            Ok(config) => config,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(config.token, token);
        assert_eq!(config.edges, token.edges);
        assert_eq!(config.upstream, "http://127.0.0.1:8123/");
        assert_eq!(config.listen.admin, admin);
        assert_eq!(config.connections, default_connections());
        assert_eq!(config.reconnect.max, RawReconnect::default().max);
        // Uploads get the connector's wider window, not the edge's.
        assert_eq!(config.tuning.stream_window, STREAM_WINDOW);
        assert!(STREAM_WINDOW > transport::Tuning::default().stream_window);
        // Validated like a file: a bad upstream is refused by name.
        let Err(e) = Config::new(&token, "ftp://ha:8123", admin) else {
            panic!("an ftp upstream must be refused");
        };
        assert!(e.to_string().contains("`upstream`"), "{e}");
        // An https upstream is verified against the system's roots unless told otherwise.
        match Config::new(&token, "https://ha.example.org:8123", admin) {
            Ok(config) => assert_eq!(config.upstream_tls, UpstreamTls::SystemRoots),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn upstream_tls_options_one_at_a_time_and_only_for_https() {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("{e}"),
        };
        let issue = || -> Result<_, Box<dyn std::error::Error>> {
            let state = pki::StateDir::init(dir.path(), &pki::InitOptions::default())?;
            state.add_site("demo", &["home.localhost".to_owned()])?;
            Ok(state.issue_connector("demo", None)?)
        };
        let token = match issue() {
            Ok(token) => token,
            Err(e) => panic!("issuing a token: {e}"),
        };
        let ca = dir.path().join("ca.pem");
        let cert = match rcgen::generate_simple_self_signed(vec!["ha.local".to_owned()]) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        if let Err(e) = std::fs::write(&ca, cert.cert.pem()) {
            panic!("{e}");
        }
        let empty = dir.path().join("empty.pem");
        if let Err(e) = std::fs::write(&empty, "not a certificate\n") {
            panic!("{e}");
        }
        let pin = "ab".repeat(32);
        let with = |upstream: &str, edit: &dyn Fn(&mut RawConfig)| {
            let mut raw = RawConfig {
                token: Some(Secret(token.encode())),
                upstream: upstream.to_owned(),
                ..RawConfig::default()
            };
            edit(&mut raw);
            Config::from_raw(raw)
        };
        let refused = |result: Result<Config, ConfigError>, key: &str| match result {
            Ok(_) => panic!("must be refused naming `{key}`"),
            Err(e) => assert!(e.to_string().contains(&format!("`{key}`")), "{key}: {e}"),
        };
        let ok = |result: Result<Config, ConfigError>| match result {
            Ok(config) => config.upstream_tls,
            Err(e) => panic!("{e}"),
        };
        let https = "https://192.168.1.10:8123";
        assert_eq!(
            ok(with(https, &|r| r.upstream_pin_sha256 = Some(pin.clone()))),
            UpstreamTls::Pin([0xab; 32])
        );
        let colons = ["AB"; 32].join(":");
        assert_eq!(
            ok(with(https, &|r| r.upstream_pin_sha256 = Some(colons.clone()))),
            UpstreamTls::Pin([0xab; 32])
        );
        assert_eq!(
            ok(with(https, &|r| r.upstream_tls_insecure = true)),
            UpstreamTls::Insecure
        );
        assert!(matches!(
            ok(with(https, &|r| r.upstream_ca = Some(ca.clone()))),
            UpstreamTls::Ca { certs, .. } if certs.len() == 1
        ));
        assert_eq!(ok(with("http://ha:8123", &|_| {})), UpstreamTls::Plain);
        // Conflicting ways to trust the upstream: the second one is named.
        refused(
            with(https, &|r| {
                r.upstream_ca = Some(ca.clone());
                r.upstream_tls_insecure = true;
            }),
            "upstream_tls_insecure",
        );
        refused(
            with(https, &|r| {
                r.upstream_ca = Some(ca.clone());
                r.upstream_pin_sha256 = Some(pin.clone());
            }),
            "upstream_pin_sha256",
        );
        refused(
            with(https, &|r| {
                r.upstream_pin_sha256 = Some(pin.clone());
                r.upstream_tls_insecure = true;
            }),
            "upstream_tls_insecure",
        );
        // A TLS option on an http upstream would be silently ignored: refused by name.
        refused(
            with("http://ha:8123", &|r| r.upstream_tls_insecure = true),
            "upstream_tls_insecure",
        );
        refused(
            with("http://ha:8123", &|r| r.upstream_ca = Some(ca.clone())),
            "upstream_ca",
        );
        // Bad values.
        refused(
            with(https, &|r| r.upstream_pin_sha256 = Some("abcd".into())),
            "upstream_pin_sha256",
        );
        refused(
            with(https, &|r| r.upstream_pin_sha256 = Some("zz".repeat(32))),
            "upstream_pin_sha256",
        );
        refused(
            with(https, &|r| r.upstream_ca = Some(empty.clone())),
            "upstream_ca",
        );
        // The handshake's own timeout: 10 s unless set, never zero.
        assert_eq!(
            RawLimits::default().upstream_tls_handshake_timeout,
            Duration::from_secs(10)
        );
        refused(
            with(https, &|r| {
                r.limits.upstream_tls_handshake_timeout = Duration::ZERO;
            }),
            "limits.upstream_tls_handshake_timeout",
        );
        refused(
            with(https, &|r| {
                r.upstream_ca = Some(dir.path().join("missing.pem"))
            }),
            "upstream_ca",
        );
    }

    #[test]
    fn transport_policy_and_tcp_edges() {
        let figment = Figment::new().merge(Toml::string("transport = \"tcp\""));
        let raw: RawConfig = match figment.extract() {
            Ok(raw) => raw,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(raw.transport, TransportPolicy::Tcp);
        assert_eq!(RawConfig::default().transport, TransportPolicy::Auto);
        let figment = Figment::new().merge(Toml::string("transport = \"udp\""));
        assert!(figment.extract::<RawConfig>().is_err());
    }

    #[test]
    fn congestion_control_parses_and_refuses_unknown() {
        let raw = |text: &str| {
            Figment::new()
                .merge(Toml::string(text))
                .extract::<RawConfig>()
                .map_err(|e| e.to_string())
        };
        match raw("") {
            Ok(r) => assert_eq!(
                r.tunnel.congestion_control,
                transport::Congestion::LossTolerant
            ),
            Err(e) => panic!("{e}"),
        }
        for (value, want) in [
            ("cubic", transport::Congestion::Cubic),
            ("bbr", transport::Congestion::Bbr),
            ("loss_tolerant", transport::Congestion::LossTolerant),
        ] {
            match raw(&format!("[tunnel]\ncongestion_control = \"{value}\"")) {
                Ok(r) => assert_eq!(r.tunnel.congestion_control, want, "{value}"),
                Err(e) => panic!("{value}: {e}"),
            }
        }
        for bad in ["\"BBR\"", "\"reno\"", "\"\"", "1"] {
            let Err(e) = raw(&format!("[tunnel]\ncongestion_control = {bad}")) else {
                panic!("{bad} must be refused");
            };
            assert!(e.contains("congestion_control"), "{bad}: {e}");
        }
    }

    #[test]
    fn edges_from_a_list_or_a_comma_separated_string() {
        let token = || -> Result<String, Box<dyn std::error::Error>> {
            let dir = tempfile::tempdir()?;
            let state = pki::StateDir::init(dir.path(), &pki::InitOptions::default())?;
            state.add_site("demo", &["home.localhost".to_owned()])?;
            Ok(state.issue_connector("demo", None)?.encode())
        };
        let token = match token() {
            Ok(token) => token,
            Err(e) => panic!("issuing a token: {e}"),
        };
        let load = |edges: &str| {
            let toml = format!("token = \"{token}\"\nedges = {edges}\n");
            Config::from_figment(Figment::new().merge(Toml::string(&toml)), "test")
        };
        let edges = |edges: &str| match load(edges) {
            Ok(config) => config.edges,
            Err(e) => panic!("{edges}: {e}"),
        };
        let both = vec!["a.example:443".to_owned(), "[2001:db8::1]:8443".to_owned()];
        assert_eq!(edges(r#"["a.example:443", "[2001:db8::1]:8443"]"#), both);
        // What DOORLESS_EDGES=a.example:443,[2001:db8::1]:8443 gives figment: one string.
        assert_eq!(edges(r#""a.example:443, [2001:db8::1]:8443""#), both);
        assert_eq!(
            edges(r#""a.example:443""#),
            vec!["a.example:443".to_owned()]
        );
        // Without the key, the token's edges.
        assert_eq!(
            edges("[]"),
            vec!["home.localhost:443".to_owned()],
            "an empty list keeps the token's edges"
        );
        for bad in [
            r#""a.example:443,,b.example:443""#,
            r#""a.example""#,
            r#""a:1,""#,
        ] {
            let Err(e) = load(bad) else {
                panic!("{bad} must be refused");
            };
            assert!(e.to_string().contains("`edges`"), "{e}");
        }
    }

    #[test]
    fn secret_is_not_printed() {
        let s = Secret("dl1.abc".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
    }

    #[test]
    fn host_port() {
        assert!(looks_like_host_port("edge.example.com:443"));
        assert!(looks_like_host_port("[::1]:443"));
        assert!(!looks_like_host_port("edge.example.com"));
        assert!(!looks_like_host_port(":443"));
        assert!(!looks_like_host_port("h:0"));
    }

    #[test]
    fn deploy_example_parses_with_defaults() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/connector.toml.example"
        );
        let figment = Figment::new().merge(Toml::file_exact(path));
        let raw: RawConfig = match figment.extract() {
            Ok(raw) => raw,
            Err(e) => panic!("the deploy example must parse: {e}"),
        };
        assert_eq!(raw.upstream, default_upstream());
        assert_eq!(raw.connections, default_connections());
        assert_eq!(
            raw.limits.upstream_timeout,
            RawLimits::default().upstream_timeout
        );
        assert_eq!(
            raw.limits.upstream_tls_handshake_timeout,
            RawLimits::default().upstream_tls_handshake_timeout
        );
        assert_eq!(raw.reconnect.max, RawReconnect::default().max);
        // The placeholder token is refused with a message naming the key.
        let Err(e) = Config::from_figment(Figment::new().merge(Toml::file_exact(path)), path)
        else {
            panic!("the placeholder token must be refused");
        };
        assert!(e.to_string().contains("`token`"), "{e}");
    }
}
