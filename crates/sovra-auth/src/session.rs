//! Sessions, access tokens, refresh-token rotation, audit entries and the
//! one-time tokens that links and codes carry.

use crate::db::Cached as _;
use axum::response::Response;
use serde_json::{Map, Value, json};
use sovra_pg::GenericClient;
use uuid::Uuid;

use crate::error::{AuthError, AuthResult};
use crate::hooks::{self, HookName};
use crate::mail::{Kind, Vars};
use crate::user::User;
use crate::{AuthService, Ctx, crypto, ok_json, time, user};

/// Refresh tokens are 40 random alphanumerics (about 238 bits).
const REFRESH_TOKEN_LEN: usize = 40;

/// How far a retried refresh follows the chain of successors to find the
/// live one.
const MAX_DESCENDANTS: usize = 16;

/// A token column of `auth.users` and its `*_sent_at` partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenColumn {
    Confirmation,
    Recovery,
    EmailChangeNew,
    EmailChangeCurrent,
    PhoneChange,
    Reauthentication,
}

impl TokenColumn {
    pub(crate) fn column(self) -> &'static str {
        match self {
            TokenColumn::Confirmation => "confirmation_token",
            TokenColumn::Recovery => "recovery_token",
            TokenColumn::EmailChangeNew => "email_change_token_new",
            TokenColumn::EmailChangeCurrent => "email_change_token_current",
            TokenColumn::PhoneChange => "phone_change_token",
            TokenColumn::Reauthentication => "reauthentication_token",
        }
    }

    pub(crate) fn sent_at(self) -> &'static str {
        match self {
            TokenColumn::Confirmation => "confirmation_sent_at",
            TokenColumn::Recovery => "recovery_sent_at",
            TokenColumn::EmailChangeNew | TokenColumn::EmailChangeCurrent => "email_change_sent_at",
            TokenColumn::PhoneChange => "phone_change_sent_at",
            TokenColumn::Reauthentication => "reauthentication_sent_at",
        }
    }
}

/// The road a session is issued by; it decides how a refusal is worded
/// (GoTrue words them differently per endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// `/token?grant_type=password|pkce`, sign-up with auto-confirm,
    /// anonymous sign-in.
    Grant,
    /// `/token?grant_type=refresh_token`.
    Refresh,
    /// `/verify` of every type, links and codes (PKCE links included).
    Link,
    /// `/factors/{id}/verify`.
    Mfa,
}

/// The one gate every session passes before it is issued (and before a
/// PKCE link yields its code): the user exists, is not soft-deleted and is
/// not banned. Refusals are GoTrue's (`user_banned`).
pub(crate) fn admit(user: Option<&User>, via: Via) -> AuthResult<&User> {
    let gone = || match via {
        Via::Refresh => AuthError::bad_request(
            "session_not_found",
            "Invalid Refresh Token: No Valid Session Found",
        ),
        _ => AuthError::not_found("user_not_found", "User not found"),
    };
    let user = user.ok_or_else(gone)?;
    if user.deleted_at.is_some() {
        return Err(gone());
    }
    if user.is_banned() {
        return Err(match via {
            Via::Refresh => {
                AuthError::bad_request("user_banned", "Invalid Refresh Token: User Banned")
            }
            Via::Grant => AuthError::bad_request("user_banned", "User is banned"),
            Via::Link | Via::Mfa => AuthError::forbidden("user_banned", "User is banned"),
        });
    }
    Ok(user)
}

/// The assurance level a session's token may claim: `aal2` only while the
/// user still has a verified factor (an unenrolled or deleted factor takes
/// the session back to `aal1`).
fn effective_aal<'a>(user: &User, aal: &'a str) -> &'a str {
    if aal == "aal2" && !user.has_verified_factor() {
        "aal1"
    } else {
        aal
    }
}

/// A one-time token just stored: the code for people, the hash for links.
pub(crate) struct OneTime {
    pub code: String,
    pub hash: String,
}

impl AuthService {
    /// Stores a new one-time token for `subject` (email or phone) in
    /// `column`, replacing the previous one.
    pub(crate) async fn store_one_time(
        &self,
        client: &impl GenericClient,
        user_id: Uuid,
        subject: &str,
        column: TokenColumn,
    ) -> AuthResult<OneTime> {
        let code = crypto::otp_code();
        let hash = crypto::token_hash(subject, &code);
        let sql = format!(
            "update auth.users set {} = $2, {} = now(), updated_at = now() where id = $1",
            column.column(),
            column.sent_at()
        );
        client
            .c_execute(&sql, &[&user_id, &crypto::stored_token(&hash)])
            .await?;
        Ok(OneTime { code, hash })
    }

