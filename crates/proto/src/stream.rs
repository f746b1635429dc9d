//! The heads of a data stream: [`StreamHeader`] (edge → connector) and [`ResponseHead`]
//! (connector → edge).
//!
//! The edge opens one bidirectional stream per HTTP request and writes a `StreamHeader`
//! frame, then the request body as raw bytes until FIN. The connector answers with a
//! `ResponseHead` frame, then the response body as raw bytes until FIN. For
//! [`StreamKind::Upgrade`] answered with status 101, both directions carry raw bytes after
//! the heads.
//!
//! Both heads are framed as `len: u32 | payload[len]`, big-endian, and every payload starts
//! with `version: u8`. Decoders take the largest `len` the caller accepts (normally
//! [`MAX_HEAD_FRAME`]) and refuse a larger frame from its first four bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{
    DecodeError, EncodeError, Reader, atomically, put_bytes8, put_bytes16, put_bytes16_max,
};

/// The largest head frame payload (`StreamHeader` or `ResponseHead`) [`encode`] produces, and
/// the `max` callers normally pass to `decode`.
///
/// [`encode`]: StreamHeader::encode
pub const MAX_HEAD_FRAME: usize = 256 * 1024;

/// The longest request method, in bytes.
pub const MAX_METHOD: usize = 32;

/// The most header fields in one head.
pub const MAX_HEADERS: usize = 1024;

/// What a data stream carries. A u8 on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// 0: one HTTP request and its response.
    Http,
    /// 1: an HTTP request asking to switch protocols (WebSocket); after a 101 response both
    /// directions are raw bytes.
    Upgrade,
}

/// How the body after a head is delimited. A tag `u8` on the wire, then a `u64` for `Length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BodyKind {
    /// 0: no body bytes follow; FIN comes right after the head.
    Empty,
    /// 1: exactly this many body bytes follow, then FIN.
    Length(u64),
    /// 2: body bytes of unknown length follow, until FIN.
    Streamed,
}

/// Who made the request, as the edge saw them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientInfo {
    /// The client's address. IPv6 flow info and scope id are not carried (decoded as 0).
    pub addr: SocketAddr,
    /// SHA-256 of the client certificate (DER), if the client presented one.
    pub cert_fingerprint: Option<[u8; 32]>,
    /// The device name from the certificate identity; empty if none. At most 255 bytes.
    pub device: String,
}

/// The first frame of every data stream, edge → connector: the request head and its client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamHeader {
    /// The protocol version this header was encoded with (see [`crate::VERSION`]).
    pub version: u8,
    /// Plain request, or upgrade.
    pub kind: StreamKind,
    /// The edge's id for this request, for correlating logs on both ends.
    pub request_id: u64,
    /// The request method, raw, e.g. `b"GET"`. At most [`MAX_METHOD`] bytes.
    pub method: Bytes,
    /// The request target, byte for byte as received (no normalisation).
    pub target: Bytes,
    /// Header fields, in order, raw (names lowercase as received). At most [`MAX_HEADERS`].
    pub headers: Vec<(Bytes, Bytes)>,
    /// How the request body that follows is delimited.
    pub body: BodyKind,
    /// Who sent the request.
    pub client: ClientInfo,
}

/// The first frame the connector sends back on a data stream: the response head.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResponseHead {
    /// The protocol version this head was encoded with (see [`crate::VERSION`]).
    pub version: u8,
    /// The HTTP status, 100..=999.
    pub status: u16,
    /// Header fields, in order, raw. At most [`MAX_HEADERS`].
    pub headers: Vec<(Bytes, Bytes)>,
    /// How the response body that follows is delimited (`Streamed` after a 101).
    pub body: BodyKind,
}

/// The frame header: `len: u32`.
const LEN_PREFIX: usize = 4;

// === impl StreamHeader ===

impl StreamHeader {
    /// Appends this header as one frame to `out`. On error `out` is unchanged.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        put_head_frame(out, "stream header", |out| {
            out.put_u8(self.version);
            out.put_u8(self.kind.tag());
            out.put_u64(self.request_id);
            put_bytes16_max(out, &self.method, MAX_METHOD, "method")?;
            put_bytes16(out, &self.target, "target")?;
            put_headers(out, &self.headers)?;
            self.body.encode(out);
            self.client.encode(out)
        })
    }

    /// Decodes one frame from the start of `buf`, refusing a payload over `max` bytes:
    /// `Ok(None)` if `buf` holds only part of it, otherwise the header and the number of bytes
    /// it took. The request body starts right after.
    pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Self, usize)>, DecodeError> {
        decode_head_frame(buf, max, |r| {
            Ok(Self {
                version: r.version()?,
                kind: StreamKind::decode(r)?,
                request_id: r.u64("request id")?,
                method: method(r)?,
                target: Bytes::copy_from_slice(r.bytes16("target")?),
                headers: headers(r)?,
                body: BodyKind::decode(r)?,
                client: ClientInfo::decode(r)?,
            })
        })
    }
}

