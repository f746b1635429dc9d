//! One tunnel stream → one request to Home Assistant.
//!
//! Reads the edge's [`proto::StreamHeader`], rebuilds the request for the upstream with the
//! forwarding headers Home Assistant expects (exactly one `X-Forwarded-For` with the bare
//! client IP, one `X-Forwarded-Proto: https`, one `X-Forwarded-Host`), streams the body both
//! ways, and splices WebSockets after a 101. Failures reset the stream with a named code the
//! edge turns into 502/504.
//!
//! A response whose length the edge's client could read differently than we did is refused
//! before its head is relayed (RFC 9112 §6.3, see [`Framing`]): hyper alone would prefer
//! `Transfer-Encoding` and pass a conflicting `Content-Length` through, so the client would cut
//! (or wait for) a body of the wrong length.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use proto::headers::{is_forwarding, is_hop_by_hop};
use proto::{BodyKind, Priority, ResponseHead, StreamError, StreamHeader, StreamKind};
use tracing::debug;
use transport::{RecvHalf, SendHalf};

use crate::Shared;

/// Body type of requests to the upstream.
pub type UpstreamBody = UnsyncBoxBody<Bytes, io::Error>;

const MAX_STREAM_HEADER: usize = proto::stream::MAX_HEAD_FRAME;

/// Tunnel send priority of a WebSocket (higher goes first; other data streams are at most 3,
/// the control stream 100).
const WEBSOCKET_PRIORITY: i32 = 4;

/// Serves one data stream opened by the edge.
pub async fn stream(mut send: SendHalf, mut recv: RecvHalf, shared: Arc<Shared>) {
    let metrics = &shared.metrics;
    metrics.active_streams.inc();
    let _active = OnDrop(Some(|| {
        metrics.active_streams.dec();
    }));
    let head_limit = std::time::Duration::from_secs(10);
    let header = match tokio::time::timeout(
        head_limit,
        transport::head::read_stream_header(&mut recv, MAX_STREAM_HEADER),
    )
    .await
    {
        Ok(Ok(header)) => header,
        Ok(Err(e)) => {
            debug!(error = %e, "bad stream header");
            metrics.upstream_error("bad_request");
            abort(&mut send, &mut recv, StreamError::BadRequest);
            return;
        }
        Err(_) => {
            metrics.upstream_error("bad_request");
            abort(&mut send, &mut recv, StreamError::BadRequest);
            return;
        }
    };
    if let Err(Failed { code, kind }) = forward(header, send, recv, &shared).await {
        debug!(code = code.name(), kind, "stream failed");
        if let Some(kind) = kind {
            metrics.upstream_error(kind);
        }
    }
}

/// Why a stream failed: the code the edge sees (and turns into a status) and the
/// `upstream_errors` kind it is counted as, if it is the upstream's or the request's fault.
#[derive(Debug, Clone, Copy)]
struct Failed {
    code: StreamError,
    kind: Option<&'static str>,
}

impl From<StreamError> for Failed {
    fn from(code: StreamError) -> Self {
        let kind = match code {
            StreamError::UpstreamConnect => Some("connect"),
            StreamError::UpstreamTimeout => Some("timeout"),
            StreamError::UpstreamProtocol => Some("protocol"),
            StreamError::BadRequest => Some("bad_request"),
            _ => None,
        };
        Self { code, kind }
    }
}

impl From<Framing> for Failed {
    fn from(framing: Framing) -> Self {
        Self {
            code: StreamError::UpstreamProtocol,
            kind: Some(framing.kind()),
        }
    }
}

