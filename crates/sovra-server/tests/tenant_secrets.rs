//! Tenants' secrets sealed at rest (#17): the registry's rows hold none
//! of them in clear; the tenant API, `Debug` and the logs show none; a
//! tenant keeps signing users in, mailing through its SMTP URL and using
//! its providers after a restart; plaintext rows of an earlier version are
//! sealed on start; a damaged or moved value stops its tenant only; a new
//! key with the old one kept re-seals everything; a wrong key stops the
//! start with an error naming the option.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sovra_test_support::TestDb;

#[path = "support/platform.rs"]
mod platform_server;

use platform_server::{Served, fake_smtp, serve_on, try_serve_on};

/// Everything this test process logs (every level), to grep for secrets.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Writer(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        logs
    })
    .clone()
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

fn config(key: Option<&str>, old: &str) -> sovra_config::Config {
    let mut config = sovra_config::Config {
        data_dir: sovra_test_support::scratch_dir(),
        ..sovra_config::Config::default()
    };
    if let Some(key) = key {
        config.server.tenant_secrets_key = sovra_config::SecretValue(key.to_owned());
    }
    config.server.tenant_secrets_old_keys = sovra_config::SecretValue(old.to_owned());
    config
}

async fn api(
    s: &Served,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value, String) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}/sovra/v1/tenants{path}", s.url))
        .bearer_auth(&s.key);
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

