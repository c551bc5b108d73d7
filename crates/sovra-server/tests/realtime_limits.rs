//! `/realtime/v1` limits: byte-counted outbound queues, large transactions,
//! limits on bindings and presence, WebSocket close codes for bad frames,
//! and sockets closed when their credential is revoked. Driven through the
//! real router on a real database with a raw WebSocket client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use sovra_test_support::TestApp;
use support::realtime_client::{
    Client, Got, change_app_with, feed_ready, init_logs, pg_join, user,
};

const FIXTURE: &str = "
  create table public.notes (
    id bigint generated always as identity primary key,
    owner_id uuid not null,
    body text
  );
  alter table public.notes enable row level security;
  create policy own on public.notes for select to authenticated using (owner_id = auth.uid());
  grant select on public.notes to authenticated, anon;
  alter publication supabase_realtime add table public.notes;
";

/// The binding of the tests below: every change of `public.notes`.
fn notes() -> Value {
    json!([{"event": "*", "schema": "public", "table": "notes"}])
}

/// Reads `n` postgres_changes and checks they are rows 1..=n in order.
async fn expect_rows(client: &mut Client, n: usize) {
    // A long transfer on a loaded machine outlasts the idle timeout: keep
    // sending heartbeats as realtime-js does (every 25 s), so the test
    // checks streaming, not the client's silence.
    let mut beat = tokio::time::Instant::now();
    for i in 1..=n {
        if beat.elapsed() > Duration::from_secs(20) {
            client.send("phoenix", "heartbeat", json!({})).await;
            beat = tokio::time::Instant::now();
        }
        let (_, p, _) = client.expect("postgres_changes").await;
        assert_eq!(
            p["data"]["record"]["body"],
            format!("row {i}"),
            "change {i}"
        );
    }
}

#[tokio::test]
async fn a_reading_client_gets_every_row_of_a_1500_row_transaction() {
    let app = change_app_with(sovra_config::Config::default(), FIXTURE).await;
    let (alice, token) = user(&app);
    let mut a = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let mut b = Client::connect(&app, &app.anon_key, "2.0.0").await;
    pg_join(&mut a, "realtime:notes", notes(), &token).await;
    pg_join(&mut b, "realtime:notes", notes(), &token).await;
    feed_ready(&app).await;
    app.db
        .client()
        .await
        .batch_execute(&format!(
            "insert into notes (owner_id, body) select '{alice}', 'row ' || g from generate_series(1, 1500) g"
        ))
        .await
        .unwrap();
    expect_rows(&mut a, 1500).await;
    expect_rows(&mut b, 1500).await;
}

