//! Resumable uploads over TUS 1.0.0 (`/upload/resumable`), as
//! storage-js' users drive them with tus-js-client.
//!
//! An upload is a row in `sovra.storage_uploads` plus one stored part per
//! accepted `PATCH`. A `PATCH` holds a short lease on the row, so two
//! clients cannot append at once (the second gets 409); a body that breaks
//! off stores nothing and leaves the offset where it was, so the client
//! resumes from the last whole chunk. When the last byte arrives the parts
//! are joined into a new object version and the object's row is written
//! exactly as a normal upload does, as the caller, under RLS.

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::backend::WriteError;
use crate::error::StorageError;
use crate::object::{self, Mode, NewObject};
use crate::{Ctx, Principal, StorageService, bucket, names, not_allowed};

const TUS_VERSION: &str = "1.0.0";

/// Smallest chunk a `PATCH` may carry, except the one that completes the
/// upload: each chunk is a stored part, so this bounds the parts (and the
/// rows, files and reads of the final join) per byte uploaded.
/// tus-js-client sends the whole file at once by default, and Supabase's
/// guides use 6 MiB chunks.
pub(crate) const MIN_CHUNK: u64 = 1024 * 1024;
/// Most parts of one upload (S3's multipart limit).
pub(crate) const MAX_PARTS: i32 = 10_000;

pub(crate) async fn route(
    ctx: &Ctx<'_>,
    rest: &[&str],
    body: Body,
) -> Result<Response, StorageError> {
    let result = match (rest, ctx.method) {
        ([], &Method::OPTIONS) | (["sign"], &Method::OPTIONS) => Ok(options(ctx)),
        ([], &Method::POST) => create(ctx, body, false).await,
        (["sign"], &Method::POST) => create(ctx, body, true).await,
        ([id] | ["sign", id], &Method::HEAD) => head(ctx, id).await,
        ([id] | ["sign", id], &Method::PATCH) => patch(ctx, id, body).await,
        ([id] | ["sign", id], &Method::DELETE) => terminate(ctx, id).await,
        ([_] | ["sign", _], &Method::OPTIONS) => Ok(options(ctx)),
        _ => Err(not_allowed()),
    };
    let mut response = result.unwrap_or_else(tus_error);
    response
        .headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    Ok(response)
}

/// A refusal as Supabase's TUS server sends it (tus-js-client shows the
/// body): the logical status as the HTTP status and the message as plain
/// text; a size refusal says `Maximum size exceeded`, as `@tus/server`
/// does.
pub(crate) fn tus_error(err: StorageError) -> Response {
    let status = StatusCode::from_u16(err.status).unwrap_or(StatusCode::BAD_REQUEST);
    let message = if err.code == "EntityTooLarge" {
        "Maximum size exceeded".to_owned()
    } else {
        err.message
    };
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        message,
    )
        .into_response()
}

fn options(ctx: &Ctx<'_>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .extend(ctx.service.tus_options_headers());
    response
}

impl StorageService {
    /// The headers of a TUS `OPTIONS` answer: `Tus-Version`,
    /// `Tus-Extension`, `Tus-Max-Size` (the largest object this storage
    /// takes) and `Tus-Resumable`. The server adds them to the CORS answer
    /// of an `OPTIONS` request to `/upload/resumable`, which its CORS
    /// layer answers before the request reaches this service.
    pub fn tus_options_headers(&self) -> axum::http::HeaderMap {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
        headers.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
        headers.insert(
            "tus-extension",
            HeaderValue::from_static(
                "creation,creation-with-upload,creation-defer-length,termination,expiration",
            ),
        );
        headers.insert(
            "tus-max-size",
            HeaderValue::from(self.config.file_size_limit),
        );
        headers
    }
}

fn header_u64(ctx: &Ctx<'_>, name: &str) -> Result<Option<u64>, StorageError> {
    match ctx.headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(names::parse_tus_u64)
            .map(Some)
            .ok_or_else(|| {
                StorageError::invalid(format!(
                    "{name} must be a non-negative integer of at most 19 digits"
                ))
            }),
    }
}

/// Whether the request body is a TUS chunk (`application/offset+octet-stream`).
fn is_chunk(ctx: &Ctx<'_>) -> bool {
    ctx.header("content-type")
        .is_some_and(names::is_tus_offset_stream)
}

