//! The tunnel over TLS 1.3 on TCP, multiplexed with HTTP/2 framing (the `h2` crate): the
//! fallback for networks that drop UDP.
//!
//! The connector dials the edge's HTTPS port with ALPN `doorless-tcp/1` and mutual TLS (the
//! same certificates and verifiers as QUIC), then acts as the HTTP/2 *server* on the connection
//! it dialed; the edge is the HTTP/2 *client* and opens one h2 stream per tunnel stream, as
//! cloudflared does. Right after the h2 handshake the edge opens two streams of its own:
//! `/control` (the tunnel's control stream; the connector still speaks first, with `Hello`) and
//! `/close` (this module's: either side writes one close frame, `code: u32 | reason`, before it
//! closes the connection, which is how a close code and reason reach the peer as QUIC's
//! `CONNECTION_CLOSE` does; h2's client side cannot send a GOAWAY with a code). Every other
//! stream (`/`) carries exactly the bytes of one QUIC stream. The mapping is in
//! `docs/protocol.md`, "TLS/TCP mapping".
//!
//! One driver task per connection polls the h2 connection, sends a PING every `keep_alive`
//! (the RTT comes from its PONG), and closes the connection once nothing was received for
//! `idle_timeout`, like QUIC's idle timeout. A local close lingers (bounded) so the close frame
//! and any data queued before it reach the peer.
//!
//! What it is not: public. Callers see [`crate::Connection`], [`crate::SendHalf`] and
//! [`crate::RecvHalf`], which wrap either transport.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use proto::{CloseCode, StreamError};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::{Alert, CertificateProblem, Error, Tuning, Wait};

/// The control stream's path; the edge opens it first.
const CONTROL_PATH: &str = "/control";
/// The transport's own close-frame stream; the edge opens it second.
const CLOSE_PATH: &str = "/close";
/// Every data stream.
const DATA_PATH: &str = "/";
/// `:authority` of every request (HTTP/2 wants one; it means nothing here).
const AUTHORITY: &str = "tunnel.doorless";
/// Longest close reason carried (QUIC's is bounded by a packet, too).
const MAX_CLOSE_REASON: usize = 1024;
/// After a local close, how long the driver keeps flushing before it drops the socket (the peer
/// normally hangs up first, as soon as it read the close frame).
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Bytes per DATA frame we hand h2 at most in one write.
const MAX_WRITE: usize = 64 * 1024;

/// Why a TCP connection ended, kept so every stream and `closed()` report the same thing.
#[derive(Debug, Clone)]
enum Cause {
    Local,
    ByPeer { code: CloseCode, reason: String },
    Reset,
    Silent,
    Failed(String),
    Handshake(Refusal),
}

/// The typed handshake failures a connection can end with after TLS (TLS 1.3 refusals of our
/// certificate arrive after our side of the handshake).
#[derive(Debug, Clone, Copy)]
enum Refusal {
    Refused(Alert),
    Invalid(CertificateProblem),
}

impl Cause {
    fn to_error(&self) -> Error {
        match self {
            Self::Local => Error::LocallyClosed,
            Self::ByPeer { code, reason } => Error::ClosedByPeer {
                code: *code,
                reason: reason.clone(),
            },
            Self::Reset => Error::ResetByPeer,
            Self::Silent => Error::TimedOut(Wait::PeerSilent),
            Self::Failed(why) => Error::Failed(why.clone()),
            Self::Handshake(Refusal::Refused(alert)) => Error::HandshakeRefused(*alert),
            Self::Handshake(Refusal::Invalid(problem)) => Error::InvalidPeerCertificate(*problem),
        }
    }
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// State of one connection that its streams, its handle and its driver share.
#[derive(Debug)]
struct Shared {
    id: usize,
    remote: SocketAddr,
    peer_certificate: CertificateDer<'static>,
    cause: watch::Sender<Option<Cause>>,
    /// Wakes the driver for a local close.
    closing: Notify,
    /// Our half of the `/close` stream, once it exists.
    close_send: Mutex<Option<h2::SendStream<Bytes>>>,
    /// Our close frame, if we closed before the `/close` stream arrived (connector side).
    close_pending: Mutex<Option<Bytes>>,
    /// Smoothed PING RTT in microseconds (0 until the first PONG).
    rtt_us: AtomicU64,
    /// When we last read anything from the socket, in ms since `started`.
    last_read_ms: AtomicU64,
    /// Socket reads that returned data so far (the liveness input, like QUIC's datagram
    /// count).
    reads: AtomicU64,
    started: Instant,
}

impl Shared {
    fn new(remote: SocketAddr, peer_certificate: CertificateDer<'static>) -> Arc<Self> {
        Arc::new(Self {
            // High bit set: never equal to a QUIC connection's id.
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed) | (1 << (usize::BITS - 1)),
            remote,
            peer_certificate,
            cause: watch::Sender::new(None),
            closing: Notify::new(),
            close_send: Mutex::new(None),
            close_pending: Mutex::new(None),
            rtt_us: AtomicU64::new(0),
            last_read_ms: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            started: Instant::now(),
        })
    }

