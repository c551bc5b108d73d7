//! `/auth/v1` against account takeover and abuse (issue #12, items 7–10):
//! email changes that both addresses must confirm, the one gate every
//! session passes (bans, deletion), per-code attempt caps, TOTP replay and
//! secrets at rest, and retried refreshes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sovra_test_support::TestApp;
use support::auth_client::{Auth, Reply, claims, code_in, link_in, token};

/// The shared configuration, with no wait between mails to one address.
fn config(edit: impl FnOnce(&mut sovra_config::Config)) -> sovra_config::Config {
    support::auth_client::config(|config| {
        config.auth.email_max_frequency = 0;
        edit(config);
    })
}

/// MFA helpers of these tests.
impl Auth {
    async fn hardened() -> Auth {
        Auth::with(config(|_| {})).await
    }

    /// Enrolls and verifies a TOTP factor from `access`'s session: the
    /// factor id, its secret, and the session's aal2 tokens (with the code
    /// used, as `"code"`).
    async fn totp(&self, access: &str) -> (String, Vec<u8>, Value) {
        let enrolled = self
            .call(
                Method::POST,
                "/factors",
                Some(access),
                Some(json!({"factor_type": "totp"})),
            )
            .await;
        assert_eq!(enrolled.status, StatusCode::OK, "{:?}", enrolled.body);
        let factor = enrolled.body["id"].as_str().unwrap().to_owned();
        let secret =
            sovra_auth::crypto::base32_decode(enrolled.body["totp"]["secret"].as_str().unwrap())
                .unwrap();
        let code = totp_now(&secret);
        let mut verified = self.verify_totp(access, &factor, &code).await;
        assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
        verified.body["code"] = json!(code);
        (factor, secret, verified.body)
    }

    /// A challenge of `factor`, then `code` against it.
    async fn verify_totp(&self, access: &str, factor: &str, code: &str) -> Reply {
        let challenge = self
            .call(
                Method::POST,
                &format!("/factors/{factor}/challenge"),
                Some(access),
                None,
            )
            .await;
        assert_eq!(challenge.status, StatusCode::OK, "{:?}", challenge.body);
        self.call(
            Method::POST,
            &format!("/factors/{factor}/verify"),
            Some(access),
            Some(json!({"challenge_id": challenge.body["id"], "code": code})),
        )
        .await
    }
}

fn totp_now(secret: &[u8]) -> String {
    let now = u64::try_from(TestApp::now()).unwrap();
    sovra_auth::crypto::totp_at(secret, now / 30)
}

fn pkce_pair() -> (String, String) {
    let verifier = "v".repeat(50);
    let challenge = sovra_auth::crypto::pkce_s256(&verifier);
    (verifier, challenge)
}

/// The `code=` a PKCE link redirected to.
fn auth_code(location: &str) -> String {
    let code = location
        .split("code=")
        .nth(1)
        .unwrap_or_else(|| panic!("no code in {location}"));
    code.split(['&', '#']).next().unwrap().to_owned()
}

// ---------------------------------------------------------------------
// Item 7: email changes.

#[tokio::test]
async fn resending_an_email_change_makes_both_addresses_confirm_again() {
    let auth = Auth::hardened().await;
    auth.user_id("old@example.com", "password1").await;
    let access = token(
        &auth.session("old@example.com", "password1").await,
        "access_token",
    );
    let asked = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"email": "new@example.com"})),
        )
        .await;
    assert_eq!(asked.status, StatusCode::OK, "{:?}", asked.body);
    let first_old = code_in(&auth.mail("old@example.com").await);
    let first_new = code_in(&auth.mail("new@example.com").await);
    let confirm = |email: &'static str, code: String| {
        let auth = &auth;
        async move {
            auth.post(
                "/verify",
                json!({"type": "email_change", "email": email, "token": code}),
            )
            .await
        }
    };
    // The attack: confirm the new address, resend, confirm it again.
    let once = confirm("new@example.com", first_new).await;
    assert_eq!(once.status, StatusCode::OK, "{:?}", once.body);
    assert!(once.body["msg"].as_str().unwrap().contains("other email"));
    let resent = auth
        .post(
            "/resend",
            json!({"type": "email_change", "email": "new@example.com"}),
        )
        .await;
    assert_eq!(resent.status, StatusCode::OK, "{:?}", resent.body);
    let second_new = code_in(&auth.mail("new@example.com").await);
    let twice = confirm("new@example.com", second_new).await;
    assert_eq!(twice.status, StatusCode::OK, "{:?}", twice.body);
    assert!(
        twice.body.get("access_token").is_none(),
        "the change completed without the current address: {:?}",
        twice.body
    );
    let row = auth
        .sql("select email, email_change from auth.users where email_change <> ''")
        .await;
    assert_eq!(row[0].get::<_, String>(0), "old@example.com");
    // The resend replaced the current address's code as well.
    let stale = confirm("old@example.com", first_old).await;
    assert_eq!(stale.code(), "otp_expired");
    // The legitimate owner confirms from the current address: done.
    let second_old = code_in(&auth.mail("old@example.com").await);
    let done = confirm("old@example.com", second_old).await;
    assert_eq!(done.status, StatusCode::OK, "{:?}", done.body);
    assert_eq!(done.body["user"]["email"], "new@example.com");
    auth.session("new@example.com", "password1").await;
    assert_eq!(
        auth.sign_in("old@example.com", "password1").await.code(),
        "invalid_credentials"
    );
}

