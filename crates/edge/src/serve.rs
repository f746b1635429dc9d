//! Step 3 of the request path: HTTP on an authenticated connection.
//!
//! [`handle_request`] is the whole path for one request, top to bottom: host, device link,
//! cookie, policy, upgrade, cache, route, proxy, cookie refresh, and one finish point that
//! logs every outcome exactly once.
//! Each step is called once, in that order, from `proxy_request`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Request, Response, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use proto::Priority;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::server::TlsStream;

use crate::feed::{self, Counted, Feed};
use crate::linger::Lingering;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::Shared;
use crate::accept::ConnectionHold;
use crate::body::{self, Delivered, ResponseBody};
use crate::cache::Lookup;
use crate::error::ProxyError;
use crate::metrics::{ClassLabels, ErrorLabels, Metrics, SiteResult, status_class};
use crate::policy::{self, ClientAuth, Decision, Facts, Grant};
use crate::proxy::{Auth, Forwarded};
use crate::revocation::LiveClients;
use crate::tls::Peer;
use crate::upgrade::Handshake;
use crate::{link, proxy, route, upgrade};

/// Largest HTTP/2 frame a client may send us: one tunnel body chunk (`transport::BODY_CHUNK`).
const H2_MAX_FRAME: u32 = 64 * 1024;

/// Serves HTTP/1.1 or HTTP/2 (by ALPN) on one authenticated TLS connection until the client
/// leaves or `shutdown` asks for a graceful close.
pub(crate) async fn connection(
    tls: TlsStream<TcpStream>,
    peer: Peer,
    hold: Arc<ConnectionHold>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    // Response bodies take turns into HTTP/2 no faster than the socket takes them (`feed`),
    // unless `limits.h2_response_queue = 0`; an HTTP/1.1 connection sends one response at a
    // time, nothing to overtake. The feed sets the socket's unsent bound (`Counted`); without
    // one it stays at `H2_NOTSENT_LOWAT`.
    let gate = (h2 && shared.config.limits.h2_response_queue > 0).then(|| {
        Feed::new(
            shared.config.limits.h2_response_queue,
            shared.metrics.h2_queue_reclaims.clone(),
        )
    });
    if h2 && gate.is_none() {
        bound_unsent(tls.get_ref().0);
    }
    let socket_credit = gate.clone();
    let revoked = peer.revoked.clone();
    let peer = Arc::new(peer);
    let limits = &shared.config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.h2_max_streams)
        // Request bodies (uploads): windows big enough that the client keeps sending while the
        // tunnel takes what came before (hyper's 1 MiB made an upload over HTTP/2 run at 0.6x
        // the same upload over HTTP/1.1); the connection window is the bound on what one
        // client connection can make us buffer. Frames up to 64 KiB (the default is 16 KiB)
        // let a client that honours it send a body in a quarter of the frames; one frame is
        // what h2 buffers before it hands us any of it.
        .initial_stream_window_size(limits.h2_stream_window)
        .initial_connection_window_size(limits.h2_connection_window)
        .max_frame_size(H2_MAX_FRAME)
        // Rapid-reset (CVE-2023-44487) guards: bound streams reset before we accepted them
        // and those we had to reset ourselves.
        .max_pending_accept_reset_streams(Some(20))
        .max_local_error_reset_streams(Some(256))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    // SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441): browsers then open WebSockets as streams of
    // this connection instead of a second TLS connection (and a second client-certificate
    // handshake). `upgrade::classify` lets only `websocket` through. Not with
    // `h2_max_websockets = 0`: WebSockets then come over HTTP/1.1 connections of their own.
    if limits.h2_max_websockets > 0 {
        builder.http2().enable_connect_protocol();
    }
    // Each WebSocket on an HTTP/2 connection holds one of its streams until it closes.
    let websockets = Arc::new(Semaphore::new(limits.h2_max_websockets as usize));
    let service = {
        let shared = shared.clone();
        let peer = peer.clone();
        service_fn(move |req| {
            let shared = shared.clone();
            let peer = peer.clone();
            let connection = Connection {
                hold: hold.clone(),
                websockets: websockets.clone(),
                feed: gate.clone(),
            };
            async move { Ok::<_, Infallible>(handle_request(req, &peer, connection, &shared).await) }
        })
    };
    // Closed by lingering: a client's last WINDOW_UPDATEs must not turn our close into a
    // reset that destroys the end of its response (`linger`).
    let conn = builder.serve_connection_with_upgrades(
        TokioIo::new(Counted::new(Lingering::new(tls), socket_credit)),
        service,
    );
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        // Revoked: drop the connection now, mid-request or not.
        () = revoked.cancelled() => {}
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(shared.config.limits.shutdown_grace, conn).await;
        }
    }
}

