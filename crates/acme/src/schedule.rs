//! When to order: pure functions of the stored certificate, the policy, the time and a random
//! number, so every rule is table-tested without a clock or a CA.

use std::time::{Duration, SystemTime};

use crate::RenewalPolicy;
use crate::store::StoredCert;

/// Why a site needs an order now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderReason {
    /// No usable certificate is stored.
    Missing,
    /// The stored certificate does not name every hostname of the site.
    Hostnames,
    /// The stored certificate comes from another CA directory (e.g. staging → production).
    Directory,
    /// The renewal time has come.
    Due,
}

/// Whether (and why) `stored` must be replaced now.
pub(crate) fn order_reason(
    now: SystemTime,
    stored: Option<&StoredCert>,
    hostnames: &[String],
    directory: &str,
    renew_at: Option<SystemTime>,
) -> Option<OrderReason> {
    let Some(cert) = stored else {
        return Some(OrderReason::Missing);
    };
    if !cert.covers(hostnames) {
        return Some(OrderReason::Hostnames);
    }
    if cert.directory.as_deref().is_some_and(|d| d != directory) {
        return Some(OrderReason::Directory);
    }
    match renew_at {
        Some(at) if now < at => None,
        _ => Some(OrderReason::Due),
    }
}

/// The renewal time of a certificate valid from `not_before` to `not_after` when the CA gives
/// no window: `renew_at` of the lifetime, moved earlier by up to `jitter` of the lifetime.
/// `random` is uniform in [0, 1).
pub(crate) fn renew_at(
    not_before: SystemTime,
    not_after: SystemTime,
    policy: &RenewalPolicy,
    random: f64,
) -> SystemTime {
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    let fraction = (policy.renew_at - policy.jitter * random.clamp(0.0, 1.0)).max(0.0);
    not_before + lifetime.mul_f64(fraction)
}

/// A uniformly random time in the CA's suggested window (RFC 9773 §4.2). A window that ends
/// before it starts is taken as its start.
pub(crate) fn in_window(start: SystemTime, end: SystemTime, random: f64) -> SystemTime {
    let width = end.duration_since(start).unwrap_or(Duration::ZERO);
    start + width.mul_f64(random.clamp(0.0, 1.0))
}

impl RenewalPolicy {
    /// The range the wait after the `failures`-th consecutive failure is drawn from:
    /// `retry_initial` doubled per failure, capped at `retry_max`, then "equal jitter" (the
    /// upper half of that). `failures` counts from 1.
    pub fn retry_window(&self, failures: u32) -> (Duration, Duration) {
        let doublings = failures.saturating_sub(1).min(32);
        let base = self
            .retry_initial
            .checked_mul(1u32 << doublings.min(31))
            .unwrap_or(self.retry_max)
            .min(self.retry_max);
        (base / 2, base)
    }

    /// The wait after the `failures`-th consecutive failure; `random` is uniform in [0, 1).
    pub(crate) fn retry_delay(&self, failures: u32, random: f64) -> Duration {
        let (low, high) = self.retry_window(failures);
        low + (high - low).mul_f64(random.clamp(0.0, 1.0))
    }
}

/// A uniform random number in [0, 1) from the system's CSPRNG (0.5 if it fails, which only
/// loses the jitter).
pub(crate) fn random() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    // 53 random bits: exactly representable.
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86400);

    #[test]
    fn renews_at_two_thirds_moved_earlier_by_the_jitter_only() {
        let policy = RenewalPolicy::default();
        let start = SystemTime::UNIX_EPOCH + 1000 * DAY;
        let end = start + 90 * DAY;
        assert_eq!(renew_at(start, end, &policy, 0.0), start + 60 * DAY);
        assert_eq!(renew_at(start, end, &policy, 1.0), start + 57 * DAY);
        let mid = renew_at(start, end, &policy, 0.5);
        assert!(mid > start + 57 * DAY && mid < start + 60 * DAY);
        // Six-day certificates renew on day 4 at the latest.
        let short = renew_at(start, start + 6 * DAY, &policy, 0.0);
        assert_eq!(short, start + 4 * DAY);
        // Nonsense validity (ends before it starts) means "renew now".
        assert_eq!(renew_at(end, start, &policy, 0.3), end);
    }

    #[test]
    fn ari_window_is_used_uniformly_and_defensively() {
        let start = SystemTime::UNIX_EPOCH + DAY;
        let end = start + 2 * DAY;
        assert_eq!(in_window(start, end, 0.0), start);
        assert_eq!(in_window(start, end, 0.5), start + DAY);
        assert_eq!(in_window(end, start, 0.7), end);
        assert_eq!(in_window(start, end, 7.0), end);
    }

    #[test]
    fn retries_double_up_to_the_cap() {
        let policy = RenewalPolicy {
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(600),
            ..RenewalPolicy::default()
        };
        let highs: Vec<u64> = (1..=7)
            .map(|n| policy.retry_window(n).1.as_secs())
            .collect();
        assert_eq!(highs, [60, 120, 240, 480, 600, 600, 600]);
        assert_eq!(policy.retry_window(0).1.as_secs(), 60);
        assert_eq!(policy.retry_window(u32::MAX).1.as_secs(), 600);
        for n in 1..10 {
            let (low, high) = policy.retry_window(n);
            assert_eq!(low * 2, high);
            for r in [0.0, 0.3, 0.999] {
                let d = policy.retry_delay(n, r);
                assert!(d >= low && d <= high);
            }
        }
    }

    #[test]
    fn orders_only_for_a_reason() -> Result<(), Box<dyn std::error::Error>> {
        let tmp = tempfile::tempdir()?;
        let store = crate::Store::open(tmp.path())?;
        let key = rcgen::KeyPair::generate()?;
        let cert =
            rcgen::CertificateParams::new(vec!["a.example".to_owned()])?.self_signed(&key)?;
        let ours = "https://ca.example/dir";
        let stored = store.save_site("s", &cert.pem(), &key.serialize_pem(), Some(ours), None)?;
        let imported = store.import("t", &cert.pem(), &key.serialize_pem())?;
        let names = vec!["a.example".to_owned()];
        let now = SystemTime::now();
        let later = Some(now + DAY);
        let earlier = Some(now - DAY);
        let other = "https://other.example/dir";
        let cases = [
            (None, ours, later, Some(OrderReason::Missing)),
            (Some(&stored), ours, later, None),
            (Some(&stored), ours, earlier, Some(OrderReason::Due)),
            (Some(&stored), ours, None, Some(OrderReason::Due)),
            (Some(&stored), other, later, Some(OrderReason::Directory)),
            // An imported certificate is not from "another" CA: renewed when due, not at once.
            (Some(&imported), ours, later, None),
        ];
        for (i, (cert, directory, renew, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                order_reason(now, cert, &names, directory, renew),
                want,
                "case {i}"
            );
        }
        let more = vec!["a.example".to_owned(), "b.example".to_owned()];
        assert_eq!(
            order_reason(now, Some(&stored), &more, ours, later),
            Some(OrderReason::Hostnames)
        );
        Ok(())
    }

    #[test]
    fn random_is_a_fraction() {
        for _ in 0..1000 {
            let r = random();
            assert!((0.0..1.0).contains(&r));
        }
    }
}
