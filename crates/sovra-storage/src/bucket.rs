//! `/bucket`: list, get, create, update, empty, delete, as the caller.

use axum::body::Body;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::error::StorageError;
use crate::names;
use crate::{Ctx, Principal, not_allowed};

/// A bucket's settings that uploads check.
#[derive(Clone, Debug)]
pub(crate) struct BucketInfo {
    pub file_size_limit: Option<i64>,
    pub allowed_mime_types: Option<Vec<String>>,
}

const BUCKET_JSON: &str = "jsonb_build_object('id', b.id, 'name', b.name, 'owner', coalesce(b.owner::text, ''), \
     'owner_id', b.owner_id, 'public', coalesce(b.public, false), 'type', b.type, \
     'file_size_limit', b.file_size_limit, 'allowed_mime_types', b.allowed_mime_types, \
     'created_at', to_char(b.created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), \
     'updated_at', to_char(b.updated_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))";

pub(crate) async fn route(
    ctx: &Ctx<'_>,
    rest: &[&str],
    body: Body,
) -> Result<Response, StorageError> {
    match (rest, ctx.method) {
        ([], &Method::GET) => list(ctx).await,
        ([], &Method::POST) => create(ctx, body).await,
        ([id], &Method::GET) => get(ctx, id).await,
        ([id], &Method::PUT) => update(ctx, id, body).await,
        ([id], &Method::DELETE) => delete(ctx, id).await,
        ([id, "empty"], &Method::POST) => empty(ctx, id).await,
        _ => Err(not_allowed()),
    }
}

/// The bucket as the storage service itself sees it (Supabase reads it as
/// a superuser before an upload): `None` when it does not exist.
pub(crate) async fn lookup(ctx: &Ctx<'_>, id: &str) -> Result<Option<BucketInfo>, StorageError> {
    let rows = ctx
        .run(
            &Principal::service(),
            "bucket.lookup",
            "select file_size_limit, allowed_mime_types from storage.buckets where id = $1",
            &[&id],
            true,
        )
        .await?;
    Ok(rows.first().map(|row| BucketInfo {
        file_size_limit: row.get(0),
        allowed_mime_types: row.get(1),
    }))
}

async fn list(ctx: &Ctx<'_>) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let limit: i64 = parse_number(ctx.query("limit"), 1000)?;
    let offset: i64 = parse_number(ctx.query("offset"), 0)?;
    let search = ctx.query("search").unwrap_or("").to_owned();
    let column = match ctx.query("sortColumn").unwrap_or("name") {
        "id" => "b.id",
        "name" => "b.name",
        "created_at" => "b.created_at",
        "updated_at" => "b.updated_at",
        _ => {
            return Err(StorageError::invalid(
                "sortColumn must be id, name, created_at or updated_at",
            ));
        }
    };
    let order = match ctx.query("sortOrder").unwrap_or("asc") {
        "asc" => "asc",
        "desc" => "desc",
        _ => return Err(StorageError::invalid("sortOrder must be asc or desc")),
    };
    // Column and direction come from the constants above; values are bound.
    // `search` matches anywhere in the name, as Supabase's `ilike %search%`.
    let sql = format!(
        "select coalesce(jsonb_agg({BUCKET_JSON} order by {column} {order}), '[]'::jsonb) from (
           select * from storage.buckets b
           where $1 = '' or strpos(lower(b.name), lower($1)) > 0
           order by {column} {order} limit $2 offset $3) b"
    );
    let rows = ctx
        .run(
            &caller,
            "bucket.list",
            &sql,
            &[&search, &limit, &offset],
            true,
        )
        .await?;
    let body: Value = rows.first().map_or(json!([]), |row| row.get(0));
    Ok(axum::Json(body).into_response())
}

fn parse_number(text: Option<&str>, default: i64) -> Result<i64, StorageError> {
    match text {
        None | Some("") => Ok(default),
        Some(text) => {
            text.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                StorageError::invalid("limit and offset must be non-negative integers")
            })
        }
    }
}

async fn get(ctx: &Ctx<'_>, id: &str) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let sql = format!("select {BUCKET_JSON} from storage.buckets b where b.id = $1");
    let rows = ctx.run(&caller, "bucket.get", &sql, &[&id], true).await?;
    match rows.first() {
        Some(row) => Ok(axum::Json(row.get::<_, Value>(0)).into_response()),
        None => Err(StorageError::bucket_not_found()),
    }
}

/// `file_size_limit` from a body: a number, a size text, or null.
fn size_limit(value: Option<&Value>) -> Result<Option<Option<i64>>, StorageError> {
    match value {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|n| *n >= 0)
            .map(|n| Some(Some(n)))
            .ok_or_else(StorageError::bad_size),
        Some(Value::String(text)) => names::parse_size(text)
            .and_then(|n| i64::try_from(n).ok())
            .map(|n| Some(Some(n)))
            .ok_or_else(StorageError::bad_size),
        Some(_) => Err(StorageError::bad_size()),
    }
}

