//! `Idempotency-Key` on `/rest/v1` writes and `/rpc` calls (issue #18): the
//! first response to a key is stored in the request's own transaction and
//! replayed, marked `Idempotent-Replayed: true`, for a repeat by the same
//! caller within `rest.idempotency_retention` seconds.
//!
//! How a request with a key runs (migration `idempotency` holds the table
//! and the three functions):
//!
//! 1. Its pipeline gains one statement between `BEGIN` and the prologue:
//!    `sovra.idempotency_claim` inserts the key for the caller. A
//!    concurrent duplicate waits on the primary key until the first
//!    transaction ends: committed, the claim raises `SVID1` (replay it) or
//!    `SVID2` (another request used the key: 422); rolled back, the claim
//!    succeeds and the duplicate runs.
//! 2. The statement runs as usual, but the transaction stays open: the
//!    response is built, then stored (`sovra.idempotency_complete`, as the
//!    login role, then the caller's role again for deferred triggers) and
//!    committed in one more round trip. A request that fails anywhere rolls
//!    back its claim too, so a retry runs again; a committed write always
//!    has its stored response.
//!
//! Without the header nothing of this runs: no statement, no round trip.

use std::sync::Mutex;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sovra_pg::tokio_postgres::types::{ToSql, Type};
use sovra_rest_plan::ApiError;

use crate::{TxGuard, database_error, error_response};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The header that marks a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";
/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// Error code of a malformed key (400).
pub const INVALID_CODE: &str = "IDEMPOTENCY_KEY_INVALID";
/// Error code of a key used before with another request (422).
pub const REUSED_CODE: &str = "IDEMPOTENCY_KEY_REUSED";

/// Claims the key in the request transaction, before the prologue (so as
/// the login role); raises `SVID1` or `SVID2`.
pub(crate) const CLAIM_SQL: &str = "select sovra.idempotency_claim($1, $2, $3, $4)";
/// Stores the response of the transaction's claim.
const COMPLETE_SQL: &str = "select sovra.idempotency_complete($1, $2, $3, $4::text::jsonb, $5)";
/// The stored response of a live key.
const REPLAY_SQL: &str = "select status, headers, body from sovra.idempotency_replay($1, $2)";

/// A stored response.
#[derive(Debug)]
pub(crate) struct Stored {
    status: i32,
    headers: String,
    body: Vec<u8>,
}

/// One request's key, and what became of it.
pub struct Idempotency {
    scope: String,
    key: String,
    fingerprint: Vec<u8>,
    retention_secs: i32,
    role: String,
    /// The stored response to send instead (the key was used before).
    replayed: Mutex<Option<Stored>>,
    /// The request transaction, open until the response is stored.
    pending: Mutex<Option<TxGuard>>,
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Whether `method` writes, so that a key applies (reads and `OPTIONS`
/// ignore it; a `POST` to a stable function runs read-only and ignores it
/// later).
fn applies_to(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PATCH | Method::PUT | Method::DELETE
    )
}

/// The key of the `Idempotency-Key` header: 1 to [`MAX_KEY_LEN`] bytes of
/// printable ASCII, given once. The IETF draft's structured-field string
/// (`"…"`) is accepted too, without its quotes.
pub fn parse_key<'a>(
    mut values: impl Iterator<Item = &'a HeaderValue>,
) -> Result<String, ApiError> {
    let invalid = |why: &str| ApiError {
        status: 400,
        code: INVALID_CODE.to_owned(),
        message: "Invalid Idempotency-Key header".to_owned(),
        details: Some(Value::String(why.to_owned())),
        hint: Some(format!(
            "Send one key of 1 to {MAX_KEY_LEN} printable ASCII characters, e.g. a UUID."
        )),
        headers: None,
    };
    let Some(value) = values.next() else {
        return Err(invalid("The header is empty."));
    };
    if values.next().is_some() {
        return Err(invalid("The header was sent more than once."));
    }
    let bytes = value.as_bytes();
    let bytes = match bytes {
        [b'"', inner @ .., b'"'] => inner,
        other => other,
    };
    if bytes.is_empty() || bytes.iter().all(|b| *b == b' ') {
        return Err(invalid("The key is empty."));
    }
    if bytes.len() > MAX_KEY_LEN {
        return Err(invalid(&format!(
            "The key is longer than {MAX_KEY_LEN} bytes."
        )));
    }
    if !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(invalid(
            "The key holds characters other than printable ASCII.",
        ));
    }
    // Printable ASCII is UTF-8.
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// Whose keys these are: the role and the token's `sub`, or the Sovra API
/// key's id (a service key without either: every holder of the role's key).
pub fn scope(role: &str, claims: &Map<String, Value>) -> String {
    let text = |name: &str| match claims.get(name) {
        Some(Value::String(text)) if !text.is_empty() => Some(text.as_str()),
        _ => None,
    };
    match (text("sub"), text("api_key_id")) {
        (Some(sub), _) => format!("{role}\nsub:{sub}"),
        (None, Some(id)) => format!("{role}\nkey:{id}"),
        (None, None) => format!("{role}\n"),
    }
}