    /// Records why the connection ended; the first cause wins. `true` if this one did.
    fn end(&self, cause: Cause) -> bool {
        self.cause.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(cause);
            true
        })
    }

    fn cause(&self) -> Option<Cause> {
        self.cause.borrow().clone()
    }

    fn check_open(&self) -> Result<(), Error> {
        match self.cause() {
            Some(cause) => Err(cause.to_error()),
            None => Ok(()),
        }
    }

    fn heard(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_read_ms.store(ms, Ordering::Relaxed);
        self.reads.fetch_add(1, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// An h2 error on one of our streams, in the transport's terms. A reset the peer sent is
    /// the stream's own error; anything else is the connection's, if it has ended.
    fn stream_error(&self, e: &h2::Error, sending: bool) -> Error {
        if e.is_reset()
            && e.is_remote()
            && let Some(reason) = e.reason()
        {
            let code = stream_error_of(reason);
            return if sending {
                Error::StreamStopped(code)
            } else {
                Error::StreamReset(code)
            };
        }
        if let Some(cause) = self.cause() {
            return cause.to_error();
        }
        if e.is_reset() {
            // Reset by us (or by h2 on our behalf): this stream is over.
            return Error::LocallyClosed;
        }
        connection_error(e).to_error()
    }

    async fn closed(&self) -> Error {
        let mut rx = self.cause.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(cause) => cause.as_ref().map_or(Error::LocallyClosed, Cause::to_error),
            // The sender lives in `self`: not reached.
            Err(_) => Error::LocallyClosed,
        }
    }
}

/// The peer's RST_STREAM reason as the protocol's stream error. Our codes are sent as the
/// reason unchanged; h2's own `CANCEL` (sent when every handle of a stream is dropped) and
/// `REFUSED_STREAM` (over the concurrency limit) mean what ours of that name mean.
fn stream_error_of(reason: h2::Reason) -> StreamError {
    match reason {
        h2::Reason::CANCEL => StreamError::Cancelled,
        h2::Reason::REFUSED_STREAM => StreamError::Refused,
        other => StreamError::from_code(u32::from(other)),
    }
}

fn reason_of(error: StreamError) -> h2::Reason {
    h2::Reason::from(error.code())
}

/// Why a whole h2 connection failed.
fn connection_error(e: &h2::Error) -> Cause {
    if let Some(io) = e.get_io() {
        return io_cause(io);
    }
    if e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR) {
        return Cause::ByPeer {
            code: CloseCode::Normal,
            reason: String::new(),
        };
    }
    Cause::Failed(e.to_string())
}

fn io_cause(e: &io::Error) -> Cause {
    if let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        return match tls_error(tls) {
            Error::HandshakeRefused(alert) => Cause::Handshake(Refusal::Refused(alert)),
            Error::InvalidPeerCertificate(p) => Cause::Handshake(Refusal::Invalid(p)),
            other => Cause::Failed(other.to_string()),
        };
    }
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => Cause::Reset,
        io::ErrorKind::TimedOut => Cause::Silent,
        _ => Cause::Failed(e.to_string()),
    }
}

/// A rustls verdict (ours or the peer's alert) as the transport error QUIC gives for it.
pub(crate) fn tls_error(e: &rustls::Error) -> Error {
    use rustls::{CertificateError as C, Error as E};
    match e {
        E::AlertReceived(alert) => Error::HandshakeRefused(Alert(u8::from(*alert))),
        E::NoCertificatesPresented => Error::InvalidPeerCertificate(CertificateProblem::Missing),
        E::InvalidCertificate(c) => Error::InvalidPeerCertificate(match c {
            C::UnknownIssuer => CertificateProblem::UnknownIssuer,
            C::BadSignature => CertificateProblem::BadSignature,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => CertificateProblem::Expired,
            C::Revoked => CertificateProblem::Revoked,
            C::NotValidForName | C::NotValidForNameContext { .. } | C::InvalidPurpose => {
                CertificateProblem::NotValidForUse
            }
            _ => CertificateProblem::Other,
        }),
        E::NoApplicationProtocol => Error::HandshakeFailed(Alert(120)),
        other => Error::Failed(format!("TLS: {other}")),
    }
}

