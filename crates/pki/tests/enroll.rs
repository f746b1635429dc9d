//! Enrollment codes in the state dir: minted, redeemed once for the connector's own CSR, never
//! twice, never with a wrong proof, revocable; the MAC key is stored only sealed.
#![allow(clippy::unwrap_used)]

use pki::{CodeState, InitOptions, RedeemError, StateDir};

fn state() -> (tempfile::TempDir, StateDir) {
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::init(&dir.path().join("s"), &InitOptions::default()).unwrap();
    state.add_site("home", &["ha.example.com".into()]).unwrap();
    (dir, state)
}

fn redeem(
    state: &StateDir,
    code: &pki::EnrollmentCode,
    csr: &str,
) -> Result<pki::Redeemed, RedeemError> {
    let keys = code.keys();
    let input = [b"request for ".as_slice(), csr.as_bytes()].concat();
    state.redeem_code(&keys.id, &input, &keys.request_mac(&input), csr)
}

#[test]
fn a_code_enrolls_one_connector_once() {
    let (_dir, state) = state();
    let (code, record) = state
        .mint_code("home", "ha.example.com", pki::DEFAULT_CODE_LIFETIME)
        .unwrap();
    assert_eq!(record.current_state(), CodeState::Pending);
    let (key_pem, csr) = pki::connector_csr().unwrap();

    // A wrong proof (another code's key) is indistinguishable from an unknown code.
    let (other, _) = state
        .mint_code("home", "ha.example.com", pki::DEFAULT_CODE_LIFETIME)
        .unwrap();
    let input = b"x".to_vec();
    let forged = other.keys().request_mac(&input);
    assert!(matches!(
        state.redeem_code(&code.keys().id, &input, &forged, &csr),
        Err(RedeemError::Unknown)
    ));
    // A bad CSR does not burn the code.
    assert!(matches!(
        redeem(&state, &code, "not a csr"),
        Err(RedeemError::BadCsr(_))
    ));

    let redeemed = redeem(&state, &code, &csr).unwrap();
    assert_eq!(
        (redeemed.site.as_str(), redeemed.connector_id.as_str()),
        ("home", "connector-1")
    );
    // The certificate is for our key, and the whole thing makes valid credentials.
    let token = pki::EnrollmentToken {
        edges: vec!["ha.example.com:443".into()],
        server_name: pki::TUNNEL_SERVER_NAME.into(),
        site: redeemed.site.clone(),
        connector_id: redeemed.connector_id.clone(),
        cert_pem: redeemed.cert_pem.clone(),
        key_pem,
        tunnel_ca_pem: redeemed.tunnel_ca_pem.clone(),
    };
    token.validate().unwrap();

    match redeem(&state, &code, &csr) {
        Err(RedeemError::Used { connector_id }) => assert_eq!(connector_id, "connector-1"),
        other => panic!("{other:?}"),
    }
    let records = state.codes().unwrap();
    assert_eq!(records[0].current_state(), CodeState::Used);

    // Revoking: the other code is pending; after revocation it is refused.
    let revoked = state.revoke_codes("home", None).unwrap();
    assert_eq!(revoked.len(), 1);
    assert!(matches!(
        redeem(&state, &other, &csr),
        Err(RedeemError::Revoked)
    ));
    assert!(state.revoke_codes("home", None).is_err());

    // The stored file never holds the secret or the MAC key in clear.
    let text = std::fs::read_to_string(state.root().join("enroll-codes.json")).unwrap();
    let secret = code.encode().rsplit_once("/1-").unwrap().1.replace('-', "");
    assert!(!text.contains(&secret));
}

#[test]
fn codes_expire() {
    let (_dir, state) = state();
    let (code, _) = state
        .mint_code("home", "ha.example.com", std::time::Duration::from_secs(1))
        .unwrap();
    let path = state.root().join("enroll-codes.json");
    // Move the expiry into the past, as time would.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut codes: serde_json::Value = serde_json::from_str(&text).unwrap();
    codes[0]["expires"] = "2020-01-01T00:00:00Z".into();
    std::fs::write(&path, codes.to_string()).unwrap();
    let (_, csr) = pki::connector_csr().unwrap();
    assert!(matches!(
        redeem(&state, &code, &csr),
        Err(RedeemError::Expired)
    ));
}

