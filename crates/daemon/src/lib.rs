//! Process glue shared by `doorless-edge` and `doorless-connector`.
//!
//! Everything here is about running as a service, nothing about the tunnel: logging setup,
//! shutdown signals, the `--ready-file` and systemd's readiness notification ([`notify`]), the
//! loopback admin listener, the shape of configuration errors (exit code 78, naming the key),
//! and how an error chain is printed. Each binary's `config`, `admin` and `main` modules use it
//! so the two behave alike.

pub mod notify;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use figment::providers::Env;
use http::{Response, StatusCode, header};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Exit code for bad configuration: `EX_CONFIG` from BSD's sysexits.h. The systemd units say
/// `RestartPreventExitStatus=78`, so a bad file is reported once instead of restarted every
/// few seconds.
pub const EXIT_CONFIG: u8 = 78;

/// Content type of `/metrics`.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `[log]` of either binary.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `RUST_LOG`-style filter; `RUST_LOG` itself wins when set.
    pub filter: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("`{other}`: expected `text` or `json`")),
        }
    }
}

/// A configuration problem; the binaries exit with [`EXIT_CONFIG`] on it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be parsed (the message names key and source).
    #[error("{0}")]
    Parse(String),
    /// A value parsed but is not acceptable.
    #[error("{origin}: key `{key}`: {problem}")]
    Invalid {
        /// Where the value came from (file name or "environment").
        origin: String,
        /// The offending key, dotted.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

impl ConfigError {
    /// Every error figment found, joined.
    pub fn parse(error: figment::Error) -> Self {
        let messages: Vec<String> = error.into_iter().map(|e| e.to_string()).collect();
        Self::Parse(messages.join("; "))
    }

    /// An invalid value at `key`.
    pub fn invalid(origin: &str, key: &str, problem: impl Into<String>) -> Self {
        Self::Invalid {
            origin: origin.to_owned(),
            key: key.to_owned(),
            problem: problem.into(),
        }
    }
}

/// `DOORLESS_*` variables for the given top-level keys only (nested keys joined with `__`).
/// Limiting the keys keeps a variable meant for the other binary from breaking this one.
pub fn env(keys: &'static [&'static str]) -> Env {
    Env::prefixed("DOORLESS_").split("__").filter(move |key| {
        // figment hands the filter the raw (upper-case) name; compare without case.
        let lower = key.as_str().to_ascii_lowercase();
        keys.iter().any(|k| {
            lower == *k
                || lower.starts_with(&format!("{k}."))
                || lower.starts_with(&format!("{k}__"))
        })
    })
}

/// How many formatted log lines may wait for the writer thread. When it is full (stderr
/// cannot keep up), logging waits: lines are never dropped, memory stays bounded (a few MB).
const LOG_QUEUE_LINES: usize = 16 * 1024;

/// Keeps the log writer thread alive; dropping it writes out what is queued. Hold it until
/// the process is done logging.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard {
    _worker: tracing_appender::non_blocking::WorkerGuard,
}

/// Installs the global tracing subscriber, writing to stderr from a dedicated thread.
///
/// Formatting happens on the thread that logs; the write does not: lines go through a bounded
/// queue to a writer thread that writes whatever has queued up in one `write` (through a
/// `BufWriter`). With one access line per request, a write syscall per line on the request
/// path cost the edge about 40% of its small-request throughput (measured with
/// `bench/run.sh`, see docs/benchmarks.md).
pub fn init_logging(format: LogFormat, filter: &str) -> LogGuard {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(filter));
    let (writer, worker) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .lossy(false)
        .thread_name("doorless-log")
        .finish(std::io::BufWriter::new(std::io::stderr()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(use_colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .with_writer(writer);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.compact().init(),
    }
    LogGuard { _worker: worker }
}

/// Colour (ANSI escapes) in text logs only when stderr is a terminal: journald, `docker logs`
/// and files get plain text. A non-empty `NO_COLOR` turns it off on a terminal too
/// (<https://no-color.org>).
fn use_colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// An error and its causes on one line, `outer: cause: root`, like anyhow's `{:#}`, but a
/// cause whose text the line already carries is not repeated. Error types that put their
/// source into their own message (`"{path}: {source}"`, with `source` also the error's
/// source) otherwise print the OS error twice: `x: No such file (os error 2): No such file
/// (os error 2)`.
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.is_empty() {
            line = text;
        } else if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line
}

