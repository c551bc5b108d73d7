//! The S3 protocol at `/storage/v1/s3`, as Supabase Storage serves it: S3
//! tools (the AWS SDKs, boto3, rclone, the AWS CLI) sign requests with
//! SigV4 and reach the same buckets and objects as `/storage/v1/object`,
//! under the same RLS.
//!
//! Two kinds of credentials, as Supabase documents them:
//! - **S3 access keys** of the project ([`keys`]): full access, as
//!   `service_role`. Only the access key id is stored; the secret is
//!   derived from the project's service key when the key is made (shown
//!   once) and again when a request is checked.
//! - **Session tokens**: access key id = the project ref, secret = the anon
//!   key (or the project ref), `X-Amz-Security-Token` = a user's JWT; every
//!   operation then runs as that user, under RLS.
//!
//! Pure parts: [`sigv4`] (signatures), [`chunked`] (`aws-chunked` bodies),
//! [`xml`] (answers and request bodies).

pub mod chunked;
pub mod keys;
mod multipart;
mod ops;
pub mod sigv4;
pub mod xml;

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::{Map, Value};
use sha2::Digest as _;

use crate::error::StorageError;
use crate::{Ctx, Principal, StorageService, names};

/// Largest XML request body (a `Delete` of 1,000 long keys, a
/// `CompleteMultipartUpload` of 10,000 parts).
pub const MAX_XML_BODY: usize = 2 * 1024 * 1024;
/// Most keys of one `DeleteObjects`.
pub const MAX_DELETE_KEYS: usize = 1000;
/// Most parts of one multipart upload.
pub const MAX_PARTS: usize = 10_000;
/// Smallest part of a multipart upload but the last (S3's 5 MiB).
pub const MIN_PART: u64 = 5 * 1024 * 1024;

/// Verifies a user's JWT (a session token) as the gateway would.
pub type TokenVerifier<'a> = &'a (dyn Fn(&str) -> Result<Principal, String> + Sync);

/// One request to `/storage/v1/s3`.
pub struct S3Request<'a> {
    pub method: &'a Method,
    /// The path after `/storage/v1/s3`, still percent-encoded.
    pub path: &'a str,
    /// The full paths the client may have signed (the request's path, and
    /// with the `/t/{name}` prefix when the tenant was routed by it).
    pub signed_paths: Vec<String>,
    pub query: Option<&'a str>,
    /// The URI's authority (HTTP/2 sends the host there, not in `Host`).
    pub authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub safe_headers: Map<String, Value>,
    pub keys: &'a sovra_jwt::KeySet,
    /// The project's ref: the access key id of session-token requests.
    pub project_ref: &'a str,
    /// The project's anon key: the secret of session-token requests.
    pub anon_key: &'a str,
    pub verify_token: TokenVerifier<'a>,
    /// Seconds since the epoch.
    pub now: i64,
}

/// The S3 protocol settings of one tenant.
#[derive(Clone)]
pub struct S3Config {
    pub enabled: bool,
    pub region: String,
    /// The secret the secrets of S3 access keys are derived from (the
    /// project's service key); empty: access keys cannot be made.
    pub key_root: String,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("enabled", &self.enabled)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            enabled: true,
            region: "local".to_owned(),
            key_root: String::new(),
        }
    }
}

/// An S3 error.
pub(crate) fn s3_error(
    status: u16,
    code: &'static str,
    message: impl Into<String>,
) -> StorageError {
    StorageError {
        status,
        error: code,
        message: message.into(),
        code,
        http: Some(status),
    }
}

fn not_implemented() -> StorageError {
    s3_error(
        501,
        "NotImplemented",
        "A header or query you provided implies functionality that is not implemented",
    )
}

/// The S3 code and status of a storage error.
fn s3_code(err: &StorageError) -> (u16, &'static str) {
    match err.code {
        "NoSuchKey" | "NoSuchBucket" | "NoSuchUpload" => (404, err.code),
        "AccessDenied"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "RequestTimeTooSkewed" => (403, err.code),
        "BucketAlreadyExists" | "BucketAlreadyOwnedByYou" | "KeyAlreadyExists" => (409, err.code),
        "ResourceNotEmpty" | "BucketNotEmpty" => (409, "BucketNotEmpty"),
        "EntityTooLarge" => (400, "EntityTooLarge"),
        "InvalidRange" => (416, "InvalidRange"),
        "InternalError" => (500, "InternalError"),
        "SlowDown" => (503, "SlowDown"),
        "InvalidBucketName" => (400, "InvalidBucketName"),
        "InvalidKey" => (400, "InvalidArgument"),
        "InvalidMimeType" => (400, "InvalidArgument"),
        _ => (err.http.unwrap_or(err.status).clamp(400, 599), err.code),
    }
}

