//! The PKI verbs of the real `doorless-edge` binary: what an operator types, what lands on disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;

struct Cli {
    _tmp: TempDir,
    dir: PathBuf,
    state: PathBuf,
}

impl Cli {
    fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().to_owned();
        let cli = Self {
            state: dir.join("state"),
            dir,
            _tmp: tmp,
        };
        cli.ok(&["init"]);
        cli
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_doorless-edge"))
            .args(args)
            .arg("--state-dir")
            .arg(&self.state)
            .env_remove("DOORLESS_STATE_DIR")
            .env_remove("DOORLESS_P12_PASSWORD")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs and asserts success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "doorless-edge {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and asserts failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "doorless-edge {args:?} should fail:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    fn list(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["client", "list", "--json"])).unwrap()
    }

    fn path(&self, rel: &str) -> String {
        self.dir.join(rel).to_str().unwrap().to_owned()
    }
}

fn token_in(stdout: &str) -> pki::EnrollmentToken {
    let token = stdout
        .split_whitespace()
        .find(|w| w.starts_with("dl1."))
        .unwrap_or_else(|| panic!("no token printed:\n{stdout}"));
    pki::EnrollmentToken::decode(token).unwrap()
}

/// The generated password: the indented line after the "Password of" line.
fn password_in(stdout: &str) -> String {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("Password of"));
    lines.next().expect("a password announcement");
    lines
        .map(str::trim)
        .find(|l| !l.is_empty())
        .expect("the password")
        .to_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn openssl(args: &[&str]) -> Output {
    match Command::new("openssl").args(args).output() {
        Ok(out) => out,
        Err(e) => panic!("`openssl` is needed by this test (apt-get install openssl): {e}"),
    }
}

