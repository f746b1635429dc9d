//! The control stream: its messages ([`Control`]), their framing, and the state machine each
//! side runs over them ([`ControlState`]).
//!
//! The connector opens the first bidirectional stream of the connection and sends [`Hello`];
//! the edge answers [`Welcome`] (the session is established) or [`Reject`] (it is over). Then
//! both sides ping each other to measure the round trip and to notice a silent peer, and
//! either side may announce [`Control::Drain`] or [`GoAway`] to shut down gracefully.
//!
//! A control frame is `type: u8 | len: u16 | payload[len]`, big-endian, with
//! `len <= MAX_CONTROL_PAYLOAD`. `docs/protocol.md` has every payload layout.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};

use crate::codec::{DecodeError, EncodeError, Reader, atomically, put_bytes16};
use crate::error::CloseCode;

/// The largest control frame payload, in bytes. Bigger frames are refused by both
/// [`Control::encode`] and [`Control::decode`].
pub const MAX_CONTROL_PAYLOAD: usize = 16 * 1024;

/// One message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Control {
    /// Connector → edge, first message: who is calling.
    Hello(Hello),
    /// Edge → connector: the session is established, with these settings.
    Welcome(Welcome),
    /// Edge → connector: the session is refused; the edge closes the connection next.
    Reject(Reject),
    /// Either way, once established: please answer with `Pong` carrying the same nonce.
    Ping {
        /// Chosen by the sender to match the answer to its question.
        nonce: u64,
    },
    /// The answer to a `Ping`.
    Pong {
        /// The nonce of the `Ping` being answered.
        nonce: u64,
    },
    /// The sender stops taking new work; streams in flight finish normally.
    Drain,
    /// The sender is about to close the connection.
    GoAway(GoAway),
}

/// Connector → edge, the first message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Hello {
    /// The protocol version the connector speaks (see [`crate::VERSION`]).
    pub version: u8,
    /// The connector's identity, as its certificate names it.
    pub connector_id: String,
    /// Free-form software name and version, for logs and metrics (e.g. "doorless-connector/0.1.0").
    pub software: String,
    /// Whether this connection will carry requests or only checks that it could.
    pub purpose: Purpose,
}

/// Why a connector opens a session. A u8 on the wire, after `software`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// 0: serve requests: the edge routes requests to this connection.
    Serve,
    /// 1: a self-check: the edge authenticates the connector and answers `Welcome` as it
    /// would for [`Purpose::Serve`], but never routes a request to the connection.
    Check,
}

/// Edge → connector: the session is established.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Welcome {
    /// The protocol version the edge speaks (see [`crate::VERSION`]).
    pub version: u8,
    /// The site this connector serves.
    pub site: String,
    /// The connector identity the edge registered, echoed back.
    pub connector_id: String,
    /// How often each side pings the other, in milliseconds; 0 disables pings.
    pub ping_interval_ms: u32,
    /// How many data streams the edge may open concurrently on this connection.
    pub max_streams: u32,
}

/// Edge → connector: the session is refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reject {
    /// Why, for the connector to act on.
    pub code: RejectCode,
    /// Why, for humans.
    pub text: String,
}

/// Why the edge refused a connector. A u16 on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectCode {
    /// 1: the connector's identity is not allowed.
    Unauthorized,
    /// 2: the connector's `Hello` version is not supported (or could not be decoded).
    UnsupportedVersion,
    /// 3: the connector's site is not configured on this edge.
    UnknownSite,
    /// 4: this connector identity already has a session, and the edge keeps the older one.
    Duplicate,
    /// 5: the edge is out of capacity; try again later.
    Overloaded,
    /// Any other value. `Other(1)` encodes as 1, which decodes as `Unauthorized`.
    Other(u16),
}

/// Either way: the sender is about to close the connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GoAway {
    /// The connection close code that will follow. A `u16` on the wire (every named code fits):
    /// encoding a code above `u16::MAX` fails with [`EncodeError::Invalid`].
    pub code: CloseCode,
    /// Why, for humans.
    pub text: String,
}

/// Which end of the tunnel a [`ControlState`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The public server; answers `Hello`.
    Edge,
    /// The home-side dialer; sends `Hello`.
    Connector,
}

/// What [`ControlState::handle`] tells its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlEvent {
    /// Edge: the connector said hello. The edge must call [`ControlState::accept`] or
    /// [`ControlState::reject`].
    HelloReceived(Hello),
    /// Connector: the edge welcomed us; the session is established.
    Welcomed(Welcome),
    /// Connector: the edge refused us. Terminal: close the connection.
    Rejected(Reject),
    /// The peer sent `Drain` (reported once): open no new streams towards it.
    PeerDraining,
    /// The peer is about to close the connection.
    PeerGoingAway(GoAway),
    /// A `Pong` matched our outstanding `Ping`: the measured round trip.
    Rtt(Duration),
}

