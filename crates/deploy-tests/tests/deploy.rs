//! Checks every file under `deploy/` (plus `repository.yaml` and the setup guides): the Home
//! Assistant add-on against the add-on linter's rules, the systemd units, the container files,
//! the Prometheus configuration and alert rules, and the Grafana dashboard.
//!
//! Real tools are used where they exist: `promtool` (check config, check rules, test rules, and
//! the dashboard's queries), `systemd-analyze` (verify, security), `systemd-sysusers`,
//! `shellcheck`, `bash` + `jq` (the add-on's run script, feeding the real connector binary).
//! A missing tool is installed with apt-get only when running as root with `CI=true`;
//! otherwise the test says loudly what it skipped, and still runs every structural check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use connector::config::{Config, RawConfig};
use figment::Figment;
use figment::providers::{Format as _, Serialized, Toml};
use serde_json::{Value, json};

const ADDON: &str = "deploy/ha-addon/doorless-connector";

// ---------------------------------------------------------------------------------------------
// Helpers

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn path(rel: &str) -> PathBuf {
    root().join(rel)
}

fn read(rel: &str) -> String {
    let p = path(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn yaml(rel: &str) -> Value {
    serde_norway::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: not valid YAML: {e}"))
}

fn obj<'a>(v: &'a Value, what: &str) -> &'a serde_json::Map<String, Value> {
    v.as_object()
        .unwrap_or_else(|| panic!("{what}: expected a mapping, got {v}"))
}

fn s<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Finds `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// apt-get must not run twice at once (tests run in parallel threads).
static APT: Mutex<()> = Mutex::new(());

/// Returns `tool` from PATH. If it is missing, installs the Debian package `package` when
/// running as root with CI=true; otherwise prints a visible notice and returns None.
fn ensure_tool(tool: &str, package: &str) -> Option<PathBuf> {
    if let Some(p) = which(tool) {
        return Some(p);
    }
    let _guard = APT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = which(tool) {
        return Some(p);
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if is_root && ci {
        eprintln!("deploy tests: `{tool}` missing; installing Debian package `{package}`");
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends {package}"
            ))
            .stdin(Stdio::null())
            .status();
        if let Some(p) = which(tool) {
            return Some(p);
        }
        panic!("CI: installing `{package}` for `{tool}` failed ({status:?})");
    }
    notice(&format!(
        "SKIPPED the `{tool}` checks: `{tool}` is not installed (Debian package `{package}`; \
         installed automatically only as root with CI=true). The structural checks still ran."
    ));
    None
}

/// Writes to the real stderr, past the test harness's capture of `eprintln!`, so a skipped
/// check shows in a plain `cargo test` run.
fn notice(text: &str) {
    let _ = writeln!(std::io::stderr(), "\n*** deploy tests: {text} ***\n");
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn must_succeed(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        output_text(&out)
    );
    output_text(&out)
}

/// All files below `dir` (relative to the repository root), skipping `target`, `.git` and
/// `dist` (deploy/release/build.sh's output, git-ignored).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let p = entry.path();
        let name = entry.file_name();
        let ty = entry.file_type().unwrap();
        if ty.is_dir() {
            if name != "target" && name != ".git" && name != "dist" {
                walk(&p, out);
            }
        } else {
            out.push(p);
        }
    }
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap().display().to_string()
}

// ---------------------------------------------------------------------------------------------
// docs/metrics.md and docs/config.md

#[derive(Debug)]
struct Family {
    kind: String,
    labels: BTreeSet<String>,
    /// The whole table row: documented label values appear in it as `value`.
    row: String,
}

/// The metric families documented in docs/metrics.md, from its tables.
fn documented_families() -> BTreeMap<String, Family> {
    let mut families = BTreeMap::new();
    for line in read("docs/metrics.md").lines() {
        let line = line.trim();
        if !line.starts_with("| `doorless_") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        assert!(cells.len() >= 4, "docs/metrics.md: short row: {line}");
        let name = cells[0].trim_matches('`').to_owned();
        let kind = cells[1]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        families.insert(
            name,
            Family {
                kind,
                labels: top_level_backticked(cells[2]),
                row: line.to_owned(),
            },
        );
    }
    assert!(
        families.len() > 20,
        "docs/metrics.md: found only {} families",
        families.len()
    );
    families
}

/// `site`, `result` (`ok`, `denied`) → {site, result}: backticked words outside parentheses.
fn top_level_backticked(cell: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut depth = 0i32;
    let mut current: Option<String> = None;
    for c in cell.chars() {
        match (c, current.as_mut()) {
            ('`', None) => current = Some(String::new()),
            ('`', Some(_)) => {
                let word = current.take().unwrap_or_default();
                if depth == 0 {
                    out.insert(word);
                }
            }
            (c, Some(word)) => word.push(c),
            ('(', None) => depth += 1,
            (')', None) => depth -= 1,
            _ => {}
        }
    }
    out
}

/// Keys of both config tables in docs/config.md (`listen.admin`, `token`, ...).
fn documented_config_keys() -> BTreeSet<String> {
    read("docs/config.md")
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_owned)
        .collect()
}

/// `DOORLESS_LISTEN__ADMIN` → `listen.admin`.
fn env_to_key(var: &str) -> Option<String> {
    var.strip_prefix("DOORLESS_")
        .map(|k| k.to_ascii_lowercase().replace("__", "."))
}

