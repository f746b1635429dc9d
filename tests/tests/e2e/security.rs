//! What a client can do with TLS itself, seen through real `openssl s_client` runs against the
//! real edge: no session resumption (a resumed session would skip the certificate check), and
//! nothing in an unauthenticated handshake that names the product or the site.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{HOME_HOST, Stack};

/// How long one `openssl s_client` run may take.
const S_CLIENT_DEADLINE: Duration = Duration::from_secs(20);

/// The output of one finished `openssl s_client` run.
struct SClient {
    /// stdout and stderr, in that order.
    text: String,
}

impl SClient {
    /// Whether the handshake resumed a session (`Reused, TLSv1.x, ...`).
    fn resumed(&self) -> bool {
        self.text.lines().any(|l| l.starts_with("Reused,"))
    }

    /// Whether the handshake was a full one (`New, TLSv1.x, ...`).
    fn new_session(&self) -> bool {
        self.text.lines().any(|l| l.starts_with("New,"))
    }

    /// Whether an HTTP response came back through the connection.
    fn answered(&self) -> bool {
        self.text.contains("HTTP/1.1 ")
    }
}

/// Files an `openssl s_client` run reads and writes.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

/// Runs `openssl s_client` against the edge with SNI `host`, sends `request` and waits (with
/// a deadline, killing the child by its handle) until the server closes.
async fn s_client(edge: std::net::SocketAddr, host: &str, args: &[&str], request: &str) -> SClient {
    let out = tempfile::NamedTempFile::new().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let connect = edge.to_string();
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-connect", &connect, "-servername", host])
        // Keep reading after stdin ends, until the server closes the connection.
        .arg("-ign_eof")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(out.reopen().unwrap())
        .stderr(err.reopen().unwrap());
    let mut child: Child = match command.spawn() {
        Ok(child) => child,
        Err(e) => panic!("`openssl` is needed by this test (apt-get install openssl): {e}"),
    };
    if let Some(mut stdin) = child.stdin.take() {
        // The server may already have closed (a refused handshake): a broken pipe is fine.
        let _ = stdin.write_all(request.as_bytes());
    }
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > S_CLIENT_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("openssl s_client {args:?} did not finish within {S_CLIENT_DEADLINE:?}");
        }
        tokio::time::sleep(e2e::POLL_INTERVAL).await;
    }
    let text = format!(
        "{}{}",
        std::fs::read_to_string(out.path()).unwrap(),
        std::fs::read_to_string(err.path()).unwrap()
    );
    SClient { text }
}

fn get_request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {HOME_HOST}\r\nConnection: close\r\n\r\n")
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