/// Unsent bytes the kernel may queue on an HTTP/2 client connection (`TCP_NOTSENT_LOWAT`).
///
/// Why: without a bound, Linux lets a socket's send buffer fill with as much unsent data as
/// its auto-tuned size allows (megabytes on a long path), and whatever HTTP/2 writes next
/// waits behind all of it. Measured with the client 45 ms away (packet delay) and an 8 MB
/// download on the same connection, an RFC 8441 WebSocket's 200 took 117–145 ms and its
/// `auth` → `auth_ok` 88–106 ms (medians of 25, two runs; ~50 and ~45 with the download on
/// another connection); with the bound, 63–80 and 58–66 ms (`examples/ws_auth_latency.rs`,
/// `client … busy`). The backlog then waits in h2, which interleaves streams, so a small
/// frame goes out after about a frame per busy stream. It bounds data not yet sent, not data
/// in flight, so it does not cap throughput; it costs a wake-up per 16 KiB a bulk transfer
/// drains, so `feed` raises it to `limits.h2_response_queue` on a connection that has drained
/// at LAN speed for a while (on loopback a fixed 16 KiB held an HTTP/2 download at ~0.8× of
/// the same download over HTTP/1.1). HTTP/1.1 connections (one response at a time, nothing to
/// overtake) go without.
/// 16 KiB, what h2o and Cloudflare's edge use for HTTP/2, is where it stays unless the
/// connection drains at LAN speed (then `feed` raises it to its queue); `Counted` applies
/// it and keeps rustls from buffering more on top. Without a feed
/// (`limits.h2_response_queue = 0`) `serve` sets it once.
const H2_NOTSENT_LOWAT: u32 = 16 * 1024;

/// Applies [`H2_NOTSENT_LOWAT`]. Best effort: a socket that refuses it still works.
fn bound_unsent(tcp: &TcpStream) {
    set_unsent(tcp, H2_NOTSENT_LOWAT);
}

fn set_unsent(tcp: &TcpStream, bytes: u32) {
    let _ = socket2::SockRef::from(tcp).set_tcp_notsent_lowat(bytes);
}

/// Where `feed` sets the bound as the connection's rate changes.
impl feed::UnsentBound for Lingering<TlsStream<TcpStream>> {
    fn bound_unsent(&self, bytes: u32) {
        set_unsent(self.get_ref().get_ref().0, bytes);
    }
}

/// Sets TCP congestion control `name` (`listen.tcp_congestion_control`) on the HTTPS listener;
/// the connections it accepts inherit it (Linux). Phones reach the edge over mobile networks
/// whose random loss holds Cubic, most VPS kernels' default, near 1.22/√p packets per round
/// trip; BBR does not read random loss as congestion (docs/benchmarks.md, "The client leg's
/// TCP congestion control").
pub(crate) fn set_congestion_control(
    listener: &tokio::net::TcpListener,
    name: &str,
) -> std::io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    {
        socket2::SockRef::from(listener).set_tcp_congestion(name.as_bytes())
    }
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    {
        let _ = (listener, name);
        Err(std::io::ErrorKind::Unsupported.into())
    }
}

