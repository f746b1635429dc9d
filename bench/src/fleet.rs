//! Starting the targets: every process of a run (backend, doorless, nginx, rathole, iperf3)
//! lives in one `Fleet`; dropping it kills them.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::clients::get_status;
use crate::procs::{Proc, addr_of, free_port, wait_json_file};
use crate::targets::{Kind, Pki, Target, Tools};

/// Where a target's processes run: the driver's namespace on loopback (every loopback
/// scenario), or the network-impairment harness's namespaces (`netem`).
#[derive(Clone, Debug)]
pub(crate) struct Place {
    /// Namespace of the proxy side (edge, nginx, rathole server); None: the driver's.
    pub(crate) edge_ns: Option<String>,
    /// Namespace of the home side (connector, rathole client); None: the driver's.
    pub(crate) home_ns: Option<String>,
    /// Clients reach the proxy (and the edge's admin listener) on this address.
    pub(crate) public_ip: IpAddr,
    /// The tunnel listeners (doorless's tunnel, rathole's control and service) bind here.
    pub(crate) tunnel_ip: IpAddr,
    /// The backend as the home side dials it.
    pub(crate) backend_home: SocketAddr,
}

impl Place {
    pub(crate) fn loopback(backend: SocketAddr) -> Self {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Self {
            edge_ns: None,
            home_ns: None,
            public_ip: lo,
            tunnel_ip: lo,
            backend_home: backend,
        }
    }
    fn command(ns: &Option<String>, prog: impl AsRef<OsStr>) -> Command {
        match ns {
            None => Command::new(prog),
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(prog);
                c
            }
        }
    }
    fn edge_cmd(&self, prog: impl AsRef<OsStr>) -> Command {
        Self::command(&self.edge_ns, prog)
    }
    fn home_cmd(&self, prog: impl AsRef<OsStr>) -> Command {
        Self::command(&self.home_ns, prog)
    }
}

/// All processes of the benchmark; dropping it kills them.
pub(crate) struct Fleet {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) procs: Vec<Proc>,
    pub(crate) backend: SocketAddr,
}

impl Fleet {
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn spawn(&mut self, name: &str, cmd: &mut Command) -> Result<usize> {
        let p = Proc::spawn(name, self.dir.path(), cmd)?;
        self.procs.push(p);
        Ok(self.procs.len() - 1)
    }

