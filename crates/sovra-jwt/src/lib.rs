//! JWTs for Sovra: which keys a tenant has ([`KeyStore`], persisted by the
//! caller), how tokens are verified and signed with them ([`KeySet`]), and
//! the public JWK set a tenant publishes.
//!
//! Verification follows the Supabase contract: HS256 with the project
//! secret, RS256/ES256/EdDSA from a configured JWK set chosen by `kid`,
//! `alg: none` and algorithm/key mismatches always refused, `exp`/`nbf`/`iat`
//! checked with 30 seconds of leeway against a clock the caller passes in,
//! and `aud` checked only when an audience is configured.
//!
//! Keys that Sovra cannot sign with — public-only asymmetric keys from a
//! configured JWK set — belong to an external issuer. Tokens they verify are
//! held to the external rules ([`KeySet::with_external_rules`]): an audience
//! is then required (a token without the configured `aud` is refused), and
//! the issuer may be pinned (a token without that exact `iss` is refused).
//!
//! This crate is pure: no IO, no clock, no async. Secrets are never part of
//! an error message.
//!
//! Symmetric secrets are used as the UTF-8 bytes of their text, as Supabase
//! does, so the string an operator copies is exactly what other tools need.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::Rng as _;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

/// Longest token considered, in bytes; longer ones are malformed.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
pub const LEEWAY_SECS: i64 = 30;

/// The kid of a key made from a configured secret. Tokens signed with it
/// carry no `kid`, like the keys a Supabase project already ships.
pub const CONFIGURED_KID: &str = "configured";

/// A token that was not accepted. The messages are safe to show clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("JWT could not be decoded")]
    Malformed,
    #[error("JWT algorithm none is not allowed")]
    AlgNone,
    #[error("JWT algorithm is not allowed for this key")]
    AlgNotAllowed,
    #[error("JWT key id is unknown")]
    UnknownKey,
    #[error("JWT signature is invalid")]
    BadSignature,
    #[error("JWT expired")]
    Expired,
    #[error("JWT is not valid yet")]
    NotYetValid,
    #[error("JWT was issued in the future")]
    IssuedInFuture,
    #[error("JWT audience is not accepted")]
    WrongAudience,
    #[error("JWT issuer is not accepted")]
    WrongIssuer,
    #[error("JWT could not be signed: {0}")]
    Signing(String),
}

/// A key configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("JWK #{index}: {message}")]
    InvalidJwk { index: usize, message: String },
    #[error("the JWK set has no \"keys\" array")]
    NotAJwkSet,
    #[error("no signing key: the key store has no active key")]
    NoActiveKey,
    #[error("no key with id {0}")]
    NoSuchKey(String),
    #[error("key {0} is the active signing key; rotate before retiring it")]
    RetireActive(String),
    #[error(
        "the JWK set has public keys of an external issuer: an audience is required to accept their tokens"
    )]
    ExternalAudienceMissing,
}

/// Whether a stored key signs, only verifies, or neither.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Signs new tokens and verifies.
    Active,
    /// Verifies tokens it signed before a rotation; signs nothing.
    Previous,
    /// Neither signs nor verifies.
    Retired,
}

/// One stored symmetric key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredKey {
    pub kid: String,
    /// Always `HS256` today.
    pub alg: String,
    /// The secret text; its UTF-8 bytes are the HMAC key.
    pub secret: String,
    pub status: KeyStatus,
    /// Unix seconds.
    pub created_at: i64,
}

/// The symmetric keys a tenant keeps (the caller stores them, mode 0600).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyStore {
    pub keys: Vec<StoredKey>,
}

fn random_kid() -> String {
    let bytes: [u8; 8] = rand::thread_rng().r#gen();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_secret() -> String {
    // 256 bits from the operating system's generator.
    let bytes: [u8; 32] = rand::rngs::OsRng.r#gen();
    URL_SAFE_NO_PAD.encode(bytes)
}

impl KeyStore {
    /// A new store with one active HS256 key of 256 random bits.
    pub fn generate(now: i64) -> KeyStore {
        KeyStore {
            keys: vec![StoredKey {
                kid: random_kid(),
                alg: "HS256".to_owned(),
                secret: random_secret(),
                status: KeyStatus::Active,
                created_at: now,
            }],
        }
    }

