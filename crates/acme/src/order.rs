//! One order, start to finish: account → new-order → TLS-ALPN-01 per hostname → CSR →
//! certificate → stored. Returns the stored certificate or says why not; it never retries
//! (that is the manager's job) except once with a fresh account when the CA forgot ours.

use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use tokio::sync::Mutex;

use crate::challenge::Challenges;
use crate::error::ACCOUNT_DOES_NOT_EXIST;
use crate::http::AcmeHttp;
use crate::schedule;
use crate::store::{Store, StoredAccount, StoredCert};
use crate::{AcmeConfig, Error};

/// What every site's orders share: settings, storage, the challenge registry and the account
/// (loaded or created on first use, then kept).
pub(crate) struct Client {
    pub(crate) config: AcmeConfig,
    pub(crate) store: Store,
    pub(crate) challenges: Challenges,
    account: Mutex<Option<Account>>,
}

impl Client {
    pub(crate) fn new(config: AcmeConfig, store: Store, challenges: Challenges) -> Self {
        Self {
            config,
            store,
            challenges,
            account: Mutex::new(None),
        }
    }

    /// The account, from memory, from the store, or newly created (and stored) at the CA.
    pub(crate) async fn account(&self) -> Result<Account, Error> {
        let mut slot = self.account.lock().await;
        if let Some(account) = self.cached_or_stored(&mut slot).await? {
            return Ok(account);
        }
        let account = self.create_account(self.config.directory_url()).await?;
        *slot = Some(account.clone());
        Ok(account)
    }

    /// The account if one exists in memory or in the store; never creates one.
    pub(crate) async fn existing_account(&self) -> Result<Option<Account>, Error> {
        let mut slot = self.account.lock().await;
        self.cached_or_stored(&mut slot).await
    }

    async fn cached_or_stored(&self, slot: &mut Option<Account>) -> Result<Option<Account>, Error> {
        if let Some(account) = slot.as_ref() {
            return Ok(Some(account.clone()));
        }
        let store = self.store.clone();
        let directory = self.config.directory_url().to_owned();
        let Some(stored) = blocking(move || store.load_account(&directory)).await? else {
            return Ok(None);
        };
        let account = Account::builder_with_http(self.http()?)
            .from_credentials(stored.credentials)
            .await?;
        *slot = Some(account.clone());
        Ok(Some(account))
    }

    async fn create_account(&self, directory: &str) -> Result<Account, Error> {
        let contact = format!("mailto:{}", self.config.contact());
        let eab = self
            .config
            .eab_key()
            .map(|eab| instant_acme::ExternalAccountKey::new(eab.key_id.clone(), &eab.hmac_key));
        let (account, credentials) = Account::builder_with_http(self.http()?)
            .create(
                &NewAccount {
                    contact: &[&contact],
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                directory.to_owned(),
                eab.as_ref(),
            )
            .await?;
        let stored = StoredAccount {
            directory: directory.to_owned(),
            contact: self.config.contact().to_owned(),
            credentials,
        };
        let store = self.store.clone();
        blocking(move || store.save_account(&stored)).await?;
        tracing::info!(directory, account = account.id(), "created ACME account");
        Ok(account)
    }

    /// Drops the account from memory and disk: the CA said it does not know it.
    async fn forget_account(&self) -> Result<(), Error> {
        *self.account.lock().await = None;
        let store = self.store.clone();
        let directory = self.config.directory_url().to_owned();
        blocking(move || store.remove_account(&directory)).await
    }

    fn http(&self) -> Result<Box<AcmeHttp>, Error> {
        Ok(Box::new(AcmeHttp::new(
            self.config.extra_roots(),
            self.config.renewal_policy().request_timeout,
        )?))
    }

    /// Orders a certificate for `hostnames` and stores it as `site`'s.
    pub(crate) async fn order(
        &self,
        site: &str,
        hostnames: &[String],
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<StoredCert, Error> {
        let account = self.account().await?;
        match self
            .place(&account, site, hostnames, replaces.clone())
            .await
        {
            Err(Error::Rejected { kind, detail }) if kind == ACCOUNT_DOES_NOT_EXIST => {
                tracing::warn!(
                    detail,
                    "the CA does not know our ACME account; creating a new one"
                );
                self.forget_account().await?;
                let account = self.account().await?;
                self.place(&account, site, hostnames, None).await
            }
            // A CA may refuse `replaces` (already replaced, not ours): the renewal still matters.
            Err(Error::Rejected { kind, detail }) if replaces.is_some() => {
                tracing::info!(
                    kind,
                    detail,
                    "order with ARI `replaces` refused; ordering without"
                );
                self.place(&account, site, hostnames, None).await
            }
            other => other,
        }
    }

    async fn place(
        &self,
        account: &Account,
        site: &str,
        hostnames: &[String],
        replaces: Option<CertificateIdentifier<'static>>,
    ) -> Result<StoredCert, Error> {
        let policy = self.config.renewal_policy();
        let identifiers: Vec<Identifier> = hostnames
            .iter()
            .map(|h| Identifier::Dns(h.clone()))
            .collect();
        let mut new_order = NewOrder::new(&identifiers);
        if let Some(replaces) = replaces {
            new_order = new_order.replaces(replaces);
        }
        let mut order = account.new_order(&new_order).await?;

        // Answer every pending authorization. The guards keep the challenge certificates in
        // the registry until validation is over, whatever happens.
        let mut guards = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            let hostname = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Valid => continue, // reused from an earlier order
                AuthorizationStatus::Pending => {}
                other => {
                    return Err(Error::Rejected {
                        kind: String::new(),
                        detail: format!("authorization for {hostname} is {other:?}"),
                    });
                }
            }
            let mut challenge = authz
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| Error::NoTlsAlpnChallenge(hostname.clone()))?;
            let digest = challenge.key_authorization().digest();
            guards.push(self.challenges.insert(&hostname, digest.as_ref())?);
            challenge.set_ready().await?;
        }

