//! `doorless-connector enroll CODE`: join a site with a one-time code.
//!
//! The key is made here and never leaves this machine; the edge gets a CSR and a MAC proving we
//! know the code (the code itself is never sent), and answers with our certificate, the tunnel
//! CA to pin and the tunnel addresses, MAC'd with the same code. An answer whose MAC does not
//! verify is refused and nothing is stored: whoever sent it does not know the code, so he is
//! not the edge that minted it, whatever TLS certificate he showed. That is why this TLS client
//! accepts any server certificate: the MAC, not the certificate, authenticates the edge
//! (`docs/security.md`, "Enrollment").
//!
//! Blocking on purpose: it runs once, before the runtime starts (`run` with an
//! `enrollment_code` in its configuration), or as its own verb.
//!
//! What it is not: the tunnel. The credentials it stores are read by `config` like a token's.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use proto::enroll::{ENROLL_ALPN, EnrollRequest, EnrollResponse, MAX_ENROLL_FRAME, Refusal};
use rustls::pki_types::ServerName;

use crate::upstream_tls::Accept;

/// Time to connect, and for each read or write afterwards.
const TIMEOUT: Duration = Duration::from_secs(15);

/// Why enrollment failed. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The code does not parse.
    #[error("{0}")]
    Code(pki::Error),
    /// The edge could not be reached.
    #[error("cannot reach the edge at {edge}: {reason}")]
    Unreachable {
        /// `host:port`.
        edge: String,
        /// Why.
        reason: String,
    },
    /// The edge refused the code.
    #[error("{}", refusal_text(*.0))]
    Refused(Refusal),
    /// The answer's MAC did not verify.
    #[error(
        "the answer does not prove knowledge of the code: whatever answered at that address is \
         not the edge that minted it (or the code is not this edge's). Nothing was stored"
    )]
    NotTheEdge,
    /// The exchange broke off or the answer was malformed.
    #[error("enrollment failed: {0}")]
    Protocol(String),
    /// The answer's credentials are inconsistent, or could not be stored.
    #[error("{0}")]
    Credentials(pki::Error),
}

fn refusal_text(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::UnknownCode => {
            "the edge does not know this code: check it for typos, and that it was minted on \
             this edge (`doorless-edge site codes`)"
        }
        Refusal::Used => {
            "this code was already used: codes work once. Mint a new one on the edge with \
             `doorless-edge site code SITE`"
        }
        Refusal::Expired => {
            "this code has expired. Mint a new one on the edge with `doorless-edge site code SITE`"
        }
        Refusal::Revoked => {
            "this code was revoked on the edge. Mint a new one with `doorless-edge site code SITE`"
        }
        Refusal::RateLimited => {
            "the edge refuses enrollment attempts for now (too many failed attempts): wait a few \
             minutes and try again"
        }
        Refusal::BadRequest => "the edge could not read the request (is it a newer version?)",
        Refusal::Internal => "the edge failed to enroll us: its log says why",
    }
}

/// Who we became.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// The site.
    pub site: String,
    /// Our connector id.
    pub connector_id: String,
    /// The tunnel addresses we will dial.
    pub edges: Vec<String>,
}

/// Enrolls with `code` and stores the credentials in `state_dir` (see
/// [`pki::save_enrolled`]).
/// A renewal code (`doorless-edge client renew`) is enrolled with the same way: the answer
/// names the same connector, with a certificate for the key made now.
pub fn enroll(code: &pki::EnrollmentCode, state_dir: &Path) -> Result<Enrolled, EnrollError> {
    let credentials = exchange(code)?;
    pki::save_enrolled(state_dir, &credentials, Some(&code.keys().id))
        .map_err(EnrollError::Credentials)?;
    Ok(Enrolled {
        site: credentials.site,
        connector_id: credentials.connector_id,
        edges: credentials.edges,
    })
}

