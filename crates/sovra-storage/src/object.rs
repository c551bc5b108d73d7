//! `/object`: upload, download, info, list, move, copy, delete.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};

use crate::backend::WriteError;
use crate::bucket::{self, BucketInfo};
use crate::error::StorageError;
use crate::names::{self, RangeRequest};
use crate::{Ctx, Principal};

/// POST creates (or replaces with `x-upsert: true`); PUT replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Create,
    Update,
}

/// An object about to be written, as its row will describe it.
#[derive(Clone, Debug)]
pub(crate) struct NewObject {
    pub mimetype: String,
    pub cache_control: String,
    pub user_metadata: Option<Value>,
    pub size: i64,
    pub version: String,
}

const PLACEHOLDER: &str = ".emptyFolderPlaceholder";

/// A new version id (also the object's ETag).
pub(crate) fn new_version() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The `metadata` column of a stored object, built in SQL from bound
/// values ($6 eTag, $7 size, $8 mimetype, $9 cacheControl).
const METADATA_SQL: &str = "jsonb_build_object('eTag', $6::text, 'size', $7::int8, 'mimetype', $8::text, \
     'cacheControl', $9::text, 'lastModified', to_char(now() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
     'contentLength', $7::int8, 'httpStatusCode', 200)";

/// Writes the row of `object` as `who`: insert (upsert when asked) or
/// update. Returns the object id and the version it replaced. With
/// `commit == false` the statement runs and is rolled back: a dry run that
/// surfaces RLS refusals, duplicates and missing objects before any byte
/// is stored.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn write_row(
    ctx: &Ctx<'_>,
    who: &Principal,
    owner: Option<&str>,
    bucket: &str,
    key: &str,
    object: &NewObject,
    mode: Mode,
    upsert: bool,
    commit: bool,
) -> Result<(String, Option<String>), StorageError> {
    let etag = format!("\"{}\"", object.version);
    let owner_uuid = owner.and_then(|o| uuid::Uuid::parse_str(o).ok());
    let sql = match (mode, upsert) {
        (Mode::Create, false) => format!(
            "insert into storage.objects (bucket_id, name, owner, owner_id, version, metadata, user_metadata)
             values ($1, $2, $3, $4, $5, {METADATA_SQL}, $10::jsonb)
             returning id::text, null::text"
        ),
        (Mode::Create, true) => format!(
            // `old` is read (and locked) before the insert runs: the
            // condition on it forces that order.
            "with old as materialized (select version from storage.objects
                                       where bucket_id = $1 and name = $2 for update)
             insert into storage.objects (bucket_id, name, owner, owner_id, version, metadata, user_metadata)
             select $1, $2, $3, $4, $5, {METADATA_SQL}, $10::jsonb where (select count(*) from old) >= 0
             on conflict (bucket_id, name) do update set
               owner = excluded.owner, owner_id = excluded.owner_id, version = excluded.version,
               metadata = excluded.metadata, user_metadata = excluded.user_metadata,
               last_accessed_at = now()
             returning id::text, (select version from old)"
        ),
        (Mode::Update, _) => format!(
            "with old as (select id, version from storage.objects where bucket_id = $1 and name = $2 for update)
             update storage.objects o set owner = $3, owner_id = $4, version = $5,
               metadata = {METADATA_SQL}, user_metadata = coalesce($10::jsonb, o.user_metadata),
               last_accessed_at = now()
             from old where o.id = old.id
             returning o.id::text, old.version"
        ),
    };
    let op = match (mode, commit) {
        (Mode::Create, true) => "object.upload",
        (Mode::Update, true) => "object.update",
        (_, false) => "object.upload.check",
    };
    let rows = ctx
        .run(
            who,
            op,
            &sql,
            &[
                &bucket,
                &key,
                &owner_uuid,
                &owner,
                &object.version,
                &etag,
                &object.size,
                &object.mimetype,
                &object.cache_control,
                &object.user_metadata,
            ],
            commit,
        )
        .await
        .map_err(|err| match err.code {
            // The bucket vanished between lookup and commit.
            "NoSuchBucket" => StorageError::bucket_not_found(),
            _ => err,
        })?;
    match rows.first() {
        Some(row) => Ok((row.get(0), row.get(1))),
        None if mode == Mode::Update => Err(StorageError::object_not_found()),
        None => Err(StorageError::internal()),
    }
}

/// The size limit of uploads to `bucket`.
pub(crate) fn limit_for(ctx: &Ctx<'_>, bucket: &BucketInfo, key: &str) -> u64 {
    let global = ctx.service.config.file_size_limit;
    if key.ends_with(PLACEHOLDER) {
        return global;
    }
    bucket
        .file_size_limit
        .and_then(|l| u64::try_from(l).ok())
        .map_or(global, |l| l.min(global))
}

/// Checks a content type: well-formed (RFC 9110, no control characters,
/// bounded; for every object, placeholders included) and allowed by the
/// bucket. Returns it without surrounding whitespace.
pub(crate) fn check_mime(
    bucket: &BucketInfo,
    key: &str,
    mime: &str,
) -> Result<String, StorageError> {
    let mime = names::parse_content_type(mime).map_err(StorageError::bad_content_type)?;
    if key.ends_with(PLACEHOLDER) {
        return Ok(mime.to_owned());
    }
    if !names::mime_allowed(mime, bucket.allowed_mime_types.as_deref()) {
        return Err(StorageError::mime(&names::mime_essence(mime)));
    }
    Ok(mime.to_owned())
}

