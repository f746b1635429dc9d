//! One tunnel stream as two plain byte pipes, over either transport.
//!
//! [`SendHalf`] is a tokio `AsyncWrite` (shutdown = FIN), [`RecvHalf`] a tokio `AsyncRead`
//! (EOF = the peer's FIN). Aborting a stream carries a named [`proto::StreamError`] both ways:
//! the inherent methods fail with [`Error::StreamReset`] / [`Error::StreamStopped`], and an
//! `io::Error` from the tokio traits converts back into the same [`Error`] with `From`.
//!
//! Over QUIC a half is a quinn stream; over TLS/TCP an HTTP/2 stream (`crate::tcp`), where
//! FIN is END_STREAM and `reset` is RST_STREAM with the code as the reason; `stop` is too,
//! except `stop(Cancelled)` ("I need no more"), which only stops reading, since HTTP/2 cannot
//! stop one direction alone and a reset would end our response as well.
//!
//! # Stream lifecycle
//!
//! Every stream ends in both directions, on every path, on both transports, in one of these
//! ways:
//! - our sending direction is **finished** (FIN after everything written) or **reset** with a
//!   code. Dropping a [`SendHalf`] that was neither finished nor reset resets it
//!   ([`StreamError::Cancelled`]): an abandoned body must never look complete to the peer.
//! - our receiving direction is **read to its end** (the peer's FIN or reset seen) or
//!   **stopped** with a code. Dropping a [`RecvHalf`] before its end stops it.
//!
//! A stream's slot (its share of the peer's stream credit) is only free again once both
//! directions are closed and what we sent was acknowledged (or refused with a stop); over TCP,
//! which delivers in order, once our side is finished and both halves are gone. That is what
//! the *hold* of [`crate::Connection::open_holding`] tracks: it is dropped exactly then, so a
//! caller that counts streams by their holds counts what the transport counts.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use proto::StreamError;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::Error;
use crate::error::code_u32;
use crate::tcp;

/// Read size for request and response bodies on both ends: large enough for bulk transfers,
/// small enough to stream.
pub const BODY_CHUNK: usize = 64 * 1024;

/// Buffer per direction of a WebSocket splice, on both ends. WebSocket messages are small and
/// most WebSockets sit idle for hours, so this is sized for memory per connection, not bulk
/// speed: 4 KiB measured 27.6 KiB of edge+connector RSS per idle WebSocket, against 81.7 KiB
/// with 16 KiB buffers (copy buffers are zeroed, so every byte of them is resident).
pub const SPLICE_CHUNK: usize = 4 * 1024;

/// Most QUIC chunks [`RecvHalf::read_batch`] joins: one chunk per received packet of at most
/// ~1.4 KB (the path MTU), so about [`BODY_CHUNK`] bytes.
const BATCH_CHUNKS: usize = 48;

/// What a stream keeps alive until it is closed in both directions (see the module docs).
pub(crate) type Hold = Arc<dyn Send + Sync>;

/// The sending side of a data stream.
pub struct SendHalf {
    inner: SendInner,
    /// Finished or reset explicitly.
    ended: bool,
    /// Reset (by us): nothing more will be delivered, nothing to wait for.
    was_reset: bool,
    hold: Option<Hold>,
}

impl std::fmt::Debug for SendHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendHalf")
            .field("inner", &self.inner)
            .field("ended", &self.ended)
            .field("holds", &self.hold.is_some())
            .finish()
    }
}

#[derive(Debug)]
enum SendInner {
    Quic(quinn::SendStream),
    Tcp(tcp::Send),
}

impl SendHalf {
    pub(crate) fn quic(inner: quinn::SendStream, hold: Option<Hold>) -> Self {
        Self::new(SendInner::Quic(inner), hold)
    }

    pub(crate) fn tcp(inner: tcp::Send, hold: Option<Hold>) -> Self {
        Self::new(SendInner::Tcp(inner), hold)
    }