// === impl ResponseHead ===

impl ResponseHead {
    /// Appends this head as one frame to `out`. On error `out` is unchanged.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        put_head_frame(out, "response head", |out| {
            out.put_u8(self.version);
            if !(100..=999).contains(&self.status) {
                return Err(EncodeError::Invalid("status"));
            }
            out.put_u16(self.status);
            put_headers(out, &self.headers)?;
            self.body.encode(out);
            Ok(())
        })
    }

    /// Decodes one frame from the start of `buf`, refusing a payload over `max` bytes:
    /// `Ok(None)` if `buf` holds only part of it, otherwise the head and the number of bytes
    /// it took. The response body starts right after.
    pub fn decode(buf: &[u8], max: usize) -> Result<Option<(Self, usize)>, DecodeError> {
        decode_head_frame(buf, max, |r| {
            Ok(Self {
                version: r.version()?,
                status: match r.u16("status")? {
                    status @ 100..=999 => status,
                    _ => return Err(DecodeError::Malformed("status out of range")),
                },
                headers: headers(r)?,
                body: BodyKind::decode(r)?,
            })
        })
    }
}

// === impl StreamKind, BodyKind, ClientInfo ===

impl StreamKind {
    fn tag(self) -> u8 {
        match self {
            Self::Http => 0,
            Self::Upgrade => 1,
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("stream kind")? {
            0 => Ok(Self::Http),
            1 => Ok(Self::Upgrade),
            other => Err(DecodeError::UnknownType(other)),
        }
    }
}

impl BodyKind {
    fn encode(self, out: &mut BytesMut) {
        match self {
            Self::Empty => out.put_u8(0),
            Self::Length(len) => {
                out.put_u8(1);
                out.put_u64(len);
            }
            Self::Streamed => out.put_u8(2),
        }
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("body kind")? {
            0 => Ok(Self::Empty),
            1 => Ok(Self::Length(r.u64("body length")?)),
            2 => Ok(Self::Streamed),
            other => Err(DecodeError::UnknownType(other)),
        }
    }
}

impl ClientInfo {
    fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self.addr.ip() {
            IpAddr::V4(ip) => {
                out.put_u8(4);
                out.put_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                out.put_u8(6);
                out.put_slice(&ip.octets());
            }
        }
        out.put_u16(self.addr.port());
        match &self.cert_fingerprint {
            None => out.put_u8(0),
            Some(fingerprint) => {
                out.put_u8(1);
                out.put_slice(fingerprint);
            }
        }
        put_bytes8(out, self.device.as_bytes(), "device")
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let ip = match r.u8("address family")? {
            4 => IpAddr::V4(Ipv4Addr::from(r.array::<4>("ipv4 address")?)),
            6 => IpAddr::V6(Ipv6Addr::from(r.array::<16>("ipv6 address")?)),
            _ => return Err(DecodeError::Malformed("address family")),
        };
        let port = r.u16("port")?;
        let cert_fingerprint = match r.u8("fingerprint flag")? {
            0 => None,
            1 => Some(r.array::<32>("fingerprint")?),
            _ => return Err(DecodeError::Malformed("fingerprint flag")),
        };
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            cert_fingerprint,
            device: r.string8("device")?,
        })
    }
}

// === helpers ===

/// Appends `len: u32 | payload`, where `write` produces the payload, refusing a payload over
/// [`MAX_HEAD_FRAME`].
fn put_head_frame(
    out: &mut BytesMut,
    what: &'static str,
    write: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    atomically(out, |out| {
        let len_at = out.len();
        out.put_u32(0);
        write(out)?;
        let len = out.len() - len_at - LEN_PREFIX;
        let len32 = u32::try_from(len)
            .ok()
            .filter(|_| len <= MAX_HEAD_FRAME)
            .ok_or(EncodeError::TooLarge {
                what,
                len,
                max: MAX_HEAD_FRAME,
            })?;
        out[len_at..len_at + LEN_PREFIX].copy_from_slice(&len32.to_be_bytes());
        Ok(())
    })
}

