//! Bucket and object operations of the S3 protocol, on the same tables,
//! statements and bytes as `/storage/v1/object`, as the caller.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use futures_util::StreamExt as _;
use serde_json::Value;

use super::{ISO, read_xml, s3_error, sigv4, xml, xml_response};
use crate::backend::WriteError;
use crate::error::StorageError;
use crate::object::{self, Mode, NewObject};
use crate::{Ctx, bucket, names};

/// `GET /`: the buckets the caller may see.
pub(crate) async fn list_buckets(ctx: &Ctx<'_>) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let rows = ctx
        .run(
            &caller,
            "bucket.list",
            &format!(
                "select id, to_char(coalesce(created_at, now()) at time zone 'UTC', {ISO})
                 from storage.buckets order by id collate \"C\""
            ),
            &[],
            true,
        )
        .await?;
    let mut w = xml::Writer::new("ListAllMyBucketsResult");
    w.open("Buckets");
    for row in &rows {
        w.open("Bucket")
            .text("Name", row.get::<_, &str>(0))
            .text("CreationDate", row.get::<_, &str>(1))
            .close("Bucket");
    }
    w.close("Buckets");
    w.open("Owner")
        .text("ID", caller.sub().unwrap_or(&caller.role))
        .text("DisplayName", caller.sub().unwrap_or(&caller.role))
        .close("Owner");
    Ok(xml_response(w.finish("ListAllMyBucketsResult")))
}

/// Whether the caller may see `bucket`.
async fn visible_bucket(ctx: &Ctx<'_>, bucket: &str) -> Result<bool, StorageError> {
    let caller = ctx.caller()?;
    let rows = ctx
        .run(
            &caller,
            "bucket.get",
            "select 1 from storage.buckets where id = $1",
            &[&bucket],
            true,
        )
        .await?;
    Ok(!rows.is_empty())
}

/// `HEAD /{bucket}`.
pub(crate) async fn head_bucket(ctx: &Ctx<'_>, bucket: &str) -> Result<Response, StorageError> {
    if !visible_bucket(ctx, bucket).await? {
        return Err(StorageError::bucket_not_found());
    }
    let mut response = StatusCode::OK.into_response();
    if let Ok(region) = HeaderValue::from_str(&ctx.service.config.s3.region) {
        response.headers_mut().insert("x-amz-bucket-region", region);
    }
    Ok(response)
}

/// `GET /{bucket}?location`.
pub(crate) async fn bucket_location(ctx: &Ctx<'_>, bucket: &str) -> Result<Response, StorageError> {
    if !visible_bucket(ctx, bucket).await? {
        return Err(StorageError::bucket_not_found());
    }
    let region = &ctx.service.config.s3.region;
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<LocationConstraint xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">{}</LocationConstraint>",
        xml::escape(region)
    );
    Ok(xml_response(body))
}

/// `GET /{bucket}?versioning`: never enabled.
pub(crate) async fn bucket_versioning(
    ctx: &Ctx<'_>,
    bucket: &str,
) -> Result<Response, StorageError> {
    if !visible_bucket(ctx, bucket).await? {
        return Err(StorageError::bucket_not_found());
    }
    let w = xml::Writer::new("VersioningConfiguration");
    Ok(xml_response(w.finish("VersioningConfiguration")))
}

/// `PUT /{bucket}`: a private bucket (public with `x-amz-acl:
/// public-read`), as the caller.
pub(crate) async fn create_bucket(
    ctx: &Ctx<'_>,
    bucket: &str,
    body: Body,
) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    // The `CreateBucketConfiguration` (a location) is read and ignored.
    read_xml(body).await?;
    let public = ctx
        .header("x-amz-acl")
        .is_some_and(|acl| acl == "public-read" || acl == "public-read-write");
    let owner = caller.sub().map(str::to_owned);
    ctx.run(
        &caller,
        "bucket.create",
        "insert into storage.buckets (id, name, owner, owner_id, public)
         values ($1, $1, (select case when $2::text ~ '^[0-9a-fA-F-]{36}$' then $2::uuid end), $2, $3)",
        &[&bucket, &owner, &public],
        true,
    )
    .await
    .map_err(|err| {
        if err.code == "KeyAlreadyExists" {
            s3_error(
                409,
                "BucketAlreadyExists",
                "The requested bucket name is not available.",
            )
        } else {
            err
        }
    })?;
    let mut response = StatusCode::OK.into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/{bucket}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `DELETE /{bucket}`: only an empty bucket.