#[test]
fn init_site_client_add_list_revoke_and_a_second_connector() {
    let cli = Cli::new();
    // init twice refuses.
    let err = cli.fails(&["init"]);
    assert!(err.contains("refusing to init"), "{err}");

    let first = token_in(&cli.ok(&[
        "site",
        "add",
        "home",
        "--hostname",
        "ha.example.com",
        "--token",
    ]));
    assert_eq!(
        (first.site.as_str(), first.connector_id.as_str()),
        ("home", "connector-1")
    );

    let out = cli.path("out");
    let stdout = cli.ok(&["client", "add", "phone", "--site", "home", "--out", &out]);
    let out = Path::new(&out);
    for (file, want) in [
        ("phone.key", 0o600),
        ("phone.p12", 0o600),
        ("phone.mobileconfig", 0o600),
        ("phone.crt", 0o644),
    ] {
        let path = out.join(file);
        assert!(path.exists(), "{file} missing; stdout:\n{stdout}");
        assert_eq!(mode(&path), want, "{file}");
        assert!(stdout.contains(file), "{file} not listed:\n{stdout}");
    }
    // The printed password opens the .p12 (legacy by default) and nothing else does.
    let password = password_in(&stdout);
    assert_eq!(password.len(), 23, "{password}");
    let p12 = out.join("phone.p12");
    let info = openssl(&[
        "pkcs12",
        "-info",
        "-noout",
        "-legacy",
        "-in",
        p12.to_str().unwrap(),
        "-passin",
        &format!("pass:{password}"),
    ]);
    let info_text = String::from_utf8_lossy(&info.stderr);
    assert!(info.status.success(), "{info_text}");
    assert!(
        info_text.contains("Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC"),
        "{info_text}"
    );
    // The password is stored nowhere under the state dir or in the profile.
    let profile = std::fs::read_to_string(out.join("phone.mobileconfig")).unwrap();
    assert!(!profile.contains(&password));
    assert!(profile.contains("com.apple.security.pkcs12"));

    // No silent overwrite: the error names the file, and nothing new is recorded.
    let err = cli.fails(&[
        "client",
        "add",
        "phone",
        "--site",
        "home",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        err.contains("phone.p12") && err.contains("--force"),
        "{err}"
    );
    // Elsewhere, the name is still taken while its certificate is live.
    let err = cli.fails(&[
        "client",
        "add",
        "phone",
        "--site",
        "home",
        "--out",
        &cli.path("o2"),
    ]);
    assert!(
        err.contains("phone") && err.contains("revoke it first"),
        "{err}"
    );
    // Bad input names what is wrong and records nothing.
    let err = cli.fails(&[
        "client",
        "add",
        "tablet",
        "--site",
        "nope",
        "--out",
        &cli.path("o3"),
    ]);
    assert!(err.contains("\"nope\""), "{err}");
    let err = cli.fails(&[
        "client",
        "add",
        "tablet",
        "--site",
        "home",
        "--out",
        &cli.path("o4"),
        "--password",
        "",
    ]);
    assert!(err.contains("password"), "{err}");
    assert!(!Path::new(&cli.path("o4")).exists());

    let list = cli.list();
    let devices: Vec<_> = list.iter().filter(|e| e["kind"] == "device").collect();
    assert_eq!(devices.len(), 1, "{list:?}");
    assert_eq!(devices[0]["name"], "phone");
    assert_eq!(devices[0]["site"], "home");
    assert!(devices[0]["revoked_at"].is_null());
    let serial = devices[0]["serial"].as_str().unwrap().to_owned();

    let stdout = cli.ok(&["client", "revoke", "phone"]);
    assert!(
        stdout.contains("Revoked device phone of site home"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&serial) && stdout.contains("within a second"),
        "{stdout}"
    );
    let list = cli.list();
    let phone = list.iter().find(|e| e["name"] == "phone").unwrap();
    assert!(phone["revoked_at"].is_string(), "{list:?}");
    let table = cli.ok(&["client", "list", "--site", "home"]);
    let row = table.lines().find(|l| l.contains(&serial)).unwrap();
    assert!(
        !row.trim_end().ends_with(" -"),
        "the table shows the revocation: {row}"
    );
    let err = cli.fails(&["client", "revoke", &serial]);
    assert!(err.contains("already revoked"), "{err}");

    // `site add` on the existing site refuses, names `site token`, and mints nothing...
    let err = cli.fails(&["site", "add", "home", "--hostname", "ha.example.com"]);
    assert!(
        err.contains("already exists") && err.contains("site token home"),
        "{err}"
    );
    let connectors = cli
        .list()
        .into_iter()
        .filter(|e| e["kind"] == "connector")
        .count();
    assert_eq!(connectors, 1, "a refused `site add` minted a credential");
    // ...`site token` mints the second connector credential.
    let second = token_in(&cli.ok(&["site", "token", "home"]));
    assert_eq!(second.site, "home");
    assert_ne!(second.connector_id, first.connector_id);
    assert_ne!(second.cert_pem, first.cert_pem);
    let connectors = cli
        .list()
        .into_iter()
        .filter(|e| e["kind"] == "connector")
        .count();
    assert_eq!(connectors, 2);
    // A new hostname for an existing site is refused too, not silently dropped.
    let err = cli.fails(&["site", "add", "home", "--hostname", "other.example.com"]);
    assert!(
        err.contains("already exists") && err.contains("other.example.com"),
        "{err}"
    );
    let sites = cli.ok(&["site", "list"]);
    assert_eq!(sites.trim(), "home\tha.example.com");
}

#[test]
fn renew_sign_csr_and_crl() {
    let cli = Cli::new();
    cli.ok(&["site", "add", "home", "--hostname", "ha.example.com"]);
    let out = cli.path("out");
    let stdout = cli.ok(&[
        "client",
        "add",
        "laptop",
        "--site",
        "home",
        "--out",
        &out,
        "--password",
        "pw-for-test",
        "--modern",
        "--rsa",
    ]);
    assert!(
        !stdout.contains("Password of"),
        "a given password is not echoed:\n{stdout}"
    );
    let p12 = Path::new(&out).join("laptop.p12");
    let info = openssl(&[
        "pkcs12",
        "-info",
        "-noout",
        "-in",
        p12.to_str().unwrap(),
        "-passin",
        "pass:pw-for-test",
    ]);
    let text = String::from_utf8_lossy(&info.stderr);
    assert!(text.contains("AES-256-CBC"), "{text}");
    let crt = Path::new(&out).join("laptop.crt");
    let cert = openssl(&["x509", "-in", crt.to_str().unwrap(), "-noout", "-text"]);
    assert!(String::from_utf8_lossy(&cert.stdout).contains("rsaEncryption"));

    // Renew into the same directory needs --force, and revokes the old certificate.
    let err = cli.fails(&["client", "renew", "laptop", "--site", "home", "--out", &out]);
    assert!(err.contains("laptop.p12"), "{err}");
    // --edge is for a connector's renewal code; a device refuses it.
    let err = cli.fails(&[
        "client",
        "renew",
        "laptop",
        "--site",
        "home",
        "--out",
        &out,
        "--force",
        "--edge",
        "ha.example.org:8443",
    ]);
    assert!(err.contains("--edge only applies"), "{err}");
    let old = std::fs::read_to_string(&crt).unwrap();
    let stdout = cli.ok(&[
        "client", "renew", "laptop", "--site", "home", "--out", &out, "--force",
    ]);
    assert!(stdout.contains("Revoked the old certificate"), "{stdout}");
    assert_ne!(std::fs::read_to_string(&crt).unwrap(), old);
    assert_eq!(mode(&Path::new(&out).join("laptop.key")), 0o600);
    let list = cli.list();
    let laptops: Vec<_> = list.iter().filter(|e| e["name"] == "laptop").collect();
    assert_eq!(laptops.len(), 2);
    assert!(laptops[0]["revoked_at"].is_string() && laptops[1]["revoked_at"].is_null());

    // The CRL lists the old serial; openssl refuses the old cert with it.
    let state = pki::StateDir::open(&cli.state).unwrap();
    let old_path = cli.dir.join("old.crt");
    std::fs::write(&old_path, old).unwrap();
    let ca = state.site("home").unwrap().client_ca_path;
    let stdout = cli.ok(&["client", "crl", "--site", "home"]);
    assert!(stdout.contains("crl.pem"), "{stdout}");
    let verify = openssl(&[
        "verify",
        "-crl_check",
        "-CAfile",
        ca.to_str().unwrap(),
        "-CRLfile",
        state.crl_path("home").to_str().unwrap(),
        old_path.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&verify.stdout).into_owned()
        + &String::from_utf8_lossy(&verify.stderr);
    assert!(text.contains("certificate revoked"), "{text}");

    // sign-csr: an OpenSSL key and CSR, the key never seen by the edge.
    let key = cli.path("dev.key");
    let csr = cli.path("dev.csr");
    assert!(
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key
        ])
        .status
        .success()
    );
    assert!(
        openssl(&["req", "-new", "-key", &key, "-subj", "/CN=x", "-out", &csr])
            .status
            .success()
    );
    let csr_out = cli.path("csr-out");
    let stdout = cli.ok(&[
        "client",
        "sign-csr",
        &csr,
        "--site",
        "home",
        "--name",
        "linux-box",
        "--out",
        &csr_out,
    ]);
    assert!(stdout.contains("linux-box"), "{stdout}");
    let signed = Path::new(&csr_out).join("linux-box.crt");
    let verify = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        signed.to_str().unwrap(),
    ]);
    assert!(verify.status.success());
    assert!(!Path::new(&csr_out).join("linux-box.key").exists());
    let err = cli.fails(&[
        "client",
        "sign-csr",
        &cli.path("missing.csr"),
        "--site",
        "home",
        "--name",
        "x",
    ]);
    assert!(err.contains("missing.csr"), "{err}");

    // A name in two sites needs --site.
    cli.ok(&["site", "add", "cabin", "--hostname", "cabin.example.com"]);
    cli.ok(&[
        "client",
        "add",
        "laptop",
        "--site",
        "cabin",
        "--out",
        &cli.path("cabin"),
    ]);
    let err = cli.fails(&["client", "revoke", "laptop"]);
    assert!(
        err.contains("home") && err.contains("cabin") && err.contains("--site"),
        "{err}"
    );
    cli.ok(&["client", "revoke", "laptop", "--site", "cabin"]);
}