    /// Refuses a new mail to a user who got one less than
    /// `email_max_frequency` seconds ago.
    pub(crate) fn check_frequency(
        &self,
        last_sent: Option<std::time::SystemTime>,
    ) -> AuthResult<()> {
        let Some(last) = last_sent else {
            return Ok(());
        };
        let elapsed = time::now_unix() - time::unix(last);
        let wait = self.config.email_max_frequency - elapsed;
        if wait > 0 {
            return Err(AuthError::rate_limited(
                "over_email_send_rate_limit",
                format!("For security purposes, you can only request this after {wait} seconds."),
                u64::try_from(wait).unwrap_or(1),
            ));
        }
        Ok(())
    }

    /// The link in a mail: `/auth/v1/verify?token=…&type=…&redirect_to=…`.
    pub(crate) fn action_link(&self, hash: &str, kind: &str, redirect_to: &str) -> String {
        format!(
            "{}/auth/v1/verify?token={}&type={}&redirect_to={}",
            self.external_url(),
            crypto::percent_encode(hash),
            kind,
            crypto::percent_encode(redirect_to)
        )
    }

    /// Renders one message and counts it against the per-address mail
    /// limit. Inside a request it is only queued: [`AuthService::handle`]
    /// sends the queue after the request's transaction has committed, so no
    /// transaction or connection is held across SMTP, and nothing is sent
    /// for a request that failed. Outside a request it is sent at once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn deliver(
        &self,
        kind: Kind,
        to: &str,
        one_time: &OneTime,
        link_type: &str,
        redirect_to: &str,
        user: &User,
        new_email: &str,
    ) -> AuthResult<()> {
        let email = user.email.as_str();
        self.limit_project_mail().await?;
        self.limit(crate::limits::Bucket::EmailSent, to).await?;
        let Some(template) = self.templates.get(&kind) else {
            return Err(AuthError::internal());
        };
        let vars = Vars {
            confirmation_url: self.action_link(&one_time.hash, link_type, redirect_to),
            token: one_time.code.clone(),
            token_hash: one_time.hash.clone(),
            site_url: self.site_url(),
            email: email.to_owned(),
            new_email: new_email.to_owned(),
            redirect_to: redirect_to.to_owned(),
        };
        let (subject, body) = template.render(&vars);
        let hook = if kind == Kind::Sms && self.hook_enabled(HookName::SendSms) {
            Some((
                HookName::SendSms,
                json!({
                    "metadata": hooks::metadata(HookName::SendSms, None),
                    "user": user.to_json(),
                    "sms": {"otp": one_time.code, "phone": to, "sms_type": link_type},
                }),
            ))
        } else if kind != Kind::Sms && self.hook_enabled(HookName::SendEmail) {
            Some((
                HookName::SendEmail,
                json!({
                    "metadata": hooks::metadata(HookName::SendEmail, None),
                    "user": user.to_json(),
                    "email_data": {
                        "token": one_time.code,
                        "token_hash": one_time.hash,
                        "redirect_to": redirect_to,
                        "email_action_type": email_action_type(kind, link_type, to, new_email),
                        "site_url": vars.site_url,
                        "token_new": "",
                        "token_hash_new": "",
                    },
                }),
            ))
        } else {
            None
        };
        let outgoing = crate::mail::Outgoing {
            kind,
            to: to.to_owned(),
            subject,
            body,
            hook,
        };
        match crate::mail::queue(outgoing) {
            None => Ok(()),
            Some(outgoing) => self.send_now(&outgoing).await,
        }
    }

    /// Sends one rendered message; failures are the client's 500. With the
    /// send-email or send-SMS hook on, the hook gets the message's data
    /// instead, and an error it answers is the client's.
    pub(crate) async fn send_now(&self, outgoing: &crate::mail::Outgoing) -> AuthResult<()> {
        if let Some((name, input)) = &outgoing.hook {
            let client = self.pool.get().await?;
            let output = self.run_hook(&client, *name, input).await?;
            return match hooks::hook_error(&output) {
                Some(err) => Err(err),
                None => Ok(()),
            };
        }
        let kind = outgoing.kind;
        self.sender
            .send(kind, &outgoing.to, &outgoing.subject, &outgoing.body)
            .await
            .map_err(|err| {
                tracing::error!(error = %err, kind = kind.name(), "sending mail failed");
                let code = if kind == Kind::Sms {
                    "sms_send_failed"
                } else {
                    "unexpected_failure"
                };
                AuthError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    code,
                    "Error sending message",
                )
            })
    }

    /// Writes an audit entry (`auth.audit_log_entries`, GoTrue's shape).
    pub(crate) async fn audit(
        &self,
        client: &impl GenericClient,
        ctx: &Ctx<'_>,
        action: &str,
        actor: Option<&User>,
        username: &str,
        traits: Value,
    ) -> AuthResult<()> {
        let payload = json!({
            "actor_id": actor.map_or_else(|| Uuid::nil().to_string(), |u| u.id.to_string()),
            "actor_username": actor.map_or(username, |u| if u.email.is_empty() { &u.phone } else { &u.email }),
            "actor_via_sso": false,
            "action": action,
            "log_type": log_type(action),
            "traits": traits,
        });
        client
            .c_execute(
                "insert into auth.audit_log_entries (id, payload, created_at, ip_address)
                 values (gen_random_uuid(), $1::jsonb::json, now(), $2)",
                &[&payload, &ctx.ip_text()],
            )
            .await?;
        Ok(())
    }

    /// Starts a session for `user` signed in by `method`, and answers with
    /// the token response.
    pub(crate) async fn start_session(
        &self,
        client: &impl GenericClient,
        ctx: &Ctx<'_>,
        user_id: Uuid,
        method: &str,
        via: Via,
    ) -> AuthResult<Value> {
        // Refused before anything is written.
        admit(user::by_id(client, user_id).await?.as_ref(), via)?;
        let session_id = Uuid::new_v4();
        let not_after = (self.config.session_timebox > 0).then(|| {
            std::time::SystemTime::now()
                + std::time::Duration::from_secs(self.config.session_timebox.unsigned_abs())
        });
        client
            .c_execute(
                "with s as (
                   insert into auth.sessions (id, user_id, created_at, updated_at, aal, not_after, user_agent, ip)
                   values ($1, $2, now(), now(), 'aal1', $3, $4, $5) returning id)
                 insert into auth.mfa_amr_claims (id, session_id, created_at, updated_at, authentication_method)
                 select gen_random_uuid(), s.id, now(), now(), $6 from s",
                &[
                    &session_id,
                    &user_id,
                    &not_after,
                    &ctx.user_agent(),
                    &ctx.ip,
                    &method,
                ],
            )
            .await?;
        client
            .c_execute(
                "update auth.users set last_sign_in_at = now(), updated_at = now() where id = $1",
                &[&user_id],
            )
            .await?;
        let refresh = self
            .new_refresh_token(client, user_id, session_id, None)
            .await?;
        let user = user::by_id(client, user_id)
            .await?
            .ok_or_else(AuthError::internal)?;
        self.token_response(client, ctx, &user, session_id, &refresh, via)
            .await
    }

    /// Stores a new refresh token of `session_id` (child of `parent`, a
    /// stored hash) and returns it.
    pub(crate) async fn new_refresh_token(
        &self,
        client: &impl GenericClient,
        user_id: Uuid,
        session_id: Uuid,
        parent: Option<&str>,
    ) -> AuthResult<String> {
        let token = crypto::random_alnum(REFRESH_TOKEN_LEN);
        client
            .c_execute(
                "insert into auth.refresh_tokens (token, user_id, revoked, created_at, updated_at, parent, session_id)
                 values ($1, $2, false, now(), now(), $3, $4)",
                &[
                    &crypto::sha256_hex(&token),
                    &user_id.to_string(),
                    &parent,
                    &session_id,
                ],
            )
            .await?;
        Ok(token)
    }

    /// The token response for an existing session: a new access token with
    /// the session's AAL and methods.
    pub(crate) async fn token_response(
        &self,
        client: &impl GenericClient,
        ctx: &Ctx<'_>,
        user: &User,
        session_id: Uuid,
        refresh: &str,
        via: Via,
    ) -> AuthResult<Value> {
        let row = client
            .c_query_one(
                "select coalesce(s.aal, 'aal1'),
                        coalesce((select json_agg(json_build_object(
                             'method', c.authentication_method,
                             'timestamp', extract(epoch from c.updated_at)::int8)
                           order by c.updated_at desc)
                         from auth.mfa_amr_claims c where c.session_id = s.id), '[]'::json)
                   from auth.sessions s where s.id = $1",
                &[&session_id],
            )
            .await?;
        let aal: String = row.get(0);
        let amr: Value = row.get(1);
        self.sign_session(Some(client), ctx, user, session_id, &aal, amr, refresh, via)
            .await
    }

    /// Signs the access token of a session: the only place one is made,
    /// so every road passes [`admit`] and the custom access token hook
    /// here.
    #[allow(clippy::too_many_arguments)]
    async fn sign_session(
        &self,
        client: Option<&impl GenericClient>,
        ctx: &Ctx<'_>,
        user: &User,
        session_id: Uuid,
        aal: &str,
        amr: Value,
        refresh: &str,
        via: Via,
    ) -> AuthResult<Value> {
        let user = admit(Some(user), via)?;
        let aal = effective_aal(user, aal);
        // An OAuth client's session: its tokens name the client.
        let oauth_client = if crate::oauth_server::is_oauth_amr(&amr) {
            let sql = "select oauth_client_id from auth.sessions where id = $1";
            let row = match client {
                Some(client) => client.c_query_opt(sql, &[&session_id]).await?,
                None => {
                    self.pool
                        .get()
                        .await?
                        .c_query_opt(sql, &[&session_id])
                        .await?
                }
            };
            row.and_then(|row| row.get::<_, Option<Uuid>>(0))
        } else {
            None
        };
        let now = time::now_unix();
        let exp = now + self.config.jwt_expiry;
        let Value::Object(claims) = json!({
            "iss": format!("{}/auth/v1", self.external_url()),
            "sub": user.id,
            "aud": self.config.jwt_aud,
            "exp": exp,
            "iat": now,
            "email": user.email,
            "phone": user.phone,
            "app_metadata": user.app_metadata,
            "user_metadata": user.user_metadata,
            "role": if user.role.is_empty() { "authenticated" } else { &user.role },
            "aal": aal,
            "amr": amr,
            "session_id": session_id,
            "is_anonymous": user.is_anonymous,
        }) else {
            return Err(AuthError::internal());
        };
        let mut claims = claims;
        if let Some(id) = oauth_client {
            claims.insert("client_id".to_owned(), json!(id));
        }
        // The hook needs a connection; a caller without one (the refresh
        // fast path, whose rotation has committed) takes one only then.
        let mut claims = match (self.hook_enabled(HookName::CustomAccessToken), client) {
            (false, _) => claims,
            (true, Some(client)) => self.custom_claims(client, ctx, user, claims, via).await?,
            (true, None) => {
                let client = self.pool.get().await?;
                self.custom_claims(&client, ctx, user, claims, via).await?
            }
        };
        if let Some(id) = oauth_client {
            // A hook may add claims, not take the client's away.
            claims.insert("client_id".to_owned(), json!(id));
        }
        let access_token = ctx.req.keys.sign(&claims).map_err(|err| {
            tracing::error!(error = %err, "signing an access token failed");
            AuthError::internal()
        })?;
        Ok(json!({
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": self.config.jwt_expiry,
            "expires_at": exp,
            "refresh_token": refresh,
            "user": user.to_json(),
        }))
    }

    /// The custom access token hook: `{user_id, claims,
    /// authentication_method}` in, `{claims}` out, checked as GoTrue checks
    /// them; its claims replace the token's. The method is the session's
    /// latest (`token_refresh` on a refresh), as GoTrue passes it.
    async fn custom_claims(
        &self,
        client: &impl GenericClient,
        ctx: &Ctx<'_>,
        user: &User,
        claims: Map<String, Value>,
        via: Via,
    ) -> AuthResult<Map<String, Value>> {
        let method = if via == Via::Refresh {
            "token_refresh".to_owned()
        } else {
            claims
                .get("amr")
                .and_then(|amr| amr.get(0))
                .and_then(|first| first.get("method"))
                .and_then(Value::as_str)
                .unwrap_or("password")
                .to_owned()
        };
        let input = json!({
            "metadata": hooks::metadata(HookName::CustomAccessToken, ctx.ip),
            "user_id": user.id,
            "claims": claims,
            "authentication_method": method,
        });
        let output = self
            .run_hook(client, HookName::CustomAccessToken, &input)
            .await?;
        hooks::output_claims(&output)
    }

    /// `grant_type=refresh_token` (spec §3.4). A token's successor is
    /// derived from the token under the service key, so presenting a
    /// rotated token again within `refresh_token_reuse_interval` answers
    /// with its current active descendant (the same refresh token string,
    /// a new access token) instead of minting an independent one; later,
    /// it ends the whole session.
    pub(crate) async fn refresh(&self, ctx: &Ctx<'_>, token: &str) -> AuthResult<Response> {
        self.refresh_value(ctx, token).await.map(ok_json)
    }

    /// [`AuthService::refresh`]'s token response, for the OAuth server's
    /// refresh grant too.
    pub(crate) async fn refresh_value(&self, ctx: &Ctx<'_>, token: &str) -> AuthResult<Value> {
        self.limit(crate::limits::Bucket::Refresh, &ctx.ip_key())
            .await?;
        let hash = crypto::sha256_hex(token);
        let child = self.key.refresh_child(token);
        let child_hash = crypto::sha256_hex(&child);
        // Fast path: a live token (or one whose successor is still live or
        // was never stored) rotates at once, in a group commit with the
        // refreshes that arrive meanwhile (`refresh_batch`); should that
        // batch fail, the same rule in a statement of its own.
        let outcome = self
            .refresh_batch
            .rotate(&self.pool, hash.clone(), child_hash.clone())
            .await;
        let row = match outcome {
            crate::refresh_batch::Outcome::Rotated(row) => Some(*row),
            crate::refresh_batch::Outcome::NotTaken => None,
            crate::refresh_batch::Outcome::Failed => {
                self.pool
                    .get()
                    .await?
                    .c_query_opt(
                        refresh_sql(),
                        &[
                            &hash,
                            &(self.config.refresh_reuse_interval as f64),
                            &(self.config.session_inactivity as f64),
                            &child_hash,
                        ],
                    )
                    .await?
            }
        };
        if let Some(row) = row {
            let user = User::from_row(&row)?;
            let session_id: Uuid = row.get("session_id");
            let aal: String = row.get("session_aal");
            let amr: Value = row.get("session_amr");
            // The custom access token hook (when configured) runs on a
            // connection of its own: the rotation has committed already.
            // Without a hook no connection is taken.
            let body = self
                .sign_session(
                    None::<&sovra_pg::PooledClient>,
                    ctx,
                    &user,
                    session_id,
                    &aal,
                    amr,
                    &child,
                    Via::Refresh,
                )
                .await?;
            return Ok(body);
        }
        // Anything else takes the careful path, which says why (and ends
        // the session when an old token is reused).
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // The row lock serialises concurrent refreshes of one token.
        let row = tx.c_query_opt(refresh_lock_sql(), &[&hash]).await?;
        let Some(row) = row else {
            return Err(AuthError::bad_request(
                "refresh_token_not_found",
                "Invalid Refresh Token: Refresh Token Not Found",
            ));
        };
        let token_id: i64 = row.get(0);
        let revoked: bool = row.get(1);
        let age: f64 = row.get::<_, Option<f64>>(2).unwrap_or(f64::MAX);
        let (Some(session_id), Some(user_id)) =
            (row.get::<_, Option<Uuid>>(3), row.get::<_, Option<Uuid>>(4))
        else {
            return Err(AuthError::bad_request(
                "session_not_found",
                "Invalid Refresh Token: No Valid Session Found",
            ));
        };
        let remaining: Option<f64> = row.get(5);
        let idle: f64 = row.get::<_, Option<f64>>(6).unwrap_or(0.0);
        if remaining.is_some_and(|r| r <= 0.0)
            || (self.config.session_inactivity > 0 && idle > self.config.session_inactivity as f64)
        {
            return Err(AuthError::bad_request(
                "session_expired",
                "Invalid Refresh Token: Session Expired",
            ));
        }
        let reused = || {
            AuthError::bad_request(
                "refresh_token_already_used",
                "Invalid Refresh Token: Already Used",
            )
        };
        if revoked && age > self.config.refresh_reuse_interval as f64 {
            // Reuse of an old token: someone else may hold it. End the
            // whole session (its tokens go with it).
            tx.c_execute("delete from auth.sessions where id = $1", &[&session_id])
                .await?;
            let actor = user::by_id(&tx, user_id).await?;
            self.audit(
                &tx,
                ctx,
                "token_revoked",
                actor.as_ref(),
                "",
                json!({"reason": "refresh_token_reused", "session_id": session_id}),
            )
            .await?;
            tx.commit().await?;
            tracing::warn!(%session_id, "refresh token reused: session revoked");
            return Err(reused());
        }
        if revoked {
            // A retry within the interval: answer with the live token that
            // descends from this one (a lost response, a second tab).
            let mut current = child.clone();
            for _ in 0..MAX_DESCENDANTS {
                let found = tx
                    .c_query_opt(
                        "select coalesce(revoked, false) from auth.refresh_tokens
                          where token = $1 and session_id = $2",
                        &[&crypto::sha256_hex(&current), &session_id],
                    )
                    .await?;
                match found {
                    Some(row) if !row.get::<_, bool>(0) => {
                        tx.c_execute(
                            "update auth.sessions set refreshed_at = now() at time zone 'utc',
                                    updated_at = now() where id = $1",
                            &[&session_id],
                        )
                        .await?;
                        let user = user::by_id(&tx, user_id).await?;
                        let user = admit(user.as_ref(), Via::Refresh)?;
                        let body = self
                            .token_response(&tx, ctx, user, session_id, &current, Via::Refresh)
                            .await?;
                        tx.commit().await?;
                        return Ok(body);
                    }
                    Some(_) => current = self.key.refresh_child(&current),
                    None => break,
                }
            }
            // No live descendant (the session's tokens were replaced, e.g.
            // by an MFA verification): nothing to hand back.
            return Err(reused());
        }
        // A live token the fast path did not take (a banned or deleted
        // user): rotate here, and let the gate say why not.
        let row = tx
            .c_query_opt(
                refresh_rotate_sql(),
                &[
                    &token_id,
                    &session_id,
                    &crypto::sha256_hex(&child),
                    &user_id,
                    &hash,
                ],
            )
            .await?;
        let row = row.ok_or_else(|| {
            AuthError::bad_request(
                "session_not_found",
                "Invalid Refresh Token: No Valid Session Found",
            )
        })?;
        let user = User::from_row(&row)?;
        let aal: String = row.get("session_aal");
        let amr: Value = row.get("session_amr");
        let body = self
            .sign_session(
                Some(&tx),
                ctx,
                &user,
                session_id,
                &aal,
                amr,
                &child,
                Via::Refresh,
            )
            .await?;
        tx.commit().await?;
        Ok(body)
    }
}

