//! The delivery worker: claims due rows of `net.http_request_queue`,
//! sends them, and records the outcomes.
//!
//! A claim is one statement that takes up to as many due rows as there are
//! free delivery slots (`FOR UPDATE SKIP LOCKED`, so instances sharing the
//! database never take the same row), counts the attempt and moves
//! `next_attempt_at` to the end of a lease (the request's timeout plus
//! [`LEASE_MARGIN`]). A worker that dies mid-delivery leaves its rows to
//! be claimed again when their leases end: delivery is at least once.
//! Outcomes are written in batches by a second connection: a finished
//! request leaves the queue and gets its `net._http_response` row in one
//! statement; a retry gets its next time; one that failed its last
//! attempt goes to `net.http_request_dead`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sovra_pg::tokio_postgres;
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit, Semaphore, mpsc};

use crate::NetSettings;
use crate::addr::Policy;
use crate::rate::RateLimit;
use crate::retry::{Verdict, backoff, parse_retry_after, status_verdict};

/// Added to a request's timeout to make its lease.
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// How long finished requests' responses are kept (pg_net's `ttl`).
const RESPONSE_TTL: &str = "6 hours";

/// The claim. The rows are taken through `id = any(array(…))`, not a join
/// with the locking subquery: as a prepared statement, the join's generic
/// plan (PostgreSQL's plan cache switches to it after five executions)
/// guesses 10% of the queue for `limit $1` and hashes a sequential scan of
/// the whole queue on every claim; with the array every plan reads the
/// claimed rows by primary key.
const CLAIM: &str = "
    update net.http_request_queue q
       set attempts = q.attempts + 1,
           next_attempt_at = now() + (q.timeout_milliseconds + $2::int) * interval '1 millisecond'
     where q.id = any(array(
             select id from net.http_request_queue
              where next_attempt_at <= now()
              order by next_attempt_at, id
              limit $1
              for update skip locked))
    returning q.id, q.method, q.url, q.headers, q.body, q.timeout_milliseconds, q.attempts";

const FINISH: &str = "
    with input as (
      select * from unnest($1::bigint[], $2::int[], $3::text[], $4::jsonb[], $5::text[],
                           $6::bool[], $7::text[], $8::bool[])
        as t(id, status_code, content_type, headers, content, timed_out, error_msg, dead)
    ), gone as (
      delete from net.http_request_queue q using input i where q.id = i.id
      returning q.*, i.dead, coalesce(i.error_msg, 'HTTP status ' || i.status_code) as err
    ), buried as (
      insert into net.http_request_dead
        (id, method, url, headers, body, timeout_milliseconds, attempts, last_error, created)
      select id, method, url, headers, body, timeout_milliseconds, attempts, err, created
        from gone where dead
      on conflict (id) do update set attempts = excluded.attempts, last_error = excluded.last_error,
        failed_at = now()
    )
    insert into net._http_response
      (id, status_code, content_type, headers, content, timed_out, error_msg)
    select id, status_code, content_type, headers, content, timed_out, error_msg from input
    on conflict (id) do update set status_code = excluded.status_code,
      content_type = excluded.content_type, headers = excluded.headers,
      content = excluded.content, timed_out = excluded.timed_out,
      error_msg = excluded.error_msg, created = now()";

/// Milliseconds until the first row of the queue is due (negative: due
/// now), or null for an empty queue; by the claim's index.
const NEXT_DUE: &str = "
    select (extract(epoch from (select next_attempt_at from net.http_request_queue
                                 order by next_attempt_at limit 1) - now()) * 1000)::bigint";

/// How long an idle worker (nothing due, nothing in flight) waits without
/// a notification before it looks at the queue again.
const IDLE_LOOK: Duration = Duration::from_secs(60);

const RETRY: &str = "
    update net.http_request_queue q
       set next_attempt_at = now() + t.delay_ms * interval '1 millisecond', last_error = t.err
      from unnest($1::bigint[], $2::bigint[], $3::text[]) t(id, delay_ms, err)
     where q.id = t.id";

