//! Every way a request can fail, who is to blame, and the one mapping to a status code.

use http::StatusCode;

use crate::policy::DenyReason;

/// `Retry-After` of a 503: a connector restarts and registers again in about a second.
const RETRY_AFTER_SECS: u32 = 1;

/// Who caused a failure; decides the status code and the log/metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blame {
    /// The client sent something wrong or went away.
    Client,
    /// No usable connector, or the connector misbehaved.
    Connector,
    /// Home Assistant (behind the connector) failed or was too slow.
    Upstream,
}

impl Blame {
    /// Label value.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Connector => "connector",
            Self::Upstream => "upstream",
        }
    }
}

/// A request that could not be proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProxyError {
    /// No Host / :authority, or an unparsable one.
    MissingHost,
    /// Two Host headers, or a Host that disagrees with :authority.
    HostConflict,
    /// The Host selects another site than the connection's SNI (or none).
    MisdirectedRequest,
    /// No certificate, no valid session, not a public path.
    NoCredentials,
    /// The client address is outside the site's allowed networks.
    AddressDenied,
    /// The site has no registered, non-draining connector.
    NoConnector,
    /// No tunnel stream could be opened in time (all connectors at their stream limit or gone).
    TunnelUnavailable,
    /// The tunnel stream failed while sending the request or reading the response head.
    TunnelBroken,
    /// The connector's response head was malformed or too large.
    BadResponseHead,
    /// The connector could not reach Home Assistant.
    UpstreamConnect,
    /// Home Assistant did not answer within the connector's timeout.
    UpstreamTimeout,
    /// Home Assistant answered with something unusable.
    UpstreamProtocol,
    /// The connector refused the stream without processing it (draining, shutting down,
    /// overloaded), and it could not be sent elsewhere.
    ConnectorRefused,
    /// No response head within `limits.upstream_timeout`.
    ResponseTimeout,
    /// The tunnel connection died before the response head (its connector went silent and
    /// was declared dead, or the connection closed), and the request could not be sent
    /// elsewhere (not idempotent, a body already sent, or no other tunnel).
    ConnectorUnresponsive,
    /// The request head could not be encoded for the tunnel (too large).
    RequestTooLarge,
    /// An upgrade to anything but a WebSocket (`h2c`, `TLS/1.0`, several tokens), a plain
    /// `CONNECT`, or an extended CONNECT for another `:protocol`: never forwarded, never
    /// spliced.
    UpgradeRefused,
    /// `Upgrade: websocket`, but not a valid RFC 6455 opening handshake (method, version,
    /// `Connection`, `Sec-WebSocket-Key`/`-Version`, a body); or an extended CONNECT for
    /// `websocket` (RFC 8441) without a valid `Sec-WebSocket-Version`, or with a body.
    BadWebSocketHandshake,
    /// One WebSocket more than `limits.h2_max_websockets` on one HTTP/2 connection.
    TooManyWebSockets,
    /// The upstream answered a WebSocket handshake with a 101 that does not agree with it
    /// (wrong `Upgrade`, no `Connection: upgrade`, wrong `Sec-WebSocket-Accept`): not spliced.
    BadUpgradeResponse,
    /// The client's request body was malformed (bad chunked coding, more or fewer bytes than
    /// its length) or cut off before its end.
    BadRequestBody,
}

impl ProxyError {
    /// Every variant, for pre-creating metric series.
    pub(crate) const ALL: [Self; 21] = [
        Self::MissingHost,
        Self::HostConflict,
        Self::MisdirectedRequest,
        Self::NoCredentials,
        Self::AddressDenied,
        Self::NoConnector,
        Self::TunnelUnavailable,
        Self::TunnelBroken,
        Self::BadResponseHead,
        Self::UpstreamConnect,
        Self::UpstreamTimeout,
        Self::UpstreamProtocol,
        Self::ConnectorRefused,
        Self::ResponseTimeout,
        Self::ConnectorUnresponsive,
        Self::RequestTooLarge,
        Self::UpgradeRefused,
        Self::BadWebSocketHandshake,
        Self::TooManyWebSockets,
        Self::BadUpgradeResponse,
        Self::BadRequestBody,
    ];
    /// The status code the client receives.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::MissingHost
            | Self::HostConflict
            | Self::UpgradeRefused
            | Self::BadWebSocketHandshake
            | Self::BadRequestBody => StatusCode::BAD_REQUEST,
            Self::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            Self::NoCredentials | Self::AddressDenied => StatusCode::FORBIDDEN,
            Self::TooManyWebSockets => StatusCode::TOO_MANY_REQUESTS,
            Self::RequestTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::NoConnector
            | Self::TunnelUnavailable
            | Self::ConnectorRefused
            | Self::ConnectorUnresponsive => StatusCode::SERVICE_UNAVAILABLE,
            Self::TunnelBroken
            | Self::BadResponseHead
            | Self::UpstreamConnect
            | Self::UpstreamProtocol
            | Self::BadUpgradeResponse => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout | Self::ResponseTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// Seconds for `Retry-After`: set on every 503, all of which mean "no connector could
    /// take this request right now" (one is restarting, or none is connected), which a
    /// client may try again shortly.
    pub(crate) fn retry_after(self) -> Option<u32> {
        (self.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_SECS)
    }

