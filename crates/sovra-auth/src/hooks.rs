//! GoTrue's auth hooks: PostgreSQL functions or HTTP endpoints that Auth
//! calls at fixed points (custom access token, before user created,
//! password and MFA verification attempts, send email, send SMS), with
//! GoTrue's payloads, error shapes and limits.
//!
//! A hook is configured by URI, as GoTrue's `GOTRUE_HOOK_*_URI`:
//! `pg-functions://<database>/<schema>/<function>` calls
//! `"schema"."function"(input jsonb)` on Auth's own connection (as
//! `supabase_auth_admin`) under a `statement_timeout`; `https://…` (or
//! `http://` to a loopback host) is POSTed the input, signed with
//! Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature`) under the `v1,whsec_…` secrets.
//!
//! The parsing, signing and output checks are pure; [`AuthService::run_hook`]
//! does the IO.

use std::time::Duration;

use axum::http::StatusCode;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use sovra_pg::GenericClient;

use crate::AuthService;
use crate::db::Cached as _;
use crate::error::{AuthError, AuthResult};
use crate::secret::Redacted;

/// GoTrue's timeout for PostgreSQL hooks.
pub const DEFAULT_PG_TIMEOUT_MS: u64 = 2000;
/// GoTrue's timeout for HTTP hooks.
pub const DEFAULT_HTTP_TIMEOUT_MS: u64 = 5000;
/// Largest HTTP hook answer read (GoTrue's 200 KB).
const HTTP_PAYLOAD_LIMIT: usize = 200 * 1024;
/// Attempts of an HTTP hook that cannot be reached (GoTrue's 3).
const HTTP_ATTEMPTS: u32 = 3;

/// The extensibility points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookName {
    CustomAccessToken,
    BeforeUserCreated,
    PasswordVerificationAttempt,
    MfaVerificationAttempt,
    SendEmail,
    SendSms,
}

impl HookName {
    pub const ALL: [HookName; 6] = [
        HookName::CustomAccessToken,
        HookName::BeforeUserCreated,
        HookName::PasswordVerificationAttempt,
        HookName::MfaVerificationAttempt,
        HookName::SendEmail,
        HookName::SendSms,
    ];

    /// The configuration name (`auth.hook.<name>.*`, GoTrue's
    /// `GOTRUE_HOOK_<NAME>_*`).
    pub fn config_name(self) -> &'static str {
        match self {
            HookName::CustomAccessToken => "custom_access_token",
            HookName::BeforeUserCreated => "before_user_created",
            HookName::PasswordVerificationAttempt => "password_verification_attempt",
            HookName::MfaVerificationAttempt => "mfa_verification_attempt",
            HookName::SendEmail => "send_email",
            HookName::SendSms => "send_sms",
        }
    }

    /// The name in the input's `metadata.name` (GoTrue's).
    fn metadata_name(self) -> &'static str {
        match self {
            HookName::CustomAccessToken => "customize-access-token",
            HookName::BeforeUserCreated => "before-user-created",
            HookName::PasswordVerificationAttempt => "password-verification",
            HookName::MfaVerificationAttempt => "mfa-verification",
            HookName::SendEmail => "send-email",
            HookName::SendSms => "send-sms",
        }
    }
}

/// Where one hook goes.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// `"schema"."function"(jsonb)`.
    PgFunction { schema: String, function: String },
    /// POST to `url`, signed with each of `secrets` (raw key bytes).
    Http { url: String, secrets: Vec<Vec<u8>> },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::PgFunction { schema, function } => {
                write!(f, "PgFunction({schema}.{function})")
            }
            Target::Http { url, secrets } => {
                write!(f, "Http({url}, {} secret(s))", secrets.len())
            }
        }
    }
}

/// A hook as configured: its URI and, for HTTP hooks, its secrets
/// (`v1,whsec_<base64>`, several separated by `|` as in GoTrue).
#[derive(Debug, Clone)]
pub struct HookPoint {
    pub uri: String,
    pub secrets: Redacted,
}

