//! The project's signing keys and its two API keys (anon and service_role),
//! kept in `<data_dir>/keys.json` with mode 0600.
//!
//! A JWT secret given in the configuration takes the place of the stored
//! keys, so that a project moving from Supabase keeps the keys its apps
//! already ship. Rotation adds a new signing key; the previous one still
//! verifies until it is retired.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sovra_config::Config;
use sovra_jwt::{KeySet, KeyStore};

use crate::data_dir::write_private;

/// API keys are long-lived, as Supabase's are.
const API_KEY_LIFETIME_SECS: i64 = 10 * 365 * 24 * 3600;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is damaged ({message}); restore it from a backup, or delete it to make new keys (tokens already issued will stop working)"
    )]
    Damaged { path: String, message: String },
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid key configuration: {0}")]
    Config(String),
    #[error(
        "`jwt.secret` is set in the configuration, so the signing key is not Sovra's to rotate or retire: change the secret there"
    )]
    ConfiguredSecret,
}

/// The anon and service_role API keys.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ApiKeys {
    pub anon: String,
    pub service_role: String,
    /// Digests of the opaque `sb_publishable_…`/`sb_secret_…` keys
    /// ([`crate::opaque_keys`]), when `sovra keys --rotate-opaque` made some.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque: Vec<crate::opaque_keys::OpaqueKey>,
}

