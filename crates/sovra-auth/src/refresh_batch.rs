//! Group commit for token refreshes.
//!
//! Every refresh is a durable write (the old token retired, the session
//! touched, the successor stored), and a commit per refresh makes the
//! commit itself the limit. Concurrent refreshes are therefore collected by
//! one writer task per service and rotated together by one statement
//! ([`batch_sql`]) in one transaction: each caller is answered only after
//! PostgreSQL has answered that transaction's `COMMIT`, which with
//! `synchronous_commit = on` follows its WAL flush.
//!
//! There is no timer: a batch holds whatever arrived while the batches
//! before it were running (at most [`MAX_BATCH`] refreshes; at most
//! [`IN_FLIGHT`] batches at once), so a lone refresh waits for nothing and
//! a busy server commits many refreshes at once.
//!
//! The statement applies, row by row, the same rules as the one-token fast
//! path ([`crate::session::refresh_sql`]); a token it does not take (unknown,
//! reused, expired session, banned user) gets no row and its caller takes
//! the careful path, which says why. A batch never holds the same token
//! twice: a second refresh of a token goes into a later batch, which waits
//! on the token's row lock for the first to commit and then sees it, as two
//! concurrent refreshes always did (within `refresh_token_reuse_interval`
//! it gets the same successor; after it, reuse ends the session). When a batch fails (a trigger, a
//! failed commit, a lost connection) nothing of it was committed, or, if the
//! connection was lost after the commit, what was committed is what a retry
//! finds again; every caller of that batch then runs its refresh on its own,
//! so one bad row cannot fail the others, and none of them gets a token
//! that was not committed.
//!
//! Access tokens are still signed by each caller after the commit, by the
//! one function that mints them ([`crate::AuthService`]'s `sign_session`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use sovra_pg::Pool;
use sovra_pg::tokio_postgres::Row;
use sovra_pg::tokio_postgres::types::{ToSql, Type};
use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore, mpsc, oneshot};

use crate::user;

/// The most refreshes one batch rotates.
pub const MAX_BATCH: usize = 64;

/// Refreshes that may wait for the writer; more wait to be queued.
const QUEUE: usize = 4 * MAX_BATCH;

/// Batches that may run at once, each on its own connection: one batch's
/// commit (the WAL flush) overlaps the next one's statement. Concurrent
/// batches order themselves as concurrent refreshes always have: on the
/// token's row lock (a second refresh of a token waits for the first to
/// commit, then sees it). Should two of them ever deadlock (two tokens of
/// each of two sessions, in opposite orders), PostgreSQL fails one and its
/// refreshes run one by one.
const IN_FLIGHT: usize = 4;

/// What a batch did with one refresh.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Rotated and committed: the user, `session_id`, `session_aal` and
    /// `session_amr`, as [`crate::session::refresh_sql`] returns them.
    Rotated(Box<Row>),
    /// Committed without this token: the careful path says why.
    NotTaken,
    /// The batch failed and nothing of this refresh is known to be
    /// committed: run it alone.
    Failed,
}

struct Job {
    hash: String,
    child_hash: String,
    reply: oneshot::Sender<Outcome>,
}

/// Counters, for tests and metrics.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Batches committed (or failed).
    pub batches: AtomicU64,
    /// Refreshes those batches held.
    pub refreshes: AtomicU64,
    /// Refreshes queued and not yet answered.
    pub waiting: AtomicUsize,
}

/// The writer's handle: a queue, a gate tests can hold, and counters.
#[derive(Debug)]
pub(crate) struct RefreshBatcher {
    queue: OnceLock<mpsc::Sender<Job>>,
    gate: Arc<Mutex<()>>,
    stats: Arc<BatchStats>,
    reuse_interval: f64,
    inactivity: f64,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl RefreshBatcher {
    pub(crate) fn new(reuse_interval: i64, inactivity: i64) -> RefreshBatcher {
        RefreshBatcher {
            queue: OnceLock::new(),
            gate: Arc::new(Mutex::new(())),
            stats: Arc::new(BatchStats::default()),
            reuse_interval: reuse_interval as f64,
            inactivity: inactivity as f64,
        }
    }

    pub(crate) fn stats(&self) -> &BatchStats {
        &self.stats
    }

    /// Holds the writer before its next batch until the guard is dropped
    /// (tests use it to make a batch of known refreshes).
    pub(crate) async fn hold(&self) -> OwnedMutexGuard<()> {
        self.gate.clone().lock_owned().await
    }

    /// Rotates the token with hash `hash` to the successor with hash
    /// `child_hash` in the next batch. The writer starts with the first
    /// refresh (inside the runtime) and ends when the service is dropped.
    pub(crate) async fn rotate(&self, pool: &Pool, hash: String, child_hash: String) -> Outcome {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            let writer = Writer {
                pool: pool.clone(),
                gate: self.gate.clone(),
                stats: self.stats.clone(),
                reuse_interval: self.reuse_interval,
                inactivity: self.inactivity,
            };
            tokio::spawn(Arc::new(writer).run(receiver));
            sender
        });
        let (reply, answer) = oneshot::channel();
        let job = Job {
            hash,
            child_hash,
            reply,
        };
        if queue.send(job).await.is_err() {
            return Outcome::Failed;
        }
        // Counted once queued, so that a test seeing N waiting knows that
        // the writer can take all N.
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        let _answered = Answered(&self.stats);
        answer.await.unwrap_or(Outcome::Failed)
    }
}