/// SHA-256 of what makes two requests the same: method, path, query,
/// `Content-Profile` and body, each length-prefixed.
pub fn fingerprint(
    method: &Method,
    path: &str,
    query: Option<&str>,
    profile: Option<&[u8]>,
    body: &[u8],
) -> Vec<u8> {
    let mut hash = Sha256::new();
    for part in [
        method.as_str().as_bytes(),
        path.as_bytes(),
        query.unwrap_or("").as_bytes(),
        profile.unwrap_or(b""),
        body,
    ] {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().to_vec()
}

/// The 422 of a key reused with another request.
fn reused() -> ApiError {
    ApiError {
        status: 422,
        code: REUSED_CODE.to_owned(),
        message: "Idempotency-Key reused with a different request".to_owned(),
        details: Some(Value::String(
            "This key was used before by this caller with another method, path, query or body."
                .to_owned(),
        )),
        hint: Some("Use a new key for a new request.".to_owned()),
        headers: None,
    }
}

impl Idempotency {
    /// The key of a write that sends one, for `role` with `claims`; `None`
    /// without the header or for a read. A malformed key is refused (400).
    #[allow(clippy::too_many_arguments)]
    pub fn from_request(
        method: &Method,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &Bytes,
        role: &str,
        claims: &Map<String, Value>,
        retention_secs: u32,
    ) -> Result<Option<Idempotency>, ApiError> {
        if !headers.contains_key(HEADER) || !applies_to(method) {
            return Ok(None);
        }
        let key = parse_key(headers.get_all(HEADER).iter())?;
        Ok(Some(Idempotency {
            scope: scope(role, claims),
            key,
            fingerprint: fingerprint(
                method,
                path,
                query,
                headers.get("content-profile").map(HeaderValue::as_bytes),
                body,
            ),
            retention_secs: i32::try_from(retention_secs).unwrap_or(i32::MAX),
            role: role.to_owned(),
            replayed: Mutex::new(None),
            pending: Mutex::new(None),
        }))
    }

    /// The parameters of [`CLAIM_SQL`].
    pub(crate) fn claim_params(&self) -> [(&(dyn ToSql + Sync), Type); 4] {
        [
            (&self.scope, Type::TEXT),
            (&self.key, Type::TEXT),
            (&self.fingerprint, Type::BYTEA),
            (&self.retention_secs, Type::INT4),
        ]
    }

    /// What the request path makes of a failed pipeline: `Some` when the
    /// claim refused. For a replay the stored response is read on
    /// `client` (after the aborted transaction is rolled back, as the
    /// login role that claimed) and kept for [`Self::finish`].
    pub(crate) async fn refusal(
        &self,
        err: &sovra_pg::tokio_postgres::Error,
        client: &sovra_pg::tokio_postgres::Client,
        open: &mut bool,
        anonymous: bool,
    ) -> Option<ApiError> {
        let code = err.code()?.code();
        if code == "SVID2" {
            return Some(reused());
        }
        if code != "SVID1" {
            return None;
        }
        let db = |err| database_error(err, anonymous);
        let found = async {
            client.batch_execute("ROLLBACK").await?;
            client
                .query_typed(
                    REPLAY_SQL,
                    &[(&self.scope, Type::TEXT), (&self.key, Type::TEXT)],
                )
                .await
        }
        .await;
        let rows = match found {
            Ok(rows) => rows,
            Err(err) => return Some(db(err)),
        };
        *open = false;
        let Some(row) = rows.first() else {
            // Expired between the claim and the read: the client retries.
            return Some(ApiError {
                status: 409,
                code: REUSED_CODE.to_owned(),
                message: "Idempotency-Key expired while it was replayed".to_owned(),
                details: None,
                hint: Some("Send the request again.".to_owned()),
                headers: None,
            });
        };
        let stored = Stored {
            status: row.get(0),
            headers: row.get(1),
            body: row.get(2),
        };
        if let Ok(mut replayed) = self.replayed.lock() {
            *replayed = Some(stored);
        }
        // The handler answers with the stored response instead.
        Some(ApiError {
            status: 200,
            code: "SVID1".to_owned(),
            message: String::new(),
            details: None,
            hint: None,
            headers: None,
        })
    }

    /// Keeps the open request transaction until [`Self::finish`] stores
    /// the response and commits.
    pub(crate) fn hold(&self, guard: TxGuard) {
        if let Ok(mut pending) = self.pending.lock() {
            *pending = Some(guard);
        }
    }

    /// The response of a request that sent a key: the stored one for a
    /// replay; otherwise `result`, after storing it and committing when
    /// the request's transaction is still open. An error rolls back.
    pub async fn finish(self, result: Result<Response, ApiError>) -> Response {
        if let Some(stored) = self.replayed.lock().ok().and_then(|mut r| r.take()) {
            return replay(stored);
        }
        let guard = self.pending.lock().ok().and_then(|mut p| p.take());
        let response = match result {
            Ok(response) => response,
            // Dropping the guard rolls back.
            Err(err) => return error_response(&err),
        };
        let Some(mut guard) = guard else {
            return response;
        };
        let (parts, body) = response.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
            return error_response(&ApiError::connection());
        };
        let headers = stored_headers(&parts.headers);
        let status = i32::from(parts.status.as_u16());
        let anonymous = self.role == "anon";
        let Some(client) = guard.client.as_deref() else {
            return error_response(&ApiError::connection());
        };
        let body_vec = bytes.to_vec();
        let complete: [(&(dyn ToSql + Sync), Type); 5] = [
            (&self.scope, Type::TEXT),
            (&self.key, Type::TEXT),
            (&status, Type::INT4),
            (&headers, Type::TEXT),
            (&body_vec, Type::BYTEA),
        ];
        let role: [(&(dyn ToSql + Sync), Type); 1] = [(&self.role, Type::TEXT)];
        // As the login role (which alone may call the function), then as
        // the caller again (deferred triggers run at COMMIT), and commit:
        // one round trip.
        let (reset, stored, restored, committed) = tokio::join!(
            client.batch_execute("RESET ROLE"),
            client.query_typed(COMPLETE_SQL, &complete),
            client.query_typed("select set_config('role', $1, true)", &role),
            client.batch_execute("COMMIT"),
        );
        if let Err(err) = reset
            .and(stored.map(drop))
            .and(restored.map(drop))
            .and(committed)
        {
            return error_response(&database_error(err, anonymous));
        }
        guard.open = false;
        Response::from_parts(parts, axum::body::Body::from(bytes))
    }
}