/// Checks the frame length against `max`, waits for the whole frame, then decodes its payload
/// with `read`, which must consume all of it.
fn decode_head_frame<T>(
    buf: &[u8],
    max: usize,
    read: impl FnOnce(&mut Reader<'_>) -> Result<T, DecodeError>,
) -> Result<Option<(T, usize)>, DecodeError> {
    let Some((len, rest)) = buf.split_first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    // A u32 always fits a usize on the platforms we build for; if not, it is too large anyway.
    let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
    if len > max {
        return Err(DecodeError::TooLarge { len, max });
    }
    let Some(payload) = rest.get(..len) else {
        return Ok(None);
    };
    let mut r = Reader::new(payload);
    let head = read(&mut r)?;
    r.finish()?;
    Ok(Some((head, LEN_PREFIX + len)))
}

fn put_headers(out: &mut BytesMut, headers: &[(Bytes, Bytes)]) -> Result<(), EncodeError> {
    let count = u16::try_from(headers.len())
        .ok()
        .filter(|_| headers.len() <= MAX_HEADERS)
        .ok_or(EncodeError::TooLarge {
            what: "header count",
            len: headers.len(),
            max: MAX_HEADERS,
        })?;
    out.put_u16(count);
    for (name, value) in headers {
        put_bytes16(out, name, "header name")?;
        put_bytes16(out, value, "header value")?;
    }
    Ok(())
}

fn headers(r: &mut Reader<'_>) -> Result<Vec<(Bytes, Bytes)>, DecodeError> {
    let count = usize::from(r.u16("header count")?);
    if count > MAX_HEADERS {
        return Err(DecodeError::Malformed("too many headers"));
    }
    // Bounded by MAX_HEADERS, so a lying count cannot make us allocate much.
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = Bytes::copy_from_slice(r.bytes16("header name")?);
        let value = Bytes::copy_from_slice(r.bytes16("header value")?);
        headers.push((name, value));
    }
    Ok(headers)
}