/// The worker's sessions commit asynchronously: a claim or an outcome
/// whose commit is lost when PostgreSQL itself crashes only sends its
/// requests again (the claim's lease undone, or the lease ending with the
/// row still queued), which at-least-once delivery allows; a `kill -9` of
/// Sovra loses nothing either way. Without it every claim and every
/// batch of outcomes waits for its own WAL flush.
///
/// Their prepared statements each run one generic plan, made on first use
/// (no planning per claim or per batch of outcomes) with sequential scans,
/// hash and merge joins off, so that the plan reaches the queue through its
/// indexes (the claimed or finished ids, the due time) at any queue size.
/// A generic plan made under the default settings while the queue was
/// small (and analyzed) scans the whole queue on every claim and every
/// batch of outcomes for as long as it stays cached, a backlog included;
/// PostgreSQL's default `plan_cache_mode` switches to such a plan whenever
/// it estimates it no dearer than planning each time
/// (`the_worker_reads_the_queue_by_index_after_it_grew` fails with only the
/// `enable_*` settings taken out).
const SESSION: &str = "set synchronous_commit = off; set plan_cache_mode = force_generic_plan; \
     set enable_seqscan = off; set enable_hashjoin = off; set enable_mergejoin = off";

/// When every slot was busy (a backlog), the claimer, woken by the first
/// slot that frees, waits up to this long for a quarter of the slots to be
/// free and claims them with one statement, instead of one statement per
/// freed slot.
pub const GATHER: Duration = Duration::from_millis(5);

/// A claimed request.
#[derive(Debug)]
pub struct Request {
    pub id: i64,
    pub method: String,
    pub url: String,
    pub headers: Value,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
}

/// What `net._http_response` records.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Response {
    pub status_code: Option<i32>,
    pub content_type: Option<String>,
    pub headers: Option<Value>,
    pub content: Option<String>,
    pub timed_out: bool,
    pub error_msg: Option<String>,
}

/// One attempt's result.
#[derive(Debug)]
pub struct Attempt {
    pub response: Response,
    pub verdict: Verdict,
    pub retry_after: Option<Duration>,
}

/// What becomes of a request after an attempt.
#[derive(Debug)]
enum Outcome {
    Finished {
        id: i64,
        response: Response,
        dead: bool,
    },
    Retry {
        id: i64,
        delay: Duration,
        error: String,
    },
}

