//! doorless benchmark driver: doorless vs nginx mTLS (one hop, and "classic"), rathole alone,
//! the nginx-mTLS + rathole composite, the backend directly, and raw loopback TCP (iperf3).
//!
//! Everything runs on 127.0.0.0/8. Every load loop is bounded in count AND time. Child
//! processes are killed by their own handle (never by name) when the driver ends.
//!
//! Normally started by `bench/run.sh`, which installs nginx/iperf3/oha/rathole and builds the
//! release binaries first. `doorless-bench --help` lists the options.
//!
//! One module per part: `opts`, `backend` (the backend process), `procs` (child processes and
//! /proc), `targets` and `fleet` (what is measured and starting it), `clients`, `results`,
//! `scenario::*` (one per measurement), `machine`, `report`; `run` below drives them in order.
// `unsafe` only in netem::tun (one ioctl, one poll), allowed there and nowhere else.
#![deny(unsafe_code)]

mod backend;
mod clients;
mod fleet;
mod hafront;
mod machine;
mod netem;
mod opts;
mod procs;
mod report;
mod results;
mod scenario;
mod targets;

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use serde_json::json;

use crate::backend::backend_main;
use crate::fleet::{Fleet, wait_get_ok};
use crate::machine::{machine, sh};
use crate::opts::Opts;
use crate::procs::clk_tck;
use crate::report::render;
use crate::results::Results;
use crate::scenario::bulk::{download, upload};
use crate::scenario::flood::flood;
use crate::scenario::handshakes::handshakes;
use crate::scenario::iperf::iperf;
use crate::scenario::oha::{Load, oha};
use crate::scenario::ws::{ws_idle, ws_rtt};
use crate::targets::{Kind, Pki, Target, Tools, make_pki};

/// Public hostname of the benchmark site (SNI and Host for every TLS target).
const HOST: &str = "ha.home.test";
/// Body of `GET /s`.
const SMALL: &[u8; 100] = b"doorless-bench small response, one hundred bytes long..........................................done\n";
/// One GiB.
const GIB: u64 = 1 << 30;
/// Chunk served by `/bytes/N` and sent by the upload client.
static ZEROS: [u8; 256 * 1024] = [0u8; 256 * 1024];

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("backend") {
        let ready = PathBuf::from(args.next().ok_or_else(|| anyhow!("backend READY_FILE"))?);
        let bind = args.next();
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(backend_main(ready, bind));
    }
    if first.as_deref() == Some("udp-echo") {
        let bind = args
            .next()
            .ok_or_else(|| anyhow!("udp-echo BIND READY_FILE"))?;
        let ready = PathBuf::from(
            args.next()
                .ok_or_else(|| anyhow!("udp-echo BIND READY_FILE"))?,
        );
        return netem::calibrate::udp_echo_main(&bind, &ready);
    }
    let opts = Opts::parse()?;
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            // Children lead their own process groups, so a terminal's Ctrl-C reaches only the
            // driver: on SIGINT/SIGTERM drop the run (its fleets stop their groups) and fall
            // through to the leftover check.
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                r = run(opts) => r,
                _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted (SIGINT)")),
                _ = term.recv() => Err(anyhow!("terminated (SIGTERM)")),
            }
        });
    let left = procs::leftovers();
    if !left.is_empty() {
        eprintln!("== ERROR: processes the driver started are still alive:");
        for (pid, pgid, comm) in &left {
            eprintln!("   pid {pid} (process group {pgid}) {comm}");
        }
        outcome?;
        bail!("{} process(es) the driver started outlived it", left.len());
    }
    eprintln!("== every process the driver started has exited");
    outcome
}

