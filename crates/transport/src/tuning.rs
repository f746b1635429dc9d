//! Transport knobs, shared by both ends, with the reason for each default.

use std::sync::Arc;
use std::time::Duration;

/// Transport settings for the tunnel: QUIC, and the TLS/TCP fallback (its HTTP/2 windows are
/// `stream_window` / `connection_window`, its concurrency `max_incoming_streams`, its
/// keep-alive PING `keep_alive` and its silence limit `idle_timeout`).
///
/// Defaults target a home uplink to a VPS: a few hundred Mbit/s per stream at 50 ms RTT and
/// ≥ 1 Gbit/s over several streams, little memory per stream whose reader is slow, NAT
/// mappings that can expire after ~30 s of silence, and WebSockets that stay open for days
/// (each holds one stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuning {
    /// How often an otherwise idle connection sends a keep-alive. 10 s: well under the ~30 s
    /// UDP mapping timeout of many home NATs and under `idle_timeout`.
    pub keep_alive: Duration,
    /// A connection with nothing received for this long is dead. 30 s: also how long the
    /// edge takes at most to notice a vanished connector (the control ping notices sooner).
    pub idle_timeout: Duration,
    /// Per-stream receive window, and so what one stream can make the receiver buffer when
    /// its reader (a slow client, a slow Home Assistant) falls behind. 2 MiB covers the
    /// bandwidth-delay product of 335 Mbit/s at 50 ms or 840 Mbit/s at 20 ms per stream (the
    /// connection window lets several streams go at once). It stays below 2,048 packets of
    /// data: quinn copies ("defragments") a stream's receive buffer into new, variably sized
    /// allocations once it holds more than 2,048 chunks, and with the 8 MiB this used to be,
    /// those copies left the edge ~30–50 MiB above its baseline during one 100 MB download to
    /// a slow client (docs/benchmarks.md, "Memory").
    pub stream_window: u32,
    /// Connection-wide receive window. 32 MiB: a few streams at full speed at once, and a hard
    /// bound on what one peer can make us buffer.
    pub connection_window: u32,
    /// Bytes we may have in flight unacknowledged, over all streams. Same as the receive side.
    pub send_window: u64,
    /// Concurrent bidirectional streams the PEER may open towards us. The edge opens one per
    /// request, and each WebSocket holds one for its lifetime, so the connector advertises a
    /// large number (1024 by default); the edge only expects the control stream.
    pub max_incoming_streams: u32,
    /// Requested UDP socket send/receive buffer size. 4 MiB absorbs bursts at high rates; the
    /// kernel caps it at `net.core.{r,w}mem_max` (often 208 KiB), and the granted size is logged.
    pub udp_buffer: usize,
    /// TLS/TCP transport: the largest HTTP/2 frame we accept. 64 KiB: one body chunk
    /// (`BODY_CHUNK`) per DATA frame; h2 allows 16 KiB..16 MiB.
    pub h2_max_frame_size: u32,
    /// TLS/TCP transport: the largest header list we accept. The tunnel's h2 headers are a
    /// fixed handful of bytes (the proto heads travel as DATA), so 4 KiB is plenty and bounds
    /// what a peer can make us decode.
    pub h2_max_header_list: u32,
    /// TLS/TCP transport: bytes h2 may hold per stream, written by us but not yet on the
    /// socket. 1 MiB keeps a fast stream busy without buffering a whole window per stream.
    pub h2_max_send_buffer: usize,
    /// The longest we ask the peer to hold back the ACK of a lone packet (QUIC's
    /// ack-frequency extension; QUIC's own default is 25 ms). A sender resends a lost packet
    /// that nothing follows — a WebSocket message, a small response — only when its probe
    /// timeout fires, RTT + 4 × RTT variance + this delay later; Linux TCP's tail-loss probe
    /// fires after 2 × RTT. 5 ms brings QUIC's close to it. It costs no extra ACKs in bulk
    /// (every other packet is acknowledged at once either way), only earlier ones for lone
    /// packets.
    pub ack_delay: Duration,
    /// QUIC congestion controller of the connections this end SENDS on (see [`Congestion`]).
    /// On TLS/TCP the kernel paces: the connector asks it for BBR unless this is `Cubic`
    /// (`tcp::prefer_bbr`), the edge sets its listener's (`listen.tcp_congestion_control`).
    pub congestion: Congestion,
}

