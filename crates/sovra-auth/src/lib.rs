//! Sovra's GoTrue-compatible `/auth/v1`, as auth-js drives it.
//!
//! [`AuthService::handle`] takes one request (path relative to `/auth/v1`)
//! and answers it; the server crate resolves the tenant and checks the API
//! key before calling it. State lives in the `auth` schema (GoTrue's tables,
//! migration 0005) and, for Sovra's extensions, in `sovra.invite_codes` and
//! `sovra.api_keys` (migration 0006); the service connects as
//! `supabase_auth_admin`, never as a superuser.
//!
//! Secrets are kept only as hashes: passwords (argon2id), refresh tokens
//! and link/OTP tokens (SHA-256), invite codes and API keys (SHA-256). Every
//! comparison of a presented secret with a stored one is a lookup by its
//! hash or a constant-time comparison.

mod account;
mod admin;
pub mod apikeys;
mod attempts;
pub mod crypto;
mod db;
mod disabled;
pub mod error;
pub mod external;
#[cfg(test)]
mod fuzz;
pub mod hooks;
pub mod limits;
mod linking;
pub mod mail;
mod mfa;
pub mod oauth_server;
pub mod passkeys;
pub mod password;
pub mod redirect;
pub mod refresh_batch;
pub mod secret;
pub mod session;
mod shared_limits;
pub mod time;
pub mod user;
pub mod webauthn;

use crate::db::Cached as _;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse as _, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use sovra_jwt::KeySet;
use sovra_pg::Pool;
use uuid::Uuid;

pub use apikeys::ApiKeyCache;
pub use error::{AuthError, AuthResult};
use limits::{Bucket, Cidr, Limit, Limiter};
use mail::{Kind, Sender, Template};
use password::{Hasher, Policy};
use user::User;

/// Rate limits, each `max` events per window (0: off).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    pub sign_in: Limit,
    pub verify: Limit,
    pub refresh: Limit,
    pub otp: Limit,
    pub email_sent: Limit,
    pub anonymous: Limit,
    /// Mails of the whole project (all recipients together), as a
    /// tenant's `mails_per_hour` quota sets it; 0: off.
    pub email_sent_project: Limit,
}

/// Everything Auth can be told.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Where links in mail lead by default and what `redirect_to` must match.
    pub site_url: String,
    /// Other allowed `redirect_to` URLs: GoTrue's globs (`*` within a host
    /// label or path segment, `**` across), matched on the parsed URL
    /// ([`redirect`]).
    pub redirect_urls: Vec<String>,
    /// The API's public URL (links in mail, the `iss` claim).
    pub external_url: String,
    pub jwt_expiry: i64,
    pub jwt_aud: String,
    pub disable_signup: bool,
    pub email_autoconfirm: bool,
    pub phone_autoconfirm: bool,
    pub anonymous_users: bool,
    pub password: Policy,
    pub refresh_reuse_interval: i64,
    /// Sessions end this many seconds after sign-in (0: never).
    pub session_timebox: i64,
    /// Sessions end after this many seconds without a refresh (0: never).
    pub session_inactivity: i64,
    pub otp_expiry: i64,
    pub email_max_frequency: i64,
    pub secure_password_change: bool,
    pub double_confirm_changes: bool,
    pub invite_only: bool,
    pub mfa_max_factors: i64,
    pub limits: RateLimits,
    pub trusted_proxies: Vec<Cidr>,
    /// Threads that hash passwords (0: one per core).
    pub hash_concurrency: usize,
    /// Requests that may wait for a hashing thread; more get 429.
    pub hash_queue: usize,
    pub admin_roles: Vec<String>,
    pub smtp_url: Option<String>,
    pub smtp_from: String,
    pub templates_dir: Option<PathBuf>,
    pub mailbox_dir: PathBuf,
    /// The service key's file (`<data_dir>/auth.key`), made on first
    /// start; `None`: a random key per process.
    pub key_file: Option<PathBuf>,
    /// A secret every instance shares (the configured `jwt.secret`): the
    /// service key is derived from it, so instances agree without sharing
    /// `auth.key`.
    pub shared_secret: Option<secret::Redacted>,
    /// Failed guesses one issued code or MFA challenge takes before it is
    /// invalidated.
    pub code_attempts: u32,
    /// Auth hooks (GoTrue's `GOTRUE_HOOK_*`): PostgreSQL functions or HTTP
    /// endpoints called at fixed points ([`hooks`]).
    pub hooks: hooks::HookConfig,
    /// External identity providers (`signInWithIdToken`).
    pub external: external::ExternalConfig,
    /// Sovra as an OAuth 2.1 / OpenID Connect provider.
    pub oauth_server: oauth_server::OAuthServerConfig,
    /// Passkeys and WebAuthn MFA (`auth.webauthn.*`).
    pub webauthn: passkeys::WebAuthnConfig,
    /// Manual identity linking (`auth.manual_linking_enabled`).
    pub manual_linking: bool,
    /// Count rate limits in the database (`sovra.rate_limits`), shared by
    /// every node on it, instead of in this process
    /// (`server.shared_state`).
    pub shared_limits: bool,
}

