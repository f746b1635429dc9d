//! Child processes (each started as the leader of its own process group; the whole group is
//! stopped on drop), ready files, and per-process CPU and RSS read from /proc.
//!
//! Every process group the driver starts is recorded; `leftovers()` lists any process still
//! alive in one of them, and the driver fails loudly when the list is not empty at the end.
//! Only those groups are ever signalled: never a process found by name.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde_json::Value;

/// Process groups (= leader pids) the driver started.
static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// A child process in its own process group (it and everything it forks, e.g. nginx's
/// workers or Chromium's helpers). On drop the group gets SIGTERM, then SIGKILL after a grace
/// period, and the leader is reaped.
pub(crate) struct Proc {
    pub(crate) name: String,
    child: std::process::Child,
    pub(crate) log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &str, dir: &Path, cmd: &mut Command) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .env("NO_COLOR", "1")
            // Its own group: SIGKILL to an nginx master alone orphans its workers.
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name} ({cmd:?})"))?;
        if let Ok(mut started) = STARTED.lock() {
            started.push(child.id());
        }
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&std::fs::read_to_string(&self.log).unwrap_or_default(), 30)
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pgid = self.child.id();
        // The leader is not reaped yet, so the group id is still ours to signal.
        signal_group(pgid, "TERM");
        if !wait_group_gone(&mut self.child, pgid, Duration::from_secs(5)) {
            eprintln!(
                "  note: {} (process group {pgid}) still alive 5 s after SIGTERM: SIGKILL",
                self.name
            );
            signal_group(pgid, "KILL");
            wait_group_gone(&mut self.child, pgid, Duration::from_secs(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill -SIG -- -PGID` (the std library has no safe group kill; this keeps the crate free of
/// `unsafe`). Errors (the group is already gone) are ignored.
fn signal_group(pgid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Reaps the leader when it exits and waits until no live process is left in the group.
/// While any member lives the kernel does not hand the group id to anyone else.
fn wait_group_gone(child: &mut std::process::Child, pgid: u32, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        let _ = child.try_wait();
        if group_members(&[pgid]).is_empty() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Live (not zombie) processes whose process group is one of `pgids`: (pid, pgid, comm).
fn group_members(pgids: &[u32]) -> Vec<(u32, u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        // After ") ": state, ppid, pgrp.
        let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let (Some(state), Some(pgrp)) = (f.first(), f.get(2).and_then(|s| s.parse::<u32>().ok()))
        else {
            continue;
        };
        if *state != "Z" && pgids.contains(&pgrp) {
            out.push((pid, pgrp, comm));
        }
    }
    out
}

/// Every process still alive in a group the driver started: (pid, group, command name).
pub(crate) fn leftovers() -> Vec<(u32, u32, String)> {
    let started = STARTED.lock().map(|s| s.clone()).unwrap_or_default();
    group_members(&started)
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub(crate) async fn wait_json_file(
    proc: &mut Proc,
    path: &Path,
    deadline: Duration,
) -> Result<Value> {
    let start = Instant::now();
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Ok(v @ Value::Object(_)) = serde_json::from_str(&text)
        {
            return Ok(v);
        }
        proc.check_alive()?;
        ensure!(
            start.elapsed() < deadline,
            "{} wrote no ready file in {deadline:?}",
            proc.name
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) fn addr_of(v: &Value, key: &str) -> Result<SocketAddr> {
    v[key]
        .as_str()
        .ok_or_else(|| anyhow!("no {key} in {v}"))?
        .parse()
        .with_context(|| format!("{key} in {v}"))
}

/// A free loopback TCP port (bind :0, read, release). For programs that cannot bind port 0
/// and report it (nginx, rathole, iperf3).
pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Direct children of `pid` (e.g. nginx workers of a master).
fn children(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// `pid` and all its descendants.
pub(crate) fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let kids = children(out[i]);
        out.extend(kids);
        i += 1;
    }
    out
}

pub(crate) fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// utime + stime of one process (all its threads), in seconds.
pub(crate) fn cpu_secs(pid: u32, tck: f64) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the ")" of comm: state is field 3; utime 14, stime 15 (1-based).
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get(14) + get(15)) / tck
}

pub(crate) fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
