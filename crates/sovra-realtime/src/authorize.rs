//! Stage 2 of the change path: which changes each group of subscribers
//! (same role, same claims) may see. PostgreSQL decides, on the real
//! table, with its own privileges, policies and role usage; Sovra never
//! evaluates a policy itself.
//!
//! Per poll batch and table, on up to [`WORKERS`] connections of the
//! feed's administrative pool, each in one pipelined transaction that is
//! always rolled back (`REPEATABLE READ`, so every statement sees one
//! snapshot):
//!
//! 1. **Put the committed rows back.** The row versions the batch carries
//!    (the new row of an insert or update; the old row of a delete when the
//!    table has `REPLICA IDENTITY FULL`) are written into the real table by
//!    key with `session_replication_role = replica` (no trigger, no foreign
//!    key check fires): a row changed since is set back to its committed
//!    values, a row deleted since is inserted again. A row that still has
//!    its committed values is left alone (no write, no lock). When one batch
//!    holds several versions of one row, they are judged in rounds, one
//!    version per key per round.
//! 2. **Ask as each group.** After a savepoint, the request prologue of
//!    `/rest/v1` sets the group's role and claims (`SET LOCAL ROLE`,
//!    `request.jwt.claims`, ...), and one statement selects the keys of the
//!    round's rows from the real table: the rows it returns are the ones the
//!    group may see. Then everything the group's statements did is rolled
//!    back to the savepoint (which stays for the next group).
//!
//! Once per task and distinct role, before any of that and as the feed's
//! own role, PostgreSQL says whether the login role may become the role
//! (`pg_has_role`) and which columns the role may read
//! (`has_column_privilege`). Statements are prepared once per connection.
//!
//! A delete on a table with the default replica identity carries only its
//! key: no row can be put back, so it goes (key only) to every group whose
//! role may select the key columns, as on Supabase. Without a primary key
//! a row cannot be found again: on a table with RLS active for the group,
//! its changes are not delivered.
//!
//! Everything here is SQL built from this database's catalog (quoted
//! names, `format_type`) and bound values.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Map;
use sovra_pg::tokio_postgres::{self, types::ToSql, types::Type};
use sovra_pg::{Pool, RequestContext};
use sovra_realtime_proto::pgoutput::Datum;

use crate::change::{Change, RelInfo};
use crate::principal::Principal;

/// Connections that authorise at once.
const WORKERS: usize = 4;

/// How long the feed waits for one lock (see `evaluate`): a quarter of
/// the server's `deadlock_timeout`, at most 50 ms, at least 1 ms.
const WINDOW_SQL: &str = "select set_config('lock_timeout', w, true)
     from (select greatest(1, least(50, (extract(epoch from current_setting('deadlock_timeout')::interval) * 250)::int))::text as w) s";

/// Put-back refusals that a new attempt resolves: a row changed after the
/// snapshot (40001), a deadlock (40P01), a lock not had in time (55P03).
const RETRY_CODES: [&str; 3] = ["40001", "40P01", "55P03"];

/// In the error of the lock statement when a writer holds a row to put
/// back (see `Table::lock_sql`).
const LOCKED_MARKER: &str = "sovra_realtime_row_locked";

/// Subscribers with the same claims, and the changes (all of one table)
/// they would receive if PostgreSQL lets them see the rows.
pub(crate) struct Group {
    pub(crate) rights: Arc<str>,
    pub(crate) principal: Principal,
    pub(crate) indexes: Vec<usize>,
}

/// What a group may see.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// The changes (by index) it may see.
    pub(crate) indexes: Vec<usize>,
    /// Columns of the table it may not read (by position), when there are
    /// any: they are left out of `record` and `old_record`.
    pub(crate) hidden: Option<Arc<[bool]>>,
}

/// Why a group's changes could not be authorised.
#[derive(Debug, Clone)]
pub(crate) struct AuthError {
    /// The table, as `schema.name`.
    pub(crate) table: String,
    /// PostgreSQL's message (e.g. the error a policy raised).
    pub(crate) message: String,
}

pub(crate) type Authorized = Result<Seen, AuthError>;

/// A row version to judge: each column's text (`None`: SQL NULL), or
/// unknown (an unchanged TOASTed value whose old row was not sent).
type Version = Vec<Option<Option<String>>>;

/// Authorises every group; the result is keyed like the input, in any
/// order.
///
/// `pool` connects as a role that may write the published tables with
/// `session_replication_role = replica` and switch to any role (the feed's
/// administrative role). `login` is the role `/rest/v1` connects as
/// (`authenticator`): a group whose role it may not become sees nothing,
/// as its requests to `/rest/v1` would fail.
pub(crate) async fn authorize(
    pool: &Pool,
    login: &str,
    changes: &[Change],
    groups: Vec<Group>,
) -> Vec<(Arc<str>, Authorized)> {
    let groups: Vec<Group> = groups
        .into_iter()
        .filter(|g| !g.indexes.is_empty())
        .collect();
    // Per table, its groups split into at most WORKERS tasks.
    let mut by_table: HashMap<u32, Vec<Group>> = HashMap::new();
    for group in groups {
        let oid = changes[group.indexes[0]].rel.rel.oid;
        by_table.entry(oid).or_default().push(group);
    }
    // At most WORKERS connections at once; a table's tasks start together
    // (so that the first one's exported snapshot is still there when the
    // others import it).
    let permits = tokio::sync::Semaphore::new(WORKERS);
    let tables = by_table.into_values().map(|groups| {
        let permits = &permits;
        async move {
            let n = groups.len().clamp(1, WORKERS);
            let mut split: Vec<Vec<Group>> = (0..n).map(|_| Vec::new()).collect();
            for (i, group) in groups.into_iter().enumerate() {
                split[i % n].push(group);
            }
            let _permits = permits.acquire_many(n as u32).await;
            let versions = put_back_versions(changes, &split);
            let mut tasks = split.into_iter();
            let mut flows = Vec::with_capacity(n);
            if versions.is_empty() {
                for task in tasks {
                    flows.push(evaluate(pool, login, changes, task, Role::Alone));
                }
            } else {
                let (senders, receivers): (Vec<_>, Vec<_>) =
                    (1..n).map(|_| tokio::sync::oneshot::channel()).unzip();
                let (done_senders, done_receivers): (Vec<_>, Vec<_>) =
                    (1..n).map(|_| tokio::sync::oneshot::channel()).unzip();
                if let Some(task) = tasks.next() {
                    let role = Role::Exporter(versions, senders, done_receivers);
                    flows.push(evaluate(pool, login, changes, task, role));
                }
                for ((task, receiver), done) in tasks.zip(receivers).zip(done_senders) {
                    let role = Role::Importer(receiver, done);
                    flows.push(evaluate(pool, login, changes, task, role));
                }
            }
            futures_util::future::join_all(flows).await
        }
    });
    futures_util::future::join_all(tables)
        .await
        .into_iter()
        .flatten()
        .flatten()
        .collect()
}