    /// A store holding only a configured secret (for example a Supabase
    /// project's JWT secret).
    pub fn from_secret(secret: &str, now: i64) -> KeyStore {
        KeyStore {
            keys: vec![StoredKey {
                kid: CONFIGURED_KID.to_owned(),
                alg: "HS256".to_owned(),
                secret: secret.to_owned(),
                status: KeyStatus::Active,
                created_at: now,
            }],
        }
    }

    /// Adds a new active key; the active one becomes previous.
    pub fn rotate(&mut self, now: i64) -> &StoredKey {
        for key in &mut self.keys {
            if key.status == KeyStatus::Active {
                key.status = KeyStatus::Previous;
            }
        }
        self.keys.push(StoredKey {
            kid: random_kid(),
            alg: "HS256".to_owned(),
            secret: random_secret(),
            status: KeyStatus::Active,
            created_at: now,
        });
        &self.keys[self.keys.len() - 1]
    }

    /// Retires a previous key: tokens it signed stop verifying.
    pub fn retire(&mut self, kid: &str) -> Result<(), KeyError> {
        let key = self
            .keys
            .iter_mut()
            .find(|key| key.kid == kid)
            .ok_or_else(|| KeyError::NoSuchKey(kid.to_owned()))?;
        if key.status == KeyStatus::Active {
            return Err(KeyError::RetireActive(kid.to_owned()));
        }
        key.status = KeyStatus::Retired;
        Ok(())
    }

    /// The key that signs.
    pub fn active(&self) -> Option<&StoredKey> {
        self.keys.iter().find(|key| key.status == KeyStatus::Active)
    }
}

/// The verified role and claims of a token.
#[derive(Clone, Debug, PartialEq)]
pub struct Verified {
    pub role: String,
    /// All claims; `role` is always present (`anon` when the token had none).
    pub claims: Map<String, Value>,
}

/// The algorithm family a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    EcP256,
    Ed25519,
}

impl Family {
    fn accepts(self, alg: Algorithm) -> bool {
        match self {
            Family::Hmac => matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512),
            Family::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            Family::EcP256 => alg == Algorithm::ES256,
            Family::Ed25519 => alg == Algorithm::EdDSA,
        }
    }
}

struct VerifyKey {
    kid: Option<String>,
    family: Family,
    /// A public-only asymmetric key: another issuer's.
    external: bool,
    /// When the JWK names its algorithm, only that one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl VerifyKey {
    fn accepts(&self, alg: Algorithm) -> bool {
        self.family.accepts(alg) && self.alg.is_none_or(|own| own == alg)
    }
}

struct SignKey {
    kid: Option<String>,
    alg: Algorithm,
    key: EncodingKey,
}

/// What tokens verified by an external issuer's keys must carry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ExternalRules {
    /// Set by [`KeySet::with_external_rules`].
    enforced: bool,
    issuer: Option<String>,
    audience: Option<String>,
}

/// A tenant's keys, ready to verify and sign.
pub struct KeySet {
    verify: Vec<VerifyKey>,
    sign: SignKey,
    public_jwks: Vec<Value>,
    audience: Option<String>,
    external: ExternalRules,
    /// The project these keys belong to (a tenant's name), see
    /// [`KeySet::with_project_ref`].
    project_ref: Option<String>,
    /// For a set bound to no project: which `ref` claims name another
    /// project (see [`KeySet::with_foreign_refs`]).
    foreign_refs: Option<RefGuard>,
    /// Tokens whose signature these keys verified (see [`Signatures`]).
    signatures: Signatures,
}

/// The most tokens a [`KeySet`] remembers as signed by its keys.
const SIGNATURES_CACHED: usize = 1024;
/// The most memory, estimated, that a [`KeySet`]'s remembered tokens hold
/// (see [`signed_cost`]): every tenant has its own set, so this is per
/// tenant. About 150 user access tokens, or 1,000 API keys.
const SIGNATURE_CACHE_BYTES: usize = 256 * 1024;
/// Longer tokens are verified every time and never remembered.
const SIGNATURE_CACHE_MAX_TOKEN: usize = 4096;

