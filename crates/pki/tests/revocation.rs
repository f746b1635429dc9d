//! Revocation: by name or serial, renew, and the CRL checked with `openssl crl` / `verify`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{openssl, openssl_ok, path, state_with_site, text, write};
use pki::{Error, Issued, KeyType, Kind, StateDir, Validity};
use tempfile::TempDir;

fn issue(state: &StateDir, site: &str, name: &str, dir: &Path) -> (Issued, PathBuf) {
    let issued = state
        .add_client(site, name, Validity::days(30), KeyType::EcdsaP256)
        .unwrap();
    let file = write(dir, &format!("{site}-{name}.crt"), &issued.cert_pem);
    (issued, file)
}

fn client_ca(state: &StateDir, site: &str) -> PathBuf {
    state.site(site).unwrap().client_ca_path
}

/// `openssl crl -text`, asserting the signature verifies against the site's client CA.
fn crl_text(state: &StateDir, site: &str) -> String {
    let out = openssl_ok(&[
        "crl",
        "-in",
        path(&state.crl_path(site)),
        "-CAfile",
        path(&client_ca(state, site)),
        "-noout",
        "-text",
    ]);
    assert!(out.contains("verify OK"), "CRL signature:\n{out}");
    out
}

/// `openssl verify -crl_check` of `cert` against the site CA and its CRL.
fn verify_with_crl(state: &StateDir, site: &str, cert: &Path) -> (bool, String) {
    let out = openssl(&[
        "verify",
        "-crl_check",
        "-purpose",
        "sslclient",
        "-CAfile",
        path(&client_ca(state, site)),
        "-CRLfile",
        path(&state.crl_path(site)),
        path(cert),
    ]);
    (out.status.success(), text(&out))
}

/// The serial as `openssl crl -text` prints it: uppercase hex.
fn upper(serial: &[u8]) -> String {
    serial.iter().map(|b| format!("{b:02X}")).collect()
}

