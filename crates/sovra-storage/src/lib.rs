//! Sovra's `/storage/v1`, as storage-js calls it: buckets, objects, signed
//! URLs and resumable (TUS) uploads.
//!
//! Metadata lives in `storage.buckets` and `storage.objects` (Supabase's
//! tables); every operation on them runs in a transaction as the caller
//! ([`sovra_pg::begin_request`]), so RLS policies written for Supabase decide
//! who may do what. Only what Supabase also does as a superuser runs as
//! `service_role`: the bucket lookup before an upload, public and signed
//! downloads, and the bookkeeping of resumable uploads.
//!
//! Bytes live in a [`backend::Backend`] under random version ids. An upload
//! streams to a new version, then one statement points the object's row at
//! it; the old version's bytes are deleted after that commits. A failed
//! upload deletes what it wrote and leaves the row as it was.
//!
//! Pure parts (names, sizes, MIME lists, ranges) are in [`names`].

pub mod backend;
mod bucket;
pub mod cursor;
pub mod error;
pub mod names;
mod object;
pub mod render;
pub mod s3;
mod sign;
mod tus;
pub mod vectors;

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use sovra_jwt::KeySet;
use sovra_pg::tokio_postgres::types::ToSql;
use sovra_pg::{Pool, RequestContext};

pub use backend::{Backend, BackendConfig};
pub use error::StorageError;
pub use render::ImageConfig;

/// `storage.operation` (which policies may read), whether the statement
/// may delete rows of the storage tables, and whether it may write
/// `storage.objects.version` (a trigger refuses other writes of it).
const SETTINGS_SQL: &str = "select set_config('storage.operation', $1, true), \
     set_config('storage.allow_delete_query', $2, true), \
     set_config('storage.allow_version_write', $3, true)";

/// What `GET /version` answers: the version of this server.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Settings of one tenant's storage.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    pub backend: BackendConfig,
    /// Largest object, whatever the bucket says (bytes).
    pub file_size_limit: u64,
    /// How long a resumable upload may stay unfinished.
    pub upload_expiry: Duration,
    /// Most blocking file calls of the local disk at once.
    pub io_threads: usize,
    /// How long a request waits for one of them before it gets 503.
    pub io_wait: Duration,
    /// The S3 protocol at `/s3`.
    pub s3: s3::S3Config,
    /// Image transformations (`/render/image/…`).
    pub image: ImageConfig,
}

/// Who a request is from, as the gateway verified it.
#[derive(Clone, Debug)]
pub struct Principal {
    pub role: String,
    /// Verified claims; always contains `role`.
    pub claims: Map<String, Value>,
}

impl Principal {
    fn service() -> Principal {
        let mut claims = Map::new();
        claims.insert("role".to_owned(), Value::String("service_role".to_owned()));
        Principal {
            role: "service_role".to_owned(),
            claims,
        }
    }

    /// The `sub` claim, the object owner.
    fn sub(&self) -> Option<&str> {
        self.claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    }

    fn is_service(&self) -> bool {
        self.role == "service_role"
    }

    /// Who this caller is, as a resumable upload remembers its creator:
    /// the role and `sub`, or for a caller without a `sub` (the anon key,
    /// custom tokens) the role and every claim but the token's own times
    /// and id. SHA-256, hex.
    fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        hash.update(self.role.as_bytes());
        hash.update([0]);
        match self.sub() {
            Some(sub) => {
                hash.update(b"sub\0");
                hash.update(sub.as_bytes());
            }
            None => {
                let mut claims = self.claims.clone();
                for transient in ["iat", "exp", "nbf", "jti"] {
                    claims.remove(transient);
                }
                hash.update(b"claims\0");
                hash.update(Value::Object(claims).to_string().as_bytes());
            }
        }
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One request to `/storage/v1`.
pub struct StorageRequest<'a> {
    pub method: &'a Method,
    /// The path after `/storage/v1`, still percent-encoded.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Body,
    /// The caller as the gateway saw it, or why its token was refused.
    pub auth: Result<Principal, String>,
    /// Request headers for `request.headers`, credentials removed.
    pub safe_headers: Map<String, Value>,
    pub keys: &'a KeySet,
}

