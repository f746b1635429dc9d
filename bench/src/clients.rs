//! The raw HTTP/1.1 client the scenarios share: connect (TCP or mTLS), one GET, read one
//! response.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Result, anyhow, ensure};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::either::Either;

use crate::HOST;
use crate::targets::Target;

pub(crate) type Io = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

pub(crate) async fn connect_from(
    t: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
    source: Option<IpAddr>,
) -> Result<Io> {
    let tcp = match source {
        Some(ip) => {
            let sock = TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(t.addr).await?
        }
        None => TcpStream::connect(t.addr).await?,
    };
    tcp.set_nodelay(true)?;
    if !t.tls {
        return Ok(Either::Left(tcp));
    }
    let config = tls.ok_or_else(|| anyhow!("TLS target needs a client config"))?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = ServerName::try_from(HOST)?;
    Ok(Either::Right(connector.connect(name, tcp).await?))
}

pub(crate) async fn connect(t: &Target, tls: Option<&Arc<rustls::ClientConfig>>) -> Result<Io> {
    connect_from(t, tls, None).await
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns the status.
pub(crate) async fn read_response<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
) -> Result<u16> {
    buf.clear();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end])?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| anyhow!("bad status line"))?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut tmp).await?;
                ensure!(n > 0, "EOF in body");
                buf.extend_from_slice(&tmp[..n]);
            }
            return Ok(status);
        }
        let n = s.read(&mut tmp).await?;
        ensure!(n > 0, "EOF before response head");
        buf.extend_from_slice(&tmp[..n]);
    }
}

pub(crate) fn get_request(path: &str, close: bool) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
    .into_bytes()
}

/// One GET on a new connection.
pub(crate) async fn get_status(
    t: &Target,
    tls: Option<&Arc<rustls::ClientConfig>>,
    path: &str,
) -> Result<u16> {
    let mut s = connect(t, tls).await?;
    s.write_all(&get_request(path, true)).await?;
    s.flush().await?;
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf).await
}