/// Counts reads, so the driver knows when the peer last said anything.
struct Heard<T> {
    io: T,
    shared: Arc<Shared>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Heard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = ready!(Pin::new(&mut self.io).poll_read(cx, buf));
        if result.is_ok() && buf.filled().len() > before {
            self.shared.heard();
        }
        Poll::Ready(result)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Heard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

// === Streams ===

/// The sending side of one h2 stream. Shares the h2 handle with its [`Recv`] so that
/// `stop` can reset the stream (HTTP/2 has no STOP_SENDING).
#[derive(Debug)]
pub(crate) struct Send {
    stream: Handle,
    shared: Arc<Shared>,
    done: bool,
    /// Set when our side ended with END_STREAM (not a reset); shared with the `Recv`.
    finished: Arc<Mutex<bool>>,
}

/// The h2 handle of one stream, shared by its two halves, and whether our side ended cleanly.
///
/// Why the flag: when the last handle of a stream whose peer side is still open is dropped, h2
/// resets it (`CANCEL` on the edge's side), and a scheduled `CANCEL` discards DATA still queued
/// for sending. QUIC delivers what was written before a finish whatever happens to the
/// handles; so does this, by keeping a finished stream's handles a moment (`linger`).
type Handle = Arc<Mutex<h2::SendStream<Bytes>>>;

/// How long a finished stream's last handle is kept so its queued DATA goes out.
const STREAM_LINGER: Duration = Duration::from_secs(2);

/// Keeps `stream`'s handle for [`STREAM_LINGER`], so what we queued goes out before h2's
/// implicit reset (a plain drop of the last handle).
fn linger(stream: Handle) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        tokio::time::sleep(STREAM_LINGER).await;
        drop(stream);
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every critical section is a single h2 call: a poisoned lock holds consistent state.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Send {
    /// Writes as much of `data` as the peer's window allows now, waiting for some.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<Result<usize, Error>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.shared.check_open()?;
        if self.done {
            return Poll::Ready(Err(Error::LocallyClosed));
        }
        let mut stream = lock(&self.stream);
        let want = data.len().min(MAX_WRITE);
        // Bounded memory: we only ever give h2 what the peer's window has room for.
        stream.reserve_capacity(want);
        let mut capacity = stream.capacity();
        while capacity == 0 {
            match stream.poll_capacity(cx) {
                Poll::Pending => {
                    // A peer reset ends the wait too.
                    if let Poll::Ready(Ok(reason)) = stream.poll_reset(cx) {
                        return Poll::Ready(Err(Error::StreamStopped(stream_error_of(reason))));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(n))) => capacity = n.min(stream.capacity()),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(self.shared.stream_error(&e, true)));
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Err(match stream.poll_reset(cx) {
                        Poll::Ready(Ok(reason)) => Error::StreamStopped(stream_error_of(reason)),
                        _ => self
                            .shared
                            .check_open()
                            .err()
                            .unwrap_or(Error::LocallyClosed),
                    }));
                }
            }
        }
        let n = capacity.min(want);
        match stream.send_data(Bytes::copy_from_slice(&data[..n]), false) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(e) => Poll::Ready(Err(self.shared.stream_error(&e, true))),
        }
    }

    /// Sends `data` whole, window by window, without copying it.
    pub(crate) async fn write_chunk(&mut self, mut data: Bytes) -> Result<(), Error> {
        while !data.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_capacity(cx, data.len())).await?;
            let piece = data.split_to(n);
            let mut stream = lock(&self.stream);
            if let Err(e) = stream.send_data(piece, false) {
                return Err(self.shared.stream_error(&e, true));
            }
        }
        Ok(())
    }

    fn poll_capacity(&mut self, cx: &mut Context<'_>, len: usize) -> Poll<Result<usize, Error>> {
        self.shared.check_open()?;
        if self.done {
            return Poll::Ready(Err(Error::LocallyClosed));
        }
        let mut stream = lock(&self.stream);
        let want = len.min(MAX_WRITE);
        stream.reserve_capacity(want);
        loop {
            let capacity = stream.capacity();
            if capacity > 0 {
                return Poll::Ready(Ok(capacity.min(want)));
            }
            match stream.poll_capacity(cx) {
                Poll::Pending => {
                    if let Poll::Ready(Ok(reason)) = stream.poll_reset(cx) {
                        return Poll::Ready(Err(Error::StreamStopped(stream_error_of(reason))));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(self.shared.stream_error(&e, true)));
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Err(match stream.poll_reset(cx) {
                        Poll::Ready(Ok(reason)) => Error::StreamStopped(stream_error_of(reason)),
                        _ => self
                            .shared
                            .check_open()
                            .err()
                            .unwrap_or(Error::LocallyClosed),
                    }));
                }
            }
        }
    }

    /// END_STREAM after everything written so far.
    pub(crate) fn finish(&mut self) -> Result<(), Error> {
        if self.done {
            return Err(Error::LocallyClosed);
        }
        self.done = true;
        let mut stream = lock(&self.stream);
        stream
            .send_data(Bytes::new(), true)
            .map_err(|e| self.shared.stream_error(&e, true))?;
        *lock(&self.finished) = true;
        Ok(())
    }

    /// RST_STREAM with `error` as the reason.
    pub(crate) fn reset(&mut self, error: StreamError) {
        self.done = true;
        *lock(&self.finished) = false;
        lock(&self.stream).send_reset(reason_of(error));
    }

    /// The peer's reset, if it comes; `None` once our side is finished (TCP delivers what we
    /// wrote, in order, so there is no separate acknowledgement to wait for) or the connection
    /// is gone.
    pub(crate) async fn stopped(&mut self) -> Option<StreamError> {
        if self.done {
            return None;
        }
        std::future::poll_fn(|cx| {
            if self.done {
                return Poll::Ready(None);
            }
            match lock(&self.stream).poll_reset(cx) {
                Poll::Ready(Ok(reason)) => Poll::Ready(Some(stream_error_of(reason))),
                Poll::Ready(Err(_)) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
    /// After [`Send::finish`]: TCP delivers in order, so our side is delivered once it is
    /// finished and the connection is still up (a close flushes what was queued first); fails
    /// with the peer's reset, or the connection's end.
    pub(crate) async fn delivered(&mut self) -> Result<(), Error> {
        if let Some(code) = self.stopped().await {
            return Err(Error::StreamStopped(code));
        }
        if !*lock(&self.finished) {
            return Err(Error::LocallyClosed);
        }
        self.shared.check_open()
    }

    /// Resolves with the peer's reset of this stream if one comes, else never. Independent of
    /// `self`, so it can be watched while the stream is being written.
    pub(crate) fn peer_reset(&self) -> impl std::future::Future<Output = StreamError> + use<> {
        let stream = self.stream.clone();
        std::future::poll_fn(move |cx| match lock(&stream).poll_reset(cx) {
            Poll::Ready(Ok(reason)) => Poll::Ready(stream_error_of(reason)),
            // The connection failed: the reads of the stream report that.
            Poll::Ready(Err(_)) | Poll::Pending => Poll::Pending,
        })
    }
}

impl Drop for Send {
    fn drop(&mut self) {
        // Like quinn: a send half dropped without finish or reset is finished.
        if !self.done {
            self.done = true;
            let _ = lock(&self.stream).send_data(Bytes::new(), true);
            *lock(&self.finished) = true;
        }
        if *lock(&self.finished) && Arc::strong_count(&self.stream) == 1 {
            // The receive half is gone already: keep the handle so the DATA goes out.
            linger(self.stream.clone());
        }
    }
}

#[derive(Debug)]
enum RecvState {
    /// The edge's side: the connector's (empty, immediate) response headers are still coming.
    Head(h2::client::ResponseFuture),
    Body(h2::RecvStream),
    Eof,
    /// We stopped reading (`stop`).
    Stopped,
}

/// The receiving side of one h2 stream.
#[derive(Debug)]
pub(crate) struct Recv {
    state: RecvState,
    /// The rest of the last DATA frame; its flow-control credit is released as it is read.
    buffered: Bytes,
    stream: Handle,
    shared: Arc<Shared>,
    finished: Arc<Mutex<bool>>,
}

impl Drop for Recv {
    fn drop(&mut self) {
        let finished = *lock(&self.finished);
        if !finished || Arc::strong_count(&self.stream) > 1 {
            return;
        }
        // Our side finished and the send half is gone: keep the stream's handle a moment so
        // it is not cancelled with our DATA still queued. What the peer still sends is
        // dropped by h2 (the receive side goes now).
        if !matches!(self.state, RecvState::Eof) {
            linger(self.stream.clone());
        }
    }
}

impl Recv {
    /// The next at most `max` bytes; `None` at END_STREAM.
    pub(crate) fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, Error>> {
        loop {
            if !self.buffered.is_empty() {
                let n = self.buffered.len().min(max.max(1));
                let out = self.buffered.split_to(n);
                if let RecvState::Body(body) = &mut self.state {
                    // The reader has it now: the peer may send that much more.
                    let _ = body.flow_control().release_capacity(n);
                }
                return Poll::Ready(Ok(Some(out)));
            }
            match &mut self.state {
                RecvState::Head(response) => {
                    let response = ready!(Pin::new(response).poll(cx))
                        .map_err(|e| self.shared.stream_error(&e, false))?;
                    if response.status() != http::StatusCode::OK {
                        return Poll::Ready(Err(Error::Failed(format!(
                            "tunnel stream answered {}",
                            response.status()
                        ))));
                    }
                    self.state = RecvState::Body(response.into_body());
                }
                RecvState::Body(body) => match ready!(body.poll_data(cx)) {
                    Some(Ok(data)) => self.buffered = data,
                    Some(Err(e)) => return Poll::Ready(Err(self.shared.stream_error(&e, false))),
                    None => {
                        self.state = RecvState::Eof;
                        return Poll::Ready(Ok(None));
                    }
                },
                RecvState::Eof => return Poll::Ready(Ok(None)),
                RecvState::Stopped => return Poll::Ready(Err(Error::LocallyClosed)),
            }
        }
    }

    /// Stops reading. HTTP/2 cannot stop one direction alone (there is no STOP_SENDING), so:
    /// with [`StreamError::Cancelled`] ("I need no more") while our side is still open or
    /// finished, this only drops what arrives from now on (h2 discards it and returns the
    /// connection window), and our response goes on; the peer learns when our side ends. With
    /// any other code it is RST_STREAM with that code, which ends both directions.
    pub(crate) fn stop(&mut self, error: StreamError) {
        self.buffered = Bytes::new();
        self.state = RecvState::Stopped;
        if error != StreamError::Cancelled {
            *lock(&self.finished) = false;
            lock(&self.stream).send_reset(reason_of(error));
        }
    }
}

// === Connections ===

#[derive(Debug)]
enum Role {
    /// The edge: the h2 client, opening streams.
    Edge {
        requests: h2::client::SendRequest<Bytes>,
    },
    /// The connector: the h2 server; its driver passes the edge's data streams on.
    Connector {
        incoming: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    },
}

type Accepted = (
    http::Request<h2::RecvStream>,
    h2::server::SendResponse<Bytes>,
);

/// One TLS/TCP tunnel connection (either end); cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Connection {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    role: Role,
    /// The control stream until someone takes it (shared with the connector's driver, which
    /// fills it when the edge's `/control` stream arrives).
    control: Arc<watch::Sender<Option<(Send, Recv)>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Like a QUIC connection whose last handle is gone: closed, code 0.
        close(&self.shared, CloseCode::Normal, "");
    }
}

/// Records a local close, sends the close frame, and wakes the driver to linger and stop.
fn close(shared: &Shared, code: CloseCode, reason: &str) {
    if !shared.end(Cause::Local) {
        return;
    }
    let frame = close_frame(code, reason);
    match lock(&shared.close_send).take() {
        Some(mut stream) => {
            let _ = stream.send_data(frame, true);
        }
        None => *lock(&shared.close_pending) = Some(frame),
    }
    shared.closing.notify_one();
}

impl Connection {
    pub(crate) fn peer_certificate(&self) -> CertificateDer<'static> {
        self.inner.shared.peer_certificate.clone()
    }

    pub(crate) fn remote_addr(&self) -> SocketAddr {
        self.inner.shared.remote
    }

    pub(crate) fn id(&self) -> usize {
        self.inner.shared.id
    }

    /// Socket reads that returned data so far.
    pub(crate) fn reads(&self) -> u64 {
        self.inner.shared.reads.load(Ordering::Relaxed)
    }

    pub(crate) fn rtt(&self) -> Duration {
        Duration::from_micros(self.inner.shared.rtt_us.load(Ordering::Relaxed))
    }

    /// Opens a data stream (edge only), waiting at most `limit` for the peer's concurrency.
    pub(crate) async fn open(&self, limit: Duration) -> Result<(Send, Recv), Error> {
        let Role::Edge { requests } = &self.inner.role else {
            return Err(Error::Failed(
                "over TCP only the edge opens data streams".into(),
            ));
        };
        self.inner.shared.check_open()?;
        open_stream(requests.clone(), &self.inner.shared, DATA_PATH, limit).await
    }

    /// The edge's next data stream (connector only).
    pub(crate) async fn accept(&self) -> Result<(Send, Recv), Error> {
        let Role::Connector { incoming } = &self.inner.role else {
            // The connector never opens data streams: nothing comes until the end.
            return Err(self.closed().await);
        };
        let mut incoming = incoming.lock().await;
        loop {
            let accepted = tokio::select! {
                accepted = incoming.recv() => accepted,
                e = self.closed() => return Err(e),
            };
            let Some((request, respond)) = accepted else {
                return Err(self.closed().await);
            };
            // A stream the edge reset before we got to it cannot be answered: nobody waits
            // for it any more.
            if let Ok(halves) = answer(request, respond, &self.inner.shared) {
                return Ok(halves);
            }
            self.inner.shared.check_open()?;
        }
    }

    /// The control stream: on the edge the one it opened at connect, on the connector the
    /// first the edge opened (waited for at most `limit`). Only once.
    pub(crate) async fn control(&self, limit: Duration) -> Result<(Send, Recv), Error> {
        let mut rx = self.inner.control.subscribe();
        let shared = &self.inner.shared;
        let wait = async {
            tokio::select! {
                ready = rx.wait_for(Option::is_some) => ready.map(|_| ()).map_err(|_| Error::LocallyClosed),
                e = shared.closed() => Err(e),
            }
        };
        tokio::time::timeout(limit, wait)
            .await
            .map_err(|_| Error::TimedOut(Wait::StreamCredit))??;
        let mut taken = None;
        self.inner.control.send_if_modified(|slot| {
            taken = slot.take();
            false
        });
        taken.ok_or_else(|| Error::Failed("the control stream was already taken".into()))
    }

    /// Closes the connection with `code`: the close frame goes out (the driver lingers a
    /// moment so it and everything before it arrive), every stream fails from now on.
    pub(crate) fn close(&self, code: CloseCode, reason: &str) {
        close(&self.inner.shared, code, reason);
    }

    pub(crate) async fn closed(&self) -> Error {
        self.inner.shared.closed().await
    }

    pub(crate) fn close_reason_now(&self) -> Option<Error> {
        self.inner.shared.cause().map(|c| c.to_error())
    }
}

