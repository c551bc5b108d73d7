//! The dashboard at `/_/` (#20) through the real router on a real
//! PostgreSQL: the page and its headers, sign-in with a service key or the
//! platform key and its refusals, the session cookie, CSRF, sign-out,
//! expiry, the SQL editor (as `service_role`, errors with positions,
//! history), the catalog, the proxy into a tenant's services, and the
//! tenant API without secret keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sovra_server::tenants::Platform;
use sovra_test_support::{TestApp, TestDb};

/// A browser: keeps the dashboard's cookie and CSRF token.
struct Browser {
    url: String,
    http: reqwest::Client,
    cookie: Option<String>,
    csrf: String,
}

impl Browser {
    fn new(url: &str) -> Browser {
        Browser {
            url: url.to_owned(),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
            csrf: String::new(),
        }
    }

    /// Signs in with `key` (for `tenant`); the status and answer.
    async fn sign_in(&mut self, key: &str, tenant: Option<&str>) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}/_/api/session", self.url))
            .json(&json!({"key": key, "tenant": tenant}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        if let Some(set) = response.headers().get("set-cookie") {
            let set = set.to_str().unwrap().to_owned();
            assert!(set.contains("HttpOnly"), "{set}");
            assert!(set.contains("SameSite=Strict"), "{set}");
            assert!(set.contains("Path=/_/"), "{set}");
            self.cookie = Some(set.split(';').next().unwrap().to_owned());
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if let Some(csrf) = body["csrf"].as_str() {
            self.csrf = csrf.to_owned();
        }
        (status, body)
    }

    /// A request to `/_/api{path}` with the cookie, and the CSRF token
    /// when `csrf`.
    fn request(&self, method: reqwest::Method, path: &str, csrf: bool) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .request(method, format!("{}/_/api{path}", self.url));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        if csrf {
            request = request.header("x-sovra-csrf", &self.csrf);
        }
        request
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        answer(self.request(reqwest::Method::GET, path, false)).await
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        answer(self.request(method, path, true).json(&body)).await
    }

    /// A change without a body.
    async fn empty(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        answer(self.request(method, path, true)).await
    }
}

