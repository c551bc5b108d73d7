//! A WebSocket client speaking the Phoenix protocol as realtime-js does
//! (vsn 1.0.0 or 2.0.0), and the helpers the realtime tests share.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use sovra_test_support::TestApp;
use tokio_tungstenite::tungstenite::Message as Ws;

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) struct Client {
    ws: Stream,
    v2: bool,
    next: u64,
}

/// A received frame: event, topic, payload, ref, or a close.
#[derive(Debug, Clone)]
pub(crate) enum Got {
    Msg {
        topic: String,
        event: String,
        payload: Value,
        msg_ref: Option<String>,
    },
    /// A close frame: code and reason (0 and empty when the connection
    /// ended without one).
    Closed(u16, String),
}

impl Client {
    pub(crate) async fn connect(app: &TestApp, key: &str, vsn: &str) -> Client {
        let url = format!(
            "{}/realtime/v1/websocket?apikey={key}&vsn={vsn}",
            app.url.replace("http", "ws")
        );
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Client {
            ws,
            v2: vsn == "2.0.0",
            next: 0,
        }
    }

    /// Sends a raw WebSocket frame (a binary broadcast, say).
    pub(crate) async fn send_frame(&mut self, frame: Ws) {
        self.ws.send(frame).await.unwrap();
    }

    pub(crate) async fn send(&mut self, topic: &str, event: &str, payload: Value) -> String {
        self.next += 1;
        let r = self.next.to_string();
        let text = if self.v2 {
            json!([r, r, topic, event, payload]).to_string()
        } else {
            json!({"topic": topic, "event": event, "payload": payload, "ref": r, "join_ref": r})
                .to_string()
        };
        self.ws.send(Ws::Text(text.into())).await.unwrap();
        r
    }

    pub(crate) async fn next_frame(&mut self, wait: Duration) -> Option<Got> {
        loop {
            let frame = tokio::time::timeout(wait, self.ws.next()).await.ok()??;
            match frame {
                Ok(Ws::Text(text)) => {
                    let v: Value = serde_json::from_str(text.as_str()).unwrap();
                    let (topic, event, payload, msg_ref) = if let Value::Array(a) = &v {
                        (a[2].clone(), a[3].clone(), a[4].clone(), a[1].clone())
                    } else {
                        (
                            v["topic"].clone(),
                            v["event"].clone(),
                            v["payload"].clone(),
                            v["ref"].clone(),
                        )
                    };
                    return Some(Got::Msg {
                        topic: topic.as_str().unwrap_or("").to_owned(),
                        event: event.as_str().unwrap_or("").to_owned(),
                        payload,
                        msg_ref: msg_ref.as_str().map(str::to_owned),
                    });
                }
                Ok(Ws::Binary(bytes)) => {
                    // kind 4: topic, event, meta, JSON or raw payload
                    assert_eq!(bytes[0], 4);
                    let (t, e, m) = (bytes[1] as usize, bytes[2] as usize, bytes[3] as usize);
                    let topic = String::from_utf8(bytes[5..5 + t].to_vec()).unwrap();
                    let event = String::from_utf8(bytes[5 + t..5 + t + e].to_vec()).unwrap();
                    let meta = &bytes[5 + t + e..5 + t + e + m];
                    let body = bytes[5 + t + e + m..].to_vec();
                    let mut payload = json!({"type": "broadcast", "event": event, "binary": body});
                    if !meta.is_empty() {
                        payload["meta"] = serde_json::from_slice(meta).unwrap();
                    }
                    return Some(Got::Msg {
                        topic,
                        event: "broadcast".to_owned(),
                        payload,
                        msg_ref: None,
                    });
                }
                Ok(Ws::Close(frame)) => {
                    return Some(match frame {
                        Some(f) => Got::Closed(f.code.into(), f.reason.to_string()),
                        None => Got::Closed(0, String::new()),
                    });
                }
                Ok(_) => continue,
                Err(_) => return Some(Got::Closed(0, String::new())),
            }
        }
    }

    /// The next message with `event` (skipping others); waits up to 20 s,
    /// only to catch a hang.
    pub(crate) async fn expect(&mut self, event: &str) -> (String, Value, Option<String>) {
        self.expect_within(event, Duration::from_secs(20)).await
    }

