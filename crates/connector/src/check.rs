//! The self-check: `doorless-connector check`, also run (non-fatal) at every start.
//!
//! Three questions, each answered with one ✓/✗ line and, on failure, what to change:
//! 1. Is Home Assistant reachable at `upstream`? (a plain `GET /`, no forwarding headers)
//! 2. Does Home Assistant accept forwarded requests from us? (`GET /` with one
//!    `X-Forwarded-For`; HA answers 400 unless "use X-Forwarded-For" is on and our source
//!    address is in `trusted_proxies`, so on 400 we print the network to trust, both for the
//!    HA 2026.8+ UI and for the `http:` YAML of older versions.)
//! 3. For each edge: does it answer over the configured transport, accept our certificate, and
//!    welcome us? Timeouts, certificate refusals, pin mismatches and `Reject`s each get their
//!    own advice. With `transport = "auto"`, a QUIC attempt that gets no answer (UDP blocked)
//!    is followed by one over TLS/TCP, and the line says that UDP is blocked and that the
//!    connector uses TCP.
//!
//! The edge check registers for a moment like a real tunnel connection, with the same routine
//! (`register`; there is no other way to see a `Welcome`), announcing [`Purpose::Check`] so the
//! edge never routes a request to it; then it says `GoAway` at once and closes with
//! [`CloseCode::Normal`], so the edge logs an ordinary unregistration.
//!
//! The wording helpers ([`trusted_network`], [`proxy_advice`], [`classify_edge_failure`],
//! [`edge_advice`]) are pure and unit-tested; [`run`] does the I/O.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use proto::{CloseCode, GoAway, Hello, Purpose};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{info, warn};
use transport::{ClientEndpoint, TcpClient};

use crate::config::{Config, TransportPolicy};
use crate::register::{self, RegisterError, Registered};

/// The client address sent in the probe's `X-Forwarded-For` (TEST-NET-3, RFC 5737: never a
/// real client, never banned by anything that matters).
pub const PROBE_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

/// Software string sent in the check's `Hello`, so edge logs show it was a check.
const SOFTWARE: &str = concat!("doorless-connector/", env!("CARGO_PKG_VERSION"), " (check)");
const USER_AGENT_VALUE: &str = concat!("doorless-connector/", env!("CARGO_PKG_VERSION"), " check");

/// The Home Assistant add-on bridge network (`hassio`): 172.30.32.0/23.
const ADDON_BRIDGE: (Ipv4Addr, u8) = (Ipv4Addr::new(172, 30, 32, 0), 23);
/// What add-on users must trust: the add-ons' part of the bridge.
const ADDON_TRUSTED: &str = "172.30.33.0/24";

/// How long each check may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connect + response head for each request to Home Assistant.
    pub http: Duration,
    /// Resolving an edge, the QUIC handshake, and waiting for `Welcome` (each).
    pub quic: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            http: Duration::from_secs(10),
            quic: Duration::from_secs(10),
        }
    }
}

/// The result of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// It works.
    Pass,
    /// It does not; the detail says what to change.
    Fail,
    /// Not run, because an earlier check it depends on failed.
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckItem {
    /// What was checked, e.g. "Home Assistant reachable".
    pub name: String,
    /// Pass, fail or skip.
    pub status: Status,
    /// What was seen and, on failure, what to do; may span several lines.
    pub detail: String,
}

impl CheckItem {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Pass,
            detail: detail.into(),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
        }
    }

    fn skip(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Skip,
            detail: detail.into(),
        }
    }

    /// Whether this check passed.
    pub fn ok(&self) -> bool {
        self.status == Status::Pass
    }
}

impl fmt::Display for CheckItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Pass => "✓",
            Status::Fail => "✗",
            Status::Skip => "-",
        };
        let mut lines = self.detail.lines();
        write!(f, "{mark} {}", self.name)?;
        if let Some(first) = lines.next() {
            write!(f, ": {first}")?;
        }
        for line in lines {
            if line.is_empty() {
                writeln!(f)?;
            } else {
                write!(f, "\n    {line}")?;
            }
        }
        Ok(())
    }
}