impl AuthConfig {
    /// Defaults for a server at `external_url` keeping mail in `mailbox`.
    pub fn new(external_url: &str, mailbox_dir: PathBuf) -> AuthConfig {
        let minutes = |n: u64| std::time::Duration::from_secs(60 * n);
        AuthConfig {
            site_url: external_url.to_owned(),
            redirect_urls: Vec::new(),
            external_url: external_url.to_owned(),
            jwt_expiry: 3600,
            jwt_aud: "authenticated".to_owned(),
            disable_signup: false,
            email_autoconfirm: false,
            phone_autoconfirm: false,
            anonymous_users: false,
            password: Policy {
                min_length: 6,
                required: Vec::new(),
            },
            refresh_reuse_interval: 10,
            session_timebox: 0,
            session_inactivity: 0,
            otp_expiry: 3600,
            email_max_frequency: 60,
            secure_password_change: false,
            double_confirm_changes: true,
            invite_only: false,
            mfa_max_factors: 10,
            limits: RateLimits {
                sign_in: Limit {
                    max: 30,
                    window: minutes(5),
                },
                verify: Limit {
                    max: 30,
                    window: minutes(5),
                },
                refresh: Limit {
                    max: 150,
                    window: minutes(5),
                },
                otp: Limit {
                    max: 30,
                    window: minutes(5),
                },
                email_sent: Limit {
                    max: 30,
                    window: minutes(60),
                },
                anonymous: Limit {
                    max: 30,
                    window: minutes(60),
                },
                email_sent_project: Limit {
                    max: 0,
                    window: minutes(60),
                },
            },
            trusted_proxies: Vec::new(),
            hash_concurrency: 0,
            hash_queue: 64,
            admin_roles: vec!["service_role".to_owned(), "supabase_admin".to_owned()],
            smtp_url: None,
            smtp_from: "Sovra <noreply@localhost>".to_owned(),
            templates_dir: None,
            mailbox_dir,
            key_file: None,
            shared_secret: None,
            code_attempts: 5,
            hooks: hooks::HookConfig::default(),
            external: external::ExternalConfig::default(),
            oauth_server: oauth_server::OAuthServerConfig::default(),
            webauthn: passkeys::WebAuthnConfig::default(),
            manual_linking: false,
            shared_limits: false,
        }
    }
}

/// One tenant's auth service.
#[derive(Debug)]
pub struct AuthService {
    config: AuthConfig,
    pool: Pool,
    hasher: Hasher,
    limiter: Limiter,
    /// The database's buckets, when `config.shared_limits`.
    shared_limiter: shared_limits::SharedLimiter,
    sender: Sender,
    templates: BTreeMap<Kind, Template>,
    external_url: RwLock<Arc<str>>,
    /// `config.redirect_urls`, compiled.
    redirect_patterns: Vec<redirect::Pattern>,
    /// Seals TOTP secrets and derives refresh-token successors.
    key: secret::ServiceKey,
    /// Sovra API keys, for the gateway.
    pub api_keys: Arc<ApiKeyCache>,
    /// `config.hooks`, parsed.
    hooks: hooks::Hooks,
    /// External providers' key sets.
    provider_key_cache: external::KeyCache,
    /// Concurrent refreshes, rotated together in one commit.
    refresh_batch: refresh_batch::RefreshBatcher,
    /// The OAuth server's ID-token keys.
    id_keys: oauth_server::signing::KeyCache,
}

/// One request to `/auth/v1`.
pub struct AuthRequest<'a> {
    pub method: &'a Method,
    /// The path after `/auth/v1`, starting with `/`.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
    pub keys: &'a KeySet,
    /// The TCP peer.
    pub peer: Option<IpAddr>,
}