/// Counts a submitted refresh as answered when its caller stops waiting
/// (answered, or the request was dropped).
struct Answered<'a>(&'a BatchStats);

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

struct Writer {
    pool: Pool,
    gate: Arc<Mutex<()>>,
    stats: Arc<BatchStats>,
    reuse_interval: f64,
    inactivity: f64,
}

impl Writer {
    async fn run(self: Arc<Self>, mut receiver: mpsc::Receiver<Job>) {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        // Refreshes taken from the queue but not yet in a batch (a token
        // already in the batch being formed waits for the next one).
        let mut pending: Vec<Job> = Vec::new();
        loop {
            if pending.is_empty() {
                match receiver.recv().await {
                    Some(job) => pending.push(job),
                    None => return,
                }
            }
            // A batch is formed only when it can start: while every slot is
            // busy, the next batch grows.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let gate = self.gate.lock().await;
            while pending.len() < QUEUE {
                match receiver.try_recv() {
                    Ok(job) => pending.push(job),
                    Err(_) => break,
                }
            }
            let batch = take_batch(&mut pending);
            drop(gate);
            if batch.is_empty() {
                continue;
            }
            let writer = self.clone();
            tokio::spawn(async move {
                writer.commit(batch).await;
                drop(slot);
            });
        }
    }

    /// Runs one batch and answers its callers.
    async fn commit(&self, batch: Vec<Job>) {
        let hashes: Vec<&str> = batch.iter().map(|j| j.hash.as_str()).collect();
        let children: Vec<&str> = batch.iter().map(|j| j.child_hash.as_str()).collect();
        let result = async {
            let client = self.pool.get().await.map_err(|err| err.to_string())?;
            let statement = client
                .prepare_typed_cached(batch_sql(), &BATCH_TYPES)
                .await
                .map_err(|err| err.to_string())?;
            // One round trip: the transaction with its plan settings, the
            // batch, the commit. A failed batch makes the commit a
            // rollback; its error is what counts.
            let params: [&(dyn ToSql + Sync); 4] =
                [&hashes, &self.reuse_interval, &self.inactivity, &children];
            // `biased`: polled (and so sent) in this order.
            let (begun, rows, committed) = tokio::join!(
                biased;
                client.batch_execute(BATCH_BEGIN),
                client.query(&statement, &params),
                client.batch_execute("COMMIT"),
            );
            if let Err(err) = &rows
                && err
                    .code()
                    .is_some_and(|code| code.code() == "26000" || code.code() == "0A000")
            {
                // The statement is gone or its result changed (a migration
                // altered a table it reads): prepare it again next time.
                client.statement_cache.remove(batch_sql(), &BATCH_TYPES);
            }
            begun
                .and(rows)
                .and_then(|rows| committed.map(|()| rows))
                .map_err(|err| err.to_string())
        }
        .await;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .refreshes
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        match result {
            Ok(rows) => {
                let mut rotated: Vec<Option<Row>> = batch.iter().map(|_| None).collect();
                for row in rows {
                    let index: i64 = row.get("batch_index");
                    if let Some(slot) = usize::try_from(index - 1)
                        .ok()
                        .and_then(|i| rotated.get_mut(i))
                    {
                        *slot = Some(row);
                    }
                }
                for (job, row) in batch.into_iter().zip(rotated) {
                    let outcome =
                        row.map_or(Outcome::NotTaken, |row| Outcome::Rotated(Box::new(row)));
                    let _ = job.reply.send(outcome);
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, refreshes = batch.len(), "a batch of token refreshes failed; running them one by one");
                for job in batch {
                    let _ = job.reply.send(Outcome::Failed);
                }
            }
        }
    }
}

/// The parameter types of [`batch_sql`].
const BATCH_TYPES: [Type; 4] = [
    Type::TEXT_ARRAY,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::TEXT_ARRAY,
];

/// Begins a batch's transaction with the settings its cached plan is made
/// under. The batch is a prepared statement whose one generic plan serves
/// every batch on the connection (planning it took about as much of
/// PostgreSQL's time as running it). A generic plan made while
/// `auth.refresh_tokens` was small would hash-join a full scan of it and
/// keep doing so as the table grew (every batch read every token ever
/// issued, until an ANALYZE; `bench/RESULTS.md`). So the plan is made and
/// used with sequential scans, hash and merge joins off: every table of
/// the batch is then reached through its index by the batch's keys
/// (nested loops), which is the right plan for a batch of at most
/// [`MAX_BATCH`] tokens at any table size. The settings are
/// transaction-local and end with the batch.
const BATCH_BEGIN: &str = "BEGIN; SET LOCAL plan_cache_mode = force_generic_plan; \
     SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
     SET LOCAL enable_mergejoin = off";

