//! Golden byte vectors: each one decodes to its value, its value encodes to it, and its hex
//! appears in `docs/protocol.md`, so neither the code nor the docs can drift.
//!
//! The hex is written by hand from the layouts in `docs/protocol.md`, spaces at field
//! boundaries; whitespace is ignored when comparing.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use proto::enroll::{EnrollRequest, EnrollResponse, Enrolled, Refusal};
use proto::{
    BodyKind, ClientInfo, CloseCode, Control, GoAway, Hello, MAX_HEAD_FRAME, Purpose, Reject,
    RejectCode, ResponseHead, StreamHeader, StreamKind, Welcome,
};

const HELLO: &str = "01 001a  01 0006 686f6d652d31 000e 646f6f726c6573732f302e312e30 00";
const HELLO_CHECK: &str = "01 001a  01 0006 686f6d652d31 000e 646f6f726c6573732f302e312e30 01";
const WELCOME: &str = "02 0017  01 0004 686f6d65 0006 686f6d652d31 00003a98 00000100";
const REJECT: &str = "03 0010  0003 000c 756e6b6e6f776e2073697465";
const PING: &str = "04 0008  0102030405060708";
const DRAIN: &str = "06 0000";
const GO_AWAY: &str = "07 000b  0001 0007 72657374617274";

const GET_IPV4: &str = "00000070
    01 00 000000000000002a
    0003 474554
    000d 2f612f2e2e2f623f783d253265
    0002
    0004 686f7374 000c 686f6d652e6578616d706c65
    0006 616363657074 0003 2a2f2a
    00
    04 c0000207 c738
    01 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
    05 70686f6e65";

const UPGRADE_IPV6: &str = "0000004b
    01 01 000000000000002b
    0003 474554
    000e 2f6170692f776562736f636b6574
    0001
    0007 75706772616465 0009 776562736f636b6574
    00
    06 20010db8000000000000000000000001 01bb
    00
    00";

const RESPONSE_101: &str = "0000002f
    01 0065
    0002
    0007 75706772616465 0009 776562736f636b6574
    000a 636f6e6e656374696f6e 0007 75706772616465
    02";

const RESPONSE_200: &str = "00000021
    01 00c8
    0001
    000e 636f6e74656e742d6c656e677468 0001 32
    01 0000000000000002";

const ENROLL_REQUEST: &str = "0000003f
    01 01
    000102030405060708090a0b0c0d0e0f
    0006 652e74657374
    0003 435352
    a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";

const ENROLLED: &str = "0000003f
    01 02
    04 686f6d65
    03 632d31
    01 65
    01 0a 652e746573743a343433
    0001 43
    0001 41
    a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf";

const ENROLL_REFUSED_USED: &str = "00000003 01 03 02";

fn mac() -> [u8; 32] {
    std::array::from_fn(|i| 0xa0 + i as u8)
}

fn enroll_request() -> EnrollRequest {
    EnrollRequest {
        code_id: std::array::from_fn(|i| i as u8),
        host: "e.test".into(),
        csr_pem: "CSR".into(),
        mac: mac(),
    }
}

fn enroll_response_vectors() -> Vec<(&'static str, EnrollResponse)> {
    vec![
        (
            ENROLLED,
            EnrollResponse::Enrolled(Enrolled {
                site: "home".into(),
                connector_id: "c-1".into(),
                server_name: "e".into(),
                edges: vec!["e.test:443".into()],
                cert_pem: "C".into(),
                tunnel_ca_pem: "A".into(),
                mac: mac(),
            }),
        ),
        (ENROLL_REFUSED_USED, EnrollResponse::Refused(Refusal::Used)),
    ]
}

#[test]
fn enroll_vectors_decode_and_encode() {
    let bytes = unhex(ENROLL_REQUEST);
    assert_eq!(
        EnrollRequest::decode(&bytes).unwrap(),
        Some((enroll_request(), bytes.len()))
    );
    let mut out = BytesMut::new();
    enroll_request().encode(&mut out).unwrap();
    assert_eq!(&out[..], &bytes[..]);
    for (hex, value) in enroll_response_vectors() {
        let bytes = unhex(hex);
        assert_eq!(
            EnrollResponse::decode(&bytes).unwrap(),
            Some((value.clone(), bytes.len()))
        );
        let mut out = BytesMut::new();
        value.encode(&mut out).unwrap();
        assert_eq!(&out[..], &bytes[..], "{value:?}");
    }
}

fn control_vectors() -> Vec<(&'static str, Control)> {
    vec![
        (
            HELLO,
            Control::Hello(Hello {
                version: 1,
                connector_id: "home-1".into(),
                software: "doorless/0.1.0".into(),
                purpose: Purpose::Serve,
            }),
        ),
        (
            HELLO_CHECK,
            Control::Hello(Hello {
                version: 1,
                connector_id: "home-1".into(),
                software: "doorless/0.1.0".into(),
                purpose: Purpose::Check,
            }),
        ),
        (
            WELCOME,
            Control::Welcome(Welcome {
                version: 1,
                site: "home".into(),
                connector_id: "home-1".into(),
                ping_interval_ms: 15_000,
                max_streams: 256,
            }),
        ),
        (
            REJECT,
            Control::Reject(Reject {
                code: RejectCode::UnknownSite,
                text: "unknown site".into(),
            }),
        ),
        (
            PING,
            Control::Ping {
                nonce: 0x0102_0304_0506_0708,
            },
        ),
        (DRAIN, Control::Drain),
        (
            GO_AWAY,
            Control::GoAway(GoAway {
                code: CloseCode::Shutdown,
                text: "restart".into(),
            }),
        ),
    ]
}

