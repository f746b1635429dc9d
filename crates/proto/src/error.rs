//! Named QUIC application error codes: [`StreamError`] for stream resets and [`CloseCode`] for
//! connection closes. Both are `u32` values (QUIC carries them as varints; `transport`
//! converts).
//!
//! `name()` gives a stable snake_case label for logs and metrics.

use std::fmt;

/// Application error codes for QUIC stream resets (`RESET_STREAM` / `STOP_SENDING`).
///
/// The connector resets a data stream with the code that says why it could not forward the
/// request; the edge maps it to an HTTP status for the client (see `docs/protocol.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamError {
    /// 0x0: the sender no longer wants the stream (client went away, shutdown).
    Cancelled,
    /// 0x1: the connector could not connect to its upstream.
    UpstreamConnect,
    /// 0x2: the upstream did not answer in time.
    UpstreamTimeout,
    /// 0x3: the upstream answered with something that is not valid HTTP.
    UpstreamProtocol,
    /// 0x4: the stream header or request could not be used (malformed, too large).
    BadRequest,
    /// 0x5: the connector refused the stream (draining, over capacity).
    Refused,
    /// 0x6: a bug or resource failure in the sender.
    Internal,
    /// 0x7: refused, not processed: the connector did nothing with the request (it never
    /// read past the head, nothing reached the upstream), like HTTP/3's `H3_REQUEST_REJECTED`.
    /// The edge may send it again on another connection.
    NotProcessed,
    /// Any other code, kept as received.
    Unknown(u32),
}

/// Connection close codes (QUIC `CONNECTION_CLOSE` application error codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// 0: nothing went wrong.
    Normal,
    /// 1: graceful stop (after `Drain`/`GoAway`).
    Shutdown,
    /// 2: the peer violated the protocol (undecodable frame, unexpected message).
    ProtocolError,
    /// 3: the edge rejected the connector (after `Reject`).
    Rejected,
    /// 4: the peer was silent for longer than the timeout.
    Timeout,
    /// 5: the peer's certificate was revoked while connected.
    Revoked,
    /// Any other code, kept as received.
    Unknown(u32),
}

// === impl StreamError ===

impl StreamError {
    /// The code on the wire.
    pub fn code(self) -> u32 {
        match self {
            Self::Cancelled => 0x0,
            Self::UpstreamConnect => 0x1,
            Self::UpstreamTimeout => 0x2,
            Self::UpstreamProtocol => 0x3,
            Self::BadRequest => 0x4,
            Self::Refused => 0x5,
            Self::Internal => 0x6,
            Self::NotProcessed => 0x7,
            Self::Unknown(code) => code,
        }
    }

    /// The error for a code on the wire; unknown codes become `Unknown`.
    pub fn from_code(code: u32) -> Self {
        match code {
            0x0 => Self::Cancelled,
            0x1 => Self::UpstreamConnect,
            0x2 => Self::UpstreamTimeout,
            0x3 => Self::UpstreamProtocol,
            0x4 => Self::BadRequest,
            0x5 => Self::Refused,
            0x6 => Self::Internal,
            0x7 => Self::NotProcessed,
            other => Self::Unknown(other),
        }
    }

    /// A stable snake_case name, used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cancelled => "cancelled",
            Self::UpstreamConnect => "upstream_connect",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamProtocol => "upstream_protocol",
            Self::BadRequest => "bad_request",
            Self::Refused => "refused",
            Self::Internal => "internal",
            Self::NotProcessed => "not_processed",
            Self::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#x})", self.name(), self.code())
    }
}

impl std::error::Error for StreamError {}

// === impl CloseCode ===

impl CloseCode {
    /// The code on the wire.
    pub fn code(self) -> u32 {
        match self {
            Self::Normal => 0,
            Self::Shutdown => 1,
            Self::ProtocolError => 2,
            Self::Rejected => 3,
            Self::Timeout => 4,
            Self::Revoked => 5,
            Self::Unknown(code) => code,
        }
    }

    /// The close code for a value on the wire; unknown values become `Unknown`.
    pub fn from_code(code: u32) -> Self {
        match code {
            0 => Self::Normal,
            1 => Self::Shutdown,
            2 => Self::ProtocolError,
            3 => Self::Rejected,
            4 => Self::Timeout,
            5 => Self::Revoked,
            other => Self::Unknown(other),
        }
    }

    /// A stable snake_case name, used as a metric label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::Shutdown => "shutdown",
            Self::ProtocolError => "protocol_error",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::Revoked => "revoked",
            Self::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_error_codes_round_trip() {
        let names = [
            "cancelled",
            "upstream_connect",
            "upstream_timeout",
            "upstream_protocol",
            "bad_request",
            "refused",
            "internal",
            "not_processed",
        ];
        for (code, name) in (0..).zip(names) {
            let err = StreamError::from_code(code);
            assert_eq!(err.code(), code);
            assert_eq!(err.name(), name);
            assert!(!matches!(err, StreamError::Unknown(_)));
        }
        assert_eq!(StreamError::from_code(8), StreamError::Unknown(8));
        assert_eq!(StreamError::Unknown(8).name(), "unknown");
        assert_eq!(
            StreamError::UpstreamTimeout.to_string(),
            "upstream_timeout (0x2)"
        );
    }

    #[test]
    fn close_codes_round_trip() {
        let names = [
            "normal",
            "shutdown",
            "protocol_error",
            "rejected",
            "timeout",
            "revoked",
        ];
        for (code, name) in (0..).zip(names) {
            let close = CloseCode::from_code(code);
            assert_eq!(close.code(), code);
            assert_eq!(close.name(), name);
            assert!(!matches!(close, CloseCode::Unknown(_)));
        }
        assert_eq!(CloseCode::from_code(u32::MAX), CloseCode::Unknown(u32::MAX));
        assert_eq!(CloseCode::Revoked.to_string(), "revoked (5)");
    }
}
