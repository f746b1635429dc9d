//! Protocol upgrades through the real edge and connector, in front of a hostile upstream that
//! answers 101 to anything and records every byte it receives. Only a valid WebSocket opening
//! handshake is forwarded, only a 101 that answers it is spliced, and what a client sends after
//! a refused upgrade is parsed as HTTP again: it never reaches the upstream unchecked.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e::{Connector, ConnectorConfig, Edge, EdgeOptions, HOME_HOST, Pki, RawResponse};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// The marker of a request smuggled behind an upgrade; the upstream must never see it.
const SMUGGLED: &str = "/smuggled";

/// A raw HTTP/1.1 upstream that switches protocols whenever asked (and, on some paths, with a
/// 101 that answers nothing), then keeps reading: every byte it ever received is kept.
struct Switcher {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Switcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Switcher {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(switch(tcp, log.clone()));
            }
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// Everything received so far, lossily as text.
    fn received(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

/// Serves one connection: a 200 to plain requests, a 101 to anything with an `Upgrade`
/// header, after which it only reads. Bounded (1 MiB) and timed out.
async fn switch(mut tcp: TcpStream, received: Arc<Mutex<Vec<u8>>>) {
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
                Ok(Ok(n)) if n > 0 => {
                    received.lock().unwrap().extend_from_slice(&chunk[..n]);
                    buf.extend_from_slice(&chunk[..n]);
                }
                _ => return,
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
        let header = |name: &str| {
            head.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        };
        let Some(upgrade) = header("upgrade") else {
            if tcp
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .await
                .is_err()
            {
                return;
            }
            continue;
        };
        let accept = header("sec-websocket-key")
            .map(|key| derive_accept_key(key.as_bytes()))
            .unwrap_or_default();
        let response = match path.as_str() {
            "/no-accept" => {
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_owned()
            }
            "/wrong-accept" => "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n".to_owned(),
            "/h2c-answer" => format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ),
            // Whatever was asked for, agreed to, with the right accept value when there is a key.
            _ => format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: {upgrade}\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ),
        };
        if tcp.write_all(response.as_bytes()).await.is_err() {
            return;
        }
        // Switched: read (and keep) whatever comes, forever, answering nothing.
        let mut chunk = [0u8; 4096];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_secs(60), tcp.read(&mut chunk)).await
        {
            if n == 0 || received.lock().unwrap().len() > 1024 * 1024 {
                return;
            }
            received.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
        return;
    }
}

struct Setup {
    switcher: Switcher,
    server_ca: Vec<u8>,
    device: pki::Issued,
    _connector: Connector,
    edge: Edge,
    _pki: Pki,
}

impl Setup {
    /// One site (`home`) with `/api/webhook/` as a public path, its connector in front of a
    /// [`Switcher`].
    async fn start() -> Self {
        let switcher = Switcher::start().await;
        let mut pki = Pki::new().unwrap();
        pki.add_site("home", HOME_HOST).unwrap();
        let device = pki.device("home", "phone").unwrap();
        let token = pki.connector_token("home", "connector-1").unwrap();
        let server_ca = pki.server_ca_pem().unwrap();
        let options = EdgeOptions {
            extra_toml: Some("[sites.home]\npublic_paths = [\"/api/webhook/\"]\n".into()),
            ..EdgeOptions::default()
        };
        let edge = Edge::start_with(pki.root(), options).await.unwrap();
        let config =
            ConnectorConfig::new(e2e::token_for(&token, &[edge.tunnel_addr()]), switcher.addr);
        let connector = Connector::start(config).await.unwrap();
        Self {
            switcher,
            server_ca,
            device,
            _connector: connector,
            edge,
            _pki: pki,
        }
    }

