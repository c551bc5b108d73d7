use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng as _;
use serde_json::{Map, Value, json};

use super::*;

const NOW: i64 = 1_800_000_000;
const DEMO_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
const DEMO_ANON: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0";

/// An RSA public key and a token signed with its private key (made once
/// with openssl; the private key is not kept).
const RSA_N: &str = "xAG8aNueblhwYJSDYaaAL6d1NbweUjFHWRW-j8vsMKWFwGrquFjWz2UaW1Dhz-_n-zDqzkAaBV97ThBvGPJU-dy4s8o-6rpEnwOzU0YIlVPrNbFpaadjzbvcs_mIRIxQIF_nW9V-2JzrgL9gvFE7s4o3BaQQldermzP_6lFQx_Apuw8w06sCphMnOy2APrMxrmM_CSxD0RPNzpna7Ohcug3QDDfGiJxnnBmFbQdmpfgP5j128RJ_mDArvKdAjEh0LUpgaMRyHH2ciQOepYIXqw2Ldi50Cg0IMSDOGHyEWLSWnH3AHpuOlSNbSgNfy6HG9LJK_cmOKr1QxUsg87pu8w";
const RSA_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIiwidHlwIjoiSldUIn0.eyJyb2xlIjoiYXV0aGVudGljYXRlZCIsInN1YiI6InJzYS11c2VyIiwiZXhwIjo0MTAyNDQ0ODAwLCJpYXQiOjE3MDAwMDAwMDB9.SfpwOxGLS39Oq3fYvHMAMQTXjHAnuG9PmX-t7Y9gyT8T_cYA7xG7VENLsc8qZ9YB7jOGUBIZ-nmm66qSnO3Q3MXUee0fTH0b_AgLQ2_izKYSITfcAk4WWH3fcsYHcKH27ANYwnIz9XDiDgSVWyLFDKrMsyOBl7RihIJoDUDnbZL9RECpmTpXcfe1hupVwgzd7ielgW7NculFuM1e0e-Nj_ak2UwVosIBG0W1j_8hbP_em2xjEVBg83Wm6_H1M_QhkhTVJiGtvjD7i3U3j6_Ys7D1sDI0Es1hLy8xvhkpkgpWI37JgLWzhlrBSiyjNY5WodGzkoMGtJrIBt7AEiSpyg";

fn obj(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => panic!("not an object"),
    }
}

fn b64(text: &str) -> String {
    URL_SAFE_NO_PAD.encode(text)
}

fn generated() -> (KeyStore, KeySet) {
    let store = KeyStore::generate(NOW);
    let set = KeySet::new(&store, None, None).unwrap();
    (store, set)
}

fn user(exp: i64) -> Map<String, Value> {
    obj(
        json!({"sub": "u1", "role": "authenticated", "aud": "authenticated", "iat": NOW, "exp": exp}),
    )
}

/// A P-256 key as a private JWK and its public JWK.
fn ec_jwk(kid: &str) -> (Value, Value) {
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let point = secret.public_key().to_encoded_point(false);
    let x = URL_SAFE_NO_PAD.encode(point.x().unwrap());
    let y = URL_SAFE_NO_PAD.encode(point.y().unwrap());
    let d = URL_SAFE_NO_PAD.encode(secret.to_bytes());
    let public = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256"});
    let mut private = public.clone();
    private["d"] = json!(d);
    (private, public)
}

#[test]
fn signs_and_verifies_with_a_generated_key() {
    let (store, set) = generated();
    let token = set.sign(&user(NOW + 3600)).unwrap();
    let header = raw_header(&token).unwrap();
    assert_eq!(header.alg, "HS256");
    assert_eq!(header.kid.as_deref(), Some(store.keys[0].kid.as_str()));
    let verified = set.verify(&token, NOW).unwrap();
    assert_eq!(verified.role, "authenticated");
    assert_eq!(verified.claims["sub"], "u1");
    assert!(store.keys[0].secret.len() >= 43, "256 bits, base64url");
}

#[test]
fn supabase_demo_key_verifies_with_its_secret() {
    let store = KeyStore::from_secret(DEMO_SECRET, NOW);
    let set = KeySet::new(&store, None, None).unwrap();
    let verified = set.verify(DEMO_ANON, NOW).unwrap();
    assert_eq!(verified.role, "anon");
    assert_eq!(verified.claims["iss"], "supabase-demo");
    // Keys minted from a configured secret carry no kid, like Supabase's.
    let minted = set
        .mint_api_key("service_role", "sovra", NOW, NOW + 100)
        .unwrap();
    assert_eq!(raw_header(&minted).unwrap().kid, None);
    assert_eq!(set.verify(&minted, NOW).unwrap().role, "service_role");
    // And a different secret refuses it.
    let (_, other) = generated();
    assert_eq!(other.verify(DEMO_ANON, NOW), Err(JwtError::BadSignature));
}

