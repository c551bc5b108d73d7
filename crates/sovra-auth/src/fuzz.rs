//! Property targets (`fuzz_*`) for the parsers in this crate that see
//! untrusted bytes: `X-Forwarded-For`, query strings and percent escapes,
//! base32 secrets, and sealed values read back from the database. Each
//! asserts no panic (and round-trips where they exist). Cases per target:
//! `SOVRA_FUZZ_CASES` (default 256).

use std::net::IpAddr;

use proptest::prelude::*;

use crate::crypto;
use crate::limits::{Cidr, client_ip, client_key};
use crate::secret::ServiceKey;

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
}
