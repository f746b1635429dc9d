//! The `--net` matrix: every target in the impairment harness's namespaces, and per network
//! point (RTT per leg × loss) a calibration, then per target the HA-like page load in
//! Chromium, live-update latency over an HA-like WebSocket, and a bulk download and upload.
//! Writes `net-latest.md` / `net-latest.json` next to the loopback results.
//!
//! The targets start once (at zero impairment) and stay up across points, as a real edge and
//! tunnel would: the tunnels are long-lived and see each new condition mid-connection.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

use super::calibrate::{Probe, probe};
use super::{EDGE_PUBLIC_IP, EDGE_TUNNEL_IP, HOME_IP, Net, NetPoint};
use crate::fleet::{Fleet, Place, wait_get_ok};
use crate::opts::Opts;
use crate::procs::{Proc, addr_of, wait_json_file};
use crate::results::{fmt_num, median};
use crate::scenario::liveupdate::{live_beside_download, live_update};
use crate::scenario::netbulk::{download, upload};
use crate::scenario::pageload::{Browser, page_load};
use crate::targets::{Kind, Pki, Target, Tools};

/// The targets of the matrix by default, in column order. `--targets` may also name
/// `doorless_tcp` (the tunnel over TLS/TCP): the same edge and connector with TCP on the
/// tunnel leg, which tells QUIC's behaviour under loss apart from the rest of doorless's.
const KINDS: [Kind; 4] = [
    Kind::Doorless,
    Kind::Nginx,
    Kind::Composite,
    Kind::CompositeNoise,
];

fn kinds(opts: &Opts) -> Vec<Kind> {
    match &opts.targets {
        None => KINDS.to_vec(),
        Some(l) => [
            Kind::Doorless,
            Kind::DoorlessTcp,
            Kind::Nginx,
            Kind::Composite,
            Kind::CompositeNoise,
        ]
        .into_iter()
        .filter(|k| l.iter().any(|id| id == k.id()))
        .collect(),
    }
}

struct Cfg {
    pageloads: usize,
    events: usize,
    warmup: usize,
    every: Duration,
    bulk: u64,
    cap: Duration,
    probes: usize,
}

/// One row of the per-point table.
struct Row {
    id: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_better: bool,
}

/// `live_busy`: the download's size (never reached: it is capped at the events' span), how
/// long it runs before the events are measured, and how long it may outlast them.
const BUSY_BYTES: u64 = 10 << 30;
const RAMP: Duration = Duration::from_secs(2);
const BUSY_SLACK: Duration = Duration::from_secs(1);

const ROWS: [Row; 16] = [
    Row {
        id: "first_state",
        label: "page load → WebSocket + first state (median)",
        unit: "ms",
        higher_better: false,
    },
    Row {
        id: "ws_open",
        label: "page load → WebSocket open (median)",
        unit: "ms",
        higher_better: false,
    },
    Row {
        id: "auth",
        label: "page load → WebSocket `auth` → `auth_ok`, as Chromium's network stack saw it (median)",
        unit: "ms",
        higher_better: false,
    },
    Row {
        id: "html",
        label: "page load → HTML first byte (median)",
        unit: "ms",
        higher_better: false,
    },
    Row {
        id: "core_js",
        label: "page load → `core.js` (the script that opens the WebSocket) received (median)",
        unit: "ms",
        higher_better: false,
    },
    Row {
        id: "load",
        label: "page load → load event, all 70 requests (median)",
        unit: "ms",
        higher_better: false,
    },
    Row {
        id: "live_p50",
        label: "live update p50",
        unit: "ms",
        higher_better: false,
    },
    Row {
        id: "live_p99",
        label: "live update p99",
        unit: "ms",
        higher_better: false,
    },
    Row {
        id: "busy_p50",
        label: "live update p50 while a download runs (`live_busy`)",
        unit: "ms",
        higher_better: false,
    },
    Row {
        id: "busy_p99",
        label: "live update p99 while a download runs (`live_busy`)",
        unit: "ms",
        higher_better: false,
    },
    Row {
        id: "busy_down",
        label: "that download (`live_busy`)",
        unit: "MB/s",
        higher_better: true,
    },
    Row {
        id: "h2_p50",
        label: "live update p50 beside a download in the same browser (`live_h2`: doorless one HTTP/2 connection, RFC 8441; others a connection each)",
        unit: "ms",
        higher_better: false,
    },
    Row {
        id: "h2_p99",
        label: "live update p99 beside a download in the same browser (`live_h2`)",
        unit: "ms",
        higher_better: false,
    },
    Row {
        id: "h2_down",
        label: "that download (`live_h2`)",
        unit: "MB/s",
        higher_better: true,
    },
    Row {
        id: "down",
        label: "download (100 MB or cap)",
        unit: "MB/s",
        higher_better: true,
    },
    Row {
        id: "up",
        label: "upload (100 MB or cap)",
        unit: "MB/s",
        higher_better: true,
    },
];

