//! The README's "Setting it up for real", followed literally on loopback: the commands are
//! read from README.md's blocks marked `<!-- readme-e2e: STEP -->` and run against the real
//! binaries, so the README and the binaries cannot drift apart (a renamed flag, a changed
//! output, a step that no longer works fails here).
//!
//! What is substituted, and why (nothing else is):
//! - `build`, `copy`: the harness has built the binaries already; the test checks that the
//!   README builds package `edge` and copies the `doorless-edge` file cargo makes, then runs
//!   that file where it is.
//! - the hostname `ha.example.com` becomes [`HOST`] (a reserved `.test` name that resolves
//!   nowhere), and the commands that reach the VPS by name get loopback instead: curl
//!   `--resolve HOST:PORT:127.0.0.1`; the connector, the enrollment code setup printed with its
//!   host replaced by `127.0.0.1` (standing in for DNS; the code is first checked to name
//!   `HOST:PORT`), so the edge tells it the tunnel at `127.0.0.1:PORT`.
//! - `setup` gets `--yes --no-systemd` (no systemd in tests), a temp `--state-dir` and
//!   `--config`, loopback listeners (HTTPS and the tunnel on free ports, so the code and the
//!   enrolled connector carry them), and `--no-acme` in place of `--email ADDR` (ACME has its
//!   own tests with pebble, tests/tests/e2e/acme.rs).
//! - `run` (the command setup printed) gets `--ready-file`; the connector, `--ready-file`, an
//!   admin listener on port 0 and a temp `DOORLESS_STATE_DIR`; its `DOORLESS_UPSTREAM` is the
//!   stand-in Home Assistant.
//! - `client add --link` gets `--port` (the HTTPS listener is not on 443; setup prints it so)
//!   and `--out DIR` (the README's working directory on the VPS), which must stay empty. The phone that scans the QR code is a
//!   certificate-less client that opens the printed link, downloads the `.p12` the page offers,
//!   imports it with `openssl pkcs12 -legacy` and the printed password, and curls with it: 200.
//! - curl gets `--resolve` to loopback, the local CA (no ACME) and
//!   `-sS -o /dev/null -w %{http_code}`; the README's certificate-less check must then fail in
//!   the handshake.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::{Spawned, StandIn, binaries, run_to_exit};

/// The README's hostname and the one the test uses instead.
const README_HOST: &str = "ha.example.com";
const HOST: &str = "ha.readme.test";
/// What setup prints before the connector command for installs without the add-on.
const NOT_ADDON: &str = "Not on Home Assistant OS?";

/// What `client add --link` prints before the link and before the password.
const LINK_HEADING: &str = "Open this link on the device (once; valid until ";
const PASSWORD_HEADING: &str =
    "Password of the certificate (shown only now, stored nowhere; not in the link):";
/// How long the edge may take to notice a link made or used up (it promises a second; the
/// machine running the tests may be loaded).
const LINK_DEADLINE: Duration = Duration::from_secs(20);

/// The steps, in the README's order.
const STEPS: &[&str] = &["build", "copy", "setup", "connector", "device", "curl"];

/// One marked command: its step name and words (shell quoting removed).
#[derive(Debug)]
struct Step {
    name: String,
    env: Vec<(String, String)>,
    argv: Vec<String>,
}

/// Reads the marked blocks: `<!-- readme-e2e: NAME -->`, then a ```sh fence with one command
/// (backslash continuations joined).
fn readme_steps(readme: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- readme-e2e:")
            .and_then(|l| l.strip_suffix("-->"))
        else {
            continue;
        };
        let fence = lines.by_ref().find(|l| !l.trim().is_empty());
        assert_eq!(
            fence.map(str::trim),
            Some("```sh"),
            "step {name}: the marker must precede a ```sh block"
        );
        let mut command = String::new();
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            command.push_str(line.trim_end().trim_end_matches('\\'));
            command.push(' ');
        }
        let words = shell_words(&command);
        let split = words
            .iter()
            .position(|w| !is_assignment(w))
            .unwrap_or(words.len());
        let env = words[..split]
            .iter()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        steps.push(Step {
            name: name.trim().to_owned(),
            env,
            argv: words[split..].to_vec(),
        });
    }
    steps
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(k, _)| {
        !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
    })
}

