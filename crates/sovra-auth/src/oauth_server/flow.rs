//! The authorization request and the consent the app's page asks for.
//!
//! `GET /oauth/authorize` checks the client, its exact redirect URI, PKCE
//! (S256 only) and the scopes, stores a pending authorization that lives
//! [`AUTHORIZATION_TTL_SECS`], and sends the browser to the consent page
//! with `?authorization_id=`. The signed-in user's page reads it
//! (`auth.oauth.getAuthorizationDetails`, which also binds it to that
//! user) and approves or denies it (`approveAuthorization`,
//! `denyAuthorization`); approval stores the consent and yields the
//! redirect with a single-use code, of which only the hash is kept.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{AUTHORIZATION_TTL_SECS, DEFAULT_SCOPE, parse_scopes, scopes_within, with_query};
use crate::db::Cached as _;
use crate::error::{AuthError, AuthResult};
use crate::limits::Bucket;
use crate::{AuthService, Ctx, crypto, ok_json, time};

/// Authorization codes: 40 random alphanumerics (about 238 bits).
const CODE_LEN: usize = 40;

fn not_found() -> AuthError {
    AuthError::not_found("oauth_authorization_not_found", "authorization not found")
}

/// Whether `challenge` is a well-formed S256 challenge (RFC 7636 §4.2:
/// 43 to 128 characters of the unreserved set).
fn valid_challenge(challenge: &str) -> bool {
    (43..=128).contains(&challenge.len())
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// One authorization row with its client's display fields.
struct Pending {
    id: Uuid,
    authorization_id: String,
    client_id: Uuid,
    user_id: Option<Uuid>,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    status: String,
    expired: bool,
    client_name: Option<String>,
    client_uri: Option<String>,
    logo_uri: Option<String>,
}

const PENDING_SQL: &str =
    "select a.id, a.authorization_id, a.client_id, a.user_id, a.redirect_uri, a.scope,
            a.state, a.status, a.expires_at <= now() as expired,
            c.client_name, c.client_uri, c.logo_uri
       from auth.oauth_authorizations a
       join auth.oauth_clients c on c.id = a.client_id and c.deleted_at is null
      where a.authorization_id = $1";

impl Pending {
    fn from_row(row: &sovra_pg::tokio_postgres::Row) -> Pending {
        Pending {
            id: row.get("id"),
            authorization_id: row.get("authorization_id"),
            client_id: row.get("client_id"),
            user_id: row.get("user_id"),
            redirect_uri: row.get("redirect_uri"),
            scope: row.get("scope"),
            state: row.get("state"),
            status: row.get("status"),
            expired: row.get("expired"),
            client_name: row.get("client_name"),
            client_uri: row.get("client_uri"),
            logo_uri: row.get("logo_uri"),
        }
    }

    /// Refuses expired and no longer pending authorizations.
    fn check_open(&self) -> AuthResult<()> {
        if self.expired {
            return Err(not_found());
        }
        if self.status != "pending" {
            return Err(AuthError::validation(
                "authorization request cannot be processed",
            ));
        }
        Ok(())
    }

    fn client_json(&self) -> Value {
        json!({
            "id": self.client_id,
            "name": self.client_name.clone().unwrap_or_default(),
            "uri": self.client_uri.clone().unwrap_or_default(),
            "logo_uri": self.logo_uri.clone().unwrap_or_default(),
            // GoTrue's older field names.
            "client_id": self.client_id,
            "client_name": self.client_name.clone().unwrap_or_default(),
            "client_uri": self.client_uri.clone().unwrap_or_default(),
        })
    }

    /// Where the browser goes with the code (or the refusal), the state
    /// echoed.
    fn redirect(&self, params: &[(&str, &str)]) -> String {
        let mut all: Vec<(&str, &str)> = params.to_vec();
        if let Some(state) = self.state.as_deref().filter(|s| !s.is_empty()) {
            all.push(("state", state));
        }
        with_query(&self.redirect_uri, &all)
    }
}

#[derive(Deserialize)]
struct ConsentBody {
    #[serde(default)]
    action: String,
}

impl AuthService {
    /// Where `/oauth/authorize` sends the browser.
    fn consent_page(&self) -> String {
        let configured = self.config.oauth_server.consent_url.trim();
        let site = self.site_url();
        let site = site.trim_end_matches('/');
        if configured.is_empty() {
            format!("{site}/oauth/consent")
        } else if configured.starts_with('/') {
            format!("{site}{configured}")
        } else {
            configured.to_owned()
        }
    }

    /// `GET /oauth/authorize`.
    pub(crate) async fn oauth_authorize(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.limit(Bucket::SignIn, &ctx.ip_key()).await?;
        let param = |name: &str| ctx.query(name).filter(|v| !v.is_empty());
        let client_id =
            param("client_id").ok_or_else(|| AuthError::validation("client_id is required"))?;
        let redirect_uri = param("redirect_uri")
            .ok_or_else(|| AuthError::validation("redirect_uri is required"))?;
        let unknown = || AuthError::bad_request("oauth_client_not_found", "invalid client_id");
        let client_id = Uuid::parse_str(&client_id).map_err(|_| unknown())?;
        let db = self.pool.get().await?;
        let client = self
            .oauth_client(&db, client_id)
            .await?
            .ok_or_else(unknown)?;
        if !client.redirect_uris.contains(&redirect_uri) {
            return Err(AuthError::validation("invalid redirect_uri"));
        }
        if !client.allows_grant("authorization_code") {
            return Err(AuthError::validation(
                "client is not allowed to use the authorization_code grant",
            ));
        }
        let response_type = param("response_type").unwrap_or_else(|| "code".to_owned());
        if response_type != "code" {
            return Err(AuthError::validation(
                "Only response_type=code is supported",
            ));
        }
        let challenge = param("code_challenge");
        let method = param("code_challenge_method");
        let (Some(challenge), Some(method)) = (challenge, method) else {
            return Err(AuthError::validation(
                "PKCE flow requires both code_challenge and code_challenge_method",
            ));
        };
        if !method.eq_ignore_ascii_case("s256") {
            return Err(AuthError::validation(
                "code_challenge_method must be 'S256'",
            ));
        }
        if !valid_challenge(&challenge) {
            return Err(AuthError::validation(
                "code_challenge must be between 43 and 128 characters",
            ));
        }
        let scope_text = param("scope").unwrap_or_else(|| DEFAULT_SCOPE.to_owned());
        let scopes = parse_scopes(&scope_text).map_err(AuthError::validation)?;
        if scopes.is_empty() {
            return Err(AuthError::validation("scope cannot be empty"));
        }
        if !scopes_within(&scopes, &client.allowed_scopes()) {
            return Err(AuthError::validation(
                "requested scope is not allowed for this client",
            ));
        }
        let state = param("state");
        let nonce = param("nonce");
        let resource = param("resource");
        for (name, value) in [
            ("state", &state),
            ("nonce", &nonce),
            ("resource", &resource),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > 2048) {
                return Err(AuthError::validation(format!(
                    "{name} cannot exceed 2048 characters"
                )));
            }
        }
        let authorization_id = crypto::random_alnum(32);
        // Authorizations an hour past their end go, a few at a time, as
        // new ones come.
        db.c_execute(
            "with gone as (
               delete from auth.oauth_authorizations where id in (
                 select id from auth.oauth_authorizations
                  where expires_at < now() - interval '1 hour' limit 100))
             insert into auth.oauth_authorizations (id, authorization_id, client_id, redirect_uri, scope,
                 state, resource, code_challenge, code_challenge_method, nonce, expires_at)
             values ($1, $2, $3, $4, $5, $6, $7, $8, 's256', $9, now() + make_interval(secs => $10))",
            &[
                &Uuid::new_v4(),
                &authorization_id,
                &client.id,
                &redirect_uri,
                &scopes.join(" "),
                &state,
                &resource,
                &challenge,
                &nonce,
                &(AUTHORIZATION_TTL_SECS as f64),
            ],
        )
        .await?;
        let target = with_query(
            &self.consent_page(),
            &[("authorization_id", &authorization_id)],
        );
        let location = HeaderValue::from_str(&target).map_err(|_| AuthError::internal())?;
        Ok((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
    }

    /// `GET /oauth/authorizations/{id}`: what the consent page shows; the
    /// first signed-in user to read it owns it. A consent that already
    /// covers the scopes approves it at once (`{redirect_url}`).
    pub(crate) async fn oauth_authorization(
        &self,
        ctx: &Ctx<'_>,
        authorization_id: &str,
    ) -> AuthResult<Response> {
        self.limit(Bucket::SignIn, &ctx.ip_key()).await?;
        let mut db = self.pool.get().await?;
        let current = self.current(ctx, &db).await?;
        let user_id = current.user.id;
        let tx = db.transaction().await?;
        let row = tx
            .c_query_opt(
                &format!("{PENDING_SQL} for update of a"),
                &[&authorization_id],
            )
            .await?
            .ok_or_else(not_found)?;
        let pending = Pending::from_row(&row);
        pending.check_open()?;
        match pending.user_id {
            Some(owner) if owner != user_id => return Err(not_found()),
            Some(_) => {}
            None => {
                tx.c_execute(
                    "update auth.oauth_authorizations set user_id = $2 where id = $1",
                    &[&pending.id, &user_id],
                )
                .await?;
                let consent = tx
                    .c_query_opt(
                        "select scopes from auth.oauth_consents
                          where user_id = $1 and client_id = $2 and revoked_at is null",
                        &[&user_id, &pending.client_id],
                    )
                    .await?;
                let granted = consent
                    .map(|row| parse_scopes(row.get::<_, &str>(0)).unwrap_or_default())
                    .unwrap_or_default();
                let wanted = parse_scopes(&pending.scope).unwrap_or_default();
                if !granted.is_empty() && scopes_within(&wanted, &granted) {
                    let redirect_url = self.approve(&tx, &pending, user_id).await?;
                    tx.commit().await?;
                    return Ok(ok_json(json!({"redirect_url": redirect_url})));
                }
            }
        }
        tx.commit().await?;
        Ok(ok_json(json!({
            "authorization_id": pending.authorization_id,
            "redirect_uri": pending.redirect_uri,
            "client": pending.client_json(),
            "user": {"id": user_id, "email": current.user.email},
            "scope": pending.scope,
        })))
    }

    /// Approves `pending` for `user_id`: stores the consent and the code's
    /// hash, and returns the redirect carrying the code.
    async fn approve(
        &self,
        tx: &impl sovra_pg::GenericClient,
        pending: &Pending,
        user_id: Uuid,
    ) -> AuthResult<String> {
        let code = crypto::random_alnum(CODE_LEN);
        tx.c_execute(
            "update auth.oauth_authorizations
                set status = 'approved', approved_at = now(), authorization_code = $2
              where id = $1",
            &[&pending.id, &crypto::sha256_hex(&code)],
        )
        .await?;
        tx.c_execute(
            "insert into auth.oauth_consents (id, user_id, client_id, scopes, granted_at)
             values (gen_random_uuid(), $1, $2, $3, now())
             on conflict (user_id, client_id) do update
                set scopes = case when auth.oauth_consents.revoked_at is null
                                  then (select string_agg(distinct s, ' ')
                                          from unnest(string_to_array(auth.oauth_consents.scopes || ' ' || excluded.scopes, ' ')) s
                                         where s <> '')
                                  else excluded.scopes end,
                    granted_at = now(), revoked_at = null",
            &[&user_id, &pending.client_id, &pending.scope],
        )
        .await?;
        Ok(pending.redirect(&[("code", &code)]))
    }

    /// `POST /oauth/authorizations/{id}/consent` with `{action: "approve" |
    /// "deny"}`: the redirect back to the client.
    pub(crate) async fn oauth_consent(
        &self,
        ctx: &Ctx<'_>,
        authorization_id: &str,
    ) -> AuthResult<Response> {
        self.limit(Bucket::SignIn, &ctx.ip_key()).await?;
        let body: ConsentBody = ctx.json()?;
        if body.action != "approve" && body.action != "deny" {
            return Err(AuthError::validation("action must be 'approve' or 'deny'"));
        }
        let mut db = self.pool.get().await?;
        let current = self.current(ctx, &db).await?;
        let user_id = current.user.id;
        let tx = db.transaction().await?;
        let row = tx
            .c_query_opt(
                &format!("{PENDING_SQL} for update of a"),
                &[&authorization_id],
            )
            .await?
            .ok_or_else(not_found)?;
        let pending = Pending::from_row(&row);
        if pending.user_id != Some(user_id) {
            return Err(not_found());
        }
        pending.check_open()?;
        let redirect_url = if body.action == "approve" {
            self.approve(&tx, &pending, user_id).await?
        } else {
            tx.c_execute(
                "update auth.oauth_authorizations set status = 'denied' where id = $1",
                &[&pending.id],
            )
            .await?;
            pending.redirect(&[
                ("error", "access_denied"),
                ("error_description", "User denied the request"),
            ])
        };
        tx.commit().await?;
        Ok(ok_json(json!({"redirect_url": redirect_url})))
    }

    /// `GET /user/oauth/grants`: the clients the user consented to.
    pub(crate) async fn oauth_list_grants(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.limit(Bucket::Verify, &ctx.ip_key()).await?;
        let db = self.pool.get().await?;
        let current = self.current(ctx, &db).await?;
        let rows = db
            .c_query(
                "select c.id, c.client_name, c.client_uri, c.logo_uri, g.scopes, g.granted_at
                   from auth.oauth_consents g
                   join auth.oauth_clients c on c.id = g.client_id and c.deleted_at is null
                  where g.user_id = $1 and g.revoked_at is null
                  order by g.granted_at desc",
                &[&current.user.id],
            )
            .await?;
        let grants: Vec<Value> = rows
            .iter()
            .map(|row| {
                let id: Uuid = row.get(0);
                let text = |i: usize| row.get::<_, Option<String>>(i).unwrap_or_default();
                json!({
                    "client": {"id": id, "name": text(1), "uri": text(2), "logo_uri": text(3)},
                    "scopes": parse_scopes(row.get::<_, &str>(4)).unwrap_or_default(),
                    "granted_at": time::rfc3339(row.get(5)),
                })
            })
            .collect();
        Ok(ok_json(Value::Array(grants)))
    }

    /// `DELETE /user/oauth/grants?client_id=`: revokes the consent and ends
    /// the client's sessions of this user.
    pub(crate) async fn oauth_revoke_grant(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.limit(Bucket::Verify, &ctx.ip_key()).await?;
        let client_id = ctx
            .query("client_id")
            .filter(|v| !v.is_empty())
            .ok_or_else(|| AuthError::validation("client_id is required"))?;
        let client_id = Uuid::parse_str(&client_id)
            .map_err(|_| AuthError::validation("invalid client_id format"))?;
        let mut db = self.pool.get().await?;
        let current = self.current(ctx, &db).await?;
        let tx = db.transaction().await?;
        let revoked = tx
            .c_execute(
                "update auth.oauth_consents set revoked_at = now()
                  where user_id = $1 and client_id = $2 and revoked_at is null",
                &[&current.user.id, &client_id],
            )
            .await?;
        if revoked == 0 {
            return Err(AuthError::not_found(
                "oauth_consent_not_found",
                "No active grant found for this client",
            ));
        }
        tx.c_execute(
            "delete from auth.sessions where user_id = $1 and oauth_client_id = $2",
            &[&current.user.id, &client_id],
        )
        .await?;
        self.audit(
            &tx,
            ctx,
            "token_revoked",
            Some(&current.user),
            "",
            json!({"oauth_client_id": client_id, "action": "revoke_oauth_grant"}),
        )
        .await?;
        tx.commit().await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::valid_challenge;

    #[test]
    fn challenges_are_43_to_128_unreserved_characters() {
        assert!(valid_challenge(&"a".repeat(43)));
        assert!(valid_challenge(&"A-._~9".repeat(20)));
        assert!(!valid_challenge(&"a".repeat(42)));
        assert!(!valid_challenge(&"a".repeat(129)));
        assert!(!valid_challenge(&format!("{}+", "a".repeat(43))));
    }
}