fn mime_list(value: Option<&Value>) -> Result<Option<Option<Vec<String>>>, StorageError> {
    match value {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(Value::Array(items)) => {
            let mut list = Vec::with_capacity(items.len());
            for item in items {
                let Some(text) = item.as_str() else {
                    return Err(StorageError::invalid("allowed_mime_types must be strings"));
                };
                let valid = text == "*/*"
                    || text.strip_suffix("/*").map_or_else(
                        || names::valid_mime(text),
                        |kind| names::valid_mime(&format!("{kind}/x")),
                    );
                if !valid {
                    return Err(StorageError::invalid(format!("Invalid mime type: {text}")));
                }
                list.push(text.to_owned());
            }
            Ok(Some(Some(list)))
        }
        Some(_) => Err(StorageError::invalid("allowed_mime_types must be an array")),
    }
}

async fn create(ctx: &Ctx<'_>, body: Body) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let body = Ctx::json(body).await?;
    let id = body
        .get("id")
        .or_else(|| body.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if !names::valid_bucket_id(&id) {
        return Err(StorageError::invalid_bucket());
    }
    let name = body
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or(&id)
        .to_owned();
    if !names::valid_bucket_id(&name) {
        return Err(StorageError::invalid_bucket());
    }
    let public = match body.get("public") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(StorageError::invalid("public must be a boolean")),
    };
    let limit = size_limit(body.get("file_size_limit"))?.flatten();
    let mimes = mime_list(body.get("allowed_mime_types"))?.flatten();
    let kind = match body.get("type").and_then(Value::as_str) {
        None | Some("STANDARD") => "STANDARD",
        Some(_) => return Err(StorageError::invalid("Only STANDARD buckets are supported")),
    };
    let owner = caller.sub().map(str::to_owned);
    ctx.run(
        &caller,
        "bucket.create",
        "insert into storage.buckets (id, name, owner, owner_id, public, file_size_limit, allowed_mime_types, type)
         values ($1, $2, (select case when $3::text ~ '^[0-9a-fA-F-]{36}$' then $3::uuid end), $3, $4, $5, $6, $7)",
        &[&id, &name, &owner, &public, &limit, &mimes, &kind],
        true,
    )
    .await
    .map_err(|err| if err.code == "KeyAlreadyExists" { StorageError::bucket_exists() } else { err })?;
    Ok(axum::Json(json!({"name": id})).into_response())
}

async fn update(ctx: &Ctx<'_>, id: &str, body: Body) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let body = Ctx::json(body).await?;
    let public = match body.get("public") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => return Err(StorageError::invalid("public must be a boolean")),
    };
    let limit = size_limit(body.get("file_size_limit"))?;
    let mimes = mime_list(body.get("allowed_mime_types"))?;
    let rows = ctx
        .run(
            &caller,
            "bucket.update",
            "update storage.buckets set
               public = coalesce($2, public),
               file_size_limit = case when $3 then $4 else file_size_limit end,
               allowed_mime_types = case when $5 then $6 else allowed_mime_types end,
               updated_at = now()
             where id = $1 returning id",
            &[
                &id,
                &public,
                &limit.is_some(),
                &limit.flatten(),
                &mimes.is_some(),
                &mimes.flatten(),
            ],
            true,
        )
        .await?;
    if rows.is_empty() {
        return Err(StorageError::bucket_not_found());
    }
    Ok(axum::Json(json!({"message": "Successfully updated"})).into_response())
}

async fn empty(ctx: &Ctx<'_>, id: &str) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let rows = ctx
        .run(
            &caller,
            "bucket.empty",
            "with b as (select id from storage.buckets where id = $1),
                  gone as (delete from storage.objects o using b
                           where o.bucket_id = b.id returning o.version)
             select (select count(*) from b), coalesce((select array_agg(version) from gone where version is not null), '{}')",
            &[&id],
            true,
        )
        .await?;
    let Some(row) = rows.first() else {
        return Err(StorageError::internal());
    };
    if row.get::<_, i64>(0) == 0 {
        return Err(StorageError::bucket_not_found());
    }
    let versions: Vec<String> = row.get(1);
    ctx.service.backend.delete_versions(versions).await;
    Ok(axum::Json(json!({"message": "Successfully emptied"})).into_response())
}

async fn delete(ctx: &Ctx<'_>, id: &str) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let rows = ctx
        .run(
            &caller,
            "bucket.delete",
            "delete from storage.buckets where id = $1 returning id",
            &[&id],
            true,
        )
        .await
        .map_err(|err| {
            if err.code == "NoSuchBucket" {
                // A foreign key violation: objects still point at it.
                StorageError::bucket_not_empty()
            } else {
                err
            }
        })?;
    if rows.is_empty() {
        return Err(StorageError::bucket_not_found());
    }
    Ok(axum::Json(json!({"message": "Successfully deleted"})).into_response())
}
