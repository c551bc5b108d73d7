//! Stage 1 of the change path: read committed changes from the logical
//! replication slot and hand them on in whole transactions.
//!
//! The `supabase_realtime` publication's tables (and inserts into
//! `realtime.messages`, broadcasts sent from SQL) are read with the
//! built-in `pgoutput` plugin and decoded by `sovra-realtime-proto` (pure).
//! One reader per database consumes the slot at a time: the holder of a
//! session advisory lock; others wait and take over when it goes away.
//! Each poll peeks at the slot and streams what it returns (whole
//! transactions, about [`BATCH`] changes or a little more; PostgreSQL
//! spills a large transaction to disk rather than holding it in memory),
//! handing it to a [`Sink`] in batches of at most
//! `realtime.feed_batch_bytes` (and [`BATCH`] changes) — a batch may end
//! inside a transaction, so memory does not grow with a transaction's
//! size. Only after the sink has taken every change of a transaction does
//! the slot advance past it, so a restart resumes where it stopped (at
//! least once). Nothing here knows about subscribers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sovra_pg::tokio_postgres;
use sovra_realtime_proto::pgoutput::{self, Decoded};

use crate::catalog;
use crate::change::{Change, RelInfo};

/// Serialises slot consumers of one database (`pg_try_advisory_lock`).
const LEADER_LOCK: i64 = 0x736f_7672_615f_7274; // "sovra_rt"
/// Changes read per poll (whole transactions; PostgreSQL stops at a
/// transaction boundary once past this), and most changes per batch.
const BATCH: i32 = 20_000;

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

/// Where the slot reader hands its batches.
pub(crate) trait Sink: Send + Sync {
    /// This reader now consumes `slot`.
    fn leading(&self, slot: &str);
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

/// Becomes the slot consumer (or waits to), then polls until an error.
async fn lead(
    admin: &tokio_postgres::Config,
    config: &SlotConfig,
    sink: &dyn Sink,
) -> Result<(), tokio_postgres::Error> {
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
    sink.leading(&slot);
    // Relations are described on a second connection: the first is busy
    // streaming the slot's changes while they are decoded.
    let catalog_client = sovra_pg::connect_one(admin).await?;
    let mut relations: HashMap<u32, Option<Arc<RelInfo>>> = HashMap::new();
    let mut last_lag_check = Instant::now() - Duration::from_secs(60);
    let publications = catalog::PUBLICATIONS.join(",");
    loop {
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
        let read = stream(rows, &catalog_client, &mut relations, config, sink).await?;
        if read.messages > 0 {
            tracing::debug!(
                messages = read.messages,
                transactions = read.transactions,
                "change feed poll"
            );
        }
        if let Some(end) = read.end_lsn {
            client
                .execute(
                    "select pg_replication_slot_advance($1, $2::text::pg_lsn)",
                    &[&slot, &lsn_text(end)],
                )
                .await?;
        }
        if last_lag_check.elapsed() > Duration::from_secs(5) {
            last_lag_check = Instant::now();
            check_lag(&client, &slot, config, sink).await?;
        }
        if read.messages < BATCH as usize {
            tokio::time::sleep(config.poll_interval).await;
        }
    }
}

/// What one poll read.
struct Read {
    messages: usize,
    transactions: usize,
    /// The end of the last transaction the sink took whole.
    end_lsn: Option<u64>,
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

/// Decodes the rows of one peek as they arrive and hands their changes to
/// the sink in bounded batches. Changes of a table that no longer exists
/// here are skipped, with a warning and a count. A trailing transaction
/// without its commit (PostgreSQL sends whole ones) is not counted as
/// taken: the slot stays before it and it is read again.
async fn stream(
    rows: tokio_postgres::RowStream,
    catalog_client: &tokio_postgres::Client,
    relations: &mut HashMap<u32, Option<Arc<RelInfo>>>,
    config: &SlotConfig,
    sink: &dyn Sink,
) -> Result<Read, tokio_postgres::Error> {
    use futures_util::TryStreamExt as _;
    let mut rows = std::pin::pin!(rows);
    let mut read = Read {
        messages: 0,
        transactions: 0,
        end_lsn: None,
    };
    let mut pending = Pending::default();
    // The commit timestamp of the transaction being read (Begin has it).
    let mut stamp: Option<Arc<str>> = None;
    while let Some(row) = rows.try_next().await? {
        read.messages += 1;
        let data: &[u8] = row.get(0);
        let message = match pgoutput::decode(data) {
            Ok(message) => message,
            Err(err) => {
                tracing::error!(error = %err, "undecodable change; skipped");
                continue;
            }
        };
        let (relation, kind, new, old) = match message {
            Decoded::Begin { commit_time, .. } => {
                stamp = Some(Arc::from(pgoutput::commit_timestamp(commit_time)));
                continue;
            }
            Decoded::Commit { end_lsn, .. } => {
                if stamp.take().is_some() {
                    read.transactions += 1;
                    read.end_lsn = Some(end_lsn);
                }
                continue;
            }
            // Every poll announces its relations again; the catalog is read
            // only when one is new or its shape changed.
            Decoded::Relation(rel) => {
                let stale = match relations.get(&rel.oid) {
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
                    relations.insert(oid, info.map(Arc::new));
                }
                continue;
            }
            Decoded::Insert { relation, new } => (relation, "INSERT", Some(new), None),
            Decoded::Update { relation, old, new } => (relation, "UPDATE", Some(new), old),
            Decoded::Delete { relation, old } => (relation, "DELETE", None, Some(old)),
            Decoded::Truncate { .. } | Decoded::Other(_) => continue,
        };
        let Some(stamp) = &stamp else {
            continue;
        };
        let Some(Some(rel)) = relations.get(&relation) else {
            metrics::counter!("sovra_realtime_changes_skipped_total", "reason" => "table_dropped")
                .increment(1);
            continue;
        };
        let change = Change {
            rel: rel.clone(),
            kind,
            new,
            old,
        };
        pending.bytes += change.size();
        pending.changes.push(change);
        pending.stamps.push(stamp.clone());
        if pending.full(config) {
            pending.flush(sink).await;
        }
    }
    pending.flush(sink).await;
    Ok(read)
}

/// Reports the slot's lag and applies the policy for a slot too far
/// behind: skip to the present and tell the sink.
async fn check_lag(
    client: &tokio_postgres::Client,
    slot: &str,
    config: &SlotConfig,
    sink: &dyn Sink,
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
    if u64::try_from(lag).unwrap_or(0) > config.max_lag_bytes {
        tracing::error!(lag_bytes = lag, %slot, "realtime slot too far behind; skipping to the present");
        client
            .execute(
                "select pg_replication_slot_advance($1, pg_current_wal_lsn())",
                &[&slot],
            )
            .await?;
        metrics::counter!("sovra_realtime_slot_skips_total").increment(1);
        sink.skipped();
    }
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
