//! Scenario 2: one-connection bulk download and upload, over HTTP/1.1 and (TLS targets) HTTP/2.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::backend::full;
use crate::clients::connect;
use crate::targets::{Pki, Target};
use crate::{GIB, HOST, ZEROS};

type ReqBody = BoxBody<Bytes, Infallible>;

/// One client connection, HTTP/1.1 or HTTP/2.
enum Client {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

impl Client {
    async fn connect(t: &Target, pki: &Pki, h2: bool) -> Result<Self> {
        if !h2 {
            let io = connect(t, Some(&pki.tls)).await?;
            let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
            tokio::spawn(conn);
            return Ok(Self::H1(send));
        }
        let io = connect(t, Some(&pki.tls_h2)).await?;
        // Receive windows as Chromium sets them (6 MiB per stream, 15 MiB per connection), so
        // a download is limited by the proxy, not by this client.
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(6 << 20)
            .initial_connection_window_size(15 << 20)
            .handshake(TokioIo::new(io))
            .await?;
        tokio::spawn(conn);
        Ok(Self::H2(send))
    }

    /// The request target: origin form for HTTP/1.1, absolute (`:scheme`, `:authority`) for
    /// HTTP/2.
    fn uri(&self, t: &Target, path: &str) -> String {
        match self {
            Self::H1(_) => path.to_owned(),
            Self::H2(_) => t.url(path),
        }
    }

    /// A request builder with `Host` for HTTP/1.1; HTTP/2 names the host in `:authority`
    /// (nginx refuses a request that carries both).
    fn request(&self, builder: http::request::Builder) -> http::request::Builder {
        match self {
            Self::H1(_) => builder.header(header::HOST, HOST),
            Self::H2(_) => builder,
        }
    }

    async fn send(&mut self, req: Request<ReqBody>) -> Result<hyper::Response<Incoming>> {
        Ok(match self {
            Self::H1(s) => s.send_request(req).await?,
            Self::H2(s) => s.send_request(req).await?,
        })
    }
}

/// Returns (MB/s, proxy CPU-seconds per GiB).
pub(crate) async fn download(
    t: &Target,
    pki: &Pki,
    bytes: u64,
    tck: f64,
    h2: bool,
) -> Result<(f64, f64)> {
    let mut send = Client::connect(t, pki, h2).await?;
    let req = send
        .request(Request::get(send.uri(t, &format!("/bytes/{bytes}"))))
        .body(full(Bytes::new()))?;
    let cpu0 = t.cpu(tck);
    let start = Instant::now();
    let resp = send.send(req).await?;
    ensure!(resp.status() == 200, "download: {}", resp.status());
    let mut body = resp.into_body();
    let mut got = 0u64;
    let deadline = start + Duration::from_secs(180);
    while let Some(frame) = tokio::time::timeout_at(deadline.into(), body.frame())
        .await
        .context("download took over 180 s")?
    {
        got += frame?.data_ref().map_or(0, |d| d.len() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = t.cpu(tck) - cpu0;
    ensure!(got == bytes, "download got {got} of {bytes} bytes");
    Ok((bytes as f64 / secs / 1e6, cpu * GIB as f64 / bytes as f64))
}

pub(crate) async fn upload(
    t: &Target,
    pki: &Pki,
    bytes: u64,
    tck: f64,
    h2: bool,
) -> Result<(f64, f64)> {
    let mut send = Client::connect(t, pki, h2).await?;
    let chunks = futures_util::stream::unfold(bytes, |left| async move {
        if left == 0 {
            return None;
        }
        let take = left.min(ZEROS.len() as u64) as usize;
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(&ZEROS[..take]))),
            left - take as u64,
        ))
    });
    let req = send
        .request(Request::post(send.uri(t, "/upload")))
        .header(header::CONTENT_LENGTH, bytes)
        .body(http_body_util::BodyExt::boxed(StreamBody::new(chunks)))?;
    let cpu0 = t.cpu(tck);
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(180), send.send(req))
        .await
        .context("upload took over 180 s")??;
    ensure!(resp.status() == 200, "upload: {}", resp.status());
    let body = resp.into_body().collect().await?.to_bytes();
    let secs = start.elapsed().as_secs_f64();
    let cpu = t.cpu(tck) - cpu0;
    let n: u64 = String::from_utf8_lossy(&body).trim().parse().unwrap_or(0);
    ensure!(n == bytes, "upload: backend counted {n} of {bytes}");
    Ok((bytes as f64 / secs / 1e6, cpu * GIB as f64 / bytes as f64))
}
