//! One task per site keeps its certificate current: serve what is stored, order when missing
//! or due, retry failures with capped backoff, deliver each new certificate through a watch
//! channel, and publish a status snapshot.
//!
//! The loop, top to bottom: load the stored certificate (deliver it at once if it covers the
//! hostnames, even when due: an old certificate beats none) → ask the CA for its renewal window
//! when it offers one → if an order is needed, place it (bounded by `order_timeout`), else sleep
//! until the renewal time (at most an hour at a time, so clock jumps and new windows are seen).
//! A failed order keeps the current certificate, logs once, counts by result and waits
//! `retry_window(failures)`; a rate limit waits `retry_max`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::CertificateIdentifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::ServerName;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::challenge::Challenges;
use crate::error::OrderResult;
use crate::order::{Client, blocking};
use crate::schedule::{self, OrderReason};
use crate::store::{Store, StoredCert, check_site_name};
use crate::{AcmeConfig, Error};

/// The longest sleep before the loop looks again (clock jumps, suspend, ARI updates).
const RECHECK: Duration = Duration::from_secs(3600);
/// How often to ask for ARI when the CA gave no `Retry-After` worth using.
const ARI_DEFAULT_INTERVAL: Duration = Duration::from_secs(6 * 3600);

/// Owns the ACME account, the storage and the challenge registry; starts one task per site.
#[derive(Clone)]
pub struct Manager {
    client: Arc<Client>,
}

impl Manager {
    /// A manager ordering per `config`, keeping its state in `store`.
    pub fn new(config: AcmeConfig, store: Store) -> Self {
        Self::with_challenges(config, store, Challenges::default())
    }

    /// Like [`Manager::new`], answering validations through an existing registry (one the
    /// TLS acceptor already holds).
    pub fn with_challenges(config: AcmeConfig, store: Store, challenges: Challenges) -> Self {
        Self {
            client: Arc::new(Client::new(config, store, challenges)),
        }
    }

    /// The challenge registry the TLS acceptor consults for `acme-tls/1` handshakes.
    pub fn challenges(&self) -> &Challenges {
        &self.client.challenges
    }

    /// The storage.
    pub fn store(&self) -> &Store {
        &self.client.store
    }

    /// Starts keeping `site`'s certificate for `hostnames` current. Must be called inside a
    /// tokio runtime. The task stops when the returned handle is dropped.
    pub fn start_site(&self, site: &str, hostnames: &[String]) -> Result<SiteHandle, Error> {
        let hostnames = parse_hostnames(hostnames)?;
        check_site_name(site)?;
        let (cert_tx, cert_rx) = watch::channel(None);
        let (status_tx, status_rx) = watch::channel(SiteStatus::new(site, &hostnames));
        let task = SiteTask {
            client: self.client.clone(),
            site: site.to_owned(),
            hostnames,
            cert_tx,
            status_tx,
        };
        Ok(SiteHandle {
            cert: cert_rx,
            status: status_rx,
            task: tokio::spawn(task.run()),
        })
    }
}

/// A running site task. Dropping it stops the task (an order in flight is abandoned; its
/// challenge certificates are removed).
#[derive(Debug)]
pub struct SiteHandle {
    cert: watch::Receiver<Option<Arc<CertifiedKey>>>,
    status: watch::Receiver<SiteStatus>,
    task: JoinHandle<()>,
}

impl SiteHandle {
    /// The certificate to serve: `None` until one is stored or issued, then each new one.
    pub fn certificate(&self) -> watch::Receiver<Option<Arc<CertifiedKey>>> {
        self.cert.clone()
    }

    /// The site's status, updated on every change.
    pub fn status(&self) -> watch::Receiver<SiteStatus> {
        self.status.clone()
    }
}

impl Drop for SiteHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a site's task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SiteState {
    /// Reading the stored certificate.
    Loading,
    /// The certificate is current; waiting for its renewal time.
    Valid,
    /// An order is in progress.
    Ordering(OrderReason),
    /// The last order failed; waiting to retry (any current certificate is still served).
    Failing,
}

/// The last failure, for `/status` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// Its metrics label.
    pub result: OrderResult,
    /// The error, as logged.
    pub message: String,
    /// When it happened.
    pub at: SystemTime,
}

/// Orders by result since the task started, for a counter the caller exports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderCounts([u64; OrderResult::ALL.len()]);

impl OrderCounts {
    /// The count of one result.
    pub fn get(&self, result: OrderResult) -> u64 {
        self.0[index(result)]
    }

    /// Every result with its count (zeros included).
    pub fn iter(&self) -> impl Iterator<Item = (OrderResult, u64)> + '_ {
        OrderResult::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    fn add(&mut self, result: OrderResult) {
        self.0[index(result)] += 1;
    }
}

fn index(result: OrderResult) -> usize {
    OrderResult::ALL
        .iter()
        .position(|r| *r == result)
        .unwrap_or_default()
}