fn close_frame(code: CloseCode, reason: &str) -> Bytes {
    let mut reason = reason.as_bytes();
    if reason.len() > MAX_CLOSE_REASON {
        reason = &reason[..MAX_CLOSE_REASON];
    }
    let mut frame = BytesMut::with_capacity(4 + reason.len());
    frame.put_u32(code.code());
    frame.put_slice(reason);
    frame.freeze()
}

fn parse_close_frame(mut frame: &[u8]) -> Option<Cause> {
    if frame.len() < 4 {
        return None;
    }
    let code = CloseCode::from_code(frame.get_u32());
    Some(Cause::ByPeer {
        code,
        reason: String::from_utf8_lossy(frame).into_owned(),
    })
}

fn request(path: &str) -> Result<http::Request<()>, Error> {
    http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("https://{AUTHORITY}{path}"))
        .body(())
        .map_err(|e| Error::Failed(e.to_string()))
}

async fn open_stream(
    requests: h2::client::SendRequest<Bytes>,
    shared: &Arc<Shared>,
    path: &str,
    limit: Duration,
) -> Result<(Send, Recv), Error> {
    let (response, send) = open_raw(requests, shared, path, limit).await?;
    Ok(halves(send, RecvState::Head(response), shared))
}

async fn open_raw(
    mut requests: h2::client::SendRequest<Bytes>,
    shared: &Arc<Shared>,
    path: &str,
    limit: Duration,
) -> Result<(h2::client::ResponseFuture, h2::SendStream<Bytes>), Error> {
    let ready = std::future::poll_fn(|cx| requests.poll_ready(cx));
    match tokio::time::timeout(limit, ready).await {
        Err(_) => return Err(Error::TimedOut(Wait::StreamCredit)),
        Ok(Err(e)) => return Err(shared.stream_error(&e, true)),
        Ok(Ok(())) => {}
    }
    requests
        .send_request(request(path)?, false)
        .map_err(|e| shared.stream_error(&e, true))
}

