//! `/auth/v1` through the real router on a real database: every endpoint's
//! successes and refusals, in the shapes auth-js reads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sovra_test_support::TestApp;
use support::auth_client::{Auth, Reply, claims, code_in, config, link_in, redirect, token};

#[tokio::test]
async fn signup_confirm_through_the_mailbox_then_sign_in() {
    let auth = Auth::new().await;
    let reply = auth
        .post(
            "/signup",
            json!({"email": "Ada@Example.com", "password": "s3cret-pass", "data": {"name": "Ada"}}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["email"], "ada@example.com");
    assert!(reply.body.get("access_token").is_none());
    assert!(reply.body.get("confirmation_sent_at").is_some());
    assert_eq!(reply.body["user_metadata"]["name"], "Ada");
    assert_eq!(reply.body["identities"][0]["provider"], "email");

    let early = auth.sign_in("ada@example.com", "s3cret-pass").await;
    assert_eq!(early.status, StatusCode::BAD_REQUEST);
    assert_eq!(early.code(), "email_not_confirmed");

    let mail = auth.mail("ada@example.com").await;
    assert_eq!(mail["kind"], "confirmation");
    let code = code_in(&mail);
    let wrong = auth
        .post(
            "/verify",
            json!({"type": "signup", "email": "ada@example.com", "token": "000000"}),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(wrong.code(), "otp_expired");
    let verified = auth
        .post(
            "/verify",
            json!({"type": "signup", "email": "ada@example.com", "token": code}),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
    assert!(verified.body["user"]["email_confirmed_at"].is_string());
    assert_eq!(
        verified.body["user"]["user_metadata"]["email_verified"],
        true
    );
    // A code works once.
    let again = auth
        .post(
            "/verify",
            json!({"type": "signup", "email": "ada@example.com", "token": code}),
        )
        .await;
    assert_eq!(again.code(), "otp_expired");

    let session = auth.session("ada@example.com", "s3cret-pass").await;
    let access = token(&session, "access_token");
    let c = claims(&access);
    assert_eq!(c["aud"], "authenticated");
    assert_eq!(c["role"], "authenticated");
    assert_eq!(c["email"], "ada@example.com");
    assert_eq!(c["aal"], "aal1");
    assert_eq!(c["amr"][0]["method"], "password");
    assert_eq!(c["is_anonymous"], false);
    assert_eq!(c["sub"], session["user"]["id"]);
    assert_eq!(c["session_id"].as_str().unwrap().len(), 36);
    assert!(c["iss"].as_str().unwrap().ends_with("/auth/v1"));
    assert_eq!(session["token_type"], "bearer");
    assert_eq!(session["expires_in"], 3600);

    let me = auth.call(Method::GET, "/user", Some(&access), None).await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["email"], "ada@example.com");
    assert!(me.body["last_sign_in_at"].is_string());

    // Wrong password and unknown user are indistinguishable.
    let wrong = auth.sign_in("ada@example.com", "nope-nope").await;
    let unknown = auth.sign_in("nobody@example.com", "nope-nope").await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    assert_eq!(wrong.body, unknown.body);
    assert_eq!(wrong.code(), "invalid_credentials");
    let failed = auth
        .sql(
            "select count(*) from auth.audit_log_entries where payload->>'action' = 'login_failed'",
        )
        .await;
    assert_eq!(failed[0].get::<_, i64>(0), 2);

    // A REST request with the session's token hits RLS through auth.uid().
    let rest = reqwest::Client::new()
        .get(format!("{}/sovra/v1/whoami/db", auth.app.url))
        .header("apikey", &auth.app.anon_key)
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(rest["uid"], session["user"]["id"]);
    assert_eq!(rest["current_user"], "authenticated");
}

#[tokio::test]
async fn signup_refusals_and_repeated_signups() {
    let auth = Auth::new().await;
    let cases = [
        (
            json!({"email": "x@example.com"}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"email": "x@example.com", "password": "abc"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "weak_password",
        ),
        (
            json!({"email": "not-an-email", "password": "abcdefg"}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({"email": "x@example.com", "phone": "15551234567", "password": "abcdefg"}),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            json!({}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "anonymous_provider_disabled",
        ),
    ];
    for (body, status, code) in cases {
        let reply = auth.post("/signup", body.clone()).await;
        assert_eq!(
            (reply.status, reply.code()),
            (status, code),
            "{body}: {:?}",
            reply.body
        );
    }
    let weak = auth
        .post(
            "/signup",
            json!({"email": "x@example.com", "password": "abc"}),
        )
        .await;
    assert_eq!(weak.body["weak_password"]["reasons"], json!(["length"]));
    let bad_json = auth
        .http
        .post(format!("{}/auth/v1/signup", auth.app.url))
        .header("apikey", &auth.app.anon_key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        bad_json.json::<Value>().await.unwrap()["error_code"],
        "bad_json"
    );

    // A confirmed address signing up again gets a user-shaped answer that
    // reveals nothing (confirmation on).
    auth.user("taken@example.com", "password1").await;
    let repeat = auth
        .post(
            "/signup",
            json!({"email": "taken@example.com", "password": "password2"}),
        )
        .await;
    assert_eq!(repeat.status, StatusCode::OK);
    assert_eq!(repeat.body["identities"], json!([]));
    assert_eq!(auth.mail_count("taken@example.com").await, 0);

    // The API version header selects the 2024-01-01 error shape.
    let reply = auth
        .http
        .post(format!(
            "{}/auth/v1/token?grant_type=password",
            auth.app.url
        ))
        .header("apikey", &auth.app.anon_key)
        .header("x-supabase-api-version", "2024-01-01")
        .json(&json!({"email": "taken@example.com", "password": "wrong-one"}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.headers()["x-supabase-api-version"], "2024-01-01");
    assert_eq!(reply.headers()["x-sb-error-code"], "invalid_credentials");
    assert_eq!(
        reply.json::<Value>().await.unwrap(),
        json!({"code": "invalid_credentials", "message": "Invalid login credentials"})
    );

    // Unknown grant, missing refresh token (OAuth shape), bad API key.
    let grant = auth.post("/token?grant_type=magic", json!({})).await;
    assert_eq!(grant.code(), "invalid_credentials");
    let missing = auth
        .post("/token?grant_type=refresh_token", json!({}))
        .await;
    assert_eq!(
        missing.body,
        json!({"error": "invalid_request", "error_description": "refresh_token required"})
    );
    let bad_key = auth
        .http
        .get(format!("{}/auth/v1/settings", auth.app.url))
        .header("apikey", "not-a-key")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_key.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn autoconfirm_signup_returns_a_session_and_refuses_repeats() {
    let auth = Auth::with(config(|c| c.auth.email_autoconfirm = true)).await;
    let reply = auth
        .post(
            "/signup",
            json!({"email": "bo@example.com", "password": "password1"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert!(reply.body["access_token"].is_string());
    assert!(reply.body["refresh_token"].as_str().unwrap().len() >= 40);
    assert!(reply.body["user"]["email_confirmed_at"].is_string());
    let again = auth
        .post(
            "/signup",
            json!({"email": "bo@example.com", "password": "password1"}),
        )
        .await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(again.code(), "user_already_exists");
    let settings = auth.call(Method::GET, "/settings", None, None).await;
    assert_eq!(settings.body["mailer_autoconfirm"], true);
    assert_eq!(settings.body["external"]["email"], true);
    let health = auth.call(Method::GET, "/health", None, None).await;
    assert_eq!(health.body["name"], "GoTrue");
}

#[tokio::test]
async fn refresh_tokens_rotate_and_reuse_revokes_the_session() {
    let auth = Auth::new().await;
    auth.user("rot@example.com", "password1").await;
    let session = auth.session("rot@example.com", "password1").await;
    let first = token(&session, "refresh_token");
    // Only a hash is stored.
    let stored = auth.sql("select token from auth.refresh_tokens").await;
    assert!(stored.iter().all(|r| r.get::<_, String>(0) != first));

    let refreshed = auth
        .post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": first}),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{:?}", refreshed.body);
    let second = token(&refreshed.body, "refresh_token");
    assert_ne!(first, second);
    assert_eq!(
        claims(&token(&refreshed.body, "access_token"))["session_id"],
        claims(&token(&session, "access_token"))["session_id"]
    );
    // Within the reuse interval the old token still works (a lost response,
    // a second tab).
    let retry = auth
        .post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": first}),
        )
        .await;
    assert_eq!(retry.status, StatusCode::OK, "{:?}", retry.body);

    // Later, reusing it revokes the whole session.
    auth.sql(
        "update auth.refresh_tokens set updated_at = now() - interval '1 minute' where revoked",
    )
    .await;
    let reuse = auth
        .post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": first}),
        )
        .await;
    assert_eq!(reuse.status, StatusCode::BAD_REQUEST);
    assert_eq!(reuse.code(), "refresh_token_already_used");
    let after = auth
        .post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": second}),
        )
        .await;
    assert_eq!(after.status, StatusCode::BAD_REQUEST);
    let me = auth
        .call(
            Method::GET,
            "/user",
            Some(&token(&refreshed.body, "access_token")),
            None,
        )
        .await;
    assert_eq!(me.status, StatusCode::FORBIDDEN);
    assert_eq!(me.code(), "session_not_found");
    let revoked = auth
        .sql("select count(*) from auth.audit_log_entries where payload->>'action' = 'token_revoked'")
        .await;
    assert_eq!(revoked[0].get::<_, i64>(0), 1);

    let unknown = auth
        .post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": "nope"}),
        )
        .await;
    assert_eq!(unknown.code(), "refresh_token_not_found");
}

#[tokio::test]
async fn concurrent_refreshes_of_one_token_both_succeed() {
    let auth = Auth::new().await;
    auth.user("tabs@example.com", "password1").await;
    let session = auth.session("tabs@example.com", "password1").await;
    let refresh = token(&session, "refresh_token");
    let body = json!({"refresh_token": refresh});
    let (a, b) = tokio::join!(
        auth.post("/token?grant_type=refresh_token", body.clone()),
        auth.post("/token?grant_type=refresh_token", body.clone())
    );
    assert_eq!(
        (a.status, b.status),
        (StatusCode::OK, StatusCode::OK),
        "{:?} {:?}",
        a.body,
        b.body
    );
}

#[tokio::test]
async fn sessions_expire_by_timebox() {
    let auth = Auth::with(config(|c| c.auth.session_timebox = 3600)).await;
    auth.user("tb@example.com", "password1").await;
    let session = auth.session("tb@example.com", "password1").await;
    auth.sql("update auth.sessions set not_after = now() - interval '1 second'")
        .await;
    let reply = auth
        .post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": token(&session, "refresh_token")}),
        )
        .await;
    assert_eq!(reply.code(), "session_expired");
}

#[tokio::test]
async fn user_endpoint_refuses_missing_forged_and_expired_tokens() {
    let auth = Auth::new().await;
    let user = auth.user("tok@example.com", "password1").await;
    let none = auth.call(Method::GET, "/user", None, None).await;
    assert_eq!(
        (none.status, none.code()),
        (StatusCode::UNAUTHORIZED, "no_authorization")
    );
    let session = auth.session("tok@example.com", "password1").await;
    let access = token(&session, "access_token");
    let mut forged = access.clone();
    forged.pop();
    forged.push(if access.ends_with('A') { 'B' } else { 'A' });
    let reply = auth.call(Method::GET, "/user", Some(&forged), None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "bad_jwt")
    );
    let mut expired = TestApp::user_claims(user["id"].as_str().unwrap());
    expired.insert("exp".into(), json!(TestApp::now() - 3600));
    let expired = auth.app.sign(Value::Object(expired));
    let reply = auth.call(Method::GET, "/user", Some(&expired), None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "bad_jwt")
    );
    let service = auth.app.service_role_key.clone();
    let reply = auth.call(Method::GET, "/user", Some(&service), None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "bad_jwt")
    );
    let ghost = auth.app.sign(Value::Object(TestApp::user_claims(
        "00000000-0000-0000-0000-0000000000ff",
    )));
    let reply = auth.call(Method::GET, "/user", Some(&ghost), None).await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "user_not_found")
    );
    // A user token is not an admin token.
    let reply = auth
        .call(Method::GET, "/admin/users", Some(&access), None)
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::FORBIDDEN, "not_admin")
    );
}

