//! `Idempotency-Key` on `/rest/v1` writes and `/rpc` calls (#18): the first
//! response is stored with the write, in its transaction, and replayed to a
//! repeat by the same caller; against real PostgreSQL through the router.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sovra_test_support::TestApp;

const USER_A: &str = "00000000-0000-0000-0000-00000000000a";
const USER_B: &str = "00000000-0000-0000-0000-00000000000b";

const FIXTURE: &str = "
create table public.orders (
  id bigserial primary key,
  owner uuid default auth.uid(),
  item text not null unique,
  qty int not null check (qty > 0)
);
alter table public.orders enable row level security;
create policy own on public.orders to authenticated
  using (owner = auth.uid()) with check (owner = auth.uid());
create policy anyone on public.orders to anon using (true) with check (owner is null);
grant all on public.orders to anon, authenticated, service_role;
grant usage on sequence public.orders_id_seq to anon, authenticated, service_role;
create function public.place(item text, qty int) returns bigint
language sql volatile as $$
  insert into public.orders (item, qty) values (item, qty) returning id
$$;
create function public.slow_place(item text) returns bigint
language plpgsql volatile as $$
declare
  id bigint;
begin
  insert into public.orders (item, qty) values (item, 1) returning orders.id into id;
  perform pg_sleep(0.3);
  return id;
end
$$;
create function public.order_count() returns bigint
language sql stable as $$ select count(*) from public.orders $$;
";

struct Api {
    app: TestApp,
    http: reqwest::Client,
}

struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::String(self.body.clone()))
    }

    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