/// Every check's result, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// One item per check.
    pub items: Vec<CheckItem>,
}

impl Report {
    /// Whether every check passed (skipped ones count as not passed).
    pub fn ok(&self) -> bool {
        !self.items.is_empty() && self.items.iter().all(CheckItem::ok)
    }

    /// Logs each item: passes at info, the rest at warn. Used at connector start.
    pub fn log(&self) {
        for item in &self.items {
            match item.status {
                Status::Pass => info!(check = %item.name, "self-check passed: {}", item.detail),
                Status::Fail => warn!(check = %item.name, "self-check failed: {}", item.detail),
                Status::Skip => warn!(check = %item.name, "self-check skipped: {}", item.detail),
            }
        }
    }
}

impl Status {
    /// Lowercase name, as `check --json` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Fail => "fail",
            Self::Skip => "skip",
        }
    }
}

impl Report {
    /// The report as `doorless-connector check --json` prints it. Keys are stable:
    /// `site`, `connector_id`, `upstream`, `ok`, `passed`, `failed`, `skipped`, and `checks`
    /// (in order, each `name`, `status` (`pass`, `fail`, `skip`) and `detail`).
    pub fn to_json(&self, config: &Config) -> serde_json::Value {
        let count = |s| self.items.iter().filter(|i| i.status == s).count();
        let checks: Vec<serde_json::Value> = self
            .items
            .iter()
            .map(|i| {
                serde_json::json!({
                    "name": i.name,
                    "status": i.status.as_str(),
                    "detail": i.detail,
                })
            })
            .collect();
        serde_json::json!({
            "site": config.token.site,
            "connector_id": config.token.connector_id,
            "upstream": config.upstream.to_string(),
            "ok": self.ok(),
            "passed": count(Status::Pass),
            "failed": count(Status::Fail),
            "skipped": count(Status::Skip),
            "checks": checks,
        })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.items {
            writeln!(f, "{item}")?;
        }
        let count = |s| self.items.iter().filter(|i| i.status == s).count();
        let (passed, failed, skipped) = (
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Skip),
        );
        write!(f, "{passed} passed, {failed} failed")?;
        if skipped > 0 {
            write!(f, ", {skipped} skipped")?;
        }
        if self.ok() {
            write!(f, ": all good")
        } else {
            write!(f, ": see above")
        }
    }
}

/// Runs every check against `config`: Home Assistant's two while the edges are dialled.
pub async fn run(config: &Config, timeouts: Timeouts) -> Report {
    let upstream = check_upstream(
        &config.upstream,
        &config.upstream_tls,
        config.limits.upstream_tls_handshake_timeout,
        timeouts.http,
    );
    let edges = futures_util::future::join_all(
        config
            .edges
            .iter()
            .zip(&config.tcp_edges)
            .map(|(edge, tcp_edge)| check_edge(config, edge, tcp_edge, timeouts.quic)),
    );
    let (mut items, edge_items) = tokio::join!(upstream, edges);
    items.extend(edge_items);
    Report { items }
}

// === Home Assistant ===

const REACHABLE: &str = "Home Assistant reachable";
const TRUSTS: &str = "Home Assistant trusts the connector as a proxy";