#[tokio::test]
async fn logout_scopes() {
    let auth = Auth::new().await;
    auth.user("out@example.com", "password1").await;
    let one = auth.session("out@example.com", "password1").await;
    let two = auth.session("out@example.com", "password1").await;
    let three = auth.session("out@example.com", "password1").await;
    let bad = auth
        .call(
            Method::POST,
            "/logout?scope=everything",
            Some(&token(&one, "access_token")),
            None,
        )
        .await;
    assert_eq!(bad.code(), "validation_failed");
    let local = auth
        .call(
            Method::POST,
            "/logout?scope=local",
            Some(&token(&one, "access_token")),
            None,
        )
        .await;
    assert_eq!(local.status, StatusCode::NO_CONTENT);
    let gone = auth
        .call(
            Method::GET,
            "/user",
            Some(&token(&one, "access_token")),
            None,
        )
        .await;
    assert_eq!(gone.code(), "session_not_found");
    let alive = auth
        .call(
            Method::GET,
            "/user",
            Some(&token(&two, "access_token")),
            None,
        )
        .await;
    assert_eq!(alive.status, StatusCode::OK);
    let others = auth
        .call(
            Method::POST,
            "/logout?scope=others",
            Some(&token(&two, "access_token")),
            None,
        )
        .await;
    assert_eq!(others.status, StatusCode::NO_CONTENT);
    let gone = auth
        .call(
            Method::GET,
            "/user",
            Some(&token(&three, "access_token")),
            None,
        )
        .await;
    assert_eq!(gone.code(), "session_not_found");
    let listed = auth
        .call(
            Method::GET,
            "/sessions",
            Some(&token(&two, "access_token")),
            None,
        )
        .await;
    assert_eq!(listed.body.as_array().unwrap().len(), 1);
    assert_eq!(listed.body[0]["current"], true);
    let global = auth
        .call(
            Method::POST,
            "/logout",
            Some(&token(&two, "access_token")),
            None,
        )
        .await;
    assert_eq!(global.status, StatusCode::NO_CONTENT);
    let refresh = auth
        .post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": token(&two, "refresh_token")}),
        )
        .await;
    assert_eq!(refresh.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn users_list_and_revoke_their_own_sessions() {
    let auth = Auth::new().await;
    auth.user("s1@example.com", "password1").await;
    auth.user("s2@example.com", "password1").await;
    let a1 = auth.session("s1@example.com", "password1").await;
    let a2 = auth.session("s1@example.com", "password1").await;
    let b = auth.session("s2@example.com", "password1").await;
    let list = auth
        .call(
            Method::GET,
            "/sessions",
            Some(&token(&a1, "access_token")),
            None,
        )
        .await;
    assert_eq!(list.body.as_array().unwrap().len(), 2);
    let b_session = claims(&token(&b, "access_token"))["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another user's session is not found.
    let reply = auth
        .call(
            Method::DELETE,
            &format!("/sessions/{b_session}"),
            Some(&token(&a1, "access_token")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let a2_session = claims(&token(&a2, "access_token"))["session_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let reply = auth
        .call(
            Method::DELETE,
            &format!("/sessions/{a2_session}"),
            Some(&token(&a1, "access_token")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let gone = auth
        .call(
            Method::GET,
            "/user",
            Some(&token(&a2, "access_token")),
            None,
        )
        .await;
    assert_eq!(gone.code(), "session_not_found");
}

#[tokio::test]
async fn update_user_metadata_and_password() {
    let auth = Auth::new().await;
    auth.user("up@example.com", "password1").await;
    let session = auth.session("up@example.com", "password1").await;
    let other = auth.session("up@example.com", "password1").await;
    let access = token(&session, "access_token");
    let reply = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"data": {"a": 1, "b": 2}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"data": {"a": null, "c": 3}})),
        )
        .await;
    assert_eq!(reply.body["user_metadata"]["b"], 2);
    assert_eq!(reply.body["user_metadata"]["c"], 3);
    assert!(reply.body["user_metadata"].get("a").is_none());
    let admin_only = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"app_metadata": {"role": "admin"}})),
        )
        .await;
    assert_eq!(
        (admin_only.status, admin_only.code()),
        (StatusCode::FORBIDDEN, "not_admin")
    );
    let same = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"password": "password1"})),
        )
        .await;
    assert_eq!(same.code(), "same_password");
    let weak = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"password": "x"})),
        )
        .await;
    assert_eq!(weak.code(), "weak_password");
    let changed = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"password": "password2"})),
        )
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{:?}", changed.body);
    assert_eq!(
        auth.sign_in("up@example.com", "password1").await.code(),
        "invalid_credentials"
    );
    auth.session("up@example.com", "password2").await;
    // Other sessions ended with the old password; this one lives on.
    let gone = auth
        .call(
            Method::GET,
            "/user",
            Some(&token(&other, "access_token")),
            None,
        )
        .await;
    assert_eq!(gone.code(), "session_not_found");
    let still = auth.call(Method::GET, "/user", Some(&access), None).await;
    assert_eq!(still.status, StatusCode::OK);
    let audit = auth
        .sql("select count(*) from auth.audit_log_entries where payload->>'action' = 'user_updated_password'")
        .await;
    assert_eq!(audit[0].get::<_, i64>(0), 1);
}

