//! Passkeys (passwordless sign-in with WebAuthn) and WebAuthn as an MFA
//! factor, as auth-js 2.119 calls them:
//!
//! - `POST /passkeys/registration/options|verify` (signed in),
//!   `POST /passkeys/authentication/options|verify` (anyone: a session),
//!   `GET /passkeys`, `PATCH|DELETE /passkeys/{id}`,
//!   `GET /admin/users/{id}/passkeys`, `DELETE /admin/users/{id}/passkeys/{id}`;
//! - `factor_type: "webauthn"` in `/factors` enroll, challenge and verify
//!   (the MFA flow itself is in [`crate::mfa`]; this module builds its
//!   options and checks its credential).
//!
//! Verification is [`crate::webauthn`]'s; challenges are stored server-side,
//! used once and expire after `auth.webauthn.challenge_expiry` seconds.

use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use sovra_pg::GenericClient;
use uuid::Uuid;

use crate::db::Cached as _;
use crate::error::{AuthError, AuthResult};
use crate::limits::Bucket;
use crate::session::Via;
use crate::webauthn::{self, RelyingParty};
use crate::{AuthService, Ctx, crypto, ok_json, time};

/// `auth.webauthn.*`.
#[derive(Debug, Clone)]
pub struct WebAuthnConfig {
    /// Passkey sign-in and the `/passkeys` endpoints.
    pub passkeys: bool,
    /// `factor_type: "webauthn"` MFA factors.
    pub mfa: bool,
    /// The RP ID; `None`: the site URL's host.
    pub rp_id: Option<String>,
    /// Accepted origins; empty: the site URL's origin.
    pub rp_origins: Vec<String>,
    /// The RP name shown by authenticators.
    pub rp_display_name: String,
    /// Seconds a challenge stays usable.
    pub challenge_expiry: i64,
    /// Most passkeys per user.
    pub max_passkeys: i64,
}

impl Default for WebAuthnConfig {
    fn default() -> Self {
        WebAuthnConfig {
            passkeys: true,
            mfa: true,
            rp_id: None,
            rp_origins: Vec::new(),
            rp_display_name: "Sovra".to_owned(),
            challenge_expiry: 300,
            max_passkeys: 10,
        }
    }
}

/// The origin (`scheme://host[:port]`) of a URL, lower-cased.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    if scheme.is_empty() || authority.is_empty() {
        return None;
    }
    Some(format!(
        "{}://{}",
        scheme.to_ascii_lowercase(),
        authority.to_ascii_lowercase()
    ))
}

/// The host of an origin, without port (IPv6 without brackets).
pub fn host_of(origin: &str) -> Option<String> {
    let authority = origin_of(origin)?;
    let authority = authority.split_once("://")?.1;
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().map(str::to_owned);
    }
    Some(authority.split(':').next()?.to_owned())
}

/// Whether `origin`'s host is `rp_id` or one of its subdomains.
pub fn origin_fits_rp(origin: &str, rp_id: &str) -> bool {
    host_of(origin).is_some_and(|host| host == rp_id || host.ends_with(&format!(".{rp_id}")))
}

const CREDENTIAL_BODY_MAX: usize = 64 * 1024;

#[derive(Deserialize)]
struct VerifyBody {
    challenge_id: Option<String>,
    credential: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RenameBody {
    friendly_name: Option<String>,
}

/// `webauthn` in an MFA challenge or verify body.
#[derive(Deserialize, Default, Debug)]
#[serde(default)]
pub(crate) struct FactorParams {
    #[serde(rename = "rpId", alias = "rp_id")]
    pub rp_id: Option<String>,
    #[serde(rename = "rpOrigins", alias = "rp_origins")]
    pub rp_origins: Option<Vec<String>>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub credential_response: Option<Value>,
}

fn disabled() -> AuthError {
    AuthError::unprocessable("passkey_disabled", "Passkeys are disabled")
}

fn verification_failed(reason: &webauthn::Refusal) -> AuthError {
    AuthError::bad_request(
        "webauthn_verification_failed",
        format!("WebAuthn verification failed: {reason}"),
    )
}

fn challenge_not_found() -> AuthError {
    AuthError::not_found(
        "webauthn_challenge_not_found",
        "WebAuthn challenge not found",
    )
}

fn passkey_not_found() -> AuthError {
    AuthError::not_found("webauthn_credential_not_found", "Passkey not found")
}

fn std_b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn from_std_b64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text.as_bytes())
        .ok()
}

