//! The realtime service of one tenant: it owns the stages and wires them
//! together. The slot reader (`slot`) hands each batch to this service,
//! which publishes it on the bus for the other instances and gives it to
//! `fanout` (which asks `authorize`, then queues to the sockets of `hub`);
//! batches arriving from the bus take the same way from `fanout` on.
//! Broadcast and presence go from `socket` through here to `hub` and the bus.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};

use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use sovra_pg::{Pool, tokio_postgres};
use tokio::sync::mpsc;

use crate::bus::{
    self, Bus, Envelope, Event, HEARTBEAT, NatsBus, PEER_TIMEOUT, Peer, RemoteBatch,
    SNAPSHOT_EVERY, WireChangeRef, WireRelation, decode_binary, encode,
};
use crate::change::{Change, RelInfo};
use crate::config::RealtimeConfig;
use crate::hub::{self, Channel};
use crate::principal::{Principal, Verifier};
use crate::revalidate::{Credential, Revalidator};
use crate::{authz, catalog, fanout, slot};

/// How long the feed waits for the bus to take a change batch before it
/// gives the feed up (see [`RealtimeService::release_feed_while_cut_off`]).
const FEED_RELEASE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// One tenant's realtime service.
pub struct RealtimeService {
    pub(crate) config: RealtimeConfig,
    pool: Pool,
    pub(crate) hub: hub::Hub,
    pub(crate) verifier: Verifier,
    connections: AtomicUsize,
    feed: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    feed_source: std::sync::Mutex<Option<sovra_pg::tokio_postgres::Config>>,
    /// How the running feed connects (to start it again after giving it up
    /// while cut off from the bus).
    feed_admin: std::sync::Mutex<Option<sovra_pg::tokio_postgres::Config>>,
    /// The slot the feed consumes, once it leads, and how it reads it.
    feed_slot: std::sync::Mutex<Option<(String, slot::FeedMode)>>,
    /// See [`RealtimeService::wait_for_slot_on_first_join`].
    wait_for_slot: std::sync::atomic::AtomicBool,
    /// This instance's id on the bus.
    instance: Arc<str>,
    bus: RwLock<Arc<dyn bus::Bus>>,
    peers: std::sync::Mutex<HashMap<Arc<str>, bus::Peer>>,
    /// Change batches this instance published (as slot consumer).
    bus_seq: AtomicU64,
    remote_changes: OnceLock<tokio::sync::mpsc::Sender<bus::RemoteBatch>>,
    /// Stage 3: delivery to this instance's channels, catch-up.
    pub(crate) fanout: fanout::Fanout,
    /// Open sockets whose own key can be revoked (held weakly).
    revocable: std::sync::Mutex<Vec<(Weak<hub::SocketTx>, Credential)>>,
    /// The periodic re-check of credentials, once a revalidator is set.
    revalidation: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Batches read from the slot, and the largest (bytes of changes).
    feed_batches: AtomicU64,
    feed_batch_max_bytes: AtomicUsize,
    /// The tenant-wide message bucket (`tenant_events_per_second`):
    /// tokens left and when they were last counted.
    tenant_events: std::sync::Mutex<(f64, std::time::Instant)>,
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
        if let Ok(mut task) = self.revalidation.lock()
            && let Some(task) = task.take()
        {
            task.abort();
        }
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
        let config_events = config.tenant_events_per_second;
        Arc::new(RealtimeService {
            fanout: fanout::Fanout::new(
                pool.clone(),
                config.catchup_window,
                config.catchup_max_changes,
                config.catchup_max_bytes,
                config.slow_consumer_timeout,
            ),
            config,
            pool,
            hub: hub::Hub::default(),
            verifier,
            connections: AtomicUsize::new(0),
            feed: std::sync::Mutex::new(None),
            feed_source: std::sync::Mutex::new(None),
            feed_admin: std::sync::Mutex::new(None),
            feed_slot: std::sync::Mutex::new(None),
            wait_for_slot: std::sync::atomic::AtomicBool::new(false),
            instance: Arc::from(uuid::Uuid::new_v4().to_string()),
            bus: RwLock::new(Arc::new(bus::LocalBus)),
            peers: std::sync::Mutex::new(HashMap::new()),
            bus_seq: AtomicU64::new(0),
            remote_changes: OnceLock::new(),
            revocable: std::sync::Mutex::new(Vec::new()),
            revalidation: std::sync::Mutex::new(None),
            feed_batches: AtomicU64::new(0),
            feed_batch_max_bytes: AtomicUsize::new(0),
            tenant_events: std::sync::Mutex::new((
                f64::from(config_events),
                std::time::Instant::now(),
            )),
        })
    }

    /// Counts one client message against the tenant-wide rate
    /// (`tenant_events_per_second`, a token bucket of one second's burst);
    /// `false` when it is over.
    pub(crate) fn admit_tenant_event(&self) -> bool {
        let rate = self.config.tenant_events_per_second;
        if rate == 0 {
            return true;
        }
        let Ok(mut bucket) = self.tenant_events.lock() else {
            return true;
        };
        let now = std::time::Instant::now();
        let rate = f64::from(rate);
        bucket.0 = (bucket.0 + now.duration_since(bucket.1).as_secs_f64() * rate).min(rate);
        bucket.1 = now;
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Counts a refusal by one of the tenant's quotas in `/metrics`.
    pub(crate) fn count_quota(&self, quota: &'static str) {
        if let Some(tenant) = &self.config.tenant {
            metrics::counter!(
                "sovra_tenant_quota_exceeded_total",
                "tenant" => tenant.clone(),
                "quota" => quota
            )
            .increment(1);
        }
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
        self.feed_slot
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|(slot, _)| slot.clone()))
    }

    /// How this instance reads the slot (streamed over a replication
    /// connection, or polled), when it leads the feed.
    pub fn feed_mode(&self) -> Option<slot::FeedMode> {
        self.feed_slot
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|(_, mode)| *mode))
    }

    /// Joined channels.
    pub fn channels(&self) -> usize {
        self.hub.channel_count()
    }

    /// Per topic: channels and sockets joined to it here, and its presence
    /// (keys and some of their states), within `limits` (for the
    /// dashboard's live view; see [`crate::OverviewLimits`]).
    pub fn overview(&self, limits: &crate::OverviewLimits) -> Value {
        self.hub.overview(limits)
    }

    /// Admits one more connection, unless the limit is reached.
    pub fn admit(self: &Arc<Self>) -> Option<ConnectionPermit> {
        let mut current = self.connections.load(Ordering::Relaxed);
        loop {
            if current >= self.config.max_connections {
                metrics::counter!("sovra_realtime_refused_total", "reason" => "max_connections")
                    .increment(1);
                self.count_quota("realtime_max_connections");
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
            && !authz::can_write(&self.pool, principal, topic, "broadcast")
                .await
                .unwrap_or(false)
        {
            return Ok(0);
        }
        let body = json!({"type": "broadcast", "event": event, "payload": payload});
        Ok(self.broadcast(&format!("realtime:{topic}"), private, body, binary, None))
    }

    /// Which of `extensions` (`broadcast`, `presence`) the caller may read
    /// on `topic` (the sub-topic, without `realtime:`).
    pub(crate) async fn can_read(
        &self,
        principal: &Principal,
        topic: &str,
        extensions: &[&str],
    ) -> Result<Vec<String>, String> {
        authz::can_read(&self.pool, principal, topic, extensions).await
    }

    /// The broadcasts stored for the private `topic` that a replay sends
    /// (see [`authz::replay`]).
    pub(crate) async fn replay_messages(
        &self,
        principal: &Principal,
        topic: &str,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<authz::Stored>, String> {
        authz::replay(&self.pool, principal, topic, since_ms, limit).await
    }

    /// Whether the change feed can deliver: this instance reads the slot,
    /// or another instance does and shares its changes over the bus.
    pub(crate) fn replication_ready(&self) -> bool {
        self.feed_slot().is_some() || (self.current_bus().is_shared() && self.peers() > 0)
    }

    /// Whether the caller may write `extension` messages to `topic`.
    pub(crate) async fn can_write(
        &self,
        principal: &Principal,
        topic: &str,
        extension: &str,
    ) -> Result<bool, String> {
        authz::can_write(&self.pool, principal, topic, extension).await
    }

    /// Delivers a batch read from the slot: to the other instances first
    /// (the slot advances only after the bus has it), then here.
    async fn deliver_local(self: &Arc<Self>, batch: slot::Batch) {
        let slot::Batch {
            changes,
            stamps,
            bytes,
        } = batch;
        self.feed_batches.fetch_add(1, Ordering::Relaxed);
        self.feed_batch_max_bytes
            .fetch_max(bytes, Ordering::Relaxed);
        let position = self.share_changes(&changes, &stamps).await;
        self.fanout
            .deliver(&self.hub, changes, stamps, position)
            .await;
    }

    /// Re-checks the credentials behind open sockets every
    /// `revalidate_interval` with `revalidator`, closing the sockets whose
    /// credential is no longer valid (see [`crate::revalidate`]).
    pub fn set_revalidator(self: &Arc<Self>, revalidator: Revalidator) {
        let weak = Arc::downgrade(self);
        let every = self.config.revalidate_interval;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(service) = weak.upgrade() else {
                    return;
                };
                service.revalidate(&revalidator).await;
            }
        });
        if let Ok(mut slot) = self.revalidation.lock()
            && let Some(old) = slot.replace(task)
        {
            old.abort();
        }
    }

    /// Remembers an open socket whose own key can be revoked.
    pub(crate) fn register_socket(&self, socket: &Arc<hub::SocketTx>, principal: &Principal) {
        if let (Some(credential), Ok(mut sockets)) =
            (Credential::of(principal), self.revocable.lock())
        {
            sockets.push((Arc::downgrade(socket), credential));
        }
    }

    /// One re-check: every credential in use (sockets' keys, channels'
    /// tokens), asked about at once; sockets using a revoked one close.
    async fn revalidate(&self, revalidator: &Revalidator) {
        let mut users: HashMap<Credential, Vec<Arc<hub::SocketTx>>> = HashMap::new();
        if let Ok(mut sockets) = self.revocable.lock() {
            sockets.retain(|(socket, credential)| match socket.upgrade() {
                Some(socket) if !socket.is_closed() => {
                    users.entry(credential.clone()).or_default().push(socket);
                    true
                }
                _ => false,
            });
        }
        for channel in self.hub.all_channels() {
            if let Some(credential) = Credential::of(&channel.principal()) {
                users
                    .entry(credential)
                    .or_default()
                    .push(channel.socket.clone());
            }
        }
        if users.is_empty() {
            return;
        }
        let revoked = match revalidator(users.keys().cloned().collect()).await {
            Ok(revoked) => revoked,
            Err(err) => {
                // Keep the sockets: the check is retried next interval.
                tracing::warn!(error = %err, "could not re-check realtime credentials");
                return;
            }
        };
        for credential in revoked {
            for socket in users.remove(&credential).unwrap_or_default() {
                socket.cut_off(1008, "revoked", credential.revoked_reason());
            }
        }
    }

    /// Batches the feed has read from the slot, and the largest of them
    /// in bytes of changes (their values plus a fixed overhead each).
    pub fn feed_batches(&self) -> (u64, usize) {
        (
            self.feed_batches.load(Ordering::Relaxed),
            self.feed_batch_max_bytes.load(Ordering::Relaxed),
        )
    }

    /// Starts the change feed of this tenant (once); `admin` connects as a
    /// role that may use replication slots.
    pub fn start_feed(self: &Arc<Self>, admin: tokio_postgres::Config) {
        self.use_admin(&admin);
        if let Ok(mut kept) = self.feed_admin.lock() {
            *kept = Some(admin.clone());
        }
        let mut started = match self.feed.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if started.is_some() {
            return;
        }
        let config = slot::SlotConfig {
            slot_prefix: self.config.slot_name.clone(),
            poll_interval: self.config.poll_interval,
            max_lag_bytes: self.config.max_slot_lag_bytes,
            batch_bytes: self.config.feed_batch_bytes,
        };
        let sink: Arc<dyn slot::Sink> = Arc::new(FeedSink(Arc::downgrade(self)));
        *started = Some(tokio::spawn(slot::run(admin, config, sink)));
    }

    /// Stops the change feed (its connection closes, releasing leadership);
    /// `start_feed` resumes from the slot's durable position.
    pub fn stop_feed(&self) {
        if let Ok(mut feed) = self.feed.lock()
            && let Some(task) = feed.take()
        {
            task.abort();
        }
        if let Ok(mut slot) = self.feed_slot.lock() {
            *slot = None;
        }
    }

    /// Makes the join that starts the feed wait until the slot is read
    /// (for feeds that start with their first subscriber).
    pub fn wait_for_slot_on_first_join(&self) {
        self.wait_for_slot
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Remembers how to start the feed, and starts it on the first join
    /// (`sovra serve` starts it at once).
    pub fn set_feed_source(&self, admin: tokio_postgres::Config) {
        self.use_admin(&admin);
        if let Ok(mut source) = self.feed_source.lock() {
            *source = Some(admin);
        }
    }

    /// Authorisation of database changes connects with `admin` (it puts
    /// committed rows back before it asks as each subscriber).
    fn use_admin(&self, admin: &tokio_postgres::Config) {
        if self.fanout.admin.get().is_none() {
            match sovra_pg::pool::build(admin.clone(), 4, std::time::Duration::from_secs(10)) {
                Ok(pool) => {
                    let _ = self.fanout.admin.set(pool);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot build the realtime authorisation pool")
                }
            }
        }
    }

    /// Starts the feed on the first join when `sovra serve` did not (a
    /// tenant's feed starts with its first subscriber). With
    /// [`RealtimeService::wait_for_slot_on_first_join`], the join that
    /// starts it waits (at most 10 s) until this instance reads the slot,
    /// so that the changes its subscriber is told about are not lost.
    pub(crate) async fn ensure_feed(self: &Arc<Self>) {
        let source = self.feed_source.lock().ok().and_then(|s| s.clone());
        if let Some(admin) = source {
            let fresh = self
                .wait_for_slot
                .load(std::sync::atomic::Ordering::Relaxed)
                && self.feed.lock().is_ok_and(|feed| feed.is_none());
            self.start_feed(admin);
            if fresh {
                for _ in 0..500 {
                    if self.feed_slot().is_some() {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Publishes a batch to the other instances (in chunks the bus can
    /// carry), waiting until the bus has it: the slot advances only after.
    /// Returns the stream sequence of its last chunk, when the bus has a
    /// stream.
    async fn share_changes(
        self: &Arc<Self>,
        changes: &[Change],
        stamps: &[Arc<str>],
    ) -> Option<u64> {
        let bus = self.current_bus();
        if !bus.is_shared() || changes.is_empty() {
            return None;
        }
        let mut position = None;
        // Leave room for the envelope and the relations of a chunk.
        let budget = bus.max_event_bytes().saturating_sub(4096) / 2;
        let mut chunk: Vec<Box<RawValue>> = Vec::new();
        let mut chunk_bytes = 0usize;
        let mut rels: Vec<Arc<RelInfo>> = Vec::new();
        for (change, stamp) in changes.iter().zip(stamps) {
            let wire = WireChangeRef {
                rel: change.rel.rel.oid,
                kind: change.kind,
                new: change.new.as_deref(),
                old: change.old.as_deref(),
                stamp,
            };
            let Ok(raw) = serde_json::value::to_raw_value(&wire) else {
                continue;
            };
            let size = raw.get().len() + 1;
            if size > budget {
                metrics::counter!("sovra_realtime_bus_dropped_total").increment(1);
                tracing::warn!(
                    bytes = size,
                    "a change too large for the bus reaches this instance's clients only"
                );
                continue;
            }
            if chunk_bytes + size > budget && !chunk.is_empty() {
                position = self
                    .publish_chunk(bus.as_ref(), &mut chunk, &mut rels)
                    .await
                    .or(position);
                chunk_bytes = 0;
            }
            if !rels.iter().any(|r| Arc::ptr_eq(r, &change.rel)) {
                chunk_bytes += change.rel.rel.columns.len() * 64 + 128;
                rels.push(change.rel.clone());
            }
            chunk.push(raw);
            chunk_bytes += size;
        }
        if !chunk.is_empty() {
            position = self
                .publish_chunk(bus.as_ref(), &mut chunk, &mut rels)
                .await
                .or(position);
        }
        position
    }

    /// Publishes one chunk; its stream sequence, if the bus has a stream.
    async fn publish_chunk(
        self: &Arc<Self>,
        bus: &dyn bus::Bus,
        chunk: &mut Vec<Box<RawValue>>,
        rels: &mut Vec<Arc<RelInfo>>,
    ) -> Option<u64> {
        let relations = rels
            .drain(..)
            .map(|info| WireRelation {
                rel: info.rel.clone(),
            })
            .collect();
        let seq = self.bus_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let event = bus::encode(
            &self.instance,
            Event::Changes {
                seq,
                relations,
                changes: std::mem::take(chunk),
            },
        );
        let published = bus.publish_changes(event, format!("{}-{seq}", self.instance));
        tokio::pin!(published);
        let result = tokio::select! {
            result = &mut published => result,
            () = tokio::time::sleep(FEED_RELEASE_AFTER) => {
                self.release_feed_while_cut_off();
                // Cancelled at the next wait (the feed task was aborted),
                // unless the feed runs elsewhere (tests).
                published.await
            }
        };
        match result {
            Ok(position) => position,
            Err(err) => {
                metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
                tracing::warn!(error = %err, "change batch not published on the bus");
                None
            }
        }
    }

    /// The bus did not take a change batch, or was disconnected, for
    /// [`FEED_RELEASE_AFTER`]: this instance is cut off from NATS (or NATS
    /// is down). It stops the feed,
    /// so that its session lock goes and an instance that reaches NATS
    /// takes the feed over from the slot's confirmed position (the batch
    /// in flight was not confirmed: at least once), and starts it again
    /// (as a follower, waiting for the lock) once the bus is connected.
    fn release_feed_while_cut_off(self: &Arc<Self>) {
        let Some(admin) = self.feed_admin.lock().ok().and_then(|a| a.clone()) else {
            return;
        };
        metrics::counter!("sovra_realtime_feed_released_total").increment(1);
        metrics::gauge!("sovra_realtime_feed_streaming").set(0.0);
        tracing::warn!(
            after_ms = FEED_RELEASE_AFTER.as_millis() as u64,
            "cut off from NATS: this instance gives the change feed up until it reaches NATS again"
        );
        let weak = Arc::downgrade(self);
        let bus = self.current_bus();
        tokio::spawn(async move {
            while !bus.is_connected() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            if let Some(service) = weak.upgrade() {
                tracing::info!("the bus is back: this instance may take the change feed again");
                service.start_feed(admin);
            }
        });
        self.stop_feed();
    }

    /// Delivers a change batch that the slot's consumer published. Nothing
    /// in it becomes SQL text: each relation is looked up by its oid in this
    /// database's catalog (and must be a published table of that name and
    /// column shape here); a change that does not fit its relation is
    /// dropped and counted.
    pub(crate) async fn deliver_remote(&self, batch: RemoteBatch, position: Option<u64>) {
        if let Some((changes, stamps)) = self.read_remote(batch).await {
            self.fanout
                .deliver(&self.hub, changes, stamps, position)
                .await;
        }
    }

    /// The changes of a batch from the bus, read as [`Self::deliver_remote`]
    /// says; `None` when it cannot be read now (no database connection).
    async fn read_remote(&self, batch: RemoteBatch) -> Option<(Vec<Change>, Vec<Arc<str>>)> {
        self.read_remote_with(batch, &mut HashMap::new()).await
    }

    /// [`Self::read_remote`], reusing the descriptions in `known` of
    /// relations announced exactly so before (one catch-up reads many
    /// batches of the same tables).
    async fn read_remote_with(
        &self,
        batch: RemoteBatch,
        known: &mut HashMap<u32, (sovra_realtime_proto::pgoutput::Relation, Arc<RelInfo>)>,
    ) -> Option<(Vec<Change>, Vec<Arc<str>>)> {
        let RemoteBatch {
            relations: wire_relations,
            changes: wire,
        } = batch;
        let mut relations: HashMap<u32, Arc<RelInfo>> = HashMap::new();
        let mut client = None;
        for WireRelation { rel } in wire_relations {
            let oid = rel.oid;
            if let Some((announced, info)) = known.get(&oid)
                && *announced == rel
            {
                relations.insert(oid, info.clone());
                continue;
            }
            if client.is_none() {
                match self.pool.get().await {
                    Ok(got) => client = Some(got),
                    Err(err) => {
                        metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
                        tracing::warn!(error = %err, "change batch from the bus not delivered: no database connection");
                        return None;
                    }
                }
            }
            let db = client.as_ref()?;
            match catalog::describe_published(db, rel.clone()).await {
                Ok(Some(info)) => {
                    let info = Arc::new(info);
                    known.insert(oid, (rel, info.clone()));
                    relations.insert(oid, info);
                }
                Ok(None) => {
                    metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
                    tracing::warn!(
                        oid,
                        "a change batch from the bus names a relation that is not published here; its changes are dropped"
                    );
                }
                Err(err) => {
                    metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
                    tracing::warn!(error = %err, "change batch from the bus not delivered");
                    return None;
                }
            }
        }
        let mut changes = Vec::with_capacity(wire.len());
        let mut stamps: Vec<Arc<str>> = Vec::with_capacity(wire.len());
        for raw in wire {
            match bus::read_change(raw.get(), &relations) {
                Ok((change, stamp)) => {
                    // A transaction's changes share one stamp.
                    let stamp = match stamps.last() {
                        Some(last) if **last == *stamp => last.clone(),
                        _ => Arc::from(stamp),
                    };
                    changes.push(change);
                    stamps.push(stamp);
                }
                Err(err) => {
                    metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
                    tracing::warn!(error = %err, "unreadable change on the bus; dropped");
                }
            }
        }
        Some((changes, stamps))
    }

    /// Replays to `channel` what `fanout::Fanout::snapshot` took for it,
    /// then the live changes it held meanwhile.
    /// When this instance's own window does not reach back to the
    /// replay's start (it started, or was cut off, later) and the bus has a
    /// stream, the replay comes from the stream instead: the batches stored
    /// since then, up to the last one this instance delivered when the
    /// replay was taken (the later ones reach the channel live).
    pub(crate) async fn catch_up(&self, channel: &Arc<Channel>, mut replay: fanout::Replay) {
        if replay.is_incomplete()
            && !self.config.catchup_window.is_zero()
            && let Some(stream) = self.current_bus().stream()
        {
            let started = std::time::Instant::now();
            match self.replay_from_stream(&stream, &replay).await {
                Ok((changes, stamps, horizon)) => {
                    metrics::counter!("sovra_realtime_catchup_from_stream_total").increment(1);
                    tracing::info!(
                        changes = changes.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "a catch-up read the change stream"
                    );
                    replay.replace(changes, stamps, horizon);
                }
                Err(err) => {
                    metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
                    tracing::warn!(error = %err, "catch-up from the change stream failed; this instance's own window is replayed");
                }
            }
        }
        self.fanout.replay(channel, replay).await;
    }

    /// The changes committed at or after the replay's start, read from the
    /// stream up to the replay's position, with the stream's horizon. Each
    /// batch is read as one from the bus is (nothing becomes SQL text;
    /// malformed batches and changes are dropped and counted).
    async fn replay_from_stream(
        &self,
        stream: &bus::ChangeStream,
        replay: &fanout::Replay,
    ) -> Result<(Vec<Change>, Vec<Arc<str>>, i64), String> {
        let from = replay.from();
        let read = stream.read(from, replay.position()).await?;
        let mut changes = Vec::new();
        let mut stamps: Vec<Arc<str>> = Vec::new();
        let mut known = HashMap::new();
        for (_, bytes) in read.batches {
            let Some(batch) = self.changes_of(&bytes) else {
                continue;
            };
            let (batch_changes, batch_stamps) = self
                .read_remote_with(batch, &mut known)
                .await
                .ok_or_else(|| "no database connection".to_owned())?;
            for (change, stamp) in batch_changes.into_iter().zip(batch_stamps) {
                let time = sovra_realtime_proto::pgoutput::parse_timestamp(&stamp);
                if time.is_some_and(|t| t >= from) {
                    changes.push(change);
                    stamps.push(stamp);
                }
            }
        }
        Ok((changes, stamps, read.horizon))
    }

    /// The change batch of a stream message; `None` (counted) for anything
    /// else.
    fn changes_of(&self, bytes: &[u8]) -> Option<RemoteBatch> {
        match serde_json::from_slice::<Envelope>(bytes) {
            Ok(Envelope {
                event: Event::Changes {
                    relations, changes, ..
                },
                ..
            }) => Some(RemoteBatch { relations, changes }),
            Ok(_) => {
                metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
                tracing::warn!("an event that is not a change batch on the change stream; dropped");
                None
            }
            Err(err) => {
                metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
                tracing::warn!(error = %err, "unreadable batch on the change stream; dropped");
                None
            }
        }
    }

    /// Handles one batch read from the change stream at `sequence`: this
    /// instance's own were delivered here when published; the others'
    /// go to this instance's subscribers.
    /// `known`: relations described for the batches before, kept while
    /// batches wait (a backlog after a cut), see [`Self::read_remote_with`].
    pub(crate) async fn on_stream_batch(
        &self,
        sequence: u64,
        bytes: &[u8],
        known: &mut HashMap<u32, (sovra_realtime_proto::pgoutput::Relation, Arc<RelInfo>)>,
    ) {
        let own =
            serde_json::from_slice::<OriginOnly>(bytes).is_ok_and(|o| o.origin == *self.instance);
        if own {
            return;
        }
        if let Some(batch) = self.changes_of(bytes)
            && let Some((changes, stamps)) = self.read_remote_with(batch, known).await
        {
            self.fanout
                .deliver(&self.hub, changes, stamps, Some(sequence))
                .await;
        }
    }

    /// Joins the NATS bus at `url` on `subject` (one per tenant): from
    /// now on broadcast, presence and database changes reach the clients
    /// of every instance on the same subject.
    pub async fn attach_nats(self: &Arc<Self>, url: &str, subject: &str) -> Result<(), String> {
        let (incoming, mut events) = mpsc::channel::<Vec<u8>>(1024);
        let limits =
            bus::StreamLimits::of(self.config.catchup_window, self.config.catchup_max_bytes);
        let bus = NatsBus::connect(url, subject, incoming, limits).await?;
        if let Some(stream) = bus.stream() {
            // From the batch after the newest one now: older ones were
            // delivered by the instances up before this one.
            let next = stream.last_sequence().await? + 1;
            self.fanout.set_position(next - 1);
            let (tx, mut batches) = mpsc::channel::<(u64, Vec<u8>)>(64);
            stream.follow(next, tx);
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                // Table descriptions are reused only within a backlog (a
                // resumption after a cut): each live batch is checked
                // against the catalog again.
                let mut known = HashMap::new();
                while let Some((sequence, bytes)) = batches.recv().await {
                    let Some(service) = weak.upgrade() else { break };
                    service.on_stream_batch(sequence, &bytes, &mut known).await;
                    if batches.is_empty() {
                        known.clear();
                    }
                }
            });
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Some(service) = weak.upgrade() else { break };
                service.on_bus_event(&event).await;
            }
        });
        let (tx, mut rx) = mpsc::channel::<RemoteBatch>(64);
        if self.remote_changes.set(tx).is_err() {
            return Err("the realtime bus is already attached".to_owned());
        }
        if let Ok(mut current) = self.bus.write() {
            *current = Arc::new(bus);
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                let Some(service) = weak.upgrade() else { break };
                service.deliver_remote(batch, None).await;
            }
        });
        // A feed holder cut off from NATS gives the feed up (see
        // `release_feed_while_cut_off`), without waiting for a batch.
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
            let mut down_since: Option<std::time::Instant> = None;
            loop {
                tick.tick().await;
                let Some(service) = weak.upgrade() else { break };
                if service.current_bus().is_connected() || service.feed_slot().is_none() {
                    down_since = None;
                } else if down_since
                    .get_or_insert_with(std::time::Instant::now)
                    .elapsed()
                    >= FEED_RELEASE_AFTER
                {
                    down_since = None;
                    service.release_feed_while_cut_off();
                }
            }
        });
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut beats = 0u64;
            let mut ticker = tokio::time::interval(HEARTBEAT);
            loop {
                ticker.tick().await;
                let Some(service) = weak.upgrade() else { break };
                beats += 1;
                if beats.is_multiple_of(SNAPSHOT_EVERY) {
                    service.publish(Event::Snapshot {
                        entries: service.hub.presence_of(None),
                        reply: false,
                    });
                } else {
                    service.publish(Event::Heartbeat);
                }
                service.expire_peers();
            }
        });
        self.publish(Event::Snapshot {
            entries: Vec::new(),
            reply: true,
        });
        // The URL may carry credentials: not logged here.
        tracing::info!(%subject, instance = %self.instance, "realtime joined the NATS bus");
        Ok(())
    }

    /// Publishes an event to the other instances, if there are any.
    pub(crate) fn publish(&self, event: Event) {
        let bus = self.current_bus();
        if bus.is_shared() {
            bus.try_publish(encode(&self.instance, event));
        }
    }

    pub(crate) fn current_bus(&self) -> Arc<dyn Bus> {
        self.bus
            .read()
            .map(|b| b.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Other instances heard from within [`PEER_TIMEOUT`].
    pub fn peers(&self) -> usize {
        self.peers.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Tells the other instances that this one is going away, so that its
    /// presence leaves at once.
    pub async fn shutdown(&self) {
        let bus = self.current_bus();
        if bus.is_shared() {
            let _ = bus
                .publish_durably(encode(&self.instance, Event::Gone))
                .await;
        }
    }

    /// Closes every joined or credentialed connection of this service with
    /// `reason` (code 1001) and stops the change feed: its tenant was
    /// suspended or deleted.
    pub fn disconnect_all(&self, reason: &str) {
        self.cut_all("tenant_closed", reason);
    }

    /// Closes every joined or credentialed connection with code 1001, so
    /// that clients reconnect (through the load balancer, to another
    /// instance), and releases the change feed for another instance: this
    /// instance is shutting down.
    pub fn drain(&self) {
        self.cut_all("server_draining", "this server is shutting down: reconnect");
    }

    fn cut_all(&self, label: &'static str, reason: &str) {
        self.stop_feed();
        let mut sockets: Vec<Arc<hub::SocketTx>> = self
            .hub
            .all_channels()
            .into_iter()
            .map(|channel| channel.socket.clone())
            .collect();
        if let Ok(list) = self.revocable.lock() {
            sockets.extend(list.iter().filter_map(|(socket, _)| socket.upgrade()));
        }
        for socket in sockets {
            socket.cut_off(1001, label, reason);
        }
    }

    fn expire_peers(&self) {
        let expired: Vec<Arc<str>> = match self.peers.lock() {
            Ok(mut peers) => {
                let now = std::time::Instant::now();
                let gone: Vec<Arc<str>> = peers
                    .iter()
                    .filter(|(_, peer)| now.duration_since(peer.seen) > PEER_TIMEOUT)
                    .map(|(origin, _)| origin.clone())
                    .collect();
                for origin in &gone {
                    peers.remove(origin);
                }
                gone
            }
            Err(_) => Vec::new(),
        };
        for origin in expired {
            tracing::warn!(instance = %origin, "realtime peer went silent; its presence left");
            self.hub.reconcile(&origin, Vec::new());
        }
    }

    /// Handles one event from another instance.
    pub(crate) async fn on_bus_event(&self, bytes: &[u8]) {
        let envelope: Envelope = match serde_json::from_slice(bytes) {
            Ok(envelope) => envelope,
            Err(err) => {
                metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
                tracing::warn!(error = %err, "unreadable realtime bus event");
                return;
            }
        };
        if envelope.origin == *self.instance {
            return;
        }
        let (origin, new_peer) = {
            let Ok(mut peers) = self.peers.lock() else {
                return;
            };
            let now = std::time::Instant::now();
            match peers.get_key_value(envelope.origin.as_str()) {
                Some((origin, _)) => {
                    let origin = origin.clone();
                    if let Some(peer) = peers.get_mut(&origin) {
                        peer.seen = now;
                    }
                    (origin, false)
                }
                None => {
                    let origin: Arc<str> = Arc::from(envelope.origin.as_str());
                    peers.insert(
                        origin.clone(),
                        Peer {
                            seen: now,
                            seq: None,
                        },
                    );
                    (origin, true)
                }
            }
        };
        let mut reply_wanted = false;
        match envelope.event {
            Event::Broadcast {
                topic,
                private,
                payload,
                binary,
            } => {
                let binary = binary.as_deref().and_then(decode_binary);
                self.hub
                    .broadcast(&topic, private, payload, binary.as_deref(), None);
            }
            Event::Track(entry) => self.hub.apply_track(Some(origin.clone()), entry),
            Event::Untrack(leave) => {
                self.hub.apply_untrack(Some(&origin), &leave);
            }
            Event::Heartbeat => {}
            Event::Snapshot { entries, reply } => {
                self.hub.reconcile(&origin, entries);
                reply_wanted = reply;
            }
            Event::Gone => {
                if let Ok(mut peers) = self.peers.lock() {
                    peers.remove(&origin);
                }
                self.hub.reconcile(&origin, Vec::new());
                return;
            }
            Event::Changes {
                seq,
                relations,
                changes,
            } => {
                let gap = self.peers.lock().ok().and_then(|mut peers| {
                    let peer = peers.get_mut(&origin)?;
                    let expected = peer.seq.map(|s| s + 1);
                    peer.seq = Some(seq);
                    expected.filter(|e| *e != seq)
                });
                if let Some(expected) = gap {
                    metrics::counter!("sovra_realtime_bus_gaps_total").increment(1);
                    tracing::warn!(instance = %origin, expected, got = seq, "change batches were lost on the bus");
                }
                if let Some(tx) = self.remote_changes.get() {
                    let _ = tx.send(RemoteBatch { relations, changes }).await;
                }
            }
        }
        // A new instance gets this one's presence (and is asked for its own).
        if new_peer || reply_wanted {
            self.publish(Event::Snapshot {
                entries: self.hub.presence_of(None),
                reply: new_peer,
            });
        }
    }
}

/// Just the sender of an event.
#[derive(serde::Deserialize)]
struct OriginOnly {
    origin: String,
}

/// The slot reader's view of the service (held weakly: the feed ends with
/// the service).
struct FeedSink(Weak<RealtimeService>);

impl slot::Sink for FeedSink {
    fn leading(&self, slot: &str, mode: slot::FeedMode) {
        if let Some(service) = self.0.upgrade()
            && let Ok(mut ready) = service.feed_slot.lock()
        {
            *ready = Some((slot.to_owned(), mode));
        }
    }

    fn deliver(&self, batch: slot::Batch) -> slot::SinkFuture<'_> {
        Box::pin(async move {
            if let Some(service) = self.0.upgrade() {
                service.deliver_local(batch).await;
            }
        })
    }

    fn skipped(&self) {
        let Some(service) = self.0.upgrade() else {
            return;
        };
        service.fanout.forget_recent();
        for channel in service.hub.pg_channels() {
            channel.socket.send_message(&channel.changes_status(
                "error",
                "Database changes were skipped: the change feed fell too far behind",
            ));
        }
    }
}