/// Starts every target kind (those in `only`, if given) in `fleet`, process names prefixed
/// with `prefix`.
async fn start_targets(
    fleet: &mut Fleet,
    tools: &Tools,
    pki: &Pki,
    prefix: &str,
    only: Option<&[String]>,
) -> Result<Vec<Target>> {
    let wanted = |k: Kind| only.is_none_or(|l| l.iter().any(|id| id == k.id()));
    let backend = fleet.backend;
    let mut targets: Vec<Target> = Vec::new();
    if wanted(Kind::Direct) {
        targets.push(Target {
            kind: Kind::Direct,
            addr: backend,
            tls: false,
            roots: vec![],
        });
    }
    if wanted(Kind::Doorless) {
        targets.push(
            fleet
                .doorless(tools, pki, &format!("{prefix}doorless"), true, false, false)
                .await?,
        );
    }
    if wanted(Kind::DoorlessTcp) {
        targets.push(
            fleet
                .doorless(
                    tools,
                    pki,
                    &format!("{prefix}doorless-tcp"),
                    true,
                    false,
                    true,
                )
                .await?,
        );
    }
    for (kind, name, pool) in [
        (Kind::Nginx, "nginx", true),
        (Kind::NginxClassic, "nginx-classic", false),
    ] {
        if wanted(kind) {
            let (mut t, _) = fleet
                .nginx(tools, pki, &format!("{prefix}{name}"), backend, pool)
                .await?;
            t.kind = kind;
            wait_get_ok(&t, pki).await?;
            targets.push(t);
        }
    }
    if !tools.rathole.is_file() {
        return Ok(targets);
    }
    if wanted(Kind::Rathole) {
        let (addr, roots) = fleet
            .rathole(tools, &format!("{prefix}rathole"), false)
            .await?;
        targets.push(Target {
            kind: Kind::Rathole,
            addr,
            tls: false,
            roots,
        });
    }
    for (kind, name, noise) in [
        (Kind::Composite, "composite", false),
        (Kind::CompositeNoise, "composite-noise", true),
    ] {
        if wanted(kind) {
            let (rat, rat_pids) = fleet
                .rathole(tools, &format!("{prefix}{name}-rathole"), noise)
                .await?;
            let (mut t, _) = fleet
                .nginx(tools, pki, &format!("{prefix}{name}-nginx"), rat, true)
                .await?;
            t.kind = kind;
            t.roots.extend(rat_pids);
            wait_get_ok(&t, pki).await?;
            targets.push(t);
        }
    }
    Ok(targets)
}

/// The 1 GiB download and upload through `t` on one connection (HTTP/2 if `h2`). The HTTP/1.1
/// figures keep their original ids (`down_mbps`, ...); HTTP/2 ones get `_h2`.
async fn bulk(res: &mut Results, t: &Target, pki: &Pki, bytes: u64, tck: f64, h2: bool) {
    let mib = bytes >> 20;
    let (proto, id_suffix, label_suffix) = if h2 {
        ("h2", "_h2", ", HTTP/2")
    } else {
        ("h1", "", "")
    };
    for (what, id) in [("download", "down"), ("upload", "up")] {
        let measured = if id == "down" {
            download(t, pki, bytes, tck, h2).await
        } else {
            upload(t, pki, bytes, tck, h2).await
        };
        match measured {
            Ok((mbps, cpu)) => {
                eprintln!(
                    "  {what:<8} {proto} {mib} MiB {:<16} {mbps:>8.0} MB/s  proxy CPU {cpu:.2} s/GiB",
                    t.kind.title()
                );
                res.add(
                    &format!("{id}{id_suffix}_mbps"),
                    &format!("{what} {mib} MiB, 1 connection{label_suffix}"),
                    "MB/s",
                    true,
                    t.kind,
                    mbps,
                );
                if !t.roots.is_empty() {
                    res.add(
                        &format!("{id}{id_suffix}_cpu"),
                        &format!("{what}{label_suffix}: proxy CPU per GiB"),
                        "CPU-s/GiB",
                        false,
                        t.kind,
                        cpu,
                    );
                }
            }
            Err(e) => res.note(format!("{what} {proto} {}: {e:#}", t.kind.title())),
        }
    }
}

