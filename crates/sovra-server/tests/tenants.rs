//! Many tenants on one server (#14), through the real router on a real
//! PostgreSQL: the tenant API and its refusals, routing by path and host,
//! and isolation (tokens, keys, signed URLs, TUS uploads, realtime topics,
//! database logins), suspend, resume and delete.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sovra_server::tenants::Platform;
use sovra_test_support::TestDb;
use tokio_tungstenite::tungstenite::Message as Ws;

#[path = "support/platform.rs"]
mod platform_server;

use platform_server::fake_smtp;

struct Server {
    url: String,
    key: String,
    default_anon: String,
    /// The default tenant's opaque secret key (`sb_secret_…`).
    default_secret_key: String,
    db: TestDb,
    http: reqwest::Client,
    platform: Arc<Platform>,
    _server: tokio::task::JoinHandle<()>,
}

struct Created {
    name: String,
    url: String,
    anon: String,
    service: String,
    database: String,
}

async fn spawn_with(config: sovra_config::Config) -> Server {
    let spawned = platform_server::spawn(config).await;
    Server {
        url: spawned.url,
        key: spawned.key,
        default_anon: spawned.default_anon,
        default_secret_key: spawned.default_secret_key,
        db: spawned.db,
        http: reqwest::Client::new(),
        platform: spawned.platform,
        _server: spawned.server,
    }
}

async fn spawn() -> Server {
    spawn_with(sovra_config::Config::default()).await
}

/// A name no other test of this process uses (they share one cluster).
fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand_suffix())
}

fn rand_suffix() -> u32 {
    let id = uuid::Uuid::new_v4();
    u32::from_le_bytes(id.as_bytes()[..4].try_into().unwrap())
}

