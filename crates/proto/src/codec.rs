//! Shared decoding machinery: the error types, the incremental [`FrameBuffer`] for the control
//! stream, and the small cursor helpers every message codec is written with.
//!
//! The decoder contract, for every `decode` in this crate:
//!
//! - `Ok(None)`: the input is a strict prefix of a frame; read more bytes and call again.
//! - `Ok(Some((message, consumed)))`: one whole frame was decoded from the first `consumed`
//!   bytes; whatever follows belongs to the next frame (or to the body).
//! - `Err(_)`: the input can never become a valid frame; the stream is broken.
//!
//! The frame's declared length is checked against the maximum before anything else, so a peer
//! cannot make the receiver buffer more than the maximum while it waits for the rest. No input
//! makes a decoder panic.

use bytes::{Buf, BufMut, BytesMut};

use crate::control::{Control, MAX_CONTROL_PAYLOAD};

/// Why bytes from the peer could not be decoded. Every variant is terminal for the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The declared frame length is over the maximum the receiver accepts.
    #[error("frame of {len} bytes is over the maximum of {max}")]
    TooLarge {
        /// The declared (or, for [`FrameBuffer::push`], buffered) length.
        len: usize,
        /// The maximum that was exceeded.
        max: usize,
    },
    /// The message carries a version newer than [`crate::VERSION`], or the invalid version 0.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// Unknown control message type, or unknown tag of an extensible enum (stream kind, body
    /// kind).
    #[error("unknown type {0}")]
    UnknownType(u8),
    /// Any other structural problem: bad lengths, trailing bytes, bad UTF-8, a value out of
    /// range.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

/// Why a message could not be encoded. On error the output buffer is left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A field or the whole frame is over its limit on the wire.
    #[error("{what} is {len} bytes, over the maximum of {max}")]
    TooLarge {
        /// Which field (or frame) is too large.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field holds a value the wire format cannot carry (for example status 42).
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// Incremental decoder for a byte stream of control frames.
///
/// Bounded: [`push`](Self::push) refuses to buffer more than `max_buffer` bytes, so
/// `max_buffer` must be at least one whole frame (3 + [`MAX_CONTROL_PAYLOAD`] bytes) plus the
/// largest read the caller pushes at once.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: BytesMut,
    max_buffer: usize,
}

impl FrameBuffer {
    /// An empty buffer that holds at most `max_buffer` undecoded bytes.
    pub fn new(max_buffer: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_buffer,
        }
    }

    /// Appends bytes read from the stream.
    ///
    /// Fails with [`DecodeError::TooLarge`] (and buffers nothing) if the buffered bytes would
    /// exceed `max_buffer`: the caller should decode what it has with
    /// [`next_control`](Self::next_control) before pushing more.
    pub fn push(&mut self, data: &[u8]) -> Result<(), DecodeError> {
        let len = self.buf.len().saturating_add(data.len());
        if len > self.max_buffer {
            return Err(DecodeError::TooLarge {
                len,
                max: self.max_buffer,
            });
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    /// Decodes the next whole frame, if one is buffered. `Ok(None)` means "push more bytes".
    ///
    /// After an error the buffer is left as it was; the stream should be closed.
    pub fn next_control(&mut self) -> Result<Option<Control>, DecodeError> {
        match Control::decode(&self.buf)? {
            Some((control, consumed)) => {
                self.buf.advance(consumed);
                Ok(Some(control))
            }
            None => Ok(None),
        }
    }

    /// The number of bytes pushed but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

/// The minimum sensible `max_buffer` for a [`FrameBuffer`]: one maximal control frame.
pub const MIN_CONTROL_BUFFER: usize = 3 + MAX_CONTROL_PAYLOAD;

// === Reader ===

/// A cursor over one frame's payload. Every read past the end is `Malformed(what)`, never a
/// panic; [`Reader::finish`] rejects trailing bytes so that every encoding is canonical.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Malformed(what));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(u8::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// A byte string with a u16 length prefix.
    pub(crate) fn bytes16(&mut self, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    /// A UTF-8 string with a u16 length prefix.
    pub(crate) fn string16(&mut self, what: &'static str) -> Result<String, DecodeError> {
        utf8(self.bytes16(what)?, what)
    }

    /// A UTF-8 string with a u8 length prefix.
    pub(crate) fn string8(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = self.u8(what)?;
        utf8(self.take(usize::from(len), what)?, what)
    }

    /// Reads the version byte and applies the version rule (see [`crate::VERSION`]).
    pub(crate) fn version(&mut self) -> Result<u8, DecodeError> {
        match self.u8("version")? {
            version @ 1..=crate::VERSION => Ok(version),
            version => Err(DecodeError::UnsupportedVersion(version)),
        }
    }

    /// Succeeds only if the whole payload was read.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("trailing bytes in frame"))
        }
    }
}

