//! What the server gives the dashboard (`sovra-dashboard`, mounted at
//! `/_/`): the server's routes to send the dashboard's requests through,
//! each tenant's service key, request pool and administrative login, and
//! the metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::response::Response;
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
            Ok(serde_json::json!({
                "connections": tenant.realtime.connections(),
                "channels": tenant.realtime.channels(),
                "peers": tenant.realtime.peers(),
            }))
        })
    }

    fn requests(&self, tenant: Option<&str>, limit: usize) -> serde_json::Value {
        serde_json::to_value(crate::observe::request_log().recent(tenant, limit))
            .unwrap_or_default()
    }

    fn metrics(&self) -> String {
        crate::routes::render_metrics(&self.state)
    }
}