fn decode_metadata(text: &str) -> Result<Value, StorageError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| StorageError::invalid("x-metadata must be base64-encoded JSON"))?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|_| StorageError::invalid("x-metadata must be base64-encoded JSON"))?;
    if !value.is_object() {
        return Err(StorageError::invalid("metadata must be a JSON object"));
    }
    Ok(value)
}

/// Streams an upload's bytes (raw body or the first file of a multipart
/// form) to a new version in the backend and returns what the row should
/// say. Nothing is left in the backend when this fails.
pub(crate) async fn receive(
    ctx: &Ctx<'_>,
    bucket: &BucketInfo,
    key: &str,
    body: Body,
) -> Result<NewObject, StorageError> {
    let limit = limit_for(ctx, bucket, key);
    if let Some(length) = ctx
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
        && length > limit
        && !is_multipart(ctx)
    {
        refuse_body(body);
        return Err(StorageError::too_large());
    }
    let version = new_version();
    let path = ctx.service.backend.object_path(&version);
    let header_cache = ctx.header("cache-control").map(str::to_owned);
    if is_multipart(ctx) {
        let content_type = ctx.header("content-type").unwrap_or("");
        let boundary = multer::parse_boundary(content_type)
            .map_err(|_| StorageError::invalid("Invalid multipart/form-data body"))?;
        let mut form = multer::Multipart::new(body.into_data_stream(), boundary);
        let mut cache = header_cache;
        let mut mime_field: Option<String> = None;
        let mut metadata: Option<Value> = None;
        let mut stored: Option<(u64, String)> = None;
        let read = read_form(
            ctx,
            bucket,
            key,
            &path,
            limit,
            &mut form,
            &mut cache,
            &mut mime_field,
            &mut metadata,
            &mut stored,
        )
        .await;
        if let Err(err) = read {
            if stored.is_some() {
                let _ = ctx.service.backend.delete(&path).await;
            }
            refuse_form(form);
            return Err(err);
        }
        let Some((size, part_mime)) = stored else {
            return Err(StorageError::no_content());
        };
        let mimetype = match check_mime(bucket, key, &mime_field.unwrap_or(part_mime)) {
            Ok(mimetype) => mimetype,
            Err(err) => {
                let _ = ctx.service.backend.delete(&path).await;
                return Err(err);
            }
        };
        return Ok(NewObject {
            mimetype,
            cache_control: names::cache_control(cache.as_deref()),
            user_metadata: metadata,
            size: i64::try_from(size).unwrap_or(i64::MAX),
            version,
        });
    }
    let raw_type = match ctx.headers.get("content-type") {
        None => Ok("application/octet-stream"),
        Some(value) if value.is_empty() => Ok("application/octet-stream"),
        Some(value) => value
            .to_str()
            .map_err(|_| StorageError::bad_content_type(names::ContentTypeError::Control)),
    };
    let checked = raw_type
        .and_then(|raw| check_mime(bucket, key, raw))
        .and_then(|mimetype| {
            let metadata = ctx.header("x-metadata").map(decode_metadata).transpose()?;
            Ok((mimetype, metadata))
        });
    let (mimetype, user_metadata) = match checked {
        Ok(checked) => checked,
        Err(err) => {
            refuse_body(body);
            return Err(err);
        }
    };
    let size = write_or_map(ctx, &path, body.into_data_stream(), limit).await?;
    Ok(NewObject {
        mimetype,
        cache_control: names::cache_control(header_cache.as_deref()),
        user_metadata,
        size: i64::try_from(size).unwrap_or(i64::MAX),
        version,
    })
}

/// Reads a multipart form: the text fields, and the first file part
/// streamed to `path` (later files are skipped).
#[allow(clippy::too_many_arguments)]
async fn read_form(
    ctx: &Ctx<'_>,
    bucket: &BucketInfo,
    key: &str,
    path: &object_store::path::Path,
    limit: u64,
    form: &mut multer::Multipart<'_>,
    cache: &mut Option<String>,
    mime_field: &mut Option<String>,
    metadata: &mut Option<Value>,
    stored: &mut Option<(u64, String)>,
) -> Result<(), StorageError> {
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(err) => {
                return Err(StorageError::invalid(format!(
                    "Invalid multipart/form-data body: {err}"
                )));
            }
        };
        let name = field.name().unwrap_or("").to_owned();
        let is_text = field.file_name().is_none()
            && matches!(name.as_str(), "cacheControl" | "contentType" | "metadata");
        if is_text {
            let text = read_text_field(field).await?;
            match name.as_str() {
                "cacheControl" => *cache = Some(text),
                "contentType" => *mime_field = Some(text),
                _ => {
                    let value: Value = serde_json::from_str(&text)
                        .ok()
                        .filter(Value::is_object)
                        .ok_or_else(|| StorageError::invalid("metadata must be a JSON object"))?;
                    *metadata = Some(value);
                }
            }
            continue;
        }
        if stored.is_some() {
            // Only the first file counts; drain the rest.
            let mut field = field;
            while let Ok(Some(_)) = field.chunk().await {}
            continue;
        }
        let mime = mime_field
            .clone()
            .or_else(|| field.content_type().map(ToString::to_string))
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let mime = check_mime(bucket, key, &mime)?;
        let size = write_or_map(ctx, path, Box::pin(field), limit).await?;
        *stored = Some((size, mime));
    }
    Ok(())
}

/// At most this much of a refused body is read (and discarded) after the
/// answer, so that a client still sending reads the answer rather than a
/// reset; a larger body just has its connection closed.
const DRAIN_LIMIT: usize = 1024 * 1024;