/// A snapshot of one site, plain data.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteStatus {
    /// The site.
    pub site: String,
    /// The hostnames ordered for it.
    pub hostnames: Vec<String>,
    /// What the task is doing.
    pub state: SiteState,
    /// Serial (hex) of the certificate being served.
    pub serial: Option<String>,
    /// `notAfter` of the certificate being served.
    pub not_after: Option<SystemTime>,
    /// When the served certificate is to be renewed.
    pub renew_at: Option<SystemTime>,
    /// When the task acts next (an order, a retry or a re-check).
    pub next_attempt: Option<SystemTime>,
    /// Failed orders in a row (0 after a success).
    pub consecutive_failures: u32,
    /// When the last order started.
    pub last_attempt: Option<SystemTime>,
    /// The last failure, kept after a later success for the record.
    pub last_error: Option<LastError>,
    /// Whether the CA gives renewal windows (ARI); `None` until asked.
    pub ari: Option<bool>,
    /// Orders by result.
    pub orders: OrderCounts,
}

impl SiteStatus {
    fn new(site: &str, hostnames: &[String]) -> Self {
        Self {
            site: site.to_owned(),
            hostnames: hostnames.to_vec(),
            state: SiteState::Loading,
            serial: None,
            not_after: None,
            renew_at: None,
            next_attempt: None,
            consecutive_failures: 0,
            last_attempt: None,
            last_error: None,
            ari: None,
            orders: OrderCounts::default(),
        }
    }
}

struct SiteTask {
    client: Arc<Client>,
    site: String,
    hostnames: Vec<String>,
    cert_tx: watch::Sender<Option<Arc<CertifiedKey>>>,
    status_tx: watch::Sender<SiteStatus>,
}

/// The ARI state of the served certificate.
struct Ari {
    /// `None` until the CA was asked; `Some(false)` once it said it has no ARI.
    supported: Option<bool>,
    next_check: SystemTime,
}

