//! Users as stored in `auth.users` and as the client sees them (spec §3.2).

use crate::db::Cached as _;
use std::time::SystemTime;

use serde_json::{Map, Value, json};
use sovra_pg::GenericClient;
use sovra_pg::tokio_postgres::Row;
use uuid::Uuid;

use crate::error::AuthResult;
use crate::time::rfc3339;

// The colons are quoted literals so that pgbench (the benchmark's
// reference, which runs this SQL) does not read `:MI` as a variable.
const TS: &str = r#"'YYYY-MM-DD"T"HH24":"MI":"SS.US"Z"'"#;

/// The columns every user query selects, with the user's identities and
/// factors as JSON, so that one round trip yields the whole object.
pub fn user_columns() -> &'static str {
    static COLUMNS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    COLUMNS.get_or_init(|| format!(
        "u.id, coalesce(u.aud, '') as aud, coalesce(u.role, '') as role, coalesce(u.email, '') as email,
         u.encrypted_password, u.email_confirmed_at, u.invited_at, u.confirmation_sent_at,
         u.recovery_sent_at, coalesce(u.email_change, '') as email_change, u.email_change_sent_at,
         u.last_sign_in_at, coalesce(u.raw_app_meta_data, '{{}}'::jsonb) as app_metadata,
         coalesce(u.raw_user_meta_data, '{{}}'::jsonb) as user_metadata, u.created_at, u.updated_at,
         coalesce(u.phone, '') as phone, u.phone_confirmed_at, coalesce(u.phone_change, '') as phone_change,
         u.phone_change_sent_at, u.confirmed_at, u.banned_until, u.reauthentication_sent_at,
         u.deleted_at, u.is_anonymous, coalesce(u.email_change_confirm_status, 0)::int4 as email_change_confirm_status,
         (select coalesce(json_agg(json_build_object(
             'identity_id', i.id, 'id', i.provider_id, 'user_id', i.user_id,
             'identity_data', i.identity_data, 'provider', i.provider,
             'last_sign_in_at', to_char(i.last_sign_in_at at time zone 'UTC', {TS}),
             'created_at', to_char(i.created_at at time zone 'UTC', {TS}),
             'updated_at', to_char(i.updated_at at time zone 'UTC', {TS}),
             'email', i.email) order by i.created_at), '[]'::json)
          from auth.identities i where i.user_id = u.id) as identities,
         (select json_agg(json_build_object(
             'id', f.id, 'friendly_name', coalesce(f.friendly_name, ''), 'factor_type', f.factor_type,
             'status', f.status,
             'created_at', to_char(f.created_at at time zone 'UTC', {TS}),
             'updated_at', to_char(f.updated_at at time zone 'UTC', {TS}),
             'phone', coalesce(f.phone, ''),
             'last_challenged_at', to_char(f.last_challenged_at at time zone 'UTC', {TS}))
             order by f.created_at)
          from auth.mfa_factors f where f.user_id = u.id) as factors"
    ))
}

