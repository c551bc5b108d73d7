//! The fan-out bus between instances, behind one trait.
//!
//! Every instance delivers what happens on it to its own clients first, then
//! publishes it on the bus so that the other instances deliver it to
//! theirs: broadcasts, presence joins and leaves, and the change batches of
//! the instance that consumes the replication slot. [`LocalBus`] (the
//! default) has no other instances; [`NatsBus`] uses a NATS subject per
//! tenant.
//!
//! Change batches must not be lost when an instance is briefly cut off
//! from NATS: when the server has JetStream, they go to a stream of the
//! tenant ([`ChangeStream`], created if missing, bounded by age and bytes)
//! instead of the core subject. The publisher waits for the stream's
//! acknowledgement (the slot advances only after it), and every instance
//! reads the stream from the sequence after the last one it delivered, so
//! that after a cut it hands what it missed to its subscribers, in order. A
//! rejoin with `since` that this instance's own window cannot cover is
//! replayed from the stream. Without JetStream, batches travel on the core
//! subject as everything else (at most once), with a warning at start.
//!
//! Presence held by other instances is kept per instance: each instance
//! announces itself every [`HEARTBEAT`] and sends a full snapshot of its
//! own presence when it meets a new instance (and every few heartbeats, so
//! that a lost diff heals); an instance silent for [`PEER_TIMEOUT`] has its
//! presence removed, with leaves sent to the clients, as when a connection
//! drops.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use sovra_realtime_proto::pgoutput::{Datum, PG_EPOCH_UNIX_SECS, Relation};
use tokio::sync::{mpsc, oneshot};

use crate::change::{Change, RelInfo};

use crate::hub::{PresenceEntry, PresenceLeave};

/// How often an instance announces itself.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long an instance may be silent before its presence is dropped.
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(7);
/// Every this many heartbeats an instance sends a full presence snapshot.
pub(crate) const SNAPSHOT_EVERY: u64 = 5;

/// A boxed future, for the trait's async method.
pub type BusFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Carries events to the other instances of the same tenant.
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Queues an event without waiting (broadcast, presence); `false` when
    /// the bus is overloaded and the event was dropped (counted).
    fn try_publish(&self, event: Vec<u8>) -> bool;
    /// Queues an event, waiting for room, and returns once everything
    /// queued so far has reached the bus (change batches: the slot advances
    /// only after this).
    fn publish_durably(&self, event: Vec<u8>) -> BusFuture<'_>;
    /// Largest event the bus carries, in bytes.
    fn max_event_bytes(&self) -> usize;
    /// Whether other instances may be listening.
    fn is_shared(&self) -> bool;
    /// Publishes a change batch so that an instance cut off for a while
    /// still gets it: on the stream when there is one, returning once the
    /// stream acknowledged it, with its stream sequence; otherwise as
    /// [`Bus::publish_durably`] (`None`). `id` names the batch uniquely:
    /// the stream stores a batch published twice under one id once.
    fn publish_changes(&self, event: Vec<u8>, id: String) -> ChangesFuture<'_> {
        let _ = id;
        Box::pin(async move { self.publish_durably(event).await.map(|()| None) })
    }
    /// The stream change batches go to, if any.
    fn stream(&self) -> Option<ChangeStream> {
        None
    }
    /// Whether the bus is connected now.
    fn is_connected(&self) -> bool {
        true
    }
}

/// A boxed future of a published change batch's stream sequence.
pub type ChangesFuture<'a> = Pin<Box<dyn Future<Output = Result<Option<u64>, String>> + Send + 'a>>;

/// The default: one instance, nothing to carry.
#[derive(Debug, Default)]
pub struct LocalBus;

impl Bus for LocalBus {
    fn try_publish(&self, _event: Vec<u8>) -> bool {
        true
    }