#[tokio::test]
async fn email_and_phone_changes_need_aal2_once_a_factor_is_verified() {
    let auth = Auth::hardened().await;
    auth.user_id("mfa-change@example.com", "password1").await;
    let first = auth.session("mfa-change@example.com", "password1").await;
    let (_, _, aal2) = auth.totp(&token(&first, "access_token")).await;
    // A new password sign-in is aal1.
    let aal1 = token(
        &auth.session("mfa-change@example.com", "password1").await,
        "access_token",
    );
    for body in [
        json!({"email": "elsewhere@example.com"}),
        json!({"phone": "+15555550123"}),
        json!({"password": "password2"}),
    ] {
        let refused = auth
            .call(Method::PUT, "/user", Some(&aal1), Some(body.clone()))
            .await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::UNAUTHORIZED, "insufficient_aal"),
            "{body}: {:?}",
            refused.body
        );
    }
    let pending = auth
        .sql("select count(*) from auth.users where email_change <> '' or phone_change <> ''")
        .await;
    assert_eq!(pending[0].get::<_, i64>(0), 0);
    // Metadata and the unchanged address need nothing more.
    let metadata = auth
        .call(
            Method::PUT,
            "/user",
            Some(&aal1),
            Some(json!({"email": "mfa-change@example.com", "data": {"a": 1}})),
        )
        .await;
    assert_eq!(metadata.status, StatusCode::OK, "{:?}", metadata.body);
    // From the aal2 session both changes go through.
    let aal2 = token(&aal2, "access_token");
    for body in [
        json!({"email": "elsewhere@example.com"}),
        json!({"phone": "+15555550123"}),
    ] {
        let allowed = auth
            .call(Method::PUT, "/user", Some(&aal2), Some(body.clone()))
            .await;
        assert_eq!(allowed.status, StatusCode::OK, "{body}: {:?}", allowed.body);
    }
    let user = auth
        .call(Method::GET, "/user", Some(&aal2), None)
        .await
        .body;
    assert_eq!(user["new_email"], "elsewhere@example.com");
    assert_eq!(user["new_phone"], "15555550123");
}

// ---------------------------------------------------------------------
// Item 8: one gate for every session.