#[test]
fn minted_api_keys_carry_a_configured_audience() {
    let store = KeyStore::generate(NOW);
    let set = KeySet::new(&store, None, Some("authenticated".to_owned())).unwrap();
    let minted = set.mint_api_key("anon", "sovra", NOW, NOW + 100).unwrap();
    let verified = set.verify(&minted, NOW).unwrap();
    assert_eq!(verified.claims["aud"], "authenticated");
    // Without an audience, none is added (Supabase's keys have none).
    let plain = KeySet::new(&store, None, None).unwrap();
    let minted = plain.mint_api_key("anon", "sovra", NOW, NOW + 100).unwrap();
    assert!(
        plain
            .verify(&minted, NOW)
            .unwrap()
            .claims
            .get("aud")
            .is_none()
    );
    // A key minted without the audience fails where one is required.
    assert_eq!(set.verify(&minted, NOW), Err(JwtError::WrongAudience));
}

#[test]
fn role_defaults_to_anon() {
    let (_, set) = generated();
    let token = set
        .sign(&obj(json!({"sub": "x", "exp": NOW + 10})))
        .unwrap();
    let verified = set.verify(&token, NOW).unwrap();
    assert_eq!(verified.role, "anon");
    assert_eq!(verified.claims["role"], "anon");
}