/// The exchange with the edge, without storing anything: our key, and what the edge sent.
pub fn exchange(code: &pki::EnrollmentCode) -> Result<pki::EnrollmentToken, EnrollError> {
    let (key_pem, csr_pem) = pki::connector_csr().map_err(EnrollError::Credentials)?;
    let keys = code.keys();
    let mut request = EnrollRequest {
        code_id: keys.id,
        host: code.edge().to_owned(),
        csr_pem,
        mac: [0; 32],
    };
    let input = request
        .mac_input()
        .map_err(|e| EnrollError::Protocol(e.to_string()))?;
    request.mac = keys.request_mac(&input);
    let mut frame = BytesMut::new();
    request
        .encode(&mut frame)
        .map_err(|e| EnrollError::Protocol(e.to_string()))?;

    let edge = format!("{}:{}", bracket(code.host()), code.port());
    let unreachable = |reason: String| EnrollError::Unreachable {
        edge: edge.clone(),
        reason,
    };
    let tcp = connect(&edge).map_err(unreachable)?;
    let server_name = ServerName::try_from(code.host().to_owned())
        .map_err(|e| unreachable(format!("bad host: {e}")))?;
    let config = client_config().map_err(|e| EnrollError::Protocol(e.to_string()))?;
    let conn = rustls::ClientConnection::new(config, server_name)
        .map_err(|e| unreachable(e.to_string()))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&frame)
        .and_then(|()| tls.flush())
        .map_err(|e| unreachable(e.to_string()))?;
    let response = read_response(&mut tls)?;
    let enrolled = match response {
        EnrollResponse::Enrolled(enrolled) => enrolled,
        EnrollResponse::Refused(refusal) => return Err(EnrollError::Refused(refusal)),
    };
    let input = enrolled
        .mac_input()
        .map_err(|e| EnrollError::Protocol(e.to_string()))?;
    if !keys.verify_response(&request.mac, &input, &enrolled.mac) {
        return Err(EnrollError::NotTheEdge);
    }
    let credentials = pki::EnrollmentToken {
        edges: enrolled.edges,
        server_name: enrolled.server_name,
        site: enrolled.site,
        connector_id: enrolled.connector_id,
        cert_pem: enrolled.cert_pem,
        key_pem,
        tunnel_ca_pem: enrolled.tunnel_ca_pem,
    };
    // The certificate must be for our key and name a connector of the site.
    credentials.validate().map_err(EnrollError::Credentials)?;
    Ok(credentials)
}

fn connect(edge: &str) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = edge.to_socket_addrs().map_err(|e| e.to_string())?.collect();
    let mut last = "no address".to_owned();
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(tcp) => {
                tcp.set_read_timeout(Some(TIMEOUT))
                    .and_then(|()| tcp.set_write_timeout(Some(TIMEOUT)))
                    .map_err(|e| e.to_string())?;
                return Ok(tcp);
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

fn read_response(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
) -> Result<EnrollResponse, EnrollError> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        match EnrollResponse::decode(&buf) {
            Ok(Some((response, _))) => return Ok(response),
            Ok(None) => {}
            Err(e) => return Err(EnrollError::Protocol(e.to_string())),
        }
        if buf.len() > MAX_ENROLL_FRAME + 4 {
            return Err(EnrollError::Protocol("answer too large".into()));
        }
        match tls.read(&mut chunk) {
            Ok(0) => {
                return Err(EnrollError::Protocol(
                    "the edge closed the connection without an answer (is it an older version, \
                     or not a doorless edge?)"
                        .into(),
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(EnrollError::Protocol(e.to_string())),
        }
    }
}

fn client_config() -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        // Any server certificate (its handshake signature is still checked): the response MAC
        // authenticates the edge, which a certificate could not, since most edges'
        // certificates chain to a CA only the edge knows.
        .with_custom_certificate_verifier(Arc::new(Accept::any(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![ENROLL_ALPN.to_vec()];
    Ok(Arc::new(config))
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}