async fn scrape(admin: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

const DENIED_NO_CERT: &str =
    "doorless_edge_tls_handshakes_total{site=\"home\",result=\"denied\",reason=\"no_cert\"}";
const DENIED_EXPIRED: &str =
    "doorless_edge_tls_handshakes_total{site=\"home\",result=\"denied\",reason=\"expired\"}";

/// A session saved from an authenticated connection is never resumed: neither by a client that
/// then presents no certificate (TLS 1.2 session IDs, TLS 1.2 tickets, TLS 1.3 tickets), nor
/// after the certificate expired. Each attempt is a full handshake that demands a certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_sessions_are_never_resumed() {
    let stack = Stack::start().await.unwrap();
    let files = Files::new();
    let ca = files.write("server-ca.pem", &stack.server_ca);
    let device = &stack.home().device;
    let cert = files.write("device.crt", device.cert_pem.as_bytes());
    let key = files.write("device.key", device.key_pem.as_bytes());
    let edge = stack.edge.https_addr();

    for version in ["-tls1_2", "-tls1_3"] {
        let session = files.path(&format!("session{version}.pem"));
        let first = s_client(
            edge,
            HOME_HOST,
            &[
                version,
                "-CAfile",
                path_str(&ca),
                "-cert",
                path_str(&cert),
                "-key",
                path_str(&key),
                "-sess_out",
                path_str(&session),
            ],
            &get_request("/status/200"),
        )
        .await;
        assert!(
            first.new_session() && first.text.contains("HTTP/1.1 200"),
            "{version}: the authenticated request must work:\n{}",
            first.text
        );
        assert!(
            !first.text.contains("TLS session ticket:"),
            "{version}: the edge issued a session ticket:\n{}",
            first.text
        );
        let before = stack.ha_requests();
        let denied_before = metric(&scrape(stack.edge.admin_addr()).await, DENIED_NO_CERT);

        // The same session, offered without a certificate.
        let mut args = vec![version, "-CAfile", path_str(&ca)];
        if session.exists() {
            args.extend(["-sess_in", path_str(&session)]);
        }
        let second = s_client(edge, HOME_HOST, &args, &get_request("/status/200")).await;
        assert!(
            !second.resumed(),
            "{version}: the edge resumed a session:\n{}",
            second.text
        );
        assert!(
            !second.answered(),
            "{version}: answered without a certificate:\n{}",
            second.text
        );
        assert_eq!(
            stack.ha_requests(),
            before,
            "{version}: a request reached HA"
        );
        let denied = metric(&scrape(stack.edge.admin_addr()).await, DENIED_NO_CERT);
        assert_eq!(
            denied,
            denied_before + 1.0,
            "{version}: the attempt must be a full handshake denied for lack of a certificate"
        );
    }
}

/// A device whose certificate expired cannot ride a session saved while it was valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_cannot_resume_its_session() {
    let stack = Stack::start().await.unwrap();
    let files = Files::new();
    let ca = files.write("server-ca.pem", &stack.server_ca);
    // A certificate of the site's real client CA that expires in a few seconds.
    let site = &stack.home().site;
    let client_ca = pki::Ca::load(
        &site.client_ca_path,
        &stack
            .pki
            .root()
            .join("sites")
            .join(&site.name)
            .join("client-ca.key"),
    )
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let not_after = now + time::Duration::seconds(4);
    let short = client_ca
        .issue_client(
            &pki::Identity::device("home", "short-lived").unwrap(),
            pki::Validity {
                not_before: now - time::Duration::hours(1),
                not_after,
            },
            pki::KeyType::EcdsaP256,
        )
        .unwrap();
    let cert = files.write("short.crt", short.cert_pem.as_bytes());
    let key = files.write("short.key", short.key_pem.as_bytes());
    let session = files.path("session.pem");
    let edge = stack.edge.https_addr();
    let with_cert = [
        "-tls1_2",
        "-CAfile",
        path_str(&ca),
        "-cert",
        path_str(&cert),
        "-key",
        path_str(&key),
    ];

    let mut first_args = with_cert.to_vec();
    first_args.extend(["-sess_out", path_str(&session)]);
    let first = s_client(edge, HOME_HOST, &first_args, &get_request("/status/200")).await;
    assert!(
        first.text.contains("HTTP/1.1 200"),
        "the certificate must work while valid:\n{}",
        first.text
    );
    assert!(
        time::OffsetDateTime::now_utc() < not_after,
        "the first connection took too long; the test proves nothing"
    );

    // Wait (polling the clock, with a deadline) until the certificate has expired.
    e2e::poll_until(
        "the certificate to expire",
        Duration::from_secs(30),
        || async {
            (time::OffsetDateTime::now_utc() > not_after + time::Duration::seconds(1)).then_some(())
        },
    )
    .await
    .unwrap();
    let before = stack.ha_requests();
    let metrics = scrape(stack.edge.admin_addr()).await;
    let (expired_before, no_cert_before) = (
        metric(&metrics, DENIED_EXPIRED),
        metric(&metrics, DENIED_NO_CERT),
    );

    // Offering the saved session with the (now expired) certificate, and without any.
    let mut again = with_cert.to_vec();
    if session.exists() {
        again.extend(["-sess_in", path_str(&session)]);
    }
    let with = s_client(edge, HOME_HOST, &again, &get_request("/status/200")).await;
    let mut bare = vec!["-tls1_2", "-CAfile", path_str(&ca)];
    if session.exists() {
        bare.extend(["-sess_in", path_str(&session)]);
    }
    let without = s_client(edge, HOME_HOST, &bare, &get_request("/status/200")).await;
    for (what, run) in [("expired cert", &with), ("no cert", &without)] {
        assert!(
            !run.resumed(),
            "{what}: the edge resumed a session:\n{}",
            run.text
        );
        assert!(!run.answered(), "{what}: answered:\n{}", run.text);
    }
    assert_eq!(stack.ha_requests(), before, "a request reached HA");
    let metrics = scrape(stack.edge.admin_addr()).await;
    assert_eq!(metric(&metrics, DENIED_EXPIRED), expired_before + 1.0);
    assert_eq!(metric(&metrics, DENIED_NO_CERT), no_cert_before + 1.0);
}

