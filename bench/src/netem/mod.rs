//! The network-impairment harness: two network namespaces joined to the driver's namespace by
//! impaired point-to-point links, so every target sees the same packet-level delay, jitter and
//! loss on its client leg and its tunnel leg whatever its transport.
//!
//! ```text
//!  driver's namespace (clients,        "edge" namespace (doorless-edge,     "home" namespace
//!  Chromium)                           nginx, rathole server)               (connector, rathole
//!  10.201.1.1 ──TUN═══ link 1 ═══TUN── 10.201.1.2                            client, backend)
//!                                      10.201.2.1 ──TUN═══ link 2 ═══TUN── 10.201.2.2
//! ```
//!
//! Each link is a userspace forwarder between two TUN devices (`link`), the same settings on
//! both links and both directions: a leg's RTT is twice the one-way delay. The TUN devices
//! belong to the driver's open files, so they vanish when it exits however it exits; the
//! namespaces are deleted on drop (the processes inside must be stopped first: `Net` is
//! dropped after the fleet that runs them).
//!
//! Not here: the targets (`fleet` with a `Place`), the measurements (`matrix`).

pub(crate) mod calibrate;
pub(crate) mod link;
pub(crate) mod matrix;
pub(crate) mod tun;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

use self::link::{Bottleneck, Direction, Params};

pub(crate) const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 201, 1, 1));
/// The edge's public address (link 1).
pub(crate) const EDGE_PUBLIC_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 201, 1, 2));
/// The edge's address on the tunnel leg (link 2).
pub(crate) const EDGE_TUNNEL_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 201, 2, 1));
pub(crate) const HOME_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 201, 2, 2));

/// One network condition: RTT per leg and loss per packet (each direction of each leg).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NetPoint {
    pub(crate) rtt_ms: u64,
    pub(crate) loss_pct: f64,
}

impl NetPoint {
    /// `80ms:1%` (also `80:1`, `80ms:0.5%`).
    pub(crate) fn parse(s: &str) -> Result<Self> {
        let (rtt, loss) = s
            .split_once(':')
            .ok_or_else(|| anyhow!("net point {s:?}: want RTTms:LOSS% (e.g. 80ms:1%)"))?;
        let rtt_ms = rtt.trim().trim_end_matches("ms").parse()?;
        let loss_pct: f64 = loss.trim().trim_end_matches('%').parse()?;
        ensure!(
            (0.0..50.0).contains(&loss_pct),
            "loss {loss_pct}% out of range"
        );
        ensure!(rtt_ms <= 2000, "RTT {rtt_ms} ms out of range");
        Ok(Self { rtt_ms, loss_pct })
    }
    pub(crate) fn label(&self) -> String {
        format!("{}ms:{}%", self.rtt_ms, self.loss_pct)
    }
    /// The full matrix: 20 and 80 ms RTT per leg, 0, 1 and 3 % loss.
    pub(crate) fn matrix() -> Vec<Self> {
        let mut v = Vec::new();
        for rtt_ms in [20, 80] {
            for loss_pct in [0.0, 1.0, 3.0] {
                v.push(Self { rtt_ms, loss_pct });
            }
        }
        v
    }
    /// One-way delay in µs and jitter (±10 % of it) per packet.
    fn delay_jitter_us(&self) -> (u64, u64) {
        let one_way = self.rtt_ms * 1000 / 2;
        (one_way, one_way / 10)
    }
}

/// `BENCH_UPLINK=MBIT:BUFFER_MS` (e.g. `20:100`): the home uplink (link 2, home → edge)
/// becomes a bottleneck of that rate behind a drop-tail buffer of that many milliseconds, as
/// a home connection's upload is; unset: none.
fn uplink_from_env() -> Result<Bottleneck> {
    bottleneck_from_env("BENCH_UPLINK")
}

/// `BENCH_DOWNLINK=MBIT:BUFFER_MS`: the same for the client's downlink (link 1, edge →
/// client), as a phone's mobile connection is.
fn downlink_from_env() -> Result<Bottleneck> {
    bottleneck_from_env("BENCH_DOWNLINK")
}

fn bottleneck_from_env(var: &str) -> Result<Bottleneck> {
    let b = Bottleneck::default();
    let Ok(v) = std::env::var(var) else {
        return Ok(b);
    };
    let (rate, buffer) = v
        .split_once(':')
        .ok_or_else(|| anyhow!("{var} {v:?}: want MBIT:BUFFER_MS (e.g. 20:100)"))?;
    let mbit: f64 = rate.trim().parse().with_context(|| format!("{var} rate"))?;
    let ms: u64 = buffer
        .trim()
        .parse()
        .with_context(|| format!("{var} buffer"))?;
    ensure!(
        mbit > 0.0 && mbit <= 10_000.0,
        "{var} rate {mbit} Mbit/s out of range"
    );
    b.rate_bps.store((mbit * 1e6) as u64, Ordering::Relaxed);
    b.buffer_us.store(ms * 1000, Ordering::Relaxed);
    Ok(b)
}

