//! HTTP tests of the server's own endpoints and of the JWT gateway, through
//! the real router on a real PostgreSQL database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use sovra_config::Config;
use sovra_test_support::TestApp;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn get_json(url: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut request = client().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let app = TestApp::spawn().await;
    let (status, body) = get_json(&format!("{}/health", app.url), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    let (status, body) = get_json(&format!("{}/ready", app.url), &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let response = client()
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.unwrap();
    assert!(
        text.contains("sovra_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"}"),
        "{text}"
    );
    assert!(
        text.contains("sovra_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(
        text.contains("sovra_db_pool_max_connections{tenant=\"default\"} 16"),
        "{text}"
    );
    assert!(text.contains("sovra_db_pool_connections"), "{text}");
}

#[tokio::test]
async fn metrics_token_is_required_when_configured() {
    let mut config = Config::default();
    config.metrics.token = Some("scrape-token-0123456789".to_owned());
    let app = TestApp::spawn_with(config).await;
    let url = format!("{}/metrics", app.url);
    for authorization in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some("Bearer scrape-token-012345678"),
        Some("Bearer scrape-token-01234567890"),
        Some("Basic c2NyYXBlLXRva2VuLTAxMjM0NTY3ODk="),
        Some("scrape-token-0123456789"),
        Some("Bearer"),
        Some("Bearer "),
    ] {
        let mut request = client().get(&url);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{authorization:?}"
        );
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains("metrics.token"),
            "{body}"
        );
    }
    // Non-UTF-8 header bytes are refused the same way, not a 500.
    let response = client()
        .get(&url)
        .header(
            "authorization",
            reqwest::header::HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The apikey or a service_role token is not the metrics token.
    let response = client()
        .get(&url)
        .header("apikey", &app.service_role_key)
        .bearer_auth(&app.service_role_key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    for authorization in [
        "Bearer scrape-token-0123456789",
        "bearer scrape-token-0123456789",
    ] {
        let response = client()
            .get(&url)
            .header("authorization", authorization)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{authorization}");
        let text = response.text().await.unwrap();
        assert!(text.contains("sovra_uptime_seconds"), "{text}");
    }
    // Other endpoints are not affected.
    let (status, _) = get_json(&format!("{}/health", app.url), &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn unsafe_request_ids_are_replaced_by_fresh_ones() {
    let app = TestApp::spawn().await;
    let url = format!("{}/health", app.url);
    let long = "a".repeat(65);
    for hostile in [
        "forged status=500 user=admin",
        "with\ttab",
        "quote\"d",
        "semi;colon",
        "slash/../x",
        long.as_str(),
        "",
    ] {
        let response = client()
            .get(&url)
            .header("x-request-id", hostile)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let id = response.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, hostile);
        assert_eq!(id.len(), 36, "a fresh uuid for {hostile:?}: {id}");
    }
    let response = client()
        .get(&url)
        .header(
            "x-request-id",
            reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"].len(), 36);
    // Two ids: neither is trusted.
    let response = client()
        .get(&url)
        .header("x-request-id", "first-id")
        .header("x-request-id", "second-id")
        .send()
        .await
        .unwrap();
    let ids: Vec<_> = response.headers().get_all("x-request-id").iter().collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(ids[0].len(), 36);
    // Safe ids, up to 64 characters of [A-Za-z0-9._-], are kept.
    let longest = "Z".repeat(64);
    for safe in ["abc-123", "trace.ID_42", longest.as_str()] {
        let response = client()
            .get(&url)
            .header("x-request-id", safe)
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-request-id"], safe);
    }
}

#[tokio::test]
async fn ready_fails_when_the_database_is_gone() {
    let app = TestApp::spawn().await;
    let (status, _) = get_json(&format!("{}/ready", app.url), &[]).await;
    assert_eq!(status, StatusCode::OK);
    // Take the database away under the running server.
    let mut postgres = app.db.config();
    postgres.dbname("postgres");
    let admin = sovra_pg::connect_one(&postgres).await.unwrap();
    admin
        .batch_execute(&format!("drop database \"{}\" with (force)", app.db.name))
        .await
        .unwrap();
    let (status, body) = get_json(&format!("{}/ready", app.url), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unavailable");
    // Liveness is about the process, not the database.
    let (status, _) = get_json(&format!("{}/health", app.url), &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn request_ids_are_set_and_propagated() {
    let app = TestApp::spawn().await;
    let response = client()
        .get(format!("{}/health", app.url))
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 36, "a uuid: {id}");
    let response = client()
        .get(format!("{}/health", app.url))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
}

#[tokio::test]
async fn cors_preflight_is_answered_as_supabase_does() {
    let app = TestApp::spawn().await;
    let response = client()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/rest/v1/todos", app.url),
        )
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "PATCH")
        .header(
            "access-control-request-headers",
            "apikey,authorization,x-client-info,content-type,prefer",
        )
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let headers = response.headers();
    assert_eq!(headers["access-control-allow-origin"], "*");
    let methods = headers["access-control-allow-methods"].to_str().unwrap();
    assert!(
        methods.contains("PATCH") && methods.contains("DELETE"),
        "{methods}"
    );
    let allowed = headers["access-control-allow-headers"].to_str().unwrap();
    assert!(
        allowed.contains("apikey") && allowed.contains("prefer"),
        "{allowed}"
    );

    let response = client()
        .get(format!("{}/health", app.url))
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    let exposed = response.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        exposed.contains("content-range") && exposed.contains("x-sb-error-code"),
        "{exposed}"
    );
}

#[tokio::test]
async fn oversize_bodies_are_refused() {
    let mut config = Config::default();
    config.server.body_limit = 64 * 1024;
    let app = TestApp::spawn_with(config).await;
    let response = client()
        .post(format!("{}/sovra/v1/whoami", app.url))
        .body(vec![b'x'; 128 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn api_keys_map_to_roles() {
    let app = TestApp::spawn().await;
    let url = format!("{}/sovra/v1/whoami", app.url);

    let (status, body) = get_json(&url, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["role"], "anon", "no key: anonymous in compat mode");

    let (status, body) = get_json(&url, &[("apikey", &app.anon_key)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["role"], "anon");

    let (status, body) = get_json(&url, &[("apikey", &app.service_role_key)]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["role"], "service_role");

    // The key may come as a query parameter (the realtime socket does this).
    let (status, body) = get_json(&format!("{url}?apikey={}", app.service_role_key), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["role"], "service_role");

    // A user's token with the anon key: the user's role and claims.
    let token = app.sign(Value::Object(TestApp::user_claims(
        "11111111-1111-1111-1111-111111111111",
    )));
    let bearer = format!("Bearer {token}");
    let (status, body) = get_json(
        &url,
        &[("apikey", &app.anon_key), ("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["role"], "authenticated");
    assert_eq!(
        body["claims"]["sub"],
        "11111111-1111-1111-1111-111111111111"
    );
}

#[tokio::test]
async fn database_sees_the_callers_role_and_claims() {
    let app = TestApp::spawn().await;
    let url = format!("{}/sovra/v1/whoami/db", app.url);
    let (status, body) = get_json(&url, &[("apikey", &app.anon_key)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["current_user"], "anon");
    assert_eq!(body["role"], "anon");
    assert_eq!(body["uid"], Value::Null);

    let (status, body) = get_json(&url, &[("apikey", &app.service_role_key)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["current_user"], "service_role");

    let uid = "22222222-2222-2222-2222-222222222222";
    let token = app.sign(Value::Object(TestApp::user_claims(uid)));
    let (status, body) = get_json(
        &url,
        &[
            ("apikey", &app.anon_key),
            ("authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["current_user"], "authenticated");
    assert_eq!(body["uid"], uid);
    assert_eq!(body["email"], format!("{uid}@example.com"));
    assert_eq!(body["jwt"]["aud"], "authenticated");

    // A validly signed token naming a role that does not exist.
    let mut claims = TestApp::user_claims(uid);
    claims.insert("role".into(), json!("ghost"));
    let token = app.sign(Value::Object(claims));
    let (status, body) = get_json(&url, &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("ghost"),
        "{body}"
    );
}

#[tokio::test]
async fn hostile_claims_are_refused_not_500() {
    let app = TestApp::spawn().await;
    let db = format!("{}/sovra/v1/whoami/db", app.url);
    let uid = "44444444-4444-4444-4444-444444444444";
    let token = |key: &str, value: Value| {
        let mut claims = TestApp::user_claims(uid);
        claims.insert(key.into(), value);
        format!("Bearer {}", app.sign(Value::Object(claims)))
    };
    // Roles `authenticator` may not become: 403, as PostgREST answers.
    for role in ["postgres", "supabase_auth_admin", "authenticator"] {
        let bearer = token("role", json!(role));
        let (status, body) = get_json(&db, &[("authorization", &bearer)]).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{role}: {body}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("permission denied"),
            "{body}"
        );
    }
    // Claims PostgreSQL cannot take as they are: 400 with its message.
    for (key, value) in [("sub", json!("not-a-uuid")), ("sub", json!(42))] {
        let bearer = token(key, value.clone());
        let (status, body) = get_json(&db, &[("authorization", &bearer)]).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}={value}: {body}");
    }
    // A NUL anywhere in the claims cannot reach PostgreSQL (its text has no
    // NUL): refused at the gateway for every service.
    for (key, value) in [
        ("role", json!("anon\u{0}")),
        ("sub", json!("\u{0}")),
        ("email", json!("a\u{0}@example.com")),
        ("app_metadata", json!({"nested": ["\u{0}"]})),
        ("user_metadata", json!({"k\u{0}": 1})),
    ] {
        let bearer = token(key, value);
        for path in [
            "/sovra/v1/whoami/db",
            "/sovra/v1/whoami",
            "/rest/v1/",
            "/storage/v1/bucket",
        ] {
            let (status, body) = get_json(
                &format!("{}{path}", app.url),
                &[("apikey", &app.anon_key), ("authorization", &bearer)],
            )
            .await;
            // Storage answers refused tokens with 400, as Supabase's does.
            assert!(
                status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST,
                "{key} {path}: {status} {body}"
            );
            assert!(body.to_string().contains("NUL"), "{key} {path}: {body}");
        }
    }
    // Well-formed claims still work.
    let (status, body) = get_json(
        &db,
        &[("authorization", &token("email", json!("ok@example.com")))],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn bad_credentials_are_refused() {
    let app = TestApp::spawn().await;
    let url = format!("{}/sovra/v1/whoami", app.url);
    let now = TestApp::now();

    let (status, body) = get_json(&url, &[("apikey", "not-a-key")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "Invalid API key");

    // A user token is not an API key.
    let user = app.sign(Value::Object(TestApp::user_claims(
        "33333333-3333-3333-3333-333333333333",
    )));
    let (status, body) = get_json(&url, &[("apikey", &user)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "Invalid API key");

    let mut expired = TestApp::user_claims("33333333-3333-3333-3333-333333333333");
    expired.insert("exp".into(), json!(now - 120));
    let expired = app.sign(Value::Object(expired));
    let (status, body) = get_json(&url, &[("authorization", &format!("Bearer {expired}"))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "PGRST301");
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );

    // Signed with a different secret.
    let mut parts: Vec<String> = user.split('.').map(str::to_owned).collect();
    parts[2] = "AAAA".repeat(11);
    let forged = parts.join(".");
    let (status, body) = get_json(&url, &[("authorization", &format!("Bearer {forged}"))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["message"].as_str().unwrap().contains("signature"),
        "{body}"
    );

    // alg: none with the claims of a service_role.
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&json!({"role": "service_role", "exp": now + 3600}).to_string())
    );
    let (status, _) = get_json(&url, &[("authorization", &format!("Bearer {none}"))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    for malformed in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer not.a.jwt",
        "Bearer ....",
    ] {
        let (status, body) = get_json(&url, &[("authorization", malformed)]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{malformed}: {body}");
    }
    let response = client()
        .get(&url)
        .header("authorization", "Bearer x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

#[tokio::test]
async fn strict_mode_requires_an_api_key() {
    let mut config = Config::default();
    config.server.require_apikey = true;
    let app = TestApp::spawn_with(config).await;
    let url = format!("{}/sovra/v1/whoami", app.url);
    let (status, body) = get_json(&url, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "No API key found in request");
    let (status, _) = get_json(&url, &[("apikey", &app.anon_key)]).await;
    assert_eq!(status, StatusCode::OK);
    // Health and readiness stay open for load balancers.
    let (status, _) = get_json(&format!("{}/health", app.url), &[]).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn configured_audience_is_enforced() {
    let mut config = Config::default();
    config.jwt.audience = Some("authenticated".to_owned());
    let app = TestApp::spawn_with(config).await;
    let url = format!("{}/sovra/v1/whoami", app.url);
    let good = app.sign(Value::Object(TestApp::user_claims(
        "44444444-4444-4444-4444-444444444444",
    )));
    let (status, _) = get_json(&url, &[("authorization", &format!("Bearer {good}"))]).await;
    assert_eq!(status, StatusCode::OK);
    let mut claims = TestApp::user_claims("44444444-4444-4444-4444-444444444444");
    claims.insert("aud".into(), json!("someone-else"));
    let bad = app.sign(Value::Object(claims));
    let (status, body) = get_json(&url, &[("authorization", &format!("Bearer {bad}"))]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        body["message"].as_str().unwrap().contains("audience"),
        "{body}"
    );
}

const DEMO_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
const DEMO_ANON: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0";
const DEMO_SERVICE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU";

#[tokio::test]
async fn a_supabase_projects_secret_keeps_its_shipped_keys_working() {
    let mut config = Config::default();
    config.jwt.secret = Some(DEMO_SECRET.to_owned());
    let app = TestApp::spawn_with(config).await;
    let url = format!("{}/sovra/v1/whoami", app.url);
    let (status, body) = get_json(&url, &[("apikey", DEMO_ANON)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "anon");
    let (status, body) = get_json(
        &url,
        &[
            ("apikey", DEMO_SERVICE),
            ("authorization", &format!("Bearer {DEMO_SERVICE}")),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "service_role");
    // The configured secret is not written to the data directory.
    let keys = std::fs::read_to_string(app.data_dir.join("keys.json")).unwrap();
    assert!(!keys.contains(DEMO_SECRET));
}

#[tokio::test]
async fn jwks_publishes_only_public_asymmetric_keys() {
    let app = TestApp::spawn().await;
    let response = client()
        .get(format!("{}/auth/v1/.well-known/jwks.json", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "public, max-age=600");
    let body: Value = response.json().await.unwrap();
    // HS256 secrets are never published: the only key is the OAuth
    // provider's ID-token key (ES256), public half only.
    let keys = body["keys"].as_array().unwrap();
    for key in keys {
        assert_ne!(
            key["kty"], "oct",
            "HS256 secrets are never published: {body}"
        );
        assert!(key.get("k").is_none() && key.get("d").is_none(), "{body}");
        assert_eq!(key["alg"], "ES256", "{body}");
        assert_eq!(key["use"], "sig", "{body}");
    }
    assert!(keys.len() <= 1, "{body}");
}

#[tokio::test]
async fn keys_file_is_private_and_stable() {
    use std::os::unix::fs::PermissionsExt as _;
    let app = TestApp::spawn().await;
    let path = app.data_dir.join("keys.json");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let config = Config {
        data_dir: app.data_dir.clone(),
        ..Config::default()
    };
    let again = sovra_server::keys::load_or_create(&path, &config).unwrap();
    assert!(!again.created);
    assert_eq!(again.api.anon, app.anon_key, "keys survive a restart");
}

#[tokio::test]
async fn rotation_keeps_old_tokens_until_retired() {
    let dir = sovra_test_support::scratch_dir();
    let config = Config {
        data_dir: dir.clone(),
        ..Config::default()
    };
    let path = dir.join("keys.json");
    let first = sovra_server::keys::load_or_create(&path, &config).unwrap();
    assert!(first.created);
    let now = TestApp::now();
    let rotated = sovra_server::keys::rotate(&path, &config).unwrap();
    assert_ne!(rotated.api.anon, first.api.anon);
    assert_eq!(
        rotated.keyset.verify(&first.api.anon, now).unwrap().role,
        "anon"
    );
    let listed = sovra_server::keys::list(&path).unwrap();
    assert_eq!(listed.len(), 2);
    let previous = listed
        .iter()
        .find(|(_, status, _)| status == "previous")
        .unwrap();
    sovra_server::keys::retire(&path, &config, &previous.0).unwrap();
    let reloaded = sovra_server::keys::load_or_create(&path, &config).unwrap();
    assert!(reloaded.keyset.verify(&first.api.anon, now).is_err());
    assert_eq!(
        reloaded.keyset.verify(&rotated.api.anon, now).unwrap().role,
        "anon"
    );

    let mut configured = config.clone();
    configured.jwt.secret = Some(DEMO_SECRET.to_owned());
    let err = sovra_server::keys::rotate(&path, &configured).unwrap_err();
    assert!(err.to_string().contains("jwt.secret"), "{err}");
}

/// A P-256 test key (private `d`), made once for these tests.
const EC_D: &str = "xk-UCYVX6qgVDvNQffbgeUrXH4yiQJTNB4zWcfMOAKk";
const EC_X: &str = "kPEvY2IfeFBp164JNCro7Fy-U9KZKmvI9mzbtkRz7Ng";
const EC_Y: &str = "NsifjvHI5lvyKGXlAOPkZCYzxjApuwwVwpmEmo7X-2U";

#[tokio::test]
async fn a_configured_asymmetric_key_signs_verifies_and_is_published() {
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec-main", "alg": "ES256", "d": EC_D, "x": EC_X, "y": EC_Y}]});
    let mut config = Config::default();
    config.jwt.jwks = Some(jwks.to_string());
    let app = TestApp::spawn_with(config).await;

    let body: Value = client()
        .get(format!("{}/auth/v1/.well-known/jwks.json", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // The configured key, public parts only (beside the OAuth provider's
    // own ID-token key, also public only).
    let keys = body["keys"].as_array().unwrap();
    assert!(
        keys.contains(&json!({"kty": "EC", "crv": "P-256", "kid": "ec-main", "alg": "ES256", "x": EC_X, "y": EC_Y})),
        "public parts only: {body}"
    );
    assert!(keys.iter().all(|k| k.get("d").is_none()), "{body}");
    assert!(keys.len() <= 2, "{body}");

    // New tokens (and the API keys) are ES256 with the key's kid.
    let token = app.sign(Value::Object(TestApp::user_claims(
        "55555555-5555-5555-5555-555555555555",
    )));
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], "ec-main");
    let (status, body) = get_json(
        &format!("{}/sovra/v1/whoami", app.url),
        &[
            ("apikey", &app.anon_key),
            ("authorization", &format!("Bearer {token}")),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "authenticated");
}

#[tokio::test]
async fn an_external_issuers_tokens_need_its_issuer_and_audience() {
    const IDP: &str = "https://idp.example.com/";
    let public = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "idp-1", "alg": "ES256", "x": EC_X, "y": EC_Y}]});
    // Without an audience for the external keys, Sovra does not start.
    let mut refused = Config::default();
    refused.jwt.jwks = Some(public.to_string());
    let dir = tempfile::tempdir().unwrap();
    let err =
        sovra_server::keys::load_or_create(&dir.path().join("keys.json"), &refused).unwrap_err();
    assert!(err.to_string().contains("jwt.jwks_audience"), "{err}");

    let mut config = Config::default();
    config.jwt.jwks = Some(public.to_string());
    config.jwt.jwks_issuer = Some(IDP.to_owned());
    config.jwt.jwks_audience = Some("my-api".to_owned());
    let app = TestApp::spawn_with(config).await;
    // The identity provider signs with the private half.
    let private = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "idp-1", "alg": "ES256", "d": EC_D, "x": EC_X, "y": EC_Y}]});
    let idp =
        sovra_jwt::KeySet::new(&sovra_jwt::KeyStore::default(), Some(&private), None).unwrap();
    let url = format!("{}/sovra/v1/whoami", app.url);
    let whoami = |claims: Value| {
        let token = idp.sign(claims.as_object().unwrap()).unwrap();
        let url = url.clone();
        let anon = app.anon_key.clone();
        async move {
            get_json(
                &url,
                &[
                    ("apikey", anon.as_str()),
                    ("authorization", &format!("Bearer {token}")),
                ],
            )
            .await
        }
    };
    let now = TestApp::now();
    let good = json!({"sub": "ext", "role": "authenticated", "iss": IDP, "aud": "my-api", "exp": now + 600});
    let (status, body) = whoami(good.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut cases = Vec::new();
    for (claim, value, word) in [
        ("iss", Some(json!("https://evil.example.com/")), "issuer"),
        ("iss", None, "issuer"),
        ("aud", Some(json!("someone-else")), "audience"),
        ("aud", None, "audience"),
    ] {
        let mut claims = good.clone();
        match value {
            Some(v) => claims[claim] = v,
            None => {
                claims.as_object_mut().unwrap().remove(claim);
            }
        }
        cases.push((claims, word));
    }
    for (claims, word) in cases {
        let (status, body) = whoami(claims.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{claims}: {body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains(word),
            "{claims}: {body}"
        );
    }
    // Sovra's own tokens are not held to the external issuer's rules.
    let own = app.sign(Value::Object(TestApp::user_claims(
        "66666666-6666-6666-6666-666666666666",
    )));
    let (status, body) = get_json(
        &url,
        &[
            ("apikey", &app.anon_key),
            ("authorization", &format!("Bearer {own}")),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Issue #16 item 19: opaque `sb_publishable_…`/`sb_secret_…` keys made by
/// `sovra keys --rotate-opaque` stand for anon and service_role on every
/// service, as `apikey`, as the bearer supabase-js sends without a session,
/// and as the realtime socket's `apikey`; unknown ones are refused.
#[tokio::test]
async fn opaque_api_keys_stand_for_anon_and_service_role() {
    let first = TestApp::spawn().await;
    let config = Config {
        data_dir: first.data_dir.clone(),
        ..Config::default()
    };
    let pair =
        sovra_server::keys::rotate_opaque(&first.data_dir.join("keys.json"), &config).unwrap();
    let stored = std::fs::read_to_string(first.data_dir.join("keys.json")).unwrap();
    assert!(!stored.contains(&pair.secret) && !stored.contains(&pair.publishable));
    // A server loads them at start.
    let app = first.spawn_peer(Config::default()).await;
    let whoami = format!("{}/sovra/v1/whoami", app.url);
    let bearer = |key: &str| format!("Bearer {key}");
    for (key, role) in [(&pair.publishable, "anon"), (&pair.secret, "service_role")] {
        let (status, body) = get_json(&whoami, &[("apikey", key)]).await;
        assert_eq!(
            (status, body["role"].clone()),
            (StatusCode::OK, json!(role))
        );
        let (status, body) =
            get_json(&whoami, &[("apikey", key), ("authorization", &bearer(key))]).await;
        assert_eq!(
            (status, body["role"].clone()),
            (StatusCode::OK, json!(role))
        );
    }
    // A signed-in user's token still wins over the publishable key.
    let user = app.sign(Value::Object(TestApp::user_claims(
        "55555555-5555-5555-5555-555555555555",
    )));
    let (_, body) = get_json(
        &whoami,
        &[
            ("apikey", &pair.publishable),
            ("authorization", &bearer(&user)),
        ],
    )
    .await;
    assert_eq!(body["role"], "authenticated");
    // Unknown opaque keys, as apikey or bearer, and the server that
    // started before the keys were made.
    let forged = format!("sb_secret_{}", "x".repeat(32));
    let (status, body) = get_json(&whoami, &[("apikey", &forged)]).await;
    assert_eq!(
        (status, body["message"].clone()),
        (StatusCode::UNAUTHORIZED, json!("Invalid API key"))
    );
    let (status, _) = get_json(
        &whoami,
        &[
            ("apikey", &pair.publishable),
            ("authorization", &bearer(&forged)),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = get_json(
        &format!("{}/sovra/v1/whoami", first.url),
        &[("apikey", &pair.secret)],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // The publishable key's prefix on the secret's digest is not a key.
    let swapped = pair.secret.replacen("sb_secret_", "sb_publishable_", 1);
    let (status, _) = get_json(&whoami, &[("apikey", &swapped)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Auth: the secret key is an admin (auth-js admin sends it as bearer),
    // the publishable key is not.
    let users = format!("{}/auth/v1/admin/users", app.url);
    let (status, body) = get_json(
        &users,
        &[
            ("apikey", &pair.secret),
            ("authorization", &bearer(&pair.secret)),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = get_json(
        &users,
        &[
            ("apikey", &pair.publishable),
            ("authorization", &bearer(&pair.publishable)),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get_json(&users, &[("apikey", &forged)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // REST and storage.
    let (status, _) = get_json(
        &format!("{}/storage/v1/bucket", app.url),
        &[
            ("apikey", &pair.secret),
            ("authorization", &bearer(&pair.secret)),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get_json(
        &format!("{}/rest/v1/", app.url),
        &[
            ("apikey", &pair.secret),
            ("authorization", &bearer(&pair.secret)),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The realtime socket's `apikey` parameter.
    let ws = app.url.replacen("http://", "ws://", 1);
    let socket = |key: &str| format!("{ws}/realtime/v1/websocket?apikey={key}&vsn=1.0.0");
    assert!(
        tokio_tungstenite::connect_async(socket(&pair.publishable))
            .await
            .is_ok()
    );
    match tokio_tungstenite::connect_async(socket(&forged)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401);
        }
        other => panic!(
            "a forged key connected: {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
}

/// With `jwt.audience` set, the anon and service_role keys Sovra mints
/// itself still verify (they carry that audience), and so do the tokens
/// auth issues.
#[tokio::test]
async fn minted_keys_verify_with_a_configured_audience() {
    let mut config = Config::default();
    config.jwt.audience = Some("authenticated".to_owned());
    let app = TestApp::spawn_with(config).await;
    let url = format!("{}/sovra/v1/whoami", app.url);
    for (key, role) in [
        (&app.anon_key, "anon"),
        (&app.service_role_key, "service_role"),
    ] {
        let (status, body) = get_json(&url, &[("apikey", key)]).await;
        assert_eq!(
            (status, body["role"].clone()),
            (StatusCode::OK, json!(role)),
            "{body}"
        );
    }
    // A key minted without the audience (before it was configured) is
    // refused, and replaced by a fresh one when the keys are next loaded.
    let mut claims = serde_json::Map::new();
    claims.insert("role".into(), json!("anon"));
    let old = app.sign(Value::Object(claims));
    let (status, _) = get_json(&url, &[("apikey", &old)]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Issue #16 item 25: the banner says whether sign-ups need confirming,
/// how to turn that off, and where mail goes.
#[test]
fn the_banner_says_how_sign_ups_are_confirmed_and_where_mail_goes() {
    let dir = std::path::Path::new("/srv/sovra-data");
    let default = sovra_server::serve::auth_banner_lines(&Config::default(), dir).join("\n");
    assert!(default.contains("Email confirm on"), "{default}");
    assert!(
        default.contains("SOVRA_AUTH_EMAIL_AUTOCONFIRM=true"),
        "{default}"
    );
    assert!(default.contains("/srv/sovra-data/mailbox"), "{default}");
    assert!(default.contains("`sovra mail`"), "{default}");
    let mut config = Config::default();
    config.auth.email_autoconfirm = true;
    config.auth.smtp_url = Some("smtp://mail.example.com:587".to_owned());
    let configured = sovra_server::serve::auth_banner_lines(&config, dir).join("\n");
    assert!(configured.contains("Email confirm off"), "{configured}");
    assert!(configured.contains("auth.smtp_url"), "{configured}");
    assert!(!configured.contains("mailbox"), "{configured}");
    // The SMTP URL (it may hold a password) is never printed.
    assert!(!configured.contains("mail.example.com"), "{configured}");
}

/// Issue #16 item 24: with an EC private key configured, the access tokens
/// auth issues are ES256 with the key's `kid`, and the published JWKS alone
/// verifies them (what auth-js' `getClaims()` does locally).
#[tokio::test]
async fn auth_tokens_verify_with_the_published_jwks_alone() {
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec-main", "alg": "ES256", "d": EC_D, "x": EC_X, "y": EC_Y}]});
    let mut config = Config::default();
    config.jwt.jwks = Some(jwks.to_string());
    config.auth.email_autoconfirm = true;
    let app = TestApp::spawn_with(config).await;
    let signed_up: Value = client()
        .post(format!("{}/auth/v1/signup", app.url))
        .header("apikey", &app.anon_key)
        .json(&json!({"email": "claims@example.com", "password": "password1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = signed_up["access_token"].as_str().expect("a session");
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            access.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (header["alg"].clone(), header["kid"].clone()),
        (json!("ES256"), json!("ec-main"))
    );
    // Only what a client can fetch: the JWKS endpoint.
    let published: Value = client()
        .get(format!("{}/auth/v1/.well-known/jwks.json", app.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(published["keys"][0].get("d").is_none());
    let store = sovra_jwt::KeyStore::generate(TestApp::now());
    let verifier = sovra_jwt::KeySet::new(&store, Some(&published), None).unwrap();
    let verified = verifier.verify(access, TestApp::now()).unwrap();
    assert_eq!(verified.role, "authenticated");
    assert_eq!(verified.claims["email"], "claims@example.com");
    // A token signed by another key with the same kid does not verify.
    let other = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "ec-main", "alg": "ES256",
        "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]});
    let wrong = sovra_jwt::KeySet::new(&store, Some(&other), None).unwrap();
    assert!(wrong.verify(access, TestApp::now()).is_err());
}