/// `POST /upload/resumable[/sign]`.
async fn create(ctx: &Ctx<'_>, body: Body, signed: bool) -> Result<Response, StorageError> {
    let metadata = match ctx.headers.get("upload-metadata") {
        None => Vec::new(),
        Some(value) => value
            .to_str()
            .map_err(|_| StorageError::invalid("Upload-Metadata must be ASCII"))
            .and_then(|text| names::parse_tus_metadata(text).map_err(StorageError::invalid))?,
    };
    let field = |name: &str| {
        metadata
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let bucket_id = field("bucketName").unwrap_or_default();
    let key = field("objectName").unwrap_or_default();
    if !names::valid_bucket_id(&bucket_id) {
        return Err(StorageError::invalid_bucket());
    }
    if !names::valid_key(&key) {
        return Err(StorageError::invalid_key(&key));
    }
    let length = header_u64(ctx, "upload-length")?;
    let deferred = match ctx.header("upload-defer-length") {
        None => false,
        Some(text) => names::parse_tus_defer_length(text)
            .ok_or_else(|| StorageError::invalid("Upload-Defer-Length must be 1"))?,
    };
    if length.is_none() && !deferred {
        return Err(StorageError::invalid(
            "Upload-Length or Upload-Defer-Length: 1 is required",
        ));
    }
    let (who, owner, upsert, creator) = if signed {
        let url = format!("{bucket_id}/{key}");
        let (owner, upsert) = crate::sign::verify_upload(ctx, ctx.header("x-signature"), &url)?;
        (Principal::service(), owner, upsert, None)
    } else {
        let caller = ctx.caller()?;
        let upsert = ctx
            .header("x-upsert")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let owner = caller.sub().map(str::to_owned);
        let creator = Some(caller.fingerprint());
        (caller, owner, upsert, creator)
    };
    let Some(bucket) = bucket::lookup(ctx, &bucket_id).await? else {
        return Err(StorageError::bucket_not_found());
    };
    if let Some(length) = length
        && length > object::limit_for(ctx, &bucket, &key)
    {
        return Err(StorageError::too_large());
    }
    let mimetype = object::check_mime(
        &bucket,
        &key,
        field("contentType")
            .as_deref()
            .unwrap_or("application/octet-stream"),
    )?;
    let user_metadata = match field("metadata") {
        Some(text) => Some(
            serde_json::from_str::<Value>(&text)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| StorageError::invalid("metadata must be a JSON object"))?,
        ),
        None => None,
    };
    // Refuse now what the final write would refuse.
    let probe = NewObject {
        mimetype: String::new(),
        cache_control: String::new(),
        user_metadata: None,
        size: 0,
        version: String::new(),
    };
    object::write_row(
        ctx,
        &who,
        owner.as_deref(),
        &bucket_id,
        &key,
        &probe,
        Mode::Create,
        upsert,
        false,
    )
    .await?;
    let id = uuid::Uuid::new_v4();
    let expiry = i64::try_from(ctx.service.config.upload_expiry.as_secs()).unwrap_or(86_400);
    let length = length.map(|n| i64::try_from(n).unwrap_or(i64::MAX));
    let cache = names::cache_control(field("cacheControl").as_deref());
    ctx.run(
        &Principal::service(),
        "upload.create",
        "insert into sovra.storage_uploads
           (id, bucket_id, name, upload_length, content_type, cache_control, user_metadata, upsert, owner_id, signed, expires_at, creator)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now() + make_interval(secs => $11::float8), $12)",
        &[
            &id,
            &bucket_id,
            &key,
            &length,
            &mimetype,
            &cache,
            &user_metadata,
            &upsert,
            &owner,
            &signed,
            &(expiry as f64),
            &creator,
        ],
        true,
    )
    .await?;
    let location = format!("/storage/v1/upload/resumable/{id}");
    let mut response = if is_chunk(ctx) {
        // creation-with-upload: the first chunk came with the POST.
        let mut response = append(ctx, &id.to_string(), body, Some(0)).await?;
        *response.status_mut() = StatusCode::CREATED;
        response
    } else {
        StatusCode::CREATED.into_response()
    };
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert("location", value);
    }
    Ok(response)
}

/// An upload's row.
struct Upload {
    bucket_id: String,
    name: String,
    length: Option<i64>,
    offset: i64,
    parts: i32,
    content_type: String,
    cache_control: String,
    user_metadata: Option<Value>,
    upsert: bool,
    owner_id: Option<String>,
    signed: bool,
    creator: Option<String>,
}

const UPLOAD_COLUMNS: &str = "bucket_id, name, upload_length, upload_offset, parts, coalesce(content_type, 'application/octet-stream'),
   coalesce(cache_control, 'no-cache'), user_metadata, upsert, owner_id, signed, creator";