    /// `request`, then a smuggled request for another host that closes the connection; the
    /// edge's answer to each.
    async fn exchange(&self, request: &str, identity: Option<&pki::Issued>) -> (u16, u16) {
        let bytes = format!(
            "{request}GET {SMUGGLED} HTTP/1.1\r\nHost: other.invalid\r\nConnection: close\r\n\r\n"
        );
        let raw = e2e::raw_http1(
            &self.server_ca,
            HOME_HOST,
            self.edge.https_addr(),
            identity,
            bytes.as_bytes(),
        )
        .await
        .unwrap();
        let first = RawResponse::parse(&raw).unwrap();
        let second = RawResponse::parse(&first.body)
            .map(|r| r.status)
            .unwrap_or_default();
        (first.status, second)
    }

    async fn errors(&self, blame: &str, reason: &str) -> f64 {
        self.edge
            .metric(&format!(
                "doorless_edge_request_errors_total{{site=\"home\",blame=\"{blame}\",reason=\"{reason}\"}}"
            ))
            .await
            .unwrap()
    }
}

/// A WebSocket handshake for `path`, with `extra` header lines (`\r\n`-terminated).
fn websocket(method: &str, path: &str, extra: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {HOME_HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// `h2c`, `TLS/1.0`, several tokens, malformed WebSocket handshakes and `CONNECT` are answered
/// 400 and counted by reason; the upstream receives none of them, nor what follows them on the
/// connection (parsed as HTTP again: here a request for another host, 421).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_other_than_websocket_are_refused_before_forwarding() {
    let setup = Setup::start().await;
    let h = HOME_HOST;
    let refused = [
        (
            format!(
                "GET / HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
            ),
            "upgrade_refused",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {h}\r\nUpgrade: h2c\r\n\r\n"),
            "upgrade_refused",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: TLS/1.0\r\n\r\n"
            ),
            "upgrade_refused",
        ),
        (
            websocket("GET", "/api/websocket", "Upgrade: h2c\r\n"),
            "upgrade_refused",
        ),
        (
            format!(
                "GET /api/websocket HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket, h2c\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
            "upgrade_refused",
        ),
        (
            format!("CONNECT {h}:443 HTTP/1.1\r\nHost: {h}:443\r\n\r\n"),
            "upgrade_refused",
        ),
        (
            format!(
                "GET /api/websocket HTTP/1.1\r\nHost: {h}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ),
            "bad_websocket_handshake",
        ),
        (
            websocket("GET", "/api/websocket", "Sec-WebSocket-Version: 8\r\n").replacen(
                "Sec-WebSocket-Version: 13\r\n",
                "",
                1,
            ),
            "bad_websocket_handshake",
        ),
        (
            websocket("POST", "/api/websocket", "Content-Length: 0\r\n"),
            "bad_websocket_handshake",
        ),
        (
            websocket("GET", "/api/websocket", "").replacen(
                "Connection: Upgrade",
                "Connection: keep-alive",
                1,
            ),
            "bad_websocket_handshake",
        ),
    ];
    for (request, reason) in &refused {
        let before = setup.errors("client", reason).await;
        let (status, next) = setup.exchange(request, Some(&setup.device)).await;
        assert_eq!(status, 400, "{request:?}");
        assert_eq!(
            next, 421,
            "{request:?}: what followed was not parsed as HTTP"
        );
        assert_eq!(
            setup.errors("client", reason).await,
            before + 1.0,
            "{request:?}"
        );
    }
    let received = setup.switcher.received();
    for marker in [SMUGGLED, "Upgrade", "upgrade", "CONNECT", "/api/websocket"] {
        assert!(
            !received.contains(marker),
            "the upstream received {marker:?}:\n{received}"
        );
    }
}

/// A public path exempts plain HTTP only: a WebSocket there needs a certificate (403 without,
/// nothing forwarded); with one it is spliced like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upgrade_passes_on_a_public_path_without_credentials() {
    let setup = Setup::start().await;
    let request = websocket("GET", "/api/webhook/ws", "");
    let (status, next) = setup.exchange(&request, None).await;
    assert_eq!((status, next), (403, 421));
    let plain = format!("GET /api/webhook/plain HTTP/1.1\r\nHost: {HOME_HOST}\r\n\r\n");
    let (status, _) = setup.exchange(&plain, None).await;
    assert_eq!(status, 200, "plain HTTP on the public path still passes");
    let received = setup.switcher.received();
    assert!(
        !received.contains("/api/webhook/ws") && !received.contains(SMUGGLED),
        "{received}"
    );
    assert!(received.contains("/api/webhook/plain"), "{received}");

    // With a certificate: switched, and the bytes after it are the WebSocket's.
    let mut tls = e2e::tls_connect(
        &setup.server_ca,
        HOME_HOST,
        setup.edge.https_addr(),
        Some(&setup.device),
        &[b"http/1.1"],
    )
    .await
    .unwrap();
    tls.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut tls).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains(&derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==")),
        "{head}"
    );
    tls.write_all(b"websocket frames").await.unwrap();
    e2e::poll_until(
        "spliced bytes upstream",
        Duration::from_secs(10),
        || async {
            setup
                .switcher
                .received()
                .contains("websocket frames")
                .then_some(())
        },
    )
    .await
    .unwrap();
}

