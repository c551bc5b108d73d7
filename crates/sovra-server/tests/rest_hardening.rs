//! `/rest/v1` under hostile input and across requests on one connection:
//! nesting limits, functions run once, session state reset between
//! requests, and the roles Sovra's pools log in as.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sovra_test_support::TestApp;

const FIXTURE: &str = "
create table public.nodes (id int primary key, parent_id int references public.nodes);
insert into public.nodes select g, nullif(g - 1, 0) from generate_series(1, 5) g;
grant select on public.nodes to anon, authenticated;
";

struct Rest {
    app: TestApp,
    http: reqwest::Client,
}

impl Rest {
    async fn with(config: sovra_config::Config, fixture: &str) -> Rest {
        let app = TestApp::spawn_with(config).await;
        let client = app.db.client().await;
        client.batch_execute(FIXTURE).await.unwrap();
        client.batch_execute(fixture).await.unwrap();
        client
            .batch_execute("create table public.zz_loaded ()")
            .await
            .unwrap();
        // The DDL event trigger reloads the schema cache; wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while app
            .tenant
            .rest
            .cache()
            .get()
            .and_then(|c| c.relation("public", "zz_loaded").cloned())
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

    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        token: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let mut request = self
            .http
            .request(method, format!("{}/rest/v1{path_and_query}", self.app.url))
            .header("apikey", &self.app.anon_key)
            .header("authorization", format!("Bearer {token}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        (status, headers, response.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self
            .call(Method::GET, path, &self.app.anon_key, &[], None)
            .await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

/// `nodes(id,nodes(id,…))`: `levels` to-many embeds of the table in itself.
fn nested_embeds(levels: usize) -> String {
    format!(
        "id,{}nodes(id{}",
        "nodes(id,".repeat(levels - 1),
        ")".repeat(levels)
    )
}

fn nested_select(levels: usize) -> String {
    format!("{}{}", "a(".repeat(levels), ")".repeat(levels))
}

fn nested_or(levels: usize) -> String {
    format!(
        "({}id.eq.1{})",
        "and(".repeat(levels - 1),
        ")".repeat(levels - 1)
    )
}

#[tokio::test]
async fn deep_nesting_is_refused_and_the_server_lives_on() {
    let rest = Rest::with(sovra_config::Config::default(), "").await;
    // Each of these once overflowed a worker's stack and aborted the
    // process (about 15 KB of URL each).
    for query in [
        format!("or={}", nested_or(3000)),
        format!("not.and={}", nested_or(3000)),
        format!("select={}", nested_select(3000)),
        format!("select=id,{}", nested_embeds(3000)),
        format!("select={}", nested_embeds(100)),
        format!("select={}", nested_embeds(17)),
        format!("or={}", nested_or(17)),
    ] {
        let (status, body) = rest.get(&format!("/nodes?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{}", &query[..40]);
        assert_eq!(body["code"], "PGRST100", "{body}");
        let details = body["details"].as_str().unwrap();
        assert!(
            details.contains("nested more than 16 levels deep"),
            "{details}"
        );
        // The server is alive and answers the next request.
        let (status, body) = rest.get("/nodes?select=id&id=eq.1").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!([{"id": 1}]));
    }
}

#[tokio::test]
async fn nesting_at_the_limit_works() {
    let rest = Rest::with(sovra_config::Config::default(), "").await;
    // Sixteen embeds, each a correlated subquery: PostgreSQL's estimates
    // multiply at every level, and with JIT compilation this took seconds
    // (past anon's 3 s statement timeout) for five rows.
    let (status, body) = rest
        .get(&format!("/nodes?select={}&id=eq.1", nested_embeds(16)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut depth = 0;
    let mut node = &body[0];
    while let Some(children) = node["nodes"].as_array() {
        depth += 1;
        match children.first() {
            Some(child) => node = child,
            None => break,
        }
    }
    // Five nodes in a chain: four levels of children, then an empty list.
    assert_eq!(depth, 5, "{body}");
    let (status, body) = rest
        .get(&format!("/nodes?select=id&or={}", nested_or(16)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([{"id": 1}]));
}

#[tokio::test]
async fn deep_json_bodies_are_refused() {
    let rest = Rest::with(
        sovra_config::Config::default(),
        "create function public.echo(j json) returns json language sql immutable as $$ select j $$;
         create function public.echo_whole(json) returns json language sql immutable as $$ select $1 $$;",
    )
    .await;
    let deep = format!("{}{}", "[".repeat(3000), "]".repeat(3000));
    let service = rest.app.service_role_key.clone();
    for (path, body) in [
        ("/nodes", deep.clone()),
        ("/rpc/echo_whole", deep.clone()),
        ("/rpc/echo", format!("{{\"j\": {deep}}}")),
    ] {
        let response = rest
            .http
            .post(format!("{}/rest/v1{path}", rest.app.url))
            .header("apikey", &rest.app.anon_key)
            .header("authorization", format!("Bearer {service}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "PGRST102", "{path}: {body}");
    }
    // Nesting that JSON parsers take is passed on whole.
    let nested = json!({"j": [[[[[[[[[[{"a": [1]}]]]]]]]]]]});
    let (status, _, body) = rest
        .call(
            Method::POST,
            "/rpc/echo",
            &service,
            &[],
            Some(nested.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), nested["j"]);
}

#[tokio::test]
async fn rpc_counts_come_from_one_execution() {
    let rest = Rest::with(
        sovra_config::Config::default(),
        "create table public.calls (n serial primary key, at timestamptz default now());
         create function public.log_call() returns setof public.nodes language sql volatile
           as $$ insert into public.calls default values; select * from public.nodes $$;
         create function public.log_scalar() returns setof int language sql volatile
           as $$ insert into public.calls default values; select id from public.nodes $$;",
    )
    .await;
    let service = rest.app.service_role_key.clone();
    let client = rest.app.db.client().await;
    let calls = || async {
        client
            .query_one("select count(*) from public.calls", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let cases: [(&str, &str, &str, StatusCode, usize); 5] = [
        ("/rpc/log_call", "count=exact", "0-4/5", StatusCode::OK, 5),
        (
            "/rpc/log_call?id=gt.2&limit=1",
            "count=exact",
            "0-0/3",
            StatusCode::PARTIAL_CONTENT,
            1,
        ),
        (
            "/rpc/log_call?select=id,nodes(id)&order=id.desc&offset=1",
            "count=exact",
            "1-4/5",
            StatusCode::PARTIAL_CONTENT,
            4,
        ),
        (
            "/rpc/log_call?limit=2",
            "count=estimated",
            "0-1/5",
            StatusCode::PARTIAL_CONTENT,
            2,
        ),
        ("/rpc/log_scalar", "count=exact", "0-4/5", StatusCode::OK, 5),
    ];
    for (i, (path, prefer, range, want_status, rows)) in cases.into_iter().enumerate() {
        let (status, headers, body) = rest
            .call(
                Method::POST,
                path,
                &service,
                &[("prefer", prefer)],
                Some(json!({})),
            )
            .await;
        assert_eq!(status, want_status, "{path} {prefer}: {body}");
        assert_eq!(headers["content-range"], range, "{path} {prefer}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body.as_array().unwrap().len(), rows, "{path}: {body}");
        assert_eq!(
            calls().await,
            i64::try_from(i).unwrap() + 1,
            "{path} {prefer} ran more than once"
        );
    }
}

#[tokio::test]
async fn session_state_does_not_outlive_its_request() {
    let mut config = sovra_config::Config::default();
    // One connection: the second request gets the one the first used.
    config.database.pool_size = 1;
    let rest = Rest::with(
        config,
        "create function public.leave_state() returns int language plpgsql volatile as $$
         begin
           perform set_config('request.jwt.claim', '{\"role\":\"service_role\"}', false);
           perform set_config('request.jwt.claim.sub', 'victim', false);
           perform set_config('request.jwt.claim.custom', 'leaked', false);
           perform set_config('request.anything', 'leaked', false);
           perform set_config('app.tenant', 'leaked', false);
           perform set_config('timezone', 'Asia/Tokyo', false);
           perform pg_advisory_lock(4242);
           create temp table leftover (x int);
           return pg_backend_pid();
         end $$;
         create function public.read_state() returns json language sql volatile as $$
           select json_build_object(
             'pid', pg_backend_pid(),
             'claim', coalesce(current_setting('request.jwt.claim', true), ''),
             'custom', coalesce(current_setting('request.jwt.claim.custom', true), ''),
             'anything', coalesce(current_setting('request.anything', true), ''),
             'tenant', coalesce(current_setting('app.tenant', true), ''),
             'sub', current_setting('request.jwt.claim.sub', true),
             'timezone', current_setting('timezone'),
             'locks', (select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()),
             'temp', to_regclass('pg_temp.leftover') is not null) $$;
         grant execute on function public.leave_state(), public.read_state() to anon, authenticated;",
    )
    .await;
    let anon = rest.app.anon_key.clone();
    let (status, _, body) = rest
        .call(
            Method::POST,
            "/rpc/leave_state",
            &anon,
            &[],
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first_pid: i64 = body.parse().unwrap();
    let user = rest.app.sign(Value::Object(TestApp::user_claims(
        "00000000-0000-0000-0000-00000000000a",
    )));
    let (status, _, body) = rest
        .call(Method::POST, "/rpc/read_state", &user, &[], Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let state: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(state["pid"], first_pid, "the pool reused the connection");
    let default_timezone: String = rest
        .app
        .db
        .client()
        .await
        .query_one("show timezone", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(default_timezone, "Asia/Tokyo");
    assert_eq!(
        state,
        json!({
            "pid": first_pid,
            "claim": "",
            "custom": "",
            "anything": "",
            "tenant": "",
            "sub": "00000000-0000-0000-0000-00000000000a",
            "timezone": default_timezone,
            "locks": 0,
            "temp": false,
        })
    );
}

#[tokio::test]
async fn malformed_queries_and_headers_get_client_errors() {
    let rest = Rest::with(
        sovra_config::Config::default(),
        "create table public.docs (id int primary key, body jsonb, tags text[], during tstzrange);
         grant select on public.docs to anon;",
    )
    .await;
    let long_in = format!("id=in.({})", vec!["1"; 5000].join(","));
    let deep_json = format!("body=cs.{}{}", "%5B".repeat(2000), "%5D".repeat(2000));
    let queries = [
        "select=",
        "select=,",
        "select=id,,",
        "select=(",
        "select=)",
        "select=a(",
        "select=*,nope(*)",
        "select=id::",
        "select=id::text;drop table docs",
        "select=id::\"text\"",
        "select=body->",
        "select=body->>-",
        "select=id.median()",
        "select=count(x)",
        "select=...docs",
        "select=x:...docs(id)",
        "select=%00",
        "select=id%00",
        "id=%00",
        "id=eq.%00",
        "id=eq",
        "id=eq.",
        "id=nope.1",
        "id=in.(1,2",
        "id=in.",
        "id=is.maybe",
        "id=eq(any).{1,2",
        "body->a=eq.1",
        "body->>=eq.1",
        "or=",
        "or=(",
        "or=()",
        "or=(id.eq.1",
        "or=(id.eq.1))",
        "or=(and())",
        "or=(nope)",
        "not.or=id.eq.1",
        "order=",
        "order=id.sideways",
        "order=id.asc.desc",
        "order=nope",
        "order=docs(id)",
        "limit=-1",
        "limit=x",
        "offset=-5",
        "offset=99999999999999999999",
        "limit=99999999999999999999",
        "nope.order=id",
        "nope.limit=1",
        "columns=id",
        "on_conflict=(",
        "%ZZ=%G0",
        "select=%E2%82",
        "id=eq.%FF%FE",
        "tags=cs.{a,{b}",
        "during=ov.[2020-01-01,",
        "body=cs.{\"a\":",
        "id=fts(nope;).x",
        "id=wfts(english).x",
        long_in.as_str(),
        deep_json.as_str(),
    ];
    let mut server_errors = Vec::new();
    for query in queries {
        let (status, body) = rest.get(&format!("/docs?{query}")).await;
        if status.is_server_error() {
            server_errors.push(format!("{query}: {status} {body}"));
        }
    }
    for (name, value) in [
        ("range", "5-1"),
        ("range", "items=abc"),
        ("range", "-1-"),
        ("range", "99999999999999999999-"),
        ("prefer", "count=exact, count=planned"),
        ("prefer", "handling=strict, bogus"),
        ("prefer", "max-affected=-1, handling=strict"),
        ("prefer", "timezone=Not/AZone"),
        ("accept", "application/xml"),
        ("accept-profile", "nope"),
    ] {
        let (status, _, body) = rest
            .call(
                Method::GET,
                "/docs",
                &rest.app.anon_key,
                &[(name, value)],
                None,
            )
            .await;
        if status.is_server_error() {
            server_errors.push(format!("{name}: {value}: {status} {body}"));
        }
    }
    assert!(server_errors.is_empty(), "{server_errors:#?}");
    // PostgreSQL's program limits are the one 500 here, as the contract
    // (spec §2.16.2: `54*` → 500) and PostgREST have it.
    let (status, body) = rest.get("/docs?tags=cs.{{{{{{{a}}}}}}}").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["code"], "54000", "{body}");
    let (status, body) = rest.get("/docs?select=id").await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn session_state_left_by_a_rest_request_does_not_reach_storage() {
    let mut config = sovra_config::Config::default();
    // One connection: the storage request gets the one the REST call used.
    config.database.pool_size = 1;
    let rest = Rest::with(
        config,
        "create function public.leave_tenant() returns int language plpgsql volatile as $$
         begin perform set_config('app.tenant', 'leaked', false); return 1; end $$;
         grant execute on function public.leave_tenant() to anon;
         insert into storage.buckets (id, name, public) values ('b', 'b', false);
         insert into storage.objects (bucket_id, name, version) values ('b', 'secret.txt', 'v1');
         create policy leak on storage.objects for select to anon
           using (current_setting('app.tenant', true) = 'leaked');",
    )
    .await;
    let anon = rest.app.anon_key.clone();
    let (status, _, body) = rest
        .call(
            Method::POST,
            "/rpc/leave_tenant",
            &anon,
            &[],
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let response = rest
        .http
        .post(format!("{}/storage/v1/object/list/b", rest.app.url))
        .header("apikey", &anon)
        .header("authorization", format!("Bearer {anon}"))
        .json(&json!({"prefix": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let listed: Value = response.json().await.unwrap();
    assert_eq!(listed, json!([]), "the REST call's session setting leaked");
}

#[tokio::test]
async fn a_session_role_cursor_listen_or_sequence_does_not_outlive_its_request() {
    let mut config = sovra_config::Config::default();
    // One connection: every request gets the one the first used.
    config.database.pool_size = 1;
    let rest = Rest::with(
        config,
        "create sequence public.counter;
         grant usage on sequence public.counter to anon;
         create function public.leave_session() returns int language plpgsql volatile as $$
         begin
           execute 'declare leftover_cursor cursor with hold for select 1';
           listen leftover_channel;
           perform nextval('public.counter');
           -- The session's role itself: one the reset function may not run as.
           perform set_config('role', 'service_role', false);
           return pg_backend_pid();
         end $$;
         create function public.read_session() returns json language plpgsql volatile as $$
         declare
           last bigint;
         begin
           begin
             last := lastval();
           exception when others then
             last := null;
           end;
           return json_build_object(
             'pid', pg_backend_pid(),
             'user', current_user,
             'cursors', (select count(*) from pg_cursors where name = 'leftover_cursor'),
             'listening', (select count(*) from pg_listening_channels()),
             'lastval', last);
         end $$;
         create function public.whoami() returns text language sql stable as $$ select current_user::text $$;
         grant execute on function public.leave_session(), public.read_session(), public.whoami()
           to anon, authenticated;",
    )
    .await;
    let anon = rest.app.anon_key.clone();
    let user = rest.app.sign(Value::Object(TestApp::user_claims(
        "00000000-0000-0000-0000-00000000000a",
    )));
    for round in 0..2 {
        let (status, _, body) = rest
            .call(
                Method::POST,
                "/rpc/leave_session",
                &anon,
                &[],
                Some(json!({})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let pid: i64 = body.parse().unwrap();
        // Twice: once with the statement prepared in the same request, once
        // with it prepared before.
        for caller in [&user, &anon] {
            let (status, _, body) = rest
                .call(
                    Method::POST,
                    "/rpc/read_session",
                    caller,
                    &[],
                    Some(json!({})),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "round {round}: {body}");
            let state: Value = serde_json::from_str(&body).unwrap();
            let role = if caller == &user {
                "authenticated"
            } else {
                "anon"
            };
            assert_eq!(
                state,
                json!({"pid": pid, "user": role, "cursors": 0, "listening": 0, "lastval": null}),
                "round {round}"
            );
        }
    }
    // A GET after the leak runs as its caller too.
    let (status, _, body) = rest
        .call(
            Method::POST,
            "/rpc/leave_session",
            &anon,
            &[],
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = rest
        .call(Method::GET, "/rpc/whoami", &user, &[], None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "\"authenticated\"");
}