#[tokio::test]
async fn secure_password_change_needs_a_reauthentication_code() {
    let auth = Auth::with(config(|c| {
        c.auth.secure_password_change = true;
        c.auth.email_max_frequency = 0;
    }))
    .await;
    auth.user("sec@example.com", "password1").await;
    let session = auth.session("sec@example.com", "password1").await;
    let access = token(&session, "access_token");
    auth.sql("update auth.sessions set created_at = now() - interval '2 days'")
        .await;
    let needs = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"password": "password2"})),
        )
        .await;
    assert_eq!(needs.code(), "reauthentication_needed");
    let sent = auth
        .call(Method::GET, "/reauthenticate", Some(&access), None)
        .await;
    assert_eq!(sent.status, StatusCode::OK);
    let mail = auth.mail("sec@example.com").await;
    assert_eq!(mail["kind"], "reauthentication");
    let nonce = mail["body"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    let bad = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"password": "password2", "nonce": "000000"})),
        )
        .await;
    assert_eq!(bad.code(), "reauthentication_not_valid");
    let ok = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"password": "password2", "nonce": nonce})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
}

#[tokio::test]
async fn email_change_is_confirmed_on_both_addresses() {
    let auth = Auth::with(config(|c| c.auth.email_max_frequency = 0)).await;
    auth.user("old@example.com", "password1").await;
    auth.user("busy@example.com", "password1").await;
    let session = auth.session("old@example.com", "password1").await;
    let access = token(&session, "access_token");
    let taken = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"email": "busy@example.com"})),
        )
        .await;
    assert_eq!(taken.code(), "email_exists");
    let reply = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"email": "new@example.com"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["new_email"], "new@example.com");
    assert_eq!(reply.body["email"], "old@example.com");
    let to_new = code_in(&auth.mail("new@example.com").await);
    let to_old = code_in(&auth.mail("old@example.com").await);
    let first = auth
        .post(
            "/verify",
            json!({"type": "email_change", "email": "new@example.com", "token": to_new}),
        )
        .await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert!(first.body["msg"].as_str().unwrap().contains("other email"));
    let second = auth
        .post(
            "/verify",
            json!({"type": "email_change", "email": "old@example.com", "token": to_old}),
        )
        .await;
    assert_eq!(second.status, StatusCode::OK, "{:?}", second.body);
    assert_eq!(second.body["user"]["email"], "new@example.com");
    auth.session("new@example.com", "password1").await;
}

#[tokio::test]
async fn imported_bcrypt_hashes_sign_in_and_are_rehashed() {
    let auth = Auth::new().await;
    // What a Supabase seed or a pg_dump of auth.users contains.
    auth.sql(
        "insert into auth.users (instance_id, id, aud, role, email, encrypted_password,
           email_confirmed_at, raw_app_meta_data, raw_user_meta_data, created_at, updated_at,
           confirmation_token, recovery_token, email_change_token_new, email_change)
         values ('00000000-0000-0000-0000-000000000000', '11111111-1111-1111-1111-111111111111',
           'authenticated', 'authenticated', 'seed@example.com', crypt('password123', gen_salt('bf')),
           now(), '{\"provider\":\"email\",\"providers\":[\"email\"]}', '{}', now(), now(), '', '', '', '')",
    )
    .await;
    assert_eq!(
        auth.sign_in("seed@example.com", "wrong").await.code(),
        "invalid_credentials"
    );
    let session = auth.session("seed@example.com", "password123").await;
    assert_eq!(
        session["user"]["id"],
        "11111111-1111-1111-1111-111111111111"
    );
    let hash = auth
        .sql("select encrypted_password from auth.users where email = 'seed@example.com'")
        .await;
    assert!(hash[0].get::<_, String>(0).starts_with("$argon2id$"));
    auth.session("seed@example.com", "password123").await;
}

#[tokio::test]
async fn banned_users_cannot_sign_in_or_refresh() {
    let auth = Auth::new().await;
    let user = auth.user("ban@example.com", "password1").await;
    let session = auth.session("ban@example.com", "password1").await;
    let id = user["id"].as_str().unwrap();
    let banned = auth
        .admin(
            Method::PUT,
            &format!("/admin/users/{id}"),
            Some(json!({"ban_duration": "24h"})),
        )
        .await;
    assert_eq!(banned.status, StatusCode::OK, "{:?}", banned.body);
    assert!(banned.body["banned_until"].is_string());
    assert_eq!(
        auth.sign_in("ban@example.com", "password1").await.code(),
        "user_banned"
    );
    let refresh = auth
        .post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": token(&session, "refresh_token")}),
        )
        .await;
    assert_eq!(refresh.status, StatusCode::BAD_REQUEST);
    let me = auth
        .call(
            Method::GET,
            "/user",
            Some(&token(&session, "access_token")),
            None,
        )
        .await;
    assert_eq!(me.status, StatusCode::FORBIDDEN);
    let bad = auth
        .admin(
            Method::PUT,
            &format!("/admin/users/{id}"),
            Some(json!({"ban_duration": "forever"})),
        )
        .await;
    assert_eq!(bad.code(), "validation_failed");
    auth.admin(
        Method::PUT,
        &format!("/admin/users/{id}"),
        Some(json!({"ban_duration": "none"})),
    )
    .await;
    auth.session("ban@example.com", "password1").await;
}

