//! Sovra as an OAuth 2.1 / OpenID Connect provider, as GoTrue's OAuth
//! server and auth-js call it (`auth.oauth.*` for the consent page,
//! `auth.admin.oauth.*` for clients):
//!
//! - `clients.rs`: the admin API `/admin/oauth/clients` and dynamic client
//!   registration `POST /oauth/clients/register`, and how a client
//!   authenticates at the token endpoint;
//! - `flow.rs`: `GET /oauth/authorize` (authorization code with PKCE S256
//!   only), the consent page's `GET /oauth/authorizations/{id}` and
//!   `POST /oauth/authorizations/{id}/consent`, and a user's grants
//!   (`/user/oauth/grants`);
//! - `token.rs`: `POST /oauth/token` (code and refresh grants),
//!   `/oauth/userinfo`, `POST /oauth/revoke` (RFC 7009);
//! - `signing.rs`: the ES256 key ID tokens are signed with, kept in the
//!   tenant's database sealed under Auth's service key and published in
//!   the JWK set.
//!
//! OAuth sessions are ordinary `auth.sessions` rows with `oauth_client_id`
//! set: their refresh tokens rotate through the same machinery (reuse
//! detection included), sign-out ends them, and their access tokens are
//! the project's usual JWTs plus a `client_id` claim, so `/rest/v1`
//! accepts them as the user under RLS.

mod clients;
mod flow;
pub mod signing;
mod token;

use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use serde_json::{Value, json};

use crate::error::{AuthError, AuthResult};
use crate::{AuthService, Ctx};

/// The scopes Sovra grants.
pub const SCOPES: &[&str] = &["openid", "email", "profile", "phone", "offline_access"];

/// The scope of a request that names none (GoTrue's default).
pub const DEFAULT_SCOPE: &str = "email";

/// The `amr` method of sessions an OAuth client holds.
pub const AMR_METHOD: &str = "oauth_provider/authorization_code";

/// How long an authorization request, and the code it yields, live.
pub const AUTHORIZATION_TTL_SECS: i64 = 600;

/// The OAuth server's settings (`auth.oauth_server.*`).
#[derive(Debug, Clone, Default)]
pub struct OAuthServerConfig {
    /// The app's consent page: an absolute URL, or a path under the site
    /// URL; empty: `<site_url>/oauth/consent`. `/oauth/authorize` sends the
    /// browser there with `?authorization_id=`.
    pub consent_url: String,
    /// `POST /oauth/clients/register` (RFC 7591) open to anyone.
    pub dynamic_registration: bool,
}

/// Whether `method path` (relative to `/auth/v1`) is called without the
/// project's API key: the endpoints OAuth clients and browsers reach
/// directly.
pub fn is_public(method: &Method, path: &str) -> bool {
    let path = path.trim_end_matches('/');
    match *method {
        Method::GET => {
            matches!(
                path,
                "/oauth/authorize"
                    | "/oauth/userinfo"
                    | "/.well-known/openid-configuration"
                    | "/.well-known/oauth-authorization-server"
            )
        }
        Method::POST => matches!(
            path,
            "/oauth/token" | "/oauth/userinfo" | "/oauth/revoke" | "/oauth/clients/register"
        ),
        _ => false,
    }
}

/// Whether a session's `amr` (as claims carry it) marks an OAuth client's
/// session.
pub(crate) fn is_oauth_amr(amr: &Value) -> bool {
    amr.as_array().is_some_and(|methods| {
        methods
            .iter()
            .any(|m| m.get("method").and_then(Value::as_str) == Some(AMR_METHOD))
    })
}

/// The scopes of a space-separated list, each once, in order; unknown
/// ones refused with OAuth's `invalid_scope`.
pub fn parse_scopes(text: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for scope in text.split([' ', '+']).filter(|s| !s.is_empty()) {
        if !SCOPES.contains(&scope) {
            return Err(format!("unsupported scope: {scope}"));
        }
        if !out.iter().any(|s| s == scope) {
            out.push(scope.to_owned());
        }
    }
    Ok(out)
}

/// Whether every scope of `wanted` is in `allowed`.
pub fn scopes_within(wanted: &[String], allowed: &[String]) -> bool {
    wanted.iter().all(|w| allowed.contains(w))
}