/// How long the exporter keeps its snapshot for importers that have not
/// run their first attempt yet.
const IMPORT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A task's part in sharing one look at the table (see [`check`]).
enum Role {
    /// Nothing is put back: the task starts on its own.
    Alone,
    /// Checks these versions (by change index), exports its snapshot and
    /// hands both to the other tasks of the table; keeps its transaction
    /// (and so the snapshot) open until each of them has run its first
    /// attempt (or given up), so that none finds the snapshot gone.
    Exporter(
        Vec<(usize, Version)>,
        Vec<tokio::sync::oneshot::Sender<Arc<Checked>>>,
        Vec<tokio::sync::oneshot::Receiver<()>>,
    ),
    /// Starts on what the exporter hands over, or on its own if nothing
    /// comes; says when its first attempt is done (dropping the sender
    /// says so too).
    Importer(
        tokio::sync::oneshot::Receiver<Arc<Checked>>,
        tokio::sync::oneshot::Sender<()>,
    ),
}

/// How a task's transaction starts.
enum Start {
    /// `begin`, its own snapshot; every version is put back as needed.
    Fresh,
    /// Already begun by [`check`] on this connection.
    Exported(Arc<Checked>),
    /// `begin`, then the exporter's snapshot.
    Import(Arc<Checked>),
}

/// What [`check`] found.
struct Checked {
    /// The exported snapshot's identifier, as PostgreSQL wrote it.
    snapshot: String,
    /// By change index: its version is the row as it is in the snapshot
    /// (putting it back would write nothing).
    current: Vec<bool>,
}

/// The row versions (by change index) that the tasks of one table would
/// put back: on a table with RLS and a key, the versions whose key is
/// known. Empty when nothing would be put back.
fn put_back_versions(changes: &[Change], tasks: &[Vec<Group>]) -> Vec<(usize, Version)> {
    let mut needed: Vec<usize> = tasks
        .iter()
        .flatten()
        .flat_map(|g| g.indexes.iter().copied())
        .collect();
    let Some(first) = needed.first() else {
        return Vec::new();
    };
    let rel = &changes[*first].rel;
    let keys = rel.key_columns();
    if !rel.rls || keys.is_empty() || keys.iter().any(|k| rel.column_sql[*k].is_none()) {
        return Vec::new();
    }
    needed.sort_unstable();
    needed.dedup();
    needed
        .into_iter()
        .filter_map(|index| {
            let version = version_of(&changes[index])?;
            key_of(&version, &keys)?;
            Some((index, version))
        })
        .collect()
}

/// Begins the table's first task's transaction (`REPEATABLE READ`),
/// exports its snapshot, and finds which `versions` are the row as it is
/// in it: every task of the table then works on that snapshot and puts
/// back only the others, instead of each comparing every row again (for
/// a batch of inserts, usually nothing is put back at all). `None`, with
/// the transaction rolled back, when that fails.
async fn check(
    db: &tokio_postgres::Client,
    statement: Option<&tokio_postgres::Statement>,
    params: &[Param],
    versions: &[(usize, Version)],
    changes: usize,
) -> Option<Checked> {
    let statement = statement?;
    let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.typed().0).collect();
    // Sent in this order in one round trip (`join3` polls in order).
    let (begun, exported, differ) = futures_util::future::join3(
        db.query_typed("begin isolation level repeatable read", &[]),
        db.query_typed("select pg_export_snapshot()", &[]),
        db.query(statement, &values),
    )
    .await;
    let found = (|| {
        begun.ok()?;
        let snapshot: String = exported.ok()?.first()?.try_get(0).ok()?;
        // Spliced into `set transaction snapshot '…'`: PostgreSQL's own
        // identifier, hexadecimal digits and dashes.
        if snapshot.is_empty() || !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return None;
        }
        let mut current = vec![false; changes];
        for (index, _) in versions {
            current[*index] = true;
        }
        for row in differ.ok()? {
            let n: i64 = row.try_get(0).ok()?;
            let (index, _) = versions.get(usize::try_from(n).ok()?.checked_sub(1)?)?;
            current[*index] = false;
        }
        Some(Checked { snapshot, current })
    })();
    if found.is_none() {
        let _ = db.batch_execute("rollback").await;
    }
    found
}

/// One statement of a pipeline and its bound values.
struct Step {
    sql: Arc<str>,
    params: Vec<Param>,
    purpose: Purpose,
    /// Sent unprepared (an unnamed statement), so that PostgreSQL plans it
    /// with its values each time instead of a generic plan.
    planned: bool,
}

enum Param {
    Text(Option<String>),
    TextArray(Arc<Vec<Option<String>>>),
    Oid(u32),
}

impl Param {
    fn duplicate(&self) -> Param {
        match self {
            Param::Text(v) => Param::Text(v.clone()),
            Param::TextArray(v) => Param::TextArray(Arc::clone(v)),
            Param::Oid(v) => Param::Oid(*v),
        }
    }

