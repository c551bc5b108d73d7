//! Stage 3 of the change path: fan authorised changes out to the
//! subscribed channels of this instance, in commit order, and keep them for
//! catch-up.
//!
//! Input: a batch of [`Change`]s in commit order. For every channel whose
//! bindings want a change (event, table, filter), subscribers are grouped
//! by claims; `authorize` answers, per group, which changes PostgreSQL lets
//! it see; each visible change is serialised once and queued to the
//! channel's socket. Delivered changes are kept for
//! `realtime.catchup_window`, so that a client rejoining with `since` is
//! replayed what it missed, under the same lock that orders live delivery.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sovra_pg::Pool;
use sovra_realtime_proto::frame::Vsn;
use sovra_realtime_proto::pgoutput::{self, Datum};

use crate::change::{Change, change_data, is_message};
use crate::hub::{Channel, Hub, Out};
use crate::principal::Principal;

/// A catch-up replays from this much before the `since` it is given:
/// commit timestamps are taken shortly before the commit record is
/// written, so commit order and timestamp order can differ by a little.
pub(crate) const CATCHUP_SLACK_MICROS: i64 = 1_000_000;

/// Changes kept for catch-up, oldest first.
struct Recent {
    entries: std::collections::VecDeque<RecentChange>,
    /// The entries' size, as [`Change::size`] counts it.
    bytes: usize,
    /// Changes committed before this (PostgreSQL microseconds) may be
    /// missing: evicted, skipped, or from before this instance started.
    horizon: i64,
}

impl Recent {
    fn new() -> Recent {
        Recent {
            entries: std::collections::VecDeque::new(),
            bytes: 0,
            horizon: now_pg_micros(),
        }
    }
}

struct RecentChange {
    at: Instant,
    size: usize,
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

/// The changes a catch-up replays, taken under `delivery`.
pub(crate) struct Replay {
    since: i64,
    from: i64,
    changes: Vec<Change>,
    stamps: Vec<Arc<str>>,
    /// Changes committed before this may be missing.
    horizon: i64,
    /// The last change-stream sequence delivered here when the replay was
    /// taken (0: none).
    position: u64,
}

impl Replay {
    /// Whether changes the replay should hold may be missing from it.
    pub(crate) fn is_incomplete(&self) -> bool {
        self.horizon > self.from
    }

    /// From when the replay replays (PostgreSQL microseconds).
    pub(crate) fn from(&self) -> i64 {
        self.from
    }

    /// See [`Replay::position`].
    pub(crate) fn position(&self) -> u64 {
        self.position
    }