/// What remembering `token`'s claims costs, estimated: parsed claims take
/// about three times their encoded size, plus the entry itself.
fn signed_cost(token: &str) -> usize {
    3 * token.len() + 128
}

/// What one verified signature established: the token's claims as signed,
/// and whether an external issuer's key signed them.
struct Signed {
    claims: Map<String, Value>,
    external: bool,
}

/// Tokens whose signature a [`KeySet`] has verified, by the SHA-256 of the
/// token's text, so that a client sending the same token with every
/// request (an app's anon key, a user's access token) pays for the
/// signature and the parse once. Only the signature is remembered: the
/// claims are checked again at every use (`exp`, `nbf`, `iat`, `aud`,
/// `iss`, `ref`), so expiry and the other rules hold as without the cache.
/// The cache belongs to the set, so new keys (a rotation, a tenant's new
/// key set) start with none. Keyed by a digest rather than the token, so
/// that no comparison with a remembered token depends on its bytes. At
/// most [`SIGNATURES_CACHED`] tokens and [`SIGNATURE_CACHE_BYTES`]: when
/// full, it starts over.
#[derive(Default)]
struct Signatures {
    seen: std::sync::Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    by_digest: HashMap<[u8; 32], Arc<Signed>>,
    /// The estimated memory of the entries ([`signed_cost`]).
    bytes: usize,
}

impl Signatures {
    fn get(&self, digest: &[u8; 32]) -> Option<Arc<Signed>> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.by_digest.get(digest).cloned()
    }

    fn insert(&self, digest: [u8; 32], signed: Arc<Signed>, cost: usize) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.by_digest.len() >= SIGNATURES_CACHED || seen.bytes + cost > SIGNATURE_CACHE_BYTES {
            seen.by_digest.clear();
            seen.bytes = 0;
        }
        if seen.by_digest.insert(digest, signed).is_none() {
            seen.bytes += cost;
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.by_digest.len()
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

/// Answers whether a token's `ref` claim names a project other than the
/// one a [`KeySet`] belongs to (for example, another tenant of the same
/// server). Must be cheap and must not block: it runs on every
/// verification of a token that carries a `ref`.
pub type RefGuard = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("KeySet")
            .field("verify_keys", &self.verify.len())
            .field("sign_kid", &self.sign.kid)
            .field("sign_alg", &self.sign.alg)
            .field("audience", &self.audience)
            .field("external", &self.external)
            .field("project_ref", &self.project_ref)
            .field("foreign_refs", &self.foreign_refs.is_some())
            .finish()
    }
}

fn b64_field(jwk: &Map<String, Value>, name: &str, index: usize) -> Result<Vec<u8>, KeyError> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| KeyError::InvalidJwk {
            index,
            message: format!("missing \"{name}\""),
        })?;
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| KeyError::InvalidJwk {
            index,
            message: format!("\"{name}\" is not base64url"),
        })
}

fn str_field<'a>(jwk: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    jwk.get(name).and_then(Value::as_str)
}

fn parse_alg(name: &str) -> Option<Algorithm> {
    // Only the algorithms Sovra accepts; `none` is not one of them.
    match name {
        "HS256" => Some(Algorithm::HS256),
        "HS384" => Some(Algorithm::HS384),
        "HS512" => Some(Algorithm::HS512),
        "RS256" => Some(Algorithm::RS256),
        "RS384" => Some(Algorithm::RS384),
        "RS512" => Some(Algorithm::RS512),
        "PS256" => Some(Algorithm::PS256),
        "PS384" => Some(Algorithm::PS384),
        "PS512" => Some(Algorithm::PS512),
        "ES256" => Some(Algorithm::ES256),
        "EdDSA" => Some(Algorithm::EdDSA),
        _ => None,
    }
}

