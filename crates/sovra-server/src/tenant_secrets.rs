//! The tenants' secrets at rest (#17): what the registry keeps of a
//! tenant that would let someone act as it or as its providers is sealed
//! (AES-256-GCM, [`sovra_auth::secret::ServiceKey::seal`]) under the
//! platform's tenant secrets key, bound to the tenant's name and the field
//! (associated data), so that a sealed value copied to another tenant or
//! another field does not open.
//!
//! Sealed: the signing keys (`keys`), the API keys (`api_keys`: the
//! service_role key is a credential), `database_url`, the login roles'
//! passwords (`sovra.tenant_logins.password`), and in `settings` the
//! `smtp_url`, every provider's `secret` and `private_key` and every hook's
//! `secrets`. Values written before sealing existed are plaintext: they are
//! read as they are and sealed by [`reseal_settings`] and friends on start.
//!
//! Pure logic: no IO but reading and making the key file in [`load_key`].

use serde_json::Value;
use sovra_auth::secret::{ServiceKey, is_sealed};
use sovra_config::Config;

/// The key's file in the data directory when `server.tenant_secrets_key`
/// is not set.
pub const KEY_FILE: &str = "tenant-secrets.key";

/// What the key check row holds, sealed (see [`check_value`]).
const CHECK_PLAIN: &[u8] = b"sovra tenant secrets key";
const CHECK_FIELD: &str = "key-check";

/// The tenant secrets key of `config`: `server.tenant_secrets_key`, else
/// `<data_dir>/tenant-secrets.key` (made with mode 0600 when missing).
/// With a configured key, the file's key (when there is one) and
/// `server.tenant_secrets_old_keys` still open what they sealed.
pub fn load_key(config: &Config) -> Result<ServiceKey, String> {
    let file = config.data_dir.join(KEY_FILE);
    let configured = &config.server.tenant_secrets_key;
    let mut key = if configured.is_empty() {
        ServiceKey::load_or_create(&file).map_err(|err| {
            format!(
                "the tenant secrets key: {err} (or set `server.tenant_secrets_key`, SOVRA_SERVER_TENANT_SECRETS_KEY)"
            )
        })?
    } else {
        let key = ServiceKey::from_hex(&configured.0).ok_or_else(|| {
            "invalid value for `server.tenant_secrets_key`: must be 64 hex digits".to_owned()
        })?;
        match std::fs::read_to_string(&file) {
            Ok(text) => match ServiceKey::from_hex(&text) {
                Some(from_file) => key.with_older(&from_file),
                None => key,
            },
            Err(_) => key,
        }
    };
    for old in config.server.tenant_secrets_old_keys.parts() {
        let old = ServiceKey::from_hex(old).ok_or_else(|| {
            "invalid value for `server.tenant_secrets_old_keys`: keys must be 64 hex digits"
                .to_owned()
        })?;
        key = key.with_older(&old);
    }
    Ok(key)
}

/// Where the key of `config` comes from, for messages.
pub fn key_source(config: &Config) -> String {
    if config.server.tenant_secrets_key.is_empty() {
        format!(
            "{} (the default of `server.tenant_secrets_key`)",
            config.data_dir.join(KEY_FILE).display()
        )
    } else {
        "`server.tenant_secrets_key`".to_owned()
    }
}

/// The associated data of `field` of tenant `tenant`: the name and the
/// field, NUL-separated (neither holds a NUL).
fn aad(tenant: &str, field: &str) -> Vec<u8> {
    format!("sovra-tenant-secret\0{tenant}\0{field}").into_bytes()
}

/// Seals `plain` as `field` of `tenant`.
pub fn seal(key: &ServiceKey, tenant: &str, field: &str, plain: &str) -> Result<String, String> {
    key.seal(plain.as_bytes(), &aad(tenant, field))
        .ok_or_else(|| format!("sealing {field} of tenant {tenant} failed"))
}

/// A sealed value that does not open: damaged, moved from another tenant
/// or field, or sealed under a key this server does not have. Names the
/// field, never the value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damaged(pub String);