/// An error as S3 sends it: `<Error><Code>…</Code><Message>…</Message>…`.
pub fn error_response(err: &StorageError, resource: &str) -> Response {
    let (status, code) = s3_code(err);
    let mut w = xml::Writer::bare("Error");
    w.text("Code", code)
        .text("Message", &err.message)
        .text("Resource", resource);
    let body = w.finish("Error");
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        )],
        body,
    )
        .into_response()
}

/// An XML answer.
pub(crate) fn xml_response(body: String) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        )],
        body,
    )
        .into_response()
}

/// What went wrong with a request body while an operation read it.
#[derive(Clone, Debug, Default)]
pub(crate) struct BodyFault(Arc<Mutex<Option<StorageError>>>);

impl BodyFault {
    fn set(&self, err: StorageError) {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(err);
        }
    }

    fn take(&self) -> Option<StorageError> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// How the request body is encoded and signed.
enum Payload {
    /// As sent, unchecked.
    Raw,
    /// Its SHA-256 must be this (hex).
    Hashed(String),
    /// `aws-chunked`.
    Chunked(Box<chunked::ChunkDecoder>),
}

/// The payload bytes of a request body, checked as it was signed; a
/// failure is an error item of the stream (the upload is then discarded)
/// and is recorded in `fault`.
fn decode_body(body: Body, payload: Payload, fault: BodyFault) -> Body {
    match payload {
        Payload::Raw => body,
        Payload::Hashed(expected) => {
            let mut hash = sha2::Sha256::new();
            let mut stream = body.into_data_stream();
            let out = async_stream(move |tx| async move {
                while let Some(item) = stream.next().await {
                    match item {
                        Ok(bytes) => {
                            hash.update(&bytes);
                            if tx.send(Ok(bytes)).await.is_err() {
                                return;
                            }
                        }
                        Err(err) => {
                            let _ = tx.send(Err(std::io::Error::other(err.to_string()))).await;
                            return;
                        }
                    }
                }
                let actual: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
                if !sigv4::same(&actual, &expected.to_ascii_lowercase()) {
                    fault.set(s3_error(
                        400,
                        "XAmzContentSHA256Mismatch",
                        "The provided 'x-amz-content-sha256' header does not match what was computed.",
                    ));
                    let _ = tx
                        .send(Err(std::io::Error::other("payload hash mismatch")))
                        .await;
                }
            });
            Body::from_stream(out)
        }
        Payload::Chunked(mut decoder) => {
            let mut stream = body.into_data_stream();
            let out = async_stream(move |tx| async move {
                while let Some(item) = stream.next().await {
                    let bytes = match item {
                        Ok(bytes) => bytes,
                        Err(err) => {
                            let _ = tx.send(Err(std::io::Error::other(err.to_string()))).await;
                            return;
                        }
                    };
                    match decoder.feed(&bytes) {
                        Ok(pieces) => {
                            for piece in pieces {
                                if !piece.is_empty() && tx.send(Ok(piece)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(err) => {
                            fault.set(chunk_error(&err));
                            let _ = tx.send(Err(std::io::Error::other("bad chunk"))).await;
                            return;
                        }
                    }
                }
                if let Err(err) = decoder.finish() {
                    fault.set(chunk_error(&err));
                    let _ = tx.send(Err(std::io::Error::other("bad chunk"))).await;
                }
            });
            Body::from_stream(out)
        }
    }
}

fn chunk_error(err: &chunked::ChunkError) -> StorageError {
    match err {
        chunked::ChunkError::Signature => s3_error(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        ),
        chunked::ChunkError::Malformed(message) => s3_error(400, "IncompleteBody", *message),
    }
}

/// A stream fed by a task through a small channel (one chunk in flight).
fn async_stream<F, Fut>(
    producer: F,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(producer(tx));
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// The caller of a verified request and how its body is to be read.
struct Verified {
    caller: Principal,
    payload: Payload,
}

fn header_values<'h>(headers: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

fn signature_mismatch(session: bool) -> StorageError {
    s3_error(
        403,
        "SignatureDoesNotMatch",
        if session {
            "The request signature we calculated does not match the signature you provided. Check your credentials. The session token should be a valid JWT token"
        } else {
            "The request signature we calculated does not match the signature you provided. Check your key and signing method."
        },
    )
}

/// Checks the request's SigV4 signature (header or presigned query) and
/// finds its caller.
async fn verify(
    service: &StorageService,
    request: &S3Request<'_>,
    query: &[(String, String)],
    ctx: &Ctx<'_>,
) -> Result<Verified, StorageError> {
    let authorization = request
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with("AWS4-HMAC-SHA256 "));
    let header_of = |name: &str| request.headers.get(name).and_then(|v| v.to_str().ok());
    let parsed = match authorization {
        Some(value) => sigv4::parse_authorization(
            value,
            header_of("x-amz-date"),
            header_of("x-amz-security-token"),
        ),
        None => sigv4::parse_query(query),
    };
    let client = match parsed {
        Ok(client) => client,
        Err(sigv4::SigError::Missing) => {
            return Err(s3_error(403, "AccessDenied", "Missing signature"));
        }
        Err(sigv4::SigError::Malformed(message)) => {
            return Err(s3_error(400, "AuthorizationHeaderMalformed", message));
        }
    };
    let signed_at = sigv4::parse_long_date(&client.long_date).unwrap_or(0);
    match client.expires {
        None if (request.now - signed_at).abs() > sigv4::MAX_SKEW => {
            return Err(s3_error(
                403,
                "RequestTimeTooSkewed",
                "The difference between the request time and the server's time is too large.",
            ));
        }
        Some(expires) => {
            if signed_at - request.now > sigv4::MAX_SKEW {
                return Err(s3_error(403, "AccessDenied", "Request is not valid yet"));
            }
            if request.now > signed_at.saturating_add(i64::try_from(expires).unwrap_or(0)) {
                return Err(s3_error(403, "AccessDenied", "Request has expired"));
            }
        }
        None => {}
    }
    let region = &service.config.s3.region;
    if client.credential.service != "s3" {
        return Err(s3_error(
            400,
            "AuthorizationHeaderMalformed",
            format!(
                "The authorization header is malformed; incorrect service \"{}\". This endpoint belongs to \"s3\".",
                client.credential.service
            ),
        ));
    }
    if client.credential.region != *region {
        return Err(s3_error(
            400,
            "AuthorizationHeaderMalformed",
            format!(
                "The authorization header is malformed; the region '{}' is wrong; expecting '{region}'",
                client.credential.region
            ),
        ));
    }
    // The secrets the signature may have been made with, and who the
    // caller then is.
    let (secrets, caller): (Vec<String>, Option<Principal>) = match &client.session_token {
        Some(_) => {
            if !sigv4::same(&client.credential.access_key, request.project_ref) {
                return Err(s3_error(
                    403,
                    "InvalidAccessKeyId",
                    "The Access Key Id of a session token must be the project ref",
                ));
            }
            (
                vec![request.anon_key.to_owned(), request.project_ref.to_owned()],
                None,
            )
        }
        None => {
            if service.config.s3.key_root.is_empty()
                || !keys::exists(ctx, &client.credential.access_key).await?
            {
                return Err(s3_error(
                    403,
                    "InvalidAccessKeyId",
                    "The AWS Access Key Id you provided does not exist in our records.",
                ));
            }
            (
                vec![keys::derive_secret(
                    &service.config.s3.key_root,
                    &client.credential.access_key,
                )],
                Some(Principal::service()),
            )
        }
    };
    let presigned = client.expires.is_some();
    let declared = if presigned {
        query
            .iter()
            .find(|(k, _)| k == "X-Amz-Content-Sha256")
            .map(|(_, v)| v.clone())
    } else {
        header_of("x-amz-content-sha256").map(str::to_owned)
    };
    let payload_hash = declared
        .clone()
        .unwrap_or_else(|| sigv4::UNSIGNED_PAYLOAD.to_owned());
    let canonical_query = sigv4::canonical_query(query);
    let lookup = |name: &str| -> Vec<&str> {
        if name == "host" {
            let host = header_values(request.headers, "host");
            if host.is_empty() {
                // HTTP/2 carries the host as the `:authority` of the URI.
                return request.authority.into_iter().collect();
            }
            return host;
        }
        header_values(request.headers, name)
    };
    let mut matched: Option<[u8; 32]> = None;
    'search: for path in &request.signed_paths {
        let canonical = sigv4::canonical_request(
            request.method.as_str(),
            path,
            &canonical_query,
            &client.signed_headers,
            lookup,
            &payload_hash,
        );
        let to_sign =
            sigv4::string_to_sign(&client.long_date, &client.credential.scope(), &canonical);
        for secret in &secrets {
            let key = sigv4::signing_key(secret, &client.credential);
            if sigv4::same(&sigv4::sign(&key, &to_sign), &client.signature) {
                matched = Some(key);
                break 'search;
            }
        }
    }
    let Some(key) = matched else {
        return Err(signature_mismatch(client.session_token.is_some()));
    };
    let caller = match (caller, &client.session_token) {
        (Some(caller), _) => caller,
        (None, Some(token)) => (request.verify_token)(token).map_err(|message| {
            s3_error(
                403,
                "AccessDenied",
                format!("Invalid session token: {message}"),
            )
        })?,
        (None, None) => return Err(signature_mismatch(false)),
    };
    let payload = match declared.as_deref() {
        None | Some(sigv4::UNSIGNED_PAYLOAD) => Payload::Raw,
        Some(sigv4::STREAMING_PAYLOAD) | Some("STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER") => {
            let trailers = declared.as_deref() != Some(sigv4::STREAMING_PAYLOAD);
            Payload::Chunked(Box::new(chunked::ChunkDecoder::new(
                Some(chunked::ChunkSigning {
                    key,
                    long_date: client.long_date.clone(),
                    scope: client.credential.scope(),
                    seed: client.signature.clone(),
                }),
                trailers,
            )))
        }
        Some(sigv4::STREAMING_UNSIGNED_TRAILER) => {
            Payload::Chunked(Box::new(chunked::ChunkDecoder::new(None, true)))
        }
        Some(hash) if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Payload::Hashed(hash.to_owned())
        }
        Some(_) => {
            return Err(s3_error(
                400,
                "InvalidArgument",
                "x-amz-content-sha256 must be a SHA-256, UNSIGNED-PAYLOAD or a STREAMING- algorithm",
            ));
        }
    };
    Ok(Verified { caller, payload })
}

/// The request headers as the storage code reads them: S3's
/// `x-amz-meta-*` become the user metadata (`x-metadata`), and an
/// `aws-chunked` body's length is its decoded length.
fn storage_headers(headers: &HeaderMap) -> HeaderMap {
    use base64::Engine as _;
    let mut out = headers.clone();
    out.remove("x-metadata");
    let mut meta = Map::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("x-amz-meta-")
            && let Ok(value) = value.to_str()
        {
            meta.insert(key.to_owned(), Value::String(value.to_owned()));
        }
    }
    if !meta.is_empty()
        && let Ok(value) = HeaderValue::from_str(
            &base64::engine::general_purpose::STANDARD.encode(Value::Object(meta).to_string()),
        )
    {
        out.insert("x-metadata", value);
    }
    if let Some(decoded) = headers.get("x-amz-decoded-content-length").cloned() {
        out.insert(header::CONTENT_LENGTH, decoded);
    }
    // S3 bodies are never forms.
    if out
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"))
    {
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    out
}

impl StorageService {
    /// Answers one request to `/storage/v1/s3` with this body.
    pub async fn handle_s3(&self, request: S3Request<'_>, body: Body) -> Response {
        let resource = format!("/storage/v1/s3{}", request.path);
        if !self.config.s3.enabled {
            return error_response(
                &s3_error(403, "AccessDenied", "The S3 protocol is disabled"),
                &resource,
            );
        }
        let Some(query) = sigv4::decode_query(request.query) else {
            return error_response(
                &s3_error(400, "InvalidArgument", "The query string is not valid"),
                &resource,
            );
        };
        let headers = storage_headers(request.headers);
        let ctx = Ctx {
            service: self,
            method: request.method,
            segments: Vec::new(),
            query: query.clone(),
            headers: &headers,
            auth: Err("no caller yet".to_owned()),
            safe_headers: request.safe_headers.clone(),
            keys: request.keys,
            raw_path: request.path,
        };
        let verified = match verify(self, &request, &query, &ctx).await {
            Ok(verified) => verified,
            Err(err) => return error_response(&err, &resource),
        };
        let ctx = Ctx {
            auth: Ok(verified.caller),
            ..ctx
        };
        let fault = BodyFault::default();
        let body = decode_body(body, verified.payload, fault.clone());
        let result = route(&ctx, request.path, body).await;
        match result {
            Ok(response) => response,
            Err(err) => {
                // A body that failed its signature or hash is reported as
                // such, whatever the operation made of it.
                let err = fault.take().unwrap_or(err);
                error_response(&err, &resource)
            }
        }
    }
}

/// Splits `/bucket/key…` into the bucket and the key (decoded).
fn split_path(path: &str) -> Result<(Option<String>, Option<String>), StorageError> {
    let path = path.strip_prefix('/').unwrap_or(path);
    if path.is_empty() {
        return Ok((None, None));
    }
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let bucket = names::decode_path(bucket).ok_or_else(StorageError::invalid_bucket)?;
    if !names::valid_bucket_id(&bucket) {
        return Err(s3_error(
            400,
            "InvalidBucketName",
            "The specified bucket is not valid.",
        ));
    }
    if key.is_empty() {
        return Ok((Some(bucket), None));
    }
    let key = names::decode_path(key).ok_or_else(|| StorageError::invalid_key(key))?;
    if !names::valid_key(&key) {
        return Err(StorageError::invalid_key(&key));
    }
    Ok((Some(bucket), Some(key)))
}

async fn route(ctx: &Ctx<'_>, path: &str, body: Body) -> Result<Response, StorageError> {
    let (bucket, key) = split_path(path)?;
    let has = |name: &str| ctx.query.iter().any(|(k, _)| k == name);
    let method = ctx.method;
    match (bucket, key) {
        (None, _) => match *method {
            Method::GET => ops::list_buckets(ctx).await,
            _ => Err(s3_error(
                405,
                "MethodNotAllowed",
                "The specified method is not allowed against this resource.",
            )),
        },
        (Some(bucket), None) => match *method {
            Method::GET if has("location") => ops::bucket_location(ctx, &bucket).await,
            Method::GET if has("versioning") => ops::bucket_versioning(ctx, &bucket).await,
            Method::GET if has("uploads") => multipart::list_uploads(ctx, &bucket).await,
            Method::GET
                if has("policy")
                    || has("acl")
                    || has("cors")
                    || has("lifecycle")
                    || has("tagging") =>
            {
                Err(not_implemented())
            }
            Method::GET => ops::list_objects(ctx, &bucket).await,
            Method::HEAD => ops::head_bucket(ctx, &bucket).await,
            Method::PUT if ctx.query.is_empty() => ops::create_bucket(ctx, &bucket, body).await,
            Method::DELETE if ctx.query.is_empty() => ops::delete_bucket(ctx, &bucket).await,
            Method::POST if has("delete") => ops::delete_objects(ctx, &bucket, body).await,
            _ => Err(not_implemented()),
        },
        (Some(bucket), Some(key)) => {
            let copy_source = ctx.header("x-amz-copy-source").map(str::to_owned);
            match *method {
                Method::GET if has("uploadId") => multipart::list_parts(ctx, &bucket, &key).await,
                Method::GET if has("acl") || has("tagging") || has("attributes") => {
                    Err(not_implemented())
                }
                Method::GET | Method::HEAD => ops::get_object(ctx, &bucket, &key).await,
                Method::PUT if has("uploadId") && copy_source.is_some() => Err(not_implemented()),
                Method::PUT if has("uploadId") => {
                    multipart::upload_part(ctx, &bucket, &key, body).await
                }
                Method::PUT if has("acl") || has("tagging") => Err(not_implemented()),
                Method::PUT => match copy_source {
                    Some(source) => ops::copy_object(ctx, &bucket, &key, &source).await,
                    None => ops::put_object(ctx, &bucket, &key, body).await,
                },
                Method::POST if has("uploads") => multipart::create(ctx, &bucket, &key).await,
                Method::POST if has("uploadId") => {
                    multipart::complete(ctx, &bucket, &key, body).await
                }
                Method::DELETE if has("uploadId") => multipart::abort(ctx, &bucket, &key).await,
                Method::DELETE => ops::delete_object(ctx, &bucket, &key).await,
                _ => Err(not_implemented()),
            }
        }
    }
}

/// Reads an XML request body of at most [`MAX_XML_BODY`] bytes.
pub(crate) async fn read_xml(body: Body) -> Result<Option<xml::Element>, StorageError> {
    let bytes = axum::body::to_bytes(body, MAX_XML_BODY)
        .await
        .map_err(|_| {
            s3_error(
                400,
                "MaxMessageLengthExceeded",
                "Your request was too big or broke off.",
            )
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    xml::parse(&bytes).map(Some).map_err(|err| {
        s3_error(
            400,
            "MalformedXML",
            format!(
                "The XML you provided was not well-formed or did not validate: {}",
                err.0
            ),
        )
    })
}

/// Deletes expired multipart uploads with their parts.
pub(crate) async fn multipart_sweep(service: &StorageService) -> Result<usize, String> {
    multipart::sweep(service).await
}

/// `2024-01-02T03:04:05.678Z` of a row's timestamp, in SQL.
pub(crate) const ISO: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'";
