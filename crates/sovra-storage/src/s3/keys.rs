//! S3 access keys of a project: `GET`, `POST` and `DELETE
//! /storage/v1/s3-credentials[/{access key id}]`, for the service role.
//!
//! A key is a row of `sovra.s3_access_keys` holding its id and a
//! description, nothing secret: the secret is an HMAC of the id under the
//! project's key root (its service key), computed when the key is made
//! (and shown that once) and again when a request signed with it arrives.
//! Deleting the row revokes the key. Rows live in the tenant's own
//! database, so a key of one tenant is unknown to every other.

use axum::body::Body;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::error::StorageError;
use crate::{Ctx, Principal, not_allowed};

/// The secret of access key `id` under `root`: 40 characters, as AWS's.
pub fn derive_secret(root: &str, id: &str) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(root.as_bytes())
        .unwrap_or_else(|_| unreachable!("any key length"));
    mac.update(b"sovra-s3-access-key\0");
    mac.update(id.as_bytes());
    let bytes = mac.finalize().into_bytes();
    use base64::Engine as _;
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    text.chars().take(40).collect()
}

/// Whether access key `id` exists (looked up as the service).
pub(crate) async fn exists(ctx: &Ctx<'_>, id: &str) -> Result<bool, StorageError> {
    if id.is_empty() || id.len() > 128 {
        return Ok(false);
    }
    let rows = ctx
        .run(
            &Principal::service(),
            "s3.key",
            "select 1 from sovra.s3_access_keys where access_key_id = $1",
            &[&id],
            true,
        )
        .await?;
    Ok(!rows.is_empty())
}

/// A new access key id: `SV` and 18 characters of `A-Z0-9`, as AWS's.
fn new_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let random = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()];
    let mut id = String::from("SV");
    for byte in random.iter().flat_map(|u| u.as_bytes().iter()).take(18) {
        id.push(char::from(ALPHABET[usize::from(*byte) % ALPHABET.len()]));
    }
    id
}

/// `/s3-credentials[/{id}]`.
pub(crate) async fn route(
    ctx: &Ctx<'_>,
    rest: &[&str],
    body: Body,
) -> Result<Response, StorageError> {
    let key_root = ctx.service.config.s3.key_root.as_str();
    let caller = ctx.caller()?;
    if !caller.is_service() {
        return Err(StorageError::forbidden_role());
    }
    match (rest, ctx.method) {
        ([], &Method::GET) => {
            let rows = ctx
                .run(
                    &caller,
                    "s3.key.list",
                    "select coalesce(jsonb_agg(jsonb_build_object('id', access_key_id, 'description', description,
                       'created_at', to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))
                       order by created_at, access_key_id), '[]'::jsonb) from sovra.s3_access_keys",
                    &[],
                    true,
                )
                .await?;
            let list: Value = rows.first().map_or(json!([]), |row| row.get(0));
            Ok(axum::Json(list).into_response())
        }
        ([], &Method::POST) => {
            let body = Ctx::json(body).await?;
            let description = match body.get("description") {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(text)) if text.chars().count() <= 200 => text.clone(),
                Some(_) => {
                    return Err(StorageError::invalid(
                        "description must be a string of at most 200 characters",
                    ));
                }
            };
            if key_root.is_empty() {
                return Err(StorageError::internal());
            }
            let id = new_id();
            let rows = ctx
                .run(
                    &caller,
                    "s3.key.create",
                    "insert into sovra.s3_access_keys (access_key_id, description) values ($1, $2)
                     returning to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')",
                    &[&id, &description],
                    true,
                )
                .await?;
            let created: String = rows.first().map(|r| r.get(0)).unwrap_or_default();
            Ok(axum::Json(json!({
                "id": id,
                "access_key": id,
                "secret_key": derive_secret(key_root, &id),
                "description": description,
                "created_at": created,
            }))
            .into_response())
        }
        ([id], &Method::DELETE) => {
            let rows = ctx
                .run(
                    &caller,
                    "s3.key.delete",
                    "delete from sovra.s3_access_keys where access_key_id = $1 returning 1",
                    &[id],
                    true,
                )
                .await?;
            if rows.is_empty() {
                return Err(StorageError {
                    status: 404,
                    error: "not_found",
                    message: "S3 access key not found".to_owned(),
                    code: "NotFound",
                    http: Some(404),
                });
            }
            Ok(axum::Json(json!({"message": "Successfully deleted"})).into_response())
        }
        _ => Err(not_allowed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_stable_per_root_and_id() {
        let a = derive_secret("root", "SVAAAA");
        assert_eq!(a.len(), 40);
        assert_eq!(a, derive_secret("root", "SVAAAA"));
        assert_ne!(a, derive_secret("root", "SVAAAB"));
        assert_ne!(a, derive_secret("other", "SVAAAA"));
        let id = new_id();
        assert_eq!(id.len(), 20);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
    }
}
