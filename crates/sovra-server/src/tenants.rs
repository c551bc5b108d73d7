//! Many isolated projects ("tenants") on one Sovra (#14).
//!
//! The registry (`sovra.tenants`) lives in the platform's own database,
//! the default tenant's. Each tenant has:
//!
//! - its own database, cloned from a migrated template
//!   (`CREATE DATABASE … TEMPLATE`), with `CONNECT` revoked from `PUBLIC`;
//! - two login roles of its own, `<database>_rest` and `<database>_auth`,
//!   `NOINHERIT` members of `authenticator` and `supabase_auth_admin` that
//!   start every session as those roles (`-c role=…`). `NOINHERIT` means
//!   they hold no privilege of those cluster-wide roles at login time, so
//!   `CONNECT` granted to `authenticator` on the platform database does not
//!   let them in there; only their own database grants them `CONNECT`;
//! - its own signing key and anon/service_role keys, bound to its name (the
//!   `ref` claim, see [`sovra_jwt::KeySet::with_project_ref`]), so that a
//!   token of one tenant is refused by every other even with equal secrets;
//! - its own storage prefix (its name), realtime service and change feed
//!   (started on the first subscriber), pools and schema cache, built on
//!   the first request and dropped when it is suspended or deleted.
//!
//! Requests reach a tenant at `/t/{name}/…` or, with `server.base_domain`,
//! at `{name}.{base_domain}`; [`route`] rewrites them before routing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sovra_config::Config;
use sovra_jwt::{KeySet, KeyStore, StoredKey};
use sovra_pg::tokio_postgres;
use subtle::ConstantTimeEq as _;

use crate::keys::{ApiKeys, ProjectKeys};
use crate::{AppState, Tenant};

mod rate;
pub(crate) mod share;
pub(crate) mod usage;

/// Longest tenant name: `tenant_<name>_auth` must fit PostgreSQL's 63-byte
/// identifiers.
pub const MAX_NAME: usize = 40;

/// Names that are not tenants: the default tenant's storage prefix, and
/// host labels people expect to mean the platform itself.
const RESERVED: &[&str] = &["default", "www", "api", "sovra", "admin", "platform"];

/// Checks a tenant name: a lowercase DNS label of at most [`MAX_NAME`]
/// characters that starts with a letter.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is required".to_owned());
    }
    if name.len() > MAX_NAME {
        return Err(format!("name must be at most {MAX_NAME} characters"));
    }
    let bytes = name.as_bytes();
    let label = bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-';
    if !label {
        return Err(
            "name must be a lowercase DNS label: a-z, 0-9 and '-', starting with a letter and not ending with '-'"
                .to_owned(),
        );
    }
    if RESERVED.contains(&name) {
        return Err(format!("name {name:?} is reserved"));
    }
    Ok(())
}

/// The database of tenant `name`.
pub fn database_name(name: &str) -> String {
    format!("tenant_{}", name.replace('-', "_"))
}

/// Settings of one tenant (all optional: unset means the platform's).
/// `Debug` shows them as the tenant API does (secrets masked).
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_autoconfirm: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_signup: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_apikey: Option<bool>,
    /// Quota: connections of the request pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_size: Option<usize>,
    /// Quota: requests per second (a token bucket of one second's burst);
    /// more get 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u64>,
    /// Quota: statement timeout of requests, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement_timeout_ms: Option<u64>,
    /// Quota: concurrent realtime connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_max_connections: Option<u64>,
    /// Quota: largest object, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_file_size_limit: Option<u64>,
    /// Quota: bytes of all stored objects (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_max_bytes: Option<u64>,
    /// Quota: size of the tenant's database, over which its API sessions
    /// are read-only (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_max_bytes: Option<u64>,
    /// Quota: mails auth sends per hour, all recipients (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mails_per_hour: Option<u64>,
    /// Quota: channels one realtime connection may join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_max_channels_per_connection: Option<u64>,
    /// Quota: messages per second of all realtime connections (0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_events_per_second: Option<u64>,
    /// Quota: requests in progress at once; more wait (0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_requests: Option<u64>,
    /// `/mcp` offers its write tools (as `mcp.allow_writes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_allow_writes: Option<bool>,
    /// Auth's mail server (`smtp://` or `smtps://`, as `auth.smtp_url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_url: Option<String>,
    /// The sender of auth's mails (as `auth.smtp_from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_from: Option<String>,
    /// Identity providers by GoTrue's name, over `auth.external.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<std::collections::BTreeMap<String, TenantProvider>>,
    /// Auth hooks by name, over `auth.hook.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<std::collections::BTreeMap<String, TenantHook>>,
}

impl std::fmt::Debug for TenantSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = serde_json::to_string(&shown_settings(self)).unwrap_or_default();
        write!(f, "TenantSettings({shown})")
    }
}

/// A tenant's identity provider: the fields of `auth.external.<name>`
/// it sets (the others keep the platform's).
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantProvider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_nonce_check: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
}

impl std::fmt::Debug for TenantProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = self.masked();
        f.debug_struct("TenantProvider")
            .field("enabled", &shown.enabled)
            .field("client_id", &shown.client_id)
            .field("secret", &shown.secret)
            .field("url", &shown.url)
            .field("private_key", &shown.private_key)
            .finish_non_exhaustive()
    }
}

/// What the tenant API shows of a secret.
const MASK: &str = "***";

fn mask(secret: &Option<String>) -> Option<String> {
    secret.as_ref().map(|s| {
        if s.is_empty() {
            String::new()
        } else {
            MASK.to_owned()
        }
    })
}

impl TenantProvider {
    /// `patch` over `self`, field by field.
    fn merged(&self, patch: &TenantProvider) -> TenantProvider {
        macro_rules! pick {
            ($($field:ident),*) => {
                TenantProvider { $($field: patch.$field.clone().or_else(|| self.$field.clone()),)* }
            };
        }
        pick!(
            enabled,
            client_id,
            secret,
            url,
            api_url,
            skip_nonce_check,
            team_id,
            key_id,
            private_key
        )
    }

    /// Secrets as `***`.
    fn masked(&self) -> TenantProvider {
        TenantProvider {
            secret: mask(&self.secret),
            private_key: mask(&self.private_key),
            ..self.clone()
        }
    }

    /// Sets these fields of provider `name` in `external`; a field the
    /// provider does not have is an error.
    fn apply(&self, name: &str, external: &mut sovra_config::AuthExternal) -> Result<(), String> {
        let unused = |fields: &[(&str, bool)]| match fields.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(format!(
                "external.{name}.{field} is not a setting of {name}"
            )),
            None => Ok(()),
        };
        let set = |to: &mut String, from: &Option<String>| {
            if let Some(v) = from {
                to.clone_from(v);
            }
        };
        let flag = |to: &mut bool, from: Option<bool>| {
            if let Some(v) = from {
                *to = v;
            }
        };
        match name {
            "google" | "keycloak" | "azure" => {
                unused(&[
                    ("api_url", self.api_url.is_some()),
                    ("team_id", self.team_id.is_some()),
                    ("key_id", self.key_id.is_some()),
                    ("private_key", self.private_key.is_some()),
                ])?;
                let p = match name {
                    "google" => &mut external.google,
                    "keycloak" => &mut external.keycloak,
                    _ => &mut external.azure,
                };
                flag(&mut p.enabled, self.enabled);
                set(&mut p.client_id, &self.client_id);
                set(&mut p.secret, &self.secret);
                set(&mut p.url, &self.url);
                flag(&mut p.skip_nonce_check, self.skip_nonce_check);
            }
            "github" => {
                unused(&[
                    ("skip_nonce_check", self.skip_nonce_check.is_some()),
                    ("team_id", self.team_id.is_some()),
                    ("key_id", self.key_id.is_some()),
                    ("private_key", self.private_key.is_some()),
                ])?;
                let p = &mut external.github;
                flag(&mut p.enabled, self.enabled);
                set(&mut p.client_id, &self.client_id);
                set(&mut p.secret, &self.secret);
                set(&mut p.url, &self.url);
                set(&mut p.api_url, &self.api_url);
            }
            "gitlab" | "discord" => {
                unused(&[
                    ("api_url", self.api_url.is_some()),
                    ("skip_nonce_check", self.skip_nonce_check.is_some()),
                    ("team_id", self.team_id.is_some()),
                    ("key_id", self.key_id.is_some()),
                    ("private_key", self.private_key.is_some()),
                ])?;
                let p = if name == "gitlab" {
                    &mut external.gitlab
                } else {
                    &mut external.discord
                };
                flag(&mut p.enabled, self.enabled);
                set(&mut p.client_id, &self.client_id);
                set(&mut p.secret, &self.secret);
                set(&mut p.url, &self.url);
            }
            "apple" => {
                unused(&[
                    ("secret", self.secret.is_some()),
                    ("api_url", self.api_url.is_some()),
                ])?;
                let p = &mut external.apple;
                flag(&mut p.enabled, self.enabled);
                set(&mut p.client_id, &self.client_id);
                set(&mut p.team_id, &self.team_id);
                set(&mut p.key_id, &self.key_id);
                set(&mut p.private_key, &self.private_key);
                set(&mut p.url, &self.url);
                flag(&mut p.skip_nonce_check, self.skip_nonce_check);
            }
            _ => {
                return Err(format!(
                    "external.{name}: no such provider (google, keycloak, azure, apple, github, gitlab, discord)"
                ));
            }
        }
        Ok(())
    }
}

/// A tenant's auth hook: the fields of `auth.hook.<name>` it sets.
#[derive(Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TenantHook {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets: Option<String>,
}

impl std::fmt::Debug for TenantHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantHook")
            .field("enabled", &self.enabled)
            .field("uri", &self.uri)
            .field("secrets", &mask(&self.secrets))
            .finish()
    }
}

impl TenantHook {
    fn merged(&self, patch: &TenantHook) -> TenantHook {
        TenantHook {
            enabled: patch.enabled.or(self.enabled),
            uri: patch.uri.clone().or_else(|| self.uri.clone()),
            secrets: patch.secrets.clone().or_else(|| self.secrets.clone()),
        }
    }

    fn apply(&self, name: &str, hooks: &mut sovra_config::AuthHooks) -> Result<(), String> {
        let hook = hooks.by_name_mut(name).ok_or_else(|| {
            format!(
                "hooks.{name}: no such hook (custom_access_token, before_user_created, password_verification_attempt, mfa_verification_attempt, send_email, send_sms)"
            )
        })?;
        if let Some(on) = self.enabled {
            hook.enabled = on;
        }
        if let Some(uri) = &self.uri {
            hook.uri.clone_from(uri);
        }
        if let Some(secrets) = &self.secrets {
            hook.secrets.clone_from(secrets);
        }
        Ok(())
    }
}

/// Two maps merged by key, each entry with `merge`.
fn merge_maps<T: Clone>(
    old: Option<&std::collections::BTreeMap<String, T>>,
    patch: Option<&std::collections::BTreeMap<String, T>>,
    merge: impl Fn(&T, &T) -> T,
) -> Option<std::collections::BTreeMap<String, T>> {
    match (old, patch) {
        (None, None) => None,
        (Some(map), None) | (None, Some(map)) => Some(map.clone()),
        (Some(old), Some(patch)) => {
            let mut out = old.clone();
            for (key, value) in patch {
                let merged = match out.get(key) {
                    Some(existing) => merge(existing, value),
                    None => value.clone(),
                };
                out.insert(key.clone(), merged);
            }
            Some(out)
        }
    }
}

