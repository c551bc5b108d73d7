//! Background work (#18): queues (pgmq's SQL API and Supabase's
//! `pgmq_public` wrappers through `/rest/v1/rpc`) and cron (pg_cron's API
//! and Sovra's scheduler), against real PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sovra_pg::tokio_postgres::Client;
use sovra_test_support::{TestApp, TestDb};

async fn ids(client: &Client, sql: &str) -> Vec<i64> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

async fn count(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn queue_sql_api_round_trip() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute("select pgmq.create('jobs')").await.unwrap();
    assert_eq!(
        ids(&c, "select pgmq.send('jobs', '{\"n\": 1}')").await,
        vec![1]
    );
    assert_eq!(
        ids(
            &c,
            "select * from pgmq.send_batch('jobs', array['{\"n\": 2}', '{\"n\": 3}', '{\"n\": 4}']::jsonb[])"
        )
        .await,
        vec![2, 3, 4]
    );
    // A delayed message is not visible yet.
    assert_eq!(
        ids(&c, "select pgmq.send('jobs', '{\"n\": 5}', 3600)").await,
        vec![5]
    );

    // read: the oldest first, with the columns pgmq returns.
    let rows = c
        .query("select * from pgmq.read('jobs', 30, 2)", &[])
        .await
        .unwrap();
    let names: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["msg_id", "read_ct", "enqueued_at", "vt", "message"]);
    let got: Vec<(i64, i32, Value)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(4)))
        .collect();
    assert_eq!(got, vec![(1, 1, json!({"n": 1})), (2, 1, json!({"n": 2}))]);
    // Read messages stay hidden until their vt; the delayed one too.
    assert_eq!(
        ids(&c, "select msg_id from pgmq.read('jobs', 30, 10)").await,
        vec![3, 4]
    );
    assert!(
        ids(&c, "select msg_id from pgmq.read('jobs', 30, 10)")
            .await
            .is_empty()
    );
    // set_vt makes one visible again; it is read a second time.
    assert_eq!(
        ids(&c, "select msg_id from pgmq.set_vt('jobs', 2, 0)").await,
        vec![2]
    );
    let again = c
        .query_one("select msg_id, read_ct from pgmq.read('jobs', 30, 10)", &[])
        .await
        .unwrap();
    assert_eq!((again.get::<_, i64>(0), again.get::<_, i32>(1)), (2, 2));
    // Conditional read (pgmq 1.5's argument) filters by containment.
    c.batch_execute("select pgmq.set_vt('jobs', 3, 0); select pgmq.set_vt('jobs', 4, 0)")
        .await
        .unwrap();
    assert_eq!(
        ids(
            &c,
            "select msg_id from pgmq.read('jobs', 30, 10, conditional => '{\"n\": 4}')"
        )
        .await,
        vec![4]
    );

    // archive moves the row, with its read count, to pgmq.a_jobs.
    let archived: bool = c
        .query_one("select pgmq.archive('jobs', 1::bigint)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(archived);
    let not_there: bool = c
        .query_one("select pgmq.archive('jobs', 1::bigint)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!not_there);
    assert_eq!(
        count(&c, "select count(*) from pgmq.a_jobs where msg_id = 1 and read_ct = 1 and archived_at is not null").await,
        1
    );
    assert_eq!(
        count(&c, "select count(*) from pgmq.q_jobs where msg_id = 1").await,
        0
    );
    assert_eq!(
        ids(
            &c,
            "select * from pgmq.archive('jobs', array[2, 99]::bigint[])"
        )
        .await,
        vec![2]
    );
    // delete: single and array forms.
    let deleted: bool = c
        .query_one("select pgmq.delete('jobs', 3::bigint)", &[])
        .await
        .unwrap()
        .get(0);
    assert!(deleted);
    assert_eq!(
        ids(
            &c,
            "select * from pgmq.delete('jobs', array[3, 4]::bigint[])"
        )
        .await,
        vec![4]
    );

    // metrics, metrics_all and list_queues.
    let m = c
        .query_one(
            "select queue_name, queue_length, total_messages from pgmq.metrics('jobs')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            m.get::<_, String>(0),
            m.get::<_, i64>(1),
            m.get::<_, i64>(2)
        ),
        ("jobs".to_owned(), 1, 5)
    );
    c.batch_execute("select pgmq.create_unlogged('fast')")
        .await
        .unwrap();
    assert_eq!(
        count(&c, "select count(*) from pgmq.metrics_all()").await,
        2
    );
    let listed = c
        .query(
            "select queue_name::text, is_unlogged from pgmq.list_queues() order by 1",
            &[],
        )
        .await
        .unwrap();
    let listed: Vec<(String, bool)> = listed.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        listed,
        vec![("fast".to_owned(), true), ("jobs".to_owned(), false)]
    );
    let persistence: i8 = c
        .query_one(
            "select relpersistence from pg_class where oid = 'pgmq.q_fast'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(persistence as u8, b'u');

    // pop takes the next visible message away; purge empties a queue.
    c.batch_execute(
        "select pgmq.send('fast', '{\"x\": 1}'); select pgmq.send('fast', '{\"x\": 2}')",
    )
    .await
    .unwrap();
    let popped: Value = c
        .query_one("select message from pgmq.pop('fast')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(popped, json!({"x": 1}));
    assert_eq!(count(&c, "select pgmq.purge_queue('fast')").await, 1);
    assert_eq!(count(&c, "select count(*) from pgmq.q_fast").await, 0);

    // read_with_poll returns at once when a message is there.
    c.batch_execute("select pgmq.send('fast', '{\"x\": 3}')")
        .await
        .unwrap();
    assert_eq!(
        count(
            &c,
            "select count(*) from pgmq.read_with_poll('fast', 30, 5, 1, 10)"
        )
        .await,
        1
    );

    // drop_queue removes both tables and the row in pgmq.meta.
    let dropped: bool = c
        .query_one("select pgmq.drop_queue('fast')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(dropped);
    assert_eq!(
        count(
            &c,
            "select count(*) from pg_class where relname in ('q_fast', 'a_fast')"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &c,
            "select count(*) from pgmq.meta where queue_name = 'fast'"
        )
        .await,
        0
    );
    // A queue that does not exist is an error, not an empty answer.
    let err = c
        .query("select * from pgmq.read('nope', 30, 1)", &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().code(),
        &sovra_pg::tokio_postgres::error::SqlState::UNDEFINED_TABLE
    );
}

#[tokio::test]
async fn queue_names_are_validated_and_quoted() {
    let db = TestDb::new().await;
    let c = db.client().await;
    for bad in [
        "x; drop table pgmq.meta",
        "a$b",
        "a--b",
        "it's",
        "",
        "a_name_that_is_far_too_long_for_a_queue_of_pgmq_xx",
    ] {
        let err = c
            .query("select pgmq.create($1)", &[&bad])
            .await
            .expect_err(bad);
        assert!(err.as_db_error().is_some(), "{bad}: {err}");
    }
    let err = c
        .query("select pgmq.send($1, '{}')", &[&"x;y"])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("invalid characters")
    );
    // Characters pgmq allows reach SQL only as quoted identifiers.
    c.query("select pgmq.create($1)", &[&"Odd \"Name\" (1)"])
        .await
        .unwrap();
    c.query(
        "select pgmq.send($1, '{\"ok\": true}')",
        &[&"Odd \"Name\" (1)"],
    )
    .await
    .unwrap();
    assert_eq!(
        count(&c, "select count(*) from pgmq.\"q_odd \"\"name\"\" (1)\"").await,
        1
    );
    assert_eq!(count(&c, "select count(*) from pgmq.meta").await, 1);
}

#[tokio::test]
async fn a_read_message_is_invisible_to_other_readers() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "select pgmq.create('work');
         select pgmq.send_batch('work', array_fill('{}'::jsonb, array[10]));",
    )
    .await
    .unwrap();
    // Reader one holds its messages in an open transaction; reader two
    // skips them (FOR UPDATE SKIP LOCKED) instead of waiting or taking them.
    let mut one = db.client().await;
    let two = db.client().await;
    let tx = one.transaction().await.unwrap();
    let first: Vec<i64> = tx
        .query("select msg_id from pgmq.read('work', 30, 4)", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let second = ids(&two, "select msg_id from pgmq.read('work', 30, 100)").await;
    assert_eq!(first, vec![1, 2, 3, 4]);
    assert_eq!(second, vec![5, 6, 7, 8, 9, 10]);
    tx.commit().await.unwrap();
    // After the commit their visibility timeout keeps them hidden.
    assert!(
        ids(&two, "select msg_id from pgmq.read('work', 30, 100)")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn concurrent_readers_never_get_the_same_message() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "select pgmq.create('many');
         select pgmq.send_batch('many', array_fill('{}'::jsonb, array[400]));",
    )
    .await
    .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = db.client().await;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = ids(&client, "select msg_id from pgmq.read('many', 600, 3)").await;
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch);
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let unique: HashSet<i64> = all.iter().copied().collect();
    assert_eq!(all.len(), 400, "every message read once");
    assert_eq!(unique.len(), 400, "no message read twice");
}

