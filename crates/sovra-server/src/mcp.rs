//! `/mcp`: the Model Context Protocol over streamable HTTP (see
//! `docs/mcp.md`). One JSON-RPC message per `POST`, answered with one JSON
//! response (or 202 for notifications); no server-initiated messages, so
//! `GET` answers 405; `DELETE` ends a session.
//!
//! The caller is authenticated like every API (`apikey` and
//! `Authorization: Bearer`, checked by the gateway), and every tool runs
//! as that caller: data tools are requests to the tenant's REST and
//! Storage services (the same parsing, planner, request transaction and
//! row-level security as `/rest/v1` and `/storage/v1`), and the catalogue
//! tools ask PostgreSQL, inside the caller's request transaction, what
//! the caller's role may use. The codec and the tool catalogue are the
//! pure `sovra-mcp-proto`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sovra_mcp_proto::tools::{self, Action, CallError, RestCall};
use sovra_mcp_proto::{self as proto, Message, RpcError};

use crate::AppState;
use crate::gateway::{Caller, GatewayError};
use crate::tenant::Tenant;

/// Sessions one tenant keeps at most; the least recently used goes first.
const MAX_SESSIONS: usize = 10_000;
/// The most bytes of a service's answer a tool returns.
const MAX_ANSWER_BYTES: usize = 8 * 1024 * 1024;

const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// One tenant's `/mcp` settings and state.
#[derive(Debug)]
pub struct McpTenant {
    pub enabled: bool,
    /// `insert`/`update`/`delete` listed, and `rpc` read-write.
    pub writes: bool,
    max_request_bytes: usize,
    requests_per_minute: u32,
    read_object_max_bytes: usize,
    origins: Vec<String>,
    idle: Duration,
    public_url: Option<String>,
    sessions: Mutex<HashMap<String, Session>>,
    limiter: Mutex<proto::RateLimit>,
}

#[derive(Debug)]
struct Session {
    version: &'static str,
    /// Who opened it: another caller presenting its id gets 404.
    owner: String,
    last: Instant,
}

impl McpTenant {
    pub fn new(config: &sovra_config::Config) -> McpTenant {
        McpTenant {
            enabled: config.mcp.enabled,
            writes: config.mcp.allow_writes,
            max_request_bytes: config.mcp.max_request_bytes,
            requests_per_minute: config.mcp.requests_per_minute,
            read_object_max_bytes: config.mcp.read_object_max_bytes,
            origins: config.mcp.origins(),
            idle: Duration::from_secs(config.mcp.session_idle_timeout),
            public_url: config.server.public_url.clone(),
            sessions: Mutex::new(HashMap::new()),
            limiter: Mutex::new(proto::RateLimit::default()),
        }
    }

    /// Number of live sessions (for tests and diagnostics).
    pub fn session_count(&self) -> usize {
        self.sessions.lock().map_or(0, |s| s.len())
    }

    fn open_session(&self, version: &'static str, owner: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        if let Ok(mut sessions) = self.sessions.lock() {
            let now = Instant::now();
            sessions.retain(|_, s| now.saturating_duration_since(s.last) < self.idle);
            if sessions.len() >= MAX_SESSIONS
                && let Some(oldest) = sessions
                    .iter()
                    .min_by_key(|(_, s)| s.last)
                    .map(|(id, _)| id.clone())
            {
                sessions.remove(&oldest);
            }
            sessions.insert(
                id.clone(),
                Session {
                    version,
                    owner: owner.to_owned(),
                    last: now,
                },
            );
        }
        id
    }

    /// The session's revision, when `id` is a live session of `owner`.
    fn touch(&self, id: &str, owner: &str) -> Option<&'static str> {
        let mut sessions = self.sessions.lock().ok()?;
        let now = Instant::now();
        let session = sessions.get_mut(id)?;
        if now.saturating_duration_since(session.last) >= self.idle {
            sessions.remove(id);
            return None;
        }
        if session.owner != owner {
            return None;
        }
        session.last = now;
        Some(session.version)
    }

    fn close(&self, id: &str, owner: &str) -> bool {
        let Ok(mut sessions) = self.sessions.lock() else {
            return false;
        };
        if sessions.get(id).is_some_and(|s| s.owner == owner) {
            sessions.remove(id);
            true
        } else {
            false
        }
    }
}

