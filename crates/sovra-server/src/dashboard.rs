//! What the server gives the dashboard (`sovra-dashboard`, mounted at
//! `/_/`): the server's routes to send the dashboard's requests through,
//! each tenant's service key, request pool and administrative login, and
//! the metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
use serde_json::{Value, json};
use sovra_dashboard::{BoxFuture, DEFAULT_TENANT, Host, TenantError};
use tower::ServiceExt as _;

use crate::{AppState, Tenant};

/// The server as the dashboard sees it.
pub(crate) struct ServerHost {
    state: AppState,
    /// The server's routes and layers without the dashboard.
    router: Router,
}

impl ServerHost {
    pub(crate) fn new(state: AppState, router: Router) -> ServerHost {
        ServerHost { state, router }
    }
}

async fn tenant(state: &AppState, name: &str) -> Result<Arc<Tenant>, TenantError> {
    if name == DEFAULT_TENANT {
        return Ok(state.tenants.default_tenant());
    }
    let Some(platform) = &state.platform else {
        return Err(TenantError::NotFound);
    };
    crate::tenants::validate_name(name).map_err(|_| TenantError::NotFound)?;
    platform.tenant(name).await.map_err(|lookup| match lookup {
        crate::tenants::Lookup::NotFound => TenantError::NotFound,
        crate::tenants::Lookup::Suspended => TenantError::Suspended,
        crate::tenants::Lookup::Failed(message) => TenantError::Failed(message),
    })
}

impl Host for ServerHost {
    fn call(&self, request: Request) -> BoxFuture<Response> {
        let router = self.router.clone();
        Box::pin(async move {
            match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    }

    fn service_key(&self, name: &str) -> BoxFuture<Result<String, TenantError>> {
        let state = self.state.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let tenant = tenant(&state, &name).await?;
            Ok(tenant.api_keys.service_role.clone())
        })
    }

    fn pool(&self, name: &str) -> BoxFuture<Result<sovra_pg::Pool, TenantError>> {
        let state = self.state.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let tenant = tenant(&state, &name).await?;
            Ok(tenant.pool.clone())
        })
    }

    fn admin(
        &self,
        name: &str,
    ) -> BoxFuture<Result<sovra_pg::tokio_postgres::Config, TenantError>> {
        let state = self.state.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let tenant = tenant(&state, &name).await?;
            Ok(tenant.admin.clone())
        })
    }

    fn realtime(&self, name: &str) -> BoxFuture<Result<serde_json::Value, TenantError>> {
        let state = self.state.clone();
        let name = name.to_owned();
        Box::pin(async move {
            let tenant = tenant(&state, &name).await?;
            let overview = tenant
                .realtime
                .overview(&sovra_realtime::OverviewLimits::default());
            Ok(serde_json::json!({
                "connections": tenant.realtime.connections(),
                "channels": tenant.realtime.channels(),
                "peers": tenant.realtime.peers(),
                "topics": overview["topics"],
                "topics_total": overview["total"],
                "topics_truncated": overview["truncated"],
            }))
        })
    }

    fn usage(&self, name: Option<&str>) -> BoxFuture<Result<serde_json::Value, TenantError>> {
        let state = self.state.clone();
        let name = name.map(str::to_owned);
        Box::pin(async move { usage(&state, name.as_deref()).await })
    }

    fn requests(&self, tenant: Option<&str>, limit: usize) -> serde_json::Value {
        serde_json::to_value(crate::observe::request_log().recent(tenant, limit))
            .unwrap_or_default()
    }

    fn metrics(&self) -> String {
        crate::routes::render_metrics(&self.state)
    }
}

/// How fresh a count of stored bytes the usage pictures take.
const STORED_BYTES_FRESH: std::time::Duration = std::time::Duration::from_secs(30);

