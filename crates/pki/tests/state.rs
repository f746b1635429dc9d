//! The state directory, enrollment tokens, and cross-checks with OpenSSL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use pki::{
    EnrollmentToken, Error, Identity, InitOptions, KeyType, Kind, StateDir, TUNNEL_SERVER_NAME,
    Validity,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

fn init() -> (tempfile::TempDir, StateDir) {
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::init(&tmp.path().join("state"), &InitOptions::default()).unwrap();
    (tmp, state)
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn cert_der(path: &Path) -> Vec<u8> {
    pki::load_certs(path).unwrap().remove(0).to_vec()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

fn verify(leaf_der: &[u8], ca_path: &Path) {
    let ca = cert_der(ca_path);
    parse(leaf_der)
        .verify_signature(Some(parse(&ca).public_key()))
        .unwrap();
}

fn hosts(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn init_creates_everything_with_private_modes() {
    let (_tmp, state) = init();
    assert_eq!(mode(state.root()), 0o700);
    for key in [
        state.tunnel_ca_path().with_extension("key"),
        state.tunnel_key_path(),
        state.connector_ca_path().with_extension("key"),
        state.server_ca_path().with_extension("key"),
        state.session_key_path(),
    ] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    assert_eq!(std::fs::read(state.session_key_path()).unwrap().len(), 32);
    assert_eq!(mode(&state.root().join("sites")), 0o700);
    assert_eq!(state.clients().unwrap(), vec![]);

    for ca in [
        state.tunnel_ca_path(),
        state.connector_ca_path(),
        state.server_ca_path(),
    ] {
        assert!(parse(&cert_der(&ca)).is_ca());
    }
    let tunnel = cert_der(&state.tunnel_cert_path());
    let cert = parse(&tunnel);
    let sans = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        sans.value.general_names,
        vec![GeneralName::DNSName(TUNNEL_SERVER_NAME)]
    );
    assert!(
        cert.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );
    verify(&tunnel, &state.tunnel_ca_path());
    pki::load_key(&state.tunnel_key_path()).unwrap();

    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.root().join("state.json")).unwrap()).unwrap();
    assert_eq!(json["version"], 1);
    assert!(json["created"].is_string());

    // No temporary files left behind.
    for entry in std::fs::read_dir(state.root()).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(!name.to_string_lossy().starts_with('.'), "{name:?}");
    }
}

#[test]
fn init_refuses_non_empty_directories() {
    let (_tmp, state) = init();
    let root = state.root().to_owned();
    assert!(matches!(
        StateDir::init(&root, &InitOptions::default()),
        Err(Error::AlreadyInitialized)
    ));

    let foreign = tempfile::tempdir().unwrap();
    std::fs::write(foreign.path().join("notes.txt"), "mine").unwrap();
    assert!(matches!(
        StateDir::init(foreign.path(), &InitOptions::default()),
        Err(Error::AlreadyInitialized)
    ));

    // An existing empty directory is fine, and gets tightened to 0700.
    let empty = tempfile::tempdir().unwrap();
    std::fs::set_permissions(empty.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    StateDir::init(empty.path(), &InitOptions::default()).unwrap();
    assert_eq!(mode(empty.path()), 0o700);
}

#[test]
fn interrupted_init_is_recognised() {
    let (_tmp, state) = init();
    let root = state.root().to_owned();
    std::fs::remove_file(root.join("state.json")).unwrap();
    let err = StateDir::init(&root, &InitOptions::default()).unwrap_err();
    assert!(matches!(err, Error::InterruptedInit { .. }), "{err}");
    assert!(err.to_string().contains("remove"), "{err}");
    let err = StateDir::open(&root).unwrap_err();
    assert!(matches!(err, Error::NotInitialized { .. }), "{err}");

    // Interrupted while writing the very first file.
    let early = tempfile::tempdir().unwrap();
    std::fs::write(early.path().join(".tunnel-ca.key.tmp-0123456789abcdef"), "").unwrap();
    let err = StateDir::init(early.path(), &InitOptions::default()).unwrap_err();
    assert!(matches!(err, Error::InterruptedInit { .. }), "{err}");
}

#[test]
fn open_checks_the_marker() {
    let (_tmp, state) = init();
    let root = state.root().to_owned();
    let opened = StateDir::open(&root).unwrap();
    assert_eq!(opened.root(), root);

    std::fs::write(
        root.join("state.json"),
        r#"{"version":2,"edge_addr":null,"created":"2030-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    assert!(matches!(
        StateDir::open(&root),
        Err(Error::UnsupportedVersion { version: 2, .. })
    ));
    std::fs::write(root.join("state.json"), "{").unwrap();
    let err = StateDir::open(&root).unwrap_err();
    assert!(err.to_string().contains("state.json"), "{err}");
}