    fn typed(&self) -> (&(dyn ToSql + Sync), Type) {
        match self {
            Param::Text(v) => (v as &(dyn ToSql + Sync), Type::TEXT),
            Param::TextArray(v) => (&**v as &(dyn ToSql + Sync), Type::TEXT_ARRAY),
            Param::Oid(v) => (v as &(dyn ToSql + Sync), Type::OID),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Purpose {
    /// Transaction control, settings.
    Setup,
    /// Takes the snapshot the table's first task exported (see `check`).
    Import,
    /// Per distinct role of the task (`.0` indexes `roles`): whether the
    /// login role may become it, and the columns it may read.
    Roles,
    /// The request prologue of group `.0` (fails for a role that does not
    /// exist).
    Prologue(usize),
    /// Locks the rows the rounds will write (without waiting): how many
    /// needed a lock, how many it got.
    Lock,
    /// Puts a round's rows back.
    Restore,
    /// The keys group `.0` may see of round `.1`.
    Select(usize, usize),
    /// Whether group `.0` may read the key columns (key-only deletes).
    Privilege(usize),
    /// Whether row security is active for group `.0` (tables without key).
    RowSecurity(usize),
}

/// The SQL of one table, from this database's catalog.
struct Table<'a> {
    rel: &'a RelInfo,
    name: String,
    /// Key columns (positions), all present here.
    keys: Vec<usize>,
}

impl Table<'_> {
    fn column(&self, i: usize) -> &str {
        self.rel.column_sql[i].as_deref().unwrap_or("")
    }

    fn ty(&self, i: usize) -> &str {
        &self.rel.sql_types[i]
    }

    /// Present columns, in order.
    fn present(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rel.rel.columns.len()).filter(|i| self.rel.column_sql[*i].is_some())
    }

    /// Puts rows back: `$1` is a mask per row (`1`: the value is known),
    /// then one text array per present column.
    /// The present columns a put-back may write: neither key nor generated.
    fn settable(&self) -> Vec<usize> {
        self.present()
            .filter(|i| !self.keys.contains(i) && !self.rel.generated_always[*i])
            .collect()
    }

    /// `x`: the row versions of `$1` (mask) and `$2…` (one text array per
    /// present column), as columns `m, c<i>…`.
    fn versions_cte(&self) -> String {
        self.versions_cte_as("", "")
    }

    /// [`Table::versions_cte`] with `extra` after the `unnest` and `alias`
    /// after the aliases (`with ordinality`, `, n`).
    fn versions_cte_as(&self, extra: &str, alias: &str) -> String {
        let present: Vec<usize> = self.present().collect();
        let aliases: Vec<String> = present.iter().map(|i| format!("c{i}")).collect();
        let arrays: Vec<String> = (0..present.len())
            .map(|n| format!("${}::text[]", n + 2))
            .collect();
        format!(
            "x as materialized (select * from unnest($1::text[], {}){extra} as x(m, {}{alias}))",
            arrays.join(", "),
            aliases.join(", ")
        )
    }

    /// The versions (`$1` and the arrays as for [`Table::restore_sql`])
    /// that putting back would write, by position from 1: the row is
    /// missing (and the version whole, so it can be inserted), or differs
    /// in a known, settable column. The others are the row as it is.
    fn check_sql(&self) -> String {
        let settable = self.settable();
        let differs = if settable.is_empty() {
            "false".to_owned()
        } else {
            self.differs(&settable)
        };
        format!(
            "with {versions}
             select x.n from x left join {table} t on {key_match}
             where case when t.ctid is null then strpos(x.m, '0') = 0 else ({differs}) end",
            versions = self.versions_cte_as(" with ordinality", ", n"),
            table = self.name,
            key_match = self.key_match(),
        )
    }

    /// `t`'s row is `x`'s by key.
    fn key_match(&self) -> String {
        self.keys
            .iter()
            .map(|k| format!("t.{} = x.c{k}::{}", self.column(*k), self.ty(*k)))
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// `t`'s row differs from `x`'s version in a known, settable column.
    fn differs(&self, settable: &[usize]) -> String {
        settable
            .iter()
            .map(|i| {
                format!(
                    "(substr(x.m, {}, 1) = '1' and t.{}::text is distinct from x.c{i})",
                    i + 1,
                    self.column(*i)
                )
            })
            .collect::<Vec<_>>()
            .join(" or ")
    }

    fn restore_sql(&self) -> String {
        let present: Vec<usize> = self.present().collect();
        let known = |i: usize| format!("substr(x.m, {}, 1) = '1'", i + 1);
        let key_match = self.key_match();
        let settable = self.settable();
        let update = if settable.is_empty() {
            "select 1 where false".to_owned()
        } else {
            let sets: Vec<String> = settable
                .iter()
                .map(|i| {
                    let c = self.column(*i);
                    format!(
                        "{c} = case when {} then x.c{i}::{} else t.{c} end",
                        known(*i),
                        self.ty(*i)
                    )
                })
                .collect();
            format!(
                "update {table} t set {sets} from x where {key_match} and ({differs}) returning 1",
                table = self.name,
                sets = sets.join(", "),
                differs = self.differs(&settable),
            )
        };
        let columns: Vec<&str> = present.iter().map(|i| self.column(*i)).collect();
        let values: Vec<String> = present
            .iter()
            .map(|i| format!("x.c{i}::{}", self.ty(*i)))
            .collect();
        format!(
            "with {versions},
             u as ({update}),
             i as (insert into {table} as t ({columns}) overriding system value
                   select {values} from x
                   where strpos(x.m, '0') = 0
                     and not exists (select 1 from {table} t where {key_match})
                   on conflict do nothing returning 1)
             select (select count(*) from u), (select count(*) from i)",
            versions = self.versions_cte(),
            table = self.name,
            columns = columns.join(", "),
            values = values.join(", "),
        )
    }

    /// Locks every row that putting a version of this batch back would
    /// write (a row whose values differ from one of the versions), in key
    /// order, skipping rows locked by others: `$1` and the arrays as for
    /// [`Table::restore_sql`], with the versions of every round. When it
    /// did not get them all (a writer holds one), it fails (an invalid
    /// integer naming [`LOCKED_MARKER`]: the transaction is aborted before
    /// any statement could wait) and the transaction starts again later.
    /// `None`
    /// when nothing would be written (every present column is a key or
    /// generated).
    ///
    /// The feed thereby never waits for a row lock while holding one, so
    /// an application transaction that waits for the feed is never part of
    /// a deadlock with it (see [`evaluate`]).
    fn lock_sql(&self) -> Option<String> {
        let settable = self.settable();
        if settable.is_empty() {
            return None;
        }
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("t.{}", self.column(*k)))
            .collect();
        Some(format!(
            "with {versions},
             n as materialized (select distinct {keys} from {table} t join x on {matches} where {differs}),
             l as (select 1 from {table} t where ({keys}) in (select * from n)
                   order by {keys} for no key update of t skip locked)
             select case when a = b then a
                         else ('{LOCKED_MARKER} ' || (a - b))::int8 end
             from (select (select count(*) from n) a, (select count(*) from l) b) c",
            versions = self.versions_cte(),
            table = self.name,
            matches = self.key_match(),
            differs = self.differs(&settable),
            keys = keys.join(", "),
        ))
    }

