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
