//! Is the peer still there? One rule for both ends of a tunnel connection.
//!
//! Both ends ping each other on the control stream every `ping_interval` (the edge sets it in
//! `Welcome`), so a live peer is never silent for much longer than that, whether or not any
//! stream carries data. [`Liveness`] watches the connection's received counter (UDP datagrams
//! over QUIC, socket reads over TCP; anything at all is proof of life: body data, acks, pings) and calls the peer dead once it
//! has been silent for [`Liveness::dead_after`]: one ping interval plus a margin for a lost
//! ping and the round trip. That is seconds, where the transport's idle timeout is tens of
//! seconds, and it holds for a connection that carries nothing as for one that is mid-download.
//!
//! A peer whose NAT mapping changed is not dead: its next ping arrives from the new address
//! within one ping interval, QUIC migrates the connection, and the silence ends before the
//! verdict. So the margin must cover the peer's ping interval, not only our own probe.
//!
//! What it is not: a timer or a task. The caller samples [`crate::Connection::stats`] on its own
//! schedule and passes the time in (sans-IO, like `proto`'s state machines).

use std::time::Duration;

use tokio::time::Instant;

use crate::PathStats;

/// Smallest margin past the ping interval before a silent peer is dead: covers one lost ping
/// (retransmitted after a probe timeout) and a busy scheduler on a small machine.
const MIN_MARGIN: Duration = Duration::from_secs(2);

/// Tracks when the peer was last heard from.
#[derive(Debug, Clone)]
pub struct Liveness {
    datagrams: u64,
    heard_at: Instant,
    dead_after: Duration,
}

impl Liveness {
    /// Starts watching a connection whose peer pings every `ping_interval`; heard from `now`.
    pub fn new(ping_interval: Duration, now: Instant) -> Self {
        Self {
            datagrams: 0,
            heard_at: now,
            dead_after: Self::dead_after(ping_interval, Duration::ZERO),
        }
    }

    /// Silence after which a peer pinging every `ping_interval` over a path of round-trip
    /// time `rtt` is dead: the interval plus max(2 s, 4 RTT).
    pub fn dead_after(ping_interval: Duration, rtt: Duration) -> Duration {
        ping_interval + MIN_MARGIN.max(rtt.saturating_mul(4))
    }

    /// Takes a fresh sample of the connection's statistics; `true` while the peer counts as
    /// alive, `false` once it has been silent for too long (then close the connection).
    pub fn observe(&mut self, stats: &PathStats, ping_interval: Duration, now: Instant) -> bool {
        if stats.received != self.datagrams {
            self.datagrams = stats.received;
            self.heard_at = now;
        }
        self.dead_after = Self::dead_after(ping_interval, stats.rtt);
        self.silent_for(now) < self.dead_after
    }

    /// How long the peer has been silent as of `now`.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.heard_at)
    }

    /// The silence limit in force (after the last [`Liveness::observe`]).
    pub fn limit(&self) -> Duration {
        self.dead_after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(datagrams: u64, rtt_ms: u64) -> PathStats {
        PathStats {
            rtt: Duration::from_millis(rtt_ms),
            cwnd: 0,
            lost_packets: 0,
            mtu: 1200,
            received: datagrams,
        }
    }

    #[test]
    fn silence_past_the_interval_and_margin_is_death() {
        let start = Instant::now();
        let ping = Duration::from_secs(2);
        let mut live = Liveness::new(ping, start);
        let at = |ms| start + Duration::from_millis(ms);
        assert!(live.observe(&stats(5, 10), ping, at(100)));
        // Nothing new for 3.9 s: still within 2 s + 2 s.
        assert!(live.observe(&stats(5, 10), ping, at(4_000)));
        // One datagram resets the clock.
        assert!(live.observe(&stats(6, 10), ping, at(4_050)));
        assert!(live.observe(&stats(6, 10), ping, at(8_000)));
        assert!(!live.observe(&stats(6, 10), ping, at(8_100)));
    }

    #[test]
    fn a_long_path_gets_a_longer_margin() {
        assert_eq!(
            Liveness::dead_after(Duration::from_secs(2), Duration::from_millis(900)),
            Duration::from_millis(5_600)
        );
        assert_eq!(
            Liveness::dead_after(Duration::from_secs(5), Duration::from_millis(20)),
            Duration::from_secs(7)
        );
    }
}