fn assert_env_documented(vars: &[String], origin: &str) {
    let keys = documented_config_keys();
    for var in vars {
        let key = env_to_key(var).unwrap_or_else(|| panic!("{origin}: {var} is not DOORLESS_*"));
        assert!(
            keys.contains(&key),
            "{origin}: {var} sets `{key}`, which docs/config.md does not document"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A small PromQL scanner: enough to find metric selectors, their matchers and grouping labels.

#[derive(Debug, Clone)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

#[derive(Debug, Default)]
struct Scan {
    selectors: Vec<Selector>,
    grouping: Vec<String>,
}

const AGGREGATORS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
const KEYWORDS: &[&str] = &[
    "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan", "start", "end",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

fn scan_promql(expr: &str) -> Scan {
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    let mut scan = Scan::default();
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    let ident = |i: &mut usize| -> String {
        let start = *i;
        while *i < chars.len()
            && (chars[*i].is_ascii_alphanumeric() || matches!(chars[*i], '_' | ':'))
        {
            *i += 1;
        }
        chars[start..*i].iter().collect()
    };
    let string = |i: &mut usize| -> String {
        let quote = chars[*i];
        *i += 1;
        let mut out = String::new();
        while *i < chars.len() && chars[*i] != quote {
            if chars[*i] == '\\' && quote != '`' {
                *i += 1;
            }
            if *i < chars.len() {
                out.push(chars[*i]);
            }
            *i += 1;
        }
        *i += 1;
        out
    };
    let matchers = |i: &mut usize| -> Vec<(String, String, String)> {
        // at '{'
        *i += 1;
        let mut out = Vec::new();
        loop {
            skip_ws(i);
            if *i >= chars.len() {
                panic!("unterminated label matcher in `{expr}`");
            }
            if chars[*i] == '}' {
                *i += 1;
                return out;
            }
            if chars[*i] == ',' {
                *i += 1;
                continue;
            }
            let label = ident(i);
            assert!(!label.is_empty(), "bad label matcher in `{expr}` at {i}");
            skip_ws(i);
            let mut op = String::new();
            while *i < chars.len() && matches!(chars[*i], '=' | '!' | '~') {
                op.push(chars[*i]);
                *i += 1;
            }
            assert!(
                ["=", "!=", "=~", "!~"].contains(&op.as_str()),
                "bad matcher operator `{op}` in `{expr}`"
            );
            skip_ws(i);
            assert!(
                *i < chars.len() && matches!(chars[*i], '"' | '\'' | '`'),
                "matcher value must be a string in `{expr}`"
            );
            let value = string(i);
            out.push((label, op, value));
        }
    };
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if matches!(c, '"' | '\'' | '`') {
            string(&mut i);
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            // A selector without a name, e.g. {__name__="x"}: not used in doorless files.
            panic!("nameless selector in `{expr}`");
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c == '$' {
            i += 1;
            ident(&mut i);
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let word = ident(&mut i);
            let mut j = i;
            skip_ws(&mut j);
            let next = chars.get(j).copied();
            if GROUPING.contains(&word.as_str()) {
                if next == Some('(') {
                    i = j + 1;
                    while i < chars.len() && chars[i] != ')' {
                        let c = chars[i];
                        if c.is_ascii_alphabetic() || c == '_' {
                            scan.grouping.push(ident(&mut i));
                        } else {
                            i += 1;
                        }
                    }
                    i += 1;
                }
            } else if AGGREGATORS.contains(&word.as_str()) || KEYWORDS.contains(&word.as_str()) {
            } else if next == Some('(') {
                // a function call
            } else {
                let matchers = if next == Some('{') {
                    i = j;
                    matchers(&mut i)
                } else {
                    Vec::new()
                };
                scan.selectors.push(Selector {
                    name: word,
                    matchers,
                });
            }
        } else {
            i += 1;
        }
    }
    scan
}

/// Every metric used in `expr` is documented, with documented labels and label values.
fn check_promql(expr: &str, origin: &str, families: &BTreeMap<String, Family>) -> Vec<String> {
    let scan = scan_promql(expr);
    assert!(
        !scan.selectors.is_empty(),
        "{origin}: no metric found in `{expr}`"
    );
    let mut allowed_grouping: BTreeSet<String> = ["job", "instance", "le"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut names = Vec::new();
    for sel in &scan.selectors {
        let family = if sel.name == "up" {
            None
        } else if let Some(f) = families.get(&sel.name) {
            Some((f, false))
        } else {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| sel.name.strip_suffix(suffix).map(|b| (b, *suffix)));
            match base.and_then(|(b, suffix)| families.get(b).map(|f| (f, suffix))) {
                Some((f, suffix)) if f.kind == "histogram" => Some((f, suffix == "_bucket")),
                _ => panic!(
                    "{origin}: metric `{}` in `{expr}` is not documented in docs/metrics.md",
                    sel.name
                ),
            }
        };
        names.push(sel.name.clone());
        let mut labels: BTreeSet<String> = ["job", "instance"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        if let Some((f, bucket)) = family {
            labels.extend(f.labels.iter().cloned());
            if bucket {
                labels.insert("le".into());
            }
        }
        for (label, op, value) in &sel.matchers {
            assert!(
                labels.contains(label),
                "{origin}: `{}` has no documented label `{label}` (documented: {labels:?}) in `{expr}`",
                sel.name
            );
            let literal = (op == "=" || op == "!=") && !value.is_empty() && !value.contains('$');
            if let (true, Some((f, _))) = (literal, family) {
                // Labels with values from configuration (site names, slot numbers, versions)
                // are free; the others have documented value sets.
                if !["job", "instance", "le", "site", "connection", "version"]
                    .contains(&label.as_str())
                {
                    assert!(
                        f.row.contains(&format!("`{value}`")),
                        "{origin}: value `{value}` of label `{label}` of `{}` is not documented in docs/metrics.md",
                        sel.name
                    );
                }
            }
        }
        allowed_grouping.extend(labels);
    }
    for label in &scan.grouping {
        assert!(
            allowed_grouping.contains(label),
            "{origin}: grouping label `{label}` is not a label of any metric in `{expr}`"
        );
    }
    names
}

#[test]
fn promql_scanner_finds_names_and_rejects_unknown_ones() {
    let families = documented_families();
    let names = check_promql(
        r#"histogram_quantile(0.99, sum by (le, site) (rate(doorless_edge_request_duration_seconds_bucket{site=~"$site"}[5m]))) > 1e3 or on (instance) up{job="x"} == 0"#,
        "self-test",
        &families,
    );
    assert_eq!(
        names,
        ["doorless_edge_request_duration_seconds_bucket", "up"]
    );
    for bad in [
        "doorless_edge_request_total",
        r#"doorless_edge_tls_handshakes_total{result="refused"}"#,
        r#"doorless_edge_tls_handshakes_total{ip="1.2.3.4"}"#,
        "sum by (path) (doorless_edge_requests_total)",
        "doorless_edge_connectors_bucket",
    ] {
        let result = std::panic::catch_unwind(|| check_promql(bad, "self-test", &families));
        assert!(result.is_err(), "`{bad}` must be refused");
    }
}

// ---------------------------------------------------------------------------------------------
// Home Assistant add-on

/// config.yaml keys the add-on linter knows (frenck/action-addon-linter `config.schema.json`,
/// which has `additionalProperties: false`), with their defaults where the schema has one. The
/// linter rejects a key set to its default: "should be removed, it uses a default value".
fn linter_keys() -> BTreeMap<&'static str, Option<Value>> {
    let mut keys: BTreeMap<&'static str, Option<Value>> = BTreeMap::new();
    for (key, default) in [
        ("advanced", json!(false)),
        ("apparmor", json!(true)),
        ("audio", json!(false)),
        ("auth_api", json!(false)),
        ("auto_uart", json!(false)),
        ("backup", json!("hot")),
        ("boot", json!("auto")),
        ("devicetree", json!(false)),
        ("docker_api", json!(false)),
        ("full_access", json!(false)),
        ("gpio", json!(false)),
        ("hassio_api", json!(false)),
        ("hassio_role", json!("default")),
        ("homeassistant", json!(false)),
        ("homeassistant_api", json!(false)),
        ("host_dbus", json!(false)),
        ("host_ipc", json!(false)),
        ("host_network", json!(false)),
        ("host_pid", json!(false)),
        ("host_uts", json!(false)),
        ("ingress", json!(false)),
        ("ingress_port", json!(8099)),
        ("ingress_stream", json!(false)),
        ("init", json!(true)),
        ("journald", json!(false)),
        ("kernel_modules", json!(false)),
        ("legacy", json!(false)),
        ("options", json!({})),
        ("panel_admin", json!(true)),
        ("panel_icon", json!("mdi:puzzle")),
        ("realtime", json!(false)),
        ("schema", json!({})),
        ("stage", json!("stable")),
        ("startup", json!("application")),
        ("stdin", json!(false)),
        ("timeout", json!(10)),
        ("tmpfs", json!(false)),
        ("uart", json!(false)),
        ("udev", json!(false)),
        ("ulimits", json!({})),
        ("usb", json!(false)),
        ("video", json!(false)),
    ] {
        keys.insert(key, Some(default));
    }
    for key in [
        "arch",
        "backup_exclude",
        "backup_pre",
        "backup_post",
        "breaking_versions",
        "codenotary",
        "description",
        "devices",
        "discovery",
        "environment",
        "image",
        "ingress_entry",
        "machine",
        "map",
        "name",
        "panel_title",
        "ports",
        "ports_description",
        "privileged",
        "services",
        "slug",
        "url",
        "version",
        "watchdog",
        "webui",
    ] {
        keys.insert(key, None);
    }
    keys
}

fn addon_config() -> Value {
    yaml(&format!("{ADDON}/config.yaml"))
}

/// Checks `value` against a Supervisor option schema type (`str`, `url`, `list(a|b)`, ...).
fn check_option_type(option: &str, ty: &str, value: &Value) {
    // `null`: a mandatory option without default (the Supervisor will not start the add-on
    // until it is set); only a mandatory type may have it.
    if value.is_null() {
        assert!(
            !ty.ends_with('?'),
            "config.yaml: option `{option}` is optional (`{ty}`) but has no default"
        );
        return;
    }
    let ty = ty.trim_end_matches('?');
    let ok = match ty {
        "str" | "password" | "email" => value.is_string(),
        "bool" => value.is_boolean(),
        "float" => value.is_number(),
        "port" => value.as_u64().is_some_and(|p| (1..=65535).contains(&p)),
        "url" => value
            .as_str()
            .is_some_and(|u| u.starts_with("http://") || u.starts_with("https://")),
        "device" => value.is_string(),
        t if t.starts_with("int") => value.is_i64(),
        t if t.starts_with("match(") => value.is_string(),
        t if t.starts_with("list(") && t.ends_with(')') => {
            let choices: Vec<&str> = t[5..t.len() - 1].split('|').collect();
            value.as_str().is_some_and(|v| choices.contains(&v))
        }
        other => panic!("config.yaml: option `{option}` has an unknown schema type `{other}`"),
    };
    assert!(
        ok,
        "config.yaml: default {value} of option `{option}` does not match its schema `{ty}`"
    );
}

#[test]
fn addon_config_passes_the_linter_rules() {
    let config = addon_config();
    let map = obj(&config, "config.yaml");
    let known = linter_keys();
    for key in ["name", "version", "slug", "description", "arch"] {
        assert!(
            map.contains_key(key),
            "config.yaml: required key `{key}` missing"
        );
    }
    for (key, value) in map {
        let Some(default) = known.get(key.as_str()) else {
            panic!("config.yaml: `{key}` is not a key the add-on linter accepts");
        };
        if let Some(default) = default {
            assert_ne!(
                value, default,
                "config.yaml: `{key}` should be removed, it uses a default value"
            );
        }
    }
    // Types and values.
    for key in ["name", "version", "slug", "description", "url"] {
        assert!(
            !s(&config[key], key).trim().is_empty(),
            "config.yaml: `{key}` is empty"
        );
    }
    let slug = s(&config["slug"], "slug");
    assert!(
        slug.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "config.yaml: slug `{slug}` must be [a-z0-9_]"
    );
    assert_eq!(slug, "doorless_connector");
    let version = s(&config["version"], "version");
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
        "config.yaml: version `{version}` is not X.Y.Z"
    );
    assert_eq!(
        version,
        env!("CARGO_PKG_VERSION"),
        "the add-on version follows the crate version"
    );
    let url = s(&config["url"], "url");
    assert!(url.starts_with("https://"), "config.yaml: url `{url}`");
    let arch: Vec<&str> = config["arch"]
        .as_array()
        .expect("arch is a list")
        .iter()
        .map(|a| s(a, "arch"))
        .collect();
    assert!(!arch.is_empty());
    for a in &arch {
        assert!(
            ["armhf", "armv7", "aarch64", "amd64", "i386"].contains(a),
            "config.yaml: `{a}` is not a valid arch"
        );
        // The linter warns: no longer supported as of Home Assistant 2025.12.
        assert!(
            ["aarch64", "amd64"].contains(a),
            "config.yaml: arch `{a}` is deprecated"
        );
    }
    assert_eq!(config["startup"], "services");
    for (key, allowed) in [
        (
            "startup",
            &["application", "initialize", "once", "services", "system"][..],
        ),
        ("boot", &["auto", "manual", "manual_only"][..]),
        ("stage", &["deprecated", "experimental", "stable"][..]),
    ] {
        if let Some(v) = config.get(key) {
            assert!(allowed.contains(&s(v, key)), "config.yaml: {key}: {v}");
        }
    }
    if let Some(t) = config.get("timeout") {
        assert!(t.is_u64(), "config.yaml: timeout must be an integer");
    }
    // The linter's extra rules.
    assert!(
        config.get("watchdog").is_none(),
        "config.yaml: `watchdog` is obsolete: use the Dockerfile HEALTHCHECK"
    );
    if config.get("ingress") == Some(&json!(true)) {
        assert!(config.get("webui").is_none(), "webui with ingress");
    }
    assert!(config.get("auto_uart").is_none(), "auto_uart is deprecated");
    if let Some(tmpfs) = config.get("tmpfs") {
        assert!(tmpfs.is_boolean(), "tmpfs must be a boolean");
    }
    if config.get("full_access") == Some(&json!(true)) {
        for k in ["devices", "gpio", "uart", "usb"] {
            assert!(config.get(k).is_none(), "full_access with {k}");
        }
    }
    if config.get("backup") == Some(&json!("cold")) {
        assert!(config.get("backup_pre").is_none() && config.get("backup_post").is_none());
    }
    // A dial-out connector exposes nothing and stays off the host network.
    assert!(
        config.get("ports").is_none(),
        "the connector needs no ports"
    );
    assert!(config.get("host_network").is_none());

    // Every option has a schema entry; a schema entry without an option is optional (`?`,
    // absent until the user adds it); defaults match their types.
    let options = obj(&config["options"], "options");
    let schema = obj(&config["schema"], "schema");
    for key in options.keys() {
        assert!(
            schema.contains_key(key),
            "config.yaml: option `{key}` has no schema entry"
        );
    }
    for (key, ty) in schema {
        match options.get(key) {
            Some(default) => check_option_type(key, s(ty, key), default),
            None => assert!(
                s(ty, key).ends_with('?'),
                "config.yaml: `{key}` has no default, so its schema must be optional (`?`)"
            ),
        }
    }
    assert_eq!(
        schema["enrollment_code"], "password",
        "the code (or token) is a secret"
    );
    assert!(
        options["enrollment_code"].is_null(),
        "without a code or token the Supervisor must refuse to start the add-on"
    );
    assert_eq!(schema["upstream"], "url");
    assert_eq!(options["upstream"], "http://homeassistant:8123");
    assert_eq!(schema["log_level"], "list(trace|debug|info|warn|error)");
    // The upstream TLS keys: optional, unset by default (the connector's defaults apply), and
    // `insecure` off.
    assert_eq!(schema["upstream_ca"], "str?");
    assert!(options.get("upstream_ca").is_none());
    let pin = s(&schema["upstream_pin_sha256"], "upstream_pin_sha256");
    assert!(pin.starts_with("match(") && pin.ends_with(")?"), "{pin}");
    assert!(options.get("upstream_pin_sha256").is_none());
    assert_eq!(schema["upstream_tls_insecure"], "bool");
    assert_eq!(options["upstream_tls_insecure"], false);
    // /ssl, where a CA file for `upstream_ca` goes, is mapped read-only (the default).
    let map = config["map"].as_array().expect("config.yaml: map");
    assert!(
        map.iter()
            .any(|m| m["type"] == "ssl" && m.get("read_only").is_none_or(|r| r == true)),
        "config.yaml: map must give /ssl read-only: {map:?}"
    );
}

#[test]
fn addon_translations_cover_every_option() {
    let config = addon_config();
    let translations = yaml(&format!("{ADDON}/translations/en.yaml"));
    let fields = obj(&translations["configuration"], "translations configuration");
    // Every schema key, optional ones included (the UI shows them when added).
    let options = obj(&config["schema"], "schema");
    for key in options.keys() {
        let entry = fields
            .get(key)
            .unwrap_or_else(|| panic!("translations/en.yaml: option `{key}` missing"));
        for part in ["name", "description"] {
            assert!(
                entry[part].as_str().is_some_and(|t| !t.trim().is_empty()),
                "translations/en.yaml: `{key}.{part}` missing"
            );
        }
    }
    for key in fields.keys() {
        assert!(
            options.contains_key(key),
            "translations/en.yaml: `{key}` is not an option"
        );
    }
    // `network:` keys must match `ports`; the add-on has neither.
    assert!(translations.get("network").is_none() || config.get("ports").is_some());
}

struct Png {
    width: u32,
    height: u32,
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Parses the chunk structure of a PNG: signature, IHDR first, CRCs, IDAT, IEND last.
fn parse_png(rel: &str) -> Png {
    let data = std::fs::read(path(rel)).unwrap();
    assert!(
        data.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{rel}: not a PNG (signature)"
    );
    let mut at = 8;
    let mut chunks = Vec::new();
    let mut header = None;
    while at + 12 <= data.len() {
        let len = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let ty = &data[at + 4..at + 8];
        assert!(at + 12 + len <= data.len(), "{rel}: truncated chunk");
        let body = &data[at + 8..at + 8 + len];
        let crc = u32::from_be_bytes(data[at + 8 + len..at + 12 + len].try_into().unwrap());
        assert_eq!(crc32(&data[at + 4..at + 8 + len]), crc, "{rel}: bad CRC");
        if ty == b"IHDR" {
            assert_eq!(len, 13, "{rel}: IHDR length");
            header = Some(Png {
                width: u32::from_be_bytes(body[0..4].try_into().unwrap()),
                height: u32::from_be_bytes(body[4..8].try_into().unwrap()),
            });
            assert!([8, 16].contains(&body[8]), "{rel}: bit depth");
            assert!([2, 6].contains(&body[9]), "{rel}: colour type RGB(A)");
        }
        chunks.push(String::from_utf8_lossy(ty).into_owned());
        at += 12 + len;
    }
    assert_eq!(at, data.len(), "{rel}: trailing bytes");
    assert_eq!(chunks.first().map(String::as_str), Some("IHDR"), "{rel}");
    assert_eq!(chunks.last().map(String::as_str), Some("IEND"), "{rel}");
    assert!(chunks.iter().any(|c| c == "IDAT"), "{rel}: no image data");
    header.unwrap()
}

#[test]
fn addon_has_docs_changelog_and_images() {
    let config = addon_config();
    for file in [
        "DOCS.md",
        "README.md",
        "CHANGELOG.md",
        "run.sh",
        "Dockerfile",
    ] {
        let text = read(&format!("{ADDON}/{file}"));
        assert!(text.len() > 200, "{ADDON}/{file} is (nearly) empty");
    }
    let version = s(&config["version"], "version");
    assert!(
        read(&format!("{ADDON}/CHANGELOG.md")).contains(&format!("## {version}")),
        "CHANGELOG.md has no entry for version {version}"
    );
    let icon = parse_png(&format!("{ADDON}/icon.png"));
    assert_eq!(icon.width, icon.height, "icon.png must be square");
    assert!((96..=256).contains(&icon.width), "icon.png ~128x128");
    let logo = parse_png(&format!("{ADDON}/logo.png"));
    assert!(
        (200..=500).contains(&logo.width) && (60..=200).contains(&logo.height),
        "logo.png ~250x100, got {}x{}",
        logo.width,
        logo.height
    );
    assert!(logo.width > logo.height, "logo.png is landscape");

    // DOCS.md: install steps and the trusted proxy setting, both ways.
    let docs = read(&format!("{ADDON}/DOCS.md"));
    for needle in [
        "Repositories",
        "172.30.33.0/24",
        "Settings › System › Network › HTTP server",
        "use_x_forwarded_for: true",
        "trusted_proxies:",
        "How the add-on is built",
        "Troubleshooting",
    ] {
        assert!(docs.contains(needle), "DOCS.md must mention `{needle}`");
    }
    let options = obj(&config["schema"], "schema");
    for key in options.keys() {
        assert!(
            docs.contains(&format!("`{key}`")),
            "DOCS.md must document option `{key}`"
        );
    }
}

#[test]
fn repository_yaml_points_at_this_repository() {
    let repo = yaml("repository.yaml");
    for key in ["name", "url", "maintainer"] {
        assert!(
            repo[key].as_str().is_some_and(|v| !v.trim().is_empty()),
            "repository.yaml: `{key}` missing"
        );
    }
    let url = s(&repo["url"], "url");
    let config = addon_config();
    assert!(
        s(&config["url"], "url").starts_with(url),
        "config.yaml url must lie inside repository.yaml's url {url}"
    );
}

#[test]
fn no_other_file_is_named_config_yaml() {
    // The Supervisor searches the whole repository for add-on manifests.
    let mut files = Vec::new();
    walk(&root(), &mut files);
    let manifests: Vec<String> = files
        .iter()
        .filter(|p| {
            p.file_name().is_some_and(|n| {
                ["config.yaml", "config.yml", "config.json"].contains(&n.to_str().unwrap_or(""))
            })
        })
        .map(|p| rel(p))
        .collect();
    assert_eq!(
        manifests,
        [format!("{ADDON}/config.yaml")],
        "only the add-on may have a file named config.yaml/yml/json"
    );
}

/// A real enrollment token from a throwaway state directory.
fn real_token(dir: &Path) -> String {
    let state = pki::StateDir::init(&dir.join("state"), &pki::InitOptions::default()).unwrap();
    state
        .add_site("home", &["ha.example.com".to_owned()])
        .unwrap();
    state.issue_connector("home", None).unwrap().encode()
}

#[test]
fn connector_config_accepts_the_addon_options() {
    let tmp = tempfile::tempdir().unwrap();
    let config = addon_config();
    let mut options = config["options"].clone();
    options["enrollment_code"] = json!(real_token(tmp.path()));
    // What run.sh exports for a token, as the config layers see it (DOORLESS_TOKEN → token,
    // DOORLESS_UPSTREAM → upstream, DOORLESS_LOG__FILTER → log.filter).
    let layered = json!({
        "token": options["enrollment_code"],
        "upstream": options["upstream"],
        "upstream_tls_insecure": options["upstream_tls_insecure"],
        "log": { "filter": options["log_level"], "format": "text" },
    });
    let raw: RawConfig = Figment::from(Serialized::defaults(layered))
        .extract()
        .unwrap_or_else(|e| panic!("the add-on's options do not fit RawConfig: {e}"));
    let config = Config::from_raw(raw).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.upstream.to_string(), "http://homeassistant:8123/");
    assert_eq!(config.token.site, "home");
    assert_eq!(config.edges, ["ha.example.com:443"]);
}

/// Runs the add-on's run.sh with `options` as /data/options.json. A `doorless-connector` shim
/// on PATH records the DOORLESS_* environment, then runs the real binary's `check-config`
/// (which loads exactly what `run` would load) instead of `run`.
fn run_addon_script(jq: &Path, options: &Value, tmp: &Path) -> (Output, BTreeMap<String, String>) {
    let bin = tmp.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let shim = bin.join("doorless-connector");
    std::fs::write(
        &shim,
        "#!/bin/sh\n\
         env | grep '^DOORLESS_' > \"$SHIM_ENV_OUT\"\n\
         if [ \"$#\" -ne 1 ] || [ \"$1\" != run ]; then echo \"shim: unexpected arguments: $*\" >&2; exit 99; fi\n\
         exec \"$SHIM_REAL\" check-config\n",
    )
    .unwrap();
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let options_file = tmp.join("options.json");
    std::fs::write(&options_file, options.to_string()).unwrap();
    let env_out = tmp.join("env.out");
    let _ = std::fs::remove_file(&env_out);
    let jq_dir = jq.parent().unwrap();
    let out = run(Command::new("bash")
        .arg(path(&format!("{ADDON}/run.sh")))
        .env_clear()
        .env(
            "PATH",
            format!("{}:{}:/usr/bin:/bin", bin.display(), jq_dir.display()),
        )
        .env("DOORLESS_OPTIONS_FILE", &options_file)
        .env("SHIM_ENV_OUT", &env_out)
        .env("SHIM_REAL", &e2e::binaries().connector));
    let env = std::fs::read_to_string(&env_out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    (out, env)
}

#[test]
fn addon_run_script_feeds_the_real_connector() {
    let Some(jq) = ensure_tool("jq", "jq") else {
        return;
    };
    assert!(which("bash").is_some(), "bash is needed");
    let tmp = tempfile::tempdir().unwrap();
    let config = addon_config();
    let token = real_token(tmp.path());

    // The defaults plus a pasted token (with the line break a terminal adds).
    let mut options = config["options"].clone();
    options["enrollment_code"] = json!(format!("{}\n", token));
    let (out, env) = run_addon_script(&jq, &options, tmp.path());
    let text = output_text(&out);
    assert!(out.status.success(), "run.sh failed:\n{text}");
    assert!(text.contains("ok: site home"), "{text}");
    assert_eq!(env.get("DOORLESS_TOKEN"), Some(&token));
    assert_eq!(
        env.get("DOORLESS_UPSTREAM").map(String::as_str),
        Some("http://homeassistant:8123")
    );
    assert_eq!(
        env.get("DOORLESS_LOG__FILTER").map(String::as_str),
        Some("info")
    );
    let exported: Vec<String> = env
        .keys()
        .filter(|k| *k != "DOORLESS_OPTIONS_FILE")
        .cloned()
        .collect();
    assert_env_documented(&exported, "run.sh");

    // Every log level of the schema becomes a filter the connector accepts.
    let schema = s(&config["schema"]["log_level"], "log_level");
    let levels = schema
        .trim_start_matches("list(")
        .trim_end_matches(')')
        .split('|');
    for level in levels {
        options["log_level"] = json!(level);
        let (out, env) = run_addon_script(&jq, &options, tmp.path());
        assert!(
            out.status.success(),
            "log_level {level}:\n{}",
            output_text(&out)
        );
        let filter = &env["DOORLESS_LOG__FILTER"];
        assert!(filter.contains(level), "{level} → {filter}");
        tracing_subscriber::EnvFilter::try_new(filter)
            .unwrap_or_else(|e| panic!("log_level {level}: filter `{filter}`: {e}"));
    }

    // Another upstream reaches the connector; a bad one is refused by its validation.
    options["log_level"] = json!("info");
    options["upstream"] = json!("http://192.168.1.10:8123");
    let (out, env) = run_addon_script(&jq, &options, tmp.path());
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(env["DOORLESS_UPSTREAM"], "http://192.168.1.10:8123");
    // (https:// is a valid upstream since the connector verifies TLS; a scheme it cannot
    // speak is not.)
    options["upstream"] = json!("ftp://homeassistant:8123");
    let (out, _) = run_addon_script(&jq, &options, tmp.path());
    assert_eq!(out.status.code(), Some(78), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("upstream"),
        "{}",
        output_text(&out)
    );

    // A code (typed with spaces) goes to DOORLESS_ENROLLMENT_CODE with the state in /data;
    // not yet enrolled, `check-config` says that `run` will enroll first.
    options["upstream"] = json!("http://homeassistant:8123");
    options["enrollment_code"] = json!("ha.example.com/1-AAAAA-BBBBB-CCCCC-DDDDD ");
    let (out, env) = run_addon_script(&jq, &options, tmp.path());
    let text = output_text(&out);
    assert_eq!(
        env.get("DOORLESS_ENROLLMENT_CODE").map(String::as_str),
        Some("ha.example.com/1-AAAAA-BBBBB-CCCCC-DDDDD"),
        "{text}"
    );
    assert_eq!(
        env.get("DOORLESS_STATE_DIR").map(String::as_str),
        Some("/data")
    );
    assert!(!env.contains_key("DOORLESS_TOKEN"));
    assert!(text.contains("not enrolled yet"), "{text}");
    let exported: Vec<String> = env
        .keys()
        .filter(|k| *k != "DOORLESS_OPTIONS_FILE")
        .cloned()
        .collect();
    assert_env_documented(&exported, "run.sh");

    // Nothing: a clear message, and the connector is never started.
    options["enrollment_code"] = json!("");
    let (out, env) = run_addon_script(&jq, &options, tmp.path());
    assert!(!out.status.success());
    assert!(
        env.is_empty(),
        "the connector must not start without a code or token"
    );
    let text = output_text(&out);
    assert!(
        text.contains("No enrollment code or token") && text.contains("doorless-edge site add"),
        "{text}"
    );
}

/// The upstream TLS options reach the real connector as its DOORLESS_UPSTREAM_* keys, only
/// when set, and its validation applies (one at a time, only for https://).
#[test]
fn addon_run_script_maps_the_upstream_tls_options() {
    let Some(jq) = ensure_tool("jq", "jq") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let config = addon_config();
    let mut base = config["options"].clone();
    base["enrollment_code"] = json!(real_token(tmp.path()));
    base["upstream"] = json!("https://homeassistant:8123");
    let keys = [
        "DOORLESS_UPSTREAM_CA",
        "DOORLESS_UPSTREAM_PIN_SHA256",
        "DOORLESS_UPSTREAM_TLS_INSECURE",
    ];
    let set = |env: &BTreeMap<String, String>| -> Vec<&str> {
        keys.iter()
            .copied()
            .filter(|k| env.contains_key(*k))
            .collect()
    };

    // Defaults (insecure false, the others absent): none exported, system roots.
    let (out, env) = run_addon_script(&jq, &base, tmp.path());
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(set(&env).is_empty(), "{env:?}");

    // A CA file, as it would sit in /ssl (any CA certificate will do: the edge's server CA
    // from the token's throwaway state directory).
    let ca = tmp.path().join("my-ca.pem");
    std::fs::copy(tmp.path().join("state/server-ca.crt"), &ca).unwrap();
    let mut options = base.clone();
    options["upstream_ca"] = json!(ca.to_str().unwrap());
    let (out, env) = run_addon_script(&jq, &options, tmp.path());
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(set(&env), ["DOORLESS_UPSTREAM_CA"]);
    assert_eq!(env["DOORLESS_UPSTREAM_CA"], ca.to_str().unwrap());

    // A pin, with colons as openssl prints it.
    let pin = ["AB"; 32].join(":");
    let mut options = base.clone();
    options["upstream_pin_sha256"] = json!(pin);
    let (out, env) = run_addon_script(&jq, &options, tmp.path());
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(set(&env), ["DOORLESS_UPSTREAM_PIN_SHA256"]);
    assert_eq!(env["DOORLESS_UPSTREAM_PIN_SHA256"], pin);

    // Insecure.
    let mut options = base.clone();
    options["upstream_tls_insecure"] = json!(true);
    let (out, env) = run_addon_script(&jq, &options, tmp.path());
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(set(&env), ["DOORLESS_UPSTREAM_TLS_INSECURE"]);
    assert_eq!(env["DOORLESS_UPSTREAM_TLS_INSECURE"], "true");
    let exported: Vec<String> = env
        .keys()
        .filter(|k| *k != "DOORLESS_OPTIONS_FILE")
        .cloned()
        .collect();
    assert_env_documented(&exported, "run.sh");

    // Refused by the connector, naming the key: two at once, and one with http://.
    options["upstream_pin_sha256"] = json!(pin);
    let (out, _) = run_addon_script(&jq, &options, tmp.path());
    assert_eq!(out.status.code(), Some(78), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("upstream_tls_insecure"),
        "{}",
        output_text(&out)
    );
    let mut options = base.clone();
    options["upstream"] = json!("http://homeassistant:8123");
    options["upstream_pin_sha256"] = json!(pin);
    let (out, _) = run_addon_script(&jq, &options, tmp.path());
    assert_eq!(out.status.code(), Some(78), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("upstream_pin_sha256"),
        "{}",
        output_text(&out)
    );
    // A bad pin too.
    let mut options = base.clone();
    options["upstream_pin_sha256"] = json!("abcd");
    let (out, _) = run_addon_script(&jq, &options, tmp.path());
    assert_eq!(out.status.code(), Some(78), "{}", output_text(&out));
}

#[test]
fn addon_run_script_passes_shellcheck() {
    let mode = std::fs::metadata(path(&format!("{ADDON}/run.sh")))
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "run.sh must be executable");
    assert!(read(&format!("{ADDON}/run.sh")).starts_with("#!/usr/bin/env bash\n"));
    let Some(shellcheck) = ensure_tool("shellcheck", "shellcheck") else {
        return;
    };
    must_succeed(Command::new(shellcheck).arg(path(&format!("{ADDON}/run.sh"))));
}

// ---------------------------------------------------------------------------------------------
// Dockerfiles

#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

/// Instructions of a Dockerfile: comments dropped, continuation lines joined.
fn parse_dockerfile(rel: &str) -> Vec<Instruction> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read(rel).lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(body) = trimmed.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let text = std::mem::take(&mut current);
        let (keyword, args) = text.split_once(char::is_whitespace).unwrap_or((&text, ""));
        out.push(Instruction {
            keyword: keyword.to_ascii_uppercase(),
            args: args.trim().to_owned(),
        });
    }
    assert!(current.is_empty(), "{rel}: dangling line continuation");
    out
}

fn arg_default(instructions: &[Instruction], name: &str) -> Option<String> {
    instructions
        .iter()
        .filter(|i| i.keyword == "ARG")
        .find_map(|i| {
            i.args
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::to_owned)
        })
}