#[test]
fn a_new_site_has_an_empty_signed_crl_valid_for_a_week() {
    let (_tmp, state) = state_with_site();
    let crl = crl_text(&state, "home");
    assert!(crl.contains("No Revoked Certificates"), "{crl}");
    assert!(
        crl.contains("X509v3 CRL Number: \n                1\n"),
        "{crl}"
    );

    let dates = openssl_ok(&[
        "crl",
        "-in",
        path(&state.crl_path("home")),
        "-noout",
        "-lastupdate",
        "-nextupdate",
        "-dateopt",
        "iso_8601",
    ]);
    let parse = |key: &str| {
        let line = dates.lines().find(|l| l.starts_with(key)).unwrap();
        let value = line.split_once('=').unwrap().1.trim();
        time::OffsetDateTime::parse(
            &value.replace(' ', "T"),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    let span = parse("nextUpdate") - parse("lastUpdate");
    assert_eq!(
        span,
        time::Duration::days(i64::from(pki::CRL_DAYS)),
        "{dates}"
    );
}

#[test]
fn revoking_by_name_lists_the_serial_in_the_crl_and_openssl_refuses_the_cert() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let (phone, phone_crt) = issue(&state, "home", "phone", dir.path());
    let (_laptop, laptop_crt) = issue(&state, "home", "laptop", dir.path());

    for cert in [&phone_crt, &laptop_crt] {
        let (ok, out) = verify_with_crl(&state, "home", cert);
        assert!(ok, "before revocation: {out}");
    }

    let entry = state.revoke_any(None, "phone").unwrap();
    assert_eq!((entry.kind, entry.site.as_str()), (Kind::Device, "home"));
    assert!(entry.revoked_at.is_some());

    let crl = crl_text(&state, "home");
    assert!(crl.contains(&upper(&phone.serial)), "{crl}");
    assert!(
        crl.contains("X509v3 CRL Number: \n                2\n"),
        "{crl}"
    );
    assert_eq!(crl.matches("Serial Number:").count(), 1, "{crl}");

    let (ok, out) = verify_with_crl(&state, "home", &phone_crt);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify_with_crl(&state, "home", &laptop_crt);
    assert!(ok, "other devices keep working: {out}");

    // The index says so too, for the edge.
    let index = state.clients().unwrap();
    let phone_entry = index.iter().find(|e| e.name == "phone").unwrap();
    assert_eq!(
        phone_entry.fingerprint,
        pki::fingerprint_hex(&phone.cert_der)
    );
    assert!(phone_entry.revoked_at.is_some());
    assert!(
        index
            .iter()
            .find(|e| e.name == "laptop")
            .unwrap()
            .revoked_at
            .is_none()
    );
}

#[test]
fn revoking_by_serial_in_any_spelling() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let spellings = |serial: &[u8]| {
        let lower: String = serial.iter().map(|b| format!("{b:02x}")).collect();
        let colons = serial
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        vec![
            lower.clone(),
            upper(serial),
            colons,
            format!("0x{lower}"),
            format!("00{lower}"),
        ]
    };
    for i in 0..5 {
        let name = format!("tablet-{i}");
        let (issued, crt) = issue(&state, "home", &name, dir.path());
        let target = spellings(&issued.serial)[i].clone();
        let entry = state.revoke_any(Some("home"), &target).unwrap();
        assert_eq!(entry.name, name, "{target}");
        let (ok, out) = verify_with_crl(&state, "home", &crt);
        assert!(!ok && out.contains("certificate revoked"), "{out}");

        // Twice: already revoked, and the message says which certificate that is.
        let err = state.revoke_any(Some("home"), &target).unwrap_err();
        assert!(matches!(err, Error::AlreadyRevoked { .. }), "{err}");
        assert!(err.to_string().contains(&name), "{err}");
    }
    let crl = crl_text(&state, "home");
    assert_eq!(crl.matches("Serial Number:").count(), 5, "{crl}");

    let err = state.revoke_any(None, "no-such-device").unwrap_err();
    assert!(matches!(err, Error::NoSuchCertificate { .. }), "{err}");
    assert!(err.to_string().contains("no-such-device"), "{err}");
    let err = state.revoke_any(None, "abcdef0123").unwrap_err();
    assert!(matches!(err, Error::NoSuchCertificate { .. }), "{err}");
    let err = state.revoke_any(Some("nowhere"), "phone").unwrap_err();
    assert!(matches!(err, Error::SiteNotFound { .. }), "{err}");
}

