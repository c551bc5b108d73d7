//! External OpenID Connect providers for `POST /token?grant_type=id_token`
//! (auth-js `signInWithIdToken`): the provider's ID token is verified
//! against its published keys (discovery, then its JWKS: signature, `iss`,
//! `exp`, then GoTrue's checks of `aud`, `sub` and the nonce), and the
//! user is found by the identity, linked by verified email, or created, as
//! GoTrue does.
//!
//! The verification is pure ([`verify_id_token`]); fetching the discovery
//! document and the key set is [`AuthService::provider_keys`], cached per
//! issuer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use sovra_pg::GenericClient;
use uuid::Uuid;

use crate::db::Cached as _;
use crate::error::{AuthError, AuthResult};
use crate::session::Via;
use crate::{AuthService, Ctx, ok_json, user};

/// How long a provider's key set is trusted before it is fetched again
/// (an unknown `kid` fetches it at once, at most every [`REFETCH_GAP`]).
const KEYS_TTL: Duration = Duration::from_secs(600);
const REFETCH_GAP: Duration = Duration::from_secs(10);
/// Clock skew allowed on `exp`/`iat`/`nbf`.
const LEEWAY_SECS: u64 = 30;

/// One OpenID Connect provider Sovra accepts ID tokens from (and signs
/// users in through, with a client secret).
#[derive(Debug, Clone)]
pub struct OidcProvider {
    /// Its issuer (`iss`), where discovery starts (Microsoft: the
    /// authority, see [`OidcKind::Azure`]).
    pub issuer: String,
    /// Client ids an ID token's `aud` must name one of.
    pub client_ids: Vec<String>,
    /// GoTrue's `skip_nonce_check` (for clients that cannot pass one).
    pub skip_nonce_check: bool,
    /// The client secret: with it, `/authorize` and `/callback` sign users
    /// in through the provider's pages (authorization code flow).
    pub secret: Option<crate::secret::Redacted>,
    /// The provider's quirks.
    pub kind: OidcKind,
}

/// What sets an OpenID Connect provider apart from the standard.
#[derive(Debug, Clone, Default)]
pub enum OidcKind {
    #[default]
    Standard,
    /// Microsoft: a multi-tenant authority (`…/common/v2.0`,
    /// `organizations`, `consumers`) issues tokens as `…/{tid}/v2.0`, each
    /// with its own tenant id (`tid`); the email is verified as GoTrue
    /// reads `xms_edov`.
    Azure,
    /// Apple: the browser comes back with `response_mode=form_post`, the
    /// first sign-in posts the user's name as `user` JSON, and the client
    /// secret is an ES256 JWT signed with the team's key.
    Apple(Option<AppleKey>),
}

/// The key Apple client secrets are signed with.
#[derive(Clone)]
pub struct AppleKey {
    pub team_id: String,
    pub key_id: String,
    key: std::sync::Arc<jsonwebtoken::EncodingKey>,
}

impl std::fmt::Debug for AppleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppleKey")
            .field("team_id", &self.team_id)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl AppleKey {
    /// The key of the `.p8` PEM text; the error says what is wrong (never
    /// the key).
    pub fn new(team_id: &str, key_id: &str, pem: &str) -> Result<AppleKey, String> {
        use base64::Engine as _;
        use p256::pkcs8::DecodePrivateKey as _;
        let not_a_key = || "the private key is not a PEM PKCS#8 P-256 (ES256) key".to_owned();
        let body: String = pem
            .trim()
            .strip_prefix("-----BEGIN PRIVATE KEY-----")
            .and_then(|rest| rest.strip_suffix("-----END PRIVATE KEY-----"))
            .ok_or_else(not_a_key)?
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| not_a_key())?;
        p256::SecretKey::from_pkcs8_der(&der).map_err(|_| not_a_key())?;
        let key = jsonwebtoken::EncodingKey::from_ec_der(&der);
        Ok(AppleKey {
            team_id: team_id.trim().to_owned(),
            key_id: key_id.trim().to_owned(),
            key: std::sync::Arc::new(key),
        })
    }

    /// Apple's client secret for `client_id` (the Services ID): an ES256
    /// JWT with the key's id, the team as issuer, the client as subject
    /// and Apple (`audience`) as audience, valid five minutes from `now`.
    pub fn client_secret(&self, client_id: &str, audience: &str, now: u64) -> AuthResult<String> {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = json!({"iss": self.team_id, "iat": now, "exp": now + 300,
                            "aud": audience, "sub": client_id});
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|err| {
            tracing::error!(error = %err, "signing the Apple client secret failed");
            AuthError::internal()
        })
    }
}

/// The tenant template of a Microsoft multi-tenant authority
/// (`https://login.microsoftonline.com/common/v2.0` →
/// `https://login.microsoftonline.com/{tenantid}/v2.0`) and which
/// segment it replaced; `None` for a single tenant's authority.
fn azure_template(authority: &str) -> Option<(String, &'static str)> {
    let mut parts: Vec<&str> = authority.split('/').collect();
    // scheme, "", host, then the path.
    let at = parts.iter().skip(3).position(|p| {
        matches!(
            p.to_ascii_lowercase().as_str(),
            "common" | "organizations" | "consumers"
        )
    })? + 3;
    let which = match parts[at].to_ascii_lowercase().as_str() {
        "common" => "common",
        "organizations" => "organizations",
        _ => "consumers",
    };
    parts[at] = "{tenantid}";
    Some((parts.join("/"), which))
}

/// The tenant of Microsoft accounts (outlook.com and the like).
const MICROSOFT_CONSUMER_TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";

impl OidcProvider {
    /// Whether `iss` is this provider's issuer for a token with `claims`.
    /// Microsoft's multi-tenant authorities: the template with the token's
    /// own `tid`, as Microsoft documents (`organizations` refuses personal
    /// accounts, `consumers` takes only them).
    pub fn accepts_issuer(&self, iss: &str, claims: &Map<String, Value>) -> bool {
        let exact = |expected: &str| crate::crypto::equal(expected, iss);
        match (&self.kind, azure_template(&self.issuer)) {
            (OidcKind::Azure, Some((template, which))) => {
                let Some(tid) = claims.get("tid").and_then(Value::as_str) else {
                    return false;
                };
                let well_formed = !tid.is_empty()
                    && tid.len() <= 64
                    && tid.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                let consumer = tid.eq_ignore_ascii_case(MICROSOFT_CONSUMER_TENANT);
                let allowed = match which {
                    "organizations" => !consumer,
                    "consumers" => consumer,
                    _ => true,
                };
                well_formed && allowed && exact(&template.replace("{tenantid}", tid))
            }
            _ => exact(&self.issuer),
        }
    }

    /// GoTrue's identity data of verified `claims`, with the provider's
    /// quirks.
    pub fn identity(&self, claims: &Map<String, Value>) -> Map<String, Value> {
        match self.kind {
            OidcKind::Azure => {
                let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
                let mut data = identity_data(claims, iss);
                if data.contains_key("email") {
                    data.insert(
                        "email_verified".to_owned(),
                        json!(azure_email_verified(claims)),
                    );
                }
                for key in ["tid", "oid"] {
                    if let Some(value) = claims.get(key).and_then(Value::as_str) {
                        data.insert(key.to_owned(), json!(value));
                    }
                }
                data
            }
            _ => identity_data(claims, &self.issuer),
        }
    }

    /// Whether Sovra sends PKCE to the provider (Apple documents none).
    fn sends_pkce(&self) -> bool {
        !matches!(self.kind, OidcKind::Apple(_))
    }
}

/// GoTrue's reading of a Microsoft ID token's email: verified when there
/// is one and `xms_edov` (email domain owner verified) is absent or true
/// (`true`, `"1"` or `"true"`: Microsoft encodes it either way).
fn azure_email_verified(claims: &Map<String, Value>) -> bool {
    let has_email = claims
        .get("email")
        .and_then(Value::as_str)
        .is_some_and(|e| !e.is_empty());
    has_email
        && match claims.get("xms_edov") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "1" || s == "true",
            Some(_) => false,
        }
}

/// The providers configured (GoTrue's `GOTRUE_EXTERNAL_<NAME>_*`).
#[derive(Debug, Clone, Default)]
pub struct ExternalConfig {
    /// `google`: issuer `https://accounts.google.com`.
    pub google: Option<OidcProvider>,
    /// `keycloak`: any OpenID Connect issuer (its `url`), as GoTrue's
    /// Keycloak provider.
    pub keycloak: Option<OidcProvider>,
    /// `apple`: OpenID Connect with form_post and a JWT client secret.
    pub apple: Option<OidcProvider>,
    /// `azure`: Microsoft, multi-tenant or one tenant.
    pub azure: Option<OidcProvider>,
    /// `github`: OAuth 2.0 (not OIDC): the user and emails endpoints.
    pub github: Option<OAuthProvider>,
    /// `gitlab`: OAuth 2.0 with `/api/v4/user`.
    pub gitlab: Option<OAuthProvider>,
    /// `discord`: OAuth 2.0 with `/users/@me`.
    pub discord: Option<OAuthProvider>,
}