impl TenantSettings {
    /// Checks values that would break the tenant.
    fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.site_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err("site_url must start with http:// or https://".to_owned());
        }
        if self.pool_size.is_some_and(|n| !(1..=1000).contains(&n)) {
            return Err("pool_size must be between 1 and 1000".to_owned());
        }
        if self.requests_per_second == Some(0) {
            return Err("requests_per_second must be at least 1".to_owned());
        }
        if self.statement_timeout_ms == Some(0) {
            return Err("statement_timeout_ms must be at least 1".to_owned());
        }
        if self.realtime_max_connections == Some(0) {
            return Err("realtime_max_connections must be at least 1".to_owned());
        }
        if self.storage_file_size_limit == Some(0) {
            return Err("storage_file_size_limit must be at least 1".to_owned());
        }
        if self.realtime_max_channels_per_connection == Some(0) {
            return Err("realtime_max_channels_per_connection must be at least 1".to_owned());
        }
        if self
            .mails_per_hour
            .is_some_and(|n| u32::try_from(n).is_err())
        {
            return Err("mails_per_hour is too large".to_owned());
        }
        if self.max_concurrent_requests.is_some_and(|n| n > 100_000) {
            return Err("max_concurrent_requests must be at most 100000".to_owned());
        }
        if self
            .realtime_events_per_second
            .is_some_and(|n| u32::try_from(n).is_err())
        {
            return Err("realtime_events_per_second is too large".to_owned());
        }
        if let Some(url) = &self.smtp_url
            && !(url.starts_with("smtp://") || url.starts_with("smtps://"))
        {
            return Err("smtp_url must start with smtp:// or smtps://".to_owned());
        }
        if let Some(from) = &self.smtp_from
            && (!from.contains('@') || from.contains(['\r', '\n']))
        {
            return Err(
                "smtp_from must be a mail address (\"Name <a@b.example>\" or a@b.example)"
                    .to_owned(),
            );
        }
        if let Some(urls) = &self.redirect_urls
            && urls.iter().any(|u| u.contains(','))
        {
            return Err("redirect_urls must not contain commas".to_owned());
        }
        let mut scratch = sovra_config::AuthConfig::default();
        self.apply_auth(&mut scratch)?;
        Ok(())
    }

    /// Sets the tenant's providers and hooks in `auth`.
    fn apply_auth(&self, auth: &mut sovra_config::AuthConfig) -> Result<(), String> {
        for (name, provider) in self.external.iter().flatten() {
            provider.apply(name, &mut auth.external)?;
        }
        for (name, hook) in self.hooks.iter().flatten() {
            hook.apply(name, &mut auth.hook)?;
        }
        Ok(())
    }

    /// `patch` over `self`: fields `patch` sets replace these.
    fn merged(&self, patch: &TenantSettings) -> TenantSettings {
        let mut out = self.merged_fields(patch);
        out.external = merge_maps(
            self.external.as_ref(),
            patch.external.as_ref(),
            TenantProvider::merged,
        );
        out.hooks = merge_maps(
            self.hooks.as_ref(),
            patch.hooks.as_ref(),
            TenantHook::merged,
        );
        out
    }

    /// `patch` over `self`, each field whole.
    fn merged_fields(&self, patch: &TenantSettings) -> TenantSettings {
        macro_rules! pick {
            ($($field:ident),*) => {
                TenantSettings { $($field: patch.$field.clone().or_else(|| self.$field.clone()),)* }
            };
        }
        pick!(
            site_url,
            redirect_urls,
            email_autoconfirm,
            disable_signup,
            require_apikey,
            pool_size,
            requests_per_second,
            statement_timeout_ms,
            realtime_max_connections,
            storage_file_size_limit,
            storage_max_bytes,
            database_max_bytes,
            mails_per_hour,
            realtime_max_channels_per_connection,
            realtime_events_per_second,
            max_concurrent_requests,
            mcp_allow_writes,
            smtp_url,
            smtp_from,
            external,
            hooks
        )
    }
}

/// The body of `PATCH /sovra/v1/tenants/{name}`: settings, and optionally a
/// JWT secret to sign with (a project moving in keeps its secret).
#[derive(Debug, Default)]
struct TenantPatch {
    settings: TenantSettings,
    jwt_secret: Option<String>,
    /// Make a new pair of opaque keys (shown in the answer once); the
    /// previous pair stops working.
    rotate_opaque_keys: bool,
}

impl TenantPatch {
    fn parse(body: &[u8]) -> Result<TenantPatch, String> {
        let mut map: serde_json::Map<String, Value> =
            serde_json::from_slice(body).map_err(|err| format!("invalid JSON body: {err}"))?;
        let jwt_secret = match map.remove("jwt_secret") {
            None | Some(Value::Null) => None,
            Some(Value::String(secret)) => Some(secret),
            Some(_) => return Err("jwt_secret must be a string".to_owned()),
        };
        let rotate_opaque_keys = match map.remove("rotate_opaque_keys") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(on)) => on,
            Some(_) => return Err("rotate_opaque_keys must be a boolean".to_owned()),
        };
        let settings = serde_json::from_value(Value::Object(map)).map_err(|err| err.to_string())?;
        Ok(TenantPatch {
            settings,
            jwt_secret,
            rotate_opaque_keys,
        })
    }
}

/// One row of the registry, its secrets opened (`Debug` shows none).
#[derive(Clone)]
pub struct TenantRecord {
    pub name: String,
    pub database: String,
    pub suspended: bool,
    pub settings: TenantSettings,
    pub keys: Vec<StoredKey>,
    pub api_keys: ApiKeys,
    pub created_at: String,
    /// Where its database is, when it is not a clone on the platform's
    /// cluster (`database_url` on create; holds a password, never shown).
    pub database_url: Option<String>,
    /// Its sealed fields that did not open (damaged, or sealed under a key
    /// this server does not have): the tenant is not served while any is.
    pub damaged: Vec<String>,
}

impl std::fmt::Debug for TenantRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantRecord")
            .field("name", &self.name)
            .field("database", &self.database)
            .field("suspended", &self.suspended)
            .field("settings", &self.settings)
            .field("own_database", &self.database_url.is_some())
            .field("damaged", &self.damaged)
            .finish_non_exhaustive()
    }
}

impl TenantRecord {
    /// Why it cannot be served when a sealed field did not open.
    fn damage(&self) -> Option<String> {
        (!self.damaged.is_empty()).then(|| {
            format!(
                "tenant {}: its sealed {} did not open (damaged, or sealed under a tenant secrets key this server does not have: see `server.tenant_secrets_key` and `server.tenant_secrets_old_keys`)",
                self.name,
                self.damaged.join(", ")
            )
        })
    }
}

/// Why a tenant could not be served.
#[derive(Debug)]
pub enum Lookup {
    NotFound,
    Suspended,
    Failed(String),
}

impl IntoResponse for Lookup {
    fn into_response(self) -> Response {
        match self {
            Lookup::NotFound => error(StatusCode::NOT_FOUND, "tenant_not_found", "No such tenant"),
            Lookup::Suspended => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "tenant_suspended",
                "This tenant is suspended",
            ),
            Lookup::Failed(reason) => {
                tracing::warn!(%reason, "a tenant could not be started");
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "tenant_unavailable",
                    "This tenant is not available right now",
                )
            }
        }
    }
}

/// An error of the tenant API: status, code and message.
pub struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error(self.0, self.1, &self.2)
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message, "code": status.as_u16()})),
    )
        .into_response()
}

type Cell = Arc<tokio::sync::OnceCell<Arc<Tenant>>>;

/// Serialises migrations of tenant databases in this process.
static MIGRATING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Serialises them across the platform's instances ("sovra_tm").
const MIGRATE_LOCK: i64 = 0x736f_7672_615f_746d;

/// The tenants of this server beyond the default one: the registry, and
/// the tenants built so far.
pub struct Platform {
    config: Config,
    /// The administrative login on the platform database.
    admin: tokio_postgres::Config,
    admin_pool: sovra_pg::Pool,
    platform_db: String,
    template: String,
    key_digest: [u8; 32],
    /// Seals the tenants' secrets in the registry ([`crate::tenant_secrets`]).
    secrets: sovra_auth::secret::ServiceKey,
    public_url: RwLock<String>,
    live: Mutex<HashMap<String, Cell>>,
    template_ready: tokio::sync::Mutex<bool>,
    /// Request-rate buckets of the tenants that have a
    /// `requests_per_second` quota ([`rate`]).
    buckets: Mutex<HashMap<String, rate::Bucket>>,
    /// When each started tenant last had a request.
    last_used: Mutex<HashMap<String, std::time::Instant>>,
    /// Shares of the machine for tenants with a concurrency quota while
    /// several are busy ([`share`]).
    shares: share::Shares,
    /// Tenants whose databases the start-up upgrade has not migrated yet
    /// (`None`: no upgrade ran or it finished).
    upgrading: Mutex<Option<std::collections::HashSet<String>>>,
    /// Every tenant name of the registry as last read: unknown names are
    /// answered from it (a flood of random names costs the registry one
    /// read per [`UNKNOWN_TTL`]), and the default tenant refuses tokens
    /// whose `ref` is one of them.
    names: Arc<RwLock<KnownNames>>,
    /// One registry read of the names at a time.
    names_refresh: tokio::sync::Mutex<()>,
    /// Reads of the registry so far (for tests and metrics).
    registry_reads: std::sync::atomic::AtomicU64,
    /// Tenants over their database size quota (read-only), and those
    /// warned about (over 80% of it).
    read_only: Mutex<std::collections::HashSet<String>>,
    size_warned: Mutex<std::collections::HashSet<String>>,
}

/// How long a read of the registry's names answers for names it does not
/// hold: a tenant made through another instance is unknown here for at
/// most this long.
pub const UNKNOWN_TTL: Duration = Duration::from_secs(2);

/// The registry's tenant names as last read.
#[derive(Debug, Default)]
struct KnownNames {
    set: std::collections::HashSet<String>,
    read_at: Option<std::time::Instant>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("platform_db", &self.platform_db)
            .field("template", &self.template)
            .finish_non_exhaustive()
    }
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn db_error(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_owned(),
        None => err.to_string(),
    }
}

fn now() -> i64 {
    crate::gateway::now()
}

impl Platform {
    /// The platform of a server whose administrative login on its own
    /// database is `admin`, with `platform_key` for the tenant API.
    pub fn new(
        config: &Config,
        admin: tokio_postgres::Config,
        platform_key: &str,
    ) -> Result<Platform, String> {
        let platform_db = admin.get_dbname().unwrap_or("postgres").to_owned();
        let mut template: String = format!("{platform_db}_tenant_template");
        template.truncate(63);
        let admin_pool = sovra_pg::pool::build(
            admin.clone(),
            4,
            Duration::from_secs(config.database.connect_timeout),
        )
        .map_err(|err| err.to_string())?;
        let secrets = crate::tenant_secrets::load_key(config)?;
        Ok(Platform {
            secrets,
            config: config.clone(),
            admin,
            admin_pool,
            platform_db,
            template,
            key_digest: crate::routes::token_digest(platform_key),
            public_url: RwLock::new(config.public_url(config.listen_addr())),
            live: Mutex::new(HashMap::new()),
            template_ready: tokio::sync::Mutex::new(false),
            upgrading: Mutex::new(None),
            buckets: Mutex::new(HashMap::new()),
            last_used: Mutex::new(HashMap::new()),
            shares: share::Shares::new(config.server.tenant_shared_requests),
            names: Arc::new(RwLock::new(KnownNames::default())),
            names_refresh: tokio::sync::Mutex::new(()),
            registry_reads: std::sync::atomic::AtomicU64::new(0),
            read_only: Mutex::new(std::collections::HashSet::new()),
            size_warned: Mutex::new(std::collections::HashSet::new()),
        })
    }

    /// Whether tenant `name` is read-only (over its database size quota).
    pub fn is_read_only(&self, name: &str) -> bool {
        self.read_only.lock().is_ok_and(|set| set.contains(name))
    }

