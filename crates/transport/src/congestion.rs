//! A loss-tolerant congestion controller: Cubic that takes loss for congestion only when
//! there is enough of it, or when the path shows a queue, and that keeps the queue it builds
//! short.
//!
//! Loss-based controllers (Reno, Cubic) reduce their window on every loss episode, so random
//! loss that has nothing to do with congestion (a lossy radio hop, a home link over LTE or a
//! satellite) caps a connection near 1.22/√p packets per round trip: ~12 at 1 % loss, ~1 MB/s
//! at 40 ms. TCP BBR (Linux, many VPS kernels) and BBRv2/v3 do not: v2 reacts only when more
//! than 2 % of a round's packets were lost (`loss_thresh`), v1 not at all. quinn's own BBR is
//! experimental and measured worse than Cubic on clean links (`docs/benchmarks.md`,
//! "Congestion control").
//!
//! [`LossTolerant`] keeps Cubic's window logic and filters what it is told. A loss event
//! reaches Cubic when the bytes lost exceed a share of the bytes sent (acknowledged plus
//! lost) over the latest round trips that together hold at least [`MIN_SAMPLE_PACKETS`]
//! packets (at most [`MAX_ROUNDS`] of them; a young connection's short history counts as that
//! many packets). The share is [`LOSS_THRESHOLD`] (2 %) while the path shows a queue, and
//! [`RANDOM_LOSS_THRESHOLD`] (6 %) while it does not:
//!
//! - *A queue* is a round-trip time above the path's floor: when the least RTT sample of the
//!   latest two round trips exceeds the floor by more than a third of it (at least
//!   [`QUEUE_MIN_MARGIN`]). A bottleneck whose buffer fills (a slow home uplink, a bloated
//!   router, an LTE modem) delays *every* packet, so the least sample of a round rises;
//!   jitter delays some packets and leaves the least one near the floor — except on a FIFO
//!   path at a high packet rate, where each packet waits for the most-delayed one ahead of
//!   it: ±10 % of jitter each way then lifts a round's least sample by up to ~22 %, hence a
//!   third. An AQM's short standing queue (CoDel's 5 ms target) is under that margin on
//!   paths longer than 15 ms: its drops count once they pass 6 %.
//!   The floor is the least sample seen; after [`FLOOR_LIFETIME`] it is measured afresh by
//!   the next sample taken while the sender had next to nothing in flight
//!   ([`QUIET_PACKETS`]: an idle tunnel's keep-alives and requests), so a path that got
//!   longer (a new route) is learnt, while a long transfer that keeps a queue full keeps the
//!   floor it had before. A round trip with no sample reads as a queue: the filter errs
//!   toward yielding.
//! - Without a queue, loss is not the sender's doing (its packets wait nowhere), so reducing
//!   the window would only slow the transfer: 3 % random loss cut Cubic to a tenth of a BBR TCP
//!   path (`docs/benchmarks.md`). Above 6 %, loss counts again whatever the RTT says: a
//!   policer or a shallow buffer that drops without queueing is then backed off from, at the
//!   price of up to ~6 % loss there.
//!
//! The sample is large because random loss is noisy: over two round trips of a few hundred
//! packets, 1 % random loss exceeds 2 % often enough (about one transfer in four) that Cubic,
//! once told, spends seconds growing back (its growth is cubic in time, not in round trips).
//! Once a loss has been passed on, the count starts afresh, so one congestion episode is one
//! reduction. Persistent congestion (everything sent in a period lost) and ECN congestion
//! marks always reach Cubic. A bottleneck whose queue overflows loses a growing share of each
//! round and is backed off from within a few round trips; the price is that a full drop-tail
//! queue may see up to ~2 % loss before this sender yields, as with BBRv2.
//!
//! Loss comes late at a deep buffer: Cubic fills a home router's uplink buffer (100 ms and
//! more) before it loses a packet there, and every WebSocket message on the tunnel then waits
//! behind that queue. [`DelayBound`] takes a queue longer than three quarters of the path's
//! floor (at least [`QUEUE_TARGET_MIN`]), held through two round trips, for congestion too,
//! outside slow start, and learns a new floor from a cut that did not shorten the queue: with
//! a 10 Mbit/s uplink and a download running, live updates at 20 ms per leg came after
//! 34–40 ms instead of 117 (`docs/benchmarks.md`, "Live updates behind a download").
//!
//! Sans-IO: it is driven by quinn through [`Controller`]; the unit tests drive it directly.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};

/// Loss rate above which a loss is congestion while the path shows a queue: BBRv2's
/// `loss_thresh`.
pub const LOSS_THRESHOLD: f64 = 0.02;

/// Loss rate above which a loss is congestion even while the path shows no queue (a policer,
/// a buffer too shallow to delay): twice the 3 % random loss the bench's worst links make,
/// with room for a 2,000-packet sample's noise (±0.4 % at 3 %).
pub const RANDOM_LOSS_THRESHOLD: f64 = 0.06;

/// The least rise of a round's lowest RTT over the floor that reads as a queue (a third of
/// the floor, when that is more): above the timer and scheduling noise of a round's best
/// sample on a short path.
pub const QUEUE_MIN_MARGIN: Duration = Duration::from_millis(2);

/// How long the floor (the least RTT sample) stands before a quiet sample replaces it: BBR's
/// `min_rtt` window.
pub const FLOOR_LIFETIME: Duration = Duration::from_secs(10);

/// At most this many packets in flight (after the acknowledgements before a sample) make the
/// sample quiet: too few for the sender to keep a queue of its own anywhere.
pub const QUIET_PACKETS: u64 = 4;