/// Who a caller is, for sessions and the rate limit: the role, the user
/// (`sub`) and the API key, hashed.
fn owner_of(caller: &Caller) -> String {
    use sha2::Digest as _;
    let claim = |name: &str| {
        caller
            .claims
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let digest = sha2::Sha256::digest(
        format!("{}\0{}\0{}", caller.role, claim("sub"), claim("api_key_id")).as_bytes(),
    );
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The URL the tenant is reached at (with `/t/{name}` when addressed by
/// path): `server.public_url`, else the request's `Host`.
fn base_url(tenant: &Tenant, parts: &http::request::Parts) -> String {
    let current = parts.uri.path();
    let original = parts
        .extensions
        .get::<OriginalUri>()
        .map_or(current, |uri| uri.0.path());
    let prefix = original.strip_suffix(current).unwrap_or("");
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let routed_by_host = parts
        .extensions
        .get::<crate::tenants::RoutedTenant>()
        .is_some()
        && prefix.is_empty();
    let public = tenant
        .mcp
        .public_url
        .as_deref()
        .map(|u| u.trim_end_matches('/'));
    let origin = match public {
        Some(public) if !routed_by_host => public.to_owned(),
        Some(public) => {
            let scheme = public.split_once("://").map_or("http", |(s, _)| s);
            format!("{scheme}://{host}")
        }
        None => format!("http://{host}"),
    };
    format!("{origin}{prefix}")
}

fn resource_metadata_url(base: &str) -> String {
    format!("{base}/.well-known/oauth-protected-resource/mcp")
}

/// `GET /.well-known/oauth-protected-resource[/mcp]`: RFC 9728 metadata of
/// the `/mcp` resource, naming Sovra's auth as its authorization server.
pub(crate) async fn protected_resource(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let Some(tenant) = state.tenants.resolve(&parts) else {
        return GatewayError::NoTenant.into_response();
    };
    if !tenant.mcp.enabled {
        return not_found();
    }
    let base = base_url(&tenant, &parts);
    (
        [(header::CACHE_CONTROL, "public, max-age=600")],
        Json(json!({
            "resource": format!("{base}/mcp"),
            "authorization_servers": [format!("{base}/auth/v1")],
            "bearer_methods_supported": ["header"],
            "resource_name": "Sovra MCP",
        })),
    )
        .into_response()
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": "The MCP endpoint is disabled (mcp.enabled)"})),
    )
        .into_response()
}

/// An HTTP refusal whose body is a JSON-RPC error without id.
fn refuse(status: StatusCode, code: i64, message: impl Into<String>) -> Response {
    (
        status,
        Json(RpcError::new(Value::Null, code, message).to_json()),
    )
        .into_response()
}

fn unauthorized(base: &str, error: Option<&str>, message: &str) -> Response {
    let mut challenge = format!(
        "Bearer resource_metadata=\"{}\"",
        resource_metadata_url(base)
    );
    if let Some(error) = error {
        challenge.push_str(&format!(", error=\"{error}\""));
    }
    let mut response = refuse(StatusCode::UNAUTHORIZED, -32001, message);
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The credentials as the gateway reads them. MCP clients that can only
/// send `Authorization` may send an opaque `sb_…` key as the bearer alone:
/// it then counts as the `apikey` too. A Sovra API key (`sovra_sk_…`) as
/// the bearer is the caller, with or without an `apikey` beside it. An
/// OAuth client (the MCP authorization flow) sends only its access token:
/// the tenant's publishable key then stands in as the `apikey`, so that
/// `server.require_apikey` does not shut such clients out, while the
/// token alone, fully verified, still decides who the caller is.
fn credentials(tenant: &Tenant, headers: &HeaderMap) -> HeaderMap {
    let mut headers = headers.clone();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());
    let has_apikey = headers.contains_key("apikey");
    if let Some(token) = &bearer
        && (token.starts_with("sovra_sk_")
            || (!has_apikey && crate::opaque_keys::looks_opaque(token)))
        && let Ok(value) = HeaderValue::from_str(token)
    {
        headers.insert(HeaderName::from_static("apikey"), value);
        if token.starts_with("sovra_sk_") {
            // The key itself is the caller (the gateway reads a Sovra API
            // key's role only without a bearer).
            headers.remove(header::AUTHORIZATION);
        }
    } else if bearer.is_some()
        && !has_apikey
        && let Ok(value) = HeaderValue::from_str(&tenant.api_keys.anon)
    {
        headers.insert(HeaderName::from_static("apikey"), value);
    }
    headers
}

fn media_ok(headers: &HeaderMap, name: HeaderName, wanted: &[&str]) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|text| {
            text.split(',').any(|part| {
                let media = part.split(';').next().unwrap_or("").trim();
                wanted.iter().any(|w| media.eq_ignore_ascii_case(w))
            })
        })
    })
}

