//! `POST /oauth/token` (authorization code and refresh grants),
//! `/oauth/userinfo` and `POST /oauth/revoke` (RFC 7009).
//!
//! A code is single use: the exchange deletes it before anything else is
//! checked, so a failed attempt (wrong client, redirect URI or verifier,
//! expired) burns it too. The session it starts is an ordinary
//! `auth.sessions` row with the client's id and the granted scopes; its
//! refresh tokens rotate through the same machinery as every other
//! session's, reuse detection included.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::clients::Client;
use super::{AMR_METHOD, field, form_fields, no_store, parse_scopes, scopes_within};
use crate::db::Cached as _;
use crate::error::{AuthError, AuthResult};
use crate::limits::Bucket;
use crate::session::Via;
use crate::user::User;
use crate::{AuthService, Ctx, crypto, time, user};

/// The claims `scopes` release about `user` (ID token and userinfo).
pub(crate) fn user_claims(user: &User, scopes: &[String]) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("sub".to_owned(), json!(user.id));
    let has = |s: &str| scopes.iter().any(|x| x == s);
    if has("email") && !user.email.is_empty() {
        out.insert("email".to_owned(), json!(user.email));
        out.insert(
            "email_verified".to_owned(),
            json!(user.email_confirmed_at.is_some()),
        );
    }
    if has("phone") && !user.phone.is_empty() {
        let phone = if user.phone.starts_with('+') {
            user.phone.clone()
        } else {
            format!("+{}", user.phone)
        };
        out.insert("phone_number".to_owned(), json!(phone));
        out.insert(
            "phone_number_verified".to_owned(),
            json!(user.phone_confirmed_at.is_some()),
        );
    }
    if has("profile") {
        let meta = &user.user_metadata;
        let first = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| {
                    meta.get(*n)
                        .and_then(Value::as_str)
                        .filter(|v| !v.is_empty())
                })
                .map(str::to_owned)
        };
        for (claim, sources) in [
            ("name", &["name", "full_name"][..]),
            ("given_name", &["given_name"][..]),
            ("family_name", &["family_name"][..]),
            ("nickname", &["nickname"][..]),
            (
                "preferred_username",
                &["preferred_username", "user_name"][..],
            ),
            ("picture", &["picture", "avatar_url"][..]),
        ] {
            if let Some(value) = first(sources) {
                out.insert(claim.to_owned(), Value::String(value));
            }
        }
        if let Some(updated) = user.updated_at {
            out.insert("updated_at".to_owned(), json!(time::unix(updated)));
        }
    }
    out
}

/// The claims of an ID token (OpenID Connect Core §2).
#[allow(clippy::too_many_arguments)]
pub(crate) fn id_token_claims(
    issuer: &str,
    user: &User,
    client_id: Uuid,
    scopes: &[String],
    nonce: Option<&str>,
    session_id: Uuid,
    now: i64,
    lifetime: i64,
) -> Map<String, Value> {
    let mut claims = user_claims(user, scopes);
    claims.insert("iss".to_owned(), json!(issuer));
    claims.insert("aud".to_owned(), json!(client_id));
    claims.insert("iat".to_owned(), json!(now));
    claims.insert("exp".to_owned(), json!(now + lifetime));
    claims.insert("auth_time".to_owned(), json!(now));
    claims.insert("sid".to_owned(), json!(session_id));
    if let Some(nonce) = nonce.filter(|n| !n.is_empty()) {
        claims.insert("nonce".to_owned(), json!(nonce));
    }
    claims
}

/// RFC 7636 §4.1: 43 to 128 characters of the unreserved set.
fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

fn invalid_grant(message: &str) -> AuthError {
    AuthError::oauth("invalid_grant", message)
}

/// A 401 for userinfo with the bearer challenge of RFC 6750 §3.
fn invalid_token(message: &str) -> AuthError {
    let mut err = AuthError::oauth("invalid_token", message);
    err.status = StatusCode::UNAUTHORIZED;
    err
}

impl AuthService {
    /// `POST /oauth/token`.
    pub(crate) async fn oauth_token(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let fields = form_fields(ctx)?;
        let grant = field(&fields, "grant_type")
            .ok_or_else(|| AuthError::oauth("invalid_request", "grant_type is required"))?
            .to_owned();
        let client = self.oauth_authenticate_client(ctx, &fields).await?;
        if !client.allows_grant(&grant) {
            return Err(AuthError::oauth(
                "unsupported_grant_type",
                format!("Client is not allowed to use grant type: {grant}"),
            ));
        }
        match grant.as_str() {
            "authorization_code" => self.oauth_code_grant(ctx, &client, &fields).await,
            "refresh_token" => self.oauth_refresh_grant(ctx, &client, &fields).await,
            other => Err(AuthError::oauth(
                "unsupported_grant_type",
                format!("Unsupported grant type: {other}"),
            )),
        }
    }

