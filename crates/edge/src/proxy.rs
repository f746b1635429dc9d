//! Step 7 of the request path: carry one request through a stream of its routed tunnel.
//!
//! The request head goes into a [`proto::StreamHeader`], the request body follows as raw bytes
//! until FIN; the connector answers with a [`proto::ResponseHead`] and the response body until
//! FIN. Bodies stream both ways through bounded QUIC flow-control windows, never buffered
//! whole, and a body silent for `limits.body_idle_timeout` ends the stream. A WebSocket that
//! the upstream accepts (101) turns the stream into a raw byte splice ([`transport::splice`])
//! between the client's upgraded connection (HTTP/1.1) or extended-CONNECT stream (HTTP/2)
//! and the tunnel; both kinds travel the tunnel as the same HTTP/1.1 handshake
//! (`upgrade::WebSocket`).
//!
//! A request that fails before its response head is sent once more, on another tunnel, when
//! that cannot do harm: it has no body to replay, and either the connector refused it unread
//! (`not_processed`, or the stream could not even be opened) or the connection died under it
//! and the method is idempotent (GET, HEAD, OPTIONS). Otherwise the client gets the failure
//! (503 with `Retry-After` when no connector could take it).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use proto::headers::{is_forwarding, is_hop_by_hop};
use proto::{BodyKind, ClientInfo, ResponseHead, StreamError, StreamHeader, StreamKind};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use transport::{RecvHalf, SendHalf, SpliceEnd};

use crate::Shared;
use crate::accept::ConnectionHold;
use crate::body::{ActiveGuard, Delivered, OnEnd, ResponseBody, empty};
use crate::cookie;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::revocation::Registration;
use crate::route::{self, Route};
use crate::tls::Peer;
use crate::tunnels::Tunnel;
use crate::upgrade::WebSocket;

/// Largest response head we accept from a connector.
const MAX_RESPONSE_HEAD: usize = proto::stream::MAX_HEAD_FRAME;

/// On what grounds a request goes through, as the tunnel and Home Assistant see it.
#[derive(Debug)]
pub(crate) struct Auth {
    /// Fingerprint of the certificate (presented, or behind the session cookie).
    pub(crate) fingerprint: Option<pki::Fingerprint>,
    /// Device name; empty for public-path requests.
    pub(crate) device: String,
    /// Cancelled when that certificate is revoked.
    pub(crate) revoked: CancellationToken,
    /// Keeps a session-authenticated request revocable while it lives.
    pub(crate) registration: Option<Registration>,
}

/// What `forward` produced: the response head (and body) for the client, and for an accepted
/// WebSocket the splice that `serve` starts once it has the connection's hold and the
/// access-log line in hand.
pub(crate) struct Forwarded {
    /// The response to send.
    pub(crate) response: Response<ResponseBody>,
    /// After a 101 that answered the handshake: the WebSocket, not yet spliced.
    pub(crate) splice: Option<Splice>,
}