    /// Who is to blame.
    pub(crate) fn blame(self) -> Blame {
        match self {
            Self::MissingHost
            | Self::HostConflict
            | Self::MisdirectedRequest
            | Self::RequestTooLarge
            | Self::NoCredentials
            | Self::AddressDenied
            | Self::UpgradeRefused
            | Self::BadWebSocketHandshake
            | Self::TooManyWebSockets
            | Self::BadRequestBody => Blame::Client,
            Self::NoConnector
            | Self::TunnelUnavailable
            | Self::TunnelBroken
            | Self::BadResponseHead
            | Self::ConnectorRefused
            | Self::ConnectorUnresponsive
            | Self::ResponseTimeout => Blame::Connector,
            Self::UpstreamConnect
            | Self::UpstreamTimeout
            | Self::UpstreamProtocol
            | Self::BadUpgradeResponse => Blame::Upstream,
        }
    }

    /// Reason label for logs and metrics (bounded set).
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::MissingHost => "missing_host",
            Self::HostConflict => "host_conflict",
            Self::MisdirectedRequest => "misdirected",
            Self::NoCredentials => "no_credentials",
            Self::AddressDenied => "address_denied",
            Self::RequestTooLarge => "request_too_large",
            Self::NoConnector => "no_connector",
            Self::TunnelUnavailable => "tunnel_unavailable",
            Self::TunnelBroken => "tunnel_broken",
            Self::BadResponseHead => "bad_response_head",
            Self::UpstreamConnect => "upstream_connect",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamProtocol => "upstream_protocol",
            Self::ConnectorRefused => "connector_refused",
            Self::ResponseTimeout => "response_timeout",
            Self::ConnectorUnresponsive => "connector_unresponsive",
            Self::UpgradeRefused => "upgrade_refused",
            Self::BadWebSocketHandshake => "bad_websocket_handshake",
            Self::TooManyWebSockets => "too_many_websockets",
            Self::BadUpgradeResponse => "bad_upgrade_response",
            Self::BadRequestBody => "bad_request_body",
        }
    }

    /// Maps a refusal of the access policy to the failure the client sees.
    pub(crate) fn from_denial(reason: DenyReason) -> Self {
        match reason {
            DenyReason::MissingHost => Self::MissingHost,
            DenyReason::HostMismatch => Self::MisdirectedRequest,
            DenyReason::Address => Self::AddressDenied,
            DenyReason::NoCredentials => Self::NoCredentials,
        }
    }

    /// Maps a stream reset from the connector to the failure it reports.
    pub(crate) fn from_stream_error(e: proto::StreamError) -> Self {
        use proto::StreamError as S;
        match e {
            S::UpstreamConnect => Self::UpstreamConnect,
            S::UpstreamTimeout => Self::UpstreamTimeout,
            S::UpstreamProtocol => Self::UpstreamProtocol,
            S::Refused | S::NotProcessed => Self::ConnectorRefused,
            S::Cancelled | S::BadRequest | S::Internal | S::Unknown(_) => Self::TunnelBroken,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blame_and_status_agree() {
        for e in ProxyError::ALL {
            let s = e.status().as_u16();
            match e.blame() {
                Blame::Client => assert!((400..500).contains(&s), "{e:?}"),
                _ => assert!((500..600).contains(&s), "{e:?}"),
            }
        }
        assert_eq!(
            ProxyError::NoConnector.status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            ProxyError::UpstreamConnect.status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::UpstreamTimeout.status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(ProxyError::MisdirectedRequest.status().as_u16(), 421);
        for e in ProxyError::ALL {
            assert_eq!(
                e.retry_after().is_some(),
                e.status() == StatusCode::SERVICE_UNAVAILABLE,
                "{e:?}"
            );
        }
        assert_eq!(
            ProxyError::from_stream_error(proto::StreamError::NotProcessed).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