/// `/mcp`: `POST` a message, `DELETE` a session; `GET` is 405 (this
/// server sends no messages of its own).
pub(crate) async fn endpoint(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let Some(tenant) = state.tenants.resolve(&parts) else {
        return GatewayError::NoTenant.into_response();
    };
    let mcp = &tenant.mcp;
    if !mcp.enabled {
        return not_found();
    }
    let base = base_url(&tenant, &parts);
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let public = mcp.public_url.as_deref().and_then(proto::origin_of);
        let allowed = origin
            .to_str()
            .is_ok_and(|o| proto::origin_allowed(o, public, &mcp.origins));
        if !allowed {
            return refuse(
                StatusCode::FORBIDDEN,
                INVALID_ORIGIN,
                "Forbidden: this Origin may not call /mcp (mcp.allowed_origins)",
            );
        }
    }
    match parts.method {
        Method::POST | Method::DELETE => {}
        Method::GET => {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "POST, DELETE")],
                Json(RpcError::new(Value::Null, -32000, "Method Not Allowed: this server sends no messages of its own, so it offers no SSE stream").to_json()),
            )
                .into_response();
        }
        _ => {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                [(header::ALLOW, "POST, DELETE")],
                Json(RpcError::new(Value::Null, -32000, "Method Not Allowed").to_json()),
            )
                .into_response();
        }
    }
    // Credentials first: without any, no answer but where to get them.
    if !parts.headers.contains_key("apikey") && !parts.headers.contains_key(header::AUTHORIZATION) {
        return unauthorized(
            &base,
            None,
            "Unauthorized: send `apikey` and `Authorization: Bearer <user token | service key | API key>`",
        );
    }
    let headers = credentials(&tenant, &parts.headers);
    let caller = match crate::gateway::authenticate(&tenant, &headers, None) {
        Ok(caller) => caller,
        Err(GatewayError::NoTenant) => return GatewayError::NoTenant.into_response(),
        Err(err) => {
            let message = match &err {
                GatewayError::InvalidToken(message) => format!("Unauthorized: {message}"),
                GatewayError::InvalidApiKey => "Unauthorized: invalid API key".to_owned(),
                GatewayError::MissingApiKey => "Unauthorized: no API key".to_owned(),
                _ => "Unauthorized: Authorization must be `Bearer <token>`".to_owned(),
            };
            return unauthorized(&base, Some("invalid_token"), &message);
        }
    };
    let owner = owner_of(&caller);
    let limited = mcp.limiter.lock().map_or(Ok(()), |mut l| {
        l.hit(&owner, mcp.requests_per_minute, Instant::now())
    });
    if let Err(wait) = limited {
        let mut response = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            -32000,
            format!("Too Many Requests: over mcp.requests_per_minute; retry in {wait} s"),
        );
        if let Ok(value) = HeaderValue::from_str(&wait.to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        return response;
    }
    if let Some(version) = parts.headers.get(VERSION_HEADER)
        && !version.to_str().is_ok_and(proto::is_supported)
    {
        return refuse(
            StatusCode::BAD_REQUEST,
            proto::INVALID_REQUEST,
            format!(
                "Bad Request: unsupported MCP-Protocol-Version (supported: {})",
                proto::SUPPORTED_VERSIONS.join(", ")
            ),
        );
    }
    let session = parts
        .headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if parts.method == Method::DELETE {
        let Some(session) = session else {
            return refuse(
                StatusCode::BAD_REQUEST,
                proto::INVALID_REQUEST,
                "Bad Request: Mcp-Session-Id header is required",
            );
        };
        return if mcp.close(&session, &owner) {
            StatusCode::NO_CONTENT.into_response()
        } else {
            refuse(StatusCode::NOT_FOUND, -32001, "Session not found")
        };
    }
    if !media_ok(&parts.headers, header::CONTENT_TYPE, &["application/json"]) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            proto::INVALID_REQUEST,
            "Unsupported Media Type: Content-Type must be application/json",
        );
    }
    if parts.headers.contains_key(header::ACCEPT)
        && !media_ok(
            &parts.headers,
            header::ACCEPT,
            &["application/json", "application/*", "*/*"],
        )
    {
        return refuse(
            StatusCode::NOT_ACCEPTABLE,
            proto::INVALID_REQUEST,
            "Not Acceptable: this server answers application/json",
        );
    }
    let too_large = || {
        refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            proto::INVALID_REQUEST,
            format!(
                "Payload Too Large: a message may have at most {} bytes (mcp.max_request_bytes)",
                mcp.max_request_bytes
            ),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > mcp.max_request_bytes as u64) {
        return too_large();
    }
    let Ok(body) = axum::body::to_bytes(body, mcp.max_request_bytes).await else {
        return too_large();
    };
    let message = match proto::parse(&body) {
        Ok(message) => message,
        Err(err) => return (StatusCode::BAD_REQUEST, Json(err.to_json())).into_response(),
    };
    let (id, method, params) = match message {
        Message::Notification { .. } | Message::Response => {
            if let Some(session) = &session
                && mcp.touch(session, &owner).is_none()
            {
                return refuse(StatusCode::NOT_FOUND, -32001, "Session not found");
            }
            return StatusCode::ACCEPTED.into_response();
        }
        Message::Request { id, method, params } => (id, method, params),
    };
    if method == "initialize" {
        let asked = params.get("protocolVersion").and_then(Value::as_str);
        let version = proto::negotiate(asked);
        let session = mcp.open_session(version, &owner);
        let mut response = Json(proto::result(
            &id,
            proto::initialize_result(version, &instructions(&caller, mcp.writes)),
        ))
        .into_response();
        if let Ok(value) = HeaderValue::from_str(&session) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(SESSION_HEADER), value);
        }
        return response;
    }
    let Some(session) = session else {
        return refuse(
            StatusCode::BAD_REQUEST,
            proto::INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header is required (send initialize first)",
        );
    };
    if mcp.touch(&session, &owner).is_none() {
        return refuse(StatusCode::NOT_FOUND, -32001, "Session not found");
    }
    let answer = match method.as_str() {
        "ping" => proto::result(&id, json!({})),
        "tools/list" => proto::result(&id, json!({"tools": tools::catalogue(mcp.writes)})),
        "tools/call" => match call_tool(&tenant, &caller, &parts.headers, &params).await {
            Ok(result) => proto::result(&id, result),
            Err(err) => RpcError::new(id, err.0, err.1).to_json(),
        },
        other => RpcError::new(
            id,
            proto::METHOD_NOT_FOUND,
            format!("Method not found: {other}"),
        )
        .to_json(),
    };
    Json(answer).into_response()
}