/// Opens `stored`, `field` of `tenant`; plaintext (written before sealing
/// existed) is answered as it is.
pub fn open(key: &ServiceKey, tenant: &str, field: &str, stored: &str) -> Result<String, Damaged> {
    if !is_sealed(stored) {
        return Ok(stored.to_owned());
    }
    key.open(stored, &aad(tenant, field))
        .and_then(|plain| String::from_utf8(plain).ok())
        .ok_or_else(|| Damaged(field.to_owned()))
}

/// A JSON value (`keys`, `api_keys`) sealed as one string.
pub fn seal_json(
    key: &ServiceKey,
    tenant: &str,
    field: &str,
    value: &Value,
) -> Result<Value, String> {
    seal(key, tenant, field, &value.to_string()).map(Value::String)
}

/// Opens what [`seal_json`] made; a JSON value that is not a sealed string
/// (written before sealing existed) is answered as it is.
pub fn open_json(
    key: &ServiceKey,
    tenant: &str,
    field: &str,
    stored: Value,
) -> Result<Value, Damaged> {
    match &stored {
        Value::String(text) if is_sealed(text) => {
            let plain = open(key, tenant, field, text)?;
            serde_json::from_str(&plain).map_err(|_| Damaged(field.to_owned()))
        }
        _ => Ok(stored),
    }
}

/// Calls `each` with the name and the text of every secret of `settings`
/// (its JSON as stored): `smtp_url`, `external.<p>.secret|private_key`,
/// `hooks.<h>.secrets`.
fn for_each_secret(settings: &mut Value, mut each: impl FnMut(&str, &mut String)) {
    let Some(map) = settings.as_object_mut() else {
        return;
    };
    if let Some(Value::String(url)) = map.get_mut("smtp_url") {
        each("settings.smtp_url", url);
    }
    for (section, fields) in [
        ("external", &["secret", "private_key"][..]),
        ("hooks", &["secrets"][..]),
    ] {
        let Some(Value::Object(entries)) = map.get_mut(section) else {
            continue;
        };
        for (entry, value) in entries.iter_mut() {
            let Value::Object(values) = value else {
                continue;
            };
            for field in fields {
                if let Some(Value::String(text)) = values.get_mut(*field) {
                    each(&format!("settings.{section}.{entry}.{field}"), text);
                }
            }
        }
    }
}

/// `settings` (as the registry keeps them) with every secret sealed.
pub fn seal_settings(key: &ServiceKey, tenant: &str, settings: Value) -> Result<Value, String> {
    let mut settings = settings;
    let mut failed = None;
    for_each_secret(&mut settings, |field, text| {
        match seal(key, tenant, field, text) {
            Ok(sealed) => *text = sealed,
            Err(err) => failed = Some(err),
        }
    });
    match failed {
        Some(err) => Err(err),
        None => Ok(settings),
    }
}

/// `settings` with every secret opened; those that do not open are left
/// empty and named in the second part.
pub fn open_settings(key: &ServiceKey, tenant: &str, settings: Value) -> (Value, Vec<Damaged>) {
    let mut settings = settings;
    let mut damaged = Vec::new();
    for_each_secret(&mut settings, |field, text| {
        match open(key, tenant, field, text) {
            Ok(plain) => *text = plain,
            Err(err) => {
                text.clear();
                damaged.push(err);
            }
        }
    });
    (settings, damaged)
}

/// What the start-up pass did to one stored value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Plaintext values sealed.
    pub sealed: usize,
    /// Values sealed under an older key, sealed again under the current.
    pub rekeyed: usize,
}

impl std::ops::AddAssign for Resealed {
    fn add_assign(&mut self, other: Resealed) {
        self.sealed += other.sealed;
        self.rekeyed += other.rekeyed;
    }
}

impl Resealed {
    pub fn changed(&self) -> bool {
        self.sealed + self.rekeyed > 0
    }
}

/// Seals `stored` (text) when it is plaintext, or sealed under an older
/// key; a value that does not open is left as it is ([`Damaged`]).
pub fn reseal_text(
    key: &ServiceKey,
    tenant: &str,
    field: &str,
    stored: &mut String,
) -> Result<Resealed, Damaged> {
    if !is_sealed(stored) {
        *stored = seal(key, tenant, field, stored).map_err(|_| Damaged(field.to_owned()))?;
        return Ok(Resealed {
            sealed: 1,
            rekeyed: 0,
        });
    }
    if open(&key.current(), tenant, field, stored).is_ok() {
        return Ok(Resealed::default());
    }
    let plain = open(key, tenant, field, stored)?;
    *stored = seal(key, tenant, field, &plain).map_err(|_| Damaged(field.to_owned()))?;
    Ok(Resealed {
        sealed: 0,
        rekeyed: 1,
    })
}

