//! Big bodies both ways without whole-body buffering, and many concurrent requests.

use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use e2e::{HttpVersion, RssReport, RssSampler, Stack};
use futures_util::StreamExt;
use reqwest::StatusCode;

const BIG: u64 = 100 * 1000 * 1000;
/// Allowed RSS growth of edge and connector while 100 MB pass through. Whole-body buffering
/// would show up as >= 100 MB; streaming needs a few MB of windows and buffers.
const MAX_RSS_GROWTH: u64 = 64 << 20;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn check_rss(what: &str, reports: &[RssReport]) {
    for (name, report) in ["edge", "connector"].iter().zip(reports) {
        eprintln!(
            "{what}: {name} pid {} RSS {:.1} MiB -> peak {:.1} MiB (+{:.1} MiB)",
            report.pid,
            mib(report.start),
            mib(report.peak),
            mib(report.growth())
        );
        assert!(report.start > 0, "could not read RSS of {name}");
        assert!(
            report.growth() < MAX_RSS_GROWTH,
            "{what}: {name} RSS grew by {:.1} MiB (limit {:.1} MiB): body buffered?",
            mib(report.growth()),
            mib(MAX_RSS_GROWTH)
        );
    }
}

fn pids(stack: &Stack) -> Vec<u32> {
    vec![
        stack.edge.pid().unwrap(),
        stack.connectors[0].pid().unwrap(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_100mb_streams_with_bounded_memory() {
    let stack = Stack::start().await.unwrap();
    for (version, query) in [(HttpVersion::Auto, ""), (HttpVersion::Http1, "?chunked")] {
        let client = stack.client(0, version).unwrap();
        let sampler = RssSampler::start(&pids(&stack));
        let started = Instant::now();
        let response = client
            .get(stack.url(&format!("/bytes/{BIG}{query}")))
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        if query.is_empty() {
            assert_eq!(response.content_length(), Some(BIG));
        }
        let mut sha = digest::Context::new(&digest::SHA256);
        let mut n = 0u64;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.unwrap();
            n += chunk.len() as u64;
            sha.update(&chunk);
        }
        let elapsed = started.elapsed();
        let reports = sampler.stop().await;
        assert_eq!(n, BIG);
        assert_eq!(hex(sha.finish().as_ref()), standin::pattern_sha256(BIG));
        let what = format!("download {version:?}{query}");
        eprintln!(
            "{what}: {BIG} bytes in {elapsed:?} ({:.1} MB/s)",
            BIG as f64 / 1e6 / elapsed.as_secs_f64()
        );
        check_rss(&what, &reports);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_100mb_streams_with_bounded_memory() {
    let stack = Stack::start().await.unwrap();
    for version in [HttpVersion::Auto, HttpVersion::Http1] {
        let client = stack.client(0, version).unwrap();
        let sampler = RssSampler::start(&pids(&stack));
        let started = Instant::now();
        // No Content-Length: HTTP/1.1 sends it chunked, HTTP/2 as DATA frames.
        let body =
            reqwest::Body::wrap_stream(standin::pattern_stream(BIG).map(Ok::<_, std::io::Error>));
        let response = client
            .post(stack.url("/upload"))
            .body(body)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let json: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        let elapsed = started.elapsed();
        let reports = sampler.stop().await;
        assert_eq!(json["bytes"], BIG, "{json}");
        assert_eq!(json["sha256"], standin::pattern_sha256(BIG), "{json}");
        let what = format!("upload {version:?}");
        eprintln!(
            "{what}: {BIG} bytes in {elapsed:?} ({:.1} MB/s)",
            BIG as f64 / 1e6 / elapsed.as_secs_f64()
        );
        check_rss(&what, &reports);
    }
}

/// 200 requests in flight at once over one connector (one HTTP/2 connection from the client,
/// so one TLS handshake), a mix of small, slow and bigger answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_over_one_connector() {
    let stack = Stack::start().await.unwrap();
    let client = stack.client(0, HttpVersion::Auto).unwrap();
    // One request first, so the HTTP/2 connection exists and all 200 share it. (Without it the
    // client races ~100 TLS handshakes, which the edge's per-address handshake budget rightly
    // refuses: burst 40, then 5/s.)
    let (status, _) = crate::get(&client, &stack.url("/status/204")).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let before = stack.ha_requests();
    let started = Instant::now();
    let requests = (0..200u64).map(|i| {
        let client = client.clone();
        let path = match i % 4 {
            0 => format!("/debug/request?i={i}"),
            1 => "/slow/200".to_owned(),
            2 => format!("/bytes/{}", 10_000 + i),
            _ => "/status/204".to_owned(),
        };
        let url = stack.url(&path);
        async move {
            let response = client
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("{url}: {e:?}"))?;
            let status = response.status();
            let body = response
                .bytes()
                .await
                .map_err(|e| format!("{url} body: {e:?}"))?;
            Ok::<_, String>((i, status, body))
        }
    });
    let results = futures_util::future::join_all(requests).await;
    let elapsed = started.elapsed();
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok((i, status, body)) => {
                let ok = match i % 4 {
                    0 => status == StatusCode::OK,
                    1 => status == StatusCode::OK && &body[..] == b"slow",
                    2 => status == StatusCode::OK && body.len() as u64 == 10_000 + i,
                    _ => status == StatusCode::NO_CONTENT,
                };
                if !ok {
                    failures.push(format!("#{i}: {status} ({} bytes)", body.len()));
                }
            }
            Err(error) => failures.push(error),
        }
    }
    eprintln!("200 concurrent requests in {elapsed:?}");
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    assert_eq!(stack.ha_requests() - before, 200);
}