fn utf8(bytes: &[u8], what: &'static str) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Malformed(what))
}

// === Writer helpers ===

/// Writes `data` with a u16 length prefix.
pub(crate) fn put_bytes16(
    out: &mut BytesMut,
    data: &[u8],
    what: &'static str,
) -> Result<(), EncodeError> {
    put_bytes16_max(out, data, usize::from(u16::MAX), what)
}

/// Writes `data` with a u16 length prefix, if it is at most `max` (≤ `u16::MAX`) bytes.
pub(crate) fn put_bytes16_max(
    out: &mut BytesMut,
    data: &[u8],
    max: usize,
    what: &'static str,
) -> Result<(), EncodeError> {
    let len = u16::try_from(data.len())
        .ok()
        .filter(|len| usize::from(*len) <= max)
        .ok_or(EncodeError::TooLarge {
            what,
            len: data.len(),
            max,
        })?;
    out.put_u16(len);
    out.put_slice(data);
    Ok(())
}

/// Writes `data` with a u8 length prefix.
pub(crate) fn put_bytes8(
    out: &mut BytesMut,
    data: &[u8],
    what: &'static str,
) -> Result<(), EncodeError> {
    let len = u8::try_from(data.len()).map_err(|_| EncodeError::TooLarge {
        what,
        len: data.len(),
        max: usize::from(u8::MAX),
    })?;
    out.put_u8(len);
    out.put_slice(data);
    Ok(())
}

/// Runs `write` to append one frame to `out`, and rolls `out` back if it fails, so a failed
/// encode never leaves half a frame behind.
pub(crate) fn atomically(
    out: &mut BytesMut,
    write: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let start = out.len();
    let result = write(out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reader_underrun_is_malformed() {
        let mut r = Reader::new(&[0, 1, 2]);
        assert_eq!(r.u16("a").unwrap(), 1);
        assert_eq!(r.u16("b"), Err(DecodeError::Malformed("b")));
        // A failed read consumes nothing.
        assert_eq!(r.u8("c").unwrap(), 2);
        r.finish().unwrap();
    }

    #[test]
    fn reader_rejects_trailing_bytes_and_bad_utf8() {
        let r = Reader::new(&[0]);
        assert_eq!(
            r.finish(),
            Err(DecodeError::Malformed("trailing bytes in frame"))
        );
        let mut r = Reader::new(&[0, 2, 0xc3, 0x28]);
        assert_eq!(r.string16("s"), Err(DecodeError::Malformed("s")));
    }

    #[test]
    fn reader_version_rule() {
        assert_eq!(
            Reader::new(&[0]).version(),
            Err(DecodeError::UnsupportedVersion(0))
        );
        assert_eq!(Reader::new(&[crate::VERSION]).version(), Ok(crate::VERSION));
        let newer = crate::VERSION + 1;
        assert_eq!(
            Reader::new(&[newer]).version(),
            Err(DecodeError::UnsupportedVersion(newer))
        );
    }

    #[test]
    fn writer_limits_roll_back() {
        let mut out = BytesMut::from(&b"x"[..]);
        let long = vec![0; 300];
        let err = atomically(&mut out, |out| {
            put_bytes16(out, b"ok", "first")?;
            put_bytes8(out, &long, "device")
        })
        .unwrap_err();
        assert_eq!(
            err,
            EncodeError::TooLarge {
                what: "device",
                len: 300,
                max: 255
            }
        );
        assert_eq!(&out[..], b"x");
        assert!(put_bytes16_max(&mut out, &long, 32, "method").is_err());
    }

    #[test]
    fn frame_buffer_is_bounded() {
        let mut fb = FrameBuffer::new(4);
        fb.push(&[6, 0]).unwrap();
        assert_eq!(
            fb.push(&[0, 0, 0]),
            Err(DecodeError::TooLarge { len: 5, max: 4 })
        );
        assert_eq!(fb.buffered(), 2);
        assert_eq!(fb.next_control(), Ok(None));
        fb.push(&[0, 6]).unwrap();
        assert_eq!(fb.next_control(), Ok(Some(Control::Drain)));
        assert_eq!(fb.buffered(), 1);
        assert_eq!(fb.next_control(), Ok(None));
    }
}