/// One tenant's storage service.
#[derive(Debug)]
pub struct StorageService {
    config: StorageConfig,
    backend: Backend,
    pool: Pool,
    /// The tenant's name (part of the image cache's keys).
    tenant: String,
    /// Image transformations: rendering slots and cache.
    renderer: std::sync::Arc<render::Renderer>,
    /// Vector indexes seen lately (`vectors`).
    vector_indexes: vectors::IndexCache,
}

/// The request as the handlers use it.
pub(crate) struct Ctx<'a> {
    service: &'a StorageService,
    method: &'a Method,
    /// Decoded path segments after `/storage/v1`.
    segments: Vec<String>,
    query: Vec<(String, String)>,
    headers: &'a HeaderMap,
    auth: Result<Principal, String>,
    safe_headers: Map<String, Value>,
    keys: &'a KeySet,
    raw_path: &'a str,
}

impl Ctx<'_> {
    /// The caller, or `AccessDenied` when its token was refused.
    fn caller(&self) -> Result<Principal, StorageError> {
        self.auth.clone().map_err(StorageError::unauthorized)
    }

    fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn context(&self, who: &Principal) -> RequestContext {
        RequestContext {
            role: who.role.clone(),
            claims: who.claims.clone(),
            method: self.method.as_str().to_owned(),
            path: self.raw_path.to_owned(),
            headers: self.safe_headers.clone(),
            search_path: None,
        }
    }

    /// Runs `sql` in a transaction as `who` with `storage.operation` set to
    /// `op`, committing when `commit` (else rolling back), and returns its
    /// rows. `BEGIN`, the prologue, the settings, the statement and the
    /// end of the transaction go out in one round trip (the driver
    /// pipelines requests polled together); a failed statement makes the
    /// pipelined `COMMIT` a rollback. Statements are prepared once per
    /// connection: their text is fixed, and PostgreSQL checks privileges
    /// and applies RLS for the current role at every execution.
    async fn run(
        &self,
        who: &Principal,
        op: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        commit: bool,
    ) -> Result<Vec<sovra_pg::tokio_postgres::Row>, StorageError> {
        use sovra_pg::tokio_postgres::types::Type;
        let client = self.service.pool.get().await.map_err(|err| {
            tracing::error!(error = %err, "no database connection for storage");
            StorageError::unavailable()
        })?;
        let wrapper: &sovra_pg::ClientWrapper = &client;
        let context = self.context(who);
        let prologue = sovra_pg::prologue_params(&context);
        let prologue_values: Vec<&(dyn ToSql + Sync)> =
            prologue.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        // Rows of these tables are deleted only here, where the bytes
        // are deleted with them (a trigger refuses other deletes).
        let allow_delete = if op.ends_with("delete") || op == "bucket.empty" {
            "true"
        } else {
            "false"
        };
        // Only uploads, updates and copies point a row at new bytes.
        let allow_version = if op.starts_with("object.upload") || op == "object.update" {
            "true"
        } else {
            "false"
        };
        let prepared = async {
            tokio::try_join!(
                wrapper.prepare_typed_cached(sovra_pg::PROLOGUE_SQL, &[Type::TEXT; 8]),
                wrapper.prepare_typed_cached(SETTINGS_SQL, &[Type::TEXT; 3]),
                wrapper.prepare_cached(sql),
            )
        };
        let (prologue_statement, settings_statement, statement) =
            prepared.await.map_err(|err| error::from_db(&err))?;
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        let settings: [&(dyn ToSql + Sync); 3] = [&op, &allow_delete, &allow_version];
        let (reset, begun, applied, set, result, ended) = tokio::join!(
            // What an earlier request on this pooled connection left in the
            // session (a REST function's `set_config(..., false)`, say).
            client.batch_execute(sovra_pg::RESET_SQL),
            client.batch_execute("BEGIN"),
            client.query(&prologue_statement, &prologue_values),
            client.query(&settings_statement, &settings),
            client.query(&statement, params),
            client.batch_execute(end),
        );
        match (reset, begun, applied, set, result, ended) {
            (Ok(()), Ok(()), Ok(_), Ok(_), Ok(rows), Ok(())) => Ok(rows),
            (reset, begun, applied, set, result, ended) => {
                let err = [
                    reset.err(),
                    begun.err(),
                    applied.err(),
                    set.err(),
                    result.err(),
                    ended.err(),
                ]
                .into_iter()
                .flatten()
                .find(|err| {
                    err.code()
                        != Some(
                            &sovra_pg::tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION,
                        )
                });
                // Leave no transaction open on a pooled connection.
                if !client.is_closed() {
                    let _ = client.batch_execute("ROLLBACK").await;
                }
                Err(err.map_or_else(StorageError::internal, |err| error::from_db(&err)))
            }
        }
    }

    /// Reads the JSON body (at most 1 MiB); an empty body is `{}`.
    async fn json(body: Body) -> Result<Value, StorageError> {
        let bytes = axum::body::to_bytes(body, 1024 * 1024)
            .await
            .map_err(|_| StorageError::invalid("The request body is too large or broke off"))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(Map::new()));
        }
        serde_json::from_slice(&bytes)
            .map_err(|err| StorageError::invalid(format!("Invalid JSON body: {err}")))
    }
}

