//! The step before policy: one-time device links (`doorless-edge client add --link`).
//!
//! A request WITHOUT a certificate, whose Host names the connection's own site and whose path
//! is exactly a pending link of that site (`/<secret>`, or a file under it), gets the link's
//! page or file here, and nothing else does: every other request goes on to `policy`, which
//! gives a certificate-less one the same bare denial as ever. Nothing here talks to a
//! connector. The page never consumes the link; the download does (`pki::StateDir::take_link`,
//! one winner), and the reload watcher then sees the link gone.
//!
//! What this module is not: the link store (`pki`'s `links`) nor the TLS side (`site`, which
//! makes a site's client certificates optional while one of its links is pending).

use std::net::IpAddr;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use tracing::info;

use crate::Shared;
use crate::body::ResponseBody;
use crate::limit::{HandshakeBudget, Prefixes};
use crate::metrics::EnrollLabels;
use crate::tls::Peer;

/// Link requests per address: a burst of 10, then one every 6 s. A phone needs two (page,
/// file); a guesser of 160-bit secrets gets nowhere either way, but visibly and slowly.
const RATE: f64 = 1.0 / 6.0;
const BURST: u32 = 10;

/// Every `result` of `doorless_edge_enrollments_total{kind="device"}`.
pub(crate) const LINK_RESULTS: [&str; 5] = ["page", "download", "unknown", "used", "limited"];

/// The per-address budget of link requests.
#[derive(Debug)]
pub(crate) struct LinkLimit(HandshakeBudget);

impl LinkLimit {
    /// `prefixes` groups addresses as every other per-address limit does.
    pub(crate) fn new(prefixes: Prefixes) -> Self {
        Self(HandshakeBudget::new(RATE, BURST, prefixes))
    }

    fn take(&self, ip: IpAddr) -> bool {
        self.0.take(ip, Instant::now())
    }
}

/// What a link request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wanted {
    Page,
    P12,
    MobileConfig,
}

/// Serves the request if it is a certificate-less GET of a pending link of the connection's
/// site; `None` sends it on to policy (and so to the bare denial).
pub(crate) async fn serve<B>(
    req: &Request<B>,
    peer: &Peer,
    host_site: Option<&str>,
    shared: &Shared,
) -> Option<Response<ResponseBody>> {
    if peer.certificate.is_some() || req.method() != Method::GET {
        return None;
    }
    let site = &peer.site.name;
    if host_site != Some(site.as_str()) || req.uri().query().is_some() {
        return None;
    }
    let (secret, wanted) = parse_path(req.uri().path())?;
    let client = peer.addr.ip().to_canonical();
    let count = |result: &'static str| {
        shared
            .metrics
            .enrollments
            .get_or_create(&EnrollLabels {
                kind: "device",
                result,
            })
            .inc();
    };
    if !shared.link_limit.take(client) {
        count("limited");
        if shared.denial_log.admit(Instant::now()).is_some() {
            info!(site = %site, client = %client, result = "limited", "device link");
        }
        return None;
    }
    // The current sites, not the connection's: a link used up since the handshake is gone.
    let sites = shared.sites.load();
    let known = sites
        .by_name(site)
        .is_some_and(|s| s.links.contains_key(&secret.id()));
    if !known {
        count("unknown");
        if shared.denial_log.admit(Instant::now()).is_some() {
            info!(site = %site, client = %client, result = "unknown", "device link");
        }
        return None;
    }
    // Off the runtime: a few small file reads, and for a download a rename and an fsync.
    let state = shared.state.clone();
    let lookup = secret.clone();
    let record = tokio::task::spawn_blocking(move || match wanted {
        Wanted::Page => state.link(&lookup),
        Wanted::P12 | Wanted::MobileConfig => state.take_link(&lookup),
    })
    .await;
    let record = match record {
        Ok(Ok(Some(record))) if record.site == *site => record,
        Err(e) => {
            tracing::warn!(site = %site, error = %e, "device link lookup failed");
            return None;
        }
        Ok(Ok(_)) => {
            count("used");
            info!(site = %site, client = %client, result = "used", "device link");
            return None;
        }
        Ok(Err(e)) => {
            tracing::warn!(site = %site, error = %e, "device link unreadable");
            return None;
        }
    };
    let user_agent = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let response = match wanted {
        Wanted::Page => page(&secret, &record, Platform::of(user_agent)),
        Wanted::P12 => file(
            record.p12().ok()?,
            "application/x-pkcs12",
            &format!("{}.p12", record.name),
        ),
        Wanted::MobileConfig => file(
            record.mobileconfig().as_bytes().to_vec(),
            "application/x-apple-aspen-config",
            &format!("{}.mobileconfig", record.name),
        ),
    };
    let result = match wanted {
        Wanted::Page => "page",
        _ => "download",
    };
    count(result);
    info!(site = %site, device = %record.name, client = %client, result, "device link");
    Some(response)
}

/// `/<secret>` (the page), `/<secret>/<anything>.p12` or `/<secret>/<anything>.mobileconfig`.
fn parse_path(path: &str) -> Option<(pki::LinkSecret, Wanted)> {
    let rest = path.strip_prefix('/')?;
    let (secret, file) = match rest.split_once('/') {
        Some((secret, file)) => (secret, Some(file)),
        None => (rest, None),
    };
    let secret = pki::LinkSecret::parse(secret)?;
    let wanted = match file {
        None => Wanted::Page,
        Some(f) if f.ends_with(".p12") && !f.contains('/') => Wanted::P12,
        Some(f) if f.ends_with(".mobileconfig") && !f.contains('/') => Wanted::MobileConfig,
        Some(_) => return None,
    };
    Some((secret, wanted))
}