/// A refusal by the address policy, raised inside the resolver.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Resolves host names and hands reqwest only the addresses the policy
/// permits, so the connection goes to an address that was checked.
struct GuardedResolver {
    policy: Arc<Policy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut refusal = None;
            let permitted: Vec<SocketAddr> = found
                .into_iter()
                .filter(|addr| match policy.permits(&host, addr.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refusal.get_or_insert(why);
                        false
                    }
                })
                .collect();
            if permitted.is_empty() {
                let why = refusal.unwrap_or_else(|| format!("{host} did not resolve"));
                return Err(Box::new(Refused(why)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(permitted.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client every request of one tenant goes through: no redirects
/// followed (as pg_net; a redirect is recorded as its 3xx response), no
/// proxy from the environment, names resolved by [`GuardedResolver`].
pub fn client(settings: &NetSettings) -> reqwest::Client {
    let policy = Arc::new(settings.policy.clone());
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { policy }))
        .user_agent(concat!("sovra-net/", env!("CARGO_PKG_VERSION")))
        .pool_max_idle_per_host(settings.concurrency)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// Sends one request and reads its response (at most
/// `settings.max_response_bytes` of body).
pub async fn attempt(
    client: &reqwest::Client,
    settings: &NetSettings,
    request: &Request,
) -> Attempt {
    let failed = |error: String, verdict: Verdict, timed_out: bool| Attempt {
        response: Response {
            error_msg: Some(error),
            timed_out,
            ..Response::default()
        },
        verdict,
        retry_after: None,
    };
    let url = match reqwest::Url::parse(&request.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => url,
        Ok(_) => return failed("url must use http or https".into(), Verdict::Done, false),
        Err(err) => return failed(format!("invalid url: {err}"), Verdict::Done, false),
    };
    // Address literals never reach the resolver: check them here.
    let literal = url.host_str().and_then(|host| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .ok()
    });
    if let Some(ip) = literal
        && let Err(why) = settings.policy.permits(url.host_str().unwrap_or(""), ip)
    {
        return failed(why, Verdict::Done, false);
    }
    let method = match request.method.as_str() {
        "GET" => reqwest::Method::GET,
        "POST" => reqwest::Method::POST,
        "DELETE" => reqwest::Method::DELETE,
        other => return failed(format!("unsupported method {other}"), Verdict::Done, false),
    };
    let mut headers = reqwest::header::HeaderMap::new();
    if let Value::Object(map) = &request.headers {
        for (name, value) in map {
            let value = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.as_bytes()),
                reqwest::header::HeaderValue::from_str(&value),
            ) else {
                return failed(format!("invalid header {name:?}"), Verdict::Done, false);
            };
            headers.append(name, value);
        }
    }
    let body = request.body.clone().unwrap_or_default();
    if let Some(secret) = &settings.secret {
        let id = format!("msg_{}_{}", settings.tenant, request.id);
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let signature = secret.sign(&id, timestamp, &body);
        for (name, value) in [
            ("webhook-id", id),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", signature),
        ] {
            if let Ok(value) = reqwest::header::HeaderValue::from_str(&value) {
                headers.insert(name, value);
            }
        }
    }
    let mut builder = client
        .request(method, url)
        .headers(headers)
        .timeout(request.timeout);
    if request.body.is_some() {
        builder = builder.body(body);
    }
    let mut response = match builder.send().await {
        Ok(response) => response,
        Err(err) => return send_error(&err),
    };
    let status = response.status().as_u16();
    let mut header_map = Map::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).replace('\0', "");
        match header_map.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                header_map.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, now));
    let cap = settings.max_response_bytes;
    let too_large = || format!("response body exceeds net.max_response_size ({cap} bytes)");
    if response
        .content_length()
        .is_some_and(|len| len > cap as u64)
    {
        return failed(too_large(), Verdict::Done, false);
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > cap {
                    return failed(too_large(), Verdict::Done, false);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(err) => return send_error(&err),
        }
    }
    Attempt {
        response: Response {
            status_code: Some(i32::from(status)),
            content_type,
            headers: Some(Value::Object(header_map)),
            content: Some(String::from_utf8_lossy(&body).replace('\0', "")),
            timed_out: false,
            error_msg: None,
        },
        verdict: status_verdict(status),
        retry_after,
    }
}

/// The attempt of a request that got no (complete) response.
fn send_error(err: &reqwest::Error) -> Attempt {
    let mut message = err.to_string();
    let mut source = std::error::Error::source(err);
    let mut refused = None;
    while let Some(cause) = source {
        if let Some(refusal) = cause.downcast_ref::<Refused>() {
            refused = Some(refusal.0.clone());
        }
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if let Some(why) = refused {
        return Attempt {
            response: Response {
                error_msg: Some(why),
                ..Response::default()
            },
            verdict: Verdict::Done,
            retry_after: None,
        };
    }
    let timed_out = err.is_timeout();
    if timed_out {
        message = "Timeout of the request was reached".to_owned();
    }
    Attempt {
        response: Response {
            error_msg: Some(message),
            timed_out,
            ..Response::default()
        },
        verdict: if err.is_builder() {
            Verdict::Done
        } else {
            Verdict::Retry
        },
        retry_after: None,
    }
}

/// What to do after `attempt` of a request that had `attempt_no` attempts.
fn decide(settings: &NetSettings, id: i64, attempt_no: u32, attempt: Attempt) -> Outcome {
    match attempt.verdict {
        Verdict::Done => Outcome::Finished {
            id,
            response: attempt.response,
            dead: false,
        },
        Verdict::Retry if attempt_no >= settings.max_attempts => Outcome::Finished {
            id,
            response: attempt.response,
            dead: true,
        },
        Verdict::Retry => {
            let jitter: f64 = rand::random();
            let mut delay = backoff(attempt_no, settings.retry_base, settings.retry_cap, jitter);
            if let Some(after) = attempt.retry_after {
                delay = delay.max(after.min(Duration::from_secs(3600)));
            }
            let error = match (&attempt.response.error_msg, attempt.response.status_code) {
                (Some(error), _) => error.clone(),
                (None, Some(status)) => format!("HTTP status {status}"),
                (None, None) => "failed".to_owned(),
            };
            Outcome::Retry { id, delay, error }
        }
    }
}

/// What the worker counts (see [`crate::NetStats`]).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    claims: AtomicU64,
    claimed: AtomicU64,
}

