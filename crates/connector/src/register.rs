//! Registering with an edge: dial (either transport), take the control stream, say `Hello`,
//! wait for `Welcome`.
//!
//! The one routine both callers use: the tunnel slots ([`crate::dial`], announcing
//! [`Purpose::Serve`]) and the self-check ([`crate::check`], announcing [`Purpose::Check`]).
//! Also the one place that turns the enrollment token into client TLS and resolves an edge.
//!
//! What it is not: it serves no streams and keeps nothing up. It returns the registered
//! connection and its control stream; the caller serves it (`dial`) or leaves at once
//! (`check`). On every failure after the handshake it has already closed the connection.

use std::net::SocketAddr;
use std::time::Duration;

use proto::{CloseCode, ControlEvent, ControlState, Hello, Reject, Welcome};
use tokio::time::Instant;
use transport::{ClientTls, Connection, ControlDriver};

/// How long to wait for a connection that failed to say why it closed.
const CLOSE_REASON_WAIT: Duration = Duration::from_secs(2);

/// A connection the edge welcomed.
#[derive(Debug)]
pub(crate) struct Registered {
    /// The tunnel connection.
    pub(crate) conn: Connection,
    /// Its control stream, established.
    pub(crate) control: ControlDriver,
    /// What the edge answered.
    pub(crate) welcome: Welcome,
}

/// Why registering failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegisterError {
    /// Dialing failed, or the connection failed before `Welcome`; where the connection
    /// closed, this is its close reason (a refused certificate shows up only there).
    #[error("registration failed: {0}")]
    Transport(transport::Error),
    /// The edge answered `Reject`.
    #[error("edge rejected this connector: {} ({:?})", .0.text, .0.code)]
    Rejected(Reject),
    /// The handshake worked, but no `Welcome` came within the limit.
    #[error("no welcome from the edge within {0:?}")]
    NoWelcome(Duration),
    /// The edge sent something other than `Welcome` or `Reject` first.
    #[error("unexpected control message before welcome: {0:?}")]
    Unexpected(Box<ControlEvent>),
}

/// Dials with `connect` (QUIC or TLS/TCP, bounded by its own limit) and registers with
/// `hello`. `limit` bounds each step after that (the control stream, waiting for `Welcome`);
/// `idle_timeout` is the control stream's silence limit from then on.
pub(crate) async fn register(
    connect: impl Future<Output = Result<Connection, transport::Error>>,
    hello: Hello,
    idle_timeout: Duration,
    limit: Duration,
) -> Result<Registered, RegisterError> {
    let conn = connect.await.map_err(RegisterError::Transport)?;
    let (send, recv) = match conn.open_control(limit).await {
        Ok(stream) => stream,
        Err(e) => return Err(lost(&conn, e).await),
    };
    let state = ControlState::connector(hello, now(), idle_timeout);
    let mut control = ControlDriver::new(send, recv, state);
    match tokio::time::timeout(limit, control.next_event()).await {
        Ok(Ok(ControlEvent::Welcomed(welcome))) => Ok(Registered {
            conn,
            control,
            welcome,
        }),
        Ok(Ok(ControlEvent::Rejected(reject))) => {
            conn.close(CloseCode::Normal, "rejected");
            Err(RegisterError::Rejected(reject))
        }
        Ok(Ok(other)) => {
            conn.close(CloseCode::ProtocolError, "expected welcome");
            Err(RegisterError::Unexpected(Box::new(other)))
        }
        Ok(Err(e)) => Err(lost(&conn, e).await),
        Err(_) => {
            conn.close(CloseCode::Timeout, "no welcome");
            Err(RegisterError::NoWelcome(limit))
        }
    }
}

/// `error` broke registration on `conn`. With TLS 1.3 the edge refuses our certificate only
/// after our side of the handshake is done, and the control stream then only says "lost": the
/// connection's close reason, if it closed, is the real answer.
async fn lost(conn: &Connection, error: transport::Error) -> RegisterError {
    let why = conn.close_reason(CLOSE_REASON_WAIT).await;
    conn.close(CloseCode::ProtocolError, "registration failed");
    RegisterError::Transport(why.unwrap_or(error))
}

/// The client TLS material in `token`: our certificate and key, and the edge's pinned CA.
pub(crate) fn client_tls(token: &pki::EnrollmentToken) -> Result<ClientTls, pki::Error> {
    Ok(ClientTls {
        cert_chain: pki::parse_certs(&token.cert_pem)?,
        key: pki::parse_key(&token.key_pem)?,
        tunnel_ca: pki::parse_certs(&token.tunnel_ca_pem)?,
        server_name: token.server_name.clone(),
    })
}

/// Why an edge's address could not be resolved.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    /// The resolver did not answer in time.
    #[error("no answer within {} s", .0.as_secs_f32())]
    TimedOut(Duration),
    /// The resolver failed.
    #[error("{0}")]
    Lookup(#[from] std::io::Error),
    /// The name has no address.
    #[error("no address")]
    NoAddress,
}

/// The first address of `edge` (HOST:PORT), waiting at most `limit`.
pub(crate) async fn resolve(edge: &str, limit: Duration) -> Result<SocketAddr, ResolveError> {
    let mut addrs = tokio::time::timeout(limit, tokio::net::lookup_host(edge))
        .await
        .map_err(|_| ResolveError::TimedOut(limit))??;
    addrs.next().ok_or(ResolveError::NoAddress)
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}
