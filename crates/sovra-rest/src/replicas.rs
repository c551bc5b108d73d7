//! Read replicas (`database.read_urls`): which connection a read runs on,
//! and read-your-writes.
//!
//! A request whose transaction is read-only by its own nature (`GET`/`HEAD`
//! of a table or view, a call of a `STABLE` or `IMMUTABLE` function, as the
//! schema cache read them from `pg_proc`) may run on a replica; everything
//! else runs on the primary. The replica's connection runs the same request
//! prologue (role, claims, settings) as the primary's, so row-level security
//! decides there exactly as it does on the primary.
//!
//! **Read-your-writes.** After each write this node remembers, per caller
//! (the token's `sub`, else its role), the primary's WAL insert position
//! taken after the commit: a position at or past the end of the write's
//! commit record. A later read by that caller runs on a replica only once
//! the replica has replayed that far: at once when the monitor has already
//! seen it that far, else after asking the replica (`pg_last_wal_replay_lsn`)
//! until `database.read_wait_ms` has passed; then it runs on the primary.
//! The memory is this node's: a caller whose next read lands on another node
//! is not known there (see docs/scale-out.md for the trade-off).
//!
//! **Health.** A monitor asks every replica once a second for its replay
//! position and compares it with positions of the primary sampled before:
//! a replica's lag is the age of the oldest sample it has not replayed (0
//! when it has replayed them all, so an idle primary shows no lag). A replica
//! that does not answer, is not in recovery, or lags more than
//! `database.read_max_lag` is skipped until it is back, with a warning in the
//! log and the gauges `sovra_db_replica_up` and
//! `sovra_db_replica_lag_seconds`. A read whose replica connection breaks is
//! answered from the primary.

use std::collections::{HashMap, VecDeque};
use std::str::FromStr as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sovra_pg::tokio_postgres;
use sovra_pg::{Pool, PooledClient};

/// The primary's position after a write's commit: the end of the last
/// record inserted, so at or past the end of the commit's. That is the
/// insert position, except when it stands at the start of a page, where
/// PostgreSQL reports it past the page's header (24 bytes, 40 at a
/// segment's start) while a standby's replay position stops before it: an
/// idle primary would never be seen replayed. No record ends 24 or 40 bytes
/// into a page (records start after the header and are at least 24 bytes),
/// so those offsets are taken back to the page's start.
pub const WRITE_LSN_SQL: &str = "select l - case l % 8192 when 24 then 24 when 40 then 40 else 0 end \
     from (select (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8 as l) p";

/// What the monitor samples on the primary: the position WAL is flushed to
/// (what a standby can receive).
const PRIMARY_LSN_SQL: &str = "select (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::int8";

/// What the monitor and a waiting read ask a replica.
const REPLICA_LSN_SQL: &str = "select pg_is_in_recovery(), \
     coalesce((pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::int8, 0)";

/// How a tenant's reads use its replicas.
#[derive(Clone, Debug)]
pub struct ReplicaSettings {
    /// A replica further behind than this is skipped.
    pub max_lag: Duration,
    /// How long a read waits for a replica to replay its caller's last write.
    pub wait: Duration,
    /// How often the monitor asks.
    pub check_interval: Duration,
    /// The tenant's label in metrics.
    pub tenant: String,
}

/// One replica.
#[derive(Debug)]
pub struct Replica {
    /// `host:port` (no credentials), for logs, metrics and `/ready`.
    pub name: String,
    pool: Pool,
    up: AtomicBool,
    /// The replay position last seen (monitor or a read's check).
    replay_lsn: AtomicU64,
    lag_ms: AtomicU64,
    /// Why it is skipped, when it is.
    reason: Mutex<Option<&'static str>>,
}

/// A replica's state as `/ready` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub name: String,
    pub up: bool,
    /// `down`, `not in recovery` or `lagging` when skipped.
    pub reason: Option<&'static str>,
    pub lag_ms: u64,
}

/// Where a read runs.
pub enum ReadTarget {
    Replica(Arc<Replica>, Box<PooledClient>),
    Primary,
}

#[derive(Clone, Copy, Debug)]
struct Written {
    lsn: u64,
    at: Instant,
}

