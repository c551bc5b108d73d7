//! Sovra's dashboard at `/_/`: the front end (embedded, [`assets`]), the
//! dashboard's sessions ([`session`]) and the API its front end calls
//! under `/_/api/`.
//!
//! The browser never holds a key. It posts the platform key or a tenant's
//! service key once to `POST /_/api/session`; the server checks it by
//! asking its own router (the tenant API answers the platform key, the
//! gateway the service key), keeps it in the session record and sets an
//! HttpOnly, SameSite=Strict cookie. Every later request acts for the
//! session: tenant APIs are proxied through the server's own router
//! (`/_/api/t/{tenant}/rest/v1/…`, `…/auth/v1/admin/…`, `…/storage/v1/…`,
//! with that tenant's service_role key added), the SQL editor and the
//! catalog run on the tenant's own pool as `service_role` ([`sql`]).
//! Requests that change something need the session's CSRF token in
//! `x-sovra-csrf`.
//!
//! The crate knows nothing of how the server is built: the server hands it
//! a [`Host`].

pub mod assets;
pub mod ddl;
pub mod session;
pub mod sql;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, delete, get, post, put};
use serde::Deserialize;
use serde_json::{Value, json};

use session::{COOKIE, CSRF_HEADER, Principal, Session, Sessions, SignInLimiter};

/// A boxed future of the [`Host`] calls.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The name the dashboard uses for the default tenant (reserved: no other
/// tenant can have it).
pub const DEFAULT_TENANT: &str = "default";

/// Why a tenant could not be had.
#[derive(Debug)]
pub enum TenantError {
    NotFound,
    Suspended,
    Failed(String),
}

/// What the server provides to the dashboard.
pub trait Host: Send + Sync + 'static {
    /// Handles `request` with the server's own router, as one from outside.
    fn call(&self, request: Request) -> BoxFuture<Response>;
    /// The service_role key of tenant `name` ([`DEFAULT_TENANT`]: the
    /// default one), for sessions signed in with the platform key.
    fn service_key(&self, name: &str) -> BoxFuture<Result<String, TenantError>>;
    /// The request pool of tenant `name`.
    fn pool(&self, name: &str) -> BoxFuture<Result<sovra_pg::Pool, TenantError>>;
    /// The administrative login on tenant `name`'s database, for DDL the
    /// dashboard runs as a table's owner (policies, row-level security).
    fn admin(&self, name: &str)
    -> BoxFuture<Result<sovra_pg::tokio_postgres::Config, TenantError>>;
    /// Tenant `name`'s realtime service as it stands: `{"connections",
    /// "channels", "peers"}`.
    fn realtime(&self, name: &str) -> BoxFuture<Result<Value, TenantError>>;
    /// The last `limit` requests the server answered for `tenant` (every
    /// tenant when `None`), newest first: time, tenant, method, route, path
    /// without query, status, latency and request id.
    fn requests(&self, tenant: Option<&str>, limit: usize) -> Value;
    /// The server's metrics in Prometheus' text format (what `GET
    /// /metrics` answers), for every tenant.
    fn metrics(&self) -> String;
}

/// Default lifetime of a dashboard session, in seconds.
pub const DEFAULT_SESSION_TTL: u64 = 3600;

/// The dashboard's state.
pub struct Dashboard {
    host: Arc<dyn Host>,
    sessions: Sessions,
    limiter: SignInLimiter,
}

impl std::fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dashboard")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A dashboard acting through `host`, with sessions of `ttl` seconds.
    pub fn new(host: Arc<dyn Host>, ttl: u64) -> Dashboard {
        Dashboard {
            host,
            sessions: Sessions::new(ttl),
            limiter: SignInLimiter::default(),
        }
    }

    /// The sessions (for tests).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

type Shared = Arc<Dashboard>;

