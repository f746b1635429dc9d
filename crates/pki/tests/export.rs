//! `.p12` and `.mobileconfig` output, checked with OpenSSL and Python's plistlib: the ASN.1
//! algorithms are inspected, not just "it parsed".
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{openssl, openssl_ok, path, python3, state_with_site, text, write};
use pki::{
    Issued, KeyType, MobileConfig, P12Profile, StateDir, Validity, check_password, export_p12,
    generate_password, parse_certs,
};
use tempfile::TempDir;

const PASSWORD: &str = "test-pass-123";

fn device(state: &StateDir, name: &str, key: KeyType) -> (Issued, Vec<u8>) {
    let issued = state
        .add_client("home", name, Validity::days(30), key)
        .unwrap();
    let site = state.site("home").unwrap();
    let ca = std::fs::read_to_string(&site.client_ca_path).unwrap();
    let ca_der = parse_certs(&ca).unwrap().remove(0).to_vec();
    (issued, ca_der)
}

fn p12_file(dir: &TempDir, issued: &Issued, ca_der: &[u8], profile: P12Profile) -> String {
    let p12 = export_p12(
        "phone",
        &issued.cert_der,
        &issued.key_der,
        ca_der,
        PASSWORD,
        profile,
    )
    .unwrap();
    let file = write(dir.path(), &format!("phone-{profile:?}.p12"), p12);
    path(&file).to_owned()
}

/// The key inside the .p12 belongs to the certificate inside it, and that certificate is ours.
fn assert_key_matches_cert(dir: &TempDir, p12: &str, issued: &Issued, legacy: bool) {
    let pass = format!("pass:{PASSWORD}");
    let mut args = vec!["pkcs12", "-in", p12, "-passin", &pass];
    if legacy {
        args.push("-legacy");
    }
    let key_out = dir.path().join("key.pem");
    let cert_out = dir.path().join("cert.pem");
    let mut key_args = args.clone();
    key_args.extend(["-nocerts", "-nodes", "-out", path(&key_out)]);
    openssl_ok(&key_args);
    let mut cert_args = args.clone();
    cert_args.extend(["-nokeys", "-clcerts", "-out", path(&cert_out)]);
    openssl_ok(&cert_args);

    let key_pub = openssl_ok(&["pkey", "-in", path(&key_out), "-pubout"]);
    let cert_pub = openssl_ok(&["x509", "-in", path(&cert_out), "-pubkey", "-noout"]);
    assert_eq!(
        key_pub, cert_pub,
        "the .p12's key does not match its certificate"
    );

    let leaf = std::fs::read_to_string(&cert_out).unwrap();
    let leaf = parse_certs(&leaf).unwrap();
    assert_eq!(
        leaf.len(),
        1,
        "-clcerts must yield exactly the device certificate"
    );
    assert_eq!(leaf[0].as_ref(), issued.cert_der.as_slice());
}

/// `openssl asn1parse` of a .p12, drilled down with `-strparse` (it does not descend into
/// OCTET STRINGs by itself): the PFX, the AuthenticatedSafe inside its data, and the
/// SafeContents of the unencrypted ContentInfo that holds the shrouded key bag.
struct Asn1 {
    outer: String,
    auth_safe: String,
    key_bags: String,
}

impl Asn1 {
    fn of(p12: &str) -> Self {
        let parse = |strparse: &[String]| {
            let mut args = vec!["asn1parse", "-inform", "DER", "-in", p12, "-i"];
            for offset in strparse {
                args.extend(["-strparse", offset.as_str()]);
            }
            openssl_ok(&args)
        };
        let outer = parse(&[]);
        let a = largest_octet_string(&outer);
        let auth_safe = parse(std::slice::from_ref(&a));
        let b = largest_octet_string(&auth_safe);
        let key_bags = parse(&[a, b]);
        Self {
            outer,
            auth_safe,
            key_bags,
        }
    }

    fn all(&self) -> String {
        format!("{}{}{}", self.outer, self.auth_safe, self.key_bags)
    }
}