/// [`reseal_text`] for a JSON value sealed whole ([`seal_json`]).
pub fn reseal_json(
    key: &ServiceKey,
    tenant: &str,
    field: &str,
    stored: &mut Value,
) -> Result<Resealed, Damaged> {
    match stored {
        Value::String(text) if is_sealed(text) => reseal_text(key, tenant, field, text),
        plain => {
            *plain = seal_json(key, tenant, field, plain).map_err(|_| Damaged(field.to_owned()))?;
            Ok(Resealed {
                sealed: 1,
                rekeyed: 0,
            })
        }
    }
}

/// [`reseal_text`] for every secret of `settings`.
pub fn reseal_settings(
    key: &ServiceKey,
    tenant: &str,
    settings: &mut Value,
) -> (Resealed, Vec<Damaged>) {
    let mut done = Resealed::default();
    let mut damaged = Vec::new();
    for_each_secret(settings, |field, text| {
        match reseal_text(key, tenant, field, text) {
            Ok(one) => done += one,
            Err(err) => damaged.push(err),
        }
    });
    (done, damaged)
}

/// The key check: a known value sealed under the key, kept beside the
/// registry, so that a start with another key is refused before anything
/// is read or written with it.
pub fn check_value(key: &ServiceKey) -> Result<String, String> {
    key.seal(CHECK_PLAIN, &aad("", CHECK_FIELD))
        .ok_or_else(|| "sealing the key check failed".to_owned())
}

/// How the key relates to a stored key check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// Sealed under the current key.
    Current,
    /// Sealed under one of the older keys: everything is sealed again.
    Older,
    /// Under no key this server has.
    Wrong,
}