#[tokio::test]
async fn rate_limits_answer_429_with_the_client_codes() {
    let auth = Auth::with(config(|c| {
        c.auth.rate_limit.sign_in = 3;
        c.auth.rate_limit.email_sent = 1;
        c.auth.email_max_frequency = 0;
    }))
    .await;
    for _ in 0..3 {
        assert_eq!(
            auth.sign_in("rl@example.com", "password1").await.code(),
            "invalid_credentials"
        );
    }
    let limited = auth.sign_in("rl@example.com", "password1").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.code(), "over_request_rate_limit");
    assert!(limited.headers.contains_key("retry-after"));

    auth.user("mail@example.com", "password1").await;
    assert_eq!(
        auth.post("/recover", json!({"email": "mail@example.com"}))
            .await
            .status,
        StatusCode::OK
    );
    let second = auth
        .post(
            "/otp",
            json!({"email": "mail@example.com", "create_user": false}),
        )
        .await;
    assert_eq!(second.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.code(), "over_email_send_rate_limit");
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let untrusted = Auth::with(config(|c| c.auth.rate_limit.sign_in = 2)).await;
    for n in 0..3 {
        let reply = untrusted
            .http
            .post(format!(
                "{}/auth/v1/token?grant_type=password",
                untrusted.app.url
            ))
            .header("apikey", &untrusted.app.anon_key)
            .header("x-forwarded-for", format!("203.0.113.{n}"))
            .json(&json!({"email": format!("u{n}@example.com"), "password": "x"}))
            .send()
            .await
            .unwrap();
        // Spoofed addresses do not escape the limit of the real peer.
        assert_eq!(reply.status() == StatusCode::TOO_MANY_REQUESTS, n == 2);
    }
    let trusted = Auth::with(config(|c| {
        c.auth.rate_limit.sign_in = 2;
        c.auth.trusted_proxies = "127.0.0.1".into();
    }))
    .await;
    for n in 0..3 {
        let reply = trusted
            .http
            .post(format!(
                "{}/auth/v1/token?grant_type=password",
                trusted.app.url
            ))
            .header("apikey", &trusted.app.anon_key)
            .header("x-forwarded-for", format!("203.0.113.{n}"))
            .json(&json!({"email": format!("u{n}@example.com"), "password": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    }
    let ips = trusted
        .sql("select distinct ip_address from auth.audit_log_entries")
        .await;
    assert_eq!(ips.len(), 3);
}

#[tokio::test]
async fn magic_links_otp_and_recovery() {
    let auth = Auth::with(config(|c| {
        c.auth.email_max_frequency = 0;
        c.auth.redirect_urls = Some("http://app.test/**".into());
    }))
    .await;
    // Unknown address with create_user false.
    let refused = auth
        .post(
            "/otp",
            json!({"email": "ghost@example.com", "create_user": false}),
        )
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "otp_disabled")
    );
    // New user by OTP, confirmed by the code.
    let sent = auth.post("/otp", json!({"email": "otp@example.com"})).await;
    assert_eq!(sent.status, StatusCode::OK, "{:?}", sent.body);
    let code = code_in(&auth.mail("otp@example.com").await);
    let session = auth
        .post(
            "/verify",
            json!({"type": "email", "email": "otp@example.com", "token": code}),
        )
        .await;
    assert_eq!(session.status, StatusCode::OK, "{:?}", session.body);
    assert_eq!(
        claims(&token(&session.body, "access_token"))["amr"][0]["method"],
        "otp"
    );
    // Existing user: a magic link, followed as a browser would.
    auth.post("/otp", json!({"email": "otp@example.com"})).await;
    let mail = auth.mail("otp@example.com").await;
    assert_eq!(mail["kind"], "magic_link");
    let link = link_in(&mail);
    assert!(link.contains("/auth/v1/verify?token="));
    let followed = auth
        .http
        .get(redirect(&link, "http://app.test/done"))
        .send()
        .await
        .unwrap();
    assert_eq!(followed.status(), StatusCode::SEE_OTHER);
    let location = followed.headers()["location"].to_str().unwrap();
    assert!(
        location.starts_with("http://app.test/done#access_token="),
        "{location}"
    );
    assert!(location.contains("&refresh_token=") && location.contains("type=magiclink"));
    // The same link again: an error in the fragment.
    let again = auth.http.get(&link).send().await.unwrap();
    let location = again.headers()["location"].to_str().unwrap();
    assert!(
        location.contains("#error=access_denied&error_code=otp_expired"),
        "{location}"
    );
    // A redirect elsewhere falls back to the site URL.
    auth.post("/otp", json!({"email": "otp@example.com"})).await;
    let mail = auth.mail("otp@example.com").await;
    let link = link_in(&mail);
    let evil = auth
        .http
        .get(redirect(&link, "https://evil.test/"))
        .send()
        .await
        .unwrap();
    let location = evil.headers()["location"].to_str().unwrap();
    assert!(location.starts_with(&auth.app.url), "{location}");

    // Recovery: unknown addresses get the same answer and no mail.
    let unknown = auth
        .post("/recover", json!({"email": "nobody@example.com"}))
        .await;
    assert_eq!(
        (unknown.status, unknown.body.clone()),
        (StatusCode::OK, json!({}))
    );
    assert_eq!(auth.mail_count("nobody@example.com").await, 0);
    auth.user("lost@example.com", "password1").await;
    auth.post("/recover", json!({"email": "lost@example.com"}))
        .await;
    let mail = auth.mail("lost@example.com").await;
    assert_eq!(mail["kind"], "recovery");
    let session = auth
        .post(
            "/verify",
            json!({"type": "recovery", "email": "lost@example.com", "token": code_in(&mail)}),
        )
        .await;
    assert_eq!(session.status, StatusCode::OK);
    let access = token(&session.body, "access_token");
    let reset = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"password": "password9"})),
        )
        .await;
    assert_eq!(reset.status, StatusCode::OK);
    auth.session("lost@example.com", "password9").await;
    let missing_type = auth
        .post("/verify", json!({"token": "1", "email": "a@b.co"}))
        .await;
    assert_eq!(missing_type.code(), "validation_failed");
    let resend = auth.post("/resend", json!({"email": "a@b.co"})).await;
    assert_eq!(resend.code(), "validation_failed");
}

#[tokio::test]
async fn pkce_flow_through_the_link_and_the_code_exchange() {
    let auth = Auth::new().await;
    let verifier = "a".repeat(50);
    let challenge = sovra_auth::crypto::pkce_s256(&verifier);
    let reply = auth
        .post(
            "/signup",
            json!({"email": "pkce@example.com", "password": "password1",
                   "code_challenge": challenge, "code_challenge_method": "s256"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let mail = auth.mail("pkce@example.com").await;
    let link = link_in(&mail);
    assert!(link.contains("token=pkce_"));
    let followed = auth.http.get(&link).send().await.unwrap();
    let location = followed.headers()["location"].to_str().unwrap().to_owned();
    let code = location.split("code=").nth(1).expect("a code").to_owned();
    let wrong = auth
        .post(
            "/token?grant_type=pkce",
            json!({"auth_code": code, "code_verifier": "b".repeat(50)}),
        )
        .await;
    assert_eq!(wrong.code(), "bad_code_verifier");
    // The flow state is consumed by the failed attempt too: start again.
    auth.sql("update auth.users set confirmation_sent_at = null")
        .await;
    let reply = auth
        .post(
            "/otp",
            json!({"email": "pkce@example.com", "code_challenge": challenge, "code_challenge_method": "s256"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let mail = auth.mail("pkce@example.com").await;
    let link = link_in(&mail);
    let followed = auth.http.get(&link).send().await.unwrap();
    let location = followed.headers()["location"].to_str().unwrap().to_owned();
    let code = location.split("code=").nth(1).expect("a code").to_owned();
    let session = auth
        .post(
            "/token?grant_type=pkce",
            json!({"auth_code": code, "code_verifier": verifier}),
        )
        .await;
    assert_eq!(session.status, StatusCode::OK, "{:?}", session.body);
    assert!(session.body["access_token"].is_string());
    let replay = auth
        .post(
            "/token?grant_type=pkce",
            json!({"auth_code": code, "code_verifier": verifier}),
        )
        .await;
    assert_eq!(replay.code(), "flow_state_not_found");
}

#[tokio::test]
async fn anonymous_sign_in_then_link_an_email() {
    let auth = Auth::with(config(|c| {
        c.auth.anonymous_users = true;
        c.auth.email_max_frequency = 0;
    }))
    .await;
    let anon = auth
        .post("/signup", json!({"data": {"theme": "dark"}}))
        .await;
    assert_eq!(anon.status, StatusCode::OK, "{:?}", anon.body);
    assert_eq!(anon.body["user"]["is_anonymous"], true);
    assert_eq!(anon.body["user"]["identities"], json!([]));
    let access = token(&anon.body, "access_token");
    assert_eq!(claims(&access)["is_anonymous"], true);
    assert_eq!(claims(&access)["amr"][0]["method"], "anonymous");
    // MFA is not for anonymous users, nor is a password without an email.
    let enroll = auth
        .call(
            Method::POST,
            "/factors",
            Some(&access),
            Some(json!({"factor_type": "totp"})),
        )
        .await;
    assert_eq!(enroll.status, StatusCode::FORBIDDEN);
    let pw = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"password": "password1"})),
        )
        .await;
    assert_eq!(pw.code(), "validation_failed");
    let linked = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"email": "perm@example.com"})),
        )
        .await;
    assert_eq!(linked.status, StatusCode::OK, "{:?}", linked.body);
    let code = code_in(&auth.mail("perm@example.com").await);
    let verified = auth
        .post(
            "/verify",
            json!({"type": "email_change", "email": "perm@example.com", "token": code}),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
    assert_eq!(verified.body["user"]["is_anonymous"], false);
    assert_eq!(verified.body["user"]["email"], "perm@example.com");
    assert_eq!(verified.body["user"]["user_metadata"]["theme"], "dark");
    assert_eq!(
        verified.body["user"]["app_metadata"]["providers"],
        json!(["email"])
    );
}