async fn run(opts: Opts) -> Result<()> {
    let tools = Tools::find(&opts.root)?;
    let tck = clk_tck();
    let info = machine(&tools);
    eprintln!("== machine: {info:?}");
    let pki = make_pki()?;
    if let Some(points) = &opts.net {
        // The network-impairment matrix runs on its own (namespaces, its own fleet).
        return netem::matrix::run(&opts, points, &tools, &pki).await;
    }
    let mut fleet = Fleet::start_backend().await?;
    let backend = fleet.backend;
    eprintln!("== backend on {backend}");

    let mut targets = start_targets(&mut fleet, &tools, &pki, "", opts.targets.as_deref()).await?;
    // The same with the default log filter (one access line per request on stderr).
    let door_log = if opts.wants("get") {
        Some(
            fleet
                .doorless(&tools, &pki, "doorless-accesslog", true, true, false)
                .await?,
        )
    } else {
        None
    };
    targets.sort_by_key(|t| t.kind);
    for t in &targets {
        eprintln!(
            "== {:<16} {} pids {:?}",
            t.kind.title(),
            t.url("/"),
            t.pids()
        );
    }

    let mut res = Results::default();
    res.note(format!(
        "worker counts: nginx worker_processes 1 (each nginx); doorless edge and connector one \
         runtime thread each (current-thread scheduler), their default, unless \
         TOKIO_WORKER_THREADS is passed to them (extra doorless environment this run: {:?}); \
         rathole default (tokio multi-thread, one \
         worker per core = {}); backend tokio multi-thread. Nothing is pinned; the load \
         generator shares the same cores.",
        [
            "BENCH_DOORLESS_ENV",
            "BENCH_EDGE_ENV",
            "BENCH_CONNECTOR_ENV"
        ]
        .map(|v| format!("{v}={}", std::env::var(v).unwrap_or_default())),
        info["nproc"]
    ));

    for run in 0..opts.runs {
        eprintln!("== run {}/{}", run + 1, opts.runs);
        if opts.wants("get") {
            for &c in &opts.concurrency {
                for t in &targets {
                    for h2 in [false, true] {
                        if h2 && (!opts.h2 || !t.tls) {
                            continue;
                        }
                        let proto = if h2 { "h2" } else { "h1" };
                        match oha(&tools, &pki, t, c, h2, opts.secs, tck).await {
                            Ok(Load {
                                rps,
                                p50,
                                p99,
                                bad,
                                cpu_us,
                            }) => {
                                eprintln!(
                                    "  GET {proto} c={c:<3} {:<16} {rps:>9.0} req/s  p50 {p50:.3} ms  p99 {p99:.3} ms  CPU {cpu_us:.0} µs/req  non-200/errors {bad}",
                                    t.kind.title()
                                );
                                let k = t.kind;
                                res.add(
                                    &format!("get_{proto}_c{c}_rps"),
                                    &format!("small GET {proto} c={c}"),
                                    "req/s",
                                    true,
                                    k,
                                    rps,
                                );
                                res.add(
                                    &format!("get_{proto}_c{c}_p50"),
                                    &format!("small GET {proto} c={c} p50"),
                                    "ms",
                                    false,
                                    k,
                                    p50,
                                );
                                res.add(
                                    &format!("get_{proto}_c{c}_p99"),
                                    &format!("small GET {proto} c={c} p99"),
                                    "ms",
                                    false,
                                    k,
                                    p99,
                                );
                                res.add(
                                    &format!("get_{proto}_c{c}_cpu"),
                                    &format!("small GET {proto} c={c}: proxy CPU per request"),
                                    "µs",
                                    false,
                                    k,
                                    cpu_us,
                                );
                            }
                            Err(e) => {
                                res.note(format!("GET {proto} c={c} {}: {e:#}", t.kind.title()))
                            }
                        }
                    }
                }
            }
        }
        if let Some(t) = &door_log {
            match oha(&tools, &pki, t, 64, false, opts.secs, tck).await {
                Ok(Load { rps, p99, .. }) => {
                    eprintln!(
                        "  GET h1 c=64  doorless + access log {rps:>9.0} req/s  p99 {p99:.3} ms"
                    );
                    res.add(
                        "get_h1_c64_rps_accesslog",
                        "small GET h1 c=64, doorless with its default access log on stderr",
                        "req/s",
                        true,
                        Kind::Doorless,
                        rps,
                    );
                }
                Err(e) => res.note(format!("GET doorless+access log: {e:#}")),
            }
        }
        if opts.wants("bulk") {
            for t in &targets {
                for h2 in [false, true] {
                    if h2 && (!opts.h2 || !t.tls) {
                        continue;
                    }
                    bulk(&mut res, t, &pki, opts.bulk_bytes, tck, h2).await;
                }
            }
        }
        if opts.wants("handshake") {
            for t in targets
                .iter()
                .filter(|t| t.tls && t.kind != Kind::NginxClassic)
            {
                for (id, label, cfg) in [
                    (
                        "hs",
                        "full mTLS handshakes + GET, 8 clients (client offers X25519MLKEM768+X25519)",
                        &pki.tls_full,
                    ),
                    (
                        "hs_x25519",
                        "full mTLS handshakes + GET, 8 clients (client offers X25519 only)",
                        &pki.tls_full_x25519,
                    ),
                ] {
                    match handshakes(t, cfg, opts.secs, 8).await {
                        Ok((rate, failed)) => {
                            eprintln!(
                                "  {id:<9} {:<16} {rate:>8.0} /s  failed {failed}",
                                t.kind.title()
                            );
                            res.add(id, label, "handshakes/s", true, t.kind, rate);
                            if failed > 0 {
                                res.note(format!("{id} {}: {failed} failed", t.kind.title()));
                            }
                        }
                        Err(e) => res.note(format!("{id} {}: {e:#}", t.kind.title())),
                    }
                }
            }
        }
        if opts.wants("ws") {
            for t in &targets {
                match ws_rtt(t, &pki, opts.ws_msgs).await {
                    Ok((p50, p99)) => {
                        eprintln!(
                            "  ws rtt {:<16} p50 {p50:.0} µs  p99 {p99:.0} µs",
                            t.kind.title()
                        );
                        res.add(
                            "ws_p50",
                            &format!("WebSocket echo RTT p50 ({} msgs)", opts.ws_msgs),
                            "µs",
                            false,
                            t.kind,
                            p50,
                        );
                        res.add(
                            "ws_p99",
                            &format!("WebSocket echo RTT p99 ({} msgs)", opts.ws_msgs),
                            "µs",
                            false,
                            t.kind,
                            p99,
                        );
                    }
                    Err(e) => res.note(format!("ws rtt {}: {e:#}", t.kind.title())),
                }
            }
        }
        if opts.wants("idle") {
            // A proxy holds ~2 fds per WebSocket (client + upstream side): stay under the limit.
            let nofile: usize = sh("sh", &["-c", "ulimit -n"]).parse().unwrap_or(1024);
            let idle_n = opts.idle_ws.min(nofile.saturating_sub(200) / 2);
            if idle_n < opts.idle_ws && run == 0 {
                res.note(format!("idle WebSockets: {idle_n} instead of {} (open-file limit {nofile}; a proxy needs 2 fds per WebSocket)", opts.idle_ws));
            }
            // On freshly started processes: the long-lived ones have run every other
            // scenario, and what their allocators kept would pass for WebSocket memory.
            let mut fresh_fleet = Fleet {
                dir: tempfile::Builder::new()
                    .prefix("doorless-bench-idle-")
                    .tempdir()?,
                procs: Vec::new(),
                backend,
            };
            let fresh = start_targets(
                &mut fresh_fleet,
                &tools,
                &pki,
                &format!("idle{run}-"),
                opts.targets.as_deref(),
            )
            .await?;
            for t in fresh.iter().filter(|t| !t.roots.is_empty()) {
                match ws_idle(t, &pki, idle_n).await {
                    Ok((opened, per)) => {
                        eprintln!(
                            "  idle ws {:<16} {opened} open, {per:.1} KiB RSS each",
                            t.kind.title()
                        );
                        res.add(
                            "idle_ws_kib",
                            &format!(
                                "idle WebSockets (fresh processes): proxy RSS per WebSocket (target {})",
                                opts.idle_ws
                            ),
                            "KiB",
                            false,
                            t.kind,
                            per,
                        );
                        res.add(
                            "idle_ws_n",
                            "idle WebSockets actually held open",
                            "count",
                            true,
                            t.kind,
                            opened as f64,
                        );
                    }
                    Err(e) => res.note(format!("idle ws {}: {e:#}", t.kind.title())),
                }
            }
            drop(fresh_fleet);
        }
        if opts.wants("iperf") {
            match iperf(&tools, &mut fleet, opts.secs).await {
                Ok(mbps) => {
                    eprintln!("  iperf3 raw TCP loopback {mbps:.0} MB/s");
                    if let Some(runs) = res
                        .extra
                        .entry("iperf3_mbps")
                        .or_insert_with(|| json!([]))
                        .as_array_mut()
                    {
                        runs.push(json!(mbps));
                    }
                }
                Err(e) => res.note(format!("iperf3: {e:#}")),
            }
        }
    }

    // The flood: doorless with DEFAULT limits, and nginx one hop for comparison.
    let mut floods = Vec::new();
    if opts.wants("flood") {
        let door_default = fleet
            .doorless(&tools, &pki, "doorless-defaults", false, true, false)
            .await?;
        let nginx_t = targets.iter().find(|t| t.kind == Kind::Nginx);
        for run in 0..opts.runs {
            for (name, t) in [
                ("doorless (default limits)", Some(&door_default)),
                ("nginx mTLS 1-hop", nginx_t),
            ] {
                let Some(t) = t else { continue };
                match flood(t, &pki, opts.flood, opts.flood_secs).await {
                    Ok(r) => {
                        eprintln!(
                            "  flood {} run {}: calm p50/p99 {:.0}/{:.0} µs, flood p50/p99 {:.0}/{:.0} µs, new-conn p99 calm {:.0} flood {:.0} µs, auth failed {}, flood sent {} completed handshakes {}",
                            name,
                            run + 1,
                            r.calm_p50,
                            r.calm_p99,
                            r.flood_p50,
                            r.flood_p99,
                            r.calm_new_p99,
                            r.flood_new_p99,
                            r.auth_failed,
                            r.flood_sent,
                            r.flood_completed_handshakes
                        );
                        floods.push(json!({
                            "target": name, "run": run + 1,
                            "calm_p50_us": r.calm_p50, "calm_p99_us": r.calm_p99,
                            "flood_p50_us": r.flood_p50, "flood_p99_us": r.flood_p99,
                            "calm_new_conn_p99_us": r.calm_new_p99, "flood_new_conn_p99_us": r.flood_new_p99,
                            "auth_failed": r.auth_failed, "flood_sent": r.flood_sent,
                            "flood_completed_handshakes": r.flood_completed_handshakes,
                        }));
                    }
                    Err(e) => res.note(format!("flood {name}: {e:#}")),
                }
            }
        }
    }

    let report = render(&opts, &info, &res, &floods);
    std::fs::create_dir_all(&opts.out)?;
    std::fs::write(opts.out.join("latest.md"), &report.0)?;
    std::fs::write(
        opts.out.join("latest.json"),
        serde_json::to_string_pretty(&report.1)?,
    )?;
    println!("{}", report.0);
    eprintln!("== wrote {}/latest.md and latest.json", opts.out.display());
    drop(fleet);
    Ok(())
}
