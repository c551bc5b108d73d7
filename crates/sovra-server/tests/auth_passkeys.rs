//! Passkeys and WebAuthn MFA (issue #17, part 2) through the real router on
//! a real database, with a software authenticator (a P-256 key signing
//! real `authenticatorData`/`clientDataJSON`) in the place of the browser.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sovra_auth::webauthn::soft::Authenticator;
use support::auth_client::{Auth, claims, config, token};

/// The RP ID and origin the test server runs as (its site URL).
fn rp(auth: &Auth) -> (String, String) {
    let origin = auth.app.url.trim_end_matches('/').to_owned();
    let host = origin
        .split("://")
        .nth(1)
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .to_owned();
    (host, origin)
}

fn methods(access: &str) -> Vec<String> {
    claims(access)["amr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["method"].as_str().unwrap().to_owned())
        .collect()
}

/// Registers a passkey for the holder of `access`; the verify reply.
async fn register(auth: &Auth, access: &str, a: &Authenticator) -> support::auth_client::Reply {
    let (rp_id, origin) = rp(auth);
    let options = auth
        .call(
            Method::POST,
            "/passkeys/registration/options",
            Some(access),
            Some(json!({})),
        )
        .await;
    assert_eq!(options.status, StatusCode::OK, "{:?}", options.body);
    let challenge = options.body["options"]["challenge"].as_str().unwrap();
    auth.call(
        Method::POST,
        "/passkeys/registration/verify",
        Some(access),
        Some(json!({
            "challenge_id": options.body["challenge_id"],
            "credential": a.register(&rp_id, &origin, challenge),
        })),
    )
    .await
}

/// Starts a passkey sign-in: (challenge id, challenge).
async fn sign_in_options(auth: &Auth) -> (Value, String) {
    let options = auth
        .post(
            "/passkeys/authentication/options",
            json!({"gotrue_meta_security": {}}),
        )
        .await;
    assert_eq!(options.status, StatusCode::OK, "{:?}", options.body);
    (
        options.body["challenge_id"].clone(),
        options.body["options"]["challenge"]
            .as_str()
            .unwrap()
            .to_owned(),
    )
}

async fn sign_in_verify(
    auth: &Auth,
    challenge_id: &Value,
    credential: Value,
) -> support::auth_client::Reply {
    auth.post(
        "/passkeys/authentication/verify",
        json!({"challenge_id": challenge_id, "credential": credential}),
    )
    .await
}

#[tokio::test]
async fn passkey_register_sign_in_list_rename_delete() {
    let auth = Auth::new().await;
    let user = auth.user_id("pk@example.com", "password1").await;
    let access = auth.access_token("pk@example.com", "password1").await;
    let (rp_id, origin) = rp(&auth);

    let options = auth
        .call(
            Method::POST,
            "/passkeys/registration/options",
            Some(&access),
            Some(json!({})),
        )
        .await;
    assert_eq!(options.status, StatusCode::OK, "{:?}", options.body);
    let o = &options.body["options"];
    assert_eq!(o["rp"]["id"], rp_id.as_str());
    assert_eq!(o["attestation"], "none");
    assert_eq!(o["user"]["name"], "pk@example.com");
    assert_eq!(o["authenticatorSelection"]["residentKey"], "required");
    assert!(options.body["expires_at"].as_i64().unwrap() > 0);
    let algs: Vec<i64> = o["pubKeyCredParams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["alg"].as_i64().unwrap())
        .collect();
    assert_eq!(algs, [-7, -8, -257]);

    let mut a = Authenticator::new();
    let verified = auth
        .call(
            Method::POST,
            "/passkeys/registration/verify",
            Some(&access),
            Some(json!({
                "challenge_id": options.body["challenge_id"],
                "credential": a.register(&rp_id, &origin, o["challenge"].as_str().unwrap()),
            })),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
    let passkey = verified.body["id"].as_str().unwrap().to_owned();
    assert!(verified.body["created_at"].is_string());

    // The next registration options exclude it.
    let again = auth
        .call(
            Method::POST,
            "/passkeys/registration/options",
            Some(&access),
            Some(json!({})),
        )
        .await;
    assert_eq!(
        again.body["options"]["excludeCredentials"][0]["id"],
        sovra_auth::webauthn::b64url(&a.credential_id)
    );

    // Sign in with it, no password.
    let (challenge_id, challenge) = sign_in_options(&auth).await;
    let session = sign_in_verify(
        &auth,
        &challenge_id,
        a.assert(
            &rp_id,
            &origin,
            &challenge,
            Some(uuid_bytes(&user).as_slice()),
        ),
    )
    .await;
    assert_eq!(session.status, StatusCode::OK, "{:?}", session.body);
    assert_eq!(session.body["user"]["id"], user.as_str());
    let signed_in = token(&session.body, "access_token");
    assert_eq!(claims(&signed_in)["sub"], user.as_str());
    assert_eq!(claims(&signed_in)["aal"], "aal1");
    assert_eq!(methods(&signed_in), ["passkey"]);
    // The refresh token works like any other.
    let refreshed = auth.refresh(&token(&session.body, "refresh_token")).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{:?}", refreshed.body);
    // The challenge was used.
    let replay = sign_in_verify(
        &auth,
        &challenge_id,
        a.assert(&rp_id, &origin, &challenge, None),
    )
    .await;
    assert_eq!(replay.status, StatusCode::NOT_FOUND);
    assert_eq!(replay.code(), "webauthn_challenge_not_found");

    // List, rename.
    let list = auth
        .call(Method::GET, "/passkeys", Some(&signed_in), None)
        .await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    assert_eq!(list.body[0]["id"], passkey.as_str());
    assert!(list.body[0]["last_used_at"].is_string());
    let renamed = auth
        .call(
            Method::PATCH,
            &format!("/passkeys/{passkey}"),
            Some(&signed_in),
            Some(json!({"friendly_name": "Laptop"})),
        )
        .await;
    assert_eq!(renamed.status, StatusCode::OK, "{:?}", renamed.body);
    assert_eq!(renamed.body["friendly_name"], "Laptop");
    let admin_list = auth
        .admin(Method::GET, &format!("/admin/users/{user}/passkeys"), None)
        .await;
    assert_eq!(admin_list.body[0]["friendly_name"], "Laptop");

    // Another user sees none of it and cannot touch it.
    let other = auth.access_token_of_new("other@example.com").await;
    let theirs = auth
        .call(Method::GET, "/passkeys", Some(&other), None)
        .await;
    assert_eq!(theirs.body, json!([]));
    for (method, body) in [
        (Method::PATCH, Some(json!({"friendly_name": "mine"}))),
        (Method::DELETE, None),
    ] {
        let reply = auth
            .call(method, &format!("/passkeys/{passkey}"), Some(&other), body)
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(reply.code(), "webauthn_credential_not_found");
    }

    let deleted = auth
        .call(
            Method::DELETE,
            &format!("/passkeys/{passkey}"),
            Some(&signed_in),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let list = auth
        .call(Method::GET, "/passkeys", Some(&signed_in), None)
        .await;
    assert_eq!(list.body, json!([]));
    // A deleted passkey signs nobody in.
    let (challenge_id, challenge) = sign_in_options(&auth).await;
    let gone = sign_in_verify(
        &auth,
        &challenge_id,
        a.assert(&rp_id, &origin, &challenge, None),
    )
    .await;
    assert_eq!(gone.status, StatusCode::BAD_REQUEST);
    assert_eq!(gone.code(), "webauthn_credential_not_found");
}

fn uuid_bytes(id: &str) -> Vec<u8> {
    uuid::Uuid::parse_str(id).unwrap().as_bytes().to_vec()
}

trait NewUser {
    async fn access_token_of_new(&self, email: &str) -> String;
}

impl NewUser for Auth {
    async fn access_token_of_new(&self, email: &str) -> String {
        self.user(email, "password1").await;
        self.access_token(email, "password1").await
    }
}

#[tokio::test]
async fn passkey_refusals() {
    let auth = Auth::new().await;
    let (rp_id, origin) = rp(&auth);
    let access = auth.access_token_of_new("refuse@example.com").await;
    let other_access = auth.access_token_of_new("mallory@example.com").await;

    // Registration needs a session.
    let anonymous = auth.post("/passkeys/registration/options", json!({})).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.code(), "no_authorization");

    // Wrong origin, wrong RP, expired, another user's challenge.
    let a = Authenticator::new();
    let start = |token: String| {
        let auth = &auth;
        async move {
            let o = auth
                .call(
                    Method::POST,
                    "/passkeys/registration/options",
                    Some(&token),
                    Some(json!({})),
                )
                .await;
            (
                o.body["challenge_id"].clone(),
                o.body["options"]["challenge"].as_str().unwrap().to_owned(),
            )
        }
    };
    let finish = |token: String, id: Value, credential: Value| {
        let auth = &auth;
        async move {
            auth.call(
                Method::POST,
                "/passkeys/registration/verify",
                Some(&token),
                Some(json!({"challenge_id": id, "credential": credential})),
            )
            .await
        }
    };
    let (id, c) = start(access.clone()).await;
    let reply = finish(
        access.clone(),
        id.clone(),
        a.register(&rp_id, "https://evil.example.com", &c),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "webauthn_verification_failed");
    assert!(
        reply.body.to_string().contains("origin"),
        "{:?}",
        reply.body
    );
    // The failed attempt used the challenge up.
    let reply = finish(access.clone(), id, a.register(&rp_id, &origin, &c)).await;
    assert_eq!(reply.code(), "webauthn_challenge_not_found");

    let (id, c) = start(access.clone()).await;
    let reply = finish(
        access.clone(),
        id,
        a.register("evil.example.com", &origin, &c),
    )
    .await;
    assert_eq!(reply.code(), "webauthn_verification_failed");
    assert!(reply.body.to_string().contains("RP ID"), "{:?}", reply.body);

    let (id, c) = start(access.clone()).await;
    auth.sql("update sovra.webauthn_challenges set created_at = now() - interval '10 minutes'")
        .await;
    let reply = finish(access.clone(), id, a.register(&rp_id, &origin, &c)).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "webauthn_challenge_expired");

    let (id, c) = start(access.clone()).await;
    let reply = finish(other_access.clone(), id, a.register(&rp_id, &origin, &c)).await;
    assert_eq!(reply.code(), "webauthn_challenge_not_found");

    // Malformed CBOR, bodies that are not a credential.
    let (id, c) = start(access.clone()).await;
    let mut junk = a.register(&rp_id, &origin, &c);
    junk["response"]["attestationObject"] =
        json!(sovra_auth::webauthn::b64url(&[0xa3, 0x63, 0x66]));
    let reply = finish(access.clone(), id, junk).await;
    assert_eq!(reply.code(), "webauthn_verification_failed");
    let (id, _) = start(access.clone()).await;
    let reply = finish(access.clone(), id, json!({"id": 1})).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "validation_failed");

    // Registered once; the same credential again (by anyone) is refused.
    assert_eq!(register(&auth, &access, &a).await.status, StatusCode::OK);
    let dup = register(&auth, &other_access, &a).await;
    assert_eq!(dup.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(dup.code(), "webauthn_credential_exists");

    // Sign-in refusals: bad signature, a userHandle naming someone else,
    // a counter that goes back, an expired challenge.
    let mut a = a;
    let (id, c) = start_sign_in(&auth).await;
    let mut forged = a.assert(&rp_id, &origin, &c, None);
    forged["response"]["signature"] = json!(sovra_auth::webauthn::b64url(&[
        0x30, 0x06, 2, 1, 1, 2, 1, 1
    ]));
    let reply = sign_in_verify(&auth, &id, forged).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.code(), "webauthn_verification_failed");

    let (id, c) = start_sign_in(&auth).await;
    let mallory = claims(&other_access)["sub"].as_str().unwrap().to_owned();
    let reply = sign_in_verify(
        &auth,
        &id,
        a.assert(&rp_id, &origin, &c, Some(&uuid_bytes(&mallory))),
    )
    .await;
    assert_eq!(reply.code(), "webauthn_verification_failed");

    a.counter = 40;
    let (id, c) = start_sign_in(&auth).await;
    let ok = sign_in_verify(&auth, &id, a.assert(&rp_id, &origin, &c, None)).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    a.counter = 10;
    let (id, c) = start_sign_in(&auth).await;
    let cloned = sign_in_verify(&auth, &id, a.assert(&rp_id, &origin, &c, None)).await;
    assert_eq!(cloned.code(), "webauthn_verification_failed");
    assert!(
        cloned.body.to_string().contains("counter"),
        "{:?}",
        cloned.body
    );

    // Without user verification a passkey does not sign in.
    a.flags = 0x01;
    a.counter = 50;
    let (id, c) = start_sign_in(&auth).await;
    let no_uv = sign_in_verify(&auth, &id, a.assert(&rp_id, &origin, &c, None)).await;
    assert_eq!(no_uv.code(), "webauthn_verification_failed");

    a.flags = 0x05;
    let (id, c) = start_sign_in(&auth).await;
    auth.sql("update sovra.webauthn_challenges set created_at = now() - interval '10 minutes'")
        .await;
    let late = sign_in_verify(&auth, &id, a.assert(&rp_id, &origin, &c, None)).await;
    assert_eq!(late.code(), "webauthn_challenge_expired");
    let bad_id = sign_in_verify(
        &auth,
        &json!("not-a-uuid"),
        a.assert(&rp_id, &origin, &c, None),
    )
    .await;
    assert_eq!(bad_id.code(), "webauthn_challenge_not_found");

    // Admin: only with the service key; deletes.
    let user = claims(&access)["sub"].as_str().unwrap().to_owned();
    let not_admin = auth
        .call(
            Method::GET,
            &format!("/admin/users/{user}/passkeys"),
            Some(&access),
            None,
        )
        .await;
    assert_eq!(not_admin.code(), "not_admin");
    let list = auth
        .admin(Method::GET, &format!("/admin/users/{user}/passkeys"), None)
        .await;
    let passkey = list.body[0]["id"].as_str().unwrap().to_owned();
    let wrong_user = auth
        .admin(
            Method::DELETE,
            &format!("/admin/users/{mallory}/passkeys/{passkey}"),
            None,
        )
        .await;
    assert_eq!(wrong_user.status, StatusCode::NOT_FOUND);
    let deleted = auth
        .admin(
            Method::DELETE,
            &format!("/admin/users/{user}/passkeys/{passkey}"),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let missing = auth
        .admin(
            Method::GET,
            &format!("/admin/users/{}/passkeys", uuid::Uuid::new_v4()),
            None,
        )
        .await;
    assert_eq!(missing.code(), "user_not_found");
}

async fn start_sign_in(auth: &Auth) -> (Value, String) {
    sign_in_options(auth).await
}

#[tokio::test]
async fn passkeys_can_be_turned_off_and_settings_say_so() {
    let on = Auth::new().await;
    let settings = on.call(Method::GET, "/settings", None, None).await;
    assert_eq!(settings.body["passkeys_enabled"], true);
    assert_eq!(settings.body["mfa_webauthn_enabled"], true);

    let off = Auth::with(config(|c| {
        c.auth.webauthn.passkeys = false;
        c.auth.webauthn.mfa = false;
    }))
    .await;
    let settings = off.call(Method::GET, "/settings", None, None).await;
    assert_eq!(settings.body["passkeys_enabled"], false);
    let reply = off
        .post("/passkeys/authentication/options", json!({}))
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.code(), "passkey_disabled");
    let access = off.access_token_of_new("off@example.com").await;
    let enroll = off
        .call(
            Method::POST,
            "/factors",
            Some(&access),
            Some(json!({"factor_type": "webauthn", "friendly_name": "key"})),
        )
        .await;
    assert_eq!(enroll.code(), "mfa_webauthn_enroll_not_enabled");
}

#[tokio::test]
async fn webauthn_mfa_enroll_challenge_verify_raises_to_aal2() {
    let auth = Auth::new().await;
    let (rp_id, origin) = rp(&auth);
    let access = auth.access_token_of_new("mfa-key@example.com").await;
    let enrolled = auth
        .call(
            Method::POST,
            "/factors",
            Some(&access),
            Some(json!({"factor_type": "webauthn", "friendly_name": "YubiKey"})),
        )
        .await;
    assert_eq!(enrolled.status, StatusCode::OK, "{:?}", enrolled.body);
    assert_eq!(enrolled.body["type"], "webauthn");
    assert_eq!(enrolled.body["friendly_name"], "YubiKey");
    let factor = enrolled.body["id"].as_str().unwrap().to_owned();

    // A relying party that is not this server's is refused.
    let wrong = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/challenge"),
            Some(&access),
            Some(json!({"factorId": factor, "webauthn": {"rpId": "evil.example.com"}})),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong.code(), "validation_failed");
    let wrong = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/challenge"),
            Some(&access),
            Some(json!({"webauthn": {"rpId": rp_id, "rpOrigins": ["https://evil.example.com"]}})),
        )
        .await;
    assert_eq!(wrong.code(), "validation_failed");

    let challenge = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/challenge"),
            Some(&access),
            Some(json!({"factorId": factor, "webauthn": {"rpId": rp_id, "rpOrigins": [origin]}})),
        )
        .await;
    assert_eq!(challenge.status, StatusCode::OK, "{:?}", challenge.body);
    assert_eq!(challenge.body["type"], "webauthn");
    assert_eq!(challenge.body["webauthn"]["type"], "create");
    let public_key = &challenge.body["webauthn"]["credential_options"]["publicKey"];
    assert_eq!(public_key["rp"]["id"], rp_id.as_str());
    assert_eq!(public_key["attestation"], "none");
    let challenge_id = challenge.body["id"].as_str().unwrap().to_owned();
    let mut key = Authenticator::new();
    key.flags = 0x01; // a security key without a PIN: presence only
    let created = key.register(&rp_id, &origin, public_key["challenge"].as_str().unwrap());

    // The wrong ceremony type is refused.
    let mixed = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/verify"),
            Some(&access),
            Some(json!({"challenge_id": challenge_id, "webauthn": {
                "type": "request", "rpId": rp_id, "rpOrigins": [origin], "credential_response": created}})),
        )
        .await;
    assert_eq!(mixed.code(), "validation_failed");

    let verified = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/verify"),
            Some(&access),
            Some(json!({"challenge_id": challenge_id, "webauthn": {
                "type": "create", "rpId": rp_id, "rpOrigins": [origin], "credential_response": created}})),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
    let aal2 = token(&verified.body, "access_token");
    assert_eq!(claims(&aal2)["aal"], "aal2");
    assert!(methods(&aal2).contains(&"mfa/webauthn".to_owned()));
    let me = auth.call(Method::GET, "/user", Some(&aal2), None).await;
    assert_eq!(me.body["factors"][0]["factor_type"], "webauthn");
    assert_eq!(me.body["factors"][0]["status"], "verified");

    // A later sign-in steps up with the key.
    let aal1 = auth.access_token("mfa-key@example.com", "password1").await;
    assert_eq!(claims(&aal1)["aal"], "aal1");
    let step = |token: String| {
        let auth = &auth;
        let factor = factor.clone();
        let rp_id = rp_id.clone();
        async move {
            let c = auth
                .call(
                    Method::POST,
                    &format!("/factors/{factor}/challenge"),
                    Some(&token),
                    Some(json!({"webauthn": {"rpId": rp_id}})),
                )
                .await;
            assert_eq!(c.status, StatusCode::OK, "{:?}", c.body);
            c.body
        }
    };
    let c = step(aal1.clone()).await;
    assert_eq!(c["webauthn"]["type"], "request");
    let options = &c["webauthn"]["credential_options"]["publicKey"];
    assert_eq!(
        options["allowCredentials"][0]["id"],
        sovra_auth::webauthn::b64url(&key.credential_id)
    );
    let verify = |token: String, id: Value, response: Value| {
        let auth = &auth;
        let factor = factor.clone();
        async move {
            auth.call(
                Method::POST,
                &format!("/factors/{factor}/verify"),
                Some(&token),
                Some(json!({"challenge_id": id, "webauthn": {"type": "request", "credential_response": response}})),
            )
            .await
        }
    };
    // Another authenticator (another credential): refused.
    let mut stranger = Authenticator::new();
    let reply = verify(
        aal1.clone(),
        c["id"].clone(),
        stranger.assert(
            &rp_id,
            &origin,
            options["challenge"].as_str().unwrap(),
            None,
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.code(), "mfa_verification_failed");
    // The same id but another key: the signature fails.
    stranger.credential_id = key.credential_id.clone();
    let reply = verify(
        aal1.clone(),
        c["id"].clone(),
        stranger.assert(
            &rp_id,
            &origin,
            options["challenge"].as_str().unwrap(),
            None,
        ),
    )
    .await;
    assert_eq!(reply.code(), "mfa_verification_failed");
    assert!(
        reply.body.to_string().contains("signature"),
        "{:?}",
        reply.body
    );
    // The key itself.
    key.counter = 5;
    let ok = verify(
        aal1.clone(),
        c["id"].clone(),
        key.assert(
            &rp_id,
            &origin,
            options["challenge"].as_str().unwrap(),
            None,
        ),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(claims(&token(&ok.body, "access_token"))["aal"], "aal2");
    // Replayed: the challenge is spent.
    let replay = verify(
        aal1.clone(),
        c["id"].clone(),
        key.assert(
            &rp_id,
            &origin,
            options["challenge"].as_str().unwrap(),
            None,
        ),
    )
    .await;
    assert_eq!(replay.status, StatusCode::NOT_FOUND);
    // A counter that goes back.
    let aal1 = auth.access_token("mfa-key@example.com", "password1").await;
    let c = step(aal1.clone()).await;
    key.counter = 2;
    let options = &c["webauthn"]["credential_options"]["publicKey"];
    let cloned = verify(
        aal1.clone(),
        c["id"].clone(),
        key.assert(
            &rp_id,
            &origin,
            options["challenge"].as_str().unwrap(),
            None,
        ),
    )
    .await;
    assert_eq!(cloned.code(), "mfa_verification_failed");
    assert!(
        cloned.body.to_string().contains("counter"),
        "{:?}",
        cloned.body
    );
    // Expired.
    let c = step(aal1.clone()).await;
    auth.sql("update auth.mfa_challenges set created_at = now() - interval '10 minutes'")
        .await;
    let options = &c["webauthn"]["credential_options"]["publicKey"];
    let late = verify(
        aal1.clone(),
        c["id"].clone(),
        key.assert(
            &rp_id,
            &origin,
            options["challenge"].as_str().unwrap(),
            None,
        ),
    )
    .await;
    assert_eq!(late.code(), "mfa_challenge_expired");

    // Passkey registration from an aal1 session of a user with MFA: refused.
    let reply = auth
        .call(
            Method::POST,
            "/passkeys/registration/options",
            Some(&aal1),
            Some(json!({})),
        )
        .await;
    assert_eq!(reply.code(), "insufficient_aal");

    // Unenrolling (at aal2) takes the sessions back to aal1.
    let unenrolled = auth
        .call(
            Method::DELETE,
            &format!("/factors/{factor}"),
            Some(&aal2),
            None,
        )
        .await;
    assert_eq!(unenrolled.status, StatusCode::OK, "{:?}", unenrolled.body);
}
