//! How fast response bodies are handed to an HTTP/2 connection: no faster than the socket
//! takes them, so a WebSocket message or a small response never queues behind a page's worth
//! of other responses.
//!
//! Why: `h2` sends the streams that have data round-robin, one frame (16 KiB with browsers)
//! per stream per turn, and hyper hands it up to 400 KB per stream before it stops polling a
//! body. While a browser loads a page — some 60 script and style responses at once on one
//! connection — a frame for a stream that just got something to say (the WebSocket's
//! `auth_ok`, the 200 that opens it, an API answer) waits for one frame of every other busy
//! stream: most of the page. On a phone network that is hundreds of milliseconds. The kernel
//! side is already bounded (`TCP_NOTSENT_LOWAT`, `serve`); this bounds the `h2` side.
//!
//! [`Feed`] counts body bytes handed to `h2` and not yet written to the socket; [`gated`]
//! bodies take turns in pieces of at most [`PIECE`] bytes while that count is under the
//! budget; [`Counted`] (the connection's socket) gives the credit back as `h2` writes. The
//! budget is about [`QUEUE_TIME_MS`] of what the socket drained lately (at least one piece,
//! at most `limits.h2_response_queue`), so the wait ahead of a frame stays short on a slow
//! phone link and the queue long enough on a fast one. Bytes
//! `h2` never writes (a stream the client reset with data queued) would hold credit forever,
//! so a body waiting for credit while nothing has been written for [`STALL`] takes all of it
//! back: the queue is then empty or stuck, and either way no reason to wait.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf as _, Bytes};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::{Instant, Sleep};

use crate::body::ResponseBody;

/// Largest piece of a body handed to `h2` at once: one browser-sized DATA frame.
pub(crate) const PIECE: usize = 16 * 1024;
/// A body waiting this long for credit while the socket took nothing takes the credit back.
const STALL: Duration = Duration::from_millis(50);
/// How long a queue the budget aims at, in what the socket drains: a frame that has to wait
/// behind the queue waits about this long.
const QUEUE_TIME_MS: usize = 2;
/// How often the budget follows the socket's rate.
const SAMPLE_MS: u64 = 10;

/// The body bytes one HTTP/2 connection holds between its response bodies and its socket.
#[derive(Debug)]
pub(crate) struct Feed {
    /// Most the budget may grow to (`limits.h2_response_queue`).
    max: usize,
    /// What may wait in `h2` now: [`QUEUE_TIME`] of what the socket recently took, at least
    /// [`PIECE`], at most `max`.
    budget: AtomicUsize,
    queued: AtomicUsize,
    /// When the socket last took bytes (ms since `epoch`).
    last_write: AtomicU64,
    /// The current rate sample: since when (ms since `epoch`), and how many bytes.
    sample_start: AtomicU64,
    sample_bytes: AtomicUsize,
    epoch: Instant,
    credit: Arc<Notify>,
    /// Counts stall reclaims (`doorless_edge_h2_queue_reclaims_total`).
    reclaims: Counter,
}

impl Feed {
    /// A feed whose queue may grow to `max` body bytes; stall reclaims count on `reclaims`.
    pub(crate) fn new(max: usize, reclaims: Counter) -> Arc<Self> {
        Arc::new(Self {
            max,
            budget: AtomicUsize::new(PIECE.min(max)),
            queued: AtomicUsize::new(0),
            last_write: AtomicU64::new(0),
            sample_start: AtomicU64::new(0),
            sample_bytes: AtomicUsize::new(0),
            epoch: Instant::now(),
            credit: Arc::new(Notify::new()),
            reclaims,
        })
    }