/// A build without the `demo` feature (a release build) keeps the verb only to say, in one line
/// on stderr, how to get it; exit code 2 as for a verb that does not exist. `cargo test -p edge`
/// runs this; in `cargo test --workspace` the e2e package turns the feature on and
/// tests/tests/e2e/demo.rs runs the demo itself.
#[cfg(not(feature = "demo"))]
#[test]
fn demo_without_the_feature_says_how_to_get_it() {
    for args in [&["demo"][..], &["demo", "--port", "0"], &["demo", "--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_doorless-edge"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.contains("cargo run -p edge --features demo -- demo"),
            "{args:?}: {stderr}"
        );
    }
    let help = Command::new(env!("CARGO_BIN_EXE_doorless-edge"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&help.stdout).contains("demo"),
        "a build without the demo must not offer it"
    );
}

/// `--days` outside [1 day, the CA's life] and IP-address hostnames are refused with a message
/// that says why, and nothing is issued or written.
#[test]
fn absurd_validity_and_ip_hostnames_are_refused() {
    let cli = Cli::new();
    for ip in ["203.0.113.7", "2001:db8::1", "[2001:db8::1]"] {
        let err = cli.fails(&["site", "add", "home", "--hostname", ip]);
        assert!(
            err.contains("is an IP address") && err.contains("SNI"),
            "{ip}: {err}"
        );
    }
    assert_eq!(cli.ok(&["site", "list"]), "");
    cli.ok(&["site", "add", "home", "--hostname", "ha.example.com"]);
    // Nor as an extra hostname of an existing site.
    let err = cli.fails(&["site", "add", "home", "--hostname", "203.0.113.7"]);
    assert!(err.contains("is an IP address"), "{err}");

    let key = cli.path("dev.key");
    let csr = cli.path("dev.csr");
    assert!(
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key
        ])
        .status
        .success()
    );
    assert!(
        openssl(&["req", "-new", "-key", &key, "-subj", "/CN=x", "-out", &csr])
            .status
            .success()
    );
    let out = cli.path("out");
    for (days, want) in [
        ("0", "at least 1 day"),
        ("4294967295", "cannot be valid beyond its CA"),
        ("3653", "cannot be valid beyond its CA"),
    ] {
        let err = cli.fails(&[
            "client", "sign-csr", &csr, "--site", "home", "--name", "box", "--days", days, "--out",
            &out,
        ]);
        assert!(err.contains(want), "sign-csr --days {days}: {err}");
        let err = cli.fails(&[
            "client", "add", "phone", "--site", "home", "--days", days, "--out", &out,
        ]);
        assert!(err.contains(want), "client add --days {days}: {err}");
    }
    assert_eq!(
        cli.list().len(),
        0,
        "nothing was issued (`site add` mints a code, not a certificate)"
    );
    assert!(!Path::new(&out).join("box.crt").exists());
    assert!(!Path::new(&out).join("phone.p12").exists());
    // The message says how long is possible, and that length works.
    let err = cli.fails(&[
        "client", "add", "phone", "--site", "home", "--days", "9999", "--out", &out,
    ]);
    let max: u32 = err
        .split("at most ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no maximum in {err}"));
    cli.ok(&[
        "client",
        "sign-csr",
        &csr,
        "--site",
        "home",
        "--name",
        "box",
        "--days",
        &max.to_string(),
        "--out",
        &out,
    ]);
    let cert = Path::new(&out).join("box.crt");
    let ca = cli.state.join("sites/home/client-ca.crt");
    let verify = openssl(&[
        "verify",
        "-CAfile",
        ca.to_str().unwrap(),
        cert.to_str().unwrap(),
    ]);
    assert!(verify.status.success());
}