#[tokio::test]
async fn a_reading_client_gets_every_message_of_two_parallel_http_broadcasts() {
    init_logs();
    let app = TestApp::spawn().await;
    let mut c = Client::connect(&app, &app.anon_key, "2.0.0").await;
    assert_eq!(
        c.join("realtime:burst", json!({}), None).await["status"],
        "ok"
    );
    let http = reqwest::Client::new();
    let send = |batch: usize| {
        let messages: Vec<Value> = (0..1000)
            .map(|i| json!({"topic": "burst", "event": "e", "payload": {"batch": batch, "i": i}}))
            .collect();
        http.post(format!("{}/realtime/v1/api/broadcast", app.url))
            .header("apikey", &app.service_role_key)
            .bearer_auth(&app.service_role_key)
            .json(&json!({"messages": messages}))
            .send()
    };
    let (one, two) = tokio::join!(send(0), send(1));
    assert_eq!(one.unwrap().status(), 202);
    assert_eq!(two.unwrap().status(), 202);
    let mut next = [0u64; 2];
    for _ in 0..2000 {
        let (_, p, _) = c.expect("broadcast").await;
        let batch = p["payload"]["batch"].as_u64().unwrap() as usize;
        assert_eq!(p["payload"]["i"], next[batch], "in order within a batch");
        next[batch] += 1;
    }
    assert_eq!(next, [1000, 1000]);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_cut_off_once_past_the_byte_limit() {
    init_logs();
    let mut config = sovra_config::Config::default();
    config.realtime.outbound_queue_bytes = 65_536;
    let app = TestApp::spawn_with(config).await;
    let mut slow = Client::connect(&app, &app.anon_key, "2.0.0").await;
    assert_eq!(
        slow.join("realtime:flood", json!({}), None).await["status"],
        "ok"
    );
    let http = reqwest::Client::new();
    let payload = json!({"blob": "z".repeat(1000)});
    let messages: Vec<Value> = (0..1000)
        .map(|_| json!({"topic": "flood", "event": "f", "payload": payload}))
        .collect();
    // Far more than the queue and the socket buffers hold, sent while the
    // client reads nothing.
    for _ in 0..40 {
        let sent = http
            .post(format!("{}/realtime/v1/api/broadcast", app.url))
            .header("apikey", &app.service_role_key)
            .bearer_auth(&app.service_role_key)
            .json(&json!({"messages": messages}))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.status(), 202);
    }
    // Whatever was in flight arrives, then the connection ends; when the
    // close frame gets through, it carries the reason.
    let mut received = 0usize;
    let (code, reason) = loop {
        match slow.next_frame(Duration::from_secs(30)).await {
            Some(Got::Msg { .. }) => received += 1,
            Some(Got::Closed(code, reason)) => break (code, reason),
            None => panic!("not cut off"),
        }
    };
    assert!(received < 40_000, "cut off before everything arrived");
    if code != 0 {
        assert_eq!(code, 1008);
        assert!(
            reason.starts_with("slow consumer: more than 65536 bytes"),
            "{reason}"
        );
    }
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
    // A healthy client on the same topic at the same time is unaffected.
    let mut healthy = Client::connect(&app, &app.anon_key, "2.0.0").await;
    assert_eq!(
        healthy.join("realtime:flood", json!({}), None).await["status"],
        "ok"
    );
    let sent = http
        .post(format!("{}/realtime/v1/api/broadcast", app.url))
        .header("apikey", &app.service_role_key)
        .bearer_auth(&app.service_role_key)
        .json(&json!({"messages": [{"topic": "flood", "event": "f", "payload": {"last": true}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);
    let (_, p, _) = healthy.expect("broadcast").await;
    assert_eq!(p["payload"]["last"], true);
}

/// A WebSocket client that writes raw frames (to break the protocol on
/// purpose) and reads the server's frames.
struct Raw {
    tcp: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// A server frame: opcode and payload.
#[derive(Debug)]
struct RawFrame {
    opcode: u8,
    payload: Vec<u8>,
}

impl Raw {
    async fn connect(app: &TestApp, key: &str) -> Raw {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = app.url.trim_start_matches("http://").to_owned();
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let request = format!(
            "GET /realtime/v1/websocket?apikey={key}&vsn=2.0.0 HTTP/1.1\r\nHost: {addr}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(n > 0, "no upgrade response");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        Raw {
            tcp,
            buf: buf[end..].to_vec(),
        }
    }

    /// A client frame: `first` is the first header byte (FIN, RSV, opcode);
    /// `len` overrides the announced length.
    fn frame(first: u8, payload: &[u8], masked: bool, len: Option<u64>) -> Vec<u8> {
        let mask_bit = if masked { 0x80 } else { 0 };
        let len = len.unwrap_or(payload.len() as u64);
        let mut out = vec![first];
        if len < 126 {
            out.push(mask_bit | len as u8);
        } else if len <= 0xffff {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
        let key = [0x37, 0xfa, 0x21, 0x3d];
        if masked {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            out.extend_from_slice(payload);
        }
        out
    }

    async fn write(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt as _;
        // The server may close while we write; that is what some cases test.
        let _ = self.tcp.write_all(bytes).await;
    }

    async fn fill(&mut self, want: usize) -> bool {
        use tokio::io::AsyncReadExt as _;
        while self.buf.len() < want {
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout(Duration::from_secs(30), self.tcp.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return false,
            }
        }
        true
    }

    /// The next server frame, or `None` when the connection ended.
    async fn next(&mut self) -> Option<RawFrame> {
        if !self.fill(2).await {
            return None;
        }
        let opcode = self.buf[0] & 0x0f;
        let short = u64::from(self.buf[1] & 0x7f);
        let (len, header) = match short {
            126 => {
                if !self.fill(4).await {
                    return None;
                }
                (u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])), 4)
            }
            127 => {
                if !self.fill(10).await {
                    return None;
                }
                (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()), 10)
            }
            n => (n, 2),
        };
        let total = header + len as usize;
        if !self.fill(total).await {
            return None;
        }
        let payload = self.buf[header..total].to_vec();
        self.buf.drain(..total);
        Some(RawFrame { opcode, payload })
    }

    /// The next text frame as JSON (skipping others); panics on a close.
    async fn text(&mut self) -> Value {
        loop {
            let frame = self.next().await.expect("a frame");
            match frame.opcode {
                1 => return serde_json::from_slice(&frame.payload).unwrap(),
                8 => panic!("closed: {:?}", close_of(&frame)),
                _ => {}
            }
        }
    }

    /// Reads until the close frame; its code and reason (0 when the
    /// connection ended without one).
    async fn close(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Some(frame) if frame.opcode == 8 => return close_of(&frame),
                Some(_) => continue,
                None => return (0, String::new()),
            }
        }
    }
}

