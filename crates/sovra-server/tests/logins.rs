//! The roles Sovra's pools log in as: with `database.url` naming a
//! superuser, requests still log in as `authenticator` (with a password, over
//! TCP, as against a real server) and auth as `supabase_auth_admin`, so no
//! token's role claim and no app trigger ever gets a superuser's session.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sovra_test_support::{TestApp, fast_settings, scratch_dir};

/// A server started the way `sovra serve` starts with `database.url`.
struct UrlServer {
    url: String,
    keys: std::sync::Arc<sovra_jwt::KeySet>,
    anon_key: String,
    _server: tokio::task::JoinHandle<()>,
}

async fn serve_url(database_url: &str) -> Result<UrlServer, sovra_server::serve::ServeError> {
    let mut config = sovra_config::Config {
        data_dir: scratch_dir(),
        ..sovra_config::Config::default()
    };
    config.database.url = Some(database_url.to_owned());
    let data_dir = sovra_server::data_dir::DataDir::open(&config.data_dir).unwrap();
    let database = sovra_server::serve::open_database(&config, &data_dir).await?;
    assert_eq!(database.requests.get_user(), Some("authenticator"));
    sovra_server::serve::run_migrations(&database.admin).await?;
    let keys = sovra_server::keys::load_or_create(&data_dir.keys_file(), &config).unwrap();
    let anon_key = keys.api.anon.clone();
    let tenant =
        sovra_server::serve::build_tenant(&config, database.requests, database.admin, keys).await?;
    let keyset = tenant.keys.clone();
    let state = sovra_server::AppState::new(
        sovra_server::TenantResolver::single(tenant),
        config.server.body_limit,
    );
    let app = sovra_server::router(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await;
    });
    Ok(UrlServer {
        url: format!("http://{addr}"),
        keys: keyset,
        anon_key,
        _server: server,
    })
}

impl UrlServer {
    fn token(&self, role: &str) -> String {
        let now = TestApp::now();
        let mut claims = serde_json::Map::new();
        claims.insert("role".into(), json!(role));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(now + 600));
        self.keys.sign(&claims).unwrap()
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let response = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .header("apikey", &self.anon_key)
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// A free TCP port on the loopback interface.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_superuser_database_url_still_serves_requests_as_authenticator() {
    // A cluster of its own that takes passwords over TCP (scram-sha-256),
    // as a server Sovra does not manage does.
    let mut options = sovra_pg::ClusterOptions::new(scratch_dir().join("pg"));
    options.settings = fast_settings();
    options.tcp_port = Some(free_port());
    let cluster = sovra_pg::Cluster::start(options.clone()).await.unwrap();
    let url = format!(
        "postgresql://postgres:{}@127.0.0.1:{}/postgres",
        cluster.password(),
        options.tcp_port.unwrap()
    );
    let server = serve_url(&url).await.unwrap();
    let admin = sovra_pg::connect_one(&cluster.connect_config("postgres", "postgres"))
        .await
        .unwrap();
    admin
        .batch_execute(
            "create table public.secrets (x text);
             insert into public.secrets values ('superusers only');
             create function public.whoami() returns json language sql stable as $$
               select json_build_object('session_user', session_user, 'current_user', current_user,
                 'superuser', (select rolsuper from pg_roles where rolname = session_user)) $$;
             create table public.zz_loaded ();",
        )
        .await
        .unwrap();
    let anon = server.anon_key.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let who = loop {
        let (status, body) = server.get("/rest/v1/rpc/whoami", &anon).await;
        if status == StatusCode::OK {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        who,
        json!({"session_user": "authenticator", "current_user": "anon", "superuser": false})
    );
    // A token naming a role the request login may not become is refused,
    // whatever the URL's user could do.
    for role in ["postgres", "supabase_auth_admin", "pg_read_all_data"] {
        let token = server.token(role);
        let (status, body) = server.get("/rest/v1/secrets", &token).await;
        assert!(status.is_client_error(), "{role}: {status} {body}");
        assert!(
            !body.to_string().contains("superusers only"),
            "{role}: {body}"
        );
        let (status, body) = server.get("/sovra/v1/whoami/db", &token).await;
        assert!(status.is_client_error(), "{role}: {status} {body}");
    }
    let service = server.token("service_role");
    let (status, body) = server.get("/rest/v1/rpc/whoami", &service).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["session_user"], "authenticator");
    assert_eq!(body["current_user"], "service_role");