/// Proxies `req` through a new stream on `route`'s tunnel (or, when that is safe, others:
/// [`Tried`]).
/// `websocket` is a validated WebSocket request (`upgrade::classify`); only then may a 101 be
/// spliced.
pub(crate) async fn forward(
    mut req: Request<Incoming>,
    websocket: Option<WebSocket>,
    host: &str,
    peer: &Peer,
    auth: Auth,
    route: Route,
    shared: &Shared,
) -> Result<Forwarded, ProxyError> {
    let upgrade = websocket.is_some();
    let drop_underscored = !shared.config.limits.underscores_in_headers;
    if drop_underscored {
        count_underscored(req.headers(), &peer.site.name, shared);
    }
    let body = if upgrade {
        BodyKind::Empty
    } else {
        body_kind(&req)
    };
    let header = StreamHeader {
        version: proto::VERSION,
        kind: if upgrade {
            StreamKind::Upgrade
        } else {
            StreamKind::Http
        },
        request_id: shared.next_request_id(),
        // A WebSocket goes upstream as an HTTP/1.1 handshake, a GET, however it was asked for.
        method: if upgrade {
            Bytes::from_static(b"GET")
        } else {
            Bytes::copy_from_slice(req.method().as_str().as_bytes())
        },
        target: raw_target(&req),
        headers: request_headers(
            req.headers(),
            drop_underscored,
            host,
            websocket.as_ref().map(WebSocket::key),
            peer.site.identity_header.as_ref(),
            &auth.device,
        ),
        body,
        client: ClientInfo {
            addr: peer.addr,
            cert_fingerprint: auth.fingerprint.map(|f| *f.as_bytes()),
            device: auth.device.clone(),
        },
    };
    let mut encoded = bytes::BytesMut::new();
    header
        .encode(&mut encoded)
        .map_err(|_| ProxyError::RequestTooLarge)?;
    let encoded = encoded.freeze();
    let retry = Retry {
        replayable: body == BodyKind::Empty,
        idempotent: [Method::GET, Method::HEAD, Method::OPTIONS].contains(req.method()),
    };

    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut request_body = (body != BodyKind::Empty).then(|| req.into_body());
    let mut route = route;
    let mut tried = Tried::default();
    let (mut send, mut recv, head) = loop {
        let attempt = Attempt {
            encoded: encoded.clone(),
            upgrade,
            site: &peer.site.name,
        };
        match attempt.run(&mut route, &mut request_body, shared).await {
            Ok(exchanged) => break exchanged,
            Err(failed) if tried.may_send_again(retry, failed.processed) => {
                if failed.error == ProxyError::ConnectorRefused {
                    // Only a draining connector refuses a stream unread: route nothing more
                    // to this connection even before its `Drain` arrives.
                    route.tunnel.draining.store(true, Ordering::Relaxed);
                }
                debug!(error = failed.error.reason(), connector = %route.tunnel.connector_id, "sending the request again on another tunnel");
                route::count_stream_failure(shared, &peer.site.name, "retried");
                tried.record(&route.tunnel, failed.processed);
                route = route::route(shared, &peer.site.name, &tried.tunnels)
                    .await
                    .map_err(|_| failed.error)?;
            }
            Err(failed) => return Err(failed.error),
        }
    };
    let status = StatusCode::from_u16(head.status).map_err(|_| ProxyError::BadResponseHead)?;

    let mut response = Response::new(empty());
    *response.status_mut() = status;
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    let checked =
        copy_response_headers(&head.headers, response.headers_mut(), switching).and_then(|()| {
            match &websocket {
                // The connector refuses a 101 nobody asked for; a connector that relays one anyway
                // is at fault.
                None if switching => Err(ProxyError::BadResponseHead),
                None => Ok(()),
                // A 101 that does not answer this WebSocket handshake is never spliced.
                Some(websocket) => websocket.check_answer(status, response.headers()),
            }
        });
    if let Err(e) = checked {
        recv.stop(StreamError::Cancelled);
        if let Some(s) = send.as_mut() {
            s.reset(StreamError::Cancelled);
        }
        return Err(e);
    }

    let mut splice = None;
    match (switching, on_upgrade, send) {
        (true, Some(on_upgrade), Some(send)) => {
            if let Some(websocket) = &websocket {
                websocket.answer(&mut response);
            }
            let site = Metrics::site(&peer.site.name);
            splice = Some(Splice {
                on_upgrade,
                send,
                recv,
                hold: Hold {
                    _route: route,
                    _registration: auth.registration,
                },
                revoked: auth.revoked,
                slot: None,
                meters: SpliceMeters {
                    open: shared.metrics.active_websockets.get_or_create_owned(&site),
                    up: shared.metrics.request_bytes.get_or_create_owned(&site),
                    down: shared.metrics.response_bytes.get_or_create_owned(&site),
                },
            });
        }
        (_, _, send) => {
            // Not upgraded: the upstream answered normally; end our side of the stream.
            if let Some(mut s) = send {
                s.finish();
            }
            if head.body == BodyKind::Empty {
                // Nothing follows the head but the connector's FIN; dropping `recv` stops it.
                drop(recv);
            } else {
                let hold = Hold {
                    _route: route,
                    _registration: auth.registration,
                };
                let idle = BodyIdle {
                    limit: shared.config.limits.body_idle_timeout,
                    timeouts: shared.metrics.stream_failures.get_or_create_owned(
                        &crate::metrics::SiteReason {
                            site: peer.site.name.clone(),
                            reason: "body_idle",
                        },
                    ),
                };
                *response.body_mut() = tunnel_body(recv, hold, idle);
            }
        }
    }
    Ok(Forwarded { response, splice })
}

/// When a request may be sent again after a failure before its response head.
#[derive(Debug, Clone, Copy)]
struct Retry {
    /// No body: sending it again loses nothing.
    replayable: bool,
    /// GET, HEAD or OPTIONS: running it twice is harmless (RFC 9110 §9.2.2).
    idempotent: bool,
}

