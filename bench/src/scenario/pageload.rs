//! HA-like page load in a real headless Chromium (Debian's), measured to "WebSocket connected
//! and first state received".
//!
//! Per run: a fresh profile and a fresh NSS database in a fresh `$HOME` (`~/.pki/nssdb`, the
//! server CA trusted, the device's .p12 imported with `certutil`/`pk12util`), Chromium started
//! on about:blank, then driven over the DevTools protocol: `Page.navigate` to the target, and
//! `Runtime.evaluate` polling `window.__bench`, which the page's script (`hafront`) fills with
//! `performance.now()` at WebSocket open, `auth_ok` and the states result — times from
//! navigation start, so Chromium's own start-up is not counted.
//!
//! The client certificate is chosen without a prompt by the managed policy
//! `AutoSelectCertificateForUrls`, from a policies tree of our own that Chromium sees at
//! /etc/chromium/policies through a bind mount in a private mount namespace (nothing under
//! /etc is written; see `write_policies` and `policy_mount`).
//!
//! The DevTools client is the few lines below over tokio-tungstenite (already a dependency):
//! two methods and a poll do not justify a CDP crate's dependency tree (chromiumoxide and
//! headless_chrome each pull in dozens of crates and their own browser launchers).
//!
//! Never run by `cargo test`: only by the driver's `--net` matrix.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

use crate::HOST;
use crate::procs::Proc;
use crate::targets::Pki;

/// Where Debian's Chromium reads policies (`managed/*.json` under it).
const SYSTEM_POLICIES: &str = "/etc/chromium/policies";
/// Its parent, which Debian's package always has (`master_preferences`); some versions
/// (156 in bookworm's security updates) no longer ship the policies directory in it.
const SYSTEM_ETC: &str = "/etc/chromium";

/// Writes, under `dir`, a policies tree whose managed policy AutoSelectCertificateForUrls
/// lets Chromium present the device certificate to the benchmark's origins without asking.
/// Chromium sees it in place of /etc/chromium/policies through a bind mount in a private
/// mount namespace (see `page_load`): the system directory is never written, and other users
/// of it (another benchmark's policy file for the same host name would win the merge and
/// leave ours unused) do not interfere either way.
fn write_policies(dir: &Path, ports: &[u16]) -> Result<Mount> {
    let (mount, root) = policy_mount(dir)?;
    let managed = root.join("managed");
    std::fs::create_dir_all(&managed)?;
    let path = managed.join("doorless-bench.json");
    let rules: Vec<String> = ports
        .iter()
        .map(|p| json!({"pattern": format!("https://{HOST}:{p}"), "filter": {}}).to_string())
        .collect();
    std::fs::write(
        &path,
        json!({ "AutoSelectCertificateForUrls": rules }).to_string(),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    // Chromium ignores policy files modified in the last 5 s (its loader waits for them to
    // "settle") and then does not look again for minutes: a browser started right after this
    // write would ask for a certificate instead of choosing it (headless: it hangs, or goes on
    // without one). So date the file and its directory a minute back.
    let past = std::time::SystemTime::now() - Duration::from_secs(60);
    for p in [path.as_path(), managed.as_path()] {
        std::fs::File::open(p)
            .and_then(|f| f.set_modified(past))
            .with_context(|| format!("dating {} back", p.display()))?;
    }
    Ok(mount)
}

/// A bind mount Chromium's process gets in its private mount namespace.
struct Mount {
    source: PathBuf,
    target: &'static str,
}

/// Where our policies tree goes under `dir`, and what it is mounted over: the system's
/// policies directory where there is one; where there is not, the whole of /etc/chromium,
/// with a copy of what that holds beside our `policies` (a mount point must exist, and
/// creating one would write under /etc).
fn policy_mount(dir: &Path) -> Result<(Mount, PathBuf)> {
    if Path::new(SYSTEM_POLICIES).is_dir() {
        let root = dir.join("chromium-policies");
        let mount = Mount {
            source: root.clone(),
            target: SYSTEM_POLICIES,
        };
        return Ok((mount, root));
    }
    ensure!(
        Path::new(SYSTEM_ETC).is_dir(),
        "{SYSTEM_ETC} missing (Debian's chromium package creates it)"
    );
    let etc = dir.join("chromium-etc");
    std::fs::create_dir_all(&etc)?;
    for entry in std::fs::read_dir(SYSTEM_ETC).with_context(|| format!("reading {SYSTEM_ETC}"))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), etc.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    let mount = Mount {
        source: etc.clone(),
        target: SYSTEM_ETC,
    };
    Ok((mount, etc.join("policies")))
}

