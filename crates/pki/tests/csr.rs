//! Signing devices' own CSRs, made by OpenSSL: accepted keys round-trip exactly, weak keys and
//! odd extensions are refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{openssl_ok, path, state_with_site, write};
use pki::{Error, Identity, StateDir, Validity};
use tempfile::TempDir;

/// A key made by `openssl genpkey` with `args`, and a CSR for it with extra `req` arguments.
fn csr(dir: &Path, label: &str, genpkey: &[&str], req: &[&str]) -> PathBuf {
    let key = dir.join(format!("{label}.key"));
    let csr = dir.join(format!("{label}.csr"));
    let mut args = vec!["genpkey", "-out", path(&key)];
    args.extend(genpkey);
    openssl_ok(&args);
    let mut args = vec![
        "req",
        "-new",
        "-key",
        path(&key),
        "-subj",
        "/CN=requested-name/O=ignored",
        "-out",
        path(&csr),
    ];
    args.extend(req);
    openssl_ok(&args);
    csr
}

fn sign(state: &StateDir, name: &str, csr: &Path) -> pki::Result<pki::Certified> {
    let pem = std::fs::read_to_string(csr).unwrap();
    state.sign_client_csr("home", name, &pem, Validity::days(30))
}

/// Signs, then checks with OpenSSL that the certificate carries the CSR's exact public key,
/// verifies against the site CA, and has doorless's profile, not the CSR's wishes.
fn round_trip(state: &StateDir, dir: &Path, name: &str, csr: &Path) -> String {
    let certified = sign(state, name, csr).unwrap();
    let crt = write(dir, &format!("{name}.crt"), &certified.cert_pem);
    let csr_key = openssl_ok(&["req", "-in", path(csr), "-pubkey", "-noout"]);
    let cert_key = openssl_ok(&["x509", "-in", path(&crt), "-pubkey", "-noout"]);
    assert_eq!(
        csr_key, cert_key,
        "{name}: the certificate's key is not the CSR's"
    );
    let ca = state.site("home").unwrap().client_ca_path;
    let out = openssl_ok(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        path(&ca),
        path(&crt),
    ]);
    assert!(out.contains(": OK"), "{out}");

    let id = Identity::from_cert_der(&certified.cert_der).unwrap();
    assert_eq!(id, Identity::device("home", name).unwrap());
    let text = openssl_ok(&["x509", "-in", path(&crt), "-noout", "-text"]);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(
        !text.contains("requested-name") && !text.contains("ignored"),
        "{text}"
    );
    assert!(!text.contains("evil.example"), "{text}");
    assert!(!text.contains("TLS Web Server Authentication"), "{text}");
    text
}

fn refused(state: &StateDir, csr: &Path) -> String {
    match sign(state, "refused", csr) {
        Err(e @ Error::Csr { .. }) => e.to_string(),
        other => panic!("expected a CSR error, got {other:?}"),
    }
}

#[test]
fn accepted_keys_round_trip_exactly() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];

    // Asks for a CA, a server EKU and a foreign SAN: all replaced by the device profile.
    let greedy = csr(
        dir.path(),
        "p256",
        &ec,
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "subjectAltName=DNS:evil.example,URI:urn:doorless:device:other:x",
            "-addext",
            "extendedKeyUsage=serverAuth,clientAuth",
            "-addext",
            "keyUsage=keyCertSign,digitalSignature",
        ],
    );
    let text = round_trip(&state, dir.path(), "linux-box", &greedy);
    assert!(text.contains("prime256v1"), "{text}");

    // P-384 signed with SHA-256 (OpenSSL's default): the key type comes from the key.
    let p384 = csr(
        dir.path(),
        "p384",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        &["-sha256"],
    );
    let text = round_trip(&state, dir.path(), "p384-box", &p384);
    assert!(text.contains("secp384r1"), "{text}");

    let rsa = csr(
        dir.path(),
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        &[],
    );
    let text = round_trip(&state, dir.path(), "rsa-box", &rsa);
    assert!(text.contains("(2048 bit)"), "{text}");

    let ed = csr(dir.path(), "ed25519", &["-algorithm", "ED25519"], &[]);
    round_trip(&state, dir.path(), "ed-box", &ed);

    // Recorded like any device.
    let names: Vec<String> = state
        .clients()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["linux-box", "p384-box", "rsa-box", "ed-box"]);
}

#[test]
fn weak_or_unusual_keys_are_refused() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let rsa1024 = csr(
        dir.path(),
        "rsa1024",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"],
        &[],
    );
    let msg = refused(&state, &rsa1024);
    assert!(msg.contains("weak key: RSA-1024"), "{msg}");

    for curve in ["P-521", "secp256k1", "P-224"] {
        let ec = csr(
            dir.path(),
            curve,
            &[
                "-algorithm",
                "EC",
                "-pkeyopt",
                &format!("ec_paramgen_curve:{curve}"),
            ],
            &[],
        );
        let msg = refused(&state, &ec);
        assert!(
            msg.contains("EC curve") && msg.contains("not accepted"),
            "{curve}: {msg}"
        );
    }
    assert!(
        state.clients().unwrap().is_empty(),
        "nothing may be recorded"
    );
}

#[test]
fn odd_extensions_and_bad_signatures_are_refused() {
    let (_tmp, state) = state_with_site();
    let dir = TempDir::new().unwrap();
    let ec = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];

    let odd = csr(
        dir.path(),
        "odd",
        &ec,
        &["-addext", "1.2.3.4=ASN1:UTF8String:please"],
    );
    let msg = refused(&state, &odd);
    assert!(
        msg.contains("1.2.3.4") && msg.contains("does not issue"),
        "{msg}"
    );

    let ns = csr(
        dir.path(),
        "nscomment",
        &ec,
        &["-addext", "nsComment=hello"],
    );
    assert!(refused(&state, &ns).contains("2.16.840.1.113730.1.13"));

    // Flip a bit of the signature (the last bytes of the DER).
    let good = csr(dir.path(), "good", &ec, &[]);
    let der = dir.path().join("good.der");
    openssl_ok(&[
        "req",
        "-in",
        path(&good),
        "-outform",
        "DER",
        "-out",
        path(&der),
    ]);
    let mut bytes = std::fs::read(&der).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x01;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let pem =
        format!("-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n");
    let tampered = write(dir.path(), "tampered.csr", pem);
    let msg = refused(&state, &tampered);
    assert!(msg.contains("signature does not verify"), "{msg}");

    let not_pem = write(dir.path(), "not.csr", "hello");
    assert!(refused(&state, &not_pem).contains("CERTIFICATE REQUEST"));
    assert!(state.clients().unwrap().is_empty());
}
