//! The connector enrollment exchange, sans-IO: one [`EnrollRequest`] from the connector, one
//! [`EnrollResponse`] from the edge, each a length-prefixed frame on a TLS stream whose ALPN is
//! [`ENROLL_ALPN`].
//!
//! ```text
//! frame    := length:u32 (bytes after it, ≤ MAX_ENROLL_FRAME) | version:u8 | type:u8 | payload
//! Request  (type 1) := code_id[16] | host:str16 | csr_pem:str16 | mac[32]
//! Enrolled (type 2) := site:str8 | connector_id:str8 | server_name:str8
//!                      | edge_count:u8 | edge:str8 × edge_count
//!                      | cert_pem:str16 | tunnel_ca_pem:str16 | mac[32]
//! Refused  (type 3) := reason:u8
//! ```
//!
//! The MACs are not computed here (this crate has no cryptography): a message's
//! [`mac_input`](EnrollRequest::mac_input) is its frame from `version` up to the MAC, and the
//! `pki` crate keys it with the enrollment code. What this module is not: it does not know what
//! a code, a CSR or a certificate is; it carries strings and bytes.

use bytes::{BufMut, BytesMut};

use crate::codec::{DecodeError, EncodeError, Reader, atomically, put_bytes8, put_bytes16};

/// The ALPN token of the enrollment exchange on the edge's HTTPS port.
pub const ENROLL_ALPN: &[u8] = b"doorless-enroll/1";

/// Largest frame either side sends or accepts (after the length prefix). A certificate and a
/// CA certificate in PEM are about 1.5 KiB together; this leaves room and bounds the buffer.
pub const MAX_ENROLL_FRAME: usize = 16 * 1024;

/// Bytes of a code id.
pub const CODE_ID_LEN: usize = 16;
/// Bytes of a MAC (HMAC-SHA256).
pub const MAC_LEN: usize = 32;

const TYPE_REQUEST: u8 = 1;
const TYPE_ENROLLED: u8 = 2;
const TYPE_REFUSED: u8 = 3;
const MAX_EDGES: usize = 16;

/// The connector's request: which code (its id, never the secret), where it dialed, its CSR,
/// and a MAC proving it knows the code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollRequest {
    /// The code's public id (derived from the secret).
    pub code_id: [u8; CODE_ID_LEN],
    /// The `host[:port]` of the code, as the connector dialed it.
    pub host: String,
    /// The connector's certificate signing request, PEM.
    pub csr_pem: String,
    /// HMAC over [`EnrollRequest::mac_input`] with the code's key.
    pub mac: [u8; MAC_LEN],
}

/// The edge's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollResponse {
    /// The certificate and everything the connector needs to dial the tunnel.
    Enrolled(Enrolled),
    /// No certificate; why.
    Refused(Refusal),
}

/// A successful enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrolled {
    /// The site the code was minted for.
    pub site: String,
    /// The connector id the edge chose.
    pub connector_id: String,
    /// The name to verify on the edge's tunnel certificate.
    pub server_name: String,
    /// `host:port` of the edge's tunnel listener(s).
    pub edges: Vec<String>,
    /// The connector's certificate, PEM.
    pub cert_pem: String,
    /// The tunnel CA to pin, PEM.
    pub tunnel_ca_pem: String,
    /// HMAC over the request's MAC and [`Enrolled::mac_input`] with the code's key.
    pub mac: [u8; MAC_LEN],
}

/// Why the edge refused. Unauthenticated: a man in the middle can forge it, which costs the
/// connector nothing but a retry (he could as well drop the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No such code, or the MAC did not verify (the edge does not say which).
    UnknownCode,
    /// The code was already used.
    Used,
    /// The code expired.
    Expired,
    /// The code was revoked.
    Revoked,
    /// Too many failed attempts from this address or overall; try later.
    RateLimited,
    /// The request was malformed or its CSR unacceptable.
    BadRequest,
    /// The edge failed (its log says why).
    Internal,
}

impl Refusal {
    fn code(self) -> u8 {
        match self {
            Self::UnknownCode => 1,
            Self::Used => 2,
            Self::Expired => 3,
            Self::Revoked => 4,
            Self::RateLimited => 5,
            Self::BadRequest => 6,
            Self::Internal => 7,
        }
    }