/// One JWK as a verification key, optionally a signing key, and its public
/// form (`None` for symmetric keys, which are never published).
fn load_jwk(
    index: usize,
    jwk: &Map<String, Value>,
) -> Result<(VerifyKey, Option<SignKey>, Option<Value>), KeyError> {
    let invalid = |message: &str| KeyError::InvalidJwk {
        index,
        message: message.to_owned(),
    };
    let kid = str_field(jwk, "kid").map(str::to_owned);
    let alg = match str_field(jwk, "alg") {
        Some(name) => Some(parse_alg(name).ok_or_else(|| invalid("unsupported \"alg\""))?),
        None => None,
    };
    let kty = str_field(jwk, "kty").ok_or_else(|| invalid("missing \"kty\""))?;
    let public_fields: &[&str] = match kty {
        "RSA" => &["kty", "kid", "alg", "use", "key_ops", "n", "e"],
        "EC" => &["kty", "kid", "alg", "use", "key_ops", "crv", "x", "y"],
        "OKP" => &["kty", "kid", "alg", "use", "key_ops", "crv", "x"],
        _ => &[],
    };
    let public: Map<String, Value> = jwk
        .iter()
        .filter(|(name, _)| public_fields.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let has_private = jwk.contains_key("d");
    let (family, key, sign) = match kty {
        "oct" => {
            let secret = b64_field(jwk, "k", index)?;
            if secret.len() < 32 {
                return Err(invalid("symmetric key shorter than 256 bits"));
            }
            let sign = SignKey {
                kid: kid.clone(),
                alg: alg.unwrap_or(Algorithm::HS256),
                key: EncodingKey::from_secret(&secret),
            };
            (Family::Hmac, DecodingKey::from_secret(&secret), Some(sign))
        }
        "RSA" => {
            let n = str_field(jwk, "n").ok_or_else(|| invalid("missing \"n\""))?;
            let e = str_field(jwk, "e").ok_or_else(|| invalid("missing \"e\""))?;
            let key = DecodingKey::from_rsa_components(n, e)
                .map_err(|_| invalid("invalid RSA public key"))?;
            if has_private {
                return Err(invalid(
                    "private RSA keys are not supported for signing; give the public key, or an EC P-256 private key to sign",
                ));
            }
            (Family::Rsa, key, None)
        }
        "EC" => {
            if str_field(jwk, "crv") != Some("P-256") {
                return Err(invalid("only the P-256 curve (ES256) is supported"));
            }
            let x = str_field(jwk, "x").ok_or_else(|| invalid("missing \"x\""))?;
            let y = str_field(jwk, "y").ok_or_else(|| invalid("missing \"y\""))?;
            let key = DecodingKey::from_ec_components(x, y)
                .map_err(|_| invalid("invalid EC public key"))?;
            let sign = if has_private {
                let d = b64_field(jwk, "d", index)?;
                let secret = p256::SecretKey::from_slice(&d)
                    .map_err(|_| invalid("invalid EC private key \"d\""))?;
                use p256::pkcs8::EncodePrivateKey as _;
                let der = secret
                    .to_pkcs8_der()
                    .map_err(|_| invalid("cannot encode the EC private key"))?;
                Some(SignKey {
                    kid: kid.clone(),
                    alg: Algorithm::ES256,
                    key: EncodingKey::from_ec_der(der.as_bytes()),
                })
            } else {
                None
            };
            (Family::EcP256, key, sign)
        }
        "OKP" => {
            if str_field(jwk, "crv") != Some("Ed25519") {
                return Err(invalid("only the Ed25519 curve (EdDSA) is supported"));
            }
            let x = str_field(jwk, "x").ok_or_else(|| invalid("missing \"x\""))?;
            let key = DecodingKey::from_ed_components(x)
                .map_err(|_| invalid("invalid Ed25519 public key"))?;
            if has_private {
                return Err(invalid(
                    "private Ed25519 keys are not supported for signing",
                ));
            }
            (Family::Ed25519, key, None)
        }
        _ => return Err(invalid("unsupported \"kty\"")),
    };
    if let Some(alg) = alg
        && !family.accepts(alg)
    {
        return Err(invalid("\"alg\" does not match the key type"));
    }
    let verify = VerifyKey {
        kid,
        family,
        external: family != Family::Hmac && sign.is_none(),
        alg,
        key,
    };
    let public = (family != Family::Hmac).then_some(Value::Object(public));
    Ok((verify, sign, public))
}

/// The parts of a JWT header Sovra looks at, read without trusting it.
struct RawHeader {
    alg: String,
    kid: Option<String>,
}

fn raw_header(token: &str) -> Result<RawHeader, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| JwtError::Malformed)?;
    let value: Map<String, Value> =
        serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)?;
    let alg = value
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::Malformed)?
        .to_owned();
    let kid = match value.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(JwtError::Malformed),
    };
    Ok(RawHeader { alg, kid })
}

