//! The tunnel endpoints: the edge's server (QUIC on its own UDP port, TLS/TCP handed over by
//! the HTTPS listener) and the connector's clients ([`ClientEndpoint`] for QUIC, [`TcpClient`]
//! for TLS/TCP), all with the same mutual TLS; and [`Connection`], either transport's
//! connection behind one interface.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use socket2::{Domain, Protocol, Socket, Type};

use crate::congestion::{LossTolerant, Reductions};
use crate::stream::varint;
use crate::{CertificateProblem, Error, RecvHalf, SendHalf, Tuning, Wait, tcp};

/// Only if the crypto provider offers no TLS 1.3 suite QUIC can use (never with aws-lc-rs).
const NO_QUIC_SUITE: &str = "no TLS 1.3 cipher suite usable for QUIC";

/// TLS material of the edge's tunnel listener.
#[derive(Debug)]
pub struct ServerTls {
    /// The edge's tunnel certificate chain (leaf first), signed by the tunnel CA.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// The connector CA: the only issuer whose certificates may open a tunnel.
    pub connector_ca: Vec<CertificateDer<'static>>,
    /// Secret for QUIC stateless resets (≥ 32 bytes), stable across restarts: a restarted
    /// edge can then tell connectors at once that their old connections are gone, instead
    /// of leaving them to time out. `None` draws a random one (no such benefit).
    pub reset_secret: Option<Vec<u8>>,
}

/// TLS material of a connector.
#[derive(Debug)]
pub struct ClientTls {
    /// The connector's certificate chain (leaf first), signed by the connector CA.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// The edge's tunnel CA, pinned: nothing else can impersonate the edge.
    pub tunnel_ca: Vec<CertificateDer<'static>>,
    /// The name the edge's tunnel certificate must carry.
    pub server_name: String,
}

/// The edge's tunnel listener for connectors: the QUIC endpoint, and the TLS/TCP acceptor the
/// HTTPS listener hands `doorless-tcp/1` connections to. Closing it closes both kinds.
#[derive(Debug)]
pub struct ServerEndpoint {
    endpoint: quinn::Endpoint,
    tcp: tcp::Server,
}

impl ServerEndpoint {
    /// Binds the tunnel listener. Must be called inside a tokio runtime.
    pub fn bind(addr: SocketAddr, tls: ServerTls, tuning: &Tuning) -> Result<Self, Error> {
        let crypto = server_crypto(&tls, proto::ALPN)?;
        let tcp = tcp::Server::new(Arc::new(server_crypto(&tls, proto::ALPN_TCP)?), tuning);
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|_| Error::InvalidConfig(NO_QUIC_SUITE))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = tuning.transport_config()?;
        // Connectors open only the control stream; the edge opens the data streams.
        transport.max_concurrent_bidi_streams(4u32.into());
        config.transport_config(Arc::new(transport));
        // Migration stays on (the default): it is what keeps a tunnel alive when the home
        // router's NAT rebinds the connector to a new source port.
        let socket = udp_socket(addr, tuning.udp_buffer)?;
        let endpoint_config = match &tls.reset_secret {
            Some(secret) if secret.len() >= 32 => {
                let mut config = quinn::EndpointConfig::new(Arc::new(aws_lc_rs::hmac::Key::new(
                    aws_lc_rs::hmac::HMAC_SHA256,
                    secret,
                )));
                // quinn only answers an unknown connection ID with a reset if the ID passes
                // its generator's check, so the generator's key must survive restarts too.
                let mut key = [0u8; 8];
                key.copy_from_slice(&secret[..8]);
                let cid_key = u64::from_le_bytes(key);
                config.cid_generator(move || {
                    Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
                });
                config
            }
            Some(_) => return Err(Error::InvalidConfig("reset secret shorter than 32 bytes")),
            None => quinn::EndpointConfig::default(),
        };
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(Self { endpoint, tcp })
    }

    /// The TLS configuration for a TLS/TCP tunnel connection: the HTTPS listener switches to it
    /// when a ClientHello offers ALPN `doorless-tcp/1` (TLS 1.3 only, a certificate from the
    /// connector CA mandatory, no resumption).
    pub fn tcp_tls_config(&self) -> Arc<rustls::ServerConfig> {
        self.tcp.tls_config()
    }

    /// Takes over a TLS/TCP connection whose handshake (with [`Self::tcp_tls_config`]) is done:
    /// the HTTP/2 handshake and the control stream, within `limit`.
    pub async fn accept_tcp(
        &self,
        tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        limit: Duration,
    ) -> Result<Connection, Error> {
        let conn = self.tcp.accept(tls, limit).await?;
        Ok(Connection {
            inner: Inner::Tcp(conn),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        Ok(self.endpoint.local_addr()?)
    }

    /// The next connection attempt, or `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<Incoming> {
        self.endpoint.accept().await.map(|inner| Incoming { inner })
    }

    /// Closes every connection with `code` and stops accepting.
    pub fn close(&self, code: proto::CloseCode, reason: &str) {
        self.endpoint.close(varint(code.code()), reason.as_bytes());
        self.tcp.close(code, reason);
    }

    /// Waits (bounded) until closed connections have told their peers.
    pub async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, async {
            tokio::join!(self.endpoint.wait_idle(), self.tcp.wait_idle(limit))
        })
        .await;
    }
}