async fn check_upstream(
    upstream: &Uri,
    mode: &crate::config::UpstreamTls,
    handshake: Duration,
    limit: Duration,
) -> Vec<CheckItem> {
    // The same TLS configuration the forwarding client uses, so the check verifies what
    // forwarding will.
    let tls = match crate::upstream_tls::client_config(mode) {
        Ok(tls) => tls,
        Err(e) => {
            return vec![
                CheckItem::fail(REACHABLE, format!("{}: {e}", base(upstream))),
                CheckItem::skip(TRUSTS, "Home Assistant is not reachable"),
            ];
        }
    };
    let tls = tls.as_ref();
    let plain = match probe(upstream, tls, handshake, false, limit).await {
        Ok(p) => p,
        Err(e) => {
            return vec![
                CheckItem::fail(REACHABLE, unreachable_advice(upstream, &e)),
                CheckItem::skip(TRUSTS, "Home Assistant is not reachable"),
            ];
        }
    };
    let reachable = CheckItem::pass(
        REACHABLE,
        format!(
            "{} answered {} in {} ms",
            base(upstream),
            plain.status,
            plain.elapsed.as_millis()
        ),
    );
    let forwarded = match probe(upstream, tls, handshake, true, limit).await {
        Ok(p) => p,
        Err(e) => {
            return vec![
                reachable,
                CheckItem::fail(
                    TRUSTS,
                    format!(
                        "the request with X-Forwarded-For got no answer from {}: {e}",
                        base(upstream)
                    ),
                ),
            ];
        }
    };
    let source = canonical(forwarded.local.ip());
    let trusts = if forwarded.status != StatusCode::BAD_REQUEST {
        CheckItem::pass(
            TRUSTS,
            format!(
                "Home Assistant accepts forwarded requests from {source} (answered {})",
                forwarded.status
            ),
        )
    } else if plain.status == StatusCode::BAD_REQUEST {
        CheckItem::fail(
            TRUSTS,
            format!(
                "{} answers 400 even without forwarding headers, so this is not about \
                 trusted proxies: is {} really Home Assistant?",
                base(upstream),
                base(upstream)
            ),
        )
    } else {
        CheckItem::fail(TRUSTS, proxy_advice(source))
    };
    vec![reachable, trusts]
}

/// What one `GET /` to Home Assistant saw.
#[derive(Debug)]
struct Probe {
    status: StatusCode,
    /// Our end of the TCP connection: the address Home Assistant sees (barring NAT).
    local: SocketAddr,
    elapsed: Duration,
}

/// Why a probe got no HTTP answer.
#[derive(Debug)]
enum ProbeError {
    Timeout(Duration),
    Connect(std::io::Error),
    Tls(std::io::Error),
    /// Connected, but no TLS handshake within `limits.upstream_tls_handshake_timeout`.
    TlsTimeout(Duration),
    Http(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout(limit) => write!(f, "no answer within {} s", limit.as_secs_f32()),
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::Tls(e) => write!(
                f,
                "TLS handshake failed: {e} (see upstream_ca, upstream_pin_sha256 in docs/config.md)"
            ),
            Self::TlsTimeout(limit) => write!(
                f,
                "connected, but the TLS handshake did not complete within {} s \
                 (limits.upstream_tls_handshake_timeout): is `upstream` really an https:// \
                 server on that port?",
                limit.as_secs_f32()
            ),
            Self::Http(e) => write!(f, "{e}"),
        }
    }
}

/// `GET /` on a fresh connection, with the tunnel's forwarding headers if `forwarded`.
async fn probe(
    upstream: &Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
    handshake: Duration,
    forwarded: bool,
    limit: Duration,
) -> Result<Probe, ProbeError> {
    let started = Instant::now();
    tokio::time::timeout(limit, probe_inner(upstream, tls, handshake, forwarded))
        .await
        .map_err(|_| ProbeError::Timeout(limit))?
        .map(|(status, local)| Probe {
            status,
            local,
            elapsed: started.elapsed(),
        })
}