/// Every hook Auth may call, and their timeouts.
#[derive(Debug, Clone)]
pub struct HookConfig {
    pub custom_access_token: Option<HookPoint>,
    pub before_user_created: Option<HookPoint>,
    pub password_verification_attempt: Option<HookPoint>,
    pub mfa_verification_attempt: Option<HookPoint>,
    pub send_email: Option<HookPoint>,
    pub send_sms: Option<HookPoint>,
    /// `statement_timeout` of a PostgreSQL hook, in milliseconds.
    pub pg_timeout_ms: u64,
    /// Total time an HTTP hook may take (retries included), in
    /// milliseconds.
    pub http_timeout_ms: u64,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            custom_access_token: None,
            before_user_created: None,
            password_verification_attempt: None,
            mfa_verification_attempt: None,
            send_email: None,
            send_sms: None,
            pg_timeout_ms: DEFAULT_PG_TIMEOUT_MS,
            http_timeout_ms: DEFAULT_HTTP_TIMEOUT_MS,
        }
    }
}

impl HookConfig {
    pub fn point(&self, name: HookName) -> Option<&HookPoint> {
        match name {
            HookName::CustomAccessToken => self.custom_access_token.as_ref(),
            HookName::BeforeUserCreated => self.before_user_created.as_ref(),
            HookName::PasswordVerificationAttempt => self.password_verification_attempt.as_ref(),
            HookName::MfaVerificationAttempt => self.mfa_verification_attempt.as_ref(),
            HookName::SendEmail => self.send_email.as_ref(),
            HookName::SendSms => self.send_sms.as_ref(),
        }
    }

    pub fn point_mut(&mut self, name: HookName) -> &mut Option<HookPoint> {
        match name {
            HookName::CustomAccessToken => &mut self.custom_access_token,
            HookName::BeforeUserCreated => &mut self.before_user_created,
            HookName::PasswordVerificationAttempt => &mut self.password_verification_attempt,
            HookName::MfaVerificationAttempt => &mut self.mfa_verification_attempt,
            HookName::SendEmail => &mut self.send_email,
            HookName::SendSms => &mut self.send_sms,
        }
    }
}

/// The configured hooks, parsed.
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    targets: Vec<(HookName, String, Target)>,
    pg_timeout_ms: u64,
    http_timeout: Duration,
    http: Option<reqwest::Client>,
}

impl Hooks {
    /// Parses every enabled hook; the message names the option at fault.
    pub(crate) fn new(config: &HookConfig) -> Result<Hooks, String> {
        let mut targets = Vec::new();
        for name in HookName::ALL {
            if let Some(point) = config.point(name) {
                let target = parse_target(&point.uri, &point.secrets.0).map_err(|err| {
                    format!(
                        "auth.hook.{}.uri: {:?} {err}",
                        name.config_name(),
                        point.uri
                    )
                })?;
                targets.push((name, point.uri.clone(), target));
            }
        }
        let http_timeout = Duration::from_millis(config.http_timeout_ms.max(1));
        let http = if targets
            .iter()
            .any(|(_, _, t)| matches!(t, Target::Http { .. }))
        {
            Some(
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(http_timeout)
                    .build()
                    .map_err(|err| format!("auth.hook: cannot build the HTTP client: {err}"))?,
            )
        } else {
            None
        };
        Ok(Hooks {
            targets,
            pg_timeout_ms: config.pg_timeout_ms.max(1),
            http_timeout,
            http,
        })
    }

    pub(crate) fn enabled(&self, name: HookName) -> bool {
        self.targets.iter().any(|(n, _, _)| *n == name)
    }

    fn target(&self, name: HookName) -> Option<(&str, &Target)> {
        self.targets
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, uri, target)| (uri.as_str(), target))
    }
}