/// A connection attempt at the edge, before its handshake.
#[derive(Debug)]
pub struct Incoming {
    inner: quinn::Incoming,
}

impl Incoming {
    /// Where the attempt comes from.
    pub fn remote_addr(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Drops the attempt without an answer (cheapest under load).
    pub fn ignore(self) {
        self.inner.ignore();
    }

    /// Runs the handshake (client certificate verified against the connector CA), bounded by
    /// `limit`.
    pub async fn accept(self, limit: Duration) -> Result<Connection, Error> {
        let connecting = self.inner.accept()?;
        let conn = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| Error::TimedOut(Wait::Handshake))??;
        Ok(Connection {
            inner: Inner::Quic(conn),
        })
    }
}

/// A connector's QUIC client endpoint: one UDP socket, kept across reconnects so the home
/// NAT sees a stable source port.
#[derive(Debug)]
pub struct ClientEndpoint {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
    server_name: String,
}

impl ClientEndpoint {
    /// Creates the endpoint on an ephemeral port of the right address family for `peer`.
    pub fn new(peer_family: SocketAddr, tls: ClientTls, tuning: &Tuning) -> Result<Self, Error> {
        let crypto = client_crypto(&tls, proto::ALPN)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .map_err(|_| Error::InvalidConfig(NO_QUIC_SUITE))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(tuning.transport_config()?));
        let bind: SocketAddr = if peer_family.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = udp_socket(bind, tuning.udp_buffer)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(Self {
            endpoint,
            config,
            server_name: tls.server_name,
        })
    }

    /// Dials the edge at `addr`; the handshake is bounded by `limit`.
    pub async fn connect(&self, addr: SocketAddr, limit: Duration) -> Result<Connection, Error> {
        let connecting =
            self.endpoint
                .connect_with(self.config.clone(), addr, &self.server_name)?;
        let conn = tokio::time::timeout(limit, connecting)
            .await
            .map_err(|_| Error::TimedOut(Wait::Handshake))??;
        Ok(Connection {
            inner: Inner::Quic(conn),
        })
    }

    /// Closes every connection of this endpoint.
    pub fn close(&self, code: proto::CloseCode, reason: &str) {
        self.endpoint.close(varint(code.code()), reason.as_bytes());
    }

    /// Waits (bounded) until closed connections have told their peers.
    pub async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.endpoint.wait_idle()).await;
    }
}

/// A connector's TLS/TCP dialer: the fallback when UDP is blocked. Dials the edge's HTTPS
/// port with ALPN `doorless-tcp/1`, our connector certificate and the pinned tunnel CA (the
/// same TLS as [`ClientEndpoint`]).
#[derive(Debug)]
pub struct TcpClient {
    inner: tcp::Client,
}