#[test]
fn init_validates_edge_addr() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in [
        "edge.example.com",
        "edge.example.com:0",
        "::1:443",
        ":443",
        "a b:1",
    ] {
        let options = InitOptions {
            edge_addr: Some(bad.into()),
        };
        assert!(
            matches!(
                StateDir::init(&tmp.path().join("x"), &options),
                Err(Error::InvalidEdgeAddr { .. })
            ),
            "{bad:?} accepted"
        );
    }
    for good in [
        "edge.example.com:443",
        "203.0.113.7:4433",
        "[2001:db8::1]:443",
    ] {
        let options = InitOptions {
            edge_addr: Some(good.into()),
        };
        let root = tmp.path().join(good.replace([':', '[', ']'], "_"));
        let state = StateDir::init(&root, &options).unwrap();
        assert_eq!(state.edge_addr(), Some(good));
    }
}

#[test]
fn sites() {
    let (_tmp, state) = init();
    let home = state
        .add_site(
            "home",
            &hosts(&["HA.Example.com", "ha.example.com", "home.example.net"]),
        )
        .unwrap();
    assert_eq!(home.name, "home");
    assert_eq!(
        home.hostnames,
        hosts(&["ha.example.com", "home.example.net"])
    );
    assert_eq!(state.site("home").unwrap(), home);
    assert_eq!(mode(&home.server_key_path), 0o600);
    assert_eq!(mode(&home.client_ca_path.with_extension("key")), 0o600);
    assert_eq!(mode(home.client_ca_path.parent().unwrap()), 0o700);
    assert!(parse(&cert_der(&home.client_ca_path)).is_ca());
    let server = cert_der(&home.server_cert_path);
    verify(&server, &state.server_ca_path());
    assert!(
        parse(&server)
            .extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );

    let cabin = state
        .add_site("cabin", &hosts(&["cabin.example.com"]))
        .unwrap();
    assert_eq!(state.sites().unwrap(), vec![cabin, home]);

    assert!(matches!(
        state.add_site("home", &hosts(&["other.example.com"])),
        Err(Error::SiteExists { .. })
    ));
    let err = state
        .add_site("barn", &hosts(&["new.example.com", "HA.example.com"]))
        .unwrap_err();
    assert!(
        matches!(&err, Error::HostnameInUse { hostname, site } if hostname == "ha.example.com" && site == "home"),
        "{err}"
    );
    assert!(matches!(
        state.add_site("barn", &[]),
        Err(Error::NoHostnames)
    ));
    assert!(matches!(
        state.add_site("barn", &hosts(&["bad host"])),
        Err(Error::InvalidHostname { .. })
    ));
    assert!(matches!(
        state.add_site("Barn", &hosts(&["barn.example.com"])),
        Err(Error::InvalidName { .. })
    ));
    // Clients send no SNI for IP addresses: such a site could never be reached.
    for ip in [
        "203.0.113.7",
        "10.0.0.5",
        "2001:db8::1",
        "[2001:db8::1]",
        "::ffff:203.0.113.7",
    ] {
        let err = state
            .add_site("barn", &hosts(&["barn.example.com", ip]))
            .unwrap_err();
        assert!(matches!(err, Error::IpHostname { .. }), "{ip}: {err}");
        assert!(err.to_string().contains("SNI"), "{err}");
    }
    // Refused attempts leave nothing behind.
    assert_eq!(state.sites().unwrap().len(), 2);
    assert_eq!(
        std::fs::read_dir(state.root().join("sites"))
            .unwrap()
            .count(),
        2
    );

    assert!(matches!(
        state.site("barn"),
        Err(Error::SiteNotFound { .. })
    ));
    assert!(matches!(
        state.site("../.."),
        Err(Error::SiteNotFound { .. })
    ));
}