    /// Replays `changes` instead (read elsewhere, up to the same
    /// position), complete from `horizon`.
    pub(crate) fn replace(&mut self, changes: Vec<Change>, stamps: Vec<Arc<str>>, horizon: i64) {
        self.changes = changes;
        self.stamps = stamps;
        self.horizon = horizon;
    }
}

/// Delivery of database changes to this instance's channels.
pub(crate) struct Fanout {
    pool: Pool,
    /// The role the request pool logs in as (`authenticator`).
    login: tokio::sync::OnceCell<String>,
    /// The feed's administrative pool, which authorisation uses (it puts
    /// committed rows back, then switches to each subscriber's role).
    pub(crate) admin: std::sync::OnceLock<Pool>,
    catchup_window: Duration,
    catchup_max_changes: usize,
    catchup_max_bytes: usize,
    slow_consumer_timeout: Duration,
    /// Held while changes are delivered (and while a catch-up replays), so
    /// that every subscriber gets them in commit order.
    pub(crate) delivery: tokio::sync::Mutex<()>,
    recent: std::sync::Mutex<Recent>,
    /// The last change-stream sequence delivered (set under `delivery`).
    position: std::sync::atomic::AtomicU64,
}

impl Fanout {
    pub(crate) fn new(
        pool: Pool,
        catchup_window: Duration,
        catchup_max_changes: usize,
        catchup_max_bytes: usize,
        slow_consumer_timeout: Duration,
    ) -> Fanout {
        Fanout {
            pool,
            admin: std::sync::OnceLock::new(),
            login: tokio::sync::OnceCell::new(),
            catchup_window,
            catchup_max_changes,
            catchup_max_bytes,
            slow_consumer_timeout,
            delivery: tokio::sync::Mutex::new(()),
            recent: std::sync::Mutex::new(Recent::new()),
            position: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Starts counting delivered stream sequences from `position`.
    pub(crate) fn set_position(&self, position: u64) {
        self.position
            .fetch_max(position, std::sync::atomic::Ordering::Release);
    }

    /// Delivers the changes of a batch of transactions in commit order
    /// to every subscriber here, and keeps them for catch-up;
    /// `stamps[i]` is the commit timestamp of `changes[i]`; `position`,
    /// the batch's change-stream sequence, if it has one.
    ///
    /// A subscriber whose queue cannot take its next change is waited for
    /// until it drains it to half, up to `realtime.slow_consumer_timeout`
    /// each time (see [`crate::hub::SocketTx::wait_for_room`]): a healthy
    /// client receives a transaction of any size, and one that stops
    /// reading holds the others back for at most that long, once, before
    /// it is cut off.
    pub(crate) async fn deliver(
        &self,
        hub: &Hub,
        changes: Vec<Change>,
        stamps: Vec<Arc<str>>,
        position: Option<u64>,
    ) {
        let _order = self.delivery.lock().await;
        if let Some(position) = position {
            self.set_position(position);
        }
        let channels = hub.pg_channels();
        let delivered = self.deliver_to(&channels, &changes, &stamps).await;
        metrics::counter!("sovra_realtime_messages_total", "kind" => "postgres_changes")
            .increment(delivered);
        for change in changes.iter().filter(|c| is_message(c)) {
            deliver_message(hub, change);
        }
        self.remember(changes, stamps);
    }

    /// Keeps delivered table changes for catch-up, within the window.
    fn remember(&self, changes: Vec<Change>, stamps: Vec<Arc<str>>) {
        let window = self.catchup_window;
        let max = self.catchup_max_changes;
        let max_bytes = self.catchup_max_bytes;
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
                let size = change.size();
                recent.bytes += size;
                recent.entries.push_back(RecentChange {
                    at: now,
                    size,
                    time,
                    stamp,
                    change,
                });
            }
        }
        while let Some(front) = recent.entries.front() {
            if recent.entries.len() <= max
                && recent.bytes <= max_bytes
                && now.duration_since(front.at) <= window
            {
                break;
            }
            let (time, size) = (front.time, front.size);
            recent.entries.pop_front();
            recent.bytes -= size;
            recent.horizon = recent.horizon.max(time.saturating_add(1));
        }
    }

    /// What a catch-up from `since` replays: the kept changes committed at
    /// or after `since` (less [`CATCHUP_SLACK_MICROS`]). Called with
    /// `delivery` held, right after the channel (holding its live changes,
    /// see [`Channel::held`]) became visible to the feed: every change is
    /// then either in the replay or held, never both, never neither.
    pub(crate) fn snapshot(&self, since: i64) -> Replay {
        let from = since.saturating_sub(CATCHUP_SLACK_MICROS);
        let mut replay = Replay {
            since,
            from,
            changes: Vec::new(),
            stamps: Vec::new(),
            horizon: i64::MAX,
            position: self.position.load(std::sync::atomic::Ordering::Acquire),
        };
        if let Ok(recent) = self.recent.lock() {
            for entry in recent.entries.iter().filter(|e| e.time >= from) {
                replay.changes.push(entry.change.clone());
                replay.stamps.push(entry.stamp.clone());
            }
            replay.horizon = recent.horizon;
        }
        replay
    }