/// The namespaces, the TUN devices and the four forwarding directions.
pub(crate) struct Net {
    pub(crate) edge_ns: String,
    pub(crate) home_ns: String,
    params: Arc<Params>,
    /// The home uplink's bottleneck, if `BENCH_UPLINK` asks for one.
    pub(crate) uplink: Arc<Bottleneck>,
    /// The client's downlink's, if `BENCH_DOWNLINK` asks for one.
    pub(crate) downlink: Arc<Bottleneck>,
    stop: Arc<AtomicBool>,
    /// link 1 client→edge, link 1 edge→client, link 2 edge→home, link 2 home→edge.
    dirs: Vec<Direction>,
    made_ns: Vec<String>,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running ip {args:?}"))?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Net {
    pub(crate) fn up() -> Result<Self> {
        let tag = format!("dlb{}", std::process::id() % 100_000);
        let mut net = Net {
            edge_ns: format!("{tag}-edge"),
            home_ns: format!("{tag}-home"),
            params: Arc::new(Params::default()),
            uplink: Arc::new(uplink_from_env()?),
            downlink: Arc::new(downlink_from_env()?),
            stop: Arc::new(AtomicBool::new(false)),
            dirs: Vec::new(),
            made_ns: Vec::new(),
        };
        // On any error below, dropping `net` removes what was made so far.
        for ns in [net.edge_ns.clone(), net.home_ns.clone()] {
            ip(&["netns", "add", &ns])?;
            net.made_ns.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (c, e1, e2, h) = (
            format!("{tag}c"),
            format!("{tag}e1"),
            format!("{tag}e2"),
            format!("{tag}h"),
        );
        // Created here (the driver's namespace), then moved: the open file stays attached.
        let tc = Arc::new(tun::open(&c)?);
        let te1 = Arc::new(tun::open(&e1)?);
        let te2 = Arc::new(tun::open(&e2)?);
        let th = Arc::new(tun::open(&h)?);
        ip(&["link", "set", "dev", &e1, "netns", &net.edge_ns])?;
        ip(&["link", "set", "dev", &e2, "netns", &net.edge_ns])?;
        ip(&["link", "set", "dev", &h, "netns", &net.home_ns])?;
        let (edge, home) = (net.edge_ns.clone(), net.home_ns.clone());
        let conf: [(Option<&str>, &str, IpAddr, IpAddr); 4] = [
            (None, &c, CLIENT_IP, EDGE_PUBLIC_IP),
            (Some(&edge), &e1, EDGE_PUBLIC_IP, CLIENT_IP),
            (Some(&edge), &e2, EDGE_TUNNEL_IP, HOME_IP),
            (Some(&home), &h, HOME_IP, EDGE_TUNNEL_IP),
        ];
        for (ns, dev, local, peer) in conf {
            let mut a: Vec<String> = Vec::new();
            if let Some(ns) = ns {
                a.extend(["-n".into(), ns.into()]);
            }
            let with = |rest: &[&str]| {
                let mut v: Vec<&str> = a.iter().map(String::as_str).collect();
                v.extend_from_slice(rest);
                v.iter().map(|s| s.to_string()).collect::<Vec<_>>()
            };
            let run = |v: Vec<String>| ip(&v.iter().map(String::as_str).collect::<Vec<_>>());
            run(with(&[
                "addr",
                "add",
                &local.to_string(),
                "peer",
                &format!("{peer}/32"),
                "dev",
                dev,
            ]))?;
            run(with(&["link", "set", "dev", dev, "mtu", "1500", "up"]))?;
        }
        // The driver reaches the home namespace through the edge (calibration measures the
        // whole path that way); the targets never need it.
        ip(&["route", "add", "10.201.2.0/24", "dev", &c])?;
        ip(&["-n", &home, "route", "add", "10.201.1.0/24", "dev", &h])?;
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &edge,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()?;
        ensure!(
            out.status.success(),
            "ip_forward in {edge}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(7);
        for (i, (name, from, to)) in [
            ("l1-up", &tc, &te1),
            ("l1-down", &te1, &tc),
            ("l2-up", &th, &te2),
            ("l2-down", &te2, &th),
        ]
        .into_iter()
        .enumerate()
        {
            // The home uplink (home → edge) and the client's downlink (edge → client) may
            // be bottlenecks (`BENCH_UPLINK`, `BENCH_DOWNLINK`).
            let bottleneck = match name {
                "l2-up" => net.uplink.clone(),
                "l1-down" => net.downlink.clone(),
                _ => Arc::new(Bottleneck::default()),
            };
            net.dirs.push(Direction::start(
                name,
                from.clone(),
                to.clone(),
                net.params.clone(),
                bottleneck,
                net.stop.clone(),
                seed.wrapping_add(i as u64 * 0x1234_5678_9abc),
            )?);
        }
        // The forwarder threads hold the only other references to the files; dropping the
        // last one (after `stop`) removes the devices.
        drop::<[Arc<File>; 4]>([tc, te1, te2, th]);
        Ok(net)
    }

    pub(crate) fn set(&self, p: NetPoint) {
        let (delay, jitter) = p.delay_jitter_us();
        self.params.delay_us.store(delay, Ordering::Relaxed);
        self.params.jitter_us.store(jitter, Ordering::Relaxed);
        self.params
            .loss_ppm
            .store((p.loss_pct * 10_000.0).round() as u64, Ordering::Relaxed);
    }

    /// Counters per direction: [l1 client→edge, l1 edge→client, l2 home→edge, l2 edge→home].
    pub(crate) fn counters(&self) -> Vec<[u64; 4]> {
        self.dirs.iter().map(|d| d.counters.snapshot()).collect()
    }

    /// `prog` run inside namespace `ns` (`ip netns exec` execs it: same pid).
    pub(crate) fn cmd(ns: &str, prog: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(prog);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for d in self.dirs.drain(..) {
            d.join();
        }
        for ns in self.made_ns.drain(..).rev() {
            if let Err(e) = ip(&["netns", "del", &ns]) {
                eprintln!("  WARNING: {e:#}");
            }
        }
    }
}
