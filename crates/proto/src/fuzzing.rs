//! The bodies of the fuzz targets in `crates/proto/fuzz`, here so that the corpus replay test
//! (`tests/corpus.rs`) runs the very same code on stable Rust.
//!
//! Each function takes arbitrary bytes and panics only if it finds a bug: a decoder that
//! panics, an encoding that does not round-trip, a state machine that asks to be woken in the
//! past.

use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::codec::{FrameBuffer, MIN_CONTROL_BUFFER};
use crate::control::{
    Control, ControlEvent, ControlState, GoAway, Hello, Reject, RejectCode, Welcome,
};
use crate::stream::{MAX_HEAD_FRAME, ResponseHead, StreamHeader};

/// Decodes control frames from `data`, directly and through a [`FrameBuffer`] fed in two
/// pieces; both must agree, and every decoded frame must re-encode to the same bytes.
pub fn decode_control(data: &[u8]) {
    let mut direct = Vec::new();
    let mut rest = data;
    let direct_end = loop {
        match Control::decode(rest) {
            Ok(Some((msg, consumed))) => {
                let mut out = BytesMut::new();
                assert_eq!(msg.encode(&mut out), Ok(()));
                assert_eq!(Some(&out[..]), rest.get(..consumed));
                direct.push(msg);
                rest = rest.get(consumed..).unwrap_or_default();
            }
            Ok(None) => break Ok(()),
            Err(err) => break Err(err),
        }
    };

    let (first, second) = data.split_at(data.len() / 2);
    let mut frames = FrameBuffer::new(MIN_CONTROL_BUFFER + data.len());
    let mut buffered = Vec::new();
    assert_eq!(frames.push(first), Ok(()));
    let mut pushed_all = false;
    let buffered_end = loop {
        match frames.next_control() {
            Ok(Some(msg)) => buffered.push(msg),
            Ok(None) if !pushed_all => {
                pushed_all = true;
                assert_eq!(frames.push(second), Ok(()));
            }
            Ok(None) => break Ok(()),
            Err(err) => break Err(err),
        }
    };
    assert_eq!(direct, buffered);
    assert_eq!(direct_end, buffered_end);
    if direct_end.is_ok() {
        assert_eq!(frames.buffered(), rest.len());
    }
}

/// Decodes a [`StreamHeader`] with the default and a small maximum; a decoded header must
/// re-encode to the same bytes.
pub fn decode_stream_header(data: &[u8]) {
    for max in [MAX_HEAD_FRAME, 64] {
        if let Ok(Some((header, consumed))) = StreamHeader::decode(data, max) {
            let mut out = BytesMut::new();
            assert_eq!(header.encode(&mut out), Ok(()));
            assert_eq!(Some(&out[..]), data.get(..consumed));
        }
    }
}

/// Decodes a [`ResponseHead`] with the default and a small maximum; a decoded head must
/// re-encode to the same bytes.
pub fn decode_response_head(data: &[u8]) {
    for max in [MAX_HEAD_FRAME, 16] {
        if let Ok(Some((head, consumed))) = ResponseHead::decode(data, max) {
            let mut out = BytesMut::new();
            assert_eq!(head.encode(&mut out), Ok(()));
            assert_eq!(Some(&out[..]), data.get(..consumed));
        }
    }
}

/// Drives a [`ControlState`] with a script read from `data`, on a virtual clock starting at
/// `start`.
///
/// The first byte picks the role (even: edge, odd: connector) and the timeout (`byte × 100`
/// ms). Then each op byte, modulo 4: 0 = advance the clock by the next byte × 10 ms and call
/// `handle_timeout`; 1 = decode a control frame from what follows and `handle` it (the edge
/// accepts a `Hello` whose connector id is non-empty and rejects the others); 2 = `drain`;
/// 3 = `go_away`. The script ends at the first error.
pub fn control_state(data: &[u8], start: Instant) {
    let Some((&setup, mut script)) = data.split_first() else {
        return;
    };
    let timeout = Duration::from_millis(u64::from(setup) * 100);
    let mut state = if setup % 2 == 0 {
        ControlState::edge(start, timeout)
    } else {
        let hello = Hello {
            version: crate::VERSION,
            connector_id: "fuzz".into(),
            software: "fuzz".into(),
            purpose: crate::Purpose::Serve,
        };
        ControlState::connector(hello, start, timeout)
    };
    let mut now = start;

    while let Some((&op, rest)) = script.split_first() {
        script = rest;
        match op % 4 {
            0 => {
                let (&step, rest) = script.split_first().unwrap_or((&0, &[]));
                script = rest;
                now += Duration::from_millis(u64::from(step) * 10);
                if state.handle_timeout(now).is_err() {
                    return;
                }
                // The caller sleeps until `poll_timeout`: it must lie in the future, or the
                // caller would spin.
                assert!(state.poll_timeout().is_none_or(|next| next > now));
            }
            1 => {
                let Ok(Some((msg, consumed))) = Control::decode(script) else {
                    return;
                };
                script = script.get(consumed..).unwrap_or_default();
                match state.handle(msg, now) {
                    Ok(Some(ControlEvent::HelloReceived(hello))) => {
                        answer_hello(&mut state, &hello, now);
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
            2 => state.drain(),
            _ => state.go_away(GoAway {
                code: crate::CloseCode::Shutdown,
                text: "fuzz".into(),
            }),
        }
        while let Some(msg) = state.poll_transmit() {
            assert_eq!(msg.encode(&mut BytesMut::new()), Ok(()));
        }
    }
}

fn answer_hello(state: &mut ControlState, hello: &Hello, now: Instant) {
    if hello.connector_id.is_empty() {
        state.reject(Reject {
            code: RejectCode::Unauthorized,
            text: "fuzz".into(),
        });
        return;
    }
    let welcome = Welcome {
        version: crate::VERSION,
        site: "fuzz".into(),
        connector_id: hello.connector_id.clone(),
        ping_interval_ms: 1000,
        max_streams: 10,
    };
    state.accept(welcome, now);
    assert!(state.is_established());
}