    /// [`Self::expect`] for a message that comes after a server-side wait
    /// of its own: `patience` only catches a hang.
    pub(crate) async fn expect_within(
        &mut self,
        event: &str,
        patience: Duration,
    ) -> (String, Value, Option<String>) {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_frame(left).await {
                Some(Got::Msg {
                    topic,
                    event: e,
                    payload,
                    msg_ref,
                }) if e == event => return (topic, payload, msg_ref),
                Some(Got::Msg { .. }) => continue,
                other => panic!("waiting for {event}, got {other:?}"),
            }
        }
    }

    /// The reply to `r`.
    pub(crate) async fn reply(&mut self, r: &str) -> Value {
        loop {
            let (_, payload, msg_ref) = self.expect("phx_reply").await;
            if msg_ref.as_deref() == Some(r) {
                return payload;
            }
        }
    }

    /// Nothing with `event` arrives within `wait`.
    pub(crate) async fn silent(&mut self, event: &str, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_frame(left).await {
                Some(Got::Msg {
                    event: e, payload, ..
                }) if e == event => panic!("unexpected {event}: {payload}"),
                Some(Got::Closed(code, reason)) => panic!("closed: {code} {reason}"),
                None => return,
                _ => {}
            }
        }
    }

    pub(crate) async fn join(&mut self, topic: &str, config: Value, token: Option<&str>) -> Value {
        let mut payload = json!({"config": config});
        if let Some(token) = token {
            payload["access_token"] = json!(token);
        }
        let r = self.send(topic, "phx_join", payload).await;
        self.reply(&r).await
    }

    /// Joins the legacy way (realtime-js v1): no `config`, the binding in
    /// the topic.
    pub(crate) async fn join_legacy(&mut self, topic: &str, token: &str) -> Value {
        let r = self
            .send(topic, "phx_join", json!({"user_token": token}))
            .await;
        self.reply(&r).await
    }

    /// Waits (generously, only to catch a hang) for the connection to
    /// close; returns the close code and reason.
    pub(crate) async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next_frame(Duration::from_secs(30)).await {
                Some(Got::Closed(code, reason)) => return (code, reason),
                Some(_) => continue,
                None => panic!("not closed"),
            }
        }
    }
}

pub(crate) fn init_logs() {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(filter)
        .try_init();
}

pub(crate) async fn app() -> TestApp {
    init_logs();
    TestApp::spawn().await
}

pub(crate) fn user(app: &TestApp) -> (String, String) {
    let id = uuid::Uuid::new_v4().to_string();
    (
        id.clone(),
        app.sign(Value::Object(TestApp::user_claims(&id))),
    )
}

/// A server with `fixture` (SQL) applied to its database.
pub(crate) async fn change_app(fixture: &str) -> TestApp {
    change_app_with(sovra_config::Config::default(), fixture).await
}

/// A server configured by `config`, with `fixture` (SQL) applied.
pub(crate) async fn change_app_with(config: sovra_config::Config, fixture: &str) -> TestApp {
    init_logs();
    let app = TestApp::spawn_with(config).await;
    app.db.client().await.batch_execute(fixture).await.unwrap();
    app
}

/// Joins `topic` with `postgres_changes` bindings, waits for the
/// "Subscribed" system message, and returns the bindings' ids.
pub(crate) async fn pg_join(
    client: &mut Client,
    topic: &str,
    bindings: Value,
    token: &str,
) -> Vec<i64> {
    let reply = client
        .join(topic, json!({"postgres_changes": bindings}), Some(token))
        .await;
    assert_eq!(reply["status"], "ok", "{reply}");
    let (_, system, _) = client.expect("system").await;
    assert_eq!(system["extension"], "postgres_changes");
    assert_eq!(system["status"], "ok", "{system}");
    reply["response"]["postgres_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect()
}

/// Waits until the feed leads (its slot exists), so that changes made
/// from now on are seen.
pub(crate) async fn feed_ready(app: &TestApp) {
    for _ in 0..400 {
        if app.tenant.realtime.feed_slot().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the change feed did not start");
}

/// Every `postgres_changes` (and `system`) message that arrives until
/// nothing has come for `quiet`.
pub(crate) async fn drain(client: &mut Client, quiet: Duration) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while let Some(got) = client.next_frame(quiet).await {
        match got {
            Got::Msg { event, payload, .. } => out.push((event, payload)),
            Got::Closed(code, reason) => panic!("closed: {code} {reason}"),
        }
    }
    out
}
