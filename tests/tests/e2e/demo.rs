//! `doorless-edge demo`: the one command a new user runs first.

use std::time::Duration;

use e2e::{Demo, HttpVersion};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::{assert_refused, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_prints_working_commands_and_serves_the_page_and_websocket() {
    let demo = Demo::start().await.unwrap();
    let host = demo.field("host").unwrap();
    let https = demo.addr("https").unwrap();
    let ca = std::fs::read(demo.field("ca").unwrap()).unwrap();
    let cert_pem = std::fs::read_to_string(demo.field("cert").unwrap()).unwrap();
    let key_pem = std::fs::read_to_string(demo.field("key").unwrap()).unwrap();

    // The ready file is written after the instructions are printed.
    let stdout = demo.stdout();
    let curl_ok = demo.field("curl_ok").unwrap();
    let curl_refused = demo.field("curl_refused").unwrap();
    assert!(
        stdout.contains(&curl_ok),
        "stdout lacks the working curl command:\n{stdout}"
    );
    assert!(
        stdout.contains(&curl_refused),
        "stdout lacks the refused curl command:\n{stdout}"
    );
    assert!(
        curl_ok.contains("--cert") && curl_ok.contains("--key"),
        "{curl_ok}"
    );
    assert!(!curl_refused.contains("--cert"), "{curl_refused}");

    let device = e2e::pem_identity(cert_pem, key_pem);
    let url = format!("https://{host}:{}/", https.port());
    for version in [HttpVersion::Http1, HttpVersion::Auto] {
        let mut builder = e2e::client_builder(&ca, &host, https, Some(&device)).unwrap();
        if version == HttpVersion::Http1 {
            builder = builder.http1_only();
        }
        let (status, body) = get(&builder.build().unwrap(), &url).await;
        assert_eq!(status, 200, "{version:?}");
        assert!(String::from_utf8_lossy(&body).contains(standin::PAGE_TITLE));
    }
    let no_cert = e2e::client_builder(&ca, &host, https, None)
        .unwrap()
        .build()
        .unwrap();
    assert_refused(&no_cert, &url).await;

    // The page's WebSocket works through the demo tunnel.
    let mut ws = e2e::ws_connect(&ca, &host, https, Some(&device))
        .await
        .unwrap();
    ws.send(Message::text("demo")).await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echo, Message::text("demo"));

    // The printed commands themselves, when curl is installed (it is not a prerequisite of
    // the test suite, so its absence is only noted).
    match run_curl(&curl_ok).await {
        Some((status, out, err)) => {
            assert!(status.success(), "{curl_ok}\n{status}\n{out}\n{err}");
            assert!(out.contains(standin::PAGE_TITLE), "{curl_ok}\n{out}\n{err}");
            let (status, out, err) = run_curl(&curl_refused).await.unwrap();
            assert!(!status.success(), "{curl_refused} succeeded:\n{out}");
            assert!(
                !out.contains(standin::PAGE_TITLE),
                "{curl_refused}\n{out}\n{err}"
            );
        }
        None => eprintln!("curl not installed: the printed commands were not run"),
    }

    // product.md: the demo also prints a .p12 path to import into a browser.
    assert!(
        stdout.contains(".p12"),
        "the demo prints no .p12 path for a browser import:\n{stdout}"
    );
}

/// Runs a printed `curl ...` command line (split on whitespace; the demo's paths have none).
async fn run_curl(command: &str) -> Option<(std::process::ExitStatus, String, String)> {
    let mut words = command.split_whitespace();
    assert_eq!(words.next(), Some("curl"), "{command}");
    let mut args: Vec<&str> = vec!["--silent", "--show-error", "--max-time", "20"];
    args.extend(words);
    let curl = std::path::Path::new("curl");
    match e2e::run_to_exit(curl, &args, &[], Duration::from_secs(30)).await {
        Ok(result) => Some(result),
        Err(error) if format!("{error:#}").contains("spawning") => None,
        Err(error) => panic!("{command}: {error:#}"),
    }
}