    fn publish_durably(&self, _event: Vec<u8>) -> BusFuture<'_> {
        Box::pin(async { Ok(()) })
    }

    fn max_event_bytes(&self) -> usize {
        usize::MAX
    }

    fn is_shared(&self) -> bool {
        false
    }
}

enum Outgoing {
    Event(Vec<u8>),
    Flush(oneshot::Sender<Result<(), String>>),
}

/// NATS (core, at most once between connected servers): one subject per
/// tenant, events in publication order from one task.
#[derive(Debug)]
pub struct NatsBus {
    queue: mpsc::Sender<Outgoing>,
    max_payload: usize,
    /// Where change batches go, when the server has JetStream.
    stream: Option<ChangeStream>,
    client: async_nats::Client,
}

impl NatsBus {
    /// Connects to `url` and joins `subject`; incoming events go to
    /// `incoming`, in the order they arrive (the bus ends when its receiver
    /// is dropped).
    pub(crate) async fn connect(
        url: &str,
        subject: &str,
        incoming: mpsc::Sender<Vec<u8>>,
        limits: StreamLimits,
    ) -> Result<NatsBus, String> {
        let client = with_url_credentials(async_nats::ConnectOptions::new(), url)
            .name("sovra-realtime")
            .no_echo()
            // Back within a second of NATS (or the way to it) coming back:
            // a cut-off instance resumes the stream sooner.
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(1000))
            })
            .connect(url)
            .await
            // The URL may carry credentials: the caller names it, redacted.
            .map_err(|err| format!("cannot connect to NATS: {err}"))?;
        let max_payload = client.server_info().max_payload;
        let stream = match ChangeStream::ensure(&client, subject, limits).await {
            Ok(stream) => Some(stream),
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    "NATS has no JetStream here: database changes cross instances over core NATS (at most once); an instance cut off from NATS misses the changes committed meanwhile, and a rejoin with since is served from each instance's own window only"
                );
                None
            }
        };
        let mut subscriber = client
            .subscribe(subject.to_owned())
            .await
            .map_err(|err| format!("cannot subscribe to {subject}: {err}"))?;
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                if incoming.send(message.payload.to_vec()).await.is_err() {
                    break;
                }
            }
        });
        let (queue, mut rx) = mpsc::channel::<Outgoing>(4096);
        let subject = subject.to_owned();
        let held = client.clone();
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                match out {
                    Outgoing::Event(bytes) => {
                        if let Err(err) = client.publish(subject.clone(), bytes.into()).await {
                            metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
                            tracing::warn!(error = %err, "realtime bus publish failed");
                        }
                    }
                    Outgoing::Flush(done) => {
                        let _ = done.send(client.flush().await.map_err(|err| err.to_string()));
                    }
                }
            }
        });
        Ok(NatsBus {
            queue,
            max_payload,
            stream,
            client: held,
        })
    }
}

impl Bus for NatsBus {
    fn try_publish(&self, event: Vec<u8>) -> bool {
        if self.queue.try_send(Outgoing::Event(event)).is_ok() {
            true
        } else {
            metrics::counter!("sovra_realtime_bus_dropped_total").increment(1);
            false
        }
    }

    fn publish_durably(&self, event: Vec<u8>) -> BusFuture<'_> {
        Box::pin(async move {
            self.queue
                .send(Outgoing::Event(event))
                .await
                .map_err(|_| "the bus is closed".to_owned())?;
            let (done, flushed) = oneshot::channel();
            self.queue
                .send(Outgoing::Flush(done))
                .await
                .map_err(|_| "the bus is closed".to_owned())?;
            flushed.await.map_err(|_| "the bus is closed".to_owned())?
        })
    }

    fn max_event_bytes(&self) -> usize {
        self.max_payload
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn publish_changes(&self, event: Vec<u8>, id: String) -> ChangesFuture<'_> {
        Box::pin(async move {
            match &self.stream {
                Some(stream) => stream.publish_until_stored(event, &id).await.map(Some),
                None => self.publish_durably(event).await.map(|()| None),
            }
        })
    }

    fn stream(&self) -> Option<ChangeStream> {
        self.stream.clone()
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// How much of the change stream is kept.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamLimits {
    pub(crate) max_age: Duration,
    pub(crate) max_bytes: usize,
}

