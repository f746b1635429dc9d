//! Step 4 of the request path: the session cookie of the `required_or_session` mode.
//!
//! After a request authenticated by a client certificate, the edge sets a short-lived cookie
//! that lets the same browser through on requests where it omits the certificate (WebSocket
//! and service-worker requests in some Safari versions and web views). The cookie is:
//! - `__Host-` prefixed, `Secure; HttpOnly; SameSite=Strict; Path=/`: host-only, HTTPS-only,
//!   invisible to scripts, not sent cross-site;
//! - bound to the site and to the certificate's fingerprint, and signed with HMAC-SHA256 under
//!   the state dir's `session.key`;
//! - dead when it expires (`session_lifetime`, and never after the certificate's own expiry),
//!   or as soon as its certificate is revoked;
//! - never forwarded to Home Assistant.
//!
//! Layout (then base64url, no padding): `version: u8 = 1 | expires: u64 (Unix s) |
//! fingerprint: [u8; 32] | site_len: u8 | site | device_len: u8 | device | mac: [u8; 32]`.

use std::collections::HashSet;
use std::path::Path;

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderMap, HeaderValue, header};
use pki::Fingerprint;

use crate::site::Site;
use crate::tls::PeerCertificate;

/// The cookie's name. The `__Host-` prefix makes browsers refuse it unless it is Secure,
/// has `Path=/` and no `Domain`: it cannot be planted by a sibling subdomain.
pub(crate) const COOKIE_NAME: &str = "__Host-doorless";

const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
/// Upper bound of an encoded cookie; anything longer is not ours.
const MAX_ENCODED: usize = 512;

/// The HMAC key, from the state dir's `session.key`.
pub(crate) struct SessionKey(hmac::Key);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

impl SessionKey {
    /// Loads the key file (at least 32 bytes).
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("reading session key {}: {e}", path.display()))?;
        Self::from_bytes(&bytes).ok_or_else(|| {
            anyhow::anyhow!("session key {} is shorter than 32 bytes", path.display())
        })
    }

    /// A separate secret for another purpose, derived from this key (HMAC of `label`), so
    /// the state dir needs only one secret file.
    pub(crate) fn derive(&self, label: &str) -> Vec<u8> {
        hmac::sign(&self.0, label.as_bytes()).as_ref().to_vec()
    }

    /// A key from raw bytes (≥ 32).
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() >= 32).then(|| Self(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// Encodes and signs `claims` into a cookie value.
    pub(crate) fn issue(&self, claims: &Claims) -> Option<String> {
        let site = claims.site.as_bytes();
        let device = claims.device.as_bytes();
        let site_len = u8::try_from(site.len()).ok()?;
        let device_len = u8::try_from(device.len()).ok()?;
        let mut raw = Vec::with_capacity(1 + 8 + 32 + 2 + site.len() + device.len() + MAC_LEN);
        raw.push(VERSION);
        raw.extend_from_slice(&claims.expires.to_be_bytes());
        raw.extend_from_slice(claims.fingerprint.as_bytes());
        raw.push(site_len);
        raw.extend_from_slice(site);
        raw.push(device_len);
        raw.extend_from_slice(device);
        let tag = hmac::sign(&self.0, &raw);
        raw.extend_from_slice(tag.as_ref());
        Some(URL_SAFE_NO_PAD.encode(raw))
    }

    /// Checks a cookie value for `site` at time `now` against the revoked fingerprints.
    pub(crate) fn verify(
        &self,
        value: &str,
        site: &str,
        now: u64,
        revoked: &HashSet<Fingerprint>,
    ) -> Verdict {
        let Some(claims) = self.open(value) else {
            return Verdict::Forged;
        };
        if claims.site != site {
            return Verdict::OtherSite;
        }
        if revoked.contains(&claims.fingerprint) {
            return Verdict::Revoked;
        }
        if claims.expires <= now {
            return Verdict::Expired;
        }
        Verdict::Valid(claims)
    }

    /// The claims of a cookie value that carries our MAC, whatever they say.
    fn open(&self, value: &str) -> Option<Claims> {
        if value.len() > MAX_ENCODED {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(value).ok()?;
        let body_len = raw.len().checked_sub(MAC_LEN)?;
        let (body, tag) = raw.split_at(body_len);
        // Constant-time comparison inside aws-lc.
        hmac::verify(&self.0, body, tag).ok()?;
        let (&version, rest) = body.split_first()?;
        if version != VERSION {
            return None;
        }
        let (expires, rest) = rest.split_at_checked(8)?;
        let (fingerprint, rest) = rest.split_at_checked(32)?;
        let (&site_len, rest) = rest.split_first()?;
        let (site, rest) = rest.split_at_checked(usize::from(site_len))?;
        let (&device_len, rest) = rest.split_first()?;
        let (device, rest) = rest.split_at_checked(usize::from(device_len))?;
        if !rest.is_empty() {
            return None;
        }
        Some(Claims {
            site: String::from_utf8(site.to_vec()).ok()?,
            fingerprint: Fingerprint::from_bytes(<[u8; 32]>::try_from(fingerprint).ok()?),
            device: String::from_utf8(device.to_vec()).ok()?,
            expires: u64::from_be_bytes(expires.try_into().ok()?),
        })
    }

    /// The verdict on the request's session cookie for `site`, if it carries one.
    pub(crate) fn read(
        &self,
        headers: &HeaderMap,
        site: &str,
        now: u64,
        revoked: &HashSet<Fingerprint>,
    ) -> Option<Verdict> {
        let value = find(headers.get_all(header::COOKIE).iter().map(|v| v.as_bytes()))?;
        Some(self.verify(&value, site, now, revoked))
    }

    /// The `Set-Cookie` for a response to a request that `cert` authenticated on `site`:
    /// a fresh cookie unless the request already carried a valid one for this certificate with
    /// more than half its life left. Never outlives the certificate.
    pub(crate) fn refresh(
        &self,
        site: &Site,
        cert: &PeerCertificate,
        current: Option<&Verdict>,
        now: u64,
    ) -> Option<HeaderValue> {
        let lifetime = site.session_lifetime.as_secs();
        if let Some(Verdict::Valid(claims)) = current
            && claims.fingerprint == cert.fingerprint
            && claims.expires.saturating_sub(now) > lifetime / 2
        {
            return None;
        }
        let expires = (now + lifetime).min(cert.not_after);
        if expires <= now {
            return None;
        }
        let claims = Claims {
            site: site.name.clone(),
            fingerprint: cert.fingerprint,
            device: cert.device.clone(),
            expires,
        };
        set_cookie(&self.issue(&claims)?, expires - now)
    }
}

/// What a cookie asserts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claims {
    /// Site it opens.
    pub(crate) site: String,
    /// Fingerprint of the certificate it was issued on.
    pub(crate) fingerprint: Fingerprint,
    /// Device name of that certificate.
    pub(crate) device: String,
    /// Expiry, Unix seconds.
    pub(crate) expires: u64,
}

/// The result of checking a cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Good for this site, now.
    Valid(Claims),
    /// Signed by us, but past its expiry.
    Expired,
    /// Not signed by us, or malformed.
    Forged,
    /// Signed by us for another site.
    OtherSite,
    /// Signed by us, but its certificate has been revoked since.
    Revoked,
}

