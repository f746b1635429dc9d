//! The doorless wire protocol between `doorless-edge` and `doorless-connector`, sans-IO.
//!
//! This crate is bytes in, bytes out: it has no sockets, no async runtime and never reads a
//! clock (time is passed in as `now`). It defines:
//!
//! - [`Control`]: the messages of the control stream (the first bidirectional QUIC stream,
//!   opened by the connector): `Hello` → `Welcome` | `Reject`, then `Ping`/`Pong`, `Drain`,
//!   `GoAway`.
//! - [`ControlState`]: the control-stream state machine for either role.
//! - [`StreamHeader`]: the first bytes of every data stream (the edge opens one bidirectional
//!   stream per HTTP request), and [`ResponseHead`], the connector's answer.
//! - [`enroll`]: the connector enrollment exchange (its own ALPN on the edge's HTTPS port).
//! - [`StreamError`] and [`CloseCode`]: the named QUIC stream-reset and connection-close codes.
//! - [`Priority`]: a request's RFC 9218 `priority` header, which orders its response on both
//!   ends.
//!
//! What it is not: it knows nothing of QUIC, TLS, HTTP semantics beyond carrying heads, or
//! sites and policy. `transport` carries these messages over quinn; `edge` and `connector`
//! decide what goes in them.
//!
//! Start with `docs/protocol.md` (byte layouts, golden vectors, the version rule), then
//! [`codec`] for the decoder contract: every decoder has a maximum size and tells "need more
//! bytes" (`Ok(None)`) apart from "invalid" (`Err`); no input makes it panic.

#![warn(missing_docs)]

pub mod codec;
pub mod control;
pub mod enroll;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
pub mod priority;
pub mod stream;

pub use codec::{DecodeError, EncodeError, FrameBuffer};
pub use control::{
    Control, ControlError, ControlEvent, ControlState, GoAway, Hello, MAX_CONTROL_PAYLOAD, Purpose,
    Reject, RejectCode, Role, Welcome,
};
pub use error::{CloseCode, StreamError};
pub use priority::Priority;
pub use stream::{BodyKind, ClientInfo, MAX_HEAD_FRAME, ResponseHead, StreamHeader, StreamKind};

/// The ALPN token both ends offer on the tunnel's QUIC connection.
pub const ALPN: &[u8] = b"doorless/1";

/// The ALPN token of the same protocol carried over TLS 1.3 on TCP with HTTP/2 framing (the
/// fallback when UDP is blocked; `docs/protocol.md`, "TLS/TCP mapping"). Offered on the edge's
/// HTTPS port, where it selects the tunnel's TLS configuration instead of a site's.
pub const ALPN_TCP: &[u8] = b"doorless-tcp/1";

/// The protocol version carried in `Hello`, `StreamHeader` and `ResponseHead`.
///
/// Version rule: the major version is in the ALPN token (`doorless/1`); a change that an old
/// peer cannot ignore gets a new ALPN token. Within one ALPN token, `VERSION` only grows, and
/// every message carries the version it was encoded with; a decoder accepts any version up to
/// its own and rejects newer ones with [`DecodeError::UnsupportedVersion`].
pub const VERSION: u8 = 1;
