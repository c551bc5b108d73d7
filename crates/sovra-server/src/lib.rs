//! Sovra's HTTP server as a library: the router every service is mounted
//! on, the tenant context, the JWT gateway, `/health`, `/ready`, `/metrics`,
//! and start-up and shutdown ([`serve`]).
//!
//! Only this crate knows how services are mounted. Tests build the same
//! [`router`] that `sovra serve` runs. No handler here reads user tables as
//! a privileged role on behalf of a caller: requests that touch the database
//! go through [`sovra_pg::begin_request`] with the caller's role.

pub mod body;
pub mod connections;
pub mod cron;
pub(crate) mod dashboard;
pub mod data_dir;
mod front;
pub mod gateway;
pub mod keys;
pub mod mcp;
pub mod observe;
pub mod opaque_keys;
pub mod platform;
pub(crate) mod routes;
pub mod serve;
pub mod tenant;
pub mod tenant_secrets;
pub mod tenants;
pub mod traffic;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::{HeaderName, Method, request::Parts};
use axum::routing::{any, get};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;

pub use front::Front as App;
pub use gateway::{Caller, GatewayError};
pub use routes::safe_headers;
pub use tenant::{Tenant, TenantResolver};

/// State shared by every handler: one `Arc`, since the router clones it for
/// every request (several times, through its layers).
#[derive(Clone, Debug)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Clone, Debug)]
pub struct AppStateInner {
    pub tenants: TenantResolver,
    pub prometheus: PrometheusHandle,
    pub started: Instant,
    pub body_limit: usize,
    /// How long a request body may send nothing (`server.body_idle_timeout`).
    pub body_idle_timeout: Duration,
    /// SHA-256 of `metrics.token`: `/metrics` then requires it as a bearer
    /// token. `None`: `/metrics` is open.
    pub metrics_token: Option<[u8; 32]>,
    /// The tenants beyond the default one, when this server hosts them.
    pub platform: Option<Arc<tenants::Platform>>,
    /// Set when shutdown begins: `/ready` answers 503 from then on.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// How long a dashboard session lasts, in seconds.
    pub dashboard_session_ttl: u64,
}

impl AppState {
    pub fn new(tenants: TenantResolver, body_limit: usize) -> AppState {
        AppState(Arc::new(AppStateInner {
            tenants,
            prometheus: observe::prometheus(),
            started: Instant::now(),
            body_limit,
            body_idle_timeout: Duration::from_secs(60),
            metrics_token: None,
            platform: None,
            draining: Arc::default(),
            dashboard_session_ttl: sovra_dashboard::DEFAULT_SESSION_TTL,
        }))
    }

    /// Hosts the tenants of `platform` besides the default one.
    #[must_use]
    pub fn with_platform(mut self, platform: Arc<tenants::Platform>) -> AppState {
        let inner = Arc::make_mut(&mut self.0);
        inner.tenants.set_platform(platform.clone());
        inner.platform = Some(platform);
        self
    }

    /// The state `config` describes.
    pub fn from_config(tenants: TenantResolver, config: &sovra_config::Config) -> AppState {
        let mut state = AppState::new(tenants, config.server.body_limit)
            .with_metrics_token(config.metrics.token.as_deref());
        let inner = Arc::make_mut(&mut state.0);
        inner.body_idle_timeout = Duration::from_secs(config.server.body_idle_timeout);
        inner.dashboard_session_ttl = config.dashboard.session_ttl;
        state
    }

    /// Requires `token` as the bearer token of `GET /metrics`.
    #[must_use]
    pub fn with_metrics_token(mut self, token: Option<&str>) -> AppState {
        Arc::make_mut(&mut self.0).metrics_token = token.map(routes::token_digest);
        self
    }
}

/// The request's tenant, without checking credentials (for public
/// endpoints such as the JWK set).
pub struct ResolvedTenant(pub Arc<Tenant>);

impl FromRequestParts<AppState> for ResolvedTenant {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state
            .tenants
            .resolve(parts)
            .map(ResolvedTenant)
            .ok_or(GatewayError::NoTenant)
    }
}

const REQUEST_ID: &str = "x-request-id";

/// Whether a client's `x-request-id` is kept: 1 to 64 characters of
/// `[A-Za-z0-9._-]`, so that it cannot forge fields in text logs, flood
/// them, or carry anything but an id. Anything else is replaced by a fresh
/// UUID, which the response then carries.
pub fn is_safe_request_id(value: &[u8]) -> bool {
    (1..=64).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Headers browsers may read from responses (spec §1.1).
const EXPOSED_HEADERS: &[&str] = &[
    "content-range",
    "content-location",
    "location",
    "content-profile",
    "preference-applied",
    "x-total-count",
    "link",
    "x-supabase-api-version",
    "x-sb-error-code",
    "upload-offset",
    "upload-length",
    "tus-resumable",
    "etag",
    "proxy-status",
    "x-request-id",
    // `/mcp`: browser MCP clients read their session id.
    "mcp-session-id",
];

fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
            Method::HEAD,
        ])
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(
            EXPOSED_HEADERS
                .iter()
                .map(|name| HeaderName::from_static(name))
                .collect::<Vec<_>>(),
        )
        .max_age(Duration::from_secs(86_400))
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new().fallback_service(app(state))
}