async fn answer(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy() {
    let app = TestApp::spawn().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = http.get(format!("{}/_", app.url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(response.headers()["location"], "/_/");
    for path in ["/_/", "/_/t/default/tables"] {
        let response = http.get(format!("{}{path}", app.url)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["cache-control"], "no-cache");
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.starts_with("default-src 'self'; script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe"), "{csp}");
        assert_eq!(headers["x-frame-options"], "DENY");
        let page = response.text().await.unwrap();
        assert!(!page.contains("<script>"), "no inline script: {page}");
    }
    let missing = http
        .get(format!("{}/_/assets/missing-0000.js", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let api = http
        .get(format!("{}/_/api/nothing", app.url))
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn only_a_service_key_signs_in_and_the_browser_never_gets_it() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app.url);
    // Without a session every API is refused.
    assert_eq!(browser.get("/session").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        browser.get("/t/default/tables").await.0,
        StatusCode::UNAUTHORIZED
    );
    // Wrong keys: the anon key, a forged token, nonsense, no key.
    for key in [
        app.anon_key.as_str(),
        "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.AAAA",
        "nonsense",
        "",
        "sovra_pk_0000000000000000000000000000000000000000",
    ] {
        let (status, body) = browser.sign_in(key, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{key}: {body}");
        assert_eq!(body["error"], "invalid_key");
        assert!(browser.cookie.is_none());
    }
    // The service key of another tenant name.
    let (status, _) = browser.sign_in(&app.service_role_key, Some("acme")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Not JSON.
    let response = browser
        .http
        .post(format!("{}/_/api/session", app.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("key=x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, body) = browser.sign_in(&app.service_role_key, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kind"], "tenant");
    assert_eq!(body["tenant"], "default");
    assert!(!body.to_string().contains(&app.service_role_key));
    let (status, session) = browser.get("/session").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(session["csrf"], body["csrf"]);
    let (status, tenants) = browser.get("/tenants").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(tenants, json!([{"name": "default", "state": "active"}]));
    // A service key's session has no tenant API, nor the server's metrics.
    let (status, _) = browser.get("/platform/tenants").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = browser.get("/metrics").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn changes_need_the_csrf_token_and_sign_out_revokes() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app.url);
    browser.sign_in(&app.service_role_key, None).await;
    let sql = json!({"query": "select 1"});
    // No token, a wrong one, and another session's.
    let (status, body) = answer(
        browser
            .request(reqwest::Method::POST, "/t/default/sql", false)
            .json(&sql),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "csrf");
    let (status, _) = answer(
        browser
            .request(reqwest::Method::POST, "/t/default/sql", false)
            .header("x-sovra-csrf", "0".repeat(64))
            .json(&sql),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut other = Browser::new(&app.url);
    other.sign_in(&app.service_role_key, None).await;
    assert_ne!(other.csrf, browser.csrf);
    let (status, _) = answer(
        browser
            .request(reqwest::Method::POST, "/t/default/sql", false)
            .header("x-sovra-csrf", &other.csrf)
            .json(&sql),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Proxied changes too.
    let (status, _) = answer(
        browser
            .request(reqwest::Method::POST, "/t/default/storage/v1/bucket", false)
            .json(&json!({"name": "nope"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Sign-out needs it as well.
    let (status, _) = answer(browser.request(reqwest::Method::DELETE, "/session", false)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = browser
        .send(reqwest::Method::POST, "/t/default/sql", sql)
        .await;
    assert_eq!(status, StatusCode::OK);
    let response = browser
        .request(reqwest::Method::DELETE, "/session", true)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(browser.get("/session").await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        browser.get("/t/default/tables").await.0,
        StatusCode::UNAUTHORIZED
    );
    // The other session lives on.
    assert_eq!(other.get("/session").await.0, StatusCode::OK);
}

#[tokio::test]
async fn sessions_expire() {
    let mut config = sovra_config::Config::default();
    config.dashboard.session_ttl = 1;
    let app = TestApp::spawn_with(config).await;
    let mut browser = Browser::new(&app.url);
    let (status, body) = browser.sign_in(&app.service_role_key, None).await;
    assert_eq!(status, StatusCode::OK);
    let expires_at = body["expires_at"].as_u64().unwrap();
    // Wait until the second it expires at has passed on the server's clock.
    while TestApp::now() as u64 <= expires_at {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (status, body) = browser.get("/session").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"], "unauthorized");
}

#[tokio::test]
async fn failed_sign_ins_are_rate_limited() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app.url);
    let mut limited = false;
    for _ in 0..=sovra_dashboard::session::SIGN_IN_FAILURES {
        let (status, _) = browser.sign_in("wrong", None).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert!(limited);
    // Even the right key waits for the window to end.
    let (status, body) = browser.sign_in(&app.service_role_key, None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
}

#[tokio::test]
async fn the_sql_editor_runs_as_service_role_with_errors_and_history() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app.url);
    browser.sign_in(&app.service_role_key, None).await;
    let run = |query: &str| {
        browser.send(
            reqwest::Method::POST,
            "/t/default/sql",
            json!({"query": query}),
        )
    };
    let (status, body) = run(
        "select current_user as who, (select rolsuper from pg_roles where rolname = session_user) as superuser; select 1 where false",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["columns"], json!(["who", "superuser"]));
    assert_eq!(results[0]["rows"], json!([["service_role", "f"]]));
    assert_eq!(results[1]["row_count"], 0);
    // Errors carry SQLSTATE and the position of the bad token.
    let (status, body) = run("select 1;\nselec 2").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["detail"]["code"], "42601");
    assert_eq!(body["detail"]["position"], 11);
    // A failing statement rolls back the earlier ones.
    app.db
        .client()
        .await
        .batch_execute("create table public.notes (id int primary key, body text)")
        .await
        .unwrap();
    let (status, body) = run("insert into public.notes values (1, 'a'); select 1/0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["detail"]["code"], "22012");
    let (_, body) = run("select count(*) from public.notes").await;
    assert_eq!(body["results"][0]["rows"], json!([["0"]]));
    // service_role cannot become a superuser or reach what it may not.
    let (status, body) = run("set role postgres").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["detail"]["code"], "42501");
    // Nor may it change the schema it does not own (DDL needs the owner).
    let (status, body) = run("create table public.made_here (id int)").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["detail"]["code"], "42501");
    let (status, _) = run("").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // History: newest first, in the session.
    let (status, history) = browser.get("/t/default/sql/history").await;
    assert_eq!(status, StatusCode::OK);
    let history = history.as_array().unwrap();
    assert_eq!(history[0], "create table public.made_here (id int)");
    assert_eq!(history[1], "set role postgres");
    assert_eq!(history.len(), 6);
    // Another tenant's database is out of reach for this session.
    let (status, _) = browser
        .send(
            reqwest::Method::POST,
            "/t/acme/sql",
            json!({"query": "select 1"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn tables_are_listed_and_their_rows_read_and_written_through_rest() {
    let app = TestApp::spawn().await;
    app.db
        .client()
        .await
        .batch_execute(
            "create type public.mood as enum ('happy', 'sad');
             create table public.items (id bigint generated by default as identity primary key,
                                        name text not null, mood public.mood, tags jsonb);
             insert into public.items (name) values ('a'), ('b');
             alter table public.items enable row level security;
             create policy read_all on public.items for select to authenticated using (true);
             create view public.item_names as select name from public.items;
             notify pgrst, 'reload schema';",
        )
        .await
        .unwrap();
    let mut browser = Browser::new(&app.url);
    browser.sign_in(&app.service_role_key, None).await;
    let (status, tables) = browser.get("/t/default/tables").await;
    assert_eq!(status, StatusCode::OK, "{tables}");
    let find = |name: &str| {
        tables
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["schema"] == "public" && t["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {tables}"))
    };
    let items = find("items");
    assert_eq!(items["rows"], 2);
    assert_eq!(items["kind"], "table");
    assert_eq!(items["rls"], true);
    let view = find("item_names");
    assert_eq!(view["kind"], "view");
    assert_eq!(view["rows"], Value::Null);
    let (status, meta) = browser.get("/t/default/tables/public/items").await;
    assert_eq!(status, StatusCode::OK, "{meta}");
    assert_eq!(meta["primary_key"], json!(["id"]));
    assert_eq!(meta["columns"][0]["identity"], true);
    assert_eq!(meta["columns"][2]["enum"], json!(["happy", "sad"]));
    assert_eq!(meta["columns"][3]["base"], "jsonb");
    assert_eq!(meta["policies"][0]["name"], "read_all");
    assert_eq!(meta["policies"][0]["roles"], json!(["authenticated"]));
    let (status, _) = browser.get("/t/default/tables/public/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Rows through /rest/v1 as service_role (RLS is on; service_role bypasses it).
    let (status, body) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/rest/v1/items",
            json!({"name": "c", "mood": "happy", "tags": ["x"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let response = browser
        .request(
            reqwest::Method::GET,
            "/t/default/rest/v1/items?select=name,mood&order=name.desc&limit=2&mood=eq.happy",
            false,
        )
        .header("prefer", "count=exact")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-range"], "0-0/1");
    assert_eq!(response.headers()["cache-control"], "no-store");
    let rows: Value = response.json().await.unwrap();
    assert_eq!(rows, json!([{"name": "c", "mood": "happy"}]));
    let (status, _) = browser
        .send(
            reqwest::Method::PATCH,
            "/t/default/rest/v1/items?name=eq.a",
            json!({"name": "a2"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = browser
        .empty(
            reqwest::Method::DELETE,
            "/t/default/rest/v1/items?name=eq.b",
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, rows) = browser
        .get("/t/default/rest/v1/items?select=name&order=name")
        .await;
    assert_eq!(rows, json!([{"name": "a2"}, {"name": "c"}]));
    // PostgREST's errors come through unchanged.
    let (status, body) = browser.get("/t/default/rest/v1/items?nope=eq.1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "42703");
    // Only the tenant's services are reachable, not its token endpoint.
    let (status, _) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/auth/v1/token?grant_type=password",
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = browser
        .get("/t/default/rest/v1/../../sovra/v1/whoami")
        .await;
    assert!(
        status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST,
        "{status}"
    );
}

#[tokio::test]
async fn users_and_files_are_managed_through_the_admin_apis() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app.url);
    browser.sign_in(&app.service_role_key, None).await;
    let (status, user) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/auth/v1/admin/users",
            json!({"email": "dash@example.com", "password": "correct horse 1", "email_confirm": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    let id = user["id"].as_str().unwrap().to_owned();
    let (status, list) = browser.get("/t/default/auth/v1/admin/users").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["users"][0]["email"], "dash@example.com");
    let (status, _) = browser
        .send(
            reqwest::Method::PUT,
            &format!("/t/default/auth/v1/admin/users/{id}"),
            json!({"ban_duration": "24h"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = browser
        .empty(
            reqwest::Method::DELETE,
            &format!("/t/default/auth/v1/admin/users/{id}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/storage/v1/bucket",
            json!({"name": "docs"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response = browser
        .request(
            reqwest::Method::POST,
            "/t/default/storage/v1/object/docs/a/hello.html",
            true,
        )
        .header("content-type", "text/html")
        .body("<script>alert(1)</script>")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = browser
        .request(
            reqwest::Method::GET,
            "/t/default/storage/v1/object/docs/a/hello.html",
            false,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Stored files never run as pages of the dashboard's origin.
    assert_eq!(response.headers()["content-disposition"], "attachment");
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.starts_with("sandbox"), "{csp}");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.text().await.unwrap(), "<script>alert(1)</script>");
    let (status, listed) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/storage/v1/object/list/docs",
            json!({"prefix": "a/"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed[0]["name"], "hello.html");
    let (status, _) = browser
        .send(
            reqwest::Method::DELETE,
            "/t/default/storage/v1/object/docs",
            json!({"prefixes": ["a/hello.html"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// A server hosting tenants (as `sovra serve` builds it) and its
/// platform key.
async fn spawn_platform() -> (String, String, TestDb, tokio::task::JoinHandle<()>) {
    let db = TestDb::new().await;
    let mut config = sovra_config::Config::default();
    let data_dir = sovra_test_support::scratch_dir();
    config.data_dir = data_dir.clone();
    let mut keys =
        sovra_server::keys::load_or_create(&data_dir.join("keys.json"), &config).unwrap();
    let key = sovra_server::platform::load_or_create(&data_dir.join("platform.key"))
        .unwrap()
        .key;
    let platform = Arc::new(Platform::new(&config, db.config(), &key).unwrap());
    platform.refresh_names().await.unwrap();
    keys.keyset = keys.keyset.with_foreign_refs(platform.ref_guard());
    let tenant = sovra_server::serve::build_tenant(
        &config,
        db.config_as("authenticator"),
        db.config(),
        keys,
    )
    .await
    .unwrap();
    let resolver = sovra_server::TenantResolver::single(tenant);
    let state =
        sovra_server::AppState::from_config(resolver, &config).with_platform(platform.clone());
    let app = sovra_server::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    platform.set_public_url(&url);
    let options = sovra_server::serve::HttpOptions::from_config(&config);
    let server = tokio::spawn(async move {
        let _ =
            sovra_server::serve::serve_http(listener, app, options, std::future::pending()).await;
    });
    (url, key, db, server)
}

#[tokio::test]
async fn the_platform_key_manages_tenants_without_seeing_their_secret_keys() {
    let (url, key, _db, server) = spawn_platform().await;
    let mut browser = Browser::new(&url);
    let (status, body) = browser.sign_in(&key, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["kind"], "platform");
    let metrics = browser
        .request(reqwest::Method::GET, "/metrics", false)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("sovra_db_pool_max_connections"), "{text}");
    let name = format!("dash-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let (status, created) = browser
        .send(
            reqwest::Method::POST,
            "/platform/tenants",
            json!({"name": name}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["name"], name.as_str());
    assert!(created.get("service_role_key").is_none(), "{created}");
    assert!(created.get("secret_key").is_none(), "{created}");
    assert!(created["anon_key"].is_string());
    let (status, listed) = browser.get("/platform/tenants").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!listed.to_string().contains("service_role_key"));
    let (_, tenants) = browser.get("/tenants").await;
    assert_eq!(tenants[0]["name"], "default");
    assert!(
        tenants
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == name.as_str())
    );
    // The platform session acts on the new tenant as its service_role.
    let (status, body) = browser
        .send(
            reqwest::Method::POST,
            &format!("/t/{name}/sql"),
            json!({"query": "select current_user, current_database()"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["rows"][0][0], "service_role");
    let database = body["results"][0]["rows"][0][1]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(database.starts_with("tenant_dash_"), "{database}");
    let (status, buckets) = browser.get(&format!("/t/{name}/storage/v1/bucket")).await;
    assert_eq!(status, StatusCode::OK, "{buckets}");
    // Suspended: its APIs answer 503 through the dashboard too.
    let (status, _) = browser
        .empty(
            reqwest::Method::POST,
            &format!("/platform/tenants/{name}/suspend"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = browser.get(&format!("/t/{name}/tables")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = browser.get("/t/nosuch/tables").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = browser
        .empty(
            reqwest::Method::DELETE,
            &format!("/platform/tenants/{name}"),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    server.abort();
}