/// Splits a command line as sh does for what the README uses: whitespace, single and double
/// quotes. Anything fancier (expansions, pipes) is refused so the README stays followable.
pub(super) fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_default().push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                word.get_or_insert_default();
            }
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, '$' | '|' | ';' | '&' | '`' | '<' | '>') => {
                panic!("README command uses shell syntax the test does not follow: {line}")
            }
            (None, c) => word.get_or_insert_default().push(c),
        }
    }
    assert!(
        quote.is_none(),
        "unbalanced quote in README command: {line}"
    );
    words.extend(word);
    words
}

fn host(word: &str) -> String {
    word.replace(README_HOST, HOST)
}

fn step<'a>(steps: &'a [Step], name: &str) -> &'a Step {
    steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("README has no step {name}"))
}

/// The program of a step must be `want`; returns the arguments.
fn args_of<'a>(step: &'a Step, want: &str) -> &'a [String] {
    assert_eq!(
        step.argv.first().map(String::as_str),
        Some(want),
        "README step {} runs {:?}, expected {want}",
        step.name,
        step.argv
    );
    &step.argv[1..]
}

/// Removes `flag VALUE` from `args`, returning VALUE.
fn take_flag(args: &mut Vec<String>, flag: &str) -> Option<String> {
    let i = args.iter().position(|a| a == flag)?;
    let value = args.get(i + 1).cloned();
    args.drain(i..(i + 2).min(args.len()));
    value
}

pub(super) async fn run_ok(program: &Path, args: &[String], what: &str) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (status, stdout, stderr) = run_to_exit(program, &refs, &[], Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert!(
        status.success(),
        "{what}: {} {args:?}: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        program.display()
    );
    stdout
}

/// The line after `heading` that is not empty, trimmed.
pub(super) fn line_after(text: &str, heading: &str) -> String {
    text.lines()
        .skip_while(|l| !l.contains(heading))
        .skip(1)
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .unwrap_or_else(|| panic!("no line after {heading:?} in:\n{text}"))
}

pub(super) fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("binding a TCP port: {e}"))
}

/// The enrollment code setup printed: the line that is only a code.
pub(super) fn printed_code(printed: &str) -> Option<pki::EnrollmentCode> {
    printed
        .lines()
        .map(str::trim)
        .filter(|l| l.contains("/1-") && !l.contains(' '))
        .find_map(|l| pki::EnrollmentCode::parse(l).ok())
}