async fn ban(auth: &Auth, id: &str) {
    // Straight in the table, so that sessions and pending codes made
    // before the ban stay: the gate must refuse them on its own.
    auth.app
        .db
        .client()
        .await
        .execute(
            "update auth.users set banned_until = now() + interval '1 hour' where id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn banned_users_get_no_session_on_any_path() {
    let auth = Auth::hardened().await;
    let (verifier, challenge) = pkce_pair();
    let id = auth.user_id("banned@example.com", "password1").await;
    let session = auth.session("banned@example.com", "password1").await;
    let access = token(&session, "access_token");
    let (factor, _, _) = auth.totp(&access).await;
    let aal1 = auth.session("banned@example.com", "password1").await;
    // Codes and links issued before the ban: a PKCE recovery link followed
    // to its code, and a PKCE magic link.
    auth.post(
        "/recover",
        json!({"email": "banned@example.com", "code_challenge": challenge, "code_challenge_method": "s256"}),
    )
    .await;
    let pkce_recovery = link_in(&auth.mail("banned@example.com").await);
    let recovery_code = auth_code(&auth.follow(&pkce_recovery).await);
    auth.post(
        "/otp",
        json!({"email": "banned@example.com", "code_challenge": challenge, "code_challenge_method": "s256"}),
    )
    .await;
    let pkce_magic = link_in(&auth.mail("banned@example.com").await);

    ban(&auth, &id).await;

    // Password.
    let password = auth.sign_in("banned@example.com", "password1").await;
    assert_eq!(
        (password.status, password.code()),
        (StatusCode::BAD_REQUEST, "user_banned")
    );
    // Refresh.
    let refreshed = auth.refresh(&token(&aal1, "refresh_token")).await;
    assert_eq!(
        (refreshed.status, refreshed.code()),
        (StatusCode::BAD_REQUEST, "user_banned"),
        "{:?}",
        refreshed.body
    );
    // The PKCE magic link redirects with the error, not a code.
    let location = auth.follow(&pkce_magic).await;
    assert!(location.contains("error_code=user_banned"), "{location}");
    assert!(!location.contains("code=") || location.contains("error_code="));
    // The PKCE exchange of a code obtained before the ban.
    let exchanged = auth
        .post(
            "/token?grant_type=pkce",
            json!({"auth_code": recovery_code, "code_verifier": verifier}),
        )
        .await;
    assert_eq!(
        (exchanged.status, exchanged.code()),
        (StatusCode::BAD_REQUEST, "user_banned"),
        "{:?}",
        exchanged.body
    );
    // A plain magic link followed, and its code verified.
    auth.post("/otp", json!({"email": "banned@example.com"}))
        .await;
    let magic = auth.mail("banned@example.com").await;
    let location = auth.follow(&link_in(&magic)).await;
    assert!(location.contains("error_code=user_banned"), "{location}");
    let verified = auth
        .post(
            "/verify",
            json!({"type": "magiclink", "email": "banned@example.com", "token": code_in(&magic)}),
        )
        .await;
    assert_eq!(
        (verified.status, verified.code()),
        (StatusCode::FORBIDDEN, "user_banned")
    );
    // MFA verification.
    let mfa = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/challenge"),
            Some(&token(&aal1, "access_token")),
            None,
        )
        .await;
    assert_eq!(mfa.code(), "user_banned");
    // Nothing above made a session.
    let sessions = auth
        .sql("select count(*) from auth.sessions where created_at > now() - interval '1 hour'")
        .await;
    let before = sessions[0].get::<_, i64>(0);
    assert_eq!(before, 2, "only the two sessions made before the ban");

    // Lifting the ban lets the same user in again.
    auth.app
        .db
        .client()
        .await
        .execute(
            "update auth.users set banned_until = null where id = $1::text::uuid",
            &[&id],
        )
        .await
        .unwrap();
    auth.session("banned@example.com", "password1").await;
}

#[tokio::test]
async fn banned_invited_signed_up_and_anonymous_users_cannot_verify() {
    let auth = Auth::with(config(|c| c.auth.anonymous_users = true)).await;
    // An invitation.
    let invited = auth
        .admin(
            Method::POST,
            "/invite",
            Some(json!({"email": "invitee@example.com"})),
        )
        .await;
    assert_eq!(invited.status, StatusCode::OK, "{:?}", invited.body);
    let invitation = auth.mail("invitee@example.com").await;
    ban(&auth, invited.body["id"].as_str().unwrap()).await;
    let location = auth.follow(&link_in(&invitation)).await;
    assert!(location.contains("error_code=user_banned"), "{location}");
    // A sign-up confirmation code.
    let signed = auth
        .post(
            "/signup",
            json!({"email": "fresh@example.com", "password": "password1"}),
        )
        .await;
    assert_eq!(signed.status, StatusCode::OK, "{:?}", signed.body);
    ban(&auth, signed.body["id"].as_str().unwrap()).await;
    let confirm = auth
        .post(
            "/verify",
            json!({"type": "signup", "email": "fresh@example.com", "token": code_in(&auth.mail("fresh@example.com").await)}),
        )
        .await;
    assert_eq!(confirm.code(), "user_banned");
    // An anonymous user linking an email.
    let anon = auth.post("/signup", json!({})).await;
    let access = token(&anon.body, "access_token");
    let linked = auth
        .call(
            Method::PUT,
            "/user",
            Some(&access),
            Some(json!({"email": "anon-link@example.com"})),
        )
        .await;
    assert_eq!(linked.status, StatusCode::OK, "{:?}", linked.body);
    ban(&auth, anon.body["user"]["id"].as_str().unwrap()).await;
    let link = auth
        .post(
            "/verify",
            json!({"type": "email_change", "email": "anon-link@example.com",
                   "token": code_in(&auth.mail("anon-link@example.com").await)}),
        )
        .await;
    assert_eq!(link.code(), "user_banned");
    let refresh = auth.refresh(&token(&anon.body, "refresh_token")).await;
    assert_eq!(refresh.code(), "user_banned");
    let users = auth
        .sql("select count(*) from auth.users where email_confirmed_at is not null")
        .await;
    assert_eq!(users[0].get::<_, i64>(0), 0, "nothing was confirmed");
}