/// The `Set-Cookie` header for `value`, living `max_age` seconds.
pub(crate) fn set_cookie(value: &str, max_age: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}"
    ))
    .ok()
}

/// Our cookie's value among the request's `Cookie` header values, if present: the first pair
/// named exactly [`COOKIE_NAME`] (as we set it), read byte by byte so a non-UTF-8 byte
/// elsewhere in the header does not hide it.
pub(crate) fn find<'a>(cookie_headers: impl Iterator<Item = &'a [u8]>) -> Option<String> {
    for header in cookie_headers {
        for pair in header.split(|&b| b == b';') {
            if let Some(eq) = pair.iter().position(|&b| b == b'=')
                && pair[..eq].trim_ascii() == COOKIE_NAME.as_bytes()
            {
                let value = pair[eq + 1..].trim_ascii();
                let value = value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value);
                // Ours is base64url; anything else is not ours (and forged, as a verdict).
                return Some(String::from_utf8_lossy(value).into_owned());
            }
        }
    }
    None
}

/// The request's `Cookie` lines as one value without our cookie; `None` if nothing is left.
///
/// Works on bytes and fails closed: every `;`-separated piece that mentions our cookie's name
/// anywhere, in any case, is dropped whole. Parsers disagree on what a cookie pair is (Python's
/// `http.cookies`, which Home Assistant's aiohttp builds on, also splits on whitespace and reads
/// `$`-prefixed names as attributes; RFC 2109 allowed `,`), so matching only the exact name at
/// the start of a pair would let `a=1 __Host-doorless=…` or `a=1, __Host-doorless=…` through.
/// Dropping a stranger's cookie whose value happens to contain our name costs nothing.
///
/// Several lines (HTTP/2 sends one per cookie, RFC 9113 §8.2.3; some HTTP/1.1 clients repeat
/// the header) become one, joined with `; `, as RFC 9113 asks before HTTP/1.1 (and as aiohttp
/// needs: it reads only the first `Cookie` line).
pub(crate) fn strip<'a>(cookie_headers: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut kept = Vec::new();
    for piece in cookie_headers.flat_map(|h| h.split(|&b| b == b';')) {
        let piece = piece.trim_ascii();
        if piece.is_empty() || mentions_our_name(piece) {
            continue;
        }
        if !kept.is_empty() {
            kept.extend_from_slice(b"; ");
        }
        kept.extend_from_slice(piece);
    }
    (!kept.is_empty()).then_some(kept)
}

