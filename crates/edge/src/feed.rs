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
//! budget; [`Counted`] (the connection's socket) gives the credit back as `h2` writes.
//!
//! Whose turn it is follows the request's RFC 9218 priority (`proto::Priority`, from the
//! `priority` header browsers send): the most urgent response with data goes first, so the
//! page's style sheets and the scripts it waits for (`u=0`, `u=1`) are not shared out with 60
//! deferred scripts and images; within an urgency, responses of use only whole go one after
//! another in request order, incremental ones take turns. Nothing waits for a response that
//! has no data ready (the order only decides among those waiting), and one piece in
//! [`SHARE_EVERY`] goes to the body that has waited longest, so no response, however urgent
//! and endless, starves the others. A request without the header (a native app's) is served
//! as an incremental `u=3`: such responses share, where RFC 9218's default (non-incremental)
//! would let the first endless one hold the rest for three pieces in four. The
//! budget is about [`QUEUE_TIME_MS`] of what the socket drained lately (at least one piece,
//! at most `limits.h2_response_queue`), so the wait ahead of a frame stays short on a slow
//! phone link and the queue long enough on a fast one. Bytes
//! `h2` never writes (a stream the client reset with data queued) would hold credit forever,
//! so a body waiting for credit while nothing has been written for [`STALL`] takes all of it
//! back and goes out of turn: the queue (or whoever is first in line) is then stuck, and
//! either way no reason to wait.
//!
//! Pieces follow the budget: 16 KiB (a browser's frame) once it holds one, 8 and then 4 KiB
//! ([`MIN_PIECE`], where a connection starts) on slower links, so on a phone link a frame
//! that has to wait waits behind a few KiB in `h2`.
//!
//! The kernel's own queue of unsent bytes (`TCP_NOTSENT_LOWAT`) is 16 KiB ([`MIN_UNSENT`]:
//! less starves BBR of the samples it needs to leave its start-up) unless the connection has
//! drained at the budget's cap (128 MB/s and more with the default) for
//! [`FAST_SAMPLES`] samples in a row; then it is the cap, which such a link drains in the same
//! 2 ms, and the socket no longer wakes us for every 16 KiB (on loopback that alone cost an
//! HTTP/2 download ~0.8× of the same download over HTTP/1.1). It does not follow the budget
//! in between: what the socket takes in a 10 ms sample overstates what the network drains
//! (slow start's bursts, TLS buffering), and a bound raised on that fed on itself — on a
//! 20 ms path it held the page's WebSocket answer ~40 ms longer. [`Counted`] applies the
//! bound, and hands TLS nothing new while it still holds records the kernel refused: rustls
//! takes whatever it is given (up to 64 KiB) whether the socket does or not, which would
//! queue four times the kernel's bound ahead of the next urgent frame.
//! A page (a megabyte) can never look fast: it takes 6 MB at that rate to get there.

use std::collections::BTreeMap;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use proto::Priority;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::body::ResponseBody;

/// Largest piece of a body handed to `h2` at once: one browser-sized DATA frame.
pub(crate) const PIECE: usize = 16 * 1024;
/// Smallest piece, and where a connection starts: on a link that drains less than a
/// [`PIECE`] per [`QUEUE_TIME_MS`] (~8 MB/s: phones, home uplinks) pieces and the budget
/// shrink with it, to this below ~4 MB/s, so an urgent frame waits behind a few KiB in `h2`
/// instead of a few frames.
pub(crate) const MIN_PIECE: usize = 4 * 1024;
/// The kernel's unsent bound on a connection that is not at LAN speed: 16 KiB, not less.
/// With 4 KiB the socket often ran out of unsent data between two wake-ups, Linux marked
/// the connection's rate samples app-limited, and BBR (the listener's default) never left
/// its start-up: at 80 ms per leg over a 20 Mbit/s downlink it paced at ~58 Mbit/s into the
/// bottleneck's buffer, lost thousands of segments, and live updates sharing the connection
/// waited a median 380 ms instead of 185 (docs/benchmarks.md, "What waits ahead …").
const MIN_UNSENT: u32 = PIECE as u32;
/// A body waiting this long for credit while the socket took nothing takes the credit back.
const STALL: Duration = Duration::from_millis(50);
/// How long a queue the budget aims at, in what the socket drains: a frame that has to wait
/// behind the queue waits about this long.
const QUEUE_TIME_MS: usize = 2;
/// How often the budget follows the socket's rate.
const SAMPLE_MS: u64 = 10;
/// Samples in a row at the budget's cap before the kernel's unsent bound is raised to it.
const FAST_SAMPLES: u32 = 5;