    fn new(inner: SendInner, hold: Option<Hold>) -> Self {
        Self {
            inner,
            ended: false,
            was_reset: false,
            hold,
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), Error> {
        match &mut self.inner {
            SendInner::Quic(s) => Ok(s.write_all(data).await?),
            SendInner::Tcp(s) => {
                while !data.is_empty() {
                    let n = std::future::poll_fn(|cx| s.poll_write(cx, data)).await?;
                    data = &data[n..];
                }
                Ok(())
            }
        }
    }

    /// Writes as much of `data` as flow control allows right now (at least one byte, or an
    /// error). Cancel-safe: a dropped call has written nothing.
    pub async fn write_some(&mut self, data: &[u8]) -> Result<usize, Error> {
        match &mut self.inner {
            SendInner::Quic(s) => Ok(s.write(data).await?),
            SendInner::Tcp(s) => std::future::poll_fn(|cx| s.poll_write(cx, data)).await,
        }
    }

    /// Writes one chunk without copying it.
    pub async fn write_chunk(&mut self, data: Bytes) -> Result<(), Error> {
        match &mut self.inner {
            SendInner::Quic(s) => Ok(s.write_chunk(data).await?),
            SendInner::Tcp(s) => s.write_chunk(data).await,
        }
    }

    /// Writes several chunks without copying them, as one write: over QUIC they are handed to
    /// the connection under one lock and one wake-up of its driver, so a head and the body
    /// that follows it leave in the same packet rather than one packet (and one wake-up on
    /// the other side) each.
    pub async fn write_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), Error> {
        match &mut self.inner {
            SendInner::Quic(s) => Ok(s.write_all_chunks(chunks).await?),
            SendInner::Tcp(s) => {
                for chunk in chunks {
                    s.write_chunk(std::mem::take(chunk)).await?;
                }
                Ok(())
            }
        }
    }

    /// Ends the stream cleanly (FIN) after everything written so far.
    pub fn finish(&mut self) {
        self.ended = true;
        // Err means the stream is already finished or reset: nothing left to end.
        match &mut self.inner {
            SendInner::Quic(s) => {
                let _ = s.finish();
            }
            SendInner::Tcp(s) => {
                let _ = s.finish();
            }
        }
    }

    /// Abandons the stream: the peer's reads fail with `error`.
    pub fn reset(&mut self, error: StreamError) {
        self.ended = true;
        self.was_reset = true;
        match &mut self.inner {
            SendInner::Quic(s) => {
                let _ = s.reset(varint(error.code()));
            }
            SendInner::Tcp(s) => s.reset(error),
        }
    }

    /// Resolves when the peer stops reading (STOP_SENDING; over TCP a RST_STREAM), with its
    /// reason, or when the stream's data was fully acknowledged (`None`; over TCP, which
    /// delivers in order, once our side is finished).
    pub async fn stopped(&mut self) -> Option<StreamError> {
        match &mut self.inner {
            SendInner::Quic(s) => match s.stopped().await {
                Ok(Some(code)) => Some(StreamError::from_code(code_u32(code))),
                _ => None,
            },
            SendInner::Tcp(s) => s.stopped().await,
        }
    }

    /// After [`SendHalf::finish`]: waits until the peer acknowledged every byte and the FIN
    /// (over TCP, which delivers in order: until our side is finished with the connection
    /// still up), so closing the connection now loses nothing. Fails if the peer stopped
    /// reading or the connection is gone. Bounded by the connection's own idle timeout.
    pub async fn delivered(&mut self) -> Result<(), Error> {
        match &mut self.inner {
            SendInner::Quic(s) => match s.stopped().await {
                Ok(None) => Ok(()),
                Ok(Some(code)) => Err(Error::StreamStopped(StreamError::from_code(code_u32(code)))),
                Err(quinn::StoppedError::ConnectionLost(e)) => Err(e.into()),
                Err(quinn::StoppedError::ZeroRttRejected) => Err(Error::LocallyClosed),
            },
            SendInner::Tcp(s) => s.delivered().await,
        }
    }

