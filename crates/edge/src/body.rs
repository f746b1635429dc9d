//! Step 8 of the request path: the response body as the client receives it, counted, and
//! logged once when it ends (the log line itself is `serve`'s `finish`).

use std::io;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Frame;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

/// Body type of every response the edge sends.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, io::Error>;

/// A body that is empty.
pub(crate) fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// How a response ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivered {
    /// A response body: the bytes handed to the client connection, and whether that was all
    /// of it (`false`: the client left or the tunnel broke mid-body).
    Body {
        /// Body bytes sent.
        bytes: u64,
        /// Sent to the end.
        complete: bool,
    },
    /// A WebSocket, when it closed: the bytes each way.
    WebSocket {
        /// Client → Home Assistant.
        up: u64,
        /// Home Assistant → client.
        down: u64,
    },
}

/// What runs once when a response is done (its body ended, or its WebSocket closed).
pub(crate) type OnEnd = Box<dyn FnOnce(Delivered) + Send>;

/// Wraps a response body: counts its bytes, keeps the request counted as active, and calls
/// `on_end` (if any) once when the body ends or is dropped.
pub(crate) fn metered(
    body: ResponseBody,
    bytes: Counter,
    active: Gauge,
    on_end: Option<OnEnd>,
) -> ResponseBody {
    Metered {
        complete: hyper::body::Body::is_end_stream(&body),
        inner: body,
        bytes,
        sent: 0,
        on_end,
        _active: ActiveGuard(active),
    }
    .boxed_unsync()
}

/// Decrements a gauge when dropped.
#[derive(Debug)]
pub(crate) struct ActiveGuard(pub Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Metered {
    inner: ResponseBody,
    bytes: Counter,
    sent: u64,
    complete: bool,
    on_end: Option<OnEnd>,
    _active: ActiveGuard,
}

impl Drop for Metered {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(Delivered::Body {
                bytes: self.sent,
                complete: self.complete,
            });
        }
    }
}

impl hyper::body::Body for Metered {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    self.bytes.inc_by(n);
                    self.sent += n;
                }
            }
            std::task::Poll::Ready(None) => self.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