impl Retry {
    fn allows(self, processed: Processed) -> bool {
        self.replayable
            && match processed {
                Processed::No => true,
                Processed::Unknown => self.idempotent,
                Processed::Yes => false,
            }
    }
}

/// The tunnels a request was sent on and failed, and whether one of them may have acted on
/// it.
#[derive(Debug, Default)]
struct Tried {
    /// The tunnels tried so far: never tried again, and their connectors' other tunnels only
    /// when no other connector can take the request.
    tunnels: Vec<Arc<Tunnel>>,
    /// Once a try may have reached Home Assistant, only one more is allowed in all.
    maybe_processed: bool,
}

/// Most tries of one request when every failure was a refusal unread (`not_processed`): one
/// per connection of a restarting connector, both of which refuse until their `Drain` has
/// arrived, and then one on whichever connector takes over.
const MAX_TRIES: usize = 4;

impl Tried {
    fn may_send_again(&self, retry: Retry, processed: Processed) -> bool {
        retry.allows(processed) && self.tunnels.len() + 1 < MAX_TRIES && !self.maybe_processed
    }

    fn record(&mut self, tunnel: &Arc<Tunnel>, processed: Processed) {
        self.tunnels.push(tunnel.clone());
        self.maybe_processed |= processed != Processed::No;
    }
}

/// Whether the connector may have acted on a request whose stream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Processed {
    /// Certainly not: no stream, or reset `not_processed`.
    No,
    /// Cannot know: the connection died while we waited.
    Unknown,
    /// It did (it answered with a failure code of its own).
    Yes,
}

/// One try of a request on one tunnel, up to its response head.
struct Attempt<'a> {
    encoded: Bytes,
    upgrade: bool,
    site: &'a str,
}

/// A try that failed, and whether trying elsewhere could do harm.
struct Failed {
    error: ProxyError,
    processed: Processed,
}

impl Attempt<'_> {
    /// Opens the stream, sends the head and starts the body (the first time only: a request
    /// with a body is never tried twice), and reads the response head. For an upgrade our
    /// send half stays open and is returned for the splice.
    async fn run(
        self,
        route: &mut Route,
        request_body: &mut Option<Incoming>,
        shared: &Shared,
    ) -> Result<(Option<SendHalf>, RecvHalf, ResponseHead), Failed> {
        let (mut send, mut recv) = route.open_stream(shared).await.map_err(|error| Failed {
            error,
            processed: Processed::No,
        })?;
        if let Err(e) = send.write_chunk(self.encoded).await
            && e.is_connection_gone()
        {
            // The head never left: whatever the connector saw, it was not this request.
            return Err(Failed {
                error: ProxyError::ConnectorUnresponsive,
                processed: Processed::No,
            });
        }
        // Any other write failure is the connector stopping the stream; its reset code,
        // read below, says why.
        // Fires if the client's request body turns out malformed (bad chunked coding, a
        // length mismatch) or is cut off: then the failure is the client's, whatever the
        // connector answers to the aborted stream.
        let mut body_failed = None;
        let mut send = if self.upgrade {
            // The request body of an upgrade is empty (`upgrade::classify`); the send half
            // stays open for the splice after a 101.
            Some(send)
        } else {
            match request_body.take() {
                None => send.finish(),
                Some(body) => {
                    let limits = &shared.config.limits;
                    let pump = Pump {
                        bytes: shared
                            .metrics
                            .request_bytes
                            .get_or_create_owned(&Metrics::site(self.site)),
                        idle: BodyIdle {
                            limit: limits.body_idle_timeout,
                            timeouts: shared.metrics.stream_failures.get_or_create_owned(
                                &crate::metrics::SiteReason {
                                    site: self.site.to_owned(),
                                    reason: "body_idle",
                                },
                            ),
                        },
                    };
                    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
                    body_failed = Some(failed_rx);
                    tokio::spawn(pump_request(body, send, pump, failed_tx));
                }
            }
            None
        };
        let client_body_failed = async {
            match body_failed.as_mut() {
                Some(failed) => failed.await,
                None => std::future::pending().await,
            }
        };
        let head = tokio::select! {
            biased;
            Ok(()) = client_body_failed => {
                recv.stop(StreamError::Cancelled);
                return Err(Failed { error: ProxyError::BadRequestBody, processed: Processed::Yes });
            }
            head = transport::head::read_response_head(&mut recv, MAX_RESPONSE_HEAD) => head,
            () = tokio::time::sleep(shared.config.limits.upstream_timeout) => {
                recv.stop(StreamError::Cancelled);
                if let Some(s) = send.as_mut() { s.reset(StreamError::Cancelled) }
                return Err(Failed { error: ProxyError::ResponseTimeout, processed: Processed::Yes });
            }
        };
        if head.is_err() && body_failed.is_some_and(|mut failed| failed.try_recv().is_ok()) {
            // The connector's reset answers our reset of the client's broken body.
            return Err(Failed {
                error: ProxyError::BadRequestBody,
                processed: Processed::Yes,
            });
        }
        let head = head.map_err(|e| match e {
            transport::Error::StreamReset(StreamError::NotProcessed)
            | transport::Error::StreamStopped(StreamError::NotProcessed) => Failed {
                error: ProxyError::ConnectorRefused,
                processed: Processed::No,
            },
            e if e.is_connection_gone() => Failed {
                error: ProxyError::ConnectorUnresponsive,
                processed: Processed::Unknown,
            },
            transport::Error::StreamReset(code) => Failed {
                error: ProxyError::from_stream_error(code),
                processed: Processed::Yes,
            },
            transport::Error::Decode(_) => Failed {
                error: ProxyError::BadResponseHead,
                processed: Processed::Yes,
            },
            _ => Failed {
                error: ProxyError::TunnelBroken,
                processed: Processed::Yes,
            },
        })?;
        Ok((send, recv, head))
    }
}

