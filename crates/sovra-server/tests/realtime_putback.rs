//! Change authorisation puts back only rows that no longer have their
//! committed values: a batch of inserts nobody changed since is judged
//! without writing a row, on one snapshot shared by the table's
//! connections; a delete under `REPLICA IDENTITY FULL` (its row is gone)
//! is put back and judged as the row was. Alone in its test binary, so that
//! the process-wide counters `sovra_realtime_put_back_versions_total` and
//! `sovra_realtime_rows_put_back_total` count this test's batches only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sovra_test_support::TestApp;
use support::realtime_client::{Client, Got, app, feed_ready, pg_join, user};

/// Changes of `public.owned` a client receives until the marker `note`.
async fn until_marker(client: &mut Client, note: &str) -> Vec<Value> {
    let mut changes = Vec::new();
    loop {
        let got = client.next_frame(Duration::from_secs(30)).await;
        let Some(Got::Msg { event, payload, .. }) = got else {
            panic!("waiting for marker {note}, got {got:?}");
        };
        match event.as_str() {
            "postgres_changes" => {
                let data = &payload["data"];
                if data["table"] != "rt_marker" {
                    changes.push(data.clone());
                } else if data["record"]["note"] == note {
                    return changes;
                }
            }
            "system" if payload["status"] == "error" => panic!("system error: {payload}"),
            _ => {}
        }
    }
}

/// A counter of `/metrics` (0 before it is first counted).
async fn counter(app: &TestApp, name: &str) -> f64 {
    let metrics = reqwest::get(format!("{}/metrics", app.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metrics
        .lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn inserts_are_judged_without_putting_rows_back_and_deletes_as_the_row_was() {
    let app = app().await;
    let db = app.db.client().await;
    // An owner index, as Supabase advises for such policies: the groups'
    // selects may then go through it (planned with the batch's key range).
    db.batch_execute(
        "create table public.rt_marker (id bigint generated always as identity primary key, note text);
         grant select on public.rt_marker to public;
         alter publication supabase_realtime add table public.rt_marker;
         create table public.owned (id bigint generated always as identity primary key,
                                    owner_id uuid not null, n int);
         alter table public.owned replica identity full;
         alter table public.owned enable row level security;
         create policy own on public.owned for select to authenticated using (owner_id = auth.uid());
         grant select on public.owned to authenticated;
         create index on public.owned (owner_id);
         create table public.owners (n int primary key, id uuid);
         alter publication supabase_realtime add table public.owned;",
    )
    .await
    .unwrap();
    // Ten subscribers: ten claims groups, over four connections.
    let mut owners = Vec::new();
    let mut clients = Vec::new();
    for n in 0..10 {
        let (id, token) = user(&app);
        let mut client = Client::connect(&app, &app.anon_key, "2.0.0").await;
        let bindings = json!([
            {"event": "*", "schema": "public", "table": "owned"},
            {"event": "INSERT", "schema": "public", "table": "rt_marker"}
        ]);
        pg_join(&mut client, &format!("realtime:owned{n}"), bindings, &token).await;
        db.execute("insert into owners values ($1, $2::text::uuid)", &[&n, &id])
            .await
            .unwrap();
        owners.push(id);
        clients.push(client);
    }
    feed_ready(&app).await;

    // 2,000 rows in one transaction (a dense key range), then 100 more in
    // small ones.
    db.batch_execute(
        "insert into owned (owner_id, n) select o.id, g from generate_series(1, 2000) g
         join owners o on o.n = g % 10",
    )
    .await
    .unwrap();
    for k in 0..10 {
        db.execute(
            "insert into owned (owner_id, n) select o.id, g from generate_series($1::int, $1::int + 9) g
             join owners o on o.n = g % 10",
            &[&(2001 + k * 10)],
        )
        .await
        .unwrap();
    }
    db.execute("insert into rt_marker (note) values ('inserted')", &[])
        .await
        .unwrap();
    for (n, client) in clients.iter_mut().enumerate() {
        let changes = until_marker(client, "inserted").await;
        assert_eq!(changes.len(), 210, "subscriber {n}");
        for change in &changes {
            assert_eq!(change["type"], "INSERT");
            assert_eq!(change["record"]["owner_id"], owners[n].as_str());
            assert_eq!(change["record"]["n"].as_i64().unwrap() % 10, n as i64);
        }
    }
    // Found current once per batch on a shared snapshot: no connection
    // compared, locked or wrote any of them again.
    assert_eq!(
        counter(&app, "sovra_realtime_put_back_versions_total").await,
        0.0
    );
    assert_eq!(
        counter(&app, "sovra_realtime_rows_put_back_total").await,
        0.0
    );

    // Deleted rows are gone from the table: they are put back to be judged,
    // and reach only their owner (with the key only).
    db.execute(
        "delete from owned where owner_id = $1::text::uuid and n <= 100",
        &[&owners[3]],
    )
    .await
    .unwrap();
    db.execute("insert into rt_marker (note) values ('deleted')", &[])
        .await
        .unwrap();
    for (n, client) in clients.iter_mut().enumerate() {
        let changes = until_marker(client, "deleted").await;
        if n == 3 {
            assert_eq!(changes.len(), 10, "{changes:?}");
            for change in &changes {
                assert_eq!(change["type"], "DELETE");
                let old = change["old_record"].as_object().unwrap();
                assert_eq!(old.keys().collect::<Vec<_>>(), vec!["id"]);
            }
        } else {
            assert_eq!(changes, Vec::<Value>::new(), "subscriber {n}");
        }
    }
    assert!(counter(&app, "sovra_realtime_put_back_versions_total").await >= 10.0);
    assert!(counter(&app, "sovra_realtime_rows_put_back_total").await >= 10.0);
}
