//! Auth hooks through the real router on a real database: each hook as a
//! PostgreSQL function (its success and its refusals, in GoTrue's shapes),
//! HTTP hooks against a receiver in the test that checks the Standard
//! Webhooks signature itself, and the RBAC recipe of docs/auth.md end to
//! end (hook, roles table, RLS reading `auth.jwt() ->> 'user_role'`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::{Arc, Mutex};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sovra_config::HookOption;
use sovra_test_support::TestApp;
use support::auth_client::{Auth, claims, config, token};

const SECRET_B64: &str = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn pg_hook(function: &str) -> HookOption {
    HookOption {
        enabled: true,
        uri: format!("pg-functions://postgres/public/{function}"),
        secrets: String::new(),
    }
}

fn http_hook(url: &str) -> HookOption {
    HookOption {
        enabled: true,
        uri: url.to_owned(),
        secrets: format!("v1,whsec_{SECRET_B64}"),
    }
}

/// Creates `function` from `body` (plpgsql over `event jsonb`) with the
/// grants docs/auth.md asks for.
async fn create_hook(auth: &Auth, function: &str, body: &str) {
    let sql = format!(
        "create or replace function public.{function}(event jsonb) returns jsonb
           language plpgsql as $hook$ {body} $hook$;
         grant execute on function public.{function} to supabase_auth_admin;
         revoke execute on function public.{function} from authenticated, anon, public;"
    );
    auth.app
        .db
        .client()
        .await
        .batch_execute(&sql)
        .await
        .unwrap();
}

async fn count(auth: &Auth, sql: &str) -> i64 {
    auth.sql(sql).await[0].get::<_, i64>(0)
}

