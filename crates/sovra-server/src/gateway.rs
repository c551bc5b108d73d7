//! The one verification layer every service uses: it reads the `apikey`
//! (header or query parameter) and `Authorization: Bearer`, checks them
//! against the tenant's keys, and yields the caller's role and claims.
//!
//! Rules (spec §1.2): an `apikey` that is present must be one of the
//! project's keys (or a token that verifies as `anon` or `service_role`);
//! without one, the request is anonymous unless `require_apikey` is set.
//! The effective token is the bearer when present, else the `apikey`.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use subtle::ConstantTimeEq as _;

use crate::AppState;
use crate::tenant::Tenant;

/// The verified caller of a request.
#[derive(Clone, Debug)]
pub struct Caller {
    pub tenant: Arc<Tenant>,
    /// The database role to run as.
    pub role: String,
    /// The verified claims; always contains `role`.
    pub claims: Map<String, Value>,
}

/// Why a request's credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    NoTenant,
    InvalidApiKey,
    MissingApiKey,
    InvalidToken(String),
    MalformedAuthorization,
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            GatewayError::NoTenant => (
                StatusCode::NOT_FOUND,
                json!({"message": "No project serves this host"}),
            ),
            GatewayError::InvalidApiKey => (
                StatusCode::UNAUTHORIZED,
                json!({"message": "Invalid API key", "hint": "Double check your Supabase `anon` or `service_role` API key."}),
            ),
            GatewayError::MissingApiKey => (
                StatusCode::UNAUTHORIZED,
                json!({"message": "No API key found in request", "hint": "No `apikey` request header or url param was found."}),
            ),
            GatewayError::MalformedAuthorization => (
                StatusCode::UNAUTHORIZED,
                json!({"code": "PGRST301", "message": "Authorization header must be `Bearer <token>`", "details": null, "hint": null}),
            ),
            GatewayError::InvalidToken(message) => (
                StatusCode::UNAUTHORIZED,
                json!({"code": "PGRST301", "message": message, "details": null, "hint": null}),
            ),
        };
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    }
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A query parameter, percent-decoded.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| sovra_rest_grammar::decode_component(value))
    })
}

/// The `apikey` header, else the `apikey` query parameter.
fn api_key(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(value) = headers.get("apikey") {
        return value.to_str().ok().map(str::to_owned);
    }
    query_param(query, "apikey")
}

/// The role and claims a live Sovra API key (`sovra_sk_…`) stands for.
pub(crate) fn api_key_claims(tenant: &Tenant, key: &str) -> Option<(String, Map<String, Value>)> {
    let found = tenant.auth.api_keys.lookup(key)?;
    let mut claims = Map::new();
    claims.insert("role".to_owned(), Value::String(found.role.clone()));
    claims.insert("api_key_id".to_owned(), Value::String(found.id.to_string()));
    claims.insert("api_key_name".to_owned(), Value::String(found.name.clone()));
    Some((found.role, claims))
}

/// The bearer token of the `Authorization` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| GatewayError::MalformedAuthorization)?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim().to_owned()))
        }
        _ => Err(GatewayError::MalformedAuthorization),
    }
}

pub(crate) const NUL_CLAIMS: &str = "JWT claims must not contain NUL characters";

