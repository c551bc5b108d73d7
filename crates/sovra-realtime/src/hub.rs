//! The in-process fan-out: which channels are joined to which topic, and
//! presence per topic. A message is encoded once per protocol version and
//! the same bytes are queued to every receiver. Each socket has a bounded
//! queue; a receiver whose queue is full is cut off (its socket closes with
//! a reason) instead of being buffered without end.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::body::Bytes;
use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sovra_realtime_proto::filter::Filter;
use sovra_realtime_proto::frame::{self, Message, Vsn};
use tokio::sync::{Notify, mpsc};

use crate::principal::Principal;

/// What a socket's writer sends: shared, reference-counted bytes, so that
/// one encoded message reaches every receiver without a copy.
#[derive(Clone, Debug)]
pub(crate) enum Out {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Out {
    /// Bytes this frame holds while it waits in a queue: its payload plus
    /// a fixed overhead, so that many tiny frames count too.
    pub(crate) fn queued_bytes(&self) -> usize {
        QUEUE_ENTRY_OVERHEAD
            + match self {
                Out::Text(text) => text.len(),
                Out::Binary(bytes) => bytes.len(),
            }
    }
}

/// What one queued frame costs beyond its bytes (the queue entry, the
/// reference count of the shared buffer).
pub(crate) const QUEUE_ENTRY_OVERHEAD: usize = 64;

/// Why a socket is closed from the server side: the WebSocket close code,
/// the label counted in `sovra_realtime_disconnects_total`, and the reason
/// sent in the close frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Kill {
    pub(crate) code: u16,
    pub(crate) label: &'static str,
    pub(crate) reason: String,
}

/// The sending half of a socket, shared by its channels.
///
/// The queue is counted in bytes: a frame is refused (and the socket cut
/// off as a slow consumer) when the bytes already queued plus the frame
/// would pass `limit`. A frame always fits an empty queue, so one message
/// larger than the limit still reaches a client that keeps up.
#[derive(Debug)]
pub(crate) struct SocketTx {
    pub(crate) vsn: Vsn,
    tx: mpsc::UnboundedSender<Out>,
    /// Bytes queued and not yet written to the socket.
    queued: AtomicUsize,
    limit: usize,
    /// Notified when the queue drains to half the limit or less.
    drained: Notify,
    /// Set when the socket must close; the reason is kept.
    closing: AtomicBool,
    pub(crate) kill: Notify,
    pub(crate) kill_reason: Mutex<Option<Kill>>,
}

impl SocketTx {
    /// A socket's sending half and the receiver its writer drains.
    pub(crate) fn new(vsn: Vsn, limit: usize) -> (SocketTx, mpsc::UnboundedReceiver<Out>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let socket = SocketTx {
            vsn,
            tx,
            queued: AtomicUsize::new(0),
            limit: limit.max(1),
            drained: Notify::new(),
            closing: AtomicBool::new(false),
            kill: Notify::new(),
            kill_reason: Mutex::new(None),
        };
        (socket, rx)
    }

