//! The transport's one error type, with kinds callers match on.
//!
//! [`Error`] says what happened in terms any tunnel transport has: a refused handshake, a
//! certificate we refused, a close by the peer with a [`CloseCode`], a timeout, a stream reset
//! with a [`StreamError`]. QUIC is one way to carry the tunnel; TLS over TCP with HTTP/2
//! streams will be another, and code above this crate must not care which, so nothing here
//! names a quinn type: the conversions from quinn's errors live at the bottom of this file and
//! are private to the crate.
//!
//! What it is not: a place for message text to carry meaning. Every kind a caller acts on is a
//! variant or a typed field; the few strings are for logs only.

use std::fmt;
use std::io;

use proto::{CloseCode, ControlError, DecodeError, EncodeError, StreamError};

/// Everything that can go wrong while setting up or using the tunnel transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- Setting up an endpoint ---
    /// The TLS configuration could not be built (bad certificate, key or CA).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The certificate verifier could not be built (e.g. an empty CA list).
    #[error("certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// A transport setting cannot be used (e.g. a reset secret under 32 bytes).
    #[error("transport configuration: {0}")]
    InvalidConfig(&'static str),

    // --- The handshake ---
    /// The peer aborted the TLS handshake with this alert: typically it does not accept our
    /// certificate (see [`Alert::certificate_problem`]).
    #[error("peer refused the TLS handshake: {0}")]
    HandshakeRefused(Alert),
    /// We refused the peer's certificate. The edge refusing a connector and a connector
    /// refusing an edge outside its pinned CA both end here, each on its own side.
    #[error("invalid peer certificate: {0}")]
    InvalidPeerCertificate(CertificateProblem),
    /// We aborted the TLS handshake for a reason other than the peer's certificate (no
    /// common protocol, a malformed handshake message).
    #[error("TLS handshake failed: {0}")]
    HandshakeFailed(Alert),

    // --- The connection ---
    /// The peer closed the connection with an application close code.
    #[error("peer closed the connection ({}): {reason}", code.name())]
    ClosedByPeer {
        /// Why, for the program.
        code: CloseCode,
        /// Why, for humans (lossy UTF-8 of what the peer sent).
        reason: String,
    },
    /// The peer no longer knows this connection: it restarted (a QUIC stateless reset; a TCP
    /// reset in a TCP transport).
    #[error("the peer restarted (connection reset)")]
    ResetByPeer,
    /// A wait ran out.
    #[error("timed out: {0}")]
    TimedOut(Wait),
    /// We closed the connection (or this stream) ourselves; using it now fails.
    #[error("closed locally")]
    LocallyClosed,
    /// The connection failed below the protocol: a transport-level violation by either end,
    /// no common transport version, the endpoint out of resources. Nothing a caller acts on
    /// beyond closing; the text is for logs and is never to be matched.
    #[error("transport failure: {0}")]
    Failed(String),

    // --- Streams ---
    /// The peer reset the stream (it will send no more) with this code.
    #[error("stream reset by peer: {0}")]
    StreamReset(StreamError),
    /// The peer stopped the stream (it will read no more) with this code.
    #[error("stream stopped by peer: {0}")]
    StreamStopped(StreamError),

    // --- The protocol on top ---
    /// The peer ended the control stream; the tunnel connection is over.
    #[error("peer closed the control stream")]
    ControlStreamClosed,
    /// A frame could not be decoded.
    #[error("protocol: {0}")]
    Decode(#[from] DecodeError),
    /// A frame could not be encoded (a field over its limit).
    #[error("protocol: {0}")]
    Encode(#[from] EncodeError),
    /// The control state machine reported a violation or a silent peer.
    #[error("control: {0}")]
    Control(#[from] ControlError),

    // --- Plain I/O ---
    /// Socket setup or I/O failed, or a stream ended before a whole frame (`UnexpectedEof`).
    #[error("I/O: {0}")]
    Io(io::Error),
}

impl Error {
    /// Whether the whole connection is gone (closed by either end, reset, silent past its
    /// timeout), as opposed to one stream failing. A request whose stream died this way may
    /// never have reached the peer's application.
    pub fn is_connection_gone(&self) -> bool {
        matches!(
            self,
            Self::ClosedByPeer { .. }
                | Self::ResetByPeer
                | Self::TimedOut(Wait::PeerSilent)
                | Self::LocallyClosed
                | Self::Failed(_)
        )
    }
}

/// What a [`Error::TimedOut`] waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Wait {
    /// The handshake (no answer at all: the peer's address is unreachable or filtered).
    Handshake,
    /// Stream credit from the peer, to open a stream.
    StreamCredit,
    /// Sending what the control stream had queued.
    ControlFlush,
    /// Anything from the peer: it went silent past the idle timeout.
    PeerSilent,
}

impl fmt::Display for Wait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Handshake => "tunnel handshake",
            Self::StreamCredit => "stream credit",
            Self::ControlFlush => "control flush",
            Self::PeerSilent => "no answer from the peer",
        })
    }
}