    pub(crate) async fn start_backend() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("doorless-bench-")
            .tempdir()?;
        let ready = dir.path().join("backend.ready");
        let mut proc = Proc::spawn(
            "backend",
            dir.path(),
            Command::new(std::env::current_exe()?)
                .arg("backend")
                .arg(&ready),
        )?;
        let v = wait_json_file(&mut proc, &ready, Duration::from_secs(10)).await?;
        let backend = addr_of(&v, "addr")?;
        Ok(Self {
            dir,
            procs: vec![proc],
            backend,
        })
    }

    /// Edge + connector. `bench_limits`: generous limits for load; else the defaults. `tcp`:
    /// the tunnel over TLS/TCP (`transport = "tcp"`) instead of QUIC.
    pub(crate) async fn doorless(
        &mut self,
        tools: &Tools,
        pki: &Pki,
        name: &str,
        bench_limits: bool,
        access_log: bool,
        tcp: bool,
    ) -> Result<Target> {
        let place = Place::loopback(self.backend);
        self.doorless_at(tools, pki, name, bench_limits, access_log, tcp, &place)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn doorless_at(
        &mut self,
        tools: &Tools,
        pki: &Pki,
        name: &str,
        bench_limits: bool,
        access_log: bool,
        tcp: bool,
        place: &Place,
    ) -> Result<Target> {
        let limits = if bench_limits {
            "\n[limits]\nmax_connections = 60000\nmax_connections_per_ip = 60000\n\
             max_concurrent_handshakes = 4096\nhandshake_rate_per_ip = 1000000.0\n\
             handshake_burst_per_ip = 1000000\nmax_streams_per_connector = 16384\n"
        } else {
            ""
        };
        let edge_toml = format!(
            "state_dir = {state:?}\n\n[listen]\nhttps = \"{public}:0\"\ntunnel = \"{tunnel}:0\"\n\
             admin = \"{public}:0\"\n{limits}\n[log]\nfilter = \"{filter}\"\n",
            state = pki.state_root.to_string_lossy(),
            public = place.public_ip,
            tunnel = place.tunnel_ip,
            filter = if access_log {
                "info"
            } else {
                "info,access=off"
            },
        );
        let edge_conf = self.path(&format!("{name}-edge.toml"));
        let edge_ready = self.path(&format!("{name}-edge.ready"));
        std::fs::write(&edge_conf, &edge_toml)?;
        let i = self.spawn(
            &format!("{name}-edge"),
            place
                .edge_cmd(&tools.edge)
                .envs(doorless_env("BENCH_DOORLESS_ENV"))
                .envs(doorless_env("BENCH_EDGE_ENV"))
                .arg("run")
                .arg("--config")
                .arg(&edge_conf)
                .arg("--ready-file")
                .arg(&edge_ready),
        )?;
        let v = wait_json_file(&mut self.procs[i], &edge_ready, Duration::from_secs(20)).await?;
        let https = addr_of(&v, "https")?;
        let tunnel = addr_of(&v, "tunnel")?;
        let admin = addr_of(&v, "admin")?;
        let edge_pid = self.procs[i].pid();

        let token = pki.state.issue_connector("home", Some(name))?;
        let conn_limits = if bench_limits {
            "\n[limits]\nmax_streams = 16384\npool_max_idle = 256\n"
        } else {
            ""
        };
        let transport = if tcp {
            format!("transport = \"tcp\"\ntcp_edges = [\"{https}\"]\n")
        } else {
            String::new()
        };
        let conn_toml = format!(
            "token = {token:?}\nupstream = \"http://{backend}\"\nedges = [\"{tunnel}\"]\n\
             connections = 2\n{transport}\n[listen]\nadmin = \"127.0.0.1:0\"\n{conn_limits}\n[log]\n\
             filter = \"warn\"\n",
            token = token.encode(),
            backend = place.backend_home,
        );
        let conn_conf = self.path(&format!("{name}-connector.toml"));
        let conn_ready = self.path(&format!("{name}-connector.ready"));
        std::fs::write(&conn_conf, &conn_toml)?;
        let j = self.spawn(
            &format!("{name}-connector"),
            place
                .home_cmd(&tools.connector)
                .envs(doorless_env("BENCH_DOORLESS_ENV"))
                .envs(doorless_env("BENCH_CONNECTOR_ENV"))
                .arg("run")
                .arg("--config")
                .arg(&conn_conf)
                .arg("--ready-file")
                .arg(&conn_ready),
        )?;
        wait_json_file(&mut self.procs[j], &conn_ready, Duration::from_secs(20)).await?;
        let conn_pid = self.procs[j].pid();
        // Both tunnel connections registered.
        let start = Instant::now();
        loop {
            let status = admin_status(admin).await.unwrap_or(Value::Null);
            let n: u64 = status["sites"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|s| s["connectors"].as_array().cloned().unwrap_or_default())
                .map(|c| c["connections"].as_u64().unwrap_or(1))
                .sum();
            if n >= 2 {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                eprintln!("  note: {name}: only {n} tunnel connection(s) after 10 s: {status}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let t = Target {
            kind: if tcp {
                Kind::DoorlessTcp
            } else {
                Kind::Doorless
            },
            addr: https,
            tls: true,
            roots: vec![edge_pid, conn_pid],
        };
        wait_get_ok(&t, pki).await?;
        Ok(t)
    }

    /// nginx with `ssl_verify_client on`, `worker_processes 1`, proxying to `upstream`.
    pub(crate) async fn nginx(
        &mut self,
        tools: &Tools,
        pki: &Pki,
        name: &str,
        upstream: SocketAddr,
        keepalive: bool,
    ) -> Result<(Target, usize)> {
        let place = Place::loopback(self.backend);
        self.nginx_at(tools, pki, name, upstream, keepalive, &place)
            .await
    }

    pub(crate) async fn nginx_at(
        &mut self,
        tools: &Tools,
        pki: &Pki,
        name: &str,
        upstream: SocketAddr,
        keepalive: bool,
        place: &Place,
    ) -> Result<(Target, usize)> {
        let dir = self.path(name);
        std::fs::create_dir_all(dir.join("logs"))?;
        let port = free_port()?;
        let root_user = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
        let (pool, conn_default) = if keepalive {
            (
                "    keepalive 512;\n    keepalive_requests 1000000;\n    keepalive_timeout 60s;\n",
                "\"\"",
            )
        } else {
            ("", "close")
        };
        let conf = format!(
            r#"# generated by doorless-bench
{user}worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/logs/error.log warn;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  client_max_body_size 0;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' {conn_default}; }}
  upstream backend {{
    server {upstream};
{pool}  }}
  server {{
    listen {public}:{port} ssl http2;
    server_name _;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_client_certificate {client_ca};
    ssl_verify_client on;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_buffer_size 64k;
      proxy_buffers 8 64k;
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
{extra}    }}
  }}
}}
"#,
            user = if root_user { "user root;\n" } else { "" },
            extra = std::env::var("BENCH_NGINX_EXTRA")
                .map(|e| format!("      {e}\n"))
                .unwrap_or_default(),
            dir = dir.display(),
            public = place.public_ip,
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
            client_ca = pki.client_ca.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let i = self.spawn(
            name,
            place
                .edge_cmd(&tools.nginx)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("logs/error.log"))
                .arg("-c")
                .arg(&conf_path),
        )?;
        let t = Target {
            kind: Kind::Nginx,
            addr: SocketAddr::new(place.public_ip, port),
            tls: true,
            roots: vec![self.procs[i].pid()],
        };
        let start = Instant::now();
        while TcpStream::connect(t.addr).await.is_err() {
            self.procs[i].check_alive()?;
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "{name} did not listen"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((t, i))
    }

    /// rathole server + client (TCP transport) exposing the backend; returns the service
    /// address and the two pids.
    pub(crate) async fn rathole(
        &mut self,
        tools: &Tools,
        name: &str,
        noise: bool,
    ) -> Result<(SocketAddr, Vec<u32>)> {
        let place = Place::loopback(self.backend);
        self.rathole_at(tools, name, noise, &place).await
    }

    pub(crate) async fn rathole_at(
        &mut self,
        tools: &Tools,
        name: &str,
        noise: bool,
        place: &Place,
    ) -> Result<(SocketAddr, Vec<u32>)> {
        let tun = place.tunnel_ip;
        let control = free_port()?;
        let service = free_port()?;
        let (server_transport, client_transport) = if noise {
            // `rathole --genkey`: "Private Key:\n<b64>\n\nPublic Key:\n<b64>".
            let out = Command::new(&tools.rathole).arg("--genkey").output()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let keys: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.ends_with(':'))
                .collect();
            let [private, public] = keys[..] else {
                bail!("rathole --genkey printed {text:?}");
            };
            (
                format!(
                    "[server.transport]\ntype = \"noise\"\n[server.transport.noise]\n\
                     local_private_key = \"{private}\"\n"
                ),
                format!(
                    "[client.transport]\ntype = \"noise\"\n[client.transport.noise]\n\
                     remote_public_key = \"{public}\"\n"
                ),
            )
        } else {
            (String::new(), String::new())
        };
        let server = format!(
            "[server]\nbind_addr = \"{tun}:{control}\"\ndefault_token = \"doorless-bench\"\n\
             [server.services.ha]\nbind_addr = \"{tun}:{service}\"\n{server_transport}"
        );
        let client = format!(
            "[client]\nremote_addr = \"{tun}:{control}\"\ndefault_token = \"doorless-bench\"\n\
             [client.services.ha]\nlocal_addr = \"{}\"\n{client_transport}",
            place.backend_home
        );
        let sp = self.path(&format!("{name}-server.toml"));
        let cp = self.path(&format!("{name}-client.toml"));
        std::fs::write(&sp, server)?;
        std::fs::write(&cp, client)?;
        let s = self.spawn(
            &format!("{name}-server"),
            place.edge_cmd(&tools.rathole).arg("--server").arg(&sp),
        )?;
        let s_pid = self.procs[s].pid();
        // Let the server bind before the client dials (the client retries anyway).
        let start = Instant::now();
        while TcpStream::connect((tun, control)).await.is_err() {
            self.procs[s].check_alive()?;
            ensure!(start.elapsed() < Duration::from_secs(10), "rathole server");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = self.spawn(
            &format!("{name}-client"),
            place.home_cmd(&tools.rathole).arg("--client").arg(&cp),
        )?;
        let c_pid = self.procs[c].pid();
        let addr = SocketAddr::new(tun, service);
        // Ready when a request goes through.
        let probe = Target {
            kind: Kind::Rathole,
            addr,
            tls: false,
            roots: vec![],
        };
        let start = Instant::now();
        loop {
            if let Ok(Ok(200)) =
                tokio::time::timeout(Duration::from_secs(2), get_status(&probe, None, "/s")).await
            {
                break;
            }
            self.procs[s].check_alive()?;
            self.procs[c].check_alive()?;
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "rathole {name} never forwarded a request"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok((addr, vec![s_pid, c_pid]))
    }
}