/// The offset of the longest primitive OCTET STRING in `asn1parse` output.
fn largest_octet_string(asn1: &str) -> String {
    asn1.lines()
        .filter(|l| l.contains("prim:") && l.contains("OCTET STRING"))
        .filter_map(|l| {
            let offset = l.split(':').next()?.trim().to_owned();
            let len: usize = l
                .split("l=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((len, offset))
        })
        .max()
        .map(|(_, offset)| offset)
        .unwrap_or_else(|| panic!("no OCTET STRING in:\n{asn1}"))
}

#[test]
fn legacy_p12_uses_3des_for_both_bags_and_a_sha1_mac() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let (issued, ca_der) = device(&state, "phone", KeyType::EcdsaP256);
    let p12 = p12_file(&dir, &issued, &ca_der, P12Profile::Legacy);
    let pass = format!("pass:{PASSWORD}");

    let info = openssl_ok(&[
        "pkcs12", "-info", "-legacy", "-noout", "-in", &p12, "-passin", &pass,
    ]);
    for line in [
        "MAC: sha1, Iteration 2048",
        "MAC length: 20, salt length: 8",
        "PKCS7 Encrypted data: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2048",
        "Shrouded Keybag: pbeWithSHA1And3-KeyTripleDES-CBC, Iteration 2048",
    ] {
        assert!(info.contains(line), "missing {line:?} in:\n{info}");
    }
    assert!(!info.contains("RC2"), "RC2 must never be used:\n{info}");
    assert!(
        !info.contains("PBES2"),
        "legacy must not use PBES2:\n{info}"
    );

    // Exactly one key bag and one encrypted certificate safe.
    assert_eq!(info.matches("Shrouded Keybag").count(), 1, "{info}");
    assert_eq!(info.matches("PKCS7 Encrypted data").count(), 1, "{info}");

    // The raw structure, independently of the pkcs12 command: the encrypted certificate safe
    // and the shrouded key bag (inside the authSafe's data) both name 3DES, the MAC SHA-1.
    let asn1 = Asn1::of(&p12);
    assert!(
        asn1.outer.contains(":sha1"),
        "MAC digest must be SHA-1:\n{}",
        asn1.outer
    );
    assert!(
        asn1.auth_safe.contains(":pkcs7-encryptedData"),
        "{}",
        asn1.auth_safe
    );
    assert_eq!(
        asn1.auth_safe
            .matches(":pbeWithSHA1And3-KeyTripleDES-CBC")
            .count(),
        1,
        "certificate safe:\n{}",
        asn1.auth_safe
    );
    assert!(
        asn1.key_bags.contains(":pkcs8ShroudedKeyBag"),
        "{}",
        asn1.key_bags
    );
    assert_eq!(
        asn1.key_bags
            .matches(":pbeWithSHA1And3-KeyTripleDES-CBC")
            .count(),
        1,
        "key bag:\n{}",
        asn1.key_bags
    );
    let all = asn1.all();
    assert!(!all.contains("RC2") && !all.contains("PBES2"), "{all}");

    assert_key_matches_cert(&dir, &p12, &issued, true);
}

#[test]
fn legacy_p12_holds_leaf_and_site_ca_with_the_device_name() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let (issued, ca_der) = device(&state, "phone", KeyType::EcdsaP256);
    let p12 = p12_file(&dir, &issued, &ca_der, P12Profile::Legacy);
    let pass = format!("pass:{PASSWORD}");

    let certs = openssl_ok(&[
        "pkcs12", "-legacy", "-in", &p12, "-passin", &pass, "-nokeys",
    ]);
    let parsed = parse_certs(&certs).unwrap();
    assert_eq!(parsed.len(), 2, "leaf + site CA:\n{certs}");
    assert!(
        parsed
            .iter()
            .any(|c| c.as_ref() == issued.cert_der.as_slice())
    );
    assert!(parsed.iter().any(|c| c.as_ref() == ca_der.as_slice()));

    let keys = openssl_ok(&[
        "pkcs12", "-legacy", "-in", &p12, "-passin", &pass, "-nocerts", "-nodes",
    ]);
    assert!(keys.contains("friendlyName: phone\n"), "{keys}");
    assert_eq!(keys.matches("BEGIN PRIVATE KEY").count(), 1, "{keys}");
    // The key bag and the leaf's certificate bag share a local key id.
    let key_id = keys
        .lines()
        .find(|l| l.trim_start().starts_with("localKeyID:"))
        .expect("localKeyID on the key bag")
        .trim()
        .to_owned();
    assert!(certs.contains(&key_id), "leaf bag lacks {key_id}:\n{certs}");
}

#[test]
fn legacy_p12_with_an_rsa_key_parses_and_matches() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let (issued, ca_der) = device(&state, "old-tablet", KeyType::Rsa2048);
    let p12 = p12_file(&dir, &issued, &ca_der, P12Profile::Legacy);
    assert_key_matches_cert(&dir, &p12, &issued, true);
}