impl StreamLimits {
    /// The catch-up window's limits (`realtime.catchup_window`,
    /// `realtime.catchup_max_bytes`), with at least [`MIN_STREAM_AGE`] kept
    /// so that a cut-off instance can resume even with catch-up off.
    pub(crate) fn of(window: Duration, max_bytes: usize) -> StreamLimits {
        StreamLimits {
            max_age: window.max(MIN_STREAM_AGE),
            max_bytes: max_bytes.max(1 << 20),
        }
    }
}

/// The shortest time the change stream keeps a batch.
pub(crate) const MIN_STREAM_AGE: Duration = Duration::from_secs(60);
/// How long one publication waits for the stream's acknowledgement.
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between two attempts (publishing, reading the stream).
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The name of the stream for `subject` (stream names cannot hold `.`).
pub(crate) fn stream_name(subject: &str) -> String {
    let mut name = String::from("SOVRA_CHANGES_");
    for c in subject.chars() {
        name.push(if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '_'
        });
    }
    name
}

/// A tenant's JetStream stream of change batches (`<subject>.changes`).
#[derive(Clone)]
pub struct ChangeStream {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    name: String,
    subject: String,
}

impl std::fmt::Debug for ChangeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChangeStream")
            .field("name", &self.name)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// What a catch-up read from the stream.
pub(crate) struct StreamRead {
    /// Each batch's stream sequence and bytes, in order.
    pub(crate) batches: Vec<(u64, Vec<u8>)>,
    /// Changes committed before this (PostgreSQL microseconds) may be
    /// missing from the stream (evicted, or from before it existed).
    pub(crate) horizon: i64,
}

impl ChangeStream {
    /// Finds (or creates) the stream of `subject`'s change batches and
    /// makes its limits `limits`; fails when the server has no JetStream.
    pub(crate) async fn ensure(
        client: &async_nats::Client,
        subject: &str,
        limits: StreamLimits,
    ) -> Result<ChangeStream, String> {
        use async_nats::jetstream::stream;
        let js = async_nats::jetstream::new(client.clone());
        let name = stream_name(subject);
        let subject = format!("{subject}.changes");
        let max_age = limits.max_age;
        let config = stream::Config {
            name: name.clone(),
            description: Some("Sovra realtime: database change batches (catch-up)".to_owned()),
            subjects: vec![subject.clone()],
            max_age,
            max_bytes: i64::try_from(limits.max_bytes).unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::Old,
            storage: stream::StorageType::File,
            duplicate_window: max_age.min(Duration::from_secs(120)),
            ..stream::Config::default()
        };
        js.create_or_update_stream(config)
            .await
            .map_err(|err| format!("cannot create the JetStream stream {name}: {err}"))?;
        Ok(ChangeStream {
            client: client.clone(),
            js,
            name,
            subject,
        })
    }

