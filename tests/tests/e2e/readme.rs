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
//! - `client add` gets `--out DIR` (the README's working directory on the VPS); `fetch` (scp
//!   back) checks that the files it names were written there; curl gets those paths, the
//!   local CA (no ACME) and `-sS -o /dev/null -w %{http_code}`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::{Spawned, StandIn, binaries, run_to_exit};

/// The README's hostname and the one the test uses instead.
const README_HOST: &str = "ha.example.com";
const HOST: &str = "ha.readme.test";
/// What setup prints before the connector command for installs without the add-on.
const NOT_ADDON: &str = "Not on Home Assistant OS?";

/// The steps, in the README's order.
const STEPS: &[&str] = &[
    "build",
    "copy",
    "setup",
    "connector",
    "device",
    "fetch",
    "curl",
];

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

    // The first device: the README's command is the one setup printed.
    let device_step = step(&steps, "device");
    let mut device: Vec<String> = args_of(device_step, "doorless-edge").to_vec();
    let device_line = line_after(&printed, "Then your first device:");
    let mut expected = shell_words(&device_line);
    assert_eq!(expected.remove(0), edge_bin.display().to_string());
    let mut readme_device = device.clone();
    readme_device.extend(["--state-dir".into(), state.display().to_string()]);
    assert_eq!(
        readme_device, expected,
        "README's device command vs setup's"
    );
    assert!(device.windows(2).any(|w| w[0] == "--site" && w[1] == site));
    device.extend([
        "--state-dir".into(),
        state.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ]);
    run_ok(edge_bin, &device, "client add").await;

    // Fetch: the files the README copies off the VPS exist.
    let fetch = args_of(step(&steps, "fetch"), "scp");
    for source in &fetch[..fetch.len() - 1] {
        let (_, file) = source
            .split_once(':')
            .unwrap_or_else(|| panic!("fetch source {source} is not HOST:FILE"));
        assert!(out.join(file).is_file(), "client add wrote no {file}");
    }

    // curl, presenting the device certificate.
    let curl_step = step(&steps, "curl");
    let mut curl: Vec<String> = args_of(curl_step, "curl")
        .iter()
        .map(|a| match a.as_str() {
            "phone.crt" | "phone.key" => out.join(a).display().to_string(),
            url if url.starts_with("https://") => {
                host(url).replacen(HOST, &format!("{HOST}:{}", https.port()), 1)
            }
            other => other.to_owned(),
        })
        .collect();
    let server_ca = pki::StateDir::open(&state).unwrap().server_ca_path();
    curl.extend([
        "--resolve".into(),
        format!("{HOST}:{}:127.0.0.1", https.port()),
        "--cacert".into(),
        server_ca.display().to_string(),
        "-sS".into(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        "--max-time".into(),
        "20".into(),
    ]);
    let code = run_ok(Path::new("curl"), &curl, "curl").await;
    let elapsed = started.elapsed();
    assert_eq!(
        code.trim(),
        "200",
        "{curl:?}\n{}\n{}",
        edge.output(),
        connector.output()
    );
    assert_eq!(ha.requests(), 1);

    // Without the certificate: refused, Home Assistant sees nothing.
    let bare: Vec<String> = curl
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            !(["--cert", "--key"].contains(&a.as_str())
                || (*i > 0 && ["--cert", "--key"].contains(&curl[i - 1].as_str())))
        })
        .map(|(_, a)| a.clone())
        .collect();
    let refs: Vec<&str> = bare.iter().map(String::as_str).collect();
    let (status, code, _) = run_to_exit(Path::new("curl"), &refs, &[], Duration::from_secs(30))
        .await
        .unwrap();
    assert!(!status.success() && code.trim() == "000", "{status} {code}");
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