impl Api {
    async fn new(config: sovra_config::Config) -> Api {
        let app = TestApp::spawn_with(config).await;
        app.db.client().await.batch_execute(FIXTURE).await.unwrap();
        let api = Api {
            app,
            http: reqwest::Client::new(),
        };
        // The schema cache reloads on DDL.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while api
            .app
            .tenant
            .rest
            .cache()
            .get()
            .is_none_or(|c| c.relation("public", "orders").is_none())
        {
            assert!(std::time::Instant::now() < deadline, "no schema reload");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        api
    }

    fn token(&self, user: &str) -> String {
        self.app.sign(Value::Object(TestApp::user_claims(user)))
    }

    #[allow(clippy::too_many_arguments)]
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        prefer: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut request = self
            .http
            .request(method, format!("{}/rest/v1{path}", self.app.url))
            .header("apikey", &self.app.anon_key);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(prefer) = prefer {
            request = request.header("prefer", prefer);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    async fn count(&self, sql: &str) -> i64 {
        self.app
            .db
            .client()
            .await
            .query_one(sql, &[])
            .await
            .unwrap()
            .get(0)
    }
}

#[tokio::test]
async fn a_repeat_replays_the_first_response_and_writes_once() {
    let api = Api::new(sovra_config::Config::default()).await;
    let a = api.token(USER_A);
    let send = || {
        api.send(
            Method::POST,
            "/orders?select=id,item,qty",
            Some(&a),
            Some("order-1"),
            Some("return=representation,count=exact"),
            Some(json!({"item": "tea", "qty": 2})),
        )
    };
    let first = send().await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    assert!(!first.replayed());
    let again = send().await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.body);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(again.json()[0]["item"], "tea");
    for name in ["content-range", "content-type", "preference-applied"] {
        assert_eq!(again.header(name), first.header(name), "{name}");
        assert!(first.header(name).is_some(), "{name}");
    }
    assert_eq!(api.count("select count(*) from public.orders").await, 1);

    // Location of return=headers-only, and PATCH and DELETE.
    let headers_only = || {
        api.send(
            Method::POST,
            "/orders",
            Some(&a),
            Some("order-2"),
            Some("return=headers-only"),
            Some(json!({"item": "jam", "qty": 1})),
        )
    };
    let first = headers_only().await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let location = first.header("location").unwrap().to_owned();
    assert!(location.starts_with("/orders?id=eq."), "{location}");
    let again = headers_only().await;
    assert!(again.replayed());
    assert_eq!(again.header("location"), Some(location.as_str()));
    for method in [Method::PATCH, Method::DELETE] {
        let body = (method == Method::PATCH).then(|| json!({"qty": 5}));
        let key = format!("change-{method}");
        let first = api
            .send(
                method.clone(),
                "/orders?item=eq.tea",
                Some(&a),
                Some(&key),
                Some("return=representation"),
                body.clone(),
            )
            .await;
        assert_eq!(first.status, StatusCode::OK, "{}", first.body);
        assert_eq!(first.json().as_array().unwrap().len(), 1, "{}", first.body);
        // Without the key the rows would be gone or changed again; the
        // replay says what the first request did.
        let again = api
            .send(
                method,
                "/orders?item=eq.tea",
                Some(&a),
                Some(&key),
                Some("return=representation"),
                body,
            )
            .await;
        assert!(again.replayed());
        assert_eq!((again.status, again.body), (first.status, first.body));
    }
    assert_eq!(api.count("select count(*) from public.orders").await, 1);
    // Requests without a key store nothing.
    let before = api
        .count("select count(*) from sovra.idempotency_keys")
        .await;
    let plain = api
        .send(
            Method::POST,
            "/orders",
            Some(&a),
            None,
            None,
            Some(json!({"item": "salt", "qty": 1})),
        )
        .await;
    assert_eq!(plain.status, StatusCode::CREATED);
    assert!(!plain.replayed());
    assert_eq!(
        api.count("select count(*) from sovra.idempotency_keys")
            .await,
        before
    );
}

#[tokio::test]
async fn callers_keep_their_own_keys() {
    let api = Api::new(sovra_config::Config::default()).await;
    let a = api.token(USER_A);
    let b = api.token(USER_B);
    let post = |token: Option<String>, item: &'static str| {
        let api = &api;
        async move {
            api.send(
                Method::POST,
                "/orders",
                token.as_deref(),
                Some("same-key"),
                None,
                Some(json!({"item": item, "qty": 1})),
            )
            .await
        }
    };
    // The same key and body from A, B and anon: three writes.
    let (x, y, z) = (
        post(Some(a.clone()), "one").await,
        post(Some(b.clone()), "two").await,
        post(None, "three").await,
    );
    for answer in [&x, &y, &z] {
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
        assert!(!answer.replayed());
    }
    // The service role's key, and a Sovra API key of its own, are callers too.
    let service = api
        .http
        .post(format!("{}/rest/v1/orders", api.app.url))
        .header("apikey", &api.app.service_role_key)
        .header(
            "authorization",
            format!("Bearer {}", api.app.service_role_key),
        )
        .header("idempotency-key", "same-key")
        .json(&json!({"item": "four", "qty": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(service.status(), StatusCode::CREATED);
    assert!(service.headers().get("idempotent-replayed").is_none());
    assert_eq!(api.count("select count(*) from public.orders").await, 4);
    // Each caller's repeat replays its own.
    assert!(post(Some(b), "two").await.replayed());
    assert!(post(None, "three").await.replayed());
    assert_eq!(api.count("select count(*) from public.orders").await, 4);
    assert_eq!(
        api.count("select count(*) from sovra.idempotency_keys")
            .await,
        4
    );
}

#[tokio::test]
async fn reuse_with_another_request_is_422_and_bad_keys_are_400() {
    let api = Api::new(sovra_config::Config::default()).await;
    let a = api.token(USER_A);
    let first = api
        .send(
            Method::POST,
            "/orders",
            Some(&a),
            Some("k1"),
            None,
            Some(json!({"item": "tea", "qty": 1})),
        )
        .await;
    assert_eq!(first.status, StatusCode::CREATED);
    for (method, path, body) in [
        (Method::POST, "/orders", json!({"item": "tea", "qty": 2})),
        (
            Method::POST,
            "/orders?select=id",
            json!({"item": "tea", "qty": 1}),
        ),
        (Method::PATCH, "/orders", json!({"item": "tea", "qty": 1})),
        (Method::POST, "/rpc/place", json!({"item": "tea", "qty": 1})),
    ] {
        let answer = api
            .send(method, path, Some(&a), Some("k1"), None, Some(body))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {}",
            answer.body
        );
        let error = answer.json();
        assert_eq!(error["code"], "IDEMPOTENCY_KEY_REUSED");
        for field in ["message", "details", "hint"] {
            assert!(error.get(field).is_some(), "{error}");
        }
        assert!(!answer.replayed());
    }
    assert_eq!(api.count("select count(*) from public.orders").await, 1);

    let long = "k".repeat(256);
    for bad in [long.as_str(), "", "\"\"", "tab\tkey"] {
        let answer = api
            .send(
                Method::POST,
                "/orders",
                Some(&a),
                Some(bad),
                None,
                Some(json!({"item": "jam", "qty": 1})),
            )
            .await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{bad:?}: {}",
            answer.body
        );
        assert_eq!(answer.json()["code"], "IDEMPOTENCY_KEY_INVALID");
    }
    let longest = "k".repeat(255);
    let answer = api
        .send(
            Method::POST,
            "/orders",
            Some(&a),
            Some(&longest),
            None,
            Some(json!({"item": "jam", "qty": 1})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.body);
    // A read ignores the header.
    let read = api
        .send(Method::GET, "/orders", Some(&a), Some(&long), None, None)
        .await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.body);
    assert_eq!(api.count("select count(*) from public.orders").await, 2);
}

#[tokio::test]
async fn failed_or_rolled_back_requests_leave_no_key() {
    let api = Api::new(sovra_config::Config::default()).await;
    let a = api.token(USER_A);
    let post = |qty: i64| {
        api.send(
            Method::POST,
            "/orders",
            Some(&a),
            Some("retry-me"),
            None,
            Some(json!({"item": "tea", "qty": qty})),
        )
    };
    // A unique violation: 409, nothing kept.
    api.app
        .db
        .client()
        .await
        .batch_execute("insert into public.orders (owner, item, qty) values (null, 'tea', 1)")
        .await
        .unwrap();
    let failed = post(1).await;
    assert_eq!(failed.status, StatusCode::CONFLICT, "{}", failed.body);
    assert_eq!(
        api.count("select count(*) from sovra.idempotency_keys")
            .await,
        0
    );
    // The retry runs again, and succeeds once the cause is gone.
    api.app
        .db
        .client()
        .await
        .batch_execute("delete from public.orders")
        .await
        .unwrap();
    let retried = post(1).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.body);
    assert!(!retried.replayed());
    // Prefer: tx=rollback writes nothing and keeps no key.
    let rolled = api
        .send(
            Method::POST,
            "/orders",
            Some(&a),
            Some("rolled"),
            Some("tx=rollback"),
            Some(json!({"item": "jam", "qty": 1})),
        )
        .await;
    assert_eq!(rolled.status, StatusCode::CREATED, "{}", rolled.body);
    assert_eq!(
        api.count("select count(*) from sovra.idempotency_keys where key = 'rolled'")
            .await,
        0
    );
    // A check violation (400) is not kept either.
    let bad = api
        .send(
            Method::POST,
            "/orders",
            Some(&a),
            Some("bad"),
            None,
            Some(json!({"item": "x", "qty": 0})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.body);
    assert_eq!(
        api.count("select count(*) from sovra.idempotency_keys where key = 'bad'")
            .await,
        0
    );
    assert_eq!(api.count("select count(*) from public.orders").await, 1);
}

#[tokio::test]
async fn concurrent_duplicates_write_once() {
    let api = Api::new(sovra_config::Config::default()).await;
    let a = api.token(USER_A);
    // The first call holds its claim for 0.3 s inside the function; the
    // others wait on the key's index entry, then replay.
    let call = || {
        api.send(
            Method::POST,
            "/rpc/slow_place",
            Some(&a),
            Some("together"),
            None,
            Some(json!({"item": "tea"})),
        )
    };
    let (w, x, y, z) = tokio::join!(call(), call(), call(), call());
    let answers = [w, x, y, z];
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        assert_eq!(answer.body, answers[0].body);
    }
    assert_eq!(answers.iter().filter(|a| !a.replayed()).count(), 1);
    assert_eq!(api.count("select count(*) from public.orders").await, 1);
}

