//! The change feed's authoriser puts committed rows back into the real
//! table (inside a transaction it always rolls back) to ask PostgreSQL
//! which subscribers may see them. Those writes take row locks that the
//! application's own transactions may want at the same moment. This test
//! runs application writers that hold row locks while they work (updates
//! in a random order, deletes and re-inserts of the same key), under many
//! subscriber groups, and checks that:
//!
//! - no application transaction ever fails because of the feed (a
//!   deadlock or lock timeout between the feed and the application must
//!   never pick the application as its victim), and
//! - every committed change still reaches the subscriber whose row it is,
//!   exactly once (contention delays authorisation; it never drops it).
//!
//! The writers never conflict with each other (each owns its own rows), so
//! any error they see involves the feed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use sovra_test_support::TestApp;
use support::realtime_client::{Client, Got, feed_ready, init_logs, pg_join};

const SUBSCRIBERS: usize = 8;
const WRITERS: usize = 3;
const ROWS_PER_OWNER: i32 = 4;
const TRANSACTIONS_PER_WRITER: usize = 40;

/// A small deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[tokio::test]
async fn application_writers_never_lose_to_the_feed_and_every_change_arrives() {
    init_logs();
    let mut config = sovra_config::Config::default();
    config.realtime.outbound_queue_bytes = 1 << 26;
    let app = TestApp::spawn_with(config).await;
    let db = app.db.client().await;
    db.batch_execute(
        "create table public.rt_contended (id int primary key, owner_id uuid not null, n int not null);
         alter table public.rt_contended replica identity full;
         alter table public.rt_contended enable row level security;
         grant select on public.rt_contended to authenticated;
         create policy own on public.rt_contended for select to authenticated
           using (owner_id = auth.uid());
         alter publication supabase_realtime add table public.rt_contended;",
    )
    .await
    .unwrap();

    // Subscribers, each its own group (distinct claims).
    let mut uids = Vec::new();
    let mut clients = Vec::new();
    for n in 0..SUBSCRIBERS {
        let uid = uuid::Uuid::new_v4().to_string();
        let token = app.sign(Value::Object(TestApp::user_claims(&uid)));
        let mut client = Client::connect(&app, &app.anon_key, "2.0.0").await;
        pg_join(
            &mut client,
            &format!("realtime:contended{n}"),
            json!([{"event": "*", "schema": "public", "table": "rt_contended"}]),
            &token,
        )
        .await;
        uids.push(uid);
        clients.push(client);
    }
    feed_ready(&app).await;

    // Rows: ROWS_PER_OWNER per subscriber; row `id` belongs to writer
    // `id % WRITERS`.
    let mut owner_of: BTreeMap<i32, usize> = BTreeMap::new();
    for (s, uid) in uids.iter().enumerate() {
        for k in 0..ROWS_PER_OWNER {
            let id = s as i32 * ROWS_PER_OWNER + k;
            db.execute(
                "insert into public.rt_contended values ($1, $2::text::uuid, 0)",
                &[&id, uid],
            )
            .await
            .unwrap();
            owner_of.insert(id, s);
        }
    }
    let mut expected = [ROWS_PER_OWNER as usize; SUBSCRIBERS];

    // The writers: each transaction touches several of the writer's rows
    // in a random order, pausing while it holds their locks; some delete a
    // row and put the same key back.
    let mut handles = Vec::new();
    for w in 0..WRITERS {
        let mine: Vec<i32> = owner_of
            .keys()
            .copied()
            .filter(|id| *id as usize % WRITERS == w)
            .collect();
        let owners = owner_of.clone();
        let uids = uids.clone();
        let mut client = app.db.client().await;
        handles.push(tokio::spawn(async move {
            let mut rng = Rng(0x5eed + w as u64);
            let mut changes = vec![0usize; SUBSCRIBERS];
            let mut errors = Vec::new();
            for _ in 0..TRANSACTIONS_PER_WRITER {
                let mut picked = mine.clone();
                // A random order, a random subset of 2..=4 rows.
                for i in (1..picked.len()).rev() {
                    picked.swap(i, rng.below(i as u64 + 1) as usize);
                }
                picked.truncate(2 + rng.below(3) as usize);
                let tx = client.transaction().await.unwrap();
                let mut pending = [0usize; SUBSCRIBERS];
                let mut failed = None;
                for id in &picked {
                    let owner = owners[id];
                    let result = if rng.below(5) == 0 {
                        tx.batch_execute(&format!(
                            "delete from public.rt_contended where id = {id};
                             insert into public.rt_contended values ({id}, '{}', 0);
                             select pg_sleep(0.003);",
                            uids[owner]
                        ))
                        .await
                        .map(|()| 2)
                    } else {
                        tx.batch_execute(&format!(
                            "update public.rt_contended set n = n + 1 where id = {id};
                             select pg_sleep(0.003);"
                        ))
                        .await
                        .map(|()| 1)
                    };
                    match result {
                        Ok(count) => pending[owner] += count,
                        Err(err) => {
                            failed = Some(err);
                            break;
                        }
                    }
                }
                let outcome = match failed {
                    Some(err) => Err(err),
                    None => tx.commit().await,
                };
                match outcome {
                    Ok(()) => {
                        for (s, c) in pending.iter().enumerate() {
                            changes[s] += c;
                        }
                    }
                    Err(err) => errors.push(
                        err.as_db_error()
                            .map(|e| format!("{}: {}", e.code().code(), e.message()))
                            .unwrap_or_else(|| err.to_string()),
                    ),
                }
            }
            (changes, errors)
        }));
    }
    let mut errors = Vec::new();
    for handle in handles {
        let (changes, mut e) = handle.await.unwrap();
        for (s, c) in changes.iter().enumerate() {
            expected[s] += c;
        }
        errors.append(&mut e);
    }
    assert!(
        errors.is_empty(),
        "application transactions failed while the feed authorised: {errors:?}"
    );

    // Every committed change on a subscriber's rows reaches it, once.
    for (s, client) in clients.iter_mut().enumerate() {
        let mut got = 0;
        while got < expected[s] {
            let frame = client.next_frame(Duration::from_secs(60)).await;
            let Some(Got::Msg { event, payload, .. }) = frame else {
                panic!(
                    "subscriber {s}: {got} of {} changes, then {frame:?}",
                    expected[s]
                );
            };
            if event == "system" {
                assert_ne!(payload["status"], "error", "subscriber {s}: {payload}");
                continue;
            }
            if event != "postgres_changes" {
                continue;
            }
            let data = &payload["data"];
            // A delete under RLS carries only the key in `old_record`, as
            // on Supabase.
            let row = if data["type"] == "DELETE" {
                &data["old_record"]
            } else {
                &data["record"]
            };
            let id = row["id"].as_i64().expect("a key") as i32;
            assert_eq!(owner_of[&id], s, "subscriber {s}: {payload}");
            got += 1;
        }
        // Nothing more: a second delivery would show up here.
        let mut extra = Vec::new();
        while let Some(Got::Msg { event, payload, .. }) =
            client.next_frame(Duration::from_millis(300)).await
        {
            if event == "postgres_changes" {
                extra.push(payload);
            }
        }
        assert!(extra.is_empty(), "subscriber {s} got more: {extra:?}");
    }
}
