//! Sovra's own endpoints: liveness, readiness, metrics, the published key
//! set, and `whoami` (what the gateway and the database make of a request's
//! credentials, for people debugging keys and policies).

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sovra_pg::RequestContext;

use crate::AppState;
use crate::gateway::Caller;

/// `GET /health`: the process is alive.
pub(crate) async fn health() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// `GET /ready`: every tenant's database answers and its migrations are
/// applied. 503 with the reason otherwise.
pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    if state.draining.load(std::sync::atomic::Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "draining", "reason": "this instance is shutting down"})),
        )
            .into_response();
    }
    let mut failures = Vec::new();
    for tenant in state.tenants.all() {
        let check = async {
            let client = tenant.pool.get().await.map_err(|err| err.to_string())?;
            let current = sovra_pg::migrate::is_current(&client)
                .await
                .map_err(|err| match err.as_db_error() {
                    Some(db) => db.message().to_owned(),
                    None => err.to_string(),
                })?;
            if current {
                Ok(())
            } else {
                Err("migrations are not applied".to_owned())
            }
        };
        let result = tokio::time::timeout(Duration::from_secs(5), check)
            .await
            .unwrap_or_else(|_| Err("database did not answer within 5 s".to_owned()));
        if let Err(reason) = result {
            tracing::warn!(tenant = %tenant.id, reason = %reason, "not ready");
            failures.push(json!({"tenant": tenant.id, "reason": "database unavailable"}));
        }
    }
    if let Some(pending) = state
        .platform
        .as_ref()
        .and_then(|platform| platform.upgrade_pending())
    {
        failures.push(json!({"tenants": "migrating", "reason": format!("{pending} tenant databases are being migrated")}));
    }
    // Read replicas are reported, not required: reads skip a replica that
    // is down or lagging and go to the primary.
    let mut replicas = Vec::new();
    for tenant in state.tenants.all() {
        if let Some(set) = tenant.rest.replicas() {
            for status in set.status() {
                replicas.push(json!({
                    "tenant": tenant.id,
                    "replica": status.name,
                    "status": status.reason.unwrap_or("up"),
                    "lag_ms": status.lag_ms,
                }));
            }
        }
    }
    let mut body = if failures.is_empty() {
        json!({"status": "ready"})
    } else {
        json!({"status": "unavailable", "failures": failures})
    };
    if !replicas.is_empty() {
        body["replicas"] = Value::Array(replicas);
    }
    if failures.is_empty() {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// SHA-256 of a bearer token: both sides of the `/metrics` check are
/// digests of the same length, so comparing them in constant time reveals
/// neither the token's bytes nor its length.
pub(crate) fn token_digest(token: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Whether `headers` carry `Authorization: Bearer <token>` whose digest is
/// `expected`. The scheme is case-insensitive, as RFC 9110 says.
fn metrics_authorized(headers: &HeaderMap, expected: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq as _;
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && bool::from(token_digest(token.trim()).ct_eq(expected))
}

/// `GET /metrics`: Prometheus text format; behind `metrics.token` when set.
pub(crate) async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(expected) = &state.metrics_token
        && !metrics_authorized(&headers, expected)
    {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            Json(json!({"message": "/metrics needs `Authorization: Bearer <metrics.token>`"})),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        render_metrics(&state),
    )
        .into_response()
}

/// The metrics text of `GET /metrics` (also the dashboard's), with the
/// pool gauges read now.
pub(crate) fn render_metrics(state: &AppState) -> String {
    for tenant in state.tenants.all() {
        let status = tenant.pool.status();
        let labels = [("tenant", tenant.id.clone())];
        metrics::gauge!("sovra_db_pool_max_connections", &labels).set(status.max_size as f64);
        metrics::gauge!("sovra_db_pool_connections", &labels).set(status.size as f64);
        metrics::gauge!("sovra_db_pool_idle_connections", &labels).set(status.available as f64);
        metrics::gauge!("sovra_db_pool_waiting_requests", &labels).set(status.waiting as f64);
    }
    metrics::gauge!("sovra_uptime_seconds").set(state.started.elapsed().as_secs_f64());
    state.prometheus.render()
}

/// `GET /auth/v1/.well-known/jwks.json`: the public asymmetric keys, and
/// those the OAuth server signs ID tokens with.
pub(crate) async fn jwks(caller_tenant: crate::ResolvedTenant) -> Response {
    let mut jwks = caller_tenant.0.keys.public_jwks();
    let id_token_keys = caller_tenant.0.auth.oauth_public_jwks().await;
    if let Some(keys) = jwks.get_mut("keys").and_then(Value::as_array_mut) {
        keys.extend(id_token_keys);
    }
    (
        [(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=600"),
        )],
        Json(jwks),
    )
        .into_response()
}

/// `GET /.well-known/oauth-authorization-server[/auth/v1]` and
/// `GET /.well-known/openid-configuration` at the root: the tenant's OAuth
/// server metadata (RFC 8414 §3 puts it there for the issuer
/// `<url>/auth/v1`).
pub(crate) async fn oauth_metadata(caller_tenant: crate::ResolvedTenant) -> Response {
    (
        [(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=600"),
        )],
        Json(caller_tenant.0.auth.oauth_metadata_document()),
    )
        .into_response()
}

/// `GET /sovra/v1/whoami`: the role and claims the gateway derived.
pub(crate) async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({"role": caller.role, "claims": Value::Object(caller.claims)}))
}

