//! Command-line options (`doorless-bench --help`).

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use crate::GIB;

#[derive(Debug, Clone)]
pub(crate) struct Opts {
    pub(crate) runs: usize,
    pub(crate) secs: u64,
    pub(crate) concurrency: Vec<usize>,
    pub(crate) bulk_bytes: u64,
    pub(crate) idle_ws: usize,
    pub(crate) ws_msgs: usize,
    pub(crate) flood: usize,
    pub(crate) flood_secs: u64,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) targets: Option<Vec<String>>,
    pub(crate) out: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) h2: bool,
    /// The network-impairment matrix instead of the loopback scenarios (`--net`).
    pub(crate) net: Option<Vec<crate::netem::NetPoint>>,
    pub(crate) quick: bool,
    /// `--net` only: live-update events per target and point (default 200; 60 with --quick).
    /// p99 of 200 is the second-worst event, which under loss is mostly chance.
    pub(crate) live_events: Option<usize>,
    /// `--net` only: page loads per target and point (default 3; 1 with --quick); the median
    /// of 3 moves by ±10 % between runs, so decisions take more.
    pub(crate) pageloads: Option<usize>,
}

impl Opts {
    pub(crate) fn parse() -> Result<Self> {
        let root = std::env::var_os("DOORLESS_ROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_default()
            });
        let mut o = Opts {
            runs: 3,
            secs: 5,
            concurrency: vec![1, 32, 64, 256],
            bulk_bytes: GIB,
            idle_ws: 10_000,
            ws_msgs: 1000,
            flood: 2000,
            flood_secs: 10,
            only: None,
            targets: None,
            out: root.join("bench/results"),
            root,
            h2: true,
            net: None,
            quick: false,
            live_events: None,
            pageloads: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut val = || args.next().ok_or_else(|| anyhow!("{a} needs a value"));
            match a.as_str() {
                "--runs" => o.runs = val()?.parse()?,
                "--secs" => o.secs = val()?.parse()?,
                "--concurrency" => {
                    o.concurrency = val()?
                        .split(',')
                        .map(str::parse)
                        .collect::<Result<_, _>>()?
                }
                "--bulk-mib" => o.bulk_bytes = val()?.parse::<u64>()? << 20,
                "--idle-ws" => o.idle_ws = val()?.parse()?,
                "--ws-msgs" => o.ws_msgs = val()?.parse()?,
                "--flood" => o.flood = val()?.parse()?,
                "--only" => o.only = Some(val()?.split(',').map(str::to_owned).collect()),
                "--out" => o.out = PathBuf::from(val()?),
                "--targets" => o.targets = Some(val()?.split(',').map(str::to_owned).collect()),
                "--no-h2" => o.h2 = false,
                "--net" => {
                    let v = val()?;
                    o.net = Some(if v == "all" {
                        crate::netem::NetPoint::matrix()
                    } else {
                        v.split(',')
                            .map(crate::netem::NetPoint::parse)
                            .collect::<Result<_>>()?
                    });
                }
                "--live-events" => o.live_events = Some(val()?.parse()?),
                "--pageloads" => o.pageloads = Some(val()?.parse::<usize>()?.max(1)),
                "--quick" => {
                    o.quick = true;
                    o.runs = 1;
                    o.secs = 2;
                    o.concurrency = vec![1, 64];
                    o.bulk_bytes = 256 << 20;
                    o.idle_ws = 1000;
                    o.ws_msgs = 300;
                    o.flood = 400;
                    o.flood_secs = 4;
                }
                "-h" | "--help" => {
                    println!(
                        "doorless-bench [--runs N=3] [--secs S=5] [--concurrency 1,32,64,256] \
                         [--bulk-mib 1024] [--idle-ws 10000] [--ws-msgs 1000] [--flood 2000] \
                         [--only get,bulk,handshake,ws,idle,flood,iperf; with --net: pageload,live,bulk,live_busy,live_h2 (the last two only when named)] \
                         [--targets direct,doorless,nginx,nginx_classic,rathole,composite] [--no-h2] [--quick] \
                         [--out DIR] [--net all|RTTms:LOSS%,... (e.g. 80ms:1%)] [--live-events N] [--pageloads N (with --net)]\n  env: DOORLESS_ROOT (repo root), BENCH_OHA, BENCH_RATHOLE, \
                         BENCH_NGINX, BENCH_IPERF3; BENCH_DOORLESS_ENV / BENCH_EDGE_ENV / BENCH_CONNECTOR_ENV \
                         (doorless's environment, e.g. DOORLESS_TUNNEL__STREAM_WINDOW=4194304); with --net, \
                         BENCH_UPLINK=MBIT:BUFFER_MS (the home uplink as a bottleneck)"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other:?} (try --help)"),
            }
        }
        Ok(o)
    }

    /// Whether `--only` names `part` (for scenarios that run only when asked for).
    pub(crate) fn names(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_some_and(|l| l.iter().any(|p| p == part))
    }

    pub(crate) fn wants(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|l| l.iter().any(|p| p == part))
    }
}
