//! Table tests: every mode × certificate state × cookie state × path shape.

use std::collections::HashSet;
use std::net::IpAddr;

use pki::Fingerprint;

use super::*;
use crate::cookie::{Claims, SessionKey, Verdict};
use crate::tls::PeerCertificate;

const NOW: u64 = 1_000_000;
const SITE: &str = "home";
const FP: Fingerprint = Fingerprint::from_bytes([1; 32]);
const OTHER_FP: Fingerprint = Fingerprint::from_bytes([2; 32]);

/// Certificate states a client may arrive with. Only `Valid` and `Absent` survive the TLS
/// handshake; the others must be denied by the policy too (defence in depth).
#[derive(Debug, Clone, Copy)]
enum Cert {
    Valid,
    Absent,
    Revoked,
    OtherSite,
    Expired,
}

#[derive(Debug, Clone, Copy)]
enum Cookie {
    None,
    Valid,
    Expired,
    Forged,
    OtherSite,
    OtherCert,
    RevokedCert,
}

fn key() -> SessionKey {
    SessionKey::from_bytes(&[9; 32]).unwrap_or_else(|| panic!("key"))
}

fn cookie_value(kind: Cookie) -> Option<String> {
    let claims = |site: &str, fp, expires| Claims {
        site: site.into(),
        fingerprint: fp,
        device: "phone".into(),
        expires,
    };
    let good = claims(SITE, FP, NOW + 3600);
    match kind {
        Cookie::None => None,
        Cookie::Valid | Cookie::RevokedCert => key().issue(&good),
        Cookie::Expired => key().issue(&claims(SITE, FP, NOW - 1)),
        Cookie::Forged => {
            let other = SessionKey::from_bytes(&[3; 32]).unwrap_or_else(|| panic!("key"));
            other.issue(&good)
        }
        Cookie::OtherSite => key().issue(&claims("cabin", FP, NOW + 3600)),
        Cookie::OtherCert => key().issue(&claims(SITE, OTHER_FP, NOW + 3600)),
    }
}

/// The cookie verdict the edge derives from a cookie (what `serve` does).
fn session_state(kind: Cookie) -> Option<Verdict> {
    let revoked: HashSet<Fingerprint> = match kind {
        Cookie::RevokedCert => [FP].into(),
        _ => HashSet::new(),
    };
    cookie_value(kind).map(|v| key().verify(&v, SITE, NOW, &revoked))
}

/// The device certificate a `Cert::Valid` client presents.
fn device_certificate() -> &'static PeerCertificate {
    static CERT: std::sync::OnceLock<PeerCertificate> = std::sync::OnceLock::new();
    CERT.get_or_init(|| PeerCertificate {
        device: "phone".into(),
        fingerprint: FP,
        not_after: NOW + 86_400,
    })
}

/// What the handshake hands the policy: `Some(None)` for no certificate, `None` where no
/// request can exist.
fn certificate_state(cert: Cert) -> Option<Option<&'static PeerCertificate>> {
    match cert {
        Cert::Valid => Some(Some(device_certificate())),
        Cert::Absent => Some(None),
        // The handshake refuses these; no request ever exists.
        Cert::Revoked | Cert::OtherSite | Cert::Expired => None,
    }
}

const EXEMPT: &str = "/api/webhook/";

/// Targets and whether they are genuinely under the exempt prefix in a way every server
/// agrees on.
const TARGETS: &[(&str, bool)] = &[
    ("/api/webhook/abc", true),
    ("/api/webhook/abc?x=1", true),
    ("/api/webhook/%61bc", true),
    ("/api/states", false),
    ("/", false),
    ("/api/webhook", false),
    ("/api/webhook/../states", false),
    ("/api/webhook/%2e%2e/states", false),
    ("/api/webhook/%2E%2E/states", false),
    ("/api/webhook/%252e%252e/states", false),
    ("/api/webhook/./x", false),
    ("/api/webhook//x", false),
    ("//api/webhook/x", false),
    ("/api/webhook/..;/states", false),
    ("/api/webhook/x;y", false),
    ("/api/webhook/x%00", false),
    ("/api/webhook/x\\..\\y", false),
    ("/API/WEBHOOK/abc", false),
    ("/Api/webhook/abc", false),
    ("/api/webhook/%zz", false),
    ("/api/webhook/%25252525252e", false),
];

fn policy(mode: ClientAuth, public: bool) -> SitePolicy {
    SitePolicy {
        client_auth: mode,
        public_paths: if public { vec![EXEMPT.into()] } else { vec![] },
        ..SitePolicy::default()
    }
}

fn facts<'a, 'e>(
    certificate: Option<&'e PeerCertificate>,
    cookie: Option<&'e Verdict>,
    target: &'a str,
) -> Facts<'a, 'e> {
    Facts {
        conn_site: SITE,
        host: Some("ha.example.com"),
        host_site: Some(SITE),
        client_ip: IpAddr::from([203, 0, 113, 7]),
        certificate,
        cookie,
        target,
        upgrade: false,
    }
}

