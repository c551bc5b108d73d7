//! S3 multipart uploads: a row in `sovra.s3_multipart_uploads`, a row per
//! part in `sovra.s3_multipart_parts` and the part's bytes under the
//! tenant's `uploads/` in the backend. Started only when the caller may
//! write the object (a rolled-back dry run of the row write, as for every
//! upload), continued only by whoever started it, completed by writing the
//! object's row as that caller under RLS; aborting or expiring deletes the
//! parts.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ISO, MAX_PARTS, MIN_PART, read_xml, s3_error, xml, xml_response};
use crate::backend::WriteError;
use crate::error::StorageError;
use crate::object::{self, Mode, NewObject};
use crate::{Ctx, Principal, StorageService, bucket, names};

fn no_such_upload() -> StorageError {
    s3_error(
        404,
        "NoSuchUpload",
        "The specified multipart upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
    )
}

/// An upload in progress.
struct Upload {
    id: uuid::Uuid,
    owner_id: Option<String>,
    creator: String,
    content_type: String,
    cache_control: String,
    user_metadata: Option<serde_json::Value>,
}

/// The upload `uploadId` names for `bucket`/`key`, if the caller started
/// it (the service role may continue any).
async fn find_upload(
    ctx: &Ctx<'_>,
    bucket: &str,
    key: &str,
) -> Result<(Upload, Principal), StorageError> {
    let caller = ctx.caller()?;
    let id = ctx
        .query("uploadId")
        .and_then(|id| uuid::Uuid::parse_str(id).ok())
        .ok_or_else(no_such_upload)?;
    let rows = ctx
        .run(
            &Principal::service(),
            "s3.multipart.get",
            "select owner_id, creator, content_type, cache_control, user_metadata
             from sovra.s3_multipart_uploads
             where id = $1 and bucket_id = $2 and name = $3 and expires_at > now()",
            &[&id, &bucket, &key],
            true,
        )
        .await?;
    let row = rows.first().ok_or_else(no_such_upload)?;
    let upload = Upload {
        id,
        owner_id: row.get(0),
        creator: row.get(1),
        content_type: row.get(2),
        cache_control: row.get(3),
        user_metadata: row.get(4),
    };
    if !caller.is_service() && !super::sigv4::same(&upload.creator, &caller.fingerprint()) {
        return Err(no_such_upload());
    }
    Ok((upload, caller))
}

/// `POST /{bucket}/{key}?uploads`.
pub(crate) async fn create(
    ctx: &Ctx<'_>,
    bucket_id: &str,
    key: &str,
) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let Some(bucket) = bucket::lookup(ctx, bucket_id).await? else {
        return Err(StorageError::bucket_not_found());
    };
    let mimetype = object::check_mime(
        &bucket,
        key,
        ctx.header("content-type")
            .filter(|t| !t.is_empty())
            .unwrap_or("application/octet-stream"),
    )?;
    let user_metadata = match ctx.header("x-metadata") {
        Some(text) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        }
        None => None,
    };
    let owner = caller.sub().map(str::to_owned);
    let probe = NewObject {
        mimetype: String::new(),
        cache_control: String::new(),
        user_metadata: None,
        size: 0,
        version: String::new(),
    };
    object::write_row(
        ctx,
        &caller,
        owner.as_deref(),
        bucket_id,
        key,
        &probe,
        Mode::Create,
        true,
        false,
    )
    .await?;
    let id = uuid::Uuid::new_v4();
    let expiry = ctx.service.config.upload_expiry.as_secs_f64();
    let cache = names::cache_control(ctx.header("cache-control"));
    ctx.run(
        &Principal::service(),
        "s3.multipart.create",
        "insert into sovra.s3_multipart_uploads
           (id, bucket_id, name, owner_id, creator, content_type, cache_control, user_metadata, expires_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9::float8))",
        &[
            &id,
            &bucket_id,
            &key,
            &owner,
            &caller.fingerprint(),
            &mimetype,
            &cache,
            &user_metadata,
            &expiry,
        ],
        true,
    )
    .await?;
    let mut w = xml::Writer::new("InitiateMultipartUploadResult");
    w.text("Bucket", bucket_id)
        .text("Key", key)
        .text("UploadId", &id.to_string());
    Ok(xml_response(w.finish("InitiateMultipartUploadResult")))
}