pub(crate) async fn delete_bucket(ctx: &Ctx<'_>, bucket: &str) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let rows = ctx
        .run(
            &caller,
            "bucket.delete",
            "delete from storage.buckets where id = $1 returning id",
            &[&bucket],
            true,
        )
        .await
        .map_err(|err| {
            if err.code == "NoSuchBucket" {
                s3_error(
                    409,
                    "BucketNotEmpty",
                    "The bucket you tried to delete is not empty",
                )
            } else {
                err
            }
        })?;
    if rows.is_empty() {
        return Err(StorageError::bucket_not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A key or prefix in a listing, URL-encoded when the client asked
/// (`encoding-type=url`, which boto3 always sends).
fn listed(text: &str, url: bool) -> String {
    if url {
        sigv4::uri_encode(text).replace("%2F", "/")
    } else {
        text.to_owned()
    }
}

/// `GET /{bucket}` (ListObjects) and `GET /{bucket}?list-type=2`
/// (ListObjectsV2), as the caller: keys after `prefix`, grouped into
/// common prefixes at `delimiter`, in byte order, paged.
pub(crate) async fn list_objects(ctx: &Ctx<'_>, bucket: &str) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let v2 = ctx.query("list-type") == Some("2");
    let prefix = ctx.query("prefix").unwrap_or("").to_owned();
    let delimiter = ctx.query("delimiter").unwrap_or("").to_owned();
    let url = match ctx.query("encoding-type") {
        None | Some("") => false,
        Some("url") => true,
        Some(_) => {
            return Err(s3_error(
                400,
                "InvalidArgument",
                "Invalid Encoding Method specified in Request",
            ));
        }
    };
    let max_keys: i64 = match ctx.query("max-keys") {
        None | Some("") => 1000,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                s3_error(
                    400,
                    "InvalidArgument",
                    "max-keys must be a non-negative integer",
                )
            })?
            .min(1000),
    };
    let token = if v2 {
        ctx.query("continuation-token")
    } else {
        None
    };
    let after_token = match token {
        None | Some("") => String::new(),
        Some(token) => base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                s3_error(
                    400,
                    "InvalidArgument",
                    "The continuation token provided is incorrect",
                )
            })?,
    };
    let start_after = if v2 {
        ctx.query("start-after").unwrap_or("").to_owned()
    } else {
        ctx.query("marker").unwrap_or("").to_owned()
    };
    let after = if after_token.as_str() > start_after.as_str() {
        after_token.clone()
    } else {
        start_after.clone()
    };
    if bucket::lookup(ctx, bucket).await?.is_none() {
        return Err(StorageError::bucket_not_found());
    }
    let pattern = names::like_prefix(&prefix);
    let probe = max_keys + 1;
    let rows = if max_keys == 0 {
        Vec::new()
    } else {
        ctx.run(
            &caller,
            "object.list",
            &format!(
                "with matched as (
                   select o.name, o.metadata, o.updated_at,
                          case when $4::text <> '' and strpos(substr(o.name, char_length($2) + 1), $4) > 0
                               then $2 || split_part(substr(o.name, char_length($2) + 1), $4, 1) || $4 end as common
                   from storage.objects o
                   where o.bucket_id = $1 and o.name like $3
                 ), entries as (
                   select distinct on (coalesce(common, name) collate \"C\")
                          coalesce(common, name) as entry, common is not null as is_prefix,
                          coalesce((metadata->>'size')::int8, 0) as size,
                          coalesce(metadata->>'eTag', '') as etag,
                          to_char(coalesce(updated_at, now()) at time zone 'UTC', {ISO}) as modified
                   from matched
                   where coalesce(common, name) collate \"C\" > $5
                   order by coalesce(common, name) collate \"C\", name collate \"C\"
                 )
                 select entry, is_prefix, size, etag, modified from entries
                 order by entry collate \"C\" limit $6"
            ),
            &[&bucket, &prefix, &pattern, &delimiter, &after, &probe],
            true,
        )
        .await?
    };
    let truncated = rows.len() as i64 > max_keys;
    let page = &rows[..rows.len().min(usize::try_from(max_keys).unwrap_or(0))];
    let mut w = xml::Writer::new("ListBucketResult");
    w.text("Name", bucket)
        .text("Prefix", &listed(&prefix, url))
        .text("MaxKeys", &max_keys.to_string())
        .text("IsTruncated", if truncated { "true" } else { "false" });
    if !delimiter.is_empty() {
        w.text("Delimiter", &listed(&delimiter, url));
    }
    if url {
        w.text("EncodingType", "url");
    }
    let last = page.last().map(|row| row.get::<_, String>(0));
    if v2 {
        w.text("KeyCount", &page.len().to_string());
        if let Some(token) = token.filter(|t| !t.is_empty()) {
            w.text("ContinuationToken", token);
        }
        if !start_after.is_empty() {
            w.text("StartAfter", &listed(&start_after, url));
        }
        if truncated && let Some(last) = &last {
            w.text(
                "NextContinuationToken",
                &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last),
            );
        }
    } else {
        w.text("Marker", &listed(&start_after, url));
        if truncated && let Some(last) = &last {
            w.text("NextMarker", &listed(last, url));
        }
    }
    for row in page.iter().filter(|row| !row.get::<_, bool>(1)) {
        w.open("Contents")
            .text("Key", &listed(row.get::<_, &str>(0), url))
            .text("LastModified", row.get::<_, &str>(4))
            .text("ETag", row.get::<_, &str>(3))
            .text("Size", &row.get::<_, i64>(2).to_string())
            .text("StorageClass", "STANDARD")
            .close("Contents");
    }
    for row in page.iter().filter(|row| row.get::<_, bool>(1)) {
        w.open("CommonPrefixes")
            .text("Prefix", &listed(row.get::<_, &str>(0), url))
            .close("CommonPrefixes");
    }
    Ok(xml_response(w.finish("ListBucketResult")))
}