/// A tenant's replicas, the monitor that watches them, and the callers'
/// last write positions.
#[derive(Debug)]
pub struct Replicas {
    replicas: Vec<Arc<Replica>>,
    settings: ReplicaSettings,
    next: AtomicUsize,
    writes: Mutex<HashMap<String, Written>>,
    monitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Replicas {
    fn drop(&mut self) {
        if let Ok(mut monitor) = self.monitor.lock()
            && let Some(task) = monitor.take()
        {
            task.abort();
        }
    }
}

/// The most callers remembered; beyond it the oldest half is forgotten
/// (their next reads may then see a replica that has not replayed their
/// write, bounded by `database.read_max_lag`).
const MAX_CALLERS: usize = 100_000;

/// Connection settings of the replica at `url`: the request login's own
/// (user, password, database, application name) with the URL's hosts and
/// ports. A physical replica has the primary's roles and databases.
pub fn replica_config(
    login: &tokio_postgres::Config,
    url: &str,
) -> Result<tokio_postgres::Config, String> {
    let parsed = tokio_postgres::Config::from_str(url)
        .map_err(|err| format!("database.read_urls: {url:?}: {err}"))?;
    if parsed.get_hosts().is_empty() {
        return Err(format!("database.read_urls: {url:?} names no host"));
    }
    let mut config = tokio_postgres::Config::new();
    for host in parsed.get_hosts() {
        match host {
            tokio_postgres::config::Host::Tcp(name) => config.host(name),
            tokio_postgres::config::Host::Unix(path) => config.host_path(path),
        };
    }
    for port in parsed.get_ports() {
        config.port(*port);
    }
    if let Some(user) = login.get_user() {
        config.user(user);
    }
    if let Some(password) = login.get_password() {
        config.password(password);
    }
    if let Some(dbname) = login.get_dbname() {
        config.dbname(dbname);
    }
    if let Some(options) = login.get_options() {
        config.options(options);
    }
    config.application_name(login.get_application_name().unwrap_or("sovra"));
    config.connect_timeout(Duration::from_secs(2));
    Ok(config)
}

/// `host:port` of a replica URL, for logs (never its user or password).
pub fn replica_name(url: &str) -> String {
    match tokio_postgres::Config::from_str(url) {
        Ok(parsed) => {
            let host = match parsed.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(name)) => name.clone(),
                Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
                None => String::new(),
            };
            let port = parsed.get_ports().first().copied().unwrap_or(5432);
            format!("{host}:{port}")
        }
        Err(_) => "?".to_owned(),
    }
}

impl Replicas {
    /// Starts watching `replicas` (name and pool each) against `primary`.
    pub fn start(
        primary: Pool,
        replicas: Vec<(String, Pool)>,
        settings: ReplicaSettings,
    ) -> Arc<Replicas> {
        let replicas: Vec<Arc<Replica>> = replicas
            .into_iter()
            .map(|(name, pool)| {
                Arc::new(Replica {
                    name,
                    pool,
                    // Until the monitor says otherwise: a replica that is
                    // down is found out by the first read, which then runs
                    // on the primary.
                    up: AtomicBool::new(true),
                    replay_lsn: AtomicU64::new(0),
                    lag_ms: AtomicU64::new(0),
                    reason: Mutex::new(None),
                })
            })
            .collect();
        let set = Arc::new(Replicas {
            replicas,
            settings,
            next: AtomicUsize::new(0),
            writes: Mutex::new(HashMap::new()),
            monitor: Mutex::new(None),
        });
        let task = tokio::spawn(monitor(Arc::downgrade(&set), primary));
        if let Ok(mut slot) = set.monitor.lock() {
            *slot = Some(task);
        }
        set
    }

    /// The key a caller's writes are remembered under: its token's `sub`,
    /// else (the anon and service keys) its role.
    pub fn caller_key(role: &str, claims: &serde_json::Map<String, serde_json::Value>) -> String {
        match claims.get("sub").and_then(serde_json::Value::as_str) {
            Some(sub) => format!("{role}\u{0}{sub}"),
            None => role.to_owned(),
        }
    }