/// Parses a hook URI as GoTrue validates it: `pg-functions://<db>/<schema>/<function>`
/// with plain identifiers; `https://…`; `http://` only to `localhost`,
/// `127.0.0.1`, `::1` or `host.docker.internal`. HTTP hooks take their
/// secrets (`v1,whsec_<base64 of 24 to 64 bytes>`, `|`-separated).
pub fn parse_target(uri: &str, secrets: &str) -> Result<Target, String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or("is not a URI (pg-functions://…, https://…)")?;
    match scheme.to_ascii_lowercase().as_str() {
        "pg-functions" => {
            let mut parts = rest.split('/');
            let _database = parts.next().unwrap_or("");
            let schema = parts.next().unwrap_or("");
            let function = parts.next().unwrap_or("");
            if schema.is_empty() || function.is_empty() {
                return Err("URI path does not contain enough parts".to_owned());
            }
            if parts.next().is_some_and(|p| !p.is_empty()) {
                return Err("URI path has too many parts".to_owned());
            }
            if !is_identifier(schema) {
                return Err(format!("invalid schema name: {schema}"));
            }
            if !is_identifier(function) {
                return Err(format!("invalid function name: {function}"));
            }
            Ok(Target::PgFunction {
                schema: schema.to_owned(),
                function: function.to_owned(),
            })
        }
        "http" | "https" => {
            let url = reqwest::Url::parse(uri).map_err(|err| format!("is not a URL: {err}"))?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err("must not carry credentials".to_owned());
            }
            if scheme.eq_ignore_ascii_case("http") {
                let host = url.host_str().unwrap_or("");
                if !matches!(
                    host,
                    "localhost" | "127.0.0.1" | "[::1]" | "::1" | "host.docker.internal"
                ) {
                    return Err(
                        "only localhost, 127.0.0.1, and ::1 are supported with http".to_owned()
                    );
                }
            }
            let secrets = parse_secrets(secrets)?;
            Ok(Target::Http {
                url: uri.to_owned(),
                secrets,
            })
        }
        _ => Err("only postgres hooks and HTTPS functions are supported at the moment".to_owned()),
    }
}

/// GoTrue's names: `^[a-zA-Z_][a-zA-Z0-9_]{0,62}$`.
fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `v1,whsec_<base64>` secrets, `|`-separated; at least one.
fn parse_secrets(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for secret in text.split('|').map(str::trim).filter(|s| !s.is_empty()) {
        let key = secret
            .strip_prefix("v1,whsec_")
            .ok_or("invalid secret format (expected v1,whsec_<base64>)")?;
        if !(32..=88).contains(&key.len()) {
            return Err("invalid secret format (expected v1,whsec_<base64>)".to_owned());
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| "invalid secret format (the key is not base64)")?;
        out.push(bytes);
    }
    if out.is_empty() {
        return Err("needs a secret (`secrets = \"v1,whsec_…\"`) to sign its requests".to_owned());
    }
    Ok(out)
}

/// The Standard Webhooks signature header: `v1,<base64(HMAC-SHA256(key,
/// "{id}.{timestamp}.{body}"))>` per secret, separated by spaces.
pub fn sign(secrets: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = Vec::with_capacity(secrets.len());
    for key in secrets {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            continue;
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        out.push(format!("v1,{signature}"));
    }
    out.join(" ")
}