/// Lets the answer to a refused upload go out at once: the rest of the
/// body (if small) is read and discarded in the background while the
/// response is written. Nothing waits for a slow client, and the body's
/// idle timeout still ends a stalled one.
pub(crate) fn refuse_body(body: Body) {
    tokio::spawn(async move {
        let _ = axum::body::to_bytes(body, DRAIN_LIMIT).await;
    });
}

fn refuse_form(mut form: multer::Multipart<'static>) {
    tokio::spawn(async move {
        let mut left = DRAIN_LIMIT;
        while let Ok(Some(mut field)) = form.next_field().await {
            while let Ok(Some(chunk)) = field.chunk().await {
                left = left.saturating_sub(chunk.len());
                if left == 0 {
                    return;
                }
            }
        }
    });
}

fn is_multipart(ctx: &Ctx<'_>) -> bool {
    ctx.header("content-type")
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"))
}

async fn read_text_field(mut field: multer::Field<'_>) -> Result<String, StorageError> {
    let mut text = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|_| StorageError::invalid("Invalid multipart/form-data body"))?
    {
        text.extend_from_slice(&chunk);
        if text.len() > 64 * 1024 {
            return Err(StorageError::invalid("A form field is too large"));
        }
    }
    String::from_utf8(text).map_err(|_| StorageError::invalid("A form field is not UTF-8"))
}

async fn write_or_map<S, E>(
    ctx: &Ctx<'_>,
    path: &object_store::path::Path,
    body: S,
    limit: u64,
) -> Result<u64, StorageError>
where
    S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    match ctx.service.backend.write(path, body, limit).await {
        Ok(0) => {
            let _ = ctx.service.backend.delete(path).await;
            Err(StorageError::no_content())
        }
        Ok(size) => Ok(size),
        Err(WriteError::TooLarge) => Err(StorageError::too_large()),
        Err(WriteError::Busy) => Err(StorageError::busy()),
        Err(WriteError::Body(message)) => {
            tracing::debug!(%message, "upload body broke off");
            Err(StorageError::invalid(
                "The upload was interrupted or sent nothing for too long",
            ))
        }
        Err(WriteError::Store(err)) => {
            tracing::error!(error = %err, "could not store an upload");
            Err(StorageError::internal())
        }
    }
}

/// Stores an object. Before the first byte of the body is read, the
/// upload is authorised: the bucket is looked up and the row write is
/// dry-run as the caller (RLS, duplicates, missing objects), so a refused
/// upload is answered at once and costs no disk. Then the bytes stream to
/// a new version, the row is written, and the replaced version is
/// deleted. On any failure the new bytes are deleted.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn store(
    ctx: &Ctx<'_>,
    who: &Principal,
    owner: Option<&str>,
    bucket_id: &str,
    key: &str,
    body: Body,
    mode: Mode,
    upsert: bool,
) -> Result<String, StorageError> {
    let probe = NewObject {
        mimetype: String::new(),
        cache_control: String::new(),
        user_metadata: None,
        size: 0,
        version: String::new(),
    };
    // Both at once, on two connections: an upload waits for one round
    // trip, not two.
    let (bucket, dry_run) = tokio::join!(
        bucket::lookup(ctx, bucket_id),
        write_row(ctx, who, owner, bucket_id, key, &probe, mode, upsert, false),
    );
    let bucket = match (bucket, dry_run) {
        (Ok(Some(bucket)), Ok(_)) => bucket,
        (Ok(None), _) => {
            refuse_body(body);
            return Err(StorageError::bucket_not_found());
        }
        (Err(err), _) | (Ok(Some(_)), Err(err)) => {
            refuse_body(body);
            return Err(err);
        }
    };
    let object = receive(ctx, &bucket, key, body).await?;
    match write_row(ctx, who, owner, bucket_id, key, &object, mode, upsert, true).await {
        Ok((id, old)) => {
            if let Some(old) = old.filter(|old| !old.is_empty() && *old != object.version) {
                ctx.service.backend.delete_versions(vec![old]).await;
            }
            Ok(id)
        }
        Err(err) => {
            let path = ctx.service.backend.object_path(&object.version);
            let _ = ctx.service.backend.delete(&path).await;
            Err(err)
        }
    }
}

/// `POST`/`PUT /object/{bucket}/{key}`.
pub(crate) async fn upload(
    ctx: &Ctx<'_>,
    bucket: &str,
    key: &str,
    body: Body,
    mode: Mode,
) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let upsert = mode == Mode::Create
        && ctx
            .header("x-upsert")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let owner = caller.sub().map(str::to_owned);
    let id = store(
        ctx,
        &caller,
        owner.as_deref(),
        bucket,
        key,
        body,
        mode,
        upsert,
    )
    .await?;
    Ok(axum::Json(json!({"Id": id, "Key": format!("{bucket}/{key}")})).into_response())
}

/// What a download needs of an object's row.
pub(crate) struct StoredObject {
    pub version: String,
    pub mimetype: String,
    pub cache_control: String,
    pub etag: String,
    pub size: u64,
    pub modified: f64,
    pub info: Value,
}

/// What downloads and `info` read of an object (alias `o`).
const OBJECT_COLUMNS: &str = "o.version, coalesce(o.metadata->>'mimetype', 'application/octet-stream'),
        coalesce(o.metadata->>'cacheControl', 'no-cache'), coalesce(o.metadata->>'eTag', ''),
        coalesce((o.metadata->>'size')::int8, 0),
        extract(epoch from coalesce(o.updated_at, o.created_at, now()))::float8,
        jsonb_build_object('id', o.id, 'name', o.name, 'version', o.version,
          'size', (o.metadata->>'size')::int8, 'content_type', o.metadata->>'mimetype',
          'cache_control', o.metadata->>'cacheControl', 'etag', o.metadata->>'eTag',
          'metadata', coalesce(o.user_metadata, '{}'::jsonb),
          'created_at', to_char(o.created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))";