    /// The keys (as text) of the rows with the given keys that the current
    /// role may see: one text array per key column.
    fn select_sql(&self) -> String {
        let out: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("t.{}::text", self.column(*k)))
            .collect();
        if let [k] = self.keys.as_slice() {
            // One key column: an index scan over the array, evaluated once
            // (an init plan) rather than planned per element.
            return format!(
                "select {out} from {table} t where t.{c} = any((select $1::text[]::{ty}[])::{ty}[])",
                out = out.join(", "),
                table = self.name,
                c = self.column(*k),
                ty = self.ty(*k),
            );
        }
        let columns: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("t.{}", self.column(*k)))
            .collect();
        let arrays: Vec<String> = self
            .keys
            .iter()
            .enumerate()
            .map(|(n, k)| format!("(select ${}::text[]::{}[])", n + 1, self.ty(*k)))
            .collect();
        format!(
            "select {out} from {table} t where ({columns}) in (select * from unnest({arrays}))",
            out = out.join(", "),
            table = self.name,
            columns = columns.join(", "),
            arrays = arrays.join(", "),
        )
    }

    /// [`Table::select_sql`] for a single integer key whose values in the
    /// round are dense: the rows between `$1` and `$2` (rows in the range
    /// that are not in the round are ignored by the caller). It is planned
    /// with its bounds each time (an unnamed statement, see
    /// [`Step::planned`]): PostgreSQL then knows how many rows the range
    /// holds and may find a group's rows through an index of the policy's
    /// column instead (`owner_id = auth.uid()` with an index on
    /// `owner_id`: a `BitmapAnd` of both indexes reads the group's rows
    /// only, where a generic plan evaluates the policy on every row).
    fn range_sql(&self) -> String {
        let Some(k) = self.keys.first() else {
            return String::new();
        };
        format!(
            "select t.{c}::text from {table} t where t.{c} between $1::text::{ty} and $2::text::{ty}",
            table = self.name,
            c = self.column(*k),
            ty = self.ty(*k),
        )
    }

    /// Fails with 42501 unless the current role may select the key columns
    /// (every column's privilege is checked even though no row is read).
    fn privilege_sql(&self) -> String {
        let columns: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("t.{}", self.column(*k)))
            .collect();
        if columns.is_empty() {
            format!("select from {} t where false", self.name)
        } else {
            format!(
                "select {} from {} t where false",
                columns.join(", "),
                self.name
            )
        }
    }
}

/// The lowest and highest key of a round when the table has one integer
/// key and the round's keys fill at least half of the range between them
/// (rows inserted by one writer, for instance).
/// Rounds at least this large are planned with their bounds each time (an
/// unnamed statement: PostgreSQL can then drive the select by an index on
/// the policy's column); smaller ones keep the prepared statement, whose
/// planning per group would cost more than the scan it saves (the branch's
/// first end-to-end round showed p99 at 5,000 rows/s rising with every
/// range planned).
const PLAN_WITH_BOUNDS_MIN: usize = 1024;

fn dense_range(
    table: &Table<'_>,
    round: &[(usize, Version, Vec<String>)],
) -> Option<(String, String)> {
    let [k] = table.keys.as_slice() else {
        return None;
    };
    if !matches!(table.rel.type_names[*k].as_str(), "int2" | "int4" | "int8") || round.len() < 64 {
        return None;
    }
    let mut low = i64::MAX;
    let mut high = i64::MIN;
    for (_, _, key) in round {
        let value: i64 = key.first()?.parse().ok()?;
        low = low.min(value);
        high = high.max(value);
    }
    let span = u64::try_from(i128::from(high) - i128::from(low) + 1).ok()?;
    (span <= 2 * round.len() as u64).then(|| (low.to_string(), high.to_string()))
}

/// The version of the row a change is judged on.
fn version_of(change: &Change) -> Option<Version> {
    let row = match change.kind {
        "DELETE" => {
            if change.rel.rel.replica_identity != b'f' {
                return None;
            }
            change.old.as_ref()?
        }
        _ => change.new.as_ref()?,
    };
    Some(
        row.iter()
            .enumerate()
            .map(|(i, datum)| match datum {
                Datum::Text(t) => Some(Some(t.clone())),
                Datum::Null => Some(None),
                // An unchanged TOASTed value: from the old row if sent.
                Datum::Unchanged => match change.old.as_ref().and_then(|o| o.get(i)) {
                    Some(Datum::Text(t)) => Some(Some(t.clone())),
                    Some(Datum::Null) => Some(None),
                    _ => None,
                },
            })
            .collect(),
    )
}