/// Whether `bytes` contains [`COOKIE_NAME`], ASCII case-insensitively.
fn mentions_our_name(bytes: &[u8]) -> bool {
    let name = COOKIE_NAME.as_bytes();
    bytes
        .windows(name.len())
        .any(|w| w.eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SessionKey {
        SessionKey::from_bytes(&[7u8; 32]).unwrap_or_else(|| panic!("32 bytes is enough"))
    }

    fn claims() -> Claims {
        Claims {
            site: "home".into(),
            fingerprint: Fingerprint::from_bytes([1u8; 32]),
            device: "phone".into(),
            expires: 2_000,
        }
    }

    fn cookie() -> String {
        key().issue(&claims()).unwrap_or_default()
    }

    #[test]
    fn round_trip_and_every_failure() {
        let none = HashSet::new();
        let value = cookie();
        assert_eq!(
            key().verify(&value, "home", 1_000, &none),
            Verdict::Valid(claims())
        );
        assert_eq!(key().verify(&value, "home", 2_000, &none), Verdict::Expired);
        assert_eq!(
            key().verify(&value, "cabin", 1_000, &none),
            Verdict::OtherSite
        );
        let revoked: HashSet<_> = [Fingerprint::from_bytes([1u8; 32])].into();
        assert_eq!(
            key().verify(&value, "home", 1_000, &revoked),
            Verdict::Revoked
        );
        let other_key = SessionKey::from_bytes(&[8u8; 32]).unwrap_or_else(|| panic!("key"));
        assert_eq!(
            other_key.verify(&value, "home", 1_000, &none),
            Verdict::Forged
        );
        // Flip one bit anywhere: forged.
        let mut raw = URL_SAFE_NO_PAD.decode(&value).unwrap_or_default();
        raw[3] ^= 1;
        let tampered = URL_SAFE_NO_PAD.encode(raw);
        assert_eq!(
            key().verify(&tampered, "home", 1_000, &none),
            Verdict::Forged
        );
        for junk in ["", "x", "!!!!", &"A".repeat(600)] {
            assert_eq!(key().verify(junk, "home", 1_000, &none), Verdict::Forged);
        }
    }

    #[test]
    fn find_and_strip() {
        let header = format!("a=1; {COOKIE_NAME}=abc; b=2");
        assert_eq!(
            find([header.as_bytes()].into_iter()).as_deref(),
            Some("abc")
        );
        assert_eq!(
            strip([header.as_bytes()].into_iter()).as_deref(),
            Some(&b"a=1; b=2"[..])
        );
        let only = format!("{COOKIE_NAME}=abc");
        assert_eq!(strip([only.as_bytes()].into_iter()), None);
        assert_eq!(find([&b"a=1"[..]].into_iter()), None);
    }

    /// Whatever the header looks like, our cookie never survives `strip`, and the rest does.
    #[test]
    fn strip_is_byte_level_and_fails_closed() {
        let cases: &[(&[&[u8]], &[u8])] = &[
            // Not UTF-8.
            (
                &[b"a=1; __Host-doorless=SECRET; b=\xff\xfe"],
                b"a=1; b=\xff\xfe",
            ),
            (&[b"\xff=1;__Host-doorless=SECRET"], b"\xff=1"),
            // Several lines: joined, ours gone from each.
            (&[b"a=1", b"__Host-doorless=SECRET", b"b=2"], b"a=1; b=2"),
            // Odd spacing, tabs, whitespace or commas as separators.
            (&[b"  __Host-doorless  =  SECRET  ;b=2"], b"b=2"),
            (&[b"a=1\t;\t__Host-doorless=SECRET"], b"a=1"),
            (&[b"a=1 __Host-doorless=SECRET"], b""),
            (&[b"a=1, __Host-doorless=SECRET; c=3"], b"c=3"),
            // Other cases, `$` attributes and names, quotes.
            (
                &[b"__HOST-DOORLESS=SECRET; __host-doorless=SECRET; d=4"],
                b"d=4",
            ),
            (
                &[b"$Version=1; __Host-doorless=SECRET; $Path=/"],
                b"$Version=1; $Path=/",
            ),
            (&[b"$__Host-doorless=SECRET"], b""),
            (&[b"__Host-doorless=\"SECRET\""], b""),
            (&[b";;; ; "], b""),
        ];
        for (lines, want) in cases {
            let got = strip(lines.iter().copied()).unwrap_or_default();
            assert_eq!(got, *want, "{lines:?}");
            assert!(!mentions_our_name(&got) && !got.windows(6).any(|w| w == b"SECRET"));
        }
        // `find` reads our cookie even when another pair is not UTF-8.
        assert_eq!(
            find([&b"b=\xff; __Host-doorless=abc"[..]].into_iter()).as_deref(),
            Some("abc")
        );
        assert_eq!(
            find([&b"__Host-doorless=\"abc\""[..]].into_iter()).as_deref(),
            Some("abc")
        );
    }

    #[test]
    fn set_cookie_has_every_attribute() {
        let v = set_cookie("abc", 3600).unwrap_or_else(|| panic!("valid header"));
        let v = v.to_str().unwrap_or_default();
        for attr in [
            "__Host-doorless=abc",
            "Path=/",
            "Secure",
            "HttpOnly",
            "SameSite=Strict",
            "Max-Age=3600",
        ] {
            assert!(v.contains(attr), "{v}");
        }
        assert!(!v.contains("Domain"));
    }
}
