//! Admin endpoints (admin role only): users, factors, links, invitations,
//! the mailbox, invite codes and API keys.

use crate::db::Cached as _;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::account::{NewUser, metadata};
use crate::error::{AuthError, AuthResult};
use crate::mail::Kind;
use crate::session::TokenColumn;
use crate::user::{self, normalize_email, normalize_phone};
use crate::{AuthService, Ctx, crypto, ok_json, time};

#[derive(Deserialize, Default)]
#[serde(default)]
struct AdminUserBody {
    id: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    password: Option<String>,
    password_hash: Option<String>,
    email_confirm: Option<bool>,
    phone_confirm: Option<bool>,
    user_metadata: Option<Value>,
    app_metadata: Option<Value>,
    role: Option<String>,
    ban_duration: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct LinkBody {
    #[serde(rename = "type")]
    kind: Option<String>,
    email: Option<String>,
    password: Option<String>,
    new_email: Option<String>,
    data: Option<Value>,
    redirect_to: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DeleteBody {
    should_soft_delete: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct InviteCodeBody {
    /// Seconds until the code expires (absent: never).
    expires_in: Option<i64>,
    note: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ApiKeyBody {
    name: Option<String>,
    role: Option<String>,
}

fn user_id(id: &str) -> AuthResult<Uuid> {
    Uuid::parse_str(id).map_err(|_| AuthError::not_found("user_not_found", "User not found"))
}

fn user_not_found() -> AuthError {
    AuthError::not_found("user_not_found", "User not found")
}

fn is_password_hash(hash: &str) -> bool {
    hash.starts_with("$2a$")
        || hash.starts_with("$2b$")
        || hash.starts_with("$2y$")
        || hash.starts_with("$argon2")
}

/// A `page` or `per_page` value as GoTrue reads it (an unsigned integer,
/// `default` when absent); anything else is its "Bad Pagination
/// Parameters" refusal, with Go's `strconv.ParseUint` wording.
fn pagination(value: Option<&str>, default: i64) -> AuthResult<i64> {
    match value {
        None | Some("") => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(n) => Ok(i64::try_from(n).unwrap_or(i64::MAX)),
            Err(err) => {
                let reason = if matches!(err.kind(), std::num::IntErrorKind::PosOverflow) {
                    "value out of range"
                } else {
                    "invalid syntax"
                };
                Err(AuthError::validation(format!(
                    "Bad Pagination Parameters: strconv.ParseUint: parsing {text:?}: {reason}"
                )))
            }
        },
    }
}

impl AuthService {
    pub(crate) async fn admin_list_users(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let page = pagination(ctx.query("page").as_deref(), 1)?.max(1);
        let per_page = pagination(ctx.query("per_page").as_deref(), 50)?.clamp(1, 1000);
        let client = self.pool.get().await?;
        let total: i64 = client
            .c_query_one(
                "select count(*) from auth.users where deleted_at is null",
                &[],
            )
            .await?
            .get(0);
        let sql = format!(
            "select {} from auth.users u where u.deleted_at is null
              order by u.created_at desc, u.id limit $1 offset $2",
            user::user_columns()
        );
        let rows = client
            .c_query(&sql, &[&per_page, &(page - 1).saturating_mul(per_page)])
            .await?;
        let users = rows
            .iter()
            .map(|r| user::User::from_row(r).map(|u| u.to_json()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut response = ok_json(json!({"users": users, "aud": self.config.jwt_aud}));
        let last = ((total + per_page - 1) / per_page).max(1);
        let mut links = Vec::new();
        if page < last {
            links.push(format!(
                "</admin/users?page={}&per_page={per_page}>; rel=\"next\"",
                page + 1
            ));
        }
        links.push(format!(
            "</admin/users?page={last}&per_page={per_page}>; rel=\"last\""
        ));
        let headers = response.headers_mut();
        if let Ok(value) = HeaderValue::from_str(&total.to_string()) {
            headers.insert("x-total-count", value);
        }
        if let Ok(value) = HeaderValue::from_str(&links.join(", ")) {
            headers.insert("link", value);
        }
        Ok(response)
    }

    pub(crate) async fn admin_create_user(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let body: AdminUserBody = ctx.json()?;
        let email = match body.email.filter(|e| !e.is_empty()) {
            Some(e) => Some(normalize_email(&e).ok_or_else(|| {
                AuthError::validation("Unable to validate email address: invalid format")
            })?),
            None => None,
        };
        let phone = match body.phone.filter(|p| !p.is_empty()) {
            Some(p) => Some(normalize_phone(&p).ok_or_else(|| {
                AuthError::validation("Invalid phone number format (E.164 required)")
            })?),
            None => None,
        };
        if email.is_none() && phone.is_none() {
            return Err(AuthError::validation(
                "Unable to create user: an email or a phone is required",
            ));
        }
        let password_hash = self
            .admin_password(body.password.as_deref(), body.password_hash.as_deref())
            .await?;
        let id = match body.id {
            Some(id) => {
                Uuid::parse_str(&id).map_err(|_| AuthError::validation("id must be a UUID"))?
            }
            None => Uuid::new_v4(),
        };
        let mut app_metadata = match &body.app_metadata {
            Some(Value::Object(map)) => map.clone(),
            Some(Value::Null) | None => Map::new(),
            Some(_) => return Err(AuthError::validation("app_metadata must be a JSON object")),
        };
        let provider = if email.is_some() { "email" } else { "phone" };
        app_metadata.insert("provider".to_owned(), json!(provider));
        app_metadata.insert("providers".to_owned(), json!([provider]));
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if let Some(e) = &email
            && user::by_email(&tx, e).await?.is_some()
        {
            return Err(AuthError::unprocessable(
                "email_exists",
                "A user with this email address has already been registered",
            ));
        }
        if let Some(p) = &phone
            && user::by_phone(&tx, p).await?.is_some()
        {
            return Err(AuthError::unprocessable(
                "phone_exists",
                "A user with this phone number has already been registered",
            ));
        }
        self.insert_user(
            &tx,
            NewUser {
                id,
                email: email.as_deref(),
                phone: phone.as_deref(),
                password_hash,
                user_metadata: metadata(body.user_metadata)?,
                app_metadata: Some(app_metadata),
                email_confirmed: body.email_confirm.unwrap_or(false) && email.is_some(),
                phone_confirmed: body.phone_confirm.unwrap_or(false) && phone.is_some(),
                anonymous: false,
                invited: false,
                role: body.role.as_deref().unwrap_or("authenticated"),
            },
        )
        .await?;
        if let Some(ban) = body.ban_duration.as_deref() {
            self.apply_ban(&tx, id, ban).await?;
        }
        let created = user::by_id(&tx, id)
            .await?
            .ok_or_else(AuthError::internal)?;
        self.audit(
            &tx,
            ctx,
            "user_signedup",
            Some(&created),
            "",
            json!({"by": "admin"}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(created.to_json()))
    }

    /// A password or an imported hash, checked.
    async fn admin_password(
        &self,
        password: Option<&str>,
        hash: Option<&str>,
    ) -> AuthResult<Option<String>> {
        match (
            password.filter(|p| !p.is_empty()),
            hash.filter(|h| !h.is_empty()),
        ) {
            (Some(_), Some(_)) => Err(AuthError::validation(
                "Only a password or a password hash should be provided",
            )),
            (Some(p), None) => {
                crate::password::check_length(p)?;
                if let Err((message, reasons)) = self.config.password.check(p) {
                    return Err(AuthError::weak_password(message, reasons));
                }
                Ok(Some(self.hasher.hash(p).await?))
            }
            (None, Some(h)) if h.starts_with("$2") => {
                crate::password::bcrypt_cost(h)
                    .map_err(|err| AuthError::validation(err.to_string()))?;
                Ok(Some(h.to_owned()))
            }
            (None, Some(h)) => {
                if is_password_hash(h) {
                    Ok(Some(h.to_owned()))
                } else {
                    Err(AuthError::validation(
                        "password_hash must be a bcrypt or argon2 hash",
                    ))
                }
            }
            (None, None) => Ok(None),
        }
    }

    async fn apply_ban(
        &self,
        tx: &impl sovra_pg::GenericClient,
        id: Uuid,
        ban: &str,
    ) -> AuthResult<()> {
        if ban == "none" {
            tx.c_execute(
                "update auth.users set banned_until = null where id = $1",
                &[&id],
            )
            .await?;
            return Ok(());
        }
        let duration = time::parse_go_duration(ban).ok_or_else(|| {
            AuthError::validation(
                "invalid format for ban duration: use a duration such as 24h, or none",
            )
        })?;
        tx.c_execute(
            "update auth.users set banned_until = now() + make_interval(secs => $2) where id = $1",
            &[&id, &duration.as_secs_f64()],
        )
        .await?;
        // A banned user's sessions end now.
        tx.c_execute("delete from auth.sessions where user_id = $1", &[&id])
            .await?;
        Ok(())
    }

    pub(crate) async fn admin_get_user(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let id = user_id(id)?;
        let client = self.pool.get().await?;
        let found = user::by_id(&client, id).await?.ok_or_else(user_not_found)?;
        Ok(ok_json(found.to_json()))
    }

    pub(crate) async fn admin_update_user(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let id = user_id(id)?;
        let body: AdminUserBody = ctx.json()?;
        let password_hash = self
            .admin_password(body.password.as_deref(), body.password_hash.as_deref())
            .await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let found = user::by_id(&tx, id).await?.ok_or_else(user_not_found)?;
        if let Some(email) = body.email.filter(|e| !e.is_empty()) {
            let email = normalize_email(&email).ok_or_else(|| {
                AuthError::validation("Unable to validate email address: invalid format")
            })?;
            if email != found.email {
                if user::by_email(&tx, &email).await?.is_some() {
                    return Err(AuthError::unprocessable(
                        "email_exists",
                        "A user with this email address has already been registered",
                    ));
                }
                tx.c_execute(
                    "update auth.users set email = $2, email_change = '' where id = $1",
                    &[&id, &email],
                )
                .await?;
            }
        }
        if let Some(phone) = body.phone.filter(|p| !p.is_empty()) {
            let phone = normalize_phone(&phone).ok_or_else(|| {
                AuthError::validation("Invalid phone number format (E.164 required)")
            })?;
            if phone != found.phone {
                if user::by_phone(&tx, &phone).await?.is_some() {
                    return Err(AuthError::unprocessable(
                        "phone_exists",
                        "A user with this phone number has already been registered",
                    ));
                }
                tx.c_execute(
                    "update auth.users set phone = $2 where id = $1",
                    &[&id, &phone],
                )
                .await?;
            }
        }
        if let Some(hash) = password_hash {
            tx.c_execute(
                "update auth.users set encrypted_password = $2 where id = $1",
                &[&id, &hash],
            )
            .await?;
        }
        match body.email_confirm {
            Some(true) => {
                tx.c_execute(
                    "update auth.users set email_confirmed_at = coalesce(email_confirmed_at, now()), confirmation_token = '' where id = $1",
                    &[&id],
                )
                .await?;
            }
            Some(false) => {
                tx.c_execute(
                    "update auth.users set email_confirmed_at = null where id = $1",
                    &[&id],
                )
                .await?;
            }
            None => {}
        }
        match body.phone_confirm {
            Some(true) => {
                tx.c_execute(
                    "update auth.users set phone_confirmed_at = coalesce(phone_confirmed_at, now()) where id = $1",
                    &[&id],
                )
                .await?;
            }
            Some(false) => {
                tx.c_execute(
                    "update auth.users set phone_confirmed_at = null where id = $1",
                    &[&id],
                )
                .await?;
            }
            None => {}
        }
        for (column, patch) in [
            ("raw_user_meta_data", body.user_metadata),
            ("raw_app_meta_data", body.app_metadata),
        ] {
            let Some(patch) = patch else { continue };
            let Value::Object(patch) = patch else {
                return Err(AuthError::validation(format!(
                    "{} must be a JSON object",
                    if column == "raw_user_meta_data" {
                        "user_metadata"
                    } else {
                        "app_metadata"
                    }
                )));
            };
            let current = if column == "raw_user_meta_data" {
                &found.user_metadata
            } else {
                &found.app_metadata
            };
            let mut merged = current.as_object().cloned().unwrap_or_default();
            for (key, value) in patch {
                if value.is_null() {
                    merged.remove(&key);
                } else {
                    merged.insert(key, value);
                }
            }
            let sql = format!("update auth.users set {column} = $2 where id = $1");
            tx.c_execute(&sql, &[&id, &Value::Object(merged)]).await?;
        }
        if let Some(role) = body.role.filter(|r| !r.is_empty()) {
            tx.c_execute(
                "update auth.users set role = $2 where id = $1",
                &[&id, &role],
            )
            .await?;
        }
        if let Some(ban) = body.ban_duration.as_deref() {
            self.apply_ban(&tx, id, ban).await?;
        }
        tx.c_execute(
            "update auth.users set updated_at = now() where id = $1",
            &[&id],
        )
        .await?;
        let updated = user::by_id(&tx, id)
            .await?
            .ok_or_else(AuthError::internal)?;
        self.audit(
            &tx,
            ctx,
            "user_modified",
            Some(&updated),
            "",
            json!({"by": "admin"}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(updated.to_json()))
    }

    pub(crate) async fn admin_delete_user(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let id = user_id(id)?;
        let body: DeleteBody = ctx.json()?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let found = user::by_id(&tx, id).await?.ok_or_else(user_not_found)?;
        if body.should_soft_delete.unwrap_or(false) {
            // Keep the row (foreign keys to it stay valid), forget the person.
            tx.c_execute("delete from auth.identities where user_id = $1", &[&id])
                .await?;
            tx.c_execute("delete from auth.sessions where user_id = $1", &[&id])
                .await?;
            tx.c_execute("delete from auth.mfa_factors where user_id = $1", &[&id])
                .await?;
            tx.c_execute(
                "update auth.users set email = null, phone = null, encrypted_password = '',
                        confirmation_token = '', recovery_token = '', email_change = '',
                        email_change_token_new = '', email_change_token_current = '',
                        phone_change = '', phone_change_token = '', reauthentication_token = '',
                        raw_user_meta_data = '{}', raw_app_meta_data = '{}',
                        deleted_at = now(), updated_at = now()
                  where id = $1",
                &[&id],
            )
            .await?;
        } else {
            tx.c_execute("delete from auth.users where id = $1", &[&id])
                .await?;
        }
        self.audit(
            &tx,
            ctx,
            "user_deleted",
            Some(&found),
            "",
            json!({"soft": body.should_soft_delete.unwrap_or(false)}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(json!({})))
    }

    pub(crate) async fn admin_list_factors(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let id = user_id(id)?;
        let client = self.pool.get().await?;
        Ok(ok_json(self.factors_of(&client, id).await?))
    }

    pub(crate) async fn admin_delete_factor(
        &self,
        ctx: &Ctx<'_>,
        id: &str,
        factor: &str,
    ) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let id = user_id(id)?;
        let client = self.pool.get().await?;
        let factors = self.factors_of(&client, id).await?;
        let found = factors
            .as_array()
            .and_then(|fs| {
                fs.iter()
                    .find(|f| f.get("id").and_then(Value::as_str) == Some(factor))
            })
            .cloned()
            .ok_or_else(|| AuthError::not_found("mfa_factor_not_found", "Factor not found"))?;
        let factor_id = Uuid::parse_str(factor).map_err(|_| AuthError::internal())?;
        drop(client);
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let deleted = tx
            .c_execute(
                "delete from auth.mfa_factors where id = $1 and user_id = $2",
                &[&factor_id, &id],
            )
            .await?;
        if deleted == 0 {
            return Err(AuthError::not_found(
                "mfa_factor_not_found",
                "Factor not found",
            ));
        }
        // Sessions that reached aal2 with this factor are aal1 again.
        self.downgrade_sessions_of(&tx, id, factor_id).await?;
        tx.commit().await?;
        Ok(ok_json(found))
    }

    pub(crate) async fn generate_link(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let body: LinkBody = ctx.json()?;
        let kind = body.kind.unwrap_or_default();
        let email = body
            .email
            .as_deref()
            .and_then(normalize_email)
            .ok_or_else(|| {
                AuthError::validation("Unable to validate email address: invalid format")
            })?;
        let redirect = self.redirect_target(
            body.redirect_to
                .as_deref()
                .or(ctx.query("redirect_to").as_deref()),
        );
        let data = metadata(body.data)?;
        // A sign-up link's password is checked and hashed before the
        // transaction, so no connection is held while hashing.
        let signup_hash = if kind == "signup" {
            let password = body
                .password
                .as_deref()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| AuthError::validation("Signup requires a valid password"))?;
            crate::password::check_length(password)?;
            if let Err((message, reasons)) = self.config.password.check(password) {
                return Err(AuthError::weak_password(message, reasons));
            }
            Some(self.hasher.hash(password).await?)
        } else {
            None
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let existing = user::by_email(&tx, &email).await?;
        let (user, column, verification_type, to) = match kind.as_str() {
            "signup" | "invite" => {
                if let Some(u) = &existing
                    && u.email_confirmed_at.is_some()
                {
                    return Err(AuthError::unprocessable(
                        "email_exists",
                        "A user with this email address has already been registered",
                    ));
                }
                let hash = signup_hash;
                let user = match existing {
                    Some(u) => u,
                    None => {
                        let id = Uuid::new_v4();
                        self.insert_user(
                            &tx,
                            NewUser {
                                id,
                                email: Some(&email),
                                phone: None,
                                password_hash: hash,
                                user_metadata: data,
                                app_metadata: None,
                                email_confirmed: false,
                                phone_confirmed: false,
                                anonymous: false,
                                invited: kind == "invite",
                                role: "authenticated",
                            },
                        )
                        .await?;
                        user::by_id(&tx, id)
                            .await?
                            .ok_or_else(AuthError::internal)?
                    }
                };
                (user, TokenColumn::Confirmation, kind.clone(), email.clone())
            }
            "magiclink" | "recovery" => {
                let user = existing.ok_or_else(user_not_found)?;
                (user, TokenColumn::Recovery, kind.clone(), email.clone())
            }
            "email_change_current" | "email_change_new" => {
                let user = existing.ok_or_else(user_not_found)?;
                let new_email = body
                    .new_email
                    .as_deref()
                    .and_then(normalize_email)
                    .ok_or_else(|| {
                        AuthError::validation(
                            "Generating an email change link requires a valid new_email",
                        )
                    })?;
                if user::by_email(&tx, &new_email).await?.is_some() {
                    return Err(AuthError::unprocessable(
                        "email_exists",
                        "A user with this email address has already been registered",
                    ));
                }
                tx.c_execute(
                    "update auth.users set email_change = $2, email_change_confirm_status = 0 where id = $1",
                    &[&user.id, &new_email],
                )
                .await?;
                if kind == "email_change_current" {
                    (
                        user,
                        TokenColumn::EmailChangeCurrent,
                        "email_change".to_owned(),
                        email.clone(),
                    )
                } else {
                    (
                        user,
                        TokenColumn::EmailChangeNew,
                        "email_change".to_owned(),
                        new_email,
                    )
                }
            }
            _ => {
                return Err(AuthError::validation(
                    "Invalid link type: use signup, invite, magiclink, recovery, email_change_current or email_change_new",
                ));
            }
        };
        let one_time = self.store_one_time(&tx, user.id, &to, column).await?;
        let user = user::by_id(&tx, user.id)
            .await?
            .ok_or_else(AuthError::internal)?;
        self.audit(
            &tx,
            ctx,
            "user_modified",
            Some(&user),
            "",
            json!({"generate_link": kind}),
        )
        .await?;
        tx.commit().await?;
        let mut response = user.to_json();
        if let Value::Object(map) = &mut response {
            map.insert(
                "action_link".to_owned(),
                json!(self.action_link(&one_time.hash, &verification_type, &redirect)),
            );
            map.insert("email_otp".to_owned(), json!(one_time.code));
            map.insert("hashed_token".to_owned(), json!(one_time.hash));
            map.insert("verification_type".to_owned(), json!(verification_type));
            map.insert("redirect_to".to_owned(), json!(redirect));
        }
        Ok(ok_json(response))
    }

    pub(crate) async fn invite(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let body: LinkBody = ctx.json()?;
        let email = body
            .email
            .as_deref()
            .and_then(normalize_email)
            .ok_or_else(|| {
                AuthError::validation("Unable to validate email address: invalid format")
            })?;
        let redirect = self.redirect_target(ctx.query("redirect_to").as_deref());
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let user = match user::by_email(&tx, &email).await? {
            Some(u) if u.email_confirmed_at.is_some() => {
                return Err(AuthError::unprocessable(
                    "email_exists",
                    "A user with this email address has already been registered",
                ));
            }
            Some(u) => {
                tx.c_execute(
                    "update auth.users set invited_at = now() where id = $1",
                    &[&u.id],
                )
                .await?;
                u
            }
            None => {
                let id = Uuid::new_v4();
                self.insert_user(
                    &tx,
                    NewUser {
                        id,
                        email: Some(&email),
                        phone: None,
                        password_hash: None,
                        user_metadata: metadata(body.data)?,
                        app_metadata: None,
                        email_confirmed: false,
                        phone_confirmed: false,
                        anonymous: false,
                        invited: true,
                        role: "authenticated",
                    },
                )
                .await?;
                user::by_id(&tx, id)
                    .await?
                    .ok_or_else(AuthError::internal)?
            }
        };
        self.send_one_time(
            &tx,
            &user,
            &email,
            TokenColumn::Confirmation,
            Kind::Invite,
            "invite",
            &redirect,
            false,
        )
        .await?;
        let user = user::by_id(&tx, user.id)
            .await?
            .ok_or_else(AuthError::internal)?;
        self.audit(&tx, ctx, "user_invited", Some(&user), "", json!({}))
            .await?;
        tx.commit().await?;
        Ok(ok_json(user.to_json()))
    }

    pub(crate) async fn admin_mailbox(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let to = ctx.query("to");
        let dir = self.config.mailbox_dir.clone();
        let messages =
            tokio::task::spawn_blocking(move || crate::mail::read_mailbox(&dir, to.as_deref()))
                .await
                .map_err(|_| AuthError::internal())?
                .map_err(|err| {
                    tracing::error!(error = %err, "reading the mailbox failed");
                    AuthError::internal()
                })?;
        Ok(ok_json(serde_json::to_value(messages).unwrap_or_default()))
    }

    pub(crate) async fn create_invite_code(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let body: InviteCodeBody = ctx.json()?;
        if body.expires_in.is_some_and(|s| s <= 0) {
            return Err(AuthError::validation(
                "expires_in must be a positive number of seconds",
            ));
        }
        let code = crypto::random_alnum(20);
        let client = self.pool.get().await?;
        let row = client
            .c_query_one(
                "insert into sovra.invite_codes (id, code_hash, note, created_at, expires_at)
                 values (gen_random_uuid(), $1, $2, now(), now() + make_interval(secs => $3::float8))
                 returning id, extract(epoch from expires_at)::int8",
                &[
                    &crypto::sha256_hex(&code),
                    &body.note,
                    &body.expires_in.map(|s| s as f64),
                ],
            )
            .await?;
        let id: Uuid = row.get(0);
        let expires_at: Option<i64> = row.get(1);
        Ok(ok_json(
            json!({"id": id, "code": code, "note": body.note, "expires_at": expires_at}),
        ))
    }

    pub(crate) async fn list_invite_codes(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let client = self.pool.get().await?;
        let rows = client
            .c_query(
"select id, note, extract(epoch from created_at)::int8, extract(epoch from expires_at)::int8,
                        extract(epoch from used_at)::int8, used_by
                   from sovra.invite_codes order by created_at desc",
                &[],
            )
            .await?;
        let codes: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "id": r.get::<_, Uuid>(0),
                    "note": r.get::<_, Option<String>>(1),
                    "created_at": r.get::<_, Option<i64>>(2),
                    "expires_at": r.get::<_, Option<i64>>(3),
                    "used_at": r.get::<_, Option<i64>>(4),
                    "used_by": r.get::<_, Option<Uuid>>(5),
                })
            })
            .collect();
        Ok(ok_json(Value::Array(codes)))
    }

    pub(crate) async fn delete_invite_code(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let id = Uuid::parse_str(id)
            .map_err(|_| AuthError::not_found("not_found", "Invite code not found"))?;
        let client = self.pool.get().await?;
        let n = client
            .c_execute("delete from sovra.invite_codes where id = $1", &[&id])
            .await?;
        if n == 0 {
            return Err(AuthError::not_found("not_found", "Invite code not found"));
        }
        Ok(ok_json(json!({})))
    }

    pub(crate) async fn create_api_key(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let body: ApiKeyBody = ctx.json()?;
        let name = body
            .name
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(|| AuthError::validation("An API key needs a name"))?;
        let role = body.role.unwrap_or_else(|| "service_role".to_owned());
        let client = self.pool.get().await?;
        let (id, key) = crate::apikeys::create(&client, &name, &role).await?;
        self.api_keys.reload(&client).await?;
        Ok((
            StatusCode::CREATED,
            axum::Json(json!({"id": id, "name": name, "role": role, "key": key})),
        )
            .into_response())
    }

    pub(crate) async fn list_api_keys(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let client = self.pool.get().await?;
        Ok(ok_json(crate::apikeys::list(&client).await?))
    }

    pub(crate) async fn revoke_api_key(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        self.require_admin(ctx)?;
        let id = Uuid::parse_str(id)
            .map_err(|_| AuthError::not_found("not_found", "API key not found"))?;
        let client = self.pool.get().await?;
        if !crate::apikeys::revoke(&client, id).await? {
            return Err(AuthError::not_found("not_found", "API key not found"));
        }
        self.api_keys.reload(&client).await?;
        Ok(ok_json(json!({})))
    }
}
