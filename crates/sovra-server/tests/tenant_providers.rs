//! Each tenant's own identity providers and auth hooks
//! (`PATCH /sovra/v1/tenants/{name}` `external` and `hooks`): two tenants
//! with different settings, each one's `/auth/v1/settings`, `/authorize`
//! and tokens reflecting its own; secrets never shown; bad settings
//! refused with the option they break.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use base64::Engine as _;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sovra_server::tenants::Platform;
use sovra_test_support::TestDb;

#[path = "support/platform.rs"]
mod platform_server;

struct Server {
    url: String,
    key: String,
    db: TestDb,
    http: reqwest::Client,
    _platform: Arc<Platform>,
    _server: tokio::task::JoinHandle<()>,
}

struct Created {
    name: String,
    url: String,
    anon: String,
    database: String,
}

/// The server as `sovra serve` builds it, with the tenant API.
async fn spawn() -> Server {
    let spawned = platform_server::spawn(sovra_config::Config::default()).await;
    Server {
        url: spawned.url,
        key: spawned.key,
        db: spawned.db,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        _platform: spawned.platform,
        _server: spawned.server,
    }
}

impl Server {
    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, String) {
        let mut request = self
            .http
            .request(method, format!("{}/sovra/v1/tenants{path}", self.url))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    }

    async fn create(&self, prefix: &str) -> Created {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let name = format!("{prefix}-{}", &id[..8]);
        let (status, body, _) = self
            .api(reqwest::Method::POST, "", Some(json!({"name": name})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Created {
            name: body["name"].as_str().unwrap().to_owned(),
            url: body["url"].as_str().unwrap().to_owned(),
            anon: body["anon_key"].as_str().unwrap().to_owned(),
            database: body["database"].as_str().unwrap().to_owned(),
        }
    }

    /// `PATCH`: the status, the answer and its text.
    async fn patch(&self, name: &str, body: Value) -> (StatusCode, Value, String) {
        self.api(reqwest::Method::PATCH, &format!("/{name}"), Some(body))
            .await
    }

    async fn settings(&self, t: &Created) -> Value {
        let response = self
            .http
            .get(format!("{}/auth/v1/settings", t.url))
            .header("apikey", &t.anon)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.json::<Value>().await.unwrap()["external"].clone()
    }

    /// `GET /authorize?provider=…`: the status and where it sends the browser.
    async fn authorize(&self, t: &Created, provider: &str) -> (StatusCode, String) {
        let response = self
            .http
            .get(format!("{}/auth/v1/authorize?provider={provider}", t.url))
            .send()
            .await
            .unwrap();
        let location = response
            .headers()
            .get("location")
            .map(|l| l.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (response.status(), location)
    }

    /// Signs up `email` (the tenant confirms automatically): the access
    /// token's claims.
    async fn sign_up_claims(&self, t: &Created, email: &str) -> Value {
        let response = self
            .http
            .post(format!("{}/auth/v1/signup", t.url))
            .header("apikey", &t.anon)
            .json(&json!({"email": email, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        let token = body["access_token"].as_str().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap()
    }

    /// A custom access token hook in `t`'s database that tags its tokens.
    async fn create_hook(&self, t: &Created, tag: &str) {
        let mut config = self.db.config();
        config.dbname(&t.database);
        let client = sovra_pg::connect_one(&config).await.unwrap();
        client
            .batch_execute(&format!(
                "create or replace function public.tag_token(event jsonb) returns jsonb
                   language sql as $$
                     select jsonb_set(event, '{{claims,tenant_tag}}', to_jsonb('{tag}'::text)) $$;
                 grant execute on function public.tag_token to supabase_auth_admin;
                 revoke execute on function public.tag_token from authenticated, anon, public;"
            ))
            .await
            .unwrap();
    }
}

fn param(url: &str, name: &str) -> Option<String> {
    let tail = url.split_once('?')?.1;
    tail.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| sovra_auth::crypto::percent_decode(v))
    })
}

#[tokio::test]
async fn each_tenant_has_its_own_providers_and_hooks() {
    let server = spawn().await;
    let a = server.create("idpa").await;
    let b = server.create("idpb").await;
    // Before any setting, the platform's (none here).
    assert_eq!(server.settings(&a).await["gitlab"], false);

    let (status, body, text) = server
        .patch(
            &a.name,
            json!({"email_autoconfirm": true,
                   "external": {"gitlab": {"enabled": true, "client_id": "a-app",
                                           "secret": "a-gitlab-secret",
                                           "url": "https://gitlab.a.example"}},
                   "hooks": {"custom_access_token": {"enabled": true,
                             "uri": "pg-functions://postgres/public/tag_token"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Secrets are never shown.
    assert_eq!(body["settings"]["external"]["gitlab"]["secret"], "***");
    assert_eq!(body["settings"]["external"]["gitlab"]["client_id"], "a-app");
    assert!(!text.contains("a-gitlab-secret"), "{text}");
    let (status, body, _) = server
        .patch(
            &b.name,
            json!({"email_autoconfirm": true,
                   "external": {"github": {"enabled": true, "client_id": "b-app",
                                           "secret": "b-github-secret",
                                           "url": "https://github.b.example",
                                           "api_url": "https://github.b.example/api/v3"}},
                   "hooks": {"send_email": {"enabled": false,
                             "secrets": "v1,whsec_c2VjcmV0LXNpZ25pbmcta2V5LWZvci1iLXRlbmFudA=="}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for path in [format!("/{}", b.name), String::new()] {
        let (status, _, text) = server.api(reqwest::Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            !text.contains("b-github-secret")
                && !text.contains("a-gitlab-secret")
                && !text.contains("whsec_"),
            "{text}"
        );
    }

    // Each tenant's settings and /authorize are its own.
    let (sa, sb) = (server.settings(&a).await, server.settings(&b).await);
    assert_eq!(
        (sa["gitlab"].clone(), sa["github"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(
        (sb["gitlab"].clone(), sb["github"].clone()),
        (json!(false), json!(true))
    );
    let (status, to_gitlab) = server.authorize(&a, "gitlab").await;
    assert_eq!(status, StatusCode::FOUND);
    assert!(
        to_gitlab.starts_with("https://gitlab.a.example/oauth/authorize?"),
        "{to_gitlab}"
    );
    assert_eq!(param(&to_gitlab, "client_id").unwrap(), "a-app");
    assert_eq!(
        param(&to_gitlab, "redirect_uri").unwrap(),
        format!("{}/auth/v1/callback", a.url)
    );
    assert_eq!(
        server.authorize(&b, "gitlab").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        server.authorize(&a, "github").await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, to_github) = server.authorize(&b, "github").await;
    assert_eq!(status, StatusCode::FOUND);
    assert!(
        to_github.starts_with("https://github.b.example/login/oauth/authorize?"),
        "{to_github}"
    );
    assert_eq!(param(&to_github, "client_id").unwrap(), "b-app");

    // A's hook tags A's tokens; B has the same function but not the hook.
    server.create_hook(&a, "from-a").await;
    server.create_hook(&b, "from-b").await;
    assert_eq!(
        server.sign_up_claims(&a, "ada@example.com").await["tenant_tag"],
        "from-a"
    );
    assert!(
        server.sign_up_claims(&b, "bob@example.com").await["tenant_tag"].is_null(),
        "B's tokens are not A's hook's"
    );

    // A partial change keeps the rest (the secret is not sent again).
    let (status, body, _) = server
        .patch(
            &a.name,
            json!({"external": {"gitlab": {"client_id": "a-app-2"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["settings"]["external"]["gitlab"]["secret"], "***");
    let (_, to_gitlab) = server.authorize(&a, "gitlab").await;
    assert_eq!(param(&to_gitlab, "client_id").unwrap(), "a-app-2");
    // Turning the hook off stops it.
    server
        .patch(
            &a.name,
            json!({"hooks": {"custom_access_token": {"enabled": false}}}),
        )
        .await;
    assert!(server.sign_up_claims(&a, "ada2@example.com").await["tenant_tag"].is_null());
}

#[tokio::test]
async fn bad_provider_and_hook_settings_are_refused() {
    let server = spawn().await;
    let t = server.create("idpbad").await;
    for (body, needle) in [
        (
            json!({"external": {"nonesuch": {"enabled": true}}}),
            "no such provider",
        ),
        (
            json!({"external": {"gitlab": {"enabled": true, "secret": "s"}}}),
            "auth.external.gitlab.client_id",
        ),
        (
            json!({"external": {"github": {"team_id": "T"}}}),
            "external.github.team_id",
        ),
        (
            json!({"external": {"gitlab": {"enabled": true, "client_id": "c", "secret": "s",
                                           "url": "http://gitlab.example.com"}}}),
            "auth.external.gitlab.url",
        ),
        (
            json!({"external": {"apple": {"enabled": true, "client_id": "c", "team_id": "T",
                                          "key_id": "K",
                                          "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"}}}),
            "auth.external.apple.private_key",
        ),
        (json!({"external": {"gitlab": {"enabled": "yes"}}}), ""),
        (
            json!({"hooks": {"nope": {"enabled": true}}}),
            "no such hook",
        ),
        (
            json!({"hooks": {"custom_access_token": {"enabled": true, "uri": "ftp://x"}}}),
            "auth.hook.custom_access_token",
        ),
    ] {
        let (status, answer, _) = server.patch(&t.name, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"], "bad_settings", "{body}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains(needle),
            "{body}: {answer}"
        );
    }
    // Nothing of it was kept.
    let (_, shown, _) = server
        .api(reqwest::Method::GET, &format!("/{}", t.name), None)
        .await;
    assert!(shown["settings"].get("external").is_none(), "{shown}");
    assert!(shown["settings"].get("hooks").is_none(), "{shown}");
    assert_eq!(server.settings(&t).await["gitlab"], false);
}