/// A body silent for `limit` ends its stream; counted in `timeouts`.
struct BodyIdle {
    limit: Duration,
    timeouts: Counter,
}

/// What the request body pump counts.
struct Pump {
    bytes: Counter,
    idle: BodyIdle,
}

/// Most body bytes one tunnel write takes (`pump_request`): four of the h1 path's read-size
/// chunks, well within the tunnel's per-stream window, so batching never waits for credit.
const BODY_BATCH: usize = 4 * transport::BODY_CHUNK;

/// Copies the client's request body into the tunnel as it arrives; on a client-side body
/// error, tells `failed` (before resetting the stream, so the request path learns it first).
///
/// HTTP/2 delivers a body in DATA frames of at most 16 KiB (HTTP/1.1 in reads of up to
/// hyper's buffer size), so the frames already received when one arrives are taken with it
/// and written as one batch of up to [`BODY_BATCH`] bytes: one tunnel write and one wake-up
/// of the tunnel's driver per batch instead of per frame.
async fn pump_request(
    mut body: Incoming,
    mut send: SendHalf,
    pump: Pump,
    failed: tokio::sync::oneshot::Sender<()>,
) {
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let Ok(frame) = tokio::time::timeout(pump.idle.limit, body.frame()).await else {
            // The client stopped sending mid-body: the upstream must see an aborted body.
            pump.idle.timeouts.inc();
            send.reset(StreamError::Cancelled);
            return;
        };
        let mut next = Some(frame);
        let mut batched = 0;
        let mut ended = false;
        while let Some(frame) = next.take() {
            match frame {
                None => ended = true,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        batched += data.len();
                        batch.push(data);
                    }
                    if batched < BODY_BATCH {
                        next = body.frame().now_or_never();
                    }
                }
                Some(Err(_)) => {
                    // A malformed body (hyper checks chunked coding and lengths) or an aborted
                    // upload: make the upstream see an aborted body, not a short one.
                    let _ = failed.send(());
                    send.reset(StreamError::Cancelled);
                    return;
                }
            }
        }
        pump.bytes.inc_by(batched as u64);
        if send.write_chunks(&mut batch).await.is_err() {
            // The connector stopped reading (upstream answered or failed).
            return;
        }
        batch.clear();
        if ended {
            break;
        }
    }
    send.finish();
}

/// What a live stream holds until it ends: its route, and for session-authenticated requests
/// the registration that lets a revocation find it. (The stream slot itself rides in the
/// stream's halves until the transport has closed them.)
struct Hold {
    _route: Route,
    _registration: Option<Registration>,
}

