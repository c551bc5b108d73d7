//! The scheduler of `cron.job` (pg_cron's API, migration `cron`): one per
//! tenant database, on the tenant's administrative login.
//!
//! A quarter of a second before every second boundary it reads the active
//! jobs of its database and, for each job whose schedule (parsed by
//! `sovra-cron`) fires by that boundary since the last tick it ran for,
//! takes a warm connection and waits on it for the boundary (`sleep_until`
//! the instant it falls on); then one statement takes the job's lock,
//! claims the tick and records the start, and the job runs:
//!
//! - **once per tick, however many instances watch the database**: the
//!   claim is a compare-and-set on `sovra.cron_job_state.last_tick`, under a
//!   session advisory lock per job that the run holds until it ends, so a
//!   job also never runs twice at once;
//! - **once after downtime**: the claimed tick is "now", so the ticks missed
//!   while nothing ran collapse into one run;
//! - **as its owner**: a superuser's job runs after `SET ROLE` to it; any
//!   other role's job runs inside a `SECURITY DEFINER` function owned by
//!   that role (`sovra.cron_run`), where PostgreSQL refuses `SET ROLE`,
//!   `RESET ROLE` and `SET SESSION AUTHORIZATION`, so the job never gets the
//!   scheduler's (superuser) rights;
//! - **recorded**: a row in `cron.job_run_details` (`running`, then
//!   `succeeded` with a command tag or `failed` with the error message).
//!
//! Runs use a small pool of warm connections (`cron.max_running`), reset
//! with `DISCARD ALL` after each job.
//!
//! Rows of `cron.job_run_details` older than the retention, and expired
//! `Idempotency-Key` responses, are deleted once a minute.
//!
//! While its database has no active job, the scheduler reads nothing but
//! the minute's housekeeping: its connection listens on `sovra_cron`, which
//! a statement trigger on `cron.job` notifies when a job is scheduled,
//! changed or removed, and it wakes for that or for the housekeeping.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sovra_pg::tokio_postgres::{self, Client};

/// Advisory lock space of running jobs ("cron" in the high bytes).
const LOCK_SPACE: i64 = 0x6372_6f6e_0000_0000;

/// How the scheduler behaves.
#[derive(Clone, Debug)]
pub struct CronSettings {
    /// Runs jobs at all.
    pub enabled: bool,
    /// Jobs of this database that may run at the same time.
    pub max_running: usize,
    /// Age after which rows of `cron.job_run_details` are deleted (0: kept).
    pub history_days: u64,
}

impl Default for CronSettings {
    fn default() -> Self {
        CronSettings {
            enabled: true,
            max_running: 8,
            history_days: 7,
        }
    }
}

impl CronSettings {
    /// The settings of the `cron.*` options.
    pub fn from_config(config: &sovra_config::Config) -> CronSettings {
        CronSettings {
            enabled: config.cron.enabled,
            max_running: usize::try_from(config.cron.max_running).unwrap_or(8),
            history_days: config.cron.history_days,
        }
    }
}

/// The running scheduler of one database; stops when dropped.
#[derive(Debug)]
pub struct CronScheduler {
    task: tokio::task::JoinHandle<()>,
    has_jobs: Arc<AtomicBool>,
}

impl Drop for CronScheduler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CronScheduler {
    /// Starts the scheduler loop on `admin` (an administrative login on the
    /// tenant's database).
    pub fn start(admin: tokio_postgres::Config, settings: CronSettings) -> Option<CronScheduler> {
        if !settings.enabled {
            return None;
        }
        let scheduler = Scheduler::new(admin, settings);
        let has_jobs = scheduler.has_jobs.clone();
        Some(CronScheduler {
            task: tokio::spawn(scheduler.run()),
            has_jobs,
        })
    }

    /// Whether the database had active jobs at the last pass (a tenant with
    /// jobs is not stopped for idleness, or they would not run).
    pub fn has_jobs(&self) -> bool {
        self.has_jobs.load(Ordering::Relaxed)
    }
}

/// One pass's view of a job.
struct Due {
    jobid: i64,
    command: String,
    username: String,
    last_tick: i64,
}

