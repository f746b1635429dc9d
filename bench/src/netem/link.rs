//! The impairment itself: a userspace forwarder between two TUN devices. Every IP packet read
//! from one side is dropped with probability `loss`, or written to the other side after
//! `delay ± jitter` (uniform). It looks at no header, so QUIC/UDP and TCP are treated alike.
//!
//! Per direction: a reader thread (poll + read, decide, stamp a release time, hand over) and a
//! writer thread (sleep until the release time, write). The hand-over queue is bounded
//! (`QUEUE` packets); a packet that finds it full is dropped and counted. Release times never
//! go backwards, so jitter spreads packets out but never reorders them (a FIFO path, as most
//! real paths are; netem's jitter would reorder).
//!
//! Not a bandwidth shaper, except on a direction given a [`Bottleneck`] (the home uplink,
//! `BENCH_UPLINK`): there packets leave one after another at its rate from a drop-tail
//! buffer of its length in time, then take the delay. Elsewhere no rate limit: what limits
//! throughput is the end points, the forwarder's CPU and the TUN queues.

use std::fs::File;
use std::io::{ErrorKind, Read as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::tun::{realtime_this_thread, wait_readable};

/// Packets queued per direction before drops.
const QUEUE: usize = 8192;
/// Largest packet read from a TUN device (its MTU is 1500; headroom for safety).
const MAX_PACKET: usize = 65_536;

/// What the forwarder applies right now; changed between measurements while traffic flows.
#[derive(Default)]
pub(crate) struct Params {
    pub(crate) delay_us: AtomicU64,
    pub(crate) jitter_us: AtomicU64,
    /// Drop probability in parts per million.
    pub(crate) loss_ppm: AtomicU64,
}

/// A bottleneck on one direction: a link of `rate_bps` behind a drop-tail buffer that holds
/// `buffer_us` of it; a packet that finds the buffer full is dropped (a queue-full drop).
/// Rate 0: none.
#[derive(Default)]
pub(crate) struct Bottleneck {
    pub(crate) rate_bps: AtomicU64,
    pub(crate) buffer_us: AtomicU64,
}

/// Per-direction counters.
#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub(crate) forwarded: AtomicU64,
    pub(crate) dropped_loss: AtomicU64,
    pub(crate) dropped_queue: AtomicU64,
    pub(crate) write_errors: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> [u64; 4] {
        [
            self.forwarded.load(Ordering::Relaxed),
            self.dropped_loss.load(Ordering::Relaxed),
            self.dropped_queue.load(Ordering::Relaxed),
            self.write_errors.load(Ordering::Relaxed),
        ]
    }
}

/// splitmix64: small, seedable, good enough to decide drops and jitter.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
}

/// One direction of a link: reader + writer threads.
pub(crate) struct Direction {
    pub(crate) counters: Arc<Counters>,
    threads: Vec<JoinHandle<()>>,
}

impl Direction {
    pub(crate) fn start(
        name: &str,
        from: Arc<File>,
        to: Arc<File>,
        params: Arc<Params>,
        bottleneck: Arc<Bottleneck>,
        stop: Arc<AtomicBool>,
        seed: u64,
    ) -> std::io::Result<Self> {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = sync_channel::<(Instant, Vec<u8>)>(QUEUE);
        let reader = {
            let (counters, stop) = (counters.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("netem-{name}-rd"))
                .spawn(move || {
                    read_loop(&from, &tx, &params, &bottleneck, &counters, &stop, seed)
                })?
        };
        let writer = {
            let counters = counters.clone();
            std::thread::Builder::new()
                .name(format!("netem-{name}-wr"))
                .spawn(move || write_loop(&to, &rx, &counters, &stop))?
        };
        Ok(Self {
            counters,
            threads: vec![reader, writer],
        })
    }

    pub(crate) fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn read_loop(
    from: &File,
    tx: &SyncSender<(Instant, Vec<u8>)>,
    params: &Params,
    bottleneck: &Bottleneck,
    counters: &Counters,
    stop: &AtomicBool,
    seed: u64,
) {
    if let Err(e) = realtime_this_thread() {
        eprintln!(
            "  WARNING: netem forwarder thread not real-time ({e}): delays may stretch under load"
        );
    }
    let mut rng = Rng(seed);
    let mut buf = vec![0u8; MAX_PACKET];
    let mut last_release = Instant::now();
    // When the bottleneck's link is free again (its buffer drains until then).
    let mut busy_until = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match wait_readable(from, Duration::from_millis(50)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        // Drain what is there.
        loop {
            let n = match (&*from).read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            let loss = params.loss_ppm.load(Ordering::Relaxed);
            if loss > 0 && rng.below(1_000_000) < loss {
                counters.dropped_loss.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let delay = params.delay_us.load(Ordering::Relaxed) as i64;
            let jitter = params.jitter_us.load(Ordering::Relaxed) as i64;
            let offset = if jitter > 0 {
                rng.below(2 * jitter as u64 + 1) as i64 - jitter
            } else {
                0
            };
            let us = (delay + offset).max(0) as u64;
            let mut departs = Instant::now();
            // Rate 0: no bottleneck (no time on its link).
            let on_link = (n as u64 * 8 * 1_000_000_000)
                .checked_div(bottleneck.rate_bps.load(Ordering::Relaxed));
            if let Some(ns) = on_link {
                let start = busy_until.max(departs);
                let buffer = Duration::from_micros(bottleneck.buffer_us.load(Ordering::Relaxed));
                if start.saturating_duration_since(departs) > buffer {
                    counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                busy_until = start + Duration::from_nanos(ns);
                departs = busy_until;
            }
            let release = (departs + Duration::from_micros(us)).max(last_release);
            match tx.try_send((release, buf[..n].to_vec())) {
                Ok(()) => last_release = release,
                Err(TrySendError::Full(_)) => {
                    counters.dropped_queue.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    }
}

fn write_loop(
    to: &File,
    rx: &Receiver<(Instant, Vec<u8>)>,
    counters: &Counters,
    stop: &AtomicBool,
) {
    let _ = realtime_this_thread();
    while !stop.load(Ordering::Relaxed) {
        let (release, packet) = match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(p) => p,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let now = Instant::now();
        if release > now {
            std::thread::sleep(release - now);
        }
        // A TUN write takes the whole packet or fails; never a part of it.
        match (&*to).write(&packet) {
            Ok(n) if n == packet.len() => {
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                counters.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
