//! HTTP from SQL, database webhooks and the transactional outbox.
//!
//! The SQL half lives in `sovra-pg`'s migration `net`: `net.http_get`,
//! `net.http_post`, `net.http_delete` (pg_net's API) and
//! `supabase_functions.http_request` (Supabase's database webhooks) write
//! rows to `net.http_request_queue` in the caller's transaction, and
//! `sovra.outbox_send` writes events to `sovra.outbox`. This crate is the
//! other half, one [`NetService`] per tenant database:
//!
//! - [`worker`] claims due requests (`FOR UPDATE SKIP LOCKED` under a
//!   lease, so several Sovra instances share one database), sends them,
//!   and records each outcome in `net._http_response`; retryable failures
//!   come back with back-off ([`retry`]) until `net.max_attempts`, then go
//!   to `net.http_request_dead`. Woken by `NOTIFY sovra_net` at commit,
//!   with a polling fallback.
//! - [`outbox`] publishes committed outbox events to their destinations
//!   (realtime broadcast, NATS subject, HTTP) in commit order per topic.
//!
//! Pure parts without IO: [`addr`] (which addresses requests may reach),
//! [`retry`] (back-off, `Retry-After`), [`sign`] (Standard Webhooks),
//! [`rate`] (the per-tenant rate limit).

pub mod addr;
pub mod outbox;
pub mod rate;
pub mod retry;
pub mod sign;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use sovra_pg::tokio_postgres;

/// The settings of one tenant's delivery worker.
#[derive(Clone, Debug)]
pub struct NetSettings {
    /// The tenant's name (in `webhook-id`s, NATS message ids and logs).
    pub tenant: String,
    pub policy: addr::Policy,
    pub concurrency: usize,
    /// Request starts per second (0: no limit).
    pub rate_limit: u32,
    pub max_response_bytes: usize,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub secret: Option<sign::Secret>,
    /// How often the worker looks for due requests without a notification
    /// (retries that became due, requests of instances that died).
    pub poll_interval: Duration,
    /// `realtime.nats_url`, for the outbox's NATS destinations.
    pub nats_url: Option<String>,
}

impl NetSettings {
    /// The settings of `config` for tenant `tenant`.
    pub fn from_config(config: &sovra_config::Config, tenant: &str) -> NetSettings {
        let net = &config.net;
        NetSettings {
            tenant: tenant.to_owned(),
            policy: addr::Policy {
                allow_private: net.allow_private,
                allow_list: net
                    .allow_list_entries()
                    .into_iter()
                    .filter_map(addr::Allowed::parse)
                    .collect(),
            },
            concurrency: usize::try_from(net.concurrency).unwrap_or(64).max(1),
            rate_limit: u32::try_from(net.rate_limit).unwrap_or(u32::MAX),
            max_response_bytes: usize::try_from(net.max_response_size).unwrap_or(usize::MAX),
            max_attempts: u32::try_from(net.max_attempts).unwrap_or(5).max(1),
            retry_base: Duration::from_millis(net.retry_base),
            retry_cap: Duration::from_secs(300),
            secret: sign::Secret::parse(&net.webhook_secret),
            poll_interval: Duration::from_secs(1),
            nats_url: Some(config.realtime.nats_url.clone()).filter(|u| !u.is_empty()),
        }
    }
}

impl Default for NetSettings {
    fn default() -> Self {
        NetSettings::from_config(&sovra_config::Config::default(), "default")
    }
}

/// One tenant's delivery worker and outbox publisher; both stop when this
/// is dropped (what they were doing is redone by the next one: leases
/// expire, outbox events stay until published).
#[derive(Debug)]
pub struct NetService {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    settings: Arc<NetSettings>,
    counters: Arc<worker::Counters>,
}

/// What a [`NetService`]'s delivery worker has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Claim statements that took at least one request.
    pub claims: u64,
    /// Requests those claims took (a request claimed again for a retry
    /// counts again).
    pub claimed: u64,
}

impl NetService {
    /// Starts the worker and the outbox publisher on the database of
    /// `admin` (an administrative login: the worker reads and writes the
    /// `net` tables and calls `realtime.send`, never user tables).
    pub fn start(settings: NetSettings, admin: tokio_postgres::Config) -> NetService {
        NetService::start_after(settings, admin, Duration::ZERO)
    }

    /// [`NetService::start`], but the worker and the publisher open their
    /// connections only `delay` later: a tenant started by its first
    /// request then answers it without three more backends starting beside
    /// it. Nothing waits meanwhile but delivery: what was queued or sent to
    /// the outbox before is found by the first pass, as after a restart.
    pub fn start_after(
        settings: NetSettings,
        admin: tokio_postgres::Config,
        delay: Duration,
    ) -> NetService {
        let settings = Arc::new(settings);
        let counters = Arc::new(worker::Counters::default());
        let tasks = vec![
            tokio::spawn(after(
                delay,
                worker::run(settings.clone(), admin.clone(), counters.clone()),
            )),
            tokio::spawn(after(delay, outbox::run(settings.clone(), admin))),
        ];
        NetService {
            tasks,
            settings,
            counters,
        }
    }

    pub fn settings(&self) -> &NetSettings {
        &self.settings
    }

    pub fn stats(&self) -> NetStats {
        self.counters.stats()
    }
}

/// Runs `task` after `delay`.
async fn after(delay: Duration, task: impl std::future::Future<Output = ()>) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    task.await;
}

impl Drop for NetService {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