/// Takes the next batch out of `pending`: at most [`MAX_BATCH`] refreshes
/// of distinct tokens whose callers still wait, in arrival order; the rest
/// stays for the next batch.
fn take_batch(pending: &mut Vec<Job>) -> Vec<Job> {
    let mut seen = HashSet::new();
    let mut batch = Vec::new();
    let mut rest = Vec::new();
    for job in pending.drain(..) {
        if job.reply.is_closed() {
            // The request is gone: nobody would get the new token.
            continue;
        }
        if batch.len() < MAX_BATCH && seen.insert(job.hash.clone()) {
            batch.push(job);
        } else {
            rest.push(job);
        }
    }
    *pending = rest;
    batch
}

/// Rotates many tokens in one statement: `$1` the presented tokens' hashes,
/// `$4` their successors' hashes (same order, tokens distinct), `$2` the
/// reuse interval and `$3` the inactivity limit in seconds. Each row is
/// [`crate::session::refresh_sql`]'s rule applied to one token, and comes
/// back with its position in the arrays (`batch_index`, from 1); tokens are
/// locked in the order of their ids. Public for the benchmark.
pub fn batch_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "with req as (
               select r.hash, r.child, r.batch_index
                 from unnest($1::text[], $4::text[]) with ordinality as r(hash, child, batch_index)),
             t as (
               select rt.id, rt.session_id, req.hash, req.child, req.batch_index
                 from req join auth.refresh_tokens rt on rt.token = req.hash
                where not coalesce(rt.revoked, false)
                   or (rt.updated_at >= now() - make_interval(secs => $2)
                       and not exists (select 1 from auth.refresh_tokens c
                                        where c.token = req.child and coalesce(c.revoked, false)))
                order by rt.id
                for update of rt),
             ok as (
               select t.id as token_id, t.hash, t.child, t.batch_index, s.id as session_id, s.user_id,
                      coalesce(s.aal, 'aal1') as aal
                 from t
                 join auth.sessions s on s.id = t.session_id
                 join auth.users b on b.id = s.user_id
                where (s.not_after is null or s.not_after > now())
                  and ($3::float8 = 0 or coalesce(s.refreshed_at::timestamptz, s.created_at)
                                  > now() - make_interval(secs => $3::float8))
                  and b.deleted_at is null
                  and (b.banned_until is null or b.banned_until <= now())),
             old as (
               update auth.refresh_tokens r set revoked = true, updated_at = now()
                 from ok where r.id = ok.token_id and not coalesce(r.revoked, false)),
             s2 as (
               update auth.sessions s set refreshed_at = now() at time zone 'utc', updated_at = now()
                 from ok where s.id = ok.session_id),
             n as (
               insert into auth.refresh_tokens (token, user_id, revoked, created_at, updated_at, parent, session_id)
               select ok.child, ok.user_id::text, false, now(), now(), ok.hash, ok.session_id from ok
               on conflict (token) do nothing)
             select ok.batch_index, {}, ok.session_id, ok.aal as session_aal,
                    coalesce((select json_agg(json_build_object(
                         'method', c.authentication_method,
                         'timestamp', extract(epoch from c.updated_at)::int8)
                       order by c.updated_at desc)
                     from auth.mfa_amr_claims c where c.session_id = ok.session_id), '[]'::json) as session_amr
               from ok join auth.users u on u.id = ok.user_id",
            user::user_columns()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(hash: &str) -> (Job, oneshot::Receiver<Outcome>) {
        let (reply, answer) = oneshot::channel();
        (
            Job {
                hash: hash.to_owned(),
                child_hash: format!("{hash}'"),
                reply,
            },
            answer,
        )
    }

    #[test]
    fn a_batch_holds_each_token_once_and_keeps_the_rest_in_order() {
        let (a, _ra) = job("a");
        let (b, _rb) = job("b");
        let (a2, _ra2) = job("a");
        let (c, _rc) = job("c");
        let (a3, _ra3) = job("a");
        let mut pending = vec![a, b, a2, c, a3];
        let batch = take_batch(&mut pending);
        let hashes = |jobs: &[Job]| jobs.iter().map(|j| j.hash.clone()).collect::<Vec<_>>();
        assert_eq!(hashes(&batch), ["a", "b", "c"]);
        assert_eq!(hashes(&pending), ["a", "a"]);
        let batch = take_batch(&mut pending);
        assert_eq!(hashes(&batch), ["a"]);
        assert_eq!(hashes(&pending), ["a"]);
    }

    #[test]
    fn a_batch_is_bounded_and_skips_callers_that_left() {
        let mut pending = Vec::new();
        let mut answers = Vec::new();
        for i in 0..MAX_BATCH + 5 {
            let (j, r) = job(&format!("t{i}"));
            pending.push(j);
            answers.push(r);
        }
        // The first caller went away.
        drop(answers.remove(0));
        let batch = take_batch(&mut pending);
        assert_eq!(batch.len(), MAX_BATCH);
        assert_eq!(batch[0].hash, "t1");
        assert_eq!(pending.len(), 4);
        assert_eq!(pending[0].hash, format!("t{}", MAX_BATCH + 1));
    }
}
