//! Between steps 5 and 6 of the request path: which protocol upgrades may pass. Only one:
//! a WebSocket opening handshake on HTTP/1.1 (RFC 6455 §4). Everything else that asks to
//! switch protocols (`h2c`, `TLS/1.0`, several tokens, a malformed WebSocket handshake,
//! `CONNECT`) is refused here, before anything is forwarded.
//!
//! Why this matters: after a 101 the edge splices raw bytes. Whatever the client sends next
//! reaches Home Assistant without passing the request path (Host check, header cleanup,
//! credentials). A WebSocket after a verified handshake carries WebSocket frames to the one
//! endpoint that accepted them; an `h2c` upgrade would carry whole new requests past every
//! check.
//!
//! The other half is [`WebSocketKey::check_101`]: `proxy` splices only when the upstream's
//! 101 agrees (`Upgrade: websocket`, `Connection: upgrade`, and the `Sec-WebSocket-Accept`
//! derived from this request's key), so an upstream that answers 101 to anything cannot turn
//! a connection into a raw pipe.
//!
//! What this module is not: the policy (`policy` decides who may send a request; an upgrade
//! needs credentials even on a public path, see `Facts::upgrade`), nor the splice (`proxy`).
//! WebSockets over HTTP/2 (RFC 8441 extended CONNECT) are not enabled: the HTTP/2 server does
//! not advertise `SETTINGS_ENABLE_CONNECT_PROTOCOL`, so a `CONNECT` with `:protocol` never
//! arrives; if it is enabled later, [`classify`] is where it is validated (method CONNECT,
//! `:protocol = websocket`, `Sec-WebSocket-Version: 13`; no key and no 101: a 2xx agrees).

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};

use crate::error::ProxyError;

/// The GUID RFC 6455 §1.3 appends to the key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A validated WebSocket opening handshake: its `Sec-WebSocket-Key`, kept to check the 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WebSocketKey(HeaderValue);

impl WebSocketKey {
    /// The `Sec-WebSocket-Accept` a server that read this handshake must answer (RFC 6455
    /// §4.2.2: base64 of SHA-1 over key and GUID).
    fn accept(&self) -> String {
        let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
        ctx.update(self.0.as_bytes());
        ctx.update(WEBSOCKET_GUID);
        STANDARD.encode(ctx.finish().as_ref())
    }

    /// Whether the upstream's 101 answers this handshake: exactly `Upgrade: websocket`,
    /// `Connection` naming `upgrade`, and the right `Sec-WebSocket-Accept` (one line each).
    /// The accept value is what proves the upstream read a WebSocket handshake (and not, say,
    /// an `h2c` upgrade it was happy to take): a server that answers 101 to anything cannot
    /// produce it without hashing this very key.
    pub(crate) fn check_101(&self, response: &HeaderMap) -> Result<(), ProxyError> {
        let upgrade_ok = single(response, &header::UPGRADE)
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
        let connection_ok = connection_names(response, "upgrade");
        let accept_ok = single(response, &header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes().trim_ascii() == self.accept().as_bytes());
        if upgrade_ok && connection_ok && accept_ok {
            Ok(())
        } else {
            Err(ProxyError::BadUpgradeResponse)
        }
    }
}

/// What a request asks for: `Ok(None)` for plain HTTP, `Ok(Some(key))` for a valid WebSocket
/// opening handshake, or the refusal for any other upgrade (and for `CONNECT`).
pub(crate) fn classify<B: hyper::body::Body>(
    req: &Request<B>,
) -> Result<Option<WebSocketKey>, ProxyError> {
    if req.method() == Method::CONNECT {
        // A tunnel to anywhere (HTTP/1.1), or RFC 8441 if it were enabled: neither is served.
        return Err(ProxyError::UpgradeRefused);
    }
    let headers = req.headers();
    if !headers.contains_key(header::UPGRADE) {
        return Ok(None);
    }
    // Exactly one token, `websocket`: `h2c`, `TLS/1.0`, `websocket, h2c` and friends are not
    // spliced (hyper treats any `Upgrade` on HTTP/1.1 as an upgrade, `Connection` or not).
    let websocket = single(headers, &header::UPGRADE)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
    if !websocket {
        return Err(ProxyError::UpgradeRefused);
    }
    // RFC 6455 §4.1 (the client's requirements), checked as §4.2.1 tells a server to.
    let key = single(headers, &header::SEC_WEBSOCKET_KEY)
        .filter(|k| {
            STANDARD
                .decode(k.as_bytes().trim_ascii())
                .is_ok_and(|raw| raw.len() == 16)
        })
        .cloned();
    let version_ok = single(headers, &header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"13");
    let no_body = !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes().trim_ascii() == b"0")
        && req.body().is_end_stream();
    match key {
        Some(key)
            if req.version() == Version::HTTP_11
                && req.method() == Method::GET
                && connection_names(headers, "upgrade")
                && version_ok
                && no_body =>
        {
            let trimmed = HeaderValue::from_bytes(key.as_bytes().trim_ascii())
                .map_err(|_| ProxyError::BadWebSocketHandshake)?;
            Ok(Some(WebSocketKey(trimmed)))
        }
        _ => Err(ProxyError::BadWebSocketHandshake),
    }
}