#[test]
fn clients_are_recorded_and_unique() {
    let (_tmp, state) = init();
    let home = state.add_site("home", &hosts(&["ha.example.com"])).unwrap();
    let issued = state
        .add_client("home", "phone", Validity::days(365), KeyType::EcdsaP256)
        .unwrap();
    verify(&issued.cert_der, &home.client_ca_path);
    assert_eq!(
        Identity::from_cert_der(&issued.cert_der).unwrap(),
        Identity::device("home", "phone").unwrap()
    );
    let file = state.root().join("sites/home/clients/phone.crt");
    assert_eq!(cert_der(&file), issued.cert_der);
    assert_eq!(file, state.cert_path(Kind::Device, "home", "phone"));

    let index = state.clients().unwrap();
    assert_eq!(index.len(), 1);
    let entry = &index[0];
    assert_eq!(
        (entry.kind, entry.site.as_str(), entry.name.as_str()),
        (Kind::Device, "home", "phone")
    );
    assert_eq!(entry.fingerprint, pki::fingerprint_hex(&issued.cert_der));
    assert_eq!(entry.serial.len(), 32);
    assert!(entry.not_after.ends_with('Z'));
    assert_eq!(entry.revoked_at, None);
    let raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.root().join("index.json")).unwrap()).unwrap();
    assert_eq!(raw[0]["kind"], "device");

    assert!(matches!(
        state.add_client("home", "phone", Validity::days(1), KeyType::EcdsaP256),
        Err(Error::AlreadyIssued { .. })
    ));
    assert!(matches!(
        state.add_client("nowhere", "phone", Validity::days(1), KeyType::EcdsaP256),
        Err(Error::SiteNotFound { .. })
    ));
    assert!(matches!(
        state.add_client("home", "Phone", Validity::days(1), KeyType::EcdsaP256),
        Err(Error::InvalidName { .. })
    ));

    // After revocation the name can be issued again; both entries stay.
    let revoked = state.revoke(Kind::Device, "home", "phone").unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(matches!(
        state.revoke(Kind::Device, "home", "phone"),
        Err(Error::NotIssued { .. })
    ));
    let again = state
        .add_client("home", "phone", Validity::days(1), KeyType::Rsa2048)
        .unwrap();
    assert_ne!(again.serial, issued.serial);
    let index = state.clients().unwrap();
    assert_eq!(index.len(), 2);
    assert!(index[0].revoked_at.is_some() && index[1].revoked_at.is_none());
}

#[test]
fn connector_tokens() {
    let (_tmp, state) = init();
    state.add_site("home", &hosts(&["ha.example.com"])).unwrap();
    let encoded = state.issue_connector("home", None).unwrap().encode();
    assert!(encoded.starts_with("dl1.") && !encoded.contains(char::is_whitespace));

    let token = EnrollmentToken::decode(&format!("  {encoded}\n")).unwrap();
    assert_eq!(token.site, "home");
    assert_eq!(token.connector_id, "connector-1");
    assert_eq!(token.edges, vec!["ha.example.com:443".to_string()]);
    assert_eq!(token.server_name, TUNNEL_SERVER_NAME);
    assert_eq!(
        token.tunnel_ca_pem,
        std::fs::read_to_string(state.tunnel_ca_path()).unwrap()
    );
    let cert = pki::parse_certs(&token.cert_pem).unwrap().remove(0);
    assert_eq!(
        Identity::from_cert_der(&cert).unwrap(),
        Identity::connector("home", "connector-1").unwrap()
    );
    verify(&cert, &state.connector_ca_path());
    assert_eq!(
        cert_der(&state.cert_path(Kind::Connector, "home", "connector-1")),
        cert.to_vec()
    );
    assert_eq!(encoded.parse::<EnrollmentToken>().unwrap(), token);

    let second = state.issue_connector("home", None).unwrap();
    assert_eq!(second.connector_id, "connector-2");
    let named = state.issue_connector("home", Some("pi")).unwrap();
    assert_eq!(named.connector_id, "pi");
    assert!(matches!(
        state.issue_connector("home", Some("pi")),
        Err(Error::AlreadyIssued { .. })
    ));
    assert!(matches!(
        state.issue_connector("home", Some("Pi")),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        state.issue_connector("nowhere", None),
        Err(Error::SiteNotFound { .. })
    ));
    let kinds: Vec<_> = state.clients().unwrap().iter().map(|e| e.kind).collect();
    assert_eq!(kinds, vec![Kind::Connector; 3]);

    // Revoked ids are not reused.
    state
        .revoke(Kind::Connector, "home", "connector-2")
        .unwrap();
    let third = state.issue_connector("home", None).unwrap();
    assert_eq!(third.connector_id, "connector-3");

    let debug = format!("{token:?}");
    assert!(debug.contains("<redacted>"));
    assert!(!debug.contains(token.key_pem.lines().nth(1).unwrap()));
}

