//! Table tests: every mode × certificate state × cookie state × path shape.

use std::collections::HashSet;
use std::net::IpAddr;

use pki::Fingerprint;

use super::*;
use crate::cookie::{self, Claims, SessionKey, Verdict};

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
        Cookie::Valid | Cookie::RevokedCert => cookie::issue(&key(), &good),
        Cookie::Expired => cookie::issue(&key(), &claims(SITE, FP, NOW - 1)),
        Cookie::Forged => {
            let other = SessionKey::from_bytes(&[3; 32]).unwrap_or_else(|| panic!("key"));
            cookie::issue(&other, &good)
        }
        Cookie::OtherSite => cookie::issue(&key(), &claims("cabin", FP, NOW + 3600)),
        Cookie::OtherCert => cookie::issue(&key(), &claims(SITE, OTHER_FP, NOW + 3600)),
    }
}

/// The session state the edge derives from a cookie (what `serve` does).
fn session_state(kind: Cookie) -> Session {
    let revoked: HashSet<Fingerprint> = match kind {
        Cookie::RevokedCert => [FP].into(),
        _ => HashSet::new(),
    };
    match cookie_value(kind) {
        None => Session::Absent,
        Some(v) => match cookie::check(&key(), &v, SITE, NOW, &revoked) {
            Verdict::Valid(_) => Session::Valid,
            _ => Session::Invalid,
        },
    }
}

fn certificate_state(cert: Cert) -> Option<Certificate> {
    match cert {
        Cert::Valid => Some(Certificate::Valid),
        Cert::Absent => Some(Certificate::Absent),
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

fn facts<'a>(certificate: Certificate, session: Session, target: &'a str) -> Facts<'a> {
    Facts {
        conn_site: SITE,
        host: Some("ha.example.com"),
        host_site: Some(SITE),
        client_ip: IpAddr::from([203, 0, 113, 7]),
        certificate,
        session,
        target,
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
                        let got = decide(&policy, &facts(certificate, session, target));
                        let want = match (certificate, session) {
                            (Certificate::Valid, _) => Decision::Allow(Grant::Certificate),
                            (_, Session::Valid) if mode == ClientAuth::RequiredOrSession => {
                                Decision::Allow(Grant::Session)
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
    assert_eq!(session_state(Cookie::Valid), Session::Valid);
    // "Other cert" is still a valid cookie of this site: with no certificate it opens the
    // site; with a certificate the certificate decides.
    assert_eq!(session_state(Cookie::OtherCert), Session::Valid);
    for bad in [
        Cookie::Expired,
        Cookie::Forged,
        Cookie::OtherSite,
        Cookie::RevokedCert,
    ] {
        assert_eq!(session_state(bad), Session::Invalid, "{bad:?}");
    }
}

#[test]
fn host_must_select_the_connection_site() {
    let p = SitePolicy::default();
    let mut f = facts(Certificate::Valid, Session::Absent, "/");
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
    let mut f = facts(Certificate::Valid, Session::Absent, "/");
    assert_eq!(decide(&p, &f), Decision::Allow(Grant::Certificate));
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
    let f = facts(Certificate::Absent, Session::Absent, "/api/webhook/x");
    assert_eq!(decide(&p, &f), Decision::Deny(DenyReason::Address));
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