/// Which OAuth 2.0 (not OpenID Connect) provider: where its endpoints are
/// and how its user answer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileKind {
    Github,
    Gitlab,
    Discord,
}

impl ProfileKind {
    pub fn name(self) -> &'static str {
        match self {
            ProfileKind::Github => "github",
            ProfileKind::Gitlab => "gitlab",
            ProfileKind::Discord => "discord",
        }
    }

    /// The authorize and token endpoints' paths under the provider's URL,
    /// and the scope GoTrue asks for.
    fn endpoints(self) -> (&'static str, &'static str, &'static str) {
        match self {
            ProfileKind::Github => (
                "/login/oauth/authorize",
                "/login/oauth/access_token",
                "user:email",
            ),
            ProfileKind::Gitlab => ("/oauth/authorize", "/oauth/token", "read_user"),
            ProfileKind::Discord => (
                "/api/oauth2/authorize",
                "/api/oauth2/token",
                "email identify",
            ),
        }
    }
}

/// An OAuth 2.0 provider whose user comes from its API: GitHub (or GitHub
/// Enterprise), GitLab (or a self-hosted one), Discord.
#[derive(Debug, Clone)]
pub struct OAuthProvider {
    pub kind: ProfileKind,
    pub client_id: String,
    pub secret: crate::secret::Redacted,
    /// Where the authorize and token endpoints are
    /// (`https://github.com`, `https://gitlab.com`, `https://discord.com`).
    pub url: String,
    /// Where the user API is (`https://api.github.com`,
    /// `<url>/api/v4`, `<url>/api`).
    pub api_url: String,
}

/// GitHub's name for what is now [`OAuthProvider`].
pub type GithubProvider = OAuthProvider;

/// GoTrue's identity data of a GitLab user (`/api/v4/user`): the email is
/// verified when GitLab reports it confirmed (`confirmed_at`).
pub fn gitlab_data(user: &Value, issuer: &str) -> AuthResult<Map<String, Value>> {
    let id = profile_id(user)?;
    let text = |k: &str| user.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let email = text("email");
    let mut out = base_identity(
        issuer,
        &id,
        Some((email.as_str(), !text("confirmed_at").is_empty())),
    );
    for (from, to) in [
        ("name", "name"),
        ("name", "full_name"),
        ("avatar_url", "avatar_url"),
        ("avatar_url", "picture"),
        ("username", "user_name"),
        ("username", "preferred_username"),
    ] {
        let value = text(from);
        if !value.is_empty() {
            out.insert(to.to_owned(), json!(value));
        }
    }
    out.insert("phone_verified".to_owned(), json!(false));
    Ok(out)
}

/// GoTrue's identity data of a Discord user (`/users/@me`): `verified`
/// says whether the email is, the avatar is Discord's CDN URL (animated
/// hashes `a_…` as GIF; no avatar: the default one, by discriminator, or
/// for the new unique usernames (discriminator `0`) by `(id >> 22) % 6`).
pub fn discord_data(user: &Value, issuer: &str) -> AuthResult<Map<String, Value>> {
    let id = profile_id(user)?;
    let text = |k: &str| user.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    let (username, discriminator, avatar) =
        (text("username"), text("discriminator"), text("avatar"));
    let avatar_url = if avatar.is_empty() {
        let index = match discriminator.parse::<u64>() {
            Ok(d) if d != 0 => d % 5,
            _ => id.parse::<u64>().map_or(0, |n| (n >> 22) % 6),
        };
        format!("https://cdn.discordapp.com/embed/avatars/{index}.png")
    } else {
        let ext = if avatar.starts_with("a_") {
            "gif"
        } else {
            "png"
        };
        format!("https://cdn.discordapp.com/avatars/{id}/{avatar}.{ext}")
    };
    let email = text("email");
    let verified = user.get("verified").and_then(Value::as_bool) == Some(true);
    let mut out = base_identity(issuer, &id, Some((email.as_str(), verified)));
    let name = if discriminator.is_empty() || discriminator == "0" {
        username.clone()
    } else {
        format!("{username}#{discriminator}")
    };
    out.insert("name".to_owned(), json!(name));
    out.insert("full_name".to_owned(), json!(username));
    let global = text("global_name");
    if !global.is_empty() {
        out.insert("custom_claims".to_owned(), json!({"global_name": global}));
    }
    out.insert("avatar_url".to_owned(), json!(avatar_url));
    out.insert("picture".to_owned(), json!(avatar_url));
    out.insert("phone_verified".to_owned(), json!(false));
    Ok(out)
}

/// What every provider's identity data starts with: the issuer, the
/// subject, and the email (lower-cased; none when empty) with whether the
/// provider verified it.
fn base_identity(issuer: &str, id: &str, email: Option<(&str, bool)>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("iss".to_owned(), json!(issuer));
    out.insert("sub".to_owned(), json!(id));
    out.insert("provider_id".to_owned(), json!(id));
    if let Some((email, verified)) = email.filter(|(e, _)| !e.is_empty()) {
        out.insert("email".to_owned(), json!(email.to_lowercase()));
        out.insert("email_verified".to_owned(), json!(verified));
    }
    out
}

/// A profile's `id` (a number or a non-empty string) as text.
fn profile_id(user: &Value) -> AuthResult<String> {
    match user.get("id") {
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(AuthError::bad_request(
            "bad_oauth_callback",
            "Error getting user profile from external provider",
        )),
    }
}

