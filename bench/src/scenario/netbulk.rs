//! Bulk transfer over an impaired network: one HTTP/1.1 connection, a download and an upload
//! of up to `bytes`, each stopped at `cap` (under loss a TCP leg at 80 ms moves well under
//! 1 MB/s, and a full run must stay bounded). Returns goodput in MB/s and whether the cap hit.
//!
//! Not the loopback bulk scenario (`bulk`): that one insists on the whole transfer and
//! measures proxy CPU.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;

use crate::backend::full;
use crate::clients::connect;
use crate::targets::{Pki, Target};
use crate::{HOST, ZEROS};

/// Aborts the connection task on every way out (a capped or failed transfer must not go on
/// loading the path while the next measurement runs).
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) struct Transfer {
    pub(crate) mbps: f64,
    pub(crate) bytes: u64,
    pub(crate) capped: bool,
}

pub(crate) async fn download(t: &Target, pki: &Pki, bytes: u64, cap: Duration) -> Result<Transfer> {
    let start = Instant::now();
    let deadline = start + cap;
    let io = tokio::time::timeout_at(deadline.into(), connect(t, Some(&pki.tls)))
        .await
        .context("connect took the whole cap")??;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let _conn = AbortOnDrop(tokio::spawn(conn));
    let req = Request::get(format!("/bytes/{bytes}"))
        .header(header::HOST, HOST)
        .body(full(Bytes::new()))?;
    let mut got = 0u64;
    let mut capped = false;
    match tokio::time::timeout_at(deadline.into(), send.send_request(req)).await {
        Ok(resp) => {
            let resp = resp?;
            ensure!(resp.status() == 200, "download: {}", resp.status());
            let mut body = resp.into_body();
            loop {
                match tokio::time::timeout_at(deadline.into(), body.frame()).await {
                    Ok(Some(frame)) => got += frame?.data_ref().map_or(0, |d| d.len() as u64),
                    Ok(None) => break,
                    Err(_) => {
                        capped = true;
                        break;
                    }
                }
            }
        }
        Err(_) => capped = true,
    }
    let secs = start.elapsed().as_secs_f64();
    ensure!(
        capped || got == bytes,
        "download got {got} of {bytes} bytes"
    );
    Ok(Transfer {
        mbps: got as f64 / secs / 1e6,
        bytes: got,
        capped,
    })
}

/// Chunked upload that ends at `bytes` or when `cap` is reached; the backend's count of what
/// arrived is the goodput.
pub(crate) async fn upload(t: &Target, pki: &Pki, bytes: u64, cap: Duration) -> Result<Transfer> {
    let start = Instant::now();
    let stop_sending = start + cap;
    let io = tokio::time::timeout_at(stop_sending.into(), connect(t, Some(&pki.tls)))
        .await
        .context("connect took the whole cap")??;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let _conn = AbortOnDrop(tokio::spawn(conn));
    let chunk = 64 * 1024;
    let chunks = futures_util::stream::unfold(bytes, move |left| async move {
        if left == 0 || Instant::now() >= stop_sending {
            return None;
        }
        let take = left.min(chunk as u64) as usize;
        Some((
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(&ZEROS[..take]))),
            left - take as u64,
        ))
    });
    let req = Request::post("/upload")
        .header(header::HOST, HOST)
        .body(http_body_util::BodyExt::boxed(StreamBody::new(chunks)))?;
    // The body stops at the cap; what was queued in buffers along the way still drains, so
    // allow a bounded tail (a path moving well under 1 MB/s may not make it: reported).
    let resp = tokio::time::timeout(cap + Duration::from_secs(20), send.send_request(req))
        .await
        .context("upload: no response within cap + 20 s (what was queued still draining)")??;
    ensure!(resp.status() == 200, "upload: {}", resp.status());
    let body = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
        .await
        .context("upload response body")??
        .to_bytes();
    let secs = start.elapsed().as_secs_f64();
    let n: u64 = String::from_utf8_lossy(&body).trim().parse().unwrap_or(0);
    Ok(Transfer {
        mbps: n as f64 / secs / 1e6,
        bytes: n,
        capped: n < bytes,
    })
}
