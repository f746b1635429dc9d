//! Between steps 5 and 6 of the request path: which protocol upgrades may pass. Only one, the
//! WebSocket, asked for in either of its two ways:
//! - HTTP/1.1: the opening handshake of RFC 6455 §4 (`GET`, `Upgrade: websocket`, a
//!   `Sec-WebSocket-Key`), answered with the upstream's 101;
//! - HTTP/2: extended CONNECT (RFC 8441: `CONNECT` with `:protocol = websocket` on a
//!   connection where we sent `SETTINGS_ENABLE_CONNECT_PROTOCOL`), answered with a 200 once the
//!   upstream's 101 came.
//!
//! Either way the tunnel and Home Assistant see one thing, an HTTP/1.1 opening handshake: for
//! extended CONNECT the edge makes it (`GET`, `Upgrade: websocket`, a fresh
//! `Sec-WebSocket-Key`), so Home Assistant needs no HTTP/2 and the connector no second path.
//! Everything else that asks to switch protocols (`h2c`, `TLS/1.0`, several tokens, a
//! malformed handshake, plain `CONNECT`, a `:protocol` other than `websocket`) is refused
//! here, before anything is forwarded.
//!
//! Why this matters: after the switch the edge splices raw bytes. Whatever the client sends
//! next reaches Home Assistant without passing the request path (Host check, header cleanup,
//! credentials). A WebSocket after a verified handshake carries WebSocket frames to the one
//! endpoint that accepted them; an `h2c` upgrade would carry whole new requests past every
//! check.
//!
//! The other half is [`WebSocket::check_answer`]: `proxy` splices only when the upstream's
//! 101 agrees (`Upgrade: websocket`, `Connection: upgrade`, and the `Sec-WebSocket-Accept`
//! derived from the key it was sent), so an upstream that answers 101 to anything cannot turn
//! a connection into a raw pipe; and an extended CONNECT is never answered 2xx (which opens
//! the tunnel in HTTP/2) unless that 101 came.
//!
//! What this module is not: the policy (`policy` decides who may send a request; an upgrade
//! needs credentials even on a public path, see `Facts::upgrade`), nor the splice (`proxy`).

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};

use crate::error::ProxyError;

/// The GUID RFC 6455 §1.3 appends to the key before hashing.
const WEBSOCKET_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A validated WebSocket request: how the client asked, and the key the upstream's 101 must
/// answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WebSocket {
    /// The `Sec-WebSocket-Key` sent upstream: the client's own (HTTP/1.1, whose client checks
    /// the accept value itself), or one the edge made (HTTP/2, where the client sends none).
    key: WebSocketKey,
    /// How the client asked, so how it is answered.
    handshake: Handshake,
}

/// The two ways a client asks for a WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// RFC 6455 on HTTP/1.1: the upstream's 101 is relayed, then the connection is spliced.
    Http1,
    /// RFC 8441 extended CONNECT on an HTTP/2 stream: answered 200, then the stream is spliced.
    ExtendedConnect,
}

/// A `Sec-WebSocket-Key` (16 bytes, base64).
#[derive(Debug, Clone, PartialEq, Eq)]
struct WebSocketKey(HeaderValue);

impl WebSocketKey {
    /// A fresh key for an extended CONNECT. RFC 6455 §4.1 asks for a random nonce per
    /// connection; it protects intermediaries' caches, it is no secret. (aws-lc aborts rather
    /// than hand out weak randomness, so an error here cannot mean a predictable key.)
    fn fresh() -> Self {
        let mut nonce = [0u8; 16];
        let _ = aws_lc_rs::rand::fill(&mut nonce);
        let encoded = STANDARD.encode(nonce);
        // Base64 is visible ASCII, always a valid header value: the fallback cannot happen,
        // and would only fail closed (no 101 answers an empty key).
        Self(HeaderValue::from_str(&encoded).unwrap_or(HeaderValue::from_static("")))
    }

    /// The `Sec-WebSocket-Accept` a server that read this handshake must answer (RFC 6455
    /// §4.2.2: base64 of SHA-1 over key and GUID).
    fn accept(&self) -> String {
        let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
        ctx.update(self.0.as_bytes());
        ctx.update(WEBSOCKET_GUID);
        STANDARD.encode(ctx.finish().as_ref())
    }
}

impl WebSocket {
    /// How the client asked.
    pub(crate) fn handshake(&self) -> Handshake {
        self.handshake
    }

    /// The `Sec-WebSocket-Key` to send upstream.
    pub(crate) fn key(&self) -> &HeaderValue {
        &self.key.0
    }