/// `GET /sovra/v1/whoami/db`: what the database sees inside the request
/// transaction: the current role and the `auth.*()` helpers.
pub(crate) async fn whoami_db(
    caller: Caller,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let context = RequestContext {
        role: caller.role.clone(),
        claims: caller.claims.clone(),
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers: safe_headers(&headers),
        search_path: None,
    };
    let result = async {
        let mut client = caller.tenant.pool.get().await.map_err(|err| {
            tracing::warn!(error = %err, "no database connection");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "database unavailable".to_owned(),
            )
        })?;
        let tx = sovra_pg::begin_request(&mut client, &context, true)
            .await
            .map_err(db_error)?;
        let row = tx
            .query_one(
                "select json_build_object(
                   'current_user', current_user,
                   'role', auth.role(),
                   'uid', auth.uid(),
                   'email', auth.email(),
                   'jwt', auth.jwt())",
                &[],
            )
            .await
            .map_err(db_error)?;
        let value: Value = row.get(0);
        tx.commit().await.map_err(db_error)?;
        Ok::<_, (StatusCode, String)>(value)
    }
    .await;
    match result {
        Ok(value) => Json(value).into_response(),
        Err((status, message)) => (status, Json(json!({"message": message}))).into_response(),
    }
}

fn db_error(err: sovra_pg::tokio_postgres::Error) -> (StatusCode, String) {
    let message = || {
        err.as_db_error()
            .map_or_else(|| "invalid role".to_owned(), |db| db.message().to_owned())
    };
    match sovra_pg::error_kind(&err) {
        sovra_pg::ErrorKind::InvalidParameterValue => (StatusCode::UNAUTHORIZED, message()),
        // A role `authenticator` may not become (PostgREST answers 403).
        sovra_pg::ErrorKind::InsufficientPrivilege => (StatusCode::FORBIDDEN, message()),
        // Claims PostgreSQL cannot take, e.g. a `sub` that is no uuid.
        _ if err.code().is_some_and(|code| code.code().starts_with("22")) => {
            (StatusCode::BAD_REQUEST, message())
        }
        sovra_pg::ErrorKind::Connection => (
            StatusCode::SERVICE_UNAVAILABLE,
            "database unavailable".to_owned(),
        ),
        _ => {
            tracing::error!(error = %err, "whoami query failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".to_owned(),
            )
        }
    }
}

/// Request headers for `request.headers`, names lower-cased, without the
/// credentials (policies read claims, not raw tokens).
pub fn safe_headers(headers: &HeaderMap) -> Map<String, Value> {
    headers
        .iter()
        .filter(|(name, _)| !matches!(name.as_str(), "authorization" | "apikey" | "cookie"))
        .filter_map(|(name, value)| {
            Some((
                name.as_str().to_owned(),
                Value::String(value.to_str().ok()?.to_owned()),
            ))
        })
        .collect()
}