#[test]
fn completions_cover_the_verbs_and_load_in_bash() {
    let cli = Cli::new();
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_doorless-edge"))
            .args(["completions", shell])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["site", "client", "revoke", "check-config", "state-dir"] {
            assert!(script.contains(word), "{shell} completion lacks {word}");
        }
    }
    // bash really loads it and registers the completion.
    let path = cli.path("doorless-edge.bash");
    let out = Command::new(env!("CARGO_BIN_EXE_doorless-edge"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    std::fs::write(&path, out.stdout).unwrap();
    let loaded = Command::new("bash")
        .args(["-c", &format!("source {path} && complete -p doorless-edge")])
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let refused = Command::new(env!("CARGO_BIN_EXE_doorless-edge"))
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(2),
        "a shell clap_complete lacks"
    );
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("tcsh"), "{err}");
}

#[test]
fn site_add_and_list_print_stable_json() {
    let cli = Cli::new();
    let added: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "site",
        "add",
        "home",
        "--hostname",
        "ha.example.org",
        "--json",
    ]))
    .unwrap();
    assert_eq!(added["site"], "home");
    assert_eq!(added["hostnames"], serde_json::json!(["ha.example.org"]));
    let code = added["code"]["code"].as_str().unwrap();
    assert!(!code.is_empty(), "{added}");
    assert!(added["code"]["id"].as_str().is_some(), "{added}");
    assert!(added["code"]["expires"].as_str().is_some(), "{added}");
    assert!(added.get("token").is_none(), "{added}");

    let added: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "site",
        "add",
        "cabin",
        "--hostname",
        "cabin.example.org",
        "--token",
        "--edge-addr",
        "edge.example.org:443",
        "--json",
    ]))
    .unwrap();
    assert_eq!(added["site"], "cabin");
    let token = pki::EnrollmentToken::decode(added["token"]["token"].as_str().unwrap()).unwrap();
    assert_eq!(token.site, "cabin");
    assert_eq!(added["token"]["connector_id"], token.connector_id.as_str());
    assert_eq!(
        added["token"]["edges"],
        serde_json::json!(["edge.example.org:443"])
    );

    // Refusing an existing site stays an error, with nothing on stdout.
    let out = cli.run(&[
        "site",
        "add",
        "home",
        "--hostname",
        "ha.example.org",
        "--json",
    ]);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());

    let sites: serde_json::Value =
        serde_json::from_str(&cli.ok(&["site", "list", "--json"])).unwrap();
    assert_eq!(
        sites,
        serde_json::json!([
            {"name": "cabin", "hostnames": ["cabin.example.org"]},
            {"name": "home", "hostnames": ["ha.example.org"]},
        ])
    );
    // The connector cabin's token made is listed by `client list --json`.
    let clients = cli.list();
    assert!(
        clients
            .iter()
            .any(|c| c["site"] == "cabin" && c["name"] == token.connector_id.as_str()),
        "{clients:?}"
    );
}