#[test]
fn tokens_use_the_edge_addr_from_init() {
    let tmp = tempfile::tempdir().unwrap();
    let options = InitOptions {
        edge_addr: Some("edge.example.net:7443".into()),
    };
    let state = StateDir::init(tmp.path(), &options).unwrap();
    state.add_site("home", &hosts(&["ha.example.com"])).unwrap();
    let token = state.issue_connector("home", None).unwrap();
    assert_eq!(token.edges, vec!["edge.example.net:7443".to_string()]);

    let reopened = StateDir::open(tmp.path()).unwrap();
    assert_eq!(reopened.edge_addr(), Some("edge.example.net:7443"));

    // An IPv6 edge address stays bracketed.
    let tmp = tempfile::tempdir().unwrap();
    let options = InitOptions {
        edge_addr: Some("[2001:db8::1]:443".into()),
    };
    let state = StateDir::init(tmp.path(), &options).unwrap();
    state.add_site("v6", &hosts(&["ha.example.com"])).unwrap();
    let token = state.issue_connector("v6", None).unwrap();
    assert_eq!(token.edges, vec!["[2001:db8::1]:443".to_string()]);

    // Without one, the site's first hostname on 443.
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::init(tmp.path(), &InitOptions::default()).unwrap();
    state.add_site("home", &hosts(&["ha.example.com"])).unwrap();
    let token = state.issue_connector("home", None).unwrap();
    assert_eq!(token.edges, vec!["ha.example.com:443".to_string()]);
}

#[test]
fn damaged_tokens_are_refused() {
    let (_tmp, state) = init();
    state.add_site("home", &hosts(&["ha.example.com"])).unwrap();
    let encoded = state.issue_connector("home", None).unwrap().encode();

    // Change one character at many positions after the prefix: always TokenTampered.
    let bytes = encoded.as_bytes();
    for pos in (4..bytes.len()).step_by(97).chain([bytes.len() - 1]) {
        let mut damaged = bytes.to_vec();
        damaged[pos] = if damaged[pos] == b'A' { b'B' } else { b'A' };
        let damaged = String::from_utf8(damaged).unwrap();
        assert!(
            matches!(EnrollmentToken::decode(&damaged), Err(Error::TokenTampered)),
            "position {pos}"
        );
    }
    let truncated = &encoded[..encoded.len() - 10];
    assert!(matches!(
        EnrollmentToken::decode(truncated),
        Err(Error::TokenTampered)
    ));
    assert!(matches!(
        EnrollmentToken::decode(&encoded.replacen("dl1.", "dl2.", 1)),
        Err(Error::TokenFormat { .. })
    ));
    assert!(matches!(
        EnrollmentToken::decode(""),
        Err(Error::TokenFormat { .. })
    ));
}