/// The response body read from the tunnel; holds `hold` until it is dropped. A body silent
/// for `idle.limit` (an upstream stalled mid-body, a connector cut off) ends with an error, and
/// the stream is stopped.
fn tunnel_body(recv: RecvHalf, hold: Hold, idle: BodyIdle) -> ResponseBody {
    let chunks = futures_util::stream::unfold(Some((recv, hold, idle)), |state| async move {
        let (mut recv, hold, idle) = state?;
        match tokio::time::timeout(idle.limit, recv.read_batch()).await {
            Ok(Ok(Some(chunk))) => Some((Ok(Frame::data(chunk)), Some((recv, hold, idle)))),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => Some((Err(std::io::Error::from(e)), None)),
            Err(_) => {
                idle.timeouts.inc();
                recv.stop(StreamError::Cancelled);
                let error = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "response body idle past limits.body_idle_timeout",
                );
                Some((Err(error), None))
            }
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// A WebSocket the upstream accepted (its 101 answered the handshake): the tunnel stream and
/// the client's pending upgrade, to be spliced by [`Splice::start`].
pub(crate) struct Splice {
    on_upgrade: hyper::upgrade::OnUpgrade,
    send: SendHalf,
    recv: RecvHalf,
    hold: Hold,
    revoked: CancellationToken,
    /// Its place under `limits.h2_max_websockets` (HTTP/2 only).
    slot: Option<OwnedSemaphorePermit>,
    meters: SpliceMeters,
}

impl Splice {
    /// Holds `slot` (the WebSocket's place on its HTTP/2 connection) until it closes.
    pub(crate) fn keep(&mut self, slot: OwnedSemaphorePermit) {
        self.slot = Some(slot);
    }

    /// Splices raw bytes both ways ([`transport::splice`]) until both sides ended (or either
    /// failed, or the client's certificate is revoked). `connection` keeps the client
    /// connection's limits and gauge held, and `on_close` (the access-log line) runs with the
    /// bytes each way, both until the WebSocket closes.
    pub(crate) fn start(self, connection: Arc<ConnectionHold>, on_close: Option<OnEnd>) {
        tokio::spawn(self.run(connection, on_close));
    }

    async fn run(self, _connection: Arc<ConnectionHold>, on_close: Option<OnEnd>) {
        let Self {
            on_upgrade,
            send,
            recv,
            hold: _hold,
            revoked,
            slot: _slot,
            meters,
        } = self;
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                // `send` and `recv` are dropped unfinished: reset and stopped.
                debug!(error = %e, "client upgrade failed");
                if let Some(on_close) = on_close {
                    on_close(Delivered::WebSocket { up: 0, down: 0 });
                }
                return;
            }
        };
        meters.open.inc();
        let _open = ActiveGuard(meters.open.clone());
        let spliced =
            transport::splice(TokioIo::new(upgraded), send, recv, revoked.cancelled()).await;
        // Counted whatever way it ended: what went through went through.
        let (up, down) = (spliced.up, spliced.down);
        meters.up.inc_by(up);
        meters.down.inc_by(down);
        match spliced.end {
            SpliceEnd::Closed => debug!(up, down, "websocket closed"),
            SpliceEnd::Cancelled => debug!("websocket closed: certificate revoked"),
            SpliceEnd::Local(e) => debug!(error = %e, "websocket ended by the client side"),
            SpliceEnd::Tunnel(e) => debug!(error = %e, "websocket ended by the tunnel side"),
        }
        if let Some(on_close) = on_close {
            on_close(Delivered::WebSocket { up, down });
        }
    }
}

/// What a WebSocket splice counts.
struct SpliceMeters {
    open: Gauge,
    up: Counter,
    down: Counter,
}

fn body_kind<B>(req: &Request<B>) -> BodyKind
where
    B: hyper::body::Body,
{
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return if len == 0 {
            BodyKind::Empty
        } else {
            BodyKind::Length(len)
        };
    }
    if req.body().is_end_stream() {
        BodyKind::Empty
    } else {
        BodyKind::Streamed
    }
}

/// The request target exactly as the client sent it (origin form).
fn raw_target<B>(req: &Request<B>) -> Bytes {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    Bytes::copy_from_slice(target.as_bytes())
}

/// The tokens of every `Connection` line, lower-cased; byte-level, so a line with a non-UTF-8
/// byte still names the headers it names.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = Vec<u8>> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .map(<[u8]>::to_ascii_lowercase)
}