#[test]
fn client_list_expiring_shows_only_live_certificates_expiring_within() {
    let cli = Cli::new();
    cli.ok(&["site", "add", "home", "--hostname", "ha.example.org"]);
    let out = cli.path("out");
    for (name, days) in [("soon", "10"), ("later", "730"), ("gone", "5")] {
        cli.ok(&[
            "client",
            "add",
            name,
            "--site",
            "home",
            "--days",
            days,
            "--out",
            &out,
            "--password",
            "pw-123456",
        ]);
    }
    cli.ok(&["client", "revoke", "gone", "--site", "home"]);
    let listed: Vec<serde_json::Value> =
        serde_json::from_str(&cli.ok(&["client", "list", "--json", "--expiring", "30d"])).unwrap();
    let names: Vec<&str> = listed.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["soon"], "{listed:?}");
    let table = cli.ok(&["client", "list", "--expiring", "800d"]);
    assert!(table.contains("soon") && table.contains("later"), "{table}");
    assert!(!table.contains("gone"), "{table}");
    let table = cli.ok(&["client", "list", "--expiring", "1d"]);
    assert_eq!(table.lines().count(), 1, "only the header: {table}");
    let err = cli.fails(&["client", "list", "--expiring", "soon"]);
    assert!(err.contains("--expiring"), "{err}");
}