fn numeric(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map(Some)
            .ok_or(JwtError::Malformed),
        Some(_) => Err(JwtError::Malformed),
    }
}

impl KeySet {
    /// Keys from the store (retired keys left out) and a configured JWK set.
    pub fn new(
        store: &KeyStore,
        jwks: Option<&Value>,
        audience: Option<String>,
    ) -> Result<KeySet, KeyError> {
        let mut verify = Vec::new();
        let mut hs_sign = None;
        for key in store.keys.iter().filter(|k| k.status != KeyStatus::Retired) {
            let secret = key.secret.as_bytes();
            let kid = (key.kid != CONFIGURED_KID).then(|| key.kid.clone());
            verify.push(VerifyKey {
                kid: kid.clone(),
                family: Family::Hmac,
                external: false,
                alg: None,
                key: DecodingKey::from_secret(secret),
            });
            if key.status == KeyStatus::Active {
                hs_sign = Some(SignKey {
                    kid,
                    alg: Algorithm::HS256,
                    key: EncodingKey::from_secret(secret),
                });
            }
        }
        let mut asym_sign = None;
        let mut public_jwks = Vec::new();
        if let Some(jwks) = jwks {
            let keys = jwks
                .get("keys")
                .and_then(Value::as_array)
                .ok_or(KeyError::NotAJwkSet)?;
            for (index, jwk) in keys.iter().enumerate() {
                let jwk = jwk.as_object().ok_or(KeyError::InvalidJwk {
                    index,
                    message: "not an object".to_owned(),
                })?;
                let (key, sign, public) = load_jwk(index, jwk)?;
                verify.push(key);
                if let Some(public) = public {
                    public_jwks.push(public);
                }
                // The first asymmetric private key signs; a configured oct
                // key signs only when the store has no key of its own.
                match sign {
                    Some(sign) if sign.alg != Algorithm::HS256 && asym_sign.is_none() => {
                        asym_sign = Some(sign);
                    }
                    Some(sign) if hs_sign.is_none() => hs_sign = Some(sign),
                    _ => {}
                }
            }
        }
        let sign = asym_sign.or(hs_sign).ok_or(KeyError::NoActiveKey)?;
        Ok(KeySet {
            verify,
            sign,
            public_jwks,
            audience,
            external: ExternalRules::default(),
            project_ref: None,
            foreign_refs: None,
            signatures: Signatures::default(),
        })
    }

    /// Binds the set to one project: every token it signs carries
    /// `"ref": project_ref` (unless the claims name one already), and a
    /// token verified by its own keys must carry exactly that `ref`. Two
    /// projects configured with the same secret then still refuse each
    /// other's tokens.
    #[must_use]
    pub fn with_project_ref(mut self, project_ref: &str) -> KeySet {
        self.project_ref = Some(project_ref.to_owned());
        self
    }

    /// For a set bound to no project (the default tenant, whose tokens
    /// carry no `ref`): refuses tokens of its own keys whose `ref` claim
    /// `guard` says names another project. A `ref` it does not know (the
    /// key of a Supabase project moving in names that project) still
    /// verifies, so two projects configured with the same secret refuse
    /// each other's tokens in both directions.
    #[must_use]
    pub fn with_foreign_refs(mut self, guard: RefGuard) -> KeySet {
        self.foreign_refs = Some(guard);
        self
    }

    /// The project this set is bound to, if any.
    pub fn project_ref(&self) -> Option<&str> {
        self.project_ref.as_deref()
    }

    /// Whether the set holds public-only asymmetric keys (an external
    /// issuer's).
    pub fn has_external_keys(&self) -> bool {
        self.verify.iter().any(|key| key.external)
    }