impl TcpClient {
    /// A dialer with the same TLS material as the QUIC endpoint.
    pub fn new(tls: &ClientTls, tuning: &Tuning) -> Result<Self, Error> {
        let crypto = client_crypto(tls, proto::ALPN_TCP)?;
        Ok(Self {
            inner: tcp::Client::new(Arc::new(crypto), &tls.server_name, tuning)?,
        })
    }

    /// Dials the edge at `addr` (its HTTPS port): TCP, TLS and HTTP/2 within `limit`.
    pub async fn connect(&self, addr: SocketAddr, limit: Duration) -> Result<Connection, Error> {
        Ok(Connection {
            inner: Inner::Tcp(self.inner.connect(addr, limit).await?),
        })
    }
}

/// Which transport a [`Connection`] uses; `name` is the metric label and log value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC over UDP (ALPN `doorless/1`).
    Quic,
    /// TLS 1.3 over TCP with HTTP/2 framing (ALPN `doorless-tcp/1`).
    Tcp,
}

impl Transport {
    /// Both, for pre-creating metric series.
    pub const ALL: [Self; 2] = [Self::Quic, Self::Tcp];

    /// `quic` or `tcp`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An established tunnel connection (either end, either transport). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Connection {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Quic(quinn::Connection),
    Tcp(tcp::Connection),
}

/// Path statistics of a connection, for status pages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStats {
    /// Smoothed round-trip time (over TCP: of the HTTP/2 keep-alive PING; zero until the
    /// first PONG).
    pub rtt: Duration,
    /// Congestion window in bytes (QUIC only; 0 over TCP, where the kernel keeps it).
    pub cwnd: u64,
    /// Packets declared lost so far (QUIC only; 0 over TCP).
    pub lost_packets: u64,
    /// Current path MTU (QUIC only; 0 over TCP).
    pub mtu: u16,
    /// What was received on this connection so far: UDP datagrams over QUIC, socket reads
    /// over TCP (data, acks-by-PONG, pings). Anything received is proof that the peer is
    /// alive, so liveness checks compare this counter over time.
    pub received: u64,
}

impl Connection {
    /// Which transport carries this connection.
    pub fn transport(&self) -> Transport {
        match &self.inner {
            Inner::Quic(_) => Transport::Quic,
            Inner::Tcp(_) => Transport::Tcp,
        }
    }

