//! Limits that keep a flood from starving real users: per-address handshake budgets,
//! per-address connection caps, and rate-limited denial logs.
//!
//! An "address" is a network ([`Prefixes`]): by default each IPv4 address, and each IPv6 /64,
//! since an IPv6 client usually controls a whole /64 and could otherwise spread a flood over
//! 2^64 addresses, each with its own budget.
//!
//! The budget is a token bucket per client address: starting a TLS handshake costs a token,
//! a handshake that ends with a valid certificate gets its token back. So real users, who
//! authenticate, spend nothing, while a scanner's or bot's failed handshakes drain its own
//! bucket and it is then refused before any TLS work. Time is passed in (`now`), so the
//! arithmetic is tested without a clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries above this are pruned (full buckets first); bounds memory under address spraying.
const MAX_TRACKED: usize = 65_536;

/// How client addresses are grouped into the "addresses" the limits count: the prefix
/// length kept of an IPv4 and of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prefixes {
    /// Bits kept of an IPv4 address (≤ 32).
    pub(crate) v4: u8,
    /// Bits kept of an IPv6 address (≤ 128).
    pub(crate) v6: u8,
}

impl Prefixes {
    /// The network `ip` counts under: its first `v4`/`v6` bits, the rest zero. IPv4-mapped
    /// IPv6 addresses count as IPv4.
    pub(crate) fn key(self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.v4.min(32)))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.v6.min(128)))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        }
    }
}