/// Runs its closure when dropped.
struct OnDrop<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> Drop for OnDrop<F> {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

fn abort(send: &mut SendHalf, recv: &mut RecvHalf, code: StreamError) {
    send.reset(code);
    recv.stop(code);
}

async fn forward(
    header: StreamHeader,
    mut send: SendHalf,
    recv: RecvHalf,
    shared: &Shared,
) -> Result<(), Failed> {
    let upgrade = header.kind == StreamKind::Upgrade;
    let priority = tunnel_priority(&header);
    if priority != 0 {
        send.set_priority(priority);
    }
    // For an upgrade the stream stays ours for the splice; otherwise it is the request body.
    let (body, mut recv): (UpstreamBody, Option<RecvHalf>) = match (upgrade, header.body) {
        (true, _) | (false, BodyKind::Empty) => (empty(), Some(recv)),
        (false, _) => (
            tunnel_body(recv, shared.config.limits.body_idle_timeout),
            None,
        ),
    };
    let request = match build_request(&header, &shared.config.upstream, body) {
        Ok(r) => r,
        Err(code) => {
            send.reset(code);
            if let Some(r) = recv.as_mut() {
                r.stop(code);
            }
            return Err(code.into());
        }
    };
    let started = tokio::time::Instant::now();
    let response = tokio::select! {
        r = shared.client.request(request) => r,
        () = tokio::time::sleep(shared.config.limits.upstream_timeout) => {
            send.reset(StreamError::UpstreamTimeout);
            return Err(StreamError::UpstreamTimeout.into());
        }
        code = send.stopped() => {
            // The client went away before HA answered: dropping the request aborts it.
            return Err(code.unwrap_or(StreamError::Cancelled).into());
        }
    };
    let mut response = match response {
        Ok(r) => r,
        Err(e) => {
            // A handshake that never completed: Home Assistant accepted the connection and
            // then did not answer, a timeout (504) like a response head that never comes;
            // counted apart from `timeout`, since its fix is in the upstream's TLS settings.
            if e.is_connect() && crate::upstream_tls::is_handshake_timeout(&e) {
                debug!(error = %e, "upstream TLS handshake timed out");
                send.reset(StreamError::UpstreamTimeout);
                return Err(Failed {
                    code: StreamError::UpstreamTimeout,
                    kind: Some("tls_timeout"),
                });
            }
            let code = if e.is_connect() {
                StreamError::UpstreamConnect
            } else {
                StreamError::UpstreamProtocol
            };
            debug!(error = %e, "upstream request failed");
            send.reset(code);
            // A certificate that did not verify is a 502 like a refused connection, but counted
            // apart: it is fixed in the TLS settings, not by starting Home Assistant.
            if code == StreamError::UpstreamConnect && crate::upstream_tls::is_tls_error(&e) {
                return Err(Failed {
                    code,
                    kind: Some("tls"),
                });
            }
            return Err(code.into());
        }
    };
    shared
        .metrics
        .upstream_duration
        .observe(started.elapsed().as_secs_f64());
    let switching = upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let length = match Framing::check(response.status(), response.headers(), switching) {
        Ok(length) => length,
        Err(framing) => {
            debug!(
                status = response.status().as_u16(),
                framing = framing.kind(),
                "refusing an ambiguously framed upstream response"
            );
            // Dropping `response` closes that upstream connection: its bytes cannot be trusted.
            send.reset(StreamError::UpstreamProtocol);
            if let Some(r) = recv.as_mut() {
                r.stop(StreamError::UpstreamProtocol);
            }
            return Err(framing.into());
        }
    };
    let head = response_head(&response, switching, length);
    if switching {
        if transport::head::write_response_head(&mut send, &head)
            .await
            .is_err()
        {
            return Err(StreamError::Cancelled.into());
        }
        let Some(recv) = recv else {
            return Err(StreamError::Internal.into());
        };
        let upgraded = match hyper::upgrade::on(&mut response).await {
            Ok(u) => u,
            Err(_) => {
                send.reset(StreamError::UpstreamProtocol);
                return Err(StreamError::UpstreamProtocol.into());
            }
        };
        // The upgraded connection lives until both sides ended; HA's own WebSocket pings
        // keep it busy, so no idle limit applies here.
        let spliced = transport::splice(
            TokioIo::new(upgraded),
            send,
            recv,
            std::future::pending::<()>(),
        )
        .await;
        debug!(up = spliced.up, down = spliced.down, end = ?spliced.end, "websocket ended");
        return Ok(());
    }
    if let Some(mut r) = recv {
        // Nothing more to read from the edge for this request.
        r.stop(StreamError::Cancelled);
    }
    let mut encoded = bytes::BytesMut::new();
    if head.encode(&mut encoded).is_err() {
        // A head over the protocol's limit: dropping `send` resets the stream, as before.
        return Err(StreamError::Cancelled.into());
    }
    let idle = shared.config.limits.body_idle_timeout;
    pump_response(encoded.freeze(), response.into_body(), send, idle).await
}

/// A response whose framing is refused (RFC 9112 §6.3): hyper reads it one way, but the
/// client behind the edge could read it another, so the only safe answer is a 502.
///
/// What hyper already refuses (differing or non-numeric `Content-Length` where it reads one,
/// `Transfer-Encoding` in HTTP/1.0) fails the request inside hyper and counts as `protocol`.
/// What hyper does on its own and is fine: it ignores interim 1xx responses, and reads no body
/// for 1xx/204/304 and HEAD (bytes an upstream sends anyway make hyper close that connection,
/// so they never prefix the next response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `Content-Length` and `Transfer-Encoding` together (§6.3 point 3: "ought to be handled
    /// as an error"; hyper would read chunked and pass the stale length on).
    LengthAndTransferEncoding,
    /// A transfer coding other than exactly one `chunked`: hyper would pass the coded bytes
    /// on as if they were the content, and the coding header is hop-by-hop, so dropped.
    TransferCoding,
    /// `Content-Length` values that disagree or are no number, on a response hyper did not
    /// read a length from (304, HEAD).
    ContentLength,
    /// A final 1xx status to a request that asked for no upgrade (hyper hands a 101 back).
    Informational,
}