async fn probe_inner(
    upstream: &Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
    handshake: Duration,
    forwarded: bool,
) -> Result<(StatusCode, SocketAddr), ProbeError> {
    let authority = upstream
        .authority()
        .ok_or_else(|| ProbeError::Http("upstream has no host".into()))?;
    // `Authority::host` keeps IPv6 brackets; the resolver wants them off.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(ProbeError::Connect)?;
    let local = stream.local_addr().map_err(ProbeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, driver) = match tls {
        None => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ProbeError::Http(format!("HTTP handshake: {e}")))?;
            (sender, tokio::spawn(async move { conn.await.map(drop) }))
        }
        Some(tls) => {
            // SNI and the name check: the host, or (an IP address) no SNI and its IP SANs.
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| ProbeError::Http(format!("upstream host: {e}")))?;
            let connect = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, stream);
            let stream = tokio::time::timeout(handshake, connect)
                .await
                .map_err(|_| ProbeError::TlsTimeout(handshake))?
                .map_err(ProbeError::Tls)?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ProbeError::Http(format!("HTTP handshake: {e}")))?;
            (sender, tokio::spawn(async move { conn.await.map(drop) }))
        }
    };
    let mut request = Request::get("/")
        .header(HOST, authority.as_str())
        .header(USER_AGENT, USER_AGENT_VALUE);
    if forwarded {
        request = request
            .header("x-forwarded-for", PROBE_CLIENT_IP.to_string())
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", authority.as_str());
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Http(e.to_string()))?;
    let result = sender.send_request(request).await;
    driver.abort();
    let response = result.map_err(|e| ProbeError::Http(format!("no HTTP answer: {e}")))?;
    Ok((response.status(), local))
}

fn base(upstream: &Uri) -> String {
    match upstream.authority() {
        Some(a) => format!("{}://{a}", upstream.scheme_str().unwrap_or("http")),
        None => upstream.to_string(),
    }
}

fn unreachable_advice(upstream: &Uri, error: &ProbeError) -> String {
    format!(
        "{url}: {error}\n\
         Is Home Assistant running, and is the address right? The add-on uses \
         http://homeassistant:8123; elsewhere set `upstream` (or DOORLESS_UPSTREAM) to the \
         address this machine reaches Home Assistant at, e.g. http://192.168.1.10:8123.",
        url = base(upstream)
    )
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) as the IPv4 address HA logs.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The network Home Assistant should trust for a connector whose connections come from
/// `local`: the add-ons' `172.30.33.0/24` on the add-on bridge, otherwise exactly `local`
/// (`/32` or `/128`).
pub fn trusted_network(local: IpAddr) -> String {
    match canonical(local) {
        IpAddr::V4(v4) if in_v4_net(v4, ADDON_BRIDGE.0, ADDON_BRIDGE.1) => ADDON_TRUSTED.into(),
        IpAddr::V4(v4) => format!("{v4}/32"),
        IpAddr::V6(v6) => format!("{v6}/128"),
    }
}

fn in_v4_net(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// The fix to print when Home Assistant answered 400 to a forwarded request from `local`.
pub fn proxy_advice(local: IpAddr) -> String {
    let local = canonical(local);
    let net = trusted_network(local);
    format!(
        "Home Assistant answered 400 Bad Request to a request with X-Forwarded-For from {local}.\n\
         It does not trust this connector as a reverse proxy yet. Trust the network {net}:\n\
         \n\
         Home Assistant 2026.8 and later: Settings › System › Network › HTTP server › Reverse proxy:\n\
         turn on \"Trust X-Forwarded-For\" (use X-Forwarded-For) and add {net} to \"Trusted proxies\".\n\
         Saving restarts Home Assistant; confirm the new settings within 5 minutes or they revert.\n\
         \n\
         Older versions: add to configuration.yaml, then restart Home Assistant:\n\
         \n\
         http:\n\
         \x20 use_x_forwarded_for: true\n\
         \x20 trusted_proxies:\n\
         \x20   - {net}\n\
         \n\
         If it still answers 400, Home Assistant sees this connector from another address (NAT,\n\
         Docker port publishing): its log names it in \"Received X-Forwarded-For header from an\n\
         untrusted proxy <address>\"; trust that address instead. The connector must send\n\
         X-Forwarded-For: without it every remote request would look local to Home Assistant."
    )
}

// === Edges ===

/// Why an edge check failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EdgeFailure {
    /// Nothing came back over UDP within the timeout.
    NoAnswer,
    /// The edge closed the handshake with a TLS alert: it does not accept our certificate.
    CertificateRefused(String),
    /// We refused the edge's certificate: it is not signed by the tunnel CA in the token.
    PinMismatch(String),
    /// The edge answered `Reject` (or closed the connection as rejected).
    Rejected(String),
    /// The handshake worked but no `Welcome` came within the timeout.
    NoWelcome,
    /// Anything else, verbatim.
    Other(String),
}

