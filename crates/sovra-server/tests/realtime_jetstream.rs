//! Realtime across instances over NATS with JetStream: database changes
//! are not lost for an instance cut off from NATS for a while, a rejoin
//! with `since` on an instance that started later is replayed from the
//! stream, and the feed goes to another instance while its holder is cut
//! off. Each instance reaches NATS through its own proxy, which the test
//! cuts and heals.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sovra_test_support::{NatsServer, TcpCut, TestApp};
use support::realtime_client::{Client, Got, init_logs, pg_join, user};

const FIXTURE: &str = "
  create table public.notes (
    id bigint generated always as identity primary key,
    owner_id uuid not null,
    body text
  );
  alter table public.notes replica identity full;
  alter table public.notes enable row level security;
  create policy own on public.notes for select to authenticated using (owner_id = auth.uid());
  grant select on public.notes to authenticated, anon;
  alter publication supabase_realtime add table public.notes;
";

const INSERT: &str = "insert into notes (owner_id, body) values ($1::text::uuid, $2)";

fn config(proxy: &TcpCut, subject: &str) -> sovra_config::Config {
    let mut config = sovra_config::Config::default();
    config.realtime.nats_url = format!("nats://127.0.0.1:{}", proxy.port);
    config.realtime.nats_subject = subject.to_owned();
    config
}