/// Counts the request headers whose names contain `_`, which `request_headers` drops (nginx's
/// `underscores_in_headers off`): a server that maps `-` to `_` (CGI, WSGI, PHP, some
/// frameworks) would read `X_Forwarded_For` as the `X-Forwarded-For` we strip. The first one
/// in the process is logged, so an operator whose clients need such a header finds the
/// setting; the rest are only counted.
fn count_underscored(headers: &HeaderMap, site: &str, shared: &Shared) {
    let mut underscored = headers.keys().filter(|n| n.as_str().contains('_'));
    let Some(first) = underscored.next() else {
        return;
    };
    let dropped = 1 + underscored.count() as u64;
    shared
        .metrics
        .dropped_headers
        .get_or_create(&crate::metrics::SiteReason {
            site: site.to_owned(),
            reason: "underscore",
        })
        .inc_by(dropped);
    if !shared
        .underscore_logged
        .swap(true, std::sync::atomic::Ordering::Relaxed)
    {
        tracing::info!(site, header = %first, "dropping request headers whose names contain '_' (set limits.underscores_in_headers = true to forward them); further drops are only counted");
    }
}

/// The headers to forward, in order: hop-by-hop and forwarding headers removed, `Host` kept
/// (or set from `:authority` for HTTP/2), our session cookie removed from `Cookie`, and the
/// site's identity header replaced by ours. A WebSocket (`websocket_key`) gets the HTTP/1.1
/// handshake's own lines re-created at the end, with the key it is checked against.
fn request_headers(
    headers: &HeaderMap,
    drop_underscored: bool,
    host: &str,
    websocket_key: Option<&HeaderValue>,
    identity_header: Option<&HeaderName>,
    device: &str,
) -> Vec<(Bytes, Bytes)> {
    let named: Vec<Vec<u8>> = connection_tokens(headers).collect();
    let mut out = Vec::with_capacity(headers.len() + 2);
    let mut cookie_done = false;
    if !headers.contains_key(header::HOST) {
        out.push((
            Bytes::from_static(b"host"),
            Bytes::copy_from_slice(host.as_bytes()),
        ));
    }
    for (name, value) in headers {
        let n = name.as_str();
        if is_hop_by_hop(n)
            || is_forwarding(n)
            || (drop_underscored && n.contains('_'))
            || named.iter().any(|t| t.as_slice() == n.as_bytes())
            || identity_header == Some(name)
            || name == header::SEC_WEBSOCKET_KEY
        {
            continue;
        }
        if name == header::COOKIE {
            // Our session cookie is for the edge only; never forward it. Every `Cookie` line
            // becomes one, in the place of the first.
            if !cookie_done {
                cookie_done = true;
                let lines = headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes());
                if let Some(kept) = cookie::strip(lines) {
                    out.push((Bytes::from_static(b"cookie"), Bytes::from(kept)));
                }
            }
            continue;
        }
        out.push((
            Bytes::copy_from_slice(n.as_bytes()),
            Bytes::copy_from_slice(value.as_bytes()),
        ));
    }
    if let Some(name) = identity_header
        && !device.is_empty()
    {
        out.push((
            Bytes::copy_from_slice(name.as_str().as_bytes()),
            Bytes::copy_from_slice(device.as_bytes()),
        ));
    }
    if let Some(key) = websocket_key {
        // Re-created, not copied: `upgrade::classify` accepted exactly this and nothing else,
        // and an extended CONNECT (HTTP/2) has none of these lines to copy.
        out.push((
            Bytes::from_static(b"connection"),
            Bytes::from_static(b"upgrade"),
        ));
        out.push((
            Bytes::from_static(b"upgrade"),
            Bytes::from_static(b"websocket"),
        ));
        out.push((
            Bytes::from_static(b"sec-websocket-key"),
            Bytes::copy_from_slice(key.as_bytes()),
        ));
    }
    out
}