    /// Remembers that `key` wrote up to `lsn` (keeps the furthest).
    pub fn record_write(&self, key: &str, lsn: u64) {
        let Ok(mut writes) = self.writes.lock() else {
            return;
        };
        if writes.len() >= MAX_CALLERS && !writes.contains_key(key) {
            let mut ages: Vec<Instant> = writes.values().map(|w| w.at).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() / 2];
            writes.retain(|_, w| w.at > cut);
        }
        let entry = writes.entry(key.to_owned()).or_insert(Written {
            lsn,
            at: Instant::now(),
        });
        entry.lsn = entry.lsn.max(lsn);
        entry.at = Instant::now();
    }

    /// Asks the primary for its position now and remembers it for `key`
    /// (after a write whose commit was not on a connection at hand).
    pub async fn record_write_now(&self, primary: &Pool, key: &str) {
        let asked = async {
            let client = primary.get().await.map_err(|err| err.to_string())?;
            let row = client
                .query_one(WRITE_LSN_SQL, &[])
                .await
                .map_err(|err| err.to_string())?;
            Ok::<i64, String>(row.get(0))
        };
        match asked.await {
            Ok(lsn) => self.record_write(key, lsn.unsigned_abs()),
            Err(err) => {
                tracing::warn!(error = %err, "could not read the primary's WAL position after a write")
            }
        }
    }

    /// The position `key` last wrote to, if this node remembers one.
    pub fn last_write(&self, key: &str) -> Option<u64> {
        self.writes
            .lock()
            .ok()
            .and_then(|writes| writes.get(key).map(|w| w.lsn))
    }

    /// Where `key`'s read runs: a replica that is up and has replayed the
    /// caller's last write (waiting for it at most the configured time),
    /// else the primary.
    pub async fn read_target(&self, key: &str) -> ReadTarget {
        let count = self.replicas.len();
        if count == 0 {
            return ReadTarget::Primary;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(replica) = (0..count)
            .map(|i| &self.replicas[(start + i) % count])
            .find(|replica| replica.up.load(Ordering::Relaxed))
        else {
            self.fallback("none up");
            return ReadTarget::Primary;
        };
        let client = match replica.pool.get().await {
            Ok(client) => client,
            Err(err) => {
                self.mark_down(replica, "down", &err.to_string());
                self.fallback("down");
                return ReadTarget::Primary;
            }
        };
        if let Some(lsn) = self.last_write(key)
            && replica.replay_lsn.load(Ordering::Relaxed) < lsn
        {
            let deadline = Instant::now() + self.settings.wait;
            loop {
                match client.query_one(REPLICA_LSN_SQL, &[]).await {
                    Ok(row) => {
                        let replayed = row.get::<_, i64>(1).unsigned_abs();
                        replica.replay_lsn.fetch_max(replayed, Ordering::Relaxed);
                        if replayed >= lsn {
                            break;
                        }
                    }
                    Err(err) => {
                        drop(PooledClient::take(client));
                        self.mark_down(replica, "down", &err.to_string());
                        self.fallback("down");
                        return ReadTarget::Primary;
                    }
                }
                if Instant::now() >= deadline {
                    self.fallback("behind caller's write");
                    return ReadTarget::Primary;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        metrics::counter!(
            "sovra_rest_replica_reads_total",
            "tenant" => self.settings.tenant.clone(),
            "replica" => replica.name.clone()
        )
        .increment(1);
        ReadTarget::Replica(replica.clone(), Box::new(client))
    }

    /// A read on `replica` failed without an answer from it (the
    /// connection broke): skip it until the monitor sees it again.
    pub fn read_failed(&self, replica: &Replica, why: &str) {
        self.mark_down(replica, "down", why);
        self.fallback("read failed");
    }

    fn fallback(&self, reason: &'static str) {
        metrics::counter!(
            "sovra_rest_replica_fallbacks_total",
            "tenant" => self.settings.tenant.clone(),
            "reason" => reason
        )
        .increment(1);
    }

    fn mark_down(&self, replica: &Replica, reason: &'static str, detail: &str) {
        let was_up = replica.up.swap(false, Ordering::Relaxed);
        if let Ok(mut slot) = replica.reason.lock() {
            *slot = Some(reason);
        }
        if was_up {
            tracing::warn!(
                tenant = %self.settings.tenant,
                replica = %replica.name,
                reason,
                detail,
                "read replica skipped: reads go to the primary"
            );
        }
        self.gauges(replica);
    }

    fn mark_up(&self, replica: &Replica) {
        let was_up = replica.up.swap(true, Ordering::Relaxed);
        if let Ok(mut slot) = replica.reason.lock() {
            *slot = None;
        }
        if !was_up {
            tracing::info!(
                tenant = %self.settings.tenant,
                replica = %replica.name,
                "read replica back in use"
            );
        }
        self.gauges(replica);
    }

    fn gauges(&self, replica: &Replica) {
        let labels = [
            ("tenant", self.settings.tenant.clone()),
            ("replica", replica.name.clone()),
        ];
        metrics::gauge!("sovra_db_replica_up", &labels).set(
            if replica.up.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        metrics::gauge!("sovra_db_replica_lag_seconds", &labels)
            .set(replica.lag_ms.load(Ordering::Relaxed) as f64 / 1000.0);
    }

    /// Every replica's state (for `/ready`).
    pub fn status(&self) -> Vec<ReplicaStatus> {
        self.replicas
            .iter()
            .map(|replica| ReplicaStatus {
                name: replica.name.clone(),
                up: replica.up.load(Ordering::Relaxed),
                reason: replica.reason.lock().ok().and_then(|r| *r),
                lag_ms: replica.lag_ms.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Asks every replica now, against a sample of the primary taken now
    /// (so it measures reachability, not lag): for tests, which must not
    /// wait for the monitor's timer.
    pub async fn refresh(&self, primary: &Pool) {
        let mut samples = VecDeque::new();
        self.check(primary, &mut samples).await;
    }

    /// Asks every replica now (the monitor's tick).
    async fn check(&self, primary: &Pool, samples: &mut VecDeque<(u64, Instant)>) {
        let now = Instant::now();
        match primary.get().await {
            Ok(client) => match client.query_one(PRIMARY_LSN_SQL, &[]).await {
                Ok(row) => samples.push_back((row.get::<_, i64>(0).unsigned_abs(), now)),
                Err(err) => tracing::debug!(error = %err, "sampling the primary's position"),
            },
            Err(err) => tracing::debug!(error = %err, "sampling the primary's position"),
        }
        for replica in &self.replicas {
            let asked = async {
                let client = replica.pool.get().await.map_err(|err| err.to_string())?;
                let row = client
                    .query_one(REPLICA_LSN_SQL, &[])
                    .await
                    .map_err(|err| err.to_string())?;
                Ok::<(bool, u64), String>((row.get(0), row.get::<_, i64>(1).unsigned_abs()))
            };
            match tokio::time::timeout(Duration::from_secs(5), asked).await {
                Err(_) => self.mark_down(replica, "down", "no answer within 5 s"),
                Ok(Err(err)) => self.mark_down(replica, "down", &err),
                Ok(Ok((false, _))) => self.mark_down(
                    replica,
                    "not in recovery",
                    "the server is not a standby (promoted, or a primary's URL)",
                ),
                Ok(Ok((true, replayed))) => {
                    replica.replay_lsn.fetch_max(replayed, Ordering::Relaxed);
                    let oldest_unreplayed = samples
                        .iter()
                        .find(|(lsn, _)| *lsn > replayed)
                        .map(|(_, at)| now.saturating_duration_since(*at));
                    let lag = oldest_unreplayed.unwrap_or_default();
                    replica.lag_ms.store(
                        u64::try_from(lag.as_millis()).unwrap_or(u64::MAX),
                        Ordering::Relaxed,
                    );
                    if lag > self.settings.max_lag {
                        self.mark_down(
                            replica,
                            "lagging",
                            "behind the primary by more than database.read_max_lag",
                        );
                    } else {
                        self.mark_up(replica);
                    }
                }
            }
        }
        // Samples every replica has replayed are no longer needed, nor
        // those older than any bound.
        let replayed_by_all = self
            .replicas
            .iter()
            .map(|r| r.replay_lsn.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        let keep = self.settings.max_lag * 2 + self.settings.check_interval;
        while samples.front().is_some_and(|(lsn, at)| {
            *lsn <= replayed_by_all || now.saturating_duration_since(*at) > keep
        }) {
            samples.pop_front();
        }
        // A caller's write every replica has replayed needs no more care;
        // nor one older than the lag bound (a replica still behind it is
        // skipped as lagging).
        let forget_after = self.settings.max_lag + self.settings.check_interval * 3;
        if let Ok(mut writes) = self.writes.lock() {
            writes.retain(|_, w| {
                w.lsn > replayed_by_all && now.saturating_duration_since(w.at) < forget_after
            });
        }
    }
}

async fn monitor(set: std::sync::Weak<Replicas>, primary: Pool) {
    let mut samples = VecDeque::new();
    loop {
        let Some(replicas) = set.upgrade() else {
            return;
        };
        replicas.check(&primary, &mut samples).await;
        let interval = replicas.settings.check_interval;
        drop(replicas);
        tokio::time::sleep(interval).await;
    }
}