/// The credential JSON GoTrue (go-webauthn) keeps in
/// `auth.mfa_factors.web_authn_credential`.
fn factor_credential_json(cred: &webauthn::NewCredential) -> Value {
    json!({
        "id": std_b64(&cred.credential_id),
        "publicKey": std_b64(&cred.public_key),
        "attestationType": "none",
        "transport": cred.transports,
        "flags": {
            "userPresent": true,
            "userVerified": cred.user_verified,
            "backupEligible": cred.backup_eligible,
            "backupState": cred.backed_up,
        },
        "authenticator": {
            "AAGUID": std_b64(&cred.aaguid),
            "signCount": cred.sign_count,
            "cloneWarning": false,
            "attachment": "",
        },
    })
}

/// (credential id, COSE key, counter) of a stored factor credential
/// (also read in go-webauthn's capitalised field names).
fn factor_credential_parts(value: &Value) -> Option<(Vec<u8>, Vec<u8>, u32)> {
    let field = |v: &'_ Value, a: &str, b: &str| v.get(a).or_else(|| v.get(b)).cloned();
    let id = from_std_b64(field(value, "id", "ID")?.as_str()?)?;
    let key = from_std_b64(field(value, "publicKey", "PublicKey")?.as_str()?)?;
    let count = field(value, "authenticator", "Authenticator")
        .and_then(|a| field(&a, "signCount", "SignCount"))
        .and_then(|c| c.as_u64())
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(0);
    Some((id, key, count))
}

fn passkey_json(row: &sovra_pg::tokio_postgres::Row) -> Value {
    let created: std::time::SystemTime = row.get("created_at");
    let used: Option<std::time::SystemTime> = row.get("last_used_at");
    let mut item = json!({
        "id": row.get::<_, Uuid>("id"),
        "friendly_name": row.get::<_, Option<String>>("friendly_name"),
        "created_at": time::rfc3339(created),
    });
    if let (Some(used), Value::Object(map)) = (used, &mut item) {
        map.insert("last_used_at".to_owned(), json!(time::rfc3339(used)));
    }
    item
}

const PASSKEY_COLUMNS: &str = "id, friendly_name, created_at, last_used_at";

impl AuthService {
    /// The RP ID and origins in force: configured, else the site URL's.
    pub(crate) fn relying_party(&self) -> (String, Vec<String>) {
        let c = &self.config.webauthn;
        let site = self.site_url();
        let rp_id = c
            .rp_id
            .clone()
            .filter(|id| !id.is_empty())
            .or_else(|| host_of(&site))
            .unwrap_or_else(|| "localhost".to_owned());
        let origins = if c.rp_origins.is_empty() {
            origin_of(&site).into_iter().collect()
        } else {
            c.rp_origins.clone()
        };
        (rp_id, origins)
    }

    fn passkeys_on(&self) -> AuthResult<()> {
        if self.config.webauthn.passkeys {
            Ok(())
        } else {
            Err(disabled())
        }
    }

