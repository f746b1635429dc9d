//! Step 4 of the request path: site → a live connector session.
//!
//! Each registered connector connection is a [`Session`]. A site can have several (a
//! connector keeps two or more connections, and a site can have several connectors). We pick
//! the non-draining session with the most free stream slots, which spreads load and steers
//! around a connector that is busy or going away.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// One registered connector connection.
#[derive(Debug)]
pub struct Session {
    /// Edge-unique id of this session.
    pub id: u64,
    /// Site it serves.
    pub site: String,
    /// Connector id from its certificate.
    pub connector_id: String,
    /// Connector address as seen by the edge.
    pub addr: SocketAddr,
    /// SHA-256 of the connector's certificate (for revocation).
    pub fingerprint: [u8; 32],
    /// The QUIC connection.
    pub conn: transport::Connection,
    /// Set when the connector announced Drain: no new streams.
    pub draining: AtomicBool,
    /// When it registered.
    pub since: SystemTime,
    /// Last control-stream RTT in microseconds.
    pub rtt_us: AtomicU64,
    /// Asks the session's control task for a ping right now.
    pub probe: Notify,
    /// Counts messages received on the control stream: proof of life.
    heard: AtomicU64,
    heard_changed: Notify,
    streams: Arc<Semaphore>,
    max_streams: usize,
}

impl Session {
    /// A new session allowing `max_streams` concurrent streams.
    pub fn new(
        id: u64,
        site: String,
        connector_id: String,
        fingerprint: [u8; 32],
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
    pub fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.streams.clone().try_acquire_owned().ok()
    }

    /// Waits up to `limit` for a stream slot.
    pub async fn slot(&self, limit: Duration) -> Option<OwnedSemaphorePermit> {
        tokio::time::timeout(limit, self.streams.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// Records that the connector said something on the control stream.
    pub fn heard(&self) {
        self.heard.fetch_add(1, Ordering::Relaxed);
        self.heard_changed.notify_waiters();
    }

    /// Pings the connector and waits for any answer: `false` if none came within the limit
    /// (max of 1 s and 4 RTTs). Concurrent probes share one ping and one answer.
    pub async fn alive(&self) -> bool {
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

    /// Streams in use.
    pub fn active_streams(&self) -> usize {
        self.max_streams - self.streams.available_permits()
    }

    fn usable(&self) -> bool {
        !self.draining.load(Ordering::Relaxed)
    }
}

/// Live sessions by site.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: Mutex<HashMap<String, Vec<Arc<Session>>>>,
    next_id: AtomicU64,
}

/// Status view of one site's connectors.
#[derive(Debug, Serialize)]
pub struct ConnectorStatus {
    /// Connector id.
    pub id: String,
    /// Registered connections.
    pub connections: usize,
    /// Per connection detail.
    pub sessions: Vec<SessionStatus>,
}

/// Status view of one session.
#[derive(Debug, Serialize)]
pub struct SessionStatus {
    /// Connector address.
    pub addr: String,
    /// Registered since (Unix seconds).
    pub since: u64,
    /// Last RTT in milliseconds.
    pub rtt_ms: f64,
    /// Streams in use.
    pub active_streams: usize,
    /// Draining.
    pub draining: bool,
}

impl Registry {
    /// A fresh session id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a session.
    pub fn insert(&self, session: Arc<Session>) {
        let mut map = self.lock();
        map.entry(session.site.clone()).or_default().push(session);
    }

    /// Removes a session.
    pub fn remove(&self, session: &Session) {
        let mut map = self.lock();
        if let Some(list) = map.get_mut(&session.site) {
            list.retain(|s| s.id != session.id);
            if list.is_empty() {
                map.remove(&session.site);
            }
        }
    }

    /// Usable sessions of `site`, best first (most free slots).
    pub fn candidates(&self, site: &str) -> Vec<Arc<Session>> {
        let map = self.lock();
        let mut list: Vec<_> = map
            .get(site)
            .map(|l| l.iter().filter(|s| s.usable()).cloned().collect())
            .unwrap_or_default();
        list.sort_by_key(|s| s.active_streams());
        list
    }

    /// Number of registered sessions of `site`.
    pub fn count(&self, site: &str) -> usize {
        self.lock().get(site).map_or(0, Vec::len)
    }

    /// Status of `site`'s connectors, sorted by id.
    pub fn status(&self, site: &str) -> Vec<ConnectorStatus> {
        let map = self.lock();
        let mut by_id: HashMap<&str, Vec<SessionStatus>> = HashMap::new();
        for s in map.get(site).into_iter().flatten() {
            by_id
                .entry(&s.connector_id)
                .or_default()
                .push(SessionStatus {
                    addr: s.addr.to_string(),
                    since: s
                        .since
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs()),
                    rtt_ms: s.rtt_us.load(Ordering::Relaxed) as f64 / 1000.0,
                    active_streams: s.active_streams(),
                    draining: s.draining.load(Ordering::Relaxed),
                });
        }
        let mut out: Vec<_> = by_id
            .into_iter()
            .map(|(id, sessions)| ConnectorStatus {
                id: id.to_owned(),
                connections: sessions.len(),
                sessions,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Registered sessions of one connector of `site` (dead ones included).
    pub fn of_connector(&self, site: &str, connector_id: &str) -> Vec<Arc<Session>> {
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

    /// Every session (for shutdown).
    pub fn all(&self) -> Vec<Arc<Session>> {
        self.lock().values().flatten().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<Session>>>> {
        // A panic while holding this lock cannot leave the map inconsistent (every update is
        // a single push/retain), so a poisoned lock is still usable.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}