/// The loss rate is taken over at least this many packets' worth of bytes. Checked at every
/// loss, a sliding sample of 1,000 packets still took 1 % random loss for more than 2 % in
/// 4 of 20 transfers of 40,000 packets (`random_loss_with_jitter_rarely_misfires`).
pub const MIN_SAMPLE_PACKETS: u64 = 2000;

/// The least standing queue the delay bound allows (`DelayBound`): above it, and above three
/// quarters of the path's floor, a round trip whose packets all waited is a congestion signal.
pub const QUEUE_TARGET_MIN: Duration = Duration::from_millis(5);

/// Round trips of history kept: enough for a slow path (8 packets a round trip, ~4 Mbit/s at
/// 20 ms) to fill a sample (8 KiB per connection: 32 bytes a round).
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
            delay: DelayBound::default(),
            growing: true,
            reductions: Reductions::default(),
        })
    }
}

/// Cubic, told of a loss only when [`LossFilter`] says it is congestion, and of a queue
/// when [`DelayBound`] sees one grow past its target (module docs).
pub struct LossTolerant {
    inner: Box<dyn Controller>,
    filter: LossFilter,
    delay: DelayBound,
    /// Cubic is in slow start: no congestion event passed on yet, or persistent congestion
    /// since (which sends it back to its least window).
    growing: bool,
    reductions: Reductions,
}

/// What a [`LossTolerant`] controller has done to its window so far (for metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reductions {
    /// Losses passed on to Cubic as congestion (persistent congestion and ECN marks
    /// included).
    pub loss: u64,
    /// Queues over the delay bound's target passed on as congestion.
    pub queue: u64,
    /// Cuts that did not shorten the queue, after which the bound took a new floor.
    pub rebased: u64,
}