/// `PUT /{bucket}/{key}?partNumber=N&uploadId=…`: stores one part (a part
/// sent again replaces the earlier one).
pub(crate) async fn upload_part(
    ctx: &Ctx<'_>,
    bucket_id: &str,
    key: &str,
    body: Body,
) -> Result<Response, StorageError> {
    let number = ctx
        .query("partNumber")
        .and_then(|n| n.parse::<i32>().ok())
        .filter(|n| (1..=i32::try_from(MAX_PARTS).unwrap_or(i32::MAX)).contains(n))
        .ok_or_else(|| {
            s3_error(
                400,
                "InvalidArgument",
                "Part number must be an integer between 1 and 10000, inclusive",
            )
        });
    let number = match number {
        Ok(number) => number,
        Err(err) => {
            object::refuse_body(body);
            return Err(err);
        }
    };
    let (upload, bucket) = match async {
        let (upload, _) = find_upload(ctx, bucket_id, key).await?;
        let bucket = bucket::lookup(ctx, bucket_id)
            .await?
            .ok_or_else(StorageError::bucket_not_found)?;
        Ok::<_, StorageError>((upload, bucket))
    }
    .await
    {
        Ok(found) => found,
        Err(err) => {
            object::refuse_body(body);
            return Err(err);
        }
    };
    let limit = object::limit_for(ctx, &bucket, key);
    let path = ctx
        .service
        .backend
        .s3_part_path(&upload.id.to_string(), number);
    let size = match ctx
        .service
        .backend
        .write(&path, body.into_data_stream(), limit)
        .await
    {
        Ok(size) => size,
        Err(WriteError::TooLarge) => return Err(StorageError::too_large()),
        Err(WriteError::Busy) => return Err(StorageError::busy()),
        Err(WriteError::Body(message)) => {
            tracing::debug!(%message, "an S3 part broke off");
            return Err(s3_error(
                400,
                "IncompleteBody",
                "You did not provide the number of bytes specified by the Content-Length HTTP header.",
            ));
        }
        Err(WriteError::Store(err)) => {
            tracing::error!(error = %err, "could not store an S3 part");
            return Err(StorageError::internal());
        }
    };
    let etag = format!("\"{}\"", object::new_version());
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    ctx.run(
        &Principal::service(),
        "s3.multipart.part",
        "insert into sovra.s3_multipart_parts (upload_id, part_number, etag, size)
         select $1, $2, $3, $4 where exists (select 1 from sovra.s3_multipart_uploads where id = $1)
         on conflict (upload_id, part_number) do update set etag = excluded.etag, size = excluded.size, created_at = now()",
        &[&upload.id, &number, &etag, &size],
        true,
    )
    .await?;
    let mut response = StatusCode::OK.into_response();
    if let Ok(value) = HeaderValue::from_str(&etag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok(response)
}

/// The stored parts of an upload: number, ETag, size, time.
async fn parts_of(
    ctx: &Ctx<'_>,
    upload: &uuid::Uuid,
) -> Result<Vec<(i32, String, i64, String)>, StorageError> {
    let rows = ctx
        .run(
            &Principal::service(),
            "s3.multipart.parts",
            &format!(
                "select part_number, etag, size, to_char(created_at at time zone 'UTC', {ISO})
                 from sovra.s3_multipart_parts where upload_id = $1 order by part_number"
            ),
            &[upload],
            true,
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

/// Deletes an upload's row (its parts' rows go with it) and its bytes.
async fn discard(ctx: &Ctx<'_>, upload: &uuid::Uuid, numbers: &[i32]) -> Result<(), StorageError> {
    ctx.run(
        &Principal::service(),
        "s3.multipart.delete",
        "delete from sovra.s3_multipart_uploads where id = $1",
        &[upload],
        true,
    )
    .await?;
    delete_part_files(&ctx.service.backend, upload, numbers).await;
    Ok(())
}

async fn delete_part_files(backend: &crate::Backend, upload: &uuid::Uuid, numbers: &[i32]) {
    for number in numbers {
        let path = backend.s3_part_path(&upload.to_string(), *number);
        if let Err(err) = backend.delete(&path).await {
            tracing::warn!(error = %err, %path, "could not delete an S3 part");
        }
    }
}

fn trim_etag(etag: &str) -> &str {
    etag.trim().trim_matches('"')
}

/// `POST /{bucket}/{key}?uploadId=…`: joins the listed parts into a new
/// version and writes the object's row as the caller.
pub(crate) async fn complete(
    ctx: &Ctx<'_>,
    bucket_id: &str,
    key: &str,
    body: Body,
) -> Result<Response, StorageError> {
    let (upload, caller) = find_upload(ctx, bucket_id, key).await?;
    let Some(root) = read_xml(body).await? else {
        return Err(s3_error(
            400,
            "MalformedXML",
            "The XML you provided was empty.",
        ));
    };
    if root.name != "CompleteMultipartUpload" {
        return Err(s3_error(
            400,
            "MalformedXML",
            "The root element must be CompleteMultipartUpload.",
        ));
    }
    let mut listed: Vec<(i32, String)> = Vec::new();
    for part in root.all("Part") {
        let number = part
            .child_text("PartNumber")
            .and_then(|n| n.parse::<i32>().ok())
            .ok_or_else(|| s3_error(400, "MalformedXML", "Every Part needs a PartNumber."))?;
        let etag = part.child_text("ETag").unwrap_or("").to_owned();
        if listed.last().is_some_and(|(last, _)| *last >= number) {
            return Err(s3_error(
                400,
                "InvalidPartOrder",
                "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
            ));
        }
        listed.push((number, etag));
    }
    if listed.is_empty() || listed.len() > MAX_PARTS {
        return Err(s3_error(
            400,
            "MalformedXML",
            "A CompleteMultipartUpload lists 1 to 10000 parts.",
        ));
    }
    let stored = parts_of(ctx, &upload.id).await?;
    let mut total: u64 = 0;
    let mut paths = Vec::with_capacity(listed.len());
    for (index, (number, etag)) in listed.iter().enumerate() {
        let Some((_, stored_etag, size, _)) = stored.iter().find(|(n, ..)| n == number) else {
            return Err(s3_error(
                400,
                "InvalidPart",
                "One or more of the specified parts could not be found.",
            ));
        };
        if !etag.is_empty() && trim_etag(etag) != trim_etag(stored_etag) {
            return Err(s3_error(
                400,
                "InvalidPart",
                "One or more of the specified parts could not be found.",
            ));
        }
        let size = u64::try_from(*size).unwrap_or(0);
        if index + 1 < listed.len() && size < MIN_PART {
            return Err(s3_error(
                400,
                "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed object size.",
            ));
        }
        total = total.saturating_add(size);
        paths.push(
            ctx.service
                .backend
                .s3_part_path(&upload.id.to_string(), *number),
        );
    }
    let Some(bucket) = bucket::lookup(ctx, bucket_id).await? else {
        return Err(StorageError::bucket_not_found());
    };
    if total > object::limit_for(ctx, &bucket, key) {
        return Err(StorageError::too_large());
    }
    let version = object::new_version();
    let target = ctx.service.backend.object_path(&version);
    let size = ctx
        .service
        .backend
        .join_paths(paths, &target)
        .await
        .map_err(|err| {
            tracing::error!(error = %err, "could not join S3 parts");
            StorageError::internal()
        })?;
    let new = NewObject {
        mimetype: upload.content_type.clone(),
        cache_control: upload.cache_control.clone(),
        user_metadata: upload.user_metadata.clone(),
        size: i64::try_from(size).unwrap_or(i64::MAX),
        version: version.clone(),
    };
    match object::write_row(
        ctx,
        &caller,
        upload.owner_id.as_deref(),
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
            let _ = ctx.service.backend.delete(&target).await;
            return Err(err);
        }
    }
    let numbers: Vec<i32> = stored.iter().map(|(n, ..)| *n).collect();
    discard(ctx, &upload.id, &numbers).await?;
    let mut w = xml::Writer::new("CompleteMultipartUploadResult");
    w.text("Location", &format!("/storage/v1/s3/{bucket_id}/{key}"))
        .text("Bucket", bucket_id)
        .text("Key", key)
        .text("ETag", &format!("\"{version}\""));
    Ok(xml_response(w.finish("CompleteMultipartUploadResult")))
}

/// `DELETE /{bucket}/{key}?uploadId=…`.
pub(crate) async fn abort(
    ctx: &Ctx<'_>,
    bucket_id: &str,
    key: &str,
) -> Result<Response, StorageError> {
    let (upload, _) = find_upload(ctx, bucket_id, key).await?;
    let numbers: Vec<i32> = parts_of(ctx, &upload.id)
        .await?
        .iter()
        .map(|(n, ..)| *n)
        .collect();
    discard(ctx, &upload.id, &numbers).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /{bucket}/{key}?uploadId=…`.
pub(crate) async fn list_parts(
    ctx: &Ctx<'_>,
    bucket_id: &str,
    key: &str,
) -> Result<Response, StorageError> {
    let (upload, _) = find_upload(ctx, bucket_id, key).await?;
    let marker: i32 = ctx
        .query("part-number-marker")
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let max: usize = ctx
        .query("max-parts")
        .and_then(|m| m.parse().ok())
        .unwrap_or(1000)
        .min(1000);
    let parts: Vec<_> = parts_of(ctx, &upload.id)
        .await?
        .into_iter()
        .filter(|(n, ..)| *n > marker)
        .collect();
    let truncated = parts.len() > max;
    let page = &parts[..parts.len().min(max)];
    let mut w = xml::Writer::new("ListPartsResult");
    w.text("Bucket", bucket_id)
        .text("Key", key)
        .text("UploadId", &upload.id.to_string())
        .text("PartNumberMarker", &marker.to_string())
        .text(
            "NextPartNumberMarker",
            &page.last().map_or(marker, |(n, ..)| *n).to_string(),
        )
        .text("MaxParts", &max.to_string())
        .text("IsTruncated", if truncated { "true" } else { "false" })
        .text("StorageClass", "STANDARD");
    for (number, etag, size, modified) in page {
        w.open("Part")
            .text("PartNumber", &number.to_string())
            .text("LastModified", modified)
            .text("ETag", etag)
            .text("Size", &size.to_string())
            .close("Part");
    }
    Ok(xml_response(w.finish("ListPartsResult")))
}

/// `GET /{bucket}?uploads`: the caller's uploads in progress (every
/// upload, for the service role).
pub(crate) async fn list_uploads(ctx: &Ctx<'_>, bucket_id: &str) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    if bucket::lookup(ctx, bucket_id).await?.is_none() {
        return Err(StorageError::bucket_not_found());
    }
    let prefix = ctx.query("prefix").unwrap_or("").to_owned();
    let max: i64 = ctx
        .query("max-uploads")
        .and_then(|m| m.parse().ok())
        .filter(|m: &i64| *m >= 0)
        .unwrap_or(1000)
        .min(1000);
    let pattern = names::like_prefix(&prefix);
    let everyone = caller.is_service();
    let rows = ctx
        .run(
            &Principal::service(),
            "s3.multipart.list",
            &format!(
                "select name, id::text, to_char(created_at at time zone 'UTC', {ISO})
                 from sovra.s3_multipart_uploads
                 where bucket_id = $1 and name like $2 and expires_at > now() and ($3 or creator = $4)
                 order by name collate \"C\", created_at limit $5"
            ),
            &[&bucket_id, &pattern, &everyone, &caller.fingerprint(), &(max + 1)],
            true,
        )
        .await?;
    let truncated = rows.len() as i64 > max;
    let page = &rows[..rows.len().min(usize::try_from(max).unwrap_or(0))];
    let mut w = xml::Writer::new("ListMultipartUploadsResult");
    w.text("Bucket", bucket_id)
        .text("KeyMarker", "")
        .text("UploadIdMarker", "")
        .text("Prefix", &prefix)
        .text("MaxUploads", &max.to_string())
        .text("IsTruncated", if truncated { "true" } else { "false" });
    for row in page {
        w.open("Upload")
            .text("Key", row.get::<_, &str>(0))
            .text("UploadId", row.get::<_, &str>(1))
            .text("Initiated", row.get::<_, &str>(2))
            .text("StorageClass", "STANDARD")
            .close("Upload");
    }
    Ok(xml_response(w.finish("ListMultipartUploadsResult")))
}

/// Deletes expired multipart uploads and their parts.
pub(crate) async fn sweep(service: &StorageService) -> Result<usize, String> {
    let mut client = service.pool.get().await.map_err(|err| err.to_string())?;
    let tx = client.transaction().await.map_err(|err| err.to_string())?;
    tx.execute("set local role service_role", &[])
        .await
        .map_err(|err| err.to_string())?;
    let rows = tx
        .query(
            "with gone as (delete from sovra.s3_multipart_uploads where expires_at < now() returning id)
             select g.id, coalesce(array_agg(p.part_number) filter (where p.part_number is not null), '{}')
             from gone g left join sovra.s3_multipart_parts p on p.upload_id = g.id group by g.id",
            &[],
        )
        .await
        .map_err(|err| err.to_string())?;
    tx.commit().await.map_err(|err| err.to_string())?;
    for row in &rows {
        let id: uuid::Uuid = row.get(0);
        let numbers: Vec<i32> = row.get(1);
        delete_part_files(&service.backend, &id, &numbers).await;
    }
    Ok(rows.len())
}