/// Whether a NUL character appears in any key or string of `claims`.
/// PostgreSQL's text cannot hold one, so such claims could never be set as
/// `request.jwt.claims`: the token is refused up front (401) instead of
/// failing later inside a service.
pub(crate) fn claims_contain_nul(claims: &Map<String, Value>) -> bool {
    fn value_has_nul(value: &Value) -> bool {
        match value {
            Value::String(text) => text.contains('\0'),
            Value::Array(items) => items.iter().any(value_has_nul),
            Value::Object(map) => map
                .iter()
                .any(|(key, value)| key.contains('\0') || value_has_nul(value)),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }
    claims
        .iter()
        .any(|(key, value)| key.contains('\0') || value_has_nul(value))
}

fn equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Checks the `apikey` of a request: absent (allowed unless the tenant
/// requires one), one of the project's keys, a token signed with its keys
/// for `anon` or `service_role`, or a live Sovra API key. Returns the role
/// and claims an API key stands for, when it is a Sovra API key.
pub fn check_api_key(
    tenant: &Arc<Tenant>,
    headers: &HeaderMap,
    query: Option<&str>,
    now: i64,
) -> Result<(Option<String>, Option<Caller>), GatewayError> {
    let api_key = api_key(headers, query);
    let Some(key) = &api_key else {
        if tenant.require_apikey {
            return Err(GatewayError::MissingApiKey);
        }
        return Ok((None, None));
    };
    if let Some((role, claims)) = api_key_claims(tenant, key) {
        let caller = Caller {
            tenant: tenant.clone(),
            role,
            claims,
        };
        return Ok((None, Some(caller)));
    }
    // An opaque `sb_publishable_…`/`sb_secret_…` key stands for the
    // project's anon or service_role JWT.
    if crate::opaque_keys::looks_opaque(key) {
        return match tenant.api_keys.jwt_for_opaque(key) {
            Some(jwt) => Ok((Some(jwt.to_owned()), None)),
            None => Err(GatewayError::InvalidApiKey),
        };
    }
    // Constant-time comparison against both keys, without short-circuit.
    let is_anon = equal(key, &tenant.api_keys.anon);
    let is_service = equal(key, &tenant.api_keys.service_role);
    if !(is_anon | is_service) {
        // Also accept keys signed with the project's secret (keys made
        // before a rotation, or the ones a Supabase project shipped).
        match tenant.keys.verify(key, now) {
            Ok(verified) if verified.role == "anon" || verified.role == "service_role" => {}
            _ => return Err(GatewayError::InvalidApiKey),
        }
    }
    Ok((api_key, None))
}

/// Verifies the credentials of a request for `tenant`.
pub fn authenticate(
    tenant: &Arc<Tenant>,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Caller, GatewayError> {
    let now = now();
    let (api_key, key_caller) = check_api_key(tenant, headers, query, now)?;
    // supabase-js sends an opaque key as the bearer when no one is signed
    // in: it stands for the role's JWT there too.
    let bearer = match bearer(headers)? {
        Some(token) if crate::opaque_keys::looks_opaque(&token) => Some(
            tenant
                .api_keys
                .jwt_for_opaque(&token)
                .ok_or(GatewayError::InvalidApiKey)?
                .to_owned(),
        ),
        other => other,
    };
    if let (Some(caller), None) = (&key_caller, &bearer) {
        return Ok(caller.clone());
    }
    let token = bearer.or(api_key);
    let Some(token) = token else {
        let mut claims = Map::new();
        claims.insert("role".to_owned(), Value::String("anon".to_owned()));
        return Ok(Caller {
            tenant: tenant.clone(),
            role: "anon".to_owned(),
            claims,
        });
    };
    let verified = tenant
        .keys
        .verify(&token, now)
        .map_err(|err| GatewayError::InvalidToken(err.to_string()))?;
    if claims_contain_nul(&verified.claims) {
        return Err(GatewayError::InvalidToken(NUL_CLAIMS.to_owned()));
    }
    Ok(Caller {
        tenant: tenant.clone(),
        role: verified.role,
        claims: verified.claims,
    })
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let tenant = state.tenants.resolve(parts).ok_or(GatewayError::NoTenant)?;
        authenticate(&tenant, &parts.headers, parts.uri.query())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), Ok(None));
        headers.insert(header::AUTHORIZATION, "bearer abc".parse().unwrap());
        assert_eq!(bearer(&headers), Ok(Some("abc".to_owned())));
        headers.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), Err(GatewayError::MalformedAuthorization));
        headers.insert(header::AUTHORIZATION, "Bearer ".parse().unwrap());
        assert_eq!(bearer(&headers), Err(GatewayError::MalformedAuthorization));
    }

    /// Cases per `fuzz_*` target: `SOVRA_FUZZ_CASES`, default 256.
    fn fuzz_cases() -> u32 {
        std::env::var("SOVRA_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    fn header_map(name: &'static str, value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = header::HeaderValue::from_bytes(value) {
            headers.insert(name, value);
        }
        headers
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: fuzz_cases(),
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]

        /// Credentials as clients send them: arbitrary header bytes and
        /// query strings never panic the parsers; a bearer that is found
        /// is trimmed and non-empty, and a query parameter round-trips.
        #[test]
        fn fuzz_credentials(
            header in proptest::collection::vec(proptest::num::u8::ANY, 0..96),
            query in "(apikey|vsn|x|%|=|&|\\+|%[0-9a-fA-F]{0,2}|[^&=]{0,8}){0,12}",
        ) {
            let headers = header_map("authorization", &header);
            if let Ok(Some(token)) = bearer(&headers) {
                proptest::prop_assert!(!token.is_empty());
                proptest::prop_assert_eq!(token.trim(), token.as_str());
            }
            let headers = header_map("apikey", &header);
            let _ = api_key(&headers, Some(&query));
            let _ = query_param(Some(&query), "apikey");
            let _ = crate::is_safe_request_id(&header);
        }

        /// Near-valid: `Bearer <anything>` and `apikey=<encoded anything>`.
        #[test]
        fn fuzz_credentials_near_valid(
            scheme in "(?i:bearer|basic|)",
            spaces in " {0,3}",
            token in "[ -~]{0,64}",
        ) {
            let value = format!("{scheme}{spaces}{token}");
            let headers = header_map("authorization", value.as_bytes());
            if let Ok(Some(found)) = bearer(&headers) {
                proptest::prop_assert!(scheme.eq_ignore_ascii_case("bearer"));
                proptest::prop_assert_eq!(found.as_str(), token.trim());
            }
            let encoded: String = token.bytes().map(|b| format!("%{b:02X}")).collect();
            let query = format!("vsn=1.0.0&apikey={encoded}");
            proptest::prop_assert_eq!(query_param(Some(&query), "apikey"), Some(token.clone()));
        }
    }

    #[test]
    fn nul_is_found_anywhere_in_claims() {
        let Value::Object(clean) = json!({"role": "anon", "a": [1, {"b": "c"}], "n": null}) else {
            unreachable!()
        };
        assert!(!claims_contain_nul(&clean));
        for dirty in [
            json!({"role": "anon\u{0}"}),
            json!({"k\u{0}": 1}),
            json!({"a": [1, ["\u{0}"]]}),
            json!({"a": {"b": {"c\u{0}": true}}}),
        ] {
            let Value::Object(map) = dirty else {
                unreachable!()
            };
            assert!(claims_contain_nul(&map), "{map:?}");
        }
    }

    #[test]
    fn api_key_from_header_or_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            api_key(&headers, Some("vsn=1.0.0&apikey=k%2E1")),
            Some("k.1".to_owned())
        );
        headers.insert("apikey", "h".parse().unwrap());
        assert_eq!(api_key(&headers, Some("apikey=q")), Some("h".to_owned()));
        assert_eq!(api_key(&HeaderMap::new(), None), None);
    }
}