    fn from_code(code: u8) -> Result<Self, DecodeError> {
        Ok(match code {
            1 => Self::UnknownCode,
            2 => Self::Used,
            3 => Self::Expired,
            4 => Self::Revoked,
            5 => Self::RateLimited,
            6 => Self::BadRequest,
            7 => Self::Internal,
            other => return Err(DecodeError::UnknownType(other)),
        })
    }
}

impl EnrollRequest {
    /// The bytes the MAC covers: the frame from `version` up to (not including) the MAC.
    pub fn mac_input(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = BytesMut::new();
        self.put_unmaced(&mut out)?;
        Ok(out.to_vec())
    }

    fn put_unmaced(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(crate::VERSION);
        out.put_u8(TYPE_REQUEST);
        out.put_slice(&self.code_id);
        put_bytes16(out, self.host.as_bytes(), "enroll host")?;
        put_bytes16(out, self.csr_pem.as_bytes(), "enroll csr")
    }

    /// Appends the whole frame to `out` (nothing on error).
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        frame(out, |out| {
            self.put_unmaced(out)?;
            out.put_slice(&self.mac);
            Ok(())
        })
    }

    /// Decodes one request frame from the start of `buf` (see the crate's decoder contract).
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some((payload, consumed)) = unframe(buf)? else {
            return Ok(None);
        };
        let mut r = Reader::new(payload);
        r.version()?;
        match r.u8("enroll type")? {
            TYPE_REQUEST => {}
            other => return Err(DecodeError::UnknownType(other)),
        }
        let code_id = r.array("enroll code id")?;
        let host = r.string16("enroll host")?;
        let csr_pem = r.string16("enroll csr")?;
        let mac = r.array("enroll mac")?;
        r.finish()?;
        Ok(Some((
            Self {
                code_id,
                host,
                csr_pem,
                mac,
            },
            consumed,
        )))
    }
}

impl Enrolled {
    /// The bytes the MAC covers (after the request's MAC): this frame from `version` up to
    /// (not including) its own MAC.
    pub fn mac_input(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = BytesMut::new();
        self.put_unmaced(&mut out)?;
        Ok(out.to_vec())
    }

    fn put_unmaced(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        out.put_u8(crate::VERSION);
        out.put_u8(TYPE_ENROLLED);
        put_bytes8(out, self.site.as_bytes(), "enrolled site")?;
        put_bytes8(out, self.connector_id.as_bytes(), "enrolled connector id")?;
        put_bytes8(out, self.server_name.as_bytes(), "enrolled server name")?;
        let count = u8::try_from(self.edges.len())
            .ok()
            .filter(|n| usize::from(*n) <= MAX_EDGES)
            .ok_or(EncodeError::TooLarge {
                what: "enrolled edges",
                len: self.edges.len(),
                max: MAX_EDGES,
            })?;
        out.put_u8(count);
        for edge in &self.edges {
            put_bytes8(out, edge.as_bytes(), "enrolled edge")?;
        }
        put_bytes16(out, self.cert_pem.as_bytes(), "enrolled certificate")?;
        put_bytes16(out, self.tunnel_ca_pem.as_bytes(), "enrolled tunnel CA")
    }
}

impl EnrollResponse {
    /// Appends the whole frame to `out` (nothing on error).
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        frame(out, |out| match self {
            Self::Enrolled(enrolled) => {
                enrolled.put_unmaced(out)?;
                out.put_slice(&enrolled.mac);
                Ok(())
            }
            Self::Refused(reason) => {
                out.put_u8(crate::VERSION);
                out.put_u8(TYPE_REFUSED);
                out.put_u8(reason.code());
                Ok(())
            }
        })
    }

    /// Decodes one response frame from the start of `buf` (see the crate's decoder contract).
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some((payload, consumed)) = unframe(buf)? else {
            return Ok(None);
        };
        let mut r = Reader::new(payload);
        r.version()?;
        let response = match r.u8("enroll type")? {
            TYPE_ENROLLED => {
                let site = r.string8("enrolled site")?;
                let connector_id = r.string8("enrolled connector id")?;
                let server_name = r.string8("enrolled server name")?;
                let count = usize::from(r.u8("enrolled edges")?);
                if count > MAX_EDGES {
                    return Err(DecodeError::Malformed("too many edges"));
                }
                let edges = (0..count)
                    .map(|_| r.string8("enrolled edge"))
                    .collect::<Result<_, _>>()?;
                let cert_pem = r.string16("enrolled certificate")?;
                let tunnel_ca_pem = r.string16("enrolled tunnel CA")?;
                let mac = r.array("enrolled mac")?;
                Self::Enrolled(Enrolled {
                    site,
                    connector_id,
                    server_name,
                    edges,
                    cert_pem,
                    tunnel_ca_pem,
                    mac,
                })
            }
            TYPE_REFUSED => Self::Refused(Refusal::from_code(r.u8("refusal")?)?),
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(Some((response, consumed)))
    }
}