/// The bytes of every handshake message `openssl s_client -msg` dumped (its hex lines).
fn msg_bytes(text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in text.lines().filter(|l| l.starts_with("    ")) {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        if tokens
            .iter()
            .all(|t| t.len() == 2 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            bytes.extend(tokens.iter().filter_map(|t| u8::from_str_radix(t, 16).ok()));
        }
    }
    bytes
}

fn contains_ignore_case(haystack: &[u8], needle: &str) -> bool {
    let needle = needle.as_bytes();
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// A scanner without a certificate, over TLS 1.2 and 1.3, with the right SNI, a wrong one and
/// none, sees nothing that names the product or the site: not in the CertificateRequest's CA
/// names, not in the server certificate's subject or issuer, not anywhere in the handshake.
/// The CA hint list is still there (browsers pick the right certificate by it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_handshake_names_neither_product_nor_site() {
    const SITE: &str = "secretsite";
    const HOST: &str = "ha.example.test";
    let mut pki = e2e::Pki::new().unwrap();
    let site = pki.add_site(SITE, HOST).unwrap();
    let edge = e2e::Edge::start(pki.root()).await.unwrap();
    // The device CA's subject as s_client prints it (`CN = ...`).
    let subject = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&site.client_ca_path)
        .output()
        .unwrap();
    let subject = String::from_utf8(subject.stdout).unwrap();
    let hint = subject.trim().strip_prefix("subject=").unwrap().to_owned();
    assert!(hint.starts_with("CN = "), "{hint}");

    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    for version in ["-tls1_2", "-tls1_3"] {
        for sni in [Some(HOST), Some("other.example.test"), None] {
            let mut args = vec![version, "-msg", "-showcerts"];
            if sni.is_none() {
                args.push("-noservername");
            }
            let run = s_client(edge.https_addr(), sni.unwrap_or(HOST), &args, &request).await;
            let wire = msg_bytes(&run.text);
            for word in ["doorless", SITE] {
                assert!(
                    !contains_ignore_case(run.text.as_bytes(), word)
                        && !contains_ignore_case(&wire, word),
                    "{version} SNI {sni:?}: the handshake shows {word:?}:\n{}",
                    run.text
                );
            }
            assert!(!run.answered(), "{version}: answered:\n{}", run.text);
            if sni == Some(HOST) {
                assert!(
                    wire.len() > 500,
                    "{version}: -msg dumped no handshake:\n{}",
                    run.text
                );
                // The device CA is hinted (TLS 1.3 completes the client's side of the handshake,
                // so s_client prints the list).
                if version == "-tls1_3" {
                    assert!(
                        run.text.contains("Acceptable client certificate CA names")
                            && run.text.contains(&hint),
                        "{version}: the device CA {hint:?} is not hinted:\n{}",
                        run.text
                    );
                }
            }
        }
    }
}
