//! Calibration: what the impairment really produces. A UDP echo (`doorless-bench udp-echo`)
//! runs in the edge and the home namespace; the driver sends numbered probes at a fixed pace
//! to each and records round-trip times and how many came back. The probe to the edge crosses
//! link 1 twice; the probe to home crosses links 1 and 2 twice each (routed by the edge
//! namespace), so it sees the whole client→home path the tunnelled targets' bytes take.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use crate::results::percentile;

/// `doorless-bench udp-echo BIND READY_FILE`: echoes every datagram to its sender.
pub(crate) fn udp_echo_main(bind: &str, ready: &Path) -> Result<()> {
    let sock = std::net::UdpSocket::bind(bind)?;
    std::fs::write(
        ready,
        json!({ "addr": sock.local_addr()?.to_string() }).to_string(),
    )?;
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf)?;
        let _ = sock.send_to(&buf[..n], from);
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Probe {
    pub(crate) sent: usize,
    pub(crate) received: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) min_ms: f64,
    pub(crate) max_ms: f64,
}

impl Probe {
    pub(crate) fn loss_pct(&self) -> f64 {
        100.0 * (self.sent - self.received) as f64 / self.sent.max(1) as f64
    }
}

/// Sends `n` 64-byte probes to `dst`, one every `gap`; waits up to `wait` after the last.
pub(crate) async fn probe(
    dst: SocketAddr,
    n: usize,
    gap: Duration,
    wait: Duration,
) -> Result<Probe> {
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
    sock.connect(dst).await?;
    let mut sent_at: HashMap<u64, Instant> = HashMap::with_capacity(n);
    let mut rtts = Vec::with_capacity(n);
    let mut buf = [0u8; 128];
    let start = Instant::now();
    let mut next = 0usize;
    let end_sending = start + gap * n as u32;
    loop {
        let now = Instant::now();
        if next < n && now >= start + gap * next as u32 {
            let mut pkt = [0u8; 64];
            pkt[..8].copy_from_slice(&(next as u64).to_be_bytes());
            sock.send(&pkt).await?;
            sent_at.insert(next as u64, Instant::now());
            next += 1;
            continue;
        }
        if next >= n && (rtts.len() == n || now > end_sending + wait) {
            break;
        }
        let until = if next < n {
            start + gap * next as u32
        } else {
            end_sending + wait
        };
        if let Ok(Ok(len)) = tokio::time::timeout_at(until.into(), sock.recv(&mut buf)).await
            && len >= 8
        {
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&buf[..8]);
            if let Some(t) = sent_at.remove(&u64::from_be_bytes(seq)) {
                rtts.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    rtts.sort_by(f64::total_cmp);
    Ok(Probe {
        sent: n,
        received: rtts.len(),
        p50_ms: percentile(&rtts, 50.0),
        p99_ms: percentile(&rtts, 99.0),
        min_ms: rtts.first().copied().unwrap_or(f64::NAN),
        max_ms: rtts.last().copied().unwrap_or(f64::NAN),
    })
}