    /// Checks every tenant's database size against its quota: over it, the
    /// tenant is stopped and started again read-only; under it again,
    /// read-write. From 80% of it a warning is logged once. One query for
    /// all databases; `sovra_tenant_database_bytes{tenant}` reports sizes.
    pub async fn check_database_sizes(&self) -> Result<(), String> {
        let records = self.records().await?;
        let limited: Vec<(String, String, u64)> = records
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    r.database.clone(),
                    self.database_max_bytes(&r.settings),
                )
            })
            .filter(|(_, _, max)| *max > 0)
            .collect();
        let databases: Vec<&str> = limited.iter().map(|(_, db, _)| db.as_str()).collect();
        let client = self.admin_client().await?;
        let rows = client
            .query(
                "select datname::text, pg_database_size(datname) from pg_database where datname = any($1)",
                &[&databases],
            )
            .await
            .map_err(|err| db_error(&err))?;
        let sizes: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut over = std::collections::HashSet::new();
        for (name, database, max) in &limited {
            let Some(size) = sizes.get(database).and_then(|s| u64::try_from(*s).ok()) else {
                continue;
            };
            #[allow(clippy::cast_precision_loss)]
            metrics::gauge!("sovra_tenant_database_bytes", "tenant" => name.clone())
                .set(size as f64);
            if size >= *max {
                over.insert(name.clone());
            } else if size >= max / 5 * 4
                && self
                    .size_warned
                    .lock()
                    .is_ok_and(|mut warned| warned.insert(name.clone()))
            {
                tracing::warn!(tenant = %name, size, max, "a tenant's database is over 80% of its size quota");
            } else if size < max / 5 * 4
                && let Ok(mut warned) = self.size_warned.lock()
            {
                warned.remove(name);
            }
        }
        let (entered, left): (Vec<String>, Vec<String>) = match self.read_only.lock() {
            Ok(mut read_only) => {
                let entered = over.difference(&read_only).cloned().collect();
                let left = read_only.difference(&over).cloned().collect();
                *read_only = over;
                (entered, left)
            }
            Err(_) => return Err("read-only table poisoned".to_owned()),
        };
        for name in entered {
            tracing::warn!(tenant = %name, "a tenant's database is over its size quota: it is read-only until it is under again");
            metrics::counter!(
                "sovra_tenant_quota_exceeded_total",
                "tenant" => name.clone(),
                "quota" => "database_max_bytes"
            )
            .increment(1);
            self.evict(&name, "this tenant's database is over its size quota");
        }
        for name in left {
            tracing::info!(tenant = %name, "a tenant's database is under its size quota again: read-write");
            self.evict(&name, "this tenant's database is writable again");
        }
        Ok(())
    }

    /// Checks the database sizes every `every`.
    pub fn spawn_size_check(self: &Arc<Self>, every: Duration) {
        let platform = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(platform) = platform.upgrade() else {
                    return;
                };
                if let Err(err) = platform.check_database_sizes().await {
                    tracing::warn!(error = %err, "checking the tenants' database sizes failed");
                }
            }
        });
    }

    /// What the default tenant's keys refuse: tokens whose `ref` names a
    /// tenant of this server (see [`KeySet::with_foreign_refs`]), so that
    /// a tenant's tokens and keys are refused at the root even when the
    /// two were configured with the same secret.
    pub fn ref_guard(&self) -> sovra_jwt::RefGuard {
        let names = self.names.clone();
        Arc::new(move |project: &str| names.read().is_ok_and(|known| known.set.contains(project)))
    }

    /// How many times the registry was read (tenant lookups, listings and
    /// reads of the names).
    pub fn registry_reads(&self) -> u64 {
        self.registry_reads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_registry_read(&self) {
        self.registry_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Reads every tenant name from the registry.
    pub async fn refresh_names(&self) -> Result<(), String> {
        let client = self.admin_client().await?;
        self.count_registry_read();
        let rows = client
            .query("select name from sovra.tenants", &[])
            .await
            .map_err(|err| db_error(&err))?;
        let set = rows.iter().map(|row| row.get::<_, String>(0)).collect();
        if let Ok(mut names) = self.names.write() {
            *names = KnownNames {
                set,
                read_at: Some(std::time::Instant::now()),
            };
        }
        Ok(())
    }

    /// `Some(true)`: `name` is in the registry as last read; `Some(false)`:
    /// it is not, and that read is recent; `None`: read again.
    fn known(&self, name: &str) -> Option<bool> {
        let names = self.names.read().ok()?;
        if names.set.contains(name) {
            return Some(true);
        }
        names
            .read_at
            .is_some_and(|at| at.elapsed() < UNKNOWN_TTL)
            .then_some(false)
    }

    fn note_name(&self, name: &str, exists: bool) {
        if let Ok(mut names) = self.names.write() {
            if exists {
                names.set.insert(name.to_owned());
            } else {
                names.set.remove(name);
            }
        }
    }

    /// Whether `name` may be a tenant, reading the registry's names again
    /// (once for every caller waiting) when the last read is too old.
    async fn may_exist(&self, name: &str) -> Result<bool, String> {
        if let Some(known) = self.known(name) {
            return Ok(known);
        }
        let _one = self.names_refresh.lock().await;
        if let Some(known) = self.known(name) {
            return Ok(known);
        }
        self.refresh_names().await?;
        Ok(self.known(name).unwrap_or(true))
    }

    /// Sets the public URL once the listener is bound.
    pub fn set_public_url(&self, url: &str) {
        if let Ok(mut guard) = self.public_url.write() {
            *guard = url.trim_end_matches('/').to_owned();
        }
    }

    /// The base URL of tenant `name` (what supabase-js takes).
    pub fn tenant_url(&self, name: &str) -> String {
        let base = self
            .public_url
            .read()
            .map(|u| u.clone())
            .unwrap_or_default();
        format!("{base}/t/{name}")
    }

    /// The tenants built so far.
    pub fn live(&self) -> Vec<Arc<Tenant>> {
        let cells: Vec<Cell> = match self.live.lock() {
            Ok(live) => live.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        cells
            .iter()
            .filter_map(|cell| cell.get().cloned())
            .collect()
    }

    fn check_key(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "The tenant API requires `Authorization: Bearer <platform key>`".to_owned(),
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(token) = token else {
            return Err(ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authorization header must be `Bearer <platform key>`".to_owned(),
            ));
        };
        let digest = crate::routes::token_digest(token);
        if bool::from(digest.ct_eq(&self.key_digest)) {
            Ok(())
        } else {
            Err(ApiError(
                StatusCode::FORBIDDEN,
                "forbidden",
                "This is not the platform key".to_owned(),
            ))
        }
    }

    async fn admin_client(&self) -> Result<sovra_pg::PooledClient, String> {
        self.admin_pool.get().await.map_err(|err| err.to_string())
    }

    /// Loads tenant `name` from the registry.
    pub async fn record(&self, name: &str) -> Result<Option<TenantRecord>, String> {
        let client = self.admin_client().await?;
        self.count_registry_read();
        let row = client
            .query_opt(
                "select name, database::text, state = 'suspended', settings, keys, api_keys,
                        to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        database_url
                   from sovra.tenants where name = $1",
                &[&name],
            )
            .await
            .map_err(|err| db_error(&err))?;
        row.map(|row| self.record_of(&row)).transpose()
    }

    async fn records(&self) -> Result<Vec<TenantRecord>, String> {
        let client = self.admin_client().await?;
        self.count_registry_read();
        let rows = client
            .query(
                "select name, database::text, state = 'suspended', settings, keys, api_keys,
                        to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                        database_url
                   from sovra.tenants order by name",
                &[],
            )
            .await
            .map_err(|err| db_error(&err))?;
        rows.iter().map(|row| self.record_of(row)).collect()
    }

    /// The tenant named `name`, built on first use.
    pub async fn tenant(&self, name: &str) -> Result<Arc<Tenant>, Lookup> {
        let cell = self
            .live
            .lock()
            .ok()
            .and_then(|live| live.get(name).cloned());
        if let Some(tenant) = cell.as_ref().and_then(|cell| cell.get()) {
            return Ok(tenant.clone());
        }
        if !self.may_exist(name).await.map_err(Lookup::Failed)? {
            return Err(Lookup::NotFound);
        }
        let Some(record) = self.record(name).await.map_err(Lookup::Failed)? else {
            // Deleted through another instance since the names were read.
            self.note_name(name, false);
            return Err(Lookup::NotFound);
        };
        if record.suspended {
            return Err(Lookup::Suspended);
        }
        if self
            .upgrading
            .lock()
            .is_ok_and(|pending| pending.as_ref().is_some_and(|p| p.contains(name)))
        {
            return Err(Lookup::Failed(format!("tenant {name} is being migrated")));
        }
        let cell = match self.live.lock() {
            Ok(mut live) => live.entry(name.to_owned()).or_default().clone(),
            Err(_) => return Err(Lookup::Failed("tenant table poisoned".to_owned())),
        };
        let tenant = cell
            .get_or_try_init(|| self.build(&record))
            .await
            .map_err(Lookup::Failed)?;
        Ok(tenant.clone())
    }

    /// The platform configuration with a tenant's settings applied.
    fn tenant_config(&self, settings: &TenantSettings) -> Config {
        let mut config = self.config.clone();
        if let Some(site) = &settings.site_url {
            config.auth.site_url = Some(site.clone());
        }
        if let Some(urls) = &settings.redirect_urls {
            config.auth.redirect_urls = Some(urls.join(","));
        }
        if let Some(on) = settings.email_autoconfirm {
            config.auth.email_autoconfirm = on;
        }
        if let Some(on) = settings.disable_signup {
            config.auth.disable_signup = on;
        }
        if let Some(on) = settings.require_apikey {
            config.server.require_apikey = on;
        }
        if let Some(on) = settings.mcp_allow_writes {
            config.mcp.allow_writes = on;
        }
        if let Some(n) = settings.pool_size {
            config.database.pool_size = n;
        }
        if let Some(n) = settings.realtime_max_connections {
            config.realtime.max_connections = n;
        }
        if let Some(n) = settings.storage_file_size_limit {
            config.storage.file_size_limit = n;
        }
        if let Some(n) = settings.realtime_max_channels_per_connection {
            config.realtime.max_channels_per_connection = n;
        }
        if let Some(url) = &settings.smtp_url {
            config.auth.smtp_url = Some(url.clone());
        }
        if let Some(from) = &settings.smtp_from {
            config.auth.smtp_from.clone_from(from);
        }
        // Checked when they were set (`check_settings`).
        let _ = settings.apply_auth(&mut config.auth);
        // Tenants never share NATS subjects with the default tenant: the
        // subject carries the tenant's name (see `build_services`).
        config
    }

    /// The quotas of a tenant with these settings: its own, else the
    /// platform's defaults for tenants.
    fn quotas(&self, name: &str, settings: &TenantSettings) -> crate::tenant::TenantQuotas {
        let server = &self.config.server;
        let small = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        crate::tenant::TenantQuotas {
            metrics_label: Some(name.to_owned()),
            storage_max_bytes: settings
                .storage_max_bytes
                .unwrap_or(server.tenant_storage_max_bytes),
            realtime_events_per_second: small(
                settings
                    .realtime_events_per_second
                    .unwrap_or(server.tenant_realtime_events_per_second),
            ),
            mails_per_hour: small(
                settings
                    .mails_per_hour
                    .unwrap_or(server.tenant_mails_per_hour),
            ),
            max_concurrent_requests: usize::try_from(
                settings
                    .max_concurrent_requests
                    .unwrap_or(server.tenant_max_concurrent_requests),
            )
            .unwrap_or(usize::MAX),
        }
    }

    /// The database size quota of a tenant with these settings (0: none).
    fn database_max_bytes(&self, settings: &TenantSettings) -> u64 {
        settings
            .database_max_bytes
            .unwrap_or(self.config.server.tenant_database_max_bytes)
    }

    /// The administrative login on a tenant's database: its own URL's, or
    /// the platform's on its cloned database.
    fn admin_on(&self, record: &TenantRecord) -> Result<tokio_postgres::Config, String> {
        match &record.database_url {
            Some(url) => url
                .parse::<tokio_postgres::Config>()
                .map_err(|err| format!("the tenant's database_url: {err}")),
            None => {
                let mut config = self.admin.clone();
                config.dbname(&record.database);
                Ok(config)
            }
        }
    }

    /// Login settings of role `user` on `base`'s database, starting as
    /// `role`.
    async fn login(
        &self,
        base: &tokio_postgres::Config,
        user: &str,
        role: &str,
        extra: &str,
    ) -> Result<tokio_postgres::Config, String> {
        let client = self.admin_client().await?;
        let row = client
            .query_opt(
                "select tenant, password from sovra.tenant_logins where role = $1",
                &[&user],
            )
            .await
            .map_err(|err| db_error(&err))?
            .ok_or_else(|| format!("no login secret for {user}"))?;
        let tenant: String = row.get(0);
        let stored: String = row.get(1);
        let password = crate::tenant_secrets::open(
            &self.secrets,
            &tenant,
            &login_field(user),
            &stored,
        )
        .map_err(|damaged| {
            format!(
                "tenant {tenant}: its sealed {} did not open (damaged, or sealed under a tenant secrets key this server does not have: see `server.tenant_secrets_key`)",
                damaged.0
            )
        })?;
        let mut login = base.clone();
        login
            .user(user)
            .password(password)
            .application_name("sovra")
            .options(format!("-c role={role}{extra}"));
        Ok(login)
    }

    async fn build(&self, record: &TenantRecord) -> Result<Arc<Tenant>, String> {
        if let Some(damage) = record.damage() {
            return Err(damage);
        }
        let config = self.tenant_config(&record.settings);
        let mut timeout = record
            .settings
            .statement_timeout_ms
            .map(|ms| format!(" -c statement_timeout={ms}"))
            .unwrap_or_default();
        // Over its database size quota: every session of its API is
        // read-only (PostgreSQL refuses writes with 25006).
        let read_only = self
            .read_only
            .lock()
            .is_ok_and(|set| set.contains(&record.name));
        let read_only = if read_only {
            " -c default_transaction_read_only=on"
        } else {
            ""
        };
        timeout.push_str(read_only);
        let started = std::time::Instant::now();
        let service = self.admin_on(record)?;
        let rest_login = format!("{}_rest", database_name(&record.name));
        let auth_login = format!("{}_auth", database_name(&record.name));
        let (requests, auth_db) = tokio::try_join!(
            self.login(
                &service,
                &rest_login,
                sovra_pg::logins::AUTHENTICATOR,
                &timeout,
            ),
            self.login(
                &service,
                &auth_login,
                sovra_pg::logins::AUTH_ADMIN,
                read_only,
            )
        )?;
        let store = KeyStore {
            keys: record.keys.clone(),
        };
        let keyset = KeySet::new(&store, None, config.jwt.audience.clone())
            .map_err(|err| err.to_string())?
            .with_project_ref(&record.name);
        let url = self.tenant_url(&record.name);
        let mut auth = crate::serve::auth_config(&config).map_err(|err| err.to_string())?;
        auth.external_url.clone_from(&url);
        if config.auth.site_url.is_none() {
            auth.site_url.clone_from(&url);
        }
        auth.key_file = None;
        auth.shared_secret = store
            .active()
            .map(|key| sovra_auth::secret::Redacted(key.secret.clone()));
        auth.mailbox_dir = config.data_dir.join("mailbox").join(&record.name);
        let tenant = crate::serve::build_services(
            &config,
            crate::serve::TenantParts {
                id: record.name.clone(),
                requests,
                auth_db,
                service: service.clone(),
                keys: ProjectKeys {
                    keyset,
                    api: record.api_keys.clone(),
                    created: false,
                },
                auth,
                quotas: self.quotas(&record.name, &record.settings),
            },
        )
        .await
        .map_err(|err| err.to_string())?;
        tenant.auth.set_external_url(&url);
        if let Ok(mut buckets) = self.buckets.lock() {
            match record.settings.requests_per_second {
                Some(rate) => {
                    buckets.insert(
                        record.name.clone(),
                        rate::Bucket::new(rate, std::time::Instant::now()),
                    );
                }
                None => {
                    buckets.remove(&record.name);
                }
            }
        }
        // The change feed starts with the first subscriber: a tenant
        // nobody listens to holds no replication slot reader.
        tenant.realtime.set_feed_source(service);
        tenant.realtime.wait_for_slot_on_first_join();
        tracing::info!(
            tenant = %record.name,
            start_ms = started.elapsed().as_secs_f64() * 1000.0,
            "tenant started"
        );
        Ok(Arc::new(tenant))
    }

    /// Notes a request of tenant `name` (for the idle sweep).
    fn touch(&self, name: &str) {
        if let Ok(mut used) = self.last_used.lock() {
            match used.get_mut(name) {
                Some(at) => *at = std::time::Instant::now(),
                None => {
                    used.insert(name.to_owned(), std::time::Instant::now());
                }
            }
        }
    }

    /// Stops the started tenants that had no request for `idle` and have no
    /// realtime connection and no active cron job; returns how many it stopped. Their next request
    /// starts them again.
    pub fn stop_idle(&self, idle: Duration) -> usize {
        let now = std::time::Instant::now();
        let idle_names: Vec<String> = match self.last_used.lock() {
            Ok(used) => used
                .iter()
                .filter(|(_, at)| now.duration_since(**at) >= idle)
                .map(|(name, _)| name.clone())
                .collect(),
            Err(_) => return 0,
        };
        let mut stopped = 0;
        for name in idle_names {
            let busy = self
                .live
                .lock()
                .ok()
                .and_then(|live| live.get(&name).and_then(|cell| cell.get().cloned()))
                .is_some_and(|tenant| {
                    tenant.realtime.connections() > 0
                        || tenant.cron.as_ref().is_some_and(|c| c.has_jobs())
                });
            if busy {
                continue;
            }
            if let Ok(mut used) = self.last_used.lock() {
                used.remove(&name);
            }
            self.evict(&name, "idle");
            stopped += 1;
        }
        stopped
    }

    /// Stops idle tenants every `idle / 2` (at most every minute).
    pub fn spawn_idle_sweep(self: &Arc<Self>, idle: Duration) {
        let platform = Arc::downgrade(self);
        let every = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(platform) = platform.upgrade() else {
                    return;
                };
                let stopped = platform.stop_idle(idle);
                if stopped > 0 {
                    tracing::debug!(stopped, "stopped idle tenants");
                }
                // Tenants made or deleted through other instances.
                if let Err(err) = platform.refresh_names().await {
                    tracing::debug!(error = %err, "reading the tenant names failed");
                }
            }
        });
    }

    /// Whether tenant `name` may make one more request now (its
    /// `requests_per_second` quota, when it has one), and how to refuse it
    /// when not ([`rate`]).
    fn admit_request(&self, name: &str) -> rate::Admission {
        let Ok(mut buckets) = self.buckets.lock() else {
            return rate::Admission::Serve;
        };
        match buckets.get_mut(name) {
            Some(bucket) => bucket.admit(std::time::Instant::now()),
            None => rate::Admission::Serve,
        }
    }

    /// Stops tenant `name` if it runs here: closes its realtime connections
    /// and its pools. Requests in flight finish on what they hold.
    pub fn evict(&self, name: &str, reason: &str) {
        let cell = self.live.lock().ok().and_then(|mut live| live.remove(name));
        if let Some(tenant) = cell.and_then(|cell| cell.get().cloned()) {
            tenant.realtime.disconnect_all(reason);
            tenant.pool.close();
            tenant.auth.pool().close();
        }
    }

    /// Makes the template database when missing (migrated, `CONNECT`
    /// revoked from `PUBLIC`) and locks the platform database down to its
    /// own logins, once per process.
    async fn ensure_template(&self) -> Result<(), String> {
        let mut ready = self.template_ready.lock().await;
        if *ready {
            return Ok(());
        }
        let client = self.admin_client().await?;
        let exists = client
            .query_one(
                "select exists (select 1 from pg_database where datname = $1)",
                &[&self.template],
            )
            .await
            .map_err(|err| db_error(&err))?
            .get::<_, bool>(0);
        let template = quote(&self.template);
        if !exists {
            match client
                .batch_execute(&format!("create database {template}"))
                .await
            {
                Ok(()) => {}
                // Another instance made it meanwhile.
                Err(err)
                    if err.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
                }
                Err(err) => return Err(db_error(&err)),
            }
        }
        {
            // Migrations touch cluster-wide objects (roles, grants to
            // them): one database at a time, across the instances of the
            // platform (advisory lock in its database) and in-process.
            let _serial = MIGRATING.lock().await;
            let lock = self.admin_client().await?;
            lock.execute("select pg_advisory_lock($1)", &[&MIGRATE_LOCK])
                .await
                .map_err(|err| db_error(&err))?;
            let mut config = self.admin.clone();
            config.dbname(&self.template);
            let mut template_client = sovra_pg::connect_one(&config)
                .await
                .map_err(|err| db_error(&err))?;
            let migrated = sovra_pg::migrate(&mut template_client)
                .await
                .map_err(|err| err.to_string());
            let _ = lock
                .execute("select pg_advisory_unlock($1)", &[&MIGRATE_LOCK])
                .await;
            migrated?;
        }
        let platform = quote(&self.platform_db);
        client
            .batch_execute(&format!(
                "revoke connect on database {template} from public;
                 revoke connect on database {platform} from public;
                 grant connect on database {platform} to authenticator, supabase_auth_admin, current_user"
            ))
            .await
            .map_err(|err| db_error(&err))?;
        // Cloning needs the template without connections; ours may still
        // be closing.
        for _ in 0..200 {
            let busy = client
                .query_one(
                    "select count(*) from pg_stat_activity where datname = $1",
                    &[&self.template],
                )
                .await
                .map_err(|err| db_error(&err))?
                .get::<_, i64>(0);
            if busy == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        *ready = true;
        Ok(())
    }

    /// How many tenant databases the start-up upgrade still has to
    /// migrate (`None` when it is not running).
    pub fn upgrade_pending(&self) -> Option<usize> {
        self.upgrading
            .lock()
            .ok()
            .and_then(|pending| pending.as_ref().map(std::collections::HashSet::len))
    }

    /// Migrates the template and every tenant database, `parallel` at a
    /// time; `/ready` reports the databases left until it is done, and a
    /// tenant answers 503 until its own database is current. Resumable:
    /// each database records what it applied, so a restart continues.
    pub async fn upgrade(self: &Arc<Self>, parallel: usize) -> Result<(), String> {
        let records = self.records().await?;
        if records.is_empty() {
            // A server without tenants keeps no template and leaves its
            // database's CONNECT rights alone until the first tenant.
            return Ok(());
        }
        if let Ok(mut pending) = self.upgrading.lock() {
            *pending = Some(records.iter().map(|r| r.name.clone()).collect());
        }
        let template = self.ensure_template().await;
        let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        for record in records {
            let platform = self.clone();
            let semaphore = semaphore.clone();
            tasks.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                let result = match platform.admin_on(&record) {
                    Ok(config) => platform.migrate_database(&config).await,
                    Err(err) => Err(err),
                };
                if let Err(err) = &result {
                    tracing::error!(tenant = %record.name, error = %err, "migrating a tenant database failed");
                } else if let Ok(mut pending) = platform.upgrading.lock()
                    && let Some(pending) = pending.as_mut()
                {
                    pending.remove(&record.name);
                }
                result
            });
        }
        let mut failed = 0;
        while let Some(done) = tasks.join_next().await {
            if !matches!(done, Ok(Ok(()))) {
                failed += 1;
            }
        }
        template?;
        if failed > 0 {
            return Err(format!(
                "{failed} tenant databases could not be migrated; they answer 503 until a restart migrates them"
            ));
        }
        if let Ok(mut pending) = self.upgrading.lock() {
            *pending = None;
        }
        Ok(())
    }

    /// Applies pending migrations to one tenant database. Statements on
    /// cluster-wide objects (roles) that collide with another database's
    /// migration are retried after it.
    async fn migrate_database(&self, config: &tokio_postgres::Config) -> Result<(), String> {
        let database = config.get_dbname().unwrap_or_default();
        let mut last = String::new();
        for attempt in 0..5u64 {
            let mut client = sovra_pg::connect_one(config)
                .await
                .map_err(|err| db_error(&err))?;
            match sovra_pg::migrate(&mut client).await {
                Ok(report) => {
                    if !report.applied.is_empty() {
                        tracing::info!(%database, applied = ?report.applied, "migrated a tenant database");
                    }
                    return Ok(());
                }
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
        }
        Err(last)
    }

    /// Creates tenant `name`: roles, registry row, then its database.
    pub async fn create(
        &self,
        name: &str,
    ) -> Result<(TenantRecord, crate::opaque_keys::NewPair), (StatusCode, String)> {
        let internal = |message: String| (StatusCode::INTERNAL_SERVER_ERROR, message);
        validate_name(name).map_err(|m| (StatusCode::BAD_REQUEST, m))?;
        if self.record(name).await.map_err(internal)?.is_some() {
            return Err((
                StatusCode::CONFLICT,
                format!("a tenant named {name:?} exists"),
            ));
        }
        self.ensure_template().await.map_err(internal)?;
        let database = database_name(name);
        let rest = format!("{database}_rest");
        let auth = format!("{database}_auth");
        let store = KeyStore::generate(now());
        let keyset = KeySet::new(&store, None, self.config.jwt.audience.clone())
            .map_err(|err| internal(err.to_string()))?
            .with_project_ref(name);
        let mut api = mint(&keyset, &self.config.jwt.issuer).map_err(internal)?;
        // Supabase's opaque keys, of this tenant only: their digests are
        // stored, the keys are shown in this answer once.
        let opaque = crate::opaque_keys::generate(now());
        api.opaque.clone_from(&opaque.stored);
        let (keys, api_keys) = self.sealed_keys(name, &store, &api).map_err(internal)?;
        let logins = [&rest, &auth].map(|role| (role.clone(), new_password()));
        let sealed_logins = self.sealed_logins(name, &logins).map_err(internal)?;
        let mut client = self.admin_client().await.map_err(internal)?;
        create_login_roles(&client, name, &rest, &auth).await?;
        let registered = async {
            let tx = client.transaction().await?;
            tx.execute(
                "insert into sovra.tenants (name, database, keys, api_keys) values ($1, $2, $3, $4)",
                &[&name, &database, &keys, &api_keys],
            )
            .await?;
            for (role, sealed) in &sealed_logins {
                tx.execute(
                    "insert into sovra.tenant_logins (role, tenant, password) values ($1, $2, $3)",
                    &[role, &name, sealed],
                )
                .await?;
            }
            set_login_passwords(&tx, &logins).await?;
            tx.commit().await
        }
        .await;
        // Whether the database is ours to drop if a later step fails (one
        // of that name made by someone else is never dropped).
        let mut db_made = false;
        let cloned = match registered {
            Ok(()) => {
                let db = quote(&database);
                // CREATE DATABASE cannot run in a transaction block: alone.
                match client
                    .batch_execute(&format!(
                        "create database {db} template {}",
                        quote(&self.template)
                    ))
                    .await
                {
                    Ok(()) => {
                        db_made = true;
                        client
                            .batch_execute(&format!(
                                "revoke connect on database {db} from public;
                                 grant connect on database {db} to {}, {}",
                                quote(&rest),
                                quote(&auth),
                            ))
                            .await
                    }
                    Err(err) => Err(err),
                }
            }
            Err(err) => Err(err),
        };
        if let Err(err) = cloned {
            let conflict = err.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE)
                || err.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION);
            let message = db_error(&err);
            if db_made {
                let _ = self.drop_everything(name, &database).await;
            } else {
                let _ = self.drop_logins(name, &database).await;
            }
            return Err(if conflict {
                (
                    StatusCode::CONFLICT,
                    format!("a tenant named {name:?} exists"),
                )
            } else {
                internal(message)
            });
        }
        self.note_name(name, true);
        tracing::info!(tenant = %name, %database, "tenant created");
        let record = self
            .record(name)
            .await
            .map_err(internal)?
            .ok_or_else(|| internal("the new tenant vanished".to_owned()))?;
        Ok((record, opaque))
    }

    /// Creates tenant `name` in the database `url` names (a PostgreSQL URL
    /// or connection string of a user that may create roles there): it
    /// is migrated in place, gets the tenant's login roles on that server,
    /// and `CONNECT` on it is revoked from `PUBLIC`. Deleting the tenant
    /// leaves that database (it is the operator's) and drops the roles.
    pub async fn create_external(
        &self,
        name: &str,
        url: &str,
    ) -> Result<(TenantRecord, crate::opaque_keys::NewPair), (StatusCode, String)> {
        let internal = |message: String| (StatusCode::INTERNAL_SERVER_ERROR, message);
        let bad = |message: String| (StatusCode::BAD_REQUEST, message);
        validate_name(name).map_err(bad)?;
        let external: tokio_postgres::Config = url.parse().map_err(|_| {
            bad("database_url: not a PostgreSQL URL or connection string".to_owned())
        })?;
        let Some(database) = external.get_dbname().map(str::to_owned) else {
            return Err(bad("database_url: must name a database".to_owned()));
        };
        if database == self.platform_db || database == self.template {
            return Err((
                StatusCode::CONFLICT,
                format!("database {database:?} is the platform's own"),
            ));
        }
        if self.record(name).await.map_err(internal)?.is_some() {
            return Err((
                StatusCode::CONFLICT,
                format!("a tenant named {name:?} exists"),
            ));
        }
        let mut ext = sovra_pg::connect_one(&external)
            .await
            .map_err(|err| bad(format!("database_url: cannot connect: {}", db_error(&err))))?;
        {
            // Cluster-wide objects (roles): one database at a time here.
            let _serial = MIGRATING.lock().await;
            sovra_pg::migrate(&mut ext)
                .await
                .map_err(|err| internal(err.to_string()))?;
        }
        let rest = format!("{}_rest", database_name(name));
        let auth = format!("{}_auth", database_name(name));
        let store = KeyStore::generate(now());
        let keyset = KeySet::new(&store, None, self.config.jwt.audience.clone())
            .map_err(|err| internal(err.to_string()))?
            .with_project_ref(name);
        let mut api = mint(&keyset, &self.config.jwt.issuer).map_err(internal)?;
        let opaque = crate::opaque_keys::generate(now());
        api.opaque.clone_from(&opaque.stored);
        let (keys, api_keys) = self.sealed_keys(name, &store, &api).map_err(internal)?;
        let sealed_url = crate::tenant_secrets::seal(&self.secrets, name, "database_url", url)
            .map_err(internal)?;
        let logins = [&rest, &auth].map(|role| (role.clone(), new_password()));
        let sealed_logins = self.sealed_logins(name, &logins).map_err(internal)?;
        create_login_roles(&ext, name, &rest, &auth).await?;
        let made = async {
            let mut client = self.admin_client().await?;
            let tx = client.transaction().await.map_err(|err| db_error(&err))?;
            tx.execute(
                "insert into sovra.tenants (name, database, keys, api_keys, database_url)
                 values ($1, $2, $3, $4, $5)",
                &[&name, &database, &keys, &api_keys, &sealed_url],
            )
            .await
            .map_err(|err| db_error(&err))?;
            for (role, sealed) in &sealed_logins {
                tx.execute(
                    "insert into sovra.tenant_logins (role, tenant, password) values ($1, $2, $3)",
                    &[role, &name, sealed],
                )
                .await
                .map_err(|err| db_error(&err))?;
            }
            let etx = ext.transaction().await.map_err(|err| db_error(&err))?;
            set_login_passwords(&etx, &logins)
                .await
                .map_err(|err| db_error(&err))?;
            etx.batch_execute(&format!(
                "revoke connect on database {db} from public;
                 grant connect on database {db} to {rest}, {auth}",
                db = quote(&database),
                rest = quote(&rest),
                auth = quote(&auth),
            ))
            .await
            .map_err(|err| db_error(&err))?;
            etx.commit().await.map_err(|err| db_error(&err))?;
            tx.commit().await.map_err(|err| db_error(&err))
        }
        .await;
        if let Err(message) = made {
            let _ = self.drop_external_logins(&external, &rest, &auth).await;
            let _ = self.drop_logins(name, &database_name(name)).await;
            let conflict = message.contains("duplicate key");
            return Err(if conflict {
                (
                    StatusCode::CONFLICT,
                    format!("a tenant named {name:?} or one in database {database:?} exists"),
                )
            } else {
                internal(message)
            });
        }
        self.note_name(name, true);
        tracing::info!(tenant = %name, %database, "tenant created in its own database");
        let record = self
            .record(name)
            .await
            .map_err(internal)?
            .ok_or_else(|| internal("the new tenant vanished".to_owned()))?;
        Ok((record, opaque))
    }

    /// Drops a tenant's login roles (and their connections and its slots)
    /// on the server of its own database, which stays.
    async fn drop_external_logins(
        &self,
        external: &tokio_postgres::Config,
        rest: &str,
        auth: &str,
    ) -> Result<(), String> {
        let database = external.get_dbname().unwrap_or_default().to_owned();
        let client = sovra_pg::connect_one(external)
            .await
            .map_err(|err| db_error(&err))?;
        client
            .execute(
                "select pg_terminate_backend(pid) from pg_stat_activity
                  where usename = any($1) and pid <> pg_backend_pid()",
                &[&vec![rest.to_owned(), auth.to_owned()]],
            )
            .await
            .map_err(|err| db_error(&err))?;
        // Its change feed's slot (`<prefix>_<database>`).
        let prefix = format!("{}_", sovra_realtime::RealtimeConfig::default().slot_name);
        let _ = client
            .execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots
                  where database = $1 and starts_with(slot_name, $2) and not active",
                &[&database, &prefix],
            )
            .await;
        client
            .batch_execute(&format!(
                "revoke connect on database {db} from {rest}, {auth};
                 drop role if exists {rest}; drop role if exists {auth}",
                db = quote(&database),
                rest = quote(rest),
                auth = quote(auth),
            ))
            .await
            .map_err(|err| db_error(&err))
    }

    /// Drops what tenant `name` has in PostgreSQL: connections, slots,
    /// database, login roles and registry row.
    async fn drop_everything(&self, name: &str, database: &str) -> Result<(), String> {
        let client = self.admin_client().await?;
        for _ in 0..50 {
            client
                .execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
                    &[&database],
                )
                .await
                .map_err(|err| db_error(&err))?;
            let remaining: i64 = client
                .query_one(
                    "select count(*) from (select pg_drop_replication_slot(slot_name)
                       from pg_replication_slots where database = $1 and not active) d",
                    &[&database],
                )
                .await
                .map_err(|err| db_error(&err))
                .and(Ok(0))?;
            let left: i64 = client
                .query_one(
                    "select count(*) from pg_replication_slots where database = $1",
                    &[&database],
                )
                .await
                .map_err(|err| db_error(&err))?
                .get(0);
            if left + remaining == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client
            .batch_execute(&format!(
                "drop database if exists {} with (force)",
                quote(database)
            ))
            .await
            .map_err(|err| db_error(&err))?;
        self.drop_logins(name, database).await
    }

    /// Drops tenant `name`'s login roles and registry row.
    async fn drop_logins(&self, name: &str, database: &str) -> Result<(), String> {
        let client = self.admin_client().await?;
        client
            .execute("delete from sovra.tenants where name = $1", &[&name])
            .await
            .map_err(|err| db_error(&err))?;
        client
            .batch_execute(&format!(
                "drop role if exists {}; drop role if exists {}",
                quote(&format!("{database}_rest")),
                quote(&format!("{database}_auth"))
            ))
            .await
            .map_err(|err| db_error(&err))?;
        Ok(())
    }

    /// Deletes tenant `name`: its connections, database, roles, files,
    /// slot and registry row. `false`: there was no such tenant.
    pub async fn delete(&self, name: &str) -> Result<bool, String> {
        let Some(record) = self.record(name).await? else {
            return Ok(false);
        };
        self.evict(name, "this tenant was deleted");
        if record.database_url.is_some() {
            let external = self.admin_on(&record)?;
            let base = database_name(name);
            self.drop_external_logins(&external, &format!("{base}_rest"), &format!("{base}_auth"))
                .await?;
            self.drop_logins(name, &base).await?;
        } else {
            self.drop_everything(name, &record.database).await?;
        }
        self.note_name(name, false);
        if self.config.storage.backend == "s3" {
            // Every object under the tenant's prefix of the bucket.
            let storage = crate::serve::storage_config(&self.config);
            let removed = match sovra_storage::Backend::open(&storage.backend, name, 1) {
                Ok(backend) => backend.delete_all().await,
                Err(err) => Err(err),
            };
            match removed {
                Ok(files) => tracing::info!(tenant = %name, files, "removed the tenant's files"),
                Err(err) => {
                    tracing::warn!(tenant = %name, error = %err, "could not remove the tenant's files");
                }
            }
        } else {
            let root = self
                .config
                .storage
                .path
                .clone()
                .unwrap_or_else(|| self.config.data_dir.join("storage"));
            let dir = root.join(name);
            if dir.exists()
                && let Err(err) = std::fs::remove_dir_all(&dir)
            {
                tracing::warn!(tenant = %name, error = %err, "could not remove the tenant's files");
            }
        }
        tracing::info!(tenant = %name, "tenant deleted");
        Ok(true)
    }

    async fn set_state(&self, name: &str, suspended: bool) -> Result<bool, String> {
        let client = self.admin_client().await?;
        let state = if suspended { "suspended" } else { "active" };
        let n = client
            .execute(
                "update sovra.tenants set state = $2, updated_at = now() where name = $1",
                &[&name, &state],
            )
            .await
            .map_err(|err| db_error(&err))?;
        if suspended {
            self.evict(name, "this tenant was suspended");
        }
        Ok(n > 0)
    }

    /// Whether `patch` over tenant `name`'s settings makes a configuration
    /// Sovra accepts (providers and hooks are checked as the options of
    /// the same names): `Failed` with the reason when not.
    async fn check_settings(&self, name: &str, patch: &TenantSettings) -> Result<(), Lookup> {
        if patch.external.is_none() && patch.hooks.is_none() {
            return Ok(());
        }
        let record = self
            .record(name)
            .await
            .map_err(Lookup::Failed)?
            .ok_or(Lookup::NotFound)?;
        let merged = record.settings.merged(patch);
        merged
            .apply_auth(&mut self.config.auth.clone())
            .map_err(Lookup::Failed)?;
        let config = self.tenant_config(&merged);
        config
            .validate()
            .map_err(|err| Lookup::Failed(err.to_string()))?;
        crate::serve::external_providers(&config.auth.external)
            .map_err(|err| Lookup::Failed(err.to_string()))?;
        Ok(())
    }

    async fn update(
        &self,
        name: &str,
        patch: TenantPatch,
    ) -> Result<Option<(TenantRecord, Option<crate::opaque_keys::NewPair>)>, ApiError> {
        let internal =
            |message: String| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "internal", message);
        let Some(record) = self.record(name).await.map_err(internal)? else {
            return Ok(None);
        };
        // Writing would replace what did not open with nothing.
        if let Some(damage) = record.damage() {
            return Err(ApiError(StatusCode::CONFLICT, "tenant_damaged", damage));
        }
        self.write_update(name, record, patch)
            .await
            .map_err(internal)
    }

    async fn write_update(
        &self,
        name: &str,
        record: TenantRecord,
        patch: TenantPatch,
    ) -> Result<Option<(TenantRecord, Option<crate::opaque_keys::NewPair>)>, String> {
        let settings = record.settings.merged(&patch.settings);
        let client = self.admin_client().await?;
        let settings_json = crate::tenant_secrets::seal_settings(
            &self.secrets,
            name,
            serde_json::to_value(&settings).unwrap_or_default(),
        )?;
        let opaque = patch
            .rotate_opaque_keys
            .then(|| crate::opaque_keys::generate(now()));
        if let Some(pair) = &opaque {
            let mut api = record.api_keys.clone();
            api.opaque.clone_from(&pair.stored);
            let api = crate::tenant_secrets::seal_json(
                &self.secrets,
                name,
                "api_keys",
                &serde_json::to_value(&api).unwrap_or_default(),
            )?;
            client
                .execute(
                    "update sovra.tenants set api_keys = $2, updated_at = now() where name = $1",
                    &[&name, &api],
                )
                .await
                .map_err(|err| db_error(&err))?;
        }
        if let Some(secret) = &patch.jwt_secret {
            let store = KeyStore::from_secret(secret, now());
            let keyset = KeySet::new(&store, None, self.config.jwt.audience.clone())
                .map_err(|err| err.to_string())?
                .with_project_ref(name);
            let mut api = mint(&keyset, &self.config.jwt.issuer)?;
            // Opaque keys stand for the roles, not for a signing key.
            api.opaque = match &opaque {
                Some(pair) => pair.stored.clone(),
                None => record.api_keys.opaque.clone(),
            };
            let (keys, api) = self.sealed_keys(name, &store, &api)?;
            client
                .execute(
                    "update sovra.tenants set settings = $2, keys = $3, api_keys = $4, updated_at = now() where name = $1",
                    &[&name, &settings_json, &keys, &api],
                )
                .await
                .map_err(|err| db_error(&err))?;
        } else {
            client
                .execute(
                    "update sovra.tenants set settings = $2, updated_at = now() where name = $1",
                    &[&name, &settings_json],
                )
                .await
                .map_err(|err| db_error(&err))?;
        }
        if let Some(ms) = settings.statement_timeout_ms {
            // The request prologue applies the API roles' own settings, the
            // database-specific ones last (as PostgREST does): the quota is
            // a setting of those roles in this tenant's database only.
            let db = quote(&record.database);
            client
                .batch_execute(&format!(
                    "alter role anon in database {db} set statement_timeout = '{ms}ms';
                     alter role authenticated in database {db} set statement_timeout = '{ms}ms';
                     alter role service_role in database {db} set statement_timeout = '{ms}ms'"
                ))
                .await
                .map_err(|err| db_error(&err))?;
            // REST keeps role settings in its schema cache: every node's
            // cache for this tenant reloads (this node's is evicted below
            // anyway). Best effort: a node that misses it has the tenant
            // evicted or reloaded by its next schema change.
            if let Ok(config) = self.admin_on(&record)
                && let Ok(tenant_db) = sovra_pg::connect_one(&config).await
                && let Err(err) = tenant_db
                    .batch_execute("notify pgrst, 'reload config'")
                    .await
            {
                tracing::warn!(tenant = %name, error = %err, "could not ask for a schema cache reload");
            }
        }
        // The next request builds it again with the new settings.
        self.evict(name, "this tenant's settings changed");
        Ok(self.record(name).await?.map(|record| (record, opaque)))
    }

    fn view(&self, record: &TenantRecord) -> Value {
        let mut value = json!({
            "name": record.name,
            "url": self.tenant_url(&record.name),
            "database": record.database,
            "state": if record.suspended { "suspended" } else { "active" },
            "anon_key": record.api_keys.anon,
            "service_role_key": record.api_keys.service_role,
            "settings": shown_settings(&record.settings),
            "own_database": record.database_url.is_some(),
            "read_only": self.is_read_only(&record.name),
            "created_at": record.created_at,
        });
        if !record.damaged.is_empty() {
            // Which sealed fields did not open, never their values.
            value["damaged"] = json!(record.damaged);
        }
        if let Some(domain) = self.config.base_domain() {
            let scheme = if self
                .public_url
                .read()
                .is_ok_and(|u| u.starts_with("https://"))
            {
                "https"
            } else {
                "http"
            };
            value["host_url"] = json!(format!("{scheme}://{}.{domain}", record.name));
        }
        value
    }
}

