//! Scenario 3: full mTLS handshakes per second (a request each, no resumption).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::io::AsyncWriteExt as _;

use crate::clients::{connect, get_request, read_response};
use crate::targets::Target;

pub(crate) async fn handshakes(
    t: &Target,
    config: &Arc<rustls::ClientConfig>,
    secs: u64,
    tasks: usize,
) -> Result<(f64, u64)> {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let max_per_task = 200_000 / tasks as u64;
    let mut set = tokio::task::JoinSet::new();
    let target = Arc::new(Target {
        kind: t.kind,
        addr: t.addr,
        tls: t.tls,
        roots: vec![],
    });
    for _ in 0..tasks {
        let (ok, failed, config, target) =
            (ok.clone(), failed.clone(), config.clone(), target.clone());
        set.spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            for _ in 0..max_per_task {
                if Instant::now() >= deadline {
                    break;
                }
                let r = tokio::time::timeout(Duration::from_secs(10), async {
                    let mut s = connect(&target, Some(&config)).await?;
                    s.write_all(&get_request("/s", true)).await?;
                    read_response(&mut s, &mut buf).await
                })
                .await;
                match r {
                    Ok(Ok(200)) => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    while set.join_next().await.is_some() {}
    let secs = start.elapsed().as_secs_f64();
    Ok((
        ok.load(Ordering::Relaxed) as f64 / secs,
        failed.load(Ordering::Relaxed),
    ))
}