/// The scheduler's state, shared with the runs it spawns.
#[derive(Clone)]
pub struct Scheduler {
    admin: tokio_postgres::Config,
    settings: CronSettings,
    /// Jobs this instance is running now.
    running: Arc<Mutex<HashSet<i64>>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// Active jobs seen at the last pass.
    has_jobs: Arc<AtomicBool>,
    /// The connections jobs run on (kept warm: opening one per run would
    /// delay its start).
    pool: Option<sovra_pg::Pool>,
}

/// How long before a second boundary the scheduler reads the jobs due at
/// it and takes their connections.
const PLAN_AHEAD: Duration = Duration::from_millis(250);

/// How often the scheduler deletes what is past its retention.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// The channel a change of `cron.job` is announced on (migration
/// `cron_notify`).
const CHANGED_CHANNEL: &str = "sovra_cron";

/// The next whole second after `after` (seconds since the epoch) that is
/// still to come, and the instant it falls on.
fn next_boundary(after: i64) -> (i64, tokio::time::Instant) {
    let instant = tokio::time::Instant::now();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let tick = (secs + 1).max(after + 1);
    let ahead = Duration::from_secs(u64::try_from(tick - secs).unwrap_or(1))
        .saturating_sub(Duration::from_nanos(u64::from(now.subsec_nanos())));
    (tick, instant + ahead)
}

impl Scheduler {
    pub fn new(admin: tokio_postgres::Config, settings: CronSettings) -> Scheduler {
        let slots = Arc::new(tokio::sync::Semaphore::new(settings.max_running.max(1)));
        let pool = sovra_pg::pool::build(
            admin.clone(),
            settings.max_running.max(1),
            Duration::from_secs(10),
        )
        .ok();
        Scheduler {
            admin: admin.clone(),
            settings,
            running: Arc::new(Mutex::new(HashSet::new())),
            slots,
            has_jobs: Arc::new(AtomicBool::new(false)),
            pool,
        }
    }