fn copy_response_headers(
    from: &[(Bytes, Bytes)],
    to: &mut HeaderMap,
    switching: bool,
) -> Result<(), ProxyError> {
    for (name, value) in from {
        let name = HeaderName::from_bytes(name).map_err(|_| ProxyError::BadResponseHead)?;
        let value = HeaderValue::from_bytes(value).map_err(|_| ProxyError::BadResponseHead)?;
        let hop = is_hop_by_hop(name.as_str());
        let keep_for_101 = switching && (name == header::UPGRADE || name == header::CONNECTION);
        if hop && !keep_for_101 {
            continue;
        }
        to.append(name, value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (n, v) in pairs {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap_or(header::ACCEPT),
                HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("")),
            );
        }
        map
    }

    fn names(out: &[(Bytes, Bytes)]) -> Vec<String> {
        out.iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    #[test]
    fn forwarding_and_hop_by_hop_headers_are_stripped() {
        let h = headers(&[
            ("host", "ha.example"),
            ("x-forwarded-for", "6.6.6.6"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("accept", "*/*"),
        ]);
        let out = request_headers(&h, true, "ha.example", None, None, "");
        assert_eq!(names(&out), ["host", "accept"]);
    }

    #[test]
    fn session_cookie_stripped_and_identity_header_replaced() {
        let h = headers(&[
            ("host", "ha.example"),
            ("cookie", "a=1; __Host-doorless=secret; b=2"),
            ("x-device", "forged-by-client"),
        ]);
        let name = HeaderName::from_static("x-device");
        let out = request_headers(&h, true, "ha.example", None, Some(&name), "alice-phone");
        assert_eq!(
            out,
            vec![
                (
                    Bytes::from_static(b"host"),
                    Bytes::from_static(b"ha.example")
                ),
                (
                    Bytes::from_static(b"cookie"),
                    Bytes::from_static(b"a=1; b=2")
                ),
                (
                    Bytes::from_static(b"x-device"),
                    Bytes::from_static(b"alice-phone")
                ),
            ]
        );
        // A request without a device (public path) gets no identity header at all.
        let out = request_headers(&h, true, "ha.example", None, Some(&name), "");
        assert!(!out.iter().any(|(n, _)| n.as_ref() == b"x-device"));
    }

    #[test]
    fn h2_requests_get_host_from_authority() {
        let out = request_headers(
            &headers(&[("accept", "*/*")]),
            true,
            "ha.example:8443",
            None,
            None,
            "",
        );
        assert_eq!(
            out[0],
            (
                Bytes::from_static(b"host"),
                Bytes::from_static(b"ha.example:8443")
            )
        );
    }

    #[test]
    fn underscored_names_are_dropped_unless_allowed() {
        let h = headers(&[
            ("host", "ha.example"),
            ("x_forwarded_for", "6.6.6.6"),
            ("x_custom", "1"),
            ("x-custom", "2"),
        ]);
        let out = request_headers(&h, true, "ha.example", None, None, "");
        assert_eq!(names(&out), ["host", "x-custom"]);
        let out = request_headers(&h, false, "ha.example", None, None, "");
        assert_eq!(
            names(&out),
            ["host", "x_forwarded_for", "x_custom", "x-custom"]
        );
    }

    #[test]
    fn upgrade_headers_survive_for_websocket() {
        let h = headers(&[
            ("host", "ha.example"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "client"),
            ("sec-websocket-version", "13"),
        ]);
        let key = HeaderValue::from_static("upstream");
        let out = request_headers(&h, true, "ha.example", Some(&key), None, "");
        assert_eq!(
            names(&out),
            [
                "host",
                "sec-websocket-version",
                "connection",
                "upgrade",
                "sec-websocket-key"
            ]
        );
        // The key sent is the one the 101 is checked against; never a second one.
        let keys: Vec<_> = out
            .iter()
            .filter(|(n, _)| n.as_ref() == b"sec-websocket-key")
            .collect();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].1.as_ref(), b"upstream");
        // Not a WebSocket: a key line is dropped, nothing is added.
        let out = request_headers(&h, true, "ha.example", None, None, "");
        assert_eq!(names(&out), ["host", "sec-websocket-version"]);
    }

    #[test]
    fn response_hop_by_hop_dropped_except_on_101() {
        let from = vec![
            (
                Bytes::from_static(b"connection"),
                Bytes::from_static(b"upgrade"),
            ),
            (
                Bytes::from_static(b"upgrade"),
                Bytes::from_static(b"websocket"),
            ),
            (
                Bytes::from_static(b"transfer-encoding"),
                Bytes::from_static(b"chunked"),
            ),
            (
                Bytes::from_static(b"content-type"),
                Bytes::from_static(b"text/plain"),
            ),
        ];
        let mut normal = HeaderMap::new();
        assert!(copy_response_headers(&from, &mut normal, false).is_ok());
        assert_eq!(normal.len(), 1);
        let mut switching = HeaderMap::new();
        assert!(copy_response_headers(&from, &mut switching, true).is_ok());
        assert_eq!(switching.len(), 3);
    }
}