/// The name Apple posts as `user` JSON on the first sign-in only
/// (`{"name":{"firstName":…,"lastName":…},"email":…}`), merged into
/// identity data that has none.
pub fn apple_first_sign_in(data: &mut Map<String, Value>, user_json: &str) {
    let Ok(user) = serde_json::from_str::<Value>(user_json) else {
        return;
    };
    let part = |k: &str| {
        user.pointer(&format!("/name/{k}"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    let full = [part("firstName"), part("lastName")]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if !full.is_empty() {
        data.entry("name".to_owned()).or_insert(json!(full));
        data.entry("full_name".to_owned()).or_insert(json!(full));
    }
}

/// GoTrue's identity data of a GitHub user: the `/user` answer and the
/// `/user/emails` list, the primary verified address preferred.
pub fn github_data(user: &Value, emails: &Value) -> AuthResult<Map<String, Value>> {
    let id = profile_id(user)?;
    let list: Vec<&Value> = emails
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let flag = |e: &Value, k: &str| e.get(k).and_then(Value::as_bool) == Some(true);
    let chosen = list
        .iter()
        .find(|e| flag(e, "primary") && flag(e, "verified"))
        .or_else(|| list.iter().find(|e| flag(e, "verified")))
        .or_else(|| list.iter().find(|e| flag(e, "primary")));
    let mut out = Map::new();
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    out.insert("iss".to_owned(), json!("https://api.github.com"));
    out.insert("sub".to_owned(), json!(id));
    out.insert("provider_id".to_owned(), json!(id));
    if let Some(email) = chosen {
        out.insert(
            "email".to_owned(),
            json!(text(email, "email").to_lowercase()),
        );
        out.insert("email_verified".to_owned(), json!(flag(email, "verified")));
    }
    let name = text(user, "name");
    if !name.is_empty() {
        out.insert("name".to_owned(), json!(name));
        out.insert("full_name".to_owned(), json!(name));
    }
    let login = text(user, "login");
    if !login.is_empty() {
        out.insert("user_name".to_owned(), json!(login));
        out.insert("preferred_username".to_owned(), json!(login));
    }
    let avatar = text(user, "avatar_url");
    if !avatar.is_empty() {
        out.insert("avatar_url".to_owned(), json!(avatar));
    }
    out.insert("phone_verified".to_owned(), json!(false));
    Ok(out)
}

impl ExternalConfig {
    /// The enabled providers by name.
    pub fn enabled(&self) -> Vec<(&'static str, &OidcProvider)> {
        let mut out = Vec::new();
        if let Some(p) = &self.google {
            out.push(("google", p));
        }
        if let Some(p) = &self.keycloak {
            out.push(("keycloak", p));
        }
        if let Some(p) = &self.apple {
            out.push(("apple", p));
        }
        if let Some(p) = &self.azure {
            out.push(("azure", p));
        }
        out
    }

    /// The enabled OAuth 2.0 providers.
    pub fn oauth(&self) -> Vec<&OAuthProvider> {
        [&self.github, &self.gitlab, &self.discord]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Every enabled provider's name (`GET /settings`).
    pub fn enabled_names(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.enabled().into_iter().map(|(n, _)| n).collect();
        names.extend(self.oauth().into_iter().map(|p| p.kind.name()));
        names
    }
}

/// Why an ID token was refused, in GoTrue's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdTokenError {
    /// Signature, algorithm, issuer, expiry or shape: "Bad ID token".
    Bad(String),
    Audience,
    NoSubject,
    NonceMissing,
    NonceMismatch,
    /// No key of the set carries the token's `kid`.
    UnknownKey,
}

impl IdTokenError {
    fn to_auth(&self) -> AuthError {
        match self {
            IdTokenError::Bad(_) | IdTokenError::UnknownKey => {
                AuthError::oauth("invalid request", "Bad ID token")
            }
            IdTokenError::Audience => {
                AuthError::oauth("invalid request", "Unacceptable audience in id_token")
            }
            IdTokenError::NoSubject => {
                AuthError::oauth("invalid request", "Missing sub claim in id_token")
            }
            IdTokenError::NonceMissing => AuthError::oauth(
                "invalid request",
                "Passed nonce and nonce in id_token should either both exist or not.",
            ),
            IdTokenError::NonceMismatch => AuthError::oauth("invalid nonce", "Nonces mismatch"),
        }
    }
}

/// Verifies `token` from `provider` against `keys` at `now` (Unix
/// seconds): an asymmetric signature by a key of the set (by `kid`, or
/// the only key), the issuer, `exp`/`nbf`, an audience among the client
/// ids, a subject, and, unless skipped, that `nonce` hashes (SHA-256,
/// hex) to the token's. Returns the claims.
pub fn verify_id_token(
    token: &str,
    keys: &JwkSet,
    provider: &OidcProvider,
    nonce: Option<&str>,
    now: u64,
) -> Result<Map<String, Value>, IdTokenError> {
    let bad = |why: &str| IdTokenError::Bad(why.to_owned());
    let header = jsonwebtoken::decode_header(token).map_err(|e| bad(&e.to_string()))?;
    if !matches!(
        header.alg,
        Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512
            | Algorithm::ES256
            | Algorithm::ES384
            | Algorithm::EdDSA
    ) {
        return Err(bad("the token is not signed with an asymmetric key"));
    }
    let jwk = match &header.kid {
        Some(kid) => keys.find(kid).ok_or(IdTokenError::UnknownKey)?,
        None if keys.keys.len() == 1 => &keys.keys[0],
        None => return Err(IdTokenError::UnknownKey),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(&e.to_string()))?;
    let mut validation = Validation::new(header.alg);
    // The issuer is checked below: Microsoft's depends on the token's
    // tenant.
    validation.validate_aud = false;
    validation.validate_nbf = true;
    validation.leeway = LEEWAY_SECS;
    validation.set_required_spec_claims(&["exp", "iss"]);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation)
        .map_err(|e| bad(&e.to_string()))?;
    let claims = data.claims;
    let iss = claims.get("iss").and_then(Value::as_str).unwrap_or("");
    if !provider.accepts_issuer(iss, &claims) {
        return Err(bad("wrong issuer"));
    }
    // jsonwebtoken checks exp against the system clock; check `now` too
    // so that callers (and tests) decide the time.
    let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
    if exp + LEEWAY_SECS < now {
        return Err(bad("expired"));
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(auds)) => auds.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let accepted = provider
        .client_ids
        .iter()
        .filter(|id| !id.is_empty())
        .any(|id| audiences.contains(&id.as_str()));
    if !accepted {
        return Err(IdTokenError::Audience);
    }
    if claims
        .get("sub")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(IdTokenError::NoSubject);
    }
    if !provider.skip_nonce_check {
        let token_nonce = claims
            .get("nonce")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        let given = nonce.filter(|n| !n.is_empty());
        match (token_nonce, given) {
            (None, None) => {}
            (Some(expected), Some(given)) => {
                let hash = hex(&Sha256::digest(given.as_bytes()));
                if !crate::crypto::equal(&hash, expected) {
                    return Err(IdTokenError::NonceMismatch);
                }
            }
            _ => return Err(IdTokenError::NonceMissing),
        }
    }
    Ok(claims)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What GoTrue keeps of an OIDC identity (`identity_data`): the standard
/// claims it maps, under GoTrue's names.
pub fn identity_data(claims: &Map<String, Value>, issuer: &str) -> Map<String, Value> {
    let mut out = Map::new();
    let text = |name: &str| claims.get(name).and_then(Value::as_str).unwrap_or("");
    out.insert("iss".to_owned(), json!(issuer));
    out.insert("sub".to_owned(), json!(text("sub")));
    out.insert("provider_id".to_owned(), json!(text("sub")));
    let email = text("email").to_lowercase();
    if !email.is_empty() {
        out.insert("email".to_owned(), json!(email));
        out.insert("email_verified".to_owned(), json!(email_verified(claims)));
    }
    let name = text("name");
    if !name.is_empty() {
        out.insert("name".to_owned(), json!(name));
        out.insert("full_name".to_owned(), json!(name));
    }
    for (from, to) in [
        ("picture", "picture"),
        ("picture", "avatar_url"),
        ("preferred_username", "preferred_username"),
        ("phone_number", "phone"),
    ] {
        let value = text(from);
        if !value.is_empty() {
            out.insert(to.to_owned(), json!(value));
        }
    }
    out.insert(
        "phone_verified".to_owned(),
        json!(claims.get("phone_number_verified").and_then(Value::as_bool) == Some(true)),
    );
    out
}

/// `email_verified` as providers send it (a boolean, or Apple's string).
fn email_verified(claims: &Map<String, Value>) -> bool {
    match claims.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// Cached key sets and discovery documents by issuer.
#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    sets: Mutex<HashMap<String, (Instant, JwkSet)>>,
    documents: Mutex<HashMap<String, (Instant, Value)>>,
}

/// How long a `/authorize` flow may take to come back (GoTrue's flow
/// state lifetime).
pub const FLOW_TTL_SECS: f64 = 300.0;

/// The `state` parameter of flow `id`: the id and its MAC under the
/// service key, so that only states Sovra made reach the database.
pub fn sign_state(key: &crate::secret::ServiceKey, id: Uuid) -> String {
    use base64::Engine as _;
    let mac = key.mac("oauth-state", id.as_bytes());
    format!(
        "{}.{}",
        id.simple(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac)
    )
}

/// A provider's token kept in `auth.flow_state` until the PKCE code is
/// exchanged (single use): sealed under the service key, bound to the
/// code and the column. Empty stays empty.
pub(crate) fn seal_flow_token(
    key: &crate::secret::ServiceKey,
    code: &str,
    column: &str,
    token: &str,
) -> String {
    if token.is_empty() {
        return String::new();
    }
    key.seal(
        token.as_bytes(),
        format!("flow_state\0{code}\0{column}").as_bytes(),
    )
    .unwrap_or_default()
}

/// Opens what [`seal_flow_token`] sealed; a row of an earlier version
/// (plaintext) is answered as it is, one that does not open as empty.
pub(crate) fn open_flow_token(
    key: &crate::secret::ServiceKey,
    code: &str,
    column: &str,
    stored: &str,
) -> String {
    if !crate::secret::is_sealed(stored) {
        return stored.to_owned();
    }
    key.open(stored, format!("flow_state\0{code}\0{column}").as_bytes())
        .and_then(|plain| String::from_utf8(plain).ok())
        .unwrap_or_default()
}

/// The flow a `state` names, if Sovra signed it.
pub fn open_state(key: &crate::secret::ServiceKey, state: &str) -> Option<Uuid> {
    use base64::Engine as _;
    let (id, mac) = state.split_once('.')?;
    let id = Uuid::parse_str(id).ok()?;
    let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(key.mac("oauth-state", id.as_bytes()));
    crate::crypto::equal(&expected, mac).then_some(id)
}

impl AuthService {
    /// `POST /token?grant_type=id_token`: GoTrue's checks in its order, then
    /// the configured provider's key set, then the account.
    pub(crate) async fn id_token_grant(
        &self,
        ctx: &Ctx<'_>,
    ) -> AuthResult<axum::response::Response> {
        let body: Value = ctx.json()?;
        let text = |name: &str| body.get(name).and_then(Value::as_str).unwrap_or("");
        let (id_token, provider_name) = (text("id_token"), text("provider"));
        let issuer = text("issuer");
        let configured = self
            .config
            .external
            .enabled()
            .into_iter()
            .find(|(name, p)| {
                !id_token.is_empty()
                    && (*name == provider_name || (!issuer.is_empty() && p.issuer == issuer))
            })
            .map(|(name, p)| (name, p.clone()));
        // auth-js `linkIdentity({provider, token})`: the signed-in caller
        // links the token's identity (manual linking only).
        let link = body.get("link_identity").and_then(Value::as_bool) == Some(true);
        if link && !self.config.manual_linking {
            return self.manual_linking_disabled(ctx).await;
        }
        let Some((name, provider)) = configured else {
            return self.id_token_disabled(ctx);
        };
        let link_user = if link {
            let client = self.pool.get().await?;
            Some(self.current(ctx, &client).await?.user.id)
        } else {
            None
        };
        self.limit(crate::limits::Bucket::SignIn, &ctx.ip_key())
            .await?;
        let nonce = Some(text("nonce"));
        let now = crate::time::now_unix().unsigned_abs();
        let mut keys = self.provider_keys(&provider, false).await?;
        let mut verified = verify_id_token(id_token, &keys, &provider, nonce, now);
        if verified == Err(IdTokenError::UnknownKey) {
            // Keys rotate: fetch the set again once.
            keys = self.provider_keys(&provider, true).await?;
            verified = verify_id_token(id_token, &keys, &provider, nonce, now);
        }
        let claims = verified.map_err(|err| {
            tracing::info!(provider = name, reason = ?err, "ID token refused");
            err.to_auth()
        })?;
        let data = provider.identity(&claims);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let user_id = match link_user {
            Some(user_id) => {
                self.link_external_identity(&tx, user_id, name, &data)
                    .await?
            }
            None => self.external_account(&tx, name, &data).await?,
        };
        let session = self
            .start_session(&tx, ctx, user_id, "oauth", Via::Grant)
            .await?;
        let actor = user::by_id(&tx, user_id).await?;
        self.audit(
            &tx,
            ctx,
            if link_user.is_some() {
                "identity_linked"
            } else {
                "login"
            },
            actor.as_ref(),
            "",
            json!({"provider": name, "provider_type": "id_token"}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(session))
    }

    /// The provider's discovery document, cached.
    async fn discovery(&self, provider: &OidcProvider) -> AuthResult<Value> {
        if let Ok(docs) = self.provider_key_cache.documents.lock()
            && let Some((fetched, doc)) = docs.get(&provider.issuer)
            && fetched.elapsed() < KEYS_TTL
        {
            return Ok(doc.clone());
        }
        let discovery = format!(
            "{}/.well-known/openid-configuration",
            provider.issuer.trim_end_matches('/')
        );
        let document: Value = provider_http()?
            .get(&discovery)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| unreachable_provider(provider, "OIDC discovery failed", &e))?
            .json()
            .await
            .map_err(|e| unreachable_provider(provider, "OIDC discovery is not JSON", &e))?;
        if let Ok(mut docs) = self.provider_key_cache.documents.lock() {
            docs.insert(provider.issuer.clone(), (Instant::now(), document.clone()));
        }
        Ok(document)
    }

    /// The provider's key set (discovery, then `jwks_uri`), cached.
    async fn provider_keys(&self, provider: &OidcProvider, refresh: bool) -> AuthResult<JwkSet> {
        if let Ok(sets) = self.provider_key_cache.sets.lock()
            && let Some((fetched, set)) = sets.get(&provider.issuer)
        {
            let age = fetched.elapsed();
            if age < KEYS_TTL && !(refresh && age >= REFETCH_GAP) {
                return Ok(set.clone());
            }
        }
        let unavailable =
            |what: &str, err: &dyn std::fmt::Display| unreachable_provider(provider, what, err);
        let http = provider_http()?;
        let document = self.discovery(provider).await?;
        let jwks_uri = document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| unavailable("OIDC discovery has no jwks_uri", &"missing"))?;
        let set: JwkSet = http
            .get(jwks_uri)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| unavailable("fetching the JWKS failed", &e))?
            .json()
            .await
            .map_err(|e| unavailable("the JWKS is not a key set", &e))?;
        if let Ok(mut sets) = self.provider_key_cache.sets.lock() {
            sets.insert(provider.issuer.clone(), (Instant::now(), set.clone()));
        }
        Ok(set)
    }

    /// Finds the user of an external identity, as GoTrue does: the identity
    /// (`provider`, `sub`) signs in its user (its data refreshed); else a
    /// user with the same *verified* email gets the identity linked; else a
    /// new user is made. An unverified email is never linked, and makes a
    /// new user only with `email_autoconfirm` (GoTrue would mail a
    /// confirmation first).
    pub(crate) async fn external_account(
        &self,
        client: &impl GenericClient,
        provider: &str,
        data: &Map<String, Value>,
    ) -> AuthResult<Uuid> {
        let sub = data.get("sub").and_then(Value::as_str).unwrap_or("");
        let data_json = Value::Object(data.clone());
        let found = client
            .c_query_opt(
                "update auth.identities set identity_data = $3, last_sign_in_at = now(), updated_at = now()
                  where provider = $1 and provider_id = $2 returning user_id",
                &[&provider, &sub, &data_json],
            )
            .await?;
        if let Some(row) = found {
            return Ok(row.get(0));
        }
        let email = data.get("email").and_then(Value::as_str).unwrap_or("");
        let verified = data.get("email_verified").and_then(Value::as_bool) == Some(true);
        if !email.is_empty()
            && verified
            && let Some(existing) = user::by_email(client, email).await?
        {
            client
                    .c_execute(
                        "insert into auth.identities (provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at)
                         values ($1, $2, $3, $4, now(), now(), now())",
                        &[&sub, &existing.id, &data_json, &provider],
                    )
                    .await?;
            client
                    .c_execute(
                        "update auth.users set
                           raw_app_meta_data = jsonb_set(coalesce(raw_app_meta_data, '{}'), '{providers}',
                             (select coalesce(jsonb_agg(distinct p), '[]'::jsonb) from (
                                select jsonb_array_elements_text(coalesce(raw_app_meta_data->'providers', '[]')) as p
                                union select $2) ps)),
                           email_confirmed_at = coalesce(email_confirmed_at, now()),
                           updated_at = now()
                         where id = $1",
                        &[&existing.id, &provider],
                    )
                    .await?;
            return Ok(existing.id);
        }
        if !email.is_empty() && !verified && !self.config.email_autoconfirm {
            return Err(AuthError::unprocessable(
                "provider_email_needs_verification",
                format!("Unverified email with {provider}."),
            ));
        }
        let id = Uuid::new_v4();
        let mut metadata = data.clone();
        metadata.remove("iss");
        let app_metadata = json!({"provider": provider, "providers": [provider]});
        let Value::Object(app_metadata) = app_metadata else {
            return Err(AuthError::internal());
        };
        // An address taken by an unverified account is not linked: the
        // new user goes without it, as GoTrue keeps accounts apart.
        let email_free = email.is_empty() || user::by_email(client, email).await?.is_none();
        let new = crate::account::NewUser {
            id,
            email: (email_free && !email.is_empty()).then_some(email),
            phone: None,
            password_hash: None,
            user_metadata: metadata,
            app_metadata: Some(app_metadata),
            email_confirmed: verified || self.config.email_autoconfirm,
            phone_confirmed: false,
            anonymous: false,
            invited: false,
            role: "authenticated",
        };
        self.insert_user_with_identity(client, new, provider, sub, &data_json)
            .await?;
        Ok(id)
    }
}

