//! The registered connector connections: each is a [`Tunnel`], [`Tunnels`] holds them by site.
//!
//! A site can have several tunnels (a connector keeps two or more connections, and a site can
//! have several connectors). Choosing one for a request is the routing step's job, not this
//! module's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// One registered connector connection.
#[derive(Debug)]
pub(crate) struct Tunnel {
    /// Edge-unique id of this tunnel.
    pub(crate) id: u64,
    /// Site it serves.
    pub(crate) site: String,
    /// Connector id from its certificate.
    pub(crate) connector_id: String,
    /// Connector address as seen by the edge.
    pub(crate) addr: SocketAddr,
    /// SHA-256 of the connector's certificate (for revocation).
    pub(crate) fingerprint: pki::Fingerprint,
    /// The tunnel connection (QUIC or TLS/TCP).
    pub(crate) conn: transport::Connection,
    /// Set when the connector announced Drain: no new streams.
    pub(crate) draining: AtomicBool,
    /// When it registered.
    pub(crate) since: SystemTime,
    /// Last control-stream RTT in microseconds.
    pub(crate) rtt_us: AtomicU64,
    /// Asks the tunnel's control task for a ping right now.
    pub(crate) probe: Notify,
    /// Counts messages received on the control stream: proof of life.
    heard: AtomicU64,
    heard_changed: Notify,
    streams: Arc<Semaphore>,
    max_streams: usize,
}

impl Tunnel {
    /// A new tunnel allowing `max_streams` concurrent streams.
    pub(crate) fn new(
        id: u64,
        site: String,
        connector_id: String,
        fingerprint: pki::Fingerprint,
        conn: transport::Connection,
        max_streams: usize,
    ) -> Self {
        Self {
            id,
            site,
            connector_id,
            fingerprint,
            addr: conn.remote_addr(),
            conn,
            draining: AtomicBool::new(false),
            since: SystemTime::now(),
            rtt_us: AtomicU64::new(0),
            probe: Notify::new(),
            heard: AtomicU64::new(0),
            heard_changed: Notify::new(),
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
        }
    }

    /// A stream slot, if one is free right now.
    pub(crate) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }

    /// Waits up to `limit` for a stream slot.
    pub(crate) async fn slot(&self, limit: Duration) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(limit, self.streams.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// Records that the connector said something on the control stream.
    pub(crate) fn heard(&self) {
        self.heard.fetch_add(1, Ordering::Relaxed);
        self.heard_changed.notify_waiters();
    }

    /// Pings the connector and waits for any answer: `false` if none came within the limit
    /// (max of 1 s and 4 RTTs). Concurrent probes share one ping and one answer.
    pub(crate) async fn alive(&self) -> bool {
        let rtt = Duration::from_micros(self.rtt_us.load(Ordering::Relaxed));
        let limit = Duration::from_secs(1).max(rtt * 4);
        let before = self.heard.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + limit;
        self.probe.notify_one();
        loop {
            let changed = self.heard_changed.notified();
            if self.heard.load(Ordering::Relaxed) != before {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.heard.load(Ordering::Relaxed) != before;
            }
        }
    }

    /// Streams in use. A stream counts until it is closed in both directions and what the
    /// edge sent was acknowledged (its slot rides in the stream's halves, see
    /// `transport::Connection::open_holding`), so this is the connector's count too.
    pub(crate) fn active_streams(&self) -> usize {
        self.max_streams - self.streams.available_permits()
    }

    /// Waits until no stream is in use (taking every slot, so none opens meanwhile).
    pub(crate) async fn idle(&self) {
        let all = u32::try_from(self.max_streams).unwrap_or(u32::MAX);
        let _all = self.streams.acquire_many(all).await;
    }

    fn usable(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }
}

/// Live tunnels by site.
#[derive(Debug, Default)]
pub(crate) struct Tunnels {
    by_site: Mutex<HashMap<String, Vec<Arc<Tunnel>>>>,
    next_id: AtomicU64,
    /// Counts [`Tunnels::candidates`] calls: each call breaks ties in its own order ([`tie`]).
    turns: AtomicU64,
    /// Woken at every registration, for requests waiting for a connector.
    registered: Notify,
}

/// Status view of one site's connectors.
#[derive(Debug, Serialize)]
pub(crate) struct ConnectorStatus {
    /// Connector id.
    pub(crate) id: String,
    /// Registered connections.
    pub(crate) connections: usize,
    /// Per connection detail.
    #[serde(rename = "sessions")]
    pub(crate) tunnels: Vec<TunnelStatus>,
}

/// Status view of one tunnel.
#[derive(Debug, Serialize)]
pub(crate) struct TunnelStatus {
    /// Connector address.
    pub(crate) addr: String,
    /// Registered since (Unix seconds).
    pub(crate) since: u64,
    /// Last RTT in milliseconds.
    pub(crate) rtt_ms: f64,
    /// Streams in use.
    pub(crate) active_streams: usize,
    /// Draining.
    pub(crate) draining: bool,
    /// `quic` or `tcp`.
    pub(crate) transport: &'static str,
}

impl Tunnels {
    /// A fresh tunnel id.
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a tunnel.
    pub(crate) fn insert(&self, tunnel: Arc<Tunnel>) {
        self.lock()
            .entry(tunnel.site.clone())
            .or_default()
            .push(tunnel);
        self.registered.notify_waiters();
    }