/// `/rest/v1/*`: the PostgREST-compatible API, as the caller.
pub(crate) async fn rest(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    use axum::extract::{FromRequest, FromRequestParts};
    // Taken apart by hand: the method, URI and header extractors would
    // each clone theirs.
    let (mut parts, body) = request.into_parts();
    let caller = match Caller::from_request_parts(&mut parts, &state).await {
        Ok(caller) => caller,
        Err(refused) => return refused.into_response(),
    };
    let method = std::mem::take(&mut parts.method);
    let uri = std::mem::take(&mut parts.uri);
    let headers = std::mem::take(&mut parts.headers);
    // The body under `DefaultBodyLimit` (an extension the parts keep).
    let body = match axum::body::Bytes::from_request(
        axum::extract::Request::from_parts(parts, body),
        &state,
    )
    .await
    {
        Ok(body) => body,
        Err(refused) => return refused.into_response(),
    };
    let path = uri.path().strip_prefix("/rest/v1").unwrap_or("");
    let Caller {
        tenant,
        role,
        claims,
    } = caller;
    let rest_caller = sovra_rest::Caller {
        role,
        claims,
        headers: safe_headers(&headers),
    };
    tenant
        .rest
        .handle(
            &tenant.pool,
            &rest_caller,
            sovra_rest::HttpRequest {
                method: &method,
                path,
                query: uri.query(),
                headers: &headers,
                body,
            },
        )
        .await
}

/// A body over `server.body_limit` sent to `/rest/v1` is refused in
/// PostgREST's error shape (`code`, `message`, `details`, `hint`), whichever
/// layer noticed it (the declared length or the bytes read).
pub(crate) fn rest_body_limit(is_rest: bool, response: Response) -> Response {
    if !is_rest || response.status() != StatusCode::PAYLOAD_TOO_LARGE {
        return response;
    }
    let body = json!({
        "code": "PGRST413",
        "message": "Payload Too Large",
        "details": "The request body is larger than the server accepts (server.body_limit).",
        "hint": null,
    });
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        [
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
            (
                header::HeaderName::from_static("proxy-status"),
                "PostgREST; error=PGRST413",
            ),
        ],
        body.to_string(),
    )
        .into_response()
}

/// `/auth/v1/*`: the GoTrue-compatible API. The API key is checked here
/// (except on `GET /verify`, which browsers open from links in mail); the
/// bearer token is the auth service's business.
pub(crate) async fn auth(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let Some(tenant) = state.tenants.resolve(&parts) else {
        return crate::GatewayError::NoTenant.into_response();
    };
    // An opaque key as the bearer (supabase-js without a session, or an
    // admin client made with a secret key) stands for the role's JWT.
    if let Some(value) = parts.headers.get(header::AUTHORIZATION)
        && let Some(token) = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| crate::opaque_keys::looks_opaque(token))
    {
        let Some(jwt) = tenant.api_keys.jwt_for_opaque(token) else {
            return crate::GatewayError::InvalidApiKey.into_response();
        };
        match HeaderValue::from_str(&format!("Bearer {jwt}")) {
            Ok(value) => {
                parts.headers.insert(header::AUTHORIZATION, value);
            }
            Err(_) => return crate::GatewayError::InvalidApiKey.into_response(),
        }
    }
    let path = parts.uri.path().strip_prefix("/auth/v1").unwrap_or("");
    // Links in mail, and the external sign-in's redirects, which browsers
    // follow without the key.
    let is_link = matches!(
        (&parts.method, path.trim_end_matches('/')),
        (&Method::GET, "/verify" | "/authorize") | (&Method::GET | &Method::POST, "/callback")
    ) || sovra_auth::oauth_server::is_public(&parts.method, path);
    if !is_link
        && let Err(err) = crate::gateway::check_api_key(
            &tenant,
            &parts.headers,
            parts.uri.query(),
            crate::gateway::now(),
        )
    {
        return err.into_response();
    }
    let body = match axum::body::to_bytes(body, 1024 * 1024).await {
        Ok(body) => body,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({"code": 413, "error_code": "request_too_large", "msg": "Request body too large"})),
            )
                .into_response();
        }
    };
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    tenant
        .auth
        .handle(sovra_auth::AuthRequest {
            method: &parts.method,
            path,
            query: parts.uri.query(),
            headers: &parts.headers,
            body,
            keys: &tenant.keys,
            peer,
        })
        .await
}