#[test]
fn site_remove_revokes_and_deletes_and_needs_yes_without_a_terminal() {
    let cli = Cli::new();
    cli.ok(&["site", "add", "home", "--hostname", "ha.example.org"]);
    cli.ok(&[
        "site",
        "add",
        "cabin",
        "--hostname",
        "cabin.example.org",
        "--token",
    ]);
    cli.ok(&["site", "token", "home"]);
    let out = cli.path("out");
    for (name, site) in [("phone", "home"), ("laptop", "cabin")] {
        cli.ok(&[
            "client",
            "add",
            name,
            "--site",
            site,
            "--out",
            &out,
            "--password",
            "pw-123456",
        ]);
    }
    cli.ok(&[
        "client", "add", "tablet", "--site", "home", "--link", "--no-qr",
    ]);
    let home_dir = cli.state.join("sites").join("home");
    assert!(home_dir.is_dir());

    // stdin is not a terminal (null): refused, nothing changed.
    let err = cli.fails(&["site", "remove", "home"]);
    assert!(err.contains("--yes"), "{err}");
    assert!(home_dir.is_dir());
    assert!(cli.list().iter().all(|c| c["revoked_at"].is_null()));

    let err = cli.fails(&["site", "remove", "nowhere", "--yes"]);
    assert!(err.contains("nowhere"), "{err}");

    let printed = cli.ok(&["site", "remove", "home", "--yes"]);
    assert!(printed.contains("revoked 3 certificate(s)"), "{printed}");
    assert!(!home_dir.exists());
    let sites: serde_json::Value =
        serde_json::from_str(&cli.ok(&["site", "list", "--json"])).unwrap();
    assert_eq!(
        sites,
        serde_json::json!([{"name": "cabin", "hostnames": ["cabin.example.org"]}])
    );
    // Every certificate of home is revoked (the record stays); cabin's are untouched.
    for c in cli.list() {
        match c["site"].as_str() {
            Some("home") => assert!(c["revoked_at"].is_string(), "{c}"),
            _ => assert!(c["revoked_at"].is_null(), "{c}"),
        }
    }
    // Its pending enrollment codes are revoked; the pending device link is gone.
    let codes = cli.ok(&["site", "codes"]);
    assert!(codes.contains("\thome\trevoked\t"), "{codes}");
    for line in codes.lines().filter(|l| l.contains("\thome\t")) {
        assert!(!line.contains("pending"), "{codes}");
    }
    let links = cli.state.join("links");
    let left = std::fs::read_dir(&links)
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0);
    assert_eq!(left, 0, "links left in {}", links.display());
    // The site can be added again from scratch.
    cli.ok(&["site", "add", "home", "--hostname", "ha.example.org"]);
}

#[test]
fn client_add_prints_stable_json() {
    let cli = Cli::new();
    cli.ok(&["site", "add", "home", "--hostname", "ha.example.org"]);
    let out = cli.path("out");
    let added: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "client", "add", "phone", "--site", "home", "--out", &out, "--json",
    ]))
    .unwrap();
    assert_eq!(added["site"], "home");
    assert_eq!(added["name"], "phone");
    assert!(added["link"].is_null(), "{added}");
    // The serial and expiry are those `client list` records.
    let listed = cli.list();
    let entry = listed.iter().find(|e| e["name"] == "phone").unwrap();
    assert_eq!(added["serial"], entry["serial"]);
    assert_eq!(added["not_after"], entry["not_after"]);
    // The files are where it says, and the generated password opens the .p12.
    let password = added["password"].as_str().unwrap();
    for (key, ext) in [
        ("p12", "p12"),
        ("mobileconfig", "mobileconfig"),
        ("crt", "crt"),
        ("key", "key"),
    ] {
        let path = added["files"][key].as_str().unwrap();
        assert_eq!(
            Path::new(path),
            Path::new(&out).join(format!("phone.{ext}"))
        );
        assert!(Path::new(path).exists(), "{path}");
    }
    let p12 = added["files"]["p12"].as_str().unwrap();
    let imported = openssl(&[
        "pkcs12",
        "-in",
        p12,
        "-passin",
        &format!("pass:{password}"),
        "-nokeys",
        "-legacy",
    ]);
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );

    // A given password is not echoed back.
    let given: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "client",
        "add",
        "laptop",
        "--site",
        "home",
        "--out",
        &out,
        "--password",
        "correct-horse-battery",
        "--json",
    ]))
    .unwrap();
    assert!(given["password"].is_null(), "{given}");

    // --link: the link instead of files, and no QR code in the JSON output.
    let linked: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "client", "add", "tablet", "--site", "home", "--link", "--port", "8443", "--qr", "--json",
    ]))
    .unwrap();
    assert!(linked["files"].is_null(), "{linked}");
    let url = linked["link"]["url"].as_str().unwrap();
    assert!(url.starts_with("https://ha.example.org:8443/"), "{url}");
    assert!(linked["link"]["expires"].as_str().is_some(), "{linked}");
    assert!(linked["password"].as_str().is_some(), "{linked}");
    assert_eq!(linked["name"], "tablet");

    // A refusal stays an error with nothing on stdout.
    let refused = cli.run(&[
        "client", "add", "phone", "--site", "home", "--out", &out, "--json",
    ]);
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty());
}