fn stored_object(row: &sovra_pg::tokio_postgres::Row, at: usize) -> StoredObject {
    let version: Option<String> = row.get(at);
    StoredObject {
        version: version.unwrap_or_default(),
        mimetype: row.get(at + 1),
        cache_control: row.get(at + 2),
        etag: row.get(at + 3),
        size: u64::try_from(row.get::<_, i64>(at + 4)).unwrap_or(0),
        modified: row.get(at + 5),
        info: row.get(at + 6),
    }
}

/// The object's row as `who` may see it.
pub(crate) async fn find(
    ctx: &Ctx<'_>,
    who: &Principal,
    bucket: &str,
    key: &str,
) -> Result<StoredObject, StorageError> {
    let sql = format!(
        "select {OBJECT_COLUMNS} from storage.objects o where o.bucket_id = $1 and o.name = $2"
    );
    let rows = ctx
        .run(who, "object.get", &sql, &[&bucket, &key], true)
        .await?;
    rows.first()
        .map(|row| stored_object(row, 0))
        .ok_or_else(StorageError::object_not_found)
}

/// An object of a public bucket, read as the service in one query: a
/// bucket that is missing or not public is `Bucket not found`, as upstream.
async fn find_public(ctx: &Ctx<'_>, bucket: &str, key: &str) -> Result<StoredObject, StorageError> {
    let sql = format!(
        "select coalesce(b.public, false), o.id is not null, {OBJECT_COLUMNS}
         from storage.buckets b left join storage.objects o on o.bucket_id = b.id and o.name = $2
         where b.id = $1"
    );
    let rows = ctx
        .run(
            &Principal::service(),
            "object.get",
            &sql,
            &[&bucket, &key],
            true,
        )
        .await?;
    match rows.first() {
        Some(row) if row.get::<_, bool>(0) && row.get::<_, bool>(1) => Ok(stored_object(row, 2)),
        Some(row) if row.get::<_, bool>(0) => Err(StorageError::object_not_found()),
        _ => Err(StorageError::bucket_not_found()),
    }
}

/// The object as a download or `info` request may see it: from a public
/// bucket by anyone, otherwise as the caller under RLS.
pub(crate) async fn find_readable(
    ctx: &Ctx<'_>,
    bucket: &str,
    key: &str,
    public: bool,
) -> Result<StoredObject, StorageError> {
    if public {
        find_public(ctx, bucket, key).await
    } else {
        find(ctx, &ctx.caller()?, bucket, key).await
    }
}

/// `GET`/`HEAD /object/[public|authenticated/]{bucket}/{key}`.
pub(crate) async fn download(
    ctx: &Ctx<'_>,
    bucket: &str,
    key: &str,
    public: bool,
) -> Result<Response, StorageError> {
    let object = find_readable(ctx, bucket, key, public).await?;
    serve(ctx, &object, None).await
}

/// The `Content-Security-Policy` of every object response (PDFs aside).
const OBJECT_CSP: &str = "default-src 'none'; sandbox";

/// Sends an object's bytes (or the requested range, or 304) with the
/// headers storage-js and browsers expect. `expires` replaces
/// `Cache-Control` on signed downloads.
pub(crate) async fn serve(
    ctx: &Ctx<'_>,
    object: &StoredObject,
    expires: Option<i64>,
) -> Result<Response, StorageError> {
    let modified = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(object.modified.max(0.0).floor() as u64);
    let mut headers = axum::http::HeaderMap::new();
    let mut put = |name: header::HeaderName, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    // A type that is not a clean header value (rows written by SQL) is
    // served as opaque bytes, never dropped: with `nosniff` below, a
    // browser would otherwise guess.
    let mimetype =
        names::parse_content_type(&object.mimetype).unwrap_or("application/octet-stream");
    put(header::CONTENT_TYPE, mimetype);
    // Uploaded bytes never script the API's origin: browsers must not
    // guess a type, a document rendered from an object runs sandboxed
    // (no script, no forms, an opaque origin), and HTML, SVG and XML are
    // downloaded rather than shown. PDFs are left out of the sandbox:
    // browsers refuse to show a PDF in a sandboxed document, and their
    // viewers do not run script in the page's origin.
    put(
        header::HeaderName::from_static("x-content-type-options"),
        "nosniff",
    );
    if names::mime_essence(mimetype) != "application/pdf" {
        put(header::CONTENT_SECURITY_POLICY, OBJECT_CSP);
    }
    match expires {
        Some(exp) => put(
            header::EXPIRES,
            &httpdate::fmt_http_date(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(u64::try_from(exp).unwrap_or(0)),
            ),
        ),
        None => put(header::CACHE_CONTROL, &object.cache_control),
    }
    if !object.etag.is_empty() {
        put(header::ETAG, &object.etag);
    }
    put(header::LAST_MODIFIED, &httpdate::fmt_http_date(modified));
    put(header::ACCEPT_RANGES, "bytes");
    put(header::HeaderName::from_static("x-robots-tag"), "none");
    match ctx.query("download") {
        Some(name) => put(
            header::CONTENT_DISPOSITION,
            &names::content_disposition(name),
        ),
        None if names::is_active_content(mimetype) => {
            put(header::CONTENT_DISPOSITION, &names::content_disposition(""));
        }
        None => {}
    }
    // Conditional requests.
    let not_modified = match ctx.header("if-none-match") {
        Some(tags) => {
            !object.etag.is_empty()
                && tags.split(',').any(|t| {
                    let t = t.trim().trim_start_matches("W/");
                    t == "*" || t == object.etag
                })
        }
        None => ctx
            .header("if-modified-since")
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .is_some_and(|since| modified <= since),
    };
    if not_modified {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        headers.remove(header::CONTENT_TYPE);
        response.headers_mut().extend(headers);
        return Ok(response);
    }
    let (status, range) = match names::parse_range(ctx.header("range"), object.size) {
        RangeRequest::Whole => (StatusCode::OK, None),
        RangeRequest::Partial(range) => (StatusCode::PARTIAL_CONTENT, Some(range)),
        RangeRequest::Unsatisfiable => {
            let mut response = StorageError::range_not_satisfiable().into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{}", object.size)) {
                response.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return Ok(response);
        }
    };
    let length = range.map_or(object.size, |r| r.end - r.start);
    put(header::CONTENT_LENGTH, &length.to_string());
    if let Some(r) = range {
        put(
            header::CONTENT_RANGE,
            &format!("bytes {}-{}/{}", r.start, r.end - 1, object.size),
        );
    }
    let body = if *ctx.method == axum::http::Method::HEAD || length == 0 {
        Body::empty()
    } else {
        let path = ctx.service.backend.object_path(&object.version);
        let download = ctx
            .service
            .backend
            .read(&path, range)
            .await
            .map_err(|err| match err {
                WriteError::Store(object_store::Error::NotFound { .. }) => {
                    StorageError::object_not_found()
                }
                WriteError::Busy => StorageError::busy(),
                err => {
                    tracing::error!(error = %err, "could not read stored bytes");
                    StorageError::internal()
                }
            })?;
        Body::from_stream(download.stream)
    };
    let mut response = (status, body).into_response();
    response.headers_mut().extend(headers);
    Ok(response)
}