/// Sorts a transport error (or a connection's close reason, see
/// `transport::Connection::close_reason`) into an [`EdgeFailure`] by its kind. The strings
/// kept are for the operator to read.
pub fn classify_edge_failure(error: &transport::Error) -> EdgeFailure {
    use transport::{Error as E, Wait};
    match error {
        // Nothing came back at all; a slow stream credit or flush is something else.
        E::TimedOut(Wait::Handshake | Wait::PeerSilent) => EdgeFailure::NoAnswer,
        E::HandshakeRefused(_) => EdgeFailure::CertificateRefused(error.to_string()),
        // Any handshake we aborted ourselves: the edge's certificate, or something that is not
        // a doorless edge answering on that port.
        E::InvalidPeerCertificate(_) | E::HandshakeFailed(_) => {
            EdgeFailure::PinMismatch(error.to_string())
        }
        E::ClosedByPeer {
            code: CloseCode::Rejected,
            ..
        } => EdgeFailure::Rejected(error.to_string()),
        _ => EdgeFailure::Other(error.to_string()),
    }
}

/// What to tell the operator about `failure` while dialling `edge` at `addr`.
pub fn edge_advice(
    edge: &str,
    addr: SocketAddr,
    timeout: Duration,
    failure: &EdgeFailure,
) -> String {
    let secs = timeout.as_secs_f32();
    let target = if edge == addr.to_string() {
        addr.to_string()
    } else {
        format!("{addr} ({edge})")
    };
    match failure {
        EdgeFailure::NoAnswer => format!(
            "no answer over UDP from {target} within {secs} s.\n\
             UDP/{port} may be blocked by a firewall on this network or on the VPS: open UDP {port} \
             on the VPS firewall (and the cloud provider's security group); some networks block \
             outgoing UDP. Also check that doorless-edge is running with its tunnel listener \
             (`listen.tunnel`) on UDP port {port}.",
            port = addr.port()
        ),
        EdgeFailure::CertificateRefused(why) => format!(
            "the edge refused our certificate (token revoked or for another edge?): {why}\n\
             Create a new token on the VPS (`doorless-edge site token <site>`) and configure it here."
        ),
        EdgeFailure::PinMismatch(why) => format!(
            "the edge's certificate does not match the token's pin: {why}\n\
             Is {edge} really your doorless edge, and is the token from that edge's state directory? \
             Something else may be answering on that port."
        ),
        EdgeFailure::Rejected(why) => format!("the edge rejected this connector: {why}"),
        EdgeFailure::NoWelcome => format!(
            "{target} completed the QUIC handshake but did not answer our hello within {secs} s \
             (edge overloaded, or an incompatible version?)"
        ),
        EdgeFailure::Other(why) => format!("{target}: {why}"),
    }
}

fn edge_name(edge: &str) -> String {
    format!("Edge {edge} reachable over QUIC")
}

fn tcp_edge_name(edge: &str) -> String {
    format!("Edge {edge} reachable over TLS/TCP")
}

/// How long `auto` gives QUIC before it tries TLS/TCP (as `dial` does).
const AUTO_QUIC: Duration = Duration::from_secs(3);

