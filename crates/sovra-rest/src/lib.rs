//! Sovra's PostgREST-compatible `/rest/v1`: the schema cache
//! ([`schema_cache`]), and the request path from URL to response bytes
//! ([`RestService::handle`]): parse (`sovra-rest-grammar`), plan
//! (`sovra-rest-plan`), execute in the caller's request transaction, and
//! answer with PostgREST's statuses, headers and error bodies.
//!
//! This crate knows nothing of how it is mounted or how callers are
//! authenticated: `sovra-server` gives it the caller's role and claims.
//! Every statement runs as the caller's role, so row-level security decides
//! what each request can see and change.

pub mod idempotency;
pub mod prepared;
pub mod replicas;
pub mod schema_cache;

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use sovra_pg::tokio_postgres::types::{ToSql, Type};
use sovra_pg::{Pool, RequestContext};

use sovra_rest_grammar::{
    CountPreference, Handling, Preferences, QueryError, ReturnPreference, TxPreference,
    decode_component, decode_query, parse_prefer, parse_query, parse_range,
};
use sovra_rest_plan::{Action, ApiError, Request, quote_ident};

pub use schema_cache::CacheCell;

/// The prologue REST requests run: the session reset
/// ([`sovra_pg::RESET_FROM`]), the request settings of
/// [`sovra_pg::REQUEST_SETTINGS_SQL`] (role, claims, method, path, headers,
/// `search_path`; parameters 1 to 8), and what only REST sets: JIT off, the
/// `Prefer: timezone` (parameter 9, `NULL` for none) and the role's own
/// settings (parameters 10 to 14, in the order of
/// [`sovra_pg::ROLE_SETTING_NAMES`], `NULL` for none), which REST takes from
/// its schema cache (as PostgREST does) instead of looking them up in the
/// catalogue for every request. See [`REST_PROLOGUE_PARAMS`].
///
/// JIT compilation is off for the request: every embed is a correlated
/// subquery whose cost estimate multiplies the one above, so a few levels of
/// embeds over five rows passed the JIT thresholds and spent seconds
/// compiling what runs in a millisecond.
pub static REST_PROLOGUE_SQL: LazyLock<String> = LazyLock::new(|| {
    let role_settings: String = sovra_pg::ROLE_SETTING_NAMES
        .iter()
        .enumerate()
        .map(|(at, name)| {
            let n = at + 10;
            format!(",\n        CASE WHEN ${n}::text IS NOT NULL THEN set_config('{name}', ${n}, true) END")
        })
        .collect();
    format!(
        "select {},\n        set_config('jit', 'off', true),\n        \
         CASE WHEN $9::text IS NOT NULL THEN set_config('timezone', $9, true) END{role_settings}\n{}",
        sovra_pg::REQUEST_SETTINGS_SQL,
        sovra_pg::RESET_FROM
    )
});

/// How many parameters [`REST_PROLOGUE_SQL`] takes (all `text`).
pub const REST_PROLOGUE_PARAMS: usize = 14;

/// Readies a new request connection for REST requests: prepares
/// [`REST_PROLOGUE_SQL`] (kept in the connection's statement cache, where
/// every request looks it up) and runs it once as `anon` in a transaction
/// that is rolled back, so that PostgreSQL has planned it and read the
/// catalogue entries it names (the session reset function, the role
/// settings). A cold tenant does this on its request pool's first
/// connection while its schema cache loads on another, so that its first
/// request finds that work done. On any failure the connection is closed
/// rather than returned to the pool in an unknown state.
pub async fn warm_connection(
    client: sovra_pg::PooledClient,
) -> Result<(), sovra_pg::tokio_postgres::Error> {
    let ran = async {
        let prologue = client
            .prepare_typed_cached(&REST_PROLOGUE_SQL, &[Type::TEXT; REST_PROLOGUE_PARAMS])
            .await?;
        let mut params: [Option<&str>; REST_PROLOGUE_PARAMS] = [None; REST_PROLOGUE_PARAMS];
        params[..7].copy_from_slice(&[
            Some("anon"),
            Some(r#"{"role":"anon"}"#),
            Some(""),
            Some(""),
            Some("GET"),
            Some("/"),
            Some("{}"),
        ]);
        let values: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let (begun, applied) = tokio::join!(
            client.batch_execute("BEGIN READ ONLY"),
            client.query(&prologue, &values),
        );
        let rolled_back = client.batch_execute("ROLLBACK").await;
        begun.and(applied).and(rolled_back).map(drop)
    }
    .await;
    if ran.is_err() {
        // Dropping the unwrapped client closes the connection.
        drop(sovra_pg::PooledClient::take(client));
    }
    ran
}

/// Settings of one tenant's REST service.
#[derive(Clone, Debug)]
pub struct RestConfig {
    /// Exposed schemas; the first is the default.
    pub schemas: Vec<String>,
    /// The most rows a read returns (`db-max-rows`).
    pub max_rows: Option<i64>,
    /// `Accept: application/vnd.pgrst.plan` answers (`db-plan-enabled`);
    /// when false, the login role's `pgrst.db_plan_enabled` setting can
    /// still turn it on.
    pub plan_enabled: bool,
    /// Who reads the OpenAPI root.
    pub openapi_mode: OpenApiMode,
    /// Seconds a response stored under an `Idempotency-Key` is replayed
    /// (`rest.idempotency_retention`).
    pub idempotency_retention: u32,
}

/// Who reads the OpenAPI document at `GET /rest/v1/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenApiMode {
    /// The service role only, as hosted Supabase.
    ServiceRole,
    /// Everyone; each caller sees what its role may use (PostgREST's
    /// default), as PostgreSQL answers for the role.
    FollowPrivileges,
    /// Everyone; everything.
    IgnorePrivileges,
    Disabled,
}

impl OpenApiMode {
    /// From `rest.openapi_mode` (validated by the configuration).
    pub fn from_config(value: &str) -> OpenApiMode {
        match value {
            "follow-privileges" => OpenApiMode::FollowPrivileges,
            "ignore-privileges" => OpenApiMode::IgnorePrivileges,
            "disabled" => OpenApiMode::Disabled,
            _ => OpenApiMode::ServiceRole,
        }
    }
}

/// One tenant's REST service.
#[derive(Debug)]
pub struct RestService {
    config: RestConfig,
    cache: Arc<CacheCell>,
    listener: tokio::task::JoinHandle<()>,
    statements: prepared::Statements,
    /// Read replicas, when `database.read_urls` names any.
    replicas: std::sync::OnceLock<Arc<replicas::Replicas>>,
}

impl Drop for RestService {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// How a request runs beyond what it says itself.
#[derive(Clone, Copy, Default)]
struct Mode<'a> {
    /// A read ordered by distance to a query vector.
    nearest: Option<&'a sovra_rest_plan::Nearest<'a>>,
    /// In a read-only transaction whatever the method.
    read_only: bool,
    /// The request's `Idempotency-Key`, when it sent one with a write.
    idempotency: Option<&'a idempotency::Idempotency>,
}

/// The parts of an HTTP request the REST layer reads; `path` is what
/// follows `/rest/v1`.
#[derive(Debug)]
pub struct HttpRequest<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

/// Who is asking, as the gateway verified it.
#[derive(Clone, Debug)]
pub struct Caller {
    pub role: String,
    pub claims: Map<String, Value>,
    /// Request headers for `request.headers` (credentials removed).
    pub headers: Map<String, Value>,
}

impl RestService {
    /// Starts the service: loads the schema cache over `config`'s
    /// connection settings and keeps it fresh. Waits up to `wait` for the
    /// first load; requests before it answer 503 PGRST002.
    pub async fn start(
        config: RestConfig,
        connection: sovra_pg::tokio_postgres::Config,
        wait: std::time::Duration,
    ) -> RestService {
        let cache = Arc::new(CacheCell::default());
        let (loaded_tx, mut loaded_rx) = tokio::sync::watch::channel(false);
        let listener = tokio::spawn(schema_cache::keep_fresh(
            cache.clone(),
            connection,
            config.schemas.clone(),
            loaded_tx,
        ));
        let _ = tokio::time::timeout(wait, loaded_rx.wait_for(|loaded| *loaded)).await;
        RestService {
            config,
            cache,
            listener,
            statements: prepared::Statements::default(),
            replicas: std::sync::OnceLock::new(),
        }
    }

