//! ACME (RFC 8555) certificates for the edge's sites, validated with TLS-ALPN-01 (RFC 8737)
//! on the edge's own HTTPS port, renewed in the background and handed over without a restart.
//!
//! Where to start: [`Manager::start_site`] returns a [`SiteHandle`] whose
//! [`certificate`](SiteHandle::certificate) watch yields each certificate to serve and whose
//! [`status`](SiteHandle::status) watch says what the site's task is doing. The edge's TLS
//! acceptor asks [`is_tls_alpn_challenge`] about every ClientHello and completes validation
//! handshakes with [`Challenges::server_config`] from [`Manager::challenges`].
//!
//! Map: `config` (validated settings) → `manager` (one task per site: when to order) →
//! `order` (one order, account included) → `challenge` (TLS-ALPN-01 certificates) and
//! `store` (state directory, atomic writes); `schedule` holds the pure timing rules; `http`
//! is the bounded HTTPS client under the ACME client (instant-acme).
//!
//! What this crate is not: a TLS server (the edge accepts connections), a metrics registry
//! (status carries plain counters the caller exports), or an HTTP-01/DNS-01 client.

#![forbid(unsafe_code)]

mod challenge;
mod config;
mod error;
mod http;
mod manager;
mod order;
mod schedule;
mod store;

pub use challenge::{ACME_TLS_ALPN, Challenges, is_tls_alpn_challenge};
pub use config::{AcmeConfig, ConfigError, LETS_ENCRYPT, LETS_ENCRYPT_STAGING, RenewalPolicy};
pub use error::{Error, OrderResult};
pub use manager::{LastError, Manager, OrderCounts, SiteHandle, SiteState, SiteStatus};
pub use schedule::OrderReason;
pub use store::{Store, StoredCert};