    /// Routes `/passkeys/…` and `/admin/users/{id}/passkeys/…`.
    pub(crate) async fn route_passkeys(
        &self,
        ctx: &Ctx<'_>,
        segments: &[&str],
    ) -> AuthResult<Response> {
        self.passkeys_on()?;
        match (ctx.req.method.as_str(), segments) {
            ("POST", ["passkeys", "registration", "options"]) => {
                self.passkey_registration_options(ctx).await
            }
            ("POST", ["passkeys", "registration", "verify"]) => {
                self.passkey_registration_verify(ctx).await
            }
            ("POST", ["passkeys", "authentication", "options"]) => {
                self.passkey_authentication_options(ctx).await
            }
            ("POST", ["passkeys", "authentication", "verify"]) => {
                self.passkey_authentication_verify(ctx).await
            }
            ("GET", ["passkeys"]) => self.list_passkeys(ctx).await,
            ("PATCH", ["passkeys", id]) => self.rename_passkey(ctx, id).await,
            ("DELETE", ["passkeys", id]) => self.delete_passkey(ctx, id).await,
            ("GET", ["admin", "users", user, "passkeys"]) => {
                self.admin_list_passkeys(ctx, user).await
            }
            ("DELETE", ["admin", "users", user, "passkeys", id]) => {
                self.admin_delete_passkey(ctx, user, id).await
            }
            _ => Err(AuthError::not_found(
                "not_found",
                format!("no such endpoint: {} {}", ctx.req.method, ctx.req.path),
            )),
        }
    }

    fn expires_at(&self) -> i64 {
        time::now_unix() + self.config.webauthn.challenge_expiry
    }

    /// Stores a new challenge; returns its id and bytes.
    async fn new_challenge(
        &self,
        client: &impl GenericClient,
        user_id: Option<Uuid>,
        kind: &str,
    ) -> AuthResult<(Uuid, Vec<u8>)> {
        let id = Uuid::new_v4();
        let challenge = crypto::random_bytes(32);
        // Old challenges go as new ones come.
        client
            .c_execute(
                "delete from sovra.webauthn_challenges
                  where created_at < now() - make_interval(secs => $1::float8 * 2)",
                &[&(self.config.webauthn.challenge_expiry as f64)],
            )
            .await?;
        client
            .c_execute(
                "insert into sovra.webauthn_challenges (id, user_id, kind, challenge) values ($1, $2, $3, $4)",
                &[&id, &user_id, &kind, &challenge],
            )
            .await?;
        Ok((id, challenge))
    }

    /// Takes (deletes) the challenge `id` of `kind` (and `user_id`): once
    /// read it is gone, whatever the verification's outcome.
    async fn take_challenge(
        &self,
        id: Option<&str>,
        kind: &str,
        user_id: Option<Uuid>,
    ) -> AuthResult<Vec<u8>> {
        let id = id
            .and_then(|id| Uuid::parse_str(id).ok())
            .ok_or_else(challenge_not_found)?;
        let client = self.pool.get().await?;
        let row = client
            .c_query_opt(
                "delete from sovra.webauthn_challenges
                  where id = $1 and kind = $2 and user_id is not distinct from $3
                  returning challenge, extract(epoch from now() - created_at)::float8",
                &[&id, &kind, &user_id],
            )
            .await?
            .ok_or_else(challenge_not_found)?;
        let age: f64 = row.get(1);
        if age > self.config.webauthn.challenge_expiry as f64 {
            return Err(AuthError::bad_request(
                "webauthn_challenge_expired",
                "WebAuthn challenge has expired, start a new ceremony",
            ));
        }
        Ok(row.get(0))
    }

    /// The user entity and display names for creation options.
    fn user_entity(user: &crate::user::User) -> Value {
        let name = if !user.email.is_empty() {
            user.email.clone()
        } else if !user.phone.is_empty() {
            user.phone.clone()
        } else {
            user.id.to_string()
        };
        json!({
            "id": webauthn::b64url(user.id.as_bytes()),
            "name": name,
            "displayName": name,
        })
    }

    fn pub_key_params() -> Value {
        Value::Array(
            webauthn::ALGORITHMS
                .iter()
                .map(|alg| json!({"type": "public-key", "alg": alg}))
                .collect(),
        )
    }