    /// Publishes one batch, retrying until the stream has stored it (while
    /// NATS is unreachable this waits: the slot does not advance). Every
    /// attempt carries `id` as `Nats-Msg-Id`, so that attempts that all
    /// reached the stream are stored once; none is made while the client
    /// is disconnected (it would be sent on reconnection).
    pub(crate) async fn publish_until_stored(
        &self,
        event: Vec<u8>,
        id: &str,
    ) -> Result<u64, String> {
        let payload = axum::body::Bytes::from(event);
        let mut pause = Duration::from_millis(50);
        let mut attempts = 0u64;
        loop {
            if self.client.connection_state() != async_nats::connection::State::Connected {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            match self.publish_once(payload.clone(), id).await {
                Ok(sequence) => {
                    if attempts > 0 {
                        tracing::info!(attempts, "the change stream took a batch again");
                    }
                    return Ok(sequence);
                }
                Err(err) => {
                    attempts += 1;
                    metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
                    if attempts == 1 || attempts.is_multiple_of(20) {
                        tracing::warn!(error = %err, attempts, "change batch not stored on the stream yet; retrying");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    async fn publish_once(&self, payload: axum::body::Bytes, id: &str) -> Result<u64, String> {
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload)
            .message_id(id);
        let ack = tokio::time::timeout(PUBLISH_ACK_TIMEOUT, async {
            self.js
                .send_publish(self.subject.clone(), publish)
                .await
                .map_err(|err| err.to_string())?
                .await
                .map_err(|err| err.to_string())
        })
        .await
        .map_err(|_| "no acknowledgement from the stream".to_owned())??;
        Ok(ack.sequence)
    }

    /// The sequence of the newest batch in the stream (0: none yet).
    pub(crate) async fn last_sequence(&self) -> Result<u64, String> {
        let mut stream = self
            .js
            .get_stream(&self.name)
            .await
            .map_err(|err| err.to_string())?;
        let info = stream.info().await.map_err(|err| err.to_string())?;
        Ok(info.state.last_sequence)
    }

    /// Reads the stream from sequence `next` on, for as long as `out`
    /// takes batches, resuming after the last one handed on whenever the
    /// connection or the consumer fails.
    pub(crate) fn follow(self, mut next: u64, out: mpsc::Sender<(u64, Vec<u8>)>) {
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(50);
            let mut failures = 0u64;
            loop {
                // No request while disconnected: it would wait for its
                // timeout, delaying the resumption once NATS is back.
                while self.client.connection_state() != async_nats::connection::State::Connected {
                    if out.is_closed() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let before = next;
                match self.consume(&mut next, &out).await {
                    Ok(()) => return,
                    Err(err) => {
                        if next > before {
                            pause = Duration::from_millis(50);
                        }
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(20) {
                            tracing::warn!(error = %err, next, "reading the change stream failed; resuming");
                        }
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(RETRY_MAX);
                    }
                }
            }
        });
    }

    /// One ordered consumer from `next`; `Ok` when `out` is closed.
    async fn consume(
        &self,
        next: &mut u64,
        out: &mpsc::Sender<(u64, Vec<u8>)>,
    ) -> Result<(), String> {
        use async_nats::jetstream::consumer;
        let stream = self
            .js
            .get_stream_no_info(&self.name)
            .await
            .map_err(|err| err.to_string())?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: (*next).max(1),
                },
                ..consumer::pull::OrderedConfig::default()
            })
            .await
            .map_err(|err| err.to_string())?;
        let mut messages = consumer.messages().await.map_err(|err| err.to_string())?;
        // A consumer of a server that went away (restarted) is gone, and
        // one whose pull was lost in a reconnection may wait for its
        // heartbeats to be missed: after a reconnection, start afresh.
        let mut state = self.client.connection_state();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = tick.tick() => {
                    let now = self.client.connection_state();
                    let back = state != async_nats::connection::State::Connected
                        && now == async_nats::connection::State::Connected;
                    state = now;
                    if back {
                        return Err("reconnected to NATS".to_owned());
                    }
                    continue;
                }
            };
            let Some(message) = message else { break };
            let message = message.map_err(|err| err.to_string())?;
            let sequence = message
                .info()
                .map_err(|err| err.to_string())?
                .stream_sequence;
            if sequence < *next {
                continue;
            }
            *next = sequence + 1;
            if out
                .send((sequence, message.payload.to_vec()))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        Err("the change stream's consumer ended".to_owned())
    }

