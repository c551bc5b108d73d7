//! `/rest/v1` compatibility with PostgREST where clients rely on it (#16):
//! computed relationships and fields, functions with unnamed parameters
//! and overloads, PostgREST's function errors, upsert statuses, counts on
//! `/rpc`, embedding disambiguation, aggregates beside embeds, response
//! GUCs and custom errors, `OPTIONS`, and the plan media type. Every
//! request is the one the client sends, against real PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sovra_test_support::TestApp;

const FIXTURE: &str = r#"
create table public.channels (id int primary key, slug text);
create table public.messages (
  id int primary key, channel_id int references public.channels, body text,
  likes int not null default 0);
insert into public.channels values (1, 'general'), (2, 'random'), (3, 'empty');
insert into public.messages values
  (1, 1, 'hello world', 3), (2, 1, 'help me', 5), (3, 2, 'random thought', 1);
create view public.channel_view as select id, slug from public.channels;

-- Computed relationships.
create function public.get_messages(public.channels) returns setof public.messages
  language sql stable as $$ select * from public.messages where channel_id = $1.id $$;
create function public.latest_message(public.channels) returns setof public.messages
  language sql stable rows 1
  as $$ select * from public.messages where channel_id = $1.id order by id desc limit 1 $$;
create function public.channel_of(public.messages) returns public.channels
  language sql stable as $$ select * from public.channels where id = $1.channel_id $$;
create function public.view_messages(public.channel_view) returns setof public.messages
  language sql stable as $$ select * from public.messages where channel_id = $1.id $$;

-- Computed fields.
create function public.blurb_message(public.messages) returns text
  language sql immutable as $$ select left($1.body, 3) $$;
create function public.blurb_channel(public.channels) returns text
  language sql immutable as $$ select upper($1.slug) $$;
create table public.events (id int, kind text, at date not null) partition by range (at);
create table public.events_2024 partition of public.events
  for values from ('2024-01-01') to ('2025-01-01');
insert into public.events values (1, 'click', '2024-05-01'), (2, 'view', '2024-06-01');
create function public.kind_upper(public.events) returns text
  language sql immutable as $$ select upper($1.kind) $$;
create function public.all_messages() returns setof public.messages
  language sql stable as $$ select * from public.messages $$;

-- Unnamed parameters and overloads.
create function public.echo_text(text) returns text
  language sql immutable as $$ select 'got ' || $1 $$;
create function public.echo_xml(xml) returns text
  language sql immutable as $$ select $1::text $$;
create function public.byte_len(bytea) returns int
  language sql immutable as $$ select length($1) $$;
create function public.echo_jsonb(jsonb) returns jsonb
  language sql immutable as $$ select $1 $$;
create function public.two_unnamed(int, int) returns int
  language sql immutable as $$ select $1 + $2 $$;
create function public.unnamed_default(int default 7) returns int
  language sql immutable as $$ select $1 $$;
create function public.ov(a int) returns text language sql immutable as $$ select 'int' $$;
create function public.ov(a text) returns text language sql immutable as $$ select 'text' $$;
create function public.ov2(a int) returns text language sql immutable as $$ select 'one' $$;
create function public.ov2(a int, b int) returns text language sql immutable as $$ select 'two' $$;
create function public.ov_json(json) returns text language sql immutable as $$ select 'json' $$;
create function public.ov_json(a int) returns text language sql immutable as $$ select 'int' $$;
create function public.ov_default(a int, b int default 1) returns text
  language sql immutable as $$ select 'ab' $$;
create function public.ov_default(a int, c text) returns text
  language sql immutable as $$ select 'ac' $$;
create function public.typed(a int, b varchar, c timestamptz) returns text
  language sql immutable as $$ select 'typed' $$;
create function public.typed(a bigint, b boolean, c double precision) returns text
  language sql immutable as $$ select 'typed2' $$;

-- Embedding disambiguation.
create view public.messages_view as select * from public.messages;
create table public.people (id int primary key, name text, boss_id int references public.people);
insert into public.people values (1, 'ann', null), (2, 'bob', 1), (3, 'cid', 1);
create table public.pairs (
  id int primary key, a int references public.people, b int references public.people);

create function public.numbers() returns setof int
  language sql immutable as $$ select generate_series(1, 5) $$;
-- A function with a side effect, to count its executions.
create table public.calls (n serial primary key);
create function public.logged_messages() returns setof public.messages language sql volatile
  as $$ insert into public.calls default values; select * from public.messages order by id $$;

-- Response settings and custom errors.
create function public.with_headers() returns setof public.channels language plpgsql stable as $$
begin
  perform set_config('response.headers',
    '[{"Cache-Control": "public, max-age=60"}, {"X-Custom": "a"}, {"X-Custom": "b"}]', true);
  perform set_config('response.status', '202', true);
  return query select * from public.channels order by id;
end $$;
create function public.created_elsewhere() returns void language plpgsql as $$
begin
  perform set_config('response.status', '201', true);
  perform set_config('response.headers', '[{"Location": "/channels?id=eq.1"}]', true);