#[tokio::test]
async fn custom_access_token_hook_shapes_every_token() {
    let auth = Auth::with(config(|c| {
        c.auth.hook.custom_access_token = pg_hook("custom_access_token_hook");
    }))
    .await;
    create_hook(
        &auth,
        "custom_access_token_hook",
        "begin
           return jsonb_build_object('claims', (event->'claims')
             || jsonb_build_object('method_seen', event->>'authentication_method',
                                   'hook_user', event->>'user_id',
                                   'had_session', (event->'claims') ? 'session_id'));
         end",
    )
    .await;
    let id = auth.user_id("ada@example.com", "password1").await;
    let session = auth.session("ada@example.com", "password1").await;
    let c = claims(&token(&session, "access_token"));
    assert_eq!(c["method_seen"], "password");
    assert_eq!(c["hook_user"], id.as_str());
    assert_eq!(c["had_session"], true);
    // The token is still a working one: /user accepts it.
    let me = auth
        .call(
            Method::GET,
            "/user",
            Some(&token(&session, "access_token")),
            None,
        )
        .await;
    assert_eq!(me.status, StatusCode::OK, "{:?}", me.body);

    let refreshed = auth.refresh(&token(&session, "refresh_token")).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{:?}", refreshed.body);
    assert_eq!(
        claims(&token(&refreshed.body, "access_token"))["method_seen"],
        "token_refresh"
    );

    // A magic link's code: the OTP road.
    let sent = auth.post("/otp", json!({"email": "ada@example.com"})).await;
    assert_eq!(sent.status, StatusCode::OK, "{:?}", sent.body);
    let mail = auth.mail("ada@example.com").await;
    let code = support::auth_client::code_in(&mail);
    let verified = auth
        .post(
            "/verify",
            json!({"type": "email", "email": "ada@example.com", "token": code}),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
    let c = claims(&token(&verified.body, "access_token"));
    assert!(
        matches!(c["method_seen"].as_str(), Some("otp" | "magiclink")),
        "{c}"
    );

    // An admin-generated link signs in through the same gate.
    let link = auth
        .admin(
            Method::POST,
            "/admin/generate_link",
            Some(json!({"type": "magiclink", "email": "ada@example.com"})),
        )
        .await;
    assert_eq!(link.status, StatusCode::OK, "{:?}", link.body);
    let verified = auth
        .post(
            "/verify",
            json!({"type": "magiclink", "token_hash": link.body["hashed_token"]}),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
    assert_eq!(
        claims(&token(&verified.body, "access_token"))["method_seen"],
        "magiclink"
    );
}

#[tokio::test]
async fn custom_access_token_hook_refusals_reach_the_client_in_gotrues_shape() {
    let auth = Auth::with(config(|c| {
        c.auth.hook.custom_access_token = pg_hook("custom_access_token_hook");
        c.auth.hook.pg_timeout_ms = 200;
    }))
    .await;
    auth.user("ada@example.com", "password1").await;
    let sessions = "select count(*) from auth.sessions";

    // The hook's own error object: its status and message.
    create_hook(
        &auth,
        "custom_access_token_hook",
        "begin return jsonb_build_object('error',
           jsonb_build_object('http_code', 403, 'message', 'Access denied: suspended')); end",
    )
    .await;
    let refused = auth.sign_in("ada@example.com", "password1").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.body["msg"], "Access denied: suspended");
    assert_eq!(refused.body["code"], 403);
    assert_eq!(
        count(&auth, sessions).await,
        0,
        "no session was left behind"
    );

    // Claims GoTrue requires, taken out: 500 with the schema's complaints.
    create_hook(
        &auth,
        "custom_access_token_hook",
        "begin return jsonb_build_object('claims', (event->'claims') - 'aal' - 'session_id'); end",
    )
    .await;
    let refused = auth.sign_in("ada@example.com", "password1").await;
    assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
    let msg = refused.body["msg"].as_str().unwrap();
    assert!(
        msg.starts_with("output claims do not conform to the expected schema:")
            && msg.contains("aal is required")
            && msg.contains("session_id is required"),
        "{msg}"
    );
    // No claims at all.
    create_hook(
        &auth,
        "custom_access_token_hook",
        "begin return '{}'::jsonb; end",
    )
    .await;
    let refused = auth.sign_in("ada@example.com", "password1").await;
    assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(refused.body["msg"], "output claims field is missing");

    // An exception, a statement that outlives the timeout, a function the
    // auth role may not run: GoTrue's 500 naming the hook, and nothing of
    // the function's text.
    let uri = "pg-functions://postgres/public/custom_access_token_hook";
    for body in [
        "begin raise exception 'secret detail 42'; end",
        "begin perform pg_sleep(5); return event; end",
    ] {
        create_hook(&auth, "custom_access_token_hook", body).await;
        let refused = auth.sign_in("ada@example.com", "password1").await;
        assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(
            refused.body["msg"],
            format!("Error running hook URI: {uri}"),
            "{body}"
        );
        assert!(!refused.body.to_string().contains("secret detail"));
    }
    auth.app
        .db
        .client()
        .await
        .batch_execute(
            "create or replace function public.custom_access_token_hook(event jsonb) returns jsonb
               language sql as $$ select event $$;
             revoke execute on function public.custom_access_token_hook from supabase_auth_admin;",
        )
        .await
        .unwrap();
    let refused = auth.sign_in("ada@example.com", "password1").await;
    assert_eq!(refused.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(count(&auth, sessions).await, 0);
    // A working hook again: sign-ins work on the same pooled connections.
    create_hook(&auth, "custom_access_token_hook", "begin return event; end").await;
    let ok = auth.sign_in("ada@example.com", "password1").await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
}

#[tokio::test]
async fn before_user_created_hook_refuses_sign_ups() {
    let auth = Auth::with(config(|c| {
        c.auth.email_autoconfirm = true;
        c.auth.hook.before_user_created = pg_hook("before_user_created_hook");
    }))
    .await;
    auth.app
        .db
        .client()
        .await
        .batch_execute(
            "create table public.seen_users (payload jsonb);
             grant all on public.seen_users to supabase_auth_admin;",
        )
        .await
        .unwrap();
    create_hook(
        &auth,
        "before_user_created_hook",
        "begin
           insert into public.seen_users values (event);
           if event->'user'->>'email' like '%@blocked.test' then
             return jsonb_build_object('error', jsonb_build_object('http_code', 400,
               'message', 'Sign-ups from this domain are closed'));
           end if;
           return '{}'::jsonb;
         end",
    )
    .await;
    let refused = auth
        .post(
            "/signup",
            json!({"email": "eve@blocked.test", "password": "password1"}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert_eq!(refused.body["msg"], "Sign-ups from this domain are closed");
    assert_eq!(
        count(&auth, "select count(*) from auth.users").await,
        0,
        "the user was never made"
    );
    // The admin API is refused the same way.
    let refused = auth
        .admin(
            Method::POST,
            "/admin/users",
            Some(json!({"email": "mallory@blocked.test", "password": "password1"})),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);

    let ok = auth
        .post(
            "/signup",
            json!({"email": "ada@example.com", "password": "password1", "data": {"plan": "pro"}}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{:?}", ok.body);
    let seen = auth
        .sql("select payload from public.seen_users where payload->'user'->>'email' = 'ada@example.com'")
        .await;
    let payload: Value = seen[0].get(0);
    assert_eq!(payload["user"]["user_metadata"]["plan"], "pro");
    assert_eq!(payload["user"]["id"], ok.body["user"]["id"]);
    assert_eq!(payload["metadata"]["name"], "before-user-created");
}

#[tokio::test]
async fn password_verification_attempt_hook_rejects_and_signs_out() {
    let auth = Auth::with(config(|c| {
        c.auth.hook.password_verification_attempt = pg_hook("password_attempt_hook");
    }))
    .await;
    create_hook(
        &auth,
        "password_attempt_hook",
        "begin
           if (event->>'valid')::boolean then
             return jsonb_build_object('decision', 'continue');
           end if;
           return jsonb_build_object('decision', 'reject',
             'message', 'Too many attempts', 'should_logout_user', true);
         end",
    )
    .await;
    auth.user("ada@example.com", "password1").await;
    let session = auth.session("ada@example.com", "password1").await;

    let rejected = auth.sign_in("ada@example.com", "wrong-password").await;
    assert_eq!(rejected.status, StatusCode::BAD_REQUEST);
    assert_eq!(rejected.code(), "invalid_credentials");
    assert_eq!(rejected.body["msg"], "Too many attempts");
    // should_logout_user: the earlier session is gone.
    let refresh = auth.refresh(&token(&session, "refresh_token")).await;
    assert_eq!(
        refresh.status,
        StatusCode::BAD_REQUEST,
        "{:?}",
        refresh.body
    );
    // An unknown address never reaches the hook: GoTrue's wording.
    let unknown = auth.sign_in("nobody@example.com", "whatever1").await;
    assert_eq!(unknown.body["msg"], "Invalid login credentials");
    // The right password continues.
    auth.session("ada@example.com", "password1").await;

    // A rejection without a message gets GoTrue's.
    create_hook(
        &auth,
        "password_attempt_hook",
        "begin return jsonb_build_object('decision', 'reject'); end",
    )
    .await;
    let rejected = auth.sign_in("ada@example.com", "password1").await;
    assert_eq!(rejected.code(), "invalid_credentials");
    assert_eq!(
        rejected.body["msg"],
        "Further password verification attempts will be rejected."
    );
}

#[tokio::test]
async fn mfa_verification_attempt_hook_rejects_and_signs_out() {
    let auth = Auth::with(config(|c| {
        c.auth.hook.mfa_verification_attempt = pg_hook("mfa_attempt_hook");
    }))
    .await;
    create_hook(
        &auth,
        "mfa_attempt_hook",
        "begin
           if event->>'factor_type' = 'totp' and not (event->>'valid')::boolean then
             return jsonb_build_object('decision', 'reject', 'message', 'Locked after a wrong code');
           end if;
           return jsonb_build_object('decision', 'continue');
         end",
    )
    .await;
    auth.user("mfa@example.com", "password1").await;
    let enroll = |access: String| {
        let auth = &auth;
        async move {
            let enrolled = auth
                .call(
                    Method::POST,
                    "/factors",
                    Some(&access),
                    Some(json!({"factor_type": "totp"})),
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
            let challenge = challenge.body["id"].as_str().unwrap().to_owned();
            (factor, secret, challenge)
        }
    };
    // A right code continues.
    let access = auth.access_token("mfa@example.com", "password1").await;
    let (factor, secret, challenge) = enroll(access.clone()).await;
    let now = u64::try_from(TestApp::now()).unwrap();
    let code = sovra_auth::crypto::totp_at(&secret, now / 30);
    let verified = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/verify"),
            Some(&access),
            Some(json!({"challenge_id": challenge, "code": code})),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
    let aal2 = token(&verified.body, "access_token");

    // A wrong one is rejected by the hook: 403, every session ended.
    let challenge = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/challenge"),
            Some(&aal2),
            Some(json!({})),
        )
        .await;
    let challenge = challenge.body["id"].as_str().unwrap().to_owned();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let rejected = auth
        .call(
            Method::POST,
            &format!("/factors/{factor}/verify"),
            Some(&aal2),
            Some(json!({"challenge_id": challenge, "code": wrong})),
        )
        .await;
    assert_eq!(
        rejected.status,
        StatusCode::FORBIDDEN,
        "{:?}",
        rejected.body
    );
    assert_eq!(rejected.code(), "mfa_verification_rejected");
    assert_eq!(rejected.body["msg"], "Locked after a wrong code");
    assert_eq!(
        count(&auth, "select count(*) from auth.sessions").await,
        0,
        "the user was signed out everywhere"
    );
    let me = auth.call(Method::GET, "/user", Some(&aal2), None).await;
    assert_eq!(me.code(), "session_not_found");
}

/// What the receiver saw: headers and body of each request.
type Seen = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A local HTTP receiver standing in for an Edge Function: it records
/// each request and answers with `respond(body)`.
async fn receiver(
    respond: impl Fn(&Value) -> (StatusCode, Value) + Send + Sync + 'static,
) -> (String, Seen) {
    let seen: Seen = Arc::new(Mutex::new(Vec::new()));
    let respond = Arc::new(respond);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let seen = seen.clone();
                let respond = respond.clone();
                async move {
                    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    seen.lock().unwrap().push((headers, body.to_vec()));
                    let (status, answer) = respond(&value);
                    if answer.get("sleep_ms").is_some() {
                        let ms = answer["sleep_ms"].as_u64().unwrap();
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                    (status, axum::Json(answer))
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, seen)
}

/// HMAC-SHA-256, written out here so that the test checks Sovra's
/// signatures independently of Sovra's code.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner: Vec<u8> = block.iter().map(|b| b ^ 0x36).collect();
    let outer: Vec<u8> = block.iter().map(|b| b ^ 0x5c).collect();
    let mut h = Sha256::new();
    h.update(&inner);
    h.update(message);
    let inner_hash = h.finalize();
    let mut h = Sha256::new();
    h.update(&outer);
    h.update(inner_hash);
    h.finalize().into()
}

/// Verifies a request as a Standard Webhooks receiver does.
fn verify_standard_webhook(headers: &axum::http::HeaderMap, body: &[u8]) {
    use base64::Engine as _;
    let id = headers["webhook-id"].to_str().unwrap();
    let timestamp = headers["webhook-timestamp"].to_str().unwrap();
    let age = TestApp::now() - timestamp.parse::<i64>().unwrap();
    assert!(age.abs() < 300, "timestamp within tolerance");
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET_B64)
        .unwrap();
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(body);
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(hmac_sha256(&key, &signed))
    );
    let presented = headers["webhook-signature"].to_str().unwrap();
    assert!(
        presented.split(' ').any(|s| s == expected),
        "signature {presented} does not verify"
    );
    assert_eq!(headers["content-type"], "application/json");
}

#[tokio::test]
async fn send_email_http_hook_gets_signed_requests_instead_of_the_mailbox() {
    let (url, seen) = receiver(|_| (StatusCode::OK, json!({}))).await;
    let auth = Auth::with(config(|c| {
        c.auth.hook.send_email = http_hook(&url);
    }))
    .await;
    let signup = auth
        .post(
            "/signup",
            json!({"email": "ada@example.com", "password": "password1"}),
        )
        .await;
    assert_eq!(signup.status, StatusCode::OK, "{:?}", signup.body);
    assert_eq!(auth.mail_count("ada@example.com").await, 0, "no mail sent");
    let (headers, body) = seen.lock().unwrap().last().cloned().unwrap();
    verify_standard_webhook(&headers, &body);
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["user"]["email"], "ada@example.com");
    assert_eq!(payload["email_data"]["email_action_type"], "signup");
    assert_eq!(payload["metadata"]["name"], "send-email");
    let code = payload["email_data"]["token"].as_str().unwrap();
    assert_eq!(code.len(), 6);
    // The code the hook got confirms the address.
    let verified = auth
        .post(
            "/verify",
            json!({"type": "signup", "email": "ada@example.com", "token": code}),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
    // So does the token hash (the link's).
    let recover = auth
        .post("/recover", json!({"email": "ada@example.com"}))
        .await;
    assert_eq!(recover.status, StatusCode::OK, "{:?}", recover.body);
    let (headers, body) = seen.lock().unwrap().last().cloned().unwrap();
    verify_standard_webhook(&headers, &body);
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["email_data"]["email_action_type"], "recovery");
    let verified = auth
        .post(
            "/verify",
            json!({"type": "recovery", "token_hash": payload["email_data"]["token_hash"]}),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
}

#[tokio::test]
async fn http_hook_failures_are_gotrues() {
    let (url, _) = receiver(|input| {
        let email = input["user"]["email"].as_str().unwrap_or("");
        match email.split('@').next().unwrap_or("") {
            "slow" => (StatusCode::OK, json!({"sleep_ms": 3000})),
            "limited" => (
                StatusCode::OK,
                json!({"error": {"http_code": 429, "message": "Mail quota exceeded"}}),
            ),
            "broken" => (StatusCode::BAD_GATEWAY, json!({})),
            _ => (StatusCode::OK, json!({})),
        }
    })
    .await;
    let auth = Auth::with(config(|c| {
        c.auth.hook.send_email = http_hook(&url);
        c.auth.hook.http_timeout_ms = 300;
    }))
    .await;
    let signup = |local: &str| {
        let body = json!({"email": format!("{local}@example.com"), "password": "password1"});
        let auth = &auth;
        async move { auth.post("/signup", body).await }
    };
    let limited = signup("limited").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.body["msg"], "Mail quota exceeded");
    let slow = signup("slow").await;
    assert_eq!(slow.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(slow.code(), "hook_timeout");
    let broken = signup("broken").await;
    assert_eq!(broken.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        broken.body["msg"],
        "Unexpected status code returned from hook: 502"
    );
    assert_eq!(signup("fine").await.status, StatusCode::OK);

    // A hook nobody listens on: GoTrue's answer after its retries.
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{addr}/hook")
    };
    let auth = Auth::with(config(|c| {
        c.auth.hook.send_email = http_hook(&closed);
    }))
    .await;
    let refused = auth
        .post(
            "/signup",
            json!({"email": "ada@example.com", "password": "password1"}),
        )
        .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.code(), "hook_timeout_after_retry");
}

#[tokio::test]
async fn custom_access_token_http_hook_is_signed_and_its_claims_used() {
    let (url, seen) = receiver(|input| {
        let mut claims = input["claims"].clone();
        claims["user_role"] = json!("auditor");
        (StatusCode::OK, json!({"claims": claims}))
    })
    .await;
    let auth = Auth::with(config(|c| {
        c.auth.hook.custom_access_token = http_hook(&url);
    }))
    .await;
    auth.user("ada@example.com", "password1").await;
    let session = auth.session("ada@example.com", "password1").await;
    assert_eq!(
        claims(&token(&session, "access_token"))["user_role"],
        "auditor"
    );
    let (headers, body) = seen.lock().unwrap().last().cloned().unwrap();
    verify_standard_webhook(&headers, &body);
    let input: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(input["authentication_method"], "password");
}

#[tokio::test]
async fn send_sms_hook_gets_the_code() {
    let auth = Auth::with(config(|c| {
        c.auth.hook.send_sms = pg_hook("send_sms_hook");
    }))
    .await;
    auth.app
        .db
        .client()
        .await
        .batch_execute(
            "create table public.sms_outbox (phone text, otp text, payload jsonb);
             grant all on public.sms_outbox to supabase_auth_admin;",
        )
        .await
        .unwrap();
    create_hook(
        &auth,
        "send_sms_hook",
        "begin
           insert into public.sms_outbox values (event->'user'->>'phone', event->'sms'->>'otp', event);
           return '{}'::jsonb;
         end",
    )
    .await;
    let sent = auth.post("/otp", json!({"phone": "+15555550100"})).await;
    assert_eq!(sent.status, StatusCode::OK, "{:?}", sent.body);
    let rows = auth.sql("select phone, otp from public.sms_outbox").await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].get::<_, String>(0).ends_with("15555550100"));
    let otp: String = rows[0].get(1);
    let verified = auth
        .post(
            "/verify",
            json!({"type": "sms", "phone": "+15555550100", "token": otp}),
        )
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{:?}", verified.body);
}