/// Creates a tenant: its API answer.
async fn create(s: &Served, body: Value) -> Value {
    let (status, created, _) = api(s, reqwest::Method::POST, "", Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

async fn patch(s: &Served, name: &str, body: Value) -> (StatusCode, Value, String) {
    api(s, reqwest::Method::PATCH, &format!("/{name}"), Some(body)).await
}

/// Signs `email` up (`up`) or in at tenant `t` (its API answer): the status.
async fn auth(t: &Value, email: &str, up: bool) -> StatusCode {
    let path = if up {
        "signup"
    } else {
        "token?grant_type=password"
    };
    reqwest::Client::new()
        .post(format!("{}/auth/v1/{path}", t["url"].as_str().unwrap()))
        .header("apikey", t["anon_key"].as_str().unwrap())
        .json(&json!({"email": email, "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .status()
}

/// The registry's rows as text, as anyone reading the table sees them.
async fn raw_rows(db: &TestDb) -> String {
    let client = db.client().await;
    let row = client
        .query_one(
            "select coalesce((select string_agg(t::text, E'\\n') from sovra.tenants t), '')
                 || E'\\n' || coalesce((select string_agg(l::text, E'\\n') from sovra.tenant_logins l), '')",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

fn assert_none_in(text: &str, secrets: &[&str], what: &str) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} holds {secret:?}: {text}");
    }
}

const SMTP_PASSWORD: &str = "smtp-pass-7f3a91";
const GITLAB_SECRET: &str = "gitlab-secret-c41d2e";
const HOOK_SECRET: &str = "v1,whsec_c2VhbGVkLWhvb2stc2VjcmV0LTAxMjM0NTY3ODk=";
const JWT_SECRET: &str = "tenant-jwt-secret-0123456789abcdef-sealed";
const DB_PASSWORD: &str = "dburl-pass-5e6f77";

#[tokio::test]
async fn no_secret_is_in_the_registry_rows_the_answers_debug_or_the_logs() {
    let logs = captured_logs();
    let db = TestDb::new().await;
    let s = serve_on(&config(None, ""), &db).await;
    let name = unique("sealed");
    let created = create(&s, json!({"name": name})).await;
    let service_role = created["service_role_key"].as_str().unwrap().to_owned();
    let (status, body, text) = patch(
        &s,
        &name,
        json!({"smtp_url": format!("smtps://postmaster:{SMTP_PASSWORD}@mail.acme.example:465"),
               "external": {"gitlab": {"enabled": true, "client_id": "acme-app",
                                       "secret": GITLAB_SECRET, "url": "https://gitlab.acme.example"}},
               "hooks": {"send_email": {"enabled": false, "secrets": HOOK_SECRET}},
               "jwt_secret": JWT_SECRET}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let secrets = [
        SMTP_PASSWORD,
        GITLAB_SECRET,
        "whsec_",
        JWT_SECRET,
        DB_PASSWORD,
    ];
    assert_none_in(&text, &secrets, "the PATCH answer");
    let service_role = body["service_role_key"]
        .as_str()
        .map_or(service_role, str::to_owned);

    // A tenant in a database of its own URL, which carries a password.
    let own = unique("own-url");
    let database = format!("ext_{}", own.replace('-', "_"));
    db.client()
        .await
        .batch_execute(&format!("create database \"{database}\""))
        .await
        .unwrap();
    let pg = db.config();
    let url = format!(
        "host={} port={} user={} password={DB_PASSWORD} dbname={database}",
        match &pg.get_hosts()[0] {
            sovra_pg::tokio_postgres::config::Host::Tcp(host) => host.clone(),
            sovra_pg::tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        },
        pg.get_ports()[0],
        pg.get_user().unwrap()
    );
    let own_created = create(&s, json!({"name": own, "database_url": url})).await;
    assert_none_in(&own_created.to_string(), &secrets, "the create answer");

    // The rows: no secret, no signing key, no service_role key in clear;
    // the login passwords sealed.
    let rows = raw_rows(&db).await;
    assert_none_in(&rows, &secrets, "the registry");
    assert_none_in(
        &rows,
        &[&service_role, "postmaster", "acme.example:465"],
        "the registry",
    );
    let client = db.client().await;
    for row in client
        .query(
            "select password from sovra.tenant_logins where tenant = any($1)",
            &[&vec![name.clone(), own.clone()]],
        )
        .await
        .unwrap()
    {
        let password: String = row.get(0);
        assert!(password.starts_with("sovra1:"), "a login password in clear");
    }
    let keys: Value = client
        .query_one("select keys from sovra.tenants where name = $1", &[&name])
        .await
        .unwrap()
        .get(0);
    assert!(keys.as_str().unwrap().starts_with("sovra1:"), "{keys}");

    // The answers and `sovra tenants show --json` (the same GET).
    for path in [format!("/{name}"), format!("/{own}"), String::new()] {
        let (status, _, text) = api(&s, reqwest::Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK);
        assert_none_in(&text, &secrets, "a tenant API answer");
        if !path.contains(&own) {
            assert!(text.contains("postmaster:********@"), "{text}");
        }
    }
    // They open for the server, and `Debug` shows none of them.
    let record = s.platform.record(&name).await.unwrap().unwrap();
    assert_eq!(
        record.settings.smtp_url.as_deref(),
        Some(format!("smtps://postmaster:{SMTP_PASSWORD}@mail.acme.example:465").as_str())
    );
    assert_eq!(record.keys[0].secret, JWT_SECRET);
    assert!(record.damaged.is_empty());
    let own_record = s.platform.record(&own).await.unwrap().unwrap();
    assert!(own_record.database_url.unwrap().contains(DB_PASSWORD));
    let shown = format!("{record:?} {:?}", s.platform.record(&own).await.unwrap());
    assert_none_in(&shown, &secrets, "Debug");
    assert_none_in(&shown, &[&service_role], "Debug");
    // Both tenants serve (their login passwords and keys open).
    assert_eq!(
        patch(&s, &own, json!({"email_autoconfirm": true})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        auth(&own_created, "olga@example.com", true).await,
        StatusCode::OK
    );
    let (_, view, _) = api(&s, reqwest::Method::GET, &format!("/{name}"), None).await;
    assert_eq!(
        patch(&s, &name, json!({"email_autoconfirm": true})).await.0,
        StatusCode::OK
    );
    assert_eq!(auth(&view, "nina@example.com", true).await, StatusCode::OK);
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logged.contains("tenant created"), "the capture works");
    assert_none_in(&logged, &secrets, "the logs");
    assert_none_in(&logged, &[&service_role], "the logs");
}

#[tokio::test]
async fn a_tenant_signs_in_mails_and_uses_its_providers_after_a_restart() {
    let db = TestDb::new().await;
    let config = config(None, "");
    let s = serve_on(&config, &db).await;
    let name = unique("restart");
    create(&s, json!({"name": name})).await;
    let (port, mut mails) = fake_smtp().await;
    let (status, body, _) = patch(
        &s,
        &name,
        // (The fake server offers no AUTH: a URL without credentials; the
        // URL is sealed whole all the same.)
        json!({"smtp_url": format!("smtp://127.0.0.1:{port}"),
               "smtp_from": "Acme <hello@acme.example>",
               "external": {"gitlab": {"enabled": true, "client_id": "acme-app",
                                       "secret": GITLAB_SECRET, "url": "https://gitlab.acme.example"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(auth(&body, "pia@example.com", true).await, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(30), mails.recv())
        .await
        .expect("a confirmation mail")
        .unwrap();
    // Confirmed in its own database.
    let tenant_db = body["database"].as_str().unwrap().to_owned();
    let mut tdb = db.config();
    tdb.dbname(&tenant_db);
    let (tclient, conn) = tdb.connect(sovra_pg::tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    tclient
        .execute(
            "update auth.users set email_confirmed_at = now() where email = 'pia@example.com'",
            &[],
        )
        .await
        .unwrap();

    // A restart: a new server on the same registry and data directory.
    s.server.abort();
    drop(s);
    let s = serve_on(&config, &db).await;
    let (_, view, _) = api(&s, reqwest::Method::GET, &format!("/{name}"), None).await;
    assert_eq!(auth(&view, "pia@example.com", false).await, StatusCode::OK);
    // Its mail server, with its password, still takes its mails.
    let recover = reqwest::Client::new()
        .post(format!("{}/auth/v1/recover", view["url"].as_str().unwrap()))
        .header("apikey", view["anon_key"].as_str().unwrap())
        .json(&json!({"email": "pia@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(recover.status(), StatusCode::OK);
    let (from, _) = tokio::time::timeout(Duration::from_secs(30), mails.recv())
        .await
        .expect("a recovery mail after the restart")
        .unwrap();
    assert!(from.contains("hello@acme.example"), "{from}");
    // Its provider, with its client id.
    let authorize = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!(
            "{}/auth/v1/authorize?provider=gitlab",
            view["url"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(authorize.status(), StatusCode::FOUND);
    let location = authorize.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with("https://gitlab.acme.example/oauth/authorize"),
        "{location}"
    );
    assert!(location.contains("client_id=acme-app"), "{location}");
}

#[tokio::test]
async fn plaintext_rows_of_an_earlier_version_are_sealed_on_start_once() {
    let db = TestDb::new().await;
    let config = config(None, "");
    let s = serve_on(&config, &db).await;
    let name = unique("legacy");
    let created = create(&s, json!({"name": name})).await;
    // As an earlier version wrote it: everything in clear, the login
    // passwords too (set on the roles).
    let client = db.client().await;
    let record = s.platform.record(&name).await.unwrap().unwrap();
    let signing_secret = record.keys[0].secret.clone();
    client
        .execute(
            "update sovra.tenants set keys = $2, api_keys = $3,
                    settings = jsonb_build_object('email_autoconfirm', true, 'smtp_url', $4::text)
              where name = $1",
            &[
                &name,
                &serde_json::to_value(&record.keys).unwrap(),
                &serde_json::to_value(&record.api_keys).unwrap(),
                &format!("smtp://u:{SMTP_PASSWORD}@127.0.0.1:1"),
            ],
        )
        .await
        .unwrap();
    for role in ["rest", "auth"] {
        let role = format!("tenant_{}_{role}", name.replace('-', "_"));
        client
            .execute("update sovra.tenant_logins set password = 'plain-login-password-0123' where role = $1", &[&role])
            .await
            .unwrap();
        client
            .batch_execute(&format!(
                "alter role \"{role}\" password 'plain-login-password-0123'"
            ))
            .await
            .unwrap();
    }
    assert!(raw_rows(&db).await.contains(SMTP_PASSWORD));
    // Read as they are until sealed: nothing is lost in between.
    assert!(
        s.platform
            .record(&name)
            .await
            .unwrap()
            .unwrap()
            .damaged
            .is_empty()
    );

    let report = s.platform.seal_registry().await.unwrap();
    // smtp_url, keys, api_keys and the two login passwords.
    assert_eq!(report.sealed, 5, "{report:?}");
    assert!(report.damaged.is_empty(), "{report:?}");
    let rows = raw_rows(&db).await;
    assert_none_in(
        &rows,
        &[SMTP_PASSWORD, &signing_secret, "plain-login-password"],
        "the registry",
    );
    let again = s.platform.seal_registry().await.unwrap();
    assert_eq!((again.sealed, again.rekeyed), (0, 0), "idempotent");

    // A restart serves it with its old secret's keys.
    s.server.abort();
    drop(s);
    let s = serve_on(&config, &db).await;
    let (_, view, _) = api(&s, reqwest::Method::GET, &format!("/{name}"), None).await;
    assert_eq!(view["anon_key"], created["anon_key"]);
    assert_eq!(auth(&view, "lea@example.com", true).await, StatusCode::OK);
    let record = s.platform.record(&name).await.unwrap().unwrap();
    assert_eq!(record.keys[0].secret, signing_secret);
}

#[tokio::test]
async fn a_damaged_or_moved_secret_stops_its_tenant_only() {
    let db = TestDb::new().await;
    let config = config(None, "");
    let s = serve_on(&config, &db).await;
    let (a, b, c) = (unique("good"), unique("bad"), unique("moved"));
    for name in [&a, &b, &c] {
        create(&s, json!({"name": name})).await;
        assert_eq!(
            patch(&s, name, json!({"email_autoconfirm": true, "smtp_url": format!("smtp://u:{SMTP_PASSWORD}@127.0.0.1:1")})).await.0,
            StatusCode::OK
        );
    }
    let client = db.client().await;
    // b's signing keys damaged (one character of the sealed value).
    let keys: Value = client
        .query_one("select keys from sovra.tenants where name = $1", &[&b])
        .await
        .unwrap()
        .get(0);
    let mut damaged = keys.as_str().unwrap().to_owned();
    let last = damaged.pop().unwrap();
    damaged.push(if last == 'A' { 'B' } else { 'A' });
    client
        .execute(
            "update sovra.tenants set keys = to_jsonb($2::text) where name = $1",
            &[&b, &damaged],
        )
        .await
        .unwrap();
    // a's sealed smtp_url copied over c's: it does not open for c.
    client
        .execute(
            "update sovra.tenants set settings = (select settings from sovra.tenants where name = $1) where name = $2",
            &[&a, &c],
        )
        .await
        .unwrap();
    // A restart: the start goes on, naming what did not open.
    s.server.abort();
    drop(s);
    let s = serve_on(&config, &db).await;
    let report = s.platform.seal_registry().await.unwrap();
    let mut found = report.damaged.clone();
    found.sort();
    let mut expected = vec![format!("{b}: keys"), format!("{c}: settings.smtp_url")];
    expected.sort();
    assert_eq!(found, expected, "{report:?}");

    let view = |name: &str| {
        let s = &s;
        let name = name.to_owned();
        async move {
            api(s, reqwest::Method::GET, &format!("/{name}"), None)
                .await
                .1
        }
    };
    // a serves; b and c are unavailable, each alone.
    assert_eq!(
        auth(&view(&a).await, "ann@example.com", true).await,
        StatusCode::OK
    );
    for (name, field) in [(&b, "keys"), (&c, "settings.smtp_url")] {
        let shown = view(name).await;
        assert_eq!(shown["damaged"], json!([field]), "{shown}");
        let response = reqwest::Client::new()
            .get(format!("{}/t/{name}/rest/v1/", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "tenant_unavailable");
        // A change would overwrite what did not open: refused.
        let (status, body, _) = patch(&s, name, json!({"disable_signup": true})).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"], "tenant_damaged");
        assert!(body["message"].as_str().unwrap().contains(field), "{body}");
    }
    let (status, list, text) = api(&s, reqwest::Method::GET, "", None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_none_in(&text, &[SMTP_PASSWORD], "the list");
    // Deleting a damaged tenant still works.
    let (status, _, _) = api(&s, reqwest::Method::DELETE, &format!("/{b}"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_new_key_reseals_everything_and_a_wrong_key_stops_the_start() {
    let db = TestDb::new().await;
    let (k1, k2) = ("a1".repeat(32), "b2".repeat(32));
    let first = config(Some(&k1), "");
    let s = serve_on(&first, &db).await;
    let name = unique("rotate");
    create(&s, json!({"name": name})).await;
    assert_eq!(
        patch(&s, &name, json!({"email_autoconfirm": true, "external": {"gitlab": {"enabled": true, "client_id": "x", "secret": GITLAB_SECRET}}})).await.0,
        StatusCode::OK
    );
    let before = raw_rows(&db).await;
    s.server.abort();
    drop(s);

    // Another key alone: the start is refused, naming the option.
    let mut wrong = first.clone();
    wrong.server.tenant_secrets_key = sovra_config::SecretValue(k2.clone());
    let err = try_serve_on(&wrong, &db)
        .await
        .err()
        .expect("a wrong key is refused");
    assert!(err.contains("server.tenant_secrets_key"), "{err}");
    assert!(!err.contains(&k2) && !err.contains(&k1), "{err}");
    assert_eq!(
        raw_rows(&db).await,
        before,
        "nothing written with the wrong key"
    );
    // The data directory's key (the default) is refused too.
    let err = try_serve_on(&config(None, ""), &db)
        .await
        .err()
        .expect("refused");
    assert!(err.contains("tenant-secrets.key"), "{err}");

    // The new key with the old one kept: everything is sealed again.
    let mut rotated = first.clone();
    rotated.server.tenant_secrets_key = sovra_config::SecretValue(k2.clone());
    rotated.server.tenant_secrets_old_keys = sovra_config::SecretValue(k1.clone());
    let s = serve_on(&rotated, &db).await;
    let report = s.platform.seal_registry().await.unwrap();
    assert_eq!((report.sealed, report.rekeyed), (0, 0), "done by the start");
    let (_, view, _) = api(&s, reqwest::Method::GET, &format!("/{name}"), None).await;
    assert_eq!(auth(&view, "rita@example.com", true).await, StatusCode::OK);
    let after = raw_rows(&db).await;
    assert_ne!(after, before);
    assert_none_in(&after, &[GITLAB_SECRET], "the registry");
    s.server.abort();
    drop(s);

    // The old key is no longer needed; alone it no longer opens anything.
    let mut only_new = first.clone();
    only_new.server.tenant_secrets_key = sovra_config::SecretValue(k2.clone());
    let s = serve_on(&only_new, &db).await;
    let (_, view, _) = api(&s, reqwest::Method::GET, &format!("/{name}"), None).await;
    assert!(view.get("damaged").is_none(), "{view}");
    assert_eq!(auth(&view, "rita@example.com", false).await, StatusCode::OK);
    let record = s.platform.record(&name).await.unwrap().unwrap();
    assert_eq!(
        record.settings.external.unwrap()["gitlab"]
            .secret
            .as_deref(),
        Some(GITLAB_SECRET)
    );
    s.server.abort();
    drop(s);
    let err = try_serve_on(&first, &db)
        .await
        .err()
        .expect("the old key alone is refused");
    assert!(err.contains("server.tenant_secrets_key"), "{err}");
}
