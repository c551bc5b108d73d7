//! The change feed: committed changes of the tables in the
//! `supabase_realtime` publication (and inserts into `realtime.messages`,
//! broadcasts sent from SQL), read from a logical replication slot with
//! the built-in `pgoutput` plugin, and delivered to subscribers in commit
//! order.
//!
//! One feed per database consumes the slot at a time: the holder of a
//! session advisory lock. Others wait and take over when it goes away.
//! Each poll peeks at most a bounded number of changes (whole
//! transactions), delivers them, and only then advances the slot, so a
//! restart resumes where it stopped (at least once).
//!
//! Each change is authorised on the changed row itself, not on the table as
//! it is by the time the change is read (a row inserted and deleted at once
//! is still judged correctly): the subscriber's role needs SELECT on the
//! table, and with RLS on, the table's SELECT policies for that role are
//! evaluated over the row's values as that role with its claims, once per
//! group of subscribers with the same claims and poll batch (see `rls`).
//! Rows a subscriber may not see are not sent to it. Deletes are judged on
//! the old row, which needs REPLICA IDENTITY FULL; without it a delete
//! reaches no subscriber of an RLS table (the service role sees all).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};
use sovra_pg::tokio_postgres;
use sovra_realtime_proto::pgoutput::{self, Datum, Decoded, Relation};

use crate::bus::{Event, RemoteBatch, WireChange, WireChangeRef, WireRelation};
use crate::hub::{Channel, Out};
use crate::{Principal, RealtimeService};
use serde_json::value::RawValue;
use sovra_realtime_proto::frame::Vsn;

/// Serialises slot consumers of one database (`pg_try_advisory_lock`).
const LEADER_LOCK: i64 = 0x736f_7672_615f_7274; // "sovra_rt"
/// Changes read per poll (whole transactions; PostgreSQL stops at a
/// transaction boundary once past this).
const BATCH: i32 = 20_000;
const PUBLICATIONS: &str = "supabase_realtime,sovra_realtime_messages";

/// A relation with what delivery needs beyond the decoder's message.
pub(crate) struct RelInfo {
    pub(crate) rel: Relation,
    pub(crate) type_names: Vec<String>,
    /// `format_type` of each column, for casts in the visibility query.
    pub(crate) sql_types: Vec<String>,
    pub(crate) rls: bool,
    /// The primary key's columns (the replica identity's when there is no
    /// primary key but a unique index identity).
    keys: Vec<usize>,
}

impl RelInfo {
    fn key_columns(&self) -> Vec<usize> {
        self.keys.clone()
    }
}

#[derive(Clone)]
pub(crate) struct Change {
    pub(crate) rel: Arc<RelInfo>,
    pub(crate) kind: &'static str,
    pub(crate) new: Option<Vec<Datum>>,
    pub(crate) old: Option<Vec<Datum>>,
}

struct Txn {
    commit_time: i64,
    end_lsn: u64,
    changes: Vec<Change>,
}

/// A catch-up replays from this much before the `since` it is given:
/// commit timestamps are taken shortly before the commit record is
/// written, so commit order and timestamp order can differ by a little.
pub(crate) const CATCHUP_SLACK_MICROS: i64 = 1_000_000;

/// Changes kept for catch-up, oldest first.
pub(crate) struct Recent {
    entries: std::collections::VecDeque<RecentChange>,
    /// Changes committed before this (PostgreSQL microseconds) may be
    /// missing: evicted, skipped, or from before this instance started.
    horizon: i64,
}

impl Recent {
    pub(crate) fn new() -> Recent {
        Recent {
            entries: std::collections::VecDeque::new(),
            horizon: now_pg_micros(),
        }
    }
}

struct RecentChange {
    at: Instant,
    time: i64,
    stamp: Arc<str>,
    change: Change,
}

/// Now in microseconds since 2000-01-01 UTC.
fn now_pg_micros() -> i64 {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    unix - pgoutput::PG_EPOCH_UNIX_SECS * 1_000_000
}

/// An insert into `realtime.messages` (a broadcast from SQL).
fn is_message(change: &Change) -> bool {
    change.rel.rel.schema == "realtime" && change.rel.rel.name == "messages"
}

fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// A slot name for this database (slot names are per cluster).
fn slot_for(prefix: &str, database: &str) -> String {
    let clean: String = database
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut name = format!("{prefix}_{clean}");
    name.truncate(63);
    name
}