/// Settings as the tenant API shows them: the password of `smtp_url`
/// (its user-info part) is never shown.
fn shown_settings(settings: &TenantSettings) -> TenantSettings {
    let mut shown = settings.clone();
    if let Some(external) = &mut shown.external {
        for provider in external.values_mut() {
            *provider = provider.masked();
        }
    }
    if let Some(hooks) = &mut shown.hooks {
        for hook in hooks.values_mut() {
            hook.secrets = mask(&hook.secrets);
        }
    }
    if let Some(url) = &mut shown.smtp_url
        && let Some((scheme, rest)) = url.split_once("://")
        && let Some((userinfo, host)) = rest.rsplit_once('@')
    {
        let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
        *url = format!("{scheme}://{user}:********@{host}");
    }
    shown
}

/// The field of login role `role`'s password (its associated data).
fn login_field(role: &str) -> String {
    format!("login.{role}")
}

/// A new login password: 64 hex digits (244 random bits).
fn new_password() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Sets the passwords of login roles in `tx`'s cluster. PostgreSQL gets
/// only their SCRAM-SHA-256 verifiers (what it keeps anyway), as bound
/// values into a temporary table, set from there: the passwords are in
/// no statement, parameter or server log.
async fn set_login_passwords(
    tx: &tokio_postgres::Transaction<'_>,
    logins: &[(String, String)],
) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(
        "create temporary table sovra_tenant_login (role name, password text) on commit drop",
    )
    .await?;
    for (role, password) in logins {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        tx.execute(
            "insert into pg_temp.sovra_tenant_login values ($1, $2)",
            &[role, &verifier],
        )
        .await?;
    }
    tx.batch_execute(
        "do $$ declare r record; begin
           for r in select * from pg_temp.sovra_tenant_login loop
             execute format('alter role %I with login password %L', r.role, r.password);
           end loop;
         end $$;
         drop table pg_temp.sovra_tenant_login",
    )
    .await
}