impl AuthService {
    /// [`AuthService::insert_user`] with the external identity instead of
    /// an `email` one.
    async fn insert_user_with_identity(
        &self,
        client: &impl GenericClient,
        new: crate::account::NewUser<'_>,
        provider: &str,
        sub: &str,
        data: &Value,
    ) -> AuthResult<()> {
        let id = self.insert_user(client, new).await?;
        client
            .c_execute(
                "delete from auth.identities where user_id = $1 and provider in ('email', 'phone')",
                &[&id],
            )
            .await?;
        client
            .c_execute(
                "insert into auth.identities (provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at)
                 values ($1, $2, $3, $4, now(), now(), now())",
                &[&sub, &id, data, &provider],
            )
            .await?;
        Ok(())
    }
}

/// An HTTP client for provider calls: bounded in time, no redirects
/// followed beyond three.
fn provider_http() -> AuthResult<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .map_err(|err| {
            tracing::error!(error = %err, "building an HTTP client failed");
            AuthError::internal()
        })
}

fn unreachable_provider(
    provider: &OidcProvider,
    what: &str,
    err: &dyn std::fmt::Display,
) -> AuthError {
    tracing::warn!(issuer = %provider.issuer, error = %err, "{what}");
    AuthError::oauth("server_error", "Unable to reach the provider")
}

/// `url` with `params` appended to its query (`sep` `?`) or fragment
/// (`sep` `#`).
fn with_params(url: &str, sep: char, params: &[(&str, &str)]) -> String {
    let encoded: Vec<String> = params
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", crate::crypto::percent_encode(v)))
        .collect();
    let joiner = match sep {
        '?' if url.contains('?') => '&',
        c => c,
    };
    format!("{url}{joiner}{}", encoded.join("&"))
}