/// Waits until `app` hears from `n` other instances on the bus.
async fn peers(app: &TestApp, n: usize) {
    for _ in 0..400 {
        if app.tenant.realtime.peers() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the instances did not meet on the bus");
}

/// The index in `apps` of the instance that reads the slot, once one does.
async fn leader(apps: &[&TestApp]) -> usize {
    for _ in 0..400 {
        let leading: Vec<usize> = (0..apps.len())
            .filter(|i| apps[*i].tenant.realtime.feed_slot().is_some())
            .collect();
        match leading.as_slice() {
            [one] => return *one,
            [] => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => panic!("several instances consume the slot"),
        }
    }
    panic!("no instance leads the change feed");
}

/// The bodies of the next `n` changes a client gets.
async fn bodies(client: &mut Client, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    while got.len() < n {
        let (_, payload, _) = client.expect("postgres_changes").await;
        got.push(
            payload["data"]["record"]["body"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    got
}

/// Changes (bodies) until the next `system` message, and that message.
async fn changes_until_system(client: &mut Client) -> (Vec<String>, Value) {
    let mut changes = Vec::new();
    loop {
        match client.next_frame(Duration::from_secs(20)).await {
            Some(Got::Msg { event, payload, .. }) if event == "postgres_changes" => changes.push(
                payload["data"]["record"]["body"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            ),
            Some(Got::Msg { event, payload, .. }) if event == "system" => {
                return (changes, payload);
            }
            Some(_) => {}
            None => panic!("no system message after the replay"),
        }
    }
}

/// Publishes raw bytes on `subject` (not through Sovra).
async fn publish_raw(nats_url: &str, subject: &str, bytes: &[u8]) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut raw = tokio::net::TcpStream::connect(nats_url.trim_start_matches("nats://"))
        .await
        .unwrap();
    let mut frame = format!(
        "CONNECT {{\"verbose\":false}}\r\nPUB {subject} {}\r\n",
        bytes.len()
    )
    .into_bytes();
    frame.extend_from_slice(bytes);
    frame.extend_from_slice(b"\r\nPING\r\n");
    raw.write_all(&frame).await.unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 1024];
    while !seen.contains("PONG") {
        let n = raw.read(&mut buf).await.unwrap();
        assert!(n > 0, "nats closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = reqwest::get(format!("{}/metrics", app.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Two instances on one database and a NATS server with JetStream, each
/// through its own proxy, that have met on the bus.
struct Pair {
    nats: NatsServer,
    target: String,
    subject: String,
    proxies: [TcpCut; 2],
    one: TestApp,
    two: TestApp,
}

async fn pair() -> Pair {
    init_logs();
    let nats = NatsServer::start_jetstream().await;
    let target = nats.url.trim_start_matches("nats://").to_owned();
    let subject = format!("test{}", uuid::Uuid::new_v4().simple());
    let proxies = [TcpCut::start(&target).await, TcpCut::start(&target).await];
    let one = TestApp::spawn_with(config(&proxies[0], &subject)).await;
    one.db.client().await.batch_execute(FIXTURE).await.unwrap();
    let two = one.spawn_peer(config(&proxies[1], &subject)).await;
    peers(&one, 1).await;
    peers(&two, 1).await;
    Pair {
        nats,
        target,
        subject,
        proxies,
        one,
        two,
    }
}

/// A client on each of `apps`, subscribed with `token` to inserts into
/// notes.
async fn subscribers(apps: [&TestApp; 2], token: &str) -> Vec<Client> {
    let binding = json!([{"event": "INSERT", "schema": "public", "table": "notes"}]);
    let mut clients = Vec::new();
    for app in apps {
        let mut client = Client::connect(app, &app.anon_key, "2.0.0").await;
        pg_join(&mut client, "realtime:notes", binding.clone(), token).await;
        clients.push(client);
    }
    clients
}

#[tokio::test]
async fn a_cut_off_instance_resumes_from_the_stream_and_a_later_one_catches_up_from_it() {
    let Pair {
        nats,
        target,
        subject,
        proxies,
        one,
        two,
    } = pair().await;
    let apps = [&one, &two];

    let (alice, alice_token) = user(&one);
    let (bob, bob_token) = user(&one);
    let mut clients = subscribers(apps, &alice_token).await;
    let lead = leader(&apps).await;
    let follow = 1 - lead;
    // A catch-up starts one second before `since`: let the stream be older
    // than that, or the late instance rightly says it may miss changes
    // committed before the stream existed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let db = one.db.client().await;
    db.execute(INSERT, &[&alice, &"before"]).await.unwrap();
    let mut since = String::new();
    for client in &mut clients {
        let (_, payload, _) = client.expect("postgres_changes").await;
        assert_eq!(payload["data"]["record"]["body"], "before");
        since = payload["data"]["commit_timestamp"]
            .as_str()
            .unwrap()
            .to_owned();
    }

    // The follower is cut off: the leader's clients get the changes live,
    // the follower's once it is back, in commit order, none twice.
    proxies[follow].cut().await;
    db.execute(INSERT, &[&alice, &"during 1"]).await.unwrap();
    db.execute(INSERT, &[&bob, &"bobs"]).await.unwrap();
    db.execute(INSERT, &[&alice, &"during 2"]).await.unwrap();
    assert_eq!(
        bodies(&mut clients[lead], 2).await,
        ["during 1", "during 2"]
    );
    // Malformed batches on the stream are dropped and counted.
    let stream_subject = format!("{subject}.default.changes");
    publish_raw(&nats.url, &stream_subject, b"not json").await;
    publish_raw(
        &nats.url,
        &stream_subject,
        br#"{"origin":"x","event":"heartbeat"}"#,
    )
    .await;
    publish_raw(
        &nats.url,
        &stream_subject,
        br#"{"origin":"x","event":{"changes":{"seq":1,"relations":[],"changes":[{"rel":1,"kind":"INSERT","new":[],"old":null,"stamp":"2026-01-01T00:00:00.000Z"}]}}}"#,
    )
    .await;
    let errors_before = metric(apps[follow], "sovra_realtime_bus_errors_total").await;
    proxies[follow].heal().await;
    db.execute(INSERT, &[&alice, &"after"]).await.unwrap();
    assert_eq!(
        bodies(&mut clients[follow], 3).await,
        ["during 1", "during 2", "after"]
    );
    assert_eq!(bodies(&mut clients[lead], 1).await, ["after"]);
    for client in &mut clients {
        client
            .silent("postgres_changes", Duration::from_millis(300))
            .await;
    }
    assert!(
        metric(apps[follow], "sovra_realtime_bus_errors_total").await >= errors_before + 3.0,
        "the malformed batches are counted"
    );

    // A third instance, started now, keeps nothing from before it started:
    // a rejoin with `since` there is replayed from the stream, through the
    // same authorisation as live changes.
    let proxy = TcpCut::start(&target).await;
    let three = one.spawn_peer(config(&proxy, &subject)).await;
    peers(&three, 2).await;
    let with_since =
        json!([{"event": "INSERT", "schema": "public", "table": "notes", "since": since}]);
    let mut late = Client::connect(&three, &three.anon_key, "2.0.0").await;
    late.join(
        "realtime:notes",
        json!({"postgres_changes": with_since.clone()}),
        Some(&alice_token),
    )
    .await;
    late.expect("system").await;
    let (replayed, done) = changes_until_system(&mut late).await;
    assert_eq!(done["status"], "ok", "{done}");
    assert!(
        done["message"]
            .as_str()
            .unwrap()
            .starts_with("Caught up on"),
        "{done}"
    );
    // At least once from `since`: the change seen last may come again.
    let replayed: Vec<_> = replayed.into_iter().filter(|b| b != "before").collect();
    assert_eq!(replayed, ["during 1", "during 2", "after"]);
    assert!(metric(&three, "sovra_realtime_catchup_from_stream_total").await >= 1.0);
    // Live changes follow the replay there.
    db.execute(INSERT, &[&alice, &"live"]).await.unwrap();
    assert_eq!(bodies(&mut late, 1).await, ["live"]);
    // Bob, from the same point, gets only his.
    let mut bobs = Client::connect(&three, &three.anon_key, "2.0.0").await;
    bobs.join(
        "realtime:notes",
        json!({"postgres_changes": with_since}),
        Some(&bob_token),
    )
    .await;
    bobs.expect("system").await;
    let (replayed, done) = changes_until_system(&mut bobs).await;
    assert_eq!(done["status"], "ok", "{done}");
    assert_eq!(replayed, ["bobs"]);
}

#[tokio::test]
async fn the_feed_holder_cut_off_gives_the_feed_up_and_catches_up_when_back() {
    // Bound, not `..`: the server lives until the test ends.
    let Pair {
        nats: _nats,
        proxies,
        one,
        two,
        ..
    } = pair().await;
    let apps = [&one, &two];
    let (alice, alice_token) = user(&one);
    let mut clients = subscribers(apps, &alice_token).await;
    let lead = leader(&apps).await;
    let other = 1 - lead;
    let db = one.db.client().await;
    db.execute(INSERT, &[&alice, &"before"]).await.unwrap();
    for client in &mut clients {
        assert_eq!(bodies(client, 1).await, ["before"]);
    }

    // The holder is cut off: the change committed now cannot be stored on
    // the stream, so the holder gives the feed up; the other instance
    // takes it over from the slot and delivers the change.
    proxies[lead].cut().await;
    db.execute(INSERT, &[&alice, &"cut"]).await.unwrap();
    assert_eq!(bodies(&mut clients[other], 1).await, ["cut"]);
    assert!(apps[other].tenant.realtime.feed_slot().is_some());
    assert!(apps[lead].tenant.realtime.feed_slot().is_none());
    assert!(metric(apps[lead], "sovra_realtime_feed_released_total").await >= 1.0);

    // Back: the cut-off instance's client gets it from the stream.
    proxies[lead].heal().await;
    db.execute(INSERT, &[&alice, &"healed"]).await.unwrap();
    let got = bodies(&mut clients[lead], 2).await;
    assert_eq!(got, ["cut", "healed"]);
    assert_eq!(bodies(&mut clients[other], 1).await, ["healed"]);
    assert_eq!(leader(&apps).await, other, "the feed stays where it went");
}