    async fn run(self) {
        // Its connection listens for changes of `cron.job` (a trigger
        // notifies `sovra_cron` at their commit, migration
        // `cron_notify`): while the database has no active job, the
        // scheduler reads nothing (but its housekeeping, once a minute)
        // until one is scheduled, so a started tenant without jobs costs no statement a
        // second (and a thousand of them no burst of a thousand at every
        // boundary).
        let changed = Arc::new(tokio::sync::Notify::new());
        let mut client: Option<Client> = None;
        let mut planned: i64 = 0;
        let mut housekept: Option<tokio::time::Instant> = None;
        let mut idle = false;
        loop {
            if idle && client.as_ref().is_some_and(|c| !c.is_closed()) {
                let due =
                    housekept.map_or_else(tokio::time::Instant::now, |at| at + HOUSEKEEPING_EVERY);
                tokio::select! {
                    () = changed.notified() => {}
                    () = tokio::time::sleep_until(due) => {}
                }
            }
            // Plan the next second boundary ahead of it: read the jobs,
            // take each due job's connection and wait on it for the exact
            // boundary, so the run's start costs one statement after it.
            let (tick, boundary) = next_boundary(planned);
            tokio::time::sleep_until(boundary.checked_sub(PLAN_AHEAD).unwrap_or(boundary)).await;
            planned = tick;
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                // Listening before the first read: a job scheduled after
                // it is announced, one scheduled before it is read.
                client =
                    sovra_pg::connect_listening(&self.admin, &[CHANGED_CHANNEL], changed.clone())
                        .await
                        .ok();
            }
            let Some(c) = client.as_ref() else {
                idle = false;
                tokio::time::sleep_until(boundary).await;
                continue;
            };
            idle = match self.pass_at(c, tick, Some(boundary)).await {
                Ok(_) => !self.has_jobs.load(Ordering::Relaxed),
                Err(err) => {
                    tracing::debug!(error = %err, "cron pass failed");
                    false
                }
            };
            tokio::time::sleep_until(boundary).await;
            if housekept.is_none_or(|at| at.elapsed() >= HOUSEKEEPING_EVERY) {
                housekept = Some(tokio::time::Instant::now());
                self.housekeeping(c).await;
            }
        }
    }

    /// What the scheduler deletes once a minute: runs in
    /// `cron.job_run_details` older than `cron.history_days`, and the
    /// expired responses of `Idempotency-Key`s (`sovra.idempotency_keys`).
    pub async fn housekeeping(&self, client: &Client) {
        if self.settings.history_days > 0 {
            let days = i32::try_from(self.settings.history_days).unwrap_or(i32::MAX);
            if let Err(err) = client
                .execute(
                    "delete from cron.job_run_details
                     where start_time < now() - make_interval(days => $1)",
                    &[&days],
                )
                .await
            {
                tracing::debug!(error = %err, "pruning cron.job_run_details failed");
            }
        }
        if let Err(err) = client
            .batch_execute("delete from sovra.idempotency_keys where expires_at < now()")
            .await
        {
            tracing::debug!(error = %err, "pruning sovra.idempotency_keys failed");
        }
    }

    /// Starts the runs of every job due at `now` (seconds since the epoch),
    /// each on a connection of its own, and returns their handles.
    pub async fn pass(
        &self,
        client: &Client,
        now: i64,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, tokio_postgres::Error> {
        self.pass_at(client, now, None).await
    }

    /// [`Self::pass`] for the tick `now`, planned ahead of it: each run
    /// takes its connection at once and claims the tick at `start` (the
    /// instant of the second `now`), or at once without one.
    async fn pass_at(
        &self,
        client: &Client,
        now: i64,
        start: Option<tokio::time::Instant>,
    ) -> Result<Vec<tokio::task::JoinHandle<()>>, tokio_postgres::Error> {
        let rows = client
            .query(
                "select j.jobid, j.schedule, j.command, j.username, s.last_tick
                 from cron.job j left join sovra.cron_job_state s using (jobid)
                 where j.active and j.database = current_database()
                 order by j.jobid",
                &[],
            )
            .await?;
        self.has_jobs.store(!rows.is_empty(), Ordering::Relaxed);
        let mut started = Vec::new();
        for row in rows {
            let jobid: i64 = row.get(0);
            let schedule: String = row.get(1);
            let Some(last_tick) = row.get::<_, Option<i64>>(4) else {
                // First seen: it runs from its next tick on.
                client
                    .execute(
                        "insert into sovra.cron_job_state (jobid, last_tick) values ($1, $2)
                         on conflict do nothing",
                        &[&jobid, &now],
                    )
                    .await?;
                continue;
            };
            let Ok(parsed) = sovra_cron::parse(&schedule) else {
                continue;
            };
            if parsed.next_after(last_tick).is_none_or(|next| next > now) {
                continue;
            }
            if !self
                .running
                .lock()
                .map(|mut r| r.insert(jobid))
                .unwrap_or(false)
            {
                continue;
            }
            let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                self.forget(jobid);
                continue;
            };
            let due = Due {
                jobid,
                command: row.get(2),
                username: row.get(3),
                last_tick,
            };
            let this = self.clone();
            started.push(tokio::spawn(async move {
                if let Err(err) = this.run_job(&due, now, start).await {
                    tracing::warn!(jobid = due.jobid, error = %err, "cron job could not be run");
                }
                this.forget(due.jobid);
                drop(permit);
            }));
        }
        Ok(started)
    }

    fn forget(&self, jobid: i64) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&jobid);
        }
    }

    /// Claims the tick and runs one job on a pooled connection, which is
    /// reset afterwards (`DISCARD ALL`: role, settings, advisory locks,
    /// temporary tables, listeners). The connection is taken first; the
    /// claim waits for `start` when given.
    async fn run_job(
        &self,
        due: &Due,
        now: i64,
        start: Option<tokio::time::Instant>,
    ) -> Result<(), tokio_postgres::Error> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let client = match pool.get().await {
            Ok(client) => client,
            Err(err) => {
                tracing::warn!(jobid = due.jobid, error = %err, "no connection for a cron job");
                return Ok(());
            }
        };
        if let Some(start) = start {
            tokio::time::sleep_until(start).await;
        }
        let result = self.claim_and_run(&client, due, now).await;
        // Whatever the job left open ends here; the lock goes with it.
        if client.batch_execute("rollback; discard all").await.is_err() {
            let _ = sovra_pg::PooledClient::take(client);
        }
        result
    }

    async fn claim_and_run(
        &self,
        client: &Client,
        due: &Due,
        now: i64,
    ) -> Result<(), tokio_postgres::Error> {
        let key = LOCK_SPACE | (due.jobid & 0xffff_ffff);
        // One statement (one round trip, no separate parse) takes the
        // job's lock, claims the tick by compare-and-set and records the
        // start. Without the lock (running elsewhere: it runs once after
        // that run ends) or the tick (claimed elsewhere) there is no row.
        // A lock taken without the claim goes with `DISCARD ALL`.
        let claimed = client
            .query_typed(
                "with locked as materialized (select pg_try_advisory_lock($4) as ok),
                 claimed as (
                   update sovra.cron_job_state set last_tick = $2
                   where jobid = $1 and last_tick = $3 and (select ok from locked)
                   returning jobid)
                 insert into cron.job_run_details
                   (jobid, job_pid, database, username, command, status, start_time)
                 select jobid, pg_backend_pid(), current_database(), $5, $6, 'running',
                        clock_timestamp()
                 from claimed
                 returning runid",
                &[
                    (&due.jobid, tokio_postgres::types::Type::INT8),
                    (&now, tokio_postgres::types::Type::INT8),
                    (&due.last_tick, tokio_postgres::types::Type::INT8),
                    (&key, tokio_postgres::types::Type::INT8),
                    (&due.username, tokio_postgres::types::Type::TEXT),
                    (&due.command, tokio_postgres::types::Type::TEXT),
                ],
            )
            .await?;
        let Some(row) = claimed.first() else {
            return Ok(());
        };
        let runid: i64 = row.get(0);
        let outcome = execute_as_owner(client, &due.username, &due.command).await;
        let _ = client.batch_execute("rollback; reset role").await;
        let (status, message) = match outcome {
            Ok(tag) => ("succeeded", tag),
            Err(err) => ("failed", error_text(&err)),
        };
        client
            .execute(
                "update cron.job_run_details
                 set status = $2, return_message = $3, end_time = clock_timestamp()
                 where runid = $1",
                &[&runid, &status, &message],
            )
            .await?;
        Ok(())
    }
}