/// The congestion control the listener's connections get now (for the log), if the OS says.
pub(crate) fn congestion_control(listener: &tokio::net::TcpListener) -> Option<String> {
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    {
        let name = socket2::SockRef::from(listener).tcp_congestion().ok()?;
        let name = String::from_utf8_lossy(&name);
        Some(name.trim_end_matches('\0').to_owned())
    }
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    {
        let _ = listener;
        None
    }
}

/// What a request shares with the others of its client connection.
pub(crate) struct Connection {
    /// The connection's limits and gauge; a WebSocket keeps them until it closes.
    hold: Arc<ConnectionHold>,
    /// HTTP/2: what response bodies may queue in `h2` (`feed`).
    feed: Option<Arc<Feed>>,
    /// Slots for WebSockets on this connection (`limits.h2_max_websockets`; an HTTP/1.1
    /// connection carries one by nature).
    websockets: Arc<Semaphore>,
}

/// One request, from policy to response; every outcome passes [`finish`].
pub(crate) async fn handle_request(
    req: Request<Incoming>,
    peer: &Peer,
    connection: Connection,
    shared: &Arc<Shared>,
) -> Response<ResponseBody> {
    let started = tokio::time::Instant::now();
    let method = req.method().clone();
    // The response's turn into a busy HTTP/2 connection: its priority (RFC 9218, as the
    // browser sent it) and when it was asked for.
    let feed = connection.feed.clone().map(|feed| {
        let field = req.headers().get_all(HeaderName::from_static("priority"));
        // No header (a native app, not a browser): served as an incremental `u=3`, so its
        // responses share rather than wait for each other (`feed`).
        let priority = if field.iter().next().is_none() {
            Priority {
                incremental: true,
                ..Priority::default()
            }
        } else {
            Priority::parse(field.iter().map(|v| v.as_bytes()))
        };
        let ticket = feed.ticket(priority);
        (feed, ticket)
    });
    let site = Metrics::site(&peer.site.name);
    let active = shared.metrics.active_requests.get_or_create_owned(&site);
    active.inc();
    let mut who = Who {
        version: req.version(),
        ..Who::default()
    };
    let (response, splice) = match proxy_request(req, peer, &connection, shared, &mut who).await {
        Ok(Forwarded { response, splice }) => (response, splice),
        Err(e) => (denial(e), None),
    };
    let access_log = finish(
        peer,
        shared,
        &who,
        &method,
        &response,
        outcome_error(&response),
        started,
    );
    // A WebSocket is logged when it closes; any other response when its body is done.
    let access_log = match splice {
        Some(splice) => {
            splice.start(connection.hold, access_log);
            None
        }
        None => access_log,
    };
    // The request stays active until its response body is done (or dropped); a session-
    // authenticated one stays revocable until then too.
    let bytes = shared.metrics.response_bytes.get_or_create_owned(&site);
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    response.map(|body| {
        let body = match feed {
            Some((feed, ticket)) => feed::gated(body, feed, ticket),
            None => body,
        };
        body::metered(body, length, bytes, active, access_log)
    })
}

/// Who a request was let in as, and over what, for the access log.
#[derive(Debug, Default)]
struct Who {
    grant: Option<&'static str>,
    /// `hit`, `miss` or `refresh` when the cache looked at the request.
    cache: Option<&'static str>,
    device: String,
    version: http::Version,
}