async fn admin_status(admin: SocketAddr) -> Result<Value> {
    let mut s = TcpStream::connect(admin).await?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    // The body may be chunked; take the JSON object inside.
    let start = body.find('{').unwrap_or(0);
    let end = body.rfind('}').map_or(body.len(), |e| e + 1);
    Ok(serde_json::from_str(&body[start..end])?)
}

pub(crate) async fn wait_get_ok(t: &Target, pki: &Pki) -> Result<()> {
    let start = Instant::now();
    loop {
        let r =
            tokio::time::timeout(Duration::from_secs(3), get_status(t, Some(&pki.tls), "/s")).await;
        match r {
            Ok(Ok(200)) => return Ok(()),
            other => {
                if start.elapsed() > Duration::from_secs(15) {
                    bail!("{}: GET /s never answered 200: {other:?}", t.kind.title());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Extra environment for the doorless processes only (A/B experiments without a rebuild):
/// `KEY=VALUE` pairs separated by spaces in `var`: `BENCH_DOORLESS_ENV` (edge and connector),
/// `BENCH_EDGE_ENV`, `BENCH_CONNECTOR_ENV`; e.g. `BENCH_EDGE_ENV=TOKIO_WORKER_THREADS=1`.
fn doorless_env(var: &str) -> Vec<(String, String)> {
    std::env::var(var)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}