fn by_sql(cell: &'static std::sync::OnceLock<String>, condition: &str) -> &'static str {
    cell.get_or_init(|| {
        format!(
            "select {} from auth.users u where {condition}",
            user_columns()
        )
    })
}

/// One `auth.users` row.
#[derive(Debug, Clone)]
pub struct User {
    pub id: Uuid,
    pub aud: String,
    pub role: String,
    pub email: String,
    pub encrypted_password: Option<String>,
    pub email_confirmed_at: Option<SystemTime>,
    pub invited_at: Option<SystemTime>,
    pub confirmation_sent_at: Option<SystemTime>,
    pub recovery_sent_at: Option<SystemTime>,
    pub email_change: String,
    pub email_change_sent_at: Option<SystemTime>,
    pub last_sign_in_at: Option<SystemTime>,
    pub app_metadata: Value,
    pub user_metadata: Value,
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
    pub phone: String,
    pub phone_confirmed_at: Option<SystemTime>,
    pub phone_change: String,
    pub phone_change_sent_at: Option<SystemTime>,
    pub confirmed_at: Option<SystemTime>,
    pub banned_until: Option<SystemTime>,
    pub reauthentication_sent_at: Option<SystemTime>,
    pub deleted_at: Option<SystemTime>,
    pub is_anonymous: bool,
    pub email_change_confirm_status: i32,
    pub identities: Value,
    pub factors: Option<Value>,
}

impl User {
    pub fn from_row(row: &Row) -> Result<User, sovra_pg::tokio_postgres::Error> {
        Ok(User {
            id: row.try_get("id")?,
            aud: row.try_get("aud")?,
            role: row.try_get("role")?,
            email: row.try_get("email")?,
            encrypted_password: row.try_get("encrypted_password")?,
            email_confirmed_at: row.try_get("email_confirmed_at")?,
            invited_at: row.try_get("invited_at")?,
            confirmation_sent_at: row.try_get("confirmation_sent_at")?,
            recovery_sent_at: row.try_get("recovery_sent_at")?,
            email_change: row.try_get("email_change")?,
            email_change_sent_at: row.try_get("email_change_sent_at")?,
            last_sign_in_at: row.try_get("last_sign_in_at")?,
            app_metadata: row.try_get("app_metadata")?,
            user_metadata: row.try_get("user_metadata")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            phone: row.try_get("phone")?,
            phone_confirmed_at: row.try_get("phone_confirmed_at")?,
            phone_change: row.try_get("phone_change")?,
            phone_change_sent_at: row.try_get("phone_change_sent_at")?,
            confirmed_at: row.try_get("confirmed_at")?,
            banned_until: row.try_get("banned_until")?,
            reauthentication_sent_at: row.try_get("reauthentication_sent_at")?,
            deleted_at: row.try_get("deleted_at")?,
            is_anonymous: row.try_get("is_anonymous")?,
            email_change_confirm_status: row.try_get("email_change_confirm_status")?,
            identities: row.try_get("identities")?,
            factors: row.try_get("factors")?,
        })
    }

    pub fn is_banned(&self) -> bool {
        self.banned_until.is_some_and(|t| t > SystemTime::now())
    }

    pub fn has_verified_factor(&self) -> bool {
        self.factors
            .as_ref()
            .and_then(Value::as_array)
            .is_some_and(|fs| {
                fs.iter()
                    .any(|f| f.get("status").and_then(Value::as_str) == Some("verified"))
            })
    }

    /// The user object of the API.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        let mut put = |key: &str, value: Value| {
            map.insert(key.to_owned(), value);
        };
        put("id", json!(self.id));
        put("aud", json!(self.aud));
        put("role", json!(self.role));
        put("email", json!(self.email));
        let times = [
            ("email_confirmed_at", self.email_confirmed_at),
            ("phone_confirmed_at", self.phone_confirmed_at),
            ("confirmation_sent_at", self.confirmation_sent_at),
            ("recovery_sent_at", self.recovery_sent_at),
            ("email_change_sent_at", self.email_change_sent_at),
            ("phone_change_sent_at", self.phone_change_sent_at),
            ("reauthentication_sent_at", self.reauthentication_sent_at),
            ("invited_at", self.invited_at),
            ("confirmed_at", self.confirmed_at),
            ("last_sign_in_at", self.last_sign_in_at),
            ("banned_until", self.banned_until),
            ("deleted_at", self.deleted_at),
        ];
        put("phone", json!(self.phone));
        for (key, value) in times {
            if let Some(t) = value {
                put(key, json!(rfc3339(t)));
            }
        }
        if !self.email_change.is_empty() {
            put("new_email", json!(self.email_change));
        }
        if !self.phone_change.is_empty() {
            put("new_phone", json!(self.phone_change));
        }
        put("app_metadata", self.app_metadata.clone());
        put("user_metadata", self.user_metadata.clone());
        put("identities", self.identities.clone());
        if let Some(factors) = &self.factors {
            put("factors", factors.clone());
        }
        if let Some(t) = self.created_at {
            put("created_at", json!(rfc3339(t)));
        }
        if let Some(t) = self.updated_at {
            put("updated_at", json!(rfc3339(t)));
        }
        put("is_anonymous", json!(self.is_anonymous));
        Value::Object(map)
    }
}

/// Loads a user by id (soft-deleted users included; callers decide).
pub async fn by_id(client: &impl GenericClient, id: Uuid) -> AuthResult<Option<User>> {
    let sql = format!(
        "select {} from auth.users u where u.id = $1",
        user_columns()
    );
    let row = client.c_query_opt(&sql, &[&id]).await?;
    Ok(row.map(|r| User::from_row(&r)).transpose()?)
}

/// Loads a user by lower-cased email (non-SSO, not deleted).
pub async fn by_email(client: &impl GenericClient, email: &str) -> AuthResult<Option<User>> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = by_sql(
        &SQL,
        "lower(u.email) = $1 and not u.is_sso_user and u.deleted_at is null",
    );
    let row = client.c_query_opt(sql, &[&email]).await?;
    Ok(row.map(|r| User::from_row(&r)).transpose()?)
}

/// Loads a user by phone.
pub async fn by_phone(client: &impl GenericClient, phone: &str) -> AuthResult<Option<User>> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = by_sql(&SQL, "u.phone = $1 and u.deleted_at is null");
    let row = client.c_query_opt(sql, &[&phone]).await?;
    Ok(row.map(|r| User::from_row(&r)).transpose()?)
}

/// Validates and normalises an email address (lower case, one `@`, a dot
/// in the domain, no spaces).
pub fn normalize_email(email: &str) -> Option<String> {
    let email = email.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    let ok = !local.is_empty()
        && local.len() <= 64
        && email.len() <= 255
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !email
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        && !domain.contains('@');
    ok.then_some(email)
}

/// E.164 digits without `+` (spaces, dashes and parentheses removed).
pub fn normalize_phone(phone: &str) -> Option<String> {
    let digits: String = phone
        .trim()
        .trim_start_matches('+')
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
        .collect();
    (digits.len() >= 8
        && digits.len() <= 15
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0'))
    .then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_and_phones() {
        assert_eq!(
            normalize_email(" Ada@Example.COM ").as_deref(),
            Some("ada@example.com")
        );
        for bad in ["", "ada", "@x.io", "a@b", "a@.b.c", "a b@c.io", "a@b@c.io"] {
            assert_eq!(normalize_email(bad), None, "{bad:?}");
        }
        assert_eq!(
            normalize_phone("+1 (555) 123-4567").as_deref(),
            Some("15551234567")
        );
        assert_eq!(normalize_phone("555"), None);
        assert_eq!(normalize_phone("+1555abc4567"), None);
    }
}
