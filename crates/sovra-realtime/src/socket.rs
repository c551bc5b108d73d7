//! One WebSocket connection: a reader that handles frames and a writer
//! that drains the connection's bounded queue.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, WebSocket};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use sovra_realtime_proto::filter::Filter;
use sovra_realtime_proto::frame::{self, Message, Vsn};

use crate::hub::{Channel, Out, PgBinding, SocketTx};
use crate::principal::Principal;
use crate::service::RealtimeService;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

struct Connection {
    service: Arc<RealtimeService>,
    socket: Arc<SocketTx>,
    principal: Principal,
    channels: HashMap<String, Arc<Channel>>,
    window_start: Instant,
    window_count: u32,
    last_seen: Instant,
    /// Channels that asked for `replication_ready` and wait for the change
    /// feed, with the moment they give up.
    awaiting_replication: Vec<(Arc<Channel>, Instant)>,
}

/// How long a join with `config.broadcast.replication_ready` waits for the
/// change feed before its channel is closed.
const REPLICATION_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Replay as Supabase bounds it: at most 25 messages, 10 by default.
const REPLAY_MAX_LIMIT: i64 = 25;
const REPLAY_DEFAULT_LIMIT: i64 = 10;

pub(crate) async fn run(
    service: Arc<RealtimeService>,
    socket: WebSocket,
    vsn: Vsn,
    principal: Principal,
    until: Option<crate::EndSignal>,
) {
    let (mut sink, mut stream) = socket.split();
    let (socket_tx, mut rx) = SocketTx::new(vsn, service.config.outbound_queue_bytes);
    let shared = Arc::new(socket_tx);
    service.register_socket(&shared, &principal);
    let writer_socket = shared.clone();
    let mut writer = tokio::spawn(async move {
        // A send can block on a client that does not read; the kill signal
        // interrupts it.
        let killed = loop {
            let out = tokio::select! {
                biased;
                () = writer_socket.kill.notified() => break true,
                out = rx.recv() => out,
            };
            let Some(out) = out else { break false };
            let message = match &out {
                Out::Text(text) => WsMessage::Text(text.clone()),
                Out::Binary(bytes) => WsMessage::Binary(bytes.clone()),
            };
            tokio::select! {
                biased;
                () = writer_socket.kill.notified() => break true,
                sent = sink.send(message) => if sent.is_err() { break false },
            }
            writer_socket.written(&out);
        };
        if killed {
            let kill = writer_socket
                .kill_reason
                .lock()
                .ok()
                .and_then(|r| r.clone());
            let (code, reason) = kill.map_or((1008, String::new()), |k| (k.code, k.reason));
            let close = WsMessage::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(close)).await;
        } else {
            let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        }
    });
    let mut connection = Connection {
        service: service.clone(),
        socket: shared.clone(),
        principal,
        channels: HashMap::new(),
        window_start: Instant::now(),
        window_count: 0,
        last_seen: Instant::now(),
        awaiting_replication: Vec::new(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut until = until.unwrap_or_else(|| Box::pin(std::future::pending()));
    let mut ended_from_outside = false;
    let ended_by_writer = loop {
        tokio::select! {
            _ = &mut writer => break true,
            reason = &mut until, if !ended_from_outside => {
                ended_from_outside = true;
                shared.cut_off(1008, "session_ended", &reason);
            }
            _ = tick.tick() => {
                if connection.last_seen.elapsed() > service.config.idle_timeout {
                    shared.cut_off(1008, "idle", "idle timeout: no heartbeat");
                }
                connection.expire_tokens();
                connection.check_replication();
            }
            frame = stream.next() => {
                let frame = match frame {
                    None => break false,
                    Some(Ok(frame)) => frame,
                    Some(Err(err)) => {
                        // The client broke the WebSocket protocol: close
                        // with the code RFC 6455 gives the fault.
                        if let Some((code, label, reason)) = close_for(&err, service.config.max_frame_bytes) {
                            metrics::counter!("sovra_realtime_refused_total", "reason" => label).increment(1);
                            shared.cut_off(code, label, &reason);
                        }
                        break false;
                    }
                };
                connection.last_seen = Instant::now();
                let message = match &frame {
                    WsMessage::Text(text) => frame::decode_text(vsn, text.as_str()),
                    WsMessage::Binary(bytes) => frame::decode_binary(bytes),
                    WsMessage::Close(_) => break false,
                    WsMessage::Ping(_) | WsMessage::Pong(_) => continue,
                };
                match message {
                    Ok(message) => connection.handle(message).await,
                    Err(err) => {
                        metrics::counter!("sovra_realtime_refused_total", "reason" => "bad_frame").increment(1);
                        if connection.over_rate() {
                            connection.rate_limited();
                            continue;
                        }
                        let text = match &frame {
                            WsMessage::Text(text) => Some(text.as_str()),
                            _ => None,
                        };
                        connection.send(&frame::malformed_reply(text, &err));
                    }
                }
            }
        }
    };
    for channel in connection.channels.values() {
        service.remove_channel(channel);
    }
    if !ended_by_writer && shared.is_closed() {
        // Let the writer send its close frame (it gives up after 1 s).
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
    }
    writer.abort();
}

/// The close code, metric label and reason for a WebSocket error of the
/// client's making; `None` when the connection just went away (reset, an
/// IO error), which is not a fault to answer or count.
fn close_for(err: &axum::Error, max_frame: usize) -> Option<(u16, &'static str, String)> {
    use tungstenite::error::{Error as WsError, ProtocolError};
    let inner = std::error::Error::source(err).and_then(|e| e.downcast_ref::<WsError>());
    match inner {
        Some(WsError::Capacity(_)) => Some((
            1009,
            "frame_too_large",
            format!("frame too large: the limit is {max_frame} bytes"),
        )),
        Some(WsError::Utf8(_)) => {
            Some((1007, "bad_utf8", "text frame is not valid UTF-8".to_owned()))
        }
        Some(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => None,
        Some(WsError::Protocol(protocol)) => Some((
            1002,
            "protocol_error",
            format!("protocol error: {protocol}"),
        )),
        Some(WsError::AttackAttempt) => Some((1002, "protocol_error", "protocol error".to_owned())),
        _ => None,
    }
}

/// A boolean as Supabase's join payload reads it: `true`/`false` or their
/// text.
fn flexible_bool(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// The binding of a legacy join (realtime-js v1), read from the topic as
/// Supabase does: `schema[:table[:filter]]`.
fn legacy_binding(sub_topic: &str) -> Value {
    let mut parts = sub_topic.splitn(3, ':');
    let mut binding = serde_json::Map::new();
    for key in ["schema", "table", "filter"] {
        if let Some(part) = parts.next() {
            binding.insert(key.to_owned(), Value::String(part.to_owned()));
        }
    }
    Value::Object(binding)
}

/// A binding's `select`: column names as a comma-separated text or an
/// array of texts.
fn parse_select(value: &Value) -> Result<Vec<String>, String> {
    let names: Vec<String> = match value {
        Value::String(text) => text.split(',').map(|c| c.trim().to_owned()).collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(|c| c.trim().to_owned())
                    .ok_or_else(|| "select must list column names".to_owned())
            })
            .collect::<Result<_, _>>()?,
        _ => {
            return Err(
                "select must be a text like \"id,name\" or a list of column names".to_owned(),
            );
        }
    };
    if names.is_empty() || names.iter().any(String::is_empty) {
        return Err("select names an empty column".to_owned());
    }
    if names.iter().any(|c| c == "*") {
        return Err("select takes column names; leave it out to receive every column".to_owned());
    }
    Ok(names)
}

/// `config.broadcast.replay`: `(since in ms, limit)`, or why it is refused.
fn replay_params(replay: &Value) -> Result<(i64, i64), &'static str> {
    let Value::Object(map) = replay else {
        return Err("UnableToReplayMessages: Replay params are not valid");
    };
    let number = |key: &str, default: i64| match map.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(value) => value
            .as_i64()
            .ok_or("UnableToReplayMessages: Replay params are not valid"),
    };
    let since = number("since", 0)?;
    let limit = number("limit", REPLAY_DEFAULT_LIMIT)?.clamp(1, REPLAY_MAX_LIMIT);
    Ok((since, limit))
}