/// The error a hook answered (`{"error": {"http_code": 4xx, "message":
/// …}}`), in GoTrue's shape: that status (500 when missing), no error code
/// of GoTrue's own. An error without a message is no error (as GoTrue).
pub fn hook_error(output: &Value) -> Option<AuthError> {
    let error = output.get("error")?;
    let message = error.get("message").and_then(Value::as_str)?;
    if message.is_empty() {
        return None;
    }
    let status = error
        .get("http_code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .filter(|s| s.as_u16() >= 400)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(untyped(status, message))
}

/// An error without a code of GoTrue's: GoTrue fills in `unexpected_failure`
/// for 500 and `unknown` otherwise.
fn untyped(status: StatusCode, message: impl Into<String>) -> AuthError {
    let code = if status == StatusCode::INTERNAL_SERVER_ERROR {
        "unexpected_failure"
    } else {
        "unknown"
    };
    AuthError::new(status, code, message)
}

/// Claims an access token must keep, and their JSON types (GoTrue's
/// `MinimumViableTokenSchema`).
const CLAIM_TYPES: &[(&str, &[&str])] = &[
    ("aud", &["string", "array"]),
    ("exp", &["integer"]),
    ("jti", &["string"]),
    ("iat", &["integer"]),
    ("iss", &["string"]),
    ("nbf", &["integer"]),
    ("sub", &["string"]),
    ("email", &["string"]),
    ("phone", &["string"]),
    ("app_metadata", &["object"]),
    ("user_metadata", &["object"]),
    ("role", &["string"]),
    ("aal", &["string"]),
    ("amr", &["array"]),
    ("session_id", &["string"]),
    ("is_anonymous", &["boolean"]),
];

const REQUIRED_CLAIMS: &[&str] = &[
    "aud",
    "exp",
    "iat",
    "sub",
    "email",
    "phone",
    "role",
    "aal",
    "session_id",
    "is_anonymous",
];

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Checks a custom access token hook's output and returns its claims, or
/// GoTrue's 500 with the schema's complaints.
pub fn output_claims(output: &Value) -> AuthResult<Map<String, Value>> {
    if let Some(err) = hook_error(output) {
        return Err(err);
    }
    let claims = match output.get("claims") {
        None => {
            return Err(untyped(
                StatusCode::INTERNAL_SERVER_ERROR,
                "output claims field is missing",
            ));
        }
        Some(Value::Object(claims)) => claims.clone(),
        Some(_) => {
            return Err(untyped(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error unmarshalling JSON output.",
            ));
        }
    };
    let mut problems = Vec::new();
    for required in REQUIRED_CLAIMS {
        if !claims.contains_key(*required) {
            problems.push(format!("(root): {required} is required"));
        }
    }
    for (name, types) in CLAIM_TYPES {
        if let Some(value) = claims.get(*name) {
            let given = json_type(value);
            let ok = types.contains(&given) || (given == "integer" && types.contains(&"number"));
            if !ok {
                problems.push(format!(
                    "{name}: Invalid type. Expected: {}, given: {given}",
                    types.join(" or ")
                ));
            }
        }
    }
    if let Some(Value::Array(amr)) = claims.get("amr") {
        for (i, entry) in amr.iter().enumerate() {
            if !matches!(entry, Value::Object(_) | Value::String(_)) {
                problems.push(format!(
                    "amr.{i}: Invalid type. Expected: object, given: {}",
                    json_type(entry)
                ));
            }
        }
    }
    if problems.is_empty() {
        return Ok(claims);
    }
    let mut message = "output claims do not conform to the expected schema: \n".to_owned();
    for problem in problems {
        message.push_str("- ");
        message.push_str(&problem);
        message.push('\n');
    }
    Err(untyped(StatusCode::INTERNAL_SERVER_ERROR, message))
}

/// A `{decision, message}` answer (password and MFA verification
/// attempts): `Some(message)` when it rejects.
pub fn rejection(output: &Value) -> AuthResult<Option<(String, bool)>> {
    if let Some(err) = hook_error(output) {
        return Err(err);
    }
    if output.get("decision").and_then(Value::as_str) != Some("reject") {
        return Ok(None);
    }
    let message = output
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let logout = output
        .get("should_logout_user")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Some((message, logout)))
}

/// GoTrue's `metadata` of every hook input.
pub(crate) fn metadata(name: HookName, ip: Option<std::net::IpAddr>) -> Value {
    let mut meta = json!({
        "uuid": uuid::Uuid::new_v4(),
        "time": crate::time::rfc3339(std::time::SystemTime::now()),
        "name": name.metadata_name(),
    });
    if let (Some(ip), Value::Object(map)) = (ip, &mut meta) {
        map.insert("ip_address".to_owned(), json!(ip.to_string()));
    }
    meta
}

