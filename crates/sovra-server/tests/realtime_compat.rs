//! `/realtime/v1` compatibility with Supabase Realtime (#16 items 17 and
//! 18): legacy topic-encoded joins, broadcast replay on private channels,
//! `realtime.send_binary()`, the `select` column list of a binding, the
//! pattern filters (`like ilike match imatch isdistinct`), column
//! privileges in `record`/`old_record`, and the opt-in `replication_ready`
//! message. Through the real router on a real database, with the exact
//! messages realtime-js sends.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};
use sovra_test_support::TestApp;
use support::realtime_client::{Client, Got, change_app, feed_ready, pg_join, user};

const FIXTURE: &str = "
  create table public.items (
    id bigint generated always as identity primary key,
    name text,
    qty int,
    note text,
    secret text
  );
  alter table public.items replica identity full;
  grant select on public.items to authenticated, anon;
  create table public.cols (
    id bigint generated always as identity primary key,
    public_part text,
    secret text
  );
  alter table public.cols replica identity full;
  revoke all on public.cols from anon, authenticated;
  grant select (id, public_part) on public.cols to authenticated, anon;
  alter publication supabase_realtime add table public.items, public.cols;
  create policy read_rooms on realtime.messages for select to authenticated
    using (realtime.topic() in ('room-r', 'room-many'));
  create policy presence_only on realtime.messages for select to authenticated
    using (realtime.topic() = 'room-p' and extension = 'presence');
";

async fn sql(app: &TestApp, text: &str) {
    app.db.client().await.batch_execute(text).await.unwrap();
}

/// Runs each statement in its own transaction (messages stored by them
/// get distinct `inserted_at`).
async fn each(app: &TestApp, statements: &[String]) {
    let client = app.db.client().await;
    for statement in statements {
        client.batch_execute(statement).await.unwrap();
    }
}

fn send(n: i64, topic: &str, private: bool) -> String {
    format!("select realtime.send('{{\"n\": {n}}}', 'ev', '{topic}', {private})")
}