/// The connector's side of a stream the edge opened: answer `200` at once (an empty HEADERS
/// frame; the proto bytes follow as DATA).
fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    shared: &Arc<Shared>,
) -> Result<(Send, Recv), Error> {
    let send = respond
        .send_response(http::Response::new(()), false)
        .map_err(|e| shared.stream_error(&e, true))?;
    Ok(halves(send, RecvState::Body(request.into_body()), shared))
}

fn halves(send: h2::SendStream<Bytes>, state: RecvState, shared: &Arc<Shared>) -> (Send, Recv) {
    let stream = Arc::new(Mutex::new(send));
    let finished = Arc::new(Mutex::new(false));
    (
        Send {
            stream: stream.clone(),
            shared: shared.clone(),
            done: false,
            finished: finished.clone(),
        },
        Recv {
            state,
            buffered: Bytes::new(),
            stream,
            shared: shared.clone(),
            finished,
        },
    )
}

fn h2_settings_client(tuning: &Tuning) -> h2::client::Builder {
    let mut b = h2::client::Builder::new();
    b.initial_window_size(tuning.stream_window)
        .initial_connection_window_size(tuning.connection_window)
        .max_frame_size(tuning.h2_max_frame_size)
        .max_header_list_size(tuning.h2_max_header_list)
        .max_send_buffer_size(tuning.h2_max_send_buffer)
        .enable_push(false)
        // The connector opens nothing.
        .max_concurrent_streams(0);
    b
}

