//! Auth hardening through the real router and a real database: the 72-byte
//! password limit on every path that sets or checks a password, no auth
//! connection held while hashing or while mail is sent, the bounded hashing
//! queue, and redirect URL patterns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};
use sovra_auth::{AuthConfig, AuthRequest, AuthService};
use sovra_test_support::TestApp;
use support::auth_client::{Auth as Client, config};

const LONG: &str = "0123456789012345678901234567890123456789012345678901234567890123456789abc";
const TOO_LONG_MESSAGE: &str = "Password cannot be longer than 72 characters";

fn assert_too_long((status, body): (StatusCode, Value)) {
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error_code"], "validation_failed", "{body}");
    assert_eq!(body["msg"], TOO_LONG_MESSAGE, "{body}");
}

#[tokio::test]
async fn passwords_over_72_bytes_are_refused_on_every_path() {
    let c = Client::with(config(|c| c.auth.email_autoconfirm = true)).await;
    assert_eq!(LONG.len(), 73);
    let post = reqwest::Method::POST;
    let put = reqwest::Method::PUT;
    // Sign-up.
    assert_too_long(
        c.call_pair(
            post.clone(),
            "/signup",
            None,
            json!({"email": "long@example.com", "password": LONG}),
        )
        .await,
    );
    // 72 bytes are fine; multi-byte characters count as bytes.
    let (status, body) = c
        .call_pair(
            post.clone(),
            "/signup",
            None,
            json!({"email": "ok@example.com", "password": &LONG[..72]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_too_long(
        c.call_pair(
            post.clone(),
            "/signup",
            None,
            json!({"email": "utf8@example.com", "password": "é".repeat(37)}),
        )
        .await,
    );
    // Half a megabyte is refused the same way, without hashing it.
    assert_too_long(
        c.call_pair(
            post.clone(),
            "/signup",
            None,
            json!({"email": "huge@example.com", "password": "x".repeat(1 << 19)}),
        )
        .await,
    );
    // Sign-in, for a known and an unknown address.
    c.user("user@example.com", "first-password").await;
    for email in ["user@example.com", "nobody@example.com"] {
        assert_too_long(
            c.call_pair(
                post.clone(),
                "/token?grant_type=password",
                None,
                json!({"email": email, "password": LONG}),
            )
            .await,
        );
    }
    // PUT /user (the recovery path sets the password here too), for the new
    // and the current password.
    let token = c.access_token("user@example.com", "first-password").await;
    assert_too_long(
        c.call_pair(
            put.clone(),
            "/user",
            Some(&token),
            json!({"password": LONG}),
        )
        .await,
    );
    assert_too_long(
        c.call_pair(
            put.clone(),
            "/user",
            Some(&token),
            json!({"password": "second-password", "current_password": LONG}),
        )
        .await,
    );
    // Admin create and update, and a sign-up link.
    assert_too_long(
        c.admin_pair(
            post.clone(),
            "/admin/users",
            json!({"email": "admin-made@example.com", "password": LONG}),
        )
        .await,
    );
    let id = c.user("victim@example.com", "first-password").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_too_long(
        c.admin_pair(
            put.clone(),
            &format!("/admin/users/{id}"),
            json!({"password": LONG}),
        )
        .await,
    );
    assert_too_long(
        c.admin_pair(
            post.clone(),
            "/admin/generate_link",
            json!({"type": "signup", "email": "link@example.com", "password": LONG}),
        )
        .await,
    );
    // Nothing was changed by the refusals.
    c.access_token("user@example.com", "first-password").await;
    c.access_token("victim@example.com", "first-password").await;
    // The legitimate change still works.
    let (status, body) = c
        .call_pair(
            put,
            "/user",
            Some(&token),
            json!({"password": "second-password", "current_password": "first-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    c.access_token("user@example.com", "second-password").await;
}

/// An auth service on the test database with a pool of one connection, so
/// that any request holding a connection blocks every other.
async fn single_connection_service(
    app: &TestApp,
    edit: impl FnOnce(&mut AuthConfig),
) -> AuthService {
    let mut db = app.db.config();
    db.options("-c role=supabase_auth_admin");
    let pool = sovra_pg::pool::build(db, 1, Duration::from_secs(2)).unwrap();
    let mut config = AuthConfig::new(&app.url, app.data_dir.join("mailbox-single"));
    config.email_autoconfirm = true;
    config.hash_concurrency = 1;
    config.hash_queue = 8;
    edit(&mut config);
    AuthService::new(config, pool).unwrap()
}

async fn call(
    app: &TestApp,
    auth: &AuthService,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut headers = HeaderMap::new();
    if let Some(token) = token {
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let (path, query) = path
        .split_once('?')
        .map_or((path, None), |(p, q)| (p, Some(q)));
    let response = auth
        .handle(AuthRequest {
            method: &method,
            path,
            query,
            headers: &headers,
            body: body.to_string().into(),
            keys: &app.tenant.keys,
            peer: Some([127, 0, 0, 1].into()),
        })
        .await;
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Waits (without asserting how long) until `auth` has a hash in flight.
async fn hashing(auth: &AuthService) {
    for _ in 0..20_000 {
        if auth.hashes_in_flight() > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("no hash started");
}

/// A well-formed argon2id hash with 8 passes (four times the usual work):
/// checking any password against it keeps the hashing thread busy.
const SLOW_HASH: &str =
    "$argon2id$v=19$m=19456,t=8,p=1$c2xvd3NhbHRzbG93c2FsdA$c2xvd2hhc2hzbG93aGFzaHNsb3doYXNoc2xvd2g";

#[tokio::test]
async fn no_connection_is_held_while_hashing() {
    let c = Client::with(config(|c| c.auth.email_autoconfirm = true)).await;
    let (status, body) = c
        .admin_pair(
            reqwest::Method::POST,
            "/admin/users",
            json!({"email": "slow@example.com", "password_hash": SLOW_HASH, "email_confirm": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    c.user("fast@example.com", "fast-password").await;
    let token = c.access_token("fast@example.com", "fast-password").await;
    let auth = std::sync::Arc::new(single_connection_service(&c.app, |_| {}).await);

    // A sign-in waits for the hasher; meanwhile the only connection is free.
    let signing_in = {
        let auth = auth.clone();
        let app_keys = c.app.tenant.keys.clone();
        tokio::spawn(async move {
            let headers = HeaderMap::new();
            let response = auth
                .handle(AuthRequest {
                    method: &Method::POST,
                    path: "/token",
                    query: Some("grant_type=password"),
                    headers: &headers,
                    body: json!({"email": "slow@example.com", "password": "guess"})
                        .to_string()
                        .into(),
                    keys: &app_keys,
                    peer: Some([127, 0, 0, 1].into()),
                })
                .await;
            response.status()
        })
    };
    hashing(&auth).await;
    let (status, body) = call(&c.app, &auth, Method::GET, "/user", Some(&token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["email"], "fast@example.com");
    assert_eq!(signing_in.await.unwrap(), StatusCode::BAD_REQUEST);

    // PUT /user: the checks and the new hash run with no connection held.
    let updating = {
        let auth = auth.clone();
        let app_keys = c.app.tenant.keys.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            let response = auth
                .handle(AuthRequest {
                    method: &Method::PUT,
                    path: "/user",
                    query: None,
                    headers: &headers,
                    body: json!({"password": "new-fast-password", "current_password": "fast-password"})
                        .to_string()
                        .into(),
                    keys: &app_keys,
                    peer: Some([127, 0, 0, 1].into()),
                })
                .await;
            response.status()
        })
    };
    hashing(&auth).await;
    let (status, body) = call(&c.app, &auth, Method::GET, "/user", Some(&token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(updating.await.unwrap(), StatusCode::OK);
    c.access_token("fast@example.com", "new-fast-password")
        .await;
}

#[tokio::test]
async fn a_full_hashing_queue_refuses_with_429() {
    let c = Client::with(config(|c| c.auth.email_autoconfirm = true)).await;
    let (status, _) = c
        .admin_pair(
            reqwest::Method::POST,
            "/admin/users",
            json!({"email": "slow@example.com", "password_hash": SLOW_HASH, "email_confirm": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // One hashing thread and no queue: while it works, others are refused.
    let auth = std::sync::Arc::new(
        single_connection_service(&c.app, |config| config.hash_queue = 0).await,
    );
    let busy = {
        let auth = auth.clone();
        let keys = c.app.tenant.keys.clone();
        tokio::spawn(async move {
            let headers = HeaderMap::new();
            auth.handle(AuthRequest {
                method: &Method::POST,
                path: "/token",
                query: Some("grant_type=password"),
                headers: &headers,
                body: json!({"email": "slow@example.com", "password": "guess"})
                    .to_string()
                    .into(),
                keys: &keys,
                peer: Some([127, 0, 0, 2].into()),
            })
            .await
            .status()
        })
    };
    hashing(&auth).await;
    let (status, body) = call(
        &c.app,
        &auth,
        Method::POST,
        "/signup",
        None,
        json!({"email": "new@example.com", "password": "a-password"}),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error_code"], "over_request_rate_limit");
    assert_eq!(busy.await.unwrap(), StatusCode::BAD_REQUEST);
    // Capacity comes back once the hash has finished.
    let (status, body) = call(
        &c.app,
        &auth,
        Method::POST,
        "/signup",
        None,
        json!({"email": "new@example.com", "password": "a-password"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn mail_is_sent_after_commit_with_no_connection_held() {
    let c = Client::with(config(|_| {})).await;
    // An SMTP server that accepts and then never answers.
    let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let smtp_url = format!("smtp://{}", smtp.local_addr().unwrap());
    let auth = std::sync::Arc::new(
        single_connection_service(&c.app, |config| {
            config.email_autoconfirm = false;
            config.smtp_url = Some(smtp_url);
        })
        .await,
    );
    let signing_up = {
        let auth = auth.clone();
        let keys = c.app.tenant.keys.clone();
        tokio::spawn(async move {
            let headers = HeaderMap::new();
            auth.handle(AuthRequest {
                method: &Method::POST,
                path: "/signup",
                query: None,
                headers: &headers,
                body: json!({"email": "mail@example.com", "password": "a-password"})
                    .to_string()
                    .into(),
                keys: &keys,
                peer: Some([127, 0, 0, 1].into()),
            })
            .await
            .status()
        })
    };
    // The confirmation is being sent (and stalls)...
    let (_stalled, _) = smtp.accept().await.unwrap();
    // ...after its transaction committed: the user exists, no transaction
    // is open, and the only connection serves another request.
    let db = c.app.db.client().await;
    let row = db
        .query_one(
            "select count(*) from auth.users where email = 'mail@example.com' and confirmation_sent_at is not null",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1);
    let row = db
        .query_one(
            "select count(*) from pg_stat_activity
              where datname = current_database() and state like 'idle in transaction%'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    let (status, body) = call(
        &c.app,
        &auth,
        Method::POST,
        "/token?grant_type=password",
        None,
        json!({"email": "nobody@example.com", "password": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error_code"], "invalid_credentials");
    signing_up.abort();
}

#[tokio::test]
async fn redirect_patterns_do_not_leak_links_to_other_hosts() {
    let c = Client::with(config(|c| {
        c.auth.email_max_frequency = 0;
        c.auth.site_url = Some("https://app.example.com".into());
        c.auth.redirect_urls = Some("https://*-team.vercel.app/**".into());
    }))
    .await;
    c.user("victim@example.com", "a-password").await;
    let mailbox = |c: &Client| {
        let dir = c.app.data_dir.join("mailbox");
        sovra_auth::mail::read_mailbox(&dir, Some("victim@example.com")).unwrap()
    };
    for (redirect, kept) in [
        ("https://feature-x-team.vercel.app/auth/callback", true),
        ("https://feature-x-team.vercel.app/cb?next=/account", true),
        ("https://evil.com?-team.vercel.app/", false),
        ("https://evil.com#-team.vercel.app/", false),
        ("https://evil.com@x-team.vercel.app/", false),
        ("https://x-team.vercel.app@evil.com/", false),
        ("https://a.evil-team.vercel.app/", false),
        ("https://evil%2ecom-team.vercel.app/", false),
        ("https://evil.com\\x-team.vercel.app/", false),
    ] {
        let before = mailbox(&c).len();
        let path = format!(
            "/recover?redirect_to={}",
            sovra_auth::crypto::percent_encode(redirect)
        );
        let (status, body) = c
            .call_pair(
                reqwest::Method::POST,
                &path,
                None,
                json!({"email": "victim@example.com"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let messages = mailbox(&c);
        assert_eq!(messages.len(), before + 1);
        let body = &messages.last().unwrap().body;
        let encoded = sovra_auth::crypto::percent_encode(redirect);
        let expected = if kept {
            encoded
        } else {
            sovra_auth::crypto::percent_encode("https://app.example.com")
        };
        assert!(
            body.contains(&format!("redirect_to={expected}")),
            "{redirect}: {body}"
        );
    }
}

#[tokio::test]
async fn invalid_redirect_patterns_stop_the_service() {
    let app = TestApp::spawn().await;
    let pool = sovra_pg::pool::build(app.db.config(), 1, Duration::from_secs(2)).unwrap();
    let mut config = AuthConfig::new(&app.url, app.data_dir.join("m"));
    config.redirect_urls = vec!["https://user@*.example.com/**".into()];
    let err = AuthService::new(config, pool).unwrap_err();
    assert!(err.contains("auth.redirect_urls"), "{err}");
}
