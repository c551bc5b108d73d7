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
}

/// Finds the tenant a request belongs to.
#[derive(Clone, Debug)]
pub struct TenantResolver {
    default: Arc<Tenant>,
}

impl TenantResolver {
    /// A resolver that serves one tenant for every request.
    pub fn single(tenant: Tenant) -> TenantResolver {
        TenantResolver {
            default: Arc::new(tenant),
        }
    }

    /// The tenant for a request with these parts. With one tenant this is
    /// always it; host-, path- or header-based routing plugs in here.
    pub fn resolve(&self, _parts: &http::request::Parts) -> Option<Arc<Tenant>> {
        Some(self.default.clone())
    }

    /// Every tenant (for readiness and metrics).
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        vec![self.default.clone()]
    }
}