    /// Whether the upstream's answer (`status`, `response` headers) may be relayed, and if it
    /// is a 101, spliced.
    ///
    /// A 101 must be exactly `Upgrade: websocket`, `Connection` naming `upgrade`, and the
    /// right `Sec-WebSocket-Accept` (one line each). The accept value is what proves the
    /// upstream read a WebSocket handshake (and not, say, an `h2c` upgrade it was happy to
    /// take): a server that answers 101 to anything cannot produce it without hashing this
    /// very key.
    ///
    /// Any other answer is relayed as it is (a 403, a 404: the upstream declined), except a
    /// 2xx to an extended CONNECT: in HTTP/2 a 2xx *is* the switch (RFC 8441 §5), and without
    /// a 101 behind it there is nothing to splice.
    pub(crate) fn check_answer(
        &self,
        status: StatusCode,
        response: &HeaderMap,
    ) -> Result<(), ProxyError> {
        if status != StatusCode::SWITCHING_PROTOCOLS {
            return match self.handshake {
                Handshake::ExtendedConnect if status.is_success() => {
                    Err(ProxyError::BadUpgradeResponse)
                }
                _ => Ok(()),
            };
        }
        let upgrade_ok = single(response, &header::UPGRADE)
            .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
        let connection_ok = connection_names(response, "upgrade");
        let accept_ok = single(response, &header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|v| v.as_bytes().trim_ascii() == self.key.accept().as_bytes());
        if upgrade_ok && connection_ok && accept_ok {
            Ok(())
        } else {
            Err(ProxyError::BadUpgradeResponse)
        }
    }

    /// Turns the upstream's checked 101 into what this client expects: unchanged for
    /// HTTP/1.1; for extended CONNECT a 200 without the HTTP/1.1 handshake's headers
    /// (`Upgrade` and `Connection` are connection-specific, forbidden in HTTP/2, and the
    /// accept value answers our key, not anything the client sent). `Sec-WebSocket-Protocol`
    /// and `-Extensions` stay: they are the WebSocket's, whichever HTTP carries it.
    pub(crate) fn answer<B>(&self, response: &mut Response<B>) {
        if self.handshake == Handshake::ExtendedConnect {
            *response.status_mut() = StatusCode::OK;
            let headers = response.headers_mut();
            headers.remove(header::UPGRADE);
            headers.remove(header::CONNECTION);
            headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        }
    }
}

