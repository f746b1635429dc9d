//! Device links: `doorless-edge client add --link` prints a one-time HTTPS link that hands a
//! phone its certificate without a certificate, once, and opens nothing else.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::{CABIN_HOST, HOME_HOST, Pki, Stack, StackOptions, binaries, run_to_exit};

use crate::{assert_no_server_header, get};

const CLI_DEADLINE: Duration = Duration::from_secs(60);
/// How long the edge may take to notice a link made, used up or expired (it promises a
/// second; the machine running the tests may be loaded).
const RELOAD_DEADLINE: Duration = Duration::from_secs(20);

const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 \
                      (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
const ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like \
                       Gecko) Chrome/124.0 Mobile Safari/537.36";
const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0";

/// What `client add --link` printed.
struct Printed {
    url: String,
    password: String,
    stdout: String,
}

async fn add_link(root: &Path, name: &str, extra: &[&str]) -> Printed {
    let mut args = vec![
        "client",
        "add",
        name,
        "--site",
        "home",
        "--link",
        "--state-dir",
        root.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (status, stdout, stderr) = run_to_exit(&binaries().edge, &args, &[], CLI_DEADLINE)
        .await
        .unwrap();
    assert!(status.success(), "{args:?}: {status}\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    let url = lines
        .iter()
        .find(|l| l.starts_with("https://"))
        .unwrap_or_else(|| panic!("no URL printed:\n{stdout}"))
        .to_string();
    let after = lines
        .iter()
        .position(|l| l.starts_with("Password of the certificate"))
        .unwrap_or_else(|| panic!("no password printed:\n{stdout}"));
    let password = lines[after + 1..]
        .iter()
        .find(|l| !l.is_empty())
        .unwrap()
        .to_string();
    assert!(!url.contains(&password), "{url}");
    Printed {
        url,
        password,
        stdout,
    }
}

async fn edge_cli(args: &[&str]) -> String {
    let (status, stdout, stderr) = run_to_exit(&binaries().edge, args, &[], CLI_DEADLINE)
        .await
        .unwrap();
    assert!(status.success(), "{args:?}: {status}\n{stdout}\n{stderr}");
    stdout
}

/// A client for the home site without a certificate.
fn bare_client(stack: &Stack) -> reqwest::Client {
    e2e::client_builder(&stack.server_ca, HOME_HOST, stack.edge.https_addr(), None)
        .unwrap()
        .build()
        .unwrap()
}

/// GET with a User-Agent: status, headers and body, or `None` if TLS refused.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    user_agent: &str,
) -> Option<(u16, reqwest::header::HeaderMap, bytes::Bytes)> {
    let response = client
        .get(url)
        .header(reqwest::header::USER_AGENT, user_agent)
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    assert_no_server_header(&headers);
    Some((status, headers, response.bytes().await.ok()?))
}

/// Polls until a certificate-less GET of `url` answers 200 (the edge has the link).
async fn wait_for_link(client: &reqwest::Client, url: &str) {
    let started = Instant::now();
    loop {
        if let Some((200, ..)) = fetch(client, url, DESKTOP).await {
            return;
        }
        assert!(
            started.elapsed() < RELOAD_DEADLINE,
            "the edge never served {url}"
        );
        tokio::time::sleep(e2e::POLL_INTERVAL * 5).await;
    }
}

/// Polls until a certificate-less handshake to the home site fails again (a new client each
/// time: a connection made while the link was pending stays up, though it only ever gets the
/// bare denial).
async fn wait_for_mandatory(stack: &Stack, url: &str) {
    let started = Instant::now();
    while fetch(&bare_client(stack), url, DESKTOP).await.is_some() {
        assert!(
            started.elapsed() < RELOAD_DEADLINE,
            "certificates never became mandatory again"
        );
        tokio::time::sleep(e2e::POLL_INTERVAL * 5).await;
    }
}

/// The `href`s of the page's links, in order.
fn hrefs(html: &str) -> Vec<String> {
    html.split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(h, _)| h.to_owned()))
        .collect()
}