impl Counters {
    pub(crate) fn stats(&self) -> crate::NetStats {
        crate::NetStats {
            claims: self.claims.load(Ordering::Relaxed),
            claimed: self.claimed.load(Ordering::Relaxed),
        }
    }
}

/// Runs the worker until the task is aborted, reconnecting after errors.
pub(crate) async fn run(
    settings: Arc<NetSettings>,
    admin: tokio_postgres::Config,
    counters: Arc<Counters>,
) {
    let http = client(&settings);
    loop {
        if let Err(err) = serve(&settings, &admin, &http, &counters).await {
            tracing::warn!(tenant = %settings.tenant, error = %err, "net worker: database connection lost; retrying");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn serve(
    settings: &Arc<NetSettings>,
    admin: &tokio_postgres::Config,
    http: &reqwest::Client,
    counters: &Counters,
) -> Result<(), tokio_postgres::Error> {
    let notify = Arc::new(Notify::new());
    let claimer = sovra_pg::connect_listening(admin, &["sovra_net"], notify.clone()).await?;
    let writer = sovra_pg::connect_one(admin).await?;
    tokio::try_join!(
        claimer.batch_execute(SESSION),
        writer.batch_execute(SESSION)
    )?;
    let (tx, rx) = mpsc::unbounded_channel::<Outcome>();
    let writer_task = tokio::spawn(write_outcomes(writer, rx, notify.clone()));
    let (claim, next_due) = tokio::try_join!(claimer.prepare(CLAIM), claimer.prepare(NEXT_DUE))?;
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let rate = (settings.rate_limit > 0).then(|| Mutex::new(RateLimit::new(settings.rate_limit)));
    let lease_margin = i32::try_from(LEASE_MARGIN.as_millis()).unwrap_or(5000);
    let mut last_sweep: Option<Instant> = None;
    // Whether the last claim took as many rows as it asked for (more may
    // be due).
    let mut saturated = false;
    loop {
        if writer_task.is_finished() || claimer.is_closed() {
            return Ok(());
        }
        if last_sweep.is_none_or(|at| at.elapsed() > Duration::from_secs(60)) {
            claimer
                .execute(
                    &format!("delete from net._http_response where created < now() - interval '{RESPONSE_TTL}'"),
                    &[],
                )
                .await?;
            last_sweep = Some(Instant::now());
        }
        // Wait for a free slot, then claim as many rows as slots are free
        // (one at a time under a rate limit, after its turn came).
        let Ok(mut permits) = slots.clone().acquire_owned().await else {
            return Ok(());
        };
        let limit = match &rate {
            Some(rate) => {
                let wait = rate.lock().await.take(Instant::now());
                tokio::time::sleep(wait).await;
                1
            }
            None => {
                if saturated {
                    gather(&slots, &mut permits, settings.concurrency).await;
                }
                let free = u32::try_from(slots.available_permits()).unwrap_or(0);
                if let Ok(more) = slots.clone().try_acquire_many_owned(free) {
                    permits.merge(more);
                }
                permits.num_permits()
            }
        };
        let rows = claimer
            .query(&claim, &[&(limit as i64), &lease_margin])
            .await?;
        let claimed = rows.len();
        if claimed > 0 {
            counters.claims.fetch_add(1, Ordering::Relaxed);
            counters
                .claimed
                .fetch_add(claimed as u64, Ordering::Relaxed);
        }
        for row in rows {
            // One permit per request (at most `limit` rows came back).
            let Some(permit) = permits.split(1) else {
                break;
            };
            let timeout_ms: i32 = row.get(5);
            let request = Request {
                id: row.get(0),
                method: row.get(1),
                url: row.get(2),
                headers: row.get(3),
                body: row.get(4),
                timeout: Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(5000)),
                attempt: u32::try_from(row.get::<_, i32>(6)).unwrap_or(1),
            };
            let (settings, http, tx) = (settings.clone(), http.clone(), tx.clone());
            tokio::spawn(async move {
                let result = attempt(&http, &settings, &request).await;
                let outcome = decide(&settings, request.id, request.attempt, result);
                // The slot is free before the outcome is recorded: a
                // claimer the recorded retry wakes finds nothing in flight.
                drop(permit);
                let _ = tx.send(outcome);
            });
        }
        drop(permits);
        saturated = claimed == limit;
        if claimed < limit {
            // Nothing of this worker's in flight and nothing claimed: the
            // queue holds only rows due later (retries, other workers'
            // leases), or none. Wait for the first of them, an insert's
            // notification or a retry this worker records, rather than
            // looking every poll interval.
            let wait = if claimed == 0 && slots.available_permits() == settings.concurrency {
                let next: Option<i64> = claimer.query_one(&next_due, &[]).await?.get(0);
                match next {
                    None => IDLE_LOOK,
                    // Due now but not claimed: locked by another claimer
                    // or transaction; look again after the poll interval.
                    Some(ms) if ms <= 0 => settings.poll_interval,
                    Some(ms) => {
                        Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(IDLE_LOOK)
                    }
                }
            } else {
                settings.poll_interval
            };
            tokio::select! {
                () = notify.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Adds to `permits` (which holds one) until they make a quarter of
/// `concurrency` or [`GATHER`] has passed.
async fn gather(slots: &Arc<Semaphore>, permits: &mut OwnedSemaphorePermit, concurrency: usize) {
    let want = (concurrency / 4).max(1);
    let missing = want.saturating_sub(permits.num_permits() + slots.available_permits());
    if missing == 0 {
        return;
    }
    let more = u32::try_from(missing).unwrap_or(u32::MAX);
    // A timed-out acquisition gives back what it had taken.
    if let Ok(Ok(more)) = tokio::time::timeout(GATHER, slots.clone().acquire_many_owned(more)).await
    {
        permits.merge(more);
    }
}

/// Writes outcomes in batches until the channel closes or a write fails
/// (the rows then come back when their leases end).
async fn write_outcomes(
    client: tokio_postgres::Client,
    mut rx: mpsc::UnboundedReceiver<Outcome>,
    claimer: Arc<Notify>,
) {
    let (finish, retry) = match tokio::try_join!(client.prepare(FINISH), client.prepare(RETRY)) {
        Ok(prepared) => prepared,
        Err(err) => {
            tracing::warn!(error = %err, "net worker: preparing its statements failed");
            return;
        }
    };
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(outcome) => batch.push(outcome),
                Err(_) => break,
            }
        }
        let mut done = FinishColumns::default();
        let (mut retry_ids, mut delays, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for outcome in batch {
            match outcome {
                Outcome::Finished { id, response, dead } => done.push(id, response, dead),
                Outcome::Retry { id, delay, error } => {
                    retry_ids.push(id);
                    delays.push(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
                    errors.push(error);
                }
            }
        }
        let result = async {
            if !done.ids.is_empty() {
                client
                    .execute(
                        &finish,
                        &[
                            &done.ids,
                            &done.status,
                            &done.content_type,
                            &done.headers,
                            &done.content,
                            &done.timed_out,
                            &done.error,
                            &done.dead,
                        ],
                    )
                    .await?;
            }
            if !retry_ids.is_empty() {
                client
                    .execute(&retry, &[&retry_ids, &delays, &errors])
                    .await?;
                // The claimer may be waiting for a due time read before
                // these retries were set.
                claimer.notify_one();
            }
            Ok::<_, tokio_postgres::Error>(())
        }
        .await;
        if let Err(err) = result {
            tracing::warn!(error = %err, "net worker: recording outcomes failed");
            return;
        }
    }
}

#[derive(Default)]
struct FinishColumns {
    ids: Vec<i64>,
    status: Vec<Option<i32>>,
    content_type: Vec<Option<String>>,
    headers: Vec<Option<Value>>,
    content: Vec<Option<String>>,
    timed_out: Vec<bool>,
    error: Vec<Option<String>>,
    dead: Vec<bool>,
}

impl FinishColumns {
    fn push(&mut self, id: i64, response: Response, dead: bool) {
        self.ids.push(id);
        self.status.push(response.status_code);
        self.content_type.push(response.content_type);
        self.headers.push(response.headers);
        self.content.push(response.content);
        self.timed_out.push(response.timed_out);
        self.error.push(response.error_msg);
        self.dead.push(dead);
    }
}