/// The routes under `/_`, to be merged into the server's router.
pub fn router(dashboard: Shared) -> Router {
    let api = Router::new()
        .route(
            "/_/api/session",
            get(session_show).post(sign_in).delete(sign_out),
        )
        .route("/_/api/tenants", get(tenants))
        .route("/_/api/metrics", get(metrics))
        .route("/_/api/platform/tenants", any(platform))
        .route("/_/api/platform/tenants/{*rest}", any(platform))
        .route("/_/api/t/{tenant}/tables", get(tables))
        .route("/_/api/t/{tenant}/tables/{schema}/{name}", get(table))
        .route(
            "/_/api/t/{tenant}/tables/{schema}/{name}/policies",
            post(policy_create),
        )
        .route(
            "/_/api/t/{tenant}/tables/{schema}/{name}/policies/{policy}",
            put(policy_replace).delete(policy_drop),
        )
        .route("/_/api/t/{tenant}/tables/{schema}/{name}/rls", put(set_rls))
        .route(
            "/_/api/t/{tenant}/tables/{schema}/{name}/as-user",
            post(test_as_user),
        )
        .route(
            "/_/api/t/{tenant}/users/{id}/sessions",
            get(user_sessions).delete(end_user_sessions),
        )
        .route(
            "/_/api/t/{tenant}/users/{id}/sessions/{session}",
            delete(end_user_session),
        )
        .route("/_/api/t/{tenant}/sql", post(run_sql))
        .route("/_/api/t/{tenant}/sql/history", get(history))
        .route("/_/api/t/{tenant}/logs", get(logs))
        .route("/_/api/t/{tenant}/realtime", get(realtime_stats))
        .route("/_/api/t/{tenant}/realtime/websocket", get(realtime_socket))
        .route("/_/api/t/{tenant}/jobs", get(jobs))
        .route("/_/api/t/{tenant}/jobs/queues", post(queue_create))
        .route(
            "/_/api/t/{tenant}/jobs/queues/{queue}/send",
            post(queue_send),
        )
        .route(
            "/_/api/t/{tenant}/jobs/queues/{queue}/read",
            post(queue_read),
        )
        .route(
            "/_/api/t/{tenant}/jobs/dead-letters/replay",
            post(dead_letters_replay),
        )
        .route("/_/api/t/{tenant}/{*rest}", any(proxy))
        .route("/_/api", any(not_found))
        .route("/_/api/{*rest}", any(not_found))
        .layer(DefaultBodyLimit::max(1024 * 1024))
        .layer(axum::middleware::map_response(no_store));
    Router::new()
        .route("/_", get(|| async { Redirect::permanent("/_/") }))
        .route("/_/", get(|| async { assets::serve("") }))
        .route("/_/{*path}", get(page))
        .merge(api)
        .with_state(dashboard)
}

async fn page(Path(path): Path<String>) -> Response {
    assets::serve(&path)
}

/// API answers are never cached and carry the dashboard's headers.
async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; frame-ancestors 'none'"),
    );
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": message})),
    )
        .into_response()
}

/// A refused request: its status, error code and message.
#[derive(Debug)]
struct Refusal(StatusCode, &'static str, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error(self.0, self.1, self.2)
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "No such dashboard API")
}

fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Whether the browser reached Sovra over HTTPS (directly or through a
/// proxy that says so): the cookie is then `Secure`.
fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
        || headers
            .get(header::FORWARDED)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"))
}

fn set_cookie(value: &str, max_age: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/_/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Whether `method` changes something (and so needs the CSRF token).
fn changes(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The session of a request: 401 without a live one, 403 when a request
/// that changes something lacks its CSRF token.
fn authorise(
    dashboard: &Dashboard,
    method: &Method,
    headers: &HeaderMap,
) -> Result<(String, Session), Refusal> {
    let unauthorised = || {
        Refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Sign in to the dashboard (the session is missing or has expired)",
        )
    };
    let token = cookie_token(headers).ok_or_else(unauthorised)?;
    let session = dashboard
        .sessions
        .get(&token, now())
        .ok_or_else(unauthorised)?;
    if changes(method) {
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !session.csrf_matches(presented) {
            return Err(Refusal(
                StatusCode::FORBIDDEN,
                "csrf",
                "This request needs the session's CSRF token in x-sovra-csrf",
            ));
        }
    }
    Ok((token, session))
}

fn session_json(session: &Session) -> Value {
    let (kind, tenant) = match &session.principal {
        Principal::Platform { .. } => ("platform", None),
        Principal::Tenant { tenant, .. } => ("tenant", Some(tenant.clone())),
    };
    json!({
        "kind": kind,
        "tenant": tenant,
        "csrf": session.csrf,
        "expires_at": session.expires_at,
    })
}

async fn session_show(
    State(dashboard): State<Shared>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match authorise(&dashboard, &method, &headers) {
        Ok((_, session)) => axum::Json(session_json(&session)).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

#[derive(Deserialize)]
struct SignIn {
    key: String,
    #[serde(default)]
    tenant: Option<String>,
}

fn peer(request_extensions: &http::Extensions) -> IpAddr {
    request_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// The path of `rest` (starting with `/`) in tenant `name`.
fn tenant_path(name: &str, rest: &str) -> String {
    if name == DEFAULT_TENANT {
        rest.to_owned()
    } else {
        format!("/t/{name}{rest}")
    }
}

/// A request into the server's router, from the same peer as `extensions`.
fn inner_request(
    method: Method,
    uri: &str,
    extensions: &http::Extensions,
    body: Body,
) -> Result<Request, Refusal> {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .map_err(|_| Refusal(StatusCode::BAD_REQUEST, "bad_request", "Bad path"))?;
    if let Some(connect) = extensions.get::<ConnectInfo<SocketAddr>>() {
        request.extensions_mut().insert(*connect);
    }
    Ok(request)
}

fn bearer(request: &mut Request, key: &str) {
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {key}")) {
        request.headers_mut().insert(header::AUTHORIZATION, value);
    }
}

/// Which principal `key` is, asked of the server: the tenant API answers
/// the platform key, the gateway a tenant's service key.
async fn check_key(
    dashboard: &Dashboard,
    key: &str,
    tenant: Option<&str>,
    extensions: &http::Extensions,
) -> Option<Principal> {
    if key.is_empty() || key.len() > 8192 {
        return None;
    }
    if key.starts_with("sovra_pk_") {
        let mut request =
            inner_request(Method::GET, "/sovra/v1/tenants", extensions, Body::empty()).ok()?;
        bearer(&mut request, key);
        let response = dashboard.host.call(request).await;
        return (response.status() == StatusCode::OK).then(|| Principal::Platform {
            key: key.to_owned(),
        });
    }
    let tenant = tenant.filter(|t| !t.is_empty()).unwrap_or(DEFAULT_TENANT);
    if !tenant
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return None;
    }
    let mut request = inner_request(
        Method::GET,
        &tenant_path(tenant, "/sovra/v1/whoami"),
        extensions,
        Body::empty(),
    )
    .ok()?;
    bearer(&mut request, key);
    request
        .headers_mut()
        .insert("apikey", HeaderValue::from_str(key).ok()?);
    let response = dashboard.host.call(request).await;
    if response.status() != StatusCode::OK {
        return None;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .ok()?;
    let whoami: Value = serde_json::from_slice(&body).ok()?;
    (whoami["role"] == "service_role").then(|| Principal::Tenant {
        tenant: tenant.to_owned(),
        key: key.to_owned(),
    })
}

async fn sign_in(State(dashboard): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let ip = peer(&parts.extensions);
    if !dashboard.limiter.allowed(ip, now()) {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many failed sign-ins from this address; wait a minute",
        );
    }
    let json_body = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_body {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
            "Sign in with a JSON body {\"key\": …}",
        );
    }
    let Ok(bytes) = axum::body::to_bytes(body, 16 * 1024).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_request",
            "Body too large",
        );
    };
    let Ok(form) = serde_json::from_slice::<SignIn>(&bytes) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Sign in with a JSON body {\"key\": …, \"tenant\": …}",
        );
    };
    let key = form.key.trim();
    let Some(principal) =
        check_key(&dashboard, key, form.tenant.as_deref(), &parts.extensions).await
    else {
        dashboard.limiter.failed(ip, now());
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_key",
            "This is neither the platform key nor this tenant's service key",
        );
    };
    tracing::info!(principal = ?principal, "dashboard sign-in");
    let (token, session) = dashboard.sessions.create(principal, now());
    let mut response = axum::Json(session_json(&session)).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&token, dashboard.sessions.ttl(), is_https(&parts.headers)),
    );
    response
}