fn stream_header_vectors() -> Vec<(&'static str, StreamHeader)> {
    let fingerprint = std::array::from_fn(|i| u8::try_from(i).unwrap());
    vec![
        (
            GET_IPV4,
            StreamHeader {
                version: 1,
                kind: StreamKind::Http,
                request_id: 42,
                method: Bytes::from_static(b"GET"),
                target: Bytes::from_static(b"/a/../b?x=%2e"),
                headers: vec![
                    (
                        Bytes::from_static(b"host"),
                        Bytes::from_static(b"home.example"),
                    ),
                    (Bytes::from_static(b"accept"), Bytes::from_static(b"*/*")),
                ],
                body: BodyKind::Empty,
                client: ClientInfo {
                    addr: "192.0.2.7:51000".parse().unwrap(),
                    cert_fingerprint: Some(fingerprint),
                    device: "phone".into(),
                },
            },
        ),
        (
            UPGRADE_IPV6,
            StreamHeader {
                version: 1,
                kind: StreamKind::Upgrade,
                request_id: 43,
                method: Bytes::from_static(b"GET"),
                target: Bytes::from_static(b"/api/websocket"),
                headers: vec![(
                    Bytes::from_static(b"upgrade"),
                    Bytes::from_static(b"websocket"),
                )],
                body: BodyKind::Empty,
                client: ClientInfo {
                    addr: "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
                    cert_fingerprint: None,
                    device: String::new(),
                },
            },
        ),
    ]
}

fn response_head_vectors() -> Vec<(&'static str, ResponseHead)> {
    vec![
        (
            RESPONSE_101,
            ResponseHead {
                version: 1,
                status: 101,
                headers: vec![
                    (
                        Bytes::from_static(b"upgrade"),
                        Bytes::from_static(b"websocket"),
                    ),
                    (
                        Bytes::from_static(b"connection"),
                        Bytes::from_static(b"upgrade"),
                    ),
                ],
                body: BodyKind::Streamed,
            },
        ),
        (
            RESPONSE_200,
            ResponseHead {
                version: 1,
                status: 200,
                headers: vec![(
                    Bytes::from_static(b"content-length"),
                    Bytes::from_static(b"2"),
                )],
                body: BodyKind::Length(2),
            },
        ),
    ]
}

#[test]
fn control_vectors_decode_and_encode() {
    for (hex, value) in control_vectors() {
        let bytes = unhex(hex);
        assert_eq!(
            Control::decode(&bytes),
            Ok(Some((value.clone(), bytes.len()))),
            "{hex}"
        );
        let mut out = BytesMut::new();
        value.encode(&mut out).unwrap();
        assert_eq!(&out[..], &bytes[..], "{value:?}");
    }
}

#[test]
fn stream_header_vectors_decode_and_encode() {
    for (hex, value) in stream_header_vectors() {
        let bytes = unhex(hex);
        assert_eq!(
            StreamHeader::decode(&bytes, MAX_HEAD_FRAME),
            Ok(Some((value.clone(), bytes.len()))),
            "{hex}"
        );
        let mut out = BytesMut::new();
        value.encode(&mut out).unwrap();
        assert_eq!(&out[..], &bytes[..], "{value:?}");
    }
}

#[test]
fn response_head_vectors_decode_and_encode() {
    for (hex, value) in response_head_vectors() {
        let bytes = unhex(hex);
        assert_eq!(
            ResponseHead::decode(&bytes, MAX_HEAD_FRAME),
            Ok(Some((value.clone(), bytes.len()))),
            "{hex}"
        );
        let mut out = BytesMut::new();
        value.encode(&mut out).unwrap();
        assert_eq!(&out[..], &bytes[..], "{value:?}");
    }
}

#[test]
fn vectors_appear_in_protocol_md() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    let docs = std::fs::read_to_string(path).unwrap();
    let docs = strip_whitespace(&docs);
    let all = control_vectors()
        .into_iter()
        .map(|(hex, _)| hex)
        .chain(stream_header_vectors().into_iter().map(|(hex, _)| hex))
        .chain(response_head_vectors().into_iter().map(|(hex, _)| hex))
        .chain([ENROLL_REQUEST])
        .chain(enroll_response_vectors().into_iter().map(|(hex, _)| hex));
    for hex in all {
        assert!(
            docs.contains(&strip_whitespace(hex)),
            "docs/protocol.md lacks the vector {hex}"
        );
    }
}

/// The stream reset code table of docs/protocol.md names every code as the code does, so an
/// edge and a connector built from the spec agree on what a reset means.
#[test]
fn stream_error_codes_appear_in_protocol_md() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md");
    let docs = std::fs::read_to_string(path).unwrap();
    for code in 0..=7u32 {
        let error = proto::StreamError::from_code(code);
        assert!(!matches!(error, proto::StreamError::Unknown(_)), "{code}");
        let row = format!("| {code:#x} | `{}` |", error.name());
        assert!(
            docs.lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
                .any(|l| l.starts_with(&row)),
            "docs/protocol.md lacks the stream code row {row}"
        );
    }
}

fn strip_whitespace(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

fn unhex(hex: &str) -> Vec<u8> {
    let digits = strip_whitespace(hex);
    (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
        .collect()
}