/// Checks a redirect URI a client registers (RFC 6749 §3.1.2, OAuth 2.1
/// §2.3.1): absolute, no fragment, no dangerous scheme, `http` only to a
/// loopback host, and no comma (they are stored comma-separated).
pub fn check_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.is_empty() {
        return Err("redirect URI cannot be empty".to_owned());
    }
    if uri.len() > 2048 || uri.contains(',') || uri.chars().any(char::is_whitespace) {
        return Err("invalid URL format".to_owned());
    }
    let (scheme, rest) = uri
        .split_once(':')
        .ok_or_else(|| "must have scheme and host".to_owned())?;
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err("invalid URL format".to_owned());
    }
    let scheme = scheme.to_ascii_lowercase();
    if matches!(
        scheme.as_str(),
        "javascript" | "data" | "file" | "vbscript" | "about" | "blob"
    ) {
        return Err(format!(
            "scheme '{scheme}' is not allowed for security reasons"
        ));
    }
    let authority = rest
        .strip_prefix("//")
        .map(|r| r.split(['/', '?', '#']).next().unwrap_or(""))
        .unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = host.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        return Err("must have scheme and host".to_owned());
    }
    if scheme == "http" && !matches!(host, "localhost" | "127.0.0.1" | "::1") {
        return Err("HTTP scheme only allowed for localhost".to_owned());
    }
    if uri.contains('#') {
        return Err("fragment not allowed in redirect URI".to_owned());
    }
    Ok(())
}

/// `base` with the query parameters `params` appended (percent-encoded).
pub fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut out = base.to_owned();
    let mut sep = if base.contains('?') { '&' } else { '?' };
    for (name, value) in params {
        out.push(sep);
        out.push_str(name);
        out.push('=');
        out.push_str(&crate::crypto::percent_encode(value));
        sep = '&';
    }
    out
}

/// The fields of an `application/x-www-form-urlencoded` body, or of a
/// JSON object (GoTrue's token endpoint takes both).
pub(crate) fn form_fields(ctx: &Ctx<'_>) -> AuthResult<Vec<(String, String)>> {
    let json = ctx
        .req
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if json {
        let value: Value = serde_json::from_slice(&ctx.req.body)
            .map_err(|_| AuthError::oauth("invalid_request", "Invalid JSON body"))?;
        let Value::Object(map) = value else {
            return Err(AuthError::oauth("invalid_request", "Invalid JSON body"));
        };
        return Ok(map
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
            .collect());
    }
    let text = std::str::from_utf8(&ctx.req.body)
        .map_err(|_| AuthError::oauth("invalid_request", "Failed to parse form data"))?;
    Ok(text
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                crate::crypto::percent_decode(k),
                crate::crypto::percent_decode(v),
            )
        })
        .collect())
}

