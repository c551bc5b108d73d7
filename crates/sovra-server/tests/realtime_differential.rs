//! Differential test of database-change authorisation: randomised tables,
//! policies, privileges, subscribers and writes; for every committed change
//! and every subscriber, the change is delivered if and only if PostgreSQL
//! lets that subscriber SELECT the row (for deletes: the row as it was),
//! asked directly as that subscriber right after (or, for deletes, right
//! before) each statement, inside the writing transaction.
//!
//! Seeded and reproducible: the seed is printed; `SOVRA_DIFF_SEED=<n>`
//! replays one, `SOVRA_DIFF_ROUNDS=<n>` runs more seeds.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// The seed and what differed are printed, so that a failure can be replayed.
#![allow(clippy::print_stdout)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sovra_test_support::TestApp;
use support::realtime_client::{Client, Got, feed_ready, init_logs, pg_join};

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

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

struct Subscriber {
    role: String,
    claims: Map<String, Value>,
    token: String,
    uid: String,
}

struct Table {
    name: String,
    full: bool,
    rls: bool,
}

/// One change as a subscriber should receive it.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    table: String,
    kind: String,
    id: i64,
    /// `record` for inserts and updates (only the columns it may read).
    record: Option<Value>,
}

const COLUMNS: [&str; 6] = ["id", "owner_id", "room_id", "team", "level", "secret"];

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("SOVRA_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let rounds: u64 = std::env::var("SOVRA_DIFF_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7);
    (0..rounds).map(|i| base.wrapping_add(i * 7919)).collect()
}

#[tokio::test]
async fn delivered_exactly_when_postgres_would_show_the_row() {
    for seed in seeds() {
        println!("differential seed {seed} (SOVRA_DIFF_SEED={seed} replays it)");
        run(seed).await;
    }
}