/// Per-address token buckets.
#[derive(Debug)]
pub(crate) struct HandshakeBudget {
    rate: f64,
    burst: f64,
    prefixes: Prefixes,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl HandshakeBudget {
    /// `rate` tokens per second, up to `burst`, per network of `prefixes`.
    pub(crate) fn new(rate: f64, burst: u32, prefixes: Prefixes) -> Self {
        Self {
            rate,
            burst: f64::from(burst),
            prefixes,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for a handshake from `ip`; `false` means over budget.
    pub(crate) fn take(&self, ip: IpAddr, now: Instant) -> bool {
        let ip = self.prefixes.key(ip);
        let mut map = self.lock();
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            self.prune(&mut map, now);
        }
        let bucket = map.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Returns the token of a handshake that authenticated.
    pub(crate) fn refund(&self, ip: IpAddr) {
        let ip = self.prefixes.key(ip);
        if let Some(bucket) = self.lock().get_mut(&ip) {
            bucket.tokens = (bucket.tokens + 1.0).min(self.burst);
        }
    }

    /// Addresses tracked now.
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.lock().len()
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.at = now;
    }

    fn prune(&self, map: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        // Full buckets carry no information: drop them. If that frees nothing (a spray of
        // addresses each with a spent token), drop everything older than a refill period;
        // at worst an attacker regains a burst, which the global handshake cap still bounds.
        map.retain(|_, b| {
            let mut b = *b;
            self.refill(&mut b, now);
            b.tokens < self.burst
        });
        if map.len() >= MAX_TRACKED {
            let horizon = Duration::from_secs_f64(self.burst / self.rate);
            map.retain(|_, b| now.saturating_duration_since(b.at) < horizon);
        }
        if map.len() >= MAX_TRACKED {
            map.clear();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        // Every update is a single entry operation: a poisoned map is still consistent.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Connections open per client address.
#[derive(Debug)]
pub(crate) struct PerAddress {
    max: usize,
    prefixes: Prefixes,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Holds one connection slot of an address until dropped; owned, so an upgraded connection
/// (a WebSocket, which outlives its HTTP connection task) can carry it until it closes.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerAddress {
    /// At most `max` connections per network of `prefixes`.
    pub(crate) fn new(max: usize, prefixes: Prefixes) -> Self {
        Self {
            max,
            prefixes,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A slot for `ip`, or `None` if it has `max` open already.
    pub(crate) fn acquire(&self, ip: IpAddr) -> Option<AddressSlot> {
        let ip = self.prefixes.key(ip);
        let mut map = lock(&self.open);
        let count = map.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            open: self.open.clone(),
            ip,
        })
    }
}

fn lock(open: &Mutex<HashMap<IpAddr, usize>>) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
    // Every update is a single entry operation: a poisoned map is still consistent.
    open.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.open);
        if let Some(count) = map.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Lets at most `per_window` log lines through per window and counts the rest, so a flood
/// of denials cannot flood the log (or the disk) too.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    per_window: u32,
    window: Duration,
    state: Mutex<(Instant, u32, u64)>,
}

impl LogLimiter {
    /// `per_window` lines per `window`.
    pub(crate) fn new(per_window: u32, window: Duration, now: Instant) -> Self {
        Self {
            per_window,
            window,
            state: Mutex::new((now, 0, 0)),
        }
    }

    /// `Some(suppressed)` if a line may be logged now (with how many were suppressed since
    /// the last one that was), `None` if this one must be dropped.
    pub(crate) fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (start, used, suppressed) = &mut *state;
        if now.saturating_duration_since(*start) >= self.window {
            *start = now;
            *used = 0;
        }
        if *used < self.per_window {
            *used += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 2));

    const EXACT: Prefixes = Prefixes { v4: 32, v6: 128 };
    const DEFAULT: Prefixes = Prefixes { v4: 32, v6: 64 };

    fn v6(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| panic!("{s}"))
    }

    #[test]
    fn prefixes_group_addresses() {
        assert_eq!(DEFAULT.key(A), A);
        assert_eq!(
            DEFAULT.key(v6("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            v6("2001:db8:1:2::")
        );
        assert_eq!(
            DEFAULT.key(v6("::ffff:198.51.100.1")),
            A,
            "mapped IPv4 is IPv4"
        );
        let wide = Prefixes { v4: 24, v6: 48 };
        assert_eq!(wide.key(B), IpAddr::from([198, 51, 100, 0]));
        assert_eq!(wide.key(v6("2001:db8:1:2::1")), v6("2001:db8:1::"));
        assert_eq!(EXACT.key(v6("2001:db8::1")), v6("2001:db8::1"));
    }

    /// Every address of one IPv6 /64 shares one budget and one set of connection slots.
    #[test]
    fn an_ipv6_64_is_one_address() {
        let t0 = Instant::now();
        let budget = HandshakeBudget::new(1.0, 2, DEFAULT);
        assert!(budget.take(v6("2001:db8::1"), t0));
        assert!(budget.take(v6("2001:db8::2"), t0));
        assert!(
            !budget.take(v6("2001:db8::ffff:3"), t0),
            "same /64, burst spent"
        );
        assert!(budget.take(v6("2001:db8:0:1::1"), t0), "next /64");
        let slots = PerAddress::new(1, DEFAULT);
        let held = slots.acquire(v6("2001:db8::1"));
        assert!(held.is_some());
        assert!(slots.acquire(v6("2001:db8::2")).is_none());
        drop(held);
        assert!(slots.acquire(v6("2001:db8::2")).is_some());
    }

    #[test]
    fn budget_drains_refills_and_refunds() {
        let t0 = Instant::now();
        let budget = HandshakeBudget::new(2.0, 3, DEFAULT);
        assert!(budget.take(A, t0));
        assert!(budget.take(A, t0));
        assert!(budget.take(A, t0));
        assert!(!budget.take(A, t0), "burst spent");
        assert!(budget.take(B, t0), "other addresses are unaffected");
        assert!(
            budget.take(A, t0 + Duration::from_millis(500)),
            "one token per 0.5 s"
        );
        assert!(!budget.take(A, t0 + Duration::from_millis(500)));
        budget.refund(A);
        assert!(
            budget.take(A, t0 + Duration::from_millis(500)),
            "authenticated handshakes cost nothing"
        );
        // Never above the burst, however long the wait.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(budget.take(A, later));
        }
        assert!(!budget.take(A, later));
    }

    #[test]
    fn budget_memory_is_bounded() {
        let t0 = Instant::now();
        let budget = HandshakeBudget::new(1.0, 2, DEFAULT);
        for i in 0..(MAX_TRACKED as u32 + 1000) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            budget.take(ip, t0);
        }
        assert!(budget.tracked() <= MAX_TRACKED);
    }

    #[test]
    fn per_address_slots() {
        let limits = PerAddress::new(2, DEFAULT);
        let a1 = limits.acquire(A);
        let a2 = limits.acquire(A);
        assert!(a1.is_some() && a2.is_some());
        assert!(limits.acquire(A).is_none());
        assert!(limits.acquire(B).is_some());
        drop(a1);
        assert!(limits.acquire(A).is_some());
    }

    #[test]
    fn log_limiter_counts_what_it_drops() {
        let t0 = Instant::now();
        let log = LogLimiter::new(2, Duration::from_secs(10), t0);
        assert_eq!(log.admit(t0), Some(0));
        assert_eq!(log.admit(t0), Some(0));
        assert_eq!(log.admit(t0), None);
        assert_eq!(log.admit(t0), None);
        assert_eq!(log.admit(t0 + Duration::from_secs(10)), Some(2));
    }
}