    /// Resolves when the peer refuses the rest of this stream (a stop, over TCP a reset), or
    /// the connection is gone. Independent of `self`, so a [`splice`] watches it while it
    /// writes. `Ok(None)` over QUIC once everything sent was acknowledged.
    fn peer_stopped(&self) -> impl Future<Output = Result<Option<StreamError>, Error>> + use<> {
        enum Watch<Q, T> {
            Quic(Q),
            Tcp(T),
        }
        let watch = match &self.inner {
            SendInner::Quic(s) => Watch::Quic(s.stopped()),
            SendInner::Tcp(s) => Watch::Tcp(s.peer_reset()),
        };
        async move {
            match watch {
                Watch::Quic(stopped) => match stopped.await {
                    Ok(code) => Ok(code.map(|c| StreamError::from_code(code_u32(c)))),
                    Err(quinn::StoppedError::ConnectionLost(e)) => Err(e.into()),
                    Err(quinn::StoppedError::ZeroRttRejected) => Err(Error::LocallyClosed),
                },
                Watch::Tcp(reset) => Ok(Some(reset.await)),
            }
        }
    }

    /// Gives the stream a scheduling priority; higher goes first when the link is busy.
    /// (QUIC only: HTTP/2 priorities are deprecated and h2 ignores them.)
    pub fn set_priority(&self, priority: i32) {
        if let SendInner::Quic(s) = &self.inner {
            let _ = s.set_priority(priority);
        }
    }
}

impl Drop for SendHalf {
    fn drop(&mut self) {
        if !self.ended {
            // Neither finished nor reset: whoever held us gave up (an error path, a cancelled
            // task). A FIN would make a cut-off body look complete; say so instead.
            self.reset(StreamError::Cancelled);
        }
        // The transport's own drop finishes what is left (quinn; over TCP the h2 handle
        // lingers so queued DATA goes out). The hold of a finished QUIC stream lives until the
        // peer acknowledged all of it: only then is the slot free on both ends. A reset
        // stream is over as soon as the peer reads the reset (quinn reports no
        // acknowledgement of a reset), so its hold goes now; the peer's credit is back one
        // round trip later, which its stream limit leaves room for. Over TCP, which delivers
        // in order, a finished stream's send side is done here; the receive half keeps its
        // share of the hold until it is gone too.
        let Some(hold) = self.hold.take() else { return };
        if self.was_reset {
            return;
        }
        let SendInner::Quic(s) = &self.inner else {
            return;
        };
        let done = s.stopped();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Resolves at the acknowledgement, a stop, or when the connection is gone
            // (closed, or silent past its idle timeout): never later.
            runtime.spawn(async move {
                let _ = done.await;
                drop(hold);
            });
        }
    }
}

impl AsyncWrite for SendHalf {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            SendInner::Quic(s) => Pin::new(s)
                .poll_write(cx, buf)
                .map_err(|e| Error::from(e).into_io()),
            SendInner::Tcp(s) => s.poll_write(cx, buf).map_err(Error::into_io),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: written bytes are already the transport's to send.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ended = true;
        Poll::Ready(match &mut self.inner {
            SendInner::Quic(s) => s.finish().map_err(|e| Error::from(e).into_io()),
            SendInner::Tcp(s) => s.finish().map_err(Error::into_io),
        })
    }
}

/// The receiving side of a data stream.
pub struct RecvHalf {
    inner: RecvInner,
    _hold: Option<Hold>,
}

impl std::fmt::Debug for RecvHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvHalf")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum RecvInner {
    Quic(quinn::RecvStream),
    Tcp(tcp::Recv),
}

impl RecvHalf {
    pub(crate) fn quic(inner: quinn::RecvStream, hold: Option<Hold>) -> Self {
        Self {
            inner: RecvInner::Quic(inner),
            _hold: hold,
        }
    }

    pub(crate) fn tcp(inner: tcp::Recv, hold: Option<Hold>) -> Self {
        Self {
            inner: RecvInner::Tcp(inner),
            _hold: hold,
        }
    }

