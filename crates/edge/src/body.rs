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
/// `on_end` (if any) once when the body ends or is dropped. `length` is the response's
/// `Content-Length`, if it has one.
///
/// A body is complete when all of it was handed to the connection: it ended (`None`) with
/// as many bytes as it declared, or it reached its declared length (hyper stops polling a
/// body once its `Content-Length` is written, so the `None` never comes), or it was empty
/// from the start (HEAD, 204, 304, denials).
pub(crate) fn metered(
    body: ResponseBody,
    length: Option<u64>,
    bytes: Counter,
    active: Gauge,
    on_end: Option<OnEnd>,
) -> ResponseBody {
    Metered {
        complete: hyper::body::Body::is_end_stream(&body),
        length,
        inner: body,
        bytes,
        sent: 0,
        on_end,
        _active: ActiveGuard(active),
    }
    .boxed_unsync()
}

/// A body of `parts`, one data frame each, then an error if `fail` (a tunnel that broke).
#[cfg(test)]
pub(crate) fn test_body(parts: impl IntoIterator<Item = Bytes>, fail: bool) -> ResponseBody {
    let mut frames: Vec<Result<Frame<Bytes>, io::Error>> =
        parts.into_iter().map(|p| Ok(Frame::data(p))).collect();
    if fail {
        frames.push(Err(io::Error::other("tunnel broke")));
    }
    http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
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
    length: Option<u64>,
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
                    if self.length == Some(self.sent) {
                        self.complete = true;
                    }
                }
            }
            // Ended: complete unless it ended short of what it declared.
            std::task::Poll::Ready(None) => {
                self.complete = self.length.is_none_or(|n| n == self.sent);
            }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt as _, Full};

    use super::*;

    /// Reads `body` through `metered` with `length` declared, stopping after `stop_after`
    /// bytes if given (as hyper does at a `Content-Length`), and returns what `on_end` got.
    async fn deliver(
        body: ResponseBody,
        length: Option<u64>,
        stop_after: Option<u64>,
    ) -> Delivered {
        let seen = Arc::new(Mutex::new(None));
        let record = seen.clone();
        let on_end: OnEnd = Box::new(move |d| {
            *record.lock().unwrap_or_else(|p| p.into_inner()) = Some(d);
        });
        let mut metered = metered(
            body,
            length,
            Counter::default(),
            Gauge::default(),
            Some(on_end),
        );
        let mut sent = 0;
        while stop_after.is_none_or(|n| sent < n) {
            match metered.frame().await {
                Some(Ok(frame)) => sent += frame.data_ref().map_or(0, |d| d.len() as u64),
                _ => break,
            }
        }
        drop(metered);
        let delivered = *seen.lock().unwrap_or_else(|p| p.into_inner());
        delivered.unwrap_or(Delivered::WebSocket { up: 0, down: 0 })
    }

    fn chunks(parts: &[&'static [u8]], fail: bool) -> ResponseBody {
        test_body(parts.iter().map(|p| Bytes::from_static(p)), fail)
    }

    #[tokio::test]
    async fn complete_exactly_when_the_whole_body_went_out() {
        let body = |bytes, complete| Delivered::Body { bytes, complete };
        // Read to the end, no declared length (chunked).
        assert_eq!(
            deliver(chunks(&[b"ab", b"cd"], false), None, None).await,
            body(4, true)
        );
        // Declared length reached; hyper stops polling there, before the end of stream.
        assert_eq!(
            deliver(chunks(&[b"ab", b"cd"], false), Some(4), Some(4)).await,
            body(4, true)
        );
        // Ended short of the declared length.
        assert_eq!(
            deliver(chunks(&[b"ab"], false), Some(4), None).await,
            body(2, false)
        );
        // Broken mid-body, or dropped by a client that left.
        assert_eq!(
            deliver(chunks(&[b"ab"], true), None, None).await,
            body(2, false)
        );
        assert_eq!(
            deliver(chunks(&[b"ab", b"cd"], false), None, Some(2)).await,
            body(2, false)
        );
        // Nothing to send (HEAD, 204, denials).
        assert_eq!(deliver(empty(), Some(10), Some(0)).await, body(0, true));
        let full = Full::new(Bytes::from_static(b"xyz")).map_err(|never| match never {});
        assert_eq!(
            deliver(full.boxed_unsync(), Some(3), Some(3)).await,
            body(3, true)
        );
    }
}