/// The use of tenant `only` (every tenant when `None`, the default one
/// first) against its quotas, as [`Host::usage`] describes it.
async fn usage(state: &AppState, only: Option<&str>) -> Result<Value, TenantError> {
    let now = sovra_dashboard::now();
    let traffic = crate::traffic::traffic();
    traffic.sweep(now);
    let mut tenants = Vec::new();
    if only.is_none_or(|name| name == DEFAULT_TENANT) {
        let default = state.tenants.default_tenant();
        let database_bytes = async {
            let client = default.pool.get().await.map_err(|err| err.to_string())?;
            let row = client
                .query_one("select pg_database_size(current_database())", &[])
                .await
                .map_err(|err| err.to_string())?;
            Ok::<_, String>(u64::try_from(row.get::<_, i64>(0)).ok())
        }
        .await
        .unwrap_or_else(|err| {
            tracing::warn!(error = %err, "dashboard: the default tenant's database size");
            None
        });
        let quotas = json!({
            "database_max_bytes": 0,
            "storage_max_bytes": 0,
            "max_concurrent_requests": 0,
            "requests_per_second": 0,
            "realtime_max_connections": default.realtime.config().max_connections,
            "pool_size": default.pool.status().max_size,
        });
        tenants.push(
            tenant_usage(
                DEFAULT_TENANT,
                "active",
                Some(&default),
                database_bytes,
                quotas,
                now,
            )
            .await,
        );
    }
    match (&state.platform, only) {
        (_, Some(DEFAULT_TENANT)) => {}
        (None, Some(_)) => return Err(TenantError::NotFound),
        (None, None) => {}
        (Some(platform), only) => {
            let records = platform
                .registry_usage(only)
                .await
                .map_err(TenantError::Failed)?;
            if only.is_some() && records.is_empty() {
                return Err(TenantError::NotFound);
            }
            let live: std::collections::HashMap<String, Arc<Tenant>> = platform
                .live()
                .into_iter()
                .map(|tenant| (tenant.id.clone(), tenant))
                .collect();
            for record in records {
                let state = if record.suspended {
                    "suspended"
                } else {
                    "active"
                };
                tenants.push(
                    tenant_usage(
                        &record.name,
                        state,
                        live.get(&record.name),
                        record.database_bytes,
                        record.quotas,
                        now,
                    )
                    .await,
                );
            }
        }
    }
    Ok(json!({
        "bucket_seconds": crate::traffic::BUCKET_SECONDS,
        "buckets": crate::traffic::BUCKETS,
        "tenants": tenants,
    }))
}

/// One tenant's use: what the registry said, and what it holds when it
/// is running here.
async fn tenant_usage(
    name: &str,
    state: &str,
    running: Option<&Arc<Tenant>>,
    database_bytes: Option<u64>,
    quotas: Value,
    now: u64,
) -> Value {
    let window = crate::traffic::traffic().window(name, now);
    let sum = |f: fn(&crate::traffic::Counts) -> u64| window.iter().map(f).sum::<u64>();
    let requests = json!({
        "window": window
            .iter()
            .map(|c| [c.requests, c.client_errors, c.server_errors])
            .collect::<Vec<_>>(),
        "total": sum(|c| c.requests),
        "client_errors": sum(|c| c.client_errors),
        "server_errors": sum(|c| c.server_errors),
    });
    let (pool, connections, stored) = match running {
        Some(tenant) => {
            let status = tenant.pool.status();
            let stored = crate::routes::stored_bytes(tenant, STORED_BYTES_FRESH)
                .await
                .map_err(|err| tracing::warn!(error = %err, tenant = name, "dashboard: counting stored bytes"))
                .ok();
            (
                json!({
                    "in_use": status.size.saturating_sub(status.available),
                    "size": status.size,
                    "max": status.max_size,
                    "waiting": status.waiting,
                }),
                json!(tenant.realtime.connections()),
                json!(stored),
            )
        }
        None => (
            json!({"in_use": null, "size": null, "max": quotas["pool_size"], "waiting": null}),
            Value::Null,
            Value::Null,
        ),
    };
    json!({
        "name": name,
        "state": state,
        "running": running.is_some(),
        "requests": requests,
        "database": {"bytes": database_bytes, "max_bytes": quotas["database_max_bytes"]},
        "storage": {"bytes": stored, "max_bytes": quotas["storage_max_bytes"]},
        "realtime": {"connections": connections, "max_connections": quotas["realtime_max_connections"]},
        "pool": pool,
        "quotas": quotas,
    })
}
