//! REST main statements are prepared once per connection and role
//! (`sovra_rest::prepared`). On a pool of one connection, so that every
//! request reuses the same prepared statements, PostgreSQL keeps deciding:
//! row-level security per caller, privileges revoked and granted, policies
//! changed, schema privileges, columns added, all after the statement was
//! prepared; and a connection keeps a bounded number of statements.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::StatusCode;
use serde_json::{Value, json};
use sovra_test_support::TestApp;

const USER_A: &str = "00000000-0000-0000-0000-00000000000a";
const USER_B: &str = "00000000-0000-0000-0000-00000000000b";

const FIXTURE: &str = "
create table public.notes (
  id bigint primary key,
  owner uuid not null,
  body text not null
);
alter table public.notes enable row level security;
create policy own_notes on public.notes to authenticated
  using (owner = auth.uid()) with check (owner = auth.uid());
create policy public_notes on public.notes for select to anon using (body like 'public:%');
insert into public.notes values
  (1, '00000000-0000-0000-0000-00000000000a', 'a private'),
  (2, '00000000-0000-0000-0000-00000000000a', 'public: a'),
  (3, '00000000-0000-0000-0000-00000000000b', 'b private');
create table public.open_list (id int primary key, body text);
insert into public.open_list values (1, 'one');
create schema side;
grant usage on schema side to anon, authenticated, service_role;
create table side.things (id int primary key, body text);
grant all on side.things to anon, authenticated, service_role;
insert into side.things values (1, 'thing');
";

struct Rest {
    app: TestApp,
    http: reqwest::Client,
}

impl Rest {
    async fn new() -> Rest {
        let mut config = sovra_config::Config::default();
        config.rest.schemas = "public,side".to_owned();
        // One connection: every request runs on it, so every statement
        // after the first of its shape and role is the prepared one.
        config.database.pool_size = 1;
        let app = TestApp::spawn_with(config).await;
        let client = app.db.client().await;
        client.batch_execute(FIXTURE).await.unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while app
            .tenant
            .rest
            .cache()
            .get()
            .and_then(|c| c.relation("side", "things").cloned())
            .is_none()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "schema cache never reloaded"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Rest {
            app,
            http: reqwest::Client::new(),
        }
    }

    fn token(&self, user: &str) -> String {
        self.app.sign(Value::Object(TestApp::user_claims(user)))
    }