#[tokio::test]
async fn deleted_users_get_nothing() {
    let auth = Auth::hardened().await;
    let (verifier, challenge) = pkce_pair();
    for (email, soft) in [("soft@example.com", true), ("hard@example.com", false)] {
        let id = auth.user_id(email, "password1").await;
        let session = auth.session(email, "password1").await;
        // A PKCE magic link followed to its code before the deletion.
        auth.post(
            "/otp",
            json!({"email": email, "code_challenge": challenge, "code_challenge_method": "s256"}),
        )
        .await;
        let code = auth_code(&auth.follow(&link_in(&auth.mail(email).await)).await);
        let deleted = auth
            .admin(
                Method::DELETE,
                &format!("/admin/users/{id}"),
                Some(json!({"should_soft_delete": soft})),
            )
            .await;
        assert_eq!(deleted.status, StatusCode::OK, "{:?}", deleted.body);
        let exchanged = auth
            .post(
                "/token?grant_type=pkce",
                json!({"auth_code": code, "code_verifier": verifier}),
            )
            .await;
        assert_eq!(
            (exchanged.status, exchanged.code()),
            (StatusCode::NOT_FOUND, "user_not_found"),
            "{email}: {:?}",
            exchanged.body
        );
        assert!(exchanged.body.get("access_token").is_none());
        let refreshed = auth.refresh(&token(&session, "refresh_token")).await;
        assert_eq!(refreshed.status, StatusCode::BAD_REQUEST, "{email}");
        assert!(refreshed.body.get("access_token").is_none());
        assert_eq!(
            auth.sign_in(email, "password1").await.code(),
            "invalid_credentials"
        );
    }
    // A soft-deleted row that still has a session (deleted by hand, as an
    // import might leave it): its refresh token yields nothing.
    auth.user_id("kept@example.com", "password1").await;
    let session = auth.session("kept@example.com", "password1").await;
    auth.sql("update auth.users set deleted_at = now() where email = 'kept@example.com'")
        .await;
    let refreshed = auth.refresh(&token(&session, "refresh_token")).await;
    assert_eq!(
        (refreshed.status, refreshed.code()),
        (StatusCode::BAD_REQUEST, "session_not_found"),
        "{:?}",
        refreshed.body
    );
    let sessions = auth.sql("select count(*) from auth.sessions").await;
    assert_eq!(sessions[0].get::<_, i64>(0), 1, "no session was made");
}

// ---------------------------------------------------------------------
// Item 10: a retried refresh.

#[tokio::test]
async fn a_retried_refresh_returns_the_live_child_and_late_reuse_ends_the_session() {
    let auth = Auth::hardened().await;
    auth.user_id("retry@example.com", "password1").await;
    let session = auth.session("retry@example.com", "password1").await;
    let a = token(&session, "refresh_token");
    let first = auth.refresh(&a).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    let b = token(&first.body, "refresh_token");
    assert_ne!(a, b);
    // A again (the response was lost): B again, not a new token.
    for _ in 0..2 {
        let again = auth.refresh(&a).await;
        assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
        assert_eq!(token(&again.body, "refresh_token"), b);
        let me = auth
            .call(
                Method::GET,
                "/user",
                Some(&token(&again.body, "access_token")),
                None,
            )
            .await;
        assert_eq!(me.status, StatusCode::OK);
    }
    let live = auth
        .sql("select count(*) from auth.refresh_tokens where not revoked")
        .await;
    assert_eq!(live[0].get::<_, i64>(0), 1, "one live token per session");
    // B rotates to C; A (and B) within the interval now answer C.
    let second = auth.refresh(&b).await;
    let c = token(&second.body, "refresh_token");
    assert_ne!(b, c);
    assert_eq!(token(&auth.refresh(&a).await.body, "refresh_token"), c);
    assert_eq!(token(&auth.refresh(&b).await.body, "refresh_token"), c);
    // Concurrent retries agree too.
    let (x, y) = tokio::join!(auth.refresh(&b), auth.refresh(&b));
    assert_eq!(token(&x.body, "refresh_token"), c);
    assert_eq!(token(&y.body, "refresh_token"), c);
    // Outside the interval the parent is a reuse: the family ends.
    auth.sql(
        "update auth.refresh_tokens set updated_at = now() - interval '1 minute' where revoked",
    )
    .await;
    let reuse = auth.refresh(&a).await;
    assert_eq!(
        (reuse.status, reuse.code()),
        (StatusCode::BAD_REQUEST, "refresh_token_already_used")
    );
    let after = auth.refresh(&c).await;
    assert_eq!(after.status, StatusCode::BAD_REQUEST);
    assert!(after.body.get("access_token").is_none());
    let sessions = auth.sql("select count(*) from auth.sessions").await;
    assert_eq!(sessions[0].get::<_, i64>(0), 0);
    let _ = &first.headers;
}