/// Things every run needs: the browser binary and the device identity as a .p12.
pub(crate) struct Browser {
    pub(crate) chromium: PathBuf,
    p12: PathBuf,
    server_ca: PathBuf,
    policies: Mount,
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

impl Browser {
    /// `ports`: the targets' HTTPS ports (the certificate is chosen for those origins only).
    pub(crate) fn prepare(pki: &Pki, dir: &Path, ports: &[u16]) -> Result<Self> {
        let chromium = std::env::var_os("BENCH_CHROMIUM")
            .map(PathBuf::from)
            .or_else(|| {
                [
                    "/usr/lib/chromium/chromium",
                    "/usr/bin/chromium",
                    "/usr/bin/chromium-browser",
                ]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
            })
            .ok_or_else(|| {
                anyhow!("chromium not found (apt install chromium; or BENCH_CHROMIUM)")
            })?;
        for tool in ["certutil", "pk12util", "openssl", "unshare", "mount"] {
            ensure!(
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .output()?
                    .status
                    .success(),
                "{tool} not found (apt install libnss3-tools openssl)"
            );
        }
        let p12 = dir.join("device.p12");
        run_ok(
            Command::new("openssl")
                .args([
                    "pkcs12",
                    "-export",
                    "-passout",
                    "pass:bench",
                    "-name",
                    "bench",
                    "-in",
                ])
                .arg(&pki.device_cert)
                .arg("-inkey")
                .arg(&pki.device_key)
                .arg("-out")
                .arg(&p12),
        )?;
        Ok(Self {
            chromium,
            p12,
            server_ca: pki.server_ca.clone(),
            policies: write_policies(dir, ports)?,
        })
    }
}

/// Marks the upgrade's request and answer among the recorded WebSocket frames.
const HANDSHAKE: &str = "#handshake";

/// What one page load measured (ms from navigation start).
#[derive(Debug, Clone)]
pub(crate) struct Load {
    pub(crate) ws_open: f64,
    /// The server's first WebSocket message handled by the page (HA's `auth_required`, sent
    /// right after the upgrade): how long the page took to see it after the open.
    pub(crate) auth_required: f64,
    pub(crate) auth_ok: f64,
    /// `auth` sent → `auth_ok` received as Chromium's network stack saw the frames (CDP), i.e.
    /// without the page's main thread.
    pub(crate) auth_net: f64,
    /// The page's script created the WebSocket (it runs as soon as `core.js` is in).
    pub(crate) ws_created: f64,
    /// The upgrade's request sent → its answer received, as the network stack saw it (CDP).
    pub(crate) upgrade_net: f64,
    pub(crate) first_state: f64,
    /// The window's load event (every asset), if it came.
    pub(crate) load: f64,
    pub(crate) html_first_byte: f64,
    /// The page's first script (`core.js`, the one that opens the WebSocket) fully received.
    pub(crate) core_js: f64,
    pub(crate) protocol: String,
    pub(crate) resources: u64,
}

/// One page load of `url` (`https://ha.home.test:PORT/`) with `host_ip` as ha.home.test.
pub(crate) async fn page_load(
    b: &Browser,
    url: &str,
    host_ip: std::net::IpAddr,
    work: &Path,
    name: &str,
) -> Result<Load> {
    let home = tempfile::Builder::new()
        .prefix("chromium-home-")
        .tempdir_in(work)?;
    let nssdb = home.path().join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb)?;
    let db = format!("sql:{}", nssdb.display());
    run_ok(Command::new("certutil").args(["-N", "-d", &db, "--empty-password"]))?;
    run_ok(
        Command::new("certutil")
            .args([
                "-A",
                "-d",
                &db,
                "-n",
                "doorless-bench-ca",
                "-t",
                "C,,",
                "-i",
            ])
            .arg(&b.server_ca),
    )?;
    run_ok(
        Command::new("pk12util")
            .args(["-d", &db, "-W", "bench", "-i"])
            .arg(&b.p12),
    )?;
    let profile = home.path().join("profile");
    // A private mount namespace in which our policies tree hides the system's (`policy_mount`);
    // `sh` then execs Chromium (same pid, so its process group is Proc's as usual).
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind \"$0\" {} && exec \"$@\"",
            b.policies.target
        ))
        .arg(&b.policies.source)
        .arg(&b.chromium)
        .env("HOME", home.path())
        .arg("--headless")
        .arg("--no-sandbox")
        .arg("--disable-gpu")
        .arg("--no-first-run")
        .arg("--no-default-browser-check")
        .arg("--disable-background-networking")
        .arg("--disable-component-update")
        .arg("--disable-sync")
        .arg("--disable-dev-shm-usage")
        .arg("--disable-features=Translate,OptimizationHints,MediaRouter")
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--remote-debugging-port=0")
        .arg(format!("--host-resolver-rules=MAP {HOST} {host_ip}"))
        .arg("about:blank");
    // Debugging aid: BENCH_CHROMIUM_NETLOG=DIR keeps a NetLog of every page load there.
    if let Some(dir) = std::env::var_os("BENCH_CHROMIUM_NETLOG") {
        cmd.arg(format!(
            "--log-net-log={}",
            Path::new(&dir).join(format!("{name}.json")).display()
        ));
    }
    let mut proc = Proc::spawn(name, home.path(), &mut cmd)?;
    let r = drive(&mut proc, &profile, url).await;
    drop(proc);
    r.with_context(|| {
        let log =
            std::fs::read_to_string(home.path().join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        format!(
            "{name}; Chromium's last log lines: {}",
            lines[lines.len().saturating_sub(5)..].join(" | ")
        )
    })
}

