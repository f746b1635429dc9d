//! The edge's own graceful shutdown (issue 13 item 3): SIGTERM by PID while clients are in the
//! middle of large streamed downloads. The listener closes at once (new requests are refused),
//! every byte already asked for is delivered intact, the tunnel drains toward the connector
//! (`Drain`, streams done and acknowledged, `GoAway`, close), and the edge exits by itself well
//! within `limits.shutdown_grace`.

use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use e2e::{HttpVersion, Stack, StackOptions, poll_until};

/// Big enough that, when the signal arrives, most of it has not left Home Assistant yet: the
/// client reads 4 MiB and then pauses, and the windows on the way (client HTTP, edge and
/// connector QUIC buffers) hold far less than the rest.
const SIZE: u64 = 64 * 1024 * 1024;
/// Long enough for both downloads on a loaded machine, short enough that a drain which waited
/// for the whole grace period instead of for the streams would show.
const GRACE: Duration = Duration::from_secs(40);

/// A download in progress: the response, and what of it has arrived.
struct Download {
    what: &'static str,
    response: reqwest::Response,
    received: u64,
    hash: digest::Context,
}

impl Download {
    async fn start(stack: &Stack, version: HttpVersion, what: &'static str) -> Self {
        let client = stack.client(0, version).unwrap();
        let response = client
            .get(stack.url(&format!("/bytes/{SIZE}")))
            .timeout(Duration::from_secs(300))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{what}");
        Self {
            what,
            response,
            received: 0,
            hash: digest::Context::new(&digest::SHA256),
        }
    }

    /// Reads until at least `until` bytes arrived, or to the end when `until` is `None`.
    async fn read(&mut self, until: Option<u64>, stack: &Stack) {
        while until.is_none_or(|until| self.received < until) {
            let chunk = self.response.chunk().await.unwrap_or_else(|e| {
                panic!(
                    "{}: download cut off after {} of {SIZE} bytes: {e:?}\n{}",
                    self.what,
                    self.received,
                    stack.edge.output()
                )
            });
            let Some(chunk) = chunk else { break };
            self.received += chunk.len() as u64;
            self.hash.update(&chunk);
        }
    }

    fn check(self) {
        assert_eq!(
            self.received,
            SIZE,
            "{}: download short by {} bytes",
            self.what,
            SIZE - self.received
        );
        let hex: String = self
            .hash
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, standin::pattern_sha256(SIZE), "{}", self.what);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sigterm_finishes_downloads_and_refuses_new_requests() {
    let mut stack = Stack::start_with(StackOptions::with_limits(format!(
        "shutdown_grace = \"{}s\"",
        GRACE.as_secs()
    )))
    .await
    .unwrap();
    let https = stack.edge.https_addr();
    // One download over HTTP/2 and one over HTTP/1.1: hyper drains each differently (GOAWAY
    // vs. `Connection: close` after the response).
    let mut h2 = Download::start(&stack, HttpVersion::Auto, "HTTP/2").await;
    let mut h1 = Download::start(&stack, HttpVersion::Http1, "HTTP/1.1").await;
    h2.read(Some(4 << 20), &stack).await;
    h1.read(Some(4 << 20), &stack).await;
    let at_ha = stack.ha_requests();

    stack.edge.terminate().unwrap();
    let signalled = Instant::now();

    // New connections are refused while the downloads are still in flight (they are paused:
    // nothing reads them until the listener is gone).
    let refused_after = poll_until(
        "the HTTPS listener to close",
        Duration::from_secs(10),
        || async {
            tokio::net::TcpStream::connect(https)
                .await
                .is_err()
                .then(|| signalled.elapsed())
        },
    )
    .await
    .unwrap();
    // A new request, even from a client whose HTTP/2 connection is still open (it got GOAWAY),
    // gets no answer from this edge.
    let fresh = stack.client(0, HttpVersion::Auto).unwrap();
    let refused = fresh
        .get(stack.url("/status/200"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a request after SIGTERM was answered: {refused:?}"
    );
    assert!(
        stack.edge.try_wait().is_none(),
        "the edge exited with downloads in flight\n{}",
        stack.edge.output()
    );

    let (_, _) = tokio::join!(h2.read(None, &stack), h1.read(None, &stack));
    let delivered_after = signalled.elapsed();
    h2.check();
    h1.check();
    assert_eq!(
        stack.ha_requests(),
        at_ha,
        "nothing reached Home Assistant after the signal"
    );

    let exit = stack.edge.wait_exit(GRACE).await.unwrap();
    let exited_after = signalled.elapsed();
    eprintln!(
        "edge SIGTERM mid-download: listener closed after {refused_after:?}; both downloads \
         ({SIZE} bytes each, HTTP/2 and HTTP/1.1) intact after {delivered_after:?}; edge exited \
         ({exit}) after {exited_after:?} (grace {GRACE:?})"
    );
    assert!(exit.success(), "{exit}\n{}", stack.edge.output());
    // The edge waited for its streams, not for the grace period.
    assert!(
        exited_after < GRACE,
        "the edge took the whole grace period ({exited_after:?})\n{}",
        stack.edge.output()
    );
    let log = stack.edge.all_text();
    assert!(
        log.contains("every stream finished"),
        "the tunnel did not drain cleanly:\n{log}"
    );
    // The connector stays up and waits for an edge to come back.
    assert!(
        stack.connectors[0].try_wait().is_none(),
        "the connector exited when the edge drained\n{}",
        stack.connectors[0].output()
    );
}