/// Serialises the start-up sealing pass across the platform's instances
/// ("sovra_ts").
const SEAL_LOCK: i64 = 0x736f_7672_615f_7473;

/// What the start-up sealing pass did ([`Platform::seal_registry`]).
#[derive(Clone, Debug, Default)]
pub struct SealReport {
    /// Plaintext values sealed.
    pub sealed: usize,
    /// Values sealed again under the current key (rotation).
    pub rekeyed: usize,
    /// `<tenant>: <field>` of the values that did not open (left as they are).
    pub damaged: Vec<String>,
}

impl Platform {
    /// A row of the registry with its secrets opened; what does not open
    /// is left empty and named in [`TenantRecord::damaged`].
    fn record_of(&self, row: &tokio_postgres::Row) -> Result<TenantRecord, String> {
        use crate::tenant_secrets::{open, open_json, open_settings};
        let name: String = row.get(0);
        let mut damaged = Vec::new();
        let (settings, bad) = open_settings(&self.secrets, &name, row.get(3));
        damaged.extend(bad.into_iter().map(|d| d.0));
        let mut json =
            |field: &str, stored: Value| match open_json(&self.secrets, &name, field, stored) {
                Ok(value) => Some(value),
                Err(bad) => {
                    damaged.push(bad.0);
                    None
                }
            };
        let keys = json("keys", row.get(4));
        let api_keys = json("api_keys", row.get(5));
        let database_url = row.get::<_, Option<String>>(7).map(|stored| {
            match open(&self.secrets, &name, "database_url", &stored) {
                Ok(url) => url,
                Err(bad) => {
                    damaged.push(bad.0);
                    String::new()
                }
            }
        });
        let parse_err =
            |what: &str, err: serde_json::Error| format!("tenant {name}: {what}: {err}");
        Ok(TenantRecord {
            settings: serde_json::from_value(settings).map_err(|err| parse_err("settings", err))?,
            keys: match keys {
                Some(keys) => serde_json::from_value(keys).map_err(|err| parse_err("keys", err))?,
                None => Vec::new(),
            },
            api_keys: match api_keys {
                Some(api) => {
                    serde_json::from_value(api).map_err(|err| parse_err("api_keys", err))?
                }
                None => ApiKeys {
                    anon: String::new(),
                    service_role: String::new(),
                    opaque: Vec::new(),
                },
            },
            database: row.get(1),
            suspended: row.get(2),
            created_at: row.get(6),
            database_url,
            damaged,
            name,
        })
    }

