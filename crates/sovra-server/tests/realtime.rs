//! `/realtime/v1` through the real router on a real database, driven by a
//! WebSocket client speaking the Phoenix protocol as realtime-js does.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sovra_test_support::TestApp;
use support::realtime_client::{
    Client, Got, app, change_app, feed_ready, init_logs, pg_join, user,
};
use tokio_tungstenite::tungstenite::Message as Ws;

#[tokio::test]
async fn connecting_heartbeats_and_refusals() {
    let app = app().await;
    for vsn in ["1.0.0", "2.0.0"] {
        let mut c = Client::connect(&app, &app.anon_key, vsn).await;
        let r = c.send("phoenix", "heartbeat", json!({})).await;
        assert_eq!(c.reply(&r).await, json!({"status": "ok", "response": {}}));
        let r = c
            .send(
                "realtime:nowhere",
                "broadcast",
                json!({"type": "broadcast", "event": "x", "payload": {}}),
            )
            .await;
        assert_eq!(c.reply(&r).await["response"]["reason"], "unmatched topic");
        let reply = c.join("realtime:", json!({}), None).await;
        assert_eq!(reply["status"], "error");
        let reply = c.join("realtime:room", json!({}), Some("not-a-jwt")).await;
        assert_eq!(reply["status"], "error");
        assert!(
            reply["response"]["reason"]
                .as_str()
                .unwrap()
                .starts_with("InvalidJWTToken")
        );
        let expired =
            app.sign(json!({"role": "authenticated", "sub": "x", "exp": TestApp::now() - 100}));
        let reply = c.join("realtime:room", json!({}), Some(&expired)).await;
        assert!(
            reply["response"]["reason"]
                .as_str()
                .unwrap()
                .contains("expired"),
            "{reply}"
        );
        let reply = c
            .join("realtime:room", json!({"postgres_changes": []}), None)
            .await;
        assert_eq!(
            reply,
            json!({"status": "ok", "response": {"postgres_changes": []}})
        );
    }
    let http = reqwest::Client::new();
    let base = format!("{}/realtime/v1/websocket", app.url);
    let upgrade = |url: String| {
        http.get(url)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
    };
    let missing = upgrade(format!("{base}?vsn=2.0.0")).await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["error"],
        "API key is missing"
    );
    let bad = upgrade(format!("{base}?vsn=2.0.0&apikey=nope"))
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let forged = app.anon_key.clone() + "x";
    let forged = upgrade(format!("{base}?vsn=2.0.0&apikey={forged}"))
        .await
        .unwrap();
    assert_eq!(
        forged.json::<Value>().await.unwrap()["error"],
        "Failed to validate JWT signature"
    );
    let vsn = upgrade(format!("{base}?vsn=9.9&apikey={}", app.anon_key))
        .await
        .unwrap();
    assert_eq!(vsn.status(), 400);
}

