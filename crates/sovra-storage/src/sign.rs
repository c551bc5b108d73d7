//! Signed URLs: download links that expire, and upload links that let
//! someone without an account put one object. Tokens are JWTs signed with
//! the project's key and scoped to one `bucket/key` and one use
//! (`scope`); downloads and uploads through them run as the service.

use axum::body::Body;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::error::StorageError;
use crate::object::{self, Mode};
use crate::{Ctx, Principal, bucket_key, not_allowed};

/// Lifetime of signed upload URLs (as Supabase: two hours).
const UPLOAD_URL_SECS: i64 = 2 * 60 * 60;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(crate) async fn route(
    ctx: &Ctx<'_>,
    rest: &[&str],
    body: Body,
) -> Result<Response, StorageError> {
    match (rest, ctx.method) {
        ([bucket], &Method::POST) => create_many(ctx, bucket, body).await,
        (_, &Method::POST) => {
            let (bucket, key) = bucket_key(rest)?;
            create_one(ctx, &bucket, &key, body).await
        }
        (_, &Method::GET | &Method::HEAD) => {
            let (bucket, key) = bucket_key(rest)?;
            download(ctx, &bucket, &key).await
        }
        _ => Err(not_allowed()),
    }
}

fn expires_in(body: &Value) -> Result<i64, StorageError> {
    body.get("expiresIn")
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .filter(|n| *n > 0)
        .ok_or_else(|| StorageError::invalid("expiresIn must be a positive integer"))
}

fn sign(
    ctx: &Ctx<'_>,
    mut claims: Map<String, Value>,
    lifetime: i64,
) -> Result<String, StorageError> {
    let iat = now();
    claims.insert("iat".to_owned(), json!(iat));
    claims.insert("exp".to_owned(), json!(iat.saturating_add(lifetime)));
    ctx.keys.sign(&claims).map_err(|err| {
        tracing::error!(error = %err, "could not sign a URL");
        StorageError::internal()
    })
}

fn download_claims(url: &str) -> Map<String, Value> {
    let mut claims = Map::new();
    claims.insert("url".to_owned(), Value::String(url.to_owned()));
    claims.insert("scope".to_owned(), Value::String("download".to_owned()));
    claims
}

/// `POST /object/sign/{bucket}/{key}`: the caller must be able to read it.
async fn create_one(
    ctx: &Ctx<'_>,
    bucket: &str,
    key: &str,
    body: Body,
) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let body = Ctx::json(body).await?;
    let lifetime = expires_in(&body)?;
    // With `transform`, the token carries it and the URL renders it
    // (`/render/image/sign/…`), as Storage signs them.
    let transform = crate::render::signed_claims(ctx, &body)?;
    object::find(ctx, &caller, bucket, key).await?;
    let url = format!("{bucket}/{key}");
    let mut claims = download_claims(&url);
    let route = match transform {
        Some((transformations, format)) => {
            claims.insert("transformations".to_owned(), Value::String(transformations));
            claims.insert("format".to_owned(), Value::String(format));
            "render/image"
        }
        None => "object",
    };
    let token = sign(ctx, claims, lifetime)?;
    Ok(
        axum::Json(json!({"signedURL": format!("/{route}/sign/{url}?token={token}")}))
            .into_response(),
    )
}

/// `POST /object/sign/{bucket}` with `{"expiresIn", "paths"}`.
async fn create_many(ctx: &Ctx<'_>, bucket: &str, body: Body) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    if !crate::names::valid_bucket_id(bucket) {
        return Err(StorageError::invalid_bucket());
    }
    let body = Ctx::json(body).await?;
    let lifetime = expires_in(&body)?;
    let Some(paths) = body.get("paths").and_then(Value::as_array) else {
        return Err(StorageError::invalid(
            "paths must be an array of object names",
        ));
    };
    if paths.is_empty() || paths.len() > 1000 {
        return Err(StorageError::invalid(
            "paths must hold 1 to 1000 object names",
        ));
    }
    let names: Vec<String> = paths
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let rows = ctx
        .run(
            &caller,
            "object.sign",
            "select name from storage.objects where bucket_id = $1 and name = any($2)",
            &[&bucket, &names],
            true,
        )
        .await?;
    let visible: std::collections::HashSet<String> = rows.iter().map(|r| r.get(0)).collect();
    let mut out = Vec::with_capacity(paths.len());
    for path in paths {
        let name = path.as_str().unwrap_or("");
        if visible.contains(name) {
            let url = format!("{bucket}/{name}");
            let token = sign(ctx, download_claims(&url), lifetime)?;
            out.push(json!({"error": null, "path": name, "signedURL": format!("/object/sign/{url}?token={token}")}));
        } else {
            out.push(json!({
                "error": "Either the object does not exist or you do not have access to it",
                "path": path,
                "signedURL": null,
            }));
        }
    }
    Ok(axum::Json(Value::Array(out)).into_response())
}