#[test]
fn modern_p12_uses_pbes2_aes256_and_hmac_sha256() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let (issued, ca_der) = device(&state, "laptop", KeyType::EcdsaP256);
    let p12 = p12_file(&dir, &issued, &ca_der, P12Profile::Modern);
    let pass = format!("pass:{PASSWORD}");

    // Without -legacy: OpenSSL 3's default provider reads it.
    let info = openssl_ok(&["pkcs12", "-info", "-noout", "-in", &p12, "-passin", &pass]);
    for line in [
        "MAC: sha256, Iteration 10000",
        "PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC, Iteration 10000, PRF hmacWithSHA256",
        "Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 10000, PRF hmacWithSHA256",
    ] {
        assert!(info.contains(line), "missing {line:?} in:\n{info}");
    }
    assert!(!info.contains("3DES") && !info.contains("RC2"), "{info}");

    let asn1 = Asn1::of(&p12);
    assert!(
        asn1.outer.contains(":sha256"),
        "MAC digest:\n{}",
        asn1.outer
    );
    for part in [&asn1.auth_safe, &asn1.key_bags] {
        assert_eq!(part.matches(":PBES2").count(), 1, "{part}");
        assert_eq!(part.matches(":PBKDF2").count(), 1, "{part}");
        assert_eq!(part.matches(":aes-256-cbc").count(), 1, "{part}");
        assert_eq!(part.matches(":hmacWithSHA256").count(), 1, "{part}");
    }
    assert!(
        asn1.key_bags.contains(":pkcs8ShroudedKeyBag"),
        "{}",
        asn1.key_bags
    );
    let all = asn1.all();
    assert!(!all.contains("TripleDES") && !all.contains("RC2"), "{all}");

    assert_key_matches_cert(&dir, &p12, &issued, false);
}

#[test]
fn wrong_password_is_refused_by_openssl() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let (issued, ca_der) = device(&state, "phone", KeyType::EcdsaP256);
    for profile in [P12Profile::Legacy, P12Profile::Modern] {
        let p12 = p12_file(&dir, &issued, &ca_der, profile);
        let out = openssl(&[
            "pkcs12",
            "-info",
            "-legacy",
            "-noout",
            "-in",
            &p12,
            "-passin",
            "pass:not-the-password",
        ]);
        assert!(!out.status.success(), "{profile:?}: {}", text(&out));
        assert!(text(&out).contains("verify error"), "{}", text(&out));
    }
}

#[test]
fn passwords_are_required_and_generated_strong() {
    let (_tmp, state) = state_with_site();
    let (issued, ca_der) = device(&state, "phone", KeyType::EcdsaP256);
    for bad in ["", "pässword", "tab\there"] {
        let err = export_p12(
            "phone",
            &issued.cert_der,
            &issued.key_der,
            &ca_der,
            bad,
            P12Profile::Legacy,
        )
        .unwrap_err();
        assert!(
            matches!(err, pki::Error::BadPassword { .. }),
            "{bad:?}: {err}"
        );
    }

    let alphabet = "23456789abcdefghjkmnpqrstuvwxyz";
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let password = generate_password().unwrap();
        check_password(&password).unwrap();
        let groups: Vec<&str> = password.split('-').collect();
        assert_eq!(groups.len(), 4, "{password}");
        for group in groups {
            assert_eq!(group.len(), 5, "{password}");
            assert!(group.chars().all(|c| alphabet.contains(c)), "{password}");
        }
        assert!(seen.insert(password), "a password repeated");
    }
    // 20 symbols of a 31-symbol alphabet.
    assert!(20.0 * 31f64.log2() >= 90.0);
}

#[test]
fn generated_password_opens_the_p12() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let (issued, ca_der) = device(&state, "phone", KeyType::EcdsaP256);
    let password = generate_password().unwrap();
    let p12 = export_p12(
        "phone",
        &issued.cert_der,
        &issued.key_der,
        &ca_der,
        &password,
        P12Profile::Legacy,
    )
    .unwrap();
    let file = write(dir.path(), "phone.p12", p12);
    openssl_ok(&[
        "pkcs12",
        "-info",
        "-noout",
        "-legacy",
        "-in",
        path(&file),
        "-passin",
        &format!("pass:{password}"),
    ]);
}

/// Python reads the profile and reports what an Apple device would see.
const PLIST_CHECK: &str = r#"
import hashlib, json, plistlib, sys
with open(sys.argv[1], "rb") as f:
    p = plistlib.load(f)
def walk(d):
    yield d
    for v in d.get("PayloadContent", []) if isinstance(d.get("PayloadContent"), list) else []:
        yield from walk(v)