end $$;
create function public.bad_headers() returns int language plpgsql as $$
begin perform set_config('response.headers', '{"no": "array"}', true); return 1; end $$;
create function public.bad_status() returns int language plpgsql as $$
begin perform set_config('response.status', 'abc', true); return 1; end $$;
create function public.payment() returns void language plpgsql as $$
begin
  raise sqlstate 'PGRST' using
    message = '{"code":"123","message":"Payment Required","details":"Quota exceeded","hint":"Upgrade your plan"}',
    detail = '{"status":402,"headers":{"X-Powered-By":"Nerd Rage"}}';
end $$;
create function public.bad_raise() returns void language plpgsql as $$
begin raise sqlstate 'PGRST' using message = 'not json'; end $$;
create function public.message_trigger() returns trigger language plpgsql as $$
begin
  perform set_config('response.headers', format('[{"X-Message": "%s"}]', new.id), true);
  return new;
end $$;
create trigger message_trigger before insert on public.messages
  for each row execute function public.message_trigger();
create view public.channel_count as select count(*) as n from public.channels;

grant all on all tables in schema public to anon, authenticated, service_role;
grant all on all sequences in schema public to anon, authenticated, service_role;
"#;

struct Rest {
    app: TestApp,
    http: reqwest::Client,
}

impl Rest {
    async fn new() -> Rest {
        Rest::with(sovra_config::Config::default(), FIXTURE).await
    }

    async fn with(config: sovra_config::Config, fixture: &str) -> Rest {
        let app = TestApp::spawn_with(config).await;
        let client = app.db.client().await;
        client.batch_execute(fixture).await.unwrap();
        client
            .batch_execute("create table public.zz_ready (id int)")
            .await
            .unwrap();
        // The DDL event trigger reloads the schema cache; wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while app
            .tenant
            .rest
            .cache()
            .get()
            .and_then(|c| c.relation("public", "zz_ready").cloned())
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

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> (StatusCode, reqwest::header::HeaderMap, String) {
        let mut request = self
            .http
            .request(method, format!("{}/rest/v1{path_and_query}", self.app.url))
            .header("apikey", &self.app.anon_key);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        (status, headers, response.text().await.unwrap())
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.send(Method::GET, path, &[], None).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let (status, _, body) = self
            .send(
                Method::POST,
                path,
                &[("content-type", "application/json")],
                Some(body.to_string().into_bytes()),
            )
            .await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }
}

async fn expect_ok(rest: &Rest, cases: &[(&str, Value)]) {
    for (path, want) in cases {
        let (status, body) = rest.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(&body, want, "{path}");
    }
}

#[tokio::test]
async fn computed_relationships_embed_like_foreign_keys() {
    let rest = Rest::new().await;
    expect_ok(
        &rest,
        &[
            (
                "/channels?select=id,get_messages(id,body)&order=id&get_messages.order=id",
                json!([
                    {"id": 1, "get_messages": [{"id": 1, "body": "hello world"}, {"id": 2, "body": "help me"}]},
                    {"id": 2, "get_messages": [{"id": 3, "body": "random thought"}]},
                    {"id": 3, "get_messages": []}
                ]),
            ),
            // Inner join, filters, order and limit inside.
            (
                "/channels?select=id,get_messages!inner(id)&get_messages.likes=gt.2&order=id",
                json!([{"id": 1, "get_messages": [{"id": 1}, {"id": 2}]}]),
            ),
            (
                "/channels?select=id,get_messages(id)&id=eq.1&get_messages.order=likes.desc&get_messages.limit=1",
                json!([{"id": 1, "get_messages": [{"id": 2}]}]),
            ),
            // An alias, and nested: a computed relationship inside another.
            (
                "/channels?select=id,msgs:get_messages(id,channel:channel_of(slug))&id=eq.2",
                json!([{"id": 2, "msgs": [{"id": 3, "channel": {"slug": "random"}}]}]),
            ),
            // Returning one row (not setof): to-one.
            (
                "/messages?select=id,channel_of(slug)&order=id&limit=2",
                json!([{"id": 1, "channel_of": {"slug": "general"}}, {"id": 2, "channel_of": {"slug": "general"}}]),
            ),
            // setof with ROWS 1: to-one as well.
            (
                "/channels?select=id,latest_message(id)&order=id",
                json!([
                    {"id": 1, "latest_message": {"id": 2}},
                    {"id": 2, "latest_message": {"id": 3}},
                    {"id": 3, "latest_message": null}
                ]),
            ),
            // Through a view: the function takes the view's row.
            (
                "/channel_view?select=slug,view_messages(id)&id=eq.2",
                json!([{"slug": "random", "view_messages": [{"id": 3}]}]),
            ),
            // Spread.
            (
                "/messages?select=id,...channel_of(slug)&id=eq.3",
                json!([{"id": 3, "slug": "random"}]),
            ),
            // On a function's result.
            (
                "/rpc/all_messages?select=id,channel_of(slug)&id=eq.1",
                json!([{"id": 1, "channel_of": {"slug": "general"}}]),
            ),
            // Null filter on the embed.
            (
                "/channels?select=id,latest_message()&latest_message=is.null",
                json!([{"id": 3}]),
            ),
        ],
    )
    .await;
    // A function that does not take the origin's row is no relationship.
    let (status, body) = rest.get("/messages?select=id,get_messages(id)").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "PGRST200");
}