    async fn passkey_registration_options(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.limit(Bucket::Verify, &ctx.ip_key()).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = self.current(ctx, &tx).await?;
        self.refuse_anonymous(&current)?;
        let user = &current.user;
        if user.has_verified_factor() && current.aal != "aal2" {
            return Err(AuthError::forbidden(
                "insufficient_aal",
                "AAL2 required to register a passkey",
            ));
        }
        let existing = tx
            .c_query(
                "select credential_id, transports from sovra.webauthn_credentials where user_id = $1",
                &[&user.id],
            )
            .await?;
        if existing.len() as i64 >= self.config.webauthn.max_passkeys {
            return Err(AuthError::unprocessable(
                "too_many_passkeys",
                "Maximum number of passkeys reached, delete one to continue",
            ));
        }
        let exclude: Vec<Value> = existing
            .iter()
            .map(|row| {
                let id: Vec<u8> = row.get(0);
                let transports: Vec<String> = row.get(1);
                json!({"type": "public-key", "id": webauthn::b64url(&id), "transports": transports})
            })
            .collect();
        let (challenge_id, challenge) = self
            .new_challenge(&tx, Some(user.id), "registration")
            .await?;
        tx.commit().await?;
        let (rp_id, _) = self.relying_party();
        Ok(ok_json(json!({
            "challenge_id": challenge_id,
            "expires_at": self.expires_at(),
            "options": {
                "challenge": webauthn::b64url(&challenge),
                "rp": {"id": rp_id, "name": self.config.webauthn.rp_display_name},
                "user": Self::user_entity(user),
                "pubKeyCredParams": Self::pub_key_params(),
                "timeout": self.config.webauthn.challenge_expiry * 1000,
                "excludeCredentials": exclude,
                "authenticatorSelection": {
                    "residentKey": "required",
                    "requireResidentKey": true,
                    "userVerification": "required",
                },
                "attestation": "none",
                "hints": [],
            },
        })))
    }

    fn verify_body(ctx: &Ctx<'_>) -> AuthResult<VerifyBody> {
        if ctx.req.body.len() > CREDENTIAL_BODY_MAX {
            return Err(AuthError::validation("Request body is too large"));
        }
        ctx.json()
    }

    fn credential<T: serde::de::DeserializeOwned>(value: Option<Value>) -> AuthResult<T> {
        let value = value.ok_or_else(|| AuthError::validation("credential is required"))?;
        serde_json::from_value(value).map_err(|err| {
            AuthError::validation(format!("credential is not a WebAuthn response: {err}"))
        })
    }