async fn rpc(
    app: &TestApp,
    function: &str,
    key: &str,
    bearer: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/rest/v1/rpc/{function}", app.url))
        .header("apikey", key)
        .header("Authorization", format!("Bearer {}", bearer.unwrap_or(key)))
        .header("Content-Profile", "pgmq_public")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn pgmq_public_through_rest_rpc() {
    let mut config = sovra_config::Config::default();
    config.rest.schemas = "public,pgmq_public".to_owned();
    let app = TestApp::spawn_with(config).await;
    app.db
        .client()
        .await
        .batch_execute("select pgmq.create('emails')")
        .await
        .unwrap();
    let service = app.service_role_key.clone();

    let (status, body) = rpc(
        &app,
        "send",
        &service,
        None,
        json!({"queue_name": "emails", "message": {"to": "a@example.com"}}),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!([1])));
    let (status, body) = rpc(
        &app,
        "send_batch",
        &service,
        None,
        json!({"queue_name": "emails", "messages": [{"to": "b"}, {"to": "c"}], "sleep_seconds": 0}),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!([2, 3])));
    let (status, body) = rpc(
        &app,
        "read",
        &service,
        None,
        json!({"queue_name": "emails", "sleep_seconds": 30, "n": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let rows = body.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["msg_id"], json!(1));
    assert_eq!(rows[0]["read_ct"], json!(1));
    assert_eq!(rows[0]["message"], json!({"to": "a@example.com"}));
    assert!(rows[0]["vt"].is_string() && rows[0]["enqueued_at"].is_string());
    let (status, body) = rpc(
        &app,
        "archive",
        &service,
        None,
        json!({"queue_name": "emails", "message_id": 1}),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!(true)));
    let (status, body) = rpc(
        &app,
        "delete",
        &service,
        None,
        json!({"queue_name": "emails", "message_id": 2}),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!(true)));
    let (status, body) = rpc(&app, "pop", &service, None, json!({"queue_name": "emails"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body[0]["msg_id"], json!(3));

    // anon and a signed-in user are refused by PostgreSQL until granted.
    let anon = app.anon_key.clone();
    let (status, body) = rpc(
        &app,
        "send",
        &anon,
        None,
        json!({"queue_name": "emails", "message": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], json!("42501"));
    let user = app.sign(Value::Object(TestApp::user_claims(
        "00000000-0000-0000-0000-00000000000a",
    )));
    let (status, body) = rpc(
        &app,
        "send",
        &anon,
        Some(&user),
        json!({"queue_name": "emails", "message": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], json!("42501"));
    // Supabase's recipe: grant the queue's tables to authenticated.
    app.db
        .client()
        .await
        .batch_execute(
            "grant select, insert, update, delete on pgmq.q_emails, pgmq.a_emails to authenticated",
        )
        .await
        .unwrap();
    let (status, body) = rpc(
        &app,
        "send",
        &anon,
        Some(&user),
        json!({"queue_name": "emails", "message": {"from": "user"}}),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!([4])));
    // A bad queue name is the function's error, not a 500.
    let (status, body) = rpc(
        &app,
        "send",
        &service,
        None,
        json!({"queue_name": "x;drop", "message": {}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], json!("P0001"));
}

// ---- Cron ----

/// Schedules from a small deterministic generator: grammar-shaped noise
/// and near-valid forms, for the differential test of the two parsers.
fn schedule_corpus() -> Vec<String> {
    const PIECES: &[&str] = &[
        "*", "/", "-", ",", " ", "\t", "$", "0", "1", "5", "7", "12", "23", "24", "31", "32", "59",
        "60", "00000", "mon", "sun", "fri", "jan", "dec", "foo", "@daily", "@hourly", "@reboot",
        "seconds", "second", "@", "S", "*/", "\u{a0}", "\n",
    ];
    let mut out: Vec<String> = [
        "* * * * *",
        "*/5 * * * *",
        "0 3 * * *",
        "0,30 9-17 * * mon-fri",
        "0 0 $ * *",
        "1-59/2 0-23/3 1-31/10 1-12/6 0-7/2",
        "@daily",
        "@Weekly",
        "1 seconds",
        "59 seconds",
        "60 seconds",
        "0 seconds",
        "10 second",
        "30seconds",
        "5/15 * * * *",
        "5-3 * * * *",
        "*/0 * * * *",
        "* * * *",
        "* * * * * *",
        "",
        "  ",
        "0 0 * * 7",
        "0 0 * jan-dec *",
        "0 0 1,$ * *",
        "$ * * * *",
        "* * * $ *",
        "1,,2 * * * *",
        "0007 * * * *",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..3000 {
        let len = next() % 12;
        let mut s = String::new();
        for _ in 0..len {
            s.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
        }
        out.push(s);
    }
    // Five fields of valid-looking items.
    for _ in 0..1000 {
        let fields: Vec<String> = (0..5)
            .map(|_| {
                let a = next() % 32;
                let b = next() % 32;
                match next() % 5 {
                    0 => "*".to_owned(),
                    1 => format!("*/{}", next() % 40),
                    2 => format!("{a}"),
                    3 => format!("{a}-{b}"),
                    _ => format!("{a}-{b}/{}", next() % 4),
                }
            })
            .collect();
        out.push(fields.join(" "));
    }
    out
}

#[tokio::test]
async fn cron_schedule_check_in_sql_matches_the_rust_parser() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let corpus = schedule_corpus();
    let rows = c
        .query(
            "select s, cron._schedule_ok(s) from unnest($1::text[]) s",
            &[&corpus],
        )
        .await
        .unwrap();
    let mut valid = 0;
    for row in rows {
        let s: String = row.get(0);
        let sql: bool = row.get(1);
        let rust = sovra_cron::parse(&s).is_ok();
        assert_eq!(sql, rust, "{s:?}: SQL says {sql}, Rust says {rust}");
        valid += usize::from(rust);
    }
    assert!(valid > 100, "the corpus has valid schedules too ({valid})");
}

#[tokio::test]
async fn cron_api_upserts_by_name_validates_and_keeps_owners_apart() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let id: i64 = c
        .query_one(
            "select cron.schedule('nightly', '0 3 * * *', 'select 1')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // The same name again updates the job (pg_cron's upsert).
    let again: i64 = c
        .query_one(
            "select cron.schedule('nightly', '30 4 * * *', 'select 2')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, again);
    let row = c
        .query_one("select schedule, command, username = current_user, active, database = current_database() from cron.job where jobid = $1", &[&id])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "30 4 * * *");
    assert_eq!(row.get::<_, String>(1), "select 2");
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3) && row.get::<_, bool>(4));
    let unnamed: i64 = c
        .query_one("select cron.schedule('*/5 * * * *', 'select 3')", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(unnamed, id);
    let in_db: i64 = c
        .query_one(
            "select cron.schedule_in_database('here', '@hourly', 'select 4', current_database())",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    c.batch_execute(&format!(
        "select cron.alter_job({in_db}, schedule => '10 seconds', active => false)"
    ))
    .await
    .unwrap();
    let row = c
        .query_one(
            "select schedule, active from cron.job where jobid = $1",
            &[&in_db],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("10 seconds".to_owned(), false)
    );

    // Refusals, with pg_cron's messages.
    for (sql, message) in [
        (
            "select cron.schedule('bad', '61 * * * *', 'select 1')",
            "invalid schedule: 61 * * * *",
        ),
        (
            "select cron.schedule('0 seconds', 'select 1')",
            "invalid schedule: 0 seconds",
        ),
        (
            "select cron.alter_job(1000, schedule => 'often')",
            "invalid schedule: often",
        ),
        (
            "select cron.alter_job(1000, command => 'select 1')",
            "Job 1000 does not exist or you don't own it",
        ),
        (
            "select cron.unschedule(1000)",
            "could not find valid entry for job 1000",
        ),
        (
            "select cron.unschedule('nope')",
            "could not find valid entry for job 'nope'",
        ),
        (
            "select cron.schedule_in_database('x', '@daily', 'select 1', 'elsewhere')",
            "Sovra runs a job in the database that schedules it",
        ),
    ] {
        let err = c.query(sql, &[]).await.expect_err(sql);
        let db_err = err.as_db_error().expect(sql);
        assert!(
            db_err.message().contains(message),
            "{sql}: {}",
            db_err.message()
        );
    }
    // The table refuses what the functions refuse, however it is written.
    let err = c
        .query(
            "update cron.job set schedule = 'bogus' where jobid = $1",
            &[&id],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().code(),
        &sovra_pg::tokio_postgres::error::SqlState::CHECK_VIOLATION
    );

    // Another role sees and changes only its own jobs.
    let role = format!("cron_user_{}", &db.name[11..]);
    c.batch_execute(&format!(
        "create role {role} nologin; grant usage on schema cron to {role};
         set role {role};
         select cron.schedule('mine', '@daily', 'select 1');"
    ))
    .await
    .unwrap();
    assert_eq!(count(&c, "select count(*) from cron.job").await, 1);
    let err = c
        .query(&format!("select cron.unschedule({id})"), &[])
        .await
        .unwrap_err();
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("could not find")
    );
    let err = c
        .query(
            "select cron.schedule_in_database('x', '@daily', 'select 1', current_database(), 'postgres')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().code(),
        &sovra_pg::tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
    );
    c.batch_execute("select cron.unschedule('mine'); reset role")
        .await
        .unwrap();
    // Roles without usage on the schema cannot use cron at all.
    c.batch_execute("set role anon").await.unwrap();
    let err = c
        .query("select cron.schedule('@daily', 'select 1')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().unwrap().code(),
        &sovra_pg::tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE
    );
    c.batch_execute("reset role; select cron.unschedule('nightly')")
        .await
        .unwrap();
    assert_eq!(
        count(
            &c,
            "select count(*) from cron.job where jobname = 'nightly'"
        )
        .await,
        0
    );
}

fn scheduler(db: &TestDb) -> sovra_server::cron::Scheduler {
    sovra_server::cron::Scheduler::new(db.config(), sovra_server::cron::CronSettings::default())
}

async fn pass(s: &sovra_server::cron::Scheduler, c: &Client, now: i64) {
    for run in s.pass(c, now).await.unwrap() {
        run.await.unwrap();
    }
}

/// 2026-12-07 00:00:00 UTC.
const T0: i64 = 1_796_601_600;

#[tokio::test]
async fn cron_runs_each_tick_once_with_two_schedulers_and_once_after_downtime() {
    let db = TestDb::new().await;
    let c = db.client().await;
    c.batch_execute(
        "create table public.ticks (n serial primary key, at timestamptz default now());
         select cron.schedule('tick', '* * * * *', 'insert into public.ticks default values');",
    )
    .await
    .unwrap();
    let one = scheduler(&db);
    let two = scheduler(&db);
    let c2 = db.client().await;
    // First seen: the job runs from its next tick on.
    pass(&one, &c, T0 + 10).await;
    pass(&two, &c2, T0 + 20).await;
    assert_eq!(count(&c, "select count(*) from public.ticks").await, 0);
    // Two schedulers at the same tick: one run.
    let (a, b) = tokio::join!(one.pass(&c, T0 + 60), two.pass(&c2, T0 + 60));
    for run in a.unwrap().into_iter().chain(b.unwrap()) {
        run.await.unwrap();
    }
    assert_eq!(count(&c, "select count(*) from public.ticks").await, 1);
    // Again at that tick, or later in the same minute: nothing.
    pass(&one, &c, T0 + 60).await;
    pass(&two, &c2, T0 + 119).await;
    assert_eq!(count(&c, "select count(*) from public.ticks").await, 1);
    let row = c
        .query_one(
            "select status, return_message, username = current_user, database = current_database(),
                    job_pid is not null, start_time <= end_time
             from cron.job_run_details",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "succeeded");
    assert_eq!(row.get::<_, String>(1), "INSERT 0 1");
    assert!(
        row.get::<_, bool>(2)
            && row.get::<_, bool>(3)
            && row.get::<_, bool>(4)
            && row.get::<_, bool>(5)
    );
    // Down for an hour: sixty missed ticks run once.
    pass(&one, &c, T0 + 3660 + 5).await;
    assert_eq!(count(&c, "select count(*) from public.ticks").await, 2);
    pass(&two, &c2, T0 + 3660 + 30).await;
    assert_eq!(count(&c, "select count(*) from public.ticks").await, 2);
    pass(&two, &c2, T0 + 3720).await;
    assert_eq!(count(&c, "select count(*) from public.ticks").await, 3);
    // An inactive job does not run.
    c.batch_execute("update cron.job set active = false")
        .await
        .unwrap();
    pass(&one, &c, T0 + 7200).await;
    assert_eq!(count(&c, "select count(*) from public.ticks").await, 3);
}

#[tokio::test]
async fn cron_records_failures_and_runs_jobs_as_their_owner() {
    let db = TestDb::new().await;
    let c = db.client().await;
    let role = format!("cron_owner_{}", &db.name[11..]);
    c.batch_execute(&format!(
        "create table public.seen (who text, session_who text);
         create table public.secret (x int);
         create role {role} nologin;
         grant usage on schema cron to {role};
         grant insert on public.seen to {role};
         select cron.schedule('fails', '* * * * *', 'select 1/0');
         set role {role};
         select cron.schedule('who', '* * * * *', 'insert into public.seen values (current_user, session_user)');
         select cron.schedule('escape', '* * * * *', 'reset role; insert into public.seen values (current_user, session_user)');
         select cron.schedule('peek', '* * * * *', 'select * from public.secret');
         reset role;"
    ))
    .await
    .unwrap();
    let s = scheduler(&db);
    pass(&s, &c, T0).await;
    pass(&s, &c, T0 + 60).await;
    let rows = c
        .query(
            "select j.jobname, d.status, d.return_message, d.username
             from cron.job_run_details d join cron.job j using (jobid) order by j.jobid",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(got[0].1, "failed");
    assert!(got[0].2.contains("division by zero"), "{got:?}");
    assert_eq!(
        (got[1].1.as_str(), got[1].2.as_str()),
        ("succeeded", "INSERT 0 1")
    );
    assert_eq!(got[1].3, role);
    // The owner's job cannot become the scheduler's role.
    assert_eq!(got[2].1, "failed");
    assert!(
        got[2].2.contains("cannot set parameter \"role\""),
        "{got:?}"
    );
    // Nor read what its owner may not.
    assert_eq!(got[3].1, "failed");
    assert!(got[3].2.contains("permission denied"), "{got:?}");
    let seen = c.query("select who from public.seen", &[]).await.unwrap();
    let seen: Vec<String> = seen.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        seen,
        vec![role.clone()],
        "only the job that stayed its owner wrote"
    );
    // The owner reads its own jobs and run history, not the others'.
    c.batch_execute(&format!("set role {role}")).await.unwrap();
    assert_eq!(
        count(&c, "select count(*) from cron.job_run_details").await,
        3
    );
    assert_eq!(count(&c, "select count(*) from cron.job").await, 3);
    c.batch_execute("reset role").await.unwrap();
    assert_eq!(
        count(&c, "select count(*) from cron.job_run_details").await,
        4
    );
}

#[tokio::test]
async fn cron_runs_inside_the_server_and_prunes_old_history() {
    let app = TestApp::spawn().await;
    let c = app.db.client().await;
    c.batch_execute(
        "create table public.beats (n serial primary key);
         insert into cron.job_run_details (jobid, status, start_time, end_time, username)
           values (0, 'succeeded', now() - interval '30 days', now() - interval '30 days', 'postgres');
         select cron.schedule('beat', '1 seconds', 'insert into public.beats default values');",
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let beats = count(&c, "select count(*) from public.beats").await;
        let old = count(
            &c,
            "select count(*) from cron.job_run_details where start_time < now() - interval '8 days'",
        )
        .await;
        let succeeded = count(
            &c,
            "select count(*) from cron.job_run_details where status = 'succeeded' and jobid <> 0",
        )
        .await;
        if beats >= 2 && succeeded >= 2 && old == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler ran {beats} times ({succeeded} recorded); {old} old rows left"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_idle_cron_scheduler_reads_nothing_until_a_job_is_scheduled() {
    let app = TestApp::spawn().await;
    let c = app.db.client().await;
    c.batch_execute("create table public.ticks (n serial primary key)")
        .await
        .unwrap();
    // The scheduler's connection after its first pass (no job) and the
    // housekeeping that follows it: the last statement it sent.
    let last = "select pid, query_start::text from pg_stat_activity
                where datname = current_database() and pid <> pg_backend_pid()
                  and query like 'delete from sovra.idempotency_keys%'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let first = loop {
        if let Some(row) = c.query_opt(last, &[]).await.unwrap() {
            break (row.get::<_, i32>(0), row.get::<_, String>(1));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the scheduler made no first pass"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // Three second boundaries later it has sent nothing more.
    tokio::time::sleep(std::time::Duration::from_millis(3_200)).await;
    let row = c
        .query_one(
            "select query, query_start::text from pg_stat_activity where pid = $1",
            &[&first.0],
        )
        .await
        .unwrap();
    assert!(
        row.get::<_, String>(0)
            .starts_with("delete from sovra.idempotency_keys"),
        "an idle scheduler read again: {}",
        row.get::<_, String>(0)
    );
    assert_eq!(row.get::<_, String>(1), first.1);
    // A job scheduled now is announced and runs within seconds, not at the
    // next housekeeping a minute later.
    c.batch_execute(
        "select cron.schedule('tick', '1 seconds', 'insert into public.ticks default values')",
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while count(&c, "select count(*) from public.ticks").await < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "a job scheduled while the scheduler was idle did not run"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Unscheduled, it stops running.
    c.batch_execute("select cron.unschedule('tick')")
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let after = count(&c, "select count(*) from public.ticks").await;
    tokio::time::sleep(std::time::Duration::from_millis(2_200)).await;
    assert_eq!(count(&c, "select count(*) from public.ticks").await, after);
}