    /// A tenant's signing keys and API keys as the registry keeps them.
    fn sealed_keys(
        &self,
        name: &str,
        store: &KeyStore,
        api: &ApiKeys,
    ) -> Result<(Value, Value), String> {
        use crate::tenant_secrets::seal_json;
        let keys = serde_json::to_value(&store.keys).map_err(|err| err.to_string())?;
        let api = serde_json::to_value(api).map_err(|err| err.to_string())?;
        Ok((
            seal_json(&self.secrets, name, "keys", &keys)?,
            seal_json(&self.secrets, name, "api_keys", &api)?,
        ))
    }

    /// Login passwords as the registry keeps them.
    fn sealed_logins(
        &self,
        name: &str,
        logins: &[(String, String)],
    ) -> Result<Vec<(String, String)>, String> {
        logins
            .iter()
            .map(|(role, password)| {
                crate::tenant_secrets::seal(&self.secrets, name, &login_field(role), password)
                    .map(|sealed| (role.clone(), sealed))
            })
            .collect()
    }

    /// The start-up pass over the registry, in one transaction (several
    /// instances take turns): refuses a key that does not open the key
    /// check (an error naming `server.tenant_secrets_key`); seals every
    /// plaintext secret (rows written before sealing existed) and seals
    /// again under the current key every secret an older key sealed. A
    /// value that does not open is left as it is and reported: only its
    /// tenant is refused.
    pub async fn seal_registry(&self) -> Result<SealReport, String> {
        use crate::tenant_secrets::{
            KeyCheck, check, check_value, reseal_json, reseal_settings, reseal_text,
        };
        let mut client = self.admin_client().await?;
        let tx = client.transaction().await.map_err(|err| db_error(&err))?;
        tx.execute("select pg_advisory_xact_lock($1)", &[&SEAL_LOCK])
            .await
            .map_err(|err| db_error(&err))?;
        let stored: Option<String> = tx
            .query_opt("select sealed from sovra.tenant_secrets_check", &[])
            .await
            .map_err(|err| db_error(&err))?
            .map(|row| row.get(0));
        let key_check = stored.as_deref().map(|stored| check(&self.secrets, stored));
        if key_check == Some(KeyCheck::Wrong) {
            return Err(format!(
                "the tenant secrets key ({}) is not the key the tenant registry's secrets were sealed with: configure that key in `server.tenant_secrets_key` (SOVRA_SERVER_TENANT_SECRETS_KEY), or keep it in `server.tenant_secrets_old_keys` while rotating to a new one; every node of a cluster needs the same key",
                crate::tenant_secrets::key_source(&self.config)
            ));
        }
        let mut report = SealReport::default();
        let mut done = crate::tenant_secrets::Resealed::default();
        let rows = tx
            .query(
                "select name, settings, keys, api_keys, database_url from sovra.tenants order by name for update",
                &[],
            )
            .await
            .map_err(|err| db_error(&err))?;
        for row in &rows {
            let name: String = row.get(0);
            let mut changed = crate::tenant_secrets::Resealed::default();
            let mut damaged = Vec::new();
            let mut settings: Value = row.get(1);
            let (one, bad) = reseal_settings(&self.secrets, &name, &mut settings);
            changed += one;
            damaged.extend(bad);
            let mut keys: Value = row.get(2);
            let mut api_keys: Value = row.get(3);
            for (field, value) in [("keys", &mut keys), ("api_keys", &mut api_keys)] {
                match reseal_json(&self.secrets, &name, field, value) {
                    Ok(one) => changed += one,
                    Err(bad) => damaged.push(bad),
                }
            }
            let mut database_url: Option<String> = row.get(4);
            if let Some(url) = &mut database_url {
                match reseal_text(&self.secrets, &name, "database_url", url) {
                    Ok(one) => changed += one,
                    Err(bad) => damaged.push(bad),
                }
            }
            report
                .damaged
                .extend(damaged.into_iter().map(|bad| format!("{name}: {}", bad.0)));
            if changed.changed() {
                tx.execute(
                    "update sovra.tenants set settings = $2, keys = $3, api_keys = $4, database_url = $5 where name = $1",
                    &[&name, &settings, &keys, &api_keys, &database_url],
                )
                .await
                .map_err(|err| db_error(&err))?;
                done += changed;
            }
        }
        let logins = tx
            .query(
                "select role::text, tenant, password from sovra.tenant_logins order by role for update",
                &[],
            )
            .await
            .map_err(|err| db_error(&err))?;
        for row in &logins {
            let role: String = row.get(0);
            let tenant: String = row.get(1);
            let mut password: String = row.get(2);
            match reseal_text(&self.secrets, &tenant, &login_field(&role), &mut password) {
                Ok(one) if one.changed() => {
                    tx.execute(
                        "update sovra.tenant_logins set password = $2 where role = $1",
                        &[&role, &password],
                    )
                    .await
                    .map_err(|err| db_error(&err))?;
                    done += one;
                }
                Ok(_) => {}
                Err(bad) => report.damaged.push(format!("{tenant}: {}", bad.0)),
            }
        }
        if key_check != Some(KeyCheck::Current) {
            let sealed = check_value(&self.secrets)?;
            tx.execute(
                "insert into sovra.tenant_secrets_check (id, sealed) values (true, $1)
                 on conflict (id) do update set sealed = excluded.sealed, updated_at = now()",
                &[&sealed],
            )
            .await
            .map_err(|err| db_error(&err))?;
        }
        tx.commit().await.map_err(|err| db_error(&err))?;
        report.sealed = done.sealed;
        report.rekeyed = done.rekeyed;
        Ok(report)
    }
}