#[tokio::test]
async fn broadcast_between_clients_with_self_ack_binary_and_http() {
    let app = app().await;
    let mut a = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let mut b = Client::connect(&app, &app.anon_key, "1.0.0").await;
    assert_eq!(
        a.join(
            "realtime:room1",
            json!({"broadcast": {"self": false, "ack": true}}),
            None
        )
        .await["status"],
        "ok"
    );
    assert_eq!(
        b.join("realtime:room1", json!({"broadcast": {"self": true}}), None)
            .await["status"],
        "ok"
    );

    let r = a
        .send(
            "realtime:room1",
            "broadcast",
            json!({"type": "broadcast", "event": "cursor", "payload": {"x": 1}}),
        )
        .await;
    assert_eq!(a.reply(&r).await["status"], "ok", "ack");
    let (topic, payload, msg_ref) = b.expect("broadcast").await;
    assert_eq!(topic, "realtime:room1");
    assert_eq!(
        payload,
        json!({"type": "broadcast", "event": "cursor", "payload": {"x": 1}})
    );
    assert_eq!(msg_ref, None);
    a.silent("broadcast", Duration::from_millis(300)).await;

    // self: b hears its own message.
    b.send(
        "realtime:room1",
        "broadcast",
        json!({"type": "broadcast", "event": "hi", "payload": {"n": 2}}),
    )
    .await;
    assert_eq!(b.expect("broadcast").await.1["event"], "hi");
    assert_eq!(a.expect("broadcast").await.1["payload"], json!({"n": 2}));

    // Binary kind-3 frames from realtime-js, JSON-encoded payload.
    let mut frame = vec![3u8, 1, 2, 14, 4, 0, 1];
    frame.extend_from_slice(b"9");
    frame.extend_from_slice(b"99");
    frame.extend_from_slice(b"realtime:room1");
    frame.extend_from_slice(b"move");
    frame.extend_from_slice(br#"{"y":3}"#);
    a.send_frame(Ws::Binary(frame.into())).await;
    assert_eq!(a.reply("99").await["status"], "ok");
    assert_eq!(
        b.expect("broadcast").await.1,
        json!({"type": "broadcast", "event": "move", "payload": {"y": 3}})
    );

    // Server-side broadcast over HTTP reaches both.
    let http = reqwest::Client::new();
    let sent = http
        .post(format!("{}/realtime/v1/api/broadcast", app.url))
        .header("apikey", &app.service_role_key)
        .bearer_auth(&app.service_role_key)
        .json(&json!({"messages": [{"topic": "room1", "event": "news", "payload": {"z": 9}, "private": false}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    assert_eq!(a.expect("broadcast").await.1["event"], "news");
    assert_eq!(b.expect("broadcast").await.1["payload"], json!({"z": 9}));
    let one = http
        .post(format!(
            "{}/realtime/v1/api/broadcast/room1/events/ping",
            app.url
        ))
        .header("apikey", &app.anon_key)
        .json(&json!({"p": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 202);
    assert_eq!(b.expect("broadcast").await.1["event"], "ping");
    let invalid = http
        .post(format!("{}/realtime/v1/api/broadcast", app.url))
        .header("apikey", &app.anon_key)
        .json(&json!({"messages": [{"event": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 422);

    // Leaving: reply ok, then phx_close; no more messages.
    let r = b.send("realtime:room1", "phx_leave", json!({})).await;
    assert_eq!(b.reply(&r).await["status"], "ok");
    b.expect("phx_close").await;
    a.send(
        "realtime:room1",
        "broadcast",
        json!({"type": "broadcast", "event": "after", "payload": {}}),
    )
    .await;
    b.silent("broadcast", Duration::from_millis(300)).await;
}

#[tokio::test]
async fn presence_syncs_and_leaves_when_a_socket_drops() {
    let app = app().await;
    let mut a = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let mut b = Client::connect(&app, &app.anon_key, "2.0.0").await;
    a.join(
        "realtime:lobby",
        json!({"presence": {"key": "alice", "enabled": true}}),
        None,
    )
    .await;
    let (_, state, _) = a.expect("presence_state").await;
    assert_eq!(state, json!({}));
    let r = a
        .send(
            "realtime:lobby",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"online": true}}),
        )
        .await;
    // The diff goes out before the reply.
    let (_, diff, _) = a.expect("presence_diff").await;
    assert_eq!(a.reply(&r).await["status"], "ok");
    assert_eq!(diff["joins"]["alice"]["metas"][0]["online"], true);
    assert!(diff["joins"]["alice"]["metas"][0]["phx_ref"].is_string());

    b.join(
        "realtime:lobby",
        json!({"presence": {"key": "bob", "enabled": true}}),
        None,
    )
    .await;
    let (_, state, _) = b.expect("presence_state").await;
    assert_eq!(state["alice"]["metas"][0]["online"], true);

    // Re-tracking replaces the meta (leave old + join new with phx_ref_prev).
    let r = a
        .send(
            "realtime:lobby",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"online": false}}),
        )
        .await;
    a.reply(&r).await;
    let (_, diff, _) = b.expect("presence_diff").await;
    assert_eq!(diff["joins"]["alice"]["metas"][0]["online"], false);
    assert!(diff["joins"]["alice"]["metas"][0]["phx_ref_prev"].is_string());
    assert_eq!(diff["leaves"]["alice"]["metas"][0]["online"], true);

    let bad = a
        .send(
            "realtime:lobby",
            "presence",
            json!({"type": "presence", "event": "track", "payload": 5}),
        )
        .await;
    assert_eq!(
        a.reply(&bad).await["response"]["reason"],
        "Presence track payload must be a map"
    );

    // Dropping the socket leaves presence at once.
    drop(a);
    let (_, diff, _) = b.expect("presence_diff").await;
    assert_eq!(diff["leaves"]["alice"]["metas"][0]["online"], false);
    assert_eq!(diff["joins"], json!({}));
}

const FIXTURE: &str = "
  create table public.notes (
    id bigint generated always as identity primary key,
    owner_id uuid not null,
    body text,
    big text,
    done boolean default false
  );
  alter table public.notes replica identity full;
  alter table public.notes enable row level security;
  create policy own on public.notes for select to authenticated using (owner_id = auth.uid());
  grant select on public.notes to authenticated, anon;
  create table public.nokey (v int);
  grant select on public.nokey to authenticated, anon;
  alter publication supabase_realtime add table public.notes, public.nokey;
";

#[tokio::test]
async fn database_changes_in_commit_order_under_rls() {
    let app = change_app(FIXTURE).await;
    let (alice, alice_token) = user(&app);
    let (bob, bob_token) = user(&app);
    let mut a = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let mut b = Client::connect(&app, &app.anon_key, "1.0.0").await;
    let ids = pg_join(
        &mut a,
        "realtime:notes",
        json!([{"event": "*", "schema": "public", "table": "notes"}]),
        &alice_token,
    )
    .await;
    let reply = b.join("realtime:notes", json!({"postgres_changes": [{"event": "INSERT", "schema": "public", "table": "notes", "filter": "done=eq.false"}]}), Some(&bob_token)).await;
    assert_eq!(
        reply["response"]["postgres_changes"][0]["filter"], "done=eq.false",
        "bindings are echoed"
    );
    b.expect("system").await;
    feed_ready(&app).await;

    let db = app.db.client().await;
    db.execute(
        "insert into notes (owner_id, body) values ($1::text::uuid, 'one')",
        &[&alice],
    )
    .await
    .unwrap();
    db.execute(
        "insert into notes (owner_id, body) values ($1::text::uuid, 'for bob')",
        &[&bob],
    )
    .await
    .unwrap();
    db.execute("update notes set body = 'two' where body = 'one'", &[])
        .await
        .unwrap();

    let (topic, payload, msg_ref) = a.expect("postgres_changes").await;
    assert_eq!(topic, "realtime:notes");
    assert_eq!(msg_ref, None);
    assert_eq!(payload["ids"], json!(ids));
    let data = &payload["data"];
    assert_eq!(data["type"], "INSERT");
    assert_eq!(data["schema"], "public");
    assert_eq!(data["table"], "notes");
    assert_eq!(data["record"]["body"], "one");
    assert_eq!(data["record"]["owner_id"], alice.as_str());
    assert_eq!(data["record"]["done"], false);
    assert!(data["record"]["id"].is_i64());
    assert_eq!(data["errors"], Value::Null);
    assert!(
        data["columns"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "id", "type": "int8"}))
    );
    assert!(data["commit_timestamp"].as_str().unwrap().ends_with('Z'));
    let (_, update, _) = a.expect("postgres_changes").await;
    assert_eq!(
        update["data"]["type"], "UPDATE",
        "alice never sees bob's row"
    );
    assert_eq!(update["data"]["record"]["body"], "two");
    // Under RLS the old row may not have been visible: only its key is
    // sent, as Supabase does, even with REPLICA IDENTITY FULL.
    let old = update["data"]["old_record"].as_object().unwrap();
    assert_eq!(old.keys().collect::<Vec<_>>(), ["id"], "{old:?}");

    let (_, bobs, _) = b.expect("postgres_changes").await;
    assert_eq!(
        bobs["data"]["record"]["body"], "for bob",
        "bob sees only his row"
    );
    b.silent("postgres_changes", Duration::from_millis(500))
        .await;

    // A large transaction arrives whole and in order.
    db.batch_execute(&format!(
        "insert into notes (owner_id, body) select '{alice}', 'row ' || g from generate_series(1, 300) g"
    ))
    .await
    .unwrap();
    for n in 1..=300 {
        let (_, p, _) = a.expect("postgres_changes").await;
        assert_eq!(p["data"]["record"]["body"], format!("row {n}"));
    }

    // TOASTed values that did not change stay in the record.
    let big = "x".repeat(100_000);
    db.execute("update notes set big = $1 where body = 'row 1'", &[&big])
        .await
        .unwrap();
    a.expect("postgres_changes").await;
    db.execute("update notes set done = true where body = 'row 1'", &[])
        .await
        .unwrap();
    let (_, p, _) = a.expect("postgres_changes").await;
    assert_eq!(p["data"]["record"]["done"], true);
    assert_eq!(
        p["data"]["record"]["big"].as_str().map(str::len),
        Some(100_000)
    );

    // Deletes reach subscribers whose filter passes and whose policy allows
    // the old row (REPLICA IDENTITY FULL), with key columns only under RLS.
    db.execute("delete from notes where body = 'two'", &[])
        .await
        .unwrap();
    let (_, p, _) = a.expect("postgres_changes").await;
    assert_eq!(p["data"]["type"], "DELETE");
    assert!(p["data"]["old_record"]["id"].is_i64());
    assert!(p["data"]["old_record"].get("body").is_none());
    // Bob is not told of Alice's deletes, only of his own.
    let mut d = Client::connect(&app, &app.anon_key, "2.0.0").await;
    pg_join(
        &mut d,
        "realtime:deletes",
        json!([{"event": "DELETE", "schema": "public", "table": "notes"}]),
        &bob_token,
    )
    .await;
    let bobs_id: i64 = db
        .query_one("select id from notes where body = 'for bob'", &[])
        .await
        .unwrap()
        .get(0);
    db.execute("delete from notes where body = 'row 2'", &[])
        .await
        .unwrap();
    db.execute("delete from notes where body = 'for bob'", &[])
        .await
        .unwrap();
    let (_, p, _) = d.expect("postgres_changes").await;
    assert_eq!(p["data"]["type"], "DELETE");
    assert_eq!(
        p["data"]["old_record"]["id"], bobs_id,
        "the first delete bob hears is his own"
    );
    d.silent("postgres_changes", Duration::from_millis(300))
        .await;
    let (_, p, _) = a.expect("postgres_changes").await;
    assert_eq!(p["data"]["type"], "DELETE", "alice hears of her row 2");

    // Tables without a primary key are reported, not checked.
    let mut s = Client::connect(&app, &app.service_role_key, "2.0.0").await;
    pg_join(
        &mut s,
        "realtime:nokey",
        json!([{"event": "INSERT", "schema": "public", "table": "nokey"}]),
        &app.service_role_key,
    )
    .await;
    db.execute("insert into nokey values (1)", &[])
        .await
        .unwrap();
    let (_, p, _) = s.expect("postgres_changes").await;
    assert_eq!(
        p["data"]["errors"],
        json!(["Error 400: Bad Request, no primary key"])
    );
}

#[tokio::test]
async fn filters_bad_filters_and_resuming_after_the_feed_stops() {
    let app = change_app(FIXTURE).await;
    let (alice, alice_token) = user(&app);
    let mut a = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = a
        .join(
            "realtime:f",
            json!({"postgres_changes": [
                {"event": "INSERT", "schema": "public", "table": "notes", "filter": "body=in.(keep,also)"},
                {"event": "INSERT", "schema": "public", "table": "notes", "filter": "body=fts.x"}
            ]}),
            Some(&alice_token),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    let (_, system, _) = a.expect("system").await;
    assert_eq!(system["status"], "error");
    assert!(
        system["message"]
            .as_str()
            .unwrap()
            .starts_with("Error parsing `filter` params")
    );
    feed_ready(&app).await;
    let db = app.db.client().await;
    for body in ["drop", "keep", "also"] {
        db.execute(
            "insert into notes (owner_id, body) values ($1::text::uuid, $2)",
            &[&alice, &body],
        )
        .await
        .unwrap();
    }
    assert_eq!(
        a.expect("postgres_changes").await.1["data"]["record"]["body"],
        "keep"
    );
    assert_eq!(
        a.expect("postgres_changes").await.1["data"]["record"]["body"],
        "also"
    );

    // Stop the feed, commit, start it again: nothing committed meanwhile is lost.
    app.tenant.realtime.stop_feed();
    for n in 0..5 {
        db.execute(
            "insert into notes (owner_id, body) values ($1::text::uuid, $2)",
            &[&alice, &if n % 2 == 0 { "keep" } else { "also" }],
        )
        .await
        .unwrap();
    }
    a.silent("postgres_changes", Duration::from_millis(500))
        .await;
    app.tenant.realtime.start_feed(app.db.config());
    for _ in 0..5 {
        a.expect("postgres_changes").await;
    }
}

#[tokio::test]
async fn private_channels_follow_policies_on_realtime_messages() {
    let app = app().await;
    app.db
        .client()
        .await
        .batch_execute(
            "create policy read_own on realtime.messages for select to authenticated
               using (realtime.topic() = 'secret:' || auth.uid()::text);
             create policy write_own on realtime.messages for insert to authenticated
               with check (realtime.topic() = 'secret:' || auth.uid()::text);",
        )
        .await
        .unwrap();
    let (alice, alice_token) = user(&app);
    let (_, bob_token) = user(&app);
    let topic = format!("realtime:secret:{alice}");
    let mut a = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let mut b = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = a
        .join(
            &topic,
            json!({"private": true, "broadcast": {"self": true, "ack": true}}),
            Some(&alice_token),
        )
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let refused = b
        .join(&topic, json!({"private": true}), Some(&bob_token))
        .await;
    assert_eq!(refused["status"], "error");
    assert_eq!(
        refused["response"]["reason"],
        format!(
            "Unauthorized: You do not have permissions to read from this Channel topic: secret:{alice}"
        )
    );
    let anon = b.join(&topic, json!({"private": true}), None).await;
    assert_eq!(anon["status"], "error");
    // The public channel of the same name is another topic.
    assert_eq!(
        b.join(&topic, json!({"private": false}), Some(&bob_token))
            .await["status"],
        "ok"
    );

    let r = a
        .send(
            &topic,
            "broadcast",
            json!({"type": "broadcast", "event": "e", "payload": {"k": 1}}),
        )
        .await;
    assert_eq!(
        a.expect("broadcast").await.1["payload"],
        json!({"k": 1}),
        "self: the sender hears it, before the ack"
    );
    assert_eq!(a.reply(&r).await["status"], "ok");
    b.silent("broadcast", Duration::from_millis(300)).await;

    // Over HTTP, a private message needs the topic's write policy: Bob's
    // is dropped, Alice's arrives.
    let http = reqwest::Client::new();
    for (token, event) in [(&bob_token, "from-bob"), (&alice_token, "from-alice")] {
        let sent = http
            .post(format!("{}/realtime/v1/api/broadcast", app.url))
            .header("apikey", &app.anon_key)
            .bearer_auth(token)
            .json(&json!({"messages": [{"topic": format!("secret:{alice}"), "event": event, "payload": {}, "private": true}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 202);
    }
    assert_eq!(
        a.expect("broadcast").await.1["event"],
        "from-alice",
        "bob's message never arrives"
    );

    // A forged token sent on a live channel closes it with a reason.
    a.send(
        &topic,
        "access_token",
        json!({"access_token": format!("{alice_token}x")}),
    )
    .await;
    let (_, system, _) = a.expect("system").await;
    assert_eq!(system["status"], "error");
    assert!(
        system["message"]
            .as_str()
            .unwrap()
            .starts_with("InvalidJWTToken"),
        "{system}"
    );
    a.expect("phx_close").await;
    let r = a
        .send(
            &topic,
            "broadcast",
            json!({"type": "broadcast", "event": "e", "payload": {}}),
        )
        .await;
    assert_eq!(a.reply(&r).await["response"]["reason"], "unmatched topic");
    let reply = a
        .join(&topic, json!({"private": true}), Some(&alice_token))
        .await;
    assert_eq!(reply["status"], "ok", "a fresh token joins again");

    // Broadcast from SQL reaches the private subscribers.
    feed_ready(&app).await;
    app.db
        .client()
        .await
        .execute(
            "select realtime.send('{\"from\":\"sql\"}'::jsonb, 'db', $1, true)",
            &[&format!("secret:{alice}")],
        )
        .await
        .unwrap();
    let (_, p, _) = a.expect("broadcast").await;
    assert_eq!(p["event"], "db");
    assert_eq!(p["payload"]["from"], "sql");
    assert!(p["payload"]["id"].is_string());
}

#[tokio::test]
async fn limits_close_connections_with_a_reason() {
    init_logs();
    let mut config = sovra_config::Config::default();
    config.realtime.max_channels_per_connection = 2;
    config.realtime.max_events_per_second = 20;
    config.realtime.idle_timeout = 2;
    config.realtime.outbound_queue_bytes = 65_536;
    config.realtime.max_connections = 3;
    config.realtime.max_frame_size = 2048;
    let app = TestApp::spawn_with(config).await;

    let mut c = Client::connect(&app, &app.anon_key, "2.0.0").await;
    assert_eq!(c.join("realtime:a", json!({}), None).await["status"], "ok");
    assert_eq!(c.join("realtime:b", json!({}), None).await["status"], "ok");
    let third = c.join("realtime:c", json!({}), None).await;
    assert_eq!(
        third["response"]["reason"],
        "ChannelRateLimitReached: Too many channels"
    );

    // Too many messages per second.
    for _ in 0..30 {
        c.send(
            "realtime:a",
            "broadcast",
            json!({"type": "broadcast", "event": "x", "payload": {}}),
        )
        .await;
    }
    assert!(c.closed().await.1.contains("rate limit"));

    // Idle: no heartbeat for longer than the timeout.
    let mut idle = Client::connect(&app, &app.anon_key, "2.0.0").await;
    assert!(idle.closed().await.1.contains("idle"));

    // Frames over the size limit end the connection.
    let mut big = Client::connect(&app, &app.anon_key, "2.0.0").await;
    big.send(
        "realtime:a",
        "broadcast",
        json!({"type": "broadcast", "event": "x", "payload": {"p": "y".repeat(4096)}}),
    )
    .await;
    big.closed().await;

    // A consumer that does not read is cut off, not buffered without end.
    let mut slow = Client::connect(&app, &app.anon_key, "2.0.0").await;
    slow.join("realtime:flood", json!({}), None).await;
    let http = reqwest::Client::new();
    let payload = json!({"blob": "z".repeat(1000)});
    let messages: Vec<Value> = (0..200)
        .map(|_| json!({"topic": "flood", "event": "f", "payload": payload}))
        .collect();
    for _ in 0..50 {
        http.post(format!("{}/realtime/v1/api/broadcast", app.url))
            .header("apikey", &app.service_role_key)
            .bearer_auth(&app.service_role_key)
            .json(&json!({"messages": messages}))
            .send()
            .await
            .unwrap();
    }
    // Its queue and the TCP buffers are full, so the close frame may not
    // reach it; the connection ends and the metric counts the cut-off.
    slow.closed().await;
    let metrics = http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sovra_realtime_disconnects_total{reason=\"slow_consumer\"}"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Connection limit.
    let _held: Vec<Client> = futures_util::future::join_all(
        (0..3).map(|_| Client::connect(&app, &app.anon_key, "2.0.0")),
    )
    .await;
    let url = format!(
        "{}/realtime/v1/websocket?apikey={}&vsn=2.0.0",
        app.url.replace("http", "ws"),
        app.anon_key
    );
    let refused = tokio_tungstenite::connect_async(url).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_slot_too_far_behind_is_skipped_and_subscribers_are_told() {
    init_logs();
    let mut config = sovra_config::Config::default();
    // Any lag at all counts as too far: the policy must fire.
    config.realtime.max_slot_lag = 0;
    let app = TestApp::spawn_with(config).await;
    app.db.client().await.batch_execute(FIXTURE).await.unwrap();
    let mut s = Client::connect(&app, &app.service_role_key, "2.0.0").await;
    pg_join(
        &mut s,
        "realtime:lag",
        json!([{"event": "*", "schema": "public", "table": "notes"}]),
        &app.service_role_key,
    )
    .await;
    feed_ready(&app).await;
    let db = app.db.client().await;
    db.execute(
        "insert into notes (owner_id, body) values (gen_random_uuid(), 'x')",
        &[],
    )
    .await
    .unwrap();
    // The lag check runs every few seconds, right after the feed confirms
    // what it read; it finds the slot behind when WAL was written after
    // that confirmation. A writer in the background keeps WAL moving all
    // the time, so that nearly every check sees the slot behind; it then
    // skips to the present and says so on every change channel. The
    // deadline is generous for a loaded machine (not a speed claim), and
    // the client heartbeats meanwhile so the socket is not idle.
    let writer = {
        let db = app.db.client().await;
        tokio::spawn(async move {
            loop {
                let _ = db
                    .execute(
                        "insert into notes (owner_id, body) values (gen_random_uuid(), 'y')",
                        &[],
                    )
                    .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    'wait: loop {
        assert!(tokio::time::Instant::now() < deadline, "no skip notice");
        s.send("phoenix", "heartbeat", json!({})).await;
        let beat = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < beat {
            let Some(got) = s.next_frame(Duration::from_millis(300)).await else {
                continue;
            };
            match got {
                Got::Msg { event, payload, .. }
                    if event == "system" && payload["status"] == "error" =>
                {
                    assert_eq!(payload["extension"], "postgres_changes");
                    assert!(
                        payload["message"].as_str().unwrap().contains("skipped"),
                        "{payload}"
                    );
                    break 'wait;
                }
                Got::Msg { .. } => {}
                Got::Closed(code, reason) => panic!("closed: {code} {reason}"),
            }
        }
    }
    writer.abort();
    let metrics = reqwest::get(format!("{}/metrics", app.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sovra_realtime_slot_skips_total"),
        "{metrics}"
    );
}

/// The changes (by body and type) that arrive before the next `system`
/// message, and that message.
async fn changes_until_system(client: &mut Client) -> (Vec<(String, String)>, Value) {
    let mut seen = Vec::new();
    loop {
        let Some(got) = client.next_frame(Duration::from_secs(10)).await else {
            panic!("no system message after the replay");
        };
        match got {
            Got::Msg { event, payload, .. } if event == "postgres_changes" => {
                let data = &payload["data"];
                seen.push((
                    data["record"]["body"].as_str().unwrap_or("").to_owned(),
                    data["type"].as_str().unwrap().to_owned(),
                ));
            }
            Got::Msg { event, payload, .. } if event == "system" => return (seen, payload),
            Got::Msg { .. } => {}
            Got::Closed(code, reason) => panic!("closed: {code} {reason}"),
        }
    }
}

#[tokio::test]
async fn a_client_that_rejoins_with_since_catches_up_on_what_it_may_see() {
    let app = change_app(FIXTURE).await;
    let (alice, alice_token) = user(&app);
    let (bob, bob_token) = user(&app);
    let binding = json!([{"event": "*", "schema": "public", "table": "notes"}]);
    // A service-role observer tells when the feed has delivered.
    let mut observer = Client::connect(&app, &app.service_role_key, "2.0.0").await;
    pg_join(
        &mut observer,
        "realtime:all",
        binding.clone(),
        &app.service_role_key,
    )
    .await;
    let mut a = Client::connect(&app, &app.anon_key, "2.0.0").await;
    pg_join(&mut a, "realtime:notes", binding.clone(), &alice_token).await;
    feed_ready(&app).await;
    // A server keeps only what it delivered: a catch-up reaching (with its
    // one-second slack) before the server started is reported incomplete.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let db = app.db.client().await;
    let insert = "insert into notes (owner_id, body) values ($1::text::uuid, $2)";
    db.execute(insert, &[&alice, &"seen"]).await.unwrap();
    let (_, seen, _) = a.expect("postgres_changes").await;
    let since = seen["data"]["commit_timestamp"]
        .as_str()
        .unwrap()
        .to_owned();
    observer.expect("postgres_changes").await;
    drop(a);

    // While alice is away: hers, bob's (hidden from her), an update of hers.
    db.execute(insert, &[&alice, &"missed"]).await.unwrap();
    db.execute(insert, &[&bob, &"bobs"]).await.unwrap();
    db.execute(
        "update notes set body = 'missed again' where body = 'missed'",
        &[],
    )
    .await
    .unwrap();
    for _ in 0..3 {
        observer.expect("postgres_changes").await;
    }

    let with_since =
        |since: &str| json!([{"event": "*", "schema": "public", "table": "notes", "since": since}]);
    let mut a = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = a
        .join(
            "realtime:notes",
            json!({"postgres_changes": with_since(&since)}),
            Some(&alice_token),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    assert_eq!(
        reply["response"]["postgres_changes"][0]["since"], since,
        "the extension key is echoed, so realtime-js matches the binding"
    );
    let (_, subscribed, _) = a.expect("system").await;
    assert_eq!(subscribed["status"], "ok");
    let (replayed, done) = changes_until_system(&mut a).await;
    assert_eq!(done["status"], "ok", "{done}");
    assert!(
        done["message"]
            .as_str()
            .unwrap()
            .starts_with("Caught up on")
    );
    // At least once from `since`: the change seen last may come again.
    let replayed: Vec<_> = replayed.into_iter().filter(|(b, _)| b != "seen").collect();
    assert_eq!(
        replayed,
        vec![
            ("missed".to_owned(), "INSERT".to_owned()),
            ("missed again".to_owned(), "UPDATE".to_owned()),
        ],
        "alice gets hers, in commit order, and never bob's"
    );
    // Live changes follow the replay.
    db.execute(insert, &[&alice, &"live"]).await.unwrap();
    assert_eq!(
        a.expect("postgres_changes").await.1["data"]["record"]["body"],
        "live"
    );

    // Bob, rejoining from the same point, gets only his.
    let mut b = Client::connect(&app, &app.anon_key, "1.0.0").await;
    b.join(
        "realtime:notes",
        json!({"postgres_changes": with_since(&since)}),
        Some(&bob_token),
    )
    .await;
    b.expect("system").await;
    let (replayed, done) = changes_until_system(&mut b).await;
    assert_eq!(done["status"], "ok");
    assert_eq!(replayed, vec![("bobs".to_owned(), "INSERT".to_owned())]);

    // From before this server kept anything: the client is told to reload.
    let mut c = Client::connect(&app, &app.anon_key, "2.0.0").await;
    c.join(
        "realtime:notes",
        json!({"postgres_changes": with_since("2000-01-01T00:00:00.000Z")}),
        Some(&alice_token),
    )
    .await;
    c.expect("system").await;
    let (_, error, _) = c.expect("system").await;
    assert_eq!(error["status"], "error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .starts_with("Cannot catch up from 2000-01-01T00:00:00.000Z"),
        "{error}"
    );

    // A `since` that is not a timestamp is refused like a bad filter.
    let mut d = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = d
        .join(
            "realtime:notes",
            json!({"postgres_changes": with_since("yesterday")}),
            Some(&alice_token),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    let (_, error, _) = d.expect("system").await;
    assert_eq!(error["status"], "error");
    assert!(error["message"].as_str().unwrap().contains("since must be"));
}

/// Waits until `app` hears from `n` other instances on the bus.
async fn peers(app: &TestApp, n: usize) {
    for _ in 0..200 {
        if app.tenant.realtime.peers() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the instances did not meet on the bus");
}

#[tokio::test]
async fn two_instances_share_broadcast_presence_and_changes_over_nats() {
    let nats = sovra_test_support::NatsServer::start().await;
    init_logs();
    let mut config = sovra_config::Config::default();
    config.realtime.nats_url = nats.url.clone();
    // One bus per test: tests share the NATS server only with themselves,
    // but keep the subject unique anyway.
    config.realtime.nats_subject = format!("test{}", uuid::Uuid::new_v4().simple());
    let one = TestApp::spawn_with(config.clone()).await;
    one.db.client().await.batch_execute(FIXTURE).await.unwrap();
    let two = one.spawn_peer(config.clone()).await;
    peers(&one, 1).await;
    peers(&two, 1).await;

    // Garbage published on the tenant's subject is counted and skipped.
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut raw = tokio::net::TcpStream::connect(nats.url.trim_start_matches("nats://"))
            .await
            .unwrap();
        let subject = format!("{}.default", config.realtime.nats_subject);
        raw.write_all(
            format!("CONNECT {{\"verbose\":false}}\r\nPUB {subject} 9\r\nnot json!\r\nPING\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 1024];
        while !seen.contains("PONG") {
            let n = raw.read(&mut buf).await.unwrap();
            assert!(n > 0, "nats closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }

    // Presence tracked on one is in the state a client of two gets.
    let mut a = Client::connect(&one, &one.anon_key, "2.0.0").await;
    a.join(
        "realtime:room",
        json!({"presence": {"key": "alice", "enabled": true}, "broadcast": {"self": false}}),
        None,
    )
    .await;
    a.expect("presence_state").await;
    let r = a
        .send(
            "realtime:room",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"at": "one"}}),
        )
        .await;
    a.reply(&r).await;
    let mut b = Client::connect(&two, &two.anon_key, "1.0.0").await;
    let mut state = json!({});
    for _ in 0..50 {
        b.join(
            "realtime:room",
            json!({"presence": {"key": "bob", "enabled": true}}),
            None,
        )
        .await;
        state = b.expect("presence_state").await.1;
        if state.get("alice").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state["alice"]["metas"][0]["at"], "one", "{state}");
    let r = b
        .send(
            "realtime:room",
            "presence",
            json!({"type": "presence", "event": "track", "payload": {"at": "two"}}),
        )
        .await;
    b.reply(&r).await;
    let (_, diff, _) = a.expect("presence_diff").await;
    assert_eq!(diff["joins"]["bob"]["metas"][0]["at"], "two", "{diff}");

    // Broadcasts cross in both directions, and from the HTTP API.
    a.send(
        "realtime:room",
        "broadcast",
        json!({"type": "broadcast", "event": "hi", "payload": {"from": "one"}}),
    )
    .await;
    let (_, got, _) = b.expect("broadcast").await;
    assert_eq!(got["payload"]["from"], "one");
    b.send(
        "realtime:room",
        "broadcast",
        json!({"type": "broadcast", "event": "hi", "payload": {"from": "two"}}),
    )
    .await;
    let (_, got, _) = a.expect("broadcast").await;
    assert_eq!(got["payload"]["from"], "two");
    let status = reqwest::Client::new()
        .post(format!("{}/realtime/v1/api/broadcast", two.url))
        .header("apikey", &two.service_role_key)
        .json(&json!({"messages": [{"topic": "room", "event": "hi", "payload": {"from": "http"}}]}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
    let (_, got, _) = a.expect("broadcast").await;
    assert_eq!(got["payload"]["from"], "http");

    let metrics = reqwest::get(format!("{}/metrics", one.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("sovra_realtime_bus_errors_total"),
        "the unreadable event is counted"
    );

    // A dropped connection on two leaves presence on one at once.
    drop(b);
    let (_, diff, _) = a.expect("presence_diff").await;
    assert_eq!(diff["leaves"]["bob"]["metas"][0]["at"], "two", "{diff}");

    // Database changes: one instance consumes the slot, clients of both
    // get what their policies allow.
    let (alice, alice_token) = user(&one);
    let (_, bob_token) = user(&one);
    let binding = json!([{"event": "INSERT", "schema": "public", "table": "notes"}]);
    let mut on_one = Client::connect(&one, &one.anon_key, "2.0.0").await;
    pg_join(&mut on_one, "realtime:notes", binding.clone(), &alice_token).await;
    let mut on_two = Client::connect(&two, &two.anon_key, "2.0.0").await;
    pg_join(&mut on_two, "realtime:notes", binding.clone(), &alice_token).await;
    let mut bob_on_two = Client::connect(&two, &two.anon_key, "2.0.0").await;
    pg_join(&mut bob_on_two, "realtime:notes", binding, &bob_token).await;
    let leader = async {
        for _ in 0..400 {
            match (
                one.tenant.realtime.feed_slot(),
                two.tenant.realtime.feed_slot(),
            ) {
                (Some(_), None) => return (&one, &two),
                (None, Some(_)) => return (&two, &one),
                (Some(_), Some(_)) => panic!("two instances consume the slot"),
                (None, None) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        panic!("no instance leads the change feed");
    };
    let (leader, follower) = leader.await;
    let db = one.db.client().await;
    let insert = "insert into notes (owner_id, body) values ($1::text::uuid, $2)";
    db.execute(insert, &[&alice, &"first"]).await.unwrap();
    for client in [&mut on_one, &mut on_two] {
        assert_eq!(
            client.expect("postgres_changes").await.1["data"]["record"]["body"],
            "first"
        );
    }
    bob_on_two
        .silent("postgres_changes", Duration::from_millis(500))
        .await;

    // The leader stops; the other takes over from the slot's position and
    // nothing committed in between is lost.
    leader.tenant.realtime.stop_feed();
    db.execute(insert, &[&alice, &"second"]).await.unwrap();
    for _ in 0..400 {
        if follower.tenant.realtime.feed_slot().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        follower.tenant.realtime.feed_slot().is_some(),
        "no takeover"
    );
    db.execute(insert, &[&alice, &"third"]).await.unwrap();
    for client in [&mut on_one, &mut on_two] {
        for body in ["second", "third"] {
            assert_eq!(
                client.expect("postgres_changes").await.1["data"]["record"]["body"],
                body
            );
        }
    }
    bob_on_two
        .silent("postgres_changes", Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn a_policy_that_fails_for_one_subscriber_or_an_unknown_role_hides_rows_only_from_them() {
    let app = app().await;
    app.db
        .client()
        .await
        .batch_execute(
            "create table public.levels (id bigint generated always as identity primary key, level int not null);
             alter table public.levels replica identity full;
             alter table public.levels enable row level security;
             create policy by_level on public.levels for select to authenticated
               using (level <= (auth.jwt() ->> 'level')::int);
             grant select on public.levels to authenticated;
             alter publication supabase_realtime add table public.levels;",
        )
        .await
        .unwrap();
    let token = |level: &str, role: &str| {
        let mut claims = TestApp::user_claims(&uuid::Uuid::new_v4().to_string());
        claims.insert("level".to_owned(), json!(level));
        claims.insert("role".to_owned(), json!(role));
        app.sign(Value::Object(claims))
    };
    let binding = json!([{"event": "INSERT", "schema": "public", "table": "levels"}]);
    let mut clients = Vec::new();
    for (level, role) in [
        ("5", "authenticated"),
        ("oops", "authenticated"),
        ("9", "no_such_role"),
    ] {
        let mut client = Client::connect(&app, &app.anon_key, "2.0.0").await;
        pg_join(
            &mut client,
            "realtime:l",
            binding.clone(),
            &token(level, role),
        )
        .await;
        clients.push(client);
    }
    let [mut five, mut broken, mut ghost] = <[Client; 3]>::try_from(clients).ok().unwrap();
    feed_ready(&app).await;
    app.db
        .client()
        .await
        .batch_execute("insert into levels (level) values (3), (7), (4)")
        .await
        .unwrap();
    for want in [3, 4] {
        let (_, payload, _) = five.expect("postgres_changes").await;
        assert_eq!(payload["data"]["record"]["level"], want);
    }
    five.silent("postgres_changes", Duration::from_millis(300))
        .await;
    broken
        .silent("postgres_changes", Duration::from_millis(300))
        .await;
    ghost
        .silent("postgres_changes", Duration::from_millis(300))
        .await;
}

#[tokio::test]
async fn catch_up_turned_off_says_so() {
    init_logs();
    let mut config = sovra_config::Config::default();
    config.realtime.catchup_window = 0;
    let app = TestApp::spawn_with(config).await;
    app.db.client().await.batch_execute(FIXTURE).await.unwrap();
    let (_, token) = user(&app);
    let mut a = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let reply = a
        .join(
            "realtime:notes",
            json!({"postgres_changes": [{"event": "*", "schema": "public", "table": "notes",
                                         "since": "2026-01-01T00:00:00.000Z"}]}),
            Some(&token),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    let (_, subscribed, _) = a.expect("system").await;
    assert_eq!(subscribed["status"], "ok");
    let (_, off, _) = a.expect("system").await;
    assert_eq!(off["status"], "error");
    assert!(
        off["message"]
            .as_str()
            .unwrap()
            .starts_with("Catch-up is off"),
        "{off}"
    );
}
