//! The ACME engine against a real ACME server: Debian's pebble, validating TLS-ALPN-01 over
//! loopback against a responder that answers from the manager's challenge registry.

mod support;

use std::time::{Duration, SystemTime};

use acme::{
    AcmeConfig, Challenges, Manager, OrderResult, RenewalPolicy, SiteState, SiteStatus, Store,
};
use support::{
    Pebble, PebbleOptions, Responder, TestResult, directory_url, free_port, handshake,
    install_provider, self_signed, state_dir, wait_until,
};

const HOST: &str = "home.acme.test";
const ALT: &str = "alt.acme.test";

fn hosts(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Fast retries so failure tests finish in seconds; everything else as in production.
fn policy() -> RenewalPolicy {
    RenewalPolicy {
        retry_initial: Duration::from_millis(200),
        retry_max: Duration::from_millis(800),
        order_timeout: Duration::from_secs(20),
        request_timeout: Duration::from_secs(5),
        ..RenewalPolicy::default()
    }
}

fn config(directory: &str, ca_pem: &str) -> TestResult<AcmeConfig> {
    Ok(AcmeConfig::new("ops@acme.test")?
        .directory(directory)?
        .extra_roots_pem(ca_pem.as_bytes())?
        .renewal(policy())?)
}

/// A manager plus the responder answering from its registry, and a pebble validating there.
async fn setup(
    options: PebbleOptions,
) -> TestResult<(Pebble, Responder, Manager, tempfile::TempDir)> {
    let (tmp, dir) = state_dir()?;
    let store = Store::open(&dir)?;
    // The responder needs the registry before pebble needs the responder's port.
    let registry = Challenges::default();
    let responder = Responder::start(registry.clone()).await?;
    let pebble = Pebble::start(PebbleOptions {
        tls_port: responder.port,
        ..options
    })
    .await?;
    let manager = Manager::with_challenges(
        config(&pebble.directory(), &pebble.listener_ca_pem)?,
        store,
        registry,
    );
    Ok((pebble, responder, manager, tmp))
}

#[tokio::test]
async fn first_order_issues_a_certificate_that_verifies_against_pebbles_root() -> TestResult {
    install_provider();
    let (pebble, _responder, manager, tmp) = setup(PebbleOptions {
        exact_request_log: true,
        ..PebbleOptions::default()
    })
    .await?;
    let site = manager.start_site("home", &hosts(&[HOST, ALT]))?;
    let mut certs = site.certificate();
    let cert = wait_until(&mut certs, "first certificate", Option::is_some)
        .await?
        .ok_or("no certificate")?;

    // A client that trusts only pebble's root accepts it for both names.
    let root = pebble.root().await?;
    handshake(cert.clone(), &root, HOST).await?;
    handshake(cert.clone(), &root, ALT).await?;
    // ...and not for a name that was not ordered.
    assert!(handshake(cert, &root, "other.acme.test").await.is_err());

    let status = wait_until(&mut site.status(), "valid state", |s| {
        s.state == SiteState::Valid
    })
    .await?;
    assert_eq!(status.orders.get(OrderResult::Issued), 1);
    assert!(status.not_after.is_some_and(|t| t > SystemTime::now()));
    assert!(
        status
            .renew_at
            .is_some_and(|r| status.not_after.is_some_and(|n| r < n))
    );
    // Validation is over: the registry no longer answers for the names.
    assert!(manager.challenges().is_empty());

    // Stored with private modes; the account too.
    let stored = manager.store().load_site("home")?.ok_or("not stored")?;
    assert_eq!(Some(stored.serial.clone()), status.serial);
    assert_eq!(stored.hostnames, hosts(&[HOST, ALT]));
    assert_eq!(
        stored.directory.as_deref(),
        Some(pebble.directory().as_str())
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let acme = tmp.path().join("acme");
        let mode = |p: std::path::PathBuf| -> TestResult<u32> {
            Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
        };
        assert_eq!(mode(acme.join("sites/home/cert.pem"))?, 0o600);
        let accounts: Vec<_> =
            std::fs::read_dir(acme.join("accounts"))?.collect::<Result<_, _>>()?;
        assert_eq!(accounts.len(), 1);
        assert_eq!(mode(accounts[0].path())?, 0o600);
    }
    assert_eq!(pebble.requests("/sign-me-up"), 1, "{}", pebble.log_text());
    Ok(())
}

#[tokio::test]
async fn restart_with_the_same_storage_places_no_new_order() -> TestResult {
    install_provider();
    let (pebble, _responder, manager, _tmp) = setup(PebbleOptions {
        exact_request_log: true,
        ..PebbleOptions::default()
    })
    .await?;
    let first = manager.start_site("home", &hosts(&[HOST]))?;
    wait_until(
        &mut first.certificate(),
        "first certificate",
        Option::is_some,
    )
    .await?;
    let serial = first.status().borrow().serial.clone();
    drop(first);
    let orders = pebble.requests("/order-plz");
    let accounts = pebble.requests("/sign-me-up");
    assert_eq!(orders, 1, "{}", pebble.log_text());

    // "Restart": a new manager on the same directory.
    let restarted = Manager::with_challenges(
        config(&pebble.directory(), &pebble.listener_ca_pem)?,
        Store::open(manager.store().path())?,
        manager.challenges().clone(),
    );
    let site = restarted.start_site("home", &hosts(&[HOST]))?;
    wait_until(
        &mut site.certificate(),
        "stored certificate",
        Option::is_some,
    )
    .await?;
    // Once it asked pebble about ARI (pebble 2.4 has none) it settles without ordering.
    let status = wait_until(&mut site.status(), "settled", |s| {
        s.state == SiteState::Valid && s.ari.is_some()
    })
    .await?;
    assert_eq!(status.serial, serial);
    assert_eq!(status.ari, Some(false));
    assert!(status.orders.iter().all(|(_, n)| n == 0), "{status:?}");
    assert_eq!(
        pebble.requests("/order-plz"),
        orders,
        "{}",
        pebble.log_text()
    );
    assert_eq!(pebble.requests("/sign-me-up"), accounts);
    drop(site);

    // A new hostname for the site is a reason to order, with the stored account.
    let site = restarted.start_site("home", &hosts(&[HOST, ALT]))?;
    let status = wait_until(&mut site.status(), "reordered", |s| {
        s.orders.get(OrderResult::Issued) == 1
    })
    .await?;
    assert_ne!(status.serial, serial);
    assert_eq!(pebble.requests("/order-plz"), orders + 1);
    assert_eq!(pebble.requests("/sign-me-up"), accounts);
    Ok(())
}

#[tokio::test]
async fn a_due_certificate_is_renewed_and_delivered_through_the_watch() -> TestResult {
    install_provider();
    // Six-second certificates: due after four seconds (2/3), minus up to 0.2 s of jitter.
    let (pebble, _responder, manager, _tmp) = setup(PebbleOptions {
        validity_secs: Some(6),
        ..PebbleOptions::default()
    })
    .await?;
    let site = manager.start_site("home", &hosts(&[HOST]))?;
    let mut certs = site.certificate();
    let first = wait_until(&mut certs, "first certificate", Option::is_some)
        .await?
        .ok_or("no certificate")?;
    let root = pebble.root().await?;
    handshake(first.clone(), &root, HOST).await?;
    let first_status = site.status().borrow().clone();

    let second = wait_until(&mut certs, "renewed certificate", |c| {
        c.as_ref()
            .is_some_and(|c| !std::sync::Arc::ptr_eq(c, &first))
    })
    .await?
    .ok_or("no certificate")?;
    assert_ne!(second.cert, first.cert);
    handshake(second, &root, HOST).await?;

    let status = wait_until(&mut site.status(), "second issue counted", |s| {
        s.orders.get(OrderResult::Issued) >= 2
    })
    .await?;
    assert_ne!(status.serial, first_status.serial);
    // The renewal came at its time, not before: no earlier than the first renew_at.
    let renew_at = first_status.renew_at.ok_or("no renew_at")?;
    let attempt = status.last_attempt.ok_or("no attempt")?;
    assert!(
        attempt >= renew_at,
        "renewed at {attempt:?}, due {renew_at:?}"
    );
    // And the new one is on disk.
    let stored = manager.store().load_site("home")?.ok_or("not stored")?;
    assert_eq!(Some(stored.serial), status.serial);
    Ok(())
}

#[tokio::test]
async fn ca_down_at_start_keeps_the_stored_certificate_and_retries_with_backoff() -> TestResult {
    install_provider();
    let (_tmp, dir) = state_dir()?;
    let store = Store::open(&dir)?;
    // A stored certificate that is due (day 60 of 65) but still valid.
    let (chain, key) = self_signed(&[HOST], 60, 5)?;
    let imported = store.import("home", &chain, &key)?;

    // The CA's address is fixed now; nothing listens there yet.
    let port = free_port(false)?;
    let registry = Challenges::default();
    let responder = Responder::start(registry.clone()).await?;
    let ca_pem_holder = support::ListenerCa::new()?;
    let manager = Manager::with_challenges(
        config(&directory_url(port), &ca_pem_holder.ca_pem)?,
        store,
        registry,
    );
    let site = manager.start_site("home", &hosts(&[HOST]))?;

    // The stored certificate is served at once, whatever the CA does.
    let served = wait_until(
        &mut site.certificate(),
        "stored certificate",
        Option::is_some,
    )
    .await?
    .ok_or("no certificate")?;
    assert_eq!(
        served.cert[0].as_ref(),
        imported.certified_key().cert[0].as_ref()
    );

    // Three failures, each typed, each followed by a wait drawn from the backoff window.
    let mut status_rx = site.status();
    let mut seen: Vec<SiteStatus> = Vec::new();
    for failures in 1..=3u32 {
        let status = wait_until(&mut status_rx, "failure", |s| {
            s.consecutive_failures >= failures
        })
        .await?;
        seen.push(status);
    }
    for (i, status) in seen.iter().enumerate() {
        let n = status.consecutive_failures;
        assert_eq!(n as usize, i + 1, "each failure observed: {seen:?}");
        assert_eq!(status.state, SiteState::Failing);
        assert_eq!(status.serial.as_deref(), Some(imported.serial.as_str()));
        let error = status.last_error.as_ref().ok_or("no error")?;
        assert_eq!(error.result, OrderResult::Unreachable, "{}", error.message);
        let wait = status
            .next_attempt
            .ok_or("no next attempt")?
            .duration_since(error.at)?;
        let (low, high) = policy().retry_window(n);
        assert!(
            wait >= low && wait <= high,
            "failure {n}: waits {wait:?}, not in {low:?}..={high:?}"
        );
    }
    assert!(seen[2].orders.get(OrderResult::Unreachable) >= 3);

    // The CA comes up at that address: the next retry gets a certificate.
    let pebble = Pebble::start_with_ca(
        PebbleOptions {
            tls_port: responder.port,
            listen_port: Some(port),
            ..PebbleOptions::default()
        },
        ca_pem_holder,
    )
    .await?;
    let status = wait_until(&mut status_rx, "issued after the CA came up", |s| {
        s.orders.get(OrderResult::Issued) == 1
    })
    .await?;
    assert_eq!(status.consecutive_failures, 0);
    assert_eq!(status.state, SiteState::Valid);
    let cert = site
        .certificate()
        .borrow()
        .clone()
        .ok_or("no certificate")?;
    handshake(cert, &pebble.root().await?, HOST).await?;
    Ok(())
}

#[tokio::test]
async fn an_unsolvable_challenge_is_reported_with_its_reason() -> TestResult {
    install_provider();
    let (pebble, _responder, _manager, _tmp) = setup(PebbleOptions::default()).await?;
    // A second manager whose registry the responder never consults: pebble's validation
    // handshake finds no challenge certificate.
    let (_tmp2, dir) = state_dir()?;
    let manager = Manager::new(
        config(&pebble.directory(), &pebble.listener_ca_pem)?,
        Store::open(&dir)?,
    );
    let site = manager.start_site("home", &hosts(&[HOST]))?;
    let status = wait_until(&mut site.status(), "challenge failure", |s| {
        s.last_error
            .as_ref()
            .is_some_and(|e| e.result == OrderResult::Challenge)
    })
    .await?;
    let error = status.last_error.as_ref().ok_or("no error")?;
    assert!(error.message.contains(HOST), "{}", error.message);
    assert!(
        error.message.contains("urn:ietf:params:acme:error:"),
        "{}",
        error.message
    );
    assert_eq!(status.state, SiteState::Failing);
    assert!(status.next_attempt.is_some_and(|t| t > error.at));
    assert!(site.certificate().borrow().is_none());
    // The failed order left nothing in the registry and nothing on disk.
    assert!(manager.challenges().is_empty());
    assert!(manager.store().load_site("home")?.is_none());
    Ok(())
}

#[tokio::test]
async fn external_account_binding_is_sent_when_the_ca_requires_it() -> TestResult {
    install_provider();
    const KID: &str = "kid-1";
    const KEY: &str = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W";
    let (pebble, _responder, without_eab, _tmp) = setup(PebbleOptions {
        eab: Some((KID.into(), KEY.into())),
        ..PebbleOptions::default()
    })
    .await?;

    // Without EAB the CA refuses the account: typed, with the CA's reason.
    let site = without_eab.start_site("home", &hosts(&[HOST]))?;
    let status = wait_until(&mut site.status(), "refusal", |s| s.last_error.is_some()).await?;
    let error = status.last_error.as_ref().ok_or("no error")?;
    assert_eq!(error.result, OrderResult::Rejected, "{}", error.message);
    assert!(
        error.message.contains("externalAccountRequired"),
        "{}",
        error.message
    );
    drop(site);

    // With it, the same CA issues.
    let (_tmp2, dir) = state_dir()?;
    let with_eab = Manager::with_challenges(
        config(&pebble.directory(), &pebble.listener_ca_pem)?.eab(KID, KEY)?,
        Store::open(&dir)?,
        without_eab.challenges().clone(),
    );
    let site = with_eab.start_site("home", &hosts(&[HOST]))?;
    let cert = wait_until(&mut site.certificate(), "certificate", Option::is_some)
        .await?
        .ok_or("no certificate")?;
    handshake(cert, &pebble.root().await?, HOST).await?;
    Ok(())
}

#[tokio::test]
async fn a_ca_that_forgot_our_account_gets_a_new_one() -> TestResult {
    install_provider();
    let (pebble, responder, manager, _tmp) = setup(PebbleOptions::default()).await?;
    let first = manager.start_site("home", &hosts(&[HOST]))?;
    wait_until(
        &mut first.certificate(),
        "first certificate",
        Option::is_some,
    )
    .await?;
    drop(first);
    // Pebble keeps nothing across restarts: same URL, no accounts.
    let port = pebble.listen_port;
    pebble.stop().await?;
    let pebble = Pebble::start(PebbleOptions {
        tls_port: responder.port,
        listen_port: Some(port),
        exact_request_log: true,
        ..PebbleOptions::default()
    })
    .await?;
    let restarted = Manager::with_challenges(
        config(&pebble.directory(), &pebble.listener_ca_pem)?,
        Store::open(manager.store().path())?,
        manager.challenges().clone(),
    );
    // A new hostname forces an order with the stored (now unknown) account.
    let site = restarted.start_site("home", &hosts(&[HOST, ALT]))?;
    let status = wait_until(&mut site.status(), "reissued", |s| {
        s.orders.get(OrderResult::Issued) == 1
    })
    .await?;
    assert!(matches!(
        status.state,
        SiteState::Valid | SiteState::Ordering(_)
    ));
    assert_eq!(pebble.requests("/sign-me-up"), 1, "{}", pebble.log_text());
    Ok(())
}