    async fn oauth_code_grant(
        &self,
        ctx: &Ctx<'_>,
        client: &Client,
        fields: &[(String, String)],
    ) -> AuthResult<Response> {
        self.limit(Bucket::SignIn, &ctx.ip_key()).await?;
        let code = field(fields, "code").ok_or_else(|| {
            AuthError::oauth(
                "invalid_request",
                "code is required for authorization_code grant",
            )
        })?;
        let mut db = self.pool.get().await?;
        let tx = db.transaction().await?;
        // Single use: the row goes whatever follows.
        let row = tx
            .c_query_opt(
                "delete from auth.oauth_authorizations
                  where authorization_code = $1 and status = 'approved'
              returning client_id, user_id, redirect_uri, scope, code_challenge, nonce,
                        expires_at <= now() as expired",
                &[&crypto::sha256_hex(code)],
            )
            .await?
            .ok_or_else(|| invalid_grant("Invalid authorization code"))?;
        let client_id: Uuid = row.get("client_id");
        let user_id: Option<Uuid> = row.get("user_id");
        let redirect_uri: String = row.get("redirect_uri");
        let scope: String = row.get("scope");
        let challenge: Option<String> = row.get("code_challenge");
        let nonce: Option<String> = row.get("nonce");
        let refusal = if row.get::<_, bool>("expired") {
            Some("Authorization code has expired")
        } else if client_id != client.id {
            Some("Authorization code was not issued for this client")
        } else if field(fields, "redirect_uri") != Some(redirect_uri.as_str()) {
            Some("Invalid redirect_uri")
        } else {
            match (field(fields, "code_verifier"), challenge.as_deref()) {
                (Some(verifier), Some(challenge))
                    if valid_verifier(verifier)
                        && crypto::equal(&crypto::pkce_s256(verifier), challenge) =>
                {
                    None
                }
                _ => Some("PKCE verification failed: code_verifier does not match"),
            }
        };
        if let Some(message) = refusal {
            tx.commit().await?;
            return Err(invalid_grant(message));
        }
        let user_id = user_id.ok_or_else(|| invalid_grant("Invalid authorization code"))?;
        let user = user::by_id(&tx, user_id).await?;
        let user = match crate::session::admit(user.as_ref(), Via::Grant) {
            Ok(user) => user.clone(),
            Err(err) => {
                tx.commit().await?;
                return Err(invalid_grant(&err.message));
            }
        };
        let session_id = Uuid::new_v4();
        let not_after = (self.config.session_timebox > 0).then(|| {
            std::time::SystemTime::now()
                + std::time::Duration::from_secs(self.config.session_timebox.unsigned_abs())
        });
        tx.c_execute(
            "with s as (
               insert into auth.sessions (id, user_id, created_at, updated_at, aal, not_after,
                                          user_agent, ip, oauth_client_id, scopes)
               values ($1, $2, now(), now(), 'aal1', $3, $4, $5, $6, $7) returning id)
             insert into auth.mfa_amr_claims (id, session_id, created_at, updated_at, authentication_method)
             select gen_random_uuid(), s.id, now(), now(), $8 from s",
            &[
                &session_id,
                &user_id,
                &not_after,
                &ctx.user_agent(),
                &ctx.ip,
                &client.id,
                &scope,
                &AMR_METHOD,
            ],
        )
        .await?;
        tx.c_execute(
            "update auth.users set last_sign_in_at = now(), updated_at = now() where id = $1",
            &[&user_id],
        )
        .await?;
        let refresh = self
            .new_refresh_token(&tx, user_id, session_id, None)
            .await?;
        let session = self
            .token_response(&tx, ctx, &user, session_id, &refresh, Via::Grant)
            .await?;
        self.audit(
            &tx,
            ctx,
            "login",
            Some(&user),
            "",
            json!({"provider_type": "oauth_provider_authorization_code", "client_id": client.id}),
        )
        .await?;
        tx.commit().await?;
        let scopes = parse_scopes(&scope).unwrap_or_default();
        let mut body = json!({
            "access_token": session["access_token"],
            "token_type": "bearer",
            "expires_in": session["expires_in"],
            "refresh_token": refresh,
            "scope": scope,
        });
        if scopes.iter().any(|s| s == "openid") {
            let claims = id_token_claims(
                &self.oauth_issuer(),
                &user,
                client.id,
                &scopes,
                nonce.as_deref(),
                session_id,
                time::now_unix(),
                self.config.jwt_expiry,
            );
            let id_token = self.sign_id_token(&claims).await?;
            if let Value::Object(map) = &mut body {
                map.insert("id_token".to_owned(), Value::String(id_token));
            }
        }
        Ok(no_store(StatusCode::OK, body))
    }

    async fn oauth_refresh_grant(
        &self,
        ctx: &Ctx<'_>,
        client: &Client,
        fields: &[(String, String)],
    ) -> AuthResult<Response> {
        let token = field(fields, "refresh_token").ok_or_else(|| {
            AuthError::oauth(
                "invalid_request",
                "refresh_token is required for refresh_token grant",
            )
        })?;
        // Only the client's own sessions refresh here.
        let row = self
            .pool
            .get()
            .await?
            .c_query_opt(
                "select s.oauth_client_id, coalesce(s.scopes, '') from auth.refresh_tokens rt
                   join auth.sessions s on s.id = rt.session_id
                  where rt.token = $1",
                &[&crypto::sha256_hex(token)],
            )
            .await?;
        let scope = match row {
            Some(row) if row.get::<_, Option<Uuid>>(0) == Some(client.id) => {
                row.get::<_, String>(1)
            }
            _ => {
                return Err(invalid_grant(
                    "Invalid Refresh Token: Refresh Token Not Found",
                ));
            }
        };
        if let Some(asked) = field(fields, "scope") {
            let asked = parse_scopes(asked).map_err(|m| AuthError::oauth("invalid_scope", m))?;
            if !scopes_within(&asked, &parse_scopes(&scope).unwrap_or_default()) {
                return Err(AuthError::oauth(
                    "invalid_scope",
                    "requested scope exceeds the scope granted",
                ));
            }
        }
        let session = self.refresh_value(ctx, token).await.map_err(|err| {
            if err.status.is_client_error() && err.status != StatusCode::TOO_MANY_REQUESTS {
                invalid_grant(&err.message)
            } else {
                err
            }
        })?;
        Ok(no_store(
            StatusCode::OK,
            json!({
                "access_token": session["access_token"],
                "token_type": "bearer",
                "expires_in": session["expires_in"],
                "refresh_token": session["refresh_token"],
                "scope": scope,
            }),
        ))
    }

    /// `GET|POST /oauth/userinfo`: the claims the token's scopes release,
    /// while its session lasts.
    pub(crate) async fn oauth_userinfo(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.limit(Bucket::Verify, &ctx.ip_key()).await?;
        let result = async {
            let claims = self
                .bearer_claims(ctx)
                .map_err(|_| invalid_token("The access token is invalid"))?;
            let sub = claims
                .get("sub")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| invalid_token("The access token has no subject"))?;
            let session_id = claims
                .get("session_id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| invalid_token("The access token has no session"))?;
            let db = self.pool.get().await?;
            let session = db
                .c_query_opt(
                    "select oauth_client_id, scopes from auth.sessions where id = $1 and user_id = $2",
                    &[&session_id, &sub],
                )
                .await?
                .ok_or_else(|| invalid_token("The session has ended"))?;
            let scopes = match session.get::<_, Option<Uuid>>(0) {
                Some(_) => parse_scopes(session.get::<_, Option<&str>>(1).unwrap_or(""))
                    .unwrap_or_default(),
                // A session of the project's own sign-in sees everything.
                None => super::SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            };
            let user = user::by_id(&db, sub).await?;
            let user = crate::session::admit(user.as_ref(), Via::Grant)
                .map_err(|_| invalid_token("The user is not available"))?;
            Ok::<_, AuthError>(user_claims(user, &scopes))
        }
        .await;
        match result {
            Ok(claims) => Ok(no_store(StatusCode::OK, Value::Object(claims))),
            Err(err) if err.status == StatusCode::UNAUTHORIZED => {
                let mut response = err.render(false);
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
                Ok(response)
            }
            Err(err) => Err(err),
        }
    }

    /// `POST /oauth/revoke` (RFC 7009): ends the session of one of the
    /// client's refresh or access tokens. Always 200 for a known client,
    /// whether or not the token was live.
    pub(crate) async fn oauth_revoke(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.limit(Bucket::Verify, &ctx.ip_key()).await?;
        let fields = form_fields(ctx)?;
        let client = self.oauth_authenticate_client(ctx, &fields).await?;
        let token = field(&fields, "token")
            .ok_or_else(|| AuthError::oauth("invalid_request", "token is required"))?;
        let db = self.pool.get().await?;
        let ended = db
            .c_execute(
                "delete from auth.sessions s using auth.refresh_tokens rt
                  where rt.token = $1 and rt.session_id = s.id and s.oauth_client_id = $2",
                &[&crypto::sha256_hex(token), &client.id],
            )
            .await?;
        if ended == 0
            && let Ok(verified) = ctx.req.keys.verify(token, time::now_unix())
            && verified.claims.get("client_id").and_then(Value::as_str)
                == Some(client.id.to_string().as_str())
            && let Some(session_id) = verified
                .claims
                .get("session_id")
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok())
        {
            db.c_execute(
                "delete from auth.sessions where id = $1 and oauth_client_id = $2",
                &[&session_id, &client.id],
            )
            .await?;
        }
        Ok(no_store(StatusCode::OK, json!({})).into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::valid_verifier;

    #[test]
    fn verifiers_are_43_to_128_unreserved_characters() {
        assert!(valid_verifier(&"v".repeat(43)));
        assert!(valid_verifier(&"v".repeat(128)));
        assert!(!valid_verifier(&"v".repeat(42)));
        assert!(!valid_verifier(&"v".repeat(129)));
        assert!(!valid_verifier(&format!("{} ", "v".repeat(43))));
    }
}