/// The RBAC recipe of docs/auth.md, as written there (the docs quote this
/// file; `rbac_recipe_in_the_docs_is_the_tested_one` checks they agree).
const RBAC_RECIPE: &str = include_str!("../../../docs/examples/rbac.sql");

#[test]
fn rbac_recipe_in_the_docs_is_the_tested_one() {
    let docs = include_str!("../../../docs/auth.md");
    let body: String = RBAC_RECIPE
        .lines()
        .skip_while(|line| line.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        docs.contains(body.trim()),
        "docs/auth.md must quote docs/examples/rbac.sql (after its header comment) verbatim"
    );
}

#[tokio::test]
async fn rbac_recipe_a_moderator_sees_rows_a_plain_user_does_not() {
    let auth = Auth::with(config(|c| {
        c.auth.hook.custom_access_token = pg_hook("custom_access_token_hook");
    }))
    .await;
    auth.app
        .db
        .client()
        .await
        .batch_execute(RBAC_RECIPE)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while auth
        .app
        .tenant
        .rest
        .cache()
        .get()
        .and_then(|c| c.relation("public", "posts").cloned())
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "schema cache never reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ada = auth.user_id("ada@example.com", "password1").await;
    auth.user_id("bob@example.com", "password1").await;
    let mod_id = auth.user_id("mod@example.com", "password1").await;
    auth.app
        .db
        .client()
        .await
        .execute(
            "insert into public.user_roles (user_id, role) values ($1::text::uuid, 'moderator')",
            &[&mod_id],
        )
        .await
        .unwrap();

    let rest = |path: &str, access: &str| {
        let url = format!("{}/rest/v1/{path}", auth.app.url);
        let request = auth
            .http
            .get(url)
            .header("apikey", &auth.app.anon_key)
            .bearer_auth(access);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let ada_token = auth.access_token("ada@example.com", "password1").await;
    assert_eq!(claims(&ada_token)["user_role"], Value::Null);
    let posted = auth
        .http
        .post(format!("{}/rest/v1/posts", auth.app.url))
        .header("apikey", &auth.app.anon_key)
        .bearer_auth(&ada_token)
        .json(&json!({"body": "hello from ada"}))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), StatusCode::CREATED);

    let bob_token = auth.access_token("bob@example.com", "password1").await;
    let mod_token = auth.access_token("mod@example.com", "password1").await;
    assert_eq!(claims(&mod_token)["user_role"], "moderator");

    let (status, rows) = rest("posts?select=body,author", &ada_token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows.as_array().unwrap().len(), 1, "the author sees hers");
    let (_, rows) = rest("posts?select=body", &bob_token).await;
    assert_eq!(rows, json!([]), "a plain user sees nothing");
    let (_, rows) = rest("posts?select=body,author", &mod_token).await;
    assert_eq!(rows, json!([{"body": "hello from ada", "author": ada}]));
    // The role table itself is closed to the API roles.
    let (status, _) = rest("user_roles", &mod_token).await;
    assert!(
        status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED,
        "{status}"
    );
    // A forged claim does not help: only the hook's token carries it,
    // and the role is read afresh at the next sign-in or refresh.
    auth.app
        .db
        .client()
        .await
        .execute(
            "delete from public.user_roles where user_id = $1::text::uuid",
            &[&mod_id],
        )
        .await
        .unwrap();
    let session = auth.session("mod@example.com", "password1").await;
    let (_, rows) = rest("posts?select=body", &token(&session, "access_token")).await;
    assert_eq!(rows, json!([]), "demoted at the next token");
}
