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

/// Creates a confirmed user through the dashboard; its id.
async fn create_user(browser: &Browser, email: &str) -> String {
    let (status, user) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/auth/v1/admin/users",
            json!({"email": email, "password": "correct horse 1", "email_confirm": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{user}");
    user["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn policies_are_managed_as_the_owner_and_tested_as_a_user() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app.url);
    browser.sign_in(&app.service_role_key, None).await;
    let alice = create_user(&browser, "alice@example.com").await;
    let bob = create_user(&browser, "bob@example.com").await;
    app.db
        .client()
        .await
        .batch_execute(&format!(
            "create table public.notes (id bigint generated by default as identity primary key,
                                        owner uuid not null, body text not null);
             grant select on public.notes to authenticated;
             insert into public.notes (owner, body) values
               ('{alice}', 'alice 1'), ('{bob}', 'bob 1'), ('{bob}', 'bob 2');
             create table public.secret (id int primary key);
             revoke all on public.secret from authenticated;"
        ))
        .await
        .unwrap();
    let base = "/t/default/tables/public/notes";
    let as_user_path = format!("{base}/as-user");
    let as_user =
        |id: &str| browser.send(reqwest::Method::POST, &as_user_path, json!({"user_id": id}));
    // RLS off: every row.
    let (status, seen) = as_user(&alice).await;
    assert_eq!(status, StatusCode::OK, "{seen}");
    assert_eq!(seen["count"], 3);
    assert_eq!(seen["current_user"], "authenticated");
    assert_eq!(seen["uid"], alice.as_str());
    assert_eq!(seen["claims"]["email"], "alice@example.com");

    let (status, body) = browser
        .send(
            reqwest::Method::PUT,
            &format!("{base}/rls"),
            json!({"enabled": true}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, meta) = browser.get(base).await;
    assert_eq!(meta["rls"], true);
    // RLS on and no policy: nothing.
    assert_eq!(as_user(&alice).await.1["count"], 0);

    let (status, body) = browser
        .send(
            reqwest::Method::POST,
            &format!("{base}/policies"),
            json!({"name": "own notes", "command": "SELECT", "roles": ["authenticated"],
                   "using": "owner = auth.uid()"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, meta) = browser.get(base).await;
    assert_eq!(meta["policies"][0]["name"], "own notes");
    assert_eq!(meta["policies"][0]["command"], "SELECT");
    let (_, seen) = as_user(&alice).await;
    assert_eq!(seen["count"], 1);
    assert_eq!(seen["rows"][0]["body"], "alice 1");
    let (_, seen) = as_user(&bob).await;
    assert_eq!(seen["count"], 2);

    // Edit: renamed, every row.
    let (status, body) = browser
        .send(
            reqwest::Method::PUT,
            &format!("{base}/policies/own%20notes"),
            json!({"name": "all notes", "command": "SELECT", "roles": ["authenticated"], "using": "true"}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (_, meta) = browser.get(base).await;
    assert_eq!(meta["policies"].as_array().unwrap().len(), 1);
    assert_eq!(meta["policies"][0]["name"], "all notes");
    assert_eq!(as_user(&alice).await.1["count"], 3);

    // Refusals: PostgreSQL's errors come back with their code; bad input
    // never reaches it; one string is one statement.
    for (policy, code) in [
        (json!({"name": "p", "using": "owner = "}), "42601"),
        (
            json!({"name": "p", "command": "SELECT", "check": "true"}),
            "42601",
        ),
        (json!({"name": "p", "using": "nope = 1"}), "42703"),
        (json!({"name": "all notes", "using": "true"}), "42710"),
        (
            json!({"name": "p", "using": "true); drop table public.notes; --"}),
            "42601",
        ),
        (
            json!({"name": "p", "roles": ["no_such_role"], "using": "true"}),
            "42704",
        ),
    ] {
        let (status, body) = browser
            .send(
                reqwest::Method::POST,
                &format!("{base}/policies"),
                policy.clone(),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{policy}: {body}");
        assert_eq!(body["error"], "sql", "{policy}: {body}");
        assert_eq!(body["detail"]["code"], code, "{policy}: {body}");
    }
    assert_eq!(as_user(&alice).await.1["count"], 3, "notes is still there");
    for policy in [
        json!({"name": "", "using": "true"}),
        json!({"name": "p", "command": "truncate"}),
        json!({"name": "p", "roles": "authenticated"}),
        json!("not an object"),
    ] {
        let (status, body) = browser
            .send(
                reqwest::Method::POST,
                &format!("{base}/policies"),
                policy.clone(),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{policy}: {body}");
        assert_eq!(body["error"], "bad_request", "{policy}: {body}");
    }
    let (status, _) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/tables/public/nope/policies",
            json!({"name": "p", "using": "true"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = browser
        .send(
            reqwest::Method::PUT,
            &format!("{base}/rls"),
            json!({"enabled": "yes"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = answer(browser.request(
        reqwest::Method::DELETE,
        &format!("{base}/policies/all%20notes"),
        false,
    ))
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token");
    let (status, body) = as_user("not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = as_user("00000000-0000-4000-8000-000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // The user's privileges are PostgreSQL's to decide.
    let (status, body) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/tables/public/secret/as-user",
            json!({"user_id": alice}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["detail"]["code"], "42501");

    let (status, _) = browser
        .empty(
            reqwest::Method::DELETE,
            &format!("{base}/policies/all%20notes"),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = browser
        .empty(
            reqwest::Method::DELETE,
            &format!("{base}/policies/all%20notes"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["detail"]["code"], "42704");
    assert_eq!(as_user(&bob).await.1["count"], 0);
    let (status, _) = browser
        .send(
            reqwest::Method::PUT,
            &format!("{base}/rls"),
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(as_user(&bob).await.1["count"], 3);
}

#[tokio::test]
async fn a_users_sessions_are_listed_and_ended() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app.url);
    browser.sign_in(&app.service_role_key, None).await;
    let id = create_user(&browser, "sessions@example.com").await;
    let http = reqwest::Client::new();
    let token = |grant: &'static str, body: Value| {
        http.post(format!("{}/auth/v1/token?grant_type={grant}", app.url))
            .header("apikey", &app.anon_key)
            .json(&body)
            .send()
    };
    let mut refresh = Vec::new();
    for _ in 0..2 {
        let response = token(
            "password",
            json!({"email": "sessions@example.com", "password": "correct horse 1"}),
        )
        .await
        .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        refresh.push(body["refresh_token"].as_str().unwrap().to_owned());
    }
    let path = format!("/t/default/users/{id}/sessions");
    let (status, sessions) = browser.get(&path).await;
    assert_eq!(status, StatusCode::OK, "{sessions}");
    let sessions = sessions.as_array().unwrap().clone();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0]["aal"], "aal1");
    // The newest first: the second sign-in's session.
    let newest = sessions[0]["id"].as_str().unwrap().to_owned();

    let (status, _) =
        answer(browser.request(reqwest::Method::DELETE, &format!("{path}/{newest}"), false)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token");
    let (status, body) = browser
        .empty(reqwest::Method::DELETE, &format!("{path}/{newest}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ended"], 1);
    // Its refresh token is dead; the other session lives on.
    let ended = token("refresh_token", json!({"refresh_token": refresh[1]}))
        .await
        .unwrap();
    assert_eq!(ended.status(), StatusCode::BAD_REQUEST);
    let live = token("refresh_token", json!({"refresh_token": refresh[0]}))
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);

    let (status, _) = browser
        .empty(reqwest::Method::DELETE, &format!("{path}/{newest}"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = browser
        .empty(reqwest::Method::DELETE, &format!("{path}/not-a-uuid"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = browser.get("/t/default/users/not-a-uuid/sessions").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = browser.empty(reqwest::Method::DELETE, &path).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ended"], 1);
    let (_, sessions) = browser.get(&path).await;
    assert_eq!(sessions, json!([]));
    let (status, _) = browser.get(&format!("/t/other/users/{id}/sessions")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "another tenant");
}

#[tokio::test]
async fn recent_requests_are_logged_without_queries_or_keys() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app.url);
    browser.sign_in(&app.service_role_key, None).await;
    let marker = format!("logged_{}", uuid::Uuid::new_v4().simple());
    let response = reqwest::Client::new()
        .get(format!(
            "{}/rest/v1/{marker}?select=*&apikey={}",
            app.url, app.anon_key
        ))
        .header("apikey", &app.anon_key)
        .header("x-request-id", &marker)
        .send()
        .await
        .unwrap();
    let answered = response.status().as_u16();
    assert!(answered >= 400, "{answered}");
    let (status, logs) = browser.get("/t/default/logs").await;
    assert_eq!(status, StatusCode::OK, "{logs}");
    let entry = logs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["request_id"] == marker.as_str())
        .unwrap_or_else(|| panic!("{marker} in {logs}"))
        .clone();
    assert_eq!(entry["path"], format!("/rest/v1/{marker}"));
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["status"], answered);
    assert_eq!(entry["tenant"], "default");
    assert_eq!(entry["route"], "/rest/v1/{*path}");
    assert!(entry["latency_ms"].as_f64().unwrap() >= 0.0);
    let text = logs.to_string();
    assert!(!text.contains(&app.anon_key), "no key in the log");
    assert!(!text.contains(&app.service_role_key), "no key in the log");
    assert!(!text.contains("select=*"), "no query string in the log");
    // Another tenant's log is not this session's to read.
    let (status, _) = browser.get("/t/other/logs").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = Browser::new(&app.url).get("/t/default/logs").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Opens the dashboard's live-view socket with `csrf` and `origin`.
async fn live_socket(
    app: &TestApp,
    browser: &Browser,
    csrf: &str,
    origin: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    StatusCode,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let url = format!(
        "{}/_/api/t/default/realtime/websocket?vsn=1.0.0&csrf={csrf}",
        app.url.replacen("http", "ws", 1)
    );
    let mut request = url.into_client_request().unwrap();
    if let Some(cookie) = &browser.cookie {
        request
            .headers_mut()
            .insert("cookie", cookie.parse().unwrap());
    }
    request
        .headers_mut()
        .insert("origin", origin.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(StatusCode::from_u16(response.status().as_u16()).unwrap())
        }
        Err(err) => panic!("{err}"),
    }
}

/// The next message on `socket` with event `event`.
async fn next_event(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    event: &str,
) -> Value {
    use futures_util::StreamExt as _;
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(20), socket.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = message {
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["event"] == event {
                return value;
            }
        }
    }
}

#[tokio::test]
async fn the_live_view_socket_acts_with_the_tenant_key_for_the_session_only() {
    use futures_util::SinkExt as _;
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app.url);
    browser.sign_in(&app.service_role_key, None).await;
    let origin = app.url.clone();
    let (status, stats) = browser.get("/t/default/realtime").await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    let before = stats["connections"].as_u64().unwrap();

    // Refusals: no CSRF token, another origin, no session.
    let csrf = browser.csrf.clone();
    assert_eq!(
        live_socket(&app, &browser, "wrong", &origin).await.err(),
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        live_socket(&app, &browser, &csrf, "http://evil.example")
            .await
            .err(),
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        live_socket(&app, &Browser::new(&app.url), &csrf, &origin)
            .await
            .err(),
        Some(StatusCode::UNAUTHORIZED)
    );

    let mut socket = live_socket(&app, &browser, &csrf, &origin).await.unwrap();
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            json!({"topic": "realtime:dash-room", "event": "phx_join", "ref": "1", "join_ref": "1",
                   "payload": {"config": {"broadcast": {"self": true}, "presence": {"key": ""}, "postgres_changes": []}}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let reply = next_event(&mut socket, "phx_reply").await;
    assert_eq!(reply["payload"]["status"], "ok", "{reply}");
    let (_, stats) = browser.get("/t/default/realtime").await;
    assert_eq!(stats["connections"].as_u64().unwrap(), before + 1);
    assert!(stats["channels"].as_u64().unwrap() >= 1);

    let sent = reqwest::Client::new()
        .post(format!("{}/realtime/v1/api/broadcast", app.url))
        .header("apikey", &app.service_role_key)
        .json(
            &json!({"messages": [{"topic": "dash-room", "event": "greet", "payload": {"hi": 1}}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let got = next_event(&mut socket, "broadcast").await;
    assert_eq!(got["payload"]["event"], "greet");
    assert_eq!(got["payload"]["payload"], json!({"hi": 1}));
}

#[tokio::test]
async fn jobs_show_queues_cron_and_dead_letters_and_act_on_them() {
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app.url);
    browser.sign_in(&app.service_role_key, None).await;
    app.db
        .client()
        .await
        .batch_execute(
            "select cron.schedule('nightly', '0 3 * * *', 'select 1');
             insert into net.http_request_dead
               (id, method, url, headers, timeout_milliseconds, attempts, last_error, created)
             values (77, 'POST', 'https://hooks.example.invalid/x', '{}', 1000, 5, 'refused', now()),
                    (78, 'GET', 'https://hooks.example.invalid/y', '{}', 1000, 5, 'refused', now());",
        )
        .await
        .unwrap();
    let (status, body) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/jobs/queues",
            json!({"name": "mail"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, id) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/jobs/queues/mail/send",
            json!({"message": {"to": "a@example.com"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{id}");
    assert_eq!(id, 1);
    let (_, jobs) = browser.get("/t/default/jobs").await;
    assert_eq!(jobs["queues"][0]["name"], "mail", "{jobs}");
    assert_eq!(jobs["queues"][0]["length"], 1);
    assert_eq!(jobs["cron"][0]["jobname"], "nightly");
    assert_eq!(jobs["cron"][0]["runs"], json!([]));
    assert_eq!(jobs["webhooks"]["dead"].as_array().unwrap().len(), 2);
    let (status, read) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/jobs/queues/mail/read",
            json!({"vt": 30, "qty": 5}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{read}");
    assert_eq!(read[0]["message"], json!({"to": "a@example.com"}));
    assert_eq!(read[0]["read_ct"], 1);
    // Hidden for 30 s after the read.
    let (_, again) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/jobs/queues/mail/read",
            json!({}),
        )
        .await;
    assert_eq!(again, json!([]));

    let (status, replayed) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/jobs/dead-letters/replay",
            json!({"ids": [77]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{replayed}");
    assert_eq!(replayed["replayed"], 1);
    let (_, jobs) = browser.get("/t/default/jobs").await;
    let dead: Vec<i64> = jobs["webhooks"]["dead"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert!(!dead.contains(&77), "{jobs}");

    // Refusals.
    for (path, body) in [
        ("/t/default/jobs/queues/mail/read", json!({"qty": 1000})),
        (
            "/t/default/jobs/queues/mail/send",
            json!({"delay": -1, "message": 1}),
        ),
        ("/t/default/jobs/queues/mail/send", json!({})),
        ("/t/default/jobs/queues", json!({"name": ""})),
        ("/t/default/jobs/dead-letters/replay", json!({"ids": ["x"]})),
    ] {
        let (status, answer) = browser
            .send(reqwest::Method::POST, path, body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
        assert_eq!(answer["error"], "bad_request");
    }
    let (status, answer) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/jobs/queues/nope/send",
            json!({"message": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"], "sql");
    let (status, _) = answer_of(&browser, "/t/default/jobs/dead-letters/replay").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "no CSRF token");
    let (status, _) = browser.get("/t/other/jobs").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// A POST without the CSRF token.
async fn answer_of(browser: &Browser, path: &str) -> (StatusCode, Value) {
    answer(
        browser
            .request(reqwest::Method::POST, path, false)
            .json(&json!({})),
    )
    .await
}

#[tokio::test]
async fn resumable_uploads_go_through_the_proxy() {
    use base64::Engine as _;
    let app = TestApp::spawn().await;
    let mut browser = Browser::new(&app.url);
    browser.sign_in(&app.service_role_key, None).await;
    let (status, body) = browser
        .send(
            reqwest::Method::POST,
            "/t/default/storage/v1/bucket",
            json!({"name": "big"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let content = vec![7u8; 1024 * 1024 + 10];
    let created = browser
        .request(
            reqwest::Method::POST,
            "/t/default/storage/v1/upload/resumable",
            true,
        )
        .header("tus-resumable", "1.0.0")
        .header("upload-length", content.len().to_string())
        .header(
            "upload-metadata",
            format!("bucketName {},objectName {}", b64("big"), b64("a/file.bin")),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let id = location.rsplit('/').next().unwrap().to_owned();
    let chunk = |offset: usize, bytes: Vec<u8>| {
        browser
            .request(
                reqwest::Method::PATCH,
                &format!("/t/default/storage/v1/upload/resumable/{id}"),
                true,
            )
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", offset.to_string())
            .header("content-type", "application/offset+octet-stream")
            .body(bytes)
            .send()
    };
    // The wrong offset is refused (TUS's 409).
    let wrong = chunk(5, content.clone()).await.unwrap();
    assert_eq!(wrong.status(), StatusCode::CONFLICT);
    let first = chunk(0, content[..1024 * 1024].to_vec()).await.unwrap();
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    assert_eq!(first.headers()["upload-offset"], "1048576");
    let head = browser
        .request(
            reqwest::Method::HEAD,
            &format!("/t/default/storage/v1/upload/resumable/{id}"),
            false,
        )
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["upload-offset"], "1048576");
    let last = chunk(1024 * 1024, content[1024 * 1024..].to_vec())
        .await
        .unwrap();
    assert_eq!(last.status(), StatusCode::NO_CONTENT);
    let stored = browser
        .request(
            reqwest::Method::GET,
            "/t/default/storage/v1/object/big/a/file.bin",
            false,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::OK);
    assert_eq!(stored.bytes().await.unwrap().to_vec(), content);
    // Without the CSRF token, no upload starts.
    let refused = browser
        .request(
            reqwest::Method::POST,
            "/t/default/storage/v1/upload/resumable",
            false,
        )
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
}
