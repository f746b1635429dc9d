//! A loss-tolerant congestion controller: Cubic that takes loss for congestion only when
//! there is enough of it.
//!
//! Loss-based controllers (Reno, Cubic) reduce their window on every loss episode, so random
//! loss that has nothing to do with congestion (a lossy radio hop, a policer upstream) caps a
//! connection near 1.22/√p packets per round trip: ~12 at 1 % loss, ~1 MB/s at 40 ms. TCP
//! BBR (Linux, many VPS kernels) and BBRv2/v3 do not: v2 reacts only when more than 2 % of a
//! round's packets were lost (`loss_thresh`). quinn's own BBR is experimental and measured
//! worse than Cubic on clean links (`docs/benchmarks.md`, "Congestion control").
//!
//! [`LossTolerant`] keeps Cubic's window logic and filters what it is told: a loss event
//! reaches Cubic only when the bytes lost exceed [`LOSS_THRESHOLD`] of the bytes sent
//! (acknowledged plus lost) over the latest round trips that together hold at least
//! [`MIN_SAMPLE_PACKETS`] packets (at most [`MAX_ROUNDS`] of them; a young connection's
//! short history counts as that many packets). The sample is that large because random loss
//! is noisy: over two round trips of a few hundred packets, 1 % random loss exceeds 2 % often
//! enough (about one transfer in four) that Cubic, once told, spends seconds growing back
//! (its growth is cubic in time, not in round trips). Once a loss has been passed on, the
//! count starts afresh, so one congestion episode is one reduction. Persistent congestion
//! (everything sent in a period lost) and ECN congestion marks always reach Cubic. A
//! bottleneck whose queue overflows loses a growing share of each round and is backed off
//! from within a few round trips; the price is that a full drop-tail queue may see up to
//! ~2 % loss before this sender yields, as with BBRv2.
//!
//! Sans-IO: it is driven by quinn through [`Controller`]; the unit tests drive it directly.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};

/// Loss rate above which a loss is congestion: BBRv2's `loss_thresh`.
pub const LOSS_THRESHOLD: f64 = 0.02;

/// The loss rate is taken over at least this many packets' worth of bytes. Checked at every
/// loss, a sliding sample of 1,000 packets still took 1 % random loss for more than 2 % in
/// 4 of 20 transfers of 40,000 packets (`random_one_percent_loss_rarely_misfires`).
pub const MIN_SAMPLE_PACKETS: u64 = 2000;

/// Round trips of history kept: enough for a slow path (8 packets a round trip, ~4 Mbit/s at
/// 20 ms) to fill a sample (4 KiB per connection).
pub const MAX_ROUNDS: usize = 256;

/// Builds [`LossTolerant`] controllers (Cubic inside, quinn's defaults).
#[derive(Debug, Default)]
pub struct LossTolerantConfig {
    cubic: Arc<CubicConfig>,
}

impl ControllerFactory for LossTolerantConfig {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(LossTolerant {
            inner: self.cubic.clone().build(now, current_mtu),
            filter: LossFilter::new(current_mtu),
        })
    }
}

/// Cubic, told of a loss only when [`LossFilter`] says it is congestion (module docs).
pub struct LossTolerant {
    inner: Box<dyn Controller>,
    filter: LossFilter,
}