/// The refresh's first statement: the presented token (`$1`, hashed) and
/// its session, the token row locked. Public for the benchmark.
pub fn refresh_lock_sql() -> &'static str {
    "select rt.id, coalesce(rt.revoked, false),
                        extract(epoch from now() - rt.updated_at)::float8,
                        s.id, s.user_id,
                        extract(epoch from s.not_after - now())::float8,
                        extract(epoch from now() - coalesce(s.refreshed_at::timestamptz, s.created_at))::float8
                   from auth.refresh_tokens rt
                   left join auth.sessions s on s.id = rt.session_id
                  where rt.token = $1
                  for update of rt"
}

/// A refresh in one statement, when the token (hash `$1`) is live, or was
/// rotated less than `$2` seconds ago and its successor (hash `$4`) is not
/// itself rotated, and its session is neither past its
/// time box nor idle longer than `$3` seconds (0: no limit), and its user
/// is neither banned nor deleted: the token is retired, the session
/// touched, the successor's hash `$4` stored (kept when a concurrent
/// refresh stored it first), and the user and the session's
/// AAL and methods read back. No row: take the careful path. Concurrent
/// refreshes of one token serialise on its row lock. Public for the
/// benchmark's pgbench reference.
pub fn refresh_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "with t as (
               select rt.id, rt.session_id from auth.refresh_tokens rt
                where rt.token = $1
                  and (not coalesce(rt.revoked, false)
                       or (rt.updated_at >= now() - make_interval(secs => $2)
                           and not exists (select 1 from auth.refresh_tokens c
                                            where c.token = $4 and coalesce(c.revoked, false))))
                for update),
             ok as (
               select t.id as token_id, s.id as session_id, s.user_id, coalesce(s.aal, 'aal1') as aal
                 from t
                 join auth.sessions s on s.id = t.session_id
                 join auth.users b on b.id = s.user_id
                where (s.not_after is null or s.not_after > now())
                  and ($3::float8 = 0 or coalesce(s.refreshed_at::timestamptz, s.created_at)
                                  > now() - make_interval(secs => $3::float8))
                  and b.deleted_at is null
                  and (b.banned_until is null or b.banned_until <= now())),
             old as (
               update auth.refresh_tokens r set revoked = true, updated_at = now()
                 from ok where r.id = ok.token_id and not coalesce(r.revoked, false)),
             s2 as (
               update auth.sessions s set refreshed_at = now() at time zone 'utc', updated_at = now()
                 from ok where s.id = ok.session_id),
             n as (
               insert into auth.refresh_tokens (token, user_id, revoked, created_at, updated_at, parent, session_id)
               select $4, ok.user_id::text, false, now(), now(), $1, ok.session_id from ok
               on conflict (token) do nothing)
             select {}, ok.session_id, ok.aal as session_aal,
                    coalesce((select json_agg(json_build_object(
                         'method', c.authentication_method,
                         'timestamp', extract(epoch from c.updated_at)::int8)
                       order by c.updated_at desc)
                     from auth.mfa_amr_claims c where c.session_id = ok.session_id), '[]'::json) as session_amr
               from ok join auth.users u on u.id = ok.user_id",
            user::user_columns()
        )
    })
}