    /// Usable tunnels of `site` but `avoid`, as [`Tunnels::candidates`], waiting until `deadline` for a
    /// registration while there are none (a connector restarting, or reconnecting after a
    /// network change); empty if none came. The flag says whether it had to wait.
    pub(crate) async fn candidates_by(
        &self,
        site: &str,
        avoid: &[Arc<Tunnel>],
        deadline: tokio::time::Instant,
    ) -> (Vec<Arc<Tunnel>>, bool) {
        let mut waited = false;
        loop {
            // Registered for wake-ups before looking, so a registration between the look and
            // the wait is not missed.
            let registered = self.registered.notified();
            tokio::pin!(registered);
            registered.as_mut().enable();
            let mut list = self.candidates(site);
            list.retain(|t| avoid.iter().all(|a| a.id != t.id));
            if !list.is_empty() || tokio::time::Instant::now() >= deadline {
                return (list, waited);
            }
            waited = true;
            if tokio::time::timeout_at(deadline, registered).await.is_err() {
                return (Vec::new(), true);
            }
        }
    }

    /// Removes a tunnel.
    pub(crate) fn remove(&self, tunnel: &Tunnel) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(&tunnel.site) {
            list.retain(|s| s.id != tunnel.id);
            if list.is_empty() {
                map.remove(&tunnel.site);
            }
        }
    }

    /// Usable tunnels of `site`, best first: fewest active streams, ties in random order, so
    /// idle connectors (and each connector's connections) share the load and one connector's
    /// death costs only its share.
    pub(crate) fn candidates(&self, site: &str) -> Vec<Arc<Tunnel>> {
        let turn = self.turns.fetch_add(1, Ordering::Relaxed);
        let map = self.lock();
        let mut list: Vec<(usize, u64, Arc<Tunnel>)> = map
            .get(site)
            .map(|l| {
                l.iter()
                    .filter(|s| s.usable())
                    .map(|s| (s.active_streams(), tie(turn, s.id), s.clone()))
                    .collect()
            })
            .unwrap_or_default();
        list.sort_by_key(|(active, tie, _)| (*active, *tie));
        list.into_iter().map(|(_, _, tunnel)| tunnel).collect()
    }

    /// Status of `site`'s connectors, sorted by id.
    pub(crate) fn status(&self, site: &str) -> Vec<ConnectorStatus> {
        let map = self.lock();
        let mut by_id: HashMap<&str, Vec<TunnelStatus>> = HashMap::new();
        for s in map.get(site).into_iter().flatten() {
            by_id
                .entry(&s.connector_id)
                .or_default()
                .push(TunnelStatus {
                    addr: s.addr.to_string(),
                    since: s
                        .since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    rtt_ms: s.rtt_us.load(Ordering::Relaxed) as f64 / 1000.0,
                    active_streams: s.active_streams(),
                    draining: s.draining.load(Ordering::Relaxed),
                    transport: s.conn.transport().name(),
                });
        }
        let mut out: Vec<_> = by_id
            .into_iter()
            .map(|(id, tunnels)| ConnectorStatus {
                id: id.to_owned(),
                connections: tunnels.len(),
                tunnels,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Registered tunnels of one connector of `site` (dead ones included).
    pub(crate) fn of_connector(&self, site: &str, connector_id: &str) -> Vec<Arc<Tunnel>> {
        let map = self.lock();
        map.get(site)
            .map(|l| {
                l.iter()
                    .filter(|s| s.connector_id == connector_id)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every tunnel (for shutdown and revocation).
    pub(crate) fn all(&self) -> Vec<Arc<Tunnel>> {
        self.lock().values().flatten().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Tunnel>>>> {
        // A panic while holding this lock cannot leave the map inconsistent (every update is
        // a single push/retain), so a poisoned lock is still usable.
        self.by_site.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Tunnel `id`'s tie-breaker in call `turn`: a splitmix64 mix of the two, so equally loaded
/// tunnels come first in turn (a fixed order would send every request to the same idle
/// tunnel). Not the system's random generator: this runs for every request, and aws-lc's
/// generator cost ~3 % of the edge's CPU at 64 concurrent small requests (docs/benchmarks.md);
/// nothing here needs to be unpredictable.
fn tie(turn: u64, id: u64) -> u64 {
    const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut z = turn.wrapping_mul(GOLDEN) ^ id.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::tie;

    /// Equally loaded tunnels each come first about as often as the others.
    #[test]
    fn ties_are_shared() {
        for ids in [vec![1u64, 2], vec![3, 4, 5], vec![7, 8, 9, 10]] {
            let mut first = vec![0usize; ids.len()];
            let calls = 6000u64;
            for turn in 0..calls {
                let winner = (0..ids.len())
                    .min_by_key(|&i| tie(turn, ids[i]))
                    .unwrap_or_else(|| panic!("no ids"));
                first[winner] += 1;
            }
            let fair = calls as usize / ids.len();
            for (i, n) in first.iter().enumerate() {
                assert!(
                    n * 10 > fair * 9 && n * 10 < fair * 11,
                    "{ids:?}: id {} first {n} times of {calls}",
                    ids[i]
                );
            }
        }
    }
}
