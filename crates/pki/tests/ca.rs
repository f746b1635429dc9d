//! Identities, CAs and the certificates they issue, checked field by field with x509-parser.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use pki::{
    Ca, Error, Identity, KeyType, Kind, Validity, fingerprint, fingerprint_hex, normalize_hostname,
    parse_certs, parse_key, validate_name,
};
use rustls_pki_types::PrivateKeyDer;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::public_key::PublicKey;

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

fn test_ca() -> Ca {
    Ca::generate("test CA", Validity::days(30)).unwrap()
}

fn aki(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("AKI")
}

fn ski(cert: &X509Certificate<'_>) -> Vec<u8> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("SKI")
}

fn sans<'a>(cert: &'a X509Certificate<'a>) -> Vec<GeneralName<'a>> {
    cert.subject_alternative_name()
        .unwrap()
        .map(|s| s.value.general_names.clone())
        .unwrap_or_default()
}

#[test]
fn identity_uri_round_trip() {
    let device = Identity::device("home", "phone.alice").unwrap();
    assert_eq!(device.to_uri(), "urn:doorless:device:home:phone.alice");
    assert_eq!(Identity::from_uri(&device.to_uri()).unwrap(), device);

    let connector = Identity::connector("site-2", "connector-1").unwrap();
    assert_eq!(connector.kind, Kind::Connector);
    assert_eq!(
        connector.to_uri(),
        "urn:doorless:connector:site-2:connector-1"
    );
    assert_eq!(Identity::from_uri(&connector.to_uri()).unwrap(), connector);
}

#[test]
fn bad_names_are_rejected() {
    for bad in [
        "",
        "Home",
        "a:b",
        "a/b",
        "-home",
        ".home",
        "_home",
        "home space",
        "héllo",
        &"a".repeat(64),
    ] {
        assert!(
            matches!(validate_name(bad), Err(Error::InvalidName { .. })),
            "{bad:?} accepted"
        );
        assert!(Identity::device("home", bad).is_err(), "{bad:?} accepted");
        assert!(Identity::connector(bad, "c").is_err(), "{bad:?} accepted");
    }
    for good in ["a", "0", "home", "phone.alice", "a_b-c.d", &"a".repeat(63)] {
        validate_name(good).unwrap();
    }
}