    async fn get(
        &self,
        path: &str,
        token: Option<&str>,
        profile: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .get(format!("{}/rest/v1{path}", self.app.url))
            .header("apikey", &self.app.anon_key);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(profile) = profile {
            request = request.header("accept-profile", profile);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Statements prepared on the pool's one connection.
    async fn held(&self) -> usize {
        let client = self.app.tenant.pool.get().await.unwrap();
        self.app.tenant.rest.statements().held(&client)
    }

    async fn admin(&self, sql: &str) {
        self.app.db.client().await.batch_execute(sql).await.unwrap();
    }
}

fn bodies(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|row| row["body"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn one_prepared_statement_serves_every_caller_of_a_role_under_rls() {
    let rest = Rest::new().await;
    let a = rest.token(USER_A);
    let b = rest.token(USER_B);
    let path = "/notes?select=body&id=in.(1,2,3)&order=id";
    assert_eq!(rest.held().await, 0);
    let (status, body) = rest.get(path, Some(&a), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(bodies(&body), ["a private", "public: a"]);
    assert_eq!(rest.held().await, 1, "prepared for authenticated");
    for _ in 0..3 {
        let (_, body) = rest.get(path, Some(&a), None).await;
        assert_eq!(bodies(&body), ["a private", "public: a"]);
    }
    // Another user of the same role: the same statement, B's claims.
    let (_, body) = rest.get(path, Some(&b), None).await;
    assert_eq!(bodies(&body), ["b private"]);
    assert_eq!(rest.held().await, 1, "one statement for the role");
    // Another role: its own statement, its own policies.
    let (_, body) = rest.get(path, None, None).await;
    assert_eq!(bodies(&body), ["public: a"]);
    assert_eq!(rest.held().await, 2, "one statement per role");
    // Back to A after anon used the connection: nothing of anon's leaks.
    let (_, body) = rest.get(path, Some(&a), None).await;
    assert_eq!(bodies(&body), ["a private", "public: a"]);
    assert_eq!(rest.held().await, 2);
}

#[tokio::test]
async fn privileges_and_policies_changed_after_preparing_take_effect() {
    let rest = Rest::new().await;
    let a = rest.token(USER_A);
    let b = rest.token(USER_B);
    let path = "/notes?select=body&id=eq.1";
    for _ in 0..6 {
        // Past PostgreSQL's five custom plans, so a generic plan may be cached.
        let (status, body) = rest.get(path, Some(&a), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(bodies(&body), ["a private"]);
    }
    let (_, body) = rest.get(path, Some(&b), None).await;
    assert_eq!(bodies(&body), Vec::<&str>::new(), "B cannot see A's note");

    // A revoked privilege refuses the prepared statement.
    rest.admin("revoke select on public.notes from authenticated")
        .await;
    let (status, body) = rest.get(path, Some(&a), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "42501", "{body}");
    rest.admin("grant select on public.notes to authenticated")
        .await;
    let (status, body) = rest.get(path, Some(&a), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(bodies(&body), ["a private"]);

    // A changed policy decides the next execution.
    rest.admin(
        "drop policy own_notes on public.notes;
         create policy everyone on public.notes to authenticated using (true)",
    )
    .await;
    let (_, body) = rest.get(path, Some(&b), None).await;
    assert_eq!(bodies(&body), ["a private"], "the new policy lets B read");
    rest.admin("alter table public.notes disable row level security; revoke select on public.notes from authenticated")
        .await;
    let (status, _) = rest.get(path, Some(&b), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn schema_usage_and_new_columns_are_seen_by_prepared_statements() {
    let rest = Rest::new().await;
    let a = rest.token(USER_A);
    let path = "/things?id=eq.1";
    for _ in 0..6 {
        let (status, body) = rest.get(path, Some(&a), Some("side")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!([{"id": 1, "body": "thing"}]));
    }
    // Schema USAGE is checked when names are looked up; revoking it
    // invalidates prepared statements, so the next lookup is refused.
    rest.admin("revoke usage on schema side from authenticated")
        .await;
    let (status, body) = rest.get(path, Some(&a), Some("side")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "42501", "{body}");
    rest.admin("grant usage on schema side to authenticated")
        .await;
    let (status, _) = rest.get(path, Some(&a), Some("side")).await;
    assert_eq!(status, StatusCode::OK);

    // `select=*` of a prepared statement shows a column added since.
    let (_, body) = rest.get("/open_list?id=eq.1", Some(&a), None).await;
    assert_eq!(body, json!([{"id": 1, "body": "one"}]));
    rest.admin("alter table public.open_list add column extra text default 'x'")
        .await;
    let (status, body) = rest.get("/open_list?id=eq.1", Some(&a), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([{"id": 1, "body": "one", "extra": "x"}]));
}

#[tokio::test]
async fn a_connection_keeps_a_bounded_number_of_statements() {
    let rest = Rest::new().await;
    let a = rest.token(USER_A);
    let limit = sovra_rest::prepared::PER_CONNECTION;
    // Distinct shapes: each alias list is its own statement.
    for i in 0..limit + 8 {
        let (status, body) = rest
            .get(&format!("/notes?select=n{i}:body&id=eq.1"), Some(&a), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!([{ format!("n{i}"): "a private" }]));
    }
    assert_eq!(rest.held().await, limit);
    // The most recent shapes are still served (and still correct).
    let (status, body) = rest
        .get(
            &format!("/notes?select=n{}:body&id=eq.1", limit + 7),
            Some(&a),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!([{ format!("n{}", limit + 7): "a private" }]));
    assert_eq!(rest.held().await, limit);
}

#[tokio::test]
async fn a_request_dropped_while_preparing_closes_its_connection() {
    let rest = Rest::new().await;
    let a = rest.token(USER_A);
    // Hold a lock that makes preparing a statement on `open_list` wait
    // (name lookup takes the table's share lock).
    let locker = rest.app.db.client().await;
    locker
        .batch_execute("begin; lock table public.open_list in access exclusive mode")
        .await
        .unwrap();
    let url = format!("{}/rest/v1/open_list?id=eq.1", rest.app.url);
    let request = rest
        .http
        .get(&url)
        .header("apikey", &rest.app.anon_key)
        .header("authorization", format!("Bearer {a}"))
        .send();
    let pending = tokio::spawn(request);
    // The request's backend is waiting for the lock, inside the preparation.
    let admin = rest.app.db.client().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let pid: i32 = loop {
        let row = admin
            .query_opt(
                "select pid from pg_stat_activity
                  where usename = 'authenticator' and wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            break row.get(0);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the request never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // The client goes away: the server drops the request mid-preparation.
    pending.abort();
    let _ = pending.await;
    // Its connection leaves the pool and closes (the lock wait ends with it),
    // so no statement is left prepared where no handle can close it.
    let gone = loop {
        let alive = admin
            .query_opt("select 1 from pg_stat_activity where pid = $1", &[&pid])
            .await
            .unwrap()
            .is_some();
        if !alive {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    locker.batch_execute("commit").await.unwrap();
    assert!(gone, "the dropped request's connection was closed");
    // The pool opens a fresh connection for the next request.
    let (status, body) = rest.get("/open_list?id=eq.1", Some(&a), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([{"id": 1, "body": "one"}]));
    assert_eq!(rest.held().await, 1);
}

/// A tenant's first request connection is opened and readied while its
/// schema cache loads (`sovra_rest::warm_connection`): the REST prologue is
/// prepared on it, and the rolled-back run of it as `anon` leaves nothing
/// behind for the first request.
#[tokio::test]
async fn the_first_request_connection_comes_ready_and_clean() {
    let rest = Rest::new().await;
    {
        let client = rest.app.tenant.pool.get().await.unwrap();
        let row = client
            .query_one(
                "select (select count(*) from pg_catalog.pg_prepared_statements
                          where statement like '%sovra.reset_session()%'
                            and statement not like '%pg_prepared_statements%'),
                        current_user::text,
                        coalesce(current_setting('request.method', true), ''),
                        coalesce(current_setting('request.jwt.claims', true), ''),
                        pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>(0), 1, "the prologue is prepared");
        assert_eq!(row.get::<_, String>(1), "authenticator");
        assert_eq!(row.get::<_, String>(2), "", "no request setting left");
        assert_eq!(row.get::<_, String>(3), "", "no claims left");
        let pid: i32 = row.get(4);
        let state: String = rest
            .app
            .db
            .client()
            .await
            .query_one(
                "select state from pg_catalog.pg_stat_activity where pid = $1",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(state, "idle", "no transaction left open");
    }
    assert_eq!(rest.held().await, 0, "no main statement yet");
    // The first request uses that connection and its prepared prologue.
    let (status, body) = rest.get("/open_list?select=id,body", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([{"id": 1, "body": "one"}]));
    let client = rest.app.tenant.pool.get().await.unwrap();
    let prepared: i64 = client
        .query_one(
            "select count(*) from pg_catalog.pg_prepared_statements
             where statement like '%sovra.reset_session()%'
               and statement not like '%pg_prepared_statements%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(prepared, 1, "the request reused it");
}

/// A connection that cannot run the prologue (its login may not switch to
/// `anon`) is refused and closed, never handed back to the pool half-used.
#[tokio::test]
async fn a_connection_that_cannot_run_the_prologue_is_closed_not_pooled() {
    let db = sovra_test_support::TestDb::new().await;
    let login = format!("no_anon_{}", db.name);
    db.client()
        .await
        .batch_execute(&format!("create role \"{login}\" login"))
        .await
        .unwrap();
    let pool =
        sovra_pg::pool::build(db.config_as(&login), 1, std::time::Duration::from_secs(10)).unwrap();
    let client = pool.get().await.unwrap();
    let err = sovra_rest::warm_connection(client).await.unwrap_err();
    assert_eq!(
        err.code().map(|c| c.code()),
        Some("42501"),
        "refused by PostgreSQL: {err}"
    );
    assert_eq!(pool.status().size, 0, "the connection was closed");
    drop(pool);
    db.client()
        .await
        .batch_execute(&format!("drop role \"{login}\""))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_call_by_get_and_by_post_with_an_empty_body_share_the_connection() {
    let rest = Rest::new().await;
    rest.admin(
        "create function public.answer() returns int language sql stable as 'select 42';
         create function public.greet(name text default 'you') returns text language sql stable
           as $$ select 'hello ' || name $$;",
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rest.get("/rpc/greet", None, None).await.0 != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "function never seen");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let post = |path: &'static str, body: Value| {
        let http = rest.http.clone();
        let url = format!("{}/rest/v1{path}", rest.app.url);
        let key = rest.app.anon_key.clone();
        async move {
            let response = http
                .post(url)
                .header("apikey", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }
    };
    // The same call, in both orders, on the pool's one connection: a body
    // that names no parameter binds no value, so each reuses the other's
    // statement instead of failing on it.
    for _ in 0..2 {
        assert_eq!(
            rest.get("/rpc/answer", None, None).await,
            (StatusCode::OK, json!(42))
        );
        assert_eq!(
            post("/rpc/answer", json!({})).await,
            (StatusCode::OK, json!(42))
        );
        assert_eq!(
            post("/rpc/greet", json!({})).await,
            (StatusCode::OK, json!("hello you"))
        );
        assert_eq!(
            rest.get("/rpc/greet", None, None).await,
            (StatusCode::OK, json!("hello you"))
        );
        assert_eq!(
            post("/rpc/greet", json!({"name": "Ada"})).await,
            (StatusCode::OK, json!("hello Ada"))
        );
        assert_eq!(
            rest.get("/rpc/greet?name=Ada", None, None).await,
            (StatusCode::OK, json!("hello Ada"))
        );
    }
}

/// The role settings the prologue applies come from the schema cache (as
/// PostgREST keeps them): global and database-specific values, the latter
/// winning, taken up on `NOTIFY pgrst, 'reload config'`.
#[tokio::test]
async fn role_settings_come_from_the_schema_cache_and_reload_on_notify() {
    let rest = Rest::new().await;
    rest.admin(
        "create function public.my_settings() returns json language sql stable as $$
           select json_build_object('statement_timeout', current_setting('statement_timeout'),
                                    'work_mem', current_setting('work_mem')) $$;
         create function public.slow() returns int language sql as 'select 1 from pg_sleep(1)';",
    )
    .await;
    let user = rest.token(USER_A);
    let settings = |token: Option<String>| {
        let rest = &rest;
        async move {
            let (status, body) = rest.get("/rpc/my_settings", token.as_deref(), None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body
        }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rest.get("/rpc/my_settings", None, None).await.0 != StatusCode::OK {
        assert!(std::time::Instant::now() < deadline, "function never seen");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The roles' global settings (Sovra's migrations: anon 3 s,
    // authenticated 8 s).
    assert_eq!(settings(None).await["statement_timeout"], "3s");
    assert_eq!(
        settings(Some(user.clone())).await["statement_timeout"],
        "8s"
    );

    // Database-specific ones for anon, then the reload Supabase's docs send.
    let db = &rest.app.db.name;
    rest.admin(&format!(
        "alter role anon in database \"{db}\" set statement_timeout = '150ms';
         alter role anon in database \"{db}\" set work_mem = '5MB';
         notify pgrst, 'reload config';"
    ))
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = settings(None).await;
        if now["statement_timeout"] == "150ms" {
            assert_eq!(now["work_mem"], "5MB");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reloaded: {now}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The timeout holds: a statement over it is cancelled.
    let slow = rest
        .http
        .post(format!("{}/rest/v1/rpc/slow", rest.app.url))
        .header("apikey", &rest.app.anon_key)
        .send()
        .await
        .unwrap();
    let status = slow.status();
    let body: Value = slow.json().await.unwrap();
    assert_eq!(body["code"], "57014", "{status} {body}");
    // Another role keeps its own.
    assert_eq!(settings(Some(user)).await["statement_timeout"], "8s");

    // Reset, reloaded by a schema change this time.
    rest.admin(&format!(
        "alter role anon in database \"{db}\" reset statement_timeout;
         alter role anon in database \"{db}\" reset work_mem;
         create table public.after_reset (id int);"
    ))
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while settings(None).await["statement_timeout"] != "3s" {
        assert!(std::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
