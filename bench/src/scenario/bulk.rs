//! Scenario 2: one-connection bulk download and upload.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

use crate::backend::full;
use crate::clients::connect;
use crate::targets::{Pki, Target};
use crate::{GIB, HOST, ZEROS};

async fn h1_client(
    t: &Target,
    pki: &Pki,
) -> Result<hyper::client::conn::http1::SendRequest<BoxBody<Bytes, Infallible>>> {
    let io = connect(t, Some(&pki.tls)).await?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    Ok(send)
}

/// Returns (MB/s, proxy CPU-seconds per GiB).
pub(crate) async fn download(t: &Target, pki: &Pki, bytes: u64, tck: f64) -> Result<(f64, f64)> {
    let mut send = h1_client(t, pki).await?;
    let req = Request::get(format!("/bytes/{bytes}"))
        .header(header::HOST, HOST)
        .body(full(Bytes::new()))?;
    let cpu0 = t.cpu(tck);
    let start = Instant::now();
    let resp = send.send_request(req).await?;
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

pub(crate) async fn upload(t: &Target, pki: &Pki, bytes: u64, tck: f64) -> Result<(f64, f64)> {
    let mut send = h1_client(t, pki).await?;
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
    let req = Request::post("/upload")
        .header(header::HOST, HOST)
        .header(header::CONTENT_LENGTH, bytes)
        .body(http_body_util::BodyExt::boxed(StreamBody::new(chunks)))?;
    let cpu0 = t.cpu(tck);
    let start = Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(180), send.send_request(req))
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