/// `/storage/v1/*`: the Supabase Storage API. Credentials are checked
/// here; whether a route needs them is the storage service's business
/// (public and signed downloads do not).
pub(crate) async fn storage(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let Some(tenant) = state.tenants.resolve(&parts) else {
        return crate::GatewayError::NoTenant.into_response();
    };
    let path = parts.uri.path().strip_prefix("/storage/v1").unwrap_or("");
    let s3_path = path
        .strip_prefix("/s3")
        .filter(|rest| rest.is_empty() || rest.starts_with('/'));
    let adds_bytes = tenant.quotas.storage_max_bytes > 0
        && match s3_path {
            // PutObject, UploadPart and CopyObject store bytes.
            Some(_) => parts.method == Method::PUT,
            None => adds_bytes(&parts.method, path),
        };
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    if adds_bytes && let Some(refused) = storage_quota(&tenant, path, length).await {
        return refused;
    }
    if let Some(s3_path) = s3_path {
        return storage_s3(&tenant, &parts, s3_path, body).await;
    }
    // Without any credential, Supabase Storage verifies an empty token,
    // which its JWT library refuses as "Invalid Compact JWS" (routes that
    // need no caller, such as public downloads, still work).
    let anonymous = !parts.headers.contains_key(header::AUTHORIZATION)
        && !parts.headers.contains_key("apikey")
        && crate::gateway::query_param(parts.uri.query(), "apikey").is_none();
    let auth = if anonymous {
        Err(crate::GatewayError::InvalidToken(
            "Invalid Compact JWS".to_owned(),
        ))
    } else {
        crate::gateway::authenticate(&tenant, &parts.headers, parts.uri.query())
    };
    let auth = auth
        .map(|caller| sovra_storage::Principal {
            role: caller.role,
            claims: caller.claims,
        })
        .map_err(|err| match err {
            crate::GatewayError::InvalidToken(message) => message,
            crate::GatewayError::InvalidApiKey => "Invalid API key".to_owned(),
            crate::GatewayError::MissingApiKey => "No API key found in request".to_owned(),
            crate::GatewayError::MalformedAuthorization => {
                "Authorization header must be `Bearer <token>`".to_owned()
            }
            crate::GatewayError::NoTenant => "No project serves this host".to_owned(),
        });
    let response = tenant
        .storage
        .handle(sovra_storage::StorageRequest {
            method: &parts.method,
            path,
            query: parts.uri.query(),
            headers: &parts.headers,
            body,
            auth,
            safe_headers: safe_headers(&parts.headers),
            keys: &tenant.keys,
        })
        .await;
    if adds_bytes
        && response.status().is_success()
        && let Ok(mut used) = tenant.storage_used.lock()
        && let Some((bytes, _)) = used.as_mut()
    {
        // Counted until the next count, so a burst of uploads between two
        // counts is held to the quota too.
        *bytes = bytes.saturating_add(length);
    }
    response
}

/// Whether a storage request may store more bytes: uploads (also through
/// signed upload URLs), copies and TUS uploads.
fn adds_bytes(method: &Method, path: &str) -> bool {
    let tus = path.starts_with("/upload/resumable");
    if tus {
        return *method == Method::POST || *method == Method::PATCH;
    }
    let Some(object) = path.strip_prefix("/object/") else {
        return false;
    };
    match *method {
        Method::PUT => true,
        Method::POST => {
            !(object.starts_with("list/")
                || object.starts_with("move")
                || object.starts_with("sign/")
                || object.starts_with("upload/sign/"))
        }
        _ => false,
    }
}

/// How long a count of a tenant's stored bytes answers for its quota.
const STORAGE_COUNT_TTL: Duration = Duration::from_secs(2);