    /// Sends `channel` the changes of `replay` it may see, then a `system`
    /// message that says how it went, then the live changes held
    /// meanwhile. Runs without `delivery`: a client slow to take its
    /// replay delays only itself, and is cut off when it stops reading.
    pub(crate) async fn replay(&self, channel: &Arc<Channel>, replay: Replay) {
        let Replay {
            since,
            from,
            changes,
            stamps,
            horizon,
            position: _,
        } = replay;
        let patience = self.slow_consumer_timeout;
        let system = |status: &str, message: String| channel.changes_status(status, &message);
        if self.catchup_window.is_zero() {
            channel.socket.send_message(&system(
                "error",
                "Catch-up is off on this server (realtime.catchup_window = 0)".to_owned(),
            ));
            channel.release_held(patience).await;
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
        // In steps (one authorisation query each), each waiting for the
        // client to make room as live delivery does.
        let step = 2_000;
        let mut sent = 0u64;
        for (chunk, chunk_stamps) in changes.chunks(step).zip(stamps.chunks(step)) {
            if channel.socket.is_closed() {
                return;
            }
            sent += self
                .deliver_to_socket(
                    std::slice::from_ref(channel),
                    chunk,
                    chunk_stamps,
                    patience,
                    false,
                )
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
        channel.release_held(patience).await;
    }

    /// Forgets what was kept for catch-up (changes were skipped).
    pub(crate) fn forget_recent(&self) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.entries.clear();
            recent.horizon = now_pg_micros();
        }
    }