/// The body bytes one HTTP/2 connection holds between its response bodies and its socket.
#[derive(Debug)]
pub(crate) struct Feed {
    /// Most the budget may grow to (`limits.h2_response_queue`).
    max: usize,
    /// What may wait in `h2` now: [`QUEUE_TIME_MS`] of what the socket recently took, at
    /// least `min_piece`, at most `max`.
    budget: AtomicUsize,
    /// [`MIN_PIECE`] (the order tests, which count in whole pieces, set [`PIECE`]).
    min_piece: usize,
    /// What is queued, and who waits for room, in the order they get it.
    line: Mutex<Line>,
    /// Hands out turn numbers ([`Place`]).
    turns: AtomicU64,
    /// When the socket last took bytes (ms since `epoch`).
    last_write: AtomicU64,
    /// The current rate sample: since when (ms since `epoch`), and how many bytes.
    sample_start: AtomicU64,
    sample_bytes: AtomicUsize,
    epoch: Instant,
    /// Counts stall reclaims (`doorless_edge_h2_queue_reclaims_total`).
    reclaims: Counter,
    /// [`STALL`] (the tests that check order by hand set it out of reach).
    stall: Duration,
    /// Rate samples in a row that reached `max`.
    fast: AtomicU32,
    /// The kernel's unsent-bytes bound last asked for ([`Feed::unsent_due`]).
    unsent: AtomicUsize,
}

/// Where a body stands in line for room in the queue: the more urgent first (RFC 9218
/// urgency, from the request's `priority` header), then the lower turn. A non-incremental
/// response (a script: of use only whole) keeps its request's turn, so those go one after
/// another in request order; an incremental one (a page, an image) draws a new turn each time
/// it waits, so those share.
type Place = (u8, u64);

/// Of every this many pieces handed over while others wait, one goes to the body that has
/// waited longest, whatever its place: a response that always has data ready (a camera
/// stream, a big download) cannot starve the rest of its connection, however urgent.
const SHARE_EVERY: u32 = 4;

#[derive(Debug, Default)]
struct Line {
    /// Body bytes handed to `h2` and not yet written to the socket.
    queued: usize,
    /// Bodies holding data they may not hand over yet.
    waiting: BTreeMap<Place, Waiter>,
    /// Counts who joined the line, so the longest waiting is known.
    joined: u64,
    /// Pieces handed over in line order in a row while others waited.
    in_order: u32,
}

#[derive(Debug)]
struct Waiter {
    waker: Waker,
    /// When it joined the line (`Line::joined`).
    since: u64,
}

impl Line {
    fn has_room(&self, n: usize, budget: usize) -> bool {
        self.queued == 0 || self.queued + n <= budget
    }

    /// Whether the next piece is the longest waiting body's share.
    fn share_due(&self) -> bool {
        self.in_order + 1 >= SHARE_EVERY
    }

    /// Whose turn it is among those waiting: the first in line, or, every
    /// [`SHARE_EVERY`]th piece, the one that has waited longest.
    fn chosen(&self) -> Option<Place> {
        if self.share_due() {
            return self
                .waiting
                .iter()
                .min_by_key(|(_, w)| w.since)
                .map(|(place, _)| *place);
        }
        self.waiting.keys().next().copied()
    }

    /// Whether the body at `place` may hand a piece over now (room aside).
    fn turn_of(&self, place: Place) -> bool {
        match self.chosen() {
            None => true,
            // Due to the longest waiting: nobody else, not even a newcomer ahead of it.
            Some(chosen) if self.share_due() => chosen == place,
            Some(first) => place <= first,
        }
    }

    /// The body at `place` handed a piece over.
    fn served(&mut self, place: Place) {
        let longest = self.share_due() && self.chosen() == Some(place);
        self.waiting.remove(&place);
        self.in_order = if self.waiting.is_empty() || longest {
            0
        } else {
            self.in_order + 1
        };
    }

    /// Whose turn it is, if the queue has room for anything: to be woken.
    fn next(&self, budget: usize) -> Option<Waker> {
        if self.queued >= budget {
            return None;
        }
        let place = self.chosen()?;
        self.waiting.get(&place).map(|w| w.waker.clone())
    }
}