/// A TLS alert (RFC 8446 §6.2): how a TLS handshake says why it was aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Alert(pub u8);

impl Alert {
    /// The alert's name in the RFC, or "other".
    pub fn name(self) -> &'static str {
        match self.0 {
            40 => "handshake_failure",
            42 => "bad_certificate",
            43 => "unsupported_certificate",
            44 => "certificate_revoked",
            45 => "certificate_expired",
            46 => "certificate_unknown",
            48 => "unknown_ca",
            49 => "access_denied",
            50 => "decode_error",
            51 => "decrypt_error",
            70 => "protocol_version",
            80 => "internal_error",
            116 => "certificate_required",
            120 => "no_application_protocol",
            _ => "other",
        }
    }

    /// What the alert says about the certificate it refused, if it is about a certificate.
    /// rustls picks the alert from its verdict (`AlertDescription::from(CertificateError)`),
    /// so this recovers the verdict on the side that only sees the alert.
    pub fn certificate_problem(self) -> Option<CertificateProblem> {
        Some(match self.0 {
            48 => CertificateProblem::UnknownIssuer,
            45 => CertificateProblem::Expired,
            44 => CertificateProblem::Revoked,
            42 | 43 | 49 => CertificateProblem::NotValidForUse,
            51 => CertificateProblem::BadSignature,
            116 => CertificateProblem::Missing,
            46 => CertificateProblem::Other,
            _ => return None,
        })
    }
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "alert {} ({})", self.0, self.name())
    }
}

/// Why a certificate was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertificateProblem {
    /// Not signed by a CA this end trusts: a device certificate at the tunnel listener, or an
    /// edge outside the connector's pinned tunnel CA.
    UnknownIssuer,
    /// Names a trusted issuer whose key did not sign it (a look-alike CA of the same name),
    /// or the peer could not prove it holds the certificate's key.
    BadSignature,
    /// Expired, or not valid yet.
    Expired,
    /// Revoked.
    Revoked,
    /// From a trusted CA but not for this use: the wrong name or key usage (e.g. not a
    /// connector certificate), or refused by the application.
    NotValidForUse,
    /// None was presented, or not one usable leaf.
    Missing,
    /// Something else about it (rustls's `certificate_unknown`).
    Other,
}

impl fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::UnknownIssuer => "unknown issuer",
            Self::BadSignature => "signature does not verify",
            Self::Expired => "expired or not yet valid",
            Self::Revoked => "revoked",
            Self::NotValidForUse => "not valid for this use",
            Self::Missing => "missing",
            Self::Other => "unacceptable",
        })
    }
}

impl Error {
    /// This error as an `io::Error` for the `AsyncRead`/`AsyncWrite` impls; [`From<io::Error>`]
    /// gets it back whole, so typed errors survive a trip through tokio's I/O traits.
    pub(crate) fn into_io(self) -> io::Error {
        let kind = match &self {
            Self::Io(_) => None,
            Self::StreamReset(_) | Self::ResetByPeer => Some(io::ErrorKind::ConnectionReset),
            Self::StreamStopped(_) => Some(io::ErrorKind::BrokenPipe),
            Self::TimedOut(_) => Some(io::ErrorKind::TimedOut),
            Self::LocallyClosed => Some(io::ErrorKind::NotConnected),
            _ => Some(io::ErrorKind::ConnectionAborted),
        };
        match (self, kind) {
            (Self::Io(e), _) => e,
            (other, kind) => io::Error::new(kind.unwrap_or(io::ErrorKind::Other), other),
        }
    }
}