/// JSON-RPC code of a refused `Origin` (a server error code).
const INVALID_ORIGIN: i64 = -32000;

fn instructions(caller: &Caller, writes: bool) -> String {
    let who = match caller.claims.get("sub").and_then(Value::as_str) {
        Some(_) => "a signed-in user",
        None => caller.role.as_str(),
    };
    format!(
        "Sovra: a PostgreSQL database with auth, storage and row-level security. Every tool runs as {who}: you see and change only what that caller may. Start with list_tables and describe_table, then query (PostgREST filters) or vector_search.{}",
        if writes {
            ""
        } else {
            " This server is read-only."
        }
    )
}

/// Runs `tools/call`: `Ok` is the tool's result (an `isError` result for
/// refusals the model should read), `Err` a protocol error.
async fn call_tool(
    tenant: &Arc<Tenant>,
    caller: &Caller,
    headers: &HeaderMap,
    params: &Map<String, Value>,
) -> Result<Value, (i64, String)> {
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err((
            proto::INVALID_PARAMS,
            "Invalid params: tools/call needs a tool name".to_owned(),
        ));
    };
    let empty = Map::new();
    let arguments = match params.get("arguments") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(arguments)) => arguments,
        Some(_) => {
            return Err((
                proto::INVALID_PARAMS,
                "Invalid params: arguments must be an object".to_owned(),
            ));
        }
    };
    let action = match tools::call(name, arguments, tenant.mcp.writes) {
        Ok(action) => action,
        Err(CallError::UnknownTool(name)) => {
            return Err((proto::INVALID_PARAMS, format!("Unknown tool: {name}")));
        }
        Err(CallError::InvalidArguments(message)) => {
            return Ok(proto::tool_result(
                format!("Invalid arguments for {name}: {message}"),
                true,
            ));
        }
    };
    let (text, is_error) = run(tenant, caller, headers, action).await;
    Ok(proto::tool_result(text, is_error))
}