/// The same as [`router`] as the service itself, without the outer
/// router's fallback routing: what `sovra serve` runs
/// ([`serve::serve_http`] takes either).
pub fn app(state: AppState) -> App {
    // The dashboard at `/_/` sends its requests through a router of its
    // own with the same routes but no dashboard (one that contained it
    // would own itself through the dashboard and never be dropped).
    let host = dashboard::ServerHost::new(
        state.clone(),
        Router::new().fallback_service(routes(state.clone(), None)),
    );
    let dashboard = sovra_dashboard::router(Arc::new(sovra_dashboard::Dashboard::new(
        Arc::new(host),
        state.dashboard_session_ttl,
    )));
    routes(state, Some(dashboard))
}

/// Every route and layer, with `dashboard` merged in when given.
fn routes(state: AppState, dashboard: Option<Router>) -> App {
    let body_limit = state.body_limit;
    // Every route but storage takes bodies up to `server.body_limit`;
    // storage streams uploads and applies its own per-bucket limits.
    let api = Router::new()
        .route("/health", get(routes::health))
        .route("/ready", get(routes::ready))
        .route("/metrics", get(routes::metrics))
        .route("/auth/v1/.well-known/jwks.json", get(routes::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            get(routes::oauth_metadata),
        )
        .route(
            "/.well-known/oauth-authorization-server/auth/v1",
            get(routes::oauth_metadata),
        )
        .route(
            "/.well-known/openid-configuration",
            get(routes::oauth_metadata),
        )
        .route("/sovra/v1/whoami", get(routes::whoami))
        .route("/sovra/v1/whoami/db", get(routes::whoami_db))
        .route("/auth/v1", any(routes::auth))
        .route("/auth/v1/{*path}", any(routes::auth))
        .route("/rest/v1", any(routes::rest))
        .route("/rest/v1/", any(routes::rest))
        .route("/rest/v1/{*path}", any(routes::rest))
        .route("/realtime/v1/websocket", get(routes::realtime_socket))
        .route("/realtime/v1/websocket/", get(routes::realtime_socket))
        .route(
            "/realtime/v1/api/broadcast",
            axum::routing::post(routes::realtime_broadcast),
        )
        .route(
            "/realtime/v1/api/broadcast/{*path}",
            axum::routing::post(routes::realtime_broadcast),
        )
        .route_layer(observe::Track)
        // One layer of two (each `Router::layer` boxes every route once
        // more, and the box is cloned for every request); a 413 of
        // `/rest/v1` gets PostgREST's shape in `front::Inner`.
        .layer(
            tower::ServiceBuilder::new()
                .layer(RequestBodyLimitLayer::new(body_limit))
                .layer(DefaultBodyLimit::max(body_limit)),
        );
    let storage = Router::new()
        .route("/storage/v1/{*path}", any(routes::storage))
        .route_layer(observe::Track)
        .layer(DefaultBodyLimit::disable());
    // `/mcp` reads its own bodies under `mcp.max_request_bytes`.
    let mcp = Router::new()
        .route(
            "/mcp",
            axum::routing::post(mcp::endpoint)
                .get(mcp::endpoint)
                .delete(mcp::endpoint),
        )
        .route(
            "/.well-known/oauth-protected-resource",
            get(mcp::protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(mcp::protected_resource),
        )
        .route_layer(observe::Track)
        .layer(DefaultBodyLimit::disable());
    let platform = Router::new()
        .route(
            "/sovra/v1/tenants",
            get(tenants::list).post(tenants::create),
        )
        .route(
            "/sovra/v1/tenants/{name}",
            get(tenants::show)
                .patch(tenants::patch)
                .delete(tenants::delete),
        )
        .route(
            "/sovra/v1/tenants/{name}/suspend",
            axum::routing::post(tenants::suspend),
        )
        .route(
            "/sovra/v1/tenants/{name}/resume",
            axum::routing::post(tenants::resume),
        )
        .route_layer(observe::Track)
        .layer(DefaultBodyLimit::max(64 * 1024));
    // Tenant routing rewrites `/t/{name}/…` before the routes match: the
    // inner router is the fallback of an outer one that runs `route`.
    let mut inner = api
        .merge(storage)
        .merge(mcp)
        .merge(platform)
        .with_state(state.clone());
    if let Some(dashboard) = dashboard {
        inner = inner.merge(dashboard);
    }
    // The layers every request passes: two services (see `front.rs`).
    front::Front::new(state, inner)
}

#[cfg(test)]
mod tests {
    use super::is_safe_request_id;

    #[test]
    fn request_ids_are_safe_only_as_short_plain_tokens() {
        for safe in ["a", "abc-123", "trace.ID_42", &"9".repeat(64)] {
            assert!(is_safe_request_id(safe.as_bytes()), "{safe}");
        }
        for unsafe_id in [
            "",
            &"9".repeat(65),
            "a b",
            "a=b",
            "a\tb",
            "\"quoted\"",
            "a/b",
            "a:b",
            "caf\u{e9}",
        ] {
            assert!(!is_safe_request_id(unsafe_id.as_bytes()), "{unsafe_id:?}");
        }
        assert!(!is_safe_request_id(b"a\x00b"));
        assert!(!is_safe_request_id(b"\xff"));
    }
}