/// The user metadata of an object as `x-amz-meta-*` headers.
fn meta_headers(response: &mut Response, metadata: Option<&Value>) {
    let Some(Value::Object(map)) = metadata else {
        return;
    };
    for (name, value) in map {
        let text = match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let name = format!("x-amz-meta-{}", name.to_ascii_lowercase());
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&text),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
}

/// `GET`/`HEAD /{bucket}/{key}`, with `Range` and conditional requests,
/// as the caller; a presigned URL's `response-*` parameters override the
/// answer's headers.
pub(crate) async fn get_object(
    ctx: &Ctx<'_>,
    bucket: &str,
    key: &str,
) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let stored = object::find(ctx, &caller, bucket, key).await?;
    let mut response = object::serve(ctx, &stored, None).await?;
    if response.status() == StatusCode::RANGE_NOT_SATISFIABLE {
        return Err(s3_error(
            416,
            "InvalidRange",
            "The requested range is not satisfiable",
        ));
    }
    meta_headers(&mut response, stored.info.get("metadata"));
    for (param, name) in [
        ("response-content-type", header::CONTENT_TYPE),
        ("response-content-disposition", header::CONTENT_DISPOSITION),
        ("response-cache-control", header::CACHE_CONTROL),
        ("response-content-language", header::CONTENT_LANGUAGE),
        ("response-content-encoding", header::CONTENT_ENCODING),
        ("response-expires", header::EXPIRES),
    ] {
        if let Some(value) = ctx.query(param)
            && let Ok(value) = HeaderValue::from_str(value)
        {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

/// `PUT /{bucket}/{key}`: stores (or replaces) the object as the caller.
/// Authorised before the body is read, as uploads to `/object` are.
pub(crate) async fn put_object(
    ctx: &Ctx<'_>,
    bucket_id: &str,
    key: &str,
    body: Body,
) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let owner = caller.sub().map(str::to_owned);
    let probe = NewObject {
        mimetype: String::new(),
        cache_control: String::new(),
        user_metadata: None,
        size: 0,
        version: String::new(),
    };
    let (bucket, dry_run) = tokio::join!(
        bucket::lookup(ctx, bucket_id),
        object::write_row(
            ctx,
            &caller,
            owner.as_deref(),
            bucket_id,
            key,
            &probe,
            Mode::Create,
            true,
            false
        ),
    );
    let bucket = match (bucket, dry_run) {
        (Ok(Some(bucket)), Ok(_)) => bucket,
        (Ok(None), _) => {
            object::refuse_body(body);
            return Err(StorageError::bucket_not_found());
        }
        (Err(err), _) | (Ok(Some(_)), Err(err)) => {
            object::refuse_body(body);
            return Err(err);
        }
    };
    // S3 has empty objects (files, folder markers); the Storage API's
    // upload refuses an empty body, so they are stored here.
    let mut stream = body.into_data_stream();
    let first = loop {
        match stream.next().await {
            Some(Ok(bytes)) if bytes.is_empty() => {}
            other => break other,
        }
    };
    let new = match first {
        None => empty_object(ctx, &bucket, key).await?,
        Some(first) => {
            let rejoined = futures_util::stream::once(async move { first }).chain(stream);
            object::receive(ctx, &bucket, key, Body::from_stream(rejoined)).await?
        }
    };
    let version = new.version.clone();
    match object::write_row(
        ctx,
        &caller,
        owner.as_deref(),
        bucket_id,
        key,
        &new,
        Mode::Create,
        true,
        true,
    )
    .await
    {
        Ok((_, old)) => {
            if let Some(old) = old.filter(|old| !old.is_empty() && *old != version) {
                ctx.service.backend.delete_versions(vec![old]).await;
            }
        }
        Err(err) => {
            let path = ctx.service.backend.object_path(&version);
            let _ = ctx.service.backend.delete(&path).await;
            return Err(err);
        }
    }
    let mut response = StatusCode::OK.into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{version}\"")) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