impl StorageService {
    /// The storage service of one tenant, storing bytes for `tenant` in
    /// the configured backend and metadata through `pool` (which connects
    /// as `authenticator`).
    pub fn new(config: StorageConfig, tenant: &str, pool: Pool) -> Result<StorageService, String> {
        let backend = Backend::open(&config.backend, tenant, config.io_threads)
            .map_err(|err| err.to_string())?
            .with_io_wait(config.io_wait);
        let renderer = render::Renderer::shared(&config.image);
        Ok(StorageService {
            config,
            backend,
            pool,
            tenant: tenant.to_owned(),
            renderer,
            vector_indexes: vectors::IndexCache::default(),
        })
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Answers one request.
    pub async fn handle(&self, request: StorageRequest<'_>) -> Response {
        let mut segments = Vec::new();
        for raw in request.path.split('/').skip(1) {
            match names::decode_path(raw) {
                Some(segment) => segments.push(segment),
                None => return StorageError::invalid_key(raw).into_response(),
            }
        }
        // A trailing slash on collection routes (`/bucket/`) is harmless.
        if segments.len() > 1 && segments.last().is_some_and(String::is_empty) {
            segments.pop();
        }
        let query = request
            .query
            .map(|q| {
                q.split('&')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                        let decode =
                            |s: &str| names::decode_path(&s.replace('+', " ")).unwrap_or_default();
                        (decode(name), decode(value))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ctx = Ctx {
            service: self,
            method: request.method,
            segments,
            query,
            headers: request.headers,
            auth: request.auth,
            safe_headers: request.safe_headers,
            keys: request.keys,
            raw_path: request.path,
        };
        match route(&ctx, request.body).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        }
    }

    /// Deletes resumable uploads past their expiry, with their parts.
    pub async fn sweep_expired_uploads(&self) -> Result<usize, String> {
        let resumable = tus::sweep(self).await?;
        Ok(resumable + s3::multipart_sweep(self).await?)
    }
}

async fn route(ctx: &Ctx<'_>, body: Body) -> Result<Response, StorageError> {
    let seg: Vec<&str> = ctx.segments.iter().map(String::as_str).collect();
    let method = ctx.method;
    match (seg.first().copied(), seg.get(1).copied()) {
        (Some("bucket"), _) => bucket::route(ctx, &seg[1..], body).await,
        (Some("object"), Some("list")) if method == Method::POST && seg.len() >= 3 => {
            object::list(ctx, &seg[2..].join("/"), body).await
        }
        (Some("object"), Some("list-v2")) if method == Method::POST && seg.len() >= 3 => {
            object::list_v2(ctx, &seg[2..].join("/"), body).await
        }
        (Some("object"), Some("move")) if method == Method::POST && seg.len() == 2 => {
            object::relocate(ctx, body, false).await
        }
        (Some("object"), Some("copy")) if method == Method::POST && seg.len() == 2 => {
            object::relocate(ctx, body, true).await
        }
        (Some("object"), Some("sign")) if seg.len() >= 3 => sign::route(ctx, &seg[2..], body).await,
        (Some("object"), Some("upload")) if seg.get(2) == Some(&"sign") && seg.len() >= 5 => {
            let (bucket, key) = bucket_key(&seg[3..])?;
            match *method {
                Method::POST => sign::create_upload_url(ctx, &bucket, &key).await,
                Method::PUT => sign::upload_with_token(ctx, &bucket, &key, body).await,
                _ => Err(not_allowed()),
            }
        }
        (Some("object"), Some("info")) if seg.len() >= 4 => {
            let rest = match seg[2] {
                "authenticated" | "public" if seg.len() >= 5 => &seg[3..],
                _ => &seg[2..],
            };
            let public = seg[2] == "public" && seg.len() >= 5;
            let (bucket, key) = bucket_key(rest)?;
            object::info(ctx, &bucket, &key, public).await
        }
        (Some("object"), Some(kind @ ("public" | "authenticated"))) if seg.len() >= 4 => {
            let (bucket, key) = bucket_key(&seg[2..])?;
            match *method {
                Method::GET | Method::HEAD => {
                    object::download(ctx, &bucket, &key, kind == "public").await
                }
                _ => Err(not_allowed()),
            }
        }
        (Some("object"), Some(_)) if seg.len() == 2 && method == Method::DELETE => {
            object::delete_many(ctx, seg[1], body).await
        }
        (Some("object"), Some(_)) if seg.len() >= 3 => {
            let (bucket, key) = bucket_key(&seg[1..])?;
            match *method {
                Method::GET | Method::HEAD => object::download(ctx, &bucket, &key, false).await,
                Method::POST => {
                    object::upload(ctx, &bucket, &key, body, object::Mode::Create).await
                }
                Method::PUT => object::upload(ctx, &bucket, &key, body, object::Mode::Update).await,
                Method::DELETE => object::delete_one(ctx, &bucket, &key).await,
                _ => Err(not_allowed()),
            }
        }
        (Some("vector"), Some(operation)) if seg.len() == 2 => {
            vectors::route(ctx, operation, body).await
        }
        (Some("upload"), Some("resumable")) => tus::route(ctx, &seg[2..], body).await,
        (Some("s3-credentials"), _) => s3::keys::route(ctx, &seg[1..], body).await,
        (Some("render"), Some("image")) => render::route(ctx, &seg[2..]).await,
        (Some("cdn"), _) if method == Method::DELETE => {
            Ok(axum::Json(serde_json::json!({"message": "success"})).into_response())
        }
        (Some("health"), None) => {
            Ok(axum::Json(serde_json::json!({"healthy": true})).into_response())
        }
        // As Supabase Storage: `/status` is an empty 200 and `/version`
        // the server's version as plain text.
        (Some("status"), None) if method == Method::GET || method == Method::HEAD => {
            Ok(axum::http::StatusCode::OK.into_response())
        }
        (Some("version"), None) if method == Method::GET || method == Method::HEAD => {
            Ok(VERSION.into_response())
        }
        _ => Err(StorageError {
            status: 404,
            error: "not_found",
            message: "Route not found".to_owned(),
            code: "NotFound",
            http: Some(404),
        }),
    }
}

fn not_allowed() -> StorageError {
    StorageError {
        status: 405,
        error: "method_not_allowed",
        message: "Method not allowed".to_owned(),
        code: "MethodNotAllowed",
        http: Some(405),
    }
}

/// The bucket id and object name of `bucket/key…` segments, validated.
pub(crate) fn bucket_key(segments: &[&str]) -> Result<(String, String), StorageError> {
    let Some((bucket, key)) = segments.split_first() else {
        return Err(StorageError::invalid_bucket());
    };
    if !names::valid_bucket_id(bucket) {
        return Err(StorageError::invalid_bucket());
    }
    let key = key.join("/");
    if !names::valid_key(&key) {
        return Err(StorageError::invalid_key(&key));
    }
    Ok(((*bucket).to_owned(), key))
}