/// The exec-form command of an instruction (`CMD ["a", "b"]`), after `skip` leading options.
fn exec_form(args: &str, what: &str) -> Vec<String> {
    let json = args.trim();
    let parsed: Vec<String> = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("{what}: use the exec form (a JSON array): {e}: {json}"));
    assert!(!parsed.is_empty(), "{what}: empty command");
    parsed
}

fn healthcheck(instructions: &[Instruction], rel: &str) -> Vec<String> {
    let checks: Vec<&Instruction> = instructions
        .iter()
        .filter(|i| i.keyword == "HEALTHCHECK")
        .collect();
    assert_eq!(checks.len(), 1, "{rel}: exactly one HEALTHCHECK");
    let args = &checks[0].args;
    let (options, cmd) = args
        .split_once("CMD ")
        .unwrap_or_else(|| panic!("{rel}: HEALTHCHECK without CMD"));
    for option in ["--interval=", "--timeout=", "--retries="] {
        assert!(
            options.contains(option),
            "{rel}: HEALTHCHECK {option} missing"
        );
    }
    exec_form(cmd, &format!("{rel} HEALTHCHECK"))
}

/// Stage names, and checks on FROM / COPY that need no Docker: known stages, sources present in
/// the build context, pinned base images, exec-form CMD/ENTRYPOINT.
fn check_dockerfile(rel: &str, context: &Path) -> Vec<Instruction> {
    let instructions = parse_dockerfile(rel);
    let mut stages = Vec::new();
    for i in &instructions {
        match i.keyword.as_str() {
            "FROM" => {
                let words: Vec<&str> = i.args.split_whitespace().collect();
                let image = words[0];
                assert!(
                    image.contains(':') && !image.ends_with(":latest"),
                    "{rel}: pin the base image `{image}`"
                );
                assert!(
                    ["rust:1-bookworm", "debian:bookworm-slim"].contains(&image),
                    "{rel}: unexpected base image `{image}` (build on Debian bookworm: aws-lc-rs on musl needs extra care)"
                );
                if let [_, as_kw, name] = words[..] {
                    assert!(as_kw.eq_ignore_ascii_case("AS"));
                    stages.push(name.to_owned());
                }
            }
            "COPY" | "ADD" => {
                assert_eq!(i.keyword, "COPY", "{rel}: use COPY, not ADD");
                let words: Vec<&str> = i.args.split_whitespace().collect();
                if let Some(from) = words.iter().find_map(|w| w.strip_prefix("--from=")) {
                    assert!(
                        stages.iter().any(|s| s == from),
                        "{rel}: COPY --from={from}: no such stage"
                    );
                    continue;
                }
                let paths: Vec<&&str> = words.iter().filter(|w| !w.starts_with("--")).collect();
                assert!(paths.len() >= 2, "{rel}: COPY needs source and destination");
                for src in &paths[..paths.len() - 1] {
                    assert!(
                        context.join(src).exists(),
                        "{rel}: COPY source `{src}` is not in the build context {}",
                        context.display()
                    );
                }
            }
            "CMD" | "ENTRYPOINT" => {
                exec_form(&i.args, &format!("{rel} {}", i.keyword));
            }
            "RUN" => {
                for w in i.args.split_whitespace() {
                    if let Some(p) = w.strip_prefix("-p").filter(|p| !p.is_empty()) {
                        panic!("{rel}: write `-p {p}`");
                    }
                }
                if let Some((_, rest)) = i.args.split_once("cargo build") {
                    let package = rest
                        .split_whitespace()
                        .skip_while(|w| *w != "-p")
                        .nth(1)
                        .unwrap_or_else(|| panic!("{rel}: cargo build without -p"))
                        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
                    assert!(
                        path(&format!("crates/{package}/Cargo.toml")).exists(),
                        "{rel}: no workspace package `{package}`"
                    );
                    assert!(rest.contains("--release") && rest.contains("--locked"));
                }
            }
            _ => {}
        }
    }
    assert!(
        instructions.iter().filter(|i| i.keyword == "FROM").count() >= 2,
        "{rel}: multi-stage (build, then a slim runtime)"
    );
    instructions
}