    /// The batches stored at or after `from` (PostgreSQL microseconds,
    /// stream time: a batch is stored after its changes committed) up to
    /// sequence `until`, and from when the stream is complete.
    pub(crate) async fn read(&self, from: i64, until: u64) -> Result<StreamRead, String> {
        use async_nats::jetstream::consumer;
        let mut stream = self
            .js
            .get_stream(&self.name)
            .await
            .map_err(|err| err.to_string())?;
        let info = stream.info().await.map_err(|err| err.to_string())?.clone();
        let state = &info.state;
        // Complete from the stream's creation, or from its oldest batch
        // once older ones were evicted (after the newest one when all were).
        let horizon = if state.first_sequence <= 1 {
            to_pg_micros(info.created.unix_timestamp_nanos())
        } else if state.messages == 0 {
            to_pg_micros(state.last_timestamp.unix_timestamp_nanos()).saturating_add(1)
        } else {
            to_pg_micros(state.first_timestamp.unix_timestamp_nanos())
        };
        let mut read = StreamRead {
            batches: Vec::new(),
            horizon,
        };
        let until = until.min(state.last_sequence);
        if state.messages == 0 || until < state.first_sequence {
            return Ok(read);
        }
        // Nothing at or after `from` up to `until`: no consumer needed
        // (one would wait for a batch that may never come).
        let last = stream
            .get_raw_message(until)
            .await
            .map_err(|err| err.to_string())?;
        if to_pg_micros(last.time.unix_timestamp_nanos()) < from {
            return Ok(read);
        }
        let start_time = async_nats::datetime::from_nanos(from_pg_micros(from))
            .map_err(|err| err.to_string())?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject.clone(),
                deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time },
                ..consumer::pull::OrderedConfig::default()
            })
            .await
            .map_err(|err| err.to_string())?;
        let mut messages = consumer.messages().await.map_err(|err| err.to_string())?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .map_err(|_| "the change stream did not answer".to_owned())?;
            let Some(message) = next else {
                return Err("the change stream's consumer ended".to_owned());
            };
            let message = message.map_err(|err| err.to_string())?;
            let sequence = message
                .info()
                .map_err(|err| err.to_string())?
                .stream_sequence;
            if sequence > until {
                break;
            }
            read.batches.push((sequence, message.payload.to_vec()));
            if sequence == until {
                break;
            }
        }
        Ok(read)
    }
}

/// PostgreSQL microseconds (since 2000-01-01) of Unix nanoseconds.
fn to_pg_micros(unix_nanos: i128) -> i64 {
    let micros = unix_nanos / 1000 - i128::from(PG_EPOCH_UNIX_SECS) * 1_000_000;
    i64::try_from(micros).unwrap_or(if micros < 0 { i64::MIN } else { i64::MAX })
}

/// Unix nanoseconds of PostgreSQL microseconds.
fn from_pg_micros(pg_micros: i64) -> i128 {
    (i128::from(pg_micros) + i128::from(PG_EPOCH_UNIX_SECS) * 1_000_000) * 1000
}

/// What travels between instances, with the sending instance's id.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Envelope {
    pub(crate) origin: String,
    pub(crate) event: Event,
}