async fn drive(proc: &mut Proc, profile: &Path, url: &str) -> Result<Load> {
    // DevToolsActivePort: "<port>\n/devtools/browser/<id>".
    let start = Instant::now();
    let port: u16 = loop {
        if let Ok(text) = std::fs::read_to_string(profile.join("DevToolsActivePort"))
            && let Some(p) = text.lines().next().and_then(|l| l.trim().parse().ok())
        {
            break p;
        }
        proc.check_alive()?;
        ensure!(
            start.elapsed() < Duration::from_secs(30),
            "Chromium wrote no DevToolsActivePort in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let list = devtools_get(port, "/json/list").await?;
    let page_ws = list
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["type"] == "page")
        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
        .ok_or_else(|| anyhow!("no page target in {list}"))?
        .to_owned();
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(page_ws.as_str()),
    )
    .await
    .context("DevTools WebSocket connect")??;
    let mut id = 0u64;
    // The page's WebSocket frames as Chromium's network stack saw them (CDP `Network`
    // events): (seconds, sent, payload).
    let frames = std::cell::RefCell::new(Vec::<(f64, bool, String)>::new());
    let mut call = async |ws: &mut tokio_tungstenite::WebSocketStream<_>,
                          method: &str,
                          params: Value,
                          limit: Duration|
           -> Result<Value> {
        id += 1;
        ws.send(Message::text(
            json!({"id": id, "method": method, "params": params}).to_string(),
        ))
        .await?;
        let until = Instant::now() + limit;
        loop {
            let m = tokio::time::timeout_at(until.into(), ws.next())
                .await
                .with_context(|| format!("{method}: no answer in {limit:?}"))?
                .ok_or_else(|| anyhow!("DevTools WebSocket closed"))??;
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t)?;
                let method = v["method"].as_str().unwrap_or("");
                // The upgrade's own round trip as the network stack saw it, stored with
                // the frames under a name no frame has.
                if let Some(sent) = match method {
                    "Network.webSocketWillSendHandshakeRequest" => Some(true),
                    "Network.webSocketHandshakeResponseReceived" => Some(false),
                    _ => None,
                } {
                    let t = v["params"]["timestamp"].as_f64().unwrap_or(f64::NAN);
                    frames.borrow_mut().push((t, sent, HANDSHAKE.to_owned()));
                }
                if method.starts_with("Network.webSocketFrame") {
                    let p = &v["params"];
                    frames.borrow_mut().push((
                        p["timestamp"].as_f64().unwrap_or(f64::NAN),
                        method == "Network.webSocketFrameSent",
                        p["response"]["payloadData"]
                            .as_str()
                            .unwrap_or("")
                            .chars()
                            .take(64)
                            .collect(),
                    ));
                }
                if v["id"] == id {
                    if let Some(e) = v.get("error") {
                        bail!("{method}: {e}");
                    }
                    return Ok(v["result"].clone());
                }
            }
        }
    };
    call(
        &mut ws,
        "Network.enable",
        json!({}),
        Duration::from_secs(10),
    )
    .await?;
    // Answered when the navigation commits (the HTML's response head), which over a lossy
    // 80 ms path can take a few retransmission timeouts.
    let nav = call(
        &mut ws,
        "Page.navigate",
        json!({"url": url}),
        Duration::from_secs(45),
    )
    .await?;
    if let Some(e) = nav["errorText"].as_str() {
        bail!("navigation failed: {e}");
    }
    let probe = "JSON.stringify({b: window.__bench || null, \
                 nav: (performance.getEntriesByType('navigation')[0] || {}).responseStart, \
                 core: (performance.getEntriesByName(location.origin + '/frontend/core.js')[0] || {}).responseEnd, \
                 proto: (performance.getEntriesByType('navigation')[0] || {}).nextHopProtocol, \
                 res: performance.getEntriesByType('resource').length, \
                 href: location.href, title: document.title})";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = call(
            &mut ws,
            "Runtime.evaluate",
            json!({"expression": probe, "returnByValue": true}),
            Duration::from_secs(10),
        )
        .await?;
        let v: Value = r["result"]["value"]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        let b = &v["b"];
        if let Some(e) = b["error"].as_str() {
            bail!("page: {e} ({v})");
        }
        let done = b["done"] == true;
        if done && b["t"]["load"].is_number() {
            let t = &b["t"];
            let num = |x: &Value| x.as_f64().unwrap_or(f64::NAN);
            return Ok(Load {
                auth_net: {
                    let f = frames.borrow();
                    let at = |sent: bool, needle: &str| {
                        f.iter()
                            .find(|(_, s, p)| *s == sent && p.contains(needle))
                            .map(|(t, _, _)| *t)
                    };
                    match (at(true, "\"auth\""), at(false, "auth_ok")) {
                        (Some(a), Some(b)) => (b - a) * 1000.0,
                        _ => f64::NAN,
                    }
                },
                upgrade_net: {
                    let f = frames.borrow();
                    let at = |sent: bool| {
                        f.iter()
                            .find(|(_, s, p)| *s == sent && p == HANDSHAKE)
                            .map(|(t, _, _)| *t)
                    };
                    match (at(true), at(false)) {
                        (Some(a), Some(b)) => (b - a) * 1000.0,
                        _ => f64::NAN,
                    }
                },
                ws_created: num(&t["created"]),
                ws_open: num(&t["open"]),
                auth_required: num(&t["auth_required"]),
                auth_ok: num(&t["auth_ok"]),
                first_state: num(&t["states"]),
                load: num(&t["load"]),
                html_first_byte: num(&v["nav"]),
                core_js: num(&v["core"]),
                protocol: v["proto"].as_str().unwrap_or("").to_owned(),
                resources: v["res"].as_u64().unwrap_or(0),
            });
        }
        ensure!(
            Instant::now() < deadline,
            "page not done in 60 s; last state {v}"
        );
        proc.check_alive()?;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// GET on Chromium's DevTools HTTP endpoint (loopback, the driver's namespace).
async fn devtools_get(port: u16, path: &str) -> Result<Value> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    // Chromium may keep the connection open: read the head, then Content-Length bytes.
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let until = Instant::now() + Duration::from_secs(5);
    let body = loop {
        let n = tokio::time::timeout_at(until.into(), s.read(&mut tmp))
            .await
            .with_context(|| format!("DevTools {path}: no full answer in 5 s"))??;
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if n == 0 || len.is_some_and(|len| body.len() >= len) {
                break body.to_owned();
            }
        }
        ensure!(n > 0, "DevTools {path}: EOF before the answer");
    };
    let body = body.as_str();
    serde_json::from_str(body).with_context(|| format!("DevTools {path}: {body:?}"))
}