/// Values per (point, row, kind).
#[derive(Default)]
struct Table {
    v: BTreeMap<(String, &'static str, Kind), Vec<f64>>,
    notes: Vec<String>,
}

impl Table {
    fn add(&mut self, point: &NetPoint, id: &'static str, k: Kind, x: f64) {
        if x.is_finite() {
            self.v.entry((point.label(), id, k)).or_default().push(x);
        }
    }
    fn get(&self, point: &NetPoint, id: &'static str, k: Kind) -> Option<f64> {
        self.v.get(&(point.label(), id, k)).map(|v| median(v))
    }
    fn note(&mut self, s: String) {
        eprintln!("  note: {s}");
        self.notes.push(s);
    }
}

pub(crate) async fn run(opts: &Opts, points: &[NetPoint], tools: &Tools, pki: &Pki) -> Result<()> {
    let cfg = if opts.quick {
        Cfg {
            pageloads: 1,
            events: 60,
            warmup: 5,
            every: Duration::from_millis(50),
            bulk: 100 << 20,
            cap: Duration::from_secs(5),
            probes: 500,
        }
    } else {
        Cfg {
            pageloads: 3,
            events: 200,
            warmup: 10,
            every: Duration::from_millis(50),
            bulk: 100 << 20,
            cap: Duration::from_secs(20),
            probes: 1000,
        }
    };
    let cfg = Cfg {
        events: opts.live_events.unwrap_or(cfg.events),
        pageloads: opts.pageloads.unwrap_or(cfg.pageloads),
        ..cfg
    };
    let started = Instant::now();
    let net = Net::up().context("setting up the namespaces and TUN links (needs root)")?;
    eprintln!(
        "== netem: namespaces {} and {}, links up",
        net.edge_ns, net.home_ns
    );
    // The fleet (processes inside the namespaces) ends inside `matrix`, before `net` drops.
    let r = matrix(opts, points, tools, pki, &net, &cfg).await;
    drop(net);
    eprintln!(
        "== netem: torn down after {:.0} s",
        started.elapsed().as_secs_f64()
    );
    r
}

async fn matrix(
    opts: &Opts,
    points: &[NetPoint],
    tools: &Tools,
    pki: &Pki,
    net: &Net,
    cfg: &Cfg,
) -> Result<()> {
    let t0 = Instant::now();
    net.set(NetPoint {
        rtt_ms: 0,
        loss_pct: 0.0,
    });
    let exe = std::env::current_exe()?;
    let dir = tempfile::Builder::new()
        .prefix("doorless-bench-net-")
        .tempdir()?;
    let ready = dir.path().join("backend.ready");
    let mut backend = Proc::spawn(
        "backend",
        dir.path(),
        Net::cmd(&net.home_ns, &exe)
            .arg("backend")
            .arg(&ready)
            .arg("0.0.0.0:0"),
    )?;
    let port = addr_of(
        &wait_json_file(&mut backend, &ready, Duration::from_secs(10)).await?,
        "addr",
    )?
    .port();
    let mut fleet = Fleet {
        dir,
        procs: vec![backend],
        backend: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let mut echo = Vec::new();
    for (ns, ip) in [(&net.edge_ns, EDGE_PUBLIC_IP), (&net.home_ns, HOME_IP)] {
        let ready = fleet.path(&format!("echo-{ns}.ready"));
        let i = fleet.spawn(
            &format!("udp-echo-{ns}"),
            Net::cmd(ns, &exe)
                .arg("udp-echo")
                .arg(format!("{ip}:0"))
                .arg(&ready),
        )?;
        echo.push(addr_of(
            &wait_json_file(&mut fleet.procs[i], &ready, Duration::from_secs(10)).await?,
            "addr",
        )?);
    }
    let place = Place {
        edge_ns: Some(net.edge_ns.clone()),
        home_ns: Some(net.home_ns.clone()),
        public_ip: EDGE_PUBLIC_IP,
        tunnel_ip: EDGE_TUNNEL_IP,
        backend_home: fleet.backend,
    };
    let mut targets: Vec<Target> = Vec::new();
    for k in kinds(opts) {
        let t = match k {
            Kind::Doorless | Kind::DoorlessTcp => {
                let tcp = k == Kind::DoorlessTcp;
                let name = if tcp {
                    "net-doorless-tcp"
                } else {
                    "net-doorless"
                };
                fleet
                    .doorless_at(tools, pki, name, true, false, tcp, &place)
                    .await?
            }
            Kind::Nginx => {
                let (mut t, _) = fleet
                    .nginx_at(
                        tools,
                        pki,
                        "net-nginx",
                        SocketAddr::new(HOME_IP, port),
                        true,
                        &place,
                    )
                    .await?;
                t.kind = k;
                wait_get_ok(&t, pki).await?;
                t
            }
            _ => {
                if !tools.rathole.is_file() {
                    continue;
                }
                let noise = k == Kind::CompositeNoise;
                let name = if noise {
                    "net-composite-noise"
                } else {
                    "net-composite"
                };
                let (rat, pids) = fleet
                    .rathole_at(tools, &format!("{name}-rathole"), noise, &place)
                    .await?;
                let (mut t, _) = fleet
                    .nginx_at(tools, pki, &format!("{name}-nginx"), rat, true, &place)
                    .await?;
                t.kind = k;
                t.roots.extend(pids);
                wait_get_ok(&t, pki).await?;
                t
            }
        };
        eprintln!("== {:<22} {} pids {:?}", k.title(), t.url("/"), t.pids());
        targets.push(t);
    }
    let ports: Vec<u16> = targets.iter().map(|t| t.addr.port()).collect();
    let browser = Browser::prepare(pki, fleet.dir.path(), &ports)?;
    let (reqs, wire) = crate::hafront::shape();
    eprintln!(
        "== page: {reqs} requests, {} KB on the wire (gzip), + 1 WebSocket; setup {:.0} s",
        wire / 1024,
        t0.elapsed().as_secs_f64()
    );

    let mut table = Table::default();
    let mut calib = Vec::new();
    for p in points {
        let pt = Instant::now();
        net.set(*p);
        eprintln!(
            "== net {}: one-way {} ms ± 10 % per leg and direction, loss {} % per packet",
            p.label(),
            p.rtt_ms as f64 / 2.0,
            p.loss_pct
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c0 = net.counters();
        let gap = Duration::from_millis(4);
        let wait = Duration::from_millis(p.rtt_ms * 4 + 500);
        let failed = Probe {
            sent: 0,
            received: 0,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            min_ms: f64::NAN,
            max_ms: f64::NAN,
        };
        let leg1 = probe(echo[0], cfg.probes, gap, wait)
            .await
            .unwrap_or_else(|e| {
                table.note(format!("{} calibration client↔edge: {e:#}", p.label()));
                failed
            });
        let path = probe(echo[1], cfg.probes, gap, wait)
            .await
            .unwrap_or_else(|e| {
                table.note(format!("{} calibration client↔home: {e:#}", p.label()));
                failed
            });
        let c1 = net.counters();
        let (one_way, _, _) = drops(&c0, &c1);
        let show = |name: &str, pr: &Probe| {
            eprintln!(
                "  calibration {name:<22} RTT p50 {:.1} ms p99 {:.1} ms (min {:.1} max {:.1}), round-trip loss {:.1} % ({}/{})",
                pr.p50_ms,
                pr.p99_ms,
                pr.min_ms,
                pr.max_ms,
                pr.loss_pct(),
                pr.sent - pr.received,
                pr.sent
            )
        };
        show("client↔edge (1 leg)", &leg1);
        show("client↔home (2 legs)", &path);
        eprintln!(
            "  forwarder one-way drop % during calibration: link1 up {:.2} down {:.2}, link2 up {:.2} down {:.2}",
            one_way[0], one_way[1], one_way[2], one_way[3]
        );
        calib.push(json!({
            "point": p.label(), "rtt_ms_per_leg": p.rtt_ms, "loss_pct": p.loss_pct,
            "leg1": {"p50_ms": leg1.p50_ms, "p99_ms": leg1.p99_ms, "min_ms": leg1.min_ms, "max_ms": leg1.max_ms, "loss_pct": leg1.loss_pct(), "probes": leg1.sent},
            "two_legs": {"p50_ms": path.p50_ms, "p99_ms": path.p99_ms, "min_ms": path.min_ms, "max_ms": path.max_ms, "loss_pct": path.loss_pct(), "probes": path.sent},
            "one_way_drop_pct": one_way,
        }));
        for t in &targets {
            let k = t.kind;
            let url = t.url("/");
            let pageloads = if opts.wants("pageload") {
                cfg.pageloads
            } else {
                0
            };
            for i in 0..pageloads {
                let name = format!("chromium-{}-{}", k.id(), i);
                match page_load(&browser, &url, EDGE_PUBLIC_IP, fleet.dir.path(), &name).await {
                    Ok(l) => {
                        eprintln!(
                            "  page {:<22} ws open {:>6.0} ms  auth_required {:>6.0} ms  auth_ok {:>6.0} ms (network {:>4.0})  first state {:>6.0} ms  html {:>5.0} ms  core.js {:>5.0} ms  created {:>5.0} ms (upgrade network {:>4.0})  load {:>6.0} ms  ({}, {} resources)",
                            k.title(),
                            l.ws_open,
                            l.auth_required,
                            l.auth_ok,
                            l.auth_net,
                            l.first_state,
                            l.html_first_byte,
                            l.core_js,
                            l.ws_created,
                            l.upgrade_net,
                            l.load,
                            l.protocol,
                            l.resources
                        );
                        table.add(p, "first_state", k, l.first_state);
                        table.add(p, "ws_open", k, l.ws_open);
                        if l.auth_net.is_finite() {
                            table.add(p, "auth", k, l.auth_net);
                        }
                        table.add(p, "html", k, l.html_first_byte);
                        table.add(p, "core_js", k, l.core_js);
                        table.add(p, "load", k, l.load);
                    }
                    Err(e) => table.note(format!("{} page load {}: {e:#}", p.label(), k.title())),
                }
            }
            if opts.wants("live") {
                let live = live_update(t, pki, cfg.events, cfg.warmup, cfg.every).await;
                live_rows(
                    &mut table,
                    p,
                    k,
                    ["live", "live update", "live_p50", "live_p99"],
                    live,
                );
            }
            // The dashboard open while a camera streams or a backup downloads: the same
            // live events, on their own connection, while one download fills the path. The
            // download starts first and runs until the events are in.
            if opts.names("live_busy") {
                let span = cfg.every * (cfg.events + cfg.warmup) as u32 + RAMP + BUSY_SLACK;
                let (down, live) = tokio::join!(download(t, pki, BUSY_BYTES, span), async {
                    tokio::time::sleep(RAMP).await;
                    live_update(t, pki, cfg.events, cfg.warmup, cfg.every).await
                });
                live_rows(
                    &mut table,
                    p,
                    k,
                    ["busy", "live while busy", "busy_p50", "busy_p99"],
                    live,
                );
                // Capped at about the events' span: its rate is what it moved meanwhile.
                match down {
                    Ok(x) => table.add(p, "busy_down", k, x.mbps),
                    Err(e) => table.note(format!(
                        "{} download while live {}: {e:#}",
                        p.label(),
                        k.title()
                    )),
                }
            }
            // The dashboard tab itself loading something big (a camera stream, a backup): a
            // browser puts both on one HTTP/2 connection where the server allows RFC 8441
            // (doorless), else the WebSocket on a connection of its own (as `live_busy`).
            if opts.names("live_h2") {
                let span = cfg.every * (cfg.events + cfg.warmup) as u32 + RAMP + BUSY_SLACK;
                let (live, down) = if matches!(k, Kind::Doorless | Kind::DoorlessTcp) {
                    match live_beside_download(
                        t,
                        pki,
                        (cfg.events, cfg.warmup, cfg.every),
                        BUSY_BYTES,
                        RAMP,
                    )
                    .await
                    {
                        Ok((live, mbps)) => (Ok(live), Some(Ok(mbps))),
                        // One failure, one note (the live row's).
                        Err(e) => (Err(e), None),
                    }
                } else {
                    let (down, live) = tokio::join!(download(t, pki, BUSY_BYTES, span), async {
                        tokio::time::sleep(RAMP).await;
                        live_update(t, pki, cfg.events, cfg.warmup, cfg.every).await
                    });
                    (live, Some(down.map(|x| x.mbps)))
                };
                live_rows(
                    &mut table,
                    p,
                    k,
                    ["h2", "live beside a download", "h2_p50", "h2_p99"],
                    live,
                );
                match down {
                    Some(Ok(mbps)) => table.add(p, "h2_down", k, mbps),
                    Some(Err(e)) => table.note(format!(
                        "{} download beside live {}: {e:#}",
                        p.label(),
                        k.title()
                    )),
                    None => {}
                }
            }
            if !opts.wants("bulk") {
                continue;
            }
            match download(t, pki, cfg.bulk, cfg.cap).await {
                Ok(x) => {
                    eprintln!(
                        "  down {:<22} {:.2} MB/s ({} MB{})",
                        k.title(),
                        x.mbps,
                        x.bytes >> 20,
                        if x.capped { ", capped" } else { "" }
                    );
                    table.add(p, "down", k, x.mbps);
                }
                Err(e) => table.note(format!("{} download {}: {e:#}", p.label(), k.title())),
            }
            match upload(t, pki, cfg.bulk, cfg.cap).await {
                Ok(x) => {
                    eprintln!(
                        "  up   {:<22} {:.2} MB/s ({} MB{})",
                        k.title(),
                        x.mbps,
                        x.bytes >> 20,
                        if x.capped { ", capped" } else { "" }
                    );
                    table.add(p, "up", k, x.mbps);
                }
                Err(e) => table.note(format!("{} upload {}: {e:#}", p.label(), k.title())),
            }
        }
        let (pct, packets, queue) = drops(&c0, &net.counters());
        eprintln!(
            "  ({} took {:.0} s; forwarder over the whole point: one-way drop % {:.2} / {:.2} / {:.2} / {:.2} of {:?} packets, queue-full drops {queue})",
            p.label(),
            pt.elapsed().as_secs_f64(),
            pct[0],
            pct[1],
            pct[2],
            pct[3],
            packets
        );
        if let Some(Value::Object(c)) = calib.last_mut() {
            c.insert("point_one_way_drop_pct".into(), json!(pct));
            c.insert("point_packets".into(), json!(packets));
            c.insert("point_queue_drops".into(), json!(queue));
        }
    }
    let total = t0.elapsed().as_secs_f64();
    let kinds: Vec<Kind> = targets.iter().map(|t| t.kind).collect();
    let (md, js) = render(&kinds, opts, points, cfg, &table, &calib, total);
    std::fs::create_dir_all(&opts.out)?;
    std::fs::write(opts.out.join("net-latest.md"), &md)?;
    std::fs::write(
        opts.out.join("net-latest.json"),
        serde_json::to_string_pretty(&js)?,
    )?;
    println!("{md}");
    eprintln!(
        "== wrote {}/net-latest.md and net-latest.json",
        opts.out.display()
    );
    drop(fleet);
    Ok(())
}

/// Per direction between two counter snapshots: (drop %, packets seen), and the total of
/// queue-full drops.
/// Prints and records a live-update measurement: `[tag, what, p50 row, p99 row]`.
fn live_rows(
    table: &mut Table,
    p: &NetPoint,
    k: Kind,
    [tag, what, p50_row, p99_row]: [&'static str; 4],
    live: Result<(f64, f64, usize)>,
) {
    match live {
        Ok((p50, p99, n)) => {
            eprintln!(
                "  {tag} {:<22} p50 {p50:.1} ms  p99 {p99:.1} ms  ({n} events)",
                k.title()
            );
            table.add(p, p50_row, k, p50);
            table.add(p, p99_row, k, p99);
        }
        Err(e) => table.note(format!("{} {what} {}: {e:#}", p.label(), k.title())),
    }
}

fn drops(a: &[[u64; 4]], b: &[[u64; 4]]) -> (Vec<f64>, Vec<u64>, u64) {
    let mut pct = Vec::new();
    let mut seen = Vec::new();
    let mut queue = 0;
    for (a, b) in a.iter().zip(b) {
        let fwd = b[0] - a[0];
        let lost = b[1] - a[1] + b[2] - a[2];
        queue += b[2] - a[2];
        pct.push(100.0 * lost as f64 / (fwd + lost).max(1) as f64);
        seen.push(fwd + lost);
    }
    (pct, seen, queue)
}

/// The kernel's TCP congestion control (every TCP leg of every target uses it; the
/// namespaces inherit it). doorless's QUIC legs use quinn's own (Cubic by default).
fn tcp_cc() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

#[allow(clippy::too_many_arguments)]
fn render(
    kinds: &[Kind],
    opts: &Opts,
    points: &[NetPoint],
    cfg: &Cfg,
    table: &Table,
    calib: &[Value],
    secs: f64,
) -> (String, Value) {
    let mut md = String::new();
    let _ = writeln!(md, "# doorless benchmark — network matrix (latest run)\n");
    let _ = writeln!(
        md,
        "Command: `bench/run.sh{} --net {}`. Impairment: userspace TUN forwarder, the same \
         one-way delay (RTT/2, ± 10 % uniform jitter, FIFO) and per-packet loss on each \
         direction of both legs (client↔edge, edge↔home). Page loads: {} per point (fresh \
         Chromium profile each); live update: {} events every {} ms; bulk: {} MB capped at {} s. \
         Ratios are target ÷ nginx+rathole (time: < 1 is faster; MB/s: > 1 is faster). Run \
         took {:.0} s; load average at the end {}: 2 cores shared with other builds, so \
         absolute numbers are noisy, ratios within one run are what count. TCP congestion \
         control of every TCP leg: {} (kernel default), but doorless's edge sets its \
         listener's (`listen.tcp_congestion_control`, default `bbr`); doorless's QUIC tunnel: \
         its configured controller (default `loss_tolerant`){}.\n",
        if opts.quick { " --quick" } else { "" },
        points
            .iter()
            .map(NetPoint::label)
            .collect::<Vec<_>>()
            .join(","),
        cfg.pageloads,
        cfg.events,
        cfg.every.as_millis(),
        cfg.bulk >> 20,
        cfg.cap.as_secs(),
        secs,
        load_avg(),
        tcp_cc(),
        [
            ("BENCH_DOORLESS_ENV", "doorless's environment"),
            ("BENCH_UPLINK", "home uplink Mbit/s : drop-tail buffer ms"),
            (
                "BENCH_DOWNLINK",
                "client downlink Mbit/s : drop-tail buffer ms"
            )
        ]
        .iter()
        .filter_map(|(var, what)| match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Some(format!(", with `{var}={}` ({what})", v.trim())),
            _ => None,
        })
        .collect::<String>()
    );
    let _ = writeln!(md, "## Calibration (measured, UDP echo)\n");
    let _ = writeln!(
        md,
        "| point | client↔edge RTT p50 / p99 | loss | client↔home RTT p50 / p99 | loss | one-way drop % per direction over the whole point: client→edge / edge→client / home→edge / edge→home (packets) |\n|---|---:|---:|---:|---:|---|"
    );
    for c in calib {
        let f = |v: &Value| fmt_num(v.as_f64().unwrap_or(f64::NAN));
        let _ = writeln!(
            md,
            "| {} | {} / {} ms | {} % | {} / {} ms | {} % | {} |",
            c["point"].as_str().unwrap_or(""),
            f(&c["leg1"]["p50_ms"]),
            f(&c["leg1"]["p99_ms"]),
            f(&c["leg1"]["loss_pct"]),
            f(&c["two_legs"]["p50_ms"]),
            f(&c["two_legs"]["p99_ms"]),
            f(&c["two_legs"]["loss_pct"]),
            c["point_one_way_drop_pct"]
                .as_array()
                .into_iter()
                .flatten()
                .zip(c["point_packets"].as_array().into_iter().flatten())
                .map(|(d, n)| format!("{} ({})", f(d), n))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let mut js_points = Vec::new();
    for p in points {
        let _ = writeln!(
            md,
            "\n## {} ms RTT per leg, {} % loss\n",
            p.rtt_ms, p.loss_pct
        );
        let _ = write!(md, "| figure | unit |");
        for &k in kinds {
            let _ = write!(md, " {} |", k.title());
        }
        for k in kinds.iter().filter(|&&k| k != Kind::Composite) {
            let _ = write!(md, " {} ÷ n+r |", k.title());
        }
        let _ = writeln!(md);
        let _ = writeln!(
            md,
            "|---|---|{}{}",
            "---:|".repeat(kinds.len()),
            "---:|".repeat(kinds.iter().filter(|&&k| k != Kind::Composite).count())
        );
        let mut rows = Vec::new();
        for r in &ROWS {
            let _ = write!(md, "| {} | {} |", r.label, r.unit);
            let mut vals = serde_json::Map::new();
            for &k in kinds {
                let v = table.get(p, r.id, k);
                if let Some(v) = v {
                    vals.insert(k.id().into(), json!(v));
                }
                let _ = write!(md, " {} |", v.map_or("—".into(), fmt_num));
            }
            let base = table.get(p, r.id, Kind::Composite);
            for k in kinds.iter().filter(|&&k| k != Kind::Composite) {
                let ratio = match (table.get(p, r.id, *k), base) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                };
                let _ = write!(md, " {} |", ratio.map_or("—".into(), |x| format!("{x:.2}")));
            }
            let _ = writeln!(md);
            let all: BTreeMap<&str, Vec<f64>> = kinds
                .iter()
                .filter_map(|k| {
                    table
                        .v
                        .get(&(p.label(), r.id, *k))
                        .map(|v| (k.id(), v.clone()))
                })
                .collect();
            rows.push(json!({"id": r.id, "label": r.label, "unit": r.unit, "higher_better": r.higher_better, "median": vals, "runs": all}));
        }
        js_points.push(json!({"point": p.label(), "rows": rows}));
    }
    if !table.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in &table.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    let js = json!({
        "command": format!("bench/run.sh{} --net {}", if opts.quick { " --quick" } else { "" }, points.iter().map(NetPoint::label).collect::<Vec<_>>().join(",")),
        "secs": secs, "loadavg": load_avg(), "tcp_congestion_control": tcp_cc(), "calibration": calib, "points": js_points, "notes": table.notes,
        "config": {"pageloads": cfg.pageloads, "events": cfg.events, "every_ms": cfg.every.as_millis() as u64, "bulk_mb": cfg.bulk >> 20, "cap_s": cfg.cap.as_secs()},
    });
    (md, js)
}