    /// Holds tokens verified by an external issuer's keys to these rules:
    /// they must carry `audience` in `aud` (the set's own audience when
    /// `None`), and, when `issuer` is set, exactly that `iss`. Refused when
    /// the set has external keys but no audience at all.
    pub fn with_external_rules(
        mut self,
        issuer: Option<String>,
        audience: Option<String>,
    ) -> Result<KeySet, KeyError> {
        let audience = audience
            .filter(|a| !a.is_empty())
            .or_else(|| self.audience.clone());
        if self.has_external_keys() && audience.is_none() {
            return Err(KeyError::ExternalAudienceMissing);
        }
        self.external = ExternalRules {
            enforced: true,
            issuer: issuer.filter(|i| !i.is_empty()),
            audience,
        };
        Ok(self)
    }

    /// Verifies `token` at time `now_unix` (seconds).
    pub fn verify(&self, token: &str, now_unix: i64) -> Result<Verified, JwtError> {
        let digest: Option<[u8; 32]> = (token.len() <= SIGNATURE_CACHE_MAX_TOKEN)
            .then(|| Sha256::digest(token.as_bytes()).into());
        let signed = match digest.and_then(|digest| self.signatures.get(&digest)) {
            Some(signed) => signed,
            None => {
                let signed = Arc::new(self.verify_signature(token)?);
                if let Some(digest) = digest {
                    self.signatures
                        .insert(digest, signed.clone(), signed_cost(token));
                }
                signed
            }
        };
        self.accept(signed.claims.clone(), signed.external, now_unix)
    }

