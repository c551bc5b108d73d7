//! The transactional outbox: events published after commit, once per
//! destination, in commit order per topic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use futures_util::StreamExt as _;
use serde_json::{Value, json};
use sovra_net::{NetService, NetSettings};
use sovra_test_support::{NatsServer, TestDb};
use support::{Receiver, wait_for, wait_until};

fn local() -> NetSettings {
    let mut settings = NetSettings::default();
    settings.policy.allow_private = true;
    settings.poll_interval = Duration::from_millis(100);
    settings
}

#[tokio::test]
async fn events_reach_http_and_realtime_in_commit_order_and_rolled_back_ones_never() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    let _net = NetService::start(local(), db.config());
    let client = db.client().await;
    client
        .execute(
            "insert into sovra.outbox_destinations (topic, kind, target, headers) values
               ('orders', 'realtime', 'orders-feed', '{}'),
               ('orders', 'http', $1, '{\"X-Source\": \"outbox\"}'),
               ('*', 'http', $2, '{}')",
            &[
                &format!("{}/orders", receiver.url),
                &format!("{}/all", receiver.url),
            ],
        )
        .await
        .unwrap();

    // Two writers to one topic: the second waits for the first to commit,
    // so the first committed is the first published.
    let mut first = db.client().await;
    let mut second = db.client().await;
    let a = first.transaction().await.unwrap();
    a.query_one("select sovra.outbox_send('orders', '{\"n\": 1}')", &[])
        .await
        .unwrap();
    let waiting = tokio::spawn(async move {
        let b = second.transaction().await.unwrap();
        b.query_one("select sovra.outbox_send('orders', '{\"n\": 2}')", &[])
            .await
            .unwrap();
        b.commit().await.unwrap();
    });
    // The second writer is blocked on the topic until the first commits.
    wait_until(
        &client,
        "select exists(select 1 from pg_locks where locktype = 'advisory' and not granted)",
    )
    .await;
    a.commit().await.unwrap();
    waiting.await.unwrap();
    // Rolled back: never published.
    let rolled = first.transaction().await.unwrap();
    rolled
        .query_one("select sovra.outbox_send('orders', '{\"n\": 99}')", &[])
        .await
        .unwrap();
    rolled.rollback().await.unwrap();
    for n in 3..=10 {
        client
            .query_one(
                "select sovra.outbox_send('orders', jsonb_build_object('n', $1::int))",
                &[&n],
            )
            .await
            .unwrap();
    }
    client
        .query_one("select sovra.outbox_send('audit', '{\"who\": \"x\"}')", &[])
        .await
        .unwrap();

    wait_until(&client, "select not exists(select 1 from sovra.outbox)").await;
    // Realtime: one broadcast per event, in commit order (the table is
    // fresh and only appended to, so physical order is insertion order).
    let rows = client
        .query(
            "select event, (payload->>'n')::int, private from realtime.messages
              where topic = 'orders-feed' and extension = 'broadcast' order by ctid",
            &[],
        )
        .await
        .unwrap();
    let order: Vec<i32> = rows.iter().map(|row| row.get(1)).collect();
    assert_eq!(order, (1..=10).collect::<Vec<_>>());
    assert!(
        rows.iter()
            .all(|row| row.get::<_, String>(0) == "orders" && !row.get::<_, bool>(2))
    );

    // HTTP: every event once at each matching destination.
    wait_for(|| {
        receiver.seen_path("/orders").len() == 10 && receiver.seen_path("/all").len() == 11
    })
    .await;
    let mut got: Vec<i64> = receiver
        .seen_path("/orders")
        .iter()
        .map(|seen| {
            assert_eq!(seen.headers["x-source"], "outbox");
            let body = seen.json();
            assert_eq!(body["topic"], "orders");
            assert!(body["id"].is_i64());
            body["payload"]["n"].as_i64().unwrap()
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    let audit: Vec<Value> = receiver
        .seen_path("/all")
        .iter()
        .map(support::Seen::json)
        .filter(|body| body["topic"] == "audit")
        .collect();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["payload"], json!({"who": "x"}));
    assert!(
        !receiver
            .seen()
            .iter()
            .any(|seen| seen.json()["payload"]["n"] == 99)
    );
}