/// Why the control stream failed. Every variant is terminal for the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The peer sent a message that is not allowed now, e.g. a `Ping` before `Welcome`, or a
    /// second `Hello`.
    #[error("unexpected control message: {0}")]
    UnexpectedMessage(&'static str),
    /// Nothing (not even a `Pong`) was received from the peer within the timeout, or the
    /// edge's `Hello` deadline passed.
    #[error("peer silent for longer than the timeout")]
    PeerTimeout,
    /// A message arrived after the session was rejected (by this edge, or by the peer edge);
    /// carries the reject text.
    #[error("session was rejected: {0}")]
    Rejected(String),
}

/// The control-stream state machine for either role.
///
/// Sans-IO in the quinn-proto style: feed it decoded messages with [`handle`](Self::handle)
/// and the passing of time with [`handle_timeout`](Self::handle_timeout); take what it wants to
/// send from [`poll_transmit`](Self::poll_transmit), and call `handle_timeout` again no later
/// than [`poll_timeout`](Self::poll_timeout). Every error is terminal.
///
/// Liveness: any received message refreshes the peer's deadline (`last received + timeout`;
/// at first, `creation + timeout`, which is also the edge's `Hello` deadline). Once
/// established, both sides ping every `Welcome::ping_interval_ms`, so the timeout should be a
/// few ping intervals long.
#[derive(Debug)]
pub struct ControlState {
    role: Role,
    phase: Phase,
    timeout: Duration,
    last_received: Instant,
    /// Present once established, unless the ping interval is 0.
    pinger: Option<Pinger>,
    rtt: Option<Duration>,
    peer_draining: bool,
    drain_queued: bool,
    go_away_queued: bool,
    transmit: VecDeque<Control>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Edge: waiting for the connector's `Hello`.
    AwaitHello,
    /// Edge: `Hello` received; waiting for the application to accept or reject it.
    AwaitDecision,
    /// Connector: `Hello` queued; waiting for `Welcome` or `Reject`.
    AwaitWelcome,
    /// `Welcome` sent (edge) or received (connector).
    Established,
    /// `Reject` sent (edge) or received (connector), with its text: nothing more happens.
    Rejected(String),
}

#[derive(Debug)]
struct Pinger {
    interval: Duration,
    /// `None` if `interval` added to now overflows `Instant`: no more pings.
    next: Option<Instant>,
    next_nonce: u64,
    /// The latest ping sent and not yet answered. A newer ping replaces it, so a pong that
    /// arrives later than one interval is ignored rather than measured.
    outstanding: Option<(u64, Instant)>,
}

// Control message types on the wire. 0 is reserved so that a zeroed buffer is never valid.
const HELLO: u8 = 0x01;
const WELCOME: u8 = 0x02;
const REJECT: u8 = 0x03;
const PING: u8 = 0x04;
const PONG: u8 = 0x05;
const DRAIN: u8 = 0x06;
const GO_AWAY: u8 = 0x07;

/// The frame header: `type: u8 | len: u16`.
const HEADER_LEN: usize = 3;

// === impl Control ===