    /// The schema cache cell (for tests and diagnostics).
    pub fn cache(&self) -> &CacheCell {
        &self.cache
    }

    /// The main statements prepared per connection (for tests and
    /// diagnostics).
    pub fn statements(&self) -> &prepared::Statements {
        &self.statements
    }

    /// Sends reads that may run on a replica to `replicas` from now on
    /// (once; a second set is ignored).
    pub fn attach_replicas(&self, replicas: Arc<replicas::Replicas>) {
        let _ = self.replicas.set(replicas);
    }

    /// The read replicas, if any.
    pub fn replicas(&self) -> Option<&Arc<replicas::Replicas>> {
        self.replicas.get()
    }

    /// The exposed schemas; the first is the default.
    pub fn schemas(&self) -> &[String] {
        &self.config.schemas
    }

    /// Answers one request to `/rest/v1{path}`.
    pub async fn handle(&self, pool: &Pool, caller: &Caller, request: HttpRequest<'_>) -> Response {
        let HttpRequest {
            method,
            path,
            query,
            headers,
            body,
        } = request;
        let idempotency = match idempotency::Idempotency::from_request(
            method,
            path,
            query,
            headers,
            &body,
            &caller.role,
            &caller.claims,
            self.config.idempotency_retention,
        ) {
            Ok(found) => found,
            Err(err) => return error_response(&err),
        };
        let mode = Mode {
            idempotency: idempotency.as_ref(),
            ..Mode::default()
        };
        let result = self
            .try_handle(pool, caller, method, path, query, headers, body, mode)
            .await;
        match idempotency {
            Some(idempotency) => {
                let response = idempotency.finish(result).await;
                // Committed inside `finish`: the position is the primary's
                // now, which is past that commit.
                if let Some(replicas) = self.replicas.get()
                    && response.status().is_success()
                {
                    let key = replicas::Replicas::caller_key(&caller.role, &caller.claims);
                    replicas.record_write_now(pool, &key).await;
                }
                response
            }
            None => result.unwrap_or_else(|err| error_response(&err)),
        }
    }

    /// Answers one request to `/rest/v1{path}` in a read-only transaction
    /// whatever its method: a function called with `POST` runs, but cannot
    /// write (`25006`). For the MCP endpoint while its writes are off.
    pub async fn handle_read_only(
        &self,
        pool: &Pool,
        caller: &Caller,
        request: HttpRequest<'_>,
    ) -> Response {
        let HttpRequest {
            method,
            path,
            query,
            headers,
            body,
        } = request;
        let mode = Mode {
            read_only: true,
            ..Mode::default()
        };
        match self
            .try_handle(pool, caller, method, path, query, headers, body, mode)
            .await
        {
            Ok(response) => response,
            Err(err) => error_response(&err),
        }
    }