/// A renewal code re-issues a live connector's certificate under the same id on the new key,
/// and revokes the old certificate only when it is redeemed (never before: the site keeps its
/// connector meanwhile); a code for a connector revoked since is refused.
#[test]
fn a_renewal_code_replaces_a_connectors_certificate_when_used() {
    let (_dir, state) = state();
    let (code, _) = state
        .mint_code("home", "ha.example.com", pki::DEFAULT_CODE_LIFETIME)
        .unwrap();
    let (_, csr) = pki::connector_csr().unwrap();
    let first = redeem(&state, &code, &csr).unwrap();
    let live = |state: &StateDir| -> Vec<pki::IndexEntry> {
        state
            .clients()
            .unwrap()
            .into_iter()
            .filter(|e| e.kind == pki::Kind::Connector && e.revoked_at.is_none())
            .collect()
    };
    let old = live(&state);
    assert_eq!(old.len(), 1);
    assert_eq!(
        old[0].fingerprint,
        pki::fingerprint_hex(&pem_der(&first.cert_pem))
    );

    // Only a live connector can be renewed.
    assert!(matches!(
        state.mint_renewal_code(
            "home",
            "connector-9",
            "ha.example.com",
            pki::DEFAULT_CODE_LIFETIME
        ),
        Err(pki::Error::NotIssued { .. })
    ));
    let (renewal, record) = state
        .mint_renewal_code(
            "home",
            "connector-1",
            "ha.example.com",
            pki::DEFAULT_CODE_LIFETIME,
        )
        .unwrap();
    assert_eq!(record.renews.as_deref(), Some("connector-1"));
    // Minting changes nothing yet.
    assert_eq!(live(&state), old);

    let (key_pem, csr) = pki::connector_csr().unwrap();
    let renewed = redeem(&state, &renewal, &csr).unwrap();
    assert_eq!(
        (renewed.site.as_str(), renewed.connector_id.as_str()),
        ("home", "connector-1")
    );
    pki::EnrollmentToken {
        edges: vec!["ha.example.com:443".into()],
        server_name: pki::TUNNEL_SERVER_NAME.into(),
        site: renewed.site.clone(),
        connector_id: renewed.connector_id.clone(),
        cert_pem: renewed.cert_pem.clone(),
        key_pem,
        tunnel_ca_pem: renewed.tunnel_ca_pem.clone(),
    }
    .validate()
    .unwrap();
    let now_live = live(&state);
    assert_eq!(now_live.len(), 1, "{now_live:?}");
    assert_eq!(now_live[0].name, "connector-1");
    assert_eq!(
        now_live[0].fingerprint,
        pki::fingerprint_hex(&pem_der(&renewed.cert_pem))
    );
    assert_ne!(now_live[0].serial, old[0].serial);
    let revoked = state.revoked().unwrap();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0].fingerprint.to_string(), old[0].fingerprint);
    // Once only.
    assert!(matches!(
        redeem(&state, &renewal, &csr),
        Err(RedeemError::Used { .. })
    ));

    // A renewal code whose connector is revoked before it is used is refused.
    let (late, _) = state
        .mint_renewal_code(
            "home",
            "connector-1",
            "ha.example.com",
            pki::DEFAULT_CODE_LIFETIME,
        )
        .unwrap();
    state
        .revoke(pki::Kind::Connector, "home", "connector-1")
        .unwrap();
    assert!(matches!(
        redeem(&state, &late, &csr),
        Err(RedeemError::Revoked)
    ));
    assert!(live(&state).is_empty());
}

fn pem_der(pem: &str) -> Vec<u8> {
    pki::parse_certs(pem).unwrap().remove(0).to_vec()
}

/// Concurrent writers of `enroll-codes.json` (and `index.json`), each with its own handle on
/// the state directory as separate processes have: minting, redeeming and issuing at once
/// loses no record.
#[test]
fn concurrent_writers_lose_nothing() {
    let (_dir, state) = state();
    let root = state.root().to_owned();
    // Codes for the redeemers, minted up front.
    let to_redeem: Vec<pki::EnrollmentCode> = (0..4)
        .map(|_| {
            state
                .mint_code("home", "ha.example.com", pki::DEFAULT_CODE_LIFETIME)
                .unwrap()
                .0
        })
        .collect();
    let (_, csr) = pki::connector_csr().unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(12));
    let mut threads = Vec::new();
    for t in 0..8 {
        let root = root.clone();
        let barrier = barrier.clone();
        threads.push(std::thread::spawn(move || {
            let state = StateDir::open(&root).unwrap();
            barrier.wait();
            for i in 0..5 {
                state
                    .mint_code("home", "ha.example.com", pki::DEFAULT_CODE_LIFETIME)
                    .unwrap();
                state
                    .add_client(
                        "home",
                        &format!("dev-{t}-{i}"),
                        pki::Validity::days(30),
                        pki::KeyType::EcdsaP256,
                    )
                    .unwrap();
            }
        }));
    }
    for code in to_redeem {
        let root = root.clone();
        let barrier = barrier.clone();
        let csr = csr.clone();
        threads.push(std::thread::spawn(move || {
            let state = StateDir::open(&root).unwrap();
            barrier.wait();
            redeem(&state, &code, &csr).unwrap();
        }));
    }
    for thread in threads {
        thread.join().unwrap();
    }
    let codes = state.codes().unwrap();
    assert_eq!(codes.len(), 4 + 8 * 5);
    assert_eq!(
        codes
            .iter()
            .filter(|c| c.current_state() == CodeState::Used)
            .count(),
        4
    );
    let index = state.clients().unwrap();
    assert_eq!(
        index.iter().filter(|e| e.kind == pki::Kind::Device).count(),
        8 * 5
    );
    // Four connectors, four distinct ids.
    let mut connectors: Vec<&str> = index
        .iter()
        .filter(|e| e.kind == pki::Kind::Connector)
        .map(|e| e.name.as_str())
        .collect();
    connectors.sort_unstable();
    connectors.dedup();
    assert_eq!(connectors.len(), 4, "{index:?}");
}