impl AuthService {
    /// Whether hook `name` is configured.
    pub(crate) fn hook_enabled(&self, name: HookName) -> bool {
        self.hooks.enabled(name)
    }

    /// Calls hook `name` with `input` and returns its output (`{}` when it
    /// answered nothing). A PostgreSQL hook runs on `client` (inside the
    /// caller's transaction when there is one) under the configured
    /// `statement_timeout`; an exception or timeout in it is GoTrue's 500
    /// "Error running hook URI: …". An HTTP hook's failures are GoTrue's
    /// (422 `hook_timeout`, …). The hook's own `error` object is left to
    /// the caller's checks.
    pub(crate) async fn run_hook(
        &self,
        client: &impl GenericClient,
        name: HookName,
        input: &Value,
    ) -> AuthResult<Value> {
        let Some((uri, target)) = self.hooks.target(name) else {
            return Ok(json!({}));
        };
        let started = std::time::Instant::now();
        let result = match target {
            Target::PgFunction { schema, function } => {
                self.run_pg_hook(client, uri, schema, function, input).await
            }
            Target::Http { url, secrets } => self.run_http_hook(url, secrets, input).await,
        };
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        match &result {
            Ok(_) => tracing::debug!(hook = uri, duration_us = micros, "hook ran"),
            Err(err) => tracing::warn!(
                hook = uri,
                duration_us = micros,
                status = err.status.as_u16(),
                "hook failed"
            ),
        }
        result
    }

    async fn run_pg_hook(
        &self,
        client: &impl GenericClient,
        uri: &str,
        schema: &str,
        function: &str,
        input: &Value,
    ) -> AuthResult<Value> {
        let failed = || {
            untyped(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("Error running hook URI: {uri}"),
            )
        };
        // Identifiers were checked at start; quoted all the same.
        let sql = format!(
            "select to_jsonb({}.{}($1::jsonb))",
            quote_ident(schema),
            quote_ident(function)
        );
        // The timeout is set for the call and put back after it (inside a
        // transaction a failed call's setting is rolled back with it).
        let previous: String = client
            .c_query_one(
                "select current_setting('statement_timeout'), set_config('statement_timeout', $1, false)",
                &[&self.hooks.pg_timeout_ms.to_string()],
            )
            .await?
            .get(0);
        let called = client.c_query_one(&sql, &[input]).await;
        let restored = client
            .c_execute(
                "select set_config('statement_timeout', $1, false)",
                &[&previous],
            )
            .await;
        let row = match called {
            Ok(row) => row,
            Err(err) => {
                match err.as_db_error() {
                    Some(db) => tracing::warn!(
                        hook = uri,
                        code = db.code().code(),
                        error = db.message(),
                        "hook function raised an error"
                    ),
                    None => tracing::warn!(hook = uri, error = %err, "hook function failed"),
                }
                if sovra_pg::error_kind(&err) == sovra_pg::ErrorKind::Connection {
                    return Err(AuthError::unavailable());
                }
                return Err(failed());
            }
        };
        restored?;
        let output: Option<Value> = row.get(0);
        Ok(output.unwrap_or_else(|| json!({})))
    }