// ---------------------------------------------------------------------
// Item 9: codes, buckets and TOTP.

#[tokio::test]
async fn guessing_a_code_past_the_cap_invalidates_it_and_the_next_code_works() {
    let auth = Auth::hardened().await;
    auth.user_id("guessed@example.com", "password1").await;
    auth.post("/otp", json!({"email": "guessed@example.com"}))
        .await;
    let code = code_in(&auth.mail("guessed@example.com").await);
    let wrong = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    let verify = |token: String| {
        let auth = &auth;
        async move {
            auth.post(
                "/verify",
                json!({"type": "magiclink", "email": "guessed@example.com", "token": token}),
            )
            .await
        }
    };
    // auth.code_attempts (5) wrong guesses...
    for _ in 0..5 {
        let guess = verify(wrong.clone()).await;
        assert_eq!(guess.code(), "otp_expired", "{:?}", guess.body);
    }
    // ...and the right code is dead too.
    let late = verify(code).await;
    assert_eq!(late.code(), "otp_expired", "{:?}", late.body);
    // The owner asks for a fresh code, which starts from zero.
    auth.post("/otp", json!({"email": "guessed@example.com"}))
        .await;
    let fresh = code_in(&auth.mail("guessed@example.com").await);
    let fresh_wrong = format!("{:06}", (fresh.parse::<u32>().unwrap() + 1) % 1_000_000);
    for _ in 0..4 {
        assert_eq!(verify(fresh_wrong.clone()).await.code(), "otp_expired");
    }
    let signed_in = verify(fresh).await;
    assert_eq!(signed_in.status, StatusCode::OK, "{:?}", signed_in.body);
    assert!(signed_in.body["access_token"].is_string());
    // Guesses for an address nobody has change nothing and say nothing.
    let nobody = auth
        .post(
            "/verify",
            json!({"type": "magiclink", "email": "nobody@example.com", "token": "123456"}),
        )
        .await;
    assert_eq!(nobody.code(), "otp_expired");
}

#[tokio::test]
async fn sign_in_guesses_from_one_client_do_not_lock_the_owner_out() {
    let auth = Auth::with(config(|c| {
        c.auth.rate_limit.sign_in = 3;
        c.auth.trusted_proxies = "127.0.0.1".into();
    }))
    .await;
    auth.user_id("victim@example.com", "password1").await;
    let from = |ip: &'static str, password: &'static str| {
        let auth = &auth;
        async move {
            let response = auth
                .http
                .post(format!(
                    "{}/auth/v1/token?grant_type=password",
                    auth.app.url
                ))
                .header("apikey", &auth.app.anon_key)
                .header("x-forwarded-for", ip)
                .json(&json!({"email": "victim@example.com", "password": password}))
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        }
    };
    for _ in 0..3 {
        let (status, _) = from("198.51.100.7", "wrong-guess").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    let (status, body) = from("198.51.100.7", "wrong-guess").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body:?}");
    // The owner, elsewhere, signs in.
    let (status, body) = from("203.0.113.20", "password1").await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    assert!(body["access_token"].is_string());
}

