//! Machine info for the report's header.

use std::collections::BTreeMap;
use std::process::Command;

use crate::targets::Tools;

pub(crate) fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub(crate) fn machine(tools: &Tools) -> BTreeMap<&'static str, String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let mut m = BTreeMap::new();
    m.insert("nproc", sh("nproc", &[]));
    m.insert("cpu", model);
    m.insert("kernel", sh("uname", &["-r"]));
    m.insert("rustc", sh("rustc", &["--version"]));
    m.insert(
        "memory",
        std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    );
    m.insert("nginx", {
        let o = Command::new(&tools.nginx).arg("-v").output();
        o.map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            .unwrap_or_default()
    });
    m.insert("oha", sh(&tools.oha.to_string_lossy(), &["--version"]));
    m.insert(
        "rathole",
        sh(&tools.rathole.to_string_lossy(), &["--version"])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    );
    m.insert(
        "iperf3",
        sh(&tools.iperf3.to_string_lossy(), &["--version"])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned(),
    );
    m.insert("ulimit_nofile", sh("sh", &["-c", "ulimit -n"]));
    m.insert(
        "load_before",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned(),
    );
    m
}