fn status_reply(request: &Message, status: &str, response: Value) -> Message {
    frame::reply(request, status, response)
}

/// The `system` message of a `replication_ready` join.
fn replication_ready_message(channel: &Channel) -> Message {
    frame::push(
        &channel.topic,
        channel.join_ref.as_deref(),
        "system",
        json!({"extension": "system", "status": "ok", "message": "Replication connection established", "channel": channel.sub_topic()}),
    )
}

/// A replayed broadcast: `meta.replayed` and the message's id, as
/// Supabase sends it; `None` for raw bytes to a vsn 1 socket, which cannot
/// carry them.
fn replayed_out(topic: &str, vsn: Vsn, message: &crate::authz::Stored) -> Option<Out> {
    let meta = json!({"replayed": true, "id": message.id});
    if let Some(bytes) = &message.binary {
        return match vsn {
            Vsn::V1 => None,
            Vsn::V2 => {
                frame::encode_broadcast_binary(topic, &message.event, Some(&meta), bytes, false)
                    .map(|frame| Out::Binary(frame.into()))
            }
        };
    }
    let mut payload: Value = message
        .payload
        .as_deref()
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_else(|| json!({}));
    // The payload carries its id, as live delivery (and Supabase's
    // `realtime.send`) gives it.
    if let Value::Object(map) = &mut payload
        && !map.contains_key("id")
    {
        map.insert("id".to_owned(), Value::String(message.id.clone()));
    }
    let push = frame::push(
        topic,
        None,
        "broadcast",
        json!({"type": "broadcast", "event": message.event, "payload": payload, "meta": meta}),
    );
    Some(Out::Text(frame::encode_text(vsn, &push).into()))
}