fn close_of(frame: &RawFrame) -> (u16, String) {
    if frame.payload.len() < 2 {
        return (1005, String::new());
    }
    (
        u16::from_be_bytes([frame.payload[0], frame.payload[1]]),
        String::from_utf8_lossy(&frame.payload[2..]).to_string(),
    )
}

#[tokio::test]
async fn broken_frames_close_with_the_rfc_code_and_a_reason() {
    init_logs();
    let mut config = sovra_config::Config::default();
    config.realtime.max_frame_size = 2048;
    let app = TestApp::spawn_with(config).await;
    let text = |payload: &[u8]| Raw::frame(0x81, payload, true, None);

    // A frame over the size limit: 1009.
    let mut raw = Raw::connect(&app, &app.anon_key).await;
    raw.write(&text(&vec![b'x'; 4096])).await;
    let (code, reason) = raw.close().await;
    assert_eq!(code, 1009, "{reason}");
    assert_eq!(reason, "frame too large: the limit is 2048 bytes");

    // Only a header announcing an enormous frame: 1009 at once.
    let mut raw = Raw::connect(&app, &app.anon_key).await;
    raw.write(&Raw::frame(0x81, b"", true, Some(1 << 40))[..14])
        .await;
    assert_eq!(raw.close().await.0, 1009);

    // Protocol errors: 1002 with the fault named.
    for (name, bytes) in [
        ("reserved bits", Raw::frame(0xc1, b"{}", true, None)),
        ("reserved opcode", Raw::frame(0x83, b"{}", true, None)),
        ("unmasked", Raw::frame(0x81, b"{}", false, None)),
        ("fragmented ping", Raw::frame(0x09, b"", true, None)),
        ("continuation first", Raw::frame(0x80, b"{}", true, None)),
    ] {
        let mut raw = Raw::connect(&app, &app.anon_key).await;
        raw.write(&bytes).await;
        let (code, reason) = raw.close().await;
        assert_eq!(code, 1002, "{name}: {reason}");
        assert!(reason.starts_with("protocol error: "), "{name}: {reason}");
    }

    // Text that is not UTF-8: 1007.
    let mut raw = Raw::connect(&app, &app.anon_key).await;
    raw.write(&text(b"[\"\xff\xfe\"]")).await;
    let (code, reason) = raw.close().await;
    assert_eq!(code, 1007, "{reason}");

    let metrics = reqwest::get(format!("{}/metrics", app.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for label in ["frame_too_large", "protocol_error", "bad_utf8"] {
        assert!(
            metrics.contains(&format!(
                "sovra_realtime_refused_total{{reason=\"{label}\"}}"
            )),
            "{label}"
        );
    }
}

#[tokio::test]
async fn malformed_messages_get_an_error_reply_and_the_socket_stays_open() {
    init_logs();
    let app = TestApp::spawn().await;
    let mut raw = Raw::connect(&app, &app.anon_key).await;
    let text = |payload: &str| Raw::frame(0x81, payload.as_bytes(), true, None);

    // Not JSON: answered on topic `phoenix`.
    raw.write(&text("nope")).await;
    let reply = raw.text().await;
    assert_eq!(reply[2], "phoenix");
    assert_eq!(reply[3], "phx_reply");
    assert_eq!(reply[4]["status"], "error");
    assert!(
        reply[4]["response"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("malformed message: frame is not valid JSON"),
        "{reply}"
    );

    // JSON of the wrong shape, with a topic and ref: answered on them.
    raw.write(&text(r#"["1","7","realtime:x",5,{}]"#)).await;
    let reply = raw.text().await;
    assert_eq!(
        reply,
        json!(["1", "7", "realtime:x", "phx_reply", {"status": "error", "response": {"reason": "malformed message: frame does not have the shape of a channel message"}}])
    );

    // A binary frame of an unknown kind.
    raw.write(&Raw::frame(0x82, &[9, 1, 2], true, None)).await;
    let reply = raw.text().await;
    assert_eq!(reply[2], "phoenix");
    assert_eq!(
        reply[4]["response"]["reason"],
        "malformed message: binary frame is truncated or of an unknown kind"
    );

    // The socket still works.
    raw.write(&text(r#"[null,"9","phoenix","heartbeat",{}]"#))
        .await;
    let reply = raw.text().await;
    assert_eq!(reply[1], "9");
    assert_eq!(reply[4]["status"], "ok");
}

#[tokio::test]
async fn too_many_bindings_and_too_large_presence_are_refused_with_a_reason() {
    init_logs();
    let mut config = sovra_config::Config::default();
    config.realtime.max_bindings_per_channel = 3;
    config.realtime.max_presence_bytes = 100;
    let app = TestApp::spawn_with(config).await;
    let mut c = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let binding = json!({"event": "*", "schema": "public", "table": "t"});
    let refused = c
        .join(
            "realtime:many",
            json!({"postgres_changes": [binding, binding, binding, binding]}),
            None,
        )
        .await;
    assert_eq!(refused["status"], "error");
    assert_eq!(
        refused["response"]["reason"],
        "TooManyBindings: a channel may have at most 3 postgres_changes bindings, this join has 4"
    );
    assert_eq!(
        app.tenant.realtime.channels(),
        0,
        "the channel was not joined"
    );
    let ok = c
        .join(
            "realtime:many",
            json!({"postgres_changes": [binding, binding, binding]}),
            None,
        )
        .await;
    assert_eq!(ok["status"], "ok", "{ok}");

    // Presence: a state within the limit is tracked, a larger one refused
    // and never shown to the others.
    let presence = json!({"presence": {"key": "k", "enabled": true}});
    let mut other = Client::connect(&app, &app.anon_key, "2.0.0").await;
    assert_eq!(
        other.join("realtime:room", presence.clone(), None).await["status"],
        "ok"
    );
    other.expect("presence_state").await;
    assert_eq!(
        c.join("realtime:room", presence, None).await["status"],
        "ok"
    );
    let track = |state: Value| json!({"type": "presence", "event": "track", "payload": state});
    let r = c
        .send("realtime:room", "presence", track(json!({"name": "ann"})))
        .await;
    assert_eq!(c.reply(&r).await["status"], "ok");
    let (_, diff, _) = other.expect("presence_diff").await;
    assert_eq!(diff["joins"]["k"]["metas"][0]["name"], "ann");
    let r = c
        .send(
            "realtime:room",
            "presence",
            track(json!({"name": "x".repeat(200)})),
        )
        .await;
    let refused = c.reply(&r).await;
    assert_eq!(refused["status"], "error");
    assert_eq!(
        refused["response"]["reason"],
        "PresencePayloadTooLarge: a presence state may have at most 100 bytes, this one has 211"
    );
    // The earlier state stands: an untrack leaves "ann".
    let r = c
        .send(
            "realtime:room",
            "presence",
            json!({"type": "presence", "event": "untrack"}),
        )
        .await;
    assert_eq!(c.reply(&r).await["status"], "ok");
    let (_, diff, _) = other.expect("presence_diff").await;
    assert_eq!(diff["leaves"]["k"]["metas"][0]["name"], "ann", "{diff}");
}

#[tokio::test]
async fn transactions_of_5000_and_100000_rows_stream_in_bounded_batches() {
    let mut config = sovra_config::Config::default();
    // The smallest batch allowed: a 100,000-row transaction takes many.
    config.realtime.feed_batch_bytes = 65_536;
    // Bob sends no heartbeat while the rows go by: on a loaded machine
    // that can take longer than the default idle timeout.
    config.realtime.idle_timeout = 600;
    let app = change_app_with(config, FIXTURE).await;
    let (alice, token) = user(&app);
    let (_bob, bob_token) = user(&app);
    let mut a = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let mut b = Client::connect(&app, &app.anon_key, "2.0.0").await;
    pg_join(&mut a, "realtime:notes", notes(), &token).await;
    pg_join(&mut b, "realtime:notes", notes(), &bob_token).await;
    feed_ready(&app).await;
    let db = app.db.client().await;
    for n in [5_000, 100_000] {
        let (batches_before, _) = app.tenant.realtime.feed_batches();
        db.batch_execute(&format!(
            "insert into notes (owner_id, body) select '{alice}', 'row ' || g from generate_series(1, {n}) g"
        ))
        .await
        .unwrap();
        expect_rows(&mut a, n).await;
        let (batches, largest) = app.tenant.realtime.feed_batches();
        // Each change counts its values plus 64 bytes (about 120 here):
        // a batch holds at most 65,536 bytes' worth, plus the change that
        // passed the mark.
        assert!(largest <= 65_536 + 256, "largest batch {largest} bytes");
        assert!(
            batches - batches_before >= (n as u64 * 100) / 65_536,
            "{n} rows came in {} batches",
            batches - batches_before
        );
    }
    // Bob may see none of it, and the socket is still fine.
    let r = b.send("phoenix", "heartbeat", json!({})).await;
    match b.next_frame(Duration::from_secs(20)).await {
        Some(Got::Msg { event, msg_ref, .. }) => {
            assert_eq!(
                (event.as_str(), msg_ref.as_deref()),
                ("phx_reply", Some(r.as_str()))
            )
        }
        other => panic!("bob got {other:?}"),
    }
}

#[tokio::test]
async fn a_catch_up_to_a_slow_client_does_not_hold_back_others() {
    let mut config = sovra_config::Config::default();
    config.realtime.outbound_queue_bytes = 65_536;
    // Long enough that a feed waiting on the stuck client would be seen.
    config.realtime.slow_consumer_timeout = 120;
    let app = change_app_with(config, FIXTURE).await;
    let (alice, token) = user(&app);
    let mut reader = Client::connect(&app, &app.anon_key, "2.0.0").await;
    pg_join(&mut reader, "realtime:notes", notes(), &token).await;
    feed_ready(&app).await;
    let db = app.db.client().await;
    // More than the socket buffers and the queue hold: a replay of it to
    // a client that reads nothing must wait for that client.
    db.batch_execute(&format!(
        "insert into notes (owner_id, body) select '{alice}', 'row ' || g || ' ' || repeat('p', 2000) from generate_series(1, 4000) g"
    ))
    .await
    .unwrap();
    let (_, first, _) = reader.expect("postgres_changes").await;
    let since = first["data"]["commit_timestamp"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 1..4000 {
        reader.expect("postgres_changes").await;
    }

    // A client rejoins with `since` and then reads slowly (a frame every
    // 10 ms: its replay takes about a minute).
    let mut stuck = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let bindings = json!([{"event": "*", "schema": "public", "table": "notes", "since": since}]);
    stuck
        .send(
            "realtime:notes",
            "phx_join",
            json!({"config": {"postgres_changes": bindings}, "access_token": token}),
        )
        .await;
    let trickle = tokio::spawn(async move {
        while let Some(Got::Msg { .. }) = stuck.next_frame(Duration::from_secs(60)).await {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // Its replay has started (the channel is joined).
    for _ in 0..200 {
        if app.tenant.realtime.channels() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.tenant.realtime.channels(), 2);

    // Live changes still reach the reader: the feed does not wait for the
    // slow client's replay (with the stall, they would come only after the
    // replay, about a minute). The wait only catches a hang.
    for n in 0..3 {
        db.execute(
            "insert into notes (owner_id, body) values ($1::text::uuid, $2)",
            &[&alice, &format!("live {n}")],
        )
        .await
        .unwrap();
        match reader.next_frame(Duration::from_secs(9)).await {
            Some(Got::Msg { event, payload, .. }) if event == "postgres_changes" => {
                assert_eq!(payload["data"]["record"]["body"], format!("live {n}"))
            }
            other => panic!("live change {n} did not arrive: {other:?}"),
        }
    }
    trickle.abort();
}

#[tokio::test]
async fn the_catch_up_buffer_is_capped_in_bytes() {
    let mut config = sovra_config::Config::default();
    config.realtime.catchup_max_bytes = 65_536;
    let app = change_app_with(config, FIXTURE).await;
    let (alice, token) = user(&app);
    let mut reader = Client::connect(&app, &app.anon_key, "2.0.0").await;
    pg_join(&mut reader, "realtime:notes", notes(), &token).await;
    feed_ready(&app).await;
    let db = app.db.client().await;
    // 200 changes of about 1,100 bytes each: far more than 65,536 bytes,
    // far fewer than the count limit (100,000).
    for n in 1..=200 {
        db.execute(
            "insert into notes (owner_id, body) values ($1::text::uuid, $2)",
            &[&alice, &format!("row {n} {}", "p".repeat(1000))],
        )
        .await
        .unwrap();
    }
    let (_, first, _) = reader.expect("postgres_changes").await;
    let since = first["data"]["commit_timestamp"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 2..=200 {
        reader.expect("postgres_changes").await;
    }
    let mut again = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let bindings = json!([{"event": "*", "schema": "public", "table": "notes", "since": since}]);
    let reply = again
        .join(
            "realtime:notes",
            json!({"postgres_changes": bindings}),
            Some(&token),
        )
        .await;
    assert_eq!(reply["status"], "ok");
    let (_, subscribed, _) = again.expect("system").await;
    assert_eq!(subscribed["status"], "ok");
    let (_, gap, _) = again.expect("system").await;
    assert_eq!(gap["status"], "error", "{gap}");
    assert!(
        gap["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("Cannot catch up from {since}")),
        "{gap}"
    );
    // What is kept is the newest changes, within the byte cap.
    let mut replayed = Vec::new();
    while let Some(Got::Msg { event, payload, .. }) = again.next_frame(Duration::from_secs(3)).await
    {
        if event == "postgres_changes" {
            replayed.push(
                payload["data"]["record"]["body"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    assert!(!replayed.is_empty());
    assert!(replayed.len() < 65_536 / 1_000, "{} kept", replayed.len());
    assert!(replayed.last().unwrap().starts_with("row 200 "));
}

/// Calls `/auth/v1{path}` with the anon key and `token` as bearer.
async fn auth_call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("{}/auth/v1{path}", app.url))
        .header("apikey", &app.anon_key)
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Signs `email` in; its access token (which names its session).
async fn sign_in(app: &TestApp, email: &str) -> String {
    let (status, body) = auth_call(
        app,
        reqwest::Method::POST,
        "/token?grant_type=password",
        &app.anon_key,
        Some(json!({"email": email, "password": "password123"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body["user"]["id"].is_string());
    body["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn sign_out_ban_and_key_revocation_close_open_sockets() {
    init_logs();
    let mut config = sovra_config::Config::default();
    config.realtime.revalidate_interval = 1;
    let app = TestApp::spawn_with(config).await;
    let service = app.service_role_key.clone();
    let (status, user) = auth_call(
        &app,
        reqwest::Method::POST,
        "/admin/users",
        &service,
        Some(json!({"email": "rt@example.com", "password": "password123", "email_confirm": true})),
    )
    .await;
    assert_eq!(status, 200, "{user}");
    let user_id = user["id"].as_str().unwrap().to_owned();
    // A socket that nothing revokes stays open throughout.
    let mut bystander = Client::connect(&app, &app.anon_key, "2.0.0").await;
    assert_eq!(
        bystander.join("realtime:a", json!({}), None).await["status"],
        "ok"
    );

    // Sign-out (global): a socket opened with the user's token, and a
    // channel joined with it on an anon socket, both close.
    let token = sign_in(&app, "rt@example.com").await;
    let mut own = Client::connect(&app, &token, "2.0.0").await;
    assert_eq!(
        own.join("realtime:a", json!({}), None).await["status"],
        "ok"
    );
    let mut joined = Client::connect(&app, &app.anon_key, "2.0.0").await;
    assert_eq!(
        joined.join("realtime:a", json!({}), Some(&token)).await["status"],
        "ok"
    );
    let (status, _) = auth_call(
        &app,
        reqwest::Method::POST,
        "/logout?scope=global",
        &token,
        None,
    )
    .await;
    assert_eq!(status, 204);
    let ended =
        "InvalidJWTToken: the session of this token has ended (signed out, banned or deleted)";
    assert_eq!(own.closed().await, (1008, ended.to_owned()));
    assert_eq!(joined.closed().await, (1008, ended.to_owned()));

    // A ban through the admin API.
    let token = sign_in(&app, "rt@example.com").await;
    let mut banned = Client::connect(&app, &token, "2.0.0").await;
    assert_eq!(
        banned.join("realtime:a", json!({}), None).await["status"],
        "ok"
    );
    let (status, body) = auth_call(
        &app,
        reqwest::Method::PUT,
        &format!("/admin/users/{user_id}"),
        &service,
        Some(json!({"ban_duration": "24h"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(banned.closed().await, (1008, ended.to_owned()));

    // A Sovra API key, revoked.
    let (status, made) = auth_call(
        &app,
        reqwest::Method::POST,
        "/admin/api_keys",
        &service,
        Some(json!({"name": "rt", "role": "authenticated"})),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let key = made["key"].as_str().unwrap().to_owned();
    let mut machine = Client::connect(&app, &key, "2.0.0").await;
    assert_eq!(
        machine.join("realtime:a", json!({}), None).await["status"],
        "ok"
    );
    let (status, _) = auth_call(
        &app,
        reqwest::Method::DELETE,
        &format!("/admin/api_keys/{}", made["id"].as_str().unwrap()),
        &service,
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        machine.closed().await,
        (
            1008,
            "InvalidJWTToken: this API key has been revoked".to_owned()
        )
    );

    let r = bystander.send("phoenix", "heartbeat", json!({})).await;
    assert_eq!(bystander.reply(&r).await["status"], "ok");
}

#[tokio::test]
async fn a_subscriber_that_does_not_read_is_cut_off_and_the_others_get_every_change() {
    let mut config = sovra_config::Config::default();
    config.realtime.outbound_queue_bytes = 65_536;
    config.realtime.slow_consumer_timeout = 1;
    let app = change_app_with(config, FIXTURE).await;
    let (alice, token) = user(&app);
    let mut reader = Client::connect(&app, &app.anon_key, "2.0.0").await;
    let mut deaf = Client::connect(&app, &app.anon_key, "2.0.0").await;
    pg_join(&mut reader, "realtime:notes", notes(), &token).await;
    pg_join(&mut deaf, "realtime:notes", notes(), &token).await;
    feed_ready(&app).await;
    // About 9 MB of changes: more than the socket buffers and the queue.
    app.db
        .client()
        .await
        .batch_execute(&format!(
            "insert into notes (owner_id, body) select '{alice}', 'row ' || g || ' ' || repeat('p', 2000) from generate_series(1, 4000) g"
        ))
        .await
        .unwrap();
    for i in 1..=4000 {
        let (_, p, _) = reader.expect("postgres_changes").await;
        let body = p["data"]["record"]["body"].as_str().unwrap();
        assert!(body.starts_with(&format!("row {i} ")), "change {i}");
    }
    // The one that read nothing was cut off; what it finds when it reads
    // is what was in flight, then the end of the connection (with the
    // reason, when the close frame got through).
    let (code, reason) = deaf.closed().await;
    if code != 0 {
        assert_eq!(code, 1008);
        assert!(reason.starts_with("slow consumer: "), "{reason}");
    }
}
