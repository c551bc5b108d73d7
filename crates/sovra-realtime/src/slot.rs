//! Stage 1 of the change path: read committed changes from the logical
//! replication slot and hand them on in whole transactions.
//!
//! The `supabase_realtime` publication's tables (and inserts into
//! `realtime.messages`, broadcasts sent from SQL) are read with the
//! built-in `pgoutput` plugin and decoded by `sovra-realtime-proto` (pure).
//! One reader per database consumes the slot at a time: the holder of a
//! session advisory lock; others wait and take over when it goes away.
//!
//! The slot is streamed over a [`replication`] connection: PostgreSQL's
//! walsender decodes each transaction once, as it commits, and sends it.
//! Whatever has arrived is handed to a [`Sink`] in batches of at most
//! `realtime.feed_batch_bytes` (and [`BATCH`] changes); a batch may end
//! inside a transaction, so memory does not grow with a transaction's
//! size, and while a batch is delivered the next one gathers (batches grow
//! when the feed falls behind). Only after the sink has taken every change
//! of a transaction is its end confirmed to PostgreSQL (a standby status
//! update), so a restart resumes where it stopped (at least once).
//!
//! Where PostgreSQL refuses replication connections to this role (no
//! `REPLICATION` attribute or walsender left, a pooler in between), the
//! reader falls back to polling with `pg_logical_slot_peek_binary_changes`
//! (which decodes again from the slot's restart point on every poll) and
//! advancing the slot with `pg_replication_slot_advance`, with a warning;
//! it tries streaming again every [`STREAM_RETRY`]. Nothing here knows
//! about subscribers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sovra_pg::tokio_postgres;
use sovra_realtime_proto::pgoutput::{self, Decoded};

use crate::catalog;
use crate::change::{Change, RelInfo};
use crate::replication::{Confirmed, Item, Pump, ReplicationConnection, ReplicationError};

/// Serialises slot consumers of one database (`pg_try_advisory_lock`).
const LEADER_LOCK: i64 = 0x736f_7672_615f_7274; // "sovra_rt"
/// Changes read per poll (whole transactions; PostgreSQL stops at a
/// transaction boundary once past this), and most changes per batch.
const BATCH: i32 = 20_000;
/// How long a reader that fell back to polling polls before it tries to
/// stream again.
pub(crate) const STREAM_RETRY: Duration = Duration::from_secs(60);
/// How often the slot's lag is checked.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// What the slot reader needs to know.
#[derive(Clone, Debug)]
pub(crate) struct SlotConfig {
    /// Prefix of the slot's name (the database's name is appended).
    pub(crate) slot_prefix: String,
    pub(crate) poll_interval: Duration,
    pub(crate) max_lag_bytes: u64,
    /// Most bytes of changes (as [`Change::size`] counts them) per batch.
    pub(crate) batch_bytes: usize,
}

/// Committed changes in commit order; `stamps[i]` is the commit timestamp
/// of `changes[i]`.
pub(crate) struct Batch {
    pub(crate) changes: Vec<Change>,
    pub(crate) stamps: Vec<Arc<str>>,
    /// The changes' size, as [`Change::size`] counts it.
    pub(crate) bytes: usize,
}

pub(crate) type SinkFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// How the reader gets the slot's changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedMode {
    /// A replication connection streams them as they commit.
    Streaming,
    /// `pg_logical_slot_peek_binary_changes` every poll interval
    /// (PostgreSQL refused a replication connection).
    Polling,
}