/// Runs deploy/release/build.sh with `steps`, its output under `dist`.
fn release_script(dist: &Path, steps: &[&str]) -> String {
    must_succeed(
        Command::new("bash")
            .arg(path("deploy/release/build.sh"))
            .args(steps)
            .env("DIST", dist),
    )
}

#[test]
fn addon_builds_from_its_own_folder_and_has_a_healthcheck() {
    // The Supervisor builds a local add-on with the add-on folder as the whole build context.
    // The release script assembles that folder; everything the Dockerfile copies is inside it,
    // and nothing is downloaded from a hard-coded place.
    let tmp = tempfile::tempdir().unwrap();
    release_script(tmp.path(), &["addon"]);
    let folder = tmp.path().join("addon/doorless-connector");
    let rel = format!("{ADDON}/Dockerfile");
    let instructions = check_dockerfile(&rel, &folder);
    assert_eq!(
        std::fs::read(folder.join("Dockerfile")).unwrap(),
        std::fs::read(path(&rel)).unwrap(),
        "the assembled folder carries the add-on's own Dockerfile"
    );
    let config = addon_config();
    assert_eq!(
        arg_default(&instructions, "BUILD_VERSION").as_deref(),
        config["version"].as_str(),
        "{rel}: the BUILD_VERSION default must equal config.yaml's version"
    );
    assert!(
        !instructions.iter().any(|i| i.args.contains("BUILD_FROM")),
        "{rel}: BUILD_FROM is no longer provided by the Supervisor"
    );
    for i in instructions.iter().filter(|i| i.keyword == "RUN") {
        for word in ["curl", "wget", "http://", "https://", "git clone"] {
            assert!(
                !i.args.contains(word),
                "{rel}: RUN downloads something (`{word}`): build from the folder's source/"
            );
        }
    }
    assert!(
        instructions
            .iter()
            .any(|i| i.keyword == "COPY" && i.args.starts_with("source/")),
        "{rel}: builds from the sources in its own folder"
    );
    let check = healthcheck(&instructions, &rel);
    assert_eq!(check[..2], ["doorless-connector", "health"]);
    assert!(check.iter().any(|a| a.ends_with(":9471/healthz")));
    let cmd = instructions
        .iter()
        .rev()
        .find(|i| i.keyword == "CMD")
        .unwrap();
    assert_eq!(exec_form(&cmd.args, "CMD"), ["/run.sh"]);
    for label in ["io.hass.type", "io.hass.version", "io.hass.arch"] {
        assert!(
            read(&rel).contains(label),
            "{rel}: a pulled image must carry {label}"
        );
    }

    // The assembled manifest: no `image:` (so the Supervisor builds), otherwise the add-on's.
    let assembled: Value =
        serde_norway::from_str(&std::fs::read_to_string(folder.join("config.yaml")).unwrap())
            .unwrap();
    assert!(assembled.get("image").is_none(), "{assembled}");
    let mut without_image = config.clone();
    without_image.as_object_mut().unwrap().remove("image");
    assert_eq!(assembled, without_image);
    for file in ["run.sh", "DOCS.md", "translations/en.yaml", "icon.png"] {
        assert!(folder.join(file).exists(), "assembled folder lacks {file}");
    }
    // source/ is a complete workspace: every member, a lock file that still fits (offline:
    // this resolves against what the build already fetched, and fails if anything is missing).
    let source = folder.join("source");
    for member in workspace_members() {
        assert!(
            source.join(&member).join("Cargo.toml").exists(),
            "source/ lacks workspace member {member}"
        );
    }
    assert!(
        !source.join("target").exists(),
        "source/ must not carry a target dir"
    );
    must_succeed(
        Command::new(env!("CARGO"))
            .args([
                "tree",
                "--locked",
                "--offline",
                "-e",
                "normal",
                "-p",
                "connector",
            ])
            .current_dir(&source)
            .env_remove("CARGO_TARGET_DIR"),
    );
}

