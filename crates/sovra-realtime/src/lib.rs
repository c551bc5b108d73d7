//! Sovra's `/realtime/v1`: Phoenix channels over WebSocket as realtime-js
//! (vsn 2.0.0) and supabase-py (vsn 1.0.0) speak them.
//!
//! - [`hub`]: channels per topic, presence, and the fan-out that encodes a
//!   message once per protocol version and queues it to bounded per-socket
//!   queues (a consumer too slow to drain its queue is disconnected).
//! - [`socket`]: one connection: heartbeats, joins (with `postgres_changes`
//!   bindings and private-channel checks), broadcast, presence, token
//!   refresh, limits, idle timeout.
//! - [`feed`]: database changes captured by logical decoding (`pgoutput`
//!   over the tables of the `supabase_realtime` publication, plus
//!   `realtime.messages` for broadcasts sent from SQL), checked against
//!   the table's RLS as each subscriber, in batches, and delivered in
//!   commit order. The slot position is advanced only after delivery, so
//!   a restart resumes where it stopped.
//!
//! The wire format and the filter and pgoutput parsers are pure and live
//! in `sovra-realtime-proto`.

mod authz;
pub mod bus;
pub mod feed;
mod hub;
mod rls;
mod socket;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use serde_json::{Map, Value, json};
use sovra_pg::Pool;

pub use sovra_realtime_proto::frame::Vsn;

/// Limits and timings of one tenant's realtime service.
#[derive(Clone, Debug)]
pub struct RealtimeConfig {
    pub max_connections: usize,
    pub max_channels_per_connection: usize,
    /// Messages a connection may send per second (heartbeats excluded).
    pub max_events_per_second: u32,
    /// Largest frame accepted, in bytes.
    pub max_frame_bytes: usize,
    /// Bytes queued per connection before it counts as too slow.
    pub outbound_queue_bytes: usize,
    /// How long the change feed waits for a subscriber whose queue is more
    /// than half full before it cuts it off.
    pub slow_consumer_timeout: Duration,
    /// `postgres_changes` bindings per channel.
    pub max_bindings_per_channel: usize,
    /// Largest presence state one channel may track (bytes of JSON).
    pub max_presence_bytes: usize,
    /// How often the credentials behind open sockets are re-checked.
    pub revalidate_interval: Duration,
    /// A connection that sends nothing (not even a heartbeat) for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// How often the change feed polls the replication slot.
    pub poll_interval: Duration,
    /// Replication lag (bytes of WAL) past which the feed skips ahead.
    pub max_slot_lag_bytes: u64,
    /// Name of the logical replication slot.
    pub slot_name: String,
    /// How long delivered changes are kept for clients that rejoin with
    /// `since`; zero turns catch-up off.
    pub catchup_window: Duration,
    /// Most changes kept for catch-up.
    pub catchup_max_changes: usize,
    /// Most bytes of changes kept for catch-up.
    pub catchup_max_bytes: usize,
    /// Most bytes of changes the feed holds at once (a batch).
    pub feed_batch_bytes: usize,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            max_connections: 100_000,
            max_channels_per_connection: 100,
            max_events_per_second: 1000,
            max_frame_bytes: 3_000_000,
            outbound_queue_bytes: 8 << 20,
            slow_consumer_timeout: Duration::from_secs(10),
            max_bindings_per_channel: 100,
            max_presence_bytes: 10_000,
            revalidate_interval: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            poll_interval: Duration::from_millis(100),
            max_slot_lag_bytes: 1 << 30,
            slot_name: "sovra_realtime".to_owned(),
            catchup_window: Duration::from_secs(300),
            catchup_max_changes: 100_000,
            catchup_max_bytes: 64 << 20,
            feed_batch_bytes: 8 << 20,
        }
    }
}

/// A verified caller: role and claims of its token.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub role: String,
    pub claims: Map<String, Value>,
}

impl Principal {
    fn is_service(&self) -> bool {
        self.role == "service_role"
    }

    /// The token's expiry (seconds since the epoch), if it has one.
    pub fn exp(&self) -> Option<i64> {
        self.claims.get("exp").and_then(Value::as_i64)
    }

    /// A stable key for grouping subscribers with the same rights.
    fn rights_key(&self) -> String {
        Value::Object(self.claims.clone()).to_string()
    }
}