    /// Queues a frame; a frame that would take the queue past its byte
    /// limit cuts the socket off.
    pub(crate) fn send(&self, out: Out) -> bool {
        if self.is_closed() {
            return false;
        }
        let size = out.queued_bytes();
        let before = self.queued.fetch_add(size, Ordering::AcqRel);
        if before > 0 && before + size > self.limit {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            self.cut_off(
                1008,
                "slow_consumer",
                &format!(
                    "slow consumer: more than {} bytes queued for this connection",
                    self.limit
                ),
            );
            return false;
        }
        if self.tx.send(out).is_err() {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// The writer took `out` off the queue and wrote it.
    pub(crate) fn written(&self, out: &Out) {
        let size = out.queued_bytes();
        let before = self.queued.fetch_sub(size, Ordering::AcqRel);
        let low = self.limit / 2;
        if before > low && before.saturating_sub(size) <= low {
            self.drained.notify_waiters();
        }
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Whether the queue holds more than half its limit.
    pub(crate) fn is_backed_up(&self) -> bool {
        self.queued() > self.limit / 2
    }

    /// Whether the socket is closing or closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.closing.load(Ordering::Acquire) || self.tx.is_closed()
    }

    /// Waits until the queue holds at most half its limit (`true`), the
    /// socket closes, or `deadline` passes (`false` for both).
    pub(crate) async fn drained_by(&self, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return false;
            }
            if !self.is_backed_up() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return !self.is_backed_up() && !self.is_closed();
            }
        }
    }

    /// Whether a frame of `size` bytes can be queued now.
    pub(crate) fn fits(&self, size: usize) -> bool {
        let queued = self.queued();
        queued == 0 || queued + size <= self.limit
    }

    /// Waits until a frame of `size` bytes fits (the client drained its
    /// queue to half) or the socket closes, for at most `patience`; a frame
    /// that still does not fit then cuts the client off. Each wait gets
    /// the whole `patience`: a client that drains half its queue within it
    /// every time is never cut off.
    pub(crate) async fn wait_for_room(&self, size: usize, patience: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + patience;
        while !self.fits(size) && !self.is_closed() && tokio::time::Instant::now() < deadline {
            self.drained_by(deadline).await;
        }
    }

    pub(crate) fn send_message(&self, message: &Message) -> bool {
        self.send(Out::Text(frame::encode_text(self.vsn, message).into()))
    }

    /// Closes the socket with `code` and `reason` (the first reason wins);
    /// `label` is what `sovra_realtime_disconnects_total` counts.
    pub(crate) fn cut_off(&self, code: u16, label: &'static str, reason: &str) {
        if let Ok(mut slot) = self.kill_reason.lock()
            && slot.is_none()
        {
            *slot = Some(Kill {
                code,
                label,
                reason: reason.to_owned(),
            });
            metrics::counter!("sovra_realtime_disconnects_total", "reason" => label).increment(1);
        }
        self.closing.store(true, Ordering::Release);
        self.kill.notify_one();
        // Whoever waits for this queue to drain stops waiting.
        self.drained.notify_waiters();
    }
}

/// Which presence left: topic, presence key, and the channel on its
/// instance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct PresenceLeave {
    pub(crate) topic_key: String,
    pub(crate) key: String,
    pub(crate) channel: u64,
}

/// A presence as its instance holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct PresenceEntry {
    pub(crate) topic_key: String,
    pub(crate) key: String,
    pub(crate) channel: u64,
    pub(crate) phx_ref: String,
    pub(crate) state: Map<String, Value>,
}

/// One `postgres_changes` binding of a channel.
#[derive(Clone, Debug)]
pub(crate) struct PgBinding {
    pub(crate) id: i64,
    /// `*`, `INSERT`, `UPDATE` or `DELETE` (upper case).
    pub(crate) event: String,
    pub(crate) schema: String,
    /// `None` (or `*`): every table of the schema.
    pub(crate) table: Option<String>,
    pub(crate) filter: Filter,
    /// The binding's `select`: the only columns its changes carry in
    /// `record`, `old_record` and `columns`; `None`: every column.
    pub(crate) select: Option<Vec<String>>,
}

impl PgBinding {
    pub(crate) fn wants(&self, schema: &str, table: &str, kind: &str) -> bool {
        (self.event == "*" || self.event == kind)
            && (self.schema == "*" || self.schema == schema)
            && self.table.as_deref().is_none_or(|t| t == "*" || t == table)
    }
}

