//! Why an order (or loading stored state) failed, by kind, with the CA's own words kept.
//!
//! [`Error::result`] is the one mapping from an error to the `result` label of the caller's
//! orders counter; nothing else classifies errors.

use std::path::PathBuf;

/// A failed order or storage operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The CA could not be reached, or did not answer in time (network, TLS, HTTP, timeout).
    #[error("ACME server unreachable: {0}")]
    Unreachable(String),
    /// The CA answered with a problem document (RFC 7807) other than the kinds below.
    #[error("ACME server refused: {kind}: {detail}")]
    Rejected {
        /// The problem type, e.g. `urn:ietf:params:acme:error:malformed`.
        kind: String,
        /// The CA's explanation.
        detail: String,
    },
    /// The CA refused because of a rate limit; retried no sooner than the policy's maximum.
    #[error("ACME rate limit: {0}")]
    RateLimited(String),
    /// The CA could not validate our TLS-ALPN-01 answer for a hostname.
    #[error("TLS-ALPN-01 validation of {hostname} failed: {detail}")]
    Challenge {
        /// The hostname whose authorization became invalid.
        hostname: String,
        /// The CA's explanation (problem type and detail).
        detail: String,
    },
    /// The CA offers no TLS-ALPN-01 challenge for a hostname.
    #[error("the CA offers no tls-alpn-01 challenge for {0}")]
    NoTlsAlpnChallenge(String),
    /// One order took longer than the policy's `order_timeout`.
    #[error("order did not finish within {0:?}")]
    OrderTimeout(std::time::Duration),
    /// The CA issued something we cannot serve (unparsable, wrong names, key mismatch).
    #[error("unusable certificate from the CA: {0}")]
    BadCertificate(String),
    /// Reading or writing the state directory failed.
    #[error("{}: {source}", path.display())]
    Storage {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A stored file is not what this crate wrote (edited by hand, truncated, another version).
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A site name that cannot be a directory name (`[a-z0-9._-]`, not starting with `.`).
    #[error("site name {0:?} is not usable as a directory name")]
    SiteName(String),
    /// A hostname that cannot be ordered (empty, wildcard, IP address, not a DNS name).
    #[error("hostname {0:?} cannot be ordered with TLS-ALPN-01")]
    Hostname(String),
    /// Creating keys or certificates locally failed.
    #[error("local crypto failed: {0}")]
    Crypto(String),
}

/// The outcome of one order, as the `result` label of an orders counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OrderResult {
    /// A certificate was issued, stored and delivered.
    Issued,
    /// The CA was unreachable or too slow.
    Unreachable,
    /// The CA refused (including rate limits and bad certificates).
    Rejected,
    /// Challenge validation failed.
    Challenge,
    /// Local failure: storage, crypto.
    Local,
}

impl OrderResult {
    /// Every result, for pre-registering label values.
    pub const ALL: [Self; 5] = [
        Self::Issued,
        Self::Unreachable,
        Self::Rejected,
        Self::Challenge,
        Self::Local,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Issued => "issued",
            Self::Unreachable => "unreachable",
            Self::Rejected => "rejected",
            Self::Challenge => "challenge_failed",
            Self::Local => "local_error",
        }
    }
}

impl Error {
    /// Which orders-counter label this failure counts under.
    pub fn result(&self) -> OrderResult {
        match self {
            Self::Unreachable(_) | Self::OrderTimeout(_) => OrderResult::Unreachable,
            Self::Rejected { .. }
            | Self::RateLimited(_)
            | Self::NoTlsAlpnChallenge(_)
            | Self::BadCertificate(_) => OrderResult::Rejected,
            Self::Challenge { .. } => OrderResult::Challenge,
            Self::Storage { .. }
            | Self::Corrupt { .. }
            | Self::SiteName(_)
            | Self::Hostname(_)
            | Self::Crypto(_) => OrderResult::Local,
        }
    }

    pub(crate) fn storage(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Storage {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Corrupt {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// The problem type of an account the CA no longer knows (a reset test CA, a deleted account).
pub(crate) const ACCOUNT_DOES_NOT_EXIST: &str = "urn:ietf:params:acme:error:accountDoesNotExist";
const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";

impl From<instant_acme::Error> for Error {
    fn from(err: instant_acme::Error) -> Self {
        use instant_acme::Error as E;
        match err {
            E::Api(problem) => {
                let kind = problem.r#type.clone().unwrap_or_default();
                let detail = problem.detail.clone().unwrap_or_default();
                if kind == RATE_LIMITED {
                    Self::RateLimited(detail)
                } else {
                    Self::Rejected { kind, detail }
                }
            }
            E::Crypto | E::KeyRejected => Self::Crypto(err.to_string()),
            // Our HTTP client reports transport failures (and its timeouts) as `Other`; an
            // answer that is not JSON comes from something other than the CA (a proxy's 502).
            E::Http(_) | E::InvalidUri(_) | E::Other(_) | E::Timeout(_) | E::Json(_) => {
                Self::Unreachable(err.to_string())
            }
            E::Unsupported(_) | E::Str(_) => Self::Rejected {
                kind: String::new(),
                detail: err.to_string(),
            },
            // `instant_acme::Error` is non-exhaustive.
            _ => Self::Unreachable(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_snake_case() {
        let labels: std::collections::HashSet<_> =
            OrderResult::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), OrderResult::ALL.len());
        assert!(
            labels
                .iter()
                .all(|l| l.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
    }
}