/// Which congestion controller paces what this end sends over QUIC. It governs the sender
/// only: the connector's setting governs downloads (home → edge → client), the edge's
/// uploads. Each end may choose its own.
///
/// The default is [`Congestion::LossTolerant`]. Under 1 % random loss plain Cubic holds only
/// ~12 packets per round trip: on the bench's impaired links 1.1 MB/s down and 0.9 up at
/// 20 ms per leg, 0.24 down and no finished upload at 80 ms, where nginx+rathole (kernel TCP)
/// moved 58–61 and 12–13. Loss-tolerant Cubic moved 32–40 and 8.8–10 MB/s, with no change
/// without loss (docs/benchmarks.md, "Congestion control"). quinn's BBR (experimental)
/// measured no better under loss and collapsed without any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// quinn's Cubic as it is, loss-based: reduces its window (×0.7) on every loss episode,
    /// so random loss of 1 % caps a connection near 1.22/√p ≈ 12 packets per round trip.
    /// The most conservative toward other traffic on a shared bottleneck.
    Cubic,
    /// quinn's BBR (marked experimental by quinn): paces at its bottleneck-bandwidth and
    /// min-RTT estimate and does not take random loss as congestion, like the Linux TCP BBR
    /// many servers and the composites' TCP legs use.
    Bbr,
    /// Cubic that takes loss for congestion only above 2 % of what was sent over its latest
    /// 2,000 packets while the path's RTT shows a queue, as BBRv2 does, and above 6 % while
    /// it shows none ([`crate::congestion::LossTolerant`]): random loss no longer holds the
    /// window down; an overflowing bottleneck still does, at the price of up to ~2 % loss
    /// there before it yields (~6 % at a policer, which queues nothing). A queue it builds
    /// beyond three quarters of the path's least RTT counts as congestion too, so a deep
    /// buffer (a home uplink) does not delay everything else on the tunnel by its length.
    #[default]
    #[serde(rename = "loss_tolerant")]
    LossTolerant,
}

impl Congestion {
    fn factory(self) -> Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> {
        match self {
            Self::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
            Self::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
            Self::LossTolerant => Arc::new(crate::congestion::LossTolerantConfig::default()),
        }
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            stream_window: 2 * 1024 * 1024,
            connection_window: 32 * 1024 * 1024,
            send_window: 32 * 1024 * 1024,
            max_incoming_streams: 1024,
            udp_buffer: 4 * 1024 * 1024,
            h2_max_frame_size: 64 * 1024,
            h2_max_header_list: 4 * 1024,
            h2_max_send_buffer: 1024 * 1024,
            ack_delay: Duration::from_millis(5),
            congestion: Congestion::default(),
        }
    }
}

impl Tuning {
    /// Checks the settings an operator can change that QUIC bounds, naming the offending key
    /// as both ends' configs spell it (`tunnel.…`) and the problem.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(Duration::from_millis(1)..=Duration::from_millis(25)).contains(&self.ack_delay) {
            return Err(("tunnel.ack_delay", "must be between 1ms and 25ms".into()));
        }
        if !(65_536..=self.connection_window).contains(&self.stream_window) {
            return Err((
                "tunnel.stream_window",
                format!("must be between 65536 and {}", self.connection_window),
            ));
        }
        Ok(())
    }

    pub(crate) fn transport_config(&self) -> Result<quinn::TransportConfig, crate::Error> {
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| crate::Error::InvalidConfig("idle timeout out of range"))?;
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive))
            .max_idle_timeout(Some(idle))
            .stream_receive_window(self.stream_window.into())
            .receive_window(self.connection_window.into())
            .send_window(self.send_window)
            .max_concurrent_bidi_streams(self.max_incoming_streams.into())
            .max_concurrent_uni_streams(0u32.into())
            // HTTP and WebSocket need no datagrams; don't reserve a buffer for them.
            .datagram_receive_buffer_size(None)
            .congestion_controller_factory(self.congestion.factory());
        let mut acks = quinn::AckFrequencyConfig::default();
        acks.max_ack_delay(Some(self.ack_delay));
        t.ack_frequency_config(Some(acks));
        Ok(t)
    }
}
