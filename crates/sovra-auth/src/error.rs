//! Auth errors in the shapes auth-js reads (spec §3.5): the 2024-01-01 shape
//! `{code, message}` when the request asks for it, the legacy
//! `{code, error_code, msg}` otherwise, and the OAuth shape
//! `{error, error_description}` on a few `/token` paths. Every response
//! carries `x-sb-error-code`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse as _, Response};
use serde_json::{Value, json};

/// An error answer.
#[derive(Debug, Clone)]
pub struct AuthError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// `weak_password.reasons`.
    pub reasons: Vec<&'static str>,
    /// `{error, error_description}` instead of the usual shape.
    pub oauth: Option<&'static str>,
    /// `Retry-After` seconds (rate limits).
    pub retry_after: Option<u64>,
}

impl AuthError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AuthError {
        AuthError {
            status,
            code,
            message: message.into(),
            reasons: Vec::new(),
            oauth: None,
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> AuthError {
        AuthError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn validation(message: impl Into<String>) -> AuthError {
        AuthError::bad_request("validation_failed", message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> AuthError {
        AuthError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> AuthError {
        AuthError::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> AuthError {
        AuthError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn invalid_credentials() -> AuthError {
        AuthError::bad_request("invalid_credentials", "Invalid login credentials")
    }

    pub fn otp_expired() -> AuthError {
        AuthError::forbidden("otp_expired", "Token has expired or is invalid")
    }

    pub fn rate_limited(code: &'static str, message: impl Into<String>, retry: u64) -> AuthError {
        let mut err = AuthError::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        err.retry_after = Some(retry.max(1));
        err
    }

    pub fn internal() -> AuthError {
        AuthError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unexpected_failure",
            "Internal server error",
        )
    }

    pub fn unavailable() -> AuthError {
        AuthError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unexpected_failure",
            "Database unavailable",
        )
    }

    pub fn weak_password(message: impl Into<String>, reasons: Vec<&'static str>) -> AuthError {
        let mut err = AuthError::unprocessable("weak_password", message);
        err.reasons = reasons;
        err
    }

    pub fn oauth(error: &'static str, description: impl Into<String>) -> AuthError {
        let mut err = AuthError::bad_request("validation_failed", description);
        err.oauth = Some(error);
        err
    }

    /// The response, in the shape the request's API version asks for.
    pub fn render(&self, api_2024: bool) -> Response {
        let mut body = if let Some(error) = self.oauth {
            json!({"error": error, "error_description": self.message})
        } else if api_2024 {
            json!({"code": self.code, "message": self.message})
        } else {
            json!({"code": self.status.as_u16(), "error_code": self.code, "msg": self.message})
        };
        if !self.reasons.is_empty()
            && let Value::Object(map) = &mut body
        {
            map.insert(
                "weak_password".to_owned(),
                json!({"message": self.message, "reasons": self.reasons}),
            );
        }
        if self.status.is_server_error()
            && !api_2024
            && let Value::Object(map) = &mut body
        {
            map.insert(
                "error_id".to_owned(),
                Value::String(uuid::Uuid::new_v4().to_string()),
            );
        }
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert("x-sb-error-code", HeaderValue::from_static(self.code));
        if let Some(secs) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&secs.to_string())
        {
            headers.insert("retry-after", value);
        }
        response
    }
}

impl From<sovra_pg::tokio_postgres::Error> for AuthError {
    fn from(err: sovra_pg::tokio_postgres::Error) -> AuthError {
        match sovra_pg::error_kind(&err) {
            sovra_pg::ErrorKind::Connection => {
                tracing::warn!(error = %err, "auth database call failed");
                AuthError::unavailable()
            }
            sovra_pg::ErrorKind::UniqueViolation => {
                AuthError::new(StatusCode::CONFLICT, "conflict", "Conflicting update")
            }
            _ if sovra_pg::is_bad_text(&err) => {
                AuthError::validation("Text fields must not contain NUL characters")
            }
            _ => {
                match err.as_db_error() {
                    Some(db) => tracing::error!(
                        code = db.code().code(),
                        error = db.message(),
                        detail = db.detail().unwrap_or(""),
                        "auth query failed"
                    ),
                    None => tracing::error!(error = %err, "auth query failed"),
                }
                AuthError::internal()
            }
        }
    }
}

impl From<sovra_pg::PoolError> for AuthError {
    fn from(err: sovra_pg::PoolError) -> AuthError {
        tracing::warn!(error = %err, "no database connection for auth");
        AuthError::unavailable()
    }
}

pub type AuthResult<T> = Result<T, AuthError>;