#[tokio::test]
async fn bad_sends_raise_in_the_callers_transaction() {
    let db = TestDb::new().await;
    let client = db.client().await;
    for sql in [
        "select sovra.outbox_send('', '{}')",
        "select sovra.outbox_send(null, '{}')",
    ] {
        let err = client.query_one(sql, &[]).await.unwrap_err();
        assert!(
            err.as_db_error()
                .unwrap()
                .message()
                .contains("topic must not be empty"),
            "{sql}"
        );
    }
    let err = client
        .execute(
            "insert into sovra.outbox_destinations (topic, kind, target) values ('t', 'smtp', 'x')",
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "23514");
}

#[tokio::test]
async fn events_reach_a_nats_subject_in_order() {
    // A NATS that admits only a login, written in the URL as operators do.
    let nats = NatsServer::start_with_password("outbox", "0utb0x-pw").await;
    let db = TestDb::new().await;
    let mut settings = local();
    settings.tenant = "acme".to_owned();
    settings.nats_url = Some(nats.url.clone());
    let subscriber = async_nats::ConnectOptions::with_user_and_password(
        "outbox".to_owned(),
        "0utb0x-pw".to_owned(),
    )
    .connect(nats.url.as_str())
    .await
    .unwrap();
    let mut subscription = subscriber.subscribe("app.ticks").await.unwrap();
    subscriber.flush().await.unwrap();
    let _net = NetService::start(settings, db.config());
    let client = db.client().await;
    client
        .execute(
            "insert into sovra.outbox_destinations (topic, kind, target) values ('ticks', 'nats', 'app.ticks')",
            &[],
        )
        .await
        .unwrap();
    for n in 1..=50 {
        client
            .query_one(
                "select sovra.outbox_send('ticks', jsonb_build_object('n', $1::int))",
                &[&n],
            )
            .await
            .unwrap();
    }
    for n in 1..=50 {
        let message = tokio::time::timeout(Duration::from_secs(60), subscription.next())
            .await
            .expect("a NATS message in time")
            .unwrap();
        let body: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(body["topic"], "ticks");
        assert_eq!(body["payload"]["n"], n);
        let id = body["id"].as_i64().unwrap();
        let msg_id = message
            .headers
            .as_ref()
            .unwrap()
            .get("Nats-Msg-Id")
            .unwrap()
            .to_string();
        assert!(msg_id.starts_with(&format!("acme:{id}:")), "{msg_id}");
    }
    wait_until(&client, "select not exists(select 1 from sovra.outbox)").await;
}

#[tokio::test]
async fn an_empty_outbox_is_not_read_again_until_an_event_is_sent() {
    let db = TestDb::new().await;
    let receiver = Receiver::start().await;
    // A short poll interval: only the long look of an empty outbox may keep
    // the publisher from reading it every 100 ms.
    let _net = NetService::start(local(), db.config());
    let client = db.client().await;
    client
        .execute(
            "insert into sovra.outbox_destinations (topic, kind, target) values ('t', 'http', $1)",
            &[&format!("{}/t", receiver.url)],
        )
        .await
        .unwrap();
    let publisher = "select query_start::text from pg_stat_activity
                     where datname = current_database() and pid <> pg_backend_pid()
                       and query = 'select exists(select 1 from sovra.outbox)'";
    wait_until(&client, &format!("select exists({publisher})")).await;
    let before: String = client.query_one(publisher, &[]).await.unwrap().get(0);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let after: String = client.query_one(publisher, &[]).await.unwrap().get(0);
    assert_eq!(before, after, "an empty outbox was read again");
    // An event sent now is announced and published at once.
    client
        .query_one("select sovra.outbox_send('t', '{\"n\": 1}')", &[])
        .await
        .unwrap();
    wait_until(&client, "select not exists(select 1 from sovra.outbox)").await;
    wait_for(|| !receiver.seen_path("/t").is_empty()).await;
}