impl ApiKeys {
    /// The project JWT an opaque key stands for, when `key` is a live one.
    pub fn jwt_for_opaque(&self, key: &str) -> Option<&str> {
        match crate::opaque_keys::role_of(&self.opaque, key)? {
            "anon" => Some(&self.anon),
            "service_role" => Some(&self.service_role),
            _ => None,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<sovra_jwt::StoredKey>,
    #[serde(default)]
    api_keys: Option<ApiKeys>,
}

/// The keys a tenant verifies and signs with.
#[derive(Debug)]
pub struct ProjectKeys {
    pub keyset: KeySet,
    pub api: ApiKeys,
    /// Whether this call created the keys (the first start).
    pub created: bool,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn read_file(path: &Path) -> Result<Option<KeysFile>, KeysError> {
    let display = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| KeysError::Damaged {
                path: display,
                message: err.to_string(),
            }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(KeysError::Read {
            path: display,
            source,
        }),
    }
}

fn write_file(path: &Path, file: &KeysFile) -> Result<(), KeysError> {
    let mut bytes = serde_json::to_vec_pretty(file).map_err(|err| KeysError::Write {
        path: path.display().to_string(),
        source: std::io::Error::other(err),
    })?;
    bytes.push(b'\n');
    write_private(path, &bytes).map_err(|source| KeysError::Write {
        path: path.display().to_string(),
        source,
    })
}

fn keyset(store: &KeyStore, config: &Config) -> Result<KeySet, KeysError> {
    let jwks = config
        .jwks()
        .map_err(|err| KeysError::Config(err.to_string()))?;
    if let Some(jwks) = &jwks {
        config
            .check_external_audience(jwks)
            .map_err(|err| KeysError::Config(err.to_string()))?;
    }
    KeySet::new(store, jwks.as_ref(), config.jwt.audience.clone())
        .and_then(|set| {
            set.with_external_rules(
                config.jwt.jwks_issuer.clone(),
                config.jwt.jwks_audience.clone(),
            )
        })
        .map_err(|err| KeysError::Config(err.to_string()))
}

/// A project's anon and service_role API keys under `keyset` (bound to
/// a tenant by its `ref` when the set is); the opaque `sb_…` keys are
/// added by the caller.
pub(crate) fn mint(keyset: &KeySet, issuer: &str) -> Result<ApiKeys, KeysError> {
    let iat = now();
    let exp = iat + API_KEY_LIFETIME_SECS;
    let sign = |role: &str| {
        keyset
            .mint_api_key(role, issuer, iat, exp)
            .map_err(|err| KeysError::Config(err.to_string()))
    };
    Ok(ApiKeys {
        anon: sign("anon")?,
        service_role: sign("service_role")?,
        opaque: Vec::new(),
    })
}

/// Whether `api` still verifies under `keyset` as the right roles.
fn api_keys_valid(keyset: &KeySet, api: &ApiKeys) -> bool {
    let now = now();
    let role_of = |token: &str| keyset.verify(token, now).ok().map(|v| v.role);
    role_of(&api.anon).as_deref() == Some("anon")
        && role_of(&api.service_role).as_deref() == Some("service_role")
}

/// Loads the keys in `path`, creating them on first start. API keys that no
/// longer verify (the configured secret changed) are minted again.
pub fn load_or_create(path: &Path, config: &Config) -> Result<ProjectKeys, KeysError> {
    let existing = read_file(path)?;
    let created = existing.is_none();
    let mut file = existing.unwrap_or_default();
    let store = match &config.jwt.secret {
        Some(secret) => KeyStore::from_secret(secret, now()),
        None => {
            if file.keys.is_empty() {
                file.keys = KeyStore::generate(now()).keys;
            }
            KeyStore {
                keys: file.keys.clone(),
            }
        }
    };
    let keyset = keyset(&store, config)?;
    let api = match &file.api_keys {
        Some(api) if api_keys_valid(&keyset, api) => api.clone(),
        _ => {
            let mut api = mint(&keyset, &config.jwt.issuer)?;
            // Opaque keys stand for the roles, not for a signing key.
            api.opaque = file.api_keys.take().map(|a| a.opaque).unwrap_or_default();
            file.api_keys = Some(api.clone());
            if config.jwt.secret.is_some() {
                // The configured secret is not written to disk.
                file.keys.clear();
            }
            write_file(path, &file)?;
            api
        }
    };
    Ok(ProjectKeys {
        keyset,
        api,
        created,
    })
}

/// Adds a new signing key and mints new API keys with it; the previous key
/// (and the API keys it signed) still verify until retired.
pub fn rotate(path: &Path, config: &Config) -> Result<ProjectKeys, KeysError> {
    if config.jwt.secret.is_some() {
        return Err(KeysError::ConfiguredSecret);
    }
    load_or_create(path, config)?;
    let mut file = read_file(path)?.unwrap_or_default();
    let mut store = KeyStore { keys: file.keys };
    store.rotate(now());
    let keyset = keyset(&store, config)?;
    let mut api = mint(&keyset, &config.jwt.issuer)?;
    api.opaque = file.api_keys.take().map(|a| a.opaque).unwrap_or_default();
    file.keys = store.keys;
    file.api_keys = Some(api.clone());
    write_file(path, &file)?;
    Ok(ProjectKeys {
        keyset,
        api,
        created: false,
    })
}

/// Makes a new pair of opaque keys (`sb_publishable_…`, `sb_secret_…`),
/// stores their digests in place of the previous pair's (which stop
/// working when the server next loads its keys) and returns the keys,
/// which are shown this once.
pub fn rotate_opaque(
    path: &Path,
    config: &Config,
) -> Result<crate::opaque_keys::NewPair, KeysError> {
    load_or_create(path, config)?;
    let mut file = read_file(path)?.unwrap_or_default();
    let pair = crate::opaque_keys::generate(now());
    let Some(api) = file.api_keys.as_mut() else {
        return Err(KeysError::Config("no API keys to stand for".to_owned()));
    };
    api.opaque = pair.stored.clone();
    write_file(path, &file)?;
    Ok(pair)
}

/// Retires a previous signing key: tokens it signed stop verifying.
pub fn retire(path: &Path, config: &Config, kid: &str) -> Result<(), KeysError> {
    if config.jwt.secret.is_some() {
        return Err(KeysError::ConfiguredSecret);
    }
    let mut file = read_file(path)?.unwrap_or_default();
    let mut store = KeyStore { keys: file.keys };
    store
        .retire(kid)
        .map_err(|err| KeysError::Config(err.to_string()))?;
    file.keys = store.keys;
    write_file(path, &file)
}

/// The stored signing keys (never their secrets), for `sovra keys`.
pub fn list(path: &Path) -> Result<Vec<(String, String, i64)>, KeysError> {
    let file = read_file(path)?.unwrap_or_default();
    Ok(file
        .keys
        .iter()
        .map(|key| {
            let status = serde_json::to_value(key.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            (key.kid.clone(), status, key.created_at)
        })
        .collect())
}