/// Bytes of the tenant's stored objects: the last count when it is
/// younger than `fresh`, else one sum over `storage.objects` (kept as the
/// last count).
pub(crate) async fn stored_bytes(tenant: &crate::Tenant, fresh: Duration) -> Result<u64, String> {
    let cached = tenant
        .storage_used
        .lock()
        .ok()
        .and_then(|used| *used)
        .filter(|(_, at)| at.elapsed() < fresh)
        .map(|(bytes, _)| bytes);
    if let Some(bytes) = cached {
        return Ok(bytes);
    }
    let client = tenant.pool.get().await.map_err(|err| err.to_string())?;
    let row = client
        .query_one("select sovra.storage_bytes()", &[])
        .await
        .map_err(|err| err.to_string())?;
    let bytes = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
    if let Ok(mut used) = tenant.storage_used.lock() {
        *used = Some((bytes, std::time::Instant::now()));
    }
    Ok(bytes)
}

/// Refuses a request that would store more bytes once the tenant's
/// objects use up its `storage_max_bytes` (or would with `length` more):
/// Storage's 413 shape (plain text for TUS, as its server answers). The
/// bytes are counted with one sum over `storage.objects`, at most every
/// [`STORAGE_COUNT_TTL`].
async fn storage_quota(tenant: &crate::Tenant, path: &str, length: u64) -> Option<Response> {
    let max = tenant.quotas.storage_max_bytes;
    let used = match stored_bytes(tenant, STORAGE_COUNT_TTL).await {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::warn!(error = %err, "counting a tenant's stored bytes failed");
            return Some(sovra_storage::StorageError::unavailable().into_response());
        }
    };
    if used < max && used.saturating_add(length) <= max {
        return None;
    }
    tenant.quotas.count("storage_max_bytes");
    let message = format!("The project's storage quota of {max} bytes is used up");
    if path.starts_with("/upload/resumable") {
        return Some(
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (HeaderName::from_static("tus-resumable"), "1.0.0"),
                ],
                message,
            )
                .into_response(),
        );
    }
    let mut err = sovra_storage::StorageError::too_large();
    err.message = message;
    if let Some(s3_path) = path.strip_prefix("/s3") {
        // S3 clients read S3's XML errors.
        return Some(sovra_storage::s3::error_response(&err, s3_path));
    }
    Some(err.into_response())
}

/// `/storage/v1/s3/*`: the S3 protocol, signed with SigV4 rather than
/// sent with an API key; the storage service checks the signature.
async fn storage_s3(
    tenant: &std::sync::Arc<crate::tenant::Tenant>,
    parts: &http::request::Parts,
    s3_path: &str,
    body: axum::body::Body,
) -> Response {
    // A tenant addressed by path was signed with its `/t/{name}` prefix.
    let mut signed_paths = vec![parts.uri.path().to_owned()];
    if parts
        .extensions
        .get::<crate::tenants::RoutedTenant>()
        .is_some()
    {
        signed_paths.push(format!("/t/{}{}", tenant.id, parts.uri.path()));
    }
    let keys = tenant.keys.clone();
    let verify = |token: &str| -> Result<sovra_storage::Principal, String> {
        // An opaque key (`sb_publishable_…`, `sb_secret_…`) stands for its
        // role's JWT here too.
        let token = if crate::opaque_keys::looks_opaque(token) {
            tenant
                .api_keys
                .jwt_for_opaque(token)
                .ok_or_else(|| "Invalid API key".to_owned())?
        } else {
            token
        };
        let verified = keys
            .verify(token, crate::gateway::now())
            .map_err(|err| err.to_string())?;
        if crate::gateway::claims_contain_nul(&verified.claims) {
            return Err(crate::gateway::NUL_CLAIMS.to_owned());
        }
        Ok(sovra_storage::Principal {
            role: verified.role,
            claims: verified.claims,
        })
    };
    let project_ref = tenant.keys.project_ref().unwrap_or(&tenant.id).to_owned();
    tenant
        .storage
        .handle_s3(
            sovra_storage::s3::S3Request {
                method: &parts.method,
                path: s3_path,
                signed_paths,
                query: parts.uri.query(),
                authority: parts.uri.authority().map(|a| a.as_str()),
                headers: &parts.headers,
                safe_headers: safe_headers(&parts.headers),
                keys: &tenant.keys,
                project_ref: &project_ref,
                anon_key: &tenant.api_keys.anon,
                verify_token: &verify,
                now: crate::gateway::now(),
            },
            body,
        )
        .await
}