/// Verifies a token (the tenant's keys live in the server crate).
pub type Verifier = Arc<dyn Fn(&str) -> Result<Principal, String> + Send + Sync>;

/// One tenant's realtime service.
pub struct RealtimeService {
    config: RealtimeConfig,
    pool: Pool,
    hub: hub::Hub,
    verifier: Verifier,
    connections: AtomicUsize,
    feed: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    feed_source: std::sync::Mutex<Option<sovra_pg::tokio_postgres::Config>>,
    /// The slot the feed consumes, once it leads.
    feed_slot: std::sync::Mutex<Option<String>>,
    /// This instance's id on the bus.
    instance: Arc<str>,
    bus: RwLock<Arc<dyn bus::Bus>>,
    peers: std::sync::Mutex<HashMap<Arc<str>, bus::Peer>>,
    /// Change batches this instance published (as slot consumer).
    bus_seq: AtomicU64,
    remote_changes: OnceLock<tokio::sync::mpsc::Sender<bus::RemoteBatch>>,
    /// Held while changes are delivered (and while a catch-up replays), so
    /// that every subscriber gets them in commit order.
    delivery: tokio::sync::Mutex<()>,
    recent: std::sync::Mutex<feed::Recent>,
}

impl std::fmt::Debug for RealtimeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeService")
            .field("config", &self.config)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

/// Held while a connection is open; counts it.
#[derive(Debug)]
pub struct ConnectionPermit {
    service: Arc<RealtimeService>,
}

impl Drop for RealtimeService {
    fn drop(&mut self) {
        if let Ok(mut feed) = self.feed.lock()
            && let Some(task) = feed.take()
        {
            task.abort();
        }
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.service.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("sovra_realtime_connections").decrement(1.0);
    }
}

/// A refused HTTP broadcast.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpError {
    pub status: u16,
    pub body: Value,
}

impl RealtimeService {
    /// The realtime service of one tenant; `pool` connects as
    /// `authenticator` (the service switches to each caller's role).
    pub fn new(config: RealtimeConfig, pool: Pool, verifier: Verifier) -> Arc<RealtimeService> {
        Arc::new(RealtimeService {
            config,
            pool,
            hub: hub::Hub::default(),
            verifier,
            connections: AtomicUsize::new(0),
            feed: std::sync::Mutex::new(None),
            feed_source: std::sync::Mutex::new(None),
            feed_slot: std::sync::Mutex::new(None),
            instance: Arc::from(uuid::Uuid::new_v4().to_string()),
            bus: RwLock::new(Arc::new(bus::LocalBus)),
            peers: std::sync::Mutex::new(HashMap::new()),
            bus_seq: AtomicU64::new(0),
            remote_changes: OnceLock::new(),
            delivery: tokio::sync::Mutex::new(()),
            recent: std::sync::Mutex::new(feed::Recent::new()),
        })
    }

    /// Sends a broadcast to the channels of a topic here (except `skip`)
    /// and on every other instance; returns how many channels here got it.
    pub(crate) fn broadcast(
        &self,
        topic: &str,
        private: bool,
        payload: Value,
        binary: Option<&[u8]>,
        skip: Option<u64>,
    ) -> usize {
        if !self.current_bus().is_shared() {
            return self.hub.broadcast(topic, private, payload, binary, skip);
        }
        let sent = self
            .hub
            .broadcast(topic, private, payload.clone(), binary, skip);
        self.publish(bus::Event::Broadcast {
            topic: topic.to_owned(),
            private,
            payload,
            binary: binary.map(bus::encode_binary),
        });
        sent
    }

    /// Tracks a channel's presence here and on the other instances.
    pub(crate) fn track(&self, channel: &hub::Channel, state: Map<String, Value>) {
        let entry = self.hub.track(channel, state);
        self.publish(bus::Event::Track(entry));
    }

    /// Untracks a channel's presence here and on the other instances.
    pub(crate) fn untrack(&self, channel: &hub::Channel) {
        if let Some(leave) = self.hub.untrack(channel) {
            self.publish(bus::Event::Untrack(leave));
        }
    }

    /// Removes a channel (its presence leaves everywhere).
    pub(crate) fn remove_channel(&self, channel: &hub::Channel) {
        if let Some(leave) = self.hub.remove(channel) {
            self.publish(bus::Event::Untrack(leave));
        }
    }