async fn sign_out(State(dashboard): State<Shared>, method: Method, headers: HeaderMap) -> Response {
    let (token, _) = match authorise(&dashboard, &method, &headers) {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    dashboard.sessions.revoke(&token);
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie("", 0, is_https(&headers)));
    response
}

/// The tenants this session may pick: all of them for the platform key
/// (the default one first), its own for a service key.
async fn tenants(State(dashboard): State<Shared>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let (_, session) = match authorise(&dashboard, &parts.method, &parts.headers) {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let key = match &session.principal {
        Principal::Tenant { tenant, .. } => {
            return axum::Json(json!([{"name": tenant, "state": "active"}])).into_response();
        }
        Principal::Platform { key } => key,
    };
    let Ok(mut inner) = inner_request(
        Method::GET,
        "/sovra/v1/tenants",
        &parts.extensions,
        Body::empty(),
    ) else {
        return not_found().await;
    };
    bearer(&mut inner, key);
    let response = dashboard.host.call(inner).await;
    if response.status() != StatusCode::OK {
        return error(
            StatusCode::BAD_GATEWAY,
            "tenants",
            "The tenant API did not answer",
        );
    }
    let body = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let listed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut all = vec![json!({"name": DEFAULT_TENANT, "state": "active"})];
    let items = listed
        .as_array()
        .cloned()
        .or_else(|| listed["tenants"].as_array().cloned())
        .unwrap_or_default();
    for item in items {
        all.push(json!({"name": item["name"], "state": item["state"]}));
    }
    axum::Json(Value::Array(all)).into_response()
}

/// Request headers passed on to the tenant's services.
const FORWARDED: &[&str] = &[
    "accept",
    "accept-profile",
    "content-profile",
    "content-type",
    "content-length",
    "prefer",
    "range",
    "x-upsert",
    "cache-control",
    "if-none-match",
    "if-modified-since",
    // Resumable uploads (TUS).
    "tus-resumable",
    "upload-length",
    "upload-metadata",
    "upload-offset",
    "upload-defer-length",
];

/// Response headers not passed back to the browser.
const DROPPED: &[&str] = &["set-cookie", "access-control-allow-origin"];

async fn forward(
    dashboard: &Dashboard,
    key: &str,
    parts: &http::request::Parts,
    path: &str,
    body: Body,
) -> Response {
    let uri = match parts.uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let mut inner = match inner_request(parts.method.clone(), &uri, &parts.extensions, body) {
        Ok(inner) => inner,
        Err(refusal) => return refusal.into_response(),
    };
    for name in FORWARDED {
        for value in parts.headers.get_all(*name) {
            inner
                .headers_mut()
                .append(HeaderName::from_static(name), value.clone());
        }
    }
    bearer(&mut inner, key);
    if let Ok(value) = HeaderValue::from_str(key) {
        inner.headers_mut().insert("apikey", value);
    }
    let mut response = dashboard.host.call(inner).await;
    for name in DROPPED {
        response.headers_mut().remove(*name);
    }
    response
}

/// The server's metrics, for platform sessions (they cover every tenant).
async fn metrics(State(dashboard): State<Shared>, method: Method, headers: HeaderMap) -> Response {
    let (_, session) = match authorise(&dashboard, &method, &headers) {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    if !matches!(session.principal, Principal::Platform { .. }) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "The server's metrics need a session signed in with the platform key",
        );
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        dashboard.host.metrics(),
    )
        .into_response()
}