#[tokio::test]
async fn mfa_totp_enroll_challenge_verify_unenroll() {
    let auth = Auth::new().await;
    auth.user("mfa@example.com", "password1").await;
    let session = auth.session("mfa@example.com", "password1").await;
    let access = token(&session, "access_token");
    let enrolled = auth
        .call(
            Method::POST,
            "/factors",
            Some(&access),
            Some(json!({"factor_type": "totp", "friendly_name": "phone"})),
        )
        .await;
    assert_eq!(enrolled.status, StatusCode::OK, "{:?}", enrolled.body);
    assert!(
        enrolled.body["totp"]["qr_code"]
            .as_str()
            .unwrap()
            .contains("<svg")
    );
    assert!(
        enrolled.body["totp"]["uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    let dup = auth
        .call(
            Method::POST,
            "/factors",
            Some(&access),
            Some(json!({"factor_type": "totp", "friendly_name": "phone"})),
        )
        .await;
    assert_eq!(dup.code(), "mfa_factor_name_conflict");
    let factor = enrolled.body["id"].as_str().unwrap().to_owned();
    let secret =
        sovra_auth::crypto::base32_decode(enrolled.body["totp"]["secret"].as_str().unwrap())
            .unwrap();

    let challenge = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/challenge"),
            Some(&access),
            Some(json!({})),
        )
        .await;
    assert_eq!(challenge.status, StatusCode::OK, "{:?}", challenge.body);
    let challenge_id = challenge.body["id"].as_str().unwrap().to_owned();
    let wrong = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/verify"),
            Some(&access),
            Some(json!({"challenge_id": challenge_id, "code": "000000"})),
        )
        .await;
    // (A random secret makes 000000 right one time in a million.)
    assert_eq!(wrong.code(), "mfa_verification_failed");
    let now = u64::try_from(TestApp::now()).unwrap();
    let code = sovra_auth::crypto::totp_at(&secret, now / 30);
    let verified = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/verify"),
            Some(&access),
            Some(json!({"challenge_id": challenge_id, "code": code})),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
    let aal2 = token(&verified.body, "access_token");
    let c = claims(&aal2);
    assert_eq!(c["aal"], "aal2");
    let methods: Vec<&str> = c["amr"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["method"].as_str().unwrap())
        .collect();
    assert!(
        methods.contains(&"totp") && methods.contains(&"password"),
        "{methods:?}"
    );
    // The challenge is used up.
    let replay = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/verify"),
            Some(&aal2),
            Some(json!({"challenge_id": challenge_id, "code": code})),
        )
        .await;
    assert_eq!(replay.status, StatusCode::NOT_FOUND);
    let me = auth.call(Method::GET, "/user", Some(&aal2), None).await;
    assert_eq!(me.body["factors"][0]["status"], "verified");
    // Refreshing keeps aal2; the pre-MFA refresh token cannot.
    let refreshed = auth
        .post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": token(&verified.body, "refresh_token")}),
        )
        .await;
    assert_eq!(
        claims(&token(&refreshed.body, "access_token"))["aal"],
        "aal2"
    );
    // A new aal1 session may not unenroll or change the password.
    let aal1 = token(
        &auth.session("mfa@example.com", "password1").await,
        "access_token",
    );
    let refused = auth
        .call(
            Method::DELETE,
            &format!("/factors/{factor}"),
            Some(&aal1),
            None,
        )
        .await;
    assert_eq!(refused.code(), "insufficient_aal");
    let pw = auth
        .call(
            Method::PUT,
            "/user",
            Some(&aal1),
            Some(json!({"password": "password7"})),
        )
        .await;
    assert_eq!(pw.code(), "insufficient_aal");
    let enroll = auth
        .call(
            Method::POST,
            "/factors",
            Some(&aal1),
            Some(json!({"factor_type": "totp"})),
        )
        .await;
    assert_eq!(enroll.code(), "insufficient_aal");
    let aal2 = token(&refreshed.body, "access_token");
    let gone = auth
        .call(
            Method::DELETE,
            &format!("/factors/{factor}"),
            Some(&aal2),
            None,
        )
        .await;
    assert_eq!(gone.status, StatusCode::OK, "{:?}", gone.body);
    assert_eq!(gone.body["id"], factor);
    let missing = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/challenge"),
            Some(&aal2),
            Some(json!({})),
        )
        .await;
    assert_eq!(missing.code(), "mfa_factor_not_found");
    // The pre-MFA refresh token is dead, and presenting it ends the session.
    let old = auth
        .post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": token(&session, "refresh_token")}),
        )
        .await;
    assert_eq!(old.code(), "refresh_token_already_used");
    let ended = auth.call(Method::GET, "/user", Some(&aal2), None).await;
    assert_eq!(ended.code(), "session_not_found");
}

#[tokio::test]
async fn mfa_challenges_expire() {
    let auth = Auth::new().await;
    auth.user("exp@example.com", "password1").await;
    let access = token(
        &auth.session("exp@example.com", "password1").await,
        "access_token",
    );
    let factor = auth
        .call(
            Method::POST,
            "/factors",
            Some(&access),
            Some(json!({"factor_type": "totp"})),
        )
        .await;
    let id = factor.body["id"].as_str().unwrap().to_owned();
    let challenge = auth
        .call(
            Method::POST,
            &format!("/factors/{id}/challenge"),
            Some(&access),
            None,
        )
        .await;
    auth.sql("update auth.mfa_challenges set created_at = now() - interval '10 minutes'")
        .await;
    let reply = auth
        .call(
            Method::POST,
            &format!("/factors/{id}/verify"),
            Some(&access),
            Some(json!({"challenge_id": challenge.body["id"], "code": "123456"})),
        )
        .await;
    assert_eq!(reply.code(), "mfa_challenge_expired");
}

#[tokio::test]
async fn admin_users_crud_pagination_links_and_invites() {
    let auth = Auth::new().await;
    for n in 0..5 {
        auth.user(&format!("u{n}@example.com"), "password1").await;
    }
    let dup = auth
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"email": "u0@example.com", "password": "password1"})),
        )
        .await;
    assert_eq!(dup.code(), "email_exists");
    let none = auth
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"password": "password1"})),
        )
        .await;
    assert_eq!(none.status, StatusCode::BAD_REQUEST);
    let page = auth
        .admin(Method::GET, "/admin/users?page=2&per_page=2", None)
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body["users"].as_array().unwrap().len(), 2);
    assert_eq!(page.body["aud"], "authenticated");
    assert_eq!(page.headers["x-total-count"], "5");
    assert_eq!(
        page.headers["link"],
        "</admin/users?page=3&per_page=2>; rel=\"next\", </admin/users?page=3&per_page=2>; rel=\"last\""
    );
    let created = auth
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({
            "email": "meta@example.com", "password": "password1", "email_confirm": true,
            "user_metadata": {"a": 1}, "app_metadata": {"plan": "pro"}})),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert_eq!(created.body["app_metadata"]["plan"], "pro");
    assert_eq!(created.body["app_metadata"]["provider"], "email");
    let updated = auth
        .admin(
            Method::PUT,
            &format!("/admin/users/{id}"),
            Some(json!({"user_metadata": {"b": 2}, "app_metadata": {"plan": "team"}})),
        )
        .await;
    assert_eq!(updated.body["user_metadata"]["a"], 1);
    assert_eq!(updated.body["user_metadata"]["b"], 2);
    assert_eq!(updated.body["app_metadata"]["plan"], "team");
    let fetched = auth
        .admin(Method::GET, &format!("/admin/users/{id}"), None)
        .await;
    assert_eq!(fetched.body["email"], "meta@example.com");
    let missing = auth
        .admin(
            Method::GET,
            "/admin/users/00000000-0000-0000-0000-000000000000",
            None,
        )
        .await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::NOT_FOUND, "user_not_found")
    );
    // Soft delete keeps the row but forgets the person.
    let soft = auth
        .admin(
            Method::DELETE,
            &format!("/admin/users/{id}"),
            Some(json!({"should_soft_delete": true})),
        )
        .await;
    assert_eq!(soft.status, StatusCode::OK);
    let row = auth
        .sql(&format!(
            "select email, deleted_at is not null from auth.users where id = '{id}'"
        ))
        .await;
    assert_eq!(row[0].get::<_, Option<String>>(0), None);
    assert!(row[0].get::<_, bool>(1));
    assert_eq!(
        auth.sign_in("meta@example.com", "password1").await.code(),
        "invalid_credentials"
    );
    // Hard delete removes it; rows referencing it go with it.
    auth.sql("create table public.profiles (id uuid primary key references auth.users on delete cascade, bio text)").await;
    let u0 = auth
        .sql("select id::text from auth.users where email = 'u0@example.com'")
        .await;
    let u0: String = u0[0].get(0);
    auth.sql(&format!(
        "insert into public.profiles values ('{u0}', 'hi')"
    ))
    .await;
    let hard = auth
        .admin(
            Method::DELETE,
            &format!("/admin/users/{u0}"),
            Some(json!({})),
        )
        .await;
    assert_eq!(hard.status, StatusCode::OK, "{:?}", hard.body);
    assert!(
        auth.sql(&format!("select 1 from auth.users where id = '{u0}'"))
            .await
            .is_empty()
    );
    assert!(auth.sql("select 1 from public.profiles").await.is_empty());

    // Invite: a mail with a link; accepting it signs the user in.
    let invited = auth
        .admin(
            Method::POST,
            "/invite",
            Some(json!({"email": "guest@example.com"})),
        )
        .await;
    assert_eq!(invited.status, StatusCode::OK, "{:?}", invited.body);
    assert!(invited.body["invited_at"].is_string());
    let mail = auth.mail("guest@example.com").await;
    assert_eq!(mail["kind"], "invite");
    let link = link_in(&mail);
    let accepted = auth.http.get(&link).send().await.unwrap();
    let location = accepted.headers()["location"].to_str().unwrap();
    assert!(
        location.contains("#access_token=") && location.contains("type=invite"),
        "{location}"
    );
    let again = auth
        .admin(
            Method::POST,
            "/invite",
            Some(json!({"email": "guest@example.com"})),
        )
        .await;
    assert_eq!(again.code(), "email_exists");

    // Admin actions are audited; anon may not call them.
    let anon = auth.call(Method::GET, "/admin/users", None, None).await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    let deleted = auth
        .sql(
            "select count(*) from auth.audit_log_entries where payload->>'action' = 'user_deleted'",
        )
        .await;
    assert_eq!(deleted[0].get::<_, i64>(0), 2);
}