#[derive(Debug, Serialize, Deserialize)]
// Externally tagged: a tag-first format lets the raw change rows through
// without buffering (an internally tagged enum cannot carry `RawValue`).
#[serde(rename_all = "snake_case")]
pub(crate) enum Event {
    /// A broadcast to a topic (delivered to every channel of it there).
    Broadcast {
        topic: String,
        private: bool,
        payload: Value,
        /// Base64 of a binary (vsn 2 kind 3) payload.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
    },
    /// A presence joined (or re-tracked) on the origin.
    Track(PresenceEntry),
    /// A presence left on the origin.
    Untrack(PresenceLeave),
    /// The origin is alive.
    Heartbeat,
    /// All presence held on the origin; `reply` asks for the receiver's.
    Snapshot {
        entries: Vec<PresenceEntry>,
        reply: bool,
    },
    /// The origin is shutting down: drop its presence now.
    Gone,
    /// A batch of database changes, in commit order; `seq` counts the
    /// origin's batches so that a gap is noticed.
    Changes {
        seq: u64,
        relations: Vec<WireRelation>,
        /// Each a [`WireChange`], serialised once by the sender (which
        /// measures it to fit the bus) and parsed off the receive loop.
        changes: Vec<Box<RawValue>>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireRelation {
    /// As the slot described it; the receiver checks it against its own
    /// catalog.
    pub(crate) rel: Relation,
}

/// A change as it is received.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct WireChange {
    /// The relation's oid.
    pub(crate) rel: u32,
    pub(crate) kind: String,
    pub(crate) new: Option<Vec<Datum>>,
    pub(crate) old: Option<Vec<Datum>>,
    /// The commit timestamp.
    pub(crate) stamp: String,
}

/// A change as it is sent, borrowing the feed's rows.
#[derive(Debug, Serialize)]
pub(crate) struct WireChangeRef<'a> {
    pub(crate) rel: u32,
    pub(crate) kind: &'a str,
    pub(crate) new: Option<&'a [Datum]>,
    pub(crate) old: Option<&'a [Datum]>,
    pub(crate) stamp: &'a str,
}

pub(crate) fn encode(origin: &str, event: Event) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        origin: origin.to_owned(),
        event,
    })
    .unwrap_or_default()
}

