//! The fan-out bus between instances, behind one trait.
//!
//! Every instance delivers what happens on it to its own clients first, then
//! publishes it on the bus so that the other instances deliver it to
//! theirs: broadcasts, presence joins and leaves, and the change batches of
//! the instance that consumes the replication slot. [`LocalBus`] (the
//! default) has no other instances; [`NatsBus`] uses a NATS subject per
//! tenant.
//!
//! Presence held by other instances is kept per instance: each instance
//! announces itself every [`HEARTBEAT`] and sends a full snapshot of its
//! own presence when it meets a new instance (and every few heartbeats, so
//! that a lost diff heals); an instance silent for [`PEER_TIMEOUT`] has its
//! presence removed, with leaves sent to the clients, as when a connection
//! drops.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sovra_realtime_proto::pgoutput::{Datum, Relation};
use tokio::sync::{mpsc, oneshot};

use crate::RealtimeService;

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
}

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
}

impl NatsBus {
    /// Connects to `url` and joins `subject`; incoming events go to
    /// `service` (held weakly: the bus ends with the service).
    pub async fn connect(
        url: &str,
        subject: &str,
        service: &Arc<RealtimeService>,
    ) -> Result<NatsBus, String> {
        let client = async_nats::ConnectOptions::new()
            .name("sovra-realtime")
            .no_echo()
            .connect(url)
            .await
            .map_err(|err| format!("cannot connect to NATS at {url}: {err}"))?;
        let max_payload = client.server_info().max_payload;
        let mut subscriber = client
            .subscribe(subject.to_owned())
            .await
            .map_err(|err| format!("cannot subscribe to {subject}: {err}"))?;
        let weak: Weak<RealtimeService> = Arc::downgrade(service);
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let Some(service) = weak.upgrade() else { break };
                service.on_bus_event(&message.payload).await;
            }
        });
        let (queue, mut rx) = mpsc::channel::<Outgoing>(4096);
        let subject = subject.to_owned();
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
        Ok(NatsBus { queue, max_payload })
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WireRelation {
    pub(crate) rel: Relation,
    pub(crate) type_names: Vec<String>,
    pub(crate) sql_types: Vec<String>,
    pub(crate) rls: bool,
    pub(crate) keys: Vec<usize>,
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

/// A change batch from the instance that consumes the slot.
pub(crate) struct RemoteBatch {
    pub(crate) relations: Vec<WireRelation>,
    pub(crate) changes: Vec<Box<RawValue>>,
}

impl RealtimeService {
    /// Joins the NATS bus at `url` on `subject` (one per tenant): from
    /// now on broadcast, presence and database changes reach the clients
    /// of every instance on the same subject.
    pub async fn attach_nats(self: &Arc<Self>, url: &str, subject: &str) -> Result<(), String> {
        let bus = NatsBus::connect(url, subject, self).await?;
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
                service.deliver_remote(batch).await;
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
        tracing::info!(%url, %subject, instance = %self.instance, "realtime joined the NATS bus");
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

/// Another instance on the bus.
#[derive(Debug)]
pub(crate) struct Peer {
    seen: std::time::Instant,
    /// The last change batch number received from it.
    seq: Option<u64>,
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
                state: Map::new(),
            }),
        );
        let envelope: Envelope = serde_json::from_slice(&bytes).unwrap();
        assert!(matches!(envelope.event, Event::Track(entry) if entry.key == "alice"));
    }
}