    /// The role the request pool logs in as, asked once.
    async fn login(&self) -> String {
        let asked = self
            .login
            .get_or_try_init(|| async {
                let client = self.pool.get().await.map_err(|err| err.to_string())?;
                client
                    .query_one("select session_user::text", &[])
                    .await
                    .map(|row| row.get::<_, String>(0))
                    .map_err(|err| err.to_string())
            })
            .await;
        match asked {
            Ok(login) => login.clone(),
            Err(err) => {
                tracing::warn!(error = %err, "cannot ask the request pool's role");
                // Nobody is a member of a role that cannot exist.
                String::new()
            }
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
        self.deliver_to_socket(channels, changes, stamps, self.slow_consumer_timeout, true)
            .await
    }

    /// [`Self::deliver_to`], waiting for a subscriber whose queue is full
    /// for up to `patience` each time; `live` changes may be held behind a
    /// replay.
    async fn deliver_to_socket(
        &self,
        channels: &[Arc<Channel>],
        changes: &[Change],
        stamps: &[Arc<str>],
        patience: Duration,
        live: bool,
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
        // Per table, the group of each claims id (`usize::MAX`: none yet);
        // looked up per (change, channel), so a vector, not a hash map.
        let mut group_of: HashMap<u32, Vec<usize>> = HashMap::new();
        let mut groups: Vec<crate::authorize::Group> = Vec::new();
        for (index, change) in changes.iter().enumerate() {
            let mut receivers = Vec::new();
            if is_message(change) {
                wanted.push(receivers);
                continue;
            }
            let oid = change.rel.rel.oid;
            let slots = group_of
                .entry(oid)
                .or_insert_with(|| vec![usize::MAX; rights_list.len()]);
            for (position, (channel, principal, rights)) in channels.iter().enumerate() {
                if !binding_ids(channel, change).any(|_| true) {
                    continue;
                }
                let slot = &mut slots[*rights as usize];
                if *slot == usize::MAX {
                    groups.push(crate::authorize::Group {
                        rights: rights_list[*rights as usize].clone(),
                        principal: principal.clone(),
                        indexes: Vec::new(),
                    });
                    *slot = groups.len() - 1;
                }
                let indexes = &mut groups[*slot].indexes;
                if indexes.last() != Some(&index) {
                    indexes.push(index);
                }
                receivers.push(u32::try_from(position).unwrap_or(u32::MAX));
            }
            wanted.push(receivers);
        }
        // One pipeline per (table, claims) group for the whole batch.
        // Per claims id, the changes it may see in increasing order (with
        // the columns hidden from it), walked with a cursor as the changes
        // are delivered in order: no lookup per (change, channel).
        let mut allowed: Vec<Vec<Visible>> = vec![Vec::new(); rights_list.len()];
        let admin = self.admin.get().unwrap_or(&self.pool);
        let login = self.login().await;
        for (rights, result) in crate::authorize::authorize(admin, &login, changes, groups).await {
            let id = rights_ids.get(&rights).copied().unwrap_or(u32::MAX);
            match result {
                Ok(seen) => {
                    if let Some(list) = allowed.get_mut(id as usize) {
                        list.extend(seen.indexes.into_iter().map(|i| (i, seen.hidden.clone())));
                    }
                }
                Err(err) => report(&err, id, &channels, changes, &wanted),
            }
        }
        for list in &mut allowed {
            list.sort_unstable_by_key(|(index, _)| *index);
        }
        let mut cursor: Vec<usize> = vec![0; allowed.len()];
        let mut delivered = 0u64;
        for (index, change) in changes.iter().enumerate() {
            // The data is serialised once, when someone may see it; each
            // channel gets its own ids.
            // (hidden columns, data): usually one entry.
            let mut data: Vec<(Option<Arc<[bool]>>, String)> = Vec::new();
            for position in &wanted[index] {
                let (channel, _, rights) = &channels[*position as usize];
                let (list, at) = (&allowed[*rights as usize], &mut cursor[*rights as usize]);
                while list.get(*at).is_some_and(|(i, _)| *i < index) {
                    *at += 1;
                }
                let Some((_, hidden)) = list.get(*at).filter(|(i, _)| *i == index) else {
                    continue;
                };
                // Columns the role may not read, and those the bindings'
                // `select` leaves out.
                let hidden = with_selection(hidden, selection(channel, change));
                let at = match data.iter().position(|(h, _)| *h == hidden) {
                    Some(at) => at,
                    None => {
                        let text =
                            change_data(change, &stamps[index], hidden.as_deref()).to_string();
                        data.push((hidden.clone(), text));
                        data.len() - 1
                    }
                };
                let data = &data[at].1;
                let topic = serde_json::to_string(&channel.topic).unwrap_or_default();
                // Legacy joins get the change type as the event and the
                // data as the payload; others `{ids, data}`.
                let (event, payload) = if channel.legacy {
                    (format!(r#""{}""#, change.kind), data.clone())
                } else {
                    let ids: Vec<i64> = binding_ids(channel, change).collect();
                    let ids = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".to_owned());
                    (
                        r#""postgres_changes""#.to_owned(),
                        format!(r#"{{"ids":{ids},"data":{data}}}"#),
                    )
                };
                let text = match channel.socket.vsn {
                    Vsn::V1 => format!(
                        r#"{{"topic":{topic},"event":{event},"payload":{payload},"ref":null,"join_ref":null}}"#
                    ),
                    Vsn::V2 => format!(r#"[null,null,{topic},{event},{payload}]"#),
                };
                let out = Out::Text(text.into());
                let sent = if live {
                    if !channel.socket.fits(out.queued_bytes()) {
                        channel
                            .socket
                            .wait_for_room(out.queued_bytes(), patience)
                            .await;
                    }
                    channel.send_change(out)
                } else {
                    channel
                        .socket
                        .wait_for_room(out.queued_bytes(), patience)
                        .await;
                    channel.socket.send(out)
                };
                if sent {
                    delivered += 1;
                }
            }
        }
        delivered
    }
}

/// A change a claims id may see (by index), and the columns hidden from
/// it.
type Visible = (usize, Option<Arc<[bool]>>);

/// Reports a group's authorisation error: counted, logged at warn with the
/// table and PostgreSQL's message, and sent as a `system` error to that
/// group's channels that wanted changes of the table. Other groups are not
/// affected.
fn report(
    err: &crate::authorize::AuthError,
    rights: u32,
    channels: &[(Arc<Channel>, Principal, u32)],
    changes: &[Change],
    wanted: &[Vec<u32>],
) {
    metrics::counter!("sovra_realtime_authorization_errors_total", "table" => err.table.clone())
        .increment(1);
    tracing::warn!(table = %err.table, error = %err.message, "database changes could not be authorised for a group of subscribers; not delivered to them");
    let mut told: HashSet<u32> = HashSet::new();
    for (index, change) in changes.iter().enumerate() {
        if format!("{}.{}", change.rel.rel.schema, change.rel.rel.name) != err.table {
            continue;
        }
        for position in &wanted[index] {
            let (channel, _, id) = &channels[*position as usize];
            if *id == rights && told.insert(*position) {
                channel.socket.send_message(&channel.changes_status(
                    "error",
                    &format!(
                        "Changes on {} could not be authorised: {}",
                        err.table, err.message
                    ),
                ));
            }
        }
    }
}

/// A broadcast sent from SQL (`realtime.send`).
fn deliver_message(hub: &Hub, change: &Change) {
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
    let topic = format!("realtime:{topic}");
    // `realtime.send_binary()`: raw bytes, sent as a binary frame (vsn 2
    // only, as on Supabase).
    if let Some(bytes) = get("binary_payload").and_then(decode_bytea) {
        let mut body = json!({"type": "broadcast", "event": event});
        if let Some(id) = get("id") {
            body["meta"] = json!({"id": id});
        }
        hub.broadcast(&topic, private, body, Some(&bytes), None);
        return;
    }
    let mut payload: Value = get("payload")
        .and_then(|p| serde_json::from_str(p).ok())
        .unwrap_or_else(|| json!({}));
    if let (Value::Object(map), Some(id)) = (&mut payload, get("id"))
        && !map.contains_key("id")
    {
        map.insert("id".to_owned(), Value::String(id.to_owned()));
    }
    let mut body = json!({"type": "broadcast", "event": event, "payload": payload});
    if let Some(id) = get("id") {
        body["meta"] = json!({"id": id});
    }
    hub.broadcast(&topic, private, body, None, None);
}

/// A `bytea` in PostgreSQL's hex text form (`\x0a1b…`).
pub(crate) fn decode_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Which columns of `change` the bindings of `channel` that want it
/// leave out by their `select` (`true`: left out); `None` when one of
/// them selects every column.
fn selection(channel: &Channel, change: &Change) -> Option<Vec<bool>> {
    // Most channels select nothing: no need to ask which bindings match.
    if channel.pg.iter().all(|b| b.select.is_none()) {
        return None;
    }
    let rel = &change.rel;
    let ids: Vec<i64> = binding_ids(channel, change).collect();
    let mut chosen: Vec<&str> = Vec::new();
    for binding in channel.pg.iter().filter(|b| ids.contains(&b.id)) {
        chosen.extend(binding.select.as_ref()?.iter().map(String::as_str));
    }
    Some(
        rel.rel
            .columns
            .iter()
            .map(|c| !chosen.contains(&c.name.as_str()))
            .collect(),
    )
}

/// The columns a receiver does not get: those its role may not read
/// (`hidden`) and those its `select` leaves out.
fn with_selection(
    hidden: &Option<Arc<[bool]>>,
    selected: Option<Vec<bool>>,
) -> Option<Arc<[bool]>> {
    let Some(mut out) = selected else {
        return hidden.clone();
    };
    if let Some(hidden) = hidden {
        for (i, slot) in out.iter_mut().enumerate() {
            *slot |= hidden.get(i).copied().unwrap_or(true);
        }
    }
    Some(Arc::from(out))
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