#[tokio::test]
async fn computed_fields_select_filter_and_order_like_columns() {
    let rest = Rest::new().await;
    expect_ok(
        &rest,
        &[
            (
                "/messages?select=id,blurb_message&blurb_message=eq.hel&order=id",
                json!([{"id": 1, "blurb_message": "hel"}, {"id": 2, "blurb_message": "hel"}]),
            ),
            (
                "/messages?select=id,short:blurb_message&order=blurb_message.desc,id",
                json!([
                    {"id": 3, "short": "ran"},
                    {"id": 1, "short": "hel"},
                    {"id": 2, "short": "hel"}
                ]),
            ),
            (
                "/messages?select=id&blurb_message=in.(ran,xyz)",
                json!([{"id": 3}]),
            ),
            (
                "/messages?select=id&or=(blurb_message.eq.ran,id.eq.1)&order=id",
                json!([{"id": 1}, {"id": 3}]),
            ),
            // Inside an embed.
            (
                "/channels?select=id,messages(id,blurb_message)&id=eq.2",
                json!([{"id": 2, "messages": [{"id": 3, "blurb_message": "ran"}]}]),
            ),
            (
                "/channels?select=id,messages!inner(id)&messages.blurb_message=eq.ran",
                json!([{"id": 2, "messages": [{"id": 3}]}]),
            ),
            // Ordering by an embedded row's computed field.
            (
                "/messages?select=id,channels(slug)&order=channels(blurb_channel).desc,id&limit=2",
                json!([
                    {"id": 3, "channels": {"slug": "random"}},
                    {"id": 1, "channels": {"slug": "general"}}
                ]),
            ),
            // On a partitioned table.
            (
                "/events?select=id,kind_upper&kind_upper=eq.CLICK",
                json!([{"id": 1, "kind_upper": "CLICK"}]),
            ),
            // On a function's result.
            (
                "/rpc/all_messages?select=id,blurb_message&blurb_message=eq.ran",
                json!([{"id": 3, "blurb_message": "ran"}]),
            ),
            // A cast and an aggregate over it.
            (
                "/messages?select=blurb_message,count()&order=blurb_message",
                json!([{"blurb_message": "hel", "count": 2}, {"blurb_message": "ran", "count": 1}]),
            ),
        ],
    )
    .await;
    // `*` is the columns only, as in PostgREST.
    let (_, body) = rest.get("/messages?id=eq.1").await;
    assert!(body[0].get("blurb_message").is_none(), "{body}");
    // Returned by writes too.
    let (status, _, text) = rest
        .send(
            Method::POST,
            "/messages?select=id,blurb_message",
            &[
                ("content-type", "application/json"),
                ("prefer", "return=representation"),
            ],
            Some(br#"{"id": 9, "channel_id": 3, "body": "wow"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!([{"id": 9, "blurb_message": "wow"}])
    );
    // Filters of updates and deletes too.
    let (status, _, text) = rest
        .send(
            Method::PATCH,
            "/messages?blurb_message=eq.wow&select=id,likes",
            &[
                ("content-type", "application/json"),
                ("prefer", "return=representation"),
            ],
            Some(br#"{"likes": 42}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!([{"id": 9, "likes": 42}])
    );
    let (status, _, text) = rest
        .send(
            Method::DELETE,
            "/messages?blurb_message=eq.wow&select=blurb_message",
            &[("prefer", "return=representation")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!([{"blurb_message": "wow"}])
    );
    // An unknown name is still PostgreSQL's 42703.
    let (status, body) = rest.get("/messages?select=id,nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "42703");
    assert_eq!(body["message"], "column messages.nope does not exist");
    let (status, body) = rest.get("/messages?nope=eq.1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "42703");
}

#[tokio::test]
async fn unnamed_parameters_take_the_raw_body() {
    let rest = Rest::new().await;
    let raw = |media: &'static str, body: &'static [u8]| (media, body);
    for (path, (media, body), want) in [
        (
            "/rpc/echo_text",
            raw("text/plain", b"hello"),
            json!("got hello"),
        ),
        (
            "/rpc/echo_xml",
            raw("text/xml", b"<a>1</a>"),
            json!("<a>1</a>"),
        ),
        (
            "/rpc/byte_len",
            raw("application/octet-stream", &[0, 255, 1, 2]),
            json!(4),
        ),
    ] {
        let (status, _, text) = rest
            .send(
                Method::POST,
                path,
                &[("content-type", media)],
                Some(body.to_vec()),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{path}: {text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            want,
            "{path}"
        );
    }
    // A single unnamed jsonb parameter takes any JSON body.
    let (status, body) = rest.post("/rpc/echo_jsonb", json!([1, {"a": 2}])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([1, {"a": 2}]));
    // An unnamed parameter with a default: called without it.
    let (status, body) = rest.post("/rpc/unnamed_default", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!(7));
    // Unnamed parameters that cannot be named: PGRST202, never an empty
    // quoted identifier in the SQL.
    for (method, path, body) in [
        (
            Method::POST,
            "/rpc/two_unnamed",
            Some(br#"{"": 1}"#.to_vec()),
        ),
        (Method::POST, "/rpc/two_unnamed", Some(b"{}".to_vec())),
        (Method::GET, "/rpc/two_unnamed?=1", None),
        (Method::GET, "/rpc/echo_text?=1", None),
    ] {
        let headers: &[(&str, &str)] = if body.is_some() {
            &[("content-type", "application/json")]
        } else {
            &[]
        };
        let (status, _, text) = rest.send(method, path, headers, body).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["code"], "PGRST202", "{path}");
    }
    // A raw body for a function without such a parameter.
    let (status, _, text) = rest
        .send(
            Method::POST,
            "/rpc/ov2",
            &[("content-type", "text/plain")],
            Some(b"x".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body,
        json!({
            "code": "PGRST202",
            "message": "Could not find the function public.ov2 in the schema cache",
            "details": "Searched for the function public.ov2 with a single unnamed text parameter, but no matches were found in the schema cache.",
            "hint": null
        })
    );
}

#[tokio::test]
async fn overloads_resolve_as_postgrest_resolves_them() {
    let rest = Rest::new().await;
    for (path, body, want) in [
        ("/rpc/ov2", json!({"a": 1}), "one"),
        ("/rpc/ov2", json!({"a": 1, "b": 2}), "two"),
        ("/rpc/ov_json", json!({"a": 1}), "int"),
        ("/rpc/ov_json", json!({"x": 1}), "json"),
        ("/rpc/ov_default", json!({"a": 1}), "ab"),
        ("/rpc/ov_default", json!({"a": 1, "b": 2}), "ab"),
        ("/rpc/ov_default", json!({"a": 1, "c": "x"}), "ac"),
    ] {
        let (status, got) = rest.post(path, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{path} {body}: {got}");
        assert_eq!(got, json!(want), "{path} {body}");
    }
    let (status, got) = rest.get("/rpc/ov2?a=1&b=2").await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got, json!("two"));
}

#[tokio::test]
async fn function_errors_name_types_and_candidates_as_postgrest() {
    let rest = Rest::new().await;
    let (status, body) = rest.post("/rpc/ov", json!({"a": 1})).await;
    assert_eq!(status, StatusCode::MULTIPLE_CHOICES, "{body}");
    assert_eq!(
        body,
        json!({
            "code": "PGRST203",
            "message": "Could not choose the best candidate function between: public.ov(a => integer), public.ov(a => text)",
            "details": null,
            "hint": "Try renaming the parameters or the function itself in the database so function overloading can be resolved"
        })
    );
    let (status, body) = rest
        .post("/rpc/typed", json!({"a": 1, "b": "x", "c": "now"}))
        .await;
    assert_eq!(status, StatusCode::MULTIPLE_CHOICES, "{body}");
    assert_eq!(
        body["message"],
        "Could not choose the best candidate function between: public.typed(a => bigint, b => boolean, c => double precision), public.typed(a => integer, b => character varying, c => timestamp with time zone)"
    );
    // Names that fit no overload: the closest parameter list as the hint.
    let (status, body) = rest.post("/rpc/ov2", json!({"a": 1, "bb": 2})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body,
        json!({
            "code": "PGRST202",
            "message": "Could not find the function public.ov2(a, bb) in the schema cache",
            "details": "Searched for the function public.ov2 with parameters a, bb or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache.",
            "hint": "Perhaps you meant to call the function public.ov2(a, b)"
        })
    );
    // An unknown function: the closest name in the schema.
    let (status, body) = rest.get("/rpc/echo_txt").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(
        body["message"],
        "Could not find the function public.echo_txt without parameters in the schema cache"
    );
    assert_eq!(
        body["hint"],
        "Perhaps you meant to call the function public.echo_text"
    );
}

#[tokio::test]
async fn embedding_disambiguates_as_postgrest() {
    let rest = Rest::new().await;
    expect_ok(
        &rest,
        &[
            // The view of `messages` exposes the same foreign key: by the
            // constraint's name (or the key column) the table is meant.
            (
                "/channels?select=id,messages_channel_id_fkey(id)&id=eq.2",
                json!([{"id": 2, "messages_channel_id_fkey": [{"id": 3}]}]),
            ),
            (
                "/messages?select=id,channel_id(slug)&id=eq.3",
                json!([{"id": 3, "channel_id": {"slug": "random"}}]),
            ),
            // By its own name, the view embeds.
            (
                "/channels?select=id,messages_view(id)&id=eq.2",
                json!([{"id": 2, "messages_view": [{"id": 3}]}]),
            ),
            // Self-reference: the key column is the parent, the table's
            // name the children, and a hint by column picks the children.
            (
                "/people?select=name,boss_id(name)&id=eq.2",
                json!([{"name": "bob", "boss_id": {"name": "ann"}}]),
            ),
            (
                "/people?select=name,boss:boss_id(name)&id=eq.2",
                json!([{"name": "bob", "boss": {"name": "ann"}}]),
            ),
            (
                "/people?select=name,people(name)&id=eq.1&people.order=id",
                json!([{"name": "ann", "people": [{"name": "bob"}, {"name": "cid"}]}]),
            ),
            (
                "/people?select=name,reports:people!boss_id(name)&id=eq.1&reports.order=id",
                json!([{"name": "ann", "reports": [{"name": "bob"}, {"name": "cid"}]}]),
            ),
            ("/pairs?select=id,first:people!a(name)", json!([])),
        ],
    )
    .await;
    // A hint naming no constraint or column: 400, not 300.
    let (status, body) = rest.get("/channels?select=id,messages!nope(id)").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body,
        json!({
            "code": "PGRST200",
            "message": "Could not find a relationship between 'channels' and 'messages' in the schema cache",
            "details": "Searched for a foreign key relationship between 'channels' and 'messages' using the hint 'nope' in the schema 'public', but no matches were found.",
            "hint": null
        })
    );
    // A near miss gets PostgREST's suggestion.
    let (status, body) = rest.get("/channels?select=id,message(id)").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        body["hint"],
        "Perhaps you meant 'messages' instead of 'message'."
    );
    let (status, body) = rest.get("/people?select=name,people!nope(name)").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "PGRST200");
    // Two keys to the same table stay ambiguous, with PostgREST's hint.
    let (status, body) = rest.get("/people?select=name,pairs(id)").await;
    assert_eq!(status, StatusCode::MULTIPLE_CHOICES, "{body}");
    assert_eq!(body["code"], "PGRST201");
    assert_eq!(
        body["hint"],
        "Try changing 'pairs' to one of the following: 'pairs!pairs_a_fkey', 'pairs!pairs_b_fkey'. Find the desired relationship in the 'details' key."
    );
    assert_eq!(
        body["details"][0],
        json!({"cardinality": "one-to-many", "embedding": "people with pairs", "relationship": "pairs_a_fkey using people(id) and pairs(a)"})
    );
}

#[tokio::test]
async fn merging_upserts_answer_200_when_nothing_was_inserted() {
    let rest = Rest::new().await;
    let upsert = |resolution: &'static str, body: Value| {
        let rest = &rest;
        async move {
            let prefer = format!("resolution={resolution},return=representation");
            let (status, _, text) = rest
                .send(
                    Method::POST,
                    "/channels",
                    &[("content-type", "application/json"), ("prefer", &prefer)],
                    Some(body.to_string().into_bytes()),
                )
                .await;
            (
                status,
                serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            )
        }
    };
    // Only updated: 200.
    let (status, body) = upsert("merge-duplicates", json!({"id": 1, "slug": "general2"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([{"id": 1, "slug": "general2"}]));
    // Inserted: 201; one of several inserted: 201.
    let (status, body) = upsert("merge-duplicates", json!({"id": 10, "slug": "new"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = upsert(
        "merge-duplicates",
        json!([{"id": 10, "slug": "new2"}, {"id": 11, "slug": "newer"}]),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // Duplicates ignored keep the insert's 201 (PostgREST changed the
    // status of merging upserts only).
    let (status, body) = upsert("ignore-duplicates", json!({"id": 11, "slug": "again"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body, json!([]));
    // A plain insert stays 201.
    let (status, _, text) = rest
        .send(
            Method::POST,
            "/channels",
            &[("content-type", "application/json")],
            Some(br#"{"id": 12, "slug": "plain"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    // PUT: 201 when it creates the row, 200 when it replaces it.
    for want in [StatusCode::CREATED, StatusCode::OK] {
        let (status, _, text) = rest
            .send(
                Method::PUT,
                "/channels?id=eq.20",
                &[
                    ("content-type", "application/json"),
                    ("prefer", "return=representation"),
                ],
                Some(br#"{"id": 20, "slug": "put"}"#.to_vec()),
            )
            .await;
        assert_eq!(status, want, "{text}");
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!([{"id": 20, "slug": "put"}])
        );
    }
}

#[tokio::test]
async fn rpc_counts_come_from_the_one_execution() {
    let rest = Rest::new().await;
    let (status, headers, text) = rest
        .send(
            Method::POST,
            "/rpc/logged_messages?select=id&limit=1",
            &[
                ("content-type", "application/json"),
                ("prefer", "count=exact"),
            ],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{text}");
    assert_eq!(headers["content-range"], "0-0/3");
    assert_eq!(headers["preference-applied"], "count=exact");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!([{"id": 1}])
    );
    // The function ran once for the page and the count.
    let client = rest.app.db.client().await;
    let calls: i64 = client
        .query_one("select count(*) from public.calls", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(calls, 1);
    // HEAD (supabase-js `head: true`) and a filter.
    let (status, headers, text) = rest
        .send(
            Method::HEAD,
            "/rpc/all_messages?channel_id=eq.1",
            &[("prefer", "count=exact")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-range"], "0-1/2");
    assert!(text.is_empty());
    // Scalar results are a page of one.
    let (status, headers, text) = rest
        .send(
            Method::GET,
            "/rpc/ov2?a=1",
            &[("prefer", "count=exact")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-range"], "0-0/1");
    let (_, headers, _) = rest.send(Method::GET, "/rpc/ov2?a=1", &[], None).await;
    assert_eq!(headers["content-range"], "0-0/*");
    // A set of scalars pages and counts too.
    let (status, headers, text) = rest
        .send(
            Method::GET,
            "/rpc/numbers?limit=2&offset=1",
            &[("prefer", "count=exact")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{text}");
    assert_eq!(headers["content-range"], "1-2/5");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!([2, 3]));
    let (status, headers, text) = rest
        .send(Method::GET, "/rpc/numbers", &[("range", "0-1")], None)
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(headers["content-range"], "0-1/*");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), json!([1, 2]));
    // Planned and estimated counts answer too.
    for count in ["planned", "estimated"] {
        let prefer = format!("count={count}");
        let (status, headers, text) = rest
            .send(
                Method::GET,
                "/rpc/all_messages?select=id",
                &[("prefer", &prefer)],
                None,
            )
            .await;
        assert!(status.is_success(), "{count}: {text}");
        let range = headers["content-range"].to_str().unwrap();
        assert!(range.starts_with("0-2/"), "{count}: {range}");
        assert!(range[4..].parse::<i64>().is_ok(), "{count}: {range}");
    }
}

#[tokio::test]
async fn aggregates_beside_embeds_and_in_spreads() {
    let rest = Rest::new().await;
    let sorted = |mut rows: Value, key: &str| {
        rows.as_array_mut()
            .unwrap()
            .sort_by_key(|row| row.pointer(key).map(ToString::to_string));
        rows
    };
    let (status, body) = rest
        .get("/messages?select=likes.sum(),channels(slug)")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        sorted(body, "/channels/slug"),
        json!([{"sum": 8, "channels": {"slug": "general"}}, {"sum": 1, "channels": {"slug": "random"}}])
    );
    let (status, body) = rest
        .get("/messages?select=...channels(slug),likes.sum(),count()")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        sorted(body, "/slug"),
        json!([{"slug": "general", "sum": 8, "count": 2}, {"slug": "random", "sum": 1, "count": 1}])
    );
    expect_ok(
        &rest,
        &[
            // Aggregates in a spread are hoisted into the parent.
            (
                "/channels?select=slug,...messages(likes.sum(),likes.max(),count())&slug=in.(general,random)&order=slug",
                json!([
                    {"slug": "general", "sum": 8, "max": 5, "count": 2},
                    {"slug": "random", "sum": 1, "max": 1, "count": 1}
                ]),
            ),
            (
                "/channels?select=...messages(total:likes.sum(),average:likes.avg()::int)",
                json!([{"total": 9, "average": 3}]),
            ),
            // Aggregates beside a to-many embed.
            (
                "/channels?select=count(),messages(id)&id=eq.2",
                json!([{"count": 1, "messages": [{"id": 3}]}]),
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn response_settings_and_custom_errors_shape_the_response() {
    let rest = Rest::new().await;
    let (status, headers, text) = rest
        .send(
            Method::GET,
            "/rpc/with_headers?select=id&id=eq.1",
            &[],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{text}");
    assert_eq!(headers["cache-control"], "public, max-age=60");
    let custom: Vec<_> = headers
        .get_all("x-custom")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(custom, ["a", "b"]);
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!([{"id": 1}])
    );
    let (status, headers, text) = rest
        .send(
            Method::POST,
            "/rpc/created_elsewhere",
            &[("content-type", "application/json")],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(headers["location"], "/channels?id=eq.1");
    // Set by a (BEFORE) trigger during an insert.
    let (status, headers, text) = rest
        .send(
            Method::POST,
            "/messages",
            &[("content-type", "application/json")],
            Some(br#"{"id": 30, "channel_id": 1, "body": "x"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(headers["x-message"], "30");
    // Invalid settings are PostgREST's 500s.
    for (path, code) in [
        ("/rpc/bad_headers", "PGRST111"),
        ("/rpc/bad_status", "PGRST112"),
    ] {
        let (status, body) = rest.post(path, json!({})).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {body}");
        assert_eq!(body["code"], code, "{path}");
    }
    // RAISE SQLSTATE 'PGRST': the body, status and headers it names.
    let (status, headers, text) = rest
        .send(
            Method::POST,
            "/rpc/payment",
            &[("content-type", "application/json")],
            Some(b"{}".to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{text}");
    assert_eq!(headers["x-powered-by"], "Nerd Rage");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"code": "123", "message": "Payment Required", "details": "Quota exceeded", "hint": "Upgrade your plan"})
    );
    let (status, body) = rest.post("/rpc/bad_raise", json!({})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["code"], "PGRST121");
    assert_eq!(
        body["message"],
        "Could not parse JSON in the RAISE SQLSTATE 'PGRST' error"
    );
    assert_eq!(
        body["details"],
        "Invalid JSON value for MESSAGE: 'not json'"
    );
}

#[tokio::test]
async fn options_lists_what_the_resource_allows() {
    let rest = Rest::new().await;
    for (path, allow) in [
        ("/channels", "OPTIONS,GET,HEAD,POST,PUT,PATCH,DELETE"),
        ("/channel_view", "OPTIONS,GET,HEAD,POST,PATCH,DELETE"),
        ("/channel_count", "OPTIONS,GET,HEAD"),
        ("/rpc/ov2", "OPTIONS,GET,HEAD,POST"),
        ("/rpc/logged_messages", "OPTIONS,POST"),
    ] {
        let (status, headers, text) = rest.send(Method::OPTIONS, path, &[], None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {text}");
        assert_eq!(headers["allow"], allow, "{path}");
        assert!(text.is_empty(), "{path}");
    }
    let (status, _, text) = rest.send(Method::OPTIONS, "/nope", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert!(text.contains("PGRST205"), "{text}");
    let (status, _, text) = rest.send(Method::OPTIONS, "/rpc/nope", &[], None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert!(text.contains("PGRST202"), "{text}");
}

#[tokio::test]
async fn oversize_bodies_are_refused_in_postgrest_shape() {
    let mut config = sovra_config::Config::default();
    config.server.body_limit = 1024;
    let rest = Rest::with(config, FIXTURE).await;
    let big = format!(r#"{{"id": 1, "slug": "{}"}}"#, "x".repeat(4096));
    let (status, headers, text) = rest
        .send(
            Method::POST,
            "/channels",
            &[("content-type", "application/json")],
            Some(big.into_bytes()),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    assert_eq!(headers["content-type"], "application/json; charset=utf-8");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["code"], "PGRST413");
    assert_eq!(body["message"], "Payload Too Large");
    assert!(
        body.get("details").is_some() && body.get("hint").is_some(),
        "{body}"
    );
    // Within the limit, the same request is served.
    let (status, _, text) = rest
        .send(
            Method::POST,
            "/channels",
            &[("content-type", "application/json")],
            Some(br#"{"id": 50, "slug": "ok"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
}

#[tokio::test]
async fn plans_answer_only_when_enabled() {
    let rest = Rest::new().await;
    let plan_json = [("accept", "application/vnd.pgrst.plan+json")];
    // Off by default: the media type is not available.
    let (status, _, text) = rest
        .send(Method::GET, "/channels?id=eq.1", &plan_json, None)
        .await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["code"], "PGRST107");
    // Turned on in the database, as PostgREST's in-database configuration.
    let client = rest.app.db.client().await;
    client
        .batch_execute("alter role authenticator set pgrst.db_plan_enabled = true")
        .await
        .unwrap();
    let (status, headers, text) = rest
        .send(Method::GET, "/channels?id=eq.1", &plan_json, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        headers["content-type"],
        "application/vnd.pgrst.plan+json; for=\"application/json\"; charset=utf-8"
    );
    let plan: Value = serde_json::from_str(&text).unwrap();
    assert!(plan[0]["Plan"]["Node Type"].is_string(), "{plan}");
    client
        .batch_execute("alter role authenticator reset pgrst.db_plan_enabled")
        .await
        .unwrap();

    // Enabled by configuration: text, analyze of a write that is rolled back.
    let mut config = sovra_config::Config::default();
    config.rest.plan_enabled = true;
    let rest = Rest::with(config, FIXTURE).await;
    let (status, headers, text) = rest
        .send(
            Method::GET,
            "/channels?select=id,get_messages(id)",
            &[("accept", "application/vnd.pgrst.plan")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/vnd.pgrst.plan+text")
    );
    assert!(text.contains("cost="), "{text}");
    let (status, _, text) = rest
        .send(
            Method::POST,
            "/channels",
            &[
                ("content-type", "application/json"),
                (
                    "accept",
                    "application/vnd.pgrst.plan+json; options=analyze|buffers",
                ),
            ],
            Some(br#"{"id": 77, "slug": "explained"}"#.to_vec()),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let plan: Value = serde_json::from_str(&text).unwrap();
    assert!(plan[0]["Execution Time"].is_number(), "{plan}");
    let (_, body) = rest.get("/channels?id=eq.77").await;
    assert_eq!(body, json!([]), "the analyzed insert was rolled back");
    // The plan of the CSV statement.
    let (status, headers, text) = rest
        .send(
            Method::GET,
            "/channels",
            &[(
                "accept",
                "application/vnd.pgrst.plan+json; for=\"text/csv\"",
            )],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        headers["content-type"],
        "application/vnd.pgrst.plan+json; for=\"text/csv\"; charset=utf-8"
    );
    // On /rpc too.
    let (status, _, text) = rest
        .send(
            Method::GET,
            "/rpc/all_messages",
            &[("accept", "application/vnd.pgrst.plan+json")],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
}

#[tokio::test]
async fn openapi_follows_the_callers_privileges_when_configured() {
    let fixture = format!(
        "{FIXTURE}
        create table public.secret_stuff (id int primary key);
        revoke all on public.secret_stuff from anon;
        create table public.read_only (id int primary key);
        revoke all on public.read_only from anon;
        grant select on public.read_only to anon;
        create function public.hidden_fn() returns int language sql as $$ select 1 $$;
        revoke execute on function public.hidden_fn() from public, anon;"
    );
    let mut config = sovra_config::Config::default();
    config.rest.openapi_mode = "follow-privileges".to_owned();
    let rest = Rest::with(config, &fixture).await;
    let (status, body) = rest.get("/").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let paths = body["paths"].as_object().unwrap();
    assert!(paths.contains_key("/channels"), "{body}");
    assert!(
        !paths.contains_key("/secret_stuff"),
        "anon may not touch it"
    );
    assert!(paths.contains_key("/read_only"));
    assert!(paths["/read_only"].get("get").is_some());
    assert!(paths["/read_only"].get("post").is_none(), "no insert grant");
    assert!(paths.contains_key("/rpc/ov2"));
    assert!(!paths.contains_key("/rpc/hidden_fn"));
    // The service role sees everything it may use.
    let service = rest.app.service_role_key.clone();
    let (status, _, text) = rest
        .send(
            Method::GET,
            "/",
            &[("authorization", &format!("Bearer {service}"))],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert!(body["paths"].get("/secret_stuff").is_some());

    // Disabled: 404 for everyone.
    let mut config = sovra_config::Config::default();
    config.rest.openapi_mode = "disabled".to_owned();
    let rest = Rest::with(config, FIXTURE).await;
    let service = rest.app.service_role_key.clone();
    let (status, _, text) = rest
        .send(
            Method::GET,
            "/",
            &[("authorization", &format!("Bearer {service}"))],
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert!(text.contains("PGRST126"));
}

#[tokio::test]
async fn geojson_is_a_feature_collection_with_postgis() {
    let rest = Rest::new().await;
    let geo = [("accept", "application/geo+json")];
    // Without PostGIS the media type is not available.
    let (status, _, text) = rest.send(Method::GET, "/channels", &geo, None).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE, "{text}");
    assert!(text.contains("PGRST107"), "{text}");
    let client = rest.app.db.client().await;
    client
        .batch_execute(
            "create extension postgis;
             create table public.places (id int primary key, name text, geom geometry(Point, 4326));
             insert into public.places values
               (1, 'home', 'SRID=4326;POINT(1 2)'), (2, 'work', 'SRID=4326;POINT(3 4)');
             grant all on public.places to anon;",
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while rest
        .app
        .tenant
        .rest
        .cache()
        .get()
        .and_then(|c| c.relation("public", "places").cloned())
        .is_none()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "schema cache never reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, headers, text) = rest
        .send(
            Method::GET,
            "/places?select=id,name,geom&order=id",
            &geo,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        headers["content-type"],
        "application/geo+json; charset=utf-8"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({
            "type": "FeatureCollection",
            "features": [
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}, "properties": {"id": 1, "name": "home"}},
                {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 4]}, "properties": {"id": 2, "name": "work"}}
            ]
        })
    );
    // Functions returning rows too; a scalar function has no features.
    client
        .batch_execute(
            "create function public.all_places() returns setof public.places
               language sql stable as $$ select * from public.places $$;",
        )
        .await
        .unwrap();
    while rest
        .app
        .tenant
        .rest
        .cache()
        .get()
        .is_none_or(|c| !c.routines.iter().any(|r| r.name == "all_places"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "schema cache never reloaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, _, text) = rest
        .send(
            Method::GET,
            "/rpc/all_places?select=name,geom&id=eq.2",
            &geo,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap()["features"],
        json!([{"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 4]}, "properties": {"name": "work"}}])
    );
    let (status, _, text) = rest.send(Method::GET, "/rpc/ov2?a=1", &geo, None).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE, "{text}");
    // Filters apply; an empty result is an empty collection.
    let (status, _, text) = rest
        .send(Method::GET, "/places?name=eq.none", &geo, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        json!({"type": "FeatureCollection", "features": []})
    );
}
