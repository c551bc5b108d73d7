//! Read replicas (`database.read_urls`, #21) against a real streaming
//! standby of the test cluster (`pg_basebackup -R`, started by the
//! harness): reads of tables and stable functions run on the replica,
//! writes and volatile functions on the primary, a caller's own writes stay
//! visible to it while the replica's replay is paused, row-level security
//! applies on the replica, and a replica that is stopped or lagging is
//! skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sovra_test_support::{Replica, TestApp};

const USER_A: &str = "00000000-0000-0000-0000-00000000000a";
const USER_B: &str = "00000000-0000-0000-0000-00000000000b";

const FIXTURE: &str = "
create table public.notes (
  id bigserial primary key,
  owner uuid default auth.uid(),
  body text not null
);
alter table public.notes enable row level security;
create policy own on public.notes to authenticated
  using (owner = auth.uid()) with check (owner = auth.uid());
grant all on public.notes to authenticated, service_role;
grant usage on sequence public.notes_id_seq to authenticated, service_role;
create function public.in_recovery() returns boolean
language sql stable as $$ select pg_is_in_recovery() $$;
create function public.in_recovery_volatile() returns boolean
language sql volatile as $$ select pg_is_in_recovery() $$;
";

struct Setup {
    app: TestApp,
    replica: Replica,
    http: reqwest::Client,
}