    /// Takes credit for `n` bytes if the queue has room for them (an empty queue always has).
    fn admit(&self, n: usize) -> bool {
        let budget = self.budget.load(Ordering::Relaxed);
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q == 0 || q + n <= budget).then_some(q + n)
            })
            .is_ok()
    }

    /// The socket took `n` bytes: that much credit comes back (frame headers and WebSocket
    /// bytes included, which only errs towards letting more through), and the rate sample
    /// grows; every [`SAMPLE`] the budget follows it.
    fn written(&self, n: usize) {
        self.written_at(n, self.now_ms());
    }

    /// [`Feed::written`] at `now` (ms since `epoch`).
    fn written_at(&self, n: usize, now: u64) {
        self.last_write.store(now, Ordering::Relaxed);
        let bytes = self.sample_bytes.fetch_add(n, Ordering::Relaxed) + n;
        let start = self.sample_start.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(start);
        if elapsed >= SAMPLE_MS
            && self
                .sample_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sample_bytes.store(0, Ordering::Relaxed);
            let per_ms = bytes / usize::try_from(elapsed).unwrap_or(usize::MAX).max(1);
            let budget = per_ms
                .saturating_mul(QUEUE_TIME_MS)
                .clamp(PIECE.min(self.max), self.max);
            self.budget.store(budget, Ordering::Relaxed);
        }
        let before = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                Some(q.saturating_sub(n))
            })
            .unwrap_or(0);
        if before > 0 {
            self.credit.notify_waiters();
        }
    }

    /// Nothing written for [`STALL`]: whatever is counted is not going to be (see the module).
    fn reclaim_if_stalled(&self) -> bool {
        let idle = self
            .now_ms()
            .saturating_sub(self.last_write.load(Ordering::Relaxed));
        if idle >= STALL.as_millis() as u64 {
            if self.queued.swap(0, Ordering::AcqRel) > 0 {
                self.reclaims.inc();
            }
            self.credit.notify_waiters();
            return true;
        }
        false
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A response body that takes turns through `feed`.
pub(crate) fn gated(body: ResponseBody, feed: Arc<Feed>) -> ResponseBody {
    Gated {
        inner: body,
        feed,
        held: None,
        waiting: None,
    }
    .boxed_unsync()
}

/// A body's wait for credit: the next credit given, and the stall check.
type Waiting = (Pin<Box<OwnedNotified>>, Pin<Box<Sleep>>);

struct Gated {
    inner: ResponseBody,
    feed: Arc<Feed>,
    /// What the inner body gave and `h2` has not been handed yet.
    held: Option<Bytes>,
    /// While there is no credit: the next credit, and the stall check.
    waiting: Option<Waiting>,
}

impl Body for Gated {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            let Some(held) = this.held.as_mut() else {
                match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) if data.is_empty() => continue,
                        Ok(data) => {
                            this.held = Some(data);
                            continue;
                        }
                        Err(frame) => return Poll::Ready(Some(Ok(frame))),
                    },
                    other => return Poll::Ready(other),
                }
            };
            let n = held.len().min(PIECE);
            if this.feed.admit(n) {
                this.waiting = None;
                let piece = if n == held.len() {
                    this.held.take().unwrap_or_default()
                } else {
                    let piece = held.slice(..n);
                    held.advance(n);
                    piece
                };
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            // No credit: wait for some — registered before admission is tried once more, so
            // credit given in between is not missed — or for the stall check.
            let fresh = this.waiting.is_none();
            let (notified, stall) = this.waiting.get_or_insert_with(|| {
                let mut notified = Box::pin(this.feed.credit.clone().notified_owned());
                notified.as_mut().enable();
                (notified, Box::pin(tokio::time::sleep(STALL)))
            });
            if fresh {
                continue;
            }
            if notified.as_mut().poll(cx).is_ready() {
                this.waiting = None;
                continue;
            }
            if stall.as_mut().poll(cx).is_ready() {
                this.feed.reclaim_if_stalled();
                this.waiting = None;
                continue;
            }
            return Poll::Pending;
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self.held.as_ref().map_or(0, |h| h.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

/// A connection's socket that gives its [`Feed`] credit back as it takes bytes.
/// Without a feed (HTTP/1.1, or no bound) it only passes the bytes through.
pub(crate) struct Counted<S> {
    inner: S,
    feed: Option<Arc<Feed>>,
}

impl<S> Counted<S> {
    /// Wraps `inner`, crediting `feed` if there is one.
    pub(crate) fn new(inner: S, feed: Option<Arc<Feed>>) -> Self {
        Self { inner, feed }
    }

    fn credit(&self, written: usize) {
        if let Some(feed) = &self.feed {
            feed.written(written);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.credit(written);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.inner).poll_write_vectored(cx, bufs))?;
        self.credit(written);
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;
    use tokio::io::AsyncWriteExt as _;

    use super::*;

    fn body(parts: Vec<Bytes>) -> ResponseBody {
        crate::body::test_body(parts, false)
    }

    /// The next data frame's length, or `None` if the body did not give one within `wait`.
    async fn next_len(body: &mut ResponseBody, wait: Duration) -> Option<usize> {
        match tokio::time::timeout(wait, body.frame()).await {
            Ok(Some(Ok(frame))) => frame.into_data().ok().map(|d| d.len()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn bodies_pass_whole_and_in_order_in_pieces() {
        let feed = Feed::new(1 << 20, Counter::default());
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let parts = vec![
            Bytes::copy_from_slice(&data[..10]),
            Bytes::new(),
            Bytes::copy_from_slice(&data[10..]),
        ];
        let mut gated = gated(body(parts), feed.clone());
        let mut out = Vec::new();
        while let Some(frame) = gated.frame().await {
            let chunk = frame
                .unwrap_or_else(|e| panic!("frame: {e}"))
                .into_data()
                .unwrap_or_else(|_| panic!("only data"));
            assert!(chunk.len() <= PIECE && !chunk.is_empty());
            out.extend_from_slice(&chunk);
            // The socket takes it at once.
            feed.written(chunk.len());
        }
        assert_eq!(out, data);
        let full = Full::new(Bytes::from_static(b"abc")).map_err(|never| match never {});
        let mut one = super::gated(full.boxed_unsync(), feed);
        assert_eq!(next_len(&mut one, Duration::from_secs(1)).await, Some(3));
        assert!(one.is_end_stream());
        assert!(one.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_full_queue_waits_for_the_socket() {
        let feed = Feed::new(1 << 20, Counter::default());
        let mut a = gated(body(vec![Bytes::from(vec![0u8; 4 * PIECE])]), feed.clone());
        let mut b = gated(body(vec![Bytes::from(vec![1u8; PIECE])]), feed.clone());
        // The budget starts at one piece: `a` takes it; `b` must wait.
        assert_eq!(
            next_len(&mut a, Duration::from_millis(1)).await,
            Some(PIECE)
        );
        assert_eq!(next_len(&mut b, Duration::from_millis(10)).await, None);
        // The socket takes that piece (through `Counted`): `b` goes on.
        let (mut socket, _peer) = tokio::io::duplex(1 << 20);
        let mut counted = Counted::new(&mut socket, Some(feed.clone()));
        counted
            .write_all(&vec![0u8; PIECE])
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        assert_eq!(
            next_len(&mut b, Duration::from_millis(1)).await,
            Some(PIECE)
        );
    }

    #[tokio::test]
    async fn credit_the_socket_never_returns_is_taken_back() {
        let reclaims = Counter::default();
        let feed = Feed::new(1 << 20, reclaims.clone());
        // A piece handed to h2 for a stream then reset: never written.
        let mut lost = gated(body(vec![Bytes::from(vec![0u8; PIECE])]), feed.clone());
        assert_eq!(
            next_len(&mut lost, Duration::from_millis(1)).await,
            Some(PIECE)
        );
        drop(lost);
        // Another body is not stuck forever: after the stall time it takes the credit back.
        let mut next = gated(body(vec![Bytes::from(vec![1u8; PIECE])]), feed.clone());
        let started = Instant::now();
        assert_eq!(
            next_len(&mut next, Duration::from_secs(5)).await,
            Some(PIECE)
        );
        let waited = started.elapsed();
        assert!(waited >= STALL && waited < STALL * 3, "{waited:?}");
        assert_eq!(reclaims.get(), 1);
    }

    #[test]
    fn the_budget_follows_what_the_socket_drains() {
        let feed = Feed::new(256 * 1024, Counter::default());
        assert_eq!(feed.budget.load(Ordering::Relaxed), PIECE);
        let mut now = 20;
        feed.written_at(1, now);
        let mut drain = |per_ms: usize| {
            for _ in 0..10 {
                now += 1;
                feed.written_at(per_ms, now);
            }
            feed.budget.load(Ordering::Relaxed)
        };
        // 100 KB per ms: ~2 ms of that.
        assert_eq!(drain(100_000), 200_000);
        // Faster than the cap: the cap.
        assert_eq!(drain(1_000_000), 256 * 1024);
        // A slow link: one piece.
        assert_eq!(drain(500), PIECE);
    }
}