#[test]
fn an_ambiguous_name_lists_the_sites() {
    let (_tmp, state) = state_with_site();
    state
        .add_site("cabin", &["cabin.example.com".to_owned()])
        .unwrap();
    let dir = TempDir::new().unwrap();
    let (_, home_phone) = issue(&state, "home", "phone", dir.path());
    let (_, cabin_phone) = issue(&state, "cabin", "phone", dir.path());

    let err = state.revoke_any(None, "phone").unwrap_err();
    assert!(matches!(err, Error::Ambiguous { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("site home") && msg.contains("site cabin") && msg.contains("--site"),
        "{msg}"
    );
    // Nothing was revoked.
    assert!(
        state
            .clients()
            .unwrap()
            .iter()
            .all(|e| e.revoked_at.is_none())
    );

    let entry = state.revoke_any(Some("cabin"), "phone").unwrap();
    assert_eq!(entry.site, "cabin");
    assert!(!verify_with_crl(&state, "cabin", &cabin_phone).0);
    assert!(verify_with_crl(&state, "home", &home_phone).0);
    // Each site's CRL lists only its own certificates.
    assert!(crl_text(&state, "home").contains("No Revoked Certificates"));

    // A certificate of one site never verifies against another site's CA.
    let out = openssl(&[
        "verify",
        "-CAfile",
        path(&client_ca(&state, "home")),
        path(&cabin_phone),
    ]);
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn renew_issues_a_new_key_and_revokes_the_old_in_one_step() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let (old, old_crt) = issue(&state, "home", "phone", dir.path());

    let renewed = state
        .renew("home", "phone", Validity::days(60), KeyType::EcdsaP256)
        .unwrap();
    assert!(renewed.crl_error.is_none());
    let new = &renewed.issued;
    assert_ne!(new.serial, old.serial);
    assert_ne!(new.key_der, old.key_der);
    assert_eq!(renewed.revoked.serial, hex(&old.serial));
    let new_crt = write(dir.path(), "new.crt", &new.cert_pem);

    let index = state.clients().unwrap();
    let phones: Vec<_> = index.iter().filter(|e| e.name == "phone").collect();
    assert_eq!(phones.len(), 2);
    assert_eq!(phones[0].serial, hex(&old.serial));
    assert!(phones[0].revoked_at.is_some());
    assert_eq!(phones[1].serial, hex(&new.serial));
    assert!(phones[1].revoked_at.is_none());
    // The certificate file is the new one.
    let on_disk = std::fs::read_to_string(state.cert_path(Kind::Device, "home", "phone")).unwrap();
    assert_eq!(on_disk, new.cert_pem);

    assert!(!verify_with_crl(&state, "home", &old_crt).0);
    let (ok, out) = verify_with_crl(&state, "home", &new_crt);
    assert!(ok, "{out}");

    // Renewing needs a live certificate.
    let err = state
        .renew("home", "nobody", Validity::days(1), KeyType::EcdsaP256)
        .unwrap_err();
    assert!(matches!(err, Error::NotIssued { .. }), "{err}");
}

#[test]
fn crl_numbers_increase_and_revoke_by_kind_still_works() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let (_, crt) = issue(&state, "home", "phone", dir.path());
    state.write_crl("home").unwrap();
    state.write_crl("home").unwrap();
    assert!(crl_text(&state, "home").contains("X509v3 CRL Number: \n                3\n"));
    state.revoke(Kind::Device, "home", "phone").unwrap();
    let crl = crl_text(&state, "home");
    assert!(
        crl.contains("X509v3 CRL Number: \n                4\n"),
        "{crl}"
    );
    assert!(!verify_with_crl(&state, "home", &crt).0);

    // Connectors are signed by the connector CA: revoking one leaves the site CRL alone.
    let token = state.issue_connector("home", None).unwrap();
    let entry = state.revoke_any(Some("home"), &token.connector_id).unwrap();
    assert_eq!(entry.kind, Kind::Connector);
    assert!(crl_text(&state, "home").contains("X509v3 CRL Number: \n                4\n"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn revoked_lists_typed_fingerprints_of_revoked_entries_only() {
    let (tmp, state) = state_with_site();
    let (phone, _) = issue(&state, "home", "phone", tmp.path());
    issue(&state, "home", "laptop", tmp.path());
    state.issue_connector("home", Some("pi")).unwrap();
    assert_eq!(state.revoked().unwrap(), vec![]);

    state.revoke(Kind::Device, "home", "phone").unwrap();
    state.revoke(Kind::Connector, "home", "pi").unwrap();
    let revoked = state.revoked().unwrap();
    assert_eq!(revoked.len(), 2, "{revoked:?}");
    let device = revoked.iter().find(|r| r.kind == Kind::Device).unwrap();
    assert_eq!(device.site, "home");
    assert_eq!(device.fingerprint, pki::Fingerprint::of(&phone.cert_der));
    assert!(revoked.iter().any(|r| r.kind == Kind::Connector));

    // A revoked entry whose fingerprint cannot be enforced is an error, not a silent skip.
    let index = state.index_path();
    let text = std::fs::read_to_string(&index).unwrap();
    let hex = device.fingerprint.to_string();
    std::fs::write(&index, text.replace(&hex, "not-a-fingerprint")).unwrap();
    assert!(matches!(state.revoked(), Err(Error::Index { .. })));
}

#[test]
fn watched_paths_name_the_index_and_each_site() {
    let (_tmp, state) = state_with_site();
    let paths = state.watched_paths();
    assert_eq!(paths[0], state.index_path());
    let site = state.site("home").unwrap();
    assert!(paths.contains(&site.server_cert_path), "{paths:?}");
    assert!(
        paths.iter().any(|p| p.ends_with("sites/home/site.json")),
        "{paths:?}"
    );
    assert_eq!(paths, state.watched_paths(), "stable while nothing changes");
}