impl Setup {
    async fn new(max_lag: u64) -> Setup {
        let replica = Replica::start().await;
        let mut config = sovra_config::Config::default();
        config.database.read_urls = replica.url();
        config.database.read_max_lag = max_lag;
        let app = TestApp::spawn_with(config).await;
        app.db.client().await.batch_execute(FIXTURE).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while app
            .tenant
            .rest
            .cache()
            .get()
            .is_none_or(|c| c.relation("public", "notes").is_none())
        {
            assert!(Instant::now() < deadline, "no schema reload");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        replica.catch_up(&app.db).await;
        let setup = Setup {
            app,
            replica,
            http: reqwest::Client::new(),
        };
        setup.replicas().refresh(&setup.app.tenant.pool).await;
        assert_eq!(setup.replica_status().await, "up");
        setup
    }

    fn replicas(&self) -> &std::sync::Arc<sovra_rest::replicas::Replicas> {
        self.app.tenant.rest.replicas().expect("replicas attached")
    }

    fn token(&self, user: &str) -> String {
        self.app.sign(Value::Object(TestApp::user_claims(user)))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/rest/v1{path}", self.app.url))
            .header("apikey", &self.app.anon_key)
            .bearer_auth(bearer);
        if let Some(body) = body {
            request = request
                .header("prefer", "return=representation")
                .json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Whether `bearer`'s stable-function call ran on a server in recovery.
    async fn on_replica(&self, bearer: &str) -> bool {
        let (status, body) = self
            .send(Method::GET, "/rpc/in_recovery", bearer, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body.as_bool().unwrap()
    }

    async fn bodies(&self, bearer: &str) -> Vec<String> {
        let (status, rows) = self
            .send(Method::GET, "/notes?select=body&order=id", bearer, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{rows}");
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| r["body"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn insert(&self, bearer: &str, body: &str) {
        let (status, rows) = self
            .send(
                Method::POST,
                "/notes",
                bearer,
                Some(json!({ "body": body })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{rows}");
    }

    async fn ready(&self) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}/ready", self.app.url))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn replica_status(&self) -> String {
        let (_, body) = self.ready().await;
        body["replicas"][0]["status"].as_str().unwrap().to_owned()
    }

    async fn replica_sql(&self, sql: &str) {
        self.replica
            .client(&self.app.db)
            .await
            .batch_execute(sql)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn reads_and_stable_functions_run_on_the_replica_writes_on_the_primary() {
    let setup = Setup::new(3600).await;
    let service = setup.app.service_role_key.clone();
    // A stable function called with GET runs on the standby.
    assert!(setup.on_replica(&service).await);
    // So does one called with POST (the same text as the GET's, planned
    // with no value: the connection's statement for the GET serves it).
    let (status, body) = setup
        .send(Method::POST, "/rpc/in_recovery", &service, Some(json!({})))
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!(true)));
    assert!(setup.on_replica(&service).await);
    // A volatile function runs on the primary (it is called with POST
    // only).
    let (status, answer) = setup
        .send(
            Method::POST,
            "/rpc/in_recovery_volatile",
            &service,
            Some(json!({})),
        )
        .await;
    assert_eq!((status, answer), (StatusCode::OK, json!(false)));
    // Writes go to the primary (a standby refuses them with 25006).
    let user = setup.token(USER_A);
    setup.insert(&user, "first").await;
    let (status, rows) = setup
        .send(
            Method::PATCH,
            "/notes?body=eq.first",
            &user,
            Some(json!({ "body": "edited" })),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rows}");
    assert_eq!(rows[0]["body"], "edited");
    let (status, rows) = setup
        .send(Method::DELETE, "/notes?body=eq.edited", &user, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{rows}");
    // Reads were counted on the replica; `/ready` reports it.
    let (status, ready) = setup.ready().await;
    assert_eq!(status, StatusCode::OK);
    assert!(ready["replicas"][0]["replica"].is_string(), "{ready}");
    assert_eq!(ready["replicas"][0]["status"], "up", "{ready}");
    let metrics = setup
        .http
        .get(format!("{}/metrics", setup.app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sovra_rest_replica_reads_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_writer_reads_its_own_writes_while_the_replica_replay_is_paused() {
    let setup = Setup::new(3600).await;
    let writer = setup.token(USER_A);
    let other = setup.token(USER_B);
    let service = setup.app.service_role_key.clone();
    setup.insert(&writer, "before").await;
    setup.replica.catch_up(&setup.app.db).await;
    setup.replica_sql("select pg_wal_replay_pause()").await;

    setup.insert(&writer, "while paused").await;
    // The writer sees its write: its read waited for the replica, which
    // did not replay it, and ran on the primary.
    assert_eq!(setup.bodies(&writer).await, ["before", "while paused"]);
    assert!(!setup.on_replica(&writer).await);
    // Another caller reads from the paused replica: stale (the service
    // role sees every row, but not the one the replica has not replayed).
    assert!(setup.on_replica(&other).await);
    assert_eq!(setup.bodies(&service).await, ["before"]);
    assert!(setup.bodies(&other).await.is_empty());

    setup.replica_sql("select pg_wal_replay_resume()").await;
    setup.replica.catch_up(&setup.app.db).await;
    // Replayed: everyone reads from the replica again, up to date.
    assert_eq!(setup.bodies(&service).await, ["before", "while paused"]);
    assert!(setup.on_replica(&writer).await);
    assert_eq!(setup.bodies(&writer).await, ["before", "while paused"]);
}

#[tokio::test]
async fn row_level_security_decides_on_the_replica() {
    let setup = Setup::new(3600).await;
    let a = setup.token(USER_A);
    let b = setup.token(USER_B);
    setup.insert(&a, "a1").await;
    setup.insert(&b, "b1").await;
    setup.replica.catch_up(&setup.app.db).await;
    // Freeze the replica; a row added on the primary now is visible only
    // on the primary, so reads that do not show it ran on the replica.
    setup.replica_sql("select pg_wal_replay_pause()").await;
    setup
        .app
        .db
        .client()
        .await
        .batch_execute(&format!(
            "insert into public.notes (owner, body) values ('{USER_A}', 'a2 on the primary only')"
        ))
        .await
        .unwrap();
    assert!(setup.on_replica(&a).await);
    assert!(setup.on_replica(&b).await);
    assert_eq!(setup.bodies(&a).await, ["a1"]);
    assert_eq!(setup.bodies(&b).await, ["b1"]);
    // Filters cannot reach around the policy.
    let (status, rows) = setup.send(Method::GET, "/notes?body=eq.a1", &b, None).await;
    assert_eq!((status, rows), (StatusCode::OK, json!([])));
    // No policy lets the anon role see a row, on the replica as anywhere.
    let (status, body) = setup
        .send(Method::GET, "/notes", &setup.app.anon_key, None)
        .await;
    assert_eq!((status, body), (StatusCode::OK, json!([])));
    setup.replica_sql("select pg_wal_replay_resume()").await;
}

#[tokio::test]
async fn a_stopped_replica_is_skipped_and_reads_are_answered_by_the_primary() {
    let mut setup = Setup::new(3600).await;
    let a = setup.token(USER_A);
    setup.insert(&a, "kept").await;
    setup.replica.catch_up(&setup.app.db).await;
    assert!(setup.on_replica(&a).await);

    setup.replica.stop().await;
    // Answered, from the primary, at once: the broken replica connection
    // or the refused new one sends the read to the primary.
    assert_eq!(setup.bodies(&a).await, ["kept"]);
    assert!(!setup.on_replica(&a).await);
    assert!(!setup.on_replica(&setup.app.service_role_key).await);
    // Still ready (the primary answers), with the replica reported down.
    let (status, ready) = setup.ready().await;
    assert_eq!(status, StatusCode::OK, "{ready}");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["replicas"][0]["status"], "down", "{ready}");
    let metrics = setup
        .http
        .get(format!("{}/metrics", setup.app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("sovra_db_replica_up{") && l.ends_with(" 0")),
        "{metrics}"
    );
    assert!(metrics.contains("sovra_rest_replica_fallbacks_total"));
}

#[tokio::test]
async fn a_lagging_replica_is_skipped_until_it_catches_up() {
    let setup = Setup::new(1).await;
    let service = setup.app.service_role_key.clone();
    assert!(setup.on_replica(&service).await);
    setup.replica_sql("select pg_wal_replay_pause()").await;
    // Writes the replica does not replay: the monitor (once a second) sees
    // it fall more than database.read_max_lag = 1 s behind.
    let primary = setup.app.db.client().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup.replica_status().await != "lagging" {
        assert!(
            Instant::now() < deadline,
            "the replica was never seen lagging"
        );
        primary
            .batch_execute("insert into public.notes (body) values ('tick')")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Skipped: even a caller without writes reads from the primary.
    assert!(!setup.on_replica(&setup.token(USER_B)).await);
    let (status, _) = setup.ready().await;
    assert_eq!(status, StatusCode::OK);

    setup.replica_sql("select pg_wal_replay_resume()").await;
    // Other tests write to the same primary: on a loaded machine the
    // standby may stay more than 1 s behind for a while.
    let deadline = Instant::now() + Duration::from_secs(120);
    while setup.replica_status().await != "up" {
        if Instant::now() >= deadline {
            let (_, ready) = setup.ready().await;
            let position = primary
                .query_one("select pg_current_wal_lsn()::text", &[])
                .await
                .unwrap();
            let replica = setup
                .replica
                .client(&setup.app.db)
                .await
                .query_one(
                    "select pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text",
                    &[],
                )
                .await
                .unwrap();
            panic!(
                "the replica was never back: {ready}; primary at {}, replica received {:?}, replayed {:?}",
                position.get::<_, String>(0),
                replica.get::<_, Option<String>>(0),
                replica.get::<_, Option<String>>(1)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(setup.on_replica(&setup.token(USER_B)).await);
}

#[tokio::test]
async fn read_replica_urls_must_name_a_server() {
    for bad in ["mysql://replica:3306", "postgres://:5432"] {
        let mut config = sovra_config::Config::default();
        config.database.read_urls = bad.to_owned();
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("database.read_urls"), "{err}");
    }
}