impl Framing {
    /// The `upstream_errors` kind every framing refusal counts as.
    fn kind(self) -> &'static str {
        "framing"
    }

    /// Checks a response head; returns the one `Content-Length` to relay, if any.
    fn check(
        status: StatusCode,
        headers: &http::HeaderMap,
        switching: bool,
    ) -> Result<Option<u64>, Framing> {
        if status.is_informational() && !switching {
            return Err(Framing::Informational);
        }
        // 1xx and 204 have no body and must not carry a length (RFC 9110 §8.6): drop it.
        if status.is_informational() || status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let mut codings = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty());
        // A header present but empty counts as a coding too: hyper then reads until the
        // connection closes, whatever `Content-Length` says.
        let present = headers.contains_key(header::TRANSFER_ENCODING);
        let chunked = match (codings.next(), codings.next()) {
            (None, _) if !present => false,
            (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => true,
            _ => return Err(Framing::TransferCoding),
        };
        let length = content_length(headers)?;
        match (chunked, length) {
            (true, Some(_)) => Err(Framing::LengthAndTransferEncoding),
            (true, None) => Ok(None),
            (false, length) => Ok(length),
        }
    }
}

/// The one length all `Content-Length` values (headers and comma-separated list members)
/// agree on (§6.3 point 5 lets a recipient take identical duplicates as one); `None` without.
fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, Framing> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for member in value.as_bytes().split(|&b| b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() || !member.iter().all(u8::is_ascii_digit) {
                return Err(Framing::ContentLength);
            }
            let n = std::str::from_utf8(member)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(Framing::ContentLength)?;
            match length {
                Some(seen) if seen != n => return Err(Framing::ContentLength),
                _ => length = Some(n),
            }
        }
    }
    Ok(length)
}

/// Most response bytes one tunnel write takes: a few of hyper's reads, well within the
/// tunnel's per-stream window.
const BODY_BATCH: usize = 4 * transport::BODY_CHUNK;