fn h2_settings_server(tuning: &Tuning) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(tuning.stream_window)
        .initial_connection_window_size(tuning.connection_window)
        .max_frame_size(tuning.h2_max_frame_size)
        .max_header_list_size(tuning.h2_max_header_list)
        .max_send_buffer_size(tuning.h2_max_send_buffer)
        // Data streams plus the control and close streams.
        .max_concurrent_streams(tuning.max_incoming_streams.saturating_add(2));
    b
}

// === The edge's side ===

/// The edge's TLS/TCP tunnel acceptor: the TLS configuration the HTTPS listener switches to
/// for ALPN `doorless-tcp/1`, and the connections accepted through it (so that closing the
/// tunnel endpoint closes them too).
#[derive(Debug)]
pub(crate) struct Server {
    tls: Arc<rustls::ServerConfig>,
    tuning: Tuning,
    live: Mutex<Vec<Weak<Inner>>>,
    drivers: Drivers,
}

impl Server {
    pub(crate) fn new(tls: Arc<rustls::ServerConfig>, tuning: &Tuning) -> Self {
        Self {
            tls,
            tuning: tuning.clone(),
            live: Mutex::new(Vec::new()),
            drivers: Drivers::default(),
        }
    }

    pub(crate) fn tls_config(&self) -> Arc<rustls::ServerConfig> {
        self.tls.clone()
    }

    /// Runs the HTTP/2 handshake on a finished TLS handshake, then opens the control and close
    /// streams, each step within `limit`.
    pub(crate) async fn accept(
        &self,
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        limit: Duration,
    ) -> Result<Connection, Error> {
        let (tcp, session) = tls.get_ref();
        let remote = tcp.peer_addr()?;
        let leaf = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .cloned()
            .ok_or(Error::InvalidPeerCertificate(CertificateProblem::Missing))?;
        let shared = Shared::new(remote, leaf);
        let io = Heard {
            io: tls,
            shared: shared.clone(),
        };
        let (requests, h2conn) =
            tokio::time::timeout(limit, h2_settings_client(&self.tuning).handshake(io))
                .await
                .map_err(|_| Error::TimedOut(Wait::Handshake))?
                .map_err(h2_handshake_error)?;
        let control = Arc::new(watch::Sender::new(None));
        let conn = Connection {
            inner: Arc::new(Inner {
                shared: shared.clone(),
                role: Role::Edge {
                    requests: requests.clone(),
                },
                control: control.clone(),
            }),
        };
        let (close_tx, close_rx) = tokio::sync::oneshot::channel();
        let token = self.drivers.enter();
        let tuning = self.tuning.clone();
        tokio::spawn(drive_edge(h2conn, shared.clone(), close_rx, tuning, token));
        let setup = async {
            let halves = open_stream(requests.clone(), &shared, CONTROL_PATH, limit).await?;
            let (response, close_send) =
                open_raw(requests.clone(), &shared, CLOSE_PATH, limit).await?;
            Ok::<_, Error>((halves, response, close_send))
        };
        match setup.await {
            Ok((halves, response, close_send)) => {
                *lock(&shared.close_send) = Some(close_send);
                let _ = close_tx.send(RecvState::Head(response));
                control.send_replace(Some(halves));
                let mut live = lock(&self.live);
                live.retain(|w| w.strong_count() > 0);
                live.push(Arc::downgrade(&conn.inner));
                Ok(conn)
            }
            Err(e) => {
                conn.close(CloseCode::ProtocolError, "tunnel setup failed");
                Err(e)
            }
        }
    }

    /// Closes every connection accepted here.
    pub(crate) fn close(&self, code: CloseCode, reason: &str) {
        let live = std::mem::take(&mut *lock(&self.live));
        for inner in live.iter().filter_map(Weak::upgrade) {
            Connection { inner }.close(code, reason);
        }
    }

    /// Waits (bounded) until every connection's driver is done.
    pub(crate) async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.drivers.idle()).await;
    }
}

/// Counts running drivers, so the edge can wait for its connections' close frames to go out.
#[derive(Debug, Default)]
struct Drivers(Arc<(AtomicUsize, Notify)>);

#[derive(Debug)]
struct DriverToken(Arc<(AtomicUsize, Notify)>);

impl Drivers {
    fn enter(&self) -> DriverToken {
        self.0.0.fetch_add(1, Ordering::SeqCst);
        DriverToken(self.0.clone())
    }

