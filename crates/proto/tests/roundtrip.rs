//! Property tests: every message survives encode → decode, every strict prefix of an encoding
//! is "need more bytes", arbitrary input never panics, and `FrameBuffer` does not care how the
//! stream is chunked.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proto::codec::MIN_CONTROL_BUFFER;
use proto::{
    BodyKind, ClientInfo, CloseCode, Control, FrameBuffer, GoAway, Hello, MAX_HEAD_FRAME, Purpose,
    Reject, RejectCode, ResponseHead, StreamHeader, StreamKind, Welcome,
};

fn version() -> impl Strategy<Value = u8> {
    1..=proto::VERSION
}

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn raw(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn control() -> impl Strategy<Value = Control> {
    prop_oneof![
        (version(), text(), text(), any::<bool>()).prop_map(
            |(version, connector_id, software, check)| {
                Control::Hello(Hello {
                    version,
                    connector_id,
                    software,
                    purpose: if check {
                        Purpose::Check
                    } else {
                        Purpose::Serve
                    },
                })
            }
        ),
        (version(), text(), text(), any::<u32>(), any::<u32>()).prop_map(
            |(version, site, connector_id, ping_interval_ms, max_streams)| {
                Control::Welcome(Welcome {
                    version,
                    site,
                    connector_id,
                    ping_interval_ms,
                    max_streams,
                })
            }
        ),
        (any::<u16>(), text()).prop_map(|(code, text)| Control::Reject(Reject {
            code: RejectCode::from_code(code),
            text,
        })),
        any::<u64>().prop_map(|nonce| Control::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Control::Pong { nonce }),
        Just(Control::Drain),
        (any::<u16>(), text()).prop_map(|(code, text)| Control::GoAway(GoAway {
            code: CloseCode::from_code(u32::from(code)),
            text,
        })),
    ]
}

fn body() -> impl Strategy<Value = BodyKind> {
    prop_oneof![
        Just(BodyKind::Empty),
        any::<u64>().prop_map(BodyKind::Length),
        Just(BodyKind::Streamed),
    ]
}

fn headers() -> impl Strategy<Value = Vec<(Bytes, Bytes)>> {
    prop::collection::vec((raw(16), raw(64)), 0..8)
}

fn client() -> impl Strategy<Value = ClientInfo> {
    // Flow info and scope id are not carried, so they are generated as 0.
    let addr = prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(ip), port))),
        (any::<u128>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(ip),
            port,
            0,
            0
        ))),
    ];
    (addr, any::<Option<[u8; 32]>>(), ".{0,40}").prop_map(|(addr, cert_fingerprint, device)| {
        ClientInfo {
            addr,
            cert_fingerprint,
            device,
        }
    })
}

fn stream_header() -> impl Strategy<Value = StreamHeader> {
    let kind = prop_oneof![Just(StreamKind::Http), Just(StreamKind::Upgrade)];
    (
        (version(), kind, any::<u64>(), raw(32), raw(200)),
        (headers(), body(), client()),
    )
        .prop_map(
            |((version, kind, request_id, method, target), (headers, body, client))| StreamHeader {
                version,
                kind,
                request_id,
                method,
                target,
                headers,
                body,
                client,
            },
        )
}

fn response_head() -> impl Strategy<Value = ResponseHead> {
    (version(), 100..=999u16, headers(), body()).prop_map(|(version, status, headers, body)| {
        ResponseHead {
            version,
            status,
            headers,
            body,
        }
    })
}

proptest! {
    #[test]
    fn control_round_trips(msg in control()) {
        let mut out = BytesMut::new();
        msg.encode(&mut out).unwrap();
        prop_assert_eq!(Control::decode(&out), Ok(Some((msg, out.len()))));
        for end in 0..out.len() {
            prop_assert_eq!(Control::decode(&out[..end]), Ok(None));
        }
    }

    #[test]
    fn stream_header_round_trips(header in stream_header(), trailing in raw(8)) {
        let mut out = BytesMut::new();
        header.encode(&mut out).unwrap();
        let len = out.len();
        for end in 0..len {
            prop_assert_eq!(StreamHeader::decode(&out[..end], MAX_HEAD_FRAME), Ok(None));
        }
        // The body follows the head; decoding stops at the head's end.
        out.extend_from_slice(&trailing);
        prop_assert_eq!(StreamHeader::decode(&out, MAX_HEAD_FRAME), Ok(Some((header, len))));
    }

    #[test]
    fn response_head_round_trips(head in response_head(), trailing in raw(8)) {
        let mut out = BytesMut::new();
        head.encode(&mut out).unwrap();
        let len = out.len();
        for end in 0..len {
            prop_assert_eq!(ResponseHead::decode(&out[..end], MAX_HEAD_FRAME), Ok(None));
        }
        out.extend_from_slice(&trailing);
        prop_assert_eq!(ResponseHead::decode(&out, MAX_HEAD_FRAME), Ok(Some((head, len))));
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        proto::fuzzing::decode_control(&data);
        proto::fuzzing::decode_stream_header(&data);
        proto::fuzzing::decode_response_head(&data);
        proto::fuzzing::control_state(&data, std::time::Instant::now());
    }

    /// Arbitrary bytes behind a plausible frame header reach the payload decoders instead of
    /// stopping at the length check.
    #[test]
    fn arbitrary_payloads_never_panic(
        ty in 0..9u8,
        payload in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let len = u16::try_from(payload.len()).unwrap();
        let mut frame = vec![ty];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&payload);
        proto::fuzzing::decode_control(&frame);

        let mut head = (u32::from(len) + 1).to_be_bytes().to_vec();
        head.push(proto::VERSION);
        head.extend_from_slice(&payload);
        proto::fuzzing::decode_stream_header(&head);
        proto::fuzzing::decode_response_head(&head);
    }

    #[test]
    fn frame_buffer_ignores_chunking(
        msgs in prop::collection::vec(control(), 0..12),
        chunks in prop::collection::vec(1..64usize, 1..32),
    ) {
        let mut wire = BytesMut::new();
        for msg in &msgs {
            msg.encode(&mut wire).unwrap();
        }
        let mut frames = FrameBuffer::new(MIN_CONTROL_BUFFER);
        let mut decoded = Vec::new();
        let mut rest = &wire[..];
        // Cycle through the chunk sizes until the wire is exhausted.
        for size in chunks.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            frames.push(chunk).unwrap();
            while let Some(msg) = frames.next_control().unwrap() {
                decoded.push(msg);
            }
        }
        prop_assert_eq!(decoded, msgs);
        prop_assert_eq!(frames.buffered(), 0);
    }
}