async fn run(seed: u64) {
    let mut rng = Rng(seed);
    init_logs();
    // The clients are read one after the other after all writes: room for
    // every change (the queue limit is not what this test is about).
    let mut config = sovra_config::Config::default();
    config.realtime.outbound_queue_bytes = 1 << 28;
    let app = TestApp::spawn_with(config).await;
    let p = format!("d{}", rng.below(1_000_000));
    let team = format!("rt_{p}_team");
    let inherit = format!("rt_{p}_inherit");
    let noinherit = format!("rt_{p}_noinherit");
    let db = app.db.client().await;

    // Roles: a team role, one member that inherits it, one that does not.
    db.batch_execute(&format!(
        "create role {team} nologin;
         create role {inherit} nologin inherit;
         create role {noinherit} nologin noinherit;
         grant {team} to {inherit}, {noinherit};
         grant {inherit}, {noinherit} to authenticator;
         grant usage on schema public, auth to {team}, {inherit}, {noinherit};
         grant execute on all functions in schema auth to {team}, {inherit}, {noinherit};
         create table public.rt_members (room_id int, user_id uuid, primary key (room_id, user_id));
         grant select on public.rt_members to public;
         create function public.{p}_cleared(l int) returns boolean
           language sql stable security definer set search_path = ''
           as $$ select l <= coalesce((auth.jwt() ->> 'clearance')::int, 0) $$;
         create table public.rt_marker (id bigint generated always as identity primary key, note text);
         grant select on public.rt_marker to public;
         alter publication supabase_realtime add table public.rt_marker;"
    ))
    .await
    .unwrap();

    // Subscribers.
    let roles = [
        "authenticated",
        "authenticated",
        "anon",
        inherit.as_str(),
        noinherit.as_str(),
    ];
    let mut subscribers = Vec::new();
    for _ in 0..7 {
        let uid = uuid::Uuid::new_v4().to_string();
        let role = (*rng.pick(&roles)).to_owned();
        let mut claims = TestApp::user_claims(&uid);
        claims.insert("role".to_owned(), json!(role));
        claims.insert("team".to_owned(), json!(rng.below(3).to_string()));
        claims.insert("clearance".to_owned(), json!(rng.below(10).to_string()));
        let token = app.sign(Value::Object(claims.clone()));
        subscribers.push(Subscriber {
            role,
            claims,
            token,
            uid,
        });
    }
    for s in &subscribers {
        for room in 0..4 {
            if rng.chance(40) {
                db.execute(
                    "insert into rt_members values ($1, $2::text::uuid)",
                    &[&room, &s.uid],
                )
                .await
                .unwrap();
            }
        }
    }

    // Tables and their policies.
    let mut tables = Vec::new();
    for t in 0..3 {
        let name = format!("{p}_t{t}");
        let full = rng.chance(60);
        let rls = rng.chance(85);
        let mut sql = format!(
            "create table public.{name} (id bigint generated always as identity primary key,
               owner_id uuid, room_id int, team int, level int, secret text);
             revoke all on public.{name} from anon, authenticated, public;
             alter publication supabase_realtime add table public.{name};"
        );
        if full {
            sql.push_str(&format!("alter table public.{name} replica identity full;"));
        }
        if rls {
            sql.push_str(&format!(
                "alter table public.{name} enable row level security;"
            ));
        }
        // Privileges: table-wide, or only some columns.
        for grantee in ["authenticated", "anon", team.as_str(), noinherit.as_str()] {
            match rng.below(20) {
                0..=2 => {}
                3..=6 => sql.push_str(&format!(
                    "grant select (id, owner_id, room_id, team, level) on public.{name} to {grantee};"
                )),
                7..=8 => sql.push_str(&format!(
                    "grant select (owner_id, level) on public.{name} to {grantee};"
                )),
                _ => sql.push_str(&format!("grant select on public.{name} to {grantee};")),
            }
        }
        let shapes = [
            format!("create policy owner on public.{name} for select to authenticated using (owner_id = auth.uid());"),
            format!("create policy members on public.{name} for select to authenticated
                       using (exists (select 1 from rt_members m where m.room_id = {name}.room_id and m.user_id = auth.uid()));"),
            format!("create policy write_only on public.{name} for all to authenticated, anon with check (level > 0);"),
            format!("create policy low_levels on public.{name} as restrictive for select to authenticated using (level < 8);"),
            format!("create policy cleared on public.{name} for select to authenticated using (public.{p}_cleared(level));"),
            format!("create policy by_team on public.{name} for select to {team} using (team = (auth.jwt() ->> 'team')::int);"),
            format!("create policy team_restrict on public.{name} as restrictive for select to {team} using (level % 2 = 0);"),
            format!("create policy anon_level_one on public.{name} for select to anon using (level = 1);"),
        ];
        // Usually a permissive policy that shows something to someone.
        let odds = [70, 60, 30, 40, 50, 60, 40, 50];
        for (shape, odds) in shapes.iter().zip(odds) {
            if rng.chance(odds) {
                sql.push_str(shape);
            }
        }
        // Indexes on the policies' columns let PostgreSQL reach a group's
        // rows through them (the groups' selects are planned with the
        // batch's key range), which must not change what it decides.
        if rng.chance(50) {
            sql.push_str(&format!(
                "create index on public.{name} (owner_id); create index on public.{name} (level);"
            ));
        }
        db.batch_execute(&sql).await.unwrap();
        tables.push(Table { name, full, rls });
    }
    println!(
        "tables: {}",
        tables
            .iter()
            .map(|t| format!("{} (full {}, rls {})", t.name, t.full, t.rls))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // Every subscriber listens to every table (and the marker).
    let mut clients = Vec::new();
    for (n, s) in subscribers.iter().enumerate() {
        let mut client = Client::connect(&app, &app.anon_key, "2.0.0").await;
        let mut bindings: Vec<Value> = tables
            .iter()
            .map(|t| json!({"event": "*", "schema": "public", "table": t.name}))
            .collect();
        bindings.push(json!({"event": "INSERT", "schema": "public", "table": "rt_marker"}));
        pg_join(
            &mut client,
            &format!("realtime:diff{n}"),
            json!(bindings),
            &s.token,
        )
        .await;
        clients.push(client);
    }
    feed_ready(&app).await;

    // Which columns each subscriber may read, per table (asked as them).
    let mut readable: BTreeMap<(usize, String), Vec<String>> = BTreeMap::new();
    for (n, s) in subscribers.iter().enumerate() {
        for t in &tables {
            let row = db
                .query_one(
                    "select coalesce(array_agg(c) filter (where has_column_privilege($1::text::name,
                              ('public.' || $2)::regclass, c, 'SELECT')), '{}')
                     from unnest($3::text[]) c",
                    &[&s.role, &t.name, &COLUMNS.to_vec()],
                )
                .await
                .unwrap();
            readable.insert((n, t.name.clone()), row.get(0));
        }
    }

    // The writes, each statement checked as every subscriber.
    let mut expected: Vec<Vec<Expected>> = vec![Vec::new(); subscribers.len()];
    let mut writer = app.db.client().await;
    let owners: Vec<String> = subscribers.iter().map(|s| s.uid.clone()).collect();
    for step in 0..14 {
        let tx = writer.transaction().await.unwrap();
        let statements = 1 + rng.below(4);
        for _ in 0..statements {
            let t = &tables[rng.below(tables.len() as u64) as usize];
            let ids: Vec<i64> = tx
                .query(
                    &format!("select id from public.{} order by id", t.name),
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            let kind = match rng.below(10) {
                _ if ids.is_empty() => "INSERT",
                0..=4 => "INSERT",
                5..=7 => "UPDATE",
                _ => "DELETE",
            };
            let large = step == 7 && kind == "INSERT";
            let affected: Vec<i64> = match kind {
                "INSERT" => {
                    let n = if large { 600 } else { 1 + rng.below(5) };
                    let owner = rng.pick(&owners).clone();
                    let (room, team, level) = (
                        rng.below(4) as i32,
                        rng.below(3) as i32,
                        rng.below(10) as i32,
                    );
                    tx.query(
                        &format!(
                            "insert into public.{} (owner_id, room_id, team, level, secret)
                             select case when g % 3 = 0 then gen_random_uuid() else $1::text::uuid end,
                                    ($2 + g) % 4, ($3 + g) % 3, ($4 + g) % 10, 'secret ' || g
                             from generate_series(1, $5::int) g returning id",
                            t.name
                        ),
                        &[&owner, &room, &team, &level, &(n as i32)],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
                }
                "UPDATE" => {
                    let chosen: Vec<i64> = ids
                        .iter()
                        .copied()
                        .filter(|_| rng.chance(30))
                        .take(20)
                        .collect();
                    // Moves rows into and out of views: owner, room, team, level.
                    let owner = rng.pick(&owners).clone();
                    let column = rng.below(4);
                    let set = match column {
                        0 => "owner_id = $2::text::uuid".to_owned(),
                        1 => "room_id = (room_id + 1) % 4".to_owned(),
                        2 => "team = (team + 1) % 3".to_owned(),
                        _ => "level = (level + 3) % 10".to_owned(),
                    };
                    let sql = format!(
                        "update public.{} set {set} where id = any($1) returning id",
                        t.name
                    );
                    let rows = if column == 0 {
                        tx.query(&sql, &[&chosen, &owner]).await
                    } else {
                        tx.query(&sql.replace("$2::text::uuid", "null"), &[&chosen])
                            .await
                    };
                    rows.unwrap().iter().map(|r| r.get(0)).collect()
                }
                _ => {
                    let chosen: Vec<i64> = ids
                        .iter()
                        .copied()
                        .filter(|_| rng.chance(25))
                        .take(15)
                        .collect();
                    // Judged on the row as it was: asked before it goes.
                    let mut seen_before = Vec::new();
                    for s in &subscribers {
                        let seen = if t.full || !t.rls {
                            visible(&tx, s, &t.name, &chosen).await
                        } else {
                            // Default identity under RLS: only the key is
                            // known; who may read the key column gets it.
                            if may_read_key(&tx, s, &t.name).await {
                                chosen.clone()
                            } else {
                                Vec::new()
                            }
                        };
                        seen_before.push(seen);
                    }
                    // In the order PostgreSQL deletes (and logs) them.
                    let order: Vec<i64> = tx
                        .query(
                            &format!(
                                "delete from public.{} where id = any($1) returning id",
                                t.name
                            ),
                            &[&chosen],
                        )
                        .await
                        .unwrap()
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    for (n, seen) in seen_before.iter().enumerate() {
                        for id in &order {
                            if seen.contains(id) {
                                expected[n].push(Expected {
                                    table: t.name.clone(),
                                    kind: "DELETE".to_owned(),
                                    id: *id,
                                    record: None,
                                });
                            }
                        }
                    }
                    continue;
                }
            };
            // Inserts and updates: judged on the row right after.
            let mut rows: BTreeMap<i64, Value> = BTreeMap::new();
            for row in tx
                .query(
                    &format!(
                        "select id, to_jsonb(t) from public.{} t where id = any($1)",
                        t.name
                    ),
                    &[&affected],
                )
                .await
                .unwrap()
            {
                rows.insert(row.get(0), row.get(1));
            }
            for (n, s) in subscribers.iter().enumerate() {
                let seen = visible(&tx, s, &t.name, &affected).await;
                let columns = &readable[&(n, t.name.clone())];
                for id in &affected {
                    if seen.contains(id) {
                        let full = &rows[id];
                        let record: Map<String, Value> = full
                            .as_object()
                            .unwrap()
                            .iter()
                            .filter(|(k, _)| columns.contains(k))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        expected[n].push(Expected {
                            table: t.name.clone(),
                            kind: kind.to_owned(),
                            id: *id,
                            record: Some(Value::Object(record)),
                        });
                    }
                }
            }
        }
        tx.commit().await.unwrap();
    }
    db.execute("insert into rt_marker (note) values ('end')", &[])
        .await
        .unwrap();

    // What each subscriber got, in commit order, until the marker.
    let mut extra = 0;
    let mut missing = 0;
    for (n, client) in clients.iter_mut().enumerate() {
        let mut got: Vec<Expected> = Vec::new();
        loop {
            let frame = client.next_frame(Duration::from_secs(60)).await;
            let Some(Got::Msg { event, payload, .. }) = frame else {
                panic!("seed {seed}: subscriber {n} waiting for the marker, got {frame:?}");
            };
            if event == "system" {
                assert_ne!(payload["status"], "error", "seed {seed}: {payload}");
                continue;
            }
            if event != "postgres_changes" {
                continue;
            }
            let data = &payload["data"];
            if data["table"] == "rt_marker" {
                break;
            }
            let kind = data["type"].as_str().unwrap().to_owned();
            let id = if kind == "DELETE" {
                data["old_record"]["id"].as_i64()
            } else {
                data["record"]["id"].as_i64()
            };
            // A subscriber that may not read `id` has it left out.
            let id = id.unwrap_or(-1);
            got.push(Expected {
                table: data["table"].as_str().unwrap().to_owned(),
                kind: kind.clone(),
                id,
                record: (kind != "DELETE").then(|| data["record"].clone()),
            });
        }
        let want = &expected[n];
        // Records of subscribers that may not read `id` carry no id: match
        // them by content.
        let want_ids: Vec<Expected> = want
            .iter()
            .map(|e| Expected {
                id: if e.record.as_ref().is_some_and(|r| r.get("id").is_none()) {
                    -1
                } else {
                    e.id
                },
                ..e.clone()
            })
            .collect();
        if got != want_ids {
            for e in &want_ids {
                if !got.contains(e) {
                    missing += 1;
                    println!(
                        "seed {seed}: subscriber {n} ({}) missed {e:?}",
                        subscribers[n].role
                    );
                }
            }
            for g in &got {
                if !want_ids.contains(g) {
                    extra += 1;
                    println!(
                        "seed {seed}: subscriber {n} ({}) got extra {g:?}",
                        subscribers[n].role
                    );
                }
            }
            if extra == 0 && missing == 0 {
                panic!("seed {seed}: subscriber {n}: same changes in another order");
            }
        }
        println!(
            "seed {seed}: subscriber {n} ({}): {} changes, as expected: {}",
            subscribers[n].role,
            got.len(),
            got == want_ids
        );
    }
    assert_eq!(
        (extra, missing),
        (0, 0),
        "seed {seed}: extra and missing deliveries"
    );
}

/// The ids among `ids` that `s` may SELECT in `table`, asked as `s` (the
/// same settings `/rest/v1` makes), inside the writer's transaction.
async fn visible(
    tx: &sovra_pg::tokio_postgres::Transaction<'_>,
    s: &Subscriber,
    table: &str,
    ids: &[i64],
) -> Vec<i64> {
    tx.batch_execute("savepoint ask").await.unwrap();
    as_subscriber(tx, s).await;
    let seen = match tx
        .query(
            &format!("select id from public.{table} where id = any($1)"),
            &[&ids],
        )
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(err) if err.code().map(|c| c.code()) == Some("42501") => Vec::new(),
        Err(err) => panic!("asking as {}: {err}", s.role),
    };
    tx.batch_execute("rollback to savepoint ask").await.unwrap();
    seen
}

/// Whether `s` may read the key column of `table`.
async fn may_read_key(
    tx: &sovra_pg::tokio_postgres::Transaction<'_>,
    s: &Subscriber,
    table: &str,
) -> bool {
    tx.batch_execute("savepoint ask").await.unwrap();
    as_subscriber(tx, s).await;
    let ok = tx
        .query(&format!("select id from public.{table} where false"), &[])
        .await
        .is_ok();
    tx.batch_execute("rollback to savepoint ask").await.unwrap();
    ok
}

async fn as_subscriber(tx: &sovra_pg::tokio_postgres::Transaction<'_>, s: &Subscriber) {
    let claims = Value::Object(s.claims.clone()).to_string();
    tx.execute(
        "select set_config('role', $1, true), set_config('request.jwt.claims', $2, true),
                set_config('request.jwt.claim.sub', $3, true)",
        &[&s.role, &claims, &s.uid],
    )
    .await
    .unwrap();
}