    async fn passkey_registration_verify(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.limit(Bucket::Verify, &ctx.ip_key()).await?;
        let body = Self::verify_body(ctx)?;
        let user = {
            let client = self.pool.get().await?;
            let current = self.current(ctx, &client).await?;
            self.refuse_anonymous(&current)?;
            current.user
        };
        let response: webauthn::RegistrationResponse = Self::credential(body.credential)?;
        let challenge = self
            .take_challenge(body.challenge_id.as_deref(), "registration", Some(user.id))
            .await?;
        let (rp_id, origins) = self.relying_party();
        let rp = RelyingParty {
            id: &rp_id,
            origins: &origins,
        };
        let cred = webauthn::verify_registration(&rp, &challenge, true, &response)
            .map_err(|reason| verification_failed(&reason))?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let count: i64 = tx
            .c_query_one(
                "select count(*) from sovra.webauthn_credentials where user_id = $1",
                &[&user.id],
            )
            .await?
            .get(0);
        if count >= self.config.webauthn.max_passkeys {
            return Err(AuthError::unprocessable(
                "too_many_passkeys",
                "Maximum number of passkeys reached, delete one to continue",
            ));
        }
        let id = Uuid::new_v4();
        let aaguid = Uuid::from_bytes(cred.aaguid);
        let inserted = tx
            .c_query_opt(
                &format!(
                    "insert into sovra.webauthn_credentials
                       (id, user_id, credential_id, public_key, algorithm, sign_count, aaguid,
                        transports, backup_eligible, backed_up)
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                     on conflict (credential_id) do nothing
                     returning {PASSKEY_COLUMNS}"
                ),
                &[
                    &id,
                    &user.id,
                    &cred.credential_id,
                    &cred.public_key,
                    &(cred.algorithm as i32),
                    &i64::from(cred.sign_count),
                    &aaguid,
                    &cred.transports,
                    &cred.backup_eligible,
                    &cred.backed_up,
                ],
            )
            .await?
            .ok_or_else(|| {
                AuthError::unprocessable(
                    "webauthn_credential_exists",
                    "This passkey is already registered",
                )
            })?;
        self.audit(
            &tx,
            ctx,
            "passkey_registered",
            Some(&user),
            "",
            json!({"passkey_id": id}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(passkey_json(&inserted)))
    }

    async fn passkey_authentication_options(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.limit(Bucket::SignIn, &ctx.ip_key()).await?;
        let client = self.pool.get().await?;
        let (challenge_id, challenge) = self.new_challenge(&client, None, "authentication").await?;
        let (rp_id, _) = self.relying_party();
        Ok(ok_json(json!({
            "challenge_id": challenge_id,
            "expires_at": self.expires_at(),
            "options": {
                "challenge": webauthn::b64url(&challenge),
                "rpId": rp_id,
                "timeout": self.config.webauthn.challenge_expiry * 1000,
                "userVerification": "required",
                "allowCredentials": [],
                "hints": [],
            },
        })))
    }

    async fn passkey_authentication_verify(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.limit(Bucket::SignIn, &ctx.ip_key()).await?;
        let body = Self::verify_body(ctx)?;
        let response: webauthn::AssertionResponse = Self::credential(body.credential)?;
        let challenge = self
            .take_challenge(body.challenge_id.as_deref(), "authentication", None)
            .await?;
        let credential_id =
            webauthn::assertion_credential_id(&response).map_err(|r| verification_failed(&r))?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .c_query_opt(
                "select id, user_id, public_key, sign_count from sovra.webauthn_credentials
                  where credential_id = $1 for update",
                &[&credential_id],
            )
            .await?
            .ok_or_else(|| {
                AuthError::bad_request(
                    "webauthn_credential_not_found",
                    "No passkey is registered for this credential",
                )
            })?;
        let passkey_id: Uuid = row.get(0);
        let user_id: Uuid = row.get(1);
        let public_key: Vec<u8> = row.get(2);
        let stored: i64 = row.get(3);
        let (rp_id, origins) = self.relying_party();
        let rp = RelyingParty {
            id: &rp_id,
            origins: &origins,
        };
        let verified = webauthn::verify_assertion(
            &rp,
            &challenge,
            true,
            &public_key,
            u32::try_from(stored).unwrap_or(u32::MAX),
            &response,
        )
        .map_err(|reason| verification_failed(&reason))?;
        if let Some(handle) = &verified.user_handle
            && handle.as_slice() != user_id.as_bytes()
        {
            return Err(verification_failed(&webauthn::Refusal(
                "userHandle does not name the passkey's owner".to_owned(),
            )));
        }
        tx.c_execute(
            "update sovra.webauthn_credentials
                set sign_count = $2, backed_up = $3, last_used_at = now(), updated_at = now()
              where id = $1",
            &[
                &passkey_id,
                &i64::from(verified.sign_count),
                &verified.backed_up,
            ],
        )
        .await?;
        let session = self
            .start_session(&tx, ctx, user_id, "passkey", Via::Grant)
            .await?;
        self.audit(
            &tx,
            ctx,
            "login",
            None,
            "",
            json!({"provider": "passkey", "passkey_id": passkey_id, "user_id": user_id}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(session))
    }

    async fn list_passkeys(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.limit(Bucket::Verify, &ctx.ip_key()).await?;
        let client = self.pool.get().await?;
        let current = self.current(ctx, &client).await?;
        self.passkeys_of(&client, current.user.id).await
    }

    async fn passkeys_of(
        &self,
        client: &impl GenericClient,
        user_id: Uuid,
    ) -> AuthResult<Response> {
        let rows = client
            .c_query(
                &format!(
                    "select {PASSKEY_COLUMNS} from sovra.webauthn_credentials
                      where user_id = $1 order by created_at, id"
                ),
                &[&user_id],
            )
            .await?;
        Ok(ok_json(Value::Array(
            rows.iter().map(passkey_json).collect(),
        )))
    }

    async fn rename_passkey(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        self.limit(Bucket::Verify, &ctx.ip_key()).await?;
        let body: RenameBody = ctx.json()?;
        let name = body
            .friendly_name
            .map(|n| n.trim().to_owned())
            .ok_or_else(|| AuthError::validation("friendly_name is required"))?;
        if name.chars().count() > 120 {
            return Err(AuthError::validation(
                "friendly_name must be at most 120 characters",
            ));
        }
        let id = Uuid::parse_str(id).map_err(|_| passkey_not_found())?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = self.current(ctx, &tx).await?;
        let name = (!name.is_empty()).then_some(name);
        let row = tx
            .c_query_opt(
                &format!(
                    "update sovra.webauthn_credentials set friendly_name = $3, updated_at = now()
                      where id = $1 and user_id = $2 returning {PASSKEY_COLUMNS}"
                ),
                &[&id, &current.user.id, &name],
            )
            .await?
            .ok_or_else(passkey_not_found)?;
        tx.commit().await?;
        Ok(ok_json(passkey_json(&row)))
    }

    async fn delete_passkey(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        self.limit(Bucket::Verify, &ctx.ip_key()).await?;
        let id = Uuid::parse_str(id).map_err(|_| passkey_not_found())?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = self.current(ctx, &tx).await?;
        if current.user.has_verified_factor() && current.aal != "aal2" {
            return Err(AuthError::forbidden(
                "insufficient_aal",
                "AAL2 required to delete a passkey",
            ));
        }
        let deleted = tx
            .c_execute(
                "delete from sovra.webauthn_credentials where id = $1 and user_id = $2",
                &[&id, &current.user.id],
            )
            .await?;
        if deleted == 0 {
            return Err(passkey_not_found());
        }
        self.audit(
            &tx,
            ctx,
            "passkey_deleted",
            Some(&current.user),
            "",
            json!({"passkey_id": id}),
        )
        .await?;
        tx.commit().await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    fn admin_user_id(id: &str) -> AuthResult<Uuid> {
        Uuid::parse_str(id).map_err(|_| AuthError::not_found("user_not_found", "User not found"))
    }

    async fn admin_list_passkeys(&self, ctx: &Ctx<'_>, user: &str) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let user_id = Self::admin_user_id(user)?;
        let client = self.pool.get().await?;
        if crate::user::by_id(&client, user_id).await?.is_none() {
            return Err(AuthError::not_found("user_not_found", "User not found"));
        }
        self.passkeys_of(&client, user_id).await
    }

    async fn admin_delete_passkey(
        &self,
        ctx: &Ctx<'_>,
        user: &str,
        id: &str,
    ) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let user_id = Self::admin_user_id(user)?;
        let id = Uuid::parse_str(id).map_err(|_| passkey_not_found())?;
        let client = self.pool.get().await?;
        let deleted = client
            .c_execute(
                "delete from sovra.webauthn_credentials where id = $1 and user_id = $2",
                &[&id, &user_id],
            )
            .await?;
        if deleted == 0 {
            return Err(passkey_not_found());
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    // --- WebAuthn MFA factors -------------------------------------------

    /// Checks the RP ID and origins an MFA caller names against the
    /// configured ones; returns those to use.
    fn factor_relying_party(&self, params: &FactorParams) -> AuthResult<(String, Vec<String>)> {
        let (rp_id, origins) = self.relying_party();
        if let Some(asked) = params.rp_id.as_deref()
            && asked != rp_id
        {
            return Err(AuthError::validation(format!(
                "rpId {asked:?} is not this server's relying party"
            )));
        }
        let Some(asked) = params.rp_origins.as_ref().filter(|o| !o.is_empty()) else {
            return Ok((rp_id, origins));
        };
        for origin in asked {
            if !origins
                .iter()
                .any(|o| o.trim_end_matches('/') == origin.trim_end_matches('/'))
            {
                return Err(AuthError::validation(format!(
                    "rpOrigins: {origin:?} is not an allowed origin"
                )));
            }
        }
        Ok((rp_id, asked.clone()))
    }

    /// The `webauthn` part of an MFA challenge answer and the session data
    /// to store with the challenge.
    pub(crate) async fn webauthn_factor_challenge(
        &self,
        tx: &impl GenericClient,
        user: &crate::user::User,
        factor_id: Uuid,
        verified: bool,
        params: &FactorParams,
    ) -> AuthResult<(Value, Value)> {
        if !self.config.webauthn.mfa {
            return Err(AuthError::unprocessable(
                "mfa_webauthn_verify_not_enabled",
                "MFA verification with WebAuthn is disabled",
            ));
        }
        let (rp_id, origins) = self.factor_relying_party(params)?;
        let challenge = crypto::random_bytes(32);
        let timeout = self.config.webauthn.challenge_expiry * 1000;
        let (kind, public_key) = if verified {
            let stored: Option<Value> = tx
                .c_query_one(
                    "select web_authn_credential from auth.mfa_factors where id = $1",
                    &[&factor_id],
                )
                .await?
                .get(0);
            let (id, _, _) = stored
                .as_ref()
                .and_then(factor_credential_parts)
                .ok_or_else(AuthError::internal)?;
            (
                "request",
                json!({
                    "challenge": webauthn::b64url(&challenge),
                    "rpId": rp_id,
                    "timeout": timeout,
                    "userVerification": "preferred",
                    "allowCredentials": [{"type": "public-key", "id": webauthn::b64url(&id)}],
                }),
            )
        } else {
            let others = tx
                .c_query(
                    "select web_authn_credential from auth.mfa_factors
                      where user_id = $1 and factor_type = 'webauthn' and web_authn_credential is not null",
                    &[&user.id],
                )
                .await?;
            let exclude: Vec<Value> = others
                .iter()
                .filter_map(|row| factor_credential_parts(&row.get::<_, Value>(0)))
                .map(|(id, _, _)| json!({"type": "public-key", "id": webauthn::b64url(&id)}))
                .collect();
            (
                "create",
                json!({
                    "challenge": webauthn::b64url(&challenge),
                    "rp": {"id": rp_id, "name": self.config.webauthn.rp_display_name},
                    "user": Self::user_entity(user),
                    "pubKeyCredParams": Self::pub_key_params(),
                    "timeout": timeout,
                    "excludeCredentials": exclude,
                    "authenticatorSelection": {
                        "residentKey": "discouraged",
                        "requireResidentKey": false,
                        "userVerification": "preferred",
                    },
                    "attestation": "none",
                }),
            )
        };
        let session_data = json!({
            "challenge": webauthn::b64url(&challenge),
            "type": kind,
            "rp_id": rp_id,
            "origins": origins,
        });
        Ok((
            json!({"type": kind, "credential_options": {"publicKey": public_key}}),
            session_data,
        ))
    }

    /// Checks a WebAuthn MFA verification against the challenge's session
    /// data: `Ok(Ok(credential JSON to store))` when it passed,
    /// `Ok(Err(reason))` when it did not.
    pub(crate) async fn webauthn_factor_verify(
        &self,
        tx: &impl GenericClient,
        factor_id: Uuid,
        session_data: Option<&Value>,
        params: Option<FactorParams>,
    ) -> AuthResult<Result<Value, String>> {
        if !self.config.webauthn.mfa {
            return Err(AuthError::unprocessable(
                "mfa_webauthn_verify_not_enabled",
                "MFA verification with WebAuthn is disabled",
            ));
        }
        let params = params.ok_or_else(|| AuthError::validation("webauthn is required"))?;
        let data = session_data.ok_or_else(|| {
            AuthError::validation("This challenge was not made for a WebAuthn factor")
        })?;
        let kind = data.get("type").and_then(Value::as_str).unwrap_or("");
        if params.kind.as_deref() != Some(kind) {
            return Err(AuthError::validation(format!(
                "webauthn.type must be {kind:?} for this challenge"
            )));
        }
        let rp_id = data.get("rp_id").and_then(Value::as_str).unwrap_or("");
        let origins: Vec<String> = data
            .get("origins")
            .and_then(|o| serde_json::from_value(o.clone()).ok())
            .unwrap_or_default();
        let challenge = data
            .get("challenge")
            .and_then(Value::as_str)
            .and_then(|c| webauthn::from_b64url(c, 64, "challenge").ok())
            .ok_or_else(AuthError::internal)?;
        let rp = RelyingParty {
            id: rp_id,
            origins: &origins,
        };
        let stored: Option<Value> = tx
            .c_query_one(
                "select web_authn_credential from auth.mfa_factors where id = $1 for update",
                &[&factor_id],
            )
            .await?
            .get(0);
        let response = params
            .credential_response
            .ok_or_else(|| AuthError::validation("webauthn.credential_response is required"))?;
        if kind == "create" {
            let response: webauthn::RegistrationResponse = serde_json::from_value(response)
                .map_err(|e| AuthError::validation(format!("credential_response: {e}")))?;
            return Ok(
                match webauthn::verify_registration(&rp, &challenge, false, &response) {
                    Ok(cred) => {
                        let taken = tx
                            .c_query_opt(
                                "select 1 from auth.mfa_factors where web_authn_credential ->> 'id' = $1",
                                &[&std_b64(&cred.credential_id)],
                            )
                            .await?;
                        if taken.is_some() {
                            return Err(AuthError::unprocessable(
                                "webauthn_credential_exists",
                                "This credential is already a factor",
                            ));
                        }
                        Ok(factor_credential_json(&cred))
                    }
                    Err(reason) => Err(reason.0),
                },
            );
        }
        let response: webauthn::AssertionResponse = serde_json::from_value(response)
            .map_err(|e| AuthError::validation(format!("credential_response: {e}")))?;
        let (id, key, count) = stored
            .as_ref()
            .and_then(factor_credential_parts)
            .ok_or_else(AuthError::internal)?;
        match webauthn::assertion_credential_id(&response) {
            Ok(named) if named == id => {}
            Ok(_) => return Ok(Err("credential is not this factor's".to_owned())),
            Err(reason) => return Ok(Err(reason.0)),
        }
        Ok(
            match webauthn::verify_assertion(&rp, &challenge, false, &key, count, &response) {
                Ok(verified) => {
                    let mut updated = stored.unwrap_or_default();
                    if let Some(auth) = updated
                        .get_mut("authenticator")
                        .and_then(Value::as_object_mut)
                    {
                        auth.insert("signCount".to_owned(), json!(verified.sign_count));
                    } else if let Value::Object(map) = &mut updated {
                        map.insert(
                            "authenticator".to_owned(),
                            json!({"signCount": verified.sign_count}),
                        );
                    }
                    Ok(updated)
                }
                Err(reason) => Err(reason.0),
            },
        )
    }
}