    async fn run_http_hook(
        &self,
        url: &str,
        secrets: &[Vec<u8>],
        input: &Value,
    ) -> AuthResult<Value> {
        let Some(http) = &self.hooks.http else {
            return Err(AuthError::internal());
        };
        let body = serde_json::to_vec(input).map_err(|_| AuthError::internal())?;
        let deadline = tokio::time::Instant::now() + self.hooks.http_timeout;
        let timed_out = || {
            AuthError::unprocessable(
                "hook_timeout",
                format!(
                    "Failed to reach hook within maximum time of {:.6} seconds",
                    self.hooks.http_timeout.as_secs_f64()
                ),
            )
        };
        for attempt in 0..HTTP_ATTEMPTS {
            let id = uuid::Uuid::new_v4().to_string();
            let timestamp = crate::time::now_unix();
            let request = http
                .post(url)
                .header("content-type", "application/json")
                .header("accept-encoding", "identity")
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", sign(secrets, &id, timestamp, &body))
                .body(body.clone());
            let sent = tokio::time::timeout_at(deadline, request.send()).await;
            let response = match sent {
                Err(_) => return Err(timed_out()),
                Ok(Err(err)) if err.is_timeout() => return Err(timed_out()),
                Ok(Err(err)) => {
                    tracing::warn!(hook = url, attempt, error = %err, "hook unreachable");
                    if attempt + 1 < HTTP_ATTEMPTS {
                        let backoff = tokio::time::Instant::now() + Duration::from_millis(200);
                        if backoff >= deadline {
                            return Err(timed_out());
                        }
                        tokio::time::sleep_until(backoff).await;
                        continue;
                    }
                    return Err(AuthError::unprocessable(
                        "hook_timeout_after_retry",
                        "Failed to reach hook after maximum retries",
                    ));
                }
                Ok(Ok(response)) => response,
            };
            let status = response.status().as_u16();
            match status {
                200 | 202 | 204 => {
                    let content_type = response
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let Some(content_type) = content_type else {
                        if status == 204 {
                            return Ok(json!({}));
                        }
                        return Err(AuthError::bad_request(
                            "hook_payload_invalid_content_type",
                            "Invalid Content-Type: Missing Content-Type header",
                        ));
                    };
                    let media = content_type
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase();
                    if media != "application/json" {
                        return Err(AuthError::bad_request(
                            "hook_payload_invalid_content_type",
                            format!("Invalid JSON response. Received content-type: {content_type}"),
                        ));
                    }
                    let bytes = read_limited(response, deadline)
                        .await
                        .map_err(|e| e.unwrap_or_else(timed_out))?;
                    if bytes.iter().all(u8::is_ascii_whitespace) {
                        return Ok(json!({}));
                    }
                    return serde_json::from_slice(&bytes).map_err(|_| {
                        untyped(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "Error unmarshaling JSON output.",
                        )
                    });
                }
                429 | 503 => {
                    if response.headers().contains_key("retry-after") && attempt + 1 < HTTP_ATTEMPTS
                    {
                        continue;
                    }
                    return Err(untyped(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Service currently unavailable due to hook",
                    ));
                }
                400 => {
                    return Err(untyped(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Invalid payload sent to hook",
                    ));
                }
                401 => {
                    return Err(untyped(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "Hook requires authorization token",
                    ));
                }
                other => {
                    return Err(untyped(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("Unexpected status code returned from hook: {other}"),
                    ));
                }
            }
        }
        Err(untyped(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Service currently unavailable due to hook",
        ))
    }
}

/// Reads at most [`HTTP_PAYLOAD_LIMIT`] bytes before `deadline`.
/// `Err(None)`: the deadline passed.
async fn read_limited(
    mut response: reqwest::Response,
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, Option<AuthError>> {
    let mut out = Vec::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .map_err(|_| None)?
            .map_err(|_| None)?;
        let Some(chunk) = chunk else {
            return Ok(out);
        };
        if out.len() + chunk.len() > HTTP_PAYLOAD_LIMIT {
            return Err(Some(AuthError::unprocessable(
                "hook_payload_over_size_limit",
                format!("Payload size exceeded size limit of {HTTP_PAYLOAD_LIMIT} bytes"),
            )));
        }
        out.extend_from_slice(&chunk);
    }
}