fn method(r: &mut Reader<'_>) -> Result<Bytes, DecodeError> {
    let len = usize::from(r.u16("method")?);
    if len > MAX_METHOD {
        return Err(DecodeError::Malformed("method too long"));
    }
    Ok(Bytes::copy_from_slice(r.take(len, "method")?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn header() -> StreamHeader {
        StreamHeader {
            version: crate::VERSION,
            kind: StreamKind::Http,
            request_id: 1,
            method: Bytes::from_static(b"GET"),
            target: Bytes::from_static(b"/"),
            headers: vec![(Bytes::from_static(b"host"), Bytes::from_static(b"h"))],
            body: BodyKind::Empty,
            client: ClientInfo {
                addr: "192.0.2.1:1000".parse().unwrap(),
                cert_fingerprint: None,
                device: String::new(),
            },
        }
    }

    fn response() -> ResponseHead {
        ResponseHead {
            version: crate::VERSION,
            status: 200,
            headers: Vec::new(),
            body: BodyKind::Length(5),
        }
    }

    fn encoded(header: &StreamHeader) -> BytesMut {
        let mut out = BytesMut::new();
        header.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn round_trip_with_body_following() {
        let mut out = encoded(&header());
        out.extend_from_slice(b"body");
        let (decoded, consumed) = StreamHeader::decode(&out, MAX_HEAD_FRAME).unwrap().unwrap();
        assert_eq!(decoded, header());
        assert_eq!(&out[consumed..], b"body");

        let mut out = BytesMut::new();
        response().encode(&mut out).unwrap();
        let len = out.len();
        assert_eq!(
            ResponseHead::decode(&out, MAX_HEAD_FRAME),
            Ok(Some((response(), len)))
        );
    }

    #[test]
    fn length_is_checked_before_buffering() {
        // Four bytes are enough to refuse a frame over `max`.
        assert_eq!(
            StreamHeader::decode(&[0, 0, 1, 0], 255),
            Err(DecodeError::TooLarge { len: 256, max: 255 })
        );
        assert_eq!(
            ResponseHead::decode(&[0xff, 0xff, 0xff, 0xff], MAX_HEAD_FRAME),
            Err(DecodeError::TooLarge {
                len: 0xffff_ffff,
                max: MAX_HEAD_FRAME
            })
        );
        assert_eq!(StreamHeader::decode(&[0, 0, 1], 255), Ok(None));
        assert_eq!(StreamHeader::decode(&[0, 0, 0, 9, 1], 255), Ok(None));
    }

    #[test]
    fn decode_errors() {
        let frame = |payload: &[u8]| {
            let mut buf = u32::try_from(payload.len()).unwrap().to_be_bytes().to_vec();
            buf.extend_from_slice(payload);
            buf
        };
        let cases: &[(&[u8], DecodeError)] = &[
            (&[], DecodeError::Malformed("version")),
            (&[0], DecodeError::UnsupportedVersion(0)),
            (&[2], DecodeError::UnsupportedVersion(2)),
            (&[1, 2, 0, 0, 0, 0, 0, 0, 0, 0], DecodeError::UnknownType(2)),
            (
                &[1, 0, 0, 0, 0, 0, 0, 0, 0],
                DecodeError::Malformed("request id"),
            ),
            (
                &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 33],
                DecodeError::Malformed("method too long"),
            ),
        ];
        for (payload, expected) in cases {
            assert_eq!(
                StreamHeader::decode(&frame(payload), MAX_HEAD_FRAME).as_ref(),
                Err(expected),
                "{payload:?}"
            );
        }

        // Trailing bytes after the device name.
        let mut out = encoded(&header());
        out.extend_from_slice(&[0]);
        let mut bad = frame(&out[4..]);
        assert_eq!(
            StreamHeader::decode(&bad, MAX_HEAD_FRAME),
            Err(DecodeError::Malformed("trailing bytes in frame"))
        );
        // Address family 5.
        let family_at = out.len() - 1 - 1 - 1 - 2 - 4 - 1;
        bad = out[..out.len() - 1].to_vec();
        bad[family_at] = 5;
        assert_eq!(
            StreamHeader::decode(&bad, MAX_HEAD_FRAME),
            Err(DecodeError::Malformed("address family"))
        );

        let statuses: &[(&[u8], DecodeError)] = &[
            (
                &[1, 0, 99, 0, 0, 0],
                DecodeError::Malformed("status out of range"),
            ),
            (
                &[1, 0x03, 0xe8, 0, 0, 0],
                DecodeError::Malformed("status out of range"),
            ),
            (
                &[1, 0, 200, 0x04, 0x01],
                DecodeError::Malformed("too many headers"),
            ),
            (&[1, 0, 200, 0, 0, 3], DecodeError::UnknownType(3)),
        ];
        for (payload, expected) in statuses {
            assert_eq!(
                ResponseHead::decode(&frame(payload), MAX_HEAD_FRAME).as_ref(),
                Err(expected),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn encode_limits() {
        let mut out = BytesMut::from(&b"keep"[..]);
        let too_long = |what, len, max| Err(EncodeError::TooLarge { what, len, max });

        let mut h = header();
        h.method = Bytes::from(vec![b'A'; 33]);
        assert_eq!(h.encode(&mut out), too_long("method", 33, 32));

        let mut h = header();
        h.headers = vec![(Bytes::new(), Bytes::new()); 1025];
        assert_eq!(h.encode(&mut out), too_long("header count", 1025, 1024));

        let mut h = header();
        h.client.device = "d".repeat(256);
        assert_eq!(h.encode(&mut out), too_long("device", 256, 255));

        let mut h = header();
        h.target = Bytes::from(vec![b'/'; 65536]);
        assert_eq!(h.encode(&mut out), too_long("target", 65536, 65535));

        // Each field within its limit, the frame over MAX_HEAD_FRAME.
        let mut h = header();
        h.headers = vec![(Bytes::new(), Bytes::from(vec![b'v'; 65535])); 5];
        assert!(matches!(
            h.encode(&mut out),
            Err(EncodeError::TooLarge {
                what: "stream header",
                ..
            })
        ));

        let mut r = response();
        r.status = 99;
        assert_eq!(r.encode(&mut out), Err(EncodeError::Invalid("status")));
        assert_eq!(&out[..], b"keep");
    }

    #[test]
    fn ipv6_scope_is_not_carried() {
        let mut h = header();
        let ip = "fe80::1".parse().unwrap();
        h.client.addr = SocketAddr::V6(std::net::SocketAddrV6::new(ip, 443, 5, 7));
        let out = encoded(&h);
        let (decoded, _) = StreamHeader::decode(&out, MAX_HEAD_FRAME).unwrap().unwrap();
        assert_eq!(decoded.client.addr, "[fe80::1]:443".parse().unwrap());
    }
}
