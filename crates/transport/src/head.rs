//! Reading and writing the head frame at the start of each data stream.
//!
//! Both heads are `len: u32 | payload`; we read the length first, refuse anything over the
//! caller's maximum before buffering it, then read exactly the frame, so no body byte is ever
//! consumed by mistake.

use std::io;

use bytes::BytesMut;
use proto::{DecodeError, ResponseHead, StreamHeader};

use crate::{Error, RecvHalf, SendHalf};

/// Writes the request head the edge opens each data stream with.
pub async fn write_stream_header(send: &mut SendHalf, header: &StreamHeader) -> Result<(), Error> {
    let mut out = BytesMut::new();
    header.encode(&mut out)?;
    send.write_chunk(out.freeze()).await?;
    Ok(())
}

/// Writes the connector's response head.
pub async fn write_response_head(send: &mut SendHalf, head: &ResponseHead) -> Result<(), Error> {
    let mut out = BytesMut::new();
    head.encode(&mut out)?;
    send.write_chunk(out.freeze()).await?;
    Ok(())
}

/// Reads a request head of at most `max` bytes.
pub async fn read_stream_header(recv: &mut RecvHalf, max: usize) -> Result<StreamHeader, Error> {
    let frame = read_frame(recv, max).await?;
    complete(StreamHeader::decode(&frame, max))
}

/// Reads a response head of at most `max` bytes.
pub async fn read_response_head(recv: &mut RecvHalf, max: usize) -> Result<ResponseHead, Error> {
    let frame = read_frame(recv, max).await?;
    complete(ResponseHead::decode(&frame, max))
}

async fn read_frame(recv: &mut RecvHalf, max: usize) -> Result<Vec<u8>, Error> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let body_len = u32::from_be_bytes(len) as usize;
    let total = body_len.saturating_add(len.len());
    if total > max {
        return Err(DecodeError::TooLarge { len: total, max }.into());
    }
    let mut frame = vec![0u8; total];
    frame[..4].copy_from_slice(&len);
    recv.read_exact(&mut frame[4..]).await?;
    Ok(frame)
}

fn complete<T>(decoded: Result<Option<(T, usize)>, DecodeError>) -> Result<T, Error> {
    match decoded? {
        Some((value, _)) => Ok(value),
        // We handed the decoder the whole frame its length prefix announced.
        None => Err(Error::Io(io::ErrorKind::UnexpectedEof.into())),
    }
}