/// The value of `name` if it appears on exactly one line.
fn single<'h>(headers: &'h HeaderMap, name: &header::HeaderName) -> Option<&'h HeaderValue> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// Whether a `Connection` line lists `token` (case-insensitive, comma-separated).
fn connection_names(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6455 §1.3's example.
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn request(method: &str, version: Version, headers: &[(&str, &str)]) -> Request<String> {
        let mut builder = Request::builder().method(method).uri("/api/websocket");
        builder = builder.version(version);
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        builder
            .body(String::new())
            .unwrap_or_else(|e| panic!("request: {e}"))
    }

    /// A valid handshake's headers with `changes` applied (an empty value removes the line).
    fn websocket(changes: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = [
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", KEY),
            ("sec-websocket-version", "13"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
        for (n, v) in changes {
            h.retain(|(name, _)| name != n);
            if !v.is_empty() {
                h.push(((*n).to_owned(), (*v).to_owned()));
            }
        }
        h
    }

    fn classify_with(
        method: &str,
        version: Version,
        h: &[(String, String)],
    ) -> Result<Option<WebSocketKey>, ProxyError> {
        let pairs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        classify(&request(method, version, &pairs))
    }

    #[test]
    fn a_valid_websocket_handshake_passes_and_plain_requests_are_plain() {
        let key = classify_with("GET", Version::HTTP_11, &websocket(&[]));
        assert_eq!(key, Ok(Some(WebSocketKey(HeaderValue::from_static(KEY)))));
        // Case-insensitive tokens, several Connection tokens (Firefox: "keep-alive, Upgrade").
        let h = websocket(&[
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
        ]);
        assert!(matches!(
            classify_with("GET", Version::HTTP_11, &h),
            Ok(Some(_))
        ));
        assert_eq!(classify_with("GET", Version::HTTP_11, &[]), Ok(None));
        assert_eq!(classify_with("POST", Version::HTTP_2, &[]), Ok(None));
    }

    #[test]
    fn every_other_upgrade_is_refused() {
        for upgrade in [
            "h2c",
            "TLS/1.0",
            "websocket, h2c",
            "h2c, websocket",
            "websocket2",
        ] {
            let h = websocket(&[("upgrade", upgrade)]);
            assert_eq!(
                classify_with("GET", Version::HTTP_11, &h),
                Err(ProxyError::UpgradeRefused),
                "{upgrade:?}"
            );
        }
        // An empty Upgrade line, and two Upgrade lines.
        let empty = vec![("upgrade".to_owned(), String::new())];
        assert_eq!(
            classify_with("GET", Version::HTTP_11, &empty),
            Err(ProxyError::UpgradeRefused)
        );
        let mut h = websocket(&[]);
        h.push(("upgrade".into(), "h2c".into()));
        assert_eq!(
            classify_with("GET", Version::HTTP_11, &h),
            Err(ProxyError::UpgradeRefused)
        );
        assert_eq!(
            classify_with("CONNECT", Version::HTTP_11, &[]),
            Err(ProxyError::UpgradeRefused)
        );
    }

    #[test]
    fn malformed_websocket_handshakes_are_refused() {
        let bad = [
            websocket(&[("connection", "keep-alive")]),
            websocket(&[("connection", "")]),
            websocket(&[("sec-websocket-key", "")]),
            websocket(&[("sec-websocket-key", "not base64!")]),
            websocket(&[("sec-websocket-key", "c2hvcnQ=")]),
            websocket(&[("sec-websocket-version", "8")]),
            websocket(&[("sec-websocket-version", "")]),
            websocket(&[("content-length", "5")]),
            websocket(&[("transfer-encoding", "chunked")]),
        ];
        for h in &bad {
            assert_eq!(
                classify_with("GET", Version::HTTP_11, h),
                Err(ProxyError::BadWebSocketHandshake),
                "{h:?}"
            );
        }
        assert_eq!(
            classify_with("POST", Version::HTTP_11, &websocket(&[])),
            Err(ProxyError::BadWebSocketHandshake)
        );
        assert_eq!(
            classify_with("GET", Version::HTTP_10, &websocket(&[])),
            Err(ProxyError::BadWebSocketHandshake)
        );
    }

    #[test]
    fn the_101_must_answer_this_key() {
        let key = WebSocketKey(HeaderValue::from_static(KEY));
        assert_eq!(key.accept(), ACCEPT);
        let response = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (n, v) in pairs {
                map.append(*n, HeaderValue::from_static(v));
            }
            map
        };
        let good = response(&[
            ("upgrade", "websocket"),
            ("connection", "Upgrade"),
            ("sec-websocket-accept", ACCEPT),
        ]);
        assert_eq!(key.check_101(&good), Ok(()));
        for bad in [
            response(&[("upgrade", "websocket"), ("connection", "Upgrade")]),
            response(&[
                ("upgrade", "h2c"),
                ("connection", "Upgrade"),
                ("sec-websocket-accept", ACCEPT),
            ]),
            response(&[("upgrade", "websocket"), ("sec-websocket-accept", ACCEPT)]),
            response(&[
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-accept", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            ]),
            response(&[
                ("upgrade", "websocket"),
                ("connection", "Upgrade"),
                ("sec-websocket-accept", ACCEPT),
                ("sec-websocket-accept", ACCEPT),
            ]),
        ] {
            assert_eq!(
                key.check_101(&bad),
                Err(ProxyError::BadUpgradeResponse),
                "{bad:?}"
            );
        }
    }
}