    // The password is in the database, readable by the administrator only.
    let row = admin
        .query_one(
            "select has_table_privilege('authenticator', 'sovra.login_secrets', 'select'),
                    has_table_privilege('service_role', 'sovra.login_secrets', 'select'),
                    count(*) from sovra.login_secrets",
            &[],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert!(!row.get::<_, bool>(1));
    assert_eq!(row.get::<_, i64>(2), 2);

    // A password changed behind Sovra's back (another database of the
    // cluster, an operator) is set again at the next start.
    admin
        .batch_execute("alter role authenticator password 'changed-elsewhere'")
        .await
        .unwrap();
    let again = serve_url(&url).await.unwrap();
    let (status, body) = again.get("/rest/v1/rpc/whoami", &again.anon_key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["session_user"], "authenticator");

    // A login role made a superuser is refused at start, with its name.
    admin
        .batch_execute("alter role authenticator superuser")
        .await
        .unwrap();
    let err = serve_url(&url)
        .await
        .err()
        .expect("a superuser login is refused");
    let message = err.to_string();
    assert!(
        message.contains("`authenticator` is a superuser"),
        "{message}"
    );
    admin
        .batch_execute("alter role authenticator nosuperuser")
        .await
        .unwrap();
    drop(admin);
    cluster.stop(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn an_unreachable_login_is_a_clear_startup_error() {
    let mut options = sovra_pg::ClusterOptions::new(scratch_dir().join("pg"));
    options.settings = fast_settings();
    options.tcp_port = Some(free_port());
    let cluster = sovra_pg::Cluster::start(options.clone()).await.unwrap();
    let admin = sovra_pg::connect_one(&cluster.connect_config("postgres", "postgres"))
        .await
        .unwrap();
    // The server lets only the superuser in over TCP.
    let hba = options.dir.join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("host all authenticator 127.0.0.1/32 reject\n{original}"),
    )
    .unwrap();
    admin
        .batch_execute("select pg_reload_conf()")
        .await
        .unwrap();
    let url = format!(
        "postgresql://postgres:{}@127.0.0.1:{}/postgres",
        cluster.password(),
        options.tcp_port.unwrap()
    );
    let err = serve_url(&url).await.err().expect("the login is refused");
    let message = err.to_string();
    assert!(
        message.contains("cannot log in to postgresql as `authenticator` (requests)")
            && message.contains("pg_hba.conf"),
        "{message}"
    );
    drop(admin);
    cluster.stop(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn app_triggers_on_auth_users_do_not_run_as_a_superuser() {
    let app = TestApp::spawn().await;
    let client = app.db.client().await;
    client
        .batch_execute(
            "create table public.seen (session_user_name text, current_user_name text,
                                       superuser boolean, became text);
             grant insert on public.seen to supabase_auth_admin;
             create function public.on_new_user() returns trigger language plpgsql as $$
             declare became text;
             begin
               begin
                 perform set_config('role', 'postgres', true);
                 became := current_user;
                 perform set_config('role', 'supabase_auth_admin', true);
               exception when others then
                 became := sqlerrm;
               end;
               insert into public.seen values (session_user, current_user,
                 (select rolsuper from pg_roles where rolname = session_user), became);
               return new;
             end $$;
             create trigger on_new_user after insert on auth.users
               for each row execute function public.on_new_user();",
        )
        .await
        .unwrap();
    let response = reqwest::Client::new()
        .post(format!("{}/auth/v1/signup", app.url))
        .header("apikey", &app.anon_key)
        .json(&json!({"email": "ada@example.com", "password": "s3cret-pass"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let row = client
        .query_one("select * from public.seen", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "supabase_auth_admin");
    assert_eq!(row.get::<_, String>(1), "supabase_auth_admin");
    assert!(!row.get::<_, bool>(2), "the auth session is a superuser's");
    let became: String = row.get(3);
    assert!(
        became.contains("permission denied"),
        "a trigger became {became}"
    );
}