/// Writes a u32 length prefix, then what `write` appends, checking the maximum.
fn frame(
    out: &mut BytesMut,
    write: impl FnOnce(&mut BytesMut) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    atomically(out, |out| {
        let len_at = out.len();
        out.put_u32(0);
        write(out)?;
        let len = out.len() - len_at - 4;
        if len > MAX_ENROLL_FRAME {
            return Err(EncodeError::TooLarge {
                what: "enroll frame",
                len,
                max: MAX_ENROLL_FRAME,
            });
        }
        let len32 = u32::try_from(len).map_err(|_| EncodeError::Invalid("enroll frame length"))?;
        out[len_at..len_at + 4].copy_from_slice(&len32.to_be_bytes());
        Ok(())
    })
}

/// The payload of the frame at the start of `buf` and the bytes it took; the declared length
/// is checked before anything is awaited.
fn unframe(buf: &[u8]) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let Some((len, rest)) = buf.split_first_chunk::<4>() else {
        return Ok(None);
    };
    let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
    if len > MAX_ENROLL_FRAME {
        return Err(DecodeError::TooLarge {
            len,
            max: MAX_ENROLL_FRAME,
        });
    }
    match rest.get(..len) {
        Some(payload) => Ok(Some((payload, 4 + len))),
        None => Ok(None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request() -> EnrollRequest {
        EnrollRequest {
            code_id: [7; CODE_ID_LEN],
            host: "ha.example.com".into(),
            csr_pem: "-----BEGIN CERTIFICATE REQUEST-----\n".into(),
            mac: [9; MAC_LEN],
        }
    }

    fn enrolled() -> Enrolled {
        Enrolled {
            site: "home".into(),
            connector_id: "connector-1".into(),
            server_name: "edge.doorless.invalid".into(),
            edges: vec!["ha.example.com:443".into(), "[::1]:8443".into()],
            cert_pem: "cert".into(),
            tunnel_ca_pem: "ca".into(),
            mac: [3; MAC_LEN],
        }
    }

    #[test]
    fn round_trips_and_need_more() {
        let mut out = BytesMut::new();
        request().encode(&mut out).unwrap();
        for cut in 0..out.len() {
            assert_eq!(EnrollRequest::decode(&out[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(
            EnrollRequest::decode(&out),
            Ok(Some((request(), out.len())))
        );
        // The MAC input is the frame between the length and the MAC.
        assert_eq!(request().mac_input().unwrap(), &out[4..out.len() - MAC_LEN]);
        for response in [
            EnrollResponse::Enrolled(enrolled()),
            EnrollResponse::Refused(Refusal::Used),
        ] {
            let mut out = BytesMut::new();
            response.encode(&mut out).unwrap();
            assert_eq!(
                EnrollResponse::decode(&out),
                Ok(Some((response.clone(), out.len())))
            );
        }
    }

    #[test]
    fn oversized_and_garbage_are_invalid() {
        let huge = (u32::try_from(MAX_ENROLL_FRAME).unwrap() + 1).to_be_bytes();
        assert!(matches!(
            EnrollRequest::decode(&huge),
            Err(DecodeError::TooLarge { .. })
        ));
        let mut out = BytesMut::new();
        EnrollResponse::Refused(Refusal::Used)
            .encode(&mut out)
            .unwrap();
        // A response is not a request.
        assert_eq!(
            EnrollRequest::decode(&out),
            Err(DecodeError::UnknownType(TYPE_REFUSED))
        );
        let mut bad = out.clone();
        let last = bad.len() - 1;
        bad[last] = 99;
        assert_eq!(
            EnrollResponse::decode(&bad),
            Err(DecodeError::UnknownType(99))
        );
        let too_big = EnrollRequest {
            csr_pem: "x".repeat(MAX_ENROLL_FRAME),
            ..request()
        };
        let mut out = BytesMut::from(&b"keep"[..]);
        assert!(too_big.encode(&mut out).is_err());
        assert_eq!(&out[..], b"keep");
    }
}