impl Control {
    /// Appends this message as one frame to `out`. On error `out` is unchanged.
    ///
    /// Fields are encoded as they are (a `Hello` with version 9 encodes fine); only sizes are
    /// checked.
    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        atomically(out, |out| {
            out.put_u8(self.type_byte());
            let len_at = out.len();
            out.put_u16(0);
            self.encode_payload(out)?;
            let len = out.len() - len_at - 2;
            let len16 = u16::try_from(len)
                .ok()
                .filter(|_| len <= MAX_CONTROL_PAYLOAD)
                .ok_or(EncodeError::TooLarge {
                    what: "control payload",
                    len,
                    max: MAX_CONTROL_PAYLOAD,
                })?;
            out[len_at..len_at + 2].copy_from_slice(&len16.to_be_bytes());
            Ok(())
        })
    }

    /// Decodes one frame from the start of `buf`: `Ok(None)` if `buf` holds only part of it,
    /// otherwise the message and the number of bytes it took.
    pub fn decode(buf: &[u8]) -> Result<Option<(Self, usize)>, DecodeError> {
        let Some((&[ty, len_hi, len_lo], rest)) = buf.split_first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        if len > MAX_CONTROL_PAYLOAD {
            return Err(DecodeError::TooLarge {
                len,
                max: MAX_CONTROL_PAYLOAD,
            });
        }
        let Some(payload) = rest.get(..len) else {
            return Ok(None);
        };

        let mut r = Reader::new(payload);
        let msg = match ty {
            HELLO => Self::Hello(Hello {
                version: r.version()?,
                connector_id: r.string16("hello connector id")?,
                software: r.string16("hello software")?,
                purpose: Purpose::decode(r.u8("hello purpose")?)?,
            }),
            WELCOME => Self::Welcome(Welcome {
                version: r.version()?,
                site: r.string16("welcome site")?,
                connector_id: r.string16("welcome connector id")?,
                ping_interval_ms: r.u32("welcome ping interval")?,
                max_streams: r.u32("welcome max streams")?,
            }),
            REJECT => Self::Reject(Reject {
                code: RejectCode::from_code(r.u16("reject code")?),
                text: r.string16("reject text")?,
            }),
            PING => Self::Ping {
                nonce: r.u64("ping nonce")?,
            },
            PONG => Self::Pong {
                nonce: r.u64("pong nonce")?,
            },
            DRAIN => Self::Drain,
            GO_AWAY => Self::GoAway(GoAway {
                code: CloseCode::from_code(u32::from(r.u16("go away code")?)),
                text: r.string16("go away text")?,
            }),
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        Ok(Some((msg, HEADER_LEN + len)))
    }

    fn encode_payload(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Self::Hello(hello) => {
                out.put_u8(hello.version);
                put_bytes16(out, hello.connector_id.as_bytes(), "hello connector id")?;
                put_bytes16(out, hello.software.as_bytes(), "hello software")?;
                out.put_u8(hello.purpose.code());
            }
            Self::Welcome(welcome) => {
                out.put_u8(welcome.version);
                put_bytes16(out, welcome.site.as_bytes(), "welcome site")?;
                put_bytes16(out, welcome.connector_id.as_bytes(), "welcome connector id")?;
                out.put_u32(welcome.ping_interval_ms);
                out.put_u32(welcome.max_streams);
            }
            Self::Reject(reject) => {
                out.put_u16(reject.code.code());
                put_bytes16(out, reject.text.as_bytes(), "reject text")?;
            }
            Self::Ping { nonce } | Self::Pong { nonce } => out.put_u64(*nonce),
            Self::Drain => {}
            Self::GoAway(go_away) => {
                let code = u16::try_from(go_away.code.code())
                    .map_err(|_| EncodeError::Invalid("go away code (over u16)"))?;
                out.put_u16(code);
                put_bytes16(out, go_away.text.as_bytes(), "go away text")?;
            }
        }
        Ok(())
    }

    fn type_byte(&self) -> u8 {
        match self {
            Self::Hello(_) => HELLO,
            Self::Welcome(_) => WELCOME,
            Self::Reject(_) => REJECT,
            Self::Ping { .. } => PING,
            Self::Pong { .. } => PONG,
            Self::Drain => DRAIN,
            Self::GoAway(_) => GO_AWAY,
        }
    }
}

// === impl Purpose ===

impl Purpose {
    /// The code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::Serve => 0,
            Self::Check => 1,
        }
    }

    fn decode(code: u8) -> Result<Self, DecodeError> {
        match code {
            0 => Ok(Self::Serve),
            1 => Ok(Self::Check),
            other => Err(DecodeError::UnknownType(other)),
        }
    }
}

// === impl RejectCode ===

impl RejectCode {
    /// The code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::Unauthorized => 1,
            Self::UnsupportedVersion => 2,
            Self::UnknownSite => 3,
            Self::Duplicate => 4,
            Self::Overloaded => 5,
            Self::Other(code) => code,
        }
    }

    /// The code for a value on the wire; unknown values become `Other`.
    pub fn from_code(code: u16) -> Self {
        match code {
            1 => Self::Unauthorized,
            2 => Self::UnsupportedVersion,
            3 => Self::UnknownSite,
            4 => Self::Duplicate,
            5 => Self::Overloaded,
            other => Self::Other(other),
        }
    }
}

// === impl ControlState ===

impl ControlState {
    /// Connector side: queues `hello` for transmission immediately, and expects `Welcome` or
    /// `Reject` within `timeout` of `now`.
    pub fn connector(hello: Hello, now: Instant, timeout: Duration) -> Self {
        let mut state = Self::new(Role::Connector, Phase::AwaitWelcome, now, timeout);
        state.transmit.push_back(Control::Hello(hello));
        state
    }

    /// Edge side: waits for `Hello`, which must arrive within `timeout` of `now`.
    ///
    /// A `Hello` whose version this edge does not support fails to decode with
    /// [`DecodeError::UnsupportedVersion`]; the caller then answers with
    /// [`reject`](Self::reject) and [`RejectCode::UnsupportedVersion`].
    pub fn edge(now: Instant, timeout: Duration) -> Self {
        Self::new(Role::Edge, Phase::AwaitHello, now, timeout)
    }

    fn new(role: Role, phase: Phase, now: Instant, timeout: Duration) -> Self {
        Self {
            role,
            phase,
            timeout,
            last_received: now,
            pinger: None,
            rtt: None,
            peer_draining: false,
            drain_queued: false,
            go_away_queued: false,
            transmit: VecDeque::new(),
        }
    }