/// What a response's request drew: its priority and its turn (request order).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    priority: Priority,
    turn: u64,
}

impl Feed {
    /// A feed whose queue may grow to `max` body bytes; stall reclaims count on `reclaims`.
    pub(crate) fn new(max: usize, reclaims: Counter) -> Arc<Self> {
        Arc::new(Self {
            max,
            budget: AtomicUsize::new(MIN_PIECE.min(max)),
            min_piece: MIN_PIECE,
            line: Mutex::new(Line::default()),
            turns: AtomicU64::new(0),
            last_write: AtomicU64::new(0),
            sample_start: AtomicU64::new(0),
            sample_bytes: AtomicUsize::new(0),
            epoch: Instant::now(),
            reclaims,
            stall: STALL,
            fast: AtomicU32::new(0),
            // Nothing asked yet: `Counted::new` applies the first bound.
            unsent: AtomicUsize::new(0),
        })
    }

    /// How big a body's next piece may be: the budget rounded down to a power of two
    /// between `min_piece` and [`PIECE`] (4, 8 or 16 KiB).
    fn piece(&self) -> usize {
        let budget = self.budget.load(Ordering::Relaxed).min(PIECE);
        let mut piece = self.min_piece;
        while piece < PIECE && piece * 2 <= budget {
            piece *= 2;
        }
        piece
    }

    /// The unsent-bytes bound now, if it is not the one last asked for: [`PIECE`], or `max`
    /// after [`FAST_SAMPLES`] samples in a row at it (module docs). Changes at most once per
    /// [`SAMPLE_MS`]. Never less than [`PIECE`], whatever the pieces: see [`MIN_UNSENT`].
    fn unsent_due(&self) -> Option<u32> {
        let want = if self.fast.load(Ordering::Relaxed) >= FAST_SAMPLES {
            self.max.max(PIECE)
        } else {
            MIN_UNSENT as usize
        };
        (self.unsent.swap(want, Ordering::Relaxed) != want)
            .then(|| u32::try_from(want).unwrap_or(u32::MAX))
    }

    /// A ticket for a request with `priority`, taken when the request arrives.
    pub(crate) fn ticket(&self, priority: Priority) -> Ticket {
        Ticket {
            priority,
            turn: self.turn(),
        }
    }

    fn turn(&self) -> u64 {
        self.turns.fetch_add(1, Ordering::Relaxed)
    }