/// Where the slot reader hands its batches.
pub(crate) trait Sink: Send + Sync {
    /// This reader now consumes `slot`, in `mode`.
    fn leading(&self, slot: &str, mode: FeedMode);
    /// Delivers a batch; the slot advances past it once this returns.
    fn deliver(&self, batch: Batch) -> SinkFuture<'_>;
    /// The slot fell too far behind and was moved to the present: changes
    /// were skipped.
    fn skipped(&self);
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

/// Why a reader stopped.
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error(transparent)]
    Pg(#[from] tokio_postgres::Error),
    #[error(transparent)]
    Replication(#[from] ReplicationError),
}

/// Reads the slot for as long as the task lives, retrying after errors;
/// `admin` connects as a role that may use replication slots.
pub(crate) async fn run(admin: tokio_postgres::Config, config: SlotConfig, sink: Arc<dyn Sink>) {
    loop {
        if let Err(err) = lead(&admin, &config, sink.as_ref()).await {
            tracing::warn!(error = %err, "realtime change feed stopped; retrying");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Becomes the slot consumer (or waits to), then streams (or polls) until
/// an error.
async fn lead(
    admin: &tokio_postgres::Config,
    config: &SlotConfig,
    sink: &dyn Sink,
) -> Result<(), FeedError> {
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
    let slot = slot_for(&config.slot_prefix, &database);
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
    loop {
        match start_stream(admin, &slot).await {
            Ok(conn) => {
                sink.leading(&slot, FeedMode::Streaming);
                metrics::gauge!("sovra_realtime_feed_streaming").set(1.0);
                if stream(conn, &client, &slot, config, sink).await? == Ended::TooFarBehind {
                    skip(&client, &slot, sink).await?;
                }
            }
            Err(err) if err.refused() => {
                tracing::warn!(
                    error = %err,
                    %slot,
                    "PostgreSQL refused a replication connection: the realtime change feed polls the slot instead (slower). Give the database role the REPLICATION attribute, leave a walsender free (max_wal_senders) and connect without a pooler to stream it"
                );
                sink.leading(&slot, FeedMode::Polling);
                metrics::gauge!("sovra_realtime_feed_streaming").set(0.0);
                poll(&client, admin, &slot, config, sink, STREAM_RETRY).await?;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Opens a replication connection and starts streaming the slot from where
/// its consumer last confirmed; waits (a few seconds at most) for the
/// walsender of a consumer that just went away to let go of the slot.
async fn start_stream(
    admin: &tokio_postgres::Config,
    slot: &str,
) -> Result<ReplicationConnection, ReplicationError> {
    let mut attempts = 0;
    loop {
        let mut conn = ReplicationConnection::connect(admin).await?;
        match conn.start(slot, 0, &catalog::PUBLICATIONS).await {
            Ok(()) => return Ok(conn),
            Err(err) if err.slot_in_use() && attempts < 50 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// How a streaming term ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    TooFarBehind,
}

/// Turns `pgoutput` messages into changes and hands them to the sink in
/// bounded batches; remembers the relations announced and the end of the
/// last transaction it read whole.
struct Assembler<'a> {
    config: &'a SlotConfig,
    sink: &'a dyn Sink,
    relations: HashMap<u32, Option<Arc<RelInfo>>>,
    pending: Pending,
    /// The commit timestamp of the transaction being read (Begin has it):
    /// `Some` inside a transaction.
    stamp: Option<Arc<str>>,
    messages: usize,
    transactions: usize,
    /// The end of the last transaction read whole.
    end_lsn: Option<u64>,
}

impl<'a> Assembler<'a> {
    fn new(config: &'a SlotConfig, sink: &'a dyn Sink) -> Assembler<'a> {
        Assembler {
            config,
            sink,
            relations: HashMap::new(),
            pending: Pending::default(),
            stamp: None,
            messages: 0,
            transactions: 0,
            end_lsn: None,
        }
    }

    fn in_transaction(&self) -> bool {
        self.stamp.is_some()
    }

    /// Takes one `pgoutput` message; hands a full batch to the sink.
    /// Changes of a table that no longer exists here are skipped, with a
    /// warning and a count.
    async fn take(
        &mut self,
        data: &[u8],
        catalog_client: &tokio_postgres::Client,
    ) -> Result<(), tokio_postgres::Error> {
        self.messages += 1;
        let message = match pgoutput::decode(data) {
            Ok(message) => message,
            Err(err) => {
                tracing::error!(error = %err, "undecodable change; skipped");
                return Ok(());
            }
        };
        let (relation, kind, new, old) = match message {
            Decoded::Begin { commit_time, .. } => {
                self.stamp = Some(Arc::from(pgoutput::commit_timestamp(commit_time)));
                return Ok(());
            }
            Decoded::Commit { end_lsn, .. } => {
                if self.stamp.take().is_some() {
                    self.transactions += 1;
                    self.end_lsn = Some(end_lsn);
                }
                return Ok(());
            }
            // Relations are announced before their first change (on every
            // poll, or once per stream and again when one changes); the
            // catalog is read only when one is new or its shape changed.
            Decoded::Relation(rel) => {
                let stale = match self.relations.get(&rel.oid) {
                    Some(Some(info)) => info.rel != rel,
                    _ => true,
                };
                if stale {
                    let oid = rel.oid;
                    let (schema, name) = (rel.schema.clone(), rel.name.clone());
                    let info = catalog::describe(catalog_client, rel).await?;
                    if info.is_none() {
                        tracing::warn!(%schema, table = %name, "a published table was dropped before its changes were read; they are skipped");
                    }
                    self.relations.insert(oid, info.map(Arc::new));
                }
                return Ok(());
            }
            Decoded::Insert { relation, new } => (relation, "INSERT", Some(new), None),
            Decoded::Update { relation, old, new } => (relation, "UPDATE", Some(new), old),
            Decoded::Delete { relation, old } => (relation, "DELETE", None, Some(old)),
            Decoded::Truncate { .. } | Decoded::Other(_) => return Ok(()),
        };
        let Some(stamp) = &self.stamp else {
            return Ok(());
        };
        let Some(Some(rel)) = self.relations.get(&relation) else {
            metrics::counter!("sovra_realtime_changes_skipped_total", "reason" => "table_dropped")
                .increment(1);
            return Ok(());
        };
        let change = Change {
            rel: rel.clone(),
            kind,
            new,
            old,
        };
        self.pending.bytes += change.size();
        self.pending.changes.push(change);
        self.pending.stamps.push(stamp.clone());
        if self.pending.full(self.config) {
            self.pending.flush(self.sink).await;
        }
        Ok(())
    }

    /// Hands what is gathered to the sink.
    async fn flush(&mut self) {
        self.pending.flush(self.sink).await;
    }
}

/// Streams the slot until an error, or until it is too far behind.
async fn stream(
    conn: ReplicationConnection,
    client: &tokio_postgres::Client,
    slot: &str,
    config: &SlotConfig,
    sink: &dyn Sink,
) -> Result<Ended, FeedError> {
    let confirmed = Arc::new(Confirmed::default());
    // While a batch is delivered, about `feed_batch_bytes` of the stream
    // gathers for the next one.
    let mut pump = Pump::start(conn, confirmed.clone(), config.batch_bytes);
    let mut assembler = Assembler::new(config, sink);
    // The end of the stream as of the last keepalive received between
    // transactions: everything before it has been read.
    let mut idle_end = 0u64;
    let mut last_lag_check = Instant::now();
    loop {
        let chunk = tokio::select! {
            chunk = pump.items.recv() => chunk,
            _ = tokio::time::sleep(LAG_EVERY) => {
                if lag_exceeded(client, slot, config).await? {
                    return Ok(Ended::TooFarBehind);
                }
                last_lag_check = Instant::now();
                continue;
            }
        };
        let Some(mut chunk) = chunk else {
            return Err(pump.error().await.into());
        };
        // Everything that has arrived, in batches the sink takes as they
        // fill.
        loop {
            for item in chunk.drain(..) {
                match item {
                    Item::Data(data) => assembler.take(&data, client).await?,
                    Item::Keepalive { wal_end } => {
                        if !assembler.in_transaction() {
                            idle_end = idle_end.max(wal_end);
                        }
                    }
                }
            }
            match pump.items.try_recv() {
                Ok(next) => chunk = next,
                Err(_) => break,
            }
        }
        // Between transactions, what was read is delivered and confirmed;
        // inside one, the rest is on its way.
        if !assembler.in_transaction() {
            assembler.flush().await;
            let end = assembler.end_lsn.unwrap_or(0).max(idle_end);
            if end > 0 {
                confirmed.advance(end);
            }
        }
        if last_lag_check.elapsed() > LAG_EVERY {
            last_lag_check = Instant::now();
            if lag_exceeded(client, slot, config).await? {
                return Ok(Ended::TooFarBehind);
            }
        }
    }
}

/// Polls the slot for `term` (the fallback when PostgreSQL refuses a
/// replication connection), then returns to try streaming again.
async fn poll(
    client: &tokio_postgres::Client,
    admin: &tokio_postgres::Config,
    slot: &str,
    config: &SlotConfig,
    sink: &dyn Sink,
    term: Duration,
) -> Result<(), FeedError> {
    // Relations are described on a second connection: the first is busy
    // streaming the slot's changes while they are decoded.
    let catalog_client = sovra_pg::connect_one(admin).await?;
    let mut assembler = Assembler::new(config, sink);
    let mut last_lag_check = Instant::now() - Duration::from_secs(60);
    let publications = catalog::PUBLICATIONS.join(",");
    let started = Instant::now();
    while started.elapsed() < term {
        let rows = client
            .query_raw(
                "select data from pg_logical_slot_peek_binary_changes($1, null, $2,
                   'proto_version', '1', 'publication_names', $3)",
                [
                    &slot as &(dyn tokio_postgres::types::ToSql + Sync),
                    &BATCH,
                    &publications,
                ],
            )
            .await?;
        // A trailing transaction without its commit (PostgreSQL sends whole
        // ones) is not counted as taken: the slot stays before it and it is
        // read again.
        assembler.stamp = None;
        assembler.messages = 0;
        assembler.transactions = 0;
        assembler.end_lsn = None;
        {
            use futures_util::TryStreamExt as _;
            let mut rows = std::pin::pin!(rows);
            while let Some(row) = rows.try_next().await? {
                let data: &[u8] = row.get(0);
                assembler.take(data, &catalog_client).await?;
            }
        }
        assembler.flush().await;
        if assembler.messages > 0 {
            tracing::debug!(
                messages = assembler.messages,
                transactions = assembler.transactions,
                "change feed poll"
            );
        }
        if let Some(end) = assembler.end_lsn {
            client
                .execute(
                    "select pg_replication_slot_advance($1, $2::text::pg_lsn)",
                    &[&slot, &lsn_text(end)],
                )
                .await?;
        }
        if last_lag_check.elapsed() > LAG_EVERY {
            last_lag_check = Instant::now();
            if lag_exceeded(client, slot, config).await? {
                skip(client, slot, sink).await?;
            }
        }
        if assembler.messages < BATCH as usize {
            tokio::time::sleep(config.poll_interval).await;
        }
    }
    Ok(())
}

/// Changes gathered for the sink, up to the batch limits.
#[derive(Default)]
struct Pending {
    changes: Vec<Change>,
    stamps: Vec<Arc<str>>,
    bytes: usize,
}

impl Pending {
    fn full(&self, config: &SlotConfig) -> bool {
        self.changes.len() >= BATCH as usize || self.bytes >= config.batch_bytes
    }

    async fn flush(&mut self, sink: &dyn Sink) {
        if self.changes.is_empty() {
            return;
        }
        let batch = std::mem::take(self);
        sink.deliver(Batch {
            changes: batch.changes,
            stamps: batch.stamps,
            bytes: batch.bytes,
        })
        .await;
    }
}

/// Reports the slot's lag; whether it is past `realtime.max_slot_lag`.
async fn lag_exceeded(
    client: &tokio_postgres::Client,
    slot: &str,
    config: &SlotConfig,
) -> Result<bool, tokio_postgres::Error> {
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
    let exceeded = u64::try_from(lag).unwrap_or(0) > config.max_lag_bytes;
    if exceeded {
        tracing::error!(lag_bytes = lag, %slot, "realtime slot too far behind; skipping to the present");
    }
    Ok(exceeded)
}

/// Moves a slot too far behind to the present and tells the sink. A slot
/// that was streamed is released first: its walsender ends a moment after
/// the stream's connection closes.
async fn skip(
    client: &tokio_postgres::Client,
    slot: &str,
    sink: &dyn Sink,
) -> Result<(), tokio_postgres::Error> {
    for _ in 0..100 {
        let active: bool = client
            .query_opt(
                "select active from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await?
            .is_some_and(|row| row.get(0));
        if !active {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client
        .execute(
            "select pg_replication_slot_advance($1, pg_current_wal_lsn())",
            &[&slot],
        )
        .await?;
    metrics::counter!("sovra_realtime_slot_skips_total").increment(1);
    sink.skipped();
    Ok(())
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