/// The error as pg_cron records it: PostgreSQL's message.
fn error_text(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("ERROR:  {}", db.message()),
        None => err.to_string(),
    }
}

/// A command tag in PostgreSQL's form for the job's first statement
/// (`DELETE 3`, `INSERT 0 1`, `SELECT 1`, `VACUUM`), from the rows the last
/// statement processed.
pub fn command_tag(command: &str, rows: u64) -> String {
    let word: String = command
        .trim_start()
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect::<String>()
        .to_ascii_uppercase();
    match word.as_str() {
        "INSERT" => format!("INSERT 0 {rows}"),
        "SELECT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE" | "WITH" => {
            let word = if word == "WITH" { "SELECT" } else { &word };
            format!("{word} {rows}")
        }
        "" => "OK".to_owned(),
        _ => word,
    }
}

/// Runs `command` as `owner`, answering its command tag.
async fn execute_as_owner(
    client: &Client,
    owner: &str,
    command: &str,
) -> Result<String, tokio_postgres::Error> {
    let superuser: Option<bool> = client
        .query_opt(
            "select rolsuper from pg_roles where rolname = $1",
            &[&owner],
        )
        .await?
        .map(|row| row.get(0));
    match superuser {
        Some(true) => {
            client
                .query("select set_config('role', $1, false)", &[&owner])
                .await?;
            let mut rows = 0;
            for message in client.simple_query(command).await? {
                if let tokio_postgres::SimpleQueryMessage::CommandComplete(n) = message {
                    rows = n;
                }
            }
            Ok(command_tag(command, rows))
        }
        _ => {
            // An unknown role is refused by sovra.cron_run.
            let rows: i64 = client
                .query_one("select sovra.cron_run($1, $2)", &[&owner, &command])
                .await?
                .get(0);
            Ok(command_tag(command, u64::try_from(rows).unwrap_or(0)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::command_tag;

    #[test]
    fn command_tags() {
        assert_eq!(command_tag("delete from t", 3), "DELETE 3");
        assert_eq!(command_tag("  insert into t values (1)", 1), "INSERT 0 1");
        assert_eq!(command_tag("select 1", 1), "SELECT 1");
        assert_eq!(
            command_tag("with x as (select 1) select * from x", 1),
            "SELECT 1"
        );
        assert_eq!(command_tag("vacuum analyze t", 0), "VACUUM");
        assert_eq!(command_tag("call p()", 0), "CALL");
        assert_eq!(command_tag("", 0), "OK");
    }
}