/// A joined channel.
#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) id: u64,
    pub(crate) socket: Arc<SocketTx>,
    /// Full topic, e.g. `realtime:room1`.
    pub(crate) topic: String,
    pub(crate) join_ref: Option<String>,
    pub(crate) private: bool,
    pub(crate) broadcast_self: bool,
    pub(crate) ack: bool,
    pub(crate) presence_key: String,
    pub(crate) pg: Vec<PgBinding>,
    /// Joined the legacy way (realtime-js v1: no `config`, the binding in
    /// the topic): changes arrive with their type as the event
    /// (`INSERT`, …) and `data` as the payload.
    pub(crate) legacy: bool,
    /// Ids of the `realtime.messages` rows replayed at join
    /// (`config.broadcast.replay`): their live delivery is skipped.
    pub(crate) replayed: Mutex<std::collections::HashSet<String>>,
    /// The claims changes are checked with (updated by `access_token`).
    pub(crate) principal: RwLock<Principal>,
    /// Whether writes pass the private-channel policy, per extension
    /// (broadcast, presence); `None` until first checked.
    pub(crate) can_write: Mutex<[Option<bool>; 2]>,
    /// Whether the channel may read broadcasts (private channels: the
    /// `realtime.messages` policies for extension `broadcast`).
    pub(crate) read_broadcast: AtomicBool,
    /// Whether the channel may read presence (extension `presence`).
    pub(crate) read_presence: AtomicBool,
    /// While a catch-up replays to this channel, the live changes that
    /// arrive meanwhile wait here (in order) instead of in the socket's
    /// queue, so that they follow the replay; `None` otherwise.
    pub(crate) held: Mutex<Option<Held>>,
}

/// Live changes held back while a catch-up replays.
#[derive(Debug, Default)]
pub(crate) struct Held {
    outs: std::collections::VecDeque<Out>,
    bytes: usize,
}

impl Channel {
    /// Whether the `realtime.messages` row `id` was replayed to this
    /// channel at join.
    pub(crate) fn was_replayed(&self, id: &str) -> bool {
        self.replayed
            .lock()
            .map(|ids| !ids.is_empty() && ids.contains(id))
            .unwrap_or(false)
    }

    /// The topic without `realtime:`, as policies and `system` messages
    /// name it.
    pub(crate) fn sub_topic(&self) -> &str {
        self.topic.strip_prefix("realtime:").unwrap_or(&self.topic)
    }

    /// A `system` message about this channel's database changes.
    pub(crate) fn changes_status(&self, status: &str, message: &str) -> Message {
        frame::push(
            &self.topic,
            None,
            "system",
            json!({"extension": "postgres_changes", "status": status, "message": message, "channel": self.sub_topic()}),
        )
    }

    /// Queues a database change: to the socket, or behind a replay that
    /// is still going on. Held changes count against the socket's byte
    /// limit as queued ones do.
    pub(crate) fn send_change(&self, out: Out) -> bool {
        if let Ok(mut held) = self.held.lock()
            && let Some(held) = held.as_mut()
        {
            let size = out.queued_bytes();
            if held.bytes + size > self.socket.limit {
                self.socket.cut_off(
                    1008,
                    "slow_consumer",
                    &format!(
                        "slow consumer: more than {} bytes of changes waiting behind a catch-up",
                        self.socket.limit
                    ),
                );
                return false;
            }
            held.bytes += size;
            held.outs.push_back(out);
            return true;
        }
        self.socket.send(out)
    }

    /// Ends a replay: the held changes go to the socket in order, in steps
    /// the queue can take, waiting for the client (see
    /// [`SocketTx::wait_for_room`]) for at most `patience` each time.
    pub(crate) async fn release_held(&self, patience: std::time::Duration) {
        loop {
            let next_size = {
                let Ok(mut slot) = self.held.lock() else {
                    return;
                };
                let Some(held) = slot.as_mut() else {
                    return;
                };
                // Move what fits; the rest waits for room.
                while let Some(out) = held.outs.front() {
                    let size = out.queued_bytes();
                    if !self.socket.fits(size) {
                        break;
                    }
                    held.bytes -= size;
                    if let Some(out) = held.outs.pop_front() {
                        self.socket.send(out);
                    }
                }
                match held.outs.front() {
                    None => {
                        *slot = None;
                        return;
                    }
                    Some(out) => out.queued_bytes(),
                }
            };
            self.socket.wait_for_room(next_size, patience).await;
            if self.socket.is_closed() {
                return;
            }
            if !self.socket.fits(next_size) {
                // Stalled or out of time: the next send cuts it off.
                if let Ok(mut slot) = self.held.lock()
                    && let Some(held) = slot.take()
                {
                    for out in held.outs {
                        if !self.socket.send(out) {
                            break;
                        }
                    }
                }
                return;
            }
        }
    }