impl Controller for LossTolerant {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &quinn_proto::RttEstimator,
    ) {
        self.filter.acked(now, bytes, rtt.get());
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked);
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        is_persistent_congestion: bool,
        lost_bytes: u64,
    ) {
        if self.filter.lost(now, lost_bytes, is_persistent_congestion) {
            self.inner
                .on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
        }
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.filter.mtu = u64::from(new_mtu);
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        self.inner.window()
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Self {
            inner: self.inner.clone_box(),
            filter: self.filter.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Bytes acknowledged and lost within one round trip.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    acked: u64,
    lost: u64,
}

/// Decides which loss events are congestion, from the bytes acknowledged and lost per round
/// trip over the latest ones.
#[derive(Debug, Clone)]
struct LossFilter {
    mtu: u64,
    /// The latest smoothed round-trip time: a round's length.
    rtt: Duration,
    /// When the current round trip began.
    round_start: Option<Instant>,
    /// Newest first; at most [`MAX_ROUNDS`].
    rounds: VecDeque<Tally>,
}

impl LossFilter {
    fn new(mtu: u16) -> Self {
        Self {
            mtu: u64::from(mtu),
            // quinn's initial RTT estimate (RFC 9002's 333 ms), until the first ack.
            rtt: Duration::from_millis(333),
            round_start: None,
            rounds: VecDeque::from([Tally::default()]),
        }
    }

    /// `bytes` were acknowledged; `rtt` is the smoothed round-trip time (a round's length).
    fn acked(&mut self, now: Instant, bytes: u64, rtt: Duration) {
        self.rtt = rtt;
        self.roll(now);
        if let Some(current) = self.rounds.front_mut() {
            current.acked = current.acked.saturating_add(bytes);
        }
    }

    /// `bytes` were declared lost (0: an ECN congestion mark, never random); whether the
    /// controller should take it as congestion.
    fn lost(&mut self, now: Instant, bytes: u64, persistent: bool) -> bool {
        self.roll(now);
        if let Some(current) = self.rounds.front_mut() {
            current.lost = current.lost.saturating_add(bytes);
        }
        let congestion = persistent || bytes == 0 || self.congested();
        if congestion {
            // One episode, one reduction: the next needs a sample of its own.
            self.rounds.clear();
            self.rounds.push_front(Tally::default());
        }
        congestion
    }

    /// Starts a new round once one round trip has passed; history older than
    /// [`MAX_ROUNDS`] round trips (an idle spell included) is forgotten.
    fn roll(&mut self, now: Instant) {
        let Some(start) = self.round_start else {
            self.round_start = Some(now);
            return;
        };
        let elapsed = now.saturating_duration_since(start);
        if elapsed < self.rtt {
            return;
        }
        let limit = u32::try_from(MAX_ROUNDS).unwrap_or(u32::MAX);
        if elapsed >= self.rtt.saturating_mul(limit) {
            self.rounds.clear();
        }
        self.rounds.push_front(Tally::default());
        self.rounds.truncate(MAX_ROUNDS);
        self.round_start = Some(now);
    }

    /// Whether the loss rate over the latest rounds that make a full sample is congestion.
    fn congested(&self) -> bool {
        let full = MIN_SAMPLE_PACKETS * self.mtu;
        let (mut sent, mut lost) = (0u64, 0u64);
        for round in &self.rounds {
            lost = lost.saturating_add(round.lost);
            sent = sent.saturating_add(round.lost).saturating_add(round.acked);
            if sent >= full {
                break;
            }
        }
        lost as f64 > LOSS_THRESHOLD * sent.max(full) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1200;
    const PACKET: u64 = MTU as u64;
    const RTT: Duration = Duration::from_millis(40);

    /// `rounds` round trips of `window` packets each over a path that loses every
    /// `every`-th packet (evenly spread, so the test is deterministic): how many of the losses
    /// the filter passes on as congestion.
    fn congestion_events(window: u32, every: u64, rounds: u32) -> (usize, usize) {
        let start = Instant::now();
        let mut filter = LossFilter::new(MTU);
        let (mut losses, mut passed) = (0, 0);
        let mut packet = 0u64;
        for round in 0..rounds {
            let round_start = start + RTT * round;
            for i in 0..window {
                packet += 1;
                let now = round_start + RTT * i / window;
                if packet.is_multiple_of(every) {
                    losses += 1;
                    passed += usize::from(filter.lost(now, PACKET, false));
                } else {
                    filter.acked(now, PACKET, RTT);
                }
            }
        }
        (losses, passed)
    }

    #[test]
    fn one_percent_random_loss_is_not_congestion() {
        for window in [10, 50, 100, 400, 2000] {
            let (losses, passed) = congestion_events(window, 100, 100);
            assert!(losses > 0);
            assert_eq!(
                passed, 0,
                "window {window}: {passed} of {losses} losses passed on"
            );
        }
    }

    #[test]
    fn loss_above_the_threshold_is_congestion() {
        // Passed on at least once every 15 round trips (not at every loss: each pass starts
        // a new sample of 2,000 packets, which at 30 packets a round trip takes 14 to fill).
        for (window, every, rounds) in [(30u32, 10, 100), (200, 20, 50), (2000, 30, 20)] {
            let (losses, passed) = congestion_events(window, every, rounds);
            assert!(
                passed * 15 >= usize::try_from(rounds).unwrap_or(usize::MAX),
                "window {window}, 1 in {every} lost: {passed} of {losses} passed on in {rounds} round trips"
            );
        }
    }

    /// A bottleneck that carries 100 packets a round trip and drops the rest, under a sender
    /// that adds a packet each round trip: the overflow is congestion within a few round trips.
    #[test]
    fn an_overflowing_queue_is_congestion_within_a_few_round_trips() {
        const CAPACITY: u32 = 100;
        let start = Instant::now();
        let mut filter = LossFilter::new(MTU);
        for round in 0..50u32 {
            let sent = CAPACITY + round;
            for i in 0..sent {
                let now = start + RTT * round + RTT * i / sent;
                if i < CAPACITY {
                    filter.acked(now, PACKET, RTT);
                } else if filter.lost(now, PACKET, false) {
                    assert!(round <= 10, "first passed on at round {round}");
                    return;
                }
            }
        }
        panic!("an overflowing queue was never congestion");
    }

    /// Random (not evenly spread) 1 % loss, as the bench's impaired links make it: over 20
    /// transfers of 100 round trips at windows where two-round samples misfired, the filter
    /// almost never takes it for congestion.
    #[test]
    fn random_one_percent_loss_rarely_misfires() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut random = move || {
            // xorshift64: deterministic, so the test is too.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for window in [60u32, 150, 400] {
            let mut misfired = 0;
            for _ in 0..20 {
                let start = Instant::now();
                let mut filter = LossFilter::new(MTU);
                let mut passed = false;
                for round in 0..100u32 {
                    for i in 0..window {
                        let now = start + RTT * round + RTT * i / window;
                        if random() % 100 == 0 {
                            passed |= filter.lost(now, PACKET, false);
                        } else {
                            filter.acked(now, PACKET, RTT);
                        }
                    }
                }
                misfired += usize::from(passed);
            }
            assert!(
                misfired <= 2,
                "window {window}: {misfired} of 20 transfers misfired"
            );
        }
    }

    #[test]
    fn persistent_congestion_and_ecn_marks_always_count() {
        let start = Instant::now();
        let mut filter = LossFilter::new(MTU);
        for i in 0..1000u32 {
            filter.acked(start + RTT * i / 1000, PACKET, RTT);
        }
        assert!(filter.lost(start + RTT, 0, false), "ECN mark");
        assert!(
            filter.lost(start + RTT, PACKET, true),
            "persistent congestion"
        );
        assert!(!filter.lost(start + RTT, PACKET, false), "one loss in 1000");
    }

    #[test]
    fn an_old_round_is_forgotten() {
        let start = Instant::now();
        let mut filter = LossFilter::new(MTU);
        for _ in 0..3 {
            filter.lost(start, PACKET, false);
        }
        // Long after, only the new rounds count.
        let later = start + RTT * (u32::try_from(MAX_ROUNDS).unwrap_or(u32::MAX) + 1);
        filter.acked(later, PACKET, RTT);
        assert!(!filter.lost(later, PACKET, false));
    }
}