impl AuthService {
    /// The provider `/authorize` and `/callback` may use: enabled, with a
    /// client secret.
    fn redirect_provider(&self, name: &str) -> Option<(&'static str, OidcProvider)> {
        self.config
            .external
            .enabled()
            .into_iter()
            .find(|(n, p)| {
                *n == name && (p.secret.is_some() || matches!(p.kind, OidcKind::Apple(Some(_))))
            })
            .map(|(n, p)| (n, p.clone()))
    }

    fn oauth_provider(&self, name: &str) -> Option<(&'static str, OAuthProvider)> {
        self.config
            .external
            .oauth()
            .into_iter()
            .find(|p| p.kind.name() == name)
            .map(|p| (p.kind.name(), p.clone()))
    }

    /// An OAuth 2.0 provider's code exchange, then its user API.
    async fn oauth_identity(
        &self,
        provider: &OAuthProvider,
        code: &str,
        verifier: &str,
    ) -> AuthResult<(Map<String, Value>, String, String)> {
        let http = provider_http()?;
        let name = provider.kind.name();
        let failed = |what: &str, err: &dyn std::fmt::Display| {
            tracing::warn!(provider = name, error = %err, "{what}");
            AuthError::bad_request("bad_oauth_callback", "Unable to exchange external code")
        };
        let (_, token_path, _) = provider.kind.endpoints();
        let callback = self.callback_url();
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("client_id", provider.client_id.as_str()),
            ("client_secret", provider.secret.0.as_str()),
            ("code", code),
            ("redirect_uri", callback.as_str()),
        ];
        if provider.kind != ProfileKind::Discord {
            form.push(("code_verifier", verifier));
        }
        let response = http
            .post(format!(
                "{}{token_path}",
                provider.url.trim_end_matches('/')
            ))
            .header("accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| failed("the code exchange failed", &e))?;
        let status = response.status();
        let tokens: Value = response
            .json()
            .await
            .map_err(|e| failed("the token answer is not JSON", &e))?;
        let access = tokens
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| status.is_success() && !t.is_empty())
            .ok_or_else(|| {
                failed(
                    "the provider refused the code",
                    &tokens.get("error").cloned().unwrap_or(Value::Null),
                )
            })?
            .to_owned();
        let refresh = tokens
            .get("refresh_token")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let api = provider.api_url.trim_end_matches('/');
        let get = |path: &str| {
            let http = &http;
            let access = &access;
            let url = format!("{api}{path}");
            async move {
                let answer: Value = http
                    .get(&url)
                    .bearer_auth(access)
                    .header("accept", "application/json")
                    .header("user-agent", "Sovra")
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| failed("the user API failed", &e))?
                    .json()
                    .await
                    .map_err(|e| failed("the user API answer is not JSON", &e))?;
                Ok::<Value, AuthError>(answer)
            }
        };
        let data = match provider.kind {
            ProfileKind::Github => github_data(&get("/user").await?, &get("/user/emails").await?)?,
            ProfileKind::Gitlab => gitlab_data(&get("/user").await?, &provider.url)?,
            ProfileKind::Discord => discord_data(&get("/users/@me").await?, api)?,
        };
        Ok((data, access, refresh))
    }

    fn callback_url(&self) -> String {
        format!("{}/auth/v1/callback", self.external_url())
    }

    /// `GET /authorize?provider=…&redirect_to=…&scopes=…[&code_challenge=…]`
    /// (auth-js `signInWithOAuth`): stores the flow and sends the browser
    /// to the provider with a signed `state`, a nonce and PKCE.
    pub(crate) async fn authorize(&self, ctx: &Ctx<'_>) -> AuthResult<axum::response::Response> {
        let location = self.authorize_flow(ctx, None).await?;
        redirect(&location)
    }

    /// Stores a redirect flow (one that links the identity to `link_user`
    /// when set: manual linking, [`crate::linking`]) and returns the
    /// provider's URL to send the browser to.
    pub(crate) async fn authorize_flow(
        &self,
        ctx: &Ctx<'_>,
        link_user: Option<Uuid>,
    ) -> AuthResult<String> {
        let name = ctx.query("provider").unwrap_or_default();
        let oauth = self.oauth_provider(&name);
        let oidc = self.redirect_provider(&name);
        let name = match (&oauth, &oidc) {
            (Some((name, _)), _) | (None, Some((name, _))) => *name,
            (None, None) => {
                return Err(AuthError::validation(format!(
                    "Unsupported provider: Provider {name} could not be found"
                )));
            }
        };
        self.limit(crate::limits::Bucket::SignIn, &ctx.ip_key())
            .await?;
        let redirect_to = self.redirect_target(ctx.query("redirect_to").as_deref());
        let app_pkce = crate::account::pkce(
            ctx.query("code_challenge"),
            ctx.query("code_challenge_method"),
        )?;
        // Where the browser goes, the client id, the scope, whether the
        // provider takes PKCE, and Apple's form_post.
        let (endpoint, client_id, mut scope, pkce, form_post) = match (&oauth, &oidc) {
            (Some((_, provider)), _) => {
                let (authorize, _, scope) = provider.kind.endpoints();
                (
                    format!("{}{authorize}", provider.url.trim_end_matches('/')),
                    provider.client_id.clone(),
                    String::from(scope),
                    provider.kind != ProfileKind::Discord,
                    false,
                )
            }
            (None, Some((_, provider))) => {
                let document = self.discovery(provider).await?;
                let endpoint = document
                    .get("authorization_endpoint")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        unreachable_provider(provider, "no authorization_endpoint", &"missing")
                    })?
                    .to_owned();
                let client_id = provider.client_ids.first().cloned().unwrap_or_default();
                let apple = matches!(provider.kind, OidcKind::Apple(_));
                let scope = if apple {
                    "name email"
                } else {
                    "openid email profile"
                };
                (
                    endpoint,
                    client_id,
                    String::from(scope),
                    provider.sends_pkce(),
                    apple,
                )
            }
            (None, None) => return Err(AuthError::internal()),
        };
        let id = Uuid::new_v4();
        let verifier = crate::crypto::random_alnum(64);
        let nonce = crate::crypto::random_alnum(32);
        let (challenge, method) = app_pkce.map_or((None, None), |(c, m)| (Some(c), Some(m)));
        let client = self.pool.get().await?;
        client
            .c_execute(
                "with old as (delete from sovra.oauth_flows where created_at < now() - interval '1 hour')
                 insert into sovra.oauth_flows (id, provider, redirect_to, code_challenge, code_challenge_method, provider_verifier, nonce, link_user_id)
                 values ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[&id, &name, &redirect_to, &challenge, &method, &verifier, &nonce, &link_user],
            )
            .await?;
        for extra in ctx.query("scopes").unwrap_or_default().split([' ', ',']) {
            if !extra.is_empty() && !scope.split(' ').any(|s| s == extra) {
                scope.push(' ');
                scope.push_str(extra);
            }
        }
        let location = with_params(
            &endpoint,
            '?',
            &[
                ("client_id", &client_id),
                ("redirect_uri", &self.callback_url()),
                ("response_type", "code"),
                ("scope", &scope),
                ("state", &sign_state(&self.key, id)),
                ("nonce", &hex(&Sha256::digest(nonce.as_bytes()))),
                (
                    "code_challenge",
                    &if pkce {
                        crate::crypto::pkce_s256(&verifier)
                    } else {
                        String::new()
                    },
                ),
                ("code_challenge_method", if pkce { "S256" } else { "" }),
                ("response_mode", if form_post { "form_post" } else { "" }),
            ],
        );
        Ok(location)
    }

    /// `GET|POST /callback`: the provider's answer. The `state` must be one
    /// Sovra signed, of a stored flow not used before and not older than
    /// [`FLOW_TTL_SECS`]; the code is exchanged (with Sovra's PKCE
    /// verifier and client secret), the ID token verified against the
    /// provider's keys and nonce, the user found, linked or made, and the
    /// browser sent back to `redirect_to`: with `?code=` for the app's PKCE
    /// exchange, or the session in the fragment (implicit flow). Failures
    /// go back as `error`, `error_code` and `error_description`.
    pub(crate) async fn callback(&self, ctx: &Ctx<'_>) -> AuthResult<axum::response::Response> {
        let form;
        let param = |name: &str| -> Option<String> { ctx.query(name) };
        let body_param = if ctx.req.method == axum::http::Method::POST {
            form = String::from_utf8_lossy(&ctx.req.body).into_owned();
            Some(form.as_str())
        } else {
            None
        };
        let get = |name: &str| {
            param(name)
                .or_else(|| crate::crypto::query_param(body_param, name))
                .unwrap_or_default()
        };
        self.limit(crate::limits::Bucket::Verify, &ctx.ip_key())
            .await?;
        let state = get("state");
        let site = self.site_url();
        let bad_state = |why: &str| {
            AuthError::bad_request(
                "bad_oauth_state",
                format!("OAuth callback with invalid state: {why}"),
            )
        };
        let Some(flow_id) = open_state(&self.key, &state) else {
            return Ok(error_back(
                &site,
                &bad_state("not signed by this server"),
                true,
            ));
        };
        let client = self.pool.get().await?;
        let row = client
            .c_query_opt(
                "delete from sovra.oauth_flows where id = $1
                 returning provider, redirect_to, code_challenge, code_challenge_method,
                           provider_verifier, nonce, extract(epoch from now() - created_at)::float8,
                           link_user_id",
                &[&flow_id],
            )
            .await?;
        drop(client);
        let Some(row) = row else {
            return Ok(error_back(
                &site,
                &bad_state("unknown or already used"),
                true,
            ));
        };
        let name: String = row.get(0);
        let redirect_to: String = row.get(1);
        let challenge: Option<String> = row.get(2);
        let method: Option<String> = row.get(3);
        let verifier: String = row.get(4);
        let nonce: String = row.get(5);
        let age: f64 = row.get(6);
        let link_user: Option<Uuid> = row.get(7);
        let pkce = challenge.is_some();
        if age > FLOW_TTL_SECS {
            let err = AuthError::unprocessable("flow_state_expired", "OAuth state has expired");
            return Ok(error_back(&redirect_to, &err, pkce));
        }
        let error = get("error");
        if !error.is_empty() {
            let description = get("error_description");
            let err = AuthError::bad_request(
                "bad_oauth_callback",
                if description.is_empty() {
                    error
                } else {
                    description
                },
            );
            return Ok(error_back(&redirect_to, &err, pkce));
        }
        match self
            .finish_callback(
                ctx,
                &name,
                &get("code"),
                Flow {
                    verifier: &verifier,
                    nonce: &nonce,
                    app_pkce: challenge.zip(method),
                    link_user,
                    form_user: &get("user"),
                },
            )
            .await
        {
            Ok(Finished::Code(code)) => {
                redirect(&with_params(&redirect_to, '?', &[("code", &code)]))
            }
            Ok(Finished::Session(session)) => {
                let text = |key: &str| {
                    session
                        .get(key)
                        .map(|v| match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .unwrap_or_default()
                };
                let location = with_params(
                    &redirect_to,
                    '#',
                    &[
                        ("access_token", &text("access_token")),
                        ("expires_at", &text("expires_at")),
                        ("expires_in", &text("expires_in")),
                        ("provider_refresh_token", &text("provider_refresh_token")),
                        ("provider_token", &text("provider_token")),
                        ("refresh_token", &text("refresh_token")),
                        ("token_type", "bearer"),
                    ],
                );
                redirect(&location)
            }
            Err(err) => Ok(error_back(&redirect_to, &err, pkce)),
        }
    }

    /// The OpenID Connect code exchange: tokens, the verified ID token
    /// (with the flow's nonce), claims completed from userinfo.
    async fn oidc_identity(
        &self,
        name: &str,
        provider: &OidcProvider,
        code: &str,
        verifier: &str,
        nonce: &str,
    ) -> AuthResult<(Map<String, Value>, String, String)> {
        let document = self.discovery(provider).await?;
        let endpoint = |key: &str| document.get(key).and_then(Value::as_str).map(str::to_owned);
        let token_endpoint = endpoint("token_endpoint")
            .ok_or_else(|| unreachable_provider(provider, "no token_endpoint", &"missing"))?;
        let client_id = provider.client_ids.first().cloned().unwrap_or_default();
        let secret = provider
            .secret
            .as_ref()
            .map(|s| s.0.clone())
            .unwrap_or_default();
        let http = provider_http()?;
        let callback_url = self.callback_url();
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", callback_url.as_str()),
        ];
        let request = http.post(&token_endpoint);
        let apple_secret;
        let request = if let OidcKind::Apple(key) = &provider.kind {
            // Apple: client_secret_post, the secret a JWT signed now.
            let key = key.as_ref().ok_or_else(|| {
                AuthError::bad_request("provider_disabled", "Provider is not enabled")
            })?;
            let now = crate::time::now_unix().unsigned_abs();
            apple_secret = key.client_secret(&client_id, &provider.issuer, now)?;
            form.push(("client_id", client_id.as_str()));
            form.push(("client_secret", apple_secret.as_str()));
            request
        } else {
            form.push(("code_verifier", verifier));
            request.basic_auth(form_encode(&client_id), Some(form_encode(&secret)))
        };
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| unreachable_provider(provider, "the token endpoint failed", &e))?;
        let status = response.status();
        let tokens: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let error = tokens.get("error").cloned().unwrap_or(Value::Null);
            tracing::info!(provider = name, %status, %error, "code exchange refused");
            return Err(AuthError::bad_request(
                "bad_oauth_callback",
                "Unable to exchange external code",
            ));
        }
        let text = |key: &str| {
            tokens
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let (access_token, refresh_token, id_token) = (
            text("access_token"),
            text("refresh_token"),
            text("id_token"),
        );
        if id_token.is_empty() {
            return Err(AuthError::bad_request(
                "bad_oauth_callback",
                "The provider answered without an ID token",
            ));
        }
        let now = crate::time::now_unix().unsigned_abs();
        let mut keys = self.provider_keys(provider, false).await?;
        let mut verified = verify_id_token(&id_token, &keys, provider, Some(nonce), now);
        if verified == Err(IdTokenError::UnknownKey) {
            keys = self.provider_keys(provider, true).await?;
            verified = verify_id_token(&id_token, &keys, provider, Some(nonce), now);
        }
        let mut claims = verified.map_err(|err| {
            tracing::info!(provider = name, reason = ?err, "ID token from the code exchange refused");
            err.to_auth()
        })?;
        // Claims the ID token leaves out come from the userinfo endpoint,
        // for the same subject only.
        if let Some(userinfo) = endpoint("userinfo_endpoint").filter(|_| !access_token.is_empty()) {
            let info: Value = http
                .get(&userinfo)
                .bearer_auth(&access_token)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| unreachable_provider(provider, "the userinfo endpoint failed", &e))?
                .json()
                .await
                .unwrap_or(Value::Null);
            if info.get("sub") == claims.get("sub")
                && let Value::Object(info) = info
            {
                for (key, value) in info {
                    claims.entry(key).or_insert(value);
                }
            }
        }
        Ok((provider.identity(&claims), access_token, refresh_token))
    }

    async fn finish_callback(
        &self,
        ctx: &Ctx<'_>,
        name: &str,
        code: &str,
        flow: Flow<'_>,
    ) -> AuthResult<Finished> {
        let Flow {
            verifier,
            nonce,
            app_pkce,
            link_user,
            form_user,
        } = flow;
        if code.is_empty() {
            return Err(AuthError::bad_request(
                "bad_oauth_callback",
                "OAuth callback with missing authorization code",
            ));
        }
        let (name, data, access_token, refresh_token) = if let Some((name, provider)) =
            self.oauth_provider(name)
        {
            let (data, access, refresh) = self.oauth_identity(&provider, code, verifier).await?;
            (name, data, access, refresh)
        } else if let Some((name, provider)) = self.redirect_provider(name) {
            let (mut data, access, refresh) = self
                .oidc_identity(name, &provider, code, verifier, nonce)
                .await?;
            if matches!(provider.kind, OidcKind::Apple(_)) && !form_user.is_empty() {
                apple_first_sign_in(&mut data, form_user);
            }
            (name, data, access, refresh)
        } else {
            return Err(AuthError::bad_request(
                "provider_disabled",
                "Provider is not enabled",
            ));
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let user_id = match link_user {
            Some(user_id) => {
                self.link_external_identity(&tx, user_id, name, &data)
                    .await?
            }
            None => self.external_account(&tx, name, &data).await?,
        };
        let actor = user::by_id(&tx, user_id).await?;
        let finished = if let Some((challenge, method)) = app_pkce {
            crate::session::admit(actor.as_ref(), Via::Grant)?;
            let auth_code = Uuid::new_v4().to_string();
            tx.c_execute(
                "insert into auth.flow_state (id, user_id, auth_code, code_challenge_method, code_challenge,
                   provider_type, provider_access_token, provider_refresh_token, created_at, updated_at,
                   authentication_method, auth_code_issued_at)
                 values (gen_random_uuid(), $1, $2, $3, $4, $5, $6, $7, now(), now(), 'oauth', now())",
                &[
                    &user_id,
                    &auth_code,
                    &method,
                    &challenge,
                    &name,
                    &seal_flow_token(&self.key, &auth_code, "provider_access_token", &access_token),
                    &seal_flow_token(&self.key, &auth_code, "provider_refresh_token", &refresh_token),
                ],
            )
            .await?;
            Finished::Code(auth_code)
        } else {
            let mut session = self
                .start_session(&tx, ctx, user_id, "oauth", Via::Grant)
                .await?;
            if let Value::Object(map) = &mut session {
                map.insert("provider_token".to_owned(), json!(access_token));
                map.insert("provider_refresh_token".to_owned(), json!(refresh_token));
            }
            Finished::Session(session)
        };
        self.audit(
            &tx,
            ctx,
            if link_user.is_some() {
                "identity_linked"
            } else {
                "login"
            },
            actor.as_ref(),
            "",
            json!({"provider": name, "provider_type": "oauth"}),
        )
        .await?;
        tx.commit().await?;
        Ok(finished)
    }
}

