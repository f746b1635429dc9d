//! The report: `latest.md` and `latest.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::opts::Opts;
use crate::results::{Results, fmt_num, median};
use crate::targets::Kind;

pub(crate) fn render(
    opts: &Opts,
    info: &BTreeMap<&'static str, String>,
    res: &Results,
    floods: &[Value],
) -> (String, Value) {
    let mut md = String::new();
    let _ = writeln!(md, "# doorless benchmark — latest run\n");
    let _ = writeln!(
        md,
        "Medians of {} run(s); every load loop {} s unless stated; loopback only. Ratios are \
         doorless ÷ reference (for latency, CPU and RSS lower is better, so a ratio < 1 is \
         doorless ahead).\n",
        opts.runs, opts.secs
    );
    let _ = writeln!(md, "| machine | |\n|---|---|");
    for (k, v) in info {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    let _ = writeln!(md);
    let _ = write!(md, "| figure | unit |");
    for k in Kind::ALL {
        let _ = write!(md, " {} |", k.title());
    }
    let _ = writeln!(
        md,
        " ÷ nginx 1-hop | ÷ nginx+rathole | ÷ nginx+rathole (noise) | ÷ direct |"
    );
    let _ = write!(md, "|---|---|");
    for _ in Kind::ALL {
        let _ = write!(md, "---:|");
    }
    let _ = writeln!(md, "---:|---:|---:|---:|");
    let mut metrics_json = Vec::new();
    for m in &res.metrics {
        let _ = write!(md, "| {} | {} |", m.label, m.unit);
        let mut meds = BTreeMap::new();
        for k in Kind::ALL {
            let v = m.values.get(&k).map(|v| median(v));
            if let Some(v) = v {
                meds.insert(k, v);
            }
            let _ = write!(md, " {} |", v.map_or("—".into(), fmt_num));
        }
        let d = meds.get(&Kind::Doorless).copied();
        for r in [
            Kind::Nginx,
            Kind::Composite,
            Kind::CompositeNoise,
            Kind::Direct,
        ] {
            let ratio = match (d, meds.get(&r)) {
                (Some(d), Some(&x)) if x != 0.0 => format!("{:.2}×", d / x),
                _ => "—".into(),
            };
            let _ = write!(md, " {ratio} |");
        }
        let _ = writeln!(md);
        metrics_json.push(json!({
            "id": m.id, "label": m.label, "unit": m.unit, "higher_is_better": m.higher_better,
            "runs": m.values.iter().map(|(k, v)| (k.id().to_owned(), json!(v))).collect::<serde_json::Map<_,_>>(),
            "median": meds.iter().map(|(k, v)| (k.id().to_owned(), json!(v))).collect::<serde_json::Map<_,_>>(),
        }));
    }
    if let Some(Value::Array(a)) = res.extra.get("iperf3_mbps") {
        let v: Vec<f64> = a.iter().filter_map(Value::as_f64).collect();
        let _ = writeln!(
            md,
            "\nRaw loopback TCP (iperf3, one stream, {} s): **{} MB/s** (median of {}).",
            opts.secs,
            fmt_num(median(&v)),
            v.len()
        );
    }

    // Flood.
    if !floods.is_empty() {
        let _ = writeln!(
            md,
            "\n## Unauthenticated handshake flood\n\n{} handshakes without a client certificate \
             from 127.0.0.2 in {} s; meanwhile an authenticated client from 127.0.0.1 sends \
             keep-alive GETs (~1 ms apart) and a new full-handshake connection + GET every \
             50 ms. Medians over runs.\n",
            opts.flood, opts.flood_secs
        );
        let _ = writeln!(
            md,
            "| target | calm p50 µs | calm p99 µs | flood p50 µs | flood p99 µs | flood p99 ÷ calm p99 | new-conn p99 calm µs | new-conn p99 flood µs | auth failures (all runs) | flood handshakes completed |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let mut names: Vec<&str> = floods.iter().filter_map(|f| f["target"].as_str()).collect();
        names.dedup();
        names.sort();
        names.dedup();
        for name in names {
            let rows: Vec<&Value> = floods.iter().filter(|f| f["target"] == name).collect();
            let med = |k: &str| {
                median(
                    &rows
                        .iter()
                        .filter_map(|r| r[k].as_f64())
                        .collect::<Vec<_>>(),
                )
            };
            let failed: f64 = rows.iter().filter_map(|r| r["auth_failed"].as_f64()).sum();
            let _ = writeln!(
                md,
                "| {name} | {} | {} | {} | {} | {:.2}× | {} | {} | {failed} | {} |",
                fmt_num(med("calm_p50_us")),
                fmt_num(med("calm_p99_us")),
                fmt_num(med("flood_p50_us")),
                fmt_num(med("flood_p99_us")),
                med("flood_p99_us") / med("calm_p99_us"),
                fmt_num(med("calm_new_conn_p99_us")),
                fmt_num(med("flood_new_conn_p99_us")),
                fmt_num(med("flood_completed_handshakes")),
            );
        }
    }

    // Targets.
    let _ = writeln!(md, "\n## Targets (issue 6), from the medians above\n");
    let g = |id: &str, k: Kind| res.median(id, k).unwrap_or(f64::NAN);
    let mut check = |what: String, ok: bool| {
        let _ = writeln!(md, "- {} {what}", if ok { "**met**" } else { "**missed**" });
    };
    let (d, c, n) = (Kind::Doorless, Kind::Composite, Kind::Nginx);
    let rps = "get_h1_c64_rps";
    if res.median(rps, d).is_some() {
        check(
            format!(
                "GET c=64 h1 req/s ≥ 1.5× composite: {:.2}×",
                g(rps, d) / g(rps, c)
            ),
            g(rps, d) >= 1.5 * g(rps, c),
        );
        check(
            format!(
                "GET c=64 h1 req/s ≥ 0.6× nginx 1-hop: {:.2}×",
                g(rps, d) / g(rps, n)
            ),
            g(rps, d) >= 0.6 * g(rps, n),
        );
        for p in ["p50", "p99"] {
            let id = format!("get_h1_c64_{p}");
            check(
                format!(
                    "GET c=64 h1 {p} ≤ composite: {} vs {} ms",
                    fmt_num(g(&id, d)),
                    fmt_num(g(&id, c))
                ),
                g(&id, d) <= g(&id, c),
            );
        }
    }
    for (id, what) in [("down_mbps", "download"), ("up_mbps", "upload")] {
        if res.median(id, d).is_some() {
            check(
                format!("{what} ≥ composite: {:.2}×", g(id, d) / g(id, c)),
                g(id, d) >= g(id, c),
            );
            check(
                format!("{what} ≥ 0.5× nginx 1-hop: {:.2}×", g(id, d) / g(id, n)),
                g(id, d) >= 0.5 * g(id, n),
            );
        }
    }
    for (id, what) in [("down_cpu", "download"), ("up_cpu", "upload")] {
        if res.median(id, d).is_some() {
            check(
                format!(
                    "{what} CPU-s/GiB ≤ composite: {} vs {}",
                    fmt_num(g(id, d)),
                    fmt_num(g(id, c))
                ),
                g(id, d) <= g(id, c),
            );
        }
    }
    if res.median("hs", d).is_some() {
        check(
            format!(
                "full mTLS handshakes/s ≥ nginx (client default groups): {:.2}×",
                g("hs", d) / g("hs", n)
            ),
            g("hs", d) >= g("hs", n),
        );
        check(
            format!(
                "full mTLS handshakes/s ≥ nginx (X25519 only): {:.2}×",
                g("hs_x25519", d) / g("hs_x25519", n)
            ),
            g("hs_x25519", d) >= g("hs_x25519", n),
        );
    }
    // The same comparisons against the composite with an encrypted tunnel hop (rathole's
    // Noise transport), which is what doorless's QUIC hop always is. Not issue targets.
    let e = Kind::CompositeNoise;
    let mut reference = Vec::new();
    for (id, what, unit) in [
        ("get_h1_c64_rps", "GET c=64 h1 req/s", "req/s"),
        ("get_h1_c64_p99", "GET c=64 h1 p99", "ms"),
        ("down_mbps", "download", "MB/s"),
        ("up_mbps", "upload", "MB/s"),
        ("down_cpu", "download CPU", "CPU-s/GiB"),
        ("up_cpu", "upload CPU", "CPU-s/GiB"),
    ] {
        if let (Some(dv), Some(ev)) = (res.median(id, d), res.median(id, e)) {
            reference.push(format!(
                "- {what}: doorless {} vs {} {unit} ({:.2}×)",
                fmt_num(dv),
                fmt_num(ev),
                dv / ev
            ));
        }
    }
    if res.median("idle_ws_kib", d).is_some() {
        check(
            format!(
                "idle WebSocket RSS ≤ nginx 1-hop: {} vs {} KiB",
                fmt_num(g("idle_ws_kib", d)),
                fmt_num(g("idle_ws_kib", n))
            ),
            g("idle_ws_kib", d) <= g("idle_ws_kib", n),
        );
    }
    let door_floods: Vec<&Value> = floods
        .iter()
        .filter(|f| {
            f["target"]
                .as_str()
                .is_some_and(|s| s.starts_with("doorless"))
        })
        .collect();
    if !door_floods.is_empty() {
        let med = |k: &str| {
            median(
                &door_floods
                    .iter()
                    .filter_map(|r| r[k].as_f64())
                    .collect::<Vec<_>>(),
            )
        };
        let failed: f64 = door_floods
            .iter()
            .filter_map(|r| r["auth_failed"].as_f64())
            .sum();
        let ratio = med("flood_p99_us") / med("calm_p99_us");
        check(
            format!("flood: keep-alive p99 ≤ 3× calm: {ratio:.2}×"),
            ratio <= 3.0,
        );
        let ratio_new = med("flood_new_conn_p99_us") / med("calm_new_conn_p99_us");
        check(
            format!("flood: new-connection p99 ≤ 3× calm: {ratio_new:.2}×"),
            ratio_new <= 3.0,
        );
        check(
            format!("flood: zero failed authenticated requests: {failed}"),
            failed == 0.0,
        );
    }
    // Issue 15 §3: the small-request path, and bulk over both HTTP versions.
    let mut small = Vec::new();
    let mut target = |what: String, ok: bool| {
        small.push(format!(
            "- {} {what}",
            if ok { "**met**" } else { "**missed**" }
        ));
    };
    for proto in ["h1", "h2"] {
        let cpu = format!("get_{proto}_c1_cpu");
        if res.median(&cpu, d).is_some() {
            target(
                format!(
                    "GET c=1 {proto} proxy CPU per request ≤ 2× nginx 1-hop: {} vs {} µs ({:.2}×)",
                    fmt_num(g(&cpu, d)),
                    fmt_num(g(&cpu, n)),
                    g(&cpu, d) / g(&cpu, n)
                ),
                g(&cpu, d) <= 2.0 * g(&cpu, n),
            );
        }
        for p in ["p50", "p99"] {
            let id = format!("get_{proto}_c1_{p}");
            if res.median(&id, d).is_some() {
                target(
                    format!(
                        "GET c=1 {proto} {p} ≤ composite: {} vs {} ms",
                        fmt_num(g(&id, d)),
                        fmt_num(g(&id, c))
                    ),
                    g(&id, d) <= g(&id, c),
                );
            }
        }
        let id = format!("get_{proto}_c64_rps");
        if res.median(&id, d).is_some() {
            target(
                format!(
                    "GET c=64 {proto} req/s ≥ 1.5× composite: {:.2}×",
                    g(&id, d) / g(&id, c)
                ),
                g(&id, d) >= 1.5 * g(&id, c),
            );
        }
    }
    for (id, what) in [
        ("down", "download h1"),
        ("up", "upload h1"),
        ("down_h2", "download h2"),
        ("up_h2", "upload h2"),
    ] {
        let (mbps, cpu) = (format!("{id}_mbps"), format!("{id}_cpu"));
        if res.median(&mbps, d).is_some() {
            target(
                format!("{what} ≥ composite: {:.2}×", g(&mbps, d) / g(&mbps, c)),
                g(&mbps, d) >= g(&mbps, c),
            );
            target(
                format!(
                    "{what} CPU-s/GiB ≤ Noise composite: {} vs {}",
                    fmt_num(g(&cpu, d)),
                    fmt_num(g(&cpu, e))
                ),
                g(&cpu, d) <= g(&cpu, e),
            );
        }
    }
    if !small.is_empty() {
        let _ = writeln!(
            md,
            "\n## Targets (issue 15 §3: loopback), from the medians above\n\n{}",
            small.join("\n")
        );
    }
    if !reference.is_empty() {
        let _ = writeln!(
            md,
            "\nAgainst nginx + rathole with its Noise transport (tunnel hop encrypted, like \
             doorless's; for reference, not a target):\n\n{}\n",
            reference.join("\n")
        );
    }
    if !res.notes.is_empty() {
        let _ = writeln!(md, "\n## Notes\n");
        for n in &res.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    let json = json!({
        "machine": info,
        "options": {
            "runs": opts.runs, "secs": opts.secs, "concurrency": opts.concurrency,
            "bulk_bytes": opts.bulk_bytes, "idle_ws": opts.idle_ws, "ws_msgs": opts.ws_msgs,
            "flood": opts.flood, "flood_secs": opts.flood_secs,
        },
        "metrics": metrics_json,
        "iperf3_mbps": res.extra.get("iperf3_mbps"),
        "flood": floods,
        "notes": res.notes,
    });
    (md, json)
}