async fn check_edge(config: &Config, edge: &str, tcp_edge: &str, limit: Duration) -> CheckItem {
    match config.transport {
        TransportPolicy::Quic => check_edge_quic(config, edge, limit)
            .await
            .unwrap_or_else(|(item, _)| item),
        TransportPolicy::Tcp => check_edge_tcp(config, tcp_edge, limit).await,
        TransportPolicy::Auto => {
            let quic_limit = limit.min(AUTO_QUIC);
            let (item, failure) = match check_edge_quic(config, edge, quic_limit).await {
                Ok(item) => return item,
                Err(failed) => failed,
            };
            if failure != Some(EdgeFailure::NoAnswer) {
                return item;
            }
            let tcp = check_edge_tcp(config, tcp_edge, limit).await;
            let secs = quic_limit.as_secs_f32();
            if tcp.ok() {
                CheckItem::pass(
                    tcp_edge_name(tcp_edge),
                    format!(
                        "UDP is blocked: no answer over QUIC from {edge} within {secs} s, so the \
                         connector uses TLS over TCP. {}\n\
                         TCP works, but QUIC is faster under loss: to use it, open UDP on this \
                         network's and the VPS's firewalls. The connector keeps retrying QUIC \
                         and moves back by itself.",
                        tcp.detail
                    ),
                )
            } else {
                CheckItem::fail(
                    item.name,
                    format!(
                        "{}\nTLS over TCP to {tcp_edge} (the fallback) failed too: {}",
                        item.detail, tcp.detail
                    ),
                )
            }
        }
    }
}

/// The QUIC check; on failure the item and, if registering failed, why.
async fn check_edge_quic(
    config: &Config,
    edge: &str,
    limit: Duration,
) -> Result<CheckItem, (CheckItem, Option<EdgeFailure>)> {
    let name = edge_name(edge);
    let addr = match register::resolve(edge, limit).await {
        Ok(addr) => addr,
        Err(e) => {
            return Err((
                CheckItem::fail(name, format!("cannot resolve {edge}: {e}")),
                None,
            ));
        }
    };
    let tls = match register::client_tls(&config.token) {
        Ok(tls) => tls,
        Err(e) => {
            return Err((
                CheckItem::fail(name, format!("the token's certificates: {e}")),
                None,
            ));
        }
    };
    let endpoint = match ClientEndpoint::new(addr, tls, &config.tuning) {
        Ok(ep) => ep,
        Err(e) => {
            let failure = crate::dial::udp_blocked(&e).then_some(EdgeFailure::NoAnswer);
            return Err((
                CheckItem::fail(name, format!("cannot open a UDP socket: {e}")),
                failure,
            ));
        }
    };
    let idle = config.tuning.idle_timeout;
    let result = match register::register(
        endpoint.connect(addr, limit),
        check_hello(config),
        idle,
        limit,
    )
    .await
    {
        Ok(registered) => Ok(leave(registered).await),
        Err(e) => Err(EdgeFailure::from(e)),
    };
    endpoint.close(CloseCode::Normal, "self-check done");
    if !matches!(result, Err(EdgeFailure::NoAnswer)) {
        // Let the close reach the edge, so it logs an ordinary end (nobody to tell otherwise).
        endpoint.wait_idle(Duration::from_secs(1)).await;
    }
    match result {
        Ok(welcomed) => Ok(CheckItem::pass(name, welcomed.describe(addr))),
        Err(failure) => Err((
            CheckItem::fail(name, edge_advice(edge, addr, limit, &failure)),
            Some(failure),
        )),
    }
}