    /// The signature half of [`KeySet::verify`]: the header's algorithm and
    /// key, the signature, the claims parsed.
    fn verify_signature(&self, token: &str) -> Result<Signed, JwtError> {
        let header = raw_header(token)?;
        if header.alg.eq_ignore_ascii_case("none") {
            return Err(JwtError::AlgNone);
        }
        let alg = parse_alg(&header.alg).ok_or(JwtError::AlgNotAllowed)?;
        let candidates: Vec<&VerifyKey> = match &header.kid {
            Some(kid) => {
                let named: Vec<&VerifyKey> = self
                    .verify
                    .iter()
                    .filter(|key| key.kid.as_deref() == Some(kid.as_str()))
                    .collect();
                if named.is_empty() {
                    return Err(JwtError::UnknownKey);
                }
                if !named.iter().any(|key| key.accepts(alg)) {
                    return Err(JwtError::AlgNotAllowed);
                }
                named
            }
            // Without a kid: every symmetric key, then the asymmetric keys
            // of the token's algorithm.
            None => {
                let mut keys: Vec<&VerifyKey> = self
                    .verify
                    .iter()
                    .filter(|key| key.family == Family::Hmac)
                    .collect();
                keys.extend(self.verify.iter().filter(|key| key.family != Family::Hmac));
                keys
            }
        };
        let mut validation = Validation::new(alg);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        validation.leeway = 0;
        let mut tried = false;
        let mut claims = None;
        let mut external = false;
        for key in candidates.into_iter().filter(|key| key.accepts(alg)) {
            tried = true;
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
                Ok(data) => {
                    claims = Some(data.claims);
                    external = key.external;
                    break;
                }
                Err(err) => match err.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature
                    | jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
                    | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_)
                    | jsonwebtoken::errors::ErrorKind::InvalidEddsaKey
                    | jsonwebtoken::errors::ErrorKind::InvalidKeyFormat => {}
                    jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => {
                        return Err(JwtError::AlgNotAllowed);
                    }
                    _ => return Err(JwtError::Malformed),
                },
            }
        }
        let Some(claims) = claims else {
            return Err(if tried {
                JwtError::BadSignature
            } else {
                JwtError::AlgNotAllowed
            });
        };
        Ok(Signed { claims, external })
    }

    /// The claims half of [`KeySet::verify`], at every use of a token.
    fn accept(
        &self,
        mut claims: Map<String, Value>,
        external: bool,
        now_unix: i64,
    ) -> Result<Verified, JwtError> {
        self.check_claims(&claims, now_unix, external)?;
        if !external
            && let Some(project) = &self.project_ref
            && claims.get("ref").and_then(Value::as_str) != Some(project.as_str())
        {
            return Err(JwtError::WrongIssuer);
        }
        if !external
            && self.project_ref.is_none()
            && let Some(guard) = &self.foreign_refs
            && let Some(project) = claims.get("ref").and_then(Value::as_str)
            && guard(project)
        {
            return Err(JwtError::WrongIssuer);
        }
        let role = match claims.get("role") {
            Some(Value::String(role)) if !role.is_empty() => role.clone(),
            _ => {
                claims.insert("role".to_owned(), Value::String("anon".to_owned()));
                "anon".to_owned()
            }
        };
        Ok(Verified { role, claims })
    }

    fn check_claims(
        &self,
        claims: &Map<String, Value>,
        now: i64,
        external: bool,
    ) -> Result<(), JwtError> {
        if let Some(exp) = numeric(claims, "exp")?
            && now > exp.saturating_add(LEEWAY_SECS)
        {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = numeric(claims, "nbf")?
            && now.saturating_add(LEEWAY_SECS) < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        if let Some(iat) = numeric(claims, "iat")?
            && iat > now.saturating_add(LEEWAY_SECS)
        {
            return Err(JwtError::IssuedInFuture);
        }
        let audience = if external && self.external.enforced {
            if let Some(issuer) = &self.external.issuer
                && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
            {
                return Err(JwtError::WrongIssuer);
            }
            self.external.audience.as_ref()
        } else {
            self.audience.as_ref()
        };
        if let Some(audience) = audience {
            let accepted = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(audience)),
                _ => false,
            };
            if !accepted {
                return Err(JwtError::WrongAudience);
            }
        }
        Ok(())
    }

    /// Signs `claims` with the active signing key. A set never signs a
    /// token its own rules would tie to another project: claims whose
    /// `ref` is not the bound project's (a custom access token hook may
    /// write any claim), or, for a set bound to no project, a `ref` that
    /// `with_foreign_refs`' guard says names another project on this
    /// server. Such a token would be refused here anyway, but accepted by
    /// that project were both configured with the same secret.
    pub fn sign(&self, claims: &Map<String, Value>) -> Result<String, JwtError> {
        if let Some(claimed) = claims.get("ref") {
            let foreign = match (&self.project_ref, claimed.as_str()) {
                (Some(project), Some(claimed)) => claimed != project,
                (None, Some(claimed)) => self.foreign_refs.as_ref().is_some_and(|g| g(claimed)),
                (Some(_), None) => true,
                (None, None) => false,
            };
            if foreign {
                return Err(JwtError::Signing(
                    "the `ref` claim names another project".to_owned(),
                ));
            }
        }
        let mut header = Header::new(self.sign.alg);
        header.kid.clone_from(&self.sign.kid);
        if let Some(project) = &self.project_ref
            && !claims.contains_key("ref")
        {
            let mut bound = claims.clone();
            bound.insert("ref".to_owned(), Value::from(project.as_str()));
            return jsonwebtoken::encode(&header, &bound, &self.sign.key)
                .map_err(|err| JwtError::Signing(err.to_string()));
        }
        jsonwebtoken::encode(&header, claims, &self.sign.key)
            .map_err(|err| JwtError::Signing(err.to_string()))
    }

    /// A Supabase-style API key: `{"iss", "role", "iat", "exp"}`, plus
    /// `aud` when the set requires an audience, so that the keys a
    /// project mints for itself verify under its own rules.
    pub fn mint_api_key(
        &self,
        role: &str,
        issuer: &str,
        iat: i64,
        exp: i64,
    ) -> Result<String, JwtError> {
        let mut claims = Map::new();
        claims.insert("iss".to_owned(), Value::from(issuer));
        claims.insert("role".to_owned(), Value::from(role));
        claims.insert("iat".to_owned(), Value::from(iat));
        claims.insert("exp".to_owned(), Value::from(exp));
        if let Some(audience) = &self.audience {
            claims.insert("aud".to_owned(), Value::from(audience.as_str()));
        }
        self.sign(&claims)
    }

    /// The public JWK set: public parts of asymmetric keys only.
    pub fn public_jwks(&self) -> Value {
        serde_json::json!({ "keys": self.public_jwks })
    }
}

#[cfg(test)]
mod tests;
