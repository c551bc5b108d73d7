//! API keys for machine-to-machine access: named, tied to a database role,
//! stored as SHA-256 hashes, revocable. A key is `sovra_sk_` followed by 40
//! random alphanumerics and is accepted in the `apikey` header.
//!
//! The gateway checks keys on every request without a database round trip:
//! it looks them up in [`ApiKeyCache`], which is reloaded when a key is
//! created or revoked here and periodically (for other instances' changes).

use crate::db::Cached as _;
use std::collections::HashMap;
use std::sync::RwLock;

use serde_json::{Value, json};
use sovra_pg::GenericClient;
use uuid::Uuid;

use crate::crypto;
use crate::error::{AuthError, AuthResult};

/// The prefix that marks a Sovra API key.
pub const PREFIX: &str = "sovra_sk_";

/// A valid key's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub id: Uuid,
    pub name: String,
    pub role: String,
}

/// Hash → key, for the keys that are not revoked.
#[derive(Debug, Default)]
pub struct ApiKeyCache {
    keys: RwLock<HashMap<String, ApiKey>>,
}

impl ApiKeyCache {
    /// The key `presented` stands for, if it is a live Sovra API key.
    pub fn lookup(&self, presented: &str) -> Option<ApiKey> {
        if !presented.starts_with(PREFIX) {
            return None;
        }
        let hash = crypto::sha256_hex(presented);
        self.keys.read().ok()?.get(&hash).cloned()
    }

    /// Replaces the cache with the live keys in the database.
    pub async fn reload(&self, client: &impl GenericClient) -> AuthResult<()> {
        let rows = client
            .c_query(
                "select key_hash, id, name, role from sovra.api_keys where revoked_at is null",
                &[],
            )
            .await?;
        let map = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    ApiKey {
                        id: r.get(1),
                        name: r.get(2),
                        role: r.get(3),
                    },
                )
            })
            .collect();
        if let Ok(mut guard) = self.keys.write() {
            *guard = map;
        }
        Ok(())
    }
}

/// Creates a key for `role` (which must be an API role the request role
/// may switch to); returns its id and the key, shown this once.
pub async fn create(
    client: &impl GenericClient,
    name: &str,
    role: &str,
) -> AuthResult<(Uuid, String)> {
    let allowed = client
        .c_query_one(
            "select exists (select 1 from pg_roles where rolname = $1)
                    and pg_has_role('authenticator', $1, 'member')",
            &[&role],
        )
        .await?
        .get::<_, Option<bool>>(0)
        .unwrap_or(false);
    if !allowed {
        return Err(AuthError::validation(format!(
            "role {role:?} is not a role requests may run as (anon, authenticated, service_role, or one granted to authenticator)"
        )));
    }
    let key = format!("{PREFIX}{}", crypto::random_alnum(40));
    let id = Uuid::new_v4();
    client
        .c_execute(
            "insert into sovra.api_keys (id, name, role, key_hash, key_prefix, created_at)
             values ($1, $2, $3, $4, $5, now())",
            &[
                &id,
                &name.trim(),
                &role,
                &crypto::sha256_hex(&key),
                &&key[..PREFIX.len() + 4],
            ],
        )
        .await?;
    Ok((id, key))
}

/// Every key (without secrets), newest first.
pub async fn list(client: &impl GenericClient) -> AuthResult<Value> {
    let rows = client
        .c_query(
            "select id, name, role, key_prefix, extract(epoch from created_at)::int8,
                    extract(epoch from revoked_at)::int8
               from sovra.api_keys order by created_at desc",
            &[],
        )
        .await?;
    Ok(Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "id": r.get::<_, Uuid>(0),
                    "name": r.get::<_, String>(1),
                    "role": r.get::<_, String>(2),
                    "prefix": r.get::<_, String>(3),
                    "created_at": r.get::<_, Option<i64>>(4),
                    "revoked_at": r.get::<_, Option<i64>>(5),
                })
            })
            .collect(),
    ))
}

/// Revokes key `id`; false when there is no such live key.
pub async fn revoke(client: &impl GenericClient, id: Uuid) -> AuthResult<bool> {
    let n = client
        .c_execute(
            "update sovra.api_keys set revoked_at = now() where id = $1 and revoked_at is null",
            &[&id],
        )
        .await?;
    Ok(n == 1)
}
