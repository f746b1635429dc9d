//! Lingering close for client connections.
//!
//! When a server closes a TCP socket that still has unread bytes in its receive buffer, the
//! kernel answers with a reset instead of a FIN, and a reset makes the client's kernel throw
//! away whatever it received but its application had not read yet: the end of a response
//! that was sent in full. An HTTP/2 client sends WINDOW_UPDATE and PING frames while it
//! downloads, so an edge that ends a connection (graceful shutdown after `GOAWAY`, an
//! HTTP/1.1 `Connection: close`) right after its last DATA frame can cut off the download it
//! just finished. nginx calls the remedy "lingering close".
//!
//! [`Lingering`] wraps a connection's stream. Its `poll_shutdown` first shuts down our
//! sending side (TLS `close_notify` and FIN), then reads and discards what the client still
//! sends until it closes its side, an error, or [`LINGER`] has passed, and only then reports
//! the shutdown done, so the socket is closed with nothing unread. hyper ends every
//! connection it closes through `poll_shutdown`; a connection dropped without it (a revoked
//! certificate) closes at once, as it should.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The longest a closing connection waits for its client to close its side.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// A stream whose shutdown lingers (module docs).
#[derive(Debug)]
pub(crate) struct Lingering<T> {
    inner: T,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Carrying data.
    Open,
    /// Our side is shut down; discarding what arrives until EOF or the deadline.
    Draining(Pin<Box<Sleep>>),
    /// Shut down and drained.
    Done,
}

impl<T> Lingering<T> {
    pub(crate) fn new(inner: T) -> Self {
        Self {
            inner,
            state: State::Open,
        }
    }

    /// The stream it wraps.
    pub(crate) fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.state {
                State::Open => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    this.state = State::Draining(Box::pin(tokio::time::sleep(LINGER)));
                }
                State::Draining(deadline) => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        this.state = State::Done;
                        continue;
                    }
                    let mut scratch = [0u8; 1024];
                    let mut buf = ReadBuf::new(&mut scratch);
                    match ready!(Pin::new(&mut this.inner).poll_read(cx, &mut buf)) {
                        // More from the client: discard it, read on.
                        Ok(()) if !buf.filled().is_empty() => {}
                        // EOF, or the client is gone: nothing more will arrive.
                        Ok(()) | Err(_) => this.state = State::Done,
                    }
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    /// The server sends a response and closes while bytes the client sent sit unread: the
    /// client still reads every byte. Without lingering the close is a reset, and the
    /// client's kernel drops the response it had received but not yet handed over.
    #[tokio::test]
    async fn a_closed_connection_delivers_everything_it_sent() {
        // Fits in the socket buffers: written at once, all of it waiting in the client's.
        const SIZE: usize = 256 << 10;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
            // Wait until the client's bytes are here, then never read them.
            tcp.readable().await.unwrap_or_else(|e| panic!("{e}"));
            let mut conn = Lingering::new(tcp);
            conn.write_all(&vec![7u8; SIZE])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            conn.shutdown().await.unwrap_or_else(|e| panic!("{e}"));
            drop(conn);
            let _ = closed_tx.send(());
        });
        let mut client = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client
            .write_all(b"a WINDOW_UPDATE the server never reads")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // The server lingers until we close: it must not have closed while we read nothing.
        let early = tokio::time::timeout(LINGER / 4, closed_rx).await;
        assert!(early.is_err(), "closed without waiting for the client");
        let mut got = Vec::new();
        let read = client.read_to_end(&mut got).await;
        assert!(read.is_ok(), "{read:?} after {} of {SIZE} bytes", got.len());
        assert_eq!(got.len(), SIZE);
        drop(client);
        server.await.unwrap_or_else(|e| panic!("{e}"));
    }

    /// A client that never closes its side holds a closing connection at most [`LINGER`].
    #[tokio::test]
    async fn lingering_ends_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let _client = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let (tcp, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let mut conn = Lingering::new(tcp);
        let started = tokio::time::Instant::now();
        let done = tokio::time::timeout(LINGER * 5, conn.shutdown()).await;
        assert!(matches!(done, Ok(Ok(()))), "{done:?}");
        assert!(started.elapsed() >= LINGER, "{:?}", started.elapsed());
    }
}