/// What a tool answers: the text and whether it is a refusal.
type Answer = (String, bool);

async fn run(tenant: &Arc<Tenant>, caller: &Caller, headers: &HeaderMap, action: Action) -> Answer {
    let safe = crate::routes::safe_headers(headers);
    match action {
        Action::Rest(call) => rest(tenant, caller, safe, &call, None).await,
        Action::Nearest {
            call,
            column,
            vector,
            metric,
        } => {
            let Some(metric) = sovra_rest_plan::Metric::parse(&metric) else {
                return (format!("unknown metric {metric}"), true);
            };
            let nearest = sovra_rest_plan::Nearest {
                column: &column,
                vector: &vector,
                metric,
            };
            rest(tenant, caller, safe, &call, Some(&nearest)).await
        }
        Action::ListTables { schema } => list_tables(tenant, caller, safe, schema).await,
        Action::DescribeTable { schema, table } => {
            describe_table(tenant, caller, safe, schema, &table).await
        }
        Action::ListBuckets => {
            storage(
                tenant,
                caller,
                safe,
                Method::GET,
                "/bucket".to_owned(),
                None,
            )
            .await
        }
        Action::ListObjects { bucket, body } => {
            storage(
                tenant,
                caller,
                safe,
                Method::POST,
                format!("/object/list/{}", tools::encode(&bucket)),
                Some(body),
            )
            .await
        }
        Action::ReadObject { bucket, path } => {
            read_object(tenant, caller, safe, &bucket, &path).await
        }
    }
}

async fn answer_text(response: Response, limit: usize) -> Answer {
    let ok = response.status().is_success();
    match axum::body::to_bytes(response.into_body(), limit).await {
        Ok(bytes) => (String::from_utf8_lossy(&bytes).into_owned(), !ok),
        Err(_) => (
            format!(
                "the answer is larger than {limit} bytes: narrow the request (select, filters, limit)"
            ),
            true,
        ),
    }
}