/// Adds the TUS headers (`Tus-Version`, `Tus-Extension`, `Tus-Max-Size`)
/// to the answer of an `OPTIONS` request for `/storage/v1/upload/resumable`,
/// as Supabase's TUS server sends them; the CORS layer inside answers such
/// requests itself (204 with the CORS headers) before any route sees them.
pub(crate) async fn tus_options<F, Fut>(
    state: &AppState,
    request: axum::extract::Request,
    next: F,
) -> Response
where
    F: FnOnce(axum::extract::Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let tus = request.method() == Method::OPTIONS
        && request
            .uri()
            .path()
            .contains("/storage/v1/upload/resumable");
    if !tus {
        return next(request).await;
    }
    let (parts, body) = request.into_parts();
    // This layer runs before tenant routing: a tenant's URL is resolved
    // here, so that its own limits are reported (an unknown or suspended
    // tenant's gets the CORS answer alone, as any other preflight).
    let tenant = match crate::tenants::addressed_tenant(state, &parts).await {
        Some(found) => found.ok(),
        None => state.tenants.resolve(&parts),
    };
    let mut response = next(axum::extract::Request::from_parts(parts, body)).await;
    if let Some(tenant) = tenant
        && response.status().is_success()
    {
        *response.status_mut() = StatusCode::NO_CONTENT;
        response
            .headers_mut()
            .extend(tenant.storage.tus_options_headers());
    }
    response
}

fn realtime_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// The caller of a realtime connection, from its API key (`x-api-key`
/// header or `apikey` query parameter): a project key, a token signed with
/// the project's keys, or a Sovra API key.
fn realtime_principal(
    tenant: &crate::Tenant,
    key: Option<&str>,
) -> Result<sovra_realtime::Principal, (StatusCode, &'static str)> {
    let Some(mut key) = key.filter(|k| !k.is_empty()) else {
        return Err((StatusCode::UNAUTHORIZED, "API key is missing"));
    };
    if crate::opaque_keys::looks_opaque(key) {
        key = tenant
            .api_keys
            .jwt_for_opaque(key)
            .ok_or((StatusCode::UNAUTHORIZED, "Invalid API key"))?;
    }
    if let Some((role, claims)) = crate::gateway::api_key_claims(tenant, key) {
        return Ok(sovra_realtime::Principal { role, claims });
    }
    match tenant.keys.verify(key, crate::gateway::now()) {
        Ok(verified) => Ok(sovra_realtime::Principal {
            role: verified.role,
            claims: verified.claims,
        }),
        Err(sovra_jwt::JwtError::Expired) => Err((StatusCode::UNAUTHORIZED, "Token has expired")),
        Err(sovra_jwt::JwtError::BadSignature) => {
            Err((StatusCode::UNAUTHORIZED, "Failed to validate JWT signature"))
        }
        Err(_) => Err((
            StatusCode::UNAUTHORIZED,
            "The token provided is not a valid JWT",
        )),
    }
}