#[test]
fn release_artifacts_have_one_version_and_one_image_owner() {
    let config = addon_config();
    let tmp = tempfile::tempdir().unwrap();
    let version = release_script(tmp.path(), &["version"]);
    assert_eq!(version.trim(), env!("CARGO_PKG_VERSION"));
    assert_eq!(config["version"], env!("CARGO_PKG_VERSION"));

    // The image owner is named once, in config.yaml's `image:`; the release script derives
    // every image from it, and repository.yaml's url names the same GitHub account.
    let image = s(&config["image"], "image");
    let prefix = release_script(tmp.path(), &["prefix"]);
    assert_eq!(
        format!("{}/doorless-connector-addon-{{arch}}", prefix.trim()),
        image
    );
    let owner = prefix.trim().strip_prefix("ghcr.io/").unwrap();
    assert_eq!(
        owner,
        owner.to_ascii_lowercase(),
        "registry names are lower-case"
    );
    let repo = yaml("repository.yaml");
    let url = s(&repo["url"], "url");
    let repo_owner = url
        .strip_prefix("https://github.com/")
        .and_then(|rest| rest.split('/').next())
        .unwrap();
    assert_eq!(repo_owner.to_ascii_lowercase(), owner);

    // The workflow calls the script for every build step and covers the add-on's arches.
    let workflow = yaml(".github/workflows/release.yml");
    let text = read(".github/workflows/release.yml");
    for step in ["binaries", "addon images", "manifest"] {
        assert!(
            text.contains(&format!("deploy/release/build.sh {step}")),
            "release.yml: runs `build.sh {step}`"
        );
    }
    assert!(
        !text.contains("cargo build"),
        "release.yml: builds only through build.sh"
    );
    let arches: BTreeSet<&str> = workflow["jobs"]["binaries"]["strategy"]["matrix"]["include"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| s(&e["arch"], "arch"))
        .collect();
    let addon_arches: BTreeSet<&str> = config["arch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| s(a, "arch"))
        .collect();
    assert_eq!(arches, addon_arches);
    assert_eq!(
        workflow["jobs"]["images"]["strategy"],
        workflow["jobs"]["binaries"]["strategy"]
    );
}

#[test]
fn release_script_refuses_a_version_mismatch() {
    // A copy of the script and the two files it reads, with the add-on a version behind.
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path();
    std::fs::create_dir_all(copy.join("deploy/release")).unwrap();
    std::fs::create_dir_all(copy.join(ADDON)).unwrap();
    std::fs::copy(
        path("deploy/release/build.sh"),
        copy.join("deploy/release/build.sh"),
    )
    .unwrap();
    std::fs::copy(path("Cargo.toml"), copy.join("Cargo.toml")).unwrap();
    let manifest = read(&format!("{ADDON}/config.yaml")).replace(
        &format!("version: \"{}\"", env!("CARGO_PKG_VERSION")),
        "version: \"0.0.1\"",
    );
    std::fs::write(copy.join(ADDON).join("config.yaml"), manifest).unwrap();
    let out = run(Command::new("bash")
        .arg(copy.join("deploy/release/build.sh"))
        .arg("version"));
    assert!(!out.status.success());
    let text = output_text(&out);
    assert!(
        text.contains("0.0.1") && text.contains(env!("CARGO_PKG_VERSION")),
        "{text}"
    );
}

/// `[workspace] members` of the root Cargo.toml.
fn workspace_members() -> Vec<String> {
    let manifest: Value = Figment::from(Toml::file_exact(path("Cargo.toml")))
        .extract()
        .unwrap();
    let members: Vec<String> = manifest["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .map(|m| s(m, "member").to_owned())
        .collect();
    assert!(members.iter().any(|m| m == "crates/connector"));
    members
}

#[test]
fn container_dockerfiles_build_from_the_workspace() {
    for (file, binary, package) in [
        ("Dockerfile.edge", "doorless-edge", "edge"),
        ("Dockerfile.connector", "doorless-connector", "connector"),
    ] {
        let rel = format!("deploy/container/{file}");
        let instructions = check_dockerfile(&rel, &root());
        let text = read(&rel);
        assert!(
            text.contains(&format!("-p {package}")),
            "{rel}: builds {package}"
        );
        assert!(
            text.contains(&format!("target/release/{binary}")),
            "{rel}: installs {binary}"
        );
        let entry = instructions
            .iter()
            .find(|i| i.keyword == "ENTRYPOINT")
            .unwrap_or_else(|| panic!("{rel}: ENTRYPOINT"));
        assert_eq!(exec_form(&entry.args, "ENTRYPOINT"), [binary]);
        // The runtime stage runs unprivileged.
        let last_from = instructions
            .iter()
            .rposition(|i| i.keyword == "FROM")
            .unwrap();
        let user = instructions[last_from..]
            .iter()
            .rev()
            .find(|i| i.keyword == "USER")
            .unwrap_or_else(|| panic!("{rel}: USER in the runtime stage"));
        assert_ne!(user.args, "root");
        healthcheck(&instructions, &rel);
        let env: Vec<String> = instructions
            .iter()
            .filter(|i| i.keyword == "ENV")
            .filter_map(|i| i.args.split('=').next().map(str::to_owned))
            .collect();
        assert_env_documented(&env, &rel);
        // Every workspace member is in the build context the Dockerfile copies (cargo needs
        // all of them to resolve the workspace with --locked).
        let copied: Vec<String> = instructions
            .iter()
            .filter(|i| i.keyword == "COPY" && !i.args.contains("--from="))
            .flat_map(|i| {
                let words: Vec<&str> = i.args.split_whitespace().collect();
                words[..words.len() - 1]
                    .iter()
                    .map(|w| (*w).to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        for file in ["Cargo.toml", "Cargo.lock"] {
            assert!(copied.iter().any(|c| c == file), "{rel}: COPY {file}");
        }
        for member in workspace_members() {
            assert!(
                copied
                    .iter()
                    .any(|c| member == *c || member.starts_with(&format!("{c}/"))),
                "{rel}: workspace member {member} is not copied into the build stage"
            );
        }
        // BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile.
        let ignore = read(&format!("{rel}.dockerignore"));
        assert!(ignore.lines().any(|l| l.trim() == "**/target"));
        assert!(ignore.lines().any(|l| l.trim() == ".git"));
    }
    let edge = parse_dockerfile("deploy/container/Dockerfile.edge");
    let expose: String = edge
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .map(|i| i.args.clone())
        .collect();
    for port in ["443/tcp", "443/udp", "9470/tcp"] {
        assert!(expose.contains(port), "Dockerfile.edge: EXPOSE {port}");
    }
}

/// A one-shot-per-connection HTTP server on 127.0.0.1 answering `status` to everything.
fn http_server(status: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let body = "{\"status\":\"ok\"}";
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn healthchecks_work_against_a_live_endpoint() {
    let ok = http_server("200 OK");
    let down = http_server("503 Service Unavailable");
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    // The connector images run the binary's own probe.
    for rel in [
        format!("{ADDON}/Dockerfile"),
        "deploy/container/Dockerfile.connector".to_owned(),
    ] {
        let check = healthcheck(&parse_dockerfile(&rel), &rel);
        for (port, healthy) in [(ok, true), (down, false), (closed, false)] {
            let args: Vec<String> = check[1..]
                .iter()
                .map(|a| a.replace(":9471/", &format!(":{port}/")))
                .collect();
            let out = run(Command::new(&e2e::binaries().connector)
                .args(&args)
                .args(["--timeout", "3"]));
            assert_eq!(
                out.status.success(),
                healthy,
                "{rel}: health against port {port}:\n{}",
                output_text(&out)
            );
            if !healthy {
                assert_eq!(
                    out.status.code(),
                    Some(1),
                    "a failed probe exits 1, not a usage error"
                );
            }
        }
    }
    // The edge image has no curl: bash's /dev/tcp.
    let rel = "deploy/container/Dockerfile.edge";
    let check = healthcheck(&parse_dockerfile(rel), rel);
    assert_eq!(check[..2], ["bash", "-c"]);
    assert!(check[2].contains("/dev/tcp/127.0.0.1/9470"));
    for (port, healthy) in [(ok, true), (down, false), (closed, false)] {
        let script = check[2].replace("/9470", &format!("/{port}"));
        let out = run(Command::new("timeout").args(["5", "bash", "-c", &script]));
        assert_eq!(
            out.status.success(),
            healthy,
            "{rel}: health against port {port}:\n{}",
            output_text(&out)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Compose

#[test]
fn compose_runs_edge_prometheus_and_grafana() {
    let rel = "deploy/container/compose.yaml";
    let compose = yaml(rel);
    let dir = path("deploy/container");
    let services = obj(&compose["services"], "services");
    for name in ["edge", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "{rel}: service {name}");
    }
    let declared: BTreeSet<&String> = obj(&compose["volumes"], "volumes").keys().collect();
    for (name, service) in services {
        let what = format!("{rel}: {name}");
        if let Some(image) = service["image"].as_str() {
            assert!(
                image.contains(':') && !image.ends_with(":latest"),
                "{what}: pin the image tag"
            );
        }
        if let Some(build) = service.get("build") {
            let context = dir.join(s(&build["context"], "context"));
            let dockerfile = context.join(s(&build["dockerfile"], "dockerfile"));
            assert!(
                dockerfile.is_file(),
                "{what}: {} missing",
                dockerfile.display()
            );
        }
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let spec = s(volume, "volume");
            let source = spec.split(':').next().unwrap();
            if source.starts_with('.') {
                assert!(
                    dir.join(source).exists(),
                    "{what}: volume source {source} missing"
                );
            } else {
                assert!(
                    declared.contains(&source.to_owned()),
                    "{what}: named volume {source} not declared"
                );
            }
        }
        if let Some(env) = service.get("environment").and_then(Value::as_object) {
            let vars: Vec<String> = env
                .keys()
                .filter(|k| k.starts_with("DOORLESS_"))
                .cloned()
                .collect();
            assert_env_documented(&vars, &what);
            for (k, v) in env {
                if k.contains("PASSWORD") {
                    assert!(
                        s(v, k).starts_with("${"),
                        "{what}: {k} must come from the environment, not the file"
                    );
                }
            }
        }
        for port in service["ports"].as_array().into_iter().flatten() {
            let port = s(port, "port");
            if !port.starts_with("443:") {
                assert!(
                    port.starts_with("127.0.0.1:"),
                    "{what}: `{port}` must be published on loopback only"
                );
            }
        }
    }
    let edge = &services["edge"];
    let ports: Vec<&str> = edge["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| s(p, "port"))
        .collect();
    assert!(
        ports.contains(&"443:443/tcp") && ports.contains(&"443:443/udp"),
        "{ports:?}"
    );
    assert!(
        edge["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| s(v, "volume").ends_with(":/var/lib/doorless-edge")),
        "{rel}: the edge's state directory must be a volume"
    );
    let grace = s(&edge["stop_grace_period"], "stop_grace_period");
    assert!(
        grace.trim_end_matches('s').parse::<u32>().unwrap() > 30,
        "{rel}: stop_grace_period must exceed the 30 s drain"
    );
    // Prometheus scrapes the admin listener the edge is told to open.
    let admin = s(&edge["environment"]["DOORLESS_LISTEN__ADMIN"], "admin");
    let port = admin.rsplit(':').next().unwrap();
    let prometheus = yaml("deploy/container/prometheus.yml");
    let targets = scrape_targets(&prometheus);
    assert_eq!(
        targets.get("doorless-edge"),
        Some(&vec![format!("edge:{port}")])
    );
    let mounts: Vec<&str> = services["prometheus"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| s(v, "volume"))
        .collect();
    assert!(mounts.contains(&"./prometheus.yml:/etc/prometheus/prometheus.yml:ro"));
    assert!(
        mounts.contains(&"../prometheus/doorless-rules.yml:/etc/prometheus/doorless-rules.yml:ro")
    );

    // Grafana: the provisioned datasource is the prometheus service; the dashboard provider
    // reads the directory where doorless.json is mounted.
    let datasource = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let ds = &datasource["datasources"][0];
    assert_eq!(ds["type"], "prometheus");
    assert_eq!(ds["url"], "http://prometheus:9090");
    let provider = yaml("deploy/grafana/provisioning/dashboards/doorless.yml");
    let dash_dir = s(&provider["providers"][0]["options"]["path"], "path");
    let grafana_mounts: Vec<&str> = services["grafana"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| s(v, "volume"))
        .collect();
    assert!(
        grafana_mounts
            .contains(&format!("../grafana/doorless.json:{dash_dir}/doorless.json:ro").as_str()),
        "{grafana_mounts:?}"
    );
    assert!(grafana_mounts.contains(&"../grafana/provisioning:/etc/grafana/provisioning:ro"));
}

// ---------------------------------------------------------------------------------------------
// systemd

type Unit = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn parse_unit(rel: &str) -> Unit {
    let mut unit: Unit = BTreeMap::new();
    let mut section = String::new();
    for line in read(rel).lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_owned();
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{rel}: not KEY=VALUE: {line}"));
        assert!(!section.is_empty(), "{rel}: {key} outside a section");
        unit.entry(section.clone())
            .or_default()
            .entry(key.to_owned())
            .or_default()
            .push(value.to_owned());
    }
    unit
}

fn directive(unit: &Unit, section: &str, key: &str, rel: &str) -> Vec<String> {
    unit.get(section)
        .and_then(|s| s.get(key))
        .cloned()
        .unwrap_or_else(|| panic!("{rel}: [{section}] {key}= missing"))
}

fn assert_directive(unit: &Unit, section: &str, key: &str, value: &str, rel: &str) {
    let values = directive(unit, section, key, rel);
    assert!(
        values.iter().any(|v| v == value),
        "{rel}: [{section}] {key}={value} expected, found {values:?}"
    );
}

#[test]
fn systemd_units_are_hardened_and_verify() {
    let units = [
        (
            "deploy/systemd/doorless-edge.service",
            "doorless-edge",
            "edge",
        ),
        (
            "deploy/systemd/doorless-connector.service",
            "doorless-connector",
            "connector",
        ),
    ];
    for (rel, binary, config) in units {
        let unit = parse_unit(rel);
        let exec = directive(&unit, "Service", "ExecStart", rel);
        assert_eq!(
            exec,
            [format!(
                "/usr/local/bin/{binary} run --config /etc/doorless/{config}.toml"
            )]
        );
        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("ProtectHome", "yes"),
            ("PrivateTmp", "yes"),
            ("PrivateDevices", "yes"),
            ("ProtectKernelTunables", "yes"),
            ("ProtectKernelModules", "yes"),
            ("ProtectKernelLogs", "yes"),
            ("ProtectControlGroups", "yes"),
            ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ("SystemCallFilter", "@system-service"),
            // The binaries send READY=1 / STOPPING=1 (e2e lifecycle test).
            ("Type", "notify"),
            ("Restart", "on-failure"),
            ("RestartSec", "2"),
            // EX_CONFIG: the exit code of a configuration error (asserted above with the real
            // connector's check-config): restarting cannot fix the file.
            ("RestartPreventExitStatus", "78"),
            ("LimitNOFILE", "65536"),
            ("KillSignal", "SIGTERM"),
            ("TimeoutStopSec", "40"),
            ("ConfigurationDirectory", "doorless"),
        ] {
            assert_directive(&unit, "Service", key, value, rel);
        }
        assert_directive(&unit, "Install", "WantedBy", "multi-user.target", rel);
        assert_directive(&unit, "Unit", "After", "network-online.target", rel);
        let env: Vec<String> = unit["Service"]
            .get("Environment")
            .into_iter()
            .flatten()
            .filter_map(|e| e.split('=').next().map(str::to_owned))
            .collect();
        assert_env_documented(&env, rel);
    }
    let edge = parse_unit(units[0].0);
    let rel = units[0].0;
    assert_directive(&edge, "Service", "StateDirectory", "doorless-edge", rel);
    assert_directive(
        &edge,
        "Service",
        "AmbientCapabilities",
        "CAP_NET_BIND_SERVICE",
        rel,
    );
    assert_directive(
        &edge,
        "Service",
        "CapabilityBoundingSet",
        "CAP_NET_BIND_SERVICE",
        rel,
    );
    assert_directive(
        &edge,
        "Service",
        "ExecReload",
        "/bin/kill -HUP $MAINPID",
        rel,
    );
    // The edge's user is the one deploy/systemd/doorless.sysusers creates, and its state
    // directory is where deploy/edge.toml.example points.
    let user = directive(&edge, "Service", "User", rel);
    let sysusers = read("deploy/systemd/doorless.sysusers");
    let line = sysusers
        .lines()
        .find(|l| l.starts_with("u "))
        .expect("a `u` line");
    assert_eq!(line.split_whitespace().nth(1), Some(user[0].as_str()));
    assert!(read("deploy/edge.toml.example").contains("state_dir = \"/var/lib/doorless-edge\""));

    let connector = parse_unit(units[1].0);
    let rel = units[1].0;
    assert_directive(&connector, "Service", "DynamicUser", "yes", rel);
    assert_directive(&connector, "Service", "CapabilityBoundingSet", "", rel);
    assert_directive(
        &connector,
        "Service",
        "LoadCredential",
        "token:/etc/doorless/connector.token",
        rel,
    );
    assert_directive(
        &connector,
        "Service",
        "Environment",
        "DOORLESS_TOKEN_FILE=%d/token",
        rel,
    );

    // systemd's own checks. `verify` insists that ExecStart= names an existing executable, and
    // the binaries are not installed here: the copies in a temporary directory run /bin/true
    // instead (same arguments), everything else unchanged.
    let Some(analyze) = ensure_tool("systemd-analyze", "systemd") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut copies = Vec::new();
    for (rel, binary, _) in units {
        let text = read(rel).replace(
            &format!("ExecStart=/usr/local/bin/{binary} "),
            "ExecStart=/bin/true ",
        );
        let copy = tmp.path().join(Path::new(rel).file_name().unwrap());
        std::fs::write(&copy, text).unwrap();
        copies.push(copy);
    }
    let out = run(Command::new(&analyze).arg("verify").args(&copies));
    let text = output_text(&out);
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("doorless")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    // Exposure score (0 = locked down, 10 = unprotected; --threshold counts tenths): both
    // units score under 2.0.
    for copy in &copies {
        let out = run(Command::new(&analyze)
            .args(["security", "--offline=yes", "--threshold=20"])
            .arg(copy));
        let text = output_text(&out);
        if text.contains("unrecognized option") {
            notice("SKIPPED systemd-analyze security: this systemd has no --offline");
            break;
        }
        assert!(
            out.status.success(),
            "systemd-analyze security {}: exposure above 2:\n{text}",
            copy.display()
        );
    }
    // The sysusers line creates the user (dry run into an empty root).
    if let Some(sysusers) = which("systemd-sysusers") {
        let sysroot = tmp.path().join("root");
        std::fs::create_dir_all(sysroot.join("etc")).unwrap();
        let text = must_succeed(
            Command::new(sysusers)
                .arg(format!("--root={}", sysroot.display()))
                .arg("--dry-run")
                .arg(path("deploy/systemd/doorless.sysusers")),
        );
        assert!(text.contains("Creating user 'doorless'"), "{text}");
    }
}

#[test]
fn sysctl_dropin_raises_udp_buffers_to_the_requested_size() {
    let text = read("deploy/systemd/99-doorless.conf");
    let settings: BTreeMap<String, String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY = VALUE: {l}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let keys: Vec<&str> = settings.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "net.core.rmem_max",
            "net.core.wmem_max",
            "net.ipv4.tcp_allowed_congestion_control"
        ]
    );
    // docs/config.md: tunnel.udp_buffer defaults to 4194304 for both binaries.
    let config_md = read("docs/config.md");
    assert!(config_md.contains("| `tunnel.udp_buffer` | `4194304` |"));
    for key in ["net.core.rmem_max", "net.core.wmem_max"] {
        assert_eq!(settings[key], "4194304", "{key}");
    }
    // The edge's default client congestion control is allowed, beside the kernel's usual ones
    // (the list replaces the host's, so it must keep them), and its module is loaded at boot.
    assert!(config_md.contains("| `listen.tcp_congestion_control` | `bbr` |"));
    let allowed: Vec<&str> = settings["net.ipv4.tcp_allowed_congestion_control"]
        .split_whitespace()
        .collect();
    assert_eq!(allowed, ["reno", "cubic", "bbr"]);
    let modules = read("deploy/systemd/doorless-modules.conf");
    let loaded: Vec<&str> = modules
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .collect();
    assert_eq!(loaded, ["tcp_bbr"]);
    if Path::new("/proc/sys/net").exists() {
        for key in settings.keys() {
            let proc = Path::new("/proc/sys").join(key.replace('.', "/"));
            assert!(
                proc.exists(),
                "{key} is not a kernel setting here ({})",
                proc.display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus

fn scrape_targets(config: &Value) -> BTreeMap<String, Vec<String>> {
    config["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .map(|job| {
            let targets = job["static_configs"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|sc| sc["targets"].as_array().cloned().unwrap_or_default())
                .map(|t| s(&t, "target").to_owned())
                .collect();
            (s(&job["job_name"], "job_name").to_owned(), targets)
        })
        .collect()
}

#[test]
fn prometheus_scrapes_both_admin_listeners() {
    let config = yaml("deploy/prometheus/prometheus.yml");
    let targets = scrape_targets(&config);
    assert_eq!(targets["doorless-edge"], ["127.0.0.1:9470"]);
    assert_eq!(targets["doorless-connector"], ["127.0.0.1:9471"]);
    let rules: Vec<&str> = config["rule_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| s(r, "rule_files"))
        .collect();
    assert_eq!(rules, ["doorless-rules.yml"]);
    // The admin defaults in docs/config.md are what is scraped.
    let config_md = read("docs/config.md");
    assert!(config_md.contains("| `listen.admin` | `127.0.0.1:9470` |"));
    assert!(config_md.contains("| `listen.admin` | `127.0.0.1:9471` |"));
}

#[test]
fn alert_rules_use_documented_metrics_and_cover_the_failures() {
    let families = documented_families();
    let rules = yaml("deploy/prometheus/doorless-rules.yml");
    let mut alerts = BTreeMap::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = s(&rule["alert"], "alert").to_owned();
            let expr = s(&rule["expr"], "expr");
            let names = check_promql(expr, &format!("doorless-rules.yml {name}"), &families);
            for key in ["summary", "description"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|t| !t.is_empty()),
                    "{name}: annotation {key}"
                );
            }
            assert!(
                ["critical", "warning"].contains(&s(&rule["labels"]["severity"], "severity")),
                "{name}: severity"
            );
            alerts.insert(name, (expr.to_owned(), names, rule["for"].clone()));
        }
    }
    for (alert, metric) in [
        ("ConnectorDown", "doorless_connector_edge_connections"),
        ("SiteWithoutConnector", "doorless_edge_connectors"),
        (
            "CertificateExpiringSoon",
            "doorless_edge_certificate_expiry_timestamp_seconds",
        ),
        ("AcmeRenewalFailing", "doorless_edge_acme_renewal_failing"),
        (
            "AcmeRenewalFailing",
            "doorless_edge_certificate_expiry_timestamp_seconds",
        ),
        (
            "IssuedCertificateExpiringSoon",
            "doorless_edge_certificate_expiry_timestamp_seconds",
        ),
        ("DenialSpike", "doorless_edge_tls_handshakes_total"),
        ("UpstreamErrors", "doorless_edge_request_errors_total"),
        ("UpstreamErrors", "doorless_connector_upstream_errors_total"),
    ] {
        let (_, names, _) = alerts
            .get(alert)
            .unwrap_or_else(|| panic!("alert {alert} missing"));
        assert!(
            names.iter().any(|n| n == metric),
            "{alert} must use {metric}"
        );
    }
    assert_eq!(alerts["ConnectorDown"].2, "2m");
    assert_eq!(alerts["SiteWithoutConnector"].2, "2m");
    assert!(alerts["CertificateExpiringSoon"].0.contains("< 14"));
    assert!(alerts["DenialSpike"].0.contains(r#"result="denied""#));
    assert!(alerts["UpstreamErrors"].0.contains(r#"blame="upstream""#));

    // The unit tests' input series use documented names and labels too.
    let tests = yaml("deploy/prometheus/doorless-rules.test.yml");
    for test in tests["tests"].as_array().unwrap() {
        for series in test["input_series"].as_array().unwrap() {
            let series = s(&series["series"], "series");
            check_promql(series, "doorless-rules.test.yml", &families);
        }
    }
}

#[test]
fn promtool_accepts_configs_and_rules_and_the_rule_tests_pass() {
    let Some(promtool) = ensure_tool("promtool", "prometheus") else {
        return;
    };
    let dir = path("deploy/prometheus");
    must_succeed(Command::new(&promtool).current_dir(&dir).args([
        "check",
        "config",
        "prometheus.yml",
    ]));
    must_succeed(Command::new(&promtool).current_dir(&dir).args([
        "check",
        "rules",
        "doorless-rules.yml",
    ]));
    let text = must_succeed(Command::new(&promtool).current_dir(&dir).args([
        "test",
        "rules",
        "doorless-rules.test.yml",
    ]));
    assert!(text.contains("SUCCESS"), "{text}");
    // The compose variant, laid out as in the container: rules beside the config.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        path("deploy/container/prometheus.yml"),
        tmp.path().join("prometheus.yml"),
    )
    .unwrap();
    std::fs::copy(
        dir.join("doorless-rules.yml"),
        tmp.path().join("doorless-rules.yml"),
    )
    .unwrap();
    must_succeed(Command::new(&promtool).current_dir(tmp.path()).args([
        "check",
        "config",
        "prometheus.yml",
    ]));
    // The dashboard's queries, with Grafana's variables filled in, as recording rules: promtool
    // parses each with Prometheus's own PromQL parser.
    let exprs = dashboard_exprs();
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(n, (_, expr))| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$site", ".*");
            json!({"record": format!("dashboard:query_{n}"), "expr": expr})
        })
        .collect();
    let file = tmp.path().join("dashboard-queries.yml");
    std::fs::write(
        &file,
        serde_json::to_string(&json!({"groups": [{"name": "dashboard", "rules": rules}]})).unwrap(),
    )
    .unwrap();
    let text = must_succeed(Command::new(&promtool).arg("check").arg("rules").arg(&file));
    assert!(
        text.contains(&format!("{} rules found", exprs.len())),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Grafana

fn dashboard() -> Value {
    serde_json::from_str(&read("deploy/grafana/doorless.json"))
        .unwrap_or_else(|e| panic!("deploy/grafana/doorless.json: {e}"))
}

/// (panel title, expr) of every query in the dashboard.
fn dashboard_exprs() -> Vec<(String, String)> {
    let dash = dashboard();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                s(&panel["title"], "title").to_owned(),
                s(&target["expr"], "expr").to_owned(),
            ));
        }
    }
    out
}

#[test]
fn grafana_dashboard_uses_documented_metrics() {
    let families = documented_families();
    let dash = dashboard();
    assert_eq!(dash["uid"], "doorless");
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    let variables = dash["templating"]["list"].as_array().expect("templating");
    let var_names: Vec<&str> = variables.iter().map(|v| s(&v["name"], "name")).collect();
    assert!(var_names.contains(&"datasource") && var_names.contains(&"site"));
    for variable in variables {
        if let Some(definition) = variable.get("definition").and_then(Value::as_str) {
            // label_values(METRIC, LABEL)
            let inner = definition
                .strip_prefix("label_values(")
                .and_then(|d| d.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable query `{definition}`"));
            let (metric, label) = inner.split_once(',').unwrap();
            let family = &families[metric.trim()];
            assert!(family.labels.contains(label.trim()), "{definition}");
        }
    }
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for panel in dash["panels"].as_array().unwrap() {
        let title = s(&panel["title"], "title");
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id in {title}"
        );
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: use the datasource variable"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert!(ref_ids.insert(s(&target["refId"], "refId").to_owned()));
            let expr = s(&target["expr"], "expr");
            used.extend(check_promql(
                expr,
                &format!("doorless.json \"{title}\""),
                &families,
            ));
        }
    }
    for metric in [
        "doorless_edge_requests_total",
        "doorless_edge_request_errors_total",
        "doorless_edge_request_duration_seconds_bucket",
        "doorless_edge_active_websockets",
        "doorless_edge_connectors",
        "doorless_edge_tls_handshakes_total",
        "doorless_edge_certificate_expiry_timestamp_seconds",
        "doorless_connector_rtt_seconds",
    ] {
        assert!(used.contains(metric), "the dashboard must chart {metric}");
    }
    let exprs: String = dashboard_exprs().into_iter().map(|(_, e)| e).collect();
    assert!(
        exprs.contains("histogram_quantile(0.5,") && exprs.contains("histogram_quantile(0.99,")
    );
}

// ---------------------------------------------------------------------------------------------
// Docs and coverage

#[test]
fn setup_guides_cover_the_steps_and_their_references_exist() {
    for (rel, needles) in [
        (
            "docs/setup-vps.md",
            &[
                "AAAA",
                "443/tcp",
                "443/udp",
                "99-doorless.conf",
                "doorless-edge init --state-dir /var/lib/doorless-edge",
                "site add",
                "client add",
                "systemctl enable --now doorless-edge",
                "/status",
                "compose.yaml",
            ][..],
        ),
        (
            "docs/setup-home-assistant.md",
            &[
                "172.30.33.0/24",
                "Settings › System › Network › HTTP server",
                "use_x_forwarded_for: true",
                "trusted_proxies:",
                "repository.yaml",
                "DOORLESS_TOKEN",
                "doorless-connector.service",
                "Dockerfile.connector",
            ][..],
        ),
        (
            "docs/troubleshooting.md",
            &[
                "tunnel connection failed",
                "timed out",
                "UDP",
                "nc -u",
                "400 Bad Request",
                "trusted_proxies",
                "does not offer the certificate",
                "clock",
                "not yet valid",
                "token",
                "no_connector",
                "503",
            ][..],
        ),
    ] {
        let text = read(rel);
        for needle in needles {
            assert!(text.contains(needle), "{rel} must mention `{needle}`");
        }
    }
    // Every deploy/ or docs/ path the guides name exists.
    for rel in [
        "docs/setup-vps.md",
        "docs/setup-home-assistant.md",
        "docs/troubleshooting.md",
        &format!("{ADDON}/DOCS.md"),
        &format!("{ADDON}/README.md"),
    ] {
        let text = read(rel);
        for prefix in ["deploy/", "docs/"] {
            for (at, _) in text.match_indices(prefix) {
                if at > 0 && text[..at].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '/') {
                    continue;
                }
                let reference: String = text[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
                    .collect();
                let reference = reference.trim_end_matches('.');
                assert!(
                    path(reference).exists(),
                    "{rel} names `{reference}`, which does not exist"
                );
            }
        }
    }
}

#[test]
fn every_deploy_file_is_checked_here() {
    // A new file under deploy/ needs a check in this test file (or in the crate that owns it).
    let checked: BTreeSet<&str> = [
        "deploy/edge.toml.example",      // crates/edge/src/config.rs tests
        "deploy/connector.toml.example", // crates/connector/src/config.rs tests
        "deploy/ha-addon/doorless-connector/config.yaml",
        "deploy/ha-addon/doorless-connector/Dockerfile",
        "deploy/ha-addon/doorless-connector/run.sh",
        "deploy/ha-addon/doorless-connector/DOCS.md",
        "deploy/ha-addon/doorless-connector/README.md",
        "deploy/ha-addon/doorless-connector/CHANGELOG.md",
        "deploy/ha-addon/doorless-connector/icon.png",
        "deploy/ha-addon/doorless-connector/logo.png",
        "deploy/ha-addon/doorless-connector/translations/en.yaml",
        "deploy/release/build.sh", // addon_builds_from_its_own_folder_..., release_artifacts_...
        "deploy/systemd/doorless-edge.service",
        "deploy/systemd/doorless-connector.service",
        "deploy/systemd/doorless.sysusers",
        "deploy/systemd/99-doorless.conf",
        "deploy/systemd/doorless-modules.conf", // sysctl_dropin_raises_udp_buffers_...
        "deploy/container/Dockerfile.edge",
        "deploy/container/Dockerfile.edge.dockerignore",
        "deploy/container/Dockerfile.connector",
        "deploy/container/Dockerfile.connector.dockerignore",
        "deploy/container/compose.yaml",
        "deploy/container/prometheus.yml",
        "deploy/prometheus/prometheus.yml",
        "deploy/prometheus/doorless-rules.yml",
        "deploy/prometheus/doorless-rules.test.yml",
        "deploy/grafana/doorless.json",
        "deploy/grafana/provisioning/datasources/prometheus.yml",
        "deploy/grafana/provisioning/dashboards/doorless.yml",
    ]
    .into_iter()
    .collect();
    let mut files = Vec::new();
    walk(&path("deploy"), &mut files);
    let present: BTreeSet<String> = files
        .iter()
        .map(|p| rel(p))
        .filter(|p| !p.ends_with(".swp"))
        .collect();
    let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
    assert_eq!(
        present, checked,
        "deploy/ files and the checked list differ"
    );
    // Every YAML file parses.
    for file in &checked {
        if file.ends_with(".yaml") || file.ends_with(".yml") {
            let _ = yaml(file);
        }
    }
}
