//! `doorless-edge status`: what the running edge says about itself, read from its admin
//! listener's `/status` (sites, connectors with their transports and ages, the last reload,
//! site certificates about to expire), printed for a human or passed through as JSON.
//!
//! Not a health check (that is `/readyz`) and not the state directory: only what the running
//! process reports.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde_json::Value;

use crate::run::{DEFAULT_CONFIG, load_config};

/// The admin listener answers on loopback at once; anything slower is a hung edge.
const TIMEOUT: Duration = Duration::from_secs(5);
/// `/status` is a few KB per site; this bounds what a wrong address can make us buffer.
const MAX_RESPONSE: u64 = 16 << 20;
/// Site certificates expiring within this are called out.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86400);

#[derive(Debug, clap::Args)]
pub(crate) struct Status {
    /// Admin listener address (HOST:PORT). Default: `listen.admin` of the configuration.
    #[arg(long, value_name = "ADDR", conflicts_with = "config")]
    admin: Option<SocketAddr>,
    /// Configuration whose `listen.admin` to read. Default: /etc/doorless/edge.toml if it
    /// exists, else 127.0.0.1:9470.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the edge's `/status` JSON as it is.
    #[arg(long)]
    json: bool,
}

impl Status {
    /// Fetches and prints the status.
    pub(crate) fn run(self) -> anyhow::Result<()> {
        let admin = match (self.admin, &self.config) {
            (Some(addr), _) => addr,
            (None, Some(path)) => load_config(path)?.listen.admin,
            (None, None) => {
                let path = std::path::Path::new(DEFAULT_CONFIG);
                match path.exists() {
                    true => load_config(path)?.listen.admin,
                    false => SocketAddr::from(([127, 0, 0, 1], 9470)),
                }
            }
        };
        let body = get(admin, "/status").with_context(|| {
            format!("reading the edge's status from its admin listener {admin}")
        })?;
        let status: Value = serde_json::from_slice(&body)
            .with_context(|| format!("{admin}/status did not answer JSON"))?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print!("{}", render(&status, SystemTime::now()));
        }
        Ok(())
    }
}

/// One plain HTTP/1.0 GET (the admin listener is plain HTTP, normally on loopback): the body
/// of a 200 answer.
fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .context("is the edge running, and is this its listen.admin?")?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = Vec::new();
    stream.take(MAX_RESPONSE).read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no complete HTTP response")?;
    let head = String::from_utf8_lossy(&response[..split]);
    let status_line = head.lines().next().unwrap_or_default();
    anyhow::ensure!(
        status_line.split_whitespace().nth(1) == Some("200"),
        "answered {status_line:?}"
    );
    Ok(response[split + 4..].to_vec())
}

/// The human rendering of `/status` at `now`.
fn render(status: &Value, now: SystemTime) -> String {
    let mut out = String::new();
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    out.push_str(&format!(
        "doorless-edge {}\n",
        status["version"].as_str().unwrap_or("?")
    ));
    match &status["last_reload"] {
        Value::Null => out.push_str("last reload: none since start\n"),
        last => {
            out.push_str(&format!(
                "last reload: {} at {}",
                last["result"].as_str().unwrap_or("?"),
                last["at"].as_str().unwrap_or("?")
            ));
            if let Some(e) = last["error"].as_str() {
                out.push_str(&format!(
                    ": {e} (the edge still serves the state from before)"
                ));
            }
            out.push('\n');
        }
    }
    let mut expiring = Vec::new();
    for site in status["sites"].as_array().into_iter().flatten() {
        let name = site["name"].as_str().unwrap_or("?");
        let hostnames: Vec<&str> = site["hostnames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!("\nsite {name} ({})\n", hostnames.join(", ")));
        let connectors = site["connectors"].as_array().cloned().unwrap_or_default();
        if connectors.is_empty() {
            out.push_str("  no connector connected: requests get 503\n");
        }
        for connector in &connectors {
            out.push_str(&format!(
                "  connector {}\n",
                connector["id"].as_str().unwrap_or("?")
            ));
            for tunnel in connector["sessions"].as_array().into_iter().flatten() {
                let age = tunnel["since"]
                    .as_u64()
                    .map(|since| human_age(now_s.saturating_sub(since)))
                    .unwrap_or_else(|| "?".into());
                out.push_str(&format!(
                    "    {} from {}, up {age}, {} active stream(s), rtt {} ms{}\n",
                    tunnel["transport"].as_str().unwrap_or("?"),
                    tunnel["addr"].as_str().unwrap_or("?"),
                    tunnel["active_streams"].as_u64().unwrap_or(0),
                    tunnel["rtt_ms"].as_f64().unwrap_or(0.0),
                    match tunnel["draining"].as_bool() {
                        Some(true) => ", draining",
                        _ => "",
                    }
                ));
            }
        }
        let cert = &site["certificate"];
        if let Some(not_after) = cert["not_after"].as_str() {
            out.push_str(&format!(
                "  certificate: {}, valid until {not_after}\n",
                cert["source"].as_str().unwrap_or("?")
            ));
            let left = time::OffsetDateTime::parse(
                not_after,
                &time::format_description::well_known::Rfc3339,
            )
            .ok()
            .map(|t| t.unix_timestamp() - now_s as i64);
            if let Some(left) = left.filter(|l| *l < EXPIRY_WARNING.as_secs() as i64) {
                expiring.push(format!(
                    "  site {name}: {} certificate {}\n",
                    cert["source"].as_str().unwrap_or("?"),
                    match left {
                        l if l <= 0 => "has EXPIRED".to_owned(),
                        l => format!("expires in {}", human_age(l as u64)),
                    }
                ));
            }
        }
    }
    if expiring.is_empty() {
        out.push_str("\nno site certificate expires within 30 days\n");
    } else {
        out.push_str("\ncertificates about to expire:\n");
        for line in expiring {
            out.push_str(&line);
        }
    }
    out
}

/// `secs` as the largest two units (`3d 4h`, `5m 2s`).
fn human_age(secs: u64) -> String {
    let units = [(86400, "d"), (3600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, unit) in units {
        if rest >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}
