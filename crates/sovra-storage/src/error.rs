//! Storage errors in the shape storage-js reads:
//! `{"statusCode": "<logical status>", "error": …, "message": …, "code": …}`,
//! sent with HTTP 400 for every logical status except 500 (and the few that
//! carry their own: 403 on role checks, 416 on ranges, 544 on timeouts).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// One refusal or failure of the storage API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageError {
    /// The logical status storage-js sees in `statusCode`.
    pub status: u16,
    pub error: &'static str,
    pub message: String,
    pub code: &'static str,
    /// The HTTP status, when it is not the usual 400.
    pub http: Option<u16>,
}

impl StorageError {
    fn new(
        status: u16,
        error: &'static str,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        StorageError {
            status,
            error,
            message: message.into(),
            code,
            http: None,
        }
    }

    pub fn object_not_found() -> Self {
        Self::new(404, "not_found", "NoSuchKey", "Object not found")
    }
    pub fn bucket_not_found() -> Self {
        Self::new(404, "Bucket not found", "NoSuchBucket", "Bucket not found")
    }
    pub fn upload_not_found() -> Self {
        Self::new(404, "not_found", "NoSuchUpload", "Upload not found")
    }
    pub fn object_exists() -> Self {
        Self::new(
            409,
            "Duplicate",
            "KeyAlreadyExists",
            "The resource already exists",
        )
    }
    pub fn bucket_exists() -> Self {
        Self::new(
            409,
            "Duplicate",
            "BucketAlreadyExists",
            "The resource already exists",
        )
    }
    pub fn bucket_not_empty() -> Self {
        Self::new(
            409,
            "ResourceNotEmpty",
            "ResourceNotEmpty",
            "The bucket you tried to delete is not empty",
        )
    }
    pub fn rls() -> Self {
        Self::new(
            403,
            "Unauthorized",
            "AccessDenied",
            "new row violates row-level security policy",
        )
    }
    /// A missing, malformed or expired token on a route that needs one.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(403, "Unauthorized", "AccessDenied", message)
    }
    /// A route only service_role may use.
    pub fn forbidden_role() -> Self {
        let mut err = Self::new(
            403,
            "Unauthorized",
            "AccessDenied",
            "This operation requires the service_role key",
        );
        err.http = Some(403);
        err
    }
    pub fn too_large() -> Self {
        Self::new(
            413,
            "Payload too large",
            "EntityTooLarge",
            "The object exceeded the maximum allowed size",
        )
    }
    pub fn mime(mime: &str) -> Self {
        Self::new(
            415,
            "invalid_mime_type",
            "InvalidMimeType",
            format!("mime type {mime} is not supported"),
        )
    }
    /// A content type that is not `type/subtype[;params]` (RFC 9110).
    pub fn bad_content_type(reason: impl std::fmt::Display) -> Self {
        Self::new(
            400,
            "invalid_mime_type",
            "InvalidMimeType",
            format!("Invalid Content-Type: {reason}"),
        )
    }
    /// The server is saturated (file IO slots); the client may retry.
    pub fn busy() -> Self {
        let mut err = Self::new(
            503,
            "SlowDown",
            "SlowDown",
            "The server is busy; retry later",
        );
        err.http = Some(503);
        err
    }
    pub fn invalid_key(key: &str) -> Self {
        Self::new(
            400,
            "Invalid Input",
            "InvalidKey",
            format!("Invalid key: {key}"),
        )
    }
    pub fn invalid_bucket() -> Self {
        Self::new(
            400,
            "Invalid Input",
            "InvalidBucketName",
            "Bucket name invalid",
        )
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidRequest", "InvalidRequest", message)
    }
    /// Supabase Storage's `InvalidParameter` (a bad `list-v2` cursor).
    pub fn invalid_parameter(name: &str) -> Self {
        Self::new(
            400,
            "InvalidParameter",
            "InvalidParameter",
            format!("Invalid Parameter {name}"),
        )
    }
    pub fn no_content() -> Self {
        Self::invalid("No content provided")
    }
    pub fn bad_size() -> Self {
        Self::invalid("Invalid file size format, hint: use 20GB / 20MB / 30KB / 3B")
    }
    pub fn invalid_jwt(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidJWT", "InvalidJWT", message)
    }
    pub fn invalid_signature() -> Self {
        Self::new(
            400,
            "InvalidSignature",
            "InvalidSignature",
            "Invalid signature",
        )
    }
    pub fn expired_token() -> Self {
        Self::new(
            400,
            "ExpiredToken",
            "ExpiredToken",
            "The provided token has expired.",
        )
    }
    pub fn range_not_satisfiable() -> Self {
        let mut err = Self::new(
            416,
            "InvalidRange",
            "InvalidRange",
            "The requested range is not satisfiable",
        );
        err.http = Some(416);
        err
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        let mut err = Self::new(409, "Conflict", "ResourceLocked", message);
        err.http = Some(409);
        err
    }
    pub fn timeout() -> Self {
        let mut err = Self::new(
            544,
            "DatabaseTimeout",
            "DatabaseTimeout",
            "The connection to the database timed out",
        );
        err.http = Some(544);
        err
    }
    /// An unknown route (HTTP 404).
    pub fn route_not_found() -> Self {
        let mut err = Self::new(404, "not_found", "NotFound", "Route not found");
        err.http = Some(404);
        err
    }
    /// A feature this server has turned off (Storage's `FeatureNotEnabled`).
    pub fn feature_not_enabled(feature: &str) -> Self {
        Self::new(
            409,
            "FeatureNotEnabled",
            "FeatureNotEnabled",
            format!("The feature {feature} is not enabled for this resource"),
        )
    }
    /// An image that cannot be transformed, as Storage answers imgproxy's
    /// refusals (`ImageProcessingError`: logical status 422).
    pub fn image_processing(message: impl Into<String>) -> Self {
        Self::new(422, "InvalidRequest", "InvalidRequest", message)
    }
    pub fn internal() -> Self {
        Self::new(500, "internal", "InternalError", "Internal Server Error")
    }
    pub fn unavailable() -> Self {
        let mut err = Self::new(
            503,
            "DatabaseError",
            "DatabaseError",
            "Database unavailable",
        );
        err.http = Some(503);
        err
    }

    /// The HTTP status this error is sent with.
    pub fn http_status(&self) -> StatusCode {
        let code = self
            .http
            .unwrap_or(if self.status == 500 { 500 } else { 400 });
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST)
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl IntoResponse for StorageError {
    fn into_response(self) -> Response {
        let body = json!({
            "statusCode": self.status.to_string(),
            "error": self.error,
            "message": self.message,
            "code": self.code,
        });
        (self.http_status(), axum::Json(body)).into_response()
    }
}

