//! The change feed's replication connection: changes stream from the slot
//! over the replication protocol, the position is confirmed only after
//! delivery (nothing lost or repeated across a restart or a dropped
//! connection), and where PostgreSQL refuses a replication connection the
//! feed polls the slot instead.
//!
//! The tests of this file take turns (one lock): the fallback test holds
//! every free walsender of this process's cluster while it runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sovra_realtime::FeedMode;
use sovra_realtime::replication::{ReplicationConnection, ReplicationError};
use sovra_test_support::{TestApp, fast_settings, scratch_dir};
use support::realtime_client::{Client, change_app, feed_ready, pg_join, user};

static TURNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const FIXTURE: &str = "
  create table public.notes (
    id bigint generated always as identity primary key,
    owner_id uuid not null,
    body text
  );
  alter table public.notes replica identity full;
  alter table public.notes enable row level security;
  create policy own on public.notes for select to authenticated using (owner_id = auth.uid());
  grant select on public.notes to authenticated;
  alter publication supabase_realtime add table public.notes;
";

fn notes() -> Value {
    json!([{"event": "*", "schema": "public", "table": "notes"}])
}

async fn insert(app: &TestApp, owner: &str, body: &str) {
    app.db
        .client()
        .await
        .execute(
            "insert into notes (owner_id, body) values ($1::text::uuid, $2)",
            &[&owner, &body],
        )
        .await
        .unwrap();
}

/// The bodies of the next `n` changes.
async fn bodies(client: &mut Client, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let (_, p, _) = client.expect("postgres_changes").await;
        out.push(p["data"]["record"]["body"].as_str().unwrap().to_owned());
    }
    out
}

