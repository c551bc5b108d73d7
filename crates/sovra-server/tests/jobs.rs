//! Background work (#18): queues (pgmq's SQL API and Supabase's
//! `pgmq_public` wrappers through `/rest/v1/rpc`), against real PostgreSQL.

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
    assert_eq!(
        names,
        ["msg_id", "read_ct", "enqueued_at", "vt", "message"]
    );
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
    assert_eq!(count(&c, "select count(*) from pgmq.q_jobs where msg_id = 1").await, 0);
    assert_eq!(
        ids(&c, "select * from pgmq.archive('jobs', array[2, 99]::bigint[])").await,
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
        ids(&c, "select * from pgmq.delete('jobs', array[3, 4]::bigint[])").await,
        vec![4]
    );

    // metrics, metrics_all and list_queues.
    let m = c
        .query_one("select queue_name, queue_length, total_messages from pgmq.metrics('jobs')", &[])
        .await
        .unwrap();
    assert_eq!(
        (m.get::<_, String>(0), m.get::<_, i64>(1), m.get::<_, i64>(2)),
        ("jobs".to_owned(), 1, 5)
    );
    c.batch_execute("select pgmq.create_unlogged('fast')").await.unwrap();
    assert_eq!(
        count(&c, "select count(*) from pgmq.metrics_all()").await,
        2
    );
    let listed = c
        .query("select queue_name::text, is_unlogged from pgmq.list_queues() order by 1", &[])
        .await
        .unwrap();
    let listed: Vec<(String, bool)> = listed.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        listed,
        vec![("fast".to_owned(), true), ("jobs".to_owned(), false)]
    );
    let persistence: i8 = c
        .query_one("select relpersistence from pg_class where oid = 'pgmq.q_fast'::regclass", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(persistence as u8, b'u');

    // pop takes the next visible message away; purge empties a queue.
    c.batch_execute("select pgmq.send('fast', '{\"x\": 1}'); select pgmq.send('fast', '{\"x\": 2}')")
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
    c.batch_execute("select pgmq.send('fast', '{\"x\": 3}')").await.unwrap();
    assert_eq!(
        count(&c, "select count(*) from pgmq.read_with_poll('fast', 30, 5, 1, 10)").await,
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
        count(&c, "select count(*) from pg_class where relname in ('q_fast', 'a_fast')").await,
        0
    );
    assert_eq!(count(&c, "select count(*) from pgmq.meta where queue_name = 'fast'").await, 0);
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
    c.query("select pgmq.send($1, '{\"ok\": true}')", &[&"Odd \"Name\" (1)"])
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