/// The tenant API for platform sessions.
async fn platform(State(dashboard): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (_, session) = match authorise(&dashboard, &parts.method, &parts.headers) {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let Principal::Platform { key } = &session.principal else {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "Managing tenants needs a session signed in with the platform key",
        );
    };
    let rest = parts
        .uri
        .path()
        .strip_prefix("/_/api/platform")
        .unwrap_or("/tenants")
        .to_owned();
    if parts.method == Method::DELETE
        && let Some(name) = rest.strip_prefix("/tenants/")
    {
        dashboard.sessions.revoke_tenant(name);
    }
    let response = forward(&dashboard, key, &parts, &format!("/sovra/v1{rest}"), body).await;
    without_secrets(response).await
}

/// Secret keys the tenant API shows that the browser must not hold.
const SECRET_FIELDS: &[&str] = &["service_role_key", "secret_key"];

/// The tenant API's answer without the tenants' secret keys (the operator
/// reads them with `sovra tenants show`).
async fn without_secrets(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 64 * 1024 * 1024).await else {
        return error(
            StatusCode::BAD_GATEWAY,
            "tenants",
            "The tenant API's answer was too large",
        );
    };
    let Ok(mut value) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    strip(&mut value);
    let text = value.to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(text))
}

fn strip(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for field in SECRET_FIELDS {
                map.remove(*field);
            }
            map.values_mut().for_each(strip);
        }
        Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

/// The key that acts for `session` on `tenant`: its own service key, or
/// for the platform key the tenant's.
async fn key_for(
    dashboard: &Dashboard,
    session: &Session,
    tenant: &str,
) -> Result<String, Refusal> {
    if !session.principal.may_use(tenant) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This session was signed in for another tenant",
        ));
    }
    match &session.principal {
        Principal::Tenant { key, .. } => Ok(key.clone()),
        Principal::Platform { .. } => dashboard
            .host
            .service_key(tenant)
            .await
            .map_err(tenant_error),
    }
}

fn tenant_error(err: TenantError) -> Refusal {
    match err {
        TenantError::NotFound => Refusal(StatusCode::NOT_FOUND, "not_found", "No such tenant"),
        TenantError::Suspended => Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "tenant_suspended",
            "This tenant is suspended",
        ),
        TenantError::Failed(message) => {
            tracing::warn!(error = %message, "dashboard: tenant unavailable");
            Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "The tenant is unavailable",
            )
        }
    }
}

/// The tenant services the dashboard reaches: REST, Auth's admin API (with
/// its mailbox), invitations and published settings, and Storage.
fn proxied(rest: &str) -> bool {
    ["rest/v1/", "auth/v1/admin/", "storage/v1/"]
        .iter()
        .any(|prefix| rest.starts_with(prefix))
        || rest == "rest/v1"
        || rest == "auth/v1/invite"
        || rest == "auth/v1/settings"
}

async fn proxy(
    State(dashboard): State<Shared>,
    Path((tenant, rest)): Path<(String, String)>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let (_, session) = match authorise(&dashboard, &parts.method, &parts.headers) {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    if !proxied(&rest) || rest.split('/').any(|seg| seg == "..") {
        return not_found().await;
    }
    let key = match key_for(&dashboard, &session, &tenant).await {
        Ok(key) => key,
        Err(refusal) => return refusal.into_response(),
    };
    let mut response = forward(
        &dashboard,
        &key,
        &parts,
        &tenant_path(&tenant, &format!("/{rest}")),
        body,
    )
    .await;
    // Stored files are downloaded, never shown as pages of this origin.
    if rest.starts_with("storage/v1/object/") && parts.method == Method::GET {
        response.headers_mut().insert(
            header::CONTENT_DISPOSITION,
            HeaderValue::from_static("attachment"),
        );
    }
    response
}

/// The session and the pool of `tenant`, for the routes that query it.
async fn tenant_pool(
    dashboard: &Dashboard,
    method: &Method,
    headers: &HeaderMap,
    tenant: &str,
) -> Result<(String, sovra_pg::Pool), Refusal> {
    let (token, session) = authorise(dashboard, method, headers)?;
    if !session.principal.may_use(tenant) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This session was signed in for another tenant",
        ));
    }
    let pool = dashboard.host.pool(tenant).await.map_err(tenant_error)?;
    Ok((token, pool))
}