fn upload_from(row: &sovra_pg::tokio_postgres::Row) -> Upload {
    Upload {
        bucket_id: row.get(0),
        name: row.get(1),
        length: row.get(2),
        offset: row.get(3),
        parts: row.get(4),
        content_type: row.get(5),
        cache_control: row.get(6),
        user_metadata: row.get(7),
        upsert: row.get(8),
        owner_id: row.get(9),
        signed: row.get(10),
        creator: row.get(11),
    }
}

fn parse_id(id: &str) -> Result<uuid::Uuid, StorageError> {
    uuid::Uuid::parse_str(id).map_err(|_| StorageError::upload_not_found())
}

/// Only whoever started an upload sees or continues it: the same role and
/// `sub`, or for callers without a `sub` the same claims (any holder of
/// the id, for uploads made through a signed URL; the service role
/// always). Others are told it does not exist.
fn allowed(ctx: &Ctx<'_>, upload: &Upload) -> Result<Principal, StorageError> {
    if upload.signed {
        return Ok(Principal::service());
    }
    let caller = ctx.caller()?;
    let same = upload.creator.as_deref().is_some_and(|creator| {
        // Both are hex digests; compared in constant time all the same.
        let mine = caller.fingerprint();
        creator.len() == mine.len()
            && creator
                .bytes()
                .zip(mine.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if caller.is_service() || same {
        Ok(caller)
    } else {
        Err(StorageError::upload_not_found())
    }
}

/// `HEAD /upload/resumable/{id}`.
async fn head(ctx: &Ctx<'_>, id: &str) -> Result<Response, StorageError> {
    let id = parse_id(id)?;
    let rows = ctx
        .run(
            &Principal::service(),
            "upload.head",
            &format!("select {UPLOAD_COLUMNS} from sovra.storage_uploads where id = $1 and expires_at > now()"),
            &[&id],
            true,
        )
        .await?;
    let Some(row) = rows.first() else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let upload = upload_from(row);
    if allowed(ctx, &upload).is_err() {
        return Ok(StatusCode::NOT_FOUND.into_response());
    }
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert("upload-offset", HeaderValue::from(upload.offset));
    match upload.length {
        Some(length) => {
            headers.insert("upload-length", HeaderValue::from(length));
        }
        None => {
            headers.insert("upload-defer-length", HeaderValue::from_static("1"));
        }
    }
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `PATCH /upload/resumable/{id}`.
async fn patch(ctx: &Ctx<'_>, id: &str, body: Body) -> Result<Response, StorageError> {
    if !is_chunk(ctx) {
        return Ok(StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response());
    }
    let Some(offset) = header_u64(ctx, "upload-offset")? else {
        return Err(StorageError::invalid("Upload-Offset is required"));
    };
    append(ctx, id, body, Some(offset)).await
}

async fn release(ctx: &Ctx<'_>, id: &uuid::Uuid) {
    if let Err(err) = ctx
        .run(
            &Principal::service(),
            "upload.release",
            "update sovra.storage_uploads set locked_until = null where id = $1",
            &[id],
            true,
        )
        .await
    {
        tracing::warn!(error = %err, "could not release an upload lease");
    }
}

/// Appends one chunk at `offset` under a lease, and completes the upload
/// when it is whole. The caller is checked (and the offset compared)
/// before the lease is taken, so a stranger can neither hold an upload
/// nor learn that it exists.
async fn append(
    ctx: &Ctx<'_>,
    id: &str,
    body: Body,
    offset: Option<u64>,
) -> Result<Response, StorageError> {
    let id = parse_id(id)?;
    let found = ctx
        .run(
            &Principal::service(),
            "upload.head",
            &format!("select {UPLOAD_COLUMNS} from sovra.storage_uploads where id = $1 and expires_at > now()"),
            &[&id],
            true,
        )
        .await?;
    let Some(row) = found.first() else {
        return Err(StorageError::upload_not_found());
    };
    let seen = upload_from(row);
    allowed(ctx, &seen)?;
    if let Some(offset) = offset
        && i64::try_from(offset).ok() != Some(seen.offset)
    {
        return Err(StorageError::conflict(format!(
            "Upload-Offset {offset} does not match the current offset {}",
            seen.offset
        )));
    }
    let rows = ctx
        .run(
            &Principal::service(),
            "upload.lease",
            &format!(
                "update sovra.storage_uploads set locked_until = now() + interval '10 minutes'
                 where id = $1 and expires_at > now() and (locked_until is null or locked_until < now())
                   and upload_offset = $2
                 returning {UPLOAD_COLUMNS}"
            ),
            &[&id, &seen.offset],
            true,
        )
        .await?;
    let Some(row) = rows.first() else {
        return Err(StorageError::conflict(
            "The upload is being written by another request",
        ));
    };
    let mut upload = upload_from(row);
    let result = append_leased(ctx, &id, &mut upload, body).await;
    if !matches!(result, Ok(true)) {
        release(ctx, &id).await;
    }
    let complete = result?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert("upload-offset", HeaderValue::from(upload.offset));
    if complete {
        finish(ctx, &id, &upload).await?;
    }
    Ok(response)
}

/// Returns whether the upload is now complete (the lease is then kept
/// until [`finish`] deletes the row).
async fn append_leased(
    ctx: &Ctx<'_>,
    id: &uuid::Uuid,
    upload: &mut Upload,
    body: Body,
) -> Result<bool, StorageError> {
    allowed(ctx, upload)?;
    if upload.length.is_none()
        && let Some(length) = header_u64(ctx, "upload-length")?
    {
        if length < u64::try_from(upload.offset).unwrap_or(0) {
            return Err(StorageError::invalid(
                "Upload-Length is smaller than what was already uploaded",
            ));
        }
        upload.length = Some(i64::try_from(length).unwrap_or(i64::MAX));
    }
    let Some(bucket) = bucket::lookup(ctx, &upload.bucket_id).await? else {
        return Err(StorageError::bucket_not_found());
    };
    let limit = object::limit_for(ctx, &bucket, &upload.name);
    let offset_u = u64::try_from(upload.offset).unwrap_or(0);
    let room = match upload.length {
        Some(length) => u64::try_from(length).unwrap_or(0),
        None => limit,
    }
    .saturating_sub(offset_u);
    if upload
        .length
        .is_some_and(|l| u64::try_from(l).unwrap_or(0) > limit)
    {
        return Err(StorageError::too_large());
    }
    // A chunk that does not finish the upload must be at least MIN_CHUNK,
    // and the last part allowed must finish it. Refused before reading
    // when Content-Length already tells.
    let announced = ctx
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok());
    let length = upload.length.and_then(|l| u64::try_from(l).ok());
    let parts = upload.parts;
    let chunk_ok = |size: u64| chunk_allowed(length, offset_u, size, parts);
    if let Some(size) = announced
        && size > 0
        && !chunk_ok(size)
    {
        return Err(small_chunk());
    }
    let path = ctx.service.backend.part_path(&id.to_string(), upload.parts);
    let written = match ctx
        .service
        .backend
        .write(&path, body.into_data_stream(), room)
        .await
    {
        Ok(n) => n,
        Err(WriteError::TooLarge) => return Err(StorageError::too_large()),
        Err(WriteError::Body(message)) => {
            tracing::debug!(%message, "resumable chunk broke off; the client resumes from the last offset");
            return Err(StorageError::invalid("The chunk was interrupted"));
        }
        Err(WriteError::Busy) => return Err(StorageError::busy()),
        Err(WriteError::Store(err)) => {
            tracing::error!(error = %err, "could not store an upload chunk");
            return Err(StorageError::internal());
        }
    };
    if written == 0 {
        let _ = ctx.service.backend.delete(&path).await;
        let complete = upload.length == Some(upload.offset);
        return Ok(complete);
    }
    if !chunk_ok(written) {
        let _ = ctx.service.backend.delete(&path).await;
        return Err(small_chunk());
    }
    upload.offset += i64::try_from(written).unwrap_or(0);
    upload.parts += 1;
    let complete = upload.length == Some(upload.offset);
    ctx.run(
        &Principal::service(),
        "upload.append",
        "update sovra.storage_uploads set upload_offset = $2, parts = $3, upload_length = $4,
           locked_until = case when $5 then locked_until end
         where id = $1",
        &[id, &upload.offset, &upload.parts, &upload.length, &complete],
        true,
    )
    .await?;
    Ok(complete)
}

/// Whether a chunk of `size` bytes at `offset` may be stored as part
/// number `parts` (counting from 0) of an upload of `length` bytes (when
/// known): it completes the upload, or it holds at least [`MIN_CHUNK`]
/// bytes and leaves room for the part that will complete it.
pub(crate) fn chunk_allowed(length: Option<u64>, offset: u64, size: u64, parts: i32) -> bool {
    let finishes = length.is_some_and(|l| l == offset.saturating_add(size));
    finishes || (size >= MIN_CHUNK && parts.saturating_add(1) < MAX_PARTS)
}

fn small_chunk() -> StorageError {
    StorageError::invalid(format!(
        "Every chunk but the last must hold at least {MIN_CHUNK} bytes, and an upload at most {MAX_PARTS} chunks"
    ))
}

/// Joins the parts into a new version and writes the object's row as the
/// uploader, then removes the upload.
async fn finish(ctx: &Ctx<'_>, id: &uuid::Uuid, upload: &Upload) -> Result<(), StorageError> {
    let who = allowed(ctx, upload)?;
    let backend = &ctx.service.backend;
    let version = object::new_version();
    let path = backend.object_path(&version);
    let upload_id = id.to_string();
    let size = backend
        .concat_parts(&upload_id, upload.parts, &path)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "could not join upload parts");
            StorageError::internal()
        })?;
    let new = NewObject {
        mimetype: upload.content_type.clone(),
        cache_control: upload.cache_control.clone(),
        user_metadata: upload.user_metadata.clone(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        version: version.clone(),
    };
    let result = object::write_row(
        ctx,
        &who,
        upload.owner_id.as_deref(),
        &upload.bucket_id,
        &upload.name,
        &new,
        Mode::Create,
        upload.upsert,
        true,
    )
    .await;
    match &result {
        Ok((_, Some(old))) if !old.is_empty() => backend.delete_versions(vec![old.clone()]).await,
        Ok(_) => {}
        Err(_) => {
            let _ = backend.delete(&path).await;
        }
    }
    backend.delete_parts(&upload_id, upload.parts).await;
    ctx.run(
        &Principal::service(),
        "upload.finish",
        "delete from sovra.storage_uploads where id = $1",
        &[id],
        true,
    )
    .await?;
    result.map(|_| ())
}

/// `DELETE /upload/resumable/{id}`: abandons an upload and its parts.
async fn terminate(ctx: &Ctx<'_>, id: &str) -> Result<Response, StorageError> {
    let id = parse_id(id)?;
    let rows = ctx
        .run(
            &Principal::service(),
            "upload.head",
            &format!("select {UPLOAD_COLUMNS} from sovra.storage_uploads where id = $1"),
            &[&id],
            true,
        )
        .await?;
    let Some(row) = rows.first() else {
        return Err(StorageError::upload_not_found());
    };
    let upload = upload_from(row);
    allowed(ctx, &upload)?;
    ctx.run(
        &Principal::service(),
        "upload.terminate",
        "delete from sovra.storage_uploads where id = $1",
        &[&id],
        true,
    )
    .await?;
    ctx.service
        .backend
        .delete_parts(&id.to_string(), upload.parts)
        .await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Deletes expired uploads and their parts.
pub(crate) async fn sweep(service: &StorageService) -> Result<usize, String> {
    let mut client = service.pool.get().await.map_err(|err| err.to_string())?;
    let tx = client.transaction().await.map_err(|err| err.to_string())?;
    tx.execute("set local role service_role", &[])
        .await
        .map_err(|err| err.to_string())?;
    let rows = tx
        .query(
            "with gone as (delete from sovra.storage_uploads where expires_at < now()
                           and (locked_until is null or locked_until < now()) returning id, parts)
             select id::text, parts from gone",
            &[],
        )
        .await
        .map_err(|err| err.to_string())?;
    tx.commit().await.map_err(|err| err.to_string())?;
    for row in &rows {
        let id: String = row.get(0);
        service.backend.delete_parts(&id, row.get(1)).await;
    }
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_large_enough_and_parts_bounded() {
        let mib = MIN_CHUNK;
        // The last chunk may be small, the others not.
        assert!(chunk_allowed(Some(10), 0, 10, 0));
        assert!(chunk_allowed(Some(3 * mib), 2 * mib, mib, 2));
        assert!(chunk_allowed(Some(3 * mib + 1), 3 * mib, 1, 3));
        assert!(!chunk_allowed(Some(3 * mib), 0, 10, 0));
        assert!(!chunk_allowed(Some(3 * mib), 0, mib - 1, 0));
        assert!(chunk_allowed(Some(3 * mib), 0, mib, 0));
        // Deferred length: only a full-size chunk, until the length is known.
        assert!(!chunk_allowed(None, 0, 10, 0));
        assert!(chunk_allowed(None, 0, mib, 0));
        // The last part allowed must complete the upload.
        assert!(chunk_allowed(Some(u64::MAX), 0, mib, MAX_PARTS - 2));
        assert!(!chunk_allowed(Some(u64::MAX), 0, mib, MAX_PARTS - 1));
        assert!(chunk_allowed(Some(5 * mib), 4 * mib, mib, MAX_PARTS - 1));
        assert!(!chunk_allowed(Some(u64::MAX), 0, mib, MAX_PARTS));
    }
}
