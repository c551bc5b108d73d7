//! Property targets (`fuzz_*`) for the parsers in this crate that see
//! untrusted bytes: `X-Forwarded-For`, query strings and percent escapes,
//! base32 secrets, sealed values read back from the database, and what
//! WebAuthn authenticators send (CBOR, authenticator data, COSE keys,
//! whole registration and assertion responses). Each
//! asserts no panic (and round-trips where they exist). Cases per target:
//! `SOVRA_FUZZ_CASES` (default 256).

use std::net::IpAddr;

use proptest::prelude::*;

use crate::crypto;
use crate::limits::{Cidr, client_ip, client_key};
use crate::secret::ServiceKey;
use crate::webauthn::{self, cbor, soft::Authenticator};

fn cases() -> u32 {
    std::env::var("SOVRA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        ..ProptestConfig::default()
    }
}

/// Near-valid `X-Forwarded-For` values: lists of addresses, junk, spaces.
fn forwarded() -> impl Strategy<Value = String> {
    let hop = prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::from(o).to_string()),
        any::<[u16; 8]>().prop_map(|s| IpAddr::from(s).to_string()),
        "[0-9a-fA-F:.%/ ]{0,45}",
        Just("unknown".to_owned()),
    ];
    proptest::collection::vec(hop, 0..6).prop_map(|hops| hops.join(","))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_forwarded_for(header in prop_oneof![forwarded(), ".{0,200}"], peer in any::<[u8; 4]>()) {
        let trusted = [Cidr::parse("127.0.0.0/8").unwrap(), Cidr::parse("::1").unwrap()];
        let peer = IpAddr::from(peer);
        let outside = client_ip(Some(peer), Some(&header), &trusted);
        if !peer.is_loopback() {
            // An untrusted peer's header is never believed.
            prop_assert_eq!(outside, Some(peer));
        }
        let proxied = client_ip(Some("127.0.0.1".parse().unwrap()), Some(&header), &trusted);
        let ip = proxied.unwrap();
        // Whoever it names is grouped without panicking.
        let _ = client_key(ip);
    }

    #[test]
    fn fuzz_cidr(text in prop_oneof![".{0,60}", "[0-9a-f:./]{0,50}"]) {
        if let Some(cidr) = Cidr::parse(&text) {
            let _ = cidr.contains("10.0.0.1".parse().unwrap());
            let _ = cidr.contains("2001:db8::1".parse().unwrap());
        }
    }

    #[test]
    fn fuzz_query_and_percent(query in ".{0,200}", name in "[a-z_]{0,12}") {
        let _ = crypto::query_param(Some(&query), &name);
        let decoded = crypto::percent_decode(&query);
        // Encoding then decoding gives the text back.
        prop_assert_eq!(crypto::percent_decode(&crypto::percent_encode(&decoded)), decoded);
    }

    #[test]
    fn fuzz_base32(text in prop_oneof![".{0,80}", "[A-Z2-7= a-z]{0,64}"], bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        let _ = crypto::base32_decode(&text);
        prop_assert_eq!(crypto::base32_decode(&crypto::base32_encode(&bytes)), Some(bytes));
    }

    #[test]
    fn fuzz_sealed_open(
        stored in prop_oneof![".{0,120}", "sovra1:[A-Za-z0-9_-]{0,120}"],
        secret in "[A-Z2-7]{16,32}",
        factor in any::<[u8; 16]>(),
    ) {
        let key = ServiceKey::from_bytes([3; 32]);
        // Anything read back from the database opens or not, never panics.
        let _ = key.open(&stored, &factor);
        let sealed = key.seal(secret.as_bytes(), &factor).unwrap();
        prop_assert_eq!(key.open(&sealed, &factor), Some(secret.into_bytes()));
    }

    #[test]
    fn fuzz_cbor(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        // Any bytes: parsed within the bounds or refused, never a panic.
        if let Ok((_, used)) = cbor::parse(&bytes) {
            prop_assert!(used <= bytes.len());
        }
        let _ = cbor::parse_all(&bytes);
        let _ = webauthn::PublicKey::from_cose(&bytes);
    }

    #[test]
    fn fuzz_auth_data(cut in 0usize..400, flip in 0usize..400, bit in 0u8..8, tail in proptest::collection::vec(any::<u8>(), 0..40)) {
        // Real authenticator data, cut short, with a flipped bit, or with
        // junk appended.
        let a = Authenticator::new();
        let data = a.auth_data("example.com", true);
        let _ = webauthn::parse_auth_data(&data[..cut.min(data.len())]);
        let mut flipped = data.clone();
        let at = flip % flipped.len();
        flipped[at] ^= 1 << bit;
        let _ = webauthn::parse_auth_data(&flipped);
        let mut longer = data;
        longer.extend_from_slice(&tail);
        prop_assert_eq!(webauthn::parse_auth_data(&longer).is_ok(), tail.is_empty());
    }

    #[test]
    fn fuzz_registration_and_assertion(flip in 0usize..2000, bit in 0u8..8, which in 0usize..3) {
        // A valid response with one bit flipped in one of its binary
        // fields: refused (or, where the bit does not matter, accepted),
        // never a panic.
        let origins = vec!["https://example.com".to_owned()];
        let rp = webauthn::RelyingParty { id: "example.com", origins: &origins };
        let challenge = [4u8; 32];
        let mut a = Authenticator::new();
        let mut reg = a.register("example.com", "https://example.com", &webauthn::b64url(&challenge));
        let field = ["clientDataJSON", "attestationObject", "attestationObject"][which];
        let raw = webauthn::from_b64url(reg["response"][field].as_str().unwrap(), 1 << 16, "").unwrap();
        let mut raw = raw;
        let at = flip % raw.len();
        raw[at] ^= 1 << bit;
        reg["response"][field] = serde_json::Value::String(webauthn::b64url(&raw));
        let parsed: webauthn::RegistrationResponse = serde_json::from_value(reg).unwrap();
        let _ = webauthn::verify_registration(&rp, &challenge, true, &parsed);

        let good: webauthn::RegistrationResponse = serde_json::from_value(
            a.register("example.com", "https://example.com", &webauthn::b64url(&challenge)),
        ).unwrap();
        let cred = webauthn::verify_registration(&rp, &challenge, true, &good).unwrap();
        let mut got = a.assert("example.com", "https://example.com", &webauthn::b64url(&challenge), None);
        let field = ["clientDataJSON", "authenticatorData", "signature"][which];
        let mut raw = webauthn::from_b64url(got["response"][field].as_str().unwrap(), 1 << 16, "").unwrap();
        let at = flip % raw.len();
        raw[at] ^= 1 << bit;
        got["response"][field] = serde_json::Value::String(webauthn::b64url(&raw));
        let parsed: webauthn::AssertionResponse = serde_json::from_value(got).unwrap();
        // Any flipped bit in what is signed, or in the signature, fails.
        prop_assert!(webauthn::verify_assertion(&rp, &challenge, true, &cred.public_key, 0, &parsed).is_err());
    }
}