/// The refresh's second statement: retire token `$1`, touch session `$2`,
/// store the new token hash `$3` (child of `$5`) for user `$4`, and read
/// back the user and the session's AAL and methods. Public for the
/// benchmark.
pub fn refresh_rotate_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!("with old as (
                   update auth.refresh_tokens set revoked = true, updated_at = now()
                    where id = $1 and not coalesce(revoked, false)),
                 s as (
                   update auth.sessions set refreshed_at = now() at time zone 'utc', updated_at = now()
                    where id = $2 returning id, aal),
                 n as (
                   insert into auth.refresh_tokens (token, user_id, revoked, created_at, updated_at, parent, session_id)
                   values ($3, $4::uuid::text, false, now(), now(), $5, $2)
                   on conflict (token) do nothing)
                 select {}, coalesce(s.aal, 'aal1') as session_aal,
                        coalesce((select json_agg(json_build_object(
                             'method', c.authentication_method,
                             'timestamp', extract(epoch from c.updated_at)::int8)
                           order by c.updated_at desc)
                         from auth.mfa_amr_claims c where c.session_id = s.id), '[]'::json) as session_amr
                   from s cross join auth.users u
                  where u.id = $4",
                user::user_columns())
    })
}

/// GoTrue's `email_action_type` of a message: `signup`, `invite`,
/// `magiclink`, `recovery`, `email_change` (to the new address; to the
/// current one as `email_change_current`), `reauthentication`, or `email`
/// for a bare code.
fn email_action_type(kind: Kind, link_type: &str, to: &str, new_email: &str) -> &'static str {
    match kind {
        Kind::Confirmation => {
            if link_type == "signup" {
                "signup"
            } else {
                "email"
            }
        }
        Kind::Invite => "invite",
        Kind::MagicLink => "magiclink",
        Kind::Recovery => "recovery",
        Kind::EmailChange => {
            if !new_email.is_empty() && to.eq_ignore_ascii_case(new_email) {
                "email_change"
            } else {
                "email_change_current"
            }
        }
        Kind::Reauthentication => "reauthentication",
        Kind::Sms => "sms",
    }
}

fn log_type(action: &str) -> &'static str {
    match action {
        "login" | "logout" | "login_failed" | "token_refreshed" | "token_revoked" => "token",
        "user_signedup"
        | "user_invited"
        | "user_deleted"
        | "user_modified"
        | "user_recovery_requested"
        | "user_reauthenticate_requested"
        | "user_confirmation_requested"
        | "user_repeated_signup"
        | "user_updated_password" => "user",
        "factor_in_progress"
        | "factor_unenrolled"
        | "challenge_created"
        | "verification_attempted"
        | "factor_deleted"
        | "recovery_codes_deleted"
        | "factor_updated"
        | "mfa_code_login" => "factor",
        _ => "account",
    }
}