impl RealtimeService {
    /// Starts the change feed of this tenant (once); `admin` connects as a
    /// role that may use replication slots.
    pub fn start_feed(self: &Arc<Self>, admin: tokio_postgres::Config) {
        let mut started = match self.feed.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if started.is_some() {
            return;
        }
        let service = self.clone();
        *started = Some(tokio::spawn(async move { service.feed_loop(admin).await }));
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

    /// Remembers how to start the feed, and starts it on the first join
    /// (`sovra serve` starts it at once).
    pub fn set_feed_source(&self, admin: tokio_postgres::Config) {
        if let Ok(mut source) = self.feed_source.lock() {
            *source = Some(admin);
        }
    }

    pub(crate) fn ensure_feed(self: &Arc<Self>) {
        let source = self.feed_source.lock().ok().and_then(|s| s.clone());
        if let Some(admin) = source {
            self.start_feed(admin);
        }
    }

    async fn feed_loop(self: Arc<Self>, admin: tokio_postgres::Config) {
        loop {
            match self.lead(&admin).await {
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "realtime change feed stopped; retrying");
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Becomes the slot consumer (or waits to), then polls until an error.
    async fn lead(&self, admin: &tokio_postgres::Config) -> Result<(), tokio_postgres::Error> {
        let client = sovra_pg::connect_one(admin).await?;
        loop {
            let leader: bool = client
                .query_one("select pg_try_advisory_lock($1)", &[&LEADER_LOCK])
                .await?
                .get(0);
            if leader {
                break;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        let database: String = client
            .query_one("select current_database()", &[])
            .await?
            .get(0);
        let slot = slot_for(&self.config.slot_name, &database);
        let exists = client
            .query_opt(
                "select 1 from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await?
            .is_some();
        if !exists {
            client
                .execute(
                    "select pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&slot],
                )
                .await?;
            tracing::info!(%slot, "created the realtime replication slot");
        }
        if let Ok(mut ready) = self.feed_slot.lock() {
            *ready = Some(slot.clone());
        }
        let mut relations: HashMap<u32, Arc<RelInfo>> = HashMap::new();
        let mut last_lag_check = Instant::now() - Duration::from_secs(60);
        loop {
            let rows = client
                .query(
                    "select data from pg_logical_slot_peek_binary_changes($1, null, $2,
                       'proto_version', '1', 'publication_names', $3)",
                    &[&slot, &BATCH, &PUBLICATIONS],
                )
                .await?;
            let full = rows.len() >= BATCH as usize;
            let txns = self.decode(&client, &rows, &mut relations).await?;
            if !rows.is_empty() {
                tracing::debug!(
                    messages = rows.len(),
                    transactions = txns.len(),
                    "change feed batch"
                );
            }
            if let Some(last) = txns.last() {
                let end = last.end_lsn;
                // The whole batch is authorised and delivered together:
                // one query per claims group per poll, in commit order.
                let mut changes = Vec::new();
                let mut stamps = Vec::new();
                for txn in txns {
                    let stamp: Arc<str> = Arc::from(pgoutput::commit_timestamp(txn.commit_time));
                    for change in txn.changes {
                        changes.push(change);
                        stamps.push(stamp.clone());
                    }
                }
                self.share_changes(&changes, &stamps).await;
                self.deliver(changes, stamps).await;
                client
                    .execute(
                        "select pg_replication_slot_advance($1, $2::text::pg_lsn)",
                        &[&slot, &lsn_text(end)],
                    )
                    .await?;
            }
            if last_lag_check.elapsed() > Duration::from_secs(5) {
                last_lag_check = Instant::now();
                self.check_lag(&client, &slot).await?;
            }
            if !full {
                tokio::time::sleep(self.config.poll_interval).await;
            }
        }
    }

    /// Reports the slot's lag and applies the policy for a slot too far
    /// behind: skip to the present and tell every change subscriber.
    async fn check_lag(
        &self,
        client: &tokio_postgres::Client,
        slot: &str,
    ) -> Result<(), tokio_postgres::Error> {
        let lag: Option<i64> = client
            .query_opt(
                "select pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::int8
                 from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await?
            .and_then(|row| row.get(0));
        let lag = lag.unwrap_or(0).max(0);
        metrics::gauge!("sovra_realtime_slot_lag_bytes").set(lag as f64);
        if u64::try_from(lag).unwrap_or(0) > self.config.max_slot_lag_bytes {
            tracing::error!(lag_bytes = lag, %slot, "realtime slot too far behind; skipping to the present");
            client
                .execute(
                    "select pg_replication_slot_advance($1, pg_current_wal_lsn())",
                    &[&slot],
                )
                .await?;
            metrics::counter!("sovra_realtime_slot_skips_total").increment(1);
            self.forget_recent();
            for channel in self.hub.pg_channels() {
                channel.socket.send_message(&channel.changes_status(
                    "error",
                    "Database changes were skipped: the change feed fell too far behind",
                ));
            }
        }
        Ok(())
    }

    /// Decodes a batch into whole transactions (a trailing partial one is
    /// left for the next poll).
    async fn decode(
        &self,
        client: &tokio_postgres::Client,
        rows: &[tokio_postgres::Row],
        relations: &mut HashMap<u32, Arc<RelInfo>>,
    ) -> Result<Vec<Txn>, tokio_postgres::Error> {
        let mut txns = Vec::new();
        let mut current: Option<Txn> = None;
        for row in rows {
            let data: &[u8] = row.get(0);
            let message = match pgoutput::decode(data) {
                Ok(message) => message,
                Err(err) => {
                    tracing::error!(error = %err, "undecodable change; skipped");
                    continue;
                }
            };
            match message {
                Decoded::Begin { commit_time, .. } => {
                    current = Some(Txn {
                        commit_time,
                        end_lsn: 0,
                        changes: Vec::new(),
                    });
                }
                Decoded::Commit {
                    end_lsn,
                    commit_time,
                    ..
                } => {
                    if let Some(mut txn) = current.take() {
                        txn.end_lsn = end_lsn;
                        txn.commit_time = commit_time;
                        txns.push(txn);
                    }
                }
                // Every poll announces its relations again; the catalog is
                // read only when one is new or its shape changed.
                Decoded::Relation(rel) => {
                    if relations.get(&rel.oid).is_none_or(|known| known.rel != rel) {
                        let info = describe(client, rel).await?;
                        relations.insert(info.rel.oid, Arc::new(info));
                    }
                }
                Decoded::Insert { relation, new } => {
                    push_change(&mut current, relations, relation, "INSERT", Some(new), None)
                }
                Decoded::Update { relation, old, new } => {
                    push_change(&mut current, relations, relation, "UPDATE", Some(new), old)
                }
                Decoded::Delete { relation, old } => {
                    push_change(&mut current, relations, relation, "DELETE", None, Some(old))
                }
                Decoded::Truncate { .. } | Decoded::Other(_) => {}
            }
        }
        Ok(txns)
    }

    /// Delivers the changes of a batch of transactions in commit order
    /// to every subscriber here, and keeps them for catch-up;
    /// `stamps[i]` is the commit timestamp of `changes[i]`.
    async fn deliver(&self, changes: Vec<Change>, stamps: Vec<Arc<str>>) {
        let _order = self.delivery.lock().await;
        let channels = self.hub.pg_channels();
        let delivered = self.deliver_to(&channels, &changes, &stamps).await;
        metrics::counter!("sovra_realtime_messages_total", "kind" => "postgres_changes")
            .increment(delivered);
        for change in changes.iter().filter(|c| is_message(c)) {
            self.deliver_message(change);
        }
        self.remember(changes, stamps);
    }

    /// Keeps delivered table changes for catch-up, within the window.
    fn remember(&self, changes: Vec<Change>, stamps: Vec<Arc<str>>) {
        let window = self.config.catchup_window;
        let max = self.config.catchup_max_changes;
        let Ok(mut recent) = self.recent.lock() else {
            return;
        };
        let now = Instant::now();
        if !window.is_zero() && max > 0 {
            // A transaction's changes share one stamp: read it once.
            let mut last: Option<(Arc<str>, i64)> = None;
            for (change, stamp) in changes.into_iter().zip(stamps) {
                if is_message(&change) {
                    continue;
                }
                let time = match &last {
                    Some((seen, time)) if Arc::ptr_eq(seen, &stamp) => *time,
                    _ => {
                        let time = pgoutput::parse_timestamp(&stamp).unwrap_or(i64::MAX);
                        last = Some((stamp.clone(), time));
                        time
                    }
                };
                recent.entries.push_back(RecentChange {
                    at: now,
                    time,
                    stamp,
                    change,
                });
            }
        }
        while let Some(front) = recent.entries.front() {
            if recent.entries.len() <= max && now.duration_since(front.at) <= window {
                break;
            }
            let time = front.time;
            recent.entries.pop_front();
            recent.horizon = recent.horizon.max(time.saturating_add(1));
        }
    }

    /// Sends `channel` (just joined, not yet given any live change) the
    /// changes it may see that were committed at or after `since` (less
    /// [`CATCHUP_SLACK_MICROS`]) and are still kept, then a `system`
    /// message that says how it went. Holds delivery, so live changes
    /// follow the replay in order.
    pub(crate) async fn catch_up(&self, channel: &Arc<Channel>, since: i64) {
        let from = since.saturating_sub(CATCHUP_SLACK_MICROS);
        let (changes, stamps, horizon) = {
            let Ok(recent) = self.recent.lock() else {
                return;
            };
            let mut changes = Vec::new();
            let mut stamps = Vec::new();
            for entry in recent.entries.iter().filter(|e| e.time >= from) {
                changes.push(entry.change.clone());
                stamps.push(entry.stamp.clone());
            }
            (changes, stamps, recent.horizon)
        };
        let system = |status: &str, message: String| channel.changes_status(status, &message);
        if self.config.catchup_window.is_zero() {
            channel.socket.send_message(&system(
                "error",
                "Catch-up is off on this server (realtime.catchup_window = 0)".to_owned(),
            ));
            return;
        }
        if horizon > from {
            metrics::counter!("sovra_realtime_catchup_total", "result" => "incomplete")
                .increment(1);
            channel.socket.send_message(&system(
                "error",
                format!(
                    "Cannot catch up from {}: changes before {} are no longer kept; reload the data",
                    pgoutput::commit_timestamp(since),
                    pgoutput::commit_timestamp(horizon)
                ),
            ));
        } else {
            metrics::counter!("sovra_realtime_catchup_total", "result" => "complete").increment(1);
        }
        // In steps, waiting for the connection's queue to drain between
        // them; one that does not drain in time is cut off.
        let step = 500;
        let mut sent = 0u64;
        for (chunk, chunk_stamps) in changes.chunks(step).zip(stamps.chunks(step)) {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            if !channel.socket.drained_by(deadline).await {
                return;
            }
            sent += self
                .deliver_to(std::slice::from_ref(channel), chunk, chunk_stamps)
                .await;
        }
        metrics::counter!("sovra_realtime_messages_total", "kind" => "catch_up").increment(sent);
        if horizon <= from {
            channel.socket.send_message(&system(
                "ok",
                format!(
                    "Caught up on {sent} changes since {}",
                    pgoutput::commit_timestamp(since)
                ),
            ));
        }
    }

    /// Forgets what was kept for catch-up (changes were skipped).
    fn forget_recent(&self) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.entries.clear();
            recent.horizon = now_pg_micros();
        }
    }

    /// Delivers table changes to `channels` (those whose bindings want
    /// them and whose claims pass the table's policies); returns how many
    /// messages were queued.
    async fn deliver_to(
        &self,
        channels: &[Arc<Channel>],
        changes: &[Change],
        stamps: &[Arc<str>],
    ) -> u64 {
        // Each subscriber's claims, read once, and a small id per distinct
        // set of claims (subscribers with the same claims see the same).
        let mut rights_ids: HashMap<Arc<str>, u32> = HashMap::new();
        let mut rights_list: Vec<Arc<str>> = Vec::new();
        let channels: Vec<(Arc<Channel>, Principal, u32)> = channels
            .iter()
            .cloned()
            .map(|channel| {
                let principal = channel.principal();
                let rights: Arc<str> = Arc::from(principal.rights_key());
                let next = u32::try_from(rights_list.len()).unwrap_or(u32::MAX);
                let id = *rights_ids.entry(rights.clone()).or_insert_with(|| {
                    rights_list.push(rights);
                    next
                });
                (channel, principal, id)
            })
            .collect();
        // Which channels want which change, and which (change, claims)
        // pairs must pass the table's policies.
        let mut wanted: Vec<Vec<u32>> = Vec::with_capacity(changes.len());
        let mut group_of: HashMap<(u32, u32), usize> = HashMap::new();
        let mut groups: Vec<crate::rls::Group> = Vec::new();
        for (index, change) in changes.iter().enumerate() {
            let mut receivers = Vec::new();
            if is_message(change) {
                wanted.push(receivers);
                continue;
            }
            let oid = change.rel.rel.oid;
            for (position, (channel, principal, rights)) in channels.iter().enumerate() {
                if !binding_ids(channel, change).any(|_| true) {
                    continue;
                }
                if !principal.is_service() {
                    let slot = *group_of.entry((oid, *rights)).or_insert_with(|| {
                        groups.push(crate::rls::Group {
                            rights: rights_list[*rights as usize].clone(),
                            principal: principal.clone(),
                            indexes: Vec::new(),
                        });
                        groups.len() - 1
                    });
                    let indexes = &mut groups[slot].indexes;
                    if indexes.last() != Some(&index) {
                        indexes.push(index);
                    }
                }
                receivers.push(u32::try_from(position).unwrap_or(u32::MAX));
            }
            wanted.push(receivers);
        }
        // One query per (table, claims) group for the whole batch.
        let mut allowed: HashSet<(usize, u32)> = HashSet::new();
        for (rights, result) in crate::rls::authorize(&self.pool, changes, groups).await {
            match result {
                Ok(seen) => {
                    let id = rights_ids.get(&rights).copied().unwrap_or(u32::MAX);
                    for index in seen {
                        allowed.insert((index, id));
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "change authorisation failed; not delivered")
                }
            }
        }
        let mut delivered = 0u64;
        for (index, change) in changes.iter().enumerate() {
            // The data is serialised once, when someone may see it; each
            // channel gets its own ids.
            let mut data: Option<String> = None;
            for position in &wanted[index] {
                let (channel, principal, rights) = &channels[*position as usize];
                if !principal.is_service() && !allowed.contains(&(index, *rights)) {
                    continue;
                }
                let data =
                    data.get_or_insert_with(|| change_data(change, &stamps[index]).to_string());
                let ids: Vec<i64> = binding_ids(channel, change).collect();
                let ids = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_owned());
                let topic = serde_json::to_string(&channel.topic).unwrap_or_default();
                let payload = format!(r#"{{"ids":{ids},"data":{data}}}"#);
                let text = match channel.socket.vsn {
                    Vsn::V1 => format!(
                        r#"{{"topic":{topic},"event":"postgres_changes","payload":{payload},"ref":null,"join_ref":null}}"#
                    ),
                    Vsn::V2 => format!(r#"[null,null,{topic},"postgres_changes",{payload}]"#),
                };
                if channel.socket.send(Out::Text(text.into())) {
                    delivered += 1;
                }
            }
        }
        delivered
    }

    /// Publishes a batch to the other instances (in chunks the bus can
    /// carry), waiting until the bus has it: the slot advances only after.
    async fn share_changes(&self, changes: &[Change], stamps: &[Arc<str>]) {
        let bus = self.current_bus();
        if !bus.is_shared() || changes.is_empty() {
            return;
        }
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
                self.publish_chunk(bus.as_ref(), &mut chunk, &mut rels)
                    .await;
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
            self.publish_chunk(bus.as_ref(), &mut chunk, &mut rels)
                .await;
        }
    }

    async fn publish_chunk(
        &self,
        bus: &dyn crate::bus::Bus,
        chunk: &mut Vec<Box<RawValue>>,
        rels: &mut Vec<Arc<RelInfo>>,
    ) {
        let relations = rels
            .drain(..)
            .map(|info| WireRelation {
                rel: info.rel.clone(),
                type_names: info.type_names.clone(),
                sql_types: info.sql_types.clone(),
                rls: info.rls,
                keys: info.keys.clone(),
            })
            .collect();
        let seq = self.bus_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let event = crate::bus::encode(
            &self.instance,
            Event::Changes {
                seq,
                relations,
                changes: std::mem::take(chunk),
            },
        );
        if let Err(err) = bus.publish_durably(event).await {
            metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
            tracing::warn!(error = %err, "change batch not published on the bus");
        }
    }

    /// Delivers a change batch that the slot's consumer published.
    pub(crate) async fn deliver_remote(&self, batch: RemoteBatch) {
        let RemoteBatch {
            relations,
            changes: wire,
        } = batch;
        let relations: HashMap<u32, Arc<RelInfo>> = relations
            .into_iter()
            .map(|r| {
                (
                    r.rel.oid,
                    Arc::new(RelInfo {
                        rel: r.rel,
                        type_names: r.type_names,
                        sql_types: r.sql_types,
                        rls: r.rls,
                        keys: r.keys,
                    }),
                )
            })
            .collect();
        let mut changes = Vec::with_capacity(wire.len());
        let mut stamps: Vec<Arc<str>> = Vec::with_capacity(wire.len());
        for raw in wire {
            let change: WireChange = match serde_json::from_str(raw.get()) {
                Ok(change) => change,
                Err(err) => {
                    metrics::counter!("sovra_realtime_bus_errors_total").increment(1);
                    tracing::warn!(error = %err, "unreadable change on the bus; skipped");
                    continue;
                }
            };
            let Some(rel) = relations.get(&change.rel) else {
                continue;
            };
            let kind = match change.kind.as_str() {
                "INSERT" => "INSERT",
                "UPDATE" => "UPDATE",
                "DELETE" => "DELETE",
                _ => continue,
            };
            // A transaction's changes share one stamp.
            let stamp = match stamps.last() {
                Some(last) if **last == *change.stamp => last.clone(),
                _ => Arc::from(change.stamp),
            };
            changes.push(Change {
                rel: rel.clone(),
                kind,
                new: change.new,
                old: change.old,
            });
            stamps.push(stamp);
        }
        self.deliver(changes, stamps).await;
    }

    /// A broadcast sent from SQL (`realtime.send`).
    fn deliver_message(&self, change: &Change) {
        let (Some(new), "INSERT") = (&change.new, change.kind) else {
            return;
        };
        let rel = &change.rel;
        let get = |name: &str| -> Option<&str> {
            let i = rel.rel.columns.iter().position(|c| c.name == name)?;
            match new.get(i)? {
                Datum::Text(t) => Some(t.as_str()),
                _ => None,
            }
        };
        if get("extension") != Some("broadcast") || get("event") == Some("sovra.authorization") {
            return;
        }
        let (Some(topic), Some(event)) = (get("topic"), get("event")) else {
            return;
        };
        let private = get("private") == Some("t");
        let mut payload: Value = get("payload")
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_else(|| json!({}));
        if let (Value::Object(map), Some(id)) = (&mut payload, get("id"))
            && !map.contains_key("id")
        {
            map.insert("id".to_owned(), Value::String(id.to_owned()));
        }
        let body = json!({"type": "broadcast", "event": event, "payload": payload});
        self.hub
            .broadcast(&format!("realtime:{topic}"), private, body, None, None);
    }
}

/// The ids of a channel's bindings that want `change` (event, table and
/// filter).
fn binding_ids<'a>(channel: &'a Channel, change: &'a Change) -> impl Iterator<Item = i64> + 'a {
    let rel = &change.rel;
    let row = if change.kind == "DELETE" {
        change.old.as_ref()
    } else {
        change.new.as_ref()
    };
    channel
        .pg
        .iter()
        .filter(move |b| b.wants(&rel.rel.schema, &rel.rel.name, change.kind))
        .filter(move |b| {
            b.filter.matches(|name| {
                let i = rel.rel.columns.iter().position(|c| c.name == name)?;
                match row?.get(i)? {
                    Datum::Text(t) => Some((Some(t.as_str()), rel.type_names[i].as_str())),
                    Datum::Null => Some((None, rel.type_names[i].as_str())),
                    Datum::Unchanged => None,
                }
            })
        })
        .map(|b| b.id)
}

fn push_change(
    current: &mut Option<Txn>,
    relations: &HashMap<u32, Arc<RelInfo>>,
    relation: u32,
    kind: &'static str,
    new: Option<Vec<Datum>>,
    old: Option<Vec<Datum>>,
) {
    let (Some(txn), Some(rel)) = (current.as_mut(), relations.get(&relation)) else {
        return;
    };
    txn.changes.push(Change {
        rel: rel.clone(),
        kind,
        new,
        old,
    });
}

/// Type names, SQL types and the RLS flag of a relation.
async fn describe(
    client: &tokio_postgres::Client,
    rel: Relation,
) -> Result<RelInfo, tokio_postgres::Error> {
    let oids: Vec<u32> = rel.columns.iter().map(|c| c.type_oid).collect();
    let rows = client
        .query(
            "select a.n, t.typname::text, format_type(t.oid, null)
             from unnest($1::oid[]) with ordinality as a(oid, n) join pg_type t on t.oid = a.oid
             order by a.n",
            &[&oids],
        )
        .await?;
    let mut type_names = vec![String::from("text"); rel.columns.len()];
    let mut sql_types = vec![String::from("text"); rel.columns.len()];
    for row in rows {
        let n: i64 = row.get(0);
        if let Some(i) = usize::try_from(n - 1)
            .ok()
            .filter(|i| *i < type_names.len())
        {
            type_names[i] = row.get(1);
            sql_types[i] = row.get(2);
        }
    }
    let rls: bool = client
        .query_opt(
            "select relrowsecurity from pg_class where oid = $1",
            &[&rel.oid],
        )
        .await?
        .is_some_and(|row| row.get(0));
    let primary: Vec<String> = client
        .query(
            "select a.attname::text from pg_index i
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
             where i.indrelid = $1 and i.indisprimary",
            &[&rel.oid],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let keys: Vec<usize> = if primary.is_empty() {
        // Without a primary key only an index identity names rows.
        if rel.replica_identity == b'i' {
            rel.columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.key)
                .map(|(i, _)| i)
                .collect()
        } else {
            Vec::new()
        }
    } else {
        rel.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| primary.contains(&c.name))
            .map(|(i, _)| i)
            .collect()
    };
    Ok(RelInfo {
        rel,
        type_names,
        sql_types,
        rls,
        keys,
    })
}

/// The `data` of a `postgres_changes` message, as realtime-js reads it.
fn change_data(change: &Change, commit_timestamp: &str) -> Value {
    let rel = &change.rel;
    let columns: Vec<Value> = rel
        .rel
        .columns
        .iter()
        .zip(&rel.type_names)
        .map(|(c, t)| json!({"name": c.name, "type": t}))
        .collect();
    let record_of = |tuple: &Vec<Datum>, only: Option<&[usize]>| -> Value {
        let mut map = Map::new();
        for (i, column) in rel.rel.columns.iter().enumerate() {
            if only.is_some_and(|keys| !keys.contains(&i)) {
                continue;
            }
            match tuple.get(i) {
                Some(Datum::Text(t)) => {
                    map.insert(
                        column.name.clone(),
                        pgoutput::json_value(&rel.type_names[i], t),
                    );
                }
                Some(Datum::Null) => {
                    map.insert(column.name.clone(), Value::Null);
                }
                Some(Datum::Unchanged) | None => {}
            }
        }
        Value::Object(map)
    };
    let keys = rel.key_columns();
    let mut errors = Value::Null;
    let mut data = Map::new();
    data.insert("schema".to_owned(), json!(rel.rel.schema));
    data.insert("table".to_owned(), json!(rel.rel.name));
    data.insert("commit_timestamp".to_owned(), json!(commit_timestamp));
    data.insert("type".to_owned(), json!(change.kind));
    data.insert("columns".to_owned(), Value::Array(columns));
    if keys.is_empty() {
        errors = json!(["Error 400: Bad Request, no primary key"]);
    }
    if let Some(new) = &change.new {
        let mut record = record_of(new, None);
        // Unchanged TOASTed values come from the old row when it was sent
        // whole (REPLICA IDENTITY FULL).
        if let (Value::Object(map), Some(old)) = (&mut record, &change.old) {
            for (i, column) in rel.rel.columns.iter().enumerate() {
                if matches!(new.get(i), Some(Datum::Unchanged))
                    && let Some(Datum::Text(t)) = old.get(i)
                {
                    map.insert(
                        column.name.clone(),
                        pgoutput::json_value(&rel.type_names[i], t),
                    );
                }
            }
        }
        data.insert("record".to_owned(), record);
    }
    match (change.kind, &change.old) {
        ("UPDATE" | "DELETE", Some(old)) => {
            let full = rel.rel.replica_identity == b'f';
            let only = (!full || (change.kind == "DELETE" && rel.rls)).then_some(keys.as_slice());
            data.insert("old_record".to_owned(), record_of(old, only));
        }
        ("UPDATE", None) => {
            if let Some(new) = &change.new {
                data.insert("old_record".to_owned(), record_of(new, Some(&keys)));
            }
        }
        _ => {}
    }
    data.insert("errors".to_owned(), errors);
    Value::Object(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_per_database_and_valid() {
        assert_eq!(
            slot_for("sovra_realtime", "postgres"),
            "sovra_realtime_postgres"
        );
        assert_eq!(slot_for("sovra_realtime", "My-DB"), "sovra_realtime_my_db");
        assert!(slot_for("sovra_realtime", &"x".repeat(100)).len() <= 63);
        assert_eq!(lsn_text(0x1_0000_00AB), "1/AB");
    }
}