#[tokio::test]
async fn generate_link_for_every_type() {
    let auth = Auth::new().await;
    let signup = auth
        .admin(
            Method::POST,
            "/admin/generate_link",
            Some(json!({"type": "signup", "email": "gl@example.com", "password": "password1"})),
        )
        .await;
    assert_eq!(signup.status, StatusCode::OK, "{:?}", signup.body);
    assert_eq!(signup.body["verification_type"], "signup");
    assert!(
        signup.body["action_link"]
            .as_str()
            .unwrap()
            .contains("/auth/v1/verify?token=")
    );
    assert_eq!(signup.body["hashed_token"].as_str().unwrap().len(), 56);
    assert_eq!(
        auth.mail_count("gl@example.com").await,
        0,
        "generate_link sends nothing"
    );
    let session = auth
        .post(
            "/verify",
            json!({"type": "signup", "email": "gl@example.com", "token": signup.body["email_otp"]}),
        )
        .await;
    assert_eq!(session.status, StatusCode::OK, "{:?}", session.body);
    for kind in ["magiclink", "recovery"] {
        let link = auth
            .admin(
                Method::POST,
                "/admin/generate_link",
                Some(json!({"type": kind, "email": "gl@example.com"})),
            )
            .await;
        assert_eq!(link.status, StatusCode::OK);
        let verified = auth
            .post(
                "/verify",
                json!({"type": kind, "token_hash": link.body["hashed_token"]}),
            )
            .await;
        assert_eq!(
            verified.status,
            StatusCode::OK,
            "{kind}: {:?}",
            verified.body
        );
    }
    let change = auth
        .admin(Method::POST, "/admin/generate_link", Some(json!({"type": "email_change_new", "email": "gl@example.com", "new_email": "gl2@example.com"})))
        .await;
    assert_eq!(change.status, StatusCode::OK, "{:?}", change.body);
    let unknown = auth
        .admin(
            Method::POST,
            "/admin/generate_link",
            Some(json!({"type": "magiclink", "email": "nope@example.com"})),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::NOT_FOUND, "user_not_found")
    );
    let bad = auth
        .admin(
            Method::POST,
            "/admin/generate_link",
            Some(json!({"type": "bogus", "email": "gl@example.com"})),
        )
        .await;
    assert_eq!(bad.code(), "validation_failed");
    let invite = auth
        .admin(
            Method::POST,
            "/admin/generate_link",
            Some(json!({"type": "invite", "email": "inv@example.com"})),
        )
        .await;
    assert_eq!(invite.status, StatusCode::OK);
    let user_token = token(&session.body, "access_token");
    let refused = auth
        .call(
            Method::POST,
            "/admin/generate_link",
            Some(&user_token),
            Some(json!({"type": "magiclink", "email": "gl@example.com"})),
        )
        .await;
    assert_eq!(refused.code(), "not_admin");
}

#[tokio::test]
async fn invite_codes_gate_sign_up() {
    let auth = Auth::with(config(|c| {
        c.auth.invite_only = true;
        c.auth.email_autoconfirm = true;
    }))
    .await;
    let without = auth
        .post(
            "/signup",
            json!({"email": "i1@example.com", "password": "password1"}),
        )
        .await;
    assert_eq!(without.status, StatusCode::FORBIDDEN);
    let made = auth
        .admin(
            Method::POST,
            "/admin/invite_codes",
            Some(json!({"expires_in": 3600})),
        )
        .await;
    assert_eq!(made.status, StatusCode::OK, "{:?}", made.body);
    let code = made.body["code"].as_str().unwrap().to_owned();
    let stored = auth.sql("select code_hash from sovra.invite_codes").await;
    assert_ne!(stored[0].get::<_, String>(0), code);
    let with = auth
        .post("/signup", json!({"email": "i1@example.com", "password": "password1", "data": {"invite_code": code}}))
        .await;
    assert_eq!(with.status, StatusCode::OK, "{:?}", with.body);
    assert!(
        with.body["user"]["user_metadata"]
            .get("invite_code")
            .is_none()
    );
    let reused = auth
        .post("/signup", json!({"email": "i2@example.com", "password": "password1", "data": {"invite_code": code}}))
        .await;
    assert_eq!(reused.status, StatusCode::FORBIDDEN);
    let expired = auth
        .admin(
            Method::POST,
            "/admin/invite_codes",
            Some(json!({"expires_in": 3600})),
        )
        .await;
    auth.sql("update sovra.invite_codes set expires_at = now() - interval '1 second' where used_at is null").await;
    let late = auth
        .post("/signup", json!({"email": "i3@example.com", "password": "password1", "invite_code": expired.body["code"]}))
        .await;
    assert_eq!(late.status, StatusCode::FORBIDDEN);
    let listed = auth.admin(Method::GET, "/admin/invite_codes", None).await;
    assert_eq!(listed.body.as_array().unwrap().len(), 2);
    assert!(listed.body[0].get("code").is_none());
    let otp = auth.post("/otp", json!({"email": "i4@example.com"})).await;
    assert_eq!(otp.code(), "otp_disabled");
}