/// Stores an empty object's (no) bytes and says what its row holds.
async fn empty_object(
    ctx: &Ctx<'_>,
    bucket: &crate::bucket::BucketInfo,
    key: &str,
) -> Result<NewObject, StorageError> {
    let mimetype = object::check_mime(
        bucket,
        key,
        ctx.header("content-type")
            .filter(|t| !t.is_empty())
            .unwrap_or("application/octet-stream"),
    )?;
    let user_metadata = match ctx.header("x-metadata") {
        Some(text) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .ok_or_else(StorageError::internal)?,
        ),
        None => None,
    };
    let version = object::new_version();
    let path = ctx.service.backend.object_path(&version);
    let nothing = futures_util::stream::empty::<Result<bytes::Bytes, std::io::Error>>();
    ctx.service
        .backend
        .write(&path, nothing, 0)
        .await
        .map_err(|err| match err {
            WriteError::Busy => StorageError::busy(),
            err => {
                tracing::error!(error = %err, "could not store an empty object");
                StorageError::internal()
            }
        })?;
    Ok(NewObject {
        mimetype,
        cache_control: names::cache_control(ctx.header("cache-control")),
        user_metadata,
        size: 0,
        version,
    })
}

/// The bucket and key of `x-amz-copy-source` (`[/]bucket/key[?versionId=…]`,
/// URL-encoded).
fn copy_source(text: &str) -> Result<(String, String), StorageError> {
    let text = text.split_once('?').map_or(text, |(path, _)| path);
    let decoded = percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map_err(|_| s3_error(400, "InvalidArgument", "Invalid copy source"))?;
    let decoded = decoded.trim_start_matches('/');
    let (bucket, key) = decoded
        .split_once('/')
        .ok_or_else(|| s3_error(400, "InvalidArgument", "Invalid copy source"))?;
    if !names::valid_bucket_id(bucket) {
        return Err(s3_error(
            400,
            "InvalidBucketName",
            "The specified bucket is not valid.",
        ));
    }
    if !names::valid_key(key) {
        return Err(StorageError::invalid_key(key));
    }
    Ok((bucket.to_owned(), key.to_owned()))
}

