//! One QUIC stream as two plain byte pipes.
//!
//! [`SendHalf`] is a tokio `AsyncWrite` (shutdown = FIN), [`RecvHalf`] a tokio `AsyncRead`
//! (EOF = the peer's FIN). Aborting a stream carries a named [`proto::StreamError`] both ways;
//! [`reset_code`] recovers it from the `io::Error` a reader or writer saw.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use proto::StreamError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Read size for request and response bodies on both ends: large enough for bulk transfers,
/// small enough to stream.
pub const BODY_CHUNK: usize = 64 * 1024;

/// Buffer per direction of a WebSocket splice, on both ends. WebSocket messages are small and
/// most WebSockets sit idle for hours, so this is sized for memory per connection, not bulk
/// speed: 4 KiB measured 27.6 KiB of edge+connector RSS per idle WebSocket, against 81.7 KiB
/// with 16 KiB buffers (copy buffers are zeroed, so every byte of them is resident).
pub const SPLICE_CHUNK: usize = 4 * 1024;

/// The sending side of a data stream.
#[derive(Debug)]
pub struct SendHalf {
    inner: quinn::SendStream,
}

impl SendHalf {
    pub(crate) fn new(inner: quinn::SendStream) -> Self {
        Self { inner }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        self.inner.write_all(data).await.map_err(io::Error::from)
    }

    /// Writes as much of `data` as flow control allows right now (at least one byte, or an
    /// error). Cancel-safe: a dropped call has written nothing.
    pub async fn write_some(&mut self, data: &[u8]) -> io::Result<usize> {
        self.inner.write(data).await.map_err(io::Error::from)
    }

    /// Writes one chunk without copying it.
    pub async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        self.inner.write_chunk(data).await.map_err(io::Error::from)
    }

    /// Ends the stream cleanly (FIN) after everything written so far.
    pub fn finish(&mut self) {
        // Err means the stream is already finished or reset: nothing left to end.
        let _ = self.inner.finish();
    }

    /// Abandons the stream: the peer's reads fail with `error`.
    pub fn reset(&mut self, error: StreamError) {
        let _ = self.inner.reset(varint(error.code()));
    }

    /// Resolves when the peer stops reading (STOP_SENDING), with its reason, or when the
    /// stream's data was fully acknowledged (`None`).
    pub async fn stopped(&mut self) -> Option<StreamError> {
        match self.inner.stopped().await {
            Ok(Some(code)) => Some(StreamError::from_code(code_u32(code))),
            _ => None,
        }
    }

    /// Gives the stream a scheduling priority; higher goes first when the link is busy.
    pub fn set_priority(&self, priority: i32) {
        let _ = self.inner.set_priority(priority);
    }
}

impl AsyncWrite for SendHalf {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.inner), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.inner), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.inner), cx)
    }
}

/// The receiving side of a data stream.
#[derive(Debug)]
pub struct RecvHalf {
    inner: quinn::RecvStream,
}

impl RecvHalf {
    pub(crate) fn new(inner: quinn::RecvStream) -> Self {
        Self { inner }
    }

    /// Reads the next chunk of at most `max` bytes without copying; `None` at the peer's FIN.
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        match self.inner.read_chunk(max, true).await {
            Ok(Some(chunk)) => Ok(Some(chunk.bytes)),
            Ok(None) => Ok(None),
            Err(e) => Err(io::Error::from(e)),
        }
    }

    /// Fills `buf` completely, or fails (an early FIN is `UnexpectedEof`).
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.inner.read_exact(buf).await.map_err(|e| match e {
            quinn::ReadExactError::FinishedEarly(_) => io::ErrorKind::UnexpectedEof.into(),
            quinn::ReadExactError::ReadError(e) => io::Error::from(e),
        })
    }

    /// Tells the peer we will read no more of this stream.
    pub fn stop(&mut self, error: StreamError) {
        let _ = self.inner.stop(varint(error.code()));
    }
}

impl AsyncRead for RecvHalf {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.inner), cx, buf)
    }
}

/// The [`StreamError`] a peer reset (or stopped) the stream with, if `err` came from that.
pub fn reset_code(err: &io::Error) -> Option<StreamError> {
    let inner = err.get_ref()?;
    if let Some(e) = inner.downcast_ref::<quinn::ReadError>() {
        if let quinn::ReadError::Reset(code) = e {
            return Some(StreamError::from_code(code_u32(*code)));
        }
        return None;
    }
    if let Some(quinn::WriteError::Stopped(code)) = inner.downcast_ref::<quinn::WriteError>() {
        return Some(StreamError::from_code(code_u32(*code)));
    }
    None
}

pub(crate) fn varint(code: u32) -> quinn::VarInt {
    quinn::VarInt::from_u32(code)
}

fn code_u32(code: quinn::VarInt) -> u32 {
    // Codes we send fit in u32; a larger one from a misbehaving peer maps to a value that
    // `from_code` turns into `Unknown`.
    u32::try_from(code.into_inner()).unwrap_or(u32::MAX)
}
