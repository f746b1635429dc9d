//! Step 3 of the request path: may this request go to this site? A pure function.
//!
//! The TLS handshake already proved the certificate belongs to the SNI's site. What is left
//! is the HTTP layer's say: the Host (HTTP/1) or :authority (HTTP/2) must name the same site,
//! or a browser coalescing connections could carry site B's request on site A's connection.

/// What the policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Proxy to the connection's site.
    Allow,
    /// Refuse, with the reason.
    Deny(DenyReason),
}

/// Why a request is refused at the HTTP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// No Host at all.
    MissingHost,
    /// Host names another site, or none.
    HostMismatch,
}

/// Decides for a request with `host` (as sent, maybe with a port) on a connection whose
/// certificate and SNI selected `conn_site`; `host_site` is the site that `host` selects.
pub fn decide(conn_site: &str, host: Option<&str>, host_site: Option<&str>) -> Decision {
    match (host, host_site) {
        (None, _) => Decision::Deny(DenyReason::MissingHost),
        (Some(_), Some(site)) if site == conn_site => Decision::Allow,
        (Some(_), _) => Decision::Deny(DenyReason::HostMismatch),
    }
}

/// The hostname part of a Host header value: lowercase, without port; IPv6 literals keep
/// their brackets stripped. `None` if it is empty or malformed.
pub fn host_name(host: &str) -> Option<String> {
    let host = host.trim();
    if host.is_empty() {
        return None;
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        let end = rest.find(']')?;
        &rest[..end]
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return None,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    (!name.is_empty()).then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions() {
        let cases = [
            ("home", Some("ha.example"), Some("home"), Decision::Allow),
            ("home", None, None, Decision::Deny(DenyReason::MissingHost)),
            (
                "home",
                Some("x"),
                None,
                Decision::Deny(DenyReason::HostMismatch),
            ),
            (
                "home",
                Some("cabin.example"),
                Some("cabin"),
                Decision::Deny(DenyReason::HostMismatch),
            ),
        ];
        for (site, host, host_site, want) in cases {
            assert_eq!(
                decide(site, host, host_site),
                want,
                "{site} {host:?} {host_site:?}"
            );
        }
    }

    #[test]
    fn host_names() {
        assert_eq!(
            host_name("HA.Example.com").as_deref(),
            Some("ha.example.com")
        );
        assert_eq!(
            host_name("ha.example.com:8443").as_deref(),
            Some("ha.example.com")
        );
        assert_eq!(
            host_name("ha.example.com.").as_deref(),
            Some("ha.example.com")
        );
        assert_eq!(host_name("[::1]:443").as_deref(), Some("::1"));
        assert_eq!(host_name("127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(host_name(""), None);
        assert_eq!(host_name("a:b"), None);
        assert_eq!(host_name(":443"), None);
    }
}