/// Waits until the slot's confirmed position has passed everything
/// committed so far: the feed told PostgreSQL it delivered it.
async fn wait_confirmed(app: &TestApp) {
    let db = app.db.client().await;
    let target: String = db
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    for _ in 0..400 {
        let done: bool = db
            .query_one(
                "select coalesce(bool_and(confirmed_flush_lsn >= $1::text::pg_lsn), false)
                   from pg_replication_slots where database = current_database()",
                &[&target],
            )
            .await
            .unwrap()
            .get(0);
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the feed never confirmed {target}");
}

/// The slot's confirmed position (bytes of WAL).
async fn slot_position(app: &TestApp) -> i64 {
    app.db
        .client()
        .await
        .query_one(
            "select pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::int8 from pg_replication_slots
               where database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn changes_stream_and_resume_after_a_restart_without_loss_or_repeats() {
    let _turn = TURNS.lock().await;
    let app = change_app(FIXTURE).await;
    let (alice, token) = user(&app);
    let (bob, _) = user(&app);
    let mut a = Client::connect(&app, &app.anon_key, "2.0.0").await;
    pg_join(&mut a, "realtime:notes", notes(), &token).await;
    feed_ready(&app).await;
    assert_eq!(
        app.tenant.realtime.feed_mode(),
        Some(FeedMode::Streaming),
        "the embedded cluster allows replication connections"
    );
    for body in ["one", "two"] {
        insert(&app, &alice, body).await;
    }
    insert(&app, &bob, "not alice's").await;
    assert_eq!(bodies(&mut a, 2).await, ["one", "two"]);
    a.silent("postgres_changes", Duration::from_millis(300))
        .await;

    // Delivered changes are confirmed to PostgreSQL; a restart starts after
    // them: none comes again, and what was committed meanwhile arrives once.
    wait_confirmed(&app).await;
    app.tenant.realtime.stop_feed();
    for body in ["three", "four"] {
        insert(&app, &alice, body).await;
    }
    a.silent("postgres_changes", Duration::from_millis(300))
        .await;
    app.tenant.realtime.start_feed(app.db.config());
    assert_eq!(bodies(&mut a, 2).await, ["three", "four"]);
    a.silent("postgres_changes", Duration::from_millis(500))
        .await;
    assert_eq!(app.tenant.realtime.feed_mode(), Some(FeedMode::Streaming));

    // The replication connection is cut (its walsender ended): the feed
    // reconnects and resumes from the confirmed position.
    wait_confirmed(&app).await;
    let db = app.db.client().await;
    let ended: i64 = db
        .query_one(
            "select count(*) from (select pg_terminate_backend(active_pid) from pg_replication_slots
               where database = current_database() and active_pid is not null) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(ended, 1, "one walsender streams the slot");
    for body in ["five", "six"] {
        insert(&app, &alice, body).await;
    }
    assert_eq!(bodies(&mut a, 2).await, ["five", "six"]);
    a.silent("postgres_changes", Duration::from_millis(500))
        .await;
}

#[tokio::test]
async fn a_role_without_replication_rights_is_refused_and_a_missing_slot_is_an_error() {
    let _turn = TURNS.lock().await;
    let app = change_app(FIXTURE).await;
    let db = app.db.client().await;
    let role = format!("norepl_{}", uuid::Uuid::new_v4().simple());
    db.batch_execute(&format!(
        "create role \"{role}\" login password 'right-password' noreplication"
    ))
    .await
    .unwrap();
    // The harness trusts its socket, so the role's rights decide: a role
    // without REPLICATION is refused by PostgreSQL with its SQLSTATE.
    let err = ReplicationConnection::connect(&app.db.config_as(&role))
        .await
        .err()
        .expect("a role without REPLICATION may not stream");
    assert!(err.refused(), "{err}");
    match &err {
        ReplicationError::Server(server) => assert_eq!(server.code, "42501", "{server}"),
        other => panic!("expected a server refusal, got {other}"),
    }
    db.batch_execute(&format!("drop role \"{role}\""))
        .await
        .unwrap();

    // A slot that does not exist: an error, not a refusal to fall back on.
    let mut conn = ReplicationConnection::connect(&app.db.config())
        .await
        .unwrap();
    conn.command("IDENTIFY_SYSTEM").await.unwrap();
    let err = conn
        .start("no_such_slot", 0, &["supabase_realtime"])
        .await
        .expect_err("no such slot");
    assert!(!err.refused(), "{err}");
    assert!(err.to_string().contains("no_such_slot"), "{err}");
}

#[tokio::test]
async fn a_refused_replication_connection_falls_back_to_polling() {
    let _turn = TURNS.lock().await;
    let app = change_app(FIXTURE).await;
    // Take every walsender this cluster has left: PostgreSQL then refuses
    // the feed's replication connection (53300), as it does for a role or
    // a pooler that may not replicate.
    let mut held = Vec::new();
    let refusal = loop {
        match ReplicationConnection::connect(&app.db.config()).await {
            Ok(conn) => held.push(conn),
            Err(err) => break err,
        }
        assert!(held.len() < 1000, "no walsender limit");
    };
    assert!(refusal.refused(), "{refusal}");
    assert!(refusal.to_string().contains("53300"), "{refusal}");

    let (alice, token) = user(&app);
    let mut a = Client::connect(&app, &app.anon_key, "2.0.0").await;
    pg_join(&mut a, "realtime:notes", notes(), &token).await;
    feed_ready(&app).await;
    assert_eq!(app.tenant.realtime.feed_mode(), Some(FeedMode::Polling));
    let before = slot_position(&app).await;
    for body in ["polled", "also polled"] {
        insert(&app, &alice, body).await;
    }
    assert_eq!(bodies(&mut a, 2).await, ["polled", "also polled"]);
    // Polling advances the slot past what it delivered.
    for _ in 0..400 {
        if slot_position(&app).await > before {
            drop(held);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the polled slot did not advance");
}

#[tokio::test]
async fn an_external_server_streams_over_tcp_with_scram_and_refuses_a_wrong_password() {
    let _turn = TURNS.lock().await;
    // A cluster of its own that takes passwords over TCP (scram-sha-256),
    // as a server Sovra does not manage does.
    let mut options = sovra_pg::ClusterOptions::new(scratch_dir().join("pg"));
    options.settings = fast_settings();
    options.tcp_port = Some(
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port(),
    );
    let cluster = sovra_pg::Cluster::start(options.clone()).await.unwrap();
    let url = |password: &str| {
        format!(
            "postgresql://postgres:{password}@127.0.0.1:{}/postgres",
            options.tcp_port.unwrap()
        )
        .parse::<sovra_pg::tokio_postgres::Config>()
        .unwrap()
    };
    let wrong = ReplicationConnection::connect(&url("not-the-password"))
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(wrong.refused(), "{wrong}");
    assert!(wrong.to_string().contains("28P01"), "{wrong}");

    let admin = sovra_pg::connect_one(&url(cluster.password()))
        .await
        .unwrap();
    admin
        .batch_execute(
            "create table public.t (id int primary key, v text);
             create publication p for table public.t;",
        )
        .await
        .unwrap();
    admin
        .batch_execute("select pg_create_logical_replication_slot('s', 'pgoutput')")
        .await
        .unwrap();
    let mut conn = ReplicationConnection::connect(&url(cluster.password()))
        .await
        .unwrap();
    conn.start("s", 0, &["p"]).await.unwrap();
    admin
        .batch_execute("insert into public.t values (1, 'streamed')")
        .await
        .unwrap();
    // Begin, Relation, Insert, Commit arrive (keepalives may come between).
    let mut kinds = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !kinds.contains(&b'C') {
        assert!(std::time::Instant::now() < deadline, "got {kinds:?}");
        tokio::time::timeout(Duration::from_secs(20), conn.read_items())
            .await
            .unwrap()
            .unwrap();
        for item in conn.take_items() {
            if let sovra_realtime::replication::Item::Data(data) = item {
                kinds.push(data[0]);
                if data[0] == b'I' {
                    assert!(
                        String::from_utf8_lossy(&data).contains("streamed"),
                        "{data:?}"
                    );
                }
            }
        }
    }
    assert_eq!(kinds, b"BRIC");
    // Confirmed: the slot moves.
    let lsn: String = admin
        .query_one("select pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let lsn = lsn
        .split_once('/')
        .map(|(hi, lo)| {
            (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
        })
        .unwrap();
    conn.send_status(lsn).await.unwrap();
    for _ in 0..200 {
        let moved: bool = admin
            .query_one(
                "select confirmed_flush_lsn >= $1::text::pg_lsn from pg_replication_slots where slot_name = 's'",
                &[&format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)],
            )
            .await
            .unwrap()
            .get(0);
        if moved {
            drop(conn);
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the status update did not move the slot");
}
