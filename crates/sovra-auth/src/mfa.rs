//! MFA: TOTP, phone and WebAuthn factors — enroll, challenge, verify,
//! unenroll. WebAuthn's options and checks are in [`crate::passkeys`].

use crate::db::Cached as _;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};
use sovra_pg::GenericClient;
use uuid::Uuid;

use crate::error::{AuthError, AuthResult};
use crate::hooks::{self, HookName};
use crate::limits::Bucket;
use crate::mail::Kind;
use crate::passkeys::FactorParams;
use crate::session::{OneTime, Via};
use crate::{AuthService, Ctx, attempts, crypto, ok_json, secret, time, user};

/// Challenges expire after five minutes.
const CHALLENGE_TTL: i64 = 300;

#[derive(Deserialize, Default)]
#[serde(default)]
struct EnrollBody {
    factor_type: Option<String>,
    friendly_name: Option<String>,
    issuer: Option<String>,
    phone: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct VerifyBody {
    challenge_id: Option<String>,
    code: Option<String>,
    webauthn: Option<FactorParams>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChallengeBody {
    webauthn: Option<FactorParams>,
}

fn factor_not_found() -> AuthError {
    AuthError::not_found("mfa_factor_not_found", "Factor not found")
}

impl AuthService {
    pub(crate) fn refuse_anonymous(&self, current: &crate::Current) -> AuthResult<()> {
        if current.user.is_anonymous {
            return Err(AuthError::forbidden(
                "no_authorization",
                "Anonymous user not allowed to perform these actions",
            ));
        }
        Ok(())
    }

    pub(crate) async fn enroll(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let body: EnrollBody = ctx.json()?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = self.current(ctx, &tx).await?;
        self.refuse_anonymous(&current)?;
        let user = &current.user;
        let factor_type = body.factor_type.unwrap_or_default();
        if !matches!(factor_type.as_str(), "totp" | "phone" | "webauthn") {
            return Err(AuthError::validation(
                "factor_type needs to be totp, phone or webauthn",
            ));
        }
        if factor_type == "webauthn" && !self.config.webauthn.mfa {
            return Err(AuthError::unprocessable(
                "mfa_webauthn_enroll_not_enabled",
                "MFA enroll with WebAuthn is disabled",
            ));
        }
        if user.has_verified_factor() && current.aal != "aal2" {
            return Err(AuthError::forbidden(
                "insufficient_aal",
                "AAL2 required to enroll a new factor",
            ));
        }
        let counts = tx
            .c_query_one(
                "select count(*) filter (where status = 'verified'),
                        count(*) filter (where friendly_name = $2)
                   from auth.mfa_factors where user_id = $1",
                &[&user.id, &body.friendly_name.clone().unwrap_or_default()],
            )
            .await?;
        let verified: i64 = counts.get(0);
        let same_name: i64 = counts.get(1);
        if verified >= self.config.mfa_max_factors {
            return Err(AuthError::unprocessable(
                "too_many_enrolled_mfa_factors",
                "Maximum number of verified factors reached, unenroll to continue",
            ));
        }
        if same_name > 0 {
            return Err(AuthError::unprocessable(
                "mfa_factor_name_conflict",
                format!(
                    "A factor with the friendly name \"{}\" for this user already exists",
                    body.friendly_name.unwrap_or_default()
                ),
            ));
        }
        let id = Uuid::new_v4();
        let friendly = body.friendly_name.unwrap_or_default();
        let response = if factor_type == "totp" {
            let secret = crypto::base32_encode(&crypto::random_bytes(20));
            let issuer = body.issuer.filter(|i| !i.is_empty()).unwrap_or_else(|| {
                let site = self.site_url();
                site.split("://")
                    .nth(1)
                    .unwrap_or(&site)
                    .split('/')
                    .next()
                    .unwrap_or("sovra")
                    .to_owned()
            });
            let account = if user.email.is_empty() {
                &user.phone
            } else {
                &user.email
            };
            let uri = crypto::totp_uri(&issuer, account, &secret);
            // At rest the secret is sealed under the service key, bound to
            // this factor's id.
            let sealed = self
                .key
                .seal(secret.as_bytes(), id.as_bytes())
                .ok_or_else(AuthError::internal)?;
            tx.c_execute(
                "insert into auth.mfa_factors (id, user_id, friendly_name, factor_type, status, created_at, updated_at, secret)
                 values ($1, $2, $3, 'totp', 'unverified', now(), now(), $4)",
                &[&id, &user.id, &friendly, &sealed],
            )
            .await?;
            json!({
                "id": id,
                "type": "totp",
                "friendly_name": friendly,
                "totp": {"qr_code": crypto::qr_svg(&uri), "secret": secret, "uri": uri},
            })
        } else if factor_type == "webauthn" {
            // The credential comes with the first verification.
            tx.c_execute(
                "insert into auth.mfa_factors (id, user_id, friendly_name, factor_type, status, created_at, updated_at)
                 values ($1, $2, $3, 'webauthn', 'unverified', now(), now())",
                &[&id, &user.id, &friendly],
            )
            .await?;
            json!({"id": id, "type": "webauthn", "friendly_name": friendly})
        } else {
            let phone = body
                .phone
                .as_deref()
                .and_then(user::normalize_phone)
                .ok_or_else(|| {
                    AuthError::validation("Invalid phone number format (E.164 required)")
                })?;
            tx.c_execute(
                "insert into auth.mfa_factors (id, user_id, friendly_name, factor_type, status, created_at, updated_at, phone)
                 values ($1, $2, $3, 'phone', 'unverified', now(), now(), $4)",
                &[&id, &user.id, &friendly, &phone],
            )
            .await?;
            json!({"id": id, "type": "phone", "friendly_name": friendly, "phone": phone})
        };
        self.audit(
            &tx,
            ctx,
            "factor_in_progress",
            Some(user),
            "",
            json!({"factor_id": id, "factor_type": factor_type}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(response))
    }

    /// The caller's factor `id`: (type, secret, phone, status).
    async fn own_factor(
        &self,
        tx: &impl sovra_pg::GenericClient,
        user_id: Uuid,
        id: &str,
    ) -> AuthResult<(Uuid, String, Option<String>, Option<String>, String)> {
        let id = Uuid::parse_str(id).map_err(|_| factor_not_found())?;
        let row = tx
            .c_query_opt(
                "select factor_type, secret, phone, status from auth.mfa_factors where id = $1 and user_id = $2",
                &[&id, &user_id],
            )
            .await?
            .ok_or_else(factor_not_found)?;
        Ok((id, row.get(0), row.get(1), row.get(2), row.get(3)))
    }

    /// The TOTP key of `factor_id` from its stored secret: sealed, or
    /// plaintext from before secrets were sealed (an import from
    /// Supabase, an older Sovra), which is sealed now, on its first use.
    async fn totp_key(
        &self,
        tx: &impl sovra_pg::GenericClient,
        factor_id: Uuid,
        stored: Option<&str>,
    ) -> AuthResult<Option<Vec<u8>>> {
        let Some(stored) = stored else {
            return Ok(None);
        };
        if secret::is_sealed(stored) {
            let opened = self.key.open(stored, factor_id.as_bytes());
            if opened.is_none() {
                tracing::warn!(%factor_id, "a TOTP secret does not open with this server's auth.key");
            }
            return Ok(opened
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|b32| crypto::base32_decode(&b32)));
        }
        let key = crypto::base32_decode(stored);
        if key.is_some()
            && let Some(sealed) = self.key.seal(stored.as_bytes(), factor_id.as_bytes())
        {
            tx.c_execute(
                "update auth.mfa_factors set secret = $2 where id = $1 and secret = $3",
                &[&factor_id, &sealed, &stored],
            )
            .await?;
        }
        Ok(key)
    }

    pub(crate) async fn challenge(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        let body: ChallengeBody = ctx.json()?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = self.current(ctx, &tx).await?;
        self.refuse_anonymous(&current)?;
        let (factor_id, factor_type, _, phone, status) =
            self.own_factor(&tx, current.user.id, id).await?;
        let challenge_id = Uuid::new_v4();
        let mut otp_hash: Option<String> = None;
        let mut webauthn: Option<(Value, Value)> = None;
        if factor_type == "webauthn" {
            let params = body.webauthn.unwrap_or_default();
            webauthn = Some(
                self.webauthn_factor_challenge(
                    &tx,
                    &current.user,
                    factor_id,
                    status == "verified",
                    &params,
                )
                .await?,
            );
        }
        if factor_type == "phone" {
            let phone = phone.unwrap_or_default();
            let code = crypto::otp_code();
            let hash = crypto::token_hash(&phone, &code);
            otp_hash = Some(crypto::stored_token(&hash));
            let one_time = OneTime { code, hash };
            self.deliver(Kind::Sms, &phone, &one_time, "sms", "", &current.user, "")
                .await?;
        }
        let ip = ctx.ip.unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        let session_data = webauthn.as_ref().map(|(_, data)| data.clone());
        tx.c_execute(
            "insert into auth.mfa_challenges (id, factor_id, created_at, ip_address, otp_code, web_authn_session_data)
             values ($1, $2, now(), $3, $4, $5)",
            &[&challenge_id, &factor_id, &ip, &otp_hash, &session_data],
        )
        .await?;
        tx.c_execute(
            "update auth.mfa_factors set last_challenged_at = clock_timestamp(), updated_at = now() where id = $1",
            &[&factor_id],
        )
        .await?;
        self.audit(
            &tx,
            ctx,
            "challenge_created",
            Some(&current.user),
            "",
            json!({"factor_id": factor_id}),
        )
        .await?;
        tx.commit().await?;
        let mut answer = json!({
            "id": challenge_id,
            "type": factor_type,
            "expires_at": time::now_unix() + CHALLENGE_TTL,
        });
        if let (Some((options, _)), Value::Object(map)) = (webauthn, &mut answer) {
            map.insert("webauthn".to_owned(), options);
        }
        Ok(ok_json(answer))
    }

    pub(crate) async fn verify_factor(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        let body: VerifyBody = ctx.json()?;
        self.limit(Bucket::Verify, &ctx.ip_key()).await?;
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = self.current(ctx, &tx).await?;
        self.refuse_anonymous(&current)?;
        let session_id = current.session_id.ok_or_else(|| {
            AuthError::forbidden("session_not_found", "MFA verification requires a session")
        })?;
        let (factor_id, factor_type, secret, phone, _) =
            self.own_factor(&tx, current.user.id, id).await?;
        let challenge_id = body
            .challenge_id
            .as_deref()
            .and_then(|c| Uuid::parse_str(c).ok())
            .ok_or_else(|| {
                AuthError::not_found("mfa_challenge_not_found", "Challenge not found")
            })?;
        let row = tx
            .c_query_opt(
                "select extract(epoch from now() - created_at)::float8, otp_code, created_at,
                        web_authn_session_data
                   from auth.mfa_challenges
                  where id = $1 and factor_id = $2 and verified_at is null
                  for update",
                &[&challenge_id, &factor_id],
            )
            .await?
            .ok_or_else(|| {
                AuthError::not_found("mfa_challenge_not_found", "Challenge not found")
            })?;
        let age: f64 = row.get(0);
        let otp_code: Option<String> = row.get(1);
        let challenged_at: std::time::SystemTime = row.get(2);
        let session_data: Option<Value> = row.get(3);
        if age > CHALLENGE_TTL as f64 {
            tx.c_execute(
                "delete from auth.mfa_challenges where id = $1",
                &[&challenge_id],
            )
            .await?;
            tx.commit().await?;
            return Err(AuthError::unprocessable(
                "mfa_challenge_expired",
                format!(
                    "MFA challenge {challenge_id} has expired, verify against another challenge or create a new challenge."
                ),
            ));
        }
        // A factor that keeps failing rests before its next attempt.
        let free = self.config.code_attempts;
        let wait = attempts::wait_secs(&tx, factor_id, attempts::Kind::Factor, free).await?;
        if wait > 0 {
            return Err(AuthError::rate_limited(
                "over_request_rate_limit",
                format!("Too many failed MFA attempts: try again in {wait} seconds"),
                wait,
            ));
        }
        let code = body.code.unwrap_or_default();
        let mut accepted_step = None;
        let mut webauthn_credential: Option<Value> = None;
        let mut webauthn_refusal = String::new();
        let ok = if factor_type == "webauthn" {
            match self
                .webauthn_factor_verify(&tx, factor_id, session_data.as_ref(), body.webauthn)
                .await?
            {
                Ok(credential) => {
                    webauthn_credential = Some(credential);
                    true
                }
                Err(reason) => {
                    webauthn_refusal = reason;
                    false
                }
            }
        } else if factor_type == "totp" {
            let key = self.totp_key(&tx, factor_id, secret.as_deref()).await?;
            let matched = key
                .and_then(|key| crypto::totp_match(&key, &code, time::now_unix().unsigned_abs()));
            // A code is good once: only a step after the last accepted one.
            // The factor's row lock serialises concurrent verifications, and
            // the next statement sees a step the previous one committed.
            tx.c_execute(
                "select 1 from auth.mfa_factors where id = $1 for update",
                &[&factor_id],
            )
            .await?;
            let last: Option<i64> = tx
                .c_query_opt(
                    "select last_step from sovra.mfa_totp_steps where factor_id = $1",
                    &[&factor_id],
                )
                .await?
                .map(|r| r.get(0));
            accepted_step = matched
                .and_then(|step| i64::try_from(step).ok())
                .filter(|step| last.is_none_or(|last| *step > last));
            accepted_step.is_some()
        } else {
            let expected = otp_code.unwrap_or_default();
            let got =
                crypto::stored_token(&crypto::token_hash(&phone.unwrap_or_default(), code.trim()));
            !expected.is_empty() && crypto::equal(&expected, &got)
        };
        if self.hook_enabled(HookName::MfaVerificationAttempt) {
            // GoTrue's MFA verification attempt hook: told whether the code
            // was right, it may reject the attempt, which signs the user
            // out everywhere and counts no failure.
            let input = json!({
                "metadata": hooks::metadata(HookName::MfaVerificationAttempt, ctx.ip),
                "user_id": current.user.id,
                "factor_id": factor_id,
                "factor_type": factor_type,
                "valid": ok,
            });
            let output = self
                .run_hook(&tx, HookName::MfaVerificationAttempt, &input)
                .await?;
            if let Some((message, _)) = hooks::rejection(&output)? {
                tx.c_execute(
                    "delete from auth.sessions where user_id = $1",
                    &[&current.user.id],
                )
                .await?;
                tx.commit().await?;
                let message = if message.is_empty() {
                    "Further MFA verification attempts will be rejected.".to_owned()
                } else {
                    message
                };
                return Err(AuthError::forbidden("mfa_verification_rejected", message));
            }
        }
        if !ok {
            // Counted per challenge (which dies after `code_attempts`
            // failures: ask for a new one) and per factor (back-off).
            let failures = attempts::record_failure(
                &tx,
                challenge_id,
                attempts::Kind::Challenge,
                challenged_at,
            )
            .await?;
            attempts::record_failure(
                &tx,
                factor_id,
                attempts::Kind::Factor,
                std::time::UNIX_EPOCH,
            )
            .await?;
            if failures >= i64::from(free) {
                tx.c_execute(
                    "delete from auth.mfa_challenges where id = $1",
                    &[&challenge_id],
                )
                .await?;
                attempts::clear(&tx, challenge_id, attempts::Kind::Challenge).await?;
            }
            self.audit(
                &tx,
                ctx,
                "verification_attempted",
                Some(&current.user),
                "",
                json!({"factor_id": factor_id, "success": false}),
            )
            .await?;
            tx.commit().await?;
            return Err(AuthError::unprocessable(
                "mfa_verification_failed",
                match factor_type.as_str() {
                    "totp" => "Invalid TOTP code entered".to_owned(),
                    "webauthn" => format!("WebAuthn verification failed: {webauthn_refusal}"),
                    _ => "Invalid MFA Phone code entered".to_owned(),
                },
            ));
        }
        tx.c_execute(
            "update auth.mfa_challenges set verified_at = now() where id = $1",
            &[&challenge_id],
        )
        .await?;
        if let Some(step) = accepted_step {
            tx.c_execute(
                "insert into sovra.mfa_totp_steps (factor_id, last_step) values ($1, $2)
                 on conflict (factor_id) do update set last_step = greatest(sovra.mfa_totp_steps.last_step, excluded.last_step)",
                &[&factor_id, &step],
            )
            .await?;
        }
        attempts::clear(&tx, factor_id, attempts::Kind::Factor).await?;
        attempts::clear(&tx, challenge_id, attempts::Kind::Challenge).await?;
        if let Some(credential) = &webauthn_credential {
            tx.c_execute(
                "update auth.mfa_factors set web_authn_credential = $2 where id = $1",
                &[&factor_id, credential],
            )
            .await?;
        }
        tx.c_execute(
            "update auth.mfa_factors set status = 'verified', updated_at = now() where id = $1",
            &[&factor_id],
        )
        .await?;
        tx.c_execute(
            "delete from auth.mfa_factors where user_id = $1 and factor_type = $2 and status = 'unverified' and id <> $3",
            &[&current.user.id, &factor_type, &factor_id],
        )
        .await?;
        let method = match factor_type.as_str() {
            "totp" => "totp",
            "webauthn" => "mfa/webauthn",
            _ => "mfa/phone",
        };
        tx.c_execute(
            "update auth.sessions set aal = 'aal2', factor_id = $2, updated_at = now() where id = $1",
            &[&session_id, &factor_id],
        )
        .await?;
        tx.c_execute(
            "insert into auth.mfa_amr_claims (id, session_id, created_at, updated_at, authentication_method)
             values (gen_random_uuid(), $1, now(), now(), $2)
             on conflict (session_id, authentication_method) do update set updated_at = now()",
            &[&session_id, &method],
        )
        .await?;
        // The session's old refresh tokens cannot yield an aal2 token.
        tx.c_execute(
            "update auth.refresh_tokens set revoked = true, updated_at = now() - interval '1 day'
              where session_id = $1 and not revoked",
            &[&session_id],
        )
        .await?;
        let refresh = self
            .new_refresh_token(&tx, current.user.id, session_id, None)
            .await?;
        let user = user::by_id(&tx, current.user.id)
            .await?
            .ok_or_else(AuthError::internal)?;
        let session = self
            .token_response(&tx, ctx, &user, session_id, &refresh, Via::Mfa)
            .await?;
        self.audit(
            &tx,
            ctx,
            "verification_attempted",
            Some(&user),
            "",
            json!({"factor_id": factor_id, "success": true}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(session))
    }

    /// Sessions of `user_id` that reached aal2 with `factor_id` (now
    /// deleted) go back to aal1: their next tokens say so, their checks
    /// see it, and the factor's method leaves their `amr`.
    pub(crate) async fn downgrade_sessions_of(
        &self,
        tx: &impl GenericClient,
        user_id: Uuid,
        factor_id: Uuid,
    ) -> AuthResult<()> {
        tx.c_execute(
            "with downgraded as (
               update auth.sessions set aal = 'aal1', factor_id = null, updated_at = now()
                where user_id = $1 and factor_id = $2 returning id)
             delete from auth.mfa_amr_claims c using downgraded d
              where c.session_id = d.id and c.authentication_method in ('totp', 'mfa/phone', 'mfa/webauthn')",
            &[&user_id, &factor_id],
        )
        .await?;
        Ok(())
    }

    pub(crate) async fn unenroll(&self, ctx: &Ctx<'_>, id: &str) -> AuthResult<Response> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let current = self.current(ctx, &tx).await?;
        self.refuse_anonymous(&current)?;
        let (factor_id, _, _, _, status) = self.own_factor(&tx, current.user.id, id).await?;
        if status == "verified" && current.aal != "aal2" {
            return Err(AuthError::new(
                StatusCode::FORBIDDEN,
                "insufficient_aal",
                "AAL2 required to unenroll verified factor",
            ));
        }
        tx.c_execute("delete from auth.mfa_factors where id = $1", &[&factor_id])
            .await?;
        self.downgrade_sessions_of(&tx, current.user.id, factor_id)
            .await?;
        self.audit(
            &tx,
            ctx,
            "factor_unenrolled",
            Some(&current.user),
            "",
            json!({"factor_id": factor_id}),
        )
        .await?;
        tx.commit().await?;
        Ok(ok_json(json!({"id": factor_id})))
    }

    /// The factors of `user_id` as the admin API lists them.
    pub(crate) async fn factors_of(
        &self,
        client: &impl sovra_pg::GenericClient,
        user_id: Uuid,
    ) -> AuthResult<Value> {
        let found = user::by_id(client, user_id)
            .await?
            .ok_or_else(|| AuthError::not_found("user_not_found", "User not found"))?;
        Ok(found.factors.unwrap_or_else(|| json!([])))
    }
}