#[tokio::test]
async fn api_keys_for_machines() {
    let auth = Auth::new().await;
    let made = auth
        .admin(
            Method::POST,
            "/admin/api_keys",
            Some(json!({"name": "etl", "role": "authenticated"})),
        )
        .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.body);
    let key = made.body["key"].as_str().unwrap().to_owned();
    assert!(key.starts_with("sovra_sk_"));
    let bad_role = auth
        .admin(
            Method::POST,
            "/admin/api_keys",
            Some(json!({"name": "x", "role": "postgres"})),
        )
        .await;
    assert_eq!(bad_role.code(), "validation_failed");
    let whoami = |key: String| {
        let url = format!("{}/sovra/v1/whoami", auth.app.url);
        async move {
            reqwest::Client::new()
                .get(url)
                .header("apikey", key)
                .send()
                .await
                .unwrap()
        }
    };
    let reply = whoami(key.clone()).await;
    assert_eq!(reply.status(), StatusCode::OK);
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["role"], "authenticated");
    assert_eq!(body["claims"]["api_key_name"], "etl");
    let listed = auth.admin(Method::GET, "/admin/api_keys", None).await;
    assert_eq!(listed.body[0]["name"], "etl");
    assert!(listed.body[0].get("key").is_none());
    let id = made.body["id"].as_str().unwrap();
    let revoked = auth
        .admin(Method::DELETE, &format!("/admin/api_keys/{id}"), None)
        .await;
    assert_eq!(revoked.status, StatusCode::OK);
    assert_eq!(whoami(key).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        whoami("sovra_sk_guess".into()).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn phone_sign_up_with_the_code_from_the_mailbox() {
    let auth = Auth::new().await;
    let reply = auth
        .post(
            "/signup",
            json!({"phone": "+1 555 000 1234", "password": "password1"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["phone"], "15550001234");
    let sms = auth.mail("15550001234").await;
    assert_eq!(sms["kind"], "sms");
    let code = sms["body"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .last()
        .unwrap()
        .to_owned();
    let session = auth
        .post(
            "/verify",
            json!({"type": "sms", "phone": "15550001234", "token": code}),
        )
        .await;
    assert_eq!(session.status, StatusCode::OK, "{:?}", session.body);
    assert!(session.body["user"]["phone_confirmed_at"].is_string());
    let signed = auth
        .post(
            "/token?grant_type=password",
            json!({"phone": "15550001234", "password": "password1"}),
        )
        .await;
    assert_eq!(signed.status, StatusCode::OK, "{:?}", signed.body);
}

/// Issue #16 items 20, 22 and 23: admin input refused as GoTrue refuses it,
/// a malformed phone on verify named as such, and the features Sovra does
/// not offer answered with GoTrue's errors for an unconfigured project.
#[tokio::test]
async fn admin_input_verify_and_disabled_features_answer_as_gotrue() {
    let auth = Auth::new().await;
    let message = |reply: &Reply| reply.body["msg"].as_str().unwrap_or("").to_owned();
    // Invalid emails in createUser, inviteUserByEmail and generateLink.
    for (path, body) in [
        (
            "/admin/users",
            json!({"email": "not-an-email", "password": "password1"}),
        ),
        ("/invite", json!({"email": "nope@"})),
        (
            "/admin/generate_link",
            json!({"type": "magiclink", "email": "a b@example.com"}),
        ),
    ] {
        let reply = auth.admin(Method::POST, path, Some(body)).await;
        assert_eq!(
            (reply.status, reply.code(), message(&reply).as_str()),
            (
                StatusCode::BAD_REQUEST,
                "validation_failed",
                "Unable to validate email address: invalid format"
            ),
            "{path}"
        );
    }
    // Pagination: numbers work, anything else is refused.
    auth.user("page@example.com", "password1").await;
    let page = auth
        .admin(Method::GET, "/admin/users?page=1&per_page=1", None)
        .await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.body["users"].as_array().unwrap().len(), 1);
    for (query, text) in [
        (
            "page=abc",
            "Bad Pagination Parameters: strconv.ParseUint: parsing \"abc\": invalid syntax",
        ),
        (
            "per_page=-1",
            "Bad Pagination Parameters: strconv.ParseUint: parsing \"-1\": invalid syntax",
        ),
        (
            "page=99999999999999999999",
            "Bad Pagination Parameters: strconv.ParseUint: parsing \"99999999999999999999\": value out of range",
        ),
    ] {
        let reply = auth
            .admin(Method::GET, &format!("/admin/users?{query}"), None)
            .await;
        assert_eq!(
            (reply.status, reply.code(), message(&reply)),
            (
                StatusCode::BAD_REQUEST,
                "validation_failed",
                text.to_owned()
            ),
            "{query}"
        );
    }
    // A page far past the end is empty, not an error or an overflow.
    let far = auth
        .admin(
            Method::GET,
            "/admin/users?page=9223372036854775807&per_page=1000",
            None,
        )
        .await;
    assert_eq!(
        (far.status, far.body["users"].clone()),
        (StatusCode::OK, json!([]))
    );

    // verifyOtp: a malformed phone, a malformed email, neither.
    for (body, text) in [
        (
            json!({"type": "sms", "phone": "12ab", "token": "123456"}),
            "Invalid phone number format (E.164 required)",
        ),
        (
            json!({"type": "email", "email": "x@", "token": "123456"}),
            "Unable to validate email address: invalid format",
        ),
        (
            json!({"type": "sms", "token": "123456"}),
            "Only an email address or phone number should be provided on verify",
        ),
    ] {
        let reply = auth.post("/verify", body.clone()).await;
        assert_eq!(
            (reply.status, reply.code(), message(&reply).as_str()),
            (StatusCode::BAD_REQUEST, "validation_failed", text),
            "{body}"
        );
    }

    // SSO, manual linking, Web3 and id_token: GoTrue's "disabled" answers.
    let sso = auth.post("/sso", json!({"domain": "example.com"})).await;
    assert_eq!(
        (sso.status, sso.code(), message(&sso).as_str()),
        (
            StatusCode::NOT_FOUND,
            "saml_provider_disabled",
            "SAML 2.0 is disabled"
        )
    );
    let anon_link = auth
        .call(
            Method::GET,
            "/user/identities/authorize?provider=github",
            None,
            None,
        )
        .await;
    assert_eq!(
        anon_link.status,
        StatusCode::UNAUTHORIZED,
        "{:?}",
        anon_link.body
    );
    let session = auth.session("page@example.com", "password1").await;
    let token = session["access_token"].as_str().unwrap();
    for method in [Method::GET, Method::DELETE] {
        let path = if method == Method::GET {
            "/user/identities/authorize?provider=github".to_owned()
        } else {
            format!("/user/identities/{}", uuid::Uuid::new_v4())
        };
        let reply = auth.call(method, &path, Some(token), None).await;
        assert_eq!(
            (reply.status, reply.code(), message(&reply).as_str()),
            (
                StatusCode::NOT_FOUND,
                "manual_linking_disabled",
                "Manual linking is disabled"
            ),
            "{path}"
        );
    }
    let web3 = auth
        .post(
            "/token?grant_type=web3",
            json!({"chain": "solana", "message": "m", "signature": "s"}),
        )
        .await;
    assert_eq!(
        (web3.status, web3.code(), message(&web3).as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "web3_provider_disabled",
            "Web3 provider is disabled"
        )
    );
    let google = auth
        .post(
            "/token?grant_type=id_token",
            json!({"provider": "google", "id_token": "x.y.z"}),
        )
        .await;
    assert_eq!(
        (google.status, google.code(), message(&google).as_str()),
        (
            StatusCode::BAD_REQUEST,
            "provider_disabled",
            "Provider (issuer \"https://accounts.google.com\") is not enabled"
        )
    );
    let custom = auth
        .post(
            "/token?grant_type=id_token",
            json!({"provider": "acme", "id_token": "x.y.z"}),
        )
        .await;
    assert_eq!(
        (custom.code(), message(&custom).as_str()),
        (
            "validation_failed",
            "Custom OIDC provider \"acme\" not allowed"
        )
    );
    let missing = auth
        .post("/token?grant_type=id_token", json!({"provider": "google"}))
        .await;
    assert_eq!(
        (
            missing.status,
            missing.body["error"].clone(),
            missing.body["error_description"].clone()
        ),
        (
            StatusCode::BAD_REQUEST,
            json!("invalid request"),
            json!("id_token required")
        )
    );
}

/// The reauthentication nonce of a password change takes at most
/// `auth.code_attempts` wrong guesses: then even the right one is refused
/// until a new nonce is sent, which starts afresh.
#[tokio::test]
async fn reauthentication_nonces_take_a_bounded_number_of_guesses() {
    let auth = Auth::with(config(|c| {
        c.auth.secure_password_change = true;
        c.auth.email_max_frequency = 0;
        c.auth.code_attempts = 3;
    }))
    .await;
    auth.user("guess@example.com", "password1").await;
    let session = auth.session("guess@example.com", "password1").await;
    let access = token(&session, "access_token");
    auth.sql("update auth.sessions set created_at = now() - interval '2 days'")
        .await;
    let nonce = || async {
        let sent = auth
            .call(Method::GET, "/reauthenticate", Some(&access), None)
            .await;
        assert_eq!(sent.status, StatusCode::OK);
        let mail = auth.mail("guess@example.com").await;
        mail["body"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .last()
            .unwrap()
            .to_owned()
    };
    let change = |nonce: String| {
        auth.call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"password": "password2", "nonce": nonce, "data": {"n": 1}})),
        )
    };
    let right = nonce().await;
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    for _ in 0..3 {
        assert_eq!(
            change(wrong.to_owned()).await.code(),
            "reauthentication_not_valid"
        );
    }
    let spent = change(right.clone()).await;
    assert_eq!(
        spent.code(),
        "reauthentication_not_valid",
        "{:?}",
        spent.body
    );
    // The refused requests changed nothing.
    let user = auth.call(Method::GET, "/user", Some(&access), None).await;
    assert!(
        user.body["user_metadata"].get("n").is_none(),
        "{:?}",
        user.body
    );
    // A new nonce works.
    let fresh = nonce().await;
    let ok = change(fresh).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
}

