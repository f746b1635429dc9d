//! A UDP relay between a connector and the edge's QUIC port that can drop everything: a
//! network that blocks UDP, switched on and off by the test. Small on purpose (one upstream
//! socket per client address, no delay or loss models).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::Result;
use tokio::net::UdpSocket;

/// A running relay; stops when dropped.
pub struct UdpRelay {
    addr: SocketAddr,
    blocked: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpRelay {
    /// Relays datagrams sent to [`Self::addr`] to `target` and the answers back, dropping
    /// all of them while blocked.
    pub async fn start(target: SocketAddr, blocked: bool) -> Result<Self> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let addr = front.local_addr()?;
        let blocked = Arc::new(AtomicBool::new(blocked));
        let dropped = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(relay(front, target, blocked.clone(), dropped.clone()));
        Ok(Self {
            addr,
            blocked,
            dropped,
            task,
        })
    }

    /// Where the connector should send its QUIC packets.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops (true) or relays (false) from now on.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.store(blocked, Ordering::SeqCst);
    }

    /// Datagrams dropped so far (both directions).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    front: Arc<UdpSocket>,
    target: SocketAddr,
    blocked: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut tasks = Vec::new();
    let mut buf = vec![0u8; 65_536];
    while let Ok((n, client)) = front.recv_from(&mut buf).await {
        if blocked.load(Ordering::SeqCst) {
            dropped.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let upstream = match upstreams.get(&client) {
            Some(up) => up.clone(),
            None => {
                let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if up.connect(target).await.is_err() {
                    continue;
                }
                let up = Arc::new(up);
                upstreams.insert(client, up.clone());
                tasks.push(AbortOnDrop(tokio::spawn(back(
                    up.clone(),
                    front.clone(),
                    client,
                    blocked.clone(),
                    dropped.clone(),
                ))));
                up
            }
        };
        let _ = upstream.send(&buf[..n]).await;
    }
}

async fn back(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    blocked: Arc<AtomicBool>,
    dropped: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = upstream.recv(&mut buf).await {
        if blocked.load(Ordering::SeqCst) {
            dropped.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        let _ = front.send_to(&buf[..n], client).await;
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