    /// Reads the next chunk of at most `max` bytes without copying; `None` at the peer's FIN.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, Error> {
        match &mut self.inner {
            RecvInner::Quic(r) => Ok(r.read_chunk(max, true).await?.map(|chunk| chunk.bytes)),
            RecvInner::Tcp(r) => std::future::poll_fn(|cx| r.poll_chunk(cx, max)).await,
        }
    }

    /// Reads what has arrived, up to about [`BODY_CHUNK`] bytes, as one chunk; `None` at the
    /// peer's FIN. For bodies: over QUIC each received packet is a chunk of its own (at most
    /// ~1.4 KB), and handing those on one by one made an HTTP/2 client get one small DATA
    /// frame (and TLS record) per tunnel packet. What is ready at once is taken under one lock
    /// and copied into one chunk; a single ready chunk (a small response) is passed on
    /// without a copy. Over TCP a chunk is already an HTTP/2 frame of up to 64 KiB.
    pub async fn read_batch(&mut self) -> Result<Option<Bytes>, Error> {
        match &mut self.inner {
            RecvInner::Quic(r) => {
                let mut chunks: [Bytes; BATCH_CHUNKS] = std::array::from_fn(|_| Bytes::new());
                let Some(n) = r.read_chunks(&mut chunks).await? else {
                    return Ok(None);
                };
                let ready = &mut chunks[..n];
                if let [one] = ready {
                    return Ok(Some(std::mem::take(one)));
                }
                let mut out =
                    bytes::BytesMut::with_capacity(ready.iter().map(Bytes::len).sum::<usize>());
                for chunk in ready.iter() {
                    out.extend_from_slice(chunk);
                }
                Ok(Some(out.freeze()))
            }
            RecvInner::Tcp(r) => std::future::poll_fn(|cx| r.poll_chunk(cx, BODY_CHUNK)).await,
        }
    }

    /// Fills `buf` completely, or fails (an early FIN is [`Error::Io`] `UnexpectedEof`).
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        match &mut self.inner {
            RecvInner::Quic(r) => r.read_exact(buf).await.map_err(|e| match e {
                quinn::ReadExactError::FinishedEarly(_) => {
                    Error::Io(io::ErrorKind::UnexpectedEof.into())
                }
                quinn::ReadExactError::ReadError(e) => e.into(),
            }),
            RecvInner::Tcp(r) => {
                let mut filled = 0;
                while filled < buf.len() {
                    let want = buf.len() - filled;
                    let Some(chunk) = std::future::poll_fn(|cx| r.poll_chunk(cx, want)).await?
                    else {
                        return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
                    };
                    buf[filled..filled + chunk.len()].copy_from_slice(&chunk);
                    filled += chunk.len();
                }
                Ok(())
            }
        }
    }

    /// Tells the peer we will read no more of this stream. Over TCP (HTTP/2 has no
    /// STOP_SENDING): `Cancelled` only stops reading and leaves our side going; any other code
    /// resets the whole stream with it.
    pub fn stop(&mut self, error: StreamError) {
        match &mut self.inner {
            RecvInner::Quic(r) => {
                let _ = r.stop(varint(error.code()));
            }
            RecvInner::Tcp(r) => r.stop(error),
        }
    }
}