/// Which file to offer first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Platform {
    Ios,
    Android,
    Desktop,
}

impl Platform {
    fn of(user_agent: &str) -> Self {
        if ["iPhone", "iPad", "iPod"]
            .iter()
            .any(|d| user_agent.contains(d))
        {
            Self::Ios
        } else if user_agent.contains("Android") {
            Self::Android
        } else {
            Self::Desktop
        }
    }
}

const STYLE: &str = "body{font:17px/1.5 system-ui,-apple-system,sans-serif;max-width:34em;\
margin:0 auto;padding:1em;color:#222;background:#fff}h1{font-size:1.4em}\
a.button{display:block;text-align:center;padding:.9em;margin:1em 0;border-radius:.5em;\
background:#1a5fb4;color:#fff;text-decoration:none;font-weight:600}\
ol{padding-left:1.3em}li{margin:.4em 0}small{color:#555}code{font-size:.95em}\
@media (prefers-color-scheme:dark){body{background:#111;color:#eee}small{color:#aaa}}";

fn page(
    secret: &pki::LinkSecret,
    record: &pki::LinkRecord,
    platform: Platform,
) -> Response<ResponseBody> {
    let name = escape(&record.name);
    let base = format!("/{}", secret.as_str());
    let p12 = format!("{base}/{name}.p12");
    let profile = format!("{base}/{name}.mobileconfig");
    let (button, steps, other) = match platform {
        Platform::Ios => (
            format!(r#"<a class="button" href="{profile}">Download the profile</a>"#),
            "<ol><li>Tap the button, then <b>Allow</b>.</li>\
             <li>Open <b>Settings</b>, tap <b>Profile Downloaded</b>, then <b>Install</b>.</li>\
             <li>Enter the password shown on the computer where this link was made.</li>\
             <li>Safari now opens your site. For the Home Assistant app, use the \
             <code>.p12</code> below in the app's own certificate setting.</li></ol>",
            format!(r#"<a href="{p12}">{name}.p12</a> (for apps)"#),
        ),
        Platform::Android => (
            format!(r#"<a class="button" href="{p12}">Download the certificate</a>"#),
            "<ol><li>Tap the button and save the file.</li>\
             <li>Open <b>Settings → Security → Encryption &amp; credentials → Install a \
             certificate → VPN &amp; app user certificate</b> and pick the file.</li>\
             <li>Enter the password shown on the computer where this link was made.</li>\
             <li>In the Home Assistant app, add your server; when it asks for a client \
             certificate (mTLS), choose this one.</li></ol>",
            format!(r#"<a href="{profile}">{name}.mobileconfig</a> (Apple devices)"#),
        ),
        Platform::Desktop => (
            format!(r#"<a class="button" href="{p12}">Download the certificate</a>"#),
            "<ol><li>Download the file.</li>\
             <li>Import it into your system's or browser's certificate store (double-click \
             it, or your browser's settings → certificates → import).</li>\
             <li>Enter the password shown where this link was made.</li></ol>",
            format!(r#"<a href="{profile}">{name}.mobileconfig</a> (macOS, iPhone, iPad)"#),
        ),
    };
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"referrer\" content=\"no-referrer\"><title>Install your certificate</title>\
<style>{STYLE}</style></head><body><h1>Certificate for {name}</h1>\
<p>This device gets its own certificate. The link works once: the download uses it up.</p>\
{button}{steps}<p><small>Other file: {other}</small></p></body></html>\n"
    );
    let mut response = respond(Bytes::from(html), "text/html; charset=utf-8");
    let style_hash = {
        use base64::Engine as _;
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, STYLE.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    };
    if let Ok(csp) = HeaderValue::from_str(&format!(
        "default-src 'none'; style-src 'sha256-{style_hash}'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    response
}

fn file(bytes: Vec<u8>, content_type: &'static str, filename: &str) -> Response<ResponseBody> {
    let mut response = respond(Bytes::from(bytes), content_type);
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\""))
    {
        response
            .headers_mut()
            .insert(header::CONTENT_DISPOSITION, disposition);
    }
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; sandbox"),
    );
    response
}

/// A 200 with the headers every link response carries.
fn respond(body: Bytes, content_type: &'static str) -> Response<ResponseBody> {
    let mut response = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// HTML-escapes a device name (names are `[a-z0-9._-]`, so this is belt and braces).
fn escape(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_platforms() {
        let secret = "A".repeat(27);
        assert_eq!(
            parse_path(&format!("/{secret}")).map(|p| p.1),
            Some(Wanted::Page)
        );
        assert_eq!(
            parse_path(&format!("/{secret}/x.p12")).map(|p| p.1),
            Some(Wanted::P12)
        );
        assert_eq!(
            parse_path(&format!("/{secret}/x.mobileconfig")).map(|p| p.1),
            Some(Wanted::MobileConfig)
        );
        for bad in [
            "/".to_owned(),
            format!("/{secret}/"),
            format!("/{secret}/a/b.p12"),
            format!("/{secret}x"),
            "/api/states".to_owned(),
        ] {
            assert!(parse_path(&bad).is_none(), "{bad}");
        }
        assert_eq!(
            Platform::of("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"),
            Platform::Ios
        );
        assert_eq!(
            Platform::of("Mozilla/5.0 (Linux; Android 14; Pixel 8)"),
            Platform::Android
        );
        assert_eq!(Platform::of("curl/8"), Platform::Desktop);
    }
}