/// A double-quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &str = "v1,whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn uris_are_parsed_as_gotrue_validates_them() {
        assert_eq!(
            parse_target(
                "pg-functions://postgres/public/custom_access_token_hook",
                ""
            )
            .unwrap(),
            Target::PgFunction {
                schema: "public".into(),
                function: "custom_access_token_hook".into()
            }
        );
        for (uri, why) in [
            ("pg-functions://postgres/public", "not contain enough parts"),
            ("pg-functions://postgres/pub;lic/f", "invalid schema name"),
            (
                "pg-functions://postgres/public/f()",
                "invalid function name",
            ),
            ("pg-functions://postgres/public/f/g", "too many parts"),
            ("ftp://example.com/hook", "only postgres hooks"),
            ("http://example.com/hook", "only localhost"),
            ("nonsense", "is not a URI"),
        ] {
            let err = parse_target(uri, SECRET).unwrap_err();
            assert!(err.contains(why), "{uri}: {err}");
        }
        assert!(matches!(
            parse_target("http://127.0.0.1:9999/hook", SECRET).unwrap(),
            Target::Http { .. }
        ));
        assert!(matches!(
            parse_target("https://hooks.example.com/a", &format!("{SECRET}|{SECRET}")).unwrap(),
            Target::Http { secrets, .. } if secrets.len() == 2
        ));
        for secrets in [
            "",
            "whsec_abc",
            "v1,whsec_short",
            "v1,whsec_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!",
        ] {
            assert!(
                parse_target("https://hooks.example.com/a", secrets).is_err(),
                "{secrets}"
            );
        }
        assert!(parse_target("https://user:pw@hooks.example.com/a", SECRET).is_err());
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The Standard Webhooks reference vector.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let signature = sign(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn hook_errors_and_claims_are_checked_as_gotrue_does() {
        let err = hook_error(&json!({"error": {"http_code": 403, "message": "no"}})).unwrap();
        assert_eq!(err.status, StatusCode::FORBIDDEN);
        assert_eq!(err.message, "no");
        assert_eq!(err.code, "unknown");
        let err = hook_error(&json!({"error": {"message": "boom"}})).unwrap();
        assert_eq!(err.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(err.code, "unexpected_failure");
        assert!(hook_error(&json!({"error": {"http_code": 400}})).is_none());
        assert!(hook_error(&json!({"claims": {}})).is_none());

        let good = json!({"claims": {
            "aud": "authenticated", "exp": 2, "iat": 1, "sub": "u", "email": "", "phone": "",
            "role": "authenticated", "aal": "aal1", "session_id": "s", "is_anonymous": false,
            "amr": [{"method": "password", "timestamp": 1}], "user_role": "admin"}});
        assert_eq!(output_claims(&good).unwrap()["user_role"], "admin");
        let err = output_claims(&json!({})).unwrap_err();
        assert_eq!(err.message, "output claims field is missing");
        let err = output_claims(&json!({"claims": {"aud": "a", "exp": "soon"}})).unwrap_err();
        assert_eq!(err.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            err.message
                .starts_with("output claims do not conform to the expected schema: \n"),
            "{}",
            err.message
        );
        assert!(err.message.contains("- (root): sub is required\n"));
        assert!(
            err.message
                .contains("- exp: Invalid type. Expected: integer, given: string\n")
        );
        let err = output_claims(&json!({"claims": 3})).unwrap_err();
        assert_eq!(err.status, StatusCode::INTERNAL_SERVER_ERROR);
        let err =
            output_claims(&json!({"error": {"http_code": 429, "message": "slow"}})).unwrap_err();
        assert_eq!(err.status, StatusCode::TOO_MANY_REQUESTS);
    }

    #[test]
    fn decisions_are_read() {
        assert_eq!(rejection(&json!({"decision": "continue"})).unwrap(), None);
        assert_eq!(rejection(&json!({})).unwrap(), None);
        assert_eq!(
            rejection(&json!({"decision": "reject", "message": "m", "should_logout_user": true}))
                .unwrap(),
            Some(("m".to_owned(), true))
        );
        assert!(rejection(&json!({"error": {"http_code": 400, "message": "x"}})).is_err());
    }
}