#[tokio::test]
async fn rpc_calls_replay_and_stable_calls_run_again() {
    let api = Api::new(sovra_config::Config::default()).await;
    let a = api.token(USER_A);
    let place = || {
        api.send(
            Method::POST,
            "/rpc/place",
            Some(&a),
            Some("rpc-1"),
            None,
            Some(json!({"item": "tea", "qty": 3})),
        )
    };
    let first = place().await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let again = place().await;
    assert!(again.replayed());
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(again.header("content-range"), first.header("content-range"));
    assert_eq!(api.count("select count(*) from public.orders").await, 1);
    // A stable function runs read-only: the key changes nothing.
    for _ in 0..2 {
        let counted = api
            .send(
                Method::POST,
                "/rpc/order_count",
                Some(&a),
                Some("rpc-2"),
                None,
                Some(json!({})),
            )
            .await;
        assert_eq!(counted.status, StatusCode::OK, "{}", counted.body);
        assert!(!counted.replayed());
    }
}

#[tokio::test]
async fn keys_expire_after_the_retention_and_are_purged() {
    let mut config = sovra_config::Config::default();
    config.rest.idempotency_retention = 1;
    let api = Api::new(config).await;
    let a = api.token(USER_A);
    let post = || {
        api.send(
            Method::POST,
            "/rpc/place",
            Some(&a),
            Some("short"),
            None,
            Some(json!({"item": "tea", "qty": 1})),
        )
    };
    let first = post().await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert!(post().await.replayed());
    // Wait (not a timed assertion) until the stored response has expired.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while api
        .count("select count(*) from sovra.idempotency_keys where expires_at > now()")
        .await
        > 0
    {
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The same request runs again once expired (on a fresh claim).
    api.app
        .db
        .client()
        .await
        .batch_execute("delete from public.orders")
        .await
        .unwrap();
    let later = post().await;
    assert_eq!(later.status, StatusCode::OK, "{}", later.body);
    assert!(!later.replayed());
    assert_eq!(api.count("select count(*) from public.orders").await, 1);
    assert_eq!(
        api.count("select count(*) from sovra.idempotency_keys")
            .await,
        1
    );
    // The scheduler's housekeeping deletes expired rows.
    let admin = api.app.db.client().await;
    admin
        .batch_execute(
            "insert into sovra.idempotency_keys (scope, key, fingerprint, xact, expires_at, status)
             values ('anon' || chr(10), 'old', '\\x00', pg_current_xact_id(), now() - interval '1 hour', 201)",
        )
        .await
        .unwrap();
    let scheduler = sovra_server::cron::Scheduler::new(
        api.app.db.config(),
        sovra_server::cron::CronSettings::default(),
    );
    scheduler.housekeeping(&admin).await;
    assert_eq!(
        api.count("select count(*) from sovra.idempotency_keys where key = 'old'")
            .await,
        0
    );
}

#[tokio::test]
async fn the_key_table_is_out_of_reach_of_api_roles() {
    let api = Api::new(sovra_config::Config::default()).await;
    let admin = api.app.db.client().await;
    for role in ["anon", "authenticated", "service_role"] {
        let row = admin
            .query_one(
                "select has_table_privilege($1, 'sovra.idempotency_keys', 'select,insert,update,delete'),
                        has_function_privilege($1, 'sovra.idempotency_replay(text, text)', 'execute'),
                        has_function_privilege($1, 'sovra.idempotency_claim(text, text, bytea, int)', 'execute'),
                        has_function_privilege($1, 'sovra.idempotency_complete(text, text, int, jsonb, bytea)', 'execute')",
                &[&role],
            )
            .await
            .unwrap();
        for i in 0..4 {
            assert!(!row.get::<_, bool>(i), "{role} reaches column {i}");
        }
    }
    // Completing a claim made by no transaction of ours is refused.
    let err = admin
        .batch_execute("select sovra.idempotency_complete('x', 'y', 200, '[]', '')")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "SVID3");
}