fn reason(text: impl Into<String>) -> Value {
    json!({"reason": text.into()})
}

impl Connection {
    fn send(&self, message: &Message) {
        self.socket.send_message(message);
    }

    fn ok(&self, request: &Message) {
        self.send(&status_reply(request, "ok", json!({})));
    }

    fn error(&self, request: &Message, text: impl Into<String>) {
        self.send(&status_reply(request, "error", reason(text)));
    }

    /// Counts a client message against the per-connection rate.
    fn over_rate(&mut self) -> bool {
        if self.window_start.elapsed() >= Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.window_count = 0;
        }
        self.window_count += 1;
        self.window_count > self.service.config.max_events_per_second
    }

    /// Tells every channel, then closes the socket: too many messages.
    fn rate_limited(&self) {
        metrics::counter!("sovra_realtime_refused_total", "reason" => "rate_limit").increment(1);
        for channel in self.channels.values() {
            self.system_error(channel, "Too many messages per second");
        }
        self.socket.cut_off(
            1008,
            "rate_limit",
            "rate limit: too many messages per second",
        );
    }

    async fn handle(&mut self, message: Message) {
        if message.topic == "phoenix" && message.event == "heartbeat" {
            self.ok(&message);
            return;
        }
        if self.over_rate() {
            self.rate_limited();
            return;
        }
        if !self.service.admit_tenant_event() {
            self.service.count_quota("realtime_events_per_second");
            self.rate_limited();
            return;
        }
        match message.event.as_str() {
            "phx_join" => self.join(message).await,
            "phx_leave" => self.leave(&message),
            "access_token" => self.refresh_token(&message).await,
            "broadcast" => self.broadcast(message).await,
            "presence" => self.presence(&message).await,
            _ if !self.channels.contains_key(&message.topic) => {
                self.error(&message, "unmatched topic")
            }
            _ => {}
        }
    }

    fn system_error(&self, channel: &Channel, text: &str) {
        self.send(&frame::push(
            &channel.topic,
            channel.join_ref.as_deref(),
            "system",
            json!({"extension": "system", "status": "error", "message": text, "channel": channel.sub_topic()}),
        ));
    }

    /// Closes a channel from the server side with a reason.
    fn shut_down(&mut self, topic: &str, text: &str) {
        if let Some(channel) = self.channels.remove(topic) {
            self.system_error(&channel, text);
            self.send(&frame::push(
                topic,
                channel.join_ref.as_deref(),
                "phx_close",
                json!({}),
            ));
            self.service.remove_channel(&channel);
        }
    }

    /// Tells the channels waiting for `replication_ready` once the change
    /// feed runs; closes those whose wait ran out, as Supabase does.
    fn check_replication(&mut self) {
        if self.awaiting_replication.is_empty() {
            return;
        }
        let ready = self.service.replication_ready();
        let now = Instant::now();
        let waiting = std::mem::take(&mut self.awaiting_replication);
        for (channel, deadline) in waiting {
            // A channel left or replaced meanwhile is forgotten.
            if !self
                .channels
                .get(&channel.topic)
                .is_some_and(|c| Arc::ptr_eq(c, &channel))
            {
                continue;
            }
            if ready {
                self.send(&replication_ready_message(&channel));
            } else if now >= deadline {
                self.shut_down(
                    &channel.topic,
                    "Replication connection was not established in time",
                );
            } else {
                self.awaiting_replication.push((channel, deadline));
            }
        }
    }

    fn expire_tokens(&mut self) {
        let now = now_secs();
        let expired: Vec<(String, i64)> = self
            .channels
            .iter()
            .filter_map(|(topic, channel)| {
                let exp = channel.principal().exp()?;
                (exp < now).then(|| (topic.clone(), now - exp))
            })
            .collect();
        for (topic, ago) in expired {
            self.shut_down(&topic, &format!("Token has expired {ago} seconds ago"));
        }
    }

    fn principal_for(&self, token: Option<&str>) -> Result<Principal, String> {
        let principal = match token {
            Some(token) if !token.is_empty() && !token.starts_with("sb_") => {
                (self.service.verifier)(token).map_err(|err| format!("InvalidJWTToken: {err}"))?
            }
            _ => self.principal.clone(),
        };
        if let Some(exp) = principal.exp()
            && exp < now_secs()
        {
            return Err(format!(
                "InvalidJWTToken: Token has expired {} seconds ago",
                now_secs() - exp
            ));
        }
        Ok(principal)
    }

    async fn join(&mut self, message: Message) {
        let topic = message.topic.clone();
        let sub = topic.strip_prefix("realtime:").unwrap_or(&topic).to_owned();
        if sub.is_empty() {
            self.error(&message, "TopicNameRequired: You must provide a topic name");
            return;
        }
        if !self.channels.contains_key(&topic)
            && self.channels.len() >= self.service.config.max_channels_per_connection
        {
            metrics::counter!("sovra_realtime_refused_total", "reason" => "max_channels")
                .increment(1);
            self.service.count_quota("realtime_channels_per_connection");
            self.error(&message, "ChannelRateLimitReached: Too many channels");
            return;
        }
        let payload = &message.payload;
        // A join without `config` is a legacy one (realtime-js v1 and
        // older clients): the topic names the one binding, as Supabase
        // reads it.
        let legacy = payload.get("config").is_none();
        let config = if legacy {
            json!({"postgres_changes": [legacy_binding(&sub)]})
        } else {
            payload.get("config").cloned().unwrap_or_else(|| json!({}))
        };
        let bindings_asked = config
            .get("postgres_changes")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let max_bindings = self.service.config.max_bindings_per_channel;
        if bindings_asked > max_bindings {
            metrics::counter!("sovra_realtime_refused_total", "reason" => "max_bindings")
                .increment(1);
            self.error(
                &message,
                format!(
                    "TooManyBindings: a channel may have at most {max_bindings} postgres_changes bindings, this join has {bindings_asked}"
                ),
            );
            return;
        }
        let token = payload
            .get("access_token")
            .or_else(|| payload.get("user_token"))
            .and_then(Value::as_str);
        let principal = match self.principal_for(token) {
            Ok(p) => p,
            Err(text) => {
                self.error(&message, text);
                return;
            }
        };
        let flag = |path: [&str; 2]| {
            config
                .get(path[0])
                .and_then(|c| c.get(path[1]))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        };
        let private = config
            .get("private")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let presence_enabled = flag(["presence", "enabled"]);
        let presence_key = config
            .get("presence")
            .and_then(|p| p.get("key"))
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
        let mut readable = vec!["broadcast".to_owned(), "presence".to_owned()];
        if private {
            match self
                .service
                .can_read(&principal, &sub, &["broadcast", "presence"])
                .await
            {
                Ok(allowed) if !allowed.is_empty() => readable = allowed,
                Ok(_) => {
                    self.error(&message, format!("Unauthorized: You do not have permissions to read from this Channel topic: {sub}"));
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "private channel check failed");
                    self.error(&message, "Unable to check channel permissions");
                    return;
                }
            }
        }
        // `config.broadcast.replay`: private channels that may read
        // broadcasts get the latest stored ones, as on Supabase.
        let mut replayed = Vec::new();
        if let Some(replay) = config
            .get("broadcast")
            .and_then(|b| b.get("replay"))
            .filter(|r| !r.is_null())
        {
            if !private {
                self.error(
                    &message,
                    "UnableToReplayMessages: Replay is not allowed for public channels",
                );
                return;
            }
            if !readable.iter().any(|e| e == "broadcast") {
                self.error(&message, format!("Unauthorized: You do not have permissions to read from this Channel topic: {sub}"));
                return;
            }
            let (since, limit) = match replay_params(replay) {
                Ok(params) => params,
                Err(text) => {
                    self.error(&message, text);
                    return;
                }
            };
            match self
                .service
                .replay_messages(&principal, &sub, since, limit)
                .await
            {
                Ok(messages) => replayed = messages,
                Err(err) => {
                    tracing::warn!(error = %err, "broadcast replay failed");
                    self.error(
                        &message,
                        "UnableToReplayMessages: Realtime was unable to replay messages",
                    );
                    return;
                }
            }
        }
        let replication_ready = flexible_bool(
            config
                .get("broadcast")
                .and_then(|b| b.get("replication_ready")),
        );
        self.service.ensure_feed().await;
        let id = self.service.hub.next_id();
        let mut bindings = Vec::new();
        let mut echo = Vec::new();
        let mut filter_errors = Vec::new();
        // `since` (an extension realtime-js passes through untouched): the
        // commit_timestamp of the last change the client saw.
        let mut since = None;
        if let Some(list) = config.get("postgres_changes").and_then(Value::as_array) {
            for (index, binding) in list.iter().enumerate() {
                if let Some(text) = binding.get("since").and_then(Value::as_str) {
                    match sovra_realtime_proto::pgoutput::parse_timestamp(text) {
                        Some(time) => since = Some(since.map_or(time, |s: i64| s.min(time))),
                        None => filter_errors.push(format!(
                            "since must be an RFC 3339 timestamp (a commit_timestamp), not {text:?}"
                        )),
                    }
                }
                let binding_id =
                    i64::try_from(id).unwrap_or(0).saturating_mul(1000) + index as i64 + 1;
                let text = |k: &str| binding.get(k).and_then(Value::as_str).map(str::to_owned);
                let event = text("event")
                    .unwrap_or_else(|| "*".to_owned())
                    .to_ascii_uppercase();
                let schema = text("schema").unwrap_or_else(|| "public".to_owned());
                let select = match binding.get("select") {
                    None | Some(Value::Null) => Ok(None),
                    Some(value) => parse_select(value)
                        .map(Some)
                        .map_err(|err| format!("Error parsing `select` params: {err}")),
                };
                let parsed = Filter::parse(text("filter").as_deref().unwrap_or(""))
                    .map_err(|err| err.to_string())
                    .and_then(|filter| select.map(|select| (filter, select)));
                let (filter, select) = match parsed {
                    Ok(parsed) => parsed,
                    Err(err) => {
                        filter_errors.push(err);
                        // A binding whose filter or select cannot be read
                        // matches nothing.
                        (
                            Filter::parse("__invalid__=is.null").unwrap_or_default(),
                            None,
                        )
                    }
                };
                bindings.push(PgBinding {
                    id: binding_id,
                    event,
                    schema,
                    table: text("table"),
                    filter,
                    select,
                });
                let mut echoed = binding.as_object().cloned().unwrap_or_default();
                echoed.insert("id".to_owned(), json!(binding_id));
                echo.push(Value::Object(echoed));
            }
        }
        if let Some(old) = self.channels.remove(&topic) {
            self.send(&frame::push(
                &topic,
                old.join_ref.as_deref(),
                "phx_close",
                json!({}),
            ));
            self.service.remove_channel(&old);
        }
        let bindings_empty = bindings.is_empty();
        let channel = Arc::new(Channel {
            id,
            socket: self.socket.clone(),
            topic: topic.clone(),
            join_ref: message.join_ref.clone().or_else(|| message.msg_ref.clone()),
            private,
            broadcast_self: flag(["broadcast", "self"]),
            ack: flag(["broadcast", "ack"]),
            presence_key,
            pg: bindings,
            legacy,
            replayed: Mutex::new(replayed.iter().map(|m| m.id.clone()).collect()),
            principal: RwLock::new(principal),
            can_write: Mutex::new([None, None]),
            read_broadcast: AtomicBool::new(false),
            read_presence: AtomicBool::new(false),
            // A catch-up holds the channel's live changes until its replay
            // is queued: they follow it without a gap.
            held: Mutex::new((since.is_some() && !bindings_empty).then(crate::hub::Held::default)),
        });
        channel.set_readable(&readable);
        // Delivery is held only from before the channel is visible to the
        // feed until the replay is taken (not while it is sent).
        let service = self.service.clone();
        let order = match since {
            Some(_) if !channel.pg.is_empty() => Some(service.fanout.delivery.lock().await),
            _ => None,
        };
        self.service.hub.add(channel.clone());
        self.channels.insert(topic.clone(), channel.clone());
        self.send(&status_reply(
            &message,
            "ok",
            json!({"postgres_changes": echo}),
        ));
        for stored in &replayed {
            if let Some(out) = replayed_out(&topic, self.socket.vsn, stored) {
                self.socket.send(out);
            }
        }
        if presence_enabled && channel.read_presence.load(Ordering::Relaxed) {
            let state = self.service.hub.presence_state(&topic, private);
            self.send(&frame::push(&topic, None, "presence_state", state));
        }
        if !channel.pg.is_empty() {
            let (status, text) = match filter_errors.first() {
                Some(err) => ("error", err.clone()),
                None => ("ok", "Subscribed to PostgreSQL".to_owned()),
            };
            self.send(&channel.changes_status(status, &text));
        }
        if replication_ready {
            if self.service.replication_ready() {
                self.send(&replication_ready_message(&channel));
            } else {
                self.awaiting_replication
                    .push((channel.clone(), Instant::now() + REPLICATION_READY_TIMEOUT));
            }
        }
        if let (Some(since), Some(order)) = (since, order) {
            let replay = self.service.fanout.snapshot(since);
            drop(order);
            self.service.catch_up(&channel, replay).await;
        }
    }

    fn leave(&mut self, message: &Message) {
        self.ok(message);
        if let Some(channel) = self.channels.remove(&message.topic) {
            self.send(&frame::push(
                &message.topic,
                channel.join_ref.as_deref(),
                "phx_close",
                json!({}),
            ));
            self.service.remove_channel(&channel);
        }
    }

    async fn refresh_token(&mut self, message: &Message) {
        let Some(channel) = self.channels.get(&message.topic).cloned() else {
            return;
        };
        let Some(token) = message.payload.get("access_token").and_then(Value::as_str) else {
            return;
        };
        if token.is_empty() || token.starts_with("sb_") {
            return;
        }
        let principal = match self.principal_for(Some(token)) {
            Ok(p) => p,
            Err(text) => {
                self.shut_down(&message.topic, &text);
                return;
            }
        };
        if channel.private {
            let readable = self
                .service
                .can_read(&principal, channel.sub_topic(), &["broadcast", "presence"])
                .await
                .unwrap_or_default();
            if readable.is_empty() {
                self.shut_down(
                    &message.topic,
                    &format!(
                        "You no longer have permission to read from this Channel topic: {}",
                        channel.sub_topic()
                    ),
                );
                return;
            }
            channel.set_readable(&readable);
        }
        if let Ok(mut current) = channel.principal.write() {
            *current = principal;
        }
        if let Ok(mut cached) = channel.can_write.lock() {
            *cached = [None, None];
        }
    }

    /// Whether a private channel's caller may write (checked once per token).
    async fn may_write(&self, channel: &Channel, extension: &str) -> bool {
        if !channel.private {
            return true;
        }
        let slot = usize::from(extension == "presence");
        if let Some(known) = channel.can_write.lock().ok().and_then(|c| c[slot]) {
            return known;
        }
        let allowed = self
            .service
            .can_write(&channel.principal(), channel.sub_topic(), extension)
            .await
            .unwrap_or(false);
        if let Ok(mut cached) = channel.can_write.lock() {
            cached[slot] = Some(allowed);
        }
        allowed
    }

    async fn broadcast(&mut self, message: Message) {
        let Some(channel) = self.channels.get(&message.topic).cloned() else {
            self.error(&message, "unmatched topic");
            return;
        };
        if message.payload.get("type").and_then(Value::as_str) != Some("broadcast") {
            self.error(&message, "broadcast payload must have type broadcast");
            return;
        }
        if !self.may_write(&channel, "broadcast").await {
            if channel.ack {
                self.error(
                    &message,
                    "Unauthorized: You do not have permissions to write to this Channel topic",
                );
            }
            return;
        }
        let skip = (!channel.broadcast_self).then_some(channel.id);
        self.service.broadcast(
            &channel.topic,
            channel.private,
            message.payload.clone(),
            message.binary.as_deref(),
            skip,
        );
        if channel.ack {
            self.ok(&message);
        }
    }

    async fn presence(&mut self, message: &Message) {
        let Some(channel) = self.channels.get(&message.topic).cloned() else {
            self.error(message, "unmatched topic");
            return;
        };
        match message.payload.get("event").and_then(Value::as_str) {
            Some("track") => {
                let Some(state) = message
                    .payload
                    .get("payload")
                    .and_then(Value::as_object)
                    .cloned()
                else {
                    self.error(message, "Presence track payload must be a map");
                    return;
                };
                let size = Value::Object(state.clone()).to_string().len();
                let max = self.service.config.max_presence_bytes;
                if size > max {
                    metrics::counter!("sovra_realtime_refused_total", "reason" => "presence_size")
                        .increment(1);
                    self.error(
                        message,
                        format!("PresencePayloadTooLarge: a presence state may have at most {max} bytes, this one has {size}"),
                    );
                    return;
                }
                if !self.may_write(&channel, "presence").await {
                    self.error(message, "Unauthorized: You do not have permissions to track presence on this Channel topic");
                    return;
                }
                self.service.track(&channel, state);
                self.ok(message);
            }
            Some("untrack") => {
                self.service.untrack(&channel);
                self.ok(message);
            }
            _ => self.error(message, "presence event must be track or untrack"),
        }
    }
}