/// Relays the encoded response `head` and HA's response body, then waits until the edge
/// acknowledged all of it: the stream's task (and with it a draining connector's connection)
/// must not end while response bytes are still in flight. A body that moves nothing for
/// `idle` is cut off (`UpstreamTimeout`).
///
/// What of the body is already here goes out with the head, and each later write takes
/// every frame that is ready (up to [`BODY_BATCH`] bytes): a small response leaves as one
/// write (head, body, FIN), so one packet and one wake-up at the edge, not one per piece.
async fn pump_response(
    head: Bytes,
    mut body: Incoming,
    mut send: SendHalf,
    idle: std::time::Duration,
) -> Result<(), Failed> {
    let mut batch = vec![head];
    let mut ready = body.frame().now_or_never();
    loop {
        let mut batched = 0;
        let mut ended = false;
        while let Some(frame) = ready.take() {
            match frame {
                None => ended = true,
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        batched += data.len();
                        batch.push(data);
                    }
                    if batched < BODY_BATCH {
                        ready = body.frame().now_or_never();
                    }
                }
                Some(Err(_)) => {
                    send.reset(StreamError::UpstreamProtocol);
                    return Err(StreamError::UpstreamProtocol.into());
                }
            }
        }
        if send.write_chunks(&mut batch).await.is_err() {
            // The edge stopped reading: the client left. Dropping `body` aborts the upstream
            // response.
            return Err(StreamError::Cancelled.into());
        }
        batch.clear();
        if ended {
            break;
        }
        let Ok(frame) = tokio::time::timeout(idle, body.frame()).await else {
            debug!(?idle, "upstream response body idle; ending the stream");
            send.reset(StreamError::UpstreamTimeout);
            return Err(Failed {
                code: StreamError::UpstreamTimeout,
                kind: Some("body_idle"),
            });
        };
        ready = Some(frame);
    }
    send.finish();
    send.delivered()
        .await
        .map_err(|_| Failed::from(StreamError::Cancelled))
}

fn empty() -> UpstreamBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The request body from the edge, as HA's request body. Silent for `idle`: the request to HA
/// fails (hyper aborts it), and the stream with it.
fn tunnel_body(recv: RecvHalf, idle: std::time::Duration) -> UpstreamBody {
    let chunks = futures_util::stream::unfold(Some(recv), move |recv| async move {
        let mut recv = recv?;
        match tokio::time::timeout(idle, recv.read_batch()).await {
            Ok(Ok(Some(chunk))) => Some((Ok(Frame::data(chunk)), Some(recv))),
            Ok(Ok(None)) => None,
            Ok(Err(e)) => Some((Err(io::Error::from(e)), None)),
            Err(_) => {
                recv.stop(StreamError::Cancelled);
                let error = io::Error::new(
                    io::ErrorKind::TimedOut,
                    "request body idle past limits.body_idle_timeout",
                );
                Some((Err(error), None))
            }
        }
    });
    StreamBody::new(chunks).boxed_unsync()
}

/// The send priority of a response's tunnel stream, so that a busy home uplink sends what
/// the browser needs first too: by the request's RFC 9218 urgency (`u=0` → 3 down to
/// `u=7` → -4; no header, `u=3`, is the default 0), a WebSocket above all responses (its
/// messages are what an open app waits for; on the edge they bypass the response queue too).
fn tunnel_priority(header: &StreamHeader) -> i32 {
    if header.kind == StreamKind::Upgrade {
        return WEBSOCKET_PRIORITY;
    }
    let field = header
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(b"priority"))
        .map(|(_, value)| value.as_ref());
    3 - i32::from(Priority::parse(field).urgency)
}

/// The upstream request: method and target byte for byte, headers in order minus hop-by-hop
/// and forwarding headers, plus our forwarding headers.
fn build_request(
    header: &StreamHeader,
    upstream: &Uri,
    body: UpstreamBody,
) -> Result<Request<UpstreamBody>, StreamError> {
    let method = http::Method::from_bytes(&header.method).map_err(|_| StreamError::BadRequest)?;
    let target = PathAndQuery::from_maybe_shared(header.target.clone())
        .map_err(|_| StreamError::BadRequest)?;
    let mut parts = upstream.clone().into_parts();
    parts.path_and_query = Some(target);
    let uri = Uri::from_parts(parts).map_err(|_| StreamError::BadRequest)?;
    let mut request = Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let upgrade = header.kind == StreamKind::Upgrade;
    let headers = request.headers_mut();
    let mut host = None;
    for (name, value) in &header.headers {
        let name = HeaderName::from_bytes(name).map_err(|_| StreamError::BadRequest)?;
        let value = HeaderValue::from_bytes(value).map_err(|_| StreamError::BadRequest)?;
        let n = name.as_str();
        let keep_for_upgrade = upgrade && (name == header::UPGRADE || name == header::CONNECTION);
        if (is_hop_by_hop(n) && !keep_for_upgrade) || is_forwarding(n) {
            continue;
        }
        if name == header::HOST {
            if host.is_some() {
                // Two Host headers: refuse rather than guess which one HA would use.
                return Err(StreamError::BadRequest);
            }
            host = Some(value.clone());
        }
        headers.append(name, value);
    }
    let host = host
        .filter(|h| !h.is_empty())
        .ok_or(StreamError::BadRequest)?;
    let client_ip = header.client.addr.ip().to_canonical();
    let xff = HeaderValue::from_str(&client_ip.to_string()).map_err(|_| StreamError::Internal)?;
    headers.insert(HeaderName::from_static("x-forwarded-for"), xff);
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("https"),
    );
    headers.insert(HeaderName::from_static("x-forwarded-host"), host);
    Ok(request)
}

