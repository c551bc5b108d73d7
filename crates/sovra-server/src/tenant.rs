//! The tenant context. Every request resolves one before anything else, and
//! everything that belongs to a project (database pool, keys, settings) hangs
//! off it, never off process-wide state. The embedded default has exactly
//! one tenant; more are a matter of the resolver, not of the services.

use std::sync::Arc;

use sovra_jwt::KeySet;
use sovra_pg::Pool;

use crate::keys::ApiKeys;

/// One project's settings and resources.
#[derive(Debug)]
pub struct Tenant {
    pub id: String,
    pub pool: Pool,
    pub keys: std::sync::Arc<KeySet>,
    pub api_keys: ApiKeys,
    /// Refuse requests without an `apikey`.
    pub require_apikey: bool,
    /// `/rest/v1`.
    pub rest: sovra_rest::RestService,
    /// `/auth/v1`.
    pub auth: sovra_auth::AuthService,
    /// `/storage/v1`.
    pub storage: sovra_storage::StorageService,
    /// `/realtime/v1`.
    pub realtime: std::sync::Arc<sovra_realtime::RealtimeService>,
    /// `/mcp`: settings and sessions.
    pub mcp: crate::mcp::McpTenant,
    /// HTTP from SQL, webhooks and the outbox (stops when dropped).
    pub net: sovra_net::NetService,
    /// Quotas the services do not enforce themselves.
    pub quotas: TenantQuotas,
    /// Bytes of stored objects as last counted, and when (for
    /// [`TenantQuotas::storage_max_bytes`]).
    pub storage_used: std::sync::Mutex<Option<(u64, std::time::Instant)>>,
    /// The turns of [`TenantQuotas::max_concurrent_requests`], held to a
    /// share of the machine while other tenants are busy
    /// ([`crate::tenants::share`]).
    pub(crate) in_progress: Option<Arc<crate::tenants::share::Gate>>,
    /// Requests waiting for one of those turns.
    pub waiting: std::sync::atomic::AtomicUsize,
    /// The scheduler of `cron.job` in its database (stops with the tenant).
    pub cron: Option<crate::cron::CronScheduler>,
    /// The administrative login on its database (the change feed's), for
    /// the dashboard's DDL on a table as that table's owner.
    pub admin: sovra_pg::tokio_postgres::Config,
}

/// The quotas of a tenant other than the default one (the default tenant
/// has none of these: all zero).
#[derive(Clone, Debug, Default)]
pub struct TenantQuotas {
    /// The tenant's name as `/metrics` labels its quota refusals; `None`
    /// for the default tenant.
    pub metrics_label: Option<String>,
    /// Bytes of stored objects; uploads once they are used up are refused
    /// (0: no quota).
    pub storage_max_bytes: u64,
    /// Messages per second of all its realtime connections (0: none).
    pub realtime_events_per_second: u32,
    /// Mails its auth sends per hour, all recipients (0: none).
    pub mails_per_hour: u32,
    /// Requests in progress at once; more wait (0: no limit).
    pub max_concurrent_requests: usize,
}

impl TenantQuotas {
    /// Counts a refusal by quota `quota` in `/metrics`.
    pub fn count(&self, quota: &'static str) {
        if let Some(tenant) = &self.metrics_label {
            metrics::counter!(
                "sovra_tenant_quota_exceeded_total",
                "tenant" => tenant.clone(),
                "quota" => quota
            )
            .increment(1);
        }
    }
}

/// Finds the tenant a request belongs to.
#[derive(Clone, Debug)]
pub struct TenantResolver {
    default: Arc<Tenant>,
    platform: Option<Arc<crate::tenants::Platform>>,
}

impl TenantResolver {
    /// A resolver that serves one tenant for every request.
    pub fn single(tenant: Tenant) -> TenantResolver {
        TenantResolver {
            default: Arc::new(tenant),
            platform: None,
        }
    }

    /// Also serves the tenants of `platform` (routed by
    /// [`crate::tenants::route`]).
    pub fn set_platform(&mut self, platform: Arc<crate::tenants::Platform>) {
        self.platform = Some(platform);
    }

    /// The tenant for a request with these parts: the one
    /// [`crate::tenants::route`] resolved from its path or host, else the
    /// default tenant.
    pub fn resolve(&self, parts: &http::request::Parts) -> Option<Arc<Tenant>> {
        match parts.extensions.get::<crate::tenants::RoutedTenant>() {
            Some(routed) => Some(routed.0.clone()),
            None => Some(self.default.clone()),
        }
    }

    /// The default tenant.
    pub fn default_tenant(&self) -> Arc<Tenant> {
        self.default.clone()
    }

    /// Every running tenant (for readiness, metrics and sweeps): the
    /// default one and those started so far.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        let mut all = vec![self.default.clone()];
        if let Some(platform) = &self.platform {
            all.extend(platform.live());
        }
        all
    }
}
