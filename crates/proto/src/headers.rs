//! Which HTTP header fields cross the tunnel: one definition for both ends.
//!
//! The edge strips these from what clients send before a request enters the tunnel; the
//! connector strips them again before it sets its own (so Home Assistant never sees a forged
//! one even from a misbehaving edge) and from what Home Assistant answers.

/// Fields that describe one hop of a connection and never travel further (RFC 9110 §7.6.1,
/// plus the legacy `Keep-Alive` and `Proxy-Connection`). `Connection` and `Upgrade` are
/// re-created explicitly for WebSocket upgrades and their 101.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Forwarding fields a client might forge. Only the connector sets the real ones: exactly one
/// `X-Forwarded-For` (the client's bare IP), `X-Forwarded-Proto: https` and
/// `X-Forwarded-Host`.
pub const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "x-real-ip",
];

/// Whether `name` (lower-case) is hop-by-hop.
pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.contains(&name)
}

/// Whether `name` (lower-case) is a forwarding field.
pub fn is_forwarding(name: &str) -> bool {
    FORWARDING.contains(&name)
}
