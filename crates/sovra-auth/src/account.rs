//! Accounts: sign-up, sign-in, the user object, sign-out, one-time codes
//! and links, recovery, and the user's own sessions.

use crate::db::Cached as _;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sovra_pg::GenericClient;
use uuid::Uuid;

use crate::error::{AuthError, AuthResult};
use crate::hooks::{self, HookName};
use crate::limits::Bucket;
use crate::mail::Kind;
use crate::password::Checked;
use crate::session::{OneTime, TokenColumn, Via, admit};
use crate::user::{self, User, normalize_email, normalize_phone};
use crate::{AuthService, Ctx, attempts, crypto, ok_json, time};

/// A new account.
pub(crate) struct NewUser<'a> {
    pub id: Uuid,
    pub email: Option<&'a str>,
    pub phone: Option<&'a str>,
    pub password_hash: Option<String>,
    pub user_metadata: Map<String, Value>,
    pub app_metadata: Option<Map<String, Value>>,
    pub email_confirmed: bool,
    pub phone_confirmed: bool,
    pub anonymous: bool,
    pub invited: bool,
    pub role: &'a str,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct SignupBody {
    email: Option<String>,
    phone: Option<String>,
    password: Option<String>,
    data: Option<Value>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    invite_code: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PasswordBody {
    email: Option<String>,
    phone: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    auth_code: Option<String>,
    code_verifier: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OtpBody {
    email: Option<String>,
    phone: Option<String>,
    data: Option<Value>,
    create_user: Option<bool>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct VerifyBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    token: Option<String>,
    token_hash: Option<String>,
    email: Option<String>,
    phone: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct UpdateBody {
    email: Option<String>,
    phone: Option<String>,
    password: Option<String>,
    nonce: Option<String>,
    data: Option<Value>,
    app_metadata: Option<Value>,
    current_password: Option<String>,
}

/// A new password, checked and hashed before the transaction that stores it.
pub(crate) struct NewPassword {
    user_id: Uuid,
    /// The stored hash the checks were made against.
    checked_against: Option<String>,
    hash: String,
}

/// `data` as a metadata object (`null`/absent: empty).
pub(crate) fn metadata(data: Option<Value>) -> AuthResult<Map<String, Value>> {
    match data {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(map)) => Ok(map),
        Some(_) => Err(AuthError::validation("data must be a JSON object")),
    }
}

/// The key of an account's sign-in bucket: the account and the client
/// (IPv6 by /64), so that nobody can empty the owner's bucket.
fn account_key(subject: &str, ctx: &Ctx<'_>) -> String {
    format!("{subject}\u{0}{}", ctx.ip_key())
}

/// A PKCE challenge from a request body, validated.
pub(crate) fn pkce(
    challenge: Option<String>,
    method: Option<String>,
) -> AuthResult<Option<(String, String)>> {
    let Some(challenge) = challenge.filter(|c| !c.is_empty()) else {
        return Ok(None);
    };
    let method = method.unwrap_or_default().to_ascii_lowercase();
    if !matches!(method.as_str(), "s256" | "plain") {
        return Err(AuthError::validation(
            "Code challenge method must be s256 or plain",
        ));
    }
    if !(43..=128).contains(&challenge.len()) {
        return Err(AuthError::validation(
            "Code challenge must be between 43 and 128 characters",
        ));
    }
    Ok(Some((challenge, method)))
}

/// The user-facing verification type a token column is checked under.
fn link_types(kind: &str) -> Option<&'static [TokenColumn]> {
    Some(match kind {
        "signup" | "invite" => &[TokenColumn::Confirmation],
        "magiclink" | "recovery" => &[TokenColumn::Recovery],
        "email" | "sms" => &[TokenColumn::Confirmation, TokenColumn::Recovery],
        "email_change" => &[TokenColumn::EmailChangeNew, TokenColumn::EmailChangeCurrent],
        "phone_change" => &[TokenColumn::PhoneChange],
        _ => return None,
    })
}

enum Verified {
    Session(Value),
    Message(Value),
}

impl AuthService {
    /// The before-user-created hook (GoTrue's): shown the user about to be
    /// made (`{metadata, user}`), it refuses by answering an `error`
    /// object, which the client gets with its status and message.
    async fn before_user_created(
        &self,
        client: &impl GenericClient,
        new: &NewUser<'_>,
        app_metadata: &Value,
        user_metadata: &Map<String, Value>,
    ) -> AuthResult<()> {
        let now = time::rfc3339(std::time::SystemTime::now());
        let mut user = json!({
            "id": new.id,
            "aud": self.config.jwt_aud,
            "role": new.role,
            "email": new.email.unwrap_or(""),
            "phone": new.phone.unwrap_or(""),
            "app_metadata": app_metadata,
            "user_metadata": user_metadata,
            "identities": [],
            "is_anonymous": new.anonymous,
            "created_at": now,
            "updated_at": now,
        });
        if let Value::Object(map) = &mut user {
            if new.email.is_some() && new.email_confirmed {
                map.insert("email_confirmed_at".to_owned(), json!(now));
            }
            if new.phone.is_some() && new.phone_confirmed {
                map.insert("phone_confirmed_at".to_owned(), json!(now));
            }
            if new.invited {
                map.insert("invited_at".to_owned(), json!(now));
            }
        }
        let input = json!({
            "metadata": hooks::metadata(HookName::BeforeUserCreated, None),
            "user": user,
        });
        let output = self
            .run_hook(client, HookName::BeforeUserCreated, &input)
            .await?;
        match hooks::hook_error(&output) {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Inserts a user and its identity. A taken email or phone is
    /// `email_exists`/`phone_exists`.
    pub(crate) async fn insert_user(
        &self,
        client: &impl GenericClient,
        mut new: NewUser<'_>,
    ) -> AuthResult<Uuid> {
        let provider = if new.anonymous {
            None
        } else if new.email.is_some() {
            Some("email")
        } else {
            Some("phone")
        };
        let mut user_metadata = std::mem::take(&mut new.user_metadata);
        let app_metadata = match (new.app_metadata.take(), provider) {
            (Some(map), _) => Value::Object(map),
            (None, Some(p)) => json!({"provider": p, "providers": [p]}),
            (None, None) => json!({}),
        };
        // As GoTrue: the metadata is what the client sent; the address's
        // claims (`sub`, `email`, …) are identity data. Confirming an
        // address adds `email_verified`/`phone_verified: true`, as GoTrue's
        // `Confirm`/`ConfirmPhone` do (here when it is confirmed at once).
        if new.email.is_some() && new.email_confirmed {
            user_metadata.insert("email_verified".to_owned(), json!(true));
        }
        if new.phone.is_some() && new.phone_confirmed {
            user_metadata.insert("phone_verified".to_owned(), json!(true));
        }
        if self.hook_enabled(HookName::BeforeUserCreated) {
            self.before_user_created(client, &new, &app_metadata, &user_metadata)
                .await?;
        }
        let result = client
            .c_execute(
                "insert into auth.users (instance_id, id, aud, role, email, phone, encrypted_password,
                   email_confirmed_at, phone_confirmed_at, raw_app_meta_data, raw_user_meta_data,
                   is_anonymous, invited_at, created_at, updated_at, is_super_admin,
                   confirmation_token, recovery_token, email_change_token_new, email_change)
                 values ('00000000-0000-0000-0000-000000000000', $1, $2, $3, $4, $5, $6,
                   case when $7 then now() end, case when $8 then now() end, $9, $10,
                   $11, case when $12 then now() end, now(), now(), false, '', '', '', '')",
                &[
                    &new.id,
                    &self.config.jwt_aud,
                    &new.role,
                    &new.email,
                    &new.phone,
                    &new.password_hash,
                    &new.email_confirmed,
                    &new.phone_confirmed,
                    &app_metadata,
                    &Value::Object(user_metadata),
                    &new.anonymous,
                    &new.invited,
                ],
            )
            .await;
        if let Err(err) = result {
            if sovra_pg::error_kind(&err) == sovra_pg::ErrorKind::UniqueViolation {
                return Err(if new.email.is_some() {
                    AuthError::unprocessable(
                        "email_exists",
                        "A user with this email address has already been registered",
                    )
                } else {
                    AuthError::unprocessable(
                        "phone_exists",
                        "A user with this phone number has already been registered",
                    )
                });
            }
            return Err(err.into());
        }
        if let Some(provider) = provider {
            let identity = json!({
                "sub": new.id,
                "email": new.email,
                "phone": new.phone,
                "email_verified": new.email_confirmed,
                "phone_verified": new.phone_confirmed,
            });
            client
                .c_execute(
                    "insert into auth.identities (provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at)
                     values ($1::uuid::text, $1, $2, $3, now(), now(), now())",
                    &[&new.id, &identity, &provider],
                )
                .await?;
        }
        Ok(new.id)
    }

    /// Consumes an invite code (single use, unexpired) when sign-up is by
    /// invitation only.
    async fn consume_invite_code(
        &self,
        client: &impl GenericClient,
        code: Option<&str>,
        user_id: Uuid,
    ) -> AuthResult<()> {
        if !self.config.invite_only {
            return Ok(());
        }
        let refused = || {
            AuthError::forbidden(
                "invite_code_invalid",
                "A valid invite code is required to sign up",
            )
        };
        let code = code.filter(|c| !c.is_empty()).ok_or_else(refused)?;
        let used = client
            .c_execute(
                "update sovra.invite_codes set used_at = now(), used_by = $2
                  where code_hash = $1 and used_at is null and (expires_at is null or expires_at > now())",
                &[&crypto::sha256_hex(code.trim()), &user_id],
            )
            .await?;
        if used == 1 { Ok(()) } else { Err(refused()) }
    }

    /// Stores a PKCE flow for `user_id`; the link token then carries the
    /// `pkce_` prefix.
    async fn begin_flow(
        &self,
        client: &impl GenericClient,
        user_id: Uuid,
        flow: Option<&(String, String)>,
        method: &str,
    ) -> AuthResult<bool> {
        let Some((challenge, challenge_method)) = flow else {
            return Ok(false);
        };
        client
            .c_execute(
                "insert into auth.flow_state (id, user_id, auth_code, code_challenge_method, code_challenge,
                   provider_type, created_at, updated_at, authentication_method)
                 values (gen_random_uuid(), $1, $2, $3, $4, 'email', now(), now(), $5)",
                &[
                    &user_id,
                    &Uuid::new_v4().to_string(),
                    challenge_method,
                    challenge,
                    &method,
                ],
            )
            .await?;
        Ok(true)
    }