/// A request being answered: the parts plus what was derived from them.
pub(crate) struct Ctx<'a> {
    pub req: &'a AuthRequest<'a>,
    pub ip: Option<IpAddr>,
}

impl Ctx<'_> {
    pub(crate) fn query(&self, name: &str) -> Option<String> {
        crypto::query_param(self.req.query, name)
    }

    /// The JSON body; `{}` when empty.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> AuthResult<T> {
        let body: &[u8] = if self.req.body.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &self.req.body
        };
        serde_json::from_slice(body).map_err(|err| {
            AuthError::bad_request(
                "bad_json",
                format!("Could not parse request body as JSON: {err}"),
            )
        })
    }

    /// The key the client is rate-limited under (IPv6 by /64).
    pub(crate) fn ip_key(&self) -> String {
        self.ip
            .map_or_else(|| "unknown".to_owned(), limits::client_key)
    }

    /// The client's full address, for the audit log.
    pub(crate) fn ip_text(&self) -> String {
        self.ip
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    }

    pub(crate) fn user_agent(&self) -> Option<String> {
        self.req
            .headers
            .get("user-agent")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(512).collect())
    }
}

/// The signed-in caller of a 👤 endpoint.
pub(crate) struct Current {
    pub user: User,
    pub session_id: Option<Uuid>,
    pub aal: String,
    /// When the session began (Unix seconds).
    pub session_created: Option<i64>,
}

pub(crate) fn ok_json(value: Value) -> Response {
    (StatusCode::OK, axum::Json(value)).into_response()
}

