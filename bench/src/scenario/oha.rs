//! Scenario 1: small GET with oha.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use serde_json::Value;

use crate::HOST;
use crate::targets::{Pki, Target, Tools};

/// What one oha run measured.
pub(crate) struct Load {
    pub(crate) rps: f64,
    /// Latency percentiles, ms.
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    /// Non-200 answers and errors.
    pub(crate) bad: f64,
    /// The proxy processes' CPU time (user + system, from /proc) per successful request, µs;
    /// NaN for a target without proxy processes (direct).
    pub(crate) cpu_us: f64,
}

pub(crate) async fn oha(
    tools: &Tools,
    pki: &Pki,
    t: &Target,
    conc: usize,
    h2: bool,
    secs: u64,
    tck: f64,
) -> Result<Load> {
    let mut cmd = tokio::process::Command::new(&tools.oha);
    cmd.arg("--no-tui")
        .arg("--output-format")
        .arg("json")
        .arg("-z")
        .arg(format!("{secs}s"));
    if h2 {
        // Browser-like: few connections, many streams each (≤ 32 per connection, below both
        // nginx's and doorless's 128-stream limit).
        let per = conc.min(32);
        let conns = conc.div_ceil(per);
        cmd.arg("--http2")
            .arg("-c")
            .arg(conns.to_string())
            .arg("-p")
            .arg(per.to_string());
    } else {
        cmd.arg("-c").arg(conc.to_string());
    }
    if t.tls {
        cmd.arg("--cacert")
            .arg(&pki.server_ca)
            .arg("--cert")
            .arg(&pki.device_cert)
            .arg("--key")
            .arg(&pki.device_key)
            .arg("--connect-to")
            .arg(format!(
                "{HOST}:{}:127.0.0.1:{}",
                t.addr.port(),
                t.addr.port()
            ));
    }
    cmd.arg(t.url("/s"));
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    let cpu0 = t.cpu(tck);
    let out = tokio::time::timeout(Duration::from_secs(secs + 30), cmd.output())
        .await
        .context("oha did not finish in time")??;
    let cpu = t.cpu(tck) - cpu0;
    ensure!(
        out.status.success(),
        "oha failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "oha output: {}",
            String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(500)])
        )
    })?;
    let rps = v["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN);
    let p50 = v["latencyPercentiles"]["p50"].as_f64().unwrap_or(f64::NAN) * 1e3;
    let p99 = v["latencyPercentiles"]["p99"].as_f64().unwrap_or(f64::NAN) * 1e3;
    let ok = v["statusCodeDistribution"]["200"].as_f64().unwrap_or(0.0);
    let total: f64 = v["statusCodeDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_f64).sum())
        .unwrap_or(0.0);
    let errors: f64 = v["errorDistribution"]
        .as_object()
        .map(|m| m.values().filter_map(Value::as_f64).sum())
        .unwrap_or(0.0);
    let bad = (total - ok) + errors;
    // Errors at the deadline (requests cut off) are normal for oha -z; report them.
    let success = v["summary"]["successRate"].as_f64().unwrap_or(f64::NAN);
    let _ = success;
    let cpu_us = if t.roots.is_empty() || ok == 0.0 {
        f64::NAN
    } else {
        cpu * 1e6 / ok
    };
    Ok(Load {
        rps: rps * ok / total.max(1.0),
        p50,
        p99,
        bad,
        cpu_us,
    })
}