    fn line(&self) -> MutexGuard<'_, Line> {
        // Nothing panics while holding it; a poisoned line is still a consistent one.
        self.line
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes credit for `n` bytes for the body at `place` if the queue has room (an empty
    /// queue always has) and nobody stands before it in line; otherwise puts it in line
    /// (or keeps it there) to be woken through `waker`. `jump` skips the line (the stall
    /// path). The next in line is woken while room is left.
    fn admit(&self, n: usize, place: Place, waker: &Waker, jump: bool) -> bool {
        let budget = self.budget.load(Ordering::Relaxed);
        let mut line = self.line();
        if (jump || line.turn_of(place)) && line.has_room(n, budget) {
            line.queued += n;
            line.served(place);
            let next = line.next(budget);
            drop(line);
            if let Some(next) = next {
                next.wake();
            }
            return true;
        }
        let line = &mut *line;
        match line.waiting.get_mut(&place) {
            Some(registered) if registered.waker.will_wake(waker) => {}
            Some(registered) => registered.waker.clone_from(waker),
            None => {
                line.joined += 1;
                let since = line.joined;
                line.waiting.insert(
                    place,
                    Waiter {
                        waker: waker.clone(),
                        since,
                    },
                );
            }
        }
        false
    }

    /// A body leaves the line without being served (its stream ended or was reset).
    fn leave(&self, place: Place) {
        let budget = self.budget.load(Ordering::Relaxed);
        let mut line = self.line();
        if line.waiting.remove(&place).is_some() {
            let next = line.next(budget);
            drop(line);
            if let Some(next) = next {
                next.wake();
            }
        }
    }

    /// The socket took `n` bytes: that much credit comes back (frame headers and WebSocket
    /// bytes included, which only errs towards letting more through), and the rate sample
    /// grows; every [`SAMPLE_MS`] the budget follows it.
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
                .clamp(self.min_piece.min(self.max), self.max);
            self.budget.store(budget, Ordering::Relaxed);
            if budget >= self.max {
                self.fast.fetch_add(1, Ordering::Relaxed);
            } else {
                self.fast.store(0, Ordering::Relaxed);
            }
        }
        let budget = self.budget.load(Ordering::Relaxed);
        let mut line = self.line();
        let before = line.queued;
        line.queued = before.saturating_sub(n);
        let next = if before > 0 { line.next(budget) } else { None };
        drop(line);
        if let Some(next) = next {
            next.wake();
        }
    }

    /// Nothing written for [`STALL`]: whatever is counted is not going to be (see the module).
    fn reclaim_if_stalled(&self) -> bool {
        let idle = self
            .now_ms()
            .saturating_sub(self.last_write.load(Ordering::Relaxed));
        if idle < self.stall.as_millis() as u64 {
            return false;
        }
        let mut line = self.line();
        if line.queued > 0 {
            line.queued = 0;
            self.reclaims.inc();
        }
        true
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A response body that takes turns through `feed`, in the order `ticket` gives it.
pub(crate) fn gated(body: ResponseBody, feed: Arc<Feed>, ticket: Ticket) -> ResponseBody {
    Gated {
        inner: body,
        feed,
        ticket,
        held: None,
        place: None,
        stall: None,
    }
    .boxed_unsync()
}

struct Gated {
    inner: ResponseBody,
    feed: Arc<Feed>,
    ticket: Ticket,
    /// What the inner body gave and `h2` has not been handed yet.
    held: Option<Bytes>,
    /// Its place in line while it waits for room.
    place: Option<Place>,
    /// While it waits: the stall check.
    stall: Option<Pin<Box<Sleep>>>,
}

impl Gated {
    fn place(&mut self) -> Place {
        let Ticket { priority, turn } = self.ticket;
        *self.place.get_or_insert_with(|| {
            let turn = if priority.incremental {
                self.feed.turn()
            } else {
                turn
            };
            (priority.urgency, turn)
        })
    }
}

impl Body for Gated {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        let mut jump = false;
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
            let n = held.len().min(this.feed.piece());
            let place = this.place();
            if this.feed.admit(n, place, cx.waker(), jump) {
                this.place = None;
                this.stall = None;
                let piece = match this.held.take() {
                    Some(mut held) if held.len() > n => {
                        let piece = held.split_to(n);
                        this.held = Some(held);
                        piece
                    }
                    Some(held) => held,
                    None => Bytes::new(),
                };
                return Poll::Ready(Some(Ok(Frame::data(piece))));
            }
            // In line: woken when its turn comes, or by the stall check (which lets it pass
            // out of turn: the socket took nothing for a while, so whatever is ahead of it
            // is stuck, not sending).
            let stall = this
                .stall
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.feed.stall)));
            if !jump && stall.as_mut().poll(cx).is_ready() {
                if this.feed.reclaim_if_stalled() {
                    jump = true;
                    continue;
                }
                this.stall = None;
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

impl Drop for Gated {
    fn drop(&mut self) {
        if let Some(place) = self.place.take() {
            self.feed.leave(place);
        }
    }
}

/// A stream over a kernel socket whose queue of unsent bytes can be bounded
/// (`TCP_NOTSENT_LOWAT`).
pub(crate) trait UnsentBound {
    /// Lets the kernel queue at most about `bytes` not yet sent. Best effort.
    fn bound_unsent(&self, bytes: u32);
}

/// A connection's socket that gives its [`Feed`] credit back as it takes bytes, and tells the
/// kernel when the feed raises or lowers its unsent-bytes bound ([`Feed::unsent_due`]).
/// Without a feed (HTTP/1.1, or no bound) it only passes the bytes through.
pub(crate) struct Counted<S> {
    inner: S,
    feed: Option<Arc<Feed>>,
}

impl<S: UnsentBound> Counted<S> {
    /// Wraps `inner`, crediting `feed` if there is one (and then applying its first bound).
    pub(crate) fn new(inner: S, feed: Option<Arc<Feed>>) -> Self {
        if let Some(bytes) = feed.as_ref().and_then(|feed| feed.unsent_due()) {
            inner.bound_unsent(bytes);
        }
        Self { inner, feed }
    }

    fn credit(&self, written: usize) {
        if let Some(feed) = &self.feed {
            feed.written(written);
            if let Some(bytes) = feed.unsent_due() {
                self.inner.bound_unsent(bytes);
            }
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

impl<S: AsyncWrite + Unpin> Counted<S> {
    /// With a feed: what the layers above the socket still hold (TLS records the kernel
    /// refused) goes to the socket before they are handed more. TLS takes what it is given
    /// whether the kernel takes it or not (rustls buffers 64 KiB), which would put that much
    /// ahead of an urgent frame on top of the kernel's bound.
    fn poll_held(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.feed.is_none() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncWrite + UnsentBound + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.as_mut().poll_held(cx))?;
        let written = ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.credit(written);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.as_mut().poll_held(cx))?;
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

    /// A body of `pieces` whole pieces, gated with the default priority.
    fn gated(body: ResponseBody, feed: Arc<Feed>) -> ResponseBody {
        let ticket = feed.ticket(Priority::default());
        super::gated(body, feed, ticket)
    }

    /// A feed whose queue holds one whole piece and whose stall check never fires: the
    /// order tests poll by hand, and a slow machine must not let a body out of turn between
    /// two polls.
    fn patient() -> Arc<Feed> {
        let mut feed = Feed::new(PIECE, Counter::default());
        if let Some(feed) = Arc::get_mut(&mut feed) {
            feed.stall = Duration::from_secs(3600);
            feed.min_piece = PIECE;
            feed.budget = AtomicUsize::new(PIECE);
        }
        feed
    }

    /// A body of `pieces` whole pieces, gated with the priority `field` says.
    fn asked(feed: &Arc<Feed>, field: &str, pieces: usize) -> ResponseBody {
        let ticket = feed.ticket(Priority::parse([field.as_bytes()]));
        let parts = (0..pieces).map(|_| Bytes::from(vec![0u8; PIECE])).collect();
        super::gated(body(parts), feed.clone(), ticket)
    }

    /// Polls `body` once: the length of the piece it gave, or `None` if it is waiting;
    /// `woken` is set when it is woken afterwards.
    fn poll_once(body: &mut ResponseBody, woken: &Arc<Flag>) -> Option<usize> {
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        match Pin::new(body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().ok().map(|d| d.len()),
            Poll::Ready(other) => panic!("body ended: {:?}", other.map(|r| r.is_ok())),
            Poll::Pending => None,
        }
    }

    #[derive(Default)]
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn flags(n: usize) -> Vec<Arc<Flag>> {
        (0..n).map(|_| Arc::default()).collect()
    }

    impl Flag {
        fn take(&self) -> bool {
            self.0.swap(false, Ordering::SeqCst)
        }
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
        let mut whole = gated(body(parts), feed.clone());
        let mut out = Vec::new();
        while let Some(frame) = whole.frame().await {
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
        let mut one = gated(full.boxed_unsync(), feed);
        assert_eq!(next_len(&mut one, Duration::from_secs(1)).await, Some(3));
        assert!(one.is_end_stream());
        assert!(one.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_full_queue_waits_for_the_socket() {
        let feed = Feed::new(1 << 20, Counter::default());
        let mut a = gated(body(vec![Bytes::from(vec![0u8; 4 * PIECE])]), feed.clone());
        let mut b = gated(body(vec![Bytes::from(vec![1u8; PIECE])]), feed.clone());
        // The budget starts at the smallest piece: `a` takes it; `b` must wait.
        assert_eq!(
            next_len(&mut a, Duration::from_millis(1)).await,
            Some(MIN_PIECE)
        );
        assert_eq!(next_len(&mut b, Duration::from_millis(10)).await, None);
        // The socket takes that piece (through `Counted`): `b` goes on.
        let socket = Recorder::default();
        let mut counted = Counted::new(&socket, Some(feed.clone()));
        counted
            .write_all(&vec![0u8; MIN_PIECE])
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        assert_eq!(
            next_len(&mut b, Duration::from_millis(1)).await,
            Some(MIN_PIECE)
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
            Some(MIN_PIECE)
        );
        drop(lost);
        // Another body is not stuck forever: after the stall time it takes the credit back.
        let mut next = gated(body(vec![Bytes::from(vec![1u8; PIECE])]), feed.clone());
        let started = Instant::now();
        assert_eq!(
            next_len(&mut next, Duration::from_secs(5)).await,
            Some(MIN_PIECE)
        );
        let waited = started.elapsed();
        assert!(waited >= STALL && waited < STALL * 3, "{waited:?}");
        assert_eq!(reclaims.get(), 1);
    }

    #[test]
    fn the_budget_follows_what_the_socket_drains() {
        let feed = Feed::new(256 * 1024, Counter::default());
        assert_eq!(feed.budget.load(Ordering::Relaxed), MIN_PIECE);
        assert_eq!(feed.piece(), MIN_PIECE);
        let mut now = 20;
        feed.written_at(1, now);
        let mut drain = |per_ms: usize| {
            for _ in 0..10 {
                now += 1;
                feed.written_at(per_ms, now);
            }
            feed.budget.load(Ordering::Relaxed)
        };
        // 100 KB per ms: ~2 ms of that, in whole pieces.
        assert_eq!(drain(100_000), 200_000);
        assert_eq!(feed.piece(), PIECE);
        // Faster than the cap: the cap.
        assert_eq!(drain(1_000_000), 256 * 1024);
        // 5 KB per ms (40 Mbit/s): 10,000 bytes, pieces of 8 KiB.
        assert_eq!(drain(5_000), 10_000);
        assert_eq!(feed.piece(), 8 * 1024);
        // A slow link: the smallest piece.
        assert_eq!(drain(500), MIN_PIECE);
        assert_eq!(feed.piece(), MIN_PIECE);
    }

    /// Records what a [`Counted`] asks of its socket.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<u32>>);

    impl UnsentBound for &Recorder {
        fn bound_unsent(&self, bytes: u32) {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(bytes);
        }
    }

    impl AsyncWrite for &Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn the_kernels_unsent_bound_rises_only_on_a_fast_link_that_stays_fast() {
        let feed = Feed::new(256 * 1024, Counter::default());
        // At the start: one whole piece (what `Counted::new` applies), asked for once.
        assert_eq!(feed.unsent_due(), Some(MIN_UNSENT));
        assert_eq!(feed.unsent_due(), None);
        let mut now = 20;
        feed.written_at(1, now);
        let mut sample = |per_ms: usize| {
            for _ in 0..SAMPLE_MS {
                now += 1;
                feed.written_at(per_ms, now);
            }
            feed.unsent_due()
        };
        // Under the cap (100 KB/ms, a 200,000-byte budget): it stays, however long.
        for _ in 0..2 * FAST_SAMPLES {
            assert_eq!(sample(100_000), None);
        }
        // At the cap, but not for long enough (a burst): it stays.
        for _ in 1..FAST_SAMPLES {
            assert_eq!(sample(1_000_000), None);
        }
        assert_eq!(sample(100_000), None);
        // At the cap for FAST_SAMPLES in a row: the cap, asked for once.
        for _ in 1..FAST_SAMPLES {
            assert_eq!(sample(1_000_000), None);
        }
        assert_eq!(sample(1_000_000), Some(256 * 1024));
        assert_eq!(sample(1_000_000), None);
        // One slower sample: back to one piece.
        assert_eq!(sample(100_000), Some(MIN_UNSENT));
        // A slow link (small pieces): the bound stays.
        assert_eq!(sample(500), None);
        assert_eq!(feed.piece(), MIN_PIECE);
    }

    #[tokio::test]
    async fn the_socket_is_told_when_the_bound_changes() {
        let feed = Feed::new(256 * 1024, Counter::default());
        let socket = Recorder::default();
        let mut counted = Counted::new(&socket, Some(feed.clone()));
        counted
            .write_all(&[0u8; 100])
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        let asked = |s: &Recorder| s.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert_eq!(
            asked(&socket),
            vec![MIN_UNSENT],
            "the start, and no change yet"
        );
        // The socket drained fast for long enough: the next write carries the new bound.
        for i in 1..=u64::from(FAST_SAMPLES) {
            feed.written_at(1_000_000 * SAMPLE_MS as usize, i * SAMPLE_MS);
        }
        counted
            .write_all(&[0u8; 100])
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        assert_eq!(asked(&socket), vec![MIN_UNSENT, 256 * 1024]);
        // Without a feed (HTTP/1.1) the socket is never touched.
        let plain = Recorder::default();
        let mut counted = Counted::new(&plain, None);
        counted
            .write_all(&[0u8; 100])
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        assert!(asked(&plain).is_empty());
    }

    /// A TLS layer over a socket that takes nothing: it accepts every write (as rustls does)
    /// and holds it until the socket takes it (`open`).
    #[derive(Default)]
    struct Holding {
        held: usize,
        open: bool,
    }

    impl UnsentBound for Holding {
        fn bound_unsent(&self, _: u32) {}
    }

    impl AsyncWrite for Holding {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.held += buf.len();
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            if self.open {
                self.held = 0;
            }
            if self.held == 0 {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn nothing_more_goes_to_tls_while_it_holds_what_the_socket_refused() {
        let mut cx = Context::from_waker(Waker::noop());
        let feed = Feed::new(256 * 1024, Counter::default());
        let mut counted = Counted::new(Holding::default(), Some(feed));
        let mut write = |counted: &mut Counted<Holding>| {
            Pin::new(counted)
                .poll_write(&mut cx, &[0u8; 100])
                .map(|r| r.unwrap_or_else(|e| panic!("write: {e}")))
        };
        assert_eq!(write(&mut counted), Poll::Ready(100));
        // The socket took none of it: the next write waits.
        assert_eq!(write(&mut counted), Poll::Pending);
        assert_eq!(counted.inner.held, 100);
        // It did: the next write goes.
        counted.inner.open = true;
        assert_eq!(write(&mut counted), Poll::Ready(100));
        // Without a feed (HTTP/1.1: one response at a time) writes are passed on as they come.
        let mut plain = Counted::new(Holding::default(), None);
        assert_eq!(write(&mut plain), Poll::Ready(100));
        assert_eq!(write(&mut plain), Poll::Ready(100));
    }

    #[tokio::test]
    async fn the_most_urgent_response_goes_first() {
        let feed = patient();
        let flags = flags(3);
        // An image fills the queue (one piece to start with); then a deferred script (no
        // header: u=3) and a blocking script (u=1) wait, the less urgent one first in line.
        let mut image = asked(&feed, "u=2, i", 4);
        let mut deferred = asked(&feed, "", 2);
        let mut blocking = asked(&feed, "u=1", 2);
        assert_eq!(poll_once(&mut image, &flags[0]), Some(PIECE));
        assert_eq!(poll_once(&mut deferred, &flags[1]), None);
        assert_eq!(poll_once(&mut blocking, &flags[2]), None);
        // The socket takes the image's piece: only the blocking script is woken, and the
        // deferred one may not take the room even if it asks first.
        feed.written(PIECE);
        assert!(flags[2].take());
        assert!(!flags[1].take() && !flags[0].take());
        assert_eq!(poll_once(&mut deferred, &flags[1]), None);
        assert_eq!(poll_once(&mut image, &flags[0]), None);
        assert_eq!(poll_once(&mut blocking, &flags[2]), Some(PIECE));
        // It asks for its second piece at once (as hyper polls a body again after a frame),
        // gets it before the image (u=2), then the image goes, then the deferred script.
        assert_eq!(poll_once(&mut blocking, &flags[2]), None);
        feed.written(PIECE);
        assert!(flags[2].take());
        assert_eq!(poll_once(&mut image, &flags[0]), None);
        assert_eq!(poll_once(&mut blocking, &flags[2]), Some(PIECE));
        feed.written(PIECE);
        assert!(flags[0].take());
        assert_eq!(poll_once(&mut deferred, &flags[1]), None);
        assert_eq!(poll_once(&mut image, &flags[0]), Some(PIECE));
        // Three pieces went in line order while the deferred script waited: the fourth is
        // its share (it has waited longest), then the image goes on.
        assert_eq!(poll_once(&mut image, &flags[0]), None);
        feed.written(PIECE);
        assert!(flags[1].take());
        assert_eq!(poll_once(&mut image, &flags[0]), None);
        assert_eq!(poll_once(&mut deferred, &flags[1]), Some(PIECE));
        assert_eq!(poll_once(&mut deferred, &flags[1]), None);
        feed.written(PIECE);
        assert!(flags[0].take());
        assert_eq!(poll_once(&mut deferred, &flags[1]), None);
        assert_eq!(poll_once(&mut image, &flags[0]), Some(PIECE));
    }

    #[tokio::test]
    async fn an_endless_urgent_response_leaves_the_others_a_share() {
        let feed = patient();
        let flag = Arc::new(Flag::default());
        // A navigation-sized download (u=0) that always has data, and a later API answer.
        let mut endless = asked(&feed, "u=0", 1000);
        let mut answer = asked(&feed, "u=5", 2);
        assert_eq!(poll_once(&mut endless, &flag), Some(PIECE));
        assert_eq!(poll_once(&mut endless, &flag), None);
        assert_eq!(poll_once(&mut answer, &flag), None);
        let mut order = String::new();
        for _ in 0..12 {
            feed.written(PIECE);
            // Both ask every round, the answer first (the turn decides, not the polling
            // order); one that got a piece asks again at once, as hyper does.
            let answers = order.matches('a').count();
            if answers < 2 && poll_once(&mut answer, &flag).is_some() {
                order.push('a');
                if answers + 1 < 2 {
                    assert_eq!(poll_once(&mut answer, &flag), None);
                }
            } else if poll_once(&mut endless, &flag).is_some() {
                order.push('e');
                assert_eq!(poll_once(&mut endless, &flag), None);
            }
        }
        assert_eq!(order, "eeeaeeeaeeee");
    }

    #[tokio::test]
    async fn whole_responses_go_in_request_order_and_partial_ones_share() {
        let feed = patient();
        let flag = Arc::new(Flag::default());
        // Rounds of: the socket takes a piece, then every body with data left asks for room
        // (later requests first, to show it is not the polling order that decides), and one
        // that got a piece asks again at once, as hyper polls a body again after a frame.
        let order = |bodies: &mut Vec<(char, ResponseBody, usize)>| {
            // All ask while the queue is full: all wait.
            for (_, body, _) in bodies.iter_mut() {
                assert_eq!(poll_once(body, &flag), None);
            }
            let mut order = String::new();
            for _ in 0..6 {
                feed.written(PIECE);
                let mut served = 0;
                for (name, body, left) in bodies.iter_mut().rev().filter(|b| b.2 > 0) {
                    if poll_once(body, &flag).is_some() {
                        served += 1;
                        order.push(*name);
                        *left -= 1;
                        if *left > 0 {
                            assert_eq!(poll_once(body, &flag), None);
                        }
                    }
                }
                assert_eq!(served, 1);
            }
            order
        };
        let mut filler = asked(&feed, "u=0", 1);
        assert_eq!(poll_once(&mut filler, &flag), Some(PIECE));
        // Non-incremental (no header): the earlier request's response goes whole first.
        let mut whole = vec![('a', asked(&feed, "", 3), 3), ('b', asked(&feed, "", 3), 3)];
        assert_eq!(order(&mut whole), "aaabbb");
        // Incremental ones of the same urgency take turns (b's last piece fills the queue).
        let mut shared = vec![
            ('x', asked(&feed, "u=2, i", 3), 3),
            ('y', asked(&feed, "u=2, i", 3), 3),
        ];
        assert_eq!(order(&mut shared), "xyxyxy");
    }

    #[tokio::test]
    async fn a_response_that_leaves_the_line_hands_on_its_turn() {
        let feed = patient();
        let flags = flags(3);
        let mut filler = asked(&feed, "u=0", 1);
        let mut urgent = asked(&feed, "u=0", 1);
        let mut later = asked(&feed, "u=5", 1);
        assert_eq!(poll_once(&mut filler, &flags[0]), Some(PIECE));
        assert_eq!(poll_once(&mut urgent, &flags[1]), None);
        assert_eq!(poll_once(&mut later, &flags[2]), None);
        // The client resets the urgent stream while the queue is still full: once there is
        // room, the one behind it is woken and goes.
        drop(urgent);
        assert!(!flags[2].take());
        feed.written(PIECE);
        assert!(flags[2].take());
        assert_eq!(poll_once(&mut later, &flags[2]), Some(PIECE));
    }

    #[tokio::test]
    async fn a_stuck_first_in_line_holds_nobody_up_for_long() {
        let feed = Feed::new(1 << 20, Counter::default());
        let flag = Arc::new(Flag::default());
        let mut filler = asked(&feed, "u=0", 1);
        let mut stuck = asked(&feed, "u=0", 1);
        assert_eq!(poll_once(&mut filler, &flag), Some(MIN_PIECE));
        // First in line, but never polled again (its task is gone without dropping it).
        assert_eq!(poll_once(&mut stuck, &flag), None);
        let mut next = asked(&feed, "u=4", 1);
        let started = Instant::now();
        assert_eq!(
            next_len(&mut next, Duration::from_secs(5)).await,
            Some(MIN_PIECE)
        );
        let waited = started.elapsed();
        assert!(waited >= STALL && waited < STALL * 3, "{waited:?}");
    }
}