/// `PUT /{bucket}/{key}` with `x-amz-copy-source`: the source as the
/// caller may read it, written as the caller; metadata copied, or
/// replaced with `x-amz-metadata-directive: REPLACE`.
pub(crate) async fn copy_object(
    ctx: &Ctx<'_>,
    bucket_id: &str,
    key: &str,
    source: &str,
) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let (source_bucket, source_key) = copy_source(source)?;
    let stored = object::find(ctx, &caller, &source_bucket, &source_key).await?;
    let replace = match ctx.header("x-amz-metadata-directive") {
        None | Some("COPY") => false,
        Some("REPLACE") => true,
        Some(_) => {
            return Err(s3_error(
                400,
                "InvalidArgument",
                "Unknown metadata directive.",
            ));
        }
    };
    let (mimetype, cache_control, user_metadata) = if replace {
        let metadata = match ctx.header("x-metadata") {
            Some(text) => Some(
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .ok_or_else(StorageError::internal)?,
            ),
            None => None,
        };
        (
            ctx.header("content-type")
                .unwrap_or(&stored.mimetype)
                .to_owned(),
            names::cache_control(ctx.header("cache-control")),
            metadata,
        )
    } else {
        (
            stored.mimetype.clone(),
            stored.cache_control.clone(),
            stored
                .info
                .get("metadata")
                .filter(|m| m.as_object().is_some_and(|m| !m.is_empty()))
                .cloned(),
        )
    };
    let Some(destination) = bucket::lookup(ctx, bucket_id).await? else {
        return Err(StorageError::bucket_not_found());
    };
    if stored.size > object::limit_for(ctx, &destination, key) {
        return Err(StorageError::too_large());
    }
    let mimetype = object::check_mime(&destination, key, &mimetype)?;
    let version = object::new_version();
    let from = ctx.service.backend.object_path(&stored.version);
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
    let new = NewObject {
        mimetype,
        cache_control,
        user_metadata,
        size: i64::try_from(stored.size).unwrap_or(i64::MAX),
        version: version.clone(),
    };
    let owner = caller.sub().map(str::to_owned);
    match object::write_row(
        ctx,
        &caller,
        owner.as_deref(),
        bucket_id,
        key,
        &new,
        Mode::Create,
        true,
        true,
    )
    .await
    {
        Ok((_, old)) => {
            if let Some(old) = old.filter(|v| !v.is_empty() && *v != version) {
                ctx.service.backend.delete_versions(vec![old]).await;
            }
        }
        Err(err) => {
            let _ = ctx.service.backend.delete(&to).await;
            return Err(err);
        }
    }
    let now = httpdate_iso();
    let mut w = xml::Writer::new("CopyObjectResult");
    w.text("LastModified", &now)
        .text("ETag", &format!("\"{version}\""));
    Ok(xml_response(w.finish("CopyObjectResult")))
}

/// The current time as S3 writes it (`2024-01-02T03:04:05.000Z`).
pub(crate) fn httpdate_iso() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let long = sigv4::format_long_date(i64::try_from(now).unwrap_or(0));
    format!(
        "{}-{}-{}T{}:{}:{}.000Z",
        &long[0..4],
        &long[4..6],
        &long[6..8],
        &long[9..11],
        &long[11..13],
        &long[13..15]
    )
}

/// `DELETE /{bucket}/{key}`: 204 whether or not there was such an object
/// (as S3); an object the caller may not delete stays.
pub(crate) async fn delete_object(
    ctx: &Ctx<'_>,
    bucket: &str,
    key: &str,
) -> Result<Response, StorageError> {
    object::delete_names(ctx, bucket, &[key.to_owned()]).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /{bucket}?delete`: up to 1,000 keys in one statement as the
/// caller. Keys it deleted are `Deleted`; the others (missing, or refused
/// by RLS: PostgreSQL does not tell which) are `AccessDenied` errors.
pub(crate) async fn delete_objects(
    ctx: &Ctx<'_>,
    bucket: &str,
    body: Body,
) -> Result<Response, StorageError> {
    let Some(root) = read_xml(body).await? else {
        return Err(s3_error(
            400,
            "MalformedXML",
            "The XML you provided was empty.",
        ));
    };
    if root.name != "Delete" {
        return Err(s3_error(
            400,
            "MalformedXML",
            "The root element must be Delete.",
        ));
    }
    let quiet = root.child_text("Quiet") == Some("true");
    let mut keys = Vec::new();
    for entry in root.all("Object") {
        let Some(key) = entry.child("Key").map(|k| k.text.clone()) else {
            return Err(s3_error(400, "MalformedXML", "Every Object needs a Key."));
        };
        keys.push(key);
    }
    if keys.is_empty() || keys.len() > super::MAX_DELETE_KEYS {
        return Err(s3_error(
            400,
            "MalformedXML",
            "A Delete holds 1 to 1000 keys.",
        ));
    }
    let deleted = object::delete_names(ctx, bucket, &keys).await?;
    let gone: std::collections::HashSet<&str> = deleted
        .iter()
        .filter_map(|d| d.get("name").and_then(Value::as_str))
        .collect();
    let mut w = xml::Writer::new("DeleteResult");
    for key in &keys {
        if gone.contains(key.as_str()) {
            if !quiet {
                w.open("Deleted").text("Key", key).close("Deleted");
            }
        } else {
            w.open("Error")
                .text("Key", key)
                .text("Code", "AccessDenied")
                .text("Message", "Access Denied")
                .close("Error");
        }
    }
    Ok(xml_response(w.finish("DeleteResult")))
}
