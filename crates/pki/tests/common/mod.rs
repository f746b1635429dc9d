//! Helpers shared by the tests that check our output with independent tools (OpenSSL, Python).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use pki::{InitOptions, StateDir};
use tempfile::TempDir;

/// Runs `openssl` with `args`; panics with an install hint if it is missing (never skips: these
/// tests are the evidence that phones can read what we write).
pub fn openssl(args: &[&str]) -> Output {
    tool(
        "openssl",
        args,
        "apt-get install openssl (or brew install openssl)",
    )
}

/// Like [`openssl`], and asserts success, returning stdout + stderr as text.
pub fn openssl_ok(args: &[&str]) -> String {
    let out = openssl(args);
    let text = text(&out);
    assert!(out.status.success(), "openssl {args:?} failed:\n{text}");
    text
}

pub fn python3(args: &[&str]) -> Output {
    tool("python3", args, "apt-get install python3")
}

fn tool(program: &str, args: &[&str], hint: &str) -> Output {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{program}` is not installed but these tests need it: {hint}")
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A fresh state dir with one site `home` (`ha.example.com`).
pub fn state_with_site() -> (TempDir, StateDir) {
    let tmp = TempDir::new().unwrap();
    let state = StateDir::init(&tmp.path().join("state"), &InitOptions::default()).unwrap();
    state
        .add_site("home", &["ha.example.com".to_owned()])
        .unwrap();
    (tmp, state)
}

pub fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
