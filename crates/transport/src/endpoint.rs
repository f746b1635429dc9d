//! The two QUIC endpoints: the edge's server and the connector's client, both with mutual TLS.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use socket2::{Domain, Protocol, Socket, Type};

use crate::stream::varint;
use crate::{CertificateProblem, Error, RecvHalf, SendHalf, Tuning, Wait};

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

/// The edge's QUIC listener for connectors.
#[derive(Debug)]
pub struct ServerEndpoint {
    endpoint: quinn::Endpoint,
}

impl ServerEndpoint {
    /// Binds the tunnel listener. Must be called inside a tokio runtime.
    pub fn bind(addr: SocketAddr, tls: ServerTls, tuning: &Tuning) -> Result<Self, Error> {
        let provider = provider();
        let mut roots = RootCertStore::empty();
        for ca in tls.connector_ca.iter().cloned() {
            roots.add(ca)?;
        }
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?;
        let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(tls.cert_chain.clone(), tls.key.clone_key())?;
        crypto.alpn_protocols = vec![proto::ALPN.to_vec()];
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
        Ok(Self { endpoint })
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
    }

    /// Waits (bounded) until closed connections have told their peers.
    pub async fn wait_idle(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.endpoint.wait_idle()).await;
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
        Ok(Connection { inner: conn })
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
        let provider = provider();
        let mut roots = RootCertStore::empty();
        for ca in tls.tunnel_ca {
            roots.add(ca)?;
        }
        let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(tls.cert_chain, tls.key)?;
        crypto.alpn_protocols = vec![proto::ALPN.to_vec()];
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
        Ok(Connection { inner: conn })
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

/// An established tunnel connection (either end).
#[derive(Debug, Clone)]
pub struct Connection {
    inner: quinn::Connection,
}

/// Path statistics of a connection, for status pages and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStats {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Congestion window in bytes.
    pub cwnd: u64,
    /// Packets declared lost so far.
    pub lost_packets: u64,
    /// Current path MTU.
    pub mtu: u16,
    /// UDP datagrams received on this connection so far. Any datagram is proof that the peer
    /// is alive, so liveness checks compare this counter over time.
    pub datagrams_received: u64,
}

impl Connection {
    /// The peer's leaf certificate (DER), verified during the handshake.
    pub fn peer_certificate(&self) -> Result<CertificateDer<'static>, Error> {
        let missing = Error::InvalidPeerCertificate(CertificateProblem::Missing);
        let Some(identity) = self.inner.peer_identity() else {
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
        self.inner.remote_address()
    }

    /// A process-unique id for this connection.
    pub fn id(&self) -> usize {
        self.inner.stable_id()
    }

    /// Opens a bidirectional stream, waiting at most `limit` for the peer's stream credit.
    pub async fn open(&self, limit: Duration) -> Result<(SendHalf, RecvHalf), Error> {
        let (send, recv) = tokio::time::timeout(limit, self.inner.open_bi())
            .await
            .map_err(|_| Error::TimedOut(Wait::StreamCredit))??;
        Ok((SendHalf::new(send, None), RecvHalf::new(recv, None)))
    }

    /// Opens a bidirectional stream like [`Connection::open`] that keeps `hold` alive until
    /// the stream is closed in both directions and what we sent was acknowledged: the moment
    /// the stream stops counting against the peer's stream credit (see [`crate::stream`]).
    /// The edge holds its stream slot this way, so its count agrees with the transport's.
    pub async fn open_holding<H>(
        &self,
        limit: Duration,
        hold: H,
    ) -> Result<(SendHalf, RecvHalf), Error>
    where
        H: Send + Sync + 'static,
    {
        let (send, recv) = tokio::time::timeout(limit, self.inner.open_bi())
            .await
            .map_err(|_| Error::TimedOut(Wait::StreamCredit))??;
        let hold: crate::stream::Hold = std::sync::Arc::new(hold);
        Ok((
            SendHalf::new(send, Some(hold.clone())),
            RecvHalf::new(recv, Some(hold)),
        ))
    }

    /// Accepts the peer's next bidirectional stream.
    pub async fn accept(&self) -> Result<(SendHalf, RecvHalf), Error> {
        let (send, recv) = self.inner.accept_bi().await?;
        Ok((SendHalf::new(send, None), RecvHalf::new(recv, None)))
    }

    /// How many bidirectional streams the peer may have open towards us at once from now on.
    /// The connector sets this to what the edge's `Welcome` says the edge will use, so the
    /// edge's slot count and the transport's stream credit describe the same streams.
    pub fn set_max_incoming_streams(&self, count: u32) {
        self.inner.set_max_concurrent_bi_streams(count.into());
    }

    /// Closes the connection at once with `code`.
    pub fn close(&self, code: proto::CloseCode, reason: &str) {
        self.inner.close(varint(code.code()), reason.as_bytes());
    }

    /// Resolves when the connection is gone, with why.
    pub async fn closed(&self) -> Error {
        Error::from(self.inner.closed().await)
    }

    /// Waits up to `limit` for the connection to close and says why; `None` if it is still
    /// open. With TLS 1.3 a peer refuses our certificate only after our side of the handshake
    /// is done, so a failure on a fresh connection asks this for the real reason.
    pub async fn close_reason(&self, limit: Duration) -> Option<Error> {
        let error = match self.inner.close_reason() {
            Some(e) => e,
            None => tokio::time::timeout(limit, self.inner.closed())
                .await
                .ok()?,
        };
        Some(error.into())
    }

    /// Path statistics.
    pub fn stats(&self) -> PathStats {
        let s = self.inner.stats();
        PathStats {
            rtt: s.path.rtt,
            cwnd: s.path.cwnd,
            lost_packets: s.path.lost_packets,
            mtu: s.path.current_mtu,
            datagrams_received: s.udp_rx.datagrams,
        }
    }
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