/// The value of form field `name` (the first; empty counts as absent).
pub(crate) fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// A JSON answer that caches must not keep (token responses).
pub(crate) fn no_store(status: StatusCode, value: Value) -> Response {
    let mut response = (status, axum::Json(value)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

impl AuthService {
    /// Answers the OAuth server's endpoints; `None` for any other path.
    pub(crate) async fn oauth_server_route(
        &self,
        ctx: &Ctx<'_>,
        segments: &[&str],
    ) -> Option<AuthResult<Response>> {
        let method = ctx.req.method.as_str();
        Some(match (method, segments) {
            (
                "GET",
                [
                    ".well-known",
                    "openid-configuration" | "oauth-authorization-server",
                ],
            ) => self.oauth_metadata(ctx).await,
            ("GET", ["admin", "oauth", "clients"]) => self.oauth_list_clients(ctx).await,
            ("POST", ["admin", "oauth", "clients"]) => self.oauth_create_client(ctx, false).await,
            ("POST", ["oauth", "clients", "register"]) => self.oauth_create_client(ctx, true).await,
            ("GET", ["admin", "oauth", "clients", id]) => self.oauth_get_client(ctx, id).await,
            ("PUT", ["admin", "oauth", "clients", id]) => self.oauth_update_client(ctx, id).await,
            ("DELETE", ["admin", "oauth", "clients", id]) => {
                self.oauth_delete_client(ctx, id).await
            }
            ("POST", ["admin", "oauth", "clients", id, "regenerate_secret"]) => {
                self.oauth_regenerate_secret(ctx, id).await
            }
            ("GET", ["oauth", "authorize"]) => self.oauth_authorize(ctx).await,
            ("GET", ["oauth", "authorizations", id]) => self.oauth_authorization(ctx, id).await,
            ("POST", ["oauth", "authorizations", id, "consent"]) => {
                self.oauth_consent(ctx, id).await
            }
            ("POST", ["oauth", "token"]) => self.oauth_token(ctx).await,
            ("GET" | "POST", ["oauth", "userinfo"]) => self.oauth_userinfo(ctx).await,
            ("POST", ["oauth", "revoke"]) => self.oauth_revoke(ctx).await,
            ("GET", ["user", "oauth", "grants"]) => self.oauth_list_grants(ctx).await,
            ("DELETE", ["user", "oauth", "grants"]) => self.oauth_revoke_grant(ctx).await,
            _ => return None,
        })
    }

    /// The issuer: the URL tokens carry in `iss`.
    pub(crate) fn oauth_issuer(&self) -> String {
        format!("{}/auth/v1", self.external_url())
    }

    /// RFC 8414 / OpenID Connect Discovery metadata (both documents are
    /// the same, as GoTrue serves them).
    pub fn oauth_metadata_document(&self) -> Value {
        let issuer = self.oauth_issuer();
        let mut doc = json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/oauth/authorize"),
            "token_endpoint": format!("{issuer}/oauth/token"),
            "userinfo_endpoint": format!("{issuer}/oauth/userinfo"),
            "revocation_endpoint": format!("{issuer}/oauth/revoke"),
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": SCOPES,
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "sid",
                                 "email", "email_verified", "phone_number", "phone_number_verified",
                                 "name", "picture", "preferred_username"],
        });
        if self.config.oauth_server.dynamic_registration
            && let Value::Object(map) = &mut doc
        {
            map.insert(
                "registration_endpoint".to_owned(),
                Value::String(format!("{issuer}/oauth/clients/register")),
            );
        }
        doc
    }

    async fn oauth_metadata(&self, ctx: &Ctx<'_>) -> AuthResult<Response> {
        self.limit(crate::limits::Bucket::Verify, &ctx.ip_key())
            .await?;
        let mut response = crate::ok_json(self.oauth_metadata_document());
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=600"),
        );
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_refuse_unknown_ones() {
        assert_eq!(
            parse_scopes("openid email  email profile").unwrap(),
            ["openid", "email", "profile"]
        );
        assert_eq!(parse_scopes("").unwrap(), Vec::<String>::new());
        assert!(parse_scopes("openid admin").is_err());
        let granted = parse_scopes("openid email").unwrap();
        assert!(scopes_within(&parse_scopes("email").unwrap(), &granted));
        assert!(!scopes_within(
            &parse_scopes("email phone").unwrap(),
            &granted
        ));
    }

    #[test]
    fn redirect_uris_are_checked_as_gotrue_does() {
        for good in [
            "https://app.example.com/callback",
            "http://localhost:3000/cb",
            "http://127.0.0.1/cb?x=1",
            "http://[::1]:8080/cb",
            "com.example.app://callback",
        ] {
            assert_eq!(check_redirect_uri(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "/relative",
            "javascript://x/alert(1)",
            "data://x",
            "http://app.example.com/cb",
            "https://app.example.com/cb#frag",
            "https://a.example.com/cb,https://b.example.com",
            "https:///nohost",
            "1https://x",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn queries_are_appended_encoded() {
        assert_eq!(
            with_query("https://a/cb", &[("code", "x y"), ("state", "s&t")]),
            "https://a/cb?code=x%20y&state=s%26t"
        );
        assert_eq!(
            with_query("https://a/cb?k=1", &[("code", "c")]),
            "https://a/cb?k=1&code=c"
        );
    }

    #[test]
    fn public_endpoints_are_only_the_client_facing_ones() {
        assert!(is_public(&Method::POST, "/oauth/token"));
        assert!(is_public(&Method::GET, "/oauth/authorize"));
        assert!(is_public(&Method::GET, "/.well-known/openid-configuration"));
        assert!(!is_public(&Method::GET, "/admin/oauth/clients"));
        assert!(!is_public(&Method::GET, "/oauth/authorizations/x"));
        assert!(!is_public(&Method::DELETE, "/oauth/token"));
    }
}