#[test]
fn alg_none_is_refused() {
    let (_, set) = generated();
    let payload = b64(&json!({"role": "service_role", "exp": NOW + 100}).to_string());
    for alg in ["none", "None", "NONE"] {
        let token = format!(
            "{}.{payload}.",
            b64(&format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#))
        );
        assert_eq!(set.verify(&token, NOW), Err(JwtError::AlgNone), "{alg}");
    }
    let token = format!("{}.{payload}.", b64(r#"{"alg":"XX999"}"#));
    assert_eq!(set.verify(&token, NOW), Err(JwtError::AlgNotAllowed));
}

#[test]
fn wrong_secret_is_a_bad_signature() {
    let (_, a) = generated();
    let (_, b) = generated();
    let mut claims = user(NOW + 3600);
    claims.remove("aud");
    // Strip the kid so the other set tries its own key.
    let token = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = None;
        jsonwebtoken::encode(
            &header,
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap()
    };
    assert_eq!(a.verify(&token, NOW), Err(JwtError::BadSignature));
    let token = a.sign(&claims).unwrap();
    assert_eq!(b.verify(&token, NOW), Err(JwtError::UnknownKey));
    // A tampered payload.
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(&json!({"sub": "u1", "role": "service_role", "exp": NOW + 3600}).to_string()),
        parts[2]
    );
    assert_eq!(a.verify(&forged, NOW), Err(JwtError::BadSignature));
}

#[test]
fn time_claims_use_thirty_seconds_of_leeway() {
    let (_, set) = generated();
    let within = set.sign(&user(NOW - 29)).unwrap();
    assert!(set.verify(&within, NOW).is_ok());
    let expired = set.sign(&user(NOW - 31)).unwrap();
    assert_eq!(set.verify(&expired, NOW), Err(JwtError::Expired));

    let mut claims = user(NOW + 3600);
    claims.insert("nbf".into(), json!(NOW + 60));
    let early = set.sign(&claims).unwrap();
    assert_eq!(set.verify(&early, NOW), Err(JwtError::NotYetValid));
    assert!(set.verify(&early, NOW + 31).is_ok());

    let mut claims = user(NOW + 3600);
    claims.insert("iat".into(), json!(NOW + 120));
    let future = set.sign(&claims).unwrap();
    assert_eq!(set.verify(&future, NOW), Err(JwtError::IssuedInFuture));

    let mut claims = user(NOW + 3600);
    claims.insert("exp".into(), json!("tomorrow"));
    let bad = set.sign(&claims).unwrap();
    assert_eq!(set.verify(&bad, NOW), Err(JwtError::Malformed));
}

#[test]
fn audience_is_checked_only_when_configured() {
    let store = KeyStore::generate(NOW);
    let open = KeySet::new(&store, None, None).unwrap();
    let strict = KeySet::new(&store, None, Some("authenticated".into())).unwrap();
    let good = open.sign(&user(NOW + 100)).unwrap();
    assert!(strict.verify(&good, NOW).is_ok());
    let mut claims = user(NOW + 100);
    claims.insert("aud".into(), json!(["other", "authenticated"]));
    assert!(strict.verify(&open.sign(&claims).unwrap(), NOW).is_ok());
    claims.insert("aud".into(), json!("other"));
    let wrong = open.sign(&claims).unwrap();
    assert!(open.verify(&wrong, NOW).is_ok());
    assert_eq!(strict.verify(&wrong, NOW), Err(JwtError::WrongAudience));
    claims.remove("aud");
    let missing = open.sign(&claims).unwrap();
    assert_eq!(strict.verify(&missing, NOW), Err(JwtError::WrongAudience));
}

#[test]
fn rotation_keeps_previous_keys_until_retired() {
    let mut store = KeyStore::generate(NOW);
    let first_kid = store.keys[0].kid.clone();
    let before = KeySet::new(&store, None, None).unwrap();
    let old_token = before.sign(&user(NOW + 3600)).unwrap();

    let new_kid = store.rotate(NOW + 1).kid.clone();
    assert_ne!(new_kid, first_kid);
    assert_eq!(store.active().unwrap().kid, new_kid);
    let after = KeySet::new(&store, None, None).unwrap();
    assert!(
        after.verify(&old_token, NOW).is_ok(),
        "previous key still verifies"
    );
    let new_token = after.sign(&user(NOW + 3600)).unwrap();
    assert_eq!(
        raw_header(&new_token).unwrap().kid.as_deref(),
        Some(new_kid.as_str())
    );

    assert_eq!(
        store.retire(&new_kid),
        Err(KeyError::RetireActive(new_kid.clone()))
    );
    assert_eq!(
        store.retire("nope"),
        Err(KeyError::NoSuchKey("nope".into()))
    );
    store.retire(&first_kid).unwrap();
    let retired = KeySet::new(&store, None, None).unwrap();
    assert_eq!(retired.verify(&old_token, NOW), Err(JwtError::UnknownKey));
    assert!(retired.verify(&new_token, NOW).is_ok());
}

#[test]
fn es256_keys_from_a_jwk_set_verify_and_sign() {
    let (private, public) = ec_jwk("ec-1");
    // Verification only: the public JWK.
    let verifier = KeySet::new(
        &KeyStore::generate(NOW),
        Some(&json!({"keys": [public.clone()]})),
        None,
    )
    .unwrap();
    // Signing: the private JWK.
    let signer = KeySet::new(
        &KeyStore::default(),
        Some(&json!({"keys": [private]})),
        None,
    )
    .unwrap();
    let token = signer.sign(&user(NOW + 3600)).unwrap();
    let header = raw_header(&token).unwrap();
    assert_eq!(
        (header.alg.as_str(), header.kid.as_deref()),
        ("ES256", Some("ec-1"))
    );
    assert_eq!(verifier.verify(&token, NOW).unwrap().role, "authenticated");

    // Published: the public parts only.
    let published = signer.public_jwks();
    assert_eq!(published["keys"].as_array().unwrap().len(), 1);
    assert!(published["keys"][0].get("d").is_none());
    assert_eq!(published["keys"][0]["x"], public["x"]);

    // Another EC key with the same kid does not verify it.
    let (_, stranger) = ec_jwk("ec-1");
    let other = KeySet::new(
        &KeyStore::generate(NOW),
        Some(&json!({"keys": [stranger]})),
        None,
    )
    .unwrap();
    assert_eq!(other.verify(&token, NOW), Err(JwtError::BadSignature));
}

#[test]
fn algorithm_must_match_the_key() {
    let (_, public) = ec_jwk("ec-1");
    let store = KeyStore::generate(NOW);
    let hs_kid = store.keys[0].kid.clone();
    let set = KeySet::new(&store, Some(&json!({"keys": [public.clone()]})), None).unwrap();
    let payload = b64(&json!({"role": "service_role", "exp": NOW + 100}).to_string());

    // HS256 token pointing at the EC key: the classic key-confusion attack.
    let x_coordinate = public["x"].as_str().unwrap().as_bytes().to_vec();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("ec-1".into());
    let confused = jsonwebtoken::encode(
        &header,
        &obj(json!({"role": "service_role", "exp": NOW + 100})),
        &EncodingKey::from_secret(&x_coordinate),
    )
    .unwrap();
    assert_eq!(set.verify(&confused, NOW), Err(JwtError::AlgNotAllowed));

    // ES256 header naming the HS256 key.
    let token = format!(
        "{}.{payload}.{}",
        b64(&format!(r#"{{"alg":"ES256","kid":"{hs_kid}"}}"#)),
        b64("sig")
    );
    assert_eq!(set.verify(&token, NOW), Err(JwtError::AlgNotAllowed));

    // RS256 header with no RSA key at all and no kid.
    let token = format!("{}.{payload}.{}", b64(r#"{"alg":"RS256"}"#), b64("sig"));
    assert_eq!(set.verify(&token, NOW), Err(JwtError::AlgNotAllowed));

    // An unknown kid.
    let token = format!(
        "{}.{payload}.{}",
        b64(r#"{"alg":"HS256","kid":"who"}"#),
        b64("sig")
    );
    assert_eq!(set.verify(&token, NOW), Err(JwtError::UnknownKey));
}

#[test]
fn rs256_keys_from_a_jwk_set_verify() {
    let jwks =
        json!({"keys": [{"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "n": RSA_N, "e": "AQAB"}]});
    let set = KeySet::new(&KeyStore::generate(NOW), Some(&jwks), None).unwrap();
    let verified = set.verify(RSA_TOKEN, NOW).unwrap();
    assert_eq!(verified.role, "authenticated");
    assert_eq!(verified.claims["sub"], "rsa-user");
    assert_eq!(set.public_jwks()["keys"][0]["n"], RSA_N);
    // Without the kid it is still found by algorithm.
    let parts: Vec<&str> = RSA_TOKEN.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(r#"{"role":"service_role"}"#),
        parts[2]
    );
    assert_eq!(set.verify(&tampered, NOW), Err(JwtError::BadSignature));
}

#[test]
fn symmetric_keys_are_never_published() {
    let oct = json!({"kty": "oct", "kid": "o1", "k": URL_SAFE_NO_PAD.encode([7u8; 32])});
    let set = KeySet::new(
        &KeyStore::generate(NOW),
        Some(&json!({"keys": [oct]})),
        None,
    )
    .unwrap();
    assert_eq!(set.public_jwks(), json!({"keys": []}));
    let (_, only_hs) = generated();
    assert_eq!(only_hs.public_jwks(), json!({"keys": []}));
}

#[test]
fn bad_jwk_sets_are_refused_by_index() {
    let store = KeyStore::generate(NOW);
    let cases = [
        json!({}),
        json!({"keys": [1]}),
        json!({"keys": [{"kty": "EC", "crv": "P-384", "x": "a", "y": "b"}]}),
        json!({"keys": [{"kty": "RSA", "n": RSA_N}]}),
        json!({"keys": [{"kty": "RSA", "n": RSA_N, "e": "AQAB", "alg": "ES256"}]}),
        json!({"keys": [{"kty": "oct", "k": "c2hvcnQ"}]}),
        json!({"keys": [{"kty": "XYZ"}]}),
    ];
    for jwks in cases {
        assert!(KeySet::new(&store, Some(&jwks), None).is_err(), "{jwks}");
    }
    assert_eq!(
        KeySet::new(&KeyStore::default(), None, None).unwrap_err(),
        KeyError::NoActiveKey
    );
}

#[test]
fn malformed_tokens_are_refused_without_panicking() {
    let (_, set) = generated();
    for token in [
        "",
        ".",
        "..",
        "a.b",
        "a.b.c.d",
        "!!!.b.c",
        "e30.e30.e30",
        "bnVsbA.e30.",
        "eyJhbGciOjF9.e30.sig",
    ] {
        assert!(set.verify(token, NOW).is_err(), "{token:?}");
    }
    let header = b64(r#"{"alg":"HS256"}"#);
    assert!(
        set.verify(&format!("{header}.bm90IGpzb24.sig"), NOW)
            .is_err()
    );
}

#[test]
fn random_and_mutated_input_never_panics() {
    let (_, set) = generated();
    let valid = set.sign(&user(NOW + 3600)).unwrap();
    let mut rng = rand::thread_rng();
    for _ in 0..500 {
        let len = rng.gen_range(0..120);
        let bytes: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
        let _ = set.verify(&String::from_utf8_lossy(&bytes), NOW);
        let mut mutated = valid.clone().into_bytes();
        let idx = rng.gen_range(0..mutated.len());
        mutated[idx] = rng.gen_range(b'!'..=b'~');
        let mutated = String::from_utf8_lossy(&mutated).into_owned();
        if mutated != valid {
            assert!(
                set.verify(&mutated, NOW).is_err()
                    || mutated.split('.').nth(2) == valid.split('.').nth(2)
            );
        }
    }
}

#[test]
fn debug_output_hides_key_material() {
    let store = KeyStore::from_secret(DEMO_SECRET, NOW);
    let set = KeySet::new(&store, None, None).unwrap();
    assert!(!format!("{set:?}").contains(DEMO_SECRET));
}

/// An external issuer's token: signed by `signer`'s private EC key, verified
/// by a set holding only the public key.
fn external(claims: Value) -> (KeySet, String) {
    let (private, public) = ec_jwk("idp-1");
    let signer = KeySet::new(
        &KeyStore::default(),
        Some(&json!({"keys": [private]})),
        None,
    )
    .unwrap();
    let token = signer.sign(&obj(claims)).unwrap();
    let verifier = KeySet::new(
        &KeyStore::generate(NOW),
        Some(&json!({"keys": [public]})),
        None,
    )
    .unwrap();
    (verifier, token)
}

const IDP: &str = "https://idp.example.com/";

#[test]
fn external_keys_need_an_audience() {
    let (set, _) = external(json!({}));
    assert!(set.has_external_keys());
    assert_eq!(
        set.with_external_rules(Some(IDP.into()), None).unwrap_err(),
        KeyError::ExternalAudienceMissing
    );
    // The set's own audience counts.
    let (_, public) = ec_jwk("idp-1");
    let with_aud = KeySet::new(
        &KeyStore::generate(NOW),
        Some(&json!({"keys": [public]})),
        Some("authenticated".into()),
    )
    .unwrap();
    assert!(with_aud.with_external_rules(None, None).is_ok());
    // A private key in the set is Sovra's own, not external.
    let (private, _) = ec_jwk("own");
    let own = KeySet::new(
        &KeyStore::default(),
        Some(&json!({"keys": [private]})),
        None,
    )
    .unwrap();
    assert!(!own.has_external_keys());
    assert!(own.with_external_rules(None, None).is_ok());
}

#[test]
fn external_tokens_must_carry_the_pinned_issuer_and_the_audience() {
    let good =
        json!({"sub": "x", "role": "authenticated", "iss": IDP, "aud": "my-api", "exp": NOW + 100});
    let rules = |set: KeySet| {
        set.with_external_rules(Some(IDP.into()), Some("my-api".into()))
            .unwrap()
    };
    let (set, token) = external(good.clone());
    assert_eq!(rules(set).verify(&token, NOW).unwrap().claims["sub"], "x");
    let mut listed = good.clone();
    listed["aud"] = json!(["other", "my-api"]);
    let (set, token) = external(listed);
    assert!(rules(set).verify(&token, NOW).is_ok());
    let cases = [
        (
            "iss",
            Some(json!("https://evil.example.com/")),
            JwtError::WrongIssuer,
        ),
        ("iss", None, JwtError::WrongIssuer),
        ("iss", Some(json!(7)), JwtError::WrongIssuer),
        ("aud", Some(json!("someone-else")), JwtError::WrongAudience),
        ("aud", None, JwtError::WrongAudience),
        ("aud", Some(json!([])), JwtError::WrongAudience),
    ];
    for (claim, value, want) in cases {
        let mut claims = good.clone();
        match &value {
            Some(v) => claims[claim] = v.clone(),
            None => {
                claims.as_object_mut().unwrap().remove(claim);
            }
        }
        let (set, token) = external(claims);
        assert_eq!(
            rules(set).verify(&token, NOW),
            Err(want),
            "{claim} = {value:?}"
        );
    }
    // Without a pinned issuer any `iss` (or none) passes; `aud` still counts.
    let mut no_iss = good.clone();
    no_iss.as_object_mut().unwrap().remove("iss");
    let (set, token) = external(no_iss);
    let set = set
        .with_external_rules(None, Some("my-api".into()))
        .unwrap();
    assert!(set.verify(&token, NOW).is_ok());
}

#[test]
fn external_rules_leave_own_keys_alone() {
    let (private, public) = ec_jwk("idp-1");
    let _ = private;
    let store = KeyStore::generate(NOW);
    let set = KeySet::new(&store, Some(&json!({"keys": [public]})), None)
        .unwrap()
        .with_external_rules(Some(IDP.into()), Some("my-api".into()))
        .unwrap();
    // Sovra's own HS256 tokens: no `iss` pin, no audience required.
    let own = set
        .sign(&obj(
            json!({"role": "anon", "iss": "sovra", "exp": NOW + 100}),
        ))
        .unwrap();
    assert_eq!(set.verify(&own, NOW).unwrap().role, "anon");
}

#[test]
fn oversized_tokens_are_malformed() {
    let (_, set) = generated();
    let huge = format!("{}.e30.sig", "A".repeat(MAX_TOKEN_LEN));
    assert_eq!(set.verify(&huge, NOW), Err(JwtError::Malformed));
}

fn fuzz_cases() -> u32 {
    std::env::var("SOVRA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn fuzz_set() -> &'static (KeySet, String) {
    static SET: std::sync::OnceLock<(KeySet, String)> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        let (_, public) = ec_jwk("ec-1");
        let jwks = json!({"keys": [public, {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "n": RSA_N, "e": "AQAB"}]});
        let store = KeyStore::from_secret(DEMO_SECRET, NOW);
        let set = KeySet::new(&store, Some(&jwks), Some("authenticated".into()))
            .unwrap()
            .with_external_rules(Some(IDP.into()), None)
            .unwrap();
        let valid = set.sign(&user(NOW + 3600)).unwrap();
        (set, valid)
    })
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn header_strategy() -> impl Strategy<Value = String> {
        let alg = prop::sample::select(vec![
            "none", "None", "NONE", "HS256", "HS384", "HS512", "RS256", "ES256", "EdDSA", "PS256",
            "ES384", "XX", "",
        ]);
        let kid = prop::sample::select(vec![
            "null",
            "\"ec-1\"",
            "\"rsa-1\"",
            "\"configured\"",
            "\"../../etc/passwd\"",
            "\"\"",
            "1",
            "[]",
            "{}",
            "\"\\u0000\"",
        ]);
        (alg, kid, any::<bool>(), 0usize..4096).prop_map(|(alg, kid, with_kid, pad)| {
            let extra = "x".repeat(pad);
            if with_kid {
                format!(r#"{{"alg":"{alg}","kid":{kid},"typ":"JWT","x":"{extra}"}}"#)
            } else {
                format!(r#"{{"alg":"{alg}","x":"{extra}"}}"#)
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(fuzz_cases()))]

        /// Arbitrary bytes never panic and never verify.
        #[test]
        fn fuzz_jwt_parse(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let (set, _) = fuzz_set();
            let text = String::from_utf8_lossy(&bytes);
            prop_assert!(set.verify(&text, NOW).is_err());
        }

        /// Near-valid tokens: forged headers (`none`, wrong algorithms, huge,
        /// kid tricks), any payload, bad or missing signatures.
        #[test]
        fn fuzz_jwt_parse_near_valid(
            header in header_strategy(),
            payload in prop::sample::select(vec![
                r#"{"role":"service_role"}"#,
                r#"{"role":"service_role","aud":"authenticated","exp":1900000000}"#,
                r#"{"exp":"soon"}"#, "[]", "null", "{", "",
            ]),
            signature in "[A-Za-z0-9_=+/-]{0,90}",
            raw_base64 in any::<bool>(),
        ) {
            let (set, _) = fuzz_set();
            let head = if raw_base64 { header.clone() } else { b64(&header) };
            let token = format!("{head}.{}.{signature}", b64(payload));
            prop_assert!(set.verify(&token, NOW).is_err());
        }

        /// A valid token with any one byte changed never verifies as
        /// something else.
        #[test]
        fn fuzz_jwt_parse_mutated(index in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let (set, valid) = fuzz_set();
            prop_assert!(set.verify(valid, NOW).is_ok());
            let mut bytes = valid.clone().into_bytes();
            let i = index.index(bytes.len());
            if bytes[i] == byte {
                return Ok(());
            }
            bytes[i] = byte;
            let mutated = String::from_utf8_lossy(&bytes).into_owned();
            if let Ok(verified) = set.verify(&mutated, NOW) {
                // Base64 padding bits can change without changing the
                // decoded token: then it is the same token.
                prop_assert_eq!(verified.claims, set.verify(valid, NOW).unwrap().claims);
            }
        }
    }
}

#[test]
fn a_project_ref_binds_tokens_to_their_project() {
    // Two projects configured with the same secret.
    let store = KeyStore::from_secret(DEMO_SECRET, NOW);
    let acme = KeySet::new(&store, None, None)
        .unwrap()
        .with_project_ref("acme");
    let globex = KeySet::new(&store, None, None)
        .unwrap()
        .with_project_ref("globex");
    let token = acme.sign(&user(NOW + 60)).unwrap();
    let verified = acme.verify(&token, NOW).unwrap();
    assert_eq!(verified.claims["ref"], "acme");
    assert_eq!(acme.project_ref(), Some("acme"));
    assert_eq!(globex.verify(&token, NOW), Err(JwtError::WrongIssuer));
    // A token without a ref (the Supabase demo key) is no project's.
    assert_eq!(acme.verify(DEMO_ANON, NOW), Err(JwtError::WrongIssuer));
    // Claims naming another project (a custom access token hook may
    // write any claim) are never signed: globex, configured with the same
    // secret, would accept the token. The project's own ref is signed.
    let mut claims = user(NOW + 60);
    claims.insert("ref".to_owned(), json!("globex"));
    assert!(matches!(acme.sign(&claims), Err(JwtError::Signing(_))));
    claims.insert("ref".to_owned(), json!(7));
    assert!(matches!(acme.sign(&claims), Err(JwtError::Signing(_))));
    claims.insert("ref".to_owned(), json!("acme"));
    let own = acme.sign(&claims).unwrap();
    assert!(acme.verify(&own, NOW).is_ok());
    assert_eq!(globex.verify(&own, NOW), Err(JwtError::WrongIssuer));
    // An unbound set (the default project) signs no ref.
    let plain = KeySet::new(&store, None, None).unwrap();
    let token = plain.sign(&user(NOW + 60)).unwrap();
    assert!(
        plain
            .verify(&token, NOW)
            .unwrap()
            .claims
            .get("ref")
            .is_none()
    );
}

#[test]
fn an_unbound_set_refuses_the_refs_of_other_projects() {
    // The default project shares its secret with tenant "acme".
    let store = KeyStore::from_secret(DEMO_SECRET, NOW);
    let acme = KeySet::new(&store, None, None)
        .unwrap()
        .with_project_ref("acme");
    let guard: RefGuard = std::sync::Arc::new(|r: &str| r == "acme");
    let default = KeySet::new(&store, None, None)
        .unwrap()
        .with_foreign_refs(guard.clone());
    // acme's tokens are refused by the default project...
    let token = acme.sign(&user(NOW + 60)).unwrap();
    assert_eq!(default.verify(&token, NOW), Err(JwtError::WrongIssuer));
    // ...and the default project's by acme.
    let own = default.sign(&user(NOW + 60)).unwrap();
    assert!(default.verify(&own, NOW).is_ok());
    assert_eq!(acme.verify(&own, NOW), Err(JwtError::WrongIssuer));
    // A ref no project here has (a Supabase project's key moving in)
    // still verifies, and so do tokens without one (the demo key).
    let mut claims = user(NOW + 60);
    claims.insert("ref".to_owned(), json!("abcdefghijklmnopqrst"));
    let moved = default.sign(&claims).unwrap();
    assert!(default.verify(&moved, NOW).is_ok());
    assert!(default.verify(DEMO_ANON, NOW).is_ok());
    // The default project never signs claims naming a project here (a
    // hook's claims): acme would accept them with the shared secret.
    claims.insert("ref".to_owned(), json!("acme"));
    assert!(matches!(default.sign(&claims), Err(JwtError::Signing(_))));
    // A bound set ignores the guard: its own ref is the rule.
    let bound = KeySet::new(&store, None, None)
        .unwrap()
        .with_project_ref("acme")
        .with_foreign_refs(guard);
    assert!(bound.verify(&token, NOW).is_ok());
}

#[test]
fn a_remembered_signature_still_has_its_claims_checked_at_every_use() {
    let (_, set) = generated();
    let token = set.sign(&user(NOW + 60)).unwrap();
    // Verified (and remembered), then used again within its lifetime.
    assert_eq!(set.verify(&token, NOW).unwrap().claims["sub"], "u1");
    assert_eq!(set.signatures.len(), 1);
    assert_eq!(set.verify(&token, NOW + 30).unwrap().role, "authenticated");
    assert_eq!(set.signatures.len(), 1, "the second use found the first");
    // The same token after it expired: refused, remembered or not.
    assert_eq!(set.verify(&token, NOW + 91), Err(JwtError::Expired));
    // A token not yet valid when first seen becomes valid later.
    let mut claims = user(NOW + 3600);
    claims.insert("nbf".into(), json!(NOW + 60));
    let early = set.sign(&claims).unwrap();
    assert_eq!(set.verify(&early, NOW), Err(JwtError::NotYetValid));
    assert!(set.verify(&early, NOW + 31).is_ok());
}

#[test]
fn a_remembered_token_changed_by_one_byte_is_verified_again() {
    let (_, set) = generated();
    let token = set.sign(&user(NOW + 3600)).unwrap();
    assert!(set.verify(&token, NOW).is_ok());
    // Another payload under the remembered token's signature.
    let mut parts: Vec<&str> = token.split('.').collect();
    let forged_payload = b64(r#"{"sub":"u1","role":"service_role","exp":1900000000}"#);
    parts[1] = &forged_payload;
    assert_eq!(
        set.verify(&parts.join("."), NOW),
        Err(JwtError::BadSignature)
    );
    // The remembered token's signature with its first character changed
    // (the last one may differ only in unused bits).
    let at = token.rfind('.').unwrap() + 1;
    let first = &token[at..=at];
    let tampered = format!(
        "{}{}{}",
        &token[..at],
        if first == "A" { "B" } else { "A" },
        &token[at + 1..]
    );
    assert_eq!(set.verify(&tampered, NOW), Err(JwtError::BadSignature));
    assert!(set.verify(&token, NOW).is_ok());
}

#[test]
fn remembered_signatures_belong_to_their_key_set() {
    let (_, a) = generated();
    let (_, b) = generated();
    let token = a.sign(&user(NOW + 3600)).unwrap();
    assert!(a.verify(&token, NOW).is_ok());
    // Other keys (another tenant, or keys after a rotation) verify anew.
    assert_eq!(b.verify(&token, NOW), Err(JwtError::UnknownKey));
}

#[test]
fn a_remembered_token_whose_ref_became_foreign_is_refused() {
    let store = KeyStore::generate(NOW);
    let foreign = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = foreign.clone();
    let guard: RefGuard =
        std::sync::Arc::new(move |_: &str| flag.load(std::sync::atomic::Ordering::SeqCst));
    let set = KeySet::new(&store, None, None)
        .unwrap()
        .with_foreign_refs(guard);
    let mut claims = user(NOW + 3600);
    claims.insert("ref".into(), json!("acme"));
    let token = set.sign(&claims).unwrap();
    assert!(set.verify(&token, NOW).is_ok());
    // A tenant named `acme` appears: the guard is asked again.
    foreign.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(set.verify(&token, NOW), Err(JwtError::WrongIssuer));
}

#[test]
fn the_signature_cache_is_bounded() {
    let (_, set) = generated();
    for n in 0..(SIGNATURES_CACHED + 10) {
        let mut claims = user(NOW + 3600);
        claims.insert("n".into(), json!(n));
        let token = set.sign(&claims).unwrap();
        assert!(set.verify(&token, NOW).is_ok());
        assert!(set.signatures.len() <= SIGNATURES_CACHED);
        assert!(set.signatures.bytes() <= SIGNATURE_CACHE_BYTES);
    }
    // Large tokens fill the byte budget before the count.
    let (_, set) = generated();
    let mut most = 0;
    for n in 0..400 {
        let mut claims = user(NOW + 3600);
        claims.insert("pad".into(), json!(format!("{n}{}", "x".repeat(2000))));
        let token = set.sign(&claims).unwrap();
        assert!(token.len() <= SIGNATURE_CACHE_MAX_TOKEN);
        assert!(set.verify(&token, NOW).is_ok());
        assert!(set.signatures.bytes() <= SIGNATURE_CACHE_BYTES);
        most = most.max(set.signatures.len());
    }
    let fit = SIGNATURE_CACHE_BYTES / (3 * 2000);
    assert!(
        most > 1 && most <= fit,
        "{most} remembered, at most {fit} fit"
    );
    // A token too long to remember is verified all the same.
    let mut claims = user(NOW + 3600);
    claims.insert("pad".into(), json!("x".repeat(SIGNATURE_CACHE_MAX_TOKEN)));
    let long = set.sign(&claims).unwrap();
    let before = set.signatures.len();
    assert!(set.verify(&long, NOW).is_ok());
    assert_eq!(set.signatures.len(), before);
}
