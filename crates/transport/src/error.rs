//! The transport's one error type.

use std::io;

/// Everything that can go wrong while setting up or using the tunnel transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Building the TLS configuration failed (bad certificate, key or CA).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The certificate verifier could not be built (e.g. an empty CA list).
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    /// Socket setup or I/O failed.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// Dialing the peer failed before the QUIC handshake started.
    #[error("connect: {0}")]
    Connect(String),
    /// The QUIC connection failed or was closed.
    #[error("connection: {0}")]
    Connection(String),
    /// The peer closed the control stream or violated the protocol on it.
    #[error("control stream: {0}")]
    Control(String),
    /// A frame could not be decoded.
    #[error("protocol: {0}")]
    Decode(#[from] proto::DecodeError),
    /// A frame could not be encoded (a field over its limit).
    #[error("protocol: {0}")]
    Encode(#[from] proto::EncodeError),
    /// The control state machine reported a violation or a timeout.
    #[error("control: {0}")]
    ControlState(#[from] proto::ControlError),
    /// A wait ran out.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The peer presented no certificate, or not exactly one usable leaf.
    #[error("peer certificate missing")]
    NoPeerCertificate,
}

impl From<quinn::ConnectionError> for Error {
    fn from(e: quinn::ConnectionError) -> Self {
        Self::Connection(e.to_string())
    }
}

impl From<quinn::ConnectError> for Error {
    fn from(e: quinn::ConnectError) -> Self {
        Self::Connect(e.to_string())
    }
}
