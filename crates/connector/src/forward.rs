//! One tunnel stream → one request to Home Assistant.
//!
//! Reads the edge's [`proto::StreamHeader`], rebuilds the request for the upstream with the
//! forwarding headers Home Assistant expects (exactly one `X-Forwarded-For` with the bare
//! client IP, one `X-Forwarded-Proto: https`, one `X-Forwarded-Host`), streams the body both
//! ways, and splices WebSockets after a 101. Failures reset the stream with a named code the
//! edge turns into 502/504.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use http::header::{self, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use proto::headers::{is_forwarding, is_hop_by_hop};
use proto::{BodyKind, ResponseHead, StreamError, StreamHeader, StreamKind};
use tokio_util::io::ReaderStream;
use tracing::debug;
use transport::{RecvHalf, SendHalf};

use crate::Shared;

/// Body type of requests to the upstream.
pub type UpstreamBody = UnsyncBoxBody<Bytes, io::Error>;

const MAX_STREAM_HEADER: usize = proto::stream::MAX_HEAD_FRAME;

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
    if let Err(code) = forward(header, send, recv, &shared).await {
        debug!(code = code.name(), "stream failed");
        let kind = match code {
            StreamError::UpstreamConnect => Some("connect"),
            StreamError::UpstreamTimeout => Some("timeout"),
            StreamError::UpstreamProtocol => Some("protocol"),
            StreamError::BadRequest => Some("bad_request"),
            _ => None,
        };
        if let Some(kind) = kind {
            metrics.upstream_error(kind);
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
) -> Result<(), StreamError> {
    let upgrade = header.kind == StreamKind::Upgrade;
    // For an upgrade the stream stays ours for the splice; otherwise it is the request body.
    let (body, mut recv): (UpstreamBody, Option<RecvHalf>) = match (upgrade, header.body) {
        (true, _) | (false, BodyKind::Empty) => (empty(), Some(recv)),
        (false, _) => (tunnel_body(recv), None),
    };
    let request = match build_request(&header, &shared.config.upstream, body) {
        Ok(r) => r,
        Err(code) => {
            send.reset(code);
            if let Some(r) = recv.as_mut() {
                r.stop(code);
            }
            return Err(code);
        }
    };
    let started = tokio::time::Instant::now();
    let response = tokio::select! {
        r = shared.client.request(request) => r,
        () = tokio::time::sleep(shared.config.limits.upstream_timeout) => {
            send.reset(StreamError::UpstreamTimeout);
            return Err(StreamError::UpstreamTimeout);
        }
        code = send.stopped() => {
            // The client went away before HA answered: dropping the request aborts it.
            return Err(code.unwrap_or(StreamError::Cancelled));
        }
    };
    let mut response = match response {
        Ok(r) => r,
        Err(e) => {
            let code = if e.is_connect() {
                StreamError::UpstreamConnect
            } else {
                StreamError::UpstreamProtocol
            };
            debug!(error = %e, "upstream request failed");
            send.reset(code);
            return Err(code);
        }
    };
    shared
        .metrics
        .upstream_duration
        .observe(started.elapsed().as_secs_f64());
    let switching = upgrade && response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let head = response_head(&response, switching);
    if transport::head::write_response_head(&mut send, &head)
        .await
        .is_err()
    {
        return Err(StreamError::Cancelled);
    }
    if switching {
        let Some(recv) = recv else {
            return Err(StreamError::Internal);
        };
        let upgraded = match hyper::upgrade::on(&mut response).await {
            Ok(u) => u,
            Err(_) => {
                send.reset(StreamError::UpstreamProtocol);
                return Err(StreamError::UpstreamProtocol);
            }
        };
        let mut upstream = TokioIo::new(upgraded);
        let mut tunnel = tokio::io::join(recv, send);
        let _ = tokio::io::copy_bidirectional_with_sizes(
            &mut tunnel,
            &mut upstream,
            transport::SPLICE_CHUNK,
            transport::SPLICE_CHUNK,
        )
        .await;
        return Ok(());
    }
    if let Some(mut r) = recv {
        // Nothing more to read from the edge for this request.
        r.stop(StreamError::Cancelled);
    }
    pump_response(response.into_body(), send).await
}

async fn pump_response(mut body: Incoming, mut send: SendHalf) -> Result<(), StreamError> {
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data()
                    && send.write_chunk(data).await.is_err()
                {
                    // The edge stopped reading: the client left. Dropping `body` aborts the
                    // upstream response.
                    return Err(StreamError::Cancelled);
                }
            }
            Err(_) => {
                send.reset(StreamError::UpstreamProtocol);
                return Err(StreamError::UpstreamProtocol);
            }
        }
    }
    send.finish();
    Ok(())
}

fn empty() -> UpstreamBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn tunnel_body(recv: RecvHalf) -> UpstreamBody {
    let stream = ReaderStream::with_capacity(recv, transport::BODY_CHUNK).map_ok(Frame::data);
    StreamBody::new(stream).boxed_unsync()
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

fn response_head(response: &Response<Incoming>, switching: bool) -> ResponseHead {
    use hyper::body::Body as _;
    let mut headers = Vec::with_capacity(response.headers().len());
    for (name, value) in response.headers() {
        let n = name.as_str();
        let keep_for_101 = switching && (name == header::UPGRADE || name == header::CONNECTION);
        if is_hop_by_hop(n) && !keep_for_101 {
            continue;
        }
        headers.push((
            Bytes::copy_from_slice(n.as_bytes()),
            Bytes::copy_from_slice(value.as_bytes()),
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