/// `GET /object/info/[authenticated|public/]{bucket}/{key}`.
pub(crate) async fn info(
    ctx: &Ctx<'_>,
    bucket: &str,
    key: &str,
    public: bool,
) -> Result<Response, StorageError> {
    let object = find_readable(ctx, bucket, key, public).await?;
    // The fields Supabase Storage's info renderer sends, and its headers
    // (for `HEAD` too, which storage-js' `exists()` sends).
    let mut response = axum::Json(object.info).into_response();
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&object.etag)
        && !object.etag.is_empty()
    {
        headers.insert(header::ETAG, etag);
    }
    let modified = std::time::UNIX_EPOCH
        + std::time::Duration::from_secs(object.modified.max(0.0).floor() as u64);
    if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        headers.insert(header::LAST_MODIFIED, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Sort column and direction for listings, from a client's `sortBy`.
fn sort_by(value: Option<&Value>) -> Result<(&'static str, &'static str), StorageError> {
    let column = match value.and_then(|s| s.get("column")).and_then(Value::as_str) {
        None | Some("name") => "name",
        Some("updated_at") => "updated_at",
        Some("created_at") => "created_at",
        Some("last_accessed_at") => "last_accessed_at",
        Some(_) => {
            return Err(StorageError::invalid(
                "sortBy.column must be name, updated_at, created_at or last_accessed_at",
            ));
        }
    };
    let order = match value.and_then(|s| s.get("order")).and_then(Value::as_str) {
        None => "asc",
        Some(o) if o.eq_ignore_ascii_case("asc") => "asc",
        Some(o) if o.eq_ignore_ascii_case("desc") => "desc",
        Some(_) => return Err(StorageError::invalid("sortBy.order must be asc or desc")),
    };
    Ok((column, order))
}

/// The immediate children of `prefix` (a folder) as `who` may see them:
/// one entry per sub-folder and one per object, filtered by `search`,
/// sorted (folders first), paged. Column and direction are constants.
fn list_sql(column: &str, order: &str) -> String {
    format!(
        "with objs as (
           select o.id, o.name, o.updated_at, o.created_at, o.last_accessed_at, o.metadata,
                  substr(o.name, char_length($2) + 1) as rest
           from storage.objects o
           where o.bucket_id = $1 and o.name like $3
         ), entries as (
           select split_part(rest, '/', 1) as name, null::uuid as id, null::timestamptz as updated_at,
                  null::timestamptz as created_at, null::timestamptz as last_accessed_at,
                  null::jsonb as metadata, true as folder
           from objs where strpos(rest, '/') > 0 group by 1
           union all
           select rest, id, updated_at, created_at, last_accessed_at, metadata, false
           from objs where strpos(rest, '/') = 0
         ), page as (
           select * from entries
           where $4 = '' or starts_with(lower(name), lower($4))
           order by folder desc, {column} {order} nulls last, name {order}
           limit $5 offset $6
         )
         select coalesce(jsonb_agg(jsonb_build_object('name', name, 'id', id, 'updated_at', updated_at,
                  'created_at', created_at, 'last_accessed_at', last_accessed_at, 'metadata', metadata)
                  order by folder desc, {column} {order} nulls last, name {order}), '[]'::jsonb)
         from page"
    )
}

/// The folder prefix of a listing: empty, or ending in `/`.
fn folder(prefix: &str) -> String {
    let prefix = prefix.trim_start_matches('/');
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    }
}