#[test]
fn every_mode_certificate_cookie_and_path() {
    let certs = [
        Cert::Valid,
        Cert::Absent,
        Cert::Revoked,
        Cert::OtherSite,
        Cert::Expired,
    ];
    let cookies = [
        Cookie::None,
        Cookie::Valid,
        Cookie::Expired,
        Cookie::Forged,
        Cookie::OtherSite,
        Cookie::OtherCert,
        Cookie::RevokedCert,
    ];
    let mut rows = 0;
    for mode in [ClientAuth::Required, ClientAuth::RequiredOrSession] {
        for public in [false, true] {
            let policy = policy(mode, public);
            for cert in certs {
                for cookie in cookies {
                    for &(target, exempt) in TARGETS {
                        rows += 1;
                        let Some(certificate) = certificate_state(cert) else {
                            continue; // refused in the TLS handshake: nothing to decide
                        };
                        let session = session_state(cookie);
                        let got = decide(&policy, &facts(certificate, session.as_ref(), target));
                        let want = match (certificate, &session) {
                            (Some(cert), _) => Decision::Allow(Grant::Certificate(cert)),
                            (_, Some(Verdict::Valid(claims)))
                                if mode == ClientAuth::RequiredOrSession =>
                            {
                                Decision::Allow(Grant::Session(claims))
                            }
                            _ if public && exempt => Decision::Allow(Grant::PublicPath),
                            _ => Decision::Deny(DenyReason::NoCredentials),
                        };
                        assert_eq!(
                            got, want,
                            "mode {mode:?} public {public} cert {cert:?} cookie {cookie:?} target {target}"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(rows, 2 * 2 * 5 * 7 * TARGETS.len());
}

#[test]
fn cookie_states_map_as_documented() {
    assert!(matches!(
        session_state(Cookie::Valid),
        Some(Verdict::Valid(_))
    ));
    // "Other cert" is still a valid cookie of this site: with no certificate it opens the
    // site; with a certificate the certificate decides.
    assert!(matches!(
        session_state(Cookie::OtherCert),
        Some(Verdict::Valid(_))
    ));
    for bad in [
        Cookie::Expired,
        Cookie::Forged,
        Cookie::OtherSite,
        Cookie::RevokedCert,
    ] {
        assert!(
            matches!(session_state(bad), Some(v) if !matches!(v, Verdict::Valid(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn host_must_select_the_connection_site() {
    let p = SitePolicy::default();
    let mut f = facts(Some(device_certificate()), None, "/");
    f.host = None;
    assert_eq!(decide(&p, &f), Decision::Deny(DenyReason::MissingHost));
    f.host = Some("cabin.example.com");
    f.host_site = Some("cabin");
    assert_eq!(decide(&p, &f), Decision::Deny(DenyReason::HostMismatch));
    f.host_site = None;
    assert_eq!(decide(&p, &f), Decision::Deny(DenyReason::HostMismatch));
}

#[test]
fn cidr_lists() {
    let net = |s: &str| s.parse::<IpNet>().unwrap_or_else(|_| panic!("{s}"));
    let p = SitePolicy {
        allow_cidrs: vec![net("203.0.113.0/24")],
        deny_cidrs: vec![net("203.0.113.66/32")],
        ..SitePolicy::default()
    };
    let mut f = facts(Some(device_certificate()), None, "/");
    assert_eq!(
        decide(&p, &f),
        Decision::Allow(Grant::Certificate(device_certificate()))
    );
    f.client_ip = IpAddr::from([203, 0, 113, 66]);
    assert_eq!(decide(&p, &f), Decision::Deny(DenyReason::Address));
    f.client_ip = IpAddr::from([198, 51, 100, 1]);
    assert_eq!(decide(&p, &f), Decision::Deny(DenyReason::Address));
    // Deny applies to public paths too.
    let p = SitePolicy {
        public_paths: vec![EXEMPT.into()],
        deny_cidrs: vec![net("0.0.0.0/0")],
        ..SitePolicy::default()
    };
    let f = facts(None, None, "/api/webhook/x");
    assert_eq!(decide(&p, &f), Decision::Deny(DenyReason::Address));
}

/// A public path exempts plain HTTP only: an upgrade there needs credentials like anywhere
/// else (after a 101 the bytes no longer pass the request path).
#[test]
fn upgrades_are_never_exempt() {
    for mode in [ClientAuth::Required, ClientAuth::RequiredOrSession] {
        let p = policy(mode, true);
        let mut f = facts(None, None, EXEMPT);
        assert_eq!(decide(&p, &f), Decision::Allow(Grant::PublicPath));
        f.upgrade = true;
        assert_eq!(decide(&p, &f), Decision::Deny(DenyReason::NoCredentials));
        let cert = device_certificate();
        let f = Facts {
            upgrade: true,
            ..facts(Some(cert), None, EXEMPT)
        };
        assert_eq!(decide(&p, &f), Decision::Allow(Grant::Certificate(cert)));
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