/// A 101 that does not answer the WebSocket handshake (no accept value, a wrong one, another
/// protocol) is a 502 blamed on the upstream and never spliced: what the client sends next is
/// parsed as HTTP by the edge, and the upstream never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_101_that_does_not_answer_the_handshake_is_not_spliced() {
    let setup = Setup::start().await;
    for path in ["/no-accept", "/wrong-accept", "/h2c-answer"] {
        let before = setup.errors("upstream", "bad_upgrade_response").await;
        let (status, next) = setup
            .exchange(&websocket("GET", path, ""), Some(&setup.device))
            .await;
        assert_eq!((status, next), (502, 421), "{path}");
        assert_eq!(
            setup.errors("upstream", "bad_upgrade_response").await,
            before + 1.0,
            "{path}"
        );
        let received = setup.switcher.received();
        assert!(
            received.contains(path),
            "{path}: the handshake itself went up"
        );
        assert!(!received.contains(SMUGGLED), "{path}:\n{received}");
    }
}

/// Reads a response head (bounded, 10 s).
async fn read_head<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
    })
    .await
    .unwrap();
    String::from_utf8_lossy(&head).into_owned()
}

/// The same over HTTP/2 (RFC 8441): the upstream receives an HTTP/1.1 handshake with a key of
/// the edge's making; a 101 that does not answer that key is a 502 and nothing is spliced; one
/// that does becomes the client's 200, and the stream's bytes reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_websocket_is_spliced_only_after_a_101_that_answers_the_edges_key() {
    let setup = Setup::start().await;
    let mut h2 = e2e::H2Connection::connect(
        &setup.server_ca,
        HOME_HOST,
        setup.edge.https_addr(),
        Some(&setup.device),
    )
    .await
    .unwrap();
    let version = [("sec-websocket-version", "13")];
    for path in ["/no-accept", "/wrong-accept", "/h2c-answer"] {
        let before = setup.errors("upstream", "bad_upgrade_response").await;
        let response = h2
            .extended_connect(path, Some("websocket"), &version)
            .await
            .unwrap();
        assert_eq!(response.status(), 502, "{path}");
        assert_eq!(
            setup.errors("upstream", "bad_upgrade_response").await,
            before + 1.0,
            "{path}"
        );
    }
    let mut ws = h2.websocket("/api/websocket").await.unwrap();
    let received = setup.switcher.received();
    let head = received
        .split("\r\n\r\n")
        .find(|h| h.starts_with("GET /api/websocket HTTP/1.1"))
        .unwrap_or_else(|| panic!("no handshake upstream:\n{received}"));
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade"), "{head}");
    assert!(lower.contains("\r\nsec-websocket-version: 13"), "{head}");
    assert_eq!(
        lower.matches("\r\nsec-websocket-key: ").count(),
        1,
        "{head}"
    );
    use futures_util::SinkExt as _;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        "frames over h2",
    ))
    .await
    .unwrap();
    e2e::poll_until(
        "spliced bytes upstream",
        Duration::from_secs(10),
        || async {
            // Masked by the client: look for the frame's length byte after the handshake.
            (setup.switcher.received().len() > received.len()).then_some(())
        },
    )
    .await
    .unwrap();
}