async fn proxy_request(
    req: Request<Incoming>,
    peer: &Peer,
    connection: &Connection,
    shared: &Arc<Shared>,
    who: &mut Who,
) -> Result<Forwarded, ProxyError> {
    let site = &peer.site;
    let host = request_host(&req)?;
    let host_name = host.as_deref().and_then(policy::host_name);
    let sites = shared.sites.load();
    let host_site = host_name
        .as_deref()
        .and_then(|h| sites.by_host(h))
        .map(|s| s.name.clone());
    // A certificate-less request for a pending device link of this site gets it here, before
    // anything else; every other request goes on (see `link`).
    if let Some(response) = link::serve(&req, peer, host_site.as_deref(), shared).await {
        who.grant = Some("device_link");
        return Ok(Forwarded {
            response,
            splice: None,
        });
    }
    let now = unix_now();
    // The session cookie matters only in session mode; elsewhere it is just stripped.
    let session_mode = site.policy.client_auth == ClientAuth::RequiredOrSession;
    let cookie = session_mode
        .then(|| {
            shared
                .session_key
                .read(req.headers(), &site.name, now, sites.revoked().devices())
        })
        .flatten();
    let facts = Facts {
        conn_site: &site.name,
        host: host_name.as_deref(),
        host_site: host_site.as_deref(),
        client_ip: peer.addr.ip().to_canonical(),
        certificate: peer.certificate.as_ref(),
        cookie: cookie.as_ref(),
        target: req.uri().path_and_query().map_or("/", |pq| pq.as_str()),
        upgrade: req.headers().contains_key(header::UPGRADE)
            || req.method() == http::Method::CONNECT,
    };
    let grant = match policy::decide(&site.policy, &facts) {
        Decision::Allow(grant) => grant,
        Decision::Deny(reason) => return Err(ProxyError::from_denial(reason)),
    };
    // Only a valid WebSocket handshake may ask to leave HTTP; any other upgrade stops here.
    let websocket = upgrade::classify(&req)?;
    who.grant = Some(grant.as_str());
    let auth = authenticate(grant, websocket.is_some(), peer, shared);
    who.device = auth.device.clone();
    // Let in: what Home Assistant marked public may come from the cache instead of the tunnel.
    let lookup = shared.cache.lookup(&req, &site.name, websocket.is_some());
    let cached = match &lookup {
        Lookup::Find(key) => shared.cache.get(key, std::time::Instant::now()),
        Lookup::Refresh(_) | Lookup::Bypass => None,
    };
    who.cache = match (&lookup, &cached) {
        (Lookup::Bypass, _) => None,
        (Lookup::Find(_), Some(_)) => Some("hit"),
        (Lookup::Find(_), None) => Some("miss"),
        (Lookup::Refresh(_), _) => Some("refresh"),
    };
    if let Some(result) = who.cache {
        shared
            .metrics
            .cache_requests
            .get_or_create(&SiteResult {
                site: site.name.clone(),
                result,
            })
            .inc();
    }
    let mut forwarded = match cached {
        Some(entry) => Forwarded {
            response: entry.response(std::time::Instant::now()),
            splice: None,
        },
        None => {
            let mut forwarded =
                forward(req, websocket, host, peer, auth, connection, shared).await?;
            // What HA marks public is copied on its way to the client (`cache`).
            if let Lookup::Find(key) | Lookup::Refresh(key) = lookup {
                forwarded.response =
                    shared
                        .cache
                        .record(key, forwarded.response, std::time::Instant::now());
            }
            forwarded
        }
    };
    if let Grant::Certificate(cert) = grant
        && session_mode
        && let Some(set_cookie) = shared.session_key.refresh(site, cert, cookie.as_ref(), now)
    {
        forwarded
            .response
            .headers_mut()
            .append(header::SET_COOKIE, set_cookie);
    }
    Ok(forwarded)
}