    /// Processes one message from the peer, received at `now`.
    pub fn handle(
        &mut self,
        msg: Control,
        now: Instant,
    ) -> Result<Option<ControlEvent>, ControlError> {
        if let Phase::Rejected(text) = &self.phase {
            return Err(ControlError::Rejected(text.clone()));
        }
        // Any message proves the peer alive. `max` keeps the deadline from moving back if the
        // caller's clock readings arrive out of order.
        self.last_received = self.last_received.max(now);

        let established = self.phase == Phase::Established;
        let event = match msg {
            Control::Hello(hello) => match (self.role, &self.phase) {
                (Role::Edge, Phase::AwaitHello) => {
                    self.phase = Phase::AwaitDecision;
                    Some(ControlEvent::HelloReceived(hello))
                }
                (Role::Edge, _) => return Err(ControlError::UnexpectedMessage("second hello")),
                (Role::Connector, _) => {
                    return Err(ControlError::UnexpectedMessage("hello sent to a connector"));
                }
            },
            Control::Welcome(welcome) => match (self.role, &self.phase) {
                (Role::Connector, Phase::AwaitWelcome) => {
                    self.establish(welcome.ping_interval_ms, now);
                    Some(ControlEvent::Welcomed(welcome))
                }
                (Role::Connector, _) => {
                    return Err(ControlError::UnexpectedMessage("second welcome"));
                }
                (Role::Edge, _) => {
                    return Err(ControlError::UnexpectedMessage("welcome sent to the edge"));
                }
            },
            Control::Reject(reject) => match (self.role, &self.phase) {
                (Role::Connector, Phase::AwaitWelcome) => {
                    self.phase = Phase::Rejected(reject.text.clone());
                    Some(ControlEvent::Rejected(reject))
                }
                (Role::Connector, _) => {
                    return Err(ControlError::UnexpectedMessage("reject after welcome"));
                }
                (Role::Edge, _) => {
                    return Err(ControlError::UnexpectedMessage("reject sent to the edge"));
                }
            },
            Control::Ping { .. } | Control::Pong { .. } if !established => {
                return Err(ControlError::UnexpectedMessage(
                    "ping or pong before the handshake completed",
                ));
            }
            Control::Ping { nonce } => {
                self.transmit.push_back(Control::Pong { nonce });
                None
            }
            Control::Pong { nonce } => self.pong(nonce, now),
            Control::Drain if self.peer_draining => None,
            Control::Drain => {
                self.peer_draining = true;
                Some(ControlEvent::PeerDraining)
            }
            Control::GoAway(go_away) => Some(ControlEvent::PeerGoingAway(go_away)),
        };
        Ok(event)
    }

    /// Edge, after [`ControlEvent::HelloReceived`]: queues `welcome` and starts pinging every
    /// `welcome.ping_interval_ms`. Does nothing in any other state.
    pub fn accept(&mut self, welcome: Welcome, now: Instant) {
        if self.role != Role::Edge || self.phase != Phase::AwaitDecision {
            return;
        }
        self.establish(welcome.ping_interval_ms, now);
        self.transmit.push_back(Control::Welcome(welcome));
    }

    /// Edge, before accepting: queues `reject`. The state is closed once it is transmitted:
    /// the caller sends it, then closes the connection. Does nothing in any other state.
    pub fn reject(&mut self, reject: Reject) {
        let deciding = matches!(self.phase, Phase::AwaitHello | Phase::AwaitDecision);
        if self.role != Role::Edge || !deciding {
            return;
        }
        self.phase = Phase::Rejected(reject.text.clone());
        self.transmit.push_back(Control::Reject(reject));
    }

    /// Either side: queues `Drain`, once; later calls do nothing.
    pub fn drain(&mut self) {
        if self.drain_queued || self.is_rejected() {
            return;
        }
        self.drain_queued = true;
        self.transmit.push_back(Control::Drain);
    }

    /// Either side: queues `go_away`, once; later calls do nothing. The caller closes the
    /// connection after transmitting it.
    pub fn go_away(&mut self, go_away: GoAway) {
        if self.go_away_queued || self.is_rejected() {
            return;
        }
        self.go_away_queued = true;
        self.transmit.push_back(Control::GoAway(go_away));
    }