pub fn check(key: &ServiceKey, stored: &str) -> KeyCheck {
    let opens = |key: &ServiceKey| {
        key.open(stored, &aad("", CHECK_FIELD))
            .is_some_and(|plain| plain == CHECK_PLAIN)
    };
    if opens(&key.current()) {
        KeyCheck::Current
    } else if opens(key) {
        KeyCheck::Older
    } else {
        KeyCheck::Wrong
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> Value {
        json!({
            "site_url": "https://app.example.com",
            "smtp_url": "smtp://mailer:hunter2-smtp@mail.example.com:587",
            "external": {
                "google": {"enabled": true, "client_id": "cid", "secret": "google-secret-1"},
                "apple": {"private_key": "-----BEGIN PRIVATE KEY-----apple", "key_id": "K1"}
            },
            "hooks": {"send_email": {"uri": "https://hook.example.com", "secrets": "v1,whsec_hooksecret"}}
        })
    }

    #[test]
    fn settings_secrets_are_sealed_bound_to_tenant_and_field() {
        let key = ServiceKey::random();
        let sealed = seal_settings(&key, "acme", settings()).unwrap();
        let text = sealed.to_string();
        for secret in [
            "hunter2-smtp",
            "google-secret-1",
            "BEGIN PRIVATE KEY",
            "whsec_hooksecret",
            "mailer",
        ] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        // What is not secret stays readable.
        assert_eq!(sealed["site_url"], "https://app.example.com");
        assert_eq!(sealed["external"]["google"]["client_id"], "cid");
        let (opened, damaged) = open_settings(&key, "acme", sealed.clone());
        assert!(damaged.is_empty());
        assert_eq!(opened, settings());
        // Another tenant does not open them.
        let (other, damaged) = open_settings(&key, "other", sealed.clone());
        assert_eq!(damaged.len(), 4);
        assert_eq!(other["external"]["google"]["secret"], "");
        // A secret moved to another field does not open either.
        let mut moved = sealed.clone();
        moved["external"]["google"]["secret"] = sealed["hooks"]["send_email"]["secrets"].clone();
        let (_, damaged) = open_settings(&key, "acme", moved);
        assert_eq!(
            damaged,
            [Damaged("settings.external.google.secret".to_owned())]
        );
        // Another key opens nothing.
        let (_, damaged) = open_settings(&ServiceKey::random(), "acme", sealed);
        assert_eq!(damaged.len(), 4);
    }

    #[test]
    fn plaintext_is_read_as_it_is_and_sealed_once() {
        let key = ServiceKey::random();
        let mut stored = settings();
        let (opened, damaged) = open_settings(&key, "acme", stored.clone());
        assert!(damaged.is_empty());
        assert_eq!(opened, settings());
        let (done, damaged) = reseal_settings(&key, "acme", &mut stored);
        assert_eq!((done.sealed, done.rekeyed, damaged.len()), (4, 0, 0));
        let again = stored.clone();
        let (done, _) = reseal_settings(&key, "acme", &mut stored);
        assert!(!done.changed());
        assert_eq!(stored, again, "a second pass changes nothing");
        assert_eq!(open_settings(&key, "acme", stored).0, settings());

        let keys = json!([{"kid": "k1", "secret": "signing-secret"}]);
        let mut stored = keys.clone();
        assert_eq!(
            open_json(&key, "acme", "keys", stored.clone()).unwrap(),
            keys
        );
        assert_eq!(
            reseal_json(&key, "acme", "keys", &mut stored)
                .unwrap()
                .sealed,
            1
        );
        assert!(!stored.to_string().contains("signing-secret"));
        assert_eq!(
            open_json(&key, "acme", "keys", stored.clone()).unwrap(),
            keys
        );
        assert_eq!(
            open_json(&key, "acme", "api_keys", stored.clone()),
            Err(Damaged("api_keys".to_owned()))
        );
        assert!(
            !reseal_json(&key, "acme", "keys", &mut stored)
                .unwrap()
                .changed()
        );
    }

    #[test]
    fn rotation_seals_again_under_the_new_key() {
        let old = ServiceKey::random();
        let mut password = "login-password".to_owned();
        reseal_text(&old, "acme", "login.r", &mut password).unwrap();
        let check_old = check_value(&old).unwrap();
        let new = ServiceKey::random().with_older(&old);
        assert_eq!(check(&old, &check_old), KeyCheck::Current);
        assert_eq!(check(&new, &check_old), KeyCheck::Older);
        assert_eq!(check(&ServiceKey::random(), &check_old), KeyCheck::Wrong);
        let done = reseal_text(&new, "acme", "login.r", &mut password).unwrap();
        assert_eq!(done.rekeyed, 1);
        assert_eq!(
            open(&new.current(), "acme", "login.r", &password).unwrap(),
            "login-password"
        );
        assert!(open(&old, "acme", "login.r", &password).is_err());
        // Damaged: left as it is, named.
        let mut damaged = password.clone();
        damaged.insert(10, 'x');
        assert_eq!(
            reseal_text(&new, "acme", "login.r", &mut damaged),
            Err(Damaged("login.r".to_owned()))
        );
    }

    #[test]
    fn the_key_comes_from_the_option_or_the_data_dir() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let from_file = load_key(&config).unwrap();
        let path = dir.path().join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let sealed = seal(&from_file, "t", "f", "v").unwrap();
        assert_eq!(
            open(&load_key(&config).unwrap(), "t", "f", &sealed).unwrap(),
            "v"
        );
        // A configured key seals; the file's key still opens.
        config.server.tenant_secrets_key = sovra_config::SecretValue("11".repeat(32));
        let configured = load_key(&config).unwrap();
        assert_eq!(open(&configured, "t", "f", &sealed).unwrap(), "v");
        assert!(open(&configured.current(), "t", "f", &sealed).is_err());
        assert!(key_source(&config).contains("server.tenant_secrets_key"));
        // Old keys open too.
        let old = ServiceKey::from_hex(&"22".repeat(32)).unwrap();
        let sealed_old = seal(&old, "t", "f", "w").unwrap();
        config.server.tenant_secrets_old_keys = sovra_config::SecretValue("22".repeat(32));
        assert_eq!(
            open(&load_key(&config).unwrap(), "t", "f", &sealed_old).unwrap(),
            "w"
        );
        // A damaged key file is an error naming the option, not a new key.
        config.server.tenant_secrets_key = sovra_config::SecretValue::default();
        std::fs::write(&path, "not hex").unwrap();
        let err = load_key(&config).unwrap_err();
        assert!(err.contains("server.tenant_secrets_key"), "{err}");
    }
}