/// `GET /realtime/v1/websocket`: Phoenix channels over WebSocket.
pub(crate) async fn realtime_socket(
    State(state): State<AppState>,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
    request: axum::extract::Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let Some(tenant) = state.tenants.resolve(&parts) else {
        return crate::GatewayError::NoTenant.into_response();
    };
    let query = parts.uri.query();
    let key = parts
        .headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| crate::gateway::query_param(query, "apikey"));
    let principal = match realtime_principal(&tenant, key.as_deref()) {
        Ok(principal) => principal,
        Err((status, message)) => return realtime_error(status, message),
    };
    let Some(vsn) =
        sovra_realtime::Vsn::parse(crate::gateway::query_param(query, "vsn").as_deref())
    else {
        return realtime_error(
            StatusCode::BAD_REQUEST,
            "Unsupported protocol version (vsn)",
        );
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    let Some(permit) = tenant.realtime.admit() else {
        return realtime_error(StatusCode::TOO_MANY_REQUESTS, "Too many connected users");
    };
    // The dashboard's live view: the socket ends with the dashboard
    // session it was opened for (sign-out or expiry).
    let session_end = parts
        .extensions
        .get::<sovra_dashboard::session::SessionEnd>()
        .cloned();
    if session_end.as_ref().is_some_and(|end| end.has_ended()) {
        return realtime_error(StatusCode::UNAUTHORIZED, "The dashboard session has ended");
    }
    let service = tenant.realtime.clone();
    let max_frame = service.config().max_frame_bytes;
    upgrade
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        // Small buffers: memory per idle connection matters at 100k.
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            match session_end {
                Some(end) => {
                    let until = Box::pin(async move {
                        end.wait(sovra_dashboard::now).await.reason().to_owned()
                    });
                    service
                        .serve_until(socket, vsn, principal, permit, until)
                        .await;
                }
                None => service.serve(socket, vsn, principal, permit).await,
            }
        })
}

/// `POST /realtime/v1/api/broadcast` and
/// `POST /realtime/v1/api/broadcast/{topic}/events/{event}`.
pub(crate) async fn realtime_broadcast(
    caller: Caller,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let principal = sovra_realtime::Principal {
        role: caller.role.clone(),
        claims: caller.claims.clone(),
    };
    let path = uri
        .path()
        .strip_prefix("/realtime/v1/api/broadcast")
        .unwrap_or("");
    let result = if path.is_empty() || path == "/" {
        let Ok(value) = serde_json::from_slice::<Value>(&body) else {
            return (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(json!({"errors": {"body": ["must be JSON"]}})),
            )
                .into_response();
        };
        caller
            .tenant
            .realtime
            .http_broadcast(&principal, &value)
            .await
    } else {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let [topic, "events", event] = segments.as_slice() else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let topic = sovra_rest_grammar::decode_component(topic);
        let event = sovra_rest_grammar::decode_component(event);
        let private =
            crate::gateway::query_param(uri.query(), "private").as_deref() == Some("true");
        let binary = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("application/octet-stream"));
        if binary {
            caller
                .tenant
                .realtime
                .http_broadcast_one(
                    &principal,
                    &topic,
                    &event,
                    private,
                    Value::Null,
                    Some(&body),
                )
                .await
        } else {
            let payload = if body.is_empty() {
                json!({})
            } else {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(value) => value,
                    Err(_) => {
                        return (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            Json(json!({"errors": {"payload": ["must be JSON"]}})),
                        )
                            .into_response();
                    }
                }
            };
            caller
                .tenant
                .realtime
                .http_broadcast_one(&principal, &topic, &event, private, payload, None)
                .await
        }
    };
    match result {
        Ok(_) => StatusCode::ACCEPTED.into_response(),
        Err(err) => (
            StatusCode::from_u16(err.status).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
            Json(err.body),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_copies_and_tus_writes_add_bytes_and_nothing_else_does() {
        for (method, path) in [
            (Method::POST, "/object/docs/a.txt"),
            (Method::PUT, "/object/docs/a.txt"),
            (Method::PUT, "/object/upload/sign/docs/a.txt"),
            (Method::POST, "/object/copy"),
            (Method::POST, "/upload/resumable"),
            (Method::PATCH, "/upload/resumable/abc"),
        ] {
            assert!(adds_bytes(&method, path), "{method} {path}");
        }
        for (method, path) in [
            (Method::GET, "/object/docs/a.txt"),
            (Method::DELETE, "/object/docs/a.txt"),
            (Method::POST, "/object/list/docs"),
            (Method::POST, "/object/move"),
            (Method::POST, "/object/sign/docs/a.txt"),
            (Method::POST, "/object/upload/sign/docs/a.txt"),
            (Method::POST, "/bucket"),
            (Method::HEAD, "/upload/resumable/abc"),
            (Method::DELETE, "/upload/resumable/abc"),
        ] {
            assert!(!adds_bytes(&method, path), "{method} {path}");
        }
    }
}