    pub fn config(&self) -> &RealtimeConfig {
        &self.config
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// The replication slot this instance consumes, when it leads the feed.
    pub fn feed_slot(&self) -> Option<String> {
        self.feed_slot.lock().ok().and_then(|s| s.clone())
    }

    /// Joined channels.
    pub fn channels(&self) -> usize {
        self.hub.channel_count()
    }

    /// Admits one more connection, unless the limit is reached.
    pub fn admit(self: &Arc<Self>) -> Option<ConnectionPermit> {
        let mut current = self.connections.load(Ordering::Relaxed);
        loop {
            if current >= self.config.max_connections {
                metrics::counter!("sovra_realtime_refused_total", "reason" => "max_connections")
                    .increment(1);
                return None;
            }
            match self.connections.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        metrics::gauge!("sovra_realtime_connections").increment(1.0);
        Some(ConnectionPermit {
            service: self.clone(),
        })
    }

    /// Serves one WebSocket connection until it closes.
    pub async fn serve(
        self: Arc<Self>,
        socket: axum::extract::ws::WebSocket,
        vsn: Vsn,
        principal: Principal,
        permit: ConnectionPermit,
    ) {
        socket::run(self, socket, vsn, principal).await;
        drop(permit);
    }

    /// `POST /realtime/v1/api/broadcast` with `{"messages": [...]}`:
    /// delivers each message to the channels of its topic. Private
    /// messages need the caller to pass the topic's write policy.
    pub async fn http_broadcast(
        &self,
        principal: &Principal,
        body: &Value,
    ) -> Result<usize, HttpError> {
        let invalid = |field: &str, why: &str| HttpError {
            status: 422,
            body: json!({"errors": {field: [why]}}),
        };
        let Some(messages) = body.get("messages").and_then(Value::as_array) else {
            return Err(invalid("messages", "is required and must be a list"));
        };
        if messages.len() > 1000 {
            return Err(invalid("messages", "at most 1000 messages at once"));
        }
        let mut parsed = Vec::with_capacity(messages.len());
        for message in messages {
            let topic = message.get("topic").and_then(Value::as_str).unwrap_or("");
            let event = message.get("event").and_then(Value::as_str).unwrap_or("");
            if topic.is_empty() {
                return Err(invalid("topic", "can't be blank"));
            }
            if event.is_empty() {
                return Err(invalid("event", "can't be blank"));
            }
            let payload = message.get("payload").cloned().unwrap_or_else(|| json!({}));
            let private = message
                .get("private")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let id = message.get("id").and_then(Value::as_str).map(str::to_owned);
            parsed.push((topic.to_owned(), event.to_owned(), payload, private, id));
        }
        let mut delivered = 0;
        for (topic, event, payload, private, id) in parsed {
            if private
                && !principal.is_service()
                && !self
                    .can_write(principal, &topic, "broadcast")
                    .await
                    .unwrap_or(false)
            {
                continue;
            }
            let mut body = json!({"type": "broadcast", "event": event, "payload": payload});
            if let (Some(id), Value::Object(map)) = (id, &mut body) {
                map.insert("meta".to_owned(), json!({"id": id}));
            }
            delivered += self.broadcast(&format!("realtime:{topic}"), private, body, None, None);
        }
        Ok(delivered)
    }

    /// `POST /realtime/v1/api/broadcast/{topic}/events/{event}`: one
    /// message; `binary` holds a raw (octet-stream) payload.
    pub async fn http_broadcast_one(
        &self,
        principal: &Principal,
        topic: &str,
        event: &str,
        private: bool,
        payload: Value,
        binary: Option<&[u8]>,
    ) -> Result<usize, HttpError> {
        if topic.is_empty() || event.is_empty() {
            return Err(HttpError {
                status: 422,
                body: json!({"errors": {"topic": ["can't be blank"]}}),
            });
        }
        if private
            && !principal.is_service()
            && !self
                .can_write(principal, topic, "broadcast")
                .await
                .unwrap_or(false)
        {
            return Ok(0);
        }
        let body = json!({"type": "broadcast", "event": event, "payload": payload});
        Ok(self.broadcast(&format!("realtime:{topic}"), private, body, binary, None))
    }
}
