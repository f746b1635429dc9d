//! Drives a [`proto::ControlState`] over the control stream.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use proto::{Control, ControlEvent, ControlState, FrameBuffer};
use tokio::time::Instant;

use crate::{Error, RecvHalf, SendHalf, Wait};

/// Control frames are small; this bounds what a peer can make us buffer on the control stream.
const MAX_CONTROL_BUFFER: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;
/// Send priority of the control stream; data streams have 0.
const CONTROL_PRIORITY: i32 = 100;

/// The control stream of one tunnel connection: the sans-IO state machine plus its stream.
///
/// [`ControlDriver::next_event`] is cancel-safe: every await inside it either completes a step
/// or leaves the driver unchanged, so callers can `select!` it against shutdown or other work.
#[derive(Debug)]
pub struct ControlDriver {
    send: SendHalf,
    recv: RecvHalf,
    state: ControlState,
    inbox: FrameBuffer,
    outbox: BytesMut,
}

impl ControlDriver {
    /// Wraps an opened control stream and the state machine for our role.
    pub fn new(send: SendHalf, recv: RecvHalf, state: ControlState) -> Self {
        // Pings and pongs are how each end knows the other is alive: they must not queue
        // behind megabytes of body data on a busy link.
        send.set_priority(CONTROL_PRIORITY);
        Self {
            send,
            recv,
            state,
            inbox: FrameBuffer::new(MAX_CONTROL_BUFFER),
            outbox: BytesMut::new(),
        }
    }

    /// Runs the control stream until the state machine reports an event.
    ///
    /// Errors: the peer closed the stream, sent garbage, broke the protocol, or went silent past
    /// the timeout. Any error means the tunnel connection should be closed.
    pub async fn next_event(&mut self) -> Result<ControlEvent, Error> {
        loop {
            if let Some(event) = self.drain_inbox()? {
                return Ok(event);
            }
            while let Some(msg) = self.state.poll_transmit() {
                msg.encode(&mut self.outbox)?;
            }
            let deadline = self.state.poll_timeout().map(Instant::from_std);
            let must_write = !self.outbox.is_empty();
            tokio::select! {
                // `write` either writes some bytes or none, so a cancelled call loses nothing.
                written = self.send.write_some(&self.outbox), if must_write => {
                    let n = written?;
                    self.outbox.advance(n);
                }
                chunk = self.recv.read_chunk(READ_CHUNK) => {
                    let Some(chunk) = chunk? else {
                        return Err(Error::ControlStreamClosed);
                    };
                    self.inbox.push(&chunk)?;
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.state.handle_timeout(now())?;
                }
            }
        }
    }

    /// Sends everything queued, waiting at most `limit`; used before closing a connection so
    /// the peer sees our `Reject`, `Drain` or `GoAway`.
    pub async fn flush(&mut self, limit: Duration) -> Result<(), Error> {
        let flush = async {
            while let Some(msg) = self.state.poll_transmit() {
                msg.encode(&mut self.outbox)?;
            }
            while !self.outbox.is_empty() {
                let n = self.send.write_some(&self.outbox).await?;
                self.outbox.advance(n);
            }
            Ok::<(), Error>(())
        };
        tokio::time::timeout(limit, flush)
            .await
            .map_err(|_| Error::TimedOut(Wait::ControlFlush))?
    }

    /// Sends everything queued, ends our side of the control stream, and waits until the peer
    /// acknowledged all of it, within `limit` in total. Used before closing a connection whose
    /// last word must arrive (a `Reject`): closing at once discards stream data still in
    /// flight, so the peer would see only the close.
    pub async fn finish(&mut self, limit: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + limit;
        self.flush(limit).await?;
        self.send.finish();
        match tokio::time::timeout_at(deadline, self.send.stopped()).await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(Error::StreamStopped(code)),
            Err(_) => Err(Error::TimedOut(Wait::ControlFlush)),
        }
    }

    /// The state machine, to accept, reject, drain or query it.
    pub fn state(&mut self) -> &mut ControlState {
        &mut self.state
    }

    fn drain_inbox(&mut self) -> Result<Option<ControlEvent>, Error> {
        // Handle one message at a time so that no event is lost: messages after the one that
        // produced an event stay buffered for the next call.
        while let Some(msg) = self.inbox.next_control()? {
            if let Some(event) = self.state.handle(msg, now())? {
                return Ok(Some(event));
            }
        }
        Ok(None)
    }
}

/// Encodes one control message outside a driver (e.g. a `Reject` on a fresh stream).
pub fn encode(msg: &Control) -> Result<BytesMut, Error> {
    let mut out = BytesMut::new();
    msg.encode(&mut out)?;
    Ok(out)
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