/// Admin-imported bcrypt hashes are held to a cost cap: checking a
/// password against a cost-31 hash would take a hashing thread for days.
/// Hashes up to the cap import and sign in; others are refused as GoTrue
/// refuses a bad hash, on create and on update.
#[tokio::test]
async fn imported_bcrypt_hashes_have_a_bounded_cost() {
    let auth = Auth::new().await;
    let hash = |cost: u32| {
        let good = "$2a$04$9ts0ZMPlQ3ppfgRSbLP8D.u8LIdtcbXFAJOXZXgy9GeYyjAsyO6fC";
        format!("$2a${cost:02}${}", &good[7..])
    };
    let ok = auth
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"email": "cheap@example.com", "password_hash": hash(4), "email_confirm": true})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    for (path, method, cost) in [
        ("/admin/users".to_owned(), Method::POST, 31),
        ("/admin/users".to_owned(), Method::POST, 15),
        (
            format!("/admin/users/{}", ok.body["id"].as_str().unwrap()),
            Method::PUT,
            20,
        ),
    ] {
        let mut body = json!({"password_hash": hash(cost)});
        if method == Method::POST {
            body["email"] = json!(format!("costly{cost}@example.com"));
        }
        let reply = auth.admin(method, &path, Some(body)).await;
        assert_eq!(
            (reply.status, reply.code(), reply.body["msg"].clone()),
            (
                StatusCode::BAD_REQUEST,
                "validation_failed",
                json!(format!(
                    "Invalid password hash: bcrypt cost {cost} is above the maximum of 14"
                ))
            ),
            "{path} {cost}"
        );
    }
    // A malformed bcrypt hash is refused too.
    let short = auth
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"email": "short@example.com", "password_hash": "$2a$04$short"})),
        )
        .await;
    assert_eq!(short.code(), "validation_failed");
    // A hash over the cap written by SQL (a dump) never costs a hashing
    // thread: signing in against it is refused at once.
    auth.sql(&format!(
        "update auth.users set encrypted_password = '{}' where email = 'cheap@example.com'",
        hash(31)
    ))
    .await;
    let refused = auth.sign_in("cheap@example.com", "password").await;
    assert_eq!(refused.code(), "invalid_credentials");
}

/// When an admin deletes the verified factor a session reached aal2 with,
/// that session is aal1 again (its next tokens and its checks), even while
/// the user has another verified factor.
#[tokio::test]
async fn an_admin_deleting_a_verified_factor_downgrades_its_sessions() {
    let auth = Auth::new().await;
    let user = auth.user("twofactor@example.com", "password1").await;
    let user_id = user["id"].as_str().unwrap().to_owned();
    let session = auth.session("twofactor@example.com", "password1").await;
    // Enrolls and verifies a TOTP factor with `access`; the new session.
    let verify = |access: String, name: &'static str| {
        let auth = &auth;
        async move {
            let enrolled = auth
                .call(
                    Method::POST,
                    "/factors",
                    Some(&access),
                    Some(json!({"factor_type": "totp", "friendly_name": name})),
                )
                .await;
            assert_eq!(enrolled.status, StatusCode::OK, "{:?}", enrolled.body);
            let factor = enrolled.body["id"].as_str().unwrap().to_owned();
            let secret = sovra_auth::crypto::base32_decode(
                enrolled.body["totp"]["secret"].as_str().unwrap(),
            )
            .unwrap();
            let challenge = auth
                .call(
                    Method::POST,
                    &format!("/factors/{factor}/challenge"),
                    Some(&access),
                    Some(json!({})),
                )
                .await;
            let now = u64::try_from(TestApp::now()).unwrap();
            let code = sovra_auth::crypto::totp_at(&secret, now / 30);
            let verified = auth
                .call(
                    Method::POST,
                    &format!("/factors/{factor}/verify"),
                    Some(&access),
                    Some(json!({"challenge_id": challenge.body["id"], "code": code})),
                )
                .await;
            assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
            (factor, verified.body)
        }
    };
    let (first, aal2) = verify(token(&session, "access_token"), "first").await;
    let (second, aal2) = verify(token(&aal2, "access_token"), "second").await;
    assert_eq!(claims(&token(&aal2, "access_token"))["aal"], "aal2");
    // The admin deletes the factor this session was verified with.
    let deleted = auth
        .admin(
            Method::DELETE,
            &format!("/admin/users/{user_id}/factors/{second}"),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK, "{:?}", deleted.body);
    let refreshed = auth
        .post(
            "/token?grant_type=refresh_token",
            json!({"refresh_token": token(&aal2, "refresh_token")}),
        )
        .await;
    assert_eq!(refreshed.status, StatusCode::OK, "{:?}", refreshed.body);
    let c = claims(&token(&refreshed.body, "access_token"));
    assert_eq!(c["aal"], "aal1", "{c}");
    // Its checks see aal1 too: the remaining verified factor cannot be
    // removed without verifying again.
    let refused = auth
        .call(
            Method::DELETE,
            &format!("/factors/{first}"),
            Some(&token(&refreshed.body, "access_token")),
            None,
        )
        .await;
    assert_eq!(refused.code(), "insufficient_aal", "{:?}", refused.body);
    // Deleting a factor that does not exist is still a 404.
    let missing = auth
        .admin(
            Method::DELETE,
            &format!("/admin/users/{user_id}/factors/{second}"),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
}

/// Issue #16 item 21: `user_metadata` holds what the client sent, as on
/// GoTrue: no `email`, `sub` or `phone_verified` added (those are identity
/// data); confirming an address adds `email_verified: true`, as GoTrue's
/// confirmation does.
#[tokio::test]
async fn user_metadata_holds_what_the_client_sent() {
    let auth = Auth::new().await;
    let signed_up = auth
        .post(
            "/signup",
            json!({"email": "meta@example.com", "password": "password1", "data": {"name": "Meta"}}),
        )
        .await;
    assert_eq!(signed_up.status, StatusCode::OK, "{:?}", signed_up.body);
    assert_eq!(signed_up.body["user_metadata"], json!({"name": "Meta"}));
    let identity = &signed_up.body["identities"][0]["identity_data"];
    assert_eq!(identity["email"], "meta@example.com");
    assert_eq!(identity["sub"], signed_up.body["id"]);
    let code = code_in(&auth.mail("meta@example.com").await);
    let verified = auth
        .post(
            "/verify",
            json!({"type": "signup", "email": "meta@example.com", "token": code}),
        )
        .await;
    assert_eq!(
        verified.body["user"]["user_metadata"],
        json!({"name": "Meta", "email_verified": true})
    );
    // Admin-created: what was given, plus the confirmation when asked.
    let plain = auth
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"email": "plain@example.com", "user_metadata": {"team": "a"}})),
        )
        .await;
    assert_eq!(plain.body["user_metadata"], json!({"team": "a"}));
    let confirmed = auth
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"email": "conf@example.com", "email_confirm": true})),
        )
        .await;
    assert_eq!(
        confirmed.body["user_metadata"],
        json!({"email_verified": true})
    );
    let phone = auth
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"phone": "+15555550100", "phone_confirm": true})),
        )
        .await;
    assert_eq!(phone.body["user_metadata"], json!({"phone_verified": true}));
}