#[test]
fn inconsistent_tokens_are_refused() {
    let (_tmp, state) = init();
    state.add_site("home", &hosts(&["ha.example.com"])).unwrap();
    state
        .add_site("cabin", &hosts(&["cabin.example.com"]))
        .unwrap();
    let token = state.issue_connector("home", None).unwrap();
    let other = state.issue_connector("cabin", None).unwrap();

    let decode = |t: &EnrollmentToken| EnrollmentToken::decode(&t.encode());
    let secret = |t: &EnrollmentToken| t.key_pem.lines().nth(1).unwrap().to_owned();
    let secrets = [secret(&token), secret(&other)];
    let refused = |t: EnrollmentToken, why: &str| {
        let err = decode(&t).unwrap_err();
        assert!(matches!(err, Error::TokenInvalid { .. }), "{why}: {err}");
        // Never echo a key.
        assert!(
            !secrets.iter().any(|s| err.to_string().contains(s)),
            "{err}"
        );
    };

    refused(
        EnrollmentToken {
            site: "cabin".into(),
            ..token.clone()
        },
        "site",
    );
    refused(
        EnrollmentToken {
            connector_id: "connector-9".into(),
            ..token.clone()
        },
        "connector id",
    );
    refused(
        EnrollmentToken {
            key_pem: other.key_pem.clone(),
            ..token.clone()
        },
        "key of another cert",
    );
    refused(
        EnrollmentToken {
            key_pem: "garbage".into(),
            ..token.clone()
        },
        "garbage key",
    );
    refused(
        EnrollmentToken {
            edges: vec![],
            ..token.clone()
        },
        "no edges",
    );
    refused(
        EnrollmentToken {
            tunnel_ca_pem: token.cert_pem.clone(),
            ..token.clone()
        },
        "tunnel CA is a leaf",
    );
    refused(
        EnrollmentToken {
            tunnel_ca_pem: String::new(),
            ..token.clone()
        },
        "no tunnel CA",
    );
    // A device certificate is not a connector certificate.
    let device = state
        .add_client("home", "connector-1", Validity::days(1), KeyType::EcdsaP256)
        .unwrap();
    refused(
        EnrollmentToken {
            cert_pem: device.cert_pem.clone(),
            key_pem: device.key_pem.clone(),
            ..token.clone()
        },
        "device cert",
    );
    decode(&token).unwrap();
}

fn openssl() -> PathBuf {
    // Not skipped when missing: a skipped cross-check is a silent hole. CI installs openssl.
    let found = Command::new("openssl").arg("version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "this test needs the `openssl` command: install it (e.g. apt-get install openssl)"
    );
    PathBuf::from("openssl")
}

fn openssl_verify(ca: &Path, cert: &Path, purpose: &str) -> bool {
    let out = Command::new(openssl())
        .arg("verify")
        .args(["-purpose", purpose])
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .unwrap();
    out.status.success()
}