fn bounded(value: Option<&Value>, default: i64, max: i64) -> Result<i64, StorageError> {
    match value {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_i64()
            .filter(|n| *n >= 0)
            .map(|n| n.min(max))
            .ok_or_else(|| StorageError::invalid("limit and offset must be non-negative integers")),
    }
}

/// `POST /object/list/{bucket}`.
pub(crate) async fn list(
    ctx: &Ctx<'_>,
    bucket: &str,
    body: Body,
) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    if !names::valid_bucket_id(bucket) {
        return Err(StorageError::invalid_bucket());
    }
    let body = Ctx::json(body).await?;
    let prefix = folder(body.get("prefix").and_then(Value::as_str).unwrap_or(""));
    let search = body
        .get("search")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let limit = bounded(body.get("limit"), 100, 10_000)?;
    let offset = bounded(body.get("offset"), 0, i64::MAX)?;
    let (column, order) = sort_by(body.get("sortBy"))?;
    let pattern = names::like_prefix(&prefix);
    let rows = ctx
        .run(
            &caller,
            "object.list",
            &list_sql(column, order),
            &[&bucket, &prefix, &pattern, &search, &limit, &offset],
            true,
        )
        .await?;
    let entries: Value = rows.first().map_or(json!([]), |row| row.get(0));
    Ok(axum::Json(entries).into_response())
}

/// The entries of a `list-v2` page as `who` may see them, in Supabase
/// Storage's order. `$2` is a plain string prefix of the full key (`$3`,
/// the same as a `like` pattern); with `$4` (`with_delimiter`) the keys
/// that go on past the next `/` after the prefix collapse into one folder
/// entry named up to that `/` (inclusive). Paged by keyset after `$5`
/// (the last name) and `$6` (the last sort value), at most `$7` rows.
/// Column and direction are constants.
fn list_v2_sql(column: &str, order: &str) -> String {
    let op = if order == "asc" { ">" } else { "<" };
    let (filter, sort) = if column == "name" {
        (
            format!("($5::text = '' or name collate \"C\" {op} $5)"),
            format!("name collate \"C\" {order}"),
        )
    } else {
        (
            format!(
                "($5::text = '' or row(coalesce(date_trunc('milliseconds', {column}), 'epoch'::timestamptz), name collate \"C\")
                  {op} row(coalesce((select after from params), 'epoch'::timestamptz), $5))"
            ),
            format!(
                "coalesce(date_trunc('milliseconds', {column}), 'epoch'::timestamptz) {order}, name collate \"C\" {order}"
            ),
        )
    };
    format!(
        "with params as (select nullif($6::text, '')::timestamptz as after),
         matched as (
           select o.id, o.name, o.updated_at, o.created_at, o.last_accessed_at, o.metadata,
                  $4::bool and strpos(substr(o.name, char_length($2) + 1), '/') > 0 as grouped
           from storage.objects o
           where o.bucket_id = $1 and o.name like $3
         ), entries as (
           select $2 || split_part(substr(name, char_length($2) + 1), '/', 1) || '/' as name,
                  null::uuid as id, null::timestamptz as updated_at, null::timestamptz as created_at,
                  null::timestamptz as last_accessed_at, null::jsonb as metadata, true as folder
           from matched where grouped group by 1
           union all
           select name, id, updated_at, created_at, last_accessed_at, metadata, false
           from matched where not grouped
         )
         select name, folder,
                to_char({column_value} at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                case when folder then jsonb_build_object('id', null, 'name', name)
                else jsonb_build_object('id', id, 'name', name, 'metadata', metadata,
                  'updated_at', to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                  'created_at', to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),
                  'last_accessed_at', to_char(last_accessed_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))
                  || case when $4 then jsonb_build_object('key', regexp_replace(name, '^.*/', '')) else '{{}}'::jsonb end
                end
         from entries
         where {filter}
         order by {sort}
         limit $7",
        column_value = if column == "name" { "null::timestamptz" } else { column },
    )
}