impl AsyncRead for RecvHalf {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.inner {
            RecvInner::Quic(r) => r
                .poll_read_buf(cx, buf)
                .map_err(|e| Error::from(e).into_io()),
            RecvInner::Tcp(_) if buf.remaining() == 0 => Poll::Ready(Ok(())),
            RecvInner::Tcp(r) => match r.poll_chunk(cx, buf.remaining()) {
                Poll::Ready(Ok(Some(chunk))) => {
                    buf.put_slice(&chunk);
                    Poll::Ready(Ok(()))
                }
                Poll::Ready(Ok(None)) => Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e.into_io())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// How a [`splice`] ended.
#[derive(Debug)]
pub enum SpliceEnd {
    /// Both directions ended cleanly: each side's FIN was passed on.
    Closed,
    /// The local side (`io`) failed; the tunnel stream was reset and stopped.
    Local(io::Error),
    /// The tunnel stream failed (reset or stopped by the peer, or the connection is gone);
    /// what was left of it was reset and stopped, and `io` dropped.
    Tunnel(Error),
    /// `until` fired; the tunnel stream was reset and stopped with `cancelled`.
    Cancelled,
}

/// What a [`splice`] moved, and how it ended.
#[derive(Debug)]
pub struct Spliced {
    /// Bytes from `io` into the tunnel.
    pub up: u64,
    /// Bytes from the tunnel into `io`.
    pub down: u64,
    /// How it ended.
    pub end: SpliceEnd,
}

/// Copies raw bytes both ways between `io` (an upgraded client or upstream connection) and a
/// tunnel stream until both directions ended, keeping the stream lifecycle: each side's EOF
/// becomes the other side's FIN / write shutdown; a failure on either side, a peer that stops
/// reading, or `until` resetting and stopping whatever of the stream is still open. Both ends
/// of the tunnel use this, so a WebSocket ends the same way whichever side closes it.
pub async fn splice<S, U>(io: S, mut send: SendHalf, mut recv: RecvHalf, until: U) -> Spliced
where
    S: AsyncRead + AsyncWrite,
    U: Future<Output = ()>,
{
    let (mut io_read, mut io_write) = tokio::io::split(io);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    // 'static: lives apart from `send`, so it can be watched while `send` is being written.
    let peer_stopped = send.peer_stopped();
    let mut up_done = false;
    let mut down_done = false;
    let end = {
        let to_tunnel = async {
            let mut buf = vec![0u8; SPLICE_CHUNK];
            loop {
                let n = io_read.read(&mut buf).await.map_err(SpliceEnd::Local)?;
                if n == 0 {
                    send.finish();
                    return Ok::<(), SpliceEnd>(());
                }
                send.write_all(&buf[..n]).await.map_err(SpliceEnd::Tunnel)?;
                up.fetch_add(n as u64, Ordering::Relaxed);
            }
        };
        let from_tunnel = async {
            loop {
                let chunk = recv
                    .read_chunk(SPLICE_CHUNK)
                    .await
                    .map_err(SpliceEnd::Tunnel)?;
                let Some(chunk) = chunk else {
                    io_write.shutdown().await.map_err(SpliceEnd::Local)?;
                    return Ok::<(), SpliceEnd>(());
                };
                io_write.write_all(&chunk).await.map_err(SpliceEnd::Local)?;
                // A TLS writer (the edge's client side) may keep the tail of what it accepted
                // in its own buffer when the socket is full, and writes it only on the next
                // write or flush; without this flush the end of a message could wait forever
                // for a next one.
                io_write.flush().await.map_err(SpliceEnd::Local)?;
                down.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        };
        tokio::pin!(to_tunnel, from_tunnel, peer_stopped, until);
        loop {
            tokio::select! {
                r = &mut to_tunnel, if !up_done => match r {
                    Ok(()) => up_done = true,
                    Err(end) => break end,
                },
                r = &mut from_tunnel, if !down_done => match r {
                    Ok(()) => down_done = true,
                    Err(end) => break end,
                },
                stopped = &mut peer_stopped, if !up_done => {
                    break SpliceEnd::Tunnel(match stopped {
                        Ok(Some(code)) => Error::StreamStopped(code),
                        Ok(None) => Error::LocallyClosed,
                        Err(e) => e,
                    });
                }
                () = &mut until => break SpliceEnd::Cancelled,
            }
            if up_done && down_done {
                break SpliceEnd::Closed;
            }
        }
    };
    if !up_done {
        send.reset(StreamError::Cancelled);
    }
    if !down_done {
        recv.stop(StreamError::Cancelled);
    }
    Spliced {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        end,
    }
}

pub(crate) fn varint(code: u32) -> quinn::VarInt {
    quinn::VarInt::from_u32(code)
}