/// Creates tenant `name`'s two login roles (`rest` for `/rest/v1` and
/// the other APIs, `auth` for `/auth/v1`): 409 when they exist already.
async fn create_login_roles(
    client: &tokio_postgres::Client,
    name: &str,
    rest: &str,
    auth: &str,
) -> Result<(), (StatusCode, String)> {
    let created = client
        .batch_execute(&format!(
            "create role {} login noinherit in role authenticator;
             create role {} login noinherit in role supabase_auth_admin",
            quote(rest),
            quote(auth)
        ))
        .await;
    match created {
        Ok(()) => Ok(()),
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
            Err((
                StatusCode::CONFLICT,
                format!("database roles of a tenant named {name:?} exist already"),
            ))
        }
        Err(err) => Err((StatusCode::INTERNAL_SERVER_ERROR, db_error(&err))),
    }
}

/// A tenant's anon and service_role keys, bound to it by `ref`.
fn mint(keyset: &KeySet, issuer: &str) -> Result<ApiKeys, String> {
    crate::keys::mint(keyset, issuer).map_err(|err| err.to_string())
}

/// A request routed to a tenant other than the default one.
#[derive(Clone, Debug)]
pub struct RoutedTenant(pub Arc<Tenant>);

/// Locations that services answer with as absolute paths of the server
/// (TUS upload URLs): under `/t/{name}` they must keep the prefix.
const PREFIXED_LOCATIONS: &[&str] = &["/storage/v1/", "/auth/v1/", "/realtime/v1/"];

/// The tenant name a request addresses: `/t/{name}/…` (and the rest of the
/// path), or a `{name}.{base_domain}` host.
fn addressed<'a>(
    uri: &'a Uri,
    host: Option<&'a str>,
    base_domain: Option<&str>,
) -> Option<(&'a str, Option<&'a str>)> {
    if let Some(rest) = uri.path().strip_prefix("/t/") {
        let (name, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        return Some((name, Some(path)));
    }
    let domain = base_domain?;
    let host = host?;
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    (!label.is_empty() && !label.contains('.')).then_some((label, None))
}

/// The tenant a request addresses by path or host, for layers that run
/// before [`route`] (the TUS `OPTIONS` answer): `None` for the default
/// tenant.
pub(crate) async fn addressed_tenant(
    state: &AppState,
    parts: &http::request::Parts,
) -> Option<Result<Arc<Tenant>, Lookup>> {
    let platform = state.platform.as_ref()?;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host());
    let (name, _) = addressed(&parts.uri, host, platform.config.base_domain())?;
    if validate_name(name).is_err() {
        return Some(Err(Lookup::NotFound));
    }
    Some(platform.tenant(name).await)
}

/// Routes requests for tenants: resolves the tenant (building it on first
/// use), strips `/t/{name}` from the path, and hands it on with
/// [`RoutedTenant`] to `next`. Unknown tenant: 404; suspended: 503. Part of
/// the service inside the CORS layer (`front.rs`).
pub(crate) async fn route<F, Fut>(state: &AppState, mut request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let Some(platform) = state.platform.clone() else {
        return next(request).await;
    };
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().host().map(str::to_owned));
    let uri = request.uri().clone();
    let Some((name, path)) = addressed(&uri, host.as_deref(), platform.config.base_domain()) else {
        return next(request).await;
    };
    if validate_name(name).is_err() {
        return Lookup::NotFound.into_response();
    }
    let tenant = match platform.tenant(name).await {
        Ok(tenant) => tenant,
        Err(lookup) => return lookup.into_response(),
    };
    let prefix = path.map(|_| format!("/t/{name}"));
    if let Some(path) = path {
        let path_and_query = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        match Uri::builder().path_and_query(path_and_query).build() {
            Ok(rewritten) => *request.uri_mut() = rewritten,
            Err(_) => return Lookup::NotFound.into_response(),
        }
    }
    let admission = platform.admit_request(name);
    if admission != rate::Admission::Serve {
        metrics::counter!(
            "sovra_tenant_quota_exceeded_total",
            "tenant" => name.to_owned(),
            "quota" => "requests_per_second"
        )
        .increment(1);
        let close = match admission {
            rate::Admission::Refuse { delay, hold } => {
                // Paced: a client that retries at once waits its turn
                // (see [`rate`]); `hold` counts it until answered.
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                drop(hold);
                false
            }
            _ => true,
        };
        let mut refused = (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"message": "API rate limit exceeded", "code": 429})),
        )
            .into_response();
        if close {
            refused.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        return refused;
    }
    metrics::counter!("sovra_tenant_requests_total", "tenant" => name.to_owned()).increment(1);
    platform.touch(name);
    // Its concurrency quota, held to its share of the machine while other
    // tenants are busy ([`share`]): a request over it waits for its turn
    // here, before it takes any of the server's work.
    let turn = match &tenant.in_progress {
        Some(gate) => {
            gate.set_limit(platform.shares.cap(
                tenant.quotas.max_concurrent_requests,
                &platform.last_used,
                std::time::Instant::now(),
            ));
            let waiting = gate.full();
            if waiting {
                tenant
                    .waiting
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let turn = gate.enter().await;
            if waiting {
                tenant
                    .waiting
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            Some(turn)
        }
        None => None,
    };
    request.extensions_mut().insert(RoutedTenant(tenant));
    let mut response = next(request).await;
    if response.status() == StatusCode::TOO_MANY_REQUESTS
        && response
            .headers()
            .get("x-sb-error-code")
            .is_some_and(|code| code == "over_email_send_rate_limit")
    {
        // Auth's mail limits (the tenant's hourly total, or per address).
        metrics::counter!(
            "sovra_tenant_quota_exceeded_total",
            "tenant" => name.to_owned(),
            "quota" => "mails_per_hour"
        )
        .increment(1);
    }
    if let Some(prefix) = prefix
        && let Some(location) = response
            .headers()
            .get(header::LOCATION)
            .and_then(|l| l.to_str().ok())
        && PREFIXED_LOCATIONS.iter().any(|p| location.starts_with(p))
        && let Ok(value) = header::HeaderValue::from_str(&format!("{prefix}{location}"))
    {
        response.headers_mut().insert(header::LOCATION, value);
    }
    // The turn ends when the response's head is returned (a streamed body
    // is not counted).
    drop(turn);
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: Option<String>,
    /// A database of its own instead of a clone on the platform's cluster.
    database_url: Option<String>,
}

fn platform_of(state: &AppState, headers: &HeaderMap) -> Result<Arc<Platform>, ApiError> {
    let Some(platform) = state.platform.clone() else {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            "This server hosts no tenants".to_owned(),
        ));
    };
    platform.check_key(headers)?;
    Ok(platform)
}