fn sql_failure(err: &sql::SqlError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": "sql", "message": err.message, "detail": err})),
    )
        .into_response()
}

async fn tables(
    State(dashboard): State<Shared>,
    Path(tenant): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let (_, pool) = match tenant_pool(&dashboard, &method, &headers, &tenant).await {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    match sql::tables(&pool).await {
        Ok(value) => axum::Json(value).into_response(),
        Err(err) => sql_failure(&err),
    }
}

async fn table(
    State(dashboard): State<Shared>,
    Path((tenant, schema, name)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let (_, pool) = match tenant_pool(&dashboard, &method, &headers, &tenant).await {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    match sql::table(&pool, &schema, &name).await {
        Ok(Value::Null) => error(StatusCode::NOT_FOUND, "not_found", "No such table or view"),
        Ok(value) => axum::Json(value).into_response(),
        Err(err) => sql_failure(&err),
    }
}

/// The session's tenant and its administrative login, for the routes
/// that change a table's row-level security.
async fn tenant_admin(
    dashboard: &Dashboard,
    method: &Method,
    headers: &HeaderMap,
    tenant: &str,
) -> Result<sovra_pg::tokio_postgres::Config, Refusal> {
    let (_, session) = authorise(dashboard, method, headers)?;
    if !session.principal.may_use(tenant) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This session was signed in for another tenant",
        ));
    }
    dashboard.host.admin(tenant).await.map_err(tenant_error)
}

fn bad_request(message: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Runs DDL the dashboard built on table `schema`.`name` of `tenant` as
/// the table's owner: 204, 404 without such a table, 400 with
/// PostgreSQL's error.
async fn run_owned(
    dashboard: &Dashboard,
    method: &Method,
    headers: &HeaderMap,
    (tenant, schema, name): (&str, &str, &str),
    statements: Result<Vec<String>, ddl::DdlError>,
) -> Response {
    let admin = match tenant_admin(dashboard, method, headers, tenant).await {
        Ok(admin) => admin,
        Err(refusal) => return refusal.into_response(),
    };
    let statements = match statements {
        Ok(statements) => statements,
        Err(err) => return bad_request(&err.0),
    };
    tracing::info!(
        tenant,
        schema,
        table = name,
        "dashboard: row-level security changed"
    );
    match sql::as_owner(&admin, schema, name, &statements).await {
        Ok(sql::Owned::Done) => StatusCode::NO_CONTENT.into_response(),
        Ok(sql::Owned::NoTable) => error(StatusCode::NOT_FOUND, "not_found", "No such table"),
        Err(err) => sql_failure(&err),
    }
}

fn json_body(body: &[u8]) -> Result<Value, Refusal> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
        .ok_or(Refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Send a JSON object",
        ))
}

