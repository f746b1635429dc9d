//! iperf3: raw loopback TCP, the ceiling of every target.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use serde_json::Value;
use tokio::net::TcpStream;

use crate::fleet::Fleet;
use crate::procs::free_port;
use crate::targets::Tools;

pub(crate) async fn iperf(tools: &Tools, fleet: &mut Fleet, secs: u64) -> Result<f64> {
    let port = free_port()?;
    let i = fleet.spawn(
        "iperf3-server",
        Command::new(&tools.iperf3)
            .args(["-s", "-B", "127.0.0.1", "-p"])
            .arg(port.to_string()),
    )?;
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        fleet.procs[i].check_alive()?;
        ensure!(start.elapsed() < Duration::from_secs(10), "iperf3 server");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The probe connection above sent no cookie: the (long-running, not `-1`) server drops
    // it and keeps listening.
    let out = tokio::time::timeout(
        Duration::from_secs(secs + 20),
        tokio::process::Command::new(&tools.iperf3)
            .args(["-c", "127.0.0.1", "-J", "-t"])
            .arg(secs.to_string())
            .arg("-p")
            .arg(port.to_string())
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let bps = v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3: {}", String::from_utf8_lossy(&out.stdout)))?;
    // Dropping the server's handle kills it (by its own pid).
    drop(fleet.procs.remove(i));
    Ok(bps / 8.0 / 1e6)
}
