//! Scenario 5: unauthenticated handshake flood vs an authenticated client.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use tokio::io::AsyncWriteExt as _;

use crate::clients::{Io, connect, connect_from, get_request, read_response};
use crate::results::percentile;
use crate::targets::{Pki, Target};

pub(crate) struct FloodReport {
    pub(crate) calm_p50: f64,
    pub(crate) calm_p99: f64,
    pub(crate) flood_p50: f64,
    pub(crate) flood_p99: f64,
    pub(crate) calm_new_p99: f64,
    pub(crate) flood_new_p99: f64,
    pub(crate) auth_failed: u64,
    pub(crate) flood_sent: u64,
    pub(crate) flood_completed_handshakes: u64,
}

/// Authenticated client for `secs`: sequential keep-alive GETs on one connection, plus a new
/// connection (full handshake) + GET every 50 ms. Returns (keep-alive latencies µs,
/// new-connection latencies µs, failures).
async fn auth_probe(
    t: Arc<Target>,
    pki_tls: Arc<rustls::ClientConfig>,
    full: Arc<rustls::ClientConfig>,
    secs: u64,
) -> (Vec<f64>, Vec<f64>, u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let t2 = t.clone();
    let fresh = tokio::spawn(async move {
        let mut lat = Vec::new();
        let mut failed = 0u64;
        let mut buf = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while Instant::now() < deadline && lat.len() < 10_000 {
            tick.tick().await;
            let start = Instant::now();
            let r = tokio::time::timeout(Duration::from_secs(10), async {
                let mut s = connect(&t2, Some(&full)).await?;
                s.write_all(&get_request("/s", true)).await?;
                read_response(&mut s, &mut buf).await
            })
            .await;
            match r {
                Ok(Ok(200)) => lat.push(start.elapsed().as_secs_f64() * 1e6),
                _ => failed += 1,
            }
        }
        (lat, failed)
    });
    let mut lat = Vec::new();
    let mut failed = 0u64;
    let mut conn: Option<Io> = None;
    let mut buf = Vec::new();
    let req = get_request("/s", false);
    while Instant::now() < deadline && lat.len() < 200_000 {
        let start = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            if conn.is_none() {
                conn = Some(connect(&t, Some(&pki_tls)).await?);
            }
            let s = conn.as_mut().ok_or_else(|| anyhow!("no connection"))?;
            s.write_all(&req).await?;
            read_response(s, &mut buf).await
        })
        .await;
        match r {
            Ok(Ok(200)) => lat.push(start.elapsed().as_secs_f64() * 1e6),
            _ => {
                failed += 1;
                conn = None;
            }
        }
        // ~1000 requests/s: a user, not a load generator.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (fresh_lat, fresh_failed) = fresh.await.unwrap_or_default();
    (lat, fresh_lat, failed + fresh_failed)
}

pub(crate) async fn flood(t: &Target, pki: &Pki, count: usize, secs: u64) -> Result<FloodReport> {
    let target = Arc::new(Target {
        kind: t.kind,
        addr: t.addr,
        tls: t.tls,
        roots: vec![],
    });
    // Calm.
    let (mut calm, mut calm_new, calm_failed) = auth_probe(
        target.clone(),
        pki.tls.clone(),
        pki.tls_full.clone(),
        secs.min(5),
    )
    .await;
    calm.sort_by(f64::total_cmp);
    calm_new.sort_by(f64::total_cmp);
    // Flood from 127.0.0.2, paced evenly over `secs`, at most 256 in flight.
    let sent = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let flood_task = {
        let (target, anon, sent, completed) = (
            target.clone(),
            pki.tls_anon.clone(),
            sent.clone(),
            completed.clone(),
        );
        tokio::spawn(async move {
            let gap = Duration::from_secs_f64(secs as f64 / count as f64);
            let limit = Arc::new(tokio::sync::Semaphore::new(256));
            let mut tick = tokio::time::interval(gap);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut set = tokio::task::JoinSet::new();
            let stop = Instant::now() + Duration::from_secs(secs + 5);
            for _ in 0..count {
                tick.tick().await;
                if Instant::now() > stop {
                    break;
                }
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                sent.fetch_add(1, Ordering::Relaxed);
                let (target, anon, completed) = (target.clone(), anon.clone(), completed.clone());
                set.spawn(async move {
                    let _permit = permit;
                    let r = tokio::time::timeout(Duration::from_secs(5), async {
                        let mut s = connect_from(
                            &target,
                            Some(&anon),
                            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))),
                        )
                        .await?;
                        // The handshake completed (nginx defers the check to the request).
                        completed.fetch_add(1, Ordering::Relaxed);
                        s.write_all(&get_request("/s", true)).await?;
                        let mut buf = Vec::new();
                        read_response(&mut s, &mut buf).await
                    })
                    .await;
                    let _ = r;
                });
                while set.try_join_next().is_some() {}
            }
            while set.join_next().await.is_some() {}
        })
    };
    let (mut fl, mut fl_new, fl_failed) =
        auth_probe(target.clone(), pki.tls.clone(), pki.tls_full.clone(), secs).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), flood_task).await;
    fl.sort_by(f64::total_cmp);
    fl_new.sort_by(f64::total_cmp);
    Ok(FloodReport {
        calm_p50: percentile(&calm, 50.0),
        calm_p99: percentile(&calm, 99.0),
        flood_p50: percentile(&fl, 50.0),
        flood_p99: percentile(&fl, 99.0),
        calm_new_p99: percentile(&calm_new, 99.0),
        flood_new_p99: percentile(&fl_new, 99.0),
        auth_failed: calm_failed + fl_failed,
        flood_sent: sent.load(Ordering::Relaxed),
        flood_completed_handshakes: completed.load(Ordering::Relaxed),
    })
}