/// A request to `/rest/v1`, as the caller.
async fn rest(
    tenant: &Arc<Tenant>,
    caller: &Caller,
    safe: Map<String, Value>,
    call: &RestCall,
    nearest: Option<&sovra_rest_plan::Nearest<'_>>,
) -> Answer {
    let Ok(method) = Method::from_bytes(call.method.as_bytes()) else {
        return ("bad method".to_owned(), true);
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
    if call.body.is_some() {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if let Some(prefer) = call.prefer {
        headers.insert(
            HeaderName::from_static("prefer"),
            HeaderValue::from_static(prefer),
        );
    }
    if let Some(schema) = &call.schema {
        let Ok(value) = HeaderValue::from_str(schema) else {
            return (format!("invalid schema name {schema:?}"), true);
        };
        let name = if method == Method::GET {
            "accept-profile"
        } else {
            "content-profile"
        };
        headers.insert(HeaderName::from_static(name), value);
    }
    let rest_caller = sovra_rest::Caller {
        role: caller.role.clone(),
        claims: caller.claims.clone(),
        headers: safe,
    };
    let request = sovra_rest::HttpRequest {
        method: &method,
        path: &call.path,
        query: (!call.query.is_empty()).then_some(call.query.as_str()),
        headers: &headers,
        body: call.body.clone().map(Bytes::from).unwrap_or_default(),
    };
    let response = match nearest {
        Some(nearest) => {
            tenant
                .rest
                .handle_nearest(&tenant.pool, &rest_caller, request, nearest)
                .await
        }
        None if tenant.mcp.writes => {
            tenant
                .rest
                .handle(&tenant.pool, &rest_caller, request)
                .await
        }
        // Without writes, even a function called with POST cannot write.
        None => {
            tenant
                .rest
                .handle_read_only(&tenant.pool, &rest_caller, request)
                .await
        }
    };
    answer_text(response, MAX_ANSWER_BYTES).await
}

/// A request to `/storage/v1`, as the caller.
async fn storage_response(
    tenant: &Arc<Tenant>,
    caller: &Caller,
    safe: Map<String, Value>,
    method: Method,
    path: String,
    body: Option<Value>,
) -> Response {
    let mut headers = HeaderMap::new();
    let body = match body {
        Some(body) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    tenant
        .storage
        .handle(sovra_storage::StorageRequest {
            method: &method,
            path: &path,
            query: None,
            headers: &headers,
            body,
            auth: Ok(sovra_storage::Principal {
                role: caller.role.clone(),
                claims: caller.claims.clone(),
            }),
            safe_headers: safe,
            keys: &tenant.keys,
        })
        .await
}

async fn storage(
    tenant: &Arc<Tenant>,
    caller: &Caller,
    safe: Map<String, Value>,
    method: Method,
    path: String,
    body: Option<Value>,
) -> Answer {
    let response = storage_response(tenant, caller, safe, method, path, body).await;
    answer_text(response, MAX_ANSWER_BYTES).await
}

/// Whether a content type is text a model can read.
fn is_text(content_type: &str) -> bool {
    let media = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    media.starts_with("text/")
        || media.ends_with("+json")
        || media.ends_with("+xml")
        || matches!(
            media.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-ndjson"
                | "application/yaml"
                | "application/x-yaml"
                | "application/toml"
                | "application/sql"
                | "application/csv"
        )
}

async fn read_object(
    tenant: &Arc<Tenant>,
    caller: &Caller,
    safe: Map<String, Value>,
    bucket: &str,
    name: &str,
) -> Answer {
    let encoded: Vec<String> = name.split('/').map(tools::encode).collect();
    let path = format!(
        "/object/authenticated/{}/{}",
        tools::encode(bucket),
        encoded.join("/")
    );
    let response = storage_response(tenant, caller, safe, Method::GET, path, None).await;
    if !response.status().is_success() {
        return answer_text(response, MAX_ANSWER_BYTES).await;
    }
    let max = tenant.mcp.read_object_max_bytes;
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    if !is_text(&content_type) {
        return (
            format!(
                "{bucket}/{name} is {content_type}, not text: read_object returns text objects only"
            ),
            true,
        );
    }
    let length = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        (
            format!("{bucket}/{name} is larger than {max} bytes (mcp.read_object_max_bytes)"),
            true,
        )
    };
    if length.is_some_and(|n| n > max as u64) {
        return too_large();
    }
    match axum::body::to_bytes(response.into_body(), max).await {
        Ok(bytes) => match String::from_utf8(bytes.to_vec()) {
            Ok(text) => (text, false),
            Err(_) => (format!("{bucket}/{name} is not UTF-8 text"), true),
        },
        Err(_) => too_large(),
    }
}

/// Runs `sql` with `params` as the caller, in a read-only request
/// transaction with the `/rest/v1` prologue (role, claims), and answers
/// its rows.
async fn as_caller(
    tenant: &Arc<Tenant>,
    caller: &Caller,
    safe: Map<String, Value>,
    sql: &str,
    params: &[&(dyn sovra_pg::tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<sovra_pg::tokio_postgres::Row>, String> {
    let context = sovra_pg::RequestContext {
        role: caller.role.clone(),
        claims: caller.claims.clone(),
        method: "POST".to_owned(),
        path: "/mcp".to_owned(),
        headers: safe,
        search_path: None,
    };
    let mut client = tenant.pool.get().await.map_err(|err| {
        tracing::warn!(error = %err, "no database connection");
        "database unavailable".to_owned()
    })?;
    let describe = |err: sovra_pg::tokio_postgres::Error| {
        err.as_db_error()
            .map_or_else(|| "database error".to_owned(), |db| db.message().to_owned())
    };
    let tx = sovra_pg::begin_request(&mut client, &context, true)
        .await
        .map_err(describe)?;
    let rows = tx.query(sql, params).await.map_err(describe)?;
    tx.commit().await.map_err(describe)?;
    Ok(rows)
}

const LIST_TABLES_SQL: &str = "
select
  coalesce((select json_agg(t order by t.schema, t.name) from (
    select n.nspname as schema, c.relname as name,
      case c.relkind when 'v' then 'view' when 'm' then 'materialized view'
        when 'f' then 'foreign table' else 'table' end as kind,
      has_table_privilege(c.oid, 'SELECT') or has_any_column_privilege(c.oid, 'SELECT') as select,
      has_table_privilege(c.oid, 'INSERT') or has_any_column_privilege(c.oid, 'INSERT') as insert,
      has_table_privilege(c.oid, 'UPDATE') or has_any_column_privilege(c.oid, 'UPDATE') as update,
      has_table_privilege(c.oid, 'DELETE') as delete,
      obj_description(c.oid, 'pg_class') as comment
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = any($1::text[]) and c.relkind in ('r', 'p', 'v', 'm', 'f')
      and has_schema_privilege(n.oid, 'USAGE')
      and (has_table_privilege(c.oid, 'SELECT,INSERT,UPDATE,DELETE')
        or has_any_column_privilege(c.oid, 'SELECT,INSERT,UPDATE'))) t), '[]'),
  coalesce((select json_agg(f order by f.schema, f.name) from (
    select n.nspname as schema, p.proname as name,
      pg_get_function_arguments(p.oid) as arguments,
      pg_get_function_result(p.oid) as returns,
      case p.provolatile when 'v' then 'volatile' when 's' then 'stable' else 'immutable' end as volatility,
      obj_description(p.oid, 'pg_proc') as comment
    from pg_proc p join pg_namespace n on n.oid = p.pronamespace
    where n.nspname = any($1::text[]) and p.prokind = 'f'
      and has_schema_privilege(n.oid, 'USAGE')
      and has_function_privilege(p.oid, 'EXECUTE')
      and not exists (select 1 from pg_depend d
        where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')) f), '[]')";

/// The schemas a tool may look at: the one asked for (if exposed), else
/// every exposed schema.
fn schemas_for(tenant: &Tenant, schema: Option<&str>) -> Result<Vec<String>, String> {
    let exposed = tenant.rest.schemas();
    match schema {
        None => Ok(exposed.to_vec()),
        Some(schema) if exposed.iter().any(|s| s == schema) => Ok(vec![schema.to_owned()]),
        Some(schema) => Err(json!({
            "code": "PGRST106",
            "message": "Invalid schema: ".to_owned() + schema,
            "hint": format!("Only the following schemas are exposed: {}", exposed.join(", ")),
        })
        .to_string()),
    }
}

async fn list_tables(
    tenant: &Arc<Tenant>,
    caller: &Caller,
    safe: Map<String, Value>,
    schema: Option<String>,
) -> Answer {
    let schemas = match schemas_for(tenant, schema.as_deref()) {
        Ok(schemas) => schemas,
        Err(err) => return (err, true),
    };
    match as_caller(tenant, caller, safe, LIST_TABLES_SQL, &[&schemas]).await {
        Ok(rows) => {
            let Some(row) = rows.first() else {
                return ("no answer".to_owned(), true);
            };
            let tables: Value = row.get(0);
            let functions: Value = row.get(1);
            (
                json!({"tables": tables, "functions": functions}).to_string(),
                false,
            )
        }
        Err(err) => (err, true),
    }
}

const DESCRIBE_SQL: &str = "
select
  has_table_privilege(c.oid, 'SELECT,INSERT,UPDATE,DELETE')
    or has_any_column_privilege(c.oid, 'SELECT,INSERT,UPDATE'),
  coalesce((select json_object_agg(a.attname, has_column_privilege(c.oid, a.attnum, 'SELECT'))
    from pg_attribute a where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped), '{}'),
  obj_description(c.oid, 'pg_class'),
  coalesce((select json_object_agg(o.name, o.visible) from (
    select name, (to_regclass(name) is not null
      and (has_table_privilege(to_regclass(name), 'SELECT')
        or has_any_column_privilege(to_regclass(name), 'SELECT'))) as visible
    from unnest($3::text[]) name) o), '{}')
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = $1 and c.relname = $2 and has_schema_privilege(n.oid, 'USAGE')";

async fn describe_table(
    tenant: &Arc<Tenant>,
    caller: &Caller,
    safe: Map<String, Value>,
    schema: Option<String>,
    table: &str,
) -> Answer {
    let schema = match schemas_for(tenant, schema.as_deref()) {
        Ok(schemas) => schemas.into_iter().next().unwrap_or_default(),
        Err(err) => return (err, true),
    };
    let not_found = || {
        (
            json!({
                "code": "PGRST205",
                "message": format!("Could not find the table '{schema}.{table}' (or you may not use it)"),
                "hint": "list_tables names the tables you may use",
            })
            .to_string(),
            true,
        )
    };
    let Some(cache) = tenant.rest.cache().get() else {
        return (
            "the schema cache is not loaded yet; try again".to_owned(),
            true,
        );
    };
    let Some(relation) = cache.relation(&schema, table) else {
        return not_found();
    };
    let qualified = |s: &str, t: &str| {
        format!(
            "{}.{}",
            sovra_rest_plan::quote_ident(s),
            sovra_rest_plan::quote_ident(t)
        )
    };
    let keys: Vec<&sovra_rest_plan::ForeignKey> = cache
        .foreign_keys
        .iter()
        .filter(|fk| {
            (fk.schema == schema && fk.table == table)
                || (fk.ref_schema == schema && fk.ref_table == table)
        })
        .collect();
    let others: Vec<String> = keys
        .iter()
        .flat_map(|fk| {
            [
                qualified(&fk.schema, &fk.table),
                qualified(&fk.ref_schema, &fk.ref_table),
            ]
        })
        .collect();
    let rows = match as_caller(
        tenant,
        caller,
        safe,
        DESCRIBE_SQL,
        &[&schema, &table, &others],
    )
    .await
    {
        Ok(rows) => rows,
        Err(err) => return (err, true),
    };
    let Some(row) = rows.first() else {
        return not_found();
    };
    let visible: bool = row.get(0);
    if !visible {
        return not_found();
    }
    let readable: Value = row.get(1);
    let comment: Option<String> = row.get(2);
    let others_visible: Value = row.get(3);
    let columns: Vec<Value> = relation
        .columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": if c.type_name.schema == "pg_catalog" { c.type_name.name.clone() } else { format!("{}.{}", c.type_name.schema, c.type_name.name) },
                "nullable": c.nullable,
                "default": c.default_expr,
                "readable": readable.get(&c.name).and_then(Value::as_bool).unwrap_or(false),
            })
        })
        .collect();
    let relationships: Vec<Value> = keys
        .iter()
        .filter_map(|fk| {
            let outgoing = fk.schema == schema && fk.table == table;
            let (other_schema, other_table) = if outgoing {
                (&fk.ref_schema, &fk.ref_table)
            } else {
                (&fk.schema, &fk.table)
            };
            let seen = others_visible
                .get(qualified(other_schema, other_table))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            seen.then(|| {
                json!({
                    "constraint": fk.name,
                    "direction": if outgoing { "many-to-one" } else { "one-to-many" },
                    "columns": fk.columns,
                    "references": {"schema": fk.ref_schema, "table": fk.ref_table, "columns": fk.ref_columns},
                    "from": {"schema": fk.schema, "table": fk.table},
                    "embed": other_table,
                })
            })
        })
        .collect();
    let kind = match relation.kind {
        sovra_rest_plan::RelationKind::Table | sovra_rest_plan::RelationKind::PartitionedTable => {
            "table"
        }
        sovra_rest_plan::RelationKind::View => "view",
        sovra_rest_plan::RelationKind::MaterializedView => "materialized view",
        sovra_rest_plan::RelationKind::ForeignTable => "foreign table",
    };
    (
        json!({
            "schema": schema,
            "name": table,
            "kind": kind,
            "comment": comment,
            "columns": columns,
            "primary_key": relation.primary_key,
            "unique_keys": relation.unique_keys,
            "relationships": relationships,
        })
        .to_string(),
        false,
    )
}