/// `POST /object/list-v2/{bucket}`, as Supabase Storage answers it: the
/// objects whose full key starts with `prefix` (a plain string prefix, not
/// a folder), named by their full key; with `with_delimiter`, one folder
/// entry (`a/sub/`) per group of keys that go on past the next `/`.
/// Paged by `nextCursor`, a keyset token.
pub(crate) async fn list_v2(
    ctx: &Ctx<'_>,
    bucket: &str,
    body: Body,
) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    if !names::valid_bucket_id(bucket) {
        return Err(StorageError::invalid_bucket());
    }
    let body = Ctx::json(body).await?;
    let prefix = match body.get("prefix") {
        None | Some(Value::Null) => "",
        Some(Value::String(prefix)) => prefix.as_str(),
        Some(_) => return Err(StorageError::invalid("body/prefix must be string")),
    }
    .to_owned();
    let limit = match body.get("limit") {
        None | Some(Value::Null) => 1000,
        Some(v) => v
            .as_i64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| StorageError::invalid("body/limit must be >= 1"))?
            .min(1000),
    };
    let delimiter = match body.get("with_delimiter") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(StorageError::invalid("body/with_delimiter must be boolean")),
    };
    let cursor = match body.get("cursor") {
        None | Some(Value::Null) => None,
        Some(Value::String(token)) if token.is_empty() => None,
        Some(Value::String(token)) => Some(
            crate::cursor::Cursor::decode(token)
                .ok_or_else(|| StorageError::invalid_parameter("continuation token"))?,
        ),
        Some(_) => return Err(StorageError::invalid("body/cursor must be string")),
    };
    let sort = body.get("sortBy");
    let column = match cursor
        .as_ref()
        .and_then(|c| c.sort_column.as_deref())
        .or_else(|| sort.and_then(|s| s.get("column")).and_then(Value::as_str))
    {
        None | Some("name") => "name",
        Some("updated_at") => "updated_at",
        Some("created_at") => "created_at",
        Some(_) => {
            return Err(StorageError::invalid(
                "body/sortBy/column must be equal to one of the allowed values",
            ));
        }
    };
    let order = match cursor
        .as_ref()
        .and_then(|c| c.sort_order.as_deref())
        .or_else(|| sort.and_then(|s| s.get("order")).and_then(Value::as_str))
    {
        None | Some("asc") => "asc",
        Some("desc") => "desc",
        Some(_) => {
            return Err(StorageError::invalid(
                "body/sortBy/order must be equal to one of the allowed values",
            ));
        }
    };
    let start_after = cursor
        .as_ref()
        .map(|c| c.start_after.clone())
        .unwrap_or_default();
    let after = cursor
        .as_ref()
        .and_then(|c| c.sort_column_after.clone())
        .unwrap_or_default();
    if !after.is_empty() && !names::is_iso_timestamp(&after) {
        return Err(StorageError::invalid_parameter("continuation token"));
    }
    let pattern = names::like_prefix(&prefix);
    let probe = limit + 1;
    let rows = ctx
        .run(
            &caller,
            "object.list",
            &list_v2_sql(column, order),
            &[
                &bucket,
                &prefix,
                &pattern,
                &delimiter,
                &start_after,
                &after,
                &probe,
            ],
            true,
        )
        .await?;
    let has_next = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(usize::try_from(limit).unwrap_or(0))];
    let mut folders = Vec::new();
    let mut objects = Vec::new();
    for row in page {
        let entry: Value = row.get(3);
        if row.get::<_, bool>(1) {
            folders.push(entry);
        } else {
            objects.push(entry);
        }
    }
    let next = match page.last() {
        Some(last) if has_next => Some(
            crate::cursor::Cursor {
                start_after: last.get(0),
                sort_order: sort
                    .and_then(|s| s.get("order"))
                    .and_then(Value::as_str)
                    .map(|_| order.to_owned())
                    .or_else(|| cursor.as_ref().and_then(|c| c.sort_order.clone())),
                sort_column: (column != "name").then(|| column.to_owned()),
                sort_column_after: last.get(2),
            }
            .encode(),
        ),
        _ => None,
    };
    let mut answer = json!({"hasNext": has_next, "folders": folders, "objects": objects});
    if let (Some(next), Some(last)) = (next, page.last().filter(|_| has_next)) {
        answer["nextCursor"] = Value::String(next);
        answer["nextCursorKey"] = Value::String(last.get(0));
    }
    Ok(axum::Json(answer).into_response())
}