/// Refuses the tenant API under a tenant's URL.
/// The platform, for a request made at the root (not under a tenant's
/// URL) with the platform key; otherwise the refusal to send.
fn platform_for(
    state: &AppState,
    routed: Option<&RoutedTenant>,
    headers: &HeaderMap,
) -> Result<Arc<Platform>, ApiError> {
    at_root(routed)?;
    platform_of(state, headers)
}

fn at_root(request_tenant: Option<&RoutedTenant>) -> Result<(), ApiError> {
    match request_tenant {
        Some(_) => Err(ApiError(
            StatusCode::NOT_FOUND,
            "not_found",
            "The tenant API is at the server's root URL".to_owned(),
        )),
        None => Ok(()),
    }
}

fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|err| {
        ApiError(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("invalid JSON body: {err}"),
        )
    })
}

/// `POST /sovra/v1/tenants`.
pub(crate) async fn create(
    State(state): State<AppState>,
    routed: Option<axum::Extension<RoutedTenant>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let platform = match platform_for(&state, routed.as_deref(), &headers) {
        Ok(platform) => platform,
        Err(err) => return err.into_response(),
    };
    let body: CreateBody = match json_body(&body) {
        Ok(body) => body,
        Err(err) => return err.into_response(),
    };
    let Some(name) = body.name else {
        return error(StatusCode::BAD_REQUEST, "bad_name", "name is required");
    };
    let started = std::time::Instant::now();
    let created = match &body.database_url {
        Some(url) => platform.create_external(&name, url).await,
        None => platform.create(&name).await,
    };
    match created {
        Ok((record, opaque)) => {
            metrics::histogram!("sovra_tenant_create_seconds")
                .record(started.elapsed().as_secs_f64());
            let mut view = platform.view(&record);
            show_opaque(&mut view, &opaque);
            (StatusCode::CREATED, Json(view)).into_response()
        }
        Err((status, message)) => {
            let code = match status {
                StatusCode::BAD_REQUEST if message.starts_with("database_url") => {
                    "bad_database_url"
                }
                StatusCode::BAD_REQUEST => "bad_name",
                StatusCode::CONFLICT => "conflict",
                _ => "internal",
            };
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                tracing::error!(tenant = %name, error = %message, "creating a tenant failed");
                return error(
                    status,
                    code,
                    "creating the tenant failed; see the server log",
                );
            }
            error(status, code, &message)
        }
    }
}

/// Adds a new pair of opaque keys to an answer (the one time they are
/// shown: only their digests are kept).
fn show_opaque(view: &mut Value, pair: &crate::opaque_keys::NewPair) {
    view["publishable_key"] = json!(pair.publishable);
    view["secret_key"] = json!(pair.secret);
}

/// `GET /sovra/v1/tenants`.
pub(crate) async fn list(
    State(state): State<AppState>,
    routed: Option<axum::Extension<RoutedTenant>>,
    headers: HeaderMap,
) -> Response {
    let platform = match platform_for(&state, routed.as_deref(), &headers) {
        Ok(platform) => platform,
        Err(err) => return err.into_response(),
    };
    match platform.records().await {
        Ok(records) => Json(Value::Array(
            records.iter().map(|r| platform.view(r)).collect(),
        ))
        .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "listing tenants failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "listing tenants failed",
            )
        }
    }
}

fn not_found(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "tenant_not_found",
        &format!("no tenant named {name:?}"),
    )
}

fn internal(err: &str) -> Response {
    tracing::error!(error = %err, "tenant API failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the tenant API failed; see the server log",
    )
}

/// `GET /sovra/v1/tenants/{name}`.
pub(crate) async fn show(
    State(state): State<AppState>,
    routed: Option<axum::Extension<RoutedTenant>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let platform = match platform_for(&state, routed.as_deref(), &headers) {
        Ok(platform) => platform,
        Err(err) => return err.into_response(),
    };
    match platform.record(&name).await {
        Ok(Some(record)) => Json(platform.view(&record)).into_response(),
        Ok(None) => not_found(&name),
        Err(err) => internal(&err),
    }
}

/// `PATCH /sovra/v1/tenants/{name}`.
pub(crate) async fn patch(
    State(state): State<AppState>,
    routed: Option<axum::Extension<RoutedTenant>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let platform = match platform_for(&state, routed.as_deref(), &headers) {
        Ok(platform) => platform,
        Err(err) => return err.into_response(),
    };
    let patch = match TenantPatch::parse(&body) {
        Ok(patch) => patch,
        Err(message) => return error(StatusCode::BAD_REQUEST, "bad_settings", &message),
    };
    if let Err(message) = patch.settings.validate() {
        return error(StatusCode::BAD_REQUEST, "bad_settings", &message);
    }
    match platform.check_settings(&name, &patch.settings).await {
        Ok(()) => {}
        Err(Lookup::NotFound) => return not_found(&name),
        Err(Lookup::Failed(message)) => {
            return error(StatusCode::BAD_REQUEST, "bad_settings", &message);
        }
        Err(Lookup::Suspended) => {}
    }
    if patch.jwt_secret.as_ref().is_some_and(|s| s.len() < 32) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_settings",
            "jwt_secret must be at least 32 characters",
        );
    }
    match platform.update(&name, patch).await {
        Ok(Some((record, opaque))) => {
            let mut view = platform.view(&record);
            if let Some(opaque) = &opaque {
                show_opaque(&mut view, opaque);
            }
            Json(view).into_response()
        }
        Ok(None) => not_found(&name),
        Err(err) if err.0 == StatusCode::INTERNAL_SERVER_ERROR => internal(&err.2),
        Err(err) => err.into_response(),
    }
}

/// `DELETE /sovra/v1/tenants/{name}`.
pub(crate) async fn delete(
    State(state): State<AppState>,
    routed: Option<axum::Extension<RoutedTenant>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    let platform = match platform_for(&state, routed.as_deref(), &headers) {
        Ok(platform) => platform,
        Err(err) => return err.into_response(),
    };
    match platform.delete(&name).await {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => not_found(&name),
        Err(err) => internal(&err),
    }
}

async fn set_state(
    state: &AppState,
    routed: Option<&RoutedTenant>,
    name: &str,
    headers: &HeaderMap,
    suspended: bool,
) -> Response {
    let platform = match platform_for(state, routed, headers) {
        Ok(platform) => platform,
        Err(err) => return err.into_response(),
    };
    match platform.set_state(name, suspended).await {
        Ok(true) => match platform.record(name).await {
            Ok(Some(record)) => Json(platform.view(&record)).into_response(),
            Ok(None) => not_found(name),
            Err(err) => internal(&err),
        },
        Ok(false) => not_found(name),
        Err(err) => internal(&err),
    }
}

/// `POST /sovra/v1/tenants/{name}/suspend`.
pub(crate) async fn suspend(
    State(state): State<AppState>,
    routed: Option<axum::Extension<RoutedTenant>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_state(&state, routed.as_deref(), &name, &headers, true).await
}

/// `POST /sovra/v1/tenants/{name}/resume`.
pub(crate) async fn resume(
    State(state): State<AppState>,
    routed: Option<axum::Extension<RoutedTenant>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    set_state(&state, routed.as_deref(), &name, &headers, false).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercase_dns_labels() {
        for good in ["acme", "a", "acme-2", "x1", &"a".repeat(MAX_NAME)] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Acme",
            "1acme",
            "-acme",
            "acme-",
            "ac_me",
            "ac.me",
            "acmé",
            "a b",
            "default",
            "www",
            &"a".repeat(MAX_NAME + 1),
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(database_name("acme-2"), "tenant_acme_2");
    }

    #[test]
    fn tenants_are_addressed_by_path_or_subdomain() {
        let uri: Uri = "/t/acme/rest/v1/todos?select=*".parse().unwrap();
        assert_eq!(
            addressed(&uri, None, None),
            Some(("acme", Some("/rest/v1/todos")))
        );
        let uri: Uri = "/t/acme".parse().unwrap();
        assert_eq!(addressed(&uri, None, None), Some(("acme", Some("/"))));
        let uri: Uri = "/rest/v1/todos".parse().unwrap();
        assert_eq!(addressed(&uri, Some("acme.example.com"), None), None);
        let domain = Some("example.com");
        assert_eq!(
            addressed(&uri, Some("acme.example.com:54321"), domain),
            Some(("acme", None))
        );
        assert_eq!(
            addressed(&uri, Some("acme.example.com"), domain),
            Some(("acme", None))
        );
        assert_eq!(addressed(&uri, Some("example.com"), domain), None);
        assert_eq!(addressed(&uri, Some("a.b.example.com"), domain), None);
        assert_eq!(addressed(&uri, Some("acmeexample.com"), domain), None);
        assert_eq!(addressed(&uri, Some("acme.other.com"), domain), None);
    }

    #[test]
    fn the_smtp_password_is_never_shown() {
        let settings = TenantSettings {
            smtp_url: Some("smtps://me:s3cret:x@mail.example.com:465".to_owned()),
            ..TenantSettings::default()
        };
        let shown = shown_settings(&settings);
        assert_eq!(
            shown.smtp_url.as_deref(),
            Some("smtps://me:********@mail.example.com:465")
        );
        let plain = TenantSettings {
            smtp_url: Some("smtp://mail.example.com:25".to_owned()),
            ..TenantSettings::default()
        };
        assert_eq!(shown_settings(&plain), plain);
        for bad in [
            TenantSettings {
                smtp_url: Some("http://mail.example.com".to_owned()),
                ..TenantSettings::default()
            },
            TenantSettings {
                smtp_from: Some("a@b\r\nBcc: c@d".to_owned()),
                ..TenantSettings::default()
            },
            TenantSettings {
                mails_per_hour: Some(u64::MAX),
                ..TenantSettings::default()
            },
            TenantSettings {
                redirect_urls: Some(vec!["https://a,https://b".to_owned()]),
                ..TenantSettings::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn settings_merge_and_refuse_nonsense() {
        let base = TenantSettings {
            site_url: Some("https://a.example".to_owned()),
            pool_size: Some(3),
            ..TenantSettings::default()
        };
        let patch = TenantSettings {
            pool_size: Some(5),
            ..TenantSettings::default()
        };
        let merged = base.merged(&patch);
        assert_eq!(merged.site_url.as_deref(), Some("https://a.example"));
        assert_eq!(merged.pool_size, Some(5));
        assert!(
            TenantSettings {
                pool_size: Some(0),
                ..TenantSettings::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            TenantSettings {
                site_url: Some("ftp://x".to_owned()),
                ..TenantSettings::default()
            }
            .validate()
            .is_err()
        );
        assert!(TenantPatch::parse(br#"{"nope": 1}"#).is_err());
        assert!(TenantPatch::parse(br#"{"jwt_secret": 1}"#).is_err());
        let patch = TenantPatch::parse(br#"{"jwt_secret": "s", "pool_size": 2}"#).unwrap();
        assert_eq!(patch.jwt_secret.as_deref(), Some("s"));
        assert_eq!(patch.settings.pool_size, Some(2));
    }
}