pub(super) fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("binding a UDP port: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_setup_path_works_on_loopback() {
    e2e::init();
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme_path).unwrap();
    let steps = readme_steps(&readme);
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, STEPS, "the README's marked steps");

    // build + copy: the README builds the package whose binary the harness runs, and copies
    // the file cargo writes.
    let build = args_of(step(&steps, "build"), "cargo");
    assert_eq!(
        build.first().map(String::as_str),
        Some("build"),
        "{build:?}"
    );
    assert!(
        build.windows(2).any(|w| w[0] == "-p" && w[1] == "edge"),
        "README builds {build:?}, not package edge"
    );
    assert!(build.iter().any(|a| a == "--release"), "{build:?}");
    let copy = args_of(step(&steps, "copy"), "scp");
    let edge_bin = &binaries().edge;
    let copied = PathBuf::from(copy.first().cloned().unwrap_or_default());
    assert_eq!(
        copied,
        Path::new("target/release").join(edge_bin.file_name().unwrap()),
        "the README copies {copied:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("edge.toml");
    let out = dir.path().join("home-of-root");
    std::fs::create_dir(&out).unwrap();
    let tunnel_port = free_udp_port();
    let https_port = free_tcp_port();
    let started = Instant::now();

    // setup
    let setup_step = step(&steps, "setup");
    let mut setup: Vec<String> = args_of(setup_step, "doorless-edge")
        .iter()
        .map(|a| host(a))
        .collect();
    assert!(setup_step.env.is_empty(), "{setup_step:?}");
    assert_eq!(setup.first().map(String::as_str), Some("setup"));
    assert!(
        take_flag(&mut setup, "--email").is_some(),
        "the README's setup gives --email: {setup:?}"
    );
    let test_flags = [
        "--yes".to_owned(),
        "--no-systemd".to_owned(),
        "--no-acme".to_owned(),
        "--state-dir".to_owned(),
        state.display().to_string(),
        "--config".to_owned(),
        config.display().to_string(),
        "--https".to_owned(),
        format!("127.0.0.1:{https_port}"),
        "--tunnel".to_owned(),
        format!("127.0.0.1:{tunnel_port}"),
        "--admin".to_owned(),
        "127.0.0.1:0".to_owned(),
    ];
    setup.extend(test_flags);
    let printed = run_ok(edge_bin, &setup, "setup").await;
    let code = printed_code(&printed)
        .unwrap_or_else(|| panic!("setup printed no enrollment code:\n{printed}"))
        .encode();
    assert!(
        code.starts_with(&format!("{HOST}:{https_port}/1-")),
        "the code names the HTTPS listener: {code}"
    );
    let codes = pki::StateDir::open(&state).unwrap().codes().unwrap();
    assert_eq!(codes.len(), 1, "{codes:?}");
    assert_eq!(codes[0].current_state(), pki::CodeState::Pending);
    let site = codes[0].site.clone();
    // The order the README promises: the connector's code, then the first device.
    let code_at = printed.find(&code).unwrap();
    let device_at = printed.find("first device").unwrap();
    assert!(code_at < device_at, "{printed}");

    // Run again: reports what exists, mints nothing, changes nothing, says how to mint.
    let config_before = std::fs::read(&config).unwrap();
    let again = run_ok(edge_bin, &setup, "setup again").await;
    assert!(
        printed_code(&again).is_none() && !again.contains("/1-"),
        "a second run minted a code:\n{again}"
    );
    assert!(again.contains("exists"), "{again}");
    assert!(again.contains(&format!("site code {site}")), "{again}");
    assert_eq!(std::fs::read(&config).unwrap(), config_before);
    let state_now = pki::StateDir::open(&state).unwrap();
    assert_eq!(state_now.codes().unwrap().len(), 1, "a second code");
    assert!(
        state_now.clients().unwrap().is_empty(),
        "a connector before enrolling"
    );

    // The edge, with the exact command setup printed (no systemd here).
    let run_line = line_after(&printed, "Run the edge with:");
    let mut run = shell_words(&run_line);
    assert_eq!(run.remove(0), edge_bin.display().to_string(), "{run_line}");
    let edge = Spawned::start("edge", edge_bin, &run, &[]).await.unwrap();
    let https = edge.addr("https").unwrap();
    assert_eq!(https.port(), https_port);
    assert_eq!(edge.addr("tunnel").unwrap().port(), tunnel_port);

    // The connector: the README's command is the one setup printed, and enrolls with the
    // code setup printed.
    let ha = StandIn::start().await.unwrap();
    let connector_step = step(&steps, "connector");
    let connector_args = args_of(connector_step, "doorless-connector").to_vec();
    let setup_said = shell_words(
        printed
            .lines()
            .find_map(|l| l.strip_prefix(NOT_ADDON))
            .unwrap_or_else(|| panic!("setup printed no {NOT_ADDON:?} line:\n{printed}")),
    );
    let env_keys = |words: &[String]| -> Vec<String> {
        words
            .iter()
            .take_while(|w| is_assignment(w))
            .filter_map(|w| w.split_once('=').map(|(k, _)| k.to_owned()))
            .collect()
    };
    let readme_keys: Vec<String> = connector_step.env.iter().map(|(k, _)| k.clone()).collect();
    let setup_argv: Vec<String> = setup_said
        .iter()
        .skip_while(|w| is_assignment(w))
        .cloned()
        .collect();
    assert_eq!(
        (readme_keys, &connector_step.argv),
        (env_keys(&setup_said), &setup_argv),
        "README's connector command vs setup's"
    );
    let connector_state = dir.path().join("connector-state");
    let mut env = Vec::new();
    for (key, value) in &connector_step.env {
        let value = match key.as_str() {
            "DOORLESS_ENROLLMENT_CODE" => {
                let example = pki::EnrollmentCode::parse(value).unwrap_or_else(|e| {
                    panic!("the README's code {value:?} is no enrollment code: {e}")
                });
                assert_eq!(example.edge(), README_HOST, "the README's code");
                code.replacen(&format!("{HOST}:"), "127.0.0.1:", 1)
            }
            "DOORLESS_UPSTREAM" => format!("http://{}", ha.addr),
            other => panic!("the README's connector sets {other}, which the test does not know"),
        };
        env.push((key.clone(), value));
    }
    env.push((
        "DOORLESS_STATE_DIR".into(),
        connector_state.display().to_string(),
    ));
    env.push(("DOORLESS_LISTEN__ADMIN".into(), "127.0.0.1:0".into()));
    let connector = Spawned::start("connector", &binaries().connector, &connector_args, &env)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", edge.output()));
    // Enrolled: the code is used, the edge told the tunnel's port, and the key stayed home.
    let enrolled = pki::load_enrolled(&connector_state)
        .unwrap()
        .unwrap_or_else(|| panic!("no credentials stored\n{}", connector.output()));
    assert_eq!(enrolled.site, site);
    assert_eq!(enrolled.edges, [format!("127.0.0.1:{tunnel_port}")]);
    let state_now = pki::StateDir::open(&state).unwrap();
    assert_eq!(
        state_now.codes().unwrap()[0].current_state(),
        pki::CodeState::Used
    );
    assert_eq!(state_now.clients().unwrap().len(), 1);

    // The first device: the README's command is the one setup printed (which adds the
    // HTTPS port, not 443 here, and the test's state directory), and makes a link.
    let device_step = step(&steps, "device");
    let mut device: Vec<String> = args_of(device_step, "doorless-edge").to_vec();
    let device_line = line_after(&printed, "Then your first device:");
    let mut expected = shell_words(&device_line);
    assert_eq!(expected.remove(0), edge_bin.display().to_string());
    device.extend([
        "--port".into(),
        https_port.to_string(),
        "--state-dir".into(),
        state.display().to_string(),
    ]);
    assert_eq!(device, expected, "README's device command vs setup's");
    assert!(device.windows(2).any(|w| w[0] == "--site" && w[1] == site));
    assert!(device.iter().any(|a| a == "--link"), "{device:?}");
    let name = device
        .get(2)
        .cloned()
        .unwrap_or_else(|| panic!("no device name in {device:?}"));
    device.extend(["--out".into(), out.display().to_string()]);
    let added = run_ok(edge_bin, &device, "client add --link").await;
    // The README shows the output's headings as the binary prints them.
    for heading in [LINK_HEADING, PASSWORD_HEADING] {
        assert!(added.contains(heading), "client add printed:\n{added}");
        assert!(readme.contains(heading), "the README lacks {heading:?}");
    }
    let url = added
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("https://"))
        .unwrap_or_else(|| panic!("client add printed no link:\n{added}"))
        .to_owned();
    assert!(
        url.starts_with(&format!("https://{HOST}:{https_port}/")),
        "{url}"
    );
    let password = line_after(&added, PASSWORD_HEADING);
    assert!(
        out.read_dir().unwrap().next().is_none(),
        "--link wrote files"
    );

    // The phone: opens the link without a certificate, downloads the .p12 the page offers,
    // imports it with the printed password, and opens Home Assistant with it.
    let server_ca_path = pki::StateDir::open(&state).unwrap().server_ca_path();
    let server_ca = std::fs::read(&server_ca_path).unwrap();
    let bare = e2e::client_builder(&server_ca, HOST, https, None)
        .unwrap()
        .build()
        .unwrap();
    let get = |url: String| {
        let bare = bare.clone();
        async move {
            let response = bare.get(url).send().await.ok()?;
            let status = response.status().as_u16();
            Some((status, response.bytes().await.ok()?))
        }
    };
    // The edge picks the link up within a second.
    let page = e2e::poll_until("the link's page", LINK_DEADLINE, || async {
        get(url.clone()).await.filter(|(status, _)| *status == 200)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", edge.output()));
    let origin = format!("https://{HOST}:{https_port}");
    let p12_href = format!("{}/{name}.p12", url.trim_start_matches(&origin));
    assert!(
        String::from_utf8_lossy(&page.1).contains(&format!("href=\"{p12_href}\"")),
        "the page offers no {p12_href}"
    );
    let (status, p12) = get(format!("{url}/{name}.p12"))
        .await
        .unwrap_or_else(|| panic!("fetching {url}/{name}.p12 failed"));
    assert_eq!(status, 200, "{url}/{name}.p12");
    let p12_path = dir.path().join(format!("{name}.p12"));
    std::fs::write(&p12_path, &p12).unwrap();
    let (cert, key) = (dir.path().join("phone.crt"), dir.path().join("phone.key"));
    for (what, file) in [("-nokeys", &cert), ("-nocerts", &key)] {
        let imported = std::process::Command::new("openssl")
            .args([
                "pkcs12",
                "-legacy",
                "-nodes",
                what,
                "-passin",
                "env:P12_PASSWORD",
            ])
            .arg("-in")
            .arg(&p12_path)
            .arg("-out")
            .arg(file)
            .env("P12_PASSWORD", &password)
            .output()
            .unwrap();
        assert!(
            imported.status.success(),
            "openssl pkcs12 -legacy {what}: {}",
            String::from_utf8_lossy(&imported.stderr)
        );
    }
    let curl_to = |url: &str, extra: &[String]| -> Vec<String> {
        let mut args = vec![
            host(url).replacen(HOST, &format!("{HOST}:{https_port}"), 1),
            "--resolve".into(),
            format!("{HOST}:{https_port}:127.0.0.1"),
            "--cacert".into(),
            server_ca_path.display().to_string(),
            "-sS".into(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "--max-time".into(),
            "20".into(),
        ];
        args.extend_from_slice(extra);
        args
    };
    let with_cert = curl_to(
        &format!("https://{README_HOST}/"),
        &[
            "--cert".into(),
            cert.display().to_string(),
            "--key".into(),
            key.display().to_string(),
        ],
    );
    let code = run_ok(
        Path::new("curl"),
        &with_cert,
        "curl with the phone's certificate",
    )
    .await;
    let elapsed = started.elapsed();
    assert_eq!(
        code.trim(),
        "200",
        "{with_cert:?}\n{}\n{}",
        edge.output(),
        connector.output()
    );
    assert_eq!(ha.requests(), 1);

    // The README's check from the computer: without a certificate the edge refuses the
    // handshake (once it has noticed the link is used up) and Home Assistant sees nothing.
    let curl_step = step(&steps, "curl");
    let readme_curl = args_of(curl_step, "curl");
    assert!(
        curl_step.env.is_empty() && readme_curl.len() == 1,
        "the README's curl check is one URL: {readme_curl:?}"
    );
    let bare_curl = curl_to(&readme_curl[0], &[]);
    let refs: Vec<&str> = bare_curl.iter().map(String::as_str).collect();
    // The handshake reached the edge and failed there: curl's TLS errors (35 handshake,
    // 55/56 send/receive, which of them depends on when the edge's alert arrives), never
    // 7 (nothing listening) or 28 (timeout, the firewall).
    let refused = e2e::poll_until("a refused handshake", LINK_DEADLINE, || async {
        let (status, code, stderr) =
            run_to_exit(Path::new("curl"), &refs, &[], Duration::from_secs(30))
                .await
                .ok()?;
        (!status.success() && code.trim() == "000").then_some((status.code(), stderr))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", edge.output()));
    assert!(
        matches!(refused.0, Some(35 | 55 | 56)),
        "curl without a certificate: {refused:?}"
    );
    let refused = refused.1;
    eprintln!("curl without a certificate: {}", refused.trim());
    assert_eq!(ha.requests(), 1);

    eprintln!("README path (setup → curl 200) on loopback: {elapsed:.2?}");
}

#[test]
fn shell_words_follow_sh_quoting() {
    assert_eq!(
        shell_words(r#"A='x y' B="z" cmd --f 'a b'  c"#),
        ["A=x y", "B=z", "cmd", "--f", "a b", "c"]
    );
    assert_eq!(
        shell_words("DOORLESS_ENROLLMENT_CODE='ha.example.com/1-AB' x")[0],
        "DOORLESS_ENROLLMENT_CODE=ha.example.com/1-AB"
    );
}

/// Bad input to `setup` changes nothing and says what to do, with the documented exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_refusals_name_the_problem_and_change_nothing() {
    e2e::init();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("edge.toml");
    let (state_s, config_s) = (state.to_str().unwrap(), config.to_str().unwrap());
    let local = [
        "--no-systemd",
        "--state-dir",
        state_s,
        "--config",
        config_s,
        "--https",
        "127.0.0.1:0",
        "--tunnel",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    let setup = |extra: &[&str]| {
        let mut args = vec!["setup"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&local);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_to_exit(&binaries().edge, &refs, &[], Duration::from_secs(60))
            .await
            .unwrap()
    };

    // No terminal (stdin is /dev/null): a missing flag is named, exit 64.
    let (status, _, stderr) = run(setup(&["--no-acme"])).await;
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("missing --hostname"), "{stderr}");
    let (status, _, stderr) = run(setup(&["--hostname", HOST, "--yes"])).await;
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--email"), "{stderr}");
    // All flags but no --yes and no terminal: nobody can confirm.
    let (status, _, stderr) = run(setup(&["--hostname", HOST, "--no-acme"])).await;
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
    // A tunnel on port 0 leaves connectors no fixed port to dial.
    let (status, _, stderr) = run(setup(&["--hostname", HOST, "--no-acme", "--yes"])).await;
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--tunnel"), "{stderr}");
    assert!(
        !state.exists() && !config.exists(),
        "a refusal wrote something"
    );

    // A configuration that differs is named key by key (exit 78) and left alone.
    std::fs::write(&config, "state_dir = \"/elsewhere\"\n").unwrap();
    let mut args = setup(&["--hostname", HOST, "--no-acme", "--yes"]);
    let port = free_udp_port().to_string();
    let tunnel = args.iter().position(|a| a == "--tunnel").unwrap() + 1;
    args[tunnel] = format!("127.0.0.1:{port}");
    // An HTTPS listener on port 0 leaves the code nothing to reach.
    let (status, _, stderr) = run(args.clone()).await;
    assert_eq!(status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--https"), "{stderr}");
    let https = args.iter().position(|a| a == "--https").unwrap() + 1;
    args[https] = format!("127.0.0.1:{}", free_tcp_port());
    let (status, _, stderr) = run(args.clone()).await;
    assert_eq!(status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("state_dir: file has \"/elsewhere\""),
        "{stderr}"
    );
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "state_dir = \"/elsewhere\"\n"
    );
    assert!(!state.exists(), "state made although setup refused");

    // --force replaces it, keeping the old file.
    args.push("--force".into());
    let (status, stdout, stderr) = run(args.clone()).await;
    assert!(status.success(), "{stdout}\n{stderr}");
    assert!(printed_code(&stdout).is_some(), "{stdout}");
    let old = dir.path().join("edge.toml.old");
    assert_eq!(
        std::fs::read_to_string(old).unwrap(),
        "state_dir = \"/elsewhere\"\n"
    );

    // The state directory now tells connectors the hostname's tunnel: another --edge-addr
    // would split the site's connectors, and is refused (78) without minting anything.
    args.extend(["--edge-addr".into(), "elsewhere.test:4443".into()]);
    let (status, stdout, stderr) = run(args).await;
    assert_eq!(status.code(), Some(78), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("--edge-addr elsewhere.test:4443"),
        "{stderr}"
    );
    assert_eq!(
        pki::StateDir::open(&state).unwrap().codes().unwrap().len(),
        1
    );
}