    /// Advances time to `now`: queues a `Ping` when one is due, and fails with
    /// [`ControlError::PeerTimeout`] once `now` reaches the peer's deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ControlError> {
        if self.is_rejected() {
            return Ok(());
        }
        if self.peer_deadline().is_some_and(|deadline| now >= deadline) {
            return Err(ControlError::PeerTimeout);
        }
        if let Some(pinger) = &mut self.pinger
            && pinger.next.is_some_and(|next| now >= next)
        {
            let nonce = pinger.next_nonce;
            pinger.next_nonce = nonce.wrapping_add(1);
            pinger.outstanding = Some((nonce, now));
            pinger.next = now.checked_add(pinger.interval);
            self.transmit.push_back(Control::Ping { nonce });
        }
        Ok(())
    }

    /// Sends a ping at once instead of at the next interval, e.g. to check a peer suspected
    /// dead. Does nothing before the handshake completes or when pings are off.
    pub fn ping_now(&mut self, now: Instant) -> Result<(), ControlError> {
        if let Some(pinger) = &mut self.pinger {
            pinger.next = Some(now);
        }
        self.handle_timeout(now)
    }

    /// The next message to send on the control stream, in order.
    pub fn poll_transmit(&mut self) -> Option<Control> {
        self.transmit.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next; `None` if never.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_rejected() {
            return None;
        }
        let next_ping = self.pinger.as_ref().and_then(|pinger| pinger.next);
        match (self.peer_deadline(), next_ping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether `Welcome` was sent (edge) or received (connector).
    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// Whether the peer sent `Drain`.
    pub fn peer_draining(&self) -> bool {
        self.peer_draining
    }

    /// The latest measured round trip, if any `Ping` was answered yet.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt
    }

    /// Which end this state machine runs on.
    pub fn role(&self) -> Role {
        self.role
    }

    fn establish(&mut self, ping_interval_ms: u32, now: Instant) {
        self.phase = Phase::Established;
        let interval = Duration::from_millis(u64::from(ping_interval_ms));
        self.pinger = (!interval.is_zero()).then(|| Pinger {
            interval,
            next: now.checked_add(interval),
            next_nonce: 1,
            outstanding: None,
        });
    }

    fn pong(&mut self, nonce: u64, now: Instant) -> Option<ControlEvent> {
        let pinger = self.pinger.as_mut()?;
        match pinger.outstanding {
            Some((sent_nonce, sent_at)) if sent_nonce == nonce => {
                pinger.outstanding = None;
                let rtt = now.saturating_duration_since(sent_at);
                self.rtt = Some(rtt);
                Some(ControlEvent::Rtt(rtt))
            }
            // Unsolicited, duplicate or late: harmless, and it already refreshed liveness.
            _ => None,
        }
    }

    /// `None` if the timeout is so long that the deadline is not representable.
    fn peer_deadline(&self) -> Option<Instant> {
        self.last_received.checked_add(self.timeout)
    }

    fn is_rejected(&self) -> bool {
        matches!(self.phase, Phase::Rejected(_))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::codec::FrameBuffer;

    const TIMEOUT: Duration = Duration::from_secs(30);

    fn hello() -> Hello {
        Hello {
            version: crate::VERSION,
            connector_id: "home-1".into(),
            software: "test".into(),
            purpose: Purpose::Serve,
        }
    }

    fn welcome(ping_interval_ms: u32) -> Welcome {
        Welcome {
            version: crate::VERSION,
            site: "home".into(),
            connector_id: "home-1".into(),
            ping_interval_ms,
            max_streams: 100,
        }
    }

    fn reject() -> Reject {
        Reject {
            code: RejectCode::Unauthorized,
            text: "no".into(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Two state machines and one virtual clock; messages travel through the real codec.
    struct Pair {
        now: Instant,
        edge: ControlState,
        connector: ControlState,
        edge_events: Vec<ControlEvent>,
        connector_events: Vec<ControlEvent>,
    }

    impl Pair {
        fn new() -> Self {
            let now = Instant::now();
            Self {
                now,
                edge: ControlState::edge(now, TIMEOUT),
                connector: ControlState::connector(hello(), now, TIMEOUT),
                edge_events: Vec::new(),
                connector_events: Vec::new(),
            }
        }

        /// Delivers queued messages both ways, `latency` each, until both sides are quiet.
        fn drive(&mut self, latency: Duration) {
            loop {
                let to_edge = wire(&mut self.connector);
                let to_connector = wire(&mut self.edge);
                if to_edge.is_empty() && to_connector.is_empty() {
                    return;
                }
                self.now += latency;
                for msg in to_edge {
                    let event = self.edge.handle(msg, self.now).unwrap();
                    if let Some(ControlEvent::HelloReceived(_)) = event {
                        self.edge.accept(welcome(1000), self.now);
                    }
                    self.edge_events.extend(event);
                }
                for msg in to_connector {
                    let event = self.connector.handle(msg, self.now).unwrap();
                    self.connector_events.extend(event);
                }
            }
        }

        /// Advances the clock to the earliest timer of either side and fires it.
        fn step_timers(&mut self) {
            let next = [self.edge.poll_timeout(), self.connector.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap();
            self.now = self.now.max(next);
            self.edge.handle_timeout(self.now).unwrap();
            self.connector.handle_timeout(self.now).unwrap();
        }
    }

    /// Takes everything `state` wants to send, through encode and a `FrameBuffer`.
    fn wire(state: &mut ControlState) -> Vec<Control> {
        let mut bytes = BytesMut::new();
        while let Some(msg) = state.poll_transmit() {
            msg.encode(&mut bytes).unwrap();
        }
        let mut frames = FrameBuffer::new(crate::codec::MIN_CONTROL_BUFFER);
        frames.push(&bytes).unwrap();
        std::iter::from_fn(|| frames.next_control().unwrap()).collect()
    }

    #[test]
    fn handshake_then_ping_pong_both_ways() {
        let mut pair = Pair::new();
        assert!(!pair.edge.is_established() && !pair.connector.is_established());
        pair.drive(ms(10));
        assert!(pair.edge.is_established() && pair.connector.is_established());
        assert_eq!(pair.edge_events, [ControlEvent::HelloReceived(hello())]);
        assert_eq!(
            pair.connector_events,
            [ControlEvent::Welcomed(welcome(1000))]
        );

        // Both sides ping one interval after establishing; each sees a 20 ms round trip.
        pair.step_timers();
        pair.drive(ms(10));
        pair.step_timers();
        pair.drive(ms(10));
        assert_eq!(pair.edge_events.last(), Some(&ControlEvent::Rtt(ms(20))));
        assert_eq!(
            pair.connector_events.last(),
            Some(&ControlEvent::Rtt(ms(20)))
        );
        assert_eq!(pair.edge.rtt(), Some(ms(20)));
        assert_eq!(pair.connector.rtt(), Some(ms(20)));

        // Pings keep both alive far beyond the timeout.
        for _ in 0..200 {
            pair.step_timers();
            pair.drive(ms(10));
        }
        assert!(pair.edge.is_established() && pair.connector.is_established());
    }

    #[test]
    fn edge_hello_timeout() {
        let t0 = Instant::now();
        let mut edge = ControlState::edge(t0, TIMEOUT);
        assert_eq!(edge.poll_timeout(), Some(t0 + TIMEOUT));
        assert_eq!(edge.handle_timeout(t0 + TIMEOUT - ms(1)), Ok(()));
        assert_eq!(
            edge.handle_timeout(t0 + TIMEOUT),
            Err(ControlError::PeerTimeout)
        );
    }

    #[test]
    fn connector_welcome_timeout() {
        let t0 = Instant::now();
        let mut connector = ControlState::connector(hello(), t0, TIMEOUT);
        assert_eq!(connector.poll_transmit(), Some(Control::Hello(hello())));
        assert_eq!(connector.poll_transmit(), None);
        assert_eq!(
            connector.handle_timeout(t0 + TIMEOUT),
            Err(ControlError::PeerTimeout)
        );
    }

    #[test]
    fn silent_peer_times_out_despite_our_pings() {
        let t0 = Instant::now();
        let mut connector = ControlState::connector(hello(), t0, TIMEOUT);
        assert_eq!(connector.poll_transmit(), Some(Control::Hello(hello())));
        connector
            .handle(Control::Welcome(welcome(10_000)), t0 + ms(5))
            .unwrap();
        let mut now;
        let mut pings = 0;
        loop {
            now = connector.poll_timeout().unwrap();
            match connector.handle_timeout(now) {
                Ok(()) => {
                    pings += usize::from(matches!(
                        connector.poll_transmit(),
                        Some(Control::Ping { .. })
                    ))
                }
                Err(err) => {
                    assert_eq!(err, ControlError::PeerTimeout);
                    break;
                }
            }
        }
        assert_eq!(now, t0 + ms(5) + TIMEOUT);
        assert_eq!(pings, 2);
    }

    #[test]
    fn any_message_refreshes_liveness() {
        let t0 = Instant::now();
        let mut edge = ControlState::edge(t0, TIMEOUT);
        edge.handle(Control::Hello(hello()), t0 + ms(100)).unwrap();
        assert_eq!(edge.poll_timeout(), Some(t0 + ms(100) + TIMEOUT));
        edge.accept(welcome(0), t0 + ms(200));
        // Ping interval 0: no pings, only the liveness deadline.
        edge.handle(Control::Drain, t0 + ms(300)).unwrap();
        assert_eq!(edge.poll_timeout(), Some(t0 + ms(300) + TIMEOUT));
        edge.handle(Control::Pong { nonce: 99 }, t0 + ms(400))
            .unwrap();
        assert_eq!(edge.poll_timeout(), Some(t0 + ms(400) + TIMEOUT));
    }

    #[test]
    fn ping_is_answered_and_stray_pongs_ignored() {
        let t0 = Instant::now();
        let mut connector = ControlState::connector(hello(), t0, TIMEOUT);
        connector.poll_transmit();
        connector
            .handle(Control::Welcome(welcome(1000)), t0)
            .unwrap();
        assert_eq!(connector.handle(Control::Ping { nonce: 7 }, t0), Ok(None));
        assert_eq!(connector.poll_transmit(), Some(Control::Pong { nonce: 7 }));

        connector.handle_timeout(t0 + ms(1000)).unwrap();
        let Some(Control::Ping { nonce }) = connector.poll_transmit() else {
            panic!("expected a ping");
        };
        let stray = nonce.wrapping_add(1);
        assert_eq!(
            connector.handle(Control::Pong { nonce: stray }, t0 + ms(1001)),
            Ok(None)
        );
        assert_eq!(
            connector.handle(Control::Pong { nonce }, t0 + ms(1050)),
            Ok(Some(ControlEvent::Rtt(ms(50))))
        );
        // A duplicate of the answered pong is stray too.
        assert_eq!(
            connector.handle(Control::Pong { nonce }, t0 + ms(1060)),
            Ok(None)
        );
        assert_eq!(connector.rtt(), Some(ms(50)));
    }

    #[test]
    fn reject_flow() {
        let t0 = Instant::now();
        let mut edge = ControlState::edge(t0, TIMEOUT);
        let mut connector = ControlState::connector(hello(), t0, TIMEOUT);
        let hello_msg = connector.poll_transmit().unwrap();
        assert_eq!(
            edge.handle(hello_msg, t0),
            Ok(Some(ControlEvent::HelloReceived(hello())))
        );
        edge.reject(reject());
        // Accepting after rejecting does nothing; the reject is the last word.
        edge.accept(welcome(1000), t0);
        edge.drain();
        assert_eq!(edge.poll_transmit(), Some(Control::Reject(reject())));
        assert_eq!(edge.poll_transmit(), None);
        assert_eq!(edge.poll_timeout(), None);
        assert!(!edge.is_established());
        assert_eq!(
            edge.handle(Control::Drain, t0),
            Err(ControlError::Rejected("no".into()))
        );

        assert_eq!(
            connector.handle(Control::Reject(reject()), t0),
            Ok(Some(ControlEvent::Rejected(reject())))
        );
        assert_eq!(connector.poll_timeout(), None);
        assert_eq!(connector.handle_timeout(t0 + TIMEOUT), Ok(()));
        assert!(!connector.is_established());
    }

    #[test]
    fn edge_may_reject_before_hello_decodes() {
        // The transport's answer to a Hello that failed with UnsupportedVersion.
        let mut edge = ControlState::edge(Instant::now(), TIMEOUT);
        let reject = Reject {
            code: RejectCode::UnsupportedVersion,
            text: "upgrade the edge".into(),
        };
        edge.reject(reject.clone());
        assert_eq!(edge.poll_transmit(), Some(Control::Reject(reject)));
    }

    #[test]
    fn drain_and_go_away_are_idempotent() {
        let t0 = Instant::now();
        let mut edge = ControlState::edge(t0, TIMEOUT);
        edge.handle(Control::Hello(hello()), t0).unwrap();
        edge.accept(welcome(1000), t0);
        edge.drain();
        edge.drain();
        let go_away = GoAway {
            code: CloseCode::Shutdown,
            text: "bye".into(),
        };
        edge.go_away(go_away.clone());
        edge.go_away(go_away.clone());
        let sent: Vec<_> = std::iter::from_fn(|| edge.poll_transmit()).collect();
        assert_eq!(
            sent,
            [
                Control::Welcome(welcome(1000)),
                Control::Drain,
                Control::GoAway(go_away.clone())
            ]
        );

        assert!(!edge.peer_draining());
        assert_eq!(
            edge.handle(Control::Drain, t0),
            Ok(Some(ControlEvent::PeerDraining))
        );
        assert_eq!(edge.handle(Control::Drain, t0), Ok(None));
        assert!(edge.peer_draining());
        assert_eq!(
            edge.handle(Control::GoAway(go_away.clone()), t0),
            Ok(Some(ControlEvent::PeerGoingAway(go_away)))
        );
    }

    /// Where a state machine is when the unexpected message arrives.
    #[derive(Debug, Clone, Copy)]
    enum At {
        EdgeAwaitHello,
        EdgeAwaitDecision,
        EdgeEstablished,
        ConnectorAwaitWelcome,
        ConnectorEstablished,
    }

    fn state_at(at: At, t0: Instant) -> ControlState {
        let mut edge = ControlState::edge(t0, TIMEOUT);
        let mut connector = ControlState::connector(hello(), t0, TIMEOUT);
        match at {
            At::EdgeAwaitHello => edge,
            At::EdgeAwaitDecision | At::EdgeEstablished => {
                edge.handle(Control::Hello(hello()), t0).unwrap();
                if let At::EdgeEstablished = at {
                    edge.accept(welcome(1000), t0);
                }
                edge
            }
            At::ConnectorAwaitWelcome => connector,
            At::ConnectorEstablished => {
                connector
                    .handle(Control::Welcome(welcome(1000)), t0)
                    .unwrap();
                connector
            }
        }
    }

    #[test]
    fn unexpected_messages() {
        use ControlError::UnexpectedMessage as Unexpected;
        let before_handshake = Unexpected("ping or pong before the handshake completed");
        let cases = [
            (
                At::EdgeAwaitHello,
                Control::Ping { nonce: 1 },
                &before_handshake,
            ),
            (
                At::EdgeAwaitHello,
                Control::Pong { nonce: 1 },
                &before_handshake,
            ),
            (
                At::EdgeAwaitDecision,
                Control::Ping { nonce: 1 },
                &before_handshake,
            ),
            (
                At::ConnectorAwaitWelcome,
                Control::Ping { nonce: 1 },
                &before_handshake,
            ),
            (
                At::EdgeAwaitDecision,
                Control::Hello(hello()),
                &Unexpected("second hello"),
            ),
            (
                At::EdgeEstablished,
                Control::Hello(hello()),
                &Unexpected("second hello"),
            ),
            (
                At::EdgeAwaitHello,
                Control::Welcome(welcome(1)),
                &Unexpected("welcome sent to the edge"),
            ),
            (
                At::EdgeEstablished,
                Control::Reject(reject()),
                &Unexpected("reject sent to the edge"),
            ),
            (
                At::ConnectorAwaitWelcome,
                Control::Hello(hello()),
                &Unexpected("hello sent to a connector"),
            ),
            (
                At::ConnectorEstablished,
                Control::Welcome(welcome(1)),
                &Unexpected("second welcome"),
            ),
            (
                At::ConnectorEstablished,
                Control::Reject(reject()),
                &Unexpected("reject after welcome"),
            ),
        ];
        let t0 = Instant::now();
        for (at, msg, expected) in cases {
            let mut state = state_at(at, t0);
            assert_eq!(
                state.handle(msg.clone(), t0).as_ref(),
                Err(expected),
                "{at:?} {msg:?}"
            );
        }
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let t0 = Instant::now();
        let mut edge = ControlState::edge(t0, Duration::MAX);
        assert_eq!(edge.poll_timeout(), None);
        edge.handle(Control::Hello(hello()), t0).unwrap();
        edge.accept(welcome(u32::MAX), t0);
        assert_eq!(edge.handle_timeout(t0 + ms(1)), Ok(()));
        assert!(edge.poll_timeout().is_some());
    }

    #[test]
    fn control_codec_rules() {
        // Oversized frame: refused from the 3-byte header alone.
        assert_eq!(
            Control::decode(&[PING, 0x40, 0x01]),
            Err(DecodeError::TooLarge {
                len: MAX_CONTROL_PAYLOAD + 1,
                max: MAX_CONTROL_PAYLOAD
            })
        );
        assert_eq!(
            Control::decode(&[0, 0, 0]),
            Err(DecodeError::UnknownType(0))
        );
        assert_eq!(
            Control::decode(&[PING, 0, 1, 0]),
            Err(DecodeError::Malformed("ping nonce"))
        );
        assert_eq!(
            Control::decode(&[DRAIN, 0, 1, 0]),
            Err(DecodeError::Malformed("trailing bytes in frame"))
        );
        assert_eq!(
            Control::decode(&[HELLO, 0, 1, 2]),
            Err(DecodeError::UnsupportedVersion(2))
        );
        // The frame ends where its length says; the rest is the next frame's.
        assert_eq!(
            Control::decode(&[DRAIN, 0, 0, DRAIN]),
            Ok(Some((Control::Drain, 3)))
        );

        let mut out = BytesMut::from(&b"keep"[..]);
        let huge = Control::GoAway(GoAway {
            code: CloseCode::Normal,
            text: "x".repeat(MAX_CONTROL_PAYLOAD),
        });
        assert_eq!(
            huge.encode(&mut out),
            Err(EncodeError::TooLarge {
                what: "control payload",
                len: MAX_CONTROL_PAYLOAD + 4,
                max: MAX_CONTROL_PAYLOAD
            })
        );
        assert_eq!(&out[..], b"keep");

        // A close code is a u32, but GoAway carries a u16: a wider one does not encode.
        let wide = Control::GoAway(GoAway {
            code: CloseCode::Unknown(0x1_0000),
            text: String::new(),
        });
        assert_eq!(
            wide.encode(&mut out),
            Err(EncodeError::Invalid("go away code (over u16)"))
        );
        assert_eq!(&out[..], b"keep");
    }

    #[test]
    fn reject_codes() {
        for code in 0..=6 {
            assert_eq!(RejectCode::from_code(code).code(), code);
        }
        assert_eq!(RejectCode::from_code(4), RejectCode::Duplicate);
        assert_eq!(RejectCode::from_code(9), RejectCode::Other(9));
    }
}