    async fn idle(&self) {
        loop {
            let notified = self.0.1.notified();
            if self.0.0.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for DriverToken {
    fn drop(&mut self) {
        if self.0.0.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.1.notify_waiters();
        }
    }
}

async fn drive_edge<T>(
    mut h2conn: h2::client::Connection<T, Bytes>,
    shared: Arc<Shared>,
    close_rx: tokio::sync::oneshot::Receiver<RecvState>,
    tuning: Tuning,
    _token: DriverToken,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut pings = h2conn.ping_pong();
    let liveness = liveness(&shared, pings.as_mut(), &tuning);
    tokio::pin!(liveness);
    let close_frame = async {
        match close_rx.await {
            Ok(state) => read_close_frame(state).await,
            Err(_) => None,
        }
    };
    tokio::pin!(close_frame);
    let mut close_frame_done = false;
    loop {
        tokio::select! {
            ended = &mut h2conn => {
                // The peer's close frame may have come in the same read as its hang-up.
                let frame = if close_frame_done {
                    None
                } else {
                    tokio::time::timeout(Duration::ZERO, &mut close_frame).await.ok().flatten()
                };
                shared.end(frame.unwrap_or_else(|| match ended {
                    Ok(()) => Cause::ByPeer { code: CloseCode::Normal, reason: String::new() },
                    Err(e) => connection_error(&e),
                }));
                return;
            }
            cause = &mut liveness => {
                shared.end(cause);
                return;
            }
            frame = &mut close_frame, if !close_frame_done => {
                close_frame_done = true;
                if let Some(cause) = frame {
                    shared.end(cause);
                    return;
                }
            }
            () = shared.closing.notified() => {
                // Flush our close frame and what came before it; the peer hangs up once it
                // read it.
                let _ = tokio::time::timeout(CLOSE_LINGER, &mut h2conn).await;
                return;
            }
        }
    }
}

/// Pings every `keep_alive` (the PONG gives the RTT) and returns once nothing at all was
/// received for `idle_timeout`, like QUIC's idle timeout.
async fn liveness(shared: &Shared, mut pings: Option<&mut h2::PingPong>, tuning: &Tuning) -> Cause {
    let mut tick = tokio::time::interval(tuning.keep_alive);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if shared.silent_for() >= tuning.idle_timeout {
            return Cause::Silent;
        }
        let Some(pinger) = pings.as_deref_mut() else {
            continue;
        };
        let sent = Instant::now();
        let pong = pinger.ping(h2::Ping::opaque());
        tokio::pin!(pong);
        loop {
            tokio::select! {
                pong = &mut pong => {
                    if pong.is_ok() {
                        let sample = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        let old = shared.rtt_us.load(Ordering::Relaxed);
                        let smoothed = if old == 0 { sample } else { (old * 7 + sample) / 8 };
                        shared.rtt_us.store(smoothed.max(1), Ordering::Relaxed);
                    }
                    break;
                }
                _ = tick.tick() => {
                    if shared.silent_for() >= tuning.idle_timeout {
                        return Cause::Silent;
                    }
                }
            }
        }
    }
}

/// Reads the peer's close frame from the `/close` stream: `None` if the stream ends without
/// one (or fails: then the connection's own error tells why).
async fn read_close_frame(state: RecvState) -> Option<Cause> {
    let mut body = match state {
        RecvState::Head(response) => response.await.ok()?.into_body(),
        RecvState::Body(body) => body,
        RecvState::Eof | RecvState::Stopped => return None,
    };
    let mut frame = Vec::new();
    while let Some(data) = body.data().await {
        // The frame is one DATA frame; the connection's end may follow it at once.
        let Ok(data) = data else {
            return parse_close_frame(&frame);
        };
        let _ = body.flow_control().release_capacity(data.len());
        if frame.len() + data.len() > 4 + MAX_CLOSE_REASON {
            return None;
        }
        frame.extend_from_slice(&data);
    }
    parse_close_frame(&frame)
}

// === The connector's side ===

/// The connector's TLS/TCP dialer: the client TLS configuration (our certificate, the pinned
/// tunnel CA, ALPN `doorless-tcp/1`).
#[derive(Debug)]
pub(crate) struct Client {
    tls: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    tuning: Tuning,
}

/// What the connector sends over TLS/TCP (downloads) is paced by its kernel; unless the
/// tunnel is set to plain Cubic, ask for BBR, which random loss does not hold down (as
/// `loss_tolerant` does on QUIC; docs/benchmarks.md). Best effort: a kernel without the
/// `tcp_bbr` module, or one that does not allow it to an unprivileged process (the Home
/// Assistant add-on), keeps its default.
fn prefer_bbr(tcp: &TcpStream, congestion: crate::tuning::Congestion) {
    if congestion == crate::tuning::Congestion::Cubic {
        return;
    }
    #[cfg(any(target_os = "linux", target_os = "freebsd"))]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_congestion(b"bbr") {
        tracing::debug!(error = %e, "TLS/TCP tunnel: TCP BBR not available, the kernel's default applies");
    }
    #[cfg(not(any(target_os = "linux", target_os = "freebsd")))]
    let _ = tcp;
}

impl Client {
    pub(crate) fn new(
        tls: Arc<rustls::ClientConfig>,
        server_name: &str,
        tuning: &Tuning,
    ) -> Result<Self, Error> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| Error::InvalidConfig("tunnel server name is not a valid DNS name"))?;
        Ok(Self {
            tls,
            server_name,
            tuning: tuning.clone(),
        })
    }

    /// Dials `addr`: TCP, TLS, and the HTTP/2 handshake (we are the server), all within
    /// `limit`. A refusal of our certificate shows here as [`Error::HandshakeRefused`].
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        limit: Duration,
    ) -> Result<Connection, Error> {
        let setup = async {
            let tcp = TcpStream::connect(addr).await?;
            let _ = tcp.set_nodelay(true);
            prefer_bbr(&tcp, self.tuning.congestion);
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(io_error)?;
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .cloned()
                .ok_or(Error::InvalidPeerCertificate(CertificateProblem::Missing))?;
            let shared = Shared::new(addr, leaf);
            let io = Heard {
                io: tls,
                shared: shared.clone(),
            };
            let h2conn = h2_settings_server(&self.tuning)
                .handshake(io)
                .await
                .map_err(h2_handshake_error)?;
            Ok::<_, Error>((shared, h2conn))
        };
        let (shared, h2conn) = tokio::time::timeout(limit, setup)
            .await
            .map_err(|_| Error::TimedOut(Wait::Handshake))??;
        let capacity = usize::try_from(self.tuning.max_incoming_streams)
            .unwrap_or(1024)
            .max(1);
        let (data_tx, data_rx) = mpsc::channel(capacity);
        let control = Arc::new(watch::Sender::new(None));
        let conn = Connection {
            inner: Arc::new(Inner {
                shared: shared.clone(),
                role: Role::Connector {
                    incoming: tokio::sync::Mutex::new(data_rx),
                },
                control: control.clone(),
            }),
        };
        let tuning = self.tuning.clone();
        tokio::spawn(drive_connector(h2conn, shared, data_tx, control, tuning));
        Ok(conn)
    }
}