/// The next message (any event), within 20 s.
async fn next(client: &mut Client) -> (String, Value) {
    match client.next_frame(Duration::from_secs(20)).await {
        Some(Got::Msg { event, payload, .. }) => (event, payload),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The `postgres_changes` messages until the one whose record is named
/// `last` (included), as (record name, binding ids).
async fn until_named(client: &mut Client, last: &str) -> Vec<(String, BTreeSet<i64>)> {
    let mut out = Vec::new();
    loop {
        let (_, payload, _) = client.expect("postgres_changes").await;
        let name = payload["data"]["record"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        let ids = payload["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| id.as_i64().unwrap())
            .collect();
        let done = name == last;
        out.push((name, ids));
        if done {
            return out;
        }
    }
}

#[tokio::test]
async fn pattern_and_distinct_filters_select_rows_as_postgresql_would() {
    let app = change_app(FIXTURE).await;
    let (_, token) = user(&app);
    let filters = [
        "",
        "name=like.Al%",
        "name=ilike.al%",
        "name=match.^[A-Z][a-z]+$",
        "name=imatch.^BOB",
        "note=isdistinct.x",
        "name=not.like.%e",
        "qty=not.isdistinct.3",
        "note=isdistinct.null",
    ];
    let bindings: Vec<Value> = filters
        .iter()
        .map(|f| json!({"event": "INSERT", "schema": "public", "table": "items", "filter": f}))
        .collect();
    let mut c = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let ids = pg_join(&mut c, "realtime:items", json!(bindings), &token).await;
    feed_ready(&app).await;
    sql(
        &app,
        "insert into items (name, qty, note) values ('Alice', 1, 'x');
         insert into items (name, qty, note) values ('alfred', 3, null);
         insert into items (name, qty, note) values ('Bob', 2, 'y');
         insert into items (name, qty, note) values ('end', 0, null);",
    )
    .await;
    let got = until_named(&mut c, "end").await;
    let by_index =
        |indexes: &[usize]| -> BTreeSet<i64> { indexes.iter().map(|i| ids[*i]).collect() };
    assert_eq!(
        got,
        vec![
            ("Alice".to_owned(), by_index(&[0, 1, 2, 3, 8])),
            ("alfred".to_owned(), by_index(&[0, 2, 5, 6, 7])),
            ("Bob".to_owned(), by_index(&[0, 3, 4, 5, 6, 8])),
            ("end".to_owned(), by_index(&[0, 5, 6])),
        ]
    );

    // Refusals: an expression that is not a regular expression, an
    // unknown operator. The join succeeds; the error comes as `system`.
    for (filter, message) in [
        (
            "name=match.(unclosed",
            "Error parsing `filter` params: invalid regular expression for match",
        ),
        (
            "name=imatch.[a-",
            "Error parsing `filter` params: invalid regular expression for imatch",
        ),
        (
            "name=contains.x",
            "Error parsing `filter` params: unsupported operator \"contains\"",
        ),
    ] {
        let mut bad = Client::connect(&app, &app.anon_key, "1.0.0").await;
        let binding =
            json!([{"event": "*", "schema": "public", "table": "items", "filter": filter}]);
        let reply = bad
            .join(
                "realtime:bad",
                json!({"postgres_changes": binding}),
                Some(&token),
            )
            .await;
        assert_eq!(reply["status"], "ok", "{reply}");
        let (_, system, _) = bad.expect("system").await;
        assert_eq!(system["status"], "error", "{system}");
        assert!(
            system["message"].as_str().unwrap().starts_with(message),
            "{system}"
        );
    }
}

#[tokio::test]
async fn the_select_list_of_a_binding_is_all_its_changes_carry() {
    let app = change_app(FIXTURE).await;
    let (_, token) = user(&app);
    // As text and as a list; a second channel without select gets all.
    let mut text = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let binding =
        json!([{"event": "*", "schema": "public", "table": "items", "select": "id, name"}]);
    pg_join(&mut text, "realtime:sel", binding, &token).await;
    let mut list = Client::connect(&app, &app.anon_key, "1.0.0").await;
    let binding = json!([{"event": "*", "schema": "public", "table": "items", "select": ["qty"]}]);
    pg_join(&mut list, "realtime:sel", binding, &token).await;
    let mut all = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let binding = json!([{"event": "*", "schema": "public", "table": "items"}]);
    pg_join(&mut all, "realtime:sel", binding, &token).await;
    feed_ready(&app).await;
    sql(
        &app,
        "insert into items (name, qty, note, secret) values ('a', 1, 'n', 's');
         update items set qty = 2, note = 'm' where name = 'a';",
    )
    .await;
    let keys = |v: &Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, insert, _) = text.expect("postgres_changes").await;
    assert_eq!(keys(&insert["data"]["record"]), ["id", "name"]);
    assert_eq!(names(&insert["data"]["columns"]), ["id", "name"]);
    assert_eq!(insert["data"]["record"]["name"], "a");
    let (_, update, _) = text.expect("postgres_changes").await;
    assert_eq!(update["data"]["type"], "UPDATE");
    assert_eq!(keys(&update["data"]["record"]), ["id", "name"]);
    assert_eq!(keys(&update["data"]["old_record"]), ["id", "name"]);

    let (_, insert, _) = list.expect("postgres_changes").await;
    assert_eq!(insert["data"]["record"], json!({"qty": 1}));
    let (_, update, _) = list.expect("postgres_changes").await;
    assert_eq!(update["data"]["record"], json!({"qty": 2}));
    assert_eq!(update["data"]["old_record"], json!({"qty": 1}));

    let (_, insert, _) = all.expect("postgres_changes").await;
    assert_eq!(
        keys(&insert["data"]["record"]),
        ["id", "name", "note", "qty", "secret"]
    );

    // Refusals: an empty name, a star, a value that is no list.
    for (select, message) in [
        (
            json!(""),
            "Error parsing `select` params: select names an empty column",
        ),
        (
            json!("id,,name"),
            "Error parsing `select` params: select names an empty column",
        ),
        (
            json!("*"),
            "Error parsing `select` params: select takes column names",
        ),
        (
            json!(7),
            "Error parsing `select` params: select must be a text",
        ),
        (
            json!([1]),
            "Error parsing `select` params: select must list column names",
        ),
    ] {
        let mut bad = Client::connect(&app, &app.anon_key, "2.0.0").await;
        let binding =
            json!([{"event": "*", "schema": "public", "table": "items", "select": select}]);
        let reply = bad
            .join(
                "realtime:bad",
                json!({"postgres_changes": binding}),
                Some(&token),
            )
            .await;
        assert_eq!(reply["status"], "ok", "{reply}");
        let (_, system, _) = bad.expect("system").await;
        assert_eq!(system["status"], "error", "{system}");
        assert!(
            system["message"].as_str().unwrap().starts_with(message),
            "{select}: {system}"
        );
    }
}

#[tokio::test]
async fn a_column_without_select_privilege_is_absent_from_record_and_old_record() {
    let app = change_app(FIXTURE).await;
    let (_, token) = user(&app);
    let mut c = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let binding = json!([{"event": "*", "schema": "public", "table": "cols"}]);
    pg_join(&mut c, "realtime:cols", binding, &token).await;
    feed_ready(&app).await;
    sql(
        &app,
        "insert into cols (public_part, secret) values ('hello', 'hush');
         update cols set public_part = 'bye', secret = 'quiet';
         delete from cols;",
    )
    .await;
    for kind in ["INSERT", "UPDATE", "DELETE"] {
        let (_, change, _) = c.expect("postgres_changes").await;
        let data = &change["data"];
        assert_eq!(data["type"], kind, "{data}");
        for part in ["record", "old_record"] {
            if let Some(row) = data.get(part) {
                assert!(row.get("secret").is_none(), "{kind} {part}: {data}");
            }
        }
        assert!(
            !data["columns"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "secret"),
            "{data}"
        );
    }
    // What may be read is there: the table has no RLS and REPLICA
    // IDENTITY FULL, so old_record is whole but for the hidden column.
    sql(
        &app,
        "insert into cols (public_part, secret) values ('one', 's1');
         update cols set public_part = 'two';",
    )
    .await;
    let (_, insert, _) = c.expect("postgres_changes").await;
    assert_eq!(insert["data"]["record"]["public_part"], "one");
    let (_, update, _) = c.expect("postgres_changes").await;
    assert_eq!(update["data"]["record"]["public_part"], "two");
    assert_eq!(update["data"]["old_record"]["public_part"], "one");
    assert!(update["data"]["old_record"].get("secret").is_none());
}

#[tokio::test]
async fn legacy_topic_joins_get_changes_with_their_type_as_the_event() {
    let app = change_app(FIXTURE).await;
    // realtime-js v1: `realtime:schema:table:filter`, no config.
    for vsn in ["1.0.0", "2.0.0"] {
        let mut c = Client::connect(&app, &app.anon_key, vsn).await;
        let reply = c
            .join_legacy("realtime:public:items:qty=eq.5", &app.anon_key)
            .await;
        assert_eq!(reply["status"], "ok", "{reply}");
        let echoed = &reply["response"]["postgres_changes"][0];
        assert_eq!(echoed["schema"], "public");
        assert_eq!(echoed["table"], "items");
        assert_eq!(echoed["filter"], "qty=eq.5");
        assert!(echoed["id"].is_i64(), "{reply}");
        let (_, system, _) = c.expect("system").await;
        assert_eq!(system["status"], "ok", "{system}");
        assert_eq!(system["message"], "Subscribed to PostgreSQL");
        // The whole schema, and one table without a filter.
        let mut schema = Client::connect(&app, &app.anon_key, vsn).await;
        let reply = schema.join_legacy("realtime:public", &app.anon_key).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        schema.expect("system").await;
        feed_ready(&app).await;
        sql(
            &app,
            &format!(
                "insert into items (name, qty) values ('six-{vsn}', 6);
                 insert into items (name, qty) values ('five-{vsn}', 5);
                 update items set note = 'n' where name = 'five-{vsn}';
                 insert into cols (public_part) values ('x-{vsn}');"
            ),
        )
        .await;
        // qty=6 does not pass the filter: the first change is qty=5's.
        let (event, payload) = next(&mut c).await;
        assert_eq!(event, "INSERT", "{payload}");
        assert_eq!(payload["type"], "INSERT");
        assert_eq!(payload["schema"], "public");
        assert_eq!(payload["table"], "items");
        assert_eq!(payload["record"]["name"], format!("five-{vsn}"));
        assert!(payload.get("ids").is_none() && payload.get("data").is_none());
        let (event, payload) = next(&mut c).await;
        assert_eq!(event, "UPDATE", "{payload}");
        assert_eq!(payload["record"]["note"], "n");
        assert_eq!(payload["old_record"]["note"], Value::Null);
        // The schema subscriber gets every table's changes.
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (event, payload) = next(&mut schema).await;
            seen.push((event, payload["table"].as_str().unwrap().to_owned()));
        }
        assert_eq!(
            seen,
            [
                ("INSERT".to_owned(), "items".to_owned()),
                ("INSERT".to_owned(), "items".to_owned()),
                ("UPDATE".to_owned(), "items".to_owned()),
                ("INSERT".to_owned(), "cols".to_owned()),
            ]
        );
    }
    // Refusal: a filter in the topic that cannot be read.
    let mut bad = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = bad
        .join_legacy("realtime:public:items:qty=zz.5", &app.anon_key)
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let (_, system, _) = bad.expect("system").await;
    assert_eq!(system["status"], "error", "{system}");
    assert_eq!(
        system["message"],
        "Error parsing `filter` params: unsupported operator \"zz\""
    );
    // A join with a config (even an empty one) is not legacy.
    let mut modern = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = modern.join("realtime:public:items", json!({}), None).await;
    assert_eq!(reply["response"]["postgres_changes"], json!([]));
    modern.silent("system", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn replication_ready_is_sent_to_joins_that_ask_for_it() {
    let app = change_app(FIXTURE).await;
    let (_, token) = user(&app);
    // The first join starts the feed; its message comes once it runs.
    for vsn in ["2.0.0", "1.0.0"] {
        let mut c = Client::connect(&app, &app.anon_key, vsn).await;
        let reply = c
            .join(
                "realtime:ready",
                json!({"broadcast": {"replication_ready": true}}),
                Some(&token),
            )
            .await;
        assert_eq!(reply["status"], "ok", "{reply}");
        let (topic, system, _) = c.expect("system").await;
        assert_eq!(topic, "realtime:ready");
        assert_eq!(
            system,
            json!({"extension": "system", "status": "ok", "message": "Replication connection established", "channel": "ready"})
        );
    }
    // Supabase's flexible boolean: the text "true" opts in too.
    let mut text = Client::connect(&app, &app.anon_key, "2.0.0").await;
    text.join(
        "realtime:ready",
        json!({"broadcast": {"replication_ready": "true"}}),
        Some(&token),
    )
    .await;
    assert_eq!(
        text.expect("system").await.1["message"],
        "Replication connection established"
    );
    // Without the opt-in (or with false), nothing is sent.
    for config in [
        json!({}),
        json!({"broadcast": {"replication_ready": false}}),
    ] {
        let mut quiet = Client::connect(&app, &app.anon_key, "2.0.0").await;
        let reply = quiet.join("realtime:ready", config, Some(&token)).await;
        assert_eq!(reply["status"], "ok", "{reply}");
        quiet.silent("system", Duration::from_millis(300)).await;
    }
}

/// Milliseconds since the Unix epoch, by the database's clock.
async fn db_now_ms(app: &TestApp) -> i64 {
    app.db
        .client()
        .await
        .query_one(
            "select (extract(epoch from clock_timestamp()) * 1000)::bigint + 1",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn private_channels_replay_stored_broadcasts_from_sql() {
    let app = change_app(FIXTURE).await;
    let (_, token) = user(&app);
    // Stored before any channel joined (the change feed starts with the
    // first join, so none of these is also delivered live).
    each(&app, &[send(0, "room-r", true)]).await;
    // `since` is a moment strictly between n=0 and n=1 (the pauses only
    // order the database's clock readings).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = db_now_ms(&app).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    each(
        &app,
        &[
            send(1, "room-r", true),
            send(2, "room-r", true),
            "select realtime.send_binary('\\x0102', 'bin', 'room-r', true)".to_owned(),
            send(3, "room-r", true),
            send(4, "room-r", false),
            send(5, "room-other", true),
        ],
    )
    .await;

    // vsn 2, the latest two: the binary one as a binary frame, then n=3;
    // both marked replayed, with their ids.
    let mut two = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = two
        .join(
            "realtime:room-r",
            json!({"private": true, "broadcast": {"replay": {"since": since, "limit": 2}}}),
            Some(&token),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let (_, first, _) = two.expect("broadcast").await;
    assert_eq!(first["event"], "bin");
    assert_eq!(first["binary"], json!([1, 2]));
    assert_eq!(first["meta"]["replayed"], true);
    assert!(first["meta"]["id"].is_string(), "{first}");
    let (_, second, _) = two.expect("broadcast").await;
    assert_eq!(second["type"], "broadcast");
    assert_eq!(second["event"], "ev");
    assert_eq!(second["payload"]["n"], 3);
    assert_eq!(second["meta"]["replayed"], true);
    assert_eq!(second["payload"]["id"], second["meta"]["id"]);

    // vsn 1, the default limit: the private JSON ones since `since` (raw
    // bytes cannot travel as vsn 1 JSON; n=0 is older, n=4 public).
    let mut one = Client::connect(&app, &app.anon_key, "1.0.0").await;
    let reply = one
        .join(
            "realtime:room-r",
            json!({"private": true, "broadcast": {"replay": {"since": since}}}),
            Some(&token),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    for n in [1, 2, 3] {
        let (_, replayed, _) = one.expect("broadcast").await;
        assert_eq!(replayed["payload"]["n"], n, "{replayed}");
        assert_eq!(replayed["meta"]["replayed"], true);
    }

    // Live messages follow, with their id in meta and not replayed; the
    // binary one reaches vsn 2 only.
    feed_ready(&app).await;
    sql(
        &app,
        "select realtime.send_binary('\\x0a0b', 'bin', 'room-r');
         select realtime.send('{\"n\": 6}', 'ev', 'room-r');",
    )
    .await;
    let (_, live, _) = two.expect("broadcast").await;
    assert_eq!(live["event"], "bin");
    assert_eq!(live["binary"], json!([10, 11]));
    assert!(live["meta"]["id"].is_string() && live["meta"].get("replayed").is_none());
    let (_, live, _) = two.expect("broadcast").await;
    assert_eq!(live["payload"]["n"], 6);
    assert!(live["meta"]["id"].is_string() && live["meta"].get("replayed").is_none());
    let (_, live, _) = one.expect("broadcast").await;
    assert_eq!(live["payload"]["n"], 6, "{live}");

    // At most 25, the latest ones. A watcher sees the 30 live first, so
    // that none is still on its way when the replaying channel joins.
    let mut watcher = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = watcher
        .join("realtime:room-many", json!({"private": true}), Some(&token))
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let sends: Vec<String> = (1..=30).map(|n| send(n, "room-many", true)).collect();
    each(&app, &sends).await;
    for n in 1..=30 {
        assert_eq!(watcher.expect("broadcast").await.1["payload"]["n"], n);
    }
    let mut many = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = many
        .join(
            "realtime:room-many",
            json!({"private": true, "broadcast": {"replay": {"since": 0, "limit": 100}}}),
            Some(&token),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let mut got = Vec::new();
    for _ in 0..25 {
        got.push(
            many.expect("broadcast").await.1["payload"]["n"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(got, (6..=30).collect::<Vec<i64>>());
    many.silent("broadcast", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn replay_is_refused_as_supabase_refuses_it() {
    let app = change_app(FIXTURE).await;
    let (_, token) = user(&app);
    let refusals = [
        (
            "realtime:room-r",
            json!({"broadcast": {"replay": {"since": 0}}}),
            "UnableToReplayMessages: Replay is not allowed for public channels",
        ),
        (
            "realtime:room-r",
            json!({"private": true, "broadcast": {"replay": {"since": "yesterday"}}}),
            "UnableToReplayMessages: Replay params are not valid",
        ),
        (
            "realtime:room-r",
            json!({"private": true, "broadcast": {"replay": {"limit": 2.5}}}),
            "UnableToReplayMessages: Replay params are not valid",
        ),
        (
            "realtime:room-r",
            json!({"private": true, "broadcast": {"replay": 5}}),
            "UnableToReplayMessages: Replay params are not valid",
        ),
        (
            "realtime:room-p",
            json!({"private": true, "broadcast": {"replay": {"since": 0}}}),
            "Unauthorized: You do not have permissions to read from this Channel topic: room-p",
        ),
    ];
    for (topic, config, reason) in refusals {
        let mut c = Client::connect(&app, &app.anon_key, "2.0.0").await;
        let reply = c.join(topic, config.clone(), Some(&token)).await;
        assert_eq!(reply["status"], "error", "{config}: {reply}");
        assert_eq!(reply["response"]["reason"], reason, "{config}");
    }
    // The same private channel without replay joins (room-p for presence).
    let mut c = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = c
        .join("realtime:room-p", json!({"private": true}), Some(&token))
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
}

#[tokio::test]
async fn replication_ready_that_never_comes_closes_the_channel() {
    let app = change_app(FIXTURE).await;
    let (_, token) = user(&app);
    // Another session holds the change feed's leader lock on this
    // database ("sovra_rt"), so the feed never starts reading the slot.
    let holder = app.db.client().await;
    let locked: bool = holder
        .query_one(
            "select pg_try_advisory_lock($1)",
            &[&0x736f_7672_615f_7274_i64],
        )
        .await
        .unwrap()
        .get(0);
    assert!(locked);
    let mut c = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = c
        .join(
            "realtime:never",
            json!({"broadcast": {"replication_ready": true}}),
            Some(&token),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    // After the wait (30 s), as Supabase: a system error, then phx_close.
    let (topic, system, _) = c.expect_within("system", Duration::from_secs(60)).await;
    assert_eq!(topic, "realtime:never");
    assert_eq!(
        system,
        json!({"extension": "system", "status": "error", "message": "Replication connection was not established in time", "channel": "never"})
    );
    let (topic, _, _) = c.expect("phx_close").await;
    assert_eq!(topic, "realtime:never");
    // The channel is gone: a broadcast to it is an unmatched topic.
    let r = c
        .send(
            "realtime:never",
            "broadcast",
            json!({"type": "broadcast", "event": "x", "payload": {}}),
        )
        .await;
    assert_eq!(
        c.reply(&r).await,
        json!({"status": "error", "response": {"reason": "unmatched topic"}})
    );
    drop(holder);
}

#[tokio::test]
async fn a_replayed_message_that_then_arrives_live_is_not_sent_twice() {
    let app = change_app(FIXTURE).await;
    let (_, token) = user(&app);
    // The feed runs, then stops: what is stored meanwhile is read when it
    // starts again, which the replaying join below makes it do.
    let mut first = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = first
        .join("realtime:room-r", json!({"private": true}), Some(&token))
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    feed_ready(&app).await;
    app.tenant.realtime.stop_feed();
    each(
        &app,
        &[
            send(1, "room-r", true),
            send(2, "room-r", true),
            send(3, "room-r", true),
        ],
    )
    .await;
    let mut c = Client::connect(&app, &app.anon_key, "1.0.0").await;
    let reply = c
        .join(
            "realtime:room-r",
            json!({"private": true, "broadcast": {"replay": {"since": 0, "limit": 2}}}),
            Some(&token),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    feed_ready(&app).await;
    each(&app, &[send(4, "room-r", true)]).await;
    // Replayed: 2 and 3. Live, in commit order: 1 (not replayed), 4; 2
    // and 3 are not sent again.
    let mut got = Vec::new();
    for _ in 0..4 {
        let (_, m, _) = c.expect("broadcast").await;
        got.push((
            m["payload"]["n"].as_i64().unwrap(),
            m["meta"]["replayed"] == true,
        ));
    }
    assert_eq!(got, [(2, true), (3, true), (1, false), (4, false)]);
    // The channel that was there all along gets each once, live.
    let mut live = Vec::new();
    for _ in 0..4 {
        live.push(
            first.expect("broadcast").await.1["payload"]["n"]
                .as_i64()
                .unwrap(),
        );
    }
    assert_eq!(live, [1, 2, 3, 4]);
    c.silent("broadcast", Duration::from_millis(300)).await;
}
