//! A hostile (or broken) Home Assistant: raw HTTP/1.1 responses whose framing is ambiguous
//! (RFC 9112 §6.3), written byte for byte over TCP, through the real edge and connector. The
//! connector answers 502 and counts the response by kind, never relays a body whose length
//! the client would read differently than the connector did.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use e2e::{Connector, ConnectorConfig, Edge, HOME_HOST, HttpVersion, Pki, RawResponse};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A raw HTTP/1.1 server that answers each path with canned bytes, keeping connections open
/// (so a response that leaves bytes behind would poison the next one if they were reused).
struct Hostile {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The canned responses, by request path. Anything else gets a plain `200 ok`.
fn responses() -> HashMap<&'static str, &'static [u8]> {
    HashMap::from([
        // Both headers; the declared length (3) cuts the chunked body (11 bytes).
        (
            "/cl-te",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nhello world\r\n0\r\n\r\n"[..],
        ),
        (
            "/te-cl",
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 30\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
        // A transfer coding the client would never be told about.
        (
            "/te-gzip",
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nConnection: close\r\n\r\n\x1f\x8b\x08\x00garbage"[..],
        ),
        (
            "/te-gzip-chunked",
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4\r\n\x1f\x8b\x08\x00\r\n0\r\n\r\n"[..],
        ),
        // Present but empty: hyper would read until the connection closes.
        (
            "/te-empty",
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: \r\nContent-Length: 5\r\n\r\nhello"[..],
        ),
        (
            "/te-chunked-twice",
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
        // Content-Length values that disagree, or are no number.
        (
            "/cl-conflict",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"[..],
        ),
        (
            "/cl-list-conflict",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!"[..],
        ),
        (
            "/cl-garbage",
            &b"HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\nhello"[..],
        ),
        (
            "/cl-not-modified-garbage",
            &b"HTTP/1.1 304 Not Modified\r\nContent-Length: five\r\n\r\n"[..],
        ),
        // Chunked in HTTP/1.0, which has no chunked coding.
        (
            "/http10-chunked",
            &b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        ),
        // A 101 to a request that asked for no upgrade.
        (
            "/switching",
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nraw bytes"[..],
        ),
        // Identical duplicates are one length (RFC 9112 §6.3 allows it): relayed, once.
        (
            "/cl-same-twice",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello"[..],
        ),
        (
            "/cl-same-list",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"[..],
        ),
        // Bodies where none may be, carrying a whole second response: never seen by anyone.
        (
            "/no-content-smuggle",
            &b"HTTP/1.1 204 No Content\r\nContent-Length: 38\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPWNED!"[..],
        ),
        (
            "/not-modified-smuggle",
            &b"HTTP/1.1 304 Not Modified\r\nContent-Length: 38\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPWNED!"[..],
        ),
    ])
}

impl Hostile {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, counter.clone()));
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Reads request heads (no bodies: GET only) and answers each; bounded and timed out.
async fn serve(mut tcp: TcpStream, requests: Arc<AtomicU64>) {
    let canned = responses();
    let mut buf = Vec::new();
    loop {
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > 64 * 1024 {
                return;
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(60), tcp.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        requests.fetch_add(1, Ordering::SeqCst);
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let response = canned
            .get(path.as_str())
            .copied()
            .unwrap_or(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        if tcp.write_all(response).await.is_err() {
            return;
        }
        if response.windows(17).any(|w| w == b"Connection: close") {
            return;
        }
    }
}

struct Setup {
    hostile: Hostile,
    server_ca: Vec<u8>,
    device: pki::Issued,
    connector: Connector,
    edge: Edge,
    _pki: Pki,
}

impl Setup {
    async fn start() -> Self {
        let hostile = Hostile::start().await;
        let mut pki = Pki::new().unwrap();
        pki.add_site("home", HOME_HOST).unwrap();
        let device = pki.device("home", "phone").unwrap();
        let token = pki.connector_token("home", "connector-1").unwrap();
        let server_ca = pki.server_ca_pem().unwrap();
        let edge = Edge::start(pki.root()).await.unwrap();
        let config =
            ConnectorConfig::new(e2e::token_for(&token, &[edge.tunnel_addr()]), hostile.addr);
        let connector = Connector::start(config).await.unwrap();
        Self {
            hostile,
            server_ca,
            device,
            connector,
            edge,
            _pki: pki,
        }
    }

    fn client(&self, version: HttpVersion) -> reqwest::Client {
        let mut builder = e2e::client_builder(
            &self.server_ca,
            HOME_HOST,
            self.edge.https_addr(),
            Some(&self.device),
        )
        .unwrap();
        if version == HttpVersion::Http1 {
            builder = builder.http1_only();
        }
        builder.build().unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!(
            "https://{HOME_HOST}:{}{path}",
            self.edge.https_addr().port()
        )
    }

    /// Raw HTTP/1.1 over TLS, to see every header line as sent.
    async fn raw(&self, path: &str) -> RawResponse {
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {HOME_HOST}\r\nConnection: close\r\n\r\n");
        let raw = e2e::raw_http1(
            &self.server_ca,
            HOME_HOST,
            self.edge.https_addr(),
            Some(&self.device),
            request.as_bytes(),
        )
        .await
        .unwrap();
        RawResponse::parse(&raw).unwrap()
    }

    async fn upstream_errors(&self, kind: &str) -> f64 {
        let admin = self.connector.admin_addr().unwrap();
        let text = reqwest::get(format!("http://{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = format!("doorless_connector_upstream_errors_total{{kind=\"{kind}\"}}");
        text.lines()
            .filter(|l| l.starts_with(&series))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// Content-Length with Transfer-Encoding, transfer codings other than `chunked`, a 101 nobody
/// asked for: 502 over HTTP/1.1 and HTTP/2, each counted as `framing`, nothing relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_a_502_counted_as_framing() {
    let setup = Setup::start().await;
    let mut expected = setup.upstream_errors("framing").await;
    for path in [
        "/cl-te",
        "/te-cl",
        "/te-gzip",
        "/te-gzip-chunked",
        "/te-empty",
        "/te-chunked-twice",
        "/cl-not-modified-garbage",
        "/switching",
    ] {
        for version in [HttpVersion::Http1, HttpVersion::Auto] {
            let before = setup.hostile.requests();
            let (status, body) = crate::get(&setup.client(version), &setup.url(path)).await;
            assert_eq!(status, 502, "{path} {version:?}: body {body:?}");
            assert!(
                !body.windows(5).any(|w| w == b"hello" || w == b"raw b"),
                "{path}: upstream bytes relayed: {body:?}"
            );
            assert_eq!(setup.hostile.requests(), before + 1, "{path}");
            expected += 1.0;
            assert_eq!(
                setup.upstream_errors("framing").await,
                expected,
                "{path} {version:?} not counted as framing"
            );
        }
    }
}

/// What hyper itself refuses (conflicting or malformed Content-Length, chunked in HTTP/1.0)
/// is a 502 too, counted as `protocol`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_length_is_a_502() {
    let setup = Setup::start().await;
    let client = setup.client(HttpVersion::Http1);
    let before = setup.upstream_errors("protocol").await;
    let paths = [
        "/cl-conflict",
        "/cl-list-conflict",
        "/cl-garbage",
        "/http10-chunked",
    ];
    for path in paths {
        let (status, body) = crate::get(&client, &setup.url(path)).await;
        assert_eq!(status, 502, "{path}: body {body:?}");
    }
    assert_eq!(
        setup.upstream_errors("protocol").await,
        before + paths.len() as f64
    );
}

/// Identical duplicate lengths are one length: relayed with exactly one `Content-Length`.
/// A 204 or 304 that carries bytes after its head (here a whole second response) is relayed
/// without them and without a `Content-Length` on the 204, and the next request on the same
/// upstream connection pool gets its own answer, never the smuggled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_lengths_and_bodies_where_none_may_be() {
    let setup = Setup::start().await;
    for path in ["/cl-same-twice", "/cl-same-list"] {
        let response = setup.raw(path).await;
        assert_eq!(response.status, 200, "{path}");
        let lengths: Vec<&str> = response
            .headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(lengths, ["5"], "{path}: {:?}", response.headers);
        assert_eq!(response.body, b"hello", "{path}");
    }

    let client = setup.client(HttpVersion::Http1);
    for round in 0..5 {
        for (path, status) in [("/no-content-smuggle", 204), ("/not-modified-smuggle", 304)] {
            let (got, body) = crate::get(&client, &setup.url(path)).await;
            assert_eq!(
                (got.as_u16(), body.len()),
                (status, 0),
                "{path} round {round}"
            );
            let (got, body) = crate::get(&client, &setup.url("/next")).await;
            assert_eq!(
                (got.as_u16(), body.as_ref()),
                (200, &b"ok"[..]),
                "after {path}, round {round}: the next request got another response"
            );
        }
    }
    let response = setup.raw("/no-content-smuggle").await;
    assert_eq!(response.status, 204);
    assert!(
        response.header("content-length").is_none() && response.body.is_empty(),
        "{response:?}"
    );
}