impl SiteTask {
    async fn run(self) {
        let policy = self.client.config.renewal_policy().clone();
        let directory = self.client.config.directory_url().to_owned();
        let mut current = self.load().await;
        let mut renew_at = current.as_ref().map(|c| self.renew_at_of(c));
        if let Some(cert) = &current {
            self.serve(cert, renew_at);
        }
        let mut ari = Ari {
            supported: if policy.ari { None } else { Some(false) },
            next_check: SystemTime::now(),
        };
        let mut failures = 0u32;
        loop {
            if let Some(cert) = current.as_ref()
                && let Some(at) = self.check_ari(cert, &directory, &mut ari).await
            {
                renew_at = Some(at);
                self.status_tx.send_modify(|s| s.renew_at = renew_at);
            }
            let now = SystemTime::now();
            let reason = schedule::order_reason(
                now,
                current.as_ref(),
                &self.hostnames,
                &directory,
                renew_at,
            );
            let Some(reason) = reason else {
                let until = renew_at.unwrap_or(now + RECHECK);
                self.status_tx.send_modify(|s| {
                    s.state = SiteState::Valid;
                    s.next_attempt = Some(until);
                });
                let mut wait = until.duration_since(now).unwrap_or_default().min(RECHECK);
                if ari.supported != Some(false) {
                    wait = wait.min(ari.next_check.duration_since(now).unwrap_or_default());
                }
                tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
                continue;
            };

            tracing::info!(site = %self.site, hostnames = ?self.hostnames, ?reason, "ordering an ACME certificate");
            self.status_tx.send_modify(|s| {
                s.state = SiteState::Ordering(reason);
                s.last_attempt = Some(now);
            });
            // Tell the CA which certificate this replaces only when it speaks ARI and the
            // certificate is its own.
            let replaces = current
                .as_ref()
                .filter(|c| {
                    ari.supported == Some(true) && c.directory.as_deref() == Some(&directory)
                })
                .and_then(cert_id);
            let order = self.client.order(&self.site, &self.hostnames, replaces);
            let result = match tokio::time::timeout(policy.order_timeout, order).await {
                Ok(result) => result,
                Err(_) => Err(Error::OrderTimeout(policy.order_timeout)),
            };
            match result {
                Ok(cert) => {
                    failures = 0;
                    renew_at = Some(self.renew_at_of(&cert));
                    ari.next_check = SystemTime::now() + RECHECK;
                    tracing::info!(site = %self.site, serial = %cert.serial, not_after = ?cert.not_after, "ACME certificate issued");
                    self.status_tx.send_modify(|s| {
                        s.orders.add(OrderResult::Issued);
                        s.consecutive_failures = 0;
                    });
                    self.serve(&cert, renew_at);
                    current = Some(cert);
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let delay = match err {
                        Error::RateLimited(_) => policy.retry_max,
                        _ => policy.retry_delay(failures, schedule::random()),
                    };
                    let failed_at = SystemTime::now();
                    tracing::warn!(site = %self.site, error = %err, attempt = failures, retry_in = ?delay,
                        "ACME order failed; the current certificate (if any) stays in service");
                    self.status_tx.send_modify(|s| {
                        s.state = SiteState::Failing;
                        s.orders.add(err.result());
                        s.consecutive_failures = failures;
                        s.next_attempt = Some(failed_at + delay);
                        s.last_error = Some(LastError {
                            result: err.result(),
                            message: err.to_string(),
                            at: failed_at,
                        });
                    });
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The stored certificate, if usable. A broken store is reported and treated as empty:
    /// ordering anew is the way out.
    async fn load(&self) -> Option<StoredCert> {
        let store = self.client.store.clone();
        let site = self.site.clone();
        match blocking(move || store.load_site(&site)).await {
            Ok(cert) => cert,
            Err(err) => {
                tracing::warn!(site = %self.site, error = %err, "stored ACME certificate unusable; ordering a new one");
                self.status_tx.send_modify(|s| {
                    s.last_error = Some(LastError {
                        result: err.result(),
                        message: err.to_string(),
                        at: SystemTime::now(),
                    });
                });
                None
            }
        }
    }

    fn renew_at_of(&self, cert: &StoredCert) -> SystemTime {
        cert.renew_after.unwrap_or_else(|| {
            schedule::renew_at(
                cert.not_before,
                cert.not_after,
                self.client.config.renewal_policy(),
                schedule::random(),
            )
        })
    }

    /// Hands `cert` to the caller if it is right for the site's hostnames.
    fn serve(&self, cert: &StoredCert, renew_at: Option<SystemTime>) {
        if !cert.covers(&self.hostnames) {
            return;
        }
        self.cert_tx.send_replace(Some(cert.certified_key()));
        self.status_tx.send_modify(|s| {
            s.serial = Some(cert.serial.clone());
            s.not_after = Some(cert.not_after);
            s.renew_at = renew_at;
        });
    }

    /// Asks the CA for the certificate's renewal window when due; returns the new renewal
    /// time if the CA gave one. Failures only postpone the next question.
    async fn check_ari(
        &self,
        cert: &StoredCert,
        directory: &str,
        ari: &mut Ari,
    ) -> Option<SystemTime> {
        let now = SystemTime::now();
        if ari.supported == Some(false)
            || now < ari.next_check
            || cert.directory.as_deref() != Some(directory)
        {
            return None;
        }
        ari.next_check = now + RECHECK;
        let id = cert_id(cert)?;
        let limit = self.client.config.renewal_policy().request_timeout * 3;
        let ask = async {
            // Never create an account just to ask: no stored account, no question.
            let Some(account) = self.client.existing_account().await? else {
                return Ok(None);
            };
            Ok::<_, Error>(Some(account.renewal_info(&id).await))
        };
        let answer = match tokio::time::timeout(limit, ask).await {
            Ok(Ok(Some(answer))) => answer,
            Ok(Ok(None)) => return None,
            Ok(Err(err)) => {
                tracing::debug!(site = %self.site, error = %err, "ARI check skipped");
                return None;
            }
            Err(_) => return None,
        };
        match answer {
            Ok((info, retry_after)) => {
                ari.supported = Some(true);
                ari.next_check = now + retry_after.clamp(RECHECK, ARI_DEFAULT_INTERVAL * 4);
                self.status_tx.send_modify(|s| s.ari = Some(true));
                let window = info.suggested_window;
                Some(schedule::in_window(
                    window.start.into(),
                    window.end.into(),
                    schedule::random(),
                ))
            }
            Err(instant_acme::Error::Unsupported(_)) => {
                ari.supported = Some(false);
                self.status_tx.send_modify(|s| s.ari = Some(false));
                None
            }
            Err(err) => {
                tracing::debug!(site = %self.site, error = %err, "ARI check failed");
                None
            }
        }
    }
}

/// The ARI identifier (authority key id + serial) of a stored certificate's leaf.
fn cert_id(cert: &StoredCert) -> Option<CertificateIdentifier<'static>> {
    let leaf = cert.chain.first()?;
    CertificateIdentifier::try_from(leaf)
        .ok()
        .map(CertificateIdentifier::into_owned)
}

/// Lowercase DNS names, deduplicated, in the given order. No wildcards (TLS-ALPN-01 cannot
/// validate them), no IP addresses.
fn parse_hostnames(hostnames: &[String]) -> Result<Vec<String>, Error> {
    let mut out: Vec<String> = Vec::new();
    for raw in hostnames {
        let name = raw.trim().trim_end_matches('.').to_ascii_lowercase();
        let dns = matches!(
            ServerName::try_from(name.as_str()),
            Ok(ServerName::DnsName(_))
        );
        if !dns || name.contains('*') || name.len() > 253 {
            return Err(Error::Hostname(raw.clone()));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.is_empty() {
        return Err(Error::Hostname(String::new()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_dns_names_only() {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_hostnames(&owned(&["Home.Example.", "home.example", "b.example"])).ok(),
            Some(owned(&["home.example", "b.example"]))
        );
        for bad in [
            &[][..],
            &["*.example"],
            &["127.0.0.1"],
            &["a b"],
            &[""],
            &["::1"],
        ] {
            assert!(parse_hostnames(&owned(bad)).is_err(), "{bad:?}");
        }
    }
}