        // instant-acme polls with its own backoff; the manager bounds the whole order anyway.
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(policy.order_timeout);
        let status = order.poll_ready(&retry).await;
        let failed = match status {
            Ok(OrderStatus::Ready) => None,
            Ok(other) => Some(Error::Rejected {
                kind: String::new(),
                detail: format!("order is {other:?}"),
            }),
            Err(e) => Some(Error::from(e)),
        };
        if let Some(err) = failed {
            // Name the hostname and the CA's reason, not just "order invalid".
            return Err(self.explain(&mut order).await.unwrap_or(err));
        }
        drop(guards);

        let key = KeyPair::generate().map_err(|e| Error::Crypto(e.to_string()))?;
        let mut params =
            CertificateParams::new(hostnames.to_vec()).map_err(|e| Error::Crypto(e.to_string()))?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params
            .serialize_request(&key)
            .map_err(|e| Error::Crypto(e.to_string()))?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&retry).await?;

        let renew_after = self.renew_after_for(&chain)?;
        let store = self.store.clone();
        let (site, directory, key_pem) = (
            site.to_owned(),
            self.config.directory_url().to_owned(),
            key.serialize_pem(),
        );
        let hostnames = hostnames.to_vec();
        blocking(move || {
            let cert = store.save_site(&site, &chain, &key_pem, Some(&directory), renew_after)?;
            if !cert.covers(&hostnames) {
                return Err(Error::BadCertificate(format!(
                    "issued for {:?}, ordered {:?}",
                    cert.hostnames, hostnames
                )));
            }
            Ok(cert)
        })
        .await
    }

    /// The renewal time to store with a new chain (jitter drawn once, so restarts keep it).
    fn renew_after_for(&self, chain_pem: &str) -> Result<Option<SystemTime>, Error> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        use x509_parser::prelude::*;
        let Some(Ok(leaf)) = CertificateDer::pem_slice_iter(chain_pem.as_bytes()).next() else {
            return Err(Error::BadCertificate(
                "no certificate in the CA's answer".into(),
            ));
        };
        let (_, parsed) =
            X509Certificate::from_der(&leaf).map_err(|e| Error::BadCertificate(e.to_string()))?;
        let validity = parsed.validity();
        Ok(Some(schedule::renew_at(
            validity.not_before.to_datetime().into(),
            validity.not_after.to_datetime().into(),
            self.config.renewal_policy(),
            schedule::random(),
        )))
    }

    /// After a failed validation: which hostname, and what the CA said about it.
    async fn explain(&self, order: &mut instant_acme::Order) -> Option<Error> {
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            if authz.refresh().await.is_err() || authz.status != AuthorizationStatus::Invalid {
                continue;
            }
            let hostname = authz.identifier().to_string();
            let detail = authz
                .challenges
                .iter()
                .find_map(|c| c.error.as_ref())
                .map(|p| {
                    format!(
                        "{}: {}",
                        p.r#type.as_deref().unwrap_or("problem"),
                        p.detail.as_deref().unwrap_or("")
                    )
                })
                .unwrap_or_else(|| "authorization invalid".to_owned());
            return Some(Error::Challenge { hostname, detail });
        }
        None
    }
}

/// Runs blocking file work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(Error::storage("(storage task)", std::io::Error::other(e))))
}
