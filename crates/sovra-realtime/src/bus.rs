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
use sovra_realtime_proto::pgoutput::{Datum, Relation};
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
    /// `incoming`, in the order they arrive (the bus ends when its receiver
    /// is dropped).
    pub(crate) async fn connect(
        url: &str,
        subject: &str,
        incoming: mpsc::Sender<Vec<u8>>,
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
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                if incoming.send(message.payload.to_vec()).await.is_err() {
                    break;
                }
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