/// `POST …/policies`: creates a policy.
async fn policy_create(
    State(dashboard): State<Shared>,
    Path((tenant, schema, name)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let statements = match json_body(&body) {
        Ok(value) => ddl::Policy::from_json(&value)
            .and_then(|policy| policy.create_sql(&schema, &name))
            .map(|sql| vec![sql]),
        Err(refusal) => return refusal.into_response(),
    };
    run_owned(
        &dashboard,
        &method,
        &headers,
        (&tenant, &schema, &name),
        statements,
    )
    .await
}

/// `PUT …/policies/{policy}`: replaces a policy (drop and create in one
/// transaction, so its command, roles and name may change too).
async fn policy_replace(
    State(dashboard): State<Shared>,
    Path((tenant, schema, name, policy)): Path<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let statements = match json_body(&body) {
        Ok(value) => ddl::Policy::from_json(&value).and_then(|new| {
            Ok(vec![
                ddl::drop_sql(&schema, &name, &policy)?,
                new.create_sql(&schema, &name)?,
            ])
        }),
        Err(refusal) => return refusal.into_response(),
    };
    run_owned(
        &dashboard,
        &method,
        &headers,
        (&tenant, &schema, &name),
        statements,
    )
    .await
}

/// `DELETE …/policies/{policy}`.
async fn policy_drop(
    State(dashboard): State<Shared>,
    Path((tenant, schema, name, policy)): Path<(String, String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let statements = ddl::drop_sql(&schema, &name, &policy).map(|sql| vec![sql]);
    run_owned(
        &dashboard,
        &method,
        &headers,
        (&tenant, &schema, &name),
        statements,
    )
    .await
}

/// `PUT …/rls` `{"enabled": bool}`: turns row-level security on or off.
async fn set_rls(
    State(dashboard): State<Shared>,
    Path((tenant, schema, name)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let statements = match json_body(&body) {
        Ok(value) => match value["enabled"].as_bool() {
            Some(enabled) => ddl::rls_sql(&schema, &name, enabled).map(|sql| vec![sql]),
            None => return bad_request("Send {\"enabled\": true|false}"),
        },
        Err(refusal) => return refusal.into_response(),
    };
    run_owned(
        &dashboard,
        &method,
        &headers,
        (&tenant, &schema, &name),
        statements,
    )
    .await
}

fn user_id(text: &str) -> Result<uuid::Uuid, Refusal> {
    uuid::Uuid::parse_str(text).map_err(|_| {
        Refusal(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "A user id is a UUID",
        )
    })
}

/// `POST …/as-user` `{"user_id"}`: the rows of the table that user sees
/// (the first [`sql::AS_USER_ROWS`]), their count, and the role and
/// claims they were read with.
async fn test_as_user(
    State(dashboard): State<Shared>,
    Path((tenant, schema, name)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (_, pool) = match tenant_pool(&dashboard, &method, &headers, &tenant).await {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let id =
        match json_body(&body).and_then(|value| user_id(value["user_id"].as_str().unwrap_or(""))) {
            Ok(id) => id,
            Err(refusal) => return refusal.into_response(),
        };
    match sql::as_user(&pool, &schema, &name, id, now()).await {
        Ok(Some(value)) => axum::Json(value).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "user_not_found", "No such user"),
        Err(err) => sql_failure(&err),
    }
}

/// `GET …/users/{id}/sessions`: the user's sessions, newest first.
async fn user_sessions(
    State(dashboard): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let (_, pool) = match tenant_pool(&dashboard, &method, &headers, &tenant).await {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let id = match user_id(&id) {
        Ok(id) => id,
        Err(refusal) => return refusal.into_response(),
    };
    match sql::sessions(&pool, id).await {
        Ok(value) => axum::Json(value).into_response(),
        Err(err) => sql_failure(&err),
    }
}

async fn end_sessions(
    dashboard: &Dashboard,
    method: &Method,
    headers: &HeaderMap,
    (tenant, id, session): (&str, &str, Option<&str>),
) -> Response {
    let (_, pool) = match tenant_pool(dashboard, method, headers, tenant).await {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let id = match user_id(id) {
        Ok(id) => id,
        Err(refusal) => return refusal.into_response(),
    };
    let session = match session.map(uuid::Uuid::parse_str).transpose() {
        Ok(session) => session,
        Err(_) => return bad_request("A session id is a UUID"),
    };
    match sql::end_sessions(&pool, id, session).await {
        Ok(0) if session.is_some() => error(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "No such session",
        ),
        Ok(ended) => axum::Json(json!({"ended": ended})).into_response(),
        Err(err) => sql_failure(&err),
    }
}

/// `DELETE …/users/{id}/sessions`: signs the user out everywhere.
async fn end_user_sessions(
    State(dashboard): State<Shared>,
    Path((tenant, id)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    end_sessions(&dashboard, &method, &headers, (&tenant, &id, None)).await
}

/// `DELETE …/users/{id}/sessions/{session}`: ends one session.
async fn end_user_session(
    State(dashboard): State<Shared>,
    Path((tenant, id, session)): Path<(String, String, String)>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    end_sessions(
        &dashboard,
        &method,
        &headers,
        (&tenant, &id, Some(&session)),
    )
    .await
}

/// Requests the Logs page shows at most.
const LOGGED_REQUESTS: usize = 500;

/// `GET /t/{tenant}/logs`: the tenant's recent requests, newest first.
async fn logs(
    State(dashboard): State<Shared>,
    Path(tenant): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match authorise(&dashboard, &method, &headers) {
        Ok((_, session)) if session.principal.may_use(&tenant) => {
            axum::Json(dashboard.host.requests(Some(&tenant), LOGGED_REQUESTS)).into_response()
        }
        Ok(_) => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This session was signed in for another tenant",
        ),
        Err(refusal) => refusal.into_response(),
    }
}

fn json_answer(outcome: Result<Value, sql::SqlError>) -> Response {
    match outcome {
        Ok(value) => axum::Json(value).into_response(),
        Err(err) => sql_failure(&err),
    }
}

/// `GET /t/{tenant}/jobs`: queues, cron jobs with their last runs,
/// webhook deliveries and dead letters.
async fn jobs(
    State(dashboard): State<Shared>,
    Path(tenant): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match tenant_admin(&dashboard, &method, &headers, &tenant).await {
        Ok(admin) => json_answer(sql::jobs(&admin).await),
        Err(refusal) => refusal.into_response(),
    }
}

/// The administrative login of the session's tenant and the request's
/// JSON object, for the Jobs page's actions.
async fn admin_and_body(
    dashboard: &Dashboard,
    method: &Method,
    headers: &HeaderMap,
    tenant: &str,
    body: &[u8],
) -> Result<(sovra_pg::tokio_postgres::Config, Value), Refusal> {
    let admin = tenant_admin(dashboard, method, headers, tenant).await?;
    Ok((admin, json_body(body)?))
}

/// `POST /t/{tenant}/jobs/queues` `{"name"}`: creates a queue.
async fn queue_create(
    State(dashboard): State<Shared>,
    Path(tenant): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (admin, value) = match admin_and_body(&dashboard, &method, &headers, &tenant, &body).await {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let name = value["name"].as_str().unwrap_or("").trim().to_owned();
    if name.is_empty() {
        return bad_request("Send {\"name\": …}");
    }
    json_answer(sql::create_queue(&admin, &name).await)
}

/// `POST /t/{tenant}/jobs/queues/{queue}/send` `{"message", "delay"?}`.
async fn queue_send(
    State(dashboard): State<Shared>,
    Path((tenant, queue)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (admin, value) = match admin_and_body(&dashboard, &method, &headers, &tenant, &body).await {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let delay = match &value["delay"] {
        Value::Null => 0,
        delay => match delay.as_i64().and_then(|d| i32::try_from(d).ok()) {
            Some(d) if d >= 0 => d,
            _ => return bad_request("delay is a number of seconds"),
        },
    };
    if value["message"].is_null() {
        return bad_request("Send {\"message\": …}");
    }
    json_answer(sql::send_message(&admin, &queue, &value["message"], delay).await)
}

/// `POST /t/{tenant}/jobs/queues/{queue}/read` `{"vt"?, "qty"?}`: reads
/// messages (they stay hidden for `vt` seconds, 30 by default).
async fn queue_read(
    State(dashboard): State<Shared>,
    Path((tenant, queue)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (admin, value) = match admin_and_body(&dashboard, &method, &headers, &tenant, &body).await {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let number = |field: &str, default: i32, max: i32| match &value[field] {
        Value::Null => Some(default),
        n => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .filter(|n| (0..=max).contains(n)),
    };
    let (Some(vt), Some(qty)) = (number("vt", 30, 86_400), number("qty", 10, 100)) else {
        return bad_request("vt is 0 to 86400 seconds, qty 0 to 100 messages");
    };
    json_answer(sql::read_messages(&admin, &queue, vt, qty).await)
}

/// `POST /t/{tenant}/jobs/dead-letters/replay` `{"ids"?: [...]}`: puts
/// dead letters (all of them without ids) back in the webhooks' queue.
async fn dead_letters_replay(
    State(dashboard): State<Shared>,
    Path(tenant): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (admin, value) = match admin_and_body(&dashboard, &method, &headers, &tenant, &body).await {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let ids = match &value["ids"] {
        Value::Null => None,
        Value::Array(items) => match items.iter().map(Value::as_i64).collect::<Option<Vec<_>>>() {
            Some(ids) => Some(ids),
            None => return bad_request("ids are numbers"),
        },
        _ => return bad_request("ids are a list of numbers"),
    };
    json_answer(
        sql::replay_dead_letters(&admin, ids)
            .await
            .map(|n| json!({"replayed": n})),
    )
}

/// `GET /t/{tenant}/realtime`: open connections and channels.
async fn realtime_stats(
    State(dashboard): State<Shared>,
    Path(tenant): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    let session = match authorise(&dashboard, &method, &headers) {
        Ok((_, session)) => session,
        Err(refusal) => return refusal.into_response(),
    };
    if !session.principal.may_use(&tenant) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This session was signed in for another tenant",
        );
    }
    match dashboard.host.realtime(&tenant).await {
        Ok(value) => axum::Json(value).into_response(),
        Err(err) => tenant_error(err).into_response(),
    }
}

/// Whether a WebSocket handshake comes from a page of this origin: its
/// `Origin`'s host is the `Host` it was sent to.
fn same_origin(headers: &HeaderMap) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, rest)| rest.eq_ignore_ascii_case(host)),
        _ => false,
    }
}

/// Headers of a WebSocket handshake passed on to the realtime service.
const HANDSHAKE: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
];

/// `GET /t/{tenant}/realtime/websocket?vsn=…&csrf=…`: the tenant's realtime
/// socket for the dashboard's live view. The session (its cookie, the CSRF
/// token in the query since a browser cannot add headers to a handshake,
/// and a page of this origin) stands for the key: the handshake is handed
/// to the tenant's realtime service with the tenant's service key in
/// `x-api-key`, so the browser never holds it. The socket lives until the
/// page closes it.
async fn realtime_socket(
    State(dashboard): State<Shared>,
    Path(tenant): Path<String>,
    request: Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    let (_, session) = match authorise(&dashboard, &parts.method, &parts.headers) {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let query = parts.uri.query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.to_owned())
    };
    if !session.csrf_matches(&param("csrf").unwrap_or_default()) || !same_origin(&parts.headers) {
        return error(
            StatusCode::FORBIDDEN,
            "csrf",
            "The live view's socket needs the session's CSRF token and a page of this origin",
        );
    }
    let vsn = param("vsn").unwrap_or_else(|| "1.0.0".to_owned());
    if !matches!(vsn.as_str(), "1.0.0" | "2.0.0") {
        return bad_request("vsn is 1.0.0 or 2.0.0");
    }
    let key = match key_for(&dashboard, &session, &tenant).await {
        Ok(key) => key,
        Err(refusal) => return refusal.into_response(),
    };
    let uri = tenant_path(&tenant, &format!("/realtime/v1/websocket?vsn={vsn}"));
    let mut inner = match inner_request(Method::GET, &uri, &parts.extensions, Body::empty()) {
        Ok(inner) => inner,
        Err(refusal) => return refusal.into_response(),
    };
    for name in HANDSHAKE {
        if let Some(value) = parts.headers.get(*name) {
            inner
                .headers_mut()
                .insert(HeaderName::from_static(name), value.clone());
        }
    }
    if let Ok(value) = HeaderValue::from_str(&key) {
        inner.headers_mut().insert("x-api-key", value);
    }
    if let Some(upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() {
        inner.extensions_mut().insert(upgrade);
    }
    dashboard.host.call(inner).await
}

#[derive(Deserialize)]
struct SqlBody {
    query: String,
}

/// The SQL editor: runs the statements as `service_role` in one
/// transaction; results, or the error with its position.
async fn run_sql(
    State(dashboard): State<Shared>,
    Path(tenant): Path<String>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (token, pool) = match tenant_pool(&dashboard, &method, &headers, &tenant).await {
        Ok(found) => found,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(SqlBody { query }) = serde_json::from_slice(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "Send {\"query\": \"…\"}",
        );
    };
    if query.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "bad_request", "The query is empty");
    }
    dashboard.sessions.remember(&token, &query);
    match sql::run(&pool, &query).await {
        Ok(results) => axum::Json(json!({"results": results})).into_response(),
        Err(err) => sql_failure(&err),
    }
}

async fn history(
    State(dashboard): State<Shared>,
    Path(tenant): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match authorise(&dashboard, &method, &headers) {
        Ok((_, session)) if session.principal.may_use(&tenant) => {
            axum::Json(json!(session.history.iter().rev().collect::<Vec<_>>())).into_response()
        }
        Ok(_) => error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "This session was signed in for another tenant",
        ),
        Err(refusal) => refusal.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_https() {
        let plain = set_cookie("abc", 60, false);
        let plain = plain.to_str().unwrap();
        assert!(plain.starts_with("sovra_dashboard=abc;"));
        assert!(plain.contains("HttpOnly"));
        assert!(plain.contains("SameSite=Strict"));
        assert!(plain.contains("Path=/_/"));
        assert!(plain.contains("Max-Age=60"));
        assert!(!plain.contains("Secure"));
        assert!(
            set_cookie("abc", 60, true)
                .to_str()
                .unwrap()
                .ends_with("; Secure")
        );
        let mut headers = HeaderMap::new();
        assert!(!is_https(&headers));
        headers.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(is_https(&headers));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=1.2.3.4;proto=https"),
        );
        assert!(is_https(&headers));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; sovra_dashboard=tok; b=2"),
        );
        assert_eq!(cookie_token(&headers).as_deref(), Some("tok"));
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("sovra_dashboardx=1"),
        );
        assert_eq!(cookie_token(&headers), None);
    }

    #[test]
    fn only_tenant_services_are_proxied() {
        assert!(proxied("rest/v1/items"));
        assert!(proxied("rest/v1"));
        assert!(proxied("auth/v1/admin/users"));
        assert!(proxied("auth/v1/invite"));
        assert!(proxied("auth/v1/settings"));
        assert!(proxied("storage/v1/bucket"));
        assert!(!proxied("auth/v1/token"));
        assert!(!proxied("sovra/v1/tenants"));
        assert!(!proxied("realtime/v1/api/broadcast"));
        assert_eq!(tenant_path(DEFAULT_TENANT, "/rest/v1/x"), "/rest/v1/x");
        assert_eq!(tenant_path("acme", "/rest/v1/x"), "/t/acme/rest/v1/x");
    }

    #[test]
    fn secret_keys_are_stripped_from_tenant_answers() {
        let mut value = json!([{"name": "a", "anon_key": "x", "service_role_key": "s", "secret_key": "k",
                                 "settings": {"service_role_key": "nested"}}]);
        strip(&mut value);
        assert_eq!(
            value,
            json!([{"name": "a", "anon_key": "x", "settings": {}}])
        );
    }

    #[test]
    fn the_live_sockets_handshake_must_come_from_this_origin() {
        let headers = |origin: Option<&'static str>, host: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, HeaderValue::from_static(host));
            if let Some(origin) = origin {
                headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
            }
            headers
        };
        assert!(same_origin(&headers(
            Some("http://127.0.0.1:54321"),
            "127.0.0.1:54321"
        )));
        assert!(same_origin(&headers(
            Some("https://Sovra.example"),
            "sovra.example"
        )));
        assert!(!same_origin(&headers(
            Some("http://evil.example"),
            "sovra.example"
        )));
        assert!(!same_origin(&headers(
            Some("http://sovra.example.evil"),
            "sovra.example"
        )));
        assert!(!same_origin(&headers(Some("null"), "sovra.example")));
        assert!(!same_origin(&headers(None, "sovra.example")));
    }

    #[test]
    fn reads_need_no_csrf_token_and_changes_do() {
        assert!(!changes(&Method::GET));
        assert!(!changes(&Method::HEAD));
        assert!(changes(&Method::POST));
        assert!(changes(&Method::PATCH));
        assert!(changes(&Method::DELETE));
        assert!(changes(&Method::PUT));
    }
}