impl Server {
    async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/sovra/v1/tenants{path}", self.url))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn create(&self, prefix: &str) -> Created {
        let name = unique(prefix);
        let (status, body) = self
            .api(reqwest::Method::POST, "", Some(json!({"name": name})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        Created {
            name: body["name"].as_str().unwrap().to_owned(),
            url: body["url"].as_str().unwrap().to_owned(),
            anon: body["anon_key"].as_str().unwrap().to_owned(),
            service: body["service_role_key"].as_str().unwrap().to_owned(),
            database: body["database"].as_str().unwrap().to_owned(),
        }
    }

    async fn patch(&self, name: &str, body: Value) -> Value {
        let (status, body) = self
            .api(reqwest::Method::PATCH, &format!("/{name}"), Some(body))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// A superuser client on `database`.
    async fn sql(&self, database: &str) -> sovra_pg::tokio_postgres::Client {
        let mut config = self.db.config();
        config.dbname(database);
        sovra_pg::connect_one(&config).await.unwrap()
    }

    async fn get(&self, url: &str, apikey: &str, token: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(url)
            .header("apikey", apikey)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Signs up `email` on a tenant with auto-confirmation; its access token.
    async fn sign_up(&self, tenant: &Created, email: &str) -> String {
        let response = self
            .http
            .post(format!("{}/auth/v1/signup", tenant.url))
            .header("apikey", &tenant.anon)
            .json(&json!({"email": email, "password": "correct horse battery"}))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn the_tenant_api_requires_the_platform_key() {
    let server = spawn().await;
    let url = format!("{}/sovra/v1/tenants", server.url);
    let none = server.http.get(&url).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let body: Value = none.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let wrong = server
        .http
        .get(&url)
        .bearer_auth(format!("{}x", server.key))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    assert_eq!(wrong.json::<Value>().await.unwrap()["error"], "forbidden");
    // The default tenant's keys are not the platform key.
    let anon = server
        .http
        .post(&url)
        .bearer_auth(&server.default_anon)
        .json(&json!({"name": "nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), StatusCode::FORBIDDEN);
    let basic = server
        .http
        .get(&url)
        .header("authorization", "Basic abc")
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);
    let (status, _) = server.api(reqwest::Method::GET, "", None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn tenants_are_created_listed_shown_and_their_names_checked() {
    let server = spawn().await;
    let started = std::time::Instant::now();
    let acme = server.create("acme").await;
    eprintln!("created a tenant in {:?}", started.elapsed());
    assert_eq!(acme.url, format!("{}/t/{}", server.url, acme.name));
    assert_eq!(
        acme.database,
        format!("tenant_{}", acme.name.replace('-', "_"))
    );
    assert!(acme.anon.starts_with("eyJ") && acme.service.starts_with("eyJ"));
    assert_ne!(acme.anon, server.default_anon);

    let (status, list) = server.api(reqwest::Method::GET, "", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == acme.name.as_str())
    );
    let (status, shown) = server
        .api(reqwest::Method::GET, &format!("/{}", acme.name), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["state"], "active");
    assert_eq!(shown["anon_key"], acme.anon.as_str());
    assert_eq!(shown["database"], acme.database.as_str());

    // Refusals: a name taken, bad names, a bad body, unknown tenants.
    let (status, body) = server
        .api(reqwest::Method::POST, "", Some(json!({"name": acme.name})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "conflict");
    for bad in ["Acme", "1abc", "a_b", "default", "x-", "", &"a".repeat(41)] {
        let (status, body) = server
            .api(reqwest::Method::POST, "", Some(json!({"name": bad})))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {body}");
        assert_eq!(body["error"], "bad_name");
    }
    let (status, _) = server.api(reqwest::Method::POST, "", Some(json!({}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let raw = server
        .http
        .post(format!("{}/sovra/v1/tenants", server.url))
        .bearer_auth(&server.key)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
    let (status, body) = server
        .api(reqwest::Method::GET, "/no-such-tenant", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "tenant_not_found");
    let (status, _) = server
        .api(
            reqwest::Method::PATCH,
            &format!("/{}", acme.name),
            Some(json!({"pool_size": 0})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .api(
            reqwest::Method::PATCH,
            &format!("/{}", acme.name),
            Some(json!({"colour": "red"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .api(
            reqwest::Method::PATCH,
            &format!("/{}", acme.name),
            Some(json!({"jwt_secret": "short"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .api(
            reqwest::Method::PATCH,
            "/no-such-tenant",
            Some(json!({"pool_size": 2})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let patched = server
        .patch(
            &acme.name,
            json!({"site_url": "https://acme.example", "pool_size": 3}),
        )
        .await;
    assert_eq!(patched["settings"]["site_url"], "https://acme.example");
    assert_eq!(patched["settings"]["pool_size"], 3);

    // Unknown tenants under /t/: 404 JSON; the API is not under a tenant.
    let unknown = server
        .http
        .get(format!("{}/t/nobody-here/rest/v1/", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        unknown.json::<Value>().await.unwrap()["error"],
        "tenant_not_found"
    );
    let nested = server
        .http
        .get(format!("{}/sovra/v1/tenants", acme.url))
        .bearer_auth(&server.key)
        .send()
        .await
        .unwrap();
    assert_eq!(nested.status(), StatusCode::NOT_FOUND);
}

/// A table with a folder-per-user policy, in a tenant's database.
async fn notes_table(server: &Server, database: &str) {
    server
        .sql(database)
        .await
        .batch_execute(
            "create table public.notes (
               id bigint generated always as identity primary key,
               owner uuid not null default auth.uid(),
               body text not null);
             alter table public.notes enable row level security;
             create policy own on public.notes for all to authenticated
               using (owner = auth.uid()) with check (owner = auth.uid());",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn each_tenant_has_its_own_users_rows_and_keys() {
    let server = spawn().await;
    let a = server.create("iso-a").await;
    let b = server.create("iso-b").await;
    // The same secret on both: tokens still belong to one tenant only.
    let secret = "an-identical-secret-of-more-than-thirty-two-chars";
    let a_view = server
        .patch(
            &a.name,
            json!({"email_autoconfirm": true, "jwt_secret": secret}),
        )
        .await;
    let b_view = server
        .patch(
            &b.name,
            json!({"email_autoconfirm": true, "jwt_secret": secret}),
        )
        .await;
    let a_anon = a_view["anon_key"].as_str().unwrap().to_owned();
    let b_anon = b_view["anon_key"].as_str().unwrap().to_owned();
    assert!(a_view["settings"].get("jwt_secret").is_none());
    let a = Created {
        anon: a_anon.clone(),
        ..a
    };
    let b = Created {
        anon: b_anon.clone(),
        ..b
    };
    notes_table(&server, &a.database).await;
    notes_table(&server, &b.database).await;

    // The same email signs up on both, as two different users.
    let alice_a = server.sign_up(&a, "alice@example.com").await;
    let alice_b = server.sign_up(&b, "alice@example.com").await;
    let insert = server
        .http
        .post(format!("{}/rest/v1/notes", a.url))
        .header("apikey", &a_anon)
        .header("prefer", "return=representation")
        .bearer_auth(&alice_a)
        .json(&json!({"body": "from a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(insert.status(), StatusCode::CREATED);
    let (status, rows) = server
        .get(
            &format!("{}/rest/v1/notes?select=body", a.url),
            &a_anon,
            &alice_a,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows, json!([{"body": "from a"}]));
    let (status, rows) = server
        .get(
            &format!("{}/rest/v1/notes?select=body", b.url),
            &b_anon,
            &alice_b,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rows, json!([]));

    // Cross-tenant tokens and keys are refused, in both directions and
    // against the default tenant.
    let (status, body) = server
        .get(&format!("{}/rest/v1/notes", b.url), &b_anon, &alice_a)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = server
        .get(&format!("{}/rest/v1/notes", b.url), &a_anon, &a_anon)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .get(
            &format!("{}/rest/v1/notes", a.url),
            &server.default_anon,
            &server.default_anon,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .get(&format!("{}/rest/v1/", server.url), &a_anon, &a_anon)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = server
        .get(&format!("{}/auth/v1/user", b.url), &b_anon, &alice_a)
        .await;
    assert!(
        status == StatusCode::FORBIDDEN || status == StatusCode::UNAUTHORIZED,
        "{status} {body}"
    );
    let (status, user) = server
        .get(&format!("{}/auth/v1/user", a.url), &a_anon, &alice_a)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(user["email"], "alice@example.com");

    // Auth issues tokens for the tenant's own URL.
    let payload = alice_a.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["iss"], format!("{}/auth/v1", a.url));
    assert_eq!(claims["ref"], a.name.as_str());
}

#[tokio::test]
async fn a_tenants_logins_reach_its_own_database_only() {
    let server = spawn().await;
    let a = server.create("db-a").await;
    let b = server.create("db-b").await;
    let login = |user: &str, database: &str, role: Option<&str>| {
        let mut config = server.db.config();
        config.user(user).dbname(database);
        if let Some(role) = role {
            config.options(format!("-c role={role}"));
        }
        config
    };
    let refused =
        |result: Result<sovra_pg::tokio_postgres::Client, sovra_pg::tokio_postgres::Error>| {
            let err = result.expect_err("the login must be refused");
            assert_eq!(
                err.code(),
                Some(&sovra_pg::tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
                "{err}"
            );
        };
    let a_rest = format!("{}_rest", a.database);
    let a_auth = format!("{}_auth", a.database);
    // Its own database, as authenticator, switching to the API roles.
    let own = sovra_pg::connect_one(&login(&a_rest, &a.database, Some("authenticator")))
        .await
        .unwrap();
    let row = own
        .query_one("select current_user::text, session_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "authenticator");
    assert_eq!(row.get::<_, String>(1), a_rest);
    own.batch_execute("set role anon; reset role; set role service_role; reset role")
        .await
        .unwrap();
    let row = own
        .query_one("select current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "authenticator");
    // Not another tenant's database, nor the platform's, even starting as
    // a role that may connect there.
    for role in [None, Some("authenticator")] {
        refused(sovra_pg::connect_one(&login(&a_rest, &b.database, role)).await);
        refused(sovra_pg::connect_one(&login(&a_rest, &server.db.name, role)).await);
    }
    refused(
        sovra_pg::connect_one(&login(
            &a_auth,
            &server.db.name,
            Some("supabase_auth_admin"),
        ))
        .await,
    );
    refused(sovra_pg::connect_one(&login(&a_auth, &b.database, Some("supabase_auth_admin"))).await);
    // The default tenant's logins do not reach tenant databases.
    refused(sovra_pg::connect_one(&login("authenticator", &a.database, None)).await);
    refused(sovra_pg::connect_one(&login("supabase_auth_admin", &a.database, None)).await);
    // The registry's secrets are not readable by the API roles.
    let default_login = sovra_pg::connect_one(&login("authenticator", &server.db.name, None))
        .await
        .unwrap();
    let err = default_login
        .batch_execute("set role service_role; select * from sovra.tenant_logins")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&sovra_pg::tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
    default_login.batch_execute("reset role").await.unwrap();
    let err = default_login
        .batch_execute("set role service_role; select * from sovra.tenants")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(&sovra_pg::tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE)
    );
}

#[tokio::test]
async fn signed_urls_and_uploads_of_one_tenant_are_refused_by_another() {
    let server = spawn().await;
    let a = server.create("st-a").await;
    let b = server.create("st-b").await;
    for t in [&a, &b] {
        let made = server
            .http
            .post(format!("{}/storage/v1/bucket", t.url))
            .header("apikey", &t.service)
            .bearer_auth(&t.service)
            .json(&json!({"id": "files", "name": "files"}))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), StatusCode::OK, "{:?}", made.text().await);
    }
    let put = server
        .http
        .post(format!("{}/storage/v1/object/files/hello.txt", a.url))
        .header("apikey", &a.service)
        .bearer_auth(&a.service)
        .header("content-type", "text/plain")
        .body("hello from a")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK, "{:?}", put.text().await);
    let signed: Value = server
        .http
        .post(format!("{}/storage/v1/object/sign/files/hello.txt", a.url))
        .header("apikey", &a.service)
        .bearer_auth(&a.service)
        .json(&json!({"expiresIn": 60}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let path = signed["signedURL"].as_str().unwrap();
    let fetched = server
        .http
        .get(format!("{}/storage/v1{path}", a.url))
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.text().await.unwrap(), "hello from a");
    // The same URL on tenant b (which has the same bucket and path) and on
    // the default tenant is refused.
    let b_object = server
        .http
        .post(format!("{}/storage/v1/object/files/hello.txt", b.url))
        .header("apikey", &b.service)
        .bearer_auth(&b.service)
        .header("content-type", "text/plain")
        .body("hello from b")
        .send()
        .await
        .unwrap();
    assert_eq!(b_object.status(), StatusCode::OK);
    for base in [&b.url, &server.url] {
        let other = server
            .http
            .get(format!("{base}/storage/v1{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::BAD_REQUEST, "{base}");
        let body: Value = other.json().await.unwrap();
        assert_eq!(body["error"], "InvalidJWT", "{body}");
    }
    // A resumable upload made on a is unknown on b; its Location keeps a's
    // prefix so that TUS clients continue on the right tenant.
    use base64::Engine as _;
    let meta = |v: &str| base64::engine::general_purpose::STANDARD.encode(v);
    let created = server
        .http
        .post(format!("{}/storage/v1/upload/resumable", a.url))
        .header("apikey", &a.service)
        .bearer_auth(&a.service)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "5")
        .header(
            "upload-metadata",
            format!(
                "bucketName {},objectName {},contentType {}",
                meta("files"),
                meta("tus.txt"),
                meta("text/plain")
            ),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let id = location.rsplit('/').next().unwrap().to_owned();
    assert_eq!(
        location,
        format!("/t/{}/storage/v1/upload/resumable/{id}", a.name)
    );
    let patch = |base: &str, key: &str| {
        server
            .http
            .patch(format!("{base}/storage/v1/upload/resumable/{id}"))
            .header("apikey", key)
            .bearer_auth(key)
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body("hello")
            .send()
    };
    let on_b = patch(&b.url, &b.service).await.unwrap();
    // As Storage's TUS server answers an unknown upload: 404, plain text.
    assert_eq!(on_b.status(), StatusCode::NOT_FOUND);
    let on_a = patch(&a.url, &a.service).await.unwrap();
    assert_eq!(on_a.status(), StatusCode::NO_CONTENT);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn socket(tenant_url: &str, key: &str) -> Socket {
    let url = format!(
        "{}/realtime/v1/websocket?apikey={key}&vsn=1.0.0",
        tenant_url.replace("http", "ws")
    );
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

async fn send(ws: &mut Socket, value: Value) {
    ws.send(Ws::Text(value.to_string().into())).await.unwrap();
}

/// The next text frame (a close frame panics), within 30 s.
async fn next(ws: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("a frame within 30 s")
            .expect("the socket is open")
            .unwrap();
        match frame {
            Ws::Text(text) => return serde_json::from_str(&text).unwrap(),
            Ws::Close(close) => panic!("closed: {close:?}"),
            _ => {}
        }
    }
}

async fn join(ws: &mut Socket, topic: &str) {
    send(
        ws,
        json!({"topic": format!("realtime:{topic}"), "event": "phx_join", "ref": "1",
               "payload": {"config": {"broadcast": {"self": false, "ack": true}, "presence": {"key": ""}}}}),
    )
    .await;
    loop {
        let reply = next(ws).await;
        if reply["event"] == "phx_reply" {
            assert_eq!(reply["payload"]["status"], "ok", "{reply}");
            return;
        }
    }
}

async fn broadcast(ws: &mut Socket, topic: &str, text: &str) {
    send(
        ws,
        json!({"topic": format!("realtime:{topic}"), "event": "broadcast", "ref": "2",
               "payload": {"type": "broadcast", "event": "say", "payload": {"text": text}}}),
    )
    .await;
    // With ack, the reply comes once the message went to the room.
    loop {
        let reply = next(ws).await;
        if reply["event"] == "phx_reply" && reply["ref"] == "2" {
            return;
        }
    }
}

async fn next_broadcast(ws: &mut Socket) -> String {
    loop {
        let frame = next(ws).await;
        if frame["event"] == "broadcast" {
            return frame["payload"]["payload"]["text"]
                .as_str()
                .unwrap()
                .to_owned();
        }
    }
}

#[tokio::test]
async fn realtime_topics_are_per_tenant_and_a_delete_closes_sockets() {
    let server = spawn().await;
    let a = server.create("rt-a").await;
    let b = server.create("rt-b").await;
    let mut a_listener = socket(&a.url, &a.anon).await;
    let mut a_sender = socket(&a.url, &a.anon).await;
    let mut b_listener = socket(&b.url, &b.anon).await;
    let mut b_sender = socket(&b.url, &b.anon).await;
    for ws in [
        &mut a_listener,
        &mut a_sender,
        &mut b_listener,
        &mut b_sender,
    ] {
        join(ws, "room").await;
    }
    broadcast(&mut a_sender, "room", "to a").await;
    broadcast(&mut b_sender, "room", "to b").await;
    assert_eq!(next_broadcast(&mut a_listener).await, "to a");
    // b's listener gets b's message first: a's never reached it.
    assert_eq!(next_broadcast(&mut b_listener).await, "to b");

    // A key of one tenant opens no socket on another.
    let url = format!(
        "{}/realtime/v1/websocket?apikey={}&vsn=1.0.0",
        b.url.replace("http", "ws"),
        a.anon
    );
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("expected 401, got {other:?}"),
    }

    // Deleting a tenant closes its sockets; the other tenant carries on.
    let (status, _) = server
        .api(reqwest::Method::DELETE, &format!("/{}", a.name), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), a_listener.next())
            .await
            .expect("the socket closes within 30 s");
        match frame {
            None | Some(Err(_)) | Some(Ok(Ws::Close(_))) => break,
            Some(Ok(_)) => {}
        }
    }
    broadcast(&mut b_sender, "room", "still here").await;
    assert_eq!(next_broadcast(&mut b_listener).await, "still here");
    let gone = server
        .http
        .get(format!("{}/rest/v1/", a.url))
        .header("apikey", &a.anon)
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn suspend_resume_and_delete() {
    let server = spawn().await;
    let t = server.create("life").await;
    let (status, _) = server
        .get(&format!("{}/rest/v1/", t.url), &t.service, &t.service)
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = server
        .api(reqwest::Method::POST, &format!("/{}/suspend", t.name), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "suspended");
    let (status, body) = server
        .get(&format!("{}/rest/v1/", t.url), &t.service, &t.service)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "tenant_suspended");

    let (status, body) = server
        .api(reqwest::Method::POST, &format!("/{}/resume", t.name), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "active");
    let (status, _) = server
        .get(&format!("{}/rest/v1/", t.url), &t.service, &t.service)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .api(reqwest::Method::POST, "/no-such-tenant/suspend", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _) = server
        .api(reqwest::Method::DELETE, &format!("/{}", t.name), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .api(reqwest::Method::DELETE, &format!("/{}", t.name), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = server
        .get(&format!("{}/rest/v1/", t.url), &t.service, &t.service)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let admin = server.sql(&server.db.name).await;
    let left = admin
        .query_one(
            "select (select count(*) from pg_database where datname = $1)
                  + (select count(*) from pg_roles where rolname like $1 || '\\_%')",
            &[&t.database],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(left, 0);
    // The name is free again.
    let (status, body) = server
        .api(reqwest::Method::POST, "", Some(json!({"name": t.name})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn subdomains_of_the_base_domain_route_to_tenants() {
    let mut config = sovra_config::Config::default();
    config.server.base_domain = Some("tenants.test".to_owned());
    let server = spawn_with(config).await;
    let t = server.create("host").await;
    let (_, shown) = server
        .api(reqwest::Method::GET, &format!("/{}", t.name), None)
        .await;
    assert_eq!(shown["host_url"], format!("http://{}.tenants.test", t.name));
    let addr = server.url.trim_start_matches("http://");
    let port = addr.rsplit(':').next().unwrap();
    let get = |host: String, key: String| {
        server
            .http
            .get(format!("{}/rest/v1/", server.url))
            .header("host", host)
            .header("apikey", &key)
            .bearer_auth(&key)
            .send()
    };
    let ok = get(format!("{}.tenants.test:{port}", t.name), t.service.clone())
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    // The tenant's key is refused at the root host (the default tenant).
    let root = get(addr.to_owned(), t.service.clone()).await.unwrap();
    assert_eq!(root.status(), StatusCode::UNAUTHORIZED);
    let unknown = get("nobody.tenants.test".to_owned(), t.service.clone())
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_upgrade_migrates_every_tenant_database() {
    let server = spawn().await;
    // Nothing to do without tenants.
    server.platform.upgrade(2).await.unwrap();
    assert_eq!(server.platform.upgrade_pending(), None);
    let one = server.create("up-one").await;
    let two = server.create("up-two").await;
    // Both databases miss a migration, as after an upgrade (the tenants
    // migration: it is safe to apply again whatever its number).
    for t in [&one, &two] {
        let removed = server
            .sql(&t.database)
            .await
            .execute(
                "delete from sovra.schema_migrations where name = 'tenants'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(removed, 1);
        let client = server.sql(&t.database).await;
        assert!(!sovra_pg::migrate::is_current(&client).await.unwrap());
    }
    server.platform.upgrade(2).await.unwrap();
    assert_eq!(server.platform.upgrade_pending(), None);
    for t in [&one, &two] {
        let client = server.sql(&t.database).await;
        assert!(sovra_pg::migrate::is_current(&client).await.unwrap());
    }
    let ready = server
        .http
        .get(format!("{}/ready", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let (status, _) = server
        .get(&format!("{}/rest/v1/", one.url), &one.service, &one.service)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_flood_past_the_rate_quota_is_paced_not_answered_at_full_speed() {
    let server = spawn().await;
    let t = server.create("flood").await;
    server
        .patch(&t.name, json!({"requests_per_second": 5}))
        .await;
    // Sixteen clients that send again as soon as they have an answer, for
    // two seconds. Refused at full speed they would make thousands of
    // requests; paced, the tenant's requests are served at 5 a second (plus
    // a second's burst) and refused at about the same pace.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut loops = Vec::new();
    for _ in 0..16 {
        let http = server.http.clone();
        let url = format!("{}/rest/v1/", t.url);
        let key = t.service.clone();
        loops.push(tokio::spawn(async move {
            let (mut served, mut refused) = (0u32, 0u32);
            while std::time::Instant::now() < deadline {
                let response = http
                    .get(&url)
                    .header("apikey", &key)
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                match response.status() {
                    StatusCode::OK => served += 1,
                    StatusCode::TOO_MANY_REQUESTS => refused += 1,
                    other => panic!("unexpected {other}"),
                }
            }
            (served, refused)
        }));
    }
    let (mut served, mut refused) = (0, 0);
    for task in loops {
        let (s, r) = task.await.unwrap();
        served += s;
        refused += r;
    }
    assert!(served <= 5 + 2 * 5 + 1, "served {served}");
    assert!(refused > 0);
    // At most a second's burst, two seconds of pace (5 a second, and the
    // clients the pace has no room for wait a second each), and the
    // sixteen answered after the deadline.
    assert!(refused <= 5 + 2 * (5 + 16) + 16, "refused {refused}");
    // Another tenant is served meanwhile and afterwards, unpaced.
    let other = server.create("calm").await;
    let (status, _) = server
        .get(
            &format!("{}/rest/v1/", other.url),
            &other.service,
            &other.service,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn quotas_answer_in_the_clients_shapes_and_are_counted() {
    let server = spawn().await;
    let t = server.create("quota").await;
    server
        .patch(
            &t.name,
            json!({"requests_per_second": 1, "statement_timeout_ms": 50, "storage_file_size_limit": 4}),
        )
        .await;
    // A statement over the timeout is the database's error, as PostgREST
    // reports it.
    server
        .sql(&t.database)
        .await
        .batch_execute(
            "create function public.slow() returns int language sql as 'select 1 from pg_sleep(1)';
             grant execute on function public.slow() to anon",
        )
        .await
        .unwrap();
    let slow = server
        .http
        .post(format!("{}/rest/v1/rpc/slow", t.url))
        .header("apikey", &t.anon)
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = slow.json().await.unwrap();
    assert_eq!(body["code"], "57014", "{body}");
    // Four requests within a second's burst of one: some are refused (one
    // at once, the next a second later: refusals are paced too).
    let mut refused = 0;
    for _ in 0..4 {
        let response = server
            .http
            .get(format!("{}/rest/v1/", t.url))
            .header("apikey", &t.service)
            .bearer_auth(&t.service)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(response.headers()["retry-after"], "1");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["message"], "API rate limit exceeded");
            refused += 1;
        }
    }
    assert!(refused > 0, "no request was refused");
    let metrics = server
        .http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sovra_tenant_quota_exceeded_total")
                && l.contains(&format!("tenant=\"{}\"", t.name))),
        "{metrics}"
    );
    // Other tenants are not limited by it.
    let other = server.create("quota-free").await;
    for _ in 0..5 {
        let (status, _) = server
            .get(
                &format!("{}/rest/v1/", other.url),
                &other.service,
                &other.service,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
}

#[tokio::test]
async fn idle_tenants_are_stopped_and_start_again_on_their_next_request() {
    let server = spawn().await;
    let quiet = server.create("idle-quiet").await;
    let busy = server.create("idle-busy").await;
    assert!(
        server.platform.live().is_empty(),
        "nothing starts before a request"
    );
    for t in [&quiet, &busy] {
        let (status, _) = server
            .get(&format!("{}/rest/v1/", t.url), &t.service, &t.service)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(server.platform.live().len(), 2);
    // A realtime connection keeps a tenant running.
    let mut ws = socket(&busy.url, &busy.anon).await;
    join(&mut ws, "room").await;
    assert_eq!(server.platform.stop_idle(Duration::ZERO), 1);
    let live: Vec<String> = server
        .platform
        .live()
        .iter()
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(live, vec![busy.name.clone()]);
    // The stopped one starts again.
    let (status, _) = server
        .get(
            &format!("{}/rest/v1/", quiet.url),
            &quiet.service,
            &quiet.service,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.platform.live().len(), 2);
}

/// A stopped tenant never starts on a stale schema cache: a column and a
/// table made while it was stopped, with no `NOTIFY pgrst` (nothing
/// listens then), are seen by its first request; a name that is not there
/// is still PostgREST's refusal. The guard for any cache kept across stops.
#[tokio::test]
async fn ddl_while_a_tenant_is_stopped_is_seen_by_its_first_request() {
    let server = spawn().await;
    let t = server.create("ddl-stopped").await;
    server
        .sql(&t.database)
        .await
        .batch_execute(
            "create table public.shelf (id int primary key);
             grant all on public.shelf to service_role;
             insert into public.shelf values (1);",
        )
        .await
        .unwrap();
    let shelf = |select: &str| format!("{}/rest/v1/shelf?select={select}", t.url);
    let (status, body) = server.get(&shelf("id"), &t.service, &t.service).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([{"id": 1}]));
    let (status, _) = server.get(&shelf("id,label"), &t.service, &t.service).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no such column yet");
    assert_eq!(server.platform.stop_idle(Duration::ZERO), 1);
    assert!(server.platform.live().is_empty());
    server
        .sql(&t.database)
        .await
        .batch_execute(
            "alter table public.shelf add column label text default 'new';
             create table public.bin (id int primary key);
             grant all on public.bin to service_role;
             insert into public.bin values (2);",
        )
        .await
        .unwrap();
    let (status, body) = server.get(&shelf("id,label"), &t.service, &t.service).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([{"id": 1, "label": "new"}]));
    let (status, body) = server
        .get(
            &format!("{}/rest/v1/bin?select=id", t.url),
            &t.service,
            &t.service,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([{"id": 2}]));
    let (status, body) = server.get(&shelf("id,nope"), &t.service, &t.service).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "42703", "{body}");
}

#[tokio::test]
async fn a_tenant_with_cron_jobs_keeps_running_when_idle() {
    let server = spawn().await;
    let t = server.create("cron-idle").await;
    server
        .sql(&t.database)
        .await
        .batch_execute("select cron.schedule('nightly', '0 3 * * *', 'select 1')")
        .await
        .unwrap();
    let (status, _) = server
        .get(&format!("{}/rest/v1/", t.url), &t.service, &t.service)
        .await;
    assert_eq!(status, StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !server.platform.live()[0]
        .cron
        .as_ref()
        .is_some_and(|c| c.has_jobs())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler never saw the job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.platform.stop_idle(Duration::ZERO), 0);
    assert_eq!(server.platform.live().len(), 1);
    // Without jobs it is stopped as any idle tenant.
    server
        .sql(&t.database)
        .await
        .batch_execute("select cron.unschedule('nightly')")
        .await
        .unwrap();
    while server.platform.live()[0]
        .cron
        .as_ref()
        .is_some_and(|c| c.has_jobs())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler never saw the job go"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.platform.stop_idle(Duration::ZERO), 1);
}

#[tokio::test]
async fn a_database_in_the_way_is_a_conflict_and_is_left_alone() {
    let server = spawn().await;
    // Make the template first, then a database with a tenant's name.
    server.create("first").await;
    let name = unique("squat");
    let database = format!("tenant_{}", name.replace('-', "_"));
    let admin = server.sql(&server.db.name).await;
    admin
        .batch_execute(&format!("create database \"{database}\""))
        .await
        .unwrap();
    let (status, body) = server
        .api(reqwest::Method::POST, "", Some(json!({"name": name})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let left = admin
        .query_one(
            "select (select count(*) from pg_database where datname = $1),
                    (select count(*) from pg_roles where rolname like $1 || '\\_%'),
                    (select count(*) from sovra.tenants where name = $2)",
            &[&database, &name],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            left.get::<_, i64>(0),
            left.get::<_, i64>(1),
            left.get::<_, i64>(2)
        ),
        (1, 0, 0),
        "the other database stays; the tenant's roles and row are gone"
    );
}

/// The payload of a JWT.
fn claims_of(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn the_default_tenant_refuses_a_tenants_tokens_signed_with_the_same_secret() {
    let secret = "one-secret-shared-by-the-default-tenant-and-acme";
    let mut config = sovra_config::Config::default();
    config.jwt.secret = Some(secret.to_owned());
    config.auth.email_autoconfirm = true;
    let server = spawn_with(config).await;
    let t = server.create("same-secret").await;
    let view = server
        .patch(
            &t.name,
            json!({"email_autoconfirm": true, "jwt_secret": secret}),
        )
        .await;
    let t = Created {
        anon: view["anon_key"].as_str().unwrap().to_owned(),
        service: view["service_role_key"].as_str().unwrap().to_owned(),
        ..t
    };
    assert_eq!(claims_of(&t.anon)["ref"], t.name.as_str());
    let root = Created {
        name: "default".to_owned(),
        url: server.url.clone(),
        anon: server.default_anon.clone(),
        service: String::new(),
        database: String::new(),
    };
    let tenant_user = server.sign_up(&t, "ten@example.com").await;
    let root_user = server.sign_up(&root, "root@example.com").await;

    // Each tenant serves its own keys and users.
    for (url, key, token) in [
        (&t.url, &t.anon, &tenant_user),
        (&server.url, &server.default_anon, &root_user),
    ] {
        let (status, body) = server.get(&format!("{url}/auth/v1/user"), key, token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    // The tenant's anon and service_role keys and its user's token are
    // refused at the root, although the default tenant signs with the
    // same secret.
    for key in [&t.anon, &t.service] {
        let (status, body) = server
            .get(&format!("{}/rest/v1/", server.url), key, key)
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    let (status, body) = server
        .get(
            &format!("{}/rest/v1/", server.url),
            &server.default_anon,
            &tenant_user,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = server
        .get(
            &format!("{}/auth/v1/user", server.url),
            &server.default_anon,
            &tenant_user,
        )
        .await;
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
        "{status} {body}"
    );
    let (status, body) = server
        .get(
            &format!("{}/storage/v1/bucket", server.url),
            &server.default_anon,
            &tenant_user,
        )
        .await;
    assert!(status.is_client_error(), "{status} {body}");
    // And the other way round: the default tenant's keys and users are
    // refused by the tenant.
    let (status, body) = server
        .get(
            &format!("{}/rest/v1/", t.url),
            &server.default_anon,
            &server.default_anon,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = server
        .get(&format!("{}/auth/v1/user", t.url), &t.anon, &root_user)
        .await;
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
        "{status} {body}"
    );
    // A key naming a project that is not a tenant here (a Supabase
    // project's key moving in with its secret) still works at the root.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    let moved = sovra_jwt::KeySet::new(&sovra_jwt::KeyStore::from_secret(secret, now), None, None)
        .unwrap()
        .with_project_ref("abcdefghijklmnopqrst")
        .mint_api_key("anon", "supabase", now, now + 3600)
        .unwrap();
    let (status, body) = server
        .get(&format!("{}/auth/v1/settings", server.url), &moved, &moved)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // Once the tenant is deleted its name is no project's any more here;
    // the test only checks that the delete keeps the root serving.
    let (status, _) = server
        .api(reqwest::Method::DELETE, &format!("/{}", t.name), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = server
        .get(
            &format!("{}/auth/v1/user", server.url),
            &server.default_anon,
            &root_user,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn each_tenant_has_its_own_opaque_keys() {
    let server = spawn().await;
    let name = unique("opaque");
    let (status, created) = server
        .api(reqwest::Method::POST, "", Some(json!({"name": name})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let url = created["url"].as_str().unwrap().to_owned();
    let publishable = created["publishable_key"].as_str().unwrap().to_owned();
    let secret = created["secret_key"].as_str().unwrap().to_owned();
    assert!(publishable.starts_with("sb_publishable_"), "{publishable}");
    assert!(secret.starts_with("sb_secret_"), "{secret}");
    let other = server.create("opaque-other").await;

    // Shown once: the tenant API never shows them again.
    let (status, shown) = server
        .api(reqwest::Method::GET, &format!("/{name}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(shown.get("secret_key").is_none(), "{shown}");
    assert!(!shown.to_string().contains(&secret));
    let (_, listed) = server.api(reqwest::Method::GET, "", None).await;
    assert!(!listed.to_string().contains(&secret));

    // They work for their tenant, as apikey and as bearer: the secret key
    // is service_role (it sees the schema), the publishable one anon.
    let whoami = |base: &str, key: &str| {
        let request = server
            .http
            .get(format!("{base}/sovra/v1/whoami"))
            .header("apikey", key)
            .bearer_auth(key);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            (
                status,
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let (status, body) = whoami(&url, &secret).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "service_role", "{body}");
    let (status, body) = whoami(&url, &publishable).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["role"], "anon", "{body}");

    // Another tenant and the default tenant refuse them, and the tenant
    // refuses theirs.
    for base in [&other.url, &server.url] {
        for key in [&secret, &publishable] {
            let (status, body) = server.get(&format!("{base}/rest/v1/"), key, key).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{base} {body}");
        }
    }
    let (status, body) = server
        .get(
            &format!("{url}/rest/v1/"),
            &server.default_secret_key,
            &server.default_secret_key,
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, _) = whoami(&server.url, &server.default_secret_key).await;
    assert_eq!(status, StatusCode::OK);

    // A rotation answers a new pair once; the old pair stops working.
    let (status, rotated) = server
        .api(
            reqwest::Method::PATCH,
            &format!("/{name}"),
            Some(json!({"rotate_opaque_keys": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new_secret = rotated["secret_key"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    let (status, _) = whoami(&url, &secret).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = whoami(&url, &new_secret).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A new JWT secret keeps the opaque keys (they stand for roles).
    server
        .patch(
            &name,
            json!({"jwt_secret": "a-new-secret-of-more-than-thirty-two-chars"}),
        )
        .await;
    let (status, body) = whoami(&url, &new_secret).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A rotation flag that is not a boolean is a 400.
    let (status, body) = server
        .api(
            reqwest::Method::PATCH,
            &format!("/{name}"),
            Some(json!({"rotate_opaque_keys": "yes"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "bad_settings");
}

#[tokio::test]
async fn tus_options_under_a_tenant_report_its_own_limits() {
    let server = spawn().await;
    let t = server.create("tus-limits").await;
    server
        .patch(&t.name, json!({"storage_file_size_limit": 1234}))
        .await;
    let options = |url: String| {
        let request = server
            .http
            .request(reqwest::Method::OPTIONS, url)
            .header("tus-resumable", "1.0.0");
        async move { request.send().await.unwrap() }
    };
    let response = options(format!("{}/storage/v1/upload/resumable", t.url)).await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(response.headers()["tus-max-size"], "1234");
    assert_eq!(response.headers()["tus-version"], "1.0.0");
    let root = options(format!("{}/storage/v1/upload/resumable", server.url)).await;
    assert_eq!(root.status(), StatusCode::NO_CONTENT);
    let default_limit = sovra_config::Config::default().storage.file_size_limit;
    assert_eq!(
        root.headers()["tus-max-size"],
        default_limit.to_string().as_str()
    );
    // An unknown tenant reports no TUS server (the CORS answer alone).
    let unknown = options(format!(
        "{}/t/{}/storage/v1/upload/resumable",
        server.url,
        unique("nobody")
    ))
    .await;
    assert!(unknown.headers().get("tus-max-size").is_none());
}

#[tokio::test]
async fn a_flood_of_unknown_tenant_names_is_404_without_a_registry_read_each() {
    use futures_util::stream::{self, StreamExt as _};
    let server = spawn().await;
    let known = server.create("flood-known").await;
    let before = server.platform.registry_reads();
    let names: Vec<String> = (0..400).map(|_| unique("nobody")).collect();
    let answers: Vec<(StatusCode, Value)> = stream::iter(names)
        .map(|name| {
            let request = server
                .http
                .get(format!("{}/t/{name}/rest/v1/", server.url))
                .header("apikey", &known.anon);
            async move {
                let response = request.send().await.unwrap();
                let status = response.status();
                (
                    status,
                    response.json::<Value>().await.unwrap_or(Value::Null),
                )
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (status, body) in &answers {
        assert_eq!(*status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"], "tenant_not_found", "{body}");
    }
    let reads = server.platform.registry_reads() - before;
    // One read of the names per UNKNOWN_TTL at most, not one per name.
    assert!(reads < 40, "{reads} registry reads for 400 unknown names");
    // A tenant made meanwhile is found at once.
    let fresh = server.create("flood-fresh").await;
    let (status, body) = server
        .get(
            &format!("{}/rest/v1/", fresh.url),
            &fresh.service,
            &fresh.service,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = server
        .get(
            &format!("{}/rest/v1/", known.url),
            &known.service,
            &known.service,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// The `/metrics` lines of quota refusals of tenant `name`.
async fn quota_lines(server: &Server, name: &str) -> Vec<String> {
    let text = server
        .http
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("sovra_tenant_quota_exceeded_total")
                && l.contains(&format!("tenant=\"{name}\""))
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn storage_mail_and_realtime_quotas_answer_in_the_clients_shapes() {
    let server = spawn().await;
    let t = server.create("quota-more").await;
    let view = server
        .patch(
            &t.name,
            json!({"storage_max_bytes": 10, "mails_per_hour": 1,
                   "realtime_max_channels_per_connection": 1,
                   "realtime_events_per_second": 3}),
        )
        .await;
    assert_eq!(view["settings"]["storage_max_bytes"], 10);

    // Storage: 8 bytes fit, 8 more do not (Storage's 413 shape); a TUS
    // upload that would go over is refused as its server refuses.
    let bucket = server
        .http
        .post(format!("{}/storage/v1/bucket", t.url))
        .header("apikey", &t.service)
        .bearer_auth(&t.service)
        .json(&json!({"name": "files", "public": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(bucket.status(), StatusCode::OK);
    let upload = |name: &str, bytes: &'static [u8]| {
        server
            .http
            .post(format!("{}/storage/v1/object/files/{name}", t.url))
            .header("apikey", &t.service)
            .bearer_auth(&t.service)
            .header("content-type", "text/plain")
            .body(bytes)
            .send()
    };
    let first = upload("a.txt", b"12345678").await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = upload("b.txt", b"12345678").await.unwrap();
    // Storage answers HTTP 400 with the logical status in the body.
    assert_eq!(second.status(), StatusCode::BAD_REQUEST);
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["statusCode"], "413", "{body}");
    assert_eq!(body["error"], "Payload too large", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("quota"),
        "{body}"
    );
    let tus = server
        .http
        .post(format!("{}/storage/v1/upload/resumable", t.url))
        .header("apikey", &t.service)
        .bearer_auth(&t.service)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "100")
        .header("upload-metadata", "bucketName ZmlsZXM=,objectName Yy50eHQ=")
        .header("content-length", "100")
        .body(vec![b'x'; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(tus.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Downloads still work.
    let down = server
        .http
        .get(format!("{}/storage/v1/object/files/a.txt", t.url))
        .header("apikey", &t.service)
        .bearer_auth(&t.service)
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), StatusCode::OK);

    // Mail: one per hour for the whole tenant; the second address gets
    // GoTrue's 429 over_email_send_rate_limit.
    let sign_up = |email: &str| {
        server
            .http
            .post(format!("{}/auth/v1/signup", t.url))
            .header("apikey", &t.anon)
            .json(&json!({"email": email, "password": "correct horse battery"}))
            .send()
    };
    let one = sign_up("one@example.com").await.unwrap();
    assert_eq!(one.status(), StatusCode::OK);
    let two = sign_up("two@example.com").await.unwrap();
    assert_eq!(two.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = two.json().await.unwrap();
    assert_eq!(body["error_code"], "over_email_send_rate_limit", "{body}");

    // Realtime: one channel per connection; the second join is refused as
    // Supabase refuses it.
    let mut ws = socket(&t.url, &t.anon).await;
    join(&mut ws, "room-1").await;
    send(
        &mut ws,
        json!({"topic": "realtime:room-2", "event": "phx_join", "ref": "9", "payload": {"config": {}}}),
    )
    .await;
    loop {
        let reply = next(&mut ws).await;
        if reply["event"] == "phx_reply" && reply["ref"] == "9" {
            assert_eq!(reply["payload"]["status"], "error", "{reply}");
            assert!(
                reply["payload"]["response"]["reason"]
                    .as_str()
                    .unwrap()
                    .contains("Too many channels"),
                "{reply}"
            );
            break;
        }
    }
    // Three messages per second for all its connections: a second
    // connection sending a burst is told and closed.
    let mut other = socket(&t.url, &t.anon).await;
    let mut closed = false;
    for i in 0..50 {
        let sent = other
            .send(Ws::Text(
                json!({"topic": "realtime:room-3", "event": "phx_join", "ref": format!("{i}"),
                       "payload": {"config": {}}})
                .to_string()
                .into(),
            ))
            .await;
        if sent.is_err() {
            closed = true;
            break;
        }
    }
    if !closed {
        loop {
            match tokio::time::timeout(Duration::from_secs(30), other.next())
                .await
                .expect("a frame within 30 s")
            {
                None | Some(Err(_)) | Some(Ok(Ws::Close(_))) => break,
                Some(Ok(_)) => {}
            }
        }
    }

    let lines = quota_lines(&server, &t.name).await.join("\n");
    for quota in [
        "storage_max_bytes",
        "mails_per_hour",
        "realtime_channels_per_connection",
        "realtime_events_per_second",
    ] {
        assert!(
            lines.contains(&format!("quota=\"{quota}\"")),
            "{quota} not counted: {lines}"
        );
    }
    // Nonsense is refused.
    for bad in [
        json!({"realtime_max_channels_per_connection": 0}),
        json!({"smtp_url": "http://mail.example.com"}),
        json!({"smtp_from": "nobody"}),
        json!({"storage_max_bytes": -1}),
    ] {
        let (status, body) = server
            .api(reqwest::Method::PATCH, &format!("/{}", t.name), Some(bad))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"], "bad_settings");
    }
}

#[tokio::test]
async fn a_tenant_over_its_database_size_quota_is_read_only_until_under() {
    let server = spawn().await;
    let t = server.create("db-size").await;
    items_table(&server, &t.database).await;
    let insert = |body: &'static str| {
        server
            .http
            .post(format!("{}/rest/v1/items", t.url))
            .header("apikey", &t.service)
            .bearer_auth(&t.service)
            .json(&json!({"body": body}))
            .send()
    };
    assert_eq!(
        insert("before").await.unwrap().status(),
        StatusCode::CREATED
    );
    // Every database is larger than one byte.
    server
        .patch(&t.name, json!({"database_max_bytes": 1}))
        .await;
    server.platform.check_database_sizes().await.unwrap();
    assert!(server.platform.is_read_only(&t.name));
    let (_, view) = server
        .api(reqwest::Method::GET, &format!("/{}", t.name), None)
        .await;
    assert_eq!(view["read_only"], true, "{view}");
    let refused = insert("over").await.unwrap();
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "25006", "{body}");
    // Reads still work.
    let (status, rows) = server
        .get(
            &format!("{}/rest/v1/items?select=body", t.url),
            &t.service,
            &t.service,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    assert_eq!(rows, json!([{"body": "before"}]));
    assert!(
        quota_lines(&server, &t.name)
            .await
            .join("\n")
            .contains("quota=\"database_max_bytes\"")
    );
    // Another tenant is not affected.
    let other = server.create("db-size-other").await;
    items_table(&server, &other.database).await;
    let fine = server
        .http
        .post(format!("{}/rest/v1/items", other.url))
        .header("apikey", &other.service)
        .bearer_auth(&other.service)
        .json(&json!({"body": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), StatusCode::CREATED);
    // Under the quota again: read-write.
    server
        .patch(
            &t.name,
            json!({"database_max_bytes": 1_000_000_000_000_u64}),
        )
        .await;
    server.platform.check_database_sizes().await.unwrap();
    assert!(!server.platform.is_read_only(&t.name));
    assert_eq!(insert("after").await.unwrap().status(), StatusCode::CREATED);
}

/// A plain table the service_role writes, in a tenant's database.
async fn items_table(server: &Server, database: &str) {
    server
        .sql(database)
        .await
        .batch_execute(
            "create table public.items (
               id bigint generated always as identity primary key,
               body text not null);
             grant all on public.items to service_role;
             notify pgrst, 'reload schema';",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_tenants_mails_carry_its_own_sender_site_and_links() {
    let server = spawn().await;
    let t = server.create("mailer").await;
    let (port, mut mails) = fake_smtp().await;
    let view = server
        .patch(
            &t.name,
            json!({"smtp_url": format!("smtp://127.0.0.1:{port}"),
                   "smtp_from": "Acme <hello@acme.example>",
                   "site_url": "https://app.acme.example",
                   "redirect_urls": ["https://app.acme.example/**"]}),
        )
        .await;
    assert_eq!(view["settings"]["smtp_from"], "Acme <hello@acme.example>");
    let sign_up = server
        .http
        .post(format!(
            "{}/auth/v1/signup?redirect_to=https://app.acme.example/welcome",
            t.url
        ))
        .header("apikey", &t.anon)
        .json(&json!({"email": "carol@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sign_up.status(), StatusCode::OK);
    let (from, data) = tokio::time::timeout(Duration::from_secs(30), mails.recv())
        .await
        .expect("a mail within 30 s")
        .unwrap();
    assert!(from.contains("hello@acme.example"), "{from}");
    assert!(data.contains("hello@acme.example"), "{data}");
    assert!(
        data.contains(&format!("{}/auth/v1/verify", t.url)),
        "{data}"
    );
    assert!(data.contains("app.acme.example"), "{data}");
    // The default tenant's mail does not go to the tenant's server.
    let root = server
        .http
        .post(format!("{}/auth/v1/signup", server.url))
        .header("apikey", &server.default_anon)
        .json(&json!({"email": "dave@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(root.status(), StatusCode::OK);
    assert!(mails.try_recv().is_err());
    // The mail server's password is never shown.
    let view = server
        .patch(
            &t.name,
            json!({"smtp_url": "smtps://postmaster:hunter2-secret@mail.acme.example:465"}),
        )
        .await;
    assert!(!view.to_string().contains("hunter2-secret"), "{view}");
    assert_eq!(
        view["settings"]["smtp_url"],
        "smtps://postmaster:********@mail.acme.example:465"
    );
}

/// A real S3-compatible server (moto's server mode, from PyPI, as the
/// storage tests use it), with bucket `sovra-test`.
struct S3Server {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_s3() -> S3Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let binary = std::env::var("SOVRA_TEST_MOTO").unwrap_or_else(|_| "moto_server".to_owned());
    let child = std::process::Command::new(&binary)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {binary} ({err}); scripts/setup.sh installs it (pip install 'moto[server]')"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("{endpoint}/")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let made = http
        .put(format!("{endpoint}/sovra-test"))
        .send()
        .await
        .unwrap();
    assert!(made.status().is_success(), "creating the S3 bucket");
    S3Server { child, endpoint }
}

/// Uploads one object to a new bucket of tenant `t`.
async fn store_a_file(server: &Server, t: &Created) {
    let bucket = server
        .http
        .post(format!("{}/storage/v1/bucket", t.url))
        .header("apikey", &t.service)
        .bearer_auth(&t.service)
        .json(&json!({"name": "docs", "public": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(bucket.status(), StatusCode::OK);
    let upload = server
        .http
        .post(format!("{}/storage/v1/object/docs/a.txt", t.url))
        .header("apikey", &t.service)
        .bearer_auth(&t.service)
        .header("content-type", "text/plain")
        .body("some bytes")
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_deleted_tenants_files_are_removed_from_the_local_disk() {
    let mut config = sovra_config::Config::default();
    let root = sovra_test_support::scratch_dir();
    config.storage.path = Some(root.clone());
    let server = spawn_with(config).await;
    let t = server.create("files-local").await;
    let keep = server.create("files-keep").await;
    store_a_file(&server, &t).await;
    store_a_file(&server, &keep).await;
    let count = |dir: std::path::PathBuf| {
        fn walk(dir: &std::path::Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| {
                        let path = e.path();
                        if path.is_dir() { walk(&path) } else { 1 }
                    })
                    .sum()
            })
        }
        walk(&dir)
    };
    assert!(count(root.join(&t.name)) > 0);
    let (status, _) = server
        .api(reqwest::Method::DELETE, &format!("/{}", t.name), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(!root.join(&t.name).exists());
    // Another tenant's files stay.
    assert!(count(root.join(&keep.name)) > 0);
}

#[tokio::test]
async fn a_deleted_tenants_files_are_removed_from_s3() {
    let s3 = start_s3().await;
    let mut config = sovra_config::Config::default();
    config.storage.backend = "s3".to_owned();
    config.storage.s3.endpoint = Some(s3.endpoint.clone());
    config.storage.s3.bucket = Some("sovra-test".to_owned());
    config.storage.s3.access_key_id = Some("testing".to_owned());
    config.storage.s3.secret_access_key = Some("testing".to_owned());
    config.storage.s3.force_path_style = true;
    let server = spawn_with(config).await;
    let t = server.create("files-s3").await;
    let keep = server.create("files-s3-keep").await;
    store_a_file(&server, &t).await;
    store_a_file(&server, &keep).await;
    // The bucket's keys under a prefix (moto answers unsigned listings).
    let keys = |prefix: String| {
        let request = server.http.get(format!(
            "{}/sovra-test?list-type=2&prefix={prefix}/",
            s3.endpoint
        ));
        async move {
            let text = request.send().await.unwrap().text().await.unwrap();
            text.matches("<Key>").count()
        }
    };
    assert!(keys(t.name.clone()).await > 0);
    let (status, _) = server
        .api(reqwest::Method::DELETE, &format!("/{}", t.name), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(keys(t.name.clone()).await, 0);
    assert!(keys(keep.name.clone()).await > 0);
}

/// A connection string for database `database` of the test cluster, as
/// its superuser.
fn connection_string(server: &Server, database: &str) -> String {
    let config = server.db.config();
    let host = match &config.get_hosts()[0] {
        sovra_pg::tokio_postgres::config::Host::Tcp(host) => host.clone(),
        sovra_pg::tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
    };
    format!(
        "host={host} port={} user={} dbname={database}",
        config.get_ports()[0],
        config.get_user().unwrap()
    )
}

#[tokio::test]
async fn a_tenant_can_live_in_a_database_of_its_own_url() {
    let server = spawn().await;
    let name = unique("own-db");
    let database = format!("ext_{}", name.replace('-', "_"));
    server
        .sql("postgres")
        .await
        .batch_execute(&format!("create database \"{database}\""))
        .await
        .unwrap();
    let url = connection_string(&server, &database);
    let (status, created) = server
        .api(
            reqwest::Method::POST,
            "",
            Some(json!({"name": name, "database_url": url})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["database"], database.as_str());
    assert_eq!(created["own_database"], true);
    assert!(!created.to_string().contains("host="), "{created}");
    let t = Created {
        name: name.clone(),
        url: created["url"].as_str().unwrap().to_owned(),
        anon: created["anon_key"].as_str().unwrap().to_owned(),
        service: created["service_role_key"].as_str().unwrap().to_owned(),
        database: database.clone(),
    };
    items_table(&server, &database).await;
    server
        .patch(&name, json!({"email_autoconfirm": true}))
        .await;
    // Its users and rows live in that database.
    server.sign_up(&t, "erin@example.com").await;
    let insert = server
        .http
        .post(format!("{}/rest/v1/items", t.url))
        .header("apikey", &t.service)
        .bearer_auth(&t.service)
        .json(&json!({"body": "in my own database"}))
        .send()
        .await
        .unwrap();
    assert_eq!(insert.status(), StatusCode::CREATED);
    let sql = server.sql(&database).await;
    let users: i64 = sql
        .query_one(
            "select count(*) from auth.users where email = 'erin@example.com'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(users, 1);
    // Its pools log in as its own roles, which may connect there only.
    let logins: i64 = sql
        .query_one(
            "select count(*) from pg_stat_activity where datname = current_database() and usename like $1",
            &[&format!("{}%", sovra_server::tenants::database_name(&name))],
        )
        .await
        .unwrap()
        .get(0);
    assert!(logins > 0);
    let public_connect: bool = sql
        .query_one(
            "select has_database_privilege('public', current_database(), 'connect')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!public_connect);

    // Refusals: not a URL, unreachable, the platform's own database, and
    // a name or database taken.
    for (body, expected, code) in [
        (
            json!({"name": unique("bad-url"), "database_url": "::not a url::"}),
            StatusCode::BAD_REQUEST,
            "bad_database_url",
        ),
        (
            json!({"name": unique("no-server"), "database_url": "host=127.0.0.1 port=1 user=x dbname=y connect_timeout=2"}),
            StatusCode::BAD_REQUEST,
            "bad_database_url",
        ),
        (
            json!({"name": unique("platform-db"), "database_url": connection_string(&server, server.db.config().get_dbname().unwrap())}),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            json!({"name": name, "database_url": connection_string(&server, &database)}),
            StatusCode::CONFLICT,
            "conflict",
        ),
        (
            json!({"name": unique("typo"), "databse_url": "x"}),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
    ] {
        let (status, answer) = server.api(reqwest::Method::POST, "", Some(body)).await;
        assert_eq!(status, expected, "{answer}");
        assert_eq!(answer["error"], code, "{answer}");
        assert!(!answer.to_string().contains("port=1 user"), "{answer}");
    }

    // Deleting it drops its roles and leaves the database, which is the
    // operator's.
    let (status, _) = server
        .api(reqwest::Method::DELETE, &format!("/{name}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let admin = server.sql("postgres").await;
    let roles: i64 = admin
        .query_one(
            "select count(*) from pg_roles where rolname like $1",
            &[&format!(
                "{}\\_%",
                sovra_server::tenants::database_name(&name)
            )],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(roles, 0);
    let kept: bool = admin
        .query_one(
            "select exists (select 1 from pg_database where datname = $1)",
            &[&database],
        )
        .await
        .unwrap()
        .get(0);
    assert!(kept);
    let (status, _) = server
        .get(&format!("{}/rest/v1/", t.url), &t.service, &t.service)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Makes `public.wait_for_lock()` in the tenant database behind `sql`: a
/// call that waits for the session advisory lock `key`, which the test
/// holds (so its requests stay in progress until the test lets them go).
async fn make_wait_for_lock(sql: &sovra_pg::tokio_postgres::Client, key: i64) {
    sql.batch_execute(&format!(
        "create function public.wait_for_lock() returns int language sql
           as 'select 1 from (select pg_advisory_xact_lock({key})) x';
         grant execute on function public.wait_for_lock() to service_role;
         notify pgrst, 'reload schema';"
    ))
    .await
    .unwrap();
}

/// `POST /rest/v1/rpc/wait_for_lock` of tenant `t`, in a task of its own.
fn call_wait_for_lock(server: &Server, t: &Created) -> tokio::task::JoinHandle<StatusCode> {
    let request = server
        .http
        .post(format!("{}/rest/v1/rpc/wait_for_lock", t.url))
        .header("apikey", &t.service)
        .bearer_auth(&t.service)
        .json(&json!({}));
    tokio::spawn(async move { request.send().await.unwrap().status() })
}

/// Sessions of the database behind `sql` waiting for a lock.
async fn lock_waiters(sql: &sovra_pg::tokio_postgres::Client) -> i64 {
    sql.query_one(
        "select count(*) from pg_stat_activity
          where datname = current_database() and wait_event_type = 'Lock'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits (at most 30 s) until `want` sessions wait for a lock.
async fn until_lock_waiters(sql: &sovra_pg::tokio_postgres::Client, want: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while lock_waiters(sql).await != want {
        assert!(
            std::time::Instant::now() < deadline,
            "never {want} requests waiting for the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_tenant_over_its_concurrency_quota_waits_its_turn_and_others_do_not() {
    let server = spawn().await;
    let t = server.create("busy").await;
    let other = server.create("busy-other").await;
    let sql = server.sql(&t.database).await;
    make_wait_for_lock(&sql, 4242).await;
    server
        .patch(&t.name, json!({"max_concurrent_requests": 1}))
        .await;
    // The test holds the lock: the first request holds the tenant's one
    // turn while it waits for it.
    sql.execute("select pg_advisory_lock(4242)", &[])
        .await
        .unwrap();
    let first = call_wait_for_lock(&server, &t);
    until_lock_waiters(&sql, 1).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let second = server
        .http
        .get(format!("{}/rest/v1/", t.url))
        .header("apikey", &t.service)
        .bearer_auth(&t.service)
        .send();
    let second = tokio::spawn(async move { second.await.unwrap().status() });
    let tenant = server.platform.tenant(&t.name).await.unwrap();
    loop {
        if tenant.waiting.load(std::sync::atomic::Ordering::Relaxed) == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second request never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another tenant is served while this one's turn is taken.
    let (status, _) = server
        .get(
            &format!("{}/rest/v1/", other.url),
            &other.service,
            &other.service,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!second.is_finished());
    // Once the first is done, the second gets its turn.
    sql.execute("select pg_advisory_unlock(4242)", &[])
        .await
        .unwrap();
    assert_eq!(first.await.unwrap(), StatusCode::OK);
    assert_eq!(second.await.unwrap(), StatusCode::OK);
    assert_eq!(tenant.waiting.load(std::sync::atomic::Ordering::Relaxed), 0);
    // Nonsense is refused.
    let (status, body) = server
        .api(
            reqwest::Method::PATCH,
            &format!("/{}", t.name),
            Some(json!({"max_concurrent_requests": 1_000_000})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// While another tenant is busy, a tenant with a concurrency quota is held
/// to its share of `server.tenant_shared_requests` (here 2 between two busy
/// tenants: 1); alone, it has its whole quota (2), before and after.
#[tokio::test]
async fn a_tenant_at_its_concurrency_quota_is_held_to_its_share_while_another_is_busy() {
    let mut config = sovra_config::Config::default();
    config.server.tenant_shared_requests = 2;
    let server = spawn_with(config).await;
    let t = server.create("share").await;
    let other = server.create("share-other").await;
    let sql = server.sql(&t.database).await;
    make_wait_for_lock(&sql, 4343).await;
    server
        .patch(&t.name, json!({"max_concurrent_requests": 2}))
        .await;
    let call = || call_wait_for_lock(&server, &t);
    // Its first request starts it; the other tenant has had none yet.
    let (status, _) = server
        .get(&format!("{}/rest/v1/", t.url), &t.service, &t.service)
        .await;
    assert_eq!(status, StatusCode::OK);
    // Alone: both of its requests are in progress at once.
    sql.execute("select pg_advisory_lock(4343)", &[])
        .await
        .unwrap();
    let (a, b) = (call(), call());
    until_lock_waiters(&sql, 2).await;
    sql.execute("select pg_advisory_unlock(4343)", &[])
        .await
        .unwrap();
    assert_eq!(a.await.unwrap(), StatusCode::OK);
    assert_eq!(b.await.unwrap(), StatusCode::OK);

    // The other tenant busy (a request every 100 ms, its first one, which
    // starts it, answered before): one at a time.
    let (status, _) = server
        .get(
            &format!("{}/rest/v1/", other.url),
            &other.service,
            &other.service,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = {
        let (http, url, key, stop) = (
            server.http.clone(),
            format!("{}/rest/v1/", other.url),
            other.service.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let status = http
                    .get(&url)
                    .header("apikey", &key)
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(status, StatusCode::OK);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Past the recount of busy tenants.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sql.execute("select pg_advisory_lock(4343)", &[])
        .await
        .unwrap();
    let (a, b) = (call(), call());
    until_lock_waiters(&sql, 1).await;
    // The second waits for its turn, not for the lock: it stays out of
    // the database while the first holds the share's one turn.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            lock_waiters(&sql).await,
            1,
            "two requests in progress beside a busy tenant"
        );
    }
    assert!(!a.is_finished() && !b.is_finished());
    sql.execute("select pg_advisory_unlock(4343)", &[])
        .await
        .unwrap();
    assert_eq!(a.await.unwrap(), StatusCode::OK);
    assert_eq!(b.await.unwrap(), StatusCode::OK);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.await.unwrap();

    // The other tenant idle again (past the window): the whole quota.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sql.execute("select pg_advisory_lock(4343)", &[])
        .await
        .unwrap();
    let (a, b) = (call(), call());
    until_lock_waiters(&sql, 2).await;
    sql.execute("select pg_advisory_unlock(4343)", &[])
        .await
        .unwrap();
    assert_eq!(a.await.unwrap(), StatusCode::OK);
    assert_eq!(b.await.unwrap(), StatusCode::OK);
}

/// `/mcp` under a tenant's URL: the tenant's keys only, its own metadata
/// URL, and its own write switch (`mcp_allow_writes`).
#[tokio::test]
async fn mcp_is_served_per_tenant() {
    let server = spawn().await;
    let acme = server.create("mcp").await;
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});
    let tools = |token: String| {
        let http = server.http.clone();
        let url = format!("{}/mcp", acme.url);
        let anon = acme.anon.clone();
        let initialize = initialize.clone();
        async move {
            let reply = http
                .post(&url)
                .header("apikey", &anon)
                .bearer_auth(&token)
                .json(&initialize)
                .send()
                .await
                .unwrap();
            if reply.status() != StatusCode::OK {
                return Err(reply.status());
            }
            let session = reply.headers()["mcp-session-id"]
                .to_str()
                .unwrap()
                .to_owned();
            let list: Value = http
                .post(&url)
                .header("apikey", &anon)
                .bearer_auth(&token)
                .header("mcp-session-id", session)
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            Ok(list["result"]["tools"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>())
        }
    };
    let names = tools(acme.service.clone()).await.unwrap();
    assert!(names.contains(&"query".to_owned()) && !names.contains(&"insert".to_owned()));
    // Another project's key is refused.
    assert_eq!(
        tools(server.default_anon.clone()).await.unwrap_err(),
        StatusCode::UNAUTHORIZED
    );
    // The challenge points at the tenant's own metadata.
    let bare = server
        .http
        .post(format!("{}/mcp", acme.url))
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), StatusCode::UNAUTHORIZED);
    let challenge = bare.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    let metadata_url = challenge.split('"').nth(1).unwrap().to_owned();
    assert_eq!(
        metadata_url,
        format!("{}/.well-known/oauth-protected-resource/mcp", acme.url)
    );
    let metadata: Value = server
        .http
        .get(&metadata_url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["resource"], format!("{}/mcp", acme.url));
    assert_eq!(
        metadata["authorization_servers"],
        json!([format!("{}/auth/v1", acme.url)])
    );
    // Writes per tenant.
    server
        .patch(&acme.name, json!({"mcp_allow_writes": true}))
        .await;
    let names = tools(acme.service.clone()).await.unwrap();
    assert!(names.contains(&"insert".to_owned()), "{names:?}");
}