    /// Sets what the channel may read from the extensions its policies
    /// allow (`broadcast`, `presence`).
    pub(crate) fn set_readable(&self, extensions: &[String]) {
        let has = |e: &str| extensions.iter().any(|x| x == e);
        self.read_broadcast
            .store(has("broadcast"), Ordering::Relaxed);
        self.read_presence.store(has("presence"), Ordering::Relaxed);
    }

    pub(crate) fn principal(&self) -> Principal {
        self.principal
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

/// The key channels are grouped by: public and private channels of the
/// same name are different topics.
pub(crate) fn topic_key(topic: &str, private: bool) -> String {
    format!("{}:{topic}", if private { "private" } else { "public" })
}

#[derive(Debug, Clone)]
struct Meta {
    phx_ref: String,
    /// The channel's id on its instance.
    channel: u64,
    /// The instance holding the channel; `None` for this one.
    origin: Option<Arc<str>>,
    state: Map<String, Value>,
}

/// The topic (and whether it is private) of a topic key.
fn split_key(topic_key: &str) -> (&str, bool) {
    match topic_key.split_once(':') {
        Some(("private", topic)) => (topic, true),
        Some((_, topic)) => (topic, false),
        None => (topic_key, false),
    }
}

/// Channels and presence of one tenant.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    topics: RwLock<HashMap<String, HashMap<u64, Arc<Channel>>>>,
    presence: Mutex<HashMap<String, HashMap<String, Vec<Meta>>>>,
    next: AtomicU64,
}

/// A message encoded for both protocol versions, lazily.
struct Encoded<'a> {
    message: &'a Message,
    v1: Option<Utf8Bytes>,
    v2: Option<Utf8Bytes>,
}

impl Encoded<'_> {
    fn get(&mut self, vsn: Vsn) -> Out {
        let slot = match vsn {
            Vsn::V1 => &mut self.v1,
            Vsn::V2 => &mut self.v2,
        };
        let text = slot.get_or_insert_with(|| frame::encode_text(vsn, self.message).into());
        Out::Text(text.clone())
    }
}

impl Hub {
    pub(crate) fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn add(&self, channel: Arc<Channel>) {
        let key = topic_key(&channel.topic, channel.private);
        if let Ok(mut topics) = self.topics.write() {
            topics.entry(key).or_default().insert(channel.id, channel);
        }
    }

    /// Removes a channel (and its presence, announcing the leave).
    pub(crate) fn remove(&self, channel: &Channel) -> Option<PresenceLeave> {
        let key = topic_key(&channel.topic, channel.private);
        if let Ok(mut topics) = self.topics.write()
            && let Some(members) = topics.get_mut(&key)
        {
            members.remove(&channel.id);
            if members.is_empty() {
                topics.remove(&key);
            }
        }
        self.untrack(channel)
    }

    pub(crate) fn members(&self, topic: &str, private: bool) -> Vec<Arc<Channel>> {
        let key = topic_key(topic, private);
        self.topics
            .read()
            .ok()
            .and_then(|topics| topics.get(&key).map(|m| m.values().cloned().collect()))
            .unwrap_or_default()
    }