/// The head to relay: hop-by-hop headers dropped (but `Upgrade`/`Connection` of a 101), and
/// `Content-Length` replaced by the single checked `length`, so the client reads exactly the
/// length we read.
fn response_head(
    response: &Response<Incoming>,
    switching: bool,
    length: Option<u64>,
) -> ResponseHead {
    use hyper::body::Body as _;
    let mut headers = Vec::with_capacity(response.headers().len());
    for (name, value) in response.headers() {
        let n = name.as_str();
        let keep_for_101 = switching && (name == header::UPGRADE || name == header::CONNECTION);
        if (is_hop_by_hop(n) && !keep_for_101) || name == header::CONTENT_LENGTH {
            continue;
        }
        headers.push((
            Bytes::copy_from_slice(n.as_bytes()),
            Bytes::copy_from_slice(value.as_bytes()),
        ));
    }
    if let Some(length) = length {
        headers.push((
            Bytes::from_static(b"content-length"),
            Bytes::from(length.to_string()),
        ));
    }
    let body = if switching || response.body().is_end_stream() {
        BodyKind::Empty
    } else {
        match response.body().size_hint().exact() {
            Some(0) => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
            None => BodyKind::Streamed,
        }
    };
    ResponseHead {
        version: proto::VERSION,
        status: response.status().as_u16(),
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::ClientInfo;

    fn header(headers: &[(&str, &str)], addr: &str) -> StreamHeader {
        StreamHeader {
            version: proto::VERSION,
            kind: StreamKind::Http,
            request_id: 1,
            method: Bytes::from_static(b"GET"),
            target: Bytes::from_static(b"/a/../b?x=%2e"),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        Bytes::copy_from_slice(n.as_bytes()),
                        Bytes::copy_from_slice(v.as_bytes()),
                    )
                })
                .collect(),
            body: BodyKind::Empty,
            client: ClientInfo {
                addr: addr
                    .parse()
                    .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
                cert_fingerprint: None,
                device: "phone".into(),
            },
        }
    }

    fn upstream() -> Uri {
        Uri::from_static("http://homeassistant:8123")
    }

    #[test]
    fn the_tunnel_sends_what_the_browser_needs_first() {
        let addr = "203.0.113.7:1";
        let page = tunnel_priority(&header(&[("priority", "u=0, i")], addr));
        let script = tunnel_priority(&header(&[("Priority", "u=1")], addr));
        let deferred = tunnel_priority(&header(&[("accept", "*/*")], addr));
        let prefetch = tunnel_priority(&header(&[("priority", "u=7")], addr));
        let bad = tunnel_priority(&header(&[("priority", "u=9")], addr));
        let mut websocket = header(&[("priority", "u=7")], addr);
        websocket.kind = StreamKind::Upgrade;
        let websocket = tunnel_priority(&websocket);
        assert_eq!(deferred, 0, "no header: the default stream priority");
        assert_eq!(bad, 0);
        assert!(websocket > page && page > script && script > deferred && deferred > prefetch);
    }

    #[test]
    fn exactly_one_of_each_forwarding_header() {
        let h = header(
            &[
                ("host", "ha.example.com"),
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
                ("x-real-ip", "6.6.6.6"),
                ("accept", "*/*"),
            ],
            "[::ffff:203.0.113.7]:51000",
        );
        let Ok(req) = build_request(&h, &upstream(), empty()) else {
            panic!("request must build");
        };
        let hs = req.headers();
        let all = |n: &str| {
            hs.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("x-forwarded-for"), ["203.0.113.7"]);
        assert_eq!(all("x-forwarded-proto"), ["https"]);
        assert_eq!(all("x-forwarded-host"), ["ha.example.com"]);
        assert!(all("forwarded").is_empty());
        assert!(all("x-real-ip").is_empty());
        assert_eq!(all("host"), ["ha.example.com"]);
        assert_eq!(
            req.uri().path_and_query().map(|p| p.as_str()),
            Some("/a/../b?x=%2e")
        );
        assert_eq!(
            req.uri().authority().map(|a| a.as_str()),
            Some("homeassistant:8123")
        );
    }

    #[test]
    fn ipv6_client_is_bare() {
        let h = header(&[("host", "ha.example.com")], "[2001:db8::1]:443");
        let Ok(req) = build_request(&h, &upstream(), empty()) else {
            panic!("request must build");
        };
        assert_eq!(req.headers()["x-forwarded-for"], "2001:db8::1");
    }

    #[test]
    fn framing_table() {
        fn check(
            status: u16,
            headers: &[(&str, &str)],
            switching: bool,
        ) -> Result<Option<u64>, Framing> {
            let mut map = http::HeaderMap::new();
            for (n, v) in headers {
                map.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap_or(header::WARNING),
                    HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static("x")),
                );
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            Framing::check(status, &map, switching)
        }
        let cl = "content-length";
        let te = "transfer-encoding";
        assert_eq!(check(200, &[], false), Ok(None));
        assert_eq!(check(200, &[(cl, "5")], false), Ok(Some(5)));
        assert_eq!(check(200, &[(cl, "5"), (cl, "5")], false), Ok(Some(5)));
        assert_eq!(check(200, &[(cl, "5, 5")], false), Ok(Some(5)));
        assert_eq!(check(200, &[(te, "chunked")], false), Ok(None));
        assert_eq!(check(200, &[(te, "Chunked")], false), Ok(None));
        assert_eq!(check(304, &[(cl, "42")], false), Ok(Some(42)));
        assert_eq!(check(204, &[(cl, "42"), (te, "gzip")], false), Ok(None));
        assert_eq!(check(101, &[(cl, "1")], true), Ok(None));
        let refused = [
            (
                200,
                vec![(cl, "3"), (te, "chunked")],
                Framing::LengthAndTransferEncoding,
            ),
            (
                304,
                vec![(te, "chunked"), (cl, "3")],
                Framing::LengthAndTransferEncoding,
            ),
            (200, vec![(te, "gzip")], Framing::TransferCoding),
            (200, vec![(te, "gzip, chunked")], Framing::TransferCoding),
            (
                200,
                vec![(te, "chunked"), (te, "chunked")],
                Framing::TransferCoding,
            ),
            (200, vec![(te, "")], Framing::TransferCoding),
            (200, vec![(te, " , ")], Framing::TransferCoding),
            (304, vec![(cl, "five")], Framing::ContentLength),
            (304, vec![(cl, "5"), (cl, "6")], Framing::ContentLength),
            (304, vec![(cl, "5,")], Framing::ContentLength),
            (304, vec![(cl, "+5")], Framing::ContentLength),
            (
                304,
                vec![(cl, "99999999999999999999999")],
                Framing::ContentLength,
            ),
            (101, vec![], Framing::Informational),
            (103, vec![], Framing::Informational),
        ];
        for (status, headers, want) in refused {
            assert_eq!(
                check(status, &headers, false),
                Err(want),
                "{status} {headers:?}"
            );
        }
    }

    #[test]
    fn missing_or_duplicate_host_is_refused() {
        let none = header(&[("accept", "*/*")], "1.2.3.4:5");
        assert_eq!(
            build_request(&none, &upstream(), empty()).err(),
            Some(StreamError::BadRequest)
        );
        let two = header(&[("host", "a"), ("host", "b")], "1.2.3.4:5");
        assert_eq!(
            build_request(&two, &upstream(), empty()).err(),
            Some(StreamError::BadRequest)
        );
    }
}