impl From<io::Error> for Error {
    /// Recovers an [`Error`] that went through [`Error::into_io`] (a reader or writer used
    /// through tokio's traits); any other I/O error is [`Error::Io`].
    fn from(e: io::Error) -> Self {
        if !e.get_ref().is_some_and(|inner| inner.is::<Self>()) {
            return Self::Io(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|inner| inner.downcast::<Self>()) {
            Some(Ok(typed)) => *typed,
            // Not reached (checked above); keep the error rather than panic.
            Some(Err(inner)) => Self::Io(io::Error::new(kind, inner)),
            None => Self::Io(kind.into()),
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> Self {
        e.into_io()
    }
}

// === From quinn (crate-private: quinn's types never leave this crate) ===

/// QUIC carries a TLS alert as the transport error code `CRYPTO_ERROR` 0x100 + alert.
fn alert_of(code: u64) -> Option<Alert> {
    (0x100..0x200)
        .contains(&code)
        .then(|| Alert(u8::try_from(code - 0x100).unwrap_or(0)))
}

pub(crate) fn code_u32(code: quinn::VarInt) -> u32 {
    // Codes we send fit in u32; a larger one from a misbehaving peer maps to a value that
    // `from_code` turns into `Unknown`.
    u32::try_from(code.into_inner()).unwrap_or(u32::MAX)
}

impl From<quinn::ConnectionError> for Error {
    fn from(e: quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        match e {
            E::ConnectionClosed(close) => match alert_of(u64::from(close.error_code)) {
                Some(alert) => Self::HandshakeRefused(alert),
                None => Self::Failed(format!("peer closed the connection: {close}")),
            },
            E::ApplicationClosed(close) => Self::ClosedByPeer {
                code: CloseCode::from_code(code_u32(close.error_code)),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            // A transport error raised here, by us: in the handshake, our TLS stack's verdict.
            E::TransportError(error) => match alert_of(u64::from(error.code)) {
                Some(alert) => match alert.certificate_problem() {
                    Some(problem) => Self::InvalidPeerCertificate(problem),
                    None => Self::HandshakeFailed(alert),
                },
                None => Self::Failed(error.to_string()),
            },
            E::Reset => Self::ResetByPeer,
            E::TimedOut => Self::TimedOut(Wait::PeerSilent),
            E::LocallyClosed => Self::LocallyClosed,
            other @ (E::VersionMismatch | E::CidsExhausted) => Self::Failed(other.to_string()),
        }
    }
}

impl From<quinn::ConnectError> for Error {
    fn from(e: quinn::ConnectError) -> Self {
        match e {
            quinn::ConnectError::EndpointStopping => Self::LocallyClosed,
            other => Self::Failed(other.to_string()),
        }
    }
}

impl From<quinn::ReadError> for Error {
    fn from(e: quinn::ReadError) -> Self {
        use quinn::ReadError as E;
        match e {
            E::Reset(code) => Self::StreamReset(StreamError::from_code(code_u32(code))),
            E::ConnectionLost(e) => e.into(),
            E::ClosedStream => Self::LocallyClosed,
            other @ (E::IllegalOrderedRead | E::ZeroRttRejected) => Self::Failed(other.to_string()),
        }
    }
}

impl From<quinn::WriteError> for Error {
    fn from(e: quinn::WriteError) -> Self {
        use quinn::WriteError as E;
        match e {
            E::Stopped(code) => Self::StreamStopped(StreamError::from_code(code_u32(code))),
            E::ConnectionLost(e) => e.into(),
            E::ClosedStream => Self::LocallyClosed,
            other @ E::ZeroRttRejected => Self::Failed(other.to_string()),
        }
    }
}

impl From<quinn::ClosedStream> for Error {
    fn from(_: quinn::ClosedStream) -> Self {
        Self::LocallyClosed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_name_the_certificate_problem() {
        assert_eq!(
            Alert(48).certificate_problem(),
            Some(CertificateProblem::UnknownIssuer)
        );
        assert_eq!(
            Alert(45).certificate_problem(),
            Some(CertificateProblem::Expired)
        );
        assert_eq!(
            Alert(44).certificate_problem(),
            Some(CertificateProblem::Revoked)
        );
        assert_eq!(Alert(120).certificate_problem(), None);
        assert_eq!(Alert(48).to_string(), "alert 48 (unknown_ca)");
    }

    #[test]
    fn quic_crypto_codes_become_alerts() {
        assert_eq!(alert_of(0x130), Some(Alert(48)));
        assert_eq!(alert_of(0x1ff), Some(Alert(255)));
        assert_eq!(alert_of(0x0a), None);
        assert_eq!(alert_of(0x200), None);
    }

    #[test]
    fn typed_errors_survive_io() {
        let io = Error::StreamReset(StreamError::UpstreamTimeout).into_io();
        assert_eq!(io.kind(), io::ErrorKind::ConnectionReset);
        assert!(matches!(
            Error::from(io),
            Error::StreamReset(StreamError::UpstreamTimeout)
        ));
        let plain = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(
            matches!(Error::from(plain), Error::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof)
        );
    }
}