async fn check_edge_tcp(config: &Config, edge: &str, limit: Duration) -> CheckItem {
    let name = tcp_edge_name(edge);
    let addr = match register::resolve(edge, limit).await {
        Ok(addr) => addr,
        Err(e) => return CheckItem::fail(name, format!("cannot resolve {edge}: {e}")),
    };
    let client = match register::client_tls(&config.token)
        .map_err(|e| e.to_string())
        .and_then(|tls| TcpClient::new(&tls, &config.tuning).map_err(|e| e.to_string()))
    {
        Ok(client) => client,
        Err(e) => return CheckItem::fail(name, format!("the token's certificates: {e}")),
    };
    let idle = config.tuning.idle_timeout;
    let registered = register::register(
        client.connect(addr, limit),
        check_hello(config),
        idle,
        limit,
    )
    .await;
    match registered {
        Ok(registered) => CheckItem::pass(name, leave(registered).await.describe(addr)),
        Err(e) => {
            let failure = EdgeFailure::from(e);
            let advice = match &failure {
                EdgeFailure::NoAnswer => format!(
                    "no TLS answer from {addr} ({edge}) within {} s: is the edge's HTTPS port \
                     (`listen.https`) reachable from here?",
                    limit.as_secs_f32()
                ),
                other => edge_advice(edge, addr, limit, other),
            };
            CheckItem::fail(name, advice)
        }
    }
}

fn check_hello(config: &Config) -> Hello {
    Hello {
        version: proto::VERSION,
        connector_id: config.token.connector_id.clone(),
        software: SOFTWARE.to_owned(),
        // The edge must never route a user's request to this short-lived connection.
        purpose: Purpose::Check,
    }
}

impl From<RegisterError> for EdgeFailure {
    fn from(e: RegisterError) -> Self {
        match e {
            RegisterError::Transport(e) => classify_edge_failure(&e),
            RegisterError::Rejected(r) => Self::Rejected(format!("{} ({:?})", r.text, r.code)),
            RegisterError::NoWelcome(_) => Self::NoWelcome,
            unexpected @ RegisterError::Unexpected(_) => Self::Other(unexpected.to_string()),
        }
    }
}

struct Welcomed {
    site: String,
    connector_id: String,
    rtt: Duration,
}

impl Welcomed {
    fn describe(&self, addr: SocketAddr) -> String {
        format!(
            "{addr} welcomed site {} as {}, RTT {:.1} ms",
            self.site,
            self.connector_id,
            self.rtt.as_secs_f64() * 1000.0
        )
    }
}