    /// Answers a `GET /rest/v1/{relation}` whose rows come nearest first
    /// to a query vector ([`sovra_rest_plan::plan_nearest`]): the same
    /// parsing, planning, request transaction and response as any read,
    /// as the caller. For the MCP endpoint's `vector_search`.
    pub async fn handle_nearest(
        &self,
        pool: &Pool,
        caller: &Caller,
        request: HttpRequest<'_>,
        nearest: &sovra_rest_plan::Nearest<'_>,
    ) -> Response {
        let HttpRequest {
            method,
            path,
            query,
            headers,
            body,
        } = request;
        if *method != Method::GET || path.trim_matches('/').is_empty() || path.contains("/rpc/") {
            return error_response(&ApiError::not_implemented(
                "a nearest-neighbour search is a read of one relation",
            ));
        }
        match self
            .try_handle(
                pool,
                caller,
                method,
                path,
                query,
                headers,
                body,
                Mode {
                    nearest: Some(nearest),
                    read_only: true,
                    idempotency: None,
                },
            )
            .await
        {
            Ok(response) => response,
            Err(err) => error_response(&err),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn try_handle(
        &self,
        pool: &Pool,
        caller: &Caller,
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
        mode: Mode<'_>,
    ) -> Result<Response, ApiError> {
        let segments: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .filter(|s| !s.is_empty())
            .map(decode_component)
            .collect();
        let relation = match segments.as_slice() {
            [] => {
                let mode = self.config.openapi_mode;
                return match *method {
                    Method::GET | Method::HEAD if mode == OpenApiMode::Disabled => {
                        Err(ApiError::openapi_restricted()
                            .with_hint("The OpenAPI description is disabled (rest.openapi_mode)."))
                    }
                    // By default the catalogue of every table and function
                    // is for the project's operators, as on hosted Supabase.
                    Method::GET | Method::HEAD
                        if mode == OpenApiMode::ServiceRole && caller.role != "service_role" =>
                    {
                        Err(ApiError::openapi_restricted())
                    }
                    Method::GET | Method::HEAD => {
                        let schema = self.schema(headers, true)?;
                        let cache = self
                            .cache
                            .get()
                            .ok_or_else(ApiError::schema_cache_unavailable)?;
                        let document = if mode == OpenApiMode::FollowPrivileges {
                            let visible =
                                self.privileges(pool, caller, method, path, &schema).await?;
                            let filtered = visible.filter(&cache, &schema);
                            sovra_rest_plan::openapi(&filtered, &schema, "/rest/v1")
                        } else {
                            sovra_rest_plan::openapi(&cache, &schema, "/rest/v1")
                        };
                        let mut response_headers = HeaderMap::new();
                        insert_header(
                            &mut response_headers,
                            header::CONTENT_TYPE,
                            "application/openapi+json; charset=utf-8",
                        );
                        if *method == Method::HEAD {
                            Ok((StatusCode::OK, response_headers).into_response())
                        } else {
                            Ok((StatusCode::OK, response_headers, document.to_string())
                                .into_response())
                        }
                    }
                    Method::OPTIONS => {
                        Ok((StatusCode::OK, [(header::ALLOW, "OPTIONS,GET,HEAD")]).into_response())
                    }
                    _ => Err(ApiError::unsupported_method(method.as_str())),
                };
            }
            [first, function] if first == "rpc" => {
                let function = function.clone();
                return self
                    .call(
                        pool,
                        caller,
                        method,
                        path,
                        &function,
                        query,
                        headers,
                        body,
                        mode.read_only,
                        mode.idempotency,
                    )
                    .await;
            }
            [relation] => relation.clone(),
            _ => return Err(ApiError::invalid_path()),
        };
        let action = match *method {
            Method::GET | Method::HEAD => Action::Read,
            Method::POST => Action::Insert,
            Method::PATCH => Action::Update,
            Method::DELETE => Action::Delete,
            Method::OPTIONS => {
                // What the relation allows, as PostgREST lists it.
                let schema = self.schema(headers, true)?;
                let cache = self
                    .cache
                    .get()
                    .ok_or_else(ApiError::schema_cache_unavailable)?;
                let table = cache.relation(&schema, &relation).ok_or_else(|| {
                    ApiError::unknown_relation(
                        &schema,
                        &relation,
                        cache.suggest(&schema, &relation),
                    )
                })?;
                let mut allow = vec!["OPTIONS", "GET", "HEAD"];
                if table.insertable {
                    allow.push("POST");
                }
                if table.insertable && table.updatable && !table.primary_key.is_empty() {
                    allow.push("PUT");
                }
                if table.updatable {
                    allow.push("PATCH");
                }
                if table.deletable {
                    allow.push("DELETE");
                }
                let mut response = StatusCode::OK.into_response();
                insert_header(response.headers_mut(), header::ALLOW, &allow.join(","));
                return Ok(response);
            }
            Method::PUT => Action::Put,
            _ => return Err(ApiError::unsupported_method(method.as_str())),
        };
        let read = action == Action::Read;
        let schema = self.schema(headers, read)?;
        let (media, strip_nulls) = negotiate(headers)?;
        let singular = media == Media::Object;
        if !read {
            check_content_type(headers)?;
        }

        let pairs = query.map(decode_query).unwrap_or_default();
        let params = query_params(&pairs, false)?;
        let (prefs, range) = request_headers(headers, read)?;
        let body_text = if read {
            None
        } else {
            Some(
                std::str::from_utf8(&body)
                    .map_err(|_| ApiError::invalid_body("Empty or invalid json"))?,
            )
        };

        let cache = self
            .cache
            .get()
            .ok_or_else(ApiError::schema_cache_unavailable)?;
        let request = Request {
            schema: &schema,
            relation: &relation,
            action,
            query: &params,
            prefs: &prefs,
            range,
            body: body_text,
            max_rows: if read { self.config.max_rows } else { None },
            csv: media == Media::Csv
                || matches!(media, Media::Plan(PlanMedia { for_csv: true, .. })),
            geojson: media == Media::GeoJson,
            strip_nulls,
        };
        let plan = match mode.nearest {
            Some(nearest) => sovra_rest_plan::plan_nearest(&cache, &request, nearest)?,
            None => sovra_rest_plan::plan(&cache, &request)?,
        };

        if let Media::Plan(plan_media) = media {
            return self
                .explain(
                    pool, caller, method, path, &schema, read, &plan, plan_media, headers,
                )
                .await;
        }
        let mut outcome = self
            .execute(
                pool,
                caller,
                method,
                path,
                &schema,
                read || mode.read_only,
                read,
                &plan,
                &prefs,
                singular,
                mode.idempotency,
            )
            .await
            .map_err(|err| geojson_unavailable(err, media, headers))?;
        let location = (action == Action::Insert
            && prefs.return_ == Some(ReturnPreference::HeadersOnly))
        .then(|| location(&cache, &schema, &relation, &outcome.body))
        .flatten();
        let settings = std::mem::take(&mut outcome.settings);
        let mut response = self.respond(method, action, &schema, &plan, &prefs, media, outcome);
        if let Some(location) = location {
            insert_header(response.headers_mut(), header::LOCATION, &location);
        }
        settings.apply(response)
    }

    #[allow(clippy::too_many_arguments)]
    async fn call(
        &self,
        pool: &Pool,
        caller: &Caller,
        method: &Method,
        path: &str,
        function: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: Bytes,
        read_only: bool,
        idempotency: Option<&idempotency::Idempotency>,
    ) -> Result<Response, ApiError> {
        let is_get = match *method {
            Method::GET | Method::HEAD => true,
            Method::POST => false,
            Method::OPTIONS => {
                // Volatile functions are called with POST only.
                let schema = self.schema(headers, true)?;
                let cache = self
                    .cache
                    .get()
                    .ok_or_else(ApiError::schema_cache_unavailable)?;
                let overloads: Vec<&sovra_rest_plan::Routine> = cache
                    .routines
                    .iter()
                    .filter(|r| r.schema == schema && r.name == function)
                    .collect();
                if overloads.is_empty() {
                    return Err(ApiError::unknown_function(
                        &schema,
                        function,
                        &[],
                        false,
                        None,
                        None,
                    ));
                }
                let allow = if overloads
                    .iter()
                    .all(|r| r.volatility == sovra_rest_plan::Volatility::Volatile)
                {
                    "OPTIONS,POST"
                } else {
                    "OPTIONS,GET,HEAD,POST"
                };
                return Ok((StatusCode::OK, [(header::ALLOW, allow)]).into_response());
            }
            _ => return Err(ApiError::rpc_method(method.as_str())),
        };
        let schema = self.schema(headers, is_get)?;
        let (media, strip_nulls) = negotiate(headers)?;
        if media == Media::Csv {
            return Err(ApiError::not_acceptable(
                header_text(headers, "accept").unwrap_or_default(),
            ));
        }
        let singular = media == Media::Object;
        let cache = self
            .cache
            .get()
            .ok_or_else(ApiError::schema_cache_unavailable)?;
        let names = sovra_rest_plan::parameter_names(&cache, &schema, function);
        let pairs = query.map(decode_query).unwrap_or_default();
        let (mut arguments, rest): (Vec<Pair>, Vec<Pair>) = pairs
            .into_iter()
            .partition(|(key, _)| is_get && names.contains(key));
        let params = query_params(&rest, is_get)?;
        arguments.extend(params.arguments.iter().cloned());
        let (prefs, range) = request_headers(headers, is_get)?;
        let raw = if is_get { None } else { raw_media(headers) };
        let body_text = match raw {
            Some(_) => "",
            None => std::str::from_utf8(&body)
                .map_err(|_| ApiError::invalid_body("Empty or invalid json"))?,
        };
        let call = sovra_rest_plan::plan_call(
            &cache,
            &sovra_rest_plan::CallRequest {
                schema: &schema,
                function,
                arguments: match raw {
                    _ if is_get => sovra_rest_plan::Arguments::Query(&arguments),
                    Some(media) => sovra_rest_plan::Arguments::Raw(media, &body),
                    None => sovra_rest_plan::Arguments::Json(body_text),
                },
                is_get,
                query: &params,
                prefs: &prefs,
                range,
                max_rows: self.config.max_rows,
                strip_nulls,
                geojson: media == Media::GeoJson,
            },
        )?;
        let strict_max = prefs
            .max_affected
            .filter(|_| prefs.handling == Some(Handling::Strict));
        if strict_max.is_some() && call.result != sovra_rest_plan::RoutineResult::Set {
            return Err(ApiError::max_affected_not_set());
        }
        if let Media::Plan(plan_media) = media {
            return self
                .explain(
                    pool,
                    caller,
                    method,
                    path,
                    &schema,
                    call.read_only,
                    &call.plan,
                    plan_media,
                    headers,
                )
                .await;
        }
        let mut outcome = self
            .execute(
                pool,
                caller,
                method,
                path,
                &schema,
                call.read_only || read_only,
                call.stable,
                &call.plan,
                &prefs,
                singular,
                idempotency,
            )
            .await
            .map_err(|err| geojson_unavailable(err, media, headers))?;
        let settings = std::mem::take(&mut outcome.settings);
        if let Some(max) = strict_max
            && outcome.page_count > max
        {
            return Err(ApiError::max_affected(outcome.page_count));
        }
        let mut response_headers = HeaderMap::new();
        if self.config.schemas.len() > 1 {
            insert_header(
                &mut response_headers,
                HeaderName::from_static("content-profile"),
                &schema,
            );
        }
        let content_type = media_type(media);
        if let Some(count) = prefs.count {
            insert_header(
                &mut response_headers,
                HeaderName::from_static("preference-applied"),
                match count {
                    CountPreference::Exact => "count=exact",
                    CountPreference::Planned => "count=planned",
                    CountPreference::Estimated => "count=estimated",
                },
            );
        }
        use sovra_rest_plan::RoutineResult;
        // A single value or row is a page of one, as PostgREST counts it;
        // with a count asked for, the total is that one row.
        let single_range = |response_headers: &mut HeaderMap| {
            let total = if prefs.count.is_some() { "1" } else { "*" };
            insert_header(
                response_headers,
                header::CONTENT_RANGE,
                &format!("0-0/{total}"),
            );
        };
        let (status, body) = match call.result {
            RoutineResult::Void => {
                return settings.apply((StatusCode::NO_CONTENT, response_headers).into_response());
            }
            RoutineResult::Scalar => {
                single_range(&mut response_headers);
                (StatusCode::OK, outcome.body)
            }
            RoutineResult::SingleRow => {
                single_range(&mut response_headers);
                (
                    StatusCode::OK,
                    if outcome.page_count == 0 {
                        "null".to_owned()
                    } else {
                        unwrap_single(&outcome.body)
                    },
                )
            }
            RoutineResult::Set => {
                let total_text = outcome
                    .total
                    .map_or_else(|| "*".to_owned(), |t| t.to_string());
                let lo = call.plan.offset;
                let range = if outcome.page_count == 0 {
                    format!("*/{total_text}")
                } else {
                    format!("{lo}-{}/{total_text}", lo + outcome.page_count - 1)
                };
                insert_header(&mut response_headers, header::CONTENT_RANGE, &range);
                let status = match outcome.total {
                    Some(total) if outcome.page_count < total => StatusCode::PARTIAL_CONTENT,
                    _ => StatusCode::OK,
                };
                let body = if singular {
                    unwrap_single(&outcome.body)
                } else {
                    outcome.body
                };
                (status, body)
            }
        };
        insert_header(&mut response_headers, header::CONTENT_TYPE, content_type);
        if *method == Method::HEAD {
            return settings.apply((status, response_headers).into_response());
        }
        settings.apply((status, response_headers, body).into_response())
    }

    /// The request's context for the prologue, as [`Self::execute`] sets it.
    fn context(caller: &Caller, method: &Method, path: &str, schema: &str) -> RequestContext {
        RequestContext {
            role: caller.role.clone(),
            claims: caller.claims.clone(),
            method: method.to_string(),
            path: path.to_owned(),
            headers: caller.headers.clone(),
            search_path: Some(format!("{}, \"extensions\"", quote_ident(schema))),
        }
    }

    /// `Accept: application/vnd.pgrst.plan`: the statement's `EXPLAIN`, in
    /// the caller's request transaction, which is always rolled back (so
    /// `options=analyze` changes nothing). Only when plans are enabled: by
    /// `rest.plan_enabled`, or the login role's `pgrst.db_plan_enabled`
    /// setting (PostgREST's in-database configuration); else 406.
    #[allow(clippy::too_many_arguments)]
    async fn explain(
        &self,
        pool: &Pool,
        caller: &Caller,
        method: &Method,
        path: &str,
        schema: &str,
        read: bool,
        plan: &sovra_rest_plan::Plan,
        media: PlanMedia,
        headers: &HeaderMap,
    ) -> Result<Response, ApiError> {
        let anonymous = caller.role == "anon";
        let db = |err| database_error(err, anonymous);
        let mut client = pool.get().await.map_err(|err| {
            if matches!(err, sovra_pg::PoolError::Timeout(_)) {
                ApiError::pool_timeout()
            } else {
                tracing::warn!(error = %err, "no database connection");
                ApiError::connection()
            }
        })?;
        let context = Self::context(caller, method, path, schema);
        let tx = sovra_pg::begin_request(&mut client, &context, read)
            .await
            .map_err(db)?;
        if !self.config.plan_enabled {
            let enabled: bool = tx
                .query_one(PLAN_ENABLED_SQL, &[])
                .await
                .map_err(db)?
                .get(0);
            if !enabled {
                return Err(ApiError::not_acceptable(
                    header_text(headers, "accept").unwrap_or_default(),
                ));
            }
        }
        let sql = format!(
            "EXPLAIN ({}) {}",
            media.explain_options(),
            plan.statement.sql
        );
        let rows = tx
            .query_typed(&sql, &text_params(&plan.statement.params))
            .await
            .map_err(db)?;
        tx.rollback().await.map_err(db)?;
        let body = if media.json {
            let explain: Option<Value> = rows.first().and_then(|row| row.try_get(0).ok());
            explain.unwrap_or(Value::Null).to_string()
        } else {
            rows.iter()
                .filter_map(|row| row.try_get::<_, String>(0).ok())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut response_headers = HeaderMap::new();
        insert_header(
            &mut response_headers,
            header::CONTENT_TYPE,
            media_type(Media::Plan(media)),
        );
        if *method == Method::HEAD {
            return Ok((StatusCode::OK, response_headers).into_response());
        }
        Ok((StatusCode::OK, response_headers, body).into_response())
    }

    /// What the caller's role may use in `schema`, as PostgreSQL answers
    /// for it (for the OpenAPI root in `follow-privileges` mode).
    async fn privileges(
        &self,
        pool: &Pool,
        caller: &Caller,
        method: &Method,
        path: &str,
        schema: &str,
    ) -> Result<Privileges, ApiError> {
        let anonymous = caller.role == "anon";
        let db = |err| database_error(err, anonymous);
        let mut client = pool.get().await.map_err(|err| {
            if matches!(err, sovra_pg::PoolError::Timeout(_)) {
                ApiError::pool_timeout()
            } else {
                tracing::warn!(error = %err, "no database connection");
                ApiError::connection()
            }
        })?;
        let context = Self::context(caller, method, path, schema);
        let tx = sovra_pg::begin_request(&mut client, &context, true)
            .await
            .map_err(db)?;
        let row = tx.query_one(PRIVILEGES_SQL, &[&schema]).await.map_err(db)?;
        tx.rollback().await.map_err(db)?;
        let relations: Vec<(String, bool, bool, bool, bool)> =
            serde_json::from_str(&row.get::<_, String>(0)).unwrap_or_default();
        let functions: Vec<String> =
            serde_json::from_str(&row.get::<_, String>(1)).unwrap_or_default();
        Ok(Privileges {
            relations,
            functions,
        })
    }

    fn schema(&self, headers: &HeaderMap, read: bool) -> Result<String, ApiError> {
        let name = if read {
            "accept-profile"
        } else {
            "content-profile"
        };
        match header_text(headers, name) {
            Some(requested) => {
                let requested = requested.trim();
                if self.config.schemas.iter().any(|s| s == requested) {
                    Ok(requested.to_owned())
                } else {
                    Err(ApiError::invalid_schema(requested, &self.config.schemas))
                }
            }
            None => self
                .config
                .schemas
                .first()
                .cloned()
                .ok_or_else(ApiError::schema_cache_unavailable),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn execute(
        &self,
        pool: &Pool,
        caller: &Caller,
        method: &Method,
        path: &str,
        schema: &str,
        read: bool,
        replica_ok: bool,
        plan: &sovra_rest_plan::Plan,
        prefs: &Preferences,
        singular: bool,
        idempotency: Option<&idempotency::Idempotency>,
    ) -> Result<Outcome, ApiError> {
        // A key applies to what writes: a read-only transaction (a stable
        // function's call) runs again.
        let idempotency = idempotency.filter(|_| !read);
        let replicas = self.replicas.get();
        let key = replicas.map(|_| replicas::Replicas::caller_key(&caller.role, &caller.claims));
        // A replica's run neither claims an idempotency key nor tracks a
        // write: it is the primary's run without them.
        let base = Run {
            caller,
            method,
            path,
            schema,
            read,
            plan,
            prefs,
            singular,
            idempotency: None,
            track: None,
        };
        if read
            && replica_ok
            && let (Some(replicas), Some(key)) = (replicas, key.as_deref())
            && let replicas::ReadTarget::Replica(replica, client) = replicas.read_target(key).await
        {
            match self.execute_on(*client, base).await {
                Err(err) if retry_on_primary(&err) => {
                    // The replica failed the read without answering it
                    // (it went away, or cancelled the statement in a
                    // conflict with recovery, or lacks a table the primary
                    // has): the primary answers.
                    if err.code == "PGRST000" || err.code.starts_with("57P") {
                        replicas.read_failed(&replica, &err.message);
                    }
                }
                done => return done,
            }
        }
        let client = pool.get().await.map_err(|err| {
            if matches!(err, sovra_pg::PoolError::Timeout(_)) {
                ApiError::pool_timeout()
            } else {
                tracing::warn!(error = %err, "no database connection");
                ApiError::connection()
            }
        })?;
        let track = match (replicas, key.as_deref()) {
            (Some(replicas), Some(key)) if !read && idempotency.is_none() => {
                Some((&**replicas, key))
            }
            _ => None,
        };
        let run = Run {
            idempotency,
            track,
            ..base
        };
        self.execute_on(client, run).await
    }

    /// Runs `run` on `client`: one request transaction, pipelined.
    async fn execute_on(
        &self,
        client: sovra_pg::PooledClient,
        run: Run<'_>,
    ) -> Result<Outcome, ApiError> {
        let Run {
            caller,
            method,
            path,
            schema,
            read,
            plan,
            prefs,
            singular,
            idempotency,
            track,
        } = run;
        let mut guard = TxGuard {
            client: Some(client),
            open: true,
            preparing: std::sync::atomic::AtomicBool::new(false),
        };
        let Some(client) = guard.client.as_deref() else {
            return Err(ApiError::connection());
        };
        let search_path = format!("{}, \"extensions\"", quote_ident(schema));
        let anonymous = caller.role == "anon";
        let db = |err| database_error(err, anonymous);
        let mut prologue = Vec::with_capacity(REST_PROLOGUE_PARAMS);
        prologue.extend(sovra_pg::prologue_params_of(&sovra_pg::PrologueRef {
            role: &caller.role,
            claims: &caller.claims,
            method: method.as_str(),
            path,
            headers: &caller.headers,
            search_path: Some(&search_path),
        }));
        prologue.push(prefs.timezone.clone());
        // The role's own settings, as the schema cache last read them.
        let cache = self.cache.get();
        match cache
            .as_ref()
            .and_then(|cache| cache.role_settings.get(&caller.role))
        {
            Some(settings) => prologue.extend(settings.iter().cloned()),
            None => prologue.resize(REST_PROLOGUE_PARAMS, None),
        }
        let main_params = text_params(&plan.statement.params);
        let main_values: Vec<&(dyn ToSql + Sync)> = plan
            .statement
            .params
            .iter()
            .map(|p| p as &(dyn ToSql + Sync))
            .collect();

        // One round trip for everything up to the result (and, for reads,
        // the commit too): the driver pipelines requests polled together,
        // in the order they are first polled.
        let begin = if read { "BEGIN READ ONLY" } else { "BEGIN" };
        // The prologue (which names no schema object but Sovra's own
        // session reset) is prepared once per connection, outside any
        // transaction.
        let wrapper: &sovra_pg::ClientWrapper = client;
        let prologue_statement = wrapper
            .prepare_typed_cached(&REST_PROLOGUE_SQL, &[Type::TEXT; REST_PROLOGUE_PARAMS])
            .await
            .map_err(db)?;
        let prologue_statement = &prologue_statement;
        let main_params = &main_params;
        let planned = move || async move {
            match &plan.planned_count {
                Some(sql) => client
                    .query_typed(sql, main_params)
                    .await
                    .map(|rows| rows.first().and_then(plan_rows)),
                None => Ok(None),
            }
        };
        // Commit in the same round trip unless something must be checked
        // first: a singular response, max-affected, or tx=rollback.
        let checks_first = !read
            && (singular
                || idempotency.is_some()
                || prefs.tx == Some(TxPreference::Rollback)
                || (prefs.max_affected.is_some() && prefs.handling == Some(Handling::Strict)));
        // With replicas, a write's commit is followed in the same round
        // trip by the primary's position (read-your-writes).
        let finish_read = move || async move {
            if checks_first {
                Ok((false, None))
            } else if track.is_some() {
                let (committed, lsn) = tokio::join!(
                    client.batch_execute("COMMIT"),
                    client.query_one(replicas::WRITE_LSN_SQL, &[]),
                );
                committed?;
                Ok((true, Some(lsn?.get::<_, i64>(0))))
            } else {
                client.batch_execute("COMMIT").await.map(|()| (true, None))
            }
        };
        let prologue_values: Vec<&(dyn ToSql + Sync)> =
            prologue.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let prologue_values = prologue_values.as_slice();
        // Begin, reset what an earlier request left in the session and
        // apply role and settings (one prepared statement, see
        // [`REST_PROLOGUE_SQL`]): the head of every request's pipeline.
        let claim_params = idempotency.map(idempotency::Idempotency::claim_params);
        let claim_params = claim_params.as_ref();
        // With an `Idempotency-Key`, its claim comes between BEGIN and the
        // prologue (as the login role): a duplicate refuses there, before
        // the statement runs. Without one, no statement.
        let claim = move || async move {
            match claim_params {
                Some(params) => client
                    .query_typed(idempotency::CLAIM_SQL, params)
                    .await
                    .map(drop),
                None => Ok(()),
            }
        };
        let head = move || async move {
            let (begun, claimed, applied) = tokio::join!(
                client.batch_execute(begin),
                claim(),
                client.query(prologue_statement, prologue_values),
            );
            begun.and(claimed).and(applied).map(drop)
        };
        let sql = plan.statement.sql.as_str();
        let mut full_reset = false;
        let outcome = loop {
            if full_reset {
                // An earlier request left the session as a role that may
                // not run the reset function: reset with plain statements,
                // and only then send the request's pipeline again.
                client.batch_execute("ROLLBACK").await.map_err(db)?;
                client
                    .batch_execute(sovra_pg::RESET_SQL)
                    .await
                    .map_err(db)?;
            }
            // The same text may come with another number of values (a call
            // whose body was bound but names no parameter): such a
            // statement is prepared again for this one.
            let cached = self
                .statements
                .get(wrapper, &caller.role, sql)
                .filter(|statement| statement.params().len() == main_values.len());
            let (head_failed, outcome) = match cached {
                Some(statement) => {
                    let (head, result, estimate, committed) = tokio::join!(
                        head(),
                        client.query(&statement, &main_values),
                        planned(),
                        finish_read(),
                    );
                    (
                        head.is_err(),
                        head.and_then(|()| Ok((result?, estimate?, committed?))),
                    )
                }
                None => {
                    let types = vec![Type::TEXT; main_values.len()];
                    guard
                        .preparing
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    let (head, prepared) = tokio::join!(head(), client.prepare_typed(sql, &types));
                    guard
                        .preparing
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    match (head, prepared) {
                        (Ok(()), Ok(statement)) => {
                            self.statements
                                .insert(wrapper, &caller.role, sql, statement.clone());
                            let (result, estimate, committed) = tokio::join!(
                                client.query(&statement, &main_values),
                                planned(),
                                finish_read(),
                            );
                            (false, (|| Ok((result?, estimate?, committed?)))())
                        }
                        (Err(err), _) => (true, Err(err)),
                        (Ok(()), Err(err)) => (false, Err(err)),
                    }
                }
            };
            match outcome {
                Err(err) if head_failed && !full_reset && sovra_pg::reset_refused(&err) => {
                    full_reset = true;
                }
                outcome => break outcome,
            }
        };
        // The first error in pipeline order is the cause; the guard rolls
        // back whatever is still open.
        let (rows, estimate, committed) = match outcome {
            Ok(done) => done,
            Err(err) => {
                if let Some(idempotency) = idempotency
                    && let Some(refused) = idempotency
                        .refusal(&err, client, &mut guard.open, anonymous)
                        .await
                {
                    return Err(refused);
                }
                if err
                    .code()
                    .is_none_or(|code| code.code() == "26000" || code.code() == "0A000")
                {
                    // The statement itself may be gone or stale.
                    self.statements.remove(wrapper, &caller.role, sql);
                }
                return Err(db(err));
            }
        };
        let row = rows.into_iter().next().ok_or_else(|| {
            ApiError::from_database("XX000", "no result".to_owned(), None, None, anonymous)
        })?;
        let (committed, write_lsn) = committed;
        if committed {
            guard.open = false;
            if let (Some((replicas, key)), Some(lsn)) = (track, write_lsn) {
                replicas.record_write(key, lsn.unsigned_abs());
            }
        }
        let counted: Option<i64> = row.get(0);
        let total = match (prefs.count, estimate) {
            (Some(CountPreference::Planned), Some(planned)) => Some(planned),
            (Some(CountPreference::Estimated), Some(planned)) => {
                match (counted, self.config.max_rows) {
                    (Some(exact), Some(max)) if exact > max => Some(exact.max(planned)),
                    (counted, _) => counted,
                }
            }
            _ => counted,
        };
        let page_count: i64 = row.get(1);
        let body: String = row.get(2);
        let settings = ResponseSettings {
            headers: row.try_get(3).ok().flatten(),
            status: row.try_get(4).ok().flatten(),
        };

        if singular && page_count != 1 {
            return Err(ApiError::singular(page_count));
        }
        if !read
            && let (Some(max), Some(Handling::Strict)) = (prefs.max_affected, prefs.handling)
            && page_count > max
        {
            return Err(ApiError::max_affected(page_count));
        }
        if !committed {
            if prefs.tx == Some(TxPreference::Rollback) {
                client.batch_execute("ROLLBACK").await.map_err(db)?;
                guard.open = false;
            } else if let Some(idempotency) = idempotency {
                // Committed once the response is stored with the key.
                idempotency.hold(guard);
            } else {
                client.batch_execute("COMMIT").await.map_err(db)?;
                guard.open = false;
                if let Some((replicas, key)) = track {
                    let row = client
                        .query_one(replicas::WRITE_LSN_SQL, &[])
                        .await
                        .map_err(db)?;
                    replicas.record_write(key, row.get::<_, i64>(0).unsigned_abs());
                }
            }
        }
        Ok(Outcome {
            total,
            page_count,
            body,
            settings,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        method: &Method,
        action: Action,
        schema: &str,
        plan: &sovra_rest_plan::Plan,
        prefs: &Preferences,
        media: Media,
        outcome: Outcome,
    ) -> Response {
        let singular = media == Media::Object;
        let mut headers = HeaderMap::new();
        let content_type = media_type(media);
        let mut applied = Vec::new();
        if let Some(resolution) = prefs.resolution.filter(|_| action == Action::Insert) {
            applied.push(match resolution {
                sovra_rest_grammar::Resolution::MergeDuplicates => "resolution=merge-duplicates",
                sovra_rest_grammar::Resolution::IgnoreDuplicates => "resolution=ignore-duplicates",
            });
        }
        if matches!(action, Action::Insert | Action::Update) {
            match prefs.missing {
                Some(sovra_rest_grammar::Missing::Default) => applied.push("missing=default"),
                Some(sovra_rest_grammar::Missing::Null) => applied.push("missing=null"),
                None => {}
            }
        }
        let representation =
            action == Action::Read || prefs.return_ == Some(ReturnPreference::Representation);
        if action != Action::Read
            && let Some(ret) = prefs.return_
        {
            applied.push(match ret {
                ReturnPreference::Minimal => "return=minimal",
                ReturnPreference::HeadersOnly => "return=headers-only",
                ReturnPreference::Representation => "return=representation",
            });
        }
        if let Some(count) = prefs.count {
            applied.push(match count {
                CountPreference::Exact => "count=exact",
                CountPreference::Planned => "count=planned",
                CountPreference::Estimated => "count=estimated",
            });
        }
        if prefs.tx == Some(TxPreference::Rollback) {
            applied.push("tx=rollback");
        }
        let timezone;
        let max_affected;
        if prefs.handling == Some(Handling::Strict) {
            applied.push("handling=strict");
        }
        if let Some(tz) = &prefs.timezone {
            timezone = format!("timezone={tz}");
            applied.push(&timezone);
        }
        if let (Some(max), Some(Handling::Strict)) = (prefs.max_affected, prefs.handling) {
            max_affected = format!("max-affected={max}");
            applied.push(&max_affected);
        }
        if !applied.is_empty()
            && let Ok(value) = HeaderValue::from_str(&applied.join(", "))
        {
            headers.insert(HeaderName::from_static("preference-applied"), value);
        }
        if self.config.schemas.len() > 1
            && let Ok(value) = HeaderValue::from_str(schema)
        {
            headers.insert(HeaderName::from_static("content-profile"), value);
        }

        let total_text = outcome
            .total
            .map_or_else(|| "*".to_owned(), |t| t.to_string());
        let status = match action {
            Action::Read => {
                let lo = plan.offset;
                if let Some(total) = outcome.total
                    && outcome.page_count == 0
                    && lo > 0
                    && lo >= total
                {
                    let err = ApiError::range(format!(
                        "An offset of {lo} was requested, but there are only {total} rows."
                    ));
                    return error_response(&err);
                }
                let range = if outcome.page_count == 0 {
                    format!("*/{total_text}")
                } else {
                    format!("{lo}-{}/{total_text}", lo + outcome.page_count - 1)
                };
                insert_header(&mut headers, header::CONTENT_RANGE, &range);
                match outcome.total {
                    Some(total) if outcome.page_count < total => StatusCode::PARTIAL_CONTENT,
                    _ => StatusCode::OK,
                }
            }
            Action::Insert => {
                let total = if prefs.count.is_some() {
                    outcome.page_count.to_string()
                } else {
                    "*".to_owned()
                };
                insert_header(&mut headers, header::CONTENT_RANGE, &format!("*/{total}"));
                // An upsert that only updated created nothing.
                if plan.counts_inserted && outcome.total == Some(0) {
                    StatusCode::OK
                } else {
                    StatusCode::CREATED
                }
            }
            Action::Put => {
                if plan.counts_inserted && outcome.total.is_some_and(|n| n > 0) {
                    StatusCode::CREATED
                } else if representation {
                    StatusCode::OK
                } else {
                    StatusCode::NO_CONTENT
                }
            }
            Action::Update | Action::Delete => {
                let total = if prefs.count.is_some() {
                    outcome.page_count.to_string()
                } else {
                    "*".to_owned()
                };
                let range = if outcome.page_count == 0 || action == Action::Delete {
                    format!("*/{total}")
                } else {
                    format!("0-{}/{total}", outcome.page_count - 1)
                };
                insert_header(&mut headers, header::CONTENT_RANGE, &range);
                if representation {
                    StatusCode::OK
                } else {
                    StatusCode::NO_CONTENT
                }
            }
        };
        if !representation || *method == Method::HEAD {
            if representation {
                insert_header(&mut headers, header::CONTENT_TYPE, content_type);
            }
            return (status, headers).into_response();
        }
        insert_header(&mut headers, header::CONTENT_TYPE, content_type);
        let body = if singular {
            unwrap_single(&outcome.body)
        } else {
            outcome.body
        };
        (status, headers, body).into_response()
    }
}

/// Rolls back a request transaction that did not finish (an error, or the
/// client went away mid-request), so the connection returns to the pool
/// clean. A request dropped while a statement was being prepared leaves a
/// named statement on the server that no handle will ever close: its
/// connection is taken out of the pool and closed instead.
struct TxGuard {
    client: Option<sovra_pg::PooledClient>,
    open: bool,
    preparing: std::sync::atomic::AtomicBool,
}

impl Drop for TxGuard {
    fn drop(&mut self) {
        if self.preparing.load(std::sync::atomic::Ordering::Relaxed) {
            if let Some(client) = self.client.take() {
                // Dropping the wrapper closes the connection.
                drop(sovra_pg::PooledClient::take(client));
            }
            return;
        }
        if !self.open {
            return;
        }
        if let Some(client) = self.client.take() {
            tokio::spawn(async move {
                if let Err(err) = client.batch_execute("ROLLBACK").await {
                    tracing::debug!(error = %err, "rollback of an unfinished request failed");
                }
            });
        }
    }
}

/// Whether the login role's in-database configuration turns plans on
/// (`ALTER ROLE authenticator SET pgrst.db_plan_enabled = true`).
const PLAN_ENABLED_SQL: &str = "select coalesce((
    select bool_or(lower(s.setting) in ('pgrst.db_plan_enabled=true', 'pgrst.db_plan_enabled=on'))
    from pg_catalog.pg_db_role_setting d, unnest(d.setconfig) as s(setting)
    where d.setrole = (select oid from pg_catalog.pg_roles where rolname = session_user)
      and d.setdatabase in (0, (select oid from pg_catalog.pg_database where datname = current_database()))
  ), false)";

/// The current role's privileges on the relations and functions of $1:
/// `[[name, select, insert, update, delete]]` and `[function name]`.
const PRIVILEGES_SQL: &str = "select
    coalesce((select json_agg(json_build_array(c.relname,
        has_any_column_privilege(c.oid, 'SELECT'), has_any_column_privilege(c.oid, 'INSERT'),
        has_any_column_privilege(c.oid, 'UPDATE'), has_table_privilege(c.oid, 'DELETE')))
      from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
      where n.nspname = $1 and c.relkind in ('r', 'v', 'm', 'f', 'p')
        and has_schema_privilege(n.oid, 'USAGE')), '[]')::text,
    coalesce((select json_agg(distinct p.proname)
      from pg_catalog.pg_proc p join pg_catalog.pg_namespace n on n.oid = p.pronamespace
      where n.nspname = $1 and has_function_privilege(p.oid, 'EXECUTE')
        and has_schema_privilege(n.oid, 'USAGE')), '[]')::text";

/// A role's privileges in one schema.
struct Privileges {
    /// `(relation, select, insert, update, delete)`.
    relations: Vec<(String, bool, bool, bool, bool)>,
    /// Functions it may execute.
    functions: Vec<String>,
}

impl Privileges {
    /// The part of `cache`'s `schema` the role may use: relations it may
    /// read or write (each write method only when granted), functions it
    /// may execute.
    fn filter(
        &self,
        cache: &sovra_rest_plan::SchemaCache,
        schema: &str,
    ) -> sovra_rest_plan::SchemaCache {
        let mut filtered = sovra_rest_plan::SchemaCache {
            relations: BTreeMap::new(),
            foreign_keys: cache.foreign_keys.clone(),
            routines: cache
                .routines
                .iter()
                .filter(|r| r.schema == schema && self.functions.contains(&r.name))
                .cloned()
                .collect(),
            role_settings: BTreeMap::new(),
        };
        for (name, select, insert, update, delete) in self.relations.iter().cloned() {
            if !(select || insert || update || delete) {
                continue;
            }
            if let Some(relation) = cache.relation(schema, &name) {
                let mut relation = relation.clone();
                relation.insertable &= insert;
                relation.updatable &= update;
                relation.deletable &= delete;
                filtered
                    .relations
                    .insert((schema.to_owned(), name), relation);
            }
        }
        filtered
    }
}

fn text_params<T: ToSql + Sync>(values: &[T]) -> Vec<(&(dyn ToSql + Sync), Type)> {
    values
        .iter()
        .map(|v| (v as &(dyn ToSql + Sync), Type::TEXT))
        .collect()
}

/// Parses the query string's parameters into PostgREST's terms.
fn query_params(pairs: &[Pair], is_rpc: bool) -> Result<sovra_rest_grammar::QueryParams, ApiError> {
    parse_query(pairs, is_rpc).map_err(|err| match err {
        QueryError::Parse(err) => ApiError::parse(&err),
        QueryError::Range(details) => ApiError::range(details),
    })
}

/// The `Prefer` header (refused under `handling=strict` when it holds
/// unknown preferences) and, for reads, the `Range` header.
fn request_headers(
    headers: &HeaderMap,
    read: bool,
) -> Result<(Preferences, Option<sovra_rest_grammar::RangeHeader>), ApiError> {
    let prefs = parse_prefer(
        headers
            .get_all("prefer")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    if prefs.handling == Some(Handling::Strict) && !prefs.invalid.is_empty() {
        return Err(ApiError::invalid_preferences(&prefs.invalid));
    }
    let range = match (read, header_text(headers, "range")) {
        (true, Some(value)) => parse_range(value).map_err(ApiError::range)?,
        _ => None,
    };
    Ok((prefs, range))
}

/// The top `Plan Rows` of an `EXPLAIN (FORMAT JSON)` result.
fn plan_rows(row: &sovra_pg::tokio_postgres::Row) -> Option<i64> {
    let explain: Value = row.try_get(0).ok()?;
    let rows = explain.get(0)?.get("Plan")?.get("Plan Rows")?.as_f64()?;
    // Estimates are whole rows; the cast saturates.
    Some(rows.round() as i64)
}

/// A decoded query-string pair.
type Pair = (String, String);

/// One request's statement and what surrounds it, for
/// [`RestService::execute_on`].
#[derive(Clone, Copy)]
struct Run<'a> {
    caller: &'a Caller,
    method: &'a Method,
    path: &'a str,
    schema: &'a str,
    /// A read-only transaction.
    read: bool,
    plan: &'a sovra_rest_plan::Plan,
    prefs: &'a Preferences,
    singular: bool,
    idempotency: Option<&'a idempotency::Idempotency>,
    /// Where to remember a write's commit position, and under which caller.
    track: Option<(&'a replicas::Replicas, &'a str)>,
}

/// Whether a read that failed on a replica is answered from the primary
/// instead: no answer (connection lost, the server shutting down or not
/// accepting), a statement cancelled in a conflict with recovery, or a
/// table, column or function the replica has not replayed yet.
fn retry_on_primary(err: &ApiError) -> bool {
    matches!(
        err.code.as_str(),
        "PGRST000" | "PGRST003" | "40001" | "42P01" | "42703" | "42883"
    ) || err.code.starts_with("57P")
}

struct Outcome {
    total: Option<i64>,
    page_count: i64,
    body: String,
    /// What the request's SQL set in `response.headers` and
    /// `response.status`.
    settings: ResponseSettings,
}

#[derive(Default)]
struct ResponseSettings {
    headers: Option<String>,
    status: Option<String>,
}

impl ResponseSettings {
    /// Applies the settings to `response` as PostgREST does: the status
    /// replaces the response's, each header replaces the response's of
    /// that name (repeated names are all sent).
    fn apply(&self, mut response: Response) -> Result<Response, ApiError> {
        let present = |value: &Option<String>| value.clone().filter(|v| !v.trim().is_empty());
        if let Some(status) = present(&self.status) {
            let status = status
                .trim()
                .parse::<u16>()
                .ok()
                .and_then(|n| StatusCode::from_u16(n).ok())
                .filter(|s| (100..600).contains(&s.as_u16()))
                .ok_or_else(ApiError::bad_response_status)?;
            *response.status_mut() = status;
        }
        if let Some(headers) = present(&self.headers) {
            let Ok(Value::Array(items)) = serde_json::from_str::<Value>(&headers) else {
                return Err(ApiError::bad_response_headers());
            };
            let mut pairs = Vec::new();
            for item in &items {
                let Some(object) = item.as_object().filter(|o| o.len() == 1) else {
                    return Err(ApiError::bad_response_headers());
                };
                for (name, value) in object {
                    let (Ok(name), Some(Ok(value))) = (
                        HeaderName::from_bytes(name.as_bytes()),
                        value.as_str().map(HeaderValue::from_str),
                    ) else {
                        return Err(ApiError::bad_response_headers());
                    };
                    pairs.push((name, value));
                }
            }
            let mut replaced = Vec::new();
            for (name, value) in pairs {
                if !replaced.contains(&name) {
                    response.headers_mut().remove(&name);
                    replaced.push(name.clone());
                }
                response.headers_mut().append(name, value);
            }
        }
        Ok(response)
    }
}

fn media_type(media: Media) -> &'static str {
    match media {
        Media::Json => "application/json; charset=utf-8",
        Media::Object => "application/vnd.pgrst.object+json; charset=utf-8",
        Media::Csv => "text/csv; charset=utf-8",
        Media::GeoJson => "application/geo+json; charset=utf-8",
        Media::Plan(PlanMedia {
            json: true,
            for_csv: false,
            ..
        }) => "application/vnd.pgrst.plan+json; for=\"application/json\"; charset=utf-8",
        Media::Plan(PlanMedia {
            json: true,
            for_csv: true,
            ..
        }) => "application/vnd.pgrst.plan+json; for=\"text/csv\"; charset=utf-8",
        Media::Plan(PlanMedia { for_csv: false, .. }) => {
            "application/vnd.pgrst.plan+text; for=\"application/json\"; charset=utf-8"
        }
        Media::Plan(_) => "application/vnd.pgrst.plan+text; for=\"text/csv\"; charset=utf-8",
    }
}

/// `Location` of the first inserted row: `/<table>?<pk>=eq.<value>&…`.
fn location(
    cache: &sovra_rest_plan::SchemaCache,
    schema: &str,
    relation: &str,
    body: &str,
) -> Option<String> {
    let table = cache.relation(schema, relation)?;
    if table.primary_key.is_empty() {
        return None;
    }
    let rows: Value = serde_json::from_str(body).ok()?;
    let first = rows.as_array()?.first()?.as_object()?;
    let mut parts = Vec::new();
    for key in &table.primary_key {
        let value = match first.get(key)? {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        parts.push(format!(
            "{}=eq.{}",
            encode_component(key),
            encode_component(&value)
        ));
    }
    Some(format!(
        "/{}?{}",
        encode_component(relation),
        parts.join("&")
    ))
}

fn encode_component(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The one object of a one-element JSON array, as PostgreSQL rendered it.
fn unwrap_single(body: &str) -> String {
    let trimmed = body.trim();
    trimmed
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .map_or_else(|| trimmed.to_owned(), |inner| inner.trim().to_owned())
}

fn insert_header(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The representation a client asked for with `Accept`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Media {
    Json,
    /// `application/vnd.pgrst.object+json`: exactly one row, as an object.
    Object,
    Csv,
    /// `application/geo+json` (PostGIS): a `FeatureCollection`.
    GeoJson,
    /// `application/vnd.pgrst.plan[+json|+text]`: the statement's EXPLAIN.
    Plan(PlanMedia),
}

/// The plan media type's format and `options=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
struct PlanMedia {
    json: bool,
    /// `for="text/csv"`: the plan of the CSV statement.
    for_csv: bool,
    analyze: bool,
    verbose: bool,
    settings: bool,
    buffers: bool,
    wal: bool,
}

impl PlanMedia {
    fn parse(media: &str, params: &[&str]) -> Option<PlanMedia> {
        let json = match media {
            "application/vnd.pgrst.plan" | "application/vnd.pgrst.plan+text" => false,
            "application/vnd.pgrst.plan+json" => true,
            _ => return None,
        };
        let mut plan = PlanMedia {
            json,
            ..PlanMedia::default()
        };
        for param in params {
            let Some((name, value)) = param.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("for") {
                plan.for_csv = value
                    .trim()
                    .trim_matches('"')
                    .eq_ignore_ascii_case("text/csv");
                continue;
            }
            if !name.trim().eq_ignore_ascii_case("options") {
                continue;
            }
            for option in value.trim().trim_matches('"').split('|') {
                match option.trim().to_ascii_lowercase().as_str() {
                    "analyze" => plan.analyze = true,
                    "verbose" => plan.verbose = true,
                    "settings" => plan.settings = true,
                    "buffers" => plan.buffers = true,
                    "wal" => plan.wal = true,
                    _ => {}
                }
            }
        }
        Some(plan)
    }

    /// The options of `EXPLAIN (…)`.
    fn explain_options(self) -> String {
        let mut options = vec![if self.json {
            "FORMAT JSON"
        } else {
            "FORMAT TEXT"
        }];
        for (on, name) in [
            (self.analyze, "ANALYZE"),
            (self.verbose, "VERBOSE"),
            (self.settings, "SETTINGS"),
            (self.buffers, "BUFFERS"),
            // WAL needs ANALYZE.
            (self.wal && self.analyze, "WAL"),
        ] {
            if on {
                options.push(name);
            }
        }
        options.join(", ")
    }
}

/// Picks the first media type of `Accept` the REST layer can produce, and
/// whether it asks for null-valued keys to be stripped (`nulls=stripped`).
fn negotiate(headers: &HeaderMap) -> Result<(Media, bool), ApiError> {
    let Some(accept) = header_text(headers, "accept") else {
        return Ok((Media::Json, false));
    };
    for part in accept.split(',') {
        let mut pieces = part.split(';');
        let media = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let params: Vec<&str> = pieces.collect();
        if let Some(plan) = PlanMedia::parse(&media, &params) {
            return Ok((Media::Plan(plan), false));
        }
        let stripped = params
            .iter()
            .any(|p| p.trim().eq_ignore_ascii_case("nulls=stripped"));
        match media.as_str() {
            "application/vnd.pgrst.object+json" | "application/vnd.pgrst.object" => {
                return Ok((Media::Object, stripped));
            }
            "application/vnd.pgrst.array+json" | "application/vnd.pgrst.array" => {
                return Ok((Media::Json, stripped));
            }
            "text/csv" => return Ok((Media::Csv, false)),
            "application/geo+json" => return Ok((Media::GeoJson, false)),
            "" | "*/*" | "application/*" | "application/json" => return Ok((Media::Json, false)),
            _ => {}
        }
    }
    Err(ApiError::not_acceptable(accept))
}

/// Without PostGIS there is no GeoJSON to offer: 406, not PostgreSQL's
/// missing function.
fn geojson_unavailable(err: ApiError, media: Media, headers: &HeaderMap) -> ApiError {
    if media == Media::GeoJson && err.code == "42883" && err.message.contains("st_asgeojson") {
        ApiError::not_acceptable(header_text(headers, "accept").unwrap_or_default())
    } else {
        err
    }
}

/// The raw body media of an `/rpc` call (PostgREST's single unnamed
/// `text`, `xml` and `bytea` parameters), from `Content-Type`.
fn raw_media(headers: &HeaderMap) -> Option<sovra_rest_plan::RawMedia> {
    let value = header_text(headers, "content-type")?;
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match media.as_str() {
        "text/plain" => Some(sovra_rest_plan::RawMedia::Text),
        "text/xml" => Some(sovra_rest_plan::RawMedia::Xml),
        "application/octet-stream" => Some(sovra_rest_plan::RawMedia::Octet),
        _ => None,
    }
}

/// Write bodies are JSON; a request that says otherwise is refused.
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(value) = header_text(headers, "content-type") else {
        return Ok(());
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media.is_empty() || media == "application/json" || media.ends_with("+json") {
        Ok(())
    } else {
        Err(ApiError::invalid_body(format!(
            "Content-Type not acceptable: {media}"
        )))
    }
}

fn database_error(err: sovra_pg::tokio_postgres::Error, anonymous: bool) -> ApiError {
    match err.as_db_error() {
        Some(db) if db.code().code() == "PGRST" => ApiError::raised(db.message(), db.detail()),
        Some(db) => ApiError::from_database(
            db.code().code(),
            db.message().to_owned(),
            db.detail().map(str::to_owned),
            db.hint().map(str::to_owned),
            anonymous,
        ),
        None => {
            tracing::warn!(error = %err, "database connection failed");
            ApiError::connection()
        }
    }
}

/// PostgREST's error body and headers.
pub fn error_response(err: &ApiError) -> Response {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({
        "code": err.code,
        "details": err.details,
        "hint": err.hint,
        "message": err.message,
    });
    let mut headers = HeaderMap::new();
    insert_header(
        &mut headers,
        header::CONTENT_TYPE,
        "application/json; charset=utf-8",
    );
    insert_header(
        &mut headers,
        HeaderName::from_static("proxy-status"),
        &format!("PostgREST; error={}", err.code),
    );
    if status == StatusCode::UNAUTHORIZED {
        insert_header(&mut headers, header::WWW_AUTHENTICATE, "Bearer");
    }
    for (name, value) in err.headers.iter().flat_map(|h| h.0.iter()) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    (status, headers, body.to_string()).into_response()
}