    /// Sends a link and code of `kind` to `to`, stored in `column`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn send_one_time(
        &self,
        client: &impl GenericClient,
        user: &User,
        to: &str,
        column: TokenColumn,
        kind: Kind,
        link_type: &str,
        redirect_to: &str,
        pkce: bool,
    ) -> AuthResult<OneTime> {
        let mut one_time = self.store_one_time(client, user.id, to, column).await?;
        if pkce {
            one_time.hash = format!("pkce_{}", one_time.hash);
            let sql = format!(
                "update auth.users set {} = $2 where id = $1",
                column.column()
            );
            client
                .c_execute(&sql, &[&user.id, &crypto::stored_token(&one_time.hash)])
                .await?;
        }
        let new_email =
            if column == TokenColumn::EmailChangeCurrent || column == TokenColumn::EmailChangeNew {
                user.email_change.clone()
            } else {
                String::new()
            };
        self.deliver(
            kind,
            to,
            &one_time,
            link_type,
            redirect_to,
            user,
            &new_email,
        )
        .await?;
        Ok(one_time)
    }

    pub(crate) async fn signup(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let body: SignupBody = ctx.json()?;
        let redirect = self.redirect_target(ctx.query("redirect_to").as_deref());
        let mut data = metadata(body.data)?;
        let invite_code = body.invite_code.or_else(|| {
            data.remove("invite_code")
                .and_then(|v| v.as_str().map(str::to_owned))
        });
        let email = body.email.filter(|e| !e.is_empty());
        let phone = body.phone.filter(|p| !p.is_empty());
        if email.is_none() && phone.is_none() {
            return self
                .anonymous_signup(ctx, data, invite_code.as_deref())
                .await;
        }
        if self.config.disable_signup {
            return Err(AuthError::unprocessable(
                "signup_disabled",
                "Signups not allowed for this instance",
            ));
        }
        if email.is_some() && phone.is_some() {
            return Err(AuthError::validation(
                "Only an email address or phone number should be provided on signup.",
            ));
        }
        self.limit(Bucket::SignIn, &ctx.ip_key()).await?;
        let password = body.password.unwrap_or_default();
        if password.is_empty() {
            return Err(AuthError::validation("Signup requires a valid password"));
        }
        crate::password::check_length(&password)?;
        if let Err((message, reasons)) = self.config.password.check(&password) {
            return Err(AuthError::weak_password(message, reasons));
        }
        let flow = pkce(body.code_challenge, body.code_challenge_method)?;
        let (email, phone) = match (email, phone) {
            (Some(e), _) => (
                Some(normalize_email(&e).ok_or_else(|| {
                    AuthError::validation("Unable to validate email address: invalid format")
                })?),
                None,
            ),
            (None, Some(p)) => (
                None,
                Some(normalize_phone(&p).ok_or_else(|| {
                    AuthError::validation("Invalid phone number format (E.164 required)")
                })?),
            ),
            (None, None) => (None, None),
        };
        let subject = email.clone().or_else(|| phone.clone()).unwrap_or_default();
        self.limit(Bucket::SignIn, &account_key(&subject, ctx))
            .await?;
        // Hash before looking the user up, so both paths take as long, and
        // before taking a connection, so none is held while hashing.
        let hash = self.hasher.hash(&password).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let existing = match (&email, &phone) {
            (Some(e), _) => user::by_email(&tx, e).await?,
            (None, Some(p)) => user::by_phone(&tx, p).await?,
            _ => None,
        };
        let autoconfirm = if email.is_some() {
            self.config.email_autoconfirm
        } else {
            self.config.phone_autoconfirm
        };
        if let Some(existing) = existing {
            let confirmed = if email.is_some() {
                existing.email_confirmed_at.is_some()
            } else {
                existing.phone_confirmed_at.is_some()
            };
            self.audit(
                &tx,
                ctx,
                "user_repeated_signup",
                Some(&existing),
                "",
                json!({"provider": if email.is_some() {"email"} else {"phone"}}),
            )
            .await?;
            if confirmed {
                tx.commit().await?;
                if autoconfirm {
                    return Err(AuthError::unprocessable(
                        "user_already_exists",
                        "User already registered",
                    ));
                }
                // Looks like a new sign-up so that addresses cannot be probed.
                return Ok(ok_json(fake_user(
                    &self.config.jwt_aud,
                    &subject,
                    email.is_some(),
                )));
            }
            // Not confirmed yet: send the confirmation again.
            let sent = if email.is_some() {
                existing.confirmation_sent_at
            } else {
                existing
                    .phone_change_sent_at
                    .or(existing.confirmation_sent_at)
            };
            self.check_frequency(sent)?;
            let pkce = self
                .begin_flow(&tx, existing.id, flow.as_ref(), "email/signup")
                .await?;
            let kind = if email.is_some() {
                Kind::Confirmation
            } else {
                Kind::Sms
            };
            self.send_one_time(
                &tx,
                &existing,
                &subject,
                TokenColumn::Confirmation,
                kind,
                "signup",
                &redirect,
                pkce,
            )
            .await?;
            let user = user::by_id(&tx, existing.id)
                .await?
                .ok_or_else(AuthError::internal)?;
            tx.commit().await?;
            return Ok(ok_json(user.to_json()));
        }
        let id = Uuid::new_v4();
        self.consume_invite_code(&tx, invite_code.as_deref(), id)
            .await?;
        self.insert_user(
            &tx,
            NewUser {
                id,
                email: email.as_deref(),
                phone: phone.as_deref(),
                password_hash: Some(hash),
                user_metadata: data,
                app_metadata: None,
                email_confirmed: autoconfirm && email.is_some(),
                phone_confirmed: autoconfirm && phone.is_some(),
                anonymous: false,
                invited: false,
                role: "authenticated",
            },
        )
        .await?;
        let user = user::by_id(&tx, id)
            .await?
            .ok_or_else(AuthError::internal)?;
        self.audit(
            &tx,
            ctx,
            "user_signedup",
            Some(&user),
            "",
            json!({"provider": if email.is_some() {"email"} else {"phone"}}),
        )
        .await?;
        if autoconfirm {
            let session = self
                .start_session(&tx, ctx, id, "password", Via::Grant)
                .await?;
            self.audit(
                &tx,
                ctx,
                "login",
                Some(&user),
                "",
                json!({"provider": "email"}),
            )
            .await?;
            tx.commit().await?;
            return Ok(ok_json(session));
        }
        let pkce = self
            .begin_flow(&tx, id, flow.as_ref(), "email/signup")
            .await?;
        let kind = if email.is_some() {
            Kind::Confirmation
        } else {
            Kind::Sms
        };
        self.send_one_time(
            &tx,
            &user,
            &subject,
            TokenColumn::Confirmation,
            kind,
            "signup",
            &redirect,
            pkce,
        )
        .await?;
        self.audit(
            &tx,
            ctx,
            "user_confirmation_requested",
            Some(&user),
            "",
            json!({}),
        )
        .await?;
        let user = user::by_id(&tx, id)
            .await?
            .ok_or_else(AuthError::internal)?;
        tx.commit().await?;
        Ok(ok_json(user.to_json()))
    }

    async fn anonymous_signup(
        &self,
        ctx: &Ctx<'_>,
        data: Map<String, Value>,
        invite_code: Option<&str>,
    ) -> AuthResult<Response> {
        if !self.config.anonymous_users {
            return Err(AuthError::unprocessable(
                "anonymous_provider_disabled",
                "Anonymous sign-ins are disabled",
            ));
        }
        if self.config.disable_signup {
            return Err(AuthError::unprocessable(
                "signup_disabled",
                "Signups not allowed for this instance",
            ));
        }
        self.limit(Bucket::Anonymous, &ctx.ip_key()).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let id = Uuid::new_v4();
        self.consume_invite_code(&tx, invite_code, id).await?;
        self.insert_user(
            &tx,
            NewUser {
                id,
                email: None,
                phone: None,
                password_hash: None,
                user_metadata: data,
                app_metadata: None,
                email_confirmed: false,
                phone_confirmed: false,
                anonymous: true,
                invited: false,
                role: "authenticated",
            },
        )
        .await?;
        let session = self
            .start_session(&tx, ctx, id, "anonymous", Via::Grant)
            .await?;
        self.audit(
            &tx,
            ctx,
            "user_signedup",
            None,
            "",
            json!({"provider": "anonymous", "user_id": id}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(session))
    }

    pub(crate) async fn token(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let grant = ctx.query("grant_type").unwrap_or_default();
        match grant.as_str() {
            "web3" => return self.web3_disabled(),
            "id_token" => return self.id_token_grant(ctx).await,
            _ => {}
        }
        let body: PasswordBody = ctx.json()?;
        match grant.as_str() {
            "password" => self.password_grant(ctx, body).await,
            "refresh_token" => {
                let token = body
                    .refresh_token
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| AuthError::oauth("invalid_request", "refresh_token required"))?;
                self.refresh(ctx, &token).await
            }
            "pkce" => self.pkce_grant(ctx, body).await,
            _ => Err(AuthError::bad_request(
                "invalid_credentials",
                "unsupported_grant_type",
            )),
        }
    }

    /// The password verification attempt hook (GoTrue's): told whether the
    /// password was right, it may reject the attempt (400
    /// `invalid_credentials` with its message) and end every session of
    /// the user (`should_logout_user`); the caller commits the sign-outs
    /// and answers with the refusal returned.
    async fn password_hook(
        &self,
        tx: &impl GenericClient,
        ctx: &Ctx<'_>,
        user_id: Uuid,
        valid: bool,
    ) -> AuthResult<Option<AuthError>> {
        let input = json!({
            "metadata": hooks::metadata(HookName::PasswordVerificationAttempt, ctx.ip),
            "user_id": user_id,
            "valid": valid,
        });
        let output = self
            .run_hook(tx, HookName::PasswordVerificationAttempt, &input)
            .await?;
        let Some((message, logout)) = hooks::rejection(&output)? else {
            return Ok(None);
        };
        if logout {
            tx.c_execute("delete from auth.sessions where user_id = $1", &[&user_id])
                .await?;
        }
        let message = if message.is_empty() {
            "Further password verification attempts will be rejected.".to_owned()
        } else {
            message
        };
        Ok(Some(AuthError::bad_request("invalid_credentials", message)))
    }

    async fn password_grant(&self, ctx: &Ctx<'_>, body: PasswordBody) -> AuthResult<Response> {
        let email = body.email.filter(|e| !e.is_empty());
        let phone = body.phone.filter(|p| !p.is_empty());
        let password = body.password.unwrap_or_default();
        let subject = match (&email, &phone) {
            (None, None) => return Err(AuthError::validation("missing email or phone")),
            (Some(_), Some(_)) => {
                return Err(AuthError::validation(
                    "Only an email address or phone number should be provided on login.",
                ));
            }
            (Some(e), None) => e.trim().to_lowercase(),
            (None, Some(p)) => normalize_phone(p).unwrap_or_else(|| p.clone()),
        };
        self.limit(Bucket::SignIn, &ctx.ip_key()).await?;
        // Per account *and* client: guesses from elsewhere cannot lock the
        // account's owner out.
        self.limit(Bucket::SignIn, &account_key(&subject, ctx))
            .await?;
        crate::password::check_length(&password)?;
        // No connection is held while the hasher works or is waited for.
        let found = {
            let client = self.pool.get().await?;
            if email.is_some() {
                user::by_email(&client, &subject).await?
            } else {
                user::by_phone(&client, &subject).await?
            }
        };
        let stored = found.as_ref().and_then(|u| u.encrypted_password.clone());
        let checked = self.hasher.verify(&password, stored.as_deref()).await?;
        let rehash = match (&found, checked) {
            (Some(_), Checked::RightRehash) => self.hasher.hash(&password).await.ok(),
            _ => None,
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if let Some(user) = &found
            && self.hook_enabled(HookName::PasswordVerificationAttempt)
        {
            let valid = matches!(checked, Checked::Right | Checked::RightRehash);
            if let Some(refusal) = self.password_hook(&tx, ctx, user.id, valid).await? {
                tx.commit().await?;
                return Err(refusal);
            }
        }
        let user = match (found, checked) {
            (Some(user), Checked::Right | Checked::RightRehash) => {
                if let Some(new_hash) = rehash {
                    // Only if the hash is still the one that was checked.
                    tx.c_execute(
                        "update auth.users set encrypted_password = $2
                          where id = $1 and encrypted_password is not distinct from $3",
                        &[&user.id, &new_hash, &stored],
                    )
                    .await?;
                }
                user
            }
            (found, _) => {
                self.audit(
                    &tx,
                    ctx,
                    "login_failed",
                    found.as_ref(),
                    &subject,
                    json!({"provider": if email.is_some() {"email"} else {"phone"}}),
                )
                .await?;
                tx.commit().await?;
                return Err(AuthError::invalid_credentials());
            }
        };
        if email.is_some() && user.email_confirmed_at.is_none() {
            tx.commit().await?;
            return Err(AuthError::bad_request(
                "email_not_confirmed",
                "Email not confirmed",
            ));
        }
        if phone.is_some() && user.phone_confirmed_at.is_none() {
            tx.commit().await?;
            return Err(AuthError::bad_request(
                "phone_not_confirmed",
                "Phone not confirmed",
            ));
        }
        admit(Some(&user), Via::Grant)?;
        let mut session = self
            .start_session(&tx, ctx, user.id, "password", Via::Grant)
            .await?;
        self.audit(
            &tx,
            ctx,
            "login",
            Some(&user),
            "",
            json!({"provider": if email.is_some() {"email"} else {"phone"}}),
        )
        .await?;
        tx.commit().await?;
        if let Err((message, reasons)) = self.config.password.check(&password)
            && let Value::Object(map) = &mut session
        {
            map.insert(
                "weak_password".to_owned(),
                json!({"message": message, "reasons": reasons}),
            );
        }
        Ok(ok_json(session))
    }

    async fn pkce_grant(&self, ctx: &Ctx<'_>, body: PasswordBody) -> AuthResult<Response> {
        let (Some(code), Some(verifier)) = (body.auth_code, body.code_verifier) else {
            return Err(AuthError::validation(
                "invalid request: both auth code and code verifier should be non-empty",
            ));
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .c_query_opt(
                "delete from auth.flow_state where auth_code = $1
                 returning user_id, code_challenge_method, code_challenge, authentication_method,
                           extract(epoch from now() - created_at)::float8,
                           provider_access_token, provider_refresh_token",
                &[&code],
            )
            .await?;
        let Some(row) = row else {
            return Err(AuthError::not_found(
                "flow_state_not_found",
                "invalid flow state, no valid flow state found",
            ));
        };
        let user_id: Option<Uuid> = row.get(0);
        let method: String = row.get(1);
        let challenge: String = row.get(2);
        let auth_method: String = row.get(3);
        let age: f64 = row.get(4);
        if age > 300.0 {
            tx.commit().await?;
            return Err(AuthError::unprocessable(
                "flow_state_expired",
                "invalid flow state, flow state has expired",
            ));
        }
        let expected = if method == "s256" {
            crypto::pkce_s256(&verifier)
        } else {
            verifier.clone()
        };
        if !crypto::equal(&expected, &challenge) {
            return Err(AuthError::bad_request(
                "bad_code_verifier",
                "code challenge does not match previously saved code verifier",
            ));
        }
        let user_id = user_id.ok_or_else(|| {
            AuthError::not_found(
                "flow_state_not_found",
                "invalid flow state, no valid flow state found",
            )
        })?;
        let method = match auth_method.as_str() {
            "recovery" => "recovery",
            "magiclink" => "magiclink",
            "email/signup" => "email/signup",
            "oauth" => "oauth",
            _ => "otp",
        };
        let mut session = self
            .start_session(&tx, ctx, user_id, method, Via::Grant)
            .await?;
        // An external sign-in hands the provider's tokens over once.
        // They were kept sealed, bound to this code.
        let provider_tokens: [Option<String>; 2] = [row.get(5), row.get(6)];
        if let Value::Object(map) = &mut session {
            for ((key, column), value) in [
                ("provider_token", "provider_access_token"),
                ("provider_refresh_token", "provider_refresh_token"),
            ]
            .into_iter()
            .zip(provider_tokens)
            {
                let value = value.map(|stored| {
                    crate::external::open_flow_token(&self.key, &code, column, &stored)
                });
                if let Some(value) = value.filter(|v| !v.is_empty()) {
                    map.insert(key.to_owned(), json!(value));
                }
            }
        }
        tx.commit().await?;
        Ok(ok_json(session))
    }

    pub(crate) async fn get_user(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let client = self.pool.get().await?;
        let current = self.current(ctx, &client).await?;
        Ok(ok_json(current.user.to_json()))
    }

    pub(crate) async fn update_user(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let body: UpdateBody = ctx.json()?;
        if body.app_metadata.is_some() {
            return Err(AuthError::forbidden(
                "not_admin",
                "User not allowed to update app_metadata",
            ));
        }
        let redirect = self.redirect_target(ctx.query("redirect_to").as_deref());
        let password = body.password.filter(|p| !p.is_empty());
        // The password is checked and hashed before the transaction, with no
        // connection held while the hasher works.
        let new_password = match &password {
            Some(password) => Some(
                self.prepare_password(ctx, password, body.current_password.as_deref())
                    .await?,
            ),
            None => None,
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = self.current(ctx, &tx).await?;
        let user = &current.user;
        // GoTrue: with a verified factor, email, phone and password change
        // only from an aal2 session.
        let changes_email = body
            .email
            .as_deref()
            .filter(|e| !e.is_empty())
            .is_some_and(|e| normalize_email(e).as_deref() != Some(user.email.as_str()));
        let changes_phone = body
            .phone
            .as_deref()
            .filter(|p| !p.is_empty())
            .is_some_and(|p| normalize_phone(p).as_deref() != Some(user.phone.as_str()));
        let changes_password = password.is_some();
        if user.has_verified_factor()
            && current.aal != "aal2"
            && (changes_email || changes_phone || changes_password)
        {
            return Err(AuthError::new(
                StatusCode::UNAUTHORIZED,
                "insufficient_aal",
                "AAL2 session is required to update email or password when MFA is enabled.",
            ));
        }
        if let Some(data) = body.data {
            let Value::Object(patch) = data else {
                return Err(AuthError::validation("data must be a JSON object"));
            };
            let mut merged = user.user_metadata.as_object().cloned().unwrap_or_default();
            for (key, value) in patch {
                if value.is_null() {
                    merged.remove(&key);
                } else {
                    merged.insert(key, value);
                }
            }
            tx.c_execute(
                "update auth.users set raw_user_meta_data = $2, updated_at = now() where id = $1",
                &[&user.id, &Value::Object(merged)],
            )
            .await?;
        }
        if let Some(new_password) = &new_password {
            self.change_password(ctx, &tx, &current, new_password, body.nonce.as_deref())
                .await?;
        }
        if let Some(email) = body.email.filter(|e| !e.is_empty()) {
            self.change_email(ctx, &tx, user, &email, &redirect).await?;
        }
        if let Some(phone) = body.phone.filter(|p| !p.is_empty()) {
            self.change_phone(ctx, &tx, user, &phone).await?;
        }
        let updated = user::by_id(&tx, user.id)
            .await?
            .ok_or_else(AuthError::internal)?;
        self.audit(&tx, ctx, "user_modified", Some(&updated), "", json!({}))
            .await?;
        tx.commit().await?;
        Ok(ok_json(updated.to_json()))
    }

    /// Checks a new password (and the current one when given) for the
    /// signed-in user and hashes it, all outside any transaction: the caller
    /// is looked up with a connection that is returned before hashing.
    /// Throttled like sign-in, per address and per user.
    async fn prepare_password(
        &self,
        ctx: &Ctx<'_>,
        password: &str,
        current_password: Option<&str>,
    ) -> AuthResult<NewPassword> {
        crate::password::check_length(password)?;
        if let Some(old) = current_password {
            crate::password::check_length(old)?;
        }
        let current = {
            let client = self.pool.get().await?;
            self.current(ctx, &client).await?
        };
        let user = &current.user;
        self.limit(Bucket::SignIn, &ctx.ip_key()).await?;
        self.limit(Bucket::SignIn, &user.id.to_string()).await?;
        if user.is_anonymous && user.email.is_empty() && user.phone.is_empty() {
            return Err(AuthError::unprocessable(
                "validation_failed",
                "Updating password of an anonymous user without an email or phone is not possible",
            ));
        }
        if user.has_verified_factor() && current.aal != "aal2" {
            return Err(AuthError::new(
                StatusCode::UNAUTHORIZED,
                "insufficient_aal",
                "AAL2 session is required to update password",
            ));
        }
        if let Err((message, reasons)) = self.config.password.check(password) {
            return Err(AuthError::weak_password(message, reasons));
        }
        let stored = user.encrypted_password.clone();
        if let Some(old) = current_password
            && self.hasher.verify(old, stored.as_deref()).await? == Checked::Wrong
        {
            return Err(AuthError::bad_request(
                "current_password_invalid",
                "Current password is incorrect",
            ));
        }
        if self.hasher.verify(password, stored.as_deref()).await? != Checked::Wrong {
            return Err(AuthError::unprocessable(
                "same_password",
                "New password should be different from the old password.",
            ));
        }
        let hash = self.hasher.hash(password).await?;
        Ok(NewPassword {
            user_id: user.id,
            checked_against: stored,
            hash,
        })
    }

    /// Stores a password prepared by [`Self::prepare_password`] inside the
    /// request's transaction, after the reauthentication nonce check.
    async fn change_password(
        &self,
        ctx: &Ctx<'_>,
        tx: &impl GenericClient,
        current: &crate::Current,
        new: &NewPassword,
        nonce: Option<&str>,
    ) -> AuthResult<()> {
        let user = &current.user;
        if user.id != new.user_id {
            return Err(AuthError::internal());
        }
        let session_age = current
            .session_created
            .map_or(i64::MAX, |created| time::now_unix() - created);
        if self.config.secure_password_change && session_age > 24 * 3600 {
            let Some(nonce) = nonce.filter(|n| !n.is_empty()) else {
                return Err(AuthError::bad_request(
                    "reauthentication_needed",
                    "Password update requires reauthentication",
                ));
            };
            let subject = if user.email.is_empty() {
                &user.phone
            } else {
                &user.email
            };
            let invalid = || {
                AuthError::unprocessable(
                    "reauthentication_not_valid",
                    "Nonce has expired or is invalid",
                )
            };
            // Wrong guesses of this nonce are counted like those of other
            // one-time codes: after `auth.code_attempts` of them it is
            // spent, right or not, until a new one is sent.
            let kind = attempts::Kind::Code("reauthentication_token");
            let sent_at: Option<std::time::SystemTime> = tx
                .c_query_one(
                    "select reauthentication_sent_at from auth.users where id = $1",
                    &[&user.id],
                )
                .await?
                .get(0);
            if let Some(sent_at) = sent_at
                && attempts::failures(tx, user.id, kind, sent_at).await?
                    >= i64::from(self.config.code_attempts)
            {
                return Err(invalid());
            }
            let stored = crypto::stored_token(&crypto::token_hash(subject, nonce.trim()));
            let ok = tx
                .c_execute(
                    "update auth.users set reauthentication_token = ''
                      where id = $1 and reauthentication_token = $2
                        and reauthentication_sent_at > now() - make_interval(secs => $3)",
                    &[&user.id, &stored, &(self.config.otp_expiry as f64)],
                )
                .await?;
            if ok != 1 {
                // The request's transaction rolls back: the failure is
                // counted on a connection of its own (a row of
                // `sovra.auth_attempts`, which that transaction holds no
                // lock on).
                if let Some(sent_at) = sent_at {
                    let own = self.pool.get().await?;
                    attempts::record_failure(&own, user.id, kind, sent_at).await?;
                }
                return Err(invalid());
            }
            attempts::clear(tx, user.id, kind).await?;
        }
        // Only if the password is still the one the checks saw.
        let changed = tx
            .c_execute(
                "update auth.users set encrypted_password = $2, updated_at = now()
                  where id = $1 and encrypted_password is not distinct from $3",
                &[&user.id, &new.hash, &new.checked_against],
            )
            .await?;
        if changed != 1 {
            return Err(AuthError::new(
                StatusCode::CONFLICT,
                "conflict",
                "The password was changed by another request; try again",
            ));
        }
        // Other sessions end with the old password.
        tx.c_execute(
            "delete from auth.sessions where user_id = $1 and id is distinct from $2",
            &[&user.id, &current.session_id],
        )
        .await?;
        self.audit(tx, ctx, "user_updated_password", Some(user), "", json!({}))
            .await
    }

    async fn change_email(
        &self,
        ctx: &Ctx<'_>,
        tx: &impl GenericClient,
        user: &User,
        email: &str,
        redirect: &str,
    ) -> AuthResult<()> {
        let email = normalize_email(email).ok_or_else(|| {
            AuthError::validation("Unable to validate email address: invalid format")
        })?;
        if email == user.email {
            return Ok(());
        }
        if user::by_email(tx, &email).await?.is_some() {
            return Err(AuthError::unprocessable(
                "email_exists",
                "A user with this email address has already been registered",
            ));
        }
        if self.config.email_autoconfirm {
            tx.c_execute(
                "update auth.users set email = $2, email_confirmed_at = now(), is_anonymous = false,
                        email_change = '', updated_at = now() where id = $1",
                &[&user.id, &email],
            )
            .await?;
            self.ensure_identity(tx, user.id, "email", &email).await?;
            return Ok(());
        }
        self.check_frequency(user.email_change_sent_at)?;
        self.send_email_change(tx, user, &email, redirect).await?;
        self.audit(
            tx,
            ctx,
            "user_modified",
            Some(user),
            "",
            json!({"email_change_requested": true}),
        )
        .await
    }

    /// Starts (or starts again) the change of `user`'s address to
    /// `new_email`: fresh codes to the new address and, with double
    /// confirmation, to the current one, and the confirmation state back
    /// to zero, so that both addresses must confirm these codes (GoTrue's
    /// `sendEmailChange`, which `/resend` calls too).
    async fn send_email_change(
        &self,
        tx: &impl GenericClient,
        user: &User,
        new_email: &str,
        redirect: &str,
    ) -> AuthResult<()> {
        tx.c_execute(
            "update auth.users set email_change = $2, email_change_confirm_status = 0,
                    email_change_token_new = '', email_change_token_current = '',
                    updated_at = now() where id = $1",
            &[&user.id, &new_email],
        )
        .await?;
        let mut pending = user.clone();
        pending.email_change = new_email.to_owned();
        self.send_one_time(
            tx,
            &pending,
            new_email,
            TokenColumn::EmailChangeNew,
            Kind::EmailChange,
            "email_change",
            redirect,
            false,
        )
        .await?;
        if self.config.double_confirm_changes && !user.email.is_empty() {
            self.send_one_time(
                tx,
                &pending,
                &user.email,
                TokenColumn::EmailChangeCurrent,
                Kind::EmailChange,
                "email_change",
                redirect,
                false,
            )
            .await?;
        }
        Ok(())
    }

    async fn change_phone(
        &self,
        _ctx: &Ctx<'_>,
        tx: &impl GenericClient,
        user: &User,
        phone: &str,
    ) -> AuthResult<()> {
        let phone = normalize_phone(phone)
            .ok_or_else(|| AuthError::validation("Invalid phone number format (E.164 required)"))?;
        if phone == user.phone {
            return Ok(());
        }
        if user::by_phone(tx, &phone).await?.is_some() {
            return Err(AuthError::unprocessable(
                "phone_exists",
                "A user with this phone number has already been registered",
            ));
        }
        if self.config.phone_autoconfirm {
            tx.c_execute(
                "update auth.users set phone = $2, phone_confirmed_at = now(), is_anonymous = false,
                        phone_change = '', updated_at = now() where id = $1",
                &[&user.id, &phone],
            )
            .await?;
            self.ensure_identity(tx, user.id, "phone", &phone).await?;
            return Ok(());
        }
        self.check_frequency(user.phone_change_sent_at)?;
        tx.c_execute(
            "update auth.users set phone_change = $2, updated_at = now() where id = $1",
            &[&user.id, &phone],
        )
        .await?;
        self.send_one_time(
            tx,
            user,
            &phone,
            TokenColumn::PhoneChange,
            Kind::Sms,
            "phone_change",
            "",
            false,
        )
        .await?;
        Ok(())
    }

    /// Makes sure `user_id` has an identity for `provider` with `value`.
    async fn ensure_identity(
        &self,
        tx: &impl GenericClient,
        user_id: Uuid,
        provider: &str,
        value: &str,
    ) -> AuthResult<()> {
        let data = json!({"sub": user_id, provider: value, format!("{provider}_verified"): true});
        tx.c_execute(
            "insert into auth.identities (provider_id, user_id, identity_data, provider, last_sign_in_at, created_at, updated_at)
             values ($1::uuid::text, $1, $2, $3, now(), now(), now())
             on conflict (provider_id, provider) do update set identity_data = excluded.identity_data, updated_at = now()",
            &[&user_id, &data, &provider],
        )
        .await?;
        tx.c_execute(
            "update auth.users set raw_app_meta_data = jsonb_build_object(
                 'provider', coalesce(raw_app_meta_data ->> 'provider', $2),
                 'providers', (select jsonb_agg(distinct p order by p) from auth.identities i, lateral (select i.provider as p) x where i.user_id = $1)
               ) || (coalesce(raw_app_meta_data, '{}'::jsonb) - 'provider' - 'providers')
             where id = $1",
            &[&user_id, &provider],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn logout(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let scope = ctx.query("scope").unwrap_or_else(|| "global".to_owned());
        if !matches!(scope.as_str(), "global" | "local" | "others") {
            return Err(AuthError::validation(format!(
                "Unsupported logout scope {scope:?}"
            )));
        }
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = self.current(ctx, &tx).await?;
        let user_id = current.user.id;
        match (scope.as_str(), current.session_id) {
            ("local", Some(sid)) => {
                tx.c_execute("delete from auth.sessions where id = $1", &[&sid])
                    .await?;
            }
            ("others", Some(sid)) => {
                tx.c_execute(
                    "delete from auth.sessions where user_id = $1 and id <> $2",
                    &[&user_id, &sid],
                )
                .await?;
            }
            ("others", None) => {}
            _ => {
                tx.c_execute("delete from auth.sessions where user_id = $1", &[&user_id])
                    .await?;
            }
        }
        self.audit(
            &tx,
            ctx,
            "logout",
            Some(&current.user),
            "",
            json!({"scope": scope}),
        )
        .await?;
        tx.commit().await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    pub(crate) async fn recover(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let body: OtpBody = ctx.json()?;
        let email = body
            .email
            .as_deref()
            .and_then(normalize_email)
            .ok_or_else(|| AuthError::validation("Password recovery requires an email"))?;
        self.limit(Bucket::Otp, &ctx.ip_key()).await?;
        let redirect = self.redirect_target(ctx.query("redirect_to").as_deref());
        let flow = pkce(body.code_challenge, body.code_challenge_method)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if let Some(user) = user::by_email(&tx, &email).await? {
            // Too soon after the last mail: say nothing (no enumeration).
            if self.check_frequency(user.recovery_sent_at).is_ok() {
                let pkce = self
                    .begin_flow(&tx, user.id, flow.as_ref(), "recovery")
                    .await?;
                self.send_one_time(
                    &tx,
                    &user,
                    &email,
                    TokenColumn::Recovery,
                    Kind::Recovery,
                    "recovery",
                    &redirect,
                    pkce,
                )
                .await?;
                self.audit(
                    &tx,
                    ctx,
                    "user_recovery_requested",
                    Some(&user),
                    "",
                    json!({}),
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(ok_json(json!({})))
    }

    pub(crate) async fn otp(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let body: OtpBody = ctx.json()?;
        self.limit(Bucket::Otp, &ctx.ip_key()).await?;
        let redirect = self.redirect_target(ctx.query("redirect_to").as_deref());
        let flow = pkce(body.code_challenge, body.code_challenge_method)?;
        let create = body.create_user.unwrap_or(true);
        let data = metadata(body.data)?;
        let (subject, is_email) = match (
            body.email.filter(|e| !e.is_empty()),
            body.phone.filter(|p| !p.is_empty()),
        ) {
            (Some(e), None) => (
                normalize_email(&e).ok_or_else(|| {
                    AuthError::validation("Unable to validate email address: invalid format")
                })?,
                true,
            ),
            (None, Some(p)) => (
                normalize_phone(&p).ok_or_else(|| {
                    AuthError::validation("Invalid phone number format (E.164 required)")
                })?,
                false,
            ),
            _ => {
                return Err(AuthError::validation(
                    "Only an email address or phone number should be provided.",
                ));
            }
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let existing = if is_email {
            user::by_email(&tx, &subject).await?
        } else {
            user::by_phone(&tx, &subject).await?
        };
        let user = match existing {
            Some(user) => user,
            None => {
                if !create || self.config.disable_signup || self.config.invite_only {
                    return Err(AuthError::unprocessable(
                        "otp_disabled",
                        "Signups not allowed for otp",
                    ));
                }
                let id = Uuid::new_v4();
                self.insert_user(
                    &tx,
                    NewUser {
                        id,
                        email: is_email.then_some(subject.as_str()),
                        phone: (!is_email).then_some(subject.as_str()),
                        password_hash: None,
                        user_metadata: data,
                        app_metadata: None,
                        email_confirmed: false,
                        phone_confirmed: false,
                        anonymous: false,
                        invited: false,
                        role: "authenticated",
                    },
                )
                .await?;
                let user = user::by_id(&tx, id)
                    .await?
                    .ok_or_else(AuthError::internal)?;
                self.audit(
                    &tx,
                    ctx,
                    "user_signedup",
                    Some(&user),
                    "",
                    json!({"provider": if is_email {"email"} else {"phone"}}),
                )
                .await?;
                user
            }
        };
        let confirmed = if is_email {
            user.email_confirmed_at.is_some()
        } else {
            user.phone_confirmed_at.is_some()
        };
        let (column, link_type, last) = if confirmed {
            (TokenColumn::Recovery, "magiclink", user.recovery_sent_at)
        } else {
            (
                TokenColumn::Confirmation,
                "signup",
                user.confirmation_sent_at,
            )
        };
        self.check_frequency(last)?;
        let pkce = self
            .begin_flow(
                &tx,
                user.id,
                flow.as_ref(),
                if confirmed {
                    "magiclink"
                } else {
                    "email/signup"
                },
            )
            .await?;
        let kind = if !is_email {
            Kind::Sms
        } else if confirmed {
            Kind::MagicLink
        } else {
            Kind::Confirmation
        };
        self.send_one_time(
            &tx, &user, &subject, column, kind, link_type, &redirect, pkce,
        )
        .await?;
        tx.commit().await?;
        if is_email {
            Ok(ok_json(json!({})))
        } else {
            Ok(ok_json(json!({"message_id": Uuid::new_v4()})))
        }
    }

    pub(crate) async fn resend(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let body: OtpBody = ctx.json()?;
        let kind = body.kind.clone().unwrap_or_default();
        if !matches!(
            kind.as_str(),
            "signup" | "email_change" | "sms" | "phone_change"
        ) {
            return Err(AuthError::validation(
                "Missing one of these types: signup, email_change, sms, phone_change",
            ));
        }
        self.limit(Bucket::Otp, &ctx.ip_key()).await?;
        let redirect = self.redirect_target(ctx.query("redirect_to").as_deref());
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let user = match (&body.email, &body.phone) {
            (Some(e), _) if kind == "signup" || kind == "email_change" => {
                match normalize_email(e) {
                    Some(e) if kind == "signup" => user::by_email(&tx, &e).await?,
                    Some(e) => {
                        let row = tx
                        .c_query_opt(
                            "select id from auth.users where email_change = $1 or lower(email) = $1 limit 1",
                            &[&e],
                        )
                        .await?;
                        match row {
                            Some(row) => user::by_id(&tx, row.get(0)).await?,
                            None => None,
                        }
                    }
                    None => {
                        return Err(AuthError::validation(
                            "Unable to validate email address: invalid format",
                        ));
                    }
                }
            }
            (_, Some(p)) if kind == "sms" || kind == "phone_change" => match normalize_phone(p) {
                Some(p) if kind == "sms" => user::by_phone(&tx, &p).await?,
                Some(p) => {
                    let row = tx
                        .c_query_opt(
                            "select id from auth.users where phone_change = $1 limit 1",
                            &[&p],
                        )
                        .await?;
                    match row {
                        Some(row) => user::by_id(&tx, row.get(0)).await?,
                        None => None,
                    }
                }
                None => {
                    return Err(AuthError::validation(
                        "Invalid phone number format (E.164 required)",
                    ));
                }
            },
            _ => {
                return Err(AuthError::validation(
                    "Resend requires an email or a phone matching the type",
                ));
            }
        };
        let mut message_id = None;
        if let Some(user) = user {
            match kind.as_str() {
                "signup" if user.email_confirmed_at.is_none() => {
                    self.check_frequency(user.confirmation_sent_at)?;
                    self.send_one_time(
                        &tx,
                        &user,
                        &user.email.clone(),
                        TokenColumn::Confirmation,
                        Kind::Confirmation,
                        "signup",
                        &redirect,
                        false,
                    )
                    .await?;
                }
                "email_change" if !user.email_change.is_empty() => {
                    self.check_frequency(user.email_change_sent_at)?;
                    // Both addresses get new codes and must confirm again:
                    // a resend never counts a confirmation already made.
                    self.send_email_change(&tx, &user, &user.email_change.clone(), &redirect)
                        .await?;
                }
                "sms" if user.phone_confirmed_at.is_none() => {
                    self.check_frequency(user.confirmation_sent_at)?;
                    self.send_one_time(
                        &tx,
                        &user,
                        &user.phone.clone(),
                        TokenColumn::Confirmation,
                        Kind::Sms,
                        "sms",
                        "",
                        false,
                    )
                    .await?;
                    message_id = Some(Uuid::new_v4());
                }
                "phone_change" if !user.phone_change.is_empty() => {
                    self.check_frequency(user.phone_change_sent_at)?;
                    self.send_one_time(
                        &tx,
                        &user,
                        &user.phone_change.clone(),
                        TokenColumn::PhoneChange,
                        Kind::Sms,
                        "phone_change",
                        "",
                        false,
                    )
                    .await?;
                    message_id = Some(Uuid::new_v4());
                }
                _ => {}
            }
        }
        tx.commit().await?;
        Ok(ok_json(match message_id {
            Some(id) => json!({"message_id": id}),
            None => json!({}),
        }))
    }

    pub(crate) async fn reauthenticate(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = self.current(ctx, &tx).await?;
        let user = &current.user;
        let (to, kind) = if !user.email.is_empty() {
            (user.email.clone(), Kind::Reauthentication)
        } else if !user.phone.is_empty() {
            (user.phone.clone(), Kind::Sms)
        } else {
            return Err(AuthError::unprocessable(
                "validation_failed",
                "Reauthentication requires the user to have an email or a phone number",
            ));
        };
        self.check_frequency(user.reauthentication_sent_at)?;
        self.send_one_time(
            &tx,
            user,
            &to,
            TokenColumn::Reauthentication,
            kind,
            "reauthentication",
            "",
            false,
        )
        .await?;
        self.audit(
            &tx,
            ctx,
            "user_reauthenticate_requested",
            Some(user),
            "",
            json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(json!({})))
    }

    pub(crate) async fn verify_post(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let body: VerifyBody = ctx.json()?;
        let kind = body
            .kind
            .filter(|k| !k.is_empty())
            .ok_or_else(|| AuthError::validation("Verify requires a verification type"))?;
        let mut typed_for = None;
        let hash = match (
            body.token.filter(|t| !t.is_empty()),
            body.token_hash.filter(|t| !t.is_empty()),
        ) {
            (Some(token), None) => {
                // As GoTrue's verify params: a malformed phone or email
                // is named as such; a missing one is the generic refusal.
                let phone = body.phone.as_deref().filter(|p| !p.is_empty());
                let email = body.email.as_deref().filter(|e| !e.is_empty());
                let subject = match (
                    matches!(kind.as_str(), "sms" | "phone_change"),
                    phone,
                    email,
                ) {
                    (true, Some(phone), _) => normalize_phone(phone).ok_or_else(|| {
                        AuthError::validation("Invalid phone number format (E.164 required)")
                    })?,
                    (false, _, Some(email)) => normalize_email(email).ok_or_else(|| {
                        AuthError::validation("Unable to validate email address: invalid format")
                    })?,
                    _ => {
                        return Err(AuthError::validation(
                            "Only an email address or phone number should be provided on verify",
                        ));
                    }
                };
                let hash = crypto::token_hash(&subject, token.trim());
                typed_for = Some(subject);
                hash
            }
            (None, Some(hash)) => hash,
            _ => {
                return Err(AuthError::validation(
                    "Verify requires either a token or a token hash",
                ));
            }
        };
        match self
            .verify_token(ctx, &kind, &hash, typed_for.as_deref())
            .await?
        {
            Verified::Session(session) | Verified::Message(session) => Ok(ok_json(session)),
        }
    }

    /// `GET /verify`: the link in a mail. Verifies, then redirects with the
    /// session in the fragment (or `?code=` for PKCE, or the error).
    pub(crate) async fn verify_get(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let redirect = self.redirect_target(ctx.query("redirect_to").as_deref());
        let kind = ctx.query("type").unwrap_or_default();
        let token = ctx.query("token").unwrap_or_default();
        let location = if let Some(hash) = token.strip_prefix("pkce_") {
            match self.verify_pkce_link(ctx, &kind, hash).await {
                Ok(code) => format!(
                    "{redirect}{}code={code}",
                    if redirect.contains('?') { '&' } else { '?' }
                ),
                Err(err) => error_redirect(&redirect, &err, true),
            }
        } else {
            match self.verify_token(ctx, &kind, &token, None).await {
                Ok(Verified::Session(session)) => {
                    let get = |k: &str| {
                        session
                            .get(k)
                            .map(|v| match v {
                                Value::String(s) => crypto::percent_encode(s),
                                other => other.to_string(),
                            })
                            .unwrap_or_default()
                    };
                    format!(
                        "{redirect}#access_token={}&expires_at={}&expires_in={}&refresh_token={}&token_type=bearer&type={}",
                        get("access_token"),
                        get("expires_at"),
                        get("expires_in"),
                        get("refresh_token"),
                        crypto::percent_encode(&kind)
                    )
                }
                Ok(Verified::Message(_)) => format!(
                    "{redirect}#message={}",
                    crypto::percent_encode(
                        "Confirmation link accepted. Please proceed to confirm link sent to the other email"
                    )
                ),
                Err(err) => error_redirect(&redirect, &err, false),
            }
        };
        let mut response = StatusCode::SEE_OTHER.into_response();
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Ok(response)
    }

    async fn verify_pkce_link(&self, ctx: &Ctx<'_>, kind: &str, hash: &str) -> AuthResult<String> {
        self.limit(Bucket::Verify, &ctx.ip_key()).await?;
        let columns = link_types(kind).ok_or_else(AuthError::otp_expired)?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let stored = crypto::stored_token(&format!("pkce_{hash}"));
        let (user, column) = self.find_token(&tx, columns, &stored).await?;
        // The code this yields is a session to be: the same gate.
        admit(Some(&user), Via::Link)?;
        self.apply_verification(ctx, &tx, &user, column, kind)
            .await?;
        let row = tx
            .c_query_opt(
                "select auth_code from auth.flow_state where user_id = $1 order by created_at desc limit 1",
                &[&user.id],
            )
            .await?;
        let code: String = row.map(|r| r.get(0)).ok_or_else(|| {
            AuthError::not_found(
                "flow_state_not_found",
                "invalid flow state, no valid flow state found",
            )
        })?;
        tx.commit().await?;
        Ok(code)
    }

    /// A wrong six-digit code typed for `subject`: one failure against
    /// each of its pending codes of this kind; a code that reaches
    /// `auth.code_attempts` failures is invalidated (the owner asks for a
    /// fresh one, which starts from zero).
    async fn count_wrong_code(
        &self,
        tx: &impl GenericClient,
        kind: &str,
        columns: &[TokenColumn],
        subject: &str,
    ) -> AuthResult<()> {
        let row = match kind {
            "sms" => {
                tx.c_query_opt(
                    "select id from auth.users where phone = $1 and deleted_at is null",
                    &[&subject],
                )
                .await?
            }
            "phone_change" => {
                tx.c_query_opt(
                    "select id from auth.users where phone_change = $1 and deleted_at is null",
                    &[&subject],
                )
                .await?
            }
            "email_change" => {
                tx.c_query_opt(
                    "select id from auth.users
                      where (email_change = $1 or lower(email) = $1) and deleted_at is null
                      limit 1",
                    &[&subject],
                )
                .await?
            }
            _ => {
                tx.c_query_opt(
                    "select id from auth.users where lower(email) = $1 and deleted_at is null",
                    &[&subject],
                )
                .await?
            }
        };
        let Some(row) = row else {
            return Ok(());
        };
        let user_id: Uuid = row.get(0);
        for column in columns {
            let sql = format!(
                "select {} from auth.users where id = $1 and coalesce({}, '') <> '' for update",
                column.sent_at(),
                column.column()
            );
            let Some(pending) = tx.c_query_opt(&sql, &[&user_id]).await? else {
                continue;
            };
            let Some(sent_at) = pending.get::<_, Option<std::time::SystemTime>>(0) else {
                continue;
            };
            let failures = attempts::record_failure(
                tx,
                user_id,
                attempts::Kind::Code(column.column()),
                sent_at,
            )
            .await?;
            if failures >= i64::from(self.config.code_attempts) {
                let clear = format!(
                    "update auth.users set {} = '' where id = $1",
                    column.column()
                );
                tx.c_execute(&clear, &[&user_id]).await?;
                tracing::info!(%user_id, column = column.column(), "one-time code invalidated after failed guesses");
            }
        }
        Ok(())
    }

    /// Finds the user whose `columns` hold `stored` and whose token has not
    /// expired.
    async fn find_token(
        &self,
        tx: &impl GenericClient,
        columns: &[TokenColumn],
        stored: &str,
    ) -> AuthResult<(User, TokenColumn)> {
        for &column in columns {
            let sql = format!(
                "select id from auth.users where {} = $1 and {} > now() - make_interval(secs => $2) for update",
                column.column(),
                column.sent_at()
            );
            let row = tx
                .c_query_opt(&sql, &[&stored, &(self.config.otp_expiry as f64)])
                .await?;
            if let Some(row) = row {
                let user = user::by_id(tx, row.get(0))
                    .await?
                    .ok_or_else(AuthError::otp_expired)?;
                return Ok((user, column));
            }
        }
        Err(AuthError::otp_expired())
    }

    /// Verifies a link or code. `typed_for`: the address a six-digit code
    /// was typed for, whose pending codes a wrong guess counts against.
    async fn verify_token(
        &self,
        ctx: &Ctx<'_>,
        kind: &str,
        hash: &str,
        typed_for: Option<&str>,
    ) -> AuthResult<Verified> {
        self.limit(Bucket::Verify, &ctx.ip_key()).await?;
        let columns = link_types(kind).ok_or_else(|| {
            AuthError::validation(format!("Unsupported verification type {kind:?}"))
        })?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let found = self
            .find_token(&tx, columns, &crypto::stored_token(hash))
            .await;
        let (user, column) = match (found, typed_for) {
            (Ok(found), _) => found,
            (Err(err), Some(subject)) if err.code == "otp_expired" => {
                self.count_wrong_code(&tx, kind, columns, subject).await?;
                tx.commit().await?;
                return Err(err);
            }
            (Err(err), _) => return Err(err),
        };
        admit(Some(&user), Via::Link)?;
        if let Some(message) = self
            .apply_verification(ctx, &tx, &user, column, kind)
            .await?
        {
            tx.commit().await?;
            return Ok(Verified::Message(message));
        }
        let method = match (kind, column) {
            ("recovery", _) => "recovery",
            ("invite", _) => "invite",
            ("magiclink", _) => "magiclink",
            ("email_change", _) => "email_change",
            ("signup", _) => "otp",
            _ => "otp",
        };
        let session = self
            .start_session(&tx, ctx, user.id, method, Via::Link)
            .await?;
        self.audit(
            &tx,
            ctx,
            "login",
            Some(&user),
            "",
            json!({"provider": "email", "method": method}),
        )
        .await?;
        tx.commit().await?;
        Ok(Verified::Session(session))
    }

    /// Consumes the token and applies what it confirms. `Some(message)`
    /// when an email change still waits for its other confirmation.
    async fn apply_verification(
        &self,
        ctx: &Ctx<'_>,
        tx: &impl GenericClient,
        user: &User,
        column: TokenColumn,
        kind: &str,
    ) -> AuthResult<Option<Value>> {
        let clear = format!(
            "update auth.users set {} = '', updated_at = now() where id = $1",
            column.column()
        );
        tx.c_execute(&clear, &[&user.id]).await?;
        match column {
            TokenColumn::Confirmation | TokenColumn::Recovery => {
                let phone =
                    matches!(kind, "sms") || (user.email.is_empty() && !user.phone.is_empty());
                if phone {
                    tx.c_execute(
                        "update auth.users set phone_confirmed_at = coalesce(phone_confirmed_at, now()),
                                is_anonymous = false,
                                raw_user_meta_data = coalesce(raw_user_meta_data, '{}'::jsonb) || '{\"phone_verified\": true}'
                          where id = $1",
                        &[&user.id],
                    )
                    .await?;
                    tx.c_execute(
                        "update auth.identities set identity_data = identity_data || '{\"phone_verified\": true}'
                          where user_id = $1 and provider = 'phone'",
                        &[&user.id],
                    )
                    .await?;
                } else {
                    tx.c_execute(
                        "update auth.users set email_confirmed_at = coalesce(email_confirmed_at, now()),
                                is_anonymous = false,
                                raw_user_meta_data = coalesce(raw_user_meta_data, '{}'::jsonb) || '{\"email_verified\": true}'
                          where id = $1",
                        &[&user.id],
                    )
                    .await?;
                    tx.c_execute(
                        "update auth.identities set identity_data = identity_data || '{\"email_verified\": true}'
                          where user_id = $1 and provider = 'email'",
                        &[&user.id],
                    )
                    .await?;
                }
                if user.email_confirmed_at.is_none() && user.phone_confirmed_at.is_none() {
                    self.audit(
                        tx,
                        ctx,
                        "user_signedup",
                        Some(user),
                        "",
                        json!({"confirmed": true}),
                    )
                    .await?;
                }
            }
            TokenColumn::EmailChangeNew | TokenColumn::EmailChangeCurrent => {
                // The change completes when no code of it is left
                // unconfirmed: with double confirmation, the other
                // address's code must have been used too, after the codes
                // were last (re)sent.
                let other = if column == TokenColumn::EmailChangeNew {
                    TokenColumn::EmailChangeCurrent
                } else {
                    TokenColumn::EmailChangeNew
                };
                let pending = tx
                    .c_query_one(
                        &format!(
                            "select coalesce({}, '') <> '' from auth.users where id = $1",
                            other.column()
                        ),
                        &[&user.id],
                    )
                    .await?
                    .get::<_, bool>(0);
                let double = self.config.double_confirm_changes && !user.email.is_empty();
                if double && (pending || user.email_change_confirm_status < 1) {
                    tx.c_execute(
                        "update auth.users set email_change_confirm_status = 1 where id = $1",
                        &[&user.id],
                    )
                    .await?;
                    return Ok(Some(json!({
                        "msg": "Confirmation link accepted. Please proceed to confirm link sent to the other email",
                        "code": 200
                    })));
                }
                if user.email_change.is_empty() {
                    return Err(AuthError::otp_expired());
                }
                let new_email = user.email_change.clone();
                if user::by_email(tx, &new_email)
                    .await?
                    .is_some_and(|other| other.id != user.id)
                {
                    return Err(AuthError::unprocessable(
                        "email_exists",
                        "A user with this email address has already been registered",
                    ));
                }
                tx.c_execute(
                    "update auth.users set email = $2::text, email_change = '', email_change_token_new = '',
                            email_change_token_current = '', email_change_confirm_status = 0,
                            email_confirmed_at = now(), is_anonymous = false,
                            raw_user_meta_data = coalesce(raw_user_meta_data, '{}'::jsonb) || jsonb_build_object('email', $2::text, 'email_verified', true)
                      where id = $1",
                    &[&user.id, &new_email],
                )
                .await?;
                self.ensure_identity(tx, user.id, "email", &new_email)
                    .await?;
            }
            TokenColumn::PhoneChange => {
                if user.phone_change.is_empty() {
                    return Err(AuthError::otp_expired());
                }
                tx.c_execute(
                    "update auth.users set phone = phone_change, phone_change = '', phone_confirmed_at = now(),
                            is_anonymous = false where id = $1",
                    &[&user.id],
                )
                .await?;
                self.ensure_identity(tx, user.id, "phone", &user.phone_change)
                    .await?;
            }
            TokenColumn::Reauthentication => {}
        }
        Ok(None)
    }

    pub(crate) async fn list_sessions(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let client = self.pool.get().await?;
        let current = self.current(ctx, &client).await?;
        let rows = client
            .c_query(
"select id, to_char(created_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                        to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                        coalesce(aal, 'aal1'), user_agent, host(ip)
                   from auth.sessions where user_id = $1 order by created_at desc",
                &[&current.user.id],
            )
            .await?;
        let sessions: Vec<Value> = rows
            .iter()
            .map(|r| {
                let id: Uuid = r.get(0);
                json!({
                    "id": id,
                    "created_at": r.get::<_, Option<String>>(1),
                    "updated_at": r.get::<_, Option<String>>(2),
                    "aal": r.get::<_, String>(3),
                    "user_agent": r.get::<_, Option<String>>(4),
                    "ip": r.get::<_, Option<String>>(5),
                    "current": Some(id) == current.session_id,
                })
            })
            .collect();
        Ok(ok_json(Value::Array(sessions)))
    }

    pub(crate) async fn delete_session(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = self.current(ctx, &tx).await?;
        let id = Uuid::parse_str(id)
            .map_err(|_| AuthError::not_found("session_not_found", "Session not found"))?;
        let deleted = tx
            .c_execute(
                "delete from auth.sessions where id = $1 and user_id = $2",
                &[&id, &current.user.id],
            )
            .await?;
        if deleted == 0 {
            return Err(AuthError::not_found(
                "session_not_found",
                "Session not found",
            ));
        }
        self.audit(
            &tx,
            ctx,
            "logout",
            Some(&current.user),
            "",
            json!({"session_id": id}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(json!({})))
    }
}

pub(crate) fn error_redirect(redirect: &str, err: &AuthError, pkce: bool) -> String {
    let code = if err.code == "otp_expired" {
        "otp_expired"
    } else {
        err.code
    };
    let description = if err.code == "otp_expired" {
        "Email link is invalid or has expired".to_owned()
    } else {
        err.message.clone()
    };
    let params = format!(
        "error=access_denied&error_code={code}&error_description={}",
        crypto::percent_encode(&description).replace("%20", "+")
    );
    if pkce {
        let sep = if redirect.contains('?') { '&' } else { '?' };
        format!("{redirect}{sep}{params}#{params}&sb=")
    } else {
        format!("{redirect}#{params}&sb=")
    }
}

/// What a repeated sign-up of a confirmed address answers when
/// confirmation is on: a user-shaped object that exists nowhere.
fn fake_user(aud: &str, subject: &str, email: bool) -> Value {
    let now = time::rfc3339(std::time::SystemTime::now());
    json!({
        "id": Uuid::new_v4(),
        "aud": aud,
        "role": "authenticated",
        "email": if email { subject } else { "" },
        "phone": if email { "" } else { subject },
        "confirmation_sent_at": now,
        "app_metadata": {"provider": if email {"email"} else {"phone"}, "providers": [if email {"email"} else {"phone"}]},
        "user_metadata": {},
        "identities": [],
        "created_at": now,
        "updated_at": now,
        "is_anonymous": false,
    })
}