async fn drive_connector<T>(
    mut h2conn: h2::server::Connection<T, Bytes>,
    shared: Arc<Shared>,
    data: mpsc::Sender<Accepted>,
    control: Arc<watch::Sender<Option<(Send, Recv)>>>,
    tuning: Tuning,
) where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut pings = h2conn.ping_pong();
    let liveness = liveness(&shared, pings.as_mut(), &tuning);
    tokio::pin!(liveness);
    let mut close_frame: Option<CloseFrame> = None;
    let mut control_seen = false;
    loop {
        let reading_close = close_frame.is_some();
        tokio::select! {
            accepted = h2conn.accept() => match accepted {
                Some(Ok((request, mut respond))) => match request.uri().path() {
                    CONTROL_PATH if !control_seen => {
                        control_seen = true;
                        if let Ok(halves) = answer(request, respond, &shared) {
                            control.send_replace(Some(halves));
                        }
                    }
                    CLOSE_PATH if !reading_close => {
                        if let Ok(send) = respond.send_response(http::Response::new(()), false) {
                            *lock(&shared.close_send) = Some(send);
                        }
                        close_frame = Some(Box::pin(read_close_frame(RecvState::Body(request.into_body()))));
                    }
                    DATA_PATH => {
                        if let Err(mpsc::error::TrySendError::Full((_, mut respond)) | mpsc::error::TrySendError::Closed((_, mut respond))) = data.try_send((request, respond)) {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                        }
                    }
                    _ => respond.send_reset(h2::Reason::PROTOCOL_ERROR),
                },
                Some(Err(e)) => {
                    let frame = pending_close_frame(&mut close_frame).await;
                    shared.end(frame.unwrap_or_else(|| connection_error(&e)));
                    return;
                }
                None => {
                    let frame = pending_close_frame(&mut close_frame).await;
                    shared.end(frame.unwrap_or(Cause::ByPeer { code: CloseCode::Normal, reason: String::new() }));
                    return;
                }
            },
            cause = &mut liveness => {
                shared.end(cause);
                return;
            }
            frame = async { match close_frame.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if reading_close => {
                close_frame = None;
                if let Some(cause) = frame {
                    shared.end(cause);
                    return;
                }
            }
            () = shared.closing.notified() => {
                let _ = tokio::time::timeout(CLOSE_LINGER, async {
                    while let Some(accepted) = h2conn.accept().await {
                        let Ok((request, mut respond)) = accepted else { break };
                        // We closed before the edge's `/close` stream arrived: answer it now.
                        if request.uri().path() == CLOSE_PATH
                            && let Some(frame) = lock(&shared.close_pending).take()
                            && let Ok(mut send) = respond.send_response(http::Response::new(()), false)
                        {
                            let _ = send.send_data(frame, true);
                            continue;
                        }
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                    }
                })
                .await;
                return;
            }
        }
    }
}

type CloseFrame = Pin<Box<dyn std::future::Future<Output = Option<Cause>> + std::marker::Send>>;

/// The close frame, if it already arrived with the connection's last bytes.
async fn pending_close_frame(frame: &mut Option<CloseFrame>) -> Option<Cause> {
    let frame = frame.as_mut()?;
    tokio::time::timeout(Duration::ZERO, frame)
        .await
        .ok()
        .flatten()
}

fn io_error(e: io::Error) -> Error {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => tls_error(tls),
        None => Error::Io(e),
    }
}

fn h2_handshake_error(e: h2::Error) -> Error {
    if e.is_io() {
        if let Some(io) = e.into_io() {
            return io_error(io);
        }
        return Error::Failed("h2 handshake".into());
    }
    connection_error(&e).to_error()
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn congestion(tcp: &TcpStream) -> String {
        let name = socket2::SockRef::from(tcp)
            .tcp_congestion()
            .unwrap_or_else(|e| panic!("getsockopt: {e}"));
        String::from_utf8_lossy(&name)
            .trim_end_matches('\0')
            .to_owned()
    }

    /// The dialled tunnel socket asks for BBR unless the tunnel is set to plain Cubic; a
    /// kernel without BBR keeps what the socket had.
    #[tokio::test]
    async fn the_tunnel_socket_prefers_bbr_unless_told_cubic() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("addr: {e}"));
        let bbr = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
            .unwrap_or_default()
            .split_whitespace()
            .any(|name| name == "bbr");
        for (setting, want) in [
            (crate::tuning::Congestion::Cubic, "reno"),
            (
                crate::tuning::Congestion::LossTolerant,
                if bbr { "bbr" } else { "reno" },
            ),
        ] {
            let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
            let tcp = client.unwrap_or_else(|e| panic!("connect: {e}"));
            let _accepted = accepted.unwrap_or_else(|e| panic!("accept: {e}"));
            // Reno is built into every kernel and is nobody's default: a visible start.
            socket2::SockRef::from(&tcp)
                .set_tcp_congestion(b"reno")
                .unwrap_or_else(|e| panic!("reno: {e}"));
            prefer_bbr(&tcp, setting);
            assert_eq!(congestion(&tcp), want, "{setting:?}");
        }
    }
}