#[test]
fn openssl_agrees() {
    let (tmp, state) = init();
    let a = state
        .add_site("site-a", &hosts(&["a.example.com"]))
        .unwrap();
    let b = state
        .add_site("site-b", &hosts(&["b.example.com"]))
        .unwrap();
    for (name, key) in [("device", KeyType::EcdsaP256), ("old", KeyType::Rsa2048)] {
        state
            .add_client("site-a", name, Validity::days(30), key)
            .unwrap();
        let cert = state.cert_path(Kind::Device, "site-a", name);
        assert!(
            openssl_verify(&a.client_ca_path, &cert, "sslclient"),
            "{name}"
        );
        assert!(
            !openssl_verify(&b.client_ca_path, &cert, "sslclient"),
            "{name}"
        );
        // clientAuth only: not usable as a server certificate.
        assert!(
            !openssl_verify(&a.client_ca_path, &cert, "sslserver"),
            "{name}"
        );
    }

    // A device that keeps its key sends a CSR made by OpenSSL.
    let csr = tmp.path().join("own.csr");
    let out = Command::new(openssl())
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", "/CN=whatever", "-keyout"])
        .arg(tmp.path().join("own.key"))
        .arg("-out")
        .arg(&csr)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csr_pem = std::fs::read_to_string(&csr).unwrap();
    state
        .sign_client_csr("site-a", "own", &csr_pem, Validity::days(30))
        .unwrap();
    let own = state.cert_path(Kind::Device, "site-a", "own");
    assert!(openssl_verify(&a.client_ca_path, &own, "sslclient"));
    assert!(!openssl_verify(&b.client_ca_path, &own, "sslclient"));
    assert!(matches!(
        state.sign_client_csr("site-a", "own", &csr_pem, Validity::days(30)),
        Err(Error::AlreadyIssued { .. })
    ));
    assert_eq!(state.clients().unwrap().len(), 3);

    assert!(openssl_verify(
        &state.server_ca_path(),
        &a.server_cert_path,
        "sslserver"
    ));
    assert!(openssl_verify(
        &state.tunnel_ca_path(),
        &state.tunnel_cert_path(),
        "sslserver"
    ));
    let token = state.issue_connector("site-b", None).unwrap();
    let connector = tmp.path().join("connector.crt");
    std::fs::write(&connector, &token.cert_pem).unwrap();
    assert!(openssl_verify(
        &state.connector_ca_path(),
        &connector,
        "sslclient"
    ));
    assert!(!openssl_verify(&b.client_ca_path, &connector, "sslclient"));

    // The key in the token is the cert's key, as OpenSSL sees it.
    let key = tmp.path().join("connector.key");
    std::fs::write(&key, &token.key_pem).unwrap();
    let pubkey = |args: &[&str], path: &Path| {
        let out = Command::new(openssl())
            .args(args)
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    assert_eq!(
        pubkey(&["x509", "-noout", "-pubkey", "-in"], &connector),
        pubkey(&["pkey", "-pubout", "-in"], &key)
    );
}

/// CA names are public (CertificateRequest hints, the HTTPS certificate's issuer): they name
/// neither the product nor the site, differ per CA, and every certificate's issuer DN is its
/// CA's subject DN byte for byte (Chromium picks a client certificate by comparing exactly
/// these bytes with the hinted CA names).
#[test]
fn ca_names_are_neutral_and_issuers_match_exactly() {
    let (_tmp, state) = init();
    let site = state
        .add_site("secretsite", &hosts(&["ha.example.com"]))
        .unwrap();
    let device = state
        .add_client(
            "secretsite",
            "phone",
            Validity::days(30),
            KeyType::EcdsaP256,
        )
        .unwrap();
    let token = state.issue_connector("secretsite", None).unwrap();
    let connector = pki::parse_certs(&token.cert_pem)
        .unwrap()
        .remove(0)
        .to_vec();

    let cas = [
        state.tunnel_ca_path(),
        state.connector_ca_path(),
        state.server_ca_path(),
        site.client_ca_path.clone(),
    ];
    let mut names = std::collections::HashSet::new();
    for path in &cas {
        let der = cert_der(path);
        let cert = parse(&der);
        let subject = cert.subject().to_string();
        let lower = subject.to_ascii_lowercase();
        for word in [
            "doorless",
            "secretsite",
            "device",
            "server",
            "tunnel",
            "connector",
        ] {
            assert!(
                !lower.contains(word),
                "{}: CA subject {subject:?} contains {word:?}",
                path.display()
            );
        }
        // One CN of 16 hex digits, nothing else.
        let cns: Vec<_> = cert.subject().iter_common_name().collect();
        assert_eq!(cns.len(), 1, "{subject}");
        assert_eq!(cert.subject().iter().count(), 1, "{subject}");
        let cn = cns[0].as_str().unwrap();
        assert!(
            cn.len() == 16 && cn.bytes().all(|b| b.is_ascii_hexdigit()),
            "{cn:?}"
        );
        assert!(names.insert(cn.to_owned()), "two CAs share the name {cn}");
        // Self-signed: issuer == subject, byte for byte.
        assert_eq!(cert.issuer().as_raw(), cert.subject().as_raw());
    }

    let exactly = |leaf: &[u8], ca: &Path| {
        let ca = cert_der(ca);
        assert_eq!(
            parse(leaf).issuer().as_raw(),
            parse(&ca).subject().as_raw(),
            "issuer DN differs from the CA's subject DN"
        );
    };
    exactly(&device.cert_der, &site.client_ca_path);
    exactly(&cert_der(&site.server_cert_path), &state.server_ca_path());
    exactly(
        &cert_der(&state.tunnel_cert_path()),
        &state.tunnel_ca_path(),
    );
    exactly(&connector, &state.connector_ca_path());
    // Also for a CSR-signed device certificate, signed by the CA as reloaded from disk.
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let own = state
        .sign_client_csr("secretsite", "own", &csr, Validity::days(30))
        .unwrap();
    exactly(&own.cert_der, &site.client_ca_path);
}

/// Device certificates are valid for at least a day and never beyond their CA, on every path
/// that issues one (add, CSR, renew); a refusal records and writes nothing.
#[test]
fn device_validity_is_bounded() {
    let (_tmp, state) = init();
    state.add_site("home", &hosts(&["ha.example.com"])).unwrap();
    let ca_not_after = state.client_ca("home").unwrap().not_after();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let expired = Validity {
        not_before: time::OffsetDateTime::now_utc() - time::Duration::days(2),
        not_after: time::OffsetDateTime::now_utc() - time::Duration::days(1),
    };

    let too_short = [Validity::days(0), expired];
    let too_long = [
        Validity::days(u32::MAX),
        Validity::days(pki::CA_VALIDITY_DAYS + 1),
    ];
    for validity in too_short.into_iter().chain(too_long) {
        let results = [
            state
                .add_client("home", "phone", validity, KeyType::EcdsaP256)
                .map(|_| ()),
            state
                .sign_client_csr("home", "own", &csr, validity)
                .map(|_| ()),
        ];
        for result in results {
            let err = result.unwrap_err();
            match err {
                Error::ValidityTooShort { .. } => {
                    assert!(err.to_string().contains("at least 1 day"), "{err}");
                }
                Error::ValidityBeyondCa { max_days, .. } => {
                    assert!((3650..=3652).contains(&max_days), "{max_days}");
                    assert!(
                        err.to_string()
                            .contains(&format!("at most {max_days} days"))
                    );
                    assert!(err.to_string().contains(&ca_not_after.date().to_string()));
                }
                other => panic!("{validity:?}: {other}"),
            }
        }
    }
    assert_eq!(state.clients().unwrap(), vec![]);
    assert!(!state.cert_path(Kind::Device, "home", "phone").exists());

    // The bounds themselves are fine.
    let one_day = state
        .add_client("home", "phone", Validity::days(1), KeyType::EcdsaP256)
        .unwrap();
    let lifetime = one_day.not_after - time::OffsetDateTime::now_utc();
    assert!(lifetime > time::Duration::hours(23), "{lifetime}");
    let longest = state
        .sign_client_csr(
            "home",
            "own",
            &csr,
            Validity::days(pki::CA_VALIDITY_DAYS - 1),
        )
        .unwrap();
    assert!(longest.not_after <= ca_not_after);
    for validity in [Validity::days(0), Validity::days(u32::MAX)] {
        assert!(
            state
                .renew("home", "phone", validity, KeyType::EcdsaP256)
                .is_err()
        );
    }
    // The refused renewals revoked nothing.
    assert_eq!(
        state
            .clients()
            .unwrap()
            .iter()
            .filter(|e| e.revoked_at.is_none())
            .count(),
        2
    );
}

#[test]
fn renew_server_cert_replaces_key_and_certificate_for_the_same_hostnames() {
    let (_tmp, state) = init();
    let site = state
        .add_site("home", &hosts(&["ha.example.com", "alt.example.com"]))
        .unwrap();
    let old_der = cert_der(&site.server_cert_path);
    let old_key = std::fs::read(&site.server_key_path).unwrap();
    let issued = state.renew_server_cert("home").unwrap();
    let new_der = cert_der(&site.server_cert_path);
    assert_ne!(new_der, old_der);
    assert_eq!(new_der, issued.cert_der);
    assert_ne!(std::fs::read(&site.server_key_path).unwrap(), old_key);
    assert_eq!(mode(&site.server_key_path), 0o600);
    // Same names, still signed by the local server CA.
    verify(&new_der, &state.server_ca_path());
    let names: Vec<String> = parse(&new_der)
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(names, hosts(&["ha.example.com", "alt.example.com"]));
    assert!(matches!(
        state.renew_server_cert("nope"),
        Err(Error::SiteNotFound { .. })
    ));
}