/// Resolves on SIGTERM or SIGINT (or never, if the handlers cannot be installed).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The environment variable that sets the number of runtime worker threads (tokio's own).
pub const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// The runtime each daemon runs on: tokio's current-thread scheduler (one thread runs every
/// task and the I/O and timer drivers), or the multi-threaded one when `TOKIO_WORKER_THREADS`
/// asks for more than one worker; all drivers enabled. Each binary adds its own hooks and
/// builds it.
///
/// Why not the multi-threaded scheduler with one worker (the default until 2026-12-02): on
/// loopback, alternating runs of the same code on each, the current-thread one served 64
/// concurrent small requests 1.14–1.41× nginx+rathole instead of 0.64–0.93×, at 39–60 µs of
/// edge + connector CPU per request instead of 69–84 (docs/benchmarks.md). One worker of the
/// multi-threaded scheduler still pays for what only several need: the shared run queues,
/// the idle-worker bookkeeping, the driver lock.
///
/// Why one: every request crosses several tasks in each process (the HTTP connection, QUIC's
/// endpoint and connection drivers, the upstream connection), and with a second worker each
/// hand-off also wakes the idle worker to steal the task (a futex wake, a context switch, a
/// cache-cold core) and parks it again. Measured on loopback at one connection (see
/// docs/benchmarks.md), one worker per process cut edge + connector CPU per small request from
/// about 190 µs to about 105 µs. One worker still moves well over 1 Gbit/s through either
/// side, far beyond a home uplink or a small VPS port; an operator with more load sets
/// `TOKIO_WORKER_THREADS` (e.g. to the number of cores).
pub fn runtime_builder() -> tokio::runtime::Builder {
    // Read here, not by tokio (which panics on an unusable value): more than one worker
    // selects the multi-threaded scheduler; anything else is the default.
    let from_env = std::env::var(WORKER_THREADS_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 1);
    let mut builder = match from_env {
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_current_thread(),
    };
    builder.enable_all();
    builder
}

/// A token cancelled by SIGTERM or SIGINT (which also tells systemd `STOPPING=1`).
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        notify::stopping();
        cancel.cancel();
    });
    token
}

/// Writes the ready file atomically (temp file + rename): readers never see half of it.
pub fn write_ready_file(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, value.to_string())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// An admin answer.
pub type AdminResponse = Response<Full<Bytes>>;

/// Routes an admin request path to its answer.
pub type AdminRoutes = Arc<dyn Fn(&str) -> AdminResponse + Send + Sync>;

/// Serves the admin listener (HTTP/1.1, GET by path) until `shutdown`.
pub async fn serve_admin(listener: TcpListener, routes: AdminRoutes, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _)) = accepted else { continue };
        let routes = routes.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let response = routes(req.uri().path());
                async move { Ok::<_, std::convert::Infallible>(response) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(tcp), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

/// A JSON answer.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> AdminResponse {
    with_type(status, Bytes::from(body.to_string()), "application/json")
}

/// The `/metrics` answer.
pub fn metrics_response(text: String) -> AdminResponse {
    with_type(StatusCode::OK, Bytes::from(text), OPENMETRICS)
}

/// `404 {"error": "not found"}`.
pub fn not_found() -> AdminResponse {
    json_response(
        StatusCode::NOT_FOUND,
        &serde_json::json!({"error": "not found"}),
    )
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> AdminResponse {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

/// Registers `build_info{version}` = 1, the family both binaries export first.
pub fn register_build_info(
    registry: &mut prometheus_client::registry::Registry,
    version: &'static str,
) {
    use prometheus_client::metrics::{family::Family, gauge::Gauge};
    let build: Family<VersionLabel, Gauge> = Family::default();
    build.get_or_create(&VersionLabel { version }).set(1);
    registry.register("build_info", "Build version", build);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_worker_unless_the_environment_asks_for_more() {
        let runtime = runtime_builder().build().unwrap();
        let workers = runtime.metrics().num_workers();
        let flavor = runtime.handle().runtime_flavor();
        let asked = std::env::var(WORKER_THREADS_ENV)
            .ok()
            .and_then(|n| n.trim().parse::<usize>().ok())
            .filter(|&n| n > 1);
        match asked {
            Some(n) => {
                assert_eq!(workers, n);
                assert_eq!(flavor, tokio::runtime::RuntimeFlavor::MultiThread);
            }
            None => {
                assert_eq!(workers, 1);
                assert_eq!(flavor, tokio::runtime::RuntimeFlavor::CurrentThread);
            }
        }
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(use_colour(true, None));
        assert!(
            use_colour(true, Some(OsStr::new(""))),
            "an empty NO_COLOR is unset"
        );
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None), "journald, docker logs, files");
    }

    /// Like pki's and acme's I/O errors: the message names the path and the OS error, and the
    /// OS error is also the source.
    #[derive(Debug, thiserror::Error)]
    #[error("{}: {source}", path)]
    struct PathError {
        path: String,
        source: std::io::Error,
    }

    #[test]
    fn the_os_error_is_printed_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let os = io.to_string();
        let error = anyhow::Error::new(PathError {
            path: "/etc/doorless/edge.toml".into(),
            source: io,
        })
        .context("loading the configuration");
        // anyhow's own chain repeats it...
        assert_eq!(format!("{error:#}").matches(&os).count(), 2);
        // ...this does not, and keeps every distinct part.
        let line = error_chain(&error);
        assert_eq!(line.matches(&os).count(), 1, "{line}");
        assert_eq!(
            line,
            format!("loading the configuration: /etc/doorless/edge.toml: {os}")
        );
    }

    #[test]
    fn distinct_causes_are_all_kept() {
        let error = anyhow::anyhow!("root cause")
            .context("middle")
            .context("outer");
        assert_eq!(error_chain(&error), "outer: middle: root cause");
    }
}