/// Maps a database error of an operation run as the caller.
pub fn from_db(err: &sovra_pg::tokio_postgres::Error) -> StorageError {
    use sovra_pg::ErrorKind;
    match sovra_pg::error_kind(err) {
        ErrorKind::InsufficientPrivilege => StorageError::rls(),
        ErrorKind::UniqueViolation => StorageError::object_exists(),
        ErrorKind::ForeignKeyViolation => StorageError::bucket_not_found(),
        ErrorKind::InvalidParameterValue => StorageError::unauthorized("invalid role"),
        ErrorKind::QueryCanceled => StorageError::timeout(),
        ErrorKind::Connection => StorageError::unavailable(),
        _ if sovra_pg::is_bad_text(err) => {
            StorageError::invalid("names and fields must not contain NUL characters")
        }
        _ => {
            let detail = err.as_db_error().map_or_else(
                || err.to_string(),
                |db| format!("{}: {}", db.code().code(), db.message()),
            );
            tracing::error!(error = %detail, "storage query failed");
            StorageError::internal()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logical_status_is_a_string_and_http_is_400() {
        let err = StorageError::object_exists();
        assert_eq!(err.http_status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            StorageError::internal().http_status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            StorageError::range_not_satisfiable().http_status(),
            StatusCode::RANGE_NOT_SATISFIABLE
        );
    }
}