/// What a stored redirect flow holds for its callback.
struct Flow<'a> {
    /// Sovra's PKCE verifier towards the provider.
    verifier: &'a str,
    nonce: &'a str,
    /// The app's PKCE challenge and method (`None`: implicit flow).
    app_pkce: Option<(String, String)>,
    /// The user the identity is linked to (manual linking).
    link_user: Option<Uuid>,
    /// Apple's `user` JSON (first sign-in only).
    form_user: &'a str,
}

enum Finished {
    /// PKCE: the code the app exchanges.
    Code(String),
    /// Implicit: the token response.
    Session(Value),
}

/// `application/x-www-form-urlencoded` of a client credential, as RFC 6749
/// §2.3.1 asks before HTTP Basic.
fn form_encode(text: &str) -> String {
    crate::crypto::percent_encode(text)
}

/// A 302 to `location` (for [`crate::linking`]).
pub(crate) fn redirect_to_location(location: &str) -> AuthResult<axum::response::Response> {
    redirect(location)
}

fn redirect(location: &str) -> AuthResult<axum::response::Response> {
    let value = axum::http::HeaderValue::from_str(location).map_err(|_| AuthError::internal())?;
    let mut response = axum::response::IntoResponse::into_response(axum::http::StatusCode::FOUND);
    response
        .headers_mut()
        .insert(axum::http::header::LOCATION, value);
    Ok(response)
}