    /// The peer's leaf certificate (DER), verified during the handshake.
    pub fn peer_certificate(&self) -> Result<CertificateDer<'static>, Error> {
        let missing = Error::InvalidPeerCertificate(CertificateProblem::Missing);
        let conn = match &self.inner {
            Inner::Quic(conn) => conn,
            Inner::Tcp(conn) => return Ok(conn.peer_certificate()),
        };
        let Some(identity) = conn.peer_identity() else {
            return Err(missing);
        };
        let identity: Box<dyn Any> = identity;
        match identity.downcast::<Vec<CertificateDer<'static>>>() {
            Ok(chain) => chain.into_iter().next().ok_or(missing),
            Err(_) => Err(missing),
        }
    }

    /// The peer's current address (changes when its NAT rebinds).
    pub fn remote_addr(&self) -> SocketAddr {
        match &self.inner {
            Inner::Quic(conn) => conn.remote_address(),
            Inner::Tcp(conn) => conn.remote_addr(),
        }
    }

    /// A process-unique id for this connection.
    pub fn id(&self) -> usize {
        match &self.inner {
            Inner::Quic(conn) => conn.stable_id(),
            Inner::Tcp(conn) => conn.id(),
        }
    }

    /// Opens a bidirectional data stream, waiting at most `limit` for the peer's stream
    /// credit. Over TCP only the edge opens data streams.
    pub async fn open(&self, limit: Duration) -> Result<(SendHalf, RecvHalf), Error> {
        self.open_with(limit, None).await
    }

    /// Opens a bidirectional stream like [`Connection::open`] that keeps `hold` alive until
    /// the stream is closed in both directions and what we sent was acknowledged (over TCP:
    /// finished and handed to the connection, which delivers in order): the moment the stream
    /// stops counting against the peer's stream credit (see [`crate::stream`]). The edge
    /// holds its stream slot this way, so its count agrees with the transport's.
    pub async fn open_holding<H>(
        &self,
        limit: Duration,
        hold: H,
    ) -> Result<(SendHalf, RecvHalf), Error>
    where
        H: Send + Sync + 'static,
    {
        let hold: crate::stream::Hold = std::sync::Arc::new(hold);
        self.open_with(limit, Some(hold)).await
    }

    async fn open_with(
        &self,
        limit: Duration,
        hold: Option<crate::stream::Hold>,
    ) -> Result<(SendHalf, RecvHalf), Error> {
        match &self.inner {
            Inner::Quic(conn) => {
                let (send, recv) = tokio::time::timeout(limit, conn.open_bi())
                    .await
                    .map_err(|_| Error::TimedOut(Wait::StreamCredit))??;
                Ok((
                    SendHalf::quic(send, hold.clone()),
                    RecvHalf::quic(recv, hold),
                ))
            }
            Inner::Tcp(conn) => {
                let (send, recv) = conn.open(limit).await?;
                Ok((SendHalf::tcp(send, hold.clone()), RecvHalf::tcp(recv, hold)))
            }
        }
    }

    /// Accepts the peer's next bidirectional data stream.
    pub async fn accept(&self) -> Result<(SendHalf, RecvHalf), Error> {
        match &self.inner {
            Inner::Quic(conn) => {
                let (send, recv) = conn.accept_bi().await?;
                Ok((SendHalf::quic(send, None), RecvHalf::quic(recv, None)))
            }
            Inner::Tcp(conn) => {
                let (send, recv) = conn.accept().await?;
                Ok((SendHalf::tcp(send, None), RecvHalf::tcp(recv, None)))
            }
        }
    }

    /// How many bidirectional streams the peer may have open towards us at once from now on.
    /// The connector sets this to what the edge's `Welcome` says the edge will use, so the
    /// edge's slot count and the transport's stream credit describe the same streams. Over
    /// TCP the HTTP/2 limit is fixed at the handshake (`Tuning::max_incoming_streams`), and the edge's
    /// own slot count is what bounds its streams.
    pub fn set_max_incoming_streams(&self, count: u32) {
        if let Inner::Quic(conn) = &self.inner {
            conn.set_max_concurrent_bi_streams(count.into());
        }
    }

    /// The connector's side of the control stream, within `limit`. Over QUIC the connector
    /// opens it (the first stream); over TCP the edge opens it and this takes it.
    pub async fn open_control(&self, limit: Duration) -> Result<(SendHalf, RecvHalf), Error> {
        match &self.inner {
            Inner::Quic(_) => self.open(limit).await,
            Inner::Tcp(conn) => {
                let (send, recv) = conn.control(limit).await?;
                Ok((SendHalf::tcp(send, None), RecvHalf::tcp(recv, None)))
            }
        }
    }

    /// The edge's side of the control stream: over QUIC the connector's first stream, over TCP
    /// the one the edge opened at accept. Either way the connector speaks first (`Hello`).
    pub async fn accept_control(&self) -> Result<(SendHalf, RecvHalf), Error> {
        match &self.inner {
            Inner::Quic(_) => self.accept().await,
            Inner::Tcp(conn) => {
                let (send, recv) = conn.control(CONTROL_READY).await?;
                Ok((SendHalf::tcp(send, None), RecvHalf::tcp(recv, None)))
            }
        }
    }

    /// Closes the connection at once with `code`.
    pub fn close(&self, code: proto::CloseCode, reason: &str) {
        match &self.inner {
            Inner::Quic(conn) => conn.close(varint(code.code()), reason.as_bytes()),
            Inner::Tcp(conn) => conn.close(code, reason),
        }
    }

    /// Resolves when the connection is gone, with why.
    pub async fn closed(&self) -> Error {
        match &self.inner {
            Inner::Quic(conn) => Error::from(conn.closed().await),
            Inner::Tcp(conn) => conn.closed().await,
        }
    }

    /// Waits up to `limit` for the connection to close and says why; `None` if it is still
    /// open. With TLS 1.3 a peer refuses our certificate only after our side of the handshake
    /// is done, so a failure on a fresh connection asks this for the real reason.
    pub async fn close_reason(&self, limit: Duration) -> Option<Error> {
        match &self.inner {
            Inner::Quic(conn) => {
                let error = match conn.close_reason() {
                    Some(e) => e,
                    None => tokio::time::timeout(limit, conn.closed()).await.ok()?,
                };
                Some(error.into())
            }
            Inner::Tcp(conn) => match conn.close_reason_now() {
                Some(e) => Some(e),
                None => tokio::time::timeout(limit, conn.closed()).await.ok(),
            },
        }
    }

    /// What the QUIC congestion controller has done to its window so far, when it is
    /// `loss_tolerant` (`None` over TCP, where the kernel keeps the window, or with another
    /// controller). Copies the controller's state: for a periodic sample, not a hot path.
    pub fn reductions(&self) -> Option<Reductions> {
        match &self.inner {
            Inner::Quic(conn) => conn
                .congestion_state()
                .into_any()
                .downcast::<LossTolerant>()
                .ok()
                .map(|controller| controller.reductions()),
            Inner::Tcp(_) => None,
        }
    }

    /// Path statistics.
    pub fn stats(&self) -> PathStats {
        match &self.inner {
            Inner::Quic(conn) => {
                let s = conn.stats();
                PathStats {
                    rtt: s.path.rtt,
                    cwnd: s.path.cwnd,
                    lost_packets: s.path.lost_packets,
                    mtu: s.path.current_mtu,
                    received: s.udp_rx.datagrams,
                }
            }
            Inner::Tcp(conn) => PathStats {
                rtt: conn.rtt(),
                cwnd: 0,
                lost_packets: 0,
                mtu: 0,
                received: conn.reads(),
            },
        }
    }
}