/// `doorless_edge_enrollments_total{kind="device",result=...}`.
async fn link_metric(stack: &Stack, result: &str) -> u64 {
    let text = reqwest::get(format!("http://{}/metrics", stack.edge.admin_addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("doorless_edge_enrollments_total{{kind=\"device\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// The whole path: the link serves its page (right file per device), nothing else opens while
/// it is pending, the download gives a `.p12` that imports with `openssl -legacy` and
/// authenticates, and then the link is gone and certificates are mandatory again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_link_installs_once_and_opens_nothing_else() {
    let stack = Stack::start_with(StackOptions {
        sites: 2,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let port = stack.edge.https_addr().port().to_string();
    let root = stack.pki.root().to_owned();
    let printed = add_link(&root, "tablet", &["--port", &port]).await;
    let prefix = format!("https://{HOME_HOST}:{port}/");
    assert!(printed.url.starts_with(&prefix), "{}", printed.url);
    let secret = printed.url[prefix.len()..].to_owned();
    assert!(secret.len() >= 22 && !secret.contains('/'), "{secret}");
    let bare = bare_client(&stack);
    wait_for_link(&bare, &printed.url).await;

    // Listed as pending.
    let list = edge_cli(&["client", "list", "--state-dir", root.to_str().unwrap()]).await;
    assert!(
        list.lines()
            .any(|l| l.contains("tablet") && l.contains("link pending")),
        "{list}"
    );

    // The page, for each kind of device: the right file first, headers strict.
    let p12_href = format!("/{secret}/tablet.p12");
    let profile_href = format!("/{secret}/tablet.mobileconfig");
    for (agent, first) in [
        (IPHONE, &profile_href),
        (ANDROID, &p12_href),
        (DESKTOP, &p12_href),
    ] {
        let (status, headers, body) = fetch(&bare, &printed.url, agent).await.unwrap();
        assert_eq!(status, 200);
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(html.starts_with("<!doctype html>") && html.contains("</html>"));
        let links = hrefs(&html);
        assert_eq!(links.first(), Some(first), "{agent}: {links:?}");
        assert!(
            links.contains(&p12_href) && links.contains(&profile_href),
            "{links:?}"
        );
        assert!(
            !html.contains("<script") && !html.contains("src="),
            "{html}"
        );
        assert!(!html.contains(&printed.password));
        if agent == ANDROID {
            assert!(html.contains("VPN &amp; app user certificate"), "{html}");
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("content-type"), "text/html; charset=utf-8");
        assert_eq!(header("cache-control"), "no-store");
        assert_eq!(header("referrer-policy"), "no-referrer");
        assert_eq!(header("x-content-type-options"), "nosniff");
        assert!(
            header("content-security-policy").starts_with("default-src 'none'"),
            "{headers:?}"
        );
    }

    // While pending, everything else without a certificate gets the bare denial, and
    // nothing reaches a stand-in.
    let before = stack.ha_requests();
    let other_secret = "A".repeat(secret.len());
    let near = format!("{}x", &secret[..secret.len() - 1]);
    for path in [
        "/".to_owned(),
        "/api/states".to_owned(),
        "/api/websocket".to_owned(),
        format!("/{other_secret}"),
        format!("/{near}"),
        format!("/{secret}/"),
        format!("/{secret}/other.txt"),
        format!("/{secret}?x=1"),
        format!("/{secret}/../api/states"),
        format!("/x/{secret}"),
    ] {
        let url = format!("{prefix}{}", path.trim_start_matches('/'));
        let (status, _, body) = fetch(&bare, &url, DESKTOP).await.unwrap();
        assert_eq!(status, 403, "{path}");
        assert!(body.is_empty(), "{path}");
    }
    // POST to the link, and the link under the other site's Host on this connection.
    let response = bare.post(&printed.url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let request =
        format!("GET /{secret} HTTP/1.1\r\nHost: {CABIN_HOST}:{port}\r\nConnection: close\r\n\r\n");
    let raw = e2e::raw_http1(
        &stack.server_ca,
        HOME_HOST,
        stack.edge.https_addr(),
        None,
        request.as_bytes(),
    )
    .await
    .unwrap();
    let raw = e2e::RawResponse::parse(&raw).unwrap();
    assert!(matches!(raw.status, 403 | 421), "{}", raw.status);
    // The other site has no link: its handshake still needs a certificate.
    let cabin = e2e::client_builder(&stack.server_ca, CABIN_HOST, stack.edge.https_addr(), None)
        .unwrap()
        .build()
        .unwrap();
    crate::assert_refused(&cabin, &stack.url_for(1, "/")).await;
    assert_eq!(
        stack.ha_requests(),
        before,
        "a certificate-less request reached HA: {:?}",
        stack.ha_counts()
    );

    // The download: the .p12, once.
    let file_url = format!("{prefix}{secret}/tablet.p12");
    let (status, headers, p12) = fetch(&bare, &file_url, DESKTOP).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/x-pkcs12");
    assert_eq!(
        headers["content-disposition"],
        "attachment; filename=\"tablet.p12\""
    );
    assert_eq!(headers["cache-control"], "no-store");
    // Used up: the page and the file are gone at once (bare denial, or a refused handshake
    // once the edge has reloaded).
    for url in [&printed.url, &file_url] {
        match fetch(&bare, url, DESKTOP).await {
            None => {}
            Some((status, _, body)) => assert!(status == 403 && body.is_empty(), "{status}"),
        }
    }
    wait_for_mandatory(&stack, &stack.url("/")).await;
    assert_eq!(stack.ha_requests(), before);

    // It imports with OpenSSL's legacy provider and the printed password, and authenticates.
    let dir = tempfile::tempdir().unwrap();
    let p12_path = dir.path().join("tablet.p12");
    std::fs::write(&p12_path, &p12).unwrap();
    let openssl = |what: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(["pkcs12", "-legacy", "-in"])
            .arg(&p12_path)
            .args(["-passin", "env:P12_PASSWORD", "-nodes"])
            .args(what)
            .env("P12_PASSWORD", &printed.password)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let cert = openssl(&["-clcerts", "-nokeys"]);
    let key = openssl(&["-nocerts"]);
    let identity =
        e2e::identity_of(&strip_bag_attributes(&cert), &strip_bag_attributes(&key)).unwrap();
    let client = e2e::client_builder(&stack.server_ca, HOME_HOST, stack.edge.https_addr(), None)
        .unwrap()
        .identity(identity)
        .build()
        .unwrap();
    let (status, _) = get(&client, &stack.url("/status/200")).await;
    assert_eq!(status, 200);
    assert_eq!(stack.ha_requests(), before + 1);

    assert_eq!(link_metric(&stack, "download").await, 1);
    assert!(link_metric(&stack, "page").await >= 3);
    let list = edge_cli(&["client", "list", "--state-dir", root.to_str().unwrap()]).await;
    assert!(!list.contains("link pending"), "{list}");
}

/// OpenSSL's `Bag Attributes` lines before the PEM blocks, dropped.
fn strip_bag_attributes(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let mut out = String::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with("-----BEGIN") {
            inside = true;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
        if line.starts_with("-----END") {
            inside = false;
        }
    }
    out.into_bytes()
}

/// An expired link gives nothing, and the site's handshake becomes mandatory again by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_device_link_gives_nothing() {
    let stack = Stack::start().await.unwrap();
    let port = stack.edge.https_addr().port().to_string();
    let root = stack.pki.root().to_owned();
    let printed = add_link(&root, "late", &["--port", &port, "--valid-for", "8s"]).await;
    let bare = bare_client(&stack);
    // Served while pending (so the refusal below is the expiry's doing), then nothing.
    wait_for_link(&bare, &printed.url).await;
    wait_for_mandatory(&stack, &stack.url("/")).await;
    // The expired package is deleted (by the same wake-up that made the handshake mandatory).
    let links = root.join("links");
    assert_eq!(std::fs::read_dir(&links).unwrap().count(), 0, "{links:?}");
    for url in [printed.url.clone(), format!("{}/late.p12", printed.url)] {
        let fresh = bare_client(&stack);
        assert!(fetch(&fresh, &url, DESKTOP).await.is_none(), "{url}");
        // On the connection opened while it was pending (if still up): the bare denial.
        if let Some((status, _, body)) = fetch(&bare, &url, DESKTOP).await {
            assert!(status == 403 && body.is_empty(), "{status}");
        }
    }
    assert_eq!(stack.ha_requests(), 0);
}

/// The CLI: URL on the site's host (port only when not 443), password printed (never in the
/// URL), QR code only on request or a terminal; the link is stored 0600 by hash; `client
/// revoke` deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_add_link_prints_the_url_password_and_qr_code() {
    use std::os::unix::fs::PermissionsExt as _;
    let mut pki = Pki::new().unwrap();
    pki.add_site("home", HOME_HOST).unwrap();
    let root = pki.root().to_owned();

    let plain = add_link(&root, "one", &[]).await;
    assert!(
        plain.url.starts_with(&format!("https://{HOME_HOST}/")),
        "{}",
        plain.url
    );
    assert!(!plain.stdout.contains('▀') && !plain.stdout.contains('█'));
    assert!(plain.password.len() >= 16, "{}", plain.password);

    let drawn = add_link(&root, "two", &["--qr", "--port", "8443"]).await;
    assert!(drawn.url.starts_with(&format!("https://{HOME_HOST}:8443/")));
    assert!(
        drawn.stdout.contains('▀') || drawn.stdout.contains('▄'),
        "{}",
        drawn.stdout
    );
    let quiet = add_link(&root, "three", &["--no-qr"]).await;
    assert!(!quiet.stdout.contains('▀'));

    // On a terminal (a pseudo-terminal by util-linux `script`, where available) the QR code
    // is drawn without asking; `--no-qr` still suppresses it.
    let script = Path::new("/usr/bin/script");
    if script.exists() {
        let on_tty = |name: &str, extra: &str| {
            format!(
                "{} client add {name} --site home --link --state-dir {}{extra}",
                binaries().edge.display(),
                root.display()
            )
        };
        for (name, extra, drawn) in [("four", "", true), ("five", " --no-qr", false)] {
            let command = on_tty(name, extra);
            let (status, stdout, stderr) =
                run_to_exit(script, &["-qec", &command, "/dev/null"], &[], CLI_DEADLINE)
                    .await
                    .unwrap();
            assert!(status.success(), "{command}: {stdout}{stderr}");
            assert!(stdout.contains("https://"), "{stdout}");
            assert_eq!(
                stdout.contains('▀') || stdout.contains('▄'),
                drawn,
                "{stdout}"
            );
            edge_cli(&[
                "client",
                "revoke",
                name,
                "--site",
                "home",
                "--state-dir",
                root.to_str().unwrap(),
            ])
            .await;
        }
    } else {
        eprintln!("no /usr/bin/script: terminal detection not exercised");
    }

    let links: Vec<_> = std::fs::read_dir(root.join("links"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(links.len(), 3);
    for link in &links {
        let text = std::fs::read_to_string(link).unwrap();
        let secret = plain.url.rsplit('/').next().unwrap();
        assert!(!text.contains(secret));
        assert!(!text.contains(&plain.password));
        assert_eq!(
            std::fs::metadata(link).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    edge_cli(&[
        "client",
        "revoke",
        "two",
        "--site",
        "home",
        "--state-dir",
        root.to_str().unwrap(),
    ])
    .await;
    assert_eq!(std::fs::read_dir(root.join("links")).unwrap().count(), 2);
    let list = edge_cli(&["client", "list", "--state-dir", root.to_str().unwrap()]).await;
    assert_eq!(list.matches("link pending").count(), 2, "{list}");
}