/// Steps 6 and 7: route the request and carry it through the tunnel.
async fn forward(
    req: Request<Incoming>,
    websocket: Option<upgrade::WebSocket>,
    host: Option<String>,
    peer: &Peer,
    auth: Auth,
    connection: &Connection,
    shared: &Arc<Shared>,
) -> Result<Forwarded, ProxyError> {
    // An HTTP/1.1 connection carries one WebSocket by nature; an HTTP/2 one as many as it
    // has slots.
    let websocket_slot = match &websocket {
        Some(ws) if ws.handshake() == Handshake::ExtendedConnect => Some(
            connection
                .websockets
                .clone()
                .try_acquire_owned()
                .map_err(|_| ProxyError::TooManyWebSockets)?,
        ),
        _ => None,
    };
    let route = route::route(shared, &peer.site.name, &[]).await?;
    let host = host.unwrap_or_default();
    let mut forwarded = proxy::forward(req, websocket, &host, peer, auth, route, shared).await?;
    if let (Some(splice), Some(slot)) = (forwarded.splice.as_mut(), websocket_slot) {
        splice.keep(slot);
    }
    Ok(forwarded)
}

/// The request's host: `:authority` (HTTP/2) or `Host` (HTTP/1.1). When both are present they
/// must agree (RFC 9113 §8.3.1), or the policy would judge one name and HA see the other.
fn request_host(req: &Request<Incoming>) -> Result<Option<String>, ProxyError> {
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    let host_header = match req
        .headers()
        .get_all(header::HOST)
        .iter()
        .collect::<Vec<_>>()[..]
    {
        [] => None,
        [one] => Some(
            one.to_str()
                .map_err(|_| ProxyError::MissingHost)?
                .to_owned(),
        ),
        _ => return Err(ProxyError::HostConflict),
    };
    if let (Some(a), Some(h)) = (&authority, &host_header)
        && policy::host_name(a) != policy::host_name(h)
    {
        return Err(ProxyError::HostConflict);
    }
    Ok(authority.or(host_header))
}

/// What the tunnel and Home Assistant learn of the client on the grounds of `grant`, and how
/// a revocation finds the request.
fn authenticate(grant: Grant<'_>, websocket: bool, peer: &Peer, shared: &Arc<Shared>) -> Auth {
    match grant {
        Grant::Certificate(cert) => Auth {
            fingerprint: Some(cert.fingerprint),
            device: cert.device.clone(),
            revoked: peer.revoked.clone(),
            // A WebSocket outlives its HTTP connection (hyper hands the socket over), and
            // with it the connection's registration: give it its own.
            registration: websocket
                .then(|| LiveClients::register(shared, cert.fingerprint, peer.revoked.clone())),
        },
        Grant::Session(claims) => {
            // Make this request findable by its certificate, so a revocation ends it (and
            // its WebSocket) like it ends certificate-authenticated connections.
            let revoked = CancellationToken::new();
            let registration = LiveClients::register(shared, claims.fingerprint, revoked.clone());
            Auth {
                fingerprint: Some(claims.fingerprint),
                device: claims.device.clone(),
                revoked,
                registration: Some(registration),
            }
        }
        Grant::PublicPath => Auth {
            fingerprint: None,
            device: String::new(),
            revoked: peer.revoked.clone(),
            registration: None,
        },
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The bare answer for a failed request: status only, no body, nothing that names doorless or
/// Home Assistant.
fn denial(e: ProxyError) -> Response<ResponseBody> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = e.status();
    if let Some(secs) = e.retry_after() {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from(secs));
    }
    response.extensions_mut().insert(e);
    response
}

fn outcome_error(response: &Response<ResponseBody>) -> Option<ProxyError> {
    response.extensions().get::<ProxyError>().copied()
}