/// `POST /object/move` and `POST /object/copy`.
pub(crate) async fn relocate(
    ctx: &Ctx<'_>,
    body: Body,
    copy: bool,
) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let body = Ctx::json(body).await?;
    let text = |name: &str| body.get(name).and_then(Value::as_str).map(str::to_owned);
    let bucket = text("bucketId").unwrap_or_default();
    let target_bucket = text("destinationBucket").unwrap_or_else(|| bucket.clone());
    let source = text("sourceKey").unwrap_or_default();
    let target = text("destinationKey").unwrap_or_default();
    if !names::valid_bucket_id(&bucket) || !names::valid_bucket_id(&target_bucket) {
        return Err(StorageError::invalid_bucket());
    }
    for key in [&source, &target] {
        if !names::valid_key(key) {
            return Err(StorageError::invalid_key(key));
        }
    }
    // The source as the caller may see it; its size and type must suit
    // the destination bucket, as an upload there would have to.
    let found = ctx
        .run(
            &caller,
            if copy { "object.copy" } else { "object.move" },
            "select version, metadata, user_metadata from storage.objects where bucket_id = $1 and name = $2",
            &[&bucket, &source],
            true,
        )
        .await?;
    let Some(row) = found.first() else {
        return Err(StorageError::object_not_found());
    };
    let old_version: Option<String> = row.get(0);
    let metadata: Option<Value> = row.get(1);
    let user_metadata: Option<Value> = row.get(2);
    let mut meta = metadata.unwrap_or_else(|| json!({}));
    let size = meta.get("size").and_then(Value::as_i64).unwrap_or(0);
    // As Supabase: `copyMetadata` (default true) copies the source's
    // metadata; otherwise the user metadata comes from `x-metadata` and
    // the body's `metadata` may set `cacheControl` and `mimetype`.
    let copy_metadata = match body.get("copyMetadata") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(StorageError::invalid("body/copyMetadata must be boolean")),
    };
    let header_metadata = match ctx.header("x-metadata") {
        Some(text) if copy && !copy_metadata => Some(decode_metadata(text)?),
        _ => None,
    };
    if copy
        && !copy_metadata
        && let Some(Value::Object(given)) = body.get("metadata")
    {
        for name in ["cacheControl", "mimetype"] {
            match given.get(name) {
                None | Some(Value::Null) => {}
                Some(Value::String(text)) if name == "cacheControl" => {
                    meta[name] = Value::String(names::cache_control(Some(text)));
                }
                Some(Value::String(text)) => meta[name] = Value::String(text.clone()),
                Some(_) => {
                    return Err(StorageError::invalid(format!(
                        "body/metadata/{name} must be string"
                    )));
                }
            }
        }
    }
    let mimetype = meta
        .get("mimetype")
        .and_then(Value::as_str)
        .unwrap_or("application/octet-stream")
        .to_owned();
    let Some(destination) = bucket::lookup(ctx, &target_bucket).await? else {
        return Err(StorageError::bucket_not_found());
    };
    if u64::try_from(size).unwrap_or(0) > limit_for(ctx, &destination, &target) {
        return Err(StorageError::too_large());
    }
    let mimetype = check_mime(&destination, &target, &mimetype)?;
    if !copy {
        // Only the row checked above moves: a concurrent replacement of
        // the source (another size or type) makes this a 404.
        let rows = ctx
            .run(
                &caller,
                "object.move",
                "update storage.objects set bucket_id = $3, name = $4, last_accessed_at = now()
                 where bucket_id = $1 and name = $2 and version is not distinct from $5 returning id::text",
                &[&bucket, &source, &target_bucket, &target, &old_version],
                true,
            )
            .await?;
        if rows.is_empty() {
            return Err(StorageError::object_not_found());
        }
        return Ok(axum::Json(json!({"message": "Successfully moved"})).into_response());
    }
    let user_metadata = if copy_metadata {
        user_metadata
    } else {
        header_metadata
    };
    let version = new_version();
    let from = ctx
        .service
        .backend
        .object_path(old_version.as_deref().unwrap_or(""));
    let to = ctx.service.backend.object_path(&version);
    ctx.service
        .backend
        .copy(&from, &to)
        .await
        .map_err(|err| match err {
            WriteError::Store(object_store::Error::NotFound { .. }) => {
                StorageError::object_not_found()
            }
            WriteError::Busy => StorageError::busy(),
            err => {
                tracing::error!(error = %err, "could not copy stored bytes");
                StorageError::internal()
            }
        })?;
    let object = NewObject {
        mimetype,
        cache_control: meta
            .get("cacheControl")
            .and_then(Value::as_str)
            .unwrap_or("no-cache")
            .to_owned(),
        user_metadata,
        size,
        version: version.clone(),
    };
    let upsert = ctx
        .header("x-upsert")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let owner = caller.sub().map(str::to_owned);
    match write_row(
        ctx,
        &caller,
        owner.as_deref(),
        &target_bucket,
        &target,
        &object,
        Mode::Create,
        upsert,
        true,
    )
    .await
    {
        Ok((id, replaced)) => {
            if let Some(old) = replaced.filter(|v| !v.is_empty()) {
                ctx.service.backend.delete_versions(vec![old]).await;
            }
            Ok(
                axum::Json(json!({"Id": id, "Key": format!("{target_bucket}/{target}")}))
                    .into_response(),
            )
        }
        Err(err) => {
            let _ = ctx.service.backend.delete(&to).await;
            Err(err)
        }
    }
}

const DELETED_SQL: &str = "delete from storage.objects where bucket_id = $1 and name = any($2)
   returning jsonb_build_object('name', name, 'bucket_id', bucket_id, 'owner', owner, 'owner_id', owner_id,
     'id', id, 'updated_at', updated_at, 'created_at', created_at, 'last_accessed_at', last_accessed_at,
     'metadata', metadata, 'version', version, 'user_metadata', user_metadata), version";

pub(crate) async fn delete_names(
    ctx: &Ctx<'_>,
    bucket: &str,
    keys: &[String],
) -> Result<Vec<Value>, StorageError> {
    let caller = ctx.caller()?;
    let rows = ctx
        .run(
            &caller,
            "object.delete",
            DELETED_SQL,
            &[&bucket, &keys],
            true,
        )
        .await?;
    let mut deleted = Vec::with_capacity(rows.len());
    let mut versions = Vec::with_capacity(rows.len());
    for row in rows {
        deleted.push(row.get::<_, Value>(0));
        if let Some(version) = row.get::<_, Option<String>>(1) {
            versions.push(version);
        }
    }
    ctx.service.backend.delete_versions(versions).await;
    Ok(deleted)
}

/// `DELETE /object/{bucket}` with `{"prefixes": [names…]}`.
pub(crate) async fn delete_many(
    ctx: &Ctx<'_>,
    bucket: &str,
    body: Body,
) -> Result<Response, StorageError> {
    if !names::valid_bucket_id(bucket) {
        return Err(StorageError::invalid_bucket());
    }
    let body = Ctx::json(body).await?;
    let Some(prefixes) = body.get("prefixes").and_then(Value::as_array) else {
        return Err(StorageError::invalid(
            "prefixes must be an array of object names",
        ));
    };
    if prefixes.is_empty() || prefixes.len() > 1000 {
        return Err(StorageError::invalid(
            "prefixes must hold 1 to 1000 object names",
        ));
    }
    let mut keys = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        let Some(key) = prefix.as_str() else {
            return Err(StorageError::invalid(
                "prefixes must be an array of object names",
            ));
        };
        keys.push(key.to_owned());
    }
    let deleted = delete_names(ctx, bucket, &keys).await?;
    Ok(axum::Json(Value::Array(deleted)).into_response())
}

/// `DELETE /object/{bucket}/{key}`.
pub(crate) async fn delete_one(
    ctx: &Ctx<'_>,
    bucket: &str,
    key: &str,
) -> Result<Response, StorageError> {
    let deleted = delete_names(ctx, bucket, &[key.to_owned()]).await?;
    if deleted.is_empty() {
        return Err(StorageError::object_not_found());
    }
    Ok(axum::Json(json!({"message": "Successfully deleted"})).into_response())
}