/// What a request asks for: `Ok(None)` for plain HTTP, `Ok(Some(websocket))` for a valid
/// WebSocket request (either kind), or the refusal for any other upgrade (and for `CONNECT`
/// that is not an extended CONNECT for `websocket`).
pub(crate) fn classify<B: hyper::body::Body>(
    req: &Request<B>,
) -> Result<Option<WebSocket>, ProxyError> {
    if req.method() == Method::CONNECT {
        // `:protocol` reaches us only over HTTP/2 (hyper turns it into this extension); a
        // CONNECT without it is a tunnel to anywhere, which is never served.
        return match req.extensions().get::<hyper::ext::Protocol>() {
            Some(protocol)
                if protocol
                    .as_str()
                    .as_bytes()
                    .eq_ignore_ascii_case(b"websocket") =>
            {
                extended_connect(req).map(Some)
            }
            _ => Err(ProxyError::UpgradeRefused),
        };
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
    match key {
        Some(key)
            if req.version() == Version::HTTP_11
                && req.method() == Method::GET
                && connection_names(headers, "upgrade")
                && version_13(headers)
                && no_body(req) =>
        {
            let trimmed = HeaderValue::from_bytes(key.as_bytes().trim_ascii())
                .map_err(|_| ProxyError::BadWebSocketHandshake)?;
            Ok(Some(WebSocket {
                key: WebSocketKey(trimmed),
                handshake: Handshake::Http1,
            }))
        }
        _ => Err(ProxyError::BadWebSocketHandshake),
    }
}

/// RFC 8441 §4–5: an extended CONNECT for `websocket` must be HTTP/2 (hyper and h2 already
/// demand `:scheme` and `:path`), carry `Sec-WebSocket-Version: 13`, and no body before the
/// switch. Its `Sec-WebSocket-Key`, if a client sent one anyway, is never used.
fn extended_connect<B: hyper::body::Body>(req: &Request<B>) -> Result<WebSocket, ProxyError> {
    if req.version() == Version::HTTP_2
        && req.uri().path_and_query().is_some()
        && version_13(req.headers())
        && no_body(req)
    {
        Ok(WebSocket {
            key: WebSocketKey::fresh(),
            handshake: Handshake::ExtendedConnect,
        })
    } else {
        Err(ProxyError::BadWebSocketHandshake)
    }
}

/// Exactly one `Sec-WebSocket-Version`, and it is 13.
fn version_13(headers: &HeaderMap) -> bool {
    single(headers, &header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes().trim_ascii() == b"13")
}

/// No body announced or pending: whatever follows the handshake is the WebSocket's.
fn no_body<B: hyper::body::Body>(req: &Request<B>) -> bool {
    let headers = req.headers();
    !headers.contains_key(header::TRANSFER_ENCODING)
        && headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes().trim_ascii() == b"0")
        && req.body().is_end_stream()
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
    ) -> Result<Option<WebSocket>, ProxyError> {
        let pairs: Vec<(&str, &str)> = h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        classify(&request(method, version, &pairs))
    }

    #[test]
    fn a_valid_websocket_handshake_passes_and_plain_requests_are_plain() {
        let key = classify_with("GET", Version::HTTP_11, &websocket(&[]));
        assert_eq!(key, Ok(Some(http1(KEY))));
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

    fn http1(key: &'static str) -> WebSocket {
        WebSocket {
            key: WebSocketKey(HeaderValue::from_static(key)),
            handshake: Handshake::Http1,
        }
    }

    #[test]
    fn the_101_must_answer_this_key() {
        let key = http1(KEY);
        assert_eq!(key.key.accept(), ACCEPT);
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
        assert_eq!(
            key.check_answer(StatusCode::SWITCHING_PROTOCOLS, &good),
            Ok(())
        );
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
                key.check_answer(StatusCode::SWITCHING_PROTOCOLS, &bad),
                Err(ProxyError::BadUpgradeResponse),
                "{bad:?}"
            );
        }
        // Any other answer is the upstream declining; relayed as it is.
        for status in [StatusCode::OK, StatusCode::FORBIDDEN, StatusCode::NOT_FOUND] {
            assert_eq!(key.check_answer(status, &HeaderMap::new()), Ok(()));
        }
    }

    /// An extended CONNECT (RFC 8441) as hyper hands it over: HTTP/2, `CONNECT`, `:protocol`
    /// in the extensions.
    fn extended(protocol: Option<&'static str>, headers: &[(&str, &str)]) -> Request<String> {
        let mut builder = Request::builder()
            .method("CONNECT")
            .uri("https://ha.example/api/websocket")
            .version(Version::HTTP_2);
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        if let Some(p) = protocol {
            builder = builder.extension(hyper::ext::Protocol::from_static(p));
        }
        builder
            .body(String::new())
            .unwrap_or_else(|e| panic!("request: {e}"))
    }

    #[test]
    fn extended_connect_for_websocket_passes_with_a_fresh_key() {
        let version = [("sec-websocket-version", "13")];
        let Ok(Some(first)) = classify(&extended(Some("websocket"), &version)) else {
            panic!("refused");
        };
        assert_eq!(first.handshake(), Handshake::ExtendedConnect);
        let raw = STANDARD
            .decode(first.key().as_bytes())
            .unwrap_or_else(|e| panic!("key: {e}"));
        assert_eq!(raw.len(), 16);
        // Fresh per request; a key the client sent is not used.
        let with_key = [("sec-websocket-version", "13"), ("sec-websocket-key", KEY)];
        let Ok(Some(second)) = classify(&extended(Some("websocket"), &with_key)) else {
            panic!("refused");
        };
        assert_ne!(first.key(), second.key());
        assert_ne!(second.key().as_bytes(), KEY.as_bytes());
    }

    #[test]
    fn other_extended_connects_are_refused() {
        let version = [("sec-websocket-version", "13")];
        for protocol in [None, Some("connect-udp"), Some("webtransport"), Some("h2c")] {
            assert_eq!(
                classify(&extended(protocol, &version)),
                Err(ProxyError::UpgradeRefused),
                "{protocol:?}"
            );
        }
        for headers in [
            &[][..],
            &[("sec-websocket-version", "8")][..],
            &[
                ("sec-websocket-version", "13"),
                ("sec-websocket-version", "13"),
            ][..],
            &[("sec-websocket-version", "13"), ("content-length", "3")][..],
        ] {
            assert_eq!(
                classify(&extended(Some("websocket"), headers)),
                Err(ProxyError::BadWebSocketHandshake),
                "{headers:?}"
            );
        }
        // `:protocol` on anything but HTTP/2 cannot come from hyper; refused all the same.
        let mut http1 = extended(Some("websocket"), &version);
        *http1.version_mut() = Version::HTTP_11;
        assert_eq!(classify(&http1), Err(ProxyError::BadWebSocketHandshake));
    }

    #[test]
    fn an_extended_connect_is_answered_200_only_after_a_101() {
        let Ok(Some(ws)) = classify(&extended(
            Some("websocket"),
            &[("sec-websocket-version", "13")],
        )) else {
            panic!("refused");
        };
        let mut good = HeaderMap::new();
        good.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        good.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        let accept = HeaderValue::from_str(&ws.key.accept()).unwrap_or_else(|e| panic!("{e}"));
        good.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        good.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("chat"),
        );
        assert_eq!(
            ws.check_answer(StatusCode::SWITCHING_PROTOCOLS, &good),
            Ok(())
        );
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.headers_mut() = good;
        ws.answer(&mut response);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response
                .headers()
                .keys()
                .map(|k| k.as_str())
                .collect::<Vec<_>>(),
            ["sec-websocket-protocol"]
        );
        // A 2xx without the 101 would open the stream with nothing behind it.
        for status in [StatusCode::OK, StatusCode::NO_CONTENT] {
            assert_eq!(
                ws.check_answer(status, &HeaderMap::new()),
                Err(ProxyError::BadUpgradeResponse)
            );
        }
        assert_eq!(
            ws.check_answer(StatusCode::FORBIDDEN, &HeaderMap::new()),
            Ok(())
        );
        // The HTTP/1.1 answer is the upstream's 101 as it is.
        let h1 = http1(KEY);
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h1.answer(&mut response);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers().len(), 1);
    }
}