/// Leaves a welcomed check connection at once: `GoAway`, then a normal close.
async fn leave(registered: Registered) -> Welcomed {
    let Registered {
        conn,
        mut control,
        welcome,
    } = registered;
    let rtt = conn.stats().rtt;
    // A check is no place for requests.
    control.state().go_away(GoAway {
        code: CloseCode::Normal,
        text: "self-check done".into(),
    });
    let _ = control.flush(Duration::from_secs(1)).await;
    // The edge closes on GoAway; give it a moment so it sees our message first.
    let _ = conn.close_reason(Duration::from_secs(1)).await;
    conn.close(CloseCode::Normal, "self-check done");
    Welcomed {
        site: welcome.site,
        connector_id: welcome.connector_id,
        rtt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        match s.parse() {
            Ok(ip) => ip,
            Err(e) => panic!("{s}: {e}"),
        }
    }

    #[test]
    fn addon_bridge_trusts_the_addon_network() {
        assert_eq!(trusted_network(ip("172.30.33.7")), "172.30.33.0/24");
        assert_eq!(trusted_network(ip("172.30.33.254")), "172.30.33.0/24");
        assert_eq!(trusted_network(ip("172.30.32.1")), "172.30.33.0/24");
        assert_eq!(trusted_network(ip("::ffff:172.30.33.7")), "172.30.33.0/24");
    }

    #[test]
    fn elsewhere_trusts_the_exact_address() {
        assert_eq!(trusted_network(ip("127.0.0.1")), "127.0.0.1/32");
        assert_eq!(trusted_network(ip("172.30.34.1")), "172.30.34.1/32");
        assert_eq!(trusted_network(ip("172.30.31.255")), "172.30.31.255/32");
        assert_eq!(trusted_network(ip("192.168.1.20")), "192.168.1.20/32");
        assert_eq!(trusted_network(ip("::ffff:10.0.0.5")), "10.0.0.5/32");
        assert_eq!(trusted_network(ip("::1")), "::1/128");
        assert_eq!(trusted_network(ip("2001:db8::7")), "2001:db8::7/128");
    }

    #[test]
    fn proxy_advice_names_both_forms() {
        let text = proxy_advice(ip("172.30.33.4"));
        assert!(text.contains("from 172.30.33.4"), "{text}");
        assert!(
            text.contains("Settings › System › Network › HTTP server"),
            "{text}"
        );
        assert!(
            text.contains("add 172.30.33.0/24 to \"Trusted proxies\""),
            "{text}"
        );
        assert!(
            text.contains(
                "http:\n  use_x_forwarded_for: true\n  trusted_proxies:\n    - 172.30.33.0/24\n"
            ),
            "{text}"
        );
        // The network address, never the host address with a prefix (HA refuses .4/24).
        assert!(!text.contains("172.30.33.4/"), "{text}");
    }

    #[test]
    fn edge_failures_are_classified() {
        use EdgeFailure as F;
        use transport::{Alert, CertificateProblem, Error as E, Wait};
        assert_eq!(
            classify_edge_failure(&E::TimedOut(Wait::Handshake)),
            F::NoAnswer
        );
        assert_eq!(
            classify_edge_failure(&E::TimedOut(Wait::PeerSilent)),
            F::NoAnswer
        );
        // The edge answered, but gave no stream credit: not a UDP problem.
        assert!(matches!(
            classify_edge_failure(&E::TimedOut(Wait::StreamCredit)),
            F::Other(_)
        ));
        assert!(matches!(
            classify_edge_failure(&E::HandshakeRefused(Alert(48))),
            F::CertificateRefused(_)
        ));
        assert!(matches!(
            classify_edge_failure(&E::HandshakeRefused(Alert(42))),
            F::CertificateRefused(_)
        ));
        assert!(matches!(
            classify_edge_failure(&E::InvalidPeerCertificate(
                CertificateProblem::UnknownIssuer
            )),
            F::PinMismatch(_)
        ));
        assert!(matches!(
            classify_edge_failure(&E::HandshakeFailed(Alert(120))),
            F::PinMismatch(_)
        ));
        assert!(matches!(
            classify_edge_failure(&E::ClosedByPeer {
                code: CloseCode::Rejected,
                reason: "not a connector certificate".into()
            }),
            F::Rejected(_)
        ));
        assert!(matches!(
            classify_edge_failure(&E::ResetByPeer),
            F::Other(_)
        ));
    }

    #[test]
    fn udp_advice_names_the_port() {
        let addr: SocketAddr = ([198, 51, 100, 1], 443).into();
        let text = edge_advice(
            "edge.example.com:443",
            addr,
            Duration::from_secs(10),
            &EdgeFailure::NoAnswer,
        );
        assert!(
            text.contains("no answer over UDP from 198.51.100.1:443"),
            "{text}"
        );
        assert!(text.contains("open UDP 443 on the VPS firewall"), "{text}");
    }

    #[test]
    fn report_display_and_verdict() {
        let report = Report {
            items: vec![
                CheckItem::pass("A", "fine"),
                CheckItem::fail("B", "broken\nfix:\n\n  indented"),
                CheckItem::skip("C", "not run"),
            ],
        };
        assert!(!report.ok());
        let text = report.to_string();
        assert_eq!(
            text,
            "✓ A: fine\n✗ B: broken\n    fix:\n\n      indented\n- C: not run\n1 passed, 1 failed, 1 skipped: see above"
        );
        let good = Report {
            items: vec![CheckItem::pass("A", "fine")],
        };
        assert!(good.ok());
        assert!(!Report::default().ok());
    }
}