/// The single finish point: counts the request and returns its access-log line, written
/// once when the response body ends (`None` when the `access` target is filtered out, so a
/// disabled access log costs nothing per request).
fn finish(
    peer: &Peer,
    shared: &Shared,
    who: &Who,
    method: &http::Method,
    response: &Response<ResponseBody>,
    error: Option<ProxyError>,
    started: tokio::time::Instant,
) -> Option<body::OnEnd> {
    let elapsed = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    let metrics = &shared.metrics;
    let site = &peer.site.name;
    metrics
        .requests
        .get_or_create(&ClassLabels {
            site: site.clone(),
            class: status_class(status),
        })
        .inc();
    metrics
        .request_duration
        .get_or_create(&Metrics::site(site))
        .observe(elapsed);
    if let Some(e) = error {
        metrics
            .request_errors
            .get_or_create(&ErrorLabels {
                site: site.clone(),
                blame: e.blame().as_str(),
                reason: e.reason(),
            })
            .inc();
    }
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return None;
    }
    // The access line is written when the body is done, so it can say how many bytes went
    // out and whether all of them did.
    let site = site.clone();
    let device = who.device.clone();
    let grant = who.grant.unwrap_or("-");
    let cache = who.cache.unwrap_or("-");
    let client = peer.addr.ip();
    let method = method.clone();
    let version = who.version;
    let head_ms = elapsed * 1000.0;
    Some(Box::new(move |delivered| {
        let total_ms = started.elapsed().as_secs_f64() * 1000.0;
        match (error, delivered) {
            (None, Delivered::Body { bytes, complete }) => info!(
                target: "access",
                site = %site,
                device = %device,
                grant,
                client = %client,
                %method,
                ?version,
                status,
                head_ms,
                total_ms,
                bytes,
                complete,
                cache,
                "request"
            ),
            (None, Delivered::WebSocket { up, down }) => info!(
                target: "access",
                site = %site,
                device = %device,
                grant,
                client = %client,
                %method,
                ?version,
                status,
                head_ms,
                total_ms,
                bytes_up = up,
                bytes_down = down,
                "websocket closed"
            ),
            (Some(e), _) => info!(
                target: "access",
                site = %site,
                device = %device,
                client = %client,
                %method,
                ?version,
                status,
                head_ms,
                blame = e.blame().as_str(),
                reason = e.reason(),
                "request failed"
            ),
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback listener.
    async fn listener() -> tokio::net::TcpListener {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"))
    }

    /// One connection to `listener`: its accepted side (the client side is kept open by the
    /// second element).
    async fn accepted(listener: &tokio::net::TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let client = client.unwrap_or_else(|e| panic!("connect: {e}"));
        let (tcp, _) = accepted.unwrap_or_else(|e| panic!("accept: {e}"));
        (tcp, client)
    }

    /// The bound is on the socket (read back from the kernel).
    #[tokio::test]
    async fn http2_sockets_queue_little_unsent_data() {
        let (tcp, _client) = accepted(&listener().await).await;
        bound_unsent(&tcp);
        let lowat = socket2::SockRef::from(&tcp)
            .tcp_notsent_lowat()
            .unwrap_or_else(|e| panic!("getsockopt: {e}"));
        assert_eq!(lowat, H2_NOTSENT_LOWAT);
        // And where `feed` moves it.
        set_unsent(&tcp, 128 * 1024);
        let lowat = socket2::SockRef::from(&tcp)
            .tcp_notsent_lowat()
            .unwrap_or_else(|e| panic!("getsockopt: {e}"));
        assert_eq!(lowat, 128 * 1024);
    }

    /// What the listener is given, its accepted connections run; a name the kernel does not
    /// know is an error (the edge logs it and goes on with the kernel's default).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_connections_inherit_the_listeners_congestion_control() {
        let listener = listener().await;
        // Cubic and Reno are built into every Linux kernel; pick the one that is not the
        // default, so the test sees the option take effect.
        let default = congestion_control(&listener).unwrap_or_default();
        let wanted = if default == "cubic" { "reno" } else { "cubic" };
        set_congestion_control(&listener, wanted).unwrap_or_else(|e| panic!("{wanted}: {e}"));
        assert!(set_congestion_control(&listener, "no_such_cc").is_err());
        let (tcp, _client) = accepted(&listener).await;
        let got = socket2::SockRef::from(&tcp)
            .tcp_congestion()
            .unwrap_or_else(|e| panic!("getsockopt: {e}"));
        assert_eq!(String::from_utf8_lossy(&got).trim_end_matches('\0'), wanted);
    }
}