/// The edge opens the TCP control stream before it hands the connection out: it is there.
const CONTROL_READY: Duration = Duration::from_secs(1);

/// The edge's TLS for the tunnel (both transports, ALPN `alpn`): TLS 1.3, a connector
/// certificate required, no resumption.
///
/// No session tickets and no session cache: a resumed session skips the certificate check
/// (rustls trusts what it verified when the ticket was made), so a connector whose certificate
/// has since expired could keep reconnecting on its ticket. Every tunnel handshake is a full
/// one; connectors reconnect rarely, so it costs nothing measurable. (Revocation is checked
/// after the handshake on every connection, resumed or not; expiry only here.)
fn server_crypto(tls: &ServerTls, alpn: &[u8]) -> Result<rustls::ServerConfig, Error> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    for ca in tls.connector_ca.iter().cloned() {
        roots.add(ca)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls.cert_chain.clone(), tls.key.clone_key())?;
    crypto.alpn_protocols = vec![alpn.to_vec()];
    crypto.send_tls13_tickets = 0;
    crypto.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(crypto)
}

/// The connector's tunnel TLS (ALPN `alpn`): our certificate, the pinned tunnel CA, TLS 1.3,
/// and no resumption (it would offer tickets the edge no longer issues; and 0-RTT data is
/// replayable).
fn client_crypto(tls: &ClientTls, alpn: &[u8]) -> Result<rustls::ClientConfig, Error> {
    let mut roots = RootCertStore::empty();
    for ca in tls.tunnel_ca.iter().cloned() {
        roots.add(ca)?;
    }
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(tls.cert_chain.clone(), tls.key.clone_key())?;
    crypto.alpn_protocols = vec![alpn.to_vec()];
    crypto.resumption = rustls::client::Resumption::disabled();
    Ok(crypto)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A UDP socket with enlarged buffers. Linux caps the request at `net.core.rmem_max` /
/// `wmem_max`; what was granted is logged so operators can raise the sysctl.
fn udp_socket(addr: SocketAddr, buffer: usize) -> Result<std::net::UdpSocket, Error> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped peers too when bound to [::].
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    let granted_recv = socket.recv_buffer_size().unwrap_or(0);
    let granted_send = socket.send_buffer_size().unwrap_or(0);
    if granted_recv < buffer || granted_send < buffer {
        tracing::info!(
            requested = buffer,
            granted_recv,
            granted_send,
            "UDP socket buffers capped by the kernel; raise net.core.rmem_max / wmem_max for full speed"
        );
    }
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use pki::{Ca, Identity, KeyType, Validity};
    use rustls::{ClientConnection, HandshakeKind, ServerConnection};

    /// Moves TLS bytes between two in-memory connections until neither has more to say.
    fn pump(client: &mut ClientConnection, server: &mut ServerConnection) {
        for _ in 0..16 {
            let mut progressed = false;
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                progressed = true;
                server.read_tls(&mut buf.as_slice()).unwrap();
                server.process_new_packets().unwrap();
            }
            let mut buf = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                progressed = true;
                client.read_tls(&mut buf.as_slice()).unwrap();
                client.process_new_packets().unwrap();
            }
            if !progressed {
                return;
            }
        }
    }

    /// The tunnel's TLS never resumes: a connector reconnecting with the same client config
    /// gets a full handshake (and so a fresh check of its certificate's validity), not one
    /// resumed on a ticket from its previous connection.
    #[test]
    fn tunnel_handshakes_are_never_resumed() {
        let tunnel_ca = Ca::generate("test tunnel CA", Validity::days(30)).unwrap();
        let connector_ca = Ca::generate("test connector CA", Validity::days(30)).unwrap();
        let server_cert = tunnel_ca
            .issue_server(&[pki::TUNNEL_SERVER_NAME.to_owned()], Validity::days(30))
            .unwrap();
        let identity = Identity::connector("home", "c1").unwrap();
        let client_cert = connector_ca
            .issue_client(&identity, Validity::days(30), KeyType::EcdsaP256)
            .unwrap();
        let server = Arc::new(
            server_crypto(
                &ServerTls {
                    cert_chain: pki::parse_certs(&server_cert.cert_pem).unwrap(),
                    key: pki::parse_key(&server_cert.key_pem).unwrap(),
                    connector_ca: pki::parse_certs(connector_ca.cert_pem()).unwrap(),
                    reset_secret: None,
                },
                proto::ALPN,
            )
            .unwrap(),
        );
        let client = Arc::new(
            client_crypto(
                &ClientTls {
                    cert_chain: pki::parse_certs(&client_cert.cert_pem).unwrap(),
                    key: pki::parse_key(&client_cert.key_pem).unwrap(),
                    tunnel_ca: pki::parse_certs(tunnel_ca.cert_pem()).unwrap(),
                    server_name: pki::TUNNEL_SERVER_NAME.to_owned(),
                },
                proto::ALPN,
            )
            .unwrap(),
        );
        let name = rustls_pki_types::ServerName::try_from(pki::TUNNEL_SERVER_NAME).unwrap();
        for round in 0..3 {
            let mut c = ClientConnection::new(client.clone(), name.to_owned()).unwrap();
            let mut s = ServerConnection::new(server.clone()).unwrap();
            pump(&mut c, &mut s);
            assert!(!c.is_handshaking() && !s.is_handshaking(), "round {round}");
            assert_eq!(
                c.handshake_kind(),
                Some(HandshakeKind::Full),
                "round {round}"
            );
            assert_eq!(
                s.handshake_kind(),
                Some(HandshakeKind::Full),
                "round {round}"
            );
            assert!(s.peer_certificates().is_some_and(|c| !c.is_empty()));
        }
    }
}