#[tokio::test]
async fn ipv6_clients_of_one_64_share_a_bucket() {
    let auth = Auth::with(config(|c| {
        c.auth.rate_limit.verify = 2;
        c.auth.trusted_proxies = "127.0.0.1".into();
    }))
    .await;
    let from = |ip: &'static str| {
        let auth = &auth;
        async move {
            auth.http
                .post(format!("{}/auth/v1/verify", auth.app.url))
                .header("apikey", &auth.app.anon_key)
                .header("x-forwarded-for", ip)
                .json(&json!({"type": "magiclink", "token_hash": "0".repeat(56)}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(
        from("2001:db8:1:2::1").await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        from("2001:db8:1:2:ffff::9").await.status(),
        StatusCode::FORBIDDEN
    );
    // A third address in the same /64: the bucket is empty.
    let limited = from("2001:db8:1:2:abcd::1").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(limited.headers().contains_key("retry-after"));
    // The next /64 is another client.
    assert_eq!(
        from("2001:db8:1:3::1").await.status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_totp_code_is_accepted_once() {
    let auth = Auth::hardened().await;
    auth.user_id("replay@example.com", "password1").await;
    let first = auth.session("replay@example.com", "password1").await;
    let (factor, secret, verified) = auth.totp(&token(&first, "access_token")).await;
    // The code that verified the factor, again, from another session:
    // refused, though still inside its window.
    let other = token(
        &auth.session("replay@example.com", "password1").await,
        "access_token",
    );
    let used = token(&verified, "code");
    let replay = auth.verify_totp(&other, &factor, &used).await;
    assert_eq!(
        (replay.status, replay.code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "mfa_verification_failed"),
        "{:?}",
        replay.body
    );
    // The next step's code is accepted, once.
    let now = u64::try_from(TestApp::now()).unwrap();
    let next = sovra_auth::crypto::totp_at(&secret, now / 30 + 1);
    let ok = auth.verify_totp(&other, &factor, &next).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    assert_eq!(claims(&token(&ok.body, "access_token"))["aal"], "aal2");
    let third = token(
        &auth.session("replay@example.com", "password1").await,
        "access_token",
    );
    let again = auth.verify_totp(&third, &factor, &next).await;
    assert_eq!(again.code(), "mfa_verification_failed");
}

#[tokio::test]
async fn mfa_guesses_kill_the_challenge_and_back_the_factor_off() {
    let auth = Auth::hardened().await;
    auth.user_id("mfa-guess@example.com", "password1").await;
    let first = auth.session("mfa-guess@example.com", "password1").await;
    let (factor, secret, _) = auth.totp(&token(&first, "access_token")).await;
    let access = token(
        &auth.session("mfa-guess@example.com", "password1").await,
        "access_token",
    );
    let now = u64::try_from(TestApp::now()).unwrap();
    let good = sovra_auth::crypto::totp_at(&secret, now / 30 + 1);
    let bad = format!("{:06}", (good.parse::<u32>().unwrap() + 1) % 1_000_000);
    let challenge = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/challenge"),
            Some(&access),
            None,
        )
        .await;
    let id = challenge.body["id"].clone();
    let attempt = |code: String| {
        let auth = &auth;
        let access = access.clone();
        let factor = factor.clone();
        let id = id.clone();
        async move {
            auth.call(
                Method::POST,
                &format!("/factors/{factor}/verify"),
                Some(&access),
                Some(json!({"challenge_id": id, "code": code})),
            )
            .await
        }
    };
    for _ in 0..5 {
        assert_eq!(attempt(bad.clone()).await.code(), "mfa_verification_failed");
    }
    // The challenge took its five guesses and is gone, right code or not.
    let gone = attempt(good.clone()).await;
    assert_eq!(
        (gone.status, gone.code()),
        (StatusCode::NOT_FOUND, "mfa_challenge_not_found")
    );
    // The factor backs off: many failures in a row mean a wait.
    auth.sql("update sovra.auth_attempts set failures = 12, last_failure_at = now() where kind = 'factor'")
        .await;
    let waiting = auth.verify_totp(&access, &factor, &good).await;
    assert_eq!(
        (waiting.status, waiting.code()),
        (StatusCode::TOO_MANY_REQUESTS, "over_request_rate_limit"),
        "{:?}",
        waiting.body
    );
    assert!(waiting.headers.contains_key("retry-after"));
    // Once the wait is over, the right code works and clears the count.
    auth.sql("update sovra.auth_attempts set last_failure_at = now() - interval '1 hour' where kind = 'factor'")
        .await;
    let ok = auth.verify_totp(&access, &factor, &good).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let left = auth
        .sql("select count(*) from sovra.auth_attempts where kind in ('factor', 'challenge')")
        .await;
    assert_eq!(left[0].get::<_, i64>(0), 0);
}

#[tokio::test]
async fn totp_secrets_are_sealed_at_rest_and_old_plaintext_ones_still_work() {
    let auth = Auth::hardened().await;
    auth.user_id("sealed@example.com", "password1").await;
    let first = auth.session("sealed@example.com", "password1").await;
    let (factor, secret, _) = auth.totp(&token(&first, "access_token")).await;
    let plaintext = sovra_auth::crypto::base32_encode(&secret);
    let stored = auth
        .sql("select secret from auth.mfa_factors")
        .await
        .remove(0)
        .get::<_, String>(0);
    assert_ne!(stored, plaintext);
    assert!(!stored.contains(&plaintext));
    assert!(stored.starts_with("sovra1:"), "{stored}");
    // A factor from before sealing (or imported from Supabase) keeps
    // working and is sealed on its first use.
    auth.app
        .db
        .client()
        .await
        .execute("update auth.mfa_factors set secret = $1", &[&plaintext])
        .await
        .unwrap();
    let access = token(
        &auth.session("sealed@example.com", "password1").await,
        "access_token",
    );
    let now = u64::try_from(TestApp::now()).unwrap();
    let next = sovra_auth::crypto::totp_at(&secret, now / 30 + 1);
    let ok = auth.verify_totp(&access, &factor, &next).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let resealed = auth
        .sql("select secret from auth.mfa_factors")
        .await
        .remove(0)
        .get::<_, String>(0);
    assert!(resealed.starts_with("sovra1:"), "{resealed}");
    // The key lives in the data directory, readable by its owner only.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(auth.app.data_dir.join("auth.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn a_second_instance_opens_sealed_secrets_and_answers_retries_alike() {
    let auth = Auth::hardened().await;
    auth.user_id("peer@example.com", "password1").await;
    let first = auth.session("peer@example.com", "password1").await;
    let (factor, secret, _) = auth.totp(&token(&first, "access_token")).await;
    let peer = Auth {
        app: auth.app.spawn_peer(config(|_| {})).await,
        http: auth.http.clone(),
    };
    // The factor enrolled on the first instance verifies on the second.
    let access = token(
        &peer.session("peer@example.com", "password1").await,
        "access_token",
    );
    let now = u64::try_from(TestApp::now()).unwrap();
    let next = sovra_auth::crypto::totp_at(&secret, now / 30 + 1);
    let ok = peer.verify_totp(&access, &factor, &next).await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    // A refresh on one instance, retried on the other: the same token.
    let session = auth.session("peer@example.com", "password1").await;
    let a = token(&session, "refresh_token");
    let b = token(&auth.refresh(&a).await.body, "refresh_token");
    let retried = peer.refresh(&a).await;
    assert_eq!(retried.status, StatusCode::OK, "{:?}", retried.body);
    assert_eq!(token(&retried.body, "refresh_token"), b);
}

#[tokio::test]
async fn a_session_is_aal2_only_while_a_verified_factor_backs_it() {
    let auth = Auth::hardened().await;
    let id = auth.user_id("factor-gone@example.com", "password1").await;
    let first = auth.session("factor-gone@example.com", "password1").await;
    let (factor, _, aal2) = auth.totp(&token(&first, "access_token")).await;
    let refreshed = auth.refresh(&token(&aal2, "refresh_token")).await;
    assert_eq!(
        claims(&token(&refreshed.body, "access_token"))["aal"],
        "aal2"
    );
    // The admin removes the factor: the session's next token is aal1.
    let removed = auth
        .admin(
            Method::DELETE,
            &format!("/admin/users/{id}/factors/{factor}"),
            None,
        )
        .await;
    assert_eq!(removed.status, StatusCode::OK, "{:?}", removed.body);
    let after = auth.refresh(&token(&refreshed.body, "refresh_token")).await;
    assert_eq!(after.status, StatusCode::OK, "{:?}", after.body);
    assert_eq!(claims(&token(&after.body, "access_token"))["aal"], "aal1");
}

/// `POST /verify` with a hash no code has, from `ip`, at `url`: 403 while
/// the client's `verify` bucket has tokens, 429 once it is empty.
async fn verify_from(http: &reqwest::Client, url: &str, anon: &str, ip: &str) -> reqwest::Response {
    http.post(format!("{url}/auth/v1/verify"))
        .header("apikey", anon)
        .header("x-forwarded-for", ip)
        .json(&json!({"type": "magiclink", "token_hash": "0".repeat(56)}))
        .send()
        .await
        .unwrap()
}

/// Two nodes on one database with `server.shared_state` as given, verify
/// limit 5 and the loopback as trusted proxy.
async fn two_nodes(shared_state: &str) -> (Auth, TestApp) {
    let edit = |c: &mut sovra_config::Config| {
        c.auth.rate_limit.verify = 5;
        c.auth.rate_limit.sign_in = 4;
        c.auth.trusted_proxies = "127.0.0.1".into();
        c.server.shared_state = shared_state.to_owned();
    };
    let auth = Auth::with(config(edit)).await;
    let peer = auth.app.spawn_peer(config(edit)).await;
    (auth, peer)
}

#[tokio::test]
async fn shared_rate_limits_count_requests_spread_over_nodes_once() {
    let (auth, peer) = two_nodes("postgres").await;
    let urls = [auth.app.url.as_str(), peer.url.as_str()];
    let anon = auth.app.anon_key.as_str();
    // 20 requests at once, spread over both nodes: exactly the limit (5)
    // get through, from either node, and the rest are 429.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let (http, url, anon) = (auth.http.clone(), urls[i % 2].to_owned(), anon.to_owned());
        tasks.spawn(async move { verify_from(&http, &url, &anon, "198.51.100.30").await });
    }
    let answers = tasks.join_all().await;
    let statuses: Vec<StatusCode> = answers.iter().map(reqwest::Response::status).collect();
    let passed = statuses
        .iter()
        .filter(|s| **s == StatusCode::FORBIDDEN)
        .count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((passed, limited), (5, 15), "{statuses:?}");
    let refused = answers
        .into_iter()
        .find(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .unwrap();
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&wait), "{wait}");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error_code"], "over_request_rate_limit", "{body:?}");
    // Both nodes refuse now; another client is still served on both.
    for url in urls {
        let again = verify_from(&auth.http, url, anon, "198.51.100.30").await;
        assert_eq!(again.status(), StatusCode::TOO_MANY_REQUESTS);
        let other = verify_from(&auth.http, url, anon, "198.51.100.31").await;
        assert_eq!(other.status(), StatusCode::FORBIDDEN);
    }
    // Sign-in guesses for one account alternate nodes and meet its limit
    // of 4 (the account-and-address bucket), not 4 per node.
    auth.user_id("shared@example.com", "password1").await;
    let sign_in = |url: &str| {
        auth.http
            .post(format!("{url}/auth/v1/token?grant_type=password"))
            .header("apikey", anon)
            .header("x-forwarded-for", "198.51.100.40")
            .json(&json!({"email": "shared@example.com", "password": "wrong-guess"}))
            .send()
    };
    for i in 0..4 {
        let answer = sign_in(urls[i % 2]).await.unwrap();
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "attempt {i}");
    }
    assert_eq!(
        sign_in(urls[0]).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // What is counted is kept as a digest, never as the address itself.
    let db = auth.app.db.client().await;
    let rows = db
        .query(
            "select bucket, key, allowed from sovra.rate_limits
              where key = sha256(convert_to('198.51.100.30', 'UTF8'))",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, &str>(0), "verify");
    assert!(!rows[0].get::<_, bool>(2));
    let plain: i64 = db
        .query_one(
            "select count(*) from sovra.rate_limits
              where position(convert_to('198.51.100', 'UTF8') in key) > 0",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plain, 0);
}

#[tokio::test]
async fn memory_rate_limits_stay_per_node_and_shared_ones_refill() {
    // `memory` (one node's default): each node counts its own requests.
    let (auth, peer) = two_nodes("memory").await;
    let anon = auth.app.anon_key.as_str();
    for url in [auth.app.url.as_str(), peer.url.as_str()] {
        for _ in 0..5 {
            let answer = verify_from(&auth.http, url, anon, "198.51.100.50").await;
            assert_eq!(answer.status(), StatusCode::FORBIDDEN);
        }
        let over = verify_from(&auth.http, url, anon, "198.51.100.50").await;
        assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let db = auth.app.db.client().await;
    let count: i64 = db
        .query_one("select count(*) from sovra.rate_limits", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0, "memory limits write nothing to the database");
    // Shared buckets refill continuously from the database's clock: a
    // bucket emptied 10 minutes ago (its row set back) has tokens again.
    let (auth, peer) = two_nodes("postgres").await;
    let anon = auth.app.anon_key.as_str();
    for _ in 0..5 {
        verify_from(&auth.http, &peer.url, anon, "198.51.100.60").await;
    }
    let over = verify_from(&auth.http, &auth.app.url, anon, "198.51.100.60").await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    let db = auth.app.db.client().await;
    db.execute(
        "update sovra.rate_limits set at = at - interval '10 minutes',
                full_at = full_at - interval '10 minutes'",
        &[],
    )
    .await
    .unwrap();
    let again = verify_from(&auth.http, &auth.app.url, anon, "198.51.100.60").await;
    assert_eq!(again.status(), StatusCode::FORBIDDEN);
}