/// Eight `site code` processes at once against one state directory (as the CLI and a running
/// edge write it at once): every code is recorded, none lost to another writer.
#[test]
fn concurrent_site_code_processes_lose_no_code() {
    let cli = Cli::new();
    cli.ok(&["site", "add", "home", "--hostname", "ha.example.org"]);
    let children: Vec<std::process::Child> = (0..8)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_doorless-edge"))
                .args(["site", "code", "home", "--state-dir"])
                .arg(&cli.state)
                .env_remove("DOORLESS_STATE_DIR")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listed = cli.ok(&["site", "code", "home", "--list"]);
    let pending = listed.lines().filter(|l| l.contains("\tpending\t")).count();
    assert_eq!(pending, 1 + 8, "{listed}");
}

/// A code carries the edge's real HTTPS port: `listen.https` of the configuration (`--config`),
/// left out when it is 443; `--edge` still wins. Renewal codes too.
#[test]
fn codes_carry_the_https_port_of_the_configuration() {
    let cli = Cli::new();
    let config = |name: &str, https: &str| {
        let path = cli.dir.join(name);
        std::fs::write(
            &path,
            format!(
                "state_dir = \"{}\"\n[listen]\nhttps = \"{https}\"\ntunnel = \"0.0.0.0:8443\"\n",
                cli.state.display()
            ),
        )
        .unwrap();
        path.to_str().unwrap().to_owned()
    };
    let on_8443 = config("edge-8443.toml", "0.0.0.0:8443");
    let on_443 = config("edge-443.toml", "[::]:443");
    let code_in = |stdout: &str| -> pki::EnrollmentCode {
        let line = stdout
            .lines()
            .map(str::trim)
            .find(|l| l.contains("/1-") && !l.contains(' '))
            .unwrap_or_else(|| panic!("no code printed:\n{stdout}"));
        pki::EnrollmentCode::parse(line).unwrap()
    };

    let added: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "site",
        "add",
        "home",
        "--hostname",
        "ha.example.org",
        "--config",
        &on_8443,
        "--json",
    ]))
    .unwrap();
    let code = pki::EnrollmentCode::parse(added["code"]["code"].as_str().unwrap()).unwrap();
    assert_eq!((code.host(), code.port()), ("ha.example.org", 8443));
    assert_eq!(code.edge(), "ha.example.org:8443");

    let code = code_in(&cli.ok(&["site", "code", "home", "--config", &on_8443]));
    assert_eq!(code.edge(), "ha.example.org:8443");
    let code = code_in(&cli.ok(&["site", "code", "home", "--config", &on_443]));
    assert_eq!(code.edge(), "ha.example.org");
    let code = code_in(&cli.ok(&[
        "site",
        "code",
        "home",
        "--config",
        &on_8443,
        "--edge",
        "edge.example.net:9443",
    ]));
    assert_eq!(code.edge(), "edge.example.net:9443");

    // A renewal code for a connector, likewise.
    let token = token_in(&cli.ok(&["site", "token", "home"]));
    let code = code_in(&cli.ok(&[
        "client",
        "renew",
        &token.connector_id,
        "--site",
        "home",
        "--config",
        &on_8443,
    ]));
    assert_eq!(code.edge(), "ha.example.org:8443");
    // Options that only package a device's files mean nothing for a connector: refused,
    // nothing minted.
    let before = cli.ok(&["site", "code", "home", "--list"]);
    let err = cli.fails(&[
        "client",
        "renew",
        &token.connector_id,
        "--site",
        "home",
        "--password",
        "correct-horse-battery",
    ]);
    assert!(err.contains("--password only apply to devices"), "{err}");
    assert_eq!(cli.ok(&["site", "code", "home", "--list"]), before);

    // A configuration that does not load is an error, not a silent 443.
    let broken = cli.path("broken.toml");
    std::fs::write(&broken, "[listen]\nhttps = \"not an address\"\n").unwrap();
    let err = cli.fails(&["site", "code", "home", "--config", &broken]);
    assert!(err.contains("broken.toml"), "{err}");
}