    /// Every channel with postgres_changes bindings.
    pub(crate) fn pg_channels(&self) -> Vec<Arc<Channel>> {
        self.topics
            .read()
            .map(|topics| {
                topics
                    .values()
                    .flat_map(|members| members.values())
                    .filter(|c| !c.pg.is_empty())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every channel.
    pub(crate) fn all_channels(&self) -> Vec<Arc<Channel>> {
        self.topics
            .read()
            .map(|topics| {
                topics
                    .values()
                    .flat_map(|members| members.values())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn channel_count(&self) -> usize {
        self.topics
            .read()
            .map(|t| t.values().map(HashMap::len).sum())
            .unwrap_or(0)
    }

    /// What the dashboard shows of every topic (see [`crate::overview`]):
    /// at most `limits.keys` presence keys of a topic and `limits.states`
    /// states of each are copied.
    pub(crate) fn overview(&self, limits: &crate::overview::OverviewLimits) -> Value {
        use crate::overview::{PresenceUse, TopicUse};
        let mut topics: HashMap<String, TopicUse> = HashMap::new();
        if let Ok(all) = self.topics.read() {
            for (key, members) in all.iter() {
                let sockets: std::collections::HashSet<*const SocketTx> =
                    members.values().map(|c| Arc::as_ptr(&c.socket)).collect();
                let topic = topics.entry(key.clone()).or_default();
                topic.clients = members.len();
                topic.connections = sockets.len();
            }
        }
        if let Ok(presence) = self.presence.lock() {
            for (key, keys) in presence.iter() {
                let topic = topics.entry(key.clone()).or_default();
                topic.keys = keys.len();
                topic.present = keys.values().map(Vec::len).sum();
                // Some keys only, and some of their states: the lock is
                // held while they are copied.
                for (presence_key, metas) in keys.iter().take(limits.keys) {
                    topic.presence.push(PresenceUse {
                        key: presence_key.clone(),
                        count: metas.len(),
                        states: metas
                            .iter()
                            .take(limits.states)
                            .map(|m| m.state.clone())
                            .collect(),
                    });
                }
            }
        }
        crate::overview::render(topics, limits)
    }

    /// Sends a user broadcast to the channels of a topic, except `skip`.
    /// Returns how many channels it was queued to.
    pub(crate) fn broadcast(
        &self,
        topic: &str,
        private: bool,
        payload: Value,
        binary: Option<&[u8]>,
        skip: Option<u64>,
    ) -> usize {
        let members = self.members(topic, private);
        let message = frame::push(topic, None, "broadcast", payload);
        let mut encoded = Encoded {
            message: &message,
            v1: None,
            v2: None,
        };
        let kind4: Option<Bytes> = binary.and_then(|bytes| {
            let event = message
                .payload
                .get("event")
                .and_then(Value::as_str)
                .unwrap_or("");
            frame::encode_broadcast_binary(topic, event, message.payload.get("meta"), bytes, false)
                .map(Bytes::from)
        });
        // A message from the database that a channel was replayed at join
        // is not sent to it again (its id is in `meta`, as on Supabase).
        let message_id = message
            .payload
            .get("meta")
            .and_then(|meta| meta.get("id"))
            .and_then(Value::as_str);
        let mut sent = 0;
        for channel in members {
            if Some(channel.id) == skip || !channel.read_broadcast.load(Ordering::Relaxed) {
                continue;
            }
            if let Some(id) = message_id
                && channel.was_replayed(id)
            {
                continue;
            }
            let out = match (&kind4, channel.socket.vsn) {
                (Some(frame), Vsn::V2) => Out::Binary(frame.clone()),
                (Some(_), Vsn::V1) => continue, // raw bytes cannot travel as vsn 1 JSON
                (None, vsn) => encoded.get(vsn),
            };
            // Pushes carry the receiving channel's join_ref in vsn 2 only
            // when it matters; null is always accepted.
            if channel.socket.send(out) {
                sent += 1;
            }
        }
        metrics::counter!("sovra_realtime_messages_total", "kind" => "broadcast")
            .increment(sent as u64);
        sent
    }

    /// Sends a server push (same payload) to every channel of a topic.
    fn push_all(&self, topic: &str, private: bool, event: &str, payload: Value) {
        let message = frame::push(topic, None, event, payload);
        let mut encoded = Encoded {
            message: &message,
            v1: None,
            v2: None,
        };
        for channel in self.members(topic, private) {
            if channel.read_presence.load(Ordering::Relaxed) {
                channel.socket.send(encoded.get(channel.socket.vsn));
            }
        }
    }

    /// The presence state of a topic as `presence_state` sends it.
    pub(crate) fn presence_state(&self, topic: &str, private: bool) -> Value {
        let key = topic_key(topic, private);
        let presence = self
            .presence
            .lock()
            .map(|p| p.get(&key).cloned())
            .unwrap_or_default();
        let mut state = Map::new();
        for (k, metas) in presence.unwrap_or_default() {
            state.insert(
                k,
                json!({"metas": metas.iter().map(meta_json).collect::<Vec<_>>()}),
            );
        }
        Value::Object(state)
    }

    /// Tracks (or re-tracks) a channel's presence with `state`.
    pub(crate) fn track(&self, channel: &Channel, state: Map<String, Value>) -> PresenceEntry {
        let entry = PresenceEntry {
            topic_key: topic_key(&channel.topic, channel.private),
            key: channel.presence_key.clone(),
            channel: channel.id,
            phx_ref: format!("F{}", uuid::Uuid::new_v4().simple()),
            state,
        };
        self.apply_track(None, entry.clone());
        entry
    }

    /// Adds (or replaces) a presence of `origin` (`None`: this instance)
    /// and sends the diff to the topic's channels here.
    pub(crate) fn apply_track(&self, origin: Option<Arc<str>>, entry: PresenceEntry) {
        let PresenceEntry {
            topic_key: key,
            key: presence_key,
            channel,
            phx_ref,
            state,
        } = entry;
        let new = Meta {
            phx_ref,
            channel,
            origin,
            state,
        };
        let mut leaves = Map::new();
        let mut joined = meta_json(&new);
        {
            let Ok(mut presence) = self.presence.lock() else {
                return;
            };
            let metas = presence
                .entry(key.clone())
                .or_default()
                .entry(presence_key.clone())
                .or_default();
            if let Some(index) = metas
                .iter()
                .position(|m| m.channel == new.channel && m.origin == new.origin)
            {
                let old = metas.remove(index);
                if let Value::Object(map) = &mut joined {
                    map.insert(
                        "phx_ref_prev".to_owned(),
                        Value::String(old.phx_ref.clone()),
                    );
                }
                leaves.insert(presence_key.clone(), json!({"metas": [meta_json(&old)]}));
            }
            metas.push(new);
        }
        let mut joins = Map::new();
        joins.insert(presence_key, json!({"metas": [joined]}));
        let (topic, private) = split_key(&key);
        self.push_all(
            topic,
            private,
            "presence_diff",
            json!({"joins": joins, "leaves": leaves}),
        );
        metrics::counter!("sovra_realtime_messages_total", "kind" => "presence").increment(1);
    }

    /// Removes a channel's presence, announcing the leave.
    pub(crate) fn untrack(&self, channel: &Channel) -> Option<PresenceLeave> {
        let leave = PresenceLeave {
            topic_key: topic_key(&channel.topic, channel.private),
            key: channel.presence_key.clone(),
            channel: channel.id,
        };
        self.apply_untrack(None, &leave).then_some(leave)
    }

    /// Removes a presence of `origin` (`None`: this instance), sending the
    /// leave to the topic's channels here; `false` when there was none.
    pub(crate) fn apply_untrack(&self, origin: Option<&Arc<str>>, leave: &PresenceLeave) -> bool {
        let PresenceLeave {
            topic_key: key,
            key: presence_key,
            channel,
        } = leave;
        let (key, presence_key, channel) = (key.as_str(), presence_key.as_str(), *channel);
        let removed = {
            let Ok(mut presence) = self.presence.lock() else {
                return false;
            };
            let Some(topic) = presence.get_mut(key) else {
                return false;
            };
            let Some(metas) = topic.get_mut(presence_key) else {
                return false;
            };
            let Some(index) = metas
                .iter()
                .position(|m| m.channel == channel && m.origin.as_ref() == origin)
            else {
                return false;
            };
            let old = metas.remove(index);
            if metas.is_empty() {
                topic.remove(presence_key);
            }
            if topic.is_empty() {
                presence.remove(key);
            }
            old
        };
        let mut leaves = Map::new();
        leaves.insert(
            presence_key.to_owned(),
            json!({"metas": [meta_json(&removed)]}),
        );
        let (topic, private) = split_key(key);
        self.push_all(
            topic,
            private,
            "presence_diff",
            json!({"joins": {}, "leaves": leaves}),
        );
        true
    }

    /// The presence held by `origin` (`None`: this instance).
    pub(crate) fn presence_of(&self, origin: Option<&Arc<str>>) -> Vec<PresenceEntry> {
        let Ok(presence) = self.presence.lock() else {
            return Vec::new();
        };
        let mut entries = Vec::new();
        for (topic_key, keys) in presence.iter() {
            for (key, metas) in keys {
                for meta in metas.iter().filter(|m| m.origin.as_ref() == origin) {
                    entries.push(PresenceEntry {
                        topic_key: topic_key.clone(),
                        key: key.clone(),
                        channel: meta.channel,
                        phx_ref: meta.phx_ref.clone(),
                        state: meta.state.clone(),
                    });
                }
            }
        }
        entries
    }

    /// Makes the presence held for `origin` equal to `entries`, sending
    /// the joins and leaves that takes.
    pub(crate) fn reconcile(&self, origin: &Arc<str>, entries: Vec<PresenceEntry>) {
        let known = self.presence_of(Some(origin));
        for old in &known {
            if !entries.iter().any(|e| {
                e.topic_key == old.topic_key && e.key == old.key && e.channel == old.channel
            }) {
                let leave = PresenceLeave {
                    topic_key: old.topic_key.clone(),
                    key: old.key.clone(),
                    channel: old.channel,
                };
                self.apply_untrack(Some(origin), &leave);
            }
        }
        for entry in entries {
            if !known.contains(&entry) {
                self.apply_track(Some(origin.clone()), entry);
            }
        }
    }
}

fn meta_json(meta: &Meta) -> Value {
    let mut map = meta.state.clone();
    map.insert("phx_ref".to_owned(), Value::String(meta.phx_ref.clone()));
    Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(len: usize) -> Out {
        Out::Text("x".repeat(len).into())
    }

    #[test]
    fn queues_count_bytes_and_cut_off_past_the_limit() {
        let (socket, mut rx) = SocketTx::new(Vsn::V2, 1000);
        // Many small frames within the byte limit are fine.
        for _ in 0..10 {
            assert!(socket.send(text(30)));
        }
        assert_eq!(socket.queued(), 10 * (30 + QUEUE_ENTRY_OVERHEAD));
        // Written frames free their bytes.
        for _ in 0..10 {
            let out = rx.try_recv().unwrap();
            socket.written(&out);
        }
        assert_eq!(socket.queued(), 0);
        // One frame larger than the limit still fits an empty queue...
        assert!(socket.send(text(5000)));
        assert!(!socket.is_closed());
        // ...but nothing more until it is written: the socket is cut off.
        assert!(!socket.send(text(1)));
        assert!(socket.is_closed());
        let kill = socket.kill_reason.lock().unwrap().clone().unwrap();
        assert_eq!(kill.code, 1008);
        assert_eq!(kill.label, "slow_consumer");
        assert_eq!(
            kill.reason,
            "slow consumer: more than 1000 bytes queued for this connection"
        );
        // A closed socket takes nothing, and the first reason stays.
        socket.cut_off(1008, "idle", "idle timeout: no heartbeat");
        assert!(!socket.send(text(1)));
        assert_eq!(
            socket.kill_reason.lock().unwrap().as_ref().unwrap().label,
            "slow_consumer"
        );
    }

    #[tokio::test]
    async fn waiting_for_room_ends_when_the_queue_drains_or_patience_runs_out() {
        let (socket, mut rx) = SocketTx::new(Vsn::V2, 1000);
        assert!(socket.send(text(800)));
        assert!(!socket.fits(200));
        // Nobody drains: the wait ends after its patience without room.
        socket
            .wait_for_room(200, std::time::Duration::from_millis(20))
            .await;
        assert!(!socket.fits(200));
        // The writer drains meanwhile: the wait ends with room.
        let socket = Arc::new(socket);
        let writer = socket.clone();
        let drain = tokio::spawn(async move {
            let out = rx.recv().await.unwrap();
            writer.written(&out);
        });
        socket
            .wait_for_room(200, std::time::Duration::from_secs(600))
            .await;
        assert!(socket.fits(200));
        drain.await.unwrap();
    }
}