pub(crate) fn encode_binary(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub(crate) fn decode_binary(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// Reads one change of a batch: it must name a relation of the batch, a
/// known kind, and carry rows of that relation's width.
pub(crate) fn read_change(
    raw: &str,
    relations: &HashMap<u32, Arc<RelInfo>>,
) -> Result<(Change, String), String> {
    let change: WireChange = serde_json::from_str(raw).map_err(|err| err.to_string())?;
    let rel = relations
        .get(&change.rel)
        .ok_or_else(|| format!("relation {} is not in the batch", change.rel))?;
    let kind = match change.kind.as_str() {
        "INSERT" => "INSERT",
        "UPDATE" => "UPDATE",
        "DELETE" => "DELETE",
        other => return Err(format!("unknown change kind {other:?}")),
    };
    let width = rel.rel.columns.len();
    let fits = |row: &Option<Vec<Datum>>| row.as_ref().is_none_or(|r| r.len() == width);
    let shape_ok = match kind {
        "INSERT" => change.new.is_some() && change.old.is_none(),
        "UPDATE" => change.new.is_some(),
        _ => change.new.is_none() && change.old.is_some(),
    };
    if !shape_ok || !fits(&change.new) || !fits(&change.old) {
        return Err(format!(
            "a {kind} change whose rows do not fit its relation ({width} columns)"
        ));
    }
    if pgoutput_timestamp(&change.stamp).is_none() {
        return Err("a change without a commit timestamp".to_owned());
    }
    Ok((
        Change {
            rel: rel.clone(),
            kind,
            new: change.new,
            old: change.old,
        },
        change.stamp,
    ))
}

fn pgoutput_timestamp(text: &str) -> Option<i64> {
    sovra_realtime_proto::pgoutput::parse_timestamp(text)
}

/// A change batch from the instance that consumes the slot.
pub(crate) struct RemoteBatch {
    pub(crate) relations: Vec<WireRelation>,
    pub(crate) changes: Vec<Box<RawValue>>,
}

/// Another instance on the bus.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) seen: std::time::Instant,
    /// The last change batch number received from it.
    pub(crate) seq: Option<u64>,
}

/// `options` with the credentials written in `url`
/// ([`sovra_config::nats_url_credentials`]): async-nats reads servers from a
/// URL but not their credentials.
pub fn with_url_credentials(
    options: async_nats::ConnectOptions,
    url: &str,
) -> async_nats::ConnectOptions {
    match sovra_config::nats_url_credentials(url) {
        Some(sovra_config::NatsCredentials::Login { user, password }) => {
            options.user_and_password(user, password)
        }
        Some(sovra_config::NatsCredentials::Token(token)) => options.token(token),
        None => options,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn events_round_trip() {
        let bytes = encode(
            "a",
            Event::Broadcast {
                topic: "realtime:room".to_owned(),
                private: false,
                payload: serde_json::json!({"event": "x"}),
                binary: Some(encode_binary(&[0, 1, 255])),
            },
        );
        let envelope: Envelope = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(envelope.origin, "a");
        let Event::Broadcast { binary, .. } = envelope.event else {
            panic!("not a broadcast");
        };
        assert_eq!(decode_binary(&binary.unwrap()).unwrap(), vec![0, 1, 255]);
        let row = vec![Datum::Text("x".to_owned()), Datum::Null, Datum::Unchanged];
        let sent = WireChangeRef {
            rel: 1,
            kind: "UPDATE",
            new: Some(&row),
            old: None,
            stamp: "2026-01-01T00:00:00.000Z",
        };
        let bytes = encode(
            "b",
            Event::Changes {
                seq: 7,
                relations: Vec::new(),
                changes: vec![serde_json::value::to_raw_value(&sent).unwrap()],
            },
        );
        let envelope: Envelope = serde_json::from_slice(&bytes).unwrap();
        let Event::Changes { seq, changes, .. } = envelope.event else {
            panic!("not changes");
        };
        assert_eq!(seq, 7);
        let change: WireChange = serde_json::from_str(changes[0].get()).unwrap();
        assert_eq!(change.stamp, "2026-01-01T00:00:00.000Z");
        assert_eq!(change.new.unwrap(), row);
        let bytes = encode(
            "c",
            Event::Track(PresenceEntry {
                topic_key: "public:realtime:room".to_owned(),
                key: "alice".to_owned(),
                channel: 3,
                phx_ref: "F1".to_owned(),
                state: serde_json::Map::new(),
            }),
        );
        let envelope: Envelope = serde_json::from_slice(&bytes).unwrap();
        assert!(matches!(envelope.event, Event::Track(entry) if entry.key == "alice"));
    }

    #[test]
    fn stream_names_and_limits() {
        assert_eq!(
            stream_name("sovra.realtime.default"),
            "SOVRA_CHANGES_sovra_realtime_default"
        );
        assert_eq!(stream_name("a.b-c_d.t1"), "SOVRA_CHANGES_a_b-c_d_t1");
        // Nothing a stream name may not hold survives.
        let name = stream_name("x.y*z>w/v\\u t\tä");
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{name}"
        );
        let limits = StreamLimits::of(Duration::ZERO, 0);
        assert_eq!(limits.max_age, MIN_STREAM_AGE);
        assert_eq!(limits.max_bytes, 1 << 20);
        let limits = StreamLimits::of(Duration::from_secs(300), 64 << 20);
        assert_eq!(limits.max_age, Duration::from_secs(300));
        assert_eq!(limits.max_bytes, 64 << 20);
    }

    #[test]
    fn stream_times_convert_to_and_from_postgres_microseconds() {
        // 2000-01-01T00:00:00Z is PostgreSQL's zero.
        assert_eq!(to_pg_micros(946_684_800 * 1_000_000_000), 0);
        assert_eq!(from_pg_micros(0), 946_684_800 * 1_000_000_000);
        let stamp =
            sovra_realtime_proto::pgoutput::parse_timestamp("2026-12-07T05:00:00.123456Z").unwrap();
        assert_eq!(to_pg_micros(from_pg_micros(stamp)), stamp);
        // Nanoseconds below a microsecond are dropped, not rounded up.
        assert_eq!(to_pg_micros(from_pg_micros(stamp) + 999), stamp);
        assert_eq!(to_pg_micros(i128::MAX), i64::MAX);
        assert_eq!(to_pg_micros(i128::MIN), i64::MIN);
    }

    /// Cases per fuzz target: `SOVRA_FUZZ_CASES` (default 256).
    fn fuzz_cases() -> u32 {
        std::env::var("SOVRA_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    fn relation() -> HashMap<u32, Arc<RelInfo>> {
        let rel = Relation {
            oid: 7,
            schema: "public".to_owned(),
            name: "t".to_owned(),
            replica_identity: b'd',
            columns: vec![
                sovra_realtime_proto::pgoutput::Column {
                    key: true,
                    name: "id".to_owned(),
                    type_oid: 20,
                },
                sovra_realtime_proto::pgoutput::Column {
                    key: false,
                    name: "v".to_owned(),
                    type_oid: 25,
                },
            ],
        };
        let info = RelInfo {
            rel,
            type_names: vec!["int8".to_owned(), "text".to_owned()],
            sql_types: vec!["bigint".to_owned(), "text".to_owned()],
            rls: true,
            keys: vec![0],
            table_sql: "public.t".to_owned(),
            column_sql: vec![Some("id".to_owned()), Some("v".to_owned())],
            generated_always: vec![false, false],
        };
        HashMap::from([(7, Arc::new(info))])
    }

    #[test]
    fn changes_that_do_not_fit_their_relation_are_refused() {
        let relations = relation();
        let ok = r#"{"rel":7,"kind":"INSERT","new":[{"Text":"1"},"Null"],"old":null,"stamp":"2026-01-01T00:00:00.000Z"}"#;
        assert!(read_change(ok, &relations).is_ok());
        for bad in [
            r#"{"rel":8,"kind":"INSERT","new":[{"Text":"1"},"Null"],"old":null,"stamp":"2026-01-01T00:00:00.000Z"}"#,
            r#"{"rel":7,"kind":"INSERT","new":[{"Text":"1"}],"old":null,"stamp":"2026-01-01T00:00:00.000Z"}"#,
            r#"{"rel":7,"kind":"DROP","new":[{"Text":"1"},"Null"],"old":null,"stamp":"2026-01-01T00:00:00.000Z"}"#,
            r#"{"rel":7,"kind":"DELETE","new":[{"Text":"1"},"Null"],"old":null,"stamp":"2026-01-01T00:00:00.000Z"}"#,
            r#"{"rel":7,"kind":"INSERT","new":[{"Text":"1"},"Null"],"old":null,"stamp":"yesterday"}"#,
            r#""not a change""#,
        ] {
            assert!(read_change(bad, &relations).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: fuzz_cases(),
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Arbitrary bytes on the subject: no panic.
        #[test]
        fn fuzz_bus_events(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = serde_json::from_slice::<Envelope>(&bytes);
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = read_change(text, &relation());
            }
        }

        /// Near-valid changes: any relation, kind, widths and stamps.
        #[test]
        fn fuzz_bus_changes(
            rel in 0u32..10,
            kind in "(INSERT|UPDATE|DELETE|[A-Z]{0,8})",
            new in proptest::option::of(proptest::collection::vec("\\PC{0,8}", 0..4)),
            old in proptest::option::of(proptest::collection::vec("\\PC{0,8}", 0..4)),
            stamp in "(2026-01-01T00:00:00.000Z|\\PC{0,24})",
        ) {
            let row = |r: &Option<Vec<String>>| r.as_ref().map(|r| {
                r.iter().map(|t| Datum::Text(t.clone())).collect::<Vec<_>>()
            });
            let change = serde_json::json!({
                "rel": rel, "kind": kind, "new": row(&new), "old": row(&old), "stamp": stamp
            });
            let relations = relation();
            if let Ok((change, _)) = read_change(&change.to_string(), &relations) {
                let width = change.rel.rel.columns.len();
                proptest::prop_assert!(change.new.as_ref().is_none_or(|r| r.len() == width));
                proptest::prop_assert!(change.old.as_ref().is_none_or(|r| r.len() == width));
            }
        }
    }
}
