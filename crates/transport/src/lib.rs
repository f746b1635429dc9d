//! Carries the doorless protocol (`proto`) for both the edge and the connector, over QUIC or,
//! where UDP is blocked, over TLS 1.3 on TCP with HTTP/2 framing (`tcp`).
//!
//! This is the only crate that names quinn or h2 types. It builds the endpoints with mutual
//! TLS (the edge accepts only certificates from the connector CA; the connector pins the edge's
//! tunnel CA and presents its connector certificate), tunes the transports for a long-lived,
//! high-bandwidth tunnel, and offers one interface over both: a [`Connection`] (its
//! [`Transport`] says which), its streams as plain byte pipes ([`SendHalf`], [`RecvHalf`]),
//! plus the framed pieces of the protocol: the control stream ([`ControlDriver`]) and the
//! heads at the start of every data stream ([`head`]).
//!
//! What it is not: it knows nothing of HTTP, sites, routing or metrics registries. Callers
//! decide what a certificate means (via `pki::Identity`) and count what this crate reports.
//!
//! Start with [`Tuning`] (every transport knob, with the reasons for its default), then
//! [`endpoint`], then [`ControlDriver`].

pub mod congestion;
pub mod control;
pub mod endpoint;
pub mod error;
pub mod head;
pub mod liveness;
pub mod stream;
mod tcp;
pub mod tuning;

pub use control::ControlDriver;
pub use endpoint::{
    ClientEndpoint, ClientTls, Connection, Incoming, PathStats, ServerEndpoint, ServerTls,
    TcpClient, Transport,
};
pub use error::{Alert, CertificateProblem, Error, Wait};
pub use liveness::Liveness;
pub use stream::{BODY_CHUNK, RecvHalf, SPLICE_CHUNK, SendHalf, SpliceEnd, Spliced, splice};
pub use tuning::{Congestion, Tuning};