impl AuthService {
    /// Builds the service. Fails on an invalid SMTP URL, unreadable
    /// templates or an invalid redirect URL pattern.
    pub fn new(config: AuthConfig, pool: Pool) -> Result<AuthService, String> {
        let redirect_patterns = config
            .redirect_urls
            .iter()
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                redirect::Pattern::compile(p)
                    .map_err(|err| format!("auth.redirect_urls: {p:?} {err}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let sender = Sender::new(
            config.smtp_url.as_deref(),
            &config.smtp_from,
            config.mailbox_dir.clone(),
        )?;
        let templates = mail::load_templates(config.templates_dir.as_deref())?;
        let hooks = hooks::Hooks::new(&config.hooks)?;
        let external_url = RwLock::new(Arc::from(config.external_url.as_str()));
        let mut key = match &config.key_file {
            Some(path) => secret::ServiceKey::load_or_create(path)?,
            None => secret::ServiceKey::random(),
        };
        if let Some(shared) = &config.shared_secret {
            key = key.shared(&shared.0);
        }
        Ok(AuthService {
            key,
            hasher: Hasher::new(config.hash_concurrency, config.hash_queue),
            limiter: Limiter::default(),
            shared_limiter: shared_limits::SharedLimiter::default(),
            sender,
            templates,
            external_url,
            redirect_patterns,
            api_keys: Arc::new(ApiKeyCache::default()),
            hooks,
            provider_key_cache: external::KeyCache::default(),
            refresh_batch: refresh_batch::RefreshBatcher::new(
                config.refresh_reuse_interval,
                config.session_inactivity,
            ),
            id_keys: oauth_server::signing::KeyCache::default(),
            config,
            pool,
        })
    }

    /// How the refresh batches went so far (for tests and benchmarks).
    pub fn refresh_batch_stats(&self) -> &refresh_batch::BatchStats {
        self.refresh_batch.stats()
    }

    /// Holds token refreshes before their next batch until the guard is
    /// dropped, so that a test can make one batch of known refreshes.
    #[doc(hidden)]
    pub async fn hold_refresh_batches(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.refresh_batch.hold().await
    }

    /// Sets the public URL once the listener is bound (tests bind port 0).
    pub fn set_external_url(&self, url: &str) {
        if let Ok(mut guard) = self.external_url.write() {
            *guard = Arc::from(url.trim_end_matches('/'));
        }
    }

    pub(crate) fn external_url(&self) -> Arc<str> {
        self.external_url.read().map_or_else(
            |_| Arc::from(self.config.external_url.as_str()),
            |g| g.clone(),
        )
    }

    /// The site URL (defaults to the external URL when it was not set).
    pub(crate) fn site_url(&self) -> String {
        if self.config.site_url.is_empty() || self.config.site_url == self.config.external_url {
            self.external_url().to_string()
        } else {
            self.config.site_url.clone()
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Password hashes queued or running now.
    pub fn hashes_in_flight(&self) -> usize {
        self.hasher.in_flight()
    }

    /// Loads the API-key cache from the database.
    pub async fn reload_api_keys(&self) -> AuthResult<()> {
        let client = self.pool.get().await?;
        self.api_keys.reload(&client).await
    }

    /// Answers one request.
    pub async fn handle(&self, req: AuthRequest<'_>) -> Response {
        let api_2024 = req
            .headers
            .get("x-supabase-api-version")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v >= "2024-01-01");
        let forwarded = req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let ip = limits::client_ip(req.peer, forwarded, &self.config.trusted_proxies);
        let ctx = Ctx { req: &req, ip };
        // Mail is sent only after the request's work (and its transaction)
        // is done, and only when it succeeded.
        let (routed, outbox) = mail::with_outbox(self.route(&ctx)).await;
        let routed = match routed {
            Ok(response) => self.flush_outbox(outbox).await.map(|()| response),
            Err(err) => Err(err),
        };
        let mut response = match routed {
            Ok(response) => response,
            Err(err) => err.render(api_2024),
        };
        if api_2024 {
            response.headers_mut().insert(
                "x-supabase-api-version",
                HeaderValue::from_static("2024-01-01"),
            );
        }
        response
    }

    /// Sends the mail a successful request queued.
    async fn flush_outbox(&self, outbox: Vec<mail::Outgoing>) -> AuthResult<()> {
        for message in &outbox {
            self.send_now(message).await?;
        }
        Ok(())
    }

    async fn route(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        let path = ctx.req.path.trim_end_matches('/');
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let method = ctx.req.method;
        if let Some(answer) = self.oauth_server_route(ctx, &segments).await {
            return answer;
        }
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["health"]) => Ok(ok_json(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "name": "GoTrue",
                "description": "Sovra Auth is a user registration and authentication API"
            }))),
            ("GET", ["settings"]) => Ok(self.settings()),
            ("GET", ["authorize"]) => self.authorize(ctx).await,
            ("GET" | "POST", ["callback"]) => self.callback(ctx).await,
            ("POST", ["signup"]) => self.signup(ctx).await,
            ("POST", ["token"]) => self.token(ctx).await,
            ("GET", ["user"]) => self.get_user(ctx).await,
            ("PUT", ["user"]) => self.update_user(ctx).await,
            ("POST", ["logout"]) => self.logout(ctx).await,
            ("POST", ["recover"]) => self.recover(ctx).await,
            ("POST", ["otp"] | ["magiclink"]) => self.otp(ctx).await,
            ("POST", ["verify"]) => self.verify_post(ctx).await,
            ("GET", ["verify"]) => self.verify_get(ctx).await,
            ("POST", ["resend"]) => self.resend(ctx).await,
            ("GET", ["reauthenticate"]) => self.reauthenticate(ctx).await,
            ("GET", ["sessions"]) => self.list_sessions(ctx).await,
            ("DELETE", ["sessions", id]) => self.delete_session(ctx, id).await,
            ("POST", ["factors"]) => self.enroll(ctx).await,
            ("POST", ["factors", id, "challenge"]) => self.challenge(ctx, id).await,
            ("POST", ["factors", id, "verify"]) => self.verify_factor(ctx, id).await,
            ("DELETE", ["factors", id]) => self.unenroll(ctx, id).await,
            ("POST", ["invite"]) => self.invite(ctx).await,
            (_, ["passkeys", ..] | ["admin", "users", _, "passkeys", ..]) => {
                self.route_passkeys(ctx, &segments).await
            }
            ("POST", ["sso"]) | ("GET" | "POST", ["sso", "saml", ..]) => self.sso_disabled(),
            ("GET", ["user", "identities", "authorize"]) => self.link_identity_authorize(ctx).await,
            ("DELETE", ["user", "identities", id]) => self.unlink_identity(ctx, id).await,
            ("GET", ["admin", "users"]) => self.admin_list_users(ctx).await,
            ("POST", ["admin", "users"]) => self.admin_create_user(ctx).await,
            ("GET", ["admin", "users", id]) => self.admin_get_user(ctx, id).await,
            ("PUT", ["admin", "users", id]) => self.admin_update_user(ctx, id).await,
            ("DELETE", ["admin", "users", id]) => self.admin_delete_user(ctx, id).await,
            ("GET", ["admin", "users", id, "factors"]) => self.admin_list_factors(ctx, id).await,
            ("DELETE", ["admin", "users", id, "factors", factor]) => {
                self.admin_delete_factor(ctx, id, factor).await
            }
            ("POST", ["admin", "generate_link"]) => self.generate_link(ctx).await,
            ("GET", ["admin", "mailbox"]) => self.admin_mailbox(ctx).await,
            ("GET", ["admin", "invite_codes"]) => self.list_invite_codes(ctx).await,
            ("POST", ["admin", "invite_codes"]) => self.create_invite_code(ctx).await,
            ("DELETE", ["admin", "invite_codes", id]) => self.delete_invite_code(ctx, id).await,
            ("GET", ["admin", "api_keys"]) => self.list_api_keys(ctx).await,
            ("POST", ["admin", "api_keys"]) => self.create_api_key(ctx).await,
            ("DELETE", ["admin", "api_keys", id]) => self.revoke_api_key(ctx, id).await,
            _ => Err(AuthError::not_found(
                "not_found",
                format!("no such endpoint: {} {}", method, ctx.req.path),
            )),
        }
    }

    fn settings(&self) -> Response {
        let c = &self.config;
        let mut external = Map::new();
        for provider in [
            "apple",
            "azure",
            "bitbucket",
            "discord",
            "facebook",
            "figma",
            "fly",
            "github",
            "gitlab",
            "google",
            "keycloak",
            "kakao",
            "linkedin",
            "linkedin_oidc",
            "notion",
            "slack",
            "slack_oidc",
            "spotify",
            "twitch",
            "twitter",
            "workos",
            "zoom",
            "snapchat",
        ] {
            external.insert(provider.to_owned(), Value::Bool(false));
        }
        for name in c.external.enabled_names() {
            external.insert(name.to_owned(), Value::Bool(true));
        }
        external.insert("anonymous_users".to_owned(), json!(c.anonymous_users));
        external.insert("email".to_owned(), json!(true));
        external.insert("phone".to_owned(), json!(true));
        ok_json(json!({
            "external": external,
            "disable_signup": c.disable_signup,
            "mailer_autoconfirm": c.email_autoconfirm,
            "phone_autoconfirm": c.phone_autoconfirm,
            "sms_provider": "mailbox",
            "saml_enabled": false,
            "passkeys_enabled": c.webauthn.passkeys,
            "mfa_webauthn_enabled": c.webauthn.mfa,
        }))
    }

    /// Counts one event against a limit, answering 429 when over it.
    pub(crate) async fn limit(&self, bucket: Bucket, key: &str) -> AuthResult<()> {
        let l = &self.config.limits;
        let limit = match bucket {
            Bucket::SignIn => l.sign_in,
            Bucket::Verify => l.verify,
            Bucket::Refresh => l.refresh,
            Bucket::Otp => l.otp,
            Bucket::EmailSent => l.email_sent,
            Bucket::Anonymous => l.anonymous,
        };
        self.take(bucket, key, limit).await.map_err(|wait| {
            metrics_rate_limited(bucket);
            if bucket == Bucket::EmailSent {
                AuthError::rate_limited(
                    "over_email_send_rate_limit",
                    "email rate limit exceeded",
                    wait,
                )
            } else {
                AuthError::rate_limited(
                    "over_request_rate_limit",
                    "Request rate limit reached",
                    wait,
                )
            }
        })
    }

    /// Counts one mail against the project's total
    /// (`limits.email_sent_project`), answering GoTrue's 429 when over it.
    pub(crate) async fn limit_project_mail(&self) -> AuthResult<()> {
        // Per-address counters are keyed by the address: "" is no address.
        self.take(Bucket::EmailSent, "", self.config.limits.email_sent_project)
            .await
            .map_err(|wait| {
                metrics_rate_limited(Bucket::EmailSent);
                AuthError::rate_limited(
                    "over_email_send_rate_limit",
                    "email rate limit exceeded",
                    wait,
                )
            })
    }

    /// Takes one token from the shared bucket in the database when limits
    /// are shared, else (or when the database cannot be asked: the request
    /// still gets this node's limit) from this process's.
    async fn take(&self, bucket: Bucket, key: &str, limit: Limit) -> Result<(), u64> {
        if self.config.shared_limits && limit.max > 0 {
            match self
                .shared_limiter
                .take(&self.pool, bucket, key, limit)
                .await
            {
                Ok(taken) => return taken,
                Err(err) => {
                    tracing::warn!(error = %err, "shared rate limit unavailable; counting on this node");
                }
            }
        }
        self.limiter.hit(bucket, key, limit)
    }

    /// The verified claims of the bearer token, or the client's errors.
    pub(crate) fn bearer_claims(&self, ctx: &Ctx<'_>) -> AuthResult<Map<String, Value>> {
        let header = ctx
            .req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let token = header
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                AuthError::new(
                    StatusCode::UNAUTHORIZED,
                    "no_authorization",
                    "This endpoint requires a valid Bearer token",
                )
            })?;
        let verified = ctx
            .req
            .keys
            .verify(token, time::now_unix())
            .map_err(|err| {
                AuthError::forbidden(
                    "bad_jwt",
                    format!("invalid JWT: unable to parse or verify signature, {err}"),
                )
            })?;
        Ok(verified.claims)
    }

    /// The signed-in user of a 👤 endpoint: a valid token whose user exists,
    /// is not banned, and whose session is still there.
    pub(crate) async fn current(
        &self,
        ctx: &Ctx<'_>,
        client: &impl sovra_pg::GenericClient,
    ) -> AuthResult<Current> {
        let claims = self.bearer_claims(ctx)?;
        let sub = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::forbidden("bad_jwt", "invalid claim: missing sub claim"))?;
        let id = Uuid::parse_str(sub).map_err(|_| {
            AuthError::bad_request("bad_jwt", "invalid claim: sub claim must be a UUID")
        })?;
        let session_id = claims
            .get("session_id")
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok());
        // One round trip: the user, and its session when the token names one.
        let sql = current_user_sql();
        let row = client.c_query_opt(sql, &[&id, &session_id]).await?;
        let row = row.ok_or_else(|| {
            AuthError::forbidden(
                "user_not_found",
                "User from sub claim in JWT does not exist",
            )
        })?;
        let user = User::from_row(&row)?;
        if user.deleted_at.is_some() {
            return Err(AuthError::forbidden(
                "user_not_found",
                "User from sub claim in JWT does not exist",
            ));
        }
        if user.is_banned() {
            return Err(AuthError::forbidden("user_banned", "User is banned"));
        }
        let mut aal = claims
            .get("aal")
            .and_then(Value::as_str)
            .unwrap_or("aal1")
            .to_owned();
        let mut session_created = None;
        if session_id.is_some() {
            if row.get::<_, Option<Uuid>>("session_found").is_none() {
                return Err(AuthError::forbidden(
                    "session_not_found",
                    "Session from session_id claim in JWT does not exist",
                ));
            }
            aal = row.get("session_aal");
            session_created = row
                .get::<_, Option<f64>>("session_created")
                .map(|t| t as i64);
        }
        Ok(Current {
            user,
            session_id,
            aal,
            session_created,
        })
    }

    /// Requires an admin token (`service_role` or another admin role).
    pub(crate) fn require_admin(&self, ctx: &Ctx<'_>) -> AuthResult<Map<String, Value>> {
        let claims = self.bearer_claims(ctx)?;
        let role = claims.get("role").and_then(Value::as_str).unwrap_or("");
        if self.config.admin_roles.iter().any(|r| r == role) {
            Ok(claims)
        } else {
            Err(AuthError::forbidden("not_admin", "User not allowed"))
        }
    }

    /// `redirect_to` if it is allowed, else the site URL.
    pub(crate) fn redirect_target(&self, requested: Option<&str>) -> String {
        let site = self.site_url();
        let Some(requested) = requested.filter(|r| !r.is_empty()) else {
            return site;
        };
        let Ok(parts) = redirect::parse(requested) else {
            return site;
        };
        let allowed = redirect::under_site(&site, requested)
            || self
                .redirect_patterns
                .iter()
                .any(|pattern| pattern.matches_parts(&parts));
        if allowed { requested.to_owned() } else { site }
    }
}

/// The query behind every 👤 endpoint: the user (`$1`) and the session
/// (`$2`) its token names. Public for the benchmark's pgbench reference.
pub fn current_user_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        format!(
            "select {}, s.id as session_found, coalesce(s.aal, 'aal1') as session_aal,
                    extract(epoch from s.created_at)::float8 as session_created
               from auth.users u
               left join auth.sessions s on s.id = $2 and s.user_id = u.id
              where u.id = $1",
            user::user_columns()
        )
    })
}

fn metrics_rate_limited(bucket: Bucket) {
    tracing::info!(?bucket, "auth rate limit reached");
}