/// The browser goes back to `to` with the error, as GoTrue sends it.
fn error_back(to: &str, err: &AuthError, pkce: bool) -> axum::response::Response {
    let location = crate::account::error_redirect(to, err, pkce);
    redirect(&location).unwrap_or_else(|e| e.render(false))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use p256::ecdsa::SigningKey;

    #[test]
    fn provider_tokens_wait_for_their_code_sealed() {
        let key = crate::secret::ServiceKey::random();
        let sealed = seal_flow_token(&key, "code-1", "provider_access_token", "gho_token");
        assert!(crate::secret::is_sealed(&sealed) && !sealed.contains("gho_token"));
        assert_eq!(
            open_flow_token(&key, "code-1", "provider_access_token", &sealed),
            "gho_token"
        );
        // Another code or column, or another key: nothing.
        assert_eq!(
            open_flow_token(&key, "code-2", "provider_access_token", &sealed),
            ""
        );
        assert_eq!(
            open_flow_token(&key, "code-1", "provider_refresh_token", &sealed),
            ""
        );
        let other = crate::secret::ServiceKey::random();
        assert_eq!(
            open_flow_token(&other, "code-1", "provider_access_token", &sealed),
            ""
        );
        // Empty stays empty; rows of an earlier version are read as they are.
        assert_eq!(seal_flow_token(&key, "c", "provider_refresh_token", ""), "");
        assert_eq!(
            open_flow_token(&key, "c", "provider_access_token", "plain"),
            "plain"
        );
    }
    use p256::pkcs8::EncodePrivateKey as _;

    const ISSUER: &str = "https://issuer.example.com";

    fn provider() -> OidcProvider {
        OidcProvider {
            issuer: ISSUER.to_owned(),
            client_ids: vec!["other".to_owned(), "app".to_owned()],
            skip_nonce_check: false,
            secret: None,
            kind: OidcKind::Standard,
        }
    }

    /// A P-256 key, its public JWK set (kid `k1`), and a signer.
    fn key() -> (JwkSet, jsonwebtoken::EncodingKey) {
        let signing = SigningKey::random(&mut rand::rngs::OsRng);
        let point = signing.verifying_key().to_encoded_point(false);
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let set: JwkSet = serde_json::from_value(json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig",
            "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
        }]}))
        .unwrap();
        let der = signing.to_pkcs8_der().unwrap();
        (set, jsonwebtoken::EncodingKey::from_ec_der(der.as_bytes()))
    }

    fn sign(key: &jsonwebtoken::EncodingKey, claims: Value) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some("k1".to_owned());
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn claims(now: u64) -> Value {
        json!({"iss": ISSUER, "sub": "u1", "aud": "app", "exp": now + 600, "iat": now,
               "email": "Ada@Example.com", "email_verified": true, "name": "Ada",
               "nonce": hex(&Sha256::digest(b"n-1"))})
    }

    #[test]
    fn github_answers_map_to_gotrues_identity_data() {
        // Shapes of GitHub's /user and /user/emails answers.
        let user = json!({"login": "octocat", "id": 583231, "name": "The Octocat",
                          "avatar_url": "https://avatars.githubusercontent.com/u/583231?v=4",
                          "email": null});
        let emails = json!([
            {"email": "old@example.com", "primary": false, "verified": true, "visibility": null},
            {"email": "Octocat@GitHub.com", "primary": true, "verified": true, "visibility": "public"},
            {"email": "unverified@example.com", "primary": false, "verified": false, "visibility": null},
        ]);
        let data = github_data(&user, &emails).unwrap();
        assert_eq!(data["sub"], "583231");
        assert_eq!(data["provider_id"], "583231");
        assert_eq!(data["email"], "octocat@github.com");
        assert_eq!(data["email_verified"], true);
        assert_eq!(data["user_name"], "octocat");
        assert_eq!(data["full_name"], "The Octocat");
        assert_eq!(
            data["avatar_url"],
            "https://avatars.githubusercontent.com/u/583231?v=4"
        );
        // No verified primary: a verified one; none verified: the primary,
        // marked unverified (never linked by email).
        let data = github_data(
            &user,
            &json!([{"email": "a@x.com", "primary": true, "verified": false},
                    {"email": "b@x.com", "primary": false, "verified": true}]),
        )
        .unwrap();
        assert_eq!(data["email"], "b@x.com");
        let data = github_data(
            &user,
            &json!([{"email": "a@x.com", "primary": true, "verified": false}]),
        )
        .unwrap();
        assert_eq!(data["email_verified"], false);
        let data = github_data(&user, &json!([])).unwrap();
        assert!(data.get("email").is_none());
        // A profile without an id is refused.
        assert!(github_data(&json!({"login": "x"}), &emails).is_err());
        assert!(github_data(&json!("nonsense"), &json!({"message": "Bad credentials"})).is_err());
    }

    #[test]
    fn gitlab_and_discord_answers_map_to_gotrues_identity_data() {
        let data = gitlab_data(
            &json!({"id": 7, "username": "ada", "name": "Ada", "email": "Ada@GitLab.example",
                    "confirmed_at": "2021-01-01T00:00:00Z", "avatar_url": "https://g/a.png"}),
            "https://gitlab.example",
        )
        .unwrap();
        assert_eq!(data["sub"], "7");
        assert_eq!(data["iss"], "https://gitlab.example");
        assert_eq!(data["email"], "ada@gitlab.example");
        assert_eq!(data["email_verified"], true);
        assert_eq!(data["user_name"], "ada");
        let unconfirmed =
            gitlab_data(&json!({"id": 7, "email": "a@x", "confirmed_at": null}), "g").unwrap();
        assert_eq!(unconfirmed["email_verified"], false);
        assert!(gitlab_data(&json!({"message": "401 Unauthorized"}), "g").is_err());

        let user = |discriminator: &str, avatar: Value| {
            discord_data(
                &json!({"id": "80351110224678912", "username": "nelly",
                        "discriminator": discriminator, "avatar": avatar,
                        "email": "n@d.com", "verified": false}),
                "https://discord.com/api",
            )
            .unwrap()
        };
        let animated = user("1337", json!("a_abc"));
        assert_eq!(
            animated["avatar_url"],
            "https://cdn.discordapp.com/avatars/80351110224678912/a_abc.gif"
        );
        assert_eq!(animated["name"], "nelly#1337");
        assert_eq!(animated["email_verified"], false);
        assert_eq!(
            user("1337", json!("abc"))["avatar_url"],
            "https://cdn.discordapp.com/avatars/80351110224678912/abc.png"
        );
        // No avatar: the default one by discriminator % 5, or for unique
        // usernames (discriminator 0) by (id >> 22) % 6.
        assert_eq!(
            user("1337", Value::Null)["avatar_url"],
            "https://cdn.discordapp.com/embed/avatars/2.png"
        );
        let index = (80_351_110_224_678_912_u64 >> 22) % 6;
        let unique = user("0", Value::Null);
        assert_eq!(
            unique["avatar_url"],
            format!("https://cdn.discordapp.com/embed/avatars/{index}.png")
        );
        assert_eq!(unique["name"], "nelly");
        assert!(discord_data(&json!({"username": "x"}), "d").is_err());
    }

    #[test]
    fn apple_user_json_fills_the_name_once() {
        let mut data = Map::new();
        apple_first_sign_in(
            &mut data,
            r#"{"name":{"firstName":"Ada","lastName":"Lovelace"},"email":"a@b.c"}"#,
        );
        assert_eq!(data["full_name"], "Ada Lovelace");
        let mut named = Map::new();
        named.insert("full_name".to_owned(), json!("From Token"));
        apple_first_sign_in(&mut named, r#"{"name":{"firstName":"X"}}"#);
        assert_eq!(named["full_name"], "From Token");
        let mut untouched = Map::new();
        apple_first_sign_in(&mut untouched, "not json");
        apple_first_sign_in(&mut untouched, r#"{"name":{}}"#);
        assert!(untouched.is_empty());
    }

    #[test]
    fn apple_client_secrets_are_es256_jwts_of_the_team_key() {
        use base64::Engine as _;
        let signing = SigningKey::random(&mut rand::rngs::OsRng);
        let der = signing.to_pkcs8_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_bytes());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let key = AppleKey::new("TEAM", "KID", &pem).unwrap();
        assert!(!format!("{key:?}").contains(&b64[..20]));
        let now = crate::time::now_unix().unsigned_abs();
        let secret = key
            .client_secret("com.example.web", "https://appleid.apple.com", now)
            .unwrap();
        let point = signing.verifying_key().to_encoded_point(false);
        let decoding = DecodingKey::from_ec_components(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        )
        .unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["https://appleid.apple.com"]);
        validation.set_issuer(&["TEAM"]);
        let data = jsonwebtoken::decode::<Value>(&secret, &decoding, &validation).unwrap();
        assert_eq!(data.header.kid.as_deref(), Some("KID"));
        assert_eq!(data.claims["sub"], "com.example.web");
        for bad in [
            "",
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----",
            "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----",
        ] {
            assert!(AppleKey::new("T", "K", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn microsoft_issuers_follow_the_tokens_tenant() {
        let provider = |authority: &str| OidcProvider {
            issuer: authority.to_owned(),
            kind: OidcKind::Azure,
            ..provider()
        };
        let tid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let claims = |tid: Option<&str>| {
            let mut c = Map::new();
            if let Some(t) = tid {
                c.insert("tid".to_owned(), json!(t));
            }
            c
        };
        let own = format!("https://login.microsoftonline.com/{tid}/v2.0");
        let common = provider("https://login.microsoftonline.com/common/v2.0");
        assert!(common.accepts_issuer(&own, &claims(Some(tid))));
        assert!(!common.accepts_issuer(&own, &claims(Some("other"))));
        assert!(!common.accepts_issuer(&own, &claims(None)));
        assert!(!common.accepts_issuer(
            "https://login.microsoftonline.com/{tenantid}/v2.0",
            &claims(Some("{tenantid}"))
        ));
        assert!(!common.accepts_issuer("https://evil.example.com/x/v2.0", &claims(Some("x"))));
        let organizations = provider("https://login.microsoftonline.com/organizations/v2.0");
        assert!(organizations.accepts_issuer(&own, &claims(Some(tid))));
        let consumer =
            format!("https://login.microsoftonline.com/{MICROSOFT_CONSUMER_TENANT}/v2.0");
        assert!(!organizations.accepts_issuer(&consumer, &claims(Some(MICROSOFT_CONSUMER_TENANT))));
        let consumers = provider("https://login.microsoftonline.com/consumers/v2.0");
        assert!(consumers.accepts_issuer(&consumer, &claims(Some(MICROSOFT_CONSUMER_TENANT))));
        assert!(!consumers.accepts_issuer(&own, &claims(Some(tid))));
        // One tenant: exactly its issuer.
        let single = provider(&own);
        assert!(single.accepts_issuer(&own, &claims(Some(tid))));
        assert!(!single.accepts_issuer(
            "https://login.microsoftonline.com/other/v2.0",
            &claims(Some("other"))
        ));
        // The host is never the replaced part.
        assert_eq!(azure_template("https://common/x/v2.0"), None);
        // Email verification as GoTrue reads xms_edov.
        let with = |edov: Value| {
            let mut c = claims(Some(tid));
            c.insert("email".to_owned(), json!("a@b.c"));
            if !edov.is_null() {
                c.insert("xms_edov".to_owned(), edov);
            }
            azure_email_verified(&c)
        };
        assert!(with(Value::Null));
        assert!(with(json!(true)) && with(json!("1")) && with(json!("true")));
        assert!(!with(json!(false)) && !with(json!("0")) && !with(json!(1)));
        assert!(!azure_email_verified(&claims(Some(tid))));
    }

    #[test]
    fn states_are_signed_and_checked() {
        let key = crate::secret::ServiceKey::random();
        let id = Uuid::new_v4();
        let state = sign_state(&key, id);
        assert_eq!(open_state(&key, &state), Some(id));
        assert_eq!(
            open_state(&crate::secret::ServiceKey::random(), &state),
            None
        );
        let other = Uuid::new_v4();
        let (_, mac) = state.split_once('.').unwrap();
        assert_eq!(open_state(&key, &format!("{}.{mac}", other.simple())), None);
        assert_eq!(open_state(&key, "garbage"), None);
        assert_eq!(open_state(&key, ""), None);
        assert_eq!(
            with_params(
                "https://app.example.com/cb?x=1",
                '?',
                &[("code", "a b"), ("empty", "")]
            ),
            "https://app.example.com/cb?x=1&code=a%20b"
        );
        assert_eq!(
            with_params("https://app.example.com/cb", '#', &[("access_token", "t")]),
            "https://app.example.com/cb#access_token=t"
        );
    }

    #[test]
    fn id_tokens_are_verified_as_gotrue_verifies_them() {
        let now = crate::time::now_unix().unsigned_abs();
        let (keys, signer) = key();
        let p = provider();
        let good = sign(&signer, claims(now));
        let got = verify_id_token(&good, &keys, &p, Some("n-1"), now).unwrap();
        assert_eq!(got["sub"], "u1");
        let data = identity_data(&got, ISSUER);
        assert_eq!(data["email"], "ada@example.com");
        assert_eq!(data["email_verified"], true);
        assert_eq!(data["full_name"], "Ada");

        let with = |edit: &dyn Fn(&mut Value)| {
            let mut c = claims(now);
            edit(&mut c);
            sign(&signer, c)
        };
        let check =
            |token: &str, nonce: Option<&str>| verify_id_token(token, &keys, &p, nonce, now);
        assert_eq!(
            check(&with(&|c| c["aud"] = json!("someone-else")), Some("n-1")),
            Err(IdTokenError::Audience)
        );
        assert!(check(&with(&|c| c["aud"] = json!(["x", "app"])), Some("n-1")).is_ok());
        assert!(matches!(
            check(
                &with(&|c| c["iss"] = json!("https://evil.example.com")),
                Some("n-1")
            ),
            Err(IdTokenError::Bad(_))
        ));
        assert!(matches!(
            check(&with(&|c| c["exp"] = json!(now - 3600)), Some("n-1")),
            Err(IdTokenError::Bad(_))
        ));
        assert_eq!(check(&good, Some("n-2")), Err(IdTokenError::NonceMismatch));
        assert_eq!(check(&good, None), Err(IdTokenError::NonceMissing));
        assert_eq!(
            check(&with(&|c| c["sub"] = json!("")), Some("n-1")),
            Err(IdTokenError::NoSubject)
        );
        // Another key's signature.
        let (_, other) = key();
        assert!(matches!(
            check(&sign(&other, claims(now)), Some("n-1")),
            Err(IdTokenError::Bad(_))
        ));
        // A tampered payload.
        let mut parts: Vec<&str> = good.split('.').collect();
        use base64::Engine as _;
        let forged_payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(&json!({"sub": "admin"})).unwrap());
        parts[1] = &forged_payload;
        assert!(matches!(
            check(&parts.join("."), Some("n-1")),
            Err(IdTokenError::Bad(_))
        ));
        // HS256 (a key confusion attempt) and unknown kids.
        let hs = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims(now),
            &jsonwebtoken::EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert!(matches!(check(&hs, Some("n-1")), Err(IdTokenError::Bad(_))));
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some("rotated".to_owned());
        let rotated = jsonwebtoken::encode(&header, &claims(now), &signer).unwrap();
        assert_eq!(check(&rotated, Some("n-1")), Err(IdTokenError::UnknownKey));
        assert!(matches!(
            check("not.a.jwt", None),
            Err(IdTokenError::Bad(_))
        ));
        // skip_nonce_check
        let lax = OidcProvider {
            skip_nonce_check: true,
            ..provider()
        };
        assert!(verify_id_token(&good, &keys, &lax, None, now).is_ok());
    }
}