out = {
    "type": p["PayloadType"],
    "id": p["PayloadIdentifier"],
    "uuid": p["PayloadUUID"],
    "version": p["PayloadVersion"],
    "removal_disallowed": p["PayloadRemovalDisallowed"],
    "display": p["PayloadDisplayName"],
    "has_password": any("Password" in d for d in walk(p)),
    "payloads": [
        {
            "type": c["PayloadType"],
            "id": c["PayloadIdentifier"],
            "uuid": c["PayloadUUID"],
            "file": c.get("PayloadCertificateFileName"),
            "display": c["PayloadDisplayName"],
            "sha256": hashlib.sha256(c["PayloadContent"]).hexdigest(),
        }
        for c in p["PayloadContent"]
    ],
}
print(json.dumps(out))
"#;

fn plist_summary(file: &std::path::Path) -> serde_json::Value {
    let out = python3(&["-c", PLIST_CHECK, path(file)]);
    assert!(out.status.success(), "plistlib failed: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    pki::fingerprint(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[test]
fn mobileconfig_parses_and_carries_the_p12_and_the_root_ca() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let (issued, ca_der) = device(&state, "phone", KeyType::EcdsaP256);
    let p12 = export_p12(
        "phone",
        &issued.cert_der,
        &issued.key_der,
        &ca_der,
        PASSWORD,
        P12Profile::Legacy,
    )
    .unwrap();
    let server_ca = std::fs::read_to_string(state.server_ca_path()).unwrap();
    let server_ca_der = parse_certs(&server_ca).unwrap().remove(0).to_vec();
    let profile = MobileConfig {
        site: "home",
        name: "phone",
        cert_der: &issued.cert_der,
        p12: &p12,
        server_ca_der: Some(&server_ca_der),
    };
    let xml = profile.to_xml();
    assert_eq!(
        xml,
        profile.to_xml(),
        "the same certificate gives the same profile"
    );
    let file = write(dir.path(), "phone.mobileconfig", &xml);
    let summary = plist_summary(&file);

    assert_eq!(summary["type"], "Configuration");
    assert_eq!(summary["id"], "doorless.home.phone");
    assert_eq!(summary["version"], 1);
    assert_eq!(summary["removal_disallowed"], false);
    assert_eq!(
        summary["has_password"], false,
        "the password must not be embedded"
    );
    let payloads = summary["payloads"].as_array().unwrap();
    assert_eq!(payloads.len(), 2);
    assert_eq!(payloads[0]["type"], "com.apple.security.pkcs12");
    assert_eq!(payloads[0]["id"], "doorless.home.phone.identity");
    assert_eq!(payloads[0]["file"], "phone.p12");
    assert_eq!(payloads[0]["sha256"], sha256_hex(&p12));
    assert_eq!(payloads[1]["type"], "com.apple.security.root");
    assert_eq!(payloads[1]["sha256"], sha256_hex(&server_ca_der));

    let uuids = [
        summary["uuid"].as_str().unwrap(),
        payloads[0]["uuid"].as_str().unwrap(),
        payloads[1]["uuid"].as_str().unwrap(),
    ];
    assert!(uuids.iter().all(|u| is_uuid(u)), "{uuids:?}");
    assert_ne!(uuids[0], uuids[1]);
    assert_ne!(uuids[1], uuids[2]);

    // The payload really is a .p12 OpenSSL opens with the password.
    let extracted = dir.path().join("extracted.p12");
    let script = "import plistlib,sys; p=plistlib.load(open(sys.argv[1],'rb')); \
                  open(sys.argv[2],'wb').write(p['PayloadContent'][0]['PayloadContent'])";
    let out = python3(&["-c", script, path(&file), path(&extracted)]);
    assert!(out.status.success(), "{}", text(&out));
    openssl_ok(&[
        "pkcs12",
        "-info",
        "-noout",
        "-legacy",
        "-in",
        path(&extracted),
        "-passin",
        &format!("pass:{PASSWORD}"),
    ]);

    // Another certificate, other UUIDs (a renewed profile is a new profile version).
    let other = MobileConfig {
        cert_der: &ca_der,
        ..profile
    };
    assert_ne!(other.to_xml(), xml);
}

#[test]
fn mobileconfig_without_root_and_with_odd_characters_is_valid_xml() {
    let p12 = b"not really a p12 \x00\xff";
    let profile = MobileConfig {
        site: "a&b",
        name: "<phone> \"x\" 'y'",
        cert_der: b"cert",
        p12,
        server_ca_der: None,
    };
    let dir = TempDir::new().unwrap();
    let file = write(dir.path(), "odd.mobileconfig", profile.to_xml());
    let summary = plist_summary(&file);
    let payloads = summary["payloads"].as_array().unwrap();
    assert_eq!(payloads.len(), 1);
    assert_eq!(payloads[0]["display"], "<phone> \"x\" 'y' (a&b)");
    assert_eq!(payloads[0]["sha256"], sha256_hex(p12));
}