/// Verifies a URL token for `bucket/key` and `scope`; no leeway on expiry.
pub(crate) fn verify(
    ctx: &Ctx<'_>,
    token: Option<&str>,
    url: &str,
    scope: &str,
) -> Result<(Map<String, Value>, i64), StorageError> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(StorageError::invalid_jwt("Missing token"));
    };
    let now = now();
    let verified = ctx.keys.verify(token, now).map_err(|err| match err {
        sovra_jwt::JwtError::Expired => StorageError::invalid_jwt("jwt expired"),
        sovra_jwt::JwtError::BadSignature => StorageError::invalid_jwt("invalid signature"),
        _ => StorageError::invalid_jwt("jwt malformed"),
    })?;
    let claims = verified.claims;
    let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if exp <= now {
        return Err(StorageError::invalid_jwt("jwt expired"));
    }
    let claim_url = claims.get("url").and_then(Value::as_str);
    let claim_scope = claims
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or("download");
    if claim_url != Some(url) || claim_scope != scope {
        return Err(StorageError::invalid_signature());
    }
    Ok((claims, exp))
}

/// `GET /object/sign/{bucket}/{key}?token=…`.
async fn download(ctx: &Ctx<'_>, bucket: &str, key: &str) -> Result<Response, StorageError> {
    let url = format!("{bucket}/{key}");
    let (_, exp) = verify(ctx, ctx.query("token"), &url, "download")?;
    let object = object::find(ctx, &Principal::service(), bucket, key).await?;
    object::serve(ctx, &object, Some(exp)).await
}

/// `POST /object/upload/sign/{bucket}/{key}`: the caller must be allowed
/// to create (or, with `x-upsert`, replace) the object; checked now by a
/// dry run of the insert.
pub(crate) async fn create_upload_url(
    ctx: &Ctx<'_>,
    bucket: &str,
    key: &str,
) -> Result<Response, StorageError> {
    let caller = ctx.caller()?;
    let upsert = ctx
        .header("x-upsert")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if crate::bucket::lookup(ctx, bucket).await?.is_none() {
        return Err(StorageError::bucket_not_found());
    }
    let probe = object::NewObject {
        mimetype: String::new(),
        cache_control: String::new(),
        user_metadata: None,
        size: 0,
        version: String::new(),
    };
    let owner = caller.sub().map(str::to_owned);
    object::write_row(
        ctx,
        &caller,
        owner.as_deref(),
        bucket,
        key,
        &probe,
        Mode::Create,
        upsert,
        false,
    )
    .await?;
    let url = format!("{bucket}/{key}");
    let mut claims = Map::new();
    claims.insert("owner".to_owned(), owner.map_or(Value::Null, Value::String));
    claims.insert("url".to_owned(), Value::String(url.clone()));
    claims.insert("upsert".to_owned(), Value::Bool(upsert));
    claims.insert("scope".to_owned(), Value::String("upload".to_owned()));
    let token = sign(ctx, claims, UPLOAD_URL_SECS)?;
    Ok(axum::Json(
        json!({"url": format!("/object/upload/sign/{url}?token={token}"), "token": token}),
    )
    .into_response())
}

/// The owner and upsert flag of a valid upload token for `bucket/key`.
pub(crate) fn verify_upload(
    ctx: &Ctx<'_>,
    token: Option<&str>,
    url: &str,
) -> Result<(Option<String>, bool), StorageError> {
    let (claims, _) = verify(ctx, token, url, "upload")?;
    let owner = claims
        .get("owner")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let upsert = claims
        .get("upsert")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok((owner, upsert))
}

/// `PUT /object/upload/sign/{bucket}/{key}?token=…`: stores the object as
/// the service, owned by whoever made the link; the token decides upsert.
pub(crate) async fn upload_with_token(
    ctx: &Ctx<'_>,
    bucket: &str,
    key: &str,
    body: Body,
) -> Result<Response, StorageError> {
    let url = format!("{bucket}/{key}");
    let (owner, upsert) = verify_upload(ctx, ctx.query("token"), &url)?;
    let id = object::store(
        ctx,
        &Principal::service(),
        owner.as_deref(),
        bucket,
        key,
        body,
        Mode::Create,
        upsert,
    )
    .await?;
    Ok(axum::Json(json!({"Id": id, "Key": url})).into_response())
}