/// The headers worth replaying, as a JSON array of `[name, value]`: all the
/// REST layer set, but the length (the body's own).
fn stored_headers(headers: &HeaderMap) -> String {
    let pairs: Vec<Value> = headers
        .iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "content-length" | "transfer-encoding" | "connection"
            )
        })
        .filter_map(|(name, value)| {
            Some(Value::Array(vec![
                Value::String(name.as_str().to_owned()),
                Value::String(value.to_str().ok()?.to_owned()),
            ]))
        })
        .collect();
    Value::Array(pairs).to_string()
}

/// The stored response, marked as a replay.
fn replay(stored: Stored) -> Response {
    let status = u16::try_from(stored.status)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    headers.remove(axum::http::header::CONTENT_TYPE);
    if let Ok(Value::Array(pairs)) = serde_json::from_str::<Value>(&stored.headers) {
        for pair in pairs {
            if let (Some(Value::String(name)), Some(Value::String(value))) =
                (pair.get(0), pair.get(1))
                && let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                )
            {
                headers.append(name, value);
            }
        }
    }
    headers.insert(
        HeaderName::from_static(REPLAYED),
        HeaderValue::from_static("true"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(values: &[&[u8]]) -> Result<String, ApiError> {
        let values: Vec<HeaderValue> = values
            .iter()
            .map(|v| HeaderValue::from_bytes(v).unwrap())
            .collect();
        parse_key(values.iter())
    }

    #[test]
    fn keys_are_bounded_printable_ascii_given_once() {
        assert_eq!(key(&[b"abc-123"]).unwrap(), "abc-123");
        assert_eq!(key(&[b"\"quoted key\""]).unwrap(), "quoted key");
        assert_eq!(key(&[&[b'k'; 255]]).unwrap().len(), 255);
        for bad in [
            &[b'k'; 256][..],
            b"",
            b"\"\"",
            b"   ",
            "caf\u{e9}".as_bytes(),
            b"tab\there",
        ] {
            let err = key(&[bad]).unwrap_err();
            assert_eq!(
                (err.status, err.code.as_str()),
                (400, INVALID_CODE),
                "{bad:?}"
            );
        }
        let err = key(&[b"a", b"b"]).unwrap_err();
        assert_eq!(err.status, 400);
    }

    #[test]
    fn scopes_separate_users_keys_and_roles() {
        let claims = |v: Value| v.as_object().unwrap().clone();
        let a = scope("authenticated", &claims(serde_json::json!({"sub": "a"})));
        let b = scope("authenticated", &claims(serde_json::json!({"sub": "b"})));
        let k = scope(
            "service_role",
            &claims(serde_json::json!({"api_key_id": "a"})),
        );
        let s = scope("service_role", &Map::new());
        let anon = scope("anon", &Map::new());
        let all = [&a, &b, &k, &s, &anon];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
    }

    #[test]
    fn fingerprints_differ_by_every_part() {
        let base = fingerprint(&Method::POST, "/t", Some("a=1"), None, b"{}");
        assert_eq!(
            base,
            fingerprint(&Method::POST, "/t", Some("a=1"), None, b"{}")
        );
        for other in [
            fingerprint(&Method::PATCH, "/t", Some("a=1"), None, b"{}"),
            fingerprint(&Method::POST, "/u", Some("a=1"), None, b"{}"),
            fingerprint(&Method::POST, "/t", Some("a=2"), None, b"{}"),
            fingerprint(&Method::POST, "/t", Some("a=1"), Some(b"s"), b"{}"),
            fingerprint(&Method::POST, "/t", Some("a=1"), None, b"{ }"),
            // Parts do not run into each other.
            fingerprint(&Method::POST, "/t", Some("a=1{"), None, b"}"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn stored_headers_round_trip_into_a_marked_replay() {
        let mut headers = HeaderMap::new();
        headers.insert("content-range", HeaderValue::from_static("*/*"));
        headers.insert("content-length", HeaderValue::from_static("2"));
        headers.insert("location", HeaderValue::from_static("/t?id=eq.1"));
        let response = replay(Stored {
            status: 201,
            headers: stored_headers(&headers),
            body: b"[]".to_vec(),
        });
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["content-range"], "*/*");
        assert_eq!(response.headers()["location"], "/t?id=eq.1");
        assert_eq!(response.headers()[REPLAYED], "true");
        assert!(response.headers().get("content-type").is_none());
    }
}