fn key_of(version: &Version, keys: &[usize]) -> Option<Vec<String>> {
    keys.iter()
        .map(|k| version.get(*k).cloned().flatten().flatten())
        .collect()
}

fn context(principal: &Principal) -> RequestContext {
    RequestContext {
        role: principal.role.clone(),
        claims: principal.claims.clone(),
        method: "GET".to_owned(),
        path: "/realtime/v1".to_owned(),
        headers: Map::new(),
        search_path: None,
    }
}

/// Authorises the groups of one task (all of one table) on one connection,
/// in one pipeline.
async fn evaluate(
    pool: &Pool,
    login: &str,
    changes: &[Change],
    task: Vec<Group>,
    role: Role,
) -> Vec<(Arc<str>, Authorized)> {
    let Some(first) = task.first() else {
        return Vec::new();
    };
    let rel = changes[first.indexes[0]].rel.clone();
    let table_name = format!("{}.{}", rel.rel.schema, rel.rel.name);
    let fail = |task: Vec<Group>, message: String| {
        let error = AuthError {
            table: table_name.clone(),
            message,
        };
        task.into_iter()
            .map(|g| (g.rights, Err(error.clone())))
            .collect::<Vec<_>>()
    };
    let keys = rel.key_columns();
    if keys.iter().any(|k| rel.column_sql[*k].is_none()) {
        return fail(
            task,
            "the table's key columns changed since these changes were committed".to_owned(),
        );
    }
    let table = Table {
        rel: &rel,
        name: rel.table_sql.clone(),
        keys,
    };
    let keyless = table.keys.is_empty();

    // The row versions to put back, in rounds of one version per key; and
    // per change, how it is judged.
    #[derive(Clone, Copy)]
    enum Judge {
        /// By its row, in this round.
        Row(usize),
        /// Key-only delete: by the privilege on the key columns.
        Privilege,
        /// By nothing PostgreSQL can check: seen by no one.
        Never,
        /// RLS off: by the privilege on the key columns... or table.
        Table,
    }
    let mut needed: Vec<usize> = task
        .iter()
        .flat_map(|g| g.indexes.iter().copied())
        .collect();
    needed.sort_unstable();
    needed.dedup();
    let mut rounds: Vec<Vec<(usize, Version, Vec<String>)>> = Vec::new();
    let mut round_of_key: HashMap<Vec<String>, usize> = HashMap::new();
    // By change index (a lookup per group and change: no hashing).
    let mut judge: Vec<Option<Judge>> = vec![None; changes.len()];
    for index in needed {
        let change = &changes[index];
        if !rel.rls {
            judge[index] = Some(Judge::Table);
            continue;
        }
        if keyless {
            judge[index] = Some(Judge::Never);
            continue;
        }
        let Some(version) = version_of(change) else {
            judge[index] = Some(if change.kind == "DELETE" {
                Judge::Privilege
            } else {
                Judge::Never
            });
            continue;
        };
        let Some(key) = key_of(&version, &table.keys) else {
            judge[index] = Some(Judge::Never);
            continue;
        };
        let round = round_of_key.entry(key.clone()).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        judge[index] = Some(Judge::Row(*round));
        rounds[*round].push((index, version, key));
        *round += 1;
    }

    // The statements.
    let prologue: Arc<str> = Arc::from(sovra_pg::PROLOGUE_SQL);
    let select_sql: Arc<str> = Arc::from(table.select_sql());
    let privilege_sql: Arc<str> = Arc::from(table.privilege_sql());
    let restore_sql: Arc<str> = Arc::from(table.restore_sql());
    let lock_sql: Option<Arc<str>> = table.lock_sql().map(Arc::from);
    let range_sql: Arc<str> = Arc::from(table.range_sql());
    // Per distinct role of the task, asked once as this session's own role:
    // whether the login role is a member of it (`SET ROLE` from the login
    // role needs membership; this session may switch to any role), and
    // which columns it may read. A role that does not exist gets no row
    // (its prologue then fails with PostgreSQL's error).
    let roles_sql: Arc<str> = Arc::from(
        "select q.name, coalesce(pg_has_role($1::text::name, r.oid, 'MEMBER'), false),
                coalesce((select array_agg(case when x.name is null then false
                                                else coalesce(has_column_privilege(r.oid, $2::oid, x.name, 'SELECT'), false)
                                           end order by x.n)
                          from unnest($3::text[]) with ordinality as x(name, n)), '{}')
         from unnest($4::text[]) as q(name) join pg_catalog.pg_roles r on r.rolname = q.name",
    );
    let mut roles: Vec<String> = task.iter().map(|g| g.principal.role.clone()).collect();
    roles.sort_unstable();
    roles.dedup();
    let roles = Arc::new(roles.into_iter().map(Some).collect::<Vec<_>>());
    let column_names: Arc<Vec<Option<String>>> = Arc::new(
        rel.rel
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| rel.column_sql[i].as_ref().map(|_| c.name.clone()))
            .collect(),
    );
    // Row versions as `restore_sql`, `lock_sql` and `check_sql` take them:
    // a mask per row, then one text array per present column.
    let version_params = |versions: &[&Version]| -> Vec<Param> {
        let mut params = Vec::with_capacity(2 + rel.rel.columns.len());
        params.push(Param::TextArray(Arc::new(
            versions
                .iter()
                .map(|v| {
                    Some(
                        v.iter()
                            .map(|c| if c.is_some() { '1' } else { '0' })
                            .collect(),
                    )
                })
                .collect(),
        )));
        for i in table.present() {
            params.push(Param::TextArray(Arc::new(
                versions.iter().map(|v| v[i].clone().flatten()).collect(),
            )));
        }
        params
    };
    // The round's keys, as the select wants them (built once, shared by
    // the groups).
    let round_keys: Vec<(Arc<str>, Vec<Param>, bool)> = rounds
        .iter()
        .map(|round| {
            if let Some((low, high)) = dense_range(&table, round) {
                return (
                    range_sql.clone(),
                    vec![Param::Text(Some(low)), Param::Text(Some(high))],
                    round.len() >= PLAN_WITH_BOUNDS_MIN,
                );
            }
            let params = (0..table.keys.len())
                .map(|n| {
                    Param::TextArray(Arc::new(
                        round
                            .iter()
                            .map(|(_, _, key)| Some(key[n].clone()))
                            .collect(),
                    ))
                })
                .collect();
            (select_sql.clone(), params, false)
        })
        .collect();

    // The pipeline, for a transaction that starts as `start` says.
    let build = |start: &Start| -> Vec<Step> {
        let mut steps: Vec<Step> = Vec::new();
        let setup = |sql: &str| Step {
            sql: Arc::from(sql),
            params: Vec::new(),
            purpose: Purpose::Setup,
            planned: false,
        };
        // Versions of the first round that are the row as it is in the
        // snapshot (see `check`) would write nothing: they are neither
        // locked nor put back. Later rounds follow a put-back in this
        // transaction, so they are compared again by the statements.
        let current: Option<&[bool]> = match start {
            Start::Fresh => None,
            Start::Exported(c) | Start::Import(c) => Some(&c.current),
        };
        let writes: Vec<Vec<&Version>> = rounds
            .iter()
            .enumerate()
            .map(|(r, round)| {
                round
                    .iter()
                    .filter(|(i, _, _)| r > 0 || !current.is_some_and(|c| c[*i]))
                    .map(|(_, v, _)| v)
                    .collect()
            })
            .collect();
        let writing = writes.iter().any(|w| !w.is_empty());
        match start {
            Start::Fresh => steps.push(setup("begin isolation level repeatable read")),
            Start::Import(c) => {
                steps.push(setup("begin isolation level repeatable read"));
                steps.push(Step {
                    sql: Arc::from(format!("set transaction snapshot '{}'", c.snapshot)),
                    params: Vec::new(),
                    purpose: Purpose::Import,
                    planned: false,
                });
            }
            // `check` began the transaction.
            Start::Exported(_) => {}
        }
        if writing {
            steps.push(setup("set local session_replication_role = replica"));
            // Putting rows back takes row locks that the application's own
            // transactions may want too. If the feed waited for a lock while
            // an application transaction waited for one of the feed's,
            // PostgreSQL would break the deadlock by failing whichever of the
            // two checks first, possibly the application's. So the feed does
            // not wait for row locks: before anything else, one statement
            // locks every row any round will write, in key order, skipping
            // rows that others hold; if it did not get them all it fails, the
            // transaction rolls back and starts again after a pause (below).
            // The updates that follow write only rows the feed holds.
            // Re-inserting a row deleted since can still wait for a writer
            // inserting the same key: that one wait is bounded
            // (`lock_timeout`, a quarter of `deadlock_timeout`), fails the
            // transaction, and is retried likewise.
            steps.push(setup(WINDOW_SQL));
        }
        // Each group runs after a savepoint and is rolled back to it, so
        // that nothing one group's statements set (role, settings, whatever
        // a policy function does) reaches the next. `rollback to savepoint`
        // keeps the savepoint, so one is set per round, after the round's
        // rows are back.
        let group_steps = |steps: &mut Vec<Step>, g: usize, body: Vec<Step>| {
            let params = sovra_pg::prologue_params(&context(&task[g].principal));
            steps.push(Step {
                sql: prologue.clone(),
                params: params.into_iter().map(Param::Text).collect(),
                purpose: Purpose::Prologue(g),
                planned: false,
            });
            steps.extend(body);
            steps.push(setup("rollback to savepoint sovra_rt"));
        };
        steps.push(Step {
            sql: roles_sql.clone(),
            params: vec![
                Param::Text(Some(login.to_owned())),
                Param::Oid(rel.rel.oid),
                Param::TextArray(Arc::clone(&column_names)),
                Param::TextArray(Arc::clone(&roles)),
            ],
            purpose: Purpose::Roles,
            planned: false,
        });
        if writing && let Some(lock_sql) = &lock_sql {
            let all: Vec<&Version> = writes.iter().flatten().copied().collect();
            steps.push(Step {
                sql: lock_sql.clone(),
                params: version_params(&all),
                purpose: Purpose::Lock,
                planned: false,
            });
        }
        // Round 0 also carries each group's other checks (one savepoint per
        // group); later rounds (several versions of a row in one batch) only
        // their selects.
        let rounds_to_run = rounds.len().max(1);
        for r in 0..rounds_to_run {
            if let Some(versions) = writes.get(r).filter(|w| !w.is_empty()) {
                // Put the round's rows back (as the pool's own role).
                steps.push(Step {
                    sql: restore_sql.clone(),
                    params: version_params(versions),
                    purpose: Purpose::Restore,
                    planned: false,
                });
            }
            steps.push(setup("savepoint sovra_rt"));
            for (g, group) in task.iter().enumerate() {
                let in_round = group
                    .indexes
                    .iter()
                    .any(|i| matches!(judge[*i], Some(Judge::Row(rr)) if rr == r));
                let mut body = Vec::new();
                if r == 0 {
                    let wants = |j: fn(&Judge) -> bool| {
                        group
                            .indexes
                            .iter()
                            .any(|i| judge[*i].as_ref().is_some_and(j))
                    };
                    if wants(|j| matches!(j, Judge::Privilege | Judge::Table))
                        || (keyless && rel.rls)
                    {
                        body.push(Step {
                            sql: privilege_sql.clone(),
                            params: Vec::new(),
                            purpose: Purpose::Privilege(g),
                            planned: false,
                        });
                    }
                    if keyless && rel.rls {
                        body.push(Step {
                            sql: Arc::from("select row_security_active($1::oid)"),
                            params: vec![Param::Oid(rel.rel.oid)],
                            purpose: Purpose::RowSecurity(g),
                            planned: false,
                        });
                    }
                } else if !in_round {
                    continue;
                }
                if in_round && let Some((sql, params, planned)) = round_keys.get(r) {
                    body.push(Step {
                        sql: sql.clone(),
                        params: params.iter().map(Param::duplicate).collect(),
                        purpose: Purpose::Select(g, r),
                        planned: *planned,
                    });
                }
                group_steps(&mut steps, g, body);
            }
        }
        steps.push(setup("rollback"));
        steps
    };

    let client = match pool.get().await {
        Ok(client) => client,
        Err(err) => return fail(task, err.to_string()),
    };
    // Statements with parameters are prepared once per connection (by
    // text) and reused batch after batch: PostgreSQL parses them once,
    // and re-plans them itself when a role, policy or table changes. A
    // fresh start's pipeline holds every statement any start uses.
    let check_sql = table.check_sql();
    let mut prepared: HashMap<Arc<str>, tokio_postgres::Statement> = HashMap::new();
    {
        let fresh = build(&Start::Fresh);
        let check_step = Step {
            sql: Arc::from(check_sql.as_str()),
            params: version_params(&[]),
            purpose: Purpose::Setup,
            planned: false,
        };
        let wanted = fresh
            .iter()
            .chain(matches!(role, Role::Exporter(..)).then_some(&check_step));
        for step in wanted.filter(|s| !s.params.is_empty() && !s.planned) {
            if prepared.contains_key(&step.sql) {
                continue;
            }
            let types: Vec<Type> = step.params.iter().map(|p| p.typed().1).collect();
            match client.prepare_typed_cached(&step.sql, &types).await {
                Ok(statement) => {
                    prepared.insert(step.sql.clone(), statement);
                }
                Err(err) => return fail(task, error_text(&err)),
            }
        }
    }
    let db: &tokio_postgres::Client = &client;

    // How the transaction starts: on its own snapshot, or on the one the
    // table's first task exported after finding which rows are current.
    // The exporter waits for these before it ends its transaction; an
    // importer signals on `imported` after its first attempt.
    let mut importers_done: Vec<tokio::sync::oneshot::Receiver<()>> = Vec::new();
    let mut imported_signal: Option<tokio::sync::oneshot::Sender<()>> = None;
    let mut start = match role {
        Role::Alone => Start::Fresh,
        Role::Importer(checked, done) => {
            imported_signal = Some(done);
            match checked.await {
                Ok(checked) => Start::Import(checked),
                Err(_) => Start::Fresh,
            }
        }
        Role::Exporter(versions, importers, done) => {
            importers_done = done;
            let refs: Vec<&Version> = versions.iter().map(|(_, v)| v).collect();
            let params = version_params(&refs);
            let statement = prepared.get(check_sql.as_str());
            match check(db, statement, &params, &versions, changes.len()).await {
                Some(checked) => {
                    let checked = Arc::new(checked);
                    for importer in importers {
                        let _ = importer.send(Arc::clone(&checked));
                    }
                    Start::Exported(checked)
                }
                // The importers start on their own.
                None => Start::Fresh,
            }
        }
    };
    // A row written by someone else after this transaction's snapshot
    // cannot be put back (serialisation failure): start again with a new
    // snapshot.
    let mut attempts = 0;
    let (steps, results) = loop {
        let steps = build(&start);
        let typed: Vec<Vec<(&(dyn ToSql + Sync), Type)>> = steps
            .iter()
            .map(|s| s.params.iter().map(Param::typed).collect())
            .collect();
        let results = {
            let mut pipeline: Vec<_> = steps
                .iter()
                .zip(&typed)
                .map(|(step, typed)| {
                    let statement = prepared.get(&step.sql).filter(|_| !step.planned);
                    async move {
                        match statement {
                            Some(statement) => {
                                let values: Vec<&(dyn ToSql + Sync)> =
                                    typed.iter().map(|(v, _)| *v).collect();
                                db.query(statement, &values).await
                            }
                            // Unprepared: planned with its values.
                            None => db.query_typed(&step.sql, typed).await,
                        }
                    }
                })
                .collect();
            // The exporter sends its last statement (the rollback that ends the
            // snapshot) only once the importers have imported it, or after a
            // bound if one of them never gets that far (no connection).
            let end = if matches!(start, Start::Exported(_)) && !importers_done.is_empty() {
                pipeline.pop()
            } else {
                None
            };
            let mut results = futures_util::future::join_all(pipeline).await;
            if let Some(end) = end {
                let waiting = futures_util::future::join_all(importers_done.drain(..));
                let _ = tokio::time::timeout(IMPORT_WAIT, waiting).await;
                results.push(end.await);
            }
            results
        };
        if let Some(signal) = imported_signal.take() {
            let _ = signal.send(());
        }
        drop(typed);
        attempts += 1;
        let retry =
            |e: &tokio_postgres::Error| e.code().is_some_and(|c| RETRY_CODES.contains(&c.code()));
        let mut imported = true;
        let mut conflict = false;
        for (step, result) in steps.iter().zip(&results) {
            match (step.purpose, result) {
                // The exporting transaction has ended: start on its own.
                (Purpose::Import, Err(_)) => imported = false,
                // A row a writer holds was skipped.
                (Purpose::Lock, Err(e)) => {
                    conflict |= retry(e)
                        || e.as_db_error()
                            .is_some_and(|d| d.message().contains(LOCKED_MARKER));
                }
                (Purpose::Restore, Err(e)) => conflict |= retry(e),
                _ => {}
            }
        }
        if !imported && attempts < 30 {
            start = Start::Fresh;
            continue;
        }
        // A writer that keeps a row locked for long delays the batch (the
        // feed does not go on without it: changes are delivered in commit
        // order); after some fifteen seconds its groups get the error.
        if conflict && attempts < 30 {
            metrics::counter!("sovra_realtime_authorization_retries_total").increment(1);
            let pause = 10u64 << attempts.min(5);
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            start = Start::Fresh;
            continue;
        }
        break (steps, results);
    };

    // Read the answers.
    let mut seen: Vec<Vec<usize>> = vec![Vec::new(); task.len()];
    let mut errors: Vec<Option<String>> = vec![None; task.len()];
    let mut may_select: Vec<bool> = vec![false; task.len()];
    let mut row_security: Vec<bool> = vec![true; task.len()];
    let mut role_rights: HashMap<String, (bool, Vec<bool>)> = HashMap::new();
    let mut broken: Option<String> = None;
    // Per round, where each key is (built once, shared by the groups).
    let positions: Vec<HashMap<&[String], usize>> = rounds
        .iter()
        .map(|round| {
            round
                .iter()
                .enumerate()
                .map(|(i, (_, _, key))| (key.as_slice(), i))
                .collect()
        })
        .collect();
    let denied = |err: &tokio_postgres::Error| err.code().map(|c| c.code()) == Some("42501");
    for (step, result) in steps.iter().zip(results) {
        match (step.purpose, result) {
            (Purpose::Setup, Err(err)) if step.sql.as_ref() == "rollback" => {
                tracing::debug!(error = %err, "realtime authorisation rollback failed");
            }
            (
                Purpose::Setup
                | Purpose::Import
                | Purpose::Lock
                | Purpose::Restore
                | Purpose::Roles,
                Err(err),
            ) => {
                // Breaks the whole transaction.
                if broken.is_none() && !aborted(&err) {
                    broken = Some(error_text(&err));
                }
            }
            (_, Err(err)) if aborted(&err) => {}
            // Not allowed to read: sees nothing.
            (_, Err(err)) if denied(&err) => {}
            (
                Purpose::Prologue(g)
                | Purpose::Select(g, _)
                | Purpose::Privilege(g)
                | Purpose::RowSecurity(g),
                Err(err),
            ) => {
                errors[g].get_or_insert_with(|| error_text(&err));
            }
            (Purpose::Restore, Ok(rows)) => {
                // Rows updated and inserted again.
                let written: i64 = rows
                    .first()
                    .map(|r| {
                        r.try_get::<_, i64>(0).unwrap_or(0) + r.try_get::<_, i64>(1).unwrap_or(0)
                    })
                    .unwrap_or(0);
                metrics::counter!("sovra_realtime_rows_put_back_total")
                    .increment(u64::try_from(written).unwrap_or(0));
                // Versions the statement compared with the table (and wrote
                // where they differ).
                if let Some(Param::TextArray(masks)) = step.params.first() {
                    metrics::counter!("sovra_realtime_put_back_versions_total")
                        .increment(masks.len() as u64);
                }
            }
            (Purpose::Setup | Purpose::Import | Purpose::Lock | Purpose::Prologue(_), Ok(_)) => {}
            (Purpose::Privilege(g), Ok(_)) => may_select[g] = true,
            (Purpose::Roles, Ok(rows)) => {
                for row in rows {
                    let (Ok(name), Ok(member), Ok(columns)) = (
                        row.try_get::<_, String>(0),
                        row.try_get::<_, bool>(1),
                        row.try_get::<_, Vec<bool>>(2),
                    ) else {
                        continue;
                    };
                    role_rights.insert(name, (member, columns));
                }
            }
            (Purpose::RowSecurity(g), Ok(rows)) => {
                row_security[g] = rows.first().is_none_or(|r| r.get::<_, bool>(0));
            }
            (Purpose::Select(g, r), Ok(rows)) => {
                let round = &rounds[r];
                let position = &positions[r];
                for row in rows {
                    let key: Vec<String> = (0..table.keys.len())
                        .map(|n| row.get::<_, Option<String>>(n).unwrap_or_default())
                        .collect();
                    if let Some(i) = position.get(key.as_slice()) {
                        seen[g].push(round[*i].0);
                    }
                }
            }
        }
    }
    let mut readable: Vec<Option<Vec<bool>>> = vec![None; task.len()];
    for (g, group) in task.iter().enumerate() {
        let role = &group.principal.role;
        match role_rights.get(role) {
            Some((true, columns)) => readable[g] = Some(columns.clone()),
            Some((false, _)) => {
                errors[g]
                    .get_or_insert_with(|| format!("permission denied to set role \"{role}\""));
            }
            // No such role: its prologue failed with PostgreSQL's error.
            None => {
                errors[g].get_or_insert_with(|| format!("role \"{role}\" does not exist"));
            }
        }
    }
    let mut out = Vec::with_capacity(task.len());
    for (g, group) in task.into_iter().enumerate() {
        if let Some(message) = broken.clone().or_else(|| errors[g].take()) {
            out.push((
                group.rights,
                Err(AuthError {
                    table: table_name.clone(),
                    message,
                }),
            ));
            continue;
        }
        let mut indexes: Vec<usize> = std::mem::take(&mut seen[g]);
        for index in &group.indexes {
            let visible = match judge[*index] {
                Some(Judge::Table | Judge::Privilege) => may_select[g],
                Some(Judge::Never) => keyless && may_select[g] && !row_security[g],
                _ => false,
            };
            if visible {
                indexes.push(*index);
            }
        }
        // Only the group's own changes (a round is shared by the task).
        indexes.retain(|i| group.indexes.binary_search(i).is_ok());
        indexes.sort_unstable();
        indexes.dedup();
        let hidden = readable[g].as_ref().and_then(|r| {
            r.iter()
                .any(|ok| !ok)
                .then(|| r.iter().map(|ok| !ok).collect::<Arc<[bool]>>())
        });
        out.push((group.rights, Ok(Seen { indexes, hidden })));
    }
    out
}

/// "current transaction is aborted": a consequence of an earlier error.
fn aborted(err: &tokio_postgres::Error) -> bool {
    err.code().map(|c| c.code()) == Some("25P02")
}

/// PostgreSQL's message (and detail) without Sovra's SQL.
fn error_text(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => err.to_string(),
    }
}