impl Reductions {
    /// The reasons a window is reduced for, as metrics label them.
    pub const REASONS: [&'static str; 2] = ["loss", "queue"];

    /// How many reductions of each reason (in [`Self::REASONS`]' order) happened since `seen`,
    /// an earlier reading of the same connection (a controller that started afresh, after a
    /// path change, counts from zero).
    pub fn since(&self, seen: &Self) -> [(&'static str, u64); 2] {
        [
            (Self::REASONS[0], self.loss.saturating_sub(seen.loss)),
            (Self::REASONS[1], self.queue.saturating_sub(seen.queue)),
        ]
    }
}

impl LossTolerant {
    /// What it has done to its window so far.
    pub fn reductions(&self) -> Reductions {
        self.reductions
    }

    /// The delay bound's part of an acknowledgement: a packet sent `sample` ago was
    /// acknowledged at `now`; `srtt` is the smoothed round-trip time.
    fn bound(&mut self, now: Instant, sample: Duration, srtt: Duration, app_limited: bool) {
        let sender = Sender {
            app_limited,
            growing: self.growing,
        };
        let path = self.filter.floor.map(|(floor, _)| floor);
        match self.delay.acked(now, sample, srtt, sender, path) {
            Bound::Hold => {}
            Bound::Cut => {
                tracing::debug!(
                    window = self.inner.window(),
                    floor_ms = self.delay.floor.max(path).map(|f| f.as_secs_f64() * 1e3),
                    recent_ms = self.delay.last_verdict.map(|r| r.as_secs_f64() * 1e3),
                    "queue over its target taken as congestion"
                );
                self.reductions.queue = self.reductions.queue.saturating_add(1);
                // As a loss of a packet sent now: a new episode for Cubic, one reduction.
                self.inner.on_congestion_event(now, now, false, 0);
            }
            Bound::Rebase => {
                tracing::debug!(
                    window = self.inner.window(),
                    floor_ms = self.delay.floor.map(|f| f.as_secs_f64() * 1e3),
                    "a cut left the queue as it was: its round trip is the floor now"
                );
                self.reductions.rebased = self.reductions.rebased.saturating_add(1);
            }
        }
    }
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
        self.filter.acked(now, sent, bytes, rtt.get());
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
        self.bound(
            now,
            now.saturating_duration_since(sent),
            rtt.get(),
            app_limited,
        );
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.filter.quiet = in_flight <= QUIET_PACKETS.saturating_mul(self.filter.mtu);
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
            tracing::debug!(
                lost_bytes,
                persistent = is_persistent_congestion,
                window = self.inner.window(),
                floor_ms = self.filter.floor.map(|(f, _)| f.as_secs_f64() * 1e3),
                recent_ms = self.filter.verdict.recent.map(|r| r.as_secs_f64() * 1e3),
                queued = self.filter.verdict.queued,
                share = self.filter.verdict.share,
                "loss taken as congestion"
            );
            self.growing = is_persistent_congestion;
            self.delay.loss_passed_on();
            self.reductions.loss = self.reductions.loss.saturating_add(1);
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
            delay: self.delay.clone(),
            growing: self.growing,
            reductions: self.reductions,
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// Bytes acknowledged and lost within one round trip, and its least RTT sample.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    acked: u64,
    lost: u64,
    least_rtt: Option<Duration>,
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
    /// The least RTT sample, and when it was taken: the path without a queue (module docs).
    floor: Option<(Duration, Instant)>,
    /// Whether the sender had at most [`QUIET_PACKETS`] in flight after the latest
    /// acknowledgements: the next sample may renew an old floor.
    quiet: bool,
    /// What the latest loss was judged on (for the log).
    verdict: Verdict,
}

/// What a loss was judged on: the least RTT sample of the latest two rounds, whether that
/// shows a queue, and the loss share of the sample.
#[derive(Debug, Default, Clone, Copy)]
struct Verdict {
    recent: Option<Duration>,
    queued: bool,
    share: f64,
}

impl LossFilter {
    fn new(mtu: u16) -> Self {
        Self {
            mtu: u64::from(mtu),
            // quinn's initial RTT estimate (RFC 9002's 333 ms), until the first ack.
            rtt: Duration::from_millis(333),
            round_start: None,
            rounds: VecDeque::from([Tally::default()]),
            floor: None,
            quiet: false,
            verdict: Verdict::default(),
        }
    }

    /// `bytes` sent at `sent` were acknowledged (at `now`: the packet's RTT sample); `rtt` is
    /// the smoothed round-trip time (a round's length).
    fn acked(&mut self, now: Instant, sent: Instant, bytes: u64, rtt: Duration) {
        self.rtt = rtt;
        self.roll(now);
        let sample = now.saturating_duration_since(sent);
        let renew = match self.floor {
            None => true,
            Some((floor, at)) => {
                sample <= floor
                    || (self.quiet && now.saturating_duration_since(at) >= FLOOR_LIFETIME)
            }
        };
        if renew {
            self.floor = Some((sample, now));
        }
        if let Some(current) = self.rounds.front_mut() {
            current.acked = current.acked.saturating_add(bytes);
            current.least_rtt = Some(current.least_rtt.map_or(sample, |l| l.min(sample)));
        }
    }

    /// `bytes` were declared lost (0: an ECN congestion mark, never random); whether the
    /// controller should take it as congestion.
    fn lost(&mut self, now: Instant, bytes: u64, persistent: bool) -> bool {
        self.roll(now);
        if let Some(current) = self.rounds.front_mut() {
            current.lost = current.lost.saturating_add(bytes);
        }
        self.verdict = self.judge();
        let threshold = if self.verdict.queued {
            LOSS_THRESHOLD
        } else {
            RANDOM_LOSS_THRESHOLD
        };
        let congestion = persistent || bytes == 0 || self.verdict.share > threshold;
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

    /// The least RTT sample of the latest two rounds.
    fn recent_least_rtt(&self) -> Option<Duration> {
        self.rounds
            .iter()
            .take(2)
            .filter_map(|round| round.least_rtt)
            .min()
    }

    /// What a loss now would be judged on. The path shows a queue when the least RTT sample
    /// of the latest two rounds is above the floor by more than the margin (module docs); no
    /// sample yet reads as a queue.
    fn judge(&self) -> Verdict {
        let recent = self.recent_least_rtt();
        let queued = match (self.floor, recent) {
            (Some((floor, _)), Some(recent)) => recent > floor + (floor / 3).max(QUEUE_MIN_MARGIN),
            _ => true,
        };
        Verdict {
            recent,
            queued,
            share: self.loss_share(),
        }
    }

    /// The share of bytes lost over the latest rounds that make a full sample (a short
    /// history counts as a full sample).
    fn loss_share(&self) -> f64 {
        let full = MIN_SAMPLE_PACKETS * self.mtu;
        let (mut sent, mut lost) = (0u64, 0u64);
        for round in &self.rounds {
            lost = lost.saturating_add(round.lost);
            sent = sent.saturating_add(round.lost).saturating_add(round.acked);
            if sent >= full {
                break;
            }
        }
        lost as f64 / sent.max(full).max(1) as f64
    }
}

/// Keeps the queue this sender builds at a bottleneck short: when the least RTT sample of
/// two whole round trips exceeds the path's floor by more than three quarters of it (at least
/// [`QUEUE_TARGET_MIN`]), every packet of those rounds waited in a queue, and that is a
/// congestion signal, as a loss would be. Cubic fills any drop-tail buffer before it sees a
/// loss (a home router's uplink buffer of 100 ms and more), and everything else on the
/// tunnel, a WebSocket's live updates included, then waits behind it.
///
/// Three quarters: after Cubic's cut to 0.7 of a window that was the path's bandwidth-delay
/// product plus 0.75 of it (1.22 of it; half would leave 1.05, and Cubic's fast convergence
/// and the path's jitter take that margin), the window still covers the product, so the link
/// stays busy while the queue drains.
///
/// A delay signal is only as good as its floor, and a floor can be wrong: the path got longer
/// (a new route; in the bench, a tunnel that learnt its floor on loopback before the links
/// were impaired), or some other sender keeps the buffer full. Three rules keep a wrong floor
/// from starving a transfer:
/// - No cut in slow start (`growing`): a cut there sends Cubic into congestion avoidance at a
///   window far below the path's product, and it then grows for seconds. Slow start ends at
///   the first loss the filter passes on (a drop-tail buffer overflows within a round trip of
///   filling), and the bound works from there on.
/// - Each cut is checked: the least sample of the two round trips after it (the second sent
///   under the reduced window) must have come down by at least half of what the cut should
///   take off this sender's own queue (0.3 of the round trip, or the whole queue if that is
///   less; measured against the floor, a stale floor would ask for more). If it did not, the queue was not this sender's to drain, and that sample becomes
///   the floor: one cut per wrong floor, not one every two round trips. Unless a loss was
///   passed on as congestion meanwhile: then the buffer overflows, and a window still above
///   what it holds (just after slow start) keeps it full however it was cut; the check is
///   void. Any reduction (a cut, a loss passed on) is given those two round trips before
///   the next cut, so that a cut is judged on what the window before it did.
/// - The floor is the larger of the least sample since the start or the latest re-base, and
///   the loss filter's floor, which a quiet sample renews after [`FLOOR_LIFETIME`]: a path
///   that got longer between transfers costs no cut at all.
///
/// The bound's own floor does not expire otherwise (BBR's `min_rtt` does, after 10 s, and BBR
/// then drains its queue to measure it afresh): a cut leaves part of this sender's queue
/// standing, so a floor taken from recent samples would rise with it.
///
/// Never while the sender is application-limited (a queue it did not make).
#[derive(Debug, Clone, Default)]
struct DelayBound {
    /// The least sample since the start or the latest re-base.
    floor: Option<Duration>,
    /// When the current round trip began, and its least sample.
    round_start: Option<Instant>,
    round_least: Option<Duration>,
    /// The previous whole round's least sample.
    previous_least: Option<Duration>,
    /// The latest reduction (a cut, or a loss passed on), until two whole rounds show what
    /// it did.
    settle: Option<Settle>,
    /// The least sample of the latest two whole rounds, as last judged (for the log).
    last_verdict: Option<Duration>,
}

/// A reduction whose effect is not yet known (`DelayBound`): the whole rounds since, and the
/// cut to check, if it was the bound's.
#[derive(Debug, Clone, Copy)]
struct Settle {
    rounds: u32,
    cut: Option<Cut>,
}

/// What a cut was made on: the least sample of the two round trips before it, and the floor.
#[derive(Debug, Clone, Copy)]
struct Cut {
    recent: Duration,
    floor: Duration,
}

/// What the sender was doing when a packet was acknowledged (`DelayBound`).
#[derive(Debug, Clone, Copy)]
struct Sender {
    /// It had less to send than its window allowed.
    app_limited: bool,
    /// Slow start.
    growing: bool,
}

/// What a whole round trip led the delay bound to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// Nothing: no queue over the target, or not the time to act on it.
    Hold,
    /// Take the queue for congestion now.
    Cut,
    /// The latest cut left the queue as it was: its least sample is the floor now.
    Rebase,
}

impl DelayBound {
    /// A packet sent `sample` ago was acknowledged at `now`; `rtt` is the smoothed RTT (a
    /// round's length); `sender`: whether it is application-limited or in slow start; `path`:
    /// the loss filter's floor, which a quiet sample renews (a longer path learnt between
    /// transfers).
    fn acked(
        &mut self,
        now: Instant,
        sample: Duration,
        rtt: Duration,
        sender: Sender,
        path: Option<Duration>,
    ) -> Bound {
        self.floor = Some(self.floor.map_or(sample, |f| f.min(sample)));
        self.round_least = Some(self.round_least.map_or(sample, |l| l.min(sample)));
        let Some(start) = self.round_start else {
            self.round_start = Some(now);
            return Bound::Hold;
        };
        if now.saturating_duration_since(start) < rtt {
            return Bound::Hold;
        }
        // A round trip is whole: judge it with the one before.
        self.round_start = Some(now);
        let completed = self.round_least.take();
        let recent = match (completed, self.previous_least) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.previous_least = completed;
        self.last_verdict = recent;
        let Some(recent) = recent else {
            return Bound::Hold;
        };
        if let Some(settle) = self.settle.as_mut() {
            settle.rounds = settle.rounds.saturating_add(1);
            if settle.rounds < 2 {
                return Bound::Hold;
            }
            let settled = *settle;
            self.settle = None;
            if let Some(cut) = settled.cut {
                // A cut to 0.7 takes 0.3 of the window out of flight: the queue it was for
                // shrinks by about 0.3 of the round trip (all of it, if it was shorter).
                // Half of that is the least a cut of this sender's own queue shows.
                let queue = cut.recent.saturating_sub(cut.floor);
                let expected = queue.min(cut.recent.saturating_mul(3) / 10);
                if recent.saturating_add(expected / 2) > cut.recent {
                    // Not this sender's queue, or a floor the path has left behind.
                    self.floor = Some(recent);
                    return Bound::Rebase;
                }
            }
        }
        let Some(floor) = self.floor.max(path) else {
            return Bound::Hold;
        };
        let over =
            recent > floor.saturating_add((floor.saturating_mul(3) / 4).max(QUEUE_TARGET_MIN));
        if over && !sender.app_limited && !sender.growing {
            self.settle = Some(Settle {
                rounds: 0,
                cut: Some(Cut { recent, floor }),
            });
            return Bound::Cut;
        }
        Bound::Hold
    }

    /// A loss was passed on as congestion: a reduction to settle, and the latest cut's check
    /// is void.
    fn loss_passed_on(&mut self) {
        self.settle = Some(Settle {
            rounds: 0,
            cut: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MTU: u16 = 1200;
    const PACKET: u64 = MTU as u64;
    const RTT: Duration = Duration::from_millis(40);

    /// Deterministic pseudo-random numbers (xorshift64), so the tests are deterministic too.
    fn xorshift() -> impl FnMut() -> u64 {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }

    /// A packet acknowledged at `now` after a round trip of `rtt`, on a path of [`RTT`].
    fn ack(filter: &mut LossFilter, now: Instant, rtt: Duration) {
        ack_on(filter, now, rtt, RTT);
    }

    /// The same on a path whose smoothed RTT (a round's length) is `path`.
    fn ack_on(filter: &mut LossFilter, now: Instant, rtt: Duration, path: Duration) {
        filter.acked(now, now.checked_sub(rtt).unwrap_or(now), PACKET, path);
    }

    /// The RTT of every round after the first (which sets the floor at [`RTT`]): with a
    /// standing queue of half the floor, or none.
    fn round_rtt(round: u32, queue: bool) -> Duration {
        if queue && round > 0 { RTT * 3 / 2 } else { RTT }
    }

    /// `rounds` round trips of `window` packets each over a path that loses every
    /// `every`-th packet (evenly spread, so the test is deterministic), with a standing queue
    /// or none: how many of the losses the filter passes on as congestion.
    fn congestion_events(window: u32, every: u64, rounds: u32, queue: bool) -> (usize, usize) {
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
                    ack(&mut filter, now, round_rtt(round, queue));
                }
            }
        }
        (losses, passed)
    }

    #[test]
    fn one_percent_loss_is_not_congestion_queue_or_not() {
        for queue in [false, true] {
            for window in [10, 50, 100, 400, 2000] {
                let (losses, passed) = congestion_events(window, 100, 100, queue);
                assert!(losses > 0);
                assert_eq!(
                    passed, 0,
                    "window {window}, queue {queue}: {passed} of {losses} losses passed on"
                );
            }
        }
    }

    #[test]
    fn loss_above_two_percent_with_a_queue_is_congestion() {
        // Passed on at least once every 15 round trips (not at every loss: each pass starts
        // a new sample of 2,000 packets, which at 30 packets a round trip takes 14 to fill).
        for (window, every, rounds) in [(30u32, 10, 100), (200, 20, 50), (2000, 30, 20)] {
            let (losses, passed) = congestion_events(window, every, rounds, true);
            assert!(
                passed * 15 >= usize::try_from(rounds).unwrap_or(usize::MAX),
                "window {window}, 1 in {every} lost: {passed} of {losses} passed on in {rounds} round trips"
            );
        }
    }

    #[test]
    fn loss_between_two_and_six_percent_without_a_queue_is_not_congestion() {
        for (window, every) in [(30u32, 20), (200, 30), (2000, 20), (400, 18)] {
            let (losses, passed) = congestion_events(window, every, 60, false);
            assert!(losses > 0);
            assert_eq!(
                passed, 0,
                "window {window}, 1 in {every} lost: {passed} of {losses} passed on"
            );
        }
    }

    #[test]
    fn loss_above_six_percent_is_congestion_queue_or_not() {
        // A pass starts a new sample, counted as 2,000 packets from the start, so the next
        // needs 120 losses: 40 round trips at 30 packets and 10 % loss.
        for (window, every, rounds, every_rounds) in
            [(30u32, 10, 100, 50), (200, 12, 50, 15), (2000, 8, 20, 15)]
        {
            let (losses, passed) = congestion_events(window, every, rounds, false);
            assert!(
                passed * every_rounds >= usize::try_from(rounds).unwrap_or(usize::MAX),
                "window {window}, 1 in {every} lost: {passed} of {losses} passed on in {rounds} round trips"
            );
        }
    }

    /// A drop-tail bottleneck that carries 100 packets a round trip and buffers 50 more, under
    /// a sender that adds a packet each round trip: the buffer fills (every packet waits
    /// longer), then overflows, and the overflow is congestion within a few round trips.
    #[test]
    fn an_overflowing_queue_is_congestion_within_a_few_round_trips() {
        const CAPACITY: u32 = 100;
        const BUFFER: u32 = 50;
        let start = Instant::now();
        let mut filter = LossFilter::new(MTU);
        let mut time = start;
        for round in 0..80u32 {
            let sent = CAPACITY + round;
            let queued = (sent - CAPACITY).min(BUFFER);
            let rtt = RTT * (CAPACITY + queued) / CAPACITY;
            for i in 0..sent {
                let now = time + rtt * i / sent;
                if i < CAPACITY + BUFFER {
                    ack(&mut filter, now, rtt);
                } else if filter.lost(now, PACKET, false) {
                    let overflowing = round - BUFFER;
                    assert!(
                        overflowing <= 12,
                        "first passed on {overflowing} round trips in"
                    );
                    return;
                }
            }
            time += rtt;
        }
        panic!("an overflowing queue was never congestion");
    }

    /// A policer (drops what is over 100 packets a round trip, queues nothing) under the same
    /// sender: no queue to see, so it is backed off from once its drops pass 6 %.
    #[test]
    fn a_policer_is_congestion_once_its_drops_pass_six_percent() {
        const CAPACITY: u32 = 100;
        let start = Instant::now();
        let mut filter = LossFilter::new(MTU);
        for round in 0..100u32 {
            let sent = CAPACITY + round;
            for i in 0..sent {
                let now = start + RTT * round + RTT * i / sent;
                if i < CAPACITY {
                    ack(&mut filter, now, RTT);
                } else if filter.lost(now, PACKET, false) {
                    // 6 % of what is sent is lost from round 7 on; the 2,000-packet sample
                    // (~18 rounds) averages in the earlier, lighter ones.
                    assert!(
                        (7..=30).contains(&round),
                        "first passed on at round {round}"
                    );
                    return;
                }
            }
        }
        panic!("a policer was never congestion");
    }

    /// Random (not evenly spread) loss with ±10 % jitter on every RTT sample, as the bench's
    /// impaired links make it: over 20 transfers of 100 round trips, 1 % loss with a queue
    /// and 3 % loss without one are almost never taken for congestion.
    #[test]
    fn random_loss_with_jitter_rarely_misfires() {
        let mut random = xorshift();
        for (percent, queue) in [(1, true), (3, false)] {
            for window in [60u32, 150, 400] {
                let mut misfired = 0;
                for _ in 0..20 {
                    let start = Instant::now();
                    let mut filter = LossFilter::new(MTU);
                    let mut passed = false;
                    for round in 0..100u32 {
                        for i in 0..window {
                            let now = start + RTT * round + RTT * i / window;
                            if random() % 100 < percent {
                                passed |= filter.lost(now, PACKET, false);
                            } else {
                                // ±10 % in steps of 1 %.
                                let jitter = u32::try_from(random() % 21).unwrap_or(10);
                                let rtt = round_rtt(round, queue) * (90 + jitter) / 100;
                                ack(&mut filter, now, rtt);
                            }
                        }
                    }
                    misfired += usize::from(passed);
                }
                assert!(
                    misfired <= 2,
                    "{percent} % loss, queue {queue}, window {window}: {misfired} of 20 transfers misfired"
                );
            }
        }
    }

    #[test]
    fn a_queue_is_a_raised_least_rtt_not_jitter() {
        let start = Instant::now();
        let mut filter = LossFilter::new(MTU);
        assert!(filter.judge().queued, "no sample yet: taken for a queue");
        let base = Duration::from_millis(20);
        let mut random = xorshift();
        let mut now = start;
        // Jitter of up to +50 % on most samples: the least of a round stays near the floor.
        for _ in 0..200 {
            now += Duration::from_micros(200);
            let extra = u32::try_from(random() % 11).unwrap_or(0);
            ack(&mut filter, now, base * (100 + extra * 5) / 100);
        }
        assert!(!filter.judge().queued, "jitter read as a queue");
        // A FIFO path at a high packet rate: every packet waits for the most-delayed one ahead,
        // and a round's least sample rises by up to ~22 % (module docs). Two rounds of it.
        for _ in 0..400 {
            now += Duration::from_micros(200);
            ack(&mut filter, now, base * 122 / 100);
        }
        assert!(!filter.judge().queued, "a FIFO's jitter read as a queue");
        // A standing queue of 10 ms (a bloated uplink filling): every sample 10 ms up, two
        // round trips long.
        for _ in 0..400 {
            now += Duration::from_micros(200);
            ack(&mut filter, now, base + Duration::from_millis(10));
        }
        assert!(filter.judge().queued, "a 10 ms standing queue not seen");
    }

    /// The bench's case: a tunnel connection made on a fast path (0.3 ms) that then gets a
    /// 20 ms one. Once the old floor has stood its time, an idle spell's samples are the
    /// new floor and 3 % random loss is not congestion; a transfer with much in flight all
    /// the while keeps the floor it had, so a standing queue would stay visible.
    #[test]
    fn the_floor_follows_a_longer_path_but_not_a_standing_queue() {
        let start = Instant::now();
        let fast = Duration::from_micros(300);
        let path = Duration::from_millis(20);
        let mut filter = LossFilter::new(MTU);
        filter.quiet = true;
        filter.acked(start, start, PACKET, fast);
        // A minute of a transfer with much in flight over the slower path: a queue throughout.
        filter.quiet = false;
        let mut now = start;
        for _ in 0..6000 {
            now += Duration::from_millis(10);
            ack_on(&mut filter, now, path, path);
        }
        assert!(
            filter.judge().queued,
            "a transfer with much in flight moved the floor"
        );
        // Then idle keep-alives (next to nothing in flight): the floor is measured afresh.
        filter.quiet = true;
        for _ in 0..3 {
            now += Duration::from_secs(1);
            ack_on(&mut filter, now, path, path);
        }
        assert!(
            !filter.judge().queued,
            "the floor did not follow the longer path"
        );
        let mut random = xorshift();
        let mut passed = 0;
        for i in 0..20_000u32 {
            now += Duration::from_micros(100);
            let jitter = u32::try_from(random() % 21).unwrap_or(10);
            if random() % 100 < 3 {
                passed += usize::from(filter.lost(now, PACKET, false));
            } else {
                let rtt = path * (90 + jitter) / 100;
                filter.quiet = i % 3 == 0;
                ack_on(&mut filter, now, rtt, path);
            }
        }
        assert_eq!(passed, 0, "3 % random loss taken for congestion");
    }

    #[test]
    fn a_round_of_history_is_32_bytes() {
        assert_eq!(std::mem::size_of::<Tally>(), 32);
    }

    #[test]
    fn persistent_congestion_and_ecn_marks_always_count() {
        let start = Instant::now();
        let mut filter = LossFilter::new(MTU);
        for i in 0..1000u32 {
            ack(&mut filter, start + RTT * i / 1000, RTT);
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
        ack(&mut filter, later, RTT);
        assert!(!filter.lost(later, PACKET, false));
    }

    const AVOIDING: Sender = Sender {
        app_limited: false,
        growing: false,
    };

    /// Drives a [`DelayBound`] through `rounds` round trips of `per_round` acknowledgements,
    /// the round trip of round `r`'s packet `p` (its smoothed RTT that of packet 0) from
    /// `rtt_of(r, p, cuts so far)`: what it did, with the round.
    fn drive(
        bound: &mut DelayBound,
        now: &mut Instant,
        rounds: u32,
        per_round: u32,
        sender: Sender,
        path: Option<Duration>,
        mut rtt_of: impl FnMut(u32, u32, usize) -> Duration,
    ) -> Vec<(u32, Bound)> {
        let mut acts: Vec<(u32, Bound)> = Vec::new();
        for round in 0..rounds {
            let cuts = acts.iter().filter(|(_, b)| *b == Bound::Cut).count();
            let length = rtt_of(round, 0, cuts);
            for packet in 0..per_round {
                let sample = rtt_of(round, packet, cuts);
                match bound.acked(*now, sample, length, sender, path) {
                    Bound::Hold => {}
                    act => acts.push((round, act)),
                }
                *now += length / per_round;
            }
        }
        acts
    }

    /// A fresh [`DelayBound`] driven as [`drive`] does, its sender in congestion avoidance
    /// and no floor from the loss filter.
    fn avoiding(
        rounds: u32,
        per_round: u32,
        rtt_of: impl FnMut(u32, u32, usize) -> Duration,
    ) -> (DelayBound, Vec<(u32, Bound)>) {
        let mut bound = DelayBound::default();
        let acts = drive(
            &mut bound,
            &mut Instant::now(),
            rounds,
            per_round,
            AVOIDING,
            None,
            rtt_of,
        );
        (bound, acts)
    }

    /// The rounds in which it did `what`.
    fn rounds_of(acts: &[(u32, Bound)], what: Bound) -> Vec<u32> {
        acts.iter()
            .filter(|(_, b)| *b == what)
            .map(|(r, _)| *r)
            .collect()
    }

    #[test]
    fn a_filling_buffer_is_cut_once_its_queue_passes_three_quarters_of_the_floor() {
        // A drop-tail buffer that grows by 2 ms a round trip over a 40 ms path: the queue
        // is over 30 ms from round 16 on; the cut comes once two whole rounds were over (as
        // round 18 begins), not before.
        let (_, acts) = avoiding(20, 50, |round, _, _| RTT + Duration::from_millis(2) * round);
        assert_eq!(rounds_of(&acts, Bound::Cut).first(), Some(&18), "{acts:?}");
    }

    /// A bottleneck's queue under a sender that cuts: the queue of round `r` is what the
    /// window at its start put there (a cut shows in the round after the one it was made in:
    /// what is sent after it is acknowledged a round trip later), the window grows by 2 ms of
    /// the link's time a round (Cubic in congestion avoidance) and each cut takes it to 0.7;
    /// ±10 % jitter on top.
    struct Bottleneck {
        window: f64,
        cuts: usize,
        queue_ms: Vec<f64>,
        random: Box<dyn FnMut() -> u64>,
    }

    impl Bottleneck {
        fn new() -> Self {
            Self {
                window: RTT.as_secs_f64() * 1e3,
                cuts: 0,
                queue_ms: Vec::new(),
                random: Box::new(xorshift()),
            }
        }

        fn rtt(&mut self, round: u32, packet: u32, cuts: usize) -> Duration {
            let floor = RTT.as_secs_f64() * 1e3;
            while self.queue_ms.len() <= round as usize {
                self.window += 2.0;
                if self.cuts < cuts {
                    self.cuts = cuts;
                    self.window *= 0.7;
                }
                self.queue_ms.push((self.window - floor).max(0.0));
            }
            let queue = self.queue_ms[round as usize];
            if packet == 0 {
                return Duration::from_secs_f64((floor + queue) / 1e3);
            }
            let jitter = 0.9 + ((self.random)() % 21) as f64 / 100.0;
            Duration::from_secs_f64((floor + queue) * jitter / 1e3)
        }
    }

    #[test]
    fn a_queue_this_sender_makes_is_held_near_its_target() {
        let mut path = Bottleneck::new();
        let (_, acts) = avoiding(400, 50, |r, p, c| path.rtt(r, p, c));
        let cuts = rounds_of(&acts, Bound::Cut);
        assert!(cuts.len() > 10, "{acts:?}");
        assert_eq!(rounds_of(&acts, Bound::Rebase), Vec::<u32>::new());
        // Once held, the queue stays within about one floor (target 30 ms, ~2 ms a round of
        // growth, the check's two rounds and the jitter's least samples on top).
        let after = cuts.first().map_or(0, |r| *r as usize + 3);
        let worst = path.queue_ms[after..]
            .iter()
            .fold(0.0_f64, |m, q| m.max(*q));
        assert!(worst < 45.0, "queue up to {worst} ms: {acts:?}");
        // And the link stays busy: the window never falls below the path's product.
        let idle = path.queue_ms[after..].iter().filter(|q| **q <= 0.0).count();
        assert!(
            idle < path.queue_ms.len() / 20,
            "{idle} rounds without a queue"
        );
    }

    #[test]
    fn a_stale_floor_under_a_real_queue_is_not_taken_for_a_wrong_one() {
        // The bench's tunnel after slow start at a slow uplink: the floor it knows came from
        // loopback (1.5 ms), the path is 20 ms and its own queue 55 ms. Each cut takes 14 ms
        // off the round trip (as measured there: less than a quarter of the queue counted
        // from the stale floor, more than half of what a cut to 0.7 can take): no re-base
        // while the queue is there, and the re-base once it is gone takes the path's RTT.
        let path = Duration::from_millis(20);
        let mut bound = DelayBound::default();
        let mut now = Instant::now();
        let stale = drive(&mut bound, &mut now, 1, 50, AVOIDING, None, |_, _, _| {
            Duration::from_micros(1500)
        });
        assert_eq!(stale, Vec::new());
        let rtt = |cuts: usize| {
            path.max(Duration::from_millis(75) - Duration::from_millis(14) * cuts as u32)
        };
        let acts = drive(
            &mut bound,
            &mut now,
            40,
            50,
            AVOIDING,
            None,
            |_, _, cuts| rtt(cuts),
        );
        let cuts = rounds_of(&acts, Bound::Cut);
        let rebases = rounds_of(&acts, Bound::Rebase);
        assert_eq!(
            cuts.len(),
            5,
            "four to drain the queue, one to find the path: {acts:?}"
        );
        assert_eq!(rebases.len(), 1, "{acts:?}");
        assert!(rebases[0] > cuts[4], "{acts:?}");
        assert_eq!(bound.floor, Some(path));
    }

    #[test]
    fn a_short_queue_or_jitter_is_never_cut() {
        // A standing queue of half the floor, and ±10 % jitter.
        let mut random = xorshift();
        let jitter: Vec<u32> = (0..100_000).map(|_| (random() % 21) as u32).collect();
        let (_, acts) = avoiding(200, 100, |round, p, _| {
            let queue = if round > 0 { RTT / 2 } else { Duration::ZERO };
            let i = (round * 100 + p) as usize % jitter.len();
            (RTT + queue) * (90 + jitter[i]) / 100
        });
        assert_eq!(acts, Vec::new());
    }

    #[test]
    fn an_application_limited_or_slow_starting_sender_is_never_cut() {
        for sender in [
            Sender {
                app_limited: true,
                growing: false,
            },
            Sender {
                app_limited: false,
                growing: true,
            },
        ] {
            let mut bound = DelayBound::default();
            let acts = drive(
                &mut bound,
                &mut Instant::now(),
                50,
                20,
                sender,
                None,
                |round, _, _| {
                    if round > 0 { RTT * 3 } else { RTT }
                },
            );
            assert_eq!(acts, Vec::new());
        }
    }

    #[test]
    fn a_longer_path_or_a_queue_not_ours_costs_one_cut() {
        // The path goes from 40 to 120 ms for good at round 10 (or someone else keeps the
        // buffer full): the rise is first taken for a queue, the cut does not shorten it, and
        // its round trip becomes the floor.
        let (bound, acts) = avoiding(
            300,
            20,
            |round, _, _| {
                if round >= 10 { RTT * 3 } else { RTT }
            },
        );
        assert_eq!(rounds_of(&acts, Bound::Cut), vec![12], "{acts:?}");
        assert_eq!(rounds_of(&acts, Bound::Rebase), vec![14], "{acts:?}");
        assert_eq!(bound.floor, Some(RTT * 3));
    }

    #[test]
    fn an_overflowing_buffer_is_not_taken_for_a_wrong_floor() {
        // Just after slow start the window is above what the buffer holds: a cut leaves it
        // full, and its overflow losses are passed on meanwhile. The check is void; the
        // bound goes on cutting once the loss's reduction has had two round trips.
        let mut bound = DelayBound::default();
        let mut now = Instant::now();
        let first = drive(
            &mut bound,
            &mut now,
            4,
            20,
            AVOIDING,
            None,
            |round, _, _| {
                if round > 0 { RTT * 3 } else { RTT }
            },
        );
        assert_eq!(first, vec![(3, Bound::Cut)]);
        bound.loss_passed_on();
        let then = drive(&mut bound, &mut now, 2, 20, AVOIDING, None, |_, _, _| {
            RTT * 3
        });
        assert_eq!(then, vec![(1, Bound::Cut)]);
    }

    #[test]
    fn a_floor_learnt_on_a_shorter_path_costs_one_cut() {
        // The bench's case: the tunnel's floor came from loopback (0.15 ms), then the path
        // became 40 ms; slow start ends, and the first cut finds no queue to drain.
        let mut random = xorshift();
        let (_, acts) = avoiding(200, 50, |round, _, _| {
            if round < 3 {
                Duration::from_micros(150)
            } else {
                RTT * (95 + (random() % 11) as u32) / 100
            }
        });
        assert_eq!(rounds_of(&acts, Bound::Cut).len(), 1, "{acts:?}");
        assert_eq!(rounds_of(&acts, Bound::Rebase).len(), 1, "{acts:?}");
    }

    #[test]
    fn a_longer_path_learnt_by_the_loss_filter_costs_no_cut() {
        // As above, but the loss filter renewed its floor from a quiet sample (a keep-alive
        // between transfers) after the path got longer: that floor counts.
        let mut bound = DelayBound::default();
        let mut now = Instant::now();
        let short = drive(&mut bound, &mut now, 3, 50, AVOIDING, None, |_, _, _| {
            Duration::from_micros(150)
        });
        let mut random = xorshift();
        let long = drive(
            &mut bound,
            &mut now,
            200,
            50,
            AVOIDING,
            Some(RTT),
            |_, _, _| RTT * (95 + (random() % 11) as u32) / 100,
        );
        assert_eq!((short, long), (Vec::new(), Vec::new()));
    }

    /// A [`LossTolerant`] as quinn gets it from the factory.
    fn loss_tolerant() -> Box<LossTolerant> {
        let built = Arc::new(LossTolerantConfig::default()).build(Instant::now(), MTU);
        match built.into_any().downcast::<LossTolerant>() {
            Ok(controller) => controller,
            Err(_) => panic!("the factory builds LossTolerant"),
        }
    }

    /// `rounds` round trips of 20 acknowledgements whose RTT is `rtt`, through the
    /// controller's delay bound.
    fn acks(controller: &mut LossTolerant, now: &mut Instant, rounds: u32, rtt: Duration) {
        for _ in 0..rounds * 20 {
            controller.bound(*now, rtt, rtt, false);
            *now += rtt / 20;
        }
    }

    #[test]
    fn the_controller_passes_on_and_counts_what_it_takes_for_congestion() {
        let mut cc = loss_tolerant();
        let mut now = Instant::now();
        // Slow start: a queue is left to the loss that ends it.
        acks(&mut cc, &mut now, 1, RTT);
        acks(&mut cc, &mut now, 8, RTT * 3);
        assert_eq!(cc.reductions(), Reductions::default());
        // An ECN mark (no bytes lost) always counts, and ends slow start.
        let full = cc.window();
        cc.on_congestion_event(now, now, false, 0);
        assert_eq!(cc.reductions().loss, 1);
        let after_loss = cc.window();
        assert!(after_loss < full, "{after_loss} of {full}");
        // Two round trips later the queue is cut; the cut does not shorten it (the RTT here
        // does not answer to the window), so the bound takes it for its floor.
        acks(&mut cc, &mut now, 8, RTT * 3);
        let reductions = cc.reductions();
        assert_eq!(
            (reductions.queue, reductions.rebased),
            (1, 1),
            "{reductions:?}"
        );
        assert!(cc.window() < after_loss);
    }

    #[test]
    fn reductions_since_an_earlier_reading_never_go_negative() {
        let earlier = Reductions {
            loss: 3,
            queue: 5,
            rebased: 1,
        };
        let now = Reductions {
            loss: 4,
            queue: 9,
            rebased: 1,
        };
        assert_eq!(now.since(&earlier), [("loss", 1), ("queue", 4)]);
        // A controller that started afresh reads lower than what was seen: nothing new.
        assert_eq!(
            Reductions::default().since(&now),
            [("loss", 0), ("queue", 0)]
        );
    }
}