#[test]
fn bad_uris_are_rejected() {
    for bad in [
        "",
        "urn:doorless:device:home",
        "urn:doorless:device:home:phone:extra",
        "urn:doorless:admin:home:phone",
        "urn:other:device:home:phone",
        "URN:DOORLESS:device:home:phone",
        "urn:doorless:device:Home:phone",
        "urn:doorless:device::phone",
    ] {
        assert!(Identity::from_uri(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn identity_from_issued_certs() {
    let ca = test_ca();
    for identity in [
        Identity::device("home", "laptop").unwrap(),
        Identity::connector("home", "connector-1").unwrap(),
    ] {
        let issued = ca
            .issue_client(&identity, Validity::days(1), KeyType::EcdsaP256)
            .unwrap();
        assert_eq!(Identity::from_cert_der(&issued.cert_der).unwrap(), identity);
    }
}

#[test]
fn identity_requires_exactly_one_doorless_uri() {
    let ca = test_ca();
    let server = ca
        .issue_server(&["example.com".into()], Validity::days(1))
        .unwrap();
    assert!(matches!(
        Identity::from_cert_der(&server.cert_der),
        Err(Error::NoIdentity { .. })
    ));
    // The CA itself has no SAN extension at all.
    assert!(matches!(
        Identity::from_cert_der(ca.cert_der()),
        Err(Error::NoIdentity { .. })
    ));

    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![
        rcgen::SanType::URI("urn:doorless:device:a:x".try_into().unwrap()),
        rcgen::SanType::URI("urn:doorless:device:b:x".try_into().unwrap()),
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let two = params.self_signed(&key).unwrap();
    assert!(matches!(
        Identity::from_cert_der(two.der()),
        Err(Error::NoIdentity { .. })
    ));

    assert!(matches!(
        Identity::from_cert_der(b"not a certificate"),
        Err(Error::Certificate { .. })
    ));
}

#[test]
fn client_cert_has_exactly_the_policy_fields() {
    // Long-lived, so the 400 days asked for below fit inside the CA's life.
    let ca = Ca::generate("test CA", Validity::days(3652)).unwrap();
    let ca_cert = parse(ca.cert_der());
    let identity = Identity::device("home", "phone").unwrap();
    let not_before = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - Duration::days(2);
    let not_after = not_before + Duration::days(400);
    let validity = Validity {
        not_before,
        not_after,
    };
    let issued = ca
        .issue_client(&identity, validity, KeyType::EcdsaP256)
        .unwrap();
    let cert = parse(&issued.cert_der);

    let eku = cert.extended_key_usage().unwrap().expect("EKU").value;
    assert!(eku.client_auth);
    assert!(!eku.server_auth && !eku.any && !eku.code_signing && !eku.email_protection);
    assert!(eku.other.is_empty());

    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basic constraints");
    assert!(!bc.value.ca);
    let ku = cert.key_usage().unwrap().expect("KU").value;
    assert!(ku.digital_signature() && !ku.key_cert_sign() && !ku.crl_sign());

    assert_eq!(
        sans(&cert),
        vec![GeneralName::URI("urn:doorless:device:home:phone")]
    );
    let cn = cert.subject().iter_common_name().next().unwrap();
    assert_eq!(cn.as_str().unwrap(), "phone");

    let serial = cert.raw_serial();
    assert_eq!(serial.len(), 16);
    assert_eq!(serial[0] & 0x80, 0);
    assert_eq!(issued.serial, serial);

    assert_eq!(
        cert.validity().not_before.timestamp(),
        not_before.unix_timestamp()
    );
    assert_eq!(
        cert.validity().not_after.timestamp(),
        not_after.unix_timestamp()
    );
    assert_eq!(issued.not_after, not_after);

    assert_eq!(cert.issuer(), ca_cert.subject());
    assert_eq!(aki(&cert), ski(&ca_cert));
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    // And not by some other CA.
    let other = test_ca();
    assert!(
        cert.verify_signature(Some(parse(other.cert_der()).public_key()))
            .is_err()
    );

    assert_eq!(issued.fingerprint, fingerprint(&issued.cert_der));
    assert_eq!(fingerprint_hex(&issued.cert_der).len(), 64);
    assert!(matches!(
        parse_key(&issued.key_pem).unwrap(),
        PrivateKeyDer::Pkcs8(_)
    ));
    assert_eq!(
        parse_certs(&issued.cert_pem).unwrap()[0].as_ref(),
        issued.cert_der
    );
}

#[test]
fn validity_days_starts_an_hour_ago() {
    let v = Validity::days(10);
    let now = OffsetDateTime::now_utc();
    let skew = now - v.not_before;
    assert!(skew > Duration::minutes(59) && skew < Duration::minutes(61));
    let ahead = v.not_after - now;
    assert!(ahead > Duration::days(10) - Duration::minutes(1) && ahead <= Duration::days(10));
    // Absurd lengths saturate instead of panicking; the CA caps them at its own expiry.
    let forever = Validity::days(u32::MAX);
    let ca = test_ca();
    let issued = ca
        .issue_client(
            &Identity::device("a", "b").unwrap(),
            forever,
            KeyType::EcdsaP256,
        )
        .unwrap();
    assert_eq!(issued.not_after, ca.not_after());
}

#[test]
fn nothing_outlives_its_ca() {
    let ca = test_ca();
    let ca_cert = parse(ca.cert_der());
    assert_eq!(
        ca.not_after().unix_timestamp(),
        ca_cert.validity().not_after.timestamp()
    );
    let identity = Identity::device("a", "b").unwrap();
    let long = Validity::days(400);
    let client = ca
        .issue_client(&identity, long, KeyType::EcdsaP256)
        .unwrap();
    let server = ca.issue_server(&["example.com".into()], long).unwrap();
    for der in [&client.cert_der, &server.cert_der] {
        assert_eq!(
            parse(der).validity().not_after.timestamp(),
            ca_cert.validity().not_after.timestamp()
        );
    }
    // A CA that has expired signs nothing.
    let now = OffsetDateTime::now_utc();
    let old = Ca::generate(
        "old",
        Validity {
            not_before: now - Duration::days(10),
            not_after: now - Duration::days(1),
        },
    )
    .unwrap();
    let err = old
        .issue_client(&identity, Validity::days(1), KeyType::EcdsaP256)
        .unwrap_err();
    assert!(matches!(err, Error::CaExpired { .. }), "{err}");
}

#[test]
fn inverted_validity_is_refused() {
    let now = OffsetDateTime::now_utc();
    let validity = Validity {
        not_before: now,
        not_after: now - Duration::days(1),
    };
    let identity = Identity::device("a", "b").unwrap();
    assert!(matches!(
        test_ca().issue_client(&identity, validity, KeyType::EcdsaP256),
        Err(Error::InvalidValidity)
    ));
    assert!(matches!(
        Ca::generate("x", validity),
        Err(Error::InvalidValidity)
    ));
}

#[test]
fn serials_are_unique() {
    let ca = test_ca();
    let identity = Identity::device("a", "b").unwrap();
    let mut serials = std::collections::HashSet::new();
    for _ in 0..20 {
        let issued = ca
            .issue_client(&identity, Validity::days(1), KeyType::EcdsaP256)
            .unwrap();
        assert!(serials.insert(issued.serial));
    }
}

#[test]
fn rsa_client_certs() {
    let ca = test_ca();
    let issued = ca
        .issue_client(
            &Identity::device("home", "old-tablet").unwrap(),
            Validity::days(1),
            KeyType::Rsa2048,
        )
        .unwrap();
    let cert = parse(&issued.cert_der);
    match cert.public_key().parsed().unwrap() {
        PublicKey::RSA(rsa) => assert_eq!(rsa.key_size(), 2048),
        other => panic!("not RSA: {other:?}"),
    }
    assert!(matches!(
        parse_key(&issued.key_pem).unwrap(),
        PrivateKeyDer::Pkcs8(_)
    ));
    // key_der is PKCS#8 (what PKCS#12 writers expect).
    assert!(rcgen::KeyPair::try_from(issued.key_der.as_slice()).is_ok());
    cert.verify_signature(Some(parse(ca.cert_der()).public_key()))
        .unwrap();
}

#[test]
fn ca_cert_fields() {
    let ca = test_ca();
    let cert = parse(ca.cert_der());
    let bc = cert.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
    assert_eq!(cert.raw_serial().len(), 16);
    assert_eq!(cert.raw_serial()[0] & 0x80, 0);
    cert.verify_signature(None).unwrap();
    let ten_years = Ca::generate("long", Validity::days(3652)).unwrap();
    let lifetime = parse(ten_years.cert_der()).validity().time_to_expiration();
    assert!(lifetime.unwrap().whole_days() >= 3651);
}

#[test]
fn server_cert_fields() {
    let ca = test_ca();
    let issued = ca
        .issue_server(
            &["Home.Example.com".into(), "127.0.0.1".into(), "::1".into()],
            Validity::days(1),
        )
        .unwrap();
    let cert = parse(&issued.cert_der);
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    assert!(!cert.is_ca());
    let sans = sans(&cert);
    assert_eq!(sans[0], GeneralName::DNSName("home.example.com"));
    assert_eq!(sans[1], GeneralName::IPAddress(&[127, 0, 0, 1]));
    assert!(matches!(sans[2], GeneralName::IPAddress(ip) if ip.len() == 16));
    cert.verify_signature(Some(parse(ca.cert_der()).public_key()))
        .unwrap();

    assert!(matches!(
        ca.issue_server(&[], Validity::days(1)),
        Err(Error::NoHostnames)
    ));
    assert!(matches!(
        ca.issue_server(&["*.example.com".into()], Validity::days(1)),
        Err(Error::InvalidHostname { .. })
    ));
}

#[test]
fn reloaded_ca_issues_like_the_original() {
    let ca = test_ca();
    let reloaded = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(reloaded.cert_der(), ca.cert_der());
    let identity = Identity::device("home", "phone").unwrap();
    let a = ca
        .issue_client(&identity, Validity::days(1), KeyType::EcdsaP256)
        .unwrap();
    let b = reloaded
        .issue_client(&identity, Validity::days(1), KeyType::EcdsaP256)
        .unwrap();
    let (a, b) = (parse(&a.cert_der), parse(&b.cert_der));
    assert_eq!(a.issuer().as_raw(), b.issuer().as_raw());
    assert_eq!(aki(&a), aki(&b));
    b.verify_signature(Some(parse(ca.cert_der()).public_key()))
        .unwrap();
}

#[test]
fn ca_load_checks_key_and_ca_flag() {
    let ca = test_ca();
    let other = test_ca();
    assert!(matches!(
        Ca::from_pem(ca.cert_pem(), &other.key_pem()),
        Err(Error::KeyMismatch { .. })
    ));
    let leaf = ca
        .issue_client(
            &Identity::device("a", "b").unwrap(),
            Validity::days(1),
            KeyType::EcdsaP256,
        )
        .unwrap();
    assert!(matches!(
        Ca::from_pem(&leaf.cert_pem, &leaf.key_pem),
        Err(Error::NotCa { .. })
    ));
    assert!(matches!(
        Ca::from_pem("garbage", &ca.key_pem()),
        Err(Error::Certificate { .. })
    ));
    assert!(matches!(
        Ca::from_pem(ca.cert_pem(), "garbage"),
        Err(Error::Key { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
    std::fs::write(&crt, ca.cert_pem()).unwrap();
    std::fs::write(&key, other.key_pem()).unwrap();
    let err = Ca::load(&crt, &key).unwrap_err();
    assert!(err.to_string().contains("ca.key"), "{err}");
    std::fs::write(&key, ca.key_pem()).unwrap();
    Ca::load(&crt, &key).unwrap();
    let err = Ca::load(&dir.path().join("missing.crt"), &key).unwrap_err();
    assert!(err.to_string().contains("missing.crt"), "{err}");
}

#[test]
fn debug_never_shows_keys() {
    let ca = test_ca();
    let issued = ca
        .issue_client(
            &Identity::device("a", "b").unwrap(),
            Validity::days(1),
            KeyType::EcdsaP256,
        )
        .unwrap();
    let key_body = |pem: &str| pem.lines().nth(1).unwrap().to_owned();
    let shown = format!("{issued:?}");
    assert!(!shown.contains(&key_body(&issued.key_pem)));
    assert!(shown.contains("<redacted>"));
    assert!(!format!("{ca:?}").contains(&key_body(&ca.key_pem())));
}

#[test]
fn hostnames_are_normalized() {
    assert_eq!(
        normalize_hostname("Home.Example.COM").unwrap(),
        "home.example.com"
    );
    assert_eq!(normalize_hostname("localhost").unwrap(), "localhost");
    assert_eq!(
        normalize_hostname("xn--bcher-kva.example").unwrap(),
        "xn--bcher-kva.example"
    );
    assert_eq!(
        normalize_hostname("1a.example.com").unwrap(),
        "1a.example.com"
    );
    let longest = format!("{0}.{0}.{0}.{1}", "a".repeat(63), "b".repeat(61));
    assert_eq!(longest.len(), 253);
    assert_eq!(normalize_hostname(&longest).unwrap(), longest);
    // IP addresses cannot name a site (no SNI for them), however they are written.
    for ip in [
        "203.0.113.7",
        "0:0::1",
        "::1",
        "2001:DB8::1",
        "[2001:db8::1]",
        "::ffff:1.2.3.4",
        "010.0.0.1",
        "1.2.3",
        "127.1",
    ] {
        assert!(
            matches!(normalize_hostname(ip), Err(Error::IpHostname { .. })),
            "{ip:?}: {:?}",
            normalize_hostname(ip)
        );
    }
    let too_long = format!("{longest}a");
    for bad in [
        "a.123",
        "ha.example.com:443",
        "hä.example.com",
        "*",
        "ha.*.example.com",
        "[ha.example.com]",
        &too_long,
        "",
        "a..b",
        ".a",
        "a.",
        "-a.b",
        "a_b.c",
        "*.a.b",
        "a b",
        "1.2.3",
        "a:b",
        &format!("{}.com", "a".repeat(64)),
    ] {
        assert!(normalize_hostname(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn pem_helpers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca();
    let other = test_ca();
    let both = dir.path().join("both.crt");
    std::fs::write(&both, format!("{}{}", ca.cert_pem(), other.cert_pem())).unwrap();
    assert_eq!(pki::load_certs(&both).unwrap().len(), 2);

    let key = dir.path().join("k.key");
    std::fs::write(&key, ca.key_pem()).unwrap();
    assert!(pki::load_key(&key).is_ok());
    // A key file holds no certificate; an error names the file.
    let err = pki::load_certs(&key).unwrap_err();
    assert!(err.to_string().contains("k.key"), "{err}");
    let err = pki::load_key(&both).unwrap_err();
    assert!(err.to_string().contains("both.crt"), "{err}");
    assert!(parse_certs("").is_err());

    // A damaged key is reported without its contents.
    let body = ca.key_pem().lines().nth(1).unwrap().to_owned();
    let damaged = ca.key_pem().replace(&body, &format!("{body}!!"));
    let err = parse_key(&damaged).unwrap_err();
    assert!(!err.to_string().contains(&body), "{err}");
}

#[test]
fn csr_only_contributes_its_public_key() {
    let ca = test_ca();
    let key = rcgen::KeyPair::generate().unwrap();
    // A hostile CSR asking for much more than a device certificate.
    let mut wish = rcgen::CertificateParams::new(vec!["evil.example.com".to_string()]).unwrap();
    wish.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    wish.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    wish.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let csr = wish.serialize_request(&key).unwrap().pem().unwrap();

    let identity = Identity::device("home", "own-key").unwrap();
    let certified = ca
        .issue_client_csr(&csr, &identity, Validity::days(7))
        .unwrap();
    let cert = parse(&certified.cert_der);
    assert!(!cert.is_ca());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    assert_eq!(
        sans(&cert),
        vec![GeneralName::URI("urn:doorless:device:home:own-key")]
    );
    assert_eq!(cert.raw_serial(), certified.serial);
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&key)
    );
    cert.verify_signature(Some(parse(ca.cert_der()).public_key()))
        .unwrap();
    assert_eq!(
        Identity::from_cert_der(&certified.cert_der).unwrap(),
        identity
    );

    assert!(matches!(
        ca.issue_client_csr("garbage", &identity, Validity::days(1)),
        Err(Error::Csr { .. })
    ));
    let broken = csr.replacen("MII", "MIJ", 1);
    assert!(
        ca.issue_client_csr(&broken, &identity, Validity::days(1))
            .is_err()
    );
}

#[test]
fn error_is_usable_across_threads() {
    fn assert_traits<T: Send + Sync + std::error::Error + 'static>() {}
    assert_traits::<Error>();
}
